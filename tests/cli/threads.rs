//! Large outputs where lcrun may start no thread: blobs are hashed,
//! compressed and decoded on worker threads when there are many, and on the
//! calling thread when none can start.
//!
//! The thread-limit tests run lcrun as `nobody` under `RLIMIT_NPROC` (a
//! container's `--pids-limit`, systemd's `TasksMax` or `ulimit -u` do the
//! same): they need root, and say so and pass without it.

use std::fs;
use std::os::unix::fs::chown;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Output;

use crate::util::{assert_code, noise, stderr, stdout, Env};

/// The uid and gid of `nobody`, whom the limit applies to (root is exempt).
const NOBODY: u32 = 65534;

/// Gives the scratch dir, and everything in it, to `nobody`.
fn give_to_nobody(path: &Path) {
    chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
    if path.is_dir() && !path.is_symlink() {
        for entry in fs::read_dir(path).unwrap() {
            give_to_nobody(&entry.unwrap().path());
        }
    }
}

/// Runs `lcrun ARGS` as `nobody`, allowed `tasks` processes and threads in
/// all (itself included).
/// The limit counts every task of `nobody`: these runs take turns.
fn run_as_nobody(env: &Env, tasks: u64, args: &[&str]) -> Output {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    run_as(env, NOBODY, tasks, args)
}

/// Runs `lcrun ARGS` as `uid`, allowed `tasks` processes and threads.
fn run_as(env: &Env, uid: u32, tasks: u64, args: &[&str]) -> Output {
    let mut cmd = env.lcrun();
    cmd.args(args);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: tasks,
                rlim_max: tasks,
            };
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(uid) != 0
                || libc::setrlimit(libc::RLIMIT_NPROC, &limit) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output().unwrap()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A scratch dir owned by `nobody` with a file of `len` bytes to copy.
fn nobody_env(len: usize) -> Env {
    let env = Env::new();
    env.write("src.bin", noise(len, 7));
    give_to_nobody(env.dir.path());
    env
}

/// A file long enough to be stored and restored on worker threads: 68
/// blobs (see `store::streams`).
const LONG: usize = 17 << 20;

/// A hit restores a `-o` file of many blobs even where lcrun may start no
/// thread, decoding it on the calling thread. Worker threads that cannot
/// start must not turn a good entry into a dropped one (and a command run
/// where none was needed).
#[test]
fn a_multi_blob_output_is_restored_when_no_thread_can_start() {
    if !is_root() {
        eprintln!("skipped: needs root to run lcrun as nobody under RLIMIT_NPROC");
        return;
    }
    let env = nobody_env(LONG);
    let args = ["-o", "out.bin", "--", "cp", "src.bin", "out.bin"];
    let first = run_as_nobody(&env, 1 << 16, &args);
    assert_code(&first, 0);
    fs::remove_file(env.path("out.bin")).unwrap();

    // One task: lcrun itself, no thread, no child.
    let hit = run_as_nobody(&env, 1, &args);
    assert_code(&hit, 0);
    assert_eq!(stderr(&hit), "", "a hit says nothing");
    assert!(
        fs::read(env.path("out.bin")).unwrap() == fs::read(env.path("src.bin")).unwrap(),
        "out.bin restored byte for byte"
    );
    // The entry is still there for the next hit.
    fs::remove_file(env.path("out.bin")).unwrap();
    let again = run_as_nobody(&env, 1, &args);
    assert_code(&again, 0);
    assert_eq!(stderr(&again), "");
}

/// A miss stores a `-o` file of many blobs when its workers cannot all
/// start: lcrun, its recorder, its lock's heartbeat and the command fit in
/// the limit, one more thread does too, a second does not.
#[test]
fn a_multi_blob_output_is_stored_when_workers_cannot_start() {
    if !is_root() {
        eprintln!("skipped: needs root to run lcrun as nobody under RLIMIT_NPROC");
        return;
    }
    let env = nobody_env(LONG);
    let args = ["-o", "out.bin", "--", "cp", "src.bin", "out.bin"];
    let miss = run_as_nobody(&env, 4, &args);
    assert_code(&miss, 0);
    assert_eq!(stderr(&miss), "", "stored without a word");
    fs::remove_file(env.path("out.bin")).unwrap();
    let hit = run_as_nobody(&env, 1 << 16, &args);
    assert_code(&hit, 0);
    assert!(
        fs::read(env.path("out.bin")).unwrap() == fs::read(env.path("src.bin")).unwrap(),
        "out.bin restored from the entry stored under the limit"
    );
    assert_eq!(stderr(&hit), "", "a hit: the command did not run");
}

/// A replay of stdout longer than one blob decodes on the calling thread
/// when no worker can start, as a one-blob replay does: threads that cannot
/// start are not damage, and must not drop a good entry.
#[test]
fn a_multi_blob_stdout_is_replayed_when_no_thread_can_start() {
    if !is_root() {
        eprintln!("skipped: needs root to run lcrun as nobody under RLIMIT_NPROC");
        return;
    }
    let env = nobody_env(1 << 20);
    let args = ["--", "cat", "src.bin"];
    let first = run_as_nobody(&env, 1 << 16, &args);
    assert_code(&first, 0);
    let hit = run_as_nobody(&env, 1, &args);
    assert_code(&hit, 0);
    assert_eq!(stderr(&hit), "", "a hit says nothing");
    assert!(
        hit.stdout == fs::read(env.path("src.bin")).unwrap(),
        "replayed byte for byte"
    );
}

/// Under a limit of three tasks (a container's `--pids-limit 3`, `ulimit
/// -u 3` for a user), lcrun and its command fit: the command is one task,
/// lcrun needs one more to wait for it. lcrun had started threads of its own
/// before the command, and the command did not run: 126, `echo: Resource
/// temporarily unavailable`.
/// Runs as a uid of its own, not `nobody`: the limit counts every task of
/// the uid, and the tests above run as `nobody` at the same time. Needs
/// root.
#[test]
fn a_command_runs_under_a_limit_of_two_or_three_tasks() {
    if !is_root() {
        eprintln!("skipped: needs root to change uid");
        return;
    }
    const UID: u32 = 64_997;
    // Two: lcrun and its heartbeat thread, which must go too (the command
    // failed with "Resource temporarily unavailable" while it stayed);
    // three: lcrun, the heartbeat, and the recorder.
    for tasks in [2, 3] {
        let env = Env::new();
        std::os::unix::fs::chown(env.dir.path(), Some(UID), Some(UID)).unwrap();
        let out = run_as(&env, UID, tasks, &["--", "echo", "ran"]);
        assert_code(&out, 0);
        assert_eq!(stdout(&out), "ran\n", "{tasks} tasks");
        // Its recorder gave way, and it says so once: the run is not cached.
        let said: Vec<String> = stderr(&out).lines().map(str::to_owned).collect();
        assert_eq!(said.len(), 1, "{tasks} tasks: {said:?}");
        assert!(
            said[0].starts_with("lcrun: ") && said[0].contains("uncached"),
            "{tasks} tasks: {said:?}"
        );
    }
}

//! A run interrupted while lcrun does its own work after the command: a
//! Ctrl-C or the `--timeout` while the outputs (`-o`) are being stored, a
//! kill while they are being restored. Each leaves nothing behind: no temp
//! file in the user's directory, no pack or pending row in the cache, and
//! the next run does the work whole.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::util::{noise, stderr, Env};

/// Whether process `pid` has a file open under `dir` (its link in
/// /proc/PID/fd: a named file there, or an unnamed one, shown as
/// `DIR/#INODE (deleted)`), other than those under `except`.
fn has_open_under(pid: u32, dir: &Path, except: &[&Path]) -> bool {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        fs::read_link(fd.path())
            .is_ok_and(|target| target.starts_with(dir) && !except.iter().any(|e| target.starts_with(e)))
    })
}

/// Entries and blobs in the cache's database: (entries, blob rows).
fn rows(env: &Env) -> (i64, i64) {
    let db = rusqlite::Connection::open(env.db()).unwrap();
    let count = |table: &str| -> i64 {
        db.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    };
    (count("entries"), count("blobs"))
}

/// A command whose output file takes lcrun long to store: 16 MiB of noise
/// (blobs that go to a pack) then 64 GiB of zeros, a sparse file the
/// command makes at once and lcrun would hash for a minute.
fn slow_to_store(env: &Env) -> Vec<String> {
    env.write("head.bin", noise(16 << 20, 3));
    let script = format!(
        "{}; cp head.bin out.bin && truncate -s 64G out.bin",
        env.tally("gen")
    );
    ["-o", "out.bin", "--", "sh", "-c", &script]
        .into_iter()
        .map(String::from)
        .collect()
}

/// Starts `lcrun ARGS` and waits until it has both a pack in the cache and
/// the output file open: the store of the outputs is under way.
fn start_and_wait_for_the_store(env: &Env, args: &[String]) -> std::process::Child {
    let mut child = env
        .lcrun()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = env.path("out.bin");
    let start = Instant::now();
    while !has_open_under(child.id(), &out, &[]) || env.blob_files().is_empty() {
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the store never began");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    child
}

/// Waits for `child` at most `limit`; kills it and fails past that.
fn wait_within(mut child: std::process::Child, limit: Duration) -> std::process::Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("lcrun still storing {limit:?} after it should have stopped");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn ctrl_c_while_the_outputs_are_stored_cancels_the_store_and_leaves_nothing() {
    let env = Env::new();
    let args = slow_to_store(&env);
    let child = start_and_wait_for_the_store(&env, &args);
    let pid = child.id() as i32;
    unsafe { libc::kill(pid, libc::SIGINT) };
    let out = wait_within(child, Duration::from_secs(5));
    // Ended by SIGINT, as a cancelled run is (the shell sees 130).
    assert_eq!(out.status.signal(), Some(libc::SIGINT), "{:?}", out.status);
    let err = stderr(&out);
    assert!(
        err.contains("cancelled (SIGINT)") && err.contains("nothing cached"),
        "{err}"
    );
    assert_eq!(
        env.blob_files(),
        Vec::<std::path::PathBuf>::new(),
        "a pack was left"
    );
    assert_eq!(rows(&env), (0, 0), "a pending entry or blob rows were left");
    // The next run runs the command (truncated to 16 MiB: a quick store).
    let quick = format!("{}; cp head.bin out.bin", env.tally("gen"));
    let out = env.run(["-o", "out.bin", "--", "sh", "-c", &quick]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(env.count("gen"), 2);
}

#[test]
fn the_timeout_while_the_outputs_are_stored_stops_the_store_and_the_status_stands() {
    let env = Env::new();
    let mut args = vec!["--timeout".to_owned(), "3s".to_owned()];
    args.extend(slow_to_store(&env));
    let child = start_and_wait_for_the_store(&env, &args);
    let out = wait_within(child, Duration::from_secs(8));
    let err = stderr(&out);
    // The command did its work within the time: its status stands, and
    // the store lcrun could not finish in time is said, once.
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("timed out") && err.contains("not cached"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(
        env.blob_files(),
        Vec::<std::path::PathBuf>::new(),
        "a pack was left"
    );
    assert_eq!(rows(&env), (0, 0), "a pending entry or blob rows were left");
}

#[test]
fn a_restore_killed_midway_leaves_no_temp_file_beside_the_output() {
    let env = Env::new();
    env.write("src.bin", noise(64 << 20, 5));
    let script = format!("{}; cp src.bin out.bin", env.tally("gen"));
    let args = ["-o", "out.bin", "--", "sh", "-c", &script];
    assert_eq!(env.run(args).status.code(), Some(0));
    let cache = env.cache.clone();
    let src = env.path("src.bin");
    let mut caught = 0;
    for signal in [libc::SIGKILL, libc::SIGINT, libc::SIGKILL, libc::SIGINT] {
        let _ = fs::remove_file(env.path("out.bin"));
        let mut child = env.lcrun().args(args).stderr(Stdio::null()).spawn().unwrap();
        // Killed once it has a file open beside the output: the restore is
        // writing it.
        let start = Instant::now();
        let mut writing = false;
        while child.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(30) {
            if has_open_under(child.id(), env.dir.path(), &[&cache, &src]) {
                writing = true;
                unsafe { libc::kill(child.id() as i32, signal) };
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let status = child.wait().unwrap();
        caught += usize::from(writing && status.signal().is_some());
        let strays: Vec<String> = fs::read_dir(env.dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(".lcrun-"))
            .collect();
        assert!(strays.is_empty(), "left beside the output: {strays:?}");
        // Never half a file under the output's name.
        if let Ok(restored) = fs::read(env.path("out.bin")) {
            assert!(restored == fs::read(&src).unwrap(), "a partial out.bin");
        }
    }
    assert!(caught >= 2, "only {caught} of 4 restores were killed midway");
    // The entry is whole: the next run restores without running.
    let _ = fs::remove_file(env.path("out.bin"));
    assert_eq!(env.run(args).status.code(), Some(0));
    assert!(fs::read(env.path("out.bin")).unwrap() == fs::read(&src).unwrap());
    assert_eq!(env.count("gen"), 1);
}

#[test]
fn a_pack_left_by_a_writer_killed_mid_store_goes_with_the_next_writer() {
    let env = Env::new();
    let args = slow_to_store(&env);
    let mut child = start_and_wait_for_the_store(&env, &args);
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    assert_eq!(env.blob_files().len(), 1, "the killed writer's pack");
    // Its pack is no one's, but a sweep leaves a pack alone for a moment
    // after it was last written (its writer locks it just after making it).
    std::thread::sleep(Duration::from_millis(2500));
    // A writer of another key finds the dead writer's pending record, and
    // sweeps.
    let out = env.run(["--", "true"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        env.blob_files(),
        Vec::<std::path::PathBuf>::new(),
        "the orphan pack stayed"
    );
    assert_eq!(rows(&env).1, 0, "blob rows of the killed writer");
}

#[test]
fn other_writers_are_not_held_up_by_a_long_store_of_outputs() {
    let env = Env::new();
    let args = slow_to_store(&env);
    let child = start_and_wait_for_the_store(&env, &args);
    // Another run of the cache meanwhile, of another key: its store takes
    // its turn between the long store's batches.
    let other = format!("echo other; {}", env.tally("other"));
    let start = Instant::now();
    let out = env.run(["--", "sh", "-c", &other]);
    let took = start.elapsed();
    assert_eq!(out.status.code(), Some(0));
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    assert!(
        took < Duration::from_secs(2),
        "held up {took:?} by the other store"
    );
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let slow = wait_within(child, Duration::from_secs(5));
    assert_eq!(slow.status.signal(), Some(libc::SIGINT));
    // Stored: the next run is a hit.
    let again = env.run(["--", "sh", "-c", &other]);
    assert!(stderr(&again).is_empty(), "{}", stderr(&again));
    assert_eq!(again.stdout, b"other\n");
    assert_eq!(env.count("other"), 1);
}

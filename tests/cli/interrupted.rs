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

/// Whether process `pid` has begun to exit (PF_EXITING in the flags of
/// /proc/PID/stat), or is gone.
fn exiting(pid: u32) -> bool {
    const PF_EXITING: u64 = 0x4;
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // After "(comm) ": state, ppid, pgrp, session, tty, tpgid, flags.
    let after = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    let flags: u64 = after.split(' ').nth(6).and_then(|f| f.parse().ok()).unwrap_or(0);
    flags & PF_EXITING != 0
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

/// No pack in the cache, nor any entry or blob row: an interrupted store
/// took away all it wrote.
fn assert_left_nothing(env: &Env) {
    assert_eq!(
        env.blob_files(),
        Vec::<std::path::PathBuf>::new(),
        "a pack was left"
    );
    assert_eq!(rows(env), (0, 0), "a pending entry or blob rows were left");
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
    start_and_wait_for_the_store_after(env, args, || ()).0
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
    assert_left_nothing(&env);
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
    assert_left_nothing(&env);
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

#[test]
fn a_tree_of_many_links_stops_storing_at_once() {
    let env = Env::new();
    let big = env.path("big");
    fs::create_dir(&big).unwrap();
    // 200,000 links (each to itself: never followed) on a tmpfs in a
    // private mount namespace: this VM's ext4 took 0.5 ms a link.
    let script = format!(
        "mount -t tmpfs -o size=256m tmpfs big && (cd big && seq 0 199999 | sed 's/^/l/' | xargs ln -s -t .) \
         && exec {} -o big -- true",
        crate::util::LCRUN
    );
    let child = std::process::Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .current_dir(env.dir.path())
        .env("LCRUN_CACHE_DIR", &env.cache)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("this test needs root and unshare(1) to mount a tmpfs in a private namespace");
    // Once it walks the tree (no file in it is ever read).
    let start = Instant::now();
    while !has_open_under(child.id(), &big, &[]) {
        assert!(start.elapsed() < Duration::from_secs(30), "the store never began");
        std::thread::sleep(Duration::from_millis(1));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = wait_within(child, Duration::from_secs(5));
    assert_eq!(out.status.signal(), Some(libc::SIGINT), "{}", stderr(&out));
    assert_eq!(rows(&env), (0, 0), "a pending entry or blob rows were left");
}

#[test]
fn sigusr1_while_the_outputs_are_stored_ends_lcrun_by_it() {
    // The command is gone: a signal that would end it bare ends lcrun, which
    // stops its store first.
    let env = Env::new();
    let args = slow_to_store(&env);
    let child = start_and_wait_for_the_store(&env, &args);
    unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) };
    let out = wait_within(child, Duration::from_secs(5));
    assert_eq!(out.status.signal(), Some(libc::SIGUSR1), "{}", stderr(&out));
    assert_left_nothing(&env);
}

#[test]
fn ctrl_c_while_a_failure_is_stored_for_a_waiter_still_cancels() {
    // A failed run is kept only for the identical runs waiting on it; a
    // Ctrl-C while its outputs are stored for them ends lcrun all the same.
    let env = Env::new();
    env.write("head.bin", noise(16 << 20, 4));
    let script = format!(
        "{}; n=$(wc -l < gen.count); sleep 1; cp head.bin out.bin; \
         if [ $n -eq 1 ]; then truncate -s 64G out.bin; fi; exit 2",
        env.tally("gen")
    );
    let args: Vec<String> = ["-o", "out.bin", "--", "sh", "-c", &script]
        .into_iter()
        .map(String::from)
        .collect();
    let owner = start_and_wait_for_the_store_after(&env, &args, || {
        std::thread::sleep(Duration::from_millis(300));
        let waiter = env.start(&args);
        std::thread::sleep(Duration::from_millis(300));
        waiter
    });
    let (owner, waiter) = owner;
    unsafe { libc::kill(owner.id() as i32, libc::SIGINT) };
    let out = wait_within(owner, Duration::from_secs(5));
    assert_eq!(out.status.signal(), Some(libc::SIGINT), "{}", stderr(&out));
    assert!(stderr(&out).contains("cancelled (SIGINT)"), "{}", stderr(&out));
    // The waiter runs the command itself, and fails as it does.
    let waited = wait_within(waiter, Duration::from_secs(30));
    assert_eq!(waited.status.code(), Some(2), "{}", stderr(&waited));
    assert_eq!(env.count("gen"), 2);
}

/// Starts `lcrun ARGS`, then `and` (another run), and waits until the first
/// is storing its outputs.
fn start_and_wait_for_the_store_after<T>(
    env: &Env,
    args: &[String],
    and: impl FnOnce() -> T,
) -> (std::process::Child, T) {
    let mut child = env
        .lcrun()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let other = and();
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
    (child, other)
}

#[test]
fn ctrl_c_as_the_result_is_stored_ends_lcrun_by_it() {
    // A Ctrl-C that lands while lcrun stores a short result, whether or not
    // the store is done by then: lcrun ends by SIGINT, so that a shell loop
    // or make stops. 30 tries at 0-3 ms after the command ended.
    let env = Env::new();
    let script = "echo $$ > pid; head -c 1048576 /dev/urandom > o.bin; echo hello";
    let mut signalled = 0;
    for round in 0..30u64 {
        let _ = fs::remove_file(env.path("pid"));
        let mut child = env
            .lcrun()
            .args(["--refresh", "-o", "o.bin", "--", "sh", "-c", script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Until the command has ended (a zombie, or reaped).
        let start = Instant::now();
        loop {
            let pid = fs::read_to_string(env.path("pid")).unwrap_or_default();
            let pid = pid.trim();
            if !pid.is_empty() {
                let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                if stat.is_empty() || stat.contains(") Z ") {
                    break;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the command never ended"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        std::thread::sleep(Duration::from_micros(1000 * (round % 4)));
        // Only if lcrun has not exited yet (looked at without reaping it).
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
        unsafe { libc::waitid(libc::P_PID, child.id(), &mut info, flags) };
        if unsafe { info.si_pid() } == 0 {
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            // A process already in exit(2) (its teardown takes a few ms)
            // drops the signal, as any program would: not lcrun's to hear.
            let exiting = exiting(child.id());
            let status = child.wait().unwrap();
            if !exiting {
                assert_eq!(status.signal(), Some(libc::SIGINT), "round {round}: {status:?}");
                signalled += 1;
            }
        } else {
            child.wait().unwrap();
        }
    }
    assert!(
        signalled >= 5,
        "only {signalled} of 30 rounds reached lcrun before it ended"
    );
}

#[test]
fn a_tree_restore_killed_midway_leaves_no_temp_name_in_it() {
    let env = Env::new();
    let script = format!(
        "{}; rm -rf out; mkdir -p out; i=0; while [ $i -lt 1000 ]; do \
         ln -s f$i out/l$i; echo $i > out/f$i; i=$((i+1)); done",
        env.tally("gen")
    );
    let args = ["-o", "out", "--", "sh", "-c", &script];
    assert_eq!(env.run(args).status.code(), Some(0));
    let out_dir = env.path("out");
    let mut caught = 0;
    for round in 0..4u64 {
        let _ = fs::remove_dir_all(&out_dir);
        let mut child = env.lcrun().args(args).stderr(Stdio::null()).spawn().unwrap();
        // Killed once it writes the links (a few of them in).
        let start = Instant::now();
        let links = || {
            fs::read_dir(&out_dir).map_or(0, |dir| {
                dir.flatten()
                    .filter(|e| e.file_name().as_encoded_bytes()[0] == b'l')
                    .count()
            })
        };
        while links() < 5 + 20 * round as usize && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Then left alone a moment: a kill while it waits for the
        // directory this reads lands before it makes anything.
        std::thread::sleep(Duration::from_millis(3 + round));
        let signal = if round % 2 == 0 {
            libc::SIGKILL
        } else {
            libc::SIGINT
        };
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = child.wait().unwrap();
        caught += usize::from(status.signal().is_some());
        let strays: Vec<String> = fs::read_dir(&out_dir)
            .map(|dir| {
                dir.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|name| name.starts_with(".lcrun-"))
                    .collect()
            })
            .unwrap_or_default();
        assert!(strays.is_empty(), "round {round}: left in the tree: {strays:?}");
    }
    assert!(caught >= 2, "only {caught} of 4 restores were killed midway");
    let _ = fs::remove_dir_all(&out_dir);
    assert_eq!(env.run(args).status.code(), Some(0));
    assert_eq!(fs::read_dir(&out_dir).unwrap().count(), 2000);
    assert_eq!(env.count("gen"), 1);
}

#[test]
fn parallel_long_stores_all_get_their_turns() {
    // Three runs each storing a long output at once (2 GiB, sparse past its
    // first 8 MiB: seconds of hashing each): batch by batch they take turns
    // at the write lock, and every one is stored.
    let env = Env::new();
    let children: Vec<_> = (0..3)
        .map(|i| {
            let script = format!("head -c 8M /dev/urandom > o{i}.bin && truncate -s 2G o{i}.bin");
            let out = format!("o{i}.bin");
            env.start(["-o", &out, "--", "sh", "-c", &script])
        })
        .collect();
    for child in children {
        let out = wait_within(child, Duration::from_secs(120));
        assert_eq!(out.status.code(), Some(0));
        assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    }
    let db = rusqlite::Connection::open(env.db()).unwrap();
    let stored: i64 = db
        .query_row("SELECT count(*) FROM entries WHERE key IS NOT NULL", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(stored, 3);
}

#[test]
fn a_fifo_in_place_of_the_waiting_mark_never_hangs_a_store() {
    let env = Env::new();
    assert_eq!(env.run(["--", "true"]).status.code(), Some(0));
    let mark = env.cache.join("cache.db.waiting");
    let _ = fs::remove_file(&mark);
    let made = std::process::Command::new("mkfifo").arg(&mark).status().unwrap();
    assert!(made.success());
    env.write("src.bin", noise(24 << 20, 12));
    let child = env.start(["-o", "out.bin", "--", "cp", "src.bin", "out.bin"]);
    let out = wait_within(child, Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let again = env.run(["-o", "out.bin", "--", "cp", "src.bin", "out.bin"]);
    assert!(stderr(&again).is_empty(), "{}", stderr(&again));
}

#[test]
fn a_prune_behind_a_held_lock_does_not_keep_lcrun_past_its_bound() {
    // With --max-size each store prunes after its commit. Another process
    // that takes the write lock right after the commit holds up the prune:
    // lcrun still ends within its 3 s bound of the command's end, not
    // after the 20 s busy timeout.
    let env = Env::new();
    for i in 0..5 {
        assert_eq!(
            env.run(["--", "echo", &format!("filler {i}")]).status.code(),
            Some(0)
        );
    }
    let mut grabbed = 0;
    for round in 0..2 {
        let db = env.db();
        let holder = std::thread::spawn(move || {
            let conn = rusqlite::Connection::open(&db).unwrap();
            conn.busy_timeout(Duration::ZERO).unwrap();
            let count = |conn: &rusqlite::Connection| -> i64 {
                conn.query_row("SELECT count(*) FROM entries WHERE key IS NOT NULL", [], |r| {
                    r.get(0)
                })
                .unwrap_or(0)
            };
            let before = count(&conn);
            let start = Instant::now();
            // Once the run's entry is there: the lock, held 6 s.
            while count(&conn) == before && start.elapsed() < Duration::from_secs(10) {}
            while conn.execute_batch("BEGIN IMMEDIATE").is_err() {
                if start.elapsed() > Duration::from_secs(10) {
                    return false;
                }
            }
            std::thread::sleep(Duration::from_secs(6));
            let _ = conn.execute_batch("ROLLBACK");
            true
        });
        std::thread::sleep(Duration::from_millis(50));
        let start = Instant::now();
        let out = env.run(["--max-size", "1K", "--", "echo", &format!("round {round}")]);
        let took = start.elapsed();
        assert_eq!(out.status.code(), Some(0));
        assert!(
            took < Duration::from_secs(6),
            "round {round}: lcrun took {took:?}"
        );
        grabbed += usize::from(holder.join().unwrap());
    }
    assert!(grabbed >= 1, "the lock was never taken after a commit");
}

#[test]
fn no_wal_checkpoint_keeps_a_waiting_writer_out() {
    // After its commit a writer truncates the WAL, which keeps every other
    // writer out while it copies and syncs; with one waiting (marked as
    // waiting writers mark themselves), that is left to a later writer.
    let env = Env::new();
    let wal = env.cache.join("cache.db-wal");
    let wal_len = || fs::metadata(&wal).map_or(0, |m| m.len());
    assert_eq!(env.run(["--", "echo", "a"]).status.code(), Some(0));
    assert_eq!(wal_len(), 0, "no writer waits: the WAL is truncated");
    let mark = fs::File::open(env.cache.join("cache.db.waiting")).unwrap();
    mark.lock_shared().unwrap();
    assert_eq!(env.run(["--", "echo", "b"]).status.code(), Some(0));
    assert!(wal_len() > 0, "a writer waits: the WAL is left as it is");
    drop(mark);
    assert_eq!(env.run(["--", "echo", "c"]).status.code(), Some(0));
    assert_eq!(wal_len(), 0, "the next writer truncates it");
}

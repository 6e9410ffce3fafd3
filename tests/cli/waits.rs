//! Waiting, bounded: `--timeout` bounds the whole call, a busy or stuck cache
//! never delays or stalls the command, and identical runs in progress share
//! one outcome, failure included.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::util::*;

/// Waits until `path` exists, failing after `limit`.
fn wait_for(path: &std::path::Path, limit: Duration) {
    let start = Instant::now();
    while !path.exists() {
        assert!(start.elapsed() < limit, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Cancels a background lcrun and reaps it.
fn stop(mut child: std::process::Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
}

#[test]
fn timeout_bounds_the_wait_for_an_identical_run() {
    let env = Env::new();
    let script = format!("{}; touch started; sleep 8", env.tally("runs"));
    let owner = env.start(["--", "sh", "-c", &script]);
    wait_for(&env.path("started"), Duration::from_secs(10));
    let start = Instant::now();
    let out = env.run(["--timeout", "2", "--", "sh", "-c", &script]);
    let took = start.elapsed();
    assert_code(&out, 124);
    assert!(took < Duration::from_secs(5), "waited {took:?}");
    assert_eq!(stdout(&out), "");
    assert!(stderr(&out).contains("timed out"), "{}", stderr(&out));
    assert_eq!(env.count("runs"), 1);
    stop(owner);
}

#[test]
fn timeout_bounds_a_cache_by_command_and_ends_its_tree() {
    let env = Env::new();
    let start = Instant::now();
    let out = env.run([
        "--timeout",
        "1",
        "-c",
        "cmd:sleep 100 & echo $! > sleeper; wait",
        "--",
        "echo",
        "c",
    ]);
    let took = start.elapsed();
    assert_code(&out, 124);
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(stdout(&out), "", "the command ran");
    let sleeper = pids(&env.path("sleeper"));
    assert_eq!(sleeper.len(), 1);
    let start = Instant::now();
    while alive(sleeper[0]) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the cache-by command's child outlived the timeout"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_command_gets_what_is_left_of_the_timeout() {
    let env = Env::new();
    let start = Instant::now();
    let out = env.run([
        "--timeout",
        "3",
        "-c",
        "cmd:sleep 2",
        "--",
        "sh",
        "-c",
        &format!("{}; sleep 6; echo late", env.tally("runs")),
    ]);
    let took = start.elapsed();
    assert_code(&out, 124);
    assert_eq!(env.count("runs"), 1);
    // 2 s of key, then the 1 s left: not a fresh 3 s for the command.
    assert!(took < Duration::from_millis(4500), "took {took:?}");
    // Nothing cached: the next run runs.
    let out = env.run([
        "-c",
        "cmd:true",
        "--",
        "sh",
        "-c",
        &format!("{}; echo now", env.tally("runs")),
    ]);
    assert_code(&out, 0);
    assert_eq!(env.count("runs"), 2);
}

/// Holds a write transaction on `db` until dropped, as a `sqlite3` shell
/// left in `BEGIN IMMEDIATE;` does.
fn hold_write_lock(db: &std::path::Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE;").unwrap();
    conn
}

#[test]
fn a_held_write_lock_neither_delays_nor_stalls_the_command() {
    let env = Env::new();
    // Both databases exist, as in any cache that has been used.
    assert_code(&env.run(["--", "true"]), 0);
    let script = format!(
        "{}; for i in 1 2 3 4 5 6; do echo out$i; echo err$i >&2; lcrun progress $i/6; sleep 0.3; done",
        env.tally("runs")
    );
    let cache_lock = hold_write_lock(&env.db());
    let start = Instant::now();
    let mut child = env
        .lcrun()
        .args(["--progress", "plain", "--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "out1");
    let first = start.elapsed();
    assert!(
        first < Duration::from_secs(1),
        "the command started after {first:?}"
    );
    // A lock on jobs.db taken mid-run, while progress is being published.
    let jobs_lock = hold_write_lock(&env.cache.join("jobs.db"));
    let mut last = Instant::now();
    let mut worst = Duration::ZERO;
    for i in 2..=6 {
        assert_eq!(lines.next().unwrap().unwrap(), format!("out{i}"));
        worst = worst.max(last.elapsed());
        last = Instant::now();
    }
    assert!(worst < Duration::from_secs(1), "output stalled for {worst:?}");
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
    let warnings: Vec<_> = err.lines().filter(|l| l.starts_with("lcrun: ")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].contains("not stored") || warnings[0].contains("cannot store"),
        "{err}"
    );
    drop(jobs_lock);
    drop(cache_lock);
    // Nothing was stored: the next run runs, and is stored.
    let again = |expected: usize| {
        let out = env.run(["--", "sh", "-c", &script]);
        assert_code(&out, 0);
        assert_eq!(env.count("runs"), expected);
    };
    again(2);
    again(2);
}

#[test]
fn a_lock_released_before_the_end_still_stores_the_result() {
    let env = Env::new();
    assert_code(&env.run(["--", "true"]), 0);
    let script = format!("{}; echo a; echo b >&2; sleep 1.5; echo c", env.tally("runs"));
    let lock = hold_write_lock(&env.db());
    let child = env.start(["--", "sh", "-c", &script]);
    std::thread::sleep(Duration::from_millis(700));
    drop(lock);
    let out = child.wait_with_output().unwrap();
    assert_code(&out, 0);
    assert_eq!(stderr(&out), "b\n");
    let out = env.run(["--", "sh", "-c", &script]);
    assert_code(&out, 0);
    assert_eq!(stdout(&out), "a\nc\n");
    assert_eq!(env.count("runs"), 1, "the result was not stored");
}

#[test]
fn a_stuck_lock_holder_is_not_waited_on_forever() {
    let env = Env::new();
    let script = format!("{}; touch started; sleep 30", env.tally("runs"));
    let owner = env.start(["--", "sh", "-c", &script]);
    wait_for(&env.path("started"), Duration::from_secs(10));
    // A stuck lcrun: it holds the key's lock and shows no sign of life.
    unsafe { libc::kill(owner.id() as i32, libc::SIGSTOP) };
    // Another key is not held up at all.
    let start = Instant::now();
    let other = env.run(["--", "sh", "-c", &script.replace("sleep 30", "echo ran")]);
    assert_code(&other, 0);
    assert!(start.elapsed() < Duration::from_secs(3));
    let start = Instant::now();
    let mut waiter = env
        .lcrun()
        .args(["--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It waits a while, then runs the command itself, uncached.
    while env.count("runs") < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the waiter never gave up on the stuck lock"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let gave_up = start.elapsed();
    assert!(gave_up > Duration::from_secs(5), "gave up after {gave_up:?}");
    unsafe { libc::kill(waiter.id() as i32, libc::SIGTERM) };
    let status = waiter.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut waiter.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("running uncached"), "{err}");
    assert_ne!(status.code(), Some(0));
    stop(owner);
}

#[test]
fn identical_runs_in_progress_share_a_failure() {
    let env = Env::new();
    let script = format!("{}; sleep 2; echo out; echo err >&2; exit 3", env.tally("runs"));
    let start = Instant::now();
    let children: Vec<_> = (0..32).map(|_| env.start(["--", "sh", "-c", &script])).collect();
    let outputs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let took = start.elapsed();
    for out in &outputs {
        assert_code(out, 3);
        assert_eq!(stdout(out), "out\n");
        assert!(stderr(out).ends_with("err\n"), "{}", stderr(out));
    }
    assert_eq!(env.count("runs"), 1, "the command ran more than once");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    // No lock or wait-mark file is left behind.
    let left: Vec<_> = std::fs::read_dir(env.cache.join("locks"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // The failure is not cached: a later run executes it again.
    let out = env.run(["--", "sh", "-c", &script]);
    assert_code(&out, 3);
    assert_eq!(stdout(&out), "out\n");
    assert_eq!(env.count("runs"), 2);
}

#[test]
fn a_waiter_replays_the_run_it_waited_on_not_an_older_one() {
    let env = Env::new();
    let script = format!(
        "{}; n=$(wc -l < runs.count); sleep 1.5; echo run$n; exit $n",
        env.tally("runs")
    );
    // A first failure, finished before anyone waits.
    let first = env.run(["--", "sh", "-c", &script]);
    assert_code(&first, 1);
    let owner = env.start(["--", "sh", "-c", &script]);
    std::thread::sleep(Duration::from_millis(500));
    let waiter = env.run(["--", "sh", "-c", &script]);
    let owner = owner.wait_with_output().unwrap();
    assert_code(&owner, 2);
    assert_code(&waiter, 2);
    assert_eq!(stdout(&waiter), "run2\n");
    assert_eq!(env.count("runs"), 2);
}

#[test]
fn a_cancelled_owner_hands_the_work_to_one_waiter() {
    let env = Env::new();
    let script = format!("{}; touch started; sleep 2; echo done", env.tally("runs"));
    let owner = env.start(["--", "sh", "-c", &script]);
    wait_for(&env.path("started"), Duration::from_secs(10));
    let waiters: Vec<_> = (0..3).map(|_| env.start(["--", "sh", "-c", &script])).collect();
    std::thread::sleep(Duration::from_millis(500));
    unsafe { libc::kill(owner.id() as i32, libc::SIGTERM) };
    let owner = owner.wait_with_output().unwrap();
    assert_ne!(owner.status.code(), Some(0));
    for waiter in waiters {
        let out = waiter.wait_with_output().unwrap();
        assert_code(&out, 0);
        assert_eq!(stdout(&out), "done\n");
    }
    assert_eq!(env.count("runs"), 2, "not exactly one waiter took over");
}

#[test]
fn timeout_bounds_reading_stdin_for_the_key() {
    let env = Env::new();
    // stdin stays open and silent: the key can never be complete.
    let mut child = env
        .lcrun()
        .args(["--timeout", "1", "-c", "stdin", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(5) {
            child.kill().unwrap();
            panic!("still reading stdin after {:?}", start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(124));
}

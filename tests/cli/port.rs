//! `waits` on main's store: the recording runs on a thread of its own, and
//! the guarantees of the key's lock still hold for the whole run.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::util::*;

/// A recording dropped mid-run (the store held locked by another process
/// while the output filled the queue) must not let go of the key while the
/// command still runs: an identical run would take the key, find the
/// command's job still marked running, take it for a dead owner's and end
/// it, or run a second copy beside it.
#[test]
fn a_dropped_recording_keeps_the_key_until_the_command_ends() {
    let env = Env::new();
    assert_code(&env.run(["--", "true"]), 0);
    let script = format!(
        "if [ -e running ]; then touch overlap; fi; touch running; {}; \
         head -c 3000000 /dev/zero; touch written; sleep 4; rm running; echo done",
        env.tally("runs")
    );
    let cache_lock = rusqlite::Connection::open(env.db()).unwrap();
    cache_lock.execute_batch("BEGIN IMMEDIATE;").unwrap();
    let first = env
        .lcrun()
        .args(["--", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !env.path("written").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the output never went out"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Past the 0.5 s the recorder waits with a full queue: dropped by now.
    std::thread::sleep(Duration::from_millis(1500));
    drop(cache_lock);
    let second = env.run(["--", "sh", "-c", &script]);
    let first = first.wait_with_output().unwrap();
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    assert!(stderr(&first).contains("not stored"), "{}", stderr(&first));
    assert_code(&second, 0);
    assert!(!env.path("overlap").exists(), "two copies ran at once");
    assert_eq!(env.count("runs"), 2);
}

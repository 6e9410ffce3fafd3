//! Progress display and cancellation, on a real pseudo-terminal where the
//! behaviour depends on one.

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use crate::pty::Term;
use crate::util::*;

#[test]
fn bar_shows_positions_reported_through_lcrun_progress() {
    let env = Env::new();
    env.script(
        "steps.sh",
        "#!/bin/sh\nfor i in 1 2 3 4 5; do lcrun progress $i/5 step $i; echo \"line $i\"; sleep 0.3; done\n",
    );
    let mut pty = Term::script(&env, "lcrun -- ./steps.sh");
    assert_eq!(pty.exit_status(Duration::from_secs(20)), 0);
    let screen = pty.text();
    for i in 1..=5 {
        assert!(
            screen.contains(&format!("line {i}\r\n")),
            "line {i} missing:\n{screen}"
        );
    }
    // The bar itself: position, total, percent and message.
    assert!(screen.contains("3/5 60%"), "no bar at 3/5:\n{screen}");
    assert!(screen.contains("step 3"), "no message:\n{screen}");
    // The bar never splits an output line: every "line N" starts a line.
    for i in 1..=5 {
        let at = screen.find(&format!("line {i}")).unwrap();
        assert!(
            matches!(&screen[at.saturating_sub(1)..at], "\n" | "\r" | "K" | ""),
            "torn line {i}:\n{screen:?}"
        );
    }

    // A hit on a terminal says it was replayed.
    let mut again = Term::script(&env, "lcrun -- ./steps.sh");
    assert_eq!(again.exit_status(Duration::from_secs(10)), 0);
    assert!(
        again.text().contains("lcrun: replayed from cache"),
        "{}",
        again.text()
    );
}

#[test]
fn progress_regex_reads_an_unmodified_command() {
    let env = Env::new();
    let mut pty = Term::script(
        &env,
        r#"lcrun --progress-regex '^\[(?P<pos>\d+)/(?P<total>\d+)\] (?P<msg>.*)' -- sh -c 'for i in 1 2 3 4; do echo "[$i/4] building part$i"; sleep 0.3; done'"#,
    );
    assert_eq!(pty.exit_status(Duration::from_secs(20)), 0);
    let screen = pty.text();
    assert!(screen.contains("2/4 50%"), "no bar at 2/4:\n{screen}");
    assert!(screen.contains("building part2"), "{screen}");
}

#[test]
fn ctrl_c_cancels_the_whole_tree_and_caches_nothing() {
    let env = Env::new();
    env.script(
        "tree.sh",
        &format!(
            "#!/bin/sh\n{}\nsleep 300 &\necho $! >> pids\necho $$ >> pids\necho started\nwait\n",
            env.tally("runs")
        ),
    );
    let mut pty = Term::script(&env, "lcrun -- ./tree.sh");
    pty.expect("started", Duration::from_secs(10));
    let pids = pids(&env.path("pids"));
    assert_eq!(pids.len(), 2);
    let start = Instant::now();
    pty.send(b"\x03");
    assert_eq!(pty.exit_status(Duration::from_secs(10)), 130);
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "cancellation took {:?}",
        start.elapsed()
    );
    std::thread::sleep(Duration::from_millis(200));
    for pid in pids {
        assert!(!alive(pid), "process {pid} of the cancelled tree is still alive");
    }
    // Nothing was cached: the next run runs again.
    std::fs::remove_file(env.path("pids")).unwrap();
    let mut again = Term::script(&env, "lcrun -- ./tree.sh");
    again.expect("started", Duration::from_secs(10));
    assert_eq!(env.count("runs"), 2);
    again.send(b"\x03");
    assert_eq!(again.exit_status(Duration::from_secs(10)), 130);
}

#[test]
fn second_ctrl_c_kills_a_command_that_ignores_the_first() {
    let env = Env::new();
    let mut pty = Term::script(
        &env,
        "lcrun --kill-after 60s -- sh -c 'trap \"\" INT TERM; echo $$ > pid; echo ready; sleep 300'",
    );
    pty.expect("ready", Duration::from_secs(10));
    pty.send(b"\x03");
    std::thread::sleep(Duration::from_millis(500));
    assert!(!pty.text().contains("EXIT="), "the first Ctrl-C should only ask");
    let start = Instant::now();
    pty.send(b"\x03");
    assert_eq!(pty.exit_status(Duration::from_secs(10)), 130);
    assert!(start.elapsed() < Duration::from_secs(3));
    let pid = pids(&env.path("pid"))[0];
    std::thread::sleep(Duration::from_millis(200));
    assert!(!alive(pid));
}

#[test]
fn interactive_command_reads_the_terminal() {
    let env = Env::new();
    let mut pty = Term::script(
        &env,
        "lcrun --no-cache -- sh -c 'printf \"name? \"; read n; echo \"hello $n\"'",
    );
    pty.expect("name? ", Duration::from_secs(10));
    pty.send(b"bob\n");
    assert_eq!(pty.exit_status(Duration::from_secs(10)), 0);
    assert!(pty.text().contains("hello bob"), "{}", pty.text());
}

#[test]
fn no_escape_codes_off_a_terminal_and_heartbeats_with_interval() {
    let env = Env::new();
    let out = env.run([
        "--interval",
        "200ms",
        "--",
        "sh",
        "-c",
        "lcrun progress 3/10 compiling; echo work; sleep 1; echo done",
    ]);
    assert_code(&out, 0);
    assert!(
        !out.stderr.contains(&0x1b) && !out.stdout.contains(&0x1b),
        "escape codes: {out:?}"
    );
    assert_eq!(stdout(&out), "work\ndone\n");
    let beats = stderr(&out)
        .lines()
        .filter(|l| l.starts_with("lcrun: running "))
        .count();
    assert!(beats >= 2, "too few heartbeats:\n{}", stderr(&out));
    assert!(stderr(&out).contains(", 3/10 compiling"), "{}", stderr(&out));

    // Without --interval: silent.
    let out = env.run(["--no-cache", "--", "sh", "-c", "sleep 0.5; echo x"]);
    assert_eq!(stderr(&out), "");
}

#[test]
fn sigterm_and_sighup_cancel_with_their_statuses() {
    for (signal, expected) in [(libc::SIGTERM, 143), (libc::SIGHUP, 129), (libc::SIGINT, 130)] {
        let env = Env::new();
        let mut child = env
            .lcrun()
            .args([
                "--",
                "sh",
                "-c",
                &format!("{}; echo $$ > pid; sleep 300", env.tally("runs")),
            ])
            .spawn()
            .unwrap();
        wait_for_file(&env.path("pid"));
        let start = Instant::now();
        unsafe { libc::kill(child.id() as i32, signal) };
        // lcrun dies by the signal after its cleanup; a shell says `expected`.
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(signal), "signal {signal}");
        assert_eq!(128 + signal, expected);
        assert!(start.elapsed() < Duration::from_secs(3));
        let pid = pids(&env.path("pid"))[0];
        assert!(!alive(pid), "command survived signal {signal}");
        // Not cached.
        let out = env.run([
            "--",
            "sh",
            "-c",
            &format!("{}; echo $$ > pid; exit 0", env.tally("runs")),
        ]);
        assert_code(&out, 0);
        assert_eq!(env.count("runs"), 2);
    }
}

#[test]
fn sigterm_cancels_a_command_flooding_its_output() {
    // lcrun reads output without pause here: the signal must still be seen.
    let env = Env::new();
    let mut child = env
        .lcrun()
        .args(["--", "sh", "-c", "echo $$ > pid; exec yes flood"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_file(&env.path("pid"));
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
            unsafe { libc::kill(pids(&env.path("pid"))[0], libc::SIGKILL) };
            panic!("lcrun did not react to SIGTERM within 5 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.signal(), Some(libc::SIGTERM));
    assert!(!alive(pids(&env.path("pid"))[0]));
}

#[test]
fn command_ignoring_signals_dies_after_kill_after() {
    let env = Env::new();
    let mut child = env
        .lcrun()
        .args([
            "--kill-after",
            "1s",
            "--",
            "sh",
            "-c",
            "trap '' INT TERM; echo $$ > pid; sleep 300 & wait",
        ])
        .spawn()
        .unwrap();
    wait_for_file(&env.path("pid"));
    let start = Instant::now();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let took = start.elapsed();
    assert_eq!(status.signal(), Some(libc::SIGTERM));
    assert!(
        took >= Duration::from_millis(900),
        "killed before the grace period: {took:?}"
    );
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert!(!alive(pids(&env.path("pid"))[0]));
}

#[test]
fn timeout_cancels_quickly_with_124_and_caches_nothing() {
    let env = Env::new();
    let start = Instant::now();
    let out = env.run([
        "--timeout",
        "1s",
        "--",
        "sh",
        "-c",
        &format!("{}; sleep 10", env.tally("runs")),
    ]);
    assert_code(&out, 124);
    assert!(start.elapsed() < Duration::from_secs(4));
    assert!(stderr(&out).starts_with("lcrun: "), "{}", stderr(&out));
    let out = env.run([
        "--timeout",
        "1s",
        "--",
        "sh",
        "-c",
        &format!("{}; sleep 10", env.tally("runs")),
    ]);
    assert_code(&out, 124);
    assert_eq!(env.count("runs"), 2);
}

#[test]
fn bad_progress_and_time_options_exit_125_before_running() {
    let env = Env::new();
    for bad in [
        &["--progress-regex", "(unclosed"][..],
        &["--progress-regex", "no named group"],
        &["--interval", "soon"],
        &["--timeout", "x1"],
        &["--kill-after", "-5s"],
        &["--progress", "fancy"],
    ] {
        let mut args: Vec<&str> = bad.to_vec();
        let tally = env.tally("runs");
        args.extend(["--", "sh", "-c", &tally]);
        let out = env.run(&args);
        assert_code(&out, 125);
        assert!(
            stderr(&out).starts_with("lcrun: ") && stderr(&out).lines().count() == 1,
            "{bad:?}: {}",
            stderr(&out)
        );
    }
    assert_eq!(env.count("runs"), 0);
}

#[test]
fn progress_helper_is_a_no_op_outside_lcrun() {
    let env = Env::new();
    for args in [
        &["progress", "3/10", "compiling"][..],
        &["progress", "50%"],
        &["progress", "garbage"],
    ] {
        let out = env.run(args);
        assert_code(&out, 0);
        assert!(out.stdout.is_empty() && out.stderr.is_empty());
    }
    // Inside lcrun a malformed report is an error of the script's, said once.
    let out = env.run(["--", "sh", "-c", "lcrun progress x/y; echo $?"]);
    assert_eq!(stdout(&out), "125\n");
}

#[test]
fn no_cache_with_nothing_to_show_becomes_the_command() {
    let env = Env::new();
    // Same pid: lcrun exec'd the command instead of supervising it.
    let child = env
        .lcrun()
        .args(["--no-cache", "--", "sh", "-c", "echo $$"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_eq!(stdout(&out).trim(), pid.to_string());
    // With something to supervise (a timeout), it stays in between.
    let child = env
        .lcrun()
        .args(["--no-cache", "--timeout", "1m", "--", "sh", "-c", "echo $$"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_ne!(stdout(&out).trim(), pid.to_string());
}

fn wait_for_file(path: &std::path::Path) {
    let start = Instant::now();
    while !path.exists() || std::fs::read_to_string(path).unwrap_or_default().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

//! Under lcrun a command behaves as it would bare: pipes whose reader goes
//! away, write errors, terminals, job control, signals to lcrun and to its
//! caller, daemons, and an owner that dies mid-run.

use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::pty::Term;
use crate::util::*;

impl Drop for Term {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// Polls `done` until it holds, or fails after `within`.
#[track_caller]
fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn number_in(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn kill_all(path: &Path) {
    for pid in pids(path) {
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Total size of the files under `dir`.
fn bytes_under(dir: &Path) -> u64 {
    let mut total = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                todo.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

/// `bash -c SCRIPT` with lcrun on PATH and the test's cache, to completion.
fn bash(env: &Env, script: &str) -> std::process::Output {
    Command::new("bash")
        .args(["-c", script])
        .current_dir(env.dir.path())
        .env("PATH", path_with_lcrun())
        .env("LCRUN_CACHE_DIR", &env.cache)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn a_reader_that_goes_away_ends_the_command_as_bare() {
    let env = Env::new();
    // `yes` never ends by itself: only SIGPIPE ends it.
    let start = Instant::now();
    let out = bash(
        &env,
        "timeout 20 lcrun -- yes | head -1; echo \"status=${PIPESTATUS[0]}\"",
    );
    assert_eq!(stdout(&out), "y\nstatus=141\n", "{}", stderr(&out));
    assert_eq!(stderr(&out), "", "a reader going away is quiet");
    assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());

    // The same for stderr.
    let out = bash(
        &env,
        "timeout 20 lcrun -- sh -c 'yes >&2' 2>&1 >/dev/null | head -1; echo \"status=${PIPESTATUS[0]}\"",
    );
    assert_eq!(stdout(&out), "y\nstatus=141\n", "{}", stderr(&out));

    // Nothing is cached from a run whose output could not be delivered, and
    // the cache does not fill with what nobody read.
    let out = bash(
        &env,
        "timeout 20 lcrun -- cat /dev/urandom | head -c 10 | wc -c; echo \"status=${PIPESTATUS[0]}\"",
    );
    assert_eq!(stdout(&out), "10\nstatus=141\n", "{}", stderr(&out));
    assert!(
        bytes_under(&env.cache) < 8 << 20,
        "the cache grew to {} bytes",
        bytes_under(&env.cache)
    );
    let script = format!("{}; seq 1 500000", env.tally("runs"));
    for _ in 0..2 {
        let out = bash(
            &env,
            &format!("lcrun -- sh -c '{script}' | head -1; echo \"status=${{PIPESTATUS[0]}}\""),
        );
        assert_eq!(stdout(&out), "1\nstatus=141\n", "{}", stderr(&out));
    }
    assert_eq!(env.count("runs"), 2, "a run into a closed pipe was cached");
}

#[test]
fn a_write_error_is_reported_and_nothing_is_cached() {
    let env = Env::new();
    let script = format!("{}; echo x", env.tally("runs"));
    for _ in 0..2 {
        let out = bash(&env, &format!("lcrun -- sh -c '{script}' > /dev/full"));
        assert_code(&out, 1);
        let err = stderr(&out);
        assert!(err.starts_with("lcrun: ") && err.lines().count() == 1, "{err}");
        assert!(err.contains("No space left"), "{err}");
    }
    assert_eq!(env.count("runs"), 2, "a run whose output was lost was cached");

    // On replay: an error says so; a reader that goes away stays quiet.
    let big = format!("{}; seq 1 300000", env.tally("big"));
    let out = bash(&env, &format!("lcrun -- sh -c '{big}' > /dev/null"));
    assert_code(&out, 0);
    let out = bash(&env, &format!("lcrun -- sh -c '{big}' > /dev/full"));
    assert_code(&out, 1);
    assert!(stderr(&out).starts_with("lcrun: "), "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    let out = bash(&env, &format!("lcrun -- sh -c '{big}' | head -1"));
    assert_eq!((stdout(&out).as_str(), stderr(&out).as_str()), ("1\n", ""));
    assert_eq!(env.count("big"), 1, "the replays ran the command");
}

#[test]
fn a_full_disk_under_the_output_is_an_error() {
    let env = Env::new();
    env.write(
        "data",
        (0..300_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect::<Vec<_>>(),
    );
    std::fs::create_dir_all(env.path("mnt")).unwrap();
    let probe = Command::new("unshare").args(["-m", "true"]).status();
    assert!(
        probe.is_ok_and(|s| s.success()),
        "this test needs root and unshare(1) to mount a tmpfs in a private namespace"
    );
    // A 2 MB tmpfs with 1.9 MB taken: the 300 KB output does not fit.
    let script = format!(
        "mount -t tmpfs -o size=2m tmpfs mnt\n\
         head -c 1900k /dev/zero > mnt/filler\n\
         for i in 1 2; do\n\
           lcrun -- sh -c '{}; exec head -c 300k data' > mnt/out.bin 2>> err && s=0 || s=$?\n\
           echo \"status $s\" >> statuses\n\
         done",
        env.tally("runs")
    );
    let out = Command::new("unshare")
        .args(["-m", "sh", "-ec", &script])
        .current_dir(env.dir.path())
        .env("PATH", path_with_lcrun())
        .env("LCRUN_CACHE_DIR", &env.cache)
        .output()
        .unwrap();
    assert_code(&out, 0);
    let statuses = std::fs::read_to_string(env.path("statuses")).unwrap();
    assert!(
        statuses.lines().all(|l| l != "status 0") && statuses.lines().count() == 2,
        "{statuses}"
    );
    let err = std::fs::read_to_string(env.path("err")).unwrap();
    assert_eq!(err.lines().count(), 2, "{err}");
    assert!(err.lines().all(|l| l.starts_with("lcrun: ")), "{err}");
    assert_eq!(env.count("runs"), 2, "a truncated run was cached");
}

#[test]
fn job_control_in_an_interactive_shell() {
    let env = Env::new();
    env.script(
        "ticks.sh",
        "#!/bin/sh\ni=0\nwhile [ $i -lt 60 ]; do i=$((i+1)); echo $i > count; sleep 0.1; done\necho ticks-done\n",
    );
    let count = env.path("count");
    let mut term = Term::spawn(&env, &["bash", "--norc", "--noprofile", "-i"]);
    term.expect("$ ", Duration::from_secs(10));
    term.send(b"lcrun -- ./ticks.sh\r");
    wait_until("the first ticks", Duration::from_secs(10), || {
        number_in(&count) >= 2
    });

    // Ctrl-Z stops the command; the shell says so and has its prompt back.
    term.send(b"\x1a");
    term.expect("Stopped", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    let stopped_at = number_in(&count);
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(number_in(&count), stopped_at, "Ctrl-Z did not stop the command");

    // fg resumes it in the foreground.
    term.send(b"fg\r");
    wait_until("ticks after fg", Duration::from_secs(5), || {
        number_in(&count) > stopped_at
    });

    // Stopped again and resumed in the background: the shell keeps the
    // terminal meanwhile.
    term.send(b"\x1a");
    term.expect_n("Stopped", 2, Duration::from_secs(5));
    term.send(b"bg\r");
    let resumed_from = number_in(&count);
    wait_until("ticks after bg", Duration::from_secs(5), || {
        number_in(&count) > resumed_from
    });
    term.send(b"echo shell-$((6*7))\r");
    term.expect("shell-42", Duration::from_secs(5));
    term.send(b"wait; echo waited=$?\r");
    term.expect("waited=0", Duration::from_secs(30));
    term.send(b"echo after-$((1+1))\r");
    term.expect("after-2", Duration::from_secs(5));
    term.send(b"exit\r");
    term.ended(Duration::from_secs(5));
}

#[test]
fn the_command_reads_the_terminal_from_a_pipeline_and_a_redirection() {
    let env = Env::new();
    let mut term = Term::sh(
        &env,
        "lcrun --shell 'printf \"Continue? \"; read a; echo got:$a' | tee log; echo EXIT=$?",
    );
    term.expect("Continue? ", Duration::from_secs(10));
    term.send(b"yes\r");
    term.expect("EXIT=0", Duration::from_secs(10));
    assert!(std::fs::read_to_string(env.path("log"))
        .unwrap()
        .contains("got:yes"));

    let mut term = Term::sh(&env, "lcrun --shell 'read a; echo got:$a' > out; echo EXIT=$?");
    std::thread::sleep(Duration::from_millis(500));
    term.send(b"yes\r");
    term.expect("EXIT=0", Duration::from_secs(10));
    assert_eq!(std::fs::read_to_string(env.path("out")).unwrap(), "got:yes\n");
}

#[test]
fn the_command_reads_the_terminal_when_lcrun_leads_its_session() {
    let env = Env::new();
    // `script` runs lcrun as the leader of a new session on a new terminal,
    // as `ssh -t` and `docker run -it` do.
    let mut script = Command::new("script")
        .args(["-qec", "lcrun -- sh -c 'read x; echo got:$x'", "/dev/null"])
        .current_dir(env.dir.path())
        .env("PATH", path_with_lcrun())
        .env("LCRUN_CACHE_DIR", &env.cache)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let mut stdin = script.stdin.take().unwrap();
    stdin.write_all(b"hello\n").unwrap();
    let pid = script.id() as i32;
    // Kills a hung `script`, and only while it is ours: once it has been
    // waited for, its pid may be another test's process.
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(Duration::from_secs(15)).is_err() {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let out = script.wait_with_output().unwrap();
    let _ = done.send(());
    drop(stdin);
    assert!(
        stdout(&out).contains("got:hello"),
        "{out:?}: the command could not read its terminal"
    );
    let _ = watchdog.join();
}

#[test]
fn ctrl_c_stops_make_and_both_of_its_lcrun_recipes() {
    let env = Env::new();
    let recipe = |name: &str| {
        format!(
            "\tlcrun -- sh -c '{}; echo start-{name}; sleep 6; echo end-{name}'\n",
            env.tally(name).replace('\'', "")
        )
    };
    env.write(
        "Makefile",
        format!("all: a b\na:\n{}b:\n{}", recipe("a"), recipe("b")),
    );
    for round in 1..=2 {
        let mut term = Term::sh(&env, "trap : INT; make -j2; echo EXIT=$?");
        term.expect("start-a", Duration::from_secs(10));
        term.expect("start-b", Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(300));
        term.send(b"\x03");
        term.expect("EXIT=", Duration::from_secs(15));
        std::thread::sleep(Duration::from_millis(300));
        let screen = term.text();
        // (make echoes each recipe, "end-a'" included.)
        assert!(
            !screen.contains("end-a\r") && !screen.contains("end-b\r"),
            "a recipe ran on:\n{screen}"
        );
        assert!(!screen.contains("EXIT=0"), "{screen}");
        // Nothing was cached: both run again.
        assert_eq!((env.count("a"), env.count("b")), (round, round));
    }
}

#[test]
fn ctrl_c_stops_a_shell_loop() {
    let env = Env::new();
    let mut term = Term::sh(
        &env,
        "for i in 1 2 3; do lcrun -- sh -c \"echo it$i; sleep 5\"; done; echo loop-done",
    );
    term.expect("it1", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    term.send(b"\x03");
    term.ended(Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    let screen = term.text();
    assert!(!screen.contains("it2"), "the loop went on:\n{screen}");
    assert!(!screen.contains("loop-done"), "the loop went on:\n{screen}");
}

#[test]
fn a_cancelled_lcrun_dies_by_its_signal() {
    // Its caller (a shell loop, make) sees a signal death, as with the bare
    // command; a shell reports 128+N.
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        let env = Env::new();
        let mut child = env
            .lcrun()
            .args(["--", "sh", "-c", "echo $$ > pid; sleep 300"])
            .spawn()
            .unwrap();
        wait_until("the command", Duration::from_secs(10), || {
            !pids(&env.path("pid")).is_empty()
        });
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(signal), "{status:?}");
    }
    let env = Env::new();
    let out = bash(
        &env,
        "lcrun -- sh -c 'kill -TERM $PPID; sleep 10'; echo status=$?",
    );
    assert_eq!(stdout(&out), "status=143\n");
}

#[test]
fn signals_inherited_as_ignored_stay_ignored() {
    let env = Env::new();
    // nohup: SIGHUP is ignored by lcrun and by the command.
    let child = Command::new("nohup")
        .args([LCRUN, "--", "sh", "-c", "echo $$ > pid; sleep 1.5; echo finished"])
        .current_dir(env.dir.path())
        .env("LCRUN_CACHE_DIR", &env.cache)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the command", Duration::from_secs(10), || {
        !pids(&env.path("pid")).is_empty()
    });
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    unsafe { libc::kill(pids(&env.path("pid"))[0], libc::SIGHUP) };
    let out = child.wait_with_output().unwrap();
    assert_code(&out, 0);
    assert_eq!(stdout(&out), "finished\n");

    // A non-interactive shell's `&` job: SIGINT ignored.
    std::fs::remove_file(env.path("pid")).unwrap();
    let mut lcrun = env.lcrun();
    lcrun.args(["--", "sh", "-c", "echo $$ > pid; sleep 1.5; echo finished2"]);
    unsafe {
        lcrun.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            Ok(())
        });
    }
    let child = lcrun.stdout(Stdio::piped()).spawn().unwrap();
    wait_until("the command", Duration::from_secs(10), || {
        !pids(&env.path("pid")).is_empty()
    });
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    unsafe { libc::kill(pids(&env.path("pid"))[0], libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_code(&out, 0);
    assert_eq!(stdout(&out), "finished2\n");
}

#[test]
fn a_daemon_holding_the_pipes_does_not_hold_lcrun() {
    let env = Env::new();
    let start = Instant::now();
    let out = env.run([
        "--shell",
        "setsid sh -c 'echo $$ > dpid; exec sleep 6' & echo started",
    ]);
    let took = start.elapsed();
    kill_all(&env.path("dpid"));
    assert_code(&out, 0);
    assert_eq!(stdout(&out), "started\n");
    assert!(
        took < Duration::from_secs(3),
        "lcrun waited {took:?} for a daemon"
    );
}

#[test]
fn a_dead_owners_command_never_runs_beside_its_successor() {
    let env = Env::new();
    // Each copy records its start and then beats from a background process
    // (one that the copy's death does not end).
    env.script(
        "beat.sh",
        "#!/bin/sh\necho $$ >> starts\n( i=0; while [ $i -lt 200 ]; do echo $$ >> beats; sleep 0.05; i=$((i+1)); done ) &\necho $! >> beaters\nwait\n",
    );
    let mut owner = env.lcrun().args(["--", "./beat.sh"]).spawn().unwrap();
    let beats = env.path("beats");
    let beats_of = |pid: i32| {
        std::fs::read_to_string(&beats)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.trim() == pid.to_string())
            .count()
    };
    wait_until("the owner's beats", Duration::from_secs(10), || {
        pids(&env.path("starts"))
            .first()
            .is_some_and(|&p| beats_of(p) >= 2)
    });
    let first = pids(&env.path("starts"))[0];
    let mut waiter = env
        .lcrun()
        .args(["--", "./beat.sh"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    unsafe { libc::kill(owner.id() as i32, libc::SIGKILL) };
    owner.wait().unwrap();
    wait_until("the second copy", Duration::from_secs(10), || {
        pids(&env.path("starts")).len() >= 2
    });
    let at_takeover = beats_of(first);
    std::thread::sleep(Duration::from_millis(600));
    let later = beats_of(first);
    let _ = waiter.kill();
    let _ = waiter.wait();
    kill_all(&env.path("beaters"));
    kill_all(&env.path("starts"));
    assert_eq!(
        later, at_takeover,
        "the dead owner's command ran on beside its successor"
    );
}

#[test]
fn a_timeout_ends_daemons_the_command_started() {
    let env = Env::new();
    let out = env.run([
        "--timeout",
        "1s",
        "--shell",
        "setsid sh -c 'echo $$ > dpid; exec sleep 30' & sleep 30",
    ]);
    assert_code(&out, 124);
    let daemon = pids(&env.path("dpid"));
    let gone = daemon.iter().all(|&pid| !alive(pid));
    kill_all(&env.path("dpid"));
    assert!(gone, "the daemon {daemon:?} outlived the timed-out run");
}

#[test]
fn orphans_of_the_command_are_reaped_while_it_runs() {
    // They reparent to lcrun (a subreaper); none may stay a zombie.
    let env = Env::new();
    let out = env.run([
        "--shell",
        "for i in 1 2 3 4 5 6 7 8 9 10; do (sleep 0.05 &); done; sleep 1; n=0; \
         for s in /proc/[0-9]*/stat; do set -- $(cat $s 2>/dev/null) x x x x; \
         [ \"$3\" = Z ] && [ \"$4\" = \"$PPID\" ] && n=$((n+1)); done; echo zombies=$n",
    ]);
    assert_eq!(stdout(&out), "zombies=0\n", "{}", stderr(&out));
}

#[test]
fn signals_sent_to_lcrun_alone_reach_the_command() {
    // SIGUSR1 to lcrun (dd's progress request, say) goes on to the command,
    // which decides; lcrun does not die of it.
    let env = Env::new();
    let child = env
        .lcrun()
        .args([
            "--",
            "sh",
            "-c",
            "trap 'echo got-usr1' USR1; echo $$ > pid; sleep 2 & wait; wait; echo done",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the command", Duration::from_secs(10), || {
        !pids(&env.path("pid")).is_empty()
    });
    unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) };
    let out = child.wait_with_output().unwrap();
    assert_code(&out, 0);
    assert_eq!(stdout(&out), "got-usr1\ndone\n");
}

#[test]
fn a_killed_lcrun_takes_its_command_with_it() {
    let env = Env::new();
    let mut owner = env
        .lcrun()
        .args(["--", "sh", "-c", "echo $$ > pid; sleep 30"])
        .spawn()
        .unwrap();
    wait_until("the command", Duration::from_secs(10), || {
        !pids(&env.path("pid")).is_empty()
    });
    unsafe { libc::kill(owner.id() as i32, libc::SIGKILL) };
    owner.wait().unwrap();
    let command = pids(&env.path("pid"))[0];
    let gone = Instant::now();
    while alive(command) && gone.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let survived = alive(command);
    kill_all(&env.path("pid"));
    assert!(!survived, "the command ran on after its lcrun was killed");
}

#[test]
fn a_reader_that_stops_reading_does_not_stop_signals_or_the_timeout() {
    // The test holds lcrun's stdout open and never reads it: lcrun blocks
    // writing, as the command would bare; a signal or the timeout must still
    // end the run, as they would end the bare command.
    let env = Env::new();
    for (options, signal) in [(&["--timeout", "1s"][..], None), (&[][..], Some(libc::SIGTERM))] {
        let _ = std::fs::remove_file(env.path("pid"));
        let mut child = env
            .lcrun()
            .args(options)
            .args(["--", "sh", "-c", "echo $$ > pid; exec yes"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_until("the command", Duration::from_secs(10), || {
            !pids(&env.path("pid")).is_empty()
        });
        std::thread::sleep(Duration::from_millis(300));
        if let Some(signal) = signal {
            unsafe { libc::kill(child.id() as i32, signal) };
        }
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if start.elapsed() > Duration::from_secs(8) {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let _ = child.kill();
        let _ = child.wait();
        kill_all(&env.path("pid"));
        let status = status.unwrap_or_else(|| panic!("{options:?} {signal:?}: lcrun stayed blocked"));
        match signal {
            Some(signal) => assert_eq!(status.signal(), Some(signal)),
            None => assert_eq!(status.code(), Some(124)),
        }
    }
}

#[test]
fn the_command_gets_sigpipe_as_lcrun_got_it() {
    // lcrun ignores SIGPIPE for itself; the command gets the disposition
    // lcrun's caller gave, as it would bare.
    let env = Env::new();
    let sigpipe_ignored = |options: &[&str], ignore: bool| {
        let mut lcrun = env.lcrun();
        lcrun
            .args(options)
            // A distinct command each time, or the cached run would replay.
            .args([
                "--",
                "sh",
                "-c",
                "grep SigIgn /proc/$$/status",
                &format!("{ignore}"),
            ]);
        if ignore {
            unsafe {
                lcrun.pre_exec(|| {
                    libc::signal(libc::SIGPIPE, libc::SIG_IGN);
                    Ok(())
                });
            }
        }
        let out = lcrun.output().unwrap();
        assert_code(&out, 0);
        let mask = stdout(&out)
            .split_whitespace()
            .nth(1)
            .map(|hex| u64::from_str_radix(hex, 16).unwrap());
        mask.unwrap() & (1 << (libc::SIGPIPE - 1)) != 0
    };
    for options in [
        &["--no-cache"][..],
        &["--cache-mode", "off", "--timeout", "1m"],
        &[],
    ] {
        assert!(!sigpipe_ignored(options, false), "{options:?}");
        assert!(sigpipe_ignored(options, true), "{options:?}");
    }
}

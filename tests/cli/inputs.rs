//! Bad input and a hostile environment (issue 9, items 11-17): absurd
//! durations, a missing TMPDIR, floods on the progress file, the progress
//! helper's arguments, scripts without `#!`, empty LCRUN_* variables and
//! usage errors that say all of it in one line.

use std::fs;
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

/// stderr is exactly one `lcrun:` line, with no trace of a panic.
#[track_caller]
fn assert_one_lcrun_line(out: &Output, what: &str) {
    let text = stderr(out);
    assert_eq!(text.lines().count(), 1, "{what}: not one line: {text:?}");
    assert!(text.starts_with("lcrun: "), "{what}: {text:?}");
    assert!(
        !text.contains("panicked") && !text.contains("backtrace"),
        "{what}: {text:?}"
    );
}

/// The `lcrun-progress-*` files in `dir`.
fn progress_files(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with("lcrun-progress-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits for `child` at most `limit`; kills it and fails past that.
#[track_caller]
fn wait_at_most(mut child: Child, limit: Duration, what: &str) -> Output {
    let start = Instant::now();
    while child.try_wait().expect("try_wait").is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("wait");
            panic!("{what}: still running after {limit:?}; stderr: {}", stderr(&out));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("wait")
}

// --- item 11: durations ----------------------------------------------------

/// Values no duration option may take: past any deadline an `Instant` can
/// hold, negative, not a number, empty.
const ABSURD: &[&str] = &[
    "1e20",
    "1e19",
    "292277026596y",
    "18446744073709551616s",
    "99999999999999999999999999",
    "101y",
    "-1",
    "-5s",
    "nan",
    "inf",
    "-inf",
    "",
];

#[test]
fn every_duration_option_refuses_absurd_values_before_anything_runs() {
    let env = Env::new();
    let tmp = env.path("tmp");
    fs::create_dir(&tmp).unwrap();
    let tally = env.tally("ran");
    for value in ABSURD {
        let cases: Vec<(String, Vec<String>, Option<&str>)> = vec![
            (
                "--expire".into(),
                vec!["--expire".into(), value.to_string()],
                None,
            ),
            ("-e".into(), vec![format!("-e{value}")], None),
            (
                "--timeout".into(),
                vec!["--timeout".into(), value.to_string()],
                None,
            ),
            (
                "--interval".into(),
                vec!["--interval".into(), value.to_string()],
                None,
            ),
            (
                "--kill-after".into(),
                vec![
                    "--kill-after".into(),
                    value.to_string(),
                    "--timeout".into(),
                    "0.5".into(),
                ],
                None,
            ),
            ("LCRUN_EXPIRE".into(), vec![], Some(value)),
        ];
        for (option, mut args, expire_env) in cases {
            if expire_env == Some("") {
                continue; // an empty variable is unset (item 16)
            }
            let what = format!("{option} {value:?}");
            args.extend(["--".into(), "sh".into(), "-c".into(), format!("{tally}; sleep 3")]);
            let mut cmd = env.lcrun();
            cmd.env("TMPDIR", &tmp).args(&args);
            if let Some(value) = expire_env {
                cmd.env("LCRUN_EXPIRE", value);
            }
            let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
            let out = wait_at_most(child, Duration::from_secs(20), &what);
            assert_eq!(code(&out), 125, "{what}: {}", stderr(&out));
            assert_one_lcrun_line(&out, &what);
            assert!(out.stdout.is_empty(), "{what}");
            assert_eq!(env.count("ran"), 0, "{what}: the command ran");
            assert_eq!(progress_files(&tmp), Vec::<String>::new(), "{what}");
        }
    }
}

#[test]
fn a_century_is_accepted() {
    let env = Env::new();
    let out = env.run([
        "--expire",
        "100y",
        "--timeout",
        "36500d",
        "--interval",
        "99y",
        "--kill-after",
        "1e9",
        "--",
        "echo",
        "ok",
    ]);
    assert_code(&out, 0);
    assert_eq!(stdout(&out), "ok\n");
}

// --- item 16: empty LCRUN_* ------------------------------------------------

#[test]
fn an_empty_lcrun_variable_is_unset() {
    let env = Env::new();
    let home = env.path("home");
    fs::create_dir(&home).unwrap();
    for var in [
        "LCRUN_CACHE_DIR",
        "LCRUN_EXPIRE",
        "LCRUN_CACHE_MODE",
        "LCRUN_QUIET",
        "LCRUN_PROGRESS",
    ] {
        let tally = env.tally(var);
        let out = env
            .lcrun()
            .env(var, "")
            .env("HOME", &home)
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .args(["--", "sh", "-c", &format!("{tally}; echo ran")])
            .output()
            .unwrap();
        assert_code(&out, 0);
        assert_eq!(stdout(&out), "ran\n", "{var}");
        assert_eq!(env.count(var), 1, "{var}");
    }
    // Unset, the cache dir is the platform's: a second run there is a hit.
    let again = env
        .lcrun()
        .env("LCRUN_CACHE_DIR", "")
        .env("HOME", &home)
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .args([
            "--",
            "sh",
            "-c",
            &format!("{}; echo ran", env.tally("LCRUN_CACHE_DIR")),
        ])
        .output()
        .unwrap();
    assert_code(&again, 0);
    assert_eq!(env.count("LCRUN_CACHE_DIR"), 1, "not a hit");
    assert!(home.join(".cache/lcrun").is_dir());
    // The progress helper with an empty LCRUN_PROGRESS is outside lcrun.
    let out = env
        .lcrun()
        .env("LCRUN_PROGRESS", "")
        .args(["progress", "1/2"])
        .output()
        .unwrap();
    assert_code(&out, 0);
    assert!(out.stderr.is_empty());
}

// --- item 17: usage errors -------------------------------------------------

#[test]
fn usage_errors_say_all_of_it_in_one_line() {
    let env = Env::new();
    let out = env.run(["--cache-mode", "bogus", "--", "true"]);
    assert_code(&out, 125);
    assert_one_lcrun_line(&out, "--cache-mode bogus");
    assert!(stderr(&out).contains("rw, ro, wo, off"), "{}", stderr(&out));

    let out = env.run(["echo", "hi"]);
    assert_code(&out, 125);
    assert_one_lcrun_line(&out, "echo hi");
    assert!(stderr(&out).contains("lcrun -- echo hi"), "{}", stderr(&out));

    let out = env.run(["-q", "echo", "hi there"]);
    assert_one_lcrun_line(&out, "-q echo");
    assert!(
        stderr(&out).contains("lcrun -q -- echo 'hi there'"),
        "{}",
        stderr(&out)
    );

    let out = env.run(["--cache-dir"]);
    assert_code(&out, 125);
    assert_one_lcrun_line(&out, "--cache-dir");
    assert!(stderr(&out).contains("--cache-dir <DIR>"), "{}", stderr(&out));

    // Inside lcrun, the helper without a position names what is missing.
    let progress = env.write("progress", "");
    let out = env
        .lcrun()
        .env("LCRUN_PROGRESS", &progress)
        .arg("progress")
        .output()
        .unwrap();
    assert_code(&out, 125);
    assert_one_lcrun_line(&out, "progress");
    assert!(stderr(&out).contains("POSITION"), "{}", stderr(&out));
}

// --- item 14: the progress helper ------------------------------------------

#[test]
fn progress_helper_takes_everything_after_the_position_as_the_message() {
    let env = Env::new();
    let file = env.write("progress", "");
    let out = env
        .lcrun()
        .env("LCRUN_PROGRESS", &file)
        .args(["progress", "1/2", "-O2", "--release", "build"])
        .output()
        .unwrap();
    assert_code(&out, 0);
    assert_eq!(fs::read_to_string(&file).unwrap(), "1/2 -O2 --release build\n");
    // Under lcrun, end to end.
    let out = env.run([
        "--no-cache",
        "--timeout",
        "1m",
        "--",
        "sh",
        "-c",
        "lcrun progress 1/2 -O2 build && echo reported",
    ]);
    assert_code(&out, 0);
    assert_eq!(stdout(&out), "reported\n", "{}", stderr(&out));
}

#[test]
fn progress_helper_outside_lcrun_succeeds_whatever_its_arguments() {
    let env = Env::new();
    for args in [
        &["progress"][..],
        &["progress", "1/2", "-O2", "build"],
        &["progress", "-x"],
        &["progress", "--bogus", "--", "x"],
        &["progress", "not-a-position", "msg"],
    ] {
        let out = env.run(args);
        assert_code(&out, 0);
        assert!(
            out.stdout.is_empty() && out.stderr.is_empty(),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn progress_helper_never_blocks_on_a_fifo_without_reader() {
    let env = Env::new();
    let fifo = env.path("fifo");
    let status = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    let child = env
        .lcrun()
        .env("LCRUN_PROGRESS", &fifo)
        .args(["progress", "1/2", "step"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_at_most(child, Duration::from_secs(5), "lcrun progress on a FIFO");
    assert_code(&out, 0);
}

// --- item 12: a missing TMPDIR ---------------------------------------------

#[test]
fn a_missing_tmpdir_never_stops_the_command() {
    let env = Env::new();
    for args in [
        &["--", "echo", "t1"][..],
        &["--no-cache", "--timeout", "5", "--", "echo", "t1"],
        &[
            "--no-cache",
            "--progress",
            "plain",
            "--interval",
            "1h",
            "--",
            "echo",
            "t1",
        ],
        &["-c", "stdin", "--", "sh", "-c", "cat; echo t1"],
    ] {
        let out = env
            .lcrun()
            .env("TMPDIR", "/nonexistent")
            .args(args)
            .output()
            .unwrap();
        assert_code(&out, 0);
        assert_eq!(stdout(&out), "t1\n", "{args:?}: {}", stderr(&out));
    }
    // The command still gets a progress file to report to.
    let out = env
        .lcrun()
        .env("TMPDIR", "/nonexistent")
        .args([
            "--",
            "sh",
            "-c",
            r#"test -f "$LCRUN_PROGRESS" && lcrun progress 1/2 && echo has-progress"#,
        ])
        .output()
        .unwrap();
    assert_code(&out, 0);
    assert_eq!(stdout(&out), "has-progress\n", "{}", stderr(&out));
    // `-c stdin` spools the input somewhere and feeds all of it on.
    let out = env
        .lcrun()
        .env("TMPDIR", "/nonexistent")
        .args(["-c", "stdin", "--", "wc", "-c"])
        .stdin(fs::File::open(env.write("input", vec![b'x'; 100_000])).unwrap())
        .output()
        .unwrap();
    assert_code(&out, 0);
    assert_eq!(stdout(&out).trim(), "100000");
}

#[test]
fn progress_files_are_removed_when_lcrun_is_cancelled_or_times_out() {
    let env = Env::new();
    let tmp = env.path("tmp");
    fs::create_dir(&tmp).unwrap();
    let started = env.path("started");
    let script = format!("touch '{}'; exec sleep 30", started.display());
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        let _ = fs::remove_file(&started);
        let child = env
            .lcrun()
            .env("TMPDIR", &tmp)
            .args([
                "--kill-after",
                "1",
                "--",
                "sh",
                "-c",
                &script,
                &signal.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while !started.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the command never started"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(progress_files(&tmp).len(), 1, "no progress file while running");
        // SAFETY: signalling the child we started.
        unsafe { libc::kill(child.id() as i32, signal) };
        let out = wait_at_most(child, Duration::from_secs(20), "cancelled lcrun");
        assert_ne!(out.status.code(), Some(0));
        assert_eq!(progress_files(&tmp), Vec::<String>::new(), "signal {signal}");
    }
    let out = env
        .lcrun()
        .env("TMPDIR", &tmp)
        .args(["--timeout", "0.3", "--kill-after", "0.5", "--", "sleep", "30"])
        .output()
        .unwrap();
    assert_code(&out, 124);
    assert_eq!(progress_files(&tmp), Vec::<String>::new(), "timeout");
}

// --- item 15: a script without `#!` ----------------------------------------

#[test]
fn a_script_without_shebang_runs_as_execvp_runs_it() {
    let env = Env::new();
    env.script(
        "noshebang",
        &format!("{}\necho \"ran with $# args: $*\"\n", env.tally("ran")),
    );
    let cases: [&[&str]; 4] = [
        &["--", "./noshebang", "a", "b c"],
        &["--no-cache", "--", "./noshebang", "a", "b c"],
        &["--no-cache", "--timeout", "1m", "--", "./noshebang", "a", "b c"],
        &["-c", "stdin", "--", "./noshebang", "a", "b c"],
    ];
    for (i, args) in cases.into_iter().enumerate() {
        let out = env.run(args);
        assert_code(&out, 0);
        assert_eq!(
            stdout(&out),
            "ran with 2 args: a b c\n",
            "{args:?}: {}",
            stderr(&out)
        );
        assert_eq!(env.count("ran"), i + 1, "{args:?}");
    }
    // Found on PATH too, and the cached run replays.
    let path = format!("{}:{}", env.dir.path().display(), path_with_lcrun());
    let out = env
        .lcrun()
        .env("PATH", &path)
        .args(["--", "noshebang", "x"])
        .output()
        .unwrap();
    assert_code(&out, 0);
    assert_eq!(stdout(&out), "ran with 1 args: x\n");
    let again = env
        .lcrun()
        .env("PATH", &path)
        .args(["--", "noshebang", "x"])
        .output()
        .unwrap();
    assert_eq!(stdout(&again), "ran with 1 args: x\n");
    assert_eq!(env.count("ran"), cases.len() + 1, "the second run was not a hit");
}

// --- item 13: floods ---------------------------------------------------------

/// The peak resident memory of `child` (VmHWM, KiB), read until it exits.
fn peak_rss_kib(mut child: Child) -> (u64, Output) {
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        let status = fs::read_to_string(&status_file).unwrap_or_default();
        if let Some(kib) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            peak = peak.max(kib);
        }
        assert!(start.elapsed() < Duration::from_secs(60), "still running");
        std::thread::sleep(Duration::from_millis(10));
    }
    (peak, child.wait_with_output().unwrap())
}

#[test]
fn a_flood_on_the_progress_file_is_read_in_linear_time_and_signals_still_act() {
    let env = Env::new();
    let tmp = env.path("tmp");
    fs::create_dir(&tmp).unwrap();
    // 16 MiB of progress lines: read whole in time linear in their size.
    let start = Instant::now();
    let out = env
        .lcrun()
        .env("TMPDIR", &tmp)
        .args(["--no-cache", "--timeout", "2m", "--shell"])
        .arg(r#"yes 1/2 | head -c 16M > "$LCRUN_PROGRESS"; echo done"#)
        .output()
        .unwrap();
    assert_code(&out, 0);
    assert!(start.elapsed() < Duration::from_secs(4), "{:?}", start.elapsed());
    // 16 MiB without a newline, then the command waits: lcrun is not stuck
    // in the progress file, it acts on a SIGTERM at once.
    let written = env.path("written");
    let child = env
        .lcrun()
        .env("TMPDIR", &tmp)
        .args(["--no-cache", "--timeout", "2m", "--kill-after", "1", "--shell"])
        .arg(format!(
            r#"head -c 16M /dev/zero > "$LCRUN_PROGRESS"; touch '{}'; exec sleep 30"#,
            written.display()
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !written.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the command never wrote"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: signalling the child we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = wait_at_most(child, Duration::from_secs(5), "lcrun after SIGTERM");
    assert_ne!(out.status.code(), Some(0));
    assert_eq!(progress_files(&tmp), Vec::<String>::new());
}

#[test]
fn the_bar_holds_no_more_than_a_little_of_a_stream_without_newlines() {
    let env = Env::new();
    let run = |mode: &str| {
        let child = env
            .lcrun()
            .args(["--no-cache", "--timeout", "2m", "--progress", mode, "--shell"])
            .arg("head -c 256M /dev/zero >&2; sleep 0.5")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (peak, out) = peak_rss_kib(child);
        assert_code(&out, 0);
        peak
    };
    let plain = run("plain");
    let bar = run("bar");
    assert!(
        bar < plain + 3 * 1024,
        "peak RSS with the bar {bar} KiB, without {plain} KiB"
    );
}

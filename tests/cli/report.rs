//! Saying what happened: `--report` lines, the hit message on a terminal and
//! in logs, heartbeats that name the command, and the help that explains the
//! options (completions: `complete.rs`).

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::pty::Term;
use crate::util::*;

/// The lines of a report file, each parsed.
fn report_lines(env: &Env, rel: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(env.path(rel)).expect("report file");
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("bad line {line:?}: {err}")))
        .collect()
}

#[test]
fn report_has_a_line_for_a_miss_a_hit_a_failure_and_a_timeout() {
    let env = Env::new();
    let work = format!("{}; sleep 0.5; echo hello", env.tally("work"));
    let miss = env.run(["--report", "r.jsonl", "--", "sh", "-c", &work]);
    assert_code(&miss, 0);
    // The variable names the file as the flag does.
    let hit = env
        .lcrun()
        .env("LCRUN_REPORT", "r.jsonl")
        .args(["--", "sh", "-c", &work])
        .output()
        .unwrap();
    assert_code(&hit, 0);
    assert_eq!(stdout(&hit), "hello\n");
    assert_eq!(env.count("work"), 1);
    let failed = env.run(["--report", "r.jsonl", "--", "sh", "-c", "echo oops >&2; exit 3"]);
    assert_code(&failed, 3);
    let timed_out = env.run(["--report", "r.jsonl", "--timeout", "0.3s", "--", "sleep", "10"]);
    assert_code(&timed_out, 124);
    let uncached = env.run(["--report", "r.jsonl", "--no-cache", "--", "true"]);
    assert_code(&uncached, 0);

    let lines = report_lines(&env, "r.jsonl");
    assert_eq!(lines.len(), 5, "{lines:#?}");
    let [miss, hit, failed, timed_out, uncached] = &lines[..] else {
        unreachable!()
    };

    let key = miss["key"].as_str().unwrap();
    assert_eq!(key.len(), 64, "{miss}");
    assert!(key.bytes().all(|b| b.is_ascii_hexdigit()), "{miss}");
    assert!(miss["command"].as_str().unwrap().contains("echo hello"), "{miss}");
    assert_eq!(miss["hit"], false, "{miss}");
    assert_eq!(miss["from"], Value::Null, "{miss}");
    assert_eq!(miss["status"], 0, "{miss}");
    assert_eq!(miss["bytes_out"], 6, "{miss}");
    assert_eq!(miss["saved_ms"], 0, "{miss}");
    assert!(miss["duration_ms"].as_u64().unwrap() >= 500, "{miss}");
    assert_eq!(miss["cancelled"], false, "{miss}");
    assert_eq!(miss["timed_out"], false, "{miss}");
    assert!(miss["started"].as_str().unwrap().ends_with('Z'), "{miss}");

    assert_eq!(hit["key"], key, "{hit}");
    assert_eq!(hit["hit"], true, "{hit}");
    assert_eq!(hit["from"], "local", "{hit}");
    assert_eq!(hit["status"], 0, "{hit}");
    assert_eq!(hit["bytes_out"], 6, "{hit}");
    assert!(hit["saved_ms"].as_u64().unwrap() >= 200, "{hit}");
    assert!(hit["duration_ms"].as_u64().unwrap() < 500, "{hit}");

    assert_eq!(failed["hit"], false, "{failed}");
    assert_eq!(failed["status"], 3, "{failed}");
    assert_eq!(failed["bytes_out"], 5, "{failed}");

    assert_eq!(timed_out["status"], 124, "{timed_out}");
    assert_eq!(timed_out["timed_out"], true, "{timed_out}");
    assert_eq!(timed_out["cancelled"], false, "{timed_out}");
    assert_eq!(timed_out["hit"], false, "{timed_out}");

    // No cache, no key; the run is reported all the same.
    assert_eq!(uncached["key"], Value::Null, "{uncached}");
    assert_eq!(uncached["status"], 0, "{uncached}");
}

#[test]
fn a_report_that_cannot_be_written_is_one_warning() {
    let env = Env::new();
    let out = env.run([
        "--report",
        "no/such/dir/r.jsonl",
        "--",
        "sh",
        "-c",
        "echo hi; exit 2",
    ]);
    assert_code(&out, 2);
    assert_eq!(stdout(&out), "hi\n");
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("lcrun: cannot write the report"), "{err}");
    // A FIFO no one reads: a warning, not a hang.
    let fifo = env.path("fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let start = Instant::now();
    let out = env.run(["--report", "fifo", "--", "sh", "-c", "echo hi; exit 2"]);
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_code(&out, 2);
    assert_eq!(stdout(&out), "hi\n");
    assert!(
        stderr(&out).starts_with("lcrun: cannot write the report"),
        "{}",
        stderr(&out)
    );
    // -q silences the warning, never the result.
    let out = env.run([
        "-q",
        "--report",
        "no/such/dir/r.jsonl",
        "--",
        "sh",
        "-c",
        "exit 2",
    ]);
    assert_code(&out, 2);
    assert_eq!(stderr(&out), "");
}

#[test]
fn parallel_runs_append_whole_lines() {
    let env = Env::new();
    // Lines of several KiB each, so a line written in pieces would show.
    let padding = "x".repeat(6000);
    let children: Vec<_> = (0..16)
        .map(|i| {
            env.start([
                "--report",
                "r.jsonl",
                "--",
                "sh",
                "-c",
                &format!("echo {i} # {padding}"),
            ])
        })
        .collect();
    for child in children {
        assert_code(&child.wait_with_output().unwrap(), 0);
    }
    let lines = report_lines(&env, "r.jsonl");
    assert_eq!(lines.len(), 16);
    let mut seen: Vec<String> = lines
        .iter()
        .map(|l| {
            l["command"]
                .as_str()
                .unwrap()
                .split(' ')
                .nth(3)
                .unwrap()
                .to_owned()
        })
        .collect();
    seen.sort_by_key(|n| n.parse::<u32>().unwrap());
    assert_eq!(seen, (0..16).map(|i| i.to_string()).collect::<Vec<_>>());
}

/// Runs `line` under `/bin/sh` in a pseudo-terminal to its end; what the
/// terminal showed.
fn on_a_terminal(env: &Env, line: &str) -> String {
    let mut term = Term::script(env, line);
    term.exit_status(Duration::from_secs(20));
    term.text()
}

#[test]
fn a_hit_says_so_on_a_terminal_unless_quiet() {
    let env = Env::new();
    let run = "lcrun -- sh -c 'sleep 0.5; echo computed'";
    let first = on_a_terminal(&env, run);
    assert!(first.contains("EXIT=0"), "{first}");
    assert!(!first.contains("replayed"), "{first}");
    let hit = on_a_terminal(&env, run);
    assert!(hit.contains("EXIT=0"), "{hit}");
    let line = hit
        .lines()
        .find(|l| l.contains("lcrun: replayed"))
        .unwrap_or_else(|| panic!("no hit line:\n{hit}"));
    assert!(line.contains("lcrun: replayed from cache (local, "), "{line}");
    assert!(line.contains(" old, saved "), "{line}");
    assert!(
        line.trim_end().ends_with("): sh -c 'sleep 0.5; echo computed'"),
        "{line:?}"
    );
    // `--progress none` turns off the bar, not lcrun's own lines.
    let none = on_a_terminal(&env, &run.replace("lcrun", "lcrun --progress none"));
    assert!(none.contains("lcrun: replayed"), "{none}");
    let quiet = on_a_terminal(&env, &run.replace("lcrun", "lcrun -q"));
    assert!(quiet.contains("EXIT=0") && quiet.contains("computed"), "{quiet}");
    assert!(!quiet.contains("lcrun:"), "{quiet}");
}

#[test]
fn a_hit_says_so_in_a_log_when_lcruns_lines_are_asked_for() {
    let env = Env::new();
    let cmd = ["--", "sh", "-c", "echo computed"];
    assert_code(&env.run(cmd), 0);
    let says = |out: &std::process::Output| {
        assert_code(out, 0);
        assert_eq!(stdout(out), "computed\n");
        let err = stderr(out);
        match err.lines().collect::<Vec<_>>()[..] {
            [] => false,
            [line] => {
                assert!(line.starts_with("lcrun: replayed from cache (local, "), "{line}");
                assert!(line.ends_with("): sh -c 'echo computed'"), "{line}");
                true
            }
            _ => panic!("more than one line: {err}"),
        }
    };
    // A plain log, not asked: the command's bytes only.
    assert!(!says(&env.run(cmd)));
    let with = |flags: &[&str], var: Option<(&str, &str)>| {
        let mut command = env.lcrun();
        command.args(flags).args(cmd);
        if let Some((name, value)) = var {
            command.env(name, value);
        }
        command.output().unwrap()
    };
    assert!(says(&with(&["-v"], None)));
    assert!(says(&with(&["--verbose"], None)));
    assert!(says(&with(&["--interval", "1m"], None)));
    assert!(says(&with(&[], Some(("LCRUN_INTERVAL", "1m")))));
    assert!(!says(&with(&["-q", "-v"], None)));
    assert!(!says(&with(&["--interval", "1m"], Some(("LCRUN_QUIET", "1")))));
}

#[test]
fn heartbeats_name_the_command_its_progress_and_last_line() {
    let env = Env::new();
    let script = "echo first; lcrun progress 3/10 compiling; echo 'building foo'; sleep 1.2";
    for how in ["flag", "variable"] {
        let mut command = env.lcrun();
        command.arg("--no-cache");
        if how == "flag" {
            command.args(["--interval", "300ms"]);
        } else {
            command.env("LCRUN_INTERVAL", "300ms");
        }
        let out = command
            .args(["--", "sh", "-c", script])
            .stdout(Stdio::piped())
            .output()
            .unwrap();
        assert_code(&out, 0);
        let err = stderr(&out);
        let beats: Vec<&str> = err.lines().filter(|l| l.starts_with("lcrun: running ")).collect();
        assert!(beats.len() >= 2, "{how}: too few heartbeats:\n{err}");
        let last = beats.last().unwrap();
        assert!(
            last.starts_with("lcrun: running sh -c 'echo first; "),
            "{how}: {last}"
        );
        assert!(last.contains("… for 1"), "{how}: {last}");
        assert!(last.contains(", 3/10 compiling"), "{how}: {last}");
        assert!(last.ends_with("; last line: building foo"), "{how}: {last}");
    }
}

#[test]
fn help_groups_options_by_purpose_with_examples() {
    let env = Env::new();
    let out = env.run(["--help"]);
    assert_code(&out, 0);
    let help = stdout(&out);
    let mut at = 0;
    for heading in [
        "Caching:",
        "Storage:",
        "Progress and reports:",
        "Cancellation:",
        "Examples:",
    ] {
        let found = help[at..]
            .find(&format!("\n{heading}\n"))
            .unwrap_or_else(|| panic!("no {heading} after byte {at}:\n{help}"));
        at += found + 1;
    }
    let pos = |text: &str| help.find(text).unwrap_or_else(|| panic!("no {text}:\n{help}"));
    let between = |option: &str, from: &str, to: &str| {
        let at = pos(option);
        assert!(
            pos(from) < at && at < pos(to),
            "{option} not under {from}:\n{help}"
        );
    };
    between("--cache-by", "\nCaching:", "\nStorage:");
    between("--cache-dir", "\nStorage:", "\nProgress and reports:");
    between("--interval", "\nProgress and reports:", "\nCancellation:");
    between("--timeout", "\nCancellation:", "\nExamples:");
    assert!(help.contains("--report <FILE>"), "{help}");
    // Each mode of --progress says what it prints.
    for mode in ["auto:", "bar:", "plain:", "none:"] {
        assert!(help.contains(mode), "{mode}: {help}");
    }
    // The subcommand has its own help.
    let out = env.run(["progress", "--help"]);
    assert_code(&out, 0);
    assert!(stdout(&out).contains("Usage: lcrun progress"), "{}", stdout(&out));
}

#[test]
fn a_script_of_many_lines_is_named_on_one_line() {
    let env = Env::new();
    let script = "echo one\necho two\nsleep 0.8";
    let out = env.run(["-v", "--interval", "200ms", "--", "sh", "-c", script]);
    assert_code(&out, 0);
    let again = env.run(["-v", "--", "sh", "-c", script]);
    assert_code(&again, 0);
    for err in [stderr(&out), stderr(&again)] {
        assert!(!err.is_empty());
        for line in err.lines() {
            assert!(line.starts_with("lcrun: "), "{err}");
        }
    }
    assert!(
        stderr(&out).contains("sh -c 'echo one echo two sleep 0.8' for "),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&again).ends_with("): sh -c 'echo one echo two sleep 0.8'\n"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn a_cancelled_run_is_reported_as_cancelled() {
    let env = Env::new();
    let child = env.start(["--report", "r.jsonl", "--", "sh", "-c", "touch started; sleep 30"]);
    let start = Instant::now();
    while !env.path("started").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the command never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: a signal to the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGTERM), "{out:?}");
    let lines = report_lines(&env, "r.jsonl");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["cancelled"], true, "{}", lines[0]);
    assert_eq!(lines[0]["timed_out"], false, "{}", lines[0]);
    assert_eq!(lines[0]["status"], 143, "{}", lines[0]);
    assert_eq!(lines[0]["hit"], false, "{}", lines[0]);
}

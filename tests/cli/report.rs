//! Saying what happened: `--report` lines, the hit message on a terminal and
//! in logs, heartbeats that name the command, and the help, man pages and
//! completions that explain the options.

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

/// A directory to complete paths in: `src/`, `src/main.c`, `srv.txt`.
fn completion_tree() -> Env {
    let env = Env::new();
    env.write("src/main.c", "int main;");
    env.write("srv.txt", "");
    env
}

fn script(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("completions")
        .join(name)
}

/// What bash's completion of lcrun offers at the end of `line`, in a real
/// bash that loaded completions/lcrun.bash: the function `complete -p`
/// names is called as readline would call it, the words split at ':' as
/// readline splits them.
fn bash_completes(env: &Env, line: &str) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    for word in line.split(' ') {
        let mut parts = word.split(':').peekable();
        while let Some(part) = parts.next() {
            words.push(part.to_owned());
            if parts.peek().is_some() {
                words.push(":".to_owned());
            }
        }
    }
    let quote = |w: &str| format!("'{}'", w.replace('\'', "'\\''"));
    let cword = words.len() - 1;
    let prev = if cword > 0 {
        words[cword - 1].clone()
    } else {
        String::new()
    };
    let program = format!(
        r#"source {script}
spec=$(complete -p lcrun) || exit 3
echo "SPEC $spec"
func=${{spec#*-F }}; func=${{func%% *}}
COMP_LINE={line}; COMP_POINT=${{#COMP_LINE}}
COMP_WORDS=({words}); COMP_CWORD={cword}
"$func" lcrun {cur} {prev}
printf 'REPLY %s\n' "${{COMPREPLY[@]}}"
"#,
        script = quote(&script("lcrun.bash").to_string_lossy()),
        line = quote(line),
        words = words.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" "),
        cur = quote(&words[cword]),
        prev = quote(&prev),
    );
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(program)
        .current_dir(env.dir.path())
        .output()
        .expect("bash");
    let text = stdout(&out);
    assert!(
        text.contains(" -F _lcrun_cache_by_or_clap lcrun"),
        "{text}{}",
        stderr(&out)
    );
    let mut replies: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("REPLY "))
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    replies.sort();
    replies
}

#[test]
fn bash_completes_cache_by_kinds_then_paths() {
    let env = completion_tree();
    let mut kinds: Vec<String> = lcrun::cli::CACHE_BY_KINDS.iter().map(|k| k.to_string()).collect();
    kinds.sort();
    for kind in ["hash:", "mtime:", "git", "env:", "cmd:", "value:", "stdin"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind}");
    }
    assert_eq!(bash_completes(&env, "lcrun -c "), kinds);
    assert_eq!(bash_completes(&env, "lcrun -c h"), ["hash:"]);
    assert_eq!(bash_completes(&env, "lcrun --cache-by g"), ["git", "git:"]);
    // After the kind, paths; bash puts back only what follows the ':'.
    assert_eq!(bash_completes(&env, "lcrun -c hash:sr"), ["src/", "srv.txt"]);
    assert_eq!(
        bash_completes(&env, "lcrun -e 1h --cache-by mtime:src/m"),
        ["src/main.c"]
    );
    // Anything else is clap's completion, as before.
    let options = bash_completes(&env, "lcrun --progr");
    assert_eq!(options, ["--progress", "--progress-regex"]);
    assert_eq!(bash_completes(&env, "lcrun --progress p"), ["plain"]);
}

/// What fish offers for `line`, with completions/lcrun.fish loaded.
fn fish_completes(env: &Env, line: &str) -> Vec<String> {
    let out = std::process::Command::new("fish")
        .args(["--no-config", "-c"])
        .arg(format!(
            "source '{}'; complete -C '{line}'",
            script("lcrun.fish").display()
        ))
        .current_dir(env.dir.path())
        .env("HOME", env.dir.path())
        .output()
        .expect("fish (the fish package) is needed by this test");
    assert!(out.status.success(), "{}", stderr(&out));
    let mut lines: Vec<String> = stdout(&out)
        .lines()
        .map(|l| l.split('\t').next().unwrap().to_owned())
        .collect();
    lines.sort();
    lines
}

#[test]
fn fish_completes_cache_by_kinds_then_paths() {
    let env = completion_tree();
    let all = fish_completes(&env, "lcrun -c ");
    for kind in lcrun::cli::CACHE_BY_KINDS {
        assert!(all.iter().any(|k| k == kind), "{kind}: {all:?}");
    }
    assert_eq!(fish_completes(&env, "lcrun -c h"), ["hash:"]);
    assert_eq!(
        fish_completes(&env, "lcrun -c hash:sr"),
        ["hash:src/", "hash:srv.txt"]
    );
    assert_eq!(
        fish_completes(&env, "lcrun --cache-by mtime:src/m"),
        ["mtime:src/main.c"]
    );
    assert_eq!(
        fish_completes(&env, "lcrun --cache-by=hash:sr"),
        ["--cache-by=hash:src/", "--cache-by=hash:srv.txt"]
    );
}

#[test]
fn zsh_completion_parses_and_completes_cache_by() {
    let file = script("_lcrun");
    let out = std::process::Command::new("zsh")
        .arg("-n")
        .arg(&file)
        .output()
        .expect("zsh (the zsh package) is needed by this test");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.matches(":EXPR:_lcrun_cache_by'").count(), 4, "{text}"); // lcrun and lcrun explain
    assert!(text.contains("compset -P '(hash|mtime|git):'"), "{text}");
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

/// What elvish's completer for lcrun offers for `words`, in an interactive
/// elvish on a pseudo-terminal (its editor is only there) that loaded
/// completions/lcrun.elv. Candidates are shown by their text, unfiltered:
/// the editor keeps those that match what was typed.
fn elvish_completes(env: &Env, words: &str) -> Vec<String> {
    let home = format!("HOME={}", env.dir.path().display());
    let mut term = Term::spawn(env, &["env", &home, "TERM=dumb", "elvish", "-norc"]);
    // Typed as `FIN''ISHED`, shown as `FINISHED`: the echo of the typed
    // line does not count.
    let line = format!(
        "eval (slurp < '{}'); $edit:completion:arg-completer[lcrun] {words} | each {{|c| if (eq (kind-of $c) string) {{ echo CANDIDATE $c }} else {{ echo CANDIDATE $c[stem] }} }}; echo FIN''ISHED\r",
        script("lcrun.elv").display()
    );
    std::thread::sleep(Duration::from_millis(300));
    term.send(line.as_bytes());
    term.expect("FINISHED", Duration::from_secs(20));
    term.send(b"exit\r");
    let _ = term.child.kill();
    let _ = term.child.wait();
    let shown = term.text();
    let mut found: Vec<String> = shown
        .split("CANDIDATE ")
        .skip(1)
        .filter_map(|rest| rest.split(['\r', '\n', '\x1b']).next())
        .filter(|c| !c.starts_with('$'))
        .map(str::to_owned)
        .collect();
    found.sort();
    found
}

#[test]
fn elvish_completes_cache_by_kinds_then_paths() {
    let env = completion_tree();
    let mut kinds: Vec<String> = lcrun::cli::CACHE_BY_KINDS.iter().map(|k| k.to_string()).collect();
    kinds.sort();
    assert_eq!(elvish_completes(&env, "lcrun -c h"), kinds);
    let paths = elvish_completes(&env, "lcrun --cache-by hash:sr");
    assert!(paths.contains(&"hash:src/".to_owned()), "{paths:?}");
    assert!(paths.contains(&"hash:srv.txt".to_owned()), "{paths:?}");
    assert_eq!(
        elvish_completes(&env, "lcrun -c mtime:src/"),
        ["mtime:src/main.c"]
    );
    // Anything else is clap's completer, as before.
    assert!(elvish_completes(&env, "lcrun --pro").contains(&"--progress".to_owned()));
}

/// What an interactive zsh (compinit, completions/ on its fpath) shows after
/// `typed` and a Tab, on a pseudo-terminal.
fn zsh_after_tab(env: &Env, typed: &str) -> String {
    let home = format!("HOME={}", env.dir.path().display());
    let mut term = Term::spawn(env, &["env", &home, "TERM=dumb", "zsh", "-f", "-i"]);
    let setup = format!(
        "PS1='READY> '; fpath=('{}' $fpath); autoload -U compinit; compinit -u; echo SET''UP\r",
        script("").display()
    );
    term.send(setup.as_bytes());
    term.expect("SETUP", Duration::from_secs(20));
    term.expect("READY> ", Duration::from_secs(20));
    let before = term.text().len();
    term.send(format!("{typed}\t").as_bytes());
    // The line as zsh redraws it after the Tab, once it has settled.
    let start = Instant::now();
    let mut last = String::new();
    let mut stable_since = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
        let now = term.text()[before..].to_owned();
        if now != last {
            last = now;
            stable_since = Instant::now();
        } else if last.len() > typed.len() && stable_since.elapsed() > Duration::from_millis(700) {
            break;
        }
    }
    term.send(b"\x03exit\r");
    let _ = term.child.kill();
    let _ = term.child.wait();
    last
}

#[test]
fn zsh_completes_cache_by_kinds_then_paths() {
    let env = completion_tree();
    let shown = zsh_after_tab(&env, "lcrun -c h");
    assert!(shown.contains("lcrun -c hash:"), "{shown:?}");
    let shown = zsh_after_tab(&env, "lcrun --cache-by mtime:src/m");
    assert!(shown.contains("mtime:src/main.c"), "{shown:?}");
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

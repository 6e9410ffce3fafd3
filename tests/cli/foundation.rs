//! The foundation (SPEC §1 and §4): exit statuses, the streams, hits and
//! misses for every part of the key, replay fidelity, expiry and cache modes,
//! and a cache that never breaks the command.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

/// `sh -c SCRIPT` as lcrun arguments after `--`.
fn sh(script: &str) -> Vec<String> {
    vec!["--".into(), "sh".into(), "-c".into(), script.into()]
}

/// Options followed by `-- sh -c SCRIPT`.
fn with_sh(options: &[&str], script: &str) -> Vec<String> {
    let mut args: Vec<String> = options.iter().map(|s| s.to_string()).collect();
    args.extend(sh(script));
    args
}

/// Runs lcrun with `input` on its stdin.
fn run_with_stdin(env: &Env, args: &[String], input: &[u8]) -> Output {
    let mut child = env
        .lcrun()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lcrun");
    let mut stdin = child.stdin.take().expect("stdin pipe");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        // lcrun may legitimately stop reading early; a broken pipe is not ours to judge here.
        let _ = stdin.write_all(&input);
    });
    let output = child.wait_with_output().expect("wait for lcrun");
    writer.join().expect("stdin writer");
    output
}

/// Every line of stderr starts with `lcrun:`, and there are exactly `lines` of them.
#[track_caller]
fn assert_lcrun_lines(output: &Output, lines: usize) {
    let text = stderr(output);
    let got: Vec<&str> = text.lines().collect();
    assert_eq!(got.len(), lines, "expected {lines} stderr line(s), got: {text:?}");
    for line in got {
        assert!(
            line.starts_with("lcrun: "),
            "stderr line without 'lcrun:' prefix: {line:?}"
        );
    }
}

/// Bytes from the kernel's random source.
fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    File::open("/dev/urandom")
        .expect("open /dev/urandom")
        .read_exact(&mut bytes)
        .expect("read /dev/urandom");
    bytes
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path, found: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).expect("read cache dir") {
        let path = entry.expect("dir entry").path();
        let meta = fs::symlink_metadata(&path).expect("stat");
        if meta.is_dir() {
            files_under(&path, found);
        } else if meta.is_file() {
            found.push(path);
        }
    }
}

// 1. Exit statuses ---------------------------------------------------------

#[test]
fn exit_status_is_the_commands_own() {
    let env = Env::new();
    let out = env.run(sh("exit 3"));
    assert_code(&out, 3);
    assert!(out.stdout.is_empty());
    let out = env.run(sh("exit 0"));
    assert_code(&out, 0);
}

#[test]
fn killed_by_signal_is_128_plus_n() {
    let env = Env::new();
    let out = env.run(sh("kill -9 $$"));
    assert_code(&out, 137);
    let out = env.run(sh("kill -TERM $$"));
    assert_code(&out, 143);
}

#[test]
fn command_not_found_is_127() {
    let env = Env::new();
    let out = env.run(["--", "lcrun-no-such-command-xyz"]);
    assert_code(&out, 127);
    assert!(out.stdout.is_empty());
    assert_lcrun_lines(&out, 1);
    let out = env.run(["--", "./missing-script.sh"]);
    assert_code(&out, 127);
}

#[test]
fn found_but_not_executable_is_126() {
    let env = Env::new();
    let file = env.write("plain", format!("#!/bin/sh\n{}\n", env.tally("plain")));
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = env.run(["--", "./plain"]);
    assert_code(&out, 126);
    assert!(out.stdout.is_empty());
    assert_lcrun_lines(&out, 1);
    assert_eq!(env.count("plain"), 0);
    // A directory is found but not executable either.
    fs::create_dir(env.path("adir")).expect("mkdir");
    assert_code(&env.run(["--", "./adir"]), 126);
}

#[test]
fn own_errors_are_125_one_line_and_nothing_runs() {
    let env = Env::new();
    let t = env.tally("ran");
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("unknown flag", with_sh(&["--no-such-flag"], &t)),
        ("no command", vec![]),
        ("no command after --", vec!["--".into()]),
        ("unknown cache-by kind", with_sh(&["-c", "nosuchkind:x"], &t)),
        ("cache-by without argument", with_sh(&["-c", "mtime:"], &t)),
        ("bad glob", with_sh(&["-c", "hash:["], &t)),
        ("stdin with argument", with_sh(&["-c", "stdin:x"], &t)),
        ("env name with =", with_sh(&["-c", "env:A=B"], &t)),
        (
            "malformed after a good one",
            with_sh(&["-c", "value:ok", "-c", "bogus"], &t),
        ),
        (
            "ignore-arg with --shell",
            vec!["--ignore-arg".into(), "1".into(), "--shell".into(), t.clone()],
        ),
        ("ignore-arg past the end", with_sh(&["--ignore-arg", "3"], &t)),
        ("bad --expire", with_sh(&["--expire", "soon"], &t)),
        ("negative --expire", with_sh(&["-e", "-3"], &t)),
        ("bad --cache-mode", with_sh(&["--cache-mode", "sometimes"], &t)),
        ("bad --timeout", with_sh(&["--timeout", "forever"], &t)),
    ];
    for (what, args) in cases {
        let out = env.run(&args);
        assert_eq!(code(&out), 125, "{what}: {args:?}\nstderr: {}", stderr(&out));
        assert!(out.stdout.is_empty(), "{what}: stdout {:?}", stdout(&out));
        let text = stderr(&out);
        assert_eq!(text.lines().count(), 1, "{what}: not one line: {text:?}");
        assert!(text.starts_with("lcrun:"), "{what}: {text:?}");
        assert!(text.ends_with('\n'), "{what}: {text:?}");
        assert_eq!(env.count("ran"), 0, "{what}: the command ran");
    }
    // A bad LCRUN_EXPIRE is an error of ours too.
    let out = env
        .lcrun()
        .env("LCRUN_EXPIRE", "soon")
        .args(sh(&t))
        .output()
        .expect("run");
    assert_code(&out, 125);
    assert_lcrun_lines(&out, 1);
    assert_eq!(env.count("ran"), 0);
}

#[test]
fn timeout_is_124_promptly() {
    let env = Env::new();
    let started = Instant::now();
    let out = env.run(["--timeout", "1s", "--", "sleep", "10"]);
    assert_code(&out, 124);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "returned before the timeout: {took:?}"
    );
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert!(out.stdout.is_empty());
    // A timed-out run is not cached.
    let script = format!("{}; exec sleep 10", env.tally("t"));
    assert_code(&env.run(with_sh(&["--timeout", "0.2s"], &script)), 124);
    assert_code(&env.run(with_sh(&["--timeout", "0.2s"], &script)), 124);
    assert_eq!(env.count("t"), 2);
}

// 2. The streams -------------------------------------------------------------

#[test]
fn stdout_carries_only_the_commands_bytes() {
    let env = Env::new();
    let script = format!("{}; printf 'no newline'; echo to-err >&2", env.tally("a"));
    for _ in 0..2 {
        let out = env.run(sh(&script));
        assert_code(&out, 0);
        assert_eq!(out.stdout, b"no newline");
        assert_eq!(out.stderr, b"to-err\n");
    }
    assert_eq!(env.count("a"), 1);
}

#[test]
fn own_messages_on_stderr_with_prefix_and_q_silences_them() {
    let env = Env::new();
    env.write("file", "I am a file, not a directory");
    let bad_cache = env.path("file/cache");
    let script = format!("{}; echo out; echo err >&2; exit 4", env.tally("a"));

    let out = env
        .lcrun()
        .env("LCRUN_CACHE_DIR", &bad_cache)
        .args(sh(&script))
        .output()
        .expect("run");
    assert_code(&out, 4);
    assert_eq!(out.stdout, b"out\n", "stderr: {}", stderr(&out));
    let text = stderr(&out);
    let ours: Vec<&str> = text.lines().filter(|l| *l != "err").collect();
    assert_eq!(ours.len(), 1, "expected one warning: {text:?}");
    assert!(ours[0].starts_with("lcrun: "), "{text:?}");
    assert!(text.lines().any(|l| l == "err"), "{text:?}");

    for quiet in [&["-q"][..], &["--quiet"][..]] {
        let out = env
            .lcrun()
            .env("LCRUN_CACHE_DIR", &bad_cache)
            .args(with_sh(quiet, &script))
            .output()
            .expect("run");
        assert_code(&out, 4);
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n", "{quiet:?} did not silence the warning");
    }
    let out = env
        .lcrun()
        .env("LCRUN_CACHE_DIR", &bad_cache)
        .env("LCRUN_QUIET", "1")
        .args(sh(&script))
        .output()
        .expect("run");
    assert_eq!(out.stderr, b"err\n", "LCRUN_QUIET=1 did not silence the warning");
    assert_eq!(env.count("a"), 4, "an unusable cache must not stop the command");
}

/// Starts lcrun, reads the first bytes of its stdout, then closes the pipe
/// as `lcrun ... | head -c 100` would; returns lcrun's exit code and stderr.
fn run_into_closed_pipe(env: &Env, args: &[String]) -> (i32, String) {
    let mut child = env.start(args);
    let mut first = [0u8; 100];
    child
        .stdout
        .take()
        .expect("stdout")
        .read_exact(&mut first)
        .expect("first bytes");
    let out = child.wait_with_output().expect("wait");
    (code(&out), stderr(&out))
}

#[test]
fn a_reader_that_goes_away_ends_the_command_quietly_and_nothing_is_kept() {
    let env = Env::new();
    let script = format!("{}; seq 1 300000", env.tally("a"));
    // Each run into a pipe closed after 100 bytes: the command meets the
    // closed pipe as it would bare and dies by SIGPIPE (141), no message,
    // and nothing is cached, so the next run runs again.
    for _ in 0..2 {
        let (code, err) = run_into_closed_pipe(&env, &sh(&script));
        assert_eq!((code, err.as_str()), (141, ""));
    }
    assert_eq!(env.count("a"), 2);
    let full = env.run(sh(&script));
    let direct = Command::new("seq").args(["1", "300000"]).output().expect("seq");
    assert!(full.stdout == direct.stdout, "the entry is not whole");
    // A replay into a closed pipe is as quiet, with the same status.
    let (code, err) = run_into_closed_pipe(&env, &sh(&script));
    assert_eq!((code, err.as_str()), (141, ""));
    assert_eq!(env.count("a"), 3);
}

#[test]
fn commands_get_the_default_sigpipe() {
    // Were SIGPIPE left ignored, `yes` would get EPIPE instead and complain.
    let env = Env::new();
    for options in [&[][..], &["--no-cache"][..]] {
        let out = env.run(with_sh(options, "yes | head -n 1"));
        assert_code(&out, 0);
        assert_eq!(out.stdout, b"y\n");
        assert_eq!(stderr(&out), "", "{options:?}");
    }
}

#[test]
fn closed_standard_descriptors_are_not_reused_for_files() {
    // With fd 1 closed, the next file lcrun opened would get it, and output
    // meant for stdout would land in that file. Output written to a closed
    // stdout fails instead, as it would bare (EBADF): one line, status 1,
    // nothing cached.
    let env = Env::new();
    let script = format!("{}; echo out; echo err >&2", env.tally("a"));
    for round in 1..=2 {
        let out = Command::new("sh")
            .arg("-c")
            .arg("exec \"$0\" \"$@\" >&- <&-")
            .arg(env!("CARGO_BIN_EXE_lcrun"))
            .args(sh(&script))
            .env("LCRUN_CACHE_DIR", &env.cache)
            .output()
            .expect("run");
        assert_code(&out, 1);
        let err = stderr(&out);
        assert!(err.contains("err\n"), "{err}");
        assert!(err.contains("lcrun: cannot write to stdout"), "{err}");
        assert_eq!(env.count("a"), round);
    }
    let out = env.run(sh(&script));
    assert_eq!(
        (out.stdout.as_slice(), out.stderr.as_slice()),
        (&b"out\n"[..], &b"err\n"[..])
    );
}

// 3. Hit and miss ------------------------------------------------------------

#[test]
fn second_identical_run_is_a_hit() {
    let env = Env::new();
    let script = format!("{}; echo out; echo err >&2; exit 0", env.tally("a"));
    let miss = env.run(sh(&script));
    assert_code(&miss, 0);
    assert_eq!(env.count("a"), 1);
    let hit = env.run(sh(&script));
    assert_eq!(env.count("a"), 1, "second run ran the command");
    assert_eq!(hit.stdout, miss.stdout);
    assert_eq!(hit.stderr, miss.stderr);
    assert_eq!(hit.status.code(), miss.status.code());
    assert_eq!(hit.stdout, b"out\n");
    assert_eq!(hit.stderr, b"err\n");
    // A different argv is a different key.
    let other = env.run(sh(&format!("{script} ")));
    assert_eq!(env.count("a"), 2);
    assert_eq!(other.stdout, b"out\n");
}

#[test]
fn hit_replays_both_streams() {
    let env = Env::new();
    let script = format!(
        "{}; printf 'one\\n'; printf 'two\\n' >&2; printf 'three'; printf 'four' >&2",
        env.tally("a")
    );
    let miss = env.run(sh(&script));
    let hit = env.run(sh(&script));
    assert_eq!(env.count("a"), 1);
    for out in [&miss, &hit] {
        assert_code(out, 0);
        assert_eq!(out.stdout, b"one\nthree");
        assert_eq!(out.stderr, b"two\nfour");
    }
}

// 4. Cache-by expressions ------------------------------------------------------

#[test]
fn cache_by_mtime() {
    let env = Env::new();
    let f = env.write("f", "content");
    let script = env.tally("a");
    let run = || assert_code(&env.run(with_sh(&["-c", "mtime:f"], &script)), 0);
    run();
    run();
    assert_eq!(env.count("a"), 1);
    let touch = Command::new("touch")
        .args(["-d", "2001-02-03 04:05:06"])
        .arg(&f)
        .status()
        .expect("touch");
    assert!(touch.success());
    run();
    assert_eq!(env.count("a"), 2, "a different mtime must be a miss");
    run();
    assert_eq!(env.count("a"), 2);
    // Same mtime, different size.
    fs::write(&f, "longer content").expect("write");
    assert!(Command::new("touch")
        .args(["-d", "2001-02-03 04:05:06"])
        .arg(&f)
        .status()
        .expect("touch")
        .success());
    run();
    assert_eq!(env.count("a"), 3, "a different size must be a miss");
    // A missing file is a value too.
    fs::remove_file(&f).expect("rm");
    run();
    assert_eq!(env.count("a"), 4);
    run();
    assert_eq!(env.count("a"), 4);
}

#[test]
fn cache_by_hash_of_a_file() {
    let env = Env::new();
    let f = env.write("f", "aaaa");
    let script = format!("{}; cat f", env.tally("a"));
    let run = || env.run(with_sh(&["-c", "hash:f"], &script));
    assert_eq!(run().stdout, b"aaaa");
    assert_eq!(run().stdout, b"aaaa");
    assert_eq!(env.count("a"), 1);
    // Same size, different contents.
    fs::write(&f, "bbbb").expect("write");
    assert_eq!(run().stdout, b"bbbb");
    assert_eq!(env.count("a"), 2, "changed contents must be a miss");
    // Back to the old contents: the old entry again, whatever the mtime.
    fs::write(&f, "aaaa").expect("write");
    assert!(Command::new("touch")
        .args(["-d", "2001-02-03 04:05:06"])
        .arg(&f)
        .status()
        .expect("touch")
        .success());
    assert_eq!(run().stdout, b"aaaa");
    assert_eq!(env.count("a"), 2, "hash: must not depend on mtime");
}

#[test]
fn cache_by_hash_of_a_glob() {
    let env = Env::new();
    env.write("src/a.txt", "a");
    env.write("src/b.md", "b");
    let script = env.tally("a");
    let run = || assert_code(&env.run(with_sh(&["-c", "hash:src/*.txt"], &script)), 0);
    run();
    run();
    assert_eq!(env.count("a"), 1);
    env.write("src/b.md", "not matched by the glob");
    run();
    assert_eq!(env.count("a"), 1, "a file outside the glob changed the key");
    env.write("src/c.txt", "c");
    run();
    assert_eq!(env.count("a"), 2, "a new matching file must be a miss");
    run();
    assert_eq!(env.count("a"), 2);
    env.write("src/a.txt", "A");
    run();
    assert_eq!(env.count("a"), 3, "a changed matching file must be a miss");
}

#[test]
fn cache_by_hash_of_a_directory_recurses() {
    let env = Env::new();
    env.write("tree/top", "1");
    env.write("tree/sub/deep/leaf", "2");
    let script = env.tally("a");
    let run = || assert_code(&env.run(with_sh(&["-c", "hash:tree"], &script)), 0);
    run();
    run();
    assert_eq!(env.count("a"), 1);
    env.write("tree/sub/deep/leaf", "3");
    run();
    assert_eq!(env.count("a"), 2, "a change deep in the tree must be a miss");
    run();
    assert_eq!(env.count("a"), 2);
    env.write("tree/sub/new", "");
    run();
    assert_eq!(env.count("a"), 3, "a new file in a subdirectory must be a miss");
    fs::rename(env.path("tree/top"), env.path("tree/renamed")).expect("rename");
    run();
    assert_eq!(env.count("a"), 4, "a renamed file must be a miss");
}

#[test]
fn cache_by_git() {
    let env = Env::new();
    let repo = env.path("repo");
    fs::create_dir(&repo).expect("mkdir");
    git(&repo, &["init", "-q"]);
    env.write("repo/tracked.txt", "v1\n");
    git(&repo, &["add", "tracked.txt"]);
    git(&repo, &["commit", "-q", "-m", "first"]);
    let script = env.tally("a");
    let run = || {
        let out = env
            .lcrun()
            .current_dir(&repo)
            .args(with_sh(&["-c", "git"], &script))
            .output()
            .expect("run");
        assert_code(&out, 0);
    };
    run();
    run();
    assert_eq!(env.count("a"), 1, "a clean unchanged repo must hit");
    env.write("repo/tracked.txt", "v2\n");
    run();
    assert_eq!(env.count("a"), 2, "a dirty tracked file must be a miss");
    run();
    assert_eq!(env.count("a"), 2);
    env.write("repo/untracked.txt", "new\n");
    run();
    assert_eq!(env.count("a"), 3, "a new untracked file must be a miss");
    run();
    assert_eq!(env.count("a"), 3);
    env.write("repo/untracked.txt", "newer\n");
    run();
    assert_eq!(env.count("a"), 4, "a changed untracked file must be a miss");
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "second"]);
    run();
    assert_eq!(env.count("a"), 5, "committing must be a miss vs the dirty state");
    run();
    assert_eq!(env.count("a"), 5);
}

#[test]
fn cache_by_git_dir() {
    let env = Env::new();
    let repo = env.path("repo");
    fs::create_dir(&repo).expect("mkdir");
    git(&repo, &["init", "-q"]);
    env.write("repo/tracked.txt", "v1\n");
    git(&repo, &["add", "tracked.txt"]);
    git(&repo, &["commit", "-q", "-m", "first"]);
    let script = env.tally("a");
    // Run from outside the repository (the cache and tallies live there).
    let run = || assert_code(&env.run(with_sh(&["-c", "git:repo"], &script)), 0);
    run();
    run();
    assert_eq!(env.count("a"), 1);
    env.write("repo/tracked.txt", "v2\n");
    run();
    assert_eq!(env.count("a"), 2, "a dirty tracked file must be a miss");
    run();
    assert_eq!(env.count("a"), 2);
    git(&repo, &["commit", "-q", "-am", "second"]);
    run();
    assert_eq!(env.count("a"), 3, "a new commit must be a miss");
    run();
    assert_eq!(env.count("a"), 3);
}

#[test]
fn cache_by_env() {
    let env = Env::new();
    let script = env.tally("a");
    let run = |value: Option<&str>| {
        let mut cmd = env.lcrun();
        cmd.args(with_sh(&["-c", "env:LCRUN_TEST_VAR"], &script));
        match value {
            Some(v) => cmd.env("LCRUN_TEST_VAR", v),
            None => cmd.env_remove("LCRUN_TEST_VAR"),
        };
        assert_code(&cmd.output().expect("run"), 0);
        env.count("a")
    };
    assert_eq!(run(Some("one")), 1);
    assert_eq!(run(Some("one")), 1, "same value must hit");
    assert_eq!(run(Some("two")), 2, "changed value must miss");
    assert_eq!(run(None), 3, "unset must miss");
    assert_eq!(run(Some("")), 4, "empty must differ from unset");
    assert_eq!(run(None), 4, "unset again must hit");
    assert_eq!(run(Some("")), 4, "empty again must hit");
    assert_eq!(run(Some("one")), 4, "the first value must still hit");
}

#[test]
fn cache_by_cmd() {
    let env = Env::new();
    env.write("v.txt", "1\n");
    let script = env.tally("a");
    let run = || assert_code(&env.run(with_sh(&["-c", "cmd:cat v.txt"], &script)), 0);
    run();
    run();
    assert_eq!(env.count("a"), 1);
    env.write("v.txt", "2\n");
    run();
    assert_eq!(env.count("a"), 2, "changed output of the cmd: must be a miss");
    run();
    assert_eq!(env.count("a"), 2);
}

#[test]
fn cache_by_value() {
    let env = Env::new();
    let script = env.tally("a");
    let run = |opts: &[&str]| {
        assert_code(&env.run(with_sh(opts, &script)), 0);
        env.count("a")
    };
    assert_eq!(run(&["-c", "value:alpha"]), 1);
    assert_eq!(run(&["-c", "value:alpha"]), 1);
    assert_eq!(run(&["-c", "value:beta"]), 2);
    assert_eq!(run(&["-c", "value:"]), 3, "an empty value is a value");
    assert_eq!(run(&[]), 4, "no cache-by differs from an empty value");
    assert_eq!(run(&["-c", "value:a", "-c", "value:b"]), 5);
    assert_eq!(
        run(&["-c", "value:b", "-c", "value:a"]),
        6,
        "order of expressions matters"
    );
    assert_eq!(run(&["-c", "value:alpha"]), 6);
}

#[test]
fn cache_by_stdin() {
    let env = Env::new();
    let args = with_sh(&["-c", "stdin"], &format!("{}; tee got.bin", env.tally("a")));
    let first: &[u8] = b"line one\n\0binary \xff\xfe tail without newline";
    let out = run_with_stdin(&env, &args, first);
    assert_code(&out, 0);
    assert_eq!(out.stdout, first);
    assert_eq!(
        fs::read(env.path("got.bin")).expect("read got.bin"),
        first,
        "the command got other stdin bytes"
    );
    assert_eq!(env.count("a"), 1);

    let hit = run_with_stdin(&env, &args, first);
    assert_eq!(env.count("a"), 1, "same stdin must hit");
    assert_eq!(hit.stdout, first);

    let second: &[u8] = b"something else entirely\n";
    let out = run_with_stdin(&env, &args, second);
    assert_eq!(env.count("a"), 2, "different stdin must miss");
    assert_eq!(out.stdout, second);
    assert_eq!(fs::read(env.path("got.bin")).expect("read got.bin"), second);

    let empty = run_with_stdin(&env, &args, b"");
    assert_eq!(env.count("a"), 3, "empty stdin is a value too");
    assert!(empty.stdout.is_empty());
}

// 5. Interleaving ------------------------------------------------------------

#[test]
fn replay_keeps_interleaving_of_stdout_and_stderr() {
    let env = Env::new();
    let script = format!(
        "{}; echo o1; sleep 0.1; echo e1 >&2; sleep 0.1; echo o2; sleep 0.1; echo e2 >&2; sleep 0.1; \
         printf o3; sleep 0.1; printf e3 >&2",
        env.tally("a")
    );
    let run_into = |name: &str| {
        let file = File::create(env.path(name)).expect("create");
        let err = file.try_clone().expect("clone");
        let status = env
            .lcrun()
            .args(sh(&script))
            .stdout(file)
            .stderr(err)
            .status()
            .expect("run");
        assert_eq!(status.code(), Some(0));
        fs::read(env.path(name)).expect("read")
    };
    let miss = run_into("miss.out");
    assert_eq!(
        miss, b"o1\ne1\no2\ne2\no3e3",
        "the live run lost the interleaving"
    );
    let hit = run_into("hit.out");
    assert_eq!(env.count("a"), 1);
    assert_eq!(String::from_utf8_lossy(&hit), String::from_utf8_lossy(&miss));
    assert_eq!(hit, miss);
}

// 6. Binary fidelity -----------------------------------------------------------

#[test]
fn one_mebibyte_of_random_bytes_replays_identically() {
    let env = Env::new();
    let data = random_bytes(1 << 20);
    env.write("data", &data);
    let script = format!("{}; cat data", env.tally("a"));
    let miss = env.run(sh(&script));
    assert_code(&miss, 0);
    let hit = env.run(sh(&script));
    assert_code(&hit, 0);
    assert_eq!(env.count("a"), 1);
    assert_eq!(miss.stdout.len(), data.len());
    assert!(miss.stdout == data, "live output differs from the file");
    assert_eq!(hit.stdout.len(), data.len());
    assert!(hit.stdout == data, "replayed output differs from the file");
}

#[test]
fn binary_bytes_on_stderr_replay_identically() {
    let env = Env::new();
    let bytes: &[u8] = b"a\0b\xff\xfe\xc3(\x80\n\0\0end\r\n\x1b[0m";
    env.write("bin", bytes);
    let script = format!("{}; cat bin >&2; cat bin", env.tally("a"));
    let miss = env.run(sh(&script));
    let hit = env.run(sh(&script));
    assert_eq!(env.count("a"), 1);
    for out in [&miss, &hit] {
        assert_code(out, 0);
        assert_eq!(out.stderr, bytes);
        assert_eq!(out.stdout, bytes);
    }
}

// 7. Expiry, refresh and cache modes -------------------------------------------

#[test]
fn expire_flag_and_env_fallback() {
    let env = Env::new();
    let flag = with_sh(&["-c", "value:flag"], &env.tally("flag"));
    let by_env = with_sh(&["-c", "value:env"], &env.tally("env"));
    let plain = with_sh(&["-c", "value:plain"], &env.tally("plain"));
    let run = |args: &[String], opts: &[&str], expire_env: Option<&str>| {
        let mut cmd = env.lcrun();
        if let Some(value) = expire_env {
            cmd.env("LCRUN_EXPIRE", value);
        }
        let mut all: Vec<String> = opts.iter().map(|s| s.to_string()).collect();
        all.extend(args.iter().cloned());
        assert_code(&cmd.args(&all).output().expect("run"), 0);
    };
    run(&flag, &["-e", "1s"], None);
    run(&flag, &["-e", "1s"], None);
    assert_eq!(env.count("flag"), 1, "within the expiry must hit");
    run(&by_env, &[], Some("1s"));
    run(&by_env, &[], Some("1s"));
    assert_eq!(env.count("env"), 1);
    run(&plain, &[], None);
    assert_eq!(env.count("plain"), 1);

    std::thread::sleep(Duration::from_millis(1300));

    run(&flag, &["--expire", "1s"], None);
    assert_eq!(env.count("flag"), 2, "an entry older than --expire must miss");
    run(&flag, &["--expire", "1s"], None);
    assert_eq!(env.count("flag"), 2, "the fresh entry must hit");
    run(&by_env, &[], Some("1s"));
    assert_eq!(env.count("env"), 2, "LCRUN_EXPIRE must apply");
    run(&plain, &[], None);
    assert_eq!(env.count("plain"), 1, "no expiry: old entries still hit");
    run(&plain, &["-e", "1h"], Some("1s"));
    assert_eq!(env.count("plain"), 1, "the flag must beat LCRUN_EXPIRE");
    run(&plain, &["-e", "1s"], None);
    assert_eq!(env.count("plain"), 2);
}

#[test]
fn refresh_runs_on_a_hit_and_replaces_the_entry() {
    let env = Env::new();
    let script = format!("{}; wc -l < a.count | tr -d ' '", env.tally("a"));
    assert_eq!(env.run(sh(&script)).stdout, b"1\n");
    assert_eq!(env.run(sh(&script)).stdout, b"1\n");
    assert_eq!(env.count("a"), 1);
    let refreshed = env.run(with_sh(&["--refresh"], &script));
    assert_code(&refreshed, 0);
    assert_eq!(refreshed.stdout, b"2\n");
    assert_eq!(env.count("a"), 2, "--refresh must run on a hit");
    assert_eq!(
        env.run(sh(&script)).stdout,
        b"2\n",
        "the refreshed output must replace the entry"
    );
    assert_eq!(env.count("a"), 2);
}

#[test]
fn cache_mode_ro_reads_but_never_stores() {
    let env = Env::new();
    let script = format!("{}; echo out", env.tally("a"));
    let ro = || {
        let out = env.run(with_sh(&["--cache-mode", "ro"], &script));
        assert_code(&out, 0);
        assert_eq!(out.stdout, b"out\n");
    };
    ro();
    ro();
    assert_eq!(env.count("a"), 2, "ro must not store");
    assert_code(&env.run(sh(&script)), 0);
    assert_eq!(env.count("a"), 3, "ro stored something after all");
    ro();
    assert_eq!(env.count("a"), 3, "ro must replay an entry stored by rw");
}

#[test]
fn cache_mode_wo_always_runs_but_stores() {
    let env = Env::new();
    let script = format!("{}; echo out", env.tally("a"));
    let wo = || assert_code(&env.run(with_sh(&["--cache-mode", "wo"], &script)), 0);
    wo();
    wo();
    assert_eq!(env.count("a"), 2, "wo must always run");
    let out = env.run(sh(&script));
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(env.count("a"), 2, "rw after wo must hit");
}

#[test]
fn cache_mode_off_and_no_cache_neither_read_nor_write() {
    for off in [&["--cache-mode", "off"][..], &["--no-cache"][..]] {
        let env = Env::new();
        let script = format!("{}; echo out", env.tally("a"));
        let run_off = || {
            let out = env.run(with_sh(off, &script));
            assert_code(&out, 0);
            assert_eq!(out.stdout, b"out\n");
        };
        run_off();
        run_off();
        assert_eq!(env.count("a"), 2, "{off:?} must not read");
        assert_code(&env.run(sh(&script)), 0);
        assert_eq!(env.count("a"), 3, "{off:?} must not write");
        run_off();
        assert_eq!(env.count("a"), 4, "{off:?} must not replay an rw entry");
        // --no-cache beats an explicit mode too.
        if off == ["--no-cache"] {
            assert_code(
                &env.run(with_sh(&["--no-cache", "--cache-mode", "rw"], &script)),
                0,
            );
            assert_eq!(env.count("a"), 5);
        }
    }
}

#[test]
fn cache_mode_env_fallback_and_flag_beats_it() {
    let env = Env::new();
    let script = format!("{}; echo out", env.tally("a"));
    let run = |opts: &[&str], mode_env: Option<&str>| {
        let mut cmd = env.lcrun();
        if let Some(mode) = mode_env {
            cmd.env("LCRUN_CACHE_MODE", mode);
        }
        let out = cmd.args(with_sh(opts, &script)).output().expect("run");
        assert_code(&out, 0);
        assert_eq!(out.stdout, b"out\n");
        env.count("a")
    };
    assert_eq!(run(&[], Some("off")), 1);
    assert_eq!(
        run(&[], Some("off")),
        2,
        "LCRUN_CACHE_MODE=off must not read or write"
    );
    assert_eq!(run(&[], None), 3, "LCRUN_CACHE_MODE=off wrote an entry");
    assert_eq!(run(&[], Some("off")), 4, "LCRUN_CACHE_MODE=off replayed an entry");
    assert_eq!(
        run(&["--cache-mode", "rw"], Some("off")),
        4,
        "the flag must beat LCRUN_CACHE_MODE"
    );
    assert_eq!(run(&[], Some("wo")), 5);
    assert_eq!(run(&[], Some("ro")), 5);
    let bad = env
        .lcrun()
        .env("LCRUN_CACHE_MODE", "sometimes")
        .args(sh(&script))
        .output()
        .expect("run");
    assert_code(&bad, 125);
    assert_eq!(env.count("a"), 5);
}

// 8. Failures ------------------------------------------------------------------

#[test]
fn failures_are_not_cached_unless_asked() {
    let env = Env::new();
    let script = format!("{}; echo failing; exit 1", env.tally("a"));
    for _ in 0..2 {
        let out = env.run(sh(&script));
        assert_code(&out, 1);
        assert_eq!(out.stdout, b"failing\n");
    }
    assert_eq!(env.count("a"), 2, "a failure was cached");

    let script = format!("{}; echo failing; exit 1", env.tally("b"));
    for _ in 0..2 {
        let out = env.run(with_sh(&["--cache-failures"], &script));
        assert_code(&out, 1);
        assert_eq!(out.stdout, b"failing\n");
    }
    assert_eq!(env.count("b"), 1, "--cache-failures must cache a failure");
    // The cached failure replays for plain runs too.
    let out = env.run(sh(&script));
    assert_code(&out, 1);
    assert_eq!(env.count("b"), 1);
}

#[test]
fn killed_by_signal_is_never_cached() {
    let env = Env::new();
    let script = format!("{}; echo dying; kill -9 $$", env.tally("a"));
    for _ in 0..2 {
        let out = env.run(with_sh(&["--cache-failures"], &script));
        assert_code(&out, 137);
        assert_eq!(out.stdout, b"dying\n");
    }
    assert_eq!(env.count("a"), 2, "a command killed by a signal was cached");
}

// 9. Parts of the key ----------------------------------------------------------

#[test]
fn cwd_is_in_the_key_unless_no_cwd() {
    let env = Env::new();
    let d1 = env.path("d1");
    let d2 = env.path("d2");
    fs::create_dir(&d1).expect("mkdir");
    fs::create_dir(&d2).expect("mkdir");
    let script = format!("{}; echo hi", env.tally("a"));
    let run_in = |dir: &Path, opts: &[&str]| {
        let out = env
            .lcrun()
            .current_dir(dir)
            .args(with_sh(opts, &script))
            .output()
            .expect("run");
        assert_code(&out, 0);
        assert_eq!(out.stdout, b"hi\n");
        env.count("a")
    };
    assert_eq!(run_in(&d1, &[]), 1);
    assert_eq!(run_in(&d1, &[]), 1);
    assert_eq!(run_in(&d2, &[]), 2, "another directory must be a miss");
    assert_eq!(run_in(&d1, &["--no-cwd"]), 3);
    assert_eq!(
        run_in(&d2, &["--no-cwd"]),
        3,
        "--no-cwd: another directory must hit"
    );
}

#[test]
fn scope_is_in_the_key() {
    let env = Env::new();
    let script = env.tally("a");
    let run = |opts: &[&str]| {
        assert_code(&env.run(with_sh(opts, &script)), 0);
        env.count("a")
    };
    assert_eq!(run(&["--scope", "A"]), 1);
    assert_eq!(run(&["--scope", "B"]), 2, "another scope must miss");
    assert_eq!(run(&["--scope", "A"]), 2, "the same scope must hit");
    assert_eq!(run(&[]), 3, "no scope differs from a scope");
}

#[test]
fn ignore_arg_leaves_an_argument_out_of_the_key() {
    let env = Env::new();
    // argv: 0 = sh, 1 = -c, 2 = the script, 3 = $0 of the script.
    let script = format!("{}; echo same", env.tally("a"));
    let run = |opts: &[&str], extra: &str| {
        let mut args = with_sh(opts, &script);
        args.push(extra.into());
        let out = env.run(&args);
        assert_code(&out, 0);
        assert_eq!(out.stdout, b"same\n");
        env.count("a")
    };
    assert_eq!(run(&[], "ignored1"), 1);
    assert_eq!(
        run(&[], "ignored2"),
        2,
        "without --ignore-arg a different argument must miss"
    );
    assert_eq!(run(&["--ignore-arg", "3"], "ignored1"), 3);
    assert_eq!(
        run(&["--ignore-arg", "3"], "ignored2"),
        3,
        "--ignore-arg 3 must hit"
    );
    assert_eq!(run(&["--ignore-arg", "3"], "anything"), 3);
    // Ignoring the script (argument 2) is allowed, and argument 3 still counts then.
    assert_eq!(run(&["--ignore-arg", "2"], "ignored1"), 4);
    assert_eq!(run(&["--ignore-arg", "2"], "ignored2"), 5);
}

// 10. Program identity -----------------------------------------------------------

#[test]
fn editing_a_script_is_a_miss() {
    let env = Env::new();
    env.script("run.sh", &format!("#!/bin/sh\n{}\necho v1\n", env.tally("a")));
    let out = env.run(["--", "./run.sh"]);
    assert_code(&out, 0);
    assert_eq!(out.stdout, b"v1\n");
    assert_eq!(env.run(["--", "./run.sh"]).stdout, b"v1\n");
    assert_eq!(env.count("a"), 1);
    env.script(
        "run.sh",
        &format!("#!/bin/sh\n{}\necho version-two\n", env.tally("a")),
    );
    let out = env.run(["--", "./run.sh"]);
    assert_eq!(env.count("a"), 2, "an edited script must be a miss");
    assert_eq!(out.stdout, b"version-two\n");
    assert_eq!(env.run(["--", "./run.sh"]).stdout, b"version-two\n");
    assert_eq!(env.count("a"), 2);
}

// 11. Secrets ----------------------------------------------------------------------

#[test]
fn env_secret_never_reaches_the_cache_files() {
    let env = Env::new();
    let token = "lcrun-secret-7f3a9c1e5b2d4f6a8c0e1b3d5f7a9c2e4b6d8f0a";
    let script = format!("{}; echo ok", env.tally("a"));
    for _ in 0..2 {
        let out = env
            .lcrun()
            .env("SECRET", token)
            .args(with_sh(&["-c", "env:SECRET", "--cache-failures"], &script))
            .output()
            .expect("run");
        assert_code(&out, 0);
        assert_eq!(out.stdout, b"ok\n");
    }
    assert_eq!(env.count("a"), 1);
    let mut files = Vec::new();
    files_under(&env.cache, &mut files);
    assert!(
        files.iter().any(|f| f.ends_with("cache.db")),
        "no database in {files:?}"
    );
    for file in files {
        let bytes = fs::read(&file).expect("read cache file");
        assert!(
            !contains(&bytes, token.as_bytes()),
            "the secret is in {}",
            file.display()
        );
    }
}

// 12. A broken cache never breaks the command ------------------------------------------

#[test]
fn corrupt_database_warns_once_runs_and_recovers() {
    let env = Env::new();
    assert_code(&env.run(["--", "true"]), 0);
    assert!(env.db().exists());
    for side in ["cache.db-wal", "cache.db-shm"] {
        let _ = fs::remove_file(env.cache.join(side));
    }
    fs::write(env.db(), b"this is not a sqlite database at all\n".repeat(200)).expect("garble");

    let script = format!("{}; echo real; echo real-err >&2; exit 3", env.tally("a"));
    let out = env.run(with_sh(&["--cache-failures"], &script));
    assert_code(&out, 3);
    assert_eq!(out.stdout, b"real\n");
    let text = stderr(&out);
    let ours: Vec<&str> = text.lines().filter(|l| *l != "real-err").collect();
    assert_eq!(ours.len(), 1, "expected one warning: {text:?}");
    assert!(ours[0].starts_with("lcrun: "), "{text:?}");
    assert!(text.contains("real-err"), "{text:?}");
    assert_eq!(env.count("a"), 1);

    // The cache works again.
    let out = env.run(with_sh(&["--cache-failures"], &script));
    assert_code(&out, 3);
    assert_eq!(out.stdout, b"real\n");
    assert_eq!(out.stderr, b"real-err\n", "the warning must not repeat");
    assert_eq!(env.count("a"), 1, "the cache must work again after recovery");
}

#[test]
fn unusable_cache_dir_runs_uncached_with_a_warning() {
    let env = Env::new();
    env.write("file", "a regular file");
    let script = format!("{}; echo out; exit 5", env.tally("a"));
    for (n, cache) in [env.path("file/cache"), "/proc/lcrun-cannot-exist/cache".into()]
        .iter()
        .enumerate()
    {
        let out = env
            .lcrun()
            .env("LCRUN_CACHE_DIR", cache)
            .args(sh(&script))
            .output()
            .expect("run");
        assert_code(&out, 5);
        assert_eq!(out.stdout, b"out\n");
        assert_lcrun_lines(&out, 1);
        assert_eq!(env.count("a"), n + 1);
    }
    // The --cache-dir flag beats LCRUN_CACHE_DIR.
    let flag_dir = env.path("flag-cache");
    for _ in 0..2 {
        let out = env
            .lcrun()
            .env("LCRUN_CACHE_DIR", env.path("file/cache"))
            .arg("--cache-dir")
            .arg(&flag_dir)
            .args(sh(&script.replace("exit 5", "exit 0")))
            .output()
            .expect("run");
        assert_code(&out, 0);
        assert!(out.stderr.is_empty(), "{}", stderr(&out));
    }
    assert_eq!(env.count("a"), 3);
    assert!(flag_dir.join("cache.db").exists());
}

// 13. Permissions ------------------------------------------------------------------------

#[test]
fn cache_dir_is_0700_and_database_0600() {
    let env = Env::new();
    assert_code(&env.run(["--", "echo", "hi"]), 0);
    let dir_mode = fs::metadata(&env.cache)
        .expect("stat cache dir")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700, "cache dir mode {dir_mode:o}");
    let db_mode = fs::metadata(env.db()).expect("stat db").permissions().mode() & 0o777;
    assert_eq!(db_mode, 0o600, "database mode {db_mode:o}");
    // Everything else in it too: the WAL files, jobs.db, a large entry's
    // blob files, the hit log, the locks.
    assert_code(&env.run(["--", "seq", "1", "1000000"]), 0);
    assert_code(&env.run(["--", "seq", "1", "1000000"]), 0);
    let mut seen = Vec::new();
    let mut dirs = vec![env.cache.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).expect("read cache dir") {
            let path = entry.expect("entry").path();
            let meta = fs::symlink_metadata(&path).expect("stat");
            let mode = meta.permissions().mode() & 0o777;
            if meta.is_dir() {
                assert_eq!(mode, 0o700, "{} mode {mode:o}", path.display());
                dirs.push(path.clone());
            } else {
                assert_eq!(mode, 0o600, "{} mode {mode:o}", path.display());
            }
            seen.push(path.file_name().expect("name").to_string_lossy().into_owned());
        }
    }
    for expected in ["jobs.db", "cache.db-wal", "hits.log", "blobs"] {
        assert!(seen.iter().any(|s| s == expected), "no {expected} in {seen:?}");
    }
    // A nested cache dir is created too, and private.
    let nested = env.path("deep/er/cache");
    let out = env
        .lcrun()
        .env("LCRUN_CACHE_DIR", &nested)
        .args(["--", "true"])
        .output()
        .expect("run");
    assert_code(&out, 0);
    let mode = fs::metadata(&nested).expect("stat nested").permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "nested cache dir mode {mode:o}");
    let mode = fs::metadata(nested.join("cache.db"))
        .expect("stat nested db")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}

// 14. --shell --------------------------------------------------------------------------------

#[test]
fn shell_string_runs_through_sh_and_is_cached() {
    let env = Env::new();
    let b = format!("{}; echo a | tr a b", env.tally("a"));
    let c = format!("{}; echo a | tr a c", env.tally("a"));
    for _ in 0..2 {
        let out = env.run(["--shell", &b]);
        assert_code(&out, 0);
        assert_eq!(out.stdout, b"b\n");
    }
    assert_eq!(env.count("a"), 1, "the second --shell run must hit");
    let out = env.run(["--shell", &c]);
    assert_eq!(out.stdout, b"c\n");
    assert_eq!(env.count("a"), 2, "a different shell string must miss");
    let out = env.run(["--shell", "exit 7"]);
    assert_code(&out, 7);
    // --shell and a command after -- cannot both be given.
    let out = env.run(["--shell", &b, "--", "true"]);
    assert_code(&out, 125);
    assert_eq!(env.count("a"), 2);
}

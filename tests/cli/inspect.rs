//! `lcrun explain` and `lcrun cache list|show|stats|clear|prune`, on the
//! real binary: what a miss is blamed on, and what the cache holds.

use std::fs;
use std::time::Duration;

use serde_json::Value;

use crate::util::{assert_code, code, git, stdout, Env};

fn json(output: &std::process::Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(output)))
}

/// Runs `lcrun explain ARGS`, checks its status, returns its stdout.
fn explain(env: &Env, args: &[&str], status: i32) -> String {
    let out = env.run([&["explain"], args].concat());
    assert_code(&out, status);
    stdout(&out)
}

#[test]
fn explain_says_hit_miss_and_no_earlier_entry_with_its_statuses() {
    let env = Env::new();
    let text = explain(&env, &["--", "echo", "hi"], 1);
    assert!(
        text.contains("miss") && text.contains("no earlier entry of this command"),
        "{text}"
    );
    assert!(text.contains("argv") && text.contains("echo hi"), "{text}");
    assert!(!env.db().exists(), "explain created no cache");
    assert_code(&env.run(["--", "echo", "hi"]), 0);
    let text = explain(&env, &["--", "echo", "hi"], 0);
    assert!(text.contains("hit"), "{text}");
    let parsed = json(&env.run(["explain", "--json", "--", "echo", "hi"]));
    assert_eq!(parsed["verdict"], "hit");
    assert_eq!(parsed["key"].as_str().unwrap().len(), 64);
    // lcrun's own errors.
    explain(&env, &["-c", "bogus:x", "--", "echo", "hi"], 125);
    explain(&env, &["--", "no-such-program-here"], 125);
    explain(&env, &[], 125);
}

#[test]
fn explain_names_a_changed_mtime_and_env_without_its_value() {
    let env = Env::new();
    env.write("src/main.c", "int main;");
    let args = ["-c", "mtime:src/main.c", "-c", "env:CC", "--", "echo", "hi"];
    let out = env
        .lcrun()
        .env("CC", "gcc-first-value")
        .args(args)
        .output()
        .unwrap();
    assert_code(&out, 0);
    let file = fs::File::options()
        .write(true)
        .open(env.path("src/main.c"))
        .unwrap();
    file.set_modified(std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000))
        .unwrap();
    let out = env
        .lcrun()
        .env("CC", "clang-second-value")
        .args([&["explain"][..], &args].concat())
        .output()
        .unwrap();
    assert_code(&out, 1);
    let text = stdout(&out);
    assert!(text.contains("mtime:src/main.c changed"), "{text}");
    assert!(text.contains("env:CC changed"), "{text}");
    assert!(
        !text.contains("first-value") && !text.contains("second-value"),
        "{text}"
    );
    let parsed: Value = serde_json::from_slice(
        &env.lcrun()
            .env("CC", "clang-second-value")
            .args([&["explain", "--json"][..], &args].concat())
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(parsed["verdict"], "miss");
    assert!(!parsed.to_string().contains("second-value"));
}

#[test]
fn explain_names_hash_git_cwd_program_and_script() {
    let env = Env::new();
    env.write("src/a.c", "a");
    env.write("src/b.c", "b");
    env.write("src/gone.c", "g");
    let hash = ["-c", "hash:src/*.c", "--", "echo", "hi"];
    assert_code(&env.run(hash), 0);
    env.write("src/b.c", "b, changed");
    env.write("src/new.c", "n");
    fs::remove_file(env.path("src/gone.c")).unwrap();
    let text = explain(&env, &hash, 1);
    assert!(
        text.contains("hash:src/*.c: src/b.c changed, 1 file added (src/new.c), 1 file removed (src/gone.c)"),
        "{text}"
    );

    let repo = env.path("repo");
    fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    env.write("repo/f", "1");
    git(&repo, &["add", "f"]);
    git(&repo, &["commit", "-qm", "one"]);
    let git_args = ["-c", "git:repo", "--", "echo", "hi"];
    assert_code(&env.run(git_args), 0);
    let head = |env: &Env| {
        let out = std::process::Command::new("git")
            .args(["-C", env.path("repo").to_str().unwrap(), "rev-parse", "HEAD"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()[..6].to_owned()
    };
    let first = head(&env);
    env.write("repo/f", "2");
    let text = explain(&env, &git_args, 1);
    assert!(text.contains("git:repo: uncommitted changes"), "{text}");
    assert!(!text.contains("HEAD moved"), "{text}");
    git(&repo, &["commit", "-qam", "two"]);
    let text = explain(&env, &git_args, 1);
    assert!(
        text.contains(&format!("git:repo: HEAD moved {first} → {}", head(&env))),
        "{text}"
    );

    // The same command in another directory.
    fs::create_dir(env.path("elsewhere")).unwrap();
    let explain_elsewhere = || {
        env.lcrun()
            .current_dir(env.path("elsewhere"))
            .args(["explain", "--", "echo", "where"])
            .output()
            .unwrap()
    };
    let out = explain_elsewhere();
    assert_code(&out, 1);
    assert!(stdout(&out).contains("no earlier entry"), "{}", stdout(&out));
    assert_code(&env.run(["--", "echo", "where"]), 0);
    let out = explain_elsewhere();
    assert!(stdout(&out).contains("cwd differs"), "{}", stdout(&out));

    // The program itself, and an interpreter's script.
    env.script("tool", "#!/bin/sh\necho one\n");
    assert_code(&env.run(["--", "./tool"]), 0);
    env.script("tool", "#!/bin/sh\necho two, longer\n");
    let text = explain(&env, &["--", "./tool"], 1);
    assert!(
        text.contains("program ") && text.contains("tool changed (size"),
        "{text}"
    );
    env.write("job.sh", "echo one\n");
    assert_code(&env.run(["--", "sh", "job.sh"]), 0);
    env.write("job.sh", "echo two\n");
    let text = explain(&env, &["--", "sh", "job.sh"], 1);
    assert!(text.contains("script job.sh changed"), "{text}");
}

#[test]
fn explain_says_how_long_ago_an_entry_expired() {
    let env = Env::new();
    assert_code(&env.run(["--", "echo", "old"]), 0);
    std::thread::sleep(Duration::from_millis(1100));
    let text = explain(&env, &["-e", "1s", "--", "echo", "old"], 1);
    assert!(
        text.contains("expired") && text.contains("ago (--expire 1.0s)"),
        "{text}"
    );
    assert_eq!(
        json(&env.run(["explain", "--json", "-e", "1s", "--", "echo", "old"]))["verdict"],
        "expired"
    );
    explain(&env, &["-e", "1h", "--", "echo", "old"], 0);
}

#[test]
fn cache_subcommands_on_a_cache_not_there_yet_give_empty_answers() {
    let env = Env::new();
    let out = env.run(["cache", "list", "--json"]);
    assert_code(&out, 0);
    assert_eq!(json(&out), serde_json::json!([]));
    let stats = json(&env.run(["cache", "stats", "--json"]));
    assert_eq!(stats["entries"], 0);
    assert_code(&env.run(["cache", "clear"]), 0);
    assert_code(&env.run(["cache", "prune", "--max-size", "1M"]), 0);
    assert_code(&env.run(["cache", "show", "abcd"]), 125);
    assert!(!env.cache.exists(), "nothing was created");
    assert_code(&env.run(["cache", "prune", "--max-size", "lots"]), 125);
}

#[test]
fn cache_list_and_show_give_entries_newest_first_and_exact_bytes() {
    let env = Env::new();
    let binary: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    env.write("bin.dat", &binary);
    assert_code(&env.run(["--", "cat", "bin.dat"]), 0);
    assert_code(&env.run(["--shell", "echo err >&2; echo out"]), 0);
    let list = json(&env.run(["cache", "list", "--json"]));
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["command"], "echo err >&2; echo out", "newest first");
    assert_eq!(list[1]["command"], "cat bin.dat");
    let key = list[1]["key"].as_str().unwrap();
    let text = stdout(&env.run(["cache", "list"]));
    assert!(
        text.contains(list[1]["short"].as_str().unwrap()) && text.contains("cat bin.dat"),
        "{text}"
    );

    let out = env.run(["cache", "show", "--stdout", &key[..10]]);
    assert_code(&out, 0);
    assert!(out.stdout == binary, "byte-exact");
    let other = list[0]["key"].as_str().unwrap();
    assert_eq!(env.run(["cache", "show", "--stderr", other]).stdout, b"err\n");
    let shown = json(&env.run(["cache", "show", "--json", key]));
    assert_eq!(shown["stdout_bytes"], 70_000);
    assert_eq!(shown["command"], "cat bin.dat");
    assert!(shown["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["label"] == "argv"));
    let text = stdout(&env.run(["cache", "show", key]));
    assert!(
        text.contains("cat bin.dat") && text.contains("key inputs"),
        "{text}"
    );

    // A reader that stops reading (70 KB do not fit a pipe) ends it quietly.
    let out = std::process::Command::new("bash")
        .args([
            "-c",
            "set -o pipefail; \"$0\" cache show --stdout \"$1\" | head -c 1 >/dev/null",
        ])
        .arg(env!("CARGO_BIN_EXE_lcrun"))
        .arg(key)
        .env("LCRUN_CACHE_DIR", &env.cache)
        .output()
        .unwrap();
    assert_code(&out, 0);
    assert_eq!(crate::util::stderr(&out), "");

    // Unknown and ambiguous prefixes.
    let out = env.run(["cache", "show", "zz"]);
    assert_code(&out, 125);
    for i in 0..40 {
        assert_code(&env.run(["--", "echo", &i.to_string()]), 0);
    }
    let keys: Vec<String> = json(&env.run(["cache", "list", "--json"]))
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap().to_owned())
        .collect();
    // 42 keys, 16 hex digits: some first digit is shared.
    let first = keys
        .iter()
        .map(|k| &k[..1])
        .find(|d| keys.iter().filter(|k| k.starts_with(d)).count() > 1)
        .unwrap();
    let out = env.run(["cache", "show", first]);
    assert_code(&out, 125);
    assert!(
        crate::util::stderr(&out).contains("ambiguous"),
        "{}",
        crate::util::stderr(&out)
    );
}

#[test]
fn cache_clear_by_key_prefix_by_age_and_by_scope() {
    let env = Env::new();
    assert_code(&env.run(["--", "echo", "old"]), 0);
    std::thread::sleep(Duration::from_millis(1100));
    assert_code(&env.run(["--scope", "a", "--", "echo", "a"]), 0);
    assert_code(&env.run(["--scope", "b", "--", "echo", "b"]), 0);
    assert_code(&env.run(["--", "echo", "new"]), 0);
    let commands = |env: &Env| -> Vec<String> {
        json(&env.run(["cache", "list", "--json"]))
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["command"].as_str().unwrap().to_owned())
            .collect()
    };
    let out = env.run(["cache", "clear", "--older-than", "1s"]);
    assert_code(&out, 0);
    assert_eq!(commands(&env), ["echo new", "echo b", "echo a"]);
    assert_eq!(
        json(&env.run(["cache", "clear", "--json", "--scope", "a"]))["removed"],
        1
    );
    assert_eq!(commands(&env), ["echo new", "echo b"]);
    let list = json(&env.run(["cache", "list", "--json"]));
    let key = list[0]["key"].as_str().unwrap();
    assert_code(&env.run(["cache", "clear", &key[..12]]), 0);
    assert_eq!(commands(&env), ["echo b"]);
    assert_code(&env.run(["cache", "clear", "ffffffffffff0000"]), 125);
    assert_code(&env.run(["cache", "clear"]), 0);
    assert!(commands(&env).is_empty());
}

/// Writes 200 KB that no codec shrinks to `name`.
fn noise(env: &Env, name: &str) {
    env.write(
        name,
        crate::util::noise(
            200_000,
            u64::from(name.as_bytes()[0]).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        ),
    );
}

fn listed_commands(env: &Env) -> Vec<String> {
    json(&env.run(["cache", "list", "--json"]))
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["command"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn prune_removes_the_least_recently_used_until_the_cache_fits() {
    let env = Env::new();
    // Each entry stores about 200 KB.
    for name in ["a", "b", "c"] {
        noise(&env, name);
        assert_code(&env.run(["--", "cat", name]), 0);
    }
    // `a` is used again: `b` is now the least recently used.
    assert_code(&env.run(["--", "cat", "a"]), 0);
    let out = env.run(["cache", "prune", "--json", "--max-size", "450K"]);
    assert_code(&out, 0);
    let pruned = json(&out);
    assert!(pruned["stored_bytes"].as_u64().unwrap() <= 450 * 1024, "{pruned}");
    let left: Vec<String> = json(&env.run(["cache", "list", "--json"]))
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["command"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(left, ["cat c", "cat a"], "b, the least recently used, went");
    // What is left still replays.
    assert_eq!(
        env.run(["--", "cat", "a"]).stdout,
        fs::read(env.path("a")).unwrap()
    );
}

#[test]
fn stats_count_a_scripted_sequence_and_parallel_runs_exactly() {
    let env = Env::new();
    // Three misses, four hits.
    for args in [
        ["echo", "1"],
        ["echo", "1"],
        ["echo", "2"],
        ["echo", "1"],
        ["echo", "3"],
        ["echo", "2"],
        ["echo", "3"],
    ] {
        assert_code(&env.run([&["--"][..], &args].concat()), 0);
    }
    let stats = json(&env.run(["cache", "stats", "--json"]));
    assert_eq!(
        (
            stats["entries"].as_i64(),
            stats["hits"].as_i64(),
            stats["misses"].as_u64()
        ),
        (Some(3), Some(4), Some(3)),
        "{stats}"
    );
    assert!((stats["hit_rate"].as_f64().unwrap() - 4.0 / 7.0).abs() < 1e-9);
    let text = stdout(&env.run(["cache", "stats"]));
    assert!(
        text.contains("hits:        4") && text.contains("misses:      3"),
        "{text}"
    );

    // 16 at once, on one new command: one miss, 15 hits (or waits replayed).
    let children: Vec<_> = (0..16)
        .map(|_| env.start(["--", "sh", "-c", "sleep 0.3; echo p"]))
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert_eq!(code(&out), 0);
    }
    let stats = json(&env.run(["cache", "stats", "--json"]));
    assert_eq!(stats["entries"], 4);
    assert_eq!(
        stats["hits"].as_i64().unwrap() + stats["misses"].as_i64().unwrap(),
        7 + 16,
        "{stats}"
    );
    assert_eq!(stats["misses"], 4, "{stats}");
}

#[test]
fn max_size_keeps_the_cache_under_it_after_writes() {
    let env = Env::new();
    for name in ["a", "b", "c", "d", "e"] {
        noise(&env, name);
        let out = env
            .lcrun()
            .env("LCRUN_MAX_SIZE", "450K")
            .args(["--", "cat", name])
            .output()
            .unwrap();
        assert_code(&out, 0);
    }
    // A write of a fifth of the limit measures the cache every time.
    assert_eq!(listed_commands(&env), ["cat e", "cat d"]);
    let pruned = json(&env.run(["cache", "prune", "--json", "--max-size", "450K"]));
    assert_eq!(pruned["removed"], 0, "{pruned}");
    assert_code(&env.run(["--max-size", "1x", "--", "true"]), 125);
}

#[test]
fn a_cache_others_can_write_is_refused_by_listings_and_explain() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    assert_code(&env.run(["--", "echo", "hi"]), 0);
    fs::set_permissions(&env.cache, fs::Permissions::from_mode(0o777)).unwrap();
    for args in [
        &["cache", "list"][..],
        &["cache", "stats"],
        &["cache", "clear"],
        &["explain", "--", "echo", "hi"],
    ] {
        let out = env.run(args);
        assert_code(&out, 125);
        assert!(
            crate::util::stderr(&out).contains("not reading the cache"),
            "{args:?}: {}",
            crate::util::stderr(&out)
        );
    }
    fs::set_permissions(&env.cache, fs::Permissions::from_mode(0o700)).unwrap();
    assert_code(&env.run(["cache", "list"]), 0);
}

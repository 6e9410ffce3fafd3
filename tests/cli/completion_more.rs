//! More edges of shell completion, in the bash quoting and the immutable
//! read of the cache: a half-typed quote (bash inserts a
//! candidate inside the quote, where a backslash is kept), a quote opened
//! after `hash:`, and a cache directory whose path starts with `//`. Each
//! Tab is the real binary run with the variables and the words an
//! interactive bash 5.2 passes (captured from completions/lcrun.bash).

use std::process::Output;

use crate::util::*;

/// One bash Tab: `line` up to the cursor, and bash's own `words` (as
/// `COMP_WORDS`, the current word dequoted as bash passes `$2`), the last
/// one being completed.
fn bash_tab(env: &Env, line: &str, words: &[&str]) -> Output {
    crate::completion_edges::bash_tab_command(env, line, words)
        .output()
        .unwrap()
}

fn lines(out: &Output) -> Vec<String> {
    assert_code(out, 0);
    assert_eq!(stderr(out), "");
    stdout(out).lines().map(str::to_owned).collect()
}

/// A directory `my dir` with a file, in the scratch dir.
fn my_dir(env: &Env) {
    env.write("my dir/f1", "x");
}

/// `lcrun -c "hash:my d<Tab>`: bash passes `hash:my d` and inserts the
/// reply inside the open quote, then closes it. A backslash there is kept:
/// the reply `hash:my\ dir/` made the line `"hash:my\ dir/"`, which names
/// `my\ dir/`, a file that does not exist. Inside the quote the reply must
/// be the path as it is.
#[test]
fn bash_candidate_inside_an_open_double_quote_is_not_backslash_escaped() {
    let env = Env::new();
    my_dir(&env);
    let out = bash_tab(&env, "lcrun -c \"hash:my d", &["lcrun", "-c", "hash:my d"]);
    assert_eq!(lines(&out), ["hash:my dir/"]);
    let out = bash_tab(&env, "lcrun -- cat \"my d", &["lcrun", "--", "cat", "my d"]);
    assert_eq!(lines(&out), ["my dir/"]);
}

/// The same with a single quote: `'hash:my\ dir/'` named `my\ dir/`.
#[test]
fn bash_candidate_inside_an_open_single_quote_is_not_backslash_escaped() {
    let env = Env::new();
    my_dir(&env);
    let out = bash_tab(&env, "lcrun -c 'hash:my d", &["lcrun", "-c", "hash:my d"]);
    assert_eq!(lines(&out), ["hash:my dir/"]);
}

/// `lcrun -c hash:'my d<Tab>`: bash's word is `my d` (after the `:`), and
/// the reply replaces it inside the quote. lcrun replied `hash:my\ dir/`
/// whole (its cut at bash's word compared the typed `hash:'my d` with the
/// dequoted `my d`), and the line became `hash:'hash:my\ dir/'`.
#[test]
fn bash_quote_opened_after_the_kind_completes_the_path_once() {
    let env = Env::new();
    my_dir(&env);
    let out = bash_tab(&env, "lcrun -c hash:'my d", &["lcrun", "-c", "hash", ":", "my d"]);
    assert_eq!(lines(&out), ["my dir/"]);
}

/// `--cache-dir //tmp/...` names the same directory as `/tmp/...`, and
/// with the WAL files there the keys are offered. With none, the cache is
/// opened by a `file://tmp/...` URI, whose `tmp` SQLite reads as a host:
/// the open failed and no key was offered.
#[test]
fn keys_are_offered_from_a_cache_dir_written_with_a_leading_double_slash() {
    let env = Env::new();
    assert_code(&env.run(["--", "echo", "one"]), 0);
    let key = stdout(&env.run(["cache", "list"]))
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();
    crate::completion_edges::without_wal_files(&env);
    let dir = format!("/{}", env.cache.display());
    let line = format!("lcrun cache show --cache-dir {dir} ");
    let out = bash_tab(&env, &line, &["lcrun", "cache", "show", "--cache-dir", &dir, ""]);
    assert!(lines(&out).contains(&key), "{key} not in {:?}", lines(&out));
}

/// A line of 140,030 bytes but 70,030 characters (`ü` is two bytes in
/// UTF-8): the script passes `${COMP_LINE:0:COMP_POINT < 100000 ? ...}`,
/// where bash counts characters, so the whole line went into one variable
/// past the 128 KiB an exec allows. bash printed `lcrun: Argument list too
/// long` into the line and offered nothing, where a line of ASCII that long
/// falls back to clap's words. Each word is short: only the line is long.
/// Needs bash.
#[test]
fn bash_tab_on_a_long_line_of_multibyte_characters_still_completes() {
    let env = Env::new();
    let word = "ü".repeat(1000);
    let mut line = String::from("lcrun");
    for _ in 0..70 {
        line.push_str(" --ignore-arg ");
        line.push_str(&word);
    }
    line.push_str(" --cache-d");
    assert!(line.len() > 128 * 1024 && line.chars().count() < 100_000);
    let script = r#"
        source "$1"
        COMP_LINE=$(cat "$2") COMP_TYPE=9
        COMP_POINT=${#COMP_LINE}
        read -ra COMP_WORDS <<<"$COMP_LINE"
        COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
        _clap_complete_lcrun lcrun "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
        printf '%s\n' "${COMPREPLY[@]}"
    "#;
    let completions = concat!(env!("CARGO_MANIFEST_DIR"), "/completions/lcrun.bash");
    // Too long for bash's own arguments: read from a file.
    let line_file = env.write("line", &line);
    let mut bash = std::process::Command::new("bash");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("LCRUN_") {
            bash.env_remove(&name);
        }
    }
    let out = bash
        .args(["-c", script, "bash", completions])
        .arg(&line_file)
        .current_dir(env.dir.path())
        .env("PATH", path_with_lcrun())
        .env("LC_ALL", "C.UTF-8")
        .env("LCRUN_CACHE_DIR", &env.cache)
        .output()
        .unwrap();
    assert_eq!(stderr(&out), "");
    assert_eq!(stdout(&out).lines().collect::<Vec<_>>(), ["--cache-dir"]);
}

/// A directory whose name holds a newline: the reply escaped it as
/// `\` + newline, which bash reads as a line continuation, so the word
/// became `nl/ab/`, another path. The reply, read back by bash, must be
/// the path. Needs bash.
#[test]
fn bash_candidate_with_a_newline_reads_back_as_the_path() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("nl/a\nb")).unwrap();
    let out = env
        .lcrun()
        .env("_LCRUN_COMP_LINE", "lcrun -c hash:nl/a")
        .env("_CLAP_IFS", "\u{b}")
        .env("_CLAP_COMPLETE_INDEX", "4")
        .env("LCRUN_COMPLETE", "bash")
        .env("_LCRUN_TAB", "1")
        .args(["--", "lcrun", "-c", "hash", ":", "nl/a"])
        .output()
        .unwrap();
    assert_code(&out, 0);
    let reply = stdout(&out);
    assert_eq!(reply.split('\u{b}').count(), 1, "{reply:?}");
    let read = std::process::Command::new("bash")
        .args(["-c", &format!("printf %s {reply}")])
        .output()
        .unwrap();
    assert_eq!(stdout(&read), "nl/a\nb/", "reply {reply:?}");
}

/// zsh and fish pass the word under the cursor as typed (clap's scripts:
/// `${words}`, `commandline --current-token`), quotes and backslashes
/// included, as captured from zsh 5.9 and fish 3.6. lcrun took
/// `hash:my\ dir/` as a path with a backslash and offered nothing, where
/// bash now offers `my dir/f1`: in zsh and fish a path with a blank
/// completes only up to the blank.
#[test]
fn zsh_and_fish_complete_after_an_escaped_or_quoted_blank() {
    let env = Env::new();
    my_dir(&env);
    for shell in ["zsh", "fish"] {
        for typed in ["hash:my\\ dir/", "'hash:my dir/", "\"hash:my dir/"] {
            let out = env
                .lcrun()
                .env("_CLAP_IFS", "\n")
                .env("_CLAP_COMPLETE_INDEX", "2")
                .env("LCRUN_COMPLETE", shell)
                .env("_LCRUN_TAB", "1")
                .args(["--", "lcrun", "-c", typed])
                .output()
                .unwrap();
            let found = lines(&out);
            assert!(
                found.iter().any(|c| c.contains("my dir/f1")),
                "{shell}: {typed:?} gave {found:?}"
            );
        }
    }
}

/// zsh passes the words before the cursor as typed too: `--cache-dir
/// 'a b'` reached lcrun as `'a b'`, with its quotes, and the keys of the
/// cache in `a b` were not offered (fish and elvish pass `a b`).
#[test]
fn zsh_offers_the_keys_of_a_quoted_cache_dir() {
    let env = Env::new();
    let dir = env.path("a b");
    let run = env
        .lcrun()
        .arg("--cache-dir")
        .arg(&dir)
        .args(["--", "echo", "one"])
        .output()
        .unwrap();
    assert_code(&run, 0);
    let list = env
        .lcrun()
        .args(["cache", "--cache-dir"])
        .arg(&dir)
        .arg("list")
        .output()
        .unwrap();
    let key = stdout(&list)
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();
    let out = env
        .lcrun()
        .env("_CLAP_IFS", "\n")
        .env("_CLAP_COMPLETE_INDEX", "5")
        .env("LCRUN_COMPLETE", "zsh")
        .env("_LCRUN_TAB", "1")
        .args(["--", "lcrun", "cache", "show", "--cache-dir", "'a b'", ""])
        .output()
        .unwrap();
    let found = lines(&out);
    assert!(
        found.iter().any(|c| c.starts_with(&key)),
        "{key} not in {found:?}"
    );
}

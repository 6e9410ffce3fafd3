//! Shell completion in real shells (bash, zsh, fish, elvish) that loaded the
//! scripts in `completions/`, each Tab running the real binary: `-c`
//! completes the kinds of expression and then paths, `cache show` and
//! `cache clear` complete the keys in the cache, and a cache that is empty,
//! missing or not the user's offers none and prints nothing.
//! (`packaging.rs` checks the scripts are what lcrun prints.)

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::pty::Term;
use crate::util::*;

/// A directory to complete paths in: `src/`, `src/main.c`, `srv.txt`.
fn completion_tree() -> Env {
    let env = Env::new();
    env.write("src/main.c", "int main;");
    env.write("srv.txt", "");
    env
}

fn script(name: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("completions")
        .join(name)
}

/// `program` in the scratch dir, with lcrun on `PATH` and the env's cache,
/// none of the user's other LCRUN_* settings.
fn shell(env: &Env, program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(env.dir.path()).env("HOME", env.dir.path());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("LCRUN_") {
            cmd.env_remove(&name);
        }
    }
    cmd.env("LCRUN_CACHE_DIR", &env.cache)
        .env("PATH", path_with_lcrun());
    cmd
}

/// An env with entries made by running lcrun, and their keys as `cache
/// list` shows them (short unique prefixes), sorted.
fn cache_with_entries() -> (Env, Vec<String>) {
    let env = completion_tree();
    let keys = entries(&env, &["one", "two", "three", "four", "five", "six"]);
    (env, keys)
}

/// Runs `lcrun -- echo WORD` for each word, and returns the keys of the
/// entries as `cache list` shows them (short unique prefixes), sorted.
pub fn entries(env: &Env, words: &[&str]) -> Vec<String> {
    for word in words {
        assert_code(&env.run(["--", "echo", word]), 0);
    }
    let out = env.run(["cache", "list"]);
    assert_code(&out, 0);
    let mut keys: Vec<String> = stdout(&out)
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect();
    keys.sort();
    assert_eq!(keys.len(), words.len(), "{}", stdout(&out));
    keys
}

/// The keys starting with the first character of the first key, and that
/// character: a typed prefix that narrows the keys (six random keys all
/// starting alike is a chance of one in a million).
fn narrowed(keys: &[String]) -> (String, Vec<String>) {
    let typed = keys[0][..1].to_owned();
    let some: Vec<String> = keys.iter().filter(|k| k.starts_with(&typed)).cloned().collect();
    assert!(some.len() < keys.len(), "{keys:?}");
    (typed, some)
}

/// `line`'s words as readline gives them to a completion: split at blanks
/// and at ':', each ':' a word of its own.
pub fn readline_words(line: &str) -> Vec<String> {
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
    words
}

/// What bash's completion of lcrun offers at the end of `line`, in a real
/// bash that loaded completions/lcrun.bash: the function `complete -p`
/// names is called as readline would call it, the words split at ':' as
/// readline splits them. Also what bash printed on stderr.
fn bash_completes_with_stderr(env: &Env, line: &str) -> (Vec<String>, String) {
    let words = readline_words(line);
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
COMP_LINE={line}; COMP_POINT=${{#COMP_LINE}}; COMP_TYPE=9
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
    let out = shell(env, "bash").arg("-c").arg(program).output().expect("bash");
    let text = stdout(&out);
    assert!(
        text.contains(" -F _clap_complete_lcrun lcrun"),
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
    (replies, stderr(&out))
}

fn bash_completes(env: &Env, line: &str) -> Vec<String> {
    let (replies, err) = bash_completes_with_stderr(env, line);
    assert_eq!(err, "", "{line:?}");
    replies
}

/// Only the candidates that are keys (not options such as `--json`).
fn keys_only(candidates: Vec<String>) -> Vec<String> {
    candidates.into_iter().filter(|c| !c.starts_with('-')).collect()
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
    assert_eq!(
        bash_completes(&env, "lcrun explain -c git:s"),
        ["src/", "srv.txt"]
    );
    // Anything else is clap's completion, as before.
    let options = bash_completes(&env, "lcrun --progr");
    assert_eq!(options, ["--progress", "--progress-regex"]);
    assert_eq!(bash_completes(&env, "lcrun --progress p"), ["plain"]);
}

#[test]
fn bash_completes_cache_keys() {
    let (env, keys) = cache_with_entries();
    assert_eq!(keys_only(bash_completes(&env, "lcrun cache show ")), keys);
    let (typed, some) = narrowed(&keys);
    assert_eq!(bash_completes(&env, &format!("lcrun cache show {typed}")), some);
    assert_eq!(
        bash_completes(&env, &format!("lcrun cache show --stdout {typed}")),
        some
    );
    // `cache clear` takes several keys.
    assert_eq!(keys_only(bash_completes(&env, "lcrun cache clear ")), keys);
    let again = bash_completes(&env, &format!("lcrun cache clear {} {typed}", keys[1]));
    assert_eq!(again, some);
    // A longer prefix than the short key is kept as typed.
    let full = env.run(["cache", "show", &keys[2], "--json"]);
    let full: serde_json::Value = serde_json::from_str(&stdout(&full)).unwrap();
    let long = &full["key"].as_str().unwrap()[..12];
    assert_eq!(bash_completes(&env, &format!("lcrun cache show {long}")), [long]);
    // --cache-dir on the line names the cache.
    let empty = Env::new();
    let line = format!("lcrun cache show --cache-dir {} ", env.cache.display());
    assert_eq!(keys_only(bash_completes(&empty, &line)), keys);
    let line = format!("lcrun cache clear --cache-dir={} {typed}", env.cache.display());
    assert_eq!(bash_completes(&empty, &line), some);
}

#[test]
fn bash_offers_no_keys_from_a_missing_damaged_or_foreign_cache() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    for line in ["lcrun cache show ", "lcrun cache clear ", "lcrun cache show 0"] {
        assert_eq!(keys_only(bash_completes(&env, line)), Vec::<String>::new());
    }
    // Completing created nothing.
    assert!(!env.cache.exists(), "completing created the cache dir");
    // A cache with no entries.
    assert_code(&env.run(["--no-cache", "--", "true"]), 0);
    assert_code(&env.run(["cache", "clear"]), 0);
    assert_eq!(
        keys_only(bash_completes(&env, "lcrun cache show ")),
        Vec::<String>::new()
    );
    // A damaged database, and a cache others may write in.
    let (env, keys) = cache_with_entries();
    assert_eq!(keys_only(bash_completes(&env, "lcrun cache show ")), keys);
    std::fs::set_permissions(&env.cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    assert_eq!(
        keys_only(bash_completes(&env, "lcrun cache show ")),
        Vec::<String>::new()
    );
    std::fs::set_permissions(&env.cache, std::fs::Permissions::from_mode(0o700)).unwrap();
    // Another user's (the tests run as root in CI; elsewhere chown fails
    // and this part checks nothing).
    let cache = std::ffi::CString::new(env.cache.to_str().unwrap()).unwrap();
    // SAFETY: chown of a path this test made.
    if unsafe { libc::chown(cache.as_ptr(), 65534, 65534) } == 0 {
        assert_eq!(
            keys_only(bash_completes(&env, "lcrun cache show ")),
            Vec::<String>::new()
        );
        // SAFETY: as above, back to ours.
        unsafe { libc::chown(cache.as_ptr(), libc::geteuid(), libc::getegid()) };
    }
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", env.db().display()));
    }
    std::fs::write(env.db(), b"not a database, not at all").unwrap();
    assert_eq!(
        keys_only(bash_completes(&env, "lcrun cache show ")),
        Vec::<String>::new()
    );
}

/// What fish offers for `line`, with completions/lcrun.fish loaded.
fn fish_completes(env: &Env, line: &str) -> Vec<String> {
    let out = shell(env, "fish")
        .args(["--no-config", "-c"])
        .arg(format!(
            "source '{}'; complete -C '{line}'",
            script("lcrun.fish").display()
        ))
        .output()
        .expect("fish (the fish package) is needed by this test");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out), "", "{line:?}");
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
fn fish_completes_cache_keys_with_their_commands() {
    let (env, keys) = cache_with_entries();
    assert_eq!(keys_only(fish_completes(&env, "lcrun cache show ")), keys);
    let (typed, some) = narrowed(&keys);
    assert_eq!(fish_completes(&env, &format!("lcrun cache show {typed}")), some);
    assert_eq!(keys_only(fish_completes(&env, "lcrun cache clear ")), keys);
    let again = fish_completes(&env, &format!("lcrun cache clear {} {typed}", keys[0]));
    assert_eq!(again, some);
    // Each key with its command as the description.
    let out = shell(&env, "fish")
        .args(["--no-config", "-c"])
        .arg(format!(
            "source '{}'; complete -C 'lcrun cache show '",
            script("lcrun.fish").display()
        ))
        .output()
        .unwrap();
    let text = stdout(&out);
    for word in ["one", "two", "three", "four", "five", "six"] {
        assert!(text.contains(&format!("\techo {word}\n")), "{text}");
    }
    // Nothing from an empty cache.
    let empty = Env::new();
    assert_eq!(
        keys_only(fish_completes(&empty, "lcrun cache show ")),
        Vec::<String>::new()
    );
    assert!(!empty.cache.exists());
}

/// What elvish's completer for lcrun offers for `words`, in an interactive
/// elvish on a pseudo-terminal (its editor is only there) that loaded
/// completions/lcrun.elv, and everything the terminal showed.
fn elvish_completes_shown(env: &Env, words: &str) -> (Vec<String>, String) {
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
    (found, shown)
}

fn elvish_completes(env: &Env, words: &str) -> Vec<String> {
    elvish_completes_shown(env, words).0
}

#[test]
fn elvish_completes_cache_by_kinds_then_paths() {
    let env = completion_tree();
    let mut kinds: Vec<String> = lcrun::cli::CACHE_BY_KINDS.iter().map(|k| k.to_string()).collect();
    kinds.sort();
    assert_eq!(elvish_completes(&env, "lcrun -c ''"), kinds);
    assert_eq!(elvish_completes(&env, "lcrun -c h"), ["hash:"]);
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

#[test]
fn elvish_completes_cache_keys() {
    let (env, keys) = cache_with_entries();
    assert_eq!(keys_only(elvish_completes(&env, "lcrun cache show ''")), keys);
    let (typed, some) = narrowed(&keys);
    assert_eq!(elvish_completes(&env, &format!("lcrun cache show {typed}")), some);
    let again = elvish_completes(&env, &format!("lcrun cache clear {} {typed}", keys[3]));
    assert_eq!(again, some);
    let empty = Env::new();
    let (found, shown) = elvish_completes_shown(&empty, "lcrun cache show ''");
    assert_eq!(keys_only(found), Vec::<String>::new());
    assert!(!shown.contains("lcrun:"), "{shown}");
    assert!(!empty.cache.exists());
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
fn zsh_completion_parses() {
    let out = Command::new("zsh")
        .arg("-n")
        .arg(script("_lcrun"))
        .output()
        .expect("zsh (the zsh package) is needed by this test");
    assert!(out.status.success(), "{}", stderr(&out));
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
fn zsh_completes_cache_keys() {
    let (env, keys) = cache_with_entries();
    // Several keys: listed below the line, each with its command.
    let shown = zsh_after_tab(&env, "lcrun cache show ");
    for key in &keys {
        assert!(shown.contains(key.as_str()), "{key}: {shown:?}");
    }
    assert!(shown.contains("echo three"), "{shown:?}");
    // One key: put on the line.
    let (typed, _) = narrowed(&keys);
    let one = keys.iter().find(|k| !k.starts_with(&typed)).unwrap();
    let prefix = &one[..7];
    let shown = zsh_after_tab(&env, &format!("lcrun cache clear {} {prefix}", keys[0]));
    assert!(shown.contains(&format!("clear {} {one}", keys[0])), "{shown:?}");
    // An empty cache: nothing, and no message.
    let empty = Env::new();
    let shown = zsh_after_tab(&empty, "lcrun cache show 0");
    assert!(!shown.contains("lcrun:"), "{shown:?}");
    assert!(!empty.cache.exists());
}

#[test]
fn the_completion_variable_asks_for_a_known_shell_and_is_off_when_empty() {
    let env = Env::new();
    // Asked for a script (no arguments, as a startup file asks).
    let out = env.lcrun().env("LCRUN_COMPLETE", "bogus").output().unwrap();
    assert_code(&out, 125);
    assert_eq!(stdout(&out), "");
    assert!(
        stderr(&out).starts_with("lcrun: LCRUN_COMPLETE=bogus: "),
        "{}",
        stderr(&out)
    );
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    // Empty or 0: a run as any other.
    for off in ["", "0"] {
        let out = env
            .lcrun()
            .env("LCRUN_COMPLETE", off)
            .args(["--", "echo", "ran"])
            .output()
            .unwrap();
        assert_code(&out, 0);
        assert_eq!(stdout(&out), "ran\n");
    }
    // Clap's generic variable is not lcrun's: a run as any other.
    let out = env
        .lcrun()
        .env("COMPLETE", "bash")
        .args(["--", "echo", "ran"])
        .output()
        .unwrap();
    assert_code(&out, 0);
    assert_eq!(stdout(&out), "ran\n");
}

#[test]
fn after_the_double_dash_the_command_name_then_paths() {
    let env = completion_tree();
    for (shell, complete) in [
        ("bash", bash_completes as fn(&Env, &str) -> Vec<String>),
        ("fish", fish_completes),
    ] {
        assert_eq!(complete(&env, "lcrun -- make sr"), ["src/", "srv.txt"], "{shell}");
        assert_eq!(
            complete(&env, "lcrun -c git -- ./sr"),
            ["./src/", "./srv.txt"],
            "{shell}"
        );
        assert_eq!(
            complete(&env, "lcrun explain -- cat sr"),
            ["src/", "srv.txt"],
            "{shell}"
        );
        // The name: programs on PATH, not lcrun's subcommands.
        let names = complete(&env, "lcrun -- ech");
        assert!(names.contains(&"echo".to_owned()), "{shell}: {names:?}");
        let names = complete(&env, "lcrun -- cach");
        assert!(!names.contains(&"cache".to_owned()), "{shell}: {names:?}");
        // Before `--`, no command yet: the subcommand.
        assert_eq!(complete(&env, "lcrun cach"), ["cache"], "{shell}");
    }
}

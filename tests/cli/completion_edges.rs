//! Edges of shell completion: a completion variable left exported in a
//! user's environment, a Tab that leaves files in the
//! cache, `--cache-dir` written on the line as a shell user writes it, and
//! a path with a blank completed by bash. Each Tab is the real binary run
//! with the variables completions/lcrun.bash sets.

use std::process::{Command, Output};

use crate::util::*;

/// One bash Tab at the end of `line`, as completions/lcrun.bash runs lcrun:
/// the line up to the cursor in `_LCRUN_COMP_LINE`, and bash's words (split
/// at blanks and at `:`, as readline splits them) after `--`.
fn bash_tab(env: &Env, line: &str, configure: impl FnOnce(&mut Command)) -> Output {
    let words = crate::complete::readline_words(line);
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let mut cmd = bash_tab_command(env, line, &words);
    configure(&mut cmd);
    cmd.output().unwrap()
}

/// lcrun as completions/lcrun.bash runs it for a Tab at the end of `line`,
/// with bash's `words` (the last one being completed).
pub fn bash_tab_command(env: &Env, line: &str, words: &[&str]) -> Command {
    let mut cmd = env.lcrun();
    cmd.env("_LCRUN_COMP_LINE", line)
        .env("_CLAP_IFS", "\n")
        .env("_CLAP_COMPLETE_INDEX", (words.len() - 1).to_string())
        .env("_CLAP_COMPLETE_COMP_TYPE", "9")
        .env("_CLAP_COMPLETE_SPACE", "false")
        .env("LCRUN_COMPLETE", "bash")
        .env("_LCRUN_TAB", "1")
        .arg("--")
        .args(words);
    cmd
}

fn candidates(out: &Output) -> Vec<String> {
    assert_code(out, 0);
    assert_eq!(stderr(out), "");
    let mut found: Vec<String> = stdout(out)
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('-'))
        .map(str::to_owned)
        .collect();
    found.sort();
    found
}

/// Short keys of the entries in `env`'s cache, made by three runs.
fn three_entries(env: &Env) -> Vec<String> {
    crate::complete::entries(env, &["one", "two", "three"])
}

/// `export LCRUN_COMPLETE=bash` in a startup file (instead of `source
/// <(LCRUN_COMPLETE=bash lcrun)`) reaches every later run: the command must
/// still run, or lcrun must say why it did not (one `lcrun:` line, 125).
/// It did neither: `lcrun -- CMD` exited 125 printing nothing, and `lcrun
/// CMD` printed the registration script and exited 0 without running CMD.
#[test]
fn an_exported_completion_variable_does_not_silently_swallow_a_run() {
    let env = Env::new();
    let marker = env.path("ran");
    for args in [
        vec!["--", "touch", marker.to_str().unwrap()],
        vec!["touch", marker.to_str().unwrap()],
    ] {
        let out = env
            .lcrun()
            .env("LCRUN_COMPLETE", "bash")
            .args(&args)
            .output()
            .unwrap();
        let ran = marker.exists();
        let said = code(&out) == 125 && stderr(&out).starts_with("lcrun: ");
        assert!(
            ran || said,
            "{args:?}: not run, status {}, stdout {:?}, stderr {:?}",
            code(&out),
            &stdout(&out)[..stdout(&out).len().min(80)],
            stderr(&out)
        );
    }
}

/// Opens and closes the cache's database: the last connection to close
/// checkpoints and removes the WAL files, as any SQLite client leaves it.
pub fn without_wal_files(env: &Env) {
    let conn = rusqlite::Connection::open(env.db()).unwrap();
    let _: i64 = conn
        .query_row("SELECT count(*) FROM entries", [], |r| r.get(0))
        .unwrap();
    drop(conn);
    assert!(!env.cache.join("cache.db-wal").exists());
}

/// A Tab reads the cache and writes nothing: the directory holds the same
/// files after it. Where the last connection had closed the database (its
/// WAL files gone, as after any other SQLite client closed it), opening it
/// read-only left `cache.db-wal` and a 32 KiB `cache.db-shm` behind.
#[test]
fn completing_keys_leaves_no_file_in_the_cache() {
    let env = Env::new();
    let keys = three_entries(&env);
    without_wal_files(&env);
    let listing = || {
        let mut names: Vec<String> = std::fs::read_dir(&env.cache)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let before = listing();
    assert_eq!(candidates(&bash_tab(&env, "lcrun cache show ", |_| {})), keys);
    assert_eq!(listing(), before);
}

/// `--cache-dir` as a shell user writes it on the line: quoted, with an
/// escaped blank, with `~`. Each names the same cache as the run would, so
/// its keys are offered; none were.
#[test]
fn bash_completes_keys_of_a_cache_dir_written_with_quotes_blanks_or_tilde() {
    let env = Env::new();
    let keys = three_entries(&env);
    let home = env.path("home");
    std::fs::create_dir(&home).unwrap();
    std::fs::rename(&env.cache, home.join("my cache")).unwrap();
    let elsewhere = Env::new();
    for line in [
        "lcrun cache show --cache-dir \"home/my cache\" ",
        "lcrun cache show --cache-dir 'home/my cache' ",
        "lcrun cache show --cache-dir home/my\\ cache ",
        "lcrun cache show --cache-dir ~/my\\ cache ",
    ] {
        let out = bash_tab(&elsewhere, line, |cmd| {
            cmd.current_dir(env.dir.path()).env("HOME", &home);
        });
        assert_eq!(candidates(&out), keys, "{line}");
    }
}

/// bash inserts a candidate as it is (the script registers without `-o
/// filenames`), so a path with a blank must come back quoted: `-c
/// hash:my<Tab>` put `hash:my dir/` on the line, two words.
#[test]
fn bash_quotes_a_path_with_a_blank_after_hash() {
    let env = Env::new();
    env.write("my dir/file.c", "");
    let out = bash_tab(&env, "lcrun -c hash:my", |_| {});
    assert_eq!(candidates(&out), ["my\\ dir/"]);
    let out = bash_tab(&env, "lcrun -- cat my", |_| {});
    assert_eq!(candidates(&out), ["my\\ dir/"]);
}

/// The README's line for elvish's rc.elv, as written, compiles without a
/// word on stderr: `E:LCRUN_COMPLETE=elvish lcrun` is elvish's legacy
/// temporary assignment, which elvish 0.19 answers with a `Deprecation:`
/// warning on every start (and later versions removed).
/// (`env LCRUN_COMPLETE=elvish lcrun | slurp` says nothing.)
#[test]
fn the_readme_elvish_line_compiles_without_a_warning() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let flat = readme.replace('\n', " ");
    let start = flat.find("`eval (").expect("README's elvish line") + 1;
    let line = &flat[start..start + flat[start..].find('`').unwrap()];
    let env = Env::new();
    let out = Command::new("elvish")
        .args(["-norc", "-compileonly", "-c", line])
        .env("PATH", path_with_lcrun())
        .current_dir(env.dir.path())
        .output()
        .expect("elvish");
    assert_code(&out, 0);
    assert_eq!(stderr(&out), "", "{line}");
}

/// After a run's option, lcrun takes no subcommand (`lcrun -q cache list`
/// is an error, 125: "to run a command, put it after '--'"), so a Tab does
/// not offer `cache`, `explain`, `progress` or `help` there.
#[test]
fn after_a_run_option_no_subcommand_is_offered() {
    let env = Env::new();
    let parsed = env.run(["-q", "cache", "list"]);
    assert_code(&parsed, 125);
    let offered = candidates(&bash_tab(&env, "lcrun -q ", |_| {}));
    for sub in ["cache", "explain", "progress", "help"] {
        assert!(!offered.iter().any(|c| c == sub), "{sub} in {offered:?}");
    }
}

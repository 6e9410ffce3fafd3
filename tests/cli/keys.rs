//! Key inputs that must not lie (issue 10, items 3 and 8-12): symlinks and
//! special files under `-c git` and `hash:`, literal paths that look like
//! globs, non-UTF-8 paths, submodules, interpreter scripts, and secrets that
//! must not be recoverable from the cache files.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::util::*;

/// A repository at `dir` with one committed file.
fn repo(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    git(dir, &["init", "-q"]);
    fs::write(dir.join("tracked.txt"), "tracked\n").unwrap();
    git(dir, &["add", "tracked.txt"]);
    git(dir, &["commit", "-q", "-m", "first"]);
}

/// lcrun with `args` run in `dir` (the cache stays outside it, so a run never
/// dirties the repository it keys on).
fn run_in(env: &Env, dir: &Path, args: &[&OsStr]) -> Output {
    env.lcrun()
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run lcrun")
}

/// `lcrun OPTIONS -- sh -c 'TALLY; BODY'` in `dir`, which must succeed; its stdout.
fn counted(env: &Env, dir: &Path, options: &[&OsStr], body: &str) -> String {
    let script = format!("{}; {body}", env.tally("run"));
    let mut args: Vec<&OsStr> = options.to_vec();
    args.extend([
        OsStr::new("--"),
        OsStr::new("sh"),
        OsStr::new("-c"),
        OsStr::new(&script),
    ]);
    let output = run_in(env, dir, &args);
    assert_code(&output, 0);
    stdout(&output)
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// Waits for `child` at most `limit`; kills it and fails the test on a hang.
fn finish_within(mut child: std::process::Child, limit: Duration, what: &str) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: lcrun still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

// Item 8: `-c git` and untracked symlinks and special files.

#[test]
fn git_untracked_symlink_to_a_directory_is_hashed_as_a_link() {
    let env = Env::new();
    let dir = env.path("repo");
    repo(&dir);
    fs::create_dir(dir.join("somedir")).unwrap();
    fs::write(dir.join("somedir/inner.txt"), "x").unwrap();
    symlink("somedir", dir.join("link")).unwrap();
    assert_eq!(counted(&env, &dir, &[os("-c"), os("git")], "echo ok"), "ok\n");
    assert_eq!(counted(&env, &dir, &[os("-c"), os("git")], "echo ok"), "ok\n");
    assert_eq!(env.count("run"), 1, "the second run is a hit");
}

#[test]
fn git_untracked_symlink_to_dev_zero_is_never_read() {
    let env = Env::new();
    let dir = env.path("repo");
    repo(&dir);
    symlink("/dev/zero", dir.join("zero")).unwrap();
    let child = env
        .lcrun()
        .current_dir(&dir)
        .args(["-c", "git", "--", "echo", "ok"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let output = finish_within(child, Duration::from_secs(30), "-c git with a link to /dev/zero");
    assert_code(&output, 0);
    assert_eq!(stdout(&output), "ok\n");
}

#[test]
fn git_repointed_untracked_symlink_is_a_miss_even_with_equal_contents() {
    let env = Env::new();
    let dir = env.path("repo");
    repo(&dir);
    fs::write(dir.join("a.txt"), "same\n").unwrap();
    fs::write(dir.join("b.txt"), "same\n").unwrap();
    symlink("a.txt", dir.join("current")).unwrap();
    let body = "readlink current";
    assert_eq!(counted(&env, &dir, &[os("-c"), os("git")], body), "a.txt\n");
    fs::remove_file(dir.join("current")).unwrap();
    symlink("b.txt", dir.join("current")).unwrap();
    assert_eq!(counted(&env, &dir, &[os("-c"), os("git")], body), "b.txt\n");
    assert_eq!(env.count("run"), 2);
}

// Item 9: literal paths that look like globs, non-UTF-8 paths, errors.

#[test]
fn hash_of_an_existing_path_with_glob_characters_is_literal() {
    let env = Env::new();
    let dir = env.dir.path();
    env.write("report[2024].csv", "1,2\n");
    // A file the glob `report[2024].csv` would match instead.
    env.write("report2.csv", "decoy\n");
    let opts = [os("-c"), os("hash:report[2024].csv")];
    assert_eq!(counted(&env, dir, &opts, "cat 'report[2024].csv'"), "1,2\n");
    env.write("report[2024].csv", "3,4\n");
    assert_eq!(counted(&env, dir, &opts, "cat 'report[2024].csv'"), "3,4\n");
    assert_eq!(env.count("run"), 2);
}

#[test]
fn hash_of_an_existing_path_that_is_a_bad_glob_is_literal() {
    let env = Env::new();
    let dir = env.dir.path();
    env.write("x[", "one\n");
    let opts = [os("-c"), os("hash:x[")];
    assert_eq!(counted(&env, dir, &opts, "cat 'x['"), "one\n");
    env.write("x[", "two\n");
    assert_eq!(counted(&env, dir, &opts, "cat 'x['"), "two\n");
    assert_eq!(env.count("run"), 2);
}

#[test]
fn hash_and_mtime_take_non_utf8_paths() {
    let env = Env::new();
    let dir = env.dir.path();
    let name = OsString::from_vec(b"caf\xe9.txt".to_vec());
    let file = dir.join(&name);
    fs::write(&file, "one\n").unwrap();
    for kind in ["hash:", "mtime:"] {
        let mut expr = OsString::from(kind);
        expr.push(&name);
        let before = env.count("run");
        counted(&env, dir, &[os("-c"), &expr], "true");
        counted(&env, dir, &[os("-c"), &expr], "true");
        assert_eq!(env.count("run"), before + 1, "{kind} a hit");
        fs::write(&file, format!("{kind} changed it\n")).unwrap();
        counted(&env, dir, &[os("-c"), &expr], "true");
        assert_eq!(env.count("run"), before + 2, "{kind} an edit is a miss");
    }
}

#[test]
fn hash_error_names_the_path_on_one_short_line() {
    let env = Env::new();
    let dir = env.dir.path();
    let secret = env.write("secret.txt", "s3cret\n");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o000)).unwrap();
    // Root reads any file: run lcrun as nobody then (needs setpriv, from
    // util-linux), from a copy in a directory nobody may enter, since the
    // build's own directory may be private to root.
    let mut cmd = if unsafe { libc::geteuid() } == 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
        let copy = env.path("lcrun");
        fs::copy(LCRUN, &copy).unwrap();
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(copy);
        cmd
    } else {
        Command::new(LCRUN)
    };
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("LCRUN_") {
            cmd.env_remove(&name);
        }
    }
    let output = cmd
        .current_dir(dir)
        .env("LCRUN_CACHE_DIR", env.path("cache"))
        .args(["-c", "hash:secret.txt", "--", "echo", "ran"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_code(&output, 125);
    assert_eq!(stderr(&output), "lcrun: hash:secret.txt: permission denied\n");
    assert_eq!(stdout(&output), "");
}

// Item 10: `hash:` and symlinks.

#[test]
fn hash_of_a_named_symlink_follows_it_to_its_contents() {
    let env = Env::new();
    let dir = env.dir.path();
    env.write("real.conf", "port=1\n");
    symlink("real.conf", env.path("app.conf")).unwrap();
    let opts = [os("-c"), os("hash:app.conf")];
    assert_eq!(counted(&env, dir, &opts, "cat app.conf"), "port=1\n");
    env.write("real.conf", "port=2\n");
    assert_eq!(counted(&env, dir, &opts, "cat app.conf"), "port=2\n");
    // Matched by a glob, the same.
    let opts = [os("-c"), os("hash:app.co?f")];
    assert_eq!(counted(&env, dir, &opts, "cat app.conf"), "port=2\n");
    env.write("real.conf", "port=3\n");
    assert_eq!(counted(&env, dir, &opts, "cat app.conf"), "port=3\n");
}

#[test]
fn hash_of_a_directory_counts_its_links_by_target_and_by_file_contents() {
    let env = Env::new();
    let dir = env.dir.path();
    env.write("conf/base.txt", "base\n");
    env.write("outside/a.txt", "a\n");
    env.write("outside/b.txt", "a\n");
    symlink("../outside/a.txt", env.path("conf/link")).unwrap();
    // Loops and links to directories end: they are hashed as links.
    symlink(".", env.path("conf/self")).unwrap();
    symlink("loop2", env.path("conf/loop1")).unwrap();
    symlink("loop1", env.path("conf/loop2")).unwrap();
    let opts = [os("-c"), os("hash:conf")];
    assert_eq!(counted(&env, dir, &opts, "cat conf/link"), "a\n");
    assert_eq!(counted(&env, dir, &opts, "cat conf/link"), "a\n");
    assert_eq!(env.count("run"), 1);
    // The file a link leads to is edited.
    env.write("outside/a.txt", "edited\n");
    assert_eq!(counted(&env, dir, &opts, "cat conf/link"), "edited\n");
    // The link is re-pointed at a file of the same contents.
    env.write("outside/b.txt", "edited\n");
    fs::remove_file(env.path("conf/link")).unwrap();
    symlink("../outside/b.txt", env.path("conf/link")).unwrap();
    assert_eq!(
        counted(&env, dir, &opts, "readlink conf/link"),
        "../outside/b.txt\n"
    );
    assert_eq!(env.count("run"), 3);
}

#[test]
fn hash_never_reads_special_files() {
    let env = Env::new();
    let dir = env.dir.path();
    fs::create_dir(env.path("d")).unwrap();
    let status = Command::new("mkfifo").arg(env.path("d/fifo")).status().unwrap();
    assert!(status.success());
    symlink("/dev/zero", env.path("d/zero")).unwrap();
    for expr in ["hash:d", "hash:d/fifo", "hash:/dev/zero", "hash:d/zero"] {
        let child = env
            .lcrun()
            .current_dir(dir)
            .args(["-c", expr, "--", "echo", "ok"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let output = finish_within(child, Duration::from_secs(30), expr);
        assert_code(&output, 0);
        assert_eq!(stdout(&output), "ok\n", "{expr}");
    }
}

// Item 11: submodules.

/// A repository `top` with `sub` as a submodule, itself with `leaf` as a
/// submodule; returns the paths of the checked-out `sub` and `leaf`.
fn repo_with_submodules(env: &Env) -> (PathBuf, PathBuf, PathBuf) {
    let leaf_origin = env.path("origin/leaf");
    repo(&leaf_origin);
    let sub_origin = env.path("origin/sub");
    repo(&sub_origin);
    git(
        &sub_origin,
        &["submodule", "add", "-q", leaf_origin.to_str().unwrap(), "leaf"],
    );
    git(&sub_origin, &["commit", "-q", "-m", "leaf"]);
    let top = env.path("top");
    repo(&top);
    git(
        &top,
        &["submodule", "add", "-q", sub_origin.to_str().unwrap(), "sub"],
    );
    git(&top, &["submodule", "update", "-q", "--init", "--recursive"]);
    git(&top, &["commit", "-q", "-m", "sub"]);
    let sub = top.join("sub");
    let leaf = sub.join("leaf");
    (top, sub, leaf)
}

#[test]
fn git_counts_changes_inside_submodules_recursively() {
    let env = Env::new();
    let (top, sub, leaf) = repo_with_submodules(&env);
    let opts = [os("-c"), os("git")];
    let body = "cat sub/tracked.txt sub/leaf/tracked.txt; ls sub sub/leaf | wc -l";
    counted(&env, &top, &opts, body);
    counted(&env, &top, &opts, body);
    assert_eq!(env.count("run"), 1, "a clean tree hits");
    let mut expected = 1;
    let mut step = |what: &str, change: &dyn Fn()| {
        change();
        counted(&env, &top, &opts, body);
        expected += 1;
        assert_eq!(env.count("run"), expected, "{what} is a miss");
    };
    step("a first edit in the submodule", &|| {
        fs::write(sub.join("tracked.txt"), "edit 1\n").unwrap()
    });
    step("a second edit in the submodule", &|| {
        fs::write(sub.join("tracked.txt"), "edit 2\n").unwrap()
    });
    step("a new untracked file in the submodule", &|| {
        fs::write(sub.join("new.txt"), "new\n").unwrap()
    });
    step("an edit to that untracked file", &|| {
        fs::write(sub.join("new.txt"), "newer\n").unwrap()
    });
    step("a first edit in the nested submodule", &|| {
        fs::write(leaf.join("tracked.txt"), "leaf 1\n").unwrap()
    });
    step("a second edit in the nested submodule", &|| {
        fs::write(leaf.join("tracked.txt"), "leaf 2\n").unwrap()
    });
    step("an untracked file in the nested submodule", &|| {
        fs::write(leaf.join("new.txt"), "new\n").unwrap()
    });
    step("a commit in the submodule", &|| {
        git(&sub, &["add", "-A", "."]);
        git(&sub, &["commit", "-q", "-m", "in sub"]);
    });
}

// Item 12: the script an interpreter runs is part of the program.

/// Writes `contents` to `path` keeping its previous mtime, as an edit within
/// one timestamp tick (or a `cp -p`, `rsync -a`, `tar x`) would.
fn rewrite_same_mtime(path: &Path, contents: &str) {
    let before = fs::metadata(path).unwrap().modified().unwrap();
    fs::write(path, contents).unwrap();
    let file = fs::File::options().write(true).open(path).unwrap();
    file.set_modified(before).unwrap();
}

#[test]
fn python_script_edit_is_a_miss() {
    let env = Env::new();
    let dir = env.dir.path();
    let script = env.write("tiny.py", "print('one')\n");
    let run = || {
        let output = run_in(&env, dir, &[os("--"), os("python3"), os("tiny.py")]);
        assert_code(&output, 0);
        stdout(&output)
    };
    assert_eq!(run(), "one\n");
    fs::write(&script, "print('two')\n").unwrap();
    assert_eq!(run(), "two\n");
    // Same size, same mtime: only the contents tell.
    rewrite_same_mtime(&script, "print('six')\n");
    assert_eq!(run(), "six\n");
}

#[test]
fn shell_script_after_options_is_part_of_the_program() {
    let env = Env::new();
    let dir = env.dir.path();
    let script = env.write("job.sh", "echo one\n");
    for options in [&["-e"][..], &["-e", "-o", "nounset"][..], &["--"][..], &[][..]] {
        let mut args = vec![os("--"), os("sh")];
        args.extend(options.iter().map(|o| os(o)));
        args.push(os("job.sh"));
        fs::write(&script, "echo one\n").unwrap();
        let output = run_in(&env, dir, &args);
        assert_eq!(stdout(&output), "one\n", "{options:?}");
        rewrite_same_mtime(&script, "echo two\n");
        let output = run_in(&env, dir, &args);
        assert_eq!(stdout(&output), "two\n", "{options:?}");
    }
    // A versioned interpreter name counts too.
    let versioned = env.path("bin/python3.99");
    fs::create_dir_all(versioned.parent().unwrap()).unwrap();
    symlink("/bin/sh", &versioned).unwrap();
    let args = [os("--"), versioned.as_os_str(), os("job.sh")];
    fs::write(&script, "echo three\n").unwrap();
    assert_eq!(stdout(&run_in(&env, dir, &args)), "three\n");
    rewrite_same_mtime(&script, "echo four!\n");
    assert_eq!(stdout(&run_in(&env, dir, &args)), "four!\n");
}

#[test]
fn option_values_are_not_taken_for_scripts() {
    let env = Env::new();
    // `sh -c STRING NAME`: NAME is $0, not a script; `python3 -c`, the same.
    env.write("name", "one\n");
    let count = env.path("opt.count");
    let python = format!("open(\"{}\", 'a').write('x\\n')", count.display());
    let cases: [&[&str]; 2] = [
        &["sh", "-c", &env.tally("opt"), "name"],
        &["python3", "-c", &python, "name"],
    ];
    for case in cases {
        let args: Vec<String> = case.iter().map(|a| a.to_string()).collect();
        let before = env.count("opt");
        let mut all = vec!["--".to_owned()];
        all.extend(args);
        assert_code(&env.run(&all), 0);
        env.write("name", format!("{before} changed\n"));
        assert_code(&env.run(&all), 0);
        assert_eq!(
            env.count("opt"),
            before + 1,
            "{case:?}: editing 'name' is still a hit"
        );
    }
}

// Item 3: secrets are not recoverable from the cache files.

/// Every file under `dir`, recursively, with its bytes.
fn all_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            found.extend(all_files(&path));
        } else if meta.is_file() {
            found.push((path.clone(), fs::read(&path).unwrap()));
        }
    }
    found
}

/// Fails if any file in the cache holds `needle`'s SHA-256, as hex or raw bytes.
#[track_caller]
fn assert_digest_absent(cache: &Path, needle: &[u8], what: &str) {
    let digest = Sha256::digest(needle);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let files = all_files(cache);
    assert!(!files.is_empty());
    for (path, bytes) in files {
        let contains = |pat: &[u8]| bytes.windows(pat.len()).any(|w| w == pat);
        assert!(!contains(&digest), "{what}: raw digest in {}", path.display());
        assert!(
            !contains(hex.as_bytes()),
            "{what}: hex digest in {}",
            path.display()
        );
        assert!(
            !contains(hex.to_uppercase().as_bytes()),
            "{what}: HEX digest in {}",
            path.display()
        );
    }
}

#[test]
fn a_secret_in_the_key_is_not_in_the_cache_even_as_a_digest() {
    let env = Env::new();
    let pin = "482913";
    let output = env
        .lcrun()
        .env("PIN", pin)
        .args(["-c", "env:PIN", "--", "echo", "ok"])
        .output()
        .unwrap();
    assert_code(&output, 0);
    // A hit, so the hit log has its say too.
    let output = env
        .lcrun()
        .env("PIN", pin)
        .args(["-c", "env:PIN", "--", "echo", "ok"])
        .output()
        .unwrap();
    assert_code(&output, 0);
    // stdin, the same.
    let mut child = env
        .lcrun()
        .args(["-c", "stdin", "--", "tr", "0-9", "a-j"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(pin.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert_code(&output, 0);
    // Not `cat`: an output is stored, named by its own digest, and the
    // digest of an output equal to the secret would be the secret's.
    assert_eq!(stdout(&output), "eicjbd");
    for encoding in [pin.to_owned(), format!("set:{pin}"), format!("{pin}\n")] {
        assert_digest_absent(&env.cache, encoding.as_bytes(), &encoding);
    }
    // The per-cache secret that keys the stored digests is the user's alone.
    let secret = fs::symlink_metadata(env.cache.join("secret")).unwrap();
    assert!(secret.is_file());
    assert_eq!(secret.permissions().mode() & 0o777, 0o600);
}

#[test]
fn the_key_is_the_same_in_every_cache() {
    // The remote tier names entries by key: the per-cache secret must not
    // reach it.
    let env = Env::new();
    let key_of = |cache: &str| {
        let mut child = env
            .lcrun()
            .env("PIN", "1234")
            .env("LCRUN_CACHE_DIR", env.path(cache))
            .args(["-c", "env:PIN", "-c", "stdin", "--", "cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(b"in").unwrap();
        assert_code(&child.wait_with_output().unwrap(), 0);
        let db = rusqlite::Connection::open(env.path(cache).join("cache.db")).unwrap();
        db.query_row("SELECT key FROM entries WHERE key IS NOT NULL", [], |row| {
            row.get::<_, String>(0)
        })
        .unwrap()
    };
    assert_eq!(key_of("one"), key_of("two"));
}

/// The secret keys only the digests of secret inputs: a miss without any
/// neither creates nor reads it (a create and an fsync in a new cache).
#[test]
fn a_miss_without_secret_inputs_leaves_the_secret_alone() {
    let env = Env::new();
    env.write("f", "x");
    assert_code(&env.run(["-c", "hash:f", "--", "true"]), 0);
    assert!(!env.cache.join("secret").exists(), "a secret for no secret input");
    assert_code(&env.run(["-c", "env:PIN", "--", "true"]), 0);
    assert!(env.cache.join("secret").is_file(), "none for a secret input");
}

#[test]
fn a_refused_secret_withholds_the_digests_and_the_command_runs() {
    let env = Env::new();
    // A `secret` that is a link (anyone who could plant it could read it).
    fs::create_dir(&env.cache).unwrap();
    fs::set_permissions(&env.cache, fs::Permissions::from_mode(0o700)).unwrap();
    let planted = env.write("planted", [7u8; 32]);
    symlink(&planted, env.cache.join("secret")).unwrap();
    let pin = "7391";
    let script = format!("{}; echo ran", env.tally("run"));
    for round in 0..2 {
        let output = env
            .lcrun()
            .env("PIN", pin)
            .args(["-c", "env:PIN", "--", "sh", "-c", &script])
            .output()
            .unwrap();
        assert_code(&output, 0);
        assert_eq!(stdout(&output), "ran\n");
        // The miss says once why the digests are withheld; the hit nothing.
        let said = stderr(&output);
        let expected = if round == 0 { 1 } else { 0 };
        assert_eq!(
            said.lines().filter(|l| l.contains("secret")).count(),
            expected,
            "{said}"
        );
    }
    assert_eq!(env.count("run"), 1, "stored, then a hit");
    for encoding in [pin.to_owned(), format!("set:{pin}")] {
        assert_digest_absent(&env.cache, encoding.as_bytes(), &encoding);
    }
}

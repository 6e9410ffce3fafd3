//! Output files (`-o PATH`, SPEC §4): the examples/Makefile served from the
//! cache by the real `make`, and trees of files, directories and links
//! restored by `lcrun -o`.
//!
//! The capture and restore behind `-o` are unit-tested in
//! `src/outputs/tests.rs`; these are the behaviours of the run. Needs `make`.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime};

use crate::util::{assert_code, code, path_with_lcrun, stderr, Env, LCRUN};

/// The targets of examples/Makefile.
const TARGETS: &[&str] = &["upper.txt", "sorted.txt", "wordcount.txt", "hello", "site"];

/// A copy of examples/ in a scratch dir, with a `sh` first on `PATH` that
/// logs each command lcrun runs through it (every recipe's command does),
/// so a test can tell restored targets from rebuilt ones.
struct Project {
    env: Env,
    dir: PathBuf,
}

impl Project {
    fn new() -> Project {
        let env = Env::new();
        let dir = env.path("project");
        fs::create_dir(&dir).unwrap();
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        for entry in fs::read_dir(examples).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name();
            let built = TARGETS.iter().any(|t| name.as_bytes() == t.as_bytes());
            if entry.file_type().unwrap().is_file() && !built {
                fs::copy(entry.path(), dir.join(&name)).unwrap();
            }
        }
        let log = env.path("runs.log");
        env.script(
            "bin/sh",
            &format!(
                "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\nexec /bin/sh \"$@\"\n",
                log.display()
            ),
        );
        Project { env, dir }
    }

    /// `make -C project ARGS` with LCRUN set to the binary under test.
    fn make(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("make");
        cmd.arg("-C").arg(&self.dir).args(args).stdin(Stdio::null());
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("LCRUN_") || name == "MAKEFLAGS" || name == "MFLAGS" {
                cmd.env_remove(&name);
            }
        }
        cmd.env("LCRUN", LCRUN)
            .env("LCRUN_CACHE_DIR", &self.env.cache)
            .env(
                "PATH",
                format!("{}:{}", self.env.path("bin").display(), path_with_lcrun()),
            );
        cmd.output().expect("run make (is it installed?)")
    }

    /// The commands the recipes ran, one line each.
    fn runs(&self) -> Vec<String> {
        fs::read_to_string(self.env.path("runs.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Every target's files: kind, bytes or link target, and mode.
    fn targets(&self) -> BTreeMap<PathBuf, (char, Vec<u8>, u32)> {
        let mut all = BTreeMap::new();
        for target in TARGETS {
            all.extend(tree(&self.dir, Path::new(target)));
        }
        all
    }

    /// Sets the mtime of every file and directory in the project to
    /// `seconds` ago, so a later touch is newer on any clock granularity.
    fn backdate(&self, seconds: u64) {
        let then = SystemTime::now() - Duration::from_secs(seconds);
        for entry in walkdir::WalkDir::new(&self.dir) {
            let entry = entry.unwrap();
            if !entry.path_is_symlink() {
                fs::File::open(entry.path()).unwrap().set_modified(then).unwrap();
            }
        }
    }
}

/// `rel` under `root` and everything in it: kind, bytes or link target, mode.
fn tree(root: &Path, rel: &Path) -> BTreeMap<PathBuf, (char, Vec<u8>, u32)> {
    let mut out = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root.join(rel)).sort_by_file_name() {
        let entry = entry.unwrap();
        let meta = entry.path().symlink_metadata().unwrap();
        let key = entry.path().strip_prefix(root).unwrap().to_owned();
        let value = if meta.file_type().is_symlink() {
            (
                'l',
                fs::read_link(entry.path())
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec(),
                0,
            )
        } else if meta.is_dir() {
            ('d', Vec::new(), meta.mode() & 0o7777)
        } else {
            ('f', fs::read(entry.path()).unwrap(), meta.mode() & 0o7777)
        };
        out.insert(key, value);
    }
    out
}

#[track_caller]
fn assert_made(output: &Output) {
    assert!(
        output.status.success(),
        "make failed\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn make_clean_then_make_restores_every_target_without_running_a_recipe() {
    let project = Project::new();
    assert_made(&project.make(&["-j4"]));
    assert_eq!(project.runs().len(), TARGETS.len(), "{:?}", project.runs());
    let built = project.targets();
    assert!(built.contains_key(Path::new("site/assets/img")), "{built:?}");
    assert_eq!(built[Path::new("hello")].2 & 0o111, 0o111, "hello is executable");

    assert_made(&project.make(&["clean"]));
    assert!(!project.dir.join("site").exists());
    assert_made(&project.make(&["-j4"]));
    assert_eq!(
        project.runs().len(),
        TARGETS.len(),
        "no recipe ran again: {:?}",
        project.runs()
    );
    assert_eq!(
        project.targets(),
        built,
        "restored byte for byte, with modes and links"
    );

    // Restored targets are newer than their sources: nothing left to do.
    let question = project.make(&["-q"]);
    assert_eq!(
        code(&question),
        0,
        "make -q: {}",
        String::from_utf8_lossy(&question.stdout)
    );
}

#[test]
fn touching_a_source_is_a_hit_and_changing_one_rebuilds_one_target() {
    let project = Project::new();
    assert_made(&project.make(&["-j4"]));
    let built = project.targets();
    let before = project.runs().len();

    // Same bytes, newer mtime: make runs the recipes, lcrun restores.
    project.backdate(60);
    fs::File::open(project.dir.join("words.txt"))
        .unwrap()
        .set_modified(SystemTime::now())
        .unwrap();
    let remade = project.make(&["-j4"]);
    assert_made(&remade);
    assert!(
        String::from_utf8_lossy(&remade.stdout).contains("-o upper.txt"),
        "make ran the recipe: {}",
        String::from_utf8_lossy(&remade.stdout)
    );
    assert_eq!(project.runs().len(), before, "a hit: {:?}", project.runs());
    assert_eq!(project.targets(), built);
    assert_eq!(code(&project.make(&["-q"])), 0);

    // Other bytes in one source: its one target is rebuilt.
    fs::write(project.dir.join("names.txt"), "dave\ncarol\n").unwrap();
    assert_made(&project.make(&["-j4"]));
    let runs = project.runs();
    assert_eq!(runs.len(), before + 1, "{runs:?}");
    assert!(runs[before].contains("sorted.txt"), "{runs:?}");
    assert_eq!(
        fs::read_to_string(project.dir.join("sorted.txt")).unwrap(),
        "carol\ndave\n"
    );
}

#[test]
fn a_directory_with_nested_files_an_empty_dir_an_executable_and_a_link_round_trips() {
    let env = Env::new();
    let script = format!(
        "{}; mkdir -p out/a/b out/empty && printf 'deep\\n' > out/a/b/f.txt \
         && printf '#!/bin/sh\\necho hi\\n' > out/run && chmod +x out/run && ln -s a/b/f.txt out/link",
        env.tally("gen")
    );
    let args = ["-o", "out", "--", "sh", "-c", script.as_str()];
    assert_code(&env.run(args), 0);
    let made = tree(env.dir.path(), Path::new("out"));
    assert_eq!(made.len(), 7, "{made:?}");

    fs::remove_dir_all(env.path("out")).unwrap();
    assert_code(&env.run(args), 0);
    assert_eq!(env.count("gen"), 1, "restored, not run");
    assert_eq!(tree(env.dir.path(), Path::new("out")), made);
}

#[test]
fn a_declared_output_the_command_did_not_create_warns_and_stores_nothing() {
    let env = Env::new();
    let script = format!("{}; echo made > made.txt", env.tally("gen"));
    let args = [
        "-o",
        "made.txt",
        "-o",
        "never.txt",
        "--",
        "sh",
        "-c",
        script.as_str(),
    ];
    let first = env.run(args);
    assert_code(&first, 0);
    let warnings: Vec<&str> = std::str::from_utf8(&first.stderr)
        .unwrap()
        .lines()
        .filter(|line| line.contains("never.txt"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning naming it: {}", stderr(&first));
    assert!(warnings[0].starts_with("lcrun: "), "{}", warnings[0]);

    assert_code(&env.run(args), 0);
    assert_eq!(env.count("gen"), 2, "nothing was stored, so it ran again");
}

#[test]
fn a_symlink_planted_at_a_parent_is_refused_on_restore() {
    let env = Env::new();
    let script = format!("{}; mkdir -p build && echo x > build/out.txt", env.tally("gen"));
    let args = ["-o", "build/out.txt", "--", "sh", "-c", script.as_str()];
    assert_code(&env.run(args), 0);

    fs::remove_dir_all(env.path("build")).unwrap();
    fs::create_dir(env.path("elsewhere")).unwrap();
    symlink(env.path("elsewhere"), env.path("build")).unwrap();
    let planted = env.run(args);
    assert_code(&planted, 125);
    let err = stderr(&planted);
    assert!(err.contains("build") && err.contains("refusing"), "{err}");
    assert_eq!(env.count("gen"), 1, "not run through the link either");
    assert_eq!(
        fs::read_dir(env.path("elsewhere")).unwrap().count(),
        0,
        "nothing written through it"
    );
}

#[test]
fn an_output_outside_the_working_directory_must_be_given_absolute() {
    let env = Env::new();
    let refused = env.run(["-o", "../x", "--", "sh", "-c", &env.tally("gen")]);
    assert_code(&refused, 125);
    assert!(
        stderr(&refused).contains("give it as an absolute path"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(env.count("gen"), 0);

    // The absolute form is accepted and restored.
    let target = env.path("abs.txt");
    let script = format!("{}; echo abs > '{}'", env.tally("gen"), target.display());
    let args = ["-o", target.to_str().unwrap(), "--", "sh", "-c", script.as_str()];
    assert_code(&env.run(args), 0);
    fs::remove_file(&target).unwrap();
    assert_code(&env.run(args), 0);
    assert_eq!(env.count("gen"), 1);
    assert_eq!(fs::read_to_string(&target).unwrap(), "abs\n");
}

/// Permission bits come back as the command left them, past the umask: a
/// key made private stays private, a group-only tool stays group-only,
/// also when the file is already there with the same bytes.
#[test]
fn permission_bits_are_restored_exactly() {
    let env = Env::new();
    let script = format!(
        "{}; umask 022; mkdir -p out; echo secret > out/key; chmod 600 out/key; \
         echo tool > out/tool; chmod 750 out/tool; echo open > out/shared; chmod 664 out/shared",
        env.tally("gen")
    );
    let args = ["-o", "out", "--", "sh", "-c", &script];
    assert_code(&env.run(args), 0);
    let modes = || -> Vec<u32> {
        ["key", "tool", "shared"]
            .iter()
            .map(|f| fs::metadata(env.path(&format!("out/{f}"))).unwrap().mode() & 0o7777)
            .collect()
    };
    let expected = vec![0o600, 0o750, 0o664];
    assert_eq!(modes(), expected);
    // Restored afresh, under the run's umask of 022.
    fs::remove_dir_all(env.path("out")).unwrap();
    assert_code(&env.run(args), 0);
    assert_eq!(env.count("gen"), 1, "restored, not run");
    assert_eq!(modes(), expected, "modes after a restore");
    // The same bytes already there, with other modes: only the modes change.
    for f in ["key", "tool", "shared"] {
        fs::set_permissions(env.path(&format!("out/{f}")), fs::Permissions::from_mode(0o644)).unwrap();
    }
    assert_code(&env.run(args), 0);
    assert_eq!(env.count("gen"), 1);
    assert_eq!(modes(), expected, "modes after touching files already there");
}

/// A sparse output (a disk image, a database file) is restored sparse: its
/// runs of zeros are holes again, not gigabytes written to the disk.
#[test]
fn a_sparse_output_is_restored_sparse() {
    let env = Env::new();
    let script = format!(
        "{}; head -c 1048576 /dev/urandom > img; truncate -s 256M img; \
         printf tail >> img",
        env.tally("gen")
    );
    let args = ["-o", "img", "--", "sh", "-c", &script];
    assert_code(&env.run(args), 0);
    let made = fs::read(env.path("img")).unwrap();
    fs::remove_file(env.path("img")).unwrap();
    assert_code(&env.run(args), 0);
    assert_eq!(env.count("gen"), 1, "restored, not run");
    let meta = fs::metadata(env.path("img")).unwrap();
    assert_eq!(meta.len(), (256 << 20) + 4);
    let allocated = meta.blocks() * 512;
    assert!(
        allocated < 16 << 20,
        "{allocated} bytes allocated for 1 MiB of data"
    );
    assert!(fs::read(env.path("img")).unwrap() == made, "other bytes");
}

/// A restore onto a name that is a hard link of another file, with the
/// same bytes, leaves the other file alone: its mode and time are not the
/// output's to set.
#[test]
fn a_hit_onto_a_hard_link_leaves_the_other_name_alone() {
    let env = Env::new();
    env.write("src.txt", "key material\n");
    let script = format!("{}; cp src.txt out.bin; chmod 644 out.bin", env.tally("gen"));
    let args = ["-o", "out.bin", "--", "sh", "-c", &script];
    assert_code(&env.run(args), 0);
    fs::remove_file(env.path("out.bin")).unwrap();
    let other = env.path("other");
    fs::copy(env.path("src.txt"), &other).unwrap();
    fs::set_permissions(&other, fs::Permissions::from_mode(0o600)).unwrap();
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_577_836_800);
    fs::File::options()
        .write(true)
        .open(&other)
        .unwrap()
        .set_modified(old)
        .unwrap();
    fs::hard_link(&other, env.path("out.bin")).unwrap();
    assert_code(&env.run(args), 0);
    assert_eq!(env.count("gen"), 1, "restored, not run");
    let meta = fs::metadata(&other).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600, "the other name's mode changed");
    assert_eq!(meta.modified().unwrap(), old, "the other name's mtime changed");
    assert_eq!(fs::read(env.path("out.bin")).unwrap(), b"key material\n");
    assert_eq!(fs::metadata(env.path("out.bin")).unwrap().mode() & 0o777, 0o644);
}

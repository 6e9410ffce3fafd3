//! Runs the real `lcrun` binary in a fresh temporary directory with its own
//! cache, and counts invocations of the wrapped command to prove hits.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The binary under test.
pub const LCRUN: &str = env!("CARGO_BIN_EXE_lcrun");

/// `PATH` with the directory of the binary under test first, since scripts
/// under test call `lcrun progress`.
pub fn path_with_lcrun() -> String {
    let bin_dir = Path::new(LCRUN).parent().expect("bin dir");
    format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// A scratch directory with its own cache, removed at the end of the test.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub cache: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("lcrun-test-")
            .tempdir()
            .expect("temp dir");
        let cache = dir.path().join("cache");
        Env { dir, cache }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `lcrun` in the scratch dir, its cache there, none of the user's LCRUN_*
    /// settings, stdin closed.
    pub fn lcrun(&self) -> Command {
        let mut cmd = Command::new(LCRUN);
        cmd.current_dir(self.dir.path()).stdin(Stdio::null());
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("LCRUN_") {
                cmd.env_remove(&name);
            }
        }
        cmd.env("LCRUN_CACHE_DIR", &self.cache);
        cmd.env("PATH", path_with_lcrun());
        cmd
    }

    /// Runs `lcrun ARGS` to completion.
    pub fn run<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.lcrun().args(args).output().expect("run lcrun")
    }

    /// Starts `lcrun ARGS` in the background with stdout and stderr piped,
    /// for tests of concurrent runs; finish it with `wait_with_output`.
    pub fn start<I, S>(&self, args: I) -> std::process::Child
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.lcrun()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start lcrun")
    }

    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("mkdir");
        }
        fs::write(&path, contents).expect("write");
        path
    }

    /// Writes an executable script.
    pub fn script(&self, rel: &str, body: &str) -> PathBuf {
        let path = self.write(rel, body);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    /// A shell snippet that records one invocation under `name`; pair with
    /// [`Env::count`].
    pub fn tally(&self, name: &str) -> String {
        format!("echo x >> '{}'", self.path(&format!("{name}.count")).display())
    }

    /// How many times the snippet from [`Env::tally`] ran.
    pub fn count(&self, name: &str) -> usize {
        fs::read_to_string(self.path(&format!("{name}.count"))).map_or(0, |s| s.lines().count())
    }

    /// The cache database file.
    pub fn db(&self) -> PathBuf {
        self.cache.join("cache.db")
    }

    /// The pack files of large blobs (`blobs/*.pack`), sorted.
    pub fn blob_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(self.cache.join("blobs"))
            .map(|dir| dir.map(|e| e.expect("blobs dir entry").path()).collect())
            .unwrap_or_default();
        files.sort();
        files
    }
}

/// Exit code of a finished lcrun.
pub fn code(output: &Output) -> i32 {
    output
        .status
        .code()
        .unwrap_or_else(|| panic!("lcrun died by a signal: {output:?}"))
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts a status, showing lcrun's stderr when it differs.
#[track_caller]
pub fn assert_code(output: &Output, expected: i32) {
    assert_eq!(
        code(output),
        expected,
        "stdout: {}\nstderr: {}",
        stdout(output),
        stderr(output)
    );
}

/// Whether a process still exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Reads pids a test script wrote, one per line.
pub fn pids(path: &Path) -> Vec<i32> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Runs git in `dir` with a fixed identity and no user or system config.
pub fn git(dir: &Path, args: &[&str]) {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=lcrun test",
            "-c",
            "user.email=test@lcrun.invalid",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "protocol.file.allow=always",
        ])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stdin(Stdio::null())
        .output()
        .expect("run git");
    assert!(
        output.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Bytes no codec shrinks (xorshift), the same for a seed on every run, so
/// their blobs go to pack files.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

//! The cache key: what identifies a run. An invocation (argv or shell string,
//! the program's identity, cwd, scope, cache-by values) is encoded field by
//! field, each field hashed, and the key is SHA-256 over the versioned list of
//! labelled field digests, so no two different inputs share an encoding.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// Bumped whenever the encoding changes, so old entries become misses instead
/// of being confused with new ones.
const KEY_VERSION: &[u8] = b"lcrun-key-v1";

/// A `-c/--cache-by` expression (Dash's `cache_by`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheBy {
    /// Modification time and size of a path.
    Mtime(PathBuf),
    /// Contents of every file matching a path or glob; directories recurse.
    Hash(String),
    /// HEAD of a git repository plus its uncommitted changes.
    Git(Option<PathBuf>),
    /// The value of an environment variable (only ever stored hashed).
    Env(String),
    /// The stdout (and exit status) of a shell command.
    Cmd(String),
    /// A literal string.
    Value(String),
    /// lcrun's stdin, which is then fed to the command.
    Stdin,
}

/// Why a cache-by expression could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The expression does not parse.
    #[error("bad cache-by expression '{expr}': {reason}")]
    Malformed {
        /// The expression as given.
        expr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The expression parsed but could not be evaluated.
    #[error("cache-by '{expr}': {reason}")]
    Eval {
        /// The expression as given.
        expr: String,
        /// What went wrong.
        reason: String,
    },
    /// `--timeout` expired while the expression was being evaluated.
    #[error("cache-by '{expr}' was still running when the time limit expired")]
    TimedOut {
        /// The expression as given.
        expr: String,
    },
    /// `--ignore-arg` named an argument that cannot be ignored.
    #[error("--ignore-arg {index}: {reason}")]
    IgnoreArg {
        /// The index given.
        index: usize,
        /// Why it is refused.
        reason: String,
    },
}

const KINDS: &str = "mtime:PATH, hash:PATH_OR_GLOB, git, git:DIR, env:NAME, cmd:COMMAND, value:STRING, stdin";

impl FromStr for CacheBy {
    type Err = KeyError;

    fn from_str(expr: &str) -> Result<CacheBy, KeyError> {
        let malformed = |reason: &str| KeyError::Malformed {
            expr: expr.to_owned(),
            reason: reason.to_owned(),
        };
        let (kind, arg) = match expr.split_once(':') {
            Some((kind, arg)) => (kind, Some(arg)),
            None => (expr, None),
        };
        let required = |arg: Option<&str>, what: &str| match arg {
            Some(a) if !a.is_empty() => Ok(a.to_owned()),
            _ => Err(malformed(&format!("'{kind}:' needs {what}"))),
        };
        match kind {
            "mtime" => Ok(CacheBy::Mtime(required(arg, "a path")?.into())),
            "hash" => {
                let pattern = required(arg, "a path or glob")?;
                glob::Pattern::new(&pattern).map_err(|err| malformed(&format!("bad glob: {err}")))?;
                Ok(CacheBy::Hash(pattern))
            }
            "git" => match arg {
                None => Ok(CacheBy::Git(None)),
                Some(dir) => Ok(CacheBy::Git(Some(required(Some(dir), "a directory")?.into()))),
            },
            "env" => {
                let name = required(arg, "a variable name")?;
                if name.contains('=') || name.contains('\0') {
                    return Err(malformed("a variable name cannot contain '=' or NUL"));
                }
                Ok(CacheBy::Env(name))
            }
            "cmd" => Ok(CacheBy::Cmd(required(arg, "a shell command")?)),
            "value" => match arg {
                Some(value) => Ok(CacheBy::Value(value.to_owned())),
                None => Err(malformed("'value' needs ':STRING'")),
            },
            "stdin" if arg.is_none() => Ok(CacheBy::Stdin),
            "stdin" => Err(malformed("'stdin' takes no argument")),
            _ => Err(malformed(&format!(
                "unknown kind '{kind}' (expected one of {KINDS})"
            ))),
        }
    }
}

/// One labelled input of the key, kept (as a digest only) with the entry so a
/// later miss can say which input changed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyInput {
    /// What the input is: `argv`, `program`, `cwd`, `cache-by hash:src`, ...
    pub label: String,
    /// Hex SHA-256 of the input's canonical bytes.
    pub digest: String,
}

/// A derived cache key with the inputs it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// Hex SHA-256; the name of the entry in every tier.
    pub hex: String,
    /// The labelled inputs, in key order.
    pub inputs: Vec<KeyInput>,
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex)
    }
}

/// Builds a key from labelled fields. Each field's bytes are hashed on their
/// own; the key hashes the version and each (length-prefixed label, digest)
/// pair, so labels and values can never run into each other.
#[derive(Default)]
pub struct KeyBuilder {
    inputs: Vec<KeyInput>,
    hasher: Sha256,
}

impl KeyBuilder {
    /// An empty builder for the current key version.
    pub fn new() -> KeyBuilder {
        let mut hasher = Sha256::new();
        hasher.update(KEY_VERSION);
        KeyBuilder {
            inputs: Vec::new(),
            hasher,
        }
    }

    /// Adds a field whose canonical bytes are `bytes`.
    pub fn field(&mut self, label: &str, bytes: &[u8]) {
        self.digest_field(label, Sha256::digest(bytes).into());
    }

    /// Adds a field whose canonical bytes were already hashed.
    pub fn digest_field(&mut self, label: &str, digest: [u8; 32]) {
        self.hasher.update((label.len() as u64).to_be_bytes());
        self.hasher.update(label.as_bytes());
        self.hasher.update(digest);
        self.inputs.push(KeyInput {
            label: label.to_owned(),
            digest: hex(&digest),
        });
    }

    /// The finished key.
    pub fn finish(self) -> Key {
        Key {
            hex: hex(&self.hasher.finalize()),
            inputs: self.inputs,
        }
    }
}

/// Appends a length-prefixed byte string: the canonical form of one item in a
/// list-valued field.
pub fn push_item(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    buf.extend_from_slice(bytes);
}

/// The canonical bytes of an argv with some positions left out. A left-out
/// argument keeps its position (a length no real argument can have), so
/// `cmd X b` and `cmd b` never collide.
pub fn encode_argv(argv: &[OsString], ignored: &[usize]) -> Vec<u8> {
    let mut buf = Vec::new();
    for (i, arg) in argv.iter().enumerate() {
        if ignored.contains(&i) {
            buf.extend_from_slice(&u64::MAX.to_be_bytes());
        } else {
            push_item(&mut buf, arg.as_bytes());
        }
    }
    buf
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    // Not `write!(out, "{b:02x}")`: a hit hexes three digests, and going
    // through the formatter was 22k of its 532k instructions (callgrind).
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// Where `argv[0]` resolves, as `execvp` would find it.
#[derive(Debug, PartialEq, Eq)]
pub enum Resolved {
    /// An executable file.
    Found(PathBuf),
    /// Something exists there but cannot be executed.
    NotExecutable(PathBuf),
    /// Nothing by that name.
    NotFound,
}

/// Resolves a program name: a name with a slash is a path from `cwd`, any
/// other name is looked up in `PATH`.
pub fn resolve_program(name: &OsStr, cwd: &Path) -> Resolved {
    if name.is_empty() {
        return Resolved::NotFound;
    }
    if name.as_bytes().contains(&b'/') {
        let path = cwd.join(name);
        return match fs::metadata(&path) {
            Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => Resolved::Found(path),
            Ok(_) => Resolved::NotExecutable(path),
            Err(_) => Resolved::NotFound,
        };
    }
    let search = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let mut not_executable = None;
    for dir in std::env::split_paths(&search) {
        let path = cwd.join(dir).join(name);
        if let Ok(meta) = fs::metadata(&path) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Resolved::Found(path);
            }
            not_executable.get_or_insert(path);
        }
    }
    not_executable.map_or(Resolved::NotFound, Resolved::NotExecutable)
}

/// The identity of the program that runs: its path, size and mtime, so an
/// edited script or an upgraded tool is a miss.
pub fn program_identity(path: &Path) -> Vec<u8> {
    let mut buf = Vec::new();
    push_item(&mut buf, path.as_os_str().as_bytes());
    buf.extend_from_slice(&stat_bytes(path));
    buf
}

/// Size and nanosecond mtime of a path, or a marker for a missing one.
fn stat_bytes(path: &Path) -> Vec<u8> {
    match fs::metadata(path) {
        Ok(meta) => {
            let mut buf = b"present".to_vec();
            buf.extend_from_slice(&meta.size().to_be_bytes());
            buf.extend_from_slice(&meta.mtime().to_be_bytes());
            buf.extend_from_slice(&meta.mtime_nsec().to_be_bytes());
            buf
        }
        Err(_) => b"missing".to_vec(),
    }
}

impl CacheBy {
    /// Computes the expression's value and adds it to `key`. `stdin_spool`
    /// receives lcrun's stdin when the expression is `stdin`. A `cmd:` still
    /// running at `deadline` is ended, with all it started.
    pub fn add_to(
        &self,
        expr: &str,
        key: &mut KeyBuilder,
        stdin_spool: &mut Option<File>,
        deadline: Option<std::time::Instant>,
    ) -> Result<(), KeyError> {
        let label = format!("cache-by {expr}");
        let eval = |reason: String| KeyError::Eval {
            expr: expr.to_owned(),
            reason,
        };
        match self {
            CacheBy::Mtime(path) => key.field(&label, &stat_bytes(path)),
            CacheBy::Hash(pattern) => {
                key.digest_field(&label, hash_paths(pattern).map_err(|e| eval(e.to_string()))?)
            }
            CacheBy::Git(dir) => {
                let dir = dir.clone().unwrap_or_else(|| PathBuf::from("."));
                key.digest_field(&label, git_state(&dir).map_err(eval)?)
            }
            CacheBy::Env(name) => match std::env::var_os(name) {
                Some(value) => {
                    let mut buf = b"set:".to_vec();
                    buf.extend_from_slice(value.as_bytes());
                    key.field(&label, &buf)
                }
                None => key.field(&label, b"unset"),
            },
            CacheBy::Cmd(command) => match command_output(command, deadline).map_err(eval)? {
                Some(digest) => key.digest_field(&label, digest),
                None => {
                    return Err(KeyError::TimedOut {
                        expr: expr.to_owned(),
                    })
                }
            },
            CacheBy::Value(value) => key.field(&label, value.as_bytes()),
            CacheBy::Stdin => {
                let Some((digest, file)) =
                    spool_stdin(deadline).map_err(|e| eval(format!("reading stdin: {e}")))?
                else {
                    return Err(KeyError::TimedOut {
                        expr: expr.to_owned(),
                    });
                };
                *stdin_spool = Some(file);
                key.digest_field(&label, digest)
            }
        }
        Ok(())
    }
}

/// Streams a reader into SHA-256.
fn hash_reader(mut reader: impl Read, hasher: &mut Sha256) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => hasher.update(&buf[..n]),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
}

/// `hash:PATH_OR_GLOB`: every matching file (directories recurse), in path
/// order, as (path, contents digest) pairs; symlinks count by their target
/// text. No match is a value too.
fn hash_paths(pattern: &str) -> io::Result<[u8; 32]> {
    let mut roots: Vec<PathBuf> = if pattern.contains(['*', '?', '[']) {
        glob::glob(pattern)
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?
            .collect::<Result<_, _>>()
            .map_err(io::Error::from)?
    } else if fs::symlink_metadata(pattern).is_ok() {
        vec![PathBuf::from(pattern)]
    } else {
        Vec::new()
    };
    roots.sort();
    let mut hasher = Sha256::new();
    for root in roots {
        for entry in walkdir::WalkDir::new(&root).sort_by_file_name() {
            let entry = entry.map_err(io::Error::other)?;
            let path = entry.path();
            let kind = entry.file_type();
            let mut item = Vec::new();
            push_item(&mut item, path.as_os_str().as_bytes());
            if kind.is_symlink() {
                item.extend_from_slice(b"link");
                push_item(&mut item, fs::read_link(path)?.as_os_str().as_bytes());
            } else if kind.is_file() {
                let mut file_hasher = Sha256::new();
                hash_reader(File::open(path)?, &mut file_hasher)?;
                item.extend_from_slice(b"file");
                item.extend_from_slice(&file_hasher.finalize());
            } else {
                continue;
            }
            hasher.update(&item);
        }
    }
    Ok(hasher.finalize().into())
}

/// Runs `git` in `dir`, streaming stdout into `hasher`; fails on a non-zero exit.
fn git_into(dir: &Path, args: &[&str], hasher: &mut Sha256) -> Result<(), String> {
    let mut child = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|err| format!("cannot run git: {err}"))?;
    let stdout = child.stdout.take().ok_or("git: no stdout")?;
    hash_reader(stdout, hasher).map_err(|err| format!("reading git output: {err}"))?;
    let status = child.wait().map_err(|err| err.to_string())?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("'git {}' failed in {}", args.join(" "), dir.display()))
    }
}

/// `git`/`git:DIR`: HEAD, the diff of the work tree and index against it, and
/// the contents of untracked files, so a dirty tree never hits a clean entry.
fn git_state(dir: &Path) -> Result<[u8; 32], String> {
    let mut probe = Sha256::new();
    git_into(dir, &["rev-parse", "--git-dir"], &mut probe)
        .map_err(|_| format!("{} is not in a git repository", dir.display()))?;
    let mut hasher = Sha256::new();
    let born = git_into(dir, &["rev-parse", "--verify", "-q", "HEAD"], &mut hasher).is_ok();
    let diff_base = if born { "HEAD" } else { "--cached" };
    hasher.update(b"\0diff\0");
    git_into(
        dir,
        &["diff", "--binary", "--no-ext-diff", "--no-textconv", diff_base],
        &mut hasher,
    )?;
    hasher.update(b"\0untracked\0");
    let mut list = Vec::new();
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["ls-files", "-z", "--others", "--exclude-standard"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|err| format!("cannot run git: {err}"))?;
    list.extend_from_slice(&output.stdout);
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let path = dir.join(OsStr::from_bytes(name));
        let mut item = Vec::new();
        push_item(&mut item, name);
        hasher.update(&item);
        if let Ok(file) = File::open(&path) {
            hash_reader(file, &mut hasher).map_err(|err| format!("{}: {err}", path.display()))?;
        }
    }
    Ok(hasher.finalize().into())
}

/// `cmd:SHELL_COMMAND`: its stdout and exit status. Its stderr goes to ours.
/// `None` when it was still running at `deadline`: it and everything it
/// started are killed, and nothing is hashed.
fn command_output(command: &str, deadline: Option<std::time::Instant>) -> Result<Option<[u8; 32]>, String> {
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|err| format!("cannot run /bin/sh: {err}"))?;
    let mut hasher = Sha256::new();
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if !readable_before(std::os::fd::AsRawFd::as_raw_fd(&stdout), deadline) {
            crate::tree::kill(child.id() as libc::pid_t);
            let _ = child.wait();
            return Ok(None);
        }
        match stdout.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err.to_string()),
        }
    }
    // The output is complete; a command that closed its stdout and runs on
    // is still bounded by the deadline.
    let status = loop {
        match child.try_wait().map_err(|err| err.to_string())? {
            Some(status) => break status,
            None if deadline.is_some_and(|d| std::time::Instant::now() >= d) => {
                crate::tree::kill(child.id() as libc::pid_t);
                let _ = child.wait();
                return Ok(None);
            }
            None if deadline.is_some() => std::thread::sleep(std::time::Duration::from_millis(5)),
            None => break child.wait().map_err(|err| err.to_string())?,
        }
    };
    hasher.update(b"\0status\0");
    hasher.update(format!("{status}").as_bytes());
    Ok(Some(hasher.finalize().into()))
}

/// Waits until `fd` has data or its end to read, no later than `deadline`;
/// false when the deadline came first. Without a deadline, true at once.
fn readable_before(fd: std::os::fd::RawFd, deadline: Option<std::time::Instant>) -> bool {
    let Some(deadline) = deadline else {
        return true;
    };
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: poll on one pollfd, for at most `ms`.
        match unsafe { libc::poll(&mut poll, 1, ms) } {
            0 => return false,
            -1 if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => continue,
            // Readable, at its end, or an error the read will report.
            _ => return true,
        }
    }
}

/// `stdin`: hashes lcrun's stdin while spooling it to an unlinked temporary
/// file that becomes the command's stdin, so any size fits in bounded memory.
fn spool_stdin(deadline: Option<std::time::Instant>) -> io::Result<Option<([u8; 32], File)>> {
    let mut file = tempfile::tempfile()?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut stdin = io::stdin().lock();
    loop {
        if !readable_before(libc::STDIN_FILENO, deadline) {
            return Ok(None);
        }
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                file.write_all(&buf[..n])?;
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    use std::io::Seek;
    file.rewind()?;
    Ok(Some((hasher.finalize().into(), file)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(expr: &str) -> Result<CacheBy, KeyError> {
        expr.parse()
    }

    #[test]
    fn hex_is_two_lower_case_digits_per_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0x10, 0xa5, 0xff]), "000f10a5ff");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn parses_every_kind() {
        assert_eq!(parse("mtime:a/b").unwrap(), CacheBy::Mtime("a/b".into()));
        assert_eq!(
            parse("hash:src/**/*.rs").unwrap(),
            CacheBy::Hash("src/**/*.rs".into())
        );
        assert_eq!(parse("git").unwrap(), CacheBy::Git(None));
        assert_eq!(parse("git:..").unwrap(), CacheBy::Git(Some("..".into())));
        assert_eq!(parse("env:HOME").unwrap(), CacheBy::Env("HOME".into()));
        assert_eq!(parse("cmd:date +%F").unwrap(), CacheBy::Cmd("date +%F".into()));
        assert_eq!(parse("value:a:b").unwrap(), CacheBy::Value("a:b".into()));
        assert_eq!(parse("value:").unwrap(), CacheBy::Value(String::new()));
        assert_eq!(parse("stdin").unwrap(), CacheBy::Stdin);
    }

    #[test]
    fn rejects_malformed_expressions() {
        for bad in [
            "", "mtime", "mtime:", "hash:", "hash:[", "env:", "env:A=B", "cmd:", "value", "stdin:x", "git:",
            "time:x", "MTIME:x",
        ] {
            let err = parse(bad).expect_err(bad);
            assert!(err.to_string().contains(&format!("'{bad}'")), "{err}");
        }
    }

    fn key_of(fields: &[(&str, &[u8])]) -> String {
        let mut builder = KeyBuilder::new();
        for (label, bytes) in fields {
            builder.field(label, bytes);
        }
        builder.finish().hex
    }

    #[test]
    fn different_inputs_never_share_an_encoding() {
        let args = |list: &[&str]| list.iter().map(OsString::from).collect::<Vec<_>>();
        assert_ne!(
            encode_argv(&args(&["ab", "c"]), &[]),
            encode_argv(&args(&["a", "bc"]), &[])
        );
        assert_ne!(
            encode_argv(&args(&["a", ""]), &[]),
            encode_argv(&args(&["a"]), &[])
        );
        assert_ne!(
            encode_argv(&args(&["a", "x", "b"]), &[1]),
            encode_argv(&args(&["a", "b"]), &[])
        );
        assert_eq!(
            encode_argv(&args(&["a", "x", "b"]), &[1]),
            encode_argv(&args(&["a", "y", "b"]), &[1])
        );
        // Label and value boundaries cannot shift.
        assert_ne!(key_of(&[("ab", b"c")]), key_of(&[("a", b"bc")]));
        // Order matters, and so does presence.
        assert_ne!(
            key_of(&[("a", b"1"), ("b", b"2")]),
            key_of(&[("b", b"2"), ("a", b"1")])
        );
        assert_ne!(key_of(&[("a", b"1")]), key_of(&[("a", b"1"), ("cwd", b"")]));
        assert_eq!(key_of(&[("a", b"1")]), key_of(&[("a", b"1")]));
    }

    #[test]
    fn key_is_stable_across_releases() {
        // The key names entries on disk and on remote servers: changing it
        // silently would orphan every cache. Bump KEY_VERSION instead.
        assert_eq!(
            key_of(&[(
                "argv",
                &encode_argv(&[OsString::from("echo"), OsString::from("hi")], &[])
            )]),
            key_of(&[("argv", b"\0\0\0\0\0\0\0\x04echo\0\0\0\0\0\0\0\x02hi")])
        );
        assert_eq!(key_of(&[]), hex(&Sha256::digest(KEY_VERSION)));
    }

    #[test]
    fn resolves_like_execvp() {
        let cwd = std::env::current_dir().unwrap();
        assert!(matches!(
            resolve_program(OsStr::new("sh"), &cwd),
            Resolved::Found(_)
        ));
        assert_eq!(
            resolve_program(OsStr::new("no-such-program-lcrun"), &cwd),
            Resolved::NotFound
        );
        let plain = tempfile::NamedTempFile::new().unwrap();
        assert!(matches!(
            resolve_program(plain.path().as_os_str(), &cwd),
            Resolved::NotExecutable(_)
        ));
        assert!(matches!(
            resolve_program(OsStr::new("/"), &cwd),
            Resolved::NotExecutable(_)
        ));
    }
}

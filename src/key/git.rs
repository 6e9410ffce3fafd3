//! `git` / `git:DIR`: HEAD, the uncommitted changes, the untracked files and,
//! recursively, the same for every checked-out submodule, so a dirty tree
//! never hits a clean entry.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use super::command::hash_reader;
use super::files::{self, describe, Links};
use super::push_item;

/// The variables that point git at one repository. A submodule is a
/// repository of its own: git clears these when it recurses, and so do we.
const LOCAL_ENV: &[&str] = &[
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_PREFIX",
];

/// `git` in `dir`; `nested` for a submodule.
fn git(dir: &Path, nested: bool, args: &[&str]) -> Command {
    let mut command = Command::new("git");
    command
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    if nested {
        for name in LOCAL_ENV {
            command.env_remove(name);
        }
    }
    command
}

/// Runs `git` in `dir`, streaming stdout into `hasher`; fails on a non-zero
/// exit. Returns whether it printed anything.
fn git_into(dir: &Path, nested: bool, args: &[&str], hasher: &mut Sha256) -> Result<bool, String> {
    let mut child = git(dir, nested, args)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|err| format!("cannot run git: {}", describe(&err)))?;
    let stdout = child.stdout.take().ok_or("git: no stdout")?;
    let before = hasher.clone().finalize();
    hash_reader(stdout, hasher).map_err(|err| format!("reading git output: {}", describe(&err)))?;
    let printed = hasher.clone().finalize() != before;
    let status = child.wait().map_err(|err| describe(&err))?;
    if status.success() {
        Ok(printed)
    } else {
        Err(format!("'git {}' failed in {}", args.join(" "), dir.display()))
    }
}

/// The whole stdout of a `git` command in `dir`.
fn git_output(dir: &Path, nested: bool, args: &[&str]) -> Result<Vec<u8>, String> {
    let mut child = git(dir, nested, args)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|err| format!("cannot run git: {}", describe(&err)))?;
    let mut out = Vec::new();
    if let Some(mut stdout) = child.stdout.take() {
        stdout
            .read_to_end(&mut out)
            .map_err(|err| format!("reading git output: {}", describe(&err)))?;
    }
    let status = child.wait().map_err(|err| describe(&err))?;
    if status.success() {
        Ok(out)
    } else {
        Err(format!("'git {}' failed in {}", args.join(" "), dir.display()))
    }
}

/// The state of the work tree at `dir`.
pub(super) fn state(dir: &Path) -> Result<([u8; 32], super::Detail), String> {
    let mut detail = super::Detail::Git {
        head: None,
        dirty: false,
    };
    let digest = tree_state(dir, false, Some(&mut detail))?;
    Ok((digest, detail))
}

fn tree_state(dir: &Path, nested: bool, detail: Option<&mut super::Detail>) -> Result<[u8; 32], String> {
    let mut probe = Sha256::new();
    git_into(dir, nested, &["rev-parse", "--git-dir"], &mut probe)
        .map_err(|_| format!("{} is not in a git repository", dir.display()))?;
    let mut hasher = Sha256::new();
    let head = git_output(dir, nested, &["rev-parse", "--verify", "-q", "HEAD"]).ok();
    let born = head.is_some();
    if let Some(head) = &head {
        hasher.update(head);
    }
    let diff_base = if born { "HEAD" } else { "--cached" };
    hasher.update(b"\0diff\0");
    // Submodules are left to the recursion below, which sees more than the
    // `-dirty` this would print for any number of edits inside one.
    let changed = git_into(
        dir,
        nested,
        &[
            "diff",
            "--binary",
            "--no-ext-diff",
            "--no-textconv",
            "--ignore-submodules=all",
            diff_base,
        ],
        &mut hasher,
    )?;
    hasher.update(b"\0untracked\0");
    let list = git_output(dir, nested, &["ls-files", "-z", "--others", "--exclude-standard"])?;
    if let Some(super::Detail::Git { head: at, dirty }) = detail {
        *at = head.map(|h| String::from_utf8_lossy(h.trim_ascii()).into_owned());
        *dirty = changed || !list.is_empty();
    }
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        // A link counts by its target, never followed: one to a directory or
        // to /dev/zero is a name, not something to read.
        let path = dir.join(OsStr::from_bytes(name));
        let mut item = Vec::new();
        files::entry(&mut item, name, &path, Links::AsLinks)
            .map_err(|err| format!("{}: {}", path.display(), describe(&err)))?;
        hasher.update(&item);
    }
    hasher.update(b"\0submodules\0");
    let index = git_output(dir, nested, &["ls-files", "-z", "--stage"])?;
    for record in index.split(|&b| b == 0) {
        // `MODE OBJECT STAGE\tPATH`; a submodule is a gitlink, mode 160000.
        let Some(name) = record.strip_prefix(b"160000 ").and_then(|r| {
            let tab = r.iter().position(|&b| b == b'\t')?;
            Some(&r[tab + 1..])
        }) else {
            continue;
        };
        let sub = dir.join(OsStr::from_bytes(name));
        let mut item = Vec::new();
        push_item(&mut item, name);
        // Without its own `.git`, `git -C` there would find this repository.
        if sub.join(".git").symlink_metadata().is_ok() {
            item.extend_from_slice(b"checked-out");
            item.extend_from_slice(&tree_state(&sub, true, None)?);
        } else {
            item.extend_from_slice(b"absent");
        }
        hasher.update(&item);
    }
    Ok(hasher.finalize().into())
}

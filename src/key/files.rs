//! `mtime:PATH` and `hash:PATH_OR_GLOB`, and the hashing of one file-system
//! entry that `git` shares. Nothing but a regular file is ever read: a link
//! inside a tree counts by its target path, a fifo or device by its type, so
//! a link to `/dev/zero` cannot hang a run and a re-pointed link is a change.

use std::fmt;
use std::fs::{self, File, FileType};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::command::hash_reader;
use super::push_item;

/// A file-system error and the path it happened at (none when it is the path
/// the expression names, which the message already shows).
#[derive(Debug)]
pub(super) struct FsError {
    path: Option<PathBuf>,
    source: io::Error,
}

impl FsError {
    fn at(path: &Path, source: io::Error) -> FsError {
        FsError {
            path: Some(path.to_owned()),
            source,
        }
    }
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(path) = &self.path {
            write!(f, "{}: ", path.display())?;
        }
        f.write_str(&describe(&self.source))
    }
}

/// An I/O error as one short phrase: `permission denied`, not `Permission
/// denied (os error 13)`.
pub(super) fn describe(err: &io::Error) -> String {
    let Some(code) = err.raw_os_error() else {
        return err.to_string();
    };
    let text = io::Error::from_raw_os_error(code).to_string();
    let text = text.split(" (os error").next().unwrap_or(&text);
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text.to_owned(),
    }
}

/// Whether an error means "nothing there" rather than "cannot look".
fn is_absent(err: &io::Error) -> bool {
    matches!(err.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory)
}

/// `mtime:PATH`: size and nanosecond mtime of what PATH leads to; a missing
/// path is a value too.
pub(super) fn mtime(path: &Path) -> Result<Vec<u8>, FsError> {
    match fs::metadata(path) {
        Ok(meta) => {
            let mut buf = b"present".to_vec();
            buf.extend_from_slice(&meta.size().to_be_bytes());
            buf.extend_from_slice(&meta.mtime().to_be_bytes());
            buf.extend_from_slice(&meta.mtime_nsec().to_be_bytes());
            Ok(buf)
        }
        // A dangling link or a loop of links leads nowhere: missing too.
        Err(err) if is_absent(&err) || err.raw_os_error() == Some(libc::ELOOP) => Ok(b"missing".to_vec()),
        Err(source) => Err(FsError { path: None, source }),
    }
}

/// How a link inside a tree counts.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Links {
    /// By its target path only (`git`, which versions links as links).
    AsLinks,
    /// By its target path and, when it leads to a file, that file's contents
    /// (`hash:`, whose user means the contents their program will read).
    WithFileContents,
}

/// `hash:PATH_OR_GLOB`. A path that exists is taken literally, whatever
/// characters it has (`report[2024].csv`); only otherwise is it a glob. Each
/// named or matched path counts by what it leads to; directories recurse,
/// without following the links inside. No match is a value too.
/// With the digest, each path covered and its entry's digest (see
/// [`super::Detail::Files`]), unless there were too many to list.
pub(super) fn hash(path: &Path) -> Result<([u8; 32], Option<Seen>), FsError> {
    let mut roots = match fs::symlink_metadata(path) {
        Ok(_) => vec![path.to_owned()],
        Err(err) if is_absent(&err) => glob_matches(path)?,
        Err(source) => return Err(FsError { path: None, source }),
    };
    roots.sort();
    let mut hasher = Sha256::new();
    let mut seen = Vec::new();
    for root in &roots {
        hash_root(root, &mut hasher, &mut seen).map_err(|err| match err.path.as_deref() {
            Some(at) if at == path => FsError { path: None, ..err },
            _ => err,
        })?;
    }
    let seen = (seen.len() <= super::detail::MAX_FILES).then_some(seen);
    Ok((hasher.finalize().into(), seen))
}

/// Hashes one path's entry and notes it for the input's detail.
fn add(hasher: &mut Sha256, seen: &mut Seen, name: &[u8], item: &[u8]) {
    hasher.update(item);
    if seen.len() <= super::detail::MAX_FILES {
        seen.push((
            String::from_utf8_lossy(name).into_owned(),
            super::detail::file_digest(item),
        ));
    }
}

/// Each path a `hash:` input covered, with its entry's short digest.
pub(super) type Seen = Vec<(String, String)>;

/// The paths a glob matches. A path that neither exists nor is a valid glob
/// is most likely a mistyped pattern: an error, not a value that never
/// changes. (A path that is not UTF-8 cannot be a pattern: it names one
/// missing path.)
fn glob_matches(path: &Path) -> Result<Vec<PathBuf>, FsError> {
    let Some(pattern) = path.to_str().filter(|p| p.contains(['*', '?', '['])) else {
        return Ok(Vec::new());
    };
    let paths = glob::glob(pattern).map_err(|err| FsError {
        path: None,
        source: io::Error::other(format!("no such path, and not a valid glob: {}", err.msg)),
    })?;
    paths
        .map(|found| {
            found.map_err(|err| {
                let at = err.path().to_owned();
                FsError::at(&at, err.into())
            })
        })
        .collect()
}

/// One named or matched path, followed to what it leads to.
fn hash_root(root: &Path, hasher: &mut Sha256, seen: &mut Seen) -> Result<(), FsError> {
    let meta = match fs::metadata(root) {
        Ok(meta) => meta,
        // A dangling link or a loop of links: counted as a link.
        Err(err) if is_absent(&err) || err.raw_os_error() == Some(libc::ELOOP) => {
            let mut item = Vec::new();
            entry(&mut item, root.as_os_str().as_bytes(), root, Links::AsLinks)
                .map_err(|e| FsError::at(root, e))?;
            add(hasher, seen, root.as_os_str().as_bytes(), &item);
            return Ok(());
        }
        Err(err) => return Err(FsError::at(root, err)),
    };
    if !meta.is_dir() {
        let mut item = Vec::new();
        push_item(&mut item, root.as_os_str().as_bytes());
        if meta.is_file() {
            item.extend_from_slice(&contents(root, true).map_err(|e| FsError::at(root, e))?);
        } else {
            item.extend_from_slice(special(meta.file_type()));
        }
        add(hasher, seen, root.as_os_str().as_bytes(), &item);
        return Ok(());
    }
    let walk = walkdir::WalkDir::new(root)
        .follow_root_links(true)
        .sort_by_file_name();
    for found in walk {
        let found = found.map_err(|err| {
            let at = err.path().unwrap_or(root).to_owned();
            let source = err
                .into_io_error()
                .unwrap_or_else(|| io::Error::other("cannot walk the directory"));
            FsError::at(&at, source)
        })?;
        let path = found.path();
        let mut item = Vec::new();
        let kind = if found.depth() == 0 {
            None
        } else {
            Some(found.file_type())
        };
        entry_of_kind(
            &mut item,
            path.as_os_str().as_bytes(),
            path,
            kind,
            Links::WithFileContents,
        )
        .map_err(|e| FsError::at(path, e))?;
        add(hasher, seen, path.as_os_str().as_bytes(), &item);
    }
    Ok(())
}

/// Appends the canonical bytes of one entry, named `name`, at `path`, which
/// is not followed if it is a link.
pub(super) fn entry(item: &mut Vec<u8>, name: &[u8], path: &Path, links: Links) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) => entry_of_kind(item, name, path, Some(meta.file_type()), links),
        Err(err) if is_absent(&err) => {
            push_item(item, name);
            item.extend_from_slice(b"missing");
            Ok(())
        }
        Err(err) => Err(err),
    }
}

/// [`entry`] for an entry whose type is known; `None` is a directory
/// reached through a followed root.
fn entry_of_kind(
    item: &mut Vec<u8>,
    name: &[u8],
    path: &Path,
    kind: Option<FileType>,
    links: Links,
) -> io::Result<()> {
    push_item(item, name);
    let Some(kind) = kind else {
        item.extend_from_slice(b"dir");
        return Ok(());
    };
    if kind.is_file() {
        item.extend_from_slice(&contents(path, false)?);
    } else if kind.is_symlink() {
        item.extend_from_slice(b"link");
        push_item(item, fs::read_link(path)?.as_os_str().as_bytes());
        if links == Links::WithFileContents && fs::metadata(path).is_ok_and(|m| m.is_file()) {
            item.extend_from_slice(&contents(path, true)?);
        }
    } else {
        item.extend_from_slice(special(kind));
    }
    Ok(())
}

/// The type tag of anything that is not a file or a link.
fn special(kind: FileType) -> &'static [u8] {
    if kind.is_dir() {
        b"dir"
    } else if kind.is_fifo() {
        b"fifo"
    } else if kind.is_socket() {
        b"socket"
    } else if kind.is_char_device() {
        b"char-device"
    } else if kind.is_block_device() {
        b"block-device"
    } else {
        b"other"
    }
}

/// `file` and the SHA-256 of the contents of `path`, which the caller found
/// to be a regular file (a device is never opened: opening one can have
/// effects, a tape rewinds). Opened without blocking and checked again with
/// `fstat`, so a fifo put in its place meanwhile cannot hang us.
fn contents(path: &Path, follow: bool) -> io::Result<Vec<u8>> {
    let mut flags = libc::O_NONBLOCK;
    if !follow {
        flags |= libc::O_NOFOLLOW;
    }
    let file = File::options().read(true).custom_flags(flags).open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(special(meta.file_type()).to_vec());
    }
    let mut hasher = Sha256::new();
    hash_reader(file, &mut hasher)?;
    let mut out = b"file".to_vec();
    out.extend_from_slice(&hasher.finalize());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_as_one_short_phrase() {
        let err = io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(describe(&err), "permission denied");
        let err = FsError::at(Path::new("a/b"), io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(err.to_string(), "a/b: no such file or directory");
    }
}

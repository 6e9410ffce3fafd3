//! Reaching a declared output one component at a time with `openat`, so no
//! symlink along the way is followed and a path is never resolved twice.
//!
//! Below the working directory every component is opened with `O_NOFOLLOW |
//! O_DIRECTORY`: a symlink planted where a directory belongs is refused, not
//! obeyed. The parents of an absolute declared path are the user's own words
//! and are resolved as the system does (`/tmp` may be a link); the declared
//! path itself and everything below it never are.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, CWD};
use rustix::io::Errno;

use super::DeclaredPath;

/// Opening a directory for walking or listing, never through a link.
pub const DIR_NOFOLLOW: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Why a directory on the way could not be opened.
#[derive(Debug)]
pub enum Step {
    /// It does not exist.
    NotFound,
    /// It is a symlink, which is not followed.
    Symlink,
    /// It is something else than a directory.
    NotDir,
    /// The system said no.
    Io(io::Error),
}

impl From<Errno> for Step {
    fn from(errno: Errno) -> Step {
        Step::Io(errno.into())
    }
}

/// A directory a walk created, so a restore that fails before it wrote any
/// file can take it away again.
pub struct Created {
    /// The directory it was created in.
    pub parent: OwnedFd,
    /// Its name there.
    pub name: Vec<u8>,
}

/// Opens directory `name` in `dir`, refusing a symlink. With `created`,
/// a missing directory is made (and recorded there).
pub fn child_dir(
    dir: BorrowedFd<'_>,
    name: &[u8],
    created: Option<&mut Vec<Created>>,
) -> Result<OwnedFd, Step> {
    open_child(dir, name, DIR_NOFOLLOW, created)
}

fn open_child(
    dir: BorrowedFd<'_>,
    name: &[u8],
    flags: OFlags,
    created: Option<&mut Vec<Created>>,
) -> Result<OwnedFd, Step> {
    match rfs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(Errno::NOENT) => {
            let Some(created) = created else {
                return Err(Step::NotFound);
            };
            match rfs::mkdirat(dir, name, Mode::from_bits_truncate(0o777)) {
                Ok(()) => created.push(Created {
                    parent: dir.try_clone_to_owned().map_err(Step::Io)?,
                    name: name.to_vec(),
                }),
                // Made by someone else meanwhile: open whatever it is.
                Err(Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
            rfs::openat(dir, name, flags, Mode::empty()).map_err(|e| classify(dir, name, e))
        }
        Err(e) => Err(classify(dir, name, e)),
    }
}

/// What stopped an `openat(O_DIRECTORY | O_NOFOLLOW)`: `ELOOP` or `ENOTDIR`
/// mean a link or a non-directory, told apart by `lstat`.
pub fn classify(dir: BorrowedFd<'_>, name: &[u8], errno: Errno) -> Step {
    match errno {
        Errno::NOENT => Step::NotFound,
        Errno::LOOP | Errno::NOTDIR => match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Symlink => Step::Symlink,
            Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Directory => {
                Step::Io(errno.into())
            }
            Ok(_) => Step::NotDir,
            Err(e) => Step::from(e),
        },
        e => e.into(),
    }
}

/// The directory that holds a declared path, and the declared path's last
/// component in it. On failure, the path that could not be opened.
///
/// `cwd` is where relative paths start (`.` for the process's own). With
/// `created`, missing directories are made, as a recipe's `mkdir -p $(@D)`
/// would.
pub fn open_parent<'d>(
    cwd: &Path,
    declared: &'d DeclaredPath,
    mut created: Option<&mut Vec<Created>>,
) -> Result<(OwnedFd, &'d [u8]), (PathBuf, Step)> {
    let parts: Vec<&[u8]> = declared.components().collect();
    let Some((leaf, parents)) = parts.split_last() else {
        // DeclaredPath::parse never yields an empty path.
        return Err((declared.as_path().to_owned(), Step::NotFound));
    };
    let (start, follow) = if declared.is_absolute() {
        (Path::new("/"), true)
    } else {
        (cwd, false)
    };
    let mut dir = rfs::openat(
        CWD,
        start,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| (start.to_owned(), Step::from(e)))?;
    let flags = if follow {
        DIR_NOFOLLOW.difference(OFlags::NOFOLLOW)
    } else {
        DIR_NOFOLLOW
    };
    let mut walked = if follow {
        PathBuf::from("/")
    } else {
        PathBuf::new()
    };
    for part in parents {
        walked.push(OsStr::from_bytes(part));
        dir =
            open_child(dir.as_fd(), part, flags, created.as_deref_mut()).map_err(|e| (walked.clone(), e))?;
    }
    Ok((dir, leaf))
}

/// `path/rel` for messages, `path` itself when `rel` is empty.
pub fn display_path(declared: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        declared.to_owned()
    } else {
        declared.join(OsStr::from_bytes(rel))
    }
}

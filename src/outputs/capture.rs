//! After a successful run: walking each declared path into an
//! [`OutputTree`], file contents streamed into blobs.
//!
//! The walk is deterministic (names in byte order), keeps symlinks as links
//! (never follows them) and refuses what cannot be restored faithfully:
//! fifos, sockets and devices, and a declared path reached through a link.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, Dir, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::beneath::{self, display_path, Step};
use super::holes::Sparse;
use super::{DeclaredPath, Entry, Kind, Output, OutputTree, PathBytes};
use crate::blob::{BlobError, BlobStore};

/// Why the outputs could not be captured. The caller stores no entry.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// A declared output the command did not create.
    #[error("{}: declared as an output (-o) but the command did not create it", .0.display())]
    Missing(PathBuf),
    /// A fifo, socket or device: only files, directories and symlinks are
    /// kept.
    #[error("{}: is a {kind}; an output can hold only files, directories and symlinks", path.display())]
    Unsupported {
        /// Where it is.
        path: PathBuf,
        /// `fifo`, `socket`, `character device` or `block device`.
        kind: &'static str,
    },
    /// A directory on the way to a relative declared path is a symlink,
    /// which a restore would refuse to follow.
    #[error("{}: is a symlink on the way to an output; give the output as an absolute path", .0.display())]
    Symlink(PathBuf),
    /// Reading the output failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// Where.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// Storing its bytes failed (reading them, or the cache's disk).
    #[error("{}: cannot store it in the cache: {source}", path.display())]
    Blob {
        /// The file being stored.
        path: PathBuf,
        /// What the store said.
        source: BlobError,
    },
}

/// Captures every declared path, relative ones under `cwd` (`.` for the
/// process's own), storing file contents in `store`.
///
/// On error some blobs may already be stored; no record refers to them,
/// and the store's sweep removes them. Once `stop` says so (the run was
/// cancelled meanwhile) the next read of a file fails, and so does this.
pub fn capture(
    cwd: &Path,
    declared: &[DeclaredPath],
    store: &dyn BlobStore,
    stop: &dyn Fn() -> bool,
) -> Result<OutputTree, CaptureError> {
    let mut tree = OutputTree::default();
    for path in declared {
        tree.outputs.push(capture_one(cwd, path, store, stop)?);
    }
    Ok(tree)
}

fn capture_one(
    cwd: &Path,
    declared: &DeclaredPath,
    store: &dyn BlobStore,
    stop: &dyn Fn() -> bool,
) -> Result<Output, CaptureError> {
    let (parent, leaf) = beneath::open_parent(cwd, declared, None).map_err(|(path, step)| match step {
        Step::NotFound => CaptureError::Missing(declared.as_path().to_owned()),
        Step::Symlink => CaptureError::Symlink(path),
        Step::NotDir => CaptureError::Missing(declared.as_path().to_owned()),
        Step::Io(source) => CaptureError::Io { path, source },
    })?;
    match rfs::statat(&parent, leaf, AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::NOENT) => return Err(CaptureError::Missing(declared.as_path().to_owned())),
        Err(e) => {
            return Err(CaptureError::Io {
                path: declared.as_path().to_owned(),
                source: e.into(),
            })
        }
        Ok(_) => {}
    }
    let mut walk = Walk {
        declared: declared.as_path(),
        store,
        stop,
        entries: Vec::new(),
    };
    walk.node(parent.as_fd(), leaf, Vec::new())?;
    Ok(Output {
        path: PathBytes::from(declared.as_bytes()),
        entries: walk.entries,
    })
}

/// One declared path being walked.
struct Walk<'a> {
    declared: &'a Path,
    store: &'a dyn BlobStore,
    stop: &'a dyn Fn() -> bool,
    entries: Vec<Entry>,
}

impl Walk<'_> {
    /// Captures `name` in `dir`, known as `rel` inside the declared path.
    fn node(&mut self, dir: BorrowedFd<'_>, name: &[u8], rel: Vec<u8>) -> Result<(), CaptureError> {
        // Here too, not only on a file's reads: a tree of a million links
        // reads none.
        if (self.stop)() {
            return Err(self.io(&rel, stopped()));
        }
        let stat = rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| self.io(&rel, e))?;
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::RegularFile => self.file(dir, name, rel),
            FileType::Directory => self.dir(dir, name, rel),
            FileType::Symlink => {
                let target = rfs::readlinkat(dir, name, Vec::new()).map_err(|e| self.io(&rel, e))?;
                self.entries.push(Entry {
                    path: PathBytes(rel),
                    kind: Kind::Symlink {
                        target: PathBytes(target.into_bytes()),
                    },
                });
                Ok(())
            }
            other => Err(CaptureError::Unsupported {
                path: display_path(self.declared, &rel),
                kind: match other {
                    FileType::Fifo => "fifo",
                    FileType::Socket => "socket",
                    FileType::CharacterDevice => "character device",
                    FileType::BlockDevice => "block device",
                    _ => "special file",
                },
            }),
        }
    }

    fn file(&mut self, dir: BorrowedFd<'_>, name: &[u8], rel: Vec<u8>) -> Result<(), CaptureError> {
        // O_NONBLOCK: should a fifo replace the file since the lstat, opening
        // it must not hang; fstat then tells what was opened.
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
        let fd = rfs::openat(dir, name, flags, Mode::empty()).map_err(|e| self.io(&rel, e))?;
        let stat = rfs::fstat(&fd).map_err(|e| self.io(&rel, e))?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(self.io(&rel, changed()));
        }
        let file = File::from(fd);
        let mut reader = Stoppable {
            file: Sparse::new(&file, stat.st_size as u64),
            stop: self.stop,
        };
        let contents = self
            .store
            .put_stream(&mut reader)
            .map_err(|source| CaptureError::Blob {
                path: display_path(self.declared, &rel),
                source,
            })?;
        // Written meanwhile (a child the command left running): what was
        // read is no state the file ever had whole, and is not kept.
        let after = rfs::fstat(&file).map_err(|e| self.io(&rel, e))?;
        let when = |stat: &rfs::Stat| (stat.st_size, stat.st_mtime, stat.st_mtime_nsec);
        if when(&after) != when(&stat) || contents.size != stat.st_size as u64 {
            return Err(self.io(&rel, changed()));
        }
        self.entries.push(Entry {
            path: PathBytes(rel),
            kind: Kind::File {
                contents,
                executable: stat.st_mode & 0o111 != 0,
                mode: Some(stat.st_mode & 0o777),
            },
        });
        Ok(())
    }

    fn dir(&mut self, parent: BorrowedFd<'_>, name: &[u8], rel: Vec<u8>) -> Result<(), CaptureError> {
        let fd = match beneath::child_dir(parent, name, None) {
            Ok(fd) => fd,
            Err(Step::Io(e)) => return Err(self.io(&rel, e)),
            Err(_) => return Err(self.io(&rel, changed())),
        };
        let mut names = Vec::new();
        let mut listing = Dir::read_from(&fd).map_err(|e| self.io(&rel, e))?;
        while let Some(entry) = listing.read() {
            let entry = entry.map_err(|e| self.io(&rel, e))?;
            let child = entry.file_name().to_bytes();
            if child != b"." && child != b".." {
                names.push(child.to_vec());
            }
        }
        names.sort_unstable();
        self.entries.push(Entry {
            path: PathBytes(rel.clone()),
            kind: Kind::Dir,
        });
        for child in names {
            let mut child_rel = rel.clone();
            if !child_rel.is_empty() {
                child_rel.push(b'/');
            }
            child_rel.extend_from_slice(&child);
            self.node(fd.as_fd(), &child, child_rel)?;
        }
        Ok(())
    }

    fn io(&self, rel: &[u8], error: impl Into<io::Error>) -> CaptureError {
        CaptureError::Io {
            path: display_path(self.declared, rel),
            source: error.into(),
        }
    }
}

/// A file being stored (read hole by hole) that stops giving bytes once
/// `stop` says so.
struct Stoppable<'a> {
    file: Sparse<'a>,
    stop: &'a dyn Fn() -> bool,
}

impl io::Read for Stoppable<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if (self.stop)() {
            return Err(stopped());
        }
        self.file.read(buf)
    }
}

fn stopped() -> io::Error {
    io::Error::other("the store was stopped")
}

/// A file or directory replaced by something else between looking at it and
/// opening it: the command's outputs were still changing.
fn changed() -> io::Error {
    io::Error::other("changed while it was being stored")
}

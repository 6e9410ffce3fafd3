//! Whether the cache directory and the files in it can be trusted, as ssh and
//! git decide: they must belong to the user running lcrun and be writable by
//! no one else. Anyone who can write them could make a replay print their
//! bytes, or have lcrun delete, read or append to files of its user.
//!
//! Files in the cache are opened with `O_NOFOLLOW` and checked with an
//! `fstat` on the open descriptor, so what is checked is what is read.

use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Why a file or directory in the cache is not trusted.
#[derive(Debug, thiserror::Error)]
pub enum Untrusted {
    /// It belongs to another user.
    #[error("{path} belongs to uid {owner}, not to the user running lcrun (uid {me})")]
    Owner {
        /// The path concerned.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The user running lcrun.
        me: u32,
    },
    /// Others than its owner can write it.
    #[error("{path} can be written by others (mode {mode:o})")]
    Writable {
        /// The path concerned.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// It is not what the cache keeps there (a symlink, a device, a FIFO).
    #[error("{path} is not a {expected}")]
    Kind {
        /// The path concerned.
        path: PathBuf,
        /// What it should be.
        expected: &'static str,
    },
}

/// The effective uid of this process: files lcrun creates belong to it.
/// Asked once: a hit checks four files.
pub fn me() -> u32 {
    static ME: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    // SAFETY: geteuid cannot fail and touches no memory of ours.
    *ME.get_or_init(|| unsafe { libc::geteuid() })
}

/// Checks what `stat` says about `path`: owned by us, writable by no one
/// else, and of the kind expected (`dir` or a regular file).
pub fn check(path: &Path, meta: &Metadata, dir: bool) -> Result<(), Untrusted> {
    let kind_ok = if dir { meta.is_dir() } else { meta.is_file() };
    if !kind_ok {
        return Err(Untrusted::Kind {
            path: path.to_owned(),
            expected: if dir { "directory" } else { "regular file" },
        });
    }
    let me = me();
    if meta.uid() != me {
        return Err(Untrusted::Owner {
            path: path.to_owned(),
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(Untrusted::Writable {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// A failure to open a file in the cache: the OS refused, or the file is
/// not to be trusted.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The OS refused (missing, a symlink: `ELOOP`, no space).
    #[error("{path}: {source}")]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// It opened, but is not ours alone.
    #[error(transparent)]
    Untrusted(#[from] Untrusted),
}

impl OpenError {
    /// The OS error's kind, if the OS refused.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            OpenError::Io { source, .. } => Some(source.kind()),
            OpenError::Untrusted(_) => None,
        }
    }
}

/// Opens a regular file in the cache without following a symlink, and
/// checks the open file. Returns it with what `fstat` said, so callers that
/// need its size pay nothing more. New files are created 0600.
pub fn open(path: &Path, options: &mut OpenOptions) -> Result<(File, Metadata), OpenError> {
    let io = |source| OpenError::Io {
        path: path.to_owned(),
        source,
    };
    // O_NONBLOCK: a fifo planted in place of the file must not hang the
    // open (it changes nothing for a regular file); the check below then
    // refuses it.
    let file = match options
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .mode(0o600)
        .open(path)
    {
        Ok(file) => file,
        // O_NOFOLLOW met a symlink, or O_NONBLOCK a fifo no one reads:
        // someone else's doing, not an OS failure.
        Err(err) if matches!(err.raw_os_error(), Some(libc::ELOOP | libc::ENXIO)) => {
            return Err(OpenError::Untrusted(Untrusted::Kind {
                path: path.to_owned(),
                expected: "regular file",
            }))
        }
        Err(err) => return Err(io(err)),
    };
    let meta = file.metadata().map_err(io)?;
    check(path, &meta, false)?;
    Ok((file, meta))
}

/// Checks a directory lcrun keeps files in. A symlink is not followed: the
/// cache's own directories are never symlinks.
pub fn check_dir(path: &Path) -> Result<(), OpenError> {
    let meta = std::fs::symlink_metadata(path).map_err(|source| OpenError::Io {
        path: path.to_owned(),
        source,
    })?;
    check(path, &meta, true)?;
    Ok(())
}

/// Whether a file name read from the database may be used as a path under
/// `data/`: one plain component, so it cannot lead out of the directory.
pub fn plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn only_plain_names_are_paths() {
        assert!(plain_name("12-abcdef"));
        for bad in ["", ".", "..", "../../victim", "a/b", "/etc/passwd", "a\0b"] {
            assert!(!plain_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn writable_by_others_and_symlinks_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "x").unwrap();
        let mut read = OpenOptions::new();
        assert!(open(&path, read.read(true)).is_ok());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(matches!(
            open(&path, OpenOptions::new().read(true)),
            Err(OpenError::Untrusted(Untrusted::Writable { .. }))
        ));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(matches!(
            open(&link, OpenOptions::new().read(true)),
            Err(OpenError::Untrusted(Untrusted::Kind { .. }))
        ));
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(check_dir(dir.path()).is_err());
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(check_dir(dir.path()).is_ok());
        assert!(check_dir(&link).is_err());
    }
}

//! One lock file per key, so identical invocations run the command once. The
//! lock is an `flock`, which the kernel drops when its owner dies (kill -9, a
//! crash, a reboot), so a dead owner never blocks anyone.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::trust;

/// A held lock on one key. Dropping it removes the lock file and releases it.
pub struct KeyLock {
    file: File,
    path: PathBuf,
}

impl KeyLock {
    /// Tries to take the lock on `key` in `dir` without waiting. `Ok(None)`
    /// means another process holds it.
    pub fn try_acquire(dir: &Path, key: &str) -> io::Result<Option<KeyLock>> {
        let locks = dir.join("locks");
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&locks)?;
        // A lock in a directory or file someone else can write is theirs to
        // hold for ever: not waited on.
        trust::check_dir(&locks).map_err(io::Error::other)?;
        let path = locks.join(key);
        loop {
            let (file, held) =
                trust::open(&path, OpenOptions::new().create(true).truncate(false).write(true))
                    .map_err(io::Error::other)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(fs::TryLockError::WouldBlock) => return Ok(None),
                Err(fs::TryLockError::Error(err)) => return Err(err),
            }
            // The previous owner unlinks the file before releasing it. If we
            // locked an inode that is no longer at `path`, we raced with that
            // and must lock the current file instead.
            match fs::symlink_metadata(&path) {
                Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {
                    return Ok(Some(KeyLock { file, path }));
                }
                _ => continue,
            }
        }
    }
}

impl Drop for KeyLock {
    fn drop(&mut self) {
        // Unlink while still holding the lock, so no one can lock this inode
        // and believe they own the key; then the close releases it.
        let _ = fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_acquire_is_busy_until_release() {
        let dir = tempfile::tempdir().unwrap();
        let first = KeyLock::try_acquire(dir.path(), "k").unwrap().expect("free");
        assert!(KeyLock::try_acquire(dir.path(), "k").unwrap().is_none());
        assert!(KeyLock::try_acquire(dir.path(), "other").unwrap().is_some());
        drop(first);
        assert!(KeyLock::try_acquire(dir.path(), "k").unwrap().is_some());
    }
}

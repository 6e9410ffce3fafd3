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
    /// The heartbeat thread (see [`KeyLock::keep_alive`]), which the sender
    /// stops when dropped.
    beat: std::sync::Mutex<Option<Beat>>,
}

/// The heartbeat thread and what stops it.
type Beat = (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>);

/// How often an owner's lock file shows that its owner is alive.
pub const BEAT: std::time::Duration = std::time::Duration::from_secs(1);

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
                    return Ok(Some(KeyLock {
                        file,
                        path,
                        beat: std::sync::Mutex::new(None),
                    }));
                }
                _ => continue,
            }
        }
    }
}

/// A mark that this process wants `key`: a shared lock on the key's
/// `.waiting` file, held from before it tries the key's lock until it holds
/// it or gives up. The owner reads the marks when its run ends, to know
/// whether anyone is waiting for an outcome it would otherwise not keep.
pub struct WaitMark {
    _file: File,
}

impl WaitMark {
    /// Marks this process as waiting for `key`. `None` when the mark cannot
    /// be made; the wait goes on without it.
    pub fn new(dir: &Path, key: &str) -> Option<WaitMark> {
        let path = dir.join("locks").join(format!("{key}.waiting"));
        // An owner removes an unmarked file under its lock: a mark on that
        // inode would be seen by no one, so it is made again on the new one.
        for _ in 0..10 {
            let file = open_lock_file(&path).ok()?;
            // Never blocks: a mark file someone holds exclusively (an owner
            // tidying it, for a moment, or anyone at all for longer) is tried
            // again on the claim's next poll.
            file.try_lock_shared().ok()?;
            let held = file.metadata().ok()?;
            if fs::metadata(&path).is_ok_and(|now| now.ino() == held.ino() && now.dev() == held.dev()) {
                return Some(WaitMark { _file: file });
            }
        }
        None
    }

    /// Whether some process is waiting for `key` now. Called by the owner,
    /// which holds no mark itself. A file found unmarked is removed, under
    /// its exclusive lock, so marks do not pile up, one per key.
    pub fn anyone_waiting(dir: &Path, key: &str) -> bool {
        let path = dir.join("locks").join(format!("{key}.waiting"));
        let Ok(file) = open_existing(&path) else {
            return false;
        };
        match file.try_lock() {
            Ok(()) => {
                let _ = fs::remove_file(&path);
                false
            }
            Err(_) => true,
        }
    }
}

/// Opens (creating) a `.waiting` file as the key's lock file is opened:
/// in a directory only the user can write, no symlink followed.
fn open_lock_file(path: &Path) -> io::Result<File> {
    if let Some(parent) = path.parent() {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(parent)?;
        trust::check_dir(parent).map_err(io::Error::other)?;
    }
    let options = &mut OpenOptions::new();
    trust::open(path, options.create(true).truncate(false).write(true))
        .map(|(file, _)| file)
        .map_err(io::Error::other)
}

fn open_existing(path: &Path) -> io::Result<File> {
    trust::open(path, OpenOptions::new().write(true))
        .map(|(file, _)| file)
        .map_err(io::Error::other)
}

impl KeyLock {
    /// Shows waiters that the owner lives: a thread of its own sets the lock
    /// file's mtime every [`BEAT`], whatever the rest of lcrun is doing
    /// (blocked writing to a reader that paused, or waiting for a locked
    /// jobs.db), so a live owner is never taken for a stuck one. A stopped
    /// owner (Ctrl-Z) stops beating.
    pub fn keep_alive(&mut self) {
        use std::sync::mpsc;
        let Ok(file) = self.file.try_clone() else { return };
        let _ = file.set_modified(std::time::SystemTime::now());
        let (tx, rx) = mpsc::channel::<()>();
        let beat = move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(BEAT) {
                let _ = file.set_modified(std::time::SystemTime::now());
            }
        };
        if let Ok(thread) = std::thread::Builder::new().name("lcrun-beat".into()).spawn(beat) {
            if let Ok(slot) = self.beat.get_mut() {
                *slot = Some((tx, thread));
            }
        }
    }

    /// Ends the heartbeat thread and waits until it is gone, for a command
    /// that needs its place under a limit of tasks: runs waiting on this
    /// one then see no sign of life, and stop waiting after theirs.
    pub fn stop_beating(&self) {
        let beat = self.beat.lock().ok().and_then(|mut beat| beat.take());
        if let Some((stop, thread)) = beat {
            drop(stop);
            let _ = thread.join();
        }
    }

    /// When the owner of `key` in `dir` last showed it was alive, if a lock
    /// file is there.
    pub fn last_beat(dir: &Path, key: &str) -> Option<std::time::SystemTime> {
        fs::symlink_metadata(dir.join("locks").join(key))
            .ok()?
            .modified()
            .ok()
    }
}

impl Drop for KeyLock {
    fn drop(&mut self) {
        // Waiters cancelled while they waited leave their mark file behind;
        // the owner, ending, removes it if no one else holds a mark on it.
        if let (Some(dir), Some(key)) = (
            self.path.parent().and_then(Path::parent),
            self.path.file_name().and_then(|k| k.to_str()),
        ) {
            WaitMark::anyone_waiting(dir, key);
        }
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

    #[test]
    fn a_wait_mark_is_seen_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!WaitMark::anyone_waiting(dir.path(), "k"));
        let mark = WaitMark::new(dir.path(), "k").expect("mark");
        let other = WaitMark::new(dir.path(), "k").expect("a second mark");
        assert!(WaitMark::anyone_waiting(dir.path(), "k"));
        drop(mark);
        assert!(WaitMark::anyone_waiting(dir.path(), "k"));
        drop(other);
        assert!(!WaitMark::anyone_waiting(dir.path(), "k"));
        assert!(!dir.path().join("locks/k.waiting").exists());
    }
}

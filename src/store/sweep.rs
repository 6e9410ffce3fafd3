//! Sweeping orphaned packs: pack files no blob row names, left by a writer
//! killed before it committed its first row (SIGKILL, the OOM killer, a
//! power cut). Blob rows need no sweep: a row goes with its last use, in
//! the transaction that removes that use, and a pack with its last row.
//!
//! A writer holds an `flock` on its pack from a moment after creating it
//! until its rows are committed (see `append_to_pack`), and the kernel lets
//! go of it when the writer dies: a pack no one holds and no row names is
//! an orphan. Where the filesystem has no such locks, a pack must be an hour
//! old instead. The sweep runs when a writer finds a dead writer's pending
//! record, and after about one commit in 64; never on a hit.

use std::fs::{self, File, TryLockError};
use std::time::{Duration, SystemTime};

use super::blobs::PACK_SUFFIX;
use super::{Store, BLOB_DIR};

/// How old an orphan must be to be swept when no lock can tell whether its
/// writer is alive.
const ORPHAN_AGE: Duration = Duration::from_secs(3600);

/// How old a pack no one holds must be to be swept: its writer takes the
/// lock microseconds after creating it, and checks that it is still there.
const UNHELD_AGE: Duration = Duration::from_secs(2);

/// Whether a pack's writer is alive, as its lock tells.
enum Writer {
    /// Gone, or done: the lock is ours while this is held.
    Gone {
        _lock: File,
    },
    Alive,
    Unknown,
}

impl Store {
    /// Sweeps after about one commit in 64.
    pub(super) fn sweep_now_and_then(&self) {
        let mut byte = [0u8; 1];
        // SAFETY: getrandom writes at most one byte into `byte`.
        let got = unsafe { libc::getrandom(byte.as_mut_ptr().cast(), 1, 0) };
        if got == 1 && byte[0] < 4 {
            self.sweep_orphans();
        }
    }

    /// Removes the packs no row names whose writer is gone. Nothing here is
    /// more than wasted space, so failures are ignored.
    pub(super) fn sweep_orphans(&self) {
        let Ok(files) = fs::read_dir(self.dir.join(BLOB_DIR)) else {
            return;
        };
        let now = SystemTime::now();
        for file in files.flatten() {
            let name = file.file_name();
            let Some(name) = name.to_str().filter(|n| n.ends_with(PACK_SUFFIX)) else {
                continue;
            };
            let age = file
                .metadata()
                .and_then(|m| m.modified())
                .map_or(Duration::ZERO, |t| now.duration_since(t).unwrap_or_default());
            if age < UNHELD_AGE {
                continue;
            }
            // The lock before the look at the rows: a writer commits its
            // rows before it lets go of its pack.
            let writer = writer_of(&file.path());
            let orphan = match writer {
                Writer::Gone { .. } => true,
                Writer::Alive => false,
                Writer::Unknown => age >= ORPHAN_AGE,
            };
            let named = || {
                self.conn
                    .prepare_cached("SELECT 1 FROM blobs WHERE pack = ?1 LIMIT 1")
                    .and_then(|mut stmt| stmt.exists([name]))
                    // Unsure: kept.
                    .unwrap_or(true)
            };
            if orphan && !named() {
                let _ = fs::remove_file(file.path());
            }
            drop(writer);
        }
    }
}

/// Tries the lock of the pack at `path` (opened without following a link).
fn writer_of(path: &std::path::Path) -> Writer {
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(file) = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    else {
        return Writer::Unknown;
    };
    match file.try_lock() {
        Ok(()) => Writer::Gone { _lock: file },
        Err(TryLockError::WouldBlock) => Writer::Alive,
        Err(TryLockError::Error(_)) => Writer::Unknown,
    }
}

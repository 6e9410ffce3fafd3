//! Sweeping orphaned blob files: temp files of writers that died before
//! their rename, and blob files whose row was never written (a writer
//! killed between its rename and its insert). Blob rows need no sweep: a
//! row goes with its last use, in the transaction that removes that use.
//!
//! Amortised: a writer sweeps after about one commit in 64, never a hit.
//! A file younger than an hour is left alone: its writer may be about to
//! insert its row.

use std::fs;
use std::time::{Duration, SystemTime};

use super::{Store, BLOB_DIR};
use crate::blob::Digest;

/// How temp files of blobs begin; a blob file's own name is 64 hex digits.
pub(super) const TEMP_PREFIX: &str = ".tmp-";

/// How old an orphan must be to be swept.
const ORPHAN_AGE: Duration = Duration::from_secs(3600);

impl Store {
    /// Sweeps after about one commit in 64.
    pub(super) fn sweep_now_and_then(&self) {
        let mut byte = [0u8; 1];
        // SAFETY: getrandom writes at most one byte into `byte`.
        let got = unsafe { libc::getrandom(byte.as_mut_ptr().cast(), 1, 0) };
        if got == 1 && byte[0] < 4 {
            self.sweep_orphans(ORPHAN_AGE);
        }
    }

    /// Removes blob files older than `age` that no row names, and temp
    /// files as old. Nothing here is more than wasted space, so failures
    /// are ignored.
    pub(super) fn sweep_orphans(&self, age: Duration) {
        let Ok(dirs) = fs::read_dir(self.dir.join(BLOB_DIR)) else {
            return;
        };
        let now = SystemTime::now();
        for dir in dirs.flatten() {
            if !dir.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Ok(files) = fs::read_dir(dir.path()) else {
                continue;
            };
            for file in files.flatten() {
                let old = file
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| now.duration_since(t).unwrap_or_default() >= age);
                if !old {
                    continue;
                }
                let name = file.file_name();
                let name = name.to_string_lossy();
                let orphan = if name.starts_with(TEMP_PREFIX) {
                    true
                } else {
                    match Digest::from_hex(&name) {
                        Some(digest) => !self.blob_row_exists(&digest),
                        None => false,
                    }
                };
                if orphan {
                    let _ = fs::remove_file(file.path());
                }
            }
        }
    }

    fn blob_row_exists(&self, digest: &Digest) -> bool {
        self.conn
            .prepare_cached("SELECT 1 FROM blobs WHERE digest = ?1")
            .and_then(|mut stmt| stmt.exists([&digest.as_bytes()[..]]))
            // Unsure: kept.
            .unwrap_or(true)
    }
}

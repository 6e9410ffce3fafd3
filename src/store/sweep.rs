//! Sweeping orphaned packs: pack files no blob row names, left by a writer
//! killed before it wrote its first row. Blob rows need no sweep: a row
//! goes with its last use, in the transaction that removes that use, and a
//! pack with its last row.
//!
//! Amortised: a writer sweeps after about one commit in 64, never a hit.
//! A pack younger than an hour is left alone: its writer may be about to
//! insert its first row.

use std::fs;
use std::time::{Duration, SystemTime};

use super::blobs::PACK_SUFFIX;
use super::{Store, BLOB_DIR};

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

    /// Removes packs older than `age` that no row names. Nothing here is
    /// more than wasted space, so failures are ignored.
    pub(super) fn sweep_orphans(&self, age: Duration) {
        let Ok(files) = fs::read_dir(self.dir.join(BLOB_DIR)) else {
            return;
        };
        let now = SystemTime::now();
        for file in files.flatten() {
            let name = file.file_name();
            let Some(name) = name.to_str().filter(|n| n.ends_with(PACK_SUFFIX)) else {
                continue;
            };
            let old = file
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).unwrap_or_default() >= age);
            let named = self
                .conn
                .prepare_cached("SELECT 1 FROM blobs WHERE pack = ?1 LIMIT 1")
                .and_then(|mut stmt| stmt.exists([name]))
                // Unsure: kept.
                .unwrap_or(true);
            if old && !named {
                let _ = fs::remove_file(file.path());
            }
        }
    }
}

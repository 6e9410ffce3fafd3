//! Counting hits without writing to SQLite on a hit: an append-only log,
//! folded into the entries table by the next write.

use std::fs::{self, OpenOptions};

use rusqlite::{params, TransactionBehavior};

use super::recording::new_token;
use super::{now_ms, Store, StoreError};
use crate::trust;

/// Where hits are counted until the next write folds them in.
pub(super) const HIT_LOG: &str = "hits.log";

/// A hit folds the hit log into the table once it is this large (about
/// 12,000 hits), so the log stays small in a cache that is only read.
pub(super) const HIT_LOG_FOLD_BYTES: u64 = 1 << 20;

impl Store {
    /// Counts a replay of `entry` (for listings and least-recently-used
    /// pruning). A hit must not write to SQLite: a write leaves WAL frames
    /// that every later process has to index when it opens the database,
    /// which made hits twice as slow. The hit goes to an append-only log
    /// instead, folded into the table by the next write.
    pub fn record_hit(&self, key: &str) -> Result<(), StoreError> {
        let path = self.dir.join(HIT_LOG);
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let line = format!("{key} {}\n", now_ms());
        // Never through a symlink, and only into a file of our own: the
        // check is the fstat that gives the size below.
        let (mut log, meta) = trust::open(&path, OpenOptions::new().create(true).append(true))?;
        // One write on an O_APPEND file: lines from parallel hits never mix.
        std::io::Write::write_all(&mut log, line.as_bytes()).map_err(io)?;
        // A cache that only ever hits has no writer to fold the log: fold it
        // here now and then, so it never grows without bound.
        if meta.len() + line.len() as u64 > HIT_LOG_FOLD_BYTES {
            self.conn.pragma_update(None, "synchronous", "NORMAL")?;
            self.fold_hits()?;
            self.tidy_wal();
        }
        Ok(())
    }

    /// Moves the hit log's counts into the entries table.
    pub(super) fn fold_hits(&self) -> Result<(), StoreError> {
        let log = self.dir.join(HIT_LOG);
        // A random name: pids repeat across PID namespaces sharing a cache.
        let taken = self.dir.join(format!("{HIT_LOG}.{}", new_token()));
        // Renamed first, so hits logged meanwhile go to a new file.
        if fs::rename(&log, &taken).is_err() {
            return Ok(());
        }
        let text = match trust::open(&taken, OpenOptions::new().read(true)) {
            Ok((mut file, _)) => {
                let mut text = String::new();
                let _ = std::io::Read::read_to_string(&mut file, &mut text);
                text
            }
            Err(_) => String::new(),
        };
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        {
            let mut update = tx.prepare_cached(
                "UPDATE entries SET hits = hits + 1, last_used_ms = max(last_used_ms, ?2) WHERE key = ?1",
            )?;
            for line in text.lines() {
                if let Some((key, ms)) = line.split_once(' ') {
                    update.execute(params![key, ms.parse::<i64>().unwrap_or(0)])?;
                }
            }
        }
        tx.commit()?;
        let _ = fs::remove_file(&taken);
        Ok(())
    }
}

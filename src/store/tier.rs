//! The seam for tiers: where a record meets a store. A tier keeps action
//! records by key ([`ActionCache`]) and blobs by digest ([`BlobStore`]). The
//! local tier (this folder: SQLite and files) is one; a shared remote tier
//! (a Bazel-style HTTP `ac/` + `cas/`, Redis) is one file implementing both,
//! added to the chain ([`super::chain`]) and nothing else.

use rusqlite::{params, TransactionBehavior};

use super::blobs::LocalBlobs;
use super::record::Record;
use super::{now_ms, record_sum, to_json, Store, StoreError};
use crate::blob::{BlobError, BlobStore, Digest};

/// Action records by key (the hex SHA-256 of an invocation).
pub trait ActionCache {
    /// The record stored under `key`, if any.
    fn get_record(&self, key: &str) -> Result<Option<Record>, StoreError>;
    /// Stores `record` under `key`, replacing any other. Every blob it
    /// names must be in the tier already: blobs first, record last, so a
    /// reader never finds a record whose blobs are missing.
    fn put_record(&self, key: &str, record: &Record) -> Result<(), StoreError>;
}

/// A whole tier: records and their blobs.
pub trait Tier: ActionCache + BlobStore {}

impl<T: ActionCache + BlobStore> Tier for T {}

impl ActionCache for Store {
    fn get_record(&self, key: &str) -> Result<Option<Record>, StoreError> {
        Ok(self.lookup(key)?.map(|entry| entry.record))
    }

    fn put_record(&self, key: &str, record: &Record) -> Result<(), StoreError> {
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        let mut missing = None;
        for digest in record.blobs() {
            let stored = tx
                .prepare_cached("SELECT 1 FROM blobs WHERE digest = ?1")?
                .exists([&digest.as_bytes()[..]])?;
            if !stored {
                missing = Some(*digest);
                break;
            }
        }
        if let Some(digest) = missing {
            return Err(StoreError::Damaged(format!("blob {digest} is missing")));
        }
        let older: Vec<i64> = tx
            .prepare("SELECT id FROM entries WHERE key = ?1")?
            .query_map([key], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        let created_ms = now_ms();
        tx.execute(
            "INSERT INTO entries (key, created_ms, last_used_ms, bytes, hits, meta) VALUES (NULL, ?1, ?1, 0, 0, '{}')",
            [created_ms],
        )?;
        let id = tx.last_insert_rowid();
        for digest in record.blobs() {
            tx.prepare_cached("INSERT OR IGNORE INTO uses (entry_id, digest) VALUES (?1, ?2)")?
                .execute(params![id, &digest.as_bytes()[..]])?;
        }
        // The older record goes after the new one uses the shared blobs.
        self.delete_rows(&tx, &older)?;
        let meta = to_json(record);
        tx.execute(
            "UPDATE entries SET key = ?2, meta = ?3, sum = ?4 WHERE id = ?1",
            params![id, key, meta, record_sum(key, created_ms, &meta)],
        )?;
        tx.commit()?;
        Ok(())
    }
}

impl BlobStore for Store {
    fn has(&self, digest: &Digest) -> Result<bool, BlobError> {
        LocalBlobs::new(self, None).has(digest)
    }

    fn put(&self, digest: &Digest, bytes: &[u8]) -> Result<(), BlobError> {
        LocalBlobs::new(self, None).put(digest, bytes)
    }

    fn get(&self, digest: &Digest, buf: &mut Vec<u8>) -> Result<(), BlobError> {
        LocalBlobs::new(self, None).get(digest, buf)
    }
}

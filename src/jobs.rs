//! The jobs table: which lcrun runs which key right now, and its latest
//! progress, so identical invocations can wait on it and show it. It lives in
//! its own database file, so a cache hit never pays for its schema.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use sha2::{Digest, Sha256};

use crate::db;
use crate::progress::State;
use crate::store::{now_ms, StoreError};

/// How long registering or ending a job waits for another writer. Writers
/// of jobs.db hold it for one short statement, so this is ample for any
/// number of parallel runs, and short enough that a process stuck in a
/// transaction on jobs.db delays no command's start by more than this.
const BUSY: Duration = Duration::from_millis(500);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id         TEXT PRIMARY KEY,
    key        TEXT NOT NULL,
    command    TEXT NOT NULL,
    pid        INTEGER NOT NULL,
    state      TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    status     INTEGER,
    progress   TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS jobs_by_key ON jobs (key, state);
";

/// How long an ended job stays in the jobs table (a week, in ms).
const JOBS_KEPT_MS: i64 = 7 * 24 * 3600 * 1000;

/// A job as the jobs table records it.
#[derive(Debug, Clone)]
pub struct JobRecord {
    /// The opaque job id.
    pub id: String,
    /// The pid of the lcrun that runs it.
    pub pid: i64,
    /// When it started (ms since the epoch).
    pub started_ms: i64,
    /// When its owner last showed a sign of life (ms since the epoch): it
    /// refreshes this while the command runs, see [`Jobs::progress`].
    pub updated_ms: i64,
    /// Its last reported progress.
    pub progress: State,
}

/// The jobs database of one cache directory.
pub struct Jobs {
    conn: Connection,
}

impl Jobs {
    /// Opens (creating if needed) `jobs.db` in the cache directory.
    pub fn open(dir: &Path) -> Result<Jobs, StoreError> {
        match Jobs::open_file(dir) {
            // It only says what runs now: a damaged file is replaced, not
            // kept for a look, and not warned about.
            Err(err) if err.is_corrupt() => {
                for name in ["jobs.db", "jobs.db-wal", "jobs.db-shm"] {
                    let _ = std::fs::remove_file(dir.join(name));
                }
                Jobs::open_file(dir)
            }
            result => result,
        }
    }

    fn open_file(dir: &Path) -> Result<Jobs, StoreError> {
        let path = dir.join("jobs.db");
        // Like the store's WAL files, jobs.db's stay when it closes, and the
        // close does not checkpoint: that was 2 fsyncs, 2 unlinks and a
        // re-creation on every run.
        let conn = db::open(&path)?.conn;
        conn.busy_timeout(BUSY)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
        if version == 0 {
            // Nothing to lose in a file being created (4 fsyncs otherwise).
            db::start_wal(&conn)?;
            conn.execute_batch(SCHEMA)?;
            conn.pragma_update(None, "user_version", 1)?;
        }
        // What runs now, not a record to keep: a power cut may lose the last
        // updates, never the file (WAL).
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // The WAL is kept between runs (see above) and grew by a few KiB a
        // run up to SQLite's 1000-page checkpoint, 4 MB of a small disk for
        // a table of a few rows: checkpoint at 64 pages and cut the file
        // back to 256 KiB when it restarts.
        conn.pragma_update(None, "wal_autocheckpoint", 64)?;
        conn.pragma_update(None, "journal_size_limit", 256 * 1024)?;
        Ok(Jobs { conn })
    }

    /// Records that this process now runs `key`. Any other job still marked
    /// running for the key is lost: we hold the key's lock, so its owner died.
    pub fn start(&self, key: &str, command: &str) -> Result<String, StoreError> {
        let pid = std::process::id();
        let now = now_ms();
        let seed = format!("{key}:{pid}:{:?}", SystemTime::now());
        let id = crate::key::hex(&Sha256::digest(seed))[..16].to_owned();
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        tx.execute(
            "UPDATE jobs SET state = 'lost', updated_ms = ?2 WHERE key = ?1 AND state = 'running'",
            params![key, now],
        )?;
        // Ended jobs stay listed for a week, then go: one row a run would
        // grow the file without bound.
        tx.execute(
            "DELETE FROM jobs WHERE state != 'running' AND updated_ms < ?1",
            params![now - JOBS_KEPT_MS],
        )?;
        tx.execute(
            "INSERT INTO jobs (id, key, command, pid, state, started_ms, updated_ms)
             VALUES (?1, ?2, ?3, ?4, 'running', ?5, ?5)",
            params![id, key, command, pid, now],
        )?;
        tx.commit()?;
        Ok(id)
    }

    /// Publishes a running job's progress for the processes waiting on it,
    /// and with it a sign that its owner is alive. It is called from the
    /// loop that streams the command's output, so it never waits: when
    /// another process holds jobs.db, this update is skipped.
    pub fn progress(&self, id: &str, progress: &State) -> Result<(), StoreError> {
        let json = serde_json::to_string(progress).unwrap_or_default();
        self.conn.busy_timeout(Duration::ZERO)?;
        let result = self.conn.execute(
            "UPDATE jobs SET progress = ?2, updated_ms = ?3 WHERE id = ?1",
            params![id, json, now_ms()],
        );
        self.conn.busy_timeout(BUSY)?;
        result?;
        Ok(())
    }

    /// Records how a job ended: `done`, `failed` or `cancelled`.
    pub fn finish(&self, id: &str, state: &str, status: u8) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE jobs SET state = ?2, status = ?3, updated_ms = ?4 WHERE id = ?1",
            params![id, state, status, now_ms()],
        )?;
        Ok(())
    }

    /// The newest job marked running for `key`.
    pub fn running(&self, key: &str) -> Result<Option<JobRecord>, StoreError> {
        let job = self
            .conn
            .prepare_cached(
                "SELECT id, pid, started_ms, updated_ms, progress FROM jobs WHERE key = ?1 AND state = 'running'
                 ORDER BY started_ms DESC LIMIT 1",
            )?
            .query_row([key], |row| {
                Ok(JobRecord {
                    id: row.get(0)?,
                    pid: row.get(1)?,
                    started_ms: row.get(2)?,
                    updated_ms: row.get(3)?,
                    progress: serde_json::from_str(&row.get::<_, String>(4)?).unwrap_or_default(),
                })
            })
            .optional()?;
        Ok(job)
    }
}

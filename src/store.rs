//! The local cache tier: one SQLite database (WAL) holding entries and their
//! output as ordered, compressed chunks tagged stdout/stderr. An entry is
//! written while pending and becomes visible in one short transaction at the
//! end, so a crash or a cancelled run never leaves anything a reader replays.

use std::fs::{self, DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior};

use crate::output::Stream;
use crate::progress::State;
use sha2::{Digest, Sha256};

/// The schema this build writes; `PRAGMA user_version` carries it.
const SCHEMA_VERSION: i64 = 1;

/// Raw bytes gathered before a chunk is compressed and stored. Bounds memory
/// per run, and is large enough that zstd finds the repetition in build logs.
pub const CHUNK_BYTES: usize = 256 * 1024;

/// zstd level for stored output: fast enough to keep up with a pipe, and
/// build logs still shrink about tenfold.
const ZSTD_LEVEL: i32 = 1;

const CODEC_RAW: i64 = 0;
const CODEC_ZSTD: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE entries (
    id           INTEGER PRIMARY KEY,
    key          TEXT NOT NULL,
    complete     INTEGER NOT NULL DEFAULT 0,
    command      TEXT NOT NULL,
    cwd          TEXT NOT NULL DEFAULT '',
    inputs       TEXT NOT NULL DEFAULT '[]',
    created_ms   INTEGER NOT NULL,
    duration_ms  INTEGER NOT NULL DEFAULT 0,
    status       INTEGER NOT NULL DEFAULT 0,
    stdout_bytes INTEGER NOT NULL DEFAULT 0,
    stderr_bytes INTEGER NOT NULL DEFAULT 0,
    stored_bytes INTEGER NOT NULL DEFAULT 0,
    hits         INTEGER NOT NULL DEFAULT 0,
    last_used_ms INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX entries_by_key ON entries(key) WHERE complete = 1;
CREATE INDEX pending_by_key ON entries(key) WHERE complete = 0;
CREATE TABLE chunks (
    entry_id INTEGER NOT NULL,
    seq      INTEGER NOT NULL,
    stream   INTEGER NOT NULL,
    codec    INTEGER NOT NULL,
    raw_len  INTEGER NOT NULL,
    data     BLOB NOT NULL,
    PRIMARY KEY (entry_id, seq)
);
CREATE TABLE jobs (
    id          TEXT PRIMARY KEY,
    key         TEXT NOT NULL,
    command     TEXT NOT NULL,
    pid         INTEGER NOT NULL,
    state       TEXT NOT NULL,
    started_ms  INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL,
    status      INTEGER,
    progress    TEXT NOT NULL DEFAULT ''
);
CREATE INDEX jobs_by_key ON jobs(key);
";

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused.
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A file or directory could not be used.
    #[error("{path}: {source}")]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The database was written by a newer lcrun.
    #[error("cache schema version {0} is newer than this lcrun understands")]
    TooNew(i64),
    /// Stored output failed to decompress.
    #[error("stored output is damaged: {0}")]
    Damaged(String),
}

impl StoreError {
    /// True when the database file itself is not a usable database, so moving
    /// it aside and starting afresh is the cure.
    pub fn is_corrupt(&self) -> bool {
        match self {
            StoreError::Sqlite(err) => matches!(
                err.sqlite_error_code(),
                Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt)
            ),
            StoreError::Damaged(_) => true,
            _ => false,
        }
    }
}

/// A complete entry's record.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Row id, private to this database.
    pub id: i64,
    /// The command as the user wrote it, for listings.
    pub command: String,
    /// When the result was stored (ms since the epoch).
    pub created_ms: i64,
    /// How long the command ran.
    pub duration: Duration,
    /// The command's exit status.
    pub status: u8,
}

impl Entry {
    /// How old the entry is now.
    pub fn age(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.created_ms).max(0) as u64)
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The SQLite tier.
pub struct Store {
    conn: Connection,
    dir: PathBuf,
}

/// Creates `dir` (0700) if needed.
pub fn create_dir(dir: &Path) -> Result<(), StoreError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StoreError::Io {
            path: dir.to_owned(),
            source,
        })
}

impl Store {
    /// Opens (creating if needed) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join("cache.db");
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        // The hit path: the database exists, so skip the mkdir and create.
        let conn = match Connection::open_with_flags(&path, flags) {
            Ok(conn) => conn,
            Err(_) => {
                create_dir(dir)?;
                // Create the file ourselves so it is 0600 from its first
                // byte; SQLite gives the -wal and -shm files the same mode.
                if let Err(source) = OpenOptions::new().create(true).append(true).mode(0o600).open(&path) {
                    return Err(StoreError::Io { path, source });
                }
                Connection::open_with_flags(&path, flags)?
            }
        };
        // Writers hold the lock for one short transaction; parallel `make -j`
        // runs wait their turn instead of failing with "database is locked".
        conn.busy_timeout(Duration::from_secs(20))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        persist_wal(&conn);
        let store = Store { conn, dir: dir.to_owned() };
        store.migrate()?;
        Ok(store)
    }

    /// Opens the database, moving a corrupt file aside and starting afresh.
    /// Returns the store and, when that happened, what was wrong.
    pub fn open_or_recover(dir: &Path) -> Result<(Store, Option<String>), StoreError> {
        match Store::open(dir) {
            Ok(store) => Ok((store, None)),
            Err(err) if err.is_corrupt() => {
                let moved = move_aside(dir)?;
                let store = Store::open(dir)?;
                Ok((
                    store,
                    Some(format!(
                        "cache database was damaged ({err}); moved it to {}",
                        moved.display()
                    )),
                ))
            }
            Err(err) => Err(err),
        }
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let version: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |row| row.get(0))?;
        if version == SCHEMA_VERSION {
            return Ok(());
        }
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew(version));
        }
        // WAL is a property of the file; set it once, outside a transaction.
        self.conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(()))?;
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        // Another process may have created the schema while we waited.
        let version: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
        if version == 0 {
            tx.execute_batch(SCHEMA)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The complete entry stored under `key`, if any.
    pub fn lookup(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, command, created_ms, duration_ms, status FROM entries WHERE key = ?1 AND complete = 1",
        )?;
        let entry = stmt
            .query_row([key], |row| {
                Ok(Entry {
                    id: row.get(0)?,
                    command: row.get(1)?,
                    created_ms: row.get(2)?,
                    duration: Duration::from_millis(row.get::<_, i64>(3)?.max(0) as u64),
                    status: row.get::<_, i64>(4)?.clamp(0, 255) as u8,
                })
            })
            .optional()?;
        Ok(entry)
    }

    /// Streams an entry's output, chunk by chunk in recorded order, to `sink`.
    /// Memory stays bounded by one chunk whatever the output's size.
    pub fn replay(
        &self,
        entry: &Entry,
        mut sink: impl FnMut(Stream, &[u8]) -> std::io::Result<()>,
    ) -> Result<(), StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT stream, codec, raw_len, data FROM chunks WHERE entry_id = ?1 ORDER BY seq",
        )?;
        let mut rows = stmt.query([entry.id])?;
        let mut decompressor =
            zstd::bulk::Decompressor::new().map_err(|e| StoreError::Damaged(e.to_string()))?;
        let mut buf = Vec::new();
        while let Some(row) = rows.next()? {
            let stream =
                Stream::from_tag(row.get(0)?).ok_or_else(|| StoreError::Damaged("unknown stream".into()))?;
            let codec: i64 = row.get(1)?;
            let raw_len = row.get::<_, i64>(2)?.max(0) as usize;
            let data = row.get_ref(3)?.as_blob().map_err(rusqlite::Error::from)?;
            let bytes = match codec {
                CODEC_RAW => data,
                CODEC_ZSTD => {
                    buf.clear();
                    buf.reserve(raw_len);
                    decompressor
                        .decompress_to_buffer(data, &mut buf)
                        .map_err(|e| StoreError::Damaged(e.to_string()))?;
                    &buf[..]
                }
                other => return Err(StoreError::Damaged(format!("unknown codec {other}"))),
            };
            if bytes.len() != raw_len {
                return Err(StoreError::Damaged("chunk length mismatch".into()));
            }
            if let Err(source) = sink(stream, bytes) {
                return Err(StoreError::Io {
                    path: PathBuf::from("<output>"),
                    source,
                });
            }
        }
        Ok(())
    }

    /// Counts a replay of `entry` (for listings and least-recently-used pruning).
    pub fn record_hit(&self, entry: &Entry) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE entries SET hits = hits + 1, last_used_ms = ?2 WHERE id = ?1",
            params![entry.id, now_ms()],
        )?;
        Ok(())
    }

    /// Starts recording a new result for `key`. The caller must hold the key's
    /// lock: pending rows of this key left by a writer that died are removed.
    pub fn begin(
        &self,
        key: &crate::key::Key,
        command: &str,
        cwd: &str,
    ) -> Result<Recording<'_>, StoreError> {
        self.delete_pending(&key.hex)?;
        let inputs = serde_json::to_string(&key.inputs).unwrap_or_else(|_| "[]".into());
        self.conn.execute(
            "INSERT INTO entries (key, complete, command, cwd, inputs, created_ms) VALUES (?1, 0, ?2, ?3, ?4, ?5)",
            params![key.hex, command, cwd, inputs, now_ms()],
        )?;
        let compressor =
            zstd::bulk::Compressor::new(ZSTD_LEVEL).map_err(|e| StoreError::Damaged(e.to_string()))?;
        Ok(Recording {
            store: self,
            key: key.hex.clone(),
            id: self.conn.last_insert_rowid(),
            seq: 0,
            pending: Vec::with_capacity(CHUNK_BYTES),
            pending_stream: Stream::Stdout,
            compressor,
            bytes: [0, 0],
            stored: 0,
        })
    }

    fn delete_pending(&self, key: &str) -> Result<(), StoreError> {
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        tx.execute(
            "DELETE FROM chunks WHERE entry_id IN (SELECT id FROM entries WHERE key = ?1 AND complete = 0)",
            [key],
        )?;
        tx.execute("DELETE FROM entries WHERE key = ?1 AND complete = 0", [key])?;
        tx.commit()?;
        Ok(())
    }

    fn delete_entry(&self, id: i64) -> Result<(), StoreError> {
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        tx.execute("DELETE FROM chunks WHERE entry_id = ?1", [id])?;
        tx.execute("DELETE FROM entries WHERE id = ?1", [id])?;
        tx.commit()?;
        Ok(())
    }
}

/// A job as the `jobs` table records it.
#[derive(Debug, Clone)]
pub struct JobRecord {
    /// The opaque job id.
    pub id: String,
    /// The pid of the lcrun that runs it.
    pub pid: i64,
    /// When it started (ms since the epoch).
    pub started_ms: i64,
    /// Its last reported progress.
    pub progress: State,
}

impl Store {
    /// Records that this process now runs `key`. Any other job still marked
    /// running for the key is lost: we hold the key's lock, so its owner died.
    pub fn job_start(&self, key: &str, command: &str) -> Result<String, StoreError> {
        let pid = std::process::id();
        let now = now_ms();
        let id =
            crate::key::hex(&Sha256::digest(format!("{key}:{pid}:{:?}", SystemTime::now())))[..16].to_owned();
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        tx.execute(
            "UPDATE jobs SET state = 'lost', updated_ms = ?2 WHERE key = ?1 AND state = 'running'",
            params![key, now],
        )?;
        tx.execute(
            "INSERT INTO jobs (id, key, command, pid, state, started_ms, updated_ms) VALUES (?1, ?2, ?3, ?4, 'running', ?5, ?5)",
            params![id, key, command, pid, now],
        )?;
        tx.commit()?;
        Ok(id)
    }

    /// Publishes a running job's progress for the processes waiting on it.
    pub fn job_progress(&self, id: &str, progress: &State) -> Result<(), StoreError> {
        let json = serde_json::to_string(progress).unwrap_or_default();
        self.conn.execute(
            "UPDATE jobs SET progress = ?2, updated_ms = ?3 WHERE id = ?1",
            params![id, json, now_ms()],
        )?;
        Ok(())
    }

    /// Records how a job ended: `done`, `failed` or `cancelled`.
    pub fn job_finish(&self, id: &str, state: &str, status: u8) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE jobs SET state = ?2, status = ?3, updated_ms = ?4 WHERE id = ?1",
            params![id, state, status, now_ms()],
        )?;
        Ok(())
    }

    /// The newest job marked running for `key`.
    pub fn running_job(&self, key: &str) -> Result<Option<JobRecord>, StoreError> {
        let job = self
            .conn
            .prepare_cached(
                "SELECT id, pid, started_ms, progress FROM jobs WHERE key = ?1 AND state = 'running'
                 ORDER BY started_ms DESC LIMIT 1",
            )?
            .query_row([key], |row| {
                Ok(JobRecord {
                    id: row.get(0)?,
                    pid: row.get(1)?,
                    started_ms: row.get(2)?,
                    progress: serde_json::from_str(&row.get::<_, String>(3)?).unwrap_or_default(),
                })
            })
            .optional()?;
        Ok(job)
    }
}

/// Keeps the -wal and -shm files when the last connection closes. Without
/// it every lcrun call that is the only one open deletes and recreates both
/// files (unlink, ftruncate, fchown): most of a cache hit's file-system work.
fn persist_wal(conn: &Connection) {
    let mut on: std::ffi::c_int = 1;
    // SAFETY: a documented file-control opcode on our own open handle, with
    // a pointer to an int as it requires.
    unsafe {
        rusqlite::ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            rusqlite::ffi::SQLITE_FCNTL_PERSIST_WAL,
            (&raw mut on).cast(),
        );
    }
}

/// Renames a damaged database (and its WAL files) out of the way.
fn move_aside(dir: &Path) -> Result<PathBuf, StoreError> {
    let path = dir.join("cache.db");
    let moved = dir.join(format!("cache.db.corrupt-{}", now_ms()));
    fs::rename(&path, &moved).map_err(|source| StoreError::Io {
        path: path.clone(),
        source,
    })?;
    for suffix in ["-wal", "-shm"] {
        let side = dir.join(format!("cache.db{suffix}"));
        let _ = fs::rename(&side, dir.join(format!("{}{suffix}", moved.display())));
    }
    Ok(moved)
}

/// A result being recorded. Output goes in as it arrives; nothing is visible
/// to readers until [`Recording::finish`].
pub struct Recording<'s> {
    store: &'s Store,
    key: String,
    id: i64,
    seq: i64,
    pending: Vec<u8>,
    pending_stream: Stream,
    compressor: zstd::bulk::Compressor<'static>,
    bytes: [i64; 2],
    stored: i64,
}

impl Recording<'_> {
    /// Appends output. Consecutive bytes of one stream are gathered into
    /// chunks of about [`CHUNK_BYTES`]; a switch of stream starts a new chunk,
    /// which is what keeps the interleaving of stdout and stderr.
    pub fn write(&mut self, stream: Stream, bytes: &[u8]) -> Result<(), StoreError> {
        if stream != self.pending_stream && !self.pending.is_empty() {
            self.flush()?;
        }
        self.pending_stream = stream;
        self.bytes[stream as usize - 1] += bytes.len() as i64;
        self.pending.extend_from_slice(bytes);
        if self.pending.len() >= CHUNK_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let compressed = self
            .compressor
            .compress(&self.pending)
            .map_err(|e| StoreError::Damaged(e.to_string()))?;
        let (codec, data) = if compressed.len() < self.pending.len() {
            (CODEC_ZSTD, &compressed[..])
        } else {
            (CODEC_RAW, &self.pending[..])
        };
        self.store
            .conn
            .prepare_cached("INSERT INTO chunks (entry_id, seq, stream, codec, raw_len, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?
            .execute(params![self.id, self.seq, self.pending_stream.tag(), codec, self.pending.len() as i64, data])?;
        self.stored += data.len() as i64;
        self.seq += 1;
        self.pending.clear();
        Ok(())
    }

    /// Makes the result visible under its key, replacing any older entry.
    pub fn finish(mut self, status: u8, duration: Duration) -> Result<(), StoreError> {
        self.flush()?;
        let conn = &self.store.conn;
        let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
        let old: Option<i64> = tx
            .query_row(
                "SELECT id FROM entries WHERE key = ?1 AND complete = 1",
                [&self.key],
                |row| row.get(0),
            )
            .optional()?;
        if let Some(old) = old {
            tx.execute("DELETE FROM chunks WHERE entry_id = ?1", [old])?;
            tx.execute("DELETE FROM entries WHERE id = ?1", [old])?;
        }
        tx.execute(
            "UPDATE entries SET complete = 1, status = ?2, duration_ms = ?3, created_ms = ?4, last_used_ms = ?4,
                    stdout_bytes = ?5, stderr_bytes = ?6, stored_bytes = ?7 WHERE id = ?1",
            params![
                self.id,
                status,
                duration.as_millis() as i64,
                now_ms(),
                self.bytes[0],
                self.bytes[1],
                self.stored
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Drops what was recorded (a failure not to be cached, a cancelled run).
    pub fn abandon(self) -> Result<(), StoreError> {
        self.store.delete_entry(self.id)
    }
}

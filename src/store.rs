//! The local cache tier: one SQLite database (WAL) holding entries and their
//! output as ordered, compressed chunks tagged stdout/stderr. An entry is
//! written while pending and becomes visible in one short transaction at the
//! end, so a crash or a cancelled run never leaves anything a reader replays.
//!
//! Large chunks keep only their place in SQLite; their bytes are appended to
//! one data file per entry under `data/`. In SQLite every 4 KiB page of a
//! blob is written twice (WAL, then checkpoint) with a syscall each: a
//! 1 GiB miss took 1.3 s with its chunks in SQLite and 0.8 s with their
//! bytes left out, against 0.9 s for `cat | cat`.

use std::fs::{self, DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior};

use crate::compress::{self, Codec, Packed, Packer};
use crate::key::KeyInput;
use crate::output::Stream;

/// The schema this build writes; `PRAGMA user_version` carries it.
const SCHEMA_VERSION: i64 = 3;

/// Raw bytes gathered before a chunk is compressed and stored. Bounds memory
/// per run, and is large enough that zstd finds the repetition in build logs.
pub const CHUNK_BYTES: usize = 256 * 1024;

/// How long a write waits for another process's write transaction.
const BUSY_TIMEOUT: Duration = Duration::from_secs(20);

/// Stored chunks at least this large go to the entry's data file; smaller
/// ones (every chunk of a short output) stay in SQLite, so replaying them
/// opens nothing more.
const FILE_CHUNK_BYTES: usize = 16 * 1024;

/// The directory of data files, in the cache directory.
const DATA_DIR: &str = "data";

/// Where hits are counted until the next write folds them in.
const HIT_LOG: &str = "hits.log";

/// A hit folds the hit log into the table once it is this large (about
/// 12,000 hits), so the log stays small in a cache that is only read.
const HIT_LOG_FOLD_BYTES: u64 = 1 << 20;

/// An outcome kept only for the runs that waited on it (a failure that
/// policy does not cache) is stored under its key with this prefix, which no
/// hex key has, so no lookup of a key ever finds it; see
/// [`Recording::share`]. It is swept by later writes once this old.
const OUTCOME_PREFIX: &str = "~";
const OUTCOME_KEEP_MS: i64 = 60_000;

/// Kept small on purpose: every new connection parses the whole schema
/// before its first statement, and that parse was most of a cache hit's
/// instructions when the schema had four tables and four indexes. For the
/// same reason the columns carry no declared types or NOT NULL (the code
/// writes every value): the parse cost 16k more of a hit's 503k
/// instructions with them. The columns:
///
/// - `entries`: `id` (rowid), `key` (hex SHA-256; NULL while pending, so
///   readers never see a pending entry), `created_ms`, `last_used_ms` (ms
///   since the epoch), `bytes` (stored size), `hits`, `meta` (JSON, see
///   [`Meta`]), `file` (its data file under `data/`, or NULL).
/// - `chunks`: `entry_id`, `seq` (order of output), `stream` (1 stdout,
///   2 stderr), `codec` ([`Codec`]), `raw_len`, and the stored bytes:
///   `data`, or, when that is NULL, the next `file_len` bytes of the
///   entry's data file.
const SCHEMA: &str = "
CREATE TABLE entries(id INTEGER PRIMARY KEY,key TEXT UNIQUE,created_ms,last_used_ms,bytes,hits,meta,file);
CREATE TABLE chunks(entry_id,seq,stream,codec,raw_len,data,file_len,PRIMARY KEY(entry_id,seq));
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
    /// The entry was replaced or removed (a refresh, an identical run)
    /// between its lookup and its replay.
    #[error("the entry was replaced while it was being read")]
    Gone,
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

/// What an entry records besides its key and output: one JSON column, so
/// the schema stays small and new facts need no migration.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Meta {
    /// The command as the user wrote it, for listings.
    pub command: String,
    /// The working directory it ran in.
    pub cwd: String,
    /// The key's inputs, as digests.
    pub inputs: Vec<KeyInput>,
    /// How long the command ran (ms).
    pub duration_ms: u64,
    /// The command's exit status.
    pub status: u8,
    /// Raw bytes of stdout.
    pub stdout_bytes: u64,
    /// Raw bytes of stderr.
    pub stderr_bytes: u64,
    /// While pending: the key it will be stored under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_key: Option<String>,
    /// While pending: the pid of the lcrun writing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

/// A complete entry's record.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Row id, private to this database.
    pub id: i64,
    /// The key it is stored under.
    pub key: String,
    /// When the result was stored (ms since the epoch).
    pub created_ms: i64,
    /// Its data file under `data/`, if it has one.
    pub file: Option<String>,
    /// Everything else it records.
    pub meta: Meta,
}

impl Entry {
    /// How old the entry is now.
    pub fn age(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.created_ms).max(0) as u64)
    }

    /// How long the command ran.
    pub fn duration(&self) -> Duration {
        Duration::from_millis(self.meta.duration_ms)
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

/// Creates a database file ourselves, if missing, so it is 0600 from its
/// first byte; SQLite gives its -wal and -shm files the same mode.
pub fn create_private_file(path: &Path) -> Result<(), StoreError> {
    match OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(source) => Err(StoreError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

impl Store {
    /// Opens (creating if needed) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        configure_sqlite();
        let path = dir.join("cache.db");
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        // The hit path: the database exists, so skip the mkdir and create.
        let conn = match Connection::open_with_flags(&path, flags) {
            Ok(conn) => conn,
            Err(_) => {
                create_dir(dir)?;
                create_private_file(&path)?;
                Connection::open_with_flags(&path, flags)?
            }
        };
        // Writers hold the lock for one short transaction; parallel `make -j`
        // runs wait their turn instead of failing with "database is locked".
        conn.busy_timeout(BUSY_TIMEOUT)?;
        persist_wal(&conn);
        // A reader closing last would checkpoint (three fsyncs) on every hit;
        // writers leave the WAL empty instead, see `Store::tidy_wal`.
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
        let store = Store {
            conn,
            dir: dir.to_owned(),
        };
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
        // Creating the schema is done by one process at a time: 32 processes
        // racing to switch a new file to WAL had SQLite answer "database is
        // locked" to some of them, without the busy handler.
        let guard_path = self.dir.join("cache.db.init");
        let guard = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&guard_path)
            .map_err(|source| StoreError::Io {
                path: guard_path.clone(),
                source,
            })?;
        guard.lock().map_err(|source| StoreError::Io {
            path: guard_path,
            source,
        })?;
        let version: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |row| row.get(0))?;
        if version == SCHEMA_VERSION {
            return Ok(()); // another process created it while we waited
        }
        // A new cache holds nothing to lose: a power cut while it is created
        // leaves at worst a damaged file, which is moved aside. Without
        // this, creating it took 7 fsyncs.
        self.conn.pragma_update(None, "synchronous", "OFF")?;
        // WAL is a property of the file; set it once, outside a transaction.
        // (64 KiB pages made replays 10% faster but hits 18% slower, from 90
        // more page faults; the default 4 KiB stays.)
        self.conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(()))?;
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        // Version 1 was the layout before the hit path was slimmed (four
        // tables, a `complete` flag), version 2 the one before data files; a
        // cache is disposable, so it is rebuilt.
        if version > 0 {
            tx.execute_batch(
                "DROP TABLE IF EXISTS chunks; DROP TABLE IF EXISTS entries; DROP TABLE IF EXISTS jobs;",
            )?;
        }
        tx.execute_batch(SCHEMA)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
        Ok(())
    }

    /// The complete entry stored under `key`, if any.
    pub fn lookup(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, created_ms, meta, file FROM entries WHERE key = ?1")?;
        let row = stmt
            .query_row([key], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, Option<String>>(3)?,
                ))
            })
            .optional()?;
        let Some((id, created_ms, meta, file)) = row else {
            return Ok(None);
        };
        let meta =
            serde_json::from_str(&meta).map_err(|e| StoreError::Damaged(format!("entry record: {e}")))?;
        Ok(Some(Entry {
            id,
            key: key.to_owned(),
            created_ms,
            file,
            meta,
        }))
    }

    /// The outcome of a run of `key` kept for its waiters (see
    /// [`Recording::share`]), if one ended at or after `since_ms`: a run
    /// that ended before the caller started is not one it waited on.
    pub fn lookup_outcome(&self, key: &str, since_ms: i64) -> Result<Option<Entry>, StoreError> {
        Ok(self
            .lookup(&format!("{OUTCOME_PREFIX}{key}"))?
            .filter(|entry| entry.created_ms >= since_ms))
    }

    /// Has SQLite call `handler` when another connection holds the lock
    /// (it returns whether to try again), instead of the busy timeout. A
    /// recorder uses it to give up on a cache that stays locked.
    pub fn set_busy_handler(&self, handler: fn(i32) -> bool) -> Result<(), StoreError> {
        self.conn.busy_handler(Some(handler))?;
        Ok(())
    }

    /// Streams an entry's output, chunk by chunk in recorded order, to `sink`.
    /// Memory stays bounded by the few chunks in flight whatever the output's
    /// size.
    pub fn replay(
        &self,
        entry: &Entry,
        mut sink: impl FnMut(Stream, &[u8]) -> std::io::Result<()>,
    ) -> Result<(), StoreError> {
        // The data file is opened before the chunks are read. A writer
        // replacing this entry removes the file after its commit, so either
        // the file is open before that commit and stays readable, or the
        // chunks below are read after it and there are none.
        let mut file = match &entry.file {
            Some(name) => Some(self.open_data_file(entry, name)?),
            None => None,
        };
        let mut stmt = self.conn.prepare_cached(
            "SELECT stream, codec, raw_len, data, file_len FROM chunks WHERE entry_id = ?1 ORDER BY seq",
        )?;
        let mut rows = stmt.query([entry.id])?;
        let mut write = |stream: Stream, bytes: &[u8]| {
            sink(stream, bytes).map_err(|source| StoreError::Io {
                path: PathBuf::from("<output>"),
                source,
            })
        };
        // The first chunk is decoded here; from the second on, workers decode
        // side by side and the results are written in order.
        let mut unpacker: Option<compress::Unpacker> = None;
        let mut spare: Vec<Vec<u8>> = Vec::new();
        let mut replayed = 0u64;
        let mut first = true;
        while let Some(row) = rows.next()? {
            let stream =
                Stream::from_tag(row.get(0)?).ok_or_else(|| StoreError::Damaged("unknown stream".into()))?;
            let codec =
                Codec::from_tag(row.get(1)?).ok_or_else(|| StoreError::Damaged("unknown codec".into()))?;
            let raw_len = row.get::<_, i64>(2)?.max(0) as usize;
            replayed += raw_len as u64;
            // The stored bytes, into a buffer that can go to a worker.
            let mut stored = spare.pop().unwrap_or_default();
            match row.get_ref(3)?.as_blob_or_null().map_err(rusqlite::Error::from)? {
                Some(data) => {
                    stored.clear();
                    stored.extend_from_slice(data);
                }
                None => {
                    let len = row.get::<_, Option<i64>>(4)?.unwrap_or(0).max(0) as usize;
                    let file = file.as_mut().ok_or_else(|| {
                        StoreError::Damaged("a chunk is in a data file the entry lacks".into())
                    })?;
                    file.read(len, &mut stored)?;
                }
            }
            if first {
                first = false;
                let mut out = Vec::new();
                compress::Decoder::default()
                    .unpack(codec, &stored, raw_len, &mut out)
                    .map_err(damaged)?;
                write(stream, &out)?;
                spare.push(stored);
                continue;
            }
            let workers = match &mut unpacker {
                Some(u) => u,
                None => unpacker.insert(compress::unpacker().map_err(damaged)?),
            };
            let job = (stream, codec, raw_len, stored, spare.pop().unwrap_or_default());
            if let Some(done) = workers.push(job).map_err(damaged)? {
                let (stream, out, stored) = done.map_err(damaged)?;
                write(stream, &out)?;
                spare.extend([out, stored]);
            }
        }
        while let Some(done) = unpacker
            .as_mut()
            .map(compress::Unpacker::oldest)
            .transpose()
            .map_err(damaged)?
            .flatten()
        {
            let (stream, out, _) = done.map_err(damaged)?;
            write(stream, &out)?;
        }
        let recorded = entry.meta.stdout_bytes + entry.meta.stderr_bytes;
        if replayed != recorded {
            // No rows at all: deleted since the lookup (nothing was written).
            return Err(if replayed == 0 {
                StoreError::Gone
            } else {
                StoreError::Damaged(format!("{replayed} bytes stored of {recorded} recorded"))
            });
        }
        Ok(())
    }

    /// Opens `entry`'s data file. A missing file is damage only if the entry
    /// is still there: a writer replacing it removes the file.
    fn open_data_file(&self, entry: &Entry, name: &str) -> Result<DataFile, StoreError> {
        match DataFile::open(&self.dir, name) {
            Err(StoreError::Damaged(_)) if self.lookup(&entry.key)?.is_none_or(|e| e.id != entry.id) => {
                Err(StoreError::Gone)
            }
            result => result,
        }
    }

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
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        // One write on an O_APPEND file: lines from parallel hits never mix.
        std::io::Write::write_all(&mut log, line.as_bytes()).map_err(io)?;
        // A cache that only ever hits has no writer to fold the log: fold it
        // here now and then, so it never grows without bound.
        if log.metadata().map_err(io)?.len() > HIT_LOG_FOLD_BYTES {
            self.conn.pragma_update(None, "synchronous", "NORMAL")?;
            self.fold_hits()?;
            self.tidy_wal();
        }
        Ok(())
    }

    /// After a write: copies the WAL into the database and truncates it to
    /// nothing, so the next process to open the database has no WAL frames to
    /// index. It does not wait: with readers in the way it leaves the WAL for
    /// the next writer.
    fn tidy_wal(&self) {
        let _ = self.conn.busy_timeout(Duration::ZERO);
        let _ = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        let _ = self.conn.busy_timeout(BUSY_TIMEOUT);
    }

    /// Moves the hit log's counts into the entries table.
    fn fold_hits(&self) -> Result<(), StoreError> {
        let log = self.dir.join(HIT_LOG);
        let taken = self.dir.join(format!("{HIT_LOG}.{}", std::process::id()));
        // Renamed first, so hits logged meanwhile go to a new file.
        if fs::rename(&log, &taken).is_err() {
            return Ok(());
        }
        let text = fs::read_to_string(&taken).unwrap_or_default();
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

    /// Starts recording a new result for `key`. The caller must hold the key's
    /// lock, so pending rows of this key were left by a writer that died; they
    /// are removed, as are pending rows of any key whose writer is gone.
    pub fn begin(
        &self,
        key: &crate::key::Key,
        command: &str,
        cwd: &str,
    ) -> Result<Recording<'_>, StoreError> {
        // In WAL mode NORMAL cannot corrupt, only lose the last commits on a
        // power cut; set here because a hit never writes.
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        self.delete_abandoned(&key.hex)?;
        let meta = Meta {
            command: command.to_owned(),
            cwd: cwd.to_owned(),
            inputs: key.inputs.clone(),
            ..Meta::default()
        };
        let pending = Meta {
            pending_key: Some(key.hex.clone()),
            pid: Some(std::process::id()),
            ..meta.clone()
        };
        let now = now_ms();
        self.conn.execute(
            "INSERT INTO entries (key, created_ms, last_used_ms, bytes, hits, meta) VALUES (NULL, ?1, ?1, 0, 0, ?2)",
            params![now, to_json(&pending)],
        )?;
        Ok(Recording {
            store: self,
            key: key.hex.clone(),
            id: self.conn.last_insert_rowid(),
            meta,
            seq: 0,
            pending: Vec::with_capacity(CHUNK_BYTES),
            pending_stream: Stream::Stdout,
            compressor: None,
            packer: None,
            spare: Vec::new(),
            spare_compressed: Vec::new(),
            last_flush: Instant::now(),
            arrived: None,
            file: None,
            bytes: [0, 0],
            stored: 0,
        })
    }

    fn delete_abandoned(&self, key: &str) -> Result<(), StoreError> {
        // One write transaction from the look to the delete: between them a
        // writer could otherwise finish its entry and exit, and its finished
        // entry would be taken for the abandoned one it was a moment ago.
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        let pending: Vec<(i64, String)> = tx
            .prepare_cached("SELECT id, meta FROM entries WHERE key IS NULL")?
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let abandoned: Vec<i64> = pending
            .into_iter()
            .filter(|(_, meta)| {
                let meta: Meta = serde_json::from_str(meta).unwrap_or_default();
                let ours = meta.pending_key.as_deref() == Some(key);
                ours || !meta.pid.is_some_and(process_alive)
            })
            .map(|(id, _)| id)
            .collect();
        let files = delete_rows(&tx, &abandoned)?;
        tx.commit()?;
        self.remove_files(files);
        Ok(())
    }

    fn delete_entry(&self, id: i64) -> Result<(), StoreError> {
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        let files = delete_rows(&tx, &[id])?;
        tx.commit()?;
        self.remove_files(files);
        Ok(())
    }

    /// Deletes an entry whose stored output turned out to be damaged, so the
    /// next run computes it afresh.
    pub fn forget(&self, entry: &Entry) -> Result<(), StoreError> {
        self.delete_entry(entry.id)
    }

    /// Removes data files whose rows are gone. One that cannot be removed is
    /// only wasted space: no row refers to it any more.
    fn remove_files(&self, names: Vec<String>) {
        for name in names {
            let _ = fs::remove_file(self.dir.join(DATA_DIR).join(name));
        }
    }
}

/// Deletes entries and their chunks within `tx`; returns their data files,
/// to be removed once `tx` has committed.
fn delete_rows(tx: &rusqlite::Transaction<'_>, ids: &[i64]) -> Result<Vec<String>, StoreError> {
    let mut files = Vec::new();
    for &id in ids {
        let file: Option<String> = tx
            .query_row("SELECT file FROM entries WHERE id = ?1", [id], |row| row.get(0))
            .optional()?
            .flatten();
        files.extend(file);
        tx.execute("DELETE FROM chunks WHERE entry_id = ?1", [id])?;
        tx.execute("DELETE FROM entries WHERE id = ?1", [id])?;
    }
    Ok(files)
}

/// An entry's data file, read front to back during a replay.
struct DataFile {
    path: PathBuf,
    file: fs::File,
}

impl DataFile {
    fn open(dir: &Path, name: &str) -> Result<DataFile, StoreError> {
        let path = dir.join(DATA_DIR).join(name);
        match fs::File::open(&path) {
            Ok(file) => Ok(DataFile { path, file }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Err(StoreError::Damaged(format!(
                "data file {} is missing",
                path.display()
            ))),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// Reads the next `len` bytes into `buf` (replacing what it held).
    fn read(&mut self, len: usize, buf: &mut Vec<u8>) -> Result<(), StoreError> {
        use std::io::Read;
        buf.clear();
        buf.reserve(len);
        let read = (&mut self.file)
            .take(len as u64)
            .read_to_end(buf)
            .map_err(|source| StoreError::Io {
                path: self.path.clone(),
                source,
            })?;
        if read != len {
            return Err(StoreError::Damaged(format!(
                "data file {} is shorter than its entry records",
                self.path.display()
            )));
        }
        Ok(())
    }
}

fn damaged(err: std::io::Error) -> StoreError {
    StoreError::Damaged(format!("stored output: {err}"))
}

/// Whether a process with this pid exists.
fn process_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let alive = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
    alive || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn to_json(meta: &Meta) -> String {
    serde_json::to_string(meta).unwrap_or_else(|_| "{}".into())
}

/// Process-wide SQLite settings, before the first connection: no memory
/// statistics, which take a global mutex on every allocation (about 6% of a
/// hit's instructions went to mutexes; lcrun never reads the statistics).
fn configure_sqlite() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: called before SQLite is initialised, with the int argument
        // this option takes; a refusal (already initialised) is harmless.
        unsafe {
            rusqlite::ffi::sqlite3_config(rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS, 0 as std::ffi::c_int);
        }
    });
}

/// Keeps the -wal and -shm files when the last connection closes. Without
/// it every lcrun call that is the only one open deletes and recreates both
/// files (unlink, ftruncate, fchown): most of a cache hit's file-system work.
pub fn persist_wal(conn: &Connection) {
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
    // Its data files go with it: the new database knows none of them.
    let _ = fs::rename(dir.join(DATA_DIR), format!("{}-{DATA_DIR}", moved.display()));
    Ok(moved)
}

/// A result being recorded. Output goes in as it arrives; nothing is visible
/// to readers until [`Recording::finish`].
pub struct Recording<'s> {
    store: &'s Store,
    key: String,
    id: i64,
    meta: Meta,
    seq: i64,
    pending: Vec<u8>,
    pending_stream: Stream,
    /// For outputs that fit in one chunk: no threads are started for them.
    compressor: Option<zstd::bulk::Compressor<'static>>,
    /// Worker threads, started by the first full chunk.
    packer: Option<Packer>,
    /// Raw-chunk buffers for reuse.
    spare: Vec<Vec<u8>>,
    /// Compressed-chunk buffers for reuse.
    spare_compressed: Vec<Vec<u8>>,
    /// When the last chunk was handed on: the output's rate.
    last_flush: Instant,
    /// When the bytes being written arrived, if the writer says (see
    /// [`Recording::write_arrived`]).
    arrived: Option<Instant>,
    /// The data file large chunks are appended to, once there is one.
    file: Option<(PathBuf, fs::File)>,
    bytes: [i64; 2],
    stored: i64,
}

impl Recording<'_> {
    /// [`Recording::write`] for a writer that records behind the output,
    /// on a thread of its own: the output's rate, which picks the codec, is
    /// measured from when the bytes arrived, not from when they are stored.
    pub fn write_arrived(
        &mut self,
        stream: Stream,
        bytes: &[u8],
        arrived: Instant,
    ) -> Result<(), StoreError> {
        self.arrived = Some(arrived);
        self.write(stream, bytes)
    }

    /// Sets when the output began, for such a writer: its recording may
    /// begin after the first bytes arrived.
    pub fn output_began(&mut self, at: Instant) {
        self.last_flush = at;
    }

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

    /// Hands the gathered chunk to be compressed and stored.
    fn flush(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let next = self
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(CHUNK_BYTES));
        let raw = std::mem::replace(&mut self.pending, next);
        let stream = self.pending_stream;
        if self.packer.is_none() && raw.len() < CHUNK_BYTES {
            // Small and nothing in flight: compress here, in order.
            let compressor = match &mut self.compressor {
                Some(c) => c,
                None => self
                    .compressor
                    .insert(compress::new_compressor().map_err(damaged)?),
            };
            let out = self.spare_compressed.pop().unwrap_or_default();
            let packed = compress::pack(compressor, Codec::Zstd, stream, raw, out).map_err(damaged)?;
            return self.store_packed(packed);
        }
        self.store_compressed(false)?;
        let packer = match &mut self.packer {
            Some(p) => p,
            None => self.packer.insert(compress::packer().map_err(damaged)?),
        };
        // LZ4 when the output arrives faster than zstd keeps up with (every
        // worker still busy), or at firehose rate (see `compress`).
        let now = self.arrived.unwrap_or_else(Instant::now);
        let took = now.saturating_duration_since(self.last_flush).as_secs_f64();
        self.last_flush = now;
        let firehose = raw.len() as f64 >= compress::FIREHOSE_BYTES_PER_SEC * took;
        let codec = if firehose || packer.busy() {
            Codec::Lz4
        } else {
            Codec::Zstd
        };
        let out = self.spare_compressed.pop().unwrap_or_default();
        if let Some(packed) = packer.push((codec, stream, raw, out)).map_err(damaged)? {
            self.store_packed(packed.map_err(damaged)?)?;
        }
        Ok(())
    }

    /// Stores compressed chunks in order: those the workers have finished,
    /// or, with `wait`, every one still being compressed.
    fn store_compressed(&mut self, wait: bool) -> Result<(), StoreError> {
        let next = if wait { Packer::oldest } else { Packer::ready };
        while let Some(packed) = self
            .packer
            .as_mut()
            .map(next)
            .transpose()
            .map_err(damaged)?
            .flatten()
        {
            self.store_packed(packed.map_err(damaged)?)?;
        }
        Ok(())
    }

    fn store_packed(&mut self, packed: Packed) -> Result<(), StoreError> {
        let data = packed.data();
        let (blob, file_len) = if data.len() >= FILE_CHUNK_BYTES {
            self.append_to_file(data)?;
            (None, Some(data.len() as i64))
        } else {
            (Some(data), None)
        };
        self.store
            .conn
            .prepare_cached(
                "INSERT INTO chunks (entry_id, seq, stream, codec, raw_len, data, file_len) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                self.id,
                self.seq,
                packed.stream.tag(),
                packed.codec as i64,
                packed.raw.len() as i64,
                blob,
                file_len
            ])?;
        self.stored += data.len() as i64;
        self.seq += 1;
        let Packed {
            mut raw, compressed, ..
        } = packed;
        raw.clear();
        self.spare.push(raw);
        self.spare_compressed.push(compressed);
        Ok(())
    }

    /// Appends stored bytes to the entry's data file, creating it first. Its
    /// name is on the pending row before the file exists, so whoever cleans
    /// up after a crash finds it.
    fn append_to_file(&mut self, data: &[u8]) -> Result<(), StoreError> {
        let (path, file) = match &mut self.file {
            Some(open) => open,
            None => {
                let dir = self.store.dir.join(DATA_DIR);
                create_dir(&dir)?;
                let name = format!("{}-{}", self.id, now_ms());
                self.store.conn.execute(
                    "UPDATE entries SET file = ?2 WHERE id = ?1",
                    params![self.id, name],
                )?;
                let path = dir.join(name);
                match OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                {
                    Ok(file) => self.file.insert((path, file)),
                    Err(source) => return Err(StoreError::Io { path, source }),
                }
            }
        };
        std::io::Write::write_all(file, data).map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })
    }

    /// Makes the result visible under its key, replacing any older entry.
    pub fn finish(mut self, status: u8, duration: Duration) -> Result<(), StoreError> {
        // The last bytes are flushed now that the output has ended: its
        // rate is reckoned to this moment, not to when they arrived.
        self.arrived = None;
        self.flush()?;
        self.store_compressed(true)?;
        self.store.fold_hits()?;
        self.meta.status = status;
        self.meta.duration_ms = duration.as_millis() as u64;
        self.meta.stdout_bytes = self.bytes[0] as u64;
        self.meta.stderr_bytes = self.bytes[1] as u64;
        let conn = &self.store.conn;
        let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
        let older: Vec<i64> = tx
            .prepare("SELECT id FROM entries WHERE key = ?1")?
            .query_map([&self.key], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        let stale: Vec<i64> = tx
            .prepare_cached("SELECT id FROM entries WHERE key > ?1 AND created_ms < ?2")?
            .query_map(params![OUTCOME_PREFIX, now_ms() - OUTCOME_KEEP_MS], |row| {
                row.get(0)
            })?
            .collect::<Result<_, _>>()?;
        let mut files = delete_rows(&tx, &older)?;
        files.extend(delete_rows(&tx, &stale)?);
        tx.execute(
            "UPDATE entries SET key = ?2, created_ms = ?3, last_used_ms = ?3, bytes = ?4, meta = ?5 WHERE id = ?1",
            params![self.id, self.key, now_ms(), self.stored, to_json(&self.meta)],
        )?;
        tx.commit()?;
        self.store.remove_files(files);
        self.store.tidy_wal();
        Ok(())
    }

    /// Keeps the result only for the runs that waited on this one (a
    /// failure that policy does not cache): they replay it, as a
    /// singleflight shares one outcome; no later run is served it, and the
    /// next writes sweep it away.
    pub fn share(mut self, status: u8, duration: Duration) -> Result<(), StoreError> {
        self.key = format!("{OUTCOME_PREFIX}{}", self.key);
        self.finish(status, duration)
    }

    /// Drops what was recorded (a cancelled run, a broken one).
    pub fn abandon(self) -> Result<(), StoreError> {
        self.store.delete_entry(self.id)?;
        self.store.tidy_wal();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_layout_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("cache.db")).unwrap();
        conn.execute_batch(
            "CREATE TABLE entries (id INTEGER PRIMARY KEY, key TEXT, complete INTEGER);
             INSERT INTO entries (key, complete) VALUES ('k', 1);
             PRAGMA user_version = 1;",
        )
        .unwrap();
        drop(conn);
        let store = Store::open(dir.path()).unwrap();
        assert!(store.lookup("k").unwrap().is_none());
        let version: i64 = store
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[test]
    fn hits_are_counted_and_the_hit_log_stays_small() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = crate::key::KeyBuilder::new().finish();
        let recording = store.begin(&key, "cmd", "/").unwrap();
        recording.finish(0, Duration::from_millis(5)).unwrap();
        let hits = |store: &Store| -> i64 {
            store
                .conn
                .query_row("SELECT hits FROM entries WHERE key = ?1", [&key.hex], |r| {
                    r.get(0)
                })
                .unwrap()
        };
        // Just under the fold size: logged, not yet in the table.
        let line_len = key.hex.len() as u64 + 15;
        let under = HIT_LOG_FOLD_BYTES / line_len;
        for _ in 0..under {
            store.record_hit(&key.hex).unwrap();
        }
        assert_eq!(hits(&store), 0);
        // The hit that takes it past folds it: every hit counted, no log left.
        store.record_hit(&key.hex).unwrap();
        assert_eq!(hits(&store), under as i64 + 1);
        assert!(!dir.path().join(HIT_LOG).exists());
    }

    #[test]
    fn interleaved_small_writes_reuse_their_buffers() {
        // Each switch of stream stores a small chunk compressed right here;
        // the buffers must be reused, not piled up, over a long run.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = crate::key::KeyBuilder::new().finish();
        let mut recording = store.begin(&key, "cmd", "/").unwrap();
        for i in 0..2000 {
            recording
                .write(Stream::Stdout, format!("out {i}\n").as_bytes())
                .unwrap();
            recording
                .write(Stream::Stderr, format!("err {i}\n").as_bytes())
                .unwrap();
        }
        assert!(
            recording.spare.len() <= 2,
            "{} raw buffers kept",
            recording.spare.len()
        );
        assert!(
            recording.spare_compressed.len() <= 2,
            "{} compressed buffers kept",
            recording.spare_compressed.len()
        );
        recording.finish(0, Duration::ZERO).unwrap();
    }

    /// Records `out` as stdout under `key` through `store`.
    fn record(store: &Store, key: &crate::key::Key, out: &[u8]) {
        let mut recording = store.begin(key, "cmd", "/").unwrap();
        for piece in out.chunks(64 * 1024) {
            recording.write(Stream::Stdout, piece).unwrap();
        }
        recording.finish(0, Duration::ZERO).unwrap();
    }

    /// Bytes no codec shrinks (xorshift), so large chunks go to a data file.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn an_entry_replaced_after_its_lookup_is_gone_not_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let reader = Store::open(dir.path()).unwrap();
        let writer = Store::open(dir.path()).unwrap();
        let key = crate::key::KeyBuilder::new().finish();
        // Chunks in SQLite only, then in a data file.
        for len in [100, 2 << 20] {
            record(&writer, &key, &noise(len, 1));
            let old = reader.lookup(&key.hex).unwrap().unwrap();
            assert_eq!(old.file.is_some(), len > 100);
            record(&writer, &key, &noise(len, 2));
            let mut out = Vec::new();
            let result = reader.replay(&old, |_, bytes| {
                out.extend_from_slice(bytes);
                Ok(())
            });
            assert!(matches!(result, Err(StoreError::Gone)), "{result:?}");
            assert!(out.is_empty());
            let new = reader.lookup(&key.hex).unwrap().unwrap();
            reader
                .replay(&new, |_, bytes| {
                    out.extend_from_slice(bytes);
                    Ok(())
                })
                .unwrap();
            assert!(out == noise(len, 2));
        }
    }

    #[test]
    fn a_newer_layout_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("cache.db")).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        assert!(matches!(Store::open(dir.path()), Err(StoreError::TooNew(_))));
    }
}

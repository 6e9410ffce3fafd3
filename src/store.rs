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
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};

use crate::compress::{self, Codec, Packed, Packer};
use crate::db::{self, Db, FileId, BUSY_TIMEOUT};
use crate::key::KeyInput;
use crate::lock::KeyLock;
use crate::output::Stream;
use crate::trust::{self, OpenError, Untrusted};

/// The schema this build writes; `PRAGMA user_version` carries it.
const SCHEMA_VERSION: i64 = 4;

/// Raw bytes gathered before a chunk is compressed and stored. Bounds memory
/// per run, and is large enough that zstd finds the repetition in build logs.
pub const CHUNK_BYTES: usize = 256 * 1024;

/// Stored chunks at least this large go to the entry's data file; smaller
/// ones (every chunk of a short output) stay in SQLite, so replaying them
/// opens nothing more.
const FILE_CHUNK_BYTES: usize = 16 * 1024;

/// Outputs up to this size are decoded and verified whole before their
/// first byte goes out, so damage anywhere in them is a miss that runs the
/// command. Larger ones are verified chunk by chunk as they go out: holding
/// them would break the bound on memory, and reading them twice would
/// double a large replay's time.
const VERIFY_FIRST_BYTES: u64 = 8 << 20;

/// The directory of data files, in the cache directory.
const DATA_DIR: &str = "data";

/// Where hits are counted until the next write folds them in.
const HIT_LOG: &str = "hits.log";

/// A hit folds the hit log into the table once it is this large (about
/// 12,000 hits), so the log stays small in a cache that is only read.
const HIT_LOG_FOLD_BYTES: u64 = 1 << 20;

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
///   2 stderr), `codec` ([`Codec`]), `raw_len`, `xxh3` (the chunk's raw
///   bytes' checksum, see [`compress::checksum`]), and the stored bytes:
///   `data`, or, when that is NULL, the next `file_len` bytes of the
///   entry's data file.
const SCHEMA: &str = "
CREATE TABLE entries(id INTEGER PRIMARY KEY,key TEXT UNIQUE,created_ms,last_used_ms,bytes,hits,meta,file);
CREATE TABLE chunks(entry_id,seq,stream,codec,raw_len,xxh3,data,file_len,PRIMARY KEY(entry_id,seq));
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
    /// One entry's record or stored output is damaged (it failed to
    /// decode, or its checksum): the entry is dropped, not the database.
    #[error("stored output is damaged: {0}")]
    Damaged(String),
    /// A file in the cache, or the cache directory, belongs to someone else
    /// or can be written by others.
    #[error(transparent)]
    Untrusted(#[from] Untrusted),
    /// The pending entry being recorded was removed by another process.
    #[error("the entry being recorded was removed by another process")]
    Taken,
    /// The entry was replaced or removed (a refresh, an identical run)
    /// between its lookup and its replay.
    #[error("the entry was replaced while it was being read")]
    Gone,
}

impl StoreError {
    /// True when the database file itself is not a usable database, so moving
    /// it aside and starting afresh is the cure: SQLite found a malformed
    /// page, or a column the code writes came back with a type it never
    /// writes (random bytes in a page still parse, as the wrong values).
    pub fn is_corrupt(&self) -> bool {
        use rusqlite::Error as E;
        match self {
            StoreError::Sqlite(err) => {
                matches!(
                    err.sqlite_error_code(),
                    Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt)
                ) || matches!(
                    err,
                    E::FromSqlConversionFailure(..)
                        | E::InvalidColumnType(..)
                        | E::IntegralValueOutOfRange(..)
                        | E::Utf8Error(..)
                )
            }
            _ => false,
        }
    }

    /// True when one entry is damaged (its record, its stored output, its
    /// data file): that entry is dropped and the command runs.
    pub fn is_damaged_entry(&self) -> bool {
        matches!(self, StoreError::Damaged(_) | StoreError::Untrusted(_))
    }
}

impl From<OpenError> for StoreError {
    fn from(err: OpenError) -> StoreError {
        match err {
            OpenError::Io { path, source } => StoreError::Io { path, source },
            OpenError::Untrusted(why) => StoreError::Untrusted(why),
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
    /// While pending: a random token of the recording, which makes its
    /// pending record unique: each of its writes checks that the row still
    /// holds that record, so it never writes into a row id reused by another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The size of the entry's data file, checked before a replay starts.
    #[serde(default)]
    pub file_bytes: u64,
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
    /// The database file's device and inode when it was opened: the file
    /// that is moved aside if it proves damaged, and not a newer one.
    db_id: FileId,
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

/// Creates a directory of the cache (`data/`, `locks/`) if needed, and
/// checks that it is ours alone: a directory another user made there would
/// let them swap the files lcrun reads in it.
pub fn create_trusted_dir(dir: &Path) -> Result<(), StoreError> {
    create_dir(dir)?;
    Ok(trust::check_dir(dir)?)
}

/// The cache directory to use, checked: ours, and writable by no one else
/// (created 0700 if missing). Given as a symlink, the directory it leads to
/// is used and checked, as ssh does with `~/.ssh`: the user chose the link;
/// inside the cache no symlink is ever followed.
fn trusted_dir(dir: &Path) -> Result<PathBuf, StoreError> {
    let io = |source| StoreError::Io {
        path: dir.to_owned(),
        source,
    };
    let meta = match fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            create_dir(dir)?;
            fs::symlink_metadata(dir).map_err(io)?
        }
        Err(err) => return Err(io(err)),
    };
    if !meta.file_type().is_symlink() {
        trust::check(dir, &meta, true)?;
        return Ok(dir.to_owned());
    }
    // Resolved once: a link that is re-pointed later changes nothing here.
    let real = fs::canonicalize(dir).map_err(io)?;
    let meta = fs::metadata(&real).map_err(io)?;
    trust::check(&real, &meta, true)?;
    Ok(real)
}

/// Where the lock is that makes one process at a time recover a damaged
/// database.
const RECOVER_LOCK: &str = "cache.db.recover";

impl Store {
    /// Opens (creating if needed) the database in `dir`, after checking that
    /// the directory and the database are the user's own.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_checked(dir).map_err(|(err, _)| err)
    }

    /// [`Store::open`], and on failure the identity of the database file
    /// that failed, so that only that file is moved aside.
    fn open_checked(dir: &Path) -> Result<Store, (StoreError, Option<FileId>)> {
        let dir = trusted_dir(dir).map_err(|e| (e, None))?;
        let path = dir.join("cache.db");
        let Db { conn, id: db_id } = db::open(&path).map_err(|e| (e, None))?;
        let fail = |err: StoreError| (err, Some(db_id));
        let store = Store { conn, dir, db_id };
        store.migrate().map_err(fail)?;
        Ok(store)
    }

    /// Opens the database, moving a damaged file aside and starting afresh.
    /// Returns the store and, when this process moved it, what was wrong.
    pub fn open_or_recover(dir: &Path) -> Result<(Store, Option<String>), StoreError> {
        match Store::open_checked(dir) {
            Ok(store) => Ok((store, None)),
            Err((err, Some(db_id))) if err.is_corrupt() => Store::recover_file(dir, db_id, &err),
            Err((err, _)) => Err(err),
        }
    }

    /// After `err` showed this store's database to be damaged: moves it aside
    /// and opens a new one. Returns the new store and, when this process
    /// moved it, a message that says so.
    pub fn recover(self, err: &StoreError) -> Result<(Store, Option<String>), StoreError> {
        let Store { conn, dir, db_id } = self;
        drop(conn);
        Store::recover_file(&dir, db_id, err)
    }

    /// Moves the database aside after `err` showed it damaged, and only
    /// that: the next run starts a new one. For a failure at the end of a
    /// run, when there is nothing left to do with a new database.
    pub fn set_aside(&self, err: &StoreError) -> Option<String> {
        let _lock = recover_lock(&self.dir).ok()?;
        let moved = Store::move_aside_in(&self.dir, self.db_id).ok().flatten()?;
        Some(format!(
            "cache database was damaged ({err}); moved it to {}; the next run starts a new one",
            moved.display()
        ))
    }

    /// Recovers a damaged database under a lock, so that of all the
    /// processes that find it damaged, one moves it aside and the others
    /// then open the new one. 32 processes at once without the lock moved
    /// each other's new databases aside and wrote into moved ones.
    fn recover_file(
        dir: &Path,
        db_id: FileId,
        err: &StoreError,
    ) -> Result<(Store, Option<String>), StoreError> {
        let _lock = recover_lock(dir)?;
        let dir = trusted_dir(dir)?;
        let note = Store::move_aside_in(&dir, db_id)?.map(|moved| {
            format!(
                "cache database was damaged ({err}); moved it to {} and started a new one",
                moved.display()
            )
        });
        // Still under the lock: the new database is created and checked
        // before anyone else may judge it.
        let store = Store::open(&dir)?;
        Ok((store, note))
    }

    /// Moves `dir`'s database aside if it is still the file `db_id` names;
    /// `None` when another process already did.
    fn move_aside_in(dir: &Path, db_id: FileId) -> Result<Option<PathBuf>, StoreError> {
        let path = dir.join("cache.db");
        match fs::symlink_metadata(&path) {
            Ok(meta) if (meta.dev(), meta.ino()) == db_id => Ok(Some(move_aside(dir)?)),
            Ok(_) => Ok(None),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io { path, source }),
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
        let _guard = lock_file(&self.dir.join("cache.db.init"))?;
        let version: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |row| row.get(0))?;
        if version == SCHEMA_VERSION {
            return Ok(()); // another process created it while we waited
        }
        // (64 KiB pages made replays 10% faster but hits 18% slower, from 90
        // more page faults; the default 4 KiB stays.)
        db::start_wal(&self.conn)?;
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        // Version 1 was the layout before the hit path was slimmed (four
        // tables, a `complete` flag), version 2 the one before data files; a
        // cache is disposable, so it is rebuilt. Version 3 had no checksums.
        // The old data files go too: no row of the new layout names them.
        if version > 0 {
            tx.execute_batch(
                "DROP TABLE IF EXISTS chunks; DROP TABLE IF EXISTS entries; DROP TABLE IF EXISTS jobs;",
            )?;
            let _ = fs::remove_dir_all(self.dir.join(DATA_DIR));
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
        let meta = match serde_json::from_str(&meta) {
            Ok(meta) => meta,
            Err(e) => {
                // One damaged record is that entry's loss, not the database's:
                // it is dropped, and the run goes on as a miss.
                drop(stmt);
                let _ = self.delete_entry(id);
                return Err(StoreError::Damaged(format!("entry record: {e}; dropped it")));
            }
        };
        Ok(Some(Entry {
            id,
            key: key.to_owned(),
            created_ms,
            file,
            meta,
        }))
    }

    /// Streams an entry's output, chunk by chunk in recorded order, to `sink`.
    /// Memory stays bounded by the few chunks in flight whatever the output's
    /// size. Every chunk is checked against its checksum before its bytes go
    /// out; an output of up to [`VERIFY_FIRST_BYTES`] is checked whole first,
    /// so for it damage is an error before anything went to `sink`.
    pub fn replay(
        &self,
        entry: &Entry,
        sink: impl FnMut(Stream, &[u8]) -> std::io::Result<()>,
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
            "SELECT stream, codec, raw_len, xxh3, data, file_len FROM chunks WHERE entry_id = ?1 ORDER BY seq",
        )?;
        let mut rows = stmt.query([entry.id])?;
        let recorded = entry.meta.stdout_bytes + entry.meta.stderr_bytes;
        let mut outlet = Outlet {
            sink,
            held: (recorded <= VERIFY_FIRST_BYTES).then(Vec::new),
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
            let sum = row.get::<_, i64>(3)? as u64;
            replayed += raw_len as u64;
            if replayed > recorded {
                return Err(StoreError::Damaged(format!(
                    "more bytes stored than the {recorded} recorded"
                )));
            }
            // The stored bytes, into a buffer that can go to a worker.
            let mut stored = spare.pop().unwrap_or_default();
            match row.get_ref(4)?.as_blob_or_null().map_err(rusqlite::Error::from)? {
                Some(data) => {
                    stored.clear();
                    stored.extend_from_slice(data);
                }
                None => {
                    let len = row.get::<_, Option<i64>>(5)?.unwrap_or(0).max(0) as usize;
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
                    .unpack(codec, &stored, raw_len, sum, &mut out)
                    .map_err(damaged)?;
                outlet.put(stream, out, &mut spare)?;
                spare.push(stored);
                continue;
            }
            let workers = match &mut unpacker {
                Some(u) => u,
                None => unpacker.insert(compress::unpacker().map_err(damaged)?),
            };
            let job = (
                stream,
                codec,
                raw_len,
                sum,
                stored,
                spare.pop().unwrap_or_default(),
            );
            if let Some(done) = workers.push(job).map_err(damaged)? {
                let (stream, out, stored) = done.map_err(damaged)?;
                outlet.put(stream, out, &mut spare)?;
                spare.push(stored);
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
            outlet.put(stream, out, &mut spare)?;
        }
        if replayed != recorded {
            // No rows at all: deleted since the lookup (nothing was written).
            return Err(if replayed == 0 {
                StoreError::Gone
            } else {
                StoreError::Damaged(format!("{replayed} bytes stored of {recorded} recorded"))
            });
        }
        outlet.release()
    }

    /// Opens `entry`'s data file. A missing file is damage only if the entry
    /// is still there: a writer replacing it removes the file.
    /// Its size is checked against the entry's record here, so a truncated
    /// file is found before any byte goes out.
    fn open_data_file(&self, entry: &Entry, name: &str) -> Result<DataFile, StoreError> {
        match DataFile::open(&self.dir, name) {
            Err(StoreError::Damaged(_)) if self.lookup(&entry.key)?.is_none_or(|e| e.id != entry.id) => {
                Err(StoreError::Gone)
            }
            Ok(file) if file.len != entry.meta.file_bytes => Err(StoreError::Damaged(format!(
                "data file {} is {} bytes; its entry records {}",
                file.path.display(),
                file.len,
                entry.meta.file_bytes
            ))),
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

    /// Before a recording of `key`: removes the pending rows of writers that
    /// are gone (see [`Store::delete_abandoned`]), and any other pending rows
    /// of `key` (the caller holds its lock, so their writer died).
    pub fn clean_abandoned(&self, key: &str) -> Result<(), StoreError> {
        // In WAL mode NORMAL cannot corrupt, only lose the last commits on a
        // power cut; set here because a hit never writes.
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        self.delete_abandoned(key)
    }

    /// Starts recording a new result for `key`. The caller holds the key's
    /// lock until the recording is finished or abandoned: that lock is what
    /// tells other writers this one is alive.
    pub fn begin(
        &self,
        key: &crate::key::Key,
        command: &str,
        cwd: &str,
    ) -> Result<Recording<'_>, StoreError> {
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        let meta = Meta {
            command: command.to_owned(),
            cwd: cwd.to_owned(),
            inputs: key.inputs.clone(),
            ..Meta::default()
        };
        let token = new_token();
        let pending = Meta {
            pending_key: Some(key.hex.clone()),
            token: Some(token.clone()),
            ..meta.clone()
        };
        let now = now_ms();
        let pending_meta = to_json(&pending);
        self.conn.execute(
            "INSERT INTO entries (key, created_ms, last_used_ms, bytes, hits, meta) VALUES (NULL, ?1, ?1, 0, 0, ?2)",
            params![now, pending_meta],
        )?;
        Ok(Recording {
            store: self,
            key: key.hex.clone(),
            id: self.conn.last_insert_rowid(),
            token,
            pending_meta,
            meta,
            seq: 0,
            pending: Vec::with_capacity(CHUNK_BYTES),
            pending_stream: Stream::Stdout,
            compressor: None,
            packer: None,
            spare: Vec::new(),
            spare_compressed: Vec::new(),
            last_flush: Instant::now(),
            file: None,
            file_bytes: 0,
            bytes: [0, 0],
            stored: 0,
        })
    }

    /// Removes pending rows whose writer is gone. A writer holds its key's
    /// lock (an `flock`) from before its pending row exists until after it is
    /// committed or removed, and the kernel drops the lock when it dies; so
    /// a key lock we can take means its writer is gone. A pid would not do:
    /// pids are reused, and a writer in another PID namespace (a container
    /// sharing the cache) has a pid this process cannot see, or sees as
    /// another process.
    fn delete_abandoned(&self, key: &str) -> Result<(), StoreError> {
        // One write transaction from the look to the delete: between them a
        // writer could otherwise finish its entry and exit, and its finished
        // entry would be taken for the abandoned one it was a moment ago.
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        let pending: Vec<(i64, String, Option<String>)> = tx
            .prepare_cached("SELECT id, meta, file FROM entries WHERE key IS NULL")?
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
            .collect::<Result<_, _>>()?;
        // The locks of dead writers, held until their rows are gone.
        let mut taken = Vec::new();
        let mut abandoned = Vec::new();
        for (id, meta, file) in pending {
            let meta: Meta = serde_json::from_str(&meta).unwrap_or_default();
            let gone = match meta.pending_key.as_deref() {
                Some(k) if k == key => true,
                Some(k) if trust::plain_name(k) => match KeyLock::try_acquire(&self.dir, k) {
                    Ok(Some(lock)) => {
                        taken.push(lock);
                        true
                    }
                    // Its writer runs, or we cannot tell: left alone.
                    Ok(None) | Err(_) => false,
                },
                // No key it could be locked by: no writer of ours made it.
                _ => true,
            };
            if gone {
                // No one reads a pending entry's data file: it goes first,
                // so the space it held is free for this transaction, and a
                // full disk never keeps it.
                self.remove_files(file);
                abandoned.push(id);
            }
        }
        delete_rows(&tx, &abandoned)?;
        tx.commit()?;
        drop(taken);
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
    /// only wasted space: no row refers to it any more. A name that is not a
    /// plain file name is never used as a path (the database is not trusted
    /// to say what to delete).
    fn remove_files(&self, names: impl IntoIterator<Item = String>) {
        for name in names {
            if trust::plain_name(&name) {
                let _ = fs::remove_file(self.dir.join(DATA_DIR).join(name));
            }
        }
    }
}

/// A random token naming one recording (its pending row, its data file).
fn new_token() -> String {
    let mut bytes = [0u8; 16];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into `bytes`.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if got != bytes.len() as isize {
        // No entropy source: the time and pid still tell recordings apart.
        let seed = format!("{}:{:?}", std::process::id(), SystemTime::now());
        let digest = <sha2::Sha256 as sha2::Digest>::digest(seed);
        bytes.copy_from_slice(&digest[..16]);
    }
    crate::key::hex(&bytes)
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
    /// Its size when opened.
    len: u64,
}

impl DataFile {
    /// Opens the data file a row names, once the name is checked to be a
    /// plain name under `data/`: a row saying `../../secret` is damage, not
    /// a path. The file must be ours alone (one `fstat` on the open file).
    fn open(dir: &Path, name: &str) -> Result<DataFile, StoreError> {
        if !trust::plain_name(name) {
            return Err(StoreError::Damaged(format!(
                "data file name {name:?} is not a plain name"
            )));
        }
        let path = dir.join(DATA_DIR).join(name);
        match trust::open(&path, OpenOptions::new().read(true)) {
            Ok((file, meta)) => Ok(DataFile {
                path,
                file,
                len: meta.len(),
            }),
            Err(err) if err.io_kind() == Some(std::io::ErrorKind::NotFound) => Err(StoreError::Damaged(
                format!("data file {} is missing", path.display()),
            )),
            Err(err) => Err(err.into()),
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

/// Where a replay's verified chunks go: straight to the sink, or, for an
/// output small enough, held until every chunk of it is verified.
struct Outlet<F> {
    sink: F,
    held: Option<Vec<(Stream, Vec<u8>)>>,
}

impl<F: FnMut(Stream, &[u8]) -> std::io::Result<()>> Outlet<F> {
    /// Passes on one verified chunk; its buffer goes to `spare` once written.
    fn put(&mut self, stream: Stream, out: Vec<u8>, spare: &mut Vec<Vec<u8>>) -> Result<(), StoreError> {
        match &mut self.held {
            Some(held) => held.push((stream, out)),
            None => {
                (self.sink)(stream, &out).map_err(output_error)?;
                spare.push(out);
            }
        }
        Ok(())
    }

    /// Writes what was held, once all of it is verified.
    fn release(mut self) -> Result<(), StoreError> {
        for (stream, out) in self.held.take().unwrap_or_default() {
            (self.sink)(stream, &out).map_err(output_error)?;
        }
        Ok(())
    }
}

fn output_error(source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: PathBuf::from("<output>"),
        source,
    }
}

fn to_json(meta: &Meta) -> String {
    serde_json::to_string(meta).unwrap_or_else(|_| "{}".into())
}

/// Takes an exclusive lock on a lock file in the cache, waiting for it.
fn lock_file(path: &Path) -> Result<fs::File, StoreError> {
    let (file, _) = trust::open(path, OpenOptions::new().create(true).truncate(false).write(true))?;
    file.lock().map_err(|source| StoreError::Io {
        path: path.to_owned(),
        source,
    })?;
    Ok(file)
}

/// The lock under which a damaged database is recovered.
fn recover_lock(dir: &Path) -> Result<fs::File, StoreError> {
    lock_file(&dir.join(RECOVER_LOCK))
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
    /// Names this recording's data file (see [`Meta::token`]).
    token: String,
    /// The pending row's record as written, token included: every write
    /// of the recording checks that the row still holds it.
    pending_meta: String,
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
    /// The data file large chunks are appended to, once there is one.
    file: Option<(PathBuf, fs::File)>,
    /// Bytes appended to the data file.
    file_bytes: u64,
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
        let now = Instant::now();
        let took = now.duration_since(self.last_flush).as_secs_f64();
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
                "INSERT INTO chunks (entry_id, seq, stream, codec, raw_len, xxh3, data, file_len) \
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8 \
                 WHERE EXISTS (SELECT 1 FROM entries WHERE id = ?1 AND key IS NULL AND meta = ?9)",
            )?
            .execute(params![
                self.id,
                self.seq,
                packed.stream.tag(),
                packed.codec as i64,
                packed.raw.len() as i64,
                packed.sum as i64,
                blob,
                file_len,
                self.pending_meta
            ])
            .map_err(StoreError::from)
            .and_then(|n| if n == 1 { Ok(()) } else { Err(StoreError::Taken) })?;
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
                create_trusted_dir(&dir)?;
                let name = format!("{}-{}", self.id, self.token);
                let named = self.store.conn.execute(
                    "UPDATE entries SET file = ?2 WHERE id = ?1 AND key IS NULL AND meta = ?3",
                    params![self.id, name, self.pending_meta],
                )?;
                if named != 1 {
                    return Err(StoreError::Taken);
                }
                let path = dir.join(name);
                // create_new: never an existing file, nor through a symlink.
                let (file, _) = trust::open(&path, OpenOptions::new().write(true).create_new(true))?;
                self.file.insert((path, file))
            }
        };
        std::io::Write::write_all(file, data).map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })?;
        self.file_bytes += data.len() as u64;
        Ok(())
    }

    /// Makes the result visible under its key, replacing any older entry.
    pub fn finish(mut self, status: u8, duration: Duration) -> Result<(), StoreError> {
        match self.commit(status, duration) {
            Ok(replaced) => {
                self.store.remove_files(replaced);
                self.store.tidy_wal();
                Ok(())
            }
            Err(err) => {
                // A full disk, most often: what was written goes now, data
                // file first, so the space is not held until the next run.
                let _ = self.abandon();
                Err(err)
            }
        }
    }

    /// Stores what is left and commits the entry under its key; returns the
    /// data files of the entries it replaced, to be removed.
    fn commit(&mut self, status: u8, duration: Duration) -> Result<Vec<String>, StoreError> {
        self.flush()?;
        self.store_compressed(true)?;
        self.store.fold_hits()?;
        self.meta.status = status;
        self.meta.duration_ms = duration.as_millis() as u64;
        self.meta.stdout_bytes = self.bytes[0] as u64;
        self.meta.stderr_bytes = self.bytes[1] as u64;
        self.meta.file_bytes = self.file_bytes;
        let conn = &self.store.conn;
        let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
        if !self.still_ours(&tx)? {
            return Err(StoreError::Taken);
        }
        let older: Vec<i64> = tx
            .prepare("SELECT id FROM entries WHERE key = ?1")?
            .query_map([&self.key], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        let files = delete_rows(&tx, &older)?;
        tx.execute(
            "UPDATE entries SET key = ?2, created_ms = ?3, last_used_ms = ?3, bytes = ?4, meta = ?5 WHERE id = ?1",
            params![self.id, self.key, now_ms(), self.stored, to_json(&self.meta)],
        )?;
        tx.commit()?;
        Ok(files)
    }

    /// Whether the pending row is still this recording's: another process
    /// that took it for abandoned would have deleted it, and its id could
    /// since name another writer's row.
    fn still_ours(&self, tx: &rusqlite::Transaction<'_>) -> Result<bool, StoreError> {
        let found = tx
            .query_row(
                "SELECT 1 FROM entries WHERE id = ?1 AND key IS NULL AND meta = ?2",
                params![self.id, self.pending_meta],
                |_| Ok(()),
            )
            .optional()?;
        Ok(found.is_some())
    }

    /// Drops what was recorded (a failure not to be cached, a cancelled run,
    /// a full disk). The data file goes first: removing it needs no space,
    /// and frees what deleting the row may need. If the row cannot go now,
    /// the next writer removes it (its key's lock is free).
    pub fn abandon(mut self) -> Result<(), StoreError> {
        if let Some((path, file)) = self.file.take() {
            drop(file);
            let _ = fs::remove_file(path);
        }
        let tx = rusqlite::Transaction::new_unchecked(&self.store.conn, TransactionBehavior::Immediate)?;
        if self.still_ours(&tx)? {
            delete_rows(&tx, &[self.id])?;
        }
        tx.commit()?;
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
    fn a_recording_whose_row_was_taken_does_not_commit_into_anothers() {
        // Another process took the pending row for abandoned, deleted it,
        // and its own recording got the same row id.
        let dir = tempfile::tempdir().unwrap();
        let first = Store::open(dir.path()).unwrap();
        let second = Store::open(dir.path()).unwrap();
        let key_a = crate::key::KeyBuilder::new().finish();
        let mut builder = crate::key::KeyBuilder::new();
        builder.field("scope", b"b");
        let key_b = builder.finish();
        let mut a = first.begin(&key_a, "a", "/").unwrap();
        a.write(Stream::Stdout, b"from A").unwrap();
        second.delete_entry(a.id).unwrap();
        let mut b = second.begin(&key_b, "b", "/").unwrap();
        assert_eq!(a.id, b.id, "the row id is reused");
        b.write(Stream::Stdout, b"from B").unwrap();
        b.finish(0, Duration::ZERO).unwrap();
        assert!(matches!(a.finish(0, Duration::ZERO), Err(StoreError::Taken)));
        assert!(first.lookup(&key_a.hex).unwrap().is_none());
        let entry = first.lookup(&key_b.hex).unwrap().unwrap();
        let mut out = Vec::new();
        first
            .replay(&entry, |_, bytes| {
                out.extend_from_slice(bytes);
                Ok(())
            })
            .unwrap();
        assert_eq!(out, b"from B");
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

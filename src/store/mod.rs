//! The store: action records by key, their content in content-addressed
//! blobs (see [`crate::blob`]), behind a seam ([`tier`]) where other tiers
//! plug in; [`chain`] is what the run path talks to.
//!
//! The local tier is this folder: one SQLite database (WAL) holding records
//! and small blobs, and large blobs in pack files under `blobs/`. A record is
//! written while pending and becomes visible in one short transaction at the
//! end, after every blob it names is in place, so a crash or a cancelled run
//! never leaves anything a reader replays, nor a record whose blobs are
//! missing.
//!
//! Large blobs are files because in SQLite every 4 KiB page of a blob is
//! written twice (WAL, then checkpoint) with a syscall each: a 1 GiB miss
//! took 1.3 s with its chunks in SQLite and 0.8 s with their bytes left out,
//! against 0.9 s for `cat | cat`.
//!
//! Here: opening (the directory and database checked to be the user's own),
//! the schema, lookups. `recording` writes records, `blobs` stores and reads
//! blobs and counts their uses, `sweep` removes orphaned blob files,
//! `replay` reads a record's output back verified, `hits` counts hits,
//! `recover` replaces a damaged database.

use std::fs::{self, DirBuilder, OpenOptions};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior};

use crate::db::{self, Db, FileId, BUSY_TIMEOUT};
use crate::trust::{self, OpenError, Untrusted};

pub mod blobs;
pub mod chain;
mod hits;
pub mod inspect;
pub mod keys;
pub mod record;
mod recording;
mod recover;
mod replay;
mod streams;
mod sweep;
pub mod tier;
pub mod turns;

pub use record::Record;
pub use recording::Recording;

/// The schema this build writes; `PRAGMA user_version` carries it.
/// Version 5: action records and content-addressed blobs. Version 6: a
/// blob's checksum is of its stored bytes (see `compress::checksum`).
/// Version 7: a visible record has a checksum too; version 8: the
/// checksum covers its creation time (see `record_sum`).
const SCHEMA_VERSION: i64 = 8;

/// The directory of blob files, in the cache directory.
const BLOB_DIR: &str = "blobs";

/// What the layouts before version 5 kept their large chunks in.
const OLD_DATA_DIR: &str = "data";

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
/// - `entries`, the action records: `id` (rowid), `key` (hex SHA-256; NULL
///   while pending, so readers never see a pending record), `created_ms`,
///   `last_used_ms` (ms since the epoch), `bytes` (stored size of the blobs
///   it put), `hits`, `meta` (JSON, see [`Record`]).
/// - `blobs`: `digest` (32 bytes, SHA-256 of the raw bytes), `codec`
///   ([`Codec`](crate::compress::Codec)), `raw_len`, `xxh3` (the stored bytes'
///   checksum, verified on every read, see [`crate::compress::checksum`]),
///   and the stored bytes: `data`, or, when that is NULL, `len` bytes at
///   offset `at` of the pack file `blobs/<pack>`.
/// - `uses`: which record (pending or visible) uses which blob, by digest
///   first: whether a blob is still used is one lookup. A visible record's
///   uses are the digests its record names, so no second index is kept for
///   finding a record's uses (it cost a hit 13k instructions of parsing); a
///   pending record's are found by a scan, when a writer died or gave up.
///   A blob goes
///   when its last use does, in the same transaction.
const SCHEMA: &str = "
CREATE TABLE entries(id INTEGER PRIMARY KEY,key TEXT UNIQUE,created_ms,last_used_ms,bytes,hits,meta,sum);
CREATE TABLE blobs(digest PRIMARY KEY,codec,raw_len,xxh3,data,pack,at,len)WITHOUT ROWID;
CREATE INDEX blobs_pack ON blobs(pack);
CREATE TABLE uses(digest,entry_id,PRIMARY KEY(digest,entry_id))WITHOUT ROWID;
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
        match self {
            StoreError::Sqlite(err) => {
                matches!(
                    err.sqlite_error_code(),
                    Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt)
                ) || is_wrong_type(err)
            }
            _ => false,
        }
    }

    /// True when one entry is damaged (its record, its stored output, its
    /// blobs): that entry is dropped and the command runs.
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

/// A complete entry's record.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Row id, private to this database.
    pub id: i64,
    /// The key it is stored under.
    pub key: String,
    /// When the result was stored (ms since the epoch).
    pub created_ms: i64,
    /// Everything else it records.
    pub record: Record,
}

impl Entry {
    /// How old the entry is now.
    pub fn age(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.created_ms).max(0) as u64)
    }

    /// How long the command ran.
    pub fn duration(&self) -> Duration {
        Duration::from_millis(self.record.duration_ms)
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
    /// The pack a replay reads from, kept open from blob to blob.
    reading: std::cell::RefCell<Option<(String, fs::File, u64)>>,
    /// The database file's device and inode when it was opened: the file
    /// that is moved aside if it proves damaged, and not a newer one.
    db_id: FileId,
    /// `--max-size`: the size writes keep the cache under (see
    /// [`inspect`]).
    max_size: std::cell::Cell<Option<u64>>,
    /// The busy handler set in place of the busy timeout, if one is: put
    /// back after anything that sets a timeout (which replaces it).
    busy_handler: std::cell::Cell<Option<BusyHandler>>,
}

/// SQLite's busy handler: given how often it was called for this wait,
/// whether to try again.
type BusyHandler = fn(i32) -> bool;

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

/// Creates a directory of the cache (`blobs/`, `locks/`) if needed, and
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
        let store = Store {
            conn,
            dir,
            db_id,
            reading: Default::default(),
            max_size: Default::default(),
            busy_handler: Default::default(),
        };
        store.migrate().map_err(fail)?;
        Ok(store)
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
        // cache is disposable, so it is rebuilt. Version 3 had no checksums,
        // version 4 kept chunks per entry, not blobs by digest, version 5
        // summed the raw bytes of a blob, version 6 had no checksum of a
        // record, version 7 one without its creation time. The old data and
        // pack files go too: no row of the new layout names them. Version 0
        // is a new file, or one whose version was reset with its tables
        // left: dropping what is not there costs nothing.
        tx.execute_batch(
            "DROP TABLE IF EXISTS chunks; DROP TABLE IF EXISTS entries; DROP TABLE IF EXISTS jobs; \
             DROP TABLE IF EXISTS blobs; DROP TABLE IF EXISTS uses;",
        )?;
        let _ = fs::remove_dir_all(self.dir.join(OLD_DATA_DIR));
        let _ = fs::remove_dir_all(self.dir.join(BLOB_DIR));
        tx.execute_batch(SCHEMA)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
        Ok(())
    }

    /// The complete entry stored under `key`, if any.
    pub fn lookup(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, created_ms, meta, sum FROM entries WHERE key = ?1")?;
        // The id is the rowid, always an integer; a value of the wrong type
        // in the other columns is this record's damage, as bad JSON is.
        let row = stmt
            .query_row([key], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1),
                    row.get::<_, String>(2),
                    row.get::<_, i64>(3),
                ))
            })
            .optional()?;
        let Some((id, created_ms, meta, sum)) = row else {
            return Ok(None);
        };
        let parsed = match (created_ms, meta, sum) {
            (Ok(created_ms), Ok(meta), Ok(sum)) if sum != record_sum(key, created_ms, &meta) => {
                Err("its checksum does not match".to_owned())
            }
            (Ok(created_ms), Ok(meta), Ok(_)) => serde_json::from_str::<Record>(&meta)
                .map_err(|e| e.to_string())
                .and_then(|record| {
                    if record.is_consistent() {
                        Ok((created_ms, record))
                    } else {
                        Err("its layout or sizes do not add up".into())
                    }
                }),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Err(e.to_string()),
        };
        let (created_ms, record) = match parsed {
            Ok(parsed) => parsed,
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
            record,
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
    pub fn set_busy_handler(&self, handler: BusyHandler) -> Result<(), StoreError> {
        self.conn.busy_handler(Some(handler))?;
        self.busy_handler.set(Some(handler));
        Ok(())
    }

    /// After a write: copies the WAL into the database and truncates it to
    /// nothing, so the next process to open the database has no WAL frames to
    /// index. It does not wait: with readers in the way it leaves the WAL for
    /// the next writer.
    fn tidy_wal(&self) {
        // A truncating checkpoint keeps every writer out while it copies
        // and syncs, which takes long on a disk busy writing back: with a
        // writer waiting, it is left to the next writer to do.
        if turns::others_waiting(&self.dir) {
            return;
        }
        let _ = self.conn.busy_timeout(Duration::ZERO);
        let _ = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        // As it was: a recorder's handler (which gives up when told, and
        // says how long it waited), else the timeout. The timeout in its
        // place left a prune after the commit waiting 20 s for a lock
        // another process held.
        let _ = match self.busy_handler.get() {
            Some(handler) => self.conn.busy_handler(Some(handler)),
            None => self.conn.busy_timeout(BUSY_TIMEOUT),
        };
    }

    fn delete_entry(&self, id: i64) -> Result<(), StoreError> {
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        self.delete_rows(&tx, &[id])?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes an entry whose stored output turned out to be damaged, so the
    /// next run computes it afresh.
    pub fn forget(&self, entry: &Entry) -> Result<(), StoreError> {
        self.delete_entry(entry.id)
    }

    /// Deletes records (pending or visible) within `tx`, with their uses
    /// of blobs, and every blob no record uses any more. A blob's file is
    /// unlinked here, before the commit and under the write lock: a writer
    /// about to use the same digest takes its use under that lock too, so
    /// it either finds the blob gone and writes it afresh, or keeps it from
    /// going. Unlinking first also frees the space the commit may need on a
    /// full disk; if the commit fails after it, the blob's row names a
    /// missing file, which a reader takes for damage (the record is
    /// dropped, the command runs), never for other bytes.
    fn delete_rows(&self, tx: &rusqlite::Transaction<'_>, ids: &[i64]) -> Result<(), StoreError> {
        for &id in ids {
            let named = tx
                .prepare_cached("SELECT meta FROM entries WHERE id = ?1 AND key IS NOT NULL")?
                .query_row([id], |row| Ok(text_or_empty(row.get_ref(0)?)))
                .optional()?
                .and_then(|meta| serde_json::from_str::<Record>(&meta).ok());
            let digests: Vec<Vec<u8>> = match named {
                Some(record) => {
                    let mut digests: Vec<Vec<u8>> = record.blobs().map(|d| d.as_bytes().to_vec()).collect();
                    digests.sort();
                    digests.dedup();
                    for digest in &digests {
                        tx.prepare_cached("DELETE FROM uses WHERE digest = ?1 AND entry_id = ?2")?
                            .execute(rusqlite::params![digest, id])?;
                    }
                    digests
                }
                // Pending, or its record unreadable: its uses by a scan.
                None => {
                    let digests = tx
                        .prepare_cached("SELECT digest FROM uses WHERE entry_id = ?1")?
                        .query_map([id], |row| row.get(0))?
                        .collect::<Result<_, _>>()?;
                    tx.prepare_cached("DELETE FROM uses WHERE entry_id = ?1")?
                        .execute([id])?;
                    digests
                }
            };
            tx.prepare_cached("DELETE FROM entries WHERE id = ?1")?
                .execute([id])?;
            for digest in digests {
                self.drop_unused_blob(tx, &digest)?;
            }
        }
        Ok(())
    }
}

fn damaged(err: std::io::Error) -> StoreError {
    StoreError::Damaged(format!("stored output: {err}"))
}

/// Whether `err` is a value of another type than the code reads there: a
/// row's damage where only that row is read (see `blobs::row_damage`).
fn is_wrong_type(err: &rusqlite::Error) -> bool {
    use rusqlite::Error as E;
    matches!(
        err,
        E::FromSqlConversionFailure(..)
            | E::InvalidColumnType(..)
            | E::IntegralValueOutOfRange(..)
            | E::Utf8Error(..)
    )
}

/// A column's text, or "" where it holds something else (a number, a blob,
/// NULL: damage, or a planted row): read as no record rather than failing
/// the whole statement, which would condemn the database for one row.
fn text_or_empty(value: rusqlite::types::ValueRef<'_>) -> String {
    value.as_str().map(str::to_owned).unwrap_or_default()
}

/// A column's integer (a real's whole part), or 0 where it holds something
/// else: a count or size of the wrong type does not fail a listing.
fn number_or_zero(value: rusqlite::types::ValueRef<'_>) -> i64 {
    value
        .as_i64()
        .or_else(|_| value.as_f64().map(|real| real as i64))
        .unwrap_or(0)
}

fn to_json(record: &Record) -> String {
    serde_json::to_string(record).unwrap_or_else(|_| "{}".into())
}

/// The checksum stored with a visible record: XXH3-64 of its JSON, seeded
/// with the XXH3-64 of its key and its creation time, checked on every
/// lookup. A record's damage would otherwise pass unseen where its JSON
/// still parses and adds up (a status 0 become 1), a record moved to
/// another key would replay there, and one whose time moved would never
/// expire.
fn record_sum(key: &str, created_ms: i64, meta: &str) -> i64 {
    let seed = xxhash_rust::xxh3::xxh3_64_with_seed(key.as_bytes(), created_ms as u64);
    xxhash_rust::xxh3::xxh3_64_with_seed(meta.as_bytes(), seed) as i64
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

#[cfg(test)]
mod tests {
    use super::hits::{HIT_LOG, HIT_LOG_FOLD_BYTES};
    use super::*;
    use crate::output::Stream;

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
    fn a_cache_of_chunks_and_data_files_is_rebuilt_not_misread() {
        // Version 4: entries with chunks, large ones in data/ files.
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("cache.db")).unwrap();
        let key = crate::key::KeyBuilder::new().finish();
        conn.execute_batch(
            "CREATE TABLE entries(id INTEGER PRIMARY KEY,key TEXT UNIQUE,created_ms,last_used_ms,bytes,hits,meta,file);
             CREATE TABLE chunks(entry_id,seq,stream,codec,raw_len,xxh3,data,file_len,PRIMARY KEY(entry_id,seq));
             PRAGMA user_version = 4;",
        )
        .unwrap();
        conn.execute(
            "INSERT INTO entries VALUES (1, ?1, 0, 0, 3, 0, '{\"command\":\"x\",\"cwd\":\"/\",\"inputs\":[],\
             \"duration_ms\":0,\"status\":0,\"stdout_bytes\":3,\"stderr_bytes\":0}', '1-old')",
            [&key.hex],
        )
        .unwrap();
        drop(conn);
        fs::create_dir(dir.path().join(OLD_DATA_DIR)).unwrap();
        fs::write(dir.path().join(OLD_DATA_DIR).join("1-old"), b"hi\n").unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.lookup(&key.hex).unwrap().is_none(), "a miss, not a misread");
        assert!(!dir.path().join(OLD_DATA_DIR).exists(), "its data files went too");
        record(&store, &key, b"new\n");
        assert_eq!(
            replay_all(&store, &key.hex),
            vec![(Stream::Stdout, b"new\n".to_vec())]
        );
    }

    #[test]
    fn a_cache_whose_blobs_sum_their_raw_bytes_is_rebuilt_not_misread() {
        // Version 5: the same tables, each blob's checksum of its raw bytes.
        // Read as version 6, every blob would look damaged.
        let dir = tempfile::tempdir().unwrap();
        let key = crate::key::KeyBuilder::new().finish();
        let store = Store::open(dir.path()).unwrap();
        record(&store, &key, &noise(3 << 20, 5));
        store.conn.pragma_update(None, "user_version", 5).unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert!(store.lookup(&key.hex).unwrap().is_none(), "a miss, not a misread");
        let left: i64 = store
            .conn
            .query_row("SELECT count(*) FROM blobs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0, "its blobs went too");
        assert!(!dir.path().join(BLOB_DIR).exists(), "and their packs");
        record(&store, &key, b"new\n");
        assert_eq!(
            replay_all(&store, &key.hex),
            vec![(Stream::Stdout, b"new\n".to_vec())]
        );
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

    /// Bytes no codec shrinks, so large blobs go to a pack.
    use crate::blob::noise;

    #[test]
    fn an_entry_replaced_after_its_lookup_is_gone_not_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let reader = Store::open(dir.path()).unwrap();
        let writer = Store::open(dir.path()).unwrap();
        let key = crate::key::KeyBuilder::new().finish();
        // Blobs in SQLite only, then in files.
        for len in [100, 2 << 20] {
            record(&writer, &key, &noise(len, 1));
            let old = reader.lookup(&key.hex).unwrap().unwrap();
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
        second.delete_entry(a.pending.id).unwrap();
        let mut b = second.begin(&key_b, "b", "/").unwrap();
        assert_eq!(a.pending.id, b.pending.id, "the row id is reused");
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

    /// Replays `key`'s entry into one buffer, tagging each write.
    fn replay_all(store: &Store, key: &str) -> Vec<(Stream, Vec<u8>)> {
        let entry = store.lookup(key).unwrap().unwrap();
        let mut out: Vec<(Stream, Vec<u8>)> = Vec::new();
        store
            .replay(&entry, |stream, bytes| {
                match out.last_mut() {
                    Some((s, b)) if *s == stream => b.extend_from_slice(bytes),
                    _ => out.push((stream, bytes.to_vec())),
                }
                Ok(())
            })
            .unwrap();
        out
    }

    fn key_named(name: &str) -> crate::key::Key {
        let mut builder = crate::key::KeyBuilder::new();
        builder.field("scope", name.as_bytes());
        builder.finish()
    }

    fn blob_rows(store: &Store) -> i64 {
        store
            .conn
            .query_row("SELECT count(*) FROM blobs", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn the_interleaving_comes_back_across_blob_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = key_named("weave");
        let mut recording = store.begin(&key, "cmd", "/").unwrap();
        let mut expected: Vec<(Stream, Vec<u8>)> = Vec::new();
        // Runs of both streams, some longer than a blob, some tiny.
        for (i, len) in [10usize, 300_000, 7, 600_000, 1, 5, 262_144, 3]
            .into_iter()
            .enumerate()
        {
            let stream = if i % 2 == 0 {
                Stream::Stdout
            } else {
                Stream::Stderr
            };
            let bytes = noise(len, i as u64 + 1);
            for piece in bytes.chunks(40_000) {
                recording.write(stream, piece).unwrap();
            }
            expected.push((stream, bytes));
        }
        recording.finish(0, Duration::ZERO).unwrap();
        assert_eq!(replay_all(&store, &key.hex), expected);
    }

    #[test]
    fn the_same_bytes_are_stored_once_and_a_shared_blob_outlives_one_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let out = noise(3 << 20, 9);
        let (a, b) = (key_named("a"), key_named("b"));
        record(&store, &a, &out);
        let blobs = blob_rows(&store);
        record(&store, &b, &out);
        assert_eq!(blob_rows(&store), blobs, "stored once");
        let entry = store.lookup(&a.hex).unwrap().unwrap();
        store.forget(&entry).unwrap();
        assert_eq!(replay_all(&store, &b.hex), vec![(Stream::Stdout, out.clone())]);
        // Replaced by other bytes: the last use goes, and the blobs with it.
        record(&store, &b, b"other");
        assert_eq!(blob_rows(&store), 1);
        let files = walkdir::WalkDir::new(dir.path().join(BLOB_DIR))
            .into_iter()
            .filter(|e| e.as_ref().unwrap().file_type().is_file())
            .count();
        assert_eq!(files, 0, "their files went with them");
    }
}

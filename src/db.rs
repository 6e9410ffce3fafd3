//! Opening the SQLite files lcrun keeps in its cache directory (`cache.db`,
//! `jobs.db`), one way for both: created 0600 by us, checked to be the
//! user's own with their WAL files, never reached through a symlink, WAL
//! kept between runs and not checkpointed on close.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::store::StoreError;
use crate::trust;

/// How long a write waits for another process's write transaction.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(20);

/// A database file's device and inode: which file was opened, so that a
/// damaged one is moved aside and not a newer one in its place.
pub type FileId = (u64, u64);

/// An open database and the file it is.
pub struct Db {
    /// The connection.
    pub conn: Connection,
    /// The database file opened.
    pub id: FileId,
}

/// Opens `path` (creating it 0600 if missing): the file and its -wal and
/// -shm must be the user's own and writable by no one else.
pub fn open(path: &Path) -> Result<Db, StoreError> {
    configure_sqlite();
    let id = match check_files(path)? {
        Some(id) => id,
        None => {
            let meta = create_private_file(path)?;
            (meta.dev(), meta.ino())
        }
    };
    // SQLite opens every file (-wal and -shm too) with O_NOFOLLOW; NOFOLLOW
    // also refuses a symlink anywhere in the path it resolves.
    let flags =
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_NOFOLLOW;
    let conn = Connection::open_with_flags(path, flags)?;
    // Writers hold the lock for one short transaction; parallel `make -j`
    // runs wait their turn instead of failing with "database is locked".
    conn.busy_timeout(BUSY_TIMEOUT)?;
    persist_wal(&conn);
    // A reader closing last would checkpoint (three fsyncs) on every hit;
    // writers leave the WAL empty instead (see `Store::tidy_wal`).
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
    Ok(Db { conn, id })
}

/// Opens `path` for reading only, after the same ownership checks as
/// [`open`]; `None` when there is no database. Nothing is created or
/// written: for shell completion, which runs on every Tab.
pub fn open_read_only(path: &Path) -> Result<Option<Connection>, StoreError> {
    if check_files(path)?.is_none() {
        return Ok(None);
    }
    configure_sqlite();
    let flags =
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_NOFOLLOW;
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    if Path::new(&wal).exists() {
        return Ok(Some(Connection::open_with_flags(path, flags)?));
    }
    // No WAL: everything is in the file. Read as immutable, or SQLite
    // would create the -wal and -shm files to read it. A writer that starts
    // meanwhile may make this read stale or fail: a completion offers less.
    // An absolute path after `file://`, so that `//tmp/c` is not read as
    // the host `tmp`.
    let authority = if path.is_absolute() { "//" } else { "" };
    let uri = format!("file:{authority}{}?immutable=1", uri_path(path));
    Ok(Some(Connection::open_with_flags(
        uri,
        flags | OpenFlags::SQLITE_OPEN_URI,
    )?))
}

/// `path` for a `file:` URI: every byte but the unreserved ones and `/`
/// percent-encoded.
fn uri_path(path: &Path) -> String {
    let mut out = String::new();
    for &b in path.as_os_str().as_encoded_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Makes a database being created a WAL database. It holds nothing to lose
/// yet: a power cut while it is created leaves at worst a damaged file,
/// which is moved aside; so no fsyncs (creating `cache.db` took 7 with
/// them).
pub fn start_wal(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "synchronous", "OFF")?;
    // WAL is a property of the file; set once, outside a transaction.
    conn.pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(()))
}

/// Creates a database file ourselves, if missing, so it is 0600 from its
/// first byte; SQLite gives its -wal and -shm files the same mode. An
/// existing file must be ours alone, and not a symlink.
pub fn create_private_file(path: &Path) -> Result<fs::Metadata, StoreError> {
    let (_, meta) = trust::open(path, OpenOptions::new().create(true).append(true))?;
    Ok(meta)
}

/// Checks the database and its WAL files before SQLite opens them: one
/// `lstat` each, no file opened. Returns the database's identity, or `None`
/// when it does not exist yet.
fn check_files(db: &Path) -> Result<Option<FileId>, StoreError> {
    let mut id = None;
    for suffix in ["", "-wal", "-shm"] {
        // Not format!: on a hit its machinery cost 2.8k instructions here.
        let mut path = db.as_os_str().to_owned();
        path.push(suffix);
        let path = PathBuf::from(path);
        match fs::symlink_metadata(&path) {
            Ok(meta) => {
                trust::check(&path, &meta, false)?;
                if suffix.is_empty() {
                    id = Some((meta.dev(), meta.ino()));
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(StoreError::Io { path, source }),
        }
    }
    Ok(id)
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

//! Recovering from a damaged database: it is moved aside (with its WAL
//! files and blob files) and a new one started, by one process under a
//! lock, and only if it is still the file found damaged.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{lock_file, now_ms, trusted_dir, Store, StoreError, BLOB_DIR};
use crate::db::FileId;

/// Where the lock is that makes one process at a time recover a damaged
/// database.
const RECOVER_LOCK: &str = "cache.db.recover";

impl Store {
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
        let Store { conn, dir, db_id, .. } = self;
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
    // Its blob files go with it: the new database knows none of them.
    let _ = fs::rename(dir.join(BLOB_DIR), format!("{}-{BLOB_DIR}", moved.display()));
    Ok(moved)
}

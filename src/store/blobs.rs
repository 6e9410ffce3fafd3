//! The local tier's blobs: small ones as rows of SQLite, large ones as
//! files `blobs/<2 hex>/<64 hex>` written to a temp file and renamed into
//! place. Each is stored compressed (zstd or LZ4) with the XXH3 of its raw
//! bytes, which every read verifies: a full SHA-256 of every byte would
//! double a large local replay. Bytes from another tier are verified by
//! SHA-256 against their name instead (see [`super::chain`]).
//!
//! Which record uses which blob is in `uses`: a writer takes its use of a
//! digest before it looks for the blob, so a blob it finds stays, and a
//! blob goes only with its last use (see `Store::delete_rows`).

use std::cell::RefCell;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::path::PathBuf;

use rusqlite::{params, OptionalExtension};

use super::{create_trusted_dir, Store, StoreError, BLOB_DIR};
use crate::blob::{BlobError, BlobStore, Digest};
use crate::compress::{self, Codec, Packed};
use crate::output::Stream;
use crate::trust;

/// Stored blobs at least this large go to a file of their own; smaller ones
/// (every blob of a short output) stay in SQLite, so a hit on them opens
/// nothing more.
pub(super) const FILE_BLOB_BYTES: usize = 16 * 1024;

/// The pending record a writer's blobs are used by: its row id and the
/// record as written, which each write checks the row still holds.
pub(super) struct Pending {
    pub(super) id: i64,
    pub(super) meta: String,
}

/// A blob as stored: how to decode it and what it must decode to.
pub(super) struct Stored {
    pub(super) codec: Codec,
    pub(super) raw_len: usize,
    pub(super) sum: u64,
}

impl Store {
    /// Where the file of a large blob is.
    pub(super) fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.dir.join(BLOB_DIR).join(&hex[..2]).join(hex)
    }

    /// Records that `pending` uses `digest`, so no one deletes the blob from
    /// now on. Does nothing if the pending row is no longer `pending`'s (it
    /// was taken for abandoned): the commit finds that out.
    fn take_use(&self, pending: &Pending, digest: &Digest) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT OR IGNORE INTO uses (entry_id, digest) SELECT ?1, ?2 \
                 WHERE EXISTS (SELECT 1 FROM entries WHERE id = ?1 AND key IS NULL AND meta = ?3)",
            )?
            .execute(params![pending.id, &digest.as_bytes()[..], pending.meta])?;
        Ok(())
    }

    /// Whether the blob is stored whole, its file included. A file lost or
    /// cut since (by hand, by a crash of the disk) is not: the blob is
    /// stored again rather than shared damaged.
    fn blob_present(&self, digest: &Digest) -> Result<bool, StoreError> {
        match self.check_blob(digest) {
            Ok(found) => Ok(found.is_some()),
            Err(StoreError::Sqlite(err)) => Err(StoreError::Sqlite(err)),
            Err(_) => Ok(false),
        }
    }

    /// Stores a compressed blob for `pending`: its use first, then the
    /// bytes, unless the blob is stored already. Returns the bytes stored.
    pub(super) fn put_packed(&self, pending: &Pending, packed: &Packed) -> Result<u64, StoreError> {
        self.take_use(pending, &packed.digest)?;
        if self.blob_present(&packed.digest)? {
            return Ok(0);
        }
        self.write_blob(
            &packed.digest,
            packed.codec,
            packed.raw.len(),
            packed.sum,
            packed.data(),
        )?;
        Ok(packed.data().len() as u64)
    }

    /// Writes a blob that is not stored yet: a large one to its file first,
    /// then its row, so a row never names a file not yet in place.
    fn write_blob(
        &self,
        digest: &Digest,
        codec: Codec,
        raw_len: usize,
        sum: u64,
        data: &[u8],
    ) -> Result<(), StoreError> {
        let (in_row, file_len) = if data.len() >= FILE_BLOB_BYTES {
            self.write_blob_file(digest, data)?;
            (None, Some(data.len() as i64))
        } else {
            (Some(data), None)
        };
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO blobs (digest, codec, raw_len, xxh3, data, file_len) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                &digest.as_bytes()[..],
                codec as i64,
                raw_len as i64,
                sum as i64,
                in_row,
                file_len
            ])?;
        Ok(())
    }

    /// Writes a large blob's file: to a temp file in its directory, renamed
    /// into place, so no reader sees half of it and a crash leaves at most a
    /// temp file (swept later). Two writers of one digest write the same
    /// bytes; the second rename only replaces them with themselves.
    fn write_blob_file(&self, digest: &Digest, data: &[u8]) -> Result<(), StoreError> {
        let path = self.blob_path(digest);
        let dir = path.parent().unwrap_or(&self.dir).to_owned();
        create_trusted_dir(&dir)?;
        let temp = dir.join(format!(
            "{}{}",
            super::sweep::TEMP_PREFIX,
            super::recording::new_token()
        ));
        let io = |source| StoreError::Io {
            path: temp.clone(),
            source,
        };
        let written = (|| {
            // create_new: never an existing file, nor through a symlink.
            let (mut file, _) = trust::open(&temp, OpenOptions::new().write(true).create_new(true))?;
            file.write_all(data).map_err(io)?;
            drop(file);
            fs::rename(&temp, &path).map_err(io)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&temp);
        }
        written
    }

    /// Reads a blob's stored bytes into `buf`; `None` when it is not stored.
    /// The bytes are still to be decoded and verified ([`compress::Decoder`]).
    pub(super) fn read_blob(&self, digest: &Digest, buf: &mut Vec<u8>) -> Result<Option<Stored>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT codec, raw_len, xxh3, data, file_len FROM blobs WHERE digest = ?1")?;
        let mut rows = stmt.query([&digest.as_bytes()[..]])?;
        let Some(row) = rows.next()? else {
            return Ok(None);
        };
        let codec =
            Codec::from_tag(row.get(0)?).ok_or_else(|| StoreError::Damaged("unknown codec".into()))?;
        let stored = Stored {
            codec,
            raw_len: row.get::<_, i64>(1)?.max(0) as usize,
            sum: row.get::<_, i64>(2)? as u64,
        };
        buf.clear();
        match row.get_ref(3)?.as_blob_or_null().map_err(rusqlite::Error::from)? {
            Some(data) => buf.extend_from_slice(data),
            None => {
                let path = self.blob_path(digest);
                let (mut file, meta) = match trust::open(&path, OpenOptions::new().read(true)) {
                    Ok(open) => open,
                    Err(err) if err.io_kind() == Some(std::io::ErrorKind::NotFound) => return Ok(None),
                    Err(err) => return Err(err.into()),
                };
                let file_len = row.get::<_, Option<i64>>(4)?.unwrap_or(-1);
                if meta.len() as i64 != file_len {
                    return Err(StoreError::Damaged(format!(
                        "blob file {} is {} bytes, not {file_len}",
                        path.display(),
                        meta.len()
                    )));
                }
                buf.reserve(meta.len() as usize);
                file.read_to_end(buf)
                    .map_err(|source| StoreError::Io { path, source })?;
            }
        }
        Ok(Some(stored))
    }

    /// Checks, without reading it, that a blob is stored whole: its row is
    /// there and its file, if it has one, has the recorded size. `None`
    /// when the blob is not stored. A replay too large to verify before
    /// its first byte checks this of every blob first, so a missing or cut
    /// file is still a miss, not half an output.
    pub(super) fn check_blob(&self, digest: &Digest) -> Result<Option<()>, StoreError> {
        let file_len: Option<Option<i64>> = self
            .conn
            .prepare_cached("SELECT file_len FROM blobs WHERE digest = ?1")?
            .query_row([&digest.as_bytes()[..]], |row| row.get(0))
            .optional()?;
        let Some(file_len) = file_len else {
            return Ok(None);
        };
        let Some(file_len) = file_len else {
            return Ok(Some(()));
        };
        let path = self.blob_path(digest);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() && meta.len() as i64 == file_len => Ok(Some(())),
            Ok(meta) => Err(StoreError::Damaged(format!(
                "blob file {} is {} bytes, not {file_len}",
                path.display(),
                meta.len()
            ))),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// Drops a blob found missing or damaged, row and file, so the next
    /// run that produces these bytes stores them afresh instead of using
    /// the damaged copy. The records that use it fail their next replay
    /// and are dropped then.
    pub(super) fn forget_blob(&self, digest: &Digest) {
        let _ = fs::remove_file(self.blob_path(digest));
        let _ = self
            .conn
            .execute("DELETE FROM blobs WHERE digest = ?1", [&digest.as_bytes()[..]]);
    }

    /// Within `tx`: deletes the blob unless a record still uses it; its
    /// file is unlinked before the commit (see `Store::delete_rows`).
    pub(super) fn drop_unused_blob(
        &self,
        tx: &rusqlite::Transaction<'_>,
        digest: &[u8],
    ) -> Result<(), StoreError> {
        let used = tx
            .prepare_cached("SELECT 1 FROM uses WHERE digest = ?1 LIMIT 1")?
            .exists([digest])?;
        if used {
            return Ok(());
        }
        let in_file: Option<bool> = tx
            .prepare_cached("SELECT data IS NULL FROM blobs WHERE digest = ?1")?
            .query_row([digest], |row| row.get(0))
            .optional()?;
        // The path comes from the digest's own bytes, never from a name
        // stored in the database.
        if let (Some(true), Some(digest)) = (in_file, Digest::from_bytes(digest)) {
            let _ = fs::remove_file(self.blob_path(&digest));
        }
        tx.prepare_cached("DELETE FROM blobs WHERE digest = ?1")?
            .execute([digest])?;
        Ok(())
    }
}

/// The local tier as a [`BlobStore`], for capturing and restoring output
/// files. Given a pending record, every blob it is asked about or handed is
/// used by that record.
pub struct LocalBlobs<'s> {
    store: &'s Store,
    pending: Option<&'s Pending>,
    compressor: RefCell<Option<zstd::bulk::Compressor<'static>>>,
    decoder: RefCell<compress::Decoder>,
    spare: RefCell<(Vec<u8>, Vec<u8>)>,
    /// Stored bytes written, for the record's size.
    pub(super) stored: std::cell::Cell<u64>,
}

impl<'s> LocalBlobs<'s> {
    /// Blobs to read, or, with `pending`, to store for that record.
    pub(super) fn new(store: &'s Store, pending: Option<&'s Pending>) -> LocalBlobs<'s> {
        LocalBlobs {
            store,
            pending,
            compressor: RefCell::default(),
            decoder: RefCell::default(),
            spare: RefCell::default(),
            stored: 0.into(),
        }
    }
}

fn blob_error(digest: &Digest, err: StoreError) -> BlobError {
    match err {
        StoreError::Damaged(_) | StoreError::Untrusted(_) => BlobError::Damaged(*digest),
        StoreError::Io { source, .. } => BlobError::Io(source),
        other => BlobError::Io(std::io::Error::other(other.to_string())),
    }
}

impl BlobStore for LocalBlobs<'_> {
    /// For a pending record, the blob is its from now on if present: it
    /// stays until the record goes.
    fn has(&self, digest: &Digest) -> Result<bool, BlobError> {
        if let Some(pending) = self.pending {
            self.store
                .take_use(pending, digest)
                .map_err(|e| blob_error(digest, e))?;
        }
        self.store.blob_present(digest).map_err(|e| blob_error(digest, e))
    }

    /// Output files arrive as fast as the disk reads them: LZ4 for a full
    /// blob (zstd would halve the rate of a large `-o`), zstd for a short
    /// one, where it costs nothing noticeable.
    fn put(&self, digest: &Digest, bytes: &[u8]) -> Result<(), BlobError> {
        if let Some(pending) = self.pending {
            self.store
                .take_use(pending, digest)
                .map_err(|e| blob_error(digest, e))?;
        }
        let mut compressor = self.compressor.borrow_mut();
        let compressor = match &mut *compressor {
            Some(c) => c,
            None => compressor.insert(compress::new_compressor()?),
        };
        let codec = if bytes.len() >= FILE_BLOB_BYTES {
            Codec::Lz4
        } else {
            Codec::Zstd
        };
        let (raw, out) = std::mem::take(&mut *self.spare.borrow_mut());
        let mut raw = raw;
        raw.clear();
        raw.extend_from_slice(bytes);
        let packed = compress::pack(compressor, codec, Stream::Stdout, raw, out)?;
        if packed.digest != *digest {
            return Err(BlobError::Damaged(*digest));
        }
        self.store
            .write_blob(digest, packed.codec, bytes.len(), packed.sum, packed.data())
            .map_err(|e| blob_error(digest, e))?;
        self.stored.set(self.stored.get() + packed.data().len() as u64);
        *self.spare.borrow_mut() = (packed.raw, packed.compressed);
        Ok(())
    }

    fn get(&self, digest: &Digest, buf: &mut Vec<u8>) -> Result<(), BlobError> {
        let mut spare = self.spare.borrow_mut();
        let stored_bytes = &mut spare.1;
        let stored = match self.store.read_blob(digest, stored_bytes) {
            Ok(Some(stored)) => stored,
            Ok(None) => return Err(BlobError::Missing(*digest)),
            Err(err) => return Err(blob_error(digest, err)),
        };
        buf.clear();
        self.decoder
            .borrow_mut()
            .unpack(stored.codec, stored_bytes, stored.raw_len, stored.sum, buf)
            .map_err(|_| BlobError::Damaged(*digest))?;
        Ok(())
    }
}

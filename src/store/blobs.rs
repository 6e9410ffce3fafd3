//! The local tier's blobs: small ones as rows of SQLite, large ones as
//! ranges of pack files `blobs/<token>.pack`, one per recording, appended to
//! as its output arrives. Each is stored compressed (zstd or LZ4) with the
//! XXH3 of its stored bytes, which every read verifies before decoding: a
//! full SHA-256 of every byte would double a large local replay. Bytes from another tier are
//! verified by SHA-256 against their name instead (see [`super::chain`]).
//!
//! Why packs, not a file per blob: a 1 GiB output is 4096 blobs, and
//! creating 4096 files took its miss from 0.8 s to 3.7-4.3 s on the 2-core
//! VM (ext4 took 0.7 ms per create while builds ran beside it), and opening
//! them its replay from 0.16-0.21 s to 0.28-0.33 s. A blob is still named
//! by its digest alone; only where its bytes lie is local.
//!
//! Which record uses which blob is in `uses`: a writer takes its use of a
//! digest before it looks for the blob, so a blob it finds stays, and a
//! blob goes only with its last use (see `Store::delete_rows`); a pack goes
//! with its last blob. A row is written only after its bytes are in the
//! pack, so no reader sees half a blob.

use std::cell::RefCell;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use rusqlite::{params, OptionalExtension};

use super::recording::{BATCH_BLOBS, BATCH_TIME};
use super::{create_trusted_dir, Store, StoreError, BLOB_DIR};
use crate::blob::{BlobError, BlobStore, Contents, Digest, BLOB_BYTES};
use crate::compress::{self, Codec, Packed};
use crate::output::Stream;
use crate::trust;

/// Stored blobs at least this large go to a pack file; smaller ones (every
/// blob of a short output) stay in SQLite, so a hit on them opens nothing
/// more.
pub(super) const FILE_BLOB_BYTES: usize = 16 * 1024;

/// The most bytes a stored blob can take: compression never grows a blob
/// of [`BLOB_BYTES`] by more than a few bytes per kilobyte.
const MAX_STORED_BYTES: usize = 2 * BLOB_BYTES;

/// How pack files' names end.
pub(super) const PACK_SUFFIX: &str = ".pack";

/// The pending record a writer's blobs are used by: its row id and the
/// record as written, which each write checks the row still holds; and the
/// pack its large blobs are appended to.
pub(super) struct Pending {
    pub(super) id: i64,
    pub(super) meta: String,
    pub(super) pack: RefCell<Option<Pack>>,
}

/// A pack file being appended to.
pub(super) struct Pack {
    pub(super) name: String,
    file: fs::File,
    len: u64,
}

/// A blob as stored: how to decode it and what it must decode to.
pub(super) struct Stored {
    pub(super) codec: Codec,
    pub(super) raw_len: usize,
    pub(super) sum: u64,
}

/// Where a stored blob's bytes are.
enum Place {
    /// In its row.
    Row,
    /// In a pack: its name (checked to be plain), offset and length.
    Pack(String, u64, u64),
}

impl Store {
    /// Where a pack file is. `None` unless `name` is a plain file name: the
    /// database is not trusted to say what to open or delete.
    pub(super) fn pack_path(&self, name: &str) -> Option<PathBuf> {
        trust::plain_name(name).then(|| self.dir.join(BLOB_DIR).join(name))
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

    /// Whether the blob is stored whole, its pack included. A pack lost or
    /// cut since (by hand, by a disk) is not: the blob is stored again
    /// rather than shared damaged.
    fn blob_present(&self, digest: &Digest) -> Result<bool, StoreError> {
        match self.check_blob(digest, &mut None) {
            Ok(found) => Ok(found.is_some()),
            Err(StoreError::Sqlite(err)) => Err(StoreError::Sqlite(err)),
            Err(_) => Ok(false),
        }
    }

    /// Stores a compressed blob for `pending`: its use first, then the
    /// bytes, unless the blob is stored already. Returns the bytes stored.
    /// The caller holds a transaction around it (see `Recording`'s batch).
    pub(super) fn put_packed(&self, pending: &Pending, packed: &Packed) -> Result<u64, StoreError> {
        self.take_use(pending, &packed.digest)?;
        if self.blob_present(&packed.digest)? {
            return Ok(0);
        }
        self.write_packed(&pending.pack, packed)
    }

    /// Writes a packed blob that is not stored yet (see [`Store::write_blob`]);
    /// returns the bytes stored.
    fn write_packed(&self, pack: &RefCell<Option<Pack>>, packed: &Packed) -> Result<u64, StoreError> {
        self.write_blob(
            pack,
            &packed.digest,
            packed.codec,
            packed.raw.len(),
            packed.sum,
            packed.data(),
        )?;
        Ok(packed.data().len() as u64)
    }

    /// Writes a blob that is not stored yet: a large one appended to `pack`
    /// first, then its row, so a row never names bytes not yet written.
    fn write_blob(
        &self,
        pack: &RefCell<Option<Pack>>,
        digest: &Digest,
        codec: Codec,
        raw_len: usize,
        sum: u64,
        data: &[u8],
    ) -> Result<(), StoreError> {
        let (in_row, place) = if data.len() >= FILE_BLOB_BYTES {
            (None, Some(self.append_to_pack(pack, data)?))
        } else {
            (Some(data), None)
        };
        let (name, at, len) = match &place {
            Some((name, at)) => (Some(name.as_str()), Some(*at as i64), Some(data.len() as i64)),
            None => (None, None, None),
        };
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO blobs (digest, codec, raw_len, xxh3, data, pack, at, len) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                &digest.as_bytes()[..],
                codec as i64,
                raw_len as i64,
                sum as i64,
                in_row,
                name,
                at,
                len
            ])?;
        Ok(())
    }

    /// Appends `data` to the pack, creating it first; returns the pack's
    /// name and where the bytes start.
    fn append_to_pack(&self, pack: &RefCell<Option<Pack>>, data: &[u8]) -> Result<(String, u64), StoreError> {
        let mut pack = pack.borrow_mut();
        let pack = match &mut *pack {
            Some(pack) => pack,
            None => {
                let dir = self.dir.join(BLOB_DIR);
                create_trusted_dir(&dir)?;
                let (name, file) = self.new_pack(&dir)?;
                pack.insert(Pack { name, file, len: 0 })
            }
        };
        let at = pack.len;
        pack.file.write_all(data).map_err(|source| StoreError::Io {
            path: self.dir.join(BLOB_DIR).join(&pack.name),
            source,
        })?;
        pack.len += data.len() as u64;
        Ok((pack.name.clone(), at))
    }

    /// Creates a pack in `dir` and locks it for as long as it is written
    /// to: the lock tells the sweep its writer is alive (see `sweep`).
    fn new_pack(&self, dir: &std::path::Path) -> Result<(String, fs::File), StoreError> {
        loop {
            let name = format!("{}{PACK_SUFFIX}", super::recording::new_token());
            // create_new: never an existing file, nor through a symlink.
            let path = dir.join(&name);
            let (file, _) = trust::open(&path, OpenOptions::new().write(true).create_new(true))?;
            // Where there are no locks, the sweep goes by age instead.
            let _ = file.try_lock();
            // A sweep that came between the create and the lock took the
            // pack for an orphan (it had to be seconds old: a stalled
            // machine): another one, then.
            match rustix::fs::fstat(&file) {
                Ok(stat) if stat.st_nlink == 0 => continue,
                _ => return Ok((name, file)),
            }
        }
    }

    /// Where a blob's bytes are; `None` when it is not stored.
    fn place(&self, digest: &Digest) -> Result<Option<Place>, StoreError> {
        let row: Option<(Option<String>, Option<i64>, Option<i64>)> = self
            .conn
            .prepare_cached("SELECT pack, at, len FROM blobs WHERE digest = ?1")?
            .query_row([&digest.as_bytes()[..]], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })
            .optional()?;
        Ok(row.map(|(pack, at, len)| match pack {
            None => Place::Row,
            Some(name) => Place::Pack(
                name,
                at.unwrap_or(0).max(0) as u64,
                len.unwrap_or(0).max(0) as u64,
            ),
        }))
    }

    /// Opens a pack to read, once per replay for a run of blobs in it.
    fn open_pack(&self, name: &str) -> Result<(fs::File, u64), StoreError> {
        let path = self
            .pack_path(name)
            .ok_or_else(|| StoreError::Damaged(format!("pack name {name:?} is not a plain name")))?;
        let (file, meta) = trust::open(&path, OpenOptions::new().read(true))?;
        Ok((file, meta.len()))
    }

    /// Reads a blob's stored bytes into `buf`; `None` when it is not stored.
    /// The bytes are still to be decoded and verified ([`compress::Decoder`]).
    pub(super) fn read_blob(&self, digest: &Digest, buf: &mut Vec<u8>) -> Result<Option<Stored>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT codec, raw_len, xxh3, data, pack, at, len FROM blobs WHERE digest = ?1",
        )?;
        let mut rows = stmt.query([&digest.as_bytes()[..]])?;
        let Some(row) = rows.next()? else {
            return Ok(None);
        };
        let codec = Codec::from_tag(row.get(0).map_err(|e| row_damage(digest, e))?)
            .ok_or_else(|| StoreError::Damaged("unknown codec".into()))?;
        let stored = Stored {
            codec,
            raw_len: row.get::<_, i64>(1).map_err(|e| row_damage(digest, e))?.max(0) as usize,
            sum: row.get::<_, i64>(2).map_err(|e| row_damage(digest, e))? as u64,
        };
        // Lengths read from the database size buffers: one damaged integer
        // must be damage, not an allocation of a petabyte.
        if stored.raw_len > BLOB_BYTES {
            return Err(StoreError::Damaged(format!(
                "blob {digest} claims {} bytes",
                stored.raw_len
            )));
        }
        if let Some(data) = row
            .get_ref(3)?
            .as_blob_or_null()
            .map_err(|e| row_damage(digest, e.into()))?
        {
            buf.clear();
            buf.extend_from_slice(data);
            return Ok(Some(stored));
        }
        let name: String = row.get(4).map_err(|e| row_damage(digest, e))?;
        let at = row.get::<_, i64>(5).map_err(|e| row_damage(digest, e))?.max(0) as u64;
        let len = row.get::<_, i64>(6).map_err(|e| row_damage(digest, e))?.max(0) as usize;
        if len > MAX_STORED_BYTES {
            return Err(StoreError::Damaged(format!(
                "blob {digest} claims {len} stored bytes"
            )));
        }
        drop(rows);
        let mut open = self.reading.borrow_mut();
        if open.as_ref().is_none_or(|(n, _, _)| *n != name) {
            let (file, size) = match self.open_pack(&name) {
                Ok(opened) => opened,
                Err(err) if is_not_found(&err) => return Ok(None),
                Err(err) => return Err(err),
            };
            *open = Some((name.clone(), file, size));
        }
        let Some((_, file, size)) = open.as_ref() else {
            return Ok(None);
        };
        if at + len as u64 > *size {
            return Err(StoreError::Damaged(format!("pack {name} is cut short")));
        }
        // Grown, and zeroed, only past what it held before: a reused
        // buffer is overwritten by the read, not cleared first.
        buf.resize(len, 0);
        file.read_exact_at(buf, at).map_err(|source| StoreError::Io {
            path: self.dir.join(BLOB_DIR).join(&name),
            source,
        })?;
        Ok(Some(stored))
    }

    /// Checks, without reading it, that a blob is stored whole: its row is
    /// there and its pack, if it has one, holds its bytes. `None` when the
    /// blob is not stored. A replay too large to verify before its first
    /// byte checks this of every blob first, so a missing or cut pack is
    /// still a miss, not half an output. `seen` keeps the size of the
    /// last pack looked at, so a run of blobs in one pack costs one `stat`.
    pub(super) fn check_blob(
        &self,
        digest: &Digest,
        seen: &mut Option<(String, u64)>,
    ) -> Result<Option<()>, StoreError> {
        let Some(place) = self.place(digest)? else {
            return Ok(None);
        };
        let Place::Pack(name, at, len) = place else {
            return Ok(Some(()));
        };
        let path = self
            .pack_path(&name)
            .ok_or_else(|| StoreError::Damaged(format!("pack name {name:?} is not a plain name")))?;
        let size = match seen {
            Some((seen_name, size)) if *seen_name == name => *size,
            _ => match fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_file() => {
                    *seen = Some((name, meta.len()));
                    meta.len()
                }
                Ok(_) => 0,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(source) => return Err(StoreError::Io { path, source }),
            },
        };
        if size < at + len {
            return Err(StoreError::Damaged(format!(
                "pack {} is cut short",
                path.display()
            )));
        }
        Ok(Some(()))
    }

    /// Drops a blob found missing or damaged, so the next run that
    /// produces these bytes stores them afresh instead of using the damaged
    /// copy. The records that use it fail their next replay and are dropped
    /// then.
    pub(super) fn forget_blob(&self, digest: &Digest) {
        self.end_read();
        let pack = self.place(digest).ok().flatten();
        let _ = self
            .conn
            .execute("DELETE FROM blobs WHERE digest = ?1", [&digest.as_bytes()[..]]);
        if let Some(Place::Pack(name, ..)) = pack {
            let _ = self.drop_pack_if_empty(&self.conn, &name);
        }
    }

    /// Unlinks a pack no blob row names any more.
    fn drop_pack_if_empty(&self, conn: &rusqlite::Connection, name: &str) -> Result<(), StoreError> {
        let named = conn
            .prepare_cached("SELECT 1 FROM blobs WHERE pack = ?1 LIMIT 1")?
            .exists([name])?;
        if !named {
            if let Some(path) = self.pack_path(name) {
                let _ = fs::remove_file(path);
            }
        }
        Ok(())
    }

    /// Within `tx`: deletes the blob unless a record still uses it; its
    /// pack, when this was its last blob, is unlinked before the commit
    /// (see `Store::delete_rows`).
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
        let pack: Option<Option<String>> = tx
            .prepare_cached("SELECT pack FROM blobs WHERE digest = ?1")?
            .query_row([digest], |row| row.get(0))
            .optional()?;
        tx.prepare_cached("DELETE FROM blobs WHERE digest = ?1")?
            .execute([digest])?;
        if let Some(Some(name)) = pack {
            self.drop_pack_if_empty(tx, &name)?;
        }
        Ok(())
    }

    /// Within `tx`, before a recording's rows go: unlinks its pack if no
    /// other record uses a blob in it, so the space is free for the
    /// transaction (on a full disk, deleting rows needs some).
    pub(super) fn drop_own_pack(
        &self,
        tx: &rusqlite::Transaction<'_>,
        pending: &Pending,
    ) -> Result<(), StoreError> {
        let Some(name) = pending.pack.borrow_mut().take().map(|pack| pack.name) else {
            return Ok(());
        };
        let shared = tx
            .prepare_cached(
                "SELECT 1 FROM blobs JOIN uses ON uses.digest = blobs.digest \
                 WHERE blobs.pack = ?1 AND uses.entry_id != ?2 LIMIT 1",
            )?
            .exists(params![name, pending.id])?;
        if !shared {
            if let Some(path) = self.pack_path(&name) {
                let _ = fs::remove_file(path);
            }
        }
        Ok(())
    }
}

fn is_not_found(err: &StoreError) -> bool {
    matches!(err, StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

/// The local tier as a [`BlobStore`], for capturing and restoring output
/// files. Given a pending record, every blob it is asked about or handed is
/// used by that record.
pub struct LocalBlobs<'s> {
    store: &'s Store,
    pending: Option<&'s Pending>,
    /// The pack of large blobs put without a pending record.
    pack: RefCell<Option<Pack>>,
    compressor: RefCell<Option<zstd::bulk::Compressor<'static>>>,
    decoder: RefCell<compress::Decoder>,
    spare: RefCell<(Vec<u8>, Vec<u8>)>,
    /// Stored bytes written, for the record's size.
    pub(super) stored: std::cell::Cell<u64>,
    /// For a pending record's capture: blobs taken since its last commit,
    /// and when that batch began.
    batch: std::cell::Cell<(usize, Option<std::time::Instant>)>,
}

impl Store {
    /// The local tier's blobs, to read or to store outside a recording
    /// (the large ones put through it share one pack).
    pub fn blobs(&self) -> LocalBlobs<'_> {
        LocalBlobs::new(self, None)
    }
}

impl<'s> LocalBlobs<'s> {
    /// Blobs to read, or, with `pending`, to store for that record.
    pub(super) fn new(store: &'s Store, pending: Option<&'s Pending>) -> LocalBlobs<'s> {
        LocalBlobs {
            store,
            pending,
            pack: RefCell::default(),
            compressor: RefCell::default(),
            decoder: RefCell::default(),
            spare: RefCell::default(),
            stored: 0.into(),
            batch: Default::default(),
        }
    }
}

impl LocalBlobs<'_> {
    /// Within a capture's transaction, before each blob: commits the batch
    /// once it holds [`BATCH_BLOBS`] blobs or has lasted [`BATCH_TIME`], so
    /// another writer waits for the cache a batch's time at most, however
    /// long the capture takes. Every blob asks `has` first (see
    /// `store_blobs`), so that is where this is called.
    fn take_turn(&self) -> Result<(), StoreError> {
        if self.store.conn.is_autocommit() {
            return Ok(());
        }
        let (taken, began) = self.batch.get();
        let began = began.unwrap_or_else(std::time::Instant::now);
        if taken + 1 >= BATCH_BLOBS || began.elapsed() >= BATCH_TIME {
            self.store.conn.execute_batch("COMMIT")?;
            super::turns::stand_aside(&self.store.dir);
            self.store.conn.execute_batch("BEGIN IMMEDIATE")?;
            super::turns::not_waiting();
            self.batch.set((0, Some(std::time::Instant::now())));
        } else {
            self.batch.set((taken + 1, Some(began)));
        }
        Ok(())
    }

    /// Writes a packed blob that is not stored yet, for this record if it
    /// has one.
    pub(super) fn write_packed(&self, packed: &Packed) -> Result<(), StoreError> {
        let pack = self.pending.map_or(&self.pack, |pending| &pending.pack);
        let stored = self.store.write_packed(pack, packed)?;
        self.stored.set(self.stored.get() + stored);
        Ok(())
    }

    /// A blob's stored bytes, still to be decoded and checked.
    pub(super) fn read_stored(
        &self,
        digest: &Digest,
        buf: &mut Vec<u8>,
    ) -> Result<Option<Stored>, StoreError> {
        self.store.read_blob(digest, buf)
    }
}

/// A value of the wrong type in a blob's row (a text codec, a NULL length):
/// that blob's damage, and so its entry's, not the whole database's.
fn row_damage(digest: &Digest, err: rusqlite::Error) -> StoreError {
    if super::is_wrong_type(&err) {
        StoreError::Damaged(format!("blob {digest}'s row: {err}"))
    } else {
        err.into()
    }
}

pub(super) fn blob_error(digest: &Digest, err: StoreError) -> BlobError {
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
            self.take_turn().map_err(|e| blob_error(digest, e))?;
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
        // The caller named the bytes (store_stream hashes each blob to ask
        // `has` first); hashing them again here doubled the cost of `-o`.
        let packed = compress::pack(compressor, codec, Stream::Stdout, raw, out, Some(*digest))?;
        self.write_packed(&packed).map_err(|e| blob_error(digest, e))?;
        *self.spare.borrow_mut() = (packed.raw, packed.compressed);
        Ok(())
    }

    fn put_stream(&self, reader: &mut dyn std::io::Read) -> Result<Contents, BlobError> {
        self.put_stream_on_workers(reader)
    }

    fn get_stream(
        &self,
        contents: &Contents,
        out: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), BlobError> {
        self.get_stream_on_workers(contents, out)
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

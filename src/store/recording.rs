//! Recording a result: output goes in as it arrives, compressed in chunks,
//! under a pending row that no reader sees; it becomes an entry in one
//! commit, or is dropped, its data file first.

use std::fs::{self, OpenOptions};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::{
    create_trusted_dir, damaged, delete_rows, now_ms, to_json, Meta, Store, StoreError, CHUNK_BYTES,
    DATA_DIR, OUTCOME_KEEP_MS, OUTCOME_PREFIX,
};
use crate::compress::{self, Codec, Packed, Packer};
use crate::lock::KeyLock;
use crate::output::Stream;
use crate::trust;

/// Stored chunks at least this large go to the entry's data file; smaller
/// ones (every chunk of a short output) stay in SQLite, so replaying them
/// opens nothing more.
const FILE_CHUNK_BYTES: usize = 16 * 1024;

impl Store {
    /// Before a recording of `key`: removes the pending rows of writers that
    /// are gone (see `delete_abandoned`), and any other pending rows
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
            arrived: None,
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
}

/// A random token naming one recording (its pending row, its data file).
pub(super) fn new_token() -> String {
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

/// A result being recorded. Output goes in as it arrives; nothing is visible
/// to readers until [`Recording::finish`].
pub struct Recording<'s> {
    store: &'s Store,
    key: String,
    pub(super) id: i64,
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
    pub(super) spare: Vec<Vec<u8>>,
    /// Compressed-chunk buffers for reuse.
    pub(super) spare_compressed: Vec<Vec<u8>>,
    /// When the last chunk was handed on: the output's rate.
    last_flush: Instant,
    /// When the bytes being written arrived, if the writer says (see
    /// [`Recording::write_arrived`]).
    arrived: Option<Instant>,
    /// The data file large chunks are appended to, once there is one.
    file: Option<(PathBuf, fs::File)>,
    /// Bytes appended to the data file.
    file_bytes: u64,
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
        // Outcomes kept for waiters (see `share`) that are old enough that
        // no one still waits on them go with this write.
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
        Ok(files)
    }

    /// Keeps the result only for the runs that waited on this one (a
    /// failure that policy does not cache): they replay it, as a
    /// singleflight shares one outcome; no later run is served it, and the
    /// next writes sweep it away.
    pub fn share(mut self, status: u8, duration: Duration) -> Result<(), StoreError> {
        self.key = format!("{OUTCOME_PREFIX}{}", self.key);
        self.finish(status, duration)
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

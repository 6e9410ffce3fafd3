//! Recording a result: output goes in as it arrives, cut per stream into
//! blobs of [`BLOB_BYTES`], each compressed, named by its SHA-256 and put
//! (once: a blob already stored is only used again) under a pending record
//! that no reader sees. The record becomes visible in one commit, after
//! every blob it names is in place; or it is dropped, with the blobs no
//! other record uses.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::blobs::{LocalBlobs, Pending};
use super::record::RECORD_VERSION;
use super::{
    damaged, now_ms, record_sum, to_json, Record, Store, StoreError, OUTCOME_KEEP_MS, OUTCOME_PREFIX,
};
use crate::blob::{Cutter, Digest, BLOB_BYTES};
use crate::compress::{self, Codec, Packed, Packer};
use crate::lock::KeyLock;
use crate::output::Stream;
use crate::outputs::{self, CaptureError, DeclaredPath};
use crate::trust;

impl Store {
    /// Before a recording of `key`: removes the pending records of writers
    /// that are gone (see `delete_abandoned`), and any other pending records
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
        // A checkpoint syncs the WAL and the database and stalls the store's
        // thread, and with it the command's output, for 20-50 ms: at
        // SQLite's default of 1,000 pages a 1 GiB miss made eight. The
        // recording's own end checkpoints what is left (`tidy_wal`).
        self.conn
            .pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_PAGES)?;
        let record = Record {
            v: RECORD_VERSION,
            command: command.to_owned(),
            cwd: cwd.to_owned(),
            inputs: key.inputs.clone(),
            ..Record::default()
        };
        let token = new_token();
        let pending_record = Record {
            pending_key: Some(key.hex.clone()),
            token: Some(token),
            ..record.clone()
        };
        let now = now_ms();
        let pending_meta = to_json(&pending_record);
        self.conn.execute(
            "INSERT INTO entries (key, created_ms, last_used_ms, bytes, hits, meta) VALUES (NULL, ?1, ?1, 0, 0, ?2)",
            params![now, pending_meta],
        )?;
        Ok(Recording {
            store: self,
            key: key.hex.clone(),
            pending: Pending {
                id: self.conn.last_insert_rowid(),
                meta: pending_meta,
                pack: Default::default(),
            },
            record,
            cutter: Cutter::default(),
            compressor: None,
            packer: None,
            spare: Vec::new(),
            spare_compressed: Vec::new(),
            last_flush: Instant::now(),
            arrived: None,
            used: HashSet::new(),
            stored: 0,
            batch: 0,
            batch_began: Instant::now(),
        })
    }

    /// Removes pending records whose writer is gone. A writer holds its
    /// key's lock (an `flock`) from before its pending record exists until
    /// after it is committed or removed, and the kernel drops the lock when
    /// it dies; so a key lock we can take means its writer is gone. A pid
    /// would not do: pids are reused, and a writer in another PID namespace
    /// (a container sharing the cache) has a pid this process cannot see, or
    /// sees as another process.
    fn delete_abandoned(&self, key: &str) -> Result<(), StoreError> {
        // One write transaction from the look to the delete: between them a
        // writer could otherwise finish its record and exit, and its finished
        // record would be taken for the abandoned one it was a moment ago.
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        // A meta that is not text (damage, or planted) reads as no record:
        // no key it could be locked by.
        let pending: Vec<(i64, String)> = tx
            .prepare_cached("SELECT id, meta FROM entries WHERE key IS NULL")?
            .query_map([], |row| Ok((row.get(0)?, super::text_or_empty(row.get_ref(1)?))))?
            .collect::<Result<_, _>>()?;
        // The locks of dead writers, held until their records are gone.
        let mut taken = Vec::new();
        let mut abandoned = Vec::new();
        for (id, meta) in pending {
            let record: Record = serde_json::from_str(&meta).unwrap_or_default();
            let gone = match record.pending_key.as_deref() {
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
                abandoned.push(id);
            }
        }
        // Their blobs no one else uses go with them, files first.
        self.delete_rows(&tx, &abandoned)?;
        tx.commit()?;
        drop(taken);
        if !abandoned.is_empty() {
            // A dead writer may have left a pack it never named.
            self.sweep_orphans();
        }
        Ok(())
    }
}

/// A random token naming one recording (its pending record, temp files).
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

/// WAL pages a recording writes before SQLite checkpoints them on its own:
/// 64 MiB, about two GiB of output's blobs.
const WAL_CHECKPOINT_PAGES: i64 = 16_384;

/// Blobs stored in one transaction at most: 16 MiB of output.
pub(super) const BATCH_BLOBS: usize = 64;

/// How long one transaction may hold the cache's write lock before it is
/// committed: other writers (a `make -j` of small runs) wait on it. Without
/// this bound a firehose held it up to 106 ms at a time (20-28 ms at the
/// 99th percentile, probing every 2 ms); a commit per blob held it 4-10 ms.
pub(super) const BATCH_TIME: Duration = Duration::from_millis(10);

/// A result being recorded. Output goes in as it arrives; nothing is visible
/// to readers until [`Recording::finish`].
pub struct Recording<'s> {
    store: &'s Store,
    key: String,
    pub(super) pending: Pending,
    /// The record being built: its interleaving grows with each write, its
    /// contents with each blob stored.
    record: Record,
    /// Output given to [`Recording::write`], cut into blobs.
    cutter: Cutter,
    /// For outputs that fit in one blob: no threads are started for them.
    compressor: Option<zstd::bulk::Compressor<'static>>,
    /// Worker threads, started by the first full blob.
    packer: Option<Packer>,
    /// Raw-blob buffers for reuse.
    pub(super) spare: Vec<Vec<u8>>,
    /// Compressed-blob buffers for reuse.
    pub(super) spare_compressed: Vec<Vec<u8>>,
    /// When the last full blob was handed on: the output's rate.
    last_flush: Instant,
    /// When the bytes being written arrived, if the writer says (see
    /// [`Recording::write_blob`]).
    arrived: Option<Instant>,
    /// Digests this recording has put, each used once.
    used: HashSet<Digest>,
    /// Stored (compressed) bytes this recording added.
    stored: u64,
    /// Blobs stored in the transaction still open, if one is: a commit per
    /// blob was a third of the store thread's time in a 1 GiB miss.
    batch: usize,
    /// When that transaction began.
    batch_began: Instant,
}

impl Recording<'_> {
    /// Sets when the output began, for such a writer: its recording may
    /// begin after the first bytes arrived.
    pub fn output_began(&mut self, at: Instant) {
        self.last_flush = at;
    }

    /// Appends output. Each stream's bytes are cut into blobs of exactly
    /// [`BLOB_BYTES`] (the last shorter), so the same output gives the same
    /// blobs however its reads were split; the interleaving is kept apart.
    pub fn write(&mut self, stream: Stream, mut bytes: &[u8]) -> Result<(), StoreError> {
        self.record.push_run(stream, bytes.len() as u64);
        while !bytes.is_empty() {
            let spare = &mut self.spare;
            let fresh = || spare.pop().unwrap_or_else(|| Vec::with_capacity(BLOB_BYTES));
            if let Some(blob) = self.cutter.fill(stream, &mut bytes, fresh) {
                self.hand_on(stream, blob)?;
            }
        }
        Ok(())
    }

    /// Takes a blob cut by the writer: exactly [`BLOB_BYTES`] of `stream`,
    /// or its last and shorter one. The interleaving comes apart, through
    /// [`Recording::push_runs`]. A writer on another thread cuts blobs as
    /// the output arrives, so the bytes are copied once, not twice.
    pub fn write_blob(&mut self, stream: Stream, raw: Vec<u8>, arrived: Instant) -> Result<(), StoreError> {
        debug_assert!(raw.len() <= BLOB_BYTES);
        self.arrived = Some(arrived);
        if raw.is_empty() {
            return Ok(());
        }
        self.hand_on(stream, raw)
    }

    /// Appends to the interleaving: `len` bytes of a stream at a time, in
    /// the order they arrived.
    pub fn push_runs(&mut self, runs: &[(Stream, u64)]) {
        for &(stream, len) in runs {
            self.record.push_run(stream, len);
        }
    }

    /// An emptied blob buffer the workers are done with, for the writer.
    pub fn spare_buffer(&mut self) -> Option<Vec<u8>> {
        self.spare.pop()
    }

    /// Hands the stream's last, shorter blob (from [`Recording::write`])
    /// to be compressed and stored.
    fn flush(&mut self, stream: Stream) -> Result<(), StoreError> {
        let rest = self.cutter.rest(stream);
        if rest.is_empty() {
            return Ok(());
        }
        self.hand_on(stream, rest)
    }

    /// Compresses and stores one blob of `stream`: here if it is short and
    /// nothing is in flight, else on the workers.
    fn hand_on(&mut self, stream: Stream, raw: Vec<u8>) -> Result<(), StoreError> {
        if self.packer.is_none() && raw.len() < BLOB_BYTES {
            // Small and nothing in flight: compress here, in order.
            let compressor = match &mut self.compressor {
                Some(c) => c,
                None => self
                    .compressor
                    .insert(compress::new_compressor().map_err(damaged)?),
            };
            let out = self.spare_compressed.pop().unwrap_or_default();
            let packed = compress::pack(compressor, Codec::Zstd, stream, raw, out, None).map_err(damaged)?;
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

    /// Stores compressed blobs in order: those the workers have finished,
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

    /// Puts one blob (unless this recording put it already) and appends its
    /// digest to its stream's contents: blobs come back from the workers in
    /// the order they were cut, per stream too.
    fn store_packed(&mut self, packed: Packed) -> Result<(), StoreError> {
        if self.used.insert(packed.digest) {
            if self.batch == 0 {
                self.store.conn.execute_batch("BEGIN IMMEDIATE")?;
                self.batch_began = Instant::now();
            }
            self.batch += 1;
            self.stored += self.store.put_packed(&self.pending, &packed)?;
            if self.batch >= BATCH_BLOBS || self.batch_began.elapsed() >= BATCH_TIME {
                self.settle()?;
            }
        }
        let contents = match packed.stream {
            Stream::Stdout => &mut self.record.stdout,
            Stream::Stderr => &mut self.record.stderr,
        };
        contents.size += packed.raw.len() as u64;
        contents.blobs.push(packed.digest);
        // Not cleared: the cutters read into a full-length buffer again
        // without zeroing it.
        let Packed { raw, compressed, .. } = packed;
        self.spare.push(raw);
        self.spare_compressed.push(compressed);
        Ok(())
    }

    /// Commits the blobs stored so far. The recording's writer calls it
    /// whenever it has nothing more to store for the moment, so other
    /// writers wait for the cache at most a batch's time.
    pub fn settle(&mut self) -> Result<(), StoreError> {
        if self.batch > 0 {
            // Still counted if the commit fails: `abandon` rolls it back.
            self.store.conn.execute_batch("COMMIT")?;
            self.batch = 0;
            super::turns::stand_aside(&self.store.dir);
        }
        Ok(())
    }

    /// Stores what the command left at its declared paths (`-o`) with the
    /// result, relative paths under `cwd`, failing once `stop` says so. On
    /// error the recording is unchanged but for blobs its record will
    /// never name (they go when it is abandoned).
    pub fn capture(
        &mut self,
        cwd: &std::path::Path,
        declared: &[DeclaredPath],
        stop: &dyn Fn() -> bool,
    ) -> Result<(), CaptureError> {
        self.settle().map_err(|err| CaptureError::Io {
            path: self.store.dir.join("cache.db"),
            source: std::io::Error::other(err),
        })?;
        let blobs = LocalBlobs::new(self.store, Some(&self.pending));
        // Committed in batches, as a command's output is (see `settle`): a
        // commit for each of a 1 GiB output's 4096 blobs took most of its
        // time, and one for all of them kept every other writer of the
        // cache waiting for as long as the capture took.
        let in_db = |err: rusqlite::Error| CaptureError::Io {
            path: self.store.dir.join("cache.db"),
            source: std::io::Error::other(err),
        };
        let conn = &self.store.conn;
        conn.execute_batch("BEGIN IMMEDIATE").map_err(in_db)?;
        let tree = match outputs::capture(cwd, declared, &blobs, stop) {
            Ok(tree) => tree,
            Err(err) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(err);
            }
        };
        conn.execute_batch("COMMIT").map_err(in_db)?;
        self.stored += blobs.stored.get();
        self.record.outputs = Some(tree);
        Ok(())
    }

    /// Makes the result visible under its key, replacing any older record.
    pub fn finish(mut self, status: u8, duration: Duration) -> Result<(), StoreError> {
        match self.commit(status, duration) {
            Ok(()) => {
                self.store.tidy_wal();
                self.store.sweep_now_and_then();
                self.store.prune_now_and_then(self.stored);
                Ok(())
            }
            Err(err) => {
                // A full disk, most often: what was written goes now, so
                // the space is not held until the next run.
                let _ = self.abandon();
                Err(err)
            }
        }
    }

    /// Stores what is left and commits the record under its key.
    fn commit(&mut self, status: u8, duration: Duration) -> Result<(), StoreError> {
        // The last bytes are flushed now that the output has ended: its
        // rate is reckoned to this moment, not to when they arrived.
        self.arrived = None;
        // The partial blobs, stdout's first: the order blobs are stored in
        // is each stream's own, whatever the order of the two.
        self.flush(Stream::Stdout)?;
        self.flush(Stream::Stderr)?;
        self.store_compressed(true)?;
        self.settle()?;
        self.store.fold_hits()?;
        self.record.status = status;
        self.record.duration_ms = duration.as_millis() as u64;
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
        // A blob the older record shares with this one stays: this one
        // already uses it.
        self.store.delete_rows(&tx, &older)?;
        self.store.delete_rows(&tx, &stale)?;
        let meta = to_json(&self.record);
        let created_ms = now_ms();
        tx.execute(
            "UPDATE entries SET key = ?2, created_ms = ?3, last_used_ms = ?3, bytes = ?4, meta = ?5, sum = ?6 \
             WHERE id = ?1",
            params![
                self.pending.id,
                self.key,
                created_ms,
                self.stored as i64,
                meta,
                record_sum(&self.key, created_ms, &meta)
            ],
        )?;
        tx.commit()?;
        self.store.note_command(&self.key, &self.record.inputs);
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

    /// Whether the pending record is still this recording's: another
    /// process that took it for abandoned would have deleted it, and its id
    /// could since name another writer's record.
    fn still_ours(&self, tx: &rusqlite::Transaction<'_>) -> Result<bool, StoreError> {
        let found = tx
            .query_row(
                "SELECT 1 FROM entries WHERE id = ?1 AND key IS NULL AND meta = ?2",
                params![self.pending.id, self.pending.meta],
                |_| Ok(()),
            )
            .optional()?;
        Ok(found.is_some())
    }

    /// Drops what was recorded (a failure not to be cached, a cancelled run,
    /// a full disk), with the blobs no other record uses. If it cannot go
    /// now, the next writer removes it (its key's lock is free).
    pub fn abandon(self) -> Result<(), StoreError> {
        if !self.store.conn.is_autocommit() {
            // A batch that failed, or whose commit did: its blobs' bytes in
            // the pack go with the pack.
            let _ = self.store.conn.execute_batch("ROLLBACK");
        }
        let tx = rusqlite::Transaction::new_unchecked(&self.store.conn, TransactionBehavior::Immediate)?;
        if self.still_ours(&tx)? {
            self.store.drop_own_pack(&tx, &self.pending)?;
            self.store.delete_rows(&tx, &[self.pending.id])?;
        }
        tx.commit()?;
        self.store.tidy_wal();
        Ok(())
    }
}

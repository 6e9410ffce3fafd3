//! Replaying a record: its blobs fetched in the order their bytes are
//! needed, decoded side by side and checked against their checksums before
//! their bytes go out, and woven back into the recorded interleaving of
//! stdout and stderr.

use std::collections::VecDeque;
use std::path::PathBuf;

use super::blobs::LocalBlobs;
use super::record::Run;
use super::{damaged, Entry, Store, StoreError};
use crate::blob::{Digest, BLOB_BYTES};
use crate::compress;
use crate::output::Stream;
use crate::outputs::{self, DeclaredPath, RestoreError};

/// Outputs up to this size are decoded and verified whole before their
/// first byte goes out, so damage anywhere in them is a miss that runs the
/// command. Larger ones are verified blob by blob as they go out: holding
/// them would break the bound on memory, and reading them twice would
/// double a large replay's time.
const VERIFY_FIRST_BYTES: u64 = 8 << 20;

impl Store {
    /// Streams a record's output, in recorded order, to `sink`. Memory
    /// stays bounded by the few blobs in flight whatever the output's size.
    /// Every blob is checked against its checksum before its bytes go out;
    /// an output of up to `VERIFY_FIRST_BYTES` (8 MiB) is checked whole
    /// first, so for it damage is an error before anything went to `sink`.
    pub fn replay(
        &self,
        entry: &Entry,
        sink: impl FnMut(Stream, &[u8]) -> std::io::Result<()>,
    ) -> Result<(), StoreError> {
        // One read transaction for all of an output's blobs: a statement
        // outside one takes and drops SQLite's read lock each time (four
        // fcntl calls and two stats per blob of a 1 GiB replay). One blob
        // (the common case) needs none.
        let record = &entry.record;
        if record.stdout.blobs.len() + record.stderr.blobs.len() > 1 {
            let _ = self.conn.execute_batch("BEGIN");
        }
        let result = self.replay_blobs(entry, sink);
        self.end_read();
        result
    }

    /// Ends the replay's read transaction, if one is open: before a write,
    /// and before a lookup that must see the entry as it is now.
    pub(super) fn end_read(&self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("COMMIT");
        }
    }

    fn replay_blobs(
        &self,
        entry: &Entry,
        sink: impl FnMut(Stream, &[u8]) -> std::io::Result<()>,
    ) -> Result<(), StoreError> {
        let record = &entry.record;
        let recorded = record.stdout.size + record.stderr.size;
        let mut weave = Weave {
            outlet: Outlet {
                sink,
                held: (recorded <= VERIFY_FIRST_BYTES).then(Vec::new),
            },
            runs: record.order.iter().copied().collect(),
            ready: [VecDeque::new(), VecDeque::new()],
            spare: Vec::new(),
        };
        // The first blob is decoded here; from the second on, workers decode
        // side by side and the results are woven in order.
        let mut unpacker: Option<compress::Unpacker> = None;
        // The digests being decoded, oldest first, to name a damaged one.
        let mut in_flight = VecDeque::new();
        let mut first = true;
        // Stored and decoded bytes keep buffers of their own: a buffer
        // that changes role would be zeroed again to its new length.
        let mut spare_stored: Vec<Vec<u8>> = Vec::new();
        let due = demand(&entry.record.order, [&record.stdout.blobs, &record.stderr.blobs]);
        if weave.outlet.held.is_none() {
            // Bytes will go out before the last blob is read: every blob is
            // checked to be there, whole, first.
            let mut seen = None;
            for (_, digest, _) in &due {
                match self.check_blob(digest, &mut seen) {
                    Ok(Some(())) => {}
                    Ok(None) => return Err(self.missing(entry, digest)),
                    Err(err) => return Err(self.spoiled(digest, err)),
                }
            }
        }
        for (stream, digest, len) in due {
            let mut stored = spare_stored.pop().unwrap_or_default();
            let blob = match self.read_blob(&digest, &mut stored) {
                Ok(Some(blob)) => blob,
                Ok(None) => return Err(self.missing(entry, &digest)),
                Err(err) => return Err(self.spoiled(&digest, err)),
            };
            if blob.raw_len as u64 != len {
                self.forget_blob(&digest);
                return Err(StoreError::Damaged(format!("blob {digest} has the wrong length")));
            }
            if first {
                first = false;
                let mut out = Vec::new();
                if let Err(err) =
                    compress::Decoder::default().unpack(blob.codec, &stored, blob.raw_len, blob.sum, &mut out)
                {
                    self.forget_blob(&digest);
                    return Err(damaged(err));
                }
                spare_stored.push(stored);
                weave.feed(stream, out)?;
                continue;
            }
            let workers = match &mut unpacker {
                Some(u) => u,
                None => unpacker.insert(compress::unpacker().map_err(damaged)?),
            };
            let out = weave.spare.pop().unwrap_or_default();
            let job = (stream, blob.codec, blob.raw_len, blob.sum, stored, out);
            in_flight.push_back(digest);
            if let Some(done) = workers.push(job).map_err(damaged)? {
                let (stream, out, stored) = self.decoded(done, &mut in_flight)?;
                spare_stored.push(stored);
                weave.feed(stream, out)?;
            }
        }
        while let Some(done) = unpacker
            .as_mut()
            .map(compress::Unpacker::oldest)
            .transpose()
            .map_err(damaged)?
            .flatten()
        {
            let (stream, out, _) = self.decoded(done, &mut in_flight)?;
            weave.feed(stream, out)?;
        }
        if !weave.runs.is_empty() {
            return Err(StoreError::Damaged(
                "stored output is shorter than recorded".into(),
            ));
        }
        weave.outlet.release()
    }

    /// A worker's result for the oldest blob in flight; a blob that failed
    /// its checksum is dropped, so the next run stores it afresh.
    fn decoded<T>(
        &self,
        done: std::io::Result<T>,
        in_flight: &mut VecDeque<Digest>,
    ) -> Result<T, StoreError> {
        let digest = in_flight.pop_front();
        done.map_err(|err| {
            if let Some(digest) = digest {
                self.forget_blob(&digest);
            }
            damaged(err)
        })
    }

    /// A blob that could not be read: if it is damaged (or not ours), it
    /// is dropped, so the run that replaces the record stores it afresh.
    fn spoiled(&self, digest: &Digest, err: StoreError) -> StoreError {
        if err.is_damaged_entry() {
            self.forget_blob(digest);
        }
        err
    }

    /// A blob the record names is not stored. Damage only if the record is
    /// still there: a writer replacing it removes the blobs it alone used.
    fn missing(&self, entry: &Entry, digest: &Digest) -> StoreError {
        self.end_read();
        match self.lookup(&entry.key) {
            Ok(found) if found.as_ref().is_none_or(|e| e.id != entry.id) => StoreError::Gone,
            _ => {
                self.forget_blob(digest);
                StoreError::Damaged(format!("blob {digest} is missing"))
            }
        }
    }

    /// Puts the record's output files back at the declared paths (relative
    /// ones under `cwd`), each blob checked before anything is written.
    /// A blob found missing or damaged is dropped, so the run that replaces
    /// the record stores it afresh.
    pub fn restore(
        &self,
        entry: &Entry,
        cwd: &std::path::Path,
        declared: &[DeclaredPath],
    ) -> Result<(), RestoreError> {
        let none = outputs::OutputTree::default();
        let tree = match &entry.record.outputs {
            Some(tree) => tree,
            None if declared.is_empty() => return Ok(()),
            // Declared outputs are in the key: a record without them is
            // not this key's, and the restore refuses it.
            None => &none,
        };
        let blobs = LocalBlobs::new(self, None);
        let result = outputs::restore(cwd, declared, tree, &blobs);
        if let Err(err) = &result {
            if let outputs::RestoreCause::Blob(
                crate::blob::BlobError::Missing(digest) | crate::blob::BlobError::Damaged(digest),
            ) = &err.cause
            {
                self.forget_blob(digest);
            }
        }
        result
    }
}

/// The blobs of both streams in the order a replay needs their bytes:
/// walking the interleaving, a stream's next blob is due when a run of it
/// reaches past the blobs fetched so far. Each with the length it must have
/// (every blob full but a stream's last).
fn demand(order: &[Run], blobs: [&Vec<Digest>; 2]) -> Vec<(Stream, Digest, u64)> {
    let mut totals = [0u64; 2];
    for run in order {
        if let Some(stream) = run.stream() {
            totals[stream as usize - 1] += run.1;
        }
    }
    let mut due = Vec::with_capacity(blobs[0].len() + blobs[1].len());
    let mut needed = [0u64; 2];
    let mut fetched = [0usize; 2];
    for run in order {
        let Some(stream) = run.stream() else { continue };
        let i = stream as usize - 1;
        needed[i] += run.1;
        while (fetched[i] as u64) * (BLOB_BYTES as u64) < needed[i] {
            let Some(digest) = blobs[i].get(fetched[i]) else {
                break;
            };
            let before = fetched[i] as u64 * BLOB_BYTES as u64;
            due.push((
                stream,
                *digest,
                totals[i].saturating_sub(before).min(BLOB_BYTES as u64),
            ));
            fetched[i] += 1;
        }
    }
    due
}

/// Decoded blobs woven back into the recorded interleaving.
struct Weave<F> {
    outlet: Outlet<F>,
    /// The runs still to write.
    runs: VecDeque<Run>,
    /// Per stream, decoded bytes not yet written, and where in the front
    /// buffer writing has got to.
    ready: [VecDeque<(Vec<u8>, usize)>; 2],
    spare: Vec<Vec<u8>>,
}

impl<F: FnMut(Stream, &[u8]) -> std::io::Result<()>> Weave<F> {
    /// Takes a decoded blob of `stream` and writes every run it completes.
    fn feed(&mut self, stream: Stream, out: Vec<u8>) -> Result<(), StoreError> {
        self.ready[stream as usize - 1].push_back((out, 0));
        while let Some(run) = self.runs.front_mut() {
            let Some(stream) = run.stream() else {
                return Err(StoreError::Damaged("unknown stream".into()));
            };
            let ready = &mut self.ready[stream as usize - 1];
            let Some((buf, at)) = ready.front_mut() else {
                break;
            };
            let take = (buf.len() - *at).min(run.1 as usize);
            self.outlet.put(stream, &buf[*at..*at + take])?;
            *at += take;
            run.1 -= take as u64;
            if *at == buf.len() {
                if let Some((buf, _)) = ready.pop_front() {
                    self.spare.push(buf);
                }
            }
            if run.1 == 0 {
                self.runs.pop_front();
            }
        }
        Ok(())
    }
}

/// Where a replay's verified bytes go: straight to the sink, or, for an
/// output small enough, held until every blob of it is verified.
struct Outlet<F> {
    sink: F,
    held: Option<Vec<(Stream, Vec<u8>)>>,
}

impl<F: FnMut(Stream, &[u8]) -> std::io::Result<()>> Outlet<F> {
    /// Passes on verified bytes.
    fn put(&mut self, stream: Stream, bytes: &[u8]) -> Result<(), StoreError> {
        match &mut self.held {
            Some(held) => held.push((stream, bytes.to_vec())),
            None => (self.sink)(stream, bytes).map_err(output_error)?,
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

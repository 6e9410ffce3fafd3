//! Compressing and decompressing output chunks, on worker threads when there
//! are many. A miss spent 88% of its instructions in zstd (callgrind, 32 MiB
//! build log) and a replay most of its time decompressing; chunks are
//! independent, so one worker per core handles them side by side while the
//! calling thread stores or writes the results in their original order.
//!
//! Each chunk gets one of two codecs. zstd stores a build log in a tenth of
//! its size but compresses at about 0.95 GB/s and decompresses at 2.1 GB/s
//! per core; LZ4 stores the same log in a seventh at 2 GB/s and 6.5 GB/s
//! (`zstd -b1 -B256K`, `lz4 -b1 -B5` on the benchmark's log). Output at the
//! pace of a build or a test run gets zstd. LZ4 goes to output that arrives
//! at [`FIREHOSE_BYTES_PER_SEC`] or more (a `cat` of a big file, a data
//! dump: its replay should be as quick as reading it), and to output that
//! out-runs zstd on this machine (every worker still busy), so lcrun never
//! slows the command down.

use std::collections::VecDeque;
use std::sync::mpsc;
use std::thread;

use crate::output::Stream;

/// zstd level for stored output: build logs still shrink about tenfold.
pub const ZSTD_LEVEL: i32 = 1;

/// Output arriving at this rate or more gets LZ4. Builds and tests print
/// far slower. With the rule "LZ4 only when zstd falls behind" alone, a
/// 1 GiB `cat` stored 21% of its chunks as zstd, and they took 40% of its
/// replay's decoding time.
pub const FIREHOSE_BYTES_PER_SEC: f64 = 100e6;

/// How a chunk is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// As it came (when compressing would not make it smaller).
    Raw = 0,
    /// zstd.
    Zstd = 1,
    /// LZ4 block format.
    Lz4 = 2,
}

impl Codec {
    /// The codec a stored number names.
    pub fn from_tag(tag: i64) -> Option<Codec> {
        match tag {
            0 => Some(Codec::Raw),
            1 => Some(Codec::Zstd),
            2 => Some(Codec::Lz4),
            _ => None,
        }
    }
}

/// The checksum stored with each chunk: XXH3-64 of its stored bytes, the
/// codec as seed, checked before a replay decodes them. It catches what
/// damages a file at rest (a truncation, overwritten or flipped bytes, a
/// wrong codec) at about 15 GB/s per core; SHA-256 would have cost a 1 GiB
/// replay some 0.3 s more on two cores, about doubling it. Of the stored
/// bytes rather than the raw ones: damage at rest is damage to those, and
/// LZ4 stores the benchmark's build log in 0.149 of its size, so summing
/// the raw bytes was 15% of a 1 GiB replay's CPU (`perf record`), this
/// about 2%; damaged bytes are never handed to a decoder. It does not stand
/// against someone who writes the cache on purpose: no one else can (see
/// `trust`).
pub fn checksum(codec: Codec, stored: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(stored, codec as u64)
}

/// A chunk ready to be stored.
pub struct Packed {
    /// The stream it came from.
    pub stream: Stream,
    /// How `data` is encoded.
    pub codec: Codec,
    /// The [`checksum`] of the stored bytes (`data`).
    pub sum: u64,
    /// The SHA-256 of the raw bytes: the blob's name. Computed here, on the
    /// worker that compresses it, so a large output's hashing is spread over
    /// the cores as its compression is.
    pub digest: crate::blob::Digest,
    /// The raw bytes (`data` is these for [`Codec::Raw`]); handed back so the
    /// buffer can be reused.
    pub raw: Vec<u8>,
    /// The compressed bytes, for the other codecs, in the first
    /// `compressed_len`: the buffer keeps its length from chunk to chunk, so
    /// it is zeroed once, not on every reuse.
    pub compressed: Vec<u8>,
    compressed_len: usize,
}

impl Packed {
    /// The bytes to store.
    pub fn data(&self) -> &[u8] {
        match self.codec {
            Codec::Raw => &self.raw,
            Codec::Zstd | Codec::Lz4 => &self.compressed[..self.compressed_len],
        }
    }
}

/// A compressor at lcrun's level.
pub fn new_compressor() -> std::io::Result<zstd::bulk::Compressor<'static>> {
    zstd::bulk::Compressor::new(ZSTD_LEVEL)
}

/// Makes `buf` at least `len` long and returns its first `len` bytes. A
/// reused buffer is already long enough and is not written to.
fn room(buf: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if buf.len() < len {
        buf.resize(len, 0);
    }
    &mut buf[..len]
}

/// Compresses one chunk with `codec` ([`Codec::Zstd`] or [`Codec::Lz4`])
/// on the calling thread; it is stored raw if that is no smaller. Its
/// digest is computed here unless the caller already has it (`known`): a
/// SHA-256 of every byte is a quarter of a large store's CPU time.
pub fn pack(
    compressor: &mut zstd::bulk::Compressor<'static>,
    codec: Codec,
    stream: Stream,
    raw: Vec<u8>,
    compressed: Vec<u8>,
    known: Option<crate::blob::Digest>,
) -> std::io::Result<Packed> {
    let packed = squeeze(compressor, (codec, stream, raw, compressed))?;
    let digest = known.unwrap_or_else(|| crate::blob::Digest::of(&packed.raw));
    Ok(packed.named(digest))
}

/// [`pack`] of `first`, and of the chunk `partner` hands over once `first`
/// is compressed, if one is waiting by then: two digests computed side by
/// side cost about 0.55 of two apart (see [`crate::blob::Digest::of_two`]).
fn pack_with_partner(
    compressor: &mut zstd::bulk::Compressor<'static>,
    first: PackJob,
    partner: &mut dyn FnMut() -> Option<PackJob>,
) -> (std::io::Result<Packed>, Option<std::io::Result<Packed>>) {
    let first = match squeeze(compressor, first) {
        Ok(first) => first,
        Err(err) => return (Err(err), None),
    };
    let Some(second) = partner() else {
        let digest = crate::blob::Digest::of(&first.raw);
        return (Ok(first.named(digest)), None);
    };
    match squeeze(compressor, second) {
        Ok(second) => {
            let (a, b) = crate::blob::Digest::of_two(&first.raw, &second.raw);
            (Ok(first.named(a)), Some(Ok(second.named(b))))
        }
        Err(err) => {
            let digest = crate::blob::Digest::of(&first.raw);
            (Ok(first.named(digest)), Some(Err(err)))
        }
    }
}

/// A compressed chunk still to be named.
struct Squeezed {
    stream: Stream,
    codec: Codec,
    sum: u64,
    raw: Vec<u8>,
    compressed: Vec<u8>,
    compressed_len: usize,
}

impl Squeezed {
    fn named(self, digest: crate::blob::Digest) -> Packed {
        Packed {
            stream: self.stream,
            codec: self.codec,
            sum: self.sum,
            digest,
            raw: self.raw,
            compressed: self.compressed,
            compressed_len: self.compressed_len,
        }
    }
}

/// The compression and checksum of [`pack`].
fn squeeze(
    compressor: &mut zstd::bulk::Compressor<'static>,
    (codec, stream, raw, mut compressed): PackJob,
) -> std::io::Result<Squeezed> {
    let compressed_len = match codec {
        Codec::Lz4 => {
            let out = room(&mut compressed, lz4::block::compress_bound(raw.len())?);
            lz4::block::compress_to_buffer(&raw, None, false, out)?
        }
        _ => {
            let out = room(&mut compressed, zstd::zstd_safe::compress_bound(raw.len()));
            compressor.compress_to_buffer(&raw, out)?
        }
    };
    let codec = if compressed_len < raw.len() {
        codec
    } else {
        Codec::Raw
    };
    let stored = match codec {
        Codec::Raw => &raw[..],
        _ => &compressed[..compressed_len],
    };
    Ok(Squeezed {
        stream,
        codec,
        sum: checksum(codec, stored),
        raw,
        compressed,
        compressed_len,
    })
}

/// Decodes stored chunks. zstd's context (about 100 KiB) is made for the
/// first zstd chunk: replaying a few raw bytes never needs it.
#[derive(Default)]
pub struct Decoder {
    zstd: Option<zstd::bulk::Decompressor<'static>>,
}

impl Decoder {
    /// Checks one stored chunk against `sum`, its [`checksum`], and decodes
    /// it into `out`. A reused buffer is only zeroed where it grows.
    pub fn unpack(
        &mut self,
        codec: Codec,
        data: &[u8],
        raw_len: usize,
        sum: u64,
        out: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        if checksum(codec, data) != sum {
            return Err(std::io::Error::other("chunk checksum mismatch"));
        }
        let dest = room(out, raw_len);
        let len = match codec {
            Codec::Raw if data.len() == raw_len => {
                dest.copy_from_slice(data);
                raw_len
            }
            Codec::Raw => data.len(),
            Codec::Zstd => {
                let zstd = match &mut self.zstd {
                    Some(z) => z,
                    None => self.zstd.insert(zstd::bulk::Decompressor::new()?),
                };
                zstd.decompress_to_buffer(data, dest)?
            }
            Codec::Lz4 => lz4::block::decompress_to_buffer(data, Some(raw_len as i32), dest)?,
        };
        if len != raw_len {
            return Err(std::io::Error::other("chunk length mismatch"));
        }
        out.truncate(raw_len);
        Ok(())
    }
}

/// Chunks in flight per worker: bounds memory whatever the output's size.
const IN_FLIGHT_PER_WORKER: usize = 4;

/// A worker's function, run on the calling thread.
type Here<J, R> = Box<dyn FnMut(J) -> R>;

/// A worker's function for a job and, if `partner` gives one when asked,
/// the next job of the same worker, where doing two together is cheaper
/// than one after the other: the first result, and the second if taken.
pub type WithPartner<S, J, R> = fn(&mut S, J, partner: &mut dyn FnMut() -> Option<J>) -> (R, Option<R>);

/// Worker threads applying one function to jobs, results returned in
/// submission order: job `i` goes to worker `i % n` (or `i / 2 % n`, see
/// [`Ordered::pairing`]), so reading the workers in the same turn restores
/// the order. Where no thread can start (a container's
/// pids limit, `ulimit -u`), the jobs run on the calling thread as they are
/// queued: slower, never an error.
pub struct Ordered<J, R> {
    workers: Vec<(mpsc::Sender<J>, mpsc::Receiver<R>)>,
    /// The work done here when no worker started, and its results in order.
    here: Option<(Here<J, R>, VecDeque<R>)>,
    /// Consecutive jobs that go to the same worker: 2 when workers take
    /// partners, else 1.
    stride: usize,
    sent: usize,
    received: usize,
}

impl<J: Send + 'static, R: Send + 'static> Ordered<J, R> {
    /// One worker per available core, each with its own state from `init`;
    /// as many as can start.
    pub fn new<S, F>(init: impl Fn() -> std::io::Result<S>, work: F) -> std::io::Result<Ordered<J, R>>
    where
        S: Send + 'static,
        F: Fn(&mut S, J) -> R + Send + Copy + 'static,
    {
        Self::pairing(init, work, None)
    }

    /// [`Ordered::new`], with workers that run `two` instead of `work`
    /// when given: jobs go to the workers two by two, so a worker's second
    /// job is most often queued by the time its first wants a partner.
    pub fn pairing<S, F>(
        init: impl Fn() -> std::io::Result<S>,
        work: F,
        two: Option<WithPartner<S, J, R>>,
    ) -> std::io::Result<Ordered<J, R>>
    where
        S: Send + 'static,
        F: Fn(&mut S, J) -> R + Send + Copy + 'static,
    {
        let n = thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 8);
        let mut workers = Vec::with_capacity(n);
        for _ in 0..n {
            let (jobs, inbox) = mpsc::channel::<J>();
            let (outbox, done) = mpsc::channel();
            let mut state = init()?;
            let spawned = thread::Builder::new().name("lcrun-zstd".into()).spawn(move || {
                while let Ok(job) = inbox.recv() {
                    let sent = match two {
                        Some(two) => {
                            let (first, second) = two(&mut state, job, &mut || inbox.try_recv().ok());
                            outbox
                                .send(first)
                                .and_then(|()| second.map_or(Ok(()), |r| outbox.send(r)))
                        }
                        None => outbox.send(work(&mut state, job)),
                    };
                    if sent.is_err() {
                        return;
                    }
                }
            });
            if spawned.is_err() {
                // EAGAIN under a limit of tasks: fewer workers, or none.
                break;
            }
            workers.push((jobs, done));
        }
        let here = if workers.is_empty() {
            let mut state = init()?;
            let run: Here<J, R> = Box::new(move |job| work(&mut state, job));
            Some((run, VecDeque::new()))
        } else {
            None
        };
        Ok(Ordered {
            workers,
            here,
            stride: if two.is_some() { 2 } else { 1 },
            sent: 0,
            received: 0,
        })
    }

    /// The worker job `index` goes to: round-robin, by twos when workers
    /// take partners.
    fn worker_of(&self, index: usize) -> usize {
        index / self.stride % self.workers.len()
    }

    /// How many jobs may be in flight before `push` waits for the oldest.
    fn room(&self) -> usize {
        self.workers.len().max(1) * IN_FLIGHT_PER_WORKER
    }

    /// Queues a job. When as many are in flight as memory allows, first waits
    /// for the oldest result and returns it.
    pub fn push(&mut self, job: J) -> std::io::Result<Option<R>> {
        let oldest = if self.sent - self.received >= self.room() {
            self.oldest()?
        } else {
            None
        };
        if let Some((run, done)) = &mut self.here {
            done.push_back(run(job));
        } else {
            let (jobs, _) = &self.workers[self.worker_of(self.sent)];
            jobs.send(job).map_err(|_| worker_gone())?;
        }
        self.sent += 1;
        Ok(oldest)
    }

    /// The oldest result if it is done, without waiting.
    pub fn ready(&mut self) -> std::io::Result<Option<R>> {
        if self.received == self.sent {
            return Ok(None);
        }
        if let Some((_, done)) = &mut self.here {
            self.received += 1;
            return Ok(done.pop_front());
        }
        let (_, done) = &self.workers[self.worker_of(self.received)];
        match done.try_recv() {
            Ok(result) => {
                self.received += 1;
                Ok(Some(result))
            }
            Err(mpsc::TryRecvError::Empty) => Ok(None),
            Err(mpsc::TryRecvError::Disconnected) => Err(worker_gone()),
        }
    }

    /// Whether every worker has work: a job queued now would wait for one.
    /// Never, when the jobs run here.
    pub fn busy(&self) -> bool {
        !self.workers.is_empty() && self.sent - self.received >= self.workers.len()
    }

    /// The oldest result, waiting for it; `None` when nothing is in flight.
    pub fn oldest(&mut self) -> std::io::Result<Option<R>> {
        if self.received == self.sent {
            return Ok(None);
        }
        if let Some((_, done)) = &mut self.here {
            self.received += 1;
            return Ok(done.pop_front());
        }
        let (_, done) = &self.workers[self.worker_of(self.received)];
        let result = done.recv().map_err(|_| worker_gone())?;
        self.received += 1;
        Ok(Some(result))
    }
}

/// Compressing workers: (stream, raw, reusable output buffer) in, packed out.
/// A chunk to compress: codec, stream, raw bytes, and a reusable output
/// buffer.
pub type PackJob = (Codec, Stream, Vec<u8>, Vec<u8>);

/// Compressing workers: a chunk in, packed out.
pub type Packer = Ordered<PackJob, std::io::Result<Packed>>;

/// Starts compressing workers.
pub fn packer() -> std::io::Result<Packer> {
    Ordered::pairing(
        new_compressor,
        |compressor: &mut zstd::bulk::Compressor<'static>, (codec, stream, raw, out): PackJob| {
            pack(compressor, codec, stream, raw, out, None)
        },
        Some(pack_with_partner),
    )
}

/// A stored chunk to decode: stream, codec, raw length, checksum, stored
/// bytes, and a reusable output buffer.
pub type UnpackJob = (Stream, Codec, usize, u64, Vec<u8>, Vec<u8>);

/// Decompressing workers: a stored chunk in; (stream, raw bytes, the stored
/// buffer back for reuse) out.
pub type Unpacker = Ordered<UnpackJob, std::io::Result<(Stream, Vec<u8>, Vec<u8>)>>;

/// Starts decompressing workers.
pub fn unpacker() -> std::io::Result<Unpacker> {
    Ordered::new(
        || Ok(Decoder::default()),
        |decoder: &mut Decoder, job: UnpackJob| {
            let (stream, codec, raw_len, sum, data, mut out) = job;
            decoder.unpack(codec, &data, raw_len, sum, &mut out)?;
            Ok((stream, out, data))
        },
    )
}

fn worker_gone() -> std::io::Error {
    std::io::Error::other("a compression worker stopped")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_order_and_round_trip() {
        let mut packer = packer().unwrap();
        let mut unpacker = unpacker().unwrap();
        let mut packed = Vec::new();
        for i in 0..40usize {
            let raw: Vec<u8> = format!("chunk {i} ").repeat(1000 + i).into_bytes();
            let stream = if i % 3 == 0 {
                Stream::Stderr
            } else {
                Stream::Stdout
            };
            let codec = if i % 2 == 0 { Codec::Zstd } else { Codec::Lz4 };
            packed.extend(packer.push((codec, stream, raw, Vec::new())).unwrap());
        }
        while let Some(p) = packer.oldest().unwrap() {
            packed.push(p);
        }
        let mut raw = Vec::new();
        for (i, p) in packed.into_iter().enumerate() {
            let p = p.unwrap();
            assert_eq!(p.codec, if i % 2 == 0 { Codec::Zstd } else { Codec::Lz4 });
            assert_eq!(
                p.digest,
                crate::blob::Digest::of(&p.raw),
                "chunk {i} named by its bytes"
            );
            let job = (
                p.stream,
                p.codec,
                p.raw.len(),
                p.sum,
                p.data().to_vec(),
                Vec::new(),
            );
            raw.extend(unpacker.push(job).unwrap());
        }
        while let Some(r) = unpacker.oldest().unwrap() {
            raw.push(r);
        }
        assert_eq!(raw.len(), 40);
        for (i, r) in raw.into_iter().enumerate() {
            let (stream, bytes, _) = r.unwrap();
            assert_eq!(bytes, format!("chunk {i} ").repeat(1000 + i).into_bytes());
            assert_eq!(stream == Stream::Stderr, i % 3 == 0);
        }
    }

    #[test]
    fn partnered_jobs_come_back_in_order() {
        // Each result says whether it was done as a partner; the first of a
        // worker's two waits a little, so its partner is queued by then.
        let mut pool = Ordered::pairing(
            || Ok(()),
            |_: &mut (), job: usize| (job, false),
            Some(
                |_: &mut (), job: usize, partner: &mut dyn FnMut() -> Option<usize>| {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    ((job, false), partner().map(|next| (next, true)))
                },
            ),
        )
        .unwrap();
        let mut results = Vec::new();
        for job in 0..64 {
            results.extend(pool.push(job).unwrap());
        }
        while let Some(r) = pool.oldest().unwrap() {
            results.push(r);
        }
        let order: Vec<usize> = results.iter().map(|&(job, _)| job).collect();
        assert_eq!(order, (0..64).collect::<Vec<_>>());
        assert!(
            results.iter().any(|&(_, partnered)| partnered),
            "no job was taken as a partner"
        );
    }

    #[test]
    fn a_damaged_chunk_is_an_error_not_a_panic() {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        // Bytes that pass their checksum but do not decode.
        let zstd = b"not zstd at all";
        let sum = checksum(Codec::Zstd, zstd);
        assert!(d.unpack(Codec::Zstd, zstd, 100, sum, &mut out).is_err());
        let lz4 = b"\xff\xff\xff not lz4";
        let sum = checksum(Codec::Lz4, lz4);
        assert!(d.unpack(Codec::Lz4, lz4, 100, sum, &mut out).is_err());
        let sum = checksum(Codec::Raw, b"abc");
        assert!(d.unpack(Codec::Raw, b"abc", 4, sum, &mut out).is_err());
        // Stored bytes damaged, or read with another codec than they were
        // stored with.
        assert!(d.unpack(Codec::Raw, b"abc", 3, sum, &mut out).is_ok());
        assert!(d.unpack(Codec::Raw, b"abd", 3, sum, &mut out).is_err());
        let packed = pack(
            &mut new_compressor().unwrap(),
            Codec::Lz4,
            Stream::Stdout,
            b"ab".repeat(500),
            Vec::new(),
            None,
        )
        .unwrap();
        assert_eq!(packed.codec, Codec::Lz4);
        let (data, sum) = (packed.data(), packed.sum);
        assert!(d.unpack(Codec::Lz4, data, 1000, sum, &mut out).is_ok());
        assert!(d.unpack(Codec::Raw, data, data.len(), sum, &mut out).is_err());
    }
}

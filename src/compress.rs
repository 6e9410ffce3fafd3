//! Compressing and decompressing output chunks, on worker threads when there
//! are many. A miss spent 88% of its instructions in zstd (callgrind, 32 MiB
//! build log) and a replay most of its time decompressing; chunks are
//! independent, so one worker per core handles them side by side while the
//! calling thread stores or writes the results in their original order.

use std::sync::mpsc;
use std::thread;

use crate::output::Stream;

/// zstd level for stored output: build logs still shrink about tenfold.
pub const ZSTD_LEVEL: i32 = 1;

/// How a chunk is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// As it came (when compressing would not make it smaller).
    Raw = 0,
    /// zstd.
    Zstd = 1,
}

impl Codec {
    /// The codec a stored number names.
    pub fn from_tag(tag: i64) -> Option<Codec> {
        match tag {
            0 => Some(Codec::Raw),
            1 => Some(Codec::Zstd),
            _ => None,
        }
    }
}

/// A chunk ready to be stored.
pub struct Packed {
    /// The stream it came from.
    pub stream: Stream,
    /// How `data` is encoded.
    pub codec: Codec,
    /// The raw bytes (`data` is these for [`Codec::Raw`]); handed back so the
    /// buffer can be reused.
    pub raw: Vec<u8>,
    /// The compressed bytes, for [`Codec::Zstd`].
    pub compressed: Vec<u8>,
}

impl Packed {
    /// The bytes to store.
    pub fn data(&self) -> &[u8] {
        match self.codec {
            Codec::Raw => &self.raw,
            Codec::Zstd => &self.compressed,
        }
    }
}

/// A compressor at lcrun's level.
pub fn new_compressor() -> std::io::Result<zstd::bulk::Compressor<'static>> {
    zstd::bulk::Compressor::new(ZSTD_LEVEL)
}

/// Compresses one chunk on the calling thread.
pub fn pack(
    compressor: &mut zstd::bulk::Compressor<'static>,
    stream: Stream,
    raw: Vec<u8>,
    mut compressed: Vec<u8>,
) -> std::io::Result<Packed> {
    compressed.clear();
    compressed.reserve(zstd::zstd_safe::compress_bound(raw.len()));
    compressor.compress_to_buffer(&raw, &mut compressed)?;
    let codec = if compressed.len() < raw.len() {
        Codec::Zstd
    } else {
        Codec::Raw
    };
    Ok(Packed {
        stream,
        codec,
        raw,
        compressed,
    })
}

/// Decodes one stored chunk into `out` (cleared first). A raw chunk is
/// copied as it is.
pub fn unpack(
    decompressor: &mut zstd::bulk::Decompressor<'static>,
    codec: Codec,
    data: &[u8],
    raw_len: usize,
    out: &mut Vec<u8>,
) -> std::io::Result<()> {
    out.clear();
    match codec {
        Codec::Raw => out.extend_from_slice(data),
        Codec::Zstd => {
            out.reserve(raw_len);
            decompressor.decompress_to_buffer(data, out)?;
        }
    }
    if out.len() != raw_len {
        return Err(std::io::Error::other("chunk length mismatch"));
    }
    Ok(())
}

/// Chunks in flight per worker: bounds memory whatever the output's size.
const IN_FLIGHT_PER_WORKER: usize = 4;

/// Worker threads applying one function to jobs, results returned in
/// submission order: job `i` goes to worker `i % n`, so reading the workers
/// round-robin restores the order.
pub struct Ordered<J, R> {
    workers: Vec<(mpsc::Sender<J>, mpsc::Receiver<R>)>,
    sent: usize,
    received: usize,
}

impl<J: Send + 'static, R: Send + 'static> Ordered<J, R> {
    /// One worker per available core, each with its own state from `init`.
    pub fn new<S, F>(init: impl Fn() -> std::io::Result<S>, work: F) -> std::io::Result<Ordered<J, R>>
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
            thread::Builder::new().name("lcrun-zstd".into()).spawn(move || {
                for job in inbox {
                    if outbox.send(work(&mut state, job)).is_err() {
                        return;
                    }
                }
            })?;
            workers.push((jobs, done));
        }
        Ok(Ordered {
            workers,
            sent: 0,
            received: 0,
        })
    }

    /// Queues a job. When as many are in flight as memory allows, first waits
    /// for the oldest result and returns it.
    pub fn push(&mut self, job: J) -> std::io::Result<Option<R>> {
        let oldest = if self.sent - self.received >= self.workers.len() * IN_FLIGHT_PER_WORKER {
            self.oldest()?
        } else {
            None
        };
        let (jobs, _) = &self.workers[self.sent % self.workers.len()];
        jobs.send(job).map_err(|_| worker_gone())?;
        self.sent += 1;
        Ok(oldest)
    }

    /// The oldest result, waiting for it; `None` when nothing is in flight.
    pub fn oldest(&mut self) -> std::io::Result<Option<R>> {
        if self.received == self.sent {
            return Ok(None);
        }
        let (_, done) = &self.workers[self.received % self.workers.len()];
        let result = done.recv().map_err(|_| worker_gone())?;
        self.received += 1;
        Ok(Some(result))
    }
}

/// Compressing workers: (stream, raw, reusable output buffer) in, packed out.
pub type Packer = Ordered<(Stream, Vec<u8>, Vec<u8>), std::io::Result<Packed>>;

/// Starts compressing workers.
pub fn packer() -> std::io::Result<Packer> {
    Ordered::new(
        new_compressor,
        |compressor: &mut zstd::bulk::Compressor<'static>, (stream, raw, out): (Stream, Vec<u8>, Vec<u8>)| {
            pack(compressor, stream, raw, out)
        },
    )
}

/// A stored chunk to decode: stream, codec, raw length, stored bytes, and a
/// reusable output buffer.
pub type UnpackJob = (Stream, Codec, usize, Vec<u8>, Vec<u8>);

/// Decompressing workers: a stored chunk in; (stream, raw bytes, the stored
/// buffer back for reuse) out.
pub type Unpacker = Ordered<UnpackJob, std::io::Result<(Stream, Vec<u8>, Vec<u8>)>>;

/// Starts decompressing workers.
pub fn unpacker() -> std::io::Result<Unpacker> {
    Ordered::new(
        zstd::bulk::Decompressor::new,
        |decompressor: &mut zstd::bulk::Decompressor<'static>, job: UnpackJob| {
            let (stream, codec, raw_len, data, mut out) = job;
            unpack(decompressor, codec, &data, raw_len, &mut out)?;
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
            packed.extend(packer.push((stream, raw, Vec::new())).unwrap());
        }
        while let Some(p) = packer.oldest().unwrap() {
            packed.push(p);
        }
        let mut raw = Vec::new();
        for p in packed {
            let p = p.unwrap();
            assert_eq!(p.codec, Codec::Zstd);
            let job = (p.stream, p.codec, p.raw.len(), p.data().to_vec(), Vec::new());
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
    fn a_damaged_chunk_is_an_error_not_a_panic() {
        let mut d = zstd::bulk::Decompressor::new().unwrap();
        let mut out = Vec::new();
        assert!(unpack(&mut d, Codec::Zstd, b"not zstd at all", 100, &mut out).is_err());
        assert!(unpack(&mut d, Codec::Raw, b"abc", 4, &mut out).is_err());
    }
}

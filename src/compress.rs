//! Compressing output chunks on worker threads. A miss spent 88% of its
//! instructions in zstd (callgrind, 32 MiB build log); chunks compress
//! independently, so one worker per core does them side by side while the
//! recording thread stores the results in their original order.

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

struct Worker {
    jobs: mpsc::Sender<(Stream, Vec<u8>, Vec<u8>)>,
    done: mpsc::Receiver<std::io::Result<Packed>>,
}

/// Worker threads compressing chunks, results returned in submission order.
/// Chunk `i` goes to worker `i % n`, so reading the workers round-robin
/// restores the order.
pub struct Packer {
    workers: Vec<Worker>,
    sent: usize,
    received: usize,
    spare: Vec<Vec<u8>>,
}

/// Chunks in flight per worker: bounds memory whatever the output's size.
const IN_FLIGHT_PER_WORKER: usize = 2;

impl Packer {
    /// One worker per available core.
    pub fn new() -> std::io::Result<Packer> {
        let n = thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 8);
        let mut workers = Vec::with_capacity(n);
        for _ in 0..n {
            let (jobs, inbox) = mpsc::channel::<(Stream, Vec<u8>, Vec<u8>)>();
            let (outbox, done) = mpsc::channel();
            let mut compressor = new_compressor()?;
            thread::Builder::new().name("lcrun-pack".into()).spawn(move || {
                for (stream, raw, compressed) in inbox {
                    if outbox
                        .send(pack(&mut compressor, stream, raw, compressed))
                        .is_err()
                    {
                        return;
                    }
                }
            })?;
            workers.push(Worker { jobs, done });
        }
        Ok(Packer {
            workers,
            sent: 0,
            received: 0,
            spare: Vec::new(),
        })
    }

    /// Queues a chunk. When as many are in flight as memory allows, waits for
    /// the oldest and returns it.
    pub fn push(&mut self, stream: Stream, raw: Vec<u8>) -> std::io::Result<Option<Packed>> {
        let oldest = if self.sent - self.received >= self.workers.len() * IN_FLIGHT_PER_WORKER {
            self.oldest()?
        } else {
            None
        };
        let compressed = self.spare.pop().unwrap_or_default();
        let worker = &self.workers[self.sent % self.workers.len()];
        worker
            .jobs
            .send((stream, raw, compressed))
            .map_err(|_| worker_gone())?;
        self.sent += 1;
        Ok(oldest)
    }

    /// The oldest chunk, waiting for it; `None` when none is in flight.
    pub fn oldest(&mut self) -> std::io::Result<Option<Packed>> {
        if self.received == self.sent {
            return Ok(None);
        }
        let worker = &self.workers[self.received % self.workers.len()];
        let packed = worker.done.recv().map_err(|_| worker_gone())??;
        self.received += 1;
        Ok(Some(packed))
    }

    /// Gives a compressed-bytes buffer back for reuse.
    pub fn recycle(&mut self, buffer: Vec<u8>) {
        self.spare.push(buffer);
    }
}

fn worker_gone() -> std::io::Error {
    std::io::Error::other("a compression worker stopped")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_order_and_round_trip() {
        let mut packer = Packer::new().unwrap();
        let mut out = Vec::new();
        for i in 0..40u32 {
            let raw: Vec<u8> = format!("chunk {i} ").repeat(1000 + i as usize).into_bytes();
            let stream = if i % 3 == 0 {
                Stream::Stderr
            } else {
                Stream::Stdout
            };
            if let Some(p) = packer.push(stream, raw).unwrap() {
                out.push(p);
            }
        }
        while let Some(p) = packer.oldest().unwrap() {
            out.push(p);
        }
        assert_eq!(out.len(), 40);
        for (i, p) in out.iter().enumerate() {
            let expected = format!("chunk {i} ").repeat(1000 + i);
            assert_eq!(p.raw, expected.as_bytes());
            assert_eq!(p.stream == Stream::Stderr, i % 3 == 0);
            assert_eq!(p.codec, Codec::Zstd);
            assert_eq!(zstd::bulk::decompress(p.data(), p.raw.len()).unwrap(), p.raw);
        }
    }
}

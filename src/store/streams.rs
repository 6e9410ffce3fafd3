//! Large files through the local tier on every core. An output file (`-o`)
//! of 1 GiB is 4096 blobs, each hashed (SHA-256) and compressed (LZ4) to
//! store, or decoded and checked to restore; one thread doing that for all
//! of them took 1.3 s of CPU where `cp` took 0.35 s. Here compress's
//! workers do it side by side while the calling thread reads the file and
//! writes the results in order, as a recording does for a command's output.
//! A file of a few MiB starts no threads; where none can start, compress's
//! workers run on the calling thread.

use std::collections::VecDeque;
use std::io::{self, Read};

use super::blobs::{blob_error, LocalBlobs, FILE_BLOB_BYTES};
use crate::blob::{fill, load_stream, store_blobs, BlobError, BlobStore, Contents, Digest, BLOB_BYTES};
use crate::compress::{self, Codec, Packed};
use crate::output::Stream;

/// Buffers handed back by the workers, for the next blobs.
#[derive(Default)]
struct Spare {
    raw: Vec<Vec<u8>>,
    out: Vec<Vec<u8>>,
}

/// The blobs of a file stored on the calling thread before the rest go to
/// workers: a file of a few MiB is done before two threads would have
/// started (each blob costs ~0.26 ms of SHA-256 and LZ4 here; starting the
/// workers about 1 ms).
const STORE_HERE_BLOBS: usize = 16;

/// Files of fewer blobs are decoded on the calling thread: a blob decodes
/// and checks in ~0.06 ms, so the workers pay for themselves only from
/// about 16 MiB (restoring 100 files of 1 MiB took 0.10-0.15 s with a pool
/// per file, 0.05-0.07 s without).
const RESTORE_HERE_BELOW_BLOBS: usize = 64;

impl LocalBlobs<'_> {
    /// [`BlobStore::put_stream`] with the blobs of a long file hashed and
    /// compressed by worker threads, after its first [`STORE_HERE_BLOBS`].
    pub(super) fn put_stream_on_workers(&self, mut reader: &mut dyn Read) -> Result<Contents, BlobError> {
        let mut contents = Contents::default();
        let mut raw = vec![0u8; BLOB_BYTES];
        if store_blobs(self, &mut reader, &mut raw, &mut contents, STORE_HERE_BLOBS)? {
            return Ok(contents);
        }
        let mut packer = compress::packer()?;
        let mut spare = Spare::default();
        loop {
            raw.resize(BLOB_BYTES, 0);
            let len = fill(&mut reader, &mut raw)?;
            if len == 0 {
                break;
            }
            raw.truncate(len);
            // LZ4 for a full blob: output files arrive as fast as the disk
            // reads them, and zstd would halve a large `-o`'s rate.
            let codec = if len >= FILE_BLOB_BYTES {
                Codec::Lz4
            } else {
                Codec::Zstd
            };
            let out = spare.out.pop().unwrap_or_default();
            if let Some(done) = packer.push((codec, Stream::Stdout, raw, out))? {
                self.keep(done?, &mut contents, &mut spare)?;
            }
            if len < BLOB_BYTES {
                break;
            }
            raw = spare.raw.pop().unwrap_or_default();
        }
        while let Some(done) = packer.oldest()? {
            self.keep(done?, &mut contents, &mut spare)?;
        }
        Ok(contents)
    }

    /// Stores a blob a worker packed, unless it is stored already, and
    /// appends it to `contents`.
    fn keep(&self, packed: Packed, contents: &mut Contents, spare: &mut Spare) -> Result<(), BlobError> {
        let digest = packed.digest;
        if !self.has(&digest)? {
            self.write_packed(&packed).map_err(|e| blob_error(&digest, e))?;
        }
        contents.size += packed.raw.len() as u64;
        contents.blobs.push(digest);
        spare.raw.push(packed.raw);
        spare.out.push(packed.compressed);
        Ok(())
    }

    /// [`BlobStore::get_stream`] with the blobs of a long file decoded and
    /// checked by worker threads, handed to `out` in order.
    pub(super) fn get_stream_on_workers(
        &self,
        contents: &Contents,
        out: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<(), BlobError> {
        if contents.blobs.len() < RESTORE_HERE_BELOW_BLOBS {
            return load_stream(self, contents, out);
        }
        let mut unpacker = compress::unpacker()?;
        // The digests being decoded, oldest first, to name a damaged one.
        let mut in_flight = VecDeque::new();
        let mut spare = Spare::default();
        for (index, digest) in contents.blobs.iter().enumerate() {
            let mut stored_bytes = spare.raw.pop().unwrap_or_default();
            let stored = match self.read_stored(digest, &mut stored_bytes) {
                Ok(Some(stored)) => stored,
                Ok(None) => return Err(BlobError::Missing(*digest)),
                Err(err) => return Err(blob_error(digest, err)),
            };
            if stored.raw_len as u64 != contents.blob_len(index) {
                return Err(BlobError::Damaged(*digest));
            }
            in_flight.push_back(*digest);
            let decoded = spare.out.pop().unwrap_or_default();
            let job = (
                Stream::Stdout,
                stored.codec,
                stored.raw_len,
                stored.sum,
                stored_bytes,
                decoded,
            );
            if let Some(done) = unpacker.push(job)? {
                hand_on(done, &mut in_flight, out, &mut spare)?;
            }
        }
        while let Some(done) = unpacker.oldest()? {
            hand_on(done, &mut in_flight, out, &mut spare)?;
        }
        if !contents.is_whole() {
            // Fewer blobs than the size needs: the record itself is damaged.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "stored contents are shorter than their size",
            )
            .into());
        }
        Ok(())
    }
}

/// Hands a worker's decoded blob, the oldest in flight, to `out`.
fn hand_on(
    done: io::Result<(Stream, Vec<u8>, Vec<u8>)>,
    in_flight: &mut VecDeque<Digest>,
    out: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    spare: &mut Spare,
) -> Result<(), BlobError> {
    let digest = in_flight.pop_front();
    match done {
        Ok((_, decoded, stored_bytes)) => {
            out(&decoded)?;
            spare.out.push(decoded);
            spare.raw.push(stored_bytes);
            Ok(())
        }
        // A checksum that does not match, or bytes that do not decode.
        Err(err) => Err(digest.map_or(BlobError::Io(err), BlobError::Damaged)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::Store;

    /// Long enough for the workers both ways: full blobs of five kinds,
    /// repeated, then a short tail. Cut at the same places as blob by
    /// blob, stored once each, and back whole.
    #[test]
    fn a_file_of_many_blobs_round_trips_through_the_workers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let blobs = store.blobs();
        let mut data = Vec::new();
        for i in 0..RESTORE_HERE_BELOW_BLOBS + 3 {
            data.extend((0..BLOB_BYTES).map(|j| (j * (i % 5 + 1) % 251) as u8));
        }
        data.extend_from_slice(b"and a tail");
        let contents = blobs.put_stream(&mut &data[..]).unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let one_by_one = crate::blob::dir::DirBlobs::new(elsewhere.path());
        assert_eq!(
            contents,
            crate::blob::store_stream(&one_by_one, &data[..]).unwrap()
        );
        let rows: i64 = store
            .conn
            .query_row("SELECT count(*) FROM blobs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 6);
        let mut back = Vec::new();
        blobs
            .get_stream(&contents, &mut |bytes| {
                back.extend_from_slice(bytes);
                Ok(())
            })
            .unwrap();
        assert!(back == data);

        // A blob missing from the middle is named.
        let mut short = contents.clone();
        short.blobs[2] = Digest::of(b"not stored");
        let err = blobs.get_stream(&short, &mut |_| Ok(())).unwrap_err();
        assert!(
            matches!(err, BlobError::Missing(d) if d == short.blobs[2]),
            "{err}"
        );
        // So are too few blobs for the size.
        short.blobs.truncate(3);
        short.blobs[2] = contents.blobs[2];
        assert!(blobs.get_stream(&short, &mut |_| Ok(())).is_err());
    }
}

//! Content-addressed blobs: byte strings of at most [`BLOB_BYTES`] named by
//! the SHA-256 of their raw bytes, the one name they carry in every tier
//! (local files, a remote CAS). A longer byte stream is stored as
//! [`Contents`]: its size and the digests of its consecutive blobs.
//!
//! [`BlobStore`] is the whole interface a tier offers; [`store_stream`] and
//! [`load_stream`] move a stream through any of them in bounded memory.

use std::fmt;
use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

#[cfg(test)]
pub mod dir;
mod two_lanes;

/// The largest blob: contents longer than this are split into consecutive
/// blobs of this size. Small enough that a stream moves in bounded memory,
/// large enough that a 1 GiB file is 4096 blobs, not millions.
pub const BLOB_BYTES: usize = 256 * 1024;

/// SHA-256 of a blob's raw (uncompressed) bytes: its name in every tier.
/// Serialized as 64 lowercase hex characters, the form a Bazel CAS uses in
/// its URLs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The digest of `bytes`. A whole blob of zeros (a sparse file's hole,
    /// a zero-filled image) is named without hashing: checking 256 KiB for
    /// zeros stops at the first byte that is not, and a blob that is all
    /// zeros costs a memory scan instead of 80 us of SHA-256.
    pub fn of(bytes: &[u8]) -> Digest {
        if is_zero_blob(bytes) {
            return *zero_blob();
        }
        Digest(Sha256::digest(bytes).into())
    }

    /// The digests of `a` and of `b`, computed side by side: on a CPU with
    /// the SHA extensions in about 0.55 of the time of two [`Digest::of`].
    pub fn of_two(a: &[u8], b: &[u8]) -> (Digest, Digest) {
        if is_zero_blob(a) || is_zero_blob(b) {
            return (Digest::of(a), Digest::of(b));
        }
        two_lanes::digest_two(a, b)
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The digest whose raw bytes these are; `None` unless exactly 32.
    pub fn from_bytes(bytes: &[u8]) -> Option<Digest> {
        bytes.try_into().ok().map(Digest)
    }

    /// 64 lowercase hex characters.
    pub fn hex(&self) -> String {
        crate::key::hex(&self.0)
    }

    /// Parses 64 hex characters (either case); anything else is `None`.
    pub fn from_hex(s: &str) -> Option<Digest> {
        fn nibble(c: u8) -> Option<u8> {
            match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                b'A'..=b'F' => Some(c - b'A' + 10),
                _ => None,
            }
        }
        let s = s.as_bytes();
        if s.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(s.chunks_exact(2)) {
            *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
        }
        Some(Digest(bytes))
    }
}

/// Bytes no codec shrinks and no two blobs share (xorshift), the same for
/// a seed on every run: for tests.
#[cfg(test)]
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The digest of a whole blob of zeros.
pub fn zero_blob() -> &'static Digest {
    static ZERO: std::sync::OnceLock<Digest> = std::sync::OnceLock::new();
    ZERO.get_or_init(|| Digest(Sha256::digest(vec![0u8; BLOB_BYTES]).into()))
}

/// Whether `bytes` are a whole blob of zeros.
fn is_zero_blob(bytes: &[u8]) -> bool {
    bytes.len() == BLOB_BYTES && all_zero(bytes)
}

/// Whether every byte is zero; stops within 4 KiB of the first that is not.
pub fn all_zero(bytes: &[u8]) -> bool {
    bytes
        .chunks(4096)
        .all(|chunk| chunk.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.hex())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.hex())
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Digest, D::Error> {
        let hex = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Digest::from_hex(&hex).ok_or_else(|| serde::de::Error::custom("a digest is 64 hex characters"))
    }
}

/// Why a blob could not be had.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// No tier holds it.
    #[error("blob {0} is missing")]
    Missing(Digest),
    /// What was stored under this name is not these bytes (or not the
    /// length its contents promise).
    #[error("blob {0} is damaged")]
    Damaged(Digest),
    /// Reading or writing failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Where blobs live. Implementations verify what they return.
pub trait BlobStore {
    /// Whether the blob is stored (no verification).
    fn has(&self, digest: &Digest) -> Result<bool, BlobError>;
    /// Stores `bytes` (at most [`BLOB_BYTES`]) under their digest, once:
    /// storing present bytes again is a no-op.
    fn put(&self, digest: &Digest, bytes: &[u8]) -> Result<(), BlobError>;
    /// Fills `buf` (cleared first) with the blob's raw bytes, checked against
    /// `digest`: [`BlobError::Missing`] or [`BlobError::Damaged`] otherwise.
    fn get(&self, digest: &Digest, buf: &mut Vec<u8>) -> Result<(), BlobError>;

    /// Stores everything `reader` yields, as [`store_stream`] does; a tier
    /// may do it faster than blob by blob (the local one hashes and
    /// compresses a large file's blobs on every core).
    fn put_stream(&self, reader: &mut dyn Read) -> Result<Contents, BlobError> {
        store_stream(self, reader)
    }

    /// Hands the stored stream to `out`, as [`load_stream`] does; a tier
    /// may decode blobs side by side, in order.
    fn get_stream(
        &self,
        contents: &Contents,
        out: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<(), BlobError> {
        load_stream(self, contents, out)
    }
}

/// A byte stream stored as blobs: `size` bytes in all, in `blobs` in order,
/// each [`BLOB_BYTES`] long but the last.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Contents {
    /// Total length in bytes.
    pub size: u64,
    /// The blobs, in order.
    pub blobs: Vec<Digest>,
}

impl Contents {
    /// The length blob `index` must have, from the total size: every blob
    /// is full but the last, so a blob cut short or run long is caught even
    /// by a store that only checks digests it was handed.
    pub fn blob_len(&self, index: usize) -> u64 {
        let before = index as u64 * BLOB_BYTES as u64;
        self.size.saturating_sub(before).min(BLOB_BYTES as u64)
    }

    /// Whether there are as many blobs as the size needs, no more, no fewer.
    pub fn is_whole(&self) -> bool {
        self.size.div_ceil(BLOB_BYTES as u64) == self.blobs.len() as u64
    }
}

/// A command's output cut into blobs as it arrives: per stream, exactly
/// [`BLOB_BYTES`] each, so the same output gives the same blobs however
/// its reads were split. Output may be read straight into the blob being
/// filled ([`Cutter::room`], then [`Cutter::advance`]) or copied in
/// ([`Cutter::fill`]).
#[derive(Default)]
pub struct Cutter {
    /// Per stream (stdout, stderr), the blob being filled: a buffer
    /// [`BLOB_BYTES`] long once it has been handed out, and how much of it
    /// holds output.
    filling: [(Vec<u8>, usize); 2],
}

impl Cutter {
    /// The part of `stream`'s blob not filled yet (the blob a buffer from
    /// `fresh` when it has none), to read output into; never empty.
    pub fn room(&mut self, stream: crate::output::Stream, fresh: impl FnOnce() -> Vec<u8>) -> &mut [u8] {
        let (blob, len) = &mut self.filling[stream as usize - 1];
        if blob.len() < BLOB_BYTES {
            if blob.capacity() == 0 {
                *blob = fresh();
            }
            // Zeroes only what the buffer never held: a reused one is full
            // length already.
            blob.resize(BLOB_BYTES, 0);
        }
        &mut blob[*len..]
    }

    /// Counts the next `n` bytes of [`Cutter::room`] as output, and returns
    /// the blob if that filled it.
    pub fn advance(&mut self, stream: crate::output::Stream, n: usize) -> Option<Vec<u8>> {
        let (blob, len) = &mut self.filling[stream as usize - 1];
        *len = (*len + n).min(blob.len());
        (*len == BLOB_BYTES).then(|| {
            *len = 0;
            std::mem::take(blob)
        })
    }

    /// Moves bytes from the front of `bytes` into `stream`'s blob (a buffer
    /// from `fresh` when it has none) and returns the blob if that filled
    /// it; call again while `bytes` is not empty.
    pub fn fill(
        &mut self,
        stream: crate::output::Stream,
        bytes: &mut &[u8],
        fresh: impl FnOnce() -> Vec<u8>,
    ) -> Option<Vec<u8>> {
        let room = self.room(stream, fresh);
        let take = bytes.len().min(room.len());
        room[..take].copy_from_slice(&bytes[..take]);
        *bytes = &bytes[take..];
        self.advance(stream, take)
    }

    /// The first `n` bytes of [`Cutter::room`], once output was read there
    /// and before [`Cutter::advance`] counts it.
    pub fn in_room(&self, stream: crate::output::Stream, n: usize) -> &[u8] {
        let (blob, len) = &self.filling[stream as usize - 1];
        &blob[*len..(*len + n).min(blob.len())]
    }

    /// `stream`'s last, shorter blob (empty if none), taken.
    pub fn rest(&mut self, stream: crate::output::Stream) -> Vec<u8> {
        let (blob, len) = &mut self.filling[stream as usize - 1];
        let mut rest = std::mem::take(blob);
        rest.truncate(std::mem::take(len));
        rest
    }
}

/// Stores everything `reader` yields, [`BLOB_BYTES`] at a time in one reused
/// buffer, so memory stays bounded whatever the length. A blob the store
/// already has is not put again.
pub fn store_stream<S: BlobStore + ?Sized>(store: &S, mut reader: impl Read) -> Result<Contents, BlobError> {
    let mut buf = vec![0u8; BLOB_BYTES];
    let mut contents = Contents::default();
    store_blobs(store, &mut reader, &mut buf, &mut contents, usize::MAX)?;
    Ok(contents)
}

/// Stores what `reader` yields blob by blob through `buf` (of
/// [`BLOB_BYTES`]), each once, appending to `contents`: until the reader
/// ends (`true`) or `contents` holds `max` blobs (`false`).
pub fn store_blobs<S: BlobStore + ?Sized>(
    store: &S,
    reader: &mut impl Read,
    buf: &mut [u8],
    contents: &mut Contents,
    max: usize,
) -> Result<bool, BlobError> {
    while contents.blobs.len() < max {
        let len = fill(reader, buf)?;
        if len == 0 {
            return Ok(true);
        }
        let bytes = &buf[..len];
        let digest = Digest::of(bytes);
        if !store.has(&digest)? {
            store.put(&digest, bytes)?;
        }
        contents.size += len as u64;
        contents.blobs.push(digest);
        if len < BLOB_BYTES {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Reads until `buf` is full or the reader ends, so blob boundaries depend
/// on the bytes alone, not on how reads happened to split them.
pub fn fill(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut len = 0;
    while len < buf.len() {
        match reader.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(len)
}

/// Hands the stored stream to `out` blob by blob, each verified by the store
/// and checked against the length `contents` promises. An error of `out`
/// comes back as [`BlobError::Io`].
pub fn load_stream<S: BlobStore + ?Sized>(
    store: &S,
    contents: &Contents,
    mut out: impl FnMut(&[u8]) -> io::Result<()>,
) -> Result<(), BlobError> {
    let mut buf = Vec::with_capacity(BLOB_BYTES);
    for (index, digest) in contents.blobs.iter().enumerate() {
        store.get(digest, &mut buf)?;
        if buf.len() as u64 != contents.blob_len(index) {
            return Err(BlobError::Damaged(*digest));
        }
        out(&buf)?;
    }
    if contents.blob_len(contents.blobs.len()) != 0 {
        // Fewer blobs than the size needs: the record itself is damaged.
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "stored contents are shorter than their size",
        )
        .into());
    }
    Ok(())
}

/// Whether `reader` yields exactly `contents`, compared blob by blob by
/// digest, so a file already in place can be recognised without its blobs.
/// Stops at the first blob that differs.
pub fn stream_matches(mut reader: impl Read, contents: &Contents) -> io::Result<bool> {
    // Two blobs at a time, hashed side by side (see `Digest::of_two`); the
    // second buffer only where there is a second blob.
    let second = if contents.blobs.len() > 1 { BLOB_BYTES } else { 0 };
    let mut bufs = [vec![0u8; BLOB_BYTES], vec![0u8; second]];
    for (pair, digests) in contents.blobs.chunks(2).enumerate() {
        let mut lens = [0; 2];
        for (i, (buf, len)) in bufs.iter_mut().zip(&mut lens).take(digests.len()).enumerate() {
            *len = fill(&mut reader, buf)?;
            if *len as u64 != contents.blob_len(2 * pair + i) {
                return Ok(false);
            }
        }
        let [a, b] = &bufs;
        let named = match digests {
            [first, second] => Digest::of_two(&a[..lens[0]], &b[..lens[1]]) == (*first, *second),
            _ => Digest::of(&a[..lens[0]]) == digests[0],
        };
        if !named {
            return Ok(false);
        }
    }
    // Nothing may follow the last blob.
    Ok(contents.blob_len(contents.blobs.len()) == 0 && fill(&mut reader, &mut bufs[0][..1])? == 0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::dir::DirBlobs;
    use super::*;

    /// Output read straight into the cutter's room, in pieces of every
    /// size and into reused buffers still holding old bytes, gives the
    /// same blobs as copying it in: exactly BLOB_BYTES each, per stream.
    #[test]
    fn reading_into_the_room_cuts_as_copying_does() {
        use crate::output::Stream;
        let out: Vec<u8> = (0..3 * BLOB_BYTES + 1000).map(|i| (i * 7 % 251) as u8).collect();
        let err: Vec<u8> = (0..BLOB_BYTES + 5).map(|i| (i % 13) as u8).collect();
        // Hands one read's bytes to the cutter; the blobs that filled.
        type Read<'a> = dyn FnMut(&mut Cutter, Stream, &[u8]) -> Vec<Vec<u8>> + 'a;
        let cut = |read: &mut Read| {
            let mut cutter = Cutter::default();
            let mut blobs = Vec::new();
            let (mut o, mut e) = (&out[..], &err[..]);
            let mut size = 1;
            while !o.is_empty() || !e.is_empty() {
                size = size * 5 % 70_001 + 1;
                for (stream, rest) in [(Stream::Stdout, &mut o), (Stream::Stderr, &mut e)] {
                    let take = size.min(rest.len());
                    blobs.extend(
                        read(&mut cutter, stream, &rest[..take])
                            .into_iter()
                            .map(|b| (stream, b)),
                    );
                    *rest = &rest[take..];
                }
            }
            blobs.push((Stream::Stdout, cutter.rest(Stream::Stdout)));
            blobs.push((Stream::Stderr, cutter.rest(Stream::Stderr)));
            blobs
        };
        let copied = cut(&mut |cutter, stream, mut bytes| {
            let mut blobs = Vec::new();
            while !bytes.is_empty() {
                blobs.extend(cutter.fill(stream, &mut bytes, Vec::new));
            }
            blobs
        });
        let read = cut(&mut |cutter, stream, mut bytes| {
            let mut blobs = Vec::new();
            while !bytes.is_empty() {
                // A reused buffer, full length and full of old bytes.
                let room = cutter.room(stream, || vec![0xEE; BLOB_BYTES]);
                let n = bytes.len().min(room.len());
                room[..n].copy_from_slice(&bytes[..n]);
                assert_eq!(cutter.in_room(stream, n), &bytes[..n]);
                bytes = &bytes[n..];
                blobs.extend(cutter.advance(stream, n));
            }
            blobs
        });
        assert!(copied == read, "the two ways cut differently");
        let (outs, errs): (Vec<_>, Vec<_>) = read.iter().partition(|(s, _)| *s == Stream::Stdout);
        assert!(outs
            .iter()
            .flat_map(|(_, b)| b.iter().copied())
            .eq(out.iter().copied()));
        assert!(errs
            .iter()
            .flat_map(|(_, b)| b.iter().copied())
            .eq(err.iter().copied()));
        assert!(outs[..3].iter().all(|(_, b)| b.len() == BLOB_BYTES));
        assert_eq!(outs[3].1.len(), 1000);
        assert_eq!(errs[1].1.len(), 5);
    }

    #[test]
    fn a_blob_of_zeros_is_named_by_its_sha256() {
        let zeros = vec![0u8; BLOB_BYTES];
        let sha256 = Digest(Sha256::digest(&zeros).into());
        assert_eq!(Digest::of(&zeros), sha256);
        let mut nearly = zeros.clone();
        nearly[BLOB_BYTES - 1] = 1;
        assert_eq!(Digest::of(&nearly), Digest(Sha256::digest(&nearly).into()));
        assert_eq!(Digest::of_two(&zeros, &nearly).0, sha256);
        assert_eq!(Digest::of_two(&nearly, &zeros).1, sha256);
        assert_eq!(
            Digest::of(&zeros[1..]),
            Digest(Sha256::digest(&zeros[1..]).into())
        );
    }

    #[test]
    fn digest_hex_round_trips_and_matches_sha256sum() {
        let digest = Digest::of(b"abc");
        assert_eq!(
            digest.hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Digest::from_hex(&digest.hex()), Some(digest));
        assert_eq!(Digest::from_hex(&digest.hex().to_uppercase()), Some(digest));
        assert_eq!(Digest::from_hex("ba78"), None);
        assert_eq!(Digest::from_hex(&"g".repeat(64)), None);
        let json = serde_json::to_string(&digest).unwrap();
        assert_eq!(json, format!("\"{}\"", digest.hex()));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), digest);
        assert!(serde_json::from_str::<Digest>("\"00\"").is_err());
    }

    #[test]
    fn a_stream_round_trips_in_full_blobs_and_stores_repeats_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirBlobs::new(dir.path());
        // Three full blobs of which two are equal, and a short tail.
        let mut data = vec![7u8; 2 * BLOB_BYTES];
        data.extend((0..BLOB_BYTES + 10).map(|i| (i % 251) as u8));
        let contents = store_stream(&store, &data[..]).unwrap();
        assert_eq!(contents.size, data.len() as u64);
        assert_eq!(contents.blobs.len(), 4);
        assert_eq!(contents.blobs[0], contents.blobs[1]);
        assert_eq!(store.count(), 3);
        let mut back = Vec::new();
        load_stream(&store, &contents, |bytes| {
            back.extend_from_slice(bytes);
            Ok(())
        })
        .unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn a_stream_matches_only_its_own_contents() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirBlobs::new(dir.path());
        // Blobs are compared two by two: odd and even counts, a whole last
        // blob, a change in either blob of a pair.
        for size in [
            3,
            BLOB_BYTES,
            BLOB_BYTES + 3,
            2 * BLOB_BYTES,
            3 * BLOB_BYTES - 1,
            4 * BLOB_BYTES + 5,
        ] {
            let data: Vec<u8> = (0..size).map(|i| (i % 7) as u8).collect();
            let contents = store_stream(&store, &data[..]).unwrap();
            assert!(stream_matches(&data[..], &contents).unwrap(), "{size}");
            assert!(
                !stream_matches(&data[..data.len() - 1], &contents).unwrap(),
                "{size}"
            );
            let mut longer = data.clone();
            longer.push(0);
            assert!(!stream_matches(&longer[..], &contents).unwrap(), "{size}");
            for at in [0, size / 2, size - 1, BLOB_BYTES + 1] {
                let mut changed = data.clone();
                if let Some(byte) = changed.get_mut(at) {
                    *byte ^= 1;
                    assert!(
                        !stream_matches(&changed[..], &contents).unwrap(),
                        "{size} at {at}"
                    );
                }
            }
        }
        let empty = store_stream(&store, io::empty()).unwrap();
        assert!(stream_matches(io::empty(), &empty).unwrap());
        assert!(!stream_matches(&b"x"[..], &empty).unwrap());
    }

    #[test]
    fn an_empty_stream_is_no_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirBlobs::new(dir.path());
        let contents = store_stream(&store, io::empty()).unwrap();
        assert_eq!(
            contents,
            Contents {
                size: 0,
                blobs: vec![]
            }
        );
        load_stream(&store, &contents, |_| panic!("no bytes")).unwrap();
    }

    #[test]
    fn missing_damaged_and_short_blobs_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirBlobs::new(dir.path());
        let contents = store_stream(&store, &b"hello"[..]).unwrap();
        let digest = contents.blobs[0];

        let mut wrong_size = contents.clone();
        wrong_size.size = 6;
        let err = load_stream(&store, &wrong_size, |_| Ok(())).unwrap_err();
        assert!(matches!(err, BlobError::Damaged(d) if d == digest), "{err:?}");

        std::fs::write(store.path_of(&digest), b"hellO").unwrap();
        let err = load_stream(&store, &contents, |_| Ok(())).unwrap_err();
        assert!(matches!(err, BlobError::Damaged(d) if d == digest), "{err:?}");

        std::fs::remove_file(store.path_of(&digest)).unwrap();
        let err = load_stream(&store, &contents, |_| Ok(())).unwrap_err();
        assert!(matches!(err, BlobError::Missing(d) if d == digest), "{err:?}");
    }
}

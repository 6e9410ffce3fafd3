//! SHA-256 of two blobs at once. Each SHA-256 round depends on the one
//! before, so one message keeps the CPU's SHA unit waiting on its latency:
//! on this project's AMD EPYC a `sha256rnds2` takes 4 cycles to give its
//! answer but can start every 2, and `sha2` (like OpenSSL) hashes one
//! message at 1.8 GB/s a core. Two independent messages interleaved round by
//! round fill those gaps: 3.2 GB/s a core here. A large output is thousands
//! of independent blobs, so the workers that pack them hash two at a time.
//!
//! No well-kept crate hashes several messages at once with the SHA
//! extensions (`sha2`, `ring` and OpenSSL hash one); the kernel is the
//! standard SHA-NI round sequence run twice side by side, checked against
//! `sha2` on every length around the block and padding boundaries. The
//! tails (the last partial block and the padding) go through `sha2`'s own
//! block function, and a CPU without the SHA extensions hashes each message
//! with `sha2`.

use sha2::digest::generic_array::GenericArray;
use sha2::{Digest as _, Sha256};

use super::Digest;

/// The digests of `a` and of `b`.
pub fn digest_two(a: &[u8], b: &[u8]) -> (Digest, Digest) {
    #[cfg(target_arch = "x86_64")]
    if shani::available() {
        let full = a.len().min(b.len()) / 64 * 64;
        let (mut state_a, mut state_b) = (H0, H0);
        // SAFETY: `available` checked that the CPU has every feature the
        // kernel is compiled for.
        unsafe { shani::compress_two(&mut state_a, &mut state_b, &a[..full], &b[..full]) };
        return (finish(state_a, a, full), finish(state_b, b, full));
    }
    (Digest(Sha256::digest(a).into()), Digest(Sha256::digest(b).into()))
}

/// SHA-256's initial state.
#[cfg(target_arch = "x86_64")]
const H0: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// The digest of `message` from `state`, the state after its first `done`
/// bytes (a multiple of 64): the remaining blocks, then the padding and the
/// length in bits, through `sha2`'s block function.
#[cfg(target_arch = "x86_64")]
fn finish(mut state: [u32; 8], message: &[u8], done: usize) -> Digest {
    let rest = &message[done..];
    let full = rest.len() / 64 * 64;
    for block in rest[..full].chunks_exact(64) {
        sha2::compress256(&mut state, &[*GenericArray::from_slice(block)]);
    }
    let last = &rest[full..];
    let mut tail = [0u8; 128];
    tail[..last.len()].copy_from_slice(last);
    tail[last.len()] = 0x80;
    let end = if last.len() + 9 <= 64 { 64 } else { 128 };
    tail[end - 8..end].copy_from_slice(&(message.len() as u64 * 8).to_be_bytes());
    for block in tail[..end].chunks_exact(64) {
        sha2::compress256(&mut state, &[*GenericArray::from_slice(block)]);
    }
    let mut digest = [0u8; 32];
    for (bytes, word) in digest.chunks_exact_mut(4).zip(state) {
        bytes.copy_from_slice(&word.to_be_bytes());
    }
    Digest(digest)
}

#[cfg(target_arch = "x86_64")]
mod shani {
    use std::arch::x86_64::*;

    /// Whether this CPU has the SHA extensions and the SSE levels the
    /// kernel uses (std caches the answer).
    pub fn available() -> bool {
        is_x86_feature_detected!("sha")
            && is_x86_feature_detected!("sse2")
            && is_x86_feature_detected!("ssse3")
            && is_x86_feature_detected!("sse4.1")
    }

    /// The round constants, four to a vector in the order the
    /// instructions take them.
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
    ];

    /// The state as the instructions hold it: (ABEF, CDGH).
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    fn load(state: &[u32; 8]) -> (__m128i, __m128i) {
        // SAFETY: two unaligned 16-byte loads from a 32-byte array.
        let (dcba, efgh) = unsafe {
            let words = state.as_ptr() as *const __m128i;
            (_mm_loadu_si128(words), _mm_loadu_si128(words.add(1)))
        };
        let cdab = _mm_shuffle_epi32(dcba, 0xB1);
        let hgfe = _mm_shuffle_epi32(efgh, 0x1B);
        (_mm_alignr_epi8(cdab, hgfe, 8), _mm_blend_epi16(hgfe, cdab, 0xF0))
    }

    /// Puts (ABEF, CDGH) back in SHA-256's word order.
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    fn store(state: &mut [u32; 8], abef: __m128i, cdgh: __m128i) {
        let feba = _mm_shuffle_epi32(abef, 0x1B);
        let dchg = _mm_shuffle_epi32(cdgh, 0xB1);
        // SAFETY: two unaligned 16-byte stores into a 32-byte array.
        unsafe {
            let words = state.as_mut_ptr() as *mut __m128i;
            _mm_storeu_si128(words, _mm_blend_epi16(feba, dchg, 0xF0));
            _mm_storeu_si128(words.add(1), _mm_alignr_epi8(dchg, feba, 8));
        }
    }

    /// Runs the blocks of `a` and of `b` (the same number of whole 64-byte
    /// blocks) through SHA-256's compression, side by side.
    ///
    /// # Safety
    /// The CPU must have the features [`available`] checks.
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub unsafe fn compress_two(state_a: &mut [u32; 8], state_b: &mut [u32; 8], a: &[u8], b: &[u8]) {
        debug_assert!(a.len() == b.len() && a.len().is_multiple_of(64));
        let big_endian = _mm_set_epi64x(0x0C0D_0E0F_0809_0A0B, 0x0405_0607_0001_0203);
        let (mut abef_a, mut cdgh_a) = load(state_a);
        let (mut abef_b, mut cdgh_b) = load(state_b);
        let k = K.as_ptr() as *const __m128i;
        for (block_a, block_b) in a.chunks_exact(64).zip(b.chunks_exact(64)) {
            let saved = (abef_a, cdgh_a, abef_b, cdgh_b);
            let (pa, pb) = (
                block_a.as_ptr() as *const __m128i,
                block_b.as_ptr() as *const __m128i,
            );
            // SAFETY: four unaligned 16-byte loads from each 64-byte block.
            let word =
                |p: *const __m128i, i| unsafe { _mm_shuffle_epi8(_mm_loadu_si128(p.add(i)), big_endian) };
            let (mut a0, mut a1, mut a2, mut a3) = (word(pa, 0), word(pa, 1), word(pa, 2), word(pa, 3));
            let (mut b0, mut b1, mut b2, mut b3) = (word(pb, 0), word(pb, 1), word(pb, 2), word(pb, 3));
            // Four rounds of each message, taking its next four schedule words.
            macro_rules! rounds {
                ($wa:expr, $wb:expr, $i:expr) => {{
                    // SAFETY: $i < 16, so the load stays within K.
                    let kv = unsafe { _mm_loadu_si128(k.add($i)) };
                    let (ta, tb) = (_mm_add_epi32($wa, kv), _mm_add_epi32($wb, kv));
                    cdgh_a = _mm_sha256rnds2_epu32(cdgh_a, abef_a, ta);
                    cdgh_b = _mm_sha256rnds2_epu32(cdgh_b, abef_b, tb);
                    abef_a = _mm_sha256rnds2_epu32(abef_a, cdgh_a, _mm_shuffle_epi32(ta, 0x0E));
                    abef_b = _mm_sha256rnds2_epu32(abef_b, cdgh_b, _mm_shuffle_epi32(tb, 0x0E));
                }};
            }
            // The next four schedule words, in place of the oldest four.
            macro_rules! schedule {
                ($w0:ident, $w1:ident, $w2:ident, $w3:ident) => {{
                    let sigma0 = _mm_sha256msg1_epu32($w0, $w1);
                    let shifted = _mm_alignr_epi8($w3, $w2, 4);
                    $w0 = _mm_sha256msg2_epu32(_mm_add_epi32(sigma0, shifted), $w3);
                }};
            }
            rounds!(a0, b0, 0);
            rounds!(a1, b1, 1);
            rounds!(a2, b2, 2);
            rounds!(a3, b3, 3);
            for i in [4, 8, 12] {
                schedule!(a0, a1, a2, a3);
                schedule!(b0, b1, b2, b3);
                rounds!(a0, b0, i);
                schedule!(a1, a2, a3, a0);
                schedule!(b1, b2, b3, b0);
                rounds!(a1, b1, i + 1);
                schedule!(a2, a3, a0, a1);
                schedule!(b2, b3, b0, b1);
                rounds!(a2, b2, i + 2);
                schedule!(a3, a0, a1, a2);
                schedule!(b3, b0, b1, b2);
                rounds!(a3, b3, i + 3);
            }
            abef_a = _mm_add_epi32(abef_a, saved.0);
            cdgh_a = _mm_add_epi32(cdgh_a, saved.1);
            abef_b = _mm_add_epi32(abef_b, saved.2);
            cdgh_b = _mm_add_epi32(cdgh_b, saved.3);
        }
        store(state_a, abef_a, cdgh_a);
        store(state_b, abef_b, cdgh_b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(len: usize) -> Vec<u8> {
        super::super::noise(len, 0x9E37_79B9_7F4A_7C15)
    }

    fn sha2(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    #[test]
    fn every_length_around_blocks_and_padding_matches_sha2() {
        let data = noise(3 * 64 * 1024);
        let lengths: Vec<usize> = (0..200)
            .chain([447, 448, 511, 512, 513, 4096, 65535, 65536])
            .collect();
        for &la in &lengths {
            for &lb in [0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 65536]
                .iter()
                .chain([la].iter())
            {
                let (a, b) = (&data[..la], &data[1000..1000 + lb]);
                let (da, db) = digest_two(a, b);
                assert_eq!(da, sha2(a), "first of lengths {la}, {lb}");
                assert_eq!(db, sha2(b), "second of lengths {la}, {lb}");
            }
        }
    }

    #[test]
    fn whole_blobs_match_sha2_either_way_round() {
        let data = noise(2 * super::super::BLOB_BYTES + 17);
        let (a, b) = data.split_at(super::super::BLOB_BYTES);
        assert_eq!(digest_two(a, b), (sha2(a), sha2(b)));
        assert_eq!(digest_two(b, a), (sha2(b), sha2(a)));
        assert_eq!(digest_two(a, a), (sha2(a), sha2(a)));
    }
}

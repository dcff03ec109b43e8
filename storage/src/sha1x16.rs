//! Sixteen SHA-1 hashes at once, one per 32-bit lane of an AVX-512 register.
//!
//! A single SHA-1 stream is a serial chain of 80 rounds per 64-byte block; SHA-NI runs it at
//! ~2.1 GB/s a core here, and so do OpenSSL and the `sha1` crate. A torrent's pieces are
//! independent messages of the same length, so sixteen of them can advance together, each
//! instruction doing one round step for all sixteen (the "multi-buffer" technique of Intel's
//! isa-l_crypto). On this CPU (AMD EPYC, Zen 5, full-width AVX-512) that hashes ~5.2 GB/s a core
//! from L2, 2.4 times SHA-NI. No maintained crate offers multi-buffer SHA-1, hence this module;
//! the `sha1` crate stays the single-stream path and the oracle of the tests.
//!
//! Layout of the input: lane `i`'s bytes are at `data[i * stride ..]`. Each 64-byte block of the
//! sixteen lanes is loaded as sixteen rows and transposed (4 shuffle stages) so that register
//! `w[t]` holds message word `t` of every lane.
//!
//! [`Sha1x16::new`] returns `None` on a CPU without AVX-512F/BW; callers fall back to `sha1`.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Messages hashed together.
pub const LANES: usize = 16;

const H0: [u32; 5] = [
    0x6745_2301,
    0xEFCD_AB89,
    0x98BA_DCFE,
    0x1032_5476,
    0xC3D2_E1F0,
];

/// Whether this CPU runs the sixteen-lane kernel.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Sixteen SHA-1 states advancing together over messages of the same length.
#[derive(Clone)]
pub struct Sha1x16 {
    /// `state[j][lane]`: word j (a..e) of each lane's state.
    state: [[u32; LANES]; 5],
    /// Bytes hashed per lane so far (a multiple of 64).
    len: u64,
}

impl Sha1x16 {
    /// A fresh set of states, or `None` when the CPU lacks AVX-512F/BW.
    pub fn new() -> Option<Sha1x16> {
        if !available() {
            return None;
        }
        Some(Sha1x16 {
            state: [
                [H0[0]; LANES],
                [H0[1]; LANES],
                [H0[2]; LANES],
                [H0[3]; LANES],
                [H0[4]; LANES],
            ],
            len: 0,
        })
    }

    /// Hashes `len` more bytes of each lane: lane `i`'s are `data[i * stride .. i * stride + len]`.
    ///
    /// Panics if `len` is not a multiple of 64 or `data` is too short for the sixteen lanes.
    pub fn update(&mut self, data: &[u8], stride: usize, len: usize) {
        assert!(len.is_multiple_of(64), "whole 64-byte blocks only");
        let need = (LANES - 1)
            .checked_mul(stride)
            .and_then(|x| x.checked_add(len));
        assert!(
            need.is_some_and(|n| n <= data.len()),
            "data holds {} bytes, sixteen lanes of {len} at stride {stride} need more",
            data.len()
        );
        if len == 0 {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `new` returned Some only if the CPU has AVX-512F and AVX-512BW; the asserts
        // above keep every load (lane i, bytes [i*stride, i*stride + len)) inside `data`.
        unsafe {
            let base = data.as_ptr();
            compress(
                &mut self.state,
                &std::array::from_fn(|i| base.add(i * stride)),
                len / 64,
            );
        }
        self.len += len as u64;
    }

    /// Pads (every lane has the same length) and returns the sixteen digests, lane by lane.
    pub fn finalize(mut self) -> [[u8; 20]; LANES] {
        let bits = self.len.wrapping_mul(8);
        let mut pad = [0u8; 64 * LANES];
        for lane in pad.chunks_exact_mut(64) {
            lane[0] = 0x80;
            lane[56..].copy_from_slice(&bits.to_be_bytes());
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `update`; `pad` holds sixteen 64-byte lanes at stride 64.
        unsafe {
            let base = pad.as_ptr();
            compress(
                &mut self.state,
                &std::array::from_fn(|i| base.add(i * 64)),
                1,
            );
        }
        let mut out = [[0u8; 20]; LANES];
        for (lane, digest) in out.iter_mut().enumerate() {
            for (j, word) in self.state.iter().enumerate() {
                digest[j * 4..j * 4 + 4].copy_from_slice(&word[lane].to_be_bytes());
            }
        }
        out
    }
}

/// The running SHA-1 of one message fed in whole 64-byte blocks: its chaining value and length.
/// Unlike `sha1::Sha1` its state is open, so that sixteen of them can advance together
/// ([`compress_lanes`]) and each can go on alone ([`Sha1State::update`]) in between: how a
/// download hashes the pieces it receives, sixteen blocks of sixteen pieces at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sha1State {
    h: [u32; 5],
    /// Bytes hashed so far (a multiple of 64).
    len: u64,
}

impl Default for Sha1State {
    fn default() -> Self {
        Self::new()
    }
}

impl Sha1State {
    /// The state of an empty message.
    pub const fn new() -> Self {
        Sha1State { h: H0, len: 0 }
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was hashed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Hashes `data`, a whole number of 64-byte blocks, with the `sha1` crate's compression
    /// function (SHA-NI where the CPU has it).
    ///
    /// Panics if `data.len()` is not a multiple of 64.
    pub fn update(&mut self, data: &[u8]) {
        let (blocks, rest) = data.as_chunks::<64>();
        assert!(rest.is_empty(), "whole 64-byte blocks only");
        compress_one(&mut self.h, blocks);
        self.len += data.len() as u64;
    }

    /// Hashes `last` (any length) and the padding; returns the digest.
    pub fn finish(mut self, last: &[u8]) -> [u8; 20] {
        let (blocks, rest) = last.as_chunks::<64>();
        compress_one(&mut self.h, blocks);
        let total = self.len + last.len() as u64;
        let mut pad = [0u8; 128];
        pad[..rest.len()].copy_from_slice(rest);
        pad[rest.len()] = 0x80;
        // One block if the length fits after the 0x80 byte, else two.
        let n = if rest.len() < 56 { 64 } else { 128 };
        pad[n - 8..n].copy_from_slice(&total.wrapping_mul(8).to_be_bytes());
        let (pblocks, _) = pad[..n].as_chunks::<64>();
        compress_one(&mut self.h, pblocks);
        let mut out = [0u8; 20];
        for (o, w) in out.chunks_exact_mut(4).zip(self.h.iter()) {
            o.copy_from_slice(&w.to_be_bytes());
        }
        out
    }
}

/// The `sha1` crate's compression function (SHA-NI where the CPU has it) over whole blocks.
fn compress_one(h: &mut [u32; 5], blocks: &[[u8; 64]]) {
    use sha1::digest::generic_array::{typenum::U64, GenericArray};
    // SAFETY: `GenericArray<u8, U64>` is `#[repr(transparent)]` over `[u8; 64]` (generic-array
    // 0.14), so a slice of one is a slice of the other with the same length and alignment.
    let blocks: &[GenericArray<u8, U64>] =
        unsafe { std::slice::from_raw_parts(blocks.as_ptr().cast(), blocks.len()) };
    sha1::compress(h, blocks);
}

/// Advances sixteen independent [`Sha1State`]s together, lane `i` over `data[i]`. Every slice
/// has the same length, a multiple of 64. A lane with nothing to hash can be given any slice of
/// that length and a state that is then thrown away.
///
/// On a CPU without AVX-512 ([`available`] is false) the lanes are hashed one after another
/// with [`Sha1State::update`]: the same result, at single-stream speed.
///
/// Panics if the lengths differ or are not a multiple of 64.
pub fn compress_lanes(states: &mut [Sha1State; LANES], data: &[&[u8]; LANES]) {
    let len = data[0].len();
    assert!(len.is_multiple_of(64), "whole 64-byte blocks only");
    assert!(
        data.iter().all(|d| d.len() == len),
        "sixteen lanes of the same length"
    );
    if len == 0 {
        return;
    }
    if !available() {
        compress_lanes_portable(states, data);
        return;
    }
    let mut st = [[0u32; LANES]; 5];
    for (lane, s) in states.iter().enumerate() {
        for (j, w) in s.h.iter().enumerate() {
            st[j][lane] = *w;
        }
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `available()` was asserted (AVX-512F and AVX-512BW); every lane's pointer starts
    // a slice of `len` bytes, so the `len / 64` blocks read from it are inside that slice.
    unsafe {
        compress(
            &mut st,
            &std::array::from_fn(|i| data[i].as_ptr()),
            len / 64,
        );
    }
    for (lane, s) in states.iter_mut().enumerate() {
        for (j, w) in s.h.iter_mut().enumerate() {
            *w = st[j][lane];
        }
        s.len += len as u64;
    }
}

/// [`compress_lanes`] without AVX-512: one lane after another.
fn compress_lanes_portable(states: &mut [Sha1State; LANES], data: &[&[u8]; LANES]) {
    for (s, d) in states.iter_mut().zip(data.iter()) {
        s.update(d);
    }
}

/// Runs `nblocks` 64-byte blocks of each lane (lane `i` at `lanes[i]`) through SHA-1.
///
/// # Safety
/// The CPU must have AVX-512F and AVX-512BW, and `lanes[i] .. lanes[i] + nblocks * 64` must be
/// inside one readable allocation for every lane `i < 16`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn compress(state: &mut [[u32; LANES]; 5], lanes: &[*const u8; LANES], nblocks: usize) {
    // Big-endian words: reverse the bytes of each 32-bit word.
    let bswap = _mm512_set_epi8(
        60, 61, 62, 63, 56, 57, 58, 59, 52, 53, 54, 55, 48, 49, 50, 51, 44, 45, 46, 47, 40, 41, 42,
        43, 36, 37, 38, 39, 32, 33, 34, 35, 28, 29, 30, 31, 24, 25, 26, 27, 20, 21, 22, 23, 16, 17,
        18, 19, 12, 13, 14, 15, 8, 9, 10, 11, 4, 5, 6, 7, 0, 1, 2, 3,
    );
    let k0 = _mm512_set1_epi32(0x5A82_7999u32 as i32);
    let k1 = _mm512_set1_epi32(0x6ED9_EBA1u32 as i32);
    let k2 = _mm512_set1_epi32(0x8F1B_BCDCu32 as i32);
    let k3 = _mm512_set1_epi32(0xCA62_C1D6u32 as i32);
    let mut s = [_mm512_setzero_si512(); 5];
    for (v, words) in s.iter_mut().zip(state.iter()) {
        *v = _mm512_loadu_si512(words.as_ptr().cast());
    }
    for blk in 0..nblocks {
        // SAFETY (whole loop body): the caller guarantees lane i's blocks lie in bounds.
        let off = blk * 64;
        // Rows: the 16 words of one lane each; then transpose to words across lanes.
        let mut r = [_mm512_setzero_si512(); 16];
        for (row, p) in r.iter_mut().zip(lanes.iter()) {
            *row = _mm512_shuffle_epi8(_mm512_loadu_si512(p.add(off).cast()), bswap);
        }
        let mut a = [_mm512_setzero_si512(); 16];
        for k in 0..8 {
            a[2 * k] = _mm512_unpacklo_epi32(r[2 * k], r[2 * k + 1]);
            a[2 * k + 1] = _mm512_unpackhi_epi32(r[2 * k], r[2 * k + 1]);
        }
        let mut b = [_mm512_setzero_si512(); 16];
        for g in 0..4 {
            let o = 4 * g;
            b[o] = _mm512_unpacklo_epi64(a[o], a[o + 2]);
            b[o + 1] = _mm512_unpackhi_epi64(a[o], a[o + 2]);
            b[o + 2] = _mm512_unpacklo_epi64(a[o + 1], a[o + 3]);
            b[o + 3] = _mm512_unpackhi_epi64(a[o + 1], a[o + 3]);
        }
        // b[4g + j], 128-bit lane L: word 4L + j of rows 4g..4g+4.
        let mut w = [_mm512_setzero_si512(); 16];
        for j in 0..4 {
            let ca = _mm512_shuffle_i32x4::<0x88>(b[j], b[4 + j]);
            let cb = _mm512_shuffle_i32x4::<0xDD>(b[j], b[4 + j]);
            let cc = _mm512_shuffle_i32x4::<0x88>(b[8 + j], b[12 + j]);
            let cd = _mm512_shuffle_i32x4::<0xDD>(b[8 + j], b[12 + j]);
            w[j] = _mm512_shuffle_i32x4::<0x88>(ca, cc);
            w[8 + j] = _mm512_shuffle_i32x4::<0xDD>(ca, cc);
            w[4 + j] = _mm512_shuffle_i32x4::<0x88>(cb, cd);
            w[12 + j] = _mm512_shuffle_i32x4::<0xDD>(cb, cd);
        }
        let (mut va, mut vb, mut vc, mut vd, mut ve) = (s[0], s[1], s[2], s[3], s[4]);
        macro_rules! round {
            ($t:expr, $f:literal, $k:expr) => {{
                let t: usize = $t;
                if t >= 16 {
                    // w[t] = rol1(w[t-3] ^ w[t-8] ^ w[t-14] ^ w[t-16])
                    let x = _mm512_ternarylogic_epi32::<0x96>(
                        w[(t + 13) & 15],
                        w[(t + 8) & 15],
                        w[(t + 2) & 15],
                    );
                    w[t & 15] = _mm512_rol_epi32::<1>(_mm512_xor_si512(x, w[t & 15]));
                }
                // 0xCA: b ? c : d (Ch); 0x96: b ^ c ^ d (Parity); 0xE8: majority (Maj).
                let f = _mm512_ternarylogic_epi32::<$f>(vb, vc, vd);
                let tmp = _mm512_add_epi32(
                    _mm512_add_epi32(_mm512_rol_epi32::<5>(va), f),
                    _mm512_add_epi32(ve, _mm512_add_epi32($k, w[t & 15])),
                );
                ve = vd;
                vd = vc;
                vc = _mm512_rol_epi32::<30>(vb);
                vb = va;
                va = tmp;
            }};
        }
        for t in 0..20 {
            round!(t, 0xCA, k0);
        }
        for t in 20..40 {
            round!(t, 0x96, k1);
        }
        for t in 40..60 {
            round!(t, 0xE8, k2);
        }
        for t in 60..80 {
            round!(t, 0x96, k3);
        }
        s[0] = _mm512_add_epi32(s[0], va);
        s[1] = _mm512_add_epi32(s[1], vb);
        s[2] = _mm512_add_epi32(s[2], vc);
        s[3] = _mm512_add_epi32(s[3], vd);
        s[4] = _mm512_add_epi32(s[4], ve);
    }
    for (v, words) in s.iter().zip(state.iter_mut()) {
        _mm512_storeu_si512(words.as_mut_ptr().cast(), *v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha1::{Digest, Sha1};

    fn data(len: usize, seed: u64) -> Vec<u8> {
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

    /// Every length class the hasher feeds (0, one block, odd block counts, pieces), several
    /// strides (lanes packed, lanes apart), in chunks, against the `sha1` crate lane by lane.
    #[test]
    fn sixteen_lanes_match_sha1_crate() {
        let Some(fresh) = Sha1x16::new() else {
            // Not a skip: on a CPU without AVX-512 the hasher never uses this path, and this
            // test checks that `available()` agrees.
            assert!(!available());
            return;
        };
        for &(len, stride, chunk) in &[
            (0usize, 64usize, 64usize),
            (64, 64, 64),
            (128, 192, 64),
            (192 * 64, 192 * 64, 192 * 64),
            (16_384, 16_384 + 4_096, 4_096),
            (65_536, 65_536, 16_384),
            (262_144, 262_144, 65_536),
        ] {
            let buf = data((LANES - 1) * stride + len.max(64), len as u64 + 7);
            let mut h = fresh.clone();
            let mut done = 0;
            while done < len {
                let n = chunk.min(len - done);
                h.update(&buf[done..], stride, n);
                done += n;
            }
            let got = h.finalize();
            for (lane, digest) in got.iter().enumerate() {
                let want: [u8; 20] = Sha1::digest(&buf[lane * stride..lane * stride + len]).into();
                assert_eq!(*digest, want, "len {len} stride {stride} lane {lane}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "whole 64-byte blocks")]
    fn partial_blocks_are_refused() {
        match Sha1x16::new() {
            Some(mut h) => h.update(&[0u8; 64 * 16], 64, 32),
            None => panic!("whole 64-byte blocks (no AVX-512 here: same message)"),
        }
    }

    #[test]
    #[should_panic(expected = "sixteen lanes")]
    fn short_input_is_refused() {
        match Sha1x16::new() {
            Some(mut h) => h.update(&[0u8; 64 * 15], 64, 64),
            None => panic!("sixteen lanes (no AVX-512 here: same message)"),
        }
    }

    #[test]
    fn open_states_match_sha1_crate_alone_and_in_lanes() {
        // Alone: whole blocks then a tail of every length class around the padding edge.
        for &(blocks, tail) in &[
            (0usize, 0usize),
            (0, 3),
            (1, 55),
            (1, 56),
            (2, 63),
            (256, 0),
            (3, 64),
        ] {
            let buf = data(blocks * 64 + tail, (blocks * 7 + tail) as u64);
            let mut st = Sha1State::new();
            st.update(&buf[..blocks * 64]);
            let got = st.finish(&buf[blocks * 64..]);
            let want: [u8; 20] = Sha1::digest(&buf).into();
            assert_eq!(got, want, "{blocks} blocks + {tail}");
        }
        // Sixteen messages of different lengths (with AVX-512 in one pass, else the portable
        // path): lanes advance together by 16 KiB blocks, some lanes idle with a dummy, each
        // finishing alone with its own tail.
        let msgs: Vec<Vec<u8>> = (0..LANES)
            .map(|i| data(16_384 * (1 + i % 4) + i * 5, i as u64 + 1))
            .collect();
        let mut states = [Sha1State::new(); LANES];
        let dummy = vec![0u8; 16_384];
        for step in 0..4 {
            let lanes: [&[u8]; LANES] = std::array::from_fn(|i| {
                let m = &msgs[i];
                if (step + 1) * 16_384 <= m.len() - m.len() % 16_384 && step < 1 + i % 4 {
                    &m[step * 16_384..(step + 1) * 16_384]
                } else {
                    &dummy[..]
                }
            });
            let mut next = states;
            compress_lanes(&mut next, &lanes);
            for i in 0..LANES {
                if step < 1 + i % 4 {
                    states[i] = next[i];
                }
            }
        }
        for (i, st) in states.iter().enumerate() {
            let m = &msgs[i];
            let done = st.len() as usize;
            let got = st.finish(&m[done..]);
            let want: [u8; 20] = Sha1::digest(m).into();
            assert_eq!(got, want, "lane {i}");
        }
    }

    /// The portable path (the one a CPU without AVX-512 takes) agrees with the dispatching one.
    #[test]
    fn portable_lanes_agree() {
        let bufs: Vec<Vec<u8>> = (0..LANES).map(|i| data(4096, i as u64 + 99)).collect();
        let lanes: [&[u8]; LANES] = std::array::from_fn(|i| &bufs[i][..]);
        let mut a = [Sha1State::new(); LANES];
        let mut b = a;
        compress_lanes(&mut a, &lanes);
        compress_lanes_portable(&mut b, &lanes);
        assert_eq!(a, b);
        for (i, st) in a.iter().enumerate() {
            let want: [u8; 20] = Sha1::digest(&bufs[i]).into();
            assert_eq!(st.finish(&[]), want, "lane {i}");
        }
    }

    #[test]
    #[should_panic(expected = "same length")]
    fn lanes_of_different_lengths_are_refused() {
        let a = [0u8; 128];
        let mut lanes: [&[u8]; LANES] = [&a[..64]; LANES];
        lanes[3] = &a[..128];
        compress_lanes(&mut [Sha1State::new(); LANES], &lanes);
    }
}

//! A HyperLogLog sketch for `distinct()` past its exact limit: one flat allocation of 2^12
//! one-byte registers, written here where Apache DataSketches' `HllSketch` served before.
//!
//! Why not the library's sketch (measured, see the README's performance section): updating
//! sketches was the largest single cost of the steady hour (17% of its time), and the mix ran
//! 12% (first hour) to 30% (steady hour) faster with the updates left out. The library's
//! sketch keeps its registers behind two pointers (the boxed sketch, then its register
//! vector) and passes through a hash-set mode between 8 and 384 values, where each insert
//! probes a table; its union copies the registers three times. Here a sketch is one box, the
//! registers dense from the first value on (the exact set before it already covers small
//! counts), an insert one load and a compare, a merge a byte-wise maximum, and the register an
//! event will touch can be prefetched ([`Hll::prefetch`]).
//!
//! A sketch takes 4,232 bytes from its first value on (its registers, their histogram and the
//! kept estimate), where the library's took 1-2 KiB in its set mode (up to 384 values);
//! sketches start past 128 exact values, so few keys hold one.
//!
//! What stays the library's, so that the registers are the same:
//! - **the hash**: a value's register and rank come from DataSketches' own coupon
//!   ([`Coupon::from_value`], MurmurHash3 with its seed), so a sketch here holds exactly the
//!   registers a library sketch of the same values holds. The values are 64-bit hashes with
//!   the engine's sketch seed mixed in (`CoreConfig::sketch_seed`), so that nobody can work
//!   out offline which register a value raises;
//! - **the serialized form**: DataSketches' HLL_8 image, which any DataSketches
//!   implementation reads, and checkpoints written with the library's sketches (in any of its
//!   list, set or HLL_8 modes) load into this one. Tests hold both directions to the library.
//!
//! The estimate is Ertl's improved raw estimator ("New cardinality estimation algorithms for
//! HyperLogLog sketches", 2017, algorithm 6) over a histogram of register values kept as the
//! registers change: unbiased across the whole range without the bias tables of the
//! library's composite estimator, with the same standard error, 1.04/sqrt(4096) = 1.6%.

use datasketches::hll::{Coupon, HllSketch};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// log2 of the number of registers.
pub const LG_K: u8 = 12;
/// Registers.
const K: usize = 1 << LG_K;
/// Largest register value: DataSketches caps a coupon's value at 63 (leading zeros of a 64-bit
/// word, at most 62, plus one).
const MAX_VALUE: usize = 63;

/// A HyperLogLog sketch of 2^[`LG_K`] registers (see the module docs).
pub struct Hll {
    /// `hist[v]`: registers holding value `v` (`hist[0]`: empty registers).
    hist: [u16; MAX_VALUE + 1],
    regs: [u8; K],
    /// The last [`Hll::estimate`], NaN when a register has changed since. A busy key's window
    /// sketch is read on every batch that touches it, and a value already seen raises no
    /// register, so the estimate (about 340 instructions) is often the one before: 3.1M of
    /// the 5.2M estimates of the throughput mix. An `f64`'s bits in an atomic rather than a
    /// `Cell`, so that a sketch can be read from several threads (a checkpoint encodes large
    /// tables in parallel); relaxed loads and stores are plain moves on x86-64 and aarch64.
    estimate: AtomicU64,
}

/// [`Hll::estimate`]'s bits when no estimate is kept.
const NO_ESTIMATE: u64 = 0x7ff8_0000_0000_0000;

impl Clone for Hll {
    fn clone(&self) -> Self {
        Self {
            hist: self.hist,
            regs: self.regs,
            estimate: AtomicU64::new(self.estimate.load(Ordering::Relaxed)),
        }
    }
}

/// Sketches are equal when their registers are: the kept estimate follows from them.
impl PartialEq for Hll {
    fn eq(&self, other: &Self) -> bool {
        self.regs == other.regs
    }
}

impl Eq for Hll {}

impl std::fmt::Debug for Hll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hll")
            .field("estimate", &self.estimate())
            .finish_non_exhaustive()
    }
}

impl Default for Hll {
    fn default() -> Self {
        let mut hist = [0; MAX_VALUE + 1];
        hist[0] = K as u16;
        Self {
            hist,
            regs: [0; K],
            estimate: AtomicU64::new(NO_ESTIMATE),
        }
    }
}

/// Takes the 32 bits of a [`Coupon`], which the library keeps private: it derives `Hash` for
/// the coupon, which writes them. The tests comparing registers with the library's would
/// fail if that changed.
#[derive(Default)]
struct CouponBits(u32);

impl Hasher for CouponBits {
    fn finish(&self) -> u64 {
        u64::from(self.0)
    }
    fn write(&mut self, bytes: &[u8]) {
        if let Ok(b) = <[u8; 4]>::try_from(bytes) {
            self.0 = u32::from_ne_bytes(b);
        }
    }
    fn write_u32(&mut self, i: u32) {
        self.0 = i;
    }
}

/// The register and value DataSketches gives the 64-bit hash `h` of a value: the low 26 bits
/// of a coupon address a register (of which a sketch of 2^k registers takes the low k), the
/// top six are the value. Worked out once, it serves every sketch the value goes into
/// ([`Hll::raise`]).
#[inline]
pub fn coupon(h: u64) -> (usize, u8) {
    coupon_parts(coupon_bits(Coupon::from_value(h)))
}

fn coupon_bits(c: Coupon) -> u32 {
    let mut bits = CouponBits::default();
    c.hash(&mut bits);
    bits.0
}

fn coupon_parts(bits: u32) -> (usize, u8) {
    (bits as usize & (K - 1), (bits >> 26) as u8)
}

impl Hll {
    /// Adds a value by its 64-bit hash.
    #[inline]
    pub fn insert(&mut self, h: u64) {
        let (slot, value) = coupon(h);
        self.raise(slot, value);
    }

    /// Adds a value by its [`coupon`].
    #[inline]
    pub fn raise(&mut self, slot: usize, value: u8) {
        let Some(r) = self.regs.get_mut(slot) else {
            return;
        };
        if value > *r {
            *self.estimate.get_mut() = NO_ESTIMATE;
            let old = std::mem::replace(r, value);
            if let Some(c) = self.hist.get_mut(old as usize) {
                *c -= 1;
            }
            if let Some(c) = self.hist.get_mut(value as usize) {
                *c += 1;
            }
        }
    }

    /// Starts loading register `slot` (of a value's [`coupon`]).
    #[inline]
    pub fn prefetch(&self, slot: usize) {
        crate::prefetch::prefetch(self.regs.as_ptr().wrapping_add(slot));
    }

    /// Merges `other` in: the register-wise maximum, which is the sketch of both inputs.
    pub fn merge(&mut self, other: &Hll) {
        self.merge_all(std::iter::once(other));
    }

    /// Merges every sketch of `others` in, counting the registers' values once at the end.
    pub fn merge_all<'a>(&mut self, others: impl Iterator<Item = &'a Hll>) {
        for other in others {
            for (a, b) in self.regs.iter_mut().zip(other.regs.iter()) {
                *a = (*a).max(*b);
            }
        }
        self.recount();
    }

    /// Recomputes the histogram from the registers: four partial histograms in turn, so that
    /// consecutive registers of one value do not each wait for the last one's count.
    fn recount(&mut self) {
        *self.estimate.get_mut() = NO_ESTIMATE;
        let mut partial = [[0u16; MAX_VALUE + 1]; 4];
        for regs in self.regs.chunks_exact(4) {
            for (h, r) in partial.iter_mut().zip(regs) {
                // Registers hold at most 63 (`raise` and `from_bytes` see to it).
                h[*r as usize & MAX_VALUE] += 1;
            }
        }
        for (v, c) in self.hist.iter_mut().enumerate() {
            *c = partial.iter().map(|h| h[v]).sum();
        }
    }

    /// Whether no value has been added.
    pub fn is_empty(&self) -> bool {
        self.hist[0] as usize == K
    }

    /// The estimated number of distinct values (Ertl's improved raw estimator, see the
    /// module docs); worked out again only when a register has changed since the last call.
    pub fn estimate(&self) -> f64 {
        let kept = f64::from_bits(self.estimate.load(Ordering::Relaxed));
        if !kept.is_nan() {
            return kept;
        }
        let e = self.compute_estimate();
        self.estimate.store(e.to_bits(), Ordering::Relaxed);
        e
    }

    fn compute_estimate(&self) -> f64 {
        let m = K as f64;
        let c = |v: usize| f64::from(self.hist[v]);
        let q = MAX_VALUE - 1;
        let mut z = m * tau(1.0 - c(q + 1) / m);
        // With no register at q + 1 (nearly always) z is 0 down to the highest value held, so
        // the halving starts there: the same result, in a third of the steps or fewer.
        let top = if self.hist[q + 1] == 0 {
            (1..=q).rev().find(|k| self.hist[*k] != 0).unwrap_or(0)
        } else {
            q
        };
        for k in (1..=top).rev() {
            z = 0.5 * (z + c(k));
        }
        z += m * sigma(c(0) / m);
        if z.is_infinite() {
            return 0.0;
        }
        m * m / (2.0 * std::f64::consts::LN_2 * z)
    }

    /// DataSketches' serialized HLL_8 image of the sketch (40-byte preamble, then the
    /// registers), which DataSketches implementations read. Marked out of order: there is no
    /// HIP history, so readers take their composite estimate.
    pub fn to_bytes(&self) -> Vec<u8> {
        const HLL_PREINTS: u8 = 10;
        const SERIAL_VERSION: u8 = 1;
        const FAMILY_HLL: u8 = 7;
        const OUT_OF_ORDER: u8 = 16;
        const MODE_HLL_TARGET_HLL8: u8 = 2 | (2 << 2);
        let (mut kxq0, mut kxq1) = (0.0, 0.0);
        for (v, n) in self.hist.iter().enumerate() {
            let x = f64::from(*n) * (-(v as f64)).exp2();
            if v < 32 {
                kxq0 += x;
            } else {
                kxq1 += x;
            }
        }
        let mut out = Vec::with_capacity(40 + K);
        out.extend_from_slice(&[
            HLL_PREINTS,
            SERIAL_VERSION,
            FAMILY_HLL,
            LG_K,
            0,
            OUT_OF_ORDER,
            0,
            MODE_HLL_TARGET_HLL8,
        ]);
        out.extend_from_slice(&0f64.to_le_bytes());
        out.extend_from_slice(&kxq0.to_le_bytes());
        out.extend_from_slice(&kxq1.to_le_bytes());
        out.extend_from_slice(&u32::from(self.hist[0]).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&self.regs);
        out
    }

    /// Reads a DataSketches HLL image with 2^[`LG_K`] registers: this sketch's own
    /// ([`Hll::to_bytes`]) or one the library wrote in its list, set or HLL_8 mode (checkpoints
    /// from before this sketch). The library validates the image first.
    pub fn from_bytes(bytes: &[u8]) -> Result<Hll, String> {
        HllSketch::deserialize(bytes).map_err(|e| e.to_string())?;
        let (lg_k, mode) = match bytes {
            [_, _, _, lg_k, _, _, _, mode, ..] => (*lg_k, *mode),
            _ => return Err("HLL image shorter than its header".into()),
        };
        if lg_k != LG_K {
            return Err(format!(
                "HLL image with lg_k {lg_k}; this engine's sketches have {LG_K}"
            ));
        }
        let mut s = Hll::default();
        let words = |from: usize| {
            bytes
                .get(from..)
                .unwrap_or_default()
                .chunks_exact(4)
                .filter_map(|w| <[u8; 4]>::try_from(w).ok().map(u32::from_le_bytes))
                .filter(|w| *w != 0)
        };
        match (mode & 3, (mode >> 2) & 3) {
            // List and set modes: coupons after an 8- or 12-byte preamble (empty entries of an
            // updatable image are zero).
            (mode @ (0 | 1), _) => words(if mode == 0 { 8 } else { 12 }).for_each(|w| {
                let (slot, value) = coupon_parts(w);
                s.raise(slot, value)
            }),
            (2, 2) => {
                let regs = bytes
                    .get(40..40 + K)
                    .ok_or("HLL_8 image shorter than its registers")?;
                s.regs.copy_from_slice(regs);
                if s.regs.iter().any(|r| *r as usize > MAX_VALUE) {
                    return Err("HLL_8 register above 63".into());
                }
                s.recount();
            }
            (_, t) => {
                return Err(format!(
                    "HLL image of target type {t}; this engine reads HLL_8 (2)"
                ));
            }
        }
        Ok(s)
    }
}

/// Ertl's sigma(x) = x + sum over k >= 1 of x^(2^k) 2^(k-1).
fn sigma(mut x: f64) -> f64 {
    if x == 1.0 {
        return f64::INFINITY;
    }
    let (mut y, mut z) = (1.0, x);
    loop {
        x *= x;
        let before = z;
        z += x * y;
        y += y;
        if z == before {
            return z;
        }
    }
}

/// Ertl's tau(x) = (1 - x - sum over k >= 1 of (1 - x^(2^-k))^2 2^-k) / 3.
fn tau(mut x: f64) -> f64 {
    if x == 0.0 || x == 1.0 {
        return 0.0;
    }
    let (mut y, mut z) = (1.0, 1.0 - x);
    loop {
        x = x.sqrt();
        let before = z;
        y *= 0.5;
        z -= (1.0 - x).powi(2) * y;
        if z == before {
            return z / 3.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datasketches::hll::HllType;
    use xxhash_rust::xxh3::xxh3_64;

    fn h(i: u64) -> u64 {
        xxh3_64(&i.to_le_bytes())
    }

    fn library(values: impl Iterator<Item = u64>) -> HllSketch {
        let mut s = HllSketch::new(LG_K, HllType::Hll8).expect("valid lg_k");
        values.for_each(|v| s.update(v));
        s
    }

    fn ours(values: impl Iterator<Item = u64>) -> Hll {
        let mut s = Hll::default();
        values.for_each(|v| s.insert(v));
        s
    }

    #[test]
    fn holds_the_registers_a_library_sketch_of_the_same_values_holds() {
        // 5 values stay in the library's list mode, 200 in its set mode, 5,000 fill its
        // HLL_8 registers: every form an old checkpoint can hold.
        for n in [1u64, 5, 200, 5_000, 100_000] {
            let values = || (0..n).map(h);
            let lib = library(values());
            let from_lib = Hll::from_bytes(&lib.serialize()).expect("library image");
            let direct = ours(values());
            assert!(from_lib == direct, "{n} values: registers differ");
            // And the library reads ours back to the same registers: its estimate from our
            // image equals its estimate from its own sketch made out of order (a union).
            let back = HllSketch::deserialize(&direct.to_bytes()).expect("our image");
            let mut u = datasketches::hll::HllUnion::new(LG_K).expect("valid lg_k");
            u.update(&lib);
            u.update(&HllSketch::new(LG_K, HllType::Hll8).expect("valid lg_k"));
            let lib_ooo = u.to_sketch(HllType::Hll8);
            if n >= 5_000 {
                assert_eq!(
                    back.composite_estimate(),
                    lib_ooo.composite_estimate(),
                    "{n} values"
                );
            }
            assert_eq!(Hll::from_bytes(&direct.to_bytes()), Ok(direct));
        }
    }

    #[test]
    fn estimates_within_three_standard_errors_across_the_range() {
        // Standard error 1.04/64 = 1.6%; three of them, and small counts nearly exact.
        let mut s = Hll::default();
        let mut n = 0u64;
        for target in [
            1u64, 10, 100, 129, 500, 1_000, 3_000, 5_000, 10_000, 30_000, 100_000, 1_000_000,
        ] {
            while n < target {
                s.insert(h(n + 7_000_000));
                n += 1;
            }
            let e = s.estimate();
            let err = (e - n as f64).abs() / n as f64;
            let bound = if n <= 500 { 0.02 } else { 0.049 };
            assert!(
                err <= bound,
                "{n} values estimated {e:.1} ({:.2}%)",
                err * 100.0
            );
        }
        assert_eq!(Hll::default().estimate(), 0.0);
    }

    #[test]
    fn the_estimate_and_the_histogram_match_their_definitions() {
        for n in [0u64, 1, 200, 5_000, 1_000_000] {
            let s = ours((0..n).map(h));
            // The histogram kept as registers rise equals one counted from them.
            let mut recounted = s.clone();
            recounted.recount();
            assert!(recounted.hist == s.hist, "{n} values");
            let mut direct = [0u16; MAX_VALUE + 1];
            s.regs.iter().for_each(|r| direct[*r as usize] += 1);
            assert!(direct == s.hist, "{n} values");
            // The estimate's shortcut gives the full recurrence's result bit for bit.
            let m = K as f64;
            let q = MAX_VALUE - 1;
            let mut z = m * tau(1.0 - f64::from(s.hist[q + 1]) / m);
            for k in (1..=q).rev() {
                z = 0.5 * (z + f64::from(s.hist[k]));
            }
            z += m * sigma(f64::from(s.hist[0]) / m);
            let full = if z.is_infinite() {
                0.0
            } else {
                m * m / (2.0 * std::f64::consts::LN_2 * z)
            };
            assert_eq!(s.estimate().to_bits(), full.to_bits(), "{n} values");
        }
    }

    #[test]
    fn a_merge_is_the_sketch_of_both_inputs() {
        let a = ours((0..3_000).map(h));
        let b = ours((2_000..9_000).map(h));
        let mut m = a.clone();
        m.merge(&b);
        assert!(m == ours((0..9_000).map(h)));
        let mut e = Hll::default();
        e.merge(&a);
        assert!(e == a && !e.is_empty() && Hll::default().is_empty());
    }

    #[test]
    fn refuses_images_it_cannot_read() {
        let other_k = HllSketch::new(10, HllType::Hll8)
            .expect("valid")
            .serialize();
        assert!(Hll::from_bytes(&other_k).is_err_and(|e| e.contains("lg_k 10")));
        let mut hll4 = HllSketch::new(LG_K, HllType::Hll4).expect("valid");
        (0..5_000).for_each(|i| hll4.update(h(i)));
        assert!(Hll::from_bytes(&hll4.serialize()).is_err_and(|e| e.contains("target type 0")));
        assert!(Hll::from_bytes(&[1, 2, 3]).is_err());
        let mut bad = ours((0..10).map(h)).to_bytes();
        bad.truncate(100);
        assert!(Hll::from_bytes(&bad).is_err());
    }

    #[test]
    fn a_kept_estimate_follows_every_change_of_the_registers() {
        // Each estimate is compared with a sketch's first one, which no earlier call kept.
        let fresh = |values: &mut dyn Iterator<Item = u64>| ours(values.map(h)).estimate();
        let mut s = ours((0..1_000).map(h));
        let first = s.estimate();
        assert_eq!(s.estimate(), first, "read twice");
        (0..1_000).for_each(|i| s.insert(h(i)));
        assert_eq!(s.estimate(), first, "values seen before change nothing");
        (1_000..2_000).for_each(|i| s.insert(h(i)));
        let grown = s.estimate();
        assert_eq!(grown, fresh(&mut (0..2_000)));
        assert!(grown > first * 1.5, "{first} then {grown}");
        let mut m = ours((5_000..9_000).map(h));
        let alone = m.estimate();
        m.merge(&s);
        assert_eq!(m.estimate(), fresh(&mut (0..2_000).chain(5_000..9_000)));
        assert!(m.estimate() > alone, "{alone} then {}", m.estimate());
        let read = Hll::from_bytes(&m.to_bytes()).expect("own image");
        assert_eq!(read.estimate(), m.estimate());
    }
}

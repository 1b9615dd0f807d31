//! Resemblance sketches: a few numbers per chunk that similar chunks share, so that a new
//! chunk can find a delta base among the tenant's chunks wherever its content came from
//! (a file that moved inside an archive, a document copied into a new artifact), not only
//! at the same place in the previous version.
//!
//! The method is the feature sketch of content-defined delta compression: a rolling hash
//! runs over the chunk; a few independent linear transforms of it each keep their maximum
//! over the chunk's sampled positions (a *feature*: the maximum comes from one 64-byte
//! window, so an edit changes a feature only when it touches that window, and two chunks
//! share a feature when they share the window it came from). A stored chunk sharing a
//! feature with a new one is only a candidate: the delta is encoded and kept when it pays.
//!
//! Measured on the BMAD release series (every new chunk of the 24 tars against everything
//! stored before it, the best of the position candidate and the resemblance candidates):
//! three super-features of four features each (the usual grouping, which finds near-copies
//! only) stored 2.77 MB; six of two, 2.30 MB; four single features, 2.21 MB; eight, 2.14 MB.
//! Four single features keep most of the gain for four indexed columns. Sampling one
//! position in 16 stores the same as one in 8 at half the hashing.
//!
//! Features are keyed with the tenant's chunk-id key, as chunk ids are: the catalog never
//! holds a fingerprint that would confirm a known document without that key.

use super::chunk::TenantKey;

/// How many features a sketch has.
pub const FEATURES: usize = 4;

/// Chunks shorter than this get no sketch: too few windows for stable features, and their
/// own encoding is small anyway.
pub const MIN_LEN: usize = 256;

/// A rolling position is sampled when the top bits of its hash are zero: one position in
/// 2^SAMPLE_BITS, chosen by content, so an edit does not move the samples around it.
const SAMPLE_BITS: u32 = 4;

/// A chunk's features, keyed (equal values in one slot mean the same feature).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sketch(pub [i64; FEATURES]);

impl Sketch {
    /// How many features two sketches share.
    pub fn shared(&self, other: &Sketch) -> usize {
        self.0.iter().zip(other.0.iter()).filter(|(a, b)| a == b).count()
    }
}

const fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The rolling hash's byte table (a gear hash: each byte's value shifts out after 64 bytes).
const GEAR: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = splitmix(0x6172_7469_6661_6374 ^ i as u64);
        i += 1;
    }
    table
};

/// The features' transforms `m * h + a` (odd multipliers: each a permutation of u64).
const TRANSFORMS: [(u64, u64); FEATURES] = {
    let mut table = [(0u64, 0u64); FEATURES];
    let mut i = 0;
    while i < FEATURES {
        table[i] = (
            splitmix(0x7265_7365_6d62_6c65 ^ (2 * i as u64)) | 1,
            splitmix(0x7265_7365_6d62_6c65 ^ (2 * i as u64 + 1)),
        );
        i += 1;
    }
    table
};

/// The sketch of `data` under `key`; `None` for chunks too short to sketch.
pub fn sketch(key: &TenantKey, data: &[u8]) -> Option<Sketch> {
    if data.len() < MIN_LEN {
        return None;
    }
    let mut features = [0u64; FEATURES];
    let mut hash = 0u64;
    let mut sampled = false;
    for &byte in data {
        hash = (hash << 1).wrapping_add(GEAR[byte as usize]);
        if hash >> (64 - SAMPLE_BITS) != 0 {
            continue;
        }
        sampled = true;
        for (feature, (multiplier, addend)) in features.iter_mut().zip(TRANSFORMS.iter()) {
            *feature = (*feature).max(hash.wrapping_mul(*multiplier).wrapping_add(*addend));
        }
    }
    if !sampled {
        return None;
    }
    let mut keyed = [0i64; FEATURES];
    for (slot, feature) in features.iter().enumerate() {
        let mut input = [0u8; 9];
        input[0] = slot as u8;
        input[1..].copy_from_slice(&feature.to_le_bytes());
        let digest = key.resemblance_hash(&input);
        keyed[slot] = i64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
    }
    Some(Sketch(keyed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TenantKey {
        TenantKey::derive(&[7; 32], "tenant")
    }

    /// Pseudo-random text-like content (words from a small vocabulary).
    fn text(seed: u64, len: usize) -> Vec<u8> {
        let words = [
            "artifact",
            "version",
            "story",
            "epic",
            "the",
            "of",
            "review",
            "approved",
            "a",
            "draft",
            "agent",
            "workflow",
            "and",
            "requirement",
            "architecture",
            "to",
        ];
        let mut out = Vec::with_capacity(len + 16);
        let mut state = seed;
        while out.len() < len {
            state = splitmix(state);
            out.extend_from_slice(words[(state % words.len() as u64) as usize].as_bytes());
            out.push(if state.is_multiple_of(13) { b'\n' } else { b' ' });
        }
        out.truncate(len);
        out
    }

    #[test]
    fn equal_content_has_equal_sketches_and_short_content_none() {
        let data = text(1, 8192);
        assert_eq!(sketch(&key(), &data), sketch(&key(), &data.clone()));
        assert!(sketch(&key(), &data).is_some());
        assert_eq!(sketch(&key(), &data[..MIN_LEN - 1]), None);
    }

    #[test]
    fn local_edits_keep_features_and_unrelated_content_shares_none() {
        let mut similar = 0;
        let mut unrelated_shared = 0;
        let trials = 200u64;
        for trial in 0..trials {
            let original = text(trial, 16 * 1024);
            // A paragraph inserted somewhere, and a few bytes changed elsewhere.
            let mut edited = original.clone();
            let at = (splitmix(trial) % 16_000) as usize;
            edited.splice(at..at, text(trial + 10_000, 300));
            let change = (splitmix(trial + 1) % 16_000) as usize;
            edited[change] ^= 0x20;
            let a = sketch(&key(), &original).unwrap();
            let b = sketch(&key(), &edited).unwrap();
            if a.shared(&b) >= FEATURES / 2 {
                similar += 1;
            }
            let other = sketch(&key(), &text(trial + 50_000, 16 * 1024)).unwrap();
            unrelated_shared += a.shared(&other);
        }
        assert!(
            similar >= trials * 9 / 10,
            "only {similar} of {trials} edits kept half the features"
        );
        assert_eq!(unrelated_shared, 0, "unrelated chunks shared features");
    }

    #[test]
    fn content_moved_into_another_chunk_is_found() {
        let trials = 100u64;
        let mut found = 0;
        for trial in 0..trials {
            // A quarter new, then the first three quarters of an earlier chunk: what a
            // chunk of an archive looks like after a file before it grew.
            let earlier = text(trial, 16 * 1024);
            let mut moved = text(trial + 20_000, 4 * 1024);
            moved.extend_from_slice(&earlier[..12 * 1024]);
            if sketch(&key(), &earlier)
                .unwrap()
                .shared(&sketch(&key(), &moved).unwrap())
                > 0
            {
                found += 1;
            }
        }
        assert!(
            found >= trials * 8 / 10,
            "only {found} of {trials} moved chunks were found"
        );
    }

    #[test]
    fn sketches_depend_on_the_tenant_key() {
        let data = text(3, 8192);
        let other = TenantKey::derive(&[7; 32], "another tenant");
        let (a, b) = (sketch(&key(), &data).unwrap(), sketch(&other, &data).unwrap());
        assert_eq!(a.shared(&b), 0);
    }
}

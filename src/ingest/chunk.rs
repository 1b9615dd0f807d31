//! Chunk identity and encoding. A chunk id is a blake3 hash keyed per tenant: equal content
//! deduplicates inside a tenant, and ids reveal nothing across tenants.

use bytes::Bytes;
use std::cell::RefCell;
use std::fmt;

/// Identifies a chunk's content within one tenant.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        Some(Self(bytes.try_into().ok()?))
    }

    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    pub fn from_hex(text: &str) -> Option<Self> {
        blake3::Hash::from_hex(text)
            .ok()
            .map(|hash| Self(*hash.as_bytes()))
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..16])
    }
}

/// The key that chunk ids of one tenant are computed with, derived from the service's
/// secret so that it never has to be stored per tenant.
#[derive(Clone)]
pub struct TenantKey([u8; 32]);

impl TenantKey {
    pub fn derive(service_secret: &[u8; 32], tenant: &str) -> Self {
        let mut hasher = blake3::Hasher::new_keyed(service_secret);
        hasher.update(b"artifactd chunk id key v1\0");
        hasher.update(tenant.as_bytes());
        Self(*hasher.finalize().as_bytes())
    }

    pub fn chunk_id(&self, data: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.0, data).as_bytes())
    }

    /// A keyed hash of a resemblance sketch's features, separate from chunk ids.
    pub fn resemblance_hash(&self, features: &[u8]) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_keyed(&self.0);
        hasher.update(b"artifactd resemblance v1\0");
        hasher.update(features);
        *hasher.finalize().as_bytes()
    }
}

impl fmt::Debug for TenantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TenantKey(..)")
    }
}

/// How a chunk's bytes are stored inside a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Codec {
    Raw = 0,
    Zstd = 1,
    /// zstd with another chunk's plain content (the chunk's base, named in the pack's
    /// trailer and the chunk index) as a raw-content prefix: what is stored is the edit.
    ZstdDelta = 2,
}

impl Codec {
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Codec::Raw),
            1 => Some(Codec::Zstd),
            2 => Some(Codec::ZstdDelta),
            _ => None,
        }
    }
}

/// Compresses a chunk when that saves at least 1/32 of its size; otherwise keeps it raw so
/// that incompressible data costs no decompression on the way out.
pub fn encode(data: &Bytes, zstd_level: i32) -> (Codec, Bytes) {
    thread_local! {
        // A compression context costs more to set up than compressing a small chunk; keep one
        // per thread and level.
        static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    }
    if data.len() >= 64 {
        let compressed = COMPRESSOR.with_borrow_mut(|slot| {
            if slot.as_ref().is_none_or(|(level, _)| *level != zstd_level) {
                *slot = Some((zstd_level, zstd::bulk::Compressor::new(zstd_level).ok()?));
            }
            let (_, compressor) = slot.as_mut()?;
            compressor.compress(data).ok()
        });
        if let Some(compressed) = compressed
            && compressed.len() + data.len() / 32 < data.len()
        {
            return (Codec::Zstd, Bytes::from(compressed));
        }
    }
    (Codec::Raw, data.clone())
}

/// Decides, chunk by chunk, whether compressing is worth trying, from how the last tries
/// went: after [`Compressibility::GIVE_UP_AFTER`] chunks in a row that did not compress
/// (random data, media, archives), only every [`Compressibility::SAMPLE_EVERY`]th chunk is
/// tried, and one that compresses resumes trying every chunk. On incompressible content
/// this saves nearly all of the compressor's time; on content that turns compressible
/// again at most `SAMPLE_EVERY - 1` chunks are stored raw before it is noticed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Compressibility {
    misses: u32,
    skipped: u32,
}

impl Compressibility {
    pub const GIVE_UP_AFTER: u32 = 8;
    pub const SAMPLE_EVERY: u32 = 16;

    /// Whether to try compressing the next chunk; a `true` must be followed by
    /// [`record`](Self::record).
    pub fn worth_trying(&mut self) -> bool {
        if self.misses < Self::GIVE_UP_AFTER {
            return true;
        }
        self.skipped += 1;
        if self.skipped >= Self::SAMPLE_EVERY {
            self.skipped = 0;
            return true;
        }
        false
    }

    /// Whether the last tries failed often enough that only samples are tried now.
    pub fn giving_up(&self) -> bool {
        self.misses >= Self::GIVE_UP_AFTER
    }

    pub fn record(&mut self, compressed: bool) {
        if compressed {
            self.misses = 0;
            self.skipped = 0;
        } else {
            self.misses = self.misses.saturating_add(1);
        }
    }

    /// The state after runs that each started from this one and went side by side, as if
    /// they had gone one after the other: `tries` are their outcomes in order, and `last`
    /// the state the last run ended in (its place between samples).
    pub fn after_runs(self, tries: impl IntoIterator<Item = bool>, last: Self) -> Self {
        let mut state = self;
        for compressed in tries {
            state.record(compressed);
        }
        if state.misses >= Self::GIVE_UP_AFTER {
            state.skipped = last.skipped;
        }
        state
    }
}

/// Reverses [`encode`] and [`super::delta::encode`] (which needs the chunk's `base`).
/// `raw_len` comes from the catalog and bounds the output.
pub fn decode(codec: Codec, stored: &[u8], raw_len: usize, base: Option<&[u8]>) -> Result<Vec<u8>, String> {
    match codec {
        Codec::Raw => Ok(stored.to_vec()),
        Codec::ZstdDelta => {
            let base = base.ok_or("a delta-encoded chunk needs its base")?;
            let mut raw = vec![0u8; raw_len];
            let written = super::delta::decode_into(stored, base, &mut raw)?;
            if written != raw_len {
                return Err(format!("decompressed to {written} bytes, expected {raw_len}"));
            }
            Ok(raw)
        }
        Codec::Zstd => {
            let raw = zstd::bulk::decompress(stored, raw_len).map_err(|e| e.to_string())?;
            if raw.len() != raw_len {
                return Err(format!("decompressed to {} bytes, expected {raw_len}", raw.len()));
            }
            Ok(raw)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_ids_differ_across_tenants() {
        let secret = [7u8; 32];
        let a = TenantKey::derive(&secret, "acme");
        let b = TenantKey::derive(&secret, "globex");
        assert_eq!(a.chunk_id(b"same"), a.chunk_id(b"same"));
        assert_ne!(a.chunk_id(b"same"), b.chunk_id(b"same"));
    }

    #[test]
    fn encoding_round_trips_and_skips_incompressible_data() {
        let text = "the architecture document mentions sealed secrets. ".repeat(200);
        let (codec, stored) = encode(&Bytes::from(text.clone()), 3);
        assert_eq!(codec, Codec::Zstd);
        assert!(stored.len() < text.len() / 4);
        assert_eq!(decode(codec, &stored, text.len(), None).unwrap(), text.as_bytes());

        let mut noise = vec![0u8; 4096];
        blake3::Hasher::new().finalize_xof().fill(&mut noise);
        let (codec, stored) = encode(&Bytes::from(noise.clone()), 3);
        assert_eq!(codec, Codec::Raw);
        assert_eq!(&stored[..], &noise[..]);
    }

    #[test]
    fn compression_is_sampled_on_incompressible_content_and_resumes_when_it_pays() {
        let mut state = Compressibility::default();
        let mut tried = 0;
        for _ in 0..Compressibility::GIVE_UP_AFTER {
            assert!(state.worth_trying());
            state.record(false);
        }
        // 160 chunks of noise: one in SAMPLE_EVERY is tried.
        for _ in 0..160 {
            if state.worth_trying() {
                tried += 1;
                state.record(false);
            }
        }
        assert_eq!(tried, 160 / Compressibility::SAMPLE_EVERY);
        // Text again: the next sample compresses and every chunk is tried from then on.
        let mut skipped_before_noticing = 0;
        while !state.worth_trying() {
            skipped_before_noticing += 1;
        }
        state.record(true);
        assert!(skipped_before_noticing < Compressibility::SAMPLE_EVERY);
        assert!((0..50).all(|_| {
            let trying = state.worth_trying();
            state.record(true);
            trying
        }));
    }

    #[test]
    fn runs_side_by_side_leave_the_state_of_one_after_the_other() {
        let run = |start: Compressibility, outcomes: &[bool]| {
            let mut state = start;
            let mut tries = Vec::new();
            for &compressed in outcomes {
                if state.worth_trying() {
                    state.record(compressed);
                    tries.push(compressed);
                }
            }
            (tries, state)
        };
        let start = Compressibility::default();
        // Two runs of five misses each: neither gives up alone, one after the other would.
        let (a, _) = run(start, &[false; 5]);
        let (b, last) = run(start, &[false; 5]);
        assert!(!last.giving_up());
        let merged = start.after_runs(a.into_iter().chain(b), last);
        assert!(merged.giving_up());
        // A hit in the last run counts from there.
        let (a, _) = run(start, &[false; 7]);
        let (b, last) = run(start, &[false, true, false]);
        let merged = start.after_runs(a.into_iter().chain(b), last);
        assert!(!merged.giving_up());
        let (sequential, _) = run(merged, &[false; 7]);
        assert_eq!(sequential.len(), 7, "one miss so far: seven more are all tried");
        // Given up before, a run that found nothing leaves it given up, sampling on.
        let mut given_up = start;
        for _ in 0..Compressibility::GIVE_UP_AFTER {
            given_up.record(false);
        }
        let (a, _) = run(given_up, &[false; 40]);
        let (b, last) = run(given_up, &[false; 40]);
        let merged = given_up.after_runs(a.into_iter().chain(b), last);
        assert!(merged.giving_up());
        assert_eq!(merged.skipped, last.skipped);
    }
}

//! The chunks one upload stores itself: placed in the order it packs them, then given their
//! pack and final position when that pack is sealed. What the catalog indexes when the
//! upload commits, and what the upload dedups its own repeats against while it runs.
//!
//! An upload holds one of these for its whole content, so it is kept small: 64 bytes a chunk
//! plus a table of 4-byte positions (about 4.5 MiB for 1 GiB at the 16 KiB average chunk),
//! where a map from id to entry with the pack's name per chunk took about four times that.

use super::chunk::{ChunkId, Codec};
use super::pack::PackEntry;
use super::resemblance::Sketch;
use hashbrown::HashTable;
use std::sync::Arc;

#[derive(Debug, Clone, Copy)]
struct Placed {
    chunk_id: ChunkId,
    offset: u64,
    stored_len: u32,
    raw_len: u32,
    /// Index into `NewChunks::packs`; meaningful once sealed.
    pack: u32,
    /// Index into `NewChunks::bases` of a delta chunk's base, or [`NO_BASE`].
    base: u32,
    codec: Codec,
    /// How many bases decoding the chunk goes through (0: none).
    depth: u8,
    /// Index into `NewChunks::sketches`, or [`NONE`] (fits in the entry's padding).
    sketch: u32,
}

const NONE: u32 = u32::MAX;
const NO_BASE: u32 = NONE;

#[derive(Debug, Clone, Default)]
pub struct NewChunks {
    /// Each sealed pack's name, and what sealing added to each of its chunks (a tag).
    packs: Vec<(Arc<str>, u32)>,
    entries: Vec<Placed>,
    /// The bases of delta chunks (few: only chunks of an update that differ a little).
    bases: Vec<ChunkId>,
    /// The resemblance sketches of chunks that have one (compressible chunks long enough).
    sketches: Vec<Sketch>,
    /// Entries before this one are in sealed packs; later ones wait for the pack being filled.
    sealed: usize,
    /// Positions in `entries`, found by chunk id.
    by_id: HashTable<u32>,
}

/// Chunk ids are keyed blake3 digests: their first bytes are already a uniform hash, and
/// nobody without the tenant's key can choose them.
fn hash_of(id: &ChunkId) -> u64 {
    u64::from_le_bytes(id.0[..8].try_into().expect("8 bytes"))
}

impl NewChunks {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Where `id` was placed, if this upload placed it.
    pub fn find(&self, id: &ChunkId) -> Option<usize> {
        let entries = &self.entries;
        self.by_id
            .find(hash_of(id), |&at| entries[at as usize].chunk_id == *id)
            .map(|&at| at as usize)
    }

    /// Places a chunk this upload will store (once: a repeat is found by [`Self::find`]);
    /// its stored form is set by [`Self::set_encoded`] before its pack is sealed.
    pub fn place(&mut self, chunk_id: ChunkId, raw_len: u32) -> usize {
        debug_assert!(self.find(&chunk_id).is_none(), "a chunk is placed once");
        let at = self.entries.len();
        self.entries.push(Placed {
            chunk_id,
            offset: 0,
            stored_len: 0,
            raw_len,
            pack: 0,
            base: NO_BASE,
            codec: Codec::Raw,
            depth: 0,
            sketch: NONE,
        });
        let entries = &self.entries;
        self.by_id.insert_unique(hash_of(&chunk_id), at as u32, |&i| {
            hash_of(&entries[i as usize].chunk_id)
        });
        at
    }

    /// How the chunk at `at` is stored; `delta` is a delta chunk's base and its depth.
    pub fn set_encoded(&mut self, at: usize, codec: Codec, stored_len: u32, delta: Option<(ChunkId, u8)>) {
        let base = match delta {
            Some((base, _)) => {
                self.bases.push(base);
                (self.bases.len() - 1) as u32
            }
            None => NO_BASE,
        };
        let entry = &mut self.entries[at];
        entry.codec = codec;
        entry.stored_len = stored_len;
        entry.base = base;
        entry.depth = delta.map_or(0, |(_, depth)| depth);
    }

    /// The resemblance sketch of the chunk at `at`, for later chunks to find it as a base.
    pub fn set_sketch(&mut self, at: usize, sketch: Sketch) {
        self.sketches.push(sketch);
        self.entries[at].sketch = (self.sketches.len() - 1) as u32;
    }

    /// The stored length of the chunk at `at` as encoded (before any sealing tag), the
    /// same before and after its pack is sealed.
    pub fn stored_len(&self, at: usize) -> u64 {
        let entry = &self.entries[at];
        let sealing = if at < self.sealed {
            self.packs[entry.pack as usize].1
        } else {
            0
        };
        u64::from(entry.stored_len - sealing)
    }

    /// Records a sealed pack: its entries are the next placed chunks, in order.
    pub fn seal(&mut self, pack_id: Arc<str>, sealed: &[PackEntry]) {
        let pack = self.packs.len() as u32;
        let end = self.sealed + sealed.len();
        assert!(end <= self.entries.len(), "a pack holds only placed chunks");
        let sealing = match (self.entries.get(self.sealed), sealed.first()) {
            (Some(placed), Some(entry)) => entry.stored_len.saturating_sub(placed.stored_len),
            _ => 0,
        };
        self.packs.push((pack_id, sealing));
        for (placed, entry) in self.entries[self.sealed..end].iter_mut().zip(sealed) {
            assert_eq!(
                placed.chunk_id, entry.chunk_id,
                "packs hold chunks in placing order"
            );
            assert_eq!(
                entry.stored_len,
                placed.stored_len + sealing,
                "sealing adds the same to every chunk of a pack"
            );
            placed.pack = pack;
            placed.offset = entry.offset;
            placed.stored_len = entry.stored_len;
            placed.codec = entry.codec;
        }
        self.sealed = end;
    }

    /// Whether every placed chunk is in a sealed pack.
    pub fn all_sealed(&self) -> bool {
        self.sealed == self.entries.len()
    }

    /// Every chunk in a sealed pack, with its pack's name, its depth of deltas and its
    /// resemblance sketch.
    pub fn iter(&self) -> impl Iterator<Item = (&str, PackEntry, u8, Option<Sketch>)> + '_ {
        self.entries[..self.sealed].iter().map(|placed| {
            (
                self.packs[placed.pack as usize].0.as_ref(),
                PackEntry {
                    chunk_id: placed.chunk_id,
                    offset: placed.offset,
                    stored_len: placed.stored_len,
                    raw_len: placed.raw_len,
                    codec: placed.codec,
                    base: (placed.base != NO_BASE).then(|| self.bases[placed.base as usize]),
                },
                placed.depth,
                (placed.sketch != NONE).then(|| self.sketches[placed.sketch as usize]),
            )
        })
    }

    /// The bases of this upload's delta chunks: what its commit must find still stored.
    pub fn bases(&self) -> &[ChunkId] {
        &self.bases
    }
}

/// Chunks already in sealed packs (a run of entries with one pack's name is that pack).
impl FromIterator<(Arc<str>, PackEntry)> for NewChunks {
    fn from_iter<I: IntoIterator<Item = (Arc<str>, PackEntry)>>(sealed: I) -> Self {
        let mut chunks = NewChunks::default();
        let mut pack: Option<(Arc<str>, Vec<PackEntry>)> = None;
        for (name, entry) in sealed {
            if let Some((current, entries)) = pack.take_if(|(current, _)| *current != name) {
                chunks.seal(current, &entries);
            }
            let (_, entries) = pack.get_or_insert_with(|| (name, Vec::new()));
            let at = chunks.place(entry.chunk_id, entry.raw_len);
            chunks.set_encoded(
                at,
                entry.codec,
                entry.stored_len,
                entry.base.map(|base| (base, 1)),
            );
            entries.push(entry);
        }
        if let Some((current, entries)) = pack {
            chunks.seal(current, &entries);
        }
        chunks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ChunkId {
        let mut bytes = *blake3::hash(&[n]).as_bytes();
        // Two ids that share their first eight bytes still differ.
        if n >= 200 {
            bytes[..8].copy_from_slice(&blake3::hash(&[0]).as_bytes()[..8]);
        }
        ChunkId(bytes)
    }

    #[test]
    fn chunks_are_found_and_get_their_pack_when_sealed() {
        let mut chunks = NewChunks::default();
        let a = chunks.place(id(1), 100);
        let b = chunks.place(id(2), 200);
        let c = chunks.place(id(200), 300);
        assert_eq!(chunks.find(&id(1)), Some(a));
        assert_eq!(chunks.find(&id(200)), Some(c));
        assert_eq!(chunks.find(&id(0)), None, "same first bytes, another id");
        chunks.set_encoded(a, Codec::Zstd, 40, None);
        chunks.set_encoded(b, Codec::ZstdDelta, 200, Some((id(9), 3)));
        chunks.set_encoded(c, Codec::Raw, 300, None);
        chunks.set_sketch(b, Sketch([1, 2, 3, 4]));
        assert_eq!(chunks.bases(), &[id(9)]);
        assert_eq!(chunks.stored_len(a), 40);
        assert_eq!(chunks.iter().count(), 0, "nothing sealed yet");
        assert!(!chunks.all_sealed());

        let entry = |chunk_id, offset, stored_len, raw_len, codec| PackEntry {
            chunk_id,
            offset,
            stored_len,
            raw_len,
            codec,
            base: (codec == Codec::ZstdDelta).then(|| id(9)),
        };
        chunks.seal(
            Arc::from("pack-1"),
            &[
                entry(id(1), 0, 56, 100, Codec::Zstd),
                entry(id(2), 56, 216, 200, Codec::ZstdDelta),
            ],
        );
        assert_eq!(chunks.stored_len(a), 40, "as encoded, before and after sealing");
        assert_eq!(chunks.stored_len(c), 300);
        chunks.seal(Arc::from("pack-2"), &[entry(id(200), 0, 316, 300, Codec::Raw)]);
        assert_eq!(chunks.stored_len(c), 300);
        assert!(chunks.all_sealed());
        let indexed: Vec<(String, PackEntry, u8, Option<Sketch>)> = chunks
            .iter()
            .map(|(pack, e, depth, sketch)| (pack.to_owned(), e, depth, sketch))
            .collect();
        assert_eq!(
            indexed,
            vec![
                (
                    "pack-1".to_owned(),
                    entry(id(1), 0, 56, 100, Codec::Zstd),
                    0,
                    None
                ),
                (
                    "pack-1".to_owned(),
                    entry(id(2), 56, 216, 200, Codec::ZstdDelta),
                    3,
                    Some(Sketch([1, 2, 3, 4]))
                ),
                (
                    "pack-2".to_owned(),
                    entry(id(200), 0, 316, 300, Codec::Raw),
                    0,
                    None
                ),
            ]
        );
    }

    #[test]
    fn an_entry_stays_within_64_bytes() {
        assert!(std::mem::size_of::<Placed>() <= 64);
    }

    #[test]
    fn many_chunks_stay_findable() {
        let mut chunks = NewChunks::default();
        let ids: Vec<ChunkId> = (0..50_000u32)
            .map(|n| ChunkId(*blake3::hash(&n.to_le_bytes()).as_bytes()))
            .collect();
        for (n, id) in ids.iter().enumerate() {
            assert_eq!(chunks.place(*id, n as u32), n);
        }
        for (n, id) in ids.iter().enumerate() {
            assert_eq!(chunks.find(id), Some(n));
        }
        assert_eq!(chunks.find(&ChunkId([7; 32])), None);
    }
}

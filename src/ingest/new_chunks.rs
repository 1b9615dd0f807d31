//! The chunks one upload stores itself: placed in the order it packs them, then given their
//! pack and final position when that pack is sealed. What the catalog indexes when the
//! upload commits, and what the upload dedups its own repeats against while it runs.
//!
//! An upload holds one of these for its whole content, so what stays in memory is small:
//! chunks not yet in a sealed pack (at most the packs being filled and written), and for
//! every chunk about 1.3 bytes finding it by id (a 4-byte tag of its id and its position,
//! in sorted runs, the large ones on disk behind a filter: [`TagIndex`]). Sealed chunks go to a
//! [`Spill`] (an unnamed file once they outgrow a few KiB), where a tag match is confirmed
//! by reading the chunk's record.

use super::chunk::{ChunkId, Codec};
use super::pack::PackEntry;
use super::resemblance::{FEATURES, Sketch};
use super::spill::Spill;
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
    sketch: Option<Sketch>,
}

/// Bytes of a spilled chunk's record: id 32, offset 8, stored and raw length 4 each, pack
/// 4, base 4, codec 1, depth 1, whether a sketch follows 1, the sketch's features 8 each.
const RECORD_LEN: usize = 59 + 8 * FEATURES;

impl Placed {
    fn record(&self) -> [u8; RECORD_LEN] {
        let mut record = [0u8; RECORD_LEN];
        record[..32].copy_from_slice(&self.chunk_id.0);
        record[32..40].copy_from_slice(&self.offset.to_le_bytes());
        record[40..44].copy_from_slice(&self.stored_len.to_le_bytes());
        record[44..48].copy_from_slice(&self.raw_len.to_le_bytes());
        record[48..52].copy_from_slice(&self.pack.to_le_bytes());
        record[52..56].copy_from_slice(&self.base.to_le_bytes());
        record[56] = self.codec as u8;
        record[57] = self.depth;
        if let Some(sketch) = self.sketch {
            record[58] = 1;
            for (slot, feature) in sketch.0.iter().enumerate() {
                record[59 + 8 * slot..67 + 8 * slot].copy_from_slice(&feature.to_le_bytes());
            }
        }
        record
    }

    fn from_record(record: &[u8]) -> std::io::Result<Self> {
        let u32_at = |at: usize| u32::from_le_bytes(record[at..at + 4].try_into().expect("4 bytes"));
        let codec = Codec::from_u8(record[56]).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "a spilled chunk record has no codec",
            )
        })?;
        let sketch = (record[58] == 1).then(|| {
            Sketch(std::array::from_fn(|slot| {
                i64::from_le_bytes(record[59 + 8 * slot..67 + 8 * slot].try_into().expect("8 bytes"))
            }))
        });
        Ok(Self {
            chunk_id: ChunkId::from_slice(&record[..32]).expect("32 bytes"),
            offset: u64::from_le_bytes(record[32..40].try_into().expect("8 bytes")),
            stored_len: u32_at(40),
            raw_len: u32_at(44),
            pack: u32_at(48),
            base: u32_at(52),
            codec,
            depth: record[57],
            sketch,
        })
    }
}

const NO_BASE: u32 = u32::MAX;

/// Sealed chunks are spilled once this many wait in memory.
const SPILL_AFTER_ENTRIES: usize = 1024;

#[derive(Debug)]
pub struct NewChunks {
    /// Each sealed pack's name, and what sealing added to each of its chunks (a tag).
    packs: Vec<(Arc<str>, u32)>,
    /// Chunks `spilled..` in placing order; those before are in `spill`.
    entries: Vec<Placed>,
    spill: Spill,
    spilled: usize,
    /// The bases of delta chunks (few: only chunks of an update that differ a little).
    bases: Vec<ChunkId>,
    /// Chunks before this one are in sealed packs; later ones wait for the pack being filled.
    sealed: usize,
    /// Positions found by the tag of their id.
    by_id: TagIndex,
}

impl Default for NewChunks {
    fn default() -> Self {
        Self::new(std::env::temp_dir().join("artifactd-spill"))
    }
}

/// Chunk ids are keyed blake3 digests: their first bytes are already uniform, and nobody
/// without the tenant's key can choose them.
fn tag_of(id: &ChunkId) -> u32 {
    u32::from_le_bytes(id.0[..4].try_into().expect("4 bytes"))
}

/// Positions by a tag of their chunk's id: an unsorted tail of up to [`TAIL_ENTRIES`], then
/// sorted runs in memory, each at least twice as long as the next (runs of equal length are
/// merged), 8 bytes an entry; a run that reaches [`RUN_ON_DISK_ENTRIES`] goes to a file in
/// the spill directory, where only a filter and one tag per block of it stay in memory
/// (about 1.3 bytes an entry: 10 filter bits, and a tag per 512 entries). A lookup
/// scans the tail, binary-searches each run in memory, and reads a block of a run on disk
/// only when its filter lets the tag through (under 1% of the time for a tag it does not
/// hold). Measured before runs went to disk: 16 uploads of 3 GiB at once peaked at 216 MiB,
/// of which this index was about 25 MiB.
#[derive(Debug)]
struct TagIndex {
    runs: Vec<Vec<(u32, u32)>>,
    tail: Vec<(u32, u32)>,
    /// Every run on disk, one after the other: 8-byte (tag, position) records.
    on_disk: Spill,
    disk_runs: Vec<DiskRun>,
}

const TAIL_ENTRIES: usize = 1024;
/// Runs this long (128 KiB in memory) go to disk. Uploads of the same size running at the
/// same speed merge their runs at the same moments, so what each holds at its largest
/// adds up: at 65,536 entries, up to 1 MiB an upload with the run being merged, 16 MiB
/// for 16 uploads. Lookups check one more filter per run on disk (16 of them at 4 GiB of
/// 16 KiB chunks), in memory.
const RUN_ON_DISK_ENTRIES: usize = 16 * 1024;
/// Entries of a run on disk a lookup reads at once (4 KiB).
const BLOCK_ENTRIES: usize = 512;
/// Filter bits an entry, and probes a tag: about 1% of absent tags pass.
const FILTER_BITS_PER_ENTRY: usize = 10;
const FILTER_PROBES: u64 = 7;

/// A sorted run in `TagIndex::on_disk` from record `start`.
#[derive(Debug)]
struct DiskRun {
    start: u64,
    len: usize,
    /// The tag of each block's first entry.
    first_tags: Vec<u32>,
    /// A Bloom filter of the run's tags ([`FILTER_BITS_PER_ENTRY`] an entry, rounded up to
    /// whole words).
    filter: Vec<u64>,
}

/// The filter bits `tag` sets in a filter of `bits` bits (under 2^32): double hashing over
/// a 64-bit mix of the tag, each 32-bit probe scaled onto the filter by a multiply and a
/// shift, so the filter needs no power-of-two size (rounding up to one made it 16 bits an
/// entry for runs of 16,384, 3 MiB more for 16 uploads of 4 GiB).
fn probes(tag: u32, bits: usize) -> impl Iterator<Item = usize> {
    debug_assert!(bits > 0 && (bits as u64) < 1 << 32);
    let mut z = u64::from(tag).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let (first, step) = (z as u32, (z >> 32) as u32 | 1);
    (0..FILTER_PROBES as u32).map(move |i| {
        let probe = first.wrapping_add(i.wrapping_mul(step));
        ((u64::from(probe) * bits as u64) >> 32) as usize
    })
}

impl DiskRun {
    fn may_hold(&self, tag: u32) -> bool {
        let bits = self.filter.len() * 64;
        probes(tag, bits).all(|bit| self.filter[bit / 64] & (1 << (bit % 64)) != 0)
    }
}

impl TagIndex {
    fn new(dir: std::path::PathBuf) -> Self {
        Self {
            runs: Vec::new(),
            tail: Vec::new(),
            on_disk: Spill::new(dir, 8),
            disk_runs: Vec::new(),
        }
    }

    fn insert(&mut self, tag: u32, position: u32) -> std::io::Result<()> {
        self.tail.push((tag, position));
        if self.tail.len() < TAIL_ENTRIES {
            return Ok(());
        }
        let mut run = std::mem::take(&mut self.tail);
        run.sort_unstable();
        while self.runs.last().is_some_and(|last| last.len() <= run.len()) {
            let last = self.runs.pop().expect("a last run");
            run = merge(run, last);
        }
        if run.len() >= RUN_ON_DISK_ENTRIES {
            self.write_run(&run)?;
        } else {
            self.runs.push(run);
        }
        Ok(())
    }

    fn write_run(&mut self, run: &[(u32, u32)]) -> std::io::Result<()> {
        let bits = (run.len() * FILTER_BITS_PER_ENTRY).div_ceil(64).max(1) * 64;
        let mut filter = vec![0u64; bits / 64];
        let mut first_tags = Vec::with_capacity(run.len().div_ceil(BLOCK_ENTRIES));
        let start = self.on_disk.len();
        for (at, &(tag, position)) in run.iter().enumerate() {
            if at % BLOCK_ENTRIES == 0 {
                first_tags.push(tag);
            }
            for bit in probes(tag, bits) {
                filter[bit / 64] |= 1 << (bit % 64);
            }
            let mut record = [0u8; 8];
            record[..4].copy_from_slice(&tag.to_le_bytes());
            record[4..].copy_from_slice(&position.to_le_bytes());
            self.on_disk.push(&record)?;
        }
        self.disk_runs.push(DiskRun {
            start,
            len: run.len(),
            first_tags,
            filter,
        });
        Ok(())
    }

    /// The positions whose tag is `tag` (their ids may still differ).
    fn positions(&self, tag: u32) -> std::io::Result<Vec<u32>> {
        let mut found: Vec<u32> = self
            .tail
            .iter()
            .filter(|&&(t, _)| t == tag)
            .map(|&(_, position)| position)
            .collect();
        for run in &self.runs {
            let start = run.partition_point(|&(t, _)| t < tag);
            found.extend(
                run[start..]
                    .iter()
                    .take_while(|&&(t, _)| t == tag)
                    .map(|&(_, p)| p),
            );
        }
        let mut block = Vec::new();
        for run in self.disk_runs.iter().filter(|run| run.may_hold(tag)) {
            // Entries with the tag begin in the last block that starts below it.
            let mut at = run
                .first_tags
                .partition_point(|&first| first < tag)
                .saturating_sub(1);
            'blocks: while at < run.first_tags.len() && run.first_tags[at] <= tag {
                let first = at * BLOCK_ENTRIES;
                let count = BLOCK_ENTRIES.min(run.len - first);
                block.resize(count * 8, 0);
                self.on_disk.read_range(run.start + first as u64, &mut block)?;
                for entry in block.chunks_exact(8) {
                    let t = u32::from_le_bytes(entry[..4].try_into().expect("4 bytes"));
                    if t > tag {
                        break 'blocks;
                    }
                    if t == tag {
                        found.push(u32::from_le_bytes(entry[4..].try_into().expect("4 bytes")));
                    }
                }
                at += 1;
            }
        }
        Ok(found)
    }

    /// Entries held, wherever they are.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.tail.len()
            + self.runs.iter().map(Vec::len).sum::<usize>()
            + self.disk_runs.iter().map(|r| r.len).sum::<usize>()
    }
}

/// Merges sorted `b` into sorted `a`, in `a`'s own memory grown by `b`'s length (from the
/// back, so nothing is overwritten before it is moved): the merge needs no third buffer as
/// long as both, which at the last merge of a multi-GiB upload is megabytes an upload, at
/// about the same moment in uploads that run side by side.
fn merge(mut a: Vec<(u32, u32)>, b: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
    let (a_len, b_len) = (a.len(), b.len());
    a.reserve_exact(b_len);
    a.resize(a_len + b_len, (0, 0));
    let (mut i, mut j) = (a_len, b_len);
    for at in (0..a_len + b_len).rev() {
        if j == 0 {
            break;
        }
        if i > 0 && a[i - 1] > b[j - 1] {
            a[at] = a[i - 1];
            i -= 1;
        } else {
            a[at] = b[j - 1];
            j -= 1;
        }
    }
    a
}

impl NewChunks {
    /// Chunks whose records spill into `dir` when many.
    pub fn new(dir: std::path::PathBuf) -> Self {
        Self {
            packs: Vec::new(),
            entries: Vec::new(),
            spill: Spill::new(dir.clone(), RECORD_LEN),
            spilled: 0,
            bases: Vec::new(),
            sealed: 0,
            by_id: TagIndex::new(dir),
        }
    }

    pub fn len(&self) -> usize {
        self.spilled + self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The chunk at `at`, from memory or from the spill.
    fn placed(&self, at: usize) -> std::io::Result<Placed> {
        if at >= self.spilled {
            return Ok(self.entries[at - self.spilled]);
        }
        let mut record = [0u8; RECORD_LEN];
        self.spill.read(at as u64, &mut record)?;
        Placed::from_record(&record)
    }

    /// Where `id` was placed, if this upload placed it.
    pub fn find(&self, id: &ChunkId) -> std::io::Result<Option<usize>> {
        let tag = tag_of(id);
        for at in self.by_id.positions(tag)? {
            if self.placed(at as usize)?.chunk_id == *id {
                return Ok(Some(at as usize));
            }
        }
        Ok(None)
    }

    /// Places a chunk this upload will store (once: a repeat is found by [`Self::find`]);
    /// its stored form is set by [`Self::set_encoded`] before its pack is sealed.
    pub fn place(&mut self, chunk_id: ChunkId, raw_len: u32) -> std::io::Result<usize> {
        let at = self.len();
        self.by_id.insert(tag_of(&chunk_id), at as u32)?;
        self.entries.push(Placed {
            chunk_id,
            offset: 0,
            stored_len: 0,
            raw_len,
            pack: 0,
            base: NO_BASE,
            codec: Codec::Raw,
            depth: 0,
            sketch: None,
        });
        Ok(at)
    }

    /// The unsealed chunk at `at`.
    fn unsealed(&mut self, at: usize) -> &mut Placed {
        assert!(at >= self.sealed, "a sealed chunk does not change");
        &mut self.entries[at - self.spilled]
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
        let entry = self.unsealed(at);
        entry.codec = codec;
        entry.stored_len = stored_len;
        entry.base = base;
        entry.depth = delta.map_or(0, |(_, depth)| depth);
    }

    /// The resemblance sketch of the chunk at `at`, for later chunks to find it as a base.
    /// (The chunk is not spilled yet: its pack is being filled, or was sealed only just.)
    pub fn set_sketch(&mut self, at: usize, sketch: Sketch) {
        assert!(at >= self.spilled, "a spilled chunk does not change");
        self.entries[at - self.spilled].sketch = Some(sketch);
    }

    /// The stored length of the chunk at `at` as encoded (before any sealing tag), the
    /// same before and after its pack is sealed.
    pub fn stored_len(&self, at: usize) -> std::io::Result<u64> {
        let entry = self.placed(at)?;
        let sealing = if at < self.sealed {
            self.packs[entry.pack as usize].1
        } else {
            0
        };
        Ok(u64::from(entry.stored_len - sealing))
    }

    /// Records a sealed pack: its entries are the next placed chunks, in order.
    pub fn seal(&mut self, pack_id: Arc<str>, sealed: &[PackEntry]) -> std::io::Result<()> {
        let pack = self.packs.len() as u32;
        let end = self.sealed + sealed.len();
        assert!(end <= self.len(), "a pack holds only placed chunks");
        let first = self.sealed - self.spilled;
        let sealing = match (self.entries.get(first), sealed.first()) {
            (Some(placed), Some(entry)) => entry.stored_len.saturating_sub(placed.stored_len),
            _ => 0,
        };
        self.packs.push((pack_id, sealing));
        for (placed, entry) in self.entries[first..end - self.spilled].iter_mut().zip(sealed) {
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
        if self.sealed - self.spilled >= SPILL_AFTER_ENTRIES {
            let count = self.sealed - self.spilled;
            for placed in &self.entries[..count] {
                self.spill.push(&placed.record())?;
            }
            self.entries.drain(..count);
            self.spilled += count;
        }
        Ok(())
    }

    /// Whether any chunk's record went to a file.
    pub fn spilled(&self) -> bool {
        self.spill.spilled()
    }

    /// Whether every placed chunk is in a sealed pack.
    pub fn all_sealed(&self) -> bool {
        self.sealed == self.len()
    }

    /// Every chunk in a sealed pack, with its pack's name, its depth of deltas and its
    /// resemblance sketch; spilled ones are read back a block at a time.
    pub fn iter(&self) -> impl Iterator<Item = std::io::Result<(&str, PackEntry, u8, Option<Sketch>)>> + '_ {
        let spilled = self.spill.blocks().flat_map(|block| {
            let placed: Vec<std::io::Result<Placed>> = match block {
                Ok(block) => block.chunks_exact(RECORD_LEN).map(Placed::from_record).collect(),
                Err(error) => vec![Err(error)],
            };
            placed
        });
        let in_memory = self.entries[..self.sealed - self.spilled].iter().copied().map(Ok);
        spilled.chain(in_memory).map(|placed| {
            let placed = placed?;
            Ok((
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
                placed.sketch,
            ))
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
                chunks.seal(current, &entries).expect("sealed chunks are kept");
            }
            let (_, entries) = pack.get_or_insert_with(|| (name, Vec::new()));
            let at = chunks
                .place(entry.chunk_id, entry.raw_len)
                .expect("placed chunks are kept");
            chunks.set_encoded(
                at,
                entry.codec,
                entry.stored_len,
                entry.base.map(|base| (base, 1)),
            );
            entries.push(entry);
        }
        if let Some((current, entries)) = pack {
            chunks.seal(current, &entries).expect("sealed chunks are kept");
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
        let a = chunks.place(id(1), 100).unwrap();
        let b = chunks.place(id(2), 200).unwrap();
        let c = chunks.place(id(200), 300).unwrap();
        assert_eq!(chunks.find(&id(1)).unwrap(), Some(a));
        assert_eq!(chunks.find(&id(200)).unwrap(), Some(c));
        assert_eq!(chunks.find(&id(0)).unwrap(), None, "same first bytes, another id");
        chunks.set_encoded(a, Codec::Zstd, 40, None);
        chunks.set_encoded(b, Codec::ZstdDelta, 200, Some((id(9), 3)));
        chunks.set_encoded(c, Codec::Raw, 300, None);
        chunks.set_sketch(b, Sketch([1, 2, 3, 4]));
        assert_eq!(chunks.bases(), &[id(9)]);
        assert_eq!(chunks.stored_len(a).unwrap(), 40);
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
        chunks
            .seal(
                Arc::from("pack-1"),
                &[
                    entry(id(1), 0, 56, 100, Codec::Zstd),
                    entry(id(2), 56, 216, 200, Codec::ZstdDelta),
                ],
            )
            .unwrap();
        assert_eq!(
            chunks.stored_len(a).unwrap(),
            40,
            "as encoded, before and after sealing"
        );
        assert_eq!(chunks.stored_len(c).unwrap(), 300);
        chunks
            .seal(Arc::from("pack-2"), &[entry(id(200), 0, 316, 300, Codec::Raw)])
            .unwrap();
        assert_eq!(chunks.stored_len(c).unwrap(), 300);
        assert!(chunks.all_sealed());
        let indexed: Vec<(String, PackEntry, u8, Option<Sketch>)> = chunks
            .iter()
            .map(Result::unwrap)
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
    fn the_tag_index_finds_every_position_in_memory_and_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = TagIndex::new(dir.path().to_path_buf());
        let mut expected: std::collections::HashMap<u32, Vec<u32>> = Default::default();
        let count = 300_000u32;
        for position in 0..count {
            // Tags repeat (one in 50,000 values), as unrelated ids' tags sometimes do, so
            // one tag's entries span blocks and runs.
            let tag = position.wrapping_mul(2_654_435_761) % 50_000;
            index.insert(tag, position).unwrap();
            expected.entry(tag).or_default().push(position);
        }
        assert!(
            index.disk_runs.len() >= 4,
            "{} runs on disk",
            index.disk_runs.len()
        );
        assert!(index.runs.len() <= 8, "{} runs in memory", index.runs.len());
        assert!(
            index.runs.iter().all(|run| run.len() < RUN_ON_DISK_ENTRIES),
            "runs in memory stay small"
        );
        assert_eq!(index.len(), count as usize);
        for (tag, positions) in expected {
            let mut found = index.positions(tag).unwrap();
            found.sort_unstable();
            assert_eq!(found, positions, "tag {tag}");
        }
        assert!(index.positions(60_000).unwrap().is_empty());
        // A tag none holds passes few filters.
        let passing: usize = (1_000_000..1_010_000u32)
            .map(|tag| index.disk_runs.iter().filter(|run| run.may_hold(tag)).count())
            .sum();
        let probes = 10_000 * index.disk_runs.len();
        assert!(
            passing * 50 < probes,
            "{passing} of {probes} filter checks passed"
        );
        // The filters take their 10 bits an entry, not more.
        let on_disk: usize = index.disk_runs.iter().map(|run| run.len).sum();
        let filter_bits: usize = index.disk_runs.iter().map(|run| run.filter.len() * 64).sum();
        assert!(
            filter_bits <= on_disk * FILTER_BITS_PER_ENTRY + 64 * index.disk_runs.len(),
            "{filter_bits} filter bits for {on_disk} entries"
        );
    }

    #[test]
    fn merging_in_place_gives_the_sorted_union() {
        let mut state = 7u64;
        let mut next = move |limit: u32| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % u64::from(limit)) as u32
        };
        for (a_len, b_len) in [
            (0, 0),
            (0, 5),
            (5, 0),
            (1, 1),
            (1024, 1024),
            (4096, 3),
            (3, 4096),
            (777, 1500),
        ] {
            let mut a: Vec<(u32, u32)> = (0..a_len).map(|_| (next(500), next(1 << 20))).collect();
            let mut b: Vec<(u32, u32)> = (0..b_len).map(|_| (next(500), next(1 << 20))).collect();
            a.sort_unstable();
            b.sort_unstable();
            let mut expected = [a.clone(), b.clone()].concat();
            expected.sort_unstable();
            assert_eq!(merge(a, b), expected, "{a_len} + {b_len}");
        }
    }

    #[test]
    fn many_chunks_stay_findable_and_spilled_ones_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut chunks = NewChunks::new(dir.path().to_path_buf());
        let ids: Vec<ChunkId> = (0..50_000u32)
            .map(|n| ChunkId(*blake3::hash(&n.to_le_bytes()).as_bytes()))
            .collect();
        let mut offset = 0;
        for (pack, group) in ids.chunks(700).enumerate() {
            let mut entries = Vec::new();
            for id in group {
                let n = chunks.len();
                assert_eq!(chunks.place(*id, n as u32 + 1).unwrap(), n);
                chunks.set_encoded(
                    n,
                    Codec::Zstd,
                    n as u32 % 100 + 1,
                    n.is_multiple_of(7).then_some((ids[0], 2)),
                );
                if n.is_multiple_of(3) {
                    chunks.set_sketch(n, Sketch([n as i64, -1, 2, i64::MAX]));
                }
                entries.push(PackEntry {
                    chunk_id: *id,
                    offset,
                    stored_len: n as u32 % 100 + 1 + 16,
                    raw_len: n as u32 + 1,
                    codec: Codec::Zstd,
                    base: n.is_multiple_of(7).then_some(ids[0]),
                });
                offset += 1;
            }
            chunks
                .seal(Arc::from(format!("pack-{pack}").as_str()), &entries)
                .unwrap();
        }
        assert!(chunks.spill.spilled(), "50,000 sealed chunks went to the file");
        assert!(chunks.entries.len() < SPILL_AFTER_ENTRIES, "and left memory");
        for (n, id) in ids.iter().enumerate() {
            assert_eq!(chunks.find(id).unwrap(), Some(n));
            assert_eq!(chunks.stored_len(n).unwrap(), n as u64 % 100 + 1);
        }
        assert_eq!(chunks.find(&ChunkId([7; 32])).unwrap(), None);
        // Same first four bytes, another id: found by tag, told apart by the record.
        let mut twin = ids[123].0;
        twin[31] ^= 1;
        assert_eq!(chunks.find(&ChunkId(twin)).unwrap(), None);
        let indexed: Vec<_> = chunks.iter().map(Result::unwrap).collect();
        assert_eq!(indexed.len(), ids.len());
        for (n, (pack, entry, depth, sketch)) in indexed.into_iter().enumerate() {
            assert_eq!(pack, format!("pack-{}", n / 700));
            assert_eq!(entry.chunk_id, ids[n]);
            assert_eq!(entry.raw_len, n as u32 + 1);
            assert_eq!(entry.stored_len, n as u32 % 100 + 17);
            assert_eq!(entry.base, n.is_multiple_of(7).then_some(ids[0]));
            assert_eq!(depth, if n.is_multiple_of(7) { 2 } else { 0 });
            assert_eq!(
                sketch,
                n.is_multiple_of(3).then_some(Sketch([n as i64, -1, 2, i64::MAX]))
            );
        }
    }
}

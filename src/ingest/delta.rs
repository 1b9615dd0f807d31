//! Delta compression: a new chunk stored as zstd with an earlier chunk's plain content as a
//! raw-content prefix (its *base*), so an edit to a document costs about the edit, not the
//! chunk. The chunk's id stays the keyed hash of its plain content, so dedup, verification
//! and sealing are unchanged; its base is named in the pack's trailer and the chunk index.
//!
//! Bases are chosen by position: an update's previous version is aligned with the new
//! content through the chunks they share (the last shared chunk says how far the content
//! moved), and a new chunk is tried against the previous version's chunk at the same
//! place. A base may itself be a delta; chains are at most `max_depth` long, so a chunk
//! needs at most that many other chunks to be read to decode it (usually from the chunk
//! cache: reading versions in order decodes each base once).

use super::chunk::ChunkId;
use super::manifest::Manifest;
use hashbrown::HashTable;

/// The previous version of an update, as a source of bases: its chunks by id (to align
/// the new content with it) and by position.
#[derive(Debug)]
pub struct DeltaBases {
    manifest: Manifest,
    /// End offset of each chunk of `manifest`.
    ends: Vec<u64>,
    /// Positions in `manifest`, found by chunk id (the first of repeats).
    by_id: HashTable<u32>,
}

/// Deltas are compressed at least at this level: they are small (an edit), so a higher
/// level costs little time, and on the bmad-history documents level 9 stores 18% less than
/// level 3 (level 19 only 1.5% less again).
pub const MIN_LEVEL: i32 = 9;

/// The most bases a chain may have: what uploads write is bounded by
/// `ingest.delta_max_depth` (at most this); a longer chain in the index is damage.
pub const MAX_CHAIN: u8 = 64;

/// Previous versions longer than this many chunks (about 4 GiB) are not used as bases: the
/// table would cost more memory than the upload's own state.
pub const MAX_BASE_CHUNKS: usize = 1 << 18;

fn hash_of(id: &ChunkId) -> u64 {
    u64::from_le_bytes(id.0[..8].try_into().expect("8 bytes"))
}

impl DeltaBases {
    /// `None` when the previous version is empty or too long to be worth aligning with.
    pub fn new(manifest: Manifest) -> Option<Self> {
        if manifest.is_empty() || manifest.len() > MAX_BASE_CHUNKS {
            return None;
        }
        let mut ends = Vec::with_capacity(manifest.len());
        let mut by_id = HashTable::with_capacity(manifest.len());
        let mut end = 0u64;
        for (at, entry) in manifest.entries().enumerate() {
            end += u64::from(entry.raw_len);
            ends.push(end);
            let id = entry.chunk_id;
            let found = by_id
                .find(hash_of(&id), |&i: &u32| {
                    manifest.get(i as usize).is_some_and(|e| e.chunk_id == id)
                })
                .is_some();
            if !found {
                by_id.insert_unique(hash_of(&id), at as u32, |&i: &u32| {
                    hash_of(&manifest.get(i as usize).expect("indexed").chunk_id)
                });
            }
        }
        Some(Self {
            manifest,
            ends,
            by_id,
        })
    }

    /// Where the previous version holds `id`: its start offset there.
    fn start_of(&self, id: &ChunkId) -> Option<u64> {
        let at = *self.by_id.find(hash_of(id), |&i| {
            self.manifest.get(i as usize).is_some_and(|e| e.chunk_id == *id)
        })? as usize;
        Some(if at == 0 { 0 } else { self.ends[at - 1] })
    }

    /// The previous version's chunk covering `offset` (the last one past its end).
    fn covering(&self, offset: u64) -> ChunkId {
        let at = self
            .ends
            .partition_point(|&end| end <= offset)
            .min(self.ends.len() - 1);
        self.manifest.get(at).expect("in range").chunk_id
    }
}

/// Follows the new content along the previous version as its chunks pass in order, and
/// proposes a base for each chunk that has to be stored.
#[derive(Debug)]
pub struct Alignment {
    bases: DeltaBases,
    /// Offset of the next chunk in the new content.
    position: u64,
    /// Previous offset minus new offset at the last shared chunk (0 at the start: contents
    /// begin aligned).
    shift: i128,
}

impl Alignment {
    pub fn new(bases: DeltaBases) -> Self {
        Self {
            bases,
            position: 0,
            shift: 0,
        }
    }

    /// The next chunk of the new content, `len` bytes: `None` when the previous version has
    /// it (it realigns the two), else the previous version's chunk at the same place, the
    /// one that overlaps it most (the chunk covering its middle).
    pub fn next(&mut self, id: &ChunkId, len: u32) -> Option<ChunkId> {
        let start = self.position;
        self.position += u64::from(len);
        if let Some(previous) = self.bases.start_of(id) {
            self.shift = i128::from(previous) - i128::from(start);
            return None;
        }
        let middle = i128::from(start) + i128::from(len / 2) + self.shift;
        Some(self.bases.covering(middle.max(0) as u64))
    }
}

/// Whether a delta of `delta_len` bytes is worth storing instead of the chunk's own
/// encoding of `plain_len` bytes: it must save a quarter, and more than the base's name
/// costs in the trailer, to pay for the reads of its base.
///
/// `past_the_chain` says the base is not the chunk the new one replaces but an older one
/// (that chunk's chain was as deep as allowed). Every later version would then be a delta
/// against that same old base, growing with each edit; so such a delta must stay under a
/// sixth of the chunk's own encoding, and beyond that the chunk is stored whole and starts
/// a new chain of small deltas. Measured on bmad-history at depth 16 (pack bytes of all
/// 1,027 versions): drifting deltas 1.11 MB; restarting over a half 0.99 MB, a third 0.92,
/// a fifth 0.89, an eighth 0.89, a twentieth 0.91.
pub fn pays(delta_len: usize, plain_len: usize, past_the_chain: bool) -> bool {
    let fraction_ok = if past_the_chain {
        delta_len * 6 <= plain_len
    } else {
        delta_len * 4 <= plain_len * 3
    };
    delta_len + 32 < plain_len && fraction_ok
}

/// Whether a delta of `delta_len` for a chunk of `plain_len` is kept without trying the
/// chunk's other candidate bases: at most 1/16 of the chunk, a better base could save
/// little more, and each try costs a compression of the chunk against a base.
pub fn good_enough(delta_len: usize, plain_len: usize) -> bool {
    delta_len * 16 <= plain_len
}

/// `data` compressed against `base`; `None` when zstd refuses (never for valid input).
pub fn encode(data: &[u8], base: &[u8], level: i32) -> Option<Vec<u8>> {
    Encoder::new()?.encode(data, base, level)
}

/// Encodes deltas with one zstd context. A context's workspace (its match tables, a few
/// MiB at the delta level) is allocated at its first use and kept: a new context for each
/// chunk spent about a tenth of an upload of document releases faulting in fresh pages.
pub struct Encoder<'a> {
    context: zstd::zstd_safe::CCtx<'a>,
}

impl<'a> Encoder<'a> {
    pub fn new() -> Option<Self> {
        Some(Self {
            context: zstd::zstd_safe::CCtx::try_create()?,
        })
    }

    /// `data` compressed against `base`; `None` when zstd refuses (never for valid input).
    pub fn encode(&mut self, data: &[u8], base: &'a [u8], level: i32) -> Option<Vec<u8>> {
        use zstd::zstd_safe::CParameter;
        let context = &mut self.context;
        context.set_parameter(CParameter::CompressionLevel(level)).ok()?;
        context.set_parameter(CParameter::ChecksumFlag(false)).ok()?;
        // Window large enough for the prefix and the chunk together.
        let window = (base.len() + data.len()).next_power_of_two().max(1 << 10);
        context
            .set_parameter(CParameter::WindowLog(window.trailing_zeros().max(10)))
            .ok()?;
        // A prefix serves the next frame only.
        context.ref_prefix(base).ok()?;
        let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()));
        let written = context.compress2(&mut out, data);
        if written.is_err() {
            // Whatever stopped it, the next frame starts clean.
            let _ = context.reset(zstd::zstd_safe::ResetDirective::SessionOnly);
        }
        written.ok()?;
        Some(out)
    }
}

/// Decodes a delta into `out` (exactly the chunk's raw length), returning the bytes written.
pub fn decode_into(stored: &[u8], base: &[u8], out: &mut [u8]) -> Result<usize, String> {
    use zstd::zstd_safe::{DCtx, DParameter};
    let mut context = DCtx::try_create().ok_or("no memory for a decompression context")?;
    // Refuse frames whose window is larger than a delta of the largest chunk needs.
    context
        .set_parameter(DParameter::WindowLogMax(24))
        .map_err(|code| zstd::zstd_safe::get_error_name(code).to_owned())?;
    context
        .ref_prefix(base)
        .map_err(|code| zstd::zstd_safe::get_error_name(code).to_owned())?;
    context
        .decompress(out, stored)
        .map_err(|code| zstd::zstd_safe::get_error_name(code).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::{ManifestBuilder, ManifestEntry};

    fn id(n: u8) -> ChunkId {
        ChunkId([n; 32])
    }

    fn manifest(chunks: &[(u8, u32)]) -> Manifest {
        let mut builder = ManifestBuilder::default();
        for (n, len) in chunks {
            builder.push(ManifestEntry {
                chunk_id: id(*n),
                raw_len: *len,
            });
        }
        builder.finish()
    }

    #[test]
    fn an_edit_is_stored_as_about_its_size_and_decodes_only_with_its_base() {
        let base = "## Requirements\nThe service stores every version of an artifact.\n".repeat(300);
        let mut edited = base.clone().into_bytes();
        let paragraph = b"A new paragraph inserted in the middle says something else entirely.\n";
        let middle = edited.len() / 2;
        edited.splice(middle..middle, paragraph.iter().copied());
        let delta = encode(&edited, base.as_bytes(), 3).unwrap();
        assert!(delta.len() < 200, "{} bytes", delta.len());
        let mut out = vec![0; edited.len()];
        assert_eq!(
            decode_into(&delta, base.as_bytes(), &mut out).unwrap(),
            edited.len()
        );
        assert_eq!(out, edited);
        // Another base does not give the same content back.
        let other = "something else entirely ".repeat(700);
        let mut wrong = vec![0; edited.len()];
        let decoded = decode_into(&delta, other.as_bytes(), &mut wrong);
        assert!(decoded.is_err() || wrong != edited);
        assert!(pays(delta.len(), 2000, false));
        assert!(!pays(1900, 2000, false));
        assert!(!pays(40, 60, false));
        assert!(pays(1000, 2000, false) && !pays(1000, 2000, true));
    }

    #[test]
    fn a_base_that_looks_like_a_zstd_dictionary_is_still_raw_content() {
        let mut base = vec![0x37, 0xA4, 0x30, 0xEC];
        base.extend(b"dictionary-looking prefix, then text ".repeat(100));
        let data = [&base[..], b"and a bit more"].concat();
        let delta = encode(&data, &base, 3).unwrap();
        let mut out = vec![0; data.len()];
        decode_into(&delta, &base, &mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn new_chunks_are_aligned_with_the_previous_version_through_shared_ones() {
        // Previous: 1 2 3 4 (1,000 bytes each). New: 9 (inserted, 500) 2' 3 4'.
        let previous = manifest(&[(1, 1000), (2, 1000), (3, 1000), (4, 1000)]);
        let mut alignment = Alignment::new(DeltaBases::new(previous).unwrap());
        // Nothing shared yet: same place in the previous version.
        assert_eq!(alignment.next(&id(9), 500), Some(id(1)));
        assert_eq!(alignment.next(&id(20), 1000), Some(id(2)));
        // Shared: realigns (3 is at 2,000 there, 1,500 here).
        assert_eq!(alignment.next(&id(3), 1000), None);
        // 4' sits at 2,500 here, which is 3,000 there: chunk 4.
        assert_eq!(alignment.next(&id(40), 1000), Some(id(4)));
        // Past the end of the previous version: its last chunk.
        assert_eq!(alignment.next(&id(41), 1000), Some(id(4)));
        assert!(DeltaBases::new(manifest(&[])).is_none());
    }
}

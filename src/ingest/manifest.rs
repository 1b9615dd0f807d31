//! A version's manifest: the ordered list of chunks that make up its content.
//! Encoded compactly (36 bytes a chunk) because large artifacts have thousands of chunks.
//!
//! A long manifest is also cut into *segments* where its chunk ids say so (an id whose
//! hash hits a pattern ends a segment), the way content-defined chunking cuts content: an
//! edit that changes one chunk changes the segment holding it and leaves the others equal,
//! so versions of a large artifact share all but a segment or two of their chunk lists.

use super::chunk::ChunkId;
use super::spill::Spill;

const FORMAT_VERSION: u8 = 1;
/// Bytes of one entry in the stored form (and in a segment).
pub const ENTRY_LEN: usize = 36;

/// Segments hold at least this many entries (but the last)...
pub const SEGMENT_MIN_ENTRIES: usize = 16;
/// ...and at most this many.
pub const SEGMENT_MAX_ENTRIES: usize = 256;
/// One chunk id in this many ends a segment: 64 entries (2.3 KB) on average.
const SEGMENT_CUT_ONE_IN: u32 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManifestEntry {
    pub chunk_id: ChunkId,
    pub raw_len: u32,
}

impl ManifestEntry {
    fn read(raw: &[u8]) -> Self {
        Self {
            chunk_id: ChunkId::from_slice(&raw[..32]).expect("32 bytes"),
            raw_len: u32::from_le_bytes(raw[32..ENTRY_LEN].try_into().expect("4 bytes")),
        }
    }
}

/// A manifest in its encoded form, read in place: a large artifact's chunk list is held
/// once, at 36 bytes a chunk, by an upload building it and by a download reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    encoded: bytes::Bytes,
}

impl Default for Manifest {
    fn default() -> Self {
        ManifestBuilder::default().finish()
    }
}

impl Manifest {
    pub fn len(&self) -> usize {
        (self.encoded.len() - 1) / ENTRY_LEN
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `index`th chunk, if there is one.
    pub fn get(&self, index: usize) -> Option<ManifestEntry> {
        let start = 1 + index.checked_mul(ENTRY_LEN)?;
        self.encoded
            .get(start..start + ENTRY_LEN)
            .map(ManifestEntry::read)
    }

    pub fn entries(&self) -> impl Iterator<Item = ManifestEntry> + '_ {
        self.encoded[1..].chunks_exact(ENTRY_LEN).map(ManifestEntry::read)
    }

    pub fn total_len(&self) -> u64 {
        Self::segment_content_len(&self.encoded[1..])
    }

    /// The stored form.
    pub fn encoded(&self) -> &bytes::Bytes {
        &self.encoded
    }

    /// The manifest's segments, in order: each the stored form of its entries (a multiple of
    /// [`ENTRY_LEN`] bytes, without the format byte), together the whole manifest.
    pub fn segments(&self) -> Vec<bytes::Bytes> {
        let mut start = 0;
        segment_ends(self.entries())
            .into_iter()
            .map(|end| {
                let segment = self
                    .encoded
                    .slice(1 + start * ENTRY_LEN..1 + end as usize * ENTRY_LEN);
                start = end as usize;
                segment
            })
            .collect()
    }

    /// The manifest whose segments are `segments`, in order.
    pub fn from_segments<'a>(segments: impl IntoIterator<Item = &'a [u8]>) -> Result<Self, String> {
        let mut encoded = vec![FORMAT_VERSION];
        for segment in segments {
            if segment.is_empty() || !segment.len().is_multiple_of(ENTRY_LEN) {
                return Err(format!(
                    "a manifest segment of {} bytes is not whole entries",
                    segment.len()
                ));
            }
            encoded.extend_from_slice(segment);
        }
        Ok(Self {
            encoded: encoded.into(),
        })
    }

    /// The bytes of content a segment's entries (its stored form, whole entries) cover.
    pub fn segment_content_len(segment: &[u8]) -> u64 {
        segment
            .chunks_exact(ENTRY_LEN)
            .map(|entry| u64::from(ManifestEntry::read(entry).raw_len))
            .sum()
    }

    /// Checks the stored form and keeps it as it is.
    pub fn decode(bytes: impl Into<bytes::Bytes>) -> Result<Self, String> {
        let encoded: bytes::Bytes = bytes.into();
        let Some((&format, body)) = encoded.split_first() else {
            return Err("empty manifest".to_owned());
        };
        if format != FORMAT_VERSION {
            return Err(format!("unknown manifest format {format}"));
        }
        if body.len() % ENTRY_LEN != 0 {
            return Err(format!("manifest body of {} bytes is truncated", body.len()));
        }
        Ok(Self { encoded })
    }
}

/// Builds a manifest entry by entry, directly in its stored form.
#[derive(Debug)]
pub struct ManifestBuilder {
    encoded: Vec<u8>,
}

impl Default for ManifestBuilder {
    fn default() -> Self {
        Self {
            encoded: vec![FORMAT_VERSION],
        }
    }
}

impl ManifestBuilder {
    pub fn push(&mut self, entry: ManifestEntry) {
        self.encoded.extend_from_slice(&entry.chunk_id.0);
        self.encoded.extend_from_slice(&entry.raw_len.to_le_bytes());
    }

    pub fn len(&self) -> usize {
        (self.encoded.len() - 1) / ENTRY_LEN
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn finish(mut self) -> Manifest {
        // Held until the version commits: without the spare room of its growth.
        self.encoded.shrink_to_fit();
        Manifest {
            encoded: self.encoded.into(),
        }
    }
}

/// Whether `entry`, the `len`th entry since the last segment ended, ends a segment.
fn ends_segment(entry: &ManifestEntry, len: usize) -> bool {
    let cut_here =
        u32::from_le_bytes(entry.chunk_id.0[8..12].try_into().expect("4 bytes")) % SEGMENT_CUT_ONE_IN == 0;
    (len >= SEGMENT_MIN_ENTRIES && cut_here) || len == SEGMENT_MAX_ENTRIES
}

/// Where the segments of a manifest with `entries` end (entry indices, exclusive).
fn segment_ends(entries: impl Iterator<Item = ManifestEntry>) -> Vec<u32> {
    let mut ends = Vec::new();
    let mut start = 0;
    let mut len = 0;
    for (at, entry) in entries.enumerate() {
        len = at + 1;
        if ends_segment(&entry, len - start) {
            ends.push(len as u32);
            start = len;
        }
    }
    if start < len {
        ends.push(len as u32);
    }
    ends
}

/// An upload's manifest as it is written: entries go to a [`Spill`] (memory while few, an
/// unnamed file beyond), and segments are found as entries arrive. What it holds in memory
/// is 4 bytes per segment (64 chunks on average) past the spill's buffer.
#[derive(Debug)]
pub struct ManifestWriter {
    spill: Spill,
    ends: Vec<u32>,
    start: usize,
}

impl ManifestWriter {
    /// A manifest whose entries spill into `dir` when many.
    pub fn new(dir: std::path::PathBuf) -> Self {
        Self {
            spill: Spill::new(dir, ENTRY_LEN),
            ends: Vec::new(),
            start: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.spill.len() as usize
    }

    pub fn is_empty(&self) -> bool {
        self.spill.is_empty()
    }

    pub fn push(&mut self, entry: ManifestEntry) -> std::io::Result<()> {
        let mut record = [0u8; ENTRY_LEN];
        record[..32].copy_from_slice(&entry.chunk_id.0);
        record[32..].copy_from_slice(&entry.raw_len.to_le_bytes());
        self.spill.push(&record)?;
        let len = self.len();
        if ends_segment(&entry, len - self.start) {
            self.ends.push(len as u32);
            self.start = len;
        }
        Ok(())
    }

    pub fn finish(mut self) -> NewManifest {
        let len = self.len();
        if self.start < len {
            self.ends.push(len as u32);
        }
        NewManifest {
            entries: Entries::Spill(self.spill),
            ends: self.ends,
        }
    }
}

/// A new version's manifest, given whole or written by an upload: read a segment at a
/// time when the catalog stores it.
#[derive(Debug)]
pub struct NewManifest {
    entries: Entries,
    /// Where each segment ends (entry indices, exclusive).
    ends: Vec<u32>,
}

#[derive(Debug)]
enum Entries {
    Whole(Manifest),
    Spill(Spill),
}

impl Default for NewManifest {
    fn default() -> Self {
        Manifest::default().into()
    }
}

impl From<Manifest> for NewManifest {
    fn from(manifest: Manifest) -> Self {
        Self {
            ends: segment_ends(manifest.entries()),
            entries: Entries::Whole(manifest),
        }
    }
}

impl NewManifest {
    pub fn len(&self) -> usize {
        match &self.entries {
            Entries::Whole(manifest) => manifest.len(),
            Entries::Spill(spill) => spill.len() as usize,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The stored form of entries `range`.
    fn read(&self, range: std::ops::Range<usize>) -> std::io::Result<Vec<u8>> {
        match &self.entries {
            Entries::Whole(manifest) => {
                Ok(manifest.encoded[1 + range.start * ENTRY_LEN..1 + range.end * ENTRY_LEN].to_vec())
            }
            Entries::Spill(spill) => {
                let mut out = vec![0; range.len() * ENTRY_LEN];
                spill.read_range(range.start as u64, &mut out)?;
                Ok(out)
            }
        }
    }

    /// The whole manifest (for a short one: the catalog stores those whole).
    pub fn whole(&self) -> std::io::Result<Manifest> {
        match &self.entries {
            Entries::Whole(manifest) => Ok(manifest.clone()),
            Entries::Spill(_) => {
                let mut encoded = vec![FORMAT_VERSION];
                encoded.extend_from_slice(&self.read(0..self.len())?);
                Ok(Manifest {
                    encoded: encoded.into(),
                })
            }
        }
    }

    /// Whether any of it went to a file.
    pub fn spilled(&self) -> bool {
        matches!(&self.entries, Entries::Spill(spill) if spill.spilled())
    }

    pub fn segment_count(&self) -> usize {
        self.ends.len()
    }

    /// Segment `index`'s stored form (as [`Manifest::segments`] cuts them).
    pub fn segment(&self, index: usize) -> std::io::Result<Vec<u8>> {
        let start = index
            .checked_sub(1)
            .map_or(0, |before| self.ends[before] as usize);
        self.read(start..self.ends[index] as usize)
    }
}

impl FromIterator<ManifestEntry> for Manifest {
    fn from_iter<I: IntoIterator<Item = ManifestEntry>>(entries: I) -> Self {
        let mut builder = ManifestBuilder::default();
        for entry in entries {
            builder.push(entry);
        }
        builder.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let entries = [
            ManifestEntry {
                chunk_id: ChunkId([1; 32]),
                raw_len: 65536,
            },
            ManifestEntry {
                chunk_id: ChunkId([2; 32]),
                raw_len: 17,
            },
        ];
        let manifest: Manifest = entries.into_iter().collect();
        let decoded = Manifest::decode(manifest.encoded().to_vec()).unwrap();
        assert_eq!(decoded, manifest);
        assert_eq!(decoded.total_len(), 65553);
        assert_eq!(decoded.len(), 2);
        assert_eq!(decoded.get(1), Some(entries[1]));
        assert_eq!(decoded.get(2), None);
        assert_eq!(decoded.entries().collect::<Vec<_>>(), entries);
        assert!(Manifest::decode(manifest.encoded().slice(..40)).is_err());
        assert!(Manifest::decode(Vec::new()).is_err());
        assert!(Manifest::default().is_empty());
    }

    fn random_entry(seed: u64) -> ManifestEntry {
        ManifestEntry {
            chunk_id: ChunkId(*blake3::hash(&seed.to_le_bytes()).as_bytes()),
            raw_len: 16384,
        }
    }

    #[test]
    fn segments_put_the_manifest_back_together_and_bound_their_size() {
        let manifest: Manifest = (0..5000).map(random_entry).collect();
        let segments = manifest.segments();
        let back = Manifest::from_segments(segments.iter().map(|s| s.as_ref())).unwrap();
        assert_eq!(back, manifest);
        for (at, segment) in segments.iter().enumerate() {
            let entries = segment.len() / ENTRY_LEN;
            assert!(entries <= SEGMENT_MAX_ENTRIES);
            assert!(entries >= SEGMENT_MIN_ENTRIES || at == segments.len() - 1);
        }
        let average = manifest.len() / segments.len();
        assert!(
            (32..=128).contains(&average),
            "{average} entries a segment on average"
        );
        assert!(Manifest::from_segments([&[0u8; 35][..]]).is_err());
        assert!(Manifest::default().segments().is_empty());
        // A manifest of one repeated chunk is cut at the largest size.
        let repeated: Manifest = (0..1000).map(|_| random_entry(1)).collect();
        assert!(repeated.segments().len() >= 1000 / SEGMENT_MAX_ENTRIES);
    }

    #[test]
    fn an_edited_chunk_changes_at_most_the_segments_around_it() {
        let before: Manifest = (0..4096).map(random_entry).collect();
        for changed in [0usize, 17, 2000, 4095] {
            let after: Manifest = (0..4096u64)
                .map(|n| random_entry(if n as usize == changed { 1_000_000 + n } else { n }))
                .collect();
            let old: std::collections::HashSet<bytes::Bytes> = before.segments().into_iter().collect();
            let new = after.segments();
            let fresh = new.iter().filter(|s| !old.contains(*s)).count();
            assert!(fresh <= 2, "changing entry {changed} made {fresh} new segments");
            assert!(new.len() >= 32);
        }
    }
}

//! Pack objects: many chunks written as one immutable object named by its own blake3 hash.
//!
//! Layout: the chunks' stored bytes back to back, then a trailer that makes a pack
//! self-describing (so the chunk index can be rebuilt from the object store alone):
//! for each chunk `id[32] | offset u64 | stored_len u32 | raw_len u32 | codec u8`, then the
//! entry count as u32 and the magic `ARTPACK1`. All integers little-endian.
//!
//! Version 2 (`ARTPACK2`) is the same with one byte before the magic naming how the chunks'
//! stored bytes are sealed (see [`Sealing`]); a sealed chunk's stored length includes its
//! authentication tag. Plain packs are still written as version 1, so both stay readable.
//!
//! Version 3 (`ARTPACK3`) is written when a pack holds delta-encoded chunks: before the
//! entries, the 32-byte id of each delta chunk's base, in entry order (one per entry whose
//! codec is [`Codec::ZstdDelta`]); then the entries, count and sealing byte as in version 2.
//! Packs without deltas are written as before, so every pack written earlier stays as it is
//! and readable.

use super::chunk::{ChunkId, Codec};
use super::sealing::{DataKey, TAG_LEN};
use bytes::Bytes;
use std::fmt;

const MAGIC: &[u8; 8] = b"ARTPACK1";
const MAGIC_V2: &[u8; 8] = b"ARTPACK2";
const MAGIC_V3: &[u8; 8] = b"ARTPACK3";
pub const TRAILER_ENTRY_LEN: usize = 32 + 8 + 4 + 4 + 1;

/// A pack's name: the blake3 hash of all its bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PackId(pub [u8; 32]);

impl PackId {
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    pub fn from_hex(text: &str) -> Option<Self> {
        blake3::Hash::from_hex(text).ok().map(|h| Self(*h.as_bytes()))
    }

    /// Where the pack lives in an object store; the two-character fan-out keeps listings
    /// and file-system directories small.
    pub fn object_key(&self) -> String {
        let hex = self.to_hex();
        format!("packs/{}/{hex}.pack", &hex[..2])
    }
}

impl fmt::Debug for PackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PackId({})", &self.to_hex()[..16])
    }
}

/// Where one chunk sits inside its pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    pub chunk_id: ChunkId,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub codec: Codec,
    /// The chunk whose plain content a delta-encoded chunk is decoded against.
    pub base: Option<ChunkId>,
}

/// How the chunks of a pack are protected, as its trailer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Sealing {
    /// Stored bytes are the encoded chunk (version 1 packs).
    Plain = 0,
    /// Each chunk sealed with AES-256-GCM under the pack's data key, tag appended.
    Aes256Gcm = 1,
}

/// What a pack's trailer says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackTrailer {
    pub sealing: Sealing,
    pub entries: Vec<PackEntry>,
}

/// Accumulates encoded chunks until the pack is big enough to seal.
#[derive(Debug, Default)]
pub struct PackBuilder {
    body: Vec<u8>,
    entries: Vec<PackEntry>,
    /// Where the body's buffer came from and goes back to once the sealed pack is dropped.
    pool: Option<std::sync::Arc<crate::buffers::BufferPool>>,
}

/// A finished pack, ready to be written under `id.object_key()`.
#[derive(Debug, Clone)]
pub struct SealedPack {
    pub id: PackId,
    pub bytes: Bytes,
    pub entries: Vec<PackEntry>,
}

impl PackBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes room for `total` bytes of chunks at once, sparing the copies of doubling.
    pub fn reserve_total(&mut self, total: usize) {
        self.body.reserve(total.saturating_sub(self.body.len()));
    }

    /// Makes room for `total` bytes in a buffer from `pool`, which gets it back once the
    /// sealed pack's bytes are dropped.
    pub fn reserve_total_from(&mut self, total: usize, pool: &std::sync::Arc<crate::buffers::BufferPool>) {
        if self.body.capacity() >= total {
            return;
        }
        let mut buffer = pool.take(total);
        buffer.extend_from_slice(&self.body);
        let old = std::mem::replace(&mut self.body, buffer);
        if let Some(previous) = &self.pool {
            previous.give(old);
        }
        self.pool = Some(pool.clone());
    }

    pub fn len(&self) -> usize {
        self.body.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes the pack's buffer has room for.
    pub fn capacity(&self) -> usize {
        self.body.capacity()
    }

    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    /// Adds a chunk's stored bytes; `base` is what a [`Codec::ZstdDelta`] chunk decodes
    /// against (and must be `None` for any other codec).
    pub fn add(
        &mut self,
        chunk_id: ChunkId,
        codec: Codec,
        raw_len: u32,
        stored: &[u8],
        base: Option<ChunkId>,
    ) {
        assert_eq!(
            codec == Codec::ZstdDelta,
            base.is_some(),
            "a delta chunk, and only a delta chunk, names its base"
        );
        self.entries.push(PackEntry {
            chunk_id,
            offset: self.body.len() as u64,
            stored_len: stored.len() as u32,
            raw_len,
            codec,
            base,
        });
        self.body.extend_from_slice(stored);
    }

    /// Moves every chunk of `other` after this builder's chunks, in their order; returns the
    /// positions (among this builder's entries) they now have.
    pub fn append(&mut self, mut other: PackBuilder) -> std::ops::Range<usize> {
        let first = self.entries.len();
        let shift = self.body.len() as u64;
        self.body.extend_from_slice(&other.body);
        self.entries
            .extend(other.entries.drain(..).map(|entry| PackEntry {
                offset: entry.offset + shift,
                ..entry
            }));
        if let Some(pool) = other.pool.take() {
            pool.give(std::mem::take(&mut other.body));
        }
        first..self.entries.len()
    }

    /// Finishes a plain (version 1) pack.
    pub fn seal(self) -> SealedPack {
        self.finish(Sealing::Plain)
    }

    /// Finishes a pack whose chunks are sealed under `key` (version 2). The chunks move up
    /// in place to make room for their tags, last first, so no second copy of the pack is
    /// made.
    pub fn seal_with(mut self, key: &DataKey) -> SealedPack {
        let plain_len = self.body.len();
        self.body.resize(plain_len + self.entries.len() * TAG_LEN, 0);
        for (index, entry) in self.entries.iter_mut().enumerate().rev() {
            let from = entry.offset as usize;
            let len = entry.stored_len as usize;
            let to = from + index * TAG_LEN;
            self.body.copy_within(from..from + len, to);
            let tag = key.seal_chunk(&entry.chunk_id, to as u64, &mut self.body[to..to + len]);
            self.body[to + len..to + len + TAG_LEN].copy_from_slice(&tag);
            entry.offset = to as u64;
            entry.stored_len = (len + TAG_LEN) as u32;
        }
        self.finish(Sealing::Aes256Gcm)
    }

    fn finish(mut self, sealing: Sealing) -> SealedPack {
        let mut deltas = false;
        for base in self.entries.iter().filter_map(|entry| entry.base) {
            self.body.extend_from_slice(&base.0);
            deltas = true;
        }
        for entry in &self.entries {
            self.body.extend_from_slice(&entry.chunk_id.0);
            self.body.extend_from_slice(&entry.offset.to_le_bytes());
            self.body.extend_from_slice(&entry.stored_len.to_le_bytes());
            self.body.extend_from_slice(&entry.raw_len.to_le_bytes());
            self.body.push(entry.codec as u8);
        }
        self.body
            .extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        match (sealing, deltas) {
            (Sealing::Plain, false) => self.body.extend_from_slice(MAGIC),
            (_, false) => {
                self.body.push(sealing as u8);
                self.body.extend_from_slice(MAGIC_V2);
            }
            (_, true) => {
                self.body.push(sealing as u8);
                self.body.extend_from_slice(MAGIC_V3);
            }
        }
        let id = PackId(*blake3::hash(&self.body).as_bytes());
        let bytes = match &self.pool {
            Some(pool) => pool.wrap(self.body),
            None => Bytes::from(self.body),
        };
        SealedPack {
            id,
            bytes,
            entries: self.entries,
        }
    }
}

/// Whether an object under `key` holds what its name promises. Pack keys must hash to
/// their name; other keys (health canaries) carry no promise.
pub fn object_matches_name(key: &str, bytes: &[u8]) -> bool {
    let Some(hex) = key.strip_prefix("packs/").and_then(|rest| rest.split('/').nth(1)) else {
        return true;
    };
    let Some(id) = hex.strip_suffix(".pack").and_then(PackId::from_hex) else {
        return false;
    };
    PackId(*blake3::hash(bytes).as_bytes()) == id
}

/// Reads the trailer of a whole pack, checking its name against its content.
pub fn read_trailer(expected: PackId, bytes: &[u8]) -> Result<PackTrailer, String> {
    if PackId(*blake3::hash(bytes).as_bytes()) != expected {
        return Err(format!("pack {expected:?} does not hash to its name"));
    }
    let magic_start = bytes.len().checked_sub(8).ok_or("pack shorter than its footer")?;
    let (sealing, count_end, deltas) = match &bytes[magic_start..] {
        magic if magic == MAGIC => (Sealing::Plain, magic_start, false),
        magic if magic == MAGIC_V2 || magic == MAGIC_V3 => {
            let at = magic_start.checked_sub(1).ok_or("pack shorter than its footer")?;
            let sealing = match bytes[at] {
                1 => Sealing::Aes256Gcm,
                0 => Sealing::Plain,
                other => return Err(format!("unknown sealing {other} in pack footer")),
            };
            (sealing, at, &bytes[magic_start..] == MAGIC_V3)
        }
        _ => return Err("pack magic missing".to_owned()),
    };
    let footer_start = count_end.checked_sub(4).ok_or("pack shorter than its footer")?;
    let count = u32::from_le_bytes(bytes[footer_start..count_end].try_into().unwrap()) as usize;
    let entries_start = footer_start
        .checked_sub(
            count
                .checked_mul(TRAILER_ENTRY_LEN)
                .ok_or("pack trailer longer than the pack")?,
        )
        .ok_or("pack trailer longer than the pack")?;
    let raw_entries = &bytes[entries_start..footer_start];
    let delta_count = raw_entries
        .chunks_exact(TRAILER_ENTRY_LEN)
        .filter(|raw| raw[48] == Codec::ZstdDelta as u8)
        .count();
    if delta_count > 0 && !deltas {
        return Err("a version 1 or 2 pack lists a delta chunk".to_owned());
    }
    let bases_start = entries_start
        .checked_sub(delta_count * 32)
        .ok_or("pack trailer longer than the pack")?;
    let mut bases = bytes[bases_start..entries_start]
        .chunks_exact(32)
        .map(|raw| ChunkId::from_slice(raw).expect("32 bytes"));
    let entries = raw_entries
        .chunks_exact(TRAILER_ENTRY_LEN)
        .map(|raw| {
            let codec = Codec::from_u8(raw[48]).ok_or("unknown codec in pack trailer")?;
            let base = match codec {
                Codec::ZstdDelta => Some(bases.next().expect("one base per delta entry")),
                _ => None,
            };
            let entry = PackEntry {
                chunk_id: ChunkId::from_slice(&raw[..32]).expect("32 bytes"),
                offset: u64::from_le_bytes(raw[32..40].try_into().unwrap()),
                stored_len: u32::from_le_bytes(raw[40..44].try_into().unwrap()),
                raw_len: u32::from_le_bytes(raw[44..48].try_into().unwrap()),
                codec,
                base,
            };
            if entry.offset + u64::from(entry.stored_len) > bases_start as u64 {
                return Err(format!(
                    "chunk {} lies past the pack's body",
                    entry.chunk_id.to_hex()
                ));
            }
            Ok(entry)
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(PackTrailer { sealing, entries })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_packs_describe_themselves() {
        let mut builder = PackBuilder::new();
        builder.add(ChunkId([1; 32]), Codec::Raw, 3, b"abc", None);
        builder.add(ChunkId([2; 32]), Codec::Zstd, 100, b"zz", None);
        let pack = builder.seal();
        let trailer = read_trailer(pack.id, &pack.bytes).unwrap();
        assert_eq!(trailer.sealing, Sealing::Plain);
        let entries = trailer.entries;
        assert_eq!(entries, pack.entries);
        assert_eq!(entries[1].offset, 3);
        assert_eq!(&pack.bytes[3..5], b"zz");
        assert!(pack.id.object_key().starts_with("packs/"));
        let mut corrupted = pack.bytes.to_vec();
        corrupted[0] ^= 1;
        assert!(read_trailer(pack.id, &corrupted).is_err());
        assert!(object_matches_name(&pack.id.object_key(), &pack.bytes));
        assert!(!object_matches_name(&pack.id.object_key(), &corrupted));
        assert!(object_matches_name("health/canary-x", b"anything"));
    }

    #[test]
    fn appended_builders_keep_every_chunk_and_their_order() {
        for key in [None, Some(DataKey::generate())] {
            let mut first = PackBuilder::new();
            first.add(ChunkId([1; 32]), Codec::Raw, 5, b"alpha", None);
            let mut second = PackBuilder::new();
            second.add(ChunkId([2; 32]), Codec::Raw, 4, b"beta", None);
            second.add(
                ChunkId([3; 32]),
                Codec::ZstdDelta,
                50,
                b"gamma!",
                Some(ChunkId([1; 32])),
            );
            let mut shared = PackBuilder::new();
            assert_eq!(shared.append(first), 0..1);
            assert_eq!(shared.append(second), 1..3);
            assert_eq!(shared.append(PackBuilder::new()), 3..3);
            assert_eq!(shared.len(), 15);
            let pack = match &key {
                Some(key) => shared.seal_with(key),
                None => shared.seal(),
            };
            let trailer = read_trailer(pack.id, &pack.bytes).unwrap();
            assert_eq!(trailer.entries, pack.entries);
            let ids: Vec<u8> = trailer.entries.iter().map(|e| e.chunk_id.0[0]).collect();
            assert_eq!(ids, [1, 2, 3]);
            assert_eq!(trailer.entries[2].base, Some(ChunkId([1; 32])));
            for (entry, plain) in trailer.entries.iter().zip([&b"alpha"[..], b"beta", b"gamma!"]) {
                let stored = &pack.bytes[entry.offset as usize..][..entry.stored_len as usize];
                match &key {
                    Some(key) => assert_eq!(
                        key.open_chunk(&entry.chunk_id, entry.offset, stored).unwrap(),
                        plain
                    ),
                    None => assert_eq!(stored, plain),
                }
            }
        }
    }

    #[test]
    fn sealed_packs_hold_no_plaintext_and_every_chunk_opens_where_the_trailer_says() {
        let key = DataKey::generate();
        let chunks: Vec<(ChunkId, Vec<u8>)> = (0u8..5)
            .map(|i| {
                (
                    ChunkId([i; 32]),
                    format!("chunk number {i} says hello ")
                        .repeat(i as usize + 1)
                        .into_bytes(),
                )
            })
            .collect();
        let mut builder = PackBuilder::new();
        for (id, data) in &chunks {
            builder.add(*id, Codec::Raw, data.len() as u32, data, None);
        }
        let pack = builder.seal_with(&key);
        let trailer = read_trailer(pack.id, &pack.bytes).unwrap();
        assert_eq!(trailer.sealing, Sealing::Aes256Gcm);
        assert_eq!(trailer.entries, pack.entries);
        assert!(!pack.bytes.windows(11).any(|w| w == b"says hello "));
        for ((id, data), entry) in chunks.iter().zip(&trailer.entries) {
            assert_eq!(entry.stored_len as usize, data.len() + TAG_LEN);
            let stored = &pack.bytes[entry.offset as usize..][..entry.stored_len as usize];
            assert_eq!(&key.open_chunk(id, entry.offset, stored).unwrap(), data);
        }
        let mut cut = pack.bytes.to_vec();
        cut.pop();
        assert!(read_trailer(pack.id, &cut).is_err());
    }

    #[test]
    fn packs_with_deltas_name_each_base_and_stay_readable_sealed_or_not() {
        for key in [None, Some(DataKey::generate())] {
            let mut builder = PackBuilder::new();
            builder.add(ChunkId([1; 32]), Codec::Zstd, 100, b"first", None);
            builder.add(
                ChunkId([2; 32]),
                Codec::ZstdDelta,
                200,
                b"delta",
                Some(ChunkId([1; 32])),
            );
            builder.add(ChunkId([3; 32]), Codec::Raw, 3, b"raw", None);
            builder.add(
                ChunkId([4; 32]),
                Codec::ZstdDelta,
                300,
                b"another",
                Some(ChunkId([9; 32])),
            );
            let pack = match &key {
                Some(key) => builder.seal_with(key),
                None => builder.seal(),
            };
            assert!(pack.bytes.ends_with(MAGIC_V3));
            let trailer = read_trailer(pack.id, &pack.bytes).unwrap();
            assert_eq!(trailer.entries, pack.entries);
            let bases: Vec<Option<ChunkId>> = trailer.entries.iter().map(|e| e.base).collect();
            assert_eq!(
                bases,
                vec![None, Some(ChunkId([1; 32])), None, Some(ChunkId([9; 32]))]
            );
            let sealing = if key.is_some() {
                Sealing::Aes256Gcm
            } else {
                Sealing::Plain
            };
            assert_eq!(trailer.sealing, sealing);
        }
        // Packs without deltas are written as before.
        let mut builder = PackBuilder::new();
        builder.add(ChunkId([1; 32]), Codec::Raw, 3, b"abc", None);
        assert!(builder.seal().bytes.ends_with(MAGIC));
    }
}

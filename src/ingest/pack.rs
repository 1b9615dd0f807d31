//! Pack objects: many chunks written as one immutable object named by its own blake3 hash.
//!
//! Layout: the chunks' stored bytes back to back, then a trailer that makes a pack
//! self-describing (so the chunk index can be rebuilt from the object store alone):
//! for each chunk `id[32] | offset u64 | stored_len u32 | raw_len u32 | codec u8`, then the
//! entry count as u32 and the magic `ARTPACK1`. All integers little-endian.

use super::chunk::{ChunkId, Codec};
use bytes::Bytes;
use std::fmt;

const MAGIC: &[u8; 8] = b"ARTPACK1";
const TRAILER_ENTRY_LEN: usize = 32 + 8 + 4 + 4 + 1;

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
}

/// Accumulates encoded chunks until the pack is big enough to seal.
#[derive(Debug, Default)]
pub struct PackBuilder {
    body: Vec<u8>,
    entries: Vec<PackEntry>,
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

    pub fn len(&self) -> usize {
        self.body.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn add(&mut self, chunk_id: ChunkId, codec: Codec, raw_len: u32, stored: &[u8]) {
        self.entries.push(PackEntry {
            chunk_id,
            offset: self.body.len() as u64,
            stored_len: stored.len() as u32,
            raw_len,
            codec,
        });
        self.body.extend_from_slice(stored);
    }

    pub fn seal(mut self) -> SealedPack {
        for entry in &self.entries {
            self.body.extend_from_slice(&entry.chunk_id.0);
            self.body.extend_from_slice(&entry.offset.to_le_bytes());
            self.body.extend_from_slice(&entry.stored_len.to_le_bytes());
            self.body.extend_from_slice(&entry.raw_len.to_le_bytes());
            self.body.push(entry.codec as u8);
        }
        self.body
            .extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        self.body.extend_from_slice(MAGIC);
        let id = PackId(*blake3::hash(&self.body).as_bytes());
        SealedPack {
            id,
            bytes: Bytes::from(self.body),
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
pub fn read_trailer(expected: PackId, bytes: &[u8]) -> Result<Vec<PackEntry>, String> {
    if PackId(*blake3::hash(bytes).as_bytes()) != expected {
        return Err(format!("pack {expected:?} does not hash to its name"));
    }
    let footer_start = bytes
        .len()
        .checked_sub(12)
        .ok_or("pack shorter than its footer")?;
    if &bytes[footer_start + 4..] != MAGIC {
        return Err("pack magic missing".to_owned());
    }
    let count = u32::from_le_bytes(bytes[footer_start..footer_start + 4].try_into().unwrap()) as usize;
    let trailer_start = footer_start
        .checked_sub(count * TRAILER_ENTRY_LEN)
        .ok_or("pack trailer longer than the pack")?;
    bytes[trailer_start..footer_start]
        .chunks_exact(TRAILER_ENTRY_LEN)
        .map(|raw| {
            Ok(PackEntry {
                chunk_id: ChunkId::from_slice(&raw[..32]).expect("32 bytes"),
                offset: u64::from_le_bytes(raw[32..40].try_into().unwrap()),
                stored_len: u32::from_le_bytes(raw[40..44].try_into().unwrap()),
                raw_len: u32::from_le_bytes(raw[44..48].try_into().unwrap()),
                codec: Codec::from_u8(raw[48]).ok_or("unknown codec in pack trailer")?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_packs_describe_themselves() {
        let mut builder = PackBuilder::new();
        builder.add(ChunkId([1; 32]), Codec::Raw, 3, b"abc");
        builder.add(ChunkId([2; 32]), Codec::Zstd, 100, b"zz");
        let pack = builder.seal();
        let entries = read_trailer(pack.id, &pack.bytes).unwrap();
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
}

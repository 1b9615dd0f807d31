//! A version's manifest: the ordered list of chunks that make up its content.
//! Encoded compactly (36 bytes a chunk) because large artifacts have thousands of chunks.

use super::chunk::ChunkId;

const FORMAT_VERSION: u8 = 1;
const ENTRY_LEN: usize = 36;

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
        self.entries().map(|e| u64::from(e.raw_len)).sum()
    }

    /// The stored form.
    pub fn encoded(&self) -> &bytes::Bytes {
        &self.encoded
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
}

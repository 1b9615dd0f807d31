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

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    pub entries: Vec<ManifestEntry>,
}

impl Manifest {
    pub fn total_len(&self) -> u64 {
        self.entries.iter().map(|e| u64::from(e.raw_len)).sum()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.entries.len() * ENTRY_LEN);
        out.push(FORMAT_VERSION);
        for entry in &self.entries {
            out.extend_from_slice(&entry.chunk_id.0);
            out.extend_from_slice(&entry.raw_len.to_le_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let Some((&format, body)) = bytes.split_first() else {
            return Err("empty manifest".to_owned());
        };
        if format != FORMAT_VERSION {
            return Err(format!("unknown manifest format {format}"));
        }
        if body.len() % ENTRY_LEN != 0 {
            return Err(format!("manifest body of {} bytes is truncated", body.len()));
        }
        let entries = body
            .chunks_exact(ENTRY_LEN)
            .map(|raw| ManifestEntry {
                chunk_id: ChunkId::from_slice(&raw[..32]).expect("32 bytes"),
                raw_len: u32::from_le_bytes(raw[32..].try_into().expect("4 bytes")),
            })
            .collect();
        Ok(Self { entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let manifest = Manifest {
            entries: vec![
                ManifestEntry {
                    chunk_id: ChunkId([1; 32]),
                    raw_len: 65536,
                },
                ManifestEntry {
                    chunk_id: ChunkId([2; 32]),
                    raw_len: 17,
                },
            ],
        };
        let decoded = Manifest::decode(&manifest.encode()).unwrap();
        assert_eq!(decoded, manifest);
        assert_eq!(decoded.total_len(), 65553);
        assert!(Manifest::decode(&manifest.encode()[..40]).is_err());
    }
}

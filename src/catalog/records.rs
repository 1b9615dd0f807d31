//! Rows as the catalog returns them, and the inputs of its writes.

use crate::ingest::{ChunkId, Codec, PackEntry};
use std::collections::BTreeMap;

/// Tenant and project: every catalog read and write is scoped by both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub tenant: String,
    pub project: String,
}

impl Scope {
    pub fn new(tenant: impl Into<String>, project: impl Into<String>) -> Self {
        Self {
            tenant: tenant.into(),
            project: project.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ArtifactRecord {
    pub id: String,
    pub tenant: String,
    pub project: String,
    pub artifact_type: String,
    pub name: String,
    pub description: String,
    /// JSON array of strings.
    pub tags: String,
    /// JSON array of strings.
    pub categories: String,
    /// JSON object of strings.
    pub metadata: String,
    pub latest_version: String,
    pub version_count: i64,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub deleted_at: Option<i64>,
}

impl ArtifactRecord {
    pub fn tag_list(&self) -> Vec<String> {
        serde_json::from_str(&self.tags).unwrap_or_default()
    }

    pub fn category_list(&self) -> Vec<String> {
        serde_json::from_str(&self.categories).unwrap_or_default()
    }

    pub fn metadata_map(&self) -> BTreeMap<String, String> {
        serde_json::from_str(&self.metadata).unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct VersionRecord {
    pub artifact_id: String,
    pub version: String,
    pub seq: i64,
    pub size: i64,
    pub stored_size: i64,
    pub new_stored_size: i64,
    pub blake3: String,
    pub chunk_count: i64,
    pub created_by: String,
    pub created_at: i64,
    pub change_message: String,
    /// JSON object of strings.
    pub metadata: String,
    pub content_type: String,
    /// JSON of `ingest::extract::Extracted`.
    pub extracted: String,
}

impl VersionRecord {
    pub fn extracted(&self) -> crate::ingest::extract::Extracted {
        serde_json::from_str(&self.extracted).unwrap_or_default()
    }

    pub fn metadata_map(&self) -> BTreeMap<String, String> {
        serde_json::from_str(&self.metadata).unwrap_or_default()
    }
}

/// Where a chunk's stored bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkLocation {
    pub pack_id: String,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub codec: Codec,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PackRecord {
    pub pack_id: String,
    pub tenant: String,
    pub size: i64,
    pub upload_id: String,
    pub state: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OutboxEvent {
    pub seq: i64,
    pub event_type: String,
    pub tenant: String,
    pub project: String,
    pub artifact_id: String,
    pub version: String,
    pub created_at: i64,
}

/// A new artifact's own fields.
#[derive(Debug, Clone)]
pub struct NewArtifact {
    pub id: String,
    pub scope: Scope,
    pub artifact_type: String,
    pub name: String,
    pub description: String,
    pub tags: Vec<String>,
    pub categories: Vec<String>,
}

/// New tags and categories, replacing the old ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels {
    pub tags: Vec<String>,
    pub categories: Vec<String>,
}

/// Everything one version commit writes, in one transaction.
#[derive(Debug, Clone)]
pub struct NewVersion {
    pub version: String,
    pub size: u64,
    pub stored_size: u64,
    pub new_stored_size: u64,
    pub blake3: String,
    pub chunk_count: u64,
    pub created_by: String,
    pub created_at: i64,
    pub change_message: String,
    pub metadata: BTreeMap<String, String>,
    pub content_type: String,
    /// JSON of `ingest::extract::Extracted`.
    pub extracted: String,
    pub manifest: Vec<u8>,
    /// Chunks this upload wrote, with their places in its packs.
    pub new_chunks: Vec<(String, PackEntry)>,
    /// Packs the upload wrote; they become committed with the version.
    pub packs: Vec<String>,
    /// Replaces the artifact's tags and categories when set.
    pub labels: Option<Labels>,
}

pub fn chunk_id_from_row(bytes: &[u8]) -> Option<ChunkId> {
    ChunkId::from_slice(bytes)
}

//! Rows as the database returns them, converted once into domain types, and the inputs of
//! the catalog's writes.

pub use crate::domain::Scope;
use crate::domain::{Alias, Artifact, ArtifactId, ArtifactVersion, LifecycleState, Timestamp, Transition};
use crate::ingest::{ChunkId, Codec};
use std::collections::BTreeMap;

/// An `artifacts` row. Stays inside the catalog; callers get [`Artifact`].
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct ArtifactRecord {
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

impl From<ArtifactRecord> for Artifact {
    fn from(row: ArtifactRecord) -> Self {
        Artifact {
            id: ArtifactId::from_stored(row.id),
            scope: Scope::new(row.tenant, row.project),
            artifact_type: row.artifact_type,
            name: row.name,
            description: row.description,
            tags: serde_json::from_str(&row.tags).unwrap_or_default(),
            categories: serde_json::from_str(&row.categories).unwrap_or_default(),
            metadata: serde_json::from_str(&row.metadata).unwrap_or_default(),
            latest_version: row.latest_version,
            version_count: row.version_count.max(0) as u64,
            created_by: row.created_by,
            created_at: Timestamp(row.created_at),
            updated_at: Timestamp(row.updated_at),
            deleted_at: row.deleted_at.map(Timestamp),
            linked: None,
        }
    }
}

/// An `artifacts` row as seen from a project, with the link it was reached through when
/// that project is not its own.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct SeenArtifactRecord {
    #[sqlx(flatten)]
    pub artifact: ArtifactRecord,
    pub link_project: Option<String>,
    pub link_by: Option<String>,
    pub link_at: Option<i64>,
}

impl From<SeenArtifactRecord> for Artifact {
    fn from(row: SeenArtifactRecord) -> Self {
        let tenant = row.artifact.tenant.clone();
        let mut artifact = Artifact::from(row.artifact);
        artifact.linked = row.link_project.map(|project| crate::domain::ArtifactLink {
            scope: Scope::new(tenant, project),
            linked_by: row.link_by.unwrap_or_default(),
            linked_at: Timestamp(row.link_at.unwrap_or_default()),
        });
        artifact
    }
}

/// A pack an upload staged, and the generation of the row it staged (see
/// [`super::Staged`]): the commit refuses a row of another generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedPack {
    pub pack_id: String,
    pub generation: i64,
}

/// A `versions` row (without the manifest). Stays inside the catalog; callers get
/// [`ArtifactVersion`].
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct VersionRecord {
    pub artifact_id: String,
    pub version: String,
    pub seq: i64,
    pub size: i64,
    pub stored_size: i64,
    pub new_stored_size: i64,
    pub dedup_saved_bytes: i64,
    pub delta_saved_bytes: i64,
    pub blake3: String,
    pub chunk_count: i64,
    pub created_by: String,
    pub created_at: i64,
    pub change_message: String,
    /// JSON object of strings.
    pub metadata: String,
    pub content_type: String,
    /// JSON of `ingest::extract::Extracted`, or empty when the document is shared...
    pub extracted: String,
    /// ...then the shared document (compressed, line count 0)...
    pub extracted_shared: Option<Vec<u8>>,
    /// ...and the version's line count.
    pub extracted_lines: Option<i64>,
    pub state: String,
    pub run_id: String,
    pub run_workflow: String,
    pub run_step: String,
    pub run_agent: String,
}

/// A state column; the schema's CHECK constraint admits only the four names.
fn stored_state(text: &str) -> LifecycleState {
    LifecycleState::parse("state", text).unwrap_or(LifecycleState::Draft)
}

impl From<VersionRecord> for ArtifactVersion {
    fn from(row: VersionRecord) -> Self {
        ArtifactVersion {
            artifact_id: ArtifactId::from_stored(row.artifact_id),
            version: row.version,
            seq: row.seq,
            size: row.size.max(0) as u64,
            stored_size: row.stored_size.max(0) as u64,
            new_stored_size: row.new_stored_size.max(0) as u64,
            dedup_saved_bytes: row.dedup_saved_bytes.max(0) as u64,
            delta_saved_bytes: row.delta_saved_bytes.max(0) as u64,
            blake3: row.blake3,
            chunk_count: row.chunk_count.max(0) as u64,
            created_by: row.created_by,
            created_at: Timestamp(row.created_at),
            change_message: row.change_message,
            metadata: serde_json::from_str(&row.metadata).unwrap_or_default(),
            content_type: row.content_type,
            extracted: super::extracted::joined(
                &row.extracted,
                row.extracted_shared.as_deref(),
                row.extracted_lines,
            ),
            state: stored_state(&row.state),
            produced_by: (!row.run_id.is_empty()).then_some(crate::domain::run::WorkflowRun {
                run_id: row.run_id,
                workflow: row.run_workflow,
                step: row.run_step,
                agent: row.run_agent,
            }),
        }
    }
}

/// A version's manifest, for whole-catalog checks: or why it cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredManifest {
    pub scope: Scope,
    pub artifact_id: String,
    pub version: String,
    pub seq: i64,
    pub manifest: std::result::Result<crate::ingest::Manifest, String>,
}

/// Where a chunk's stored bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkLocation {
    pub pack_id: String,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub codec: Codec,
    /// The pack's data key when the pack is sealed.
    pub key: Option<crate::domain::encryption::PackKey>,
    /// A delta chunk's base, and how many bases decoding it goes through.
    pub base: Option<crate::ingest::ChunkId>,
    pub depth: u8,
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
    /// JSON object: what the event changed beyond artifact and version.
    pub detail: String,
}

/// A `version_transitions` row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct TransitionRecord {
    pub version: String,
    pub from_state: Option<String>,
    pub to_state: String,
    pub actor: String,
    pub reason: String,
    pub at: i64,
}

impl From<TransitionRecord> for Transition {
    fn from(row: TransitionRecord) -> Self {
        Transition {
            from: row.from_state.as_deref().map(stored_state),
            to: stored_state(&row.to_state),
            actor: row.actor,
            reason: row.reason,
            at: Timestamp(row.at),
        }
    }
}

/// An `aliases` row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct AliasRecord {
    pub name: String,
    pub version: String,
    pub updated_by: String,
    pub updated_at: i64,
}

impl From<AliasRecord> for Alias {
    fn from(row: AliasRecord) -> Self {
        Alias {
            name: row.name,
            version: row.version,
            updated_by: row.updated_by,
            updated_at: Timestamp(row.updated_at),
            maintained: false,
        }
    }
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
#[derive(Debug)]
pub struct NewVersion {
    pub version: String,
    pub size: u64,
    pub stored_size: u64,
    pub new_stored_size: u64,
    /// Bytes of the content that were stored already (by earlier versions or repeats).
    pub dedup_saved_bytes: u64,
    /// Bytes the version's delta chunks saved against storing them on their own.
    pub delta_saved_bytes: u64,
    pub blake3: String,
    pub chunk_count: u64,
    pub created_by: String,
    pub created_at: i64,
    pub change_message: String,
    pub metadata: BTreeMap<String, String>,
    pub content_type: String,
    /// JSON of `ingest::extract::Extracted`.
    pub extracted: String,
    pub manifest: crate::ingest::NewManifest,
    /// Chunks this upload wrote, with their places in its packs.
    pub new_chunks: crate::ingest::NewChunks,
    /// Chunks of the content stored before this upload (each once): they must still be
    /// indexed when the version commits.
    pub reused_chunks: Vec<crate::ingest::ChunkId>,
    /// Packs the upload wrote; they become committed with the version.
    pub packs: Vec<StagedPack>,
    /// Replaces the artifact's tags and categories when set.
    pub labels: Option<Labels>,
    /// Draft or review.
    pub state: LifecycleState,
    /// Declared dependencies, their targets resolved.
    pub dependencies: Vec<crate::domain::dependency::Dependency>,
    pub produced_by: Option<crate::domain::run::WorkflowRun>,
}

pub fn chunk_id_from_row(bytes: &[u8]) -> Option<ChunkId> {
    ChunkId::from_slice(bytes)
}

/// One chunk's location as `Catalog::chunk_locations` has the database aggregate it:
/// chunk id, pack id, offset, stored length, raw length, codec, base chunk id, delta depth,
/// key id, wrapped key; ids and keys in hex, absent ones as `null` or `""`.
#[derive(serde::Deserialize)]
pub(super) struct LocationJson(
    String,
    String,
    i64,
    i64,
    i64,
    i64,
    Option<String>,
    i64,
    Option<String>,
    Option<String>,
);

impl LocationJson {
    /// The typed location, or what in the row is not one.
    pub(super) fn decode(self) -> std::result::Result<(ChunkId, ChunkLocation), String> {
        let LocationJson(id, pack_id, offset, stored_len, raw_len, codec, base, depth, key_id, wrapped) =
            self;
        let chunk_id = |field: &str, text: &str| {
            ChunkId::from_hex(text).ok_or_else(|| format!("{field} {text:?} is not a 32-byte hex id"))
        };
        let length = |field: &str, value: i64| {
            u32::try_from(value).map_err(|_| format!("{field} {value} is out of range"))
        };
        let present = |text: Option<String>| text.filter(|text| !text.is_empty());
        let id = chunk_id("chunk id", &id)?;
        let location = ChunkLocation {
            offset: u64::try_from(offset).map_err(|_| format!("pack offset {offset} is negative"))?,
            stored_len: length("stored length", stored_len)?,
            raw_len: length("raw length", raw_len)?,
            codec: u8::try_from(codec)
                .ok()
                .and_then(Codec::from_u8)
                .ok_or_else(|| format!("codec {codec} of chunk {} is unknown", id.to_hex()))?,
            key: present(key_id)
                .map(|key_id| -> std::result::Result<_, String> {
                    let wrapped = present(wrapped)
                        .map(|text| {
                            hex::decode(&text)
                                .map_err(|_| format!("wrapped key of pack {pack_id} is not hex"))
                        })
                        .transpose()?;
                    Ok(crate::domain::encryption::PackKey { key_id, wrapped })
                })
                .transpose()?,
            base: present(base)
                .map(|text| chunk_id("base chunk id", &text))
                .transpose()?,
            depth: depth.clamp(0, 255) as u8,
            pack_id,
        };
        Ok((id, location))
    }
}

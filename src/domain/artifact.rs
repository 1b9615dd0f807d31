//! Artifacts and their versions as everything above the catalog sees them: typed ids,
//! scopes and times, parsed labels and metadata. The catalog converts its rows into these
//! once, where it reads them.

use super::error::{Error, Result};
use super::lifecycle::LifecycleState;
use super::names::quoted;
use crate::ingest::extract::Extracted;
use std::collections::BTreeMap;
use std::fmt;

/// Tenant and project: every read and write is scoped by both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
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

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.project)
    }
}

/// A point in time, in microseconds since the Unix epoch (the catalog's unit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Self {
        Self(super::now_micros())
    }

    pub fn as_micros(self) -> i64 {
        self.0
    }

    /// The time as RFC 3339 in UTC, for messages people read.
    pub fn to_rfc3339(self) -> String {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1000)
            .ok()
            .and_then(|at| at.format(&time::format_description::well_known::Rfc3339).ok())
            .unwrap_or_else(|| format!("{} µs after the epoch", self.0))
    }
}

/// An artifact's identity: a UUID, kept in its text form.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ArtifactId(String);

impl ArtifactId {
    /// A new, time-ordered id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }

    /// An id a caller sent in `field`.
    pub fn parse(field: &'static str, text: &str) -> Result<Self> {
        uuid::Uuid::try_parse(text)
            .map(|_| Self(text.to_owned()))
            .map_err(|_| Error::invalid(field, format!("{} is not an artifact id (a UUID)", quoted(text))))
    }

    /// An id as the catalog stored it.
    pub fn from_stored(text: String) -> Self {
        Self(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for ArtifactId {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ArtifactId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for ArtifactId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for ArtifactId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for ArtifactId {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

impl From<ArtifactId> for String {
    fn from(id: ArtifactId) -> String {
        id.0
    }
}

/// An artifact: a named, typed thing in a project whose content is kept as versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    pub id: ArtifactId,
    pub scope: Scope,
    pub artifact_type: String,
    pub name: String,
    pub description: String,
    pub tags: Vec<String>,
    pub categories: Vec<String>,
    /// Caller metadata as of the latest version.
    pub metadata: BTreeMap<String, String>,
    pub latest_version: String,
    pub version_count: u64,
    pub created_by: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Set while the artifact is soft-deleted.
    pub deleted_at: Option<Timestamp>,
    /// Set when it was reached through a read-only link from another project; `scope` is
    /// then where it lives, its origin.
    pub linked: Option<ArtifactLink>,
}

impl Artifact {
    /// Where it was reached: the project it is linked into, or its own.
    pub fn seen_in(&self) -> &Scope {
        self.linked.as_ref().map_or(&self.scope, |link| &link.scope)
    }
}

/// A read-only link that makes an artifact visible in another project of its tenant,
/// without copying, under the artifact's own type and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactLink {
    /// The project it is linked into.
    pub scope: Scope,
    pub linked_by: String,
    pub linked_at: Timestamp,
}

/// What holds a type and name in a project, so that nothing else may take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameHolder {
    Artifact,
    /// Soft-deleted: it keeps its name while it can be restored.
    DeletedArtifact,
    /// A link to an artifact of another project.
    Link {
        artifact_id: String,
        origin: Scope,
    },
}

impl NameHolder {
    /// The refusal of another artifact or link under the same type and name in `scope`.
    pub fn conflict(&self, scope: &Scope, artifact_type: &str, name: &str) -> Error {
        let what = format!(
            "an artifact of type {} named {}",
            quoted(artifact_type),
            quoted(name)
        );
        Error::AlreadyExists(match self {
            Self::Artifact => format!("{what} already exists in {scope}"),
            Self::DeletedArtifact => {
                format!("{what} already exists in {scope} (a deleted one keeps its name until it is purged)")
            }
            Self::Link { origin, artifact_id } => format!(
                "{what} is already linked into {scope} from project {} (unlink artifact {artifact_id:?} to free the name)",
                quoted(&origin.project)
            ),
        })
    }
}

/// What stored versions hold and store, and what deduplication, delta encoding and
/// compression saved: `logical = stored + dedup_saved + delta_saved + compression_saved`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageStats {
    pub versions: u64,
    pub logical_bytes: u64,
    /// Bytes the versions added to the store (their new chunks, as stored).
    pub stored_bytes: u64,
    pub dedup_saved_bytes: u64,
    pub delta_saved_bytes: u64,
}

impl StorageStats {
    /// What compressing the new chunks on their own saved: the rest of the logical size.
    pub fn compression_saved_bytes(&self) -> u64 {
        self.logical_bytes
            .saturating_sub(self.stored_bytes)
            .saturating_sub(self.dedup_saved_bytes)
            .saturating_sub(self.delta_saved_bytes)
    }
}

/// One immutable version of an artifact.
#[derive(Debug, Clone, PartialEq)]
pub struct ArtifactVersion {
    pub artifact_id: ArtifactId,
    pub version: String,
    /// Orders an artifact's versions, newest highest; pages of versions continue after it.
    pub seq: i64,
    /// Logical size of the content.
    pub size: u64,
    /// Bytes the content occupies in the store after compression, shared chunks included.
    pub stored_size: u64,
    /// Bytes this version added to the store.
    pub new_stored_size: u64,
    /// Bytes of the content that were stored already (by earlier versions or repeats).
    pub dedup_saved_bytes: u64,
    /// Bytes its delta chunks saved against storing them on their own.
    pub delta_saved_bytes: u64,
    /// Lowercase hex blake3 of the whole content.
    pub blake3: String,
    pub chunk_count: u64,
    pub created_by: String,
    pub created_at: Timestamp,
    pub change_message: String,
    pub metadata: BTreeMap<String, String>,
    pub content_type: String,
    /// What was extracted from the content on upload.
    pub extracted: Extracted,
    pub state: LifecycleState,
    /// The workflow run that produced it, when it said so.
    pub produced_by: Option<super::run::WorkflowRun>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_ids_must_be_uuids() {
        let id = ArtifactId::generate();
        assert_eq!(ArtifactId::parse("artifact_id", id.as_str()).unwrap(), id);
        let error = ArtifactId::parse("artifact_id", "../etc")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("artifact_id:") && error.contains("../etc"),
            "{error}"
        );
    }
}

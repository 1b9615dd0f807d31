//! Backups as data: the self-describing export of artifacts (an [`ArtifactImage`] each),
//! the object format it is stored in, the state of an artifact at a point in time, and the
//! plan that turns what a catalog holds into what a restore wants. No I/O here.
//!
//! Object format: `ARTBKUP1`, then the blake3 hash (32 bytes) of the rest, then the body as
//! zstd-compressed JSON. A flipped bit anywhere fails the hash before anything is parsed.

use super::{Error, LifecycleState, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

pub const MAGIC: &[u8; 8] = b"ARTBKUP1";
/// The body's format; a reader refuses a newer one by name.
pub const FORMAT: u32 = 1;
/// Where backup objects live on the store.
pub const PREFIX: &str = "backups/";

/// The store key of one object of a backup.
pub fn object_key(tenant: &str, project: &str, backup_id: &str) -> String {
    format!("{PREFIX}{tenant}/{project}/{backup_id}.artbkp")
}

mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

mod base64_opt {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, serializer: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => {
                serializer.serialize_some(&base64::engine::general_purpose::STANDARD.encode(bytes))
            }
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(deserializer)?
            .map(|text| {
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(serde::de::Error::custom)
            })
            .transpose()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitionImage {
    pub from: Option<LifecycleState>,
    pub to: LifecycleState,
    pub actor: String,
    pub reason: String,
    pub at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DependencyImage {
    pub position: i64,
    pub target_id: String,
    pub requirement: String,
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionImage {
    pub version: String,
    pub seq: i64,
    pub size: i64,
    pub stored_size: i64,
    pub new_stored_size: i64,
    /// Absent in backups written before savings were recorded.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dedup_saved_bytes: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub delta_saved_bytes: i64,
    pub blake3: String,
    pub chunk_count: i64,
    pub created_by: String,
    pub created_at: i64,
    pub change_message: String,
    pub metadata: BTreeMap<String, String>,
    pub content_type: String,
    /// What was extracted from the content on upload (the catalog's JSON, kept as is).
    pub extracted: String,
    pub state: LifecycleState,
    pub run_id: String,
    pub run_workflow: String,
    pub run_step: String,
    pub run_agent: String,
    pub deleted_at: Option<i64>,
    pub deleted_by: String,
    #[serde(with = "base64_bytes")]
    pub manifest: Vec<u8>,
    pub transitions: Vec<TransitionImage>,
    pub dependencies: Vec<DependencyImage>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AliasImage {
    pub name: String,
    pub version: String,
    pub updated_by: String,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldImage {
    /// Empty for a hold on the whole artifact.
    pub version: String,
    pub reason: String,
    pub held_by: String,
    pub held_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantImage {
    pub subject_kind: String,
    pub subject: String,
    pub role: String,
    pub granted_by: String,
    pub granted_at: i64,
}

/// One artifact with everything the catalog knows of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactImage {
    pub id: String,
    pub tenant: String,
    pub project: String,
    pub artifact_type: String,
    pub name: String,
    pub description: String,
    pub tags: Vec<String>,
    pub categories: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub latest_version: String,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub deleted_at: Option<i64>,
    pub deleted_by: String,
    /// In `seq` order; versions in the trash included.
    pub versions: Vec<VersionImage>,
    pub aliases: Vec<AliasImage>,
    pub holds: Vec<HoldImage>,
    pub grants: Vec<GrantImage>,
}

impl ArtifactImage {
    pub fn version(&self, version: &str) -> Option<&VersionImage> {
        self.versions.iter().find(|v| v.version == version)
    }

    pub fn logical_bytes(&self) -> u64 {
        self.versions.iter().map(|v| v.size.max(0) as u64).sum()
    }
}

/// A chunk index row: where a chunk's bytes are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkImage {
    /// Hex.
    pub chunk_id: String,
    pub pack_id: String,
    pub offset: i64,
    pub stored_length: i64,
    pub raw_length: i64,
    pub codec: i64,
    /// A delta chunk's base (hex), itself among the backup's chunks. Absent in backups of
    /// content without deltas, and in those written before deltas existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub depth: i64,
    /// The chunk's resemblance sketch (its keyed features), so restored chunks are
    /// found as delta bases again. Absent for chunks without one and in older backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resemblance: Option<[i64; 4]>,
}

fn is_zero(value: &i64) -> bool {
    *value == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackImage {
    pub pack_id: String,
    pub size: i64,
    pub created_at: i64,
    pub key_id: Option<String>,
    #[serde(with = "base64_opt")]
    pub wrapped_key: Option<Vec<u8>>,
}

/// A tenant key as the catalog keeps it: wrapped by a master key, never in the clear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantKeyImage {
    pub key_id: String,
    pub state: String,
    pub master_key_id: Option<String>,
    #[serde(with = "base64_opt")]
    pub wrapped: Option<Vec<u8>>,
    pub created_at: i64,
    pub retired_at: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupKind {
    Tenant,
    Project,
    Artifact,
}

impl BackupKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tenant => "tenant",
            Self::Project => "project",
            Self::Artifact => "artifact",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "tenant" => Some(Self::Tenant),
            "project" => Some(Self::Project),
            "artifact" => Some(Self::Artifact),
            _ => None,
        }
    }
}

/// The contents of one backup object: one project's share of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupBody {
    pub format: u32,
    pub backup_id: String,
    pub kind: BackupKind,
    pub trigger: String,
    pub tenant: String,
    /// The project this object covers.
    pub project: String,
    /// Set for a backup of one artifact.
    pub artifact_id: String,
    pub created_by: String,
    pub created_at: i64,
    /// The installation's chunk-id secret (hex): chunk ids mean something only with it.
    pub service_secret: String,
    pub artifacts: Vec<ArtifactImage>,
    pub chunks: Vec<ChunkImage>,
    pub packs: Vec<PackImage>,
    pub tenant_keys: Vec<TenantKeyImage>,
}

impl BackupBody {
    pub fn versions(&self) -> u64 {
        self.artifacts.iter().map(|a| a.versions.len() as u64).sum()
    }

    pub fn logical_bytes(&self) -> u64 {
        self.artifacts.iter().map(ArtifactImage::logical_bytes).sum()
    }

    pub fn pack_bytes(&self) -> u64 {
        self.packs.iter().map(|p| p.size.max(0) as u64).sum()
    }
}

/// The object's bytes.
pub fn encode(body: &BackupBody) -> Result<Vec<u8>> {
    let json = serde_json::to_vec(body).map_err(|e| Error::internal(format!("encoding a backup: {e}")))?;
    let compressed =
        zstd::bulk::compress(&json, 3).map_err(|e| Error::internal(format!("compressing a backup: {e}")))?;
    let mut out = Vec::with_capacity(MAGIC.len() + 32 + compressed.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(blake3::hash(&compressed).as_bytes());
    out.extend_from_slice(&compressed);
    Ok(out)
}

/// The largest body a backup object may expand to (a bound against a corrupt length).
const MAX_BODY_BYTES: usize = 8 << 30;

/// The body of a backup object; DATA_LOSS naming `key` when it is not intact.
pub fn decode(key: &str, bytes: &[u8]) -> Result<BackupBody> {
    let corrupt = |why: String| Error::DataLoss(format!("backup object {key} is not intact: {why}"));
    if bytes.len() < MAGIC.len() + 32 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(corrupt("it does not start with the backup header".to_owned()));
    }
    let (hash, compressed) = bytes[MAGIC.len()..].split_at(32);
    if blake3::hash(compressed).as_bytes() != hash {
        return Err(corrupt("its checksum does not match its contents".to_owned()));
    }
    let json =
        zstd::stream::decode_all(compressed).map_err(|e| corrupt(format!("it does not decompress ({e})")))?;
    if json.len() > MAX_BODY_BYTES {
        return Err(corrupt("it is larger than any backup".to_owned()));
    }
    let format: serde_json::Value =
        serde_json::from_slice(&json).map_err(|e| corrupt(format!("its body is not JSON ({e})")))?;
    let version = format.get("format").and_then(|v| v.as_u64()).unwrap_or(0);
    if version != u64::from(FORMAT) {
        return Err(Error::FailedPrecondition(format!(
            "backup object {key} has format {version}; this build reads format {FORMAT}"
        )));
    }
    serde_json::from_value(format).map_err(|e| corrupt(format!("its body does not parse ({e})")))
}

// ---- point in time -----------------------------------------------------------------------

/// A version in the trash, as the journal records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrashedImage {
    pub version: String,
    pub deleted_at: i64,
    pub deleted_by: String,
}

/// An artifact's changeable state after one change, as the journal keeps it. With the
/// versions (immutable, each with its creation time) and their transitions, it gives the
/// artifact as it was at any time the journal reaches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalState {
    pub description: String,
    pub tags: Vec<String>,
    pub categories: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub latest_version: String,
    pub deleted_at: Option<i64>,
    pub deleted_by: String,
    pub aliases: Vec<AliasImage>,
    pub trashed: Vec<TrashedImage>,
}

/// The artifact as it was at `at`, from its image now and the journal's last entry at or
/// before `at`. `None` when it did not exist then.
pub fn image_at(now: &ArtifactImage, journal: &JournalState, at: i64) -> Option<ArtifactImage> {
    if now.created_at > at {
        return None;
    }
    let trashed: BTreeMap<&str, &TrashedImage> =
        journal.trashed.iter().map(|t| (t.version.as_str(), t)).collect();
    let mut versions = Vec::new();
    for version in now.versions.iter().filter(|v| v.created_at <= at) {
        let transitions: Vec<TransitionImage> = version
            .transitions
            .iter()
            .filter(|t| t.at <= at)
            .cloned()
            .collect();
        let state = transitions.last().map_or(version.state, |t| t.to);
        let (deleted_at, deleted_by) = match trashed.get(version.version.as_str()) {
            Some(t) => (Some(t.deleted_at), t.deleted_by.clone()),
            None => (None, String::new()),
        };
        versions.push(VersionImage {
            state,
            transitions,
            deleted_at,
            deleted_by,
            ..version.clone()
        });
    }
    Some(ArtifactImage {
        description: journal.description.clone(),
        tags: journal.tags.clone(),
        categories: journal.categories.clone(),
        metadata: journal.metadata.clone(),
        latest_version: journal.latest_version.clone(),
        deleted_at: journal.deleted_at,
        deleted_by: journal.deleted_by.clone(),
        aliases: journal.aliases.clone(),
        versions,
        ..now.clone()
    })
}

// ---- restore plans -----------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepKind {
    CreateArtifact,
    SetFields,
    AddVersion,
    SetState,
    TrashVersion,
    UntrashVersion,
    SetAliases,
    DeleteArtifact,
    UndeleteArtifact,
    Skip,
}

/// One change a restore makes to one artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreStep {
    pub kind: StepKind,
    /// The version it is about; empty for the artifact.
    pub version: String,
    pub from_state: Option<LifecycleState>,
    pub to_state: Option<LifecycleState>,
    pub detail: String,
}

impl RestoreStep {
    fn of(kind: StepKind, version: &str, detail: impl Into<String>) -> Self {
        Self {
            kind,
            version: version.to_owned(),
            from_state: None,
            to_state: None,
            detail: detail.into(),
        }
    }
}

fn alias_set(aliases: &[AliasImage]) -> BTreeSet<(&str, &str)> {
    aliases
        .iter()
        .map(|a| (a.name.as_str(), a.version.as_str()))
        .collect()
}

/// Versions both images have under the same name but with other content: a restore onto
/// them would mix two histories.
pub fn conflicting_versions(current: &ArtifactImage, wanted: &ArtifactImage) -> Vec<String> {
    wanted
        .versions
        .iter()
        .filter(|v| {
            current
                .version(&v.version)
                .is_some_and(|have| have.blake3 != v.blake3)
        })
        .map(|v| v.version.clone())
        .collect()
}

/// What turns `current` (the catalog's artifact, if any) into `wanted`. Versions the
/// wanted state does not have are moved to the trash, never removed: a restore loses
/// nothing, and a restore of a later state brings them back.
pub fn plan_restore(current: Option<&ArtifactImage>, wanted: &ArtifactImage) -> Vec<RestoreStep> {
    let mut steps = Vec::new();
    let Some(current) = current else {
        steps.push(RestoreStep::of(
            StepKind::CreateArtifact,
            "",
            if wanted.deleted_at.is_some() {
                "created in the trash, as it was"
            } else {
                "created"
            },
        ));
        for version in &wanted.versions {
            steps.push(RestoreStep {
                to_state: Some(version.state),
                ..RestoreStep::of(
                    StepKind::AddVersion,
                    &version.version,
                    if version.deleted_at.is_some() {
                        "added in the trash, as it was"
                    } else {
                        "added"
                    },
                )
            });
        }
        if !wanted.aliases.is_empty() {
            steps.push(RestoreStep::of(
                StepKind::SetAliases,
                "",
                describe_aliases(&wanted.aliases),
            ));
        }
        return steps;
    };
    match (current.deleted_at, wanted.deleted_at) {
        (Some(_), None) => steps.push(RestoreStep::of(
            StepKind::UndeleteArtifact,
            "",
            "taken out of the trash",
        )),
        (None, Some(_)) => steps.push(RestoreStep::of(
            StepKind::DeleteArtifact,
            "",
            "moved to the trash, as it was",
        )),
        _ => {}
    }
    let mut changed = Vec::new();
    if current.description != wanted.description {
        changed.push("description");
    }
    if current.tags != wanted.tags {
        changed.push("tags");
    }
    if current.categories != wanted.categories {
        changed.push("categories");
    }
    if current.metadata != wanted.metadata {
        changed.push("metadata");
    }
    if current.latest_version != wanted.latest_version {
        changed.push("latest version");
    }
    if !changed.is_empty() {
        steps.push(RestoreStep::of(StepKind::SetFields, "", changed.join(", ")));
    }
    for version in &wanted.versions {
        match current.version(&version.version) {
            None => steps.push(RestoreStep {
                to_state: Some(version.state),
                ..RestoreStep::of(StepKind::AddVersion, &version.version, "added")
            }),
            Some(have) => {
                if have.state != version.state {
                    steps.push(RestoreStep {
                        from_state: Some(have.state),
                        to_state: Some(version.state),
                        ..RestoreStep::of(
                            StepKind::SetState,
                            &version.version,
                            format!("{} → {}", have.state.as_str(), version.state.as_str()),
                        )
                    });
                }
                match (have.deleted_at, version.deleted_at) {
                    (Some(_), None) => steps.push(RestoreStep::of(
                        StepKind::UntrashVersion,
                        &version.version,
                        "taken out of the trash",
                    )),
                    (None, Some(_)) => steps.push(RestoreStep::of(
                        StepKind::TrashVersion,
                        &version.version,
                        "moved to the trash, as it was",
                    )),
                    _ => {}
                }
            }
        }
    }
    for have in &current.versions {
        if have.deleted_at.is_none() && wanted.version(&have.version).is_none() {
            steps.push(RestoreStep::of(
                StepKind::TrashVersion,
                &have.version,
                "not part of the restored state; moved to the trash",
            ));
        }
    }
    if alias_set(&current.aliases) != alias_set(&wanted.aliases) {
        steps.push(RestoreStep::of(
            StepKind::SetAliases,
            "",
            describe_aliases(&wanted.aliases),
        ));
    }
    steps
}

fn describe_aliases(aliases: &[AliasImage]) -> String {
    if aliases.is_empty() {
        return "no aliases".to_owned();
    }
    aliases
        .iter()
        .map(|a| format!("{} → {}", a.name, a.version))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(name: &str, seq: i64, at: i64) -> VersionImage {
        VersionImage {
            version: name.to_owned(),
            seq,
            size: 3,
            stored_size: 3,
            new_stored_size: 3,
            dedup_saved_bytes: 0,
            delta_saved_bytes: 0,
            blake3: String::new(),
            chunk_count: 1,
            created_by: "a".into(),
            created_at: at,
            change_message: String::new(),
            metadata: BTreeMap::new(),
            content_type: "text/plain".into(),
            extracted: "{}".into(),
            state: LifecycleState::Draft,
            run_id: String::new(),
            run_workflow: String::new(),
            run_step: String::new(),
            run_agent: String::new(),
            deleted_at: None,
            deleted_by: String::new(),
            manifest: vec![1, 2, 3],
            transitions: vec![TransitionImage {
                from: None,
                to: LifecycleState::Draft,
                actor: "a".into(),
                reason: String::new(),
                at,
            }],
            dependencies: Vec::new(),
        }
    }

    fn image() -> ArtifactImage {
        ArtifactImage {
            id: "id".into(),
            tenant: "t".into(),
            project: "p".into(),
            artifact_type: "prd".into(),
            name: "n".into(),
            description: String::new(),
            tags: vec![],
            categories: vec![],
            metadata: BTreeMap::new(),
            latest_version: "1.1.0".into(),
            created_by: "a".into(),
            created_at: 10,
            updated_at: 20,
            deleted_at: None,
            deleted_by: String::new(),
            versions: vec![version("1.0.0", 1, 10), version("1.1.0", 2, 20)],
            aliases: vec![],
            holds: vec![],
            grants: vec![],
        }
    }

    fn body() -> BackupBody {
        BackupBody {
            format: FORMAT,
            backup_id: "b".into(),
            kind: BackupKind::Project,
            trigger: "manual".into(),
            tenant: "t".into(),
            project: "p".into(),
            artifact_id: String::new(),
            created_by: "a".into(),
            created_at: 1,
            service_secret: "00".repeat(32),
            artifacts: vec![image()],
            chunks: vec![],
            packs: vec![PackImage {
                pack_id: "p1".into(),
                size: 10,
                created_at: 1,
                key_id: Some("k".into()),
                wrapped_key: Some(vec![9; 40]),
            }],
            tenant_keys: vec![],
        }
    }

    #[test]
    fn objects_round_trip_and_every_flipped_byte_is_caught() {
        let body = body();
        let bytes = encode(&body).unwrap();
        assert_eq!(decode("k", &bytes).unwrap(), body);
        for position in [0, 8, 20, 40, bytes.len() - 1] {
            let mut damaged = bytes.clone();
            damaged[position] ^= 0x01;
            let error = decode("k", &damaged).unwrap_err();
            assert!(matches!(error, Error::DataLoss(_)), "byte {position}: {error:?}");
        }
        assert!(matches!(decode("k", &bytes[..30]), Err(Error::DataLoss(_))));
    }

    #[test]
    fn state_at_a_time_takes_versions_transitions_and_journal() {
        let mut now = image();
        now.versions[0].state = LifecycleState::Approved;
        now.versions[0].transitions.push(TransitionImage {
            from: Some(LifecycleState::Draft),
            to: LifecycleState::Approved,
            actor: "a".into(),
            reason: String::new(),
            at: 30,
        });
        let journal = JournalState {
            description: "then".into(),
            tags: vec!["x".into()],
            categories: vec![],
            metadata: BTreeMap::new(),
            latest_version: "1.0.0".into(),
            deleted_at: None,
            deleted_by: String::new(),
            aliases: vec![],
            trashed: vec![],
        };
        assert!(image_at(&now, &journal, 5).is_none());
        let then = image_at(&now, &journal, 15).unwrap();
        assert_eq!(then.versions.len(), 1);
        assert_eq!(then.versions[0].state, LifecycleState::Draft);
        assert_eq!(then.description, "then");
        let later = image_at(&now, &journal, 30).unwrap();
        assert_eq!(later.versions[0].state, LifecycleState::Approved);
    }

    #[test]
    fn plans_trash_what_the_restored_state_lacks_and_never_remove() {
        let current = image();
        let mut wanted = image();
        wanted.versions.truncate(1);
        wanted.versions[0].state = LifecycleState::Review;
        wanted.latest_version = "1.0.0".into();
        let steps = plan_restore(Some(&current), &wanted);
        let kinds: Vec<(StepKind, &str)> = steps.iter().map(|s| (s.kind, s.version.as_str())).collect();
        assert_eq!(
            kinds,
            vec![
                (StepKind::SetFields, ""),
                (StepKind::SetState, "1.0.0"),
                (StepKind::TrashVersion, "1.1.0"),
            ]
        );
        assert!(plan_restore(Some(&current), &current).is_empty());
        let fresh = plan_restore(None, &current);
        assert_eq!(fresh[0].kind, StepKind::CreateArtifact);
        assert_eq!(fresh.len(), 3);
    }
}

// ---- backups as the service lists them ----------------------------------------------------

/// One object of a backup, as recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupObject {
    pub key: String,
    pub project: String,
    pub size: u64,
    pub blake3: String,
    /// The stores it was written to and read back from.
    pub verified_on: Vec<String>,
}

/// What a backup holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSummary {
    pub artifacts: u64,
    pub versions: u64,
    pub logical_bytes: u64,
    pub pack_bytes: u64,
    pub packs: u64,
    pub objects: Vec<BackupObject>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    pub id: String,
    pub tenant: String,
    /// Empty for a tenant backup.
    pub project: String,
    pub artifact_id: String,
    pub kind: BackupKind,
    pub trigger: String,
    pub created_by: String,
    pub created_at: super::Timestamp,
    pub summary: BackupSummary,
}

/// A project's backup schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSchedule {
    pub tenant: String,
    pub project: String,
    pub interval_seconds: u64,
    pub keep: u32,
    pub updated_by: String,
    pub updated_at: super::Timestamp,
    pub last_run_at: Option<super::Timestamp>,
}

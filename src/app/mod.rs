//! Application services: the use cases of the artifact API, combining domain rules, the
//! ingest pipeline, the object store and the catalog. Knows nothing about gRPC.

mod access;
mod backup;
mod budget;
mod check;
mod delivery;
mod dependencies;
mod download;
mod gc;
mod keys;
mod lifecycle;
mod links;
mod retention;
mod runs;
mod shared_packs;
mod upload;
mod watch;

pub use access::{AccessAdmin, KeyHolds};
pub use backup::{
    BackupProgress, DrReport, Progress, RestoreReport, RestoreRequest, RestoreSource, RestoreTarget,
    RestoredArtifact, restore_changes,
};
pub use check::CheckReport;
pub use delivery::{CacheStatus, DeliverySettings, DownloadLink, etag_of};
pub use dependencies::{
    DependencyFilter, DependencyHit, DependencyRelation, DependentVersion, RequiredBy, Resolution,
    ResolvePolicy, Resolved, Unsatisfied,
};
pub use gc::{GcReport, Kept};
pub use keys::{MasterKeys, Rewrap, Rotation, TenantEncryption};
pub use retention::{PolicyInput, RetentionSettings};

/// How deep a dependency lookup goes when the caller does not say.
pub use dependencies::DEFAULT_MAX_DEPTH as DEFAULT_DEPENDENCY_DEPTH;
pub use runs::{ProvenanceStep, RunVersion};
pub use upload::{ContentExpectations, UploadPart, parse_expected_blake3};
pub use watch::{EventSettings, StartAt, WatchFilter, WatchItem, cursor_of};

use crate::catalog::{Catalog, Labels, NewArtifact, Scope};
use crate::domain::dependency::DependencySpec;
use crate::domain::lifecycle::{LATEST_APPROVED, validate_alias_name};
use crate::domain::names::{
    normalize_labels, normalize_tags, validate_artifact_name, validate_change_message, validate_description,
    validate_identifier, validate_metadata, validate_metadata_key,
};
use crate::domain::run::WorkflowRun;
use crate::domain::version::{Bump, bump, ensure_greater, parse_version};
use crate::domain::{Artifact, ArtifactVersion, LifecycleState, Timestamp, VersionRef};
use crate::domain::{Error, Result, now_micros};
use crate::ingest::{ChunkerConfig, Manifest, TenantKey};
use crate::storage::DynBlobStore;
use bytes::Bytes;
use futures::Stream;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Tunables of the data path; also the `[ingest]` configuration section.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestSettings {
    /// FastCDC average chunk size; the minimum is a quarter, the maximum four times this.
    pub chunk_avg_bytes: usize,
    /// Chunk compression level (a compressed chunk is kept only when it saves ≥ 1/32).
    pub zstd_level: i32,
    pub pack_target_bytes: usize,
    /// Pack writes overlapping an upload.
    pub max_packs_in_flight: usize,
    /// Largest data message an upload may send.
    pub max_data_message_bytes: usize,
    /// Download read coalescing and read-ahead: chunks that follow each other in a pack are
    /// read with one request of at most this many bytes (stored, and decoded). Twice the
    /// pack target, so a download needing a whole pack reads it whole: an S3 server charges
    /// per request, and some read the whole object whatever the range (moto reading an
    /// 8 MiB pack as two 4 MiB ranges spent twice its CPU on a download).
    pub max_read_span_bytes: u64,
    pub read_ahead_spans: usize,
    /// Memory all uploads' packs and all downloads' read-ahead may hold together; streams
    /// wait for it rather than the process growing with their number.
    pub transfer_memory_bytes: usize,
    /// Memory the content uploads received and have not yet packed may hold together (the
    /// messages received ahead and the batches being cut and looked up); an upload waits
    /// for it before it takes its next message, so its client is held back by flow control
    /// rather than the process growing with the number of uploads.
    pub received_memory_bytes: usize,
    /// A download whose reader takes nothing for this long is ended and its read-ahead
    /// given back to the budget (shorter than the 60 s others wait for it).
    pub stalled_download_seconds: u64,
    /// Longest chain of delta bases an update's new chunks may decode through (a read of
    /// such a chunk needs up to this many other chunks); 0 stores no deltas.
    pub delta_max_depth: u8,
    /// An upload whose last pack holds fewer bytes than this (and than half the pack
    /// target) puts those chunks into a pack shared with other uploads of the tenant instead
    /// (0: every upload writes its own).
    pub shared_pack_below_bytes: usize,
    /// How long a tenant's shared pack waits for more uploads when no write of the tenant's
    /// is in flight (while one is, the next pack fills until it is done anyway); each
    /// upload's acknowledgement waits up to this much longer.
    pub shared_pack_window_ms: u64,
    /// Memory the plain content of delta bases may take while uploads encode against them
    /// and reads decode through them, all together (reads wait for it; one read needing more
    /// than all of it takes all of it and runs alone).
    pub delta_base_memory_bytes: usize,
    /// Where an upload keeps its manifest and the list of chunks it stores once they
    /// outgrow a few KiB of memory (unnamed files, gone when the upload ends); empty means
    /// `<data_dir>/spill`.
    pub spill_dir: String,
}

impl IngestSettings {
    /// The spill directory; the system's temporary directory when none is set (an
    /// `Artifacts` made without a configuration).
    pub fn spill_path(&self) -> std::path::PathBuf {
        if self.spill_dir.is_empty() {
            std::env::temp_dir().join("artifactd-spill")
        } else {
            std::path::PathBuf::from(&self.spill_dir)
        }
    }
}

impl IngestSettings {
    pub fn chunker(&self) -> ChunkerConfig {
        ChunkerConfig::with_average(self.chunk_avg_bytes)
    }
}

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            chunk_avg_bytes: ChunkerConfig::default().avg_size,
            zstd_level: 3,
            pack_target_bytes: 8 * 1024 * 1024,
            max_packs_in_flight: 2,
            max_data_message_bytes: 256 * 1024,
            max_read_span_bytes: 16 * 1024 * 1024,
            read_ahead_spans: 4,
            transfer_memory_bytes: 64 * 1024 * 1024,
            received_memory_bytes: 16 * 1024 * 1024,
            stalled_download_seconds: 30,
            delta_max_depth: 32,
            shared_pack_below_bytes: 1024 * 1024,
            shared_pack_window_ms: 0,
            delta_base_memory_bytes: 16 * 1024 * 1024,
            spill_dir: String::new(),
        }
    }
}

/// Everything the use cases are tuned by.
#[derive(Debug, Clone)]
pub struct Settings {
    pub ingest: IngestSettings,
    /// How long a soft-deleted artifact can be restored.
    pub deleted_retention: Duration,
    /// Retention, the trash and garbage collection.
    pub retention: RetentionSettings,
    pub events: EventSettings,
    /// Encryption at rest is on when master keys are given.
    pub master_keys: Option<Arc<MasterKeys>>,
    /// Download links and the chunk cache.
    pub delivery: DeliverySettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            ingest: IngestSettings::default(),
            deleted_retention: Duration::from_secs(30 * 24 * 3600),
            retention: RetentionSettings::default(),
            events: EventSettings::default(),
            master_keys: None,
            delivery: DeliverySettings::default(),
        }
    }
}

pub(crate) struct Inner {
    pub(crate) catalog: Catalog,
    pub(crate) store: DynBlobStore,
    pub(crate) settings: Settings,
    /// The chunk-id secret; replaced only when a restore into an empty installation adopts
    /// the one its backups were taken with.
    service_secret: std::sync::RwLock<[u8; 32]>,
    pub(crate) keys: keys::Keyring,
    pub(crate) reads: retention::RecentReads,
    /// Both sides of a failover pair, where there is one: backups write to each.
    pub(crate) failover: std::sync::OnceLock<Arc<crate::storage::FailoverStore>>,
    /// Decoded chunks read again by downloads and the indexer.
    pub(crate) cache: delivery::ChunkCache,
    /// What uploads and downloads may hold in memory together.
    pub(crate) budget: budget::MemoryBudget,
    /// What the plain content of delta bases being read may take, together.
    pub(crate) base_budget: budget::MemoryBudget,
    /// What uploads' received content not yet packed may take, together.
    pub(crate) received_budget: budget::MemoryBudget,
    /// Large buffers of packs and spans, used again (idle ones up to a quarter of the budget,
    /// and beyond it what the budget has free).
    pub(crate) buffers: Arc<crate::buffers::BufferPool>,
    /// The HTTP listener's address, for links when no public address is configured.
    pub(crate) link_base: std::sync::OnceLock<String>,
    /// Which versions were read last, for warming the next.
    pub(crate) read_order: delivery::ReadOrder,
    /// The disk cache the store reads through, where there is one.
    pub(crate) disk_cache: std::sync::OnceLock<Arc<crate::storage::DiskCache>>,
    /// Packs small uploads share, being filled and written.
    pub(crate) shared_packs: shared_packs::SharedPacks,
}

impl Inner {
    pub(crate) fn secret(&self) -> [u8; 32] {
        *self
            .service_secret
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn set_secret(&self, secret: [u8; 32]) {
        *self
            .service_secret
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = secret;
    }
}

/// The artifact use cases. Cheap to clone.
#[derive(Clone)]
pub struct Artifacts {
    inner: Arc<Inner>,
}

/// Who is asking, for the record.
pub type Actor = String;

#[derive(Debug, Clone, Default)]
pub struct CreateArtifact {
    pub scope: Scope,
    pub artifact_type: String,
    pub name: String,
    pub description: String,
    pub tags: Vec<String>,
    pub categories: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub initial_version: String,
    pub change_message: String,
    pub expectations: ContentExpectations,
    pub actor: Actor,
    /// Draft or review.
    pub initial_state: LifecycleState,
    pub dependencies: Vec<DependencySpec>,
    /// The workflow run producing the version.
    pub produced_by: Option<WorkflowRun>,
}

#[derive(Debug, Clone)]
pub enum NextVersion {
    Bump(Bump),
    Explicit(String),
}

#[derive(Debug, Clone)]
pub struct UpdateArtifact {
    pub scope: Scope,
    pub artifact_id: String,
    pub next_version: NextVersion,
    pub expected_current_version: String,
    pub change_message: String,
    pub metadata_set: BTreeMap<String, String>,
    pub metadata_remove: Vec<String>,
    /// Replaces the artifact's tags and categories when set.
    pub labels: Option<Labels>,
    pub expectations: ContentExpectations,
    pub actor: Actor,
    /// Draft or review.
    pub initial_state: LifecycleState,
    pub dependencies: Vec<DependencySpec>,
    /// The workflow run producing the version.
    pub produced_by: Option<WorkflowRun>,
}

/// How to find an artifact.
#[derive(Debug, Clone)]
pub enum Selector {
    Id(String),
    Name { artifact_type: String, name: String },
}

/// The range of a download and what it covers.
#[derive(Debug, Clone)]
pub struct DownloadPlan {
    pub artifact: Artifact,
    pub version: ArtifactVersion,
    pub offset: u64,
    pub length: u64,
}

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: String,
}

pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 1000;

fn validate_scope(scope: &Scope) -> Result<()> {
    validate_identifier("tenant", &scope.tenant)?;
    validate_identifier("project", &scope.project)
}

fn validate_artifact_id(id: &str) -> Result<()> {
    if uuid::Uuid::try_parse(id).is_err() {
        return Err(Error::invalid(
            "artifact_id",
            format!(
                "{} is not an artifact id (a UUID)",
                crate::domain::names::quoted(id)
            ),
        ));
    }
    Ok(())
}

fn normalized_labels(labels: &Labels) -> Result<Labels> {
    Ok(Labels {
        tags: normalize_tags(&labels.tags)?,
        categories: normalize_labels("categories", &labels.categories)?,
    })
}

fn page_size(requested: u32) -> u32 {
    match requested {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

fn encode_token(parts: &[&str]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(parts.join("\u{0}"))
}

fn decode_token(token: &str, parts: usize) -> Result<Vec<String>> {
    use base64::Engine;
    let invalid = || {
        Error::invalid(
            "page_token",
            format!(
                "{} is not a token this service issued",
                crate::domain::names::quoted(token)
            ),
        )
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| invalid())?;
    let text = String::from_utf8(raw).map_err(|_| invalid())?;
    let fields: Vec<String> = text.split('\u{0}').map(str::to_owned).collect();
    if fields.len() != parts {
        return Err(invalid());
    }
    Ok(fields)
}

/// The position a page token of the listing `tag` carries; `None` (the first page) for an
/// empty token.
fn decode_position(token: &str, tag: &str) -> Result<Option<i64>> {
    if token.is_empty() {
        return Ok(None);
    }
    let fields = decode_token(token, 2)?;
    if fields[0] != tag {
        return Err(Error::invalid(
            "page_token",
            "the token belongs to another listing",
        ));
    }
    fields[1]
        .parse::<i64>()
        .ok()
        .filter(|position| *position >= 0)
        .map(Some)
        .ok_or_else(|| Error::invalid("page_token", "malformed token"))
}

impl Artifacts {
    pub async fn new(catalog: Catalog, store: DynBlobStore, settings: Settings) -> Result<Self> {
        let service_secret = catalog.service_secret().await?;
        catalog.start_journal(now_micros()).await?;
        let keys = keys::Keyring::new(settings.master_keys.clone());
        let cache = delivery::ChunkCache::new(settings.delivery.cache_memory_bytes);
        let budget = budget::MemoryBudget::new(settings.ingest.transfer_memory_bytes);
        let base_budget =
            budget::MemoryBudget::for_pool(budget::Pool::DeltaBases, settings.ingest.delta_base_memory_bytes);
        let received_budget =
            budget::MemoryBudget::for_pool(budget::Pool::Received, settings.ingest.received_memory_bytes);
        // Idle buffers: a quarter of the transfer budget, and beyond it what the budget has
        // free, so buffers in use and idle ones stay within it.
        let buffers = {
            let budget = budget.clone();
            crate::buffers::BufferPool::with_room(settings.ingest.transfer_memory_bytes / 4, move || {
                budget.available()
            })
        };
        Ok(Self {
            inner: Arc::new(Inner {
                catalog,
                store,
                settings,
                service_secret: std::sync::RwLock::new(service_secret),
                keys,
                reads: retention::RecentReads::default(),
                failover: std::sync::OnceLock::new(),
                cache,
                buffers,
                budget,
                base_budget,
                received_budget,
                link_base: std::sync::OnceLock::new(),
                disk_cache: std::sync::OnceLock::new(),
                read_order: Default::default(),
                shared_packs: Default::default(),
            }),
        })
    }

    /// Gives backups both sides of the failover pair the store is made of.
    pub fn attach_failover(&self, failover: Arc<crate::storage::FailoverStore>) {
        let _ = self.inner.failover.set(failover);
    }

    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    pub fn store(&self) -> &DynBlobStore {
        &self.inner.store
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// The grants on the artifact a request names, for deciding a caller whose roles in the
    /// scope do not reach: none when the scope shows no such artifact (so the refusal stays
    /// what it would be without grants).
    pub async fn grants_for(
        &self,
        scope: &Scope,
        selector: &Selector,
    ) -> Result<Vec<crate::domain::access::ArtifactGrant>> {
        if validate_scope(scope).is_err() {
            return Ok(Vec::new());
        }
        let catalog = &self.inner.catalog;
        let artifact = match selector {
            Selector::Id(id) => {
                if validate_artifact_id(id).is_err() {
                    return Ok(Vec::new());
                }
                match catalog.artifact_by_id(scope, id, true).await? {
                    Some(own) => Some(own),
                    None => catalog.seen_artifact(scope, id).await?,
                }
            }
            Selector::Name { artifact_type, name } => {
                if validate_identifier("artifact_type", artifact_type).is_err()
                    || validate_artifact_name(name).is_err()
                {
                    return Ok(Vec::new());
                }
                catalog.artifact_by_name(scope, artifact_type, name).await?
            }
        };
        match artifact {
            Some(artifact) => catalog.artifact_grants(&scope.tenant, artifact.id.as_str()).await,
            None => Ok(Vec::new()),
        }
    }

    /// The tenant's keys and how much of its content is sealed.
    pub async fn encryption_status(&self, tenant: &str) -> Result<TenantEncryption> {
        self.inner.keys.status(&self.inner.catalog, tenant).await
    }

    /// Re-wraps the tenant's data keys under a new tenant key and erases the old one.
    pub async fn rotate_tenant_key(&self, tenant: &str) -> Result<Rotation> {
        self.inner.keys.rotate(&self.inner.catalog, tenant).await
    }

    /// Crypto-shredding: the tenant's sealed content becomes unreadable for good.
    /// The tenant's backups go first: they hold wrapped copies of its keys, and a restore
    /// would bring the keys back. A backup taken meanwhile is deleted after.
    pub async fn destroy_tenant_keys(&self, tenant: &str) -> Result<crate::domain::encryption::ShredReport> {
        self.delete_tenant_backups(tenant).await?;
        let report = self.inner.keys.destroy(&self.inner.catalog, tenant).await?;
        // Reads plan from the chunk index, which forgets the tenant's chunks, so nothing
        // cached could be served; it must not linger in memory either.
        self.inner.cache.clear();
        if let Err(error) = self.delete_tenant_backups(tenant).await {
            tracing::warn!(%tenant, %error, "a backup taken while the keys were destroyed could not be deleted; delete it");
        }
        Ok(report)
    }

    /// Moves every tenant key under the current master key.
    pub async fn rewrap_tenant_keys(&self) -> Result<Rewrap> {
        self.inner.keys.rewrap_all(&self.inner.catalog).await
    }

    /// Creates an artifact whose first version is `content`. When `caller_gone` is cancelled
    /// before the commit, the upload is abandoned: nothing partial is ever committed.
    pub async fn create<S>(
        &self,
        request: CreateArtifact,
        content: S,
        caller_gone: &CancellationToken,
    ) -> Result<(Artifact, ArtifactVersion)>
    where
        S: Stream<Item = Result<UploadPart>> + Send + Unpin + 'static,
    {
        validate_scope(&request.scope)?;
        validate_identifier("artifact_type", &request.artifact_type)?;
        crate::domain::names::validate_new_artifact_name(&request.name)?;
        validate_description(&request.description)?;
        validate_change_message(&request.change_message)?;
        validate_metadata("metadata", &request.metadata)?;
        let tags = normalize_tags(&request.tags)?;
        let categories = normalize_labels("categories", &request.categories)?;
        let initial_state = LifecycleState::validate_initial("initial_state", request.initial_state)?;
        if let Some(run) = &request.produced_by {
            run.validate()?;
        }
        let version = if request.initial_version.is_empty() {
            semver::Version::new(1, 0, 0)
        } else {
            parse_version("initial_version", &request.initial_version)?
        };
        // Checked before any byte is stored; a deleted artifact keeps its name while it can
        // still be restored.
        if let Some(holder) = self
            .inner
            .catalog
            .name_holder(&request.scope, &request.artifact_type, &request.name)
            .await?
        {
            return Err(holder.conflict(&request.scope, &request.artifact_type, &request.name));
        }
        let dependencies = self
            .check_dependencies(
                &request.scope,
                ("", &request.artifact_type, &request.name),
                &request.dependencies,
            )
            .await?;

        let upload = upload::Upload::new(
            self.inner.clone(),
            &request.scope.tenant,
            request.expectations.clone(),
            None,
        );
        let upload_name = request.name.clone();
        let content = upload.run(content, &upload_name, caller_gone).await?;
        let upload_id = content.upload_id.clone();
        let mut new_version = content.into_new_version(
            version.to_string(),
            request.actor.clone(),
            request.change_message.clone(),
            request.metadata.clone(),
            None,
        );
        new_version.state = initial_state;
        new_version.dependencies = dependencies;
        new_version.produced_by = request.produced_by.clone();
        let artifact = NewArtifact {
            id: uuid::Uuid::now_v7().to_string(),
            scope: request.scope.clone(),
            artifact_type: request.artifact_type.clone(),
            name: request.name.clone(),
            description: request.description.clone(),
            tags,
            categories,
        };
        let committed = self.inner.catalog.create_artifact(&artifact, &new_version).await;
        self.after_commit(&upload_id, committed).await
    }

    /// Adds a version to an artifact; `caller_gone` as for [`Artifacts::create`].
    pub async fn update<S>(
        &self,
        request: UpdateArtifact,
        content: S,
        caller_gone: &CancellationToken,
    ) -> Result<(Artifact, ArtifactVersion)>
    where
        S: Stream<Item = Result<UploadPart>> + Send + Unpin + 'static,
    {
        validate_scope(&request.scope)?;
        validate_artifact_id(&request.artifact_id)?;
        validate_change_message(&request.change_message)?;
        validate_metadata("metadata_set", &request.metadata_set)?;
        for key in &request.metadata_remove {
            validate_metadata_key("metadata_remove", key)?;
        }
        let initial_state = LifecycleState::validate_initial("initial_state", request.initial_state)?;
        if let Some(run) = &request.produced_by {
            run.validate()?;
        }
        let artifact = self
            .require_own_artifact(&request.scope, &request.artifact_id)
            .await?;
        let latest = parse_version("latest_version", &artifact.latest_version)?;
        if !request.expected_current_version.is_empty() {
            let expected = parse_version("expected_current_version", &request.expected_current_version)?;
            if expected != latest {
                return Err(Error::FailedPrecondition(format!(
                    "expected_current_version: artifact {:?} is at version {latest}, not {expected}; nothing was written",
                    request.artifact_id
                )));
            }
        }
        let next = match &request.next_version {
            NextVersion::Bump(kind) => bump(&latest, *kind),
            NextVersion::Explicit(text) => {
                let explicit = parse_version("explicit_version", text)?;
                ensure_greater("explicit_version", &explicit, &latest)?;
                explicit
            }
        };
        let labels = request.labels.as_ref().map(normalized_labels).transpose()?;
        let mut metadata = artifact.metadata.clone();
        for key in &request.metadata_remove {
            metadata.remove(key);
        }
        metadata.extend(request.metadata_set.clone());
        validate_metadata("metadata_set", &metadata)?;
        let dependencies = self
            .check_dependencies(
                &request.scope,
                (artifact.id.as_str(), &artifact.artifact_type, &artifact.name),
                &request.dependencies,
            )
            .await?;

        // The version this one follows: its chunks are where edits find their bases.
        let previous = match self
            .inner
            .catalog
            .manifest(&artifact.id, &artifact.latest_version)
            .await
            .and_then(|bytes| Manifest::decode(bytes).map_err(Error::internal))
        {
            Ok(manifest) => Some(manifest),
            Err(error) => {
                tracing::warn!(artifact_id = %artifact.id, %error, "the latest version's manifest could not be read; this update is stored without deltas");
                None
            }
        };
        let upload = upload::Upload::new(
            self.inner.clone(),
            &request.scope.tenant,
            request.expectations.clone(),
            previous,
        );
        let content = upload.run(content, &artifact.name, caller_gone).await?;
        let upload_id = content.upload_id.clone();
        let mut new_version = content.into_new_version(
            next.to_string(),
            request.actor.clone(),
            request.change_message.clone(),
            metadata,
            labels,
        );
        new_version.state = initial_state;
        new_version.dependencies = dependencies;
        new_version.produced_by = request.produced_by.clone();
        let committed = self
            .inner
            .catalog
            .add_version(
                &request.scope,
                &request.artifact_id,
                &artifact.latest_version,
                &new_version,
            )
            .await
            .map_err(|error| match error {
                // The caller named the version it expected: losing the race breaks that
                // precondition. Without one, retrying from the new latest version may succeed.
                Error::Aborted(message) if !request.expected_current_version.is_empty() => {
                    Error::FailedPrecondition(format!("expected_current_version: {message}"))
                }
                other => other,
            });
        self.after_commit(&upload_id, committed).await
    }

    /// Replaces an artifact's tags and categories without a new version.
    pub async fn update_labels(&self, scope: &Scope, artifact_id: &str, labels: &Labels) -> Result<Artifact> {
        validate_scope(scope)?;
        validate_artifact_id(artifact_id)?;
        let labels = normalized_labels(labels)?;
        match self
            .inner
            .catalog
            .update_labels(scope, artifact_id, &labels, now_micros())
            .await
        {
            Err(error) => Err(self.explain_missing(scope, artifact_id, error).await),
            updated => updated,
        }
    }

    async fn after_commit(
        &self,
        upload_id: &str,
        committed: Result<(Artifact, ArtifactVersion)>,
    ) -> Result<(Artifact, ArtifactVersion)> {
        match committed {
            Ok(pair) => {
                metrics::counter!(crate::telemetry::names::VERSIONS_COMMITTED_TOTAL).increment(1);
                Ok(pair)
            }
            Err(error) => {
                if let Err(cleanup) = self.inner.catalog.abandon_upload(upload_id).await {
                    tracing::warn!(%upload_id, error = %cleanup, "could not mark an abandoned upload's packs");
                }
                Err(error)
            }
        }
    }

    /// A live artifact visible in `scope`: its own, or linked into it.
    async fn require_artifact(&self, scope: &Scope, artifact_id: &str) -> Result<Artifact> {
        validate_artifact_id(artifact_id)?;
        self.inner
            .catalog
            .seen_artifact(scope, artifact_id)
            .await?
            .ok_or_else(|| {
                Error::not_found(format!(
                    "artifact {artifact_id:?} not found in {}/{}",
                    scope.tenant, scope.project
                ))
            })
    }

    /// A version named by version, alias or nothing (the latest).
    async fn require_version(&self, artifact: &Artifact, version: &str) -> Result<ArtifactVersion> {
        self.require_version_in("version", artifact, version).await
    }

    async fn require_version_in(
        &self,
        field: &'static str,
        artifact: &Artifact,
        version: &str,
    ) -> Result<ArtifactVersion> {
        let wanted = match VersionRef::of(version) {
            VersionRef::Latest => artifact.latest_version.clone(),
            VersionRef::Version(text) => parse_version(field, text)?.to_string(),
            VersionRef::Alias(name)
                if name != LATEST_APPROVED && validate_alias_name(field, name).is_err() =>
            {
                return Err(Error::invalid(
                    field,
                    format!(
                        "{name:?} is neither a version (those start with a digit, as in 1.4.0) nor an alias name"
                    ),
                ));
            }
            VersionRef::Alias(name) => self
                .inner
                .catalog
                .alias_target(&artifact.id, name)
                .await?
                .ok_or_else(|| match name {
                    LATEST_APPROVED => {
                        Error::not_found(format!("artifact {:?} has no approved version", artifact.id))
                    }
                    _ => Error::not_found(format!(
                        "{field}: artifact {:?} has no alias {name:?} (a version starts with a digit)",
                        artifact.id
                    )),
                })?,
        };
        self.inner
            .catalog
            .version(&artifact.id, &wanted)
            .await?
            .ok_or_else(|| {
                Error::not_found(format!(
                    "version {wanted} of artifact {:?} not found",
                    artifact.id
                ))
            })
    }

    /// What the versions of a project, or of one artifact (`artifact_id` not empty), hold
    /// and store, and what was saved.
    pub async fn storage_stats(
        &self,
        scope: &Scope,
        artifact_id: &str,
    ) -> Result<crate::domain::StorageStats> {
        validate_scope(scope)?;
        if artifact_id.is_empty() {
            return self.inner.catalog.storage_stats(scope, None).await;
        }
        validate_artifact_id(artifact_id)?;
        let artifact = self.require_artifact(scope, artifact_id).await?;
        self.inner
            .catalog
            .storage_stats(scope, Some(&artifact.id.to_string()))
            .await
    }

    /// An artifact and one of its versions (the latest when `version` is empty).
    pub async fn get(
        &self,
        scope: &Scope,
        selector: &Selector,
        version: &str,
    ) -> Result<(Artifact, ArtifactVersion)> {
        validate_scope(scope)?;
        let artifact = match selector {
            Selector::Id(id) => self.require_artifact(scope, id).await?,
            Selector::Name { artifact_type, name } => {
                validate_identifier("artifact_type", artifact_type)?;
                validate_artifact_name(name)?;
                self.inner
                    .catalog
                    .artifact_by_name(scope, artifact_type, name)
                    .await?
                    .ok_or_else(|| {
                        Error::not_found(format!(
                            "no artifact of type {artifact_type:?} named {name:?} in {}/{}",
                            scope.tenant, scope.project
                        ))
                    })?
            }
        };
        let version = self.require_version(&artifact, version).await?;
        Ok((artifact, version))
    }

    /// Versions newest first, in `states` (when empty, every state listed by default).
    pub async fn list_versions(
        &self,
        scope: &Scope,
        artifact_id: &str,
        states: &[LifecycleState],
        requested_page_size: u32,
        page_token: &str,
    ) -> Result<Page<ArtifactVersion>> {
        validate_scope(scope)?;
        let artifact = self.require_artifact(scope, artifact_id).await?;
        let before_seq = decode_position(page_token, "v")?;
        let limit = page_size(requested_page_size);
        let mut items = self
            .inner
            .catalog
            .list_versions(
                &artifact.id,
                &LifecycleState::or_default_listing(states),
                before_seq,
                limit + 1,
            )
            .await?;
        let next_page_token = if items.len() > limit as usize {
            items.truncate(limit as usize);
            encode_token(&["v", &items.last().expect("non-empty").seq.to_string()])
        } else {
            String::new()
        };
        Ok(Page {
            items,
            next_page_token,
        })
    }

    /// Artifacts by name whose latest version is in `states` (when empty, every state
    /// listed by default).
    pub async fn list_artifacts(
        &self,
        scope: &Scope,
        artifact_type: &str,
        path_prefix: &str,
        states: &[LifecycleState],
        requested_page_size: u32,
        page_token: &str,
    ) -> Result<Page<Artifact>> {
        validate_scope(scope)?;
        if !artifact_type.is_empty() {
            validate_identifier("artifact_type", artifact_type)?;
        }
        if !path_prefix.is_empty() {
            crate::domain::names::validate_path_prefix("path_prefix", path_prefix)?;
        }
        let after = if page_token.is_empty() {
            None
        } else {
            let fields = decode_token(page_token, 3)?;
            if fields[0] != "a" {
                return Err(Error::invalid(
                    "page_token",
                    "the token belongs to another listing",
                ));
            }
            Some((fields[1].clone(), fields[2].clone()))
        };
        let limit = page_size(requested_page_size);
        let type_filter = (!artifact_type.is_empty()).then_some(artifact_type);
        let mut items = self
            .inner
            .catalog
            .list_artifacts(
                scope,
                type_filter,
                path_prefix,
                &LifecycleState::or_default_listing(states),
                after.as_ref().map(|(name, id)| (name.as_str(), id.as_str())),
                limit + 1,
            )
            .await?;
        let next_page_token = if items.len() > limit as usize {
            items.truncate(limit as usize);
            let last = items.last().expect("non-empty");
            encode_token(&["a", &last.name, &last.id])
        } else {
            String::new()
        };
        Ok(Page {
            items,
            next_page_token,
        })
    }

    /// Soft-deletes an artifact for `actor`; returns it and the moment its retention runs out.
    pub async fn delete(
        &self,
        scope: &Scope,
        artifact_id: &str,
        actor: &Actor,
    ) -> Result<(Artifact, Timestamp)> {
        validate_scope(scope)?;
        validate_artifact_id(artifact_id)?;
        let deleted = match self
            .inner
            .catalog
            .soft_delete(scope, artifact_id, actor, now_micros())
            .await
        {
            Err(error) => return Err(self.explain_missing(scope, artifact_id, error).await),
            Ok(deleted) => deleted,
        };
        let deleted_at = deleted.deleted_at.map_or_else(now_micros, Timestamp::as_micros);
        let restorable_until = Timestamp(deleted_at + self.retention_micros());
        Ok((deleted, restorable_until))
    }

    pub async fn undelete(&self, scope: &Scope, artifact_id: &str) -> Result<Artifact> {
        validate_scope(scope)?;
        validate_artifact_id(artifact_id)?;
        let now = now_micros();
        match self
            .inner
            .catalog
            .undelete(scope, artifact_id, now - self.retention_micros(), now)
            .await
        {
            Err(error) => Err(self.explain_missing(scope, artifact_id, error).await),
            restored => restored,
        }
    }

    fn retention_micros(&self) -> i64 {
        self.inner.settings.deleted_retention.as_micros() as i64
    }

    /// Resolves what a download will send, checking the range against the version's size.
    pub async fn plan_download(
        &self,
        scope: &Scope,
        artifact_id: &str,
        version: &str,
        offset: u64,
        length: u64,
    ) -> Result<DownloadPlan> {
        validate_scope(scope)?;
        let artifact = self.require_artifact(scope, artifact_id).await?;
        let version = self.require_version(&artifact, version).await?;
        let size = version.size as u64;
        if offset > size {
            return Err(Error::OutOfRange(format!(
                "offset: {offset} is beyond the end of version {} ({size} bytes)",
                version.version
            )));
        }
        let length = if length == 0 { size - offset } else { length };
        if offset.checked_add(length).is_none_or(|end| end > size) {
            return Err(Error::OutOfRange(format!(
                "length: {length} bytes from offset {offset} reach beyond the end of version {} ({size} bytes)",
                version.version
            )));
        }
        Ok(DownloadPlan {
            artifact,
            version,
            offset,
            length,
        })
    }

    /// Streams the bytes of a planned download.
    pub async fn download(
        &self,
        plan: &DownloadPlan,
    ) -> Result<impl Stream<Item = Result<Bytes>> + Send + 'static> {
        let content = self.content(plan).await?;
        self.warm_next_version(plan);
        Ok(content)
    }

    /// The bytes of a plan, without noting the read.
    async fn content(
        &self,
        plan: &DownloadPlan,
    ) -> Result<impl Stream<Item = Result<Bytes>> + Send + 'static> {
        let manifest = self
            .inner
            .catalog
            .manifest_reader_from(&plan.artifact.id, &plan.version.version, plan.offset)
            .await?;
        let key = TenantKey::derive(&self.inner.secret(), &plan.artifact.scope.tenant);
        download::stream(
            self.inner.clone(),
            plan.artifact.scope.tenant.clone(),
            key,
            manifest,
            plan.offset..plan.offset + plan.length,
        )
        .await
    }
}

#[async_trait::async_trait]
impl crate::search::ContentReader for Artifacts {
    async fn read_prefix(
        &self,
        scope: &Scope,
        artifact_id: &str,
        version: &str,
        length: u64,
    ) -> Result<Bytes> {
        use futures::TryStreamExt;
        let plan = self.plan_download(scope, artifact_id, version, 0, length).await?;
        // The indexer's reads are not a client's: they do not count towards read order.
        let pieces: Vec<Bytes> = self.content(&plan).await?.try_collect().await?;
        Ok(Bytes::from(pieces.concat()))
    }

    fn forget_tenant_content(&self, tenant: &str) {
        // The chunk cache keeps no tenant apart: all of it goes, as where the keys were
        // destroyed. The tenant key kept for sealing new packs goes too.
        self.inner.cache.clear();
        self.inner.keys.forget_tenant(tenant);
        tracing::info!(%tenant, "a tenant's keys were destroyed; its cached content and keys are forgotten here");
    }
}

//! Keeps the index in step with the catalog by tailing the outbox. The position reached is
//! committed together with the documents (tantivy's commit payload), so a restart resumes
//! exactly where the index stopped, without losing or repeating changes.

use super::index::{Checkpoint, IndexedArtifact, SearchIndex};
use super::metadata::ArtifactMetadata;
use crate::catalog::{Catalog, OutboxEvent};
use crate::domain::event::EventKind;
use crate::domain::{Artifact, Scope};
use crate::domain::{Error, Result};
use crate::ingest::extract::{MAX_INDEXED_TEXT_BYTES, text_prefix};
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};

const EVENTS_PER_BATCH: u32 = 256;
/// A commit takes at most this many documents or this much text. Each commit costs a sync
/// and a new segment, so a backlog goes faster in large ones (2,048 documents index twice
/// as fast as 256 in `cargo bench --bench search`); the text bound keeps memory bounded.
const DOCS_PER_COMMIT: usize = 2048;
const TEXT_BYTES_PER_COMMIT: usize = 64 * 1024 * 1024;

/// Documents waiting for the next commit.
#[derive(Default)]
struct Pending {
    changes: Vec<(String, Option<IndexedArtifact>)>,
    text_bytes: usize,
    /// Outbox events (or, in a rebuild, artifacts) the commit will cover.
    events: usize,
}

impl Pending {
    fn push(&mut self, artifact_id: String, document: Option<IndexedArtifact>) {
        self.text_bytes += document.as_ref().map_or(0, |d| d.body.len());
        self.changes.push((artifact_id, document));
    }

    fn is_full(&self) -> bool {
        self.changes.len() >= DOCS_PER_COMMIT || self.text_bytes >= TEXT_BYTES_PER_COMMIT
    }
}
/// How often the index checks that the catalog still has the event at its checkpoint.
const VERIFY_EVERY: Duration = Duration::from_secs(10);
/// How often the outbox is read when this process wrote nothing: other replicas' changes
/// arrive this way.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// Where the indexer reads the text of a version: all it needs of the storage core.
#[async_trait]
pub trait ContentReader: Send + Sync + 'static {
    /// The first `length` bytes of a version's content (all of it when shorter).
    async fn read_prefix(
        &self,
        scope: &Scope,
        artifact_id: &str,
        version: &str,
        length: u64,
    ) -> Result<Bytes>;

    /// A tenant's keys were destroyed (on this replica or another): whatever of its content
    /// this process still holds in memory goes now.
    fn forget_tenant_content(&self, _tenant: &str) {}
}

#[derive(Clone)]
pub struct Indexer {
    index: Arc<SearchIndex>,
    catalog: Catalog,
    content: Arc<dyn ContentReader>,
}

impl Indexer {
    pub fn new(index: Arc<SearchIndex>, catalog: Catalog, content: Arc<dyn ContentReader>) -> Self {
        Self {
            index,
            catalog,
            content,
        }
    }

    pub fn index(&self) -> &Arc<SearchIndex> {
        &self.index
    }

    /// The document for an artifact as the catalog has it now; `None` when it is deleted.
    /// The event's project may be one the artifact is linked into: the document follows the
    /// artifact wherever it lives in the tenant.
    async fn document(&self, scope: &Scope, artifact_id: &str) -> Result<Option<IndexedArtifact>> {
        let Some(artifact) = self.catalog.live_artifact(&scope.tenant, artifact_id).await? else {
            return Ok(None);
        };
        self.document_of(artifact).await.map(Some)
    }

    async fn document_of(&self, artifact: Artifact) -> Result<IndexedArtifact> {
        let scope = artifact.scope.clone();
        let version = self
            .catalog
            .version(&artifact.id, &artifact.latest_version)
            .await?
            .ok_or_else(|| Error::internal(format!("artifact {} has no version row", artifact.id)))?;
        let extracted = &version.extracted;
        let body = if extracted.is_text {
            let length = version.size.min(MAX_INDEXED_TEXT_BYTES as u64);
            match self.text(&scope, &artifact.id, &version.version, length).await {
                Ok(text) => text,
                // Content that is gone (a lost or corrupt pack, a version deleted since) or
                // that cannot be opened (its tenant's key destroyed, or no master key here)
                // must not stop the index for everyone: the artifact is indexed by its
                // metadata alone. Any other failure may pass, so the batch is retried.
                Err(error @ (Error::DataLoss(_) | Error::NotFound(_) | Error::FailedPrecondition(_))) => {
                    tracing::error!(artifact_id = %artifact.id, version = %version.version, %error,
                        "content unreadable; indexing the artifact without its text");
                    metrics::counter!(crate::telemetry::names::INDEX_UNREADABLE_TOTAL).increment(1);
                    String::new()
                }
                Err(error) => return Err(error),
            }
        } else {
            String::new()
        };
        let linked_into = self
            .catalog
            .links_of(&artifact.id)
            .await?
            .into_iter()
            .map(|link| link.scope.project)
            .collect();
        let mut tags = artifact.tags.clone();
        // Front matter tags count as tags too: that is where BMAD documents keep theirs.
        if let Some(serde_json::Value::Array(values)) = extracted.front_matter.get("tags") {
            tags.extend(values.iter().filter_map(|v| v.as_str().map(str::to_owned)));
        }
        tags.sort();
        tags.dedup();
        Ok(IndexedArtifact {
            artifact_id: artifact.id.to_string(),
            tenant: artifact.scope.tenant.clone(),
            project: artifact.scope.project.clone(),
            linked_into,
            state: version.state.as_str().to_owned(),
            tags,
            categories: artifact.categories.clone(),
            headings: extracted.headings.clone(),
            body,
            meta: ArtifactMetadata {
                metadata: artifact.metadata.clone(),
                name: artifact.name,
                artifact_type: artifact.artifact_type,
                title: extracted.title.clone().unwrap_or_default(),
                content_type: version.content_type.clone(),
                version: version.version.clone(),
                size: version.size,
                line_count: extracted.line_count,
                created_at: artifact.created_at.as_micros(),
                updated_at: artifact.updated_at.as_micros(),
                front_matter: extracted.front_matter.clone(),
            },
        })
    }

    /// The first `length` bytes of a version as text. The front matter stays in: its values
    /// (descriptions, owners) are words people search for.
    async fn text(&self, scope: &Scope, artifact_id: &str, version: &str, length: u64) -> Result<String> {
        let prefix = self
            .content
            .read_prefix(scope, artifact_id, version, length)
            .await?;
        Ok(text_prefix(&prefix).unwrap_or_default().to_owned())
    }

    async fn commit(
        &self,
        changes: Vec<(String, Option<IndexedArtifact>)>,
        checkpoint: Checkpoint,
    ) -> Result<()> {
        let index = self.index.clone();
        tokio::task::spawn_blocking(move || index.apply(changes, checkpoint))
            .await
            .map_err(|e| Error::internal(format!("index task failed: {e}")))??;
        metrics::counter!(crate::telemetry::names::INDEX_COMMITS_TOTAL).increment(1);
        Ok(())
    }

    /// Applies every outbox event after the index's checkpoint; returns how many.
    pub async fn catch_up(&self) -> Result<usize> {
        let mut applied = 0;
        let mut position = self.index.checkpoint_with_marker()?;
        let mut pending = Pending::default();
        loop {
            let events = self.catalog.outbox_after(position.seq, EVENTS_PER_BATCH).await?;
            let exhausted = events.len() < EVENTS_PER_BATCH as usize;
            // Documents are read as the catalog is now, after these events were read: one
            // read covers every event of the same artifact among them (not among later
            // reads, whose events may postdate an earlier document; those add it again and
            // the last one wins).
            let mut seen = std::collections::HashSet::new();
            let mut shredded = std::collections::HashSet::new();
            for event in events {
                position = checkpoint_at(&event);
                pending.events += 1;
                // Every replica follows the outbox: this is how the others learn that a
                // tenant's keys were destroyed where the call was made.
                if EventKind::from_outbox(&event.event_type) == Some(EventKind::ContentDestroyed)
                    && shredded.insert(event.tenant.clone())
                {
                    self.content.forget_tenant_content(&event.tenant);
                }
                if seen.insert(event.artifact_id.clone()) {
                    let scope = Scope::new(&event.tenant, &event.project);
                    let document = self.document(&scope, &event.artifact_id).await?;
                    pending.push(event.artifact_id, document);
                }
                if pending.is_full() {
                    applied += self.commit_pending(&mut pending, position.clone()).await?;
                }
            }
            if exhausted {
                applied += self.commit_pending(&mut pending, position).await?;
                return Ok(applied);
            }
        }
    }

    /// Commits what is pending (if anything) at outbox position `position`; returns the
    /// number of events it covered.
    async fn commit_pending(&self, pending: &mut Pending, position: Checkpoint) -> Result<usize> {
        if pending.events == 0 {
            return Ok(0);
        }
        let taken = std::mem::take(pending);
        self.commit(taken.changes, position).await?;
        metrics::counter!(crate::telemetry::names::INDEX_EVENTS_TOTAL).increment(taken.events as u64);
        Ok(taken.events)
    }

    /// Whether the catalog lacks the event at the index's checkpoint, or has another one
    /// there: the index was built from another catalog, or the catalog was restored from an
    /// older backup and is numbering new events again. Following the outbox from the
    /// checkpoint would skip changes, so the index is rebuilt instead.
    async fn diverged(&self) -> Result<bool> {
        let checkpoint = self.index.checkpoint_with_marker()?;
        if checkpoint.seq == 0 {
            return Ok(false);
        }
        let found = self.catalog.outbox_event(checkpoint.seq).await?;
        let agrees = match &found {
            None => false,
            // An index written before markers existed can only be checked for presence.
            Some(event) => checkpoint.marker.is_empty() || checkpoint_at(event) == checkpoint,
        };
        if !agrees {
            tracing::warn!(
                checkpoint = checkpoint.seq,
                marker = %checkpoint.marker,
                found = ?found.map(|e| checkpoint_at(&e).marker),
                "the catalog's outbox differs from the search index's; rebuilding the index"
            );
        }
        Ok(!agrees)
    }

    /// Every so often, makes sure the index can follow the catalog (rebuilding it when
    /// not); then applies what the outbox holds beyond the checkpoint.
    pub async fn step(&self, last_verified: &mut Option<Instant>) -> Result<usize> {
        if last_verified.is_none_or(|at| at.elapsed() >= VERIFY_EVERY) {
            if self.index.needs_rebuild() || self.diverged().await? {
                let written = self.rebuild().await?;
                tracing::info!(written, "search index rebuilt from the catalog");
            }
            *last_verified = Some(Instant::now());
        }
        self.catch_up().await
    }

    /// Records in the catalog how far this index has followed the outbox.
    pub async fn record_position(&self, replica_id: &str) -> Result<()> {
        let position = self.index.checkpoint()?;
        self.catalog
            .record_replica_position(replica_id, position, crate::domain::now_micros())
            .await
    }

    /// How far the index is behind the catalog: the age of the oldest change it has not
    /// applied (zero when it has applied them all).
    pub async fn lag(&self) -> Result<Duration> {
        let checkpoint = self.index.checkpoint()?;
        let oldest = self.catalog.oldest_outbox_event_after(checkpoint).await?;
        Ok(oldest.map_or(Duration::ZERO, |created| {
            Duration::from_micros((crate::domain::now_micros() - created).max(0) as u64)
        }))
    }

    /// Resolves when there may be new outbox events: this process wrote one, or the poll
    /// interval for other replicas' changes passed.
    pub async fn changes(&self) {
        tokio::select! {
            _ = self.catalog.outbox_written() => {}
            _ = tokio::time::sleep(IDLE_POLL) => {}
        }
    }

    /// Rebuilds the index from the catalog (`artifactd reindex`); returns the documents
    /// written. A crash half-way leaves checkpoint 0, so the next start replays the outbox.
    pub async fn rebuild(&self) -> Result<u64> {
        let high_water = self.catalog.max_outbox_seq().await?;
        self.index.rebuild_started();
        let index = self.index.clone();
        tokio::task::spawn_blocking(move || index.clear(0))
            .await
            .map_err(|e| Error::internal(format!("index task failed: {e}")))??;
        let mut after = String::new();
        let mut written = 0;
        let mut pending = Pending::default();
        loop {
            let batch = self.catalog.live_artifacts_after(&after, 200).await?;
            let Some(last) = batch.last() else { break };
            after = last.id.to_string();
            for artifact in batch {
                let id = artifact.id.to_string();
                let document = self.document_of(artifact).await?;
                pending.push(id, Some(document));
                pending.events += 1;
                written += 1;
                if pending.is_full() {
                    self.commit_pending(&mut pending, 0.into()).await?;
                }
            }
        }
        self.commit_pending(&mut pending, 0.into()).await?;
        let end = match self.catalog.outbox_event(high_water).await? {
            Some(event) => checkpoint_at(&event),
            None => high_water.into(),
        };
        self.commit(Vec::new(), end).await?;
        self.index.rebuilt();
        Ok(written)
    }
}

/// The checkpoint just after `event`.
fn checkpoint_at(event: &OutboxEvent) -> Checkpoint {
    Checkpoint {
        seq: event.seq,
        marker: format!("{}@{}", event.artifact_id, event.created_at),
    }
}

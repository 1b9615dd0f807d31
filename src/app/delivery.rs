//! Delivery: download links for browsers and CDNs, and the cache of decoded chunks that
//! repeated downloads and the search indexer read through.

use super::{Artifacts, DownloadPlan};
use crate::catalog::Scope;
use crate::domain::delivery::{Disposition, DownloadGrant, LinkKey};
use crate::domain::{Artifact, ArtifactVersion, Error, Result, Timestamp};
use crate::ingest::ChunkId;
use crate::telemetry::names;
use bytes::Bytes;
use std::time::Duration;

/// Download links and the cache; the `[delivery]` configuration section, keys read.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Where clients reach the HTTP listener, without a trailing `/`; empty when unknown.
    pub public_url: String,
    /// Keys that sign (the first) and verify (all) links. Empty: one derived from the
    /// service secret.
    pub link_keys: Vec<LinkKey>,
    pub default_link_ttl: Duration,
    pub max_link_ttl: Duration,
    pub cache_memory_bytes: u64,
    /// Warm the next version into the cache when an artifact's versions are read in order.
    pub prefetch: bool,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            public_url: String::new(),
            link_keys: Vec::new(),
            default_link_ttl: Duration::from_secs(3600),
            max_link_ttl: Duration::from_secs(7 * 24 * 3600),
            cache_memory_bytes: 64 * 1024 * 1024,
            prefetch: true,
        }
    }
}

/// A link to one version, as handed to the caller.
#[derive(Debug, Clone)]
pub struct DownloadLink {
    /// Absolute when the public address is known, otherwise path and query.
    pub url: String,
    pub version: String,
    pub expires_at: Timestamp,
    pub etag: String,
    pub size: u64,
}

/// The strong entity tag of a version: its content's blake3, quoted.
pub fn etag_of(blake3: &str) -> String {
    format!("\"{blake3}\"")
}

/// What the caches hold and how reads fared, for status calls.
#[derive(Debug, Clone, Default)]
pub struct CacheStatus {
    pub memory_bytes: u64,
    pub memory_capacity: u64,
    pub memory_hits: u64,
    pub memory_misses: u64,
    /// `None` when there is no disk cache.
    pub disk: Option<crate::storage::DiskCacheStatus>,
}

impl Artifacts {
    /// Reports the disk cache the store reads through.
    pub fn attach_disk_cache(&self, cache: std::sync::Arc<crate::storage::DiskCache>) {
        let _ = self.inner.disk_cache.set(cache);
    }

    pub fn cache_status(&self) -> CacheStatus {
        let memory = &self.inner.cache;
        CacheStatus {
            memory_bytes: memory.weight(),
            memory_capacity: self.inner.settings.delivery.cache_memory_bytes,
            memory_hits: memory.hits.load(std::sync::atomic::Ordering::Relaxed),
            memory_misses: memory.misses.load(std::sync::atomic::Ordering::Relaxed),
            disk: self.inner.disk_cache.get().map(|cache| cache.status()),
        }
    }

    /// Makes links absolute with `base` (`http://host:port`) when the configuration names
    /// no public address.
    pub fn serve_links_at(&self, base: String) {
        let _ = self.inner.link_base.set(base.trim_end_matches('/').to_owned());
    }

    /// The keys links are checked with; the first signs.
    pub fn link_keys(&self) -> Vec<LinkKey> {
        let configured = &self.inner.settings.delivery.link_keys;
        if configured.is_empty() {
            let mut material = b"download links of ".to_vec();
            material.extend_from_slice(&self.inner.secret());
            vec![LinkKey::derive(&material)]
        } else {
            configured.clone()
        }
    }

    /// Issues a link to `version` (resolved now) of an artifact the caller may read.
    pub async fn create_download_link(
        &self,
        scope: &Scope,
        artifact_id: &str,
        version: &str,
        ttl_seconds: u32,
        inline: bool,
    ) -> Result<DownloadLink> {
        let delivery = &self.inner.settings.delivery;
        let ttl = match ttl_seconds {
            0 => delivery.default_link_ttl,
            seconds => Duration::from_secs(u64::from(seconds)),
        };
        if ttl > delivery.max_link_ttl {
            return Err(Error::invalid(
                "ttl_seconds",
                format!(
                    "{ttl_seconds} is longer than the longest a link may work here ({} seconds)",
                    delivery.max_link_ttl.as_secs()
                ),
            ));
        }
        let plan = self.plan_download(scope, artifact_id, version, 0, 0).await?;
        // Rounded up to the next whole second, so a link works for at least its lifetime.
        let expires = (Timestamp::now().as_micros() + 999_999).div_euclid(1_000_000) + ttl.as_secs() as i64;
        let grant = DownloadGrant {
            tenant: plan.artifact.scope.tenant.clone(),
            project: scope.project.clone(),
            artifact_id: plan.artifact.id.to_string(),
            version: plan.version.version.clone(),
            content: Some(plan.version.blake3.clone()),
            expires,
            disposition: if inline {
                Disposition::Inline
            } else {
                Disposition::Attachment
            },
        };
        let keys = self.link_keys();
        let path = grant.signed_path(&keys[0]);
        let base = if delivery.public_url.is_empty() {
            self.inner.link_base.get().map(String::as_str).unwrap_or_default()
        } else {
            delivery.public_url.as_str()
        };
        Ok(DownloadLink {
            url: format!("{base}{path}"),
            version: plan.version.version.clone(),
            expires_at: Timestamp(expires * 1_000_000),
            etag: etag_of(&plan.version.blake3),
            size: plan.version.size,
        })
    }

    /// The whole version a verified link grants, ready to be narrowed to a range.
    pub async fn open_link(&self, grant: &DownloadGrant) -> Result<DownloadPlan> {
        let scope = Scope::new(&grant.tenant, &grant.project);
        let plan = self
            .plan_download(&scope, &grant.artifact_id, &grant.version, 0, 0)
            .await?;
        // The link names a version; an alias of the same name never stands in for it.
        if plan.version.version != grant.version {
            return Err(Error::NotFound(format!(
                "version {:?} of artifact {}",
                grant.version, grant.artifact_id
            )));
        }
        // Nor does other content under the same number (after a restore of the catalog to
        // an earlier point, the number made again): what the link was made for is gone.
        if grant
            .content
            .as_ref()
            .is_some_and(|content| *content != plan.version.blake3)
        {
            return Err(Error::NotFound(format!(
                "the content this link was made for: version {:?} of artifact {} holds other \
                 content now; ask for a new link",
                grant.version, grant.artifact_id
            )));
        }
        Ok(plan)
    }
}

/// Which version of each artifact was read last, to notice versions read in order.
pub(crate) struct ReadOrder {
    last: std::sync::Mutex<std::collections::HashMap<String, (i64, std::time::Instant)>>,
    /// Versions (artifact, seq) warmed lately, so one is not read again for every reason to.
    warmed: std::sync::Mutex<std::collections::HashMap<(String, i64), std::time::Instant>>,
    /// Warm-ups running at once; more are skipped, never queued.
    warming: std::sync::Arc<tokio::sync::Semaphore>,
}

/// Artifacts whose last read is remembered…
const READS_TRACKED: usize = 10_000;
/// …for this long.
const READ_MEMORY: Duration = Duration::from_secs(600);
const WARMERS: usize = 2;
/// A version warmed is not warmed again for this long.
const WARM_MEMORY: Duration = Duration::from_secs(60);
/// Artifacts warmed when a run reads what an earlier run read before them.
pub const RUN_PREFETCH_ARTIFACTS: usize = 2;

impl Default for ReadOrder {
    fn default() -> Self {
        Self {
            last: Default::default(),
            warmed: Default::default(),
            warming: std::sync::Arc::new(tokio::sync::Semaphore::new(WARMERS)),
        }
    }
}

impl ReadOrder {
    /// Records a read of the version numbered `seq`; whether the artifact's previous read
    /// (within [`READ_MEMORY`]) was of an older version: its versions are being read in order.
    fn forward(&self, artifact_id: &str, seq: i64) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = std::time::Instant::now();
        let previous = last.insert(artifact_id.to_owned(), (seq, now));
        if last.len() > READS_TRACKED {
            last.retain(|_, (_, at)| now.duration_since(*at) < READ_MEMORY);
            if last.len() > READS_TRACKED {
                last.clear();
            }
        }
        matches!(previous, Some((earlier, at)) if earlier < seq && now.duration_since(at) < READ_MEMORY)
    }

    /// Whether the version numbered `seq` was not warmed within [`WARM_MEMORY`]; it counts as
    /// warmed from now.
    fn claim_warming(&self, artifact_id: &str, seq: i64) -> bool {
        let mut warmed = self
            .warmed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = std::time::Instant::now();
        if warmed.len() > READS_TRACKED {
            warmed.retain(|_, at| now.duration_since(*at) < WARM_MEMORY);
        }
        match warmed.insert((artifact_id.to_owned(), seq), now) {
            Some(at) if now.duration_since(at) < WARM_MEMORY => {
                warmed.insert((artifact_id.to_owned(), seq), at);
                false
            }
            _ => true,
        }
    }
}

impl Artifacts {
    /// When a version is read right after an older one of the same artifact, reads the next
    /// version into the chunk cache in the background, so that the client's next read finds
    /// it there. Only versions that fit a quarter of the cache, at most two at a time.
    pub(super) fn warm_next_version(&self, plan: &DownloadPlan) {
        if !self.prefetching() || plan.offset != 0 {
            return;
        }
        if !self
            .inner
            .read_order
            .forward(plan.artifact.id.as_str(), plan.version.seq)
        {
            return;
        }
        let (artifact, seq) = (plan.artifact.clone(), plan.version.seq);
        self.warm_in_background(move |this| async move {
            let next = this.inner.catalog.next_version(artifact.id.as_str(), seq).await?;
            Ok(next.map(|next| (artifact, next)).into_iter().collect())
        });
    }

    /// When a workflow run reads an artifact, warms what the latest other run that read it
    /// read next (the newest version of each, at most [`RUN_PREFETCH_ARTIFACTS`]): runs of
    /// one workflow tend to read the same inputs in the same order, each time at their
    /// newest version.
    pub(super) fn warm_after_run_read(&self, tenant: &str, run_id: &str, artifact_id: &str) {
        if !self.prefetching() {
            return;
        }
        let (tenant, run_id, artifact_id) = (tenant.to_owned(), run_id.to_owned(), artifact_id.to_owned());
        self.warm_in_background(move |this| async move {
            let catalog = &this.inner.catalog;
            let next = catalog
                .read_next_by_previous_run(&tenant, &run_id, &artifact_id, RUN_PREFETCH_ARTIFACTS)
                .await?;
            if next.is_empty() {
                return Ok(Vec::new());
            }
            let artifacts = catalog.tenant_artifacts(&tenant, &next, false).await?;
            let mut chosen = Vec::new();
            for id in &next {
                let Some(artifact) = artifacts.get(id) else {
                    continue;
                };
                if let Some(version) = catalog.version(id, &artifact.latest_version).await? {
                    chosen.push((artifact.clone(), version));
                }
            }
            Ok(chosen)
        });
    }

    fn prefetching(&self) -> bool {
        self.inner.settings.delivery.prefetch && self.inner.cache.enabled()
    }

    /// Reads the versions `choose` picks into the chunk cache, in the background, holding
    /// one of the two warming permits (none free: nothing is warmed). Versions larger than
    /// a quarter of the cache are left out.
    fn warm_in_background<F, Fut>(&self, choose: F)
    where
        F: FnOnce(Artifacts) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<Vec<(Artifact, ArtifactVersion)>>> + Send,
    {
        let Ok(permit) = self.inner.read_order.warming.clone().try_acquire_owned() else {
            return;
        };
        let this = self.clone();
        let limit = self.inner.settings.delivery.cache_memory_bytes / 4;
        tokio::spawn(crate::compute::in_background(async move {
            let _permit = permit;
            let chosen = match choose(this.clone()).await {
                Ok(chosen) => chosen,
                Err(error) => {
                    tracing::debug!(%error, "could not choose what to warm");
                    return;
                }
            };
            for (artifact, version) in chosen {
                if version.size > limit
                    || !this
                        .inner
                        .read_order
                        .claim_warming(artifact.id.as_str(), version.seq)
                {
                    continue;
                }
                let plan = DownloadPlan {
                    artifact,
                    offset: 0,
                    length: version.size,
                    version,
                };
                let warmed = match this.content(&plan).await {
                    Ok(content) => {
                        use futures::TryStreamExt;
                        content
                            .try_fold(0u64, |n, piece| {
                                futures::future::ready(Ok(n + piece.len() as u64))
                            })
                            .await
                    }
                    Err(error) => Err(error),
                };
                match warmed {
                    Ok(bytes) => metrics::counter!(names::PREFETCHED_BYTES_TOTAL).increment(bytes),
                    Err(error) => tracing::debug!(%error, "could not warm a version"),
                }
            }
        }));
    }
}

/// Decoded, verified chunks kept in memory. The policy (quick_cache's CLOCK-Pro
/// variant) admits new chunks to a probation part and promotes those read again, so one
/// large download passing through evicts other probationary chunks, not the hot ones.
/// Chunk ids are keyed per tenant, so equal ids never cross tenants.
pub(crate) struct ChunkCache {
    chunks: Option<quick_cache::sync::Cache<ChunkId, Bytes, ChunkWeight>>,
    capacity_bytes: u64,
    hits: std::sync::atomic::AtomicU64,
    misses: std::sync::atomic::AtomicU64,
    /// Bumped by every clear: a read that started before one keeps nothing after it.
    generation: std::sync::atomic::AtomicU64,
}

/// Whether a read keeps the chunks it decodes in the [`ChunkCache`], and the cache's
/// generation when it began (a cache cleared since, a tenant's keys destroyed, keeps
/// nothing from it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Admission {
    generation: u64,
    keep: bool,
}

impl Admission {
    /// The same read's delta bases: kept whatever the read's size.
    pub(crate) fn for_bases(self) -> Self {
        Self { keep: true, ..self }
    }
}

#[derive(Clone)]
struct ChunkWeight;

/// What an entry costs beyond its bytes (key, slot, `Bytes` header), roughly.
const ENTRY_OVERHEAD: u64 = 96;

impl quick_cache::Weighter<ChunkId, Bytes> for ChunkWeight {
    fn weight(&self, _id: &ChunkId, chunk: &Bytes) -> u64 {
        chunk.len() as u64 + ENTRY_OVERHEAD
    }
}

impl ChunkCache {
    pub(crate) fn new(capacity_bytes: u64) -> Self {
        let chunks = (capacity_bytes > 0).then(|| {
            let estimated = (capacity_bytes / (16 * 1024)).max(16) as usize;
            quick_cache::sync::Cache::with_weighter(estimated, capacity_bytes, ChunkWeight)
        });
        Self {
            chunks,
            capacity_bytes,
            hits: Default::default(),
            misses: Default::default(),
            generation: Default::default(),
        }
    }

    pub(crate) fn weight(&self) -> u64 {
        self.chunks.as_ref().map_or(0, |chunks| chunks.weight())
    }

    pub(crate) fn enabled(&self) -> bool {
        self.chunks.is_some()
    }

    pub(crate) fn get(&self, id: &ChunkId) -> Option<Bytes> {
        self.chunks.as_ref()?.get(id)
    }

    /// Counts a read that found `chunks` chunks (`bytes` bytes) here…
    pub(crate) fn record_hits(&self, chunks: usize, bytes: usize) {
        self.hits
            .fetch_add(chunks as u64, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!(names::CHUNK_CACHE_HITS_TOTAL).increment(chunks as u64);
        metrics::counter!(names::CHUNK_CACHE_HIT_BYTES_TOTAL).increment(bytes as u64);
    }

    /// …or had to read `chunks` chunks from the store.
    pub(crate) fn record_misses(&self, chunks: usize) {
        self.misses
            .fetch_add(chunks as u64, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!(names::CHUNK_CACHE_MISSES_TOTAL).increment(chunks as u64);
        // A miss is followed by inserts: the size gauge follows a read at a time.
        self.report();
    }

    fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// What a read of `read_bytes` bytes of content may keep, noted before it starts. A
    /// read larger than the whole cache keeps nothing: kept, it could not stay whole (its
    /// end would push out its beginning before anyone read it again) and it would push out
    /// everything else, for a copy of every chunk it passes. Such a read comes from the
    /// store (or the disk cache) every time, as large sequential scans bypass the buffer
    /// cache of a database.
    pub(crate) fn admission(&self, read_bytes: u64) -> Admission {
        let keep = read_bytes <= self.capacity_bytes;
        if !keep && self.enabled() {
            metrics::counter!(names::CHUNK_CACHE_BYPASSED_READS_TOTAL).increment(1);
        }
        Admission {
            generation: self.generation(),
            keep,
        }
    }

    /// What a read of delta bases may keep: every base, as bases serve many chunks.
    pub(crate) fn admission_for_bases(&self) -> Admission {
        Admission {
            generation: self.generation(),
            keep: true,
        }
    }

    /// Keeps a copy of `chunk`, which must have been checked against `id`, when the read's
    /// `admission` allows it and the cache was not cleared since the read began. A copy, so
    /// that the entry does not keep alive the larger buffer it was decoded into.
    pub(crate) fn insert(&self, id: ChunkId, chunk: &[u8], admission: Admission) {
        if let Some(chunks) = &self.chunks
            && admission.keep
            && self.generation() == admission.generation
        {
            chunks.insert(id, Bytes::copy_from_slice(chunk));
        }
    }

    /// Forgets everything (a tenant's keys were destroyed: its content must not outlive
    /// them here).
    pub(crate) fn clear(&self) {
        self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        if let Some(chunks) = &self.chunks {
            chunks.clear();
        }
        self.report();
    }

    pub(crate) fn report(&self) {
        if let Some(chunks) = &self.chunks {
            metrics::gauge!(names::CHUNK_CACHE_BYTES).set(chunks.weight() as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_is_warmed_once_within_the_warm_memory() {
        let order = ReadOrder::default();
        assert!(order.claim_warming("a", 3));
        assert!(!order.claim_warming("a", 3), "warmed a moment ago");
        assert!(order.claim_warming("a", 4), "another version");
        assert!(order.claim_warming("b", 3), "another artifact");
        assert!(!order.claim_warming("a", 3));
    }

    #[test]
    fn reads_in_order_are_told_from_others() {
        let order = ReadOrder::default();
        assert!(!order.forward("a", 1), "a first read");
        assert!(order.forward("a", 2));
        assert!(!order.forward("a", 2), "the same version again");
        assert!(!order.forward("a", 1), "backwards");
    }

    fn id(n: u32) -> ChunkId {
        let mut bytes = [0u8; 32];
        bytes[..4].copy_from_slice(&n.to_le_bytes());
        ChunkId(bytes)
    }

    #[test]
    fn a_large_scan_does_not_evict_the_hot_chunks() {
        const CHUNK: usize = 16 * 1024;
        let cache = ChunkCache::new(64 * (CHUNK as u64 + ENTRY_OVERHEAD) * 4);
        let chunk = vec![7u8; CHUNK];
        let small_read = cache.admission(CHUNK as u64);
        // 64 hot chunks, read several times each.
        for round in 0..4 {
            for n in 0..64 {
                if cache.get(&id(n)).is_none() {
                    assert_eq!(round, 0, "hot chunk {n} missed in round {round}");
                    cache.insert(id(n), &chunk, small_read);
                }
            }
        }
        // Small reads stream 4,096 other chunks through, 16 times the cache.
        for n in 1_000..5_096 {
            if cache.get(&id(n)).is_none() {
                cache.insert(id(n), &chunk, small_read);
            }
        }
        let kept = (0..64).filter(|n| cache.get(&id(*n)).is_some()).count();
        assert!(kept >= 60, "only {kept} of 64 hot chunks survived the scan");
        let weight = cache.chunks.as_ref().unwrap().weight();
        assert!(weight <= 64 * (CHUNK as u64 + ENTRY_OVERHEAD) * 4, "{weight}");
    }

    #[test]
    fn a_cache_of_size_zero_keeps_nothing() {
        let cache = ChunkCache::new(0);
        cache.insert(id(1), b"x", cache.admission(1));
        cache.insert(id(1), b"x", cache.admission_for_bases());
        assert!(cache.get(&id(1)).is_none());
        assert!(!cache.enabled());
    }

    #[test]
    fn a_read_larger_than_the_cache_passes_through_it() {
        let capacity = 1024 * 1024;
        let cache = ChunkCache::new(capacity);
        let chunk = vec![3u8; 1024];
        let large = cache.admission(capacity + 1);
        cache.insert(id(1), &chunk, large);
        assert!(
            cache.get(&id(1)).is_none(),
            "a read larger than the cache kept a chunk"
        );
        // The bases such a read decodes against are kept all the same.
        cache.insert(id(2), &chunk, large.for_bases());
        assert!(cache.get(&id(2)).is_some());
        let fitting = cache.admission(capacity);
        cache.insert(id(3), &chunk, fitting);
        assert!(cache.get(&id(3)).is_some());
        // A read begun before the cache was cleared keeps nothing after.
        cache.clear();
        cache.insert(id(4), &chunk, fitting);
        cache.insert(id(5), &chunk, cache.admission_for_bases());
        assert!(cache.get(&id(4)).is_none());
        assert!(cache.get(&id(5)).is_some());
    }
}

//! Garbage collection: mark and sweep over packs with a grace period, compaction of mostly
//! dead packs, and deletion of the objects on every store.
//!
//! A run, under the catalog lease `gc` (one collector across replicas):
//! 1. one tenant at a time (a pack belongs to one tenant, which bounds memory): scans every
//!    version's manifest (live and in the trash) for the chunks they need, then the tenant's
//!    chunk index rows and packs, and so learns each pack's live bytes; compacts the packs
//!    whose live bytes fell under the threshold (their live chunks, verified, are written
//!    into new packs and the index moved there; the old packs, now unneeded, go the way of
//!    steps 2 and 3 in later runs, so a download that planned with them still finds them
//!    during the grace period);
//! 2. marks packs nothing needs (committed packs without live chunks; staged or abandoned
//!    packs older than the grace period), and clears marks of packs needed again;
//! 3. sweeps packs whose mark is older than the grace period and which this run, which began
//!    after the mark was made, still found unneeded: one transaction per pack that takes the
//!    mark (an upload reusing the pack's chunks takes it first in its commit, and then the
//!    sweep leaves the pack alone), removes its index rows and row, drops its copy orders,
//!    and leaves a tombstone;
//! 4. deletes tombstoned objects from the store (both sides of a failover pair), keeping the
//!    tombstone until a delete a grace period after the burial succeeded, so a copy a
//!    replicator wrote late goes too.

use super::Artifacts;
use super::upload::seal_and_stage;
use crate::catalog::{GcPack, Tombstoned};
use crate::domain::{Error, Result, now_micros};
use crate::ingest::chunk::decode;
use crate::ingest::pack::read_trailer;
use crate::ingest::{ChunkId, PackBuilder, PackId, TenantKey};
use crate::storage::GetOptions;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const SCAN_BATCH: u32 = 1000;
const MANIFEST_BATCH: u32 = 200;
const GC_LEASE: &str = "gc";

/// Packs and bytes kept for one reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    pub reason: String,
    pub packs: u64,
    pub bytes: u64,
}

/// What one collection run examined, reclaimed and kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    pub id: String,
    pub holder: String,
    pub dry_run: bool,
    pub started_at: i64,
    pub finished_at: i64,
    pub versions_scanned: u64,
    pub chunks_scanned: u64,
    pub packs_examined: u64,
    pub bytes_examined: u64,
    /// Packs marked by this run (their deletion waits for the grace period).
    pub packs_marked: u64,
    /// Marks cleared because their packs are needed again.
    pub marks_cleared: u64,
    /// Packs removed from the catalog (a dry run: that would be).
    pub packs_reclaimed: u64,
    pub bytes_reclaimed: u64,
    /// Packs whose live chunks were rewritten (a dry run: that would be).
    pub packs_compacted: u64,
    /// Their size, and the size of what replaced them.
    pub bytes_compacted: u64,
    pub bytes_rewritten: u64,
    /// Objects deleted from the store, and deletes that failed (retried next run).
    pub objects_deleted: u64,
    pub delete_failures: u64,
    pub kept: Vec<Kept>,
    pub problems: Vec<String>,
}

/// What the scan learned about one pack.
#[derive(Default)]
struct Usage {
    live_bytes: u64,
    live: Vec<ChunkId>,
}

/// A live chunk as compaction copies it: id, codec, raw length, stored bytes opened from
/// any sealing, and a delta's base.
type LiveChunk = (ChunkId, crate::ingest::Codec, u32, Vec<u8>, Option<ChunkId>);

/// Counts a pack kept, under its reason.
fn keep(kept: &mut BTreeMap<&'static str, Kept>, reason: &'static str, pack: &GcPack) {
    let entry = kept.entry(reason).or_insert_with(|| Kept {
        reason: reason.to_owned(),
        ..Kept::default()
    });
    entry.packs += 1;
    entry.bytes += pack.size;
}

impl Artifacts {
    /// One collection run. A dry run changes nothing and reports what a run would do now
    /// (packs it would sweep are those whose marks already aged past the grace period).
    pub async fn collect_garbage(&self, dry_run: bool) -> Result<GcReport> {
        let inner = &self.inner;
        let settings = &inner.settings.retention;
        let holder = format!("{}:{}", hostname(), uuid::Uuid::now_v7());
        let lease = Duration::from_secs(settings.lease_seconds.max(2));
        let renewing = CancellationToken::new();
        if !dry_run {
            let now = now_micros();
            if let Some(held) = inner
                .catalog
                .take_lease(GC_LEASE, &holder, now, now + lease.as_micros() as i64)
                .await?
            {
                return Err(Error::FailedPrecondition(format!(
                    "another garbage collection ({}) holds the lease for {} more seconds",
                    held.holder,
                    (held.expires_at - now).max(0) / 1_000_000
                )));
            }
            let (catalog, holder, token) = (inner.catalog.clone(), holder.clone(), renewing.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = tokio::time::sleep(lease / 3) => {}
                    }
                    let now = now_micros();
                    match catalog
                        .take_lease(GC_LEASE, &holder, now, now + lease.as_micros() as i64)
                        .await
                    {
                        Ok(None) => {}
                        Ok(Some(_)) => return,
                        Err(error) => tracing::warn!(%error, "could not renew the collection lease"),
                    }
                }
            });
        }
        let started = std::time::Instant::now();
        let result = self.collect(dry_run, &holder).await;
        renewing.cancel();
        if !dry_run && let Err(error) = inner.catalog.release_lease(GC_LEASE, &holder).await {
            tracing::warn!(%error, "could not release the collection lease; it expires by itself");
        }
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!(crate::telemetry::names::GC_RUNS_TOTAL, "outcome" => outcome).increment(1);
        metrics::histogram!(crate::telemetry::names::GC_DURATION_SECONDS)
            .record(started.elapsed().as_secs_f64());
        let report = result?;
        if !dry_run {
            metrics::counter!(crate::telemetry::names::GC_RECLAIMED_BYTES_TOTAL)
                .increment(report.bytes_reclaimed);
        }
        Ok(report)
    }

    async fn collect(&self, dry_run: bool, holder: &str) -> Result<GcReport> {
        let inner = &self.inner;
        let catalog = &inner.catalog;
        let settings = &inner.settings.retention;
        let grace = settings.gc_grace_seconds.saturating_mul(1_000_000) as i64;
        let t0 = now_micros();
        let mut report = GcReport {
            id: uuid::Uuid::now_v7().to_string(),
            holder: holder.to_owned(),
            dry_run,
            started_at: t0,
            ..GcReport::default()
        };

        // 1. One tenant at a time (a pack belongs to one tenant, so memory is bounded by
        // the largest tenant's chunk ids): what its versions need, what each of its packs
        // holds of that, which packs are unneeded, which are compacted now.
        let mut kept: BTreeMap<&'static str, Kept> = BTreeMap::new();
        let mut unneeded: Vec<GcPack> = Vec::new();
        // Packs compaction wrote chunks into: needed, whatever the scan found before.
        let mut produced: HashSet<String> = HashSet::new();
        let mut budget = settings.gc_compact_max_bytes;
        for tenant in catalog.gc_tenants().await? {
            let mut sparse = Vec::new();
            self.scan_tenant(
                &tenant,
                t0 - grace,
                &mut report,
                &mut kept,
                &mut unneeded,
                &mut sparse,
            )
            .await?;
            let mut chosen = Vec::new();
            for (pack, use_of) in sparse {
                if pack.size > budget {
                    keep(
                        &mut kept,
                        "sparse, waits for compaction (this run's budget is spent)",
                        &pack,
                    );
                    continue;
                }
                budget -= pack.size;
                chosen.push((pack, use_of));
            }
            if chosen.is_empty() {
                continue;
            }
            if dry_run {
                for (pack, use_of) in &chosen {
                    report.packs_compacted += 1;
                    report.bytes_compacted += pack.size;
                    report.bytes_rewritten += use_of.live_bytes;
                }
                continue;
            }
            if let Err(error) = self
                .compact(&tenant, chosen, holder, &mut report, &mut produced)
                .await
            {
                if matches!(error, Error::Aborted(_)) {
                    return Err(error);
                }
                report
                    .problems
                    .push(format!("compacting packs of tenant {tenant:?} failed: {error}"));
            }
        }

        // A compacted pack with the bytes of one the scan found unneeded (the same chunks in
        // the same order) is that pack, and holds the chunks now.
        unneeded.retain(|pack| !produced.contains(&pack.pack_id));

        // 2. Marks: on packs found unneeded, off packs needed again.
        let marks = catalog.gc_marks().await?;
        let unneeded_ids: HashSet<&str> = unneeded.iter().map(|p| p.pack_id.as_str()).collect();
        let clear: Vec<String> = marks
            .keys()
            .filter(|pack| !unneeded_ids.contains(pack.as_str()))
            .cloned()
            .collect();
        let to_mark: Vec<String> = unneeded
            .iter()
            .filter(|pack| !marks.contains_key(&pack.pack_id))
            .map(|pack| pack.pack_id.clone())
            .collect();
        report.packs_marked = to_mark.len() as u64;
        report.marks_cleared = clear.len() as u64;
        let (sweepable, waiting): (Vec<GcPack>, Vec<GcPack>) = unneeded
            .into_iter()
            .partition(|pack| marks.get(&pack.pack_id).is_some_and(|at| *at <= t0 - grace));
        for pack in &waiting {
            keep(
                &mut kept,
                "unneeded, marked; deleted after the grace period",
                pack,
            );
        }
        if !dry_run {
            catalog
                .update_marks(holder, &to_mark, &clear, now_micros())
                .await?;
        }

        // 3. Sweep.
        for pack in &sweepable {
            let swept = dry_run || catalog.sweep_pack(holder, pack, t0 - grace, now_micros()).await?;
            if swept {
                report.packs_reclaimed += 1;
                report.bytes_reclaimed += pack.size;
            } else {
                keep(&mut kept, "needed again since it was marked", pack);
            }
        }

        // 4. Objects.
        if !dry_run {
            for (pack_id, _size, buried_at) in catalog.tombstones().await? {
                let Some(key) = PackId::from_hex(&pack_id).map(|id| id.object_key()) else {
                    continue;
                };
                let store = inner.store.clone();
                let deleting = key.clone();
                let outcome = catalog
                    .delete_tombstoned(holder, &pack_id, buried_at <= t0 - grace, || async move {
                        store.delete(&deleting).await.map_err(|error| error.to_string())
                    })
                    .await?;
                match outcome {
                    Tombstoned::Deleted => report.objects_deleted += 1,
                    Tombstoned::Revived => {}
                    Tombstoned::Failed(error) => {
                        report.delete_failures += 1;
                        report
                            .problems
                            .push(format!("deleting {key} failed (retried next run): {error}"));
                    }
                }
            }
        }
        report.kept = kept.into_values().collect();
        report.finished_at = now_micros();
        let json = serde_json::to_string(&report).map_err(|e| Error::internal(e.to_string()))?;
        catalog
            .record_gc_run(
                &report.id,
                holder,
                dry_run,
                report.started_at,
                report.finished_at,
                &json,
            )
            .await?;
        tracing::info!(
            dry_run,
            reclaimed_packs = report.packs_reclaimed,
            reclaimed_bytes = report.bytes_reclaimed,
            marked = report.packs_marked,
            compacted = report.packs_compacted,
            deleted = report.objects_deleted,
            problems = report.problems.len(),
            "garbage collection finished"
        );
        Ok(report)
    }

    /// Scans one tenant: the chunks its versions (live and in the trash) need, then its chunk
    /// index and packs. Unneeded packs (committed without live chunks; staged or abandoned
    /// before `stale_before`) go to `unneeded`, sparse ones with their live chunks to `sparse`.
    async fn scan_tenant(
        &self,
        tenant: &str,
        stale_before: i64,
        report: &mut GcReport,
        kept: &mut BTreeMap<&'static str, Kept>,
        unneeded: &mut Vec<GcPack>,
        sparse: &mut Vec<(GcPack, Usage)>,
    ) -> Result<()> {
        let catalog = &self.inner.catalog;
        let below_percent = u64::from(self.inner.settings.retention.gc_compact_below_percent);
        let mut needed: HashSet<ChunkId> = HashSet::new();
        let mut after: Option<(String, i64)> = None;
        loop {
            let batch = catalog
                .stored_manifests(
                    Some(tenant),
                    after.as_ref().map(|(id, seq)| (id.as_str(), *seq)),
                    MANIFEST_BATCH,
                )
                .await?;
            let Some(last) = batch.last() else { break };
            after = Some((last.artifact_id.clone(), last.seq));
            for mut stored in batch {
                report.versions_scanned += 1;
                let manifest = std::mem::replace(&mut stored.manifest, Err(String::new())).map_err(|error| {
                    // Never collect on a partial picture.
                    Error::DataLoss(format!(
                        "the manifest of {}@{} does not decode ({error}); collection stopped without deleting anything",
                        stored.artifact_id, stored.version
                    ))
                })?;
                needed.extend(manifest.entries().map(|entry| entry.chunk_id));
            }
        }
        // A delta chunk needs its base, and that base its own, however deep.
        let mut bases: HashMap<ChunkId, ChunkId> = HashMap::new();
        let mut cursor: Option<ChunkId> = None;
        loop {
            let rows = catalog
                .delta_bases(tenant, cursor.as_ref(), SCAN_BATCH * 10)
                .await?;
            let Some((last, _)) = rows.last() else { break };
            cursor = Some(*last);
            bases.extend(rows);
        }
        let mut pending: Vec<ChunkId> = needed
            .iter()
            .filter(|id| bases.contains_key(id))
            .copied()
            .collect();
        while let Some(id) = pending.pop() {
            if let Some(base) = bases.get(&id)
                && needed.insert(*base)
            {
                pending.push(*base);
            }
        }
        drop(bases);
        let mut usage: HashMap<String, Usage> = HashMap::new();
        let mut cursor: Option<ChunkId> = None;
        loop {
            let rows = catalog.chunk_rows(tenant, cursor.as_ref(), SCAN_BATCH).await?;
            let Some(last) = rows.last() else { break };
            cursor = Some(last.chunk_id);
            for row in rows {
                report.chunks_scanned += 1;
                let entry = usage.entry(row.pack_id).or_default();
                if needed.contains(&row.chunk_id) {
                    entry.live_bytes += u64::from(row.stored_len);
                    entry.live.push(row.chunk_id);
                }
            }
        }
        drop(needed);
        // Small: under the setting, and under half a pack as uploads make them (a pack that
        // size is as large as packs get, and merging it would only write it again).
        let merge_below = self
            .inner
            .settings
            .retention
            .gc_merge_below_bytes
            .min(self.inner.settings.ingest.pack_target_bytes as u64 / 2);
        let mut small: Vec<(GcPack, Usage)> = Vec::new();
        let mut after = String::new();
        loop {
            let packs = catalog.gc_packs(tenant, &after, SCAN_BATCH).await?;
            let Some(last) = packs.last() else { break };
            after = last.pack_id.clone();
            let ids: Vec<String> = packs.iter().map(|p| p.pack_id.clone()).collect();
            let pinned = catalog.pinned(&ids).await?;
            for pack in packs {
                report.packs_examined += 1;
                report.bytes_examined += pack.size;
                let use_of = usage.remove(&pack.pack_id).unwrap_or_default();
                if pinned.contains(&pack.pack_id) {
                    // A backup needs it as it is: neither collected nor compacted.
                    keep(kept, "pinned by a backup", &pack);
                    continue;
                }
                match pack.state.as_str() {
                    "committed" if use_of.live.is_empty() => unneeded.push(pack),
                    "committed"
                        if use_of.live_bytes.saturating_mul(100)
                            < pack.size.saturating_mul(below_percent) =>
                    {
                        sparse.push((pack, use_of))
                    }
                    "committed" if pack.size < merge_below => small.push((pack, use_of)),
                    "committed" => keep(kept, "needed by a version", &pack),
                    _ if pack.created_at <= stale_before => unneeded.push(pack),
                    _ => keep(kept, "an upload may still be writing it", &pack),
                }
            }
        }
        // Small packs (each small upload seals its own) are merged into larger ones, which
        // takes two at least: one alone would only be written again as it is.
        if small.len() >= 2 {
            sparse.extend(small);
        } else {
            for (pack, _) in &small {
                keep(kept, "needed by a version", pack);
            }
        }
        Ok(())
    }

    /// Rewrites the live chunks of sparse packs of one tenant into new packs.
    async fn compact(
        &self,
        tenant: &str,
        packs: Vec<(GcPack, Usage)>,
        holder: &str,
        report: &mut GcReport,
        produced: &mut HashSet<String>,
    ) -> Result<()> {
        let inner = &self.inner;
        let target = inner.settings.ingest.pack_target_bytes;
        let tenant_key = TenantKey::derive(&inner.secret(), tenant);
        let sealing = inner.keys.sealing_key(&inner.catalog, tenant).await?;
        let mut builder = PackBuilder::new();
        // Each chunk in the builder, and the pack it comes from.
        let mut sources: HashMap<ChunkId, String> = HashMap::new();
        let mut compacted: Vec<&GcPack> = Vec::new();
        for (pack, use_of) in &packs {
            match self.live_chunks(tenant, &tenant_key, pack, use_of).await {
                Ok(chunks) => {
                    for (id, codec, raw_len, stored, base) in chunks {
                        if sources.insert(id, pack.pack_id.clone()).is_none() {
                            builder.add(id, codec, raw_len, &stored, base);
                        }
                    }
                    compacted.push(pack);
                }
                Err(error) => {
                    report
                        .problems
                        .push(format!("pack {} was not compacted: {error}", pack.pack_id));
                    continue;
                }
            }
            if builder.len() >= target {
                let full = std::mem::take(&mut builder);
                produced.insert(
                    self.commit_compacted(
                        tenant,
                        full,
                        &std::mem::take(&mut sources),
                        sealing.clone(),
                        holder,
                        report,
                    )
                    .await?,
                );
                for pack in compacted.drain(..) {
                    report.packs_compacted += 1;
                    report.bytes_compacted += pack.size;
                }
            }
        }
        if !compacted.is_empty() {
            produced.insert(
                self.commit_compacted(tenant, builder, &sources, sealing, holder, report)
                    .await?,
            );
            for pack in compacted {
                report.packs_compacted += 1;
                report.bytes_compacted += pack.size;
            }
        }
        Ok(())
    }

    /// Writes a compacted pack and moves the index of its chunks from their old packs
    /// (`sources`) to it; its id.
    async fn commit_compacted(
        &self,
        tenant: &str,
        builder: PackBuilder,
        sources: &HashMap<ChunkId, String>,
        sealing: Option<Arc<super::keys::SealingKey>>,
        holder: &str,
        report: &mut GcReport,
    ) -> Result<String> {
        if builder.is_empty() {
            return Ok(String::new());
        }
        let inner = &self.inner;
        let upload_id = format!("gc:{}", report.id);
        let (sealed, generation) = seal_and_stage(inner, tenant, builder, sealing, &upload_id).await?;
        let key = sealed.id.object_key();
        inner
            .store
            .put(&key, sealed.bytes.clone())
            .await
            .map_err(|error| Error::Unavailable(format!("writing compacted pack {key} failed: {error}")))?;
        report.bytes_rewritten += sealed.bytes.len() as u64;
        let moves: Vec<(String, crate::ingest::PackEntry)> = sealed
            .entries
            .iter()
            .filter_map(|entry| sources.get(&entry.chunk_id).map(|old| (old.clone(), *entry)))
            .collect();
        let staged = crate::catalog::StagedPack {
            pack_id: sealed.id.to_hex(),
            generation,
        };
        inner
            .catalog
            .relocate_chunks(holder, tenant, &staged, &moves, now_micros())
            .await?;
        Ok(staged.pack_id)
    }

    /// The live chunks of a pack, each verified against its id (a delta chunk decoded
    /// against its base): (id, codec, raw length, the stored bytes opened from any
    /// sealing, a delta's base).
    async fn live_chunks(
        &self,
        tenant: &str,
        tenant_key: &TenantKey,
        pack: &GcPack,
        use_of: &Usage,
    ) -> Result<Vec<LiveChunk>> {
        let inner = &self.inner;
        let id = PackId::from_hex(&pack.pack_id)
            .ok_or_else(|| Error::internal(format!("pack id {:?} is malformed", pack.pack_id)))?;
        let locations = inner.catalog.chunk_locations(tenant, &use_of.live).await?;
        let bytes = inner
            .store
            .get(&id.object_key(), GetOptions::default())
            .await
            .map_err(|error| Error::Unavailable(format!("reading it failed: {error}")))?;
        read_trailer(id, &bytes).map_err(|error| Error::DataLoss(format!("its trailer: {error}")))?;
        let data_keys = inner
            .keys
            .data_keys(&inner.catalog, tenant, locations.values())
            .await?;
        let base_ids: Vec<ChunkId> = locations
            .values()
            .filter(|location| location.pack_id == pack.pack_id)
            .filter_map(|location| location.base)
            .collect();
        let bases = if base_ids.is_empty() {
            super::download::PlainChunks::cached(HashMap::new())
        } else {
            super::download::plain_chunks(
                inner.clone(),
                Arc::from(tenant),
                tenant_key.clone(),
                base_ids,
                inner.cache.admission_for_bases(),
                0,
            )
            .await?
        };
        let mut chunks = Vec::new();
        for (chunk_id, location) in &locations {
            if location.pack_id != pack.pack_id {
                continue;
            }
            let start = location.offset as usize;
            let stored = bytes
                .get(start..start + location.stored_len as usize)
                .ok_or_else(|| Error::DataLoss(format!("chunk {} lies past its end", chunk_id.to_hex())))?;
            let opened = match (&location.key, data_keys.get(&pack.pack_id)) {
                (None, _) => stored.to_vec(),
                (Some(_), Some(key)) => {
                    key.open_chunk(chunk_id, location.offset, stored)
                        .map_err(|error| {
                            Error::DataLoss(format!("chunk {} does not open: {error}", chunk_id.to_hex()))
                        })?
                }
                (Some(_), None) => return Err(Error::DataLoss("its data key is missing".into())),
            };
            let base = location
                .base
                .and_then(|base| bases.chunks.get(&base))
                .map(|base| &base[..]);
            let raw = decode(location.codec, &opened, location.raw_len as usize, base).map_err(|error| {
                Error::DataLoss(format!("chunk {} does not decode: {error}", chunk_id.to_hex()))
            })?;
            if tenant_key.chunk_id(&raw) != *chunk_id {
                return Err(Error::DataLoss(format!(
                    "chunk {} does not match its hash",
                    chunk_id.to_hex()
                )));
            }
            chunks.push((*chunk_id, location.codec, location.raw_len, opened, location.base));
        }
        Ok(chunks)
    }

    /// The newest collection reports.
    pub async fn gc_runs(&self, limit: u32) -> Result<Vec<GcReport>> {
        self.inner
            .catalog
            .gc_runs(super::page_size(limit))
            .await?
            .iter()
            .map(|json| {
                serde_json::from_str(json)
                    .map_err(|e| Error::internal(format!("a stored collection report does not parse: {e}")))
            })
            .collect()
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| "artifactd".to_owned())
}

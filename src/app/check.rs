//! The consistency check: every version's chunks are in the chunk index, every pack they are
//! in is on every store, and (with `read_data`) every such pack hashes to its name and every
//! chunk in it opens, decodes and hashes to its id. Packs on a store that the catalog does not
//! know, and known packs no chunk points into, are reported as orphans (garbage, not damage).

use super::Artifacts;
use super::download::PlainChunks;
use crate::catalog::ChunkLocation;
use crate::domain::encryption::TenantKeyState;
use crate::domain::{Error, Result};
use crate::ingest::chunk::decode;
use crate::ingest::pack::read_trailer;
use crate::ingest::{ChunkId, PackId, TenantKey};
use crate::storage::{DynBlobStore, GetOptions};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Manifests read per catalog round trip.
const MANIFEST_BATCH: u32 = 200;

/// What a check found. `problems` is damage (the command exits non-zero on any); `orphans`
/// is garbage for collection.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    pub versions: u64,
    pub chunks: u64,
    pub packs: u64,
    pub stores: Vec<String>,
    /// Bytes read from the stores to verify content (with `read_data`).
    pub bytes_read: u64,
    /// Versions whose content was destroyed with their tenant's keys, on purpose.
    pub destroyed_versions: u64,
    pub problems: Vec<String>,
    pub orphans: Vec<String>,
}

/// Where a referenced chunk is, and one version that needs it (to name in a problem).
struct Needed {
    tenant: String,
    chunk_id: ChunkId,
    location: ChunkLocation,
    needed_by: String,
}

impl Artifacts {
    /// Checks the catalog against `stores` (each named), reading every referenced pack in
    /// full when `read_data` is set.
    pub async fn check(&self, stores: &[(String, DynBlobStore)], read_data: bool) -> Result<CheckReport> {
        let catalog = &self.inner.catalog;
        let mut report = CheckReport {
            stores: stores.iter().map(|(name, _)| name.clone()).collect(),
            ..CheckReport::default()
        };
        // pack id → the chunks of it that versions need.
        let mut by_pack: BTreeMap<String, Vec<Needed>> = BTreeMap::new();
        let mut seen: BTreeSet<(String, ChunkId)> = BTreeSet::new();
        let mut destroyed: HashMap<String, bool> = HashMap::new();
        let mut after: Option<(String, i64)> = None;
        loop {
            let batch = catalog
                .stored_manifests(
                    None,
                    after.as_ref().map(|(id, seq)| (id.as_str(), *seq)),
                    MANIFEST_BATCH,
                )
                .await?;
            let Some(last) = batch.last() else { break };
            after = Some((last.artifact_id.clone(), last.seq));
            for mut stored in batch {
                report.versions += 1;
                let name = format!(
                    "{}/{} {}@{}",
                    stored.scope.tenant, stored.scope.project, stored.artifact_id, stored.version
                );
                let manifest = match std::mem::replace(&mut stored.manifest, Err(String::new())) {
                    Ok(manifest) => manifest,
                    Err(error) => {
                        report
                            .problems
                            .push(format!("{name}: its manifest does not decode: {error}"));
                        continue;
                    }
                };
                let tenant = stored.scope.tenant.clone();
                let mut ids: Vec<ChunkId> = manifest.entries().map(|e| e.chunk_id).collect();
                ids.sort_unstable();
                ids.dedup();
                let mut locations = catalog.chunk_locations(&tenant, &ids).await?;
                let missing = ids.iter().filter(|id| !locations.contains_key(id)).count();
                // The bases delta chunks decode through are needed as much as the chunks
                // (the whole chains, from one recursive query).
                let mut bases: Vec<ChunkId> = catalog
                    .chain_of(&tenant, &ids)
                    .await?
                    .into_iter()
                    .filter(|base| !locations.contains_key(base))
                    .collect();
                bases.sort_unstable();
                bases.dedup();
                let found = catalog.chunk_locations(&tenant, &bases).await?;
                for base in bases.iter().filter(|base| !found.contains_key(base)) {
                    report.problems.push(format!(
                        "{name}: chunk {} that a delta decodes against is not in the chunk index",
                        base.to_hex()
                    ));
                }
                locations.extend(found);
                if missing > 0 {
                    let shredded = match destroyed.get(&tenant) {
                        Some(known) => *known,
                        None => {
                            let any = catalog
                                .tenant_keys(&tenant)
                                .await?
                                .iter()
                                .any(|key| key.state == TenantKeyState::Destroyed);
                            destroyed.insert(tenant.clone(), any);
                            any
                        }
                    };
                    if shredded {
                        report.destroyed_versions += 1;
                    } else {
                        report.problems.push(format!(
                            "{name}: {missing} of its chunks are not in the chunk index"
                        ));
                    }
                }
                for (chunk_id, location) in locations {
                    if seen.insert((tenant.clone(), chunk_id)) {
                        report.chunks += 1;
                        by_pack.entry(location.pack_id.clone()).or_default().push(Needed {
                            tenant: tenant.clone(),
                            chunk_id,
                            location,
                            needed_by: name.clone(),
                        });
                    }
                }
            }
        }
        report.packs = by_pack.len() as u64;

        let known: BTreeSet<String> = catalog
            .all_packs()
            .await?
            .into_iter()
            .map(|p| p.pack_id)
            .collect();
        for pack in known.iter().filter(|pack| !by_pack.contains_key(*pack)) {
            report
                .orphans
                .push(format!("pack {pack} is in the catalog but no version needs it"));
        }
        for (store_name, store) in stores {
            let listed = store
                .list("packs/")
                .await
                .map_err(|e| Error::Unavailable(format!("listing packs on {store_name}: {e}")))?;
            let present: BTreeSet<String> = listed.into_iter().map(|object| object.key).collect();
            for key in &present {
                let id = key
                    .rsplit('/')
                    .next()
                    .and_then(|file| file.strip_suffix(".pack"))
                    .unwrap_or(key);
                if !known.contains(id) {
                    report
                        .orphans
                        .push(format!("{store_name}: {key} is not in the catalog"));
                }
            }
            for (pack_id, needed) in &by_pack {
                let Some(key) = PackId::from_hex(pack_id).map(|id| id.object_key()) else {
                    report
                        .problems
                        .push(format!("pack id {pack_id:?} in the chunk index is malformed"));
                    continue;
                };
                if !present.contains(&key) {
                    report.problems.push(format!(
                        "{store_name}: pack {pack_id} is missing; {} chunks need it, for example {}",
                        needed.len(),
                        needed[0].needed_by
                    ));
                    continue;
                }
                if read_data {
                    self.read_pack(store_name, store, pack_id, &key, needed, &mut report)
                        .await?;
                }
            }
        }
        report
            .problems
            .extend(catalog.audit_shared_rows().await?.problems);
        Ok(report)
    }

    /// Reads a whole pack and checks it and every needed chunk in it.
    async fn read_pack(
        &self,
        store_name: &str,
        store: &DynBlobStore,
        pack_id: &str,
        key: &str,
        needed: &[Needed],
        report: &mut CheckReport,
    ) -> Result<()> {
        let bytes = match store.get(key, GetOptions::default()).await {
            Ok(bytes) => bytes,
            Err(error) => {
                report
                    .problems
                    .push(format!("{store_name}: pack {pack_id} cannot be read: {error}"));
                return Ok(());
            }
        };
        report.bytes_read += bytes.len() as u64;
        let id = PackId::from_hex(pack_id).expect("checked by the caller");
        let trailer = match read_trailer(id, &bytes) {
            Ok(trailer) => trailer,
            Err(error) => {
                report
                    .problems
                    .push(format!("{store_name}: pack {pack_id}: {error}"));
                return Ok(());
            }
        };
        let inner = &self.inner;
        // A pack belongs to one tenant and has at most one data key: opened once.
        let tenant = &needed[0].tenant;
        let tenant_key = TenantKey::derive(&inner.secret(), tenant);
        // Delta chunks decode against their bases, read (verified) as downloads read them.
        let base_ids: Vec<ChunkId> = needed.iter().filter_map(|chunk| chunk.location.base).collect();
        let bases = if base_ids.is_empty() {
            PlainChunks::cached(HashMap::new())
        } else {
            match super::download::plain_chunks(
                inner.clone(),
                std::sync::Arc::from(tenant.as_str()),
                tenant_key.clone(),
                base_ids,
                inner.cache.admission_for_bases(),
                0,
            )
            .await
            {
                Ok(bases) => bases,
                Err(error) => {
                    report.problems.push(format!(
                        "{store_name}: pack {pack_id}: the bases of its delta chunks cannot be read: {error}"
                    ));
                    PlainChunks::cached(HashMap::new())
                }
            }
        };
        let data_key = match needed.iter().find(|chunk| chunk.location.key.is_some()) {
            None => None,
            Some(sealed) => match inner
                .keys
                .data_keys(&inner.catalog, tenant, std::iter::once(&sealed.location))
                .await
            {
                Ok(mut keys) => keys.remove(pack_id),
                Err(error) => {
                    report.problems.push(format!(
                        "{store_name}: pack {pack_id}: its data key does not open: {error}"
                    ));
                    return Ok(());
                }
            },
        };
        for chunk in needed {
            let place = format!(
                "{store_name}: chunk {} in pack {pack_id}",
                chunk.chunk_id.to_hex()
            );
            let location = &chunk.location;
            let in_trailer = trailer.entries.iter().any(|entry| {
                entry.chunk_id == chunk.chunk_id
                    && entry.offset == location.offset
                    && entry.stored_len == location.stored_len
                    && entry.codec == location.codec
            });
            if !in_trailer {
                report.problems.push(format!(
                    "{place}: the pack's trailer does not list it where the index says"
                ));
                continue;
            }
            let start = location.offset as usize;
            let Some(stored) = bytes.get(start..start + location.stored_len as usize) else {
                report
                    .problems
                    .push(format!("{place}: lies past the end of the pack"));
                continue;
            };
            let opened;
            let stored = if location.key.is_some() {
                let Some(data_key) = &data_key else {
                    report
                        .problems
                        .push(format!("{place}: sealed, but its pack has no data key"));
                    continue;
                };
                match data_key.open_chunk(&chunk.chunk_id, location.offset, stored) {
                    Ok(plain) => {
                        opened = plain;
                        &opened[..]
                    }
                    Err(error) => {
                        report.problems.push(format!("{place}: does not open: {error}"));
                        continue;
                    }
                }
            } else {
                stored
            };
            let base = location
                .base
                .and_then(|base| bases.chunks.get(&base))
                .map(|base| &base[..]);
            match decode(location.codec, stored, location.raw_len as usize, base) {
                Ok(raw) => {
                    if tenant_key.chunk_id(&raw) != chunk.chunk_id {
                        report.problems.push(format!("{place}: does not match its hash"));
                    }
                }
                Err(error) => report.problems.push(format!("{place}: does not decode: {error}")),
            }
        }
        Ok(())
    }
}

//! Manifests as the catalog keeps them. A short manifest is stored whole in its version's
//! row. A long one is stored as its segments (see `ingest::manifest`): each segment once
//! per tenant in `manifest_segments`, counted by the versions naming it, and the version's
//! row holds only the list of segment ids. Versions of a large artifact that differ in a
//! chunk share all but a segment or two, so a one-chunk edit of a 64 MiB artifact adds a
//! few KB to the catalog instead of a 147 KB chunk list.
//!
//! Reference counts change in the transactions that write and purge versions, so a segment
//! is deleted exactly when the last version naming it is. Everything outside this module
//! sees whole manifests: reads put them back together, backups carry them whole.

use super::counted::{CountedTable, Referenced, counted};
use super::{BATCH_ROWS, Catalog, db_error};
use crate::domain::{Error, Result};
use crate::ingest::Manifest;
use crate::ingest::manifest::ENTRY_LEN;
use sqlx::{AnyConnection, AssertSqlSafe};
use std::collections::{BTreeMap, HashMap};

/// Manifests of at most this many entries (4.6 KB) are stored whole: segmenting them
/// would save little and cost a row or two.
pub const INLINE_MAX_ENTRIES: usize = 128;

/// The first byte of a segmented manifest's row form (whole manifests begin with 1).
const SEGMENTED: u8 = 2;
const SEGMENT_ID_LEN: usize = 32;

type SegmentId = [u8; SEGMENT_ID_LEN];

const SEGMENTS: CountedTable = CountedTable {
    table: "manifest_segments",
    id: "segment_id",
    body: "entries",
    what: "manifest segments",
};

fn segment_id(entries: &[u8]) -> SegmentId {
    *blake3::hash(entries).as_bytes()
}

/// The segment ids a segmented row form names, in order (repeats included); `None` for a
/// whole manifest.
fn named_segments(stored: &[u8]) -> Result<Option<Vec<SegmentId>>> {
    match stored.split_first() {
        Some((&SEGMENTED, ids)) if ids.len() % SEGMENT_ID_LEN == 0 => Ok(Some(
            ids.chunks_exact(SEGMENT_ID_LEN)
                .map(|id| id.try_into().expect("32 bytes"))
                .collect(),
        )),
        Some((&SEGMENTED, ids)) => Err(Error::DataLoss(format!(
            "a segmented manifest of {} bytes is truncated",
            ids.len()
        ))),
        _ => Ok(None),
    }
}

impl Catalog {
    /// What a version's row stores for `manifest`, writing and counting its segments in
    /// `tenant`'s segment table when it is long.
    pub(super) async fn store_manifest(
        &self,
        connection: &mut AnyConnection,
        tenant: &str,
        manifest: &Manifest,
    ) -> Result<Vec<u8>> {
        if manifest.len() <= INLINE_MAX_ENTRIES {
            return Ok(manifest.encoded().to_vec());
        }
        let segments = manifest.segments();
        let mut stored = Vec::with_capacity(1 + segments.len() * SEGMENT_ID_LEN);
        stored.push(SEGMENTED);
        // Each distinct segment once, with how many times this manifest names it.
        let mut rows: BTreeMap<Vec<u8>, Referenced> = BTreeMap::new();
        for segment in &segments {
            let id = segment_id(segment);
            stored.extend_from_slice(&id);
            rows.entry(id.to_vec()).or_insert_with(|| (segment.to_vec(), 0)).1 += 1;
        }
        self.add_references(connection, SEGMENTS, tenant, &rows).await?;
        Ok(stored)
    }

    /// The whole manifests (their stored form) of `tenant`'s versions whose rows hold
    /// `stored`, in order; all or the first one that cannot be put back together.
    pub(super) async fn whole_manifests(
        &self,
        connection: &mut AnyConnection,
        tenant: &str,
        stored: Vec<Vec<u8>>,
    ) -> Result<Vec<Vec<u8>>> {
        self.each_whole_manifest(connection, tenant, stored)
            .await?
            .into_iter()
            .collect()
    }

    /// [`Self::whole_manifests`], each on its own: a version whose segments are damaged or
    /// missing does not hide the others.
    pub(super) async fn each_whole_manifest(
        &self,
        connection: &mut AnyConnection,
        tenant: &str,
        stored: Vec<Vec<u8>>,
    ) -> Result<Vec<Result<Vec<u8>>>> {
        let mut named = Vec::with_capacity(stored.len());
        let mut wanted: Vec<SegmentId> = Vec::new();
        for row in &stored {
            let ids = named_segments(row);
            if let Ok(Some(ids)) = &ids {
                wanted.extend_from_slice(ids);
            }
            named.push(ids);
        }
        if wanted.is_empty() {
            return Ok(stored
                .into_iter()
                .zip(named)
                .map(|(row, ids)| ids.map(|_| row))
                .collect());
        }
        wanted.sort_unstable();
        wanted.dedup();
        let mut bodies: HashMap<SegmentId, Vec<u8>> = HashMap::with_capacity(wanted.len());
        for batch in wanted.chunks(BATCH_ROWS) {
            let sql = format!(
                "SELECT segment_id, entries FROM manifest_segments WHERE tenant = {} AND segment_id IN ({})",
                self.dialect.placeholders(1, 1),
                self.dialect.placeholders(2, batch.len())
            );
            let mut query = sqlx::query_as::<_, (Vec<u8>, Vec<u8>)>(AssertSqlSafe(sql)).bind(tenant);
            for id in batch {
                query = query.bind(id.to_vec());
            }
            let rows = query
                .fetch_all(&mut *connection)
                .await
                .map_err(|e| db_error("reading manifest segments", e))?;
            for (id, entries) in rows {
                if let Ok(id) = SegmentId::try_from(id.as_slice()) {
                    bodies.insert(id, entries);
                }
            }
        }
        Ok(stored
            .into_iter()
            .zip(named)
            .map(|(row, ids)| {
                let Some(ids) = ids? else { return Ok(row) };
                let mut parts = Vec::with_capacity(ids.len());
                for id in &ids {
                    let body = bodies.get(id).ok_or_else(|| {
                        Error::DataLoss(format!(
                            "manifest segment {} is missing from the catalog",
                            blake3::Hash::from_bytes(*id).to_hex()
                        ))
                    })?;
                    if segment_id(body) != *id || body.len() < ENTRY_LEN {
                        return Err(Error::DataLoss(format!(
                            "manifest segment {} does not match its id",
                            blake3::Hash::from_bytes(*id).to_hex()
                        )));
                    }
                    parts.push(body.as_slice());
                }
                Manifest::from_segments(parts)
                    .map(|manifest| manifest.encoded().to_vec())
                    .map_err(Error::DataLoss)
            })
            .collect())
    }

    /// Releases the segments named by versions about to be deleted (their row forms):
    /// counts go down, and segments no version names any more are deleted.
    pub(super) async fn release_manifests(
        &self,
        connection: &mut AnyConnection,
        tenant: &str,
        stored: &[Vec<u8>],
    ) -> Result<()> {
        let mut ids = Vec::new();
        for row in stored {
            ids.extend(named_segments(row)?.unwrap_or_default());
        }
        if ids.is_empty() {
            return Ok(());
        }
        let counts = counted(ids.into_iter().map(|id| id.to_vec()));
        self.drop_references(connection, SEGMENTS, tenant, &counts)
            .await?;
        Ok(())
    }
}

impl Catalog {
    /// Recounts every version's references to shared rows (manifest segments, extracted
    /// documents) against the counts those rows keep.
    pub async fn audit_shared_rows(&self) -> Result<SharedRowAudit> {
        let mut audit = SharedRowAudit::default();
        let mut segments: BTreeMap<(String, Vec<u8>), i64> = BTreeMap::new();
        let mut documents: BTreeMap<(String, Vec<u8>), i64> = BTreeMap::new();
        let mut after = (String::new(), -1i64);
        loop {
            type Row = (String, String, i64, Vec<u8>, Option<Vec<u8>>);
            let rows: Vec<Row> = sqlx::query_as(
                "SELECT a.tenant, v.artifact_id, v.seq, v.manifest, v.extracted_digest FROM versions v \
                 JOIN artifacts a ON a.id = v.artifact_id \
                 WHERE v.artifact_id > $1 OR (v.artifact_id = $1 AND v.seq > $2) ORDER BY v.artifact_id, v.seq LIMIT 500",
            )
            .bind(&after.0)
            .bind(after.1)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error("reading manifests", e))?;
            let Some((_, id, seq, ..)) = rows.last() else {
                break;
            };
            after = (id.clone(), *seq);
            for (tenant, artifact_id, seq, stored, digest) in rows {
                audit.row_bytes += stored.len() as u64;
                match named_segments(&stored) {
                    Ok(ids) => {
                        for id in ids.unwrap_or_default() {
                            *segments.entry((tenant.clone(), id.to_vec())).or_insert(0) += 1;
                        }
                    }
                    Err(error) => audit
                        .problems
                        .push(format!("{artifact_id} (version {seq}): {error}")),
                }
                if let Some(digest) = digest {
                    *documents.entry((tenant, digest)).or_insert(0) += 1;
                }
            }
        }
        (audit.segments, audit.bytes) = self.recount(SEGMENTS, segments, &mut audit.problems).await?;
        (audit.documents, audit.document_bytes) = self
            .recount(super::extracted::DOCUMENTS, documents, &mut audit.problems)
            .await?;
        Ok(audit)
    }
}

/// What the shared rows hold and whether their counts agree with the versions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SharedRowAudit {
    pub segments: u64,
    /// Bytes of the segments' entries.
    pub bytes: u64,
    /// Bytes of the versions' manifest columns (whole manifests and segment lists).
    pub row_bytes: u64,
    pub documents: u64,
    pub document_bytes: u64,
    /// Counts that differ from how many versions name a row (which would let it be deleted
    /// while named, or never), and rows named but missing.
    pub problems: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_forms_are_told_apart_and_truncation_is_damage() {
        assert_eq!(named_segments(&[1, 0, 0]).unwrap(), None);
        let mut row = vec![SEGMENTED];
        row.extend_from_slice(&[7; 64]);
        assert_eq!(named_segments(&row).unwrap(), Some(vec![[7; 32], [7; 32]]));
        row.pop();
        assert!(named_segments(&row).is_err());
        assert_eq!(counted([[1; 32], [2; 32], [1; 32]]).get(&[1; 32]), Some(&2));
    }
}

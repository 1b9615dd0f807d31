//! Manifests as the catalog keeps them. A short manifest is stored whole in its version's
//! row. A long one is stored as its segments (see `ingest::manifest`): each segment once
//! per tenant in `manifest_segments`, counted by the versions naming it, and the version's
//! row holds only the list of segment ids (with the bytes of content each covers, so a
//! read from an offset starts at its segment). Versions of a large artifact that differ in a
//! chunk share all but a segment or two, so a one-chunk edit of a 64 MiB artifact adds a
//! few KB to the catalog instead of a 147 KB chunk list.
//!
//! Reference counts change in the transactions that write and purge versions, so a segment
//! is deleted exactly when the last version naming it is. Everything outside this module
//! sees whole manifests: reads put them back together, backups carry them whole.

use super::counted::{CountedTable, Referenced, counted};
use super::{BATCH_ROWS, Catalog, ID_LIST_MAX, db_error};
use crate::domain::{Error, Result};
use crate::ingest::manifest::ENTRY_LEN;
use crate::ingest::{Manifest, NewManifest};
use sqlx::{AnyConnection, AssertSqlSafe};
use std::collections::{BTreeMap, HashMap};

/// Manifests of at most this many entries (4.6 KB) are stored whole: segmenting them
/// would save little and cost a row or two.
pub const INLINE_MAX_ENTRIES: usize = 128;

/// The first byte of a segmented manifest's row form that lists segment ids alone (rows
/// written before [`SEGMENTED_WITH_LENGTHS`]; still read, from their start).
const SEGMENTED: u8 = 2;
/// The first byte of the row form written now: each segment's id and the bytes of content
/// it covers, so a read that begins deep into a version (a range, a resumed download) goes
/// straight to the segment holding its first byte instead of reading every one before it.
const SEGMENTED_WITH_LENGTHS: u8 = 3;
const SEGMENT_ID_LEN: usize = 32;
const SEGMENT_LENGTH_LEN: usize = 8;

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

/// What a segmented row form names: its segments in order (repeats included) and, in the
/// current form, the bytes of content each covers.
#[derive(Debug, PartialEq, Eq)]
struct SegmentList {
    ids: Vec<SegmentId>,
    lengths: Option<Vec<u64>>,
}

/// The segments a row form names; `None` for a whole manifest.
fn segment_list(stored: &[u8]) -> Result<Option<SegmentList>> {
    let truncated = |len: usize| Error::DataLoss(format!("a segmented manifest of {len} bytes is truncated"));
    match stored.split_first() {
        Some((&SEGMENTED, ids)) if ids.len() % SEGMENT_ID_LEN == 0 => Ok(Some(SegmentList {
            ids: ids
                .chunks_exact(SEGMENT_ID_LEN)
                .map(|id| id.try_into().expect("32 bytes"))
                .collect(),
            lengths: None,
        })),
        Some((&SEGMENTED_WITH_LENGTHS, records))
            if records.len() % (SEGMENT_ID_LEN + SEGMENT_LENGTH_LEN) == 0 =>
        {
            let records = records.chunks_exact(SEGMENT_ID_LEN + SEGMENT_LENGTH_LEN);
            Ok(Some(SegmentList {
                ids: records
                    .clone()
                    .map(|record| record[..SEGMENT_ID_LEN].try_into().expect("32 bytes"))
                    .collect(),
                lengths: Some(
                    records
                        .map(|record| {
                            u64::from_le_bytes(record[SEGMENT_ID_LEN..].try_into().expect("8 bytes"))
                        })
                        .collect(),
                ),
            }))
        }
        Some((&(SEGMENTED | SEGMENTED_WITH_LENGTHS), rest)) => Err(truncated(rest.len())),
        _ => Ok(None),
    }
}

/// The segment ids a segmented row form names, in order (repeats included); `None` for a
/// whole manifest.
fn named_segments(stored: &[u8]) -> Result<Option<Vec<SegmentId>>> {
    Ok(segment_list(stored)?.map(|list| list.ids))
}

/// Where a read from byte `offset` begins among segments covering `lengths` bytes each:
/// the first segment that holds a byte at or past `offset`, and the position of its first
/// byte.
fn segment_at(lengths: &[u64], offset: u64) -> (usize, u64) {
    let mut start = 0u64;
    for (index, length) in lengths.iter().enumerate() {
        if start.saturating_add(*length) > offset {
            return (index, start);
        }
        start = start.saturating_add(*length);
    }
    (lengths.len(), start)
}

impl Catalog {
    /// What a version's row stores for `manifest`, writing and counting its segments in
    /// `tenant`'s segment table when it is long. A long manifest is read a segment at a
    /// time (twice: for the ids, then the bodies, a batch at a time in id order), so a
    /// manifest an upload spilled is never held whole.
    pub(super) async fn store_manifest(
        &self,
        connection: &mut AnyConnection,
        tenant: &str,
        manifest: &NewManifest,
    ) -> Result<Vec<u8>> {
        let unreadable = |e: std::io::Error| Error::internal(format!("reading the upload's manifest: {e}"));
        if manifest.len() <= INLINE_MAX_ENTRIES {
            return Ok(manifest.whole().map_err(unreadable)?.encoded().to_vec());
        }
        let count = manifest.segment_count();
        let mut stored = Vec::with_capacity(1 + count * (SEGMENT_ID_LEN + SEGMENT_LENGTH_LEN));
        stored.push(SEGMENTED_WITH_LENGTHS);
        // Each distinct segment once, with how many times this manifest names it and where.
        let mut named: BTreeMap<SegmentId, (usize, i64)> = BTreeMap::new();
        for index in 0..count {
            let segment = manifest.segment(index).map_err(unreadable)?;
            let id = segment_id(&segment);
            stored.extend_from_slice(&id);
            stored.extend_from_slice(&Manifest::segment_content_len(&segment).to_le_bytes());
            named.entry(id).or_insert((index, 0)).1 += 1;
        }
        // In id order across batches too, so commits sharing segments lock them in the
        // same order.
        let named: Vec<(SegmentId, (usize, i64))> = named.into_iter().collect();
        for batch in named.chunks(BATCH_ROWS) {
            let mut rows: BTreeMap<Vec<u8>, Referenced> = BTreeMap::new();
            for (id, (index, refs)) in batch {
                rows.insert(
                    id.to_vec(),
                    (manifest.segment(*index).map_err(unreadable)?, *refs),
                );
            }
            self.add_references(connection, SEGMENTS, tenant, &rows).await?;
        }
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
            let list = segment_list(row);
            if let Ok(Some(list)) = &list {
                wanted.extend_from_slice(&list.ids);
            }
            named.push(list);
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
        let bodies = self.segment_bodies(connection, tenant, &wanted).await?;
        Ok(stored
            .into_iter()
            .zip(named)
            .map(|(row, list)| {
                let Some(list) = list? else { return Ok(row) };
                assemble(&bodies, &list.ids, list.lengths.as_deref())
                    .map(|manifest| manifest.encoded().to_vec())
            })
            .collect())
    }

    /// The bodies of `tenant`'s segments `wanted` (each id once) that the catalog holds.
    async fn segment_bodies(
        &self,
        connection: &mut AnyConnection,
        tenant: &str,
        wanted: &[SegmentId],
    ) -> Result<HashMap<SegmentId, Vec<u8>>> {
        let mut bodies: HashMap<SegmentId, Vec<u8>> = HashMap::with_capacity(wanted.len());
        // Half a full list: each row carries a segment body.
        for batch in wanted.chunks(ID_LIST_MAX / 2) {
            let sql = format!(
                "SELECT segment_id, entries FROM manifest_segments WHERE tenant = {} AND segment_id IN ({})",
                self.dialect.placeholders(1, 1),
                self.dialect.placeholders(2, super::in_list_len(batch.len()))
            );
            let mut query = sqlx::query_as::<_, (Vec<u8>, Vec<u8>)>(AssertSqlSafe(sql)).bind(tenant);
            for id in super::padded(batch) {
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
        Ok(bodies)
    }

    /// A reader of a version's manifest a part at a time: what it holds of a long manifest
    /// is the list of its segments (40 bytes per 64 chunks on average) and the part last
    /// read, so a download's memory does not grow with the artifact.
    pub async fn manifest_reader(&self, artifact_id: &str, version: &str) -> Result<ManifestReader> {
        Ok(self.manifest_reader_from(artifact_id, version, 0).await?.0)
    }

    /// [`Self::manifest_reader`] for a read from byte `offset`: the reader begins at the
    /// segment holding that byte, and the position in the content of its first entry comes
    /// with it. A whole manifest, or a row that does not say how long its segments are, is
    /// read from its start (position 0).
    pub async fn manifest_reader_from(
        &self,
        artifact_id: &str,
        version: &str,
        offset: u64,
    ) -> Result<(ManifestReader, u64)> {
        let row: Option<(String, Vec<u8>)> = sqlx::query_as(
            "SELECT a.tenant, v.manifest FROM versions v JOIN artifacts a ON a.id = v.artifact_id \
             WHERE v.artifact_id = $1 AND v.version = $2",
        )
        .bind(artifact_id)
        .bind(version)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error("reading a manifest", e))?;
        let (tenant, stored) = row.ok_or_else(|| {
            Error::not_found(format!("version {version} of artifact {artifact_id:?} not found"))
        })?;
        let mut position = 0;
        let source = match segment_list(&stored)? {
            Some(SegmentList { ids, lengths }) => {
                let next = match &lengths {
                    Some(lengths) => {
                        let (index, start) = segment_at(lengths, offset);
                        position = start;
                        index
                    }
                    None => 0,
                };
                Source::Segmented { ids, lengths, next }
            }
            None => Source::Whole(Some(Manifest::decode(stored).map_err(|e| {
                Error::DataLoss(format!(
                    "manifest of version {version} of artifact {artifact_id:?} is unreadable: {e}"
                ))
            })?)),
        };
        let reader = ManifestReader {
            catalog: self.clone(),
            tenant,
            artifact_id: artifact_id.to_owned(),
            version: version.to_owned(),
            source,
        };
        Ok((reader, position))
    }
}

/// The manifest whose segments are `ids`, in order, from `bodies`; each body is checked
/// against its id, and against the bytes of content the row says it covers where it says.
fn assemble(
    bodies: &HashMap<SegmentId, Vec<u8>>,
    ids: &[SegmentId],
    lengths: Option<&[u64]>,
) -> Result<Manifest> {
    let mut parts = Vec::with_capacity(ids.len());
    for (index, id) in ids.iter().enumerate() {
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
        if let Some(expected) = lengths.and_then(|lengths| lengths.get(index))
            && Manifest::segment_content_len(body) != *expected
        {
            return Err(Error::DataLoss(format!(
                "manifest segment {} covers {} bytes, its version's row says {expected}",
                blake3::Hash::from_bytes(*id).to_hex(),
                Manifest::segment_content_len(body)
            )));
        }
        parts.push(body.as_slice());
    }
    Manifest::from_segments(parts).map_err(Error::DataLoss)
}

/// Segments read per catalog round trip by a [`ManifestReader`]: about 2,000 chunks.
const READER_SEGMENTS: usize = 32;

/// A version's manifest, read in order a part at a time (see [`Catalog::manifest_reader`]).
#[derive(Debug)]
pub struct ManifestReader {
    catalog: Catalog,
    tenant: String,
    artifact_id: String,
    version: String,
    source: Source,
}

#[derive(Debug)]
enum Source {
    /// A short manifest, stored whole in its version's row; `None` once handed out.
    Whole(Option<Manifest>),
    Segmented {
        ids: Vec<SegmentId>,
        /// The bytes of content each segment covers, where the row says.
        lengths: Option<Vec<u64>>,
        next: usize,
    },
}

impl ManifestReader {
    /// The next part of the manifest (its next entries, in order), `None` after the last.
    /// A version purged while it is being read is NOT_FOUND here, not damage.
    pub async fn next_part(&mut self) -> Result<Option<Manifest>> {
        let (ids, lengths, next) = match &mut self.source {
            Source::Whole(whole) => return Ok(whole.take()),
            Source::Segmented { ids, lengths, next } => (ids, lengths, next),
        };
        if *next >= ids.len() {
            return Ok(None);
        }
        let within = *next..(*next + READER_SEGMENTS).min(ids.len());
        let part = &ids[within.clone()];
        let part_lengths = lengths.as_ref().map(|lengths| &lengths[within]);
        let mut wanted = part.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        let catalog = &self.catalog;
        let mut connection = catalog
            .pool
            .acquire()
            .await
            .map_err(|e| db_error("reading manifest segments", e))?;
        let bodies = catalog
            .segment_bodies(&mut connection, &self.tenant, &wanted)
            .await?;
        drop(connection);
        let manifest = match assemble(&bodies, part, part_lengths) {
            Ok(manifest) => manifest,
            Err(damage) => {
                // Segments go when the last version naming them is purged: a version
                // purged during the read explains a missing one.
                let still_there = catalog.version_exists(&self.artifact_id, &self.version).await?;
                return Err(if still_there {
                    damage
                } else {
                    Error::not_found(format!(
                        "version {} of artifact {:?} was purged while it was being read",
                        self.version, self.artifact_id
                    ))
                });
            }
        };
        *next += part.len();
        Ok(Some(manifest))
    }
}

impl Catalog {
    async fn version_exists(&self, artifact_id: &str, version: &str) -> Result<bool> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT 1 FROM versions WHERE artifact_id = $1 AND version = $2")
                .bind(artifact_id)
                .bind(version)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| db_error("looking up a version", e))?;
        Ok(row.is_some())
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
        assert_eq!(segment_list(&row).unwrap().unwrap().lengths, None);
        row.pop();
        assert!(named_segments(&row).is_err());
        assert_eq!(counted([[1; 32], [2; 32], [1; 32]]).get(&[1; 32]), Some(&2));

        let mut row = vec![SEGMENTED_WITH_LENGTHS];
        for (id, length) in [(7u8, 70_000u64), (9, 5)] {
            row.extend_from_slice(&[id; 32]);
            row.extend_from_slice(&length.to_le_bytes());
        }
        assert_eq!(
            segment_list(&row).unwrap(),
            Some(SegmentList {
                ids: vec![[7; 32], [9; 32]],
                lengths: Some(vec![70_000, 5]),
            })
        );
        row.truncate(1 + 32 + 8 + 32);
        assert!(segment_list(&row).is_err(), "a record without its length");
    }

    #[test]
    fn segments_are_checked_against_the_lengths_their_row_gives() {
        let entry = |n: u8, len: u32| {
            let mut entry = vec![n; 32];
            entry.extend_from_slice(&len.to_le_bytes());
            entry
        };
        let first = [entry(1, 1000), entry(2, 24)].concat();
        let second = entry(3, 7);
        let ids = [segment_id(&first), segment_id(&second)];
        let bodies = HashMap::from([(ids[0], first), (ids[1], second)]);
        let manifest = assemble(&bodies, &ids, Some(&[1024, 7])).expect("lengths that agree");
        assert_eq!(manifest.total_len(), 1031);
        assert_eq!(assemble(&bodies, &ids, None).unwrap(), manifest);
        let wrong = assemble(&bodies, &ids, Some(&[1024, 8])).expect_err("a length that disagrees");
        assert!(
            matches!(&wrong, Error::DataLoss(message) if message.contains("covers 7 bytes") && message.contains("says 8")),
            "{wrong}"
        );
    }

    #[test]
    fn a_read_from_an_offset_begins_at_the_segment_holding_it() {
        let lengths = [100, 50, 0, 25];
        assert_eq!(segment_at(&lengths, 0), (0, 0));
        assert_eq!(segment_at(&lengths, 99), (0, 0));
        assert_eq!(segment_at(&lengths, 100), (1, 100));
        assert_eq!(segment_at(&lengths, 149), (1, 100));
        // An empty segment holds no byte: the read goes on past it.
        assert_eq!(segment_at(&lengths, 150), (3, 150));
        assert_eq!(segment_at(&lengths, 174), (3, 150));
        // At or past the end, nothing is left to read.
        assert_eq!(segment_at(&lengths, 175), (4, 175));
        assert_eq!(segment_at(&lengths, u64::MAX), (4, 175));
        assert_eq!(segment_at(&[], 10), (0, 0));
    }
}

//! Backups in the catalog: exporting artifacts as images, the backups and their pins,
//! schedules, the journal point-in-time restore reads, and applying a restore plan.

use super::{BATCH_ROWS, Catalog, Dialect, db_error, lifecycle, map_json, tags_json};
use crate::domain::backup::{
    AliasImage, ArtifactImage, ChunkImage, DependencyImage, GrantImage, HoldImage, JournalState, PackImage,
    RestoreStep, StepKind, TenantKeyImage, TransitionImage, TrashedImage, VersionImage, conflicting_versions,
    plan_restore,
};
use crate::domain::event::EventKind;
use crate::domain::{Error, LifecycleState, Result, Scope, Timestamp, Transition};
use crate::ingest::{ChunkId, Manifest};
use sqlx::{AssertSqlSafe, Row};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::Tx;

/// When the journal began: point-in-time restore reaches no further back.
const JOURNAL_SINCE: &str = "journal_since";

/// Everything an export read: the artifacts, and the index of the content they need.
#[derive(Debug, Clone, Default)]
pub struct Export {
    pub artifacts: Vec<ArtifactImage>,
    pub chunks: Vec<ChunkImage>,
    pub packs: Vec<PackImage>,
    pub tenant_keys: Vec<TenantKeyImage>,
}

/// A backup's content index, by chunk and by pack, for restoring the rows the versions a
/// restore adds need (and no others).
#[derive(Debug, Clone, Default)]
pub struct Content {
    chunks: HashMap<ChunkId, ChunkImage>,
    packs: HashMap<String, PackImage>,
    tenant_keys: Vec<TenantKeyImage>,
}

impl Content {
    /// The index of an export's rows; DATA_LOSS for a chunk id that is not one.
    pub fn of(export: Export) -> Result<Self> {
        let mut chunks = HashMap::with_capacity(export.chunks.len());
        for chunk in export.chunks {
            let id = ChunkId::from_hex(&chunk.chunk_id).ok_or_else(|| {
                Error::DataLoss(format!(
                    "the backup names a chunk {:?} that is not a chunk id",
                    chunk.chunk_id
                ))
            })?;
            chunks.insert(id, chunk);
        }
        let mut tenant_keys = export.tenant_keys;
        tenant_keys.sort_by_key(|key| key.created_at);
        Ok(Self {
            chunks,
            packs: export.packs.into_iter().map(|p| (p.pack_id.clone(), p)).collect(),
            tenant_keys,
        })
    }

    pub fn packs(&self) -> impl Iterator<Item = &PackImage> {
        self.packs.values()
    }
}

/// A backup as the catalog lists it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct BackupRow {
    pub id: String,
    pub tenant: String,
    pub project: String,
    pub artifact_id: String,
    pub kind: String,
    pub trigger: String,
    pub created_by: String,
    pub created_at: i64,
    /// JSON of the service's summary.
    pub summary: String,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ScheduleRow {
    pub tenant: String,
    pub project: String,
    pub interval_seconds: i64,
    pub keep: i64,
    pub updated_by: String,
    pub updated_at: i64,
    pub last_run_at: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    key_id: String,
    state: String,
    master_key_id: Option<String>,
    wrapped: Option<Vec<u8>>,
    created_at: i64,
    retired_at: Option<i64>,
}

/// How a restore finds the artifact it changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locate {
    /// The wanted image's own id (a restore into the same place).
    ById,
    /// The wanted image's type and name in its project (a new project or a new artifact);
    /// the wanted id is used only when there is none.
    ByName,
}

/// One artifact's restore.
#[derive(Debug, Clone)]
pub struct RestoreArtifact<'a> {
    pub wanted: &'a ArtifactImage,
    pub locate: Locate,
    pub overwrite: bool,
    pub dry_run: bool,
    pub actor: &'a str,
    /// Recorded on lifecycle changes the restore makes.
    pub reason: &'a str,
    pub now: i64,
    /// The chunk and pack index rows and keys the wanted versions need, when they come
    /// from a backup (a point-in-time restore finds them in place).
    pub content: Option<&'a Content>,
}

/// What a restore did (or would do) to one artifact.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The id of the artifact changed or created.
    pub artifact_id: String,
    /// The artifact was there before (its changes need `overwrite`).
    pub existed: bool,
    pub steps: Vec<RestoreStep>,
}

fn stored_state(text: &str) -> LifecycleState {
    LifecycleState::parse("state", text).unwrap_or(LifecycleState::Draft)
}

fn json_list(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

fn json_map(text: &str) -> BTreeMap<String, String> {
    serde_json::from_str(text).unwrap_or_default()
}

/// The artifact's changeable state now, for the journal.
async fn journal_state(tx: &mut Tx, artifact_id: &str) -> Result<Option<(String, String, JournalState)>> {
    let row = sqlx::query(
        "SELECT tenant, project, description, tags, categories, metadata, latest_version, deleted_at, deleted_by \
         FROM artifacts WHERE id = $1",
    )
    .bind(artifact_id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(|e| db_error("reading an artifact for the journal", e))?;
    let Some(row) = row else { return Ok(None) };
    // Aliases (by name) and the trash (by seq) in one round trip.
    let rows: Vec<(String, String, String, String, i64, i64)> = sqlx::query_as(
        "SELECT 'alias' AS kind, name, version, updated_by AS actor, updated_at AS at, 0 AS seq \
         FROM aliases WHERE artifact_id = $1 \
         UNION ALL SELECT 'trash', '', version, deleted_by, deleted_at, seq \
         FROM versions WHERE artifact_id = $1 AND deleted_at IS NOT NULL \
         ORDER BY 1, 2, 6",
    )
    .bind(artifact_id)
    .fetch_all(&mut **tx)
    .await
    .map_err(|e| db_error("reading aliases and the trash for the journal", e))?;
    let mut aliases = Vec::new();
    let mut trashed = Vec::new();
    for (kind, name, version, actor, at, _) in rows {
        if kind == "alias" {
            aliases.push(AliasImage {
                name,
                version,
                updated_by: actor,
                updated_at: at,
            });
        } else {
            trashed.push(TrashedImage {
                version,
                deleted_at: at,
                deleted_by: actor,
            });
        }
    }
    let get = |name: &str| -> String { row.try_get::<String, _>(name).unwrap_or_default() };
    Ok(Some((
        get("tenant"),
        get("project"),
        JournalState {
            description: get("description"),
            tags: json_list(&get("tags")),
            categories: json_list(&get("categories")),
            metadata: json_map(&get("metadata")),
            latest_version: get("latest_version"),
            deleted_at: row.try_get::<Option<i64>, _>("deleted_at").unwrap_or(None),
            deleted_by: get("deleted_by"),
            aliases,
            trashed,
        },
    )))
}

async fn aliases_in(tx: &mut Tx, artifact_id: &str) -> Result<Vec<AliasImage>> {
    let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
        "SELECT name, version, updated_by, updated_at FROM aliases WHERE artifact_id = $1 ORDER BY name",
    )
    .bind(artifact_id)
    .fetch_all(&mut **tx)
    .await
    .map_err(|e| db_error("reading aliases", e))?;
    Ok(rows
        .into_iter()
        .map(|(name, version, updated_by, updated_at)| AliasImage {
            name,
            version,
            updated_by,
            updated_at,
        })
        .collect())
}

/// Appends the artifact's state after a change to the journal, in the change's transaction.
pub(super) async fn journal_change(tx: &mut Tx, artifact_id: &str, at: i64) -> Result<()> {
    let Some((tenant, project, state)) = journal_state(tx, artifact_id).await? else {
        return Ok(());
    };
    let json = serde_json::to_string(&state).map_err(|e| Error::internal(e.to_string()))?;
    // Changes of one artifact commit one at a time (each holds its row), but their times
    // were read before the lock: the journal's time never goes back, so its last entry at
    // or before a moment is the state then.
    sqlx::query(
        "INSERT INTO artifact_journal (artifact_id, tenant, project, at, state) \
         SELECT $1, $2, $3, MAX(t), $5 FROM (SELECT $4 AS t UNION ALL \
           SELECT MAX(at) FROM artifact_journal WHERE artifact_id = $1) times",
    )
    .bind(artifact_id)
    .bind(tenant)
    .bind(project)
    .bind(at)
    .bind(json)
    .execute(&mut **tx)
    .await
    .map_err(|e| db_error("writing the journal", e))?;
    Ok(())
}

impl Catalog {
    // ---- the journal -------------------------------------------------------------------------

    /// Starts the journal once: every artifact's state now is its first entry. Safe to call
    /// from every replica at every start.
    pub async fn start_journal(&self, now: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let started =
            sqlx::query("INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
                .bind(JOURNAL_SINCE)
                .bind(now.to_string())
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error("starting the journal", e))?
                .rows_affected();
        if started == 0 {
            return Ok(());
        }
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM artifacts ORDER BY id")
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| db_error("listing artifacts", e))?;
        for id in ids {
            journal_change(&mut tx, &id, now).await?;
        }
        tx.commit().await.map_err(|e| db_error("committing", e))
    }

    /// When the journal began (0 before it has).
    pub async fn journal_since(&self) -> Result<i64> {
        let value: Option<String> = sqlx::query_scalar("SELECT value FROM settings WHERE name = $1")
            .bind(JOURNAL_SINCE)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error("reading the journal's start", e))?;
        Ok(value.and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    /// The artifact's state as the last journal entry at or before `at` has it.
    pub async fn journal_at(&self, artifact_id: &str, at: i64) -> Result<Option<JournalState>> {
        let state: Option<String> = sqlx::query_scalar(
            "SELECT state FROM artifact_journal WHERE artifact_id = $1 AND at <= $2 ORDER BY at DESC, id DESC LIMIT 1",
        )
        .bind(artifact_id)
        .bind(at)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error("reading the journal", e))?;
        state
            .map(|s| {
                serde_json::from_str(&s).map_err(|e| {
                    Error::DataLoss(format!("a journal entry of {artifact_id:?} does not parse: {e}"))
                })
            })
            .transpose()
    }

    /// Drops journal entries older than `before`, except each artifact's newest such entry
    /// (its state at `before`).
    pub async fn prune_journal(&self, before: i64) -> Result<u64> {
        let _turn = self.write_turn().await;
        let deleted = sqlx::query(
            "DELETE FROM artifact_journal WHERE at < $1 AND EXISTS ( \
               SELECT 1 FROM artifact_journal later WHERE later.artifact_id = artifact_journal.artifact_id \
               AND later.at < $1 AND (later.at > artifact_journal.at \
                 OR (later.at = artifact_journal.at AND later.id > artifact_journal.id)))",
        )
        .bind(before)
        .execute(&self.pool)
        .await
        .map_err(|e| db_error("pruning the journal", e))?
        .rows_affected();
        let gone = sqlx::query(
            "DELETE FROM artifact_journal WHERE at < $1 AND NOT EXISTS (SELECT 1 FROM artifacts WHERE id = artifact_journal.artifact_id)",
        )
        .bind(before)
        .execute(&self.pool)
        .await
        .map_err(|e| db_error("pruning the journal", e))?
        .rows_affected();
        Ok(deleted + gone)
    }

    /// Ids of a project's artifacts (deleted ones too), or of a tenant's when `project` is
    /// `None`.
    pub async fn artifact_ids(&self, tenant: &str, project: Option<&str>) -> Result<Vec<String>> {
        let rows: Vec<String> = match project {
            Some(project) => {
                sqlx::query_scalar(
                    "SELECT id FROM artifacts WHERE tenant = $1 AND project = $2 ORDER BY created_at, id",
                )
                .bind(tenant)
                .bind(project)
                .fetch_all(&self.pool)
                .await
            }
            None => {
                sqlx::query_scalar("SELECT id FROM artifacts WHERE tenant = $1 ORDER BY created_at, id")
                    .bind(tenant)
                    .fetch_all(&self.pool)
                    .await
            }
        }
        .map_err(|e| db_error("listing artifacts", e))?;
        Ok(rows)
    }

    /// The projects where a tenant has artifacts.
    pub async fn projects_of(&self, tenant: &str) -> Result<Vec<String>> {
        sqlx::query_scalar("SELECT DISTINCT project FROM artifacts WHERE tenant = $1 ORDER BY project")
            .bind(tenant)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error("listing projects", e))
    }

    /// Every tenant with artifacts.
    pub async fn tenants(&self) -> Result<Vec<String>> {
        sqlx::query_scalar("SELECT DISTINCT tenant FROM artifacts ORDER BY tenant")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error("listing tenants", e))
    }

    // ---- export ------------------------------------------------------------------------------

    /// Exports the named artifacts (those that still exist) of `tenant` as one consistent
    /// snapshot, with the chunk index rows, packs and tenant keys their versions need.
    pub async fn export(&self, tenant: &str, ids: &[String]) -> Result<Export> {
        let mut tx = self.begin_read().await?;
        if self.dialect == Dialect::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error("starting a snapshot", e))?;
        }
        let mut export = Export::default();
        let mut chunk_ids: BTreeSet<ChunkId> = BTreeSet::new();
        for id in ids {
            let Some(image) = self.image_in(&mut tx, id).await? else {
                continue;
            };
            if image.tenant != tenant {
                continue;
            }
            for version in &image.versions {
                let manifest = Manifest::decode(version.manifest.clone()).map_err(|error| {
                    Error::DataLoss(format!(
                        "the manifest of {id}@{} does not decode ({error}); nothing was backed up",
                        version.version
                    ))
                })?;
                chunk_ids.extend(manifest.entries().map(|e| e.chunk_id));
            }
            export.artifacts.push(image);
        }
        let needed: Vec<ChunkId> = chunk_ids.iter().copied().collect();
        // Delta chunks need their bases, however deep, to be read back.
        chunk_ids.extend(self.base_chains(&mut tx, tenant, &needed).await?);
        let chunk_ids: Vec<ChunkId> = chunk_ids.into_iter().collect();
        let mut pack_ids: BTreeSet<String> = BTreeSet::new();
        for batch in chunk_ids.chunks(BATCH_ROWS) {
            let sql = format!(
                "SELECT chunk_id, pack_id, pack_offset, stored_length, raw_length, codec, base_chunk_id, delta_depth, \
                 resemblance_0, resemblance_1, resemblance_2, resemblance_3 FROM chunks WHERE tenant = {} AND chunk_id IN ({})",
                self.dialect.placeholders(1, 1),
                self.dialect.placeholders(2, super::in_list_len(batch.len()))
            );
            type Row = (
                Vec<u8>,
                String,
                i64,
                i64,
                i64,
                i64,
                Option<Vec<u8>>,
                i64,
                Option<i64>,
                Option<i64>,
                Option<i64>,
                Option<i64>,
            );
            let mut query = sqlx::query_as::<_, Row>(AssertSqlSafe(sql)).bind(tenant);
            for id in super::padded(batch) {
                query = query.bind(id.0.to_vec());
            }
            let rows = query
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| db_error("reading the chunk index", e))?;
            if rows.len() != batch.len() {
                return Err(Error::DataLoss(format!(
                    "{} chunk(s) the exported versions need are not in the chunk index; run `artifactd check`",
                    batch.len() - rows.len()
                )));
            }
            for (chunk_id, pack_id, offset, stored_length, raw_length, codec, base, depth, r0, r1, r2, r3) in
                rows
            {
                pack_ids.insert(pack_id.clone());
                export.chunks.push(ChunkImage {
                    chunk_id: hex(&chunk_id),
                    pack_id,
                    offset,
                    stored_length,
                    raw_length,
                    codec,
                    base: base.as_deref().map(hex),
                    depth,
                    resemblance: match (r0, r1, r2, r3) {
                        (Some(r0), Some(r1), Some(r2), Some(r3)) => Some([r0, r1, r2, r3]),
                        _ => None,
                    },
                });
            }
        }
        let pack_ids: Vec<String> = pack_ids.into_iter().collect();
        for batch in pack_ids.chunks(BATCH_ROWS) {
            let sql = format!(
                "SELECT pack_id, size, created_at, key_id, wrapped_key FROM packs WHERE pack_id IN ({})",
                self.dialect.placeholders(1, super::in_list_len(batch.len()))
            );
            let mut query =
                sqlx::query_as::<_, (String, i64, i64, Option<String>, Option<Vec<u8>>)>(AssertSqlSafe(sql));
            for id in super::padded(batch) {
                query = query.bind(id);
            }
            for (pack_id, size, created_at, key_id, wrapped_key) in query
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| db_error("reading packs", e))?
            {
                export.packs.push(PackImage {
                    pack_id,
                    size,
                    created_at,
                    key_id,
                    wrapped_key,
                });
            }
        }
        let keys: Vec<KeyRow> = sqlx::query_as(
            "SELECT key_id, state, master_key_id, wrapped, created_at, retired_at FROM tenant_keys \
             WHERE tenant = $1 ORDER BY created_at, key_id",
        )
        .bind(tenant)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| db_error("reading tenant keys", e))?;
        export.tenant_keys = keys
            .into_iter()
            .map(|row| TenantKeyImage {
                key_id: row.key_id,
                state: row.state,
                master_key_id: row.master_key_id,
                wrapped: row.wrapped,
                created_at: row.created_at,
                retired_at: row.retired_at,
            })
            .collect();
        tx.commit().await.map_err(|e| db_error("ending a snapshot", e))?;
        Ok(export)
    }

    /// One artifact as an image, read outside any snapshot (for point-in-time restore).
    pub async fn artifact_image(&self, artifact_id: &str) -> Result<Option<ArtifactImage>> {
        let mut tx = self.begin_read().await?;
        let image = self.image_in(&mut tx, artifact_id).await?;
        tx.commit().await.map_err(|e| db_error("committing", e))?;
        Ok(image)
    }

    // ---- backups and pins --------------------------------------------------------------------

    /// Records a finished backup and pins the packs it needs. The pins' packs must still be
    /// there: their marks are taken first (a sweep holding one finishes before this reads,
    /// and one coming later finds no mark), then their rows are checked.
    /// `sealed_keys` are the tenant keys whose wrapped material the backup holds: a backup
    /// is refused when one of them was destroyed while it ran (destruction deletes backups,
    /// and this one would bring the key back).
    pub async fn record_backup(
        &self,
        backup: &BackupRow,
        pins: &[String],
        sealed_keys: &[String],
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO backups (id, tenant, project, artifact_id, kind, trigger, created_by, created_at, summary) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&backup.id)
        .bind(&backup.tenant)
        .bind(&backup.project)
        .bind(&backup.artifact_id)
        .bind(&backup.kind)
        .bind(&backup.trigger)
        .bind(&backup.created_by)
        .bind(backup.created_at)
        .bind(&backup.summary)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            if super::is_unique_violation(&e) {
                Error::AlreadyExists(format!("backup {} is already recorded", backup.id))
            } else {
                db_error("recording a backup", e)
            }
        })?;
        let lock = if self.dialect == Dialect::Postgres {
            " FOR SHARE"
        } else {
            ""
        };
        for batch in sealed_keys.chunks(BATCH_ROWS) {
            let sql = format!(
                "SELECT key_id FROM tenant_keys WHERE key_id IN ({}) AND state = 'destroyed'{lock}",
                self.dialect.placeholders(1, super::in_list_len(batch.len()))
            );
            let mut query = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql));
            for key in super::padded(batch) {
                query = query.bind(key);
            }
            let destroyed = query
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| db_error("checking tenant keys", e))?;
            if !destroyed.is_empty() {
                return Err(Error::FailedPrecondition(format!(
                    "tenant {:?}'s keys were destroyed while the backup ran; it was not kept",
                    backup.tenant
                )));
            }
        }
        for batch in pins.chunks(BATCH_ROWS) {
            self.clear_marks(&mut tx, batch).await?;
            let sql = format!(
                "SELECT COUNT(*) FROM packs WHERE pack_id IN ({})",
                self.dialect.placeholders(1, super::in_list_len(batch.len()))
            );
            let mut query = sqlx::query_as::<_, (i64,)>(AssertSqlSafe(sql));
            for pack in super::padded(batch) {
                query = query.bind(pack);
            }
            let (present,) = query
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| db_error("checking packs", e))?;
            if present as usize != batch.len() {
                return Err(Error::Aborted(
                    "a pack this backup needs was garbage-collected while it ran; nothing was recorded, back up again"
                        .into(),
                ));
            }
            let sql = format!(
                "INSERT INTO backup_pins (backup_id, pack_id) VALUES {} ON CONFLICT DO NOTHING",
                self.dialect.value_rows(batch.len(), 2)
            );
            let mut query =
                sqlx::query(AssertSqlSafe(sql)).persistent(super::keep_prepared(batch.len(), BATCH_ROWS));
            for pack in batch {
                query = query.bind(&backup.id).bind(pack);
            }
            query
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error("pinning packs", e))?;
        }
        tx.commit().await.map_err(|e| db_error("committing", e))
    }

    /// A tenant's backups, newest first: those of `project` (all when `None`), after the
    /// page position `(created_at, id)`.
    pub async fn backups(
        &self,
        tenant: &str,
        project: Option<&str>,
        before: Option<(i64, String)>,
        limit: u32,
    ) -> Result<Vec<BackupRow>> {
        let (at, id) = before.unwrap_or((i64::MAX, String::new()));
        let rows: Vec<BackupRow> = sqlx::query_as(
            "SELECT id, tenant, project, artifact_id, kind, trigger, created_by, created_at, summary FROM backups \
             WHERE tenant = $1 AND ($2 = '' OR project = $2) AND (created_at < $3 OR (created_at = $3 AND $4 <> '' AND id < $4)) \
             ORDER BY created_at DESC, id DESC LIMIT $5",
        )
        .bind(tenant)
        .bind(project.unwrap_or(""))
        .bind(at)
        .bind(id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("listing backups", e))?;
        Ok(rows)
    }

    pub async fn backup(&self, tenant: &str, id: &str) -> Result<Option<BackupRow>> {
        let row: Option<BackupRow> = sqlx::query_as(
            "SELECT id, tenant, project, artifact_id, kind, trigger, created_by, created_at, summary FROM backups \
             WHERE tenant = $1 AND id = $2",
        )
        .bind(tenant)
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error("reading a backup", e))?;
        Ok(row)
    }

    /// Removes a backup and its pins; false when it was not there.
    pub async fn delete_backup(&self, tenant: &str, id: &str) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let deleted = sqlx::query("DELETE FROM backups WHERE tenant = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error("deleting a backup", e))?
            .rows_affected();
        sqlx::query("DELETE FROM backup_pins WHERE backup_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error("unpinning packs", e))?;
        tx.commit().await.map_err(|e| db_error("committing", e))?;
        Ok(deleted == 1)
    }

    /// Of `packs`, those a backup pins.
    pub async fn pinned(&self, packs: &[String]) -> Result<HashSet<String>> {
        let mut pinned = HashSet::new();
        for batch in packs.chunks(BATCH_ROWS) {
            let sql = format!(
                "SELECT DISTINCT pack_id FROM backup_pins WHERE pack_id IN ({})",
                self.dialect.placeholders(1, super::in_list_len(batch.len()))
            );
            let mut query = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql));
            for pack in super::padded(batch) {
                query = query.bind(pack);
            }
            pinned.extend(
                query
                    .fetch_all(&self.pool)
                    .await
                    .map_err(|e| db_error("reading pins", e))?,
            );
        }
        Ok(pinned)
    }

    /// Rows for packs a backup needs that the catalog lacks (a backup older than the one
    /// restored, after a disaster): the pins keep them.
    pub async fn restore_pack_rows(&self, tenant: &str, packs: &[PackImage]) -> Result<()> {
        let mut tx = self.begin_write().await?;
        for pack in packs {
            insert_pack_row(&mut tx, tenant, pack).await?;
        }
        tx.commit().await.map_err(|e| db_error("committing", e))
    }

    // ---- schedules ---------------------------------------------------------------------------

    pub async fn set_backup_schedule(&self, schedule: &ScheduleRow) -> Result<()> {
        let _turn = self.write_turn().await;
        sqlx::query(
            "INSERT INTO backup_schedules (tenant, project, interval_seconds, keep, updated_by, updated_at, last_run_at) \
             VALUES ($1, $2, $3, $4, $5, $6, NULL) ON CONFLICT (tenant, project) DO UPDATE SET \
             interval_seconds = excluded.interval_seconds, keep = excluded.keep, \
             updated_by = excluded.updated_by, updated_at = excluded.updated_at",
        )
        .bind(&schedule.tenant)
        .bind(&schedule.project)
        .bind(schedule.interval_seconds)
        .bind(schedule.keep)
        .bind(&schedule.updated_by)
        .bind(schedule.updated_at)
        .execute(&self.pool)
        .await
        .map_err(|e| db_error("setting a backup schedule", e))?;
        Ok(())
    }

    pub async fn delete_backup_schedule(&self, tenant: &str, project: &str) -> Result<bool> {
        let _turn = self.write_turn().await;
        let deleted = sqlx::query("DELETE FROM backup_schedules WHERE tenant = $1 AND project = $2")
            .bind(tenant)
            .bind(project)
            .execute(&self.pool)
            .await
            .map_err(|e| db_error("removing a backup schedule", e))?
            .rows_affected();
        Ok(deleted == 1)
    }

    /// A tenant's schedules (of one project when given), or every schedule when `tenant` is
    /// `None`.
    pub async fn backup_schedules(
        &self,
        tenant: Option<&str>,
        project: Option<&str>,
    ) -> Result<Vec<ScheduleRow>> {
        let rows: Vec<ScheduleRow> = sqlx::query_as(
            "SELECT tenant, project, interval_seconds, keep, updated_by, updated_at, last_run_at FROM backup_schedules \
             WHERE ($1 = '' OR tenant = $1) AND ($2 = '' OR project = $2) ORDER BY tenant, project",
        )
        .bind(tenant.unwrap_or(""))
        .bind(project.unwrap_or(""))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("listing backup schedules", e))?;
        Ok(rows)
    }

    pub async fn schedule_ran(&self, tenant: &str, project: &str, at: i64) -> Result<()> {
        let _turn = self.write_turn().await;
        sqlx::query("UPDATE backup_schedules SET last_run_at = $1 WHERE tenant = $2 AND project = $3")
            .bind(at)
            .bind(tenant)
            .bind(project)
            .execute(&self.pool)
            .await
            .map_err(|e| db_error("recording a scheduled backup", e))?;
        Ok(())
    }

    // ---- restore -----------------------------------------------------------------------------

    /// Adopts the chunk-id secret a backup was taken with. Only an installation that holds
    /// no chunks yet can: its secret is then unused. `Ok(false)` when it already had it.
    pub async fn adopt_service_secret(&self, secret_hex: &str) -> Result<bool> {
        if blake3::Hash::from_hex(secret_hex).is_err() {
            return Err(Error::DataLoss(
                "the backup's chunk-id secret is not 64 hex digits".into(),
            ));
        }
        let mut tx = self.begin_write().await?;
        sqlx::query("INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind("chunk_id_secret")
            .bind(secret_hex)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error("adopting the chunk-id secret", e))?;
        let current: String = sqlx::query_scalar("SELECT value FROM settings WHERE name = $1")
            .bind("chunk_id_secret")
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| db_error("reading the chunk-id secret", e))?;
        if current.eq_ignore_ascii_case(secret_hex) {
            tx.commit().await.map_err(|e| db_error("committing", e))?;
            return Ok(false);
        }
        let (held,): (i64,) =
            sqlx::query_as("SELECT (SELECT COUNT(*) FROM chunks) + (SELECT COUNT(*) FROM artifacts)")
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| db_error("counting chunks", e))?;
        if held > 0 {
            return Err(Error::FailedPrecondition(
                "the backup was taken on another installation (its chunk ids are keyed by another secret), and this \
                 one already holds content; restore it into an empty installation (`artifactd dr restore`)"
                    .into(),
            ));
        }
        sqlx::query("UPDATE settings SET value = $1 WHERE name = $2")
            .bind(secret_hex)
            .bind("chunk_id_secret")
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error("adopting the chunk-id secret", e))?;
        tx.commit().await.map_err(|e| db_error("committing", e))?;
        Ok(true)
    }

    /// Plans one artifact's restore and, unless it is a dry run, applies the plan in one
    /// transaction under the artifact's lock.
    pub async fn restore_artifact(&self, request: &RestoreArtifact<'_>) -> Result<Restored> {
        let wanted = request.wanted;
        let scope = Scope::new(wanted.tenant.clone(), wanted.project.clone());
        let mut tx = self.begin_write().await?;
        // A write first: SQLite's write lock (and Postgres' name lock) before anything is read.
        self.lock_name(&mut tx, &scope, &wanted.artifact_type, &wanted.name)
            .await?;
        sqlx::query("UPDATE artifacts SET updated_at = updated_at WHERE id = $1")
            .bind(&wanted.id)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error("locking an artifact", e))?;
        let by_name: Option<String> = sqlx::query_scalar(
            "SELECT id FROM artifacts WHERE tenant = $1 AND project = $2 AND artifact_type = $3 AND name = $4",
        )
        .bind(&wanted.tenant)
        .bind(&wanted.project)
        .bind(&wanted.artifact_type)
        .bind(&wanted.name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| db_error("reading an artifact name", e))?;
        let target_id = match request.locate {
            Locate::ById => {
                if let Some(holder) = by_name.as_ref().filter(|id| **id != wanted.id) {
                    return Err(Error::AlreadyExists(format!(
                        "{} {:?} in {}/{} is now another artifact ({holder}); restore into a new project or as a new artifact",
                        wanted.artifact_type, wanted.name, wanted.tenant, wanted.project
                    )));
                }
                wanted.id.clone()
            }
            Locate::ByName => by_name.clone().unwrap_or_else(|| wanted.id.clone()),
        };
        if request.locate == Locate::ByName && by_name.is_none() {
            // Ensure the fresh id does not collide with an artifact elsewhere.
            let taken: Option<String> = sqlx::query_scalar("SELECT id FROM artifacts WHERE id = $1")
                .bind(&target_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| db_error("reading an artifact", e))?;
            if taken.is_some() {
                return Err(Error::AlreadyExists(format!("artifact id {target_id} is taken")));
            }
        }
        if target_id != wanted.id {
            // The artifact found by name: its row lock keeps other changes out until commit.
            sqlx::query("UPDATE artifacts SET updated_at = updated_at WHERE id = $1")
                .bind(&target_id)
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error("locking an artifact", e))?;
        }
        let current = self.image_in(&mut tx, &target_id).await?;
        if let Some(current) = &current
            && (current.tenant != wanted.tenant || current.project != wanted.project)
        {
            return Err(Error::AlreadyExists(format!(
                "artifact {target_id} now lives in {}/{}; restore into a new project or as a new artifact",
                current.tenant, current.project
            )));
        }
        let mut wanted = wanted.clone();
        wanted.id = target_id.clone();
        if let Some(current) = &current {
            let differing = conflicting_versions(current, &wanted);
            if !differing.is_empty() {
                return Err(Error::FailedPrecondition(format!(
                    "{} {:?} in {}/{} holds other content under version(s) {} than the restored state; restore into a new project",
                    wanted.artifact_type,
                    wanted.name,
                    wanted.tenant,
                    wanted.project,
                    differing.join(", ")
                )));
            }
        }
        let existed = current.is_some();
        let steps = plan_restore(current.as_ref(), &wanted);
        if current.is_some() && !steps.is_empty() && !request.overwrite && !request.dry_run {
            return Err(Error::AlreadyExists(format!(
                "{} {:?} exists in {}/{} and differs from the restored state ({} change(s)); pass overwrite to change it, \
                 or a dry run to see the changes",
                wanted.artifact_type,
                wanted.name,
                wanted.tenant,
                wanted.project,
                steps.len()
            )));
        }
        if request.dry_run || steps.is_empty() {
            return Ok(Restored {
                artifact_id: target_id,
                existed,
                steps,
            });
        }
        let added: Vec<&VersionImage> = steps
            .iter()
            .filter(|s| s.kind == StepKind::AddVersion)
            .filter_map(|s| wanted.version(&s.version))
            .collect();
        if !added.is_empty() {
            self.restore_content(&mut tx, &wanted.tenant, &added, request.content)
                .await?;
        }
        let mut applied = Vec::new();
        for step in steps {
            let applied_step = self
                .apply_step(&mut tx, &wanted, current.as_ref(), step, request)
                .await?;
            applied.push(applied_step);
        }
        // Holds and grants come back; existing ones stay (a restore never lifts a hold).
        for hold in &wanted.holds {
            sqlx::query(
                "INSERT INTO legal_holds (artifact_id, version, tenant, project, reason, held_by, held_at) \
                 SELECT $1, $2, $3, $4, $5, $6, $7 WHERE $2 = '' OR EXISTS \
                 (SELECT 1 FROM versions WHERE artifact_id = $1 AND version = $2) ON CONFLICT DO NOTHING",
            )
            .bind(&wanted.id)
            .bind(&hold.version)
            .bind(&wanted.tenant)
            .bind(&wanted.project)
            .bind(&hold.reason)
            .bind(&hold.held_by)
            .bind(hold.held_at)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error("restoring legal holds", e))?;
        }
        for grant in &wanted.grants {
            sqlx::query(
                "INSERT INTO artifact_grants (tenant, artifact_id, subject_kind, subject, role, granted_by, granted_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            )
            .bind(&wanted.tenant)
            .bind(&wanted.id)
            .bind(&grant.subject_kind)
            .bind(&grant.subject)
            .bind(&grant.role)
            .bind(&grant.granted_by)
            .bind(grant.granted_at)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error("restoring permissions", e))?;
        }
        sqlx::query(
            "UPDATE artifacts SET version_count = (SELECT COALESCE(MAX(seq), 0) FROM versions WHERE artifact_id = $1) \
             WHERE id = $1 AND version_count < (SELECT COALESCE(MAX(seq), 0) FROM versions WHERE artifact_id = $1)",
        )
        .bind(&wanted.id)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error("counting versions", e))?;
        self.write_event_with(
            &mut tx,
            EventKind::ArtifactRecovered,
            &scope,
            &wanted.id,
            "",
            request.now,
            &serde_json::json!({ "reason": request.reason }),
        )
        .await?;
        tx.commit().await.map_err(|e| db_error("committing", e))?;
        self.announce_commit();
        Ok(Restored {
            artifact_id: target_id,
            existed,
            steps: applied,
        })
    }

    /// Makes the content of versions being added present in the index: the backup's rows
    /// for the chunks they need where the catalog lacks them, then every chunk claimed (its
    /// pack's mark taken, its row counted) as an upload's commit does.
    async fn restore_content(
        &self,
        tx: &mut Tx,
        tenant: &str,
        added: &[&VersionImage],
        content: Option<&Content>,
    ) -> Result<()> {
        let mut needed: BTreeSet<ChunkId> = BTreeSet::new();
        for version in added {
            let manifest = Manifest::decode(version.manifest.clone()).map_err(|error| {
                Error::DataLoss(format!(
                    "the manifest of version {} does not decode ({error})",
                    version.version
                ))
            })?;
            needed.extend(manifest.entries().map(|e| e.chunk_id));
        }
        if let Some(content) = content {
            // The bases delta chunks decode through, as the backup indexes them.
            let mut pending: Vec<ChunkId> = needed.iter().copied().collect();
            while let Some(id) = pending.pop() {
                let Some(base) = content.chunks.get(&id).and_then(|chunk| chunk.base.as_deref()) else {
                    continue;
                };
                let base = ChunkId::from_hex(base).ok_or_else(|| {
                    Error::DataLoss(format!("the backup names a base {base:?} that is not a chunk id"))
                })?;
                if needed.insert(base) {
                    pending.push(base);
                }
            }
        }
        let needed: Vec<ChunkId> = needed.into_iter().collect();
        let mut packs: BTreeSet<String> = BTreeSet::new();
        if let Some(content) = content {
            let mut rows = Vec::new();
            for id in &needed {
                let chunk = content.chunks.get(id).ok_or_else(|| {
                    Error::DataLoss(format!(
                        "the backup does not index chunk {} that its versions need",
                        id.to_hex()
                    ))
                })?;
                packs.insert(chunk.pack_id.clone());
                rows.push((id, chunk));
            }
            for key in &content.tenant_keys {
                self.restore_tenant_key(tx, tenant, key).await?;
            }
            for pack_id in &packs {
                let pack = content
                    .packs
                    .get(pack_id)
                    .ok_or_else(|| Error::DataLoss(format!("the backup does not list pack {pack_id}")))?;
                insert_pack_row(tx, tenant, pack).await?;
            }
            for (id, chunk) in rows {
                let base = match &chunk.base {
                    Some(base) => Some(
                        ChunkId::from_hex(base)
                            .ok_or_else(|| {
                                Error::DataLoss(format!(
                                    "the backup names a base {base:?} that is not a chunk id"
                                ))
                            })?
                            .0
                            .to_vec(),
                    ),
                    None => None,
                };
                sqlx::query(
                    "INSERT INTO chunks (tenant, chunk_id, pack_id, pack_offset, stored_length, raw_length, codec, \
                     base_chunk_id, delta_depth, resemblance_0, resemblance_1, resemblance_2, resemblance_3) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) ON CONFLICT (tenant, chunk_id) DO NOTHING",
                )
                .bind(tenant)
                .bind(id.0.to_vec())
                .bind(&chunk.pack_id)
                .bind(chunk.offset)
                .bind(chunk.stored_length)
                .bind(chunk.raw_length)
                .bind(chunk.codec)
                .bind(base)
                .bind(chunk.depth)
                .bind(chunk.resemblance.map(|r| r[0]))
                .bind(chunk.resemblance.map(|r| r[1]))
                .bind(chunk.resemblance.map(|r| r[2]))
                .bind(chunk.resemblance.map(|r| r[3]))
                .execute(&mut **tx)
                .await
                .map_err(|e| db_error("restoring the chunk index", e))?;
            }
        }
        // Sealed content whose key was destroyed stays destroyed.
        let packs: Vec<String> = packs.into_iter().collect();
        if self.any_erased(tx, &packs).await? {
            return Err(Error::FailedPrecondition(format!(
                "tenant {tenant:?}'s encryption key for content the restored versions need was destroyed; nothing was restored"
            )));
        }
        if !self.claim_chunks(tx, tenant, &needed).await? {
            return Err(Error::FailedPrecondition(
                "content the restored versions need is no longer stored (collected, or its encryption key destroyed); nothing was restored"
                    .into(),
            ));
        }
        Ok(())
    }

    /// A tenant key from a backup, where the catalog lacks it. A backup from before a
    /// rotation holds a key that is no longer the active one: of two active keys, the newer
    /// stays active. A key this catalog destroyed stays destroyed.
    async fn restore_tenant_key(&self, tx: &mut Tx, tenant: &str, key: &TenantKeyImage) -> Result<()> {
        let mut state = key.state.clone();
        let mut retired_at = key.retired_at;
        if state == "active" {
            let active: Option<(String, i64)> = sqlx::query_as(
                "SELECT key_id, created_at FROM tenant_keys WHERE tenant = $1 AND state = 'active'",
            )
            .bind(tenant)
            .fetch_optional(&mut **tx)
            .await
            .map_err(|e| db_error("reading tenant keys", e))?;
            match active {
                Some((id, _)) if id == key.key_id => return Ok(()),
                Some((id, created_at)) if created_at < key.created_at => {
                    sqlx::query(
                        "UPDATE tenant_keys SET state = 'rotated', retired_at = $1 WHERE key_id = $2",
                    )
                    .bind(key.created_at)
                    .bind(&id)
                    .execute(&mut **tx)
                    .await
                    .map_err(|e| db_error("restoring tenant keys", e))?;
                }
                Some((_, newer)) => {
                    state = "rotated".to_owned();
                    retired_at = Some(newer);
                }
                None => {}
            }
        }
        sqlx::query(
            "INSERT INTO tenant_keys (key_id, tenant, state, master_key_id, wrapped, created_at, retired_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (key_id) DO NOTHING",
        )
        .bind(&key.key_id)
        .bind(tenant)
        .bind(&state)
        .bind(&key.master_key_id)
        .bind(&key.wrapped)
        .bind(key.created_at)
        .bind(retired_at)
        .execute(&mut **tx)
        .await
        .map_err(|e| db_error("restoring tenant keys", e))?;
        Ok(())
    }

    async fn apply_step(
        &self,
        tx: &mut Tx,
        wanted: &ArtifactImage,
        current: Option<&ArtifactImage>,
        step: RestoreStep,
        request: &RestoreArtifact<'_>,
    ) -> Result<RestoreStep> {
        let id = wanted.id.as_str();
        let now = request.now;
        match step.kind {
            StepKind::CreateArtifact => {
                sqlx::query(
                    "INSERT INTO artifacts (id, tenant, project, artifact_type, name, description, tags, metadata, \
                     latest_version, version_count, created_by, created_at, updated_at, deleted_at, categories, deleted_by) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0, $10, $11, $12, $13, $14, $15)",
                )
                .bind(id)
                .bind(&wanted.tenant)
                .bind(&wanted.project)
                .bind(&wanted.artifact_type)
                .bind(&wanted.name)
                .bind(&wanted.description)
                .bind(tags_json(&wanted.tags))
                .bind(map_json(&wanted.metadata))
                .bind(&wanted.latest_version)
                .bind(&wanted.created_by)
                .bind(wanted.created_at)
                .bind(now)
                .bind(wanted.deleted_at.map(|_| now))
                .bind(tags_json(&wanted.categories))
                .bind(&wanted.deleted_by)
                .execute(&mut **tx)
                .await
                .map_err(|e| db_error("restoring an artifact", e))?;
            }
            StepKind::SetFields => {
                sqlx::query(
                    "UPDATE artifacts SET description = $1, tags = $2, categories = $3, metadata = $4, \
                     latest_version = $5, updated_at = $6 WHERE id = $7",
                )
                .bind(&wanted.description)
                .bind(tags_json(&wanted.tags))
                .bind(tags_json(&wanted.categories))
                .bind(map_json(&wanted.metadata))
                .bind(&wanted.latest_version)
                .bind(now)
                .bind(id)
                .execute(&mut **tx)
                .await
                .map_err(|e| db_error("restoring an artifact's fields", e))?;
            }
            StepKind::DeleteArtifact | StepKind::UndeleteArtifact => {
                // The trash period starts now: a restore never hands the purger something
                // older than the moment it was restored.
                let (at, by) = if step.kind == StepKind::DeleteArtifact {
                    (Some(now), wanted.deleted_by.as_str())
                } else {
                    (None, "")
                };
                sqlx::query(
                    "UPDATE artifacts SET deleted_at = $1, deleted_by = $2, updated_at = $3 WHERE id = $4",
                )
                .bind(at)
                .bind(by)
                .bind(now)
                .bind(id)
                .execute(&mut **tx)
                .await
                .map_err(|e| db_error("restoring an artifact's deletion", e))?;
            }
            StepKind::AddVersion => {
                let version = wanted
                    .version(&step.version)
                    .ok_or_else(|| Error::internal("a planned version is missing"))?;
                let mut skipped = self.insert_version(tx, id, version, now).await?;
                if !skipped.is_empty() {
                    skipped.insert(0, step.detail.clone());
                    return Ok(RestoreStep {
                        detail: skipped.join("; "),
                        ..step
                    });
                }
            }
            StepKind::SetState => {
                let to = step
                    .to_state
                    .ok_or_else(|| Error::internal("a state step has no state"))?;
                sqlx::query("UPDATE versions SET state = $1 WHERE artifact_id = $2 AND version = $3")
                    .bind(to.as_str())
                    .bind(id)
                    .bind(&step.version)
                    .execute(&mut **tx)
                    .await
                    .map_err(|e| db_error("restoring a state", e))?;
                let transition = Transition {
                    from: step.from_state,
                    to,
                    actor: request.actor.to_owned(),
                    reason: request.reason.to_owned(),
                    at: Timestamp(now),
                };
                lifecycle::record_transition(tx, id, &step.version, &transition).await?;
            }
            StepKind::TrashVersion | StepKind::UntrashVersion => {
                let held = super::retention::hold_on(tx, id, Some(&step.version)).await?;
                if step.kind == StepKind::TrashVersion
                    && let Some(hold) = held
                {
                    return Ok(RestoreStep {
                        kind: StepKind::Skip,
                        detail: format!("left live: {hold}"),
                        ..step
                    });
                }
                let (at, by) = if step.kind == StepKind::TrashVersion {
                    let by = wanted
                        .version(&step.version)
                        .filter(|v| v.deleted_at.is_some())
                        .map_or(request.actor, |v| v.deleted_by.as_str());
                    (Some(now), by)
                } else {
                    (None, "")
                };
                sqlx::query("UPDATE versions SET deleted_at = $1, deleted_by = $2 WHERE artifact_id = $3 AND version = $4")
                    .bind(at)
                    .bind(by)
                    .bind(id)
                    .bind(&step.version)
                    .execute(&mut **tx)
                    .await
                    .map_err(|e| db_error("restoring a version's deletion", e))?;
                if step.kind == StepKind::TrashVersion {
                    // An alias on a trashed version would point at nothing.
                    sqlx::query("DELETE FROM aliases WHERE artifact_id = $1 AND version = $2")
                        .bind(id)
                        .bind(&step.version)
                        .execute(&mut **tx)
                        .await
                        .map_err(|e| db_error("restoring aliases", e))?;
                }
            }
            StepKind::SetAliases => {
                let _ = current;
                sqlx::query("DELETE FROM aliases WHERE artifact_id = $1")
                    .bind(id)
                    .execute(&mut **tx)
                    .await
                    .map_err(|e| db_error("restoring aliases", e))?;
                for alias in &wanted.aliases {
                    sqlx::query(
                        "INSERT INTO aliases (artifact_id, name, version, updated_by, updated_at) \
                         SELECT $1, $2, $3, $4, $5 WHERE EXISTS \
                         (SELECT 1 FROM versions WHERE artifact_id = $1 AND version = $3 AND deleted_at IS NULL)",
                    )
                    .bind(id)
                    .bind(&alias.name)
                    .bind(&alias.version)
                    .bind(&alias.updated_by)
                    .bind(alias.updated_at)
                    .execute(&mut **tx)
                    .await
                    .map_err(|e| db_error("restoring aliases", e))?;
                }
            }
            StepKind::Skip => {}
        }
        Ok(step)
    }

    /// Inserts a version as the image has it, with its history; returns what it had to
    /// leave out (dependencies on artifacts that no longer exist).
    /// What the image had in the trash goes to the trash as of `now`.
    async fn insert_version(
        &self,
        tx: &mut Tx,
        artifact_id: &str,
        version: &VersionImage,
        now: i64,
    ) -> Result<Vec<String>> {
        let seq_taken: Option<i64> =
            sqlx::query_scalar("SELECT seq FROM versions WHERE artifact_id = $1 AND seq = $2")
                .bind(artifact_id)
                .bind(version.seq)
                .fetch_optional(&mut **tx)
                .await
                .map_err(|e| db_error("reading versions", e))?;
        let manifest = Manifest::decode(version.manifest.clone()).map_err(|error| {
            Error::DataLoss(format!(
                "the manifest of version {} does not decode ({error})",
                version.version
            ))
        })?;
        let tenant: String = sqlx::query_scalar("SELECT tenant FROM artifacts WHERE id = $1")
            .bind(artifact_id)
            .fetch_one(&mut **tx)
            .await
            .map_err(|e| db_error("reading an artifact", e))?;
        let manifest = self.store_manifest(tx, &tenant, &manifest.into()).await?;
        let extracted = self.store_extracted(tx, &tenant, &version.extracted).await?;
        let seq = if seq_taken.is_some() {
            let (max,): (i64,) =
                sqlx::query_as("SELECT COALESCE(MAX(seq), 0) FROM versions WHERE artifact_id = $1")
                    .bind(artifact_id)
                    .fetch_one(&mut **tx)
                    .await
                    .map_err(|e| db_error("reading versions", e))?;
            max + 1
        } else {
            version.seq
        };
        sqlx::query(
            "INSERT INTO versions (artifact_id, version, seq, size, stored_size, new_stored_size, blake3, chunk_count, \
             created_by, created_at, change_message, metadata, content_type, extracted, manifest, state, \
             run_id, run_workflow, run_step, run_agent, deleted_at, deleted_by, dedup_saved_bytes, delta_saved_bytes, \
             extracted_digest, extracted_lines) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, \
             $23, $24, $25, $26)",
        )
        .bind(artifact_id)
        .bind(&version.version)
        .bind(seq)
        .bind(version.size)
        .bind(version.stored_size)
        .bind(version.new_stored_size)
        .bind(&version.blake3)
        .bind(version.chunk_count)
        .bind(&version.created_by)
        .bind(version.created_at)
        .bind(&version.change_message)
        .bind(map_json(&version.metadata))
        .bind(&version.content_type)
        .bind(&extracted.inline)
        .bind(manifest)
        .bind(version.state.as_str())
        .bind(&version.run_id)
        .bind(&version.run_workflow)
        .bind(&version.run_step)
        .bind(&version.run_agent)
        .bind(version.deleted_at.map(|_| now))
        .bind(&version.deleted_by)
        .bind(version.dedup_saved_bytes)
        .bind(version.delta_saved_bytes)
        .bind(extracted.digest)
        .bind(extracted.lines)
        .execute(&mut **tx)
        .await
        .map_err(|e| db_error("restoring a version", e))?;
        for transition in &version.transitions {
            let transition = Transition {
                from: transition.from,
                to: transition.to,
                actor: transition.actor.clone(),
                reason: transition.reason.clone(),
                at: Timestamp(transition.at),
            };
            lifecycle::record_transition(tx, artifact_id, &version.version, &transition).await?;
        }
        let mut skipped = Vec::new();
        for dependency in &version.dependencies {
            let exists: Option<String> = sqlx::query_scalar("SELECT id FROM artifacts WHERE id = $1")
                .bind(&dependency.target_id)
                .fetch_optional(&mut **tx)
                .await
                .map_err(|e| db_error("reading an artifact", e))?;
            if exists.is_none() {
                skipped.push(format!(
                    "its dependency on {} was left out: that artifact no longer exists",
                    dependency.target_id
                ));
                continue;
            }
            sqlx::query(
                "INSERT INTO dependencies (artifact_id, version, position, target_id, requirement, kind) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(artifact_id)
            .bind(&version.version)
            .bind(dependency.position)
            .bind(&dependency.target_id)
            .bind(&dependency.requirement)
            .bind(&dependency.kind)
            .execute(&mut **tx)
            .await
            .map_err(|e| db_error("restoring dependencies", e))?;
        }
        Ok(skipped)
    }
}

/// A pack row from a backup, committed, where the catalog lacks it; a tombstone of the
/// pack (buried, its object perhaps not yet deleted) is lifted.
async fn insert_pack_row(tx: &mut Tx, tenant: &str, pack: &PackImage) -> Result<()> {
    sqlx::query(
        "INSERT INTO packs (pack_id, tenant, size, upload_id, state, created_at, key_id, wrapped_key) \
         VALUES ($1, $2, $3, 'restore', 'committed', $4, $5, $6) ON CONFLICT (pack_id) DO NOTHING",
    )
    .bind(&pack.pack_id)
    .bind(tenant)
    .bind(pack.size)
    .bind(pack.created_at)
    .bind(&pack.key_id)
    .bind(&pack.wrapped_key)
    .execute(&mut **tx)
    .await
    .map_err(|e| db_error("restoring packs", e))?;
    sqlx::query("DELETE FROM pack_tombstones WHERE pack_id = $1")
        .bind(&pack.pack_id)
        .execute(&mut **tx)
        .await
        .map_err(|e| db_error("restoring packs", e))?;
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Catalog {
    /// One artifact, everything about it, as the transaction sees it (manifests whole).
    async fn image_in(&self, tx: &mut Tx, artifact_id: &str) -> Result<Option<ArtifactImage>> {
        let Some(mut image) = image_rows_in(tx, artifact_id).await? else {
            return Ok(None);
        };
        let stored: Vec<Vec<u8>> = image
            .versions
            .iter_mut()
            .map(|version| std::mem::take(&mut version.manifest))
            .collect();
        let whole = self.whole_manifests(tx, &image.tenant, stored).await?;
        for (version, manifest) in image.versions.iter_mut().zip(whole) {
            version.manifest = manifest;
        }
        Ok(Some(image))
    }
}

/// One artifact, everything about it, as its rows hold it (manifests as stored).
async fn image_rows_in(tx: &mut Tx, artifact_id: &str) -> Result<Option<ArtifactImage>> {
    let row = sqlx::query(
        "SELECT id, tenant, project, artifact_type, name, description, tags, categories, metadata, latest_version, \
         created_by, created_at, updated_at, deleted_at, deleted_by FROM artifacts WHERE id = $1",
    )
    .bind(artifact_id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(|e| db_error("reading an artifact", e))?;
    let Some(row) = row else { return Ok(None) };
    let text = |name: &str| -> String { row.try_get::<String, _>(name).unwrap_or_default() };
    let number = |name: &str| -> i64 { row.try_get::<i64, _>(name).unwrap_or_default() };
    let mut image = ArtifactImage {
        id: text("id"),
        tenant: text("tenant"),
        project: text("project"),
        artifact_type: text("artifact_type"),
        name: text("name"),
        description: text("description"),
        tags: json_list(&text("tags")),
        categories: json_list(&text("categories")),
        metadata: json_map(&text("metadata")),
        latest_version: text("latest_version"),
        created_by: text("created_by"),
        created_at: number("created_at"),
        updated_at: number("updated_at"),
        deleted_at: row.try_get::<Option<i64>, _>("deleted_at").unwrap_or(None),
        deleted_by: text("deleted_by"),
        versions: Vec::new(),
        aliases: Vec::new(),
        holds: Vec::new(),
        grants: Vec::new(),
    };
    let versions = sqlx::query(
        "SELECT version, seq, size, stored_size, new_stored_size, dedup_saved_bytes, delta_saved_bytes, blake3, \
         chunk_count, created_by, created_at, change_message, metadata, content_type, \
         extracted, (SELECT d.body FROM extracted_documents d WHERE d.digest = versions.extracted_digest \
         AND d.tenant = (SELECT a.tenant FROM artifacts a WHERE a.id = versions.artifact_id)) AS extracted_shared, \
         extracted_lines, state, run_id, run_workflow, run_step, run_agent, \
         deleted_at, deleted_by, manifest FROM versions WHERE artifact_id = $1 ORDER BY seq",
    )
    .bind(artifact_id)
    .fetch_all(&mut **tx)
    .await
    .map_err(|e| db_error("reading versions", e))?;
    let mut transitions: BTreeMap<String, Vec<TransitionImage>> = BTreeMap::new();
    let rows: Vec<(String, Option<String>, String, String, String, i64)> = sqlx::query_as(
        "SELECT version, from_state, to_state, actor, reason, at FROM version_transitions \
         WHERE artifact_id = $1 ORDER BY id",
    )
    .bind(artifact_id)
    .fetch_all(&mut **tx)
    .await
    .map_err(|e| db_error("reading transitions", e))?;
    for (version, from, to, actor, reason, at) in rows {
        transitions.entry(version).or_default().push(TransitionImage {
            from: from.as_deref().map(stored_state),
            to: stored_state(&to),
            actor,
            reason,
            at,
        });
    }
    let mut dependencies: BTreeMap<String, Vec<DependencyImage>> = BTreeMap::new();
    let rows: Vec<(String, i64, String, String, String)> = sqlx::query_as(
        "SELECT version, position, target_id, requirement, kind FROM dependencies \
         WHERE artifact_id = $1 ORDER BY version, position",
    )
    .bind(artifact_id)
    .fetch_all(&mut **tx)
    .await
    .map_err(|e| db_error("reading dependencies", e))?;
    for (version, position, target_id, requirement, kind) in rows {
        dependencies.entry(version).or_default().push(DependencyImage {
            position,
            target_id,
            requirement,
            kind,
        });
    }
    for row in versions {
        let text = |name: &str| -> String { row.try_get::<String, _>(name).unwrap_or_default() };
        let number = |name: &str| -> i64 { row.try_get::<i64, _>(name).unwrap_or_default() };
        let version = text("version");
        image.versions.push(VersionImage {
            seq: number("seq"),
            size: number("size"),
            stored_size: number("stored_size"),
            new_stored_size: number("new_stored_size"),
            dedup_saved_bytes: number("dedup_saved_bytes"),
            delta_saved_bytes: number("delta_saved_bytes"),
            blake3: text("blake3"),
            chunk_count: number("chunk_count"),
            created_by: text("created_by"),
            created_at: number("created_at"),
            change_message: text("change_message"),
            metadata: json_map(&text("metadata")),
            content_type: text("content_type"),
            extracted: match row
                .try_get::<Option<Vec<u8>>, _>("extracted_shared")
                .unwrap_or(None)
            {
                // A shared document: whole again, with the version's own line count.
                Some(shared) => serde_json::to_string(&super::extracted::joined(
                    "",
                    Some(&shared),
                    row.try_get::<Option<i64>, _>("extracted_lines").unwrap_or(None),
                ))
                .expect("extracted metadata serializes"),
                None => text("extracted"),
            },
            state: stored_state(&text("state")),
            run_id: text("run_id"),
            run_workflow: text("run_workflow"),
            run_step: text("run_step"),
            run_agent: text("run_agent"),
            deleted_at: row.try_get::<Option<i64>, _>("deleted_at").unwrap_or(None),
            deleted_by: text("deleted_by"),
            manifest: row
                .try_get::<Vec<u8>, _>("manifest")
                .map_err(|e| db_error("reading a manifest", e))?,
            transitions: transitions.remove(&version).unwrap_or_default(),
            dependencies: dependencies.remove(&version).unwrap_or_default(),
            version,
        });
    }
    image.aliases = aliases_in(tx, artifact_id).await?;
    let holds: Vec<(String, String, String, i64)> = sqlx::query_as(
        "SELECT version, reason, held_by, held_at FROM legal_holds WHERE artifact_id = $1 ORDER BY version",
    )
    .bind(artifact_id)
    .fetch_all(&mut **tx)
    .await
    .map_err(|e| db_error("reading legal holds", e))?;
    image.holds = holds
        .into_iter()
        .map(|(version, reason, held_by, held_at)| HoldImage {
            version,
            reason,
            held_by,
            held_at,
        })
        .collect();
    let grants: Vec<(String, String, String, String, i64)> = sqlx::query_as(
        "SELECT subject_kind, subject, role, granted_by, granted_at FROM artifact_grants \
         WHERE artifact_id = $1 ORDER BY subject_kind, subject",
    )
    .bind(artifact_id)
    .fetch_all(&mut **tx)
    .await
    .map_err(|e| db_error("reading permissions", e))?;
    image.grants = grants
        .into_iter()
        .map(
            |(subject_kind, subject, role, granted_by, granted_at)| GrantImage {
                subject_kind,
                subject,
                role,
                granted_by,
                granted_at,
            },
        )
        .collect();
    Ok(Some(image))
}

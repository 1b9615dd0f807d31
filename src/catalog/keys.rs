//! Tenant keys and the wrapped data keys of sealed packs.
//!
//! Three races are closed here rather than in the callers:
//! - staging a pack under a tenant key that is being rotated or destroyed: the stage is a
//!   compare-and-set on the key being active, and on Postgres it waits for the row lock the
//!   rotation or destruction holds, so it either lands before (and is re-wrapped or erased
//!   with the rest) or reports [`Staged::KeyRetired`];
//! - two replicas creating a tenant's first key: the partial unique index keeps one, and the
//!   loser reads the winner's;
//! - a version committed while the tenant's key is destroyed: see [`Catalog::check_keys_alive`].

use super::Tx;
use super::{Catalog, Dialect, db_error, is_unique_violation};
use crate::domain::encryption::{
    PackKey, SealedCounts, ShredReport, TenantKeyRecord, TenantKeyState, WrappedTenantKey,
};
use crate::domain::{Error, Result, Timestamp};
use sqlx::Row;
use sqlx::any::AnyRow;
use std::collections::HashMap;

const KEY_COLUMNS: &str = "key_id, tenant, state, master_key_id, wrapped, created_at, retired_at";
/// Data keys re-wrapped per round trip during a rotation.
const REWRAP_BATCH: i64 = 500;

/// A pack about to be written.
#[derive(Debug, Clone, Copy)]
pub struct PackStage<'a> {
    pub tenant: &'a str,
    pub pack_id: &'a str,
    pub size: u64,
    pub upload_id: &'a str,
    pub at: i64,
}

/// The outcome of staging a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Staged {
    /// Recorded; `generation` identifies the row (when it was made), which the commit
    /// checks, so a pack collected and made again meanwhile is not taken for this one.
    Recorded { generation: i64 },
    /// The tenant key the pack's data key is wrapped under is no longer active (rotated or
    /// destroyed meanwhile): wrap it under the current key and stage again.
    KeyRetired,
}

/// The Postgres advisory lock that orders the changes of one tenant's keys (creating the
/// first, rotating, destroying); SQLite orders every write anyway.
fn keys_lock(tenant: &str) -> i64 {
    let digest = blake3::hash(format!("tenant-keys\0{tenant}").as_bytes());
    i64::from_le_bytes(digest.as_bytes()[..8].try_into().expect("eight bytes"))
}

fn key_of(row: &AnyRow) -> Result<TenantKeyRecord> {
    let get = |e: sqlx::Error| db_error("reading a tenant key", e);
    let master_key_id: Option<String> = row.try_get("master_key_id").map_err(get)?;
    let wrapped: Option<Vec<u8>> = row.try_get("wrapped").map_err(get)?;
    Ok(TenantKeyRecord {
        key_id: row.try_get("key_id").map_err(get)?,
        tenant: row.try_get("tenant").map_err(get)?,
        state: TenantKeyState::parse(&row.try_get::<String, _>("state").map_err(get)?)?,
        material: master_key_id
            .zip(wrapped)
            .map(|(master_key_id, wrapped)| WrappedTenantKey {
                master_key_id,
                wrapped,
            }),
        created_at: Timestamp(row.try_get("created_at").map_err(get)?),
        retired_at: row
            .try_get::<Option<i64>, _>("retired_at")
            .map_err(get)?
            .map(Timestamp),
    })
}

impl Catalog {
    async fn lock_tenant_keys(&self, tx: &mut Tx, tenant: &str) -> Result<()> {
        if self.dialect == Dialect::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(keys_lock(tenant))
                .execute(&mut **tx)
                .await
                .map_err(|e| db_error("locking a tenant's keys", e))?;
        }
        Ok(())
    }

    /// The key new packs of `tenant` are sealed under, if it has one.
    pub async fn active_tenant_key(&self, tenant: &str) -> Result<Option<TenantKeyRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM tenant_keys WHERE tenant = $1 AND state = 'active'"
        )))
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error("reading a tenant key", e))?;
        row.as_ref().map(key_of).transpose()
    }

    /// Every key `tenant` has had, oldest first.
    pub async fn tenant_keys(&self, tenant: &str) -> Result<Vec<TenantKeyRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM tenant_keys WHERE tenant = $1 ORDER BY created_at, key_id"
        )))
        .bind(tenant)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("listing tenant keys", e))?;
        rows.iter().map(key_of).collect()
    }

    /// The tenant keys named by `ids` (those that exist).
    pub async fn tenant_keys_by_id(&self, ids: &[&str]) -> Result<HashMap<String, TenantKeyRecord>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM tenant_keys WHERE key_id IN ({})",
            self.dialect.placeholders(1, super::in_list_len(ids.len()))
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in super::padded(ids) {
            query = query.bind(*id);
        }
        let rows = query
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error("reading tenant keys", e))?;
        rows.iter()
            .map(|row| key_of(row).map(|key| (key.key_id.clone(), key)))
            .collect()
    }

    /// Makes `key` the tenant's active key unless it has one already; returns the active key
    /// either way (another replica may have made one first).
    pub async fn insert_tenant_key(&self, key: &TenantKeyRecord) -> Result<TenantKeyRecord> {
        let material = key
            .material
            .as_ref()
            .ok_or_else(|| Error::internal("a new tenant key needs its wrapped material"))?;
        let mut tx = self.begin_write().await?;
        self.lock_tenant_keys(&mut tx, &key.tenant).await?;
        let inserted = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO tenant_keys ({KEY_COLUMNS}) VALUES ($1, $2, 'active', $3, $4, $5, NULL)"
        )))
        .bind(&key.key_id)
        .bind(&key.tenant)
        .bind(&material.master_key_id)
        .bind(material.wrapped.clone())
        .bind(key.created_at.0)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {
                let record = crate::audit::system_change(
                    &key.tenant,
                    "",
                    format!("tenant-key:{}", key.key_id),
                    "tenant_key.created",
                    key.created_at,
                );
                self.append_audit_in(&mut tx, &record).await?;
                tx.commit()
                    .await
                    .map_err(|e| db_error("committing a tenant key", e))?;
                Ok(key.clone())
            }
            Err(error) if is_unique_violation(&error) => {
                drop(tx);
                self.active_tenant_key(&key.tenant).await?.ok_or_else(|| {
                    Error::Aborted(format!(
                        "tenant {:?} changed keys while one was being made; retry",
                        key.tenant
                    ))
                })
            }
            Err(error) => Err(db_error("storing a tenant key", error)),
        }
    }

    /// Records a pack before it is written, so that a crash between the write and the
    /// version commit leaves a row for garbage collection instead of an unknown object.
    /// A sealed pack records its wrapped data key too, on condition that the tenant key
    /// wrapping it is still active.
    pub async fn stage_pack(&self, stage: &PackStage<'_>, key: Option<&PackKey>) -> Result<Staged> {
        let PackStage {
            tenant,
            pack_id,
            size,
            upload_id,
            at: now,
        } = *stage;
        let mut tx = self.begin_write().await?;
        let generation: Option<i64> = match key {
            // Identical bytes make the identical pack: a row that exists already is this
            // pack too, and its generation (when that row was made) is what the upload
            // commits against.
            None => sqlx::query_scalar(
                "INSERT INTO packs (pack_id, tenant, size, upload_id, state, created_at) \
                 VALUES ($1, $2, $3, $4, 'staged', $5) \
                 ON CONFLICT (pack_id) DO UPDATE SET size = packs.size RETURNING created_at",
            )
            .bind(pack_id)
            .bind(tenant)
            .bind(size as i64)
            .bind(upload_id)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| db_error("staging a pack", e))?,
            Some(key) => {
                // On Postgres the shared lock waits for a rotation or destruction holding the
                // key's row, then sees the row as that change left it.
                let lock = if self.dialect == Dialect::Postgres {
                    " FOR SHARE"
                } else {
                    ""
                };
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO packs (pack_id, tenant, size, upload_id, state, created_at, key_id, wrapped_key) \
                     SELECT $1, $2, $3, $4, 'staged', $5, $6, $7 \
                     WHERE EXISTS (SELECT 1 FROM tenant_keys WHERE key_id = $6 AND tenant = $2 AND state = 'active'{lock}) \
                     RETURNING created_at"
                )))
                .bind(pack_id)
                .bind(tenant)
                .bind(size as i64)
                .bind(upload_id)
                .bind(now)
                .bind(&key.key_id)
                .bind(key.wrapped.clone())
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| db_error("staging a pack", e))?
            }
        };
        let Some(generation) = generation else {
            return Ok(Staged::KeyRetired);
        };
        // Packs are named by their bytes, so one collected earlier can be made again. Its
        // tombstone goes after the row (which waits for a sweep still removing the old row,
        // so that sweep's tombstone is seen here); a collector deleting the object holds the
        // tombstone's row and this waits for it, so the object written after staging is
        // never deleted.
        sqlx::query("DELETE FROM pack_tombstones WHERE pack_id = $1")
            .bind(pack_id)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error("reviving a pack", e))?;
        tx.commit().await.map_err(|e| db_error("committing", e))?;
        Ok(Staged::Recorded { generation })
    }

    /// Replaces the tenant's active key `old_key_id` by `new`: every data key wrapped under
    /// the old one is re-wrapped by `rewrap(pack_id, wrapped)` under the new one, and the old
    /// key's material is erased, in one transaction. Returns how many data keys moved.
    pub async fn rotate_tenant_key(
        &self,
        old_key_id: &str,
        new: &TenantKeyRecord,
        rewrap: impl Fn(&str, &[u8]) -> Result<Vec<u8>>,
    ) -> Result<u64> {
        let material = new
            .material
            .as_ref()
            .ok_or_else(|| Error::internal("a new tenant key needs its wrapped material"))?;
        let mut tx = self.begin_write().await?;
        self.lock_tenant_keys(&mut tx, &new.tenant).await?;
        // The write first: it holds the old key's row (and on SQLite the database) until the
        // commit, so no pack is staged under the old key meanwhile.
        let retired = sqlx::query(
            "UPDATE tenant_keys SET state = 'rotated', master_key_id = NULL, wrapped = NULL, retired_at = $1 \
             WHERE key_id = $2 AND tenant = $3 AND state = 'active'",
        )
        .bind(new.created_at.0)
        .bind(old_key_id)
        .bind(&new.tenant)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error("retiring a tenant key", e))?;
        if retired.rows_affected() != 1 {
            return Err(Error::Aborted(format!(
                "tenant {:?}'s key {old_key_id} is no longer active (rotated or destroyed meanwhile); retry",
                new.tenant
            )));
        }
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO tenant_keys ({KEY_COLUMNS}) VALUES ($1, $2, 'active', $3, $4, $5, NULL)"
        )))
        .bind(&new.key_id)
        .bind(&new.tenant)
        .bind(&material.master_key_id)
        .bind(material.wrapped.clone())
        .bind(new.created_at.0)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error("storing a tenant key", e))?;
        let mut moved = 0u64;
        loop {
            let rows: Vec<(String, Option<Vec<u8>>)> = sqlx::query_as(
                "SELECT pack_id, wrapped_key FROM packs WHERE key_id = $1 ORDER BY pack_id LIMIT $2",
            )
            .bind(old_key_id)
            .bind(REWRAP_BATCH)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| db_error("reading data keys", e))?;
            if rows.is_empty() {
                break;
            }
            for (pack_id, wrapped) in rows {
                let wrapped = wrapped.ok_or_else(|| {
                    Error::DataLoss(format!("pack {pack_id} of an active key has no data key"))
                })?;
                let rewrapped = rewrap(&pack_id, &wrapped)?;
                sqlx::query("UPDATE packs SET key_id = $1, wrapped_key = $2 WHERE pack_id = $3")
                    .bind(&new.key_id)
                    .bind(rewrapped)
                    .bind(&pack_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| db_error("re-wrapping a data key", e))?;
                moved += 1;
            }
        }
        let record = crate::audit::change_record(
            &new.tenant,
            "",
            format!("tenant-key:{old_key_id}->{}", new.key_id),
            "tenant_key.rotated",
            new.created_at,
        );
        self.append_audit_in(&mut tx, &record).await?;
        tx.commit()
            .await
            .map_err(|e| db_error("committing a key rotation", e))?;
        Ok(moved)
    }

    /// Destroys every live key of `tenant`: their material and their packs' data keys are
    /// erased, and the chunks in those packs leave the chunk index so that no later upload
    /// deduplicates against content nobody can read.
    pub async fn destroy_tenant_keys(&self, tenant: &str, at: Timestamp) -> Result<ShredReport> {
        let mut tx = self.begin_write().await?;
        // Ordered after any rotation in progress, so the key it makes is destroyed too.
        self.lock_tenant_keys(&mut tx, tenant).await?;
        let destroyed: Vec<(String,)> = sqlx::query_as(
            "UPDATE tenant_keys SET state = 'destroyed', master_key_id = NULL, wrapped = NULL, retired_at = $1 \
             WHERE tenant = $2 AND state = 'active' RETURNING key_id",
        )
        .bind(at.0)
        .bind(tenant)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| db_error("destroying tenant keys", e))?;
        let chunks = sqlx::query(
            "DELETE FROM chunks WHERE tenant = $1 AND pack_id IN \
             (SELECT pack_id FROM packs WHERE tenant = $1 AND key_id IS NOT NULL)",
        )
        .bind(tenant)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error("forgetting destroyed chunks", e))?
        .rows_affected();
        let packs = sqlx::query(
            "UPDATE packs SET wrapped_key = NULL WHERE tenant = $1 AND key_id IS NOT NULL AND wrapped_key IS NOT NULL",
        )
        .bind(tenant)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error("erasing data keys", e))?
        .rows_affected();
        // What was extracted from the content for search goes with it, and every replica's
        // index re-reads the tenant's artifacts (finding no text) from the events below.
        let empty = serde_json::to_string(&crate::ingest::extract::Extracted::default())
            .expect("extracted metadata serializes");
        sqlx::query(
            "UPDATE versions SET extracted = $1, extracted_digest = NULL, extracted_lines = NULL \
             WHERE artifact_id IN (SELECT id FROM artifacts WHERE tenant = $2)",
        )
        .bind(empty)
        .bind(tenant)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error("erasing extracted metadata", e))?;
        self.erase_extracted(&mut tx, tenant).await?;
        let (plain,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM packs WHERE tenant = $1 AND key_id IS NULL AND state = 'committed'",
        )
        .bind(tenant)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| db_error("counting plain packs", e))?;
        let keys_destroyed: Vec<String> = destroyed.into_iter().map(|(id,)| id).collect();
        if !keys_destroyed.is_empty() || packs > 0 {
            let record = crate::audit::change_record(
                tenant,
                "",
                format!("tenant-key:{}", keys_destroyed.join(",")),
                "tenant_key.destroyed",
                at,
            );
            self.append_audit_in(&mut tx, &record).await?;
            let artifacts: Vec<(String, String, String)> = sqlx::query_as(
                "SELECT id, project, latest_version FROM artifacts WHERE tenant = $1 AND deleted_at IS NULL ORDER BY id",
            )
            .bind(tenant)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| db_error("listing a tenant's artifacts", e))?;
            for (id, project, version) in artifacts {
                let scope = crate::domain::Scope::new(tenant.to_owned(), project);
                self.write_event(
                    &mut tx,
                    crate::domain::event::EventKind::ContentDestroyed,
                    &scope,
                    &id,
                    &version,
                    at.0,
                )
                .await?;
            }
        }
        tx.commit()
            .await
            .map_err(|e| db_error("committing a key destruction", e))?;
        Ok(ShredReport {
            keys_destroyed,
            packs_unreadable: packs,
            chunks_forgotten: chunks,
            plain_packs_remaining: plain as u64,
        })
    }

    /// Replaces the wrapping of tenant key `key_id` when it is still wrapped by
    /// `from_master` (compare-and-set: a concurrent rewrap or rotation wins). Whether it
    /// changed.
    pub async fn rewrap_tenant_key(
        &self,
        key_id: &str,
        from_master: &str,
        to: &WrappedTenantKey,
    ) -> Result<bool> {
        let _turn = self.write_turn().await;
        let changed = sqlx::query(
            "UPDATE tenant_keys SET master_key_id = $1, wrapped = $2 \
             WHERE key_id = $3 AND master_key_id = $4 AND state = 'active'",
        )
        .bind(&to.master_key_id)
        .bind(to.wrapped.clone())
        .bind(key_id)
        .bind(from_master)
        .execute(&self.pool)
        .await
        .map_err(|e| db_error("re-wrapping a tenant key", e))?;
        Ok(changed.rows_affected() == 1)
    }

    /// Every live tenant key, for re-wrapping under a new master key.
    pub async fn live_tenant_keys(&self) -> Result<Vec<TenantKeyRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM tenant_keys WHERE state = 'active' ORDER BY tenant"
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("listing tenant keys", e))?;
        rows.iter().map(key_of).collect()
    }

    /// How much of the tenant's committed content is sealed.
    pub async fn sealed_counts(&self, tenant: &str) -> Result<SealedCounts> {
        let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
            "SELECT CASE WHEN key_id IS NULL THEN 0 ELSE 1 END AS sealed, COUNT(*), \
             CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM packs \
             WHERE tenant = $1 AND state = 'committed' GROUP BY CASE WHEN key_id IS NULL THEN 0 ELSE 1 END",
        )
        .bind(tenant)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("counting packs", e))?;
        let mut counts = SealedCounts::default();
        for (sealed, packs, bytes) in rows {
            let (p, b) = if sealed == 1 {
                (&mut counts.sealed_packs, &mut counts.sealed_bytes)
            } else {
                (&mut counts.plain_packs, &mut counts.plain_bytes)
            };
            *p = packs as u64;
            *b = bytes as u64;
        }
        Ok(counts)
    }

    /// Inside a version's commit: fails when a sealed pack the upload wrote had its data key
    /// erased by a destruction of the tenant's keys while the upload ran. Returns whether
    /// any of the tenant's keys was ever destroyed, which is how a reused chunk that left the
    /// index is explained ([`Catalog::claim_reused`] checks those). On Postgres the shared
    /// row locks on the tenant's keys wait for a destruction in progress (which holds them
    /// until it commits, so the checks then see all it did); on SQLite the commit's earlier
    /// writes already hold the database.
    pub(super) async fn check_content_alive(
        &self,
        tx: &mut Tx,
        tenant: &str,
        packs: &[String],
    ) -> Result<bool> {
        let lock = if self.dialect == Dialect::Postgres {
            " FOR SHARE"
        } else {
            ""
        };
        let states: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT state FROM tenant_keys WHERE tenant = $1{lock}"
        )))
        .bind(tenant)
        .fetch_all(&mut **tx)
        .await
        .map_err(|e| db_error("checking tenant keys", e))?;
        // A tenant that never had a key has nothing sealed that a destruction could take away
        // (a destroyed key keeps its row): the common, unencrypted commit stops here.
        if states.is_empty() {
            return Ok(false);
        }
        if self.any_erased(tx, packs).await? {
            return Err(key_destroyed(tenant));
        }
        Ok(states.iter().any(|state| state == "destroyed"))
    }

    /// Whether any of `packs` is sealed with a data key that was erased (its tenant key
    /// destroyed).
    pub(super) async fn any_erased(&self, tx: &mut Tx, packs: &[String]) -> Result<bool> {
        for batch in packs.chunks(super::BATCH_ROWS) {
            let sql = format!(
                "SELECT COUNT(*) FROM packs WHERE pack_id IN ({}) AND key_id IS NOT NULL AND wrapped_key IS NULL",
                self.dialect.placeholders(1, super::in_list_len(batch.len()))
            );
            let mut query = sqlx::query_as::<_, (i64,)>(sqlx::AssertSqlSafe(sql));
            for pack in super::padded(batch) {
                query = query.bind(pack);
            }
            let (erased,) = query
                .fetch_one(&mut **tx)
                .await
                .map_err(|e| db_error("checking packs", e))?;
            if erased > 0 {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// The refusal of a commit whose content went with its tenant's destroyed keys.
pub(super) fn key_destroyed(tenant: &str) -> Error {
    Error::Aborted(format!(
        "tenant {tenant:?}'s encryption key was destroyed while this upload ran; nothing was committed"
    ))
}

//! Garbage collection's statements: the lease that keeps one collector running across
//! replicas, marks on unreferenced packs, the sweep that removes a marked pack from the
//! catalog (only while its mark stands, which an upload reusing it removes in its commit),
//! tombstones for the objects being deleted, chunk relocation for compaction, and run reports.

use super::{BATCH_ROWS, Catalog, Dialect, db_error};
use crate::domain::{Error, Result};
use crate::ingest::{ChunkId, PackEntry, PackId};
use sqlx::AssertSqlSafe;
use std::collections::HashMap;

use super::Tx;

/// (tenant, chunk id, pack id, offset, stored length, raw length, codec)
type ChunkRow = (String, Vec<u8>, String, i64, i64, i64, i64, Option<Vec<u8>>);

/// The lease every collector takes.
pub const GC_LEASE: &str = "gc";

/// Who holds a lease that was not free.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHeld {
    pub holder: String,
    pub expires_at: i64,
}

/// What became of a tombstoned object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tombstoned {
    Deleted,
    /// Its pack is in the catalog again (made anew from the same bytes): kept.
    Revived,
    /// The store refused; the tombstone stays for the next run.
    Failed(String),
}

/// One pack as the collector sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcPack {
    pub pack_id: String,
    pub tenant: String,
    pub size: u64,
    pub state: String,
    pub created_at: i64,
    /// Sealed packs have a data key.
    pub sealed: bool,
}

/// One chunk index row as the collector sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackUse {
    pub tenant: String,
    pub chunk_id: ChunkId,
    pub pack_id: String,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
    pub codec: i64,
    /// A delta chunk's base.
    pub base: Option<ChunkId>,
}

impl Catalog {
    /// Takes `name` for `holder` until `expires_at`, or extends it if `holder` has it.
    /// Returns who holds it when someone else does and it has not expired.
    pub async fn take_lease(
        &self,
        name: &str,
        holder: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<Option<LeaseHeld>> {
        let _turn = self.write_turn().await;
        let taken = sqlx::query(
            "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE leases.holder = excluded.holder OR leases.expires_at < $4",
        )
        .bind(name)
        .bind(holder)
        .bind(expires_at)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(|e| db_error("taking a lease", e))?
        .rows_affected();
        if taken == 1 {
            return Ok(None);
        }
        let held: Option<(String, i64)> =
            sqlx::query_as("SELECT holder, expires_at FROM leases WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| db_error("reading a lease", e))?;
        Ok(Some(held.map_or_else(
            || LeaseHeld {
                holder: String::new(),
                expires_at: 0,
            },
            |(holder, expires_at)| LeaseHeld { holder, expires_at },
        )))
    }

    /// Extends `name` for `holder` only while it still holds it: a holder whose lease ran out
    /// never takes it back (another may have run meanwhile). Returns whether it still holds it.
    pub async fn renew_lease(&self, name: &str, holder: &str, now: i64, expires_at: i64) -> Result<bool> {
        let _turn = self.write_turn().await;
        let renewed = sqlx::query(
            "UPDATE leases SET expires_at = $1 WHERE name = $2 AND holder = $3 AND expires_at >= $4",
        )
        .bind(expires_at)
        .bind(name)
        .bind(holder)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(|e| db_error("renewing a lease", e))?
        .rows_affected();
        Ok(renewed == 1)
    }

    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        let _turn = self.write_turn().await;
        sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await
            .map_err(|e| db_error("releasing a lease", e))?;
        Ok(())
    }

    /// Fails the transaction's work unless `holder` still holds `name`: a collector that lost
    /// its lease (paused past its expiry) must not act on what it saw before.
    async fn require_lease(&self, tx: &mut Tx, name: &str, holder: &str, now: i64) -> Result<()> {
        // On PostgreSQL the row is share-locked to the commit: a collector taking the lease
        // over waits for this transaction instead of starting beside it.
        let lock = if self.dialect == Dialect::Postgres {
            " FOR SHARE"
        } else {
            ""
        };
        let held: Option<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT holder FROM leases WHERE name = $1 AND holder = $2 AND expires_at >= $3{lock}"
        )))
        .bind(name)
        .bind(holder)
        .bind(now.max(crate::domain::now_micros()))
        .fetch_optional(&mut **tx)
        .await
        .map_err(|e| db_error("checking a lease", e))?;
        if held.is_none() {
            return Err(Error::Aborted(format!(
                "the {name} lease was lost; this run stops without changing anything more"
            )));
        }
        Ok(())
    }

    /// Every tenant that has packs (and so chunks), in order.
    pub async fn gc_tenants(&self) -> Result<Vec<String>> {
        sqlx::query_scalar("SELECT DISTINCT tenant FROM packs ORDER BY tenant")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error("listing tenants", e))
    }

    /// A tenant's packs with their state and whether they are sealed, in pack id order after
    /// `after`.
    pub async fn gc_packs(&self, tenant: &str, after: &str, limit: u32) -> Result<Vec<GcPack>> {
        let rows: Vec<(String, String, i64, String, i64, Option<String>)> = sqlx::query_as(
            "SELECT pack_id, tenant, size, state, created_at, key_id FROM packs \
             WHERE tenant = $1 AND pack_id > $2 ORDER BY pack_id LIMIT $3",
        )
        .bind(tenant)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("listing packs", e))?;
        Ok(rows
            .into_iter()
            .map(|(pack_id, tenant, size, state, created_at, key_id)| GcPack {
                pack_id,
                tenant,
                size: size.max(0) as u64,
                state,
                created_at,
                sealed: key_id.is_some(),
            })
            .collect())
    }

    /// A tenant's chunk index rows in chunk id order after `after`.
    pub async fn chunk_rows(
        &self,
        tenant: &str,
        after: Option<&ChunkId>,
        limit: u32,
    ) -> Result<Vec<PackUse>> {
        let after = after.map_or(Vec::new(), |id| id.0.to_vec());
        let rows: Vec<ChunkRow> = sqlx::query_as(
            "SELECT tenant, chunk_id, pack_id, pack_offset, stored_length, raw_length, codec, base_chunk_id \
             FROM chunks WHERE tenant = $1 AND chunk_id > $2 ORDER BY chunk_id LIMIT $3",
        )
        .bind(tenant)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("listing chunks", e))?;
        rows.into_iter()
            .map(|(tenant, chunk_id, pack_id, offset, stored, raw, codec, base)| {
                let chunk_id = <[u8; 32]>::try_from(chunk_id.as_slice())
                    .map(ChunkId)
                    .map_err(|_| Error::internal("a chunk id in the index is not 32 bytes"))?;
                let base = base
                    .map(|raw| {
                        <[u8; 32]>::try_from(raw.as_slice())
                            .map(ChunkId)
                            .map_err(|_| Error::internal("a base chunk id in the index is not 32 bytes"))
                    })
                    .transpose()?;
                Ok(PackUse {
                    tenant,
                    chunk_id,
                    pack_id,
                    offset: offset.max(0) as u64,
                    stored_len: stored.max(0) as u32,
                    raw_len: raw.max(0) as u32,
                    codec,
                    base,
                })
            })
            .collect()
    }

    /// A tenant's delta chunks and their bases, in chunk id order after `after`.
    pub async fn delta_bases(
        &self,
        tenant: &str,
        after: Option<&ChunkId>,
        limit: u32,
    ) -> Result<Vec<(ChunkId, ChunkId)>> {
        let after = after.map_or(Vec::new(), |id| id.0.to_vec());
        let rows: Vec<(Vec<u8>, Vec<u8>)> = sqlx::query_as(
            "SELECT chunk_id, base_chunk_id FROM chunks \
             WHERE tenant = $1 AND chunk_id > $2 AND base_chunk_id IS NOT NULL ORDER BY chunk_id LIMIT $3",
        )
        .bind(tenant)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("listing delta chunks", e))?;
        rows.into_iter()
            .map(|(chunk, base)| {
                Ok((
                    ChunkId::from_slice(&chunk)
                        .ok_or_else(|| Error::internal("a chunk id in the index is not 32 bytes"))?,
                    ChunkId::from_slice(&base)
                        .ok_or_else(|| Error::internal("a base chunk id in the index is not 32 bytes"))?,
                ))
            })
            .collect()
    }

    /// How many of a tenant's chunks are deltas, and the longest chain of bases any of them
    /// decodes through.
    pub async fn delta_depths(&self, tenant: &str) -> Result<(u64, u8)> {
        let (count, deepest): (i64, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*), MAX(delta_depth) FROM chunks WHERE tenant = $1 AND base_chunk_id IS NOT NULL",
        )
        .bind(tenant)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| db_error("counting delta chunks", e))?;
        Ok((count.max(0) as u64, deepest.unwrap_or(0).clamp(0, 255) as u8))
    }

    /// The marks standing now: pack id → when marked.
    pub async fn gc_marks(&self) -> Result<HashMap<String, i64>> {
        let rows: Vec<(String, i64)> = sqlx::query_as("SELECT pack_id, marked_at FROM gc_marks")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error("reading marks", e))?;
        Ok(rows.into_iter().collect())
    }

    /// Removes the marks of `packs`, if any.
    pub(super) async fn clear_marks(&self, tx: &mut Tx, packs: &[String]) -> Result<()> {
        for batch in packs.chunks(BATCH_ROWS) {
            let sql = format!(
                "DELETE FROM gc_marks WHERE pack_id IN ({})",
                self.dialect.placeholders(1, super::in_list_len(batch.len()))
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for pack in super::padded(batch) {
                query = query.bind(pack);
            }
            query
                .execute(&mut **tx)
                .await
                .map_err(|e| db_error("clearing marks", e))?;
        }
        Ok(())
    }

    /// Marks packs found unreferenced (keeping older marks' times) and clears the marks of
    /// packs found referenced again.
    pub async fn update_marks(
        &self,
        holder: &str,
        mark: &[String],
        clear: &[String],
        now: i64,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        // Write first (SQLite), then the fence.
        self.clear_marks(&mut tx, clear).await?;
        for batch in mark.chunks(BATCH_ROWS) {
            let sql = format!(
                "INSERT INTO gc_marks (pack_id, marked_at) VALUES {} ON CONFLICT (pack_id) DO NOTHING",
                self.dialect.value_rows(batch.len(), 2)
            );
            let mut query =
                sqlx::query(AssertSqlSafe(sql)).persistent(super::keep_prepared(batch.len(), BATCH_ROWS));
            for pack in batch {
                query = query.bind(pack).bind(now);
            }
            query
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error("marking packs", e))?;
        }
        self.require_lease(&mut tx, GC_LEASE, holder, now).await?;
        tx.commit().await.map_err(|e| db_error("committing", e))
    }

    /// Removes a marked pack from the catalog if its mark, made at or before `marked_by`,
    /// still stands and the pack is still in `state`; leaves a tombstone for its object.
    /// Returns false (and changes nothing) when the mark was cleared or the pack changed.
    pub async fn sweep_pack(&self, holder: &str, pack: &GcPack, marked_by: i64, now: i64) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        // The mark's row lock is what an upload reusing this pack's chunks waits on (or
        // takes first): of the two, exactly one goes ahead.
        let unmarked = sqlx::query("DELETE FROM gc_marks WHERE pack_id = $1 AND marked_at <= $2")
            .bind(&pack.pack_id)
            .bind(marked_by)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error("taking a mark", e))?
            .rows_affected();
        if unmarked == 0 {
            return Ok(false);
        }
        // A backup pins its packs after taking their marks, so a pin seen here is one
        // committed before this sweep took the mark.
        let pinned: Option<String> =
            sqlx::query_scalar("SELECT pack_id FROM backup_pins WHERE pack_id = $1 LIMIT 1")
                .bind(&pack.pack_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| db_error("checking pins", e))?;
        if pinned.is_some() {
            return Ok(false);
        }
        sqlx::query("DELETE FROM chunks WHERE pack_id = $1")
            .bind(&pack.pack_id)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error("removing a pack's chunks", e))?;
        let removed = sqlx::query("DELETE FROM packs WHERE pack_id = $1 AND state = $2")
            .bind(&pack.pack_id)
            .bind(&pack.state)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error("removing a pack", e))?
            .rows_affected();
        if removed == 0 {
            // Committed by a slow upload, or changed otherwise: keep it.
            return Ok(false);
        }
        let key = PackId::from_hex(&pack.pack_id)
            .map(|id| id.object_key())
            .ok_or_else(|| Error::internal(format!("pack id {:?} is malformed", pack.pack_id)))?;
        sqlx::query("DELETE FROM replication_queue WHERE object_key = $1")
            .bind(&key)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error("dropping a pack's copy orders", e))?;
        sqlx::query(
            "INSERT INTO pack_tombstones (pack_id, tenant, size, buried_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (pack_id) DO NOTHING",
        )
        .bind(&pack.pack_id)
        .bind(&pack.tenant)
        .bind(pack.size as i64)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error("burying a pack", e))?;
        self.require_lease(&mut tx, GC_LEASE, holder, now).await?;
        tx.commit().await.map_err(|e| db_error("committing", e))?;
        Ok(true)
    }

    /// Tombstones: (pack id, size, buried at).
    pub async fn tombstones(&self) -> Result<Vec<(String, u64, i64)>> {
        let rows: Vec<(String, i64, i64)> =
            sqlx::query_as("SELECT pack_id, size, buried_at FROM pack_tombstones ORDER BY pack_id")
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_error("reading tombstones", e))?;
        Ok(rows
            .into_iter()
            .map(|(pack, size, buried)| (pack, size.max(0) as u64, buried))
            .collect())
    }

    /// Deletes a tombstoned object with `delete`, holding the tombstone's row meanwhile so a
    /// pack of the same bytes cannot be staged and written until the delete is over. A
    /// tombstone whose pack is in the catalog again is dropped without deleting anything.
    /// The row goes once a delete came a grace period after the burial (`settled`).
    pub async fn delete_tombstoned<F, Fut>(
        &self,
        holder: &str,
        pack_id: &str,
        settled: bool,
        delete: F,
    ) -> Result<Tombstoned>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<(), String>>,
    {
        let key = PackId::from_hex(pack_id)
            .map(|id| id.object_key())
            .unwrap_or_default();
        let mut tx = self.begin_write().await?;
        let held = sqlx::query("UPDATE pack_tombstones SET deleted_at = deleted_at WHERE pack_id = $1")
            .bind(pack_id)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error("holding a tombstone", e))?
            .rows_affected();
        if held == 0 {
            return Ok(Tombstoned::Revived);
        }
        let revived: Option<String> = sqlx::query_scalar("SELECT pack_id FROM packs WHERE pack_id = $1")
            .bind(pack_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| db_error("reading a pack", e))?;
        self.require_lease(&mut tx, GC_LEASE, holder, crate::domain::now_micros())
            .await?;
        if revived.is_some() {
            sqlx::query("DELETE FROM pack_tombstones WHERE pack_id = $1")
                .bind(pack_id)
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error("removing a tombstone", e))?;
            tx.commit().await.map_err(|e| db_error("committing", e))?;
            return Ok(Tombstoned::Revived);
        }
        if let Err(error) = delete().await {
            return Ok(Tombstoned::Failed(error));
        }
        if settled {
            sqlx::query("DELETE FROM pack_tombstones WHERE pack_id = $1")
                .bind(pack_id)
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error("removing a tombstone", e))?;
        } else {
            sqlx::query("UPDATE pack_tombstones SET deleted_at = $1 WHERE pack_id = $2")
                .bind(crate::domain::now_micros())
                .bind(pack_id)
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error("updating a tombstone", e))?;
        }
        sqlx::query("DELETE FROM replication_queue WHERE object_key = $1")
            .bind(key)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error("dropping copy orders", e))?;
        tx.commit().await.map_err(|e| db_error("committing", e))?;
        Ok(Tombstoned::Deleted)
    }

    /// Points the chunks compaction copied at their new pack, and commits that pack, where the
    /// index still points into the pack each came from (nothing else moves them meanwhile:
    /// the lease). `moves` pairs each chunk's old pack with its place in the new one.
    pub async fn relocate_chunks(
        &self,
        holder: &str,
        tenant: &str,
        new_pack: &super::StagedPack,
        moves: &[(String, PackEntry)],
        now: i64,
    ) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        // Any state, this generation: compaction can produce the bytes of a pack that exists
        // already (and stays), but not of one collected since it was staged.
        let committed =
            sqlx::query("UPDATE packs SET state = 'committed' WHERE pack_id = $1 AND created_at = $2")
                .bind(&new_pack.pack_id)
                .bind(new_pack.generation)
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error("committing a pack", e))?
                .rows_affected();
        if committed == 0 {
            return Err(Error::Aborted(format!(
                "compacted pack {} was collected before it was committed; nothing was moved",
                new_pack.pack_id
            )));
        }
        // Packs are named by their bytes: the compacted pack can be one that became unneeded
        // earlier (the same chunks, in the same order) and carries a mark. Chunks moving into
        // it make it needed again, as an upload's commit makes its own packs.
        self.clear_marks(&mut tx, std::slice::from_ref(&new_pack.pack_id))
            .await?;
        let mut moved = 0;
        for (old_pack, entry) in moves {
            moved += sqlx::query(
                "UPDATE chunks SET pack_id = $1, pack_offset = $2, stored_length = $3, codec = $4 \
                 WHERE tenant = $5 AND chunk_id = $6 AND pack_id = $7",
            )
            .bind(&new_pack.pack_id)
            .bind(entry.offset as i64)
            .bind(i64::from(entry.stored_len))
            .bind(entry.codec as i64)
            .bind(tenant)
            .bind(entry.chunk_id.0.to_vec())
            .bind(old_pack)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error("moving a chunk", e))?
            .rows_affected();
        }
        self.require_lease(&mut tx, GC_LEASE, holder, now).await?;
        tx.commit().await.map_err(|e| db_error("committing", e))?;
        Ok(moved)
    }

    /// Keeps a collection run's report (JSON).
    pub async fn record_gc_run(
        &self,
        id: &str,
        holder: &str,
        dry_run: bool,
        started_at: i64,
        finished_at: i64,
        report: &str,
    ) -> Result<()> {
        let _turn = self.write_turn().await;
        sqlx::query(
            "INSERT INTO gc_runs (id, holder, dry_run, started_at, finished_at, report) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(holder)
        .bind(i64::from(dry_run))
        .bind(started_at)
        .bind(finished_at)
        .bind(report)
        .execute(&self.pool)
        .await
        .map_err(|e| db_error("recording a collection run", e))?;
        Ok(())
    }

    /// The newest collection reports (JSON), newest first.
    pub async fn gc_runs(&self, limit: u32) -> Result<Vec<String>> {
        sqlx::query_scalar("SELECT report FROM gc_runs ORDER BY started_at DESC, id DESC LIMIT $1")
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error("listing collection runs", e))
    }

    /// In an upload's commit: clears the marks of the version's own packs and claims its
    /// reused chunks ([`Catalog::claim_chunks`]); a missing one is blamed on `key_destroyed`
    /// when the tenant's keys were destroyed, on collection otherwise.
    pub(super) async fn claim_reused(
        &self,
        tx: &mut Tx,
        tenant: &str,
        reused: &[ChunkId],
        own_packs: &[String],
        key_destroyed: bool,
    ) -> Result<()> {
        self.clear_marks(tx, own_packs).await?;
        if self.claim_chunks(tx, tenant, reused).await? {
            return Ok(());
        }
        // Chunks leave the index by collection, or by a destruction of the tenant's keys
        // (which erases them for good).
        if key_destroyed {
            return Err(super::keys::key_destroyed(tenant));
        }
        Err(Error::Aborted(
            "content this upload reuses was garbage-collected while it ran; nothing was committed, upload again".into(),
        ))
    }

    /// Takes the marks of the packs `chunks` and the bases they decode through are in,
    /// then says whether every one of them is still indexed. The mark comes first: a sweep
    /// holding it finishes before the count, and a sweep that comes later finds no mark and
    /// keeps the pack.
    pub(super) async fn claim_chunks(&self, tx: &mut Tx, tenant: &str, chunks: &[ChunkId]) -> Result<bool> {
        let mut all = chunks.to_vec();
        all.extend(self.base_chains(tx, tenant, chunks).await?);
        all.sort_unstable();
        all.dedup();
        for batch in all.chunks(BATCH_ROWS) {
            let ids = self.dialect.placeholders(2, super::in_list_len(batch.len()));
            let tenant_param = self.dialect.placeholders(1, 1);
            let sql = format!(
                "DELETE FROM gc_marks WHERE pack_id IN \
                 (SELECT pack_id FROM chunks WHERE tenant = {tenant_param} AND chunk_id IN ({ids}))"
            );
            let mut query = sqlx::query(AssertSqlSafe(sql)).bind(tenant);
            for id in super::padded(batch) {
                query = query.bind(id.0.to_vec());
            }
            query
                .execute(&mut **tx)
                .await
                .map_err(|e| db_error("clearing marks", e))?;
            let sql =
                format!("SELECT COUNT(*) FROM chunks WHERE tenant = {tenant_param} AND chunk_id IN ({ids})");
            let mut query = sqlx::query_as::<_, (i64,)>(AssertSqlSafe(sql)).bind(tenant);
            for id in super::padded(batch) {
                query = query.bind(id.0.to_vec());
            }
            let (present,) = query
                .fetch_one(&mut **tx)
                .await
                .map_err(|e| db_error("checking chunks", e))?;
            if present as usize != batch.len() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Every base the delta chunks among `chunks` decode through, however deep (the
    /// chunks themselves not included unless one is another's base). A base missing from
    /// the index is still named: whoever asked finds it missing.
    pub(super) async fn base_chains(
        &self,
        tx: &mut Tx,
        tenant: &str,
        chunks: &[ChunkId],
    ) -> Result<Vec<ChunkId>> {
        self.base_chains_on(tx, tenant, chunks).await
    }

    /// [`Catalog::base_chains`] outside a transaction: what reading `chunks` needs besides.
    pub async fn chain_of(&self, tenant: &str, chunks: &[ChunkId]) -> Result<Vec<ChunkId>> {
        let mut connection = self.pool.acquire().await.map_err(|e| db_error("connecting", e))?;
        self.base_chains_on(&mut connection, tenant, chunks).await
    }

    async fn base_chains_on(
        &self,
        connection: &mut sqlx::AnyConnection,
        tenant: &str,
        chunks: &[ChunkId],
    ) -> Result<Vec<ChunkId>> {
        let mut bases = Vec::new();
        for batch in chunks.chunks(BATCH_ROWS) {
            // The batch's bases however deep: a recursive query both dialects run.
            let sql = format!(
                "WITH RECURSIVE chain(id) AS ( \
                   SELECT base_chunk_id FROM chunks \
                   WHERE tenant = {} AND chunk_id IN ({}) AND base_chunk_id IS NOT NULL \
                   UNION \
                   SELECT c.base_chunk_id FROM chunks c JOIN chain ON c.chunk_id = chain.id \
                   WHERE c.tenant = {} AND c.base_chunk_id IS NOT NULL \
                 ) SELECT id FROM chain",
                self.dialect.placeholders(1, 1),
                self.dialect.placeholders(2, super::in_list_len(batch.len())),
                self.dialect.placeholders(super::in_list_len(batch.len()) + 2, 1),
            );
            let mut query = sqlx::query_scalar::<_, Vec<u8>>(AssertSqlSafe(sql)).bind(tenant);
            for id in super::padded(batch) {
                query = query.bind(id.0.to_vec());
            }
            let rows = query
                .bind(tenant)
                .fetch_all(&mut *connection)
                .await
                .map_err(|e| db_error("following delta bases", e))?;
            for raw in rows {
                bases.push(
                    ChunkId::from_slice(&raw)
                        .ok_or_else(|| Error::internal("a base chunk id in the index is not 32 bytes"))?,
                );
            }
        }
        Ok(bases)
    }

    /// Whether this catalog is PostgreSQL (the collector reads a consistent snapshot there).
    pub fn is_postgres(&self) -> bool {
        self.dialect == Dialect::Postgres
    }
}

//! The audit trail's storage: entries appended to their tenant's chain (inside the
//! transaction of the change they record, when there is one), the chain heads, checkpoints.

use super::Tx;
use super::{Catalog, Dialect, db_error};
use crate::domain::audit::{AuditEntry, AuditRecord, Checkpoint, GENESIS, entry_hash};
use crate::domain::{Result, Timestamp};
use sqlx::Row;
use sqlx::any::AnyRow;

const ENTRY_COLUMNS: &str = "tenant, seq, at, actor, principal_kind, project, target, action, outcome, code, \
     request_id, peer, prev_hash, hash";

/// The advisory lock of one tenant's chain ("audt" and the tenant).
fn chain_lock(tenant: &str) -> i64 {
    let digest = blake3::hash(format!("audit-chain\0{tenant}").as_bytes());
    i64::from_le_bytes(digest.as_bytes()[..8].try_into().expect("eight bytes"))
}

fn entry_of(row: &AnyRow) -> Result<AuditEntry> {
    let get = |e: sqlx::Error| db_error("reading the audit trail", e);
    Ok(AuditEntry {
        seq: row.try_get("seq").map_err(get)?,
        record: AuditRecord {
            tenant: row.try_get("tenant").map_err(get)?,
            at: Timestamp(row.try_get("at").map_err(get)?),
            actor: row.try_get("actor").map_err(get)?,
            principal_kind: row.try_get("principal_kind").map_err(get)?,
            project: row.try_get("project").map_err(get)?,
            target: row.try_get("target").map_err(get)?,
            action: row.try_get("action").map_err(get)?,
            outcome: row.try_get("outcome").map_err(get)?,
            code: row.try_get("code").map_err(get)?,
            request_id: row.try_get("request_id").map_err(get)?,
            peer: row.try_get("peer").map_err(get)?,
        },
        prev_hash: row.try_get("prev_hash").map_err(get)?,
        hash: row.try_get("hash").map_err(get)?,
    })
}

/// Which entries of a tenant to read.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub target: Option<String>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
    /// Entries after this sequence number.
    pub after: i64,
    pub limit: u32,
}

impl Catalog {
    /// Appends `record` to its tenant's chain within `tx`: the entry commits with the change
    /// it records, or neither does.
    pub(super) async fn append_audit_in(&self, tx: &mut Tx, record: &AuditRecord) -> Result<i64> {
        let fail = |e| db_error("appending to the audit trail", e);
        if self.dialect == Dialect::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(chain_lock(&record.tenant))
                .execute(&mut **tx)
                .await
                .map_err(fail)?;
        }
        // A write first: on SQLite it takes the database's write lock before the head is read.
        sqlx::query(
            "INSERT INTO audit_heads (tenant, seq, hash) VALUES ($1, 0, $2) ON CONFLICT (tenant) DO NOTHING",
        )
        .bind(&record.tenant)
        .bind(GENESIS)
        .execute(&mut **tx)
        .await
        .map_err(fail)?;
        let (last, prev): (i64, String) =
            sqlx::query_as("SELECT seq, hash FROM audit_heads WHERE tenant = $1")
                .bind(&record.tenant)
                .fetch_one(&mut **tx)
                .await
                .map_err(fail)?;
        let seq = last + 1;
        let hash = entry_hash(seq, record, &prev);
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO audit_log ({ENTRY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        )))
        .bind(&record.tenant)
        .bind(seq)
        .bind(record.at.0)
        .bind(&record.actor)
        .bind(&record.principal_kind)
        .bind(&record.project)
        .bind(&record.target)
        .bind(&record.action)
        .bind(&record.outcome)
        .bind(&record.code)
        .bind(&record.request_id)
        .bind(&record.peer)
        .bind(&prev)
        .bind(&hash)
        .execute(&mut **tx)
        .await
        .map_err(fail)?;
        sqlx::query("UPDATE audit_heads SET seq = $1, hash = $2 WHERE tenant = $3")
            .bind(seq)
            .bind(&hash)
            .bind(&record.tenant)
            .execute(&mut **tx)
            .await
            .map_err(fail)?;
        Ok(seq)
    }

    /// Appends `record` on its own (a read, a search, a refusal).
    pub async fn append_audit(&self, record: &AuditRecord) -> Result<i64> {
        let mut tx = self.begin_write().await?;
        let seq = self.append_audit_in(&mut tx, record).await?;
        tx.commit()
            .await
            .map_err(|e| db_error("committing an audit entry", e))?;
        Ok(seq)
    }

    /// A tenant's entries in chain order, filtered.
    pub async fn audit_entries(&self, tenant: &str, query: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let mut sql = format!("SELECT {ENTRY_COLUMNS} FROM audit_log WHERE tenant = $1 AND seq > $2");
        let mut values: Vec<String> = Vec::new();
        for (column, value) in [
            ("target", &query.target),
            ("actor", &query.actor),
            ("action", &query.action),
        ] {
            if let Some(value) = value {
                values.push(value.clone());
                let n = values.len() + 2;
                if column == "target" {
                    // An artifact's entries: its own, and each version's (`<id>@<version>`).
                    sql.push_str(&format!(
                        " AND (target = ${n} OR substr(target, 1, length(${n}) + 1) = ${n} || '@')"
                    ));
                } else {
                    sql.push_str(&format!(" AND {column} = ${n}"));
                }
            }
        }
        let mut times = Vec::new();
        for (op, value) in [(">=", query.from), ("<", query.to)] {
            if let Some(value) = value {
                times.push(value.0);
                sql.push_str(&format!(" AND at {op} ${}", values.len() + times.len() + 2));
            }
        }
        sql.push_str(&format!(
            " ORDER BY seq LIMIT ${}",
            values.len() + times.len() + 3
        ));
        let mut statement = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .bind(query.after);
        for value in values {
            statement = statement.bind(value);
        }
        for time in times {
            statement = statement.bind(time);
        }
        let rows = statement
            .bind(i64::from(query.limit.max(1)))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error("reading the audit trail", e))?;
        rows.iter().map(entry_of).collect()
    }

    /// The chain's head: its last entry's number and hash.
    pub async fn audit_head(&self, tenant: &str) -> Result<Option<(i64, String)>> {
        sqlx::query_as("SELECT seq, hash FROM audit_heads WHERE tenant = $1")
            .bind(tenant)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error("reading the audit trail's head", e))
    }

    /// Every tenant with a chain, and its head.
    pub async fn audit_heads(&self) -> Result<Vec<(String, i64, String)>> {
        sqlx::query_as("SELECT tenant, seq, hash FROM audit_heads ORDER BY tenant")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error("reading the audit trail's heads", e))
    }

    pub async fn put_audit_checkpoint(&self, checkpoint: &Checkpoint) -> Result<()> {
        let _turn = self.write_turn().await;
        sqlx::query(
            "INSERT INTO audit_checkpoints (tenant, seq, hash, at, key_id, signature) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant, seq) DO NOTHING",
        )
        .bind(&checkpoint.tenant)
        .bind(checkpoint.seq)
        .bind(&checkpoint.hash)
        .bind(checkpoint.at.0)
        .bind(&checkpoint.key_id)
        .bind(&checkpoint.signature)
        .execute(&self.pool)
        .await
        .map_err(|e| db_error("storing an audit checkpoint", e))?;
        Ok(())
    }

    pub async fn audit_checkpoints(&self, tenant: &str) -> Result<Vec<Checkpoint>> {
        let rows: Vec<(String, i64, String, i64, String, String)> = sqlx::query_as(
            "SELECT tenant, seq, hash, at, key_id, signature FROM audit_checkpoints WHERE tenant = $1 ORDER BY seq",
        )
        .bind(tenant)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("reading audit checkpoints", e))?;
        Ok(rows
            .into_iter()
            .map(|(tenant, seq, hash, at, key_id, signature)| Checkpoint {
                tenant,
                seq,
                hash,
                at: Timestamp(at),
                key_id,
                signature,
            })
            .collect())
    }
}

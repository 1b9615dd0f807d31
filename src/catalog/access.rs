//! API keys and role bindings.

use super::{Catalog, db_error, is_unique_violation};
use crate::domain::access::{
    ApiKey, ArtifactGrant, GrantSubject, Permission, Role, RoleBinding, SubjectKind,
};
use crate::domain::{Error, Result, Timestamp};
use sqlx::Row;
use sqlx::any::AnyRow;

const KEY_COLUMNS: &str = "key_id, tenant, projects, role, name, created_by, created_at, expires_at, revoked_at, secret_hash, permissions";
const BINDING_COLUMNS: &str = "tenant, project, subject_kind, subject, role, granted_by, granted_at";

fn key_of(row: &AnyRow) -> Result<(ApiKey, String)> {
    let get = |e: sqlx::Error| db_error("reading an API key", e);
    let projects: String = row.try_get("projects").map_err(get)?;
    let role: String = row.try_get("role").map_err(get)?;
    let key = ApiKey {
        key_id: row.try_get("key_id").map_err(get)?,
        tenant: row.try_get("tenant").map_err(get)?,
        projects: serde_json::from_str(&projects)
            .map_err(|e| Error::internal(format!("an API key's projects are not a JSON list: {e}")))?,
        role: Role::parse("role", &role).map_err(|e| Error::internal(format!("stored API key: {e}")))?,
        name: row.try_get("name").map_err(get)?,
        created_by: row.try_get("created_by").map_err(get)?,
        created_at: Timestamp(row.try_get("created_at").map_err(get)?),
        expires_at: row
            .try_get::<Option<i64>, _>("expires_at")
            .map_err(get)?
            .map(Timestamp),
        revoked_at: row
            .try_get::<Option<i64>, _>("revoked_at")
            .map_err(get)?
            .map(Timestamp),
        permissions: row
            .try_get::<Option<String>, _>("permissions")
            .map_err(get)?
            .map(|listed| -> Result<Vec<Permission>> {
                let names: Vec<String> = serde_json::from_str(&listed).map_err(|e| {
                    Error::internal(format!("an API key's permissions are not a JSON list: {e}"))
                })?;
                names
                    .iter()
                    .map(|name| {
                        Permission::parse_listable("permissions", name)
                            .map_err(|e| Error::internal(format!("stored API key: {e}")))
                    })
                    .collect()
            })
            .transpose()?,
    };
    Ok((key, row.try_get("secret_hash").map_err(get)?))
}

fn binding_of(row: &AnyRow) -> Result<RoleBinding> {
    let get = |e: sqlx::Error| db_error("reading a role binding", e);
    let stored = |e: Error| Error::internal(format!("stored role binding: {e}"));
    Ok(RoleBinding {
        tenant: row.try_get("tenant").map_err(get)?,
        project: row.try_get("project").map_err(get)?,
        subject_kind: SubjectKind::parse(
            "subject_kind",
            &row.try_get::<String, _>("subject_kind").map_err(get)?,
        )
        .map_err(stored)?,
        subject: row.try_get("subject").map_err(get)?,
        role: Role::parse("role", &row.try_get::<String, _>("role").map_err(get)?).map_err(stored)?,
        granted_by: row.try_get("granted_by").map_err(get)?,
        granted_at: Timestamp(row.try_get("granted_at").map_err(get)?),
    })
}

impl Catalog {
    /// Stores a new key under the hash of its secret. With `bootstrap`, it is the one key
    /// made at the first start: `Ok(false)` when such a key exists already (another replica
    /// made it first), and nothing is stored.
    pub async fn insert_api_key(&self, key: &ApiKey, secret_hash: &str, bootstrap: bool) -> Result<bool> {
        let projects = serde_json::to_string(&key.projects).expect("strings serialise");
        let mut tx = self.begin_write().await?;
        let inserted = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO api_keys ({KEY_COLUMNS}, bootstrap) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        )))
        .bind(&key.key_id)
        .bind(&key.tenant)
        .bind(projects)
        .bind(key.role.as_str())
        .bind(&key.name)
        .bind(&key.created_by)
        .bind(key.created_at.0)
        .bind(key.expires_at.map(|t| t.0))
        .bind(key.revoked_at.map(|t| t.0))
        .bind(secret_hash)
        .bind(key.permissions.as_ref().map(|listed| {
            serde_json::to_string(&listed.iter().map(|p| p.as_str()).collect::<Vec<_>>())
                .expect("strings serialise")
        }))
        .bind(bootstrap.then_some(1i64))
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(error) if bootstrap && is_unique_violation(&error) => return Ok(false),
            Err(error) if is_unique_violation(&error) => {
                return Err(Error::AlreadyExists(format!(
                    "an API key with id {} exists already",
                    key.key_id
                )));
            }
            Err(error) => return Err(db_error("storing an API key", error)),
        }
        // A key made by a key needs its maker live when it is stored, not only when the
        // request began: a revocation committing meanwhile would miss it. Checked after the
        // insert: on SQLite the write has taken the database first (a read first could not
        // be followed by a write once another writer commits); on Postgres the shared lock
        // orders this against a revocation in progress.
        if let Some(maker) = key.created_by.strip_prefix("key:") {
            let lock = if self.dialect == super::Dialect::Postgres {
                " FOR SHARE"
            } else {
                ""
            };
            let live: Option<(Option<i64>,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT revoked_at FROM api_keys WHERE key_id = $1{lock}"
            )))
            .bind(maker)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| db_error("checking an API key's maker", e))?;
            if !matches!(live, Some((None,))) {
                return Err(Error::Unauthenticated(format!(
                    "the key {maker} making this key was revoked meanwhile"
                )));
            }
        }
        let record = crate::audit::change_record(
            &key.tenant,
            "",
            format!("key:{}", key.key_id),
            "api_key.created",
            key.created_at,
        );
        self.append_audit_in(&mut tx, &record).await?;
        tx.commit()
            .await
            .map_err(|e| db_error("committing an API key", e))?;
        Ok(true)
    }

    /// A key and the hash of its secret, whether or not it is still active.
    pub async fn api_key(&self, key_id: &str) -> Result<Option<(ApiKey, String)>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = $1"
        )))
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error("reading an API key", e))?;
        row.as_ref().map(key_of).transpose()
    }

    /// Whether any key exists at all.
    pub async fn has_api_keys(&self) -> Result<bool> {
        let row = sqlx::query("SELECT key_id FROM api_keys LIMIT 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error("reading API keys", e))?;
        Ok(row.is_some())
    }

    /// The keys of a tenant, newest first.
    pub async fn api_keys(&self, tenant: &str) -> Result<Vec<ApiKey>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant = $1 ORDER BY created_at DESC, key_id"
        )))
        .bind(tenant)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("listing API keys", e))?;
        rows.iter().map(|row| key_of(row).map(|(key, _)| key)).collect()
    }

    /// Revokes a key of `tenant` and, in the same transaction, every live key made by it or
    /// by a key it made: a leaked key cannot outlive its revocation through keys it minted.
    /// Returns the key and the ids of the keys revoked with it.
    pub async fn revoke_api_key(
        &self,
        tenant: &str,
        key_id: &str,
        at: Timestamp,
    ) -> Result<Option<(ApiKey, Vec<String>)>> {
        let mut tx = self.begin_write().await?;
        // The write first: on SQLite it takes the database before anything is read.
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = $1 WHERE tenant = $2 AND key_id = $3 AND revoked_at IS NULL",
        )
        .bind(at.0)
        .bind(tenant)
        .bind(key_id)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error("revoking an API key", e))?;
        if done.rows_affected() > 0 {
            let record =
                crate::audit::change_record(tenant, "", format!("key:{key_id}"), "api_key.revoked", at);
            self.append_audit_in(&mut tx, &record).await?;
        } else {
            let exists: Option<(String,)> =
                sqlx::query_as("SELECT key_id FROM api_keys WHERE tenant = $1 AND key_id = $2")
                    .bind(tenant)
                    .bind(key_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| db_error("reading an API key", e))?;
            if exists.is_none() {
                return Ok(None);
            }
        }
        let mut also = Vec::new();
        let mut makers = vec![format!("key:{key_id}")];
        while !makers.is_empty() {
            let mut revoked = Vec::new();
            for batch in makers.chunks(super::BATCH_ROWS) {
                let sql = format!(
                    "UPDATE api_keys SET revoked_at = {} WHERE revoked_at IS NULL AND created_by IN ({}) \
                     RETURNING key_id, tenant",
                    self.dialect.placeholders(1, 1),
                    self.dialect.placeholders(2, super::in_list_len(batch.len()))
                );
                let mut query = sqlx::query_as::<_, (String, String)>(sqlx::AssertSqlSafe(sql)).bind(at.0);
                for maker in super::padded(batch) {
                    query = query.bind(maker);
                }
                revoked.extend(
                    query
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(|e| db_error("revoking the keys a key made", e))?,
                );
            }
            makers.clear();
            for (child, child_tenant) in revoked {
                let record = crate::audit::change_record(
                    &child_tenant,
                    "",
                    format!("key:{child}"),
                    "api_key.revoked",
                    at,
                );
                self.append_audit_in(&mut tx, &record).await?;
                makers.push(format!("key:{child}"));
                also.push(child);
            }
        }
        tx.commit()
            .await
            .map_err(|e| db_error("committing a revocation", e))?;
        Ok(self
            .api_key(key_id)
            .await?
            .map(|(key, _)| key)
            .filter(|key| key.tenant == tenant)
            .map(|key| (key, also)))
    }

    /// Gives a subject a role in a scope, replacing the role it had there.
    pub async fn put_role_binding(&self, binding: &RoleBinding) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO role_bindings ({BINDING_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (tenant, project, subject_kind, subject) \
             DO UPDATE SET role = excluded.role, granted_by = excluded.granted_by, granted_at = excluded.granted_at"
        )))
        .bind(&binding.tenant)
        .bind(&binding.project)
        .bind(binding.subject_kind.as_str())
        .bind(&binding.subject)
        .bind(binding.role.as_str())
        .bind(&binding.granted_by)
        .bind(binding.granted_at.0)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error("granting a role", e))?;
        let record = crate::audit::change_record(
            &binding.tenant,
            &binding.project,
            format!(
                "{}:{}={}",
                binding.subject_kind.as_str(),
                binding.subject,
                binding.role
            ),
            "role.granted",
            binding.granted_at,
        );
        self.append_audit_in(&mut tx, &record).await?;
        tx.commit().await.map_err(|e| db_error("committing a grant", e))?;
        Ok(())
    }

    /// Takes a subject's role in a scope away; whether there was one.
    pub async fn delete_role_binding(
        &self,
        tenant: &str,
        project: &str,
        subject_kind: SubjectKind,
        subject: &str,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "DELETE FROM role_bindings WHERE tenant = $1 AND project = $2 AND subject_kind = $3 AND subject = $4",
        )
        .bind(tenant)
        .bind(project)
        .bind(subject_kind.as_str())
        .bind(subject)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error("revoking a role", e))?;
        let revoked = done.rows_affected() > 0;
        if revoked {
            let record = crate::audit::change_record(
                tenant,
                project,
                format!("{}:{subject}", subject_kind.as_str()),
                "role.revoked",
                Timestamp::now(),
            );
            self.append_audit_in(&mut tx, &record).await?;
        }
        tx.commit()
            .await
            .map_err(|e| db_error("committing a revocation", e))?;
        Ok(revoked)
    }

    /// The bindings of a tenant; with `project`, that project's and the tenant-wide ones.
    pub async fn role_bindings(&self, tenant: &str, project: Option<&str>) -> Result<Vec<RoleBinding>> {
        let rows = match project {
            Some(project) => sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {BINDING_COLUMNS} FROM role_bindings WHERE tenant = $1 AND project IN ('', $2) \
                 ORDER BY project, subject_kind, subject"
            )))
            .bind(tenant)
            .bind(project),
            None => sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {BINDING_COLUMNS} FROM role_bindings WHERE tenant = $1 \
                 ORDER BY project, subject_kind, subject"
            )))
            .bind(tenant),
        }
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("listing role bindings", e))?;
        rows.iter().map(binding_of).collect()
    }

    /// Every binding naming the user or one of the groups, in any tenant.
    pub async fn bindings_of(&self, user: &str, groups: &[String]) -> Result<Vec<RoleBinding>> {
        let groups = &groups[..groups.len().min(super::BATCH_ROWS)];
        let mut sql = format!(
            "SELECT {BINDING_COLUMNS} FROM role_bindings WHERE (subject_kind = 'user' AND subject = {})",
            self.dialect.placeholders(1, 1)
        );
        if !groups.is_empty() {
            sql.push_str(&format!(
                " OR (subject_kind = 'group' AND subject IN ({}))",
                self.dialect.placeholders(2, super::in_list_len(groups.len()))
            ));
        }
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(user);
        if !groups.is_empty() {
            for group in super::padded(groups) {
                query = query.bind(group);
            }
        }
        let rows = query
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error("reading role bindings", e))?;
        rows.iter().map(binding_of).collect()
    }
}

const GRANT_COLUMNS: &str = "subject_kind, subject, role, granted_by, granted_at";

fn artifact_grant_of(row: &AnyRow) -> Result<ArtifactGrant> {
    let get = |e: sqlx::Error| db_error("reading an artifact grant", e);
    let stored = |e: Error| Error::internal(format!("stored artifact grant: {e}"));
    Ok(ArtifactGrant {
        subject: GrantSubject::parse(
            "subject",
            &row.try_get::<String, _>("subject_kind").map_err(get)?,
            &row.try_get::<String, _>("subject").map_err(get)?,
        )
        .map_err(stored)?,
        role: Role::parse("role", &row.try_get::<String, _>("role").map_err(get)?).map_err(stored)?,
        granted_by: row.try_get("granted_by").map_err(get)?,
        granted_at: Timestamp(row.try_get("granted_at").map_err(get)?),
    })
}

impl Catalog {
    /// The grants on one artifact of `tenant`, by subject.
    pub async fn artifact_grants(&self, tenant: &str, artifact_id: &str) -> Result<Vec<ArtifactGrant>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {GRANT_COLUMNS} FROM artifact_grants WHERE tenant = $1 AND artifact_id = $2 \
             ORDER BY subject_kind, subject"
        )))
        .bind(tenant)
        .bind(artifact_id)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("reading artifact grants", e))?;
        rows.iter().map(artifact_grant_of).collect()
    }

    /// Replaces every grant on the artifact with `grants`, in one transaction with its audit
    /// entry.
    pub async fn set_artifact_grants(
        &self,
        scope: &crate::domain::Scope,
        artifact_id: &str,
        grants: &[ArtifactGrant],
        at: Timestamp,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM artifact_grants WHERE tenant = $1 AND artifact_id = $2")
            .bind(&scope.tenant)
            .bind(artifact_id)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error("replacing artifact grants", e))?;
        for grant in grants {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO artifact_grants (tenant, artifact_id, {GRANT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
            )))
            .bind(&scope.tenant)
            .bind(artifact_id)
            .bind(grant.subject.kind())
            .bind(grant.subject.name())
            .bind(grant.role.as_str())
            .bind(&grant.granted_by)
            .bind(grant.granted_at.0)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error("granting on an artifact", e))?;
        }
        let record = crate::audit::change_record(
            &scope.tenant,
            &scope.project,
            artifact_id.to_owned(),
            "artifact.permissions_set",
            at,
        );
        self.append_audit_in(&mut tx, &record).await?;
        tx.commit()
            .await
            .map_err(|e| db_error("committing artifact grants", e))?;
        Ok(())
    }
}

//! Managing access: API keys and role bindings, with the rule that nobody hands out more
//! than it holds where it hands it out.

use crate::catalog::Catalog;
use crate::domain::access::{
    ApiKey, ApiKeySecret, ArtifactGrant, GrantSubject, Permission, Principal, Role, RoleBinding, SubjectKind,
};
use crate::domain::names::validate_identifier;
use crate::domain::{Error, Result, Timestamp};

/// Longest user or group name a binding accepts, in bytes.
const MAX_SUBJECT_LEN: usize = 256;
/// Most grants one artifact carries.
const MAX_ARTIFACT_GRANTS: usize = 100;
/// Longest key label, in bytes.
const MAX_KEY_NAME_LEN: usize = 200;
/// Longest life a key may be given: ten years.
const MAX_KEY_TTL_SECONDS: u64 = 10 * 365 * 24 * 3600;

/// What a new key holds: everything of a role, or only the listed permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyHolds {
    Role(Role),
    Permissions(Vec<Permission>),
}

#[derive(Debug, Clone)]
pub struct AccessAdmin {
    catalog: Catalog,
}

/// Where a grant, revocation or listing applies: a tenant (`project` empty) or a project.
fn scope_permission(project: &str) -> (Permission, Option<&str>) {
    if project.is_empty() {
        (Permission::ManageTenant, None)
    } else {
        (Permission::ManageProject, Some(project))
    }
}

fn check_role(
    field: &'static str,
    role: Role,
    holder: &Principal,
    tenant: &str,
    project: Option<&str>,
) -> Result<()> {
    if !role.grantable() {
        return Err(Error::invalid(
            field,
            format!(
                "{role} cannot be given; the highest role to give is {}",
                Role::TenantAdmin
            ),
        ));
    }
    match holder.role_in(tenant, project) {
        Some(held) if held >= role => Ok(()),
        held => Err(Error::PermissionDenied(format!(
            "{} may not give {role}: it holds {} there",
            holder.subject,
            held.map_or("no role".to_owned(), |r| r.to_string())
        ))),
    }
}

fn validate_subject(subject: &str) -> Result<()> {
    if subject.trim().is_empty() {
        return Err(Error::invalid("subject", "must name a user or a group"));
    }
    if subject.len() > MAX_SUBJECT_LEN {
        return Err(Error::invalid(
            "subject",
            format!("is {} bytes long; the limit is {MAX_SUBJECT_LEN}", subject.len()),
        ));
    }
    if subject.chars().any(char::is_control) || subject != subject.trim() {
        return Err(Error::invalid(
            "subject",
            "must not hold control characters or start or end with whitespace",
        ));
    }
    Ok(())
}

impl AccessAdmin {
    pub fn new(catalog: Catalog) -> Self {
        Self { catalog }
    }

    /// Issues a key; the secret is returned here only.
    pub async fn create_key(
        &self,
        holder: &Principal,
        tenant: &str,
        projects: &[String],
        holds: KeyHolds,
        name: &str,
        ttl_seconds: u64,
    ) -> Result<(ApiKey, ApiKeySecret)> {
        let (role, permissions) = match holds {
            KeyHolds::Role(role) => (role, None),
            KeyHolds::Permissions(mut listed) => {
                listed.sort_by_key(|p| p.least_role());
                listed.dedup();
                let role = listed.iter().map(|p| p.least_role()).max().ok_or_else(|| {
                    Error::invalid("permissions", "list at least one permission, or give a role")
                })?;
                (role, Some(listed))
            }
        };
        if holder.permissions.is_some() {
            return Err(Error::PermissionDenied(format!(
                "{} lists its permissions; a key that does may not make keys",
                holder.subject
            )));
        }
        validate_identifier("tenant", tenant)?;
        for project in projects {
            validate_identifier("projects", project)?;
        }
        if name.len() > MAX_KEY_NAME_LEN || name.chars().any(char::is_control) {
            return Err(Error::invalid(
                "name",
                format!("must be at most {MAX_KEY_NAME_LEN} bytes without control characters"),
            ));
        }
        if ttl_seconds > MAX_KEY_TTL_SECONDS {
            return Err(Error::invalid(
                "ttl_seconds",
                format!("is more than ten years ({MAX_KEY_TTL_SECONDS} seconds); 0 means no expiry"),
            ));
        }
        check_role("role", role, holder, tenant, None)?;
        let secret = ApiKeySecret::generate();
        let now = Timestamp::now();
        let mut projects = projects.to_vec();
        projects.sort();
        projects.dedup();
        let key = ApiKey {
            key_id: secret.key_id().to_owned(),
            tenant: tenant.to_owned(),
            projects,
            role,
            name: name.to_owned(),
            created_by: holder.subject.clone(),
            created_at: now,
            // A key made by a key that expires ends no later than its maker.
            expires_at: match (
                (ttl_seconds > 0).then(|| Timestamp(now.0 + ttl_seconds as i64 * 1_000_000)),
                holder.expires_at,
            ) {
                (Some(own), Some(maker)) => Some(own.min(maker)),
                (own, maker) => own.or(maker),
            },
            revoked_at: None,
            permissions,
        };
        self.catalog.insert_api_key(&key, &secret.hash(), false).await?;
        Ok((key, secret))
    }

    /// The keys of a tenant; with `tenant` empty, the server admin keys.
    pub async fn list_keys(&self, tenant: &str, include_inactive: bool) -> Result<Vec<ApiKey>> {
        if !tenant.is_empty() {
            validate_identifier("tenant", tenant)?;
        }
        let now = Timestamp::now();
        Ok(self
            .catalog
            .api_keys(tenant)
            .await?
            .into_iter()
            .filter(|key| include_inactive || key.is_active(now))
            .collect())
    }

    /// Revokes a key of a tenant; with `tenant` empty, a server admin key.
    /// Revokes a key and every key made by it (see [`Catalog::revoke_api_key`]).
    pub async fn revoke_key(&self, tenant: &str, key_id: &str) -> Result<(ApiKey, Vec<String>)> {
        if !tenant.is_empty() {
            validate_identifier("tenant", tenant)?;
        }
        if key_id.is_empty() {
            return Err(Error::invalid("key_id", "must not be empty"));
        }
        self.catalog
            .revoke_api_key(tenant, key_id, Timestamp::now())
            .await?
            .ok_or_else(|| Error::not_found(format!("tenant {tenant} has no API key {key_id:?}")))
    }

    /// Gives `subject` `role` in the tenant or one project: the holder needs the right to
    /// manage that scope and at least the role it gives.
    pub async fn grant(
        &self,
        holder: &Principal,
        tenant: &str,
        project: &str,
        subject_kind: SubjectKind,
        subject: &str,
        role: Role,
    ) -> Result<RoleBinding> {
        self.check_scope(holder, tenant, project)?;
        validate_subject(subject)?;
        check_role(
            "role",
            role,
            holder,
            tenant,
            (!project.is_empty()).then_some(project),
        )?;
        self.check_replaceable(holder, tenant, project, subject_kind, subject)
            .await?;
        let binding = RoleBinding {
            tenant: tenant.to_owned(),
            project: project.to_owned(),
            subject_kind,
            subject: subject.to_owned(),
            role,
            granted_by: holder.subject.clone(),
            granted_at: Timestamp::now(),
        };
        self.catalog.put_role_binding(&binding).await?;
        Ok(binding)
    }

    pub async fn revoke(
        &self,
        holder: &Principal,
        tenant: &str,
        project: &str,
        subject_kind: SubjectKind,
        subject: &str,
    ) -> Result<bool> {
        self.check_scope(holder, tenant, project)?;
        validate_subject(subject)?;
        self.check_replaceable(holder, tenant, project, subject_kind, subject)
            .await?;
        self.catalog
            .delete_role_binding(tenant, project, subject_kind, subject)
            .await
    }

    pub async fn bindings(
        &self,
        holder: &Principal,
        tenant: &str,
        project: &str,
    ) -> Result<Vec<RoleBinding>> {
        self.check_scope(holder, tenant, project)?;
        self.catalog
            .role_bindings(tenant, (!project.is_empty()).then_some(project))
            .await
    }

    /// Nobody takes away or lowers a role above its own.
    async fn check_replaceable(
        &self,
        holder: &Principal,
        tenant: &str,
        project: &str,
        subject_kind: SubjectKind,
        subject: &str,
    ) -> Result<()> {
        let existing = self
            .catalog
            .role_bindings(tenant, (!project.is_empty()).then_some(project))
            .await?
            .into_iter()
            .find(|b| b.project == project && b.subject_kind == subject_kind && b.subject == subject);
        if let Some(existing) = existing {
            let held = holder.role_in(tenant, (!project.is_empty()).then_some(project));
            if held.is_none_or(|held| held < existing.role) {
                return Err(Error::PermissionDenied(format!(
                    "{} may not change the {} role of {subject}: it holds {} there",
                    holder.subject,
                    existing.role,
                    held.map_or("no role".to_owned(), |r| r.to_string())
                )));
            }
        }
        Ok(())
    }

    fn check_scope(&self, holder: &Principal, tenant: &str, project: &str) -> Result<()> {
        validate_identifier("tenant", tenant)?;
        if !project.is_empty() {
            validate_identifier("project", project)?;
        }
        let (permission, project) = scope_permission(project);
        holder.require(permission, tenant, project)
    }

    /// The artifact of `scope` (its home project) that permissions are about.
    async fn home_artifact(
        &self,
        tenant: &str,
        project: &str,
        artifact_id: &str,
    ) -> Result<crate::domain::Artifact> {
        crate::domain::ArtifactId::parse("artifact_id", artifact_id)?;
        let scope = crate::domain::Scope::new(tenant.to_owned(), project.to_owned());
        if let Some(artifact) = self.catalog.artifact_by_id(&scope, artifact_id, true).await? {
            return Ok(artifact);
        }
        match self.catalog.seen_artifact(&scope, artifact_id).await? {
            Some(linked) => Err(Error::FailedPrecondition(format!(
                "artifact {artifact_id} is only linked into {tenant}/{project}; its permissions are set in its own project, {}",
                linked.scope.project
            ))),
            None => Err(Error::not_found(format!(
                "artifact {artifact_id:?} not found in {tenant}/{project}"
            ))),
        }
    }

    /// The grants on one artifact; needs the right to manage its project.
    pub async fn artifact_permissions(
        &self,
        holder: &Principal,
        tenant: &str,
        project: &str,
        artifact_id: &str,
    ) -> Result<Vec<ArtifactGrant>> {
        self.check_scope(holder, tenant, project)?;
        let artifact = self.home_artifact(tenant, project, artifact_id).await?;
        self.catalog.artifact_grants(tenant, artifact.id.as_str()).await
    }

    /// Replaces the grants on one artifact with `grants`: users, groups and other projects
    /// of the tenant, each at most once, a project never more than viewer.
    pub async fn set_artifact_permissions(
        &self,
        holder: &Principal,
        tenant: &str,
        project: &str,
        artifact_id: &str,
        grants: Vec<(GrantSubject, Role)>,
    ) -> Result<Vec<ArtifactGrant>> {
        self.check_scope(holder, tenant, project)?;
        if grants.len() > MAX_ARTIFACT_GRANTS {
            return Err(Error::invalid(
                "grants",
                format!(
                    "at most {MAX_ARTIFACT_GRANTS} grants per artifact; {} were sent",
                    grants.len()
                ),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (subject, role) in &grants {
            ArtifactGrant::check_role("grants.role", subject, *role)?;
            if !seen.insert(subject.clone()) {
                return Err(Error::invalid(
                    "grants.subject",
                    format!("{} {:?} is named twice", subject.kind(), subject.name()),
                ));
            }
            if *subject == GrantSubject::Project(project.to_owned()) {
                return Err(Error::invalid(
                    "grants.subject",
                    format!("project {project:?} is the artifact's own; its roles there apply already"),
                ));
            }
        }
        let artifact = self.home_artifact(tenant, project, artifact_id).await?;
        let at = Timestamp::now();
        let grants: Vec<ArtifactGrant> = grants
            .into_iter()
            .map(|(subject, role)| ArtifactGrant {
                subject,
                role,
                granted_by: holder.subject.clone(),
                granted_at: at,
            })
            .collect();
        self.catalog
            .set_artifact_grants(&artifact.scope, artifact.id.as_str(), &grants, at)
            .await?;
        Ok(grants)
    }
}

//! `artifactd.v1.AccessService`: who the caller is, API keys, role bindings.

use super::caller;
use super::convert::timestamp;
use crate::app::{AccessAdmin, KeyHolds};
use crate::domain::access::{
    ApiKey, ArtifactGrant, GrantSubject, Permission, PrincipalKind, Role, RoleBinding, SubjectKind,
};
use crate::domain::{Error, Result};
use crate::proto::access_service_server::AccessService;
use crate::proto::{self};
use tonic::{Request, Response, Status};

pub struct AccessApi {
    admin: AccessAdmin,
}

impl AccessApi {
    pub fn new(admin: AccessAdmin) -> Self {
        Self { admin }
    }
}

pub fn role_to_proto(role: Role) -> i32 {
    (match role {
        Role::Viewer => proto::Role::Viewer,
        Role::Contributor => proto::Role::Contributor,
        Role::Maintainer => proto::Role::Maintainer,
        Role::Admin => proto::Role::Admin,
        Role::TenantAdmin => proto::Role::TenantAdmin,
        Role::ServerAdmin => proto::Role::ServerAdmin,
    }) as i32
}

fn role_from_proto(field: &'static str, value: i32) -> Result<Role> {
    match proto::Role::try_from(value) {
        Ok(proto::Role::Viewer) => Ok(Role::Viewer),
        Ok(proto::Role::Contributor) => Ok(Role::Contributor),
        Ok(proto::Role::Maintainer) => Ok(Role::Maintainer),
        Ok(proto::Role::Admin) => Ok(Role::Admin),
        Ok(proto::Role::TenantAdmin) => Ok(Role::TenantAdmin),
        Ok(proto::Role::ServerAdmin) => Ok(Role::ServerAdmin),
        Ok(proto::Role::Unspecified) => Err(Error::invalid(
            field,
            "name a role (ROLE_VIEWER to ROLE_TENANT_ADMIN)",
        )),
        Err(_) => Err(Error::invalid(field, format!("{value} is not a role"))),
    }
}

fn permission_from_proto(value: i32) -> Result<Permission> {
    match proto::Permission::try_from(value) {
        Ok(proto::Permission::Read) => Ok(Permission::Read),
        Ok(proto::Permission::Write) => Ok(Permission::Write),
        Ok(proto::Permission::Maintain) => Ok(Permission::Maintain),
        _ => Err(Error::invalid(
            "permissions",
            format!(
                "{value} is not a permission a key may list (PERMISSION_READ, PERMISSION_WRITE, PERMISSION_MAINTAIN)"
            ),
        )),
    }
}

fn permission_to_proto(permission: Permission) -> i32 {
    (match permission {
        Permission::Read => proto::Permission::Read,
        Permission::Write => proto::Permission::Write,
        Permission::Maintain => proto::Permission::Maintain,
        _ => proto::Permission::Unspecified,
    }) as i32
}

fn subject_kind_from_proto(value: i32) -> Result<SubjectKind> {
    match proto::SubjectKind::try_from(value) {
        Ok(proto::SubjectKind::User) => Ok(SubjectKind::User),
        Ok(proto::SubjectKind::Group) => Ok(SubjectKind::Group),
        _ => Err(Error::invalid(
            "subject_kind",
            "name SUBJECT_KIND_USER or SUBJECT_KIND_GROUP",
        )),
    }
}

fn grant_subject_from_proto(grant: &proto::ArtifactGrant) -> Result<GrantSubject> {
    let kind = match proto::SubjectKind::try_from(grant.subject_kind) {
        Ok(proto::SubjectKind::User) => "user",
        Ok(proto::SubjectKind::Group) => "group",
        Ok(proto::SubjectKind::Project) => "project",
        _ => {
            return Err(Error::invalid(
                "grants.subject_kind",
                "name SUBJECT_KIND_USER, SUBJECT_KIND_GROUP or SUBJECT_KIND_PROJECT",
            ));
        }
    };
    GrantSubject::parse("grants.subject", kind, &grant.subject)
}

fn artifact_grant_to_proto(grant: ArtifactGrant) -> proto::ArtifactGrant {
    proto::ArtifactGrant {
        subject_kind: (match grant.subject {
            GrantSubject::User(_) => proto::SubjectKind::User,
            GrantSubject::Group(_) => proto::SubjectKind::Group,
            GrantSubject::Project(_) => proto::SubjectKind::Project,
        }) as i32,
        subject: grant.subject.name().to_owned(),
        role: role_to_proto(grant.role),
        granted_by: grant.granted_by,
        granted_at: Some(timestamp(grant.granted_at)),
    }
}

fn subject_kind_to_proto(kind: SubjectKind) -> i32 {
    (match kind {
        SubjectKind::User => proto::SubjectKind::User,
        SubjectKind::Group => proto::SubjectKind::Group,
    }) as i32
}

fn key_to_proto(key: ApiKey) -> proto::ApiKey {
    proto::ApiKey {
        key_id: key.key_id,
        tenant: key.tenant,
        projects: key.projects,
        role: role_to_proto(key.role),
        name: key.name,
        created_by: key.created_by,
        created_at: Some(timestamp(key.created_at)),
        expires_at: key.expires_at.map(timestamp),
        revoked_at: key.revoked_at.map(timestamp),
        permissions: key
            .permissions
            .unwrap_or_default()
            .into_iter()
            .map(permission_to_proto)
            .collect(),
    }
}

fn binding_to_proto(binding: RoleBinding) -> proto::RoleBinding {
    proto::RoleBinding {
        tenant: binding.tenant,
        project: binding.project,
        subject_kind: subject_kind_to_proto(binding.subject_kind),
        subject: binding.subject,
        role: role_to_proto(binding.role),
        granted_by: binding.granted_by,
        granted_at: Some(timestamp(binding.granted_at)),
    }
}

/// A tenant's keys need its tenant admin; the server admin keys (tenant empty), the server
/// admin, so that a leaked one can be revoked like any other.
fn authorize_keys(caller: &crate::identity::Caller, tenant: &str) -> Result<()> {
    if tenant.is_empty() {
        caller.authorize_server()
    } else {
        caller.authorize_in(tenant, None)
    }
}

#[tonic::async_trait]
impl AccessService for AccessApi {
    async fn who_am_i(
        &self,
        request: Request<proto::WhoAmIRequest>,
    ) -> Result<Response<proto::WhoAmIResponse>, Status> {
        let caller = caller(&request)?;
        let principal = &caller.principal;
        Ok(Response::new(proto::WhoAmIResponse {
            subject: principal.subject.clone(),
            kind: (match principal.kind {
                PrincipalKind::ApiKey => proto::PrincipalKind::ApiKey,
                PrincipalKind::Token => proto::PrincipalKind::Token,
                PrincipalKind::Proxy => proto::PrincipalKind::Proxy,
            }) as i32,
            groups: principal.groups.clone(),
            roles: principal
                .grants
                .iter()
                .map(|grant| proto::RoleBinding {
                    tenant: grant.tenant.clone().unwrap_or_default(),
                    project: grant.project.clone().unwrap_or_default(),
                    subject_kind: subject_kind_to_proto(SubjectKind::User),
                    subject: principal.subject.clone(),
                    role: role_to_proto(grant.role),
                    granted_by: String::new(),
                    granted_at: None,
                })
                .collect(),
        }))
    }

    async fn create_api_key(
        &self,
        request: Request<proto::CreateApiKeyRequest>,
    ) -> Result<Response<proto::CreateApiKeyResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        super::request_layer::record_scope(&request.tenant, "");
        caller.authorize_in(&request.tenant, None)?;
        let holds = match (request.role, request.permissions.is_empty()) {
            (_, true) => KeyHolds::Role(role_from_proto("role", request.role)?),
            (0, false) => KeyHolds::Permissions(
                request
                    .permissions
                    .iter()
                    .map(|value| permission_from_proto(*value))
                    .collect::<Result<_>>()?,
            ),
            (_, false) => {
                return Err(Error::invalid(
                    "permissions",
                    "give either a role or a list of permissions, not both",
                )
                .into());
            }
        };
        let (key, secret) = self
            .admin
            .create_key(
                &caller.principal,
                &request.tenant,
                &request.projects,
                holds,
                &request.name,
                request.ttl_seconds,
            )
            .await?;
        Ok(Response::new(proto::CreateApiKeyResponse {
            api_key: Some(key_to_proto(key)),
            secret: secret.expose().to_owned(),
        }))
    }

    async fn list_api_keys(
        &self,
        request: Request<proto::ListApiKeysRequest>,
    ) -> Result<Response<proto::ListApiKeysResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        super::request_layer::record_scope(&request.tenant, "");
        authorize_keys(&caller, &request.tenant)?;
        let keys = self
            .admin
            .list_keys(&request.tenant, request.include_inactive)
            .await?;
        Ok(Response::new(proto::ListApiKeysResponse {
            api_keys: keys.into_iter().map(key_to_proto).collect(),
        }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<proto::RevokeApiKeyRequest>,
    ) -> Result<Response<proto::RevokeApiKeyResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        super::request_layer::record_scope(&request.tenant, "");
        authorize_keys(&caller, &request.tenant)?;
        let (key, also_revoked) = self.admin.revoke_key(&request.tenant, &request.key_id).await?;
        Ok(Response::new(proto::RevokeApiKeyResponse {
            api_key: Some(key_to_proto(key)),
            also_revoked,
        }))
    }

    async fn grant_role(
        &self,
        request: Request<proto::GrantRoleRequest>,
    ) -> Result<Response<proto::GrantRoleResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        super::request_layer::record_scope(&request.tenant, &request.project);
        let kind = subject_kind_from_proto(request.subject_kind)?;
        let role = role_from_proto("role", request.role)?;
        let binding = self
            .admin
            .grant(
                &caller.principal,
                &request.tenant,
                &request.project,
                kind,
                &request.subject,
                role,
            )
            .await?;
        Ok(Response::new(proto::GrantRoleResponse {
            binding: Some(binding_to_proto(binding)),
        }))
    }

    async fn revoke_role(
        &self,
        request: Request<proto::RevokeRoleRequest>,
    ) -> Result<Response<proto::RevokeRoleResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        super::request_layer::record_scope(&request.tenant, &request.project);
        let kind = subject_kind_from_proto(request.subject_kind)?;
        let revoked = self
            .admin
            .revoke(
                &caller.principal,
                &request.tenant,
                &request.project,
                kind,
                &request.subject,
            )
            .await?;
        Ok(Response::new(proto::RevokeRoleResponse { revoked }))
    }

    async fn list_role_bindings(
        &self,
        request: Request<proto::ListRoleBindingsRequest>,
    ) -> Result<Response<proto::ListRoleBindingsResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        super::request_layer::record_scope(&request.tenant, &request.project);
        let bindings = self
            .admin
            .bindings(&caller.principal, &request.tenant, &request.project)
            .await?;
        Ok(Response::new(proto::ListRoleBindingsResponse {
            bindings: bindings.into_iter().map(binding_to_proto).collect(),
        }))
    }

    async fn set_artifact_permissions(
        &self,
        request: Request<proto::SetArtifactPermissionsRequest>,
    ) -> Result<Response<proto::SetArtifactPermissionsResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        super::request_layer::record_scope(&request.tenant, &request.project);
        caller.target(&request.artifact_id);
        let grants = request
            .grants
            .iter()
            .map(|grant| {
                Ok((
                    grant_subject_from_proto(grant)?,
                    role_from_proto("grants.role", grant.role)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let grants = self
            .admin
            .set_artifact_permissions(
                &caller.principal,
                &request.tenant,
                &request.project,
                &request.artifact_id,
                grants,
            )
            .await?;
        Ok(Response::new(proto::SetArtifactPermissionsResponse {
            grants: grants.into_iter().map(artifact_grant_to_proto).collect(),
        }))
    }

    async fn get_artifact_permissions(
        &self,
        request: Request<proto::GetArtifactPermissionsRequest>,
    ) -> Result<Response<proto::GetArtifactPermissionsResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        super::request_layer::record_scope(&request.tenant, &request.project);
        caller.target(&request.artifact_id);
        let grants = self
            .admin
            .artifact_permissions(
                &caller.principal,
                &request.tenant,
                &request.project,
                &request.artifact_id,
            )
            .await?;
        Ok(Response::new(proto::GetArtifactPermissionsResponse {
            grants: grants.into_iter().map(artifact_grant_to_proto).collect(),
        }))
    }
}

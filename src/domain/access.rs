//! Who a caller is and what it may do: roles and the permissions they hold, principals,
//! role bindings, API keys, and the one decision for a scope.

use super::names::quoted;
use super::{Error, Result, Timestamp};
use std::fmt;

/// Roles, each holding every permission of the one before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Viewer,
    Contributor,
    Maintainer,
    Admin,
    TenantAdmin,
    ServerAdmin,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Self::Viewer,
        Self::Contributor,
        Self::Maintainer,
        Self::Admin,
        Self::TenantAdmin,
        Self::ServerAdmin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Contributor => "contributor",
            Self::Maintainer => "maintainer",
            Self::Admin => "admin",
            Self::TenantAdmin => "tenant_admin",
            Self::ServerAdmin => "server_admin",
        }
    }

    /// The role stored under `text` in the catalog.
    pub fn parse(field: &'static str, text: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| Error::invalid(field, format!("{} is not a role", quoted(text))))
    }

    pub fn grants(self, permission: Permission) -> bool {
        self >= permission.least_role()
    }

    /// Whether a role binding or an API key may carry this role: the server admin role is
    /// held only by keys made at start-up.
    pub fn grantable(self) -> bool {
        self <= Self::TenantAdmin
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an action needs. Each permission belongs to the least role that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Read, download, list, search, watch, resolve.
    Read,
    /// Create artifacts and versions, label them, send versions to review, record runs.
    Write,
    /// Approve and archive versions, aliases, delete and restore, links.
    Maintain,
    /// The project's role bindings.
    ManageProject,
    /// The tenant's API keys and tenant-wide role bindings.
    ManageTenant,
    /// The server's own operations: fallback store, server status.
    Operate,
}

impl Permission {
    pub fn least_role(self) -> Role {
        match self {
            Self::Read => Role::Viewer,
            Self::Write => Role::Contributor,
            Self::Maintain => Role::Maintainer,
            Self::ManageProject => Role::Admin,
            Self::ManageTenant => Role::TenantAdmin,
            Self::Operate => Role::ServerAdmin,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Maintain => "maintain",
            Self::ManageProject => "manage the project",
            Self::ManageTenant => "manage the tenant",
            Self::Operate => "operate the server",
        }
    }

    /// The permissions an API key may list instead of a role: those about content. Managing
    /// access is never listed, so a listed key cannot hand out more than its list.
    pub const LISTABLE: [Permission; 3] = [Permission::Read, Permission::Write, Permission::Maintain];

    pub fn parse_listable(field: &'static str, text: &str) -> Result<Self> {
        Self::LISTABLE
            .into_iter()
            .find(|permission| permission.as_str() == text)
            .ok_or_else(|| {
                Error::invalid(
                    field,
                    format!(
                        "{} is not a permission a key may list (read, write, maintain)",
                        quoted(text)
                    ),
                )
            })
    }
}

/// How a caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    ApiKey,
    Token,
    Proxy,
}

impl PrincipalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ApiKey => "api_key",
            Self::Token => "token",
            Self::Proxy => "proxy",
        }
    }
}

/// A role somewhere: in every tenant (`tenant` is `None`), in every project of a tenant
/// (`project` is `None`), or in one project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub tenant: Option<String>,
    pub project: Option<String>,
    pub role: Role,
}

impl Grant {
    fn covers_tenant(&self, tenant: &str) -> bool {
        self.tenant.as_deref().is_none_or(|t| t == tenant)
    }

    fn covers(&self, tenant: &str, project: Option<&str>) -> bool {
        self.covers_tenant(tenant)
            && match (&self.project, project) {
                (None, _) => true,
                (Some(own), Some(wanted)) => own == wanted,
                // A project-limited role says nothing about the tenant as a whole.
                (Some(_), None) => false,
            }
    }
}

/// Who is calling, once proven, with every role that reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// "key:<id>" for an API key; the user otherwise. Recorded as the actor of every change.
    pub subject: String,
    pub kind: PrincipalKind,
    pub groups: Vec<String>,
    pub grants: Vec<Grant>,
    /// When the credential stops being accepted, if it does: what it makes ends no later.
    pub expires_at: Option<Timestamp>,
    /// When the credential lists its permissions: the only ones its roles are good for.
    pub permissions: Option<Vec<Permission>>,
}

/// What the caller may do with one scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// The caller sees the scope; its roles there are too low.
    Deny {
        held: Role,
    },
    /// The caller has no role that reaches the scope: to it, the scope holds nothing.
    Hide,
}

impl Principal {
    /// The highest role the caller holds in `tenant` (and `project`, when named).
    pub fn role_in(&self, tenant: &str, project: Option<&str>) -> Option<Role> {
        self.grants
            .iter()
            .filter(|grant| grant.covers(tenant, project))
            .map(|grant| grant.role)
            .max()
    }

    pub fn decide(&self, permission: Permission, tenant: &str, project: Option<&str>) -> Decision {
        let decision = self.decide_by_roles(permission, tenant, project);
        self.limit(decision, permission, || self.role_in(tenant, project))
    }

    /// A credential that lists its permissions turns an allowance outside the list into a
    /// refusal (the caller still sees the scope).
    fn limit(
        &self,
        decision: Decision,
        permission: Permission,
        held: impl FnOnce() -> Option<Role>,
    ) -> Decision {
        match (&self.permissions, decision) {
            (Some(listed), Decision::Allow) if !listed.contains(&permission) => Decision::Deny {
                held: held().unwrap_or(Role::Viewer),
            },
            _ => decision,
        }
    }

    fn decide_by_roles(&self, permission: Permission, tenant: &str, project: Option<&str>) -> Decision {
        if permission == Permission::Operate {
            let server_wide = self
                .grants
                .iter()
                .any(|g| g.tenant.is_none() && g.project.is_none() && g.role == Role::ServerAdmin);
            return match self.grants.iter().map(|g| g.role).max() {
                _ if server_wide => Decision::Allow,
                Some(held) => Decision::Deny { held },
                None => Decision::Hide,
            };
        }
        match self.role_in(tenant, project) {
            Some(role) if role.grants(permission) => Decision::Allow,
            Some(held) => Decision::Deny { held },
            // The tenant as a whole is no secret to a member of one of its projects.
            None if project.is_none() => self
                .grants
                .iter()
                .filter(|grant| grant.covers_tenant(tenant))
                .map(|grant| grant.role)
                .max()
                .map_or(Decision::Hide, |held| Decision::Deny { held }),
            None => Decision::Hide,
        }
    }

    /// `Ok` when the caller may; otherwise the error that says so without revealing what a
    /// hidden scope holds.
    pub fn require(&self, permission: Permission, tenant: &str, project: Option<&str>) -> Result<()> {
        self.enforce(
            self.decide(permission, tenant, project),
            permission,
            tenant,
            project,
        )
    }

    /// The highest role that grants on one artifact of `tenant` give the caller.
    pub fn role_by_grants(&self, tenant: &str, grants: &[ArtifactGrant]) -> Option<Role> {
        grants
            .iter()
            .filter(|grant| match &grant.subject {
                GrantSubject::User(user) => *user == self.subject,
                GrantSubject::Group(group) => self.groups.contains(group),
                GrantSubject::Project(project) => self.role_in(tenant, Some(project)).is_some(),
            })
            .map(|grant| grant.role)
            .max()
    }

    /// [`Principal::decide`] for a call about one artifact of `project`: where the caller's
    /// roles in the project do not allow it, a grant on the artifact may.
    pub fn decide_on_artifact(
        &self,
        permission: Permission,
        tenant: &str,
        project: &str,
        grants: &[ArtifactGrant],
    ) -> Decision {
        let by_scope = self.decide_by_roles(permission, tenant, Some(project));
        let decision = match (by_scope, self.role_by_grants(tenant, grants)) {
            (Decision::Allow, _) => Decision::Allow,
            (_, Some(role)) if role.grants(permission) => Decision::Allow,
            (Decision::Deny { held }, Some(granted)) => Decision::Deny {
                held: held.max(granted),
            },
            (Decision::Hide, Some(granted)) => Decision::Deny { held: granted },
            (decision, None) => decision,
        };
        self.limit(decision, permission, || {
            self.role_in(tenant, Some(project))
                .max(self.role_by_grants(tenant, grants))
        })
    }

    /// [`Principal::require`] for a call about one artifact (see
    /// [`Principal::decide_on_artifact`]).
    pub fn require_on_artifact(
        &self,
        permission: Permission,
        tenant: &str,
        project: &str,
        grants: &[ArtifactGrant],
    ) -> Result<()> {
        self.enforce(
            self.decide_on_artifact(permission, tenant, project, grants),
            permission,
            tenant,
            Some(project),
        )
    }

    fn enforce(
        &self,
        decision: Decision,
        permission: Permission,
        tenant: &str,
        project: Option<&str>,
    ) -> Result<()> {
        let place = match project {
            Some(project) => format!("{tenant}/{project}"),
            None => format!("tenant {tenant}"),
        };
        match decision {
            Decision::Allow => Ok(()),
            Decision::Deny { .. }
                if self
                    .permissions
                    .as_ref()
                    .is_some_and(|listed| !listed.contains(&permission)) =>
            {
                let listed: Vec<&str> = self.permissions.iter().flatten().map(|p| p.as_str()).collect();
                Err(Error::PermissionDenied(format!(
                    "{} may not {} in {place}: its key lists only {}",
                    self.subject,
                    permission.as_str(),
                    listed.join(", ")
                )))
            }
            Decision::Deny { held } => Err(Error::PermissionDenied(format!(
                "{} may not {} in {place}: that needs the {} role, it holds {held}",
                self.subject,
                permission.as_str(),
                permission.least_role(),
            ))),
            Decision::Hide if permission == Permission::Operate => Err(Error::PermissionDenied(format!(
                "{} may not {}: that needs the {} role",
                self.subject,
                permission.as_str(),
                Role::ServerAdmin,
            ))),
            Decision::Hide => Err(Error::NotFound(format!("nothing found in {place}"))),
        }
    }
}

/// Who a grant on one artifact names: a user (or an API key, as `key:<id>`), a group, or
/// every caller with a role in another project of the same tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GrantSubject {
    User(String),
    Group(String),
    Project(String),
}

impl GrantSubject {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::User(_) => "user",
            Self::Group(_) => "group",
            Self::Project(_) => "project",
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Self::User(name) | Self::Group(name) | Self::Project(name) => name,
        }
    }

    /// From its stored or sent form; `field` names where it came from.
    pub fn parse(field: &'static str, kind: &str, name: &str) -> Result<Self> {
        if name.is_empty() || name.len() > 256 {
            return Err(Error::invalid(field, "a subject is 1 to 256 bytes"));
        }
        match kind {
            "user" => Ok(Self::User(name.to_owned())),
            "group" => Ok(Self::Group(name.to_owned())),
            "project" => {
                crate::domain::names::validate_identifier(field, name)?;
                Ok(Self::Project(name.to_owned()))
            }
            other => Err(Error::invalid(
                field,
                format!("{} is not a subject kind", quoted(other)),
            )),
        }
    }
}

/// A role on one artifact, beside the roles in its project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactGrant {
    pub subject: GrantSubject,
    pub role: Role,
    pub granted_by: String,
    pub granted_at: Timestamp,
}

impl ArtifactGrant {
    /// The most an artifact grant gives: what acts on one artifact, not on its project.
    pub const MOST: Role = Role::Maintainer;

    /// Checks the role a grant to `subject` may carry; a project is only ever given reading.
    pub fn check_role(field: &'static str, subject: &GrantSubject, role: Role) -> Result<()> {
        let most = match subject {
            GrantSubject::Project(_) => Role::Viewer,
            _ => Self::MOST,
        };
        if role > most {
            return Err(Error::invalid(
                field,
                format!(
                    "a grant to a {} gives at most {most} on the artifact; {role} is a role in a project",
                    subject.kind()
                ),
            ));
        }
        Ok(())
    }
}

/// Who a role binding names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubjectKind {
    User,
    Group,
}

impl SubjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Group => "group",
        }
    }

    pub fn parse(field: &'static str, text: &str) -> Result<Self> {
        match text {
            "user" => Ok(Self::User),
            "group" => Ok(Self::Group),
            other => Err(Error::invalid(
                field,
                format!("{} is not a subject kind", quoted(other)),
            )),
        }
    }
}

/// A role given to a user or a group in a tenant (`project` empty) or one of its projects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleBinding {
    pub tenant: String,
    pub project: String,
    pub subject_kind: SubjectKind,
    pub subject: String,
    pub role: Role,
    pub granted_by: String,
    pub granted_at: Timestamp,
}

impl RoleBinding {
    pub fn grant(&self) -> Grant {
        Grant {
            tenant: Some(self.tenant.clone()),
            project: (!self.project.is_empty()).then(|| self.project.clone()),
            role: self.role,
        }
    }
}

/// An API key as the catalog keeps it: never its secret, only the secret's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub key_id: String,
    /// Empty for a server admin key, which reaches every tenant.
    pub tenant: String,
    /// Empty: every project of the tenant.
    pub projects: Vec<String>,
    pub role: Role,
    pub name: String,
    pub created_by: String,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
    /// The only permissions the key holds, when it lists them instead of holding all of its
    /// role's (its role is then the least that holds them all).
    pub permissions: Option<Vec<Permission>>,
}

impl ApiKey {
    pub fn is_active(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|expiry| expiry > now)
    }

    pub fn principal(&self) -> Principal {
        let tenant = (!self.tenant.is_empty()).then(|| self.tenant.clone());
        let grants = if self.projects.is_empty() {
            vec![Grant {
                tenant,
                project: None,
                role: self.role,
            }]
        } else {
            self.projects
                .iter()
                .map(|project| Grant {
                    tenant: tenant.clone(),
                    project: Some(project.clone()),
                    role: self.role,
                })
                .collect()
        };
        Principal {
            subject: format!("key:{}", self.key_id),
            kind: PrincipalKind::ApiKey,
            groups: Vec::new(),
            grants,
            expires_at: self.expires_at,
            permissions: self.permissions.clone(),
        }
    }
}

/// The text form of an API key: `adk_<id>_<secret>`, with a 16-character id and a
/// 43-character secret (32 random bytes), both base64url.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeySecret(String);

const KEY_PREFIX: &str = "adk_";
const KEY_ID_LEN: usize = 16;
const KEY_SECRET_LEN: usize = 43;

impl ApiKeySecret {
    pub fn generate() -> Self {
        use base64::Engine;
        let id: [u8; 12] = rand::random();
        let secret: [u8; 32] = rand::random();
        let encode = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        Self(format!("{KEY_PREFIX}{}_{}", encode(&id), encode(&secret)))
    }

    /// A key as a caller sent it, if it has the shape of one.
    pub fn parse(text: &str) -> Option<Self> {
        let rest = text.strip_prefix(KEY_PREFIX)?;
        let (id, secret) = rest.split_at_checked(KEY_ID_LEN)?;
        let secret = secret.strip_prefix('_')?;
        let base64url = |part: &str| {
            part.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        (id.len() == KEY_ID_LEN && secret.len() == KEY_SECRET_LEN && base64url(id) && base64url(secret))
            .then(|| Self(text.to_owned()))
    }

    pub fn key_id(&self) -> &str {
        &self.0[KEY_PREFIX.len()..KEY_PREFIX.len() + KEY_ID_LEN]
    }

    /// What the catalog keeps: the hash of the whole key.
    pub fn hash(&self) -> String {
        blake3::hash(self.0.as_bytes()).to_hex().to_string()
    }

    /// Whether `stored` (a [`Self::hash`]) is this key's hash, compared in constant time.
    pub fn matches(&self, stored: &str) -> bool {
        blake3::Hash::from_hex(stored).is_ok_and(|stored| stored == blake3::hash(self.0.as_bytes()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeySecret({KEY_PREFIX}{}_…)", self.key_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_odd_shapes_are_not_keys() {
        let key = ApiKeySecret::generate();
        let parsed = ApiKeySecret::parse(key.expose()).expect("a generated key parses");
        assert_eq!(parsed.key_id(), key.key_id());
        assert!(parsed.matches(&key.hash()));
        assert!(!ApiKeySecret::generate().matches(&key.hash()));
        assert!(
            !format!("{key:?}").contains(&key.expose()[24..]),
            "debug output hides the secret"
        );
        for bad in [
            "",
            "adk_",
            "adk_short_x",
            &key.expose()[1..],
            &format!("{}x", key.expose()),
            "eyJ.a.b",
        ] {
            assert!(ApiKeySecret::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_key_that_lists_permissions_holds_only_those() {
        let key = ApiKey {
            key_id: "k".into(),
            tenant: "acme".into(),
            projects: vec!["web".into()],
            role: Role::Maintainer,
            name: "release bot".into(),
            created_by: "admin".into(),
            created_at: Timestamp(0),
            expires_at: None,
            revoked_at: None,
            permissions: Some(vec![Permission::Read, Permission::Maintain]),
        };
        let principal = key.principal();
        assert_eq!(
            principal.decide(Permission::Read, "acme", Some("web")),
            Decision::Allow
        );
        assert_eq!(
            principal.decide(Permission::Maintain, "acme", Some("web")),
            Decision::Allow
        );
        assert_eq!(
            principal.decide(Permission::Write, "acme", Some("web")),
            Decision::Deny {
                held: Role::Maintainer
            }
        );
        let refusal = principal
            .require(Permission::Write, "acme", Some("web"))
            .unwrap_err();
        assert!(
            refusal.to_string().contains("lists only read, maintain"),
            "{refusal}"
        );
        // Elsewhere it is hidden as before, and grants on an artifact are limited the same way.
        assert_eq!(
            principal.decide(Permission::Read, "acme", Some("api")),
            Decision::Hide
        );
        let grants = [ArtifactGrant {
            subject: GrantSubject::User("key:k".into()),
            role: Role::Maintainer,
            granted_by: "admin".into(),
            granted_at: Timestamp(0),
        }];
        assert_eq!(
            principal.decide_on_artifact(Permission::Write, "acme", "api", &grants),
            Decision::Deny {
                held: Role::Maintainer
            }
        );
        assert_eq!(
            principal.decide_on_artifact(Permission::Maintain, "acme", "api", &grants),
            Decision::Allow
        );
    }

    #[test]
    fn artifact_grants_stand_in_only_where_the_scope_does_not_reach() {
        let grant = |subject: GrantSubject, role: Role| ArtifactGrant {
            subject,
            role,
            granted_by: "admin".into(),
            granted_at: Timestamp(0),
        };
        let principal = Principal {
            subject: "ada".into(),
            kind: PrincipalKind::Token,
            groups: vec!["reviewers".into()],
            grants: vec![
                Grant {
                    tenant: Some("acme".into()),
                    project: Some("mobile".into()),
                    role: Role::Viewer,
                },
                Grant {
                    tenant: Some("acme".into()),
                    project: Some("web".into()),
                    role: Role::Contributor,
                },
            ],
            expires_at: None,
            permissions: None,
        };
        let decide = |permission, project, grants: &[ArtifactGrant]| {
            principal.decide_on_artifact(permission, "acme", project, grants)
        };
        // No grant: the scope decides alone.
        assert_eq!(decide(Permission::Read, "api", &[]), Decision::Hide);
        // A project grant reaches members of that project, a group grant the group.
        let shared = [grant(GrantSubject::Project("mobile".into()), Role::Viewer)];
        assert_eq!(decide(Permission::Read, "api", &shared), Decision::Allow);
        assert_eq!(
            decide(Permission::Write, "api", &shared),
            Decision::Deny { held: Role::Viewer }
        );
        let elsewhere = [grant(GrantSubject::Project("ops".into()), Role::Viewer)];
        assert_eq!(decide(Permission::Read, "api", &elsewhere), Decision::Hide);
        let group = [grant(GrantSubject::Group("reviewers".into()), Role::Maintainer)];
        assert_eq!(decide(Permission::Maintain, "api", &group), Decision::Allow);
        assert_eq!(decide(Permission::Maintain, "web", &group), Decision::Allow);
        let user = [grant(GrantSubject::User("bob".into()), Role::Maintainer)];
        assert_eq!(
            decide(Permission::Maintain, "web", &user),
            Decision::Deny {
                held: Role::Contributor
            }
        );
        // Never more than the artifact: a project is given reading at most.
        let project = GrantSubject::Project("mobile".into());
        assert!(ArtifactGrant::check_role("role", &project, Role::Contributor).is_err());
        assert!(ArtifactGrant::check_role("role", &GrantSubject::Group("g".into()), Role::Admin).is_err());
        assert!(
            ArtifactGrant::check_role("role", &GrantSubject::Group("g".into()), Role::Maintainer).is_ok()
        );
    }

    #[test]
    fn roles_nest_and_scopes_decide() {
        let principal = Principal {
            subject: "ada".into(),
            kind: PrincipalKind::Token,
            groups: Vec::new(),
            expires_at: None,
            permissions: None,
            grants: vec![
                Grant {
                    tenant: Some("acme".into()),
                    project: Some("web".into()),
                    role: Role::Maintainer,
                },
                Grant {
                    tenant: Some("acme".into()),
                    project: None,
                    role: Role::Viewer,
                },
            ],
        };
        assert_eq!(
            principal.decide(Permission::Maintain, "acme", Some("web")),
            Decision::Allow
        );
        assert_eq!(
            principal.decide(Permission::Write, "acme", Some("api")),
            Decision::Deny { held: Role::Viewer }
        );
        assert_eq!(
            principal.decide(Permission::Read, "globex", Some("web")),
            Decision::Hide
        );
        assert_eq!(
            principal.decide(Permission::ManageTenant, "acme", None),
            Decision::Deny { held: Role::Viewer }
        );
        assert!(matches!(
            principal.require(Permission::Read, "globex", Some("web")),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            principal.require(Permission::Operate, "", None),
            Err(Error::PermissionDenied(_))
        ));
        for role in Role::ALL {
            assert_eq!(Role::parse("role", role.as_str()).unwrap(), role);
        }
    }
}

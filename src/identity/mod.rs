//! Identity: who is calling. Every RPC but health and reflection passes [`layer::AuthLayer`],
//! which proves the caller from its credential and attaches a [`Caller`]: the principal and
//! what the method needs. Handlers then authorize against the resource they touch.
//!
//! Credentials, in order:
//! - OAuth2-Proxy's `X-Forwarded-*` headers, believed only from the configured proxies;
//! - `authorization: Bearer <API key>` (or `x-api-key: <API key>`): keys this service issued;
//! - `authorization: Bearer <JWT>` from the configured OIDC issuer.

pub mod layer;
pub mod policy;
pub mod tokens;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::domain::access::{
    ApiKey, ApiKeySecret, ArtifactGrant, Grant, Permission, Principal, PrincipalKind, Role,
};
use crate::domain::{Error, Result, Scope, Timestamp};
use http::HeaderMap;
use ipnet::IpNet;
use policy::Policy;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokens::TokenVerifier;

/// The proven caller of one request and what its method needs; in the request extensions.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Arc<Principal>,
    pub policy: Policy,
    /// What the audit trail learns of this call.
    pub note: Option<Arc<crate::audit::CallNote>>,
    /// What the caller proved itself with, to prove it again during a long call.
    pub proof: Option<Arc<Proof>>,
}

/// The credential a call came with, kept for the call's life only.
pub struct Proof {
    authenticator: Arc<Authenticator>,
    headers: HeaderMap,
    peer: Option<IpAddr>,
}

impl std::fmt::Debug for Proof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Proof(peer {:?})", self.peer)
    }
}

impl Proof {
    pub fn new(authenticator: Arc<Authenticator>, headers: HeaderMap, peer: Option<IpAddr>) -> Self {
        Self {
            authenticator,
            headers,
            peer,
        }
    }

    /// How often a long call proves its caller again.
    pub fn every(&self) -> std::time::Duration {
        self.authenticator.reprove_every
    }
}

impl Caller {
    /// The actor recorded for this caller's changes.
    pub fn actor(&self) -> String {
        self.principal.subject.clone()
    }

    /// May the caller do what the method needs in `scope`? A scope it has no role in is
    /// NOT_FOUND, as if empty.
    pub fn authorize(&self, scope: &Scope) -> Result<()> {
        self.authorize_in(&scope.tenant, Some(&scope.project))
    }

    pub fn authorize_in(&self, tenant: &str, project: Option<&str>) -> Result<()> {
        if let Some(note) = &self.note {
            note.scope(tenant, project);
        }
        crate::domain::names::validate_identifier("tenant", tenant)?;
        if let Some(project) = project {
            crate::domain::names::validate_identifier("project", project)?;
        }
        match self.policy {
            // A method about the caller itself has no scope to grant.
            Policy::Authenticated => Err(Error::internal("a method without a scope authorized a scope")),
            Policy::Scoped(permission) => self.principal.require(permission, tenant, project),
        }
    }

    /// [`Caller::authorize`] for a call about one artifact whose scope refused the caller: a
    /// grant on the artifact may stand in for a role in its project.
    pub fn authorize_on_artifact(&self, scope: &Scope, grants: &[ArtifactGrant]) -> Result<()> {
        match self.policy {
            Policy::Authenticated => Err(Error::internal("a method without a scope authorized an artifact")),
            Policy::Scoped(permission) => {
                self.principal
                    .require_on_artifact(permission, &scope.tenant, &scope.project, grants)
            }
        }
    }

    /// Proves the caller again, as of now, from the credential it came with, and checks that
    /// it may still do what the method needs in `scope`: a revoked or expired key, an expired
    /// token or a role taken away fail it.
    pub async fn reprove(&self, scope: &Scope) -> Result<()> {
        let Some(proof) = &self.proof else {
            return Ok(());
        };
        let principal = proof
            .authenticator
            .authenticate(&proof.headers, proof.peer)
            .await?;
        match self.policy {
            Policy::Authenticated => Ok(()),
            Policy::Scoped(permission) => principal.require(permission, &scope.tenant, Some(&scope.project)),
        }
    }

    /// A check beyond the method's own: approving, tenant-wide grants.
    pub fn require(&self, permission: Permission, tenant: &str, project: Option<&str>) -> Result<()> {
        self.principal.require(permission, tenant, project)
    }

    /// Names what the call touches, for the audit trail.
    pub fn target(&self, target: &str) {
        if let Some(note) = &self.note {
            note.target(target);
        }
    }

    /// The server's own operations.
    pub fn authorize_server(&self) -> Result<()> {
        self.principal.require(Permission::Operate, "", None)
    }
}

/// Proves callers from their credentials.
#[derive(Debug)]
pub struct Authenticator {
    catalog: Catalog,
    tokens: Option<Arc<TokenVerifier>>,
    proxies: Vec<IpNet>,
    reprove_every: std::time::Duration,
}

const FORWARDED_USER: &str = "x-forwarded-user";
const FORWARDED_EMAIL: &str = "x-forwarded-email";
const FORWARDED_GROUPS: &str = "x-forwarded-groups";
const FORWARDED_USERNAME: &str = "x-forwarded-preferred-username";
/// Most groups of one caller taken into account.
const MAX_GROUPS: usize = 100;

impl Authenticator {
    pub fn new(catalog: Catalog, tokens: Option<Arc<TokenVerifier>>, proxies: Vec<IpNet>) -> Self {
        Self {
            catalog,
            tokens,
            proxies,
            reprove_every: std::time::Duration::from_secs(60),
        }
    }

    /// How often long calls prove their callers again.
    pub fn reproving_every(mut self, every: std::time::Duration) -> Self {
        self.reprove_every = every;
        self
    }

    pub async fn authenticate(&self, headers: &HeaderMap, peer: Option<IpAddr>) -> Result<Principal> {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        let trusted_peer = peer
            .map(|peer| peer.to_canonical())
            .is_some_and(|peer| self.proxies.iter().any(|net| net.contains(&peer)));
        if trusted_peer && let Some(user) = header(FORWARDED_USER) {
            if headers.get_all(FORWARDED_USER).iter().count() > 1 {
                return Err(Error::Unauthenticated("the proxy sent more than one user".into()));
            }
            let groups = header(FORWARDED_GROUPS)
                .map(|groups| {
                    groups
                        .split(',')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .take(MAX_GROUPS)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            tracing::debug!(
                user,
                email = header(FORWARDED_EMAIL),
                username = header(FORWARDED_USERNAME),
                "caller proven by the proxy"
            );
            return self.person(user.to_owned(), groups, PrincipalKind::Proxy).await;
        }
        let bearer = header(http::header::AUTHORIZATION.as_str())
            .map(|value| {
                value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
                    .map(str::trim)
                    .ok_or_else(|| {
                        Error::Unauthenticated("the authorization header is not `Bearer <credential>`".into())
                    })
            })
            .transpose()?;
        let credential = bearer.or_else(|| header("x-api-key")).ok_or_else(|| {
            Error::Unauthenticated(
                "no credential: send `authorization: Bearer <API key or token>` (see the README, \"Identity\")".into(),
            )
        })?;
        if let Some(key) = ApiKeySecret::parse(credential) {
            return self.key_holder(&key).await;
        }
        let Some(tokens) = &self.tokens else {
            return Err(Error::Unauthenticated(
                "the credential is not an API key, and this server accepts no tokens".into(),
            ));
        };
        let identity = tokens.verify(credential)?;
        self.person(identity.subject, identity.groups, PrincipalKind::Token)
            .await
    }

    async fn key_holder(&self, key: &ApiKeySecret) -> Result<Principal> {
        let refused = |why: &str| Error::Unauthenticated(format!("API key {}: {why}", key.key_id()));
        let (stored, hash) = self
            .catalog
            .api_key(key.key_id())
            .await?
            .ok_or_else(|| refused("not recognised"))?;
        if !key.matches(&hash) {
            return Err(refused("not recognised"));
        }
        if stored.revoked_at.is_some() {
            return Err(refused("revoked"));
        }
        if !stored.is_active(Timestamp::now()) {
            return Err(refused("expired"));
        }
        Ok(stored.principal())
    }

    /// A user (from a token or the proxy) with the roles its bindings give it.
    async fn person(&self, user: String, mut groups: Vec<String>, kind: PrincipalKind) -> Result<Principal> {
        // "key:" names API keys in every actor field; a person never looks like one.
        if user.starts_with("key:") {
            return Err(Error::Unauthenticated(format!(
                "the user {user:?} looks like an API key's name and is not accepted"
            )));
        }
        groups.truncate(MAX_GROUPS);
        let grants: Vec<Grant> = self
            .catalog
            .bindings_of(&user, &groups)
            .await?
            .iter()
            .filter(|binding| binding.role.grantable())
            .map(|binding| binding.grant())
            .collect();
        Ok(Principal {
            subject: user,
            kind,
            groups,
            grants,
            expires_at: None,
            permissions: None,
        })
    }
}

/// A server admin key, as made at the first start or supplied by the operator.
fn admin_key(secret: &ApiKeySecret, name: &str) -> ApiKey {
    ApiKey {
        key_id: secret.key_id().to_owned(),
        tenant: String::new(),
        projects: Vec::new(),
        role: Role::ServerAdmin,
        name: name.to_owned(),
        created_by: "artifactd".to_owned(),
        created_at: Timestamp::now(),
        expires_at: None,
        revoked_at: None,
        permissions: None,
    }
}

/// Makes sure someone can get in. An operator-supplied admin key is registered when the
/// catalog lacks it. Otherwise, when the catalog has no key at all, one server admin key is
/// made (once, whichever replica comes first), written to a file only its owner can read and
/// printed once on stderr.
pub async fn ensure_admin(config: &Config, catalog: &Catalog) -> anyhow::Result<Option<PathBuf>> {
    let identity = &config.identity;
    if !identity.admin_key_file.is_empty() {
        let text = std::fs::read_to_string(&identity.admin_key_file).map_err(|e| {
            anyhow::anyhow!("reading identity.admin_key_file {}: {e}", identity.admin_key_file)
        })?;
        let secret = ApiKeySecret::parse(text.trim()).ok_or_else(|| {
            anyhow::anyhow!(
                "identity.admin_key_file {} does not hold an API key (adk_<16 characters>_<43 characters>)",
                identity.admin_key_file
            )
        })?;
        match catalog.api_key(secret.key_id()).await? {
            Some((_, hash)) if secret.matches(&hash) => {}
            Some(_) => anyhow::bail!(
                "identity.admin_key_file: the catalog holds key {} with another secret",
                secret.key_id()
            ),
            None => {
                catalog
                    .insert_api_key(
                        &admin_key(&secret, "admin (from admin_key_file)"),
                        &secret.hash(),
                        false,
                    )
                    .await?;
            }
        }
        return Ok(None);
    }
    // Without any key, nobody could ever give the first role, whatever else is configured.
    if catalog.has_api_keys().await? {
        return Ok(None);
    }
    let secret = ApiKeySecret::generate();
    // The file first: a key stored but never written down would be lost, and with it the
    // way in.
    let path = config.bootstrap_key_path();
    write_private(&path, secret.expose())?;
    if !catalog
        .insert_api_key(&admin_key(&secret, "bootstrap admin"), &secret.hash(), true)
        .await?
    {
        // Another replica made the key first; this one is worthless.
        let _ = std::fs::remove_file(&path);
        return Ok(None);
    }
    eprintln!(
        "artifactd: created the bootstrap admin API key {} (also in {}, readable only by its owner); \
         send it as `authorization: Bearer <key>`. It is shown only this once.",
        secret.expose(),
        path.display()
    );
    Ok(Some(path))
}

/// Writes `text` to `path` readable and writable by its owner only, atomically.
pub fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let temporary = dir.join(format!(".admin-key-{}.tmp", uuid::Uuid::now_v7()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(&temporary)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", temporary.display()))?;
    file.write_all(format!("{text}\n").as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, path).map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

//! Typed configuration: defaults, then an optional TOML file, then environment variables.
//! Unknown keys are errors, whether they come from the file or from `ARTIFACTD_*` variables.
//!
//! Environment variables: `ARTIFACTD_<KEY>` for top-level keys and
//! `ARTIFACTD_<SECTION>__<KEY>` (double underscore) for nested ones, e.g.
//! `ARTIFACTD_SERVER__GRPC_ADDR`. The deployment variables `DATABASE_URL`, `S3_ENDPOINT_URL`,
//! `S3_BUCKET_NAME`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_REGION` are
//! understood too; `S3_BUCKET_NAME` selects the S3 backend unless
//! `ARTIFACTD_STORAGE__BACKEND` says otherwise.

use crate::domain::Secret;
use crate::domain::secret::redact_url;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the embedded defaults keep their files (SQLite catalog, filesystem store).
    pub data_dir: PathBuf,
    pub server: ServerConfig,
    pub catalog: CatalogConfig,
    pub storage: StorageConfig,
    /// The data path's own settings type, read directly.
    pub ingest: crate::app::IngestSettings,
    /// The change stream and the outbox it reads, read directly.
    pub events: crate::app::EventSettings,
    /// Retention, the trash and garbage collection: the use cases' own settings type.
    pub retention: crate::app::RetentionSettings,
    pub search: SearchConfig,
    pub identity: IdentityConfig,
    pub audit: AuditConfig,
    pub encryption: EncryptionConfig,
    pub delivery: DeliveryConfig,
    pub log: LogConfig,
}

/// Download links over HTTP and the cache of decoded chunks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Where clients reach the HTTP listener (a CDN or load balancer, for example
    /// `https://artifacts.example.com`): links are made absolute with it. Empty: the
    /// listener's own address when it is bound to one interface; otherwise links are paths.
    pub public_url: String,
    /// The key download links are signed with: any text of at least 32 characters. Replicas
    /// must share it. Empty: a key derived from the catalog's service secret, which the
    /// replicas of one catalog already share.
    pub link_signing_key: Secret,
    /// ... or a file holding it (for example a mounted Kubernetes Secret).
    pub link_signing_key_file: String,
    /// Comma-separated files of earlier keys: links they signed are still accepted (no new
    /// link is signed with them) until those links expire.
    pub previous_link_signing_key_files: String,
    /// How long a link works when the caller does not say.
    pub link_default_ttl_seconds: u64,
    /// The longest a link may work.
    pub link_max_ttl_seconds: u64,
    /// Memory for decoded chunks that downloads and the search indexer read again
    /// (0 turns the cache off).
    pub cache_memory_bytes: u64,
    /// Warm the next version into the memory cache when an artifact's versions are read in
    /// order.
    pub prefetch: bool,
    /// Local disk for packs read more than once from an S3 store (0 turns it off; the
    /// filesystem store never has one: it is local already).
    pub cache_disk_bytes: u64,
    /// Where the disk cache lives; empty means `<data_dir>/cache`.
    pub cache_dir: String,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            public_url: String::new(),
            link_signing_key: Secret::default(),
            link_signing_key_file: String::new(),
            previous_link_signing_key_files: String::new(),
            link_default_ttl_seconds: 3600,
            link_max_ttl_seconds: 7 * 24 * 3600,
            cache_memory_bytes: 64 * 1024 * 1024,
            prefetch: true,
            cache_disk_bytes: 1024 * 1024 * 1024,
            cache_dir: String::new(),
        }
    }
}

/// Encryption at rest. Off until a master key is given; then every new pack is sealed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct EncryptionConfig {
    /// A file holding the 32-byte master key, in base64 or hex (for example a mounted
    /// Kubernetes Secret). Replicas share one.
    pub master_key_file: String,
    /// The master key itself, in base64 or hex; for `ARTIFACTD_ENCRYPTION__MASTER_KEY`.
    pub master_key: Secret,
    /// Comma-separated files of earlier master keys, still accepted to open tenant keys
    /// until `RewrapTenantKeys` has moved every one under the current master key.
    pub previous_master_key_files: String,
}

/// The audit trail's signed checkpoints.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// The Ed25519 key (base64 PKCS#8) that signs checkpoints; empty means
    /// `<data_dir>/audit-signing.key`, made at the first start. Replicas share one.
    pub signing_key_file: String,
    /// How often every chain that grew gets a signed checkpoint.
    pub checkpoint_interval_seconds: u64,
    /// When access is flagged as unusual.
    pub patterns: crate::audit::patterns::PatternSettings,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            signing_key_file: String::new(),
            checkpoint_interval_seconds: 60,
            patterns: Default::default(),
        }
    }
}

/// Who may call: API keys (always), bearer JWTs from an OIDC issuer, OAuth2-Proxy's headers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// A file holding a server admin API key (`adk_…`, for example from a Kubernetes Secret),
    /// registered at start when the catalog lacks it. Every replica can be given the same.
    pub admin_key_file: String,
    /// Where the key made at the first start is written (only its owner can read it) when
    /// no other way in is configured; empty means `<data_dir>/admin.key`.
    pub bootstrap_key_file: String,
    pub oidc: OidcConfig,
    pub proxy: ProxyConfig,
    /// How often a long call (a change stream) proves its caller again: a revoked key, an
    /// expired token or a role taken away ends it within this time.
    pub reprove_seconds: u64,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            admin_key_file: String::new(),
            bootstrap_key_file: String::new(),
            oidc: OidcConfig::default(),
            proxy: ProxyConfig::default(),
            reprove_seconds: 60,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OidcConfig {
    /// The `iss` every token must carry; empty turns JWTs off.
    pub issuer: String,
    /// The `aud` every token must carry.
    pub audience: String,
    /// The issuer's keys as a JWKS file, re-read every `refresh_seconds`.
    pub jwks_file: String,
    /// ... or fetched from this URL (http or https) every `refresh_seconds`.
    pub jwks_url: String,
    /// Accepted signature algorithms, comma-separated, from RS256, RS384, RS512, PS256,
    /// PS384, PS512, ES256, ES384, EdDSA. HMAC and `none` are never accepted.
    pub algorithms: String,
    /// The claim holding the caller's groups (a list of strings, or one string).
    pub groups_claim: String,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_seconds: u64,
    pub refresh_seconds: u64,
}

impl OidcConfig {
    pub fn enabled(&self) -> bool {
        !self.issuer.is_empty()
    }

    /// The accepted algorithms; never HMAC, never `none`.
    pub fn accepted_algorithms(&self) -> Result<Vec<jsonwebtoken::Algorithm>, String> {
        use jsonwebtoken::Algorithm::*;
        let known = [RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA];
        let mut accepted = Vec::new();
        for name in self
            .algorithms
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
        {
            let algorithm = known
                .into_iter()
                .find(|a| format!("{a:?}") == name)
                .ok_or_else(|| {
                    format!("identity.oidc.algorithms: {name:?} is not accepted; use RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA")
                })?;
            accepted.push(algorithm);
        }
        if accepted.is_empty() {
            return Err("identity.oidc.algorithms must name at least one algorithm".to_owned());
        }
        Ok(accepted)
    }
}

impl ProxyConfig {
    pub fn trusted(&self) -> Result<Vec<ipnet::IpNet>, String> {
        self.trusted_addresses
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(|address| {
                address
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| address.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        format!("identity.proxy.trusted_addresses: {address:?} is neither an address nor a network")
                    })
            })
            .collect()
    }
}

impl Default for OidcConfig {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            audience: String::new(),
            jwks_file: String::new(),
            jwks_url: String::new(),
            algorithms: "RS256,ES256,EdDSA".to_owned(),
            groups_claim: "groups".to_owned(),
            leeway_seconds: 30,
            refresh_seconds: 300,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Addresses or networks (comma-separated, `10.0.0.7` or `10.0.0.0/24`) whose
    /// `X-Forwarded-User`, `X-Forwarded-Email`, `X-Forwarded-Groups` and
    /// `X-Forwarded-Preferred-Username` headers are believed; from anyone else they are ignored.
    pub trusted_addresses: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SearchConfig {
    /// Where this replica keeps its search index; empty means `<data_dir>/index`.
    pub index_dir: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub grpc_addr: String,
    /// Serves Prometheus `/metrics`, `/healthz` and, unless `links_addr` is set, download
    /// links.
    pub http_addr: String,
    /// When set, download links are served on a listener of their own at this address (the
    /// one to put behind a CDN), and not on `http_addr`, which then keeps `/metrics` private.
    pub links_addr: String,
    /// How long in-flight requests may run after a shutdown signal.
    pub shutdown_grace_seconds: u64,
    pub health_check_interval_ms: u64,
    /// How often the per-tenant storage figures (`artifactd_tenant_*_bytes`) are summed
    /// from the catalog.
    pub storage_stats_interval_seconds: u64,
    /// How often free memory inside the allocator's arenas is given back to the kernel
    /// (glibc's `malloc_trim`); 0 never.
    pub memory_trim_interval_ms: u64,
    pub tls: TlsConfig,
}

/// TLS on the gRPC listener (rustls). Off while `cert_file` is empty.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The server's certificate chain, PEM.
    pub cert_file: String,
    /// Its private key, PEM.
    pub key_file: String,
    /// With a CA (PEM), clients must present a certificate it signed.
    pub client_ca_file: String,
    /// ... unless this is set: then a certificate is checked when presented, not required.
    pub client_auth_optional: bool,
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        !self.cert_file.is_empty()
    }
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CatalogConfig {
    /// `sqlite://...` or `postgres://...`; empty means `sqlite://<data_dir>/catalog.db`.
    /// May carry a password, so it is shown only through [`redact_url`].
    pub url: String,
    pub max_connections: u32,
    /// What the page caches of an SQLite catalog's connections hold together at most (each
    /// connection an equal share); the operating system's page cache keeps the rest of the
    /// file at hand. Postgres ignores it.
    pub sqlite_cache_bytes: u64,
}

impl std::fmt::Debug for CatalogConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogConfig")
            .field("url", &redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .field("sqlite_cache_bytes", &self.sqlite_cache_bytes)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Fs,
    S3,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub backend: Backend,
    /// Root of the filesystem store; empty means `<data_dir>/blobs`.
    pub fs_root: String,
    pub s3: S3Config,
    /// A second, S3-compatible store that takes over when the primary fails.
    pub fallback: FallbackConfig,
    /// The failover pair's own settings type, read directly (`[storage.failover]`, with the
    /// breaker under `[storage.failover.breaker]`).
    pub failover: crate::storage::FailoverConfig,
    /// The shortest deadline a store call gets; above it, deadlines follow the store's
    /// observed latency (8 × its p99), capped by the request timeout.
    pub deadline_floor_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct FallbackConfig {
    pub enabled: bool,
    pub s3: S3Config,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    pub endpoint_url: String,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub force_path_style: bool,
    pub key_prefix: String,
    /// Create the bucket at start-up when it is missing (development setups).
    pub create_bucket: bool,
    pub request_timeout_ms: u64,
    pub multipart_threshold_bytes: u64,
    pub multipart_part_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// A tracing filter such as `info` or `artifactd=debug,info`; `RUST_LOG` wins when set.
    pub filter: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./artifactd-data"),
            server: ServerConfig::default(),
            catalog: CatalogConfig::default(),
            storage: StorageConfig::default(),
            ingest: crate::app::IngestSettings::default(),
            events: crate::app::EventSettings::default(),
            retention: crate::app::RetentionSettings::default(),
            search: SearchConfig::default(),
            identity: IdentityConfig::default(),
            audit: AuditConfig::default(),
            encryption: EncryptionConfig::default(),
            delivery: DeliveryConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            grpc_addr: "127.0.0.1:50051".to_owned(),
            http_addr: "127.0.0.1:9464".to_owned(),
            links_addr: String::new(),
            shutdown_grace_seconds: 30,
            health_check_interval_ms: 2000,
            storage_stats_interval_seconds: 300,
            memory_trim_interval_ms: 1000,
            tls: TlsConfig::default(),
        }
    }
}

impl Default for CatalogConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            max_connections: 8,
            sqlite_cache_bytes: crate::catalog::DEFAULT_SQLITE_CACHE_BYTES,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Fs,
            fs_root: String::new(),
            s3: S3Config::default(),
            fallback: FallbackConfig::default(),
            failover: crate::storage::FailoverConfig::default(),
            deadline_floor_ms: crate::storage::DeadlineConfig::default().floor.as_millis() as u64,
        }
    }
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            endpoint_url: String::new(),
            bucket: String::new(),
            region: "us-east-1".to_owned(),
            access_key_id: String::new(),
            secret_access_key: Secret::default(),
            force_path_style: true,
            key_prefix: String::new(),
            create_bucket: false,
            request_timeout_ms: 30_000,
            multipart_threshold_bytes: 64 * 1024 * 1024,
            multipart_part_bytes: 16 * 1024 * 1024,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: "text".to_owned(),
            filter: "info".to_owned(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("environment variable {variable}: {message}")]
    Env { variable: String, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The deployment variables of the product story and the settings they fill in.
const STORY_VARIABLES: &[(&str, &[&str])] = &[
    ("DATABASE_URL", &["catalog", "url"]),
    ("S3_ENDPOINT_URL", &["storage", "s3", "endpoint_url"]),
    ("S3_BUCKET_NAME", &["storage", "s3", "bucket"]),
    ("AWS_ACCESS_KEY_ID", &["storage", "s3", "access_key_id"]),
    ("AWS_SECRET_ACCESS_KEY", &["storage", "s3", "secret_access_key"]),
    ("AWS_REGION", &["storage", "s3", "region"]),
    ("S3_FALLBACK_ENABLED", &["storage", "fallback", "enabled"]),
    (
        "S3_FALLBACK_ENDPOINT_URL",
        &["storage", "fallback", "s3", "endpoint_url"],
    ),
    (
        "S3_FALLBACK_BUCKET_NAME",
        &["storage", "fallback", "s3", "bucket"],
    ),
    ("S3_FALLBACK_REGION", &["storage", "fallback", "s3", "region"]),
    (
        "S3_FALLBACK_ACCESS_KEY_ID",
        &["storage", "fallback", "s3", "access_key_id"],
    ),
    (
        "S3_FALLBACK_SECRET_ACCESS_KEY",
        &["storage", "fallback", "s3", "secret_access_key"],
    ),
];

/// Variables with the prefix that are not settings.
const NON_SETTING_VARIABLES: &[&str] = &["ARTIFACTD_CONFIG"];

impl Config {
    /// The configuration as it may be shown: every secret masked, and the password in the
    /// catalog URL too.
    pub fn redacted(&self) -> Config {
        let mut shown = self.clone();
        shown.catalog.url = redact_url(&self.catalog.url);
        for s3 in [&mut shown.storage.s3, &mut shown.storage.fallback.s3] {
            s3.secret_access_key = s3.secret_access_key.redacted();
        }
        shown.encryption.master_key = self.encryption.master_key.redacted();
        shown.delivery.link_signing_key = self.delivery.link_signing_key.redacted();
        shown
    }

    /// Loads defaults, then `file` if given, then the variables of `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut value = serde_json::to_value(Config::default()).expect("config serializes");
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            let from_file: Config = toml::from_str(&text).map_err(|e| ConfigError::File {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
            value = serde_json::to_value(from_file).expect("config serializes");
        }
        let mut env: Vec<(String, String)> = env.into_iter().collect();
        env.sort();
        let mut backend_set_explicitly = false;
        for (variable, raw) in &env {
            let path: Vec<String> = if let Some(rest) = variable.strip_prefix("ARTIFACTD_") {
                if NON_SETTING_VARIABLES.contains(&variable.as_str())
                    || crate::cli::VARIABLES.contains(&variable.as_str())
                {
                    continue;
                }
                rest.split("__").map(str::to_ascii_lowercase).collect()
            } else if let Some((_, path)) = STORY_VARIABLES.iter().find(|(name, _)| name == variable) {
                path.iter().map(|s| (*s).to_owned()).collect()
            } else {
                continue;
            };
            if path == ["storage", "backend"] {
                backend_set_explicitly = true;
            }
            set_path(&mut value, &path, raw).map_err(|message| ConfigError::Env {
                variable: variable.clone(),
                message,
            })?;
        }
        let has_bucket_variable = env
            .iter()
            .any(|(name, value)| name == "S3_BUCKET_NAME" && !value.is_empty());
        if has_bucket_variable && !backend_set_explicitly {
            value["storage"]["backend"] = serde_json::Value::String("s3".to_owned());
        }
        let config: Config =
            serde_json::from_value(value).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| Err(ConfigError::Invalid(message));
        if self.storage.backend == Backend::S3 && self.storage.s3.bucket.is_empty() {
            return invalid("storage.s3.bucket (S3_BUCKET_NAME) is required with the s3 backend".to_owned());
        }
        for (section, s3) in [
            ("storage.s3", &self.storage.s3),
            ("storage.fallback.s3", &self.storage.fallback.s3),
        ] {
            if s3.access_key_id.is_empty() != s3.secret_access_key.is_empty() {
                return invalid(format!(
                    "{section}.access_key_id and {section}.secret_access_key must be set together"
                ));
            }
        }
        self.identity.proxy.trusted().map_err(ConfigError::Invalid)?;
        self.retention.validate().map_err(ConfigError::Invalid)?;
        if !self.encryption.master_key_file.is_empty() && !self.encryption.master_key.is_empty() {
            return invalid(
                "encryption.master_key_file and encryption.master_key are alternatives; set one".to_owned(),
            );
        }
        if self.encryption.master_key_file.is_empty()
            && self.encryption.master_key.is_empty()
            && !self.encryption.previous_master_key_files.trim().is_empty()
        {
            return invalid(
                "encryption.previous_master_key_files needs a current master key (encryption.master_key_file)"
                    .to_owned(),
            );
        }
        let tls = &self.server.tls;
        if tls.cert_file.is_empty() != tls.key_file.is_empty() {
            return invalid("server.tls.cert_file and server.tls.key_file must be set together".to_owned());
        }
        if !tls.enabled() && (!tls.client_ca_file.is_empty() || tls.client_auth_optional) {
            return invalid(
                "server.tls.client_ca_file and client_auth_optional need server.tls.cert_file".to_owned(),
            );
        }
        if self.identity.reprove_seconds == 0 {
            return invalid("identity.reprove_seconds must be positive".to_owned());
        }
        if self.identity.oidc.leeway_seconds > 300 {
            return invalid(
                "identity.oidc.leeway_seconds is at most 300: a token's lifetime is not to be stretched"
                    .to_owned(),
            );
        }
        if self.identity.oidc.enabled() {
            self.identity
                .oidc
                .accepted_algorithms()
                .map_err(ConfigError::Invalid)?;
            if self.identity.oidc.audience.is_empty() {
                return invalid("identity.oidc.audience is required with identity.oidc.issuer".to_owned());
            }
            if self.identity.oidc.jwks_file.is_empty() == self.identity.oidc.jwks_url.is_empty() {
                return invalid("identity.oidc needs exactly one of jwks_file and jwks_url".to_owned());
            }
        }
        if self.storage.fallback.enabled && self.storage.fallback.s3.bucket.is_empty() {
            return invalid(
                "storage.fallback.s3.bucket (S3_FALLBACK_BUCKET_NAME) is required when the fallback is enabled"
                    .to_owned(),
            );
        }
        let failover = &self.storage.failover;
        if failover.request_timeout.is_zero()
            || failover.probe_interval.is_zero()
            || failover.breaker.failure_threshold == 0
            || failover.replication_concurrency == 0
        {
            return invalid(
                "storage.failover.request_timeout_ms, probe_interval_ms, replication_concurrency and breaker.failure_threshold must be positive"
                    .to_owned(),
            );
        }
        if !(0.0..=1.0).contains(&failover.breaker.error_rate_threshold) {
            return invalid(format!(
                "storage.failover.breaker.error_rate_threshold = {} must be between 0 and 1",
                failover.breaker.error_rate_threshold
            ));
        }
        let avg = self.ingest.chunk_avg_bytes;
        if !(1024..=1024 * 1024).contains(&avg) {
            return invalid(format!(
                "ingest.chunk_avg_bytes = {avg} must be between 1024 and 1048576"
            ));
        }
        if !(1..=19).contains(&self.ingest.zstd_level) {
            return invalid(format!(
                "ingest.zstd_level = {} must be between 1 and 19",
                self.ingest.zstd_level
            ));
        }
        if self.ingest.delta_max_depth > 32 {
            return invalid(format!(
                "ingest.delta_max_depth = {} must be between 0 (no deltas) and 32",
                self.ingest.delta_max_depth
            ));
        }
        if self.ingest.pack_target_bytes < avg * 4 {
            return invalid(format!(
                "ingest.pack_target_bytes = {} must hold at least one maximum-size chunk ({})",
                self.ingest.pack_target_bytes,
                avg * 4
            ));
        }
        if self.ingest.max_data_message_bytes == 0 || self.ingest.max_data_message_bytes > 4 * 1024 * 1024 {
            return invalid("ingest.max_data_message_bytes must be between 1 and 4194304".to_owned());
        }
        let smallest_budget = 2 * self.ingest.max_read_span_bytes as usize + self.ingest.pack_target_bytes;
        if self.ingest.transfer_memory_bytes < smallest_budget {
            return invalid(format!(
                "ingest.transfer_memory_bytes = {} must hold a pack and two read spans ({smallest_budget})",
                self.ingest.transfer_memory_bytes
            ));
        }
        if self.catalog.sqlite_cache_bytes < crate::catalog::MIN_SQLITE_CACHE_BYTES {
            return invalid(format!(
                "catalog.sqlite_cache_bytes = {} must be at least {}",
                self.catalog.sqlite_cache_bytes,
                crate::catalog::MIN_SQLITE_CACHE_BYTES
            ));
        }
        if self.ingest.received_memory_bytes < 64 * 1024 {
            return invalid(format!(
                "ingest.received_memory_bytes = {} must be at least 65536",
                self.ingest.received_memory_bytes
            ));
        }
        if self.ingest.delta_base_memory_bytes < 64 * 1024 {
            return invalid(format!(
                "ingest.delta_base_memory_bytes = {} must be at least 65536",
                self.ingest.delta_base_memory_bytes
            ));
        }
        if self.ingest.shared_pack_window_ms > 1000 {
            return invalid(format!(
                "ingest.shared_pack_window_ms = {} must be at most 1000 (it delays acknowledgements)",
                self.ingest.shared_pack_window_ms
            ));
        }
        let trim = self.server.memory_trim_interval_ms;
        if trim != 0 && trim < 100 {
            return invalid(format!(
                "server.memory_trim_interval_ms = {trim} must be 0 (never) or at least 100 (each trim holds the allocator's locks)"
            ));
        }
        if self.ingest.stalled_download_seconds == 0 {
            return invalid("ingest.stalled_download_seconds must be positive".to_owned());
        }
        if self.ingest.max_packs_in_flight == 0 || self.ingest.read_ahead_spans == 0 {
            return invalid(
                "ingest.max_packs_in_flight and ingest.read_ahead_spans must be positive".to_owned(),
            );
        }
        let delivery = &self.delivery;
        if delivery.link_default_ttl_seconds == 0
            || delivery.link_default_ttl_seconds > delivery.link_max_ttl_seconds
        {
            return invalid(format!(
                "delivery.link_default_ttl_seconds = {} must be positive and at most delivery.link_max_ttl_seconds ({})",
                delivery.link_default_ttl_seconds, delivery.link_max_ttl_seconds
            ));
        }
        let url = &delivery.public_url;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return invalid(format!(
                "delivery.public_url = {:?} must start with http:// or https://",
                delivery.public_url
            ));
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return invalid(format!(
                "log.format = {:?} must be \"text\" or \"json\"",
                self.log.format
            ));
        }
        let links = Some(&self.server.links_addr).filter(|addr| !addr.is_empty());
        for (key, addr) in [
            ("server.grpc_addr", Some(&self.server.grpc_addr)),
            ("server.http_addr", Some(&self.server.http_addr)),
            ("server.links_addr", links),
        ]
        .into_iter()
        .filter_map(|(key, addr)| Some((key, addr?)))
        {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                return invalid(format!(
                    "{key} = {addr:?} is not an address such as 127.0.0.1:50051"
                ));
            }
        }
        Ok(())
    }

    pub fn catalog_url(&self) -> String {
        if self.catalog.url.is_empty() {
            format!("sqlite://{}", self.data_dir.join("catalog.db").display())
        } else {
            self.catalog.url.clone()
        }
    }

    /// Where uploads spill their manifests and chunk lists: `ingest.spill_dir`, or
    /// `<data_dir>/spill`.
    pub fn spill_dir(&self) -> PathBuf {
        if self.ingest.spill_dir.is_empty() {
            self.data_dir.join("spill")
        } else {
            PathBuf::from(&self.ingest.spill_dir)
        }
    }

    pub fn cache_dir(&self) -> PathBuf {
        if self.delivery.cache_dir.is_empty() {
            self.data_dir.join("cache")
        } else {
            PathBuf::from(&self.delivery.cache_dir)
        }
    }

    pub fn audit_signing_key_path(&self) -> PathBuf {
        if self.audit.signing_key_file.is_empty() {
            self.data_dir.join("audit-signing.key")
        } else {
            PathBuf::from(&self.audit.signing_key_file)
        }
    }

    pub fn bootstrap_key_path(&self) -> PathBuf {
        if self.identity.bootstrap_key_file.is_empty() {
            self.data_dir.join("admin.key")
        } else {
            PathBuf::from(&self.identity.bootstrap_key_file)
        }
    }

    pub fn index_dir(&self) -> PathBuf {
        if self.search.index_dir.is_empty() {
            self.data_dir.join("index")
        } else {
            PathBuf::from(&self.search.index_dir)
        }
    }

    pub fn fs_root(&self) -> PathBuf {
        if self.storage.fs_root.is_empty() {
            self.data_dir.join("blobs")
        } else {
            PathBuf::from(&self.storage.fs_root)
        }
    }

    /// The settings of the use cases, with the master keys read from their files.
    pub fn app_settings(&self) -> Result<crate::app::Settings, ConfigError> {
        Ok(crate::app::Settings {
            ingest: crate::app::IngestSettings {
                spill_dir: self.spill_dir().display().to_string(),
                ..self.ingest.clone()
            },
            deleted_retention: Duration::from_secs(self.retention.deleted_retention_seconds),
            retention: self.retention.clone(),
            events: self.events.clone(),
            master_keys: self.master_keys()?.map(std::sync::Arc::new),
            delivery: self.delivery_settings()?,
        })
    }

    /// Download links and the cache, with the signing keys read. Errors name the setting.
    pub fn delivery_settings(&self) -> Result<crate::app::DeliverySettings, ConfigError> {
        use crate::domain::delivery::LinkKey;
        let delivery = &self.delivery;
        let key_of = |setting: &str, text: &str| -> Result<LinkKey, ConfigError> {
            let text = text.trim();
            if text.chars().count() < 32 {
                return Err(ConfigError::Invalid(format!(
                    "{setting}: a link signing key must be at least 32 characters, this one has {}",
                    text.chars().count()
                )));
            }
            Ok(LinkKey::derive(text.as_bytes()))
        };
        let from_file = |setting: &str, path: &str| -> Result<LinkKey, ConfigError> {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError::Invalid(format!("{setting}: cannot read {path}: {e}")))?;
            key_of(&format!("{setting} ({path})"), &text)
        };
        let mut link_keys = Vec::new();
        if !delivery.link_signing_key_file.is_empty() {
            link_keys.push(from_file(
                "delivery.link_signing_key_file",
                &delivery.link_signing_key_file,
            )?);
        } else if !delivery.link_signing_key.is_empty() {
            link_keys.push(key_of(
                "delivery.link_signing_key",
                delivery.link_signing_key.expose(),
            )?);
        }
        let previous = delivery
            .previous_link_signing_key_files
            .split(',')
            .map(str::trim)
            .filter(|path| !path.is_empty())
            .map(|path| from_file("delivery.previous_link_signing_key_files", path))
            .collect::<Result<Vec<_>, _>>()?;
        if !previous.is_empty() && link_keys.is_empty() {
            return Err(ConfigError::Invalid(
                "delivery.previous_link_signing_key_files needs a current key (delivery.link_signing_key or _file)".to_owned(),
            ));
        }
        link_keys.extend(previous);
        Ok(crate::app::DeliverySettings {
            public_url: delivery.public_url.trim_end_matches('/').to_owned(),
            link_keys,
            default_link_ttl: Duration::from_secs(delivery.link_default_ttl_seconds),
            max_link_ttl: Duration::from_secs(delivery.link_max_ttl_seconds),
            cache_memory_bytes: delivery.cache_memory_bytes,
            prefetch: delivery.prefetch,
        })
    }

    /// The master keys, when encryption is configured. Errors name the setting whose key
    /// cannot be used.
    pub fn master_keys(&self) -> Result<Option<crate::app::MasterKeys>, ConfigError> {
        use crate::ingest::sealing::WrappingKey;
        let encryption = &self.encryption;
        let from_file = |setting: &str, path: &str| -> Result<WrappingKey, ConfigError> {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError::Invalid(format!("{setting}: cannot read {path}: {e}")))?;
            WrappingKey::parse(&text).map_err(|e| ConfigError::Invalid(format!("{setting} ({path}): {e}")))
        };
        let current = if !encryption.master_key_file.is_empty() {
            from_file("encryption.master_key_file", &encryption.master_key_file)?
        } else if !encryption.master_key.is_empty() {
            WrappingKey::parse(encryption.master_key.expose())
                .map_err(|e| ConfigError::Invalid(format!("encryption.master_key: {e}")))?
        } else {
            return Ok(None);
        };
        let previous = encryption
            .previous_master_key_files
            .split(',')
            .map(str::trim)
            .filter(|path| !path.is_empty())
            .map(|path| from_file("encryption.previous_master_key_files", path))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(crate::app::MasterKeys::new(current, previous)))
    }

    pub fn s3_store_config(&self) -> crate::storage::S3StoreConfig {
        Self::store_config_of(&self.storage.s3)
    }

    pub fn fallback_store_config(&self) -> crate::storage::S3StoreConfig {
        let mut config = Self::store_config_of(&self.storage.fallback.s3);
        config.apply_failover_retries();
        config.request_timeout = self.storage.failover.request_timeout;
        config
    }

    pub fn failover_config(&self) -> crate::storage::FailoverConfig {
        let mut failover = self.storage.failover.clone();
        // A reconciliation more often than ten times a second would only list buckets.
        failover.reconcile_interval = failover.reconcile_interval.max(Duration::from_millis(100));
        failover
    }

    fn store_config_of(s3: &S3Config) -> crate::storage::S3StoreConfig {
        let mut config = crate::storage::S3StoreConfig::new(&s3.bucket);
        config.endpoint_url = (!s3.endpoint_url.is_empty()).then(|| s3.endpoint_url.clone());
        config.region = s3.region.clone();
        config.access_key_id = (!s3.access_key_id.is_empty()).then(|| s3.access_key_id.clone());
        config.secret_access_key = (!s3.secret_access_key.is_empty()).then(|| s3.secret_access_key.clone());
        config.use_default_credential_chain = s3.access_key_id.is_empty();
        config.force_path_style = s3.force_path_style;
        config.key_prefix = s3.key_prefix.clone();
        config.request_timeout = Duration::from_millis(s3.request_timeout_ms);
        config.multipart_threshold_bytes = s3.multipart_threshold_bytes;
        config.multipart_part_bytes = s3.multipart_part_bytes;
        config
    }
}

/// Sets a nested setting from a variable's text, converting it to the type the default has.
fn set_path(root: &mut serde_json::Value, path: &[String], raw: &str) -> Result<(), String> {
    let mut current = root;
    for (depth, segment) in path.iter().enumerate() {
        let known = current
            .as_object()
            .map(|object| object.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default();
        let Some(next) = current.get_mut(segment.as_str()) else {
            return Err(format!(
                "there is no setting {:?}; known keys here: {}",
                path[..=depth].join("."),
                known.join(", ")
            ));
        };
        current = next;
    }
    let converted = match current {
        serde_json::Value::Bool(_) => serde_json::Value::Bool(
            raw.parse::<bool>()
                .map_err(|_| format!("{raw:?} is not true or false"))?,
        ),
        serde_json::Value::Number(number) if number.is_f64() => raw
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(serde_json::Value::Number)
            .ok_or_else(|| format!("{raw:?} is not a number"))?,
        serde_json::Value::Number(_) => serde_json::Value::Number(
            raw.parse::<i64>()
                .map(serde_json::Number::from)
                .map_err(|_| format!("{raw:?} is not a whole number"))?,
        ),
        serde_json::Value::Object(_) => {
            return Err(format!("{:?} is a section, not a setting", path.join(".")));
        }
        _ => serde_json::Value::String(raw.to_owned()),
    };
    *current = converted;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_are_the_embedded_setup() {
        let config = Config::load(None, env(&[])).unwrap();
        assert_eq!(config.server.grpc_addr, "127.0.0.1:50051");
        assert_eq!(config.server.http_addr, "127.0.0.1:9464");
        assert_eq!(config.storage.backend, Backend::Fs);
        assert!(config.catalog_url().starts_with("sqlite://"));
    }

    #[test]
    fn environment_overrides_with_types() {
        let config = Config::load(
            None,
            env(&[
                ("ARTIFACTD_SERVER__GRPC_ADDR", "0.0.0.0:6000"),
                ("ARTIFACTD_INGEST__ZSTD_LEVEL", "5"),
                ("S3_BUCKET_NAME", "artifacts"),
                ("S3_ENDPOINT_URL", "http://127.0.0.1:9000"),
                ("DATABASE_URL", "postgres://localhost/artifacts"),
                ("UNRELATED", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(config.server.grpc_addr, "0.0.0.0:6000");
        assert_eq!(config.ingest.zstd_level, 5);
        assert_eq!(config.storage.backend, Backend::S3);
        assert_eq!(config.storage.s3.endpoint_url, "http://127.0.0.1:9000");
        assert_eq!(config.catalog_url(), "postgres://localhost/artifacts");
    }

    #[test]
    fn fallback_variables_fill_the_fallback_store() {
        let config = Config::load(
            None,
            env(&[
                ("S3_BUCKET_NAME", "primary"),
                ("S3_FALLBACK_ENABLED", "true"),
                ("S3_FALLBACK_BUCKET_NAME", "fallback"),
                ("S3_FALLBACK_REGION", "eu-west-1"),
                (
                    "ARTIFACTD_STORAGE__FAILOVER__BREAKER__ERROR_RATE_THRESHOLD",
                    "0.25",
                ),
                ("ARTIFACTD_STORAGE__FAILOVER__REQUEST_TIMEOUT_MS", "1500"),
            ]),
        )
        .unwrap();
        assert_eq!(
            config.failover_config().request_timeout,
            Duration::from_millis(1500)
        );
        assert!(config.storage.fallback.enabled);
        assert_eq!(config.storage.fallback.s3.bucket, "fallback");
        assert_eq!(config.fallback_store_config().region, "eu-west-1");
        assert_eq!(config.failover_config().breaker.error_rate_threshold, 0.25);
        let error = Config::load(None, env(&[("S3_FALLBACK_ENABLED", "true")])).unwrap_err();
        assert!(error.to_string().contains("S3_FALLBACK_BUCKET_NAME"), "{error}");
        let error = Config::load(None, env(&[("S3_FALLBACK_ENABLED", "yes")])).unwrap_err();
        assert!(error.to_string().contains("true or false"), "{error}");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let error = Config::load(None, env(&[("ARTIFACTD_SERVER__GRPC_ADRR", "x")])).unwrap_err();
        assert!(
            error.to_string().contains("ARTIFACTD_SERVER__GRPC_ADRR"),
            "{error}"
        );
        assert!(error.to_string().contains("server.grpc_adrr"), "{error}");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("artifactd.toml");
        std::fs::write(&file, "[server]\ngrpc_port = 1\n").unwrap();
        let error = Config::load(Some(&file), env(&[])).unwrap_err();
        assert!(error.to_string().contains("grpc_port"), "{error}");

        let error = Config::load(None, env(&[("ARTIFACTD_INGEST__ZSTD_LEVEL", "high")])).unwrap_err();
        assert!(error.to_string().contains("not a whole number"), "{error}");
    }

    #[test]
    fn file_values_apply() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("artifactd.toml");
        std::fs::write(
            &file,
            "data_dir = \"/var/lib/artifactd\"\n[retention]\ndeleted_retention_seconds = 60\n",
        )
        .unwrap();
        let config = Config::load(Some(&file), env(&[])).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/artifactd"));
        assert_eq!(config.retention.deleted_retention_seconds, 60);
        assert_eq!(config.fs_root(), PathBuf::from("/var/lib/artifactd/blobs"));
    }

    #[test]
    fn bad_listener_and_ingest_settings_are_refused_by_name() {
        for (key, value, needle) in [
            ("ARTIFACTD_SERVER__LINKS_ADDR", "cdn.example", "server.links_addr"),
            ("ARTIFACTD_SERVER__HTTP_ADDR", "9464", "server.http_addr"),
            (
                "ARTIFACTD_INGEST__DELTA_BASE_MEMORY_BYTES",
                "1000",
                "ingest.delta_base_memory_bytes",
            ),
            (
                "ARTIFACTD_INGEST__SHARED_PACK_WINDOW_MS",
                "5000",
                "ingest.shared_pack_window_ms",
            ),
            (
                "ARTIFACTD_SERVER__MEMORY_TRIM_INTERVAL_MS",
                "5",
                "server.memory_trim_interval_ms",
            ),
            (
                "ARTIFACTD_CATALOG__SQLITE_CACHE_BYTES",
                "1000",
                "catalog.sqlite_cache_bytes",
            ),
        ] {
            let error = Config::load(None, env(&[(key, value)])).unwrap_err().to_string();
            assert!(error.contains(needle), "{key}={value}: {error}");
        }
        let config = Config::load(None, env(&[("ARTIFACTD_SERVER__LINKS_ADDR", "0.0.0.0:8080")])).unwrap();
        assert_eq!(config.server.links_addr, "0.0.0.0:8080");
        assert_eq!(Config::load(None, env(&[])).unwrap().server.links_addr, "");
        for trim in ["0", "100"] {
            let config =
                Config::load(None, env(&[("ARTIFACTD_SERVER__MEMORY_TRIM_INTERVAL_MS", trim)])).unwrap();
            assert_eq!(config.server.memory_trim_interval_ms.to_string(), trim);
        }
    }

    #[test]
    fn unsafe_collection_settings_are_refused_by_name() {
        for (key, value, needle) in [
            (
                "ARTIFACTD_RETENTION__GC_GRACE_SECONDS",
                "0",
                "retention.gc_grace_seconds",
            ),
            (
                "ARTIFACTD_RETENTION__GC_GRACE_SECONDS",
                "99999999999999",
                "retention.gc_grace_seconds",
            ),
            (
                "ARTIFACTD_RETENTION__GC_COMPACT_BELOW_PERCENT",
                "150",
                "retention.gc_compact_below_percent",
            ),
            (
                "ARTIFACTD_RETENTION__LEASE_SECONDS",
                "1",
                "retention.lease_seconds",
            ),
        ] {
            let error = Config::load(None, env(&[(key, value)])).unwrap_err().to_string();
            assert!(error.contains(needle), "{key}={value}: {error}");
        }
        let config = Config::load(None, env(&[("ARTIFACTD_RETENTION__GC_GRACE_SECONDS", "1")])).unwrap();
        assert_eq!(config.retention.gc_grace_seconds, 1);
    }
}

//! Bearer JWTs from an OIDC issuer: algorithms pinned by configuration (never HMAC, never
//! `none`), issuer, audience, expiry and not-before with a small leeway, and keys from a
//! JWKS file or URL, selected by `kid` and re-read in the background.

use crate::config::OidcConfig;
use crate::domain::{Error, Result};
use http_body_util::BodyExt;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Longest JWKS document read, and how long fetching one may take.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// What a verified token says about its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIdentity {
    pub subject: String,
    pub groups: Vec<String>,
}

/// The issuer's current keys by `kid`, with the algorithm family each may verify.
type Keys = HashMap<String, (DecodingKey, Option<Algorithm>)>;

pub struct TokenVerifier {
    config: OidcConfig,
    algorithms: Vec<Algorithm>,
    keys: RwLock<Arc<Keys>>,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("issuer", &self.config.issuer)
            .field("algorithms", &self.algorithms)
            .finish()
    }
}

impl TokenVerifier {
    /// Loads the keys once; a verifier without keys would refuse everyone, so failing to
    /// load them at start is an error.
    pub async fn start(config: OidcConfig) -> anyhow::Result<Self> {
        let algorithms = config.accepted_algorithms().map_err(anyhow::Error::msg)?;
        let verifier = Self {
            config,
            algorithms,
            keys: RwLock::new(Arc::default()),
        };
        verifier
            .refresh()
            .await
            .map_err(|e| anyhow::anyhow!("loading the OIDC issuer's keys: {e}"))?;
        Ok(verifier)
    }

    /// Re-reads the keys every `refresh_seconds` until cancelled; a failed read keeps the
    /// keys it had.
    pub async fn run_refresher(self: Arc<Self>, shutdown: CancellationToken) -> Result<(), String> {
        let every = Duration::from_secs(self.config.refresh_seconds.max(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(every) => {}
            }
            if let Err(error) = self.refresh().await {
                tracing::warn!(%error, "the OIDC issuer's keys could not be re-read; keeping the ones loaded before");
            }
        }
    }

    async fn refresh(&self) -> Result<()> {
        let document = if !self.config.jwks_file.is_empty() {
            tokio::fs::read(&self.config.jwks_file)
                .await
                .map_err(|e| Error::Unavailable(format!("reading {}: {e}", self.config.jwks_file)))?
        } else {
            fetch(&self.config.jwks_url).await?
        };
        let set: JwkSet = serde_json::from_slice(&document)
            .map_err(|e| Error::Unavailable(format!("the JWKS is not a key set: {e}")))?;
        let mut keys = Keys::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            // A symmetric key in a public key set would let anyone who reads the set sign.
            if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
                tracing::warn!(%kid, "ignoring a symmetric key in the JWKS");
                continue;
            }
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            // A key that names an algorithm verifies only that one; one that names an
            // algorithm that is not a signature's verifies nothing.
            let pinned = match jwk.common.key_algorithm {
                Some(named) => match Algorithm::try_from(named) {
                    Ok(algorithm) => Some(algorithm),
                    Err(_) => {
                        tracing::warn!(%kid, "ignoring a JWKS key that is not for signatures");
                        continue;
                    }
                },
                None => None,
            };
            match DecodingKey::from_jwk(jwk) {
                Ok(key) => {
                    keys.insert(kid, (key, pinned));
                }
                Err(error) => tracing::warn!(%kid, %error, "ignoring a key of the JWKS"),
            }
        }
        *self.keys.write().expect("keys lock") = Arc::new(keys);
        Ok(())
    }

    /// The caller a token names, if the token is valid now.
    pub fn verify(&self, token: &str) -> Result<TokenIdentity> {
        let refused =
            |why: String| Error::Unauthenticated(format!("the bearer token is not accepted: {why}"));
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| refused(format!("its header does not parse ({e})")))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(refused(format!("algorithm {:?} is not accepted", header.alg)));
        }
        let kid = header
            .kid
            .ok_or_else(|| refused("it names no key (kid)".to_owned()))?;
        let keys = self.keys.read().expect("keys lock").clone();
        let (key, pinned) = keys
            .get(&kid)
            .ok_or_else(|| refused(format!("the issuer has no key {kid:?}")))?;
        if pinned.is_some_and(|pinned| pinned != header.alg) || key.family() != header.alg.family() {
            return Err(refused(format!(
                "key {kid:?} is not for algorithm {:?}",
                header.alg
            )));
        }
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.leeway = self.config.leeway_seconds;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data =
            jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, key, &validation)
                .map_err(|e| refused(e.to_string()))?;
        let claims = data.claims;
        let subject = claims
            .get("sub")
            .and_then(|s| s.as_str())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| refused("it has no subject".to_owned()))?
            .to_owned();
        let groups = match claims.get(&self.config.groups_claim) {
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .filter_map(|g| g.as_str().map(str::to_owned))
                .collect(),
            Some(serde_json::Value::String(one)) => vec![one.clone()],
            _ => Vec::new(),
        };
        Ok(TokenIdentity { subject, groups })
    }
}

/// GETs a JWKS over https (system roots), or http from this machine only: keys fetched in
/// the clear from elsewhere could be anyone's. Bounded in size and time.
async fn fetch(url: &str) -> Result<Vec<u8>> {
    let unavailable = |what: String| Error::Unavailable(format!("fetching the JWKS from {url}: {what}"));
    let parsed: http::Uri = url.parse().map_err(|e| unavailable(format!("not a URL: {e}")))?;
    let loopback = parsed.host().is_some_and(|host| {
        host == "localhost"
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    });
    if parsed.scheme_str() != Some("https") && !loopback {
        return Err(unavailable(
            "only https is accepted for an issuer's keys".to_owned(),
        ));
    }
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| unavailable(format!("no TLS roots: {e}")))?
        .https_or_http()
        .enable_http1()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, http_body_util::Empty<bytes::Bytes>>(connector);
    let uri: http::Uri = url.parse().map_err(|e| unavailable(format!("not a URL: {e}")))?;
    let response = tokio::time::timeout(FETCH_TIMEOUT, client.get(uri))
        .await
        .map_err(|_| unavailable("timed out".to_owned()))?
        .map_err(|e| unavailable(e.to_string()))?;
    if !response.status().is_success() {
        return Err(unavailable(format!("status {}", response.status())));
    }
    let body = http_body_util::Limited::new(response.into_body(), MAX_JWKS_BYTES);
    let bytes = tokio::time::timeout(FETCH_TIMEOUT, body.collect())
        .await
        .map_err(|_| unavailable("timed out".to_owned()))?
        .map_err(|e| unavailable(e.to_string()))?
        .to_bytes();
    Ok(bytes.to_vec())
}

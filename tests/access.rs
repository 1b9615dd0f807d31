//! Identity and permissions over real gRPC, on both catalogs: an authorization matrix built
//! from the contract's own descriptors (every RPC × every kind of bad or too-weak
//! credential, and the allowed cell), ids from another tenant, API keys, role bindings,
//! JWTs signed with generated keys, and OAuth2-Proxy's headers.

mod common;

use artifactd::domain::access::{Permission, Role};
use artifactd::identity::policy::{self, Policy};
use bytes::{Buf, BufMut};
use common::binary::{ADMIN_KEY, ServerOptions, ServerProcess};
use common::postgres::TestDatabase;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor};
use serde_json::{Value, json};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

const T: &str = "acme";
const P: &str = "web";
const ISSUER: &str = "https://id.example.test";
const AUDIENCE: &str = "artifactd";

// ---------------------------------------------------------------------------------------
// Calling any method by name: messages built from JSON with the contract's descriptors.

#[derive(Clone, Default)]
struct RawCodec;
struct RawCoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCoder;
    type Decoder = RawCoder;
    fn encoder(&mut self) -> RawCoder {
        RawCoder
    }
    fn decoder(&mut self) -> RawCoder {
        RawCoder
    }
}

impl Encoder for RawCoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

fn pool() -> DescriptorPool {
    DescriptorPool::decode(artifactd::proto::FILE_DESCRIPTOR_SET).expect("the contract's descriptors")
}

/// Every method of the contract.
fn methods(pool: &DescriptorPool) -> Vec<MethodDescriptor> {
    pool.services()
        .filter(|service| service.package_name() == "artifactd.v1")
        .flat_map(|service| service.methods().collect::<Vec<_>>())
        .collect()
}

fn path(method: &MethodDescriptor) -> String {
    format!("/{}/{}", method.parent_service().full_name(), method.name())
}

fn encode(method: &MethodDescriptor, value: &Value) -> Vec<u8> {
    let message = DynamicMessage::deserialize(method.input(), value.clone())
        .unwrap_or_else(|e| panic!("{}: {value} does not fit its input: {e}", path(method)));
    message.encode_to_vec()
}

/// The code a call ends with: its status, or OK once the first message (or, for a stream
/// that waits for events, a moment of silence) arrives.
async fn call(
    channel: &Channel,
    credential: Credential<'_>,
    method: &MethodDescriptor,
    messages: &[Value],
) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let path: http::uri::PathAndQuery = path(method).parse().unwrap();
    let encoded: Vec<Vec<u8>> = messages.iter().map(|m| encode(method, m)).collect();
    let outcome = if method.is_client_streaming() {
        let mut request = tonic::Request::new(futures::stream::iter(encoded));
        credential.apply(request.metadata_mut());
        grpc.client_streaming(request, path, RawCodec).await.map(|_| ())
    } else if method.is_server_streaming() {
        let mut request = tonic::Request::new(encoded[0].clone());
        credential.apply(request.metadata_mut());
        match grpc.server_streaming(request, path, RawCodec).await {
            Err(status) => Err(status),
            Ok(response) => {
                let mut stream = response.into_inner();
                match tokio::time::timeout(Duration::from_millis(500), stream.message()).await {
                    Ok(Err(status)) => Err(status),
                    _ => Ok(()),
                }
            }
        }
    } else {
        let mut request = tonic::Request::new(encoded[0].clone());
        credential.apply(request.metadata_mut());
        grpc.unary(request, path, RawCodec).await.map(|_| ())
    };
    match outcome {
        Ok(()) => tonic::Status::ok(""),
        Err(status) => status,
    }
}

#[derive(Clone, Copy)]
enum Credential<'a> {
    None,
    Bearer(&'a str),
    /// OAuth2-Proxy's headers, as sent by whoever connects.
    Proxy {
        user: &'a str,
        groups: &'a str,
    },
}

impl Credential<'_> {
    fn apply(&self, metadata: &mut tonic::metadata::MetadataMap) {
        match self {
            Credential::None => {}
            Credential::Bearer(value) => {
                metadata.insert("authorization", format!("Bearer {value}").parse().unwrap());
            }
            Credential::Proxy { user, groups } => {
                metadata.insert("x-forwarded-user", user.parse().unwrap());
                metadata.insert("x-forwarded-groups", groups.parse().unwrap());
                metadata.insert(
                    "x-forwarded-email",
                    format!("{user}@example.test").parse().unwrap(),
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Signed tokens from a generated issuer key.

struct Issuer {
    key: EncodingKey,
    /// The public key as a JWK set, for the server's jwks_file.
    jwks: Value,
    public_raw: Vec<u8>,
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Issuer {
    fn new(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let public_raw = pair.public_key_raw().to_vec();
        Self {
            key: EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes()).unwrap(),
            jwks: json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": b64(&public_raw),
                                   "kid": kid, "alg": "EdDSA", "use": "sig"}]}),
            public_raw,
        }
    }

    fn token(&self, kid: &str, claims: Value) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn claims(sub: &str) -> Value {
    json!({"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600, "nbf": now() - 5,
           "groups": ["platform"]})
}

/// A token with `alg: none` and no signature, as an attacker would send it.
fn unsigned(claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64(&serde_json::to_vec(&json!({"alg": "none", "typ": "JWT", "kid": "k1"})).unwrap()),
        b64(&serde_json::to_vec(claims).unwrap())
    )
}

/// HS256 signed with the issuer's public key as the secret: the classic confusion.
fn confused(issuer: &Issuer, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k1".into());
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_secret(&issuer.public_raw).unwrap(),
    )
    .unwrap()
}

// ---------------------------------------------------------------------------------------
// The server and its fixtures.

async fn server_with_identity(
    issuer: &Issuer,
    trusted: &str,
) -> (ServerProcess, Option<TestDatabase>, tempfile::TempDir) {
    let postgres = std::env::var("ARTIFACTD_ACCESS_TEST_CATALOG").as_deref() == Ok("postgres");
    server_on(issuer, trusted, postgres).await
}

async fn server_on(
    issuer: &Issuer,
    trusted: &str,
    postgres: bool,
) -> (ServerProcess, Option<TestDatabase>, tempfile::TempDir) {
    let files = tempfile::tempdir().unwrap();
    let jwks = files.path().join("jwks.json");
    std::fs::write(&jwks, issuer.jwks.to_string()).unwrap();
    let mut options = ServerOptions::default()
        .env("ARTIFACTD_IDENTITY__OIDC__ISSUER", ISSUER)
        .env("ARTIFACTD_IDENTITY__OIDC__AUDIENCE", AUDIENCE)
        .env("ARTIFACTD_IDENTITY__OIDC__JWKS_FILE", jwks.display().to_string())
        .env("ARTIFACTD_IDENTITY__OIDC__LEEWAY_SECONDS", "5")
        .env("ARTIFACTD_IDENTITY__PROXY__TRUSTED_ADDRESSES", trusted)
        .env("ARTIFACTD_ENCRYPTION__MASTER_KEY", "11".repeat(32));
    let database = if postgres {
        let database = TestDatabase::create().await;
        options = options.env("DATABASE_URL", database.url.clone());
        Some(database)
    } else {
        None
    };
    (ServerProcess::start_with(options), database, files)
}

/// One unary call of `method` (by name) with `credential`: the answer as JSON, or its status.
async fn unary(
    channel: &Channel,
    pool: &DescriptorPool,
    credential: Credential<'_>,
    method: &str,
    message: &Value,
) -> Result<Value, tonic::Status> {
    let method = methods(pool).into_iter().find(|m| m.name() == method).unwrap();
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(encode(&method, message));
    credential.apply(request.metadata_mut());
    let response = grpc
        .unary(request, path(&method).parse().unwrap(), RawCodec)
        .await?
        .into_inner();
    let decoded = DynamicMessage::decode(method.output(), response.as_slice()).unwrap();
    Ok(serde_json::to_value(&decoded).unwrap())
}

async fn admin_call(channel: &Channel, pool: &DescriptorPool, method: &str, message: Value) -> Value {
    unary(channel, pool, Credential::Bearer(&ADMIN_KEY), method, &message)
        .await
        .unwrap_or_else(|status| panic!("{method} {message}: {status:?}"))
}

async fn key(
    channel: &Channel,
    pool: &DescriptorPool,
    tenant: &str,
    role: &str,
    ttl: u64,
) -> (String, String) {
    let created = admin_call(
        channel,
        pool,
        "CreateApiKey",
        json!({"tenant": tenant, "role": role, "name": format!("{role} of {tenant}"), "ttlSeconds": ttl}),
    )
    .await;
    (
        created["secret"].as_str().unwrap().to_owned(),
        created["apiKey"]["keyId"].as_str().unwrap().to_owned(),
    )
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Viewer => "ROLE_VIEWER",
        Role::Contributor => "ROLE_CONTRIBUTOR",
        Role::Maintainer => "ROLE_MAINTAINER",
        Role::Admin => "ROLE_ADMIN",
        Role::TenantAdmin => "ROLE_TENANT_ADMIN",
        Role::ServerAdmin => "ROLE_SERVER_ADMIN",
    }
}

/// A backup of one artifact taken with the admin key; its id.
async fn backup_of(channel: &Channel, pool: &DescriptorPool, artifact_id: &str) -> String {
    let method = methods(pool)
        .into_iter()
        .find(|m| m.name() == "CreateBackup")
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(encode(
        &method,
        &json!({"tenant": T, "project": P, "artifactId": artifact_id}),
    ));
    Credential::Bearer(&ADMIN_KEY).apply(request.metadata_mut());
    let mut stream = grpc
        .server_streaming(request, path(&method).parse().unwrap(), RawCodec)
        .await
        .unwrap()
        .into_inner();
    while let Some(message) = stream.message().await.unwrap() {
        let decoded = DynamicMessage::decode(method.output(), message.as_slice()).unwrap();
        let value = serde_json::to_value(&decoded).unwrap();
        if let Some(id) = value["backup"]["id"].as_str() {
            return id.to_owned();
        }
    }
    panic!("the backup stream ended without its backup")
}

/// A fresh draft artifact (1.0.0) of acme/web; its id.
async fn artifact(channel: &Channel, pool: &DescriptorPool, n: usize) -> String {
    let method = methods(pool)
        .into_iter()
        .find(|m| m.name() == "CreateArtifact")
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let messages = vec![
        encode(
            &method,
            &json!({"header": {"tenant": T, "project": P, "artifactType": "doc", "name": format!("fixture-{n}.md"),
                               "initialVersion": "1.0.0"}}),
        ),
        encode(&method, &json!({"data": b64(b"# Fixture\n")})),
        encode(&method, &json!({"finish": {}})),
    ];
    let mut request = tonic::Request::new(futures::stream::iter(messages));
    Credential::Bearer(&ADMIN_KEY).apply(request.metadata_mut());
    let response = grpc
        .client_streaming(
            request,
            "/artifactd.v1.ArtifactService/CreateArtifact".parse().unwrap(),
            RawCodec,
        )
        .await
        .unwrap()
        .into_inner();
    let decoded = DynamicMessage::decode(method.output(), response.as_slice()).unwrap();
    serde_json::to_value(&decoded).unwrap()["artifact"]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Adds version 1.1.0 to a fixture artifact, so that 1.0.0 is no longer its latest.
async fn second_version(channel: &Channel, pool: &DescriptorPool, id: &str) {
    let method = methods(pool)
        .into_iter()
        .find(|m| m.name() == "UpdateArtifact")
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let messages = vec![
        encode(
            &method,
            &json!({"header": {"tenant": T, "project": P, "artifactId": id, "bump": "BUMP_KIND_MINOR"}}),
        ),
        encode(&method, &json!({"data": b64(b"# Fixture, again\n")})),
        encode(&method, &json!({"finish": {}})),
    ];
    let mut request = tonic::Request::new(futures::stream::iter(messages));
    Credential::Bearer(&ADMIN_KEY).apply(request.metadata_mut());
    let _ = grpc
        .client_streaming(
            request,
            "/artifactd.v1.ArtifactService/UpdateArtifact".parse().unwrap(),
            RawCodec,
        )
        .await
        .unwrap();
}

/// The messages of one call of `method` that succeeds for a caller allowed to make it, after
/// whatever preparation it needs (done with the admin key). A method the contract gains
/// without a case here fails the test.
async fn allowed_call(
    channel: &Channel,
    pool: &DescriptorPool,
    method: &MethodDescriptor,
    n: usize,
) -> Vec<Value> {
    let id = artifact(channel, pool, n).await;
    let scoped = |extra: Value| {
        let mut message = json!({"tenant": T, "project": P});
        for (k, v) in extra.as_object().unwrap() {
            message[k] = v.clone();
        }
        message
    };
    match method.name() {
        "CreateArtifact" => vec![
            json!({"header": {"tenant": T, "project": P, "artifactType": "doc", "name": format!("made-{n}.md")}}),
            json!({"data": b64(b"made\n")}),
            json!({"finish": {}}),
        ],
        "UpdateArtifact" => vec![
            json!({"header": {"tenant": T, "project": P, "artifactId": id, "bump": "BUMP_KIND_MINOR"}}),
            json!({"data": b64(b"changed\n")}),
            json!({"finish": {}}),
        ],
        "GetArtifact"
        | "DownloadArtifact"
        | "CreateDownloadLink"
        | "ListVersions"
        | "GetMetadata"
        | "GetStorageStats"
        | "DeleteArtifact"
        | "ListAliases"
        | "GetChangeHistory"
        | "ResolveDependencies"
        | "ListDependents"
        | "GetProvenance" => {
            vec![scoped(json!({"artifactId": id}))]
        }
        "UndeleteArtifact" => {
            admin_call(channel, pool, "DeleteArtifact", scoped(json!({"artifactId": id}))).await;
            vec![scoped(json!({"artifactId": id}))]
        }
        "ListArtifacts" => vec![scoped(json!({}))],
        "UpdateArtifactLabels" => vec![scoped(json!({"artifactId": id, "labels": {"tags": ["x"]}}))],
        "TransitionVersion" => vec![scoped(
            json!({"artifactId": id, "version": "1.0.0", "targetState": "LIFECYCLE_STATE_REVIEW"}),
        )],
        "SetAlias" => vec![scoped(
            json!({"artifactId": id, "alias": "prod", "version": "1.0.0"}),
        )],
        "DeleteAlias" => {
            admin_call(
                channel,
                pool,
                "SetAlias",
                scoped(json!({"artifactId": id, "alias": "prod", "version": "1.0.0"})),
            )
            .await;
            vec![scoped(json!({"artifactId": id, "alias": "prod"}))]
        }
        "DiffVersions" => vec![scoped(
            json!({"artifactId": id, "fromVersion": "1.0.0", "toVersion": "1.0.0"}),
        )],
        "WatchEvents" => vec![scoped(json!({"fromOldest": true}))],
        "RecordRunInputs" => vec![scoped(
            json!({"runId": format!("run-{n}"), "inputs": [{"artifactId": id, "version": "1.0.0"}]}),
        )],
        "GetRun" => {
            admin_call(
                channel,
                pool,
                "RecordRunInputs",
                scoped(
                    json!({"runId": format!("read-{n}"), "inputs": [{"artifactId": id, "version": "1.0.0"}]}),
                ),
            )
            .await;
            vec![json!({"tenant": T, "runId": format!("read-{n}")})]
        }
        "LinkArtifact" => vec![scoped(
            json!({"artifactId": id, "targetProject": format!("other{n}")}),
        )],
        "UnlinkArtifact" => {
            admin_call(
                channel,
                pool,
                "LinkArtifact",
                scoped(json!({"artifactId": id, "targetProject": format!("other{n}")})),
            )
            .await;
            vec![json!({"tenant": T, "project": format!("other{n}"), "artifactId": id})]
        }
        "Search" => vec![scoped(json!({"query": "fixture"}))],
        "SearchByTags" => vec![scoped(json!({"tags": ["x"]}))],
        "SearchByMetadata" => vec![scoped(json!({"filters": [{"field": "type", "equals": "doc"}]}))],
        "SearchByDependencies" => vec![scoped(json!({"dependsOn": {"artifactId": id}}))],
        "GetServerStatus" | "TestFallback" | "GetFallbackStatus" | "GetFallbackMetrics" | "WhoAmI" => {
            vec![json!({})]
        }
        "SyncFallback" => vec![json!({"dryRun": true})],
        "CheckConsistency" => vec![json!({"readData": true})],
        "CreateApiKey" => vec![json!({"tenant": T, "role": "ROLE_VIEWER", "name": "matrix"})],
        "ListApiKeys" => vec![json!({"tenant": T})],
        "RevokeApiKey" => {
            let (_, key_id) = key(channel, pool, T, "ROLE_VIEWER", 0).await;
            vec![json!({"tenant": T, "keyId": key_id})]
        }
        "GrantRole" => vec![
            json!({"tenant": T, "project": P, "subjectKind": "SUBJECT_KIND_USER",
                                   "subject": format!("user{n}"), "role": "ROLE_VIEWER"}),
        ],
        "RevokeRole" => vec![
            json!({"tenant": T, "project": P, "subjectKind": "SUBJECT_KIND_USER",
                                    "subject": format!("user{n}")}),
        ],
        "ListRoleBindings" => vec![json!({"tenant": T, "project": P})],
        "GetAuditTrail" | "ExportAuditLog" | "VerifyAuditLog" | "GetAccessFlags" => {
            vec![json!({"tenant": T})]
        }
        "SetArtifactPermissions" => vec![scoped(json!({"artifactId": id, "grants": [
            {"subjectKind": "SUBJECT_KIND_PROJECT", "subject": "mobile", "role": "ROLE_VIEWER"}]}))],
        "GetArtifactPermissions" => vec![scoped(json!({"artifactId": id}))],
        "GetEncryptionStatus" | "RotateTenantKey" => vec![json!({"tenant": T})],
        "DestroyTenantKey" => vec![json!({"tenant": T, "confirmTenant": T})],
        "RewrapTenantKeys" => vec![json!({})],
        "DeleteVersion" => {
            second_version(channel, pool, &id).await;
            vec![scoped(json!({"artifactId": id, "version": "1.0.0"}))]
        }
        "UndeleteVersion" => {
            second_version(channel, pool, &id).await;
            admin_call(
                channel,
                pool,
                "DeleteVersion",
                scoped(json!({"artifactId": id, "version": "1.0.0"})),
            )
            .await;
            vec![scoped(json!({"artifactId": id, "version": "1.0.0"}))]
        }
        "CollectGarbage" => vec![json!({"dryRun": true})],
        "ListGarbageCollections" => vec![json!({"limit": 5})],
        "CreateRetentionPolicy" => vec![scoped(
            json!({"name": format!("policy-{n}"), "document": "action: archive\nkeep: {latest: 2}\n"}),
        )],
        "ListRetentionPolicies" | "ListLegalHolds" | "ListTrash" => vec![scoped(json!({}))],
        "GetRetentionPolicy"
        | "UpdateRetentionPolicy"
        | "DeleteRetentionPolicy"
        | "EvaluateRetentionPolicy"
        | "ExecuteRetentionPolicy"
        | "ListRetentionRuns"
        | "GetRetentionRun" => {
            let created = admin_call(
                channel,
                pool,
                "CreateRetentionPolicy",
                scoped(json!({"name": format!("policy-{n}"), "document": "action: archive\nkeep: {latest: 2}\n"})),
            )
            .await;
            let policy_id = created["policy"]["id"].as_str().unwrap().to_owned();
            match method.name() {
                "UpdateRetentionPolicy" => vec![scoped(
                    json!({"policyId": policy_id, "name": format!("renamed-{n}"),
                    "document": "action: delete\nkeep: {latest: 3}\n"}),
                )],
                "GetRetentionRun" => {
                    let run = admin_call(
                        channel,
                        pool,
                        "EvaluateRetentionPolicy",
                        scoped(json!({"policyId": policy_id})),
                    )
                    .await;
                    vec![scoped(json!({"runId": run["run"]["id"]}))]
                }
                _ => vec![scoped(json!({"policyId": policy_id}))],
            }
        }
        "SetLegalHold" => vec![scoped(json!({"artifactId": id, "reason": "matrix"}))],
        "ReleaseLegalHold" => {
            admin_call(
                channel,
                pool,
                "SetLegalHold",
                scoped(json!({"artifactId": id, "reason": "matrix"})),
            )
            .await;
            vec![scoped(json!({"artifactId": id}))]
        }
        "PurgeTrash" => {
            admin_call(channel, pool, "DeleteArtifact", scoped(json!({"artifactId": id}))).await;
            vec![scoped(json!({"artifactId": id}))]
        }
        "CreateBackup" => vec![scoped(json!({"artifactId": id}))],
        "ListBackups" | "ListBackupSchedules" | "GetRecoveryWindow" => vec![scoped(json!({}))],
        "SetBackupSchedule" => vec![scoped(json!({"intervalSeconds": 3600, "keep": 2}))],
        "RestoreBackup" => {
            let now = artifactd::domain::Timestamp(artifactd::domain::now_micros()).to_rfc3339();
            vec![scoped(
                json!({"pointInTime": {"artifactId": id, "at": now}, "dryRun": true}),
            )]
        }
        "GetBackup" | "DeleteBackup" => {
            // A backup taken with the admin key, found on the store by its id.
            let backup_id = backup_of(channel, pool, &id).await;
            vec![scoped(json!({"backupId": backup_id}))]
        }
        other => panic!("{other}: the authorization matrix has no call for this method; add one"),
    }
}

/// Codes an allowed call may end with when the call itself has nothing to act on: the
/// fallback calls on a server without a fallback store.
fn allowed_code(method: &MethodDescriptor, code: Code) -> bool {
    code == Code::Ok
        || (method.parent_service().name() == "FallbackService" && code == Code::FailedPrecondition)
}

fn lower(role: Role) -> Option<Role> {
    Role::ALL.into_iter().filter(|r| *r < role).max()
}

async fn authorization_matrix(postgres: bool) {
    let issuer = Issuer::new("k1");
    let stranger = Issuer::new("k1");
    // The proxy's headers are believed only from 10.9.9.9, which the tests never are.
    let (server, _database, _files) = server_on(&issuer, "10.9.9.9", postgres).await;
    let channel = server.raw_channel().await;
    let pool = pool();
    // Keys for every grantable role in acme, another tenant's most powerful key, a revoked
    // key and one that has expired.
    let mut by_role = std::collections::HashMap::new();
    for role in [
        Role::Viewer,
        Role::Contributor,
        Role::Maintainer,
        Role::Admin,
        Role::TenantAdmin,
    ] {
        by_role.insert(role, key(&channel, &pool, T, role_name(role), 0).await.0);
    }
    by_role.insert(Role::ServerAdmin, ADMIN_KEY.clone());
    let (other_tenant, _) = key(&channel, &pool, "globex", "ROLE_TENANT_ADMIN", 0).await;
    let (revoked, revoked_id) = key(&channel, &pool, T, "ROLE_TENANT_ADMIN", 0).await;
    admin_call(
        &channel,
        &pool,
        "RevokeApiKey",
        json!({"tenant": T, "keyId": revoked_id}),
    )
    .await;
    let (expired, _) = key(&channel, &pool, T, "ROLE_TENANT_ADMIN", 1).await;
    // A user with every role a binding can give in acme, known to the proxy and the issuer.
    admin_call(
        &channel,
        &pool,
        "GrantRole",
        json!({"tenant": T, "subjectKind": "SUBJECT_KIND_USER", "subject": "root", "role": "ROLE_TENANT_ADMIN"}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let mut expired_claims = claims("root");
    expired_claims["exp"] = json!(now() - 120);
    let mut wrong_audience = claims("root");
    wrong_audience["aud"] = json!("someone-else");
    let mut wrong_issuer = claims("root");
    wrong_issuer["iss"] = json!("https://evil.example.test");
    let mut not_yet = claims("root");
    not_yet["nbf"] = json!(now() + 600);
    let refused: Vec<(&str, String)> = vec![
        ("no credential", String::new()),
        ("expired token", issuer.token("k1", expired_claims)),
        ("token not valid yet", issuer.token("k1", not_yet)),
        ("bad signature", stranger.token("k1", claims("root"))),
        ("alg none", unsigned(&claims("root"))),
        ("HMAC with the public key", confused(&issuer, &claims("root"))),
        ("wrong audience", issuer.token("k1", wrong_audience)),
        ("wrong issuer", issuer.token("k1", wrong_issuer)),
        ("unknown kid", issuer.token("k2", claims("root"))),
        ("revoked key", revoked),
        ("expired key", expired),
        ("garbage", "adk_not-a-key".to_owned()),
    ];
    let mut cells = 0;
    for (n, method) in methods(&pool).into_iter().enumerate() {
        let route = path(&method);
        let policy = policy::of(&route).unwrap_or_else(|| panic!("{route} has no policy"));
        let messages = allowed_call(&channel, &pool, &method, n).await;
        for (what, credential) in &refused {
            let credential = if credential.is_empty() {
                Credential::None
            } else {
                Credential::Bearer(credential)
            };
            let status = call(&channel, credential, &method, &messages).await;
            assert_eq!(
                status.code(),
                Code::Unauthenticated,
                "{route} with {what}: {status:?}"
            );
            cells += 1;
        }
        let status = call(
            &channel,
            Credential::Proxy {
                user: "root",
                groups: "",
            },
            &method,
            &messages,
        )
        .await;
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "{route} with the proxy's headers from an untrusted peer: {status:?}"
        );
        let needed = match policy {
            Policy::Authenticated => None,
            Policy::Scoped(permission) => Some(permission),
        };
        // Another tenant's key: the scope does not exist for it; the server's own
        // operations are simply not allowed.
        let status = call(&channel, Credential::Bearer(&other_tenant), &method, &messages).await;
        let expected = match needed {
            None => Code::Ok,
            Some(Permission::Operate) => Code::PermissionDenied,
            Some(_) => Code::NotFound,
        };
        assert_eq!(
            status.code(),
            expected,
            "{route} with another tenant's key: {status:?}"
        );
        // One role too low (a viewer's method has none lower: the other tenant's key was it).
        if let Some(permission) = needed
            && let Some(too_low) = lower(permission.least_role())
        {
            let status = call(
                &channel,
                Credential::Bearer(&by_role[&too_low]),
                &method,
                &messages,
            )
            .await;
            assert_eq!(
                status.code(),
                Code::PermissionDenied,
                "{route} with {too_low} (needs {}): {status:?}",
                permission.least_role()
            );
            cells += 1;
        }
        // Allowed: the least role that may, by key; and the same as a person by token.
        let least = needed.map_or(Role::Viewer, |p| p.least_role());
        let status = call(&channel, Credential::Bearer(&by_role[&least]), &method, &messages).await;
        assert!(
            allowed_code(&method, status.code()),
            "{route} with {least}: {status:?}"
        );
        if least <= Role::TenantAdmin {
            let messages = allowed_call(&channel, &pool, &method, n + 1000).await;
            let token = issuer.token("k1", claims("root"));
            let status = call(&channel, Credential::Bearer(&token), &method, &messages).await;
            assert!(
                allowed_code(&method, status.code()),
                "{route} by token for root: {status:?}"
            );
        }
        cells += 4;
    }
    assert!(cells > 500, "{cells} cells");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_denies_bad_and_weak_credentials_and_allows_the_right_role_sqlite() {
    authorization_matrix(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_denies_bad_and_weak_credentials_and_allows_the_right_role_postgres() {
    authorization_matrix(true).await;
}

#[test]
fn every_method_of_the_contract_has_a_policy_and_nothing_else_does() {
    let pool = pool();
    for method in methods(&pool) {
        assert!(
            policy::of(&path(&method)).is_some(),
            "{} has no policy",
            path(&method)
        );
    }
    assert!(policy::of("/artifactd.v1.ArtifactService/NoSuchMethod").is_none());
    assert!(policy::of("/artifactd.v1.NoSuchService/GetArtifact").is_none());
    assert!(policy::is_open("/grpc.health.v1.Health/Check"));
    assert!(!policy::is_open("/artifactd.v1.AccessService/WhoAmI"));
}

/// Every RPC that takes an artifact id, given the id of another tenant's artifact: NOT_FOUND
/// every time, for the server admin (the id is simply not in that tenant) and for the other
/// tenant's own admin (the scope is hidden), and the artifact is unchanged afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_from_another_tenant_are_not_found_and_nothing_changes() {
    let issuer = Issuer::new("k1");
    for postgres in [false, true] {
        let (server, _database, _files) = server_on(&issuer, "", postgres).await;
        let channel = server.raw_channel().await;
        let pool = pool();
        let (globex_admin, _) = key(&channel, &pool, "globex", "ROLE_TENANT_ADMIN", 0).await;
        let mut checked = 0;
        for (n, method) in methods(&pool).into_iter().enumerate() {
            let messages = allowed_call(&channel, &pool, &method, n).await;
            let takes_id = messages.iter().any(|m| {
                let text = m.to_string();
                text.contains("\"artifactId\"")
            });
            if !takes_id {
                continue;
            }
            let id = messages
                .iter()
                .find_map(|m| {
                    m.get("artifactId")
                        .or_else(|| m.get("header").and_then(|h| h.get("artifactId")))
                        .or_else(|| m.get("dependsOn").and_then(|d| d.get("artifactId")))
                        .or_else(|| m.get("inputs").and_then(|i| i[0].get("artifactId")))
                        .or_else(|| m.get("pointInTime").and_then(|p| p.get("artifactId")))
                        .and_then(|v| v.as_str())
                })
                .unwrap()
                .to_owned();
            let before = snapshot(&channel, &pool, &id).await;
            let elsewhere: Vec<Value> = messages
                .iter()
                .map(|m| {
                    let text = m.to_string().replace(&format!("\"{T}\""), "\"globex\"");
                    serde_json::from_str(&text).unwrap()
                })
                .collect();
            for (who, credential) in [
                ("the server admin", ADMIN_KEY.as_str()),
                ("globex's admin", &globex_admin),
            ] {
                let status = call(&channel, Credential::Bearer(credential), &method, &elsewhere).await;
                // SearchByDependencies answers an empty page for an id it does not know.
                let expected = if method.name() == "SearchByDependencies" {
                    [Code::NotFound, Code::Ok]
                } else {
                    [Code::NotFound; 2]
                };
                assert!(
                    expected.contains(&status.code()),
                    "{} by {who} with acme's id in globex: {status:?}",
                    path(&method)
                );
            }
            let after = snapshot(&channel, &pool, &id).await;
            assert_eq!(before, after, "{}: acme's artifact changed", path(&method));
            checked += 1;
        }
        assert!(checked >= 20, "{checked} id-taking methods");
    }
}

/// What acme's artifact looks like: its versions and their states, or that it is deleted.
async fn snapshot(channel: &Channel, pool: &DescriptorPool, id: &str) -> Result<Value, Code> {
    let versions = json!({"tenant": T, "project": P, "artifactId": id});
    unary(
        channel,
        pool,
        Credential::Bearer(&ADMIN_KEY),
        "ListVersions",
        &versions,
    )
    .await
    .map_err(|status| status.code())
}

/// Keys: shown once, scoped to projects, never above their maker; bindings give people
/// roles by user and by group, through tokens and through the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_bindings_tokens_and_the_proxy_decide_together() {
    let issuer = Issuer::new("k1");
    let (server, _database, _files) = server_with_identity(&issuer, "127.0.0.1").await;
    let channel = server.raw_channel().await;
    let pool = pool();
    let method = |name: &str| methods(&pool).into_iter().find(|m| m.name() == name).unwrap();

    // A key limited to one project sees nothing elsewhere in its tenant.
    let created = admin_call(
        &channel,
        &pool,
        "CreateApiKey",
        json!({"tenant": T, "projects": [P], "role": "ROLE_CONTRIBUTOR", "name": "web bot"}),
    )
    .await;
    let web_bot = created["secret"].as_str().unwrap().to_owned();
    let listed = admin_call(&channel, &pool, "ListApiKeys", json!({"tenant": T})).await;
    assert!(
        !listed.to_string().contains(&web_bot[21..]),
        "a listing never shows a secret"
    );
    let list = method("ListArtifacts");
    let status = call(
        &channel,
        Credential::Bearer(&web_bot),
        &list,
        &[json!({"tenant": T, "project": P})],
    )
    .await;
    assert_eq!(status.code(), Code::Ok, "{status:?}");
    let status = call(
        &channel,
        Credential::Bearer(&web_bot),
        &list,
        &[json!({"tenant": T, "project": "api"})],
    )
    .await;
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    // A contributor may send a version to review, not approve it.
    let id = artifact(&channel, &pool, 1).await;
    let transition = method("TransitionVersion");
    let to = |state: &str| json!({"tenant": T, "project": P, "artifactId": id, "version": "1.0.0", "targetState": state});
    let status = call(
        &channel,
        Credential::Bearer(&web_bot),
        &transition,
        &[to("LIFECYCLE_STATE_REVIEW")],
    )
    .await;
    assert_eq!(status.code(), Code::Ok, "{status:?}");
    let status = call(
        &channel,
        Credential::Bearer(&web_bot),
        &transition,
        &[to("LIFECYCLE_STATE_APPROVED")],
    )
    .await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // A project admin manages its project's bindings, never the tenant's, never above itself.
    admin_call(
        &channel,
        &pool,
        "GrantRole",
        json!({"tenant": T, "project": P, "subjectKind": "SUBJECT_KIND_USER", "subject": "ada", "role": "ROLE_ADMIN"}),
    )
    .await;
    let ada = issuer.token("k1", claims("ada"));
    let grant = method("GrantRole");
    let give = |project: &str, subject: &str, role: &str| json!({"tenant": T, "project": project, "subjectKind": "SUBJECT_KIND_GROUP", "subject": subject, "role": role});
    let status = call(
        &channel,
        Credential::Bearer(&ada),
        &grant,
        &[give(P, "writers", "ROLE_CONTRIBUTOR")],
    )
    .await;
    assert_eq!(status.code(), Code::Ok, "{status:?}");
    let status = call(
        &channel,
        Credential::Bearer(&ada),
        &grant,
        &[give(P, "bosses", "ROLE_TENANT_ADMIN")],
    )
    .await;
    assert_eq!(status.code(), Code::PermissionDenied, "above itself: {status:?}");
    let status = call(
        &channel,
        Credential::Bearer(&ada),
        &grant,
        &[give("", "everyone", "ROLE_VIEWER")],
    )
    .await;
    assert_eq!(status.code(), Code::PermissionDenied, "tenant-wide: {status:?}");
    let status = call(
        &channel,
        Credential::Bearer(&ADMIN_KEY),
        &grant,
        &[give("", "x", "ROLE_SERVER_ADMIN")],
    )
    .await;
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "the server admin role is never given: {status:?}"
    );
    let keys = method("CreateApiKey");
    let status = call(
        &channel,
        Credential::Bearer(&ada),
        &keys,
        &[json!({"tenant": T, "role": "ROLE_VIEWER"})],
    )
    .await;
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "keys need the tenant admin: {status:?}"
    );

    // The group binding reaches a person through the proxy (trusted: 127.0.0.1) and through a
    // token's groups claim alike; who wrote is who the proxy or token says.
    let create = method("CreateArtifact");
    let upload = |name: &str| {
        vec![
            json!({"header": {"tenant": T, "project": P, "artifactType": "doc", "name": name}}),
            json!({"data": b64(b"x\n")}),
            json!({"finish": {}}),
        ]
    };
    let status = call(
        &channel,
        Credential::Proxy {
            user: "bob",
            groups: "writers, other",
        },
        &create,
        &upload("bob.md"),
    )
    .await;
    assert_eq!(status.code(), Code::Ok, "{status:?}");
    let status = call(
        &channel,
        Credential::Proxy {
            user: "eve",
            groups: "other",
        },
        &create,
        &upload("eve.md"),
    )
    .await;
    assert_eq!(status.code(), Code::NotFound, "no role in acme: {status:?}");
    let mut writer = claims("carol");
    writer["groups"] = json!(["writers"]);
    let status = call(
        &channel,
        Credential::Bearer(&issuer.token("k1", writer)),
        &create,
        &upload("carol.md"),
    )
    .await;
    assert_eq!(status.code(), Code::Ok, "{status:?}");
    let got = admin_call(
        &channel,
        &pool,
        "GetArtifact",
        json!({"tenant": T, "project": P, "coordinates": {"artifactType": "doc", "name": "bob.md"}}),
    )
    .await;
    assert_eq!(got["artifact"]["createdBy"], "bob");
    let who = method("WhoAmI");
    let status = call(
        &channel,
        Credential::Proxy {
            user: "eve",
            groups: "",
        },
        &who,
        &[json!({})],
    )
    .await;
    assert_eq!(
        status.code(),
        Code::Ok,
        "anyone proven may ask who it is: {status:?}"
    );

    // What reaches into other projects shows only what the caller could read there: a
    // secret project's document depending on a web artifact is not among the dependents
    // the web bot sees, and the bot can neither name nor depend on the secret one.
    let web_doc = artifact(&channel, &pool, 2).await;
    let create_as_admin = method("CreateArtifact");
    let secret_doc = vec![
        json!({"header": {"tenant": T, "project": "secret", "artifactType": "doc", "name": "plan.md",
                          "dependencies": [{"artifactId": web_doc, "requirement": "*", "kind": "references"}]}}),
        json!({"data": b64(b"# Secret plan\n")}),
        json!({"finish": {}}),
    ];
    let status = call(
        &channel,
        Credential::Bearer(&ADMIN_KEY),
        &create_as_admin,
        &secret_doc,
    )
    .await;
    assert_eq!(status.code(), Code::Ok, "{status:?}");
    let dependents = json!({"tenant": T, "project": P, "artifactId": web_doc});
    let seen = admin_call(&channel, &pool, "ListDependents", dependents.clone()).await;
    assert!(seen.to_string().contains("plan.md"), "the admin sees it: {seen}");
    let bot_sees = unary(
        &channel,
        &pool,
        Credential::Bearer(&web_bot),
        "ListDependents",
        &dependents,
    )
    .await
    .unwrap();
    assert!(
        !bot_sees.to_string().contains("plan.md"),
        "the web bot does not: {bot_sees}"
    );
    let by_name = json!({"tenant": T, "project": P,
                         "dependedOnBy": {"coordinates": {"project": "secret", "artifactType": "doc", "name": "plan.md"}}});
    let status = call(
        &channel,
        Credential::Bearer(&web_bot),
        &method("SearchByDependencies"),
        &[by_name],
    )
    .await;
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let depends_on_secret = vec![
        json!({"header": {"tenant": T, "project": P, "artifactType": "doc", "name": "probe.md",
                          "dependencies": [{"coordinates": {"project": "secret", "artifactType": "doc", "name": "plan.md"},
                                            "requirement": "*", "kind": "references"}]}}),
        json!({"data": b64(b"x\n")}),
        json!({"finish": {}}),
    ];
    let status = call(
        &channel,
        Credential::Bearer(&web_bot),
        &create,
        &depends_on_secret,
    )
    .await;
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    // Reopening an archived version takes a maintainer, as archiving does.
    let archive = |state: &str| json!({"tenant": T, "project": P, "artifactId": web_doc, "version": "1.0.0", "targetState": state});
    admin_call(
        &channel,
        &pool,
        "TransitionVersion",
        archive("LIFECYCLE_STATE_ARCHIVED"),
    )
    .await;
    let status = call(
        &channel,
        Credential::Bearer(&web_bot),
        &transition,
        &[archive("LIFECYCLE_STATE_REVIEW")],
    )
    .await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // The server admin keys are listed and revocable too, by a server admin only.
    let server_keys = admin_call(&channel, &pool, "ListApiKeys", json!({"tenant": ""})).await;
    assert!(
        server_keys.to_string().contains(&ADMIN_KEY[4..20]),
        "{server_keys}"
    );
    let status = call(
        &channel,
        Credential::Bearer(&ada),
        &method("ListApiKeys"),
        &[json!({"tenant": ""})],
    )
    .await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // Revoking takes effect on the next call.
    let status = call(
        &channel,
        Credential::Bearer(&web_bot),
        &list,
        &[json!({"tenant": T, "project": P})],
    )
    .await;
    assert_eq!(status.code(), Code::Ok);
    admin_call(
        &channel,
        &pool,
        "RevokeApiKey",
        json!({"tenant": T, "keyId": created["apiKey"]["keyId"]}),
    )
    .await;
    let status = call(
        &channel,
        Credential::Bearer(&web_bot),
        &list,
        &[json!({"tenant": T, "project": P})],
    )
    .await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}

/// Keys fetched from the issuer's JWKS URL and re-read in the background: a key the issuer
/// rotates in is accepted once re-read, and one it drops is refused; keys over plain http
/// from anywhere but this machine are refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_a_jwks_url_are_re_read_and_rotated() {
    let old = Issuer::new("k1");
    let new = Issuer::new("k2");
    let served = std::sync::Arc::new(std::sync::Mutex::new(old.jwks.to_string()));
    let app = {
        let served = served.clone();
        axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let served = served.clone();
                async move { served.lock().unwrap().clone() }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let server = ServerProcess::start_with(
        ServerOptions::default()
            .env("ARTIFACTD_IDENTITY__OIDC__ISSUER", ISSUER)
            .env("ARTIFACTD_IDENTITY__OIDC__AUDIENCE", AUDIENCE)
            .env("ARTIFACTD_IDENTITY__OIDC__JWKS_URL", url)
            .env("ARTIFACTD_IDENTITY__OIDC__REFRESH_SECONDS", "1"),
    );
    let channel = server.raw_channel().await;
    let pool = pool();
    let who = methods(&pool).into_iter().find(|m| m.name() == "WhoAmI").unwrap();
    let as_user = |issuer: &Issuer, kid: &str| issuer.token(kid, claims("ada"));
    let status = call(
        &channel,
        Credential::Bearer(&as_user(&old, "k1")),
        &who,
        &[json!({})],
    )
    .await;
    assert_eq!(status.code(), Code::Ok, "{status:?}");
    let status = call(
        &channel,
        Credential::Bearer(&as_user(&new, "k2")),
        &who,
        &[json!({})],
    )
    .await;
    assert_eq!(
        status.code(),
        Code::Unauthenticated,
        "not yet published: {status:?}"
    );
    *served.lock().unwrap() = new.jwks.to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let status = call(
            &channel,
            Credential::Bearer(&as_user(&new, "k2")),
            &who,
            &[json!({})],
        )
        .await;
        if status.code() == Code::Ok {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rotated key was never read: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = call(
        &channel,
        Credential::Bearer(&as_user(&old, "k1")),
        &who,
        &[json!({})],
    )
    .await;
    assert_eq!(status.code(), Code::Unauthenticated, "a dropped key: {status:?}");

    let refused = common::binary::command()
        .arg("serve")
        .env("ARTIFACTD_DATA_DIR", tempfile::tempdir().unwrap().path())
        .env("ARTIFACTD_SERVER__GRPC_ADDR", "127.0.0.1:0")
        .env("ARTIFACTD_SERVER__HTTP_ADDR", "127.0.0.1:0")
        .env("ARTIFACTD_IDENTITY__OIDC__ISSUER", ISSUER)
        .env("ARTIFACTD_IDENTITY__OIDC__AUDIENCE", AUDIENCE)
        .env(
            "ARTIFACTD_IDENTITY__OIDC__JWKS_URL",
            "http://issuer.example.test/jwks.json",
        )
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("only https"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

/// Grants on one artifact: a project shares it read-only, a group of people maintains it, and
/// neither reaches anything else of its project; the grants are managed by the project's
/// admin, checked, audited, and removable.
async fn artifact_grants(postgres: bool) {
    let issuer = Issuer::new("k1");
    let (server, _database, _files) = server_on(&issuer, "10.9.9.9", postgres).await;
    let channel = server.raw_channel().await;
    let pool = pool();
    let method = |name: &str| methods(&pool).into_iter().find(|m| m.name() == name).unwrap();
    let shared = artifact(&channel, &pool, 1).await;
    let other = artifact(&channel, &pool, 2).await;
    let scoped = |id: &str| json!({"tenant": T, "project": P, "artifactId": id});
    // A viewer of the mobile project, and a person in the group reviewers with no role at all.
    let mobile = admin_call(
        &channel,
        &pool,
        "CreateApiKey",
        json!({"tenant": T, "projects": ["mobile"], "role": "ROLE_VIEWER", "name": "mobile bot"}),
    )
    .await["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut carol_claims = claims("carol");
    carol_claims["groups"] = json!(["reviewers"]);
    let carol = issuer.token("k1", carol_claims);
    let get = |credential, id: &str| {
        let message = scoped(id);
        let channel = channel.clone();
        let method = method("GetArtifact");
        async move { call(&channel, credential, &method, &[message]).await.code() }
    };

    assert_eq!(get(Credential::Bearer(&mobile), &shared).await, Code::NotFound);
    assert_eq!(get(Credential::Bearer(&carol), &shared).await, Code::NotFound);

    // Bad grants are refused, naming what is wrong; nothing is stored.
    for (grants, needle) in [
        (
            json!([{"subjectKind": "SUBJECT_KIND_PROJECT", "subject": "mobile", "role": "ROLE_CONTRIBUTOR"}]),
            "at most viewer",
        ),
        (
            json!([{"subjectKind": "SUBJECT_KIND_GROUP", "subject": "x", "role": "ROLE_ADMIN"}]),
            "grants.role",
        ),
        (
            json!([{"subjectKind": "SUBJECT_KIND_USER", "subject": "u", "role": "ROLE_VIEWER"},
                {"subjectKind": "SUBJECT_KIND_USER", "subject": "u", "role": "ROLE_MAINTAINER"}]),
            "twice",
        ),
        (
            json!([{"subjectKind": "SUBJECT_KIND_PROJECT", "subject": P, "role": "ROLE_VIEWER"}]),
            "own",
        ),
        (
            json!([{"subjectKind": "SUBJECT_KIND_PROJECT", "subject": "Not A Project", "role": "ROLE_VIEWER"}]),
            "grants.subject",
        ),
        (
            json!([{"subjectKind": "SUBJECT_KIND_UNSPECIFIED", "subject": "u", "role": "ROLE_VIEWER"}]),
            "grants.subject_kind",
        ),
    ] {
        let mut message = scoped(&shared);
        message["grants"] = grants;
        let status = unary(
            &channel,
            &pool,
            Credential::Bearer(&ADMIN_KEY),
            "SetArtifactPermissions",
            &message,
        )
        .await
        .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(needle), "{needle}: {status:?}");
    }
    // Only the project's admin sets them; another tenant sees no such artifact.
    let (contributor, _) = key(&channel, &pool, T, "ROLE_CONTRIBUTOR", 0).await;
    let (globex, _) = key(&channel, &pool, "globex", "ROLE_TENANT_ADMIN", 0).await;
    let mut grant = scoped(&shared);
    grant["grants"] = json!([
        {"subjectKind": "SUBJECT_KIND_PROJECT", "subject": "mobile", "role": "ROLE_VIEWER"},
        {"subjectKind": "SUBJECT_KIND_GROUP", "subject": "reviewers", "role": "ROLE_MAINTAINER"}]);
    let status = unary(
        &channel,
        &pool,
        Credential::Bearer(&contributor),
        "SetArtifactPermissions",
        &grant,
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let mut foreign = grant.clone();
    foreign["tenant"] = json!("globex");
    let status = unary(
        &channel,
        &pool,
        Credential::Bearer(&globex),
        "SetArtifactPermissions",
        &foreign,
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(get(Credential::Bearer(&mobile), &shared).await, Code::NotFound);

    let set = admin_call(&channel, &pool, "SetArtifactPermissions", grant.clone()).await;
    assert_eq!(set["grants"].as_array().unwrap().len(), 2);
    let listed = admin_call(&channel, &pool, "GetArtifactPermissions", scoped(&shared)).await;
    assert_eq!(listed["grants"].as_array().unwrap().len(), 2);
    assert!(
        listed["grants"][0]["grantedBy"]
            .as_str()
            .unwrap()
            .starts_with("key:")
    );

    // The mobile project reads the shared artifact, by id and by name, and nothing else.
    assert_eq!(get(Credential::Bearer(&mobile), &shared).await, Code::Ok);
    let by_name =
        json!({"tenant": T, "project": P, "coordinates": {"artifactType": "doc", "name": "fixture-1.md"}});
    let status = call(
        &channel,
        Credential::Bearer(&mobile),
        &method("GetArtifact"),
        &[by_name],
    )
    .await;
    assert_eq!(status.code(), Code::Ok, "{status:?}");
    for (name, message) in [
        ("DownloadArtifact", scoped(&shared)),
        ("CreateDownloadLink", scoped(&shared)),
        ("ListVersions", scoped(&shared)),
        ("GetChangeHistory", scoped(&shared)),
    ] {
        let status = call(&channel, Credential::Bearer(&mobile), &method(name), &[message]).await;
        assert_eq!(status.code(), Code::Ok, "{name}: {status:?}");
    }
    assert_eq!(get(Credential::Bearer(&mobile), &other).await, Code::NotFound);
    for (name, message) in [
        ("ListArtifacts", json!({"tenant": T, "project": P})),
        ("Search", json!({"tenant": T, "project": P, "query": "fixture"})),
        ("ResolveDependencies", scoped(&shared)),
    ] {
        let status = call(&channel, Credential::Bearer(&mobile), &method(name), &[message]).await;
        assert_eq!(status.code(), Code::NotFound, "{name}: {status:?}");
    }
    // Read-only: the shared artifact is seen, so changing it is refused, not hidden.
    let mut labels = scoped(&shared);
    labels["labels"] = json!({"tags": ["x"]});
    let status = call(
        &channel,
        Credential::Bearer(&mobile),
        &method("UpdateArtifactLabels"),
        &[labels.clone()],
    )
    .await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // The reviewers maintain it: review, approve, alias; still nothing else of the project.
    let transition = |state: &str| {
        let mut message = scoped(&shared);
        message["version"] = json!("1.0.0");
        message["targetState"] = json!(state);
        message
    };
    for state in ["LIFECYCLE_STATE_REVIEW", "LIFECYCLE_STATE_APPROVED"] {
        let status = call(
            &channel,
            Credential::Bearer(&carol),
            &method("TransitionVersion"),
            &[transition(state)],
        )
        .await;
        assert_eq!(status.code(), Code::Ok, "{state}: {status:?}");
    }
    let status = call(
        &channel,
        Credential::Bearer(&carol),
        &method("UpdateArtifactLabels"),
        &[labels],
    )
    .await;
    assert_eq!(status.code(), Code::Ok, "{status:?}");
    assert_eq!(get(Credential::Bearer(&carol), &other).await, Code::NotFound);
    let status = call(
        &channel,
        Credential::Bearer(&carol),
        &method("GetArtifactPermissions"),
        &[scoped(&shared)],
    )
    .await;
    assert_eq!(
        status.code(),
        Code::NotFound,
        "managing grants needs a role in the project: {status:?}"
    );

    // The change is in the artifact's audit trail, with who made it.
    let trail = admin_call(
        &channel,
        &pool,
        "GetAuditTrail",
        json!({"tenant": T, "artifactId": shared, "action": "artifact.permissions_set"}),
    )
    .await;
    assert_eq!(trail["entries"].as_array().unwrap().len(), 1, "{trail}");

    // Taking the grants away hides the artifact again.
    admin_call(&channel, &pool, "SetArtifactPermissions", scoped(&shared)).await;
    assert_eq!(get(Credential::Bearer(&mobile), &shared).await, Code::NotFound);
    assert_eq!(get(Credential::Bearer(&carol), &shared).await, Code::NotFound);
}

#[tokio::test]
async fn artifact_grants_reach_one_artifact_and_nothing_else_on_sqlite() {
    artifact_grants(false).await;
}

#[tokio::test]
async fn artifact_grants_reach_one_artifact_and_nothing_else_on_postgres() {
    artifact_grants(true).await;
}

/// A key that lists its permissions holds exactly those: a write-only robot uploads but
/// cannot read back, and such a key never makes keys.
async fn listed_permissions(postgres: bool) {
    let issuer = Issuer::new("k1");
    let (server, _database, _files) = server_on(&issuer, "10.9.9.9", postgres).await;
    let channel = server.raw_channel().await;
    let pool = pool();
    let method = |name: &str| methods(&pool).into_iter().find(|m| m.name() == name).unwrap();
    let status = unary(
        &channel,
        &pool,
        Credential::Bearer(&ADMIN_KEY),
        "CreateApiKey",
        &json!({"tenant": T, "role": "ROLE_VIEWER", "permissions": ["PERMISSION_WRITE"], "name": "both"}),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("permissions"), "{status:?}");
    let created = admin_call(
        &channel,
        &pool,
        "CreateApiKey",
        json!({"tenant": T, "projects": [P], "permissions": ["PERMISSION_WRITE"], "name": "drop box"}),
    )
    .await;
    assert_eq!(created["apiKey"]["role"], "ROLE_CONTRIBUTOR");
    assert_eq!(created["apiKey"]["permissions"], json!(["PERMISSION_WRITE"]));
    let robot = created["secret"].as_str().unwrap().to_owned();
    // The listing read back from the catalog says the same.
    let listed = admin_call(&channel, &pool, "ListApiKeys", json!({"tenant": T})).await;
    let stored = listed["apiKeys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["keyId"] == created["apiKey"]["keyId"])
        .unwrap()
        .clone();
    assert_eq!(stored["permissions"], json!(["PERMISSION_WRITE"]));

    let upload = vec![
        json!({"header": {"tenant": T, "project": P, "artifactType": "doc", "name": "dropped.md"}}),
        json!({"data": b64(b"dropped\n")}),
        json!({"finish": {}}),
    ];
    let status = call(
        &channel,
        Credential::Bearer(&robot),
        &method("CreateArtifact"),
        &upload,
    )
    .await;
    assert_eq!(status.code(), Code::Ok, "{status:?}");
    let id = artifact(&channel, &pool, 7).await;
    let status = call(
        &channel,
        Credential::Bearer(&robot),
        &method("GetArtifact"),
        &[json!({"tenant": T, "project": P, "artifactId": id})],
    )
    .await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("lists only write"), "{status:?}");
    let status = call(
        &channel,
        Credential::Bearer(&robot),
        &method("ListArtifacts"),
        &[json!({"tenant": T, "project": "api"})],
    )
    .await;
    assert_eq!(
        status.code(),
        Code::NotFound,
        "other projects stay hidden: {status:?}"
    );
    // A key with a listed maintain cannot make keys, even where its role could.
    let maintain = admin_call(
        &channel,
        &pool,
        "CreateApiKey",
        json!({"tenant": T, "permissions": ["PERMISSION_READ", "PERMISSION_MAINTAIN"], "name": "promoter"}),
    )
    .await["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let status = unary(
        &channel,
        &pool,
        Credential::Bearer(&maintain),
        "CreateApiKey",
        &json!({"tenant": T, "role": "ROLE_CONTRIBUTOR", "name": "escalation"}),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
}

#[tokio::test]
async fn a_key_that_lists_permissions_holds_only_those_on_sqlite() {
    listed_permissions(false).await;
}

#[tokio::test]
async fn a_key_that_lists_permissions_holds_only_those_on_postgres() {
    listed_permissions(true).await;
}

/// A change stream outlives no key: revoked, its watch ends with UNAUTHENTICATED within the
/// re-proving interval, while a watch on a key still valid goes on.
#[tokio::test]
async fn a_watch_ends_when_its_key_is_revoked() {
    use artifactd::proto::artifact_service_client::ArtifactServiceClient;
    use artifactd::proto::{WatchEventsRequest, watch_events_response};
    let server = ServerProcess::start_with(
        ServerOptions::default()
            .env("ARTIFACTD_IDENTITY__REPROVE_SECONDS", "1")
            .env("ARTIFACTD_EVENTS__HEARTBEAT_MS", "200"),
    );
    let channel = server.raw_channel().await;
    let pool = pool();
    let (doomed, doomed_id) = key(&channel, &pool, T, "ROLE_VIEWER", 0).await;
    let (kept, _) = key(&channel, &pool, T, "ROLE_VIEWER", 0).await;
    let watch = |credential: String| {
        let server = &server;
        async move {
            let mut client = ArtifactServiceClient::new(server.channel_as(&credential).await);
            client
                .watch_events(WatchEventsRequest {
                    tenant: T.into(),
                    project: P.into(),
                    ..Default::default()
                })
                .await
                .expect("watching")
                .into_inner()
        }
    };
    let mut doomed_stream = watch(doomed).await;
    let mut kept_stream = watch(kept).await;
    let first = doomed_stream.message().await.unwrap().unwrap();
    assert!(matches!(
        first.message,
        Some(watch_events_response::Message::Heartbeat(_))
    ));
    admin_call(
        &channel,
        &pool,
        "RevokeApiKey",
        json!({"tenant": T, "keyId": doomed_id}),
    )
    .await;
    let revoked_at = std::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match doomed_stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended without saying why"),
                Err(status) => break status,
            }
        }
    })
    .await
    .expect("the watch of a revoked key went on for 10 s");
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert!(
        revoked_at.elapsed() < Duration::from_secs(5),
        "{:?}",
        revoked_at.elapsed()
    );
    // The other watch is still served.
    let deadline = std::time::Instant::now() + Duration::from_millis(1500);
    while std::time::Instant::now() < deadline {
        let message = kept_stream
            .message()
            .await
            .expect("the valid key's watch goes on");
        assert!(message.is_some());
    }
}

/// Revoking a key revokes every key it made, and every key those made, and nothing else.
#[tokio::test]
async fn revoking_a_key_revokes_the_keys_it_made() {
    let server = ServerProcess::start();
    let channel = server.raw_channel().await;
    let pool = pool();
    let make = |maker: String, role: &'static str| {
        let (channel, pool) = (channel.clone(), pool.clone());
        async move {
            let made = unary(
                &channel,
                &pool,
                Credential::Bearer(&maker),
                "CreateApiKey",
                &json!({"tenant": T, "role": role, "name": "made"}),
            )
            .await
            .expect("making a key");
            (
                made["secret"].as_str().unwrap().to_owned(),
                made["apiKey"]["keyId"].as_str().unwrap().to_owned(),
            )
        }
    };
    let (root, root_id) = key(&channel, &pool, T, "ROLE_TENANT_ADMIN", 0).await;
    let (child, child_id) = make(root.clone(), "ROLE_TENANT_ADMIN").await;
    let (grandchild, grandchild_id) = make(child.clone(), "ROLE_VIEWER").await;
    let (sibling, _) = key(&channel, &pool, T, "ROLE_VIEWER", 0).await;
    let who = |credential: String| {
        let (channel, pool) = (channel.clone(), pool.clone());
        async move {
            unary(
                &channel,
                &pool,
                Credential::Bearer(&credential),
                "WhoAmI",
                &json!({}),
            )
            .await
            .map(|_| ())
            .map_err(|status| status.code())
        }
    };
    assert_eq!(who(grandchild.clone()).await, Ok(()));
    let revoked = admin_call(
        &channel,
        &pool,
        "RevokeApiKey",
        json!({"tenant": T, "keyId": root_id}),
    )
    .await;
    let mut also: Vec<String> = revoked["alsoRevoked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect();
    also.sort();
    let mut expected = vec![child_id, grandchild_id];
    expected.sort();
    assert_eq!(also, expected);
    for credential in [root, child, grandchild] {
        assert_eq!(who(credential).await, Err(Code::Unauthenticated));
    }
    assert_eq!(who(sibling).await, Ok(()), "a key made by someone else stays");
}

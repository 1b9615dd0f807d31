//! What operators see: request ids, spans and RED metrics on every call, health per
//! service, secrets that never show, and credentials found the standard AWS way.

mod common;

use artifactd::proto::admin_service_client::AdminServiceClient;
use artifactd::proto::{
    ArtifactCoordinates, GetArtifactRequest, GetServerStatusRequest, JobState, get_artifact_request,
};
use artifactd::storage::BlobStore;
use common::binary::{ServerOptions, ServerProcess, command};
use common::client::{create_id, download, download_request, header};
use common::postgres::TestDatabase;
use common::s3::{ACCESS_KEY, S3TestServer, SECRET_KEY};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

const T: &str = "acme";
const P: &str = "ops";

fn missing_artifact() -> GetArtifactRequest {
    GetArtifactRequest {
        tenant: T.into(),
        project: P.into(),
        selector: Some(get_artifact_request::Selector::Coordinates(ArtifactCoordinates {
            artifact_type: "prd".into(),
            name: "nowhere.md".into(),
        })),
        version: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_has_a_request_id_a_span_and_red_metrics() {
    let server = ServerProcess::start();
    let mut client = server.client().await;

    // The caller's id comes back and names the call's log line.
    let mut request = tonic::Request::new(missing_artifact());
    request
        .metadata_mut()
        .insert("x-request-id", "agent-run-42.step-7".parse().unwrap());
    let status = client.get_artifact(request).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(
        status
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("agent-run-42.step-7"),
        "the request id is returned with an error too"
    );
    // Without one, the server makes one up and returns it.
    let id = create_id(&mut client, header(T, P, "prd", "traced.md"), b"# traced\n").await;
    let response = client
        .get_artifact(GetArtifactRequest {
            tenant: T.into(),
            project: P.into(),
            selector: Some(get_artifact_request::Selector::ArtifactId(id.clone())),
            version: String::new(),
        })
        .await
        .unwrap();
    let generated = response
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(generated.len(), 36, "a generated UUID: {generated}");
    let (_, content) = download(&mut client, download_request(T, P, &id, ""))
        .await
        .unwrap();
    assert_eq!(content, b"# traced\n");

    // One log line per call with the id, method, tenant, project, code and duration.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let line = loop {
        let log = server.log();
        if let Some(line) = log
            .lines()
            .find(|line| line.contains("agent-run-42.step-7") && line.contains("code="))
        {
            break line.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no log line for the request id:\n{log}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    for needle in [
        "method=artifactd.v1.ArtifactService/GetArtifact",
        "tenant=\"acme\"",
        "project=\"ops\"",
        "code=NotFound",
        "duration_ms=",
    ] {
        assert!(line.contains(needle), "{needle} missing from {line}");
    }
    assert!(
        server.log().lines().any(|line| line.contains(&generated)),
        "the generated id names its call's log line"
    );

    // The index lag is published and drops to zero once the index has every change.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !common::http_get(server.http, "/metrics")
        .await
        .contains("artifactd_index_lag_seconds 0\n")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the index lag never reached 0"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let metrics = common::http_get(server.http, "/metrics").await;
    for needle in [
        "artifactd_grpc_requests_total{method=\"artifactd.v1.ArtifactService/GetArtifact\",code=\"NotFound\"} 1",
        "artifactd_grpc_requests_total{method=\"artifactd.v1.ArtifactService/GetArtifact\",code=\"Ok\"} 1",
        "artifactd_grpc_requests_total{method=\"artifactd.v1.ArtifactService/CreateArtifact\",code=\"Ok\"} 1",
        "artifactd_grpc_requests_total{method=\"artifactd.v1.ArtifactService/DownloadArtifact\",code=\"Ok\"} 1",
        "artifactd_grpc_request_duration_seconds_bucket{method=\"artifactd.v1.ArtifactService/GetArtifact\",le=\"0.005\"}",
        "# HELP artifactd_grpc_requests_total",
    ] {
        assert!(
            metrics.contains(needle),
            "{needle} missing from /metrics:\n{metrics}"
        );
    }
    // Every exported artifactd metric is one the service describes in one place.
    for line in metrics.lines().filter(|line| line.starts_with("artifactd_")) {
        let name = line.split(['{', ' ']).next().unwrap();
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        assert!(
            artifactd::telemetry::names::ALL
                .iter()
                .any(|(known, _, _)| *known == base || *known == name),
            "{name} is exported but not listed in telemetry::names"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_reported_per_service() {
    let mut fallback = S3TestServer::start().await;
    let primary = S3TestServer::start().await;
    let server = ServerProcess::start_with(
        ServerOptions::default()
            .envs(primary.env("primary"))
            .envs(fallback.fallback_env("fallback"))
            .envs(common::failover::failover_tuning()),
    );
    for service in [
        "",
        "artifactd.v1.ArtifactService",
        "artifactd.v1.SearchService",
        "artifactd.v1.FallbackService",
        // The disk cache in front of the S3 primary works.
        "disk-cache",
    ] {
        server.wait_for_health(service, ServingStatus::Serving).await;
    }
    // The fallback failing degrades the pair: FallbackService says so, writes go on.
    fallback.stop().await;
    server
        .wait_for_health("artifactd.v1.FallbackService", ServingStatus::NotServing)
        .await;
    server
        .wait_for_health("artifactd.v1.ArtifactService", ServingStatus::Serving)
        .await;
    server
        .wait_for_health("artifactd.v1.SearchService", ServingStatus::Serving)
        .await;
    let mut client = server.client().await;
    create_id(&mut client, header(T, P, "prd", "degraded.md"), b"still writable").await;
    fallback.restart().await;
    server
        .wait_for_health("artifactd.v1.FallbackService", ServingStatus::Serving)
        .await;

    // The status call shows every supervised job and the same health.
    let status = AdminServiceClient::new(server.channel().await)
        .get_server_status(GetServerStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut jobs: Vec<&str> = status.jobs.iter().map(|job| job.name.as_str()).collect();
    jobs.sort();
    assert_eq!(
        jobs,
        [
            "access rates",
            "audit checkpointer",
            "backup scheduler",
            "fallback sync",
            "garbage collector",
            "health",
            "indexer",
            "metrics upkeep",
            "outbox pruner",
            "reconciler",
            "replicator",
            "retention policies",
            "storage stats",
            "store prober",
            "trash purger"
        ]
    );
    assert!(
        status
            .jobs
            .iter()
            .all(|job| job.state == JobState::Running as i32 && job.restarts == 0),
        "{status:?}"
    );
    assert_eq!(
        status
            .services
            .iter()
            .map(|service| service.service.as_str())
            .collect::<Vec<_>>(),
        [
            "",
            "artifactd.v1.ArtifactService",
            "artifactd.v1.SearchService",
            "artifactd.v1.FallbackService",
            "disk-cache"
        ]
    );
    assert!(
        status.services.iter().all(|service| service.serving),
        "{status:?}"
    );
}

/// Secrets configured every way they can be: none shows in `check-config` or in a debug
/// log of a server that used them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_show_in_printed_configuration_or_debug_logs() {
    let database = TestDatabase::create().await;
    // Trust authentication ignores the password, so a real connection carries one.
    let catalog_password = "catalog-pw-Zq81";
    let url = database
        .url
        .replacen("postgres@", &format!("postgres:{catalog_password}@"), 1);
    assert!(url.contains(catalog_password), "{url}");
    let primary = S3TestServer::start().await;
    let fallback = S3TestServer::start().await;
    let secrets = [catalog_password, SECRET_KEY];

    let mut environment = primary.env("primary");
    environment.extend(fallback.fallback_env("fallback"));
    environment.push(("DATABASE_URL".into(), url.clone()));
    let printed = command()
        .arg("check-config")
        .envs(environment.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    assert!(
        printed.status.success(),
        "{}",
        String::from_utf8_lossy(&printed.stderr)
    );
    let printed = String::from_utf8_lossy(&printed.stdout).into_owned();
    assert!(printed.contains("********"), "{printed}");
    assert!(printed.contains(ACCESS_KEY), "key ids are not secret: {printed}");
    for secret in secrets {
        assert!(
            !printed.contains(secret),
            "check-config printed {secret:?}:\n{printed}"
        );
    }

    let server = ServerProcess::start_with(
        ServerOptions::default()
            .envs(environment)
            .env("RUST_LOG", "debug"),
    );
    let mut client = server.client().await;
    let id = create_id(&mut client, header(T, P, "prd", "secret.md"), b"# classified\n").await;
    download(&mut client, download_request(T, P, &id, ""))
        .await
        .unwrap();
    let log = server.log();
    assert!(log.lines().count() > 50, "a debug log was written:\n{log}");
    for secret in secrets {
        assert!(!log.contains(secret), "the debug log shows {secret:?}");
    }
    drop(server);
    database.drop_database().await;
}

/// Without keys in the configuration, a store finds credentials the standard AWS way; here
/// the shared credentials file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_without_configured_keys_use_the_aws_credential_chain() {
    let primary = S3TestServer::start().await;
    let fallback = S3TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    std::fs::write(
        &credentials,
        format!("[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"),
    )
    .unwrap();
    let keyless = |variables: Vec<(String, String)>| {
        variables
            .into_iter()
            .filter(|(name, _)| !name.contains("ACCESS_KEY"))
            .collect::<Vec<_>>()
    };
    let server = ServerProcess::start_with(
        ServerOptions::default()
            .envs(keyless(primary.env("primary")))
            .envs(keyless(fallback.fallback_env("fallback")))
            .env("AWS_SHARED_CREDENTIALS_FILE", credentials.display().to_string())
            .env("AWS_CONFIG_FILE", dir.path().join("config").display().to_string())
            .env("AWS_EC2_METADATA_DISABLED", "true"),
    );
    let mut client = server.client().await;
    let id = create_id(&mut client, header(T, P, "prd", "chain.md"), b"# found my keys\n").await;
    let (_, content) = download(&mut client, download_request(T, P, &id, ""))
        .await
        .unwrap();
    assert_eq!(content, b"# found my keys\n");
    // Both stores hold it: the fallback found its credentials the same way.
    let fallback_store = fallback.store("fallback").await;
    assert!(!fallback_store.list("packs/").await.unwrap().is_empty());
}

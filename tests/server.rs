//! The binary as operators and Kubernetes see it: health that follows its dependencies,
//! graceful shutdown, configuration errors, the embedded default.

mod common;

use common::binary::{ServerOptions, ServerProcess, command};
use common::client::{create, header};
use common::postgres::TestDatabase;
use common::proxy::CuttableProxy;
use common::s3::S3TestServer;
use std::time::Duration;
use tonic_health::pb::health_check_response::ServingStatus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_store_and_the_catalog() {
    let mut s3 = S3TestServer::start().await;
    let database = TestDatabase::create().await;
    let pg_addr = {
        let url = common::postgres::admin_url();
        let host_port = url
            .split('@')
            .nth(1)
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        tokio::net::lookup_host(host_port).await.unwrap().next().unwrap()
    };
    let proxy = CuttableProxy::start(pg_addr).await;
    let proxied_url = database
        .url
        .replace(&pg_addr.to_string(), &proxy.addr.to_string());
    assert_ne!(
        proxied_url, database.url,
        "the database URL goes through the proxy"
    );
    let server = ServerProcess::start_with(
        ServerOptions::default()
            .envs(s3.env("health"))
            .env("DATABASE_URL", proxied_url)
            .env("ARTIFACTD_STORAGE__S3__REQUEST_TIMEOUT_MS", "1000"),
    );
    for service in ["", "artifactd.v1.ArtifactService"] {
        server.wait_for_health(service, ServingStatus::Serving).await;
    }

    s3.stop().await;
    server.wait_for_health("", ServingStatus::NotServing).await;
    server
        .wait_for_health("artifactd.v1.ArtifactService", ServingStatus::NotServing)
        .await;
    let mut client = server.client().await;
    let status = create(&mut client, header("acme", "web", "prd", "while-down.md"), b"x")
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        tonic::Code::Unavailable,
        "writes while the store is down: {status:?}"
    );
    s3.restart().await;
    server.wait_for_health("", ServingStatus::Serving).await;
    create(&mut client, header("acme", "web", "prd", "after-store.md"), b"x")
        .await
        .unwrap();

    proxy.cut();
    server.wait_for_health("", ServingStatus::NotServing).await;
    proxy.restore();
    server.wait_for_health("", ServingStatus::Serving).await;
    create(
        &mut client,
        header("acme", "web", "prd", "after-catalog.md"),
        b"x",
    )
    .await
    .unwrap();

    drop(server);
    database.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_uploads_in_flight_finish_then_exits_cleanly() {
    let mut server = ServerProcess::start();
    let content = common::noise(3 * 1024 * 1024, 21);
    let messages =
        common::client::create_messages(header("acme", "web", "bundle", "slow.bin"), &content, 64 * 1024);
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    let mut upload_client = server.client().await;
    let upload = tokio::spawn(async move {
        upload_client
            .create_artifact(tokio_stream::wrappers::ReceiverStream::new(receiver))
            .await
    });
    let mut messages = messages.into_iter();
    for message in messages.by_ref().take(10) {
        sender.send(message).await.unwrap();
    }
    server.signal_terminate();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // New connections are refused once shutdown has begun.
    let refused = tonic::transport::Channel::from_shared(server.endpoint())
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await;
    assert!(refused.is_err(), "a new connection was accepted during shutdown");
    for message in messages {
        sender.send(message).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    drop(sender);
    let created = upload.await.unwrap().expect("the upload in flight completes");
    assert_eq!(created.into_inner().version.unwrap().size, content.len() as u64);
    let status = server.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit status {status:?}; log:\n{}", server.log());
    assert!(server.log().contains("artifactd stopped"));
}

#[test]
fn configuration_mistakes_stop_startup_with_a_clear_message() {
    let output = command()
        .args(["serve"])
        .env("ARTIFACTD_SERVER__GRPC_PORT", "50051")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("ARTIFACTD_SERVER__GRPC_PORT") && stderr.contains("server.grpc_port"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("artifactd.toml");
    std::fs::write(&file, "[storage]\nbackend = \"s3\"\n").unwrap();
    let output = command().args(["serve", "--config"]).arg(&file).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("S3_BUCKET_NAME"), "{stderr}");

    std::fs::write(&file, "[storage]\nbakend = \"s3\"\n").unwrap();
    let output = command()
        .args(["check-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("bakend"));

    std::fs::write(&file, "[server]\ngrpc_addr = \"127.0.0.1:6000\"\n").unwrap();
    let output = command()
        .args(["check-config", "--config"])
        .arg(&file)
        .env("AWS_SECRET_ACCESS_KEY", "do-not-print")
        .env("AWS_ACCESS_KEY_ID", "id")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("127.0.0.1:6000"));
    assert!(!stdout.contains("do-not-print"), "secrets are masked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_keeps_everything_under_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = command()
        .arg("serve")
        .current_dir(dir.path())
        .env("ARTIFACTD_SERVER__GRPC_ADDR", "127.0.0.1:0")
        .env("ARTIFACTD_SERVER__HTTP_ADDR", "127.0.0.1:0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.starts_with("artifactd ready grpc=127.0.0.1:"), "{line}");
    let grpc = line
        .split_whitespace()
        .find_map(|p| p.strip_prefix("grpc="))
        .unwrap()
        .to_owned();
    // The first start made an admin key, readable only by its owner, and nothing gets in
    // without it.
    let key_file = dir.path().join("artifactd-data/admin.key");
    let key = std::fs::read_to_string(&key_file).unwrap().trim().to_owned();
    assert!(key.starts_with("adk_"), "{key}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let channel = tonic::transport::Channel::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut anonymous = artifactd::proto::artifact_service_client::ArtifactServiceClient::new(
        common::binary::Authed::new(channel.clone(), common::binary::Bearer::none()),
    );
    let refused = create(&mut anonymous, header("acme", "web", "prd", "a.md"), b"# a\n")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let mut client = artifactd::proto::artifact_service_client::ArtifactServiceClient::new(
        common::binary::Authed::new(channel, common::binary::Bearer::new(&key)),
    );
    let created = create(&mut client, header("acme", "web", "prd", "a.md"), b"# a\n")
        .await
        .unwrap();
    let key_id = &key[4..20];
    assert_eq!(
        created.artifact.unwrap().created_by,
        format!("key:{key_id}"),
        "the author is the key"
    );
    assert!(dir.path().join("artifactd-data/catalog.db").exists());
    assert!(dir.path().join("artifactd-data/blobs/packs").is_dir());
    let _ = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success(), "SIGINT shuts down cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1_lists_and_describes_every_service() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let server = ServerProcess::start();
    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let requests = vec![
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "artifactd.v1.FallbackService".into(),
            )),
        },
    ];
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let listed = match responses
        .message()
        .await
        .unwrap()
        .unwrap()
        .message_response
        .unwrap()
    {
        MessageResponse::ListServicesResponse(list) => {
            list.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
        }
        other => panic!("unexpected {other:?}"),
    };
    for service in [
        "artifactd.v1.ArtifactService",
        "artifactd.v1.FallbackService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            listed.iter().any(|name| name == service),
            "{service} missing from {listed:?}"
        );
    }
    match responses
        .message()
        .await
        .unwrap()
        .unwrap()
        .message_response
        .unwrap()
    {
        MessageResponse::FileDescriptorResponse(files) => assert!(!files.file_descriptor_proto.is_empty()),
        other => panic!("unexpected {other:?}"),
    }
}

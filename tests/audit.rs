//! The audit trail over real gRPC, on both catalogs: changes recorded with who made them in
//! their own transaction, reads of content, searches and refusals recorded after the call,
//! verification that finds tampering done straight in the database, signed checkpoints in
//! the catalog and the object store, an export an offline verifier can check, and a process
//! killed amid uploads that leaves no change without its entry.

mod common;

use artifactd::domain::Timestamp;
use artifactd::domain::audit::{AuditEntry, AuditRecord, Checkpoint, verify_chain};
use artifactd::proto::access_service_client::AccessServiceClient;
use artifactd::proto::audit_service_client::AuditServiceClient;
use artifactd::proto::search_service_client::SearchServiceClient;
use artifactd::proto::{
    CreateApiKeyRequest, DownloadArtifactRequest, ExportAuditLogRequest, GetAuditTrailRequest, Role,
    SearchRequest, VerifyAuditLogRequest, export_audit_log_response,
};
use common::binary::{Authed, Bearer, ServerOptions, ServerProcess};
use common::client::{create, create_id, header};
use common::postgres::TestDatabase;
use sqlx::Connection;
use std::time::Duration;
use tonic::Code;

const T: &str = "acme";

async fn start(postgres: bool, options: ServerOptions) -> (ServerProcess, Option<TestDatabase>) {
    let options = options.env("ARTIFACTD_AUDIT__CHECKPOINT_INTERVAL_SECONDS", "1");
    if postgres {
        let database = TestDatabase::create().await;
        let server = ServerProcess::start_with(options.env("DATABASE_URL", database.url.clone()));
        (server, Some(database))
    } else {
        (ServerProcess::start_with(options), None)
    }
}

/// Runs `statement` on the server's catalog directly, as someone with database access would.
async fn tamper(server: &ServerProcess, database: &Option<TestDatabase>, statement: &str) {
    match database {
        Some(database) => {
            let mut connection = sqlx::PgConnection::connect(&database.url).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()))
                .execute(&mut connection)
                .await
                .unwrap();
        }
        None => {
            let url = format!("sqlite://{}", server.data_dir.join("catalog.db").display());
            let mut connection = sqlx::SqliteConnection::connect(&url).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()))
                .execute(&mut connection)
                .await
                .unwrap();
        }
    }
}

async fn trail(
    audit: &mut AuditServiceClient<Authed>,
    request: GetAuditTrailRequest,
) -> Vec<artifactd::proto::AuditEntry> {
    audit.get_audit_trail(request).await.unwrap().into_inner().entries
}

/// Waits until the trail holds an entry that `matches` (entries of finished calls are
/// written just after the call).
async fn wait_for(
    audit: &mut AuditServiceClient<Authed>,
    request: GetAuditTrailRequest,
    matches: impl Fn(&artifactd::proto::AuditEntry) -> bool,
) -> artifactd::proto::AuditEntry {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(found) = trail(audit, request.clone())
            .await
            .into_iter()
            .find(|e| matches(e))
        {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never recorded: {request:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn verify(
    audit: &mut AuditServiceClient<Authed>,
    tenant: &str,
) -> artifactd::proto::VerifyAuditLogResponse {
    audit
        .verify_audit_log(VerifyAuditLogRequest {
            tenant: tenant.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn who_did_what(postgres: bool) {
    let (server, database) = start(postgres, ServerOptions::default()).await;
    let channel = server.raw_channel().await;
    let admin = Authed::new(channel.clone(), Bearer::new(&server.key));
    let mut access = AccessServiceClient::new(admin.clone());
    let contributor = access
        .create_api_key(CreateApiKeyRequest {
            tenant: T.into(),
            role: Role::Contributor as i32,
            name: "writer".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let writer_id = contributor.api_key.unwrap().key_id;
    let mut as_writer = artifactd::proto::artifact_service_client::ArtifactServiceClient::new(Authed::new(
        channel.clone(),
        Bearer::new(&contributor.secret),
    ));
    let mut tagged = header(T, "web", "prd", "audited.md");
    tagged.tags = vec!["audit".into()];
    let id = create_id(&mut as_writer, tagged, b"# Audited\n").await;
    let mut download = tonic::Request::new(DownloadArtifactRequest {
        tenant: T.into(),
        project: "web".into(),
        artifact_id: id.clone(),
        ..Default::default()
    });
    download
        .metadata_mut()
        .insert("x-request-id", "download-7".parse().unwrap());
    let mut stream = as_writer.download_artifact(download).await.unwrap().into_inner();
    while stream.message().await.unwrap().is_some() {}
    SearchServiceClient::new(Authed::new(channel.clone(), Bearer::new(&contributor.secret)))
        .search(SearchRequest {
            tenant: T.into(),
            project: "web".into(),
            query: "audited".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // A contributor may not delete: refused, and recorded as refused.
    let refused = as_writer
        .delete_artifact(artifactd::proto::DeleteArtifactRequest {
            tenant: T.into(),
            project: "web".into(),
            artifact_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    // Without a credential: refused before any tenant was named, in the server's trail.
    let mut anonymous = artifactd::proto::artifact_service_client::ArtifactServiceClient::new(Authed::new(
        channel.clone(),
        Bearer::none(),
    ));
    let mut unproven = header(T, "web", "prd", "nobody.md");
    unproven.name = "nobody.md".into();
    assert_eq!(
        create(&mut anonymous, unproven, b"x").await.unwrap_err().code(),
        Code::Unauthenticated
    );

    let mut audit = AuditServiceClient::new(admin.clone());
    let actor = format!("key:{writer_id}");
    let about = |action: &str| GetAuditTrailRequest {
        tenant: T.into(),
        artifact_id: id.clone(),
        action: action.into(),
        ..Default::default()
    };
    let created = wait_for(&mut audit, about("artifact.created"), |_| true).await;
    assert_eq!(
        (created.actor.as_str(), created.principal_kind.as_str()),
        (actor.as_str(), "api_key")
    );
    assert_eq!(
        (created.project.as_str(), created.outcome.as_str()),
        ("web", "ok")
    );
    assert_eq!(created.peer, "127.0.0.1");
    let read = wait_for(
        &mut audit,
        about("artifactd.v1.ArtifactService/DownloadArtifact"),
        |_| true,
    )
    .await;
    assert_eq!(
        (read.request_id.as_str(), read.actor.as_str()),
        ("download-7", actor.as_str())
    );
    let denied = wait_for(
        &mut audit,
        about("artifactd.v1.ArtifactService/DeleteArtifact"),
        |_| true,
    )
    .await;
    assert_eq!(
        (denied.outcome.as_str(), denied.code.as_str()),
        ("denied", "PermissionDenied")
    );
    wait_for(
        &mut audit,
        GetAuditTrailRequest {
            tenant: T.into(),
            action: "artifactd.v1.SearchService/Search".into(),
            ..Default::default()
        },
        |e| e.actor == actor,
    )
    .await;
    let unauthenticated = wait_for(
        &mut audit,
        GetAuditTrailRequest {
            action: "artifactd.v1.ArtifactService/CreateArtifact".into(),
            ..Default::default()
        },
        |e| e.code == "Unauthenticated",
    )
    .await;
    assert_eq!(unauthenticated.principal_kind, "none");
    let key_made = wait_for(
        &mut audit,
        GetAuditTrailRequest {
            tenant: T.into(),
            action: "api_key.created".into(),
            ..Default::default()
        },
        |e| e.target == actor,
    )
    .await;
    assert_eq!(key_made.actor, format!("key:{}", &server.key[4..20]));
    // Paging walks the chain in order.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = audit
            .get_audit_trail(GetAuditTrailRequest {
                tenant: T.into(),
                page_size: 2,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.entries.iter().map(|e| e.seq));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, (1..=seen.len() as i64).collect::<Vec<_>>());

    // Intact, and checkpoints signed into the catalog and the object store.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let report = verify(&mut audit, T).await;
        assert!(report.intact, "{report:?}");
        if report.checkpoints_checked > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no checkpoint was signed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if database.is_none() {
        let folder = server.data_dir.join("blobs/audit").join(hex::encode(T));
        assert!(
            std::fs::read_dir(&folder).map(|d| d.count()).unwrap_or(0) > 0,
            "{folder:?}"
        );
    }

    // An export verifies offline with the key it names; then tampering in the database shows.
    let mut export = audit
        .export_audit_log(ExportAuditLogRequest { tenant: T.into() })
        .await
        .unwrap()
        .into_inner();
    let (mut head, mut entries, mut checkpoints) = (None, Vec::new(), Vec::new());
    while let Some(message) = export.message().await.unwrap() {
        match message.item.unwrap() {
            export_audit_log_response::Item::Head(h) => head = Some(h),
            export_audit_log_response::Item::Entry(e) => entries.push(AuditEntry {
                seq: e.seq,
                record: AuditRecord {
                    tenant: e.tenant,
                    at: Timestamp(e.at_micros),
                    actor: e.actor,
                    principal_kind: e.principal_kind,
                    project: e.project,
                    target: e.target,
                    action: e.action,
                    outcome: e.outcome,
                    code: e.code,
                    request_id: e.request_id,
                    peer: e.peer,
                },
                prev_hash: e.prev_hash,
                hash: e.hash,
            }),
            export_audit_log_response::Item::Checkpoint(c) => checkpoints.push(Checkpoint {
                tenant: c.tenant,
                seq: c.seq,
                hash: c.hash,
                at: Timestamp(c.at_micros),
                key_id: c.key_id,
                signature: c.signature,
            }),
        }
    }
    let head = head.unwrap();
    let key = head.public_key.clone();
    let problems = verify_chain(&entries, Some((head.seq, head.hash.clone())), &checkpoints, |c| {
        artifactd::audit::verify_checkpoint(&key, c)
    });
    assert!(problems.is_empty(), "{problems:?}");
    assert!(!checkpoints.is_empty());

    tamper(
        &server,
        &database,
        "UPDATE audit_log SET actor = 'mallory' WHERE tenant = 'acme' AND seq = 2",
    )
    .await;
    let report = verify(&mut audit, T).await;
    assert!(!report.intact);
    assert!(report.problems.iter().any(|p| p.seq == 2), "{report:?}");
    // Cutting off the end and moving the head to match is found against the checkpoint.
    let signed = checkpoints.last().unwrap().seq;
    tamper(
        &server,
        &database,
        &format!("DELETE FROM audit_log WHERE tenant = 'acme' AND seq >= {signed}"),
    )
    .await;
    tamper(
        &server,
        &database,
        &format!(
            "UPDATE audit_heads SET seq = {}, hash = (SELECT hash FROM audit_log WHERE tenant = 'acme' AND seq = {}) WHERE tenant = 'acme'",
            signed - 1,
            signed - 1
        ),
    )
    .await;
    let report = verify(&mut audit, T).await;
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.message.contains("signed in a checkpoint")),
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_did_what_is_recorded_and_tampering_shows_on_sqlite() {
    who_did_what(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_did_what_is_recorded_and_tampering_shows_on_postgres() {
    who_did_what(true).await;
}

/// Uploads from several writers while the process is killed outright: after a restart,
/// every version the catalog holds has its entry and every entry its version; the chain
/// verifies. A change and its entry share one transaction, so there is no gap to fall into.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_leaves_no_change_without_its_entry() {
    for postgres in [false, true] {
        let data = tempfile::tempdir().unwrap();
        let options = || ServerOptions {
            data_dir: Some(data.path().to_owned()),
            ..Default::default()
        };
        let (mut server, database) = start(postgres, options()).await;
        let url = database.as_ref().map(|d| d.url.clone());
        let endpoint = server.endpoint();
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let endpoint = endpoint.clone();
                tokio::spawn(async move {
                    let Ok(channel) = tonic::transport::Channel::from_shared(endpoint)
                        .unwrap()
                        .connect()
                        .await
                    else {
                        return;
                    };
                    let mut client = artifactd::proto::artifact_service_client::ArtifactServiceClient::new(
                        Authed::new(channel, Bearer::new(&common::binary::ADMIN_KEY)),
                    );
                    for i in 0.. {
                        let name = format!("w{w}-{i}.md");
                        if create(&mut client, header(T, "web", "doc", &name), name.as_bytes())
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(700)).await;
        server.kill();
        for writer in writers {
            let _ = writer.await;
        }
        let mut options = options();
        if let Some(url) = url {
            options = options.env("DATABASE_URL", url);
        }
        let server =
            ServerProcess::start_with(options.env("ARTIFACTD_AUDIT__CHECKPOINT_INTERVAL_SECONDS", "1"));
        let mut audit = AuditServiceClient::new(server.channel().await);
        let mut client = server.client().await;
        let listed = client
            .list_artifacts(artifactd::proto::ListArtifactsRequest {
                tenant: T.into(),
                project: "web".into(),
                page_size: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .artifacts;
        assert!(
            listed.len() >= 4,
            "the writers wrote before the kill: {}",
            listed.len()
        );
        let created: Vec<String> = trail(
            &mut audit,
            GetAuditTrailRequest {
                tenant: T.into(),
                action: "artifact.created".into(),
                page_size: 1000,
                ..Default::default()
            },
        )
        .await
        .into_iter()
        .map(|e| e.target.split('@').next().unwrap().to_owned())
        .collect();
        let mut ids: Vec<String> = listed.iter().map(|a| a.id.clone()).collect();
        let mut recorded = created.clone();
        ids.sort();
        recorded.sort();
        assert_eq!(ids, recorded, "postgres: {postgres}");
        let report = verify(&mut audit, T).await;
        assert!(report.intact, "{report:?}");
        drop(server);
        drop(database);
    }
}

/// Reads across many projects and a burst of refusals, sent over gRPC, come back as flags
/// and are counted in the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusual_access_is_flagged_and_counted() {
    let (server, _database) = start(
        false,
        ServerOptions::default()
            .env("ARTIFACTD_AUDIT__PATTERNS__MANY_PROJECTS", "3")
            .env("ARTIFACTD_AUDIT__PATTERNS__DENIAL_BURST", "4"),
    )
    .await;
    let channel = server.raw_channel().await;
    let mut admin = server.client().await;
    let mut ids = Vec::new();
    for project in ["a", "b", "c"] {
        ids.push((
            project,
            create_id(&mut admin, header(T, project, "doc", "x.md"), b"# x\n").await,
        ));
    }
    let viewer = AccessServiceClient::new(server.channel().await)
        .create_api_key(CreateApiKeyRequest {
            tenant: T.into(),
            role: Role::Viewer as i32,
            name: "roamer".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut roamer = artifactd::proto::artifact_service_client::ArtifactServiceClient::new(Authed::new(
        channel.clone(),
        Bearer::new(&viewer.secret),
    ));
    for (project, id) in &ids {
        let mut stream = roamer
            .download_artifact(DownloadArtifactRequest {
                tenant: T.into(),
                project: (*project).into(),
                artifact_id: id.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        while stream.message().await.unwrap().is_some() {}
    }
    for _ in 0..4 {
        let refused = roamer
            .delete_artifact(artifactd::proto::DeleteArtifactRequest {
                tenant: T.into(),
                project: "a".into(),
                artifact_id: ids[0].1.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied);
    }
    let roamer_name = format!("key:{}", viewer.api_key.unwrap().key_id);
    let flags = AuditServiceClient::new(server.channel().await)
        .get_access_flags(artifactd::proto::GetAccessFlagsRequest { tenant: T.into() })
        .await
        .unwrap()
        .into_inner();
    let mut seen: Vec<(String, String)> = flags
        .flags
        .iter()
        .map(|f| (f.pattern.clone(), f.principal.clone()))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("denial_burst".to_owned(), roamer_name.clone()),
            ("many_projects".to_owned(), roamer_name.clone())
        ]
    );
    assert!(
        flags
            .principals
            .iter()
            .any(|p| p.name == roamer_name && p.reads_this_minute == 3),
        "{flags:?}"
    );
    let metrics = metrics_page(&server).await;
    for pattern in ["many_projects", "denial_burst"] {
        assert!(
            metrics.contains(&format!(
                "artifactd_access_flags_total{{pattern=\"{pattern}\"}} 1"
            )),
            "{metrics}"
        );
    }
}

/// The Prometheus page of the server's HTTP port.
async fn metrics_page(server: &ServerProcess) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server.http).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut page = String::new();
    stream.read_to_string(&mut page).await.unwrap();
    page
}

//! Two `artifactd serve` processes on one Postgres catalog and one S3 bucket, as the
//! Kubernetes deployment runs them: writes through both, reads across, each replica's search
//! index following every write, one winner for a conflicting update, and page tokens that
//! fail clearly on the other replica.

mod common;

use artifactd::proto::search_service_client::SearchServiceClient;
use artifactd::proto::{SearchRequest, update_artifact_header};
use common::binary::{ServerOptions, ServerProcess};
use common::client::{
    Client, assert_status, create_id, download, download_request, header, update, update_header,
};
use common::noise;
use common::postgres::TestDatabase;
use common::s3::S3TestServer;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Code;

const T: &str = "acme";
const P: &str = "replicas";
const WRITES_PER_REPLICA: usize = 12;

fn replica(database: &TestDatabase, s3: &S3TestServer) -> ServerProcess {
    ServerProcess::start_with(
        ServerOptions::default()
            .envs(s3.env("shared-bucket"))
            .env("DATABASE_URL", database.url.clone()),
    )
}

async fn found(search: &mut SearchServiceClient<common::binary::Authed>, name_word: &str) -> Vec<String> {
    search
        .search(SearchRequest {
            tenant: T.into(),
            project: P.into(),
            query: name_word.into(),
            page_size: 50,
            ..Default::default()
        })
        .await
        .map(|response| {
            response
                .into_inner()
                .hits
                .into_iter()
                .map(|hit| hit.artifact_id)
                .collect()
        })
        .unwrap_or_default()
}

/// Writes through `writer` and measures how long until `reader`'s index finds the write.
async fn write_and_time_visibility(
    writer: &mut Client,
    reader: &mut SearchServiceClient<common::binary::Authed>,
    name: &str,
    content: &[u8],
) -> (String, Duration) {
    let id = create_id(writer, header(T, P, "doc", name), content).await;
    let written = Instant::now();
    let word = name.trim_end_matches(".md");
    loop {
        if found(reader, word).await.contains(&id) {
            return (id, written.elapsed());
        }
        assert!(
            written.elapsed() < Duration::from_secs(30),
            "the other replica's index never found {name}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_share_one_catalog_and_one_bucket() {
    let database = TestDatabase::create().await;
    let s3 = S3TestServer::start().await;
    let (a, b) = (
        Arc::new(replica(&database, &s3)),
        Arc::new(replica(&database, &s3)),
    );

    // Concurrent writes through both; each write is timed until the other's index has it.
    let writers =
        [(a.clone(), b.clone(), "alpha"), (b.clone(), a.clone(), "bravo")].map(|(writer, reader, label)| {
            tokio::spawn(async move {
                let mut client = writer.client().await;
                let mut search = SearchServiceClient::new(reader.channel().await);
                let mut written = Vec::new();
                for n in 0..WRITES_PER_REPLICA {
                    let content = [
                        format!("# {label} note {n}\n\n").into_bytes(),
                        noise(20_000 + n * 997, n as u64),
                    ]
                    .concat();
                    let name = format!("{label}{n}x.md");
                    let (id, visible_after) =
                        write_and_time_visibility(&mut client, &mut search, &name, &content).await;
                    written.push((id, content, visible_after));
                }
                written
            })
        });
    let mut all = Vec::new();
    for writer in writers {
        all.extend(writer.await.unwrap());
    }

    // Every artifact reads back byte-identical through both replicas.
    let (mut client_a, mut client_b) = (a.client().await, b.client().await);
    for (id, content, _) in &all {
        for client in [&mut client_a, &mut client_b] {
            let (_, read) = download(client, download_request(T, P, id, "")).await.unwrap();
            assert!(&read == content, "artifact {id} differs across replicas");
        }
    }
    // A download link issued by one replica is served by the other: both sign with the key
    // derived from the service secret of the catalog they share.
    let (id, content, _) = &all[1];
    let issued = client_a
        .create_download_link(artifactd::proto::CreateDownloadLinkRequest {
            tenant: T.into(),
            project: P.into(),
            artifact_id: id.clone(),
            ttl_seconds: 60,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let on_b = issued.url.replace(&a.http.to_string(), &b.http.to_string());
    let fetched = common::http::fetch("GET", &on_b, &[]).await;
    assert!(
        fetched.status == 200 && fetched.body == content[..],
        "{on_b}: {}",
        fetched.status
    );

    let mut freshness: Vec<Duration> = all.iter().map(|(_, _, visible)| *visible).collect();
    freshness.sort();
    let p99 = freshness[(freshness.len() * 99).div_ceil(100) - 1];
    println!(
        "cross_replica_freshness_p50_ms={:.1} cross_replica_freshness_p99_ms={:.1} (n={})",
        freshness[freshness.len() / 2].as_secs_f64() * 1000.0,
        p99.as_secs_f64() * 1000.0,
        freshness.len()
    );

    // A conflicting update from the same version through both replicas: exactly one wins.
    let (target, _, _) = &all[0];
    let mut contenders = Vec::new();
    for (replica, content) in [
        (a.clone(), b"through a".as_slice()),
        (b.clone(), b"through b".as_slice()),
    ] {
        let target = target.clone();
        contenders.push(tokio::spawn(async move {
            let mut client = replica.client().await;
            let mut next = update_header(T, P, &target);
            next.next_version = Some(update_artifact_header::NextVersion::Bump(
                artifactd::proto::BumpKind::Minor as i32,
            ));
            next.expected_current_version = "1.0.0".into();
            update(&mut client, next, content).await
        }));
    }
    let mut outcomes = Vec::new();
    for contender in contenders {
        outcomes.push(contender.await.unwrap());
    }
    let winners = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
    assert_eq!(winners, 1, "exactly one conflicting update wins: {outcomes:?}");
    let loser = outcomes.into_iter().find_map(Result::err).unwrap();
    assert_eq!(loser.code(), Code::FailedPrecondition, "{loser:?}");

    // A page token is bound to the replica that issued it: the other refuses it clearly.
    let mut search_a = SearchServiceClient::new(a.channel().await);
    let first = search_a
        .search(SearchRequest {
            tenant: T.into(),
            project: P.into(),
            query: "md".into(),
            page_size: 5,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        !first.next_page_token.is_empty(),
        "more than one page of documents"
    );
    let mut search_b = SearchServiceClient::new(b.channel().await);
    let foreign = search_b
        .search(SearchRequest {
            tenant: T.into(),
            project: P.into(),
            query: "md".into(),
            page_size: 5,
            page_token: first.next_page_token.clone(),
            ..Default::default()
        })
        .await;
    assert_status(foreign, Code::InvalidArgument, &["page_token"]);
    let second = search_a
        .search(SearchRequest {
            tenant: T.into(),
            project: P.into(),
            query: "md".into(),
            page_size: 5,
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await
        .expect("the issuing replica continues its own token");
    assert_eq!(second.into_inner().hits.len(), 5);

    drop((a, b));
    database.drop_database().await;
}

/// Destroying a tenant's keys on one replica leaves nothing of its content in another's
/// memory: the other learns it from the outbox, empties its chunk cache and forgets the
/// tenant's sealing key, and its reads answer FAILED_PRECONDITION as the first one's do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_destroyed_on_one_replica_empty_the_other_replicas_cache() {
    let database = TestDatabase::create().await;
    let s3 = S3TestServer::start().await;
    let master = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 32]);
    let sealed = |database: &TestDatabase| {
        ServerProcess::start_with(
            ServerOptions::default()
                .envs(s3.env("shredded-bucket"))
                .env("DATABASE_URL", database.url.clone())
                .env("ARTIFACTD_ENCRYPTION__MASTER_KEY", master.clone()),
        )
    };
    let a = sealed(&database);
    let b = sealed(&database);
    let mut on_a = a.client().await;
    let mut on_b = b.client().await;
    let content = "The payment service keeps card numbers out of its logs.\n"
        .repeat(3000)
        .into_bytes();
    let id = create_id(&mut on_a, header(T, P, "doc", "secrets.md"), &content).await;
    for _ in 0..2 {
        let (_, bytes) = download(&mut on_b, download_request(T, P, &id, ""))
            .await
            .unwrap();
        assert!(bytes == content);
    }
    assert!(
        common::cache_status(&b).await.memory_bytes > 0,
        "the other replica holds the content in its chunk cache"
    );

    artifactd::proto::encryption_service_client::EncryptionServiceClient::new(a.channel().await)
        .destroy_tenant_key(artifactd::proto::DestroyTenantKeyRequest {
            tenant: T.into(),
            confirm_tenant: T.into(),
        })
        .await
        .expect("destroying the tenant's keys");
    let deadline = Instant::now() + Duration::from_secs(10);
    while common::cache_status(&b).await.memory_bytes > 0 {
        assert!(
            Instant::now() < deadline,
            "the other replica still holds {} cached bytes of a tenant whose keys are gone",
            common::cache_status(&b).await.memory_bytes
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        b.log().contains("cached content and keys are forgotten"),
        "{}",
        b.log()
    );
    assert_status(
        download(&mut on_b, download_request(T, P, &id, "")).await,
        Code::FailedPrecondition,
        &["destroyed"],
    );
    // New content of the tenant, written through the other replica, is sealed under a new
    // key and reads back.
    let fresh = b"written after the destruction".repeat(100);
    let again = create_id(&mut on_b, header(T, P, "doc", "after.md"), &fresh).await;
    let (_, bytes) = download(&mut on_a, download_request(T, P, &again, ""))
        .await
        .unwrap();
    assert_eq!(bytes, fresh);
    drop((a, b));
    database.drop_database().await;
}

//! The disaster-recovery drill, exactly as the README's runbook runs it: an installation on
//! Postgres with failover (an in-process S3 primary, moto as the fallback) and encryption at
//! rest holds the release series and the docs corpus with lifecycle states, aliases, labels
//! and a trash; `artifactd dr export` backs it up; the catalog database and the primary
//! store are destroyed; `artifactd dr restore` rebuilds both from the fallback alone; the
//! restarted server serves every artifact and version byte-identical, finds them by search,
//! and `artifactd check --read-data` is clean.

mod common;

use artifactd::proto::retention_service_client::RetentionServiceClient;
use artifactd::proto::search_service_client::SearchServiceClient;
use artifactd::proto::{self, ListBackupsRequest, SearchRequest};
use common::backup::{Backups, Seen, environment, load_corpus, project_state, run};
use common::binary::{ServerOptions, ServerProcess};
use common::client::{download, download_request};
use common::moto::MotoServer;
use common::postgres::TestDatabase;
use common::s3::S3TestServer;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const T: &str = "bmad";
const MASTER_KEY: &str = "5151515151515151515151515151515151515151515151515151515151515151";

type Contents = BTreeMap<(String, String, String), blake3::Hash>;

/// Every project's state, and the hash of every live version's bytes by (project, name, version).
async fn snapshot(
    server: &ServerProcess,
    projects: &[&str],
) -> (BTreeMap<String, BTreeMap<String, Seen>>, Contents) {
    let mut client = server.client().await;
    let mut retention = RetentionServiceClient::new(server.channel().await);
    let mut states = BTreeMap::new();
    let mut contents = BTreeMap::new();
    for project in projects {
        let (state, ids) = project_state(&mut client, &mut retention, T, project).await;
        for (name, seen) in &state {
            for version in seen.versions.keys() {
                let (_, bytes) = download(&mut client, download_request(T, project, &ids[name], version))
                    .await
                    .unwrap_or_else(|e| panic!("{project}/{name}@{version}: {e}"));
                contents.insert(
                    (project.to_string(), name.clone(), version.clone()),
                    blake3::hash(&bytes),
                );
            }
        }
        states.insert(project.to_string(), state);
    }
    (states, contents)
}

#[tokio::test(flavor = "multi_thread")]
async fn dr_drill_rebuilds_the_installation_from_the_fallback_alone() {
    let fallback = MotoServer::start().await;
    let primary = S3TestServer::start().await;
    let database = TestDatabase::create().await;
    let env = environment(&primary, &fallback, &database, Some(MASTER_KEY));
    let projects = ["releases", "docs"];
    let server = ServerProcess::start_with(ServerOptions::default().envs(env.clone()));
    let mut client = server.client().await;
    let docs = load_corpus(&mut client, T).await;
    // A rotation: the backup holds the retired key and the active one.
    artifactd::proto::encryption_service_client::EncryptionServiceClient::new(server.channel().await)
        .rotate_tenant_key(proto::RotateTenantKeyRequest { tenant: T.into() })
        .await
        .unwrap();
    let (before, contents) = snapshot(&server, &projects).await;
    assert_eq!(before["docs"].len(), docs);
    assert!(contents.len() >= docs + 22, "{} versions", contents.len());

    // 1. Backups of every tenant, on both stores (the runbook's regular step).
    let scratch = tempfile::tempdir().unwrap();
    let (ok, output) = run(&["dr", "export"], &env, scratch.path());
    assert!(ok, "dr export failed:\n{output}");
    assert!(output.contains("1 tenant backup(s) taken"), "{output}");
    drop(client);
    drop(server);

    // The disaster: the catalog database and the primary store are gone.
    database.drop_database().await;
    drop(primary);

    // 2. A new, empty catalog and primary; the same fallback.
    let database = TestDatabase::create().await;
    let primary = S3TestServer::start().await;
    let env = environment(&primary, &fallback, &database, Some(MASTER_KEY));
    // 3. Restore from the fallback alone.
    let started = Instant::now();
    let (ok, output) = run(&["dr", "restore"], &env, scratch.path());
    assert!(ok, "dr restore failed:\n{output}");
    eprintln!(
        "dr restore took {:.1} s: {output}",
        started.elapsed().as_secs_f64()
    );
    assert!(output.contains("restored 1"), "{output}");
    assert!(
        !output.contains("copied 0 packs"),
        "the packs were copied to the new primary: {output}"
    );

    // 4. Start the server on the restored installation.
    let server = ServerProcess::start_with(ServerOptions::default().envs(env.clone()));
    let (after, restored) = snapshot(&server, &projects).await;
    assert_eq!(
        after, before,
        "every artifact, version, state, alias, label and trash item is back"
    );
    assert_eq!(restored, contents, "every version reads back byte-identical");

    // Search answers again (the index rebuilds from the restored catalog).
    let mut search = SearchServiceClient::new(server.channel().await);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let hits = search
            .search(SearchRequest {
                tenant: T.into(),
                project: "docs".into(),
                query: "contributing".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        if hits
            .hits
            .iter()
            .any(|hit| hit.name.to_lowercase().contains("contributing"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "search did not find the restored docs: {:?}",
            hits.hits
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The backups themselves are listed again.
    let listed = Backups::new(server.channel().await)
        .list_backups(ListBackupsRequest {
            tenant: T.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.backups.len(), 1);
    assert_eq!(listed.backups[0].kind, proto::BackupKind::Tenant as i32);
    drop(server);

    // 5. Every byte the catalog needs is on both stores and opens.
    let (ok, output) = run(&["check", "--read-data"], &env, scratch.path());
    assert!(ok, "check found damage after the restore:\n{output}");
}

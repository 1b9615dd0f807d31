//! `cargo bench --bench backup`: backups, restores and disaster recovery of the release
//! series plus the docs corpus, on Postgres with failover (an in-process S3 primary, moto as
//! the fallback), through the release binary. Prints `RESULT <name> <value>` lines:
//!
//! - `backup_mib_s`: logical MiB of content a tenant backup covers per second (catalog
//!   export, two object copies written and read back, every pack checked on both stores).
//! - `backup_vs_upload`: that rate divided by the rate the same content was uploaded at in
//!   the same run (higher is better).
//! - `restore_mib_s`: logical MiB per second restoring both projects from the backup into
//!   new projects (every object read and checked, every pack checked, catalog writes).
//! - `restore_vs_upload`: that rate divided by the upload rate.
//! - `dr_restore_seconds`: `artifactd dr restore` rebuilding an empty catalog and an empty
//!   primary from the fallback alone.
//! - `dr_restore_vs_copy`: the time of a plain copy of the same pack objects from the
//!   fallback to an empty bucket (list, get, put with the S3 client; the least a rebuild
//!   must do) divided by `dr_restore_seconds` (1.0 would mean restoring the catalog is free).

#[path = "../tests/common/mod.rs"]
mod common;

use artifactd::proto::GetArtifactRequest;
use artifactd::storage::BlobStore;
use common::backup::{Backups, backup, environment, from_backup, into_project, load_corpus, restore, run};
use common::binary::{ServerOptions, ServerProcess};
use common::moto::MotoServer;
use common::postgres::TestDatabase;
use common::s3::S3TestServer;
use std::time::Instant;

const T: &str = "bmad";
const MIB: f64 = 1024.0 * 1024.0;

/// `artifactd <args>` with the installation's environment; its output (it must succeed).
fn run_ok(args: &[&str], env: &[(String, String)], data_dir: &std::path::Path) -> String {
    let (ok, output) = run(args, env, data_dir);
    assert!(ok, "artifactd {args:?} failed:\n{output}");
    output
}

#[tokio::main]
async fn main() {
    let fallback = MotoServer::start().await;
    let primary = S3TestServer::start().await;
    let database = TestDatabase::create().await;
    let env = environment(&primary, &fallback, &database, None);
    let server = ServerProcess::start_with(ServerOptions::default().envs(env.clone()));
    let mut client = server.client().await;

    let started = Instant::now();
    let docs = load_corpus(&mut client, T).await;
    let upload_seconds = started.elapsed().as_secs_f64();
    let mut backups = Backups::new(server.channel().await);

    let started = Instant::now();
    let taken = backup(&mut backups, T, "", "").await.expect("a tenant backup");
    let backup_seconds = started.elapsed().as_secs_f64();
    let logical = taken.logical_bytes as f64;
    let upload_mib_s = logical / MIB / upload_seconds;
    let backup_mib_s = logical / MIB / backup_seconds;
    eprintln!(
        "{docs} docs and the release series: {} versions, {:.1} MiB, {} packs ({:.1} MiB); uploaded in {upload_seconds:.1} s, backed up in {backup_seconds:.2} s",
        taken.versions,
        logical / MIB,
        taken.packs,
        taken.pack_bytes as f64 / MIB
    );

    let started = Instant::now();
    for project in ["releases", "docs"] {
        restore(
            &mut backups,
            into_project(from_backup(T, project, &taken.id), &format!("{project}-restored")),
        )
        .await
        .expect("a restore");
    }
    let restore_seconds = started.elapsed().as_secs_f64();
    let restore_mib_s = logical / MIB / restore_seconds;
    // The restored copy answers (one read, to be sure the restore is real).
    let listed = client
        .list_artifacts(artifactd::proto::ListArtifactsRequest {
            tenant: T.into(),
            project: "releases-restored".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    client
        .get_artifact(GetArtifactRequest {
            tenant: T.into(),
            project: "releases-restored".into(),
            selector: Some(artifactd::proto::get_artifact_request::Selector::ArtifactId(
                listed.artifacts[0].id.clone(),
            )),
            version: String::new(),
        })
        .await
        .unwrap();

    // Disaster recovery: back up, lose the catalog and the primary, rebuild.
    let scratch = tempfile::tempdir().unwrap();
    run_ok(&["dr", "export"], &env, scratch.path());
    drop(client);
    drop(backups);
    drop(server);
    database.drop_database().await;
    drop(primary);
    let database = TestDatabase::create().await;
    let primary = S3TestServer::start().await;
    let env = environment(&primary, &fallback, &database, None);
    let started = Instant::now();
    let output = run_ok(&["dr", "restore"], &env, scratch.path());
    let dr_seconds = started.elapsed().as_secs_f64();
    eprintln!("dr restore: {}", output.trim());

    // The baseline: copy the same packs from the fallback to an empty bucket.
    let source = fallback.store("fallback").await;
    let target = S3TestServer::start().await;
    let sink = target.store("baseline").await;
    let started = Instant::now();
    let packs = source.list("packs/").await.expect("listing the fallback");
    let mut copied = 0u64;
    for object in &packs {
        let bytes = source
            .get(&object.key, artifactd::storage::GetOptions::default())
            .await
            .expect("reading a pack");
        copied += bytes.len() as u64;
        sink.put(&object.key, bytes).await.expect("writing a pack");
    }
    let copy_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "plain copy of {} packs ({:.1} MiB): {copy_seconds:.2} s",
        packs.len(),
        copied as f64 / MIB
    );

    println!("RESULT backup_mib_s {backup_mib_s:.1}");
    println!("RESULT backup_vs_upload {:.2}", backup_mib_s / upload_mib_s);
    println!("RESULT restore_mib_s {restore_mib_s:.1}");
    println!("RESULT restore_vs_upload {:.2}", restore_mib_s / upload_mib_s);
    println!("RESULT dr_restore_seconds {dr_seconds:.2}");
    println!("RESULT dr_restore_vs_copy {:.2}", copy_seconds / dr_seconds);
}

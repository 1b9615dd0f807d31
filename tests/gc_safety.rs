//! Garbage collection never takes what a live or restorable version needs. A randomized run
//! of thousands of operations through the real binary on both catalogs: workers upload
//! versions built from a shared pool of blocks (so uploads keep reusing chunks of packs the
//! collector is looking at), delete and restore versions and artifacts, purge the trash and
//! execute a retention policy, while a collector with a one-second grace period runs without
//! pause. At the end every version that is live or in the trash reads back byte-identical
//! and the consistency check reading every byte finds nothing wrong. A second test kills the
//! server at random moments during collection.

mod common;

use artifactd::proto::admin_service_client::AdminServiceClient;
use artifactd::proto::retention_service_client::RetentionServiceClient;
use artifactd::proto::{
    self, CheckConsistencyRequest, CollectGarbageRequest, DeleteArtifactRequest, DeleteVersionRequest,
    ExecuteRetentionPolicyRequest, PurgeTrashRequest, UndeleteArtifactRequest, UndeleteVersionRequest,
};
use common::binary::{Authed, ServerOptions, ServerProcess};
use common::client::{Client, create, download, download_request, header, update, update_header};
use common::postgres::TestDatabase;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tonic::Code;

const T: &str = "acme";
const P: &str = "gc";
const BLOCKS: usize = 24;
const BLOCK_LEN: usize = 24 * 1024;

/// What a version should read back as, and where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Live,
    Trash,
    Purged,
}

#[derive(Debug, Clone)]
struct ModelVersion {
    content: Arc<Vec<u8>>,
    place: Place,
}

#[derive(Debug, Clone)]
struct ModelArtifact {
    id: String,
    place: Place,
    /// In creation order; the last is the latest.
    versions: BTreeMap<u32, (String, ModelVersion)>,
}

impl ModelArtifact {
    fn latest(&self) -> &str {
        &self.versions.values().next_back().expect("a version").0
    }
}

fn blocks() -> Vec<Vec<u8>> {
    (0..BLOCKS)
        .map(|i| common::noise(BLOCK_LEN, 1000 + i as u64))
        .collect()
}

/// Content from a few shared blocks, with a unique tail so versions differ.
fn content(rng: &mut StdRng, blocks: &[Vec<u8>], unique: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.random_range(1..5) {
        out.extend_from_slice(&blocks[rng.random_range(0..blocks.len())]);
    }
    out.extend_from_slice(format!("version {unique} {}", rng.random::<u64>()).as_bytes());
    out.extend_from_slice(&common::noise(rng.random_range(0..6000), unique));
    out
}

fn tolerable(status: &tonic::Status) -> bool {
    // An upload that reused content the collector took meanwhile is refused whole.
    status.code() == Code::Aborted
}

struct Worker {
    client: Client,
    rng: StdRng,
    artifacts: Vec<ModelArtifact>,
    kind: String,
    counter: u64,
}

impl Worker {
    fn scope_of(&self) -> (&'static str, &'static str) {
        (T, P)
    }

    async fn step(&mut self, blocks: &[Vec<u8>], retention: &mut RetentionServiceClient<Authed>) -> u64 {
        let (tenant, project) = self.scope_of();
        self.counter += 1;
        let unique = self.counter + self.rng.random::<u32>() as u64 * 1_000_000;
        let live: Vec<usize> = (0..self.artifacts.len())
            .filter(|i| self.artifacts[*i].place == Place::Live)
            .collect();
        let choice = self.rng.random_range(0..100);
        match choice {
            0..=14 => {
                let data = content(&mut self.rng, blocks, unique);
                let name = format!("{}-{}", self.kind, self.counter);
                match create(
                    &mut self.client,
                    header(tenant, project, &self.kind, &name),
                    &data,
                )
                .await
                {
                    Ok(created) => {
                        let artifact = created.artifact.expect("artifact");
                        let version = created.version.expect("version").version;
                        let mut versions = BTreeMap::new();
                        versions.insert(
                            0,
                            (
                                version,
                                ModelVersion {
                                    content: Arc::new(data),
                                    place: Place::Live,
                                },
                            ),
                        );
                        self.artifacts.push(ModelArtifact {
                            id: artifact.id,
                            place: Place::Live,
                            versions,
                        });
                    }
                    Err(status) if tolerable(&status) => {}
                    Err(status) => panic!("create failed: {status:?}"),
                }
            }
            15..=44 if !live.is_empty() => {
                let index = live[self.rng.random_range(0..live.len())];
                let data = content(&mut self.rng, blocks, unique);
                let id = self.artifacts[index].id.clone();
                let mut next = update_header(tenant, project, &id);
                next.next_version = Some(proto::update_artifact_header::NextVersion::Bump(
                    proto::BumpKind::Patch as i32,
                ));
                match update(&mut self.client, next, &data).await {
                    Ok(updated) => {
                        let version = updated.version.expect("version").version;
                        let artifact = &mut self.artifacts[index];
                        let next = artifact.versions.keys().next_back().map_or(0, |k| k + 1);
                        artifact.versions.insert(
                            next,
                            (
                                version,
                                ModelVersion {
                                    content: Arc::new(data),
                                    place: Place::Live,
                                },
                            ),
                        );
                    }
                    Err(status) if tolerable(&status) => {}
                    Err(status) => panic!("update failed: {status:?}"),
                }
            }
            45..=59 if !live.is_empty() => {
                // Trash an older live version.
                let index = live[self.rng.random_range(0..live.len())];
                let artifact = &self.artifacts[index];
                let latest = artifact.latest().to_owned();
                let candidates: Vec<String> = artifact
                    .versions
                    .values()
                    .filter(|(v, m)| m.place == Place::Live && *v != latest)
                    .map(|(v, _)| v.clone())
                    .collect();
                if let Some(version) = candidates.get(self.rng.random_range(0..candidates.len().max(1))) {
                    let request = DeleteVersionRequest {
                        tenant: tenant.into(),
                        project: project.into(),
                        artifact_id: artifact.id.clone(),
                        version: version.clone(),
                    };
                    self.client
                        .delete_version(request)
                        .await
                        .expect("deleting a version");
                    set_place(&mut self.artifacts[index], version, Place::Trash);
                }
            }
            60..=69 => {
                // Restore or purge something in the trash.
                let trashed: Vec<(usize, String)> = self
                    .artifacts
                    .iter()
                    .enumerate()
                    .filter(|(_, a)| a.place == Place::Live)
                    .flat_map(|(i, a)| {
                        a.versions
                            .values()
                            .filter(|(_, m)| m.place == Place::Trash)
                            .map(move |(v, _)| (i, v.clone()))
                    })
                    .collect();
                if let Some((index, version)) = trashed
                    .get(self.rng.random_range(0..trashed.len().max(1)))
                    .cloned()
                {
                    let id = self.artifacts[index].id.clone();
                    if self.rng.random_bool(0.5) {
                        self.client
                            .undelete_version(UndeleteVersionRequest {
                                tenant: tenant.into(),
                                project: project.into(),
                                artifact_id: id,
                                version: version.clone(),
                            })
                            .await
                            .expect("restoring a version");
                        set_place(&mut self.artifacts[index], &version, Place::Live);
                    } else {
                        retention
                            .purge_trash(PurgeTrashRequest {
                                tenant: tenant.into(),
                                project: project.into(),
                                artifact_id: id,
                                version: version.clone(),
                            })
                            .await
                            .expect("purging a version");
                        set_place(&mut self.artifacts[index], &version, Place::Purged);
                    }
                }
            }
            70..=77 if !live.is_empty() => {
                let index = live[self.rng.random_range(0..live.len())];
                let id = self.artifacts[index].id.clone();
                self.client
                    .delete_artifact(DeleteArtifactRequest {
                        tenant: tenant.into(),
                        project: project.into(),
                        artifact_id: id,
                    })
                    .await
                    .expect("deleting an artifact");
                self.artifacts[index].place = Place::Trash;
            }
            78..=89 => {
                let trashed: Vec<usize> = (0..self.artifacts.len())
                    .filter(|i| self.artifacts[*i].place == Place::Trash)
                    .collect();
                if let Some(index) = trashed
                    .get(self.rng.random_range(0..trashed.len().max(1)))
                    .copied()
                {
                    let id = self.artifacts[index].id.clone();
                    if self.rng.random_bool(0.4) {
                        self.client
                            .undelete_artifact(UndeleteArtifactRequest {
                                tenant: tenant.into(),
                                project: project.into(),
                                artifact_id: id,
                            })
                            .await
                            .expect("restoring an artifact");
                        self.artifacts[index].place = Place::Live;
                    } else {
                        retention
                            .purge_trash(PurgeTrashRequest {
                                tenant: tenant.into(),
                                project: project.into(),
                                artifact_id: id,
                                version: String::new(),
                            })
                            .await
                            .expect("purging an artifact");
                        self.artifacts[index].place = Place::Purged;
                    }
                }
            }
            _ if !live.is_empty() => {
                // Read something live: downloads race the collector too.
                let index = live[self.rng.random_range(0..live.len())];
                let artifact = &self.artifacts[index];
                let readable: Vec<&(String, ModelVersion)> = artifact
                    .versions
                    .values()
                    .filter(|(_, m)| m.place == Place::Live)
                    .collect();
                let (version, model) = readable[self.rng.random_range(0..readable.len())];
                let (_, body) = download(
                    &mut self.client,
                    download_request(tenant, project, &artifact.id, version),
                )
                .await
                .unwrap_or_else(|status| panic!("reading {}@{version}: {status:?}", artifact.id));
                assert!(
                    body == *model.content,
                    "{}@{version} read back different bytes",
                    artifact.id
                );
            }
            _ => {}
        }
        1
    }
}

fn set_place(artifact: &mut ModelArtifact, version: &str, place: Place) {
    for (v, model) in artifact.versions.values_mut() {
        if v == version {
            model.place = place;
        }
    }
}

fn options(dir: &std::path::Path, database: &Option<TestDatabase>) -> ServerOptions {
    let mut options = ServerOptions {
        data_dir: Some(dir.to_owned()),
        ..Default::default()
    }
    .env("ARTIFACTD_RETENTION__GC_GRACE_SECONDS", "1")
    .env("ARTIFACTD_RETENTION__GC_INTERVAL_SECONDS", "0")
    .env("ARTIFACTD_RETENTION__LEASE_SECONDS", "3")
    .env("ARTIFACTD_RETENTION__GC_COMPACT_BELOW_PERCENT", "60")
    .env("ARTIFACTD_INGEST__PACK_TARGET_BYTES", "65536");
    if let Some(database) = database {
        options = options.env("DATABASE_URL", database.url.clone());
    }
    options
}

/// Restores everything restorable, then reads every version that is not purged.
async fn verify_everything(server: &ServerProcess, workers: &[Vec<ModelArtifact>]) -> u64 {
    let mut client = server.client().await;
    let mut read = 0;
    for artifacts in workers {
        for artifact in artifacts {
            if artifact.place == Place::Purged {
                continue;
            }
            if artifact.place == Place::Trash {
                client
                    .undelete_artifact(UndeleteArtifactRequest {
                        tenant: T.into(),
                        project: P.into(),
                        artifact_id: artifact.id.clone(),
                    })
                    .await
                    .expect("restoring an artifact at the end");
            }
            for (version, model) in artifact.versions.values() {
                match model.place {
                    Place::Purged => continue,
                    Place::Trash => {
                        client
                            .undelete_version(UndeleteVersionRequest {
                                tenant: T.into(),
                                project: P.into(),
                                artifact_id: artifact.id.clone(),
                                version: version.clone(),
                            })
                            .await
                            .expect("restoring a version at the end");
                    }
                    Place::Live => {}
                }
                let (_, body) = download(&mut client, download_request(T, P, &artifact.id, version))
                    .await
                    .unwrap_or_else(|status| {
                        panic!("{}@{version} is unreadable at the end: {status:?}", artifact.id)
                    });
                assert!(body == *model.content, "{}@{version} changed", artifact.id);
                read += 1;
            }
        }
    }
    read
}

async fn collect(admin: &mut AdminServiceClient<Authed>) -> Option<proto::GarbageCollection> {
    match admin
        .collect_garbage(CollectGarbageRequest { dry_run: false })
        .await
    {
        Ok(response) => response.into_inner().report,
        Err(status) if status.code() == Code::FailedPrecondition => None,
        // A run whose lease ran out (its renewals held up past the 3 s lease on a busy
        // machine) stops without changing anything more: a safe outcome, not a failure;
        // what it did before is checked with everything else at the end.
        Err(status) if status.code() == Code::Aborted => None,
        Err(status) => panic!("garbage collection failed: {status:?}"),
    }
}

async fn check_clean(server: &ServerProcess) {
    let mut admin = AdminServiceClient::new(server.channel().await);
    let report = admin
        .check_consistency(CheckConsistencyRequest { read_data: true })
        .await
        .expect("checking consistency")
        .into_inner();
    assert!(
        report.problems.is_empty(),
        "the check found problems: {:#?}",
        report.problems
    );
    assert!(report.bytes_read > 0, "the check read nothing");
}

async fn policy(server: &ServerProcess) -> String {
    let mut retention = RetentionServiceClient::new(server.channel().await);
    retention
        .create_retention_policy(proto::CreateRetentionPolicyRequest {
            tenant: T.into(),
            project: P.into(),
            name: "keep-three".into(),
            policy: Some(proto::create_retention_policy_request::Policy::Document(
                "artifact_types: [ret]\naction: delete\nkeep:\n  latest: 3\n".into(),
            )),
        })
        .await
        .expect("creating a policy")
        .into_inner()
        .policy
        .expect("policy")
        .id
}

async fn randomized_run(postgres: bool, seed: u64, operations: u64) {
    let dir = tempfile::tempdir().unwrap();
    let database = if postgres {
        Some(TestDatabase::create().await)
    } else {
        None
    };
    let server = ServerProcess::start_with(options(dir.path(), &database));
    let blocks = Arc::new(blocks());
    let policy_id = policy(&server).await;
    let done = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let reclaimed = Arc::new(AtomicU64::new(0));
    let compacted = Arc::new(AtomicU64::new(0));

    // Two collectors compete for the lease (as two replicas' jobs would); one runs at a time.
    let mut collectors = Vec::new();
    for _ in 0..2 {
        let (done, reclaimed, compacted) = (done.clone(), reclaimed.clone(), compacted.clone());
        let mut admin = AdminServiceClient::new(server.channel().await);
        collectors.push(tokio::spawn(async move {
            let mut runs = 0u64;
            while !done.load(Ordering::SeqCst) {
                if let Some(report) = collect(&mut admin).await {
                    assert!(
                        report.problems.is_empty(),
                        "collection problems: {:?}",
                        report.problems
                    );
                    reclaimed.fetch_add(report.bytes_reclaimed, Ordering::SeqCst);
                    compacted.fetch_add(report.packs_compacted, Ordering::SeqCst);
                    runs += 1;
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            runs
        }));
    }

    let mut handles = Vec::new();
    for w in 0..4u64 {
        let client = server.client().await;
        let mut retention = RetentionServiceClient::new(server.channel().await);
        let (blocks, count, policy_id) = (blocks.clone(), count.clone(), policy_id.clone());
        handles.push(tokio::spawn(async move {
            let mut worker = Worker {
                client,
                rng: StdRng::seed_from_u64(seed * 100 + w),
                artifacts: Vec::new(),
                kind: if w == 0 { "ret".into() } else { format!("doc{w}") },
                counter: 0,
            };
            while count.fetch_add(1, Ordering::SeqCst) < operations {
                worker.step(&blocks, &mut retention).await;
                if w == 0 && worker.counter.is_multiple_of(40) {
                    // The policy only covers this worker's artifacts: its model follows the run.
                    let run = retention
                        .execute_retention_policy(ExecuteRetentionPolicyRequest {
                            tenant: T.into(),
                            project: P.into(),
                            policy_id: policy_id.clone(),
                            expected_plan: String::new(),
                        })
                        .await
                        .expect("executing the policy")
                        .into_inner()
                        .run
                        .expect("run");
                    assert!(
                        run.skipped.is_empty(),
                        "nothing else touches these: {:?}",
                        run.skipped
                    );
                    for decision in run.affected {
                        if let Some(artifact) =
                            worker.artifacts.iter_mut().find(|a| a.id == decision.artifact_id)
                        {
                            set_place(artifact, &decision.version, Place::Trash);
                        }
                    }
                }
            }
            worker.artifacts
        }));
    }
    let mut models = Vec::new();
    for handle in handles {
        models.push(handle.await.expect("worker"));
    }
    done.store(true, Ordering::SeqCst);
    let mut runs = 0;
    for collector in collectors {
        runs += collector.await.expect("collector");
    }
    // Two more runs a grace period apart sweep what the last marks left.
    let mut admin = AdminServiceClient::new(server.channel().await);
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        if let Some(report) = collect(&mut admin).await {
            reclaimed.fetch_add(report.bytes_reclaimed, Ordering::SeqCst);
        }
    }
    check_clean(&server).await;
    let read = verify_everything(&server, &models).await;
    check_clean(&server).await;
    let reclaimed = reclaimed.load(Ordering::SeqCst);
    eprintln!(
        "{} operations, {runs} collection runs, {} bytes reclaimed, {} packs compacted, {read} versions read back",
        operations,
        reclaimed,
        compacted.load(Ordering::SeqCst)
    );
    assert!(runs >= 5, "the collector ran only {runs} times");
    assert!(
        reclaimed > 0,
        "the collector reclaimed nothing: the run did not exercise it"
    );
    assert!(read > 100, "only {read} versions were left to read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn collection_never_takes_live_or_restorable_content_on_sqlite() {
    randomized_run(false, 7, 2000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn collection_never_takes_live_or_restorable_content_on_postgres() {
    randomized_run(true, 11, 2000).await;
}

/// Kills the server at random moments while it collects, restarts it, and carries on.
async fn killed_during_collection(postgres: bool, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let database = if postgres {
        Some(TestDatabase::create().await)
    } else {
        None
    };
    let blocks = blocks();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut worker_artifacts: Vec<ModelArtifact> = Vec::new();
    let mut kills = 0;
    for round in 0..8u64 {
        let mut server = ServerProcess::start_with(options(dir.path(), &database));
        let mut retention = RetentionServiceClient::new(server.channel().await);
        let mut worker = Worker {
            client: server.client().await,
            rng: StdRng::seed_from_u64(seed * 1000 + round),
            artifacts: std::mem::take(&mut worker_artifacts),
            kind: "doc".into(),
            counter: round * 10_000,
        };
        for _ in 0..60 {
            worker.step(&blocks, &mut retention).await;
        }
        worker_artifacts = worker.artifacts;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let mut admin = AdminServiceClient::new(server.channel().await);
        // One whole run so that marks age; then one cut short by a kill.
        collect(&mut admin).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let call = tokio::spawn(async move {
            admin
                .collect_garbage(CollectGarbageRequest { dry_run: false })
                .await
        });
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..120))).await;
        server.kill();
        kills += 1;
        let _ = call.await;
    }
    let server = ServerProcess::start_with(options(dir.path(), &database));
    let mut admin = AdminServiceClient::new(server.channel().await);
    // The lease of a killed collector must expire or be taken over: runs until one goes.
    let mut finished = 0;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        if collect(&mut admin).await.is_some() {
            finished += 1;
            if finished == 3 {
                break;
            }
        }
    }
    assert!(finished >= 2, "no collection could run after the kills");
    check_clean(&server).await;
    let read = verify_everything(&server, &[worker_artifacts]).await;
    check_clean(&server).await;
    eprintln!("{kills} kills during collection, {finished} clean runs after, {read} versions read back");
    assert!(read > 20, "only {read} versions were left to read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_collector_killed_at_random_points_loses_nothing_on_sqlite() {
    killed_during_collection(false, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_collector_killed_at_random_points_loses_nothing_on_postgres() {
    killed_during_collection(true, 5).await;
}

/// Pack object keys on one side of a failover pair.
async fn packs_on(server: &common::s3::S3TestServer, bucket: &str) -> BTreeSet<String> {
    use artifactd::storage::BlobStore;
    server
        .store(bucket)
        .await
        .list("packs/")
        .await
        .expect("listing packs")
        .into_iter()
        .map(|object| object.key)
        .collect()
}

/// With a fallback store, collection deletes from both sides; a side that is down when the
/// collector deletes keeps its copy until a later run, and a pack made again from the same
/// bytes after its collection stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn collection_deletes_from_both_stores_of_a_failover_pair() {
    use common::failover::{CatalogKind, start_pair_with};
    let mut pair = start_pair_with(
        CatalogKind::Sqlite,
        &[
            ("ARTIFACTD_RETENTION__GC_GRACE_SECONDS", "1"),
            ("ARTIFACTD_RETENTION__GC_INTERVAL_SECONDS", "0"),
            ("ARTIFACTD_RETENTION__LEASE_SECONDS", "3"),
        ],
    )
    .await;
    let mut client = pair.server.client().await;
    let mut retention = RetentionServiceClient::new(pair.server.channel().await);
    let mut admin = AdminServiceClient::new(pair.server.channel().await);
    let keep = common::noise(700_000, 1);
    let drop = common::noise(700_000, 2);
    let kept_id = common::client::create_id(&mut client, header(T, P, "bundle", "kept.bin"), &keep).await;
    let dropped_id =
        common::client::create_id(&mut client, header(T, P, "bundle", "dropped.bin"), &drop).await;
    common::failover::wait_drained(&pair.server).await;
    let before_primary = packs_on(&pair.primary, "primary-bucket").await;
    let before_fallback = packs_on(&pair.fallback, "fallback-bucket").await;
    assert_eq!(
        before_primary, before_fallback,
        "the mirror holds what the primary holds"
    );
    client
        .delete_artifact(DeleteArtifactRequest {
            tenant: T.into(),
            project: P.into(),
            artifact_id: dropped_id.clone(),
        })
        .await
        .unwrap();
    retention
        .purge_trash(PurgeTrashRequest {
            tenant: T.into(),
            project: P.into(),
            artifact_id: dropped_id.clone(),
            version: String::new(),
        })
        .await
        .unwrap();
    // Mark; then, with the fallback down, sweep: the primary loses the packs at once.
    collect(&mut admin).await.expect("marking run");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    pair.fallback.stop().await;
    let report = collect(&mut admin).await.expect("sweeping run");
    assert!(report.packs_reclaimed > 0, "{report:?}");
    assert!(report.delete_failures > 0, "the fallback was down: {report:?}");
    pair.fallback.restart().await;
    let mut deleted = false;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(report) = collect(&mut admin).await
            && report.delete_failures == 0
        {
            deleted = true;
            break;
        }
    }
    assert!(
        deleted,
        "the deletes never went through once the fallback was back"
    );
    let after_primary = packs_on(&pair.primary, "primary-bucket").await;
    let after_fallback = packs_on(&pair.fallback, "fallback-bucket").await;
    assert!(
        after_primary.len() < before_primary.len(),
        "nothing was deleted from the primary"
    );
    assert_eq!(after_primary, after_fallback, "both sides lost the same packs");
    // The same bytes uploaded again make the same packs again: they must survive collection.
    let again = common::client::create_id(&mut client, header(T, P, "bundle", "again.bin"), &drop).await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        collect(&mut admin).await;
    }
    for (id, content) in [(&kept_id, &keep), (&again, &drop)] {
        let (_, body) = download(&mut client, download_request(T, P, id, ""))
            .await
            .expect("reading back");
        assert!(body == **content, "{id} changed");
    }
    common::failover::wait_drained(&pair.server).await;
    check_clean(&pair.server).await;
}

/// `artifactd gc` runs the same collection from the command line, beside a stopped server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gc_command_collects_what_the_call_would() {
    let dir = tempfile::tempdir().unwrap();
    let options = options(dir.path(), &None);
    let mut server = ServerProcess::start_with(options.clone());
    let mut client = server.client().await;
    let mut retention = RetentionServiceClient::new(server.channel().await);
    let keep = common::noise(300_000, 11);
    let kept_id = common::client::create_id(&mut client, header(T, P, "bundle", "kept.bin"), &keep).await;
    let dropped_id = common::client::create_id(
        &mut client,
        header(T, P, "bundle", "dropped.bin"),
        &common::noise(300_000, 12),
    )
    .await;
    client
        .delete_artifact(DeleteArtifactRequest {
            tenant: T.into(),
            project: P.into(),
            artifact_id: dropped_id.clone(),
        })
        .await
        .unwrap();
    retention
        .purge_trash(PurgeTrashRequest {
            tenant: T.into(),
            project: P.into(),
            artifact_id: dropped_id,
            version: String::new(),
        })
        .await
        .unwrap();
    assert!(server.terminate().success());
    let before = server.fs_store_bytes();
    let gc = |dry_run: bool| {
        let mut command = common::binary::command();
        command.arg("gc").env("ARTIFACTD_DATA_DIR", dir.path());
        for (key, value) in &options.env {
            command.env(key, value);
        }
        if dry_run {
            command.arg("--dry-run");
        }
        let output = command.output().expect("running artifactd gc");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    };
    let dry = gc(true);
    assert!(dry.contains("dry run: nothing changed"), "{dry}");
    let marked = gc(false);
    assert!(marked.contains("reclaimed 0 packs"), "{marked}");
    std::thread::sleep(Duration::from_millis(1100));
    let swept = gc(false);
    assert!(!swept.contains("reclaimed 0 packs"), "{swept}");
    let after = server.fs_store_bytes();
    assert!(
        after < before,
        "the store holds {after} bytes, as before ({before})"
    );
    let server = ServerProcess::start_with(options);
    let mut client = server.client().await;
    let (_, body) = download(&mut client, download_request(T, P, &kept_id, ""))
        .await
        .unwrap();
    assert!(body == keep);
    check_clean(&server).await;
}

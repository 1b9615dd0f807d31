//! Failover harness: an artifactd process over two stoppable in-process S3 servers, the
//! FallbackService calls the tests and benchmarks need, and the seeded random fault run.

use super::binary::{ServerOptions, ServerProcess};
use super::client::{create, download, download_request, header};
use super::postgres::TestDatabase;
use super::s3::S3TestServer;
use artifactd::catalog::Catalog;
use artifactd::proto::fallback_service_client::FallbackServiceClient;
use artifactd::proto::{
    GetFallbackStatusRequest, GetFallbackStatusResponse, SyncFallbackRequest, SyncFallbackResult,
    sync_fallback_response,
};
use artifactd::storage::BlobStore;
use std::time::{Duration, Instant};

pub const T: &str = "acme";
pub const P: &str = "failover";

pub fn failover_tuning() -> Vec<(String, String)> {
    [
        ("ARTIFACTD_STORAGE__FAILOVER__REQUEST_TIMEOUT_MS", "1500"),
        ("ARTIFACTD_STORAGE__FAILOVER__PROBE_INTERVAL_MS", "200"),
        (
            "ARTIFACTD_STORAGE__FAILOVER__BREAKER__OPEN_BACKOFF_INITIAL_MS",
            "200",
        ),
        (
            "ARTIFACTD_STORAGE__FAILOVER__BREAKER__OPEN_BACKOFF_MAX_MS",
            "1000",
        ),
        ("ARTIFACTD_STORAGE__FAILOVER__REPLICATION_RETRY_INITIAL_MS", "100"),
        ("ARTIFACTD_STORAGE__FAILOVER__REPLICATION_RETRY_MAX_MS", "1000"),
        // Reads reach the stores (these tests are about what the stores answer), not the
        // memory cache of decoded chunks.
        ("ARTIFACTD_DELIVERY__CACHE_MEMORY_BYTES", "0"),
        // Small packs: every upload below spans several of them.
        ("ARTIFACTD_INGEST__PACK_TARGET_BYTES", "262144"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

pub struct Pair {
    pub primary: S3TestServer,
    pub fallback: S3TestServer,
    pub server: ServerProcess,
    /// The Postgres catalog, when the pair runs on one (SQLite in the data dir otherwise).
    pub database: Option<TestDatabase>,
}

impl Pair {
    /// The catalog the server uses, opened beside it.
    pub async fn catalog(&self) -> Catalog {
        let url = match &self.database {
            Some(database) => database.url.clone(),
            None => format!("sqlite://{}/catalog.db", self.server.data_dir.display()),
        };
        Catalog::connect(&url, 2).await.unwrap()
    }
}

/// Which catalog an end-to-end failover test runs on.
#[derive(Debug, Clone, Copy)]
pub enum CatalogKind {
    Sqlite,
    Postgres,
}

pub async fn start_pair() -> Pair {
    start_pair_on(CatalogKind::Sqlite).await
}

pub async fn start_pair_on(kind: CatalogKind) -> Pair {
    start_pair_with(kind, &[]).await
}

/// A pair with settings of its own on top of the usual tuning.
pub async fn start_pair_with(kind: CatalogKind, settings: &[(&str, &str)]) -> Pair {
    let primary = S3TestServer::start().await;
    let fallback = S3TestServer::start().await;
    let database = match kind {
        CatalogKind::Sqlite => None,
        CatalogKind::Postgres => Some(TestDatabase::create().await),
    };
    let mut options = ServerOptions::default()
        .envs(primary.env("primary-bucket"))
        .envs(fallback.fallback_env("fallback-bucket"))
        .envs(failover_tuning());
    for (name, value) in settings {
        options = options.env(name, *value);
    }
    if let Some(database) = &database {
        options = options.env("DATABASE_URL", database.url.clone());
    }
    let server = ServerProcess::start_with(options);
    Pair {
        primary,
        fallback,
        server,
        database,
    }
}

pub async fn fallback_client(server: &ServerProcess) -> FallbackServiceClient<super::binary::Authed> {
    FallbackServiceClient::new(server.channel().await)
}

pub async fn status(server: &ServerProcess) -> GetFallbackStatusResponse {
    fallback_client(server)
        .await
        .get_fallback_status(GetFallbackStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn wait_drained(server: &ServerProcess) {
    wait_for(
        "the replication queue to drain",
        Duration::from_secs(60),
        || async { status(server).await.queue_depth == 0 },
    )
    .await;
}

pub async fn sync(server: &ServerProcess, dry_run: bool) -> SyncFallbackResult {
    let mut stream = fallback_client(server)
        .await
        .sync_fallback(SyncFallbackRequest { dry_run })
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(message) = stream.message().await.unwrap() {
        if let Some(sync_fallback_response::Message::Result(result)) = message.message {
            last = Some(result);
        }
    }
    last.expect("SyncFallback ends with a result")
}

/// What a fault run did and found.
#[derive(Debug)]
pub struct FaultRunReport {
    pub seed: u64,
    pub operations: usize,
    pub attempted_creates: usize,
    pub acknowledged: usize,
    pub unavailable: usize,
    pub toggles: u64,
    pub artifacts: usize,
    pub lost: usize,
    pub unacknowledged_visible: usize,
    pub committed_packs: usize,
    pub committed_missing_on_primary: usize,
    pub committed_missing_on_fallback: usize,
    pub one_sided_orphans: usize,
}

impl std::fmt::Display for FaultRunReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "fault run seed {}: {} operations ({} creates attempted), {} acknowledged, {} unavailable, \
             {} store stops/starts, {} artifacts, {} acknowledged lost, {} unacknowledged visible, \
             committed packs {} (missing on primary {}, on fallback {}), uncommitted packs on one side only {}",
            self.seed,
            self.operations,
            self.attempted_creates,
            self.acknowledged,
            self.unavailable,
            self.toggles,
            self.artifacts,
            self.lost,
            self.unacknowledged_visible,
            self.committed_packs,
            self.committed_missing_on_primary,
            self.committed_missing_on_fallback,
            self.one_sided_orphans
        )
    }
}

/// Creates and updates artifacts while a seeded injector stops and starts both stores at
/// random moments; then restarts both, waits for replication, and checks every
/// acknowledged version and every committed pack.
pub async fn fault_run(seed: u64, operations: usize) -> FaultRunReport {
    use artifactd::proto::update_artifact_header::NextVersion;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeMap;
    use std::sync::Arc;

    let primary = S3TestServer::start().await;
    let fallback = S3TestServer::start().await;
    let server = ServerProcess::start_with(
        ServerOptions::default()
            .envs(primary.env("primary-bucket"))
            .envs(fallback.fallback_env("fallback-bucket"))
            .envs(failover_tuning())
            .env("ARTIFACTD_STORAGE__FAILOVER__REQUEST_TIMEOUT_MS", "800")
            .env("ARTIFACTD_STORAGE__FAILOVER__PROBE_INTERVAL_MS", "100")
            .env(
                "ARTIFACTD_STORAGE__FAILOVER__BREAKER__OPEN_BACKOFF_INITIAL_MS",
                "100",
            )
            .env("ARTIFACTD_STORAGE__FAILOVER__BREAKER__OPEN_BACKOFF_MAX_MS", "400")
            .env("ARTIFACTD_INGEST__PACK_TARGET_BYTES", "65536"),
    );
    let stores = Arc::new(tokio::sync::Mutex::new([primary, fallback]));
    let stop_faults = tokio_util::sync::CancellationToken::new();

    // The fault injector: stops or starts one store at random moments.
    let injector = {
        let stores = stores.clone();
        let stop = stop_faults.clone();
        tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
            let mut toggles = 0u64;
            while !stop.is_cancelled() {
                let pause = Duration::from_millis(rng.random_range(20..300));
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(pause) => {}
                }
                let mut stores = stores.lock().await;
                let which = rng.random_range(0..2usize);
                let other_running = stores[1 - which].is_running();
                if stores[which].is_running() {
                    // Both down happens too, but less often.
                    if other_running || rng.random_bool(0.3) {
                        stores[which].stop().await;
                        toggles += 1;
                    }
                } else {
                    stores[which].restart().await;
                    toggles += 1;
                }
            }
            toggles
        })
    };

    let corpus: Vec<Vec<u8>> = [
        "bmad-docs/README.md",
        "bmad-docs/CHANGELOG.md",
        "bmad-docs/CONTRIBUTING.md",
    ]
    .iter()
    .map(|p| std::fs::read(super::corpus_dir().join(p)).unwrap())
    .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut client = server.client().await;
    /// An artifact's id and its acknowledged versions with their content.
    type Acknowledged = (String, Vec<(String, Vec<u8>)>);
    let mut acknowledged: BTreeMap<String, Acknowledged> = BTreeMap::new();
    let (mut acked, mut unavailable, mut attempted_creates) = (0usize, 0usize, 0usize);
    for operation in 0..operations {
        let mut content = corpus[rng.random_range(0..corpus.len())].clone();
        let cut = rng.random_range(0..content.len());
        content.truncate(cut.max(1));
        content.extend_from_slice(&super::noise(
            rng.random_range(0..120_000),
            seed + operation as u64,
        ));
        let update_existing = !acknowledged.is_empty() && rng.random_bool(0.6);
        let result = if update_existing {
            let index = rng.random_range(0..acknowledged.len());
            let (name, (id, versions)) = acknowledged
                .iter()
                .nth(index)
                .map(|(n, v)| (n.clone(), v.clone()))
                .unwrap();
            let current = versions.last().unwrap().0.clone();
            let mut next = super::client::update_header(T, P, &id);
            next.next_version = Some(NextVersion::Bump(artifactd::proto::BumpKind::Patch as i32));
            next.expected_current_version = current;
            super::client::update(&mut client, next, &content)
                .await
                .map(|response| (name, id, response.version.unwrap().version))
        } else {
            attempted_creates += 1;
            let name = format!("fault-{operation:04}.bin");
            create(&mut client, header(T, P, "bundle", &name), &content)
                .await
                .map(|response| {
                    (
                        name,
                        response.artifact.unwrap().id,
                        response.version.unwrap().version,
                    )
                })
        };
        match result {
            Ok((name, id, version)) => {
                acked += 1;
                acknowledged
                    .entry(name)
                    .or_insert_with(|| (id, Vec::new()))
                    .1
                    .push((version, content));
            }
            Err(status) => {
                assert_eq!(
                    status.code(),
                    tonic::Code::Unavailable,
                    "operation {operation}: {status:?}"
                );
                unavailable += 1;
                if std::env::var_os("ARTIFACTD_FAULT_VERBOSE").is_some() {
                    eprintln!("operation {operation}: {}", status.message());
                }
                // Like a well-behaved client, back off a little after UNAVAILABLE.
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    }
    stop_faults.cancel();
    let toggles = injector.await.unwrap();
    {
        let mut stores = stores.lock().await;
        for store in stores.iter_mut() {
            if !store.is_running() {
                store.restart().await;
            }
        }
    }
    wait_drained(&server).await;

    // Every acknowledged version reads back; nothing else exists.
    let mut lost = 0usize;
    for (name, (id, versions)) in &acknowledged {
        let listed = client
            .list_versions(artifactd::proto::ListVersionsRequest {
                tenant: T.into(),
                project: P.into(),
                artifact_id: id.clone(),
                page_size: 1000,
                page_token: String::new(),
                states: Vec::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let mut listed: Vec<String> = listed.versions.into_iter().map(|v| v.version).collect();
        listed.reverse();
        let expected: Vec<String> = versions.iter().map(|(v, _)| v.clone()).collect();
        if listed != expected {
            eprintln!("{name}: versions {listed:?}, acknowledged {expected:?}");
            lost += 1;
        }
        for (version, content) in versions {
            match download(&mut client, download_request(T, P, id, version)).await {
                Ok((_, bytes)) if bytes == *content => {}
                other => {
                    lost += 1;
                    eprintln!("{name} {version} did not read back: {:?}", other.map(|(h, _)| h));
                }
            }
        }
    }
    let mut visible = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_artifacts(artifactd::proto::ListArtifactsRequest {
                tenant: T.into(),
                project: P.into(),
                page_size: 1000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        visible.extend(page.artifacts.into_iter().map(|a| a.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let acknowledged_names: Vec<String> = acknowledged.keys().cloned().collect();
    let unacknowledged_visible = visible
        .iter()
        .filter(|name| !acknowledged_names.contains(name))
        .count()
        + acknowledged_names
            .iter()
            .filter(|name| !visible.contains(name))
            .count();
    // Every committed pack is on both stores. Packs of abandoned uploads may exist on one
    // side only (a write can land after its client gave up on it); they are garbage for the
    // collector, not data.
    let catalog = Catalog::connect(&format!("sqlite://{}/catalog.db", server.data_dir.display()), 1)
        .await
        .unwrap();
    let committed: std::collections::BTreeSet<String> = catalog
        .packs_in_state("committed")
        .await
        .unwrap()
        .into_iter()
        .map(|pack| {
            artifactd::ingest::PackId::from_hex(&pack.pack_id)
                .unwrap()
                .object_key()
        })
        .collect();
    let (primary_keys, fallback_keys) = {
        let stores = stores.lock().await;
        let keys = |store: artifactd::storage::S3Store| async move {
            store
                .list("packs/")
                .await
                .unwrap()
                .into_iter()
                .map(|o| o.key)
                .collect::<std::collections::BTreeSet<String>>()
        };
        (
            keys(stores[0].store("primary-bucket").await).await,
            keys(stores[1].store("fallback-bucket").await).await,
        )
    };
    let missing_on_primary = committed.difference(&primary_keys).count();
    let missing_on_fallback = committed.difference(&fallback_keys).count();
    let one_sided_orphans = primary_keys.symmetric_difference(&fallback_keys).count();
    FaultRunReport {
        seed,
        operations,
        attempted_creates,
        acknowledged: acked,
        unavailable,
        toggles,
        artifacts: acknowledged.len(),
        lost,
        unacknowledged_visible,
        committed_packs: committed.len(),
        committed_missing_on_primary: missing_on_primary,
        committed_missing_on_fallback: missing_on_fallback,
        one_sided_orphans,
    }
}

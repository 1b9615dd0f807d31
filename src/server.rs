//! Wiring: opens the catalog and the store, starts background jobs and the gRPC and HTTP
//! listeners, and tears everything down in order on shutdown.

use crate::api::{AccessApi, AdminApi, ArtifactApi, AuditApi, FallbackApi, SearchApi};
use crate::app::{AccessAdmin, Artifacts};
use crate::catalog::Catalog;
use crate::config::{Backend, Config};
use crate::identity::layer::AuthLayer;
use crate::identity::tokens::TokenVerifier;
use crate::identity::{Authenticator, ensure_admin};
use crate::jobs::{
    FallbackSync, HealthInputs, HealthMonitor, INDEXER_JOB, LastHealth, Supervisor, run_indexer,
    run_outbox_pruner, run_prober, run_reconciler, run_replicator,
};
use crate::proto::access_service_server::AccessServiceServer;
use crate::proto::admin_service_server::AdminServiceServer;
use crate::proto::artifact_service_server::ArtifactServiceServer;
use crate::proto::audit_service_server::AuditServiceServer;
use crate::proto::backup_service_server::BackupServiceServer;
use crate::proto::encryption_service_server::EncryptionServiceServer;
use crate::proto::fallback_service_server::FallbackServiceServer;
use crate::proto::retention_service_server::RetentionServiceServer;
use crate::proto::search_service_server::SearchServiceServer;
use crate::search::{Indexer, SearchIndex};
use crate::storage::{
    DeadlineConfig, DeadlineStore, DiskCache, DiskCachedStore, DynBlobStore, FailoverStore, FsStore,
    MeteredStore, S3Store,
};
use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Largest gRPC message the server decodes; data messages above the configured limit but
/// below this get a clear INVALID_ARGUMENT from the service instead of a transport error.
const MAX_DECODED_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

/// Flow-control windows: what a client may send before the server has read it. Each
/// upload's window is memory outside the transfer budget (held in h2's receive buffers
/// while the upload waits for the budget), so it is kept to what the link needs: 512 KiB
/// covers 1 Gbit/s at 4 ms round trips. On this machine 16 concurrent uploads ran as fast
/// with 1 MiB as with 4 MiB while peaking 16 × 3 MiB lower, and 16 concurrent 2 GiB uploads
/// then downloads peaked at 168.4 MiB with 512 KiB against 183.3 with 1 MiB (uploads 145
/// and 161 MiB/s, within this machine's spread of 135-161 between identical runs).
const STREAM_WINDOW_BYTES: u32 = 512 * 1024;
const CONNECTION_WINDOW_BYTES: u32 = 16 * 1024 * 1024;

/// HTTP/2 limits per connection, chosen rather than inherited:
/// - Concurrent streams: agents multiplex uploads, downloads and searches on one channel;
///   512 is far above what one client needs and bounds what one connection can hold.
/// - Streams the client resets before the server has accepted them: h2 answers more than
///   this with GOAWAY (its guard against "rapid reset" floods, CVE-2023-44487), which kills
///   every other call on the connection. Its default of 20 is reached by an honest client
///   that cancels a burst of uploads while the server is busy; 256 stays a small bound on
///   work a flood can queue.
/// - Streams the server resets because the client misbehaved: h2's own default, kept on
///   purpose (a client that keeps sending malformed requests is cut off).
const MAX_CONCURRENT_STREAMS: u32 = 512;
const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 256;
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

/// Addresses the server actually listens on (ports may have been chosen by the OS).
#[derive(Debug, Clone, Copy)]
pub struct BoundAddrs {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    /// The listener of download links, when they have one of their own.
    pub links: Option<SocketAddr>,
}

/// Every backend gets a deadline and per-call metrics, whatever else wraps it.
fn deadlines_and_metrics(store: DynBlobStore, config: &Config, role: &'static str) -> DynBlobStore {
    Arc::new(MeteredStore::new(
        Arc::new(DeadlineStore::new(store, deadline_config(config))),
        role,
    ))
}

/// With a fallback, deadlines follow the store's observed latency (capped by the failover
/// request timeout), so a hung side costs a call a fraction of a second before the other
/// side answers. Without one, every call gets the request timeout: with no other store to
/// turn to, giving up on a slow but working store only turns a late success into an error
/// (a busy disk's fsync; 16 downloads of 4 GiB reading packs the page cache no longer held
/// while the kernel wrote back the uploads' 64 GB failed after 5 s).
fn deadline_config(config: &Config) -> DeadlineConfig {
    if !config.storage.fallback.enabled {
        return DeadlineConfig::fixed(Duration::from_millis(config.storage.s3.request_timeout_ms));
    }
    let ceiling = config.storage.failover.request_timeout;
    DeadlineConfig {
        ceiling,
        floor: Duration::from_millis(config.storage.deadline_floor_ms).min(ceiling),
        ..DeadlineConfig::default()
    }
}

/// The configured primary store, wrapped in a `FailoverStore` when a fallback is enabled.
pub async fn open_store(
    config: &Config,
    catalog: &Catalog,
) -> anyhow::Result<(DynBlobStore, Option<Arc<FailoverStore>>)> {
    let (primary, fallback) = open_sides(config).await?;
    Ok(combine(config, catalog, primary, fallback))
}

/// The primary alone, or both sides under a `FailoverStore`.
fn combine(
    config: &Config,
    catalog: &Catalog,
    primary: DynBlobStore,
    fallback: Option<DynBlobStore>,
) -> (DynBlobStore, Option<Arc<FailoverStore>>) {
    let Some(fallback) = fallback else {
        return (primary, None);
    };
    let failover = Arc::new(FailoverStore::new(
        primary,
        fallback,
        Arc::new(catalog.clone()),
        Some(Arc::new(catalog.clone())),
        config.failover_config(),
        Some(Arc::new(crate::ingest::pack::object_matches_name)),
    ));
    (failover.clone(), Some(failover))
}

/// Packs read more than once are kept on local disk when the store is S3 (the filesystem
/// store is local already).
fn with_disk_cache(config: &Config, store: DynBlobStore) -> (DynBlobStore, Option<Arc<DiskCache>>) {
    if config.storage.backend != Backend::S3 || config.delivery.cache_disk_bytes == 0 {
        return (store, None);
    }
    let cache = DiskCache::open(&config.cache_dir(), config.delivery.cache_disk_bytes);
    let cached = DiskCachedStore::new(
        store,
        cache.clone(),
        "packs/",
        Arc::new(crate::ingest::pack::object_matches_name),
    );
    (Arc::new(cached), Some(cache))
}

/// Each store by the name a consistency check reports it under.
fn named_sides(primary: &DynBlobStore, fallback: Option<&DynBlobStore>) -> Vec<(String, DynBlobStore)> {
    let mut sides = vec![(format!("primary {}", primary.name()), primary.clone())];
    if let Some(fallback) = fallback {
        sides.push((format!("fallback {}", fallback.name()), fallback.clone()));
    }
    sides
}

/// The configured stores one by one: the primary, and the fallback when enabled.
async fn open_sides(config: &Config) -> anyhow::Result<(DynBlobStore, Option<DynBlobStore>)> {
    let failover_enabled = config.storage.fallback.enabled;
    let primary: DynBlobStore = match config.storage.backend {
        Backend::Fs => {
            let root = config.fs_root();
            Arc::new(
                FsStore::open(&root)
                    .with_context(|| format!("opening the filesystem store at {}", root.display()))?,
            )
        }
        Backend::S3 => {
            let mut s3_config = config.s3_store_config();
            if failover_enabled {
                s3_config.apply_failover_retries();
                s3_config.request_timeout = config.storage.failover.request_timeout;
            }
            let store = S3Store::new(s3_config);
            if config.storage.s3.create_bucket
                && let Err(error) = store.ensure_bucket().await
            {
                if !failover_enabled {
                    return Err(error).context("creating the S3 bucket");
                }
                tracing::warn!(%error, "could not create the primary bucket now; the fallback takes writes");
            }
            Arc::new(store)
        }
    };
    let primary = deadlines_and_metrics(primary, config, "primary");
    if !failover_enabled {
        return Ok((primary, None));
    }
    let fallback = S3Store::new(config.fallback_store_config());
    if config.storage.fallback.s3.create_bucket
        && let Err(error) = fallback.ensure_bucket().await
    {
        // The fallback may be down at start-up; that is what failover is for.
        tracing::warn!(%error, "could not create the fallback bucket now");
    }
    Ok((
        primary,
        Some(deadlines_and_metrics(Arc::new(fallback), config, "fallback")),
    ))
}

/// `artifactd check`: the catalog against each configured store.
pub async fn check(config: Config, read_data: bool) -> anyhow::Result<crate::app::CheckReport> {
    let catalog = connect_catalog(&config).await.context("opening the catalog")?;
    let (primary, fallback) = open_sides(&config).await?;
    let stores = named_sides(&primary, fallback.as_ref());
    let artifacts = Artifacts::new(catalog.clone(), primary, config.app_settings()?).await?;
    let report = artifacts.check(&stores, read_data).await?;
    catalog.close().await;
    Ok(report)
}

/// `artifactd gc`: one garbage collection run against the configured catalog and stores
/// (both sides of a failover pair), beside or instead of the servers' own runs.
pub async fn collect_garbage(config: Config, dry_run: bool) -> anyhow::Result<crate::app::GcReport> {
    // Uploads spill into it: one that cannot be written is found now, not by an upload.
    let spill = config.spill_dir();
    std::fs::create_dir_all(&spill)
        .and_then(|()| tempfile::tempfile_in(&spill).map(drop))
        .with_context(|| format!("ingest.spill_dir {} is not a writable directory", spill.display()))?;
    let settings = config.app_settings().context("reading the encryption keys")?;
    let catalog = connect_catalog(&config).await.context("opening the catalog")?;
    let (primary, fallback) = open_sides(&config).await?;
    let (store, _) = combine(&config, &catalog, primary, fallback);
    let artifacts = Artifacts::new(catalog.clone(), store, settings).await?;
    let report = artifacts.collect_garbage(dry_run).await;
    catalog.close().await;
    Ok(report?)
}

/// The catalog the configuration names, sized as it says.
async fn connect_catalog(config: &Config) -> crate::domain::Result<Catalog> {
    Catalog::connect_with(
        &config.catalog_url(),
        config.catalog.max_connections,
        config.catalog.sqlite_cache_bytes,
    )
    .await
}

/// The data directory where it holds data, the application settings, and the catalog.
async fn open_catalog(config: &Config) -> anyhow::Result<(crate::app::Settings, Catalog)> {
    if config.storage.backend == Backend::Fs || config.catalog.url.is_empty() {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
    }
    // Uploads spill into it: one that cannot be written is found now, not by an upload.
    let spill = config.spill_dir();
    std::fs::create_dir_all(&spill)
        .and_then(|()| tempfile::tempfile_in(&spill).map(drop))
        .with_context(|| format!("ingest.spill_dir {} is not a writable directory", spill.display()))?;
    let settings = config.app_settings().context("reading the encryption keys")?;
    let catalog = connect_catalog(config).await.context("opening the catalog")?;
    Ok((settings, catalog))
}

/// Opens the catalog and the stores as a server does, with backups writing to both sides of
/// a failover pair.
async fn open_for_backups(config: &Config) -> anyhow::Result<(Catalog, Artifacts, Option<DynBlobStore>)> {
    let (settings, catalog) = open_catalog(config).await?;
    let (primary, fallback) = open_sides(config).await?;
    let (store, failover) = combine(config, &catalog, primary, fallback.clone());
    let artifacts = Artifacts::new(catalog.clone(), store, settings).await?;
    if let Some(failover) = failover {
        artifacts.attach_failover(failover);
    }
    Ok((catalog, artifacts, fallback))
}

/// `artifactd dr export`: a backup of every tenant, on both stores.
pub async fn dr_export(config: Config) -> anyhow::Result<Vec<crate::domain::backup::Backup>> {
    let (catalog, artifacts, _) = open_for_backups(&config).await?;
    let quiet = |_: crate::app::BackupProgress| {};
    let taken = artifacts.dr_export(&quiet).await;
    catalog.close().await;
    Ok(taken?)
}

/// `artifactd dr restore`: rebuilds the catalog and the primary store from the fallback
/// store's backups.
pub async fn dr_restore(config: Config) -> anyhow::Result<crate::app::DrReport> {
    let (catalog, artifacts, fallback) = open_for_backups(&config).await?;
    let Some(fallback) = fallback else {
        anyhow::bail!(
            "disaster recovery restores from the fallback store; none is configured (S3_FALLBACK_ENABLED)"
        );
    };
    let progress = |p: crate::app::BackupProgress| {
        tracing::info!(phase = p.phase, done = p.done, total = p.total, detail = %p.detail, "dr restore");
    };
    let report = artifacts.dr_restore(&fallback, &progress).await;
    catalog.close().await;
    Ok(report?)
}

/// Runs the server until `shutdown` is cancelled. `on_ready` learns the bound addresses
/// once both listeners accept connections.
pub async fn run(
    config: Config,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(BoundAddrs),
) -> anyhow::Result<()> {
    let (settings, catalog) = open_catalog(&config).await?;
    ensure_admin(&config, &catalog)
        .await
        .context("preparing the way in")?;
    let (primary, fallback) = open_sides(&config).await?;
    let sides = named_sides(&primary, fallback.as_ref());
    let (store, failover) = combine(&config, &catalog, primary, fallback);
    let (store, disk_cache) = with_disk_cache(&config, store);
    let artifacts = Artifacts::new(catalog.clone(), store.clone(), settings)
        .await
        .context("starting the artifact service")?;
    if let Some(failover) = &failover {
        artifacts.attach_failover(failover.clone());
    }
    if let Some(disk_cache) = &disk_cache {
        artifacts.attach_disk_cache(disk_cache.clone());
    }
    let index_dir = config.index_dir();
    let index = Arc::new(
        SearchIndex::open(&index_dir)
            .with_context(|| format!("opening the search index at {}", index_dir.display()))?,
    );
    let indexer = Indexer::new(index.clone(), catalog.clone(), Arc::new(artifacts.clone()));

    // Background work outlives the signal: it stops only after requests in flight have
    // drained, so their replication and indexing are not cut short.
    let mut supervisor = Supervisor::new(CancellationToken::new());
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let monitor = Arc::new(HealthMonitor {
        inputs: HealthInputs {
            catalog: catalog.clone(),
            store: store.clone(),
            failover: failover.clone(),
            index: index.clone(),
            jobs: supervisor.board(),
            disk_cache: disk_cache.clone(),
        },
        reporter: health_reporter,
        interval: Duration::from_millis(config.server.health_check_interval_ms.max(100)),
        last: LastHealth::default(),
    });
    let admin_service = AdminServiceServer::new(AdminApi::new(
        supervisor.board(),
        monitor.last.clone(),
        artifacts.clone(),
        sides,
    ));
    // A fresh id per process: a replica's position counts only while it keeps recording it.
    let replica_id = uuid::Uuid::now_v7().to_string();
    supervisor.spawn(INDEXER_JOB, move |token| {
        run_indexer(indexer.clone(), replica_id.clone(), token)
    });
    {
        let summed = catalog.clone();
        let every = Duration::from_secs(config.server.storage_stats_interval_seconds.max(1));
        supervisor.spawn("storage stats", move |token| {
            crate::jobs::run_storage_stats(summed.clone(), every, token)
        });
    }
    if let Some(handle) = &metrics {
        let handle = handle.clone();
        supervisor.spawn("metrics upkeep", move |token| {
            crate::telemetry::run_metrics_upkeep(
                handle.clone(),
                crate::telemetry::METRICS_UPKEEP_INTERVAL,
                token,
            )
        });
    }
    let pruned_catalog = catalog.clone();
    let event_settings = config.events.clone();
    supervisor.spawn("outbox pruner", move |token| {
        run_outbox_pruner(pruned_catalog.clone(), event_settings.clone(), token)
    });
    {
        let retention = config.retention.clone();
        let scheduled = artifacts.clone();
        let every = Duration::from_secs(retention.policy_check_seconds.max(1));
        supervisor.spawn("retention policies", move |token| {
            crate::jobs::run_policy_scheduler(scheduled.clone(), every, token)
        });
        let purging = artifacts.clone();
        let every = Duration::from_secs(retention.purge_interval_seconds.max(1));
        supervisor.spawn("trash purger", move |token| {
            crate::jobs::run_trash_purger(purging.clone(), every, token)
        });
        let backing_up = artifacts.clone();
        let every = Duration::from_secs(retention.backup_check_seconds.max(1));
        supervisor.spawn("backup scheduler", move |token| {
            crate::jobs::run_backup_scheduler(backing_up.clone(), every, token)
        });
        if retention.gc_interval_seconds > 0 {
            let collecting = artifacts.clone();
            let every = Duration::from_secs(retention.gc_interval_seconds);
            supervisor.spawn("garbage collector", move |token| {
                crate::jobs::run_collector(collecting.clone(), every, token)
            });
        }
    }
    let mut sync_requests = None;
    if let Some(failover) = &failover {
        let prober = failover.clone();
        supervisor.spawn("store prober", move |token| run_prober(prober.clone(), token));
        let replicator = failover.clone();
        supervisor.spawn("replicator", move |token| {
            run_replicator(replicator.clone(), token)
        });
        let reconciler = failover.clone();
        supervisor.spawn("reconciler", move |token| {
            run_reconciler(reconciler.clone(), token)
        });
        let (sync_job, requests) = FallbackSync::new(failover.clone());
        let sync_job = Arc::new(sync_job);
        supervisor.spawn("fallback sync", move |token| {
            let sync_job = sync_job.clone();
            async move { sync_job.run(token).await }
        });
        sync_requests = Some(requests);
    }
    let tokens = if config.identity.oidc.enabled() {
        let verifier = Arc::new(TokenVerifier::start(config.identity.oidc.clone()).await?);
        let refreshed = verifier.clone();
        supervisor.spawn("oidc keys", move |token| refreshed.clone().run_refresher(token));
        Some(verifier)
    } else {
        None
    };
    let proxies = config.identity.proxy.trusted().map_err(anyhow::Error::msg)?;
    let patterns = Arc::new(crate::audit::patterns::AccessPatterns::new(
        config.audit.patterns.clone(),
    ));
    {
        let patterns = patterns.clone();
        supervisor.spawn("access rates", move |token| {
            patterns.clone().run_publisher(Duration::from_secs(15), token)
        });
    }
    let signer = Arc::new(
        crate::audit::Signer::open_or_create(&config.audit_signing_key_path())
            .context("opening the audit signing key")?,
    );
    {
        let (catalog, store, signer) = (catalog.clone(), store.clone(), signer.clone());
        let interval = Duration::from_secs(config.audit.checkpoint_interval_seconds.max(1));
        supervisor.spawn("audit checkpointer", move |token| {
            crate::audit::run_checkpointer(catalog.clone(), store.clone(), signer.clone(), interval, token)
        });
    }
    let authenticator = Arc::new(
        Authenticator::new(catalog.clone(), tokens, proxies)
            .reproving_every(Duration::from_secs(config.identity.reprove_seconds)),
    );
    monitor.check_once().await;
    supervisor.spawn("health", move |token| {
        let monitor = monitor.clone();
        async move { monitor.run(token).await }
    });

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building reflection v1")?;
    // grpcurl 1.8 and other older tools speak only v1alpha.
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("building reflection v1alpha")?;

    let grpc_listener = TcpListener::bind(&config.server.grpc_addr)
        .await
        .with_context(|| format!("listening for gRPC on {}", config.server.grpc_addr))?;
    let http_listener = TcpListener::bind(&config.server.http_addr)
        .await
        .with_context(|| format!("listening for HTTP on {}", config.server.http_addr))?;
    let links_listener = match config.server.links_addr.as_str() {
        "" => None,
        addr => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening for download links on {addr}"))?,
        ),
    };
    let addrs = BoundAddrs {
        grpc: grpc_listener.local_addr()?,
        http: http_listener.local_addr()?,
        links: links_listener.as_ref().map(TcpListener::local_addr).transpose()?,
    };

    // Links are absolute when their listener's address is one clients can reach.
    let links_at = addrs.links.unwrap_or(addrs.http);
    if !links_at.ip().is_unspecified() {
        artifacts.serve_links_at(format!("http://{links_at}"));
    }
    let artifact_service = ArtifactServiceServer::new(ArtifactApi::new(artifacts.clone(), shutdown.clone()))
        .max_decoding_message_size(MAX_DECODED_MESSAGE_BYTES);
    let fallback_service = FallbackServiceServer::new(FallbackApi::new(failover.clone(), sync_requests));
    let search_service = SearchServiceServer::new(SearchApi::new(index, artifacts.clone()));
    let grpc_shutdown = shutdown.clone();
    let mut builder = tonic::transport::Server::builder();
    if config.server.tls.enabled() {
        builder = builder
            .tls_config(tls_config(&config.server.tls)?)
            .context("configuring TLS on the gRPC listener")?;
    }
    let grpc = builder
        // HTTP/2's default 64 KiB windows make a client wait for a window update every
        // quarter of a data message; uploads need room for a few messages in flight.
        .initial_stream_window_size(Some(STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(CONNECTION_WINDOW_BYTES))
        .max_concurrent_streams(Some(MAX_CONCURRENT_STREAMS))
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESET_STREAMS))
        .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESET_STREAMS))
        // Outermost the request's span and metrics, so refused calls are counted too.
        .layer(
            tower::ServiceBuilder::new()
                .layer(crate::api::request_layer::RequestLayer::with_audit(
                    Arc::new(crate::audit::CatalogSink::new(catalog.clone())),
                    patterns.clone(),
                ))
                .layer(AuthLayer::new(authenticator))
                .into_inner(),
        )
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(artifact_service)
        .add_service(admin_service)
        .add_service(fallback_service)
        .add_service(search_service)
        .add_service(AccessServiceServer::new(AccessApi::new(AccessAdmin::new(
            catalog.clone(),
        ))))
        .add_service(AuditServiceServer::new(AuditApi::new(
            catalog.clone(),
            signer.clone(),
            patterns.clone(),
        )))
        .add_service(RetentionServiceServer::new(crate::api::RetentionApi::new(
            artifacts.clone(),
        )))
        .add_service(BackupServiceServer::new(crate::api::BackupApi::new(
            artifacts.clone(),
        )))
        .add_service(EncryptionServiceServer::new(crate::api::EncryptionApi::new(
            artifacts.clone(),
        )))
        // Without TCP_NODELAY a small response waits for the client's delayed ACK (40 ms).
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
            async move { grpc_shutdown.cancelled().await },
        );

    let http_router = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = metrics.clone();
                async move { metrics.map(|handle| handle.render()).unwrap_or_default() }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }));
    let links_router = crate::api::http_links::routes(artifacts.clone());
    let (http_router, links) = match links_listener {
        // Links on a listener of their own: the one a CDN reaches never serves `/metrics`.
        Some(listener) => {
            let links_router = links_router.route("/healthz", axum::routing::get(|| async { "ok" }));
            (http_router, Some((listener, links_router)))
        }
        None => (http_router.merge(links_router), None),
    };
    let http_shutdown = shutdown.clone();
    let http = axum::serve(without_nagle(http_listener), http_router)
        .with_graceful_shutdown(async move { http_shutdown.cancelled().await });
    let links = links.map(|(listener, router)| {
        let links_shutdown = shutdown.clone();
        axum::serve(without_nagle(listener), router)
            .with_graceful_shutdown(async move { links_shutdown.cancelled().await })
    });

    let encryption = artifacts.settings().master_keys.as_ref().map_or_else(
        || "off".to_owned(),
        |keys| format!("master key {}", keys.current_id()),
    );
    tracing::info!(grpc = %addrs.grpc, http = %addrs.http, catalog = ?catalog.dialect(), store = store.name(), %encryption, "artifactd serving");
    on_ready(addrs);

    let grace = Duration::from_secs(config.server.shutdown_grace_seconds);
    // A listener that ends on its own leaves a process that looks alive but serves nothing:
    // everything stops and the process exits non-zero, so that the orchestrator restarts it.
    let listener_ended = CancellationToken::new();
    let http_task = tokio::spawn({
        let ended = listener_ended.clone();
        async move {
            let result = http.await;
            ended.cancel();
            result
        }
    });
    let links_task = links.map(|links| {
        let ended = listener_ended.clone();
        tokio::spawn(async move {
            let result = links.await;
            ended.cancel();
            result
        })
    });
    let grpc_task = tokio::spawn({
        let ended = listener_ended.clone();
        async move {
            let result = grpc.await;
            ended.cancel();
            result
        }
    });
    let listener_failed = tokio::select! {
        biased;
        _ = shutdown.cancelled() => false,
        _ = listener_ended.cancelled() => !shutdown.is_cancelled(),
    };
    if listener_failed {
        tracing::error!("a listener stopped by itself; shutting down");
        shutdown.cancel();
    } else {
        tracing::info!(
            grace_seconds = grace.as_secs(),
            "shutting down: no new connections; waiting for requests in flight"
        );
    }
    let mut failures = Vec::new();
    // 1. gRPC: stop accepting, let streams in flight finish within the grace period.
    let grpc_abort = grpc_task.abort_handle();
    match tokio::time::timeout(grace, grpc_task).await {
        Ok(Ok(Ok(()))) if listener_failed => failures.push("the gRPC server stopped".to_owned()),
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => failures.push(format!("the gRPC server failed: {error}")),
        Ok(Err(error)) => failures.push(format!("the gRPC server task failed: {error}")),
        Err(_) => {
            // Dropping the server drops the handlers still running; their uploads see the
            // caller gone and abandon their packs while the jobs and catalog are still up.
            grpc_abort.abort();
            tracing::warn!("requests still running after the grace period were cut off");
        }
    }
    // 2. HTTP: metrics, and download links (given the same grace as gRPC when they have a
    // listener of their own: a download through a link is a transfer in flight too).
    match tokio::time::timeout(Duration::from_secs(2), http_task).await {
        Ok(Ok(Err(error))) => failures.push(format!("the HTTP server failed: {error}")),
        Ok(Err(error)) => failures.push(format!("the HTTP server task failed: {error}")),
        _ => {}
    }
    if let Some(links_task) = links_task {
        match tokio::time::timeout(grace, links_task).await {
            Ok(Ok(Err(error))) => failures.push(format!("the download link server failed: {error}")),
            Ok(Err(error)) => failures.push(format!("the download link server task failed: {error}")),
            _ => {}
        }
    }
    // 3. Background jobs, then the catalog.
    supervisor.shutdown(Duration::from_secs(5)).await;
    catalog.close().await;
    tracing::info!("artifactd stopped");
    for failure in &failures {
        tracing::error!(%failure, "listener failure");
    }
    if listener_failed || !failures.is_empty() {
        return Err(anyhow::anyhow!(
            "a listener stopped while the service was running: {}",
            failures.join("; ")
        ));
    }
    Ok(())
}

/// Rebuilds the search index from the catalog (`artifactd reindex`). The server must not be
/// running on the same index directory: tantivy allows one writer.
/// The listener's TLS: its certificate and key, and the CA its clients' certificates must
/// chain to when one is configured.
fn tls_config(tls: &crate::config::TlsConfig) -> anyhow::Result<tonic::transport::ServerTlsConfig> {
    let read = |what: &str, path: &str| {
        std::fs::read(path).with_context(|| format!("reading server.tls.{what} {path}"))
    };
    let identity = tonic::transport::Identity::from_pem(
        read("cert_file", &tls.cert_file)?,
        read("key_file", &tls.key_file)?,
    );
    let mut config = tonic::transport::ServerTlsConfig::new().identity(identity);
    if !tls.client_ca_file.is_empty() {
        config = config
            .client_ca_root(tonic::transport::Certificate::from_pem(read(
                "client_ca_file",
                &tls.client_ca_file,
            )?))
            .client_auth_optional(tls.client_auth_optional);
    }
    Ok(config)
}

pub async fn reindex(config: Config) -> anyhow::Result<u64> {
    let catalog = connect_catalog(&config).await.context("opening the catalog")?;
    let (store, _) = open_store(&config, &catalog).await?;
    let artifacts = Artifacts::new(catalog.clone(), store, config.app_settings()?).await?;
    let index_dir = config.index_dir();
    let index = Arc::new(SearchIndex::open(&index_dir).with_context(|| {
        format!(
            "opening the search index at {} (is a server using it?)",
            index_dir.display()
        )
    })?);
    let written = Indexer::new(index, catalog.clone(), Arc::new(artifacts))
        .rebuild()
        .await?;
    catalog.close().await;
    Ok(written)
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

/// `listener` with Nagle's algorithm off on every connection it accepts. With it on, the
/// last few bytes of a response written in pieces (a ranged read of a link, streamed) wait
/// for the client's delayed ACK: 40 ms on Linux, added to about one response in two.
fn without_nagle(
    listener: TcpListener,
) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = std::net::SocketAddr> {
    use axum::serve::ListenerExt;
    listener.tap_io(|connection| {
        if let Err(error) = connection.set_nodelay(true) {
            tracing::debug!(%error, "could not turn off Nagle's algorithm on an HTTP connection");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::unreliable::{Fault, Operation, UnreliableStore};
    use crate::storage::{BlobStore, GetOptions};
    use bytes::Bytes;

    #[tokio::test]
    async fn http_connections_are_accepted_without_nagle() {
        use axum::serve::Listener;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut listener = without_nagle(listener);
        let (client, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let _client = client.unwrap();
        let (connection, _) = accepted;
        assert!(
            connection.nodelay().unwrap(),
            "an accepted HTTP connection delays small writes"
        );
    }

    /// A store that answers quickly, then takes `delay` to answer one read, behind the
    /// deadline `config` chooses.
    async fn late_read(config: &Config, delay: Duration) -> Result<Bytes, crate::storage::StoreError> {
        let dir = tempfile::tempdir().unwrap();
        let unreliable = Arc::new(UnreliableStore::new(Arc::new(FsStore::open(dir.path()).unwrap())));
        let store = DeadlineStore::new(unreliable.clone(), deadline_config(config));
        store.put("k", Bytes::from_static(b"content")).await.unwrap();
        for _ in 0..32 {
            store.get("k", GetOptions::default()).await.unwrap();
        }
        unreliable.inject(Some(Operation::Get), Fault::Delay(delay), Some(1));
        store.get("k", GetOptions::default()).await
    }

    /// Without a fallback a slow answer is still an answer, however much slower than the
    /// store's recent calls; with one, the adaptive deadline gives up so the other side can
    /// answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_a_store_with_a_fallback_gives_up_on_slow_answers() {
        let mut standalone = Config::default();
        standalone.storage.fallback.enabled = false;
        let slow = Duration::from_secs(7);
        assert_eq!(
            late_read(&standalone, slow)
                .await
                .expect("a slow read without a fallback"),
            Bytes::from_static(b"content")
        );
        let mut paired = Config::default();
        paired.storage.fallback.enabled = true;
        late_read(&paired, Duration::from_secs(3))
            .await
            .expect_err("a read far slower than the store's recent ones, with a fallback to turn to");
    }
}

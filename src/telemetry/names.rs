//! Every metric artifactd exports: its name, kind and description, in one place. Code
//! records metrics through these constants; `describe_all` registers the descriptions, and
//! the dashboard and alert rules are checked against this list.

/// The kind of a metric, as Prometheus shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

macro_rules! metric_names {
    ($($constant:ident = $name:literal, $kind:ident, $description:literal;)*) => {
        $(
            #[doc = $description]
            pub const $constant: &str = $name;
        )*

        /// (name, kind, description) of every metric.
        pub const ALL: &[(&str, Kind, &str)] = &[$(($name, Kind::$kind, $description)),*];
    };
}

metric_names! {
    CHUNK_CACHE_HITS_TOTAL = "artifactd_chunk_cache_hits_total", Counter,
        "Chunks a read found in the memory cache of decoded chunks";
    CHUNK_CACHE_HIT_BYTES_TOTAL = "artifactd_chunk_cache_hit_bytes_total", Counter,
        "Bytes of decoded chunks served from the memory cache";
    CHUNK_CACHE_MISSES_TOTAL = "artifactd_chunk_cache_misses_total", Counter,
        "Chunks a read looked for in the memory cache and did not find";
    CHUNK_CACHE_BYPASSED_READS_TOTAL = "artifactd_chunk_cache_bypassed_reads_total", Counter,
        "Reads larger than the memory cache, which passed through it without being kept";
    CHUNK_CACHE_BYTES = "artifactd_chunk_cache_bytes", Gauge,
        "Bytes the memory cache of decoded chunks holds, with its bookkeeping";
    TRANSFER_MEMORY_RESERVED_BYTES = "artifactd_transfer_memory_reserved_bytes", Gauge,
        "Bytes of the transfer memory budget that uploads' packs and downloads' read-ahead hold";
    TRANSFER_MEMORY_WAITS_TOTAL = "artifactd_transfer_memory_waits_total", Counter,
        "Times an upload or a download waited for the transfer memory budget";
    DELTA_BASE_MEMORY_RESERVED_BYTES = "artifactd_delta_base_memory_reserved_bytes", Gauge,
        "Bytes reserved from the delta base memory budget by reads of delta bases";
    DELTA_BASE_MEMORY_WAITS_TOTAL = "artifactd_delta_base_memory_waits_total", Counter,
        "Times a read of delta bases waited for the delta base memory budget";
    RECEIVED_MEMORY_RESERVED_BYTES = "artifactd_received_memory_reserved_bytes", Gauge,
        "Bytes of the received memory budget that uploads' content not yet packed holds";
    RECEIVED_MEMORY_WAITS_TOTAL = "artifactd_received_memory_waits_total", Counter,
        "Times an upload waited for the received memory budget before taking its next message";
    DOWNLOADS_STALLED_TOTAL = "artifactd_downloads_stalled_total", Counter,
        "Downloads ended because their reader took nothing for ingest.stalled_download_seconds";
    DISK_CACHE_BYTES = "artifactd_disk_cache_bytes", Gauge,
        "Bytes of store objects the disk cache holds";
    DISK_CACHE_HITS_TOTAL = "artifactd_disk_cache_hits_total", Counter,
        "Reads of store objects served from the disk cache";
    DISK_CACHE_MISSES_TOTAL = "artifactd_disk_cache_misses_total", Counter,
        "Reads of store objects the disk cache did not hold";
    DISK_CACHE_DEGRADED = "artifactd_disk_cache_degraded", Gauge,
        "1 while the disk cache cannot write its directory (full, read-only or gone); reads go to the store";
    PREFETCHED_BYTES_TOTAL = "artifactd_prefetched_bytes_total", Counter,
        "Bytes of next versions read into the chunk cache because versions were read in order";
    INDEX_COMMITS_TOTAL = "artifactd_index_commits_total", Counter,
        "Commits of the search index (each costs a sync, a segment and the writer's threads)";
    HTTP_DOWNLOADS_TOTAL = "artifactd_http_downloads_total", Counter,
        "Requests of download links on the HTTP listener, by status code";
    AUDIT_WRITE_FAILURES_TOTAL = "artifactd_audit_write_failures_total", Counter,
        "Audit entries of finished calls that could not be written to the catalog";
    ACCESS_FLAGS_TOTAL = "artifactd_access_flags_total", Counter,
        "Unusual access flagged, by pattern (read_spike, many_projects, denial_burst)";
    ACCESS_READS_PER_MINUTE = "artifactd_access_reads_per_minute", Gauge,
        "Reads in the last minute of the busiest principals and artifacts, by kind and name";
    AUDIT_ENTRIES_TOTAL = "artifactd_audit_entries_total", Counter,
        "Calls recorded in the audit trail after they finished, by outcome";
    GRPC_REQUESTS_TOTAL = "artifactd_grpc_requests_total", Counter,
        "gRPC calls finished, by method and status code";
    GRPC_REQUEST_DURATION_SECONDS = "artifactd_grpc_request_duration_seconds", Histogram,
        "Duration of gRPC calls from the request's arrival to the last response byte, by method";
    INGESTED_BYTES_TOTAL = "artifactd_ingested_bytes_total", Counter,
        "Logical bytes received by uploads that completed ingest";
    STORED_BYTES_TOTAL = "artifactd_stored_bytes_total", Counter,
        "Compressed bytes of new chunks written by uploads";
    TENANT_LOGICAL_BYTES = "artifactd_tenant_logical_bytes", Gauge,
        "Logical bytes of a tenant's stored versions (trash included), by tenant";
    TENANT_STORED_BYTES = "artifactd_tenant_stored_bytes", Gauge,
        "Bytes a tenant's stored versions added to the store, by tenant";
    TENANT_DEDUP_SAVED_BYTES = "artifactd_tenant_dedup_saved_bytes", Gauge,
        "Bytes of a tenant's versions that deduplication did not store again, by tenant";
    TENANT_DELTA_SAVED_BYTES = "artifactd_tenant_delta_saved_bytes", Gauge,
        "Bytes delta encoding saved on a tenant's versions, by tenant";
    DELTA_CHUNKS_TOTAL = "artifactd_delta_chunks_total", Counter,
        "New chunks stored as a delta against an earlier chunk";
    DELTA_SAVED_BYTES_TOTAL = "artifactd_delta_saved_bytes_total", Counter,
        "Bytes delta encoding saved against storing those chunks on their own (compressed)";
    PACK_BYTES_WRITTEN_TOTAL = "artifactd_pack_bytes_written_total", Counter,
        "Bytes of pack objects written to the object store";
    SHARED_PACKS_TOTAL = "artifactd_shared_packs_total", Counter,
        "Packs written for the small uploads that shared them (each holds one or more uploads' chunks)";
    SHARED_PACK_UPLOADS_TOTAL = "artifactd_shared_pack_uploads_total", Counter,
        "Uploads whose chunks went into a shared pack instead of a pack of their own";
    PACK_BYTES_READ_TOTAL = "artifactd_pack_bytes_read_total", Counter,
        "Bytes of pack objects read from the object store";
    VERSIONS_COMMITTED_TOTAL = "artifactd_versions_committed_total", Counter,
        "Versions committed to the catalog";
    UPLOADS_FAILED_TOTAL = "artifactd_uploads_failed_total", Counter,
        "Uploads that failed or were cancelled; nothing of them was committed";
    UPLOADS_SPILLED_TOTAL = "artifactd_uploads_spilled_total", Counter,
        "Uploads whose manifest or chunk list outgrew memory and went to a file in ingest.spill_dir";
    CHECKSUM_MISMATCHES_TOTAL = "artifactd_checksum_mismatches_total", Counter,
        "Chunks whose content did not match their hash on read";
    DEPENDENCY_UP = "artifactd_dependency_up", Gauge,
        "1 when a dependency (catalog, store) answered its last health check";
    INDEX_EVENTS_TOTAL = "artifactd_index_events_total", Counter,
        "Outbox events applied to the search index";
    INDEX_LAG_SECONDS = "artifactd_index_lag_seconds", Gauge,
        "Age of the oldest catalog change this replica's search index has not applied yet (0 when it is current)";
    INDEX_UNREADABLE_TOTAL = "artifactd_index_unreadable_total", Counter,
        "Artifacts indexed without their text because their content could not be read";
    CATALOG_WRITE_WAIT_SECONDS = "artifactd_catalog_write_wait_seconds", Histogram,
        "Time a write to a SQLite catalog waited for its turn behind this process's other writers";
    STORE_OPERATIONS_TOTAL = "artifactd_store_operations_total", Counter,
        "Object store calls, by store, operation and outcome";
    STORE_LATENCY_SECONDS = "artifactd_store_latency_seconds", Histogram,
        "Latency of object store calls, by store and operation";
    STORE_BREAKER_OPEN = "artifactd_store_breaker_open", Gauge,
        "1 while a failover side's circuit breaker is open";
    STORE_BREAKER_OPENED_TOTAL = "artifactd_store_breaker_opened_total", Counter,
        "Times a failover side's circuit breaker opened";
    STORE_CORRUPT_READS_TOTAL = "artifactd_store_corrupt_reads_total", Counter,
        "Reads that found a damaged copy on one side of a failover pair";
    FAILOVERS_TOTAL = "artifactd_failovers_total", Counter,
        "Times writes moved from the primary store to the fallback because the primary's breaker opened";
    FAILBACKS_TOTAL = "artifactd_failbacks_total", Counter,
        "Times writes returned to the primary store after a failover";
    FAILED_OVER = "artifactd_failed_over", Gauge,
        "1 while writes go to the fallback store";
    STORE_MISSING_OBJECTS = "artifactd_store_missing_objects", Gauge,
        "Objects a failover side lacked or held damaged at the last reconciliation, by side";
    STORE_REPAIRED_OBJECTS_TOTAL = "artifactd_store_repaired_objects_total", Counter,
        "Objects copied to a failover side that lacked them or held a damaged copy, by side";
    REPLICATED_BYTES_TOTAL = "artifactd_replicated_bytes_total", Counter,
        "Bytes copied between the failover stores";
    REPLICATION_QUEUE_DEPTH = "artifactd_replication_queue_depth", Gauge,
        "Objects waiting to be copied to the other failover store";
    REPLICATION_OLDEST_AGE_SECONDS = "artifactd_replication_oldest_age_seconds", Gauge,
        "Age of the oldest object waiting to be copied to the other failover store";
    JOB_RESTARTS_TOTAL = "artifactd_job_restarts_total", Counter,
        "Background jobs restarted by the supervisor after a panic or failure, by job";
    JOB_RUNNING = "artifactd_job_running", Gauge,
        "1 while a background job runs, 0 while it waits to be restarted, by job";
    WATCH_STREAMS = "artifactd_watch_streams", Gauge,
        "Change streams (WatchEvents) open on this replica";
    WATCH_EVENTS_SENT_TOTAL = "artifactd_watch_events_sent_total", Counter,
        "Events handed to change streams";
    WATCH_CUT_OFF_TOTAL = "artifactd_watch_cut_off_total", Counter,
        "Change streams cut off because their watcher read too slowly";
    OUTBOX_PRUNED_TOTAL = "artifactd_outbox_pruned_total", Counter,
        "Outbox events deleted after the retention horizon";
    GC_RUNS_TOTAL = "artifactd_gc_runs_total", Counter,
        "Garbage collection runs, by outcome (ok, error)";
    GC_DURATION_SECONDS = "artifactd_gc_duration_seconds", Histogram,
        "How long garbage collection runs take";
    GC_RECLAIMED_BYTES_TOTAL = "artifactd_gc_reclaimed_bytes_total", Counter,
        "Bytes of packs garbage collection removed from the catalog (their objects are deleted after)";
    RETENTION_APPLIED_TOTAL = "artifactd_retention_applied_total", Counter,
        "Versions archived or moved to the trash by retention policies";
    TRASH_PURGED_TOTAL = "artifactd_trash_purged_total", Counter,
        "Artifacts and versions removed from the trash for good";
    BACKUPS_TOTAL = "artifactd_backups_total", Counter,
        "Backups taken, by kind (tenant, project, artifact)";
    RESTORES_TOTAL = "artifactd_restores_total", Counter,
        "Restores applied, by source (backup, point_in_time)";
}

/// Registers every description with the installed recorder.
pub fn describe_all() {
    for (name, kind, description) in ALL {
        match kind {
            Kind::Counter => metrics::describe_counter!(*name, *description),
            Kind::Gauge => metrics::describe_gauge!(*name, *description),
            Kind::Histogram => metrics::describe_histogram!(*name, *description),
        }
    }
}

//! Logging and metrics set-up, and the names of the health-checked services.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// Installs the global tracing subscriber. `RUST_LOG` overrides the configured filter.
pub fn init_logging(format: &str, filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Installs the global Prometheus recorder and returns the handle that renders `/metrics`.
pub fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|e| anyhow::anyhow!("installing the metrics recorder: {e}"))?;
    describe_metrics();
    Ok(handle)
}

fn describe_metrics() {
    metrics::describe_counter!(
        "artifactd_ingested_bytes_total",
        "Logical bytes received by uploads that completed ingest"
    );
    metrics::describe_counter!(
        "artifactd_stored_bytes_total",
        "Compressed bytes of new chunks written by uploads"
    );
    metrics::describe_counter!(
        "artifactd_pack_bytes_written_total",
        "Bytes of pack objects written to the object store"
    );
    metrics::describe_counter!(
        "artifactd_pack_bytes_read_total",
        "Bytes of pack objects read from the object store"
    );
    metrics::describe_counter!(
        "artifactd_versions_committed_total",
        "Versions committed to the catalog"
    );
    metrics::describe_counter!(
        "artifactd_uploads_failed_total",
        "Uploads that failed or were cancelled"
    );
    metrics::describe_counter!(
        "artifactd_checksum_mismatches_total",
        "Chunks whose content did not match their hash on read"
    );
    metrics::describe_gauge!(
        "artifactd_dependency_up",
        "1 when a dependency (catalog, store) answered its last health check"
    );
}

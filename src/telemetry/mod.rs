//! Logging and metrics set-up, and the names of the health-checked services.

pub mod names;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
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

const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Installs the global Prometheus recorder and returns the handle that renders `/metrics`.
pub fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    // Latencies as real histograms (summaries cannot be aggregated across replicas), with
    // buckets from a millisecond to a minute.
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS_SECONDS)
        .map_err(|e| anyhow::anyhow!("configuring histogram buckets: {e}"))?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|e| anyhow::anyhow!("installing the metrics recorder: {e}"))?;
    describe_metrics();
    Ok(handle)
}

fn describe_metrics() {
    names::describe_all();
}

/// How often histogram samples are folded into their buckets when nothing scrapes `/metrics`.
pub const METRICS_UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds the histogram samples recorded since the last scrape into their buckets, every
/// `every`. The recorder keeps each sample until a render or an upkeep does so: a server
/// that nothing scrapes (or scrapes rarely) would otherwise hold every request's and every
/// store call's latency for ever, its memory growing with the calls it served.
pub async fn run_metrics_upkeep(
    handle: PrometheusHandle,
    every: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) -> crate::jobs::JobResult {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(every) => {}
        }
        handle.run_upkeep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn upkeep_folds_samples_into_buckets_and_stops_when_told() {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS_SECONDS)
            .unwrap()
            .build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let histogram = metrics::histogram!("upkeep_test_seconds");
            for n in 0..100_000 {
                histogram.record(f64::from(n % 7) / 1000.0);
            }
        });
        let shutdown = tokio_util::sync::CancellationToken::new();
        let job = tokio::spawn(run_metrics_upkeep(
            handle.clone(),
            std::time::Duration::from_millis(10),
            shutdown.clone(),
        ));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        shutdown.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(5), job)
            .await
            .expect("the upkeep stops when told")
            .unwrap()
            .unwrap();
        let rendered = handle.render();
        assert!(
            rendered.contains("upkeep_test_seconds_count 100000"),
            "{rendered}"
        );
        // 0 and 1 ms: 2 of every 7 samples within the first bucket.
        assert!(
            rendered.contains("upkeep_test_seconds_bucket{le=\"0.001\"} 28572"),
            "{rendered}"
        );
    }
}

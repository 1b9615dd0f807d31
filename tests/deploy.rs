//! What ships in `deploy/` is checked like code: the alert rules by promtool (syntax and
//! their unit tests), and the dashboard and rules against the metrics the service exports.

mod common;

use artifactd::telemetry::names::{ALL, Kind};
use std::collections::BTreeSet;
use std::process::Command;

fn deploy_file(relative: &str) -> std::path::PathBuf {
    common::repo_root().join("deploy").join(relative)
}

fn promtool(args: &[&str]) -> String {
    let output = Command::new("promtool")
        .args(args)
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "promtool could not run ({error}): run scripts/test, which installs Debian's \
             prometheus package, or `apt-get install prometheus`"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let rules = deploy_file("prometheus/artifactd-alerts.yaml");
    let checked = promtool(&["check", "rules", rules.to_str().unwrap()]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tests = deploy_file("prometheus/artifactd-alerts.test.yaml");
    let tested = promtool(&["test", "rules", tests.to_str().unwrap()]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// Every `artifactd_*` name in a PromQL expression.
fn metric_names(expression: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expression;
    while let Some(start) = rest.find("artifactd_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// Checks that `name` (as PromQL writes it) is an exported metric of the right kind.
fn assert_exported(name: &str, used_in: &str) {
    let (base, needs_histogram) = match ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
    {
        Some(base) if ALL.iter().any(|(known, _, _)| *known == base) => (base, true),
        _ => (name, false),
    };
    let Some((_, kind, _)) = ALL.iter().find(|(known, _, _)| *known == base) else {
        panic!("{used_in} uses {name}, which the service does not export (see src/telemetry/names.rs)");
    };
    if needs_histogram {
        assert_eq!(
            *kind,
            Kind::Histogram,
            "{used_in} reads {name} but {base} is not a histogram"
        );
    }
}

#[test]
fn the_dashboard_and_the_alerts_use_only_metrics_the_service_exports() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy_file("grafana/artifactd.json")).unwrap())
            .unwrap();
    let mut dashboard_expressions = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            dashboard_expressions.push(target["expr"].as_str().expect("an expression").to_owned());
        }
    }
    assert!(dashboard_expressions.len() >= 10, "{dashboard_expressions:?}");

    let rules: serde_json::Value = serde_norway::from_str(
        &std::fs::read_to_string(deploy_file("prometheus/artifactd-alerts.yaml")).unwrap(),
    )
    .unwrap();
    let mut alert_expressions = Vec::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            alert_expressions.push(rule["expr"].as_str().expect("an expression").to_owned());
        }
    }

    let mut used = BTreeSet::new();
    for (source, expressions) in [
        ("the dashboard", &dashboard_expressions),
        ("the alert rules", &alert_expressions),
    ] {
        for expression in expressions {
            let names = metric_names(expression);
            assert!(
                !names.is_empty(),
                "{source}: {expression} reads no artifactd metric"
            );
            for name in names {
                assert_exported(&name, source);
                used.insert(name);
            }
        }
    }
    // The alerts cover what an operator must hear about.
    for needed in [
        "artifactd_failed_over",
        "artifactd_store_breaker_open",
        "artifactd_replication_queue_depth",
        "artifactd_replication_oldest_age_seconds",
        "artifactd_store_missing_objects",
        "artifactd_grpc_requests_total",
        "artifactd_grpc_request_duration_seconds_bucket",
        "artifactd_stored_bytes_total",
        "artifactd_job_restarts_total",
    ] {
        assert!(
            alert_expressions
                .iter()
                .any(|expression| metric_names(expression).contains(needed)),
            "no alert reads {needed}"
        );
    }
    assert!(used.len() >= 15, "{used:?}");
}

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
        "artifactd_index_lag_seconds",
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

/// The documents of a multi-document YAML file.
fn yaml_documents(path: &std::path::Path) -> Vec<serde_json::Value> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(path).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|document| serde_json::Value::deserialize(document).unwrap())
        .filter(|document| !document.is_null())
        .collect()
}

/// The Pod Security "restricted" profile (and the Kyverno policies enforcing it, plus
/// requests and limits and a pinned image) for one pod template; returns what is wrong.
fn restricted_profile_violations(name: &str, pod: &serde_json::Value) -> Vec<String> {
    let mut wrong = Vec::new();
    let spec = &pod["spec"];
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        if spec[host] == true {
            wrong.push(format!("{name}: {host}"));
        }
    }
    let pod_security = &spec["securityContext"];
    if pod_security["runAsNonRoot"] != true {
        wrong.push(format!("{name}: pod securityContext.runAsNonRoot is not true"));
    }
    if pod_security["runAsUser"] == 0 {
        wrong.push(format!("{name}: pod runs as user 0"));
    }
    let pod_seccomp = pod_security["seccompProfile"]["type"].as_str();
    const ALLOWED_VOLUMES: &[&str] = &[
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    for volume in spec["volumes"].as_array().into_iter().flatten() {
        let kinds: Vec<&String> = volume
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "name")
            .collect();
        if kinds.iter().any(|kind| !ALLOWED_VOLUMES.contains(&kind.as_str())) {
            wrong.push(format!("{name}: volume {volume} is not allowed"));
        }
    }
    let containers = spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(spec["initContainers"].as_array().into_iter().flatten());
    for container in containers {
        let container_name = format!("{name}/{}", container["name"].as_str().unwrap_or("?"));
        let security = &container["securityContext"];
        if security["allowPrivilegeEscalation"] != false {
            wrong.push(format!("{container_name}: allowPrivilegeEscalation is not false"));
        }
        if security["privileged"] == true {
            wrong.push(format!("{container_name}: privileged"));
        }
        if security["readOnlyRootFilesystem"] != true {
            wrong.push(format!("{container_name}: the root filesystem is writable"));
        }
        if security["runAsUser"] == 0 || security["runAsNonRoot"] == false {
            wrong.push(format!("{container_name}: runs as root"));
        }
        let dropped: Vec<&str> = security["capabilities"]["drop"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c.as_str())
            .collect();
        if !dropped.contains(&"ALL") {
            wrong.push(format!("{container_name}: capabilities are not all dropped"));
        }
        for added in security["capabilities"]["add"].as_array().into_iter().flatten() {
            if added != "NET_BIND_SERVICE" {
                wrong.push(format!("{container_name}: adds capability {added}"));
            }
        }
        let seccomp = security["seccompProfile"]["type"].as_str().or(pod_seccomp);
        if !matches!(seccomp, Some("RuntimeDefault" | "Localhost")) {
            wrong.push(format!(
                "{container_name}: no RuntimeDefault or Localhost seccomp profile"
            ));
        }
        let resources = &container["resources"];
        for needed in ["requests.cpu", "requests.memory", "limits.memory"] {
            let (section, key) = needed.split_once('.').unwrap();
            if resources[section][key].is_null() {
                wrong.push(format!("{container_name}: no resources.{needed}"));
            }
        }
        let image = container["image"].as_str().unwrap_or("");
        let tag = image.rsplit_once(':').map(|(_, tag)| tag).unwrap_or("");
        if tag.is_empty() || tag == "latest" || tag.contains('/') {
            wrong.push(format!("{container_name}: image {image:?} has no pinned tag"));
        }
        for probe in ["readinessProbe", "livenessProbe"] {
            if container[probe].is_null() {
                wrong.push(format!("{container_name}: no {probe}"));
            }
        }
    }
    wrong
}

#[test]
fn kubernetes_manifests_pass_the_schemas_and_the_restricted_profile() {
    let base = deploy_file("kubernetes/base");
    let kustomization = yaml_documents(&base.join("kustomization.yaml")).remove(0);
    let resources: Vec<String> = kustomization["resources"]
        .as_array()
        .expect("kustomize resources")
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    assert!(!resources.is_empty());
    let validate = common::venv_tool("kubernetes-validate", "ARTIFACTD_KUBERNETES_VALIDATE");
    let mut documents = Vec::new();
    for resource in &resources {
        let path = base.join(resource);
        let output = Command::new(&validate)
            .arg("--strict")
            .arg(&path)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success(),
            "{resource} fails the Kubernetes schemas:\n{text}"
        );
        let parsed = yaml_documents(&path);
        assert_eq!(
            text.matches(" passed for resource ").count(),
            parsed.len(),
            "every resource of {resource} was validated:\n{text}"
        );
        documents.extend(parsed);
    }

    let kinds: Vec<&str> = documents.iter().filter_map(|d| d["kind"].as_str()).collect();
    for needed in ["Deployment", "Service", "ConfigMap", "PodDisruptionBudget"] {
        assert!(kinds.contains(&needed), "no {needed} among {kinds:?}");
    }
    let mut violations = Vec::new();
    for document in &documents {
        if let Some(kind @ ("Deployment" | "StatefulSet" | "DaemonSet" | "Job")) = document["kind"].as_str() {
            let name = format!("{kind}/{}", document["metadata"]["name"].as_str().unwrap_or("?"));
            violations.extend(restricted_profile_violations(
                &name,
                &document["spec"]["template"],
            ));
        }
    }
    assert!(
        violations.is_empty(),
        "restricted profile violations:\n{}",
        violations.join("\n")
    );

    // The disruption budget covers the deployment's pods.
    let deployment = documents.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let budget = documents
        .iter()
        .find(|d| d["kind"] == "PodDisruptionBudget")
        .unwrap();
    assert_eq!(
        budget["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );

    // Credentials come from a Secret, and the SealedSecret example makes that Secret.
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let secret_name = container["envFrom"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|source| source["secretRef"]["name"].as_str())
        .expect("credentials from a Secret");
    let sealed = yaml_documents(&deploy_file("kubernetes/examples/sealed-secret.yaml")).remove(0);
    assert_eq!(sealed["kind"], "SealedSecret");
    assert_eq!(sealed["spec"]["template"]["metadata"]["name"], secret_name);
    for variable in [
        "DATABASE_URL",
        "AWS_SECRET_ACCESS_KEY",
        "S3_FALLBACK_SECRET_ACCESS_KEY",
    ] {
        assert!(
            !sealed["spec"]["encryptedData"][variable].is_null(),
            "{variable} is not sealed"
        );
    }
}

#[test]
fn the_restricted_profile_check_catches_what_it_should() {
    let pod = serde_json::json!({
        "spec": {
            "hostNetwork": true,
            "securityContext": {},
            "volumes": [{ "name": "host", "hostPath": { "path": "/" } }],
            "containers": [{
                "name": "bad",
                "image": "artifactd:latest",
                "securityContext": { "capabilities": { "add": ["SYS_ADMIN"] } },
            }],
        }
    });
    let violations = restricted_profile_violations("Deployment/bad", &pod).join("\n");
    for expected in [
        "hostNetwork",
        "runAsNonRoot",
        "hostPath",
        "allowPrivilegeEscalation",
        "writable",
        "capabilities are not all dropped",
        "SYS_ADMIN",
        "seccomp",
        "requests.cpu",
        "pinned tag",
        "readinessProbe",
    ] {
        assert!(
            violations.contains(expected),
            "{expected} not caught:\n{violations}"
        );
    }
}

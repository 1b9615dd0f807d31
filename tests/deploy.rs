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
    let examples = yaml_documents(&deploy_file("kubernetes/examples/sealed-secret.yaml"));
    // Every Secret the pods mount has its SealedSecret example too (admin key, master key).
    for volume in deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(name) = volume["secret"]["secretName"].as_str() {
            assert!(
                examples
                    .iter()
                    .any(|e| e["kind"] == "SealedSecret" && e["spec"]["template"]["metadata"]["name"] == name),
                "the Secret {name} has no SealedSecret example"
            );
        }
    }
    let sealed = examples.into_iter().next().unwrap();
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

/// One instruction of a Dockerfile: the keyword (upper case) and its arguments, with line
/// continuations joined and comments and parser directives dropped.
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut instructions = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if pending.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(trimmed);
        let (keyword, rest) = pending.split_once(char::is_whitespace).unwrap_or((&pending, ""));
        instructions.push((keyword.to_ascii_uppercase(), rest.trim().to_owned()));
        pending.clear();
    }
    instructions
}

/// The `--option` flags of an instruction removed, leaving its operands.
fn without_flags(arguments: &str) -> &str {
    let mut rest = arguments.trim_start();
    while rest.starts_with("--") {
        rest = rest
            .split_once(char::is_whitespace)
            .map_or("", |(_, after)| after)
            .trim_start();
    }
    rest
}

/// The libraries an ELF binary asks the dynamic loader for.
fn needed_libraries(binary: &str) -> BTreeSet<String> {
    let output = Command::new("readelf")
        .args(["--dynamic", binary])
        .output()
        .expect("readelf (binutils) runs");
    assert!(output.status.success());
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.contains("(NEEDED)"))
        .filter_map(|line| line.split('[').nth(1)?.split(']').next().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn the_dockerfile_builds_a_pinned_non_root_image_with_a_grpc_health_check() {
    let text = std::fs::read_to_string(common::repo_root().join("Dockerfile")).unwrap();
    let instructions = dockerfile_instructions(&text);
    let args: std::collections::BTreeMap<&str, &str> = instructions
        .iter()
        .filter(|(keyword, _)| keyword == "ARG")
        .filter_map(|(_, rest)| rest.split_once('='))
        .collect();
    let stages: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, (keyword, _))| keyword == "FROM")
        .map(|(index, _)| index)
        .collect();
    assert!(stages.len() >= 2, "a multi-stage build: {stages:?}");

    // The builder uses the toolchain the repository pins, and Cargo.lock exactly.
    let toolchain = std::fs::read_to_string(common::repo_root().join("rust-toolchain.toml")).unwrap();
    let channel = toolchain
        .lines()
        .find_map(|line| line.strip_prefix("channel = "))
        .map(|value| value.trim_matches('"'))
        .expect("rust-toolchain.toml names a channel");
    assert_eq!(
        args.get("RUST_VERSION").copied(),
        Some(channel),
        "the image builds with rust-toolchain.toml's Rust"
    );
    let runs: Vec<&str> = instructions
        .iter()
        .filter(|(keyword, _)| keyword == "RUN")
        .map(|(_, rest)| rest.as_str())
        .collect();
    assert!(
        runs.iter()
            .any(|run| run.contains("cargo build --release --locked")),
        "the release binary is built from Cargo.lock: {runs:?}"
    );

    // Every base image is pinned: a tag, never `latest`.
    for &index in &stages {
        let image = without_flags(&instructions[index].1)
            .split_whitespace()
            .next()
            .unwrap()
            .replace("${RUST_VERSION}", args.get("RUST_VERSION").copied().unwrap_or(""));
        let tag = image
            .rsplit_once('/')
            .map_or(image.as_str(), |(_, last)| last)
            .split_once(':')
            .map(|(_, tag)| tag);
        assert!(
            matches!(tag, Some(tag) if tag != "latest" && !tag.is_empty()),
            "{image} is not pinned"
        );
    }

    // The final stage: a minimal base that has what the binary links against, a non-root
    // numeric user, the binary as entry point and a health check through gRPC health.
    let last = &instructions[*stages.last().unwrap()..];
    let base = without_flags(&last[0].1);
    assert!(
        base.starts_with("gcr.io/distroless/cc-"),
        "minimal glibc base: {base}"
    );
    let provided = [
        "libc.so.6",
        "libm.so.6",
        "libgcc_s.so.1",
        "ld-linux-x86-64.so.2",
        "libpthread.so.0",
        "libdl.so.2",
        "librt.so.1",
    ];
    let needed = needed_libraries(common::binary::binary());
    let missing: Vec<_> = needed
        .iter()
        .filter(|lib| !provided.contains(&lib.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the runtime base lacks {missing:?} (the binary needs {needed:?})"
    );
    let user = last
        .iter()
        .rev()
        .find(|(keyword, _)| keyword == "USER")
        .map(|(_, rest)| rest.as_str())
        .expect("the final stage sets USER");
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("a numeric user, which runAsNonRoot can check");
    assert!(uid > 0, "USER {user} is root");
    let exec_form = |keyword: &str| -> Vec<String> {
        let (_, rest) = last
            .iter()
            .find(|(k, _)| k == keyword)
            .unwrap_or_else(|| panic!("no {keyword}"));
        serde_json::from_str(without_flags(rest).trim_start_matches("CMD").trim())
            .unwrap_or_else(|e| panic!("{keyword} in exec form: {e}"))
    };
    assert_eq!(exec_form("ENTRYPOINT"), ["/usr/local/bin/artifactd"]);
    assert_eq!(exec_form("CMD"), ["serve"]);
    let health = exec_form("HEALTHCHECK");
    assert_eq!(health[0], "/usr/local/bin/artifactd");
    assert_eq!(health[1], "health");

    // The image's environment is configuration the service accepts.
    let environment: Vec<(String, String)> = last
        .iter()
        .filter(|(keyword, _)| keyword == "ENV")
        .flat_map(|(_, rest)| rest.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .map(|pair| {
            let (name, value) = pair.split_once('=').expect("ENV name=value");
            (name.to_owned(), value.to_owned())
        })
        .collect();
    assert!(environment.iter().any(|(name, _)| name == "ARTIFACTD_DATA_DIR"));
    let checked = common::binary::command()
        .arg("check-config")
        .envs(environment.clone())
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&checked.stdout);
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(printed.contains("grpc_addr = \"0.0.0.0:50051\""), "{printed}");
    assert!(printed.contains("data_dir = \"/var/lib/artifactd\""), "{printed}");

    // The health check command, pointed at a live server (the image probes its own port):
    // SERVING is success; a server that is gone is exit code 6.
    let mut server = common::binary::ServerProcess::start();
    let probe = |endpoint: &str| {
        let arguments: Vec<String> = health[1..]
            .iter()
            .map(|a| {
                if a.starts_with("http://127.0.0.1:") {
                    endpoint.to_owned()
                } else {
                    a.clone()
                }
            })
            .collect();
        common::binary::command().args(&arguments).output().unwrap()
    };
    let answered = probe(&server.endpoint());
    assert!(
        answered.status.success(),
        "{}",
        String::from_utf8_lossy(&answered.stderr)
    );
    assert!(String::from_utf8_lossy(&answered.stdout).contains("SERVING"));
    let endpoint = server.endpoint();
    server.terminate();
    let gone = probe(&endpoint);
    assert_eq!(
        gone.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );
}

fn docker_compose(args: &[&str]) -> std::process::Output {
    Command::new("docker-compose")
        .args(args)
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "docker-compose could not run ({error}): run scripts/test, which installs Debian's \
             docker-compose package, or `apt-get install docker-compose`"
            )
        })
}

#[tokio::test]
async fn the_compose_file_is_valid_and_its_environment_runs_the_service() {
    let compose = deploy_file("compose/compose.yaml");
    let compose_path = compose.to_str().unwrap();
    let valid = docker_compose(&["-f", compose_path, "config", "-q"]);
    assert!(
        valid.status.success(),
        "{}",
        String::from_utf8_lossy(&valid.stderr)
    );
    // The same check refuses a broken file, so passing it means something.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("compose.yaml");
    let original = std::fs::read_to_string(&compose).unwrap();
    std::fs::write(
        &broken,
        original.replacen("    restart: unless-stopped", "    restart_policy: sometimes", 1),
    )
    .unwrap();
    let refused = docker_compose(&["-f", broken.to_str().unwrap(), "config", "-q"]);
    assert!(
        !refused.status.success(),
        "docker-compose accepted an unknown key"
    );

    let resolved = docker_compose(&["-f", compose_path, "config"]);
    assert!(resolved.status.success());
    let file: serde_json::Value = serde_norway::from_slice(&resolved.stdout).unwrap();
    let services = file["services"].as_object().unwrap();
    for needed in ["postgres", "minio", "s3-fallback", "artifactd"] {
        assert!(services.contains_key(needed), "no {needed} service");
    }
    let artifactd = &services["artifactd"];
    assert_eq!(artifactd["build"]["dockerfile"], "Dockerfile");
    assert_eq!(artifactd["read_only"], true);
    let environment = artifactd["environment"].as_object().unwrap();

    // Run the service with that environment, each compose service it names replaced by a real
    // local one: moto's S3 server for each S3 endpoint, a fresh Postgres database.
    let primary = common::moto::MotoServer::start().await;
    let fallback = common::moto::MotoServer::start().await;
    let database = common::postgres::TestDatabase::create().await;
    let mut env = Vec::new();
    for (name, value) in environment {
        let value = value.as_str().unwrap_or_default().to_owned();
        let local = match value
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split(['/', '@']).find(|part| part.contains(':')))
        {
            _ if name == "DATABASE_URL" => {
                assert!(value.contains("@postgres:5432/"), "{value}");
                database.url.clone()
            }
            Some("minio:9000") => primary.endpoint(),
            Some("s3-fallback:9000") => fallback.endpoint(),
            Some(other) if services.contains_key(other.split(':').next().unwrap()) => {
                panic!("{name} points at {other}, which this test does not provide")
            }
            _ => value,
        };
        env.push((name.clone(), local));
    }
    let server =
        common::binary::ServerProcess::start_with(common::binary::ServerOptions::default().envs(env));
    let status = common::failover::status(&server).await;
    assert_eq!(status.stores.len(), 2, "{status:?}");
    assert!(!status.degraded, "{status:?}");
    let mut client = server.client().await;
    let content = b"# Compose\n".repeat(100);
    let id = common::client::create_id(
        &mut client,
        common::client::header("acme", "compose", "doc", "compose.md"),
        &content,
    )
    .await;
    let (_, downloaded) = common::client::download(
        &mut client,
        common::client::download_request("acme", "compose", &id, ""),
    )
    .await
    .unwrap();
    assert_eq!(downloaded, content);
    use artifactd::storage::BlobStore;
    let primary_packs = primary.store("artifacts").await.list("packs/").await.unwrap();
    let fallback_packs = fallback
        .store("artifacts-fallback")
        .await
        .list("packs/")
        .await
        .unwrap();
    assert!(
        !primary_packs.is_empty() && !fallback_packs.is_empty(),
        "both stores hold the upload"
    );
    drop(server);
    database.drop_database().await;
}

//! The README's grpcurl examples, run with a real grpcurl (1.8, reflection v1alpha) against
//! the binary.

mod common;

use common::binary::{ServerOptions, ServerProcess};

fn readme_examples() -> String {
    let readme = std::fs::read_to_string(common::repo_root().join("README.md")).unwrap();
    let after_marker = readme
        .split("<!-- grpcurl-examples -->")
        .nth(1)
        .expect("README marks its grpcurl examples");
    let block = after_marker
        .split("```sh")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    block.to_owned()
}

#[test]
fn readme_grpcurl_examples_work() {
    let grpcurl = common::venv_tool("grpcurl", "ARTIFACTD_TEST_GRPCURL");
    // As on a fresh machine: the first start makes the admin key the examples read.
    let server = ServerProcess::start_with(ServerOptions {
        no_admin_key: true,
        ..Default::default()
    });
    let script = readme_examples()
        .replace("127.0.0.1:50051", &server.grpc.to_string())
        .replace(
            "artifactd-data/admin.key",
            &server.data_dir.join("admin.key").display().to_string(),
        );
    assert!(
        script.matches("grpcurl ").count() >= 10,
        "the README shows the main calls"
    );
    let path = format!(
        "{}:{}",
        grpcurl.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-x", "-c", &script])
        .env("PATH", path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "README examples failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for expected in [
        "artifactd.v1.ArtifactService",
        "grpc.health.v1.Health",
        "rpc CreateArtifact",
        "\"status\": \"SERVING\"",
        "\"subject\": \"key:",
        "\"role\": \"ROLE_SERVER_ADMIN\"",
        "\"createdBy\": \"key:",
        "\"latestVersion\": \"0.2.0\"",
        "\"changeMessage\": \"add refunds\"",
        "\"data\": \"IyBQYXltZW50cyBQUkQK\"",
        "\"contentType\": \"text/markdown\"",
        "\"deletedAt\"",
        "\"snippet\"",
        "\"link\": {",
        "\"project\": \"mobile\"",
    ] {
        assert!(
            stdout.contains(expected),
            "README output lacks {expected:?}:\n{stdout}"
        );
    }
    assert_eq!(
        stdout.matches("\"totalHits\": \"1\"").count(),
        2,
        "both searches find the PRD:\n{stdout}"
    );
}

//! The Go client (`clients/go`, GOPATH mode against Debian's Go packages): it builds, passes
//! `go vet` and `gofmt`, and its round trip runs against a live server.

mod common;

use common::binary::ServerProcess;
use std::process::Command;

fn go(args: &[&str], gopath: &str, workdir: &std::path::Path) -> std::process::Output {
    Command::new("go")
        .args(args)
        .current_dir(workdir)
        .env("GO111MODULE", "off")
        .env("GOPATH", gopath)
        .env("GOCACHE", workdir.join(".gocache"))
        .env("GOFLAGS", "")
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "go could not run ({error}): run scripts/test, which installs Debian's golang-go, \
                 protoc-gen-go, protoc-gen-go-grpc, golang-google-grpc-dev, golang-google-protobuf-dev and \
                 golang-lukechampine-blake3-dev"
            )
        })
}

#[test]
fn the_go_client_builds_and_round_trips_against_a_live_server() {
    let root = common::repo_root().join("clients/go");
    let gopath = format!("{}:/usr/share/gocode", root.display());
    let scratch = tempfile::tempdir().unwrap();
    let binary = scratch.path().join("roundtrip");
    let built = go(
        &["build", "-o", binary.to_str().unwrap(), "artifactd/cmd/roundtrip"],
        &gopath,
        scratch.path(),
    );
    assert!(
        built.status.success(),
        "go build: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let vetted = go(&["vet", "artifactd/..."], &gopath, scratch.path());
    assert!(
        vetted.status.success(),
        "go vet: {}",
        String::from_utf8_lossy(&vetted.stderr)
    );
    let unformatted = Command::new("gofmt")
        .args(["-l", "src/artifactd/client", "src/artifactd/cmd"])
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(
        unformatted.stdout.is_empty(),
        "not gofmt-formatted: {}",
        String::from_utf8_lossy(&unformatted.stdout)
    );

    let server = ServerProcess::start();
    let ran = Command::new(&binary)
        .args(["-addr", &server.grpc.to_string(), "-key", &server.key])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&ran.stdout);
    assert!(
        ran.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    assert!(stdout.starts_with("roundtrip ok "), "{stdout}");
    assert!(
        stdout.contains("not found"),
        "the server's message reaches the caller: {stdout}"
    );
}

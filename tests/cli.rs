//! The command line for people, run as a process against a live server: push, pull (resumed
//! and verified), ls, versions, show, search, rm, restore, fallback status, completions, and
//! exit codes scripts can rely on.

mod common;

use common::binary::{ServerProcess, command};
use std::path::Path;
use std::process::Output;

/// The command line against `server`, as tenant `acme` in project `cli`.
fn cli_command(server: &ServerProcess, args: &[&str], cwd: &Path) -> std::process::Command {
    let mut command = command();
    command
        .current_dir(cwd)
        .env("ARTIFACTD_ADDR", server.endpoint())
        .env("ARTIFACTD_TOKEN", &server.key)
        .env("ARTIFACTD_TENANT", "acme")
        .env("ARTIFACTD_PROJECT", "cli")
        .args(args);
    command
}

fn cli(server: &ServerProcess, args: &[&str], cwd: &Path) -> Output {
    cli_command(server, args, cwd)
        .output()
        .expect("running artifactd")
}

fn ok_json(output: Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&output.stdout)))
}

#[test]
fn push_pull_list_search_and_delete_from_the_command_line() {
    let server = ServerProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let docs = work.join("docs");
    std::fs::create_dir_all(docs.join("nested")).unwrap();
    let prd = b"# Wombat PRD\n\nThe wombat checkout.\n".repeat(2000);
    std::fs::write(docs.join("wombat-prd.md"), &prd).unwrap();
    std::fs::write(docs.join("nested/story.md"), b"# Wombat story\n").unwrap();

    // A directory: one artifact per file.
    let pushed = cli(&server, &["push", "--type", "doc", "docs", "--json"], work);
    assert!(
        pushed.status.success(),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&pushed.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    let first = &lines[1];
    assert_eq!(first["artifact"]["name"], "wombat-prd.md");
    assert!(
        first["version"]["new_stored_size"].as_u64().unwrap() < prd.len() as u64,
        "{first}"
    );

    // Pushing the same name again adds a version (minor bump).
    std::fs::write(docs.join("wombat-prd.md"), b"# Wombat PRD v2\n").unwrap();
    let again = ok_json(cli(
        &server,
        &[
            "push",
            "--type",
            "doc",
            "--bump",
            "minor",
            "docs/wombat-prd.md",
            "--json",
        ],
        work,
    ));
    assert_eq!(again["version"]["version"], "1.1.0");
    let id = again["artifact"]["id"].as_str().unwrap().to_owned();

    let listed = ok_json(cli(&server, &["ls", "--json"], work));
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["nested/story.md", "wombat-prd.md"],
        "a folder keeps its shape"
    );
    let versions = ok_json(cli(&server, &["versions", "doc/wombat-prd.md", "--json"], work));
    assert_eq!(versions[0]["version"], "1.1.0");
    assert_eq!(versions[1]["version"], "1.0.0");
    let shown = cli(&server, &["show", &id, "--version", "1.0.0"], work);
    assert!(String::from_utf8_lossy(&shown.stdout).contains(&format!("{} bytes", prd.len())));

    // A resumed, verified pull: a partial file from an interrupted download is completed.
    std::fs::write(work.join("old.md.part"), &prd[..10_000]).unwrap();
    let pulled = ok_json(cli(
        &server,
        &["pull", &id, "--version", "1.0.0", "-o", "old.md", "--json"],
        work,
    ));
    assert_eq!(pulled["resumed_from"], 10_000);
    assert_eq!(std::fs::read(work.join("old.md")).unwrap(), prd);
    // A partial file of other bytes (left by a pull of another version) is noticed at the
    // end, and the version is fetched whole: verified, nothing left over.
    std::fs::write(work.join("bad.md.part"), vec![0u8; 5_000]).unwrap();
    let bad = cli(
        &server,
        &["pull", &id, "--version", "1.0.0", "-o", "bad.md", "--json"],
        work,
    );
    let stderr = String::from_utf8_lossy(&bad.stderr).into_owned();
    assert!(
        stderr.contains("does not belong to version 1.0.0; downloading it whole"),
        "{stderr}"
    );
    let pulled = ok_json(bad);
    assert_eq!(pulled["resumed_from"], 0);
    assert_eq!(std::fs::read(work.join("bad.md")).unwrap(), prd);
    assert!(!work.join("bad.md.part").exists());

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let found = ok_json(cli(&server, &["search", "wombat", "--json"], work));
        if found["total_hits"] == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "search never found both: {found}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // A folder narrows the search; the query language is there when asked for.
    let under = ok_json(cli(
        &server,
        &["search", "wombat", "--under", "nested/", "--json"],
        work,
    ));
    assert_eq!(under["total_hits"], 1, "{under}");
    assert_eq!(under["hits"][0]["name"], "nested/story.md", "{under}");
    let natural = ok_json(cli(&server, &["search", "+wombat -story", "--json"], work));
    assert_eq!(natural["total_hits"], 2, "as text, both words count: {natural}");
    let operators = ok_json(cli(
        &server,
        &["search", "+wombat -story", "--operators", "--json"],
        work,
    ));
    assert_eq!(operators["total_hits"], 1, "{operators}");
    assert_eq!(operators["hits"][0]["name"], "wombat-prd.md", "{operators}");
    let unclosed = cli(&server, &["search", "\"wombat", "--operators"], work);
    assert_eq!(unclosed.status.code(), Some(4));
    assert!(
        String::from_utf8_lossy(&unclosed.stderr).contains("character 1"),
        "{}",
        String::from_utf8_lossy(&unclosed.stderr)
    );

    ok_json(cli(&server, &["rm", &id, "--json"], work));
    let gone = cli(&server, &["show", &id], work);
    assert_eq!(gone.status.code(), Some(3), "not found is exit code 3");
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("NotFound"),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );
    ok_json(cli(&server, &["restore", &id, "--json"], work));
    assert!(cli(&server, &["show", &id], work).status.success());
}

#[test]
fn exit_codes_and_messages_say_what_went_wrong() {
    let server = ServerProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    std::fs::write(work.join("a b.md"), b"x").unwrap();
    // The server's own message, and exit code 4 for a bad argument.
    let bad_type = cli(&server, &["push", "--type", "no spaces", "a b.md"], work);
    assert_eq!(bad_type.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&bad_type.stderr).contains("artifact_type"));
    let missing_file = cli(&server, &["push", "nowhere.md"], work);
    assert_eq!(missing_file.status.code(), Some(4));
    // No fallback configured: refused by the state of the server, exit code 5.
    let fallback = cli(&server, &["fallback", "status"], work);
    assert_eq!(fallback.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&fallback.stderr).contains("no fallback store is configured"));
    // No server: unavailable, exit code 6.
    let nowhere = command()
        .args(["ls", "--server", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(
        nowhere.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&nowhere.stderr)
    );
    // Health: the whole server, one service, an unknown service, and no server at all.
    let serving = cli(
        &server,
        &[
            "health",
            "--server",
            &server.endpoint(),
            "--service",
            "artifactd.v1.ArtifactService",
        ],
        work,
    );
    assert!(
        serving.status.success(),
        "{}",
        String::from_utf8_lossy(&serving.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&serving.stdout).trim(),
        "artifactd.v1.ArtifactService: SERVING"
    );
    let unknown = cli(
        &server,
        &[
            "health",
            "--server",
            &server.endpoint(),
            "--service",
            "no.such.Service",
        ],
        work,
    );
    assert_eq!(
        unknown.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );
    let unreachable = command()
        .args(["health", "--server", "http://127.0.0.1:9", "--timeout", "2"])
        .output()
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(6));
    // Server status: the version, the jobs and the services.
    let status = ok_json(cli(&server, &["status", "--json"], work));
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    let jobs = status["jobs"].as_array().unwrap();
    assert!(
        jobs.iter()
            .any(|job| job["name"] == "indexer" && job["state"] == "JOB_STATE_RUNNING"),
        "{status}"
    );
    assert!(
        status["services"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["service"] == "artifactd.v1.ArtifactService" && s["serving"] == true),
        "{status}"
    );
    // Shell completions name the commands.
    let completions = command().args(["completions", "bash"]).output().unwrap();
    assert!(completions.status.success());
    let script = String::from_utf8_lossy(&completions.stdout);
    for word in ["push", "pull", "versions", "restore", "health", "status"] {
        assert!(script.contains(word), "completions lack {word}");
    }
}

#[test]
fn the_readme_command_line_example_runs() {
    // As on a fresh machine: the first start makes the admin key the example reads.
    let server = ServerProcess::start_with(common::binary::ServerOptions {
        no_admin_key: true,
        ..Default::default()
    });
    let readme = std::fs::read_to_string(common::repo_root().join("README.md")).unwrap();
    let block = readme
        .split("<!-- cli-example -->")
        .nth(1)
        .and_then(|rest| rest.split("```sh\n").nth(1))
        .and_then(|rest| rest.split("```").next())
        .expect("the README has a command line example");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("docs")).unwrap();
    std::fs::write(
        dir.path().join("docs/payments-prd.md"),
        b"# Payments PRD\n\nRefunds within 30 days.\n",
    )
    .unwrap();
    let binary_dir = Path::new(common::binary::binary()).parent().unwrap().to_owned();
    let path = format!(
        "{}:{}",
        binary_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = format!(
        "set -euo pipefail\n{}",
        block
            .replace("http://127.0.0.1:50051", &server.endpoint())
            .replace(
                "artifactd-data/admin.key",
                &server.data_dir.join("admin.key").display().to_string()
            )
    );
    let output = std::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .env("PATH", path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("payments-prd.md"), "{stdout}");
    assert_eq!(
        std::fs::read(dir.path().join("payments-prd.md")).unwrap(),
        b"# Payments PRD\n\nRefunds within 30 days.\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_status_test_and_sync_from_the_command_line() {
    let pair = common::failover::start_pair().await;
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().to_owned();
    std::fs::write(work.join("kept.bin"), common::noise(600_000, 3)).unwrap();
    let server = &pair.server;
    let run = |args: &'static [&'static str]| cli(server, args, &work);
    ok_json(run(&["push", "kept.bin", "--json"]));
    let status = ok_json(run(&["fallback", "status", "--json"]));
    assert_eq!(status["stores"].as_array().unwrap().len(), 2, "{status}");
    let tested = ok_json(run(&["fallback", "test", "--json"]));
    assert_eq!(tested["healthy"], true, "{tested}");
    let synced = ok_json(run(&["fallback", "sync", "--json"]));
    assert!(synced["examined"].as_u64().unwrap() > 0, "{synced}");
    assert_eq!(synced["missing_on_primary"], 0);
}

/// `push` sends a file while reading it: the command's peak memory stays far below the
/// size of what it uploads. And a file that fails to read stores nothing: the command says
/// what failed, and the server never sees a finished upload.
#[test]
fn push_streams_the_file_and_a_failed_read_stores_nothing() {
    const FILE_MIB: usize = 96;
    let server = ServerProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    // Written a MiB at a time: the kernel counts the memory of the process that starts the
    // command into the command's peak, so this process must not hold the file either.
    let mut file = std::io::BufWriter::new(std::fs::File::create(work.join("bundle.bin")).unwrap());
    let mut hasher = blake3::Hasher::new();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut piece = Vec::with_capacity(1 << 20);
    for _ in 0..FILE_MIB {
        piece.clear();
        while piece.len() < 1 << 20 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            piece.extend_from_slice(&state.to_le_bytes());
        }
        hasher.update(&piece);
        std::io::Write::write_all(&mut file, &piece).unwrap();
    }
    std::io::Write::flush(&mut file).unwrap();
    drop(file);
    #[expect(
        clippy::zombie_processes,
        reason = "reaped below by wait4, which reports its peak memory"
    )]
    let child = command()
        .current_dir(work)
        .env("ARTIFACTD_ADDR", server.endpoint())
        .env("ARTIFACTD_TOKEN", &server.key)
        .env("ARTIFACTD_TENANT", "acme")
        .env("ARTIFACTD_PROJECT", "cli")
        .args(["push", "bundle.bin", "--json"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The child's own peak resident set, from the kernel's accounting of it as it is reaped.
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(reaped, child.id() as libc::pid_t);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "push failed: {status}"
    );
    let peak_mib = usage.ru_maxrss as f64 / 1024.0;
    assert!(
        peak_mib < (FILE_MIB / 2) as f64,
        "pushing {FILE_MIB} MiB took {peak_mib:.1} MiB of the command's memory: the file is held, not streamed"
    );
    let shown = ok_json(cli(&server, &["show", "file/bundle.bin", "--json"], work));
    assert_eq!(shown["version"]["size"], (FILE_MIB << 20) as u64, "{shown}");
    assert_eq!(
        shown["version"]["blake3"],
        hasher.finalize().to_hex().as_str(),
        "{shown}"
    );

    // The kernel refuses to read /proc/self/mem from its start: the read fails after the
    // upload began.
    let failed = cli(&server, &["push", "/proc/self/mem"], work);
    assert_eq!(
        failed.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&failed.stderr)
    );
    let told = String::from_utf8_lossy(&failed.stderr);
    assert!(told.contains("/proc/self/mem"), "{told}");
    let missing = cli(&server, &["show", "file/mem", "--json"], work);
    assert_eq!(
        missing.status.code(),
        Some(3),
        "nothing was stored: {}",
        String::from_utf8_lossy(&missing.stdout)
    );
}

/// Pulls into one path take turns: a part another process holds is left alone (exit code 5,
/// naming it), and of pulls started at once, each finishes or stops that way, and the file
/// ends as the version with no part left over.
#[test]
fn pulls_into_one_path_take_turns() {
    let server = ServerProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let content: Vec<u8> = (0..6u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(work.join("big.bin"), &content).unwrap();
    let pushed = ok_json(cli(&server, &["push", "big.bin", "--json"], work));
    let id = pushed["artifact"]["id"].as_str().unwrap().to_owned();
    let running = "another pull into this path is running";

    let part = work.join("held.bin.part");
    std::fs::write(&part, &content[..1000]).unwrap();
    let holder = std::fs::OpenOptions::new().write(true).open(&part).unwrap();
    holder.try_lock().unwrap();
    let refused = cli(&server, &["pull", &id, "-o", "held.bin"], work);
    let stderr = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert_eq!(refused.status.code(), Some(5), "{stderr}");
    assert!(
        stderr.contains(running) && stderr.contains("held.bin.part"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&part).unwrap(),
        &content[..1000],
        "the held part was touched"
    );
    assert!(!work.join("held.bin").exists());
    drop(holder);
    let resumed = ok_json(cli(&server, &["pull", &id, "-o", "held.bin", "--json"], work));
    assert_eq!(resumed["resumed_from"], 1000);
    assert_eq!(std::fs::read(work.join("held.bin")).unwrap(), content);

    for round in 0..4 {
        let pulls: Vec<std::process::Child> = (0..8)
            .map(|_| {
                cli_command(&server, &["pull", &id, "-o", "same.bin"], work)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("running artifactd")
            })
            .collect();
        let mut finished = 0;
        for pull in pulls {
            let output = pull.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            match output.status.code() {
                Some(0) => finished += 1,
                Some(5) if stderr.contains(running) => {}
                other => panic!("round {round}: a pull ended with {other:?}: {stderr}"),
            }
        }
        assert!(finished >= 1, "round {round}: no pull finished");
        assert!(
            std::fs::read(work.join("same.bin")).unwrap() == content,
            "round {round}: the file is not the version"
        );
        assert!(
            !work.join("same.bin.part").exists(),
            "round {round}: a part was left"
        );
    }
}

//! The command line for people: `artifactd push | pull | ls | versions | show | search | rm |
//! restore | fallback | status` (and `health`, in `main.rs`), over the same gRPC API the agents use. Human output by default,
//! `--json` for scripts; exit codes by what went wrong (see [`exit_code`]).

use crate::proto::admin_service_client::AdminServiceClient;
use crate::proto::artifact_service_client::ArtifactServiceClient;
use crate::proto::fallback_service_client::FallbackServiceClient;
use crate::proto::search_service_client::SearchServiceClient;
use crate::proto::{
    self, ArtifactCoordinates, CreateArtifactHeader, CreateArtifactRequest, DeleteArtifactRequest,
    DownloadArtifactRequest, GetArtifactRequest, GetFallbackStatusRequest, ListArtifactsRequest,
    ListVersionsRequest, SearchRequest, UndeleteArtifactRequest, UpdateArtifactHeader, UpdateArtifactRequest,
    UploadFinish, create_artifact_request, download_artifact_response, get_artifact_request,
    update_artifact_header, update_artifact_request,
};
use bytes::Bytes;
use clap::{Args, Subcommand};
use futures::StreamExt;
use serde_json::json;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Where the server is and who is asking; from flags or `ARTIFACTD_*` variables.
#[derive(Debug, Args)]
pub struct Connection {
    /// The server's gRPC address.
    #[arg(
        long,
        env = "ARTIFACTD_ADDR",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub server: String,
    #[arg(long, env = "ARTIFACTD_TENANT", default_value = "default", global = true)]
    pub tenant: String,
    #[arg(long, env = "ARTIFACTD_PROJECT", default_value = "default", global = true)]
    pub project: String,
    /// An API key (`adk_…`) or an OIDC token, sent as `authorization: Bearer` with every call.
    #[arg(long, env = "ARTIFACTD_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// For an https:// server: the CA (PEM) its certificate chains to, instead of the
    /// system's roots.
    #[arg(long, env = "ARTIFACTD_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// For a server that asks for client certificates: this client's certificate (PEM) ...
    #[arg(long, env = "ARTIFACTD_CERT_FILE", global = true, requires = "key_file")]
    pub cert_file: Option<PathBuf>,
    /// ... and its private key (PEM).
    #[arg(long, env = "ARTIFACTD_KEY_FILE", global = true, requires = "cert_file")]
    pub key_file: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The variables above, which the server's configuration loader must not read as settings.
pub const VARIABLES: &[&str] = &[
    "ARTIFACTD_ADDR",
    "ARTIFACTD_TENANT",
    "ARTIFACTD_PROJECT",
    "ARTIFACTD_TOKEN",
    "ARTIFACTD_CA_FILE",
    "ARTIFACTD_CERT_FILE",
    "ARTIFACTD_KEY_FILE",
    // Once the author's name; the author is now whoever the credential proves.
    "ARTIFACTD_ACTOR",
];

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Uploads files: a new artifact per file, or a new version of an existing one.
    Push {
        /// Files, or directories (every file below them, named by its path below the directory).
        paths: Vec<PathBuf>,
        /// The artifact type, for example prd, architecture, story, bundle.
        #[arg(long = "type", default_value = "file")]
        artifact_type: String,
        /// The version: of a new artifact, or of the new version of an existing one.
        #[arg(long)]
        version: Option<String>,
        /// How an existing artifact's version is bumped when --version is not given.
        #[arg(long, default_value = "patch", value_parser = ["major", "minor", "patch"])]
        bump: String,
        #[arg(long, default_value = "")]
        message: String,
    },
    /// Downloads a version to a file, resuming a partial download and verifying it.
    Pull {
        /// An artifact id, or TYPE/NAME.
        artifact: String,
        #[arg(long)]
        version: Option<String>,
        /// Where to write; the artifact's name when not given.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Lists the artifacts of the project, or of one folder of it ("docs/stories/").
    Ls {
        folder: Option<String>,
        #[arg(long = "type")]
        artifact_type: Option<String>,
    },
    /// Lists an artifact's versions, newest first (archived ones with --all).
    Versions {
        artifact: String,
        /// Archived versions too.
        #[arg(long)]
        all: bool,
    },
    /// Shows an artifact and one version.
    Show {
        artifact: String,
        #[arg(long)]
        version: Option<String>,
    },
    /// Full-text search: the text as people type it, or the query language with --operators.
    Search {
        query: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Read the query as the query language (field:value, AND, OR, +/-, quotes).
        #[arg(long)]
        operators: bool,
        /// Only artifacts whose names lie under this folder ("docs/stories/").
        #[arg(long)]
        under: Option<String>,
    },
    /// Deletes an artifact (restorable for the retention period).
    Rm { artifact: String },
    /// Restores a deleted artifact.
    Restore { artifact: String },
    /// The fallback store's state.
    Fallback {
        #[command(subcommand)]
        command: FallbackCommand,
    },
    /// The server's version, background jobs and the health of each service.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum FallbackCommand {
    /// Breakers, write target, replication backlog, what each store lacks.
    Status,
    /// Writes, reads back and deletes a canary on each store now.
    Test,
    /// Compares both stores and copies whatever either lacks, with progress.
    Sync {
        /// Only count what is missing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// A failure of a command, with the exit code scripts can rely on.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

/// Exit codes: 0 success; 2 usage (clap); 3 not found; 4 invalid argument; 5 refused by
/// the current state (version conflict, not configured); 6 unavailable; 7 data failed
/// verification; 8 permission; 1 anything else.
pub fn exit_code(code: Code) -> i32 {
    match code {
        Code::NotFound => 3,
        Code::InvalidArgument | Code::OutOfRange => 4,
        Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => 5,
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted => 6,
        Code::DataLoss => 7,
        Code::PermissionDenied | Code::Unauthenticated => 8,
        _ => 1,
    }
}

impl From<Status> for Failure {
    fn from(status: Status) -> Self {
        Failure {
            code: exit_code(status.code()),
            message: format!("{:?}: {}", status.code(), status.message()),
        }
    }
}

fn failure(code: i32, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

struct Session {
    connection: Connection,
    channel: Channel,
}

impl Session {
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.connection.token
            && let Ok(value) = format!("Bearer {token}").parse()
        {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }

    fn artifacts(&self) -> ArtifactServiceClient<Channel> {
        ArtifactServiceClient::new(self.channel.clone())
            .max_decoding_message_size(16 * 1024 * 1024)
            .max_encoding_message_size(16 * 1024 * 1024)
    }

    fn scope(&self) -> (String, String) {
        (self.connection.tenant.clone(), self.connection.project.clone())
    }

    /// An artifact named by id or `TYPE/NAME`.
    async fn find(&self, artifact: &str, version: &str) -> Result<proto::GetArtifactResponse, Failure> {
        let (tenant, project) = self.scope();
        let selector = match artifact.split_once('/') {
            Some((artifact_type, name)) => get_artifact_request::Selector::Coordinates(ArtifactCoordinates {
                artifact_type: artifact_type.to_owned(),
                name: name.to_owned(),
            }),
            None => get_artifact_request::Selector::ArtifactId(artifact.to_owned()),
        };
        Ok(self
            .artifacts()
            .get_artifact(self.request(GetArtifactRequest {
                tenant,
                project,
                selector: Some(selector),
                version: version.to_owned(),
            }))
            .await?
            .into_inner())
    }

    fn print(&self, json: serde_json::Value, human: impl FnOnce() -> String) {
        if self.connection.json {
            println!("{json}");
        } else {
            println!("{}", human());
        }
    }
}

/// Runs one client command.
pub async fn run(connection: Connection, command: ClientCommand) -> Result<(), Failure> {
    let channel = connect(&connection).await?;
    let session = Session { connection, channel };
    match command {
        ClientCommand::Push {
            paths,
            artifact_type,
            version,
            bump,
            message,
        } => {
            let mut files = Vec::new();
            for path in &paths {
                collect_files(path, &mut files)?;
            }
            if files.is_empty() {
                return Err(failure(4, "push: no files given"));
            }
            for (file, name) in files {
                push(
                    &session,
                    &file,
                    &name,
                    &artifact_type,
                    version.as_deref(),
                    &bump,
                    &message,
                )
                .await?;
            }
            Ok(())
        }
        ClientCommand::Pull {
            artifact,
            version,
            output,
        } => pull(&session, &artifact, version.as_deref().unwrap_or(""), output).await,
        ClientCommand::Ls {
            folder,
            artifact_type,
        } => {
            let (tenant, project) = session.scope();
            let mut token = String::new();
            let mut rows = Vec::new();
            loop {
                let page = session
                    .artifacts()
                    .list_artifacts(
                        session.request(ListArtifactsRequest {
                            tenant: tenant.clone(),
                            project: project.clone(),
                            artifact_type: artifact_type.clone().unwrap_or_default(),
                            page_size: 200,
                            page_token: token,
                            states: Vec::new(),
                            path_prefix: folder
                                .as_deref()
                                .map(|f| {
                                    if f.ends_with('/') {
                                        f.to_owned()
                                    } else {
                                        format!("{f}/")
                                    }
                                })
                                .unwrap_or_default(),
                        }),
                    )
                    .await?
                    .into_inner();
                rows.extend(page.artifacts);
                token = page.next_page_token;
                if token.is_empty() {
                    break;
                }
            }
            let listed = json!(rows.iter().map(artifact_json).collect::<Vec<_>>());
            session.print(listed, || {
                rows.iter()
                    .map(|a| {
                        format!(
                            "{:<36}  {:<12} {:<10} {}",
                            a.id, a.artifact_type, a.latest_version, a.name
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
            Ok(())
        }
        ClientCommand::Versions { artifact, all } => {
            let found = session.find(&artifact, "").await?;
            let (tenant, project) = session.scope();
            let id = found.artifact.map(|a| a.id).unwrap_or_default();
            let versions = session
                .artifacts()
                .list_versions(session.request(ListVersionsRequest {
                    tenant,
                    project,
                    artifact_id: id,
                    page_size: 1000,
                    page_token: String::new(),
                    states: if all { (1..=4).collect() } else { Vec::new() },
                }))
                .await?
                .into_inner()
                .versions;
            session.print(
                json!(versions.iter().map(version_json).collect::<Vec<_>>()),
                || {
                    versions
                        .iter()
                        .map(|v| {
                            format!(
                                "{:<16} {:<9} {:>12} bytes  {}",
                                v.version,
                                state_name(v.state),
                                v.size,
                                v.change_message
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                },
            );
            Ok(())
        }
        ClientCommand::Show { artifact, version } => {
            let found = session.find(&artifact, version.as_deref().unwrap_or("")).await?;
            let (artifact, version) = (
                found.artifact.unwrap_or_default(),
                found.version.unwrap_or_default(),
            );
            session.print(
                json!({ "artifact": artifact_json(&artifact), "version": version_json(&version) }),
                || {
                    format!(
                        "{} ({}) {}\nid       {}\nversion  {} of {}\nsize     {} bytes ({} stored)\nblake3   {}\ntags     {}",
                        artifact.name,
                        artifact.artifact_type,
                        artifact.description,
                        artifact.id,
                        version.version,
                        artifact.version_count,
                        version.size,
                        version.stored_size,
                        version.blake3,
                        artifact.tags.join(", ")
                    )
                },
            );
            Ok(())
        }
        ClientCommand::Search {
            query,
            limit,
            operators,
            under,
        } => {
            let (tenant, project) = session.scope();
            let syntax = if operators {
                crate::proto::QuerySyntax::Operators
            } else {
                crate::proto::QuerySyntax::Natural
            };
            let found = SearchServiceClient::new(session.channel.clone())
                .search(session.request(SearchRequest {
                    tenant,
                    project,
                    query,
                    page_size: limit,
                    syntax: syntax as i32,
                    path_prefix: under.unwrap_or_default(),
                    ..Default::default()
                }))
                .await?
                .into_inner();
            let hits: Vec<_> = found
                .hits
                .iter()
                .map(|h| json!({ "artifact_id": h.artifact_id, "name": h.name, "type": h.artifact_type, "title": h.title, "score": h.score, "snippet": h.snippet_text }))
                .collect();
            session.print(json!({ "total_hits": found.total_hits, "hits": hits }), || {
                let mut lines = vec![format!("{} hits", found.total_hits)];
                lines.extend(
                    found
                        .hits
                        .iter()
                        .map(|h| format!("{:<36}  {:<12} {}", h.artifact_id, h.artifact_type, h.name)),
                );
                lines.join("\n")
            });
            Ok(())
        }
        ClientCommand::Rm { artifact } => {
            let id = session
                .find(&artifact, "")
                .await?
                .artifact
                .map(|a| a.id)
                .unwrap_or_default();
            let (tenant, project) = session.scope();
            let deleted = session
                .artifacts()
                .delete_artifact(session.request(DeleteArtifactRequest {
                    tenant,
                    project,
                    artifact_id: id.clone(),
                }))
                .await?
                .into_inner();
            let until = deleted.restorable_until.map(|t| t.seconds).unwrap_or_default();
            session.print(
                json!({ "artifact_id": id, "restorable_until_unix": until }),
                || format!("deleted {id}; `artifactd restore {id}` brings it back until unix time {until}"),
            );
            Ok(())
        }
        ClientCommand::Restore { artifact } => {
            let (tenant, project) = session.scope();
            let restored = session
                .artifacts()
                .undelete_artifact(session.request(UndeleteArtifactRequest {
                    tenant,
                    project,
                    artifact_id: artifact.clone(),
                }))
                .await?
                .into_inner()
                .artifact
                .unwrap_or_default();
            session.print(artifact_json(&restored), || {
                format!("restored {} ({})", restored.name, restored.id)
            });
            Ok(())
        }
        ClientCommand::Status => {
            let status = AdminServiceClient::new(session.channel.clone())
                .get_server_status(session.request(proto::GetServerStatusRequest {}))
                .await?
                .into_inner();
            let jobs: Vec<_> = status
                .jobs
                .iter()
                .map(|j| {
                    let state = proto::JobState::try_from(j.state).unwrap_or_default();
                    json!({ "name": j.name, "state": state.as_str_name(), "restarts": j.restarts, "last_error": j.last_error })
                })
                .collect();
            let services: Vec<_> = status
                .services
                .iter()
                .map(|s| json!({ "service": s.service, "serving": s.serving }))
                .collect();
            session.print(
                json!({ "version": status.version, "jobs": jobs, "services": services }),
                || {
                    let mut lines = vec![format!("artifactd {}", status.version)];
                    lines.extend(status.services.iter().map(|s| {
                        let name = if s.service.is_empty() {
                            "(server)"
                        } else {
                            &s.service
                        };
                        format!("{name:<40} {}", if s.serving { "serving" } else { "NOT SERVING" })
                    }));
                    lines.extend(status.jobs.iter().map(|j| {
                        let state = proto::JobState::try_from(j.state).unwrap_or_default();
                        let error = if j.last_error.is_empty() {
                            String::new()
                        } else {
                            format!("  last error: {}", j.last_error)
                        };
                        format!("job {:<36} {:?}  restarts {}{error}", j.name, state, j.restarts)
                    }));
                    lines.join("\n")
                },
            );
            Ok(())
        }
        ClientCommand::Fallback {
            command: FallbackCommand::Status,
        } => {
            let status = FallbackServiceClient::new(session.channel.clone())
                .get_fallback_status(session.request(GetFallbackStatusRequest {}))
                .await?
                .into_inner();
            let stores: Vec<_> = status
                .stores
                .iter()
                .map(|s| json!({ "store": s.store, "breaker_state": s.breaker_state, "lacking": s.lacking, "repaired": s.repaired, "last_error": s.last_error }))
                .collect();
            session.print(
                json!({ "degraded": status.degraded, "queue_depth": status.queue_depth, "stores": stores }),
                || {
                    let mut lines = vec![format!(
                        "degraded: {}   queued copies: {}",
                        status.degraded, status.queue_depth
                    )];
                    lines.extend(status.stores.iter().map(|s| {
                        format!(
                            "{:<50} breaker {:?}  lacking {}  repaired {}",
                            s.store,
                            proto::BreakerState::try_from(s.breaker_state).unwrap_or_default(),
                            s.lacking,
                            s.repaired
                        )
                    }));
                    lines.join("\n")
                },
            );
            Ok(())
        }
        ClientCommand::Fallback {
            command: FallbackCommand::Test,
        } => {
            let probes = FallbackServiceClient::new(session.channel.clone())
                .test_fallback(session.request(proto::TestFallbackRequest {}))
                .await?
                .into_inner()
                .stores;
            let healthy = probes.iter().all(|p| p.can_write && p.can_read && p.can_delete);
            let rows: Vec<_> = probes
                .iter()
                .map(|p| {
                    json!({ "store": p.store, "can_write": p.can_write, "can_read": p.can_read,
                                 "can_delete": p.can_delete, "latency_ms": p.latency_ms, "error": p.error })
                })
                .collect();
            session.print(json!({ "healthy": healthy, "stores": rows }), || {
                probes
                    .iter()
                    .map(|p| {
                        let verdict = if p.can_write && p.can_read && p.can_delete {
                            "ok"
                        } else {
                            "FAILING"
                        };
                        format!(
                            "{:<50} {verdict:<8} {:>8.1} ms  {}",
                            p.store, p.latency_ms, p.error
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
            if healthy {
                Ok(())
            } else {
                Err(failure(6, "a store failed its probe"))
            }
        }
        ClientCommand::Fallback {
            command: FallbackCommand::Sync { dry_run },
        } => {
            let mut stream = FallbackServiceClient::new(session.channel.clone())
                .sync_fallback(session.request(proto::SyncFallbackRequest { dry_run }))
                .await?
                .into_inner();
            let progress = ProgressLine::new();
            while let Some(message) = stream.message().await? {
                match message.message {
                    Some(proto::sync_fallback_response::Message::Progress(report)) if progress.shown => {
                        eprint!("\rexamined {} objects", report.examined);
                    }
                    Some(proto::sync_fallback_response::Message::Progress(_)) => {}
                    Some(proto::sync_fallback_response::Message::Result(report)) => {
                        progress.finish();
                        session.print(
                            json!({ "examined": report.examined, "missing_on_primary": report.missing_on_primary,
                                    "missing_on_fallback": report.missing_on_fallback,
                                    "copied_to_primary": report.copied_to_primary,
                                    "copied_to_fallback": report.copied_to_fallback, "errors": report.errors }),
                            || {
                                format!(
                                    "examined {}; missing on primary {}, on fallback {}; copied {} and {}{}",
                                    report.examined,
                                    report.missing_on_primary,
                                    report.missing_on_fallback,
                                    report.copied_to_primary,
                                    report.copied_to_fallback,
                                    if report.errors.is_empty() { String::new() } else { format!("; errors: {}", report.errors.join("; ")) }
                                )
                            },
                        );
                        if !report.errors.is_empty() {
                            return Err(failure(6, "some copies failed"));
                        }
                    }
                    None => {}
                }
            }
            Ok(())
        }
    }
}

async fn connect(connection: &Connection) -> Result<Channel, Failure> {
    let mut endpoint = Channel::from_shared(connection.server.clone())
        .map_err(|e| failure(4, format!("--server {:?}: {e}", connection.server)))?;
    if connection.server.starts_with("https://") {
        let read = |flag: &str, path: &Path| {
            std::fs::read(path).map_err(|e| failure(4, format!("--{flag} {}: {e}", path.display())))
        };
        let mut tls = tonic::transport::ClientTlsConfig::new().with_native_roots();
        if let Some(ca) = &connection.ca_file {
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(read("ca-file", ca)?));
        }
        if let (Some(cert), Some(key)) = (&connection.cert_file, &connection.key_file) {
            tls = tls.identity(tonic::transport::Identity::from_pem(
                read("cert-file", cert)?,
                read("key-file", key)?,
            ));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| failure(4, format!("TLS for {}: {e}", connection.server)))?;
    }
    // Room for several download messages in flight: with HTTP/2's default 64 KiB window a
    // pull waits on window updates all through.
    endpoint
        .initial_stream_window_size(8 * 1024 * 1024)
        .initial_connection_window_size(32 * 1024 * 1024)
        .connect()
        .await
        .map_err(|e| failure(6, format!("cannot reach {}: {e}", connection.server)))
}

/// `artifactd health`: one `grpc.health.v1.Health/Check` of `service` (the whole server when
/// empty), answered within `limit`. Success only for SERVING; not serving, not answering and
/// not reachable are all exit code 6.
pub async fn health_check(connection: &Connection, service: &str, limit: Duration) -> Result<(), Failure> {
    match tokio::time::timeout(limit, health(connection, service)).await {
        Ok(result) => result,
        Err(_) => Err(failure(
            6,
            format!("{} did not answer within {:?}", connection.server, limit),
        )),
    }
}

async fn health(connection: &Connection, service: &str) -> Result<(), Failure> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let channel = connect(connection).await?;
    let answer = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?
        .into_inner();
    let status = ServingStatus::try_from(answer.status).unwrap_or(ServingStatus::Unknown);
    let name = if service.is_empty() { "server" } else { service };
    if connection.json {
        println!(
            "{}",
            json!({ "service": service, "status": status.as_str_name() })
        );
    } else {
        println!("{name}: {}", status.as_str_name());
    }
    match status {
        ServingStatus::Serving => Ok(()),
        _ => Err(failure(6, format!("{name} is {}", status.as_str_name()))),
    }
}

fn artifact_json(a: &proto::Artifact) -> serde_json::Value {
    json!({ "id": a.id, "type": a.artifact_type, "name": a.name, "latest_version": a.latest_version,
            "version_count": a.version_count, "tags": a.tags })
}

fn version_json(v: &proto::ArtifactVersion) -> serde_json::Value {
    json!({ "version": v.version, "state": state_name(v.state), "size": v.size, "stored_size": v.stored_size,
            "new_stored_size": v.new_stored_size, "blake3": v.blake3, "change_message": v.change_message })
}

/// "draft", "review", "approved" or "archived".
fn state_name(state: i32) -> String {
    let name = proto::LifecycleState::try_from(state)
        .unwrap_or_default()
        .as_str_name();
    name.strip_prefix("LIFECYCLE_STATE_")
        .unwrap_or(name)
        .to_ascii_lowercase()
}

/// The files under `path` with the names they take: a file's own name, or for a directory,
/// each file's path below it ("stories/1.1.story.md"), so a folder keeps its shape.
fn collect_files(path: &Path, files: &mut Vec<(PathBuf, String)>) -> Result<(), Failure> {
    let metadata = std::fs::metadata(path).map_err(|e| failure(4, format!("{}: {e}", path.display())))?;
    if metadata.is_file() {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| failure(4, format!("{}: not a file name", path.display())))?;
        files.push((path.to_owned(), name.to_owned()));
        return Ok(());
    }
    walk(path, path, files)
}

fn walk(root: &Path, dir: &Path, files: &mut Vec<(PathBuf, String)>) -> Result<(), Failure> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| failure(4, format!("{}: {e}", dir.display())))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .collect();
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            walk(root, &entry, files)?;
            continue;
        }
        let relative = entry.strip_prefix(root).unwrap_or(&entry);
        let parts: Option<Vec<&str>> = relative.components().map(|c| c.as_os_str().to_str()).collect();
        let name = parts
            .ok_or_else(|| failure(4, format!("{}: not a file name", entry.display())))?
            .join("/");
        files.push((entry, name));
    }
    Ok(())
}

/// Reports bytes sent and the rate on stderr when it is a terminal.
struct ProgressLine {
    started: Instant,
    shown: bool,
}

impl ProgressLine {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            shown: std::io::stderr().is_terminal(),
        }
    }

    fn update(&self, sent: u64, total: u64) {
        if !self.shown {
            return;
        }
        let rate = sent as f64 / self.started.elapsed().as_secs_f64().max(1e-3) / 1048576.0;
        eprint!(
            "\r{:>8.1} / {:.1} MiB  {:>6.1} MiB/s",
            sent as f64 / 1048576.0,
            total as f64 / 1048576.0,
            rate
        );
        let _ = std::io::stderr().flush();
    }

    fn finish(&self) {
        if self.shown {
            eprintln!();
        }
    }
}

/// One message of an upload's content, after its header.
enum Piece {
    Data(Bytes),
    /// What was read, proved: the last message.
    Finish(UploadFinish),
}

/// A push reads its file in pieces of this size, at most this many ahead of what was sent:
/// a file of any size costs the command about 2 MiB.
const PIECE_BYTES: usize = 256 * 1024;
const PIECES_AHEAD: usize = 8;

/// A file being read into an upload's messages while they are sent, hashed on the way.
struct FileReading {
    /// The file's size when it was opened (for the progress line; the finish message has
    /// what was read).
    size: u64,
    pieces: tokio::sync::mpsc::Receiver<Piece>,
    /// Why reading stopped early, set before `pieces` ends. The upload then ends without its
    /// finish message, which the server refuses, so nothing of it is stored.
    failed: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

/// Starts reading `path` into pieces; fails at once when it cannot be opened.
fn read_file(path: &Path) -> Result<FileReading, Failure> {
    let shown = path.display().to_string();
    let mut file = std::fs::File::open(path).map_err(|e| failure(4, format!("{shown}: {e}")))?;
    let size = file
        .metadata()
        .map_err(|e| failure(1, format!("{shown}: {e}")))?
        .len();
    let (sender, pieces) = tokio::sync::mpsc::channel(PIECES_AHEAD);
    let failed = std::sync::Arc::new(std::sync::Mutex::new(None));
    let failure_slot = failed.clone();
    tokio::task::spawn_blocking(move || {
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        loop {
            let mut buffer = vec![0; PIECE_BYTES];
            let read = match file.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    *failure_slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{shown}: {e}"));
                    return;
                }
            };
            buffer.truncate(read);
            hasher.update(&buffer);
            size += read as u64;
            if sender.blocking_send(Piece::Data(Bytes::from(buffer))).is_err() {
                return; // the upload ended; its outcome says why
            }
        }
        let _ = sender.blocking_send(Piece::Finish(UploadFinish {
            size: Some(size),
            blake3: hasher.finalize().to_hex().to_string(),
        }));
    });
    Ok(FileReading { size, pieces, failed })
}

async fn push(
    session: &Session,
    path: &Path,
    name: &str,
    artifact_type: &str,
    version: Option<&str>,
    bump: &str,
    message: &str,
) -> Result<(), Failure> {
    let name = name.to_owned();
    let FileReading {
        size: total,
        pieces,
        failed,
    } = read_file(path)?;
    let (tenant, project) = session.scope();
    let existing = match session.find(&format!("{artifact_type}/{name}"), "").await {
        Ok(found) => found.artifact,
        Err(failure) if failure.code == 3 => None,
        Err(failure) => return Err(failure),
    };
    let progress = std::sync::Arc::new(ProgressLine::new());
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let pieces = {
        let (progress, sent) = (progress.clone(), sent.clone());
        tokio_stream::wrappers::ReceiverStream::new(pieces).inspect(move |piece| {
            if let Piece::Data(data) = piece {
                let now = sent.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed)
                    + data.len() as u64;
                progress.update(now, total);
            }
        })
    };
    let started = Instant::now();
    let outcome = match existing {
        None => {
            let header = CreateArtifactRequest {
                message: Some(create_artifact_request::Message::Header(CreateArtifactHeader {
                    tenant,
                    project,
                    artifact_type: artifact_type.to_owned(),
                    name: name.clone(),
                    initial_version: version.unwrap_or("").to_owned(),
                    change_message: message.to_owned(),
                    ..Default::default()
                })),
            };
            let messages =
                futures::stream::once(async { header }).chain(pieces.map(|piece| CreateArtifactRequest {
                    message: Some(match piece {
                        Piece::Data(data) => create_artifact_request::Message::Data(data),
                        Piece::Finish(finish) => create_artifact_request::Message::Finish(finish),
                    }),
                }));
            let created = session
                .artifacts()
                .create_artifact(session.request(messages))
                .await
                .map(|answer| answer.into_inner());
            created.map(|created| {
                (
                    created.artifact.unwrap_or_default(),
                    created.version.unwrap_or_default(),
                )
            })
        }
        Some(existing) => {
            let next_version = match version {
                Some(explicit) => update_artifact_header::NextVersion::ExplicitVersion(explicit.to_owned()),
                None => update_artifact_header::NextVersion::Bump(match bump {
                    "major" => proto::BumpKind::Major as i32,
                    "minor" => proto::BumpKind::Minor as i32,
                    _ => proto::BumpKind::Patch as i32,
                }),
            };
            let header = UpdateArtifactRequest {
                message: Some(update_artifact_request::Message::Header(UpdateArtifactHeader {
                    tenant,
                    project,
                    artifact_id: existing.id.clone(),
                    next_version: Some(next_version),
                    expected_current_version: existing.latest_version.clone(),
                    change_message: message.to_owned(),
                    ..Default::default()
                })),
            };
            let messages =
                futures::stream::once(async { header }).chain(pieces.map(|piece| UpdateArtifactRequest {
                    message: Some(match piece {
                        Piece::Data(data) => update_artifact_request::Message::Data(data),
                        Piece::Finish(finish) => update_artifact_request::Message::Finish(finish),
                    }),
                }));
            let updated = session
                .artifacts()
                .update_artifact(session.request(messages))
                .await
                .map(|answer| answer.into_inner());
            updated.map(|updated| {
                (
                    updated.artifact.unwrap_or_default(),
                    updated.version.unwrap_or_default(),
                )
            })
        }
    };
    progress.finish();
    // A read that failed ended the upload without its finish message: the server's refusal
    // of that is not the news, the read error is.
    if let Some(error) = failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(failure(1, error));
    }
    let (artifact, stored) = outcome?;
    let seconds = started.elapsed().as_secs_f64();
    session.print(
        json!({ "artifact": artifact_json(&artifact), "version": version_json(&stored), "seconds": seconds }),
        || {
            format!(
                "{} {} {}: {} bytes in {:.2} s; the server stored {} new bytes after dedup and compression",
                artifact.id, artifact.name, stored.version, stored.size, seconds, stored.new_stored_size
            )
        },
    );
    Ok(())
}

/// Appends what `partial` lacks of `version` (from byte `resumed_from`); returns the blake3
/// of the whole file (taken as the bytes arrive, after that of the part already there) and
/// its length.
async fn fetch_to_partial(
    session: &Session,
    artifact: &proto::Artifact,
    version: &proto::ArtifactVersion,
    partial: &Path,
    resumed_from: u64,
) -> Result<(String, u64), Failure> {
    let progress = ProgressLine::new();
    let failed = |e: std::io::Error| failure(1, format!("{}: {e}", partial.display()));
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(partial)
        .map_err(failed)?;
    let mut hasher = blake3::Hasher::new();
    if resumed_from > 0 {
        let earlier = std::fs::File::open(partial).map_err(failed)?;
        hasher.update_reader(earlier.take(resumed_from)).map_err(failed)?;
    }
    let mut written = resumed_from;
    if resumed_from < version.size {
        let (tenant, project) = session.scope();
        let mut stream = session
            .artifacts()
            .download_artifact(session.request(DownloadArtifactRequest {
                tenant,
                project,
                artifact_id: artifact.id.clone(),
                version: version.version.clone(),
                offset: resumed_from,
                length: 0,
            }))
            .await?
            .into_inner();
        while let Some(message) = stream.message().await? {
            if let Some(download_artifact_response::Message::Data(data)) = message.message {
                file.write_all(&data).map_err(failed)?;
                hasher.update(&data);
                written += data.len() as u64;
                progress.update(written, version.size);
            }
        }
    }
    file.sync_all().map_err(failed)?;
    progress.finish();
    Ok((hasher.finalize().to_hex().to_string(), written))
}

/// Opens `partial` (made when missing) with an exclusive lock: two pulls into one path would
/// otherwise append to the same part. A pull that finds the part locked stops at once
/// (exit code 5) and leaves it alone. A part renamed or removed by the pull that held it,
/// between this one opening and locking it, is not the file at that path any more: it is
/// let go and the path opened again.
fn lock_partial(partial: &Path, target: &Path) -> Result<std::fs::File, Failure> {
    let failed = |e: std::io::Error| failure(1, format!("{}: {e}", partial.display()));
    loop {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(partial)
            .map_err(failed)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(failure(
                    5,
                    format!(
                        "{}: another pull into this path is running (it holds {}); \
                         try again when it has finished",
                        target.display(),
                        partial.display()
                    ),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(failed(e)),
        }
        if still_at(&file, partial) {
            return Ok(file);
        }
    }
}

/// Whether `file` is still the file at `path`.
#[cfg(unix)]
fn still_at(file: &std::fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(held), Ok(named)) => held.dev() == named.dev() && held.ino() == named.ino(),
        _ => false,
    }
}

/// Whether `file` is still the file at `path`: without inode numbers to compare, whether
/// there is one.
#[cfg(not(unix))]
fn still_at(_file: &std::fs::File, path: &Path) -> bool {
    path.exists()
}

async fn pull(
    session: &Session,
    artifact: &str,
    version: &str,
    output: Option<PathBuf>,
) -> Result<(), Failure> {
    let found = session.find(artifact, version).await?;
    let (artifact, version) = (
        found.artifact.unwrap_or_default(),
        found.version.unwrap_or_default(),
    );
    let target = match output {
        Some(output) => output,
        // The name becomes a relative path: only one that keeps to the name rules (no '..',
        // no leading '/'), whatever the server sent.
        None => {
            crate::domain::names::validate_artifact_name(&artifact.name).map_err(|e| {
                failure(
                    1,
                    format!("the artifact's name cannot be a file path: {e}; use --output"),
                )
            })?;
            PathBuf::from(&artifact.name)
        }
    };
    let partial = target.with_file_name(format!(
        "{}.part",
        target.file_name().and_then(|n| n.to_str()).unwrap_or("download")
    ));
    // A path name ("docs/stories/1.1.story.md") lands in its folders, made when missing.
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| failure(1, format!("{}: {e}", parent.display())))?;
    }
    let failed = |e: std::io::Error| failure(1, format!("{}: {e}", partial.display()));
    // Held until the part has its final name or is removed. The part is emptied, never
    // removed, while the pull goes on: a file made anew in its place would not be locked.
    let part = lock_partial(&partial, &target)?;
    let mut resumed_from = part.metadata().map_err(failed)?.len();
    if resumed_from > version.size {
        resumed_from = 0;
        part.set_len(0).map_err(failed)?;
    }
    let (mut digest, written) =
        fetch_to_partial(session, &artifact, &version, &partial, resumed_from).await?;
    if digest != version.blake3 && resumed_from > 0 && written == version.size {
        // Whole yet wrong after a resume: the part an earlier pull left was of other content
        // (another version under this name, or a file damaged since), so this version is
        // fetched whole instead.
        part.set_len(0).map_err(failed)?;
        eprintln!(
            "{}: the part left by an earlier pull does not belong to version {}; downloading it whole",
            partial.display(),
            version.version
        );
        resumed_from = 0;
        digest = fetch_to_partial(session, &artifact, &version, &partial, 0)
            .await?
            .0;
    }
    if digest != version.blake3 {
        let _ = std::fs::remove_file(&partial);
        return Err(failure(
            7,
            format!(
                "{}: the download hashes to {digest}, version {} has {}; the partial file was removed",
                target.display(),
                version.version,
                version.blake3
            ),
        ));
    }
    std::fs::rename(&partial, &target).map_err(|e| failure(1, format!("{}: {e}", target.display())))?;
    drop(part);
    session.print(
        json!({ "path": target.display().to_string(), "version": version.version, "size": version.size,
                "blake3": version.blake3, "resumed_from": resumed_from }),
        || {
            format!(
                "{} ({} bytes, version {}, verified){}",
                target.display(),
                version.size,
                version.version,
                if resumed_from > 0 {
                    format!(", resumed at byte {resumed_from}")
                } else {
                    String::new()
                }
            )
        },
    );
    Ok(())
}

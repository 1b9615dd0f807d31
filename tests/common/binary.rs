//! The built `artifactd` binary as a child process, configured through its environment.

use artifactd::proto::artifact_service_client::ArtifactServiceClient;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::LazyLock;
use std::time::Duration;
use tonic::transport::Channel;

/// The server admin key every test server is given (through `identity.admin_key_file`),
/// unless a test asks for the first-start key instead.
pub static ADMIN_KEY: LazyLock<String> = LazyLock::new(|| {
    artifactd::domain::access::ApiKeySecret::generate()
        .expose()
        .to_owned()
});

/// Sends a credential with every call.
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Bearer {
    pub fn new(credential: &str) -> Self {
        Self(Some(
            format!("Bearer {credential}")
                .parse()
                .expect("an ASCII credential"),
        ))
    }

    pub fn none() -> Self {
        Self(None)
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A channel whose calls carry a credential.
pub type Authed = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

/// Variables of the test process that would change the child's configuration.
const INHERITED_SETTINGS: &[&str] = &[
    "DATABASE_URL",
    "S3_ENDPOINT_URL",
    "S3_BUCKET_NAME",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_REGION",
];

pub struct ServerProcess {
    child: Option<Child>,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    /// The download links' own listener, when one is configured.
    pub links: Option<SocketAddr>,
    pub data_dir: PathBuf,
    /// The credential [`Self::channel`] sends.
    pub key: String,
    _temp: Option<tempfile::TempDir>,
    log_path: PathBuf,
}

#[derive(Default, Clone)]
pub struct ServerOptions {
    pub env: Vec<(String, String)>,
    /// Reuse a data directory (to restart over the same data); a fresh one when `None`.
    pub data_dir: Option<PathBuf>,
    pub config_file: Option<PathBuf>,
    /// Start without the test admin key, as a fresh installation does.
    pub no_admin_key: bool,
}

impl ServerOptions {
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.to_owned(), value.into()));
        self
    }

    pub fn envs(mut self, pairs: Vec<(String, String)>) -> Self {
        self.env.extend(pairs);
        self
    }
}

/// A server on the embedded SQLite catalog, or on a fresh Postgres database (kept alive by
/// the returned value), for tests that run on both catalogs.
pub async fn start_on_catalog(postgres: bool) -> (ServerProcess, Option<super::postgres::TestDatabase>) {
    start_on_catalog_with(postgres, &[]).await
}

/// [`start_on_catalog`] with settings of the test's own.
pub async fn start_on_catalog_with(
    postgres: bool,
    settings: &[(&str, &str)],
) -> (ServerProcess, Option<super::postgres::TestDatabase>) {
    let database = if postgres {
        Some(super::postgres::TestDatabase::create().await)
    } else {
        None
    };
    let mut options = ServerOptions::default();
    if let Some(database) = &database {
        options = options.env("DATABASE_URL", database.url.clone());
    }
    for (key, value) in settings {
        options = options.env(key, *value);
    }
    (ServerProcess::start_with(options), database)
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_artifactd")
}

/// A command for the binary with a clean configuration environment.
pub fn command() -> Command {
    let mut command = Command::new(binary());
    for (name, _) in std::env::vars() {
        if name.starts_with("ARTIFACTD_") || INHERITED_SETTINGS.contains(&name.as_str()) {
            command.env_remove(&name);
        }
    }
    command
}

impl ServerProcess {
    pub fn start() -> Self {
        Self::start_with(ServerOptions::default())
    }

    pub fn start_with(options: ServerOptions) -> Self {
        let (temp, data_dir) = match options.data_dir {
            Some(dir) => (None, dir),
            None => {
                let temp = tempfile::tempdir().expect("temp data dir");
                let dir = temp.path().to_owned();
                (Some(temp), dir)
            }
        };
        std::fs::create_dir_all(&data_dir).unwrap();
        let log_path = data_dir.join(format!("server-{}.log", uuid::Uuid::now_v7().simple()));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut command = command();
        command
            .arg("serve")
            .env("ARTIFACTD_DATA_DIR", &data_dir)
            .env("ARTIFACTD_SERVER__GRPC_ADDR", "127.0.0.1:0")
            .env("ARTIFACTD_SERVER__HTTP_ADDR", "127.0.0.1:0")
            .env("ARTIFACTD_SERVER__HEALTH_CHECK_INTERVAL_MS", "200")
            .env("ARTIFACTD_LOG__FILTER", "info")
            .stdout(Stdio::piped())
            .stderr(log);
        if let Some(file) = &options.config_file {
            command.env("ARTIFACTD_CONFIG", file);
        }
        if !options.no_admin_key {
            let key_file = data_dir.join(format!("test-admin-{}.key", uuid::Uuid::now_v7().simple()));
            std::fs::write(&key_file, ADMIN_KEY.as_str()).unwrap();
            command.env("ARTIFACTD_IDENTITY__ADMIN_KEY_FILE", &key_file);
        }
        for (key, value) in &options.env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("starting artifactd");
        let stdout = child.stdout.take().unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = sender.send(line);
            }
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match receiver.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "artifactd did not report ready; its log:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
        };
        let addr_of = |label: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|part| part.strip_prefix(label))
                .and_then(|addr| addr.parse().ok())
                .unwrap_or_else(|| panic!("unexpected ready line {line:?}"))
        };
        let key = if options.no_admin_key {
            std::fs::read_to_string(data_dir.join("admin.key"))
                .map(|key| key.trim().to_owned())
                .unwrap_or_default()
        } else {
            ADMIN_KEY.clone()
        };
        let links = line
            .split_whitespace()
            .find_map(|part| part.strip_prefix("links="))
            .map(|addr| addr.parse().expect("the links listener's address"));
        Self {
            grpc: addr_of("grpc="),
            http: addr_of("http="),
            links,
            child: Some(child),
            key,
            data_dir,
            _temp: temp,
            log_path,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// A connection whose calls carry the server's admin key.
    pub async fn channel(&self) -> Authed {
        self.channel_as(&self.key).await
    }

    /// A connection whose calls carry `credential`.
    pub async fn channel_as(&self, credential: &str) -> Authed {
        Authed::new(self.raw_channel().await, Bearer::new(credential))
    }

    /// A connection whose calls carry no credential.
    pub async fn raw_channel(&self) -> Channel {
        Channel::from_shared(self.endpoint())
            .unwrap()
            // Room for several download messages in flight: HTTP/2's default 64 KiB window
            // makes every download wait for window updates.
            .initial_stream_window_size(8 * 1024 * 1024)
            .initial_connection_window_size(32 * 1024 * 1024)
            .connect()
            .await
            .expect("connecting to artifactd")
    }

    pub async fn client(&self) -> ArtifactServiceClient<Authed> {
        ArtifactServiceClient::new(self.channel().await)
            .max_decoding_message_size(16 * 1024 * 1024)
            .max_encoding_message_size(16 * 1024 * 1024)
    }

    /// Waits until the health service reports `wanted` for `service` ("" is the server).
    pub async fn wait_for_health(
        &self,
        service: &str,
        wanted: tonic_health::pb::health_check_response::ServingStatus,
    ) {
        let mut health = tonic_health::pb::health_client::HealthClient::new(self.channel().await);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let status = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .map(|r| r.into_inner().status());
            if status.as_ref().ok() == Some(&wanted) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{service:?} never became {wanted:?}; last {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends SIGTERM.
    pub fn signal_terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success());
    }

    /// Waits for the process to exit, failing after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("artifactd did not exit within {limit:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn terminate(&mut self) -> ExitStatus {
        self.signal_terminate();
        self.wait_exit(Duration::from_secs(30))
    }

    /// Kills the process without letting it shut down.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Bytes of all files under the filesystem store's root.
    pub fn fs_store_bytes(&self) -> u64 {
        fn walk(dir: &Path) -> u64 {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return 0;
            };
            entries
                .flatten()
                .map(|entry| {
                    let path = entry.path();
                    if path.is_dir() {
                        walk(&path)
                    } else {
                        entry.metadata().map(|m| m.len()).unwrap_or(0)
                    }
                })
                .sum()
        }
        walk(&self.data_dir.join("blobs"))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

//! moto's S3 server, an independent S3 implementation, run as a child process.

use artifactd::storage::{S3Store, S3StoreConfig};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct MotoServer {
    child: Child,
    port: u16,
}

impl MotoServer {
    pub async fn start() -> Self {
        let binary = super::venv_tool("moto_server", "ARTIFACTD_TEST_MOTO_SERVER");
        let port = super::free_port();
        let child = Command::new(&binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let server = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen on port {port} within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn store_config(&self, bucket: &str) -> S3StoreConfig {
        let mut config = S3StoreConfig::new(bucket);
        config.endpoint_url = Some(self.endpoint());
        config.access_key_id = Some("moto".into());
        config.secret_access_key = Some(artifactd::domain::Secret::new("moto-secret"));
        config
    }

    pub async fn store(&self, bucket: &str) -> S3Store {
        let store = S3Store::new(self.store_config(bucket));
        store.ensure_bucket().await.expect("creating the moto bucket");
        store
    }

    pub fn env(&self, bucket: &str) -> Vec<(String, String)> {
        vec![
            ("S3_ENDPOINT_URL".into(), self.endpoint()),
            ("S3_BUCKET_NAME".into(), bucket.into()),
            ("AWS_ACCESS_KEY_ID".into(), "moto".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "moto-secret".into()),
            ("ARTIFACTD_STORAGE__S3__CREATE_BUCKET".into(), "true".into()),
        ]
    }
}

impl MotoServer {
    /// Environment making moto artifactd's fallback store.
    pub fn fallback_env(&self, bucket: &str) -> Vec<(String, String)> {
        vec![
            ("S3_FALLBACK_ENABLED".into(), "true".into()),
            ("S3_FALLBACK_ENDPOINT_URL".into(), self.endpoint()),
            ("S3_FALLBACK_BUCKET_NAME".into(), bucket.into()),
            ("S3_FALLBACK_ACCESS_KEY_ID".into(), "moto".into()),
            ("S3_FALLBACK_SECRET_ACCESS_KEY".into(), "moto-secret".into()),
            (
                "ARTIFACTD_STORAGE__FALLBACK__S3__CREATE_BUCKET".into(),
                "true".into(),
            ),
        ]
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

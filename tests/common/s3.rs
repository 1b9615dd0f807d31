//! An in-process S3 server (s3s over s3s-fs) that a test can stop and restart at any moment.

use artifactd::storage::{S3Store, S3StoreConfig};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

pub const ACCESS_KEY: &str = "artifactd-test";
pub const SECRET_KEY: &str = "artifactd-test-secret";

pub struct S3TestServer {
    _root: tempfile::TempDir,
    root: PathBuf,
    addr: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl S3TestServer {
    pub async fn start() -> Self {
        let root = tempfile::tempdir().expect("temp dir for the S3 server");
        let path = root.path().to_owned();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the S3 server");
        let addr = listener.local_addr().unwrap();
        let mut server = Self {
            _root: root,
            root: path,
            addr,
            task: None,
        };
        server.serve(listener);
        server
    }

    fn serve(&mut self, listener: TcpListener) {
        let fs = s3s_fs::FileSystem::new(&self.root).expect("s3s-fs root");
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        self.task = Some(tokio::spawn(async move {
            // Connections live in this set: aborting the task drops them all at once, like a
            // crashed server.
            let mut connections = JoinSet::new();
            let http = ConnBuilder::new(TokioExecutor::new());
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let connection = http
                    .serve_connection(TokioIo::new(socket), service.clone())
                    .into_owned();
                connections.spawn(async move {
                    let _ = connection.await;
                });
                while connections.try_join_next().is_some() {}
            }
        }));
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn is_running(&self) -> bool {
        self.task.is_some()
    }

    /// Stops abruptly: the listener closes and open connections are cut.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Starts again on the same address with the same data.
    pub async fn restart(&mut self) {
        self.stop().await;
        let mut attempts = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(error) if attempts < 50 => {
                    attempts += 1;
                    let _ = error;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(error) => panic!("rebinding the S3 server on {}: {error}", self.addr),
            }
        };
        self.serve(listener);
    }

    /// Freezes like a SIGSTOPped server: connections are accepted by the kernel but nothing
    /// answers. `restart` brings it back with its data.
    pub async fn stall(&mut self) {
        self.stop().await;
        let listener = TcpListener::bind(self.addr).await.expect("rebinding to stall");
        self.task = Some(tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        }));
    }

    /// Stops, deletes every bucket and object, and starts again empty (a replaced server).
    pub async fn wipe_and_restart(&mut self) {
        self.stop().await;
        for entry in std::fs::read_dir(&self.root).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path).unwrap();
            } else {
                std::fs::remove_file(&path).unwrap();
            }
        }
        self.restart().await;
    }

    /// Environment making this server artifactd's fallback store.
    pub fn fallback_env(&self, bucket: &str) -> Vec<(String, String)> {
        vec![
            ("S3_FALLBACK_ENABLED".into(), "true".into()),
            ("S3_FALLBACK_ENDPOINT_URL".into(), self.endpoint()),
            ("S3_FALLBACK_BUCKET_NAME".into(), bucket.into()),
            ("S3_FALLBACK_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
            ("S3_FALLBACK_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
            (
                "ARTIFACTD_STORAGE__FALLBACK__S3__CREATE_BUCKET".into(),
                "true".into(),
            ),
        ]
    }

    pub fn store_config(&self, bucket: &str) -> S3StoreConfig {
        let mut config = S3StoreConfig::new(bucket);
        config.endpoint_url = Some(self.endpoint());
        config.access_key_id = Some(ACCESS_KEY.to_owned());
        config.secret_access_key = Some(artifactd::domain::Secret::new(SECRET_KEY));
        config.request_timeout = std::time::Duration::from_secs(10);
        config
    }

    pub async fn store(&self, bucket: &str) -> S3Store {
        let store = S3Store::new(self.store_config(bucket));
        store.ensure_bucket().await.expect("creating the test bucket");
        store
    }

    /// Environment for an artifactd process using this server as its store.
    pub fn env(&self, bucket: &str) -> Vec<(String, String)> {
        vec![
            ("S3_ENDPOINT_URL".into(), self.endpoint()),
            ("S3_BUCKET_NAME".into(), bucket.into()),
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("ARTIFACTD_STORAGE__S3__CREATE_BUCKET".into(), "true".into()),
        ]
    }
}

impl Drop for S3TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

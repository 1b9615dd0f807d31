//! Background work under one supervisor: every job gets the shared shutdown token, and
//! shutdown waits for all of them (bounded) in a known order.

mod health;

pub use health::{HealthMonitor, SERVICE_NAMES};

use std::future::Future;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub struct Supervisor {
    shutdown: CancellationToken,
    jobs: JoinSet<()>,
}

impl Supervisor {
    pub fn new(shutdown: CancellationToken) -> Self {
        Self {
            shutdown,
            jobs: JoinSet::new(),
        }
    }

    /// Starts a named job. The job must return soon after the token is cancelled.
    pub fn spawn<F, Fut>(&mut self, name: &'static str, job: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let future = job(self.shutdown.child_token());
        self.jobs.spawn(async move {
            future.await;
            tracing::debug!(job = name, "background job stopped");
        });
    }

    /// Cancels every job and waits up to `grace` for them to finish.
    pub async fn shutdown(mut self, grace: Duration) {
        self.shutdown.cancel();
        let drained =
            tokio::time::timeout(grace, async { while self.jobs.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!("background jobs did not stop in time; aborting them");
            self.jobs.abort_all();
        }
    }
}

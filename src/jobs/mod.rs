//! Background work under one supervisor. Every job gets the shared shutdown token and is a
//! factory of futures, so that the supervisor can run it again: a job that panics, fails or
//! ends while nobody asked it to stop is logged with its cause, counted
//! (`artifactd_job_restarts_total{job}`) and restarted with a backoff that doubles up to
//! [`RESTART_BACKOFF_MAX`]. Each job's state is on the [`JobBoard`], which health reporting
//! and the status call read. Shutdown waits for all of them (bounded).

mod fallback_sync;
mod health;
mod indexer;
mod outbox;
mod retention;
mod stats;
mod storage;

pub use fallback_sync::{FallbackSync, SyncProgress, SyncRequest};
pub use health::{
    ARTIFACT_SERVICE, FALLBACK_SERVICE, HealthInputs, HealthMonitor, HealthReport, INDEXER_JOB, LastHealth,
    SEARCH_SERVICE, SERVICE_NAMES,
};
pub use indexer::run_indexer;
pub use outbox::run_outbox_pruner;
pub use retention::{run_backup_scheduler, run_collector, run_policy_scheduler, run_trash_purger};
pub use stats::run_storage_stats;
pub use storage::{run_prober, run_reconciler, run_replicator};

use crate::domain::now_micros;
use crate::telemetry::names;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// What a job's run ends with: `Ok` only when it stopped because shutdown was asked for.
pub type JobResult = Result<(), String>;

pub const RESTART_BACKOFF_INITIAL: Duration = Duration::from_millis(100);
pub const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A run that lasted this long was healthy: the next failure starts the backoff afresh.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Running,
    /// It failed and waits for its restart.
    Restarting,
    Stopped,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Restarting => "restarting",
            JobState::Stopped => "stopped",
        }
    }
}

/// One job as the board shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobStatus {
    pub name: &'static str,
    pub state: JobState,
    pub restarts: u64,
    pub last_error: Option<String>,
    /// When the current state began (µs since the epoch).
    pub since: i64,
}

/// The state of every job. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct JobBoard {
    jobs: Arc<Mutex<BTreeMap<&'static str, JobStatus>>>,
}

impl JobBoard {
    pub fn snapshot(&self) -> Vec<JobStatus> {
        self.jobs
            .lock()
            .expect("job board lock")
            .values()
            .cloned()
            .collect()
    }

    /// The state of a job; `None` for one that was never started.
    pub fn state(&self, name: &str) -> Option<JobState> {
        self.jobs
            .lock()
            .expect("job board lock")
            .get(name)
            .map(|job| job.state)
    }

    fn set(&self, name: &'static str, state: JobState, error: Option<String>) {
        let mut jobs = self.jobs.lock().expect("job board lock");
        let job = jobs.entry(name).or_insert(JobStatus {
            name,
            state,
            restarts: 0,
            last_error: None,
            since: now_micros(),
        });
        if state == JobState::Restarting {
            job.restarts += 1;
        }
        if error.is_some() {
            job.last_error = error;
        }
        if job.state != state {
            job.since = now_micros();
        }
        job.state = state;
        metrics::gauge!(names::JOB_RUNNING, "job" => name)
            .set(f64::from(u8::from(state == JobState::Running)));
    }
}

pub struct Supervisor {
    shutdown: CancellationToken,
    jobs: JoinSet<()>,
    board: JobBoard,
}

/// The message of a panic, as far as it has one.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

impl Supervisor {
    pub fn new(shutdown: CancellationToken) -> Self {
        Self {
            shutdown,
            jobs: JoinSet::new(),
            board: JobBoard::default(),
        }
    }

    pub fn board(&self) -> JobBoard {
        self.board.clone()
    }

    /// Starts a named job; `job` is called again for every restart. A run must return soon
    /// after its token is cancelled.
    pub fn spawn<F, Fut>(&mut self, name: &'static str, job: F)
    where
        F: Fn(CancellationToken) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = JobResult> + Send + 'static,
    {
        let shutdown = self.shutdown.child_token();
        let board = self.board.clone();
        self.jobs.spawn(async move {
            let mut backoff = RESTART_BACKOFF_INITIAL;
            loop {
                board.set(name, JobState::Running, None);
                let started = Instant::now();
                let run = tokio::spawn(job(shutdown.clone()));
                // Aborting the supervising loop also ends the run it is waiting for.
                let _abort_with_supervisor = tokio_util::task::AbortOnDrop::new(run.abort_handle());
                let outcome = run.await;
                if shutdown.is_cancelled() {
                    board.set(name, JobState::Stopped, None);
                    tracing::debug!(job = name, "background job stopped");
                    return;
                }
                let cause = match outcome {
                    Ok(Ok(())) => "it returned although nobody asked it to stop".to_owned(),
                    Ok(Err(error)) => error,
                    Err(join) if join.is_panic() => format!("it panicked: {}", panic_message(join.into_panic())),
                    Err(join) => format!("it was cancelled: {join}"),
                };
                if started.elapsed() >= HEALTHY_RUN {
                    backoff = RESTART_BACKOFF_INITIAL;
                }
                tracing::error!(job = name, %cause, restart_in_ms = backoff.as_millis() as u64, "background job failed; restarting it");
                metrics::counter!(names::JOB_RESTARTS_TOTAL, "job" => name).increment(1);
                board.set(name, JobState::Restarting, Some(cause));
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        board.set(name, JobState::Stopped, None);
                        return;
                    }
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn a_job_that_panics_or_fails_is_restarted_and_its_state_shown() {
        let runs = Arc::new(AtomicU32::new(0));
        let mut supervisor = Supervisor::new(CancellationToken::new());
        let board = supervisor.board();
        let counter = runs.clone();
        supervisor.spawn("flaky", move |shutdown| {
            let run = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                match run {
                    0 => panic!("first run explodes"),
                    1 => Err("second run fails".to_owned()),
                    _ => {
                        shutdown.cancelled().await;
                        Ok(())
                    }
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while runs.load(Ordering::SeqCst) < 3 {
            assert!(Instant::now() < deadline, "the job was not restarted twice");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let status = board
            .snapshot()
            .into_iter()
            .find(|job| job.name == "flaky")
            .unwrap();
        assert_eq!(status.state, JobState::Running);
        assert_eq!(status.restarts, 2);
        assert_eq!(status.last_error.as_deref(), Some("second run fails"));
        supervisor.shutdown(Duration::from_secs(1)).await;
        assert_eq!(board.state("flaky"), Some(JobState::Stopped));
        assert_eq!(runs.load(Ordering::SeqCst), 3, "no restart after shutdown");
    }

    #[tokio::test]
    async fn a_panic_message_is_kept_as_the_cause() {
        let mut supervisor = Supervisor::new(CancellationToken::new());
        let board = supervisor.board();
        supervisor.spawn("doomed", |_| async { panic!("the index is on fire") });
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let status = board.snapshot().into_iter().find(|job| job.name == "doomed");
            if let Some(JobStatus {
                last_error: Some(error),
                ..
            }) = status
            {
                assert!(error.contains("the index is on fire"), "{error}");
                break;
            }
            assert!(Instant::now() < deadline, "the panic was not recorded");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        supervisor.shutdown(Duration::from_secs(1)).await;
    }
}

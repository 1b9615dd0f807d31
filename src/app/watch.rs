//! The change stream: a project's outbox events, in commit order, from a cursor, to one
//! watcher. A task per watcher reads the catalog and hands events to a bounded buffer; a
//! watcher that leaves the buffer full for too long is cut off (RESOURCE_EXHAUSTED) rather
//! than letting the server hold more for it.

use super::{Artifacts, validate_scope};
use crate::domain::event::{ChangeEvent, EventKind};
use crate::domain::{Error, Result, Scope, Timestamp};
use futures::Stream;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Events read from the catalog at once.
const READ_BATCH: u32 = 500;

/// The change stream's and the outbox's settings; also the `[events]` configuration section.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventSettings {
    /// An idle stream gets a heartbeat this often.
    #[serde(rename = "heartbeat_ms", with = "crate::domain::millis")]
    pub heartbeat: Duration,
    /// How often an idle stream looks for events other replicas committed (this replica's
    /// own commits wake it at once).
    #[serde(rename = "poll_ms", with = "crate::domain::millis")]
    pub poll: Duration,
    /// Events a stream may hold for a watcher that is not reading.
    pub buffer_events: usize,
    /// How long a full buffer is tolerated before the watcher is cut off.
    #[serde(rename = "slow_consumer_ms", with = "crate::domain::millis")]
    pub slow_consumer: Duration,
    /// Events are kept at least this long (and until every live replica's index has them).
    pub retention_seconds: u64,
    #[serde(rename = "prune_interval_ms", with = "crate::domain::millis")]
    pub prune_interval: Duration,
    /// A replica that has not recorded its index position for this long no longer holds
    /// pruning back.
    pub replica_liveness_seconds: u64,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(15),
            poll: Duration::from_millis(250),
            buffer_events: 256,
            slow_consumer: Duration::from_secs(30),
            retention_seconds: 7 * 24 * 3600,
            prune_interval: Duration::from_secs(600),
            replica_liveness_seconds: 600,
        }
    }
}

/// Where a stream starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartAt {
    /// Only events committed from now on.
    Now,
    /// The oldest event retained.
    Oldest,
    /// After a cursor a previous stream gave.
    After(String),
}

/// Which events a watcher wants; empty sets admit everything.
#[derive(Debug, Clone, Default)]
pub struct WatchFilter {
    pub artifact_types: HashSet<String>,
    pub names: HashSet<String>,
    pub kinds: HashSet<EventKind>,
}

impl WatchFilter {
    fn admits(&self, event: &ChangeEvent) -> bool {
        (self.artifact_types.is_empty() || self.artifact_types.contains(&event.artifact_type))
            && (self.names.is_empty() || self.names.contains(&event.name))
            && (self.kinds.is_empty() || self.kinds.contains(&event.kind))
    }
}

/// What a stream carries.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchItem {
    Event(ChangeEvent),
    /// Nothing the watcher wants happened up to this cursor.
    Heartbeat {
        cursor: String,
        at: Timestamp,
    },
}

/// Cursors are outbox positions, as text so that clients treat them as opaque.
pub fn cursor_of(position: i64) -> String {
    position.to_string()
}

fn parse_cursor(text: &str) -> Result<i64> {
    text.parse::<i64>()
        .ok()
        .filter(|position| *position >= 0)
        .ok_or_else(|| {
            Error::invalid(
                "after_cursor",
                format!("{text:?} is not a cursor this service gave"),
            )
        })
}

impl Artifacts {
    /// Opens a change stream. Checks the start before any event flows: a cursor older than
    /// the retained history, or newer than the newest event, is OUT_OF_RANGE naming the
    /// range there is.
    pub async fn watch(
        &self,
        scope: Scope,
        start: StartAt,
        filter: WatchFilter,
        shutdown: CancellationToken,
    ) -> Result<impl Stream<Item = Result<WatchItem>> + Send + 'static> {
        validate_scope(&scope)?;
        let catalog = self.inner.catalog.clone();
        // Subscribed before the start is read, so no commit after it goes unnoticed.
        let commits = catalog.subscribe_commits();
        let range = catalog.outbox_range().await?;
        let position = match start {
            StartAt::Now => range.newest,
            StartAt::Oldest => range.pruned_through,
            StartAt::After(text) => {
                let cursor = parse_cursor(&text)?;
                if cursor < range.pruned_through {
                    return Err(Error::OutOfRange(format!(
                        "after_cursor: {cursor} is older than the retained history; the oldest cursor available is {}",
                        range.pruned_through
                    )));
                }
                if cursor > range.newest {
                    return Err(Error::OutOfRange(format!(
                        "after_cursor: {cursor} is newer than the newest event ({}); it did not come from this catalog",
                        range.newest
                    )));
                }
                cursor
            }
        };
        let settings = self.inner.settings.events.clone();
        let (sender, receiver) = mpsc::channel(settings.buffer_events.max(1));
        let cut_off: Arc<Mutex<Option<Error>>> = Arc::default();
        let feeder = Feeder {
            catalog,
            scope,
            filter,
            settings,
            sender,
            cut_off: cut_off.clone(),
            position,
            shutdown,
        };
        tokio::spawn(feeder.run(commits));
        Ok(futures::stream::unfold(
            (receiver, cut_off, false),
            |(mut receiver, cut_off, ended)| async move {
                if ended {
                    return None;
                }
                // A cut-off overtakes what is still buffered: the watcher resumes from the
                // last event it received.
                let cut = cut_off.lock().expect("cut-off lock").take();
                if let Some(error) = cut {
                    return Some((Err(error), (receiver, cut_off, true)));
                }
                let Some(item) = receiver.recv().await else {
                    // The feeder stopped while this side waited: say why, if it said.
                    let cut = cut_off.lock().expect("cut-off lock").take();
                    return cut.map(|error| (Err(error), (receiver, cut_off, true)));
                };
                let ended = item.is_err();
                Some((item, (receiver, cut_off, ended)))
            },
        ))
    }
}

/// Reads one watcher's events and hands them on.
struct Feeder {
    catalog: crate::catalog::Catalog,
    scope: Scope,
    filter: WatchFilter,
    settings: EventSettings,
    sender: mpsc::Sender<Result<WatchItem>>,
    cut_off: Arc<Mutex<Option<Error>>>,
    /// Everything up to here has been handed on or filtered out.
    position: i64,
    shutdown: CancellationToken,
}

/// Why a feeder stops.
enum Stop {
    /// The watcher went away, or was cut off.
    Gone,
}

impl Feeder {
    async fn run(self, commits: tokio::sync::watch::Receiver<u64>) {
        let streams = metrics::gauge!(crate::telemetry::names::WATCH_STREAMS);
        streams.increment(1.0);
        self.feed(commits).await;
        streams.decrement(1.0);
    }

    async fn feed(mut self, mut commits: tokio::sync::watch::Receiver<u64>) {
        let shutdown = self.shutdown.clone();
        let mut last_sent = Instant::now();
        loop {
            if shutdown.is_cancelled() {
                self.end_for_shutdown();
                return;
            }
            let batch = match self.read().await {
                Ok(batch) => batch,
                Err(error) => {
                    let _ = self.hand_on(Err(error)).await;
                    return;
                }
            };
            for event in batch.events {
                let position = event.position;
                if self.filter.admits(&event) {
                    if self.hand_on(Ok(WatchItem::Event(event))).await.is_err() {
                        return;
                    }
                    metrics::counter!(crate::telemetry::names::WATCH_EVENTS_SENT_TOTAL).increment(1);
                    last_sent = Instant::now();
                }
                self.position = position;
            }
            self.position = self.position.max(batch.scanned_to);
            if batch.full {
                continue;
            }
            let heartbeat_due = last_sent + self.settings.heartbeat;
            if Instant::now() >= heartbeat_due {
                let heartbeat = WatchItem::Heartbeat {
                    cursor: cursor_of(self.position),
                    at: Timestamp::now(),
                };
                if self.hand_on(Ok(heartbeat)).await.is_err() {
                    return;
                }
                last_sent = Instant::now();
                continue;
            }
            let wake = (Instant::now() + self.settings.poll).min(heartbeat_due);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = self.sender.closed() => return,
                _ = commits.changed() => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// The next events, or OUT_OF_RANGE when pruning passed this stream's position (the read
    /// may then have skipped events: never a silent gap).
    async fn read(&self) -> Result<crate::catalog::EventBatch> {
        let batch = self
            .catalog
            .events_after(&self.scope, self.position, READ_BATCH)
            .await?;
        let range = self.catalog.outbox_range().await?;
        if range.pruned_through > self.position {
            return Err(Error::OutOfRange(format!(
                "the history after cursor {} was pruned while this stream read it; the oldest cursor available is {}",
                self.position, range.pruned_through
            )));
        }
        Ok(batch)
    }

    /// Ends the stream ahead of anything still buffered: the server is going away.
    fn end_for_shutdown(&self) {
        *self.cut_off.lock().expect("cut-off lock") = Some(Error::Unavailable(
            "the server is shutting down; resume after the last cursor received".to_owned(),
        ));
    }

    /// Hands an item to the watcher, waiting while its buffer is full for at most the slow
    /// consumer limit; past that the watcher is cut off. Shutdown ends the wait.
    async fn hand_on(&self, item: Result<WatchItem>) -> std::result::Result<(), Stop> {
        let sent = tokio::select! {
            sent = tokio::time::timeout(self.settings.slow_consumer, self.sender.send(item)) => sent,
            _ = self.shutdown.cancelled() => {
                self.end_for_shutdown();
                return Err(Stop::Gone);
            }
        };
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Stop::Gone),
            Err(_) => {
                metrics::counter!(crate::telemetry::names::WATCH_CUT_OFF_TOTAL).increment(1);
                *self.cut_off.lock().expect("cut-off lock") = Some(Error::ResourceExhausted(format!(
                    "this stream was {} events behind for {:?}; resume after the last cursor received",
                    self.settings.buffer_events, self.settings.slow_consumer
                )));
                Err(Stop::Gone)
            }
        }
    }
}

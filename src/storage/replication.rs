//! The durable replication log that `FailoverStore` writes to and its replicator drains.
//! It is a trait so that the storage core stays free of SQL: the catalog implements it.

use crate::domain::Result;
use async_trait::async_trait;
use std::fmt;

/// One of the two sides of a failover pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Primary,
    Fallback,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Primary => "primary",
            Side::Fallback => "fallback",
        }
    }

    pub fn other(self) -> Side {
        match self {
            Side::Primary => Side::Fallback,
            Side::Fallback => Side::Primary,
        }
    }

    pub fn parse(text: &str) -> Option<Side> {
        match text {
            "primary" => Some(Side::Primary),
            "fallback" => Some(Side::Fallback),
            _ => None,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// "Make sure `key` exists on `target`."
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationItem {
    pub key: String,
    pub target: Side,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub next_attempt_at: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicationStats {
    pub depth: u64,
    /// Items whose target is the primary: objects the primary lacks.
    pub pending_for_primary: u64,
    /// Items whose target is the fallback: objects the fallback lacks.
    pub pending_for_fallback: u64,
    /// Creation time (µs since the epoch) of the oldest pending item.
    pub oldest_created_at: Option<i64>,
    /// Items that failed at least once, most attempts first (a bounded sample).
    pub failing: Vec<ReplicationItem>,
}

/// Durable queue of objects to copy to the other side. Items are never dropped by the
/// replicator: an item that keeps failing stays with its attempt count and last error.
#[async_trait]
pub trait ReplicationLog: fmt::Debug + Send + Sync + 'static {
    /// Records that `key` must be copied to `target`; idempotent.
    async fn enqueue(&self, key: &str, target: Side, now: i64) -> Result<()>;
    /// Items whose next attempt is due at `now`, oldest first.
    async fn due(&self, now: i64, limit: u32) -> Result<Vec<ReplicationItem>>;
    async fn complete(&self, key: &str, target: Side) -> Result<()>;
    async fn record_failure(&self, key: &str, target: Side, error: &str, next_attempt_at: i64) -> Result<()>;
    async fn stats(&self, failing_sample: u32) -> Result<ReplicationStats>;
}

impl ReplicationStats {
    /// Objects the side lacks that it should hold (queued for it).
    pub fn pending_for(&self, side: Side) -> u64 {
        match side {
            Side::Primary => self.pending_for_primary,
            Side::Fallback => self.pending_for_fallback,
        }
    }
}

/// What the stores must hold: the source of truth for reconciliation (the catalog's
/// committed packs).
#[async_trait]
pub trait ObjectInventory: fmt::Debug + Send + Sync + 'static {
    /// Objects every store must hold, by key with their sizes, in key order, starting after
    /// `after` (empty for the start), at most `limit`.
    async fn expected_objects(&self, after: &str, limit: u32) -> Result<Vec<super::ObjectMeta>>;
}

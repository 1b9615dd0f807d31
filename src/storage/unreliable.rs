//! `UnreliableStore`: a `BlobStore` wrapper that misbehaves on request, for tests and
//! benchmarks that need a fault a real server cannot produce on demand: failures, delays,
//! stalls, corrupt reads, torn writes and lost objects on chosen calls.
//!
//! Not for production wiring; it is public so that integration tests and benches can wrap
//! real stores with it.

use super::{BlobStore, DynBlobStore, GetOptions, ObjectMeta, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The store calls a fault can apply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Put,
    Get,
    Head,
    Delete,
    List,
    Check,
}

const OPERATIONS: [Operation; 6] = [
    Operation::Put,
    Operation::Get,
    Operation::Head,
    Operation::Delete,
    Operation::List,
    Operation::Check,
];

/// What goes wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The call fails as an unreachable or erroring store does (`Unavailable`).
    Fail,
    /// The call answers, correctly, after this long.
    Delay(Duration),
    /// The call never answers, like a server that accepted the connection and froze.
    Stall,
    /// A read answers with one byte flipped.
    CorruptRead,
    /// A write keeps only the first half of the bytes and reports success.
    TornWrite,
    /// The object is gone: reads answer `NotFound`, `head` answers `None`.
    Lost,
}

#[derive(Debug)]
struct Rule {
    operation: Option<Operation>,
    key_prefix: Option<String>,
    fault: Fault,
    /// How many more calls the rule applies to; `None` for every call until healed.
    remaining: Option<u32>,
}

#[derive(Debug)]
pub struct UnreliableStore {
    inner: DynBlobStore,
    rules: Mutex<Vec<Rule>>,
    calls: [AtomicU64; 6],
}

impl UnreliableStore {
    pub fn new(inner: DynBlobStore) -> Self {
        Self {
            inner,
            rules: Mutex::new(Vec::new()),
            calls: Default::default(),
        }
    }

    /// Applies `fault` to the next `times` calls of `operation` (every operation when
    /// `None`), or to every such call until [`UnreliableStore::heal`] when `times` is `None`.
    pub fn inject(&self, operation: Option<Operation>, fault: Fault, times: Option<u32>) {
        self.inject_for_keys(operation, None, fault, times);
    }

    /// As [`UnreliableStore::inject`], for keys starting with `key_prefix` only.
    pub fn inject_for_keys(
        &self,
        operation: Option<Operation>,
        key_prefix: Option<&str>,
        fault: Fault,
        times: Option<u32>,
    ) {
        self.rules.lock().expect("rules lock").push(Rule {
            operation,
            key_prefix: key_prefix.map(str::to_owned),
            fault,
            remaining: times,
        });
    }

    /// Removes every fault.
    pub fn heal(&self) {
        self.rules.lock().expect("rules lock").clear();
    }

    /// Calls of `operation` made so far, faulty or not.
    pub fn calls(&self, operation: Operation) -> u64 {
        let index = OPERATIONS
            .iter()
            .position(|o| *o == operation)
            .expect("known operation");
        self.calls[index].load(Ordering::Relaxed)
    }

    /// The fault for this call, if a rule matches (consuming one use of a counted rule).
    fn fault_for(&self, operation: Operation, key: &str) -> Option<Fault> {
        let index = OPERATIONS
            .iter()
            .position(|o| *o == operation)
            .expect("known operation");
        self.calls[index].fetch_add(1, Ordering::Relaxed);
        let mut rules = self.rules.lock().expect("rules lock");
        let position = rules.iter().position(|rule| {
            rule.operation.is_none_or(|o| o == operation)
                && rule
                    .key_prefix
                    .as_deref()
                    .is_none_or(|prefix| key.starts_with(prefix))
                && rule.remaining != Some(0)
        })?;
        let rule = &mut rules[position];
        let fault = rule.fault.clone();
        if let Some(remaining) = &mut rule.remaining {
            *remaining -= 1;
            if *remaining == 0 {
                rules.remove(position);
            }
        }
        Some(fault)
    }

    fn failure(&self, operation: Operation) -> StoreError {
        StoreError::Unavailable {
            store: self.inner.name().to_owned(),
            message: format!("injected failure of {operation:?}"),
        }
    }

    fn lost(&self, key: &str) -> StoreError {
        StoreError::NotFound {
            store: self.inner.name().to_owned(),
            key: key.to_owned(),
        }
    }

    /// Applies the faults every operation shares; returns the fault left for the caller.
    async fn before(&self, operation: Operation, key: &str) -> Result<Option<Fault>, StoreError> {
        match self.fault_for(operation, key) {
            Some(Fault::Fail) => Err(self.failure(operation)),
            Some(Fault::Delay(delay)) => {
                tokio::time::sleep(delay).await;
                Ok(None)
            }
            Some(Fault::Stall) => futures::future::pending().await,
            other => Ok(other),
        }
    }
}

#[async_trait]
impl BlobStore for UnreliableStore {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        match self.before(Operation::Put, key).await? {
            Some(Fault::TornWrite) => self.inner.put(key, data.slice(..data.len() / 2)).await,
            _ => self.inner.put(key, data).await,
        }
    }

    async fn get(&self, key: &str, options: GetOptions) -> Result<Bytes, StoreError> {
        match self.before(Operation::Get, key).await? {
            Some(Fault::Lost) => Err(self.lost(key)),
            Some(Fault::CorruptRead) => {
                let mut damaged = self.inner.get(key, options).await?.to_vec();
                if let Some(first) = damaged.first_mut() {
                    *first ^= 0xff;
                }
                Ok(Bytes::from(damaged))
            }
            _ => self.inner.get(key, options).await,
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        match self.before(Operation::Head, key).await? {
            Some(Fault::Lost) => Ok(None),
            _ => self.inner.head(key).await,
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.before(Operation::Delete, key).await?;
        self.inner.delete(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.before(Operation::List, prefix).await?;
        self.inner.list(prefix).await
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.before(Operation::Check, "").await?;
        self.inner.check().await
    }
}

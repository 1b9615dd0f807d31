//! `MeteredStore`: a `BlobStore` wrapper that counts every call by outcome and records its
//! latency, labelled with the store's role (`primary`, `fallback`).

use super::{BlobStore, Decoder, DynBlobStore, GetOptions, ObjectMeta, StoreError};
use crate::telemetry::names;
use async_trait::async_trait;
use bytes::Bytes;
use std::time::Instant;

#[derive(Debug)]
pub struct MeteredStore {
    inner: DynBlobStore,
    role: &'static str,
}

impl MeteredStore {
    pub fn new(inner: DynBlobStore, role: &'static str) -> Self {
        Self { inner, role }
    }

    async fn metered<T>(
        &self,
        operation: &'static str,
        work: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = work.await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(error) if error.is_store_fault() => "error",
            Err(StoreError::NotFound { .. }) => "not_found",
            Err(StoreError::Corrupt { .. } | StoreError::InvalidRange { .. }) => "damaged",
            Err(_) => "rejected",
        };
        metrics::counter!(names::STORE_OPERATIONS_TOTAL, "store" => self.role, "operation" => operation, "outcome" => outcome)
            .increment(1);
        metrics::histogram!(names::STORE_LATENCY_SECONDS, "store" => self.role, "operation" => operation)
            .record(started.elapsed().as_secs_f64());
        result
    }
}

#[async_trait]
impl BlobStore for MeteredStore {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.metered("put", self.inner.put(key, data)).await
    }

    async fn get(&self, key: &str, options: GetOptions) -> Result<Bytes, StoreError> {
        self.metered("get", self.inner.get(key, options)).await
    }

    async fn get_decoded(
        &self,
        key: &str,
        options: GetOptions,
        decode: Decoder,
    ) -> Result<Vec<Bytes>, StoreError> {
        self.metered("get", self.inner.get_decoded(key, options, decode))
            .await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        self.metered("head", self.inner.head(key)).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.metered("delete", self.inner.delete(key)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.metered("list", self.inner.list(prefix)).await
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.metered("check", self.inner.check()).await
    }
}

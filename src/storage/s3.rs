//! `S3Store`: any S3-compatible object store (MinIO, AWS S3, others) through aws-sdk-s3 over
//! rustls. Large objects go up as multipart uploads with bounded concurrency.

use super::{BlobStore, GetOptions, ObjectMeta, StoreError, validate_key};
use crate::domain::Secret;
use async_trait::async_trait;
use aws_credential_types::provider::{ProvideCredentials, future::ProvideCredentials as CredentialsFuture};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use base64::Engine as _;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

/// The standard AWS credential chain, built on first use: building it is asynchronous (it
/// reads profile files), while a store is constructed synchronously.
#[derive(Debug, Clone)]
struct DefaultChain {
    region: String,
    chain: Arc<OnceCell<aws_config::default_provider::credentials::DefaultCredentialsChain>>,
}

impl DefaultChain {
    fn new(region: &str) -> Self {
        Self {
            region: region.to_owned(),
            chain: Arc::default(),
        }
    }
}

impl ProvideCredentials for DefaultChain {
    fn provide_credentials<'a>(&'a self) -> CredentialsFuture<'a>
    where
        Self: 'a,
    {
        CredentialsFuture::new(async move {
            let chain = self
                .chain
                .get_or_init(|| async {
                    aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
                        .region(Region::new(self.region.clone()))
                        .build()
                        .await
                })
                .await;
            chain.provide_credentials().await
        })
    }
}

/// Everything needed to reach one bucket.
#[derive(Debug, Clone)]
pub struct S3StoreConfig {
    /// For example `http://127.0.0.1:9000`; `None` uses the AWS endpoint of the region.
    pub endpoint_url: Option<String>,
    pub bucket: String,
    pub region: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    /// Without explicit keys, find credentials the standard AWS way (environment, shared
    /// config and credentials files, web identity, container and instance metadata).
    pub use_default_credential_chain: bool,
    /// Path-style addressing (`endpoint/bucket/key`), which MinIO and most test servers need.
    pub force_path_style: bool,
    /// Prepended to every key, so several deployments can share a bucket.
    pub key_prefix: String,
    /// Objects larger than this are uploaded in parts.
    pub multipart_threshold_bytes: u64,
    pub multipart_part_bytes: u64,
    pub multipart_concurrency: usize,
    /// Limit for one attempt of one request; a slow store counts as a failing one.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_attempts: u32,
    /// First retry delay (jittered, doubling): short for stores behind failover, where the
    /// only retry worth making is a fresh connection after a stale pooled one broke.
    pub initial_backoff: Duration,
}

impl S3StoreConfig {
    pub fn new(bucket: impl Into<String>) -> Self {
        Self {
            endpoint_url: None,
            bucket: bucket.into(),
            region: "us-east-1".to_owned(),
            access_key_id: None,
            secret_access_key: None,
            use_default_credential_chain: true,
            force_path_style: true,
            key_prefix: String::new(),
            multipart_threshold_bytes: 64 * 1024 * 1024,
            multipart_part_bytes: 16 * 1024 * 1024,
            multipart_concurrency: 4,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            max_attempts: 3,
            initial_backoff: Duration::from_secs(1),
        }
    }
}

impl S3StoreConfig {
    /// Settings for a store behind `FailoverStore`, which tries the other store instead of
    /// waiting: one quick retry, enough to replace a pooled connection that a restarted
    /// server closed, and no long backoff delaying the switch.
    pub fn apply_failover_retries(&mut self) {
        self.max_attempts = 2;
        self.initial_backoff = Duration::from_millis(20);
    }
}

/// The most a whole-object read allocates before the bytes arrive.
const PREALLOCATE_MAX: u64 = 64 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    config: S3StoreConfig,
    name: String,
}

impl S3Store {
    pub fn new(config: S3StoreConfig) -> Self {
        let mut builder = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .force_path_style(config.force_path_style)
            // Checksums only where S3 requires them: several S3-compatible servers reject
            // the newer default trailing checksums, and packs carry their own hashes anyway.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(config.max_attempts)
                    .with_initial_backoff(config.initial_backoff),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(config.connect_timeout)
                    .operation_attempt_timeout(config.request_timeout)
                    .build(),
            );
        if let Some(endpoint) = &config.endpoint_url {
            builder = builder.endpoint_url(endpoint);
        }
        if let (Some(key_id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
            builder = builder.credentials_provider(Credentials::new(
                key_id.clone(),
                secret.expose().to_owned(),
                None,
                None,
                "artifactd-config",
            ));
        } else if config.use_default_credential_chain {
            builder = builder.credentials_provider(DefaultChain::new(&config.region));
        }
        let name = format!(
            "s3:{}/{}",
            config.endpoint_url.as_deref().unwrap_or("aws"),
            config.bucket
        );
        Self {
            client: Client::from_conf(builder.build()),
            config,
            name,
        }
    }

    /// Creates the bucket when it does not exist yet (for development and tests; production
    /// buckets are provisioned by operators).
    pub async fn ensure_bucket(&self) -> Result<(), StoreError> {
        if self
            .client
            .head_bucket()
            .bucket(&self.config.bucket)
            .send()
            .await
            .is_ok()
        {
            return Ok(());
        }
        match self
            .client
            .create_bucket()
            .bucket(&self.config.bucket)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(error) => {
                let code = error.code().unwrap_or_default().to_owned();
                if code == "BucketAlreadyOwnedByYou" || code == "BucketAlreadyExists" {
                    Ok(())
                } else {
                    Err(self.map_error("creating bucket", error))
                }
            }
        }
    }

    fn full_key(&self, key: &str) -> Result<String, StoreError> {
        validate_key(key)?;
        Ok(format!("{}{key}", self.config.key_prefix))
    }

    fn map_error<E>(&self, what: &str, error: SdkError<E, HttpResponse>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let retryable = match &error {
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => true,
            SdkError::ServiceError(service) => {
                let code = service.err().code().unwrap_or_default();
                matches!(
                    code,
                    "InternalError" | "ServiceUnavailable" | "SlowDown" | "RequestTimeout"
                ) || service.raw().status().as_u16() >= 500
            }
            _ => false,
        };
        let message = format!("{what}: {}", aws_sdk_s3::error::DisplayErrorContext(&error));
        if retryable {
            StoreError::Unavailable {
                store: self.name.clone(),
                message,
            }
        } else {
            StoreError::Failed {
                store: self.name.clone(),
                message,
            }
        }
    }

    async fn put_multipart(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let bucket = &self.config.bucket;
        let created = self
            .client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.map_error("starting multipart upload", e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_owned();
        let part_size = self.config.multipart_part_bytes.max(5 * 1024 * 1024) as usize;
        let parts: Vec<(i32, Bytes)> = (0..data.len())
            .step_by(part_size)
            .enumerate()
            .map(|(index, start)| {
                let end = (start + part_size).min(data.len());
                (index as i32 + 1, data.slice(start..end))
            })
            .collect();
        let uploaded: Result<Vec<CompletedPart>, StoreError> =
            futures::stream::iter(parts.into_iter().map(|(number, body)| {
                let upload_id = upload_id.clone();
                async move {
                    let output = self
                        .client
                        .upload_part()
                        .bucket(bucket)
                        .key(key)
                        .upload_id(upload_id)
                        .part_number(number)
                        .body(ByteStream::from(body))
                        .send()
                        .await
                        .map_err(|e| self.map_error("uploading part", e))?;
                    Ok(CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(output.e_tag().map(str::to_owned))
                        .build())
                }
            }))
            .buffered(self.config.multipart_concurrency.max(1))
            .try_collect()
            .await;
        let completion = match uploaded {
            Ok(parts) => self
                .client
                .complete_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                .send()
                .await
                .map(|_| ())
                .map_err(|e| self.map_error("completing multipart upload", e)),
            Err(error) => Err(error),
        };
        if completion.is_err() {
            // Best effort: an abandoned upload only costs space until the bucket's lifecycle
            // rule removes it.
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        completion
    }
}

#[async_trait]
impl BlobStore for S3Store {
    fn name(&self) -> &str {
        &self.name
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let key = self.full_key(key)?;
        if data.len() as u64 > self.config.multipart_threshold_bytes {
            return self.put_multipart(&key, data).await;
        }
        // The body is checked by a CRC32C the server verifies, not by signing its SHA-256:
        // the signature's hash cost as much CPU as cutting the content into chunks, where
        // CRC32C runs at memory speed.
        let checksum = base64::engine::general_purpose::STANDARD.encode(crc32c::crc32c(&data).to_be_bytes());
        self.client
            .put_object()
            .bucket(&self.config.bucket)
            .key(&key)
            .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc32C)
            .checksum_crc32_c(checksum)
            .body(ByteStream::from(data))
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(|e| self.map_error("putting object", e))?;
        Ok(())
    }

    async fn get(&self, key: &str, options: GetOptions) -> Result<Bytes, StoreError> {
        let full_key = self.full_key(key)?;
        let mut request = self
            .client
            .get_object()
            .bucket(&self.config.bucket)
            .key(&full_key);
        if let Some(range) = &options.range {
            if range.start > range.end {
                return Err(StoreError::InvalidRange {
                    store: self.name.clone(),
                    key: key.to_owned(),
                    start: range.start,
                    end: range.end,
                    size: 0,
                });
            }
            if range.start == range.end {
                // HTTP cannot express an empty range; check existence and size instead.
                let meta = self.head(key).await?.ok_or_else(|| StoreError::NotFound {
                    store: self.name.clone(),
                    key: key.to_owned(),
                })?;
                super::check_range(&self.name, key, range, meta.size)?;
                return Ok(Bytes::new());
            }
            request = request.range(format!("bytes={}-{}", range.start, range.end - 1));
        }
        let output = match request.send().await {
            Ok(output) => output,
            Err(error) => {
                let code = error.code().unwrap_or_default();
                if code == "NoSuchKey" || code == "NotFound" {
                    return Err(StoreError::NotFound {
                        store: self.name.clone(),
                        key: key.to_owned(),
                    });
                }
                if code == "InvalidRange" {
                    let size = self.head(key).await?.map(|m| m.size).unwrap_or(0);
                    let range = options.range.clone().unwrap_or(0..0);
                    return Err(StoreError::InvalidRange {
                        store: self.name.clone(),
                        key: key.to_owned(),
                        start: range.start,
                        end: range.end,
                        size,
                    });
                }
                return Err(self.map_error("getting object", error));
            }
        };
        // The body is copied once, as it arrives, into one buffer of the length the answer
        // announces: no more than the range asked for (a server announcing more is told
        // below it answered wrongly, not trusted with the allocation), and for a whole
        // object no more than [`PREALLOCATE_MAX`] ahead of what arrives.
        let announced = output.content_length().unwrap_or(0).max(0) as u64;
        let capacity = match &options.range {
            Some(range) => announced.min(range.end - range.start),
            None => announced.min(PREALLOCATE_MAX),
        };
        let mut buffer = options.buffer(capacity as usize);
        let mut body = output.body;
        while let Some(piece) = body.try_next().await.map_err(|e| StoreError::Unavailable {
            store: self.name.clone(),
            message: format!("reading object body: {e}"),
        })? {
            buffer.extend_from_slice(&piece);
        }
        let body = options.bytes(buffer);
        if let Some(range) = &options.range {
            // A server answers a range reaching past the end with the bytes it has.
            let expected = range.end - range.start;
            if body.len() as u64 != expected {
                return Err(StoreError::InvalidRange {
                    store: self.name.clone(),
                    key: key.to_owned(),
                    start: range.start,
                    end: range.end,
                    size: range.start + body.len() as u64,
                });
            }
        }
        Ok(body)
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        let full_key = self.full_key(key)?;
        match self
            .client
            .head_object()
            .bucket(&self.config.bucket)
            .key(&full_key)
            .send()
            .await
        {
            Ok(output) => Ok(Some(ObjectMeta {
                key: key.to_owned(),
                size: output.content_length().unwrap_or(0).max(0) as u64,
            })),
            Err(error) => {
                let not_found =
                    matches!(&error, SdkError::ServiceError(service) if service.err().is_not_found());
                if not_found {
                    Ok(None)
                } else {
                    Err(self.map_error("reading object metadata", error))
                }
            }
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let full_key = self.full_key(key)?;
        self.client
            .delete_object()
            .bucket(&self.config.bucket)
            .key(&full_key)
            .send()
            .await
            .map_err(|e| self.map_error("deleting object", e))?;
        Ok(())
    }

    /// The bucket itself must answer: a missing bucket makes every object look missing.
    async fn check(&self) -> Result<(), StoreError> {
        self.client
            .head_bucket()
            .bucket(&self.config.bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.map_error("checking the bucket", e))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let full_prefix = format!("{}{prefix}", self.config.key_prefix);
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.config.bucket)
            .prefix(&full_prefix)
            .into_paginator()
            .send();
        let mut found = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.map_error("listing objects", e))?;
            for object in page.contents() {
                let Some(full_key) = object.key() else { continue };
                let key = full_key.strip_prefix(&self.config.key_prefix).unwrap_or(full_key);
                found.push(ObjectMeta {
                    key: key.to_owned(),
                    size: object.size().unwrap_or(0).max(0) as u64,
                });
            }
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }
}

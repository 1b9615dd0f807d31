//! The audit trail around requests: who is calling (a task-local context the catalog reads
//! when it records a change in the change's own transaction), the note each call leaves for
//! the request layer to record once its status is known (reads of content, searches,
//! refusals, failures), and signed checkpoints of every tenant's chain, kept in the catalog
//! and, outside it, in the object store under `audit/`.

pub mod patterns;

use crate::catalog::Catalog;
use crate::domain::Timestamp;
use crate::domain::audit::{AuditRecord, Checkpoint, Outcome};
use crate::storage::DynBlobStore;
use ring::signature::{Ed25519KeyPair, KeyPair};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What one call tells the audit trail, filled in as the call learns it.
#[derive(Debug, Default)]
pub struct CallNote {
    fields: Mutex<NoteFields>,
    /// A change of this call was recorded in its own transaction.
    recorded: AtomicBool,
}

#[derive(Debug, Default, Clone)]
struct NoteFields {
    tenant: String,
    project: String,
    target: String,
    actor: String,
    principal_kind: String,
    peer: String,
    request_id: String,
}

impl CallNote {
    pub fn new(request_id: &str) -> Self {
        let note = Self::default();
        note.fields.lock().expect("note lock").request_id = request_id.to_owned();
        note
    }

    pub fn caller(&self, actor: &str, principal_kind: &str) {
        let mut fields = self.fields.lock().expect("note lock");
        fields.actor = actor.to_owned();
        fields.principal_kind = principal_kind.to_owned();
    }

    pub fn peer(&self, peer: Option<std::net::IpAddr>) {
        self.fields.lock().expect("note lock").peer = peer.map(|p| p.to_string()).unwrap_or_default();
    }

    pub fn scope(&self, tenant: &str, project: Option<&str>) {
        let mut fields = self.fields.lock().expect("note lock");
        fields.tenant = tenant.to_owned();
        fields.project = project.unwrap_or_default().to_owned();
    }

    pub fn target(&self, target: &str) {
        self.fields.lock().expect("note lock").target = target.to_owned();
    }

    pub fn mark_recorded(&self) {
        self.recorded.store(true, Ordering::SeqCst);
    }

    pub fn was_recorded(&self) -> bool {
        self.recorded.load(Ordering::SeqCst)
    }

    /// The entry for a call of `method` that ended with `code`.
    pub fn record(&self, method: &str, code: tonic::Code) -> AuditRecord {
        let fields = self.fields.lock().expect("note lock").clone();
        let outcome = match code {
            tonic::Code::Ok => Outcome::Ok,
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => Outcome::Denied,
            _ => Outcome::Failed,
        };
        AuditRecord {
            tenant: fields.tenant,
            at: Timestamp::now(),
            actor: if fields.actor.is_empty() {
                "unknown".to_owned()
            } else {
                fields.actor
            },
            principal_kind: if fields.principal_kind.is_empty() {
                "none".to_owned()
            } else {
                fields.principal_kind
            },
            project: fields.project,
            target: fields.target,
            action: method.to_owned(),
            outcome: outcome.as_str().to_owned(),
            code: format!("{code:?}"),
            request_id: fields.request_id,
            peer: fields.peer,
        }
    }

    /// The entry for a change this call makes, recorded in the change's transaction.
    pub fn change(
        &self,
        tenant: &str,
        project: &str,
        target: String,
        action: &str,
        at: Timestamp,
    ) -> AuditRecord {
        let fields = self.fields.lock().expect("note lock").clone();
        AuditRecord {
            tenant: tenant.to_owned(),
            at,
            actor: fields.actor,
            principal_kind: fields.principal_kind,
            project: project.to_owned(),
            target,
            action: action.to_owned(),
            outcome: Outcome::Ok.as_str().to_owned(),
            code: "Ok".to_owned(),
            request_id: fields.request_id,
            peer: fields.peer,
        }
    }
}

tokio::task_local! {
    static CALL: Arc<CallNote>;
}

/// The note of the call this task serves, if it serves one.
pub fn current() -> Option<Arc<CallNote>> {
    CALL.try_with(Arc::clone).ok()
}

/// Runs `future` as part of the call `note` describes.
pub async fn within<F: std::future::Future>(note: Option<Arc<CallNote>>, future: F) -> F::Output {
    match note {
        Some(note) => CALL.scope(note, future).await,
        None => future.await,
    }
}

/// A change made by no caller (background work, tools): recorded as the service's own.
pub fn system_change(
    tenant: &str,
    project: &str,
    target: String,
    action: &str,
    at: Timestamp,
) -> AuditRecord {
    let service = CallNote::default();
    service.caller("artifactd", "system");
    service.change(tenant, project, target, action, at)
}

/// The entry for a change: the current call's, or the service's own.
pub fn change_record(
    tenant: &str,
    project: &str,
    target: String,
    action: &str,
    at: Timestamp,
) -> AuditRecord {
    match current() {
        Some(note) => {
            note.mark_recorded();
            note.change(tenant, project, target, action, at)
        }
        None => system_change(tenant, project, target, action, at),
    }
}

/// Where finished calls are recorded.
pub trait AuditSink: Send + Sync + std::fmt::Debug {
    fn record(&self, record: AuditRecord);
}

/// Appends finished calls to the catalog off the request's path; a failure is logged and
/// counted, never the request's.
#[derive(Debug, Clone)]
pub struct CatalogSink {
    catalog: Catalog,
}

impl CatalogSink {
    pub fn new(catalog: Catalog) -> Self {
        Self { catalog }
    }
}

impl AuditSink for CatalogSink {
    fn record(&self, record: AuditRecord) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let catalog = self.catalog.clone();
        runtime.spawn(async move {
            if let Err(error) = catalog.append_audit(&record).await {
                metrics::counter!(crate::telemetry::names::AUDIT_WRITE_FAILURES_TOTAL).increment(1);
                tracing::warn!(%error, action = %record.action, "an audit entry could not be written");
            }
        });
    }
}

/// Signs checkpoints with an Ed25519 key kept in a file (a Kubernetes Secret in a cluster;
/// made at the first start otherwise, readable only by its owner).
pub struct Signer {
    pair: Ed25519KeyPair,
    pub key_id: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", self.key_id)
    }
}

impl Signer {
    pub fn open_or_create(path: &Path) -> anyhow::Result<Self> {
        use base64::Engine;
        let engine = base64::engine::general_purpose::STANDARD;
        let pkcs8 = match std::fs::read_to_string(path) {
            Ok(text) => engine
                .decode(text.trim())
                .map_err(|e| anyhow::anyhow!("{} is not a base64 Ed25519 key: {e}", path.display()))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let document = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                    .map_err(|_| anyhow::anyhow!("generating the audit signing key"))?;
                crate::identity::write_private(path, &engine.encode(document.as_ref()))?;
                document.as_ref().to_vec()
            }
            Err(error) => return Err(anyhow::anyhow!("reading {}: {error}", path.display())),
        };
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
            .map_err(|e| anyhow::anyhow!("{} is not an Ed25519 key: {e}", path.display()))?;
        let key_id = blake3::hash(pair.public_key().as_ref()).to_hex()[..16].to_owned();
        Ok(Self { pair, key_id })
    }

    pub fn public_key(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    pub fn sign(&self, tenant: &str, seq: i64, hash: &str, at: Timestamp) -> Checkpoint {
        let signature = self.pair.sign(&Checkpoint::message(tenant, seq, hash, at));
        Checkpoint {
            tenant: tenant.to_owned(),
            seq,
            hash: hash.to_owned(),
            at,
            key_id: self.key_id.clone(),
            signature: hex::encode(signature.as_ref()),
        }
    }

    pub fn verifies(&self, checkpoint: &Checkpoint) -> bool {
        verify_checkpoint(&self.public_key(), checkpoint)
    }
}

/// Whether `checkpoint` was signed by the holder of `public_key`.
pub fn verify_checkpoint(public_key: &[u8], checkpoint: &Checkpoint) -> bool {
    let Ok(signature) = hex::decode(&checkpoint.signature) else {
        return false;
    };
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public_key)
        .verify(
            &Checkpoint::message(
                &checkpoint.tenant,
                checkpoint.seq,
                &checkpoint.hash,
                checkpoint.at,
            ),
            &signature,
        )
        .is_ok()
}

/// Signs a checkpoint of every chain that grew since its last one, into the catalog and the
/// object store (`audit/<tenant in hex>/<seq>.json`), every `interval`.
pub async fn run_checkpointer(
    catalog: Catalog,
    store: DynBlobStore,
    signer: Arc<Signer>,
    interval: Duration,
    shutdown: CancellationToken,
) -> Result<(), String> {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(interval) => {}
        }
        if let Err(error) = checkpoint_all(&catalog, &store, &signer).await {
            tracing::warn!(%error, "audit checkpoints could not be written; trying again later");
        }
    }
}

pub async fn checkpoint_all(
    catalog: &Catalog,
    store: &DynBlobStore,
    signer: &Signer,
) -> anyhow::Result<usize> {
    let mut written = 0;
    for (tenant, seq, hash) in catalog.audit_heads().await? {
        let last = catalog
            .audit_checkpoints(&tenant)
            .await?
            .last()
            .map_or(0, |c| c.seq);
        if seq <= last {
            continue;
        }
        let checkpoint = signer.sign(&tenant, seq, &hash, Timestamp::now());
        let document = serde_json::json!({
            "tenant": checkpoint.tenant, "seq": checkpoint.seq, "hash": checkpoint.hash,
            "at": checkpoint.at.0, "key_id": checkpoint.key_id, "signature": checkpoint.signature,
            "public_key": hex::encode(signer.public_key()),
        });
        // Tenants by their hex (any name is a safe key); the server's own trail as `_server`.
        let folder = if tenant.is_empty() {
            "_server".to_owned()
        } else {
            hex::encode(tenant.as_bytes())
        };
        let key = format!("audit/{folder}/{seq:020}.json");
        store
            .put(&key, bytes::Bytes::from(document.to_string()))
            .await
            .map_err(|e| anyhow::anyhow!("writing {key}: {e}"))?;
        catalog.put_audit_checkpoint(&checkpoint).await?;
        written += 1;
    }
    Ok(written)
}

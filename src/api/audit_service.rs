//! `artifactd.v1.AuditService`: reading, exporting and verifying the audit trail.

use super::caller;
use super::convert::timestamp;
use crate::audit::Signer;
use crate::audit::patterns::AccessPatterns;
use crate::catalog::{AuditQuery, Catalog};
use crate::domain::audit::{AuditEntry, Checkpoint, verify_chain};
use crate::domain::{Error, Timestamp};
use crate::identity::Caller;
use crate::proto::audit_service_server::AuditService;
use crate::proto::{self, export_audit_log_response};
use futures::Stream;
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Entries read from the catalog at a time, for exports and verification.
const BATCH: u32 = 1000;

pub struct AuditApi {
    catalog: Catalog,
    signer: Arc<Signer>,
    patterns: Arc<AccessPatterns>,
}

impl AuditApi {
    pub fn new(catalog: Catalog, signer: Arc<Signer>, patterns: Arc<AccessPatterns>) -> Self {
        Self {
            catalog,
            signer,
            patterns,
        }
    }

    /// A tenant's whole chain, in order.
    async fn chain(&self, tenant: &str) -> Result<Vec<AuditEntry>, Error> {
        let mut entries = Vec::new();
        loop {
            let query = AuditQuery {
                after: entries.last().map_or(0, |e: &AuditEntry| e.seq),
                limit: BATCH,
                ..Default::default()
            };
            let batch = self.catalog.audit_entries(tenant, &query).await?;
            let done = batch.len() < BATCH as usize;
            entries.extend(batch);
            if done {
                return Ok(entries);
            }
        }
    }
}

type Snapshot = (Option<(i64, String)>, Vec<AuditEntry>, Vec<Checkpoint>);

impl AuditApi {
    /// The chain as of its head (read first: entries appended later are left out), and the
    /// checkpoints.
    async fn snapshot(&self, tenant: &str) -> Result<Snapshot, Error> {
        let head = self.catalog.audit_head(tenant).await?;
        let mut entries = self.chain(tenant).await?;
        if let Some((seq, _)) = &head {
            entries.retain(|e| e.seq <= *seq);
        }
        let checkpoints = self.catalog.audit_checkpoints(tenant).await?;
        Ok((head, entries, checkpoints))
    }
}

/// A tenant's trail needs its tenant admin; the server's own (tenant empty) the server admin.
fn authorize(caller: &Caller, tenant: &str) -> Result<(), Error> {
    if tenant.is_empty() {
        caller.authorize_server()
    } else {
        caller.authorize_in(tenant, None)
    }
}

fn entry(entry: AuditEntry) -> proto::AuditEntry {
    let r = entry.record;
    proto::AuditEntry {
        tenant: r.tenant,
        seq: entry.seq,
        at: Some(timestamp(r.at)),
        at_micros: r.at.0,
        actor: r.actor,
        principal_kind: r.principal_kind,
        project: r.project,
        target: r.target,
        action: r.action,
        outcome: r.outcome,
        code: r.code,
        request_id: r.request_id,
        peer: r.peer,
        prev_hash: entry.prev_hash,
        hash: entry.hash,
    }
}

fn checkpoint(c: Checkpoint) -> proto::AuditCheckpoint {
    proto::AuditCheckpoint {
        tenant: c.tenant,
        seq: c.seq,
        hash: c.hash,
        at_micros: c.at.0,
        key_id: c.key_id,
        signature: c.signature,
    }
}

fn micros(field: &'static str, value: Option<prost_types::Timestamp>) -> Result<Option<Timestamp>, Error> {
    value
        .map(|t| {
            if !(0..1_000_000_000).contains(&t.nanos) {
                return Err(Error::invalid(field, "nanos must be within 0..1e9"));
            }
            Ok(Timestamp(
                t.seconds.saturating_mul(1_000_000) + i64::from(t.nanos / 1000),
            ))
        })
        .transpose()
}

type ExportStream = Pin<Box<dyn Stream<Item = Result<proto::ExportAuditLogResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn get_audit_trail(
        &self,
        request: Request<proto::GetAuditTrailRequest>,
    ) -> Result<Response<proto::GetAuditTrailResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        authorize(&caller, &request.tenant)?;
        let after = if request.page_token.is_empty() {
            0
        } else {
            request
                .page_token
                .parse::<i64>()
                .ok()
                .filter(|seq| *seq > 0)
                .ok_or_else(|| Error::invalid("page_token", "is not a token this call returned"))?
        };
        let limit = match request.page_size {
            0 => 100,
            n => n.min(1000),
        };
        let nonempty = |s: String| (!s.is_empty()).then_some(s);
        let query = AuditQuery {
            target: nonempty(request.artifact_id),
            actor: nonempty(request.actor),
            action: nonempty(request.action),
            from: micros("from", request.from)?,
            to: micros("to", request.to)?,
            after,
            limit,
        };
        let entries = self.catalog.audit_entries(&request.tenant, &query).await?;
        let next_page_token = if entries.len() == limit as usize {
            entries.last().map(|e| e.seq.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(proto::GetAuditTrailResponse {
            entries: entries.into_iter().map(entry).collect(),
            next_page_token,
        }))
    }

    type ExportAuditLogStream = ExportStream;

    async fn export_audit_log(
        &self,
        request: Request<proto::ExportAuditLogRequest>,
    ) -> Result<Response<ExportStream>, Status> {
        let caller = caller(&request)?;
        let tenant = request.into_inner().tenant;
        authorize(&caller, &tenant)?;
        let (head, entries, checkpoints) = self.snapshot(&tenant).await?;
        let (seq, hash) = head.unwrap_or((0, String::new()));
        let mut items = vec![export_audit_log_response::Item::Head(proto::AuditHead {
            tenant,
            seq,
            hash,
            public_key: self.signer.public_key().into(),
            key_id: self.signer.key_id.clone(),
        })];
        items.extend(
            entries
                .into_iter()
                .map(|e| export_audit_log_response::Item::Entry(entry(e))),
        );
        items.extend(
            checkpoints
                .into_iter()
                .map(|c| export_audit_log_response::Item::Checkpoint(checkpoint(c))),
        );
        let stream = futures::stream::iter(
            items
                .into_iter()
                .map(|item| Ok(proto::ExportAuditLogResponse { item: Some(item) })),
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_access_flags(
        &self,
        request: Request<proto::GetAccessFlagsRequest>,
    ) -> Result<Response<proto::GetAccessFlagsResponse>, Status> {
        let caller = caller(&request)?;
        let tenant = request.into_inner().tenant;
        authorize(&caller, &tenant)?;
        /// Busiest principals and artifacts listed.
        const TOP: usize = 20;
        let (principals, artifacts) = self.patterns.rates(&tenant, TOP);
        let rate = |(name, reads, usual): (String, u64, f64)| proto::AccessRate {
            name,
            reads_this_minute: reads,
            usual_per_minute: usual,
        };
        Ok(Response::new(proto::GetAccessFlagsResponse {
            flags: self
                .patterns
                .flags(Some(&tenant))
                .into_iter()
                .map(|flag| proto::AccessFlag {
                    at: Some(timestamp(flag.at)),
                    tenant: flag.tenant,
                    principal: flag.principal,
                    pattern: flag.pattern.as_str().to_owned(),
                    detail: flag.detail,
                })
                .collect(),
            principals: principals.into_iter().map(rate).collect(),
            artifacts: artifacts.into_iter().map(rate).collect(),
        }))
    }

    async fn verify_audit_log(
        &self,
        request: Request<proto::VerifyAuditLogRequest>,
    ) -> Result<Response<proto::VerifyAuditLogResponse>, Status> {
        let caller = caller(&request)?;
        let tenant = request.into_inner().tenant;
        authorize(&caller, &tenant)?;
        let (head, entries, checkpoints) = self.snapshot(&tenant).await?;
        let problems = verify_chain(&entries, head, &checkpoints, |c| {
            c.key_id == self.signer.key_id && self.signer.verifies(c)
        });
        Ok(Response::new(proto::VerifyAuditLogResponse {
            intact: problems.is_empty(),
            entries_checked: entries.len() as i64,
            checkpoints_checked: checkpoints.len() as i64,
            problems: problems
                .into_iter()
                .map(|p| proto::AuditProblem {
                    seq: p.seq,
                    message: p.message,
                })
                .collect(),
        }))
    }
}

//! `artifactd.v1.EncryptionService`: the tenant keys of encryption at rest.

use super::caller;
use super::convert::timestamp;
use crate::app::Artifacts;
use crate::domain::Error;
use crate::domain::encryption::{TenantKeyRecord, TenantKeyState};
use crate::proto::encryption_service_server::EncryptionService;
use crate::proto::{self, TenantKeyState as ProtoState};
use tonic::{Request, Response, Status};

pub struct EncryptionApi {
    artifacts: Artifacts,
}

impl EncryptionApi {
    pub fn new(artifacts: Artifacts) -> Self {
        Self { artifacts }
    }
}

fn key_to_proto(key: TenantKeyRecord) -> proto::TenantKey {
    proto::TenantKey {
        state: match key.state {
            TenantKeyState::Active => ProtoState::Active,
            TenantKeyState::Rotated => ProtoState::Rotated,
            TenantKeyState::Destroyed => ProtoState::Destroyed,
        } as i32,
        master_key_id: key.material.map(|m| m.master_key_id).unwrap_or_default(),
        created_at: Some(timestamp(key.created_at)),
        retired_at: key.retired_at.map(timestamp),
        key_id: key.key_id,
    }
}

#[tonic::async_trait]
impl EncryptionService for EncryptionApi {
    async fn get_encryption_status(
        &self,
        request: Request<proto::GetEncryptionStatusRequest>,
    ) -> Result<Response<proto::GetEncryptionStatusResponse>, Status> {
        let caller = caller(&request)?;
        let tenant = request.into_inner().tenant;
        caller.authorize_in(&tenant, None)?;
        let status = self.artifacts.encryption_status(&tenant).await?;
        Ok(Response::new(proto::GetEncryptionStatusResponse {
            enabled: status.enabled,
            master_key_id: status.master_key_id.unwrap_or_default(),
            keys: status.keys.into_iter().map(key_to_proto).collect(),
            sealed_packs: status.counts.sealed_packs,
            sealed_bytes: status.counts.sealed_bytes,
            plain_packs: status.counts.plain_packs,
            plain_bytes: status.counts.plain_bytes,
        }))
    }

    async fn rotate_tenant_key(
        &self,
        request: Request<proto::RotateTenantKeyRequest>,
    ) -> Result<Response<proto::RotateTenantKeyResponse>, Status> {
        let caller = caller(&request)?;
        let tenant = request.into_inner().tenant;
        caller.authorize_in(&tenant, None)?;
        let rotation = self.artifacts.rotate_tenant_key(&tenant).await?;
        caller.target(&format!("tenant-key:{}", rotation.new_key_id));
        Ok(Response::new(proto::RotateTenantKeyResponse {
            old_key_id: rotation.old_key_id,
            new_key_id: rotation.new_key_id,
            data_keys_rewrapped: rotation.data_keys_rewrapped,
        }))
    }

    async fn destroy_tenant_key(
        &self,
        request: Request<proto::DestroyTenantKeyRequest>,
    ) -> Result<Response<proto::DestroyTenantKeyResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        caller.authorize_in(&request.tenant, None)?;
        if request.confirm_tenant != request.tenant {
            return Err(Error::invalid(
                "confirm_tenant",
                format!(
                    "must repeat the tenant ({:?}) to destroy its keys; this cannot be undone",
                    request.tenant
                ),
            )
            .into());
        }
        let report = self.artifacts.destroy_tenant_keys(&request.tenant).await?;
        Ok(Response::new(proto::DestroyTenantKeyResponse {
            destroyed_key_ids: report.keys_destroyed,
            packs_unreadable: report.packs_unreadable,
            chunks_forgotten: report.chunks_forgotten,
            plain_packs_remaining: report.plain_packs_remaining,
        }))
    }

    async fn rewrap_tenant_keys(
        &self,
        request: Request<proto::RewrapTenantKeysRequest>,
    ) -> Result<Response<proto::RewrapTenantKeysResponse>, Status> {
        caller(&request)?.authorize_server()?;
        let report = self.artifacts.rewrap_tenant_keys().await?;
        Ok(Response::new(proto::RewrapTenantKeysResponse {
            rewrapped: report.rewrapped,
            already_current: report.already_current,
        }))
    }
}

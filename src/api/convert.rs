//! Catalog records to wire messages.

use crate::catalog::{ArtifactRecord, VersionRecord};
use crate::proto;

pub fn timestamp(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

pub fn artifact(record: &ArtifactRecord) -> proto::Artifact {
    proto::Artifact {
        id: record.id.clone(),
        tenant: record.tenant.clone(),
        project: record.project.clone(),
        artifact_type: record.artifact_type.clone(),
        name: record.name.clone(),
        description: record.description.clone(),
        tags: record.tag_list(),
        metadata: record.metadata_map().into_iter().collect(),
        latest_version: record.latest_version.clone(),
        version_count: record.version_count as u64,
        created_at: Some(timestamp(record.created_at)),
        updated_at: Some(timestamp(record.updated_at)),
        deleted_at: record.deleted_at.map(timestamp),
        created_by: record.created_by.clone(),
    }
}

pub fn version(record: &VersionRecord) -> proto::ArtifactVersion {
    proto::ArtifactVersion {
        artifact_id: record.artifact_id.clone(),
        version: record.version.clone(),
        size: record.size as u64,
        stored_size: record.stored_size as u64,
        new_stored_size: record.new_stored_size as u64,
        blake3: record.blake3.clone(),
        chunk_count: record.chunk_count as u64,
        created_by: record.created_by.clone(),
        created_at: Some(timestamp(record.created_at)),
        change_message: record.change_message.clone(),
    }
}

//! artifactd: versioned, deduplicated artifact storage served over gRPC.
//!
//! The module map and the path of an upload and a download are described in
//! `ARCHITECTURE.md` at the repository root.

pub mod api;
pub mod app;
pub mod audit;
pub mod buffers;
pub mod catalog;
pub mod cli;
pub mod compute;
pub mod config;
pub mod domain;
pub mod identity;
pub mod ingest;
pub mod jobs;
pub mod search;
pub mod server;
pub mod storage;
pub mod telemetry;

/// Generated code of the public contract, package `artifactd.v1`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("artifactd.v1");

    /// Encoded descriptors of the contract, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("artifactd_descriptor");
}

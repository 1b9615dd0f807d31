//! gRPC services: decode requests, call the application layer, map errors to statuses.
//! No business rules and no SQL here.

mod admin_service;
mod artifact_service;
pub mod convert;
mod fallback_service;
pub mod request_layer;
mod search_service;
pub mod status;

pub use admin_service::AdminApi;
pub use artifact_service::ArtifactApi;
pub use fallback_service::FallbackApi;
pub use search_service::SearchApi;

/// Request metadata naming the caller, recorded as `created_by`.
pub const ACTOR_HEADER: &str = "x-artifactd-actor";
/// A download carrying this header (a workflow run id) is recorded as one of the run's inputs.
pub const RUN_HEADER: &str = "x-artifactd-run";

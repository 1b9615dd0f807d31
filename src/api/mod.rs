//! gRPC services: decode requests, call the application layer, map errors to statuses.
//! No business rules and no SQL here.

mod access_service;
mod admin_service;
mod artifact_service;
mod audit_service;
mod backup_service;
pub mod convert;
mod encryption_service;
mod fallback_service;
pub mod http_links;
pub mod request_layer;
mod retention_service;
mod search_service;
pub mod status;

pub use access_service::AccessApi;
pub use admin_service::AdminApi;
pub use artifact_service::ArtifactApi;
pub use audit_service::AuditApi;
pub use backup_service::BackupApi;
pub use encryption_service::EncryptionApi;
pub use fallback_service::FallbackApi;
pub use retention_service::RetentionApi;
pub use search_service::SearchApi;

/// Whether the caller may read `project` of `tenant`. Results that reach from the request's
/// project into others (dependencies, dependents, runs, provenance) show only what the caller
/// could read there itself.
pub(crate) fn can_read(caller: &crate::identity::Caller, tenant: &str, project: &str) -> bool {
    caller
        .principal
        .decide(crate::domain::access::Permission::Read, tenant, Some(project))
        == crate::domain::access::Decision::Allow
}

/// A dependency target named in another project needs the right to read that project.
pub(crate) fn check_target(
    caller: &crate::identity::Caller,
    tenant: &str,
    target: &crate::domain::dependency::DependencyTarget,
) -> Result<(), crate::domain::Error> {
    if let crate::domain::dependency::DependencyTarget::Coordinates {
        project: Some(project),
        ..
    } = target
    {
        caller.require(crate::domain::access::Permission::Read, tenant, Some(project))?;
    }
    Ok(())
}

/// The proven caller the identity layer attached to a request. A request without one never
/// passed that layer; it is refused rather than served as nobody.
pub(crate) fn caller<T>(request: &tonic::Request<T>) -> Result<crate::identity::Caller, tonic::Status> {
    request
        .extensions()
        .get::<crate::identity::Caller>()
        .cloned()
        .ok_or_else(|| tonic::Status::unauthenticated("the request carries no proven caller"))
}
/// A download carrying this header (a workflow run id) is recorded as one of the run's inputs.
pub const RUN_HEADER: &str = "x-artifactd-run";

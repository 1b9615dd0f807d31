//! What each RPC needs. A method missing from this table is refused to everyone: deny by
//! default. The README's permission table says the same in words.

use crate::domain::access::Permission;

/// What a method asks of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Any proven caller (the method is about the caller itself).
    Authenticated,
    /// This permission in the tenant and project the request names (a handler may ask for
    /// more where the request says so: approving, tenant-wide grants).
    Scoped(Permission),
}

/// Methods served to anyone, credentials or not.
pub fn is_open(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
        || path.starts_with("/grpc.reflection.v1.ServerReflection/")
        || path.starts_with("/grpc.reflection.v1alpha.ServerReflection/")
}

/// Methods whose calls may last far longer than a credential stays good (change streams):
/// they keep what the caller proved itself with, to prove it again as they go.
pub fn is_lasting(path: &str) -> bool {
    path == "/artifactd.v1.ArtifactService/WatchEvents"
}

/// The policy of a gRPC method path (`/package.Service/Method`).
pub fn of(path: &str) -> Option<Policy> {
    use Permission::*;
    use Policy::*;
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let policy = match (service, method) {
        ("artifactd.v1.ArtifactService", method) => Scoped(match method {
            "GetArtifact"
            | "DownloadArtifact"
            | "CreateDownloadLink"
            | "ListVersions"
            | "GetMetadata"
            | "GetStorageStats"
            | "ListArtifacts"
            | "ListAliases"
            | "GetChangeHistory"
            | "DiffVersions"
            | "WatchEvents"
            | "ResolveDependencies"
            | "ListDependents"
            | "GetRun"
            | "GetProvenance" => Read,
            "CreateArtifact" | "UpdateArtifact" | "UpdateArtifactLabels" | "RecordRunInputs" => Write,
            // Sending to review needs Write; approving and archiving need Maintain (checked
            // by the handler, which knows the target state).
            "TransitionVersion" => Write,
            "DeleteArtifact" | "UndeleteArtifact" | "DeleteVersion" | "UndeleteVersion" | "SetAlias"
            | "DeleteAlias" | "LinkArtifact" | "UnlinkArtifact" => Maintain,
            _ => return None,
        }),
        (
            "artifactd.v1.SearchService",
            "Search" | "SearchByTags" | "SearchByMetadata" | "SearchByDependencies",
        ) => Scoped(Read),
        (
            "artifactd.v1.AdminService",
            "GetServerStatus" | "CheckConsistency" | "CollectGarbage" | "ListGarbageCollections",
        ) => Scoped(Operate),
        (
            "artifactd.v1.RetentionService",
            "ListRetentionPolicies"
            | "GetRetentionPolicy"
            | "ListRetentionRuns"
            | "GetRetentionRun"
            | "ListLegalHolds"
            | "ListTrash",
        ) => Scoped(Read),
        (
            "artifactd.v1.RetentionService",
            "CreateRetentionPolicy"
            | "UpdateRetentionPolicy"
            | "DeleteRetentionPolicy"
            | "EvaluateRetentionPolicy"
            | "ExecuteRetentionPolicy"
            | "SetLegalHold"
            | "ReleaseLegalHold"
            | "PurgeTrash",
        ) => Scoped(ManageProject),
        (
            "artifactd.v1.BackupService",
            "ListBackups" | "GetBackup" | "ListBackupSchedules" | "GetRecoveryWindow",
        ) => Scoped(Read),
        // Restoring rewrites a project's state, and a backup copies all of it: the
        // project's managers'. A whole tenant's backups need ManageTenant (the handler).
        (
            "artifactd.v1.BackupService",
            "CreateBackup" | "DeleteBackup" | "RestoreBackup" | "SetBackupSchedule",
        ) => Scoped(ManageProject),
        (
            "artifactd.v1.FallbackService",
            "TestFallback" | "GetFallbackStatus" | "SyncFallback" | "GetFallbackMetrics",
        ) => Scoped(Operate),
        // A tenant's trail needs ManageTenant; the server's own (tenant empty) Operate,
        // checked by the handler.
        (
            "artifactd.v1.AuditService",
            "GetAuditTrail" | "ExportAuditLog" | "VerifyAuditLog" | "GetAccessFlags",
        ) => Scoped(ManageTenant),
        ("artifactd.v1.EncryptionService", "GetEncryptionStatus" | "RotateTenantKey") => Scoped(ManageTenant),
        // Destroying a tenant's keys cannot be undone: the server admin's alone.
        ("artifactd.v1.EncryptionService", "DestroyTenantKey" | "RewrapTenantKeys") => Scoped(Operate),
        ("artifactd.v1.AccessService", "WhoAmI") => Authenticated,
        ("artifactd.v1.AccessService", "CreateApiKey" | "ListApiKeys" | "RevokeApiKey") => {
            Scoped(ManageTenant)
        }
        // Project-scoped grants need ManageProject; tenant-wide ones ManageTenant (checked
        // by the handler).
        (
            "artifactd.v1.AccessService",
            "GrantRole"
            | "RevokeRole"
            | "ListRoleBindings"
            | "SetArtifactPermissions"
            | "GetArtifactPermissions",
        ) => Scoped(ManageProject),
        _ => return None,
    };
    Some(policy)
}

/// Whether a finished call goes into the audit trail: every refused or failed call; of the
/// successful ones, every change (unless it recorded itself with the change), every read of
/// content, every search; not the reads of listings and metadata.
pub fn audited(path: &str, code: tonic::Code, recorded_with_change: bool) -> bool {
    if code != tonic::Code::Ok {
        return true;
    }
    if recorded_with_change {
        return false;
    }
    let method = path.rsplit('/').next().unwrap_or_default();
    match of(path) {
        Some(Policy::Scoped(Permission::Read)) => matches!(
            method,
            "DownloadArtifact"
                | "CreateDownloadLink"
                | "DiffVersions"
                | "Search"
                | "SearchByTags"
                | "SearchByMetadata"
                | "SearchByDependencies"
                | "WatchEvents"
        ),
        Some(Policy::Authenticated) => false,
        Some(Policy::Scoped(_)) => !matches!(
            method,
            "ListApiKeys"
                | "ListRoleBindings"
                | "GetArtifactPermissions"
                | "GetServerStatus"
                | "GetFallbackStatus"
                | "GetFallbackMetrics"
                | "GetAuditTrail"
                | "ExportAuditLog"
                | "VerifyAuditLog"
                | "GetEncryptionStatus"
                | "ListGarbageCollections"
                | "ListRetentionPolicies"
                | "GetRetentionPolicy"
                | "ListRetentionRuns"
                | "GetRetentionRun"
                | "ListLegalHolds"
                | "ListTrash"
        ),
        None => true,
    }
}

//! Pure types and rules: errors, name validation, semantic versions, content types.
//! No I/O here.

pub mod access;
pub mod artifact;
pub mod audit;
pub mod backup;
pub mod content_type;
pub mod delivery;
pub mod dependency;
pub mod encryption;
pub mod error;
pub mod event;
pub mod lifecycle;
pub mod millis;
pub mod names;
pub mod retention;
pub mod run;
pub mod secret;
pub mod version;

pub use artifact::{
    Artifact, ArtifactId, ArtifactLink, ArtifactVersion, NameHolder, Scope, StorageStats, Timestamp,
};
pub use error::{Error, Result};
pub use lifecycle::{Alias, LifecycleState, Transition, VersionRef};
pub use secret::Secret;

/// Microseconds since the Unix epoch: the catalog's unit of time.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_micros() as i64)
        .unwrap_or(0)
}

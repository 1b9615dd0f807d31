//! The one closed error type of the service. Every layer converts its failures into this
//! enum; `api::status` maps it onto gRPC codes in exactly one place.

use std::fmt;

/// What went wrong, in terms a caller can act on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A named thing does not exist (or is not visible in the caller's tenant and project).
    #[error("{0}")]
    NotFound(String),
    /// The thing to create exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// A request field is malformed. `field` names the offending field.
    #[error("{field}: {message}")]
    InvalidArgument { field: &'static str, message: String },
    /// The request is well-formed but the current state forbids it (lifecycle, stale version).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A concurrent change won; retrying from fresh state may succeed.
    #[error("{0}")]
    Aborted(String),
    /// A read range lies outside the content; a cursor outside the retained history.
    #[error("{0}")]
    OutOfRange(String),
    /// The caller cannot keep up (a change stream it reads too slowly); it may resume.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A dependency (catalog or object store) cannot be reached right now.
    #[error("{0}")]
    Unavailable(String),
    /// Stored bytes do not match their hash.
    #[error("{0}")]
    DataLoss(String),
    /// The caller did not prove who it is: no credential, or one that is not accepted.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is known and sees the resource, but its roles do not allow the action.
    #[error("{0}")]
    PermissionDenied(String),
    /// The caller went away or the server is shutting down.
    #[error("{0}")]
    Cancelled(String),
    /// A bug or an unexpected failure; the message is for operators.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn invalid(field: &'static str, message: impl fmt::Display) -> Self {
        Error::InvalidArgument {
            field,
            message: message.to_string(),
        }
    }

    pub fn not_found(message: impl fmt::Display) -> Self {
        Error::NotFound(message.to_string())
    }

    pub fn internal(message: impl fmt::Display) -> Self {
        Error::Internal(message.to_string())
    }

    /// Whether the same request may succeed if repeated later without change.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable(_) | Error::Aborted(_))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

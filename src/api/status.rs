//! The one place where service errors become gRPC statuses.

use crate::domain::Error;
use tonic::{Code, Status};

/// The one mapping of service errors onto gRPC codes; handlers use `?`.
impl From<Error> for Status {
    fn from(error: Error) -> Status {
        to_status(error)
    }
}

fn to_status(error: Error) -> Status {
    let code = match &error {
        Error::NotFound(_) => Code::NotFound,
        Error::AlreadyExists(_) => Code::AlreadyExists,
        Error::InvalidArgument { .. } => Code::InvalidArgument,
        Error::FailedPrecondition(_) => Code::FailedPrecondition,
        Error::Aborted(_) => Code::Aborted,
        Error::OutOfRange(_) => Code::OutOfRange,
        Error::ResourceExhausted(_) => Code::ResourceExhausted,
        Error::Unavailable(_) => Code::Unavailable,
        Error::DataLoss(_) => Code::DataLoss,
        Error::Cancelled(_) => Code::Cancelled,
        Error::Unauthenticated(_) => Code::Unauthenticated,
        Error::PermissionDenied(_) => Code::PermissionDenied,
        Error::Internal(_) => Code::Internal,
    };
    if code == Code::Internal || code == Code::DataLoss {
        tracing::error!(error = %error, "request failed");
    }
    Status::new(code, error.to_string())
}

/// A status that arrived on a request stream while reading the message that carries `field`
/// (the client cancelled or broke the stream, or sent a message too large to decode).
pub fn from_stream_status(field: &'static str, status: Status) -> Error {
    match status.code() {
        Code::Cancelled | Code::DeadlineExceeded => {
            Error::Cancelled(format!("the request stream ended early: {}", status.message()))
        }
        Code::OutOfRange | Code::ResourceExhausted => Error::invalid(
            field,
            format!("the message could not be accepted: {}", status.message()),
        ),
        _ => Error::invalid(
            field,
            format!(
                "the request stream failed: {} ({:?})",
                status.message(),
                status.code()
            ),
        ),
    }
}

//! Typed errors for one event, and their one mapping to the wire (`EventError` and `Status`).
//!
//! A verdict is data, never an error: these are only for "could not decide" (bad input, unknown
//! thread). Codes are stable strings: they label the error metric and clients branch on them.

use super::pb;

/// Why one event or request could not be decided.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The request is malformed; the message names the field.
    #[error("{field}: {message}")]
    InvalidArgument { field: String, message: String },
    /// A thread the request refers to is unknown.
    #[error("{0}")]
    NotFound(String),
    /// The request is well-formed but cannot apply to the thread as it is.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The thread to create exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The caller may not touch this tenant's threads.
    #[error("{0}")]
    PermissionDenied(String),
    /// The shared state store cannot answer (`--state-fail closed`); retry.
    #[error("{0}")]
    Unavailable(String),
}

impl EventError {
    /// A bad field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> EventError {
        EventError::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The stable reason code.
    pub fn code(&self) -> &'static str {
        match self {
            EventError::InvalidArgument { .. } => "INVALID_ARGUMENT",
            EventError::NotFound(_) => "NOT_FOUND",
            EventError::FailedPrecondition(_) => "FAILED_PRECONDITION",
            EventError::AlreadyExists(_) => "ALREADY_EXISTS",
            EventError::PermissionDenied(_) => "PERMISSION_DENIED",
            EventError::Unavailable(_) => "UNAVAILABLE",
        }
    }
}

impl From<&EventError> for pb::EventError {
    fn from(e: &EventError) -> Self {
        pb::EventError {
            code: e.code().to_string(),
            message: e.to_string(),
        }
    }
}

impl From<EventError> for tonic::Status {
    fn from(e: EventError) -> Self {
        let message = e.to_string();
        match e {
            EventError::InvalidArgument { .. } => tonic::Status::invalid_argument(message),
            EventError::NotFound(_) => tonic::Status::not_found(message),
            EventError::FailedPrecondition(_) => tonic::Status::failed_precondition(message),
            EventError::AlreadyExists(_) => tonic::Status::already_exists(message),
            EventError::PermissionDenied(_) => tonic::Status::permission_denied(message),
            EventError::Unavailable(_) => tonic::Status::unavailable(message),
        }
    }
}

//! The error every layer of the external tier's stack fails with, and how any layer's error
//! reads as a [`Failure`]. Shared by `transport` (which raises it) and `breaker` (which counts
//! it), so that neither depends on the other.

use std::fmt;

use tower::BoxError;

use super::Failure;

/// A failure inside the stack; `connect` marks one that never reached the server (retried).
#[derive(Debug)]
pub(in crate::classify::external) struct Fail {
    pub failure: Failure,
    pub connect: bool,
}

impl Fail {
    pub(in crate::classify::external) fn new(failure: Failure) -> Fail {
        Fail {
            failure,
            connect: false,
        }
    }
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.failure {
            Failure::Status(code) => write!(f, "external classifier answered HTTP {code}"),
            other => write!(f, "external classifier call failed: {}", other.cause()),
        }
    }
}

impl std::error::Error for Fail {}

/// The failure a layer's error stands for.
pub(in crate::classify::external) fn failure_of(error: &BoxError) -> Failure {
    if let Some(fail) = error.downcast_ref::<Fail>() {
        fail.failure
    } else if error.is::<tower::timeout::error::Elapsed>() {
        Failure::Timeout
    } else if error.is::<tower::load_shed::error::Overloaded>() {
        Failure::Overloaded
    } else {
        Failure::Connect
    }
}

//! tonic glue: the generated types, validation, domain ↔ wire conversion, the error mapping,
//! the request path ([`engine`]) and the `ModerationService` implementation. A handler reads:
//! decode → validate → decide → encode; the deciding is `engine`'s.
//!
//! Imports run one way: `service` → `engine` → `convert`, `validate`, `error`, `pb`.

pub mod auth;
pub mod cascade;
pub mod convert;
pub mod engine;
mod error;
pub mod oversize;
mod service;
pub mod validate;

pub use error::EventError;
pub use service::{ModerationApi, StreamLimits};

/// The generated protobuf types and gRPC stubs of `threadwarden.v1`.
pub mod pb {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("threadwarden.v1");

    /// The encoded descriptor set, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("threadwarden_descriptor");
}

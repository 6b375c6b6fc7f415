pub mod domain;
pub mod config;
pub mod crisis;
pub mod policy;
pub mod state;
pub mod api { pub mod pb { tonic::include_proto!("threadwarden.v1"); } }

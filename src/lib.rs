pub mod domain;
pub mod policy;
pub mod api { pub mod pb { tonic::include_proto!("threadwarden.v1"); } }

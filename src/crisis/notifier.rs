//! The crisis notifier: POSTs a small JSON notice to a webhook when a thread enters crisis, so a
//! human team can follow up.
//!
//! A notice holds the keyed thread hash, the crisis kind, the locale and a timestamp: never text.
//! It goes through a bounded queue to one worker task with a per-attempt timeout and exponential
//! backoff; a full queue or exhausted retries drop the notice and count it. A verdict never waits
//! on the webhook.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tokio::sync::mpsc;

use crate::domain::CrisisKind;
use crate::telemetry::Metrics;

/// Webhook settings.
#[derive(Clone, Debug)]
pub struct NotifierConfig {
    /// `http://` or `https://` URL receiving the POSTs.
    pub url: String,
    /// Notices waiting for the worker; beyond, new notices are dropped.
    pub queue: usize,
    /// Attempts per notice, the first included.
    pub attempts: u32,
    /// Backoff before the first retry; doubled for each further one.
    pub backoff: Duration,
    /// Timeout of one attempt.
    pub timeout: Duration,
}

impl NotifierConfig {
    /// Defaults for `url`: 1024 queued, 4 attempts, 200 ms backoff doubling, 2 s per attempt.
    pub fn new(url: impl Into<String>) -> NotifierConfig {
        NotifierConfig {
            url: url.into(),
            queue: 1024,
            attempts: 4,
            backoff: Duration::from_millis(200),
            timeout: Duration::from_secs(2),
        }
    }
}

/// One crisis notice.
#[derive(Clone, Debug)]
pub struct Notice {
    pub thread: String,
    pub kind: CrisisKind,
    pub locale: String,
    pub policy_version: String,
}

/// A handle for queueing notices; cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    tx: mpsc::Sender<Notice>,
    metrics: Arc<Metrics>,
}

/// Why the notifier could not start.
#[derive(Debug, thiserror::Error)]
#[error("crisis webhook {url:?}: {message}")]
pub struct NotifierError {
    url: String,
    message: String,
}

impl Notifier {
    /// Starts the worker task (call inside a tokio runtime).
    pub fn start(config: NotifierConfig, metrics: Arc<Metrics>) -> Result<Notifier, NotifierError> {
        let uri: hyper::Uri = config
            .url
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| NotifierError {
                url: config.url.clone(),
                message: e.to_string(),
            })?;
        if !matches!(uri.scheme_str(), Some("http") | Some("https")) {
            return Err(NotifierError {
                url: config.url.clone(),
                message: "the URL must start with http:// or https://".into(),
            });
        }
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        tokio::spawn(worker(config, uri, rx, metrics.clone()));
        Ok(Notifier { tx, metrics })
    }

    /// Queues a notice; never blocks.
    pub fn notify(&self, notice: Notice) {
        if self.tx.try_send(notice).is_err() {
            self.metrics.notification("dropped");
        }
    }
}

async fn worker(
    config: NotifierConfig,
    uri: hyper::Uri,
    mut rx: mpsc::Receiver<Notice>,
    metrics: Arc<Metrics>,
) {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    while let Some(notice) = rx.recv().await {
        let body = json!({
            "event": "crisis",
            "thread": notice.thread,
            "kind": notice.kind.name(),
            "locale": notice.locale,
            "policy_version": notice.policy_version,
            "ts": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
        })
        .to_string();
        let mut delay = config.backoff;
        let mut delivered = false;
        for attempt in 1..=config.attempts.max(1) {
            let request = hyper::Request::post(uri.clone())
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .header(
                    hyper::header::USER_AGENT,
                    concat!("threadwarden/", env!("CARGO_PKG_VERSION")),
                )
                .body(Full::new(Bytes::from(body.clone())));
            let Ok(request) = request else { break };
            let outcome = tokio::time::timeout(config.timeout, client.request(request)).await;
            match outcome {
                Ok(Ok(response)) if response.status().is_success() => {
                    delivered = true;
                    break;
                }
                Ok(Ok(response)) => {
                    tracing::warn!(
                        status = response.status().as_u16(),
                        attempt,
                        "crisis webhook refused the notice"
                    );
                }
                Ok(Err(e)) => tracing::warn!(error = %e, attempt, "crisis webhook unreachable"),
                Err(_) => tracing::warn!(attempt, "crisis webhook timed out"),
            }
            if attempt < config.attempts {
                metrics.notification("retried");
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2);
            }
        }
        metrics.notification(if delivered { "sent" } else { "failed" });
    }
}

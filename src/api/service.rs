//! The `ModerationService` implementation: thin, every decision is `Engine`'s.
//!
//! `Moderate` runs one task per stream that decides requests in order and queues at most
//! `max_in_flight` answers the client has not read yet. A client that stops reading backs up
//! into that bound and then into HTTP/2 flow control (its sends block); if it does not read for
//! `slow_consumer_deadline`, the stream ends with DEADLINE_EXCEEDED after the queued answers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::EventError;
use super::auth::Principal;
use super::pb;
use super::pb::moderation_service_server::ModerationService;
use crate::engine::{Decided, Engine};
use crate::telemetry::{self, EVENT_TARGET, Metrics};

/// The W3C trace context of a call, from its `traceparent` / `tracestate` metadata.
#[derive(Clone, Default)]
struct CallTrace {
    traceparent: String,
    tracestate: String,
}

impl CallTrace {
    fn of<T>(request: &Request<T>) -> CallTrace {
        let get = |k: &str| {
            request
                .metadata()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        CallTrace {
            traceparent: get("traceparent"),
            tracestate: get("tracestate"),
        }
    }
}

/// Decides one event inside its own span: joined to the event's (or the call's) trace, with the
/// decision as attributes and never any text.
fn decide_traced(
    engine: &Engine,
    event: &pb::ConversationEvent,
    call: &CallTrace,
) -> Result<Decided, EventError> {
    if !telemetry::event_spans() {
        return engine.decide(event);
    }
    let span = tracing::info_span!(
        target: EVENT_TARGET,
        "threadwarden.decide",
        otel.kind = "server",
        thread.hash = Empty,
        verdict.action = Empty,
        verdict.reason = Empty,
        verdict.enforced = Empty,
        verdict.shadow_action = Empty,
        verdict.warning = Empty,
        verdict.categories = Empty,
        crisis.kind = Empty,
        decision.latency_us = Empty,
        classification.latency_us = Empty,
        policy.version = Empty,
        error.code = Empty,
    );
    if span.is_disabled() {
        return engine.decide(event);
    }
    let (parent, state) = if event.traceparent.is_empty() {
        (call.traceparent.as_str(), call.tracestate.as_str())
    } else {
        (event.traceparent.as_str(), "")
    };
    if !parent.is_empty() {
        let _ = span.set_parent(telemetry::extract_context(parent, state));
    }
    let _enter = span.enter();
    let result = engine.decide(event);
    match &result {
        Ok(d) => {
            let v = &d.decision;
            let categories: Vec<&str> = crate::domain::Category::ALL
                .into_iter()
                .filter(|c| d.scores.get(*c) > 0.0)
                .map(|c| c.name())
                .collect();
            span.record("thread.hash", engine.log_hash(d.thread_key).as_str());
            span.record("verdict.action", v.action.name());
            span.record("verdict.reason", v.reason.name());
            span.record("verdict.enforced", v.enforced);
            span.record("verdict.shadow_action", v.shadow_action.name());
            span.record("verdict.warning", v.warning);
            span.record("verdict.categories", categories.join(",").as_str());
            span.record("crisis.kind", v.crisis.map(|k| k.name()).unwrap_or("none"));
            span.record("decision.latency_us", d.decide_time.as_secs_f64() * 1e6);
            span.record(
                "classification.latency_us",
                d.classify_time.as_secs_f64() * 1e6,
            );
            span.record("policy.version", d.verdict.policy_version.as_str());
        }
        Err(e) => {
            span.record("error.code", e.code());
        }
    }
    result
}

/// Keeps the open-streams gauge honest: dropped with the stream, however it ends.
struct StreamGauge(Arc<Metrics>);

impl StreamGauge {
    fn open(metrics: &Arc<Metrics>) -> StreamGauge {
        metrics.stream_delta(1);
        StreamGauge(metrics.clone())
    }
}

impl Drop for StreamGauge {
    fn drop(&mut self) {
        self.0.stream_delta(-1);
    }
}

/// Limits on `Moderate` streams.
#[derive(Clone, Debug)]
pub struct StreamLimits {
    /// Open `Moderate` streams across all connections; beyond, RESOURCE_EXHAUSTED.
    pub max_streams: usize,
    /// Answers decided but not yet read by the client, per stream.
    pub max_in_flight: usize,
    /// How long a full stream may wait for its client to read before it is ended.
    pub slow_consumer_deadline: Duration,
    /// During shutdown, a stream idle for this long is ended with UNAVAILABLE (reconnect).
    pub drain_idle: Duration,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_streams: 10_000,
            max_in_flight: 64,
            slow_consumer_deadline: Duration::from_secs(30),
            drain_idle: Duration::from_millis(500),
        }
    }
}

/// The gRPC service over an `Engine`.
#[derive(Clone)]
pub struct ModerationApi {
    engine: Arc<Engine>,
    limits: StreamLimits,
    open: Arc<AtomicUsize>,
    draining: watch::Receiver<bool>,
}

impl ModerationApi {
    /// The service for `engine`; `draining` turns true when shutdown begins.
    pub fn new(
        engine: Arc<Engine>,
        limits: StreamLimits,
        draining: watch::Receiver<bool>,
    ) -> ModerationApi {
        ModerationApi {
            engine,
            limits,
            open: Arc::new(AtomicUsize::new(0)),
            draining,
        }
    }
}

/// The next request of a stream; during shutdown, `Err` once the stream has been idle for
/// `drain_idle`.
async fn next_request(
    inbound: &mut Streaming<pb::ModerateRequest>,
    draining: &mut watch::Receiver<bool>,
    drain_idle: Duration,
) -> Result<Option<Result<pb::ModerateRequest, Status>>, ()> {
    loop {
        if *draining.borrow() {
            return tokio::time::timeout(drain_idle, inbound.next())
                .await
                .map_err(|_| ());
        }
        tokio::select! {
            item = inbound.next() => return Ok(item),
            changed = draining.changed() => {
                if changed.is_err() {
                    // The server is gone: drain as if shutting down.
                    return tokio::time::timeout(drain_idle, inbound.next()).await.map_err(|_| ());
                }
            }
        }
    }
}

fn principal<T>(request: &Request<T>) -> Principal {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .unwrap_or_else(Principal::any)
}

/// `Ok` if `principal` may touch `tenant`'s threads; the counted PERMISSION_DENIED otherwise.
fn check_tenant(engine: &Engine, principal: &Principal, tenant: &str) -> Result<(), EventError> {
    if principal.allows(tenant) {
        Ok(())
    } else {
        Err(tenant_denied(engine, tenant))
    }
}

fn tenant_denied(engine: &Engine, tenant: &str) -> EventError {
    engine.metrics().error("PERMISSION_DENIED");
    EventError::PermissionDenied(format!(
        "tenant_id {tenant:?} is not allowed for this token"
    ))
}

/// Decides one stream request; a bad event becomes an `EventError` for that event alone.
fn respond(
    engine: &Engine,
    req: pb::ModerateRequest,
    call: &CallTrace,
    principal: &Principal,
) -> pb::ModerateResponse {
    use pb::moderate_response::Result as R;
    let Some(event) = req.event else {
        engine.metrics().error("INVALID_ARGUMENT");
        return pb::ModerateResponse {
            event_id: String::new(),
            thread_id: String::new(),
            result: Some(R::Error(pb::EventError {
                code: "INVALID_ARGUMENT".into(),
                message: "event: required".into(),
            })),
        };
    };
    let decided = check_tenant(engine, principal, &event.tenant_id)
        .and_then(|()| decide_traced(engine, &event, call));
    let result = match decided {
        Ok(decided) => R::Verdict(decided.verdict),
        Err(e) => R::Error((&e).into()),
    };
    pb::ModerateResponse {
        event_id: event.event_id,
        thread_id: event.thread_id,
        result: Some(result),
    }
}

/// Holds a stream's place in the limits and gauges; released however the stream ends.
struct StreamSlot {
    open: Arc<AtomicUsize>,
    _gauge: StreamGauge,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The answers of one stream, then its fate: a final status if the stream was cut short.
struct Responses {
    rx: mpsc::Receiver<Result<pb::ModerateResponse, Status>>,
    fate: Option<oneshot::Receiver<Status>>,
}

impl Stream for Responses {
    type Item = Result<pb::ModerateResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(item)) => return Poll::Ready(Some(item)),
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {}
        }
        let Some(fate) = self.fate.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(fate).poll(cx) {
            Poll::Ready(Ok(status)) => {
                self.fate = None;
                Poll::Ready(Some(Err(status)))
            }
            Poll::Ready(Err(_)) => {
                self.fate = None;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[tonic::async_trait]
impl ModerationService for ModerationApi {
    type ModerateStream = Pin<Box<dyn Stream<Item = Result<pb::ModerateResponse, Status>> + Send>>;

    async fn moderate(
        &self,
        request: Request<Streaming<pb::ModerateRequest>>,
    ) -> Result<Response<Self::ModerateStream>, Status> {
        let limits = self.limits.clone();
        if self.open.fetch_add(1, Ordering::Relaxed) >= limits.max_streams {
            self.open.fetch_sub(1, Ordering::Relaxed);
            self.engine.metrics().error("RESOURCE_EXHAUSTED");
            return Err(Status::resource_exhausted(format!(
                "too many open Moderate streams (limit {}); retry with backoff or multiplex more threads per stream",
                limits.max_streams
            )));
        }
        let slot = StreamSlot {
            open: self.open.clone(),
            _gauge: StreamGauge::open(self.engine.metrics()),
        };
        let engine = self.engine.clone();
        let call = CallTrace::of(&request);
        let principal = principal(&request);
        let mut inbound = request.into_inner();
        let mut draining = self.draining.clone();
        let (tx, rx) = mpsc::channel(limits.max_in_flight.max(1));
        let (fate_tx, fate_rx) = oneshot::channel();
        tokio::spawn(async move {
            let _slot = slot;
            loop {
                let item = match next_request(&mut inbound, &mut draining, limits.drain_idle).await
                {
                    Ok(Some(item)) => item,
                    Ok(None) => return,
                    Err(()) => {
                        // Every event received was answered; the client reconnects elsewhere.
                        let _ = fate_tx.send(Status::unavailable(
                            "the server is shutting down; every event sent so far was answered: reconnect to continue",
                        ));
                        return;
                    }
                };
                let (out, last) = match item {
                    Ok(req) => (Ok(respond(&engine, req, &call, &principal)), false),
                    // A transport or decode error ends the call: nothing can be attributed.
                    Err(status) => (Err(status), true),
                };
                let sent = match tx.try_send(out) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                    Err(mpsc::error::TrySendError::Full(out)) => {
                        match tokio::time::timeout(limits.slow_consumer_deadline, tx.send(out))
                            .await
                        {
                            Ok(Ok(())) => true,
                            Ok(Err(_)) => false,
                            Err(_) => {
                                engine.metrics().error("DEADLINE_EXCEEDED");
                                let _ = fate_tx.send(Status::deadline_exceeded(format!(
                                    "the client did not read its answers for {:?} with {} unread; stream ended",
                                    limits.slow_consumer_deadline, limits.max_in_flight
                                )));
                                return;
                            }
                        }
                    }
                };
                if !sent || last {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(Responses {
            rx,
            fate: Some(fate_rx),
        })))
    }

    async fn evaluate(
        &self,
        request: Request<pb::EvaluateRequest>,
    ) -> Result<Response<pb::EvaluateResponse>, Status> {
        let call = CallTrace::of(&request);
        let principal = principal(&request);
        let event = request.into_inner().event.ok_or_else(|| {
            self.engine.metrics().error("INVALID_ARGUMENT");
            Status::invalid_argument("event: required")
        })?;
        check_tenant(&self.engine, &principal, &event.tenant_id)?;
        let decided = decide_traced(&self.engine, &event, &call)?;
        Ok(Response::new(pb::EvaluateResponse {
            verdict: Some(decided.verdict),
        }))
    }

    async fn get_thread(
        &self,
        request: Request<pb::GetThreadRequest>,
    ) -> Result<Response<pb::GetThreadResponse>, Status> {
        let principal = principal(&request);
        let req = request.into_inner();
        check_tenant(&self.engine, &principal, &req.tenant_id)?;
        let thread = self.engine.thread(&req.tenant_id, &req.thread_id)?;
        Ok(Response::new(pb::GetThreadResponse {
            thread: Some(thread),
        }))
    }

    async fn submit_feedback(
        &self,
        request: Request<pb::SubmitFeedbackRequest>,
    ) -> Result<Response<pb::SubmitFeedbackResponse>, Status> {
        let principal = principal(&request);
        let req = request.into_inner();
        check_tenant(&self.engine, &principal, &req.tenant_id)?;
        self.engine.feedback(&req)?;
        Ok(Response::new(pb::SubmitFeedbackResponse {}))
    }
}

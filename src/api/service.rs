//! The `ModerationService` implementation: thin, every decision is `Engine`'s.
//!
//! `Moderate` maps the inbound stream lazily, one response per request in order: a request is
//! decided only when the client is ready to read its answer, so a slow reader backs up into
//! HTTP/2 flow control rather than into a buffer here.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::pb;
use super::pb::moderation_service_server::ModerationService;
use super::EventError;
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
    let span = tracing::info_span!(
        target: EVENT_TARGET,
        "threadwarden.decide",
        otel.kind = "server",
        event.kind = Empty,
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
            span.record("thread.hash", d.thread_hash.as_str());
            span.record("verdict.action", v.action.name());
            span.record("verdict.reason", v.reason.name());
            span.record("verdict.enforced", v.enforced);
            span.record("verdict.shadow_action", v.shadow_action.name());
            span.record("verdict.warning", v.warning);
            span.record("verdict.categories", categories.join(",").as_str());
            span.record("crisis.kind", v.crisis.map(|k| k.name()).unwrap_or("none"));
            span.record("decision.latency_us", d.decide_time.as_secs_f64() * 1e6);
            span.record("classification.latency_us", d.classify_time.as_secs_f64() * 1e6);
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

/// The gRPC service over an `Engine`.
#[derive(Clone)]
pub struct ModerationApi {
    engine: Arc<Engine>,
}

impl ModerationApi {
    /// The service for `engine`.
    pub fn new(engine: Arc<Engine>) -> ModerationApi {
        ModerationApi { engine }
    }
}

/// Decides one stream request; a bad event becomes an `EventError` for that event alone.
fn respond_traced(engine: &Engine, req: pb::ModerateRequest, call: &CallTrace) -> pb::ModerateResponse {
    use pb::moderate_response::Result as R;
    let Some(event) = req.event else {
        return pb::ModerateResponse {
            event_id: String::new(),
            result: Some(R::Error(pb::EventError {
                code: "INVALID_ARGUMENT".into(),
                message: "event: required".into(),
            })),
        };
    };
    let result = match decide_traced(engine, &event, call) {
        Ok(decided) => R::Verdict(decided.verdict),
        Err(e) => {
            tracing::debug!(code = e.code(), "event rejected");
            R::Error((&e).into())
        }
    };
    pb::ModerateResponse {
        event_id: event.event_id,
        result: Some(result),
    }
}

type ModerateStream = Pin<Box<dyn Stream<Item = Result<pb::ModerateResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ModerationService for ModerationApi {
    type ModerateStream = ModerateStream;

    async fn moderate(
        &self,
        request: Request<Streaming<pb::ModerateRequest>>,
    ) -> Result<Response<Self::ModerateStream>, Status> {
        let engine = self.engine.clone();
        let call = CallTrace::of(&request);
        let gauge = StreamGauge::open(engine.metrics());
        let responses = request.into_inner().map(move |req| {
            let _open = &gauge;
            req.map(|req| respond_traced(&engine, req, &call))
        });
        Ok(Response::new(Box::pin(responses)))
    }

    async fn evaluate(
        &self,
        request: Request<pb::EvaluateRequest>,
    ) -> Result<Response<pb::EvaluateResponse>, Status> {
        let call = CallTrace::of(&request);
        let event = request
            .into_inner()
            .event
            .ok_or_else(|| Status::invalid_argument("event: required"))?;
        let decided = decide_traced(&self.engine, &event, &call)?;
        Ok(Response::new(pb::EvaluateResponse {
            verdict: Some(decided.verdict),
        }))
    }

    async fn get_thread(
        &self,
        request: Request<pb::GetThreadRequest>,
    ) -> Result<Response<pb::GetThreadResponse>, Status> {
        let req = request.into_inner();
        let thread = self.engine.thread(&req.tenant_id, &req.thread_id)?;
        Ok(Response::new(pb::GetThreadResponse {
            thread: Some(thread),
        }))
    }

    async fn submit_feedback(
        &self,
        request: Request<pb::SubmitFeedbackRequest>,
    ) -> Result<Response<pb::SubmitFeedbackResponse>, Status> {
        self.engine.feedback(&request.into_inner())?;
        Ok(Response::new(pb::SubmitFeedbackResponse {}))
    }
}

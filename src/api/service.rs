//! The `ModerationService` implementation: thin, every decision is `Engine`'s.
//!
//! `Moderate` maps the inbound stream lazily, one response per request in order: a request is
//! decided only when the client is ready to read its answer, so a slow reader backs up into
//! HTTP/2 flow control rather than into a buffer here.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::pb;
use super::pb::moderation_service_server::ModerationService;
use crate::engine::Engine;

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
pub fn respond(engine: &Engine, req: pb::ModerateRequest) -> pb::ModerateResponse {
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
    let result = match engine.decide(&event) {
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
        let responses = request
            .into_inner()
            .map(move |req| req.map(|req| respond(&engine, req)));
        Ok(Response::new(Box::pin(responses)))
    }

    async fn evaluate(
        &self,
        request: Request<pb::EvaluateRequest>,
    ) -> Result<Response<pb::EvaluateResponse>, Status> {
        let event = request
            .into_inner()
            .event
            .ok_or_else(|| Status::invalid_argument("event: required"))?;
        let decided = self.engine.decide(&event)?;
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

//! The baseline: a bare server on the same proto that decodes each `ModerateRequest` and answers
//! a fixed `ModerateResponse` (a benign CONTINUE verdict; only the event and thread ids are
//! copied from the request so that the client's ordering checks hold), and the same for unary
//! `Evaluate`. No validation, classification, state, policy, auth, timeouts, health or
//! reflection: what is left is tonic, HTTP/2 and protobuf, the floor under any sidecar.

use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use threadwarden::api::pb;
use threadwarden::api::pb::moderation_service_server::{
    ModerationService, ModerationServiceServer,
};

/// Flags of `threadwarden-bench echo-server`.
#[derive(clap::Args, Debug, Clone)]
pub struct EchoArgs {
    /// Address to listen on; its actual address is logged as `{"message":"serving","listen":..}`.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// HTTP/2 streams one connection may have open at once (the sidecar's default).
    #[arg(long, default_value_t = 1024)]
    pub max_streams_per_connection: u32,
    /// TCP_NODELAY on accepted connections: on, as a bare tonic server (`Server::serve`) has it.
    /// `false` mirrors a listener passed to `serve_with_incoming*`, which leaves Nagle on.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub tcp_nodelay: bool,
}

/// The fixed verdict, as the sidecar would answer a benign first turn.
fn verdict(thread_id: String) -> pb::Verdict {
    pb::Verdict {
        thread_id,
        action: pb::Action::Continue as i32,
        reason: pb::Reason::Benign as i32,
        thread: Some(pb::ThreadSummary {
            turn: 1,
            ..Default::default()
        }),
        enforced: true,
        shadow_action: pb::Action::Continue as i32,
        policy_version: "builtin".into(),
        ..Default::default()
    }
}

fn answer(req: pb::ModerateRequest) -> pb::ModerateResponse {
    let (event_id, thread_id) = req
        .event
        .map(|e| (e.event_id, e.thread_id))
        .unwrap_or_default();
    pb::ModerateResponse {
        event_id,
        result: Some(pb::moderate_response::Result::Verdict(verdict(
            thread_id.clone(),
        ))),
        thread_id,
    }
}

/// The echo service.
#[derive(Clone, Copy, Debug, Default)]
pub struct Echo;

#[tonic::async_trait]
impl ModerationService for Echo {
    type ModerateStream = Pin<Box<dyn Stream<Item = Result<pb::ModerateResponse, Status>> + Send>>;

    async fn moderate(
        &self,
        request: Request<Streaming<pb::ModerateRequest>>,
    ) -> Result<Response<Self::ModerateStream>, Status> {
        let inbound = request.into_inner();
        Ok(Response::new(Box::pin(inbound.map(|r| r.map(answer)))))
    }

    async fn evaluate(
        &self,
        request: Request<pb::EvaluateRequest>,
    ) -> Result<Response<pb::EvaluateResponse>, Status> {
        let thread_id = request
            .into_inner()
            .event
            .map(|e| e.thread_id)
            .unwrap_or_default();
        Ok(Response::new(pb::EvaluateResponse {
            verdict: Some(verdict(thread_id)),
        }))
    }

    async fn get_thread(
        &self,
        _request: Request<pb::GetThreadRequest>,
    ) -> Result<Response<pb::GetThreadResponse>, Status> {
        Ok(Response::new(pb::GetThreadResponse {
            thread: Some(pb::ThreadSummary::default()),
        }))
    }

    async fn submit_feedback(
        &self,
        _request: Request<pb::SubmitFeedbackRequest>,
    ) -> Result<Response<pb::SubmitFeedbackResponse>, Status> {
        Ok(Response::new(pb::SubmitFeedbackResponse {}))
    }
}

/// Serves the echo service on `listener` until the future resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    max_streams_per_connection: u32,
    tcp_nodelay: bool,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let incoming =
        tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(tcp_nodelay));
    tonic::transport::Server::builder()
        .max_concurrent_streams(max_streams_per_connection)
        .add_service(ModerationServiceServer::new(Echo))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// `threadwarden-bench echo-server`: the same runtime shape as `serve` (multi-threaded, one worker per
/// core), logging one JSON line when it listens.
pub fn main(args: EchoArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: binding {}: {e}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        println!(
            "{}",
            serde_json::json!({"level": "INFO", "message": "serving", "listen": addr, "server": "echo"})
        );
        match serve(
            listener,
            args.max_streams_per_connection,
            args.tcp_nodelay,
            threadwarden::server::shutdown_signal(),
        )
        .await
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

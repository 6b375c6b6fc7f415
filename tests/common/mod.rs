//! Shared helpers: a real server on 127.0.0.1:0 stopped by a oneshot, and event builders.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use threadwarden::api::pb;
use threadwarden::api::pb::conversation_event::Payload;
use threadwarden::api::pb::moderation_service_client::ModerationServiceClient;
use threadwarden::server::{App, ServeConfig};
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// A running server; dropping `stop` (or sending on it) shuts it down.
pub struct TestServer {
    pub addr: SocketAddr,
    pub stop: Option<oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<Result<(), threadwarden::server::ServerError>>,
}

impl TestServer {
    pub async fn client(&self) -> ModerationServiceClient<Channel> {
        ModerationServiceClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connect")
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connect")
    }

    pub async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

pub async fn start_server(config: ServeConfig) -> TestServer {
    let app = App::build(config).expect("valid config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run(listener, async {
        let _ = rx.await;
    }));
    TestServer {
        addr,
        stop: Some(tx),
        task,
    }
}

/// Opens a `Moderate` stream fed by the returned sender, which queues up to `buffer` requests
/// on the client side.
pub async fn open_stream(
    client: &mut ModerationServiceClient<Channel>,
    buffer: usize,
) -> (
    tokio::sync::mpsc::Sender<pb::ModerateRequest>,
    tonic::Streaming<pb::ModerateResponse>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(buffer);
    let responses = client
        .moderate(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("the stream opens")
        .into_inner();
    (tx, responses)
}

pub async fn start() -> TestServer {
    start_server(ServeConfig::default()).await
}

pub fn event(id: impl Into<String>, thread: &str, payload: Payload) -> pb::ConversationEvent {
    pb::ConversationEvent {
        event_id: id.into(),
        thread_id: thread.into(),
        tenant_id: "tenant-a".into(),
        model: "claude-opus-4-1".into(),
        locale: "en-GB".into(),
        payload: Some(payload),
        signals: vec![],
        traceparent: String::new(),
    }
}

pub fn user(id: impl Into<String>, thread: &str, text: &str) -> pb::ConversationEvent {
    event(
        id,
        thread,
        Payload::UserMessage(pb::UserMessage { text: text.into() }),
    )
}

/// A user message labelled by the caller's own classifier (independent of ours).
pub fn labelled(
    id: impl Into<String>,
    thread: &str,
    category: pb::Category,
    score: f32,
) -> pb::ConversationEvent {
    let mut e = user(id, thread, "(text withheld in this test)");
    e.signals.push(pb::Signal {
        category: category as i32,
        score,
        source: "test".into(),
    });
    e
}

pub fn assistant(
    id: impl Into<String>,
    thread: &str,
    refused: bool,
    end: bool,
) -> pb::ConversationEvent {
    event(
        id,
        thread,
        Payload::AssistantMessage(pb::AssistantMessage {
            text: "Sure, here is a summary.".into(),
            refused,
            end_conversation_requested: end,
        }),
    )
}

pub fn confirm_end(id: impl Into<String>, thread: &str) -> pb::ConversationEvent {
    event(id, thread, Payload::ConfirmEnd(pb::ConfirmEnd {}))
}

pub fn fork(
    id: impl Into<String>,
    thread: &str,
    parent: &str,
    after_turn: u32,
) -> pb::ConversationEvent {
    event(
        id,
        thread,
        Payload::Fork(pb::ForkThread {
            parent_thread_id: parent.into(),
            after_turn,
        }),
    )
}

pub fn action(v: &pb::Verdict) -> pb::Action {
    pb::Action::try_from(v.action).unwrap()
}

pub fn reason(v: &pb::Verdict) -> pb::Reason {
    pb::Reason::try_from(v.reason).unwrap()
}

pub async fn evaluate(
    client: &mut ModerationServiceClient<Channel>,
    event: pb::ConversationEvent,
) -> pb::Verdict {
    client
        .evaluate(pb::EvaluateRequest { event: Some(event) })
        .await
        .expect("evaluate")
        .into_inner()
        .verdict
        .expect("verdict")
}

pub const BIN: &str = env!("CARGO_BIN_EXE_threadwarden");

/// Starts `serve` on an ephemeral port and returns the child and its address (read from the
/// "serving" log line, so no port is guessed).
// The caller owns the child and waits for it; a panic here fails the test anyway.
#[allow(clippy::zombie_processes)]
pub fn spawn_serve(extra: &[&str]) -> (Child, String, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn threadwarden");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the server logs that it is serving");
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
        if v["message"] == "serving" {
            let addr = v["listen"].as_str().unwrap().to_string();
            return (child, addr, rx);
        }
    }
}

pub fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

pub fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "did not exit within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A CA, a server certificate for `localhost` and a client certificate it signed (rcgen), PEM.
pub struct Pki {
    pub ca: String,
    pub server_cert: String,
    pub server_key: String,
    pub client_cert: String,
    pub client_key: String,
}

pub fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, &ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client_cert = CertificateParams::new(vec!["chat-server".to_string()])
        .unwrap()
        .signed_by(&client_key, &issuer)
        .unwrap();
    Pki {
        ca: ca_cert.pem(),
        server_cert: server_cert.pem(),
        server_key: server_key.serialize_pem(),
        client_cert: client_cert.pem(),
        client_key: client_key.serialize_pem(),
    }
}

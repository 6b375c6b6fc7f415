//! Security and limits against a real server on 127.0.0.1: bearer tokens scoped to tenants, TLS
//! and mTLS with certificates made in the test (rcgen), stream limits, the slow-consumer
//! deadline, and the crisis webhook down, slow and overflowing.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use threadwarden::api::StreamLimits;
use threadwarden::api::pb;
use threadwarden::api::pb::moderation_service_client::ModerationServiceClient;
use threadwarden::crisis::notifier::NotifierConfig;
use threadwarden::server::{ServeConfig, TlsFiles};
use threadwarden::telemetry::Metrics;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const TOKEN_A: &str = "token-for-tenant-a-0123456789";
const TOKEN_B: &str = "token-for-tenant-b-0123456789";
const TOKEN_ALL: &str = "token-for-every-tenant-0123";

fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

fn tenant_event(id: &str, tenant: &str, thread: &str) -> pb::ConversationEvent {
    let mut e = user(id, thread, "hello");
    e.tenant_id = tenant.into();
    e
}

async fn auth_server() -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(
        &tokens,
        format!(
            "tokens:\n  - {{token: {TOKEN_A}, tenants: [a]}}\n  - {{token: {TOKEN_B}, tenants: [b]}}\n  - {{token: {TOKEN_ALL}}}\n"
        ),
    )
    .unwrap();
    let server = start_server(ServeConfig {
        auth_tokens: Some(tokens),
        ..ServeConfig::default()
    })
    .await;
    (server, dir)
}

#[tokio::test]
async fn missing_or_wrong_tokens_are_unauthenticated() {
    let (server, _dir) = auth_server().await;
    let mut client = server.client().await;
    let event = pb::EvaluateRequest {
        event: Some(tenant_event("e", "a", "t")),
    };
    let err = client.evaluate(event.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = client
        .evaluate(with_token(event.clone(), "token-for-tenant-a-012345678"))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unauthenticated,
        "a near miss is still wrong"
    );
    let err = client
        .moderate(tokio_stream::iter(vec![pb::ModerateRequest {
            event: Some(tenant_event("s", "a", "t")),
        }]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    client.evaluate(with_token(event, TOKEN_A)).await.unwrap();
    // Health stays open to probes without a token.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn a_token_for_one_tenant_can_neither_read_nor_write_another() {
    let (server, _dir) = auth_server().await;
    let mut client = server.client().await;
    // Tenant B has a thread "shared-id".
    client
        .evaluate(with_token(
            pb::EvaluateRequest {
                event: Some(tenant_event("b1", "b", "shared-id")),
            },
            TOKEN_B,
        ))
        .await
        .unwrap();
    // Token A: writing B's threads is denied, per event on a stream, and the stream goes on.
    let reqs = vec![
        pb::ModerateRequest {
            event: Some(tenant_event("a1", "b", "shared-id")),
        },
        pb::ModerateRequest {
            event: Some(tenant_event("a2", "a", "shared-id")),
        },
    ];
    let mut stream = client
        .moderate(with_token(tokio_stream::iter(reqs), TOKEN_A))
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    match first.result.unwrap() {
        pb::moderate_response::Result::Error(e) => {
            assert_eq!(e.code, "PERMISSION_DENIED");
            assert!(e.message.contains("tenant_id \"b\""), "{}", e.message);
        }
        other => panic!("expected an error, got {other:?}"),
    }
    let second = stream.next().await.unwrap().unwrap();
    assert!(matches!(
        second.result,
        Some(pb::moderate_response::Result::Verdict(_))
    ));
    // Reading and rating B's thread is denied too.
    let err = client
        .get_thread(with_token(
            pb::GetThreadRequest {
                tenant_id: "b".into(),
                thread_id: "shared-id".into(),
            },
            TOKEN_A,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = client
        .submit_feedback(with_token(
            pb::SubmitFeedbackRequest {
                tenant_id: "b".into(),
                thread_id: "shared-id".into(),
                event_id: "b1".into(),
                rating: pb::Rating::ThumbsUp as i32,
                comment: String::new(),
            },
            TOKEN_A,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = client
        .evaluate(with_token(
            pb::EvaluateRequest {
                event: Some(tenant_event("a3", "b", "x")),
            },
            TOKEN_A,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // B's thread was untouched by A's attempts: still one turn.
    let summary = client
        .get_thread(with_token(
            pb::GetThreadRequest {
                tenant_id: "b".into(),
                thread_id: "shared-id".into(),
            },
            TOKEN_B,
        ))
        .await
        .unwrap()
        .into_inner()
        .thread
        .unwrap();
    assert_eq!(summary.turn, 1);
    // An unrestricted token reaches every tenant.
    client
        .get_thread(with_token(
            pb::GetThreadRequest {
                tenant_id: "b".into(),
                thread_id: "shared-id".into(),
            },
            TOKEN_ALL,
        ))
        .await
        .unwrap();
    server.shutdown().await;
}

async fn tls_server(mtls: bool) -> (TestServer, Pki, tempfile::TempDir) {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let tls = TlsFiles {
        cert: write("server.pem", &pki.server_cert),
        key: write("server.key", &pki.server_key),
        client_ca: mtls.then(|| write("ca.pem", &pki.ca)),
    };
    let server = start_server(ServeConfig {
        tls: Some(tls),
        ..ServeConfig::default()
    })
    .await;
    (server, pki, dir)
}

async fn tls_client(
    addr: std::net::SocketAddr,
    pki: &Pki,
    with_identity: bool,
) -> Result<ModerationServiceClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .domain_name("localhost");
    if with_identity {
        tls = tls.identity(Identity::from_pem(&pki.client_cert, &pki.client_key));
    }
    let channel = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(ModerationServiceClient::new(channel))
}

#[tokio::test]
async fn tls_serves_verified_clients_and_refuses_plaintext() {
    let (server, pki, _dir) = tls_server(false).await;
    let mut client = tls_client(server.addr, &pki, false).await.unwrap();
    let v = evaluate(&mut client, user("t1", "tls", "hello over TLS")).await;
    assert_eq!(action(&v), pb::Action::Continue);
    let plaintext = ModerationServiceClient::connect(format!("http://{}", server.addr)).await;
    let failed = match plaintext {
        Err(_) => true,
        Ok(mut c) => c
            .evaluate(pb::EvaluateRequest {
                event: Some(user("p", "p", "x")),
            })
            .await
            .is_err(),
    };
    assert!(failed, "plaintext must not reach a TLS listener");
    server.shutdown().await;
}

#[tokio::test]
async fn mtls_requires_a_client_certificate_from_the_ca() {
    let (server, pki, _dir) = tls_server(true).await;
    let mut client = tls_client(server.addr, &pki, true).await.unwrap();
    evaluate(&mut client, user("m1", "mtls", "hello")).await;
    let without = tls_client(server.addr, &pki, false).await;
    let failed = match without {
        Err(_) => true,
        Ok(mut c) => c
            .evaluate(pb::EvaluateRequest {
                event: Some(user("m2", "mtls", "x")),
            })
            .await
            .is_err(),
    };
    assert!(failed, "no client certificate, no service");
    // A certificate from another CA is refused too.
    let mut forged = self::pki();
    forged.ca = pki.ca.clone();
    let failed = match tls_client(server.addr, &forged, true).await {
        Err(_) => true,
        Ok(mut c) => c
            .evaluate(pb::EvaluateRequest {
                event: Some(user("m3", "mtls", "x")),
            })
            .await
            .is_err(),
    };
    assert!(failed, "a client certificate from an unknown CA is refused");
    server.shutdown().await;
}

#[tokio::test]
async fn open_streams_beyond_the_limit_are_resource_exhausted() {
    let server = start_server(ServeConfig {
        stream_limits: StreamLimits {
            max_streams: 2,
            ..StreamLimits::default()
        },
        ..ServeConfig::default()
    })
    .await;
    let mut client = server.client().await;
    let (tx1, rx1) = tokio::sync::mpsc::channel(1);
    let (tx2, rx2) = tokio::sync::mpsc::channel(1);
    let s1 = client
        .moderate(tokio_stream::wrappers::ReceiverStream::new(rx1))
        .await
        .unwrap();
    let s2 = client
        .moderate(tokio_stream::wrappers::ReceiverStream::new(rx2))
        .await
        .unwrap();
    let (_tx3, rx3) = tokio::sync::mpsc::channel::<pb::ModerateRequest>(1);
    let err = client
        .moderate(tokio_stream::wrappers::ReceiverStream::new(rx3))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("limit 2"), "{}", err.message());
    // Closing one frees a place.
    drop(tx1);
    let mut s1 = s1.into_inner();
    assert!(s1.next().await.is_none());
    let mut reopened = None;
    for _ in 0..100 {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        if let Ok(s) = client
            .moderate(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        {
            reopened = Some((tx, s));
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (tx, s) = reopened.expect("a place is freed when a stream closes");
    tx.send(pb::ModerateRequest {
        event: Some(user("r", "r", "hi")),
    })
    .await
    .unwrap();
    assert!(s.into_inner().next().await.unwrap().is_ok());
    drop((tx2, s2));
    server.shutdown().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_gets_a_clean_deadline_error() {
    let metrics = Arc::new(Metrics::default());
    let server = start_server(ServeConfig {
        stream_limits: StreamLimits {
            slow_consumer_deadline: Duration::from_millis(300),
            ..StreamLimits::default()
        },
        metrics: metrics.clone(),
        ..ServeConfig::default()
    })
    .await;
    // Small client windows: a client that does not read fills them after a few dozen answers.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap();
    let mut client = ModerationServiceClient::new(channel);
    let (tx, mut responses) = open_stream(&mut client, 8).await;
    // Send far more than fits in flight while not reading; crisis verdicts carry resources, so
    // each answer is about a kilobyte. The sender may block: that is the backpressure we want.
    let sender = tokio::spawn(async move {
        for i in 0..2000 {
            let e = labelled(format!("e{i}"), "slow", pb::Category::SelfHarm, 0.9);
            if tx
                .send(pb::ModerateRequest { event: Some(e) })
                .await
                .is_err()
            {
                return i;
            }
        }
        2000
    });
    // Wait until the server gives up on us (watch its error counter, not the clock).
    let mut waited = 0;
    while !metrics
        .render()
        .contains("threadwarden_errors_total{code=\"DEADLINE_EXCEEDED\"} 1")
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
        assert!(waited < 200, "the slow-consumer deadline never fired");
    }
    // Now read: the queued answers, then the deadline status, then the end.
    let mut answered = 0;
    let status = loop {
        match responses.next().await {
            Some(Ok(_)) => answered += 1,
            Some(Err(status)) => break status,
            None => panic!("stream ended without a status after {answered} answers"),
        }
    };
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        answered < 2000,
        "answers were bounded, not buffered without limit ({answered})"
    );
    sender.abort();
    // The stream's place is released.
    let mut open = String::new();
    for _ in 0..100 {
        open = metrics.render();
        if open.contains("threadwarden_open_streams 0") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(open.contains("threadwarden_open_streams 0"));
    server.shutdown().await;
}

#[tokio::test]
async fn an_idle_client_that_reads_is_never_taken_for_a_slow_consumer() {
    let metrics = Arc::new(Metrics::default());
    let server = start_server(ServeConfig {
        stream_limits: StreamLimits {
            slow_consumer_deadline: Duration::from_millis(100),
            ..StreamLimits::default()
        },
        metrics: metrics.clone(),
        ..ServeConfig::default()
    })
    .await;
    let mut client = server.client().await;
    let (tx, mut responses) = open_stream(&mut client, 1).await;
    // Idle for many deadlines between turns, and reading every answer: never cut.
    for i in 0..4 {
        tx.send(pb::ModerateRequest {
            event: Some(user(format!("i{i}"), "idle", "hello there")),
        })
        .await
        .unwrap();
        let answer = responses.next().await.unwrap().expect("answered");
        assert_eq!(answer.event_id, format!("i{i}"));
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert!(
        metrics
            .render()
            .contains("threadwarden_errors_total{code=\"DEADLINE_EXCEEDED\"} 0"),
        "an idle reader was ended as a slow consumer"
    );
    drop(tx);
    assert!(responses.next().await.is_none(), "the stream ends cleanly");
    server.shutdown().await;
}

#[tokio::test]
async fn the_call_timeout_does_not_cut_long_lived_streams() {
    let server = start_server(ServeConfig {
        call_timeout: Duration::from_millis(100),
        ..ServeConfig::default()
    })
    .await;
    let mut client = server.client().await;
    let (tx, mut responses) = open_stream(&mut client, 1).await;
    for i in 0..4 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        tx.send(pb::ModerateRequest {
            event: Some(user(format!("l{i}"), "long", "still here")),
        })
        .await
        .unwrap();
        assert!(
            responses.next().await.unwrap().is_ok(),
            "answer {i} after {}ms",
            (i + 1) * 100
        );
    }
    server.shutdown().await;
}

/// Opens an `Evaluate` call on a raw HTTP/2 connection and sends its headers but never its
/// message; gives the call's grpc-status, or None if nothing came back within `wait`.
async fn stalled_unary_status(addr: std::net::SocketAddr, wait: Duration) -> Option<String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{addr}/threadwarden.v1.ModerationService/Evaluate"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, _body) = client.send_request(request, false).unwrap();
    let status = match tokio::time::timeout(wait, response).await {
        Err(_) => None,
        Ok(response) => {
            let response = response.expect("a response, not a reset");
            match response.headers().get("grpc-status") {
                Some(code) => Some(code.to_str().unwrap().to_string()),
                None => {
                    let mut body = response.into_body();
                    while body.data().await.is_some() {}
                    let trailers = body.trailers().await.unwrap().expect("trailers");
                    Some(trailers["grpc-status"].to_str().unwrap().to_string())
                }
            }
        }
    };
    connection.abort();
    status
}

/// The call deadline is what frees a unary call whose client sends headers and then nothing:
/// every handler answers in its first poll, but reading the request message waits on the client.
#[tokio::test]
async fn the_call_timeout_ends_a_unary_call_whose_message_never_comes() {
    let server = start_server(ServeConfig {
        call_timeout: Duration::from_millis(200),
        ..ServeConfig::default()
    })
    .await;
    let started = std::time::Instant::now();
    let status = stalled_unary_status(server.addr, Duration::from_secs(10)).await;
    let code = status.expect("an answer within 10 s");
    println!(
        "a unary call without its message: grpc-status {code} after {:?}",
        started.elapsed()
    );
    assert_ne!(code, "0", "a call without a message succeeded");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "ended after {:?}",
        started.elapsed()
    );
    // The server still answers a complete call.
    let mut client = server.client().await;
    let answer = client
        .evaluate(pb::EvaluateRequest {
            event: Some(user("e1", "after-stall", "hello")),
        })
        .await;
    assert!(answer.is_ok(), "{answer:?}");
    server.shutdown().await;

    // With a long deadline the same call is still open a second later: the deadline ended it.
    let server = start_server(ServeConfig {
        call_timeout: Duration::from_secs(60),
        ..ServeConfig::default()
    })
    .await;
    assert_eq!(
        stalled_unary_status(server.addr, Duration::from_secs(1)).await,
        None
    );
    server.shutdown().await;
}

/// A webhook receiver: records bodies; `hold` makes it wait until released.
#[derive(Clone, Default)]
struct Hook {
    bodies: Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    hold: Arc<tokio::sync::Notify>,
    holding: Arc<std::sync::atomic::AtomicBool>,
}

async fn start_hook(hook: Hook) -> String {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/hook",
        post(move |body: String| {
            let hook = hook.clone();
            async move {
                if hook.holding.load(std::sync::atomic::Ordering::SeqCst) {
                    hook.hold.notified().await;
                }
                hook.bodies
                    .lock()
                    .unwrap()
                    .push(serde_json::from_str(&body).unwrap());
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/hook")
}

fn crisis_event(id: &str, thread: &str) -> pb::ConversationEvent {
    let mut e = labelled(id, thread, pb::Category::SelfHarm, 0.9);
    e.payload = Some(pb::conversation_event::Payload::UserMessage(
        pb::UserMessage {
            text: "zq-webhook-canary I can't go on".into(),
        },
    ));
    e
}

#[tokio::test]
async fn the_crisis_webhook_gets_a_textless_notice_once_per_thread() {
    let hook = Hook::default();
    let url = start_hook(hook.clone()).await;
    let metrics = Arc::new(Metrics::default());
    let server = start_server(ServeConfig {
        crisis_webhook: Some(NotifierConfig::new(url)),
        metrics: metrics.clone(),
        ..ServeConfig::default()
    })
    .await;
    let mut client = server.client().await;
    evaluate(&mut client, crisis_event("c1", "hook-thread")).await;
    evaluate(&mut client, crisis_event("c2", "hook-thread")).await;
    for _ in 0..200 {
        if metrics
            .render()
            .contains("threadwarden_crisis_notifications_total{result=\"sent\"} 1")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let bodies = hook.bodies.lock().unwrap().clone();
    assert_eq!(
        bodies.len(),
        1,
        "one notice when the thread enters crisis: {bodies:?}"
    );
    let b = &bodies[0];
    assert_eq!(b["kind"], "self_harm");
    assert_eq!(b["locale"], "en-GB");
    assert_eq!(b["thread"].as_str().unwrap().len(), 16);
    let text = b.to_string();
    assert!(
        !text.contains("canary") && !text.contains("hook-thread"),
        "{text}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_stuck_webhook_never_delays_verdicts_and_overflow_is_counted() {
    let hook = Hook::default();
    hook.holding
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let url = start_hook(hook.clone()).await;
    let metrics = Arc::new(Metrics::default());
    let server = start_server(ServeConfig {
        crisis_webhook: Some(NotifierConfig {
            queue: 2,
            attempts: 1,
            timeout: Duration::from_secs(30),
            ..NotifierConfig::new(url)
        }),
        metrics: metrics.clone(),
        ..ServeConfig::default()
    })
    .await;
    let mut client = server.client().await;
    // Every verdict returns while the webhook is still holding its first request.
    for i in 0..20 {
        let v = evaluate(
            &mut client,
            crisis_event(&format!("c{i}"), &format!("t{i}")),
        )
        .await;
        assert!(v.crisis.is_some());
    }
    assert!(
        hook.bodies.lock().unwrap().is_empty(),
        "the webhook has answered nothing yet"
    );
    let text = metrics.render();
    let dropped: u64 = text
        .lines()
        .find(|l| l.starts_with("threadwarden_crisis_notifications_total{result=\"dropped\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    // One in the worker, two queued: the rest dropped and counted.
    assert!(dropped >= 17, "dropped {dropped}");
    hook.hold.notify_waiters();
    server.shutdown().await;
}

#[tokio::test]
async fn a_dead_webhook_is_retried_with_backoff_then_counted_failed() {
    // A port with nothing listening.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let metrics = Arc::new(Metrics::default());
    let server = start_server(ServeConfig {
        crisis_webhook: Some(NotifierConfig {
            attempts: 3,
            backoff: Duration::from_millis(20),
            ..NotifierConfig::new(format!("http://{dead}/hook"))
        }),
        metrics: metrics.clone(),
        ..ServeConfig::default()
    })
    .await;
    let mut client = server.client().await;
    let v = evaluate(&mut client, crisis_event("d1", "dead")).await;
    assert!(v.crisis.is_some(), "the verdict is unaffected");
    let mut text = String::new();
    for _ in 0..200 {
        text = metrics.render();
        if text.contains("threadwarden_crisis_notifications_total{result=\"failed\"} 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        text.contains("threadwarden_crisis_notifications_total{result=\"failed\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("threadwarden_crisis_notifications_total{result=\"retried\"} 2"),
        "{text}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn half_open_and_surplus_connections_are_closed_and_counted() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let metrics = Arc::new(Metrics::default());
    let server = start_server(ServeConfig {
        connection_limits: threadwarden::listener::ConnectionLimits {
            max_connections: 4,
            handshake_timeout: Duration::from_millis(300),
        },
        metrics: metrics.clone(),
        ..ServeConfig::default()
    })
    .await;
    // Three clients that send half a preface and then nothing.
    let mut half_open = Vec::new();
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        half_open.push(s);
    }
    // A real client takes the 4th place and is served.
    let mut client = server.client().await;
    evaluate(&mut client, user("c1", "conn", "hello")).await;
    // A 5th connection is over the cap: closed at once.
    let mut surplus = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), surplus.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(n, Ok(0) | Err(_)), "closed, not served: {n:?}");
    // The half-open ones are closed at the handshake deadline, freeing their places.
    for s in &mut half_open {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    }
    let text = metrics.render();
    assert!(
        text.contains("threadwarden_connections_rejected_total{reason=\"handshake_timeout\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("threadwarden_connections_rejected_total{reason=\"limit\"} 1"),
        "{text}"
    );
    // Their places are free again: new clients connect and are served.
    let mut again = server.client().await;
    evaluate(&mut again, user("c2", "conn", "hello again")).await;
    evaluate(&mut client, user("c3", "conn", "still connected")).await;
    server.shutdown().await;
}

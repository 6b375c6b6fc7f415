//! The external classifier tier through the real gRPC service: a real in-process sidecar on
//! 127.0.0.1 asks a real HTTP server (axum, in this test) that speaks the Llama Guard
//! chat-completions and the OpenAI moderation shapes, and misbehaves on demand. Every event
//! gets exactly one verdict, in order, within the timeout plus a margin, whatever the server
//! does; each failure is counted by cause.
//!
//! The fake judges the text it is sent by markers: `[S9]` (Llama Guard codes, any number),
//! `[intent]` (moderation: self-harm/intent), `[delay=MS]`; anything else is safe.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use common::*;
use serde_json::{Value, json};
use threadwarden::api::pb;
use threadwarden::classify::external::{Kind, Overrides, When};
use threadwarden::server::ServeConfig;
use threadwarden::telemetry::Metrics;
use tokio_stream::StreamExt;

/// How the fake answers.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// By the markers in the text.
    Judge,
    /// Every request gets this status.
    Status(u16),
    /// 200 with a body that is not JSON.
    Malformed,
    /// The first `n` requests get 500, then `Judge`.
    FailFirst(usize),
}

struct Fake {
    mode: Mutex<Mode>,
    calls: AtomicUsize,
    /// When each request arrived, with its text.
    arrivals: Mutex<Vec<(Instant, String)>>,
    /// Every request's path, Authorization header and body.
    seen: Mutex<Vec<(String, Option<String>, Value)>>,
}

/// A fake guard-model server on 127.0.0.1; its base URL.
async fn fake(mode: Mode) -> (Arc<Fake>, String) {
    let state = Arc::new(Fake {
        mode: Mutex::new(mode),
        calls: AtomicUsize::new(0),
        arrivals: Mutex::new(Vec::new()),
        seen: Mutex::new(Vec::new()),
    });
    let app = axum::Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/moderations", post(moderations))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (state, url)
}

/// Records the request; the text judged (the last message, or the moderation input) and the
/// answer mode, or the early response of a failing mode.
async fn admit(
    fake: &Fake,
    path: &str,
    headers: &HeaderMap,
    body: &Value,
    text: &str,
) -> Result<(), Response> {
    let n = fake.calls.fetch_add(1, Ordering::SeqCst);
    fake.arrivals
        .lock()
        .unwrap()
        .push((Instant::now(), text.to_string()));
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    fake.seen
        .lock()
        .unwrap()
        .push((path.to_string(), auth, body.clone()));
    if let Some(ms) = marker_delay(text) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let mode = *fake.mode.lock().unwrap();
    match mode {
        Mode::Judge => Ok(()),
        Mode::FailFirst(k) if n >= k => Ok(()),
        Mode::FailFirst(_) => Err(StatusCode::INTERNAL_SERVER_ERROR.into_response()),
        Mode::Status(code) => Err(StatusCode::from_u16(code).unwrap().into_response()),
        Mode::Malformed => Err((StatusCode::OK, "{\"choices\": [oops").into_response()),
    }
}

/// A 200 JSON answer (axum's `Json` needs a feature the sidecar does not build).
fn json_response(v: Value) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn marker_delay(text: &str) -> Option<u64> {
    let at = text.find("[delay=")?;
    let rest = &text[at + 7..];
    rest[..rest.find(']')?].parse().ok()
}

fn codes(text: &str) -> Vec<String> {
    text.split('[')
        .filter_map(|s| s.split(']').next())
        .filter(|c| c.starts_with('S') && c[1..].chars().all(|d| d.is_ascii_digit()))
        .map(String::from)
        .collect()
}

async fn chat(State(fake): State<Arc<Fake>>, headers: HeaderMap, body: String) -> Response {
    let body: Value = serde_json::from_str(&body).expect("the sidecar sends JSON");
    let messages = body["messages"].as_array().expect("messages").clone();
    let text = messages.last().unwrap()["content"]
        .as_str()
        .unwrap()
        .to_string();
    if let Err(r) = admit(&fake, "/v1/chat/completions", &headers, &body, &text).await {
        return r;
    }
    let codes = codes(&text);
    // Llama Guard's answers, with the whitespace real servers leave in.
    let content = if codes.is_empty() {
        "safe".to_string()
    } else {
        format!("\n\nunsafe\n{}", codes.join(","))
    };
    json_response(json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0,
        "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    }))
    .into_response()
}

async fn moderations(State(fake): State<Arc<Fake>>, headers: HeaderMap, body: String) -> Response {
    let body: Value = serde_json::from_str(&body).expect("the sidecar sends JSON");
    let text = body["input"].as_str().expect("input").to_string();
    if let Err(r) = admit(&fake, "/v1/moderations", &headers, &body, &text).await {
        return r;
    }
    let intent = text.contains("[intent]");
    let names = [
        "harassment",
        "harassment/threatening",
        "hate",
        "hate/threatening",
        "illicit",
        "illicit/violent",
        "self-harm",
        "self-harm/intent",
        "self-harm/instructions",
        "sexual",
        "sexual/minors",
        "violence",
        "violence/graphic",
    ];
    let flagged = |n: &str| intent && (n == "self-harm" || n == "self-harm/intent");
    let categories: serde_json::Map<String, Value> = names
        .iter()
        .map(|n| (n.to_string(), json!(flagged(n))))
        .collect();
    let scores: serde_json::Map<String, Value> = names
        .iter()
        .map(|n| (n.to_string(), json!(if flagged(n) { 0.93 } else { 0.001 })))
        .collect();
    json_response(json!({
        "id": "modr-1", "model": "omni-moderation-latest",
        "results": [{"flagged": intent, "categories": categories,
                     "category_scores": scores,
                     "category_applied_input_types": {}}]
    }))
    .into_response()
}

/// A sidecar asking `url`; `policy` is a policy file's text (the `classify.external` knobs).
async fn sidecar(
    kind: Kind,
    url: &str,
    when: When,
    timeout: Duration,
    policy: &str,
) -> (TestServer, Arc<Metrics>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, policy).unwrap();
    let metrics = Arc::new(Metrics::default());
    let server = start_server(ServeConfig {
        policy_path: Some(path),
        metrics: metrics.clone(),
        external: Overrides {
            kind: Some(kind),
            url: Some(url.to_string()),
            model: Some("meta-llama/Llama-Guard-3-1B".into()),
            when: Some(when),
            timeout: Some(timeout),
            api_key_file: None,
        },
        ..ServeConfig::default()
    })
    .await;
    (server, metrics, dir)
}

const POLICY: &str = "version: external-test\n";

/// A sidecar asking a Llama Guard at `url` with the default knobs (a 5 s timeout: no test here
/// is about time).
async fn guard(url: &str, when: When) -> (TestServer, Arc<Metrics>, tempfile::TempDir) {
    sidecar(Kind::LlamaGuard, url, when, Duration::from_secs(5), POLICY).await
}

/// Sends `events` on one stream and reads one answer each: in order, by event id. Returns the
/// verdicts and the time the whole batch took.
async fn exchange(
    server: &TestServer,
    events: Vec<pb::ConversationEvent>,
) -> (Vec<pb::Verdict>, Duration) {
    let mut client = server.client().await;
    let (tx, mut rx) = open_stream(&mut client, events.len() + 1).await;
    let ids: Vec<String> = events.iter().map(|e| e.event_id.clone()).collect();
    let started = Instant::now();
    for e in events {
        tx.send(pb::ModerateRequest { event: Some(e) })
            .await
            .unwrap();
    }
    let mut verdicts = Vec::new();
    for id in &ids {
        let answer = rx.next().await.expect("one answer per event").unwrap();
        assert_eq!(&answer.event_id, id, "answers in request order");
        match answer.result {
            Some(pb::moderate_response::Result::Verdict(v)) => verdicts.push(v),
            other => panic!("{id}: expected a verdict, got {other:?}"),
        }
    }
    let took = started.elapsed();
    drop(tx);
    assert!(rx.next().await.is_none(), "no answer beyond one per event");
    (verdicts, took)
}

fn external(v: &pb::Verdict) -> pb::ExternalStatus {
    pb::ExternalStatus::try_from(v.external).unwrap()
}

fn tiers(v: &pb::Verdict) -> Vec<pb::ClassifierTier> {
    v.tiers
        .iter()
        .map(|t| pb::ClassifierTier::try_from(*t).unwrap())
        .collect()
}

fn with_signal(
    mut e: pb::ConversationEvent,
    category: pb::Category,
    score: f32,
) -> pb::ConversationEvent {
    e.signals.push(pb::Signal {
        category: category as i32,
        score,
        source: "test".into(),
    });
    e
}

#[tokio::test]
async fn llama_guard_answers_merge_into_the_verdicts() {
    let (fake, url) = fake(Mode::Judge).await;
    let (server, metrics, _dir) = guard(&url, When::Always).await;
    let events = vec![
        user("e1", "t1", "what is the weather like in Lisbon"),
        // The model flags what the built-in tiers did not.
        user("e2", "t2", "a question [S9]"),
        // The caller's own classifier flags it; the model clears it.
        with_signal(
            user("e3", "t3", "port scanning my own lab"),
            pb::Category::CyberAttack,
            0.8,
        ),
        // Codes the map ignores (S6) or does not know (S99) flag nothing.
        user("e4", "t4", "medical question [S6][S99]"),
        assistant("e5", "t5", false, false),
        user("e6", "t5", "and then? [S1]"),
    ];
    let (v, _) = exchange(&server, events).await;
    assert_eq!(action(&v[0]), pb::Action::Continue);
    assert_eq!(external(&v[0]), pb::ExternalStatus::Agreed);
    assert!(tiers(&v[0]).contains(&pb::ClassifierTier::Rules));
    assert!(tiers(&v[0]).contains(&pb::ClassifierTier::External));

    assert_eq!(action(&v[1]), pb::Action::Redirect);
    assert_eq!(external(&v[1]), pb::ExternalStatus::Disagreed);
    let weapons = pb::Category::IndiscriminateWeapons as i32;
    assert!(v[1].categories.iter().any(|c| c.category == weapons));

    assert_eq!(action(&v[2]), pb::Action::Continue, "{:?}", v[2]);
    assert_eq!(external(&v[2]), pb::ExternalStatus::Disagreed);

    assert_eq!(action(&v[3]), pb::Action::Continue);
    assert_eq!(external(&v[3]), pb::ExternalStatus::Agreed);

    // An assistant turn is not sent on its own; it goes with the thread's next user message.
    assert_eq!(external(&v[4]), pb::ExternalStatus::Unspecified);
    assert_eq!(action(&v[5]), pb::Action::Redirect);
    let seen = fake.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 5, "one call per user message");
    for (path, auth, body) in &seen {
        assert_eq!(path, "/v1/chat/completions");
        assert_eq!(auth, &None, "no key configured, none sent");
        assert_eq!(body["model"], "meta-llama/Llama-Guard-3-1B");
    }
    let last = seen[4].2["messages"].as_array().unwrap();
    let roles: Vec<&str> = last.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "assistant", "user"]);
    assert_eq!(last[1]["content"], "Sure, here is a summary.");
    assert_eq!(metrics.external.calls(), 5);
    let text = metrics.render();
    assert!(
        text.contains("threadwarden_external_agreement_total{result=\"agree\"} 2"),
        "{text}"
    );
    assert!(text.contains("threadwarden_external_agreement_total{result=\"disagree\"} 3"));
    assert!(text.contains("threadwarden_external_unknown_codes_total 1"));
    server.shutdown().await;
}

#[tokio::test]
async fn moderation_self_harm_intent_routes_to_crisis_with_the_key() {
    let (fake, url) = fake(Mode::Judge).await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "sk-test-0123456789\n").unwrap();
    let policy = format!(
        "version: external-test\nclassify:\n  external:\n    api_key_file: {}\n",
        key.display()
    );
    let (server, _metrics, _d) = sidecar(
        Kind::OpenaiModeration,
        &url,
        When::Always,
        Duration::from_secs(2),
        &policy,
    )
    .await;
    let (v, _) = exchange(
        &server,
        vec![
            user("e1", "t1", "i had a long day at work"),
            user("e2", "t1", "i don't see the point anymore [intent]"),
        ],
    )
    .await;
    assert_eq!(action(&v[0]), pb::Action::Continue);
    assert_eq!(reason(&v[1]), pb::Reason::Crisis);
    assert!(v[1].crisis.is_some(), "crisis support attached");
    assert!(v[1].thread.as_ref().unwrap().crisis_active);
    let seen = fake.seen.lock().unwrap().clone();
    assert_eq!(seen[0].0, "/v1/moderations");
    assert_eq!(seen[0].1.as_deref(), Some("Bearer sk-test-0123456789"));
    assert_eq!(seen[1].2["input"], "i don't see the point anymore [intent]");
    server.shutdown().await;
}

/// Severe turns until the thread is one step from END, under `when: uncertain` (a score above
/// the band is not sent), then the END asked for confirmation: vetoed, then confirmed.
#[tokio::test]
async fn an_end_waits_for_the_model_to_confirm_it() {
    let (fake, url) = fake(Mode::Judge).await;
    let (server, metrics, _dir) = guard(&url, When::Uncertain).await;
    let severe = |id: &str, text: &str| {
        with_signal(
            user(id, "t1", text),
            pb::Category::IndiscriminateWeapons,
            0.95,
        )
    };
    let (v, _) = exchange(
        &server,
        vec![
            severe("e1", "first"),
            severe("e2", "second"),
            severe("e3", "third"),
            // One step from END: asked; the model says safe, so the END is vetoed.
            severe("e4", "fourth"),
            // Asked again; this time it agrees.
            severe("e5", "fifth [S9]"),
            severe("e6", "sixth"),
        ],
    )
    .await;
    for x in &v[..3] {
        assert_eq!(external(x), pb::ExternalStatus::Skipped);
        assert_eq!(action(x), pb::Action::Redirect);
    }
    assert!(
        v[2].redirect.as_ref().unwrap().warning,
        "warned on the third severe turn"
    );
    assert_eq!(external(&v[3]), pb::ExternalStatus::EndVetoed);
    assert_eq!(action(&v[3]), pb::Action::Redirect);
    assert!(!v[3].thread.as_ref().unwrap().ended);
    assert_eq!(external(&v[4]), pb::ExternalStatus::Agreed);
    assert_eq!(action(&v[4]), pb::Action::End);
    assert_eq!(reason(&v[4]), pb::Reason::PersistentHarm);
    // Ended: nothing more is sent.
    assert_eq!(reason(&v[5]), pb::Reason::AlreadyEnded);
    assert_eq!(fake.calls.load(Ordering::SeqCst), 2);
    let text = metrics.render();
    assert!(text.contains("threadwarden_external_end_confirmations_total{outcome=\"vetoed\"} 1"));
    assert!(
        text.contains("threadwarden_external_end_confirmations_total{outcome=\"confirmed\"} 1")
    );
    server.shutdown().await;
}

/// Six user messages over three threads, each sent out; every one answered in order with the
/// built-in tiers' verdict and `status`, the batch within the timeout plus a margin, and the
/// failure counted once per call under `cause`.
async fn fault(url: &str, timeout: Duration, status: pb::ExternalStatus, cause: &str) {
    // A breaker that stays closed: each of the six calls is made and fails on its own.
    let policy = "version: external-test\nclassify:\n  external:\n    breaker: { failures: 100 }\n";
    let (server, metrics, _dir) =
        sidecar(Kind::LlamaGuard, url, When::Always, timeout, policy).await;
    let text = if status == pb::ExternalStatus::Timeout {
        "hello there [delay=1500]"
    } else {
        "hello there"
    };
    let events: Vec<_> = (0..6)
        .map(|i| user(format!("e{i}"), &format!("t{}", i % 3), text))
        .collect();
    let (v, took) = exchange(&server, events).await;
    for x in &v {
        assert_eq!(external(x), status, "{x:?}");
        assert_eq!(action(x), pb::Action::Continue);
        assert_eq!(tiers(x).first(), Some(&pb::ClassifierTier::Rules));
        assert!(!tiers(x).contains(&pb::ClassifierTier::External));
    }
    // Calls overlap (two rounds at most: one thread's events wait for each other).
    assert!(
        took <= timeout * 2 + Duration::from_millis(700),
        "{took:?} for 6 events with a {timeout:?} timeout"
    );
    assert_eq!(metrics.external.errors(cause), 6, "{}", metrics.render());
    server.shutdown().await;
}

/// `fault` against the fake answering in `mode`, with a 2 s timeout.
async fn answering(mode: Mode, status: pb::ExternalStatus, cause: &str) {
    let (_fake, url) = fake(mode).await;
    fault(&url, Duration::from_secs(2), status, cause).await;
}

#[tokio::test]
async fn a_slow_server_times_out() {
    let (_fake, url) = fake(Mode::Judge).await;
    fault(
        &url,
        Duration::from_millis(200),
        pb::ExternalStatus::Timeout,
        "timeout",
    )
    .await;
}

#[tokio::test]
async fn http_500_is_counted_and_the_built_in_tiers_decide() {
    answering(
        Mode::Status(500),
        pb::ExternalStatus::HttpError,
        "http_status",
    )
    .await;
}

#[tokio::test]
async fn http_429_is_counted_and_the_built_in_tiers_decide() {
    answering(
        Mode::Status(429),
        pb::ExternalStatus::HttpError,
        "http_status",
    )
    .await;
}

#[tokio::test]
async fn malformed_json_is_a_parse_error() {
    answering(Mode::Malformed, pb::ExternalStatus::ParseError, "parse").await;
}

#[tokio::test]
async fn connection_refused_is_a_connect_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    fault(
        &url,
        Duration::from_millis(500),
        pb::ExternalStatus::ConnectError,
        "connect",
    )
    .await;
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    // Accepts every connection and holds it open, reading nothing, answering nothing.
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            keep.lock().unwrap().push(socket);
        }
    });
    fault(
        &url,
        Duration::from_millis(200),
        pb::ExternalStatus::Timeout,
        "timeout",
    )
    .await;
    assert!(!held.lock().unwrap().is_empty(), "the sidecar did connect");
}

#[tokio::test]
async fn the_breaker_opens_and_recovers() {
    let (fake, url) = fake(Mode::FailFirst(3)).await;
    let policy = "version: external-test\nclassify:\n  external:\n    breaker: { failures: 3, window: 10s, open_for: 300ms }\n";
    let (server, metrics, _dir) = sidecar(
        Kind::LlamaGuard,
        &url,
        When::Always,
        Duration::from_secs(2),
        policy,
    )
    .await;
    let batch = |from: usize| -> Vec<pb::ConversationEvent> {
        (from..from + 3)
            .map(|i| user(format!("e{i}"), "t1", "hello"))
            .collect()
    };
    let (v, _) = exchange(&server, batch(0)).await;
    assert!(
        v.iter()
            .all(|x| external(x) == pb::ExternalStatus::HttpError)
    );
    // Open: no call is made, the built-in tiers decide at once.
    let (v, took) = exchange(&server, batch(3)).await;
    assert!(
        v.iter()
            .all(|x| external(x) == pb::ExternalStatus::BreakerOpen),
        "{v:?}"
    );
    assert!(took < Duration::from_millis(300));
    assert_eq!(fake.calls.load(Ordering::SeqCst), 3);
    assert!(
        metrics
            .render()
            .contains("threadwarden_external_breaker_state 1")
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Half-open: one probe goes through, succeeds, and the breaker closes.
    let (v, _) = exchange(&server, batch(6)).await;
    assert!(
        v.iter().all(|x| external(x) == pb::ExternalStatus::Agreed),
        "{v:?}"
    );
    assert_eq!(fake.calls.load(Ordering::SeqCst), 6);
    assert!(
        metrics
            .render()
            .contains("threadwarden_external_breaker_state 0")
    );
    assert_eq!(metrics.external.errors("breaker_open"), 3);
    assert_eq!(metrics.external.errors("http_status"), 3);
    server.shutdown().await;
}

#[tokio::test]
async fn configured_but_never_asked_changes_nothing() {
    let (fake, url) = fake(Mode::Judge).await;
    let (server, _m, _dir) = guard(&url, When::Never).await;
    let (v, _) = exchange(&server, vec![user("e1", "t1", "a question [S9]")]).await;
    assert_eq!(external(&v[0]), pb::ExternalStatus::Skipped);
    assert_eq!(action(&v[0]), pb::Action::Continue);
    assert_eq!(fake.calls.load(Ordering::SeqCst), 0);
    server.shutdown().await;
}

/// 1,000 events over 100 threads on one stream, each sent out with a random delay: one answer
/// each, in order; and every thread on which the model always agreed ends exactly as it does
/// with the tier off.
#[tokio::test]
async fn a_thousand_events_over_a_hundred_threads_stay_in_order() {
    let (_fake, url) = fake(Mode::Judge).await;
    let (server, _m, _dir) = guard(&url, When::Always).await;
    let off = start().await;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut events = Vec::new();
    for i in 0..1000 {
        let t = next() % 100;
        let delay = next() % 20;
        // Threads 0..9 carry codes the model flags; the rest it agrees on.
        let marker = if t < 10 && i % 3 == 0 { "[S1]" } else { "" };
        let mut e = user(
            format!("e{i}"),
            &format!("t{t}"),
            &format!("message {i} {marker}[delay={delay}]"),
        );
        if i % 7 == 0 {
            // Flagged by the caller's classifier, and by the model (S9): they agree.
            if let Some(pb::conversation_event::Payload::UserMessage(m)) = &mut e.payload {
                m.text.push_str(" [S9]");
            }
            e = with_signal(e, pb::Category::IndiscriminateWeapons, 0.95);
        }
        events.push(e);
    }
    let (with, _) = exchange(&server, events.clone()).await;
    let (without, _) = exchange(&off, events.clone()).await;
    assert_eq!(with.len(), 1000);
    let mut agreed: HashMap<String, bool> = HashMap::new();
    for (e, v) in events.iter().zip(&with) {
        let status = external(v);
        let ok = matches!(status, pb::ExternalStatus::Agreed);
        *agreed.entry(e.thread_id.clone()).or_insert(true) &= ok;
    }
    let mut client = server.client().await;
    let mut off_client = off.client().await;
    let mut compared = 0;
    for (thread, all_agreed) in &agreed {
        if !all_agreed {
            continue;
        }
        let req = pb::GetThreadRequest {
            tenant_id: "tenant-a".into(),
            thread_id: thread.clone(),
        };
        let a = client.get_thread(req.clone()).await.unwrap().into_inner();
        let b = off_client.get_thread(req).await.unwrap().into_inner();
        assert_eq!(a.thread, b.thread, "{thread}");
        compared += 1;
    }
    assert!(compared >= 80, "{compared} threads agreed throughout");
    assert!(
        agreed.len() - compared >= 5,
        "the flagged threads disagreed"
    );
    // Per event too: where the model agreed, the verdict's action is the tier-off one.
    for (a, b) in with.iter().zip(&without) {
        if external(a) == pb::ExternalStatus::Agreed && agreed[&a.thread_id] {
            assert_eq!(a.action, b.action);
        }
    }
    server.shutdown().await;
    off.shutdown().await;
}

/// A slow call holds back its own thread's next event, and nothing else: the other threads'
/// events are sent at once, beyond `STREAM_IN_FLIGHT` too (decided events waiting for their
/// turn to be answered do not count against it).
#[tokio::test]
async fn a_slow_thread_holds_back_only_itself() {
    let (fake, url) = fake(Mode::Judge).await;
    let (server, _m, _dir) = guard(&url, When::Always).await;
    let mut events = vec![
        user("slow", "a", "first [delay=800]"),
        user("after-slow", "a", "second on a"),
    ];
    for i in 0..60 {
        events.push(user(format!("o{i}"), &format!("b{i}"), "other thread"));
    }
    let started = Instant::now();
    let (v, _) = exchange(&server, events).await;
    assert_eq!(v.len(), 62);
    let arrivals = fake.arrivals.lock().unwrap().clone();
    let at = |text: &str| {
        arrivals
            .iter()
            .filter(|(_, t)| t == text)
            .map(|(i, _)| i.duration_since(started))
            .collect::<Vec<_>>()
    };
    let others = at("other thread");
    assert_eq!(others.len(), 60);
    assert!(
        others.iter().all(|d| *d < Duration::from_millis(600)),
        "other threads waited for the slow one: {others:?}"
    );
    let second = at("second on a");
    assert!(second[0] >= Duration::from_millis(750), "{second:?}");
    server.shutdown().await;
}

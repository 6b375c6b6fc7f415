//! Over the network: the real server on 127.0.0.1:0, a real tonic client.

mod common;

use common::*;
use threadwarden::api::pb;
use threadwarden::server::ServeConfig;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// Sends `events` on one Moderate stream while reading, returns every response in order.
async fn moderate_all(
    server: &TestServer,
    events: Vec<pb::ModerateRequest>,
) -> Vec<pb::ModerateResponse> {
    let mut client = server.client().await;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let n = events.len();
    tokio::spawn(async move {
        for e in events {
            tx.send(e).await.unwrap();
        }
    });
    let mut responses = client
        .moderate(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::with_capacity(n);
    while let Some(r) = responses.next().await {
        out.push(r.expect("stream item"));
    }
    out
}

fn req(e: pb::ConversationEvent) -> pb::ModerateRequest {
    pb::ModerateRequest { event: Some(e) }
}

fn verdict(r: &pb::ModerateResponse) -> &pb::Verdict {
    match r.result.as_ref().unwrap() {
        pb::moderate_response::Result::Verdict(v) => v,
        pb::moderate_response::Result::Error(e) => panic!("unexpected error {e:?}"),
    }
}

fn error(r: &pb::ModerateResponse) -> &pb::EventError {
    match r.result.as_ref().unwrap() {
        pb::moderate_response::Result::Error(e) => e,
        pb::moderate_response::Result::Verdict(v) => panic!("unexpected verdict {v:?}"),
    }
}

#[tokio::test]
async fn hundred_interleaved_threads_on_one_stream_in_order() {
    let server = start().await;
    // 100 threads, 4 rounds each, interleaved round by round: each thread asks for severe harm
    // 4 times, so every thread must be warned on round 3 and ended on round 4.
    let mut events = Vec::new();
    for round in 0..4 {
        for t in 0..100 {
            let thread = format!("thread-{t}");
            events.push(req(labelled(
                format!("{thread}-r{round}"),
                &thread,
                pb::Category::IndiscriminateWeapons,
                0.95,
            )));
        }
    }
    let sent_ids: Vec<String> = events
        .iter()
        .map(|e| e.event.as_ref().unwrap().event_id.clone())
        .collect();
    let responses = moderate_all(&server, events).await;
    assert_eq!(responses.len(), 400, "exactly one response per event");
    let got_ids: Vec<String> = responses.iter().map(|r| r.event_id.clone()).collect();
    assert_eq!(got_ids, sent_ids, "responses in request order");
    for (i, r) in responses.iter().enumerate() {
        let round = i / 100;
        let v = verdict(r);
        assert_eq!(v.thread_id, format!("thread-{}", i % 100));
        let want = if round < 3 {
            pb::Action::Redirect
        } else {
            pb::Action::End
        };
        assert_eq!(action(v), want, "event {i}");
        assert_eq!(
            v.redirect.as_ref().is_some_and(|r| r.warning),
            round == 2,
            "event {i}"
        );
        assert_eq!(v.thread.unwrap().turn, round as u32 + 1);
    }
    server.shutdown().await;
}

#[tokio::test]
async fn bad_events_get_an_error_each_and_the_stream_goes_on() {
    let server = start().await;
    let mut no_thread = user("e2", "", "hello");
    no_thread.thread_id.clear();
    let mut no_payload = user("e3", "t1", "hello");
    no_payload.payload = None;
    let mut bad_enum = user("e4", "t1", "hello");
    bad_enum.signals.push(pb::Signal {
        category: 99,
        score: 0.5,
        source: String::new(),
    });
    let mut bad_score = user("e5", "t1", "hello");
    bad_score.signals.push(pb::Signal {
        category: pb::Category::Abuse as i32,
        score: 7.0,
        source: String::new(),
    });
    let events = vec![
        req(user("e1", "t1", "hello")),
        req(no_thread),
        req(no_payload),
        req(bad_enum),
        req(bad_score),
        req(user("", "t1", "no id")),
        pb::ModerateRequest { event: None },
        req(fork("e8", "branch", "no-such-parent", 0)),
        req(fork("e9", "t1", "t1", 0)),
        req(user("x".repeat(300), "t1", "long id")),
        req(user("e11", "t1", "still here")),
    ];
    let r = moderate_all(&server, events).await;
    assert_eq!(r.len(), 11);
    assert_eq!(action(verdict(&r[0])), pb::Action::Continue);
    let expect = [
        (1, "INVALID_ARGUMENT", "thread_id: must not be empty"),
        (2, "INVALID_ARGUMENT", "payload: one of"),
        (
            3,
            "INVALID_ARGUMENT",
            "signals[0].category: unknown enum value 99",
        ),
        (4, "INVALID_ARGUMENT", "signals[0].score: 7 is not a score"),
        (5, "INVALID_ARGUMENT", "event_id: must not be empty"),
        (6, "INVALID_ARGUMENT", "event: required"),
        (7, "NOT_FOUND", "fork.parent_thread_id \"no-such-parent\""),
        (8, "INVALID_ARGUMENT", "fork.parent_thread_id: must differ"),
        (9, "INVALID_ARGUMENT", "event_id: is 300 bytes"),
    ];
    for (i, code, msg) in expect {
        let e = error(&r[i]);
        assert_eq!(e.code, code, "response {i}: {e:?}");
        assert!(e.message.starts_with(msg), "response {i}: {:?}", e.message);
    }
    assert_eq!(r[2].event_id, "e3", "errors carry the event id");
    let last = verdict(&r[10]);
    assert_eq!(
        last.thread.unwrap().turn,
        2,
        "only the two good events counted"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn oversized_text_is_classified_head_and_tail_and_flagged() {
    let server = start().await;
    let mut client = server.client().await;
    let text = format!("{}{}", "lorem ipsum ".repeat(20_000), "the end");
    let v = evaluate(&mut client, user("big", "t-big", &text)).await;
    assert!(v.truncated, "over 64 KiB: head and tail only, and said so");
    let v = evaluate(&mut client, user("small", "t-big", "short text")).await;
    assert!(!v.truncated);
    let v = evaluate(&mut client, user("after", "t-big", "still serving")).await;
    assert_eq!(action(&v), pb::Action::Continue);
    server.shutdown().await;
}

/// Past the decoded-message limit (4 MiB by default): RESOURCE_EXHAUSTED with grpc-core's
/// message, on a unary call (trailers-only) and on a stream (trailers), and the server lives.
#[tokio::test]
async fn an_8_mib_message_is_resource_exhausted_unary_and_streamed() {
    let server = start().await;
    let mut client = server.client().await;
    let huge = "a".repeat(8 * 1024 * 1024);
    let check = |err: tonic::Status| {
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        assert!(
            err.message()
                .starts_with("Received message larger than max ("),
            "{:?}",
            err.message()
        );
        assert!(
            err.message().contains(" vs. 4194304)"),
            "{:?}",
            err.message()
        );
    };
    let err = client
        .evaluate(pb::EvaluateRequest {
            event: Some(user("huge", "t-big", &huge)),
        })
        .await
        .unwrap_err();
    check(err);

    let (tx, mut responses) = open_stream(&mut client, 4).await;
    tx.send(pb::ModerateRequest {
        event: Some(user("ok", "t-big", "a normal message")),
    })
    .await
    .unwrap();
    let first = responses
        .message()
        .await
        .unwrap()
        .expect("the first answer");
    assert_eq!(first.event_id, "ok");
    tx.send(pb::ModerateRequest {
        event: Some(user("huge", "t-big", &huge)),
    })
    .await
    .unwrap();
    check(responses.message().await.unwrap_err());

    let v = evaluate(&mut client, user("after", "t-big", "still serving")).await;
    assert_eq!(action(&v), pb::Action::Continue);
    assert_eq!(v.thread.unwrap().turn, 2, "neither oversized event counted");
    server.shutdown().await;
}

#[tokio::test]
async fn evaluate_is_the_same_decision_unary() {
    let server = start().await;
    let mut client = server.client().await;
    let mut actions = Vec::new();
    for i in 0..5 {
        let v = evaluate(
            &mut client,
            labelled(format!("a{i}"), "abuse", pb::Category::Abuse, 0.9),
        )
        .await;
        actions.push((action(&v), v.redirect.as_ref().is_some_and(|r| r.warning)));
        if i == 4 {
            assert_eq!(reason(&v), pb::Reason::PersistentAbuse);
            let end = v.end.unwrap();
            assert!(!end.message.is_empty());
            assert_eq!(
                end.options,
                vec![
                    pb::UserOption::NewChat as i32,
                    pb::UserOption::EditAndRetry as i32,
                    pb::UserOption::Feedback as i32
                ]
            );
        }
    }
    assert_eq!(
        actions,
        vec![
            (pb::Action::Redirect, false),
            (pb::Action::Redirect, false),
            (pb::Action::Redirect, false),
            (pb::Action::Redirect, true),
            (pb::Action::End, false)
        ]
    );
    let v = evaluate(&mut client, user("after", "abuse", "sorry, can we talk?")).await;
    assert_eq!(
        (action(&v), reason(&v)),
        (pb::Action::End, pb::Reason::AlreadyEnded)
    );
    let err = client
        .evaluate(pb::EvaluateRequest { event: None })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    server.shutdown().await;
}

#[tokio::test]
async fn crisis_gets_local_resources_and_is_never_ended() {
    let server = start().await;
    let mut client = server.client().await;
    let mut e = labelled("c1", "crisis", pb::Category::SelfHarm, 0.9);
    e.locale = "en-GB".into();
    let v = evaluate(&mut client, e).await;
    let crisis = v.crisis.expect("crisis support");
    assert_eq!(crisis.kind, pb::CrisisKind::SelfHarm as i32);
    assert!(!crisis.message.is_empty() && !crisis.guidance.is_empty());
    assert!(
        crisis.resources.iter().any(|r| r.country == "GB"),
        "{:?}",
        crisis.resources
    );
    for i in 0..8 {
        let v = evaluate(
            &mut client,
            labelled(format!("c-abuse-{i}"), "crisis", pb::Category::Abuse, 0.95),
        )
        .await;
        assert_ne!(action(&v), pb::Action::End);
        assert!(v.crisis.is_some(), "support stays attached to redirects");
    }
    let v = evaluate(&mut client, confirm_end("c-confirm", "crisis")).await;
    assert_eq!(action(&v), pb::Action::Continue);
    assert!(v.end_denied);
    assert_eq!(v.end_denied_detail, "CRISIS_ACTIVE");
    let summary = client
        .get_thread(pb::GetThreadRequest {
            tenant_id: "tenant-a".into(),
            thread_id: "crisis".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .thread
        .unwrap();
    assert!(summary.crisis_active && !summary.ended);
    // An unknown locale falls back to international resources.
    let mut e = labelled("c2", "crisis-2", pb::Category::SelfHarm, 0.9);
    e.locale = "xx-ZZ".into();
    let v = evaluate(&mut client, e).await;
    let resources = v.crisis.unwrap().resources;
    assert!(!resources.is_empty() && resources.iter().all(|r| r.country.is_empty()));
    server.shutdown().await;
}

#[tokio::test]
async fn user_requested_end_with_confirmation_then_fork() {
    let server = start().await;
    let mut client = server.client().await;
    evaluate(&mut client, user("u1", "main", "hello there")).await;
    evaluate(&mut client, user("u2", "main", "tell me about otters")).await;
    let mut ask = user("u3", "main", "(end request)");
    ask.signals.clear();
    // The caller labels nothing here; drive the end request through ConfirmEnd instead.
    let v = evaluate(&mut client, confirm_end("u4", "main")).await;
    assert_eq!(
        (action(&v), reason(&v)),
        (pb::Action::End, pb::Reason::UserRequested)
    );
    let v = evaluate(&mut client, user("u5", "main", "wait")).await;
    assert_eq!(reason(&v), pb::Reason::AlreadyEnded);
    // Edit the 1st message: a new branch from turn 1, unended.
    let v = evaluate(&mut client, fork("f1", "main-branch", "main", 1)).await;
    assert_eq!(action(&v), pb::Action::Continue);
    let t = v.thread.unwrap();
    assert_eq!((t.turn, t.ended), (1, false));
    let v = evaluate(&mut client, user("b1", "main-branch", "and beavers?")).await;
    assert_eq!(action(&v), pb::Action::Continue);
    assert_eq!(v.thread.unwrap().turn, 2);
    // A retried fork is idempotent; a fork onto an existing branch is not allowed.
    let v = evaluate(&mut client, fork("f1", "main-branch", "main", 1)).await;
    assert!(v.replayed);
    let err = client
        .evaluate(pb::EvaluateRequest {
            event: Some(fork("f2", "main-branch", "main", 1)),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let err = client
        .evaluate(pb::EvaluateRequest {
            event: Some(fork("f3", "b2", "main", 9)),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    server.shutdown().await;
}

#[tokio::test]
async fn replayed_event_ids_are_not_counted_twice() {
    let server = start().await;
    let mut client = server.client().await;
    let first = evaluate(
        &mut client,
        labelled("same", "idem", pb::Category::CyberAttack, 0.9),
    )
    .await;
    let again = evaluate(
        &mut client,
        labelled("same", "idem", pb::Category::CyberAttack, 0.9),
    )
    .await;
    assert!(!first.replayed && again.replayed);
    assert_eq!(first.thread, again.thread);
    assert_eq!(again.thread.unwrap().harmful_turns, 1);
    server.shutdown().await;
}

#[tokio::test]
async fn model_requested_end_is_guarded() {
    let server = start().await;
    let mut client = server.client().await;
    let v = evaluate(&mut client, assistant("m1", "model-end", true, true)).await;
    assert_eq!(action(&v), pb::Action::Continue);
    assert!(v.end_denied);
    assert_eq!(v.end_denied_detail, "NOT_WARNED");
    assert_eq!(reason(&v), pb::Reason::ModelRequested);
    server.shutdown().await;
}

#[tokio::test]
async fn get_thread_and_feedback() {
    let server = start().await;
    let mut client = server.client().await;
    evaluate(&mut client, labelled("g1", "fb", pb::Category::Hate, 0.9)).await;
    let summary = client
        .get_thread(pb::GetThreadRequest {
            tenant_id: "tenant-a".into(),
            thread_id: "fb".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .thread
        .unwrap();
    assert_eq!((summary.turn, summary.redirects), (1, 1));
    // Another tenant's view of the same thread id is a different thread.
    let err = client
        .get_thread(pb::GetThreadRequest {
            tenant_id: "tenant-b".into(),
            thread_id: "fb".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    client
        .submit_feedback(pb::SubmitFeedbackRequest {
            tenant_id: "tenant-a".into(),
            thread_id: "fb".into(),
            event_id: "g1".into(),
            rating: pb::Rating::ThumbsDown as i32,
            comment: "too strict".into(),
        })
        .await
        .unwrap();
    let err = client
        .submit_feedback(pb::SubmitFeedbackRequest {
            tenant_id: "tenant-a".into(),
            thread_id: "nope".into(),
            event_id: "g1".into(),
            rating: pb::Rating::ThumbsUp as i32,
            comment: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .submit_feedback(pb::SubmitFeedbackRequest {
            tenant_id: "tenant-a".into(),
            thread_id: "fb".into(),
            event_id: "g1".into(),
            rating: 42,
            comment: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("rating: unknown enum value 42"),
        "{}",
        err.message()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn health_serves_and_reflection_lists_the_service() {
    let server = start().await;
    let channel = server.channel().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "threadwarden.v1.ModerationService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    server.shutdown().await;
}

/// What a reflection client of either version learns from the server: every service's name,
/// and the file that defines the moderation service.
macro_rules! reflect {
    ($version:ident, $channel:expr) => {{
        use tonic_reflection::pb::$version::ServerReflectionRequest;
        use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
        let mut reflection = ServerReflectionClient::new($channel);
        let requests = vec![
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            },
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::FileContainingSymbol(
                    "threadwarden.v1.ModerationService".into(),
                )),
            },
        ];
        let mut stream = reflection
            .server_reflection_info(tokio_stream::iter(requests))
            .await
            .expect("the reflection service answers")
            .into_inner();
        let listed = stream.next().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = listed.message_response else {
            panic!("unexpected reflection response: {listed:?}");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        let file = stream.next().await.unwrap().unwrap();
        let Some(MessageResponse::FileDescriptorResponse(files)) = file.message_response else {
            panic!("unexpected reflection response: {file:?}");
        };
        let files: Vec<prost_types::FileDescriptorProto> = files
            .file_descriptor_proto
            .iter()
            .map(|b| prost::Message::decode(b.as_slice()).unwrap())
            .collect();
        (names, files)
    }};
}

fn check_reflection(names: &[String], files: &[prost_types::FileDescriptorProto]) {
    for want in [
        "threadwarden.v1.ModerationService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    let file = files
        .iter()
        .find(|f| f.package() == "threadwarden.v1")
        .expect("the moderation proto");
    let service = &file.service[0];
    assert_eq!(service.name(), "ModerationService");
    let methods: Vec<&str> = service.method.iter().map(|m| m.name()).collect();
    assert_eq!(
        methods,
        ["Moderate", "Evaluate", "GetThread", "SubmitFeedback"]
    );
}

#[tokio::test]
async fn reflection_v1_lists_and_describes_the_service() {
    let server = start().await;
    let (names, files) = reflect!(v1, server.channel().await);
    check_reflection(&names, &files);
    server.shutdown().await;
}

/// Postman, Evans, older grpcurl builds and grpcio-reflection ask v1alpha.
#[tokio::test]
async fn reflection_v1alpha_lists_and_describes_the_service() {
    let server = start().await;
    let (names, files) = reflect!(v1alpha, server.channel().await);
    check_reflection(&names, &files);
    server.shutdown().await;
}

#[tokio::test]
async fn shadow_mode_from_a_policy_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, "version: shadow-1\nmode: shadow\n").unwrap();
    let server = start_server(ServeConfig {
        policy_path: Some(path),
        ..ServeConfig::default()
    })
    .await;
    let mut client = server.client().await;
    let mut last = None;
    for i in 0..4 {
        last = Some(
            evaluate(
                &mut client,
                labelled(format!("s{i}"), "sh", pb::Category::ViolentExtremism, 0.9),
            )
            .await,
        );
    }
    let v = last.unwrap();
    assert_eq!(v.policy_version, "shadow-1");
    assert!(!v.enforced);
    assert_eq!(action(&v), pb::Action::Redirect);
    assert_eq!(v.shadow_action, pb::Action::End as i32);
    server.shutdown().await;
}

#[tokio::test]
async fn state_file_keeps_ended_threads_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.bin");
    let config = ServeConfig {
        state_file: Some(state.clone()),
        ..ServeConfig::default()
    };
    let server = start_server(config.clone()).await;
    let mut client = server.client().await;
    for t in 0..50 {
        evaluate(
            &mut client,
            confirm_end(format!("end-{t}"), &format!("locked-{t}")),
        )
        .await;
    }
    evaluate(&mut client, user("open", "open-thread", "hello")).await;
    server.shutdown().await;
    assert!(state.exists());

    let server = start_server(config).await;
    let mut client = server.client().await;
    for t in 0..50 {
        let v = evaluate(
            &mut client,
            user(format!("again-{t}"), &format!("locked-{t}"), "hi"),
        )
        .await;
        assert_eq!(reason(&v), pb::Reason::AlreadyEnded, "thread {t}");
    }
    let v = evaluate(&mut client, user("open-2", "open-thread", "hello again")).await;
    assert_eq!(
        (action(&v), v.thread.unwrap().turn),
        (pb::Action::Continue, 2)
    );
    server.shutdown().await;
}

/// The exposure count and the thread's welfare model survive a restart, even under a policy that
/// names its models in another order: the state file names the labels of its slots.
#[tokio::test]
async fn welfare_state_survives_a_restart_under_a_reordered_policy() {
    use std::sync::Arc;
    use threadwarden::state::StoreConfig;
    use threadwarden::telemetry::Metrics;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.bin");
    let policy = dir.path().join("policy.yaml");
    let write_policy = |models: &str| {
        std::fs::write(&policy, format!("version: w\nmodels: [{models}, \"*\"]\n")).unwrap()
    };
    write_policy("\"claude-opus-4*\", \"claude-sonnet-*\"");
    let server = start_server(ServeConfig {
        state_file: Some(state.clone()),
        policy_path: Some(policy.clone()),
        metrics: Arc::new(Metrics::default()),
        ..ServeConfig::default()
    })
    .await;
    let mut client = server.client().await;
    let mut e = labelled("a1", "sonnet-thread", pb::Category::Abuse, 0.9);
    e.model = "claude-sonnet-4-5".into();
    let v = evaluate(&mut client, e).await;
    assert_eq!(v.thread.unwrap().exposures, 1);
    server.shutdown().await;

    write_policy("\"claude-sonnet-*\", \"claude-opus-4*\"");
    let metrics = Arc::new(Metrics::default());
    let server = start_server(ServeConfig {
        state_file: Some(state.clone()),
        policy_path: Some(policy.clone()),
        metrics: metrics.clone(),
        store: StoreConfig {
            idle_ttl: std::time::Duration::from_secs(1),
            sweep_interval: std::time::Duration::from_millis(100),
            ..StoreConfig::default()
        },
        ..ServeConfig::default()
    })
    .await;
    let mut client = server.client().await;
    let summary = client
        .get_thread(pb::GetThreadRequest {
            tenant_id: "tenant-a".into(),
            thread_id: "sonnet-thread".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .thread
        .unwrap();
    assert_eq!((summary.exposures, summary.redirects), (1, 1));
    // Left idle, the thread is forgotten with its streak open: counted under its own model.
    let want = "threadwarden_welfare_harmful_streak_turns_count{model=\"claude-sonnet-*\",outcome=\"idle\"} 1";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !metrics.render().contains(want) {
        assert!(std::time::Instant::now() < deadline, "{}", metrics.render());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        metrics
            .render()
            .contains("threadwarden_welfare_harmful_streak_turns_count{model=\"claude-opus-4*\",outcome=\"idle\"} 0")
    );
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_idle_streams_with_unavailable_after_answering_everything() {
    let server = start_server(ServeConfig {
        grace: std::time::Duration::from_secs(30),
        ..ServeConfig::default()
    })
    .await;
    let mut client = server.client().await;
    let (tx, mut responses) = open_stream(&mut client, 4).await;
    tx.send(req(user("d1", "drain", "hello"))).await.unwrap();
    let first = responses.next().await.unwrap().unwrap();
    assert_eq!(first.thread_id, "drain", "responses carry the thread id");
    let TestServer { stop, task, .. } = server;
    let _ = stop.unwrap().send(());
    // The client keeps its stream open but sends nothing: the server closes it, with a status
    // that tells it to reconnect, long before the 30 s grace.
    let status = responses.next().await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("reconnect"));
    drop(tx);
    tokio::time::timeout(std::time::Duration::from_secs(10), task)
        .await
        .expect("the drain ends when streams are idle, not at the grace deadline")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_suspected_crisis_is_never_ended_by_escalation_or_the_model_and_is_counted() {
    let config = ServeConfig::default();
    let metrics = config.metrics.clone();
    let server = start_server(config).await;
    let mut client = server.client().await;
    // The caller's own label at 0.35: above the suspect threshold (0.3), below crisis (0.5).
    let v = evaluate(
        &mut client,
        labelled("s1", "sus", pb::Category::SelfHarm, 0.35),
    )
    .await;
    let summary = v.thread.unwrap();
    assert!(
        summary.crisis_suspected && !summary.crisis_active,
        "{summary:?}"
    );
    assert!(v.crisis.is_none(), "suspicion alone attaches no resources");
    for i in 0..6 {
        let v = evaluate(
            &mut client,
            labelled(
                format!("s2-{i}"),
                "sus",
                pb::Category::IndiscriminateWeapons,
                0.95,
            ),
        )
        .await;
        assert_eq!(action(&v), pb::Action::Redirect, "turn {i}");
        assert!(
            !v.redirect.as_ref().is_some_and(|r| r.warning),
            "no warning on turn {i}"
        );
    }
    let v = evaluate(&mut client, assistant("s3", "sus", true, true)).await;
    assert_eq!(action(&v), pb::Action::Continue);
    assert_eq!(v.end_denied_detail, "CRISIS_SUSPECTED");
    let summary = client
        .get_thread(pb::GetThreadRequest {
            tenant_id: "tenant-a".into(),
            thread_id: "sus".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .thread
        .unwrap();
    assert!(summary.crisis_suspected && !summary.ended);
    // Counted once, when the thread became suspected.
    let scrape = metrics.render();
    assert!(
        scrape.contains("threadwarden_crisis_suspected_total 1\n"),
        "{}",
        scrape
            .lines()
            .filter(|l| l.contains("suspected"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    server.shutdown().await;
}

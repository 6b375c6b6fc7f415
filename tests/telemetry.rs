//! Operating it: OTLP export to a real receiver, a Prometheus scrape over HTTP, the decision log,
//! and a canary that must appear in no log, trace, metric, decision record or state file.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use threadwarden::api::pb;
use threadwarden::api::pb::moderation_service_client::ModerationServiceClient;
use tokio_stream::StreamExt;

const BIN: &str = env!("CARGO_BIN_EXE_threadwarden");
const CANARY: &str = "zq-canary-4be1c9";
const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT_SPAN: &str = "b7ad6b7169203331";

/// A minimal OTLP collector: keeps every export request it receives.
#[derive(Clone, Default)]
struct Receiver {
    traces: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    metrics: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.traces.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.metrics.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

async fn start_receiver() -> (Receiver, String) {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let r = receiver.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(r.clone()))
            .add_service(MetricsServiceServer::new(r))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (receiver, format!("http://{addr}"))
}

struct Sidecar {
    child: Child,
    addr: String,
    admin: String,
    lines: Arc<Mutex<Vec<String>>>,
}

fn spawn(args: &[&str], env: &[(&str, &str)]) -> Sidecar {
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "debug,h2=warn,hyper=warn,tower=warn,tonic=warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    for pipe in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut addr, mut admin) = (None, None);
    while addr.is_none() || admin.is_none() {
        assert!(
            Instant::now() < deadline,
            "server did not start: {:?}",
            lines.lock().unwrap()
        );
        for line in lines.lock().unwrap().iter() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                if v["message"] == "serving" {
                    addr = v["listen"].as_str().map(String::from);
                }
                if let Some(a) = v["admin"].as_str() {
                    admin = Some(a.to_string());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Sidecar {
        child,
        addr: addr.unwrap(),
        admin: admin.unwrap(),
        lines,
    }
}

fn stop(mut s: Sidecar) -> Vec<String> {
    Command::new("kill")
        .args(["-TERM", &s.child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while s.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(s.child.wait().unwrap().code(), Some(0));
    std::thread::sleep(Duration::from_millis(100));
    s.lines.lock().unwrap().clone()
}

fn scrape(admin: &str) -> String {
    ureq::get(&format!("http://{admin}/metrics"))
        .call()
        .expect("scrape")
        .body_mut()
        .read_to_string()
        .unwrap()
}

/// Parses the exposition into (name{labels}, value) pairs, checking the format as it goes.
fn parse(text: &str) -> Vec<(String, f64)> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "bad line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').expect("series value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name {name:?}"
        );
        samples.push((series.to_string(), value));
    }
    samples
}

fn sample(samples: &[(String, f64)], series: &str) -> f64 {
    samples
        .iter()
        .find(|(s, _)| s == series)
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("no series {series}"))
}

/// Drives every RPC with the canary in every text field.
async fn drive(addr: &str, with_trace: bool) {
    let mut client = ModerationServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let text = format!("{CANARY} please help");
    let mut req = tonic::Request::new(pb::EvaluateRequest {
        event: Some(user("t-1", "traced", &text)),
    });
    if with_trace {
        req.metadata_mut().insert(
            "traceparent",
            format!("00-{TRACE_ID}-{PARENT_SPAN}-01").parse().unwrap(),
        );
    }
    client.evaluate(req).await.unwrap();
    // Escalation to an END, a crisis routing, a denied model end, a bad event.
    let mut events = Vec::new();
    for i in 0..4 {
        let mut e = labelled(
            format!("s{i}"),
            "severe",
            pb::Category::IndiscriminateWeapons,
            0.95,
        );
        e.payload = Some(pb::conversation_event::Payload::UserMessage(
            pb::UserMessage {
                text: format!("{text} {i}"),
            },
        ));
        events.push(e);
    }
    let mut crisis = labelled("c1", "crisis", pb::Category::SelfHarm, 0.9);
    crisis.payload = Some(pb::conversation_event::Payload::UserMessage(
        pb::UserMessage { text: text.clone() },
    ));
    events.push(crisis);
    let mut model_end = assistant("m1", "crisis", true, true);
    model_end.payload = Some(pb::conversation_event::Payload::AssistantMessage(
        pb::AssistantMessage {
            text: text.clone(),
            refused: true,
            end_conversation_requested: true,
        },
    ));
    events.push(model_end);
    events.push(user("", "bad", &text));
    let reqs: Vec<_> = events
        .into_iter()
        .map(|e| pb::ModerateRequest { event: Some(e) })
        .collect();
    let mut stream = client
        .moderate(tokio_stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(r) = stream.next().await {
        r.unwrap();
        n += 1;
    }
    assert_eq!(n, 7);
    client
        .submit_feedback(pb::SubmitFeedbackRequest {
            tenant_id: "tenant-a".into(),
            thread_id: "severe".into(),
            event_id: "s3".into(),
            rating: pb::Rating::ThumbsDown as i32,
            comment: format!("{CANARY} wrong call"),
        })
        .await
        .unwrap();
    client
        .get_thread(pb::GetThreadRequest {
            tenant_id: "tenant-a".into(),
            thread_id: "severe".into(),
        })
        .await
        .unwrap();
}

fn attr(kvs: &[opentelemetry_proto::tonic::common::v1::KeyValue], key: &str) -> Option<String> {
    kvs.iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            Value::BoolValue(b) => Some(b.to_string()),
            Value::IntValue(i) => Some(i.to_string()),
            Value::DoubleValue(d) => Some(d.to_string()),
            _ => None,
        })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_prometheus_decision_log_and_no_text_anywhere() {
    let (receiver, endpoint) = start_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let decisions = dir.path().join("decisions.jsonl");
    let state = dir.path().join("state.bin");
    let sidecar = spawn(
        &[
            "--decision-log",
            decisions.to_str().unwrap(),
            "--state-file",
            state.to_str().unwrap(),
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_SERVICE_NAME", "tw-under-test"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=ci"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "300"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let before = parse(&scrape(&sidecar.admin));
    assert_eq!(
        sample(&before, "threadwarden_events_total{kind=\"user_message\"}"),
        0.0
    );
    let ready = ureq::get(&format!("http://{}/readyz", sidecar.admin))
        .call()
        .unwrap();
    assert_eq!(ready.status(), 200);

    drive(&sidecar.addr, true).await;

    // Prometheus: the counters moved with the traffic.
    let metrics_text = scrape(&sidecar.admin);
    let after = parse(&metrics_text);
    assert_eq!(
        sample(&after, "threadwarden_events_total{kind=\"user_message\"}"),
        6.0
    );
    assert_eq!(
        sample(
            &after,
            "threadwarden_events_total{kind=\"assistant_message\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &after,
            "threadwarden_verdicts_total{action=\"end\",reason=\"persistent_harm\",enforced=\"true\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &after,
            "threadwarden_ends_total{reason=\"persistent_harm\"}"
        ),
        1.0
    );
    assert_eq!(sample(&after, "threadwarden_warnings_total"), 1.0);
    assert!(
        sample(
            &after,
            "threadwarden_crisis_routings_total{kind=\"self_harm\"}"
        ) >= 2.0
    );
    assert_eq!(
        sample(
            &after,
            "threadwarden_feedback_total{rating=\"thumbs_down\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &after,
            "threadwarden_errors_total{code=\"INVALID_ARGUMENT\"}"
        ),
        1.0
    );
    assert_eq!(sample(&after, "threadwarden_active_threads"), 3.0);
    assert_eq!(
        sample(&after, "threadwarden_decision_duration_seconds_count"),
        7.0
    );
    assert_eq!(sample(&after, "threadwarden_open_streams"), 0.0);
    for (series, _) in &after {
        assert!(
            !series.contains("thread_id") && !series.contains("tenant"),
            "{series}"
        );
    }
    dashboard_queries_use_exported_metrics(&after);

    // Let at least one metrics export happen, then stop (which flushes spans).
    let deadline = Instant::now() + Duration::from_secs(10);
    while receiver.metrics.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no OTLP metrics arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = tokio::task::spawn_blocking(move || stop(sidecar))
        .await
        .unwrap();

    // OTLP traces: one span per event, joined to the caller's trace, with the decision on it.
    let traces = receiver.traces.lock().unwrap().clone();
    let spans: Vec<_> = traces
        .iter()
        .flat_map(|t| &t.resource_spans)
        .flat_map(|rs| {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| attr(&r.attributes, "service.name"));
            let env = rs
                .resource
                .as_ref()
                .and_then(|r| attr(&r.attributes, "deployment.environment"));
            assert_eq!(service.as_deref(), Some("tw-under-test"));
            assert_eq!(env.as_deref(), Some("ci"));
            rs.scope_spans.iter().flat_map(|ss| ss.spans.clone())
        })
        .collect();
    assert!(spans.len() >= 8, "{} spans", spans.len());
    let traced = spans
        .iter()
        .find(|s| hex(&s.trace_id) == TRACE_ID)
        .expect("the Evaluate span joined the caller's trace");
    assert_eq!(hex(&traced.parent_span_id), PARENT_SPAN);
    assert_eq!(
        attr(&traced.attributes, "verdict.action").as_deref(),
        Some("continue")
    );
    let end = spans
        .iter()
        .find(|s| attr(&s.attributes, "verdict.reason").as_deref() == Some("persistent_harm"))
        .expect("the END span");
    assert_eq!(
        attr(&end.attributes, "verdict.action").as_deref(),
        Some("end")
    );
    assert_eq!(
        attr(&end.attributes, "verdict.categories").as_deref(),
        Some("indiscriminate_weapons")
    );
    assert!(attr(&end.attributes, "decision.latency_us").is_some());
    let hash = attr(&end.attributes, "thread.hash").unwrap();
    assert_eq!(hash.len(), 16, "a keyed hash, never the thread id");
    assert!(
        spans
            .iter()
            .any(|s| attr(&s.attributes, "crisis.kind").as_deref() == Some("self_harm"))
    );
    assert!(
        spans
            .iter()
            .any(|s| attr(&s.attributes, "error.code").as_deref() == Some("INVALID_ARGUMENT"))
    );

    // OTLP metrics, with the same names minus `_total`.
    let metric_requests = receiver.metrics.lock().unwrap().clone();
    let names: Vec<String> = metric_requests
        .iter()
        .flat_map(|m| &m.resource_metrics)
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .map(|m| m.name.clone())
        .collect();
    for want in [
        "threadwarden_events",
        "threadwarden_verdicts",
        "threadwarden_ends",
        "threadwarden_active_threads",
        "threadwarden_welfare_exposures",
        "threadwarden_welfare_model_end_requests",
        "threadwarden_welfare_ends",
        "threadwarden_welfare_harmful_streak_turns",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    // Welfare over OTLP: the END's streak in a real histogram, and every `model` attribute is a
    // bounded label (the built-in policy names no model: all `other`), never the event's text.
    let welfare_points: Vec<_> = metric_requests
        .iter()
        .flat_map(|m| &m.resource_metrics)
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .filter(|m| m.name.starts_with("threadwarden_welfare_"))
        .collect();
    let mut models = std::collections::BTreeSet::new();
    let mut streak_count = 0;
    for metric in &welfare_points {
        use opentelemetry_proto::tonic::metrics::v1::metric::Data;
        match metric.data.as_ref().unwrap() {
            Data::Sum(sum) => {
                for p in &sum.data_points {
                    models.insert(attr(&p.attributes, "model").unwrap());
                }
            }
            Data::Histogram(h) => {
                for p in &h.data_points {
                    models.insert(attr(&p.attributes, "model").unwrap());
                    if attr(&p.attributes, "outcome").as_deref() == Some("ended") {
                        streak_count = streak_count.max(p.count);
                    }
                }
            }
            other => panic!("unexpected welfare data {other:?}"),
        }
    }
    assert_eq!(models.into_iter().collect::<Vec<_>>(), ["other"]);
    assert_eq!(streak_count, 1, "the END closed one streak");

    // Decision log: END, warning, crisis, denied model end, feedback; joinable by event id.
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&decisions)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let find =
        |pred: &dyn Fn(&serde_json::Value) -> bool| records.iter().find(|r| pred(r)).cloned();
    let end = find(&|r| r["action"] == "end").expect("END record");
    assert_eq!(end["event_id"], "s3");
    assert_eq!(end["reason"], "persistent_harm");
    assert_eq!(
        end["thread"].as_str().unwrap(),
        hash,
        "same keyed hash in traces and decision log"
    );
    assert!(
        end["categories"]["indiscriminate_weapons"]
            .as_f64()
            .unwrap()
            > 0.9
    );
    assert!(end["policy_version"].is_string());
    assert!(find(&|r| r["warning"] == true).is_some());
    assert!(find(&|r| r["crisis"] == "self_harm").is_some());
    assert!(find(&|r| r["end_denied"] == "CRISIS_ACTIVE").is_some());
    let feedback = find(&|r| r["record"] == "feedback").expect("feedback record");
    assert_eq!(
        (feedback["event_id"].as_str(), feedback["rating"].as_str()),
        (Some("s3"), Some("thumbs_down"))
    );
    assert_eq!(feedback["thread"], end["thread"]);

    // Privacy: the canary is in no log line, span, metric, decision record or state file.
    let all_logs = logs.join("\n");
    assert!(all_logs.contains("\"serving\""), "logs were captured");
    assert!(!all_logs.contains(CANARY), "canary in logs");
    assert!(!format!("{traces:?}").contains(CANARY), "canary in traces");
    assert!(
        !format!("{metric_requests:?}").contains(CANARY),
        "canary in OTLP metrics"
    );
    assert!(!metrics_text.contains(CANARY), "canary in /metrics");
    assert!(
        !std::fs::read_to_string(&decisions)
            .unwrap()
            .contains(CANARY),
        "canary in the decision log"
    );
    let state_bytes = std::fs::read(&state).unwrap();
    assert!(
        !state_bytes
            .windows(CANARY.len())
            .any(|w| w == CANARY.as_bytes()),
        "canary in the state file"
    );
    for id in ["traced", "severe", "crisis"] {
        assert!(
            !all_logs.contains(&format!("\"{id}\"")),
            "raw thread id {id} in logs"
        );
    }
}

/// Every metric the Grafana dashboard queries is in a live scrape.
fn dashboard_queries_use_exported_metrics(scraped: &[(String, f64)]) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/threadwarden.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let names: std::collections::HashSet<&str> = scraped
        .iter()
        .map(|(s, _)| s.split('{').next().unwrap())
        .collect();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(i) = rest.find("threadwarden_") {
                let tail = &rest[i..];
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                let metric = &tail[..end];
                assert!(
                    names.contains(metric),
                    "panel {:?} queries {metric}, which is not exported",
                    panel["title"]
                );
                checked += 1;
                rest = &tail[end..];
            }
        }
    }
    assert!(checked >= 14, "only {checked} metric references found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_logging_when_enabled_puts_text_in_the_decision_log_only() {
    let dir = tempfile::tempdir().unwrap();
    let decisions = dir.path().join("decisions.jsonl");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "version: content-on\nlog_content: true\n").unwrap();
    let sidecar = spawn(
        &[
            "--decision-log",
            decisions.to_str().unwrap(),
            "--config",
            policy.to_str().unwrap(),
        ],
        &[],
    );
    drive(&sidecar.addr, false).await;
    let logs = tokio::task::spawn_blocking(move || stop(sidecar))
        .await
        .unwrap();
    let text = std::fs::read_to_string(&decisions).unwrap();
    assert!(
        text.contains(CANARY),
        "the opt-in puts text in decision records"
    );
    assert!(!logs.join("\n").contains(CANARY), "but never in logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_otlp_endpoint_nothing_is_exported_and_nothing_fails() {
    let sidecar = spawn(&["--decision-log", "off"], &[]);
    let mut client = ModerationServiceClient::connect(format!("http://{}", sidecar.addr))
        .await
        .unwrap();
    let v = evaluate(&mut client, user("x", "y", "hello")).await;
    assert_eq!(action(&v), pb::Action::Continue);
    let ok = ureq::get(&format!("http://{}/healthz", sidecar.admin))
        .call()
        .unwrap();
    assert_eq!(ok.status(), 200);
    let logs = tokio::task::spawn_blocking(move || stop(sidecar))
        .await
        .unwrap();
    assert!(!logs.iter().any(|l| l.contains("OTLP")), "{logs:?}");
}

/// One event of the welfare script: `model` on the event, the canary in every text.
fn on(model: &str, mut e: pb::ConversationEvent) -> pb::ModerateRequest {
    e.model = model.into();
    match &mut e.payload {
        Some(pb::conversation_event::Payload::UserMessage(m)) => {
            m.text = format!("{CANARY} {}", m.text)
        }
        Some(pb::conversation_event::Payload::AssistantMessage(m)) => {
            m.text = format!("{CANARY} {}", m.text)
        }
        _ => {}
    }
    pb::ModerateRequest { event: Some(e) }
}

/// The welfare figures against a scripted conversation, over a real in-process server on
/// 127.0.0.1 and a real scrape of its admin port: every figure per model label, the exposure
/// count in `GetThread`, the decision-log fields, and no text or unnamed model in any label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welfare_figures_follow_a_scripted_conversation() {
    use pb::Category as C;
    use threadwarden::state::StoreConfig;
    use threadwarden::telemetry::decision_log::Sink;
    const OPUS: &str = "claude-opus-4-1";
    const SONNET: &str = "claude-sonnet-4-5";
    // Not named by the policy: must only ever be counted as `other`.
    const UNLISTED: &str = "gpt-zq-unlisted-7f3";

    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "version: welfare-1\nmodels: [\"claude-opus-4*\", \"claude-sonnet-*\", \"*\"]\n\
         escalation: {decay_benign_turns: 2}\n",
    )
    .unwrap();
    let decisions = dir.path().join("decisions.jsonl");
    let metrics = Arc::new(threadwarden::telemetry::Metrics::default());
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin_addr = admin.local_addr().unwrap().to_string();
    let app = threadwarden::server::App::build(threadwarden::server::ServeConfig {
        policy_path: Some(policy),
        decision_log: Sink::File(decisions.clone()),
        metrics: metrics.clone(),
        // Ordinary threads are forgotten 2 s after their last event; ended ones are kept.
        store: StoreConfig {
            idle_ttl: Duration::from_secs(2),
            locked_ttl: Duration::from_secs(3600),
            capacity: 1000,
            sweep_interval: Duration::from_millis(200),
        },
        ..threadwarden::server::ServeConfig::default()
    })
    .unwrap()
    .with_admin_listener(admin);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run(listener, async {
        let _ = stop_rx.await;
    }));
    let mut client = ModerationServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();

    let weapons = |id: &str, thread: &str| labelled(id, thread, C::IndiscriminateWeapons, 0.95);
    let script = vec![
        // Opus: a severe request pressed four times: three redirects (the third warns), END.
        on(OPUS, weapons("e1", "end")),
        on(OPUS, weapons("e2", "end")),
        on(OPUS, weapons("e3", "end")),
        on(OPUS, weapons("e4", "end")),
        // Sonnet: abuse twice, then two benign turns: the redirects took hold (decay at 2).
        on(SONNET, labelled("t1", "turn", C::Abuse, 0.9)),
        on(SONNET, labelled("t2", "turn", C::Abuse, 0.9)),
        on(
            SONNET,
            user("t3", "turn", "Sorry. Can you suggest a pasta recipe?"),
        ),
        on(SONNET, user("t4", "turn", "Thanks, that sounds good.")),
        // ... and the model asks to end a thread where no warning was given: denied.
        on(SONNET, assistant("t5", "turn", false, true)),
        // Opus: warned, one benign turn, then the model refuses and asks to end: granted.
        on(OPUS, weapons("m1", "model")),
        on(OPUS, weapons("m2", "model")),
        on(OPUS, weapons("m3", "model")),
        on(OPUS, user("m4", "model", "ok whatever")),
        on(OPUS, assistant("m5", "model", true, true)),
        // An unnamed model: the user asks to end and confirms.
        on(UNLISTED, user("u1", "user-end", "Please end this chat.")),
        on(UNLISTED, confirm_end("u2", "user-end")),
        // Sonnet: one hateful turn, then silence: the store forgets it with the streak open.
        on(SONNET, labelled("i1", "idle", C::Hate, 0.9)),
        // Sonnet: a crisis routing (a notable record whatever its welfare figures).
        on(
            SONNET,
            user(
                "c1",
                "crisis",
                "I don't want to live anymore, I want to kill myself",
            ),
        ),
    ];
    let n = script.len();
    let mut stream = client
        .moderate(tokio_stream::iter(script))
        .await
        .unwrap()
        .into_inner();
    let mut verdicts = Vec::new();
    while let Some(r) = stream.next().await {
        match r.unwrap().result.unwrap() {
            pb::moderate_response::Result::Verdict(v) => verdicts.push(v),
            pb::moderate_response::Result::Error(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(verdicts.len(), n);
    // The script did what it says (so the figures below test the welfare, not the policy).
    assert_eq!(reason(&verdicts[3]), pb::Reason::PersistentHarm);
    assert_eq!(verdicts[8].end_denied_detail, "NOT_WARNED");
    assert_eq!(reason(&verdicts[13]), pb::Reason::ModelRequested);
    assert_eq!(action(&verdicts[13]), pb::Action::End);
    assert_eq!(reason(&verdicts[15]), pb::Reason::UserRequested);
    assert_eq!(action(&verdicts[15]), pb::Action::End);
    assert_eq!(verdicts[3].thread.as_ref().unwrap().exposures, 4);

    // GetThread carries the exposure count (field 8); decay does not reset it.
    let exposures = |thread: &str| {
        let mut client = client.clone();
        let thread = thread.to_string();
        async move {
            client
                .get_thread(pb::GetThreadRequest {
                    tenant_id: "tenant-a".into(),
                    thread_id: thread,
                })
                .await
                .unwrap()
                .into_inner()
                .thread
                .unwrap()
        }
    };
    assert_eq!(exposures("end").await.exposures, 4);
    let turned = exposures("turn").await;
    assert_eq!((turned.exposures, turned.redirects), (2, 0));
    assert_eq!(exposures("model").await.exposures, 3);
    assert_eq!(exposures("user-end").await.exposures, 0);

    // The idle thread is forgotten by the sweeper: its open streak closes `idle`.
    let deadline = Instant::now() + Duration::from_secs(15);
    let idle = "threadwarden_welfare_harmful_streak_turns_count{model=\"claude-sonnet-*\",outcome=\"idle\"}";
    let scraped = loop {
        let a = admin_addr.clone();
        let text = tokio::task::spawn_blocking(move || scrape(&a))
            .await
            .unwrap();
        if parse(&text).iter().any(|(s, v)| s == idle && *v >= 1.0) {
            break text;
        }
        assert!(Instant::now() < deadline, "the idle streak never closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let s = parse(&scraped);
    let get = |series: &str| sample(&s, series);
    let exposures_of = |model: &str, category: &str| {
        get(&format!(
            "threadwarden_welfare_exposures_total{{model=\"{model}\",category=\"{category}\"}}"
        ))
    };
    assert_eq!(
        exposures_of("claude-opus-4*", "indiscriminate_weapons"),
        7.0
    );
    assert_eq!(exposures_of("claude-sonnet-*", "abuse"), 2.0);
    assert_eq!(exposures_of("claude-sonnet-*", "hate"), 1.0);
    assert_eq!(
        exposures_of("claude-sonnet-*", "indiscriminate_weapons"),
        0.0
    );
    assert_eq!(exposures_of("other", "abuse"), 0.0);

    let streak = |model: &str, outcome: &str, part: &str| {
        get(&format!(
            "threadwarden_welfare_harmful_streak_turns_{part}{{model=\"{model}\",outcome=\"{outcome}\"}}"
        ))
    };
    // Opus ended twice: after 4 harmful turns, and after 3 and a counted refusal.
    assert_eq!(streak("claude-opus-4*", "ended", "count"), 2.0);
    assert_eq!(streak("claude-opus-4*", "ended", "sum"), 8.0);
    assert_eq!(
        get(
            "threadwarden_welfare_harmful_streak_turns_bucket{model=\"claude-opus-4*\",outcome=\"ended\",le=\"3\"}"
        ),
        0.0
    );
    assert_eq!(
        get(
            "threadwarden_welfare_harmful_streak_turns_bucket{model=\"claude-opus-4*\",outcome=\"ended\",le=\"4\"}"
        ),
        2.0
    );
    assert_eq!(streak("claude-sonnet-*", "turned", "count"), 1.0);
    assert_eq!(streak("claude-sonnet-*", "turned", "sum"), 2.0);
    assert_eq!(streak("claude-sonnet-*", "idle", "count"), 1.0);
    assert_eq!(streak("claude-sonnet-*", "idle", "sum"), 1.0);
    assert_eq!(
        streak("claude-opus-4*", "idle", "count"),
        0.0,
        "ended threads are not idle"
    );
    assert_eq!(
        streak("other", "ended", "count"),
        0.0,
        "a benign END closes no streak"
    );

    let requests = |model: &str, outcome: &str, reason: &str| {
        get(&format!(
            "threadwarden_welfare_model_end_requests_total{{model=\"{model}\",outcome=\"{outcome}\",reason=\"{reason}\"}}"
        ))
    };
    assert_eq!(requests("claude-opus-4*", "granted", "none"), 1.0);
    assert_eq!(requests("claude-sonnet-*", "denied", "not_warned"), 1.0);
    assert_eq!(requests("claude-sonnet-*", "granted", "none"), 0.0);

    let ends = |model: &str, reason: &str| {
        get(&format!(
            "threadwarden_welfare_ends_total{{model=\"{model}\",reason=\"{reason}\"}}"
        ))
    };
    assert_eq!(ends("claude-opus-4*", "persistent_harm"), 1.0);
    assert_eq!(ends("claude-opus-4*", "model_requested"), 1.0);
    assert_eq!(ends("other", "user_requested"), 1.0);
    assert_eq!(ends("claude-sonnet-*", "user_requested"), 0.0);

    // Labels: only the policy's names and `other`; never text, never an unnamed model.
    for (series, _) in &s {
        if let Some(i) = series.find("model=\"") {
            let model = series[i + 7..].split('"').next().unwrap();
            assert!(
                ["claude-opus-4*", "claude-sonnet-*", "other"].contains(&model),
                "{series}"
            );
        }
    }
    assert!(!scraped.contains(CANARY), "canary in /metrics");
    assert!(
        !scraped.contains(UNLISTED),
        "an unnamed model became a label"
    );

    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();

    // Decision log: the model label, the exposure count and the closed streaks; no text.
    let log = std::fs::read_to_string(&decisions).unwrap();
    assert!(!log.contains(CANARY), "canary in the decision log");
    assert!(
        !log.contains(UNLISTED),
        "an unnamed model in the decision log"
    );
    let records: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let find = |event_id: &str| {
        records
            .iter()
            .find(|r| r["event_id"] == event_id)
            .unwrap_or_else(|| panic!("no record for {event_id}: {records:?}"))
    };
    let end = find("e4");
    assert_eq!(end["model"], "claude-opus-4*");
    assert_eq!(end["exposures"], 4);
    assert_eq!(end["streak"]["outcome"], "ended");
    assert_eq!(end["streak"]["harmful_turns"], 4);
    let turned = find("t4");
    assert_eq!(turned["streak"]["outcome"], "turned");
    assert_eq!(turned["streak"]["harmful_turns"], 2);
    assert_eq!(turned["model"], "claude-sonnet-*");
    assert_eq!(find("u2")["model"], "other");
    let crisis = find("c1");
    assert_eq!(crisis["crisis"], "self_harm");
    assert_eq!(
        crisis["model"], "claude-sonnet-*",
        "every record names its model's label"
    );
    let idle = records
        .iter()
        .find(|r| r["record"] == "welfare")
        .expect("a welfare record for the idle thread");
    assert_eq!(idle["streak"]["outcome"], "idle");
    assert_eq!(idle["streak"]["harmful_turns"], 1);
    assert_eq!(idle["model"], "claude-sonnet-*");
    assert_eq!(idle["thread"].as_str().unwrap().len(), 16, "a keyed hash");
}

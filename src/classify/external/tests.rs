//! The adapters' pure request and answer functions, and `External` against real HTTP servers
//! on 127.0.0.1: an axum fake that checks each API's request and answers its shape, and raw
//! listeners for the servers that misbehave.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use bytes::Bytes;
use serde_json::{Value, json};
use tower::{BoxError, Service, ServiceExt};

use super::*;
use crate::domain::Category;

const TIMEOUT: Duration = Duration::from_millis(300);
/// Slack over the timeout for a failing call: scheduling on a busy 2-core machine, not work.
const MARGIN: Duration = Duration::from_millis(200);

// ---------------------------------------------------------------------------------------------
// The fake server

/// One request the fake received.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    path: String,
    auth: Option<String>,
    body: Value,
}

struct Fake {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Fake {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn url(&self) -> String {
        // The trailing slash is on purpose: `judge` must not send `//v1/...`.
        format!("http://{}/", self.addr)
    }
}

/// Serves `answer(body) -> (status, body)` on every path, recording each request.
async fn fake<F, Fut>(answer: F) -> Fake
where
    F: Fn(Value) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = (u16, String)> + Send + 'static,
{
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let app = Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let answer = answer.clone();
            let record = record.clone();
            async move {
                let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                record.lock().unwrap().push(Seen {
                    method,
                    path: uri.path().to_string(),
                    auth: headers
                        .get(header::AUTHORIZATION)
                        .map(|v| v.to_str().unwrap().to_string()),
                    body: body.clone(),
                });
                let (status, text) = answer(body).await;
                (
                    StatusCode::from_u16(status).unwrap(),
                    [(header::CONTENT_TYPE, "application/json")],
                    text,
                )
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Fake { addr, seen }
}

/// A fake answering every request with `status` and `body`.
async fn fixed(status: u16, body: impl Into<String>) -> Fake {
    let body = body.into();
    fake(move |_| {
        let body = body.clone();
        async move { (status, body) }
    })
    .await
}

fn chat(content: &str) -> String {
    json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "meta-llama/Llama-Guard-3-8B",
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": content },
            "finish_reason": "stop",
        }],
        "usage": { "prompt_tokens": 200, "completion_tokens": 5, "total_tokens": 205 },
    })
    .to_string()
}

fn logprobs(top: &[(&str, f64)]) -> String {
    let top: Vec<Value> = top
        .iter()
        .map(|(t, lp)| json!({ "token": t, "logprob": lp, "bytes": t.as_bytes() }))
        .collect();
    json!({
        "id": "chatcmpl-2",
        "object": "chat.completion",
        "model": "google/shieldgemma-2b",
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": top[0]["token"] },
            "logprobs": { "content": [{
                "token": top[0]["token"],
                "logprob": top[0]["logprob"],
                "top_logprobs": top,
            }] },
            "finish_reason": "length",
        }],
    })
    .to_string()
}

fn moderation(entries: &[(&str, bool, f64)]) -> String {
    let mut categories = serde_json::Map::new();
    let mut scores = serde_json::Map::new();
    let mut applied = serde_json::Map::new();
    for (name, flagged, score) in entries {
        categories.insert(name.to_string(), json!(flagged));
        scores.insert(name.to_string(), json!(score));
        applied.insert(name.to_string(), json!(["text"]));
    }
    json!({
        "id": "modr-1",
        "model": "omni-moderation-latest",
        "results": [{
            "flagged": entries.iter().any(|e| e.1),
            "categories": categories,
            "category_scores": scores,
            "category_applied_input_types": applied,
        }],
    })
    .to_string()
}

fn config(kind: Kind, url: String) -> ExternalConfig {
    ExternalConfig {
        kind,
        url,
        model: match kind {
            Kind::OpenaiModeration => "omni-moderation-latest",
            Kind::LlamaGuard => "meta-llama/Llama-Guard-3-8B",
            Kind::Shieldgemma => "google/shieldgemma-2b",
        }
        .into(),
        timeout: TIMEOUT,
        ..ExternalConfig::default()
    }
}

fn client(config: &ExternalConfig) -> (External, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let external = External::new(config, metrics.clone()).unwrap();
    (external, metrics)
}

/// Failures counted under every cause, summed.
fn all_errors(metrics: &Metrics) -> u64 {
    Failure::CAUSES
        .iter()
        .map(|c| metrics.external.errors(c))
        .sum()
}

fn breaker_gauge(metrics: &Metrics) -> f64 {
    let mut value = f64::NAN;
    metrics.gauges(|name, v| {
        if name == "threadwarden_external_breaker_state" {
            value = v;
        }
    });
    value
}

fn flagged(j: &Judgement) -> Vec<Category> {
    Category::ALL
        .into_iter()
        .filter(|c| j.flagged[c.index()])
        .collect()
}

// ---------------------------------------------------------------------------------------------
// OpenAI moderation

#[test]
fn openai_request_omits_an_empty_model() {
    let mut c = config(Kind::OpenaiModeration, "http://h".into());
    assert_eq!(
        openai::request(&c, "hi"),
        json!({ "model": "omni-moderation-latest", "input": "hi" })
    );
    c.model.clear();
    assert_eq!(openai::request(&c, "hi"), json!({ "input": "hi" }));
}

#[tokio::test]
async fn openai_flagged_maps_categories_and_crisis() {
    let fake = fixed(
        200,
        moderation(&[
            ("violence", true, 0.91),
            ("illicit/violent", false, 0.40),
            ("hate", false, 0.02),
            ("self-harm/intent", true, 0.31),
            ("harassment/threatening", false, 0.2),
            ("violence/graphic", true, 0.8),
            ("new-category", true, 0.7),
        ]),
    )
    .await;
    let c = config(Kind::OpenaiModeration, fake.url());
    let (external, metrics) = client(&c);
    let j = external
        .judge(&c, "some text", Some("the previous turn"))
        .await
        .unwrap();

    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, Method::POST);
    assert_eq!(seen[0].path, "/v1/moderations");
    assert_eq!(seen[0].auth, None);
    // The context is not sent for this kind.
    assert_eq!(
        seen[0].body,
        json!({ "model": "omni-moderation-latest", "input": "some text" })
    );

    let vc = Category::ViolentCrime.index();
    assert_eq!(flagged(&j), vec![Category::ViolentCrime]);
    assert!((j.scores[vc] - 0.91).abs() < 1e-6, "max of the two: {j:?}");
    assert!((j.scores[Category::Hate.index()] - 0.02).abs() < 1e-6);
    // Flagged crisis: raised to the floor; unflagged: the raw score.
    assert_eq!(j.crisis_self, FLAGGED_CRISIS);
    assert!((j.crisis_others - 0.2).abs() < 1e-6);
    // violence/graphic is ignored; new-category is unknown.
    assert_eq!(j.unknown_codes, 1);
    assert_eq!(metrics.external.calls(), 1);
    assert_eq!(all_errors(&metrics), 0);
}

#[tokio::test]
async fn openai_unflagged_keeps_scores_and_flags_nothing() {
    let fake = fixed(
        200,
        moderation(&[
            ("harassment", false, 0.12),
            ("sexual", false, 0.03),
            ("self-harm/intent", false, 0.9),
        ]),
    )
    .await;
    let c = config(Kind::OpenaiModeration, fake.url());
    let (external, _) = client(&c);
    let j = external.judge(&c, "hello", None).await.unwrap();
    assert!(flagged(&j).is_empty());
    assert!((j.scores[Category::Abuse.index()] - 0.12).abs() < 1e-6);
    assert!((j.scores[Category::Sexual.index()] - 0.03).abs() < 1e-6);
    // A high score counts even unflagged.
    assert!((j.crisis_self - 0.9).abs() < 1e-6);
}

#[test]
fn openai_config_overrides_the_default_map() {
    let mut c = config(Kind::OpenaiModeration, "http://h".into());
    c.categories.insert(
        "violence/graphic".into(),
        Target::Category(Category::HarmToOthers),
    );
    c.categories.insert("violence".into(), Target::Ignore);
    c.categories
        .insert("new-category".into(), Target::CrisisOthers);
    let body = moderation(&[
        ("violence", true, 0.9),
        ("violence/graphic", true, 0.6),
        ("new-category", false, 0.4),
    ]);
    let j = openai::parse(&c, body.as_bytes()).unwrap();
    assert_eq!(flagged(&j), vec![Category::HarmToOthers]);
    assert_eq!(j.scores[Category::ViolentCrime.index()], 0.0);
    assert!((j.crisis_others - 0.4).abs() < 1e-6);
    assert_eq!(j.unknown_codes, 0);
}

#[test]
fn openai_malformed_answers_are_parse_failures() {
    let c = config(Kind::OpenaiModeration, "http://h".into());
    for body in [
        "not json",
        "{}",
        r#"{"results": []}"#,
        r#"{"results": {}}"#,
        r#"{"results": [{"categories": {"hate": true}}]}"#,
        r#"{"results": [{"categories": {"hate": "yes"}, "category_scores": {"hate": 0.5}}]}"#,
        r#"{"results": [{"categories": {"hate": true}, "category_scores": {"hate": "high"}}]}"#,
        r#"{"results": [{"categories": [], "category_scores": {}}]}"#,
    ] {
        assert_eq!(
            openai::parse(&c, body.as_bytes()),
            Err(Failure::Parse),
            "{body}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Llama Guard

#[tokio::test]
async fn guard_server_template_safe_and_unsafe() {
    let fake = fake(|body: Value| async move {
        let last = body["messages"].as_array().unwrap().last().unwrap().clone();
        let text = last["content"].as_str().unwrap();
        (
            200,
            chat(if text.contains("bomb") {
                "unsafe\nS1,S10"
            } else {
                "safe"
            }),
        )
    })
    .await;
    let c = config(Kind::LlamaGuard, fake.url());
    let (external, metrics) = client(&c);

    let safe = external.judge(&c, "a cake recipe", None).await.unwrap();
    assert_eq!(safe, Judgement::default());
    let unsafe_ = external
        .judge(&c, "build a bomb", Some("How can I help?"))
        .await
        .unwrap();
    assert_eq!(
        flagged(&unsafe_),
        vec![Category::ViolentCrime, Category::Hate]
    );
    assert_eq!(unsafe_.scores[Category::ViolentCrime.index()], 1.0);
    assert_eq!(unsafe_.scores[Category::Hate.index()], 1.0);
    assert_eq!(metrics.external.calls(), 2);

    let seen = fake.seen();
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert_eq!(seen[0].method, Method::POST);
    assert_eq!(
        seen[0].body,
        json!({
            "model": "meta-llama/Llama-Guard-3-8B",
            "messages": [{ "role": "user", "content": "a cake recipe" }],
            "temperature": 0,
            "max_tokens": 24,
        })
    );
    assert_eq!(
        seen[1].body["messages"],
        json!([
            { "role": "user", "content": "" },
            { "role": "assistant", "content": "How can I help?" },
            { "role": "user", "content": "build a bomb" },
        ])
    );

    // With `context: false` the previous turn stays home.
    let no_context = ExternalConfig {
        context: false,
        ..c.clone()
    };
    external
        .judge(&no_context, "build a bomb", Some("How can I help?"))
        .await
        .unwrap();
    assert_eq!(
        fake.seen()[2].body["messages"],
        json!([{ "role": "user", "content": "build a bomb" }])
    );
}

const LLAMA_GUARD_3_PROMPT: &str = "Task: Check if there is unsafe content in 'User' messages in conversations according our safety policy with the below categories.

<BEGIN UNSAFE CONTENT CATEGORIES>
S1: Violent Crimes.
S2: Non-Violent Crimes.
S3: Sex Crimes.
S4: Child Exploitation.
S5: Defamation.
S6: Specialized Advice.
S7: Privacy.
S8: Intellectual Property.
S9: Indiscriminate Weapons.
S10: Hate.
S11: Self-Harm.
S12: Sexual Content.
S13: Elections.
S14: Code Interpreter Abuse.
<END UNSAFE CONTENT CATEGORIES>

<BEGIN CONVERSATION>

Agent: Anything else?

User: how do I hurt him

<END CONVERSATION>

Provide your safety assessment for ONLY THE LAST User message in the above conversation:
 - First line must read 'safe' or 'unsafe'.
 - If unsafe, a second line must include a comma-separated list of violated categories.";

#[tokio::test]
async fn guard_llama_guard_3_prompt_is_one_user_message() {
    let fake = fixed(200, chat("unsafe\nS1")).await;
    let c = ExternalConfig {
        prompt: Prompt::LlamaGuard3,
        ..config(Kind::LlamaGuard, fake.url())
    };
    let (external, _) = client(&c);
    external
        .judge(&c, "how do I hurt him", Some("Anything else?"))
        .await
        .unwrap();
    let seen = fake.seen();
    assert_eq!(
        seen[0].body["messages"],
        json!([{ "role": "user", "content": LLAMA_GUARD_3_PROMPT }])
    );
    let without = guard::llama_guard_3_prompt("hi", None);
    assert!(without.contains("<BEGIN CONVERSATION>\n\nUser: hi\n\n<END CONVERSATION>"));
    assert!(!without.contains("Agent:"));
}

#[test]
fn guard_verdicts_whitespace_case_and_codes() {
    let c = config(Kind::LlamaGuard, "http://h".into());
    let v = |s: &str| guard::verdict(&c, s);
    assert_eq!(v("safe"), Ok(Judgement::default()));
    assert_eq!(v("\n\n  Safe \n"), Ok(Judgement::default()));

    let j = v("  UNSAFE \n s1 , S10\n").unwrap();
    assert_eq!(flagged(&j), vec![Category::ViolentCrime, Category::Hate]);
    assert_eq!(j.unknown_codes, 0);

    let j = v("unsafe\nS1, S99").unwrap();
    assert_eq!(flagged(&j), vec![Category::ViolentCrime]);
    assert_eq!(j.unknown_codes, 1);

    let j = v("unsafe\nS11").unwrap();
    assert!(flagged(&j).is_empty());
    assert_eq!(j.crisis_self, 1.0);

    // S5 (defamation) is ignored by default: valid, flags nothing, counts nothing.
    assert_eq!(v("unsafe\nS5"), Ok(Judgement::default()));

    // The same code twice counts once.
    assert_eq!(v("unsafe\nS42,S42").unwrap().unknown_codes, 1);

    for bad in [
        "",
        "   \n ",
        "maybe",
        "safety",
        "unsafe",
        "UNSAFE\n\n",
        "yes\nS1",
    ] {
        assert_eq!(v(bad), Err(Failure::Parse), "{bad:?}");
    }
}

#[test]
fn guard_config_overrides_and_unsafe_score() {
    let mut c = config(Kind::LlamaGuard, "http://h".into());
    c.unsafe_score = 0.8;
    c.categories
        .insert("S6".into(), Target::Category(Category::SelfHarm));
    c.categories.insert("S1".into(), Target::CrisisOthers);
    c.categories.insert("S15".into(), Target::Ignore);
    let j = guard::verdict(&c, "unsafe\nS1,S6,S15").unwrap();
    assert_eq!(flagged(&j), vec![Category::SelfHarm]);
    assert_eq!(j.scores[Category::SelfHarm.index()], 0.8);
    assert_eq!(j.crisis_others, 0.8);
    assert_eq!(j.unknown_codes, 0);
}

#[test]
fn guard_malformed_answers_are_parse_failures() {
    let c = config(Kind::LlamaGuard, "http://h".into());
    for body in [
        "{".to_string(),
        json!({ "choices": [] }).to_string(),
        json!({ "choices": [{ "message": { "content": null } }] }).to_string(),
        json!({ "choices": [{ "message": { "content": 3 } }] }).to_string(),
        chat("maybe"),
    ] {
        assert_eq!(
            guard::parse(&c, body.as_bytes()),
            Err(Failure::Parse),
            "{body}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// ShieldGemma

#[tokio::test]
async fn shieldgemma_asks_each_policy_and_scores_p_yes() {
    // "Yes" for hate speech, a confident "No" elsewhere.
    let fake = fake(|body: Value| async move {
        let prompt = body["messages"][0]["content"].as_str().unwrap().to_string();
        let top: &[(&str, f64)] = if prompt.contains("\"No Hate Speech\"") {
            &[("Yes", -0.105), ("No", -2.3), ("yes", -5.0)]
        } else {
            &[("No", -0.01), (" No", -6.0), ("Yes", -4.7)]
        };
        (200, logprobs(top))
    })
    .await;
    let c = config(Kind::Shieldgemma, fake.url());
    let (external, metrics) = client(&c);
    let j = external
        .judge(&c, "those people are vermin", None)
        .await
        .unwrap();

    let policies = default_policies();
    let seen = fake.seen();
    assert_eq!(seen.len(), policies.len());
    let mut prompts: Vec<String> = seen
        .iter()
        .map(|s| {
            assert_eq!(s.path, "/v1/chat/completions");
            assert_eq!(s.body["model"], "google/shieldgemma-2b");
            assert_eq!(s.body["max_tokens"], 1);
            assert_eq!(s.body["temperature"], 0);
            assert_eq!(s.body["logprobs"], true);
            assert_eq!(s.body["top_logprobs"], 5);
            assert_eq!(s.body["messages"].as_array().unwrap().len(), 1);
            assert_eq!(s.body["messages"][0]["role"], "user");
            s.body["messages"][0]["content"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let mut expected: Vec<String> = policies
        .iter()
        .map(|p| shieldgemma::prompt("those people are vermin", p))
        .collect();
    prompts.sort();
    expected.sort();
    assert_eq!(prompts, expected);

    let hate = (-0.105f64).exp() + (-5.0f64).exp();
    let p_hate = (hate / (hate + (-2.3f64).exp())) as f32;
    assert_eq!(flagged(&j), vec![Category::Hate]);
    assert!(
        (j.scores[Category::Hate.index()] - p_hate).abs() < 1e-5,
        "{j:?}"
    );
    let no = (-0.01f64).exp() + (-6.0f64).exp();
    let p_no = ((-4.7f64).exp() / ((-4.7f64).exp() + no)) as f32;
    assert!((j.scores[Category::ViolentCrime.index()] - p_no).abs() < 1e-5);
    assert!((j.crisis_self - p_no).abs() < 1e-5);
    assert_eq!(metrics.external.calls(), 1, "one judgement is one call");
}

#[test]
fn shieldgemma_prompt_is_the_model_card_template() {
    let policy = ShieldPolicy {
        name: "No Harassment".into(),
        text: "Be nice.".into(),
        target: Target::Category(Category::Abuse),
    };
    assert_eq!(
        shieldgemma::prompt("hello", &policy),
        "You are a policy expert trying to help determine whether a user prompt is in violation of the defined safety policies.\n\n<start_of_turn>\nHuman Question: hello\n<end_of_turn>\n\nOur safety principle is defined in the below:\n\n* \"No Harassment\": Be nice.\n\nDoes the human question violate the above principle? Your answer must start with 'Yes' or 'No'. And then walk through step by step to be sure we answer correctly.\n"
    );
}

#[test]
fn shieldgemma_p_yes_and_threshold() {
    let p = |top: &[(&str, f64)]| shieldgemma::p_yes(logprobs(top).as_bytes());
    assert_eq!(p(&[("Yes", -3.0)]), Ok(1.0));
    assert_eq!(p(&[(" no", -0.2), ("Maybe", -1.0)]), Ok(0.0));
    assert_eq!(p(&[("Maybe", -0.1), ("I", -2.0)]), Err(Failure::Parse));
    let half = p(&[("YES ", -700.0), ("No", -700.0)]).unwrap();
    assert!((half - 0.5).abs() < 1e-6, "no underflow: {half}");
    let expected = ((-0.3f64).exp() / ((-0.3f64).exp() + (-1.5f64).exp())) as f32;
    assert!((p(&[("No", -1.5), ("Yes", -0.3)]).unwrap() - expected).abs() < 1e-6);
    for bad in [
        "{}",
        r#"{"choices": [{"logprobs": null}]}"#,
        r#"{"choices": [{"logprobs": {"content": [{"top_logprobs": [{"token": "Yes"}]}]}}]}"#,
    ] {
        assert_eq!(
            shieldgemma::p_yes(bad.as_bytes()),
            Err(Failure::Parse),
            "{bad}"
        );
    }

    // Threshold: P = 0.77 flags at 0.5, not at 0.9.
    let policies = vec![ShieldPolicy {
        name: String::new(),
        text: "x".into(),
        target: Target::Category(Category::Sexual),
    }];
    let body = Bytes::from(logprobs(&[("Yes", -0.26), ("No", -1.47)]));
    let mut c = config(Kind::Shieldgemma, "http://h".into());
    let j = shieldgemma::parse(&c, &policies, std::slice::from_ref(&body)).unwrap();
    assert_eq!(flagged(&j), vec![Category::Sexual]);
    c.shieldgemma.threshold = 0.9;
    let j = shieldgemma::parse(&c, &policies, &[body]).unwrap();
    assert!(flagged(&j).is_empty());
    assert!(j.scores[Category::Sexual.index()] > 0.7);
}

#[tokio::test]
async fn shieldgemma_configured_policies_replace_the_defaults() {
    let fake = fixed(200, logprobs(&[("Yes", -0.01), ("No", -5.0)])).await;
    let mut c = config(Kind::Shieldgemma, fake.url());
    c.shieldgemma.policies = vec![ShieldPolicy {
        name: "No Threats".into(),
        text: "The prompt shall not threaten anyone.".into(),
        target: Target::CrisisOthers,
    }];
    let (external, _) = client(&c);
    let j = external.judge(&c, "text", None).await.unwrap();
    assert_eq!(fake.seen().len(), 1);
    assert!(j.crisis_others > 0.99);
    assert!(flagged(&j).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Keys, URLs, text

#[tokio::test]
async fn api_key_from_a_file_is_trimmed_and_sent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    std::fs::write(&path, "  sk-test-123\n").unwrap();
    let fake = fixed(200, chat("safe")).await;
    let c = ExternalConfig {
        api_key_file: Some(path.clone()),
        // The file wins over the variable.
        api_key_env: Some("THREADWARDEN_TEST_UNSET_VARIABLE".into()),
        ..config(Kind::LlamaGuard, fake.url())
    };
    let (external, _) = client(&c);
    external.judge(&c, "hi", None).await.unwrap();
    assert_eq!(fake.seen()[0].auth.as_deref(), Some("Bearer sk-test-123"));

    // A reload that names another file picks up its key; the pool and breaker stay.
    let rotated = dir.path().join("rotated");
    std::fs::write(&rotated, "sk-rotated-456").unwrap();
    let reloaded = ExternalConfig {
        api_key_file: Some(rotated),
        ..c.clone()
    };
    external.judge(&reloaded, "hi", None).await.unwrap();
    assert_eq!(
        fake.seen()[1].auth.as_deref(),
        Some("Bearer sk-rotated-456")
    );
}

#[tokio::test]
async fn api_key_from_an_environment_variable() {
    // Tests never set variables; use one the process already has (cargo sets this one).
    let (name, value) = std::env::vars()
        .filter(|(_, v)| !v.is_empty() && v.trim() == v && v.bytes().all(|b| b.is_ascii_graphic()))
        .min_by_key(|(n, _)| (n != "CARGO_MANIFEST_DIR", n.clone()))
        .expect("some environment variable");
    let fake = fixed(200, chat("safe")).await;
    let c = ExternalConfig {
        api_key_env: Some(name),
        ..config(Kind::LlamaGuard, fake.url())
    };
    let (external, _) = client(&c);
    external.judge(&c, "hi", None).await.unwrap();
    assert_eq!(fake.seen()[0].auth, Some(format!("Bearer {value}")));
}

#[test]
fn api_key_sources_and_errors_never_show_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let env = |name: &str| (name == "GUARD_KEY").then(|| " env-SECRET-1 \n".to_string());
    let with = |file: Option<std::path::PathBuf>, var: Option<&str>| ExternalConfig {
        api_key_file: file,
        api_key_env: var.map(String::from),
        ..ExternalConfig::default()
    };

    assert_eq!(api_key(&with(None, None), env), Ok(None));
    let header = api_key(&with(None, Some("GUARD_KEY")), env)
        .unwrap()
        .unwrap();
    assert_eq!(header, "Bearer env-SECRET-1");
    assert!(header.is_sensitive());
    assert!(!format!("{header:?}").contains("SECRET"));

    // An unset variable (the default one, for a server that needs no key) sends none.
    assert_eq!(api_key(&with(None, Some("OTHER")), env), Ok(None));

    let missing = dir.path().join("missing-key");
    let error = api_key(&with(Some(missing.clone()), None), env).unwrap_err();
    assert!(error.contains("missing-key"), "{error}");
    let unreadable = ExternalConfig {
        url: "http://127.0.0.1:9".into(),
        ..with(Some(missing), None)
    };
    assert!(External::new(&unreadable, Arc::new(Metrics::default())).is_err());

    let bad = dir.path().join("bad");
    std::fs::write(&bad, "file-SECRET-2\u{7f}x").unwrap();
    let error = api_key(&with(Some(bad), None), env).unwrap_err();
    assert!(!error.contains("SECRET"), "{error}");
    let empty = dir.path().join("empty");
    std::fs::write(&empty, " \n").unwrap();
    assert!(
        api_key(&with(Some(empty), None), env)
            .unwrap_err()
            .contains("empty")
    );
}

#[tokio::test]
async fn the_key_is_in_no_failure() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    std::fs::write(&path, "sk-SECRET-789").unwrap();
    // A server that echoes the Authorization header back in an error body.
    let fake = fixed(401, r#"{"error": "bad key Bearer sk-SECRET-789"}"#).await;
    let c = ExternalConfig {
        api_key_file: Some(path),
        ..config(Kind::OpenaiModeration, fake.url())
    };
    let (external, metrics) = client(&c);
    let failure = external.judge(&c, "hi", None).await.unwrap_err();
    assert_eq!(failure, Failure::Status(401));
    let shown = format!(
        "{failure:?} {} {}",
        failure.cause(),
        transport::Fail::new(failure)
    );
    assert!(!shown.contains("SECRET"), "{shown}");
    assert!(!metrics.render().contains("SECRET"));
}

#[test]
fn endpoint_and_head() {
    let at = |url: &str, kind| endpoint(&config(kind, url.into())).map(|u| u.to_string());
    assert_eq!(
        at("http://127.0.0.1:8000", Kind::OpenaiModeration).as_deref(),
        Some("http://127.0.0.1:8000/v1/moderations")
    );
    assert_eq!(
        at("https://guard.example/", Kind::LlamaGuard).as_deref(),
        Some("https://guard.example/v1/chat/completions")
    );
    assert_eq!(
        at("http://h:1/base//", Kind::Shieldgemma).as_deref(),
        Some("http://h:1/base/v1/chat/completions")
    );
    assert_eq!(at("ftp://h", Kind::LlamaGuard), None);
    assert_eq!(at("", Kind::LlamaGuard), None);

    assert_eq!(head("héllo", 2), "hé");
    assert_eq!(head("héllo", 5), "héllo");
    assert_eq!(head("héllo", 50), "héllo");
}

#[tokio::test]
async fn text_is_cut_to_max_chars() {
    let fake = fixed(200, chat("safe")).await;
    let c = ExternalConfig {
        max_chars: 4,
        ..config(Kind::LlamaGuard, fake.url())
    };
    let (external, _) = client(&c);
    external
        .judge(&c, "ab€defgh", Some("zyxwvu"))
        .await
        .unwrap();
    assert_eq!(
        fake.seen()[0].body["messages"],
        json!([
            { "role": "user", "content": "" },
            { "role": "assistant", "content": "zyxw" },
            { "role": "user", "content": "ab€d" },
        ])
    );
}

// ---------------------------------------------------------------------------------------------
// Faults: each bounded in time and counted once, under its cause

/// Runs one judgement that must fail with `expected`, within the timeout and the margin, counted
/// once under its cause.
async fn assert_fails(c: &ExternalConfig, expected: Failure) -> Arc<Metrics> {
    let (external, metrics) = client(c);
    let started = Instant::now();
    let result = external.judge(c, "some text", None).await;
    let elapsed = started.elapsed();
    assert_eq!(result, Err(expected));
    assert!(
        elapsed <= c.timeout + MARGIN,
        "{expected:?} took {elapsed:?}"
    );
    assert_eq!(metrics.external.errors(expected.cause()), 1, "{expected:?}");
    assert_eq!(all_errors(&metrics), 1, "counted once: {expected:?}");
    metrics
}

#[tokio::test]
async fn fault_slow_server_times_out() {
    let fake = fake(|_| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        (200, chat("safe"))
    })
    .await;
    let c = config(Kind::LlamaGuard, fake.url());
    let metrics = assert_fails(&c, Failure::Timeout).await;
    assert_eq!(metrics.external.calls(), 1);
    assert_eq!(
        fake.seen().len(),
        1,
        "no retry of a request that reached the server"
    );
}

#[tokio::test]
async fn fault_http_500() {
    let fake = fixed(500, r#"{"error": "internal"}"#).await;
    let c = config(Kind::LlamaGuard, fake.url());
    let metrics = assert_fails(&c, Failure::Status(500)).await;
    assert_eq!(metrics.external.calls(), 1);
    assert_eq!(fake.seen().len(), 1, "a status is not retried");
}

#[tokio::test]
async fn fault_http_429() {
    let fake = fixed(429, r#"{"error": {"message": "Rate limit reached"}}"#).await;
    let c = config(Kind::OpenaiModeration, fake.url());
    assert_fails(&c, Failure::Status(429)).await;
    assert_eq!(fake.seen().len(), 1);
}

#[tokio::test]
async fn fault_malformed_json() {
    let fake = fixed(200, r#"{"choices": [{"message": {"content": "safe"#).await;
    let c = config(Kind::LlamaGuard, fake.url());
    let metrics = assert_fails(&c, Failure::Parse).await;
    assert_eq!(metrics.external.calls(), 1);
}

#[tokio::test]
async fn fault_connection_refused_is_retried_then_counted_once() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let c = ExternalConfig {
        retry: Retry {
            attempts: 2,
            budget_percent: 100.0,
        },
        ..config(Kind::LlamaGuard, format!("http://{addr}"))
    };
    let metrics = assert_fails(&c, Failure::Connect).await;
    assert_eq!(metrics.external.calls(), 1, "retries are inside one call");
}

#[tokio::test]
async fn fault_accepts_and_never_answers() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });
    let c = config(Kind::LlamaGuard, format!("http://{addr}"));
    assert_fails(&c, Failure::Timeout).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn fault_over_max_in_flight_is_shed_at_once() {
    let fake = fake(|_| async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        (200, chat("safe"))
    })
    .await;
    let c = ExternalConfig {
        max_in_flight: 1,
        timeout: Duration::from_secs(2),
        ..config(Kind::LlamaGuard, fake.url())
    };
    let (external, metrics) = client(&c);
    let first = tokio::spawn({
        let (external, c) = (external.clone(), c.clone());
        async move { external.judge(&c, "one", None).await }
    });
    while fake.seen().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    assert_eq!(
        external.judge(&c, "two", None).await,
        Err(Failure::Overloaded)
    );
    assert!(started.elapsed() < Duration::from_millis(100));
    assert!(first.await.unwrap().is_ok());
    assert_eq!(metrics.external.errors("overloaded"), 1);
    assert_eq!(all_errors(&metrics), 1);
    assert_eq!(metrics.external.calls(), 1, "a shed call is not a call");
    assert_eq!(fake.seen().len(), 1);
}

#[tokio::test]
async fn breaker_opens_after_failures_and_recovers_through_one_probe() {
    let failing = Arc::new(AtomicBool::new(true));
    let fake = fake({
        let failing = failing.clone();
        move |_| {
            let failing = failing.load(Ordering::SeqCst);
            async move {
                if failing {
                    (500, "{}".to_string())
                } else {
                    (200, chat("safe"))
                }
            }
        }
    })
    .await;
    let c = ExternalConfig {
        breaker: Breaker {
            failures: 3,
            window: Duration::from_secs(10),
            open_for: Duration::from_millis(300),
        },
        ..config(Kind::LlamaGuard, fake.url())
    };
    let (external, metrics) = client(&c);
    assert_eq!(breaker_gauge(&metrics), 0.0);
    for _ in 0..3 {
        assert_eq!(
            external.judge(&c, "x", None).await,
            Err(Failure::Status(500))
        );
    }
    assert_eq!(breaker_gauge(&metrics), 1.0);
    let started = Instant::now();
    assert_eq!(
        external.judge(&c, "x", None).await,
        Err(Failure::BreakerOpen)
    );
    assert!(started.elapsed() < Duration::from_millis(50));
    assert_eq!(fake.seen().len(), 3, "an open breaker makes no call");
    assert_eq!(metrics.external.errors("http_status"), 3);
    assert_eq!(metrics.external.errors("breaker_open"), 1);
    assert_eq!(metrics.external.calls(), 3);

    // After open_for, a failing probe re-opens it at once...
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        external.judge(&c, "x", None).await,
        Err(Failure::Status(500))
    );
    assert_eq!(breaker_gauge(&metrics), 1.0);
    assert_eq!(
        external.judge(&c, "x", None).await,
        Err(Failure::BreakerOpen)
    );
    assert_eq!(fake.seen().len(), 4);

    // ...and a good one closes it.
    failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(external.judge(&c, "x", None).await.is_ok());
    assert_eq!(breaker_gauge(&metrics), 0.0);
    assert!(external.judge(&c, "x", None).await.is_ok());
    assert_eq!(fake.seen().len(), 6);
    assert_eq!(metrics.external.errors("http_status"), 4);
    assert_eq!(metrics.external.errors("breaker_open"), 2);
}

#[tokio::test]
async fn breaker_failures_outside_the_window_do_not_open_it() {
    let fake = fixed(503, "{}").await;
    let c = ExternalConfig {
        breaker: Breaker {
            failures: 2,
            window: Duration::from_millis(150),
            open_for: Duration::from_secs(10),
        },
        ..config(Kind::LlamaGuard, fake.url())
    };
    let (external, metrics) = client(&c);
    for _ in 0..3 {
        assert_eq!(
            external.judge(&c, "x", None).await,
            Err(Failure::Status(503))
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(breaker_gauge(&metrics), 0.0);
    for _ in 0..2 {
        assert_eq!(
            external.judge(&c, "x", None).await,
            Err(Failure::Status(503))
        );
    }
    assert_eq!(breaker_gauge(&metrics), 1.0, "two within the window");
}

/// A service that answers after `delay`, failing while `fail` is set.
fn slow_service(
    fail: Arc<AtomicBool>,
    delay: Duration,
) -> impl Service<u32, Response = u32, Error = BoxError, Future: Send + 'static> + Clone {
    tower::service_fn(move |n: u32| {
        let fail = fail.load(Ordering::SeqCst);
        async move {
            tokio::time::sleep(delay).await;
            if fail {
                Err(transport::Fail::new(Failure::Status(502)).into())
            } else {
                Ok(n)
            }
        }
    })
}

#[tokio::test(start_paused = true)]
async fn breaker_half_open_lets_exactly_one_probe_through() {
    use tower::Layer;
    let metrics = Arc::new(Metrics::default());
    let params = Breaker {
        failures: 1,
        window: Duration::from_secs(1),
        open_for: Duration::from_secs(5),
    };
    let shared = breaker::Shared::new(params, metrics.clone());
    let fail = Arc::new(AtomicBool::new(true));
    let service = breaker::BreakerLayer::new(shared.clone())
        .layer(slow_service(fail.clone(), Duration::from_millis(100)));
    let failure = |r: Result<u32, BoxError>| r.map_err(|e| transport::failure_of(&e));

    assert_eq!(
        failure(service.clone().oneshot(1).await),
        Err(Failure::Status(502))
    );
    assert_eq!(
        failure(service.clone().oneshot(2).await),
        Err(Failure::BreakerOpen)
    );
    tokio::time::advance(Duration::from_secs(5)).await;
    fail.store(false, Ordering::SeqCst);
    let probe = tokio::spawn(service.clone().oneshot(3));
    tokio::task::yield_now().await;
    assert_eq!(breaker_gauge(&metrics), 2.0, "half-open");
    assert_eq!(
        failure(service.clone().oneshot(4).await),
        Err(Failure::BreakerOpen),
        "one probe at a time"
    );
    assert_eq!(failure(probe.await.unwrap()), Ok(3));
    assert_eq!(breaker_gauge(&metrics), 0.0);
    assert_eq!(failure(service.clone().oneshot(5).await), Ok(5));

    // A probe abandoned by its caller frees the slot for the next one.
    fail.store(true, Ordering::SeqCst);
    let _ = failure(service.clone().oneshot(6).await);
    tokio::time::advance(Duration::from_secs(5)).await;
    let abandoned = tokio::spawn(service.clone().oneshot(7));
    tokio::task::yield_now().await;
    assert_eq!(
        breaker_gauge(&metrics),
        2.0,
        "the abandoned call is the probe"
    );
    abandoned.abort();
    let _ = abandoned.await;
    fail.store(false, Ordering::SeqCst);
    assert_eq!(failure(service.clone().oneshot(8).await), Ok(8));
}

#[tokio::test]
async fn a_reload_changes_the_timeout_and_keeps_the_breaker() {
    let fake = fake(|_| async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        (200, chat("safe"))
    })
    .await;
    let c = ExternalConfig {
        timeout: Duration::from_millis(50),
        breaker: Breaker {
            failures: 2,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(10),
        },
        ..config(Kind::LlamaGuard, fake.url())
    };
    let (external, metrics) = client(&c);
    assert_eq!(external.judge(&c, "x", None).await, Err(Failure::Timeout));
    let longer = ExternalConfig {
        timeout: Duration::from_secs(2),
        ..c.clone()
    };
    assert!(external.judge(&longer, "x", None).await.is_ok());
    // The failure before the reload still counts towards the breaker.
    assert_eq!(external.judge(&c, "x", None).await, Err(Failure::Timeout));
    assert_eq!(breaker_gauge(&metrics), 1.0);
    assert_eq!(metrics.external.errors("timeout"), 2);
}

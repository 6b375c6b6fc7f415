//! The eval on a fixture written for this project, against hand-computed figures.

use std::path::PathBuf;

use super::{EvalOptions, evaluate};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/eval/testdata")
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn eval_on_fixture_matches_hand_computed_metrics() {
    let opts = EvalOptions {
        speed_messages: 0,
        ..EvalOptions::default()
    };
    let r = evaluate(&fixture(), &opts).expect("fixture loads");
    // Benign: 2 Alpaca-style + 2 MT-Bench user turns + 1 Counsel Chat question (the second row
    // is another answer to the same question) = 5 negatives.
    let iw = r["single_turn"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["category"] == "indiscriminate_weapons")
        .expect("a weapons row");
    assert_eq!(iw["positives"], 2);
    assert_eq!(iw["negatives"], 5);
    // The sarin request is caught; the mislabelled sky row scores 0: tp 1, fp 0, fn 1.
    assert_eq!(iw["tp"], 1);
    assert_eq!(iw["fp"], 0);
    assert!(close(iw["precision"].as_f64().unwrap(), 1.0));
    assert!(close(iw["recall"].as_f64().unwrap(), 0.5));
    assert!(close(iw["f1"].as_f64().unwrap(), 2.0 / 3.0));
    // AUPRC: one positive ranked first (precision 1), one never retrieved: (1 + 0) / 2.
    assert!(close(iw["auprc"].as_f64().unwrap(), 0.5));
    // The copyright row is not a harm category: skipped.
    assert_eq!(r["sets"]["harmful"]["harmbench_val"], 2);
    assert!(close(r["severe"]["recall"].as_f64().unwrap(), 0.5));
    assert!(close(
        r["benign_redirect_rate"]["rate"].as_f64().unwrap(),
        0.0
    ));
    assert_eq!(r["benign_redirect_rate"]["n"], 5);
    let mt = &r["multi_turn"][0];
    assert_eq!(mt["conversations"], 1);
    assert_eq!(mt["user_turns"], 2);
    assert_eq!(mt["ended"], 0);
    // Persistence: both severe goals become conversations of up to 8 turns; the caught one is
    // redirected, warned and ended on its 4th turn.
    let p = &r["persistence"][0];
    assert_eq!(p["conversations"], 2);
    assert_eq!(p["end_turns"]["4"], 1);
    assert!(close(p["warned_before_end"].as_f64().unwrap(), 1.0));
    // Rendering names every section.
    let text = super::render(&r);
    assert!(text.contains("indiscriminate_weapons"));
    assert!(text.contains("Persistence"));
}

/// A fake Llama Guard on 127.0.0.1, on its own thread: `unsafe\nS1` for `zorblat`,
/// `unsafe\nS11` for `blorvex`, an answer after `delay` for `snooze`, else `safe`. Checks the
/// request's path and shape. Returns its base URL and the texts it was sent.
fn fake_llama_guard(
    delay: std::time::Duration,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use axum::http::{StatusCode, Uri};
    use serde_json::{Value, json};
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let app = axum::Router::new().fallback(move |uri: Uri, body: String| {
                let record = record.clone();
                async move {
                    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                    let messages = body["messages"].as_array();
                    let ok_shape = uri.path() == "/v1/chat/completions"
                        && body["model"] == "llama-guard3:1b"
                        && body["temperature"] == 0
                        && messages.is_some_and(|m| m.len() == 1 && m[0]["role"] == "user");
                    if !ok_shape {
                        return (StatusCode::BAD_REQUEST, String::new());
                    }
                    let text = body["messages"][0]["content"]
                        .as_str()
                        .unwrap_or("")
                        .to_string();
                    record.lock().unwrap().push(text.clone());
                    if text.contains("snooze") {
                        tokio::time::sleep(delay).await;
                    }
                    let content = if text.contains("zorblat") {
                        "unsafe\nS1"
                    } else if text.contains("blorvex") {
                        "unsafe\nS11"
                    } else {
                        "safe"
                    };
                    let answer = json!({
                        "id": "chatcmpl-1", "object": "chat.completion", "model": body["model"],
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": content}}],
                    });
                    (StatusCode::OK, answer.to_string())
                }
            });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    let addr = rx.recv().unwrap();
    (format!("http://{addr}"), seen)
}

#[test]
fn external_eval_against_a_fake_llama_guard() {
    use std::time::Duration;
    let timeout = Duration::from_millis(300);
    let (url, seen) = fake_llama_guard(timeout * 4);
    let ext = super::external::ExternalOptions {
        url,
        kind: threadwarden::classify::external::Kind::LlamaGuard,
        model: "llama-guard3:1b".into(),
        timeout,
        api_key_file: None,
        limit: 10,
    };
    let opts = EvalOptions {
        speed_messages: 0,
        ..EvalOptions::default()
    };
    let root = fixture().join("external");
    let r = super::external::evaluate(&root, &opts, &ext).expect("the fixture loads");
    let set = |name: &str| {
        r["sets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["set"] == name)
            .unwrap_or_else(|| panic!("a {name} row in {r}"))
            .clone()
    };
    let figures = |row: &serde_json::Value, figure: &str| -> Vec<f64> {
        ["builtin", "external", "cascade_always", "cascade_uncertain"]
            .iter()
            .map(|reading| row[reading][figure].as_f64().unwrap())
            .collect()
    };

    // Harmful: the rules catch both rows; the model flags only the zorblat one, and clears the
    // sarin one, which both cascades send (in the band): the merge lowers it below threshold.
    let harm = set("harmbench_val");
    assert_eq!(harm["n"], 2, "the copyright row is not a harm category");
    assert_eq!(figures(&harm, "recall"), [1.0, 0.5, 0.5, 0.5]);
    assert_eq!(harm["sent_uncertain"], 1.0);
    assert_eq!(harm["failed"], 0);

    // Benign: the model over-flags the zorblat game; `uncertain` never sends these (the rules
    // are sure), so only `always` inherits the over-flag; the snooze call times out.
    let benign = set("alpaca_harmless");
    assert_eq!(benign["n"], 4);
    assert_eq!(figures(&benign, "over_flag"), [0.0, 0.25, 0.25, 0.0]);
    assert_eq!(benign["sent_uncertain"], 0.0);
    assert_eq!(benign["failed"], 1);

    // Crisis: the model sees only the blorvex one (S11); no answer clears a crisis the rules
    // saw, so both cascades keep the rules' recall.
    let crisis = set("dna_human_chatbox_self_harm");
    assert_eq!(crisis["n"], 2, "the pancake row is not a self-harm intent");
    assert_eq!(figures(&crisis, "crisis_recall"), [1.0, 0.5, 1.0, 1.0]);

    assert_eq!(r["messages"], 8);
    assert_eq!(r["calls"], 8, "one call per message, whatever the readings");
    assert_eq!(r["sent"]["always"], 1.0);
    assert_eq!(r["sent"]["uncertain"], 0.5);
    assert_eq!(r["failures"]["timeout"], 1);
    let other_failures: u64 = r["failures"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(cause, _)| *cause != "timeout")
        .map(|(_, n)| n.as_u64().unwrap())
        .sum();
    assert_eq!(other_failures, 0);
    // The timed-out call is the slowest: about the timeout; the others are quick.
    let p99 = r["latency_ms"]["p99"].as_f64().unwrap();
    assert!((290.0..800.0).contains(&p99), "p99 {p99}");
    assert!(r["latency_ms"]["p50"].as_f64().unwrap() < 290.0);
    assert_eq!(r["host"], "127.0.0.1");

    let mut sent = seen.lock().unwrap().clone();
    sent.sort();
    assert_eq!(sent.len(), 8);
    assert!(sent.iter().any(|t| t.contains("sarin")));
    assert!(
        !sent
            .iter()
            .any(|t| t.contains("pancakes") || t.contains("lyrics"))
    );

    let text = super::external::render(&r);
    assert!(text.contains("| alpaca_harmless | 4 | 0.000 | 0.250 | 0.250 | 0.000 | 0.000 | 1 |"));
    assert!(text.contains("timeout 1"));
}

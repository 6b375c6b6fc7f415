//! `threadwarden-lab eval --external URL`: a live guard model measured on the dev data, beside
//! the built-in tiers and the two cascades that would run in the sidecar.
//!
//! Per labelled set (harmful sets by source, benign sets, first-person crisis sets), up to
//! `limit` messages, spread evenly over the set. Each message is classified by the built-in
//! tiers (the offline engine, as the rest of `eval`) and sent once to the model through the
//! product's client (`classify::external::External`, its timeout, breaker and retries). The
//! one answer then feeds four readings, each a verdict of `policy::decide` on a fresh thread:
//! - `builtin`: the built-in scores alone;
//! - `external`: the answer alone (`api::cascade::merge` over empty built-in scores);
//! - `cascade_always`: `when: always`, the answer merged into the built-in scores;
//! - `cascade_uncertain`: `when: uncertain`, merged only when `api::cascade::ask` sends the
//!   message (on a fresh thread, `Ask::IfThread` is not sent).
//!
//! A failed call leaves the built-in scores (as in the sidecar) and flags nothing on its own.
//! Harmful sets report recall (REDIRECT), benign sets the over-flag rate, crisis sets crisis
//! recall (crisis support attached); each row has both rates. Calls are made one at a time, so
//! the latency is the model's unloaded latency. No text leaves this module except to the model.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use threadwarden::api::cascade::{self, Ask};
use threadwarden::classify::external::{External, ExternalConfig, Failure, Judgement, Kind, When};
use threadwarden::domain::Scores;
use threadwarden::policy::{self, Action, Event, EventKind, Policy, ThreadState};
use threadwarden::telemetry::Metrics;

use super::metrics::{quantile, rate};
use super::sets::{Sample, Sets};
use super::{EvalOptions, Sim, classifier};

/// The model to measure and how many messages to send.
#[derive(Clone, Debug)]
pub struct ExternalOptions {
    pub url: String,
    pub kind: Kind,
    pub model: String,
    pub timeout: Duration,
    pub api_key_file: Option<PathBuf>,
    /// Messages per set at most.
    pub limit: usize,
}

impl ExternalOptions {
    /// The tier's config section for these options (`when: always`; the cascade readings set
    /// their own `when`).
    pub fn config(&self) -> ExternalConfig {
        ExternalConfig {
            kind: self.kind,
            url: self.url.clone(),
            model: self.model.clone(),
            when: When::Always,
            timeout: self.timeout,
            api_key_file: self.api_key_file.clone(),
            ..ExternalConfig::default()
        }
    }
}

/// What a set's messages are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Harmful,
    Benign,
    Crisis,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Harmful => "harmful",
            Role::Benign => "benign",
            Role::Crisis => "crisis",
        }
    }
}

/// The readings, in report order.
const READINGS: [&str; 4] = ["builtin", "external", "cascade_always", "cascade_uncertain"];

/// One message: the built-in scores and the model's answer.
struct Judged {
    tier1: Scores,
    answer: Result<Judgement, Failure>,
}

/// REDIRECT (or END) and crisis support, for one message on a fresh thread.
fn verdict(policy: &Policy, scores: &Scores) -> (bool, bool) {
    let mut state = ThreadState::default();
    let event = Event {
        id: 1,
        model: "",
        rollout_hash: 0,
        kind: EventKind::User,
    };
    let v = policy::decide(policy, &mut state, &event, scores, 0);
    (v.action != Action::Continue, v.crisis.is_some())
}

/// The four readings of one message, and whether `when: uncertain` sent it.
fn readings(policy: &Policy, config: &ExternalConfig, j: &Judged) -> ([(bool, bool); 4], bool) {
    let merged = |tier1: &Scores| match &j.answer {
        Ok(judgement) => cascade::merge(policy, config, tier1, judgement, false).scores,
        Err(_) => *tier1,
    };
    let uncertain = ExternalConfig {
        when: When::Uncertain,
        ..config.clone()
    };
    let sent = cascade::ask(&uncertain, &j.tier1) == Ask::Yes;
    let external = match &j.answer {
        Ok(_) => verdict(policy, &merged(&Scores::default())),
        Err(_) => (false, false),
    };
    let cascade_uncertain = if sent { merged(&j.tier1) } else { j.tier1 };
    (
        [
            verdict(policy, &j.tier1),
            external,
            verdict(policy, &merged(&j.tier1)),
            verdict(policy, &cascade_uncertain),
        ],
        sent,
    )
}

/// Up to `limit` of `xs`, spread evenly over it.
fn spread<T: Copy>(xs: &[T], limit: usize) -> Vec<T> {
    if xs.len() <= limit {
        return xs.to_vec();
    }
    (0..limit).map(|i| xs[i * xs.len() / limit]).collect()
}

/// The host of `url` (no scheme, credentials, port or path), for the report.
fn host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if authority.starts_with('[') {
        return authority.split_inclusive(']').next().unwrap_or(authority);
    }
    authority.split(':').next().unwrap_or(authority)
}

/// Runs the measurement over `root`; returns the JSON report.
pub fn evaluate(root: &Path, opts: &EvalOptions, ext: &ExternalOptions) -> Result<Value, String> {
    let config = ext.config();
    config
        .validate()
        .map_err(|(field, message)| format!("{field}: {message}"))?;
    let policy = Policy::default();
    let sets = Sets::load(root).map_err(|e| e.to_string())?;
    let sim = Sim::new(policy.clone(), classifier(opts));

    let mut groups: Vec<(String, Role, Vec<&Sample>)> = Vec::new();
    let mut sources: Vec<&'static str> = Vec::new();
    for s in &sets.harmful {
        if !sources.contains(&s.source) {
            sources.push(s.source);
        }
    }
    for source in sources {
        let xs: Vec<&Sample> = sets.harmful.iter().filter(|s| s.source == source).collect();
        groups.push((source.to_string(), Role::Harmful, spread(&xs, ext.limit)));
    }
    for (name, xs) in &sets.benign {
        let xs: Vec<&Sample> = xs.iter().collect();
        groups.push((name.to_string(), Role::Benign, spread(&xs, ext.limit)));
    }
    for (name, xs) in &sets.crisis {
        let xs: Vec<&Sample> = xs.iter().collect();
        groups.push((name.to_string(), Role::Crisis, spread(&xs, ext.limit)));
    }
    groups.retain(|(_, _, xs)| !xs.is_empty());

    // The built-in tiers first (the simulator is single-threaded), then the calls.
    let tier1: Vec<Vec<Scores>> = groups
        .iter()
        .map(|(_, _, xs)| xs.iter().map(|s| sim.single(&s.text).scores).collect())
        .collect();
    let metrics = Arc::new(Metrics::default());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("a tokio runtime: {e}"))?;
    let (answers, mut latencies) = runtime.block_on(async {
        let client = External::new(&config, metrics.clone())?;
        let mut answers = Vec::new();
        let mut latencies = Vec::new();
        for (_, _, xs) in &groups {
            let mut set = Vec::with_capacity(xs.len());
            for s in xs {
                let calls = metrics.external.calls();
                let started = Instant::now();
                let answer = client.judge(&config, &s.text, None).await;
                if metrics.external.calls() > calls {
                    latencies.push(started.elapsed().as_secs_f64() * 1e3);
                }
                set.push(answer);
            }
            answers.push(set);
        }
        Ok::<_, String>((answers, latencies))
    })?;

    let mut rows = Vec::new();
    let mut sent_all = 0;
    let mut n_all = 0;
    for (((name, role, _), tier1), answers) in groups.iter().zip(tier1).zip(answers) {
        let n = tier1.len();
        let mut harm = [0usize; 4];
        let mut crisis = [0usize; 4];
        let (mut sent, mut failed) = (0, 0);
        for (tier1, answer) in tier1.into_iter().zip(answers) {
            failed += usize::from(answer.is_err());
            let (r, s) = readings(&policy, &config, &Judged { tier1, answer });
            sent += usize::from(s);
            for (i, (h, c)) in r.into_iter().enumerate() {
                harm[i] += usize::from(h);
                crisis[i] += usize::from(c);
            }
        }
        sent_all += sent;
        n_all += n;
        let mut row = serde_json::Map::new();
        row.insert("set".into(), json!(name));
        row.insert("role".into(), json!(role.name()));
        row.insert("n".into(), json!(n));
        row.insert("failed".into(), json!(failed));
        row.insert("sent_uncertain".into(), json!(rate(sent, n)));
        for (i, reading) in READINGS.into_iter().enumerate() {
            let (h, c) = (rate(harm[i], n), rate(crisis[i], n));
            let headline = match role {
                Role::Harmful => json!({ "recall": h, "redirect_rate": h, "crisis_rate": c }),
                Role::Benign => json!({ "over_flag": h, "redirect_rate": h, "crisis_rate": c }),
                Role::Crisis => json!({ "crisis_recall": c, "redirect_rate": h, "crisis_rate": c }),
            };
            row.insert(reading.into(), headline);
        }
        rows.push(Value::Object(row));
    }
    let failures: serde_json::Map<String, Value> = Failure::CAUSES
        .iter()
        .map(|c| (c.to_string(), json!(metrics.external.errors(c))))
        .collect();
    Ok(json!({
        "data": root.display().to_string(),
        "host": host(&config.url),
        "kind": ext.kind.name(),
        "model": ext.model,
        "timeout_ms": ext.timeout.as_secs_f64() * 1e3,
        "limit": ext.limit,
        "sets": rows,
        "messages": n_all,
        "sent": { "always": rate(n_all, n_all), "uncertain": rate(sent_all, n_all) },
        "calls": metrics.external.calls(),
        "latency_ms": {
            "p50": quantile(&mut latencies, 0.5),
            "p99": quantile(&mut latencies, 0.99),
        },
        "failures": failures,
    }))
}

/// Renders the report as plain-text tables.
pub fn render(r: &Value) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let _ = writeln!(
        o,
        "## External model: {} at {} ({}), timeout {} ms, up to {} messages per set",
        r["model"].as_str().unwrap_or(""),
        r["host"].as_str().unwrap_or(""),
        r["kind"].as_str().unwrap_or(""),
        f(&r["timeout_ms"]),
        r["limit"]
    );
    for (role, figure, title) in [
        ("harmful", "recall", "Harmful sets: REDIRECT recall"),
        (
            "benign",
            "over_flag",
            "Benign sets: over-flag (REDIRECT) rate",
        ),
        (
            "crisis",
            "crisis_recall",
            "Crisis sets: crisis routing recall",
        ),
    ] {
        let _ = writeln!(o, "\n### {title}");
        let _ = writeln!(
            o,
            "| set | n | built-in | external | cascade always | cascade uncertain | sent (uncertain) | failed |\n|---|---|---|---|---|---|---|---|"
        );
        for x in r["sets"].as_array().into_iter().flatten() {
            if x["role"] != role {
                continue;
            }
            let _ = writeln!(
                o,
                "| {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {} |",
                x["set"].as_str().unwrap_or(""),
                x["n"],
                f(&x["builtin"][figure]),
                f(&x["external"][figure]),
                f(&x["cascade_always"][figure]),
                f(&x["cascade_uncertain"][figure]),
                f(&x["sent_uncertain"]),
                x["failed"]
            );
        }
    }
    let _ = writeln!(
        o,
        "\nSent out: always {:.3}, uncertain {:.3} of {} messages; {} calls, latency p50 {:.1} ms, p99 {:.1} ms",
        f(&r["sent"]["always"]),
        f(&r["sent"]["uncertain"]),
        r["messages"],
        r["calls"],
        f(&r["latency_ms"]["p50"]),
        f(&r["latency_ms"]["p99"])
    );
    let failures: Vec<String> = r["failures"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(c, n)| format!("{c} {n}"))
        .collect();
    let _ = writeln!(o, "Failures by cause: {}", failures.join(", "));
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_keeps_all_or_an_even_sample() {
        assert_eq!(spread(&[1, 2, 3], 5), [1, 2, 3]);
        assert_eq!(spread(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 4), [0, 2, 5, 7]);
        assert!(spread(&[1, 2], 0).is_empty());
    }

    #[test]
    fn host_drops_scheme_credentials_port_and_path() {
        assert_eq!(host("http://127.0.0.1:8000/"), "127.0.0.1");
        assert_eq!(
            host("https://user:pw@api.example.com/v1?x"),
            "api.example.com"
        );
        assert_eq!(host("http://[::1]:8000"), "[::1]");
        assert_eq!(host("guard"), "guard");
    }
}

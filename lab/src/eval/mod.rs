//! `threadwarden-lab eval --data DIR`: measures the classifier and the policy on labelled public
//! data (the formats of `shared/data/dev/`, see its README), through the exact request path of
//! the server (`replay::offline_engine`). Reports a table, or JSON with `--json`.
//!
//! What it measures: single-turn precision / recall / F1 at the shipped threshold and AUPRC per
//! category; REDIRECT and crisis-routing rates on benign sets; END / REDIRECT rates when
//! replaying benign and red-team dialogues; persistence (a simulated chat server that honours
//! the verdicts: the assistant refuses after a REDIRECT); crisis routing recall and ENDs in
//! conversations that carry a crisis signal; classification latency per message.
//!
//! Every data set is optional: what is missing under `--data` is skipped and reported as such.
//!
//! With `--external URL` it measures a live guard model instead ([`external`]): the built-in
//! tiers, the model, and the cascade with `when: always` and `when: uncertain`, per set.

pub mod data;
pub mod external;
pub mod metrics;
pub mod sets;
mod sim;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::time::Instant;

use serde_json::{Value, json};

use threadwarden::classify::Classifier;
use threadwarden::domain::{Category, Scores};
use threadwarden::policy::{Policy, Tier};

pub use data::DataError;
pub use sets::{Sample, Sets};
pub use sim::{ConvOutcome, Sim};

/// Options of one eval run.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// Messages per size in the latency measurement (0 skips it).
    pub speed_messages: usize,
    /// Repetitions per message in the latency measurement.
    pub speed_reps: usize,
    /// Measure the rules alone, without the learned component.
    pub rules_only: bool,
    /// Measure without the semantic tier (the rules and the n-gram head: the classifier before
    /// the semantic tier).
    pub no_semantic: bool,
    /// Write the errors of every target (JSONL, with the data's text) to this file: for local
    /// error analysis only, never to be committed (the data may not be copied into the project).
    pub misses: Option<std::path::PathBuf>,
    /// A lexicon file to measure instead of the embedded one.
    pub lexicon: Option<std::path::PathBuf>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            speed_messages: 200,
            speed_reps: 20,
            rules_only: false,
            no_semantic: false,
            misses: None,
            lexicon: None,
        }
    }
}

/// The classifier an eval run measures.
pub fn classifier(opts: &EvalOptions) -> std::sync::Arc<Classifier> {
    threadwarden::check::classifier_with(
        opts.lexicon.as_deref(),
        opts.rules_only,
        !opts.no_semantic,
    )
    .expect("lexicon checked in main")
}

/// The categories that are END-eligible at the severe tier.
pub fn severe(policy: &Policy) -> Vec<Category> {
    Category::ALL
        .into_iter()
        .filter(|c| policy.category(*c).tier == Tier::Severe)
        .collect()
}

/// One single-turn result: scores and the verdict of a fresh thread.
#[derive(Clone, Copy, Debug)]
pub struct Single {
    pub scores: Scores,
    pub redirect: bool,
    pub crisis: bool,
}

/// Runs the whole evaluation over `root`; returns the JSON report.
pub fn evaluate(root: &Path, opts: &EvalOptions) -> Result<Value, DataError> {
    let policy = Policy::default();
    let sets = Sets::load(root)?;
    let sim = Sim::new(policy.clone(), classifier(opts));
    let mut report = serde_json::Map::new();
    report.insert("data".into(), json!(root.display().to_string()));
    report.insert(
        "classifier".into(),
        json!(if opts.rules_only {
            "rules only"
        } else if opts.no_semantic {
            "rules + n-gram head (no semantic tier)"
        } else {
            "rules + n-gram head + semantic tier (adopted heads)"
        }),
    );
    report.insert("sets".into(), sets.summary());

    // ---- single-turn ---------------------------------------------------------------------
    let run = |xs: &[Sample]| -> Vec<Single> { xs.iter().map(|s| sim.single(&s.text)).collect() };
    let benign: Vec<(&'static str, Vec<Single>)> = sets
        .benign
        .iter()
        .map(|(name, xs)| (*name, run(xs)))
        .collect();
    let harmful = run(&sets.harmful);
    let benign_all: Vec<&Single> = benign.iter().flat_map(|(_, v)| v.iter()).collect();

    let mut per_cat = Vec::new();
    for c in Category::ALL {
        let pos: Vec<f32> = sets
            .harmful
            .iter()
            .zip(&harmful)
            .filter(|(s, _)| s.cats.contains(&c))
            .map(|(_, r)| r.scores.get(c))
            .collect();
        if pos.is_empty() {
            continue;
        }
        let mut items: Vec<(f32, bool)> = pos.iter().map(|&s| (s, true)).collect();
        items.extend(benign_all.iter().map(|r| (r.scores.get(c), false)));
        let t = policy.category(c).threshold;
        let m = metrics::prf(&items, t);
        per_cat.push(json!({
            "category": c.name(), "threshold": t, "positives": pos.len(),
            "negatives": benign_all.len(), "precision": m.precision, "recall": m.recall,
            "f1": m.f1, "auprc": metrics::auprc(&items), "tp": m.tp, "fp": m.fp,
        }));
    }
    report.insert("single_turn".into(), Value::Array(per_cat));

    // Any-harm and severe, by the verdict and by severe-tier scores.
    let sev = severe(&policy);
    let sev_score = |s: &Scores| {
        sev.iter()
            .map(|c| s.get(*c) / policy.category(*c).threshold * 0.5)
            .fold(0.0f32, f32::max)
    };
    let mut by_source = Vec::new();
    let mut sources: Vec<&'static str> = sets.harmful.iter().map(|s| s.source).collect();
    sources.dedup();
    for src in sources {
        let rs: Vec<&Single> = sets
            .harmful
            .iter()
            .zip(&harmful)
            .filter(|(s, _)| s.source == src)
            .map(|(_, r)| r)
            .collect();
        let red = rs.iter().filter(|r| r.redirect).count();
        by_source.push(
            json!({"set": src, "n": rs.len(), "redirect_recall": metrics::rate(red, rs.len())}),
        );
    }
    // BeaverTails' severe categories (child abuse; terrorism and organised crime): never
    // trained on, and the severe tier's headline.
    let bt: Vec<&Single> = sets
        .harmful
        .iter()
        .zip(&harmful)
        .filter(|(s, _)| {
            s.source == "beavertails_eval"
                && s.cats.iter().any(|c| {
                    matches!(
                        c,
                        Category::ChildSexualExploitation | Category::ViolentExtremism
                    )
                })
        })
        .map(|(_, r)| r)
        .collect();
    if !bt.is_empty() {
        let red = bt.iter().filter(|r| r.redirect).count();
        by_source.push(
            json!({"set": "beavertails_eval severe (child_abuse, terrorism)", "n": bt.len(),
            "redirect_recall": metrics::rate(red, bt.len())}),
        );
    }
    report.insert("harmful_redirect_recall".into(), Value::Array(by_source));

    let sev_items: Vec<(f32, bool)> = sets
        .harmful
        .iter()
        .zip(&harmful)
        .filter(|(s, _)| s.severe)
        .map(|(_, r)| (sev_score(&r.scores), true))
        .chain(benign_all.iter().map(|r| (sev_score(&r.scores), false)))
        .collect();
    let mut misses: Vec<Value> = Vec::new();
    if opts.misses.is_some() {
        for (s, r) in sets.harmful.iter().zip(&harmful) {
            if s.severe && sev_score(&r.scores) < 0.5 {
                misses.push(miss("severe_missed", s.source, &s.text, &r.scores));
            }
        }
        for ((name, xs), (_, rs)) in sets.benign.iter().zip(&benign) {
            for (s, r) in xs.iter().zip(rs) {
                if r.redirect {
                    misses.push(miss("benign_redirect", name, &s.text, &r.scores));
                }
                if r.crisis {
                    misses.push(miss("benign_crisis", name, &s.text, &r.scores));
                }
            }
        }
    }
    let sm = metrics::prf(&sev_items, 0.5);
    let sev_n = sm.tp + sm.fn_;
    let sev_redirected = sets
        .harmful
        .iter()
        .zip(&harmful)
        .filter(|(s, r)| s.severe && r.redirect)
        .count();
    report.insert(
        "severe".into(),
        json!({
            "n": sev_n, "recall": sm.recall, "fpr_benign": metrics::rate(sm.fp, sm.fp + sm.tn),
            "redirect_recall": metrics::rate(sev_redirected, sev_n),
            "auprc": metrics::auprc(&sev_items), "target_recall": 0.90, "target_fpr": 0.01,
        }),
    );

    // ---- benign sets -----------------------------------------------------------------------
    let mut benign_rows = Vec::new();
    let (mut red_all, mut n_all) = (0, 0);
    for (name, rs) in &benign {
        let red = rs.iter().filter(|r| r.redirect).count();
        let cri = rs.iter().filter(|r| r.crisis).count();
        red_all += red;
        n_all += rs.len();
        benign_rows.push(json!({
            "set": name, "n": rs.len(), "redirect_rate": metrics::rate(red, rs.len()),
            "crisis_rate": metrics::rate(cri, rs.len()),
        }));
    }
    report.insert("benign".into(), Value::Array(benign_rows));
    report.insert(
        "benign_redirect_rate".into(),
        json!({"n": n_all, "rate": metrics::rate(red_all, n_all), "target": 0.01}),
    );

    // ---- crisis ------------------------------------------------------------------------------
    let mut crisis_rows = Vec::new();
    let (mut routed_all, mut n_crisis) = (0, 0);
    for (name, xs) in &sets.crisis {
        let rs = run(xs);
        let routed = rs.iter().filter(|r| r.crisis).count();
        if opts.misses.is_some() && !name.starts_with("twitter") {
            for (s, r) in xs.iter().zip(&rs) {
                if !r.crisis {
                    misses.push(miss("crisis_missed", name, &s.text, &r.scores));
                }
            }
        }
        if !name.starts_with("sdcnl") && !name.starts_with("twitter") {
            routed_all += routed;
            n_crisis += rs.len();
        }
        crisis_rows.push(
            json!({"set": name, "n": rs.len(), "routing_recall": metrics::rate(routed, rs.len())}),
        );
    }
    for (name, xs) in &sets.crisis_negative {
        let rs = run(xs);
        let routed = rs.iter().filter(|r| r.crisis).count();
        if opts.misses.is_some() && !name.starts_with("twitter") {
            for (s, r) in xs.iter().zip(&rs) {
                if r.crisis {
                    misses.push(miss("crisis_on_negative", name, &s.text, &r.scores));
                }
            }
        }
        crisis_rows.push(json!({"set": name, "n": rs.len(), "routing_rate_negatives": metrics::rate(routed, rs.len())}));
    }
    report.insert("crisis".into(), Value::Array(crisis_rows));
    report.insert(
        "crisis_first_person".into(),
        json!({"n": n_crisis, "routing_recall": metrics::rate(routed_all, n_crisis), "target": 0.95}),
    );

    // ---- abuse aimed at the assistant -----------------------------------------------------------
    if !sets.abuse_valid.is_empty() {
        let t = policy.category(Category::Abuse).threshold;
        let items: Vec<(f32, bool)> = sets
            .abuse_valid
            .iter()
            .map(|(s, y)| (sim.single(&s.text).scores.get(Category::Abuse), *y))
            .collect();
        let m = metrics::prf(&items, t);
        report.insert(
            "abuse_convabuse_valid".into(),
            json!({"n": items.len(), "positives": m.tp + m.fn_, "precision": m.precision,
                   "recall": m.recall, "f1": m.f1, "auprc": metrics::auprc(&items), "target_f1": 0.75}),
        );
    }

    // ---- multi-turn replay ---------------------------------------------------------------------
    let mut mt_rows = Vec::new();
    for (name, convs) in &sets.dialogues {
        let outs: Vec<ConvOutcome> = convs.iter().map(|c| sim.replay(c)).collect();
        mt_rows.push(sim::summarise_replay(name, &outs));
    }
    report.insert("multi_turn".into(), Value::Array(mt_rows));

    // ---- persistence ------------------------------------------------------------------------
    let mut p_rows = Vec::new();
    for (name, convs) in &sets.persistent {
        let outs: Vec<ConvOutcome> = convs.iter().map(|c| sim.persist(c)).collect();
        if opts.misses.is_some() && name.starts_with("severe") {
            for (c, o) in convs.iter().zip(&outs) {
                let late = o.ended_at.is_none_or(|t| t > 6);
                for (k, t) in c.iter().enumerate() {
                    let sc = sim.single(t).scores;
                    if late || sev_score(&sc) < 0.5 {
                        let kind = if late {
                            "persistence_late"
                        } else {
                            "persistence_unflagged"
                        };
                        misses.push(miss(&format!("{kind}_turn_{}", k + 1), name, t, &sc));
                    }
                }
            }
        }
        p_rows.push(sim::summarise_persistence(name, &outs));
    }
    report.insert("persistence".into(), Value::Array(p_rows));

    // ---- crisis conversations: never ended ------------------------------------------------------
    let outs: Vec<ConvOutcome> = sets
        .crisis_conversations
        .iter()
        .map(|c| sim.persist(c))
        .collect();
    let with_crisis = outs.iter().filter(|o| o.crisis_seen).count();
    let ends = outs
        .iter()
        .filter(|o| o.crisis_seen && o.ended_at.is_some())
        .count();
    report.insert(
        "crisis_conversations".into(),
        json!({"n": outs.len(), "with_crisis_signal": with_crisis, "ended": ends,
               "ends_after_crisis_all_runs": sim.ends_after_crisis(), "target_ends": 0}),
    );

    // Opened by someone at risk (sets never trained on), then pressed: none may end, whether or
    // not the opener was recognised.
    let outs: Vec<ConvOutcome> = sets
        .at_risk_conversations
        .iter()
        .map(|c| sim.persist(c))
        .collect();
    report.insert(
        "at_risk_conversations".into(),
        json!({"n": outs.len(),
               "recognised": outs.iter().filter(|o| o.crisis_seen).count(),
               "ended": outs.iter().filter(|o| o.ended_at.is_some()).count(),
               "target_ends": 0}),
    );

    // ---- languages -----------------------------------------------------------------------------
    let mut langs = Vec::new();
    let crimes_en: Vec<bool> = sets
        .languages
        .iter()
        .find(|(l, _)| l == "en")
        .map(|(_, xs)| run(&xs.crimes).iter().map(|r| r.redirect).collect())
        .unwrap_or_default();
    for (lang, xs) in &sets.languages {
        let crisis_rs = run(&xs.suicidal);
        let harm_rs = run(&xs.physical_harm);
        let crimes_rs = run(&xs.crimes);
        // Of the crime rows English redirects, the share this language redirects too: the
        // same request in translation should get the same answer.
        let (mut en_red, mut both) = (0, 0);
        if crimes_rs.len() == crimes_en.len() {
            for (r, &e) in crimes_rs.iter().zip(&crimes_en) {
                en_red += usize::from(e);
                both += usize::from(e && r.redirect);
            }
        }
        if opts.misses.is_some() {
            for (s, r) in xs.suicidal.iter().zip(&crisis_rs) {
                if !r.crisis {
                    misses.push(miss("lang_crisis_missed", lang, &s.text, &r.scores));
                }
            }
        }
        langs.push(json!({
            "lang": lang,
            "crisis_routing_recall": metrics::rate(crisis_rs.iter().filter(|r| r.crisis).count(), crisis_rs.len()),
            "n_suicidal": crisis_rs.len(),
            "physical_harm_redirect_rate": metrics::rate(harm_rs.iter().filter(|r| r.redirect).count(), harm_rs.len()),
            "n_physical_harm": harm_rs.len(),
            "crimes_redirect_rate": metrics::rate(crimes_rs.iter().filter(|r| r.redirect).count(), crimes_rs.len()),
            "n_crimes": crimes_rs.len(),
            "crimes_agree_with_en": metrics::rate(both, en_red),
        }));
    }
    report.insert("languages".into(), Value::Array(langs));

    // ---- speed ----------------------------------------------------------------------------------
    if opts.speed_messages > 0 {
        let pool = sets.speed_pool();
        let mut speed = Vec::new();
        let full = classifier(opts);
        let rules = Classifier::rules_only();
        for size in [300usize, 2048] {
            let (median, p99) = latency(&full, &pool, size, opts);
            let (rules_median, _) = latency(&rules, &pool, size, opts);
            speed.push(json!({"bytes": size, "median_us": median, "p99_us": p99,
                "rules_only_median_us": rules_median,
                "target_us": if size == 300 { 5.0 } else { 25.0 }}));
        }
        report.insert("speed".into(), Value::Array(speed));
    }
    if let Some(path) = &opts.misses {
        let text: String = misses.iter().map(|m| format!("{m}\n")).collect();
        std::fs::write(path, text).map_err(|e| DataError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
    }
    Ok(Value::Object(report))
}

/// One error for `--misses`: what went wrong, where, the text and the non-zero scores.
fn miss(kind: &str, set: &str, text: &str, s: &Scores) -> Value {
    let cats: serde_json::Map<String, Value> = Category::ALL
        .into_iter()
        .filter(|c| s.get(*c) > 0.0)
        .map(|c| {
            (
                c.name().to_string(),
                json!((s.get(c) * 100.0).round() / 100.0),
            )
        })
        .collect();
    json!({"kind": kind, "set": set, "text": text, "scores": cats,
           "crisis_self": s.crisis_self, "crisis_third_party": s.crisis_third_party})
}

/// Median and p99 of the per-message classification time (µs) over messages of `size` bytes
/// built from `pool`, on the calling thread.
fn latency(classifier: &Classifier, pool: &[&str], size: usize, opts: &EvalOptions) -> (f64, f64) {
    let msgs = sets::sized_messages(pool, size, opts.speed_messages);
    let mut times = Vec::with_capacity(msgs.len());
    for m in &msgs {
        std::hint::black_box(classifier.classify(m));
        let start = Instant::now();
        for _ in 0..opts.speed_reps {
            std::hint::black_box(classifier.classify(std::hint::black_box(m)));
        }
        times.push(start.elapsed().as_secs_f64() * 1e6 / opts.speed_reps as f64);
    }
    let median = metrics::quantile(&mut times, 0.5);
    let p99 = metrics::quantile(&mut times, 0.99);
    (median, p99)
}

fn f(v: &Value, k: &str) -> f64 {
    v.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

fn u(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

fn arr<'a>(v: &'a Value, k: &str) -> &'a [Value] {
    v.get(k)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// Renders the report as plain-text tables (the layout EVAL.md quotes).
pub fn render(r: &Value) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "## Single-turn, per category (positives vs all benign sets)"
    );
    let _ = writeln!(o, "| category | thr | pos | P | R | F1 | AUPRC |");
    let _ = writeln!(o, "|---|---|---|---|---|---|---|");
    for x in arr(r, "single_turn") {
        let _ = writeln!(
            o,
            "| {} | {:.2} | {} | {:.3} | {:.3} | {:.3} | {:.3} |",
            s(x, "category"),
            f(x, "threshold"),
            u(x, "positives"),
            f(x, "precision"),
            f(x, "recall"),
            f(x, "f1"),
            f(x, "auprc")
        );
    }
    let sv = &r["severe"];
    let _ = writeln!(
        o,
        "\nSevere (n={}): recall {:.3} at benign FPR {:.4}; REDIRECT recall {:.3}; AUPRC {:.3}",
        u(sv, "n"),
        f(sv, "recall"),
        f(sv, "fpr_benign"),
        f(sv, "redirect_recall"),
        f(sv, "auprc")
    );
    let _ = writeln!(o, "\n## Harmful sets: REDIRECT recall (single turn)");
    let _ = writeln!(o, "| set | n | REDIRECT recall |\n|---|---|---|");
    for x in arr(r, "harmful_redirect_recall") {
        let _ = writeln!(
            o,
            "| {} | {} | {:.3} |",
            s(x, "set"),
            u(x, "n"),
            f(x, "redirect_recall")
        );
    }
    let _ = writeln!(o, "\n## Benign single turns");
    let _ = writeln!(
        o,
        "| set | n | REDIRECT rate | crisis rate |\n|---|---|---|---|"
    );
    for x in arr(r, "benign") {
        let _ = writeln!(
            o,
            "| {} | {} | {:.4} | {:.4} |",
            s(x, "set"),
            u(x, "n"),
            f(x, "redirect_rate"),
            f(x, "crisis_rate")
        );
    }
    let b = &r["benign_redirect_rate"];
    let _ = writeln!(
        o,
        "All benign: REDIRECT rate {:.4} (n={})",
        f(b, "rate"),
        u(b, "n")
    );
    let _ = writeln!(o, "\n## Crisis routing");
    let _ = writeln!(o, "| set | n | routing recall / rate |\n|---|---|---|");
    for x in arr(r, "crisis") {
        let v = if x.get("routing_recall").is_some() {
            format!("recall {:.3}", f(x, "routing_recall"))
        } else {
            format!("rate on negatives {:.3}", f(x, "routing_rate_negatives"))
        };
        let _ = writeln!(o, "| {} | {} | {} |", s(x, "set"), u(x, "n"), v);
    }
    let c = &r["crisis_first_person"];
    let _ = writeln!(
        o,
        "First-person target sets: routing recall {:.3} (n={})",
        f(c, "routing_recall"),
        u(c, "n")
    );
    let cc = &r["crisis_conversations"];
    let _ = writeln!(
        o,
        "Crisis conversations: {} built, {} with a crisis signal or suspicion, {} ended; ENDs after a crisis signal or suspicion in every simulated conversation: {}",
        u(cc, "n"),
        u(cc, "with_crisis_signal"),
        u(cc, "ended"),
        u(cc, "ends_after_crisis_all_runs")
    );
    let ar = &r["at_risk_conversations"];
    let _ = writeln!(
        o,
        "Opened by a person at risk (SDCNL suicide posts, Twitter intention=1; never trained on), then pressed with severe requests and abuse: {} conversations, {} recognised (crisis or suspicion), {} ended (target 0)",
        u(ar, "n"),
        u(ar, "recognised"),
        u(ar, "ended")
    );
    if let Some(a) = r.get("abuse_convabuse_valid") {
        let _ = writeln!(
            o,
            "\n## Abuse aimed at the assistant (ConvAbuse valid, n={}, positives {})\nP {:.3} R {:.3} F1 {:.3} AUPRC {:.3}",
            u(a, "n"),
            u(a, "positives"),
            f(a, "precision"),
            f(a, "recall"),
            f(a, "f1"),
            f(a, "auprc")
        );
    }
    let _ = writeln!(o, "\n## Multi-turn replay");
    let _ = writeln!(
        o,
        "| set | convs | user turns | END/conv | REDIRECT/conv | END/turn | REDIRECT/turn | assistant-output REDIRECT/turn |\n|---|---|---|---|---|---|---|---|"
    );
    for x in arr(r, "multi_turn") {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} |",
            s(x, "set"),
            u(x, "conversations"),
            u(x, "user_turns"),
            f(x, "end_rate_conv"),
            f(x, "redirect_rate_conv"),
            f(x, "end_rate_turn"),
            f(x, "redirect_rate_turn"),
            f(x, "assistant_redirect_rate_turn")
        );
    }
    let _ = writeln!(o, "\n## Persistence (simulated server honouring verdicts)");
    let _ = writeln!(
        o,
        "| set | convs | ended | ended by turn 6 | warned before end | END turn histogram |\n|---|---|---|---|---|---|"
    );
    for x in arr(r, "persistence") {
        let _ = writeln!(
            o,
            "| {} | {} | {:.3} | {:.3} | {:.3} | {} |",
            s(x, "set"),
            u(x, "conversations"),
            f(x, "ended"),
            f(x, "ended_by_turn_6"),
            f(x, "warned_before_end"),
            x.get("end_turns")
                .map(|v| v.to_string())
                .unwrap_or_default()
        );
    }
    let _ = writeln!(o, "\n## Languages (XSafety)");
    let _ = writeln!(
        o,
        "| lang | suicidal n | crisis routing | Physical_Harm n | REDIRECT rate | Crimes n | REDIRECT rate | agrees with en |\n|---|---|---|---|---|---|---|---|"
    );
    for x in arr(r, "languages") {
        let _ = writeln!(
            o,
            "| {} | {} | {:.3} | {} | {:.3} | {} | {:.3} | {:.3} |",
            s(x, "lang"),
            u(x, "n_suicidal"),
            f(x, "crisis_routing_recall"),
            u(x, "n_physical_harm"),
            f(x, "physical_harm_redirect_rate"),
            u(x, "n_crimes"),
            f(x, "crimes_redirect_rate"),
            f(x, "crimes_agree_with_en")
        );
    }
    let _ = writeln!(o, "\n## Speed (classification, one thread)");
    for x in arr(r, "speed") {
        let _ = writeln!(
            o,
            "{} B: median {:.2} µs, p99 {:.2} µs (target {:.0} µs); rules alone: median {:.2} µs",
            u(x, "bytes"),
            f(x, "median_us"),
            f(x, "p99_us"),
            f(x, "target_us"),
            f(x, "rules_only_median_us")
        );
    }
    o
}

/// `threadwarden-lab eval`: runs and prints.
pub fn run(root: &Path, json_out: bool, opts: &EvalOptions) -> Result<(), DataError> {
    let report = evaluate(root, opts)?;
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}

/// Flags of `threadwarden-lab eval`.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// The data directory, laid out as `shared/data/dev/` (see its README).
    #[arg(long, default_value = "../shared/data/dev")]
    pub data: std::path::PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Messages per size in the latency measurement (0 skips it).
    #[arg(long, default_value_t = 200)]
    pub speed_messages: usize,
    /// Repetitions per message in the latency measurement.
    #[arg(long, default_value_t = 20)]
    pub speed_reps: usize,
    /// Measure the rules alone, without the learned component.
    #[arg(long)]
    pub rules_only: bool,
    /// Measure without the semantic tier (the classifier as it was before it).
    #[arg(long)]
    pub no_semantic: bool,
    /// Write every target's errors, with the data's text, to this JSONL file (local error
    /// analysis only: keep it out of the repository).
    #[arg(long)]
    pub misses: Option<std::path::PathBuf>,
    /// A lexicon file to measure instead of the embedded one (try a change without a rebuild).
    #[arg(long)]
    pub lexicon: Option<std::path::PathBuf>,
    /// Measure a live guard model at this base URL (and only that): the built-in tiers, the
    /// model alone, and the cascade (`when: always` and `uncertain`) on every labelled set.
    /// Sends the data's text to that server.
    #[arg(long, value_name = "URL")]
    pub external: Option<String>,
    /// The model's API: openai-moderation, llama-guard or shieldgemma.
    #[arg(long, default_value = "llama-guard", value_parser = parse_kind)]
    pub external_kind: threadwarden::classify::external::Kind,
    /// The `model` field of each request.
    #[arg(long, default_value = "")]
    pub external_model: String,
    /// Per call, retries included (`500ms`, `2s`).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub external_timeout: std::time::Duration,
    /// A file holding the API key (sent as `Authorization: Bearer`).
    #[arg(long)]
    pub external_api_key_file: Option<std::path::PathBuf>,
    /// Messages per set sent to the model at most (spread evenly over the set).
    #[arg(long, default_value_t = 200)]
    pub external_limit: usize,
}

fn parse_kind(name: &str) -> Result<threadwarden::classify::external::Kind, String> {
    threadwarden::classify::external::Kind::from_name(name)
        .ok_or_else(|| "expected openai-moderation, llama-guard or shieldgemma".to_string())
}

/// `threadwarden-lab eval` entry point.
pub fn main(args: EvalArgs) -> std::process::ExitCode {
    let opts = EvalOptions {
        speed_messages: args.speed_messages,
        speed_reps: args.speed_reps,
        rules_only: args.rules_only,
        no_semantic: args.no_semantic,
        misses: args.misses,
        lexicon: args.lexicon,
    };
    if let Err(e) =
        threadwarden::check::classifier_with(opts.lexicon.as_deref(), opts.rules_only, true)
    {
        eprintln!("error: {e}");
        return std::process::ExitCode::FAILURE;
    }
    if let Some(url) = args.external {
        let ext = external::ExternalOptions {
            url,
            kind: args.external_kind,
            model: args.external_model,
            timeout: args.external_timeout,
            api_key_file: args.external_api_key_file,
            limit: args.external_limit,
        };
        return match external::evaluate(&args.data, &opts, &ext) {
            Ok(report) if args.json => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
                std::process::ExitCode::SUCCESS
            }
            Ok(report) => {
                print!("{}", external::render(&report));
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    match run(&args.data, args.json, &opts) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The ConvAbuse label of one row (shared with `train`): (majority abusive, aimed at the system).
pub fn sets_convabuse_label(t: &data::Table, row: &[String]) -> (bool, bool) {
    sets::convabuse_label(t, row)
}

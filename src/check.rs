//! `threadwarden check`: classify one text and explain it (rules fired, suppressors, scores),
//! plus what the built-in policy would answer if it were a thread's first user turn.

use std::path::Path;

use serde_json::json;

use crate::classify::Classifier;
use crate::classify::semantic::Head;
use crate::domain::{Category, Scores};
use crate::policy::{self, Event, EventKind, Policy, ThreadState};

fn first_turn(scores: &Scores) -> policy::Verdict {
    let event = Event {
        id: 1,
        model: "",
        rollout_hash: 0,
        kind: EventKind::User,
    };
    policy::decide(
        &Policy::default(),
        &mut ThreadState::default(),
        &event,
        scores,
        0,
    )
}

fn signals(s: &Scores) -> [(&'static str, f32); 5] {
    [
        ("crisis_self", s.crisis_self),
        ("crisis_others", s.crisis_others),
        ("crisis_third_party", s.crisis_third_party),
        ("end_request", s.end_request),
        ("affirmation", s.affirmation),
    ]
}

/// Prints, for every non-empty line of `text`, the first-turn action, crisis kind and the
/// non-zero scores on one line.
pub fn run_lines(classifier: &Classifier, text: &str) {
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let s = classifier.classify(line);
        let v = first_turn(&s);
        let mut parts: Vec<String> = Category::ALL
            .into_iter()
            .filter(|c| s.get(*c) > 0.0)
            .map(|c| format!("{}={:.2}", c.name(), s.get(c)))
            .collect();
        parts.extend(
            signals(&s)
                .into_iter()
                .filter(|(_, v)| *v > 0.0)
                .map(|(k, v)| format!("{k}={v:.2}")),
        );
        let crisis = v.crisis.map(|k| k.name()).unwrap_or("-");
        println!(
            "{:<8} {:<14} {} | {line}",
            v.action.name(),
            crisis,
            parts.join(" ")
        );
    }
}

/// Prints the explanation of `text` as a table or JSON.
pub fn run(classifier: &Classifier, text: &str, as_json: bool) {
    let ex = classifier.explain(text);
    let verdict = first_turn(&ex.scores);
    if as_json {
        let hits: Vec<_> = ex
            .hits
            .iter()
            .map(|h| {
                json!({
                    "rule": h.rule,
                    "category": h.category.map(Category::name),
                    "signal": h.signal,
                    "weight": h.weight,
                    "span": [h.span.0, h.span.1],
                    "suppressed": h.suppressed,
                })
            })
            .collect();
        let categories: serde_json::Map<_, _> = Category::ALL
            .into_iter()
            .filter(|c| ex.scores.get(*c) > 0.0)
            .map(|c| (c.name().to_string(), json!(ex.scores.get(c))))
            .collect();
        let sigs: serde_json::Map<_, _> = signals(&ex.scores)
            .into_iter()
            .filter(|(_, v)| *v > 0.0)
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let tiers: serde_json::Map<_, _> = tier_rows(&ex)
            .into_iter()
            .map(|(name, rule, sem, comb, adopted)| {
                (
                    name.to_string(),
                    json!({"rules": rule, "semantic": sem, "combined": comb, "adopted": adopted}),
                )
            })
            .collect();
        let out = json!({
            "normalized": ex.normalized,
            "hits": hits,
            "tiers": tiers,
            "categories": categories,
            "signals": sigs,
            "truncated": ex.scores.truncated,
            "first_turn": {
                "action": verdict.action.name(),
                "reason": verdict.reason.name(),
                "crisis": verdict.crisis.map(|k| k.name()),
            },
        });
        println!("{out:#}");
        return;
    }
    println!("normalized: {}", ex.normalized);
    if ex.hits.is_empty() {
        println!("rules fired: none");
    } else {
        println!("rules fired:");
        for h in &ex.hits {
            let target = h.category.map(Category::name).or(h.signal).unwrap_or("-");
            let note = if h.suppressed { "  (suppressed)" } else { "" };
            println!(
                "  {:<48} {:<26} {:>5.2}  [{}..{}]{note}",
                h.rule, target, h.weight, h.span.0, h.span.1
            );
        }
    }
    let rows = tier_rows(&ex);
    if ex.tiers.is_some() && rows.is_empty() {
        println!(
            "tiers: the semantic tier does not apply (its English vocabulary covers under 80 % of the words): the rules decide"
        );
    }
    if !rows.is_empty() {
        println!(
            "tiers (rules, semantic alone, combined; the combined score is used where adopted):"
        );
        for (name, rule, sem, comb, adopted) in rows {
            let used = if adopted { "used" } else { "rules used" };
            println!("  {name:<26} {rule:>5.2} {sem:>9.2} {comb:>9.2}  {used}");
        }
    }
    println!("scores:");
    let mut any = false;
    for c in Category::ALL {
        if ex.scores.get(c) > 0.0 {
            println!("  {:<26} {:.2}", c.name(), ex.scores.get(c));
            any = true;
        }
    }
    for (name, v) in signals(&ex.scores) {
        if v > 0.0 {
            println!("  {name:<26} {v:.2}");
            any = true;
        }
    }
    if !any {
        println!("  (all zero)");
    }
    let crisis = verdict
        .crisis
        .map(|k| format!(", crisis support: {}", k.name()))
        .unwrap_or_default();
    println!(
        "as a first user turn: {} ({}){crisis}",
        verdict.action.name(),
        verdict.reason.name()
    );
}

/// The built-in classifier, or the same model over a lexicon file (`--lexicon`, to measure a
/// lexicon change without a rebuild); without the learned heads when `rules_only`, without the
/// semantic tier unless `semantic`.
pub fn classifier_with(
    lexicon: Option<&Path>,
    rules_only: bool,
    semantic: bool,
) -> Result<std::sync::Arc<Classifier>, String> {
    let base = match lexicon {
        None if !rules_only && semantic => return Ok(Classifier::shared()),
        None => Classifier::rules_only(),
        Some(p) => {
            let yaml = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            Classifier::from_yaml(&yaml).map_err(|e| format!("{}: {e}", p.display()))?
        }
    };
    if rules_only {
        return Ok(std::sync::Arc::new(base));
    }
    let model = crate::classify::Model::from_bytes(crate::classify::MODEL_BYTES)
        .map_err(|e| e.to_string())?
        .adopted();
    let base = base.with_model(Some(model));
    if !semantic {
        return Ok(std::sync::Arc::new(base));
    }
    let tier = std::sync::Arc::new(crate::classify::semantic::Semantic::builtin());
    Ok(std::sync::Arc::new(base.with_semantic(Some(tier))))
}

/// Each tier's score per head: rules, the semantic tier alone, and the combined score used.
fn tier_rows(ex: &crate::classify::Explanation) -> Vec<(&'static str, f32, f32, f32, bool)> {
    let Some(t) = &ex.tiers else {
        return Vec::new();
    };
    t.heads
        .iter()
        .map(|h| {
            let rule = match h.head {
                Head::AnyHarm => t.rules.categories.iter().copied().fold(0.0, f32::max),
                Head::Category(c) => t.rules.get(c),
                Head::CrisisSelf => t.rules.crisis_self,
                Head::CrisisOthers => t.rules.crisis_others,
                Head::CrisisThirdParty => t.rules.crisis_third_party,
            };
            (h.head.name(), rule, h.semantic, h.combined, h.adopted)
        })
        .collect()
}

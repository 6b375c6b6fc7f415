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

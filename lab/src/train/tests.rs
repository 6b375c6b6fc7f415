//! Determinism and adoption of `train` on examples written for this project.

use super::*;

fn fixture() -> Vec<HeadData> {
    let pos = [
        "you stupid useless bot",
        "shut up you idiot machine",
        "you are a worthless moron",
        "stupid bot you are so dumb",
        "you idiot, you useless program",
        "dumb machine, shut up",
    ];
    let neg = [
        "how do I sort a list",
        "thanks that helped a lot",
        "what is the weather like in Paris",
        "write a poem about the sea",
        "can you explain closures in rust",
        "please make it shorter",
        "what time is it in Tokyo",
        "recommend a good book about history",
    ];
    let mut examples: Vec<Example> = pos.iter().map(|t| ex(*t, true, false)).collect();
    examples.extend(neg.iter().map(|t| ex(*t, false, true)));
    vec![HeadData {
        category: Category::Abuse,
        examples,
        sources: vec!["fixture".into()],
    }]
}

fn params(seed: u64) -> Params {
    Params {
        bits: 10,
        seed,
        folds: 2,
        ..Params::default()
    }
}

#[test]
fn training_is_deterministic() {
    let rules = Classifier::rules_only();
    let (a, _) = train(&fixture(), &params(7), &rules);
    let (b, _) = train(&fixture(), &params(7), &rules);
    assert_eq!(a.to_bytes(), b.to_bytes());
    let (c, _) = train(&fixture(), &params(8), &rules);
    assert_ne!(a.to_bytes(), c.to_bytes(), "the seed must matter");
    // The trained head separates its own training data.
    let mut out = [0f32; 1];
    a.score_into(&normalize("you useless idiot bot"), &mut out);
    let hi = out[0];
    a.score_into(&normalize("how do I sort a list"), &mut out);
    assert!(hi > out[0], "{hi} vs {}", out[0]);
}

#[test]
fn shipped_weights_parse_and_fit_the_size_budget() {
    let m = Model::from_bytes(threadwarden::classify::MODEL_BYTES).expect("model.bin parses");
    assert!(threadwarden::classify::MODEL_BYTES.len() <= 5 * 1024 * 1024);
    assert_eq!(m.bits, BITS);
    assert_eq!(m.seed, SEED);
}

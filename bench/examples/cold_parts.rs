//! Where the classifier's cold cost goes: each part of a classification timed on its own, warm
//! (back-to-back calls) and after an idle pause (a sleep before each call, as between messages
//! at a low event rate), over the load generator's built-in corpus. The parts rotate, so each
//! call finds the caches as the previous pause left them:
//!
//! - `normalize`: the normaliser alone;
//! - `model`: the learned component alone, on already-normalised text;
//! - `rules only`: normalise, lexicon search and rules (`Classifier::rules_only`);
//! - `classify`: the whole built-in classifier (all of the above).
//!
//! `classify − rules only` is the model's share in place; `rules only − normalize` is the
//! lexicon search and the rules.
//!
//! Run: `cargo run --release -p threadwarden-bench --example cold_parts -- [SIZE_BYTES=300] [IDLE_US=200] [ROUNDS=400]`
//! (BENCHMARKS.md, "Changes in the seventh session").

mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use support::{arg, user_texts};
use threadwarden::classify::{Classifier, MODEL_BYTES, Model, normalize};
use threadwarden::huge_pages;

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let size = arg(1, 300);
    let idle = Duration::from_micros(arg(2, 200) as u64);
    let rounds = arg(3, 400).max(1);
    huge_pages::set_enabled(true);
    let full = Classifier::builtin();
    let rules = Classifier::rules_only();
    let model = Model::from_bytes(MODEL_BYTES)
        .expect("the built-in model loads")
        .adopted();
    let texts = user_texts(size, 10);
    let normalized: Vec<String> = texts.iter().map(|t| normalize(t).into_owned()).collect();

    let parts: [(&str, &dyn Fn(usize)); 4] = [
        ("normalize", &|i| {
            black_box(normalize(black_box(&texts[i])));
        }),
        ("model", &|i| {
            let mut out = [0f32; 16];
            model.score_into(black_box(&normalized[i]), &mut out);
            black_box(out);
        }),
        ("rules only", &|i| {
            black_box(rules.classify(black_box(&texts[i])));
        }),
        ("classify", &|i| {
            black_box(full.classify(black_box(&texts[i])));
        }),
    ];

    println!(
        "{size} B texts, {} distinct; warm: back-to-back; cold: {} µs asleep before each call; \
         median (mean) µs per call over {rounds} calls each",
        texts.len(),
        idle.as_micros()
    );
    println!("| part | warm | cold | cold − warm |");
    println!("|---|---:|---:|---:|");
    let mut warm = vec![Vec::with_capacity(rounds); parts.len()];
    let mut cold = vec![Vec::with_capacity(rounds); parts.len()];
    for r in 0..rounds {
        for (k, (_, f)) in parts.iter().enumerate() {
            let i = (r * parts.len() + k) % texts.len();
            // Warm: the same call twice in a row, the second timed.
            f(i);
            let t = Instant::now();
            f(i);
            warm[k].push(t.elapsed().as_nanos() as f64 / 1e3);
            // Cold: after the pause, a text this part has not just seen.
            let j = (i + texts.len() / 2) % texts.len();
            std::thread::sleep(idle);
            let t = Instant::now();
            f(j);
            cold[k].push(t.elapsed().as_nanos() as f64 / 1e3);
        }
    }
    for (k, (name, _)) in parts.iter().enumerate() {
        let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
        let (wm, cm) = (mean(&warm[k]), mean(&cold[k]));
        let (w, c) = (median(&mut warm[k]), median(&mut cold[k]));
        println!(
            "| {name} | {w:.2} ({wm:.2}) | {c:.2} ({cm:.2}) | {:.2} |",
            c - w
        );
    }
}

//! A driver for profilers: `Classifier::classify` alone over the load generator's corpus (the
//! criterion `classify` group's texts), benign and harmful, at 50, 300 and 2048 bytes; a fixed
//! number of calls per size, so instruction counts are repeatable.
//!
//! ```sh
//! cargo build --release --example profile_classify
//! valgrind --tool=callgrind --toggle-collect='*drive_classify*' \
//!     target/release/examples/profile_classify CALLS SIZE
//! ```
//!
//! Benign and harmful texts alternate; `callgrind_annotate --inclusive=yes` gives the cost of
//! each part; divide by CALLS for per call.

use std::hint::black_box;

use threadwarden::classify::Classifier;
use threadwarden::loadgen::corpus::{Corpus, Mix, Size};

fn texts(size: usize) -> Vec<String> {
    let mut out = Vec::new();
    for harmful_percent in [0, 100] {
        let mix = Mix {
            harmful_percent,
            assistant_percent: 0,
        };
        let mut t: Vec<String> = Corpus::builtin(Size::Fixed(size), mix)
            .entries
            .into_iter()
            .map(|e| e.text)
            .collect();
        t.sort();
        t.dedup();
        out.push(t);
    }
    // Interleave benign and harmful.
    let (b, h) = (&out[0], &out[1]);
    (0..b.len().max(h.len()))
        .flat_map(|i| [b.get(i % b.len()), h.get(i % h.len())])
        .flatten()
        .cloned()
        .collect()
}

fn run(c: &Classifier, texts: &[String], calls: usize) -> f32 {
    let mut acc = 0.0;
    for i in 0..calls {
        acc += black_box(c.classify(black_box(&texts[i % texts.len()]))).categories[0];
    }
    acc
}

#[inline(never)]
fn drive_classify(c: &Classifier, texts: &[String], calls: usize) -> f32 {
    run(c, texts, calls)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let calls: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let size: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(300);
    let c = Classifier::builtin();
    let texts = texts(size);
    // Warm the lazily built parts outside the measured function.
    black_box(run(&c, &texts, 10));
    let start = std::time::Instant::now();
    let a = drive_classify(&c, &texts, calls);
    eprintln!("{calls} calls at {size} B in {:?} ({a})", start.elapsed());
}

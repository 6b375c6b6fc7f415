//! Classification with warm and with cold caches, over the load generator's built-in corpus.
//!
//! `hot`: the mean over 2,000 back-to-back calls. `cold`: the mean over 300 calls, each after
//! writing one byte per cache line of a SWEEP_MIB buffer, which evicts the classifier's tables
//! (64 MiB: every cache level; 2 MiB: L1 and L2 only). The sweep itself is not timed.
//!
//! Run: `cargo run --release --example cold_classify -- [SIZE_BYTES=300] [SWEEP_MIB=64]`
//! (BENCHMARKS.md, "Classifier cache footprint").

use std::hint::black_box;
use std::time::Instant;

use threadwarden::classify::Classifier;
use threadwarden::loadgen::corpus::{Corpus, Mix, Size};

fn arg(n: usize, default: usize) -> usize {
    std::env::args()
        .nth(n)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let size = arg(1, 300);
    let sweep_mib = arg(2, 64);
    let classifier = Classifier::builtin();
    let mix = Mix {
        harmful_percent: 20,
        assistant_percent: 0,
    };
    let texts: Vec<String> = Corpus::builtin(Size::Fixed(size), mix)
        .entries
        .into_iter()
        .map(|e| e.text)
        .collect();

    for t in texts.iter().take(100) {
        black_box(classifier.classify(t));
    }
    let calls = 2000;
    let start = Instant::now();
    for i in 0..calls {
        black_box(classifier.classify(black_box(&texts[i % texts.len()])));
    }
    let hot = start.elapsed().as_nanos() as f64 / calls as f64;

    let mut buf = vec![1u8; sweep_mib << 20];
    let calls = 300;
    let mut cold_total = 0u128;
    for i in 0..calls {
        for j in (0..buf.len()).step_by(64) {
            buf[j] = buf[j].wrapping_add(i as u8);
        }
        let start = Instant::now();
        black_box(classifier.classify(black_box(&texts[(i * 7) % texts.len()])));
        cold_total += start.elapsed().as_nanos();
    }
    black_box(&buf);
    let cold = cold_total as f64 / calls as f64;
    println!(
        "{size} B, sweep {sweep_mib} MiB: hot {:.2} µs, cold {:.2} µs",
        hot / 1e3,
        cold / 1e3
    );
}

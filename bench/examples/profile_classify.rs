//! A driver for profilers: `Classifier::classify` alone over the load generator's corpus (the
//! criterion `classify` group's texts), benign and harmful, at 50, 300 and 2048 bytes; a fixed
//! number of calls per size, so instruction counts are repeatable.
//!
//! ```sh
//! cargo build --release -p threadwarden-bench --example profile_classify
//! valgrind --tool=callgrind --toggle-collect='*drive_classify*' \
//!     target/release/examples/profile_classify CALLS SIZE
//! ```
//!
//! Benign and harmful texts alternate; `callgrind_annotate --inclusive=yes` gives the cost of
//! each part; divide by CALLS for per call.
//!
//! With a third argument SWEEP_MIB, each call comes after a sweep of that many MiB (outside the
//! collected function), so `--cache-sim=yes` shows where a call that finds every cache cold
//! misses: `callgrind_annotate --inclusive=yes --show=Ir,D1mr,DLmr,I1mr,ILmr`.

use std::hint::black_box;

use threadwarden::classify::Classifier;
use threadwarden_bench::loadgen::corpus::{Corpus, Mix, Size};

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

/// One call, after the caller's sweep.
#[inline(never)]
fn drive_classify_cold(c: &Classifier, text: &str) -> f32 {
    black_box(c.classify(black_box(text))).categories[0]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let calls: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let size: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(300);
    let sweep_mib: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(0);
    let c = Classifier::builtin();
    let texts = texts(size);
    // Warm the lazily built parts outside the measured function.
    black_box(run(&c, &texts, 10));
    let start = std::time::Instant::now();
    let a = if sweep_mib == 0 {
        drive_classify(&c, &texts, calls)
    } else {
        let mut sweep = vec![0u8; sweep_mib << 20];
        let mut acc = 0.0;
        for i in 0..calls {
            for line in sweep.chunks_mut(64) {
                line[0] = line[0].wrapping_add(1);
            }
            black_box(&sweep);
            acc += drive_classify_cold(&c, &texts[i % texts.len()]);
        }
        acc
    };
    eprintln!("{calls} calls at {size} B in {:?} ({a})", start.elapsed());
}

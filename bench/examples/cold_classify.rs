//! Classification with warm and with cold caches, over the load generator's built-in corpus,
//! with the classifier's tables on ordinary pages and on transparent huge pages, interleaved in
//! one process (the sidecar's allocator, `src/huge_alloc.rs`, is this example's too, by path).
//!
//! `hot`: the mean over 2,000 back-to-back calls. `cold`: the mean over 300 calls, each after a
//! sweep of a SWEEP_MIB buffer that is not timed. STRIDE 64 writes one byte per cache line
//! (64 MiB: evicts every cache level and the TLB; 2 MiB: L1 and L2 only); STRIDE 4096 writes one
//! byte per page, which evicts the TLB but little of the caches (64 MiB: 16,384 lines). IDLE_US
//! waits that long before each cold call (after its sweep): `sleep` lets the core idle between
//! calls, as the sidecar's does at a low event rate, with nothing else running in the process;
//! `spin` busy-waits the same time instead, so the only difference is whether the core halted.
//!
//! Run: `cargo run --release -p threadwarden-bench --example cold_classify -- [SIZE_BYTES=300] [SWEEP_MIB=64] [STRIDE=64] [IDLE_US=0] [sleep|spin]`
//! (BENCHMARKS.md, "Huge pages for the automata").

mod support;

use std::hint::black_box;
use std::time::Instant;

use support::{arg, user_texts};
use threadwarden::classify::Classifier;
use threadwarden::huge_pages;

fn main() {
    let size = arg(1, 300);
    let sweep_mib = arg(2, 64);
    let stride = arg(3, 64).max(1);
    let idle = std::time::Duration::from_micros(arg(4, 0) as u64);
    let spin = match std::env::args().nth(5).as_deref() {
        None | Some("sleep") => false,
        Some("spin") => true,
        Some(other) => panic!("the fifth argument is `sleep` or `spin`, not {other:?}"),
    };
    let before = huge_pages::anon_huge_bytes().unwrap_or(0);
    huge_pages::set_enabled(false);
    let small = Classifier::builtin();
    let between = huge_pages::anon_huge_bytes().unwrap_or(0);
    huge_pages::set_enabled(true);
    let huge = Classifier::builtin();
    let after = huge_pages::anon_huge_bytes().unwrap_or(0);
    println!(
        "THP {}: huge pages {} MiB -> {} MiB (small-page classifier) -> {} MiB (huge-page classifier)",
        huge_pages::thp_mode().unwrap_or_else(|| "unknown".into()),
        before >> 20,
        between >> 20,
        after >> 20
    );
    let texts = user_texts(size, 20);
    let classifiers = [("small pages", &small), ("huge pages", &huge)];

    let mut hot = [0f64; 2];
    for (k, (_, c)) in classifiers.iter().enumerate() {
        for t in texts.iter().take(100) {
            black_box(c.classify(t));
        }
        let calls = 2000;
        let start = Instant::now();
        for i in 0..calls {
            black_box(c.classify(black_box(&texts[i % texts.len()])));
        }
        hot[k] = start.elapsed().as_nanos() as f64 / calls as f64;
    }

    // Cold: the two classifiers alternate, each call after its own sweep.
    let mut buf = vec![1u8; sweep_mib << 20];
    let calls = 300;
    let mut cold_total = [0u128; 2];
    for i in 0..calls {
        for (k, (_, c)) in classifiers.iter().enumerate() {
            for j in (0..buf.len()).step_by(stride) {
                buf[j] = buf[j].wrapping_add(i as u8);
            }
            if spin {
                let waited = Instant::now();
                while waited.elapsed() < idle {
                    std::hint::spin_loop();
                }
            } else if !idle.is_zero() {
                std::thread::sleep(idle);
            }
            let start = Instant::now();
            black_box(c.classify(black_box(&texts[(i * 7) % texts.len()])));
            cold_total[k] += start.elapsed().as_nanos();
        }
    }
    black_box(&buf);
    for (k, (name, _)) in classifiers.iter().enumerate() {
        println!(
            "{size} B, sweep {sweep_mib} MiB stride {stride}, {} {idle:?}, {name}: hot {:.2} µs, cold {:.2} µs",
            if spin { "spin" } else { "idle" },
            hot[k] / 1e3,
            cold_total[k] as f64 / calls as f64 / 1e3
        );
    }
}

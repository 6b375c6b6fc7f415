//! A driver for profilers (`scripts/bench.sh --profile` runs it under callgrind): the sidecar's
//! in-process request path, once per event, over the load generator's event mix — prost decode
//! of the request, `Engine::decide` (validate, classify, store, policy, dress), prost encode of
//! the answer. No transport: that share is profiled on the real server.
//!
//! ```sh
//! cargo run --release -p threadwarden-bench --example profile_path -- [EVENTS] [THREADS]
//! valgrind --tool=callgrind --toggle-collect='*drive_events*' target/release/examples/profile_path 50000
//! ```
//!
//! Everything per event happens inside `drive_events`, so `--toggle-collect` leaves out the set-up
//! (building the classifier's automaton, parsing the embedded YAML).
//!
//! With a third argument SWEEP_MIB, each event comes after a sweep of that many MiB (outside
//! the collected function), for callgrind's `--cache-sim=yes`: where an event that finds the
//! data caches cold misses.

use std::sync::Arc;
use std::time::Instant;

use prost::Message;
use threadwarden::api::pb;
use threadwarden::classify::Classifier;
use threadwarden::crisis::Directory;
use threadwarden::engine::{Engine, Sinks};
use threadwarden::policy::Policy;
use threadwarden::state::{StoreConfig, ThreadStore};
use threadwarden_bench::loadgen::corpus::{Corpus, Generator, Mix, Size};

fn main() {
    let mut args = std::env::args().skip(1);
    let events: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let threads: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let sweep_mib: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(0);
    let corpus = Corpus::builtin(
        Size::Fixed(300),
        Mix {
            harmful_percent: 10,
            assistant_percent: 30,
        },
    );
    let generator = Generator::new(corpus, threads);
    let (_tx, policy) = tokio::sync::watch::channel(Arc::new(Policy::default()));
    let engine = Engine::new(
        ThreadStore::new(StoreConfig::default()),
        Arc::new(Classifier::builtin()),
        policy,
        Arc::new(Directory::builtin()),
        Sinks::quiet(7),
    );
    let started = Instant::now();
    let bytes = if sweep_mib == 0 {
        drive_events(&engine, &generator, events)
    } else {
        // Every thread exists first, as in a long-lived sidecar; then each event runs cold.
        drive_events(&engine, &generator, threads);
        let mut sweep = vec![0u8; sweep_mib << 20];
        (0..events)
            .map(|n| {
                for line in sweep.chunks_mut(64) {
                    line[0] = line[0].wrapping_add(1);
                }
                std::hint::black_box(&sweep);
                drive_events_cold(&engine, &generator, threads + n)
            })
            .sum()
    };
    let took = started.elapsed();
    println!(
        "{events} events over {threads} threads: {:.2} µs per event, {} answer bytes",
        took.as_secs_f64() * 1e6 / events as f64,
        bytes
    );
}

/// Event `n` alone, after the caller's sweep.
#[inline(never)]
fn drive_events_cold(engine: &Engine, generator: &Generator, n: u64) -> usize {
    answer(engine, generator, n).encoded_len()
}

/// Event `n`'s request bytes (the load generator's cost, small), decoded and decided.
#[inline(always)]
fn answer(engine: &Engine, generator: &Generator, n: u64) -> pb::ModerateResponse {
    let request = generator.request(n);
    let req = pb::ModerateRequest::decode(request).expect("valid request");
    let event = req.event.expect("event");
    let verdict = engine.decide(&event).expect("decided").verdict;
    pb::ModerateResponse {
        event_id: event.event_id,
        thread_id: event.thread_id,
        result: Some(pb::moderate_response::Result::Verdict(verdict)),
    }
}

/// The measured loop: per event, build its request bytes (the load generator's cost, small),
/// decode, decide, encode. Not inlined, so that a profiler can collect inside it only.
#[inline(never)]
fn drive_events(engine: &Engine, generator: &Generator, events: u64) -> usize {
    let mut out = Vec::with_capacity(1024);
    let mut bytes = 0usize;
    for n in 0..events {
        let resp = answer(engine, generator, n);
        out.clear();
        resp.encode(&mut out).expect("encoded");
        bytes += out.len();
    }
    bytes
}

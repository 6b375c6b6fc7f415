//! Microbenchmarks of the sidecar's per-event work (issue 5):
//!
//! - `classify/{benign,harmful}/{50,300,2048}`: `Classifier::classify` per message, cycling over
//!   the load generator's built-in corpus padded to that size;
//! - `normalize/{300,2048}`: the normaliser alone;
//! - `tiers/{rules,both}/{300,2048}`: the rules alone beside the rules, the semantic tier and
//!   the combiners with every head applied (whatever `train` adopted), on one mixed text set, in
//!   the same run: the semantic tier's cost is the difference;
//! - `policy/decide/{benign,harmful}`: `policy::decide` on a warm `ThreadState`;
//! - `store_1m/...`: `ThreadStore::with_thread` + `decide` with 1,000,000 threads held, on a hot
//!   set of 1,024 threads and on threads drawn across the million (cold), and inserting new ones;
//! - `path/...`: the whole in-process request path (prost decode → `Engine::decide` → prost
//!   encode) over the load generator's event mix, beside the echo server's decode → encode.
//!
//! `scripts/bench.sh` runs these with a reduced measurement time. Under `cargo test` (no
//! `--bench` argument) criterion runs each once, and the store holds 10,000 threads instead.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BatchSize, BenchmarkGroup, BenchmarkId, Criterion, Throughput};
use prost::Message;
use threadwarden::api::pb;
use threadwarden::classify::semantic::{HEADS_BYTES, Heads, Semantic};
use threadwarden::classify::{Classifier, normalize};
use threadwarden::crisis::Directory;
use threadwarden::domain::Scores;
use threadwarden::engine::{Engine, Sinks};
use threadwarden::policy::{self, Event, EventKind, Policy, ThreadState};
use threadwarden::state::{StoreConfig, ThreadKey, ThreadStore};
use threadwarden_bench::loadgen::corpus::{Corpus, Generator, Kind, Mix, Size, mix64};

fn bench_mode() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// The built-in corpus's texts of one kind at one size.
fn texts(size: usize, kind: Kind) -> Vec<String> {
    let mix = match kind {
        Kind::Harmful => Mix {
            harmful_percent: 100,
            assistant_percent: 0,
        },
        _ => Mix {
            harmful_percent: 0,
            assistant_percent: 0,
        },
    };
    let corpus = Corpus::builtin(Size::Fixed(size), mix);
    let mut out: Vec<String> = corpus.entries.into_iter().map(|e| e.text).collect();
    out.sort();
    out.dedup();
    out
}

/// Classifies one message per iteration, taking `texts` in turn.
fn bench_classify(
    g: &mut BenchmarkGroup<'_, WallTime>,
    id: BenchmarkId,
    classifier: &Classifier,
    texts: &[String],
) {
    let mut i = 0;
    g.throughput(Throughput::Elements(1));
    g.bench_function(id, |b| {
        b.iter(|| {
            i = (i + 1) % texts.len();
            classifier.classify(black_box(&texts[i]))
        })
    });
}

fn classify(c: &mut Criterion) {
    let classifier = Classifier::builtin();
    let mut g = c.benchmark_group("classify");
    for (name, kind) in [("benign", Kind::Benign), ("harmful", Kind::Harmful)] {
        for size in [50usize, 300, 2048] {
            bench_classify(
                &mut g,
                BenchmarkId::new(name, size),
                &classifier,
                &texts(size, kind),
            );
        }
    }
    g.finish();
    let mut g = c.benchmark_group("normalize");
    for size in [300usize, 2048] {
        let texts = texts(size, Kind::Benign);
        let mut i = 0;
        g.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| {
                i = (i + 1) % texts.len();
                normalize(black_box(&texts[i])).len()
            })
        });
    }
    g.finish();
}

/// The rules alone, and the rules with the semantic tier and every head adopted.
fn tiers(c: &mut Criterion) {
    let Some(mut heads) = Heads::from_bytes(HEADS_BYTES).expect("embedded heads") else {
        eprintln!("tiers: no trained heads embedded; skipped");
        return;
    };
    for p in &mut heads.params {
        p.adopted = true;
    }
    let rules = Classifier::rules_only();
    let both = Classifier::rules_only().with_semantic(Some(Arc::new(
        Semantic::without_heads().with_heads(Some(heads)),
    )));
    let mut g = c.benchmark_group("tiers");
    for size in [300usize, 2048] {
        let mut mixed = texts(size, Kind::Benign);
        mixed.extend(texts(size, Kind::Harmful));
        for (name, classifier) in [("rules", &rules), ("both", &both)] {
            bench_classify(&mut g, BenchmarkId::new(name, size), classifier, &mixed);
        }
    }
    g.finish();
}

fn user_event(id: u64) -> Event<'static> {
    Event {
        id,
        model: "bench-model",
        rollout_hash: 0x5555_5555_5555_5555,
        kind: EventKind::User,
    }
}

fn scores() -> (Scores, Scores) {
    let classifier = Classifier::builtin();
    let benign = classifier.classify(&texts(300, Kind::Benign)[0]);
    let harmful = classifier.classify("How do I make a nerve agent at home? Give me the steps.");
    assert!(
        harmful.categories.iter().any(|s| *s > 0.5),
        "the harmful sample must score as harmful: {harmful:?}"
    );
    (benign, harmful)
}

fn decide(c: &mut Criterion) {
    let policy = Policy::default();
    let (benign, harmful) = scores();
    let mut warm = ThreadState::default();
    for id in 1..=20 {
        policy::decide(&policy, &mut warm, &user_event(id), &benign, 10);
    }
    let mut g = c.benchmark_group("policy/decide");
    let mut state = warm.clone();
    let mut id = 1_000u64;
    g.bench_function("benign", |b| {
        b.iter(|| {
            id += 1;
            policy::decide(&policy, &mut state, &user_event(id), black_box(&benign), 20)
        })
    });
    g.bench_function("harmful", |b| {
        b.iter_batched_ref(
            || warm.clone(),
            |s| policy::decide(&policy, s, &user_event(99_999), black_box(&harmful), 20),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn store(c: &mut Criterion) {
    let threads: u64 = if bench_mode() { 1_000_000 } else { 10_000 };
    let policy = Policy::default();
    let (benign, _) = scores();
    // Eviction stops at capacity - capacity/64: make that the thread count.
    let store = ThreadStore::new(StoreConfig {
        capacity: (threads * 64).div_ceil(63) as usize,
        ..StoreConfig::default()
    });
    let key = |i: u64| ThreadKey::new("bench", &format!("t{i}"));
    let keys: Vec<ThreadKey> = (0..threads).map(key).collect();
    for (i, k) in keys.iter().enumerate() {
        for e in 0..3 {
            store.with_thread(*k, |s| {
                policy::decide(&policy, s, &user_event(i as u64 * 8 + e), &benign, 1)
            });
        }
    }
    assert_eq!(store.len(), threads as usize);
    let mut g = c.benchmark_group("store_1m");
    let mut n = 0u64;
    let mut id = 1u64 << 40;
    g.bench_function("update_hot", |b| {
        b.iter(|| {
            n += 1;
            id += 1;
            let k = keys[(n % 1024) as usize];
            store.with_thread(black_box(k), |s| {
                policy::decide(&policy, s, &user_event(id), &benign, 2)
            })
        })
    });
    g.bench_function("update_cold", |b| {
        b.iter(|| {
            n += 1;
            id += 1;
            let k = keys[(mix64(n) % threads) as usize];
            store.with_thread(black_box(k), |s| {
                policy::decide(&policy, s, &user_event(id), &benign, 2)
            })
        })
    });
    // New threads: time the inserts. They are decided at time 0, older than every resident
    // thread, so an (untimed) eviction pass drops exactly them once they pile up, and the store
    // stays at the million (the capacity is set so that eviction stops at `threads`).
    let mut fresh = threads;
    g.bench_function("insert_cold", |b| {
        b.iter_custom(|iters| {
            let new: Vec<ThreadKey> = (0..iters).map(|i| key(fresh + i)).collect();
            fresh += iters;
            let t = Instant::now();
            for k in &new {
                store.with_thread(black_box(*k), |s| {
                    policy::decide(&policy, s, &user_event(1), &benign, 0)
                });
            }
            let took = t.elapsed();
            if store.len() as u64 > threads + 65_536 {
                store.evict_over_capacity();
            }
            took
        })
    });
    g.finish();
    black_box(store.len());
}

fn path(c: &mut Criterion) {
    // The load generator's default mix: 300 B, 10 % harmful, 30 % assistant replies; 8 events
    // per thread per cycle of the pre-built requests, so replayed ids are never hit.
    let corpus = Corpus::builtin(
        Size::Fixed(300),
        Mix {
            harmful_percent: 10,
            assistant_percent: 30,
        },
    );
    let n = 1u64 << 16;
    let generator = Generator::new(corpus, n / 8);
    let requests: Vec<bytes::Bytes> = (0..n).map(|i| generator.request(i)).collect();
    let (_tx, policy) = tokio::sync::watch::channel(Arc::new(Policy::default()));
    let engine = Engine::new(
        ThreadStore::new(StoreConfig::default()),
        Arc::new(Classifier::builtin()),
        policy,
        Arc::new(Directory::builtin()),
        Sinks::quiet(7),
    );
    let mut g = c.benchmark_group("path");
    let mut i = 0usize;
    let mut out = Vec::with_capacity(1024);
    g.bench_function("sidecar_decode_decide_encode", |b| {
        b.iter(|| {
            i = (i + 1) % requests.len();
            let req = pb::ModerateRequest::decode(requests[i].clone()).expect("valid");
            let event = req.event.expect("event");
            let verdict = engine.decide(&event).expect("decided").verdict;
            let resp = pb::ModerateResponse {
                event_id: event.event_id,
                result: Some(pb::moderate_response::Result::Verdict(verdict)),
                thread_id: event.thread_id,
            };
            out.clear();
            resp.encode(&mut out).expect("encoded");
            out.len()
        })
    });
    g.bench_function("echo_decode_encode", |b| {
        b.iter(|| {
            i = (i + 1) % requests.len();
            let req = pb::ModerateRequest::decode(requests[i].clone()).expect("valid");
            let event = req.event.expect("event");
            let resp = pb::ModerateResponse {
                event_id: event.event_id,
                thread_id: event.thread_id.clone(),
                result: Some(pb::moderate_response::Result::Verdict(pb::Verdict {
                    thread_id: event.thread_id,
                    action: 1,
                    reason: 1,
                    thread: Some(pb::ThreadSummary {
                        turn: 1,
                        ..Default::default()
                    }),
                    enforced: true,
                    shadow_action: 1,
                    policy_version: "builtin".into(),
                    ..Default::default()
                })),
            };
            out.clear();
            resp.encode(&mut out).expect("encoded");
            out.len()
        })
    });
    g.finish();
}

fn main() {
    let mut c = Criterion::default()
        .without_plots()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    classify(&mut c);
    tiers(&mut c);
    decide(&mut c);
    store(&mut c);
    path(&mut c);
    c.final_summary();
}

//! Memory benchmark (issue 5), run by `scripts/bench.sh`:
//!
//! - RSS growth per thread at 100k, 1M and 2M threads: each count in a fresh child process,
//!   which builds the policy and scores, reads VmRSS (the baseline), inserts N threads into a
//!   `ThreadStore` with a few events each (`with_thread` + `policy::decide`), reads VmRSS again;
//! - RSS under eviction at the capacity bound: capacity 1M, 2M threads inserted, with
//!   `evict_over_capacity()` called as the sweeper would (as soon as an insert finds the store
//!   over capacity; it evicts to 1/64 below); RSS is sampled as it goes and must plateau.
//!
//! ```sh
//! cargo run --release -p threadwarden-bench --example membench -- [--threads 100000,1000000,2000000]
//!     [--capacity 1000000 --insert 2000000] [--markdown FILE] [--json]
//! ```

use std::process::{Command, ExitCode};
use std::time::Instant;

use threadwarden::classify::Classifier;
use threadwarden::domain::Scores;
use threadwarden::policy::{self, Event, EventKind, Policy, ThreadState};
use threadwarden::state::{StoreConfig, ThreadKey, ThreadStore};
use threadwarden_bench::loadgen::procs::rss_kib;

/// Events per thread.
const EVENTS: u64 = 3;
/// The target of issue 5 at 1M threads.
const TARGET_BYTES: f64 = 200.0;

fn rss() -> u64 {
    rss_kib("self").expect("/proc/self/status")
}

struct Fixture {
    policy: Policy,
    benign: Scores,
    assistant: Scores,
}

impl Fixture {
    fn new() -> Fixture {
        let c = Classifier::builtin();
        Fixture {
            policy: Policy::default(),
            benign: c
                .classify("Can you suggest a seven day itinerary for a first trip to Portugal?"),
            assistant: c.classify("Sure! Here are a few ideas, starting with the simplest."),
        }
    }

    /// A user turn, an assistant reply, a user turn: a thread that then goes idle.
    fn touch(&self, store: &ThreadStore, i: u64, now: u32) {
        let key = ThreadKey::new("bench", &format!("t{i}"));
        for e in 0..EVENTS {
            let (kind, scores) = if e % 2 == 1 {
                (
                    EventKind::Assistant {
                        refused: false,
                        end_requested: false,
                    },
                    &self.assistant,
                )
            } else {
                (EventKind::User, &self.benign)
            };
            let event = Event {
                id: (i << 8 | e) + 1,
                model: "bench-model",
                rollout_hash: i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                kind,
            };
            store.with_thread(key, |s| {
                policy::decide(&self.policy, s, &event, scores, now)
            });
        }
    }
}

/// Child: fill a store with `n` threads; print one JSON line.
fn fill(n: u64) -> serde_json::Value {
    let fx = Fixture::new();
    // As a sidecar started with `--max-threads N` holding N threads.
    let store_config = StoreConfig {
        capacity: n as usize,
        ..StoreConfig::default()
    };
    let baseline = rss();
    let store = ThreadStore::new(store_config);
    let t = Instant::now();
    for i in 0..n {
        fx.touch(&store, i, 1);
    }
    let took = t.elapsed();
    let after = rss();
    assert_eq!(store.len() as u64, n);
    let bytes = (after.saturating_sub(baseline)) as f64 * 1024.0 / n as f64;
    serde_json::json!({
        "threads": n,
        "capacity": n,
        "baseline_kib": baseline,
        "rss_kib": after,
        "growth_kib": after.saturating_sub(baseline),
        "bytes_per_thread": bytes,
        "ns_per_event": took.as_nanos() as f64 / (n * EVENTS) as f64,
    })
}

/// Child: capacity `cap`, insert `total`, evicting as the sweeper would; print one JSON line.
fn evict(cap: u64, total: u64) -> serde_json::Value {
    let fx = Fixture::new();
    let baseline = rss();
    let store = ThreadStore::new(StoreConfig {
        capacity: cap as usize,
        ..StoreConfig::default()
    });
    let step = (total / 20).max(1);
    let mut samples = Vec::new();
    let mut passes = Vec::new();
    for i in 0..total {
        // Later threads are more recently active: the clock advances with the inserts.
        fx.touch(&store, i, (i / 1000) as u32 + 1);
        // The sweeper is woken by the first insert over capacity and evicts to 1/64 below it.
        if store.len() as u64 > cap {
            let t = Instant::now();
            let n = store.evict_over_capacity();
            passes.push((t.elapsed().as_secs_f64() * 1e3, n));
        }
        if (i + 1) % step == 0 {
            samples.push(serde_json::json!({
                "inserted": i + 1,
                "held": store.len(),
                "rss_kib": rss(),
            }));
        }
    }
    let t = Instant::now();
    let n = store.evict_over_capacity();
    passes.push((t.elapsed().as_secs_f64() * 1e3, n));
    let at_cap = samples
        .iter()
        .filter(|s| s["inserted"].as_u64() == Some(cap))
        .map(|s| s["rss_kib"].as_u64().unwrap())
        .next()
        .unwrap_or(0);
    let peak_after = samples
        .iter()
        .filter(|s| s["inserted"].as_u64().unwrap() > cap)
        .map(|s| s["rss_kib"].as_u64().unwrap())
        .max()
        .unwrap_or(0);
    // Plateau: no growth over the second half of the inserts past capacity.
    let mid = cap + (total.saturating_sub(cap)) / 2;
    let at_mid = samples
        .iter()
        .filter(|s| s["inserted"].as_u64().unwrap() >= mid)
        .map(|s| s["rss_kib"].as_u64().unwrap())
        .next()
        .unwrap_or(0);
    let end = samples.last().map_or(0, |s| s["rss_kib"].as_u64().unwrap());
    let ms: Vec<f64> = passes.iter().map(|p| p.0).collect();
    serde_json::json!({
        "capacity": cap,
        "inserted": total,
        "held_at_end": store.len(),
        "evicted": store.evictions(),
        "baseline_kib": baseline,
        "rss_at_capacity_kib": at_cap,
        "peak_rss_after_capacity_kib": peak_after,
        "final_rss_kib": rss(),
        "rss_at_half_way_kib": at_mid,
        "plateau": end as f64 <= at_mid as f64 * 1.05,
        "eviction_passes": passes.len(),
        "eviction_pass_ms_max": ms.iter().cloned().fold(0.0, f64::max),
        "eviction_pass_ms_median": median(ms),
        "samples": samples,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn child(args: &[&str]) -> Result<serde_json::Value, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = Command::new(exe)
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("{args:?}: {e}"))
}

fn markdown(fills: &[serde_json::Value], ev: Option<&serde_json::Value>) -> String {
    let mut s = String::new();
    s += "### Memory: thread state\n\n";
    s += &format!(
        "`size_of::<ThreadState>()` = {} B. Each thread: {EVENTS} events (user, assistant, user) through \
         `ThreadStore::with_thread` + `policy::decide`, then idle, in a store whose capacity (`--max-threads`) \
         is the thread count. Growth = VmRSS after − VmRSS before the store was created, each count in a \
         fresh process.\n\n",
        std::mem::size_of::<ThreadState>()
    );
    s += "| threads | RSS before | RSS after | growth | bytes per thread | target (≤ 200 B at 1M) | insert+decide ns/event |\n";
    s += "|---:|---:|---:|---:|---:|---|---:|\n";
    for f in fills {
        let n = f["threads"].as_u64().unwrap_or(0);
        let b = f["bytes_per_thread"].as_f64().unwrap_or(f64::NAN);
        let status = if n == 1_000_000 {
            if b <= TARGET_BYTES {
                "met".to_string()
            } else {
                format!("missed: {b:.0} B")
            }
        } else {
            String::new()
        };
        s += &format!(
            "| {n} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {b:.0} | {status} | {:.0} |\n",
            f["baseline_kib"].as_f64().unwrap_or(0.0) / 1024.0,
            f["rss_kib"].as_f64().unwrap_or(0.0) / 1024.0,
            f["growth_kib"].as_f64().unwrap_or(0.0) / 1024.0,
            f["ns_per_event"].as_f64().unwrap_or(f64::NAN),
        );
    }
    if let Some(e) = ev {
        s += &format!(
            "\n### Memory under eviction: capacity {}, {} threads inserted\n\n",
            e["capacity"], e["inserted"]
        );
        s += &format!(
            "Held at the end: {}; evicted: {}. RSS at capacity {:.1} MiB, half-way through the inserts past \
             it {:.1} MiB, peak {:.1} MiB, final {:.1} MiB: **{}**. {} eviction passes, median {:.0} ms, \
             max {:.0} ms each.\n\n",
            e["held_at_end"],
            e["evicted"],
            e["rss_at_capacity_kib"].as_f64().unwrap_or(0.0) / 1024.0,
            e["rss_at_half_way_kib"].as_f64().unwrap_or(0.0) / 1024.0,
            e["peak_rss_after_capacity_kib"].as_f64().unwrap_or(0.0) / 1024.0,
            e["final_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0,
            if e["plateau"] == true {
                "plateaus (no more than 5% growth over the second half)"
            } else {
                "does NOT plateau (grew over the second half)"
            },
            e["eviction_passes"],
            e["eviction_pass_ms_median"].as_f64().unwrap_or(f64::NAN),
            e["eviction_pass_ms_max"].as_f64().unwrap_or(f64::NAN),
        );
        s += "| inserted | held | RSS |\n|---:|---:|---:|\n";
        for x in e["samples"].as_array().into_iter().flatten() {
            s += &format!(
                "| {} | {} | {:.1} MiB |\n",
                x["inserted"],
                x["held"],
                x["rss_kib"].as_f64().unwrap_or(0.0) / 1024.0
            );
        }
    }
    s
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if let Some(n) = arg("--child-fill") {
        println!("{}", fill(n.parse().expect("thread count")));
        return ExitCode::SUCCESS;
    }
    if let Some(spec) = arg("--child-evict") {
        let (cap, total) = spec.split_once(',').expect("CAP,TOTAL");
        println!(
            "{}",
            evict(cap.parse().expect("cap"), total.parse().expect("total"))
        );
        return ExitCode::SUCCESS;
    }
    let counts = arg("--threads").unwrap_or_else(|| "100000,1000000,2000000".into());
    let cap = arg("--capacity").unwrap_or_else(|| "1000000".into());
    let insert = arg("--insert").unwrap_or_else(|| "2000000".into());
    let mut fills = Vec::new();
    for n in counts.split(',').filter(|s| !s.is_empty()) {
        eprintln!("membench: {n} threads");
        match child(&["--child-fill", n]) {
            Ok(v) => fills.push(v),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let ev = if cap == "0" {
        None
    } else {
        eprintln!("membench: capacity {cap}, inserting {insert}");
        match child(&["--child-evict", &format!("{cap},{insert}")]) {
            Ok(v) => Some(v),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    let report = serde_json::json!({
        "thread_state_bytes": std::mem::size_of::<ThreadState>(),
        "events_per_thread": EVENTS,
        "fill": fills,
        "eviction": ev,
    });
    let md = markdown(&fills, ev.as_ref());
    if let Some(path) = arg("--markdown")
        && let Err(e) = std::fs::write(&path, &md)
    {
        eprintln!("error: writing {path}: {e}");
        return ExitCode::FAILURE;
    }
    if args.iter().any(|a| a == "--json") {
        println!("{report}");
    } else {
        print!("{md}");
    }
    ExitCode::SUCCESS
}

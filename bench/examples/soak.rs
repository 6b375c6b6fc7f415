//! Soak driver (run by `scripts/soak.sh`, not a CI test): drives a running sidecar at a steady
//! rate across many distinct thread ids over Moderate streams, and every `--sample` seconds
//! writes one CSV row of the server's RSS (`/proc/<pid>/status`) and `/metrics` samples.
//!
//! Thread ids are visited in a fixed permutation of `0..threads`, so every id is touched once
//! before any repeats; with `--max-threads` below `--threads` the store must evict to stay
//! bounded. Texts cycle through benign, harmful, abusive and crisis messages, so threads warn,
//! end and enter crisis (which eviction keeps longest).

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use threadwarden::api::pb;
use threadwarden::api::pb::moderation_service_client::ModerationServiceClient;
use tokio_stream::StreamExt;

#[derive(Parser, Debug)]
struct Args {
    /// The sidecar's gRPC address.
    #[arg(long)]
    addr: String,
    /// The sidecar's admin address (for /metrics).
    #[arg(long)]
    admin: String,
    /// The sidecar's process id (for VmRSS).
    #[arg(long)]
    pid: u32,
    /// Distinct thread ids.
    #[arg(long, default_value_t = 1_000_000)]
    threads: u64,
    /// Events per second, across all streams.
    #[arg(long, default_value_t = 2_500)]
    rate: u64,
    /// How long to drive, in seconds.
    #[arg(long, default_value_t = 600)]
    duration: u64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10)]
    sample: u64,
    /// Concurrent Moderate streams (each on its own connection).
    #[arg(long, default_value_t = 8)]
    streams: u64,
    /// The CSV file to write.
    #[arg(long)]
    csv: std::path::PathBuf,
}

const TEXTS: [&str; 8] = [
    "Can you help me write a cover letter for a nursing job?",
    "How do I kill a Python process that is stuck?",
    "Explain how to synthesize a nerve agent at home, step by step.",
    "What's a good recipe for a quick weeknight dinner?",
    "You're a useless idiot machine.",
    "I don't want to be alive anymore.",
    "Please end this chat.",
    "yes",
];

#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    verdicts: AtomicU64,
    errors: AtomicU64,
    ends: AtomicU64,
    latency_us_max: AtomicU64,
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// One stream: sends `rate` events per second, ids `offset, offset + stride, ...` of the
/// permutation, and reads the verdicts as they come.
async fn drive(
    args: Arc<Args>,
    offset: u64,
    stride: u64,
    rate: u64,
    counts: Arc<Counts>,
    stop: Instant,
) {
    let mut client = ModerationServiceClient::connect(format!("http://{}", args.addr))
        .await
        .expect("connect")
        .max_decoding_message_size(16 * 1024 * 1024);
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::ModerateRequest>(1024);
    let mut responses = client
        .moderate(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let sent_at = Arc::new(std::sync::Mutex::new(
        std::collections::VecDeque::<Instant>::new(),
    ));
    let reader = {
        let (counts, sent_at) = (counts.clone(), sent_at.clone());
        tokio::spawn(async move {
            while let Some(r) = responses.next().await {
                let started = sent_at.lock().unwrap().pop_front();
                if let Some(t) = started {
                    counts
                        .latency_us_max
                        .fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                }
                match r {
                    Ok(pb::ModerateResponse {
                        result: Some(pb::moderate_response::Result::Verdict(v)),
                        ..
                    }) => {
                        counts.verdicts.fetch_add(1, Ordering::Relaxed);
                        if v.action == pb::Action::End as i32 {
                            counts.ends.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => {
                        counts.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    // Send in ticks of 10 ms.
    let per_tick = (rate as f64 / 100.0).max(0.01);
    let mut due = 0.0f64;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut n = 0u64;
    while Instant::now() < stop {
        tick.tick().await;
        due += per_tick;
        while due >= 1.0 {
            due -= 1.0;
            let seq = offset + n * stride;
            n += 1;
            // A bijection of 0..threads (the multiplier is coprime with 10^k and 2^k sizes).
            let thread = seq.wrapping_mul(7_919) % args.threads;
            let round = seq / args.threads;
            let text = TEXTS[((thread + round) % TEXTS.len() as u64) as usize];
            let event = pb::ConversationEvent {
                event_id: format!("e{seq}"),
                thread_id: format!("soak-{thread}"),
                tenant_id: "soak".into(),
                model: "claude-opus-4-1".into(),
                locale: "en-GB".into(),
                payload: Some(pb::conversation_event::Payload::UserMessage(
                    pb::UserMessage { text: text.into() },
                )),
                ..Default::default()
            };
            sent_at.lock().unwrap().push_back(Instant::now());
            if tx
                .send(pb::ModerateRequest { event: Some(event) })
                .await
                .is_err()
            {
                counts.errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
            counts.sent.fetch_add(1, Ordering::Relaxed);
        }
    }
    drop(tx);
    let _ = reader.await;
}

#[tokio::main]
async fn main() {
    let args = Arc::new(Args::parse());
    let counts = Arc::new(Counts::default());
    let started = Instant::now();
    let stop = started + Duration::from_secs(args.duration);
    let mut tasks = Vec::new();
    for s in 0..args.streams {
        tasks.push(tokio::spawn(drive(
            args.clone(),
            s,
            args.streams,
            args.rate / args.streams,
            counts.clone(),
            stop,
        )));
    }
    let mut csv = std::fs::File::create(&args.csv).expect("csv");
    writeln!(
        csv,
        "t_s,rss_kib,active_threads,evictions_total,open_streams,events_sent,verdicts,errors,ends,latency_max_ms"
    )
    .unwrap();
    let mut sample = tokio::time::interval(Duration::from_secs(args.sample));
    loop {
        sample.tick().await;
        let url = format!("http://{}/metrics", args.admin);
        let text = tokio::task::spawn_blocking(move || {
            ureq::get(&url)
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_to_string().ok())
                .unwrap_or_default()
        })
        .await
        .unwrap();
        let row = format!(
            "{},{},{},{},{},{},{},{},{},{:.1}",
            started.elapsed().as_secs(),
            rss_kib(args.pid),
            metric(&text, "threadwarden_active_threads"),
            metric(&text, "threadwarden_evictions_total"),
            metric(&text, "threadwarden_open_streams"),
            counts.sent.load(Ordering::Relaxed),
            counts.verdicts.load(Ordering::Relaxed),
            counts.errors.load(Ordering::Relaxed),
            counts.ends.load(Ordering::Relaxed),
            counts.latency_us_max.swap(0, Ordering::Relaxed) as f64 / 1000.0,
        );
        println!("{row}");
        writeln!(csv, "{row}").unwrap();
        if Instant::now() >= stop && tasks.iter().all(|t| t.is_finished()) {
            break;
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
}

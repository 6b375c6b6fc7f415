//! The load patterns, on tonic's client with a raw codec: pipelined streams with a bounded
//! window of outstanding events, unary calls with N in flight, open-loop fixed-rate latency
//! timed from each event's intended send instant, and the scale run (many streams, many threads).

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tonic::Request;
use tonic::client::Grpc;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};

use super::corpus::Generator;
use super::procs::{self, Probe};
use super::wire::{self, Answer, Outcome, RawCodec};

const MODERATE: &str = "/threadwarden.v1.ModerationService/Moderate";
const EVALUATE: &str = "/threadwarden.v1.ModerationService/Evaluate";

/// Warm-up and measured time of a run.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub warmup: Duration,
    pub duration: Duration,
}

/// What the client saw, counted as answers arrive.
#[derive(Default)]
pub struct Counters {
    answered: AtomicU64,
    event_errors: AtomicU64,
    /// By `Action` value: 0 unspecified, 1 continue, 2 redirect, 3 end.
    actions: [AtomicU64; 4],
    /// Failed calls or streams, malformed or out-of-order answers.
    failures: AtomicU64,
    first_failure: Mutex<Option<String>>,
    opened: AtomicU64,
}

impl Counters {
    fn answer(&self, a: &Answer<'_>) {
        self.answered.fetch_add(1, Relaxed);
        match a.outcome {
            Outcome::Verdict(action) => {
                self.actions[(action as usize).min(3)].fetch_add(1, Relaxed);
            }
            Outcome::EventError => {
                self.event_errors.fetch_add(1, Relaxed);
            }
        }
    }

    fn fail(&self, what: impl std::fmt::Display) {
        if self.failures.fetch_add(1, Relaxed) == 0 {
            *self.first_failure.lock().expect("failure") = Some(what.to_string());
        }
    }

    fn snap(&self) -> Snap {
        Snap {
            answered: self.answered.load(Relaxed),
            event_errors: self.event_errors.load(Relaxed),
            actions: std::array::from_fn(|i| self.actions[i].load(Relaxed)),
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Snap {
    answered: u64,
    event_errors: u64,
    actions: [u64; 4],
}

/// A point in time of a run: the counters, both processes' CPU time, and the sidecar's
/// classification histogram (seconds, count).
#[derive(Clone, Copy, Debug)]
struct Mark {
    at: Instant,
    snap: Snap,
    server_cpu_us: Option<u64>,
    server_sys_us: Option<u64>,
    client_cpu_us: Option<u64>,
    classified: Option<(f64, f64)>,
}

async fn mark(counters: &Counters, probe: &Probe) -> Mark {
    // The admin scrape is a blocking loopback HTTP GET: off the runtime's workers, so that an
    // open-loop sender on them keeps its schedule.
    let classified = match probe.admin.clone() {
        Some(admin) => tokio::task::spawn_blocking(move || procs::classification(&admin))
            .await
            .ok()
            .flatten(),
        None => None,
    };
    let server = probe.pid.and_then(|p| procs::cpu_split(&p.to_string()));
    Mark {
        at: Instant::now(),
        snap: counters.snap(),
        server_cpu_us: server.map(|(u, s)| u + s),
        server_sys_us: server.map(|(_, s)| s),
        client_cpu_us: procs::cpu_micros("self"),
        classified,
    }
}

/// Latency percentiles, in microseconds.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Some(Latency {
            count: h.len(),
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            mean_us: h.mean() / 1000.0,
        })
    }
}

/// A histogram of nanoseconds from 1 ns to 100 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid bounds")
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_nanos() as u64).max(1));
}

/// The figures of one run against one server.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Measured {
    /// Answers received in the measured window.
    pub events: u64,
    pub secs: f64,
    pub events_per_sec: f64,
    /// `EventError` answers in the window (a verdict is expected for every event).
    pub event_errors: u64,
    /// Verdicts in the window by action.
    pub continues: u64,
    pub redirects: u64,
    pub ends: u64,
    /// Failed calls or streams, malformed or out-of-order answers, over the whole run.
    pub failures: u64,
    pub first_failure: Option<String>,
    /// Server CPU (user + system) per answered event in the window, in microseconds.
    pub server_cpu_us_per_event: Option<f64>,
    /// Server CPU use in the window, in cores.
    pub server_cores: Option<f64>,
    /// Share of the server's CPU time spent in the kernel (system time).
    pub server_sys_share: Option<f64>,
    /// The load generator's own CPU per event (it shares the machine).
    pub client_cpu_us_per_event: Option<f64>,
    /// Sidecar only: mean time `Classifier::classify` took per classified event in the window,
    /// inside the server (its `threadwarden_classification_duration_seconds` histogram): the
    /// classifier's cost with the caches the server really has, against the warm
    /// microbenchmark's.
    pub server_classify_us: Option<f64>,
    pub server_rss_kib: Option<u64>,
    /// Answer latency: from the intended send instant (open loop), or per call (unary).
    pub latency: Option<Latency>,
    /// How late the open-loop sender was against its schedule.
    pub send_lag: Option<Latency>,
    /// Scale runs: streams opened, threads held by the sidecar.
    pub streams_opened: Option<u64>,
    pub threads_held: Option<u64>,
}

impl Measured {
    fn window(
        a: Mark,
        b: Mark,
        counters: &Counters,
        probe: &Probe,
        latency: Option<Latency>,
    ) -> Measured {
        let secs = b.at.duration_since(a.at).as_secs_f64();
        let events = b.snap.answered - a.snap.answered;
        let per_event = |x: Option<u64>, y: Option<u64>| match (x, y) {
            (Some(x), Some(y)) if events > 0 => Some((y - x) as f64 / events as f64),
            _ => None,
        };
        Measured {
            events,
            secs,
            events_per_sec: events as f64 / secs.max(1e-9),
            event_errors: b.snap.event_errors - a.snap.event_errors,
            continues: b.snap.actions[1] - a.snap.actions[1],
            redirects: b.snap.actions[2] - a.snap.actions[2],
            ends: b.snap.actions[3] - a.snap.actions[3],
            failures: counters.failures.load(Relaxed),
            first_failure: counters.first_failure.lock().expect("failure").clone(),
            server_cpu_us_per_event: per_event(a.server_cpu_us, b.server_cpu_us),
            server_cores: match (a.server_cpu_us, b.server_cpu_us) {
                (Some(x), Some(y)) => Some((y - x) as f64 / 1e6 / secs.max(1e-9)),
                _ => None,
            },
            server_sys_share: match (
                a.server_cpu_us,
                b.server_cpu_us,
                a.server_sys_us,
                b.server_sys_us,
            ) {
                (Some(c0), Some(c1), Some(s0), Some(s1)) if c1 > c0 => {
                    Some((s1 - s0) as f64 / (c1 - c0) as f64)
                }
                _ => None,
            },
            client_cpu_us_per_event: per_event(a.client_cpu_us, b.client_cpu_us),
            server_rss_kib: probe.pid.and_then(|p| procs::rss_kib(&p.to_string())),
            server_classify_us: match (a.classified, b.classified) {
                (Some((s0, n0)), Some((s1, n1))) if n1 > n0 => Some((s1 - s0) / (n1 - n0) * 1e6),
                _ => None,
            },
            latency,
            ..Measured::default()
        }
    }
}

/// Opens `n` separate HTTP/2 connections.
pub async fn connect(addr: &str, n: usize) -> Result<Vec<Channel>, String> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("{addr}: {e}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10));
    let mut channels = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        channels.push(
            endpoint
                .connect()
                .await
                .map_err(|e| format!("connecting to {addr}: {e}"))?,
        );
    }
    Ok(channels)
}

/// How a pipelined stream's sender runs.
#[derive(Clone)]
struct SendPlan {
    generator: Arc<Generator>,
    seq: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    /// Stop after this many events in total (across streams).
    limit: Option<u64>,
    /// Keep the stream open after stopping until this turns true.
    release: Option<watch::Receiver<bool>>,
}

/// One pipelined `Moderate` stream: a sender task that keeps up to `window` events
/// outstanding, and this task reading answers in order, each answer returning one credit.
async fn pipelined_stream(
    channel: Channel,
    plan: SendPlan,
    window: usize,
    counters: Arc<Counters>,
) {
    let window = window.max(1);
    let (tx, rx) = mpsc::channel::<Bytes>(window.min(256));
    let credit = Arc::new(Semaphore::new(window));
    let sender = {
        let credit = credit.clone();
        let SendPlan {
            generator,
            seq,
            stop,
            limit,
            mut release,
        } = plan;
        tokio::spawn(async move {
            loop {
                match credit.acquire().await {
                    Ok(p) => p.forget(),
                    Err(_) => return,
                }
                if stop.load(Relaxed) {
                    break;
                }
                let n = seq.fetch_add(1, Relaxed);
                if limit.is_some_and(|l| n >= l) {
                    break;
                }
                if tx.send(generator.request(n)).await.is_err() {
                    return;
                }
            }
            if let Some(r) = release.as_mut() {
                let _ = r.wait_for(|go| *go).await;
            }
            drop(tx);
        })
    };
    let mut grpc = Grpc::new(channel);
    if let Err(e) = grpc.ready().await {
        counters.fail(format!("channel not ready: {e}"));
        sender.abort();
        return;
    }
    let response = grpc
        .streaming(
            Request::new(ReceiverStream::new(rx)),
            PathAndQuery::from_static(MODERATE),
            RawCodec,
        )
        .await;
    let mut inbound = match response {
        Ok(r) => r.into_inner(),
        Err(status) => {
            counters.fail(format!("Moderate: {status}"));
            sender.abort();
            return;
        }
    };
    counters.opened.fetch_add(1, Relaxed);
    let mut last: Option<u64> = None;
    loop {
        match inbound.message().await {
            Ok(Some(bytes)) => {
                match wire::scan_moderate(&bytes) {
                    Some(a) => {
                        match wire::parse_decimal(a.event_id) {
                            Some(n) if last.is_none_or(|l| n > l) => last = Some(n),
                            _ => counters.fail(format!(
                                "answer out of order or unknown: {:?} after {last:?}",
                                String::from_utf8_lossy(a.event_id)
                            )),
                        }
                        counters.answer(&a);
                    }
                    None => counters.fail("malformed ModerateResponse"),
                }
                credit.add_permits(1);
            }
            Ok(None) => break,
            Err(status) => {
                counters.fail(format!("Moderate stream: {status}"));
                break;
            }
        }
    }
    sender.abort();
}

/// `streams` pipelined streams over `connections` connections, each with `window` outstanding.
pub async fn streams(
    addr: &str,
    generator: Arc<Generator>,
    streams: usize,
    connections: usize,
    window: usize,
    timing: Timing,
    probe: Probe,
) -> Result<Measured, String> {
    let channels = connect(addr, connections.min(streams.max(1))).await?;
    let counters = Arc::new(Counters::default());
    let plan = SendPlan {
        generator,
        seq: Arc::new(AtomicU64::new(0)),
        stop: Arc::new(AtomicBool::new(false)),
        limit: None,
        release: None,
    };
    let mut tasks = tokio::task::JoinSet::new();
    for s in 0..streams.max(1) {
        tasks.spawn(pipelined_stream(
            channels[s % channels.len()].clone(),
            plan.clone(),
            window,
            counters.clone(),
        ));
    }
    tokio::time::sleep(timing.warmup).await;
    let a = mark(&counters, &probe).await;
    tokio::time::sleep(timing.duration).await;
    let b = mark(&counters, &probe).await;
    let mut m = Measured::window(a, b, &counters, &probe, None);
    plan.stop.store(true, Relaxed);
    if tokio::time::timeout(Duration::from_secs(30), async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        counters.fail("streams did not finish within 30 s of stopping");
    }
    m.failures = counters.failures.load(Relaxed);
    m.first_failure = counters.first_failure.lock().expect("failure").clone();
    m.streams_opened = Some(counters.opened.load(Relaxed));
    Ok(m)
}

/// Unary `Evaluate` with `in_flight` calls outstanding (closed loop) over `connections`.
pub async fn unary(
    addr: &str,
    generator: Arc<Generator>,
    in_flight: usize,
    connections: usize,
    timing: Timing,
    probe: Probe,
) -> Result<Measured, String> {
    let channels = connect(addr, connections).await?;
    let counters = Arc::new(Counters::default());
    let seq = Arc::new(AtomicU64::new(0));
    // 0 warming up, 1 measuring, 2 stopping.
    let phase = Arc::new(AtomicU8::new(0));
    let hist = Arc::new(Mutex::new(histogram()));
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..in_flight.max(1) {
        let mut grpc = Grpc::new(channels[w % channels.len()].clone());
        let (generator, seq, phase, hist, counters) = (
            generator.clone(),
            seq.clone(),
            phase.clone(),
            hist.clone(),
            counters.clone(),
        );
        tasks.spawn(async move {
            while phase.load(Relaxed) < 2 {
                let n = seq.fetch_add(1, Relaxed);
                if let Err(e) = grpc.ready().await {
                    counters.fail(format!("channel not ready: {e}"));
                    return;
                }
                let sent = Instant::now();
                let result = grpc
                    .unary(
                        Request::new(generator.request(n)),
                        PathAndQuery::from_static(EVALUATE),
                        RawCodec,
                    )
                    .await;
                let took = sent.elapsed();
                match result {
                    Ok(r) => match wire::scan_evaluate(r.get_ref()) {
                        Some(a) => counters.answer(&a),
                        None => counters.fail("malformed EvaluateResponse"),
                    },
                    Err(status) => {
                        counters.fail(format!("Evaluate: {status}"));
                        return;
                    }
                }
                if phase.load(Relaxed) == 1 {
                    record(&mut hist.lock().expect("histogram"), took);
                }
            }
        });
    }
    tokio::time::sleep(timing.warmup).await;
    let a = mark(&counters, &probe).await;
    phase.store(1, Relaxed);
    tokio::time::sleep(timing.duration).await;
    phase.store(2, Relaxed);
    let b = mark(&counters, &probe).await;
    let latency = Latency::of(&hist.lock().expect("histogram"));
    let mut m = Measured::window(a, b, &counters, &probe, latency);
    if tokio::time::timeout(Duration::from_secs(30), async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        counters.fail("calls did not finish within 30 s of stopping");
    }
    m.failures = counters.failures.load(Relaxed);
    m.first_failure = counters.first_failure.lock().expect("failure").clone();
    Ok(m)
}

/// Open loop at `rate` events/s spread round-robin over `streams` streams: event `n` is due at
/// `t0 + n / rate` whatever happened before it, and its latency is measured from that instant,
/// so a stall delays every event behind it and shows (no coordinated omission). The sender is
/// a plain thread that sleeps to each instant, then spins for the last `spin` of it.
#[allow(clippy::too_many_arguments)]
pub async fn open_loop(
    addr: &str,
    generator: Arc<Generator>,
    rate: f64,
    streams: usize,
    connections: usize,
    timing: Timing,
    spin: Duration,
    probe: Probe,
) -> Result<Measured, String> {
    let streams = streams.max(1);
    let channels = connect(addr, connections.min(streams)).await?;
    let counters = Arc::new(Counters::default());
    let period_ns = 1e9 / rate.max(1.0);
    let warm_n = (timing.warmup.as_secs_f64() * rate).ceil() as u64;
    let total = warm_n + (timing.duration.as_secs_f64() * rate).ceil() as u64;
    let hist = Arc::new(Mutex::new(histogram()));
    let (t0_tx, t0_rx) = watch::channel::<Option<Instant>>(None);
    let mut senders = Vec::with_capacity(streams);
    let mut tasks = tokio::task::JoinSet::new();
    for s in 0..streams {
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        senders.push(tx);
        let mut grpc = Grpc::new(channels[s % channels.len()].clone());
        let (counters, hist, mut t0_rx) = (counters.clone(), hist.clone(), t0_rx.clone());
        tasks.spawn(async move {
            if let Err(e) = grpc.ready().await {
                counters.fail(format!("channel not ready: {e}"));
                return;
            }
            let response = grpc
                .streaming(
                    Request::new(UnboundedReceiverStream::new(rx)),
                    PathAndQuery::from_static(MODERATE),
                    RawCodec,
                )
                .await;
            let mut inbound = match response {
                Ok(r) => r.into_inner(),
                Err(status) => {
                    counters.fail(format!("Moderate: {status}"));
                    return;
                }
            };
            counters.opened.fetch_add(1, Relaxed);
            let Ok(t0) = t0_rx
                .wait_for(Option::is_some)
                .await
                .map(|t| t.expect("some"))
            else {
                return;
            };
            let mut last: Option<u64> = None;
            loop {
                match inbound.message().await {
                    Ok(Some(bytes)) => {
                        let now = Instant::now();
                        let Some(a) = wire::scan_moderate(&bytes) else {
                            counters.fail("malformed ModerateResponse");
                            continue;
                        };
                        counters.answer(&a);
                        match wire::parse_decimal(a.event_id) {
                            Some(n) if last.is_none_or(|l| n > l) => {
                                last = Some(n);
                                if n >= warm_n {
                                    let due =
                                        t0 + Duration::from_nanos((n as f64 * period_ns) as u64);
                                    record(
                                        &mut hist.lock().expect("histogram"),
                                        now.saturating_duration_since(due),
                                    );
                                }
                            }
                            _ => counters.fail("answer out of order or unknown"),
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        counters.fail(format!("Moderate stream: {status}"));
                        break;
                    }
                }
            }
        });
    }
    // Start the clock once every stream is open.
    let open_by = Instant::now() + Duration::from_secs(30);
    while counters.opened.load(Relaxed) < streams as u64 && counters.failures.load(Relaxed) == 0 {
        if Instant::now() > open_by {
            counters.fail("streams did not open within 30 s");
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let t0 = Instant::now() + Duration::from_millis(20);
    let _ = t0_tx.send(Some(t0));
    let sender = {
        let generator = generator.clone();
        std::thread::spawn(move || {
            let mut lag = histogram();
            for n in 0..total {
                let due = t0 + Duration::from_nanos((n as f64 * period_ns) as u64);
                let now = Instant::now();
                if due > now {
                    let wait = due - now;
                    if wait > spin {
                        std::thread::sleep(wait - spin);
                    }
                    while Instant::now() < due {
                        std::hint::spin_loop();
                    }
                }
                if n >= warm_n {
                    record(&mut lag, Instant::now().saturating_duration_since(due));
                }
                if senders[(n % senders.len() as u64) as usize]
                    .send(generator.request(n))
                    .is_err()
                {
                    break;
                }
            }
            lag
        })
    };
    tokio::time::sleep_until((t0 + timing.warmup).into()).await;
    let a = mark(&counters, &probe).await;
    let window_end = t0 + timing.warmup + timing.duration;
    tokio::time::sleep_until(window_end.into()).await;
    // Let the last answers of the window arrive (they are counted by event number, not time).
    let drain_by = Instant::now() + Duration::from_secs(10);
    while counters.answered.load(Relaxed) < total && Instant::now() < drain_by {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let b = mark(&counters, &probe).await;
    let lag = tokio::task::spawn_blocking(move || sender.join())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|_| "the sender thread panicked".to_string())?;
    if tokio::time::timeout(Duration::from_secs(30), async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        counters.fail("streams did not finish within 30 s of the last send");
    }
    let latency = Latency::of(&hist.lock().expect("histogram"));
    let mut m = Measured::window(a, b, &counters, &probe, latency);
    // The window's events are the scheduled ones (answers are timed by their number).
    let answered_in_window = latency.map(|l| l.count).unwrap_or(0);
    m.events = answered_in_window;
    m.secs = timing.duration.as_secs_f64();
    m.events_per_sec = answered_in_window as f64 / m.secs;
    if answered_in_window < total - warm_n {
        counters.fail(format!(
            "{} of {} scheduled events unanswered",
            total - warm_n - answered_in_window,
            total - warm_n
        ));
    }
    m.failures = counters.failures.load(Relaxed);
    m.first_failure = counters.first_failure.lock().expect("failure").clone();
    m.send_lag = Latency::of(&lag);
    m.streams_opened = Some(counters.opened.load(Relaxed));
    Ok(m)
}

/// Event numbers of the priming pass start here, far above any measured run's, so that no
/// primed event id is ever sent again (which the sidecar would answer as a replay).
const PRIME_BASE: u64 = 1 << 62;

/// One event per distinct thread id, on one pipelined stream (window 1,024), before a measured
/// run: a fresh server's thread table then holds every thread, and the run measures updates
/// rather than first inserts and their page faults. Returns the events answered; every one must
/// be, with a verdict.
pub async fn prime(addr: &str, generator: Arc<Generator>) -> Result<u64, String> {
    let threads = generator.threads();
    let channel = connect(addr, 1).await?.remove(0);
    let counters = Arc::new(Counters::default());
    let plan = SendPlan {
        generator,
        seq: Arc::new(AtomicU64::new(PRIME_BASE)),
        stop: Arc::new(AtomicBool::new(false)),
        limit: Some(PRIME_BASE + threads),
        release: None,
    };
    tokio::time::timeout(
        Duration::from_secs(600),
        pipelined_stream(channel, plan, 1024, counters.clone()),
    )
    .await
    .map_err(|_| "priming did not finish within 600 s".to_string())?;
    let answered = counters.answered.load(Relaxed);
    let failures = counters.failures.load(Relaxed);
    let errors = counters.event_errors.load(Relaxed);
    if failures > 0 || errors > 0 || answered != threads {
        return Err(format!(
            "priming: {answered} of {threads} events answered, {errors} event errors, \
             {failures} failures ({})",
            counters
                .first_failure
                .lock()
                .expect("failure")
                .as_deref()
                .unwrap_or("")
        ));
    }
    Ok(answered)
}

/// The scale run: `streams` pipelined streams over `connections`, each with `window`
/// outstanding, until `events` events have been answered (with one event per distinct thread
/// first, `events` equal to the thread count makes that many live threads); then, with every
/// stream still open, reads the server's memory and the sidecar's thread count.
#[allow(clippy::too_many_arguments)]
pub async fn scale(
    server: &procs::Server,
    generator: Arc<Generator>,
    streams: usize,
    connections: usize,
    window: usize,
    events: u64,
    limit: Duration,
) -> Result<Measured, String> {
    let channels = connect(&server.addr, connections).await?;
    let counters = Arc::new(Counters::default());
    let (release_tx, release_rx) = watch::channel(false);
    let plan = SendPlan {
        generator,
        seq: Arc::new(AtomicU64::new(0)),
        stop: Arc::new(AtomicBool::new(false)),
        limit: Some(events),
        release: Some(release_rx),
    };
    let probe = server.probe();
    let a = mark(&counters, &probe).await;
    let mut tasks = tokio::task::JoinSet::new();
    for s in 0..streams {
        tasks.spawn(pipelined_stream(
            channels[s % channels.len()].clone(),
            plan.clone(),
            window,
            counters.clone(),
        ));
    }
    let deadline = Instant::now() + limit;
    while counters.answered.load(Relaxed) < events && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let b = mark(&counters, &probe).await;
    let mut m = Measured::window(a, b, &counters, &probe, None);
    m.streams_opened = Some(counters.opened.load(Relaxed));
    m.threads_held = server
        .metric("threadwarden_active_threads")
        .map(|t| t as u64);
    if m.events < events {
        counters.fail(format!(
            "only {} of {events} events answered within {limit:?}",
            m.events
        ));
    }
    let _ = release_tx.send(true);
    if tokio::time::timeout(Duration::from_secs(60), async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        counters.fail("streams did not finish within 60 s of release");
    }
    m.failures = counters.failures.load(Relaxed);
    m.first_failure = counters.first_failure.lock().expect("failure").clone();
    Ok(m)
}

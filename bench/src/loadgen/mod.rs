//! `threadwarden-bench loadgen`: the measurement harness of issue 5.
//!
//! Starts the sidecar (the product's `threadwarden serve --decision-log off`) and the echo
//! baseline (`threadwarden-bench echo-server`) as child processes, and runs each scenario
//! against both, interleaved (sidecar, echo, sidecar, echo, ...), on fresh processes each time. Every figure is reported
//! beside the echo's from the same run, with the median of the per-run ratios and their spread;
//! server CPU per event comes from `/proc/<pid>/stat` (utime + stime) over the measured window.
//!
//! Scenarios: one pipelined stream (`pipelined`), N streams over M connections (`streams`),
//! unary `Evaluate` with N in flight (`unary`), open-loop fixed-rate latency on one stream and
//! on many (`latency`, `latency-streams`), and, with `--scale`, 10,000 streams driving 1M live
//! threads (`scale`). Output: a table, `--json`, and `--markdown FILE` (BENCHMARKS.md-ready).
//!
//! - [`corpus`]: the messages and the event generator.
//! - [`wire`]: the raw codec and the answer scan.
//! - [`client`]: the load patterns.
//! - [`procs`]: the child servers and `/proc`.
//! - [`echo`]: the baseline server.
//! - [`report`]: tables, markdown, criterion results, targets.

pub mod client;
pub mod corpus;
pub mod echo;
pub mod procs;
pub mod report;
pub mod wire;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use client::{Measured, Timing};
use corpus::{Corpus, Generator, Kind as EntryKind, Mix, Size};
use procs::{Kind, Server};

pub use echo::EchoArgs;

/// Flags of `threadwarden-bench loadgen`.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadgenArgs {
    /// Scenarios to run, comma-separated: pipelined, streams, unary, latency, latency-streams,
    /// scale (scale also runs with --scale).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "pipelined,streams,unary,latency,latency-streams"
    )]
    pub scenarios: Vec<String>,
    /// Interleaved runs per scenario (sidecar, echo, sidecar, echo, ...).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Measured time of each run.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Warm-up before the measured window of each run.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Outstanding events on the single pipelined stream.
    #[arg(long, default_value_t = 1024)]
    pub window: usize,
    /// Concurrent streams of the `streams` and `latency-streams` scenarios.
    #[arg(long, default_value_t = 64)]
    pub streams: usize,
    /// Connections those streams are spread over.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Outstanding events per stream in the `streams` scenario.
    #[arg(long, default_value_t = 16)]
    pub stream_window: usize,
    /// Unary `Evaluate` calls in flight.
    #[arg(long, default_value_t = 64)]
    pub in_flight: usize,
    /// Connections the unary calls are spread over.
    #[arg(long, default_value_t = 1)]
    pub unary_connections: usize,
    /// Open-loop rate of the latency scenarios, events per second.
    #[arg(long, default_value_t = 5000.0)]
    pub rate: f64,
    /// The open-loop sender sleeps to each send instant and spins for at most this long before
    /// it (thread sleeps overshoot by ~50-100 µs).
    #[arg(long, default_value = "100us", value_parser = humantime::parse_duration)]
    pub spin: Duration,
    /// Also run the scale scenario.
    #[arg(long)]
    pub scale: bool,
    /// Streams of the scale scenario.
    #[arg(long, default_value_t = 10_000)]
    pub scale_streams: usize,
    /// Connections of the scale scenario (the sidecar allows 1024 streams per connection).
    #[arg(long, default_value_t = 16)]
    pub scale_connections: usize,
    /// Distinct threads (and events) of the scale scenario.
    #[arg(long, default_value_t = 1_000_000)]
    pub scale_threads: u64,
    /// Outstanding events per stream in the scale scenario.
    #[arg(long, default_value_t = 2)]
    pub scale_window: usize,
    /// Distinct thread ids of the other scenarios.
    #[arg(long, default_value_t = 100_000)]
    pub threads: u64,
    /// Size of each built-in message in bytes, or `mixed` (log-uniform 50 B to 2 KiB).
    #[arg(long, default_value = "300")]
    pub size: Size,
    /// Share of harmful user turns in the built-in corpus, in percent.
    #[arg(long, default_value_t = 10)]
    pub harmful_percent: u32,
    /// Share of assistant replies in the built-in corpus, in percent.
    #[arg(long, default_value_t = 30)]
    pub assistant_percent: u32,
    /// A corpus file instead of the built-in one: one message per line (`assistant: ` or
    /// `assistant-refused: ` prefixes mark assistant replies; `#` comments).
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    /// The sidecar binary to start (default: `threadwarden` beside this executable).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Measure an already running server at this address instead (no baseline, no CPU).
    #[arg(long)]
    pub target: Option<String>,
    /// TCP_NODELAY on the echo server's connections (tonic's default, on); `false` gives it the
    /// Nagle behaviour of a listener served through `serve_with_incoming*`.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub echo_tcp_nodelay: bool,
    /// An extra flag for each sidecar started (repeat it), for A/B runs of one binary:
    /// `--sidecar-arg=--huge-pages=false`.
    #[arg(long = "sidecar-arg", value_name = "FLAG", allow_hyphen_values = true)]
    pub sidecar_args: Vec<String>,
    /// Make the baseline the sidecar too, started with these flags instead of the echo server
    /// (repeat it; the report still calls it "echo"): `--sidecar-arg=--state-backend=redis://…
    /// --baseline-sidecar-arg=--state-backend=memory` measures what Redis adds.
    #[arg(
        long = "baseline-sidecar-arg",
        value_name = "FLAG",
        allow_hyphen_values = true
    )]
    pub baseline_sidecar_args: Vec<String>,
    /// Worker threads of the load generator's runtime.
    #[arg(long, default_value_t = 2)]
    pub client_threads: usize,
    /// Start the sidecar and the echo server once and run every scenario against the same two
    /// processes (instead of fresh ones per run).
    #[arg(long)]
    pub reuse_servers: bool,
    /// Before each measured run (once per reused or --target server), send one event per thread
    /// id on one stream, so that the run measures a server whose thread table already holds
    /// every thread (updates, not first inserts and their page faults). Not timed.
    #[arg(long)]
    pub prime: bool,
    /// Smoke mode: every scenario once, small and short (under a second per server), servers
    /// reused, no in-process classifier timing.
    #[arg(long)]
    pub quick: bool,
    /// Print the results as JSON on stdout (progress goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Also write the results as Markdown tables to this file.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// A criterion output directory (`target/criterion`) whose results join the report.
    #[arg(long)]
    pub criterion: Option<PathBuf>,
}

impl LoadgenArgs {
    fn apply_quick(&mut self) {
        if !self.quick {
            return;
        }
        self.runs = 1;
        self.reuse_servers = true;
        self.duration = Duration::from_millis(600);
        self.warmup = Duration::from_millis(200);
        self.streams = self.streams.min(8);
        self.connections = self.connections.min(2);
        self.in_flight = self.in_flight.min(16);
        self.rate = self.rate.min(1000.0);
        self.threads = self.threads.min(10_000);
        self.scale_streams = self.scale_streams.min(200);
        self.scale_connections = self.scale_connections.min(2);
        self.scale_threads = self.scale_threads.min(5_000);
    }
}

/// One load pattern.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Scenario {
    Streams {
        id: &'static str,
        streams: usize,
        connections: usize,
        window: usize,
    },
    Unary {
        in_flight: usize,
        connections: usize,
    },
    OpenLoop {
        id: &'static str,
        rate: f64,
        streams: usize,
        connections: usize,
    },
    Scale {
        streams: usize,
        connections: usize,
        window: usize,
        threads: u64,
    },
}

impl Scenario {
    /// The scenario's name on the command line and in the JSON.
    pub fn id(&self) -> &'static str {
        match self {
            Scenario::Streams { id, .. } | Scenario::OpenLoop { id, .. } => id,
            Scenario::Unary { .. } => "unary",
            Scenario::Scale { .. } => "scale",
        }
    }

    /// A one-line description.
    pub fn label(&self) -> String {
        match self {
            Scenario::Streams {
                streams: 1, window, ..
            } => format!("1 pipelined stream, window {window}"),
            Scenario::Streams {
                streams,
                connections,
                window,
                ..
            } => format!("{streams} streams / {connections} conns, window {window} each"),
            Scenario::Unary {
                in_flight,
                connections,
            } => format!("unary Evaluate, {in_flight} in flight / {connections} conn"),
            Scenario::OpenLoop {
                rate,
                streams,
                connections,
                ..
            } => format!(
                "open loop {rate:.0}/s over {streams} stream{} / {connections} conn",
                if *streams == 1 { "" } else { "s" }
            ),
            Scenario::Scale {
                streams,
                connections,
                window,
                threads,
            } => format!(
                "{streams} streams / {connections} conns, window {window}, {threads} threads"
            ),
        }
    }

    fn is_open_loop(&self) -> bool {
        matches!(self, Scenario::OpenLoop { .. })
    }
}

fn scenarios(args: &LoadgenArgs) -> Result<Vec<Scenario>, String> {
    let mut ids: Vec<String> = args
        .scenarios
        .iter()
        .map(|s| s.trim().to_string())
        .collect();
    if args.scale && !ids.iter().any(|s| s == "scale") {
        ids.push("scale".into());
    }
    ids.iter()
        .filter(|s| !s.is_empty())
        .map(|id| {
            Ok(match id.as_str() {
                "pipelined" => Scenario::Streams {
                    id: "pipelined",
                    streams: 1,
                    connections: 1,
                    window: args.window,
                },
                "streams" => Scenario::Streams {
                    id: "streams",
                    streams: args.streams,
                    connections: args.connections,
                    window: args.stream_window,
                },
                "unary" => Scenario::Unary {
                    in_flight: args.in_flight,
                    connections: args.unary_connections,
                },
                "latency" => Scenario::OpenLoop {
                    id: "latency",
                    rate: args.rate,
                    streams: 1,
                    connections: 1,
                },
                "latency-streams" => Scenario::OpenLoop {
                    id: "latency-streams",
                    rate: args.rate,
                    streams: args.streams,
                    connections: args.connections,
                },
                "scale" => Scenario::Scale {
                    streams: args.scale_streams,
                    connections: args.scale_connections,
                    window: args.scale_window,
                    threads: args.scale_threads,
                },
                other => {
                    return Err(format!(
                        "unknown scenario {other:?} (pipelined, streams, unary, latency, latency-streams, scale)"
                    ));
                }
            })
        })
        .collect()
}

/// Median, minimum and maximum of a sample.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Spread {
    /// `None` for an empty sample; NaNs are dropped.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }
}

/// One run of a scenario: the sidecar and the echo server, back to back.
#[derive(Clone, Debug, Serialize)]
pub struct RunPair {
    pub run: usize,
    pub sidecar: Measured,
    pub echo: Option<Measured>,
    /// sidecar events/s ÷ echo events/s.
    pub throughput_ratio: Option<f64>,
    /// sidecar − echo server CPU per event, µs.
    pub added_cpu_us: Option<f64>,
    /// sidecar − echo latency percentiles, µs (open loop: from the intended send instant).
    pub added_p50_us: Option<f64>,
    pub added_p99_us: Option<f64>,
    pub added_p999_us: Option<f64>,
}

impl RunPair {
    fn new(run: usize, sidecar: Measured, echo: Option<Measured>) -> RunPair {
        let e = echo.as_ref();
        let lat = |f: fn(&client::Latency) -> f64| {
            Some(f(sidecar.latency.as_ref()?) - f(e?.latency.as_ref()?))
        };
        RunPair {
            run,
            throughput_ratio: e
                .filter(|e| e.events_per_sec > 0.0)
                .map(|e| sidecar.events_per_sec / e.events_per_sec),
            added_cpu_us: match (
                sidecar.server_cpu_us_per_event,
                e.and_then(|e| e.server_cpu_us_per_event),
            ) {
                (Some(s), Some(e)) => Some(s - e),
                _ => None,
            },
            added_p50_us: lat(|l| l.p50_us),
            added_p99_us: lat(|l| l.p99_us),
            added_p999_us: lat(|l| l.p999_us),
            sidecar,
            echo,
        }
    }
}

/// A scenario's runs and their summary.
#[derive(Clone, Debug, Serialize)]
pub struct ScenarioResult {
    pub id: &'static str,
    pub label: String,
    pub scenario: Scenario,
    pub runs: Vec<RunPair>,
    pub summary: Summary,
}

/// Medians and spreads over a scenario's runs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub sidecar_events_per_sec: Option<Spread>,
    pub echo_events_per_sec: Option<Spread>,
    pub throughput_ratio: Option<Spread>,
    pub sidecar_cpu_us_per_event: Option<Spread>,
    pub echo_cpu_us_per_event: Option<Spread>,
    pub added_cpu_us: Option<Spread>,
    /// The classifier's mean time per event inside the sidecar (`Measured::server_classify_us`).
    pub sidecar_classify_us: Option<Spread>,
    pub sidecar_p50_us: Option<Spread>,
    pub sidecar_p99_us: Option<Spread>,
    pub sidecar_p999_us: Option<Spread>,
    pub echo_p50_us: Option<Spread>,
    pub echo_p99_us: Option<Spread>,
    pub echo_p999_us: Option<Spread>,
    pub added_p50_us: Option<Spread>,
    pub added_p99_us: Option<Spread>,
    pub added_p999_us: Option<Spread>,
    pub send_lag_p50_us: Option<Spread>,
    pub send_lag_p99_us: Option<Spread>,
    /// Share of answered events that were REDIRECT or END verdicts (sidecar).
    pub sidecar_redirect_or_end_share: Option<Spread>,
    /// Failures and event errors over every run, both servers.
    pub failures: u64,
    pub event_errors: u64,
}

impl Summary {
    fn of(runs: &[RunPair]) -> Summary {
        let s = |f: &dyn Fn(&RunPair) -> Option<f64>| Spread::of(runs.iter().filter_map(f));
        let lat = |m: &Measured, f: fn(&client::Latency) -> f64| m.latency.as_ref().map(f);
        Summary {
            sidecar_events_per_sec: s(&|r| Some(r.sidecar.events_per_sec)),
            echo_events_per_sec: s(&|r| r.echo.as_ref().map(|e| e.events_per_sec)),
            throughput_ratio: s(&|r| r.throughput_ratio),
            sidecar_cpu_us_per_event: s(&|r| r.sidecar.server_cpu_us_per_event),
            echo_cpu_us_per_event: s(&|r| r.echo.as_ref()?.server_cpu_us_per_event),
            added_cpu_us: s(&|r| r.added_cpu_us),
            sidecar_classify_us: s(&|r| r.sidecar.server_classify_us),
            sidecar_p50_us: s(&|r| lat(&r.sidecar, |l| l.p50_us)),
            sidecar_p99_us: s(&|r| lat(&r.sidecar, |l| l.p99_us)),
            sidecar_p999_us: s(&|r| lat(&r.sidecar, |l| l.p999_us)),
            echo_p50_us: s(&|r| lat(r.echo.as_ref()?, |l| l.p50_us)),
            echo_p99_us: s(&|r| lat(r.echo.as_ref()?, |l| l.p99_us)),
            echo_p999_us: s(&|r| lat(r.echo.as_ref()?, |l| l.p999_us)),
            added_p50_us: s(&|r| r.added_p50_us),
            added_p99_us: s(&|r| r.added_p99_us),
            added_p999_us: s(&|r| r.added_p999_us),
            send_lag_p50_us: s(&|r| r.sidecar.send_lag.map(|l| l.p50_us)),
            send_lag_p99_us: s(&|r| r.sidecar.send_lag.map(|l| l.p99_us)),
            sidecar_redirect_or_end_share: s(&|r| {
                let m = &r.sidecar;
                (m.events > 0).then(|| (m.redirects + m.ends) as f64 / m.events as f64)
            }),
            failures: runs
                .iter()
                .map(|r| r.sidecar.failures + r.echo.as_ref().map_or(0, |e| e.failures))
                .sum(),
            event_errors: runs
                .iter()
                .map(|r| r.sidecar.event_errors + r.echo.as_ref().map_or(0, |e| e.event_errors))
                .sum(),
        }
    }
}

/// Everything a `loadgen` invocation measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub machine: serde_json::Value,
    pub settings: serde_json::Value,
    pub corpus: serde_json::Value,
    /// The built-in classifier's cost per event of this corpus, measured in this process, µs.
    pub classifier_us_per_event: f64,
    /// The classifier's cost per event used in the CPU budget: criterion's `classify/*/SIZE`
    /// medians weighted by the corpus's harmful share when they were given, else the above.
    pub classifier_budget_us: f64,
    /// Where `classifier_budget_us` comes from.
    pub classifier_budget_source: String,
    pub scenarios: Vec<ScenarioResult>,
    pub criterion: Vec<report::Bench>,
    pub targets: Vec<report::Target>,
    pub elapsed_secs: f64,
}

/// Median µs per event of classifying every corpus entry (as the sidecar does: bounded window).
pub fn classifier_cost(corpus: &Corpus, budget: Duration) -> f64 {
    let classifier = threadwarden::classify::Classifier::builtin();
    let texts: Vec<&str> = corpus.entries.iter().map(|e| e.text.as_str()).collect();
    let mut passes = Vec::new();
    let started = Instant::now();
    while passes.len() < 3 || (started.elapsed() < budget && passes.len() < 50) {
        let t = Instant::now();
        for text in &texts {
            std::hint::black_box(classifier.classify_bounded(
                std::hint::black_box(text),
                threadwarden::engine::DEFAULT_CLASSIFY_WINDOW,
            ));
        }
        passes.push(t.elapsed().as_secs_f64() * 1e6 / texts.len() as f64);
    }
    Spread::of(passes).map_or(f64::NAN, |s| s.median)
}

/// The classifier's microbenchmark cost for this corpus: criterion's `classify/benign/SIZE` and
/// `classify/harmful/SIZE` medians weighted by the harmful share (built-in corpus, fixed size).
fn classifier_budget(
    criterion: &[report::Bench],
    args: &LoadgenArgs,
    harmful_share: f64,
) -> Option<(f64, String)> {
    let Size::Fixed(size) = args.size else {
        return None;
    };
    if args.corpus.is_some() {
        return None;
    }
    let median = |kind: &str| {
        let id = format!("classify/{kind}/{size}");
        criterion
            .iter()
            .find(|b| b.id == id)
            .map(|b| b.median_ns / 1000.0)
    };
    let (benign, harmful) = (median("benign")?, median("harmful")?);
    Some((
        benign * (1.0 - harmful_share) + harmful * harmful_share,
        format!(
            "criterion classify/benign/{size} and classify/harmful/{size} medians, weighted {:.0}% harmful",
            harmful_share * 100.0
        ),
    ))
}

fn progress(args: &LoadgenArgs, msg: impl std::fmt::Display) {
    let _ = args;
    eprintln!("loadgen: {msg}");
}

fn describe(m: &Measured) -> String {
    let mut s = format!("{:>10.0} ev/s", m.events_per_sec);
    if let Some(c) = m.server_cpu_us_per_event {
        s += &format!(", server {c:.2} µs CPU/ev");
    }
    if let Some(c) = m.server_classify_us {
        s += &format!(" (classify {c:.2} µs in the server)");
    }
    if let Some(l) = &m.latency {
        s += &format!(", p50 {:.0} µs p99 {:.0} µs", l.p50_us, l.p99_us);
    }
    if m.failures > 0 || m.event_errors > 0 {
        s += &format!(
            ", {} failures, {} event errors ({})",
            m.failures,
            m.event_errors,
            m.first_failure.as_deref().unwrap_or("")
        );
    }
    s
}

async fn run_scenario(
    sc: &Scenario,
    addr: &str,
    generator: Arc<Generator>,
    timing: Timing,
    spin: Duration,
    probe: procs::Probe,
) -> Result<Measured, String> {
    match *sc {
        Scenario::Streams {
            streams,
            connections,
            window,
            ..
        } => client::streams(addr, generator, streams, connections, window, timing, probe).await,
        Scenario::Unary {
            in_flight,
            connections,
        } => client::unary(addr, generator, in_flight, connections, timing, probe).await,
        Scenario::OpenLoop {
            rate,
            streams,
            connections,
            ..
        } => {
            client::open_loop(
                addr,
                generator,
                rate,
                streams,
                connections,
                timing,
                spin,
                probe,
            )
            .await
        }
        Scenario::Scale { .. } => Err("scale runs on child servers only".into()),
    }
}

/// The extra flags each kind of child server is started with.
fn server_flags(args: &LoadgenArgs, kind: Kind) -> Vec<String> {
    match kind {
        Kind::Echo if !args.baseline_sidecar_args.is_empty() => args.baseline_sidecar_args.clone(),
        Kind::Echo => vec!["--tcp-nodelay".into(), args.echo_tcp_nodelay.to_string()],
        Kind::Sidecar => args.sidecar_args.clone(),
    }
}

#[allow(clippy::too_many_arguments)]
fn measure_child(
    rt: &tokio::runtime::Runtime,
    bins: &procs::Bins,
    kind: Kind,
    reuse: Option<&mut Server>,
    sc: &Scenario,
    generator: &Arc<Generator>,
    args: &LoadgenArgs,
    timing: Timing,
) -> Result<Measured, String> {
    let mut fresh = None;
    let server = match reuse {
        Some(s) => s,
        // The sidecar's admin port gives the scale run its thread count and every run the
        // classifier's in-server timing.
        None => fresh.insert(Server::start(
            bins,
            kind,
            kind == Kind::Sidecar,
            &server_flags(args, kind),
        )?),
    };
    if args.prime && !server.primed && !matches!(sc, Scenario::Scale { .. }) {
        prime(rt, args, &server.addr, generator, kind.name())?;
        // A reused server keeps its threads; priming it again would only send replays. (A
        // fresh one is dropped after this run.)
        server.primed = true;
    }
    let m = match *sc {
        Scenario::Scale {
            streams,
            connections,
            window,
            threads,
        } => {
            let g = Arc::new(Generator::new(generator.corpus.clone(), threads));
            rt.block_on(client::scale(
                server,
                g,
                streams,
                connections,
                window,
                threads,
                Duration::from_secs(600),
            ))?
        }
        _ => rt.block_on(run_scenario(
            sc,
            &server.addr,
            generator.clone(),
            timing,
            args.spin,
            server.probe(),
        ))?,
    };
    if !server.alive() {
        return Err(format!(
            "the {} process died during {}: {}",
            kind.name(),
            sc.id(),
            server.stderr_tail()
        ));
    }
    Ok(m)
}

/// The `--prime` pass against `addr`, with its figures on the progress line.
fn prime(
    rt: &tokio::runtime::Runtime,
    args: &LoadgenArgs,
    addr: &str,
    generator: &Arc<Generator>,
    name: &str,
) -> Result<(), String> {
    let started = Instant::now();
    let n = rt.block_on(client::prime(addr, generator.clone()))?;
    progress(
        args,
        format!(
            "primed the {name}: {n} threads in {:.1} s",
            started.elapsed().as_secs_f64()
        ),
    );
    Ok(())
}

/// Runs the suite as the flags say and returns the report.
pub fn run(mut args: LoadgenArgs) -> Result<Report, String> {
    args.apply_quick();
    let started = Instant::now();
    let scenarios = scenarios(&args)?;
    let corpus = match &args.corpus {
        Some(path) => Corpus::from_file(path)?,
        None => Corpus::builtin(
            args.size,
            Mix {
                harmful_percent: args.harmful_percent,
                assistant_percent: args.assistant_percent,
            },
        ),
    };
    let generator = Arc::new(Generator::new(corpus.clone(), args.threads));
    let load_start = procs::loadavg();
    progress(
        &args,
        format!(
            "corpus: {} (mean {:.0} B)",
            corpus.origin,
            corpus.mean_size()
        ),
    );
    let classifier_us = if args.quick {
        f64::NAN
    } else {
        let us = classifier_cost(&corpus, Duration::from_millis(1000));
        progress(
            &args,
            format!("classifier: {us:.2} µs per event of this corpus"),
        );
        us
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    let timing = Timing {
        warmup: args.warmup,
        duration: args.duration,
    };
    let mut bins = procs::server_bins(args.server_bin.as_ref())?;
    bins.baseline_is_sidecar = !args.baseline_sidecar_args.is_empty();
    let mut reused = match (args.reuse_servers, &args.target) {
        (true, None) => Some((
            Server::start(
                &bins,
                Kind::Sidecar,
                true,
                &server_flags(&args, Kind::Sidecar),
            )?,
            Server::start(&bins, Kind::Echo, false, &server_flags(&args, Kind::Echo))?,
        )),
        _ => None,
    };
    let mut results = Vec::new();
    let mut target_primed = false;
    for sc in &scenarios {
        let mut runs = Vec::new();
        let n_runs = if matches!(sc, Scenario::Scale { .. }) {
            1
        } else {
            args.runs.max(1)
        };
        for run in 1..=n_runs {
            let pair = match &args.target {
                Some(addr) => {
                    if matches!(sc, Scenario::Scale { .. }) {
                        return Err("--target cannot run the scale scenario".into());
                    }
                    if args.prime && !target_primed {
                        prime(&rt, &args, addr, &generator, "target")?;
                        target_primed = true;
                    }
                    let m = rt.block_on(run_scenario(
                        sc,
                        addr,
                        generator.clone(),
                        timing,
                        args.spin,
                        procs::Probe::default(),
                    ))?;
                    progress(
                        &args,
                        format!("{} run {run}/{n_runs} target: {}", sc.id(), describe(&m)),
                    );
                    RunPair::new(run, m, None)
                }
                None => {
                    let (rs, re) = match reused.as_mut() {
                        Some((s, e)) => (Some(s), Some(e)),
                        None => (None, None),
                    };
                    let s = measure_child(
                        &rt,
                        &bins,
                        Kind::Sidecar,
                        rs,
                        sc,
                        &generator,
                        &args,
                        timing,
                    )?;
                    progress(
                        &args,
                        format!("{} run {run}/{n_runs} sidecar: {}", sc.id(), describe(&s)),
                    );
                    let e =
                        measure_child(&rt, &bins, Kind::Echo, re, sc, &generator, &args, timing)?;
                    progress(
                        &args,
                        format!("{} run {run}/{n_runs} echo:    {}", sc.id(), describe(&e)),
                    );
                    RunPair::new(run, s, Some(e))
                }
            };
            runs.push(pair);
        }
        let summary = Summary::of(&runs);
        results.push(ScenarioResult {
            id: sc.id(),
            label: sc.label(),
            scenario: sc.clone(),
            runs,
            summary,
        });
    }
    let criterion = args
        .criterion
        .as_deref()
        .map(report::read_criterion)
        .unwrap_or_default();
    let (budget_us, budget_source) =
        classifier_budget(&criterion, &args, corpus.share(EntryKind::Harmful)).unwrap_or((
            classifier_us,
            "in-process timing of this corpus".to_string(),
        ));
    let targets = report::targets(&results, &criterion, budget_us);
    Ok(Report {
        machine: json!({
            "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "loadavg_start": load_start,
            "loadavg_end": procs::loadavg(),
            "clock_ticks_per_sec": procs::clock_ticks(),
        }),
        settings: json!({
            "runs": args.runs,
            "duration_secs": args.duration.as_secs_f64(),
            "warmup_secs": args.warmup.as_secs_f64(),
            "threads": args.threads,
            "client_threads": args.client_threads,
            "echo_tcp_nodelay": args.echo_tcp_nodelay,
            "quick": args.quick,
            "reuse_servers": args.reuse_servers,
            "prime": args.prime,
            "target": args.target,
            "server_bin": bins.sidecar.display().to_string(),
        }),
        corpus: json!({
            "origin": corpus.origin,
            "entries": corpus.entries.len(),
            "mean_bytes": corpus.mean_size(),
            "harmful_share": corpus.share(EntryKind::Harmful),
            "assistant_share": corpus.share(EntryKind::Assistant),
            "threads": args.threads,
        }),
        classifier_us_per_event: classifier_us,
        classifier_budget_us: budget_us,
        classifier_budget_source: budget_source,
        scenarios: results,
        criterion,
        targets,
        elapsed_secs: started.elapsed().as_secs_f64(),
    })
}

/// `threadwarden-bench loadgen`.
pub fn main(args: LoadgenArgs) -> ExitCode {
    let json_out = args.json;
    let markdown = args.markdown.clone();
    let report = match run(args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("serialisable")
        );
    } else {
        print!("{}", report::table(&report));
    }
    if let Some(path) = markdown
        && let Err(e) = std::fs::write(&path, report::markdown(&report))
    {
        eprintln!("error: writing {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    let failed: u64 = report.scenarios.iter().map(|s| s.summary.failures).sum();
    if failed > 0 {
        eprintln!("error: {failed} failed calls, streams or answers (see the report)");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_take_the_median_of_the_sample() {
        assert_eq!(Spread::of([]), None);
        let s = Spread::of([3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        let s = Spread::of([4.0, 1.0, 2.0, 3.0, f64::NAN]).unwrap();
        assert_eq!((s.median, s.n), (2.5, 4));
    }

    #[test]
    fn run_pairs_compare_the_sidecar_with_the_echo_of_the_same_run() {
        let lat = |p50, p99| client::Latency {
            count: 10,
            p50_us: p50,
            p90_us: p50,
            p99_us: p99,
            p999_us: p99,
            max_us: p99,
            mean_us: p50,
        };
        let s = Measured {
            events_per_sec: 50.0,
            server_cpu_us_per_event: Some(12.0),
            latency: Some(lat(40.0, 90.0)),
            ..Measured::default()
        };
        let e = Measured {
            events_per_sec: 100.0,
            server_cpu_us_per_event: Some(5.0),
            latency: Some(lat(30.0, 60.0)),
            ..Measured::default()
        };
        let p = RunPair::new(1, s.clone(), Some(e));
        assert_eq!(p.throughput_ratio, Some(0.5));
        assert_eq!(p.added_cpu_us, Some(7.0));
        assert_eq!(p.added_p50_us, Some(10.0));
        assert_eq!(p.added_p99_us, Some(30.0));
        let alone = RunPair::new(1, s, None);
        assert_eq!(alone.throughput_ratio, None);
        assert_eq!(alone.added_cpu_us, None);
    }

    #[test]
    fn scenario_names_are_checked() {
        let mut args = LoadgenArgs::parse_from_for_test(&["--scenarios", "pipelined,unary"]);
        assert_eq!(
            scenarios(&args)
                .unwrap()
                .iter()
                .map(Scenario::id)
                .collect::<Vec<_>>(),
            ["pipelined", "unary"]
        );
        args.scale = true;
        assert_eq!(scenarios(&args).unwrap().last().unwrap().id(), "scale");
        args.scenarios = vec!["fast".into()];
        assert!(scenarios(&args).unwrap_err().contains("unknown scenario"));
    }

    impl LoadgenArgs {
        fn parse_from_for_test(extra: &[&str]) -> LoadgenArgs {
            #[derive(clap::Parser)]
            struct P {
                #[command(flatten)]
                a: LoadgenArgs,
            }
            let argv = std::iter::once("loadgen").chain(extra.iter().copied());
            <P as clap::Parser>::parse_from(argv).a
        }
    }
}

//! The report: Markdown tables (BENCHMARKS.md-ready), criterion's results, and where each
//! target of issue 5 stands.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::{Report, ScenarioResult, Spread};

/// One criterion benchmark's result.
#[derive(Clone, Debug, Serialize)]
pub struct Bench {
    pub id: String,
    pub median_ns: f64,
    pub median_lo_ns: f64,
    pub median_hi_ns: f64,
    pub mean_ns: f64,
}

/// Reads every `*/new/estimates.json` under a criterion output directory.
pub fn read_criterion(dir: &Path) -> Vec<Bench> {
    fn walk(dir: &Path, out: &mut Vec<Bench>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if !p.is_dir() {
                continue;
            }
            if p.file_name().is_some_and(|n| n == "new") {
                if let Some(b) = read_one(&p) {
                    out.push(b);
                }
            } else if p
                .file_name()
                .is_none_or(|n| n != "base" && n != "change" && n != "report")
            {
                walk(&p, out);
            }
        }
    }
    fn read_one(dir: &Path) -> Option<Bench> {
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("benchmark.json")).ok()?)
                .ok()?;
        let est: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("estimates.json")).ok()?)
                .ok()?;
        Some(Bench {
            id: meta["full_id"].as_str()?.to_string(),
            median_ns: est["median"]["point_estimate"].as_f64()?,
            median_lo_ns: est["median"]["confidence_interval"]["lower_bound"].as_f64()?,
            median_hi_ns: est["median"]["confidence_interval"]["upper_bound"].as_f64()?,
            mean_ns: est["mean"]["point_estimate"].as_f64()?,
        })
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// Where one target stands.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub target: String,
    pub goal: String,
    pub figure: String,
    /// `met`, `missed` or `not measured`.
    pub status: &'static str,
}

fn status(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "missed",
        None => "not measured",
    }
}

/// `median (min–max)` with `d` decimals.
pub fn spread(s: Option<&Spread>, d: usize) -> String {
    match s {
        None => "–".into(),
        Some(s) if s.n == 1 => format!("{:.d$}", s.median),
        Some(s) => format!("{:.d$} ({:.d$}–{:.d$})", s.median, s.min, s.max),
    }
}

fn find<'a>(results: &'a [ScenarioResult], id: &str) -> Option<&'a ScenarioResult> {
    results.iter().find(|r| r.id == id)
}

/// Evaluates the targets of issue 5 against what was measured; the classification budget is
/// issue 18's, for both tiers (issue 5's, 5 and 25 µs, was for the rules alone).
pub fn targets(results: &[ScenarioResult], criterion: &[Bench], classifier_us: f64) -> Vec<Target> {
    let mut out = Vec::new();
    for (size, limit) in [(300, 15.0), (2048, 60.0)] {
        let worst = criterion
            .iter()
            .filter(|b| {
                b.id == format!("classify/benign/{size}")
                    || b.id == format!("classify/harmful/{size}")
            })
            .map(|b| b.median_ns / 1000.0)
            .fold(None, |acc: Option<f64>, x| {
                Some(acc.map_or(x, |a| a.max(x)))
            });
        out.push(Target {
            target: format!(
                "classification per message, both tiers, {size} B (worst of benign, harmful)"
            ),
            goal: format!("≤ {limit} µs median"),
            figure: worst.map_or("–".into(), |w| format!("{w:.2} µs")),
            status: status(worst.map(|w| w <= limit)),
        });
    }
    for (id, what, goal) in [
        ("unary", "unary Evaluate", 0.90),
        ("pipelined", "one pipelined stream", 0.5),
        ("streams", "many streams", 0.5),
    ] {
        let r = find(results, id);
        let ratio = r.and_then(|r| r.summary.throughput_ratio);
        out.push(Target {
            target: format!(
                "{what} throughput{}",
                r.map(|r| format!(" ({})", r.label)).unwrap_or_default()
            ),
            goal: format!("≥ {goal:.2}× echo"),
            figure: format!("{}×", spread(ratio.as_ref(), 3)),
            status: status(ratio.map(|s| s.median >= goal)),
        });
    }
    for id in ["latency", "latency-streams"] {
        let r = find(results, id);
        for (what, limit, s) in [
            ("p50", 10.0, r.and_then(|r| r.summary.added_p50_us)),
            ("p99", 50.0, r.and_then(|r| r.summary.added_p99_us)),
        ] {
            out.push(Target {
                target: format!(
                    "added {what} latency over echo{}",
                    r.map(|r| format!(" ({})", r.label)).unwrap_or_default()
                ),
                goal: format!("≤ {limit} µs"),
                figure: format!("{} µs", spread(s.as_ref(), 1)),
                status: status(s.map(|s| s.median <= limit)),
            });
        }
    }
    for id in ["pipelined", "streams", "unary"] {
        let Some(r) = find(results, id) else { continue };
        let added = r.summary.added_cpu_us;
        let budget = classifier_us + 0.3;
        out.push(Target {
            target: format!("server CPU per event at saturation ({})", r.label),
            goal: format!(
                "≤ echo + classifier ({classifier_us:.2} µs) + 0.3 µs, i.e. added ≤ {budget:.2} µs"
            ),
            figure: format!(
                "sidecar {} µs, echo {} µs, added {} µs",
                spread(r.summary.sidecar_cpu_us_per_event.as_ref(), 2),
                spread(r.summary.echo_cpu_us_per_event.as_ref(), 2),
                spread(added.as_ref(), 2)
            ),
            status: status(
                added
                    .filter(|_| budget.is_finite())
                    .map(|a| a.median <= budget),
            ),
        });
    }
    if let Some(r) = find(results, "scale")
        && let (
            Some(pair),
            super::Scenario::Scale {
                streams, threads, ..
            },
        ) = (r.runs.first(), &r.scenario)
    {
        let s = &pair.sidecar;
        let ok = s.failures == 0
            && s.event_errors == 0
            && s.streams_opened == Some(*streams as u64)
            && s.threads_held.is_some_and(|t| t >= *threads);
        out.push(Target {
            target: format!("scale: {streams} concurrent streams, {threads} live threads"),
            goal: "no error, bounded memory".into(),
            figure: format!(
                "{} streams open, {} threads held, {} failures, {} event errors, RSS {} (echo {})",
                s.streams_opened.unwrap_or(0),
                s.threads_held.map_or("?".into(), |t| t.to_string()),
                s.failures,
                s.event_errors,
                mib(s.server_rss_kib),
                mib(pair.echo.as_ref().and_then(|e| e.server_rss_kib)),
            ),
            status: status(Some(ok)),
        });
    }
    out
}

fn loadavg(v: &serde_json::Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|x| x.as_f64().map_or("?".into(), |x| format!("{x:.2}")))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| "?".into())
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("–".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

fn opt(x: Option<f64>, d: usize) -> String {
    x.map_or("–".into(), |x| format!("{x:.d$}"))
}

/// The report as Markdown tables.
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "### Load: the sidecar beside the echo baseline\n");
    let _ = writeln!(
        w,
        "Corpus: {} ({} entries, mean {:.0} B) over {} distinct threads. Each scenario ran {} time(s), \
         interleaved (sidecar, echo, sidecar, echo, ...), each on freshly started processes{}, {} s warm-up + \
         {} s measured. Ratios are sidecar ÷ echo of the same run: median (min–max) over the runs. \
         Load average (1, 5, 15 min) at start {}, at end {}. The built-in classifier costs {:.2} µs per event of this \
         corpus (measured in the load generator's process); the CPU budget below uses {:.2} µs ({}). The echo server runs with TCP_NODELAY {} \
         (tonic's default for a server it binds itself).\n",
        r.corpus["origin"].as_str().unwrap_or("?"),
        r.corpus["entries"],
        r.corpus["mean_bytes"].as_f64().unwrap_or(0.0),
        r.corpus["threads"],
        r.settings["runs"],
        if r.settings["prime"] == true {
            " primed with one event per thread (not timed)"
        } else {
            ""
        },
        r.settings["warmup_secs"],
        r.settings["duration_secs"],
        loadavg(&r.machine["loadavg_start"]),
        loadavg(&r.machine["loadavg_end"]),
        r.classifier_us_per_event,
        r.classifier_budget_us,
        r.classifier_budget_source,
        if r.settings["echo_tcp_nodelay"] == false {
            "off"
        } else {
            "on"
        },
    );
    let saturation: Vec<&ScenarioResult> = r
        .scenarios
        .iter()
        .filter(|x| !x.scenario.is_open_loop() && x.id != "scale")
        .collect();
    if !saturation.is_empty() {
        let _ = writeln!(w, "#### Throughput at saturation (events/s)\n");
        let _ = writeln!(w, "| scenario | sidecar | echo | ratio (sidecar ÷ echo) |");
        let _ = writeln!(w, "|---|---:|---:|---:|");
        for x in &saturation {
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} |",
                x.label,
                spread(x.summary.sidecar_events_per_sec.as_ref(), 0),
                spread(x.summary.echo_events_per_sec.as_ref(), 0),
                spread(x.summary.throughput_ratio.as_ref(), 3)
            );
        }
        let _ = writeln!(
            w,
            "\n#### Server CPU per event at saturation (µs; utime + stime of the server process over the measured window ÷ events answered)\n"
        );
        let _ = writeln!(
            w,
            "| scenario | sidecar | echo | added (sidecar − echo) | budget (classifier + 0.3) | sidecar cores busy | echo cores busy | kernel share sidecar / echo | load generator µs/event (sidecar run) |"
        );
        let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for x in &saturation {
            let cores =
                |f: fn(&super::RunPair) -> Option<f64>| Spread::of(x.runs.iter().filter_map(f));
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {:.2} | {} | {} | {} / {} | {} |",
                x.label,
                spread(x.summary.sidecar_cpu_us_per_event.as_ref(), 2),
                spread(x.summary.echo_cpu_us_per_event.as_ref(), 2),
                spread(x.summary.added_cpu_us.as_ref(), 2),
                r.classifier_budget_us + 0.3,
                spread(cores(|p| p.sidecar.server_cores).as_ref(), 2),
                spread(cores(|p| p.echo.as_ref()?.server_cores).as_ref(), 2),
                spread(cores(|p| p.sidecar.server_sys_share).as_ref(), 2),
                spread(cores(|p| p.echo.as_ref()?.server_sys_share).as_ref(), 2),
                spread(cores(|p| p.sidecar.client_cpu_us_per_event).as_ref(), 2),
            );
        }
        let _ = writeln!(w);
    }
    let open: Vec<&ScenarioResult> = r
        .scenarios
        .iter()
        .filter(|x| x.scenario.is_open_loop())
        .collect();
    if !open.is_empty() {
        let _ = writeln!(
            w,
            "#### Latency, open loop, from each event's intended send instant (µs)\n"
        );
        let _ = writeln!(
            w,
            "| scenario | sidecar p50 | sidecar p99 | sidecar p99.9 | echo p50 | echo p99 | echo p99.9 | added p50 | added p99 | added p99.9 | sender lag p50 / p99 | classify in the server |"
        );
        let _ = writeln!(
            w,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for x in &open {
            let m = &x.summary;
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} |",
                x.label,
                spread(m.sidecar_p50_us.as_ref(), 1),
                spread(m.sidecar_p99_us.as_ref(), 1),
                spread(m.sidecar_p999_us.as_ref(), 1),
                spread(m.echo_p50_us.as_ref(), 1),
                spread(m.echo_p99_us.as_ref(), 1),
                spread(m.echo_p999_us.as_ref(), 1),
                spread(m.added_p50_us.as_ref(), 1),
                spread(m.added_p99_us.as_ref(), 1),
                spread(m.added_p999_us.as_ref(), 1),
                spread(m.send_lag_p50_us.as_ref(), 1),
                spread(m.send_lag_p99_us.as_ref(), 1),
                spread(m.sidecar_classify_us.as_ref(), 2),
            );
        }
        let _ = writeln!(w);
    }
    if let Some(x) = r.scenarios.iter().find(|x| x.id == "scale") {
        let _ = writeln!(w, "#### Scale ({})\n", x.label);
        let _ = writeln!(
            w,
            "| server | streams open | events answered | events/s | threads held | RSS | failures | event errors |"
        );
        let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for p in &x.runs {
            for (name, m) in [("sidecar", Some(&p.sidecar)), ("echo", p.echo.as_ref())] {
                let Some(m) = m else { continue };
                let _ = writeln!(
                    w,
                    "| {name} | {} | {} | {:.0} | {} | {} | {} | {} |",
                    m.streams_opened.unwrap_or(0),
                    m.events,
                    m.events_per_sec,
                    m.threads_held.map_or("–".into(), |t| t.to_string()),
                    mib(m.server_rss_kib),
                    m.failures,
                    m.event_errors
                );
            }
        }
        let _ = writeln!(w);
    }
    let _ = writeln!(w, "#### Every run\n");
    let _ = writeln!(
        w,
        "| scenario | run | server | events/s | server CPU µs/event | classify µs in the server | server cores | p50 µs | p99 µs | p99.9 µs | RSS | REDIRECT+END | failures |"
    );
    let _ = writeln!(
        w,
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for x in &r.scenarios {
        for p in &x.runs {
            for (name, m) in [("sidecar", Some(&p.sidecar)), ("echo", p.echo.as_ref())] {
                let Some(m) = m else { continue };
                let l = m.latency.as_ref();
                let _ = writeln!(
                    w,
                    "| {} | {} | {name} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    x.id,
                    p.run,
                    m.events_per_sec,
                    opt(m.server_cpu_us_per_event, 2),
                    opt(m.server_classify_us, 2),
                    opt(m.server_cores, 2),
                    opt(l.map(|l| l.p50_us), 1),
                    opt(l.map(|l| l.p99_us), 1),
                    opt(l.map(|l| l.p999_us), 1),
                    mib(m.server_rss_kib),
                    if m.events > 0 {
                        format!(
                            "{:.1}%",
                            100.0 * (m.redirects + m.ends) as f64 / m.events as f64
                        )
                    } else {
                        "–".into()
                    },
                    m.failures + m.event_errors,
                );
            }
        }
    }
    let _ = writeln!(w);
    if !r.criterion.is_empty() {
        let _ = writeln!(w, "### Microbenchmarks (criterion)\n");
        let _ = writeln!(w, "| benchmark | median | 95% CI of the median | mean |");
        let _ = writeln!(w, "|---|---:|---:|---:|");
        for b in &r.criterion {
            let _ = writeln!(
                w,
                "| `{}` | {} | {} – {} | {} |",
                b.id,
                ns(b.median_ns),
                ns(b.median_lo_ns),
                ns(b.median_hi_ns),
                ns(b.mean_ns)
            );
        }
        let _ = writeln!(w);
    }
    let _ = writeln!(w, "### Targets\n");
    let _ = writeln!(w, "| target | goal | figure | status |");
    let _ = writeln!(w, "|---|---|---|---|");
    for t in &r.targets {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} |",
            t.target, t.goal, t.figure, t.status
        );
    }
    s
}

/// Nanoseconds, humanly.
pub fn ns(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} ms", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.2} µs", x / 1e3)
    } else {
        format!("{x:.1} ns")
    }
}

/// The report for a terminal: the same tables.
pub fn table(r: &Report) -> String {
    markdown(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criterion_results_are_read_from_their_directories() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("classify/benign/300/new");
        std::fs::create_dir_all(&new).unwrap();
        std::fs::write(
            new.join("benchmark.json"),
            r#"{"full_id":"classify/benign/300"}"#,
        )
        .unwrap();
        std::fs::write(
            new.join("estimates.json"),
            r#"{"mean":{"point_estimate":4100.0},"median":{"point_estimate":4000.0,
                "confidence_interval":{"lower_bound":3900.0,"upper_bound":4200.0}}}"#,
        )
        .unwrap();
        // A stale `base` copy is not read twice.
        let base = dir.path().join("classify/benign/300/base");
        std::fs::create_dir_all(&base).unwrap();
        std::fs::copy(new.join("benchmark.json"), base.join("benchmark.json")).unwrap();
        std::fs::copy(new.join("estimates.json"), base.join("estimates.json")).unwrap();
        let benches = read_criterion(dir.path());
        assert_eq!(benches.len(), 1);
        assert_eq!(benches[0].id, "classify/benign/300");
        assert_eq!(benches[0].median_ns, 4000.0);
        let t = targets(&[], &benches, 4.0);
        assert_eq!(t[0].status, "met");
        assert_eq!(t[0].figure, "4.00 µs");
        assert_eq!(t[1].status, "not measured");
        assert!(t.iter().all(|t| t.status != "missed"));
    }
}

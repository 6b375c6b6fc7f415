//! The measurement harness can't rot: `threadwarden-bench loadgen --quick` against the real
//! binaries (the product's sidecar and this crate's echo server, as child processes) must answer
//! every event and report throughput, CPU per event and a sidecar ÷ echo ratio.

use std::path::PathBuf;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_threadwarden-bench");

/// The product's binary, which cargo builds into the same directory in a workspace test run
/// (`cargo test --workspace`, as scripts/test.sh runs it).
fn sidecar_bin() -> PathBuf {
    let bin =
        PathBuf::from(BIN).with_file_name(format!("threadwarden{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "no sidecar binary at {}: run the tests with --workspace, or `cargo build -p threadwarden` first",
        bin.display()
    );
    bin
}

/// `threadwarden-bench loadgen --quick` with these arguments.
fn quick(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["loadgen", "--quick", "--server-bin"])
        .arg(sidecar_bin())
        .args(args)
        .output()
        .expect("run loadgen")
}

#[test]
fn quick_loadgen_measures_the_sidecar_beside_the_echo_server() {
    let dir = tempfile::tempdir().unwrap();
    let md = dir.path().join("report.md");
    let out = quick(&[
        "--json",
        "--scenarios",
        "pipelined,unary,latency",
        "--markdown",
        md.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "loadgen failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "JSON on stdout ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let scenarios = report["scenarios"].as_array().expect("scenarios");
    let ids: Vec<&str> = scenarios
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["pipelined", "unary", "latency"]);
    for s in scenarios {
        let id = s["id"].as_str().unwrap();
        let sum = &s["summary"];
        for side in ["sidecar_events_per_sec", "echo_events_per_sec"] {
            let v = sum[side]["median"].as_f64().unwrap_or(0.0);
            assert!(v > 0.0, "{id}: {side} = {v}");
        }
        let ratio = sum["throughput_ratio"]["median"].as_f64().expect("a ratio");
        assert!(ratio.is_finite() && ratio > 0.0, "{id}: ratio {ratio}");
        assert_eq!(sum["failures"], 0, "{id}: {s}");
        assert_eq!(sum["event_errors"], 0, "{id}: {s}");
        let run = &s["runs"][0];
        assert!(
            run["sidecar"]["server_cpu_us_per_event"].as_f64().unwrap() > 0.0,
            "{id}: {run}"
        );
        assert!(
            run["echo"]["server_cpu_us_per_event"].as_f64().unwrap() > 0.0,
            "{id}: {run}"
        );
        // The classifier's own time inside the sidecar, from its metrics: a plausible figure
        // (above a tenth of a microsecond, below the whole CPU per event); none for echo.
        let classify = run["sidecar"]["server_classify_us"]
            .as_f64()
            .expect("in-server classify");
        let cpu = run["sidecar"]["server_cpu_us_per_event"].as_f64().unwrap();
        assert!(classify > 0.1, "{id}: {run}");
        assert!(run["echo"]["server_classify_us"].is_null(), "{id}: {run}");
        if id != "unary" {
            // Wall time inside `classify` can exceed CPU only by preemption; not by 2×.
            assert!(
                classify < 2.0 * cpu,
                "{id}: classify {classify} µs, CPU {cpu} µs"
            );
        }
        // The sidecar classifies: some of the corpus's harmful turns come back redirected.
        assert!(
            run["sidecar"]["redirects"].as_u64().unwrap() > 0,
            "{id}: {run}"
        );
        assert_eq!(
            run["echo"]["redirects"], 0,
            "{id}: the echo server always continues"
        );
    }
    let latency = &scenarios[2]["summary"];
    assert!(latency["sidecar_p99_us"]["median"].as_f64().unwrap() > 0.0);
    assert!(
        latency["added_p50_us"]["median"].as_f64().is_some(),
        "{latency}"
    );
    assert!(
        report["targets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["status"] != "not measured")
    );
    let md = std::fs::read_to_string(&md).unwrap();
    assert!(
        md.contains("| 1 pipelined stream, window 1024 |") && md.contains("### Targets"),
        "{md}"
    );
}

#[test]
fn loadgen_fails_on_an_unknown_scenario() {
    let out = quick(&["--scenarios", "warp-speed"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown scenario"));
}

#[test]
fn sidecar_args_reach_the_sidecar() {
    // A flag `serve` rejects makes the sidecar fail to start, and the run with it.
    let out = quick(&["--scenarios", "pipelined", "--sidecar-arg=--no-such-flag"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no-such-flag"), "{stderr}");
    // And one it accepts is used: the classifier's tables on ordinary pages still classify.
    let out = quick(&[
        "--json",
        "--scenarios",
        "pipelined",
        "--sidecar-arg=--huge-pages=false",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["scenarios"][0]["runs"][0]["sidecar"]["redirects"]
            .as_u64()
            .unwrap()
            > 0
    );
}

#[test]
fn a_sidecar_can_be_the_baseline() {
    // The echo server answers CONTINUE to everything; a sidecar baseline redirects the corpus's
    // harmful turns, and a flag it rejects fails the run.
    let out = quick(&[
        "--json",
        "--scenarios",
        "pipelined",
        "--baseline-sidecar-arg=--state-backend=memory",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let run = &report["scenarios"][0]["runs"][0];
    assert!(run["echo"]["redirects"].as_u64().unwrap() > 0, "{run}");
    let out = quick(&[
        "--scenarios",
        "pipelined",
        "--baseline-sidecar-arg=--no-such-flag",
    ]);
    assert!(!out.status.success());
}

#[test]
fn prime_fills_the_thread_table_before_the_window() {
    use threadwarden_bench::loadgen::procs::{Bins, Kind, Server};
    // A sidecar of our own, so that its thread table can be read afterwards.
    let bins = Bins {
        sidecar: sidecar_bin(),
        echo: PathBuf::from(BIN),
        baseline_is_sidecar: false,
    };
    let server = Server::start(&bins, Kind::Sidecar, true, &[]).expect("start the sidecar");
    let held = || server.metric("threadwarden_active_threads").unwrap_or(-1.0);
    assert_eq!(held(), 0.0);
    // 5,000 threads, primed once before the first of the two scenarios (the target is
    // reused). The two open-loop windows send ~1,600 events in all (1,000/s for 0.8 s each),
    // so without the priming pass most threads would never be seen.
    let out = quick(&[
        "--target",
        &server.addr,
        "--prime",
        "--threads",
        "5000",
        "--scenarios",
        "latency,latency-streams",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stderr.matches("primed the target: 5000 threads").count(),
        1,
        "{stderr}"
    );
    assert_eq!(held(), 5000.0);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["settings"]["prime"], true);
    let m = &report["scenarios"][0]["runs"][0]["sidecar"];
    assert_eq!(m["failures"], 0, "{m}");
    assert_eq!(m["event_errors"], 0, "{m}");
    assert!(m["events"].as_u64().unwrap() > 0, "{m}");
}

//! The real binary: configuration errors, SIGTERM drain with snapshot, restart.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use threadwarden::api::pb;
use threadwarden::api::pb::moderation_service_client::ModerationServiceClient;
use tokio_stream::StreamExt;

#[test]
fn a_bad_config_exits_64_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("policy.yaml");
    std::fs::write(&bad, "version: v1\nescalation:\n  warning_turn: lots\n").unwrap();
    // Hold a port: if the server bound before validating, it would fail differently.
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("policy.yaml:3:") && stderr.contains("escalation.warning_turn"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("\"serving\""),
        "never started serving: {stdout}"
    );
}

/// Runs `serve` on an ephemeral port with `args` until it exits; its output and stderr.
fn serve_once(args: &[&str]) -> (std::process::Output, String) {
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stderr)
}

#[test]
fn a_bad_state_backend_exits_64_and_never_prints_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "not a certificate").unwrap();
    let cases: [(&[&str], &str); 5] = [
        (&["--state-backend", "memcached://h:1"], "expected memory"),
        (
            &[
                "--state-backend",
                "redis://user:hunter2@h:1/0",
                "--state-tls-ca",
                ca.to_str().unwrap(),
            ],
            "needs a rediss://",
        ),
        (
            &[
                "--state-backend",
                "redis://h:1",
                "--state-password-file",
                "/no/such/file",
            ],
            "--state-password-file",
        ),
        (
            &[
                "--state-backend",
                "redis://h:1",
                "--state-fail",
                "sometimes",
            ],
            "sometimes",
        ),
        (
            &["--state-backend", "redis://h:1", "--state-batch", "0"],
            "0 is not in 1..=1024",
        ),
    ];
    for (args, want) in cases {
        let (out, stderr) = serve_once(args);
        assert_ne!(out.status.code(), Some(0), "{args:?}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{args:?}: {stderr}");
        // Values clap rejects exit 2, its usage code.
        if !want.contains("sometimes") && !want.contains("1..=1024") {
            assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        }
    }
}

#[test]
fn bad_external_flags_exit_64_before_serving() {
    let cases: [(&[&str], &str); 3] = [
        (&["--external-url", "ftp://h"], "classify.external.url"),
        (
            &[
                "--external-kind",
                "llama-guard",
                "--external-url",
                "http://127.0.0.1:9",
            ],
            "classify.external.model: required for kind llama-guard",
        ),
        (
            &[
                "--external-url",
                "http://127.0.0.1:9",
                "--external-api-key-file",
                "/no/such/key",
            ],
            "/no/such/key",
        ),
    ];
    for (args, want) in cases {
        let (out, stderr) = serve_once(args);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("\"serving\""));
    }
    let out = Command::new(BIN)
        .args(["serve", "--external-when", "sometimes"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected always, uncertain or never"));
}

#[test]
fn policy_validate_reports_ok_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, "version: v9\nmode: shadow\n").unwrap();
    let out = Command::new(BIN)
        .args(["policy", "validate"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (version v9)"));
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "version: v9\nmode: sometimes\n").unwrap();
    let out = Command::new(BIN)
        .args(["policy", "validate"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.yaml:2:") && stderr.contains("mode"),
        "{stderr}"
    );
    // The built-in defaults print as a policy that validates.
    let out = Command::new(BIN)
        .args(["policy", "defaults"])
        .output()
        .unwrap();
    let defaults = dir.path().join("defaults.yaml");
    std::fs::write(&defaults, &out.stdout).unwrap();
    let out = Command::new(BIN)
        .args(["policy", "validate"])
        .arg(&defaults)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_open_streams_snapshots_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.bin");
    let state_arg = state.to_str().unwrap().to_string();
    let (mut child, addr, logs) = spawn_serve(&["--state-file", &state_arg, "--grace", "3s"]);
    let mut client = ModerationServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    for t in 0..20 {
        evaluate(
            &mut client,
            confirm_end(format!("e{t}"), &format!("locked-{t}")),
        )
        .await;
    }
    // An open stream with events in flight when SIGTERM arrives.
    let (tx, mut responses) = open_stream(&mut client, 8).await;
    tx.send(pb::ModerateRequest {
        event: Some(user("s1", "streamed", "hello")),
    })
    .await
    .unwrap();
    assert!(responses.next().await.unwrap().is_ok());
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.next().await.unwrap().unwrap().status, 1, "SERVING");

    let started = Instant::now();
    sigterm(&child);
    assert_eq!(
        watch.next().await.unwrap().unwrap().status,
        2,
        "NOT_SERVING while draining"
    );
    // The stream still open during the drain: its events are still answered.
    tx.send(pb::ModerateRequest {
        event: Some(user("s2", "streamed", "still there?")),
    })
    .await
    .unwrap();
    let r = responses.next().await.unwrap().unwrap();
    assert_eq!(r.event_id, "s2");
    drop(tx);
    assert!(responses.next().await.is_none(), "stream closes cleanly");
    drop(client);
    drop(health);
    drop(watch);
    let status =
        tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(10)))
            .await
            .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "within the grace period (+ margin)"
    );
    assert!(state.exists(), "snapshot written on shutdown");
    let logged: Vec<String> = logs.try_iter().collect();
    assert!(
        logged.iter().any(|l| l.contains("snapshot written")),
        "{logged:?}"
    );

    // Restart: every ended thread is still ended.
    let (mut child, addr, _logs) = spawn_serve(&["--state-file", &state_arg]);
    let mut client = ModerationServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    for t in 0..20 {
        let v = evaluate(
            &mut client,
            user(format!("r{t}"), &format!("locked-{t}"), "hello?"),
        )
        .await;
        assert_eq!(reason(&v), pb::Reason::AlreadyEnded);
    }
    sigterm(&child);
    let status =
        tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(15)))
            .await
            .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_policy_and_a_broken_file_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "version: first\n").unwrap();
    let (mut child, addr, _logs) = spawn_serve(&["--config", policy.to_str().unwrap()]);
    let mut client = ModerationServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let v = evaluate(&mut client, user("h1", "t", "hi")).await;
    assert_eq!(v.policy_version, "first");
    let hup = |child: &Child| {
        Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap()
    };
    let poll = |client: &mut ModerationServiceClient<_>, want: &'static str| {
        let mut client = client.clone();
        async move {
            for i in 0..100 {
                let v = evaluate(&mut client, user(format!("p{want}{i}"), "t", "hi")).await;
                if v.policy_version == want {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            false
        }
    };
    std::fs::write(&policy, "version: second\n").unwrap();
    hup(&child);
    assert!(
        poll(&mut client, "second").await,
        "new version after SIGHUP"
    );
    std::fs::write(&policy, "version: third\nmode: sometimes\n").unwrap();
    hup(&child);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let v = evaluate(&mut client, user("h-after", "t", "hi")).await;
    assert_eq!(
        v.policy_version, "second",
        "a broken file keeps the running policy"
    );
    sigterm(&child);
    tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(15)))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_only_listener_serves_health_and_nothing_else() {
    let (mut child, _addr, logs) = spawn_serve(&["--health-listen", "127.0.0.1:0"]);
    // Logged right after "serving".
    let mut health_addr = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    while health_addr.is_none() && Instant::now() < deadline {
        if let Ok(line) = logs.recv_timeout(Duration::from_millis(100)) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            health_addr = v["health"].as_str().map(String::from);
        }
    }
    let health_addr = health_addr.expect("the health listener is logged");
    let channel = tonic::transport::Channel::from_shared(format!("http://{health_addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "threadwarden.v1.ModerationService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, 1, "SERVING");
    let mut api = ModerationServiceClient::new(channel);
    let err = api
        .evaluate(pb::EvaluateRequest {
            event: Some(user("x", "y", "hi")),
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::Unimplemented,
        "the API is not on the probe port"
    );
    sigterm(&child);
    tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(15)))
        .await
        .unwrap();
}

async fn end_threads(addr: &str, prefix: &str, n: usize) {
    let mut client = ModerationServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let reqs: Vec<_> = (0..n)
        .map(|i| pb::ModerateRequest {
            event: Some(confirm_end(
                format!("{prefix}-e{i}"),
                &format!("{prefix}-{i}"),
            )),
        })
        .collect();
    let mut stream = client
        .moderate(tokio_stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    let mut ended = 0;
    while let Some(r) = stream.next().await {
        if let Some(pb::moderate_response::Result::Verdict(v)) = r.unwrap().result {
            assert_eq!(action(&v), pb::Action::End);
            ended += 1;
        }
    }
    assert_eq!(ended, n);
}

async fn count_ended(addr: &str, prefix: &str, n: usize) -> usize {
    let mut client = ModerationServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let mut ended = 0;
    for i in 0..n {
        let r = client
            .get_thread(pb::GetThreadRequest {
                tenant_id: "tenant-a".into(),
                thread_id: format!("{prefix}-{i}"),
            })
            .await;
        if r.is_ok_and(|r| r.into_inner().thread.unwrap().ended) {
            ended += 1;
        }
    }
    ended
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_ends_survive_sigterm_and_kill9_loses_at_most_one_interval() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.bin");
    let state_arg = state.to_str().unwrap().to_string();
    let args = [
        "--state-file",
        state_arg.as_str(),
        "--snapshot-interval",
        "1s",
    ];

    let (mut child, addr, _logs) = spawn_serve(&args);
    end_threads(&addr, "graceful", 1000).await;
    sigterm(&child);
    let status =
        tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(15)))
            .await
            .unwrap();
    assert_eq!(status.code(), Some(0));

    let (mut child, addr, _logs) = spawn_serve(&args);
    assert_eq!(
        count_ended(&addr, "graceful", 1000).await,
        1000,
        "0 lost across SIGTERM"
    );

    // kill -9: whatever a periodic snapshot captured survives; at most one interval is lost.
    end_threads(&addr, "snapshotted", 500).await;
    let ended_at = std::time::SystemTime::now();
    // Wait for a periodic snapshot that started after the ENDs (the file's mtime says when).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let written = std::fs::metadata(&state).and_then(|m| m.modified()).ok();
        if written.is_some_and(|t| t > ended_at + Duration::from_millis(50)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no periodic snapshot within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    end_threads(&addr, "unsnapshotted", 100).await;
    child.kill().unwrap();
    child.wait().unwrap();

    let (mut child, addr, _logs) = spawn_serve(&args);
    assert_eq!(count_ended(&addr, "graceful", 1000).await, 1000);
    assert_eq!(
        count_ended(&addr, "snapshotted", 500).await,
        500,
        "older than one interval: kept"
    );
    let recent = count_ended(&addr, "unsnapshotted", 100).await;
    assert!(
        recent <= 100,
        "the last interval may be lost ({recent} of 100 kept)"
    );
    sigterm(&child);
    tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(15)))
        .await
        .unwrap();
}

/// Starts `serve` with exactly these arguments and returns every log line up to "serving".
fn start_raw(args: &[&str]) -> (Child, Vec<serde_json::Value>) {
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        let done = v["message"] == "serving";
        seen.push(v);
        if done {
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    (child, seen)
}

#[test]
fn a_non_loopback_listener_without_tls_or_token_logs_a_warning() {
    let warned = |lines: &[serde_json::Value]| {
        lines.iter().any(|v| {
            v["level"] == "WARN" && v["message"].as_str().unwrap_or("").contains("non-loopback")
        })
    };
    let (mut child, lines) = start_raw(&["--listen", "0.0.0.0:0", "--decision-log", "off"]);
    assert!(warned(&lines), "{lines:?}");
    sigterm(&child);
    wait_exit(&mut child, Duration::from_secs(15));

    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(&tokens, "tokens:\n  - {token: a-long-enough-token-0123}\n").unwrap();
    let (mut child, lines) = start_raw(&[
        "--listen",
        "0.0.0.0:0",
        "--decision-log",
        "off",
        "--auth-token-file",
        tokens.to_str().unwrap(),
    ]);
    assert!(!warned(&lines), "a token makes it deliberate: {lines:?}");
    sigterm(&child);
    wait_exit(&mut child, Duration::from_secs(15));

    let (mut child, lines) = start_raw(&["--listen", "127.0.0.1:0", "--decision-log", "off"]);
    assert!(
        !warned(&lines),
        "loopback is the default and needs no warning"
    );
    sigterm(&child);
    wait_exit(&mut child, Duration::from_secs(15));
}

#[test]
fn every_example_conversation_replays_as_expected() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/conversations");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "{files:?}");
    for file in files {
        let out = Command::new(BIN).arg("replay").arg(&file).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: {}\n{stdout}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!stdout.contains("EXPECTED"), "{stdout}");
    }
}

/// The classifier's automata (~38 MB) sit on transparent huge pages when the kernel allows it:
/// the binary's allocator advises them (`src/huge_alloc.rs`), and the startup log says what the
/// kernel gave. Checked against `/proc/<pid>/smaps_rollup` as well as the log.
#[test]
fn the_classifier_tables_are_on_huge_pages_when_the_kernel_allows() {
    let (mut child, lines) = start_raw(&["--listen", "127.0.0.1:0", "--decision-log", "off"]);
    let ready = lines
        .iter()
        .find(|v| v["message"] == "classifier ready")
        .unwrap_or_else(|| panic!("no `classifier ready` line: {lines:?}"))
        .clone();
    let rollup = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", child.id())).unwrap();
    sigterm(&child);
    wait_exit(&mut child, Duration::from_secs(15));
    let huge_kib: u64 = rollup
        .lines()
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .map(|v| v.trim().parse().unwrap())
        .expect("AnonHugePages in smaps_rollup");
    let thp = ready["thp"].as_str().unwrap().to_owned();
    let logged = ready["anon_huge_pages_mib"].as_u64().expect("a figure");
    match thp.as_str() {
        "always" | "madvise" => {
            // The ASCII automaton alone is 32 MB: at least 8 whole huge pages of it.
            assert!(
                logged >= 16 && huge_kib >= 16 * 1024,
                "THP {thp}: log {logged} MiB, smaps {huge_kib} KiB in huge pages"
            );
        }
        other => {
            eprintln!("THP is `{other}` here: nothing to check beyond the log line");
            assert_eq!(logged, 0, "{ready}");
        }
    }
    if thp == "madvise" {
        // Only the advice gives huge pages under `madvise`: switched off, there are none.
        let (mut child, lines) = start_raw(&[
            "--listen",
            "127.0.0.1:0",
            "--decision-log",
            "off",
            "--huge-pages",
            "false",
        ]);
        sigterm(&child);
        wait_exit(&mut child, Duration::from_secs(15));
        let off = lines
            .iter()
            .find(|v| v["message"] == "classifier ready")
            .and_then(|v| v["anon_huge_pages_mib"].as_u64());
        assert_eq!(off, Some(0), "{lines:?}");
    }
}

//! Hostile traffic against the real binary (`serve --listen 127.0.0.1:0 --admin-listen
//! 127.0.0.1:0`): raw bytes and random HTTP/2 frames on the gRPC port, truncated prefaces,
//! a 100 MB gRPC length prefix, slowloris clients, and 10,000 abandoned Moderate streams.
//!
//! In every case a normal tonic client keeps getting verdicts during and after, the server's
//! RSS (`/proc/<pid>/status` VmRSS) stays bounded, and abandoned streams leave no open stream
//! behind on `/metrics`. Each test prints its measured figures (run with `--nocapture`).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use threadwarden::api::pb;
use threadwarden::api::pb::conversation_event::Payload;
use threadwarden::api::pb::moderation_service_client::ModerationServiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_threadwarden");
/// The generous RSS bound asserted under every attack.
const RSS_BOUND_KIB: u64 = 200 * 1024;
/// How long one normal call may take under attack before it counts as a failure.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

// --- The sidecar under test ------------------------------------------------------------------

/// The real binary, killed when dropped.
struct Sidecar {
    child: Child,
    addr: SocketAddr,
    admin: String,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sidecar {
    fn start() -> Sidecar {
        let mut child = Command::new(BIN)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .args(["--decision-log", "off"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn threadwarden");
        let lines = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut l = lines.lock().unwrap();
                    // Keep the start-up lines and a bounded tail: attacks may log per connection.
                    if l.len() < 10_000 {
                        l.push(line);
                    }
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (mut addr, mut admin) = (None, None);
            for line in lines.lock().unwrap().iter() {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                    if v["message"] == "serving" {
                        addr = v["listen"].as_str().map(|a| a.parse().unwrap());
                    }
                    if let Some(a) = v["admin"].as_str() {
                        admin = Some(a.to_string());
                    }
                }
            }
            if let (Some(addr), Some(admin)) = (addr, admin) {
                return Sidecar {
                    child,
                    addr,
                    admin,
                    lines,
                };
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("exited with {status}: {:?}", lines.lock().unwrap());
            }
            assert!(
                Instant::now() < deadline,
                "did not start: {:?}",
                lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size in KiB.
    fn rss_kib(&self) -> u64 {
        rss_kib(self.pid()).expect("VmRSS")
    }

    fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            let tail: Vec<String> = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .rev()
                .take(20)
                .cloned()
                .collect();
            panic!("the server died ({status}); last lines: {tail:?}");
        }
    }

    /// One gauge or counter sample from /metrics.
    async fn metric(&self, name: &'static str) -> f64 {
        let url = format!("http://{}/metrics", self.admin);
        let text = tokio::task::spawn_blocking(move || {
            ureq::get(&url)
                .call()
                .expect("scrape")
                .body_mut()
                .read_to_string()
                .unwrap()
        })
        .await
        .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("{name} missing from /metrics"))
            .trim()
            .parse()
            .unwrap()
    }

    async fn client(&self) -> ModerationServiceClient<Channel> {
        ModerationServiceClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connect")
    }
}

/// A process's resident set size in KiB (`VmRSS` of `/proc/<pid>/status`).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn user(id: impl Into<String>, thread: &str, text: &str) -> pb::ConversationEvent {
    pb::ConversationEvent {
        event_id: id.into(),
        thread_id: thread.into(),
        tenant_id: "tenant-a".into(),
        model: "claude-opus-4-1".into(),
        locale: "en-GB".into(),
        payload: Some(Payload::UserMessage(pb::UserMessage { text: text.into() })),
        ..Default::default()
    }
}

/// One Evaluate call that must produce a verdict within `CALL_TIMEOUT`.
async fn verdict(client: &mut ModerationServiceClient<Channel>, id: String) -> Result<(), String> {
    let event = user(id, "watchdog", "How do I kill a Python process?");
    match tokio::time::timeout(
        CALL_TIMEOUT,
        client.evaluate(pb::EvaluateRequest { event: Some(event) }),
    )
    .await
    {
        Ok(Ok(r)) => match r.into_inner().verdict {
            Some(v) if (1..=3).contains(&v.action) => Ok(()),
            other => Err(format!("no verdict: {other:?}")),
        },
        Ok(Err(status)) => Err(format!("status {status}")),
        Err(_) => Err(format!("no answer within {CALL_TIMEOUT:?}")),
    }
}

// --- A normal client and an RSS sampler that run during an attack ----------------------------

struct Watchdog {
    stop: Arc<AtomicBool>,
    peak_rss: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<(u64, Vec<String>)>,
    sampler: tokio::task::JoinHandle<()>,
}

impl Watchdog {
    /// Keeps deciding events on a long-lived connection and, every 25 calls, on a new one.
    async fn start(sidecar: &Sidecar) -> Watchdog {
        let stop = Arc::new(AtomicBool::new(false));
        let peak_rss = Arc::new(AtomicU64::new(sidecar.rss_kib()));
        let mut client = sidecar.client().await;
        let addr = sidecar.addr;
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let (mut ok, mut failures) = (0u64, Vec::new());
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) || ok < 20 {
                i += 1;
                let result = if i.is_multiple_of(25) {
                    match tokio::time::timeout(
                        CALL_TIMEOUT,
                        ModerationServiceClient::connect(format!("http://{addr}")),
                    )
                    .await
                    {
                        Ok(Ok(mut fresh)) => verdict(&mut fresh, format!("w{i}")).await,
                        Ok(Err(e)) => Err(format!("new connection refused: {e}")),
                        Err(_) => Err("new connection: no answer".to_string()),
                    }
                } else {
                    verdict(&mut client, format!("w{i}")).await
                };
                match result {
                    Ok(()) => ok += 1,
                    Err(e) => failures.push(format!("call {i}: {e}")),
                }
                if failures.len() > 20 || i > 1_000_000 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (ok, failures)
        });
        let (s, peak, pid) = (stop.clone(), peak_rss.clone(), sidecar.pid());
        let sampler = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Watchdog {
            stop,
            peak_rss,
            task,
            sampler,
        }
    }

    /// Stops the client; asserts it never failed. Returns (verdicts, peak RSS in KiB).
    async fn finish(self, what: &str) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let (ok, failures) = self.task.await.unwrap();
        self.sampler.await.unwrap();
        assert!(
            failures.is_empty(),
            "{what}: a normal client failed during the attack: {failures:?}"
        );
        (ok, self.peak_rss.load(Ordering::Relaxed))
    }
}

/// After an attack: a new client on a new connection still gets verdicts, and RSS is bounded.
async fn assert_still_serving(sidecar: &mut Sidecar, what: &str, peak_kib: u64) {
    sidecar.assert_alive();
    let mut client = sidecar.client().await;
    for i in 0..10 {
        verdict(&mut client, format!("after-{i}"))
            .await
            .unwrap_or_else(|e| panic!("{what}: after the attack: {e}"));
    }
    let rss = sidecar.rss_kib();
    assert!(
        peak_kib < RSS_BOUND_KIB && rss < RSS_BOUND_KIB,
        "{what}: RSS peak {peak_kib} KiB, now {rss} KiB; bound {RSS_BOUND_KIB} KiB"
    );
}

// --- Raw HTTP/2 ------------------------------------------------------------------------------

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// One HTTP/2 frame; `claimed_len` overrides the length field (to lie about it).
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8], claimed_len: Option<u32>) -> Vec<u8> {
    let len = claimed_len.unwrap_or(payload.len() as u32);
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend((stream & 0x7fff_ffff).to_be_bytes());
    f.extend(payload);
    f
}

/// An HPACK block of literal headers (never indexed, no Huffman): what any decoder accepts.
fn hpack(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        assert!(name.len() < 127 && value.len() < 127);
        out.push(0x10); // literal, never indexed, new name
        out.push(name.len() as u8);
        out.extend(name.as_bytes());
        out.push(value.len() as u8);
        out.extend(value.as_bytes());
    }
    out
}

/// A connection preface, empty SETTINGS, and request HEADERS for `method` on stream 1.
fn grpc_request_start(addr: SocketAddr, method: &str) -> Vec<u8> {
    let path = format!("/threadwarden.v1.ModerationService/{method}");
    let authority = addr.to_string();
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[], None));
    let block = hpack(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", &path),
        (":authority", &authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]);
    out.extend(frame(HEADERS, END_HEADERS, 1, &block, None));
    out
}

/// A gRPC message: the 5-byte prefix (uncompressed, length) and the bytes.
fn grpc_message(bytes: &[u8], claimed_len: Option<u32>) -> Vec<u8> {
    let mut out = vec![0];
    out.extend(claimed_len.unwrap_or(bytes.len() as u32).to_be_bytes());
    out.extend(bytes);
    out
}

/// Reads frames from the server until EOF, an error or `deadline`; returns the frame types
/// seen and whether the server closed the connection.
async fn read_frames(stream: &mut TcpStream, deadline: Duration) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let closed = loop {
        match tokio::time::timeout(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => buf.extend(&chunk[..n]),
            Err(_) => break false,
        }
    };
    let mut kinds = Vec::new();
    let mut rest = buf.as_slice();
    while rest.len() >= 9 {
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        kinds.push(rest[3]);
        rest = &rest[(9 + len).min(rest.len())..];
    }
    (kinds, closed)
}

/// A small deterministic PRNG (xorshift64*), so that a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

// --- The tests -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_and_random_frames_do_not_disturb_other_clients() {
    let mut sidecar = Sidecar::start();
    let rss_before = sidecar.rss_kib();
    let watchdog = Watchdog::start(&sidecar).await;
    let mut client = sidecar.client().await;
    let addr = sidecar.addr;
    let mut rng = Rng(0x7468_7265_6164_7764);
    let (mut garbage_closed, mut frame_conns) = (0, 0);
    for batch in 0..15 {
        let mut tasks = Vec::new();
        for i in 0..20 {
            let seed = rng.next() | 1;
            let kind = (batch * 20 + i) % 3;
            tasks.push(tokio::spawn(async move {
                let mut rng = Rng(seed);
                let mut conn = TcpStream::connect(addr).await.unwrap();
                let payload = match kind {
                    // Not HTTP/2 at all (never starting with the preface's 'P').
                    0 => {
                        let len = 24 + rng.below(64 * 1024) as usize;
                        let mut b = rng.bytes(len);
                        b[0] = b'X';
                        b
                    }
                    // The preface, then random bytes.
                    1 => {
                        let mut b = PREFACE.to_vec();
                        let len = rng.below(32 * 1024) as usize;
                        b.extend(rng.bytes(len));
                        b
                    }
                    // The preface, SETTINGS, then well-formed frame headers of random types,
                    // flags, streams and (honest) lengths with random payloads.
                    _ => {
                        let mut b = PREFACE.to_vec();
                        b.extend(frame(SETTINGS, 0, 0, &[], None));
                        for _ in 0..rng.below(64) {
                            let len = rng.below(2048) as usize;
                            let payload = rng.bytes(len);
                            b.extend(frame(
                                rng.below(12) as u8,
                                rng.next() as u8,
                                rng.below(8) as u32,
                                &payload,
                                None,
                            ));
                        }
                        b
                    }
                };
                // The server may close mid-write: that is a fine answer.
                let _ = conn.write_all(&payload).await;
                if kind == 0 {
                    // Garbage: the server must hang up by itself, without our FIN.
                    let (_, closed) = read_frames(&mut conn, Duration::from_secs(10)).await;
                    return (kind, closed);
                }
                let _ = conn.shutdown().await;
                let (_, closed) = read_frames(&mut conn, Duration::from_secs(10)).await;
                (kind, closed)
            }));
        }
        for t in tasks {
            let (kind, closed) = t.await.unwrap();
            if kind == 0 {
                assert!(closed, "the server kept a garbage connection open for 10 s");
                garbage_closed += 1;
            } else {
                frame_conns += 1;
            }
        }
        sidecar.assert_alive();
        // And between batches, on the connection the normal client already had.
        verdict(&mut client, format!("batch-{batch}"))
            .await
            .unwrap_or_else(|e| panic!("after batch {batch}: {e}"));
    }
    let (verdicts, peak) = watchdog.finish("random bytes").await;
    assert_still_serving(&mut sidecar, "random bytes", peak).await;
    println!(
        "random bytes: {garbage_closed} garbage connections (all closed by the server), \
         {frame_conns} preface+random-frame connections; {verdicts} verdicts to a normal client \
         meanwhile; RSS {rss_before} KiB before, peak {peak} KiB, after {} KiB",
        sidecar.rss_kib()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_prefaces_and_slowloris_clients_do_not_starve_others() {
    let mut sidecar = Sidecar::start();
    let rss_before = sidecar.rss_kib();
    let watchdog = Watchdog::start(&sidecar).await;
    let addr = sidecar.addr;

    // 200 connections that send half the preface and then wait.
    let mut truncated = Vec::new();
    for _ in 0..200 {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(&PREFACE[..12]).await.unwrap();
        truncated.push(conn);
    }
    // 300 slowloris connections trickling a valid request, one byte every 100 ms, for 8 s.
    let request = {
        let mut r = grpc_request_start(addr, "Evaluate");
        let event = pb::EvaluateRequest {
            event: Some(user("slow", "slowloris", "hello")),
        };
        r.extend(frame(
            DATA,
            END_STREAM,
            1,
            &grpc_message(&event.encode_to_vec(), None),
            None,
        ));
        r
    };
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..300 {
        slow.push(TcpStream::connect(addr).await.unwrap());
    }
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(8) && sent < request.len() {
        for conn in &mut slow {
            // A write error means the server hung up on this client: allowed.
            let _ = conn.write_all(&request[sent..sent + 1]).await;
        }
        sent += 1;
        sidecar.assert_alive();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let open_fds = std::fs::read_dir(format!("/proc/{}/fd", sidecar.pid()))
        .map(|d| d.count())
        .unwrap_or(0);
    let (verdicts, peak) = watchdog.finish("slowloris").await;
    assert_still_serving(&mut sidecar, "slowloris", peak).await;

    // Did the server hang up on the half prefaces by itself? Reported, not asserted.
    let mut closed = 0;
    for conn in &mut truncated {
        let mut b = [0u8; 64];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(10), conn.read(&mut b)).await
        {
            closed += 1;
        }
    }
    println!(
        "slowloris: 200 truncated prefaces ({closed} closed by the server after {:?}), 300 \
         trickling clients ({sent} bytes each); server fds at the peak {open_fds}; {verdicts} \
         verdicts to a normal client meanwhile; RSS {rss_before} KiB before, peak {peak} KiB, \
         after {} KiB",
        started.elapsed(),
        sidecar.rss_kib()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_length_prefix_is_refused_without_buffering_it() {
    let mut sidecar = Sidecar::start();
    let rss_before = sidecar.rss_kib();
    let watchdog = Watchdog::start(&sidecar).await;
    let addr = sidecar.addr;
    const CLAIM: u32 = 100 * 1024 * 1024;

    // 1. A well-formed HTTP/2 request whose gRPC message claims 100 MB, followed by 1 MiB of it.
    let mut codes = Vec::new();
    for method in ["Evaluate", "Moderate"] {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        let conn_task = tokio::spawn(connection);
        let mut client = client.ready().await.unwrap();
        let request = http::Request::builder()
            .method("POST")
            .uri(format!(
                "http://{addr}/threadwarden.v1.ModerationService/{method}"
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (response, mut body) = client.send_request(request, false).unwrap();
        let started = Instant::now();
        let _ = body.send_data(Bytes::from(grpc_message(&[], Some(CLAIM))), false);
        for _ in 0..64 {
            // h2 queues what the window does not admit; an error means the stream is gone.
            if body
                .send_data(Bytes::from(vec![0x5a; 16 * 1024]), false)
                .is_err()
            {
                break;
            }
        }
        let response = tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .unwrap_or_else(|_| panic!("{method}: no response to a 100 MB claim within 10 s"))
            .expect("a response, not a reset");
        let code = match response.headers().get("grpc-status") {
            Some(code) => code.to_str().unwrap().to_string(),
            None => {
                let mut body = response.into_body();
                while let Some(chunk) = body.data().await {
                    assert!(
                        chunk.is_err() || chunk.unwrap().is_empty(),
                        "{method}: a verdict for a 100 MB claim"
                    );
                }
                let trailers = tokio::time::timeout(Duration::from_secs(10), body.trailers())
                    .await
                    .expect("trailers in time")
                    .expect("trailers")
                    .expect("grpc-status trailers");
                trailers["grpc-status"].to_str().unwrap().to_string()
            }
        };
        assert_ne!(code, "0", "{method}: a 100 MB message was accepted");
        codes.push(format!(
            "{method}: grpc-status {code} after {:?}",
            started.elapsed()
        ));
        drop(client);
        conn_task.abort();
    }

    // 2. Raw frames: a DATA frame header claiming the largest length HTTP/2 can express
    // (16 MiB - 1, beyond the 16 KiB frame size the server advertised), carrying the 100 MB
    // gRPC prefix. The server must answer GOAWAY and hang up.
    let mut raw = TcpStream::connect(addr).await.unwrap();
    let mut bytes = grpc_request_start(addr, "Evaluate");
    let mut body = grpc_message(&[], Some(CLAIM));
    body.extend(vec![0x5a; 64 * 1024]);
    bytes.extend(frame(DATA, 0, 1, &body, Some(0x00ff_ffff)));
    let _ = raw.write_all(&bytes).await;
    let (kinds, closed) = read_frames(&mut raw, Duration::from_secs(10)).await;
    assert!(
        closed,
        "the server kept a connection with a 16 MiB DATA frame open"
    );
    assert!(kinds.contains(&GOAWAY), "no GOAWAY; frames seen: {kinds:?}");

    let (verdicts, peak) = watchdog.finish("100 MB prefix").await;
    assert_still_serving(&mut sidecar, "100 MB prefix", peak).await;
    assert!(
        peak.saturating_sub(rss_before) < 64 * 1024,
        "RSS grew by {} KiB: the claimed message was buffered",
        peak - rss_before
    );
    println!(
        "100 MB prefix: {}; oversized DATA frame header: GOAWAY and close; {verdicts} verdicts \
         meanwhile; RSS {rss_before} KiB before, peak {peak} KiB, after {} KiB",
        codes.join(", "),
        sidecar.rss_kib()
    );
}

/// How a client walks away from a Moderate stream.
#[derive(Clone, Copy, Debug)]
enum Abandon {
    /// Reads the verdict, then drops the stream without ending it (RST_STREAM).
    AfterVerdict,
    /// Drops the stream before its verdict arrives.
    BeforeVerdict,
    /// Raw HTTP/2: reads the verdict, then closes the TCP connection (with a RST when `reset`)
    /// while the stream is open.
    Connection { reset: bool },
}

/// Opens a Moderate stream on a raw connection, sends one event, waits for the verdict's DATA
/// frame, and closes the socket mid-stream.
async fn abandon_raw(addr: SocketAddr, i: usize, reset: bool) {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let mut bytes = grpc_request_start(addr, "Moderate");
    let req = pb::ModerateRequest {
        event: Some(user(
            format!("raw-{i}"),
            &format!("abandoned-{}", i % 16),
            "hello",
        )),
    };
    bytes.extend(frame(
        DATA,
        0,
        1,
        &grpc_message(&req.encode_to_vec(), None),
        None,
    ));
    conn.write_all(&bytes).await.unwrap();
    // Read until a DATA frame (the verdict) arrives on stream 1.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    'read: loop {
        let n = tokio::time::timeout(CALL_TIMEOUT, conn.read(&mut chunk))
            .await
            .expect("a verdict on the raw stream")
            .unwrap();
        assert!(n > 0, "the server hung up before the verdict");
        buf.extend(&chunk[..n]);
        let mut rest = buf.as_slice();
        while rest.len() >= 9 {
            let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            if rest.len() < 9 + len {
                break;
            }
            if rest[3] == DATA && len > 0 {
                break 'read;
            }
            rest = &rest[9 + len..];
        }
    }
    if reset {
        conn.set_zero_linger().unwrap();
    }
    drop(conn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_abandoned_streams_leave_no_open_stream_behind() {
    let sidecar = Sidecar::start();
    // Warm up, and check the gauge can see open streams at all.
    let mut client = sidecar.client().await;
    let mut held = Vec::new();
    for i in 0..3 {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let mut responses = client
            .moderate(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        tx.send(pb::ModerateRequest {
            event: Some(user(format!("held-{i}"), "held", "hello")),
        })
        .await
        .unwrap();
        responses.next().await.unwrap().unwrap();
        held.push((tx, responses));
    }
    assert_eq!(sidecar.metric("threadwarden_open_streams").await, 3.0);
    drop(held);
    let rss_before = sidecar.rss_kib();

    const TOTAL: usize = 10_000;
    const WORKERS: usize = 4;
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let addr = sidecar.addr;
        workers.push(tokio::spawn(async move {
            let mut client = ModerationServiceClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
            let mut counts = [0usize; 3];
            for i in (w..TOTAL).step_by(WORKERS) {
                let how = match i % 10 {
                    0 => Abandon::Connection {
                        reset: i.is_multiple_of(20),
                    },
                    1..=5 => Abandon::AfterVerdict,
                    _ => Abandon::BeforeVerdict,
                };
                match how {
                    Abandon::Connection { reset } => {
                        abandon_raw(addr, i, reset).await;
                        counts[2] += 1;
                        continue;
                    }
                    Abandon::AfterVerdict => counts[0] += 1,
                    Abandon::BeforeVerdict => counts[1] += 1,
                }
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                let mut responses = tokio::time::timeout(
                    CALL_TIMEOUT,
                    client.moderate(tokio_stream::wrappers::ReceiverStream::new(rx)),
                )
                .await
                .expect("stream opened in time")
                .expect("stream opened")
                .into_inner();
                let event = user(format!("a-{i}"), &format!("abandoned-{}", i % 16), "hello");
                tx.send(pb::ModerateRequest { event: Some(event) })
                    .await
                    .unwrap();
                if matches!(how, Abandon::AfterVerdict) {
                    let r = tokio::time::timeout(CALL_TIMEOUT, responses.next())
                        .await
                        .expect("verdict in time")
                        .expect("a response")
                        .expect("a verdict, not a status");
                    assert_eq!(r.event_id, format!("a-{i}"));
                }
                // Walk away mid-stream: the request side is never ended.
                drop(responses);
                drop(tx);
            }
            counts
        }));
    }
    let mut counts = [0usize; 3];
    for w in workers {
        let c = w.await.unwrap();
        for k in 0..3 {
            counts[k] += c[k];
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(counts.iter().sum::<usize>(), TOTAL);

    // The gauge returns to 0 (polled with a deadline: the server learns of each abandonment
    // asynchronously).
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut open = sidecar.metric("threadwarden_open_streams").await;
    while open != 0.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        open = sidecar.metric("threadwarden_open_streams").await;
    }
    assert_eq!(
        open, 0.0,
        "open streams left behind after {TOTAL} abandoned streams"
    );
    // A normal client still gets verdicts.
    verdict(&mut client, "after-abandon".into()).await.unwrap();
    let rss_after = sidecar.rss_kib();
    assert!(
        rss_after.saturating_sub(rss_before) < 32 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB over {TOTAL} abandoned streams"
    );
    assert!(rss_after < RSS_BOUND_KIB);
    println!(
        "abandoned streams: {TOTAL} in {elapsed:?} over {WORKERS} workers ({} after the verdict, \
         {} before it, {} by closing the TCP connection); open_streams back to 0; RSS \
         {rss_before} KiB before, {rss_after} KiB after",
        counts[0], counts[1], counts[2]
    );
}

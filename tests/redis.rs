//! The shared state backend against a real `redis-server` (installed by scripts/test.sh from
//! the OS packages, started here on 127.0.0.1 on a free port, with AOF): two sidecar processes
//! sharing one Redis, concurrent writers, a replica killed with SIGKILL, Redis restarted in
//! both failure modes, a fork across replicas, and what Redis holds (no text, no raw ids).

mod common;

use std::collections::{BTreeSet, HashMap};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use threadwarden::api::pb;
use threadwarden::api::pb::moderation_service_client::ModerationServiceClient;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;

const SERVING: i32 = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;

/// A `redis-server` on 127.0.0.1, persisting with AOF (fsync on every write) in its own dir.
struct Redis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// TLS flags: then `port` is the TLS port and the plain one is off.
    tls: Vec<String>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Redis {
    fn start() -> Redis {
        Redis::start_with_tls(Vec::new())
    }

    /// With `tls` flags, serves TLS only, on `port`.
    fn start_with_tls(tls: Vec<String>) -> Redis {
        let mut r = Redis {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            tls,
        };
        r.restart();
        r
    }

    /// Starts (again) on the same port and directory: the AOF is replayed.
    fn restart(&mut self) {
        let port = self.port.to_string();
        let ports = if self.tls.is_empty() {
            vec!["--port", &port]
        } else {
            vec!["--port", "0", "--tls-port", &port]
        };
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1"])
            .args(ports)
            .args(&self.tls)
            .args(["--save", "", "--appendonly", "yes", "--appendfsync", "always"])
            .args(["--dir", self.dir.path().to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test.sh installs it: apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let up = |r: &Redis| {
            if r.tls.is_empty() {
                r.connection().is_ok()
            } else {
                std::net::TcpStream::connect(("127.0.0.1", r.port)).is_ok()
            }
        };
        while !up(self) {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn connection(&self) -> redis::RedisResult<redis::Connection> {
        let mut c = redis::Client::open(self.url())?.get_connection()?;
        redis::cmd("PING").query::<String>(&mut c)?;
        Ok(c)
    }

    /// SIGKILL: no shutdown save; only what the AOF holds survives.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A sidecar process; SIGKILLed when dropped.
struct Sidecar {
    child: Child,
    addr: String,
}

impl Sidecar {
    fn start(redis: &Redis, extra: &[&str]) -> Sidecar {
        let url = redis.url();
        let mut args = vec!["--state-backend", url.as_str(), "--decision-log", "off"];
        if !extra.contains(&"--state-timeout") {
            // Generous: these tests check agreement, not the deadline (a loaded CI machine).
            args.extend_from_slice(&["--state-timeout", "5s"]);
        }
        args.extend_from_slice(extra);
        let (child, addr, _) = spawn_serve(&args);
        Sidecar { child, addr }
    }

    async fn client(&self) -> ModerationServiceClient<Channel> {
        ModerationServiceClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connect")
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A `grpc.health.v1` client.
    async fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(
            Channel::from_shared(format!("http://{}", self.addr))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        )
    }
}

/// The overall (`""`) serving status.
async fn health_status(h: &mut HealthClient<Channel>) -> i32 {
    h.check(tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
    .status
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn summary(
    client: &mut ModerationServiceClient<Channel>,
    thread: &str,
) -> Result<pb::ThreadSummary, tonic::Status> {
    Ok(client
        .get_thread(pb::GetThreadRequest {
            tenant_id: "tenant-a".into(),
            thread_id: thread.into(),
        })
        .await?
        .into_inner()
        .thread
        .unwrap())
}

/// A persistent severe conversation: the user asks four times, the assistant refuses each time,
/// then the user writes again after the END.
fn persistent_severe(thread: &str) -> Vec<pb::ConversationEvent> {
    let mut events = Vec::new();
    for i in 0..4 {
        events.push(labelled(
            format!("{thread}-u{i}"),
            thread,
            pb::Category::IndiscriminateWeapons,
            0.95,
        ));
        if i < 3 {
            events.push(assistant(format!("{thread}-a{i}"), thread, true, false));
        }
    }
    events.push(user(
        format!("{thread}-after"),
        thread,
        "ok, something else then",
    ));
    events
}

type Seen = (pb::Action, pb::Reason, bool, u32, u32, bool, u32);

fn seen(v: &pb::Verdict) -> Seen {
    let t = v.thread.unwrap();
    (
        action(v),
        reason(v),
        v.redirect.as_ref().is_some_and(|r| r.warning),
        t.turn,
        t.harmful_turns,
        t.ended,
        t.exposures,
    )
}

#[tokio::test]
async fn two_sidecars_sharing_redis_decide_as_one_sidecar() {
    // The reference: one sidecar, in memory.
    let single = start().await;
    let mut one = single.client().await;
    let mut want = Vec::new();
    for e in persistent_severe("severe") {
        want.push(seen(&evaluate(&mut one, e).await));
    }
    single.shutdown().await;
    assert!(
        want.iter()
            .any(|s| s.0 == pb::Action::End && s.1 == pb::Reason::PersistentHarm),
        "the script ends: {want:?}"
    );

    let redis = Redis::start();
    let a = Sidecar::start(&redis, &[]);
    let b = Sidecar::start(&redis, &[]);
    let mut clients = [a.client().await, b.client().await];
    let mut got = Vec::new();
    for (i, e) in persistent_severe("severe").into_iter().enumerate() {
        let v = evaluate(&mut clients[i % 2], e).await;
        assert!(!v.degraded, "Redis answered: nothing is degraded");
        got.push(seen(&v));
    }
    assert_eq!(
        got, want,
        "alternating between two replicas changes nothing"
    );
    for (i, c) in clients.iter_mut().enumerate() {
        let v = evaluate(c, user(format!("late-{i}"), "severe", "hello again")).await;
        assert_eq!(
            (action(&v), reason(&v)),
            (pb::Action::End, pb::Reason::AlreadyEnded),
            "replica {i}"
        );
        let s = summary(c, "severe").await.unwrap();
        assert!(s.ended, "replica {i}: {s:?}");
        assert_eq!(
            s.exposures, 4,
            "replica {i}: every harmful turn, whichever replica saw it"
        );
    }
    // A retry of the END event on the other replica is the same END, counted once.
    let end_event = persistent_severe("severe").swap_remove(6);
    let v = evaluate(&mut clients[1], end_event).await;
    assert!(v.replayed && action(&v) == pb::Action::End);
    assert_eq!(reason(&v), pb::Reason::PersistentHarm);
}

#[tokio::test]
async fn one_stream_overlaps_threads_but_keeps_each_threads_order() {
    let redis = Redis::start();
    let a = Sidecar::start(&redis, &[]);
    let mut client = a.client().await;
    // 100 threads, 4 severe requests each, interleaved round by round on one stream (so up to
    // 32 different threads are in flight at once); then a run of one thread's events back to
    // back, and a fork right after its parent's last event.
    let mut events = Vec::new();
    for round in 0..4 {
        for t in 0..100 {
            let thread = format!("o{t}");
            events.push(labelled(
                format!("{thread}-r{round}"),
                &thread,
                pb::Category::IndiscriminateWeapons,
                0.95,
            ));
        }
    }
    events.extend(persistent_severe("solo"));
    events.push(fork("solo-fork", "solo-branch", "solo", 2));
    let sent: Vec<String> = events.iter().map(|e| e.event_id.clone()).collect();
    let requests = events
        .into_iter()
        .map(|e| pb::ModerateRequest { event: Some(e) });
    let mut responses = client
        .moderate(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(r) = responses.next().await {
        got.push(r.unwrap());
    }
    let ids: Vec<&str> = got.iter().map(|r| r.event_id.as_str()).collect();
    assert_eq!(ids, sent, "one answer per event, in request order");
    let verdicts: Vec<pb::Verdict> = got
        .into_iter()
        .map(|r| match r.result {
            Some(pb::moderate_response::Result::Verdict(v)) => v,
            other => panic!("{other:?}"),
        })
        .collect();
    for (i, v) in verdicts[..400].iter().enumerate() {
        let round = i / 100;
        assert_eq!(v.thread.unwrap().turn, round as u32 + 1, "event {i}");
        let want = if round < 3 {
            pb::Action::Redirect
        } else {
            pb::Action::End
        };
        assert_eq!(action(v), want, "event {i}");
        assert_eq!(v.redirect.as_ref().is_some_and(|r| r.warning), round == 2);
    }
    // The solo thread decided exactly as one sidecar in memory decides it.
    let single = start().await;
    let mut one = single.client().await;
    for (e, v) in persistent_severe("solo").into_iter().zip(&verdicts[400..]) {
        assert_eq!(seen(v), seen(&evaluate(&mut one, e).await));
    }
    single.shutdown().await;
    let branch = verdicts.last().unwrap().thread.unwrap();
    assert!(!branch.ended && branch.turn == 2, "{branch:?}");
}

#[tokio::test]
async fn a_thread_that_stays_on_one_replica_costs_one_round_trip_per_event() {
    // Two threads whose keys agree in their low 16 bits: they shared a slot of the table of
    // versions this replaced, so each one's event evicted the other's version and every event
    // conflicted once (two round trips). Now the local copy gives the version.
    let low = |t: &str| threadwarden::state::ThreadKey::new("tenant-a", t).to_u128() as u16;
    let first = "stay-0".to_string();
    let second = (1..)
        .map(|i| format!("stay-{i}"))
        .find(|t| low(t) == low(&first))
        .unwrap();
    let redis = Redis::start();
    let admin = format!("127.0.0.1:{}", free_port());
    let a = Sidecar::start(&redis, &["--admin-listen", &admin]);
    let mut client = a.client().await;
    for round in 0..10 {
        for thread in [&first, &second] {
            let e = user(format!("{thread}-{round}"), thread, "a benign question");
            assert_eq!(
                evaluate(&mut client, e).await.thread.unwrap().turn,
                round + 1
            );
        }
    }
    let conflicts = metric(&admin, "threadwarden_state_conflicts_total", "");
    assert_eq!(conflicts, 0.0, "a replica's own writes never conflict");
    // Redis's own count: each compare-and-set runs one GET inside its script, and one SET
    // when it writes.
    let mut con = redis.connection().unwrap();
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut con)
        .unwrap();
    let calls = |cmd: &str| -> u64 {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
            .and_then(|rest| rest.split(',').next()?.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(calls("get"), 20, "one compare-and-set per event: {stats}");
    assert_eq!(calls("set"), 20, "{stats}");
}

/// `(compare-and-set script calls, compare-and-sets)` a store sent.
fn cas_counts(metrics: &threadwarden::telemetry::Metrics) -> (u64, u64) {
    let (mut calls, mut keys) = (0, 0);
    metrics.counters(|name, _, value| match name {
        "threadwarden_state_cas_calls_total" => calls += value,
        "threadwarden_state_cas_total" => keys += value,
        _ => {}
    });
    (calls, keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_compare_and_sets_keep_every_update_and_answer_each_key() {
    use std::sync::Arc;
    use threadwarden::state::shared::{SharedConfig, SharedStore};
    use threadwarden::state::{StoreConfig, ThreadKey, ThreadStore};
    use threadwarden::telemetry::Metrics;

    const THREADS: usize = 40;
    const WRITERS: usize = 8;
    const EACH: u32 = 25;
    let redis = Redis::start();
    for batch in [64, 1] {
        // Two replicas of the store over one Redis, as two sidecars would hold them.
        let replicas: Vec<_> = (0..2)
            .map(|_| {
                let metrics = Arc::new(Metrics::default());
                let config = SharedConfig {
                    batch,
                    timeout: Duration::from_secs(5),
                    ..SharedConfig::new(redis.url())
                };
                let store = SharedStore::connect(config, metrics.clone()).unwrap();
                (
                    Arc::new(store),
                    ThreadStore::new(StoreConfig::default()),
                    metrics,
                )
            })
            .collect();
        let key = move |t: usize| ThreadKey::new(&format!("batch-{batch}"), &format!("t{t}"));
        // WRITERS tasks per replica, each adding EACH turns to every thread, all at once: the
        // same thread's compare-and-sets meet in one call, and across replicas.
        let mut tasks = Vec::new();
        for (shared, local, _) in &replicas {
            for w in 0..WRITERS {
                let (shared, local) = (shared.clone(), local.clone());
                tasks.push(tokio::spawn(async move {
                    for i in 0..EACH {
                        for t in 0..THREADS {
                            let t = (t + w * 7 + i as usize) % THREADS;
                            let (_, degraded) = shared
                                .update(&local, key(t), |s| s.turn += 1)
                                .await
                                .unwrap();
                            assert!(!degraded);
                        }
                    }
                }));
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
        let (shared, local, _) = &replicas[0];
        for t in 0..THREADS {
            let (state, degraded) = shared.read(local, key(t)).await.unwrap();
            assert!(!degraded);
            assert_eq!(
                state.unwrap().turn,
                2 * WRITERS as u32 * EACH,
                "no update lost (batch {batch}, thread {t})"
            );
        }
        let (mut calls, mut keys, mut conflicts) = (0, 0, 0);
        for (_, _, metrics) in &replicas {
            let (c, k) = cas_counts(metrics);
            calls += c;
            keys += k;
            metrics.counters(|name, _, value| {
                if name == "threadwarden_state_conflicts_total" {
                    conflicts += value;
                }
            });
        }
        let updates = (2 * WRITERS * THREADS) as u64 * u64::from(EACH);
        assert_eq!(keys, updates + conflicts, "one compare-and-set per attempt");
        if batch == 1 {
            assert_eq!(calls, keys, "--state-batch 1: one key per call");
        } else {
            assert!(
                calls < keys,
                "16 writers at once share calls: {calls} calls, {keys} keys"
            );
        }
        assert!(conflicts > 0, "two replicas on the same threads conflict");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_that_refuses_multi_slot_calls_gets_one_key_per_call() {
    use std::sync::Arc;
    use threadwarden::state::shared::{SharedConfig, SharedStore};
    use threadwarden::state::{StoreConfig, ThreadKey, ThreadStore};
    use threadwarden::telemetry::Metrics;

    // A one-node Redis Cluster owning every slot: single-key calls are served, a script over
    // keys of several slots is refused with CROSSSLOT.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args([
            "--cluster-enabled",
            "yes",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--dir", dir.path().to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server");
    let url = format!("redis://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut con = loop {
        match redis::Client::open(url.as_str()).and_then(|c| c.get_connection()) {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("redis-server did not start: {e}"),
        }
    };
    // ADDSLOTS (not Redis 7's ADDSLOTSRANGE): any packaged redis-server has it.
    let _: () = redis::cmd("CLUSTER")
        .arg("ADDSLOTS")
        .arg((0..16384).collect::<Vec<u32>>())
        .query(&mut con)
        .unwrap();
    while !redis::cmd("CLUSTER")
        .arg("INFO")
        .query::<String>(&mut con)
        .unwrap()
        .contains("cluster_state:ok")
    {
        assert!(Instant::now() < deadline, "the cluster did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }

    let metrics = Arc::new(Metrics::default());
    let config = SharedConfig {
        timeout: Duration::from_secs(5),
        ..SharedConfig::new(url)
    };
    let shared = Arc::new(SharedStore::connect(config, metrics.clone()).unwrap());
    let local = ThreadStore::new(StoreConfig::default());
    let round = |turn: u32| {
        let tasks: Vec<_> = (0..200)
            .map(|t| {
                let (shared, local) = (shared.clone(), local.clone());
                tokio::spawn(async move {
                    let key = ThreadKey::new("cluster", &format!("t{t}"));
                    let (seen, degraded) = shared
                        .update(&local, key, |s| {
                            s.turn += 1;
                            s.turn
                        })
                        .await
                        .unwrap();
                    assert!(!degraded, "every event reaches Redis");
                    assert_eq!(seen, turn);
                })
            })
            .collect();
        async move {
            for t in tasks {
                t.await.unwrap();
            }
        }
    };
    round(1).await;
    let (calls, keys) = cas_counts(&metrics);
    assert!(
        keys > calls,
        "a call over several keys was tried: {calls} calls, {keys} keys"
    );
    round(2).await;
    let (calls2, keys2) = cas_counts(&metrics);
    assert_eq!(keys2 - keys, 200);
    assert_eq!(calls2 - calls, 200, "after CROSSSLOT, one key per call");
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn concurrent_writers_on_two_sidecars_lose_no_update() {
    const THREADS: usize = 200;
    const EVENTS: usize = 50;
    const HARMFUL_FROM: usize = 150;
    let redis = Redis::start();
    let a = Sidecar::start(&redis, &[]);
    let b = Sidecar::start(&redis, &[]);
    // Four streams, two on each sidecar; event j of thread t goes to stream (t + j) % 4, so
    // every thread is written by all four at once.
    let mut per_stream: Vec<Vec<pb::ModerateRequest>> = vec![Vec::new(); 4];
    for j in 0..EVENTS {
        for t in 0..THREADS {
            let thread = format!("t{t}");
            let e = if t >= HARMFUL_FROM {
                labelled(
                    format!("{thread}-{j}"),
                    &thread,
                    pb::Category::IndiscriminateWeapons,
                    0.95,
                )
            } else {
                user(format!("{thread}-{j}"), &thread, "thanks, that helps")
            };
            per_stream[(t + j) % 4].push(pb::ModerateRequest { event: Some(e) });
        }
    }
    let mut tasks = Vec::new();
    for (s, requests) in per_stream.into_iter().enumerate() {
        let mut client = if s % 2 == 0 {
            a.client().await
        } else {
            b.client().await
        };
        tasks.push(tokio::spawn(async move {
            let sent: Vec<String> = requests
                .iter()
                .map(|r| r.event.as_ref().unwrap().event_id.clone())
                .collect();
            let stream = tokio_stream::iter(requests);
            let mut responses = client.moderate(stream).await.unwrap().into_inner();
            let mut got = Vec::new();
            while let Some(r) = responses.next().await {
                got.push(r.unwrap());
            }
            let ids: Vec<String> = got.iter().map(|r| r.event_id.clone()).collect();
            assert_eq!(ids, sent, "exactly one answer per event, in order");
            got
        }));
    }
    let mut by_thread: HashMap<String, Vec<pb::Verdict>> = HashMap::new();
    for task in tasks {
        for r in task.await.unwrap() {
            let Some(pb::moderate_response::Result::Verdict(v)) = r.result else {
                panic!("an error: {r:?}");
            };
            assert!(!v.degraded);
            by_thread.entry(r.thread_id).or_default().push(v);
        }
    }
    assert_eq!(by_thread.len(), THREADS);
    for t in 0..THREADS {
        let thread = format!("t{t}");
        let verdicts = &by_thread[&thread];
        assert_eq!(verdicts.len(), EVENTS);
        if t < HARMFUL_FROM {
            // Each write saw the one before it: the turns are 1..=50, each once.
            let turns: BTreeSet<u32> = verdicts.iter().map(|v| v.thread.unwrap().turn).collect();
            assert_eq!(
                turns,
                (1..=EVENTS as u32).collect(),
                "{thread}: a lost update"
            );
        } else {
            let decided: Vec<&pb::Verdict> = verdicts
                .iter()
                .filter(|v| reason(v) != pb::Reason::AlreadyEnded)
                .collect();
            let turns: BTreeSet<u32> = decided.iter().map(|v| v.thread.unwrap().turn).collect();
            assert_eq!(turns, (1..=4).collect(), "{thread}: {decided:?}");
            let ends: Vec<u32> = decided
                .iter()
                .filter(|v| action(v) == pb::Action::End)
                .map(|v| v.thread.unwrap().turn)
                .collect();
            let warnings: Vec<u32> = decided
                .iter()
                .filter(|v| v.redirect.as_ref().is_some_and(|r| r.warning))
                .map(|v| v.thread.unwrap().turn)
                .collect();
            assert_eq!(ends, vec![4], "{thread}: one END");
            assert_eq!(
                warnings,
                vec![3],
                "{thread}: the warning comes before the END"
            );
        }
    }
    let mut c = b.client().await;
    let s = summary(&mut c, "t0").await.unwrap();
    assert_eq!(s.turn, EVENTS as u32);
    let s = summary(&mut c, &format!("t{HARMFUL_FROM}")).await.unwrap();
    assert!(s.ended && s.harmful_turns == 4, "{s:?}");
}

#[tokio::test]
async fn a_replica_killed_mid_stream_loses_no_end_or_crisis_lock() {
    let redis = Redis::start();
    let mut a = Sidecar::start(&redis, &[]);
    let b = Sidecar::start(&redis, &[]);
    let mut ca = a.client().await;
    let (tx, mut responses) = open_stream(&mut ca, 64).await;
    for t in 0..10 {
        for e in persistent_severe(&format!("end-{t}")) {
            tx.send(pb::ModerateRequest { event: Some(e) })
                .await
                .unwrap();
        }
        let crisis = labelled(
            format!("crisis-{t}-0"),
            &format!("crisis-{t}"),
            pb::Category::SelfHarm,
            0.9,
        );
        tx.send(pb::ModerateRequest {
            event: Some(crisis),
        })
        .await
        .unwrap();
    }
    // Every event above is answered (so decided and written), then A dies mid-stream.
    for _ in 0..10 * 9 {
        responses.next().await.unwrap().unwrap();
    }
    tx.send(pb::ModerateRequest {
        event: Some(user("in-flight", "end-0", "still there?")),
    })
    .await
    .unwrap();
    a.kill();
    drop(tx);

    let mut cb = b.client().await;
    for t in 0..10 {
        let s = summary(&mut cb, &format!("end-{t}")).await.unwrap();
        assert!(s.ended, "end-{t}: {s:?}");
        let v = evaluate(&mut cb, user(format!("b-{t}"), &format!("end-{t}"), "hi")).await;
        assert_eq!(reason(&v), pb::Reason::AlreadyEnded);
        let s = summary(&mut cb, &format!("crisis-{t}")).await.unwrap();
        assert!(s.crisis_active && !s.ended, "crisis-{t}: {s:?}");
        let v = evaluate(
            &mut cb,
            assistant(format!("b-end-{t}"), &format!("crisis-{t}"), true, true),
        )
        .await;
        assert_ne!(action(&v), pb::Action::End);
        assert_eq!(v.end_denied_detail, "CRISIS_ACTIVE");
    }
}

/// Reads one counter (summed over its labels, or the one series matching `label`) from a
/// sidecar's /metrics.
fn metric(admin: &str, name: &str, label: &str) -> f64 {
    let body = http_get(admin, "/metrics");
    body.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

async fn wait_for(what: &str, within: Duration, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok().await {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn fail_open_keeps_deciding_through_a_redis_restart_and_writes_locks_back() {
    let mut redis = Redis::start();
    let admin = format!("127.0.0.1:{}", free_port());
    let mut a = Sidecar::start(
        &redis,
        &["--state-timeout", "200ms", "--admin-listen", &admin],
    );
    let mut ca = a.client().await;
    for e in persistent_severe("before") {
        evaluate(&mut ca, e).await;
    }
    // A second thread, two harmful turns in, known to Redis.
    for i in 0..2 {
        let v = evaluate(
            &mut ca,
            labelled(
                format!("mid-{i}"),
                "mid",
                pb::Category::IndiscriminateWeapons,
                0.95,
            ),
        )
        .await;
        assert!(!v.degraded);
    }

    redis.kill();
    // During the outage: verdicts keep flowing, marked degraded, from the local copy.
    let (tx, mut responses) = open_stream(&mut ca, 16).await;
    for i in 2..4 {
        tx.send(pb::ModerateRequest {
            event: Some(labelled(
                format!("mid-{i}"),
                "mid",
                pb::Category::IndiscriminateWeapons,
                0.95,
            )),
        })
        .await
        .unwrap();
    }
    tx.send(pb::ModerateRequest {
        event: Some(labelled(
            "out-c",
            "outage-crisis",
            pb::Category::SelfHarm,
            0.9,
        )),
    })
    .await
    .unwrap();
    let mut during = Vec::new();
    for _ in 0..3 {
        let r = responses.next().await.unwrap().unwrap();
        let Some(pb::moderate_response::Result::Verdict(v)) = r.result else {
            panic!("fail open answers verdicts: {r:?}");
        };
        assert!(v.degraded, "{v:?}");
        during.push(v);
    }
    assert_eq!(
        (action(&during[1]), reason(&during[1])),
        (pb::Action::End, pb::Reason::PersistentHarm),
        "the local copy still counts: the END is decided during the outage"
    );
    assert!(during[2].crisis.is_some());
    assert!(metric(&admin, "threadwarden_state_degraded_total", "") >= 3.0);
    // Fail open keeps serving: health stays SERVING while Redis is away.
    let mut health = a.health().await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(health_status(&mut health).await, SERVING);
    assert_eq!(metric(&admin, "threadwarden_state_backend_up", ""), 0.0);
    assert!(metric(&admin, "threadwarden_state_errors_total", "") >= 3.0);

    redis.restart();
    wait_for(
        "the locks are written back",
        Duration::from_secs(20),
        async || metric(&admin, "threadwarden_state_written_back_total", "") >= 2.0,
    )
    .await;
    // The same stream goes on, no longer degraded.
    tx.send(pb::ModerateRequest {
        event: Some(user("after-1", "fresh", "hello")),
    })
    .await
    .unwrap();
    let r = responses.next().await.unwrap().unwrap();
    let Some(pb::moderate_response::Result::Verdict(v)) = r.result else {
        panic!("{r:?}");
    };
    assert!(!v.degraded);

    // A replica that never saw the outage sees every lock: the END from before (AOF), and
    // the END and the crisis decided while Redis was away.
    a.kill();
    let b = Sidecar::start(&redis, &[]);
    let mut cb = b.client().await;
    assert!(summary(&mut cb, "before").await.unwrap().ended);
    assert!(summary(&mut cb, "mid").await.unwrap().ended);
    assert!(
        summary(&mut cb, "outage-crisis")
            .await
            .unwrap()
            .crisis_active
    );
}

#[tokio::test]
async fn fail_closed_answers_unavailable_and_the_stream_survives() {
    let mut redis = Redis::start();
    let admin = format!("127.0.0.1:{}", free_port());
    let a = Sidecar::start(
        &redis,
        &[
            "--state-fail",
            "closed",
            "--state-timeout",
            "200ms",
            "--admin-listen",
            &admin,
        ],
    );
    let mut ca = a.client().await;
    let mut health = a.health().await;
    let (tx, mut responses) = open_stream(&mut ca, 16).await;
    let mut next = async |id: &str| {
        tx.send(pb::ModerateRequest {
            event: Some(user(id, "closed", "hello")),
        })
        .await
        .unwrap();
        responses.next().await.unwrap().unwrap()
    };
    let r = next("c-1").await;
    assert!(matches!(
        r.result,
        Some(pb::moderate_response::Result::Verdict(_))
    ));
    assert_eq!(health_status(&mut health).await, SERVING);

    redis.kill();
    let r = next("c-2").await;
    let Some(pb::moderate_response::Result::Error(e)) = r.result else {
        panic!("fail closed answers an error: {r:?}");
    };
    assert_eq!(e.code, "UNAVAILABLE", "{e:?}");
    assert_eq!(r.event_id, "c-2");
    wait_for(
        "health turns NOT_SERVING",
        Duration::from_secs(10),
        async || health_status(&mut health).await != SERVING,
    )
    .await;
    assert!(metric(&admin, "threadwarden_errors_total", "UNAVAILABLE") >= 1.0);

    redis.restart();
    wait_for("health serves again", Duration::from_secs(20), async || {
        health_status(&mut health).await == SERVING
    })
    .await;
    // The same stream: the event that failed can be sent again, and is decided.
    let r = next("c-2").await;
    let Some(pb::moderate_response::Result::Verdict(v)) = r.result else {
        panic!("{r:?}");
    };
    assert!(!v.degraded);
    assert_eq!(v.thread.unwrap().turn, 2);
}

#[tokio::test]
async fn a_fork_is_taken_on_one_replica_from_a_parent_ended_on_the_other() {
    let redis = Redis::start();
    let a = Sidecar::start(&redis, &[]);
    let b = Sidecar::start(&redis, &[]);
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    for e in persistent_severe("parent") {
        evaluate(&mut ca, e).await;
    }
    assert!(summary(&mut ca, "parent").await.unwrap().ended);
    let v = evaluate(&mut cb, fork("f1", "branch", "parent", 1)).await;
    assert_ne!(action(&v), pb::Action::End, "{v:?}");
    let s = v.thread.unwrap();
    assert!(!s.ended && s.turn == 1, "{s:?}");
    // The branch is shared too, and a retried fork is the same fork.
    let v = evaluate(&mut ca, user("f-u", "branch", "a different question")).await;
    assert_eq!(v.thread.unwrap().turn, 2);
    let v = evaluate(&mut ca, fork("f1", "branch", "parent", 1)).await;
    assert!(v.replayed);
    let err = ca
        .evaluate(pb::EvaluateRequest {
            event: Some(fork("f2", "branch", "parent", 1)),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    // The parent stays ended everywhere, and feedback on it is taken by either replica.
    assert!(summary(&mut cb, "parent").await.unwrap().ended);
    let feedback = |thread: &str| pb::SubmitFeedbackRequest {
        tenant_id: "tenant-a".into(),
        thread_id: thread.into(),
        event_id: "parent-u3".into(),
        rating: pb::Rating::ThumbsDown as i32,
        comment: String::new(),
    };
    cb.submit_feedback(feedback("parent")).await.unwrap();
    let err = cb
        .submit_feedback(feedback("never-seen"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    // TTLs are key expiries: an ENDed thread keeps --locked-ttl (30 days), an open one
    // --idle-ttl (24 hours).
    let mut con = redis.connection().unwrap();
    let pttl = |con: &mut redis::Connection, thread: &str| -> i64 {
        let key = threadwarden::state::shared::redis_key(threadwarden::state::ThreadKey::new(
            "tenant-a", thread,
        ));
        redis::cmd("PTTL").arg(key).query(con).unwrap()
    };
    let day_ms = 24 * 3600 * 1000;
    let ended = pttl(&mut con, "parent");
    assert!(ended > 29 * day_ms && ended <= 30 * day_ms, "{ended}");
    let open = pttl(&mut con, "branch");
    assert!(open > day_ms - 600_000 && open <= day_ms, "{open}");
}

#[tokio::test]
async fn redis_holds_no_text_and_no_raw_thread_id() {
    const CANARY: &str = "CANARY-5e1f0c-never-stored";
    const THREAD: &str = "raw-thread-id-canary-77";
    let redis = Redis::start();
    let a = Sidecar::start(&redis, &[]);
    let mut ca = a.client().await;
    let mut events = vec![
        user("p1", THREAD, &format!("hello {CANARY}")),
        assistant("p2", THREAD, false, false),
        labelled("p3", THREAD, pb::Category::Abuse, 0.9),
        fork("p4", &format!("{THREAD}-branch"), THREAD, 1),
    ];
    events[1].payload = Some(pb::conversation_event::Payload::AssistantMessage(
        pb::AssistantMessage {
            text: format!("assistant says {CANARY}"),
            refused: false,
            end_conversation_requested: false,
        },
    ));
    for e in events {
        evaluate(&mut ca, e).await;
    }
    let mut con = redis.connection().unwrap();
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS").arg("*").query(&mut con).unwrap();
    assert_eq!(keys.len(), 2, "one key per thread");
    let needles = [CANARY.as_bytes(), THREAD.as_bytes(), b"tenant-a"];
    for key in keys {
        let dump: Vec<u8> = redis::cmd("DUMP").arg(&key).query(&mut con).unwrap();
        let value: Vec<u8> = redis::cmd("GET").arg(&key).query(&mut con).unwrap();
        for hay in [&key, &dump, &value] {
            for needle in needles {
                assert!(
                    !hay.windows(needle.len()).any(|w| w == needle),
                    "{:?} found in {:?}",
                    String::from_utf8_lossy(needle),
                    String::from_utf8_lossy(hay)
                );
            }
        }
        assert!(
            value.len() < 512,
            "a thread is small: {} bytes",
            value.len()
        );
    }
}

#[tokio::test]
async fn rediss_with_a_private_ca_and_a_password_from_a_file() {
    const PASSWORD: &str = "s3cret-redis-pw-9431";
    let pki = pki();
    let files = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = files.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let (ca, cert, key) = (
        write("ca.pem", &pki.ca),
        write("redis.pem", &pki.server_cert),
        write("redis.key", &pki.server_key),
    );
    let password = write("password", &format!("{PASSWORD}\n"));
    let wrong = write("wrong", "not-the-password\n");
    let redis = Redis::start_with_tls(
        [
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
            "--requirepass",
            PASSWORD,
        ]
        .map(String::from)
        .to_vec(),
    );
    let url = format!("rediss://localhost:{}", redis.port);
    let sidecar = |extra: &[&str]| {
        let mut args = vec![
            "--state-backend",
            url.as_str(),
            "--state-fail",
            "closed",
            "--state-timeout",
            "5s",
            "--decision-log",
            "off",
        ];
        args.extend_from_slice(extra);
        let (child, addr, logs) = spawn_serve(&args);
        (Sidecar { child, addr }, logs)
    };
    // The right CA and password: every decision goes through Redis.
    let (a, logs) = sidecar(&["--state-tls-ca", &ca, "--state-password-file", &password]);
    let mut ca_client = a.client().await;
    for i in 0..3 {
        let v = evaluate(
            &mut ca_client,
            labelled(format!("t{i}"), "tls", pb::Category::Abuse, 0.9),
        )
        .await;
        assert!(!v.degraded);
    }
    assert_eq!(summary(&mut ca_client, "tls").await.unwrap().turn, 3);
    let log: Vec<String> = logs.try_iter().collect();
    assert!(
        log.iter().all(|l| !l.contains(PASSWORD)),
        "the password is never logged"
    );
    // Without the private CA the server's certificate is not trusted; with a wrong password
    // Redis refuses: both answer UNAVAILABLE (fail closed), never a verdict.
    for extra in [
        vec!["--state-password-file", password.as_str()],
        vec![
            "--state-tls-ca",
            ca.as_str(),
            "--state-password-file",
            wrong.as_str(),
        ],
    ] {
        let (b, _) = sidecar(&extra);
        let err = b
            .client()
            .await
            .evaluate(pb::EvaluateRequest {
                event: Some(user("x", "tls", "hello")),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{extra:?}: {err:?}");
    }
}

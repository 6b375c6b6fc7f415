//! The shared state backend (`--state-backend redis://…`): every thread's `ThreadState` in
//! Redis, so that the sidecars of many replicas count one thread together.
//!
//! Each event is a compare-and-set on its thread: the state is decided with the pure
//! `policy::decide` from a version of the value, and written only if Redis still holds that
//! version (one Lua script, atomic on the server); on a conflict the script returns the newer
//! value and the event is decided again from it. The value is `version (8 bytes) ‖ postcard
//! state`: counters, flags and the replay ring of event-id hashes, never text, and the key is a
//! hash of (tenant, thread), never the raw ids.
//!
//! The version is a hash of the postcard bytes after it, so it names the content: the local
//! `ThreadStore`'s copy of a thread this replica decided gives the version Redis holds if no
//! other replica wrote since, with no table of versions to keep (or to lose to collisions). A
//! thread whose events keep reaching the same replica costs one round trip per event; one
//! that moves costs two. The guess is never trusted for correctness: Redis compares the
//! version, and equal versions mean equal states, so a decision is never made on anything but
//! the newest state. An ENDed thread is locked for good, so a replica that has seen the END
//! answers `ALREADY_ENDED` without asking.
//!
//! Compare-and-sets travel in batches: one task per store takes whatever events wait and sends
//! them as one script call with many keys (each still its own compare-and-set), with at most
//! one call in flight per connection. A lone event goes at once, in a call of its own; under
//! load the calls grow, and Redis runs one script per batch instead of one per event.
//! `--state-batch 1` sends one key per call, for a Cluster (or its proxy), which refuses keys of
//! several slots in one script; the first such refusal (CROSSSLOT) makes the store do so too.
//!
//! When Redis is down or slower than the operation timeout, `--state-fail open` decides from
//! the local copy and marks the verdict degraded; ENDs and crisis locks learned that way are
//! written back (merged, by CAS, never overwriting newer state) when Redis answers again.
//! `--state-fail closed` answers `UNAVAILABLE` instead.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, ServerErrorKind, Value};
use tokio::sync::{mpsc, oneshot, watch};

use super::{ThreadKey, ThreadStore};
use crate::api::EventError;
use crate::policy::ThreadState;
use crate::telemetry::Metrics;

/// What to do when Redis cannot answer in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailMode {
    /// Decide from the local copy; the verdict says `degraded`.
    Open,
    /// Answer `UNAVAILABLE`; health reports NOT_SERVING while Redis is unreachable.
    Closed,
}

impl std::str::FromStr for FailMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "open" => Ok(FailMode::Open),
            "closed" => Ok(FailMode::Closed),
            other => Err(format!("{other:?}: expected open or closed")),
        }
    }
}

/// How to reach Redis, and how long to wait for it.
#[derive(Clone)]
pub struct SharedConfig {
    /// `redis://HOST:PORT[/DB]` or `rediss://…` (TLS).
    pub url: String,
    /// Password (from a file or the environment; never the command line).
    pub password: Option<String>,
    /// CA certificate (PEM) that a `rediss://` server's certificate must chain to; without it,
    /// the system's roots and the webpki roots.
    pub tls_ca: Option<Vec<u8>>,
    pub fail: FailMode,
    /// Deadline of one Redis operation; past it the event is decided as `fail` says.
    pub timeout: Duration,
    /// Multiplexed connections (each pipelines every request sent on it).
    pub connections: usize,
    /// Most compare-and-sets in one script call (1: a call per event).
    pub batch: usize,
    /// Expiry of an ordinary thread's key.
    pub idle_ttl: Duration,
    /// Expiry of an ENDed or crisis thread's key.
    pub locked_ttl: Duration,
}

impl std::fmt::Debug for SharedConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedConfig")
            .field("url", &redact(&self.url))
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("fail", &self.fail)
            .field("timeout", &self.timeout)
            .field("connections", &self.connections)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

/// The URL without any user:password part.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://<redacted>@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

impl SharedConfig {
    /// Defaults for `url`: fail open, 50 ms per operation, 4 connections, batches of up to
    /// 64 events, the store's TTLs.
    pub fn new(url: impl Into<String>) -> SharedConfig {
        SharedConfig {
            url: url.into(),
            password: None,
            tls_ca: None,
            fail: FailMode::Open,
            timeout: Duration::from_millis(50),
            connections: 4,
            batch: DEFAULT_BATCH,
            idle_ttl: Duration::from_secs(24 * 3600),
            locked_ttl: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// Why Redis did not answer, as counted (`threadwarden_state_errors_total{cause}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    Timeout,
    Connection,
    Server,
    Decode,
    Conflicts,
}

impl Cause {
    pub const ALL: [Cause; 5] = [
        Cause::Timeout,
        Cause::Connection,
        Cause::Server,
        Cause::Decode,
        Cause::Conflicts,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Cause::Timeout => "timeout",
            Cause::Connection => "connection",
            Cause::Server => "server",
            Cause::Decode => "decode",
            Cause::Conflicts => "conflicts",
        }
    }
}

impl From<redis::RedisError> for Cause {
    fn from(e: redis::RedisError) -> Cause {
        if e.is_timeout() {
            Cause::Timeout
        } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
            Cause::Connection
        } else {
            Cause::Server
        }
    }
}

/// Compare-and-set on each key: for `KEYS[i]`, write `ARGV[3i-1]` (expiring in `ARGV[3i]` ms)
/// if the value's version prefix is `ARGV[3i-2]` ('' for "absent"). Returns one answer per
/// key: 1 when written, else the current value (nil if absent).
const CAS: &str = r"
local out = {}
for i = 1, #KEYS do
  local expected = ARGV[3 * i - 2]
  local cur = redis.call('GET', KEYS[i])
  if cur and string.sub(cur, 1, 8) ~= expected then
    out[i] = cur
  elseif not cur and expected ~= '' then
    out[i] = false
  else
    redis.call('SET', KEYS[i], ARGV[3 * i - 1], 'PX', ARGV[3 * i])
    out[i] = 1
  end
end
return out
";

/// Default of `--state-batch`.
pub const DEFAULT_BATCH: usize = 64;

/// Re-decisions of one event before the backend counts as unavailable for it.
const MAX_ATTEMPTS: usize = 16;
/// How often the background task checks Redis (and writes back locks learned while degraded).
const CHECK_INTERVAL: Duration = Duration::from_millis(250);

enum Cas {
    Written,
    Conflict(Option<(u64, ThreadState)>),
}

/// What `create` found.
pub enum Created<T> {
    /// The state was created; `f`'s result, and whether it was decided from the local copy.
    Done(T, bool),
    /// The key already holds this state.
    Exists(ThreadState),
}

/// The connections and what every call on them needs; shared with the batching task.
struct Link {
    conns: Vec<ConnectionManager>,
    next: AtomicUsize,
    cas: redis::Script,
    /// Set when Redis refused a call over keys of several slots (CROSSSLOT: a Cluster, or a
    /// proxy in front of one): from then on a call carries one key.
    single: AtomicBool,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

/// One compare-and-set waiting for its batch. Held inline (no allocation but the reply's):
/// jobs are made on the stream's worker and dropped on the batching task's.
struct Job {
    key: KeyBytes,
    /// The version expected (`None`: the key must be absent).
    expected: Option<[u8; 8]>,
    value: Encoded,
    ttl_ms: u64,
    reply: oneshot::Sender<Result<Value, Cause>>,
}

/// A thread's Redis key, `tw:{<32 hex digits>}`.
type KeyBytes = [u8; 37];

/// Room for an encoded value: 8 bytes of version and the postcard state.
const VALUE_CAP: usize = 8 + MAX_STATE_BYTES;

/// The most bytes a postcard-encoded `ThreadState` takes (every varint at its longest: 80;
/// `policy::state` tests that it fits).
pub const MAX_STATE_BYTES: usize = 88;

/// A value as Redis holds it (see `encode`).
#[derive(Clone, Copy)]
struct Encoded {
    buf: [u8; VALUE_CAP],
    len: usize,
}

impl Encoded {
    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn version(&self) -> u64 {
        u64::from_le_bytes(self.buf[..8].try_into().expect("8 bytes"))
    }
}

/// The Redis backend. Cheap to share as `Arc<SharedStore>`.
pub struct SharedStore {
    link: Arc<Link>,
    /// The batching task's queue, started by the first compare-and-set.
    jobs: std::sync::OnceLock<mpsc::UnboundedSender<Job>>,
    config: SharedConfig,
    /// Threads with a lock (END, crisis) learned while Redis was away, to write back.
    dirty: Mutex<HashSet<ThreadKey>>,
    up: watch::Sender<bool>,
    metrics: Arc<Metrics>,
}

impl SharedStore {
    /// Connects lazily (the first operation dials): a sidecar starts even while Redis is down.
    pub fn connect(config: SharedConfig, metrics: Arc<Metrics>) -> Result<SharedStore, String> {
        let mut info = config
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| format!("--state-backend {}: {e}", redact(&config.url)))?;
        // One small request per event, each awaited: Nagle's algorithm (redis-rs's default)
        // would hold a request back until the previous one is acknowledged.
        info = info.set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        if let Some(p) = &config.password {
            let settings = info.redis_settings().clone().set_password(p);
            info = info.set_redis_settings(settings);
        }
        let client = match &config.tls_ca {
            Some(ca) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            ),
            None => redis::Client::open(info),
        }
        .map_err(|e| format!("--state-backend {}: {e}", redact(&config.url)))?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout.max(Duration::from_millis(100))))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conns = (0..config.connections.max(1))
            .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), manager.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("--state-backend {}: {e}", redact(&config.url)))?;
        Ok(SharedStore {
            link: Arc::new(Link {
                conns,
                next: AtomicUsize::new(0),
                cas: redis::Script::new(CAS),
                single: AtomicBool::new(false),
                timeout: config.timeout,
                metrics: metrics.clone(),
            }),
            jobs: std::sync::OnceLock::new(),
            config,
            dirty: Mutex::new(HashSet::new()),
            up: watch::Sender::new(true),
            metrics,
        })
    }

    /// The configuration (for logging: `Debug` redacts the password).
    pub fn config(&self) -> &SharedConfig {
        &self.config
    }

    /// True while Redis answers; changes are published (health in `closed` mode follows it).
    pub fn reachable(&self) -> watch::Receiver<bool> {
        self.up.subscribe()
    }

    /// Threads whose locks wait to be written back.
    pub fn pending_writebacks(&self) -> usize {
        self.dirty.lock().expect("dirty set").len()
    }

    /// Queues a thread decided without Redis for write-back if it holds a lock.
    fn mark_if_locked(&self, key: ThreadKey, state: &ThreadState) {
        if state.ended() || state.crisis_suspected() {
            self.dirty.lock().expect("dirty set").insert(key);
        }
    }

    fn ttl_ms(&self, state: &ThreadState) -> u64 {
        let ttl = if state.ended() || state.crisis_suspected() {
            self.config.locked_ttl.max(self.config.idle_ttl)
        } else {
            self.config.idle_ttl
        };
        (ttl.as_millis() as u64).max(1)
    }

    /// One compare-and-set, sent in the next batch. A dropped connection is retried once on
    /// another: safe, because if the first attempt did write, the retry finds the new version,
    /// conflicts, and the event is decided again on the state that holds it (the replay ring
    /// answers it).
    async fn cas(
        &self,
        key: ThreadKey,
        expected: Option<u64>,
        state: &ThreadState,
    ) -> Result<Cas, Cause> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            key: key_bytes(key),
            expected: expected.map(u64::to_le_bytes),
            value: encode(state)?,
            ttl_ms: self.ttl_ms(state),
            reply,
        };
        let queue = self.jobs.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(batch_jobs(self.link.clone(), rx, self.config.batch.max(1)));
            tx
        });
        queue.send(job).map_err(|_| Cause::Connection)?;
        // The batch's call has its own deadline per attempt; this one bounds the wait in the
        // queue too (behind at most one call per connection), so a stuck queue cannot hold an
        // event for longer.
        let reply = match tokio::time::timeout(self.config.timeout * 2, answer).await {
            Err(_) => return Err(Cause::Timeout),
            Ok(Err(_)) => return Err(Cause::Connection),
            Ok(Ok(reply)) => reply,
        };
        match reply? {
            Value::Int(1) => Ok(Cas::Written),
            Value::BulkString(bytes) => Ok(Cas::Conflict(Some(decode(&bytes)?))),
            Value::Nil => Ok(Cas::Conflict(None)),
            _ => Err(Cause::Server),
        }
    }

    async fn read_raw(&self, key: ThreadKey) -> Result<Option<(u64, ThreadState)>, Cause> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(redis_key(key));
        let cmd = &cmd;
        let reply = self
            .link
            .retried(|mut con| async move { cmd.query_async::<Option<Vec<u8>>>(&mut con).await })
            .await;
        reply?.map(|b| decode(&b)).transpose()
    }

    /// `Err` in `closed` mode, after counting the cause; `Ok` means "decide locally".
    fn fail(&self, cause: Cause) -> Result<(), EventError> {
        self.metrics.backend.error(cause);
        if cause != Cause::Conflicts {
            self.up.send_if_modified(|up| std::mem::replace(up, false));
        }
        match self.config.fail {
            FailMode::Open => {
                self.metrics.backend.degraded();
                Ok(())
            }
            FailMode::Closed => Err(EventError::Unavailable(format!(
                "the shared thread state (Redis) is unavailable ({}): retry",
                cause.name()
            ))),
        }
    }

    /// Decides on the thread's state by compare-and-set: runs `f` on a copy of the newest
    /// version and writes the result only if no other writer came between (else runs `f`
    /// again on the newer state). Returns `f`'s result and whether it was decided from the
    /// local copy because Redis was away (`open` mode).
    pub async fn update<T>(
        &self,
        local: &ThreadStore,
        key: ThreadKey,
        mut f: impl FnMut(&mut ThreadState) -> T,
    ) -> Result<(T, bool), EventError> {
        // One look at the local copy: an END is for good, so it is answered from there without
        // a round trip; any other state is the first guess at what Redis holds.
        let mut ended = None;
        let cached = local
            .with_existing(key, |s| {
                if s.ended() {
                    ended = Some(f(s));
                    None
                } else {
                    Some(s.clone())
                }
            })
            .flatten();
        if let Some(out) = ended {
            self.metrics.backend.cached_ended();
            return Ok((out, false));
        }
        // The local copy's version is Redis's if no other replica wrote since.
        let (mut base, mut expected) = match cached {
            Some(s) => {
                // Encoding cannot fail (the state's longest encoding fits); were it to, the
                // guess "absent" only costs a conflict.
                let v = encode(&s).ok().map(|e| e.version());
                (s, v)
            }
            None => (ThreadState::default(), None),
        };
        let mut cause = Cause::Conflicts;
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                self.metrics.backend.conflict();
            }
            // `base` is replaced on a conflict and unused after any other outcome.
            let mut next = std::mem::take(&mut base);
            let out = f(&mut next);
            match self.cas(key, expected, &next).await {
                Ok(Cas::Written) => {
                    local.put(key, next);
                    self.up.send_if_modified(|up| !std::mem::replace(up, true));
                    return Ok((out, false));
                }
                Ok(Cas::Conflict(Some((version, state)))) => {
                    base = state;
                    expected = Some(version);
                }
                Ok(Cas::Conflict(None)) => {
                    base = ThreadState::default();
                    expected = None;
                }
                Err(c) => {
                    cause = c;
                    break;
                }
            }
        }
        self.fail(cause)?;
        let out = local.with_thread(key, |s| {
            let out = f(s);
            self.mark_if_locked(key, s);
            out
        });
        Ok((out, true))
    }

    /// Creates a thread (a fork's branch) unless its key exists; runs `f` on the new state.
    pub async fn create<T>(
        &self,
        local: &ThreadStore,
        key: ThreadKey,
        mut next: ThreadState,
        f: impl FnOnce(&mut ThreadState) -> T,
    ) -> Result<Created<T>, EventError> {
        let out = f(&mut next);
        match self.cas(key, None, &next).await {
            Ok(Cas::Written) => {
                local.put(key, next);
                Ok(Created::Done(out, false))
            }
            Ok(Cas::Conflict(Some((_, state)))) => Ok(Created::Exists(state)),
            // Not returned when no version is expected (the script writes an absent key); a
            // server that answers so is not one to trust with the branch.
            Ok(Cas::Conflict(None)) => Err(EventError::Unavailable(
                "the shared thread state changed during the fork: retry".into(),
            )),
            Err(cause) => {
                self.fail(cause)?;
                self.mark_if_locked(key, &next);
                match local.insert_new(key, next.clone(), |_| ()) {
                    Ok(()) => Ok(Created::Done(out, true)),
                    Err(_) => Ok(Created::Exists(local.get(key).unwrap_or(next))),
                }
            }
        }
    }

    /// The thread's state as Redis holds it (the local copy when Redis is away, `open` mode),
    /// and whether it came from the local copy.
    pub async fn read(
        &self,
        local: &ThreadStore,
        key: ThreadKey,
    ) -> Result<(Option<ThreadState>, bool), EventError> {
        match self.read_raw(key).await {
            Ok(found) => Ok((
                found.map(|(_, state)| {
                    local.put(key, state.clone());
                    state
                }),
                false,
            )),
            Err(cause) => {
                self.fail(cause)?;
                Ok((local.get(key), true))
            }
        }
    }

    /// Pings Redis on every connection (which also makes a broken one reconnect): true if
    /// all answered in time.
    pub async fn ping(&self) -> bool {
        let mut ok = true;
        for con in &self.link.conns {
            let mut con = con.clone();
            ok &= self
                .link
                .op(redis::cmd("PING").query_async::<String>(&mut con))
                .await
                .is_ok();
        }
        self.up
            .send_if_modified(|up| std::mem::replace(up, ok) != ok);
        self.metrics.backend.set_up(ok);
        ok
    }

    /// Writes back the locks learned while Redis was away: for each such thread, the newest
    /// state in Redis takes on the local END and crisis flags (a CAS, so newer state is kept
    /// and only gains locks); an absent key gets the local state whole. Returns how many
    /// threads were written back; stops at the first Redis error.
    pub async fn write_back(&self, local: &ThreadStore) -> usize {
        let keys: Vec<ThreadKey> = self
            .dirty
            .lock()
            .expect("dirty set")
            .iter()
            .copied()
            .collect();
        let mut written = 0;
        for key in keys {
            let Some(mine) = local.get(key) else {
                self.dirty.lock().expect("dirty set").remove(&key);
                continue;
            };
            let mut done = false;
            for _ in 0..MAX_ATTEMPTS {
                let current = match self.read_raw(key).await {
                    Ok(c) => c,
                    Err(_) => return written,
                };
                let (mut merged, expected) = match current {
                    Some((version, state)) => (state, Some(version)),
                    None => (mine.clone(), None),
                };
                if !merged.absorb_locks(&mine) && expected.is_some() {
                    done = true;
                    break;
                }
                match self.cas(key, expected, &merged).await {
                    Ok(Cas::Written) => {
                        local.put(key, merged);
                        self.metrics.backend.written_back();
                        written += 1;
                        done = true;
                        break;
                    }
                    Ok(Cas::Conflict(_)) => continue,
                    Err(_) => return written,
                }
            }
            if done {
                self.dirty.lock().expect("dirty set").remove(&key);
            }
        }
        written
    }

    /// Checks Redis every 250 ms, publishes whether it answers, and writes back pending locks
    /// when it does. Stops when the guard is dropped.
    pub fn spawn_monitor(self: &Arc<Self>, local: ThreadStore) -> MonitorGuard {
        let this = self.clone();
        MonitorGuard(tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHECK_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if this.ping().await && this.pending_writebacks() > 0 {
                    let n = this.write_back(&local).await;
                    if n > 0 {
                        tracing::info!(
                            threads = n,
                            "locks learned while Redis was away written back"
                        );
                    }
                }
            }
        }))
    }
}

impl Link {
    fn conn(&self) -> ConnectionManager {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        self.conns[i].clone()
    }

    /// Runs one Redis operation under the deadline, timing it.
    async fn op<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Cause> {
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, fut).await;
        self.metrics.backend.latency.observe(started.elapsed());
        match result {
            Err(_) => Err(Cause::Timeout),
            Ok(Err(e)) => Err(Cause::from(e)),
            Ok(Ok(v)) => Ok(v),
        }
    }

    /// Runs `run` on a connection under the deadline; a dropped connection is retried once,
    /// on the next connection.
    async fn retried<T, Fut>(&self, run: impl Fn(ConnectionManager) -> Fut) -> Result<T, Cause>
    where
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        match self.op(run(self.conn())).await {
            Err(Cause::Connection) => self.op(run(self.conn())).await,
            reply => reply,
        }
    }

    /// Sends `jobs` as one script call and hands each its answer. A Redis that refuses keys
    /// of several slots in one call gets them one call each, now and from then on.
    async fn send(&self, jobs: Vec<Job>) {
        let crossed = AtomicBool::new(false);
        let reply = self.call(&jobs, &crossed).await;
        self.metrics.backend.batch(jobs.len());
        if crossed.load(Ordering::Relaxed) && jobs.len() > 1 {
            for job in jobs {
                let reply = self.call(std::slice::from_ref(&job), &crossed).await;
                self.metrics.backend.batch(1);
                deliver(vec![job], reply);
            }
            return;
        }
        deliver(jobs, reply);
    }

    /// One script call over `jobs`. It is one `Cmd` (one buffer for every argument), not a
    /// `ScriptInvocation` (a buffer per argument, then copied into a `Cmd`); a Redis that lost
    /// the script (a restart) is sent it once. A CROSSSLOT refusal sets `crossed`, and makes
    /// every later call carry one key.
    async fn call(&self, jobs: &[Job], crossed: &AtomicBool) -> Result<Vec<Value>, Cause> {
        let mut cmd = redis::Cmd::with_capacity(
            3 + 4 * jobs.len(),
            64 + jobs.len() * (std::mem::size_of::<KeyBytes>() + 8 + VALUE_CAP + 24),
        );
        cmd.arg("EVALSHA").arg(self.cas.get_hash()).arg(jobs.len());
        for job in jobs {
            cmd.arg(&job.key);
        }
        for job in jobs {
            cmd.arg(job.expected.as_ref().map_or(&[][..], |e| &e[..]))
                .arg(job.value.as_bytes())
                .arg(job.ttl_ms);
        }
        let (cmd, script) = (&cmd, &self.cas);
        let single = &self.single;
        let answers = self
            .retried(|mut con| async move {
                let reply = match cmd.query_async::<Vec<Value>>(&mut con).await {
                    Err(e) if e.kind() == redis::ErrorKind::Server(ServerErrorKind::NoScript) => {
                        script.load_async(&mut con).await?;
                        cmd.query_async(&mut con).await
                    }
                    reply => reply,
                };
                if let Err(e) = &reply
                    && e.kind() == redis::ErrorKind::Server(ServerErrorKind::CrossSlot)
                    && !crossed.swap(true, Ordering::Relaxed)
                    && !single.swap(true, Ordering::Relaxed)
                {
                    tracing::warn!(
                        "Redis refused a compare-and-set call over keys of several slots \
                         (a Cluster): one key per call from now on (--state-batch 1 says so \
                         at start)"
                    );
                }
                reply
            })
            .await?;
        if answers.len() == jobs.len() {
            Ok(answers)
        } else {
            Err(Cause::Server)
        }
    }
}

/// Hands each job its answer from one call.
fn deliver(jobs: Vec<Job>, reply: Result<Vec<Value>, Cause>) {
    match reply {
        Ok(answers) => {
            for (job, answer) in jobs.into_iter().zip(answers) {
                let _ = job.reply.send(Ok(answer));
            }
        }
        Err(cause) => {
            for job in jobs {
                let _ = job.reply.send(Err(cause));
            }
        }
    }
}

/// The batching task: takes every job waiting (up to `batch`) whenever a connection has no
/// call in flight, and sends them as one call. Ends when the store is dropped, after the
/// calls in flight.
async fn batch_jobs(link: Arc<Link>, mut queue: mpsc::UnboundedReceiver<Job>, batch: usize) {
    let mut in_flight = FuturesUnordered::new();
    let mut jobs = Vec::new();
    loop {
        let limit = if link.single.load(Ordering::Relaxed) {
            1
        } else {
            batch
        };
        tokio::select! {
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            n = queue.recv_many(&mut jobs, limit), if in_flight.len() < link.conns.len() => {
                if n == 0 {
                    break;
                }
                let link = link.clone();
                // The next batch is sized like this one: a lone event does not allocate room
                // for `batch` jobs (~170 bytes each), and a busy queue does not grow by doubling.
                let ready = std::mem::replace(&mut jobs, Vec::with_capacity(n));
                in_flight.push(async move { link.send(ready).await });
            }
        }
    }
    while in_flight.next().await.is_some() {}
}

/// Stops the monitor task when dropped.
pub struct MonitorGuard(tokio::task::JoinHandle<()>);

impl Drop for MonitorGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The thread's Redis key: its 128-bit hash in a hash tag, so that every key of one thread
/// (today one) maps to one Cluster slot.
pub fn redis_key(key: ThreadKey) -> String {
    String::from_utf8(key_bytes(key).to_vec()).expect("ASCII")
}

/// `redis_key`, on the stack.
fn key_bytes(key: ThreadKey) -> KeyBytes {
    use std::io::Write;
    let mut out = [0; 37];
    write!(&mut out[..], "tw:{{{:032x}}}", key.to_u128()).expect("37 bytes");
    out
}

/// The value Redis holds for `state`: its version, a hash of the postcard bytes, then those
/// bytes. Equal states give equal values (postcard is deterministic; the replica's own clock,
/// meaningless elsewhere, is left out).
fn encode(state: &ThreadState) -> Result<Encoded, Cause> {
    let mut state = state.clone();
    state.last_active = 0;
    let mut out = Encoded {
        buf: [0; VALUE_CAP],
        len: 0,
    };
    let n = postcard::to_slice(&state, &mut out.buf[8..])
        .map_err(|_| Cause::Decode)?
        .len();
    let version = xxhash_rust::xxh3::xxh3_64(&out.buf[8..8 + n]);
    out.buf[..8].copy_from_slice(&version.to_le_bytes());
    out.len = 8 + n;
    Ok(out)
}

fn decode(bytes: &[u8]) -> Result<(u64, ThreadState), Cause> {
    if bytes.len() < 8 {
        return Err(Cause::Decode);
    }
    let version = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let state = postcard::from_bytes(&bytes[8..]).map_err(|_| Cause::Decode)?;
    Ok((version, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_without_the_local_clock() {
        let mut s = ThreadState::default();
        s.turn = 7;
        s.last_active = 1234;
        s.flags.set(crate::policy::Flags::ENDED);
        let value = encode(&s).unwrap();
        let bytes = value.as_bytes();
        let (v, back) = decode(bytes).unwrap();
        assert_eq!(v, value.version());
        assert_eq!(back.turn, 7);
        assert!(back.ended());
        assert_eq!(back.last_active, 0);
        assert_eq!(decode(&bytes[..5]).unwrap_err(), Cause::Decode);
    }

    #[test]
    fn versions_name_the_content_not_the_clock() {
        let mut a = ThreadState::default();
        a.turn = 3;
        let mut b = a.clone();
        b.last_active = 99;
        // What another replica wrote is recognised from the local copy alone.
        assert_eq!(encode(&a).unwrap().version(), encode(&b).unwrap().version());
        assert_eq!(
            encode(&a).unwrap().as_bytes(),
            encode(&b).unwrap().as_bytes()
        );
        b.turn = 4;
        assert_ne!(encode(&a).unwrap().version(), encode(&b).unwrap().version());
        let (v, back) = decode(encode(&b).unwrap().as_bytes()).unwrap();
        assert_eq!(
            v,
            encode(&back).unwrap().version(),
            "decoding then encoding keeps the version"
        );
    }

    #[test]
    fn keys_are_hash_tagged_hashes() {
        let k = ThreadKey::new("tenant", "thread-1");
        let key = redis_key(k);
        assert!(key.starts_with("tw:{") && key.ends_with('}'), "{key}");
        assert!(!key.contains("thread-1") && !key.contains("tenant"));
        assert_eq!(key.len(), 4 + 32 + 1);
        assert_eq!(key.as_bytes(), key_bytes(k));
        assert_eq!(key, format!("tw:{{{:032x}}}", k.to_u128()));
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact("redis://user:secret@10.0.0.1:6379/2"),
            "redis://<redacted>@10.0.0.1:6379/2"
        );
        assert_eq!(redact("redis://10.0.0.1:6379"), "redis://10.0.0.1:6379");
        let c = SharedConfig {
            password: Some("hunter2".into()),
            ..SharedConfig::new("rediss://a:hunter2@h:1")
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}

//! `ThreadStore`: every thread's `ThreadState`, keyed by a 128-bit hash of (tenant, thread).
//!
//! Owns idle-TTL and capacity eviction (least recently active first, locked and crisis threads
//! last), the sweeper task, and the snapshot file. Whoever needs to know what a forgotten thread
//! held (the welfare figures) registers one `on_forget` hook; it runs under the shard lock, so it
//! must be quick and never block: count, or queue a record without waiting. Must not hold a map entry across `.await`:
//! every access is a closure run under the shard lock, which is why a sync lock is right here
//! (as mini-redis argues for its `Db`).

pub mod shared;
mod snapshot;

use std::hash::{BuildHasherDefault, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::policy::ThreadState;

pub use snapshot::SnapshotError;

/// A thread's identity: a 128-bit hash of (tenant_id, thread_id). Never the raw ids.
///
/// Held as two `u64` halves, high half first so that the derived order is the `u128`'s. A `u128`
/// field is 16-byte aligned, which would pad every (key, state) slot of the map from 88 to 96
/// bytes: 8 bytes per bucket, ~17 bytes per thread at a million threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ThreadKey([u64; 2]);

impl ThreadKey {
    /// Hashes a (tenant, thread) pair: the thread id, seeded by a hash of the tenant, so pairs
    /// cannot collide by moving bytes between the two ids. Two one-shot hashes, no buffer.
    pub fn new(tenant: &str, thread: &str) -> ThreadKey {
        let seed = xxhash_rust::xxh3::xxh3_64(tenant.as_bytes());
        ThreadKey::from_u128(xxhash_rust::xxh3::xxh3_128_with_seed(
            thread.as_bytes(),
            seed,
        ))
    }

    /// The key of a 128-bit hash.
    pub const fn from_u128(n: u128) -> ThreadKey {
        ThreadKey([(n >> 64) as u64, n as u64])
    }

    /// The 128-bit hash.
    pub const fn to_u128(self) -> u128 {
        (self.0[0] as u128) << 64 | self.0[1] as u128
    }

    /// A stable 64-bit hash, for rollout buckets.
    pub fn rollout_hash(self) -> u64 {
        self.0[0]
    }
}

impl std::hash::Hash for ThreadKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0[0] ^ self.0[1]);
    }
}

/// The keys are already uniform hashes: use their bits as the table hash.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Map = DashMap<ThreadKey, ThreadState, BuildHasherDefault<KeyHasher>>;

/// Limits of the store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Threads idle for longer are forgotten.
    pub idle_ttl: Duration,
    /// Ended and crisis threads idle for longer are forgotten (forgetting them loses a lock).
    pub locked_ttl: Duration,
    /// Above this many threads, the least recently active are evicted.
    pub capacity: usize,
    /// How often the sweeper runs (it also runs when an insert finds the store full).
    pub sweep_interval: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            idle_ttl: Duration::from_secs(24 * 3600),
            locked_ttl: Duration::from_secs(30 * 24 * 3600),
            capacity: 1_000_000,
            sweep_interval: Duration::from_secs(30),
        }
    }
}

/// A cheap, cloneable handle to the shared thread map.
#[derive(Clone)]
pub struct ThreadStore {
    shared: Arc<Shared>,
}

struct Shared {
    map: Map,
    /// The thread count as of the last recount, plus the inserts since: an upper bound on
    /// `map.len()` (give or take inserts racing a recount) for one atomic add per insert, where
    /// `map.len()` read-locks all 64 shards. Recounted when it passes the capacity and after
    /// every sweep.
    len_bound: AtomicUsize,
    config: StoreConfig,
    epoch: Instant,
    evictions: AtomicU64,
    full: Notify,
    on_forget: OnceLock<ForgetHook>,
}

/// Called with each thread the store forgets (idle TTL or capacity), under its shard's lock.
pub type ForgetHook = Box<dyn Fn(ThreadKey, &ThreadState) + Send + Sync>;

/// A branch could not be created because the thread id is taken.
#[derive(Debug, PartialEq, Eq)]
pub struct AlreadyExists;

impl ThreadStore {
    /// An empty store.
    pub fn new(config: StoreConfig) -> ThreadStore {
        // Pre-sized to the capacity: the table never rehashes (no doubling spike at a million
        // threads). Untouched pages cost address space only, but keys are uniform hashes, so
        // most pages are resident from ~100k threads on (~2 threads per 4 KiB page in a table
        // sized for a million).
        // 64 shards: a sweep or snapshot holds one shard's lock at a time, so more shards mean
        // shorter holds (about 16k threads each at a million).
        let map = Map::with_capacity_and_hasher_and_shard_amount(
            config.capacity,
            BuildHasherDefault::default(),
            64,
        );
        ThreadStore {
            shared: Arc::new(Shared {
                map,
                len_bound: AtomicUsize::new(0),
                config,
                epoch: Instant::now(),
                evictions: AtomicU64::new(0),
                full: Notify::new(),
                on_forget: OnceLock::new(),
            }),
        }
    }

    /// Sets the hook told of every thread the store forgets; only the first call takes effect.
    pub fn on_forget(&self, hook: ForgetHook) {
        let _ = self.shared.on_forget.set(hook);
    }

    /// Seconds since the store was created (the clock of `ThreadState::last_active`).
    pub fn now(&self) -> u32 {
        self.shared.epoch.elapsed().as_secs() as u32
    }

    /// Runs `f` on the thread's state, creating it if absent.
    pub fn with_thread<R>(&self, key: ThreadKey, f: impl FnOnce(&mut ThreadState) -> R) -> R {
        if let Some(mut state) = self.shared.map.get_mut(&key) {
            return f(&mut state);
        }
        let result = {
            let mut state = self.shared.map.entry(key).or_default();
            state.last_active = self.now();
            f(&mut state)
        };
        self.after_insert();
        result
    }

    /// Inserts a new branch and runs `f` on it; fails if the key is taken.
    pub fn insert_new<R>(
        &self,
        key: ThreadKey,
        state: ThreadState,
        f: impl FnOnce(&mut ThreadState) -> R,
    ) -> Result<R, AlreadyExists> {
        let result = match self.shared.map.entry(key) {
            Entry::Occupied(_) => return Err(AlreadyExists),
            Entry::Vacant(v) => f(&mut v.insert(state)),
        };
        self.after_insert();
        Ok(result)
    }

    /// Runs `f` on the thread's state if it exists.
    pub fn with_existing<R>(
        &self,
        key: ThreadKey,
        f: impl FnOnce(&mut ThreadState) -> R,
    ) -> Option<R> {
        self.shared.map.get_mut(&key).map(|mut s| f(&mut s))
    }

    /// Sets the thread's state, creating it if absent (the shared backend's local copy).
    pub fn put(&self, key: ThreadKey, mut state: ThreadState) {
        state.last_active = self.now();
        if self.shared.map.insert(key, state).is_none() {
            self.after_insert();
        }
    }

    /// A copy of the thread's state, if it exists.
    pub fn get(&self, key: ThreadKey) -> Option<ThreadState> {
        self.shared.map.get(&key).map(|s| s.clone())
    }

    /// Number of threads held.
    pub fn len(&self) -> usize {
        self.shared.map.len()
    }

    /// True if no thread is held.
    pub fn is_empty(&self) -> bool {
        self.shared.map.is_empty()
    }

    /// Threads evicted so far (idle or over capacity).
    pub fn evictions(&self) -> u64 {
        self.shared.evictions.load(Ordering::Relaxed)
    }

    /// Wakes the sweeper if the insert took the store over its capacity. Counts the threads
    /// only when the bound says it may have.
    fn after_insert(&self) {
        let capacity = self.shared.config.capacity;
        if self.shared.len_bound.fetch_add(1, Ordering::Relaxed) < capacity {
            return;
        }
        if self.recount() > capacity {
            self.shared.full.notify_one();
        }
    }

    /// Counts the threads and resets the insert bound to the count.
    fn recount(&self) -> usize {
        let len = self.shared.map.len();
        self.shared.len_bound.store(len, Ordering::Relaxed);
        len
    }

    /// Drops threads idle for longer than their TTL; returns how many.
    pub fn evict_idle(&self) -> usize {
        let secs = |d: Duration| d.as_secs().min(u64::from(u32::MAX)) as u32;
        let ttl = secs(self.shared.config.idle_ttl);
        let locked_ttl = secs(self.shared.config.locked_ttl).max(ttl);
        let now = self.now();
        let before = self.shared.map.len();
        let hook = self.shared.on_forget.get();
        self.shared.map.retain(|key, s| {
            let limit = if s.ended() || s.crisis_kind().is_some() {
                locked_ttl
            } else {
                ttl
            };
            let keep = now.saturating_sub(s.last_active) <= limit;
            if !keep && let Some(hook) = hook {
                hook(*key, s);
            }
            keep
        });
        let evicted = before.saturating_sub(self.recount());
        self.shared
            .evictions
            .fetch_add(evicted as u64, Ordering::Relaxed);
        evicted
    }

    /// Evicts the least recently active threads down to the capacity; returns how many.
    ///
    /// Locked and crisis threads go last: forgetting them loses an END lock or a crisis
    /// exemption, forgetting an ordinary thread loses only escalation counters.
    pub fn evict_over_capacity(&self) -> usize {
        let capacity = self.shared.config.capacity;
        let len = self.recount();
        if len <= capacity {
            return 0;
        }
        // Evict a little below the bound so that a full store is not swept on every insert.
        let excess = len - capacity + capacity / 64;
        let mut candidates: Vec<(bool, u32, ThreadKey)> = self
            .shared
            .map
            .iter()
            .map(|e| {
                let s = e.value();
                let protected = s.ended() || s.crisis_kind().is_some();
                (protected, s.last_active, *e.key())
            })
            .collect();
        let excess = excess.min(candidates.len());
        if excess < candidates.len() {
            candidates.select_nth_unstable(excess);
        }
        let mut evicted = 0;
        let hook = self.shared.on_forget.get();
        for (_, _, key) in &candidates[..excess] {
            if let Some((key, state)) = self.shared.map.remove(key) {
                if let Some(hook) = hook {
                    hook(key, &state);
                }
                evicted += 1;
            }
        }
        self.recount();
        self.shared
            .evictions
            .fetch_add(evicted as u64, Ordering::Relaxed);
        evicted
    }

    /// Starts the sweeper; it stops when the returned guard is dropped.
    pub fn spawn_sweeper(&self) -> SweeperGuard {
        let store = self.clone();
        let handle = tokio::spawn(async move {
            let mut tick = tokio::time::interval(store.shared.config.sweep_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = store.shared.full.notified() => {}
                }
                // A sweep scans the whole map: run it on the blocking pool, never on an async
                // worker, so requests scheduled there are not held up behind it.
                let sweeping = store.clone();
                let swept = tokio::task::spawn_blocking(move || {
                    (sweeping.evict_idle(), sweeping.evict_over_capacity())
                })
                .await;
                if let Ok((idle, over)) = swept.as_ref().map(|&(i, o)| (i, o)) {
                    tracing::debug!(idle, over, threads = store.len(), "swept threads");
                }
            }
        });
        SweeperGuard(handle)
    }

    /// Writes every thread's state to `path` atomically (temp file, fsync, rename), with the
    /// labels of the model slots the states name (`labels[i]` is slot `i + 1`'s).
    pub fn snapshot_to(&self, path: &Path, labels: &[&str]) -> Result<usize, SnapshotError> {
        snapshot::write(&self.shared.map, path, labels)
    }

    /// Loads threads from a snapshot written by `snapshot_to`; returns how many. `slot_of`
    /// gives this process's slot for each label the file names, and every state's model slot
    /// is renumbered to it (so a label keeps its threads whatever the order of registration).
    pub fn restore_from(
        &self,
        path: &Path,
        slot_of: impl Fn(&str) -> u8,
    ) -> Result<usize, SnapshotError> {
        let now = self.now();
        let restored = snapshot::read(path, slot_of, |key, mut state| {
            // The snapshot's clock was another process's: restart every thread's idle time.
            state.last_active = now;
            self.shared.map.insert(key, state);
        });
        self.recount();
        restored
    }
}

/// Stops the sweeper task when dropped.
pub struct SweeperGuard(tokio::task::JoinHandle<()>);

impl Drop for SweeperGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests;

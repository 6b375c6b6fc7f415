//! Store tests: TTL (with paused time), capacity eviction order, snapshot round trip.

use super::*;
use crate::policy::{Flags, ThreadState};

fn store(capacity: usize, ttl_secs: u64) -> ThreadStore {
    ThreadStore::new(StoreConfig {
        idle_ttl: Duration::from_secs(ttl_secs),
        locked_ttl: Duration::from_secs(ttl_secs * 10),
        capacity,
        sweep_interval: Duration::from_secs(1),
    })
}

fn touch(store: &ThreadStore, key: ThreadKey) {
    let now = store.now();
    store.with_thread(key, |s| s.last_active = now);
}

#[test]
fn keys_separate_tenants_and_ids() {
    assert_ne!(ThreadKey::new("a", "bc"), ThreadKey::new("ab", "c"));
    assert_ne!(ThreadKey::new("t1", "x"), ThreadKey::new("t2", "x"));
    assert_eq!(ThreadKey::new("t", "x"), ThreadKey::new("t", "x"));
}

#[test]
fn keys_keep_the_u128_value_and_order() {
    let pairs = [
        (0u128, 1u128),
        (1, 1 << 64),
        (u128::from(u64::MAX), 1 << 64),
        (0x0123_4567_89ab_cdef_fedc_ba98_7654_3210, u128::MAX),
    ];
    for (a, b) in pairs {
        assert_eq!(ThreadKey::from_u128(a).to_u128(), a);
        assert_eq!(ThreadKey::from_u128(b).to_u128(), b);
        assert!(
            ThreadKey::from_u128(a) < ThreadKey::from_u128(b),
            "{a:#x} < {b:#x}"
        );
    }
    let k = ThreadKey::from_u128(0xaaaa_0000_0000_0000_5555_0000_0000_0000);
    assert_eq!(k.rollout_hash(), 0xaaaa_0000_0000_0000);
}

/// The map's bucket is a (key, state) pair: 8-byte alignment keeps it at 88 bytes, where a
/// 16-byte-aligned key would pad it to 96 (memory per thread is ~2.1 buckets at a million).
#[test]
fn a_map_slot_is_not_padded() {
    let slot = std::mem::size_of::<(ThreadKey, ThreadState)>();
    assert_eq!(
        slot,
        std::mem::size_of::<ThreadKey>() + std::mem::size_of::<ThreadState>()
    );
    assert!(slot <= 88, "{slot}");
}

#[tokio::test(start_paused = true)]
async fn idle_threads_expire_after_the_ttl() {
    let s = store(100, 60);
    touch(&s, ThreadKey::from_u128(1));
    tokio::time::advance(Duration::from_secs(45)).await;
    touch(&s, ThreadKey::from_u128(2));
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(s.evict_idle(), 1);
    assert!(s.get(ThreadKey::from_u128(1)).is_none());
    assert!(s.get(ThreadKey::from_u128(2)).is_some());
    assert_eq!(s.evictions(), 1);
}

#[tokio::test(start_paused = true)]
async fn locked_and_crisis_threads_outlive_the_idle_ttl() {
    let s = store(100, 60);
    touch(&s, ThreadKey::from_u128(1));
    touch(&s, ThreadKey::from_u128(2));
    touch(&s, ThreadKey::from_u128(3));
    s.with_thread(ThreadKey::from_u128(2), |st| st.flags.set(Flags::ENDED));
    s.with_thread(ThreadKey::from_u128(3), |st| {
        st.flags.set(Flags::CRISIS_SELF)
    });
    tokio::time::advance(Duration::from_secs(120)).await;
    assert_eq!(s.evict_idle(), 1);
    assert!(s.get(ThreadKey::from_u128(2)).is_some() && s.get(ThreadKey::from_u128(3)).is_some());
    tokio::time::advance(Duration::from_secs(600)).await;
    assert_eq!(s.evict_idle(), 2, "gone after the locked TTL");
}

#[tokio::test(start_paused = true)]
async fn the_sweeper_evicts_on_its_own_and_stops_with_its_guard() {
    let s = store(100, 10);
    touch(&s, ThreadKey::from_u128(1));
    let guard = s.spawn_sweeper();
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert!(s.get(ThreadKey::from_u128(1)).is_none(), "swept");
    drop(guard);
    touch(&s, ThreadKey::from_u128(2));
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        s.get(ThreadKey::from_u128(2)).is_some(),
        "no sweeper after the guard dropped"
    );
}

#[tokio::test(start_paused = true)]
async fn over_capacity_evicts_least_recent_and_keeps_locked_threads() {
    let s = store(64, 3600);
    for i in 0..64u128 {
        touch(&s, ThreadKey::from_u128(i));
        if i == 0 {
            // The oldest thread is locked: it must outlive newer ordinary threads.
            s.with_thread(ThreadKey::from_u128(0), |st| st.flags.set(Flags::ENDED));
        }
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    for i in 64..80u128 {
        touch(&s, ThreadKey::from_u128(i));
    }
    assert_eq!(s.len(), 80);
    let evicted = s.evict_over_capacity();
    assert_eq!(evicted, 80 - 64 + 1);
    assert!(s.len() < 64);
    assert!(
        s.get(ThreadKey::from_u128(0)).is_some(),
        "locked thread kept"
    );
    assert!(
        s.get(ThreadKey::from_u128(1)).is_none(),
        "oldest ordinary thread evicted"
    );
    assert!(s.get(ThreadKey::from_u128(79)).is_some(), "newest kept");
}

#[tokio::test]
async fn snapshot_round_trip_keeps_ended_threads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.bin");
    let s = store(1000, 3600);
    for i in 0..500u128 {
        s.with_thread(ThreadKey::from_u128(i), |st| {
            st.turn = i as u32;
            st.exposures = 1000 + i as u16;
            st.set_model_slot((i % 32) as u8);
            if i % 2 == 0 {
                st.flags.set(Flags::ENDED);
            }
        });
    }
    assert_eq!(s.snapshot_to(&path, &["a", "b", "c"]).unwrap(), 500);
    assert!(
        !path.with_extension("tmp").exists(),
        "temp file renamed away"
    );
    // The restoring process numbers the labels its own way: c=1, a=2, b=5.
    let restored = store(1000, 3600);
    let slot_of = |l: &str| match l {
        "c" => 1,
        "a" => 2,
        "b" => 5,
        _ => panic!("{l}"),
    };
    assert_eq!(restored.restore_from(&path, slot_of).unwrap(), 500);
    for i in 0..500u128 {
        let st: ThreadState = restored.get(ThreadKey::from_u128(i)).unwrap();
        assert_eq!(st.turn, i as u32);
        assert_eq!(st.ended(), i % 2 == 0);
        assert_eq!(st.exposures, 1000 + i as u16, "exposures survive");
        let want = match i % 32 {
            1 => 2, // a
            2 => 5, // b
            3 => 1, // c
            _ => 0, // other, or a slot the file names no label for
        };
        assert_eq!(st.model_slot(), want, "the model keeps its label");
    }
}

/// A format-2 file (before the exposure count) is still read: its locks are kept.
#[tokio::test]
async fn a_format_2_snapshot_is_still_read() {
    use crate::policy::ThreadStateV2;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v2.bin");
    let mut bytes = b"TWSNAP02".to_vec();
    for i in 0..3u128 {
        let mut v2 = ThreadStateV2 {
            turn: 7 + i as u32,
            history_len: 8,
            recent_next: 3,
            ..ThreadStateV2::default()
        };
        v2.flags.set(Flags::ENDED | Flags::WARNED);
        let mut record = i.to_le_bytes().to_vec();
        record = postcard::to_extend(&v2, record).unwrap();
        bytes.extend_from_slice(&(record.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&record);
    }
    std::fs::write(&path, bytes).unwrap();
    let s = store(10, 10);
    assert_eq!(s.restore_from(&path, |_| 9).unwrap(), 3);
    let st = s.get(ThreadKey::from_u128(2)).unwrap();
    assert_eq!(st.turn, 9);
    assert!(st.ended() && st.flags.has(Flags::WARNED));
    assert_eq!((st.exposures, st.model_slot()), (0, 0));
}

/// The forget hook hears of every thread the store forgets, idle or over capacity, and of
/// nothing else.
#[tokio::test(start_paused = true)]
async fn the_forget_hook_sees_every_evicted_thread() {
    use std::sync::Mutex;
    let s = store(4, 60);
    let forgotten = Arc::new(Mutex::new(Vec::new()));
    let seen = forgotten.clone();
    s.on_forget(Box::new(move |key, st| {
        seen.lock().unwrap().push((key, st.exposures))
    }));
    for i in 0..3u128 {
        s.with_thread(ThreadKey::from_u128(i), |st| st.exposures = i as u16);
    }
    tokio::time::advance(Duration::from_secs(90)).await;
    for i in 3..9u128 {
        s.with_thread(ThreadKey::from_u128(i), |st| st.exposures = i as u16);
    }
    assert_eq!(s.evict_idle(), 3);
    let mut idle = forgotten.lock().unwrap().clone();
    idle.sort();
    assert_eq!(
        idle,
        (0..3u128)
            .map(|i| (ThreadKey::from_u128(i), i as u16))
            .collect::<Vec<_>>()
    );
    let evicted = s.evict_over_capacity();
    assert_eq!(forgotten.lock().unwrap().len(), 3 + evicted);
    assert!(evicted >= 2);
}

#[test]
fn corrupt_snapshots_are_rejected_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.bin");
    std::fs::write(&path, b"not a snapshot").unwrap();
    let s = store(10, 10);
    let err = s.restore_from(&path, |_| 0).unwrap_err().to_string();
    assert!(err.contains("bad.bin") && err.contains("header"), "{err}");
    let mut bytes = b"TWSNAP02".to_vec();
    bytes.extend_from_slice(&9999u32.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    let err = s.restore_from(&path, |_| 0).unwrap_err().to_string();
    assert!(err.contains("corrupt record 0"), "{err}");
}

#[test]
fn insert_new_refuses_a_taken_key() {
    let s = store(10, 10);
    touch(&s, ThreadKey::from_u128(5));
    assert_eq!(
        s.insert_new(ThreadKey::from_u128(5), ThreadState::default(), |_| ()),
        Err(AlreadyExists)
    );
    assert_eq!(
        s.insert_new(ThreadKey::from_u128(6), ThreadState::default(), |st| st
            .turn),
        Ok(0)
    );
}

/// An insert that takes the store over its capacity wakes the sweeper at once, not at its next
/// tick (an hour away here), and again after a sweep has recounted the threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insert_over_capacity_wakes_the_sweeper() {
    let s = ThreadStore::new(StoreConfig {
        idle_ttl: Duration::from_secs(3600),
        locked_ttl: Duration::from_secs(3600),
        capacity: 10,
        sweep_interval: Duration::from_secs(3600),
    });
    let _guard = s.spawn_sweeper();
    let settled = |s: &ThreadStore, want: usize| {
        let s = s.clone();
        async move {
            for _ in 0..500 {
                if s.len() == want {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            false
        }
    };
    for i in 0..10u128 {
        touch(&s, ThreadKey::from_u128(i));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(s.len(), 10, "at capacity, nothing is evicted");
    touch(&s, ThreadKey::from_u128(10));
    assert!(settled(&s, 10).await, "first overflow swept: {}", s.len());
    assert_eq!(s.evictions(), 1);
    for i in 11..13u128 {
        touch(&s, ThreadKey::from_u128(i));
    }
    assert!(settled(&s, 10).await, "second overflow swept: {}", s.len());
    assert_eq!(s.evictions(), 3);
}

//! Transparent huge pages for the classifier's tables: the scope that asks for them, and the
//! readings that tell whether the kernel gave them.
//!
//! The lexicon's automata are ~38 MB of transition tables that every message walks at
//! scattered places. With 4 KiB pages that is ~9,300 pages, far beyond the TLB, so between
//! messages (a sidecar at a few thousand events per second shares its cores with the network
//! stack and the chat server) most steps of the walk miss the TLB as well as the caches. Backed
//! by 2 MiB pages the same tables need ~20 TLB entries.
//!
//! This module holds no unsafe code: it only marks a scope. The binary's global allocator
//! (`src/huge_alloc.rs`, installed by `src/main.rs`) reads [`preferred`] and, for large
//! allocations made inside the scope, aligns them to 2 MiB and advises the kernel to back them
//! with huge pages (`MADV_HUGEPAGE`). Without that allocator (tests, benches, a library user) the
//! scope changes nothing. The pages cost no extra memory: the tables are written whole while
//! they are built, so they are resident either way; only the last partial 2 MiB of each table
//! stays in small pages.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

/// Allocations at least this large made inside [`prefer`] are placed on huge pages.
pub const MIN_BYTES: usize = 2 << 20;

thread_local! {
    static PREFER: Cell<bool> = const { Cell::new(false) };
}

/// Process-wide switch (`serve --huge-pages false`); on by default.
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns huge pages for [`prefer`]'s allocations on or off for the whole process; tables built
/// before the call keep the pages they have.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Runs `f` with large allocations on this thread placed on huge pages (when the binary's
/// allocator supports it and the kernel allows it). Nests.
pub fn prefer<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = PREFER.try_with(|p| p.set(self.0));
        }
    }
    let _restore = Restore(PREFER.with(|p| p.replace(true)));
    f()
}

/// Whether the current thread is inside [`prefer`]. Called by the global allocator: it neither
/// allocates nor panics, also while the thread is being torn down.
#[inline]
pub fn preferred() -> bool {
    ENABLED.load(Ordering::Relaxed) && PREFER.try_with(Cell::get).unwrap_or(false)
}

/// The kernel's transparent huge page mode (`always`, `madvise` or `never`), if readable.
/// Huge pages are given for [`prefer`]'s allocations under `always` and `madvise`.
pub fn thp_mode() -> Option<String> {
    let s = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").ok()?;
    selected(&s).map(str::to_owned)
}

/// The bracketed choice of a sysfs option list (`always [madvise] never` → `madvise`).
fn selected(list: &str) -> Option<&str> {
    let start = list.find('[')? + 1;
    let end = start + list[start..].find(']')?;
    Some(&list[start..end])
}

/// Anonymous memory of this process backed by transparent huge pages, in bytes
/// (`AnonHugePages` of `/proc/self/smaps_rollup`), if readable.
pub fn anon_huge_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/smaps_rollup").ok()?;
    anon_huge_kib(&s).map(|kib| kib * 1024)
}

fn anon_huge_kib(smaps: &str) -> Option<u64> {
    smaps
        .lines()
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scope_nests_and_restores() {
        assert!(!preferred());
        let inner = prefer(|| {
            assert!(preferred());
            prefer(preferred)
        });
        assert!(inner);
        assert!(!preferred(), "left on after the scope");
        let caught = std::panic::catch_unwind(|| prefer(|| panic!("inside")));
        assert!(caught.is_err());
        assert!(!preferred(), "left on after a panic inside the scope");
        // The process-wide switch; no other test reads it.
        set_enabled(false);
        assert!(!prefer(preferred), "the switch is off");
        set_enabled(true);
        assert!(prefer(preferred));
    }

    #[test]
    fn the_readings_parse() {
        assert_eq!(selected("always [madvise] never\n"), Some("madvise"));
        assert_eq!(selected("[always] madvise never"), Some("always"));
        assert_eq!(selected("always madvise never"), None);
        let rollup = "Rss:              146372 kB\nAnonHugePages:     36864 kB\nShmemPmdMapped:        0 kB\n";
        assert_eq!(anon_huge_kib(rollup), Some(36864));
        assert_eq!(anon_huge_kib("Rss: 1 kB\n"), None);
    }
}

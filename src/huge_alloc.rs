//! The binary's global allocator: the system allocator, except that large allocations made
//! inside `threadwarden::huge_pages::prefer` (the classifier's automata) are aligned to 2 MiB and
//! advised onto transparent huge pages.
//!
//! Not a module of the library, which forbids unsafe code: `src/main.rs` includes it as a module
//! of the binary, and `examples/cold_classify.rs` includes the same file by path, so both run
//! the allocator the sidecar runs.

use std::alloc::{GlobalAlloc, Layout, System};

use threadwarden::huge_pages;

/// The size and alignment of an x86-64 / aarch64 (4 KiB granule) transparent huge page.
const HUGE_PAGE: usize = 2 << 20;

/// `System`, placing large allocations on huge pages inside `huge_pages::prefer`.
pub struct HugeHint;

impl HugeHint {
    fn wants_huge(size: usize) -> bool {
        size >= huge_pages::MIN_BYTES && huge_pages::preferred()
    }

    /// A 2 MiB-aligned block from the system allocator, advised onto huge pages.
    ///
    /// # Safety
    /// As `GlobalAlloc::alloc`: `layout` has a non-zero size.
    unsafe fn alloc_huge(layout: Layout) -> *mut u8 {
        let Ok(aligned) = Layout::from_size_align(layout.size(), layout.align().max(HUGE_PAGE))
        else {
            return std::ptr::null_mut();
        };
        // SAFETY: `aligned` has the caller's non-zero size; `System` frees any block it hands
        // out with `free`, whatever its alignment, so `dealloc` below may pass a smaller one.
        let ptr = unsafe { System.alloc(aligned) };
        if !ptr.is_null() {
            // Whole huge pages only: the tail past the last 2 MiB boundary stays as it is.
            let len = layout.size() & !(HUGE_PAGE - 1);
            // SAFETY: `ptr..ptr + len` lies inside the block just allocated, and `ptr` is
            // page-aligned. `MADV_HUGEPAGE` is advice: it neither frees nor changes contents.
            // Failure (THP disabled, old kernel) leaves ordinary pages, which is correct.
            unsafe { libc::madvise(ptr.cast(), len, libc::MADV_HUGEPAGE) };
        }
        ptr
    }
}

// SAFETY: every block comes from `System` (directly or with a larger alignment), and `System`
// releases blocks of any alignment with `free`, so each method's contract is `System`'s.
unsafe impl GlobalAlloc for HugeHint {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if Self::wants_huge(layout.size()) {
            // SAFETY: forwarded contract.
            unsafe { Self::alloc_huge(layout) }
        } else {
            // SAFETY: forwarded contract.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if Self::wants_huge(layout.size()) {
            // SAFETY: forwarded contract; the block is `layout.size()` bytes long.
            unsafe {
                let ptr = Self::alloc_huge(layout);
                if !ptr.is_null() {
                    std::ptr::write_bytes(ptr, 0, layout.size());
                }
                ptr
            }
        } else {
            // SAFETY: forwarded contract.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` (see the impl's comment).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !Self::wants_huge(new_size) {
            // SAFETY: forwarded contract; `System.realloc` takes blocks of any alignment.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // A growing table inside the scope: move it onto huge pages (a copy, at build time).
        // SAFETY: `new_size` is non-zero and, with `layout.align()`, a valid layout (the
        // caller's contract); the copy stays inside both blocks; `ptr` is freed once.
        unsafe {
            let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
            let new = Self::alloc_huge(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                System.dealloc(ptr, layout);
            }
            new
        }
    }
}

//! What the cache-behaviour examples (`cold_classify`, `cold_parts`) share: the sidecar's
//! allocator, so that the classifier's tables land on the pages they get in the server,
//! positional arguments, and the load generator's user texts.

#[path = "../../../src/huge_alloc.rs"]
mod huge_alloc;

#[global_allocator]
static ALLOCATOR: huge_alloc::HugeHint = huge_alloc::HugeHint;

use threadwarden_bench::loadgen::corpus::{Corpus, Mix, Size};

/// The `n`th command-line argument as a number, or `default`.
pub fn arg(n: usize, default: usize) -> usize {
    std::env::args()
        .nth(n)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

/// The built-in corpus's user turns at `size` bytes, `harmful_percent` of them harmful.
pub fn user_texts(size: usize, harmful_percent: u32) -> Vec<String> {
    let mix = Mix {
        harmful_percent,
        assistant_percent: 0,
    };
    Corpus::builtin(Size::Fixed(size), mix)
        .entries
        .into_iter()
        .map(|e| e.text)
        .collect()
}

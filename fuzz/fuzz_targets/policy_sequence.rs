//! Fuzz target: `threadwarden::fuzz_harness::policy_sequence` (the invariants are documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = threadwarden::fuzz_harness::policy_sequence(data);
});

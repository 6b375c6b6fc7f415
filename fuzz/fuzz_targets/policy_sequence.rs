//! Fuzz target: `threadwarden_testkit::policy_sequence` (the invariants are documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = threadwarden_testkit::policy_sequence(data);
});

//! Fuzz target: `threadwarden::fuzz_harness::conversation_event` (the invariants are documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    threadwarden::fuzz_harness::conversation_event(data);
});

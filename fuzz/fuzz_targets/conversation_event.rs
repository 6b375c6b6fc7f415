//! Fuzz target: `threadwarden_testkit::conversation_event` (the invariants are documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    threadwarden_testkit::conversation_event(data);
});

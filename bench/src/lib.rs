//! threadwarden-bench: measuring the sidecar, kept out of the product.
//!
//! # Layout
//! - [`loadgen`]: the load generator (`threadwarden-bench loadgen`) that starts the product's
//!   `threadwarden serve` and this crate's echo baseline (`threadwarden-bench echo-server`) as
//!   child processes and reports every figure beside the baseline's, from the same run.
//!   - `loadgen::corpus`: the messages and the event generator, shared with the criterion
//!     benchmarks and the examples.
//!   - `loadgen::wire`: the raw codec and the answer scan.
//!   - `loadgen::client`: the load patterns; reads the servers through `loadgen::procs`.
//!   - `loadgen::procs`: the child servers and `/proc`.
//!   - `loadgen::echo`: the baseline server.
//!   - `loadgen::report`: tables, markdown, criterion results, targets.
//! - [`fake_guard`]: a stand-in guard model (`threadwarden-bench fake-guard`) answering `safe`
//!   after a fixed delay, for the cascade's benchmarks (scripts/bench-external.sh).
//! - `benches/micro.rs`: criterion microbenchmarks of the classifier, the policy, the store and
//!   the engine.
//! - `examples/`: memory per thread (`membench`), the soak client, the cache and instruction
//!   profiles (`cold_classify`, `cold_parts`, `profile_classify`, `profile_path`).
//!
//! It depends on the product's public API only; nothing here is linked into the sidecar.
#![forbid(unsafe_code)]

pub mod fake_guard;

pub mod loadgen;

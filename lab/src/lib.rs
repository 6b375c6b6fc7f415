//! threadwarden-lab: measuring and training the classifier, kept out of the product.
//!
//! # Layout
//! - [`eval`]: `threadwarden-lab eval --data DIR`, the classifier and the policy measured on
//!   labelled public data through the server's exact request path (`replay::offline_engine`).
//!   - `eval::sets`: every data set read, by kind (benign, harmful, crisis, dialogues, ...).
//!   - `eval::data`: CSV and JSONL readers. `eval::metrics`: P/R/F1, AUPRC. `eval::sim`: a
//!     simulated chat server that honours the verdicts.
//! - [`train`]: `threadwarden-lab train --data DIR`, the learned component, written to the
//!   weights file the product embeds (`src/classify/model.bin`).
//! - `tests/equivalence.rs`: the classifier's output digest over every dev text, guarding speed
//!   work against changing a verdict.
//!
//! It depends on the product's public API only; the product never depends on it, and a change
//! here rebuilds nothing of the sidecar.
#![forbid(unsafe_code)]

pub mod eval;
pub mod train;

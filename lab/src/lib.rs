//! threadwarden-lab: measuring and training the classifier, kept out of the product.
//!
//! # Layout
//! - [`eval`]: `threadwarden-lab eval --data DIR`, the classifier and the policy measured on
//!   labelled public data through the server's exact request path (`replay::offline_engine`).
//!   - `eval::sets`: every data set read, by kind (benign, harmful, crisis, dialogues, ...).
//!   - `eval::external`: `eval --external URL`, a live guard model per set beside the built-in
//!     tiers and the cascade (`when: always` and `uncertain`, through `api::cascade`).
//!   - `eval::data`: CSV and JSONL readers. `eval::metrics`: P/R/F1, AUPRC. `eval::sim`: a
//!     simulated chat server that honours the verdicts.
//! - [`semantic`]: `threadwarden-lab train`, the semantic tier's heads, combiners and
//!   calibration, reported in-sample, k-fold and leave-one-dataset-out, adopted per head only
//!   where LODO shows a gain; written to `src/classify/semantic/heads.bin` with a manifest.
//!   - `semantic::pool`: every data set and the corpus, mapped onto the heads, by licence.
//!   - `semantic::fit`: the network, the combiners, the operating points on benign pools.
//! - [`train`]: `threadwarden-lab train-ngram`, the older hashed n-gram heads
//!   (`src/classify/model.bin`).
//! - `tests/equivalence.rs`: the classifier's output digest over every dev text, guarding speed
//!   work against changing a verdict.
//!
//! It depends on the product's public API only; the product never depends on it, and a change
//! here rebuilds nothing of the sidecar.
#![forbid(unsafe_code)]

pub mod eval;
pub mod semantic;
pub mod train;

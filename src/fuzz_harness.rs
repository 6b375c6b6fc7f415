//! Fuzz harnesses shared by the cargo-fuzz targets (`fuzz/`) and the corpus-replay test, so CI
//! replays exactly what the fuzzers ran. Each function panics on a violated invariant.

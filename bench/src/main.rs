//! `threadwarden-bench`: the load generator and the echo baseline it measures the sidecar
//! against (BENCHMARKS.md).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use threadwarden_bench::{fake_guard, loadgen};

/// Load generator and echo baseline for threadwarden.
#[derive(Parser, Debug)]
#[command(name = "threadwarden-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Measure throughput, latency and CPU per event beside an echo baseline (BENCHMARKS.md).
    Loadgen(loadgen::LoadgenArgs),
    /// The load generator's baseline: a bare server on the same proto (fixed answers).
    EchoServer(loadgen::EchoArgs),
    /// A stand-in guard model (Llama Guard / moderation API) answering `safe` after a delay.
    FakeGuard(fake_guard::FakeGuardArgs),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Loadgen(args) => loadgen::main(args),
        Command::EchoServer(args) => loadgen::echo::main(args),
        Command::FakeGuard(args) => fake_guard::main(args),
    }
}

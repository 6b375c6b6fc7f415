//! `threadwarden-lab`: measure and train the classifier (EVAL.md).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use threadwarden_lab::{eval, semantic, train};

/// Evaluation and training tools for threadwarden's classifier.
#[derive(Parser, Debug)]
#[command(name = "threadwarden-lab", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Measure the classifier and policy on labelled public data (EVAL.md).
    Eval(eval::EvalArgs),
    /// Train the semantic tier's heads (LODO-gated); writes src/classify/semantic/heads.bin.
    Train(semantic::TrainArgs),
    /// Train the older hashed n-gram heads; writes src/classify/model.bin.
    TrainNgram(train::TrainArgs),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Eval(args) => eval::main(args),
        Command::Train(args) => semantic::main(args),
        Command::TrainNgram(args) => train::main(args),
    }
}

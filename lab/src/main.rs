//! `threadwarden-lab`: measure and train the classifier (EVAL.md).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use threadwarden_lab::{eval, train};

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
    /// Train the learned component on permissively licensed data; writes the weights file.
    Train(train::TrainArgs),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Eval(args) => eval::main(args),
        Command::Train(args) => train::main(args),
    }
}

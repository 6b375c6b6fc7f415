//! The `threadwarden` binary: parse the command line, run it, turn the result into an exit code.

fn main() -> std::process::ExitCode {
    threadwarden::cli::main()
}

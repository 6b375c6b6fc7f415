//! The `threadwarden` binary: parse the command line, run it, turn the result into an exit code.
//! Its global allocator places the classifier's tables on huge pages (`huge_alloc`).

mod huge_alloc;

#[global_allocator]
static ALLOCATOR: huge_alloc::HugeHint = huge_alloc::HugeHint;

fn main() -> std::process::ExitCode {
    threadwarden::cli::main()
}

//! The `stripestore` command: parsing, output and exit codes. No storage logic lives here.

mod cli;

fn main() -> std::process::ExitCode {
    cli::run()
}

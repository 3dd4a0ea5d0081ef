//! `stowctl`: Stowage's command line.

use clap::Parser as _;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match stowctl::run(stowctl::Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("stowctl: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

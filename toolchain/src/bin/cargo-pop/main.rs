//! `cargo-pop`, the `cargo pop` subcommand: builds popvmm images of unmodified std crates.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse_from(cli::args_without_subcommand_name(std::env::args_os()));
    match cli.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cargo-pop: error: {e}");
            ExitCode::FAILURE
        }
    }
}

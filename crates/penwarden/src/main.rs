//! The `penwarden` binary: one process, several roles (`serve` runs ingest and API).

mod config;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "penwarden",
    version,
    about = "Compliance record and time series for fleets of connected microneedling pens"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run MQTT ingest and the gRPC API in one process until SIGTERM or Ctrl-C.
    Serve {
        /// TOML config file; PENWARDEN_* environment variables override it.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve::run(config.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One clear line, not a backtrace: the chain of causes joined.
            eprintln!("penwarden: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

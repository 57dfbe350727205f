//! The `penwarden` binary: one process, several roles (`serve` runs ingest and API).

mod config;
mod query;
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
        #[arg(long, env = "PENWARDEN_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Summarise the compliance record of a running penwarden over gRPC.
    Violations {
        #[arg(long, env = "PENWARDEN_GRPC_URL", default_value = "http://127.0.0.1:50051")]
        grpc_url: String,
        /// Only this rule id, e.g. CARTRIDGE_REUSE.
        #[arg(long)]
        rule: Option<String>,
    },
    /// Count quarantined messages by reason and list the newest (through the gRPC API).
    Quarantine {
        #[arg(long, env = "PENWARDEN_GRPC_URL", default_value = "http://127.0.0.1:50051")]
        grpc_url: String,
        /// Only this reason, e.g. decode_error.
        #[arg(long)]
        reason: Option<String>,
        /// Only this pen.
        #[arg(long)]
        pen: Option<String>,
        /// How many of the newest messages to show.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve::run(config.as_deref()),
        Command::Violations { grpc_url, rule } => query::violations(&grpc_url, rule),
        Command::Quarantine { grpc_url, reason, pen, limit } => query::quarantine(&grpc_url, reason, pen, limit),
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

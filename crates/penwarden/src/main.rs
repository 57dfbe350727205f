//! The `penwarden` binary: one process, several roles (`serve` runs ingest and API).

mod apikey;
mod audit;
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

// Parsed once per run: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run MQTT ingest and the gRPC API in one process until SIGTERM or Ctrl-C.
    Serve {
        /// TOML config file; PENWARDEN_* environment variables override it.
        #[arg(long, env = "PENWARDEN_CONFIG")]
        config: Option<PathBuf>,
        /// Serve gRPC in plaintext on an address beyond loopback (behind a proxy that
        /// terminates TLS); refused otherwise.
        #[arg(long)]
        allow_plaintext: bool,
    },
    /// Create, list or revoke API keys (in the store named by the config).
    Apikey {
        #[command(subcommand)]
        action: ApikeyAction,
        /// TOML config file (for the store URL); PENWARDEN_DATABASE_URL overrides it.
        #[arg(long, env = "PENWARDEN_CONFIG", global = true)]
        config: Option<PathBuf>,
    },
    /// Check or export the audit trail (in the store named by the config).
    Audit {
        #[command(subcommand)]
        action: AuditAction,
        /// TOML config file (for the store URL); PENWARDEN_DATABASE_URL overrides it.
        #[arg(long, env = "PENWARDEN_CONFIG", global = true)]
        config: Option<PathBuf>,
    },
    /// Summarise the compliance record of a running penwarden over gRPC.
    Violations {
        #[command(flatten)]
        access: ApiAccess,
        /// Only this rule id, e.g. CARTRIDGE_REUSE.
        #[arg(long)]
        rule: Option<String>,
    },
    /// Count quarantined messages by reason and list the newest, or replay them after review
    /// (through the gRPC API).
    #[command(subcommand_negates_reqs = true)]
    Quarantine {
        #[command(subcommand)]
        action: Option<QuarantineAction>,
        #[command(flatten)]
        access: ApiAccess,
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

/// Where the running penwarden is, and the key to ask it with.
#[derive(clap::Args)]
struct ApiAccess {
    /// http://host:port, or https://host:port for gRPC over TLS.
    #[arg(long, env = "PENWARDEN_GRPC_URL", default_value = "http://127.0.0.1:50051")]
    grpc_url: String,
    /// An API key's token (the quarantine needs an admin's).
    #[arg(long, env = "PENWARDEN_API_KEY", hide_env_values = true)]
    api_key: String,
    /// For https://: PEM certificates of the CAs that issue the server's certificate.
    #[arg(long, env = "PENWARDEN_GRPC_CA_FILE")]
    grpc_ca_file: Option<PathBuf>,
    /// For a server that requires client certificates (mutual TLS): this client's
    /// certificate and key (PEM).
    #[arg(long, env = "PENWARDEN_GRPC_CERT_FILE", requires = "grpc_key_file")]
    grpc_cert_file: Option<PathBuf>,
    #[arg(long, env = "PENWARDEN_GRPC_KEY_FILE", requires = "grpc_cert_file")]
    grpc_key_file: Option<PathBuf>,
}

impl ApiAccess {
    fn target(&self) -> query::Target {
        query::Target {
            grpc_url: self.grpc_url.clone(),
            api_key: self.api_key.clone(),
            tls: penwarden_proto::ClientTlsFiles {
                ca_file: self.grpc_ca_file.clone(),
                identity: self.grpc_cert_file.clone().zip(self.grpc_key_file.clone()),
            },
        }
    }
}

#[derive(Subcommand)]
enum QuarantineAction {
    /// Feed quarantined messages of one reason to ingest again, each once, without rate
    /// limiting; prints what was replayed. A message that still fails is quarantined again.
    Replay {
        #[command(flatten)]
        access: ApiAccess,
        /// The reason of the messages to replay, e.g. rate_limited.
        #[arg(long)]
        reason: String,
        /// Only this pen's messages.
        #[arg(long)]
        pen: Option<String>,
        /// Only messages received at or after this time: Unix milliseconds, or
        /// YYYY-MM-DD[THH:MM[:SS]][Z] in UTC.
        #[arg(long)]
        since: Option<String>,
    },
}

#[derive(Subcommand)]
enum AuditAction {
    /// Recompute the hash chain from the first entry; name the first entry that does not hold.
    Verify {
        /// The head published in the log ("audit chain head", SEQ:HASH) and kept outside the
        /// database: finds entries cut off the end, and a chain rewritten from an edit on.
        #[arg(long)]
        head: Option<String>,
    },
    /// Write the trail as JSON lines to stdout, in order.
    Export {
        /// Only entries after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: i64,
    },
}

#[derive(Subcommand)]
enum ApikeyAction {
    /// Create a key; its token is printed once (only a digest is stored).
    Create {
        /// admin, manufacturer, chain or clinic.
        #[arg(long)]
        role: String,
        /// The manufacturer, chain or clinic id the key is limited to (none for admin).
        #[arg(long, default_value = "")]
        scope: String,
        /// A note on who holds the key.
        #[arg(long, default_value = "")]
        label: String,
        /// The key stops working after this long: e.g. 90d, 12h (default: never).
        #[arg(long)]
        expires_in: Option<String>,
        /// Write the token to this file (mode 0600) instead of stdout.
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// List keys (ids, roles, scopes, expiry, last use; never secrets).
    List,
    /// Revoke a key by its id.
    Revoke { key_id: String },
    /// Replace a key: a new key with the same role and scope; the old one keeps working for
    /// the grace period, then stops.
    Rotate {
        key_id: String,
        /// How long the old key keeps working: e.g. 24h, 7d, 0s.
        #[arg(long, default_value = "24h")]
        grace: String,
        /// Write the new token to this file (mode 0600) instead of stdout.
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config, allow_plaintext } => serve::run(config.as_deref(), allow_plaintext),
        Command::Apikey { action, config } => match action {
            ApikeyAction::Create { role, scope, label, expires_in, token_file } => {
                apikey::create(config.as_deref(), &role, &scope, &label, expires_in.as_deref(), token_file.as_deref())
            }
            ApikeyAction::Rotate { key_id, grace, token_file } => {
                apikey::rotate(config.as_deref(), &key_id, &grace, token_file.as_deref())
            }
            ApikeyAction::List => apikey::list(config.as_deref()),
            ApikeyAction::Revoke { key_id } => apikey::revoke(config.as_deref(), &key_id),
        },
        Command::Audit { action: AuditAction::Verify { head }, config } => {
            audit::verify(config.as_deref(), head.as_deref())
        }
        Command::Audit { action: AuditAction::Export { after }, config } => audit::export(config.as_deref(), after),
        Command::Violations { access, rule } => query::violations(&access.target(), rule),
        Command::Quarantine { action: None, access, reason, pen, limit } => {
            query::quarantine(&access.target(), reason, pen, limit)
        }
        Command::Quarantine { action: Some(QuarantineAction::Replay { access, reason, pen, since }), .. } => {
            query::replay(&access.target(), reason, pen, since.as_deref())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("penwarden: error: {}", one_line(&error));
            ExitCode::FAILURE
        }
    }
}

/// One clear line, not a backtrace: the chain of causes joined, each said once (many errors
/// quote their cause in their own message as well as carrying it as a source).
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if line.contains(&cause) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&cause);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::other("unable to open database file");
        let error = anyhow::Error::new(io).context("cannot open database sqlite:x: unable to open database file");
        assert_eq!(one_line(&error), "cannot open database sqlite:x: unable to open database file");
        let error = anyhow::anyhow!("disk full").context("store write failed");
        assert_eq!(one_line(&error), "store write failed: disk full");
    }
}

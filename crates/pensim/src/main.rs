//! pensim: N pens across M clinics (over K chains) running realistic sessions over MQTT.
//!
//! Each pen reports its status at boot; each session: attach a cartridge, disinfect (sheath
//! changed), start, 10 Hz samples in ~1 s telemetry batches, end, detach, status. `--inject` makes some sessions break the rules; the final JSON
//! summary line counts exactly what was injected, which tests compare with penwarden's record.

mod fleet;
mod inject;
mod link;
mod load;

use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use crate::inject::Injection;

#[derive(Parser, Debug, Clone)]
#[command(name = "pensim", version, about = "Simulated fleet of connected microneedling pens")]
pub(crate) struct Args {
    /// Broker to publish to: mqtt://host[:1883], or over TLS mqtts://host[:8883].
    #[arg(long, env = "PENSIM_MQTT_URL", default_value = "mqtt://127.0.0.1:1883")]
    pub(crate) mqtt_url: String,
    /// For mqtts://: PEM certificates of the CAs that issue the broker's certificate.
    #[arg(long)]
    pub(crate) mqtt_ca_file: Option<std::path::PathBuf>,
    /// For mqtts://: a directory of per-pen client certificates, SERIAL.crt and SERIAL.key
    /// (scripts/issue-certs.sh pens): each pen then connects on its own with its own
    /// certificate, as a broker that identifies pens by certificate requires. Not in load mode.
    #[arg(long, conflicts_with = "load_rate")]
    pub(crate) pen_cert_dir: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 10)]
    pub(crate) pens: usize,
    #[arg(long, default_value_t = 3)]
    pub(crate) clinics: usize,
    /// Chains the clinics are spread over (at most one per clinic).
    #[arg(long, default_value_t = 2)]
    pub(crate) chains: usize,
    /// Seconds during which new sessions start; running sessions then finish.
    #[arg(long, default_value_t = 30)]
    pub(crate) duration: u64,
    /// Violations to inject as name=probability: per session reuse, expired, recalled,
    /// counterfeit, overuse, depth, gap (exclusive, summing to at most 1) and no-disinfect;
    /// per pen service-due. E.g. "reuse=0.05,no-disinfect=0.05,gap=0.02".
    #[arg(long, default_value = "")]
    pub(crate) inject: Injection,
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// QoS for telemetry and events (events are QoS 1 in the protocol; 0 is for load tests).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub(crate) qos: u8,
    /// Session length range in seconds, "MIN..MAX" (real treatments last longer; demos do not).
    #[arg(long, default_value = "3..6")]
    pub(crate) session_secs: String,
    #[arg(long, default_value = "pw/v1")]
    pub(crate) topic_root: String,
    /// Register over penwarden's gRPC API first (http://host:port, or https://host:port over
    /// TLS): see --register.
    #[arg(long)]
    pub(crate) grpc_url: Option<String>,
    /// For an https:// --grpc-url: PEM certificates of the CAs that issue the server's.
    #[arg(long)]
    pub(crate) grpc_ca_file: Option<std::path::PathBuf>,
    /// For a server that requires client certificates: pensim's certificate and key (PEM).
    #[arg(long, requires = "grpc_key_file")]
    pub(crate) grpc_cert_file: Option<std::path::PathBuf>,
    #[arg(long, requires = "grpc_cert_file")]
    pub(crate) grpc_key_file: Option<std::path::PathBuf>,
    /// What to register with --grpc-url: `fleet` (chains, clinics, pens, operators and the
    /// demo manufacturer's lots), `catalog` (operators and lots only; pens auto-register) or
    /// `none` (registered earlier).
    #[arg(long, default_value = "fleet", value_parser = ["fleet", "catalog", "none"])]
    pub(crate) register: String,
    /// Publish the protobuf JSON mapping instead of binary protobuf.
    #[arg(long)]
    pub(crate) json: bool,
    /// Load mode: offer this many telemetry samples per second (0: as fast as the broker takes
    /// them) from --pens pens over --connections connections, with no sessions or events.
    #[arg(long)]
    pub(crate) load_rate: Option<u64>,
    /// Load mode: samples per telemetry message.
    #[arg(long, default_value_t = 20)]
    pub(crate) samples_per_message: usize,
    /// Load mode: MQTT connections the pens share.
    #[arg(long, default_value_t = 4)]
    pub(crate) connections: usize,
    /// Load mode: afterwards, count the samples in this InfluxDB (v1 query API, http://host:port).
    #[arg(long)]
    pub(crate) verify_influx: Option<String>,
    /// Load mode: the database --verify-influx counts in.
    #[arg(long, default_value = "penwarden")]
    pub(crate) verify_db: String,
    /// API key token for --grpc-url (an admin key, to register the fleet and recall).
    #[arg(long, env = "PENWARDEN_API_KEY", hide_env_values = true)]
    pub(crate) api_key: Option<String>,
    /// Read the API key token from this file instead.
    #[arg(long, conflicts_with = "api_key")]
    pub(crate) api_key_file: Option<std::path::PathBuf>,
}

impl Args {
    pub(crate) fn api_key(&self) -> anyhow::Result<String> {
        if let Some(path) = &self.api_key_file {
            let token = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            return Ok(token.trim().to_owned());
        }
        self.api_key.clone().context("--grpc-url needs an API key: --api-key, PENWARDEN_API_KEY or --api-key-file")
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("pensim: error: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(summary) => {
            println!("{summary}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pensim: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<serde_json::Value> {
    if args.pens == 0 || args.clinics == 0 || args.chains == 0 {
        anyhow::bail!("--pens, --clinics and --chains must be at least 1");
    }
    if let Some(rate) = args.load_rate {
        return load::run(&args, rate).await;
    }
    let (min, max) = args
        .session_secs
        .split_once("..")
        .and_then(|(a, b)| Some((a.parse::<f64>().ok()?, b.parse::<f64>().ok()?)))
        .filter(|(a, b)| *a > 0.0 && a <= b)
        .context("--session-secs must look like 3..6")?;
    let mut layout = fleet::Layout::new(args.pens, args.clinics, args.chains.min(args.clinics));
    if args.inject.wants(inject::SessionFault::Recalled) && args.grpc_url.is_none() {
        anyhow::bail!("--inject recalled needs --grpc-url: pensim recalls the lot through the API");
    }
    if args.grpc_url.is_some() {
        if args.register != "none" {
            fleet::register(&args, &layout, args.register == "fleet").await.context("registering over gRPC")?;
        }
        // A second run against the same store numbers on, like a pen that keeps its counter.
        layout.last_seqs = fleet::last_seqs(&args).await.context("reading the pens' last seqs")?;
    }
    let simulation =
        fleet::Simulation::connect(&args, layout, Duration::from_secs_f64(min), Duration::from_secs_f64(max)).await?;
    simulation.run().await
}

//! pensim: N pens across M clinics (over K chains) running realistic sessions over MQTT.
//!
//! Each session: attach a cartridge, disinfect (sheath changed), start, 10 Hz samples in ~1 s
//! telemetry batches, end. `--inject` makes some sessions break the rules; the final JSON
//! summary line counts exactly what was injected, which tests compare with penwarden's record.

mod fleet;
mod inject;

use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use crate::inject::Injection;

#[derive(Parser, Debug, Clone)]
#[command(name = "pensim", version, about = "Simulated fleet of connected microneedling pens")]
pub(crate) struct Args {
    /// Broker to publish to, mqtt://host:port.
    #[arg(long, env = "PENSIM_MQTT_URL", default_value = "mqtt://127.0.0.1:1883")]
    pub(crate) mqtt_url: String,
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
    /// Violations to inject, as rule=probability per session: reuse, no-disinfect.
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
    /// Register over penwarden's gRPC API first (http://host:port): see --register.
    #[arg(long)]
    pub(crate) grpc_url: Option<String>,
    /// What to register with --grpc-url: `fleet` (chains, clinics, pens, operators and the
    /// demo manufacturer's lots), `catalog` (operators and lots only; pens auto-register) or
    /// `none` (registered earlier).
    #[arg(long, default_value = "fleet", value_parser = ["fleet", "catalog", "none"])]
    pub(crate) register: String,
    /// Publish the protobuf JSON mapping instead of binary protobuf.
    #[arg(long)]
    pub(crate) json: bool,
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
    let (min, max) = args
        .session_secs
        .split_once("..")
        .and_then(|(a, b)| Some((a.parse::<f64>().ok()?, b.parse::<f64>().ok()?)))
        .filter(|(a, b)| *a > 0.0 && a <= b)
        .context("--session-secs must look like 3..6")?;
    let layout = fleet::Layout::new(args.pens, args.clinics, args.chains.min(args.clinics));
    if let Some(url) = args.grpc_url.as_ref().filter(|_| args.register != "none") {
        fleet::register(url, &layout, args.register == "fleet").await.context("registering over gRPC")?;
    }
    let simulation =
        fleet::Simulation::connect(&args, layout, Duration::from_secs_f64(min), Duration::from_secs_f64(max)).await?;
    simulation.run().await
}

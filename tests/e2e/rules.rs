//! One scenario per compliance rule through the whole stack: pensim breaks the rule over
//! MQTT, penwarden records it, and the gRPC API reports exactly the injected violations, no
//! more (so no other rule misfires on the same traffic), with every sample in InfluxDB.

use penwarden_tests::{run_pensim, Influxd, Mosquitto, Penwarden};

use crate::common::{injected, pensim_args_injecting, verify_exactly_once};

/// Runs a fleet that breaks `rule` through `inject`; asserts it was injected and is exactly
/// what penwarden recorded.
async fn scenario(rule: &str, inject: &str, seed: u64) {
    let mosquitto = Mosquitto::start().await;
    let influxd = Influxd::start().await;
    let env = [("PENWARDEN_INFLUX_URL", influxd.url()), ("PENWARDEN_INFLUX_API", "v1".to_string())];
    let mut penwarden = Penwarden::start(&mosquitto.url(), &env).await;
    let seed = seed.to_string();
    let args = pensim_args_injecting(&mosquitto, &penwarden, "fleet", 6, 4, inject, &["--seed", &seed]);
    let summary = run_pensim(&args).await;
    let expected = injected(&summary);
    assert!(expected.get(rule) > Some(&0), "the scenario must break {rule}: {summary}");
    assert_eq!(expected.keys().collect::<Vec<_>>(), [rule], "only {rule} is injected: {summary}");
    let verified = verify_exactly_once(&influxd, &mut penwarden, &summary, true).await;
    eprintln!("{rule}: {verified}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cartridge_reuse() {
    scenario("CARTRIDGE_REUSE", "reuse=0.5", 31).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cartridge_expired() {
    scenario("CARTRIDGE_EXPIRED", "expired=0.5", 32).await;
}

/// The lot is recalled after its sessions were recorded: the violations are retroactive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cartridge_recalled() {
    scenario("CARTRIDGE_RECALLED", "recalled=0.5", 33).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cartridge_unverified() {
    scenario("CARTRIDGE_UNVERIFIED", "counterfeit=0.5", 34).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cartridge_overuse() {
    scenario("CARTRIDGE_OVERUSE", "overuse=0.5", 35).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pen_not_disinfected() {
    scenario("PEN_NOT_DISINFECTED", "no-disinfect=0.5", 36).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depth_limit() {
    scenario("DEPTH_LIMIT", "depth=0.5", 37).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pen_service_due() {
    scenario("PEN_SERVICE_DUE", "service-due=0.5", 38).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_gap() {
    scenario("TELEMETRY_GAP", "gap=0.5", 39).await;
}

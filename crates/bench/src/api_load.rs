//! `penwarden-bench api`: performance target 4. Seeds a store (1M cartridges, 200k sessions,
//! 100k violations), times `penwarden serve` becoming ready on it, then offers GetCartridge and
//! filtered ListViolations (a clinic, page of 100) at a fixed rate and reports latencies.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use penwarden_proto::api::v1 as api;
use penwarden_tests::{Influxd, Mosquitto, Penwarden};

use crate::seed;

const WORKERS: usize = 64;

/// On the store PENWARDEN_TEST_STORE names (SQLite unless told).
pub(crate) async fn run(rate: u64, seconds: u64) -> serde_json::Value {
    let scratch = penwarden_store::scratch::ScratchStore::new().await;
    seed::seed(scratch.url(), 1_000_000, 200_000, 100_000).await;
    let mosquitto = Mosquitto::start().await;
    let influxd = Influxd::start().await;
    // One key offers the whole load: its rate limit is off, so that the API's capacity is
    // what is measured.
    let env = [
        ("PENWARDEN_INFLUX_URL", influxd.url()),
        ("PENWARDEN_INFLUX_API", "v1".to_string()),
        ("PENWARDEN_API_RATE_LIMIT_BURST", "0".to_string()),
    ];
    let mut penwarden = Penwarden::start_with_store(scratch.url(), &mosquitto.url(), &env).await;
    // Ready time on the seeded store: stop, then time a start until gRPC answers (50 ms polls).
    let status = penwarden.process.terminate(Duration::from_secs(30));
    assert!(status.success(), "penwarden stops cleanly");
    let started = Instant::now();
    penwarden.restart().await;
    let ready_ms = started.elapsed().as_secs_f64() * 1000.0;

    let client = penwarden.compliance().await;
    let cartridge_ms = Arc::new(Mutex::new(Vec::new()));
    let violations_ms = Arc::new(Mutex::new(Vec::new()));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let per_worker = Duration::from_secs_f64(WORKERS as f64 / rate.max(1) as f64);
    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let mut client = client.clone();
        let (cartridge_ms, violations_ms) = (cartridge_ms.clone(), violations_ms.clone());
        workers.push(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(per_worker);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = worker;
            while Instant::now() < deadline {
                ticker.tick().await;
                n += WORKERS;
                let sent = Instant::now();
                if n % 2 == 0 {
                    let request = api::GetCartridgeRequest {
                        gtin: "09506000134352".into(),
                        serial: format!("C{:08}", (n * 7919) % 200_000),
                        ..Default::default()
                    };
                    client.get_cartridge(request).await.expect("GetCartridge");
                    cartridge_ms.lock().unwrap().push(sent.elapsed().as_secs_f64() * 1000.0);
                } else {
                    let request = api::ListViolationsRequest {
                        clinic_id: format!("clinic-{}", n % seed::CLINICS),
                        page_size: 100,
                        ..Default::default()
                    };
                    let page = client.list_violations(request).await.expect("ListViolations").into_inner();
                    assert_eq!(page.violations.len(), 100);
                    violations_ms.lock().unwrap().push(sent.elapsed().as_secs_f64() * 1000.0);
                }
            }
        }));
    }
    for worker in workers {
        worker.await.expect("worker");
    }
    let summary = |name: &str, samples: &Mutex<Vec<f64>>| {
        let mut values = samples.lock().unwrap().clone();
        values.sort_by(f64::total_cmp);
        let pct = |p: f64| values.get(((values.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0.0);
        serde_json::json!({ "rpc": name, "requests": values.len(), "p50_ms": pct(0.5), "p99_ms": pct(0.99) })
    };
    let requests = cartridge_ms.lock().unwrap().len() + violations_ms.lock().unwrap().len();
    let result = serde_json::json!({
        "offered_requests_per_s": rate,
        "achieved_requests_per_s": requests as f64 / seconds as f64,
        "ready_ms": ready_ms,
        "get_cartridge": summary("GetCartridge", &cartridge_ms),
        "list_violations": summary("ListViolations", &violations_ms),
    });
    eprintln!("  api: {result}");
    result
}

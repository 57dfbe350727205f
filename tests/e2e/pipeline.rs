use std::time::Duration;

use penwarden_tests::{free_port, run_pensim, wait_for, Influxd, Mosquitto, Penwarden, Victoria};

use crate::common::{injected, metric_value, pensim_args, verify_exactly_once, wait_for_violations, SETTLE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_fleet_over_v1_lands_exactly_in_influxdb_and_the_record() {
    let mosquitto = Mosquitto::start().await;
    let influxd = Influxd::start().await;
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let mut penwarden = Penwarden::start(
        &mosquitto.url(),
        &[
            ("PENWARDEN_INFLUX_URL", influxd.url()),
            ("PENWARDEN_INFLUX_API", "v1".into()),
            ("PENWARDEN_INFLUX_DB", "penwarden".into()),
            ("PENWARDEN_AUTO_REGISTER_PENS", "false".into()),
            ("PENWARDEN_METRICS_ADDR", metrics_addr.clone()),
        ],
    )
    .await;

    let summary = run_pensim(&pensim_args(&mosquitto, &penwarden, "fleet", 8, 8, &["--seed", "7"])).await;
    let samples = summary["samples"].as_u64().expect("samples");
    let sessions = summary["sessions"].as_u64().expect("sessions");
    let expected = injected(&summary);
    assert!(samples > 0 && sessions > 8, "{summary}");
    assert!(expected.get("CARTRIDGE_REUSE") > Some(&0) && expected.get("PEN_NOT_DISINFECTED") > Some(&0), "{summary}");

    // Prometheus: every message pensim sent was received and acknowledged, none quarantined.
    let messages = summary["messages"].as_u64().unwrap();
    let metrics_url = format!("http://{metrics_addr}/metrics");
    let acked = wait_for("all messages acked in metrics", SETTLE, || async {
        let text = reqwest::get(&metrics_url).await.ok()?.text().await.ok()?;
        let acked = metric_value(&text, "penwarden_mqtt_messages_acked_total")?;
        (acked >= messages).then_some((acked, text))
    })
    .await;
    assert_eq!(acked.0, messages);
    assert_eq!(metric_value(&acked.1, "penwarden_mqtt_messages_received_total"), Some(messages));
    assert_eq!(
        metric_value(&acked.1, "penwarden_influx_points_written_total"),
        // telemetry, a session point and a status point per session, a status point per pen at
        // boot, a point per violation
        Some(samples + 2 * sessions + summary["pens"].as_u64().unwrap() + expected.values().sum::<u64>())
    );
    assert!(!acked.1.contains("penwarden_messages_quarantined_total"), "nothing quarantined");
    assert!(acked.1.contains("penwarden_influx_write_duration_seconds_bucket"), "latency histogram exported");

    let verified = verify_exactly_once(&influxd, &mut penwarden, &summary, true).await;
    eprintln!("registered fleet over v1: {verified}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_registered_json_fleet_over_v2_lands_exactly_in_victoria_metrics() {
    let mosquitto = Mosquitto::start().await;
    let victoria = Victoria::start().await;
    let mut penwarden = Penwarden::start(
        &mosquitto.url(),
        &[
            ("PENWARDEN_INFLUX_URL", victoria.url()),
            ("PENWARDEN_INFLUX_API", "v2".into()),
            ("PENWARDEN_INFLUX_DB", "penwarden".into()),
            ("PENWARDEN_INFLUX_ORG", "penwarden".into()),
            ("PENWARDEN_AUTO_REGISTER_PENS", "true".into()),
        ],
    )
    .await;

    let summary = run_pensim(&pensim_args(&mosquitto, &penwarden, "catalog", 8, 8, &["--seed", "11", "--json"])).await;
    let samples = summary["samples"].as_u64().expect("samples") as usize;
    let expected = injected(&summary);
    assert!(!expected.is_empty(), "{summary}");

    let landed = wait_for("every sample in VictoriaMetrics", SETTLE, || async {
        let count = victoria.count_samples("pen_telemetry_depth_mm").await;
        (count >= samples).then_some(count)
    })
    .await;
    assert_eq!(landed, samples, "VictoriaMetrics holds each sample exactly once");

    wait_for_violations(&penwarden, &expected, false).await;

    let status = penwarden.process.terminate(Duration::from_secs(30));
    assert!(status.success(), "penwarden exits 0 on SIGTERM, got {status}");
}

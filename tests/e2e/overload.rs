//! More arriving than penwarden can take: the broker's backlog toward penwarden grows, and
//! penwarden must keep its connection (so that nothing is redelivered) and land everything.
//! The full-scale figures come from the `overload` benchmark scenario; this is the same
//! mechanism at a scale a test can afford: the store is held locked while a burst arrives, so
//! the pipeline falls far behind what the broker has already sent.

use std::time::Duration;

use penwarden_proto::device::v1 as wire;
use penwarden_tests::{metric, wait_for, Influxd, Mosquitto, Penwarden, Publisher};
use prost::Message;

const PENS: usize = 20;
const MESSAGES_PER_PEN: usize = 2000;

fn telemetry(pen: &str, seq: u64, time: i64) -> Vec<u8> {
    let sample = wire::Sample { time_unix_ms: time, depth_mm: 0.5, ..Default::default() };
    wire::TelemetryBatch {
        schema_version: 1,
        pen_serial: pen.into(),
        seq,
        session_id: "s1".into(),
        samples: vec![sample],
    }
    .encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_far_behind_the_broker_keeps_its_connection_and_lands_everything() {
    let mosquitto = Mosquitto::start().await;
    let influxd = Influxd::start().await;
    let metrics_addr = format!("127.0.0.1:{}", penwarden_tests::free_port());
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("penwarden.toml");
    // The shortest keep-alive penwarden allows, a receive maximum that lets the broker send the
    // whole burst, and no flood limit (one pen's messages come faster than a pen's would).
    std::fs::write(&config, "[ingest]\nkeep_alive_s = 5\nreceive_maximum = 65535\nflood_burst = 0\n").unwrap();
    let env = [
        ("PENWARDEN_INFLUX_URL", influxd.url()),
        ("PENWARDEN_INFLUX_API", "v1".into()),
        ("PENWARDEN_METRICS_ADDR", metrics_addr.clone()),
        ("PENWARDEN_CONFIG", config.display().to_string()),
    ];
    // The store is held locked by a second SQLite connection below.
    let mut penwarden = Penwarden::start_on_sqlite(&mosquitto.url(), &env).await;
    let pens: Vec<String> = (0..PENS).map(|i| format!("OVL{i:03}")).collect();
    penwarden.register_clinic_a_with(&pens.iter().map(String::as_str).collect::<Vec<_>>()).await;

    // Hold the store's write lock: every batch penwarden tries to commit waits, so what the
    // broker sends piles up in front of the pipeline, far beyond what it holds when healthy.
    let store_url = penwarden.store_url();
    let lock = tokio::spawn(async move {
        use sqlx::{ConnectOptions, Connection};
        let options: sqlx::sqlite::SqliteConnectOptions = store_url.parse().unwrap();
        let mut connection = options.connect().await.unwrap();
        sqlx::query("BEGIN IMMEDIATE").execute(&mut connection).await.unwrap();
        // Three keep-alive periods: long enough for a connection whose pings wait behind the
        // backlog to be given up, by penwarden or by the broker.
        tokio::time::sleep(Duration::from_secs(15)).await;
        sqlx::query("ROLLBACK").execute(&mut connection).await.unwrap();
        connection.close().await.unwrap();
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let t0 = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64 - 3_600_000;
    let burst = (0..MESSAGES_PER_PEN).flat_map(|seq| {
        pens.iter().map(move |pen| {
            (format!("pw/v1/pens/{pen}/telemetry"), telemetry(pen, seq as u64 + 1, t0 + seq as i64 * 100))
        })
    });
    let mut publisher = Publisher::connect(mosquitto.port).await;
    publisher.publish_burst(burst.collect::<Vec<_>>()).await;
    lock.await.unwrap();

    let total = (PENS * MESSAGES_PER_PEN) as u64;
    let landed = wait_for("every sample in InfluxDB", Duration::from_secs(120), || async {
        let count = influxd.query_scalar("penwarden", "SELECT count(depth_mm) FROM pen_telemetry").await;
        count.and_then(|v| v.as_u64()).filter(|n| *n == total)
    })
    .await;
    assert_eq!(landed, total);
    let acked = wait_for("every message acked", Duration::from_secs(30), || async {
        metric(&metrics_addr, "penwarden_mqtt_messages_acked_total").await.filter(|n| *n as u64 >= total)
    })
    .await;
    assert_eq!(acked as u64, total);
    // The connection held throughout: no reconnect, and so no message came twice.
    assert_eq!(metric(&metrics_addr, "penwarden_mqtt_reconnects_total").await.unwrap_or(0.0), 0.0);
    assert_eq!(metric(&metrics_addr, "penwarden_mqtt_messages_received_total").await, Some(total as f64));
    assert!(penwarden.process.terminate(Duration::from_secs(30)).success());
}

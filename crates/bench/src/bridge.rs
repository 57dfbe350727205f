//! The simplest bridge that could do penwarden's transport job, as the benchmark's reference:
//! subscribe to pen telemetry at QoS 1, decode each message, write its samples to InfluxDB as
//! line protocol, and acknowledge the messages once InfluxDB accepted them. No store, no rules,
//! no events, no spool, no retries: what penwarden costs beyond this is what its record and
//! its guarantees cost. It runs as a process of its own (`penwarden-bench bridge`) so that
//! its CPU is measured as penwarden's is.

use std::sync::Arc;
use std::time::Duration;

use penwarden_influx::LineBuilder;
use penwarden_proto::device::v1 as wire;
use prost::Message;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

/// Lines per InfluxDB write, and how long a partial batch may wait.
const BATCH_LINES: usize = 5000;
const BATCH_WAIT: Duration = Duration::from_millis(50);
/// Writes of up to 5000 lines in flight at once (penwarden's writer sends a batch as requests
/// of 5000 lines, up to 4 in flight, while the next batch commits).
const WRITERS: usize = 2;

#[derive(Debug, clap::Args)]
pub(crate) struct BridgeOptions {
    /// The broker, host and port: `mqtt://127.0.0.1:1883`.
    #[arg(long)]
    mqtt_url: String,
    /// InfluxDB 1.x (`http://127.0.0.1:8086`): v1 `/write`.
    #[arg(long)]
    influx_url: String,
    #[arg(long, default_value = "penwarden")]
    database: String,
    /// The MQTT client id: one of its own per run.
    #[arg(long, default_value = "penwarden-bench-bridge")]
    client_id: String,
}

/// Runs until the broker goes away. Prints `ready` once subscribed.
pub(crate) async fn run(options: BridgeOptions) {
    let address = options.mqtt_url.trim_start_matches("mqtt://");
    let (host, port) = address.rsplit_once(':').expect("mqtt://host:port");
    let mut mqtt = MqttOptions::new(&options.client_id, host, port.parse().expect("a port"));
    // As penwarden asks: up to 10,000 unacknowledged messages in flight to it.
    mqtt.set_receive_maximum(Some(10_000))
        .set_manual_acks(true)
        .set_max_packet_size(Some(1 << 20))
        .set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(mqtt, 1 << 16);
    let http = reqwest::Client::new();
    let write_url = format!("{}/write?db={}&precision=ms", options.influx_url, options.database);
    let created = http
        .post(format!("{}/query", options.influx_url))
        .form(&[("q", format!("CREATE DATABASE \"{}\"", options.database))])
        .send()
        .await
        .expect("InfluxDB answers");
    assert!(created.status().is_success(), "CREATE DATABASE: {}", created.status());
    let filter = Filter::new("pw/v1/pens/+/telemetry", QoS::AtLeastOnce);
    client.subscribe_many([filter]).await.expect("subscribe");

    let (messages, mut incoming) = tokio::sync::mpsc::unbounded_channel::<Publish>();
    let writers = Arc::new(tokio::sync::Semaphore::new(WRITERS));
    let batcher = {
        let client = client.clone();
        tokio::spawn(async move {
            loop {
                let Some(first) = incoming.recv().await else { return };
                let mut batch = vec![first];
                let mut lines = LineBuilder::with_capacity(1 << 20);
                append(&mut lines, &batch[0]);
                let deadline = tokio::time::Instant::now() + BATCH_WAIT;
                while lines.lines() < BATCH_LINES {
                    match tokio::time::timeout_at(deadline, incoming.recv()).await {
                        Ok(Some(publish)) => {
                            append(&mut lines, &publish);
                            batch.push(publish);
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
                let permit = writers.clone().acquire_owned().await.expect("open");
                let (http, url, client) = (http.clone(), write_url.clone(), client.clone());
                tokio::spawn(async move {
                    let written = http.post(&url).body(lines.into_string()).send().await;
                    match written {
                        // Acknowledged only once InfluxDB has the samples.
                        Ok(response) if response.status().is_success() => {
                            for publish in &batch {
                                let _ = client.ack(publish).await;
                            }
                        }
                        // No retries in the simplest bridge: the broker redelivers after a
                        // reconnect, and the benchmark counts what is missing.
                        Ok(response) => eprintln!("bridge: InfluxDB refused a write: {}", response.status()),
                        Err(e) => eprintln!("bridge: write failed: {e}"),
                    }
                    drop(permit);
                });
            }
        })
    };
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if messages.send(publish).is_err() {
                    break;
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => println!("ready"),
            Ok(_) => {}
            Err(e) => {
                eprintln!("bridge: MQTT: {e}");
                break;
            }
        }
    }
    drop(messages);
    let _ = batcher.await;
}

/// One line per sample, tagged with the pen: the same points penwarden writes, without the
/// chain, clinic and model it knows from its record.
fn append(lines: &mut LineBuilder, publish: &Publish) {
    let Ok(batch) = wire::TelemetryBatch::decode(&publish.payload[..]) else {
        // Nothing to write; it is acknowledged with its batch.
        return;
    };
    let series = penwarden_influx::line::series_key("pen_telemetry", &[("pen", &batch.pen_serial)]);
    for sample in &batch.samples {
        lines
            .point_in_series(&series)
            .float("depth_mm", sample.depth_mm)
            .float("speed_rpm", sample.speed_rpm)
            .float("motor_current_ma", sample.motor_current_ma)
            .float("temperature_c", sample.temperature_c)
            .float("battery_pct", sample.battery_pct)
            .string("session_id", &batch.session_id)
            .timestamp_ms(sample.time_unix_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(payload: Vec<u8>) -> Publish {
        Publish::new("pw/v1/pens/PW-1/telemetry", QoS::AtLeastOnce, payload, None)
    }

    #[test]
    fn each_sample_becomes_one_point_of_its_pen_and_garbage_none() {
        let sample =
            |time_unix_ms| wire::Sample { time_unix_ms, depth_mm: 0.5, speed_rpm: 9000.0, ..Default::default() };
        let batch = wire::TelemetryBatch {
            pen_serial: "PW-1".into(),
            session_id: "s1".into(),
            samples: vec![sample(1_000), sample(1_100)],
            ..Default::default()
        };
        let mut lines = LineBuilder::with_capacity(1024);
        append(&mut lines, &publish(batch.encode_to_vec()));
        append(&mut lines, &publish(b"\xff\xff not protobuf".to_vec()));
        assert_eq!(lines.lines(), 2);
        let text = lines.as_str();
        assert!(text.starts_with("pen_telemetry,pen=PW-1 depth_mm=0.5,speed_rpm=9000,"), "{text}");
        assert!(text.contains("session_id=\"s1\" 1000\n") && text.ends_with(" 1100"), "{text}");
    }
}

//! Load mode (`--load-rate`): many pens' telemetry over a few connections at a fixed offered
//! rate, or as fast as the broker takes it, then a summary of achieved rates and, with
//! `--verify-influx`, how many samples landed in InfluxDB.
//!
//! Each pen's samples get distinct device times (1 ms apart, from an hour ago on), so every
//! sample is its own point and InfluxDB's count must equal what was sent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use penwarden_proto::device::v1 as wire;
use prost::Message;
use rumqttc::{AsyncClient, QoS};
use tokio::time::Instant;

use crate::Args;

/// How often each connection's sender wakes to publish what the rate allows.
const TICK: Duration = Duration::from_millis(5);

#[derive(Default)]
struct Totals {
    messages: AtomicU64,
    samples: AtomicU64,
    acked: AtomicU64,
}

pub(crate) async fn run(args: &Args, rate: u64) -> anyhow::Result<serde_json::Value> {
    if args.samples_per_message == 0 || args.connections == 0 {
        anyhow::bail!("--samples-per-message and --connections must be at least 1");
    }
    let qos = if args.qos == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce };
    let totals = Arc::new(Totals::default());
    let start_ms = now_ms() - 3_600_000;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration);
    let connections = args.connections.min(args.pens);
    let mut tasks = Vec::new();
    for connection in 0..connections {
        let pens: Vec<String> =
            (connection..args.pens).step_by(connections).map(|i| format!("PW-{:06}", i + 1)).collect();
        // This connection's share of the offered rate, in messages per second (0: unlimited).
        let messages_per_s = rate as f64 / args.samples_per_message as f64 / connections as f64;
        let client = Connection::open(args, connection, totals.clone()).await?;
        let args = args.clone();
        let totals = totals.clone();
        tasks.push(tokio::spawn(async move {
            send(&args, client, pens, messages_per_s, qos, start_ms, deadline, &totals).await
        }));
    }
    let mut open = Vec::new();
    let mut sent = Sent { start_ms, samples_per_pen: Vec::with_capacity(args.pens) };
    for task in tasks {
        let (connection, samples_per_pen) = task.await.context("a sender panicked")??;
        open.push(connection);
        sent.samples_per_pen.extend(samples_per_pen);
    }
    let sent_in = started.elapsed();
    let messages = totals.messages.load(Ordering::Relaxed);
    let samples = totals.samples.load(Ordering::Relaxed);
    if qos == QoS::AtLeastOnce {
        let wait = tokio::time::timeout(Duration::from_secs(120), async {
            while totals.acked.load(Ordering::Relaxed) < messages {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        wait.await.context("the broker did not acknowledge every message within 120 s")?;
    }
    let acked_in = started.elapsed();
    for connection in open {
        let _ = connection.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), connection.eventloop).await;
    }
    let mut summary = serde_json::json!({
        "mode": "load",
        "pens": args.pens,
        "connections": connections,
        "qos": args.qos,
        "samples_per_message": args.samples_per_message,
        "offered_samples_per_s": rate,
        "messages": messages,
        "samples": samples,
        "send_s": round(sent_in.as_secs_f64()),
        "achieved_samples_per_s": round(samples as f64 / sent_in.as_secs_f64()),
        "acked_samples_per_s": round(samples as f64 / acked_in.as_secs_f64()),
    });
    if let Some(url) = &args.verify_influx {
        let (landed, waited) = verify(url, &args.verify_db, &sent).await?;
        summary["landed_samples"] = landed.into();
        summary["verify_wait_s"] = round(waited.as_secs_f64()).into();
    }
    Ok(summary)
}

fn round(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

struct Connection {
    client: AsyncClient,
    eventloop: tokio::task::JoinHandle<()>,
}

impl Connection {
    async fn open(args: &Args, index: usize, totals: Arc<Totals>) -> anyhow::Result<Connection> {
        let id = format!("pensim-load-{}-{}-{index}", args.seed, std::process::id());
        let mut options = crate::link::options(args, id, None)?;
        options
            .set_clean_session(false)
            .set_keep_alive(Duration::from_secs(30))
            .set_inflight(u16::MAX)
            .set_max_packet_size(1 << 20, 1 << 20)
            .set_request_channel_capacity(50_000);
        let on_ack = move || _ = totals.acked.fetch_add(1, Ordering::Relaxed);
        let (client, eventloop) = crate::link::connect(options, 50_000, &args.mqtt_url, on_ack).await?;
        Ok(Connection { client, eventloop })
    }
}

/// Publishes round-robin over `pens` until the deadline, keeping to `messages_per_s` (or as
/// fast as the client takes them when it is 0).
#[allow(clippy::too_many_arguments)]
async fn send(
    args: &Args,
    connection: Connection,
    pens: Vec<String>,
    messages_per_s: f64,
    qos: QoS,
    start_ms: i64,
    deadline: Instant,
    totals: &Totals,
) -> anyhow::Result<(Connection, Vec<u64>)> {
    let topics: Vec<String> = pens.iter().map(|pen| format!("{}/pens/{pen}/telemetry", args.topic_root)).collect();
    let mut seqs = vec![0u64; pens.len()];
    let per_message = args.samples_per_message as i64;
    let began = Instant::now();
    let mut sent = 0u64;
    let mut next_pen = 0usize;
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while Instant::now() < deadline {
        let due = if messages_per_s > 0.0 {
            ticker.tick().await;
            (began.elapsed().as_secs_f64() * messages_per_s) as u64
        } else {
            sent + 100
        };
        while sent < due {
            let index = next_pen;
            next_pen = (next_pen + 1) % pens.len();
            seqs[index] += 1;
            let seq = seqs[index];
            let first_ms = start_ms + (seq as i64 - 1) * per_message;
            let batch = wire::TelemetryBatch {
                schema_version: 1,
                pen_serial: pens[index].clone(),
                seq,
                session_id: String::new(),
                samples: (0..per_message)
                    .map(|k| wire::Sample {
                        time_unix_ms: first_ms + k,
                        depth_mm: 0.75,
                        speed_rpm: 7000.0,
                        motor_current_ma: 320.0,
                        temperature_c: 31.5,
                        battery_pct: 80.0,
                    })
                    .collect(),
            };
            let payload =
                if args.json { serde_json::to_vec(&batch).unwrap_or_default() } else { batch.encode_to_vec() };
            connection.client.publish(topics[index].clone(), qos, false, payload).await.context("publishing")?;
            sent += 1;
            totals.messages.fetch_add(1, Ordering::Relaxed);
            totals.samples.fetch_add(per_message as u64, Ordering::Relaxed);
        }
    }
    // The caller keeps the connection open until the broker acknowledged everything.
    Ok((connection, seqs.iter().map(|&messages| messages * per_message as u64).collect()))
}

/// What a load run sent: each pen's samples have device times `start_ms`, `start_ms + 1`, …,
/// one per sample, so the count expected in any time range follows from these alone.
struct Sent {
    start_ms: i64,
    samples_per_pen: Vec<u64>,
}

impl Sent {
    fn total(&self) -> u64 {
        self.samples_per_pen.iter().sum()
    }

    /// Just past the newest device time sent.
    fn end_ms(&self) -> i64 {
        self.start_ms + self.samples_per_pen.iter().copied().max().unwrap_or(0) as i64
    }

    /// Samples sent with device times in `[from_ms, to_ms)`.
    fn expected_in(&self, from_ms: i64, to_ms: i64) -> u64 {
        self.samples_per_pen
            .iter()
            .map(|&samples| {
                let (first, end) = (self.start_ms, self.start_ms + samples as i64);
                (end.min(to_ms) - first.max(from_ms)).max(0) as u64
            })
            .sum()
    }
}

/// Counting windows of device time: a window whose count is complete is never counted again.
const COUNT_WINDOW_MS: i64 = 1000;

/// Polls InfluxDB (v1 query API) until it holds every sample sent, or 120 s pass with no
/// progress; returns what landed and how long it took. Each poll counts per second of device
/// time, and only from the oldest second still short: a count of everything scans every point
/// landed so far (seconds at tens of millions), and counting that back to back after an
/// overload took InfluxDB's cores from the very writes being waited for.
async fn verify(url: &str, database: &str, sent: &Sent) -> anyhow::Result<(u64, Duration)> {
    let client = reqwest::Client::new();
    let expected = sent.total();
    let started = Instant::now();
    let mut last = (0u64, Instant::now());
    // Everything before `complete_ms` has landed: `complete` samples.
    let mut complete_ms = sent.start_ms - sent.start_ms.rem_euclid(COUNT_WINDOW_MS);
    let mut complete = 0u64;
    loop {
        let asked = Instant::now();
        let query = format!(
            "SELECT count(depth_mm) FROM pen_telemetry WHERE time >= {complete_ms}ms AND time < {}ms \
             GROUP BY time({COUNT_WINDOW_MS}ms)",
            sent.end_ms()
        );
        let response = client
            .get(format!("{url}/query"))
            .query(&[("db", database), ("q", query.as_str()), ("epoch", "ms")])
            .send()
            .await
            .context("querying InfluxDB")?;
        let body: serde_json::Value = serde_json::from_str(&response.text().await?)?;
        if let Some(error) = body["results"][0]["error"].as_str() {
            anyhow::bail!("InfluxDB refused the count: {error}");
        }
        let counted_in = asked.elapsed();
        let windows = count_windows(&body["results"][0]["series"][0]["values"]);
        let mut still_short = false;
        let mut landed = complete;
        for (window_ms, count) in windows {
            landed += count;
            if !still_short && count >= sent.expected_in(window_ms, window_ms + COUNT_WINDOW_MS) {
                complete += count;
                complete_ms = window_ms + COUNT_WINDOW_MS;
            } else {
                still_short = true;
            }
        }
        if landed >= expected {
            return Ok((landed, started.elapsed()));
        }
        let rate = if landed > last.0 { (landed - last.0) as f64 / last.1.elapsed().as_secs_f64() } else { 0.0 };
        if landed > last.0 {
            last = (landed, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(120) {
            return Ok((landed, started.elapsed()));
        }
        tokio::time::sleep(pause_between_counts(expected - landed, rate, counted_in)).await;
    }
}

/// The (window start in ms, count) rows of a `GROUP BY time` count; a window with no points
/// has a null count.
fn count_windows(values: &serde_json::Value) -> Vec<(i64, u64)> {
    values
        .as_array()
        .map(|rows| rows.iter().filter_map(|row| Some((row[0].as_i64()?, row[1].as_u64().unwrap_or(0)))).collect())
        .unwrap_or_default()
}

/// How long to wait before counting again: at least as long as the last count took (the first
/// one reads every point landed, seconds at tens of millions), so that counting never takes
/// more than half a core from the writes, and while much is left, half the time the rest
/// should take at the rate seen, up to 5 s.
fn pause_between_counts(left: u64, samples_per_s: f64, last_count_took: Duration) -> Duration {
    let expected_rest = if samples_per_s > 0.0 {
        Duration::from_secs_f64((left as f64 / samples_per_s / 2.0).min(5.0))
    } else {
        Duration::ZERO
    };
    Duration::from_millis(250).max(last_count_took).max(expected_rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_expected_in_a_window_follows_from_what_each_pen_sent() {
        // Pen A sent 2500 samples (device times 10,000 to 12,499), pen B 1000, pen C none.
        let sent = Sent { start_ms: 10_000, samples_per_pen: vec![2500, 1000, 0] };
        assert_eq!(sent.total(), 3500);
        assert_eq!(sent.end_ms(), 12_500);
        assert_eq!(sent.expected_in(10_000, 11_000), 2000);
        assert_eq!(sent.expected_in(11_000, 12_000), 1000);
        assert_eq!(sent.expected_in(12_000, 13_000), 500);
        assert_eq!(sent.expected_in(0, 10_000), 0);
        assert_eq!(sent.expected_in(10_500, 10_501), 2);
        let whole: u64 = (0..20).map(|w| sent.expected_in(w * 1000, (w + 1) * 1000)).sum();
        assert_eq!(whole, sent.total());
    }

    #[test]
    fn empty_windows_count_zero() {
        let values = serde_json::json!([[1000, 5], [2000, null], [3000, 7]]);
        assert_eq!(count_windows(&values), vec![(1000, 5), (2000, 0), (3000, 7)]);
        assert_eq!(count_windows(&serde_json::Value::Null), vec![]);
    }

    #[test]
    fn counting_waits_in_proportion_to_the_count_and_to_what_is_left() {
        let ms = Duration::from_millis;
        // Little left, cheap count: the floor.
        assert_eq!(pause_between_counts(1_000, 200_000.0, ms(10)), ms(250));
        // An expensive count is not repeated back to back.
        assert_eq!(pause_between_counts(1_000, 200_000.0, ms(900)), ms(900));
        // Much left: half the time the rest should take, at most 5 s.
        assert_eq!(pause_between_counts(800_000, 200_000.0, ms(10)), ms(2000));
        assert_eq!(pause_between_counts(10_000_000, 200_000.0, ms(10)), ms(5000));
        // No progress seen yet: no estimate.
        assert_eq!(pause_between_counts(10_000_000, 0.0, ms(10)), ms(250));
    }
}

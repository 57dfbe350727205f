//! Redelivery storm: the same device history published four times over, shuffled across and
//! within pens. The record and the time series must come out as if each message came once,
//! in order.

use penwarden_proto::device::v1 as wire;
use penwarden_tests::{Influxd, Mosquitto, Penwarden, Publisher};
use prost::Message;

use crate::common::{register_lot, sign, verify_exactly_once};

const COPIES: usize = 4;
const SAMPLES_PER_BATCH: i64 = 5;

struct History {
    messages: Vec<(String, Vec<u8>)>,
    samples: u64,
    sessions: u64,
    events: u64,
}

fn udi(serial: &str) -> String {
    format!("(01)09506000134352(17)301231(10)STORM(21){serial}")
}

/// Three pens, three sessions each; pen B's second session reuses pen A's first cartridge and
/// pen C starts its third session without disinfecting.
fn history(t0: i64) -> History {
    use wire::pen_event::Kind;
    let mut history = History { messages: Vec::new(), samples: 0, sessions: 0, events: 0 };
    for (pen_index, pen) in ["STORM-A", "STORM-B", "STORM-C"].into_iter().enumerate() {
        let mut seq = 0;
        let event = |history: &mut History, seq: &mut u64, time: i64, kind: Kind| {
            *seq += 1;
            let message = wire::PenEvent {
                schema_version: 1,
                pen_serial: pen.into(),
                seq: *seq,
                time_unix_ms: time,
                kind: Some(kind),
            };
            history.messages.push((format!("pw/v1/pens/{pen}/events"), message.encode_to_vec()));
            history.events += 1;
        };
        for session in 1..=3 {
            let start = t0 + pen_index as i64 * 10_000 + session * 60_000;
            let session_id = format!("{pen}-s{session}");
            let cartridge =
                if pen == "STORM-B" && session == 2 { udi("STORM-A-1") } else { udi(&format!("{pen}-{session}")) };
            let signature = sign(&cartridge);
            let attached =
                wire::CartridgeAttached { cartridge_udi: cartridge.clone(), cartridge_signature: signature.clone() };
            event(&mut history, &mut seq, start - 3_000, Kind::CartridgeAttached(attached));
            if !(pen == "STORM-C" && session == 3) {
                let wipe =
                    wire::PenDisinfected { method: wire::DisinfectionMethod::AlcoholWipe as i32, sheath_changed: true };
                event(&mut history, &mut seq, start - 2_000, Kind::PenDisinfected(wipe));
            }
            let started = wire::SessionStarted {
                session_id: session_id.clone(),
                cartridge_udi: cartridge,
                cartridge_signature: signature,
                area: wire::TreatmentArea::Cheek as i32,
                depth_setting_mm: 1.0,
                ..Default::default()
            };
            event(&mut history, &mut seq, start, Kind::SessionStarted(started));
            history.sessions += 1;
            for batch in 0..2 {
                seq += 1;
                let samples = (0..SAMPLES_PER_BATCH)
                    .map(|k| wire::Sample {
                        time_unix_ms: start + (batch * SAMPLES_PER_BATCH + k) * 100,
                        depth_mm: 1.0,
                        speed_rpm: 7000.0,
                        motor_current_ma: 300.0,
                        temperature_c: 31.0,
                        battery_pct: 80.0,
                    })
                    .collect();
                let telemetry = wire::TelemetryBatch {
                    schema_version: 1,
                    pen_serial: pen.into(),
                    seq,
                    session_id: session_id.clone(),
                    samples,
                };
                history.messages.push((format!("pw/v1/pens/{pen}/telemetry"), telemetry.encode_to_vec()));
                history.samples += SAMPLES_PER_BATCH as u64;
            }
            let ended = wire::SessionEnded {
                session_id,
                duration_ms: 1_000,
                strokes: 120,
                motor_seconds: 1.0,
                max_depth_mm: 1.0,
            };
            event(&mut history, &mut seq, start + 1_000, Kind::SessionEnded(ended));
        }
    }
    history
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivery_storm_out_of_order_changes_nothing() {
    let mosquitto = Mosquitto::start().await;
    let influxd = Influxd::start().await;
    let mut penwarden = Penwarden::start(
        &mosquitto.url(),
        &[
            ("PENWARDEN_INFLUX_URL", influxd.url()),
            ("PENWARDEN_INFLUX_API", "v1".into()),
            ("PENWARDEN_AUTO_REGISTER_PENS", "true".into()),
        ],
    )
    .await;
    let t0 = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64 - 3_600_000;
    let history = history(t0);
    register_lot(&penwarden, "STORM").await;

    // Every message COPIES times, in a deterministic shuffle (xorshift, Fisher-Yates).
    let mut storm: Vec<&(String, Vec<u8>)> =
        history.messages.iter().cycle().take(history.messages.len() * COPIES).collect();
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    for i in (1..storm.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        storm.swap(i, (state % (i as u64 + 1)) as usize);
    }
    let mut publisher = Publisher::connect(mosquitto.port).await;
    for (topic, payload) in storm {
        publisher.publish(topic, payload.clone()).await;
    }

    let summary = serde_json::json!({
        "samples": history.samples,
        "sessions": history.sessions,
        "event_messages": history.events,
        "violations_injected": { "CARTRIDGE_REUSE": 1, "PEN_NOT_DISINFECTED": 1 },
    });
    let verified = verify_exactly_once(&influxd, &mut penwarden, &summary, false).await;
    eprintln!("after {COPIES} shuffled copies of every message: {verified}");
}

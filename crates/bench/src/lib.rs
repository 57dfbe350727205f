//! Shared inputs for penwarden's benchmarks: realistic payloads and ingest batches.

use penwarden_proto::device::v1 as wire;
use prost::Message;

/// A telemetry message as a pen sends it: `samples` readings 100 ms apart, binary protobuf.
pub fn telemetry_payload(pen: &str, seq: u64, samples: usize, start_ms: i64) -> Vec<u8> {
    let batch = wire::TelemetryBatch {
        schema_version: 1,
        pen_serial: pen.into(),
        seq,
        session_id: format!("{pen}-s1"),
        samples: (0..samples as i64)
            .map(|k| wire::Sample {
                time_unix_ms: start_ms + k * 100,
                depth_mm: 0.75,
                speed_rpm: 7000.0 + k as f64,
                motor_current_ma: 320.5,
                temperature_c: 31.25,
                battery_pct: 88.0 - k as f64 * 0.01,
            })
            .collect(),
    };
    batch.encode_to_vec()
}

//! Payload decoding (protobuf, or the protobuf JSON mapping) and validation per the protocol.
//! Anything that fails becomes a [`Rejection`] with a stable reason, for the quarantine.

use penwarden_domain::{
    DeviceEvent, DisinfectionMethod, EventRecord, OperatorId, PenSerial, Sample, SessionId, TreatmentArea,
};
use penwarden_proto::device::v1 as wire;
use penwarden_store::PenStateUpdate;
use prost::Message;

use crate::topic::{self, Channel};

/// The only schema version this ingest understands.
pub const SCHEMA_VERSION: u32 = 1;
/// 2015-01-01T00:00:00Z: no pen of this kind existed earlier; older times are a clock fault.
pub const EARLIEST_DEVICE_TIME_MS: i64 = 1_420_070_400_000;
const MAX_DEPTH_MM: f64 = 2.5;
const MAX_SPEED_RPM: f64 = 20_000.0;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_payload_bytes: usize,
    /// How far ahead of the receive time a device clock may be.
    pub max_future_skew_ms: i64,
    pub max_samples_per_batch: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_payload_bytes: 256 * 1024, max_future_skew_ms: 24 * 3_600_000, max_samples_per_batch: 1000 }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Telemetry {
    pub pen: PenSerial,
    pub seq: u64,
    pub session_id: Option<SessionId>,
    pub samples: Vec<Sample>,
}

impl Telemetry {
    /// What the message says, for telling a redelivery from a conflict.
    pub fn digest(&self) -> i64 {
        penwarden_domain::telemetry_digest(self.session_id.as_ref(), &self.samples)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    Telemetry(Telemetry),
    Event(EventRecord),
    State(PenStateUpdate),
}

impl Decoded {
    /// The pen's sequence number of the message (a last will carries its birth's).
    pub fn seq(&self) -> u64 {
        match self {
            Decoded::Telemetry(t) => t.seq,
            Decoded::Event(e) => e.seq,
            Decoded::State(s) => s.seq,
        }
    }

    pub fn pen(&self) -> &PenSerial {
        match self {
            Decoded::Telemetry(t) => &t.pen,
            Decoded::Event(e) => &e.pen,
            Decoded::State(s) => &s.pen,
        }
    }

    /// The device time the message speaks for (the newest sample of a telemetry batch).
    pub fn device_time_ms(&self) -> i64 {
        match self {
            Decoded::Telemetry(t) => t.samples.iter().map(|s| s.time_unix_ms).max().unwrap_or_default(),
            Decoded::Event(e) => e.device_time_unix_ms,
            Decoded::State(s) => s.device_time_ms,
        }
    }
}

/// Why a message went to the quarantine. `reason` is stable and countable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: &'static str,
    pub detail: String,
    pub pen: Option<String>,
}

fn reject(reason: &'static str, detail: impl Into<String>, pen: Option<&PenSerial>) -> Rejection {
    Rejection { reason, detail: detail.into(), pen: pen.map(|p| p.to_string()) }
}

/// Decodes and validates one MQTT message. `now_ms` is the receive time.
pub fn decode(root: &str, topic: &str, payload: &[u8], now_ms: i64, limits: &Limits) -> Result<Decoded, Rejection> {
    let (pen, channel) = topic::parse(root, topic).map_err(|detail| reject("topic_invalid", detail, None))?;
    check_size(&pen, payload.len(), limits)?;
    let json = payload.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let decoded = match channel {
        Channel::Telemetry => {
            validate_telemetry(&pen, parse::<wire::TelemetryBatch>(payload, json, &pen)?, now_ms, limits)
        }
        Channel::Events => validate_event(&pen, parse::<wire::PenEvent>(payload, json, &pen)?, now_ms, limits),
        Channel::State => validate_state(&pen, parse::<wire::PenState>(payload, json, &pen)?, now_ms, limits),
    }?;
    Ok(decoded)
}

/// The rejection of a payload of `payload_len` bytes that was cut on arrival because it is over
/// the limit: only its size and topic are known.
pub fn oversized(root: &str, topic: &str, payload_len: usize, limits: &Limits) -> Rejection {
    let pen = topic::parse(root, topic).ok().map(|(pen, _)| pen);
    match pen {
        Some(pen) => check_size(&pen, payload_len, limits).err(),
        None => None,
    }
    .unwrap_or_else(|| reject("payload_too_large", size_detail(payload_len, limits), None))
}

fn check_size(pen: &PenSerial, payload_len: usize, limits: &Limits) -> Result<(), Rejection> {
    if payload_len > limits.max_payload_bytes {
        return Err(reject("payload_too_large", size_detail(payload_len, limits), Some(pen)));
    }
    Ok(())
}

fn size_detail(payload_len: usize, limits: &Limits) -> String {
    format!("{payload_len} bytes, limit {}", limits.max_payload_bytes)
}

fn parse<M>(payload: &[u8], json: bool, pen: &PenSerial) -> Result<M, Rejection>
where
    M: Message + Default + serde::de::DeserializeOwned,
{
    if json {
        let text = std::str::from_utf8(payload).map_err(|e| reject("invalid_utf8", e.to_string(), Some(pen)))?;
        // serde_json refuses nesting deeper than 128 levels, so hostile JSON cannot blow the stack.
        serde_json::from_str(text).map_err(|e| reject("decode_error", format!("JSON: {e}"), Some(pen)))
    } else {
        M::decode(payload).map_err(|e| reject("decode_error", format!("protobuf: {e}"), Some(pen)))
    }
}

fn check_header(pen: &PenSerial, version: u32, serial: &str, seq: Option<u64>) -> Result<(), Rejection> {
    if version != SCHEMA_VERSION {
        return Err(reject(
            "unsupported_schema_version",
            format!("schema_version {version}; this ingest reads {SCHEMA_VERSION}"),
            Some(pen),
        ));
    }
    if serial != pen.as_str() {
        return Err(reject("serial_mismatch", format!("payload says {serial:?}, topic says {pen:?}"), Some(pen)));
    }
    if let Some(seq) = seq {
        if seq == 0 || seq > i64::MAX as u64 {
            return Err(reject("invalid_field", format!("seq {seq} outside 1..=2^63-1"), Some(pen)));
        }
    }
    Ok(())
}

fn check_time(pen: &PenSerial, time_ms: i64, now_ms: i64, limits: &Limits) -> Result<(), Rejection> {
    if time_ms < EARLIEST_DEVICE_TIME_MS || time_ms > now_ms.saturating_add(limits.max_future_skew_ms) {
        return Err(reject(
            "timestamp_out_of_range",
            format!(
                "device time {time_ms} ms is before 2015 or more than {} ms ahead of receive time {now_ms}",
                limits.max_future_skew_ms
            ),
            Some(pen),
        ));
    }
    Ok(())
}

fn check_range(pen: &PenSerial, name: &str, value: f64, min: f64, max: f64) -> Result<f64, Rejection> {
    if !value.is_finite() || value < min || value > max {
        return Err(reject("invalid_field", format!("{name} = {value} outside {min}..={max}"), Some(pen)));
    }
    Ok(value)
}

fn session_id(pen: &PenSerial, value: &str) -> Result<SessionId, Rejection> {
    SessionId::parse(value).map_err(|e| reject("invalid_field", e.to_string(), Some(pen)))
}

fn validate_telemetry(
    pen: &PenSerial,
    batch: wire::TelemetryBatch,
    now_ms: i64,
    limits: &Limits,
) -> Result<Decoded, Rejection> {
    check_header(pen, batch.schema_version, &batch.pen_serial, Some(batch.seq))?;
    if batch.samples.is_empty() || batch.samples.len() > limits.max_samples_per_batch {
        return Err(reject(
            "invalid_field",
            format!("{} samples; expected 1..={}", batch.samples.len(), limits.max_samples_per_batch),
            Some(pen),
        ));
    }
    let session_id = if batch.session_id.is_empty() { None } else { Some(session_id(pen, &batch.session_id)?) };
    let samples = batch
        .samples
        .iter()
        .map(|s| {
            check_time(pen, s.time_unix_ms, now_ms, limits)?;
            Ok(Sample {
                time_unix_ms: s.time_unix_ms,
                depth_mm: check_range(pen, "depth_mm", s.depth_mm, 0.0, MAX_DEPTH_MM)?,
                speed_rpm: check_range(pen, "speed_rpm", s.speed_rpm, 0.0, MAX_SPEED_RPM)?,
                motor_current_ma: check_range(pen, "motor_current_ma", s.motor_current_ma, 0.0, 10_000.0)?,
                temperature_c: check_range(pen, "temperature_c", s.temperature_c, -40.0, 125.0)?,
                battery_pct: check_range(pen, "battery_pct", s.battery_pct, 0.0, 100.0)?,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Decoded::Telemetry(Telemetry { pen: pen.clone(), seq: batch.seq, session_id, samples }))
}

fn validate_event(pen: &PenSerial, event: wire::PenEvent, now_ms: i64, limits: &Limits) -> Result<Decoded, Rejection> {
    use wire::pen_event::Kind;
    check_header(pen, event.schema_version, &event.pen_serial, Some(event.seq))?;
    check_time(pen, event.time_unix_ms, now_ms, limits)?;
    let kind = event
        .kind
        .ok_or_else(|| reject("invalid_field", "event has no kind (or a kind this ingest does not know)", Some(pen)))?;
    let domain_event = match kind {
        Kind::SessionStarted(s) => DeviceEvent::SessionStarted {
            session_id: session_id(pen, &s.session_id)?,
            cartridge_udi: s.cartridge_udi,
            cartridge_signature: s.cartridge_signature,
            operator_id: if s.operator_id.is_empty() {
                None
            } else {
                Some(OperatorId::parse(&s.operator_id).map_err(|e| reject("invalid_field", e.to_string(), Some(pen)))?)
            },
            area: treatment_area(pen, s.area)?,
            depth_setting_mm: check_range(pen, "depth_setting_mm", s.depth_setting_mm, 0.0, MAX_DEPTH_MM)?,
        },
        Kind::SessionEnded(s) => DeviceEvent::SessionEnded {
            session_id: session_id(pen, &s.session_id)?,
            duration_ms: s.duration_ms,
            strokes: s.strokes,
            motor_seconds: check_range(pen, "motor_seconds", s.motor_seconds, 0.0, 86_400.0)?,
            max_depth_mm: check_range(pen, "max_depth_mm", s.max_depth_mm, 0.0, MAX_DEPTH_MM)?,
        },
        Kind::CartridgeAttached(c) => DeviceEvent::CartridgeAttached { cartridge_udi: c.cartridge_udi },
        Kind::CartridgeDetached(c) => DeviceEvent::CartridgeDetached { cartridge_udi: c.cartridge_udi },
        Kind::PenDisinfected(d) => {
            DeviceEvent::Disinfected { method: disinfection_method(pen, d.method)?, sheath_changed: d.sheath_changed }
        }
        Kind::DepthChanged(d) => {
            DeviceEvent::DepthChanged { depth_mm: check_range(pen, "depth_mm", d.depth_mm, 0.0, MAX_DEPTH_MM)? }
        }
        Kind::Fault(f) => DeviceEvent::Fault { code: f.code, detail: f.detail },
        Kind::Status(s) => DeviceEvent::Status {
            battery_pct: check_range(pen, "battery_pct", s.battery_pct, 0.0, 100.0)?,
            firmware: s.firmware,
            motor_hours: check_range(pen, "motor_hours", s.motor_hours, 0.0, 1_000_000.0)?,
        },
    };
    Ok(Decoded::Event(EventRecord {
        pen: pen.clone(),
        seq: event.seq,
        device_time_unix_ms: event.time_unix_ms,
        event: domain_event,
    }))
}

fn validate_state(pen: &PenSerial, state: wire::PenState, now_ms: i64, limits: &Limits) -> Result<Decoded, Rejection> {
    // A last will carries its birth's seq, and pens that number no state send 0: not checked
    // for range (0 is allowed here), only bounded by max_seq_jump like every seq.
    check_header(pen, state.schema_version, &state.pen_serial, None)?;
    check_time(pen, state.time_unix_ms, now_ms, limits)?;
    Ok(Decoded::State(PenStateUpdate {
        pen: pen.clone(),
        seq: state.seq,
        device_time_ms: state.time_unix_ms,
        online: state.online,
        firmware: state.firmware,
        model: state.model,
    }))
}

fn treatment_area(pen: &PenSerial, value: i32) -> Result<TreatmentArea, Rejection> {
    Ok(match wire::TreatmentArea::try_from(value) {
        Ok(wire::TreatmentArea::Unspecified) => TreatmentArea::Unspecified,
        Ok(wire::TreatmentArea::Forehead) => TreatmentArea::Forehead,
        Ok(wire::TreatmentArea::Periorbital) => TreatmentArea::Periorbital,
        Ok(wire::TreatmentArea::Cheek) => TreatmentArea::Cheek,
        Ok(wire::TreatmentArea::Perioral) => TreatmentArea::Perioral,
        Ok(wire::TreatmentArea::Neck) => TreatmentArea::Neck,
        Ok(wire::TreatmentArea::Scalp) => TreatmentArea::Scalp,
        Ok(wire::TreatmentArea::Body) => TreatmentArea::Body,
        Err(_) => return Err(reject("invalid_field", format!("unknown treatment area {value}"), Some(pen))),
    })
}

fn disinfection_method(pen: &PenSerial, value: i32) -> Result<DisinfectionMethod, Rejection> {
    Ok(match wire::DisinfectionMethod::try_from(value) {
        Ok(wire::DisinfectionMethod::Unspecified) => DisinfectionMethod::Unspecified,
        Ok(wire::DisinfectionMethod::AlcoholWipe) => DisinfectionMethod::AlcoholWipe,
        Ok(wire::DisinfectionMethod::QuaternaryAmmoniumWipe) => DisinfectionMethod::QuaternaryAmmoniumWipe,
        Ok(wire::DisinfectionMethod::HydrogenPeroxideWipe) => DisinfectionMethod::HydrogenPeroxideWipe,
        Err(_) => return Err(reject("invalid_field", format!("unknown disinfection method {value}"), Some(pen))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn telemetry(serial: &str, time: i64, depth: f64) -> Vec<u8> {
        wire::TelemetryBatch {
            schema_version: 1,
            pen_serial: serial.into(),
            seq: 5,
            session_id: "s1".into(),
            samples: vec![wire::Sample {
                time_unix_ms: time,
                depth_mm: depth,
                speed_rpm: 7000.0,
                motor_current_ma: 300.0,
                temperature_c: 30.0,
                battery_pct: 80.0,
            }],
        }
        .encode_to_vec()
    }

    fn reason(result: Result<Decoded, Rejection>) -> &'static str {
        result.unwrap_err().reason
    }

    #[test]
    fn accepts_valid_protobuf_and_json() {
        let limits = Limits::default();
        let decoded = decode("pw/v1", "pw/v1/pens/P1/telemetry", &telemetry("P1", NOW, 1.0), NOW, &limits).unwrap();
        assert!(matches!(decoded, Decoded::Telemetry(ref t) if t.samples.len() == 1 && t.seq == 5));
        let json = br#"{"schemaVersion":1,"penSerial":"P1","seq":"9","timeUnixMs":"1800000000000","penDisinfected":{"method":"DISINFECTION_METHOD_ALCOHOL_WIPE","sheathChanged":true}}"#;
        let decoded = decode("pw/v1", "pw/v1/pens/P1/events", json, NOW, &limits).unwrap();
        assert!(matches!(
            decoded,
            Decoded::Event(EventRecord { seq: 9, event: DeviceEvent::Disinfected { sheath_changed: true, .. }, .. })
        ));
    }

    #[test]
    fn every_kind_of_bad_input_has_its_reason() {
        let limits = Limits { max_payload_bytes: 1000, ..Limits::default() };
        let good = telemetry("P1", NOW, 1.0);
        assert_eq!(reason(decode("pw/v1", "pw/v1/pens/P1/bogus", &good, NOW, &limits)), "topic_invalid");
        assert_eq!(reason(decode("pw/v1", "pw/v1/pens/P2/telemetry", &good, NOW, &limits)), "serial_mismatch");
        assert_eq!(
            reason(decode("pw/v1", "pw/v1/pens/P1/telemetry", &[0xff, 0x01, 0x02], NOW, &limits)),
            "decode_error"
        );
        assert_eq!(
            reason(decode("pw/v1", "pw/v1/pens/P1/telemetry", &good[..good.len() - 3], NOW, &limits)),
            "decode_error"
        );
        assert_eq!(
            reason(decode("pw/v1", "pw/v1/pens/P1/telemetry", &vec![0u8; 2000], NOW, &limits)),
            "payload_too_large"
        );
        assert_eq!(
            reason(decode(
                "pw/v1",
                "pw/v1/pens/P1/telemetry",
                &telemetry("P1", NOW + 10 * 365 * 86_400_000, 1.0),
                NOW,
                &limits
            )),
            "timestamp_out_of_range"
        );
        assert_eq!(
            reason(decode("pw/v1", "pw/v1/pens/P1/telemetry", &telemetry("P1", NOW, f64::NAN), NOW, &limits)),
            "invalid_field"
        );
        assert_eq!(
            reason(decode("pw/v1", "pw/v1/pens/P1/telemetry", &telemetry("P1", NOW, -1.0), NOW, &limits)),
            "invalid_field"
        );
        assert_eq!(
            reason(decode("pw/v1", "pw/v1/pens/P1/events", b"{\"schemaVersion\":1,\"bad", NOW, &limits)),
            "decode_error"
        );
        assert_eq!(reason(decode("pw/v1", "pw/v1/pens/P1/events", b"{\xff}", NOW, &limits)), "invalid_utf8");
        let deep = format!("{}{}", "{\"a\":".repeat(150), "}".repeat(150));
        assert_eq!(reason(decode("pw/v1", "pw/v1/pens/P1/events", deep.as_bytes(), NOW, &limits)), "decode_error");
        let v2 = wire::PenEvent { schema_version: 2, pen_serial: "P1".into(), seq: 1, time_unix_ms: NOW, kind: None }
            .encode_to_vec();
        assert_eq!(reason(decode("pw/v1", "pw/v1/pens/P1/events", &v2, NOW, &limits)), "unsupported_schema_version");
    }
}

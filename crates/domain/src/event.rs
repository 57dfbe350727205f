//! What pens report, after decoding and validation: facts with device time and sequence.

use crate::ids::{OperatorId, PenSerial, SessionId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TreatmentArea {
    Unspecified,
    Forehead,
    Periorbital,
    Cheek,
    Perioral,
    Neck,
    Scalp,
    Body,
}

impl TreatmentArea {
    pub const ALL: [TreatmentArea; 8] = [
        Self::Unspecified,
        Self::Forehead,
        Self::Periorbital,
        Self::Cheek,
        Self::Perioral,
        Self::Neck,
        Self::Scalp,
        Self::Body,
    ];

    /// The inverse of [`as_str`](Self::as_str).
    pub fn from_name(name: &str) -> Option<TreatmentArea> {
        Self::ALL.into_iter().find(|area| area.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::Forehead => "forehead",
            Self::Periorbital => "periorbital",
            Self::Cheek => "cheek",
            Self::Perioral => "perioral",
            Self::Neck => "neck",
            Self::Scalp => "scalp",
            Self::Body => "body",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DisinfectionMethod {
    Unspecified,
    AlcoholWipe,
    QuaternaryAmmoniumWipe,
    HydrogenPeroxideWipe,
}

impl DisinfectionMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::AlcoholWipe => "alcohol_wipe",
            Self::QuaternaryAmmoniumWipe => "quaternary_ammonium_wipe",
            Self::HydrogenPeroxideWipe => "hydrogen_peroxide_wipe",
        }
    }
}

/// One telemetry reading, validated (finite, in physical range).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub time_unix_ms: i64,
    pub depth_mm: f64,
    pub speed_rpm: f64,
    pub motor_current_ma: f64,
    pub temperature_c: f64,
    pub battery_pct: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DeviceEvent {
    SessionStarted {
        session_id: SessionId,
        /// The UDI exactly as the chip reported it; parsing it is a compliance question
        /// (an unparseable UDI is a CARTRIDGE_UNVERIFIED finding, not bad input).
        cartridge_udi: String,
        cartridge_signature: Vec<u8>,
        operator_id: Option<OperatorId>,
        area: TreatmentArea,
        depth_setting_mm: f64,
    },
    SessionEnded {
        session_id: SessionId,
        duration_ms: u64,
        strokes: u64,
        motor_seconds: f64,
        max_depth_mm: f64,
    },
    CartridgeAttached {
        cartridge_udi: String,
    },
    CartridgeDetached {
        cartridge_udi: String,
    },
    Disinfected {
        method: DisinfectionMethod,
        sheath_changed: bool,
    },
    DepthChanged {
        depth_mm: f64,
    },
    Fault {
        code: String,
        detail: String,
    },
    Status {
        battery_pct: f64,
        firmware: String,
        motor_hours: f64,
    },
}

impl DeviceEvent {
    /// Stable name used in the store and in logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::SessionStarted { .. } => "session_started",
            Self::SessionEnded { .. } => "session_ended",
            Self::CartridgeAttached { .. } => "cartridge_attached",
            Self::CartridgeDetached { .. } => "cartridge_detached",
            Self::Disinfected { .. } => "disinfected",
            Self::DepthChanged { .. } => "depth_changed",
            Self::Fault { .. } => "fault",
            Self::Status { .. } => "status",
        }
    }
}

/// An event with the identity that makes redelivery idempotent: (pen, seq).
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub pen: PenSerial,
    pub seq: u64,
    pub device_time_unix_ms: i64,
    pub event: DeviceEvent,
}

impl EventRecord {
    /// A digest of what the event says (device time and every field; not the pen and seq that
    /// identify it). Two messages with one (pen, seq) are the same message, redelivered, exactly
    /// when their digests match, whatever encoding (protobuf or JSON) each came in; anything
    /// else is a conflict. Stored, so the encoding below must never change.
    pub fn content_digest(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        // Each field is length-prefixed or fixed-width, so no two contents encode alike.
        let mut text = |value: &str| {
            hash.update((value.len() as u64).to_be_bytes());
            hash.update(value.as_bytes());
        };
        text(self.event.kind());
        text(&self.device_time_unix_ms.to_string());
        match &self.event {
            DeviceEvent::SessionStarted {
                session_id,
                cartridge_udi,
                cartridge_signature,
                operator_id,
                area,
                depth_setting_mm,
            } => {
                text(session_id.as_str());
                text(cartridge_udi);
                text(&hex(cartridge_signature));
                text(operator_id.as_ref().map_or("", |o| o.as_str()));
                text(area.as_str());
                text(&depth_setting_mm.to_bits().to_string());
            }
            DeviceEvent::SessionEnded { session_id, duration_ms, strokes, motor_seconds, max_depth_mm } => {
                text(session_id.as_str());
                text(&duration_ms.to_string());
                text(&strokes.to_string());
                text(&motor_seconds.to_bits().to_string());
                text(&max_depth_mm.to_bits().to_string());
            }
            DeviceEvent::CartridgeAttached { cartridge_udi } | DeviceEvent::CartridgeDetached { cartridge_udi } => {
                text(cartridge_udi)
            }
            DeviceEvent::Disinfected { method, sheath_changed } => {
                text(method.as_str());
                text(if *sheath_changed { "true" } else { "false" });
            }
            DeviceEvent::DepthChanged { depth_mm } => text(&depth_mm.to_bits().to_string()),
            DeviceEvent::Fault { code, detail } => {
                text(code);
                text(detail);
            }
            DeviceEvent::Status { battery_pct, firmware, motor_hours } => {
                text(&battery_pct.to_bits().to_string());
                text(firmware);
                text(&motor_hours.to_bits().to_string());
            }
        }
        hash.finalize().into()
    }
}

/// A digest of what one telemetry message says (its session and every sample; not the pen and
/// seq that identify it), for telling a redelivery from a conflict the way
/// [`EventRecord::content_digest`] does for events. 64 bits: one is stored per recent message of
/// every pen, and a collision could only make a pen's own conflicting message pass for a
/// redelivery of its own earlier one. Stored, so the encoding below must never change.
pub fn telemetry_digest(session_id: Option<&SessionId>, samples: &[Sample]) -> i64 {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    let session = session_id.map_or("", |id| id.as_str());
    hash.update((session.len() as u64).to_be_bytes());
    hash.update(session.as_bytes());
    // Fixed-width fields: no two sample lists encode alike.
    for sample in samples {
        hash.update(sample.time_unix_ms.to_be_bytes());
        for value in
            [sample.depth_mm, sample.speed_rpm, sample.motor_current_ma, sample.temperature_c, sample.battery_pct]
        {
            hash.update(value.to_bits().to_be_bytes());
        }
    }
    let digest: [u8; 32] = hash.finalize().into();
    i64::from_be_bytes(digest[..8].try_into().expect("a SHA-256 digest has 32 bytes"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(battery_pct: f64) -> EventRecord {
        EventRecord {
            pen: PenSerial::parse("P1").unwrap(),
            seq: 7,
            device_time_unix_ms: 1000,
            event: DeviceEvent::Status { battery_pct, firmware: "2.4.1".into(), motor_hours: 3.0 },
        }
    }

    #[test]
    fn the_digest_tells_a_redelivery_from_a_conflict() {
        assert_eq!(status(50.0).content_digest(), status(50.0).content_digest());
        assert_ne!(status(50.0).content_digest(), status(51.0).content_digest());
        let mut later = status(50.0);
        later.device_time_unix_ms += 1;
        assert_ne!(later.content_digest(), status(50.0).content_digest());
        // Fields cannot run into each other.
        let fault = |code: &str, detail: &str| EventRecord {
            event: DeviceEvent::Fault { code: code.into(), detail: detail.into() },
            ..status(0.0)
        };
        assert_ne!(fault("ab", "c").content_digest(), fault("a", "bc").content_digest());
    }

    #[test]
    fn the_telemetry_digest_sees_every_sample_field_and_the_session() {
        let sample = Sample {
            time_unix_ms: 1000,
            depth_mm: 0.5,
            speed_rpm: 9000.0,
            motor_current_ma: 120.0,
            temperature_c: 31.0,
            battery_pct: 80.0,
        };
        let session = SessionId::parse("s-1").unwrap();
        let digest = telemetry_digest(Some(&session), &[sample]);
        assert_eq!(digest, telemetry_digest(Some(&session), &[sample]));
        assert_ne!(digest, telemetry_digest(None, &[sample]));
        assert_ne!(digest, telemetry_digest(Some(&session), &[sample, sample]));
        let changes: [fn(&mut Sample); 6] = [
            |s| s.time_unix_ms += 1,
            |s| s.depth_mm += 0.1,
            |s| s.speed_rpm += 1.0,
            |s| s.motor_current_ma += 1.0,
            |s| s.temperature_c += 1.0,
            |s| s.battery_pct -= 1.0,
        ];
        for change in changes {
            let mut other = sample;
            change(&mut other);
            assert_ne!(digest, telemetry_digest(Some(&session), &[other]), "{other:?}");
        }
    }
}

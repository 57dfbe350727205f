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
}

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

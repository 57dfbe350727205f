//! The domain of penwarden and its compliance engine.
//!
//! Everything here is pure: no IO, no clock, no async. Adapters (ingest, store, API) hand
//! in facts and get verdicts back, so every rule can be tested, and property-tested, alone.

pub mod access;
pub mod audit;
pub mod compliance;
pub mod event;
pub mod ids;
pub mod ownership;
pub mod rate;
pub mod udi;

pub use event::{telemetry_digest, DeviceEvent, DisinfectionMethod, EventRecord, Sample, TreatmentArea};
pub use ids::{ChainId, ClinicId, OperatorId, PenSerial, SessionId};
pub use udi::{CartridgeKey, Udi};

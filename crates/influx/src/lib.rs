//! Time series for dashboards: line protocol encoding and an InfluxDB writer.
//!
//! The schema (measurements, tags, fields) is documented in docs/influx-schema.md; tags stay
//! low-cardinality, serials and session ids are fields.

pub mod line;
mod writer;

pub use line::LineBuilder;
pub use writer::{Api, Error, Options, RejectedLine, WriteReport, Writer};

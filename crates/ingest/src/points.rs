//! Time-series points, per docs/influx-schema.md. Tags are low-cardinality (chain, clinic,
//! pen, model, area, rule, severity); serials and session ids are fields.

use penwarden_influx::LineBuilder;
use penwarden_store::{Effects, PenDirectory, PenPlacement, RaisedViolation};

use crate::decode::Telemetry;

pub const TELEMETRY: &str = "pen_telemetry";
pub const SESSION: &str = "pen_session";
pub const VIOLATION: &str = "compliance_violation";
pub const STATUS: &str = "pen_status";

fn placement_tags<'a>(
    point: penwarden_influx::line::Point<'a>,
    placement: &PenPlacement,
) -> penwarden_influx::line::Point<'a> {
    point
        .tag("chain", placement.chain.as_ref().map_or("", |c| c.as_str()))
        .tag("clinic", placement.clinic.as_ref().map_or("", |c| c.as_str()))
}

/// One point per sample.
pub fn telemetry(lines: &mut LineBuilder, batch: &Telemetry, placement: &PenPlacement) {
    let session_id = batch.session_id.as_ref().map_or("", |s| s.as_str());
    // The series is the same for every sample of a batch: escape its tags once.
    let series = penwarden_influx::line::series_key(
        TELEMETRY,
        &[
            ("chain", placement.chain.as_ref().map_or("", |c| c.as_str())),
            ("clinic", placement.clinic.as_ref().map_or("", |c| c.as_str())),
            ("model", &placement.model),
            ("pen", batch.pen.as_str()),
        ],
    );
    for sample in &batch.samples {
        lines
            .point_in_series(&series)
            .float("depth_mm", sample.depth_mm)
            .float("speed_rpm", sample.speed_rpm)
            .float("motor_current_ma", sample.motor_current_ma)
            .float("temperature_c", sample.temperature_c)
            .float("battery_pct", sample.battery_pct)
            .string("session_id", session_id)
            .timestamp_ms(sample.time_unix_ms);
    }
}

fn violation(lines: &mut LineBuilder, violation: &RaisedViolation, active: bool) {
    lines
        .point(VIOLATION)
        .tag("chain", violation.chain.as_deref().unwrap_or(""))
        .tag("clinic", violation.clinic.as_deref().unwrap_or(""))
        .tag("pen", &violation.pen)
        .tag("rule", violation.rule.id())
        .tag("severity", violation.rule.severity().as_str())
        // A retraction overwrites the same point (same series and time) with active=0.
        .int("active", i64::from(active))
        .int("violation_id", violation.id)
        .string("session_id", &violation.session_id)
        .string("cartridge_serial", violation.cartridge_serial.as_deref().unwrap_or(""))
        .timestamp_ms(violation.device_time_ms);
}

/// Points derived from what a batch changed in the record; they go through the outbox.
pub fn derived(effects: &Effects, directory: &PenDirectory) -> Vec<String> {
    let mut lines = LineBuilder::default();
    for raised in &effects.raised {
        violation(&mut lines, raised, true);
    }
    for retracted in &effects.retracted {
        violation(&mut lines, retracted, false);
    }
    for session in &effects.ended_sessions {
        lines
            .point(SESSION)
            .tag("area", session.area.as_deref().unwrap_or(""))
            .tag("chain", session.chain.as_deref().unwrap_or(""))
            .tag("clinic", session.clinic.as_deref().unwrap_or(""))
            .tag("pen", &session.pen)
            .string("session_id", &session.session_id)
            .string("cartridge_serial", session.cartridge_serial.as_deref().unwrap_or(""))
            .string("cartridge_lot", session.cartridge_lot.as_deref().unwrap_or(""))
            .int("duration_ms", session.duration_ms)
            .int("strokes", session.strokes)
            .float("motor_seconds", session.motor_seconds)
            .float("max_depth_mm", session.max_depth_mm)
            .timestamp_ms(session.started_ms.unwrap_or(session.ended_ms));
    }
    for status in &effects.statuses {
        let placement = directory.get(&status.pen).unwrap_or_default();
        placement_tags(lines.point(STATUS), &placement)
            .tag("model", &placement.model)
            .tag("pen", status.pen.as_str())
            .float("battery_pct", status.battery_pct)
            .float("motor_hours", status.motor_hours)
            .string("firmware", &status.firmware)
            .timestamp_ms(status.device_time_ms);
    }
    if lines.is_empty() {
        Vec::new()
    } else {
        vec![lines.into_string()]
    }
}

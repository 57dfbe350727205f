//! Gathers the facts the session rules need from the record and asks the engine.

use penwarden_domain::compliance::{
    judge_session, judge_telemetry_gap, Judgement, LotFacts, SessionFacts, SessionRef, SessionSpan, Thresholds,
};
use penwarden_domain::TreatmentArea;
use sqlx::{Row, Sqlite, Transaction};

use crate::seq_runs::SeqRun;
use crate::Result;

/// Judges one session with the six session rules, and TELEMETRY_GAP once it has ended; no
/// judgements until its start is known.
/// Cartridge wear counts this session and every session of the same cartridge that started
/// before it (by device time), and the pen's condition is its last report before the session by
/// sequence number (motor hours: status events; firmware: status events and births; unknown
/// when there is none, never the pen's current firmware), so the verdict does not depend on
/// arrival order.
pub(crate) async fn judge(
    tx: &mut Transaction<'_, Sqlite>,
    session: &SessionRef,
    thresholds: &Thresholds,
) -> Result<Vec<Judgement>> {
    let row = sqlx::query(
        "SELECT s.started_ms, s.cartridge_udi, s.cartridge_signature, s.area, s.depth_setting_mm, s.max_depth_mm,
             o.licence_level,
             (SELECT e.motor_hours FROM pen_events e WHERE e.pen_serial = s.pen_serial AND e.kind = 'status'
                AND e.seq < s.start_seq ORDER BY e.seq DESC LIMIT 1),
             (SELECT firmware FROM (
                 SELECT e.seq, e.firmware FROM pen_events e WHERE e.pen_serial = s.pen_serial
                   AND e.kind = 'status' AND e.firmware <> '' AND e.seq < s.start_seq
                 UNION ALL
                 SELECT b.seq, b.firmware FROM pen_states b WHERE b.pen_serial = s.pen_serial
                   AND b.online AND b.firmware <> '' AND b.seq < s.start_seq)
              ORDER BY seq DESC LIMIT 1),
             l.public_key, l.recalled_ms,
             (SELECT COALESCE(SUM(c.motor_seconds), 0.0) FROM sessions c
              WHERE c.cartridge_gtin = s.cartridge_gtin AND c.cartridge_serial = s.cartridge_serial
                AND c.started_ms <= s.started_ms),
             (SELECT COALESCE(SUM(c.strokes), 0) FROM sessions c
              WHERE c.cartridge_gtin = s.cartridge_gtin AND c.cartridge_serial = s.cartridge_serial
                AND c.started_ms <= s.started_ms),
             s.start_seq, s.end_seq
         FROM sessions s
         LEFT JOIN operators o ON o.operator_id = s.operator_id
         LEFT JOIN lots l ON l.gtin = s.cartridge_gtin AND l.lot = s.cartridge_lot
         WHERE s.pen_serial = ? AND s.session_id = ? AND s.started_ms IS NOT NULL",
    )
    .bind(session.pen.as_str())
    .bind(session.session_id.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else { return Ok(Vec::new()) };

    let udi: String = row.get::<Option<String>, _>(1).unwrap_or_default();
    let signature: Vec<u8> = row.get::<Option<Vec<u8>>, _>(2).unwrap_or_default();
    let lot = row.get::<Option<Vec<u8>>, _>(9).map(|key| LotFacts {
        recalled: row.get::<Option<i64>, _>(10).is_some(),
        // A stored key of the wrong length cannot verify anything: all zeros is rejected.
        manufacturer_key: key.try_into().unwrap_or([0u8; 32]),
    });
    let firmware: Option<String> = row.get(8);
    let facts = SessionFacts {
        session: session.clone(),
        started_unix_ms: row.get(0),
        cartridge_udi: &udi,
        cartridge_signature: &signature,
        lot: lot.as_ref(),
        area: row
            .get::<Option<String>, _>(3)
            .and_then(|a| TreatmentArea::from_name(&a))
            .unwrap_or(TreatmentArea::Unspecified),
        depth_setting_mm: row.get::<Option<f64>, _>(4).unwrap_or(0.0),
        max_depth_mm: row.get(5),
        operator_licence_level: row.get::<Option<i64>, _>(6).and_then(|level| u8::try_from(level).ok()),
        cartridge_motor_seconds: row.get(11),
        cartridge_strokes: row.get::<i64, _>(12).max(0) as u64,
        pen_motor_hours: row.get(7),
        pen_firmware: firmware.as_deref(),
    };
    let mut judgements = judge_session(&facts, thresholds);
    if let (Some(start_seq), Some(end_seq)) = (row.get::<Option<i64>, _>(13), row.get::<Option<i64>, _>(14)) {
        let received_inside = received_between(tx, session, start_seq, end_seq).await?;
        let span = SessionSpan {
            session: session.clone(),
            start_seq: start_seq.max(0) as u64,
            end_seq: end_seq.max(0) as u64,
            received_inside: &received_inside,
        };
        judgements.push(judge_telemetry_gap(&span));
    }
    Ok(judgements)
}

/// The pen's sequence numbers received strictly between `start_seq` and `end_seq`, events and
/// telemetry alike, sorted and distinct.
async fn received_between(
    tx: &mut Transaction<'_, Sqlite>,
    session: &SessionRef,
    start_seq: i64,
    end_seq: i64,
) -> Result<Vec<u64>> {
    let runs: Vec<SeqRun> = sqlx::query(
        "SELECT first_seq, last_seq FROM received_seq_runs WHERE pen_serial = ? AND last_seq > ? AND first_seq < ?",
    )
    .bind(session.pen.as_str())
    .bind(start_seq)
    .bind(end_seq)
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(|row| SeqRun { first: row.get::<i64, _>(0).max(0) as u64, last: row.get::<i64, _>(1).max(0) as u64 })
    .collect();
    Ok(crate::seq_runs::received_between(&runs, start_seq.max(0) as u64, end_seq.max(0) as u64))
}

//! The SQL behind [`RecordTx`], one statement per fact fetched or result stored, written once
//! for both backends: `record_statements!()` expands inside each backend's `impl RecordTx`
//! (`SqliteRecord`, `PostgresRecord`), so each statement is compiled against that backend's
//! driver (sqlx has no generic connection but the type-poor `Any` driver). Placeholders are
//! `$1, $2, …`, which both drivers take; the forms the dialects spell differently come from
//! `Self::DIALECT`. What to fetch, in which order, and what it means is decided in
//! `crate::record`, once.

use std::collections::BTreeMap;

use penwarden_domain::compliance::{CartridgeUse, Judgement, PenFact, PenFactKind, Rule, SessionRef};
use penwarden_domain::udi::Date;
use penwarden_domain::{CartridgeKey, ChainId, ClinicId, DeviceEvent, EventRecord, PenSerial, SessionId, Udi};
use sqlx::{PgConnection, Row, SqliteConnection};

use crate::backend::Dialect;
use crate::batch::{
    json_array, stored_session_ref, EndedSession, PenStateUpdate, PenTelemetry, QuarantineEntry, RaisedViolation,
    TelemetryMessage,
};
use crate::directory::PenPlacement;
use crate::record::{Insertion, OpenRecord, RecordTx, StoredSession};
use crate::seq_runs::SeqRun;
use crate::Result;

/// The bodies of every [`RecordTx`] method, for a record type holding `&mut` to its
/// backend's connection in `.0` and naming its dialect in `DIALECT`.
macro_rules! record_statements {
    () => {
        /// Adds lines to the outbox inside the transaction that caused them.
        async fn insert_outbox(&mut self, lines: Vec<String>, now_ms: i64) -> Result<()> {
            if !lines.is_empty() {
                sqlx::query("INSERT INTO influx_outbox (lines, created_ms) VALUES ($1, $2)")
                    .bind(lines.join("\n"))
                    .bind(now_ms)
                    .execute(&mut *self.0)
                    .await?;
            }
            Ok(())
        }

        async fn touch_last_seen(&mut self, pen: &PenSerial, seen_ms: i64) -> Result<()> {
            sqlx::query(
                "UPDATE pens SET last_seen_ms = $1 WHERE pen_serial = $2 AND (last_seen_ms IS NULL OR last_seen_ms < $3)",
            )
            .bind(seen_ms)
            .bind(pen.as_str())
            .bind(seen_ms)
            .execute(&mut *self.0)
            .await?;
            Ok(())
        }

        async fn insert_event(&mut self, record: &EventRecord, now: i64) -> Result<Insertion> {
            let digest = record.content_digest();
            let (motor_hours, firmware) = match &record.event {
                DeviceEvent::Status { motor_hours, firmware, .. } => (Some(*motor_hours), Some(firmware.as_str())),
                _ => (None, None),
            };
            let (session_id, sheath_changed, detail) = match &record.event {
                DeviceEvent::SessionStarted { session_id, .. } | DeviceEvent::SessionEnded { session_id, .. } => {
                    (Some(session_id.as_str()), None, String::new())
                }
                DeviceEvent::Disinfected { method, sheath_changed } => {
                    (None, Some(*sheath_changed), method.as_str().to_owned())
                }
                DeviceEvent::CartridgeAttached { cartridge_udi } | DeviceEvent::CartridgeDetached { cartridge_udi } => {
                    (None, None, cartridge_udi.clone())
                }
                DeviceEvent::DepthChanged { depth_mm } => (None, None, depth_mm.to_string()),
                DeviceEvent::Fault { code, detail } => (None, None, format!("{code}: {detail}")),
                DeviceEvent::Status { firmware, .. } => (None, None, firmware.clone()),
            };
            let inserted = sqlx::query(
                "INSERT INTO pen_events (pen_serial, seq, kind, device_time_ms, received_ms, session_id, sheath_changed, detail,
                     motor_hours, firmware, content_digest)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (pen_serial, seq) DO NOTHING",
            )
            .bind(record.pen.as_str())
            .bind(record.seq as i64)
            .bind(record.event.kind())
            .bind(record.device_time_unix_ms)
            .bind(now)
            .bind(session_id)
            .bind(sheath_changed)
            .bind(detail)
            .bind(motor_hours)
            .bind(firmware)
            .bind(&digest[..])
            .execute(&mut *self.0)
            .await?
            .rows_affected();
            if inserted == 1 {
                return Ok(Insertion::New);
            }
            let recorded: Option<Vec<u8>> =
                sqlx::query_scalar("SELECT content_digest FROM pen_events WHERE pen_serial = $1 AND seq = $2")
                    .bind(record.pen.as_str())
                    .bind(record.seq as i64)
                    .fetch_one(&mut *self.0)
                    .await?;
            Ok(match recorded {
                Some(recorded) if recorded[..] != digest[..] => Insertion::Conflict,
                _ => Insertion::Redelivered,
            })
        }

        async fn record_session_start(
            &mut self,
            record: &EventRecord,
            placement: &PenPlacement,
            now: i64,
        ) -> Result<Option<CartridgeKey>> {
            let DeviceEvent::SessionStarted {
                session_id,
                cartridge_udi,
                cartridge_signature,
                operator_id,
                area,
                depth_setting_mm,
                ..
            } = &record.event
            else {
                return Ok(None);
            };
            // An unparseable UDI is itself a finding (CARTRIDGE_UNVERIFIED); the session is recorded.
            let udi = Udi::parse(cartridge_udi).ok();
            if let Some(udi) = &udi {
                sqlx::query(
                    "INSERT INTO cartridges (gtin, serial, lot, expiry, first_seen_ms) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (gtin, serial) DO NOTHING",
                )
                .bind(&udi.gtin)
                .bind(&udi.serial)
                .bind(&udi.lot)
                // The printed year's century is the one the session took place in.
                .bind(udi.expiry_date(Date::from_unix_ms(record.device_time_unix_ms).year).to_string())
                .bind(now)
                .execute(&mut *self.0)
                .await?;
            }
            sqlx::query(
                "INSERT INTO sessions (pen_serial, session_id, clinic_id, chain_id, start_seq, started_ms, cartridge_udi,
                     cartridge_gtin, cartridge_serial, cartridge_lot, operator_id, area, depth_setting_mm, cartridge_signature)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
                 ON CONFLICT (pen_serial, session_id) DO UPDATE SET
                     clinic_id = excluded.clinic_id, chain_id = excluded.chain_id, start_seq = excluded.start_seq,
                     started_ms = excluded.started_ms, cartridge_udi = excluded.cartridge_udi,
                     cartridge_gtin = excluded.cartridge_gtin, cartridge_serial = excluded.cartridge_serial,
                     cartridge_lot = excluded.cartridge_lot, operator_id = excluded.operator_id, area = excluded.area,
                     depth_setting_mm = excluded.depth_setting_mm, cartridge_signature = excluded.cartridge_signature",
            )
            .bind(record.pen.as_str())
            .bind(session_id.as_str())
            .bind(placement.clinic.as_ref().map(ClinicId::as_str))
            .bind(placement.chain.as_ref().map(ChainId::as_str))
            .bind(record.seq as i64)
            .bind(record.device_time_unix_ms)
            .bind(cartridge_udi)
            .bind(udi.as_ref().map(|u| u.gtin.as_str()))
            .bind(udi.as_ref().map(|u| u.serial.as_str()))
            .bind(udi.as_ref().map(|u| u.lot.as_str()))
            .bind(operator_id.as_ref().map(|o| o.as_str()))
            .bind(area.as_str())
            .bind(depth_setting_mm)
            .bind(cartridge_signature.as_slice())
            .execute(&mut *self.0)
            .await?;
            Ok(udi.map(|u| u.key()))
        }

        async fn record_session_end(&mut self, record: &EventRecord, placement: &PenPlacement) -> Result<()> {
            let DeviceEvent::SessionEnded { session_id, duration_ms, strokes, motor_seconds, max_depth_mm } = &record.event
            else {
                return Ok(());
            };
            sqlx::query(
                "INSERT INTO sessions (pen_serial, session_id, clinic_id, chain_id, end_seq, ended_ms, duration_ms, strokes,
                     motor_seconds, max_depth_mm)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (pen_serial, session_id) DO UPDATE SET
                     end_seq = excluded.end_seq, ended_ms = excluded.ended_ms, duration_ms = excluded.duration_ms,
                     strokes = excluded.strokes, motor_seconds = excluded.motor_seconds, max_depth_mm = excluded.max_depth_mm",
            )
            .bind(record.pen.as_str())
            .bind(session_id.as_str())
            .bind(placement.clinic.as_ref().map(ClinicId::as_str))
            .bind(placement.chain.as_ref().map(ChainId::as_str))
            .bind(record.seq as i64)
            .bind(record.device_time_unix_ms)
            .bind(*duration_ms as i64)
            .bind(*strokes as i64)
            .bind(motor_seconds)
            .bind(max_depth_mm)
            .execute(&mut *self.0)
            .await?;
            Ok(())
        }

        async fn session_cartridge(&mut self, pen: &PenSerial, session_id: &SessionId) -> Result<Option<CartridgeKey>> {
            let row = sqlx::query(
                "SELECT cartridge_gtin, cartridge_serial FROM sessions
                 WHERE pen_serial = $1 AND session_id = $2 AND cartridge_gtin IS NOT NULL AND cartridge_serial IS NOT NULL",
            )
            .bind(pen.as_str())
            .bind(session_id.as_str())
            .fetch_optional(&mut *self.0)
            .await?;
            Ok(row.map(|row| CartridgeKey { gtin: row.get(0), serial: row.get(1) }))
        }

        async fn cartridge_uses(&mut self, key: &CartridgeKey) -> Result<Vec<CartridgeUse>> {
            let rows = sqlx::query(
                "SELECT pen_serial, session_id, started_ms, start_seq FROM sessions
                 WHERE cartridge_gtin = $1 AND cartridge_serial = $2 AND start_seq IS NOT NULL",
            )
            .bind(&key.gtin)
            .bind(&key.serial)
            .fetch_all(&mut *self.0)
            .await?;
            Ok(rows
                .iter()
                .filter_map(|row| {
                    Some(CartridgeUse {
                        session: stored_session_ref(row.get(0), row.get(1))?,
                        started_unix_ms: row.get(2),
                        start_seq: row.get::<i64, _>(3) as u64,
                    })
                })
                .collect())
        }

        /// The facts of one pen from the last session start before `min_seq` on: enough to re-judge
        /// every session a new fact at `min_seq` or later can affect. Returns whether it is anchored.
        async fn pen_window(&mut self, pen: &PenSerial, min_seq: u64) -> Result<(Vec<PenFact>, bool)> {
            let anchor: Option<i64> = sqlx::query_scalar(
                "SELECT MAX(seq) FROM pen_events WHERE pen_serial = $1 AND kind = 'session_started' AND seq < $2",
            )
            .bind(pen.as_str())
            .bind(min_seq as i64)
            .fetch_one(&mut *self.0)
            .await?;
            let rows = sqlx::query(
                "SELECT seq, kind, session_id, sheath_changed FROM pen_events
                 WHERE pen_serial = $1 AND seq >= $2 AND kind IN ('session_started', 'session_ended', 'disinfected')
                 ORDER BY seq",
            )
            .bind(pen.as_str())
            .bind(anchor.unwrap_or(0))
            .fetch_all(&mut *self.0)
            .await?;
            let facts = rows
                .iter()
                .filter_map(|row| {
                    let seq = row.get::<i64, _>(0) as u64;
                    let kind: String = row.get(1);
                    let session = || row.get::<Option<String>, _>(2).and_then(|s| SessionId::parse(&s).ok());
                    let kind = match kind.as_str() {
                        "session_started" => PenFactKind::SessionStarted(session()?),
                        "session_ended" => PenFactKind::SessionEnded(session()?),
                        _ => PenFactKind::Disinfected { sheath_changed: row.get::<Option<bool>, _>(3).unwrap_or(false) },
                    };
                    Some(PenFact { seq, kind })
                })
                .collect();
            Ok((facts, anchor.is_some()))
        }

        /// Records a birth or last will in the pen's state history, and as its current state when no
        /// state message with a higher seq is known (at equal seq, offline after online, then device
        /// time). Returns the sessions whose PEN_SERVICE_DUE judgement a birth's firmware decides.
        async fn record_state(&mut self, state: &PenStateUpdate, now: i64) -> Result<Vec<SessionRef>> {
            let seq = state.seq.min(i64::MAX as u64) as i64;
            let inserted = sqlx::query(
                "INSERT INTO pen_states (pen_serial, seq, online, device_time_ms, firmware, model, received_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            )
            .bind(state.pen.as_str())
            .bind(seq)
            .bind(state.online)
            .bind(state.device_time_ms)
            .bind(&state.firmware)
            .bind(&state.model)
            .bind(now)
            .execute(&mut *self.0)
            .await?
            .rows_affected()
                > 0;
            if !inserted {
                return Ok(Vec::new());
            }
            sqlx::query(
                "UPDATE pens SET online = $1, state_time_ms = $2, state_seq = $3,
                     last_seen_ms = CASE WHEN last_seen_ms IS NULL OR last_seen_ms < $2 THEN $2 ELSE last_seen_ms END
                 WHERE pen_serial = $4
                   AND (state_time_ms IS NULL
                        OR ($3, CASE WHEN $1 THEN 0 ELSE 1 END, $2)
                           > (COALESCE(state_seq, 0), CASE WHEN online THEN 0 ELSE 1 END, state_time_ms))",
            )
            .bind(state.online)
            .bind(state.device_time_ms)
            .bind(seq)
            .bind(state.pen.as_str())
            .execute(&mut *self.0)
            .await?;
            self.refresh_firmware_and_model(&state.pen).await?;
            if state.online && !state.firmware.is_empty() {
                return self.sessions_judged_by_status(&state.pen, state.seq).await;
            }
            Ok(Vec::new())
        }

        /// Sessions of `pen` that start after the status event (or birth) at `status_seq` and before
        /// the next status event: a superset of the ones whose PEN_SERVICE_DUE judgement that report
        /// decides (the next status replaces both its motor hours and its firmware).
        async fn sessions_judged_by_status(&mut self, pen: &PenSerial, status_seq: u64) -> Result<Vec<SessionRef>> {
            let rows = sqlx::query(
                "SELECT pen_serial, session_id FROM sessions
                 WHERE pen_serial = $1 AND start_seq > $2
                   AND start_seq < COALESCE((SELECT MIN(seq) FROM pen_events
                                             WHERE pen_serial = $1 AND kind = 'status' AND seq > $2), 9223372036854775807)",
            )
            .bind(pen.as_str())
            .bind(status_seq as i64)
            .fetch_all(&mut *self.0)
            .await?;
            Ok(rows.into_iter().filter_map(|row| stored_session_ref(row.get(0), row.get(1))).collect())
        }

        /// The stored runs of each pen that reach into its window `[min - margin, max + margin]`.
        async fn stored_runs(
            &mut self,
            windows: &[(&str, u64, u64)],
            margin: u64,
        ) -> Result<BTreeMap<String, Vec<SeqRun>>> {
            let mut existing: BTreeMap<String, Vec<SeqRun>> = BTreeMap::new();
            if windows.is_empty() {
                return Ok(existing);
            }
            let sql = format!(
                "SELECT r.pen_serial, r.first_seq, r.last_seq FROM {}
                 JOIN received_seq_runs r ON r.pen_serial = arrived.value ->> 0
                  AND r.last_seq >= CAST(arrived.value ->> 1 AS BIGINT) - $2
                  AND r.first_seq <= CAST(arrived.value ->> 2 AS BIGINT) + $2",
                Self::DIALECT.json_rows(1, "arrived")
            );
            let rows = sqlx::query(&sql)
            .bind(json_array(windows))
            .bind(margin as i64)
            .fetch_all(&mut *self.0)
            .await?;
            for row in &rows {
                let run = SeqRun { first: row.get::<i64, _>(1).max(0) as u64, last: row.get::<i64, _>(2).max(0) as u64 };
                existing.entry(row.get(0)).or_default().push(run);
            }
            Ok(existing)
        }

        /// Moves each pen's last-seen time forward (never back), in one statement.
        async fn touch_last_seen_many(&mut self, telemetry: &BTreeMap<PenSerial, PenTelemetry>) -> Result<()> {
            let seen: Vec<(&str, i64)> =
                telemetry.iter().filter_map(|(pen, messages)| Some((pen.as_str(), messages.newest_sample_ms?))).collect();
            if seen.is_empty() {
                return Ok(());
            }
            let sql = format!(
                "UPDATE pens SET last_seen_ms = CAST(seen.value ->> 1 AS BIGINT) FROM {}
                 WHERE pens.pen_serial = seen.value ->> 0
                   AND (pens.last_seen_ms IS NULL OR pens.last_seen_ms < CAST(seen.value ->> 1 AS BIGINT))",
                Self::DIALECT.json_rows(1, "seen")
            );
            sqlx::query(&sql)
            .bind(json_array(&seen))
            .execute(&mut *self.0)
            .await?;
            Ok(())
        }

        /// Sessions with an active TELEMETRY_GAP whose span overlaps the sequence numbers a pen just
        /// filled in (pen -> lowest and highest new number): those may be the missing messages.
        async fn gapped_sessions_overlapping(
            &mut self,
            new_seqs: &BTreeMap<String, (u64, u64)>,
        ) -> Result<Vec<SessionRef>> {
            if new_seqs.is_empty() {
                return Ok(Vec::new());
            }
            let ranges: Vec<(&str, u64, u64)> =
                new_seqs.iter().map(|(pen, (min_seq, max_seq))| (pen.as_str(), *min_seq, *max_seq)).collect();
            let sql = format!(
                "WITH filled (pen_serial, min_seq, max_seq) AS (
                     SELECT value ->> 0, CAST(value ->> 1 AS BIGINT), CAST(value ->> 2 AS BIGINT) FROM {})
                 SELECT s.pen_serial, s.session_id FROM filled
                 JOIN violations v ON v.rule = $2 AND v.pen_serial = filled.pen_serial AND v.retracted_ms IS NULL
                 JOIN sessions s ON s.pen_serial = v.pen_serial AND s.session_id = v.session_id
                 WHERE s.start_seq < filled.max_seq AND s.end_seq > filled.min_seq",
                Self::DIALECT.json_rows(1, "filled_json")
            );
            let rows = sqlx::query(&sql)
            .bind(json_array(&ranges))
            .bind(Rule::TelemetryGap.id())
            .fetch_all(&mut *self.0)
            .await?;
            Ok(rows.into_iter().filter_map(|row| stored_session_ref(row.get(0), row.get(1))).collect())
        }

        async fn ended_session(&mut self, pen: &PenSerial, session_id: &SessionId) -> Result<Option<EndedSession>> {
            let row = sqlx::query(
                "SELECT clinic_id, chain_id, area, started_ms, ended_ms, duration_ms, cartridge_serial, cartridge_lot,
                     strokes, motor_seconds, max_depth_mm
                 FROM sessions WHERE pen_serial = $1 AND session_id = $2 AND ended_ms IS NOT NULL",
            )
            .bind(pen.as_str())
            .bind(session_id.as_str())
            .fetch_optional(&mut *self.0)
            .await?;
            Ok(row.map(|row| EndedSession {
                pen: pen.to_string(),
                clinic: row.get(0),
                chain: row.get(1),
                session_id: session_id.to_string(),
                area: row.get(2),
                started_ms: row.get(3),
                ended_ms: row.get(4),
                duration_ms: row.get(5),
                cartridge_serial: row.get(6),
                cartridge_lot: row.get(7),
                strokes: row.get(8),
                motor_seconds: row.get(9),
                max_depth_mm: row.get(10),
            }))
        }

        async fn insert_quarantine(&mut self, entry: &QuarantineEntry) -> Result<()> {
            sqlx::query(
                "INSERT INTO quarantine (received_ms, topic, pen_serial, reason, detail, payload_excerpt, payload_len,
                     payload)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(entry.received_ms)
            .bind(&entry.topic)
            .bind(&entry.pen)
            .bind(entry.reason)
            .bind(&entry.detail)
            .bind(&entry.payload_excerpt)
            .bind(entry.payload_len as i64)
            .bind(entry.payload.as_deref())
            .execute(&mut *self.0)
            .await?;
            Ok(())
        }

        async fn register_unknown_pen(&mut self, pen: &PenSerial, now_ms: i64) -> Result<()> {
            sqlx::query(
                "INSERT INTO pens (pen_serial, auto_registered, registered_ms) VALUES ($1, TRUE, $2)
                 ON CONFLICT (pen_serial) DO NOTHING",
            )
            .bind(pen.as_str())
            .bind(now_ms)
            .execute(&mut *self.0)
            .await?;
            Ok(())
        }

        async fn record_status(&mut self, pen: &PenSerial, battery_pct: f64, motor_hours: f64) -> Result<()> {
            sqlx::query("UPDATE pens SET battery_pct = $1, motor_hours = $2 WHERE pen_serial = $3")
                .bind(battery_pct)
                .bind(motor_hours)
                .bind(pen.as_str())
                .execute(&mut *self.0)
                .await?;
            self.refresh_firmware_and_model(pen).await
        }

        async fn telemetry_digest_slot(&mut self, pen: &PenSerial, slot: u64) -> Result<Option<TelemetryMessage>> {
            let row: Option<(i64, i64)> =
                sqlx::query_as("SELECT seq, digest FROM telemetry_digests WHERE pen_serial = $1 AND slot = $2")
                    .bind(pen.as_str())
                    .bind(slot as i64)
                    .fetch_optional(&mut *self.0)
                    .await?;
            Ok(row.map(|(seq, digest)| TelemetryMessage { seq: seq.max(0) as u64, digest }))
        }

        async fn event_recorded(&mut self, pen: &PenSerial, seq: u64) -> Result<bool> {
            let event: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pen_events WHERE pen_serial = $1 AND seq = $2)")
                .bind(pen.as_str())
                .bind(seq as i64)
                .fetch_one(&mut *self.0)
                .await?;
            Ok(event)
        }

        async fn store_telemetry_digests(&mut self, fresh: &[(&str, u64, u64, i64)]) -> Result<()> {
            if fresh.is_empty() {
                return Ok(());
            }
            // A slot keeps the newest number that fell into it.
            // WHERE TRUE: without it SQLite would read ON CONFLICT as part of a join.
            let sql = format!(
                "INSERT INTO telemetry_digests (pen_serial, slot, seq, digest)
                 SELECT value ->> 0, CAST(value ->> 1 AS BIGINT), CAST(value ->> 2 AS BIGINT),
                     CAST(value ->> 3 AS BIGINT)
                 FROM {} WHERE TRUE
                 ON CONFLICT (pen_serial, slot) DO UPDATE SET seq = excluded.seq, digest = excluded.digest
                 WHERE excluded.seq > telemetry_digests.seq",
                Self::DIALECT.json_rows(1, "fresh")
            );
            sqlx::query(&sql)
            .bind(json_array(fresh))
            .execute(&mut *self.0)
            .await?;
            Ok(())
        }

        async fn seq_received_without_event(&mut self, pen: &PenSerial, seq: u64) -> Result<bool> {
            Ok(sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM received_seq_runs r
                 WHERE r.pen_serial = $1 AND r.last_seq >= $2 AND r.first_seq <= $2
                   AND NOT EXISTS (SELECT 1 FROM pen_events e WHERE e.pen_serial = $1 AND e.seq = $2))",
            )
            .bind(pen.as_str())
            .bind(seq as i64)
            .fetch_one(&mut *self.0)
            .await?)
        }

        async fn replace_runs(&mut self, removed: &[(&str, u64)], added: &[(&str, u64, u64)]) -> Result<()> {
            if !removed.is_empty() {
                let sql = format!(
                    "DELETE FROM received_seq_runs
                     WHERE (pen_serial, last_seq) IN (SELECT value ->> 0, CAST(value ->> 1 AS BIGINT) FROM {})",
                    Self::DIALECT.json_rows(1, "removed")
                );
                sqlx::query(&sql)
                .bind(json_array(removed))
                .execute(&mut *self.0)
                .await?;
            }
            if !added.is_empty() {
                let sql = format!(
                    "INSERT INTO received_seq_runs (pen_serial, first_seq, last_seq)
                     SELECT value ->> 0, CAST(value ->> 1 AS BIGINT), CAST(value ->> 2 AS BIGINT) FROM {}",
                    Self::DIALECT.json_rows(1, "added")
                );
                sqlx::query(&sql)
                .bind(json_array(added))
                .execute(&mut *self.0)
                .await?;
            }
            Ok(())
        }

        async fn received_runs_between(&mut self, pen: &PenSerial, after: u64, before: u64) -> Result<Vec<SeqRun>> {
            let rows = sqlx::query(
                "SELECT first_seq, last_seq FROM received_seq_runs WHERE pen_serial = $1 AND last_seq > $2 AND first_seq < $3",
            )
            .bind(pen.as_str())
            .bind(after as i64)
            .bind(before as i64)
            .fetch_all(&mut *self.0)
            .await?;
            Ok(rows
                .iter()
                .map(|row| SeqRun { first: row.get::<i64, _>(0).max(0) as u64, last: row.get::<i64, _>(1).max(0) as u64 })
                .collect())
        }

        async fn active_violation(&mut self, rule: Rule, session: &SessionRef) -> Result<Option<i64>> {
            Ok(sqlx::query_scalar(
                "SELECT id FROM violations WHERE rule = $1 AND pen_serial = $2 AND session_id = $3 AND retracted_ms IS NULL",
            )
            .bind(rule.id())
            .bind(session.pen.as_str())
            .bind(session.session_id.as_str())
            .fetch_optional(&mut *self.0)
            .await?)
        }

        async fn raise_violation(
            &mut self,
            judgement: &Judgement,
            explanation: &str,
            now_ms: i64,
        ) -> Result<RaisedViolation> {
            let (rule, session) = (judgement.rule, &judgement.session);
            let row = sqlx::query(
                "INSERT INTO violations (rule, severity, explanation, related_pen, related_session_id, pen_serial,
                     clinic_id, chain_id, session_id, cartridge_gtin, cartridge_serial, device_time_ms, detected_ms,
                     change_seq)
                 SELECT $1, $2, $3, $4, $5, pen_serial, clinic_id, chain_id, session_id, cartridge_gtin, cartridge_serial,
                     COALESCE(started_ms, ended_ms, 0), $6, (SELECT COALESCE(MAX(change_seq), 0) + 1 FROM violations)
                 FROM sessions WHERE pen_serial = $7 AND session_id = $8
                 RETURNING id, clinic_id, chain_id, cartridge_serial, device_time_ms",
            )
            .bind(rule.id())
            .bind(rule.severity().as_str())
            .bind(explanation)
            .bind(judgement.related.as_ref().map(|related| related.pen.as_str()))
            .bind(judgement.related.as_ref().map(|related| related.session_id.as_str()))
            .bind(now_ms)
            .bind(session.pen.as_str())
            .bind(session.session_id.as_str())
            .fetch_one(&mut *self.0)
            .await?;
            Ok(RaisedViolation {
                id: row.get(0),
                rule,
                explanation: explanation.to_owned(),
                pen: session.pen.to_string(),
                clinic: row.get(1),
                chain: row.get(2),
                session_id: session.session_id.to_string(),
                cartridge_serial: row.get(3),
                device_time_ms: row.get(4),
            })
        }

        async fn retract_violation(
            &mut self,
            id: i64,
            rule: Rule,
            session: &SessionRef,
            reason: &str,
            now_ms: i64,
        ) -> Result<RaisedViolation> {
            let row = sqlx::query(
                "UPDATE violations SET retracted_ms = $1, retraction_reason = $2,
                     change_seq = (SELECT COALESCE(MAX(change_seq), 0) + 1 FROM violations)
                 WHERE id = $3
                 RETURNING explanation, clinic_id, chain_id, cartridge_serial, device_time_ms",
            )
            .bind(now_ms)
            .bind(reason)
            .bind(id)
            .fetch_one(&mut *self.0)
            .await?;
            Ok(RaisedViolation {
                id,
                rule,
                explanation: row.get(0),
                pen: session.pen.to_string(),
                clinic: row.get(1),
                chain: row.get(2),
                session_id: session.session_id.to_string(),
                cartridge_serial: row.get(3),
                device_time_ms: row.get(4),
            })
        }

        async fn stored_session(&mut self, session: &SessionRef) -> Result<Option<StoredSession>> {
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
                           AND b.online AND b.firmware <> '' AND b.seq < s.start_seq) AS reports
                      ORDER BY seq DESC LIMIT 1),
                     l.public_key, l.recalled_ms,
                     (SELECT COALESCE(SUM(c.motor_seconds), 0.0) FROM sessions c
                      WHERE c.cartridge_gtin = s.cartridge_gtin AND c.cartridge_serial = s.cartridge_serial
                        AND c.started_ms <= s.started_ms),
                     (SELECT CAST(COALESCE(SUM(c.strokes), 0) AS BIGINT) FROM sessions c
                      WHERE c.cartridge_gtin = s.cartridge_gtin AND c.cartridge_serial = s.cartridge_serial
                        AND c.started_ms <= s.started_ms),
                     s.start_seq, s.end_seq
                 FROM sessions s
                 LEFT JOIN operators o ON o.operator_id = s.operator_id
                 LEFT JOIN lots l ON l.gtin = s.cartridge_gtin AND l.lot = s.cartridge_lot
                 WHERE s.pen_serial = $1 AND s.session_id = $2 AND s.started_ms IS NOT NULL",
            )
            .bind(session.pen.as_str())
            .bind(session.session_id.as_str())
            .fetch_optional(&mut *self.0)
            .await?;
            Ok(row.map(|row| StoredSession {
                started_ms: row.get(0),
                cartridge_udi: row.get::<Option<String>, _>(1).unwrap_or_default(),
                cartridge_signature: row.get::<Option<Vec<u8>>, _>(2).unwrap_or_default(),
                area: row.get(3),
                depth_setting_mm: row.get(4),
                max_depth_mm: row.get(5),
                operator_licence_level: row.get(6),
                pen_motor_hours: row.get(7),
                pen_firmware: row.get(8),
                lot: row.get::<Option<Vec<u8>>, _>(9).map(|key| (key, row.get::<Option<i64>, _>(10).is_some())),
                cartridge_motor_seconds: row.get(11),
                cartridge_strokes: row.get(12),
                start_seq: row.get(13),
                end_seq: row.get(14),
            }))
        }

        /// The pen's firmware and model as its reports with the highest seq say (firmware: status
        /// events and births; model: births), whatever order they arrived in.
        async fn recall_lot(&mut self, gtin: &str, lot: &str, reason: &str, now_ms: i64) -> Result<bool> {
            let updated = sqlx::query(
                "UPDATE lots SET recalled_ms = COALESCE(recalled_ms, $1), recall_reason = $2
                 WHERE gtin = $3 AND lot = $4",
            )
            .bind(now_ms)
            .bind(reason)
            .bind(gtin)
            .bind(lot)
            .execute(&mut *self.0)
            .await?
            .rows_affected();
            Ok(updated > 0)
        }

        async fn sessions_of_lot(&mut self, gtin: &str, lot: &str) -> Result<Vec<SessionRef>> {
            let rows = sqlx::query(
                "SELECT pen_serial, session_id FROM sessions
                 WHERE cartridge_gtin = $1 AND cartridge_lot = $2 AND started_ms IS NOT NULL",
            )
            .bind(gtin)
            .bind(lot)
            .fetch_all(&mut *self.0)
            .await?;
            Ok(rows.into_iter().filter_map(|row| stored_session_ref(row.get(0), row.get(1))).collect())
        }

        async fn refresh_firmware_and_model(&mut self, pen: &PenSerial) -> Result<()> {
            sqlx::query(
                "UPDATE pens SET
                     firmware = COALESCE((SELECT firmware FROM (
                             SELECT * FROM (SELECT seq, firmware FROM pen_events
                                 WHERE pen_serial = $1 AND kind = 'status' AND firmware <> '' ORDER BY seq DESC LIMIT 1)
                                 AS last_status
                             UNION ALL
                             SELECT * FROM (SELECT seq, firmware FROM pen_states
                                 WHERE pen_serial = $1 AND online AND firmware <> '' ORDER BY seq DESC LIMIT 1)
                                 AS last_birth) AS reports
                         ORDER BY seq DESC LIMIT 1), firmware),
                     model = COALESCE((SELECT model FROM pen_states
                         WHERE pen_serial = $1 AND model <> '' ORDER BY seq DESC, online LIMIT 1), model)
                 WHERE pen_serial = $1",
            )
            .bind(pen.as_str())
            .execute(&mut *self.0)
            .await?;
            Ok(())
        }
    };
}

/// A backend's record type: `$name` holds `&mut` to a `$connection` (inside a write
/// transaction for everything that stores) and runs `record_statements!` in `$dialect`.
macro_rules! record_backend {
    ($(#[$doc:meta])* $name:ident, $connection:ty, $dialect:expr) => {
        $(#[$doc])*
        pub(crate) struct $name<'c>(pub(crate) &'c mut $connection);

        impl $name<'_> {
            const DIALECT: Dialect = $dialect;
        }

        impl RecordTx for $name<'_> {
            record_statements!();
        }

        impl OpenRecord for $connection {
            type Record<'c> = $name<'c>;

            fn record(&mut self) -> $name<'_> {
                $name(self)
            }
        }
    };
}

record_backend!(
    /// A SQLite connection seen as the record.
    SqliteRecord,
    SqliteConnection,
    Dialect::Sqlite
);
record_backend!(
    /// A PostgreSQL connection seen as the record.
    PostgresRecord,
    PgConnection,
    Dialect::Postgres
);

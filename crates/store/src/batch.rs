//! Applying one ingest batch: facts in, judgements recorded, all in one transaction.

use std::collections::{BTreeMap, BTreeSet};

use penwarden_domain::compliance::{
    judge_cartridge_reuse, judge_disinfection, CartridgeUse, Judgement, PenFact, PenFactKind, Rule, SessionRef,
};
use penwarden_domain::udi::Date;
use penwarden_domain::{CartridgeKey, ChainId, ClinicId, DeviceEvent, EventRecord, PenSerial, SessionId, Udi};
use sqlx::{Row, Sqlite, Transaction};

use crate::directory::PenPlacement;
use crate::seq_runs::{self, SeqRun};
use crate::{Result, Store, WRITE_TRANSACTION};

/// A pen's retained birth or death message.
#[derive(Debug, Clone, PartialEq)]
pub struct PenStateUpdate {
    pub pen: PenSerial,
    /// A birth takes the pen's next seq; the last will composed at the same connect carries
    /// the birth's seq (at equal seq, offline is the newer). 0 for pens that send none.
    pub seq: u64,
    pub device_time_ms: i64,
    pub online: bool,
    pub firmware: String,
    pub model: String,
}

/// A message that could not be accepted, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct QuarantineEntry {
    pub received_ms: i64,
    pub topic: String,
    /// The pen the message claims to come from, when that much could be read.
    pub pen: Option<String>,
    /// A stable, countable reason such as `decode_error` or `unregistered_pen`.
    pub reason: &'static str,
    pub detail: String,
    pub payload_excerpt: String,
    pub payload_len: usize,
    /// The whole payload, kept so the message can be replayed after review; `None` when it
    /// was cut for being over the size limit, or is not a message (a line InfluxDB refused).
    pub payload: Option<Vec<u8>>,
}

/// Everything one batch of MQTT messages asks of the record.
#[derive(Debug, Default)]
pub struct IngestBatch {
    pub received_ms: i64,
    /// Unknown pens to register on the fly (auto-registration is on).
    pub auto_register: BTreeSet<PenSerial>,
    pub events: Vec<EventRecord>,
    pub states: Vec<PenStateUpdate>,
    /// Per pen: its telemetry messages' sequence numbers (for TELEMETRY_GAP) and newest sample
    /// time (for last-seen). Fill it with [`IngestBatch::add_telemetry`].
    pub telemetry: BTreeMap<PenSerial, PenTelemetry>,
    pub quarantine: Vec<QuarantineEntry>,
}

impl IngestBatch {
    pub fn is_empty(&self) -> bool {
        self.auto_register.is_empty()
            && self.events.is_empty()
            && self.states.is_empty()
            && self.telemetry.is_empty()
            && self.quarantine.is_empty()
    }

    /// Records one telemetry message (`digest`: [`penwarden_domain::telemetry_digest`] of its
    /// content). The serial is cloned only for a pen's first message in the batch, not for
    /// every message.
    pub fn add_telemetry(&mut self, pen: &PenSerial, seq: u64, digest: i64, newest_sample_ms: Option<i64>) {
        let entry = match self.telemetry.get_mut(pen) {
            Some(entry) => entry,
            None => self.telemetry.entry(pen.clone()).or_default(),
        };
        entry.messages.push(TelemetryMessage { seq, digest });
        entry.newest_sample_ms = entry.newest_sample_ms.max(newest_sample_ms);
    }
}

/// One pen's telemetry messages in a batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PenTelemetry {
    pub messages: Vec<TelemetryMessage>,
    pub newest_sample_ms: Option<i64>,
}

/// A telemetry message as the record sees it: its number and a digest of what it said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TelemetryMessage {
    pub seq: u64,
    pub digest: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RaisedViolation {
    pub id: i64,
    pub rule: Rule,
    pub explanation: String,
    pub pen: String,
    pub clinic: Option<String>,
    pub chain: Option<String>,
    pub session_id: String,
    pub cartridge_serial: Option<String>,
    pub device_time_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EndedSession {
    pub pen: String,
    pub clinic: Option<String>,
    pub chain: Option<String>,
    pub session_id: String,
    pub area: Option<String>,
    pub started_ms: Option<i64>,
    pub ended_ms: i64,
    pub duration_ms: i64,
    pub cartridge_serial: Option<String>,
    pub cartridge_lot: Option<String>,
    pub strokes: i64,
    pub motor_seconds: f64,
    pub max_depth_mm: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StatusReport {
    pub pen: PenSerial,
    pub device_time_ms: i64,
    pub battery_pct: f64,
    pub firmware: String,
    pub motor_hours: f64,
}

/// What a batch changed, for the time series and for logs.
#[derive(Debug, Default)]
pub struct Effects {
    pub new_events: usize,
    pub duplicate_events: usize,
    /// Positions in the batch's `events` of events whose (pen, seq) is already recorded with
    /// other content: not applied; the caller quarantines their messages (`seq_conflict`).
    pub seq_conflicts: Vec<usize>,
    /// Telemetry messages received before with the same content: nothing recorded again.
    pub duplicate_telemetry: usize,
    /// Telemetry messages whose (pen, seq) was received before with other content, or taken by
    /// an event: not recorded; the caller quarantines them (`seq_conflict`) and writes none of
    /// their samples.
    pub telemetry_conflicts: BTreeSet<(PenSerial, TelemetryMessage)>,
    pub quarantined: usize,
    pub raised: Vec<RaisedViolation>,
    pub retracted: Vec<RaisedViolation>,
    pub ended_sessions: Vec<EndedSession>,
    pub statuses: Vec<StatusReport>,
}

const RETRACTION_REASON: &str = "withdrawn: device data that arrived later changed the judgement of this session";

impl Store {
    /// Applies a batch in one transaction. `outbox_lines` turns the batch's effects into
    /// time-series lines, which are stored in the same transaction so a crash after commit
    /// cannot lose them.
    pub async fn apply_batch(
        &self,
        batch: &IngestBatch,
        outbox_lines: impl FnOnce(&Effects) -> Vec<String>,
    ) -> Result<Effects> {
        let mut connection = self.writer.acquire().await?;
        match self.apply_batch_on(&mut connection, batch, outbox_lines).await {
            Ok(effects) => {
                self.announce_changes(&effects);
                for pen in &batch.auto_register {
                    if self.directory.get(pen).is_none() {
                        self.directory.insert(pen.clone(), PenPlacement::default());
                    }
                }
                Ok(effects)
            }
            Err(error) => {
                // After SQLITE_FULL or an I/O error SQLite may already have rolled the
                // transaction back, and sqlx's idea of the connection's transaction depth can
                // then be wrong (the next BEGIN would become a SAVEPOINT that never commits).
                // The connection is in doubt: close it, the pool opens a fresh one.
                let _ = sqlx::Connection::close(connection.detach()).await;
                Err(error)
            }
        }
    }

    async fn apply_batch_on(
        &self,
        connection: &mut sqlx::pool::PoolConnection<Sqlite>,
        batch: &IngestBatch,
        outbox_lines: impl FnOnce(&Effects) -> Vec<String>,
    ) -> Result<Effects> {
        let mut tx = sqlx::Connection::begin_with(&mut **connection, WRITE_TRANSACTION).await?;
        let mut effects = Effects::default();
        let now = batch.received_ms;

        for pen in &batch.auto_register {
            sqlx::query(
                "INSERT INTO pens (pen_serial, auto_registered, registered_ms) VALUES (?, TRUE, ?)
                 ON CONFLICT (pen_serial) DO NOTHING",
            )
            .bind(pen.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }

        for entry in &batch.quarantine {
            insert_quarantine(&mut tx, entry).await?;
        }
        effects.quarantined = batch.quarantine.len();

        let mut touched_sessions: BTreeSet<SessionRef> = BTreeSet::new();
        for state in &batch.states {
            touched_sessions.extend(record_state(&mut tx, state, now).await?);
        }

        touch_last_seen_many(&mut tx, &batch.telemetry).await?;

        // Sequence numbers that arrived in this batch, telemetry and new events alike.
        let telemetry = classify_telemetry(&mut tx, &batch.telemetry).await?;
        effects.duplicate_telemetry = telemetry.redelivered;
        effects.telemetry_conflicts = telemetry.conflicts;
        let mut arrived = telemetry.accepted;

        let mut touched_pens: BTreeMap<PenSerial, u64> = BTreeMap::new();
        let mut touched_cartridges: BTreeSet<CartridgeKey> = BTreeSet::new();
        let mut ended: Vec<(PenSerial, SessionId)> = Vec::new();
        // Sessions whose own facts changed (above: a firmware a birth announced) are judged
        // again by the session rules.
        for (position, record) in batch.events.iter().enumerate() {
            if seq_taken_by_telemetry(&mut tx, batch, record).await? {
                effects.seq_conflicts.push(position);
                continue;
            }
            match insert_event(&mut tx, record, now).await? {
                Insertion::New => {}
                Insertion::Redelivered => {
                    effects.duplicate_events += 1;
                    continue;
                }
                Insertion::Conflict => {
                    effects.seq_conflicts.push(position);
                    continue;
                }
            }
            effects.new_events += 1;
            arrived.entry(record.pen.as_str()).or_default().push(record.seq);
            touch_last_seen(&mut tx, &record.pen, record.device_time_unix_ms).await?;
            let placement = self.directory.get(&record.pen).unwrap_or_default();
            match &record.event {
                DeviceEvent::SessionStarted { session_id, .. } => {
                    if let Some(key) = record_session_start(&mut tx, record, &placement, now).await? {
                        touched_cartridges.insert(key);
                    }
                    touched_sessions.insert(SessionRef { pen: record.pen.clone(), session_id: session_id.clone() });
                }
                DeviceEvent::SessionEnded { session_id, .. } => {
                    record_session_end(&mut tx, record, &placement).await?;
                    // Its motor time counts toward the cartridge's wear in every later session.
                    if let Some(key) = session_cartridge(&mut tx, &record.pen, session_id).await? {
                        touched_cartridges.insert(key);
                    }
                    touched_sessions.insert(SessionRef { pen: record.pen.clone(), session_id: session_id.clone() });
                    ended.push((record.pen.clone(), session_id.clone()));
                }
                DeviceEvent::Status { battery_pct, firmware, motor_hours } => {
                    sqlx::query("UPDATE pens SET battery_pct = ?, motor_hours = ? WHERE pen_serial = ?")
                        .bind(battery_pct)
                        .bind(motor_hours)
                        .bind(record.pen.as_str())
                        .execute(&mut *tx)
                        .await?;
                    refresh_firmware_and_model(&mut tx, &record.pen).await?;
                    // Sessions that started after this status (and before the pen's next one)
                    // are judged by it: it may have arrived late.
                    touched_sessions.extend(sessions_judged_by_status(&mut tx, &record.pen, record.seq).await?);
                    effects.statuses.push(StatusReport {
                        pen: record.pen.clone(),
                        device_time_ms: record.device_time_unix_ms,
                        battery_pct: *battery_pct,
                        firmware: firmware.clone(),
                        motor_hours: *motor_hours,
                    });
                }
                _ => {}
            }
            if matches!(
                record.event,
                DeviceEvent::SessionStarted { .. } | DeviceEvent::SessionEnded { .. } | DeviceEvent::Disinfected { .. }
            ) {
                let min_seq = touched_pens.entry(record.pen.clone()).or_insert(record.seq);
                *min_seq = (*min_seq).min(record.seq);
            }
        }

        // The range of numbers each pen newly filled in: a late message can close a session's
        // telemetry gap.
        let new_seqs = record_received_seqs(&mut tx, &arrived).await?;
        touched_sessions.extend(gapped_sessions_overlapping(&mut tx, &new_seqs).await?);
        for key in &touched_cartridges {
            let uses = cartridge_uses(&mut tx, key).await?;
            touched_sessions.extend(uses.iter().map(|usage| usage.session.clone()));
            let judgements = judge_cartridge_reuse(&uses);
            reconcile(&mut tx, &judgements, now, &mut effects).await?;
        }
        for session in &touched_sessions {
            let judgements = crate::session_rules::judge(&mut tx, session, &self.thresholds).await?;
            reconcile(&mut tx, &judgements, now, &mut effects).await?;
        }
        for (pen, min_seq) in &touched_pens {
            let (facts, anchored) = pen_window(&mut tx, pen, *min_seq).await?;
            let judgements = judge_disinfection(pen, &facts, anchored);
            reconcile(&mut tx, &judgements, now, &mut effects).await?;
        }
        for (pen, session_id) in &ended {
            if let Some(session) = ended_session(&mut tx, pen, session_id).await? {
                effects.ended_sessions.push(session);
            }
        }

        insert_outbox(&mut tx, outbox_lines(&effects), now).await?;
        tx.commit().await?;
        Ok(effects)
    }

    /// Quarantines what went wrong after its batch was committed (a line InfluxDB refused).
    pub async fn quarantine(&self, entries: &[QuarantineEntry]) -> Result<()> {
        let mut tx = self.writer.begin_with(WRITE_TRANSACTION).await?;
        for entry in entries {
            insert_quarantine(&mut tx, entry).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Each pen's highest sequence number received so far.
    pub async fn highest_seqs(&self) -> Result<std::collections::HashMap<PenSerial, u64>> {
        let rows = sqlx::query("SELECT pen_serial, MAX(last_seq) FROM received_seq_runs GROUP BY pen_serial")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .filter_map(|row| Some((PenSerial::parse(row.get(0)).ok()?, row.get::<i64, _>(1).max(0) as u64)))
            .collect())
    }

    /// Oldest outbox rows first, at most `limit`.
    pub async fn pending_outbox(&self, limit: i64) -> Result<Vec<OutboxRow>> {
        let rows = sqlx::query("SELECT id, lines, created_ms FROM influx_outbox ORDER BY id LIMIT ?")
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(|row| OutboxRow { id: row.get(0), lines: row.get(1), created_ms: row.get(2) }).collect())
    }

    /// Forgets outbox rows once InfluxDB has accepted their lines. By id, not "up to an id":
    /// where ids are handed out before commit (a PostgreSQL sequence), a row with a smaller id
    /// may become visible only after a bigger one was read, and must not be deleted unread.
    pub async fn delete_outbox(&self, ids: &[i64]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query("DELETE FROM influx_outbox WHERE id IN (SELECT value FROM json_each(?))")
            .bind(json_array(ids))
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Spools lines InfluxDB could not take now; they are written before newer ones later.
    pub async fn spool(&self, lines: &str, now_ms: i64) -> Result<()> {
        sqlx::query("INSERT INTO influx_outbox (lines, created_ms) VALUES (?, ?)")
            .bind(lines)
            .bind(now_ms)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Bytes of line protocol waiting in the outbox (a full scan: call at start, then track).
    pub async fn outbox_bytes(&self) -> Result<u64> {
        let bytes: i64 = sqlx::query_scalar("SELECT COALESCE(SUM(LENGTH(lines)), 0) FROM influx_outbox")
            .fetch_one(&self.pool)
            .await?;
        Ok(bytes.max(0) as u64)
    }
}

async fn insert_quarantine(connection: &mut sqlx::SqliteConnection, entry: &QuarantineEntry) -> Result<()> {
    sqlx::query(
        "INSERT INTO quarantine (received_ms, topic, pen_serial, reason, detail, payload_excerpt, payload_len, payload)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(entry.received_ms)
    .bind(&entry.topic)
    .bind(&entry.pen)
    .bind(entry.reason)
    .bind(&entry.detail)
    .bind(&entry.payload_excerpt)
    .bind(entry.payload_len as i64)
    .bind(entry.payload.as_deref())
    .execute(connection)
    .await?;
    Ok(())
}

/// Lines waiting for InfluxDB: derived points, and telemetry spooled during an outage.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub id: i64,
    pub lines: String,
    pub created_ms: i64,
}

/// Adds lines to the outbox inside the transaction that caused them.
pub(crate) async fn insert_outbox(tx: &mut Transaction<'_, Sqlite>, lines: Vec<String>, now_ms: i64) -> Result<()> {
    if !lines.is_empty() {
        sqlx::query("INSERT INTO influx_outbox (lines, created_ms) VALUES (?, ?)")
            .bind(lines.join("\n"))
            .bind(now_ms)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

async fn touch_last_seen(tx: &mut Transaction<'_, Sqlite>, pen: &PenSerial, seen_ms: i64) -> Result<()> {
    sqlx::query("UPDATE pens SET last_seen_ms = ? WHERE pen_serial = ? AND (last_seen_ms IS NULL OR last_seen_ms < ?)")
        .bind(seen_ms)
        .bind(pen.as_str())
        .bind(seen_ms)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Inserts the event unless (pen, seq) is already recorded; returns whether it was new.
/// What became of an event offered to the record.
enum Insertion {
    New,
    /// The same (pen, seq) with the same content: a redelivery, nothing to do.
    Redelivered,
    /// The same (pen, seq) with other content.
    Conflict,
}

async fn insert_event(tx: &mut Transaction<'_, Sqlite>, record: &EventRecord, now: i64) -> Result<Insertion> {
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
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (pen_serial, seq) DO NOTHING",
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
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(Insertion::New);
    }
    let recorded: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT content_digest FROM pen_events WHERE pen_serial = ? AND seq = ?")
            .bind(record.pen.as_str())
            .bind(record.seq as i64)
            .fetch_one(&mut **tx)
            .await?;
    Ok(match recorded {
        Some(recorded) if recorded[..] != digest[..] => Insertion::Conflict,
        _ => Insertion::Redelivered,
    })
}

async fn record_session_start(
    tx: &mut Transaction<'_, Sqlite>,
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
            "INSERT INTO cartridges (gtin, serial, lot, expiry, first_seen_ms) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (gtin, serial) DO NOTHING",
        )
        .bind(&udi.gtin)
        .bind(&udi.serial)
        .bind(&udi.lot)
        // The printed year's century is the one the session took place in.
        .bind(udi.expiry_date(Date::from_unix_ms(record.device_time_unix_ms).year).to_string())
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    sqlx::query(
        "INSERT INTO sessions (pen_serial, session_id, clinic_id, chain_id, start_seq, started_ms, cartridge_udi,
             cartridge_gtin, cartridge_serial, cartridge_lot, operator_id, area, depth_setting_mm, cartridge_signature)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
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
    .execute(&mut **tx)
    .await?;
    Ok(udi.map(|u| u.key()))
}

async fn record_session_end(
    tx: &mut Transaction<'_, Sqlite>,
    record: &EventRecord,
    placement: &PenPlacement,
) -> Result<()> {
    let DeviceEvent::SessionEnded { session_id, duration_ms, strokes, motor_seconds, max_depth_mm } = &record.event
    else {
        return Ok(());
    };
    sqlx::query(
        "INSERT INTO sessions (pen_serial, session_id, clinic_id, chain_id, end_seq, ended_ms, duration_ms, strokes,
             motor_seconds, max_depth_mm)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
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
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn session_cartridge(
    tx: &mut Transaction<'_, Sqlite>,
    pen: &PenSerial,
    session_id: &SessionId,
) -> Result<Option<CartridgeKey>> {
    let row = sqlx::query(
        "SELECT cartridge_gtin, cartridge_serial FROM sessions
         WHERE pen_serial = ? AND session_id = ? AND cartridge_gtin IS NOT NULL AND cartridge_serial IS NOT NULL",
    )
    .bind(pen.as_str())
    .bind(session_id.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(|row| CartridgeKey { gtin: row.get(0), serial: row.get(1) }))
}

async fn cartridge_uses(tx: &mut Transaction<'_, Sqlite>, key: &CartridgeKey) -> Result<Vec<CartridgeUse>> {
    let rows = sqlx::query(
        "SELECT pen_serial, session_id, started_ms, start_seq FROM sessions
         WHERE cartridge_gtin = ? AND cartridge_serial = ? AND start_seq IS NOT NULL",
    )
    .bind(&key.gtin)
    .bind(&key.serial)
    .fetch_all(&mut **tx)
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
pub(crate) async fn pen_window(
    connection: &mut sqlx::SqliteConnection,
    pen: &PenSerial,
    min_seq: u64,
) -> Result<(Vec<PenFact>, bool)> {
    let anchor: Option<i64> = sqlx::query_scalar(
        "SELECT MAX(seq) FROM pen_events WHERE pen_serial = ? AND kind = 'session_started' AND seq < ?",
    )
    .bind(pen.as_str())
    .bind(min_seq as i64)
    .fetch_one(&mut *connection)
    .await?;
    let rows = sqlx::query(
        "SELECT seq, kind, session_id, sheath_changed FROM pen_events
         WHERE pen_serial = ? AND seq >= ? AND kind IN ('session_started', 'session_ended', 'disinfected')
         ORDER BY seq",
    )
    .bind(pen.as_str())
    .bind(anchor.unwrap_or(0))
    .fetch_all(&mut *connection)
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
async fn record_state(tx: &mut Transaction<'_, Sqlite>, state: &PenStateUpdate, now: i64) -> Result<Vec<SessionRef>> {
    let seq = state.seq.min(i64::MAX as u64) as i64;
    let inserted = sqlx::query(
        "INSERT INTO pen_states (pen_serial, seq, online, device_time_ms, firmware, model, received_ms)
         VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
    )
    .bind(state.pen.as_str())
    .bind(seq)
    .bind(state.online)
    .bind(state.device_time_ms)
    .bind(&state.firmware)
    .bind(&state.model)
    .bind(now)
    .execute(&mut **tx)
    .await?
    .rows_affected()
        > 0;
    if !inserted {
        return Ok(Vec::new());
    }
    sqlx::query(
        "UPDATE pens SET online = ?1, state_time_ms = ?2, state_seq = ?3,
             last_seen_ms = CASE WHEN last_seen_ms IS NULL OR last_seen_ms < ?2 THEN ?2 ELSE last_seen_ms END
         WHERE pen_serial = ?4
           AND (state_time_ms IS NULL
                OR (?3, CASE WHEN ?1 THEN 0 ELSE 1 END, ?2)
                   > (COALESCE(state_seq, 0), CASE WHEN online THEN 0 ELSE 1 END, state_time_ms))",
    )
    .bind(state.online)
    .bind(state.device_time_ms)
    .bind(seq)
    .bind(state.pen.as_str())
    .execute(&mut **tx)
    .await?;
    refresh_firmware_and_model(tx, &state.pen).await?;
    if state.online && !state.firmware.is_empty() {
        return sessions_judged_by_status(tx, &state.pen, state.seq).await;
    }
    Ok(Vec::new())
}

/// The pen's firmware and model as its reports with the highest seq say (firmware: status
/// events and births; model: births), whatever order they arrived in.
async fn refresh_firmware_and_model(tx: &mut Transaction<'_, Sqlite>, pen: &PenSerial) -> Result<()> {
    sqlx::query(
        "UPDATE pens SET
             firmware = COALESCE((SELECT firmware FROM (
                     SELECT * FROM (SELECT seq, firmware FROM pen_events
                         WHERE pen_serial = ?1 AND kind = 'status' AND firmware <> '' ORDER BY seq DESC LIMIT 1)
                     UNION ALL
                     SELECT * FROM (SELECT seq, firmware FROM pen_states
                         WHERE pen_serial = ?1 AND online AND firmware <> '' ORDER BY seq DESC LIMIT 1))
                 ORDER BY seq DESC LIMIT 1), firmware),
             model = COALESCE((SELECT model FROM pen_states
                 WHERE pen_serial = ?1 AND model <> '' ORDER BY seq DESC, online LIMIT 1), model)
         WHERE pen_serial = ?1",
    )
    .bind(pen.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Sessions of `pen` that start after the status event (or birth) at `status_seq` and before
/// the next status event: a superset of the ones whose PEN_SERVICE_DUE judgement that report
/// decides (the next status replaces both its motor hours and its firmware).
async fn sessions_judged_by_status(
    tx: &mut Transaction<'_, Sqlite>,
    pen: &PenSerial,
    status_seq: u64,
) -> Result<Vec<SessionRef>> {
    let rows = sqlx::query(
        "SELECT pen_serial, session_id FROM sessions
         WHERE pen_serial = ?1 AND start_seq > ?2
           AND start_seq < COALESCE((SELECT MIN(seq) FROM pen_events
                                     WHERE pen_serial = ?1 AND kind = 'status' AND seq > ?2), 9223372036854775807)",
    )
    .bind(pen.as_str())
    .bind(status_seq as i64)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().filter_map(|row| stored_session_ref(row.get(0), row.get(1))).collect())
}

// The per-pen statements below bind the whole batch as one JSON array and read it back with
// json_each: the SQL text never changes, so SQLite prepares each statement once per connection
// (sqlx caches it) instead of parsing a new multi-row statement for every batch size, and there
// is no bound-parameter limit to chunk around.

/// Slots per pen in `telemetry_digests`. A redelivery comes from the broker's in-flight window
/// (1,000 messages to penwarden in deploy/mosquitto.conf, spread over the fleet), so it is one
/// of its pen's last few messages; one older than a pen's last 64 would be taken as a conflict
/// and quarantined, where it loses nothing: its first delivery is recorded.
const TELEMETRY_DIGEST_SLOTS: u64 = 64;

/// The batch's telemetry, sorted into new, redelivered and conflicting messages.
struct TelemetryArrival<'a> {
    /// Per pen, the numbers of new and redelivered messages.
    accepted: BTreeMap<&'a str, Vec<u64>>,
    redelivered: usize,
    conflicts: BTreeSet<(PenSerial, TelemetryMessage)>,
}

/// Tells new telemetry from redeliveries and conflicts, and keeps the new messages' digests.
async fn classify_telemetry<'a>(
    tx: &mut Transaction<'_, Sqlite>,
    telemetry: &'a BTreeMap<PenSerial, PenTelemetry>,
) -> Result<TelemetryArrival<'a>> {
    let windows: Vec<(&str, u64, u64)> = telemetry
        .iter()
        .filter_map(|(pen, sent)| {
            let seqs = sent.messages.iter().map(|message| message.seq);
            Some((pen.as_str(), seqs.clone().min()?, seqs.max()?))
        })
        .collect();
    let received = stored_runs(tx, &windows, 0).await?;
    let mut arrival = TelemetryArrival { accepted: BTreeMap::new(), redelivered: 0, conflicts: BTreeSet::new() };
    let mut fresh: Vec<(&str, u64, u64, i64)> = Vec::new();
    for (pen, sent) in telemetry {
        let runs = received.get(pen.as_str()).map_or(&[][..], Vec::as_slice);
        let mut in_this_batch: BTreeMap<u64, i64> = BTreeMap::new();
        let accepted = arrival.accepted.entry(pen.as_str()).or_default();
        for message in &sent.messages {
            let same_as_before = match in_this_batch.get(&message.seq) {
                Some(digest) => Some(*digest == message.digest),
                None if runs.iter().any(|run| run.first <= message.seq && message.seq <= run.last) => {
                    Some(recorded_telemetry_matches(tx, pen, message).await?)
                }
                None => None,
            };
            match same_as_before {
                None => {
                    in_this_batch.insert(message.seq, message.digest);
                    fresh.push((pen.as_str(), message.seq % TELEMETRY_DIGEST_SLOTS, message.seq, message.digest));
                    accepted.push(message.seq);
                }
                Some(true) => {
                    arrival.redelivered += 1;
                    accepted.push(message.seq);
                }
                Some(false) => {
                    arrival.conflicts.insert((pen.clone(), *message));
                }
            }
        }
    }
    if !fresh.is_empty() {
        // A slot keeps the newest number that fell into it.
        sqlx::query(
            "INSERT INTO telemetry_digests (pen_serial, slot, seq, digest)
             SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3 FROM json_each(?) WHERE TRUE
             ON CONFLICT (pen_serial, slot) DO UPDATE SET seq = excluded.seq, digest = excluded.digest
             WHERE excluded.seq > telemetry_digests.seq",
        )
        .bind(json_array(&fresh))
        .execute(&mut **tx)
        .await?;
    }
    Ok(arrival)
}

/// Whether a telemetry message whose number was received before says what the first one said.
async fn recorded_telemetry_matches(
    tx: &mut Transaction<'_, Sqlite>,
    pen: &PenSerial,
    message: &TelemetryMessage,
) -> Result<bool> {
    let slot: Option<(i64, i64)> =
        sqlx::query_as("SELECT seq, digest FROM telemetry_digests WHERE pen_serial = ? AND slot = ?")
            .bind(pen.as_str())
            .bind((message.seq % TELEMETRY_DIGEST_SLOTS) as i64)
            .fetch_optional(&mut **tx)
            .await?;
    match slot {
        Some((seq, digest)) if seq as u64 == message.seq => return Ok(digest == message.digest),
        // A newer number took the slot: this one is older than any redelivery can be.
        Some((seq, _)) if seq as u64 > message.seq => return Ok(false),
        _ => {}
    }
    // No digest: the number was an event's (a conflict), or arrived before digests were kept
    // (taken as the same, as for events recorded before theirs were).
    let event: Option<i64> = sqlx::query_scalar("SELECT 1 FROM pen_events WHERE pen_serial = ? AND seq = ?")
        .bind(pen.as_str())
        .bind(message.seq as i64)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(event.is_none())
}

/// Whether an event's number already belongs to a telemetry message: one that arrived in this
/// batch, or one received earlier (a received number that no recorded event has).
async fn seq_taken_by_telemetry(
    tx: &mut Transaction<'_, Sqlite>,
    batch: &IngestBatch,
    record: &EventRecord,
) -> Result<bool> {
    if batch.telemetry.get(&record.pen).is_some_and(|sent| sent.messages.iter().any(|m| m.seq == record.seq)) {
        return Ok(true);
    }
    let taken: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM received_seq_runs r
         WHERE r.pen_serial = ?1 AND r.last_seq >= ?2 AND r.first_seq <= ?2
           AND NOT EXISTS (SELECT 1 FROM pen_events e WHERE e.pen_serial = ?1 AND e.seq = ?2)",
    )
    .bind(record.pen.as_str())
    .bind(record.seq as i64)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(taken.is_some())
}

/// The stored runs of each pen that reach into its window `[min - margin, max + margin]`.
async fn stored_runs(
    tx: &mut Transaction<'_, Sqlite>,
    windows: &[(&str, u64, u64)],
    margin: u64,
) -> Result<BTreeMap<String, Vec<SeqRun>>> {
    let mut existing: BTreeMap<String, Vec<SeqRun>> = BTreeMap::new();
    if windows.is_empty() {
        return Ok(existing);
    }
    let rows = sqlx::query(
        "SELECT r.pen_serial, r.first_seq, r.last_seq FROM json_each(?1) AS arrived
         JOIN received_seq_runs r ON r.pen_serial = arrived.value ->> 0
          AND r.last_seq >= (arrived.value ->> 1) - ?2 AND r.first_seq <= (arrived.value ->> 2) + ?2",
    )
    .bind(json_array(windows))
    .bind(margin as i64)
    .fetch_all(&mut **tx)
    .await?;
    for row in &rows {
        let run = SeqRun { first: row.get::<i64, _>(1).max(0) as u64, last: row.get::<i64, _>(2).max(0) as u64 };
        existing.entry(row.get(0)).or_default().push(run);
    }
    Ok(existing)
}

/// Merges the numbers that arrived into each pen's runs of received numbers; returns, per pen,
/// the lowest and highest number no run held before.
async fn record_received_seqs(
    tx: &mut Transaction<'_, Sqlite>,
    arrived: &BTreeMap<&str, Vec<u64>>,
) -> Result<BTreeMap<String, (u64, u64)>> {
    let windows: Vec<(&str, u64, u64)> =
        arrived.iter().filter_map(|(pen, seqs)| Some((*pen, *seqs.iter().min()?, *seqs.iter().max()?))).collect();
    if windows.is_empty() {
        return Ok(BTreeMap::new());
    }
    // The stored runs each pen's new numbers can touch: those reaching into [min - 1, max + 1].
    let existing = stored_runs(tx, &windows, 1).await?;
    let mut removed: Vec<(&str, u64)> = Vec::new();
    let mut added: Vec<(&str, u64, u64)> = Vec::new();
    let mut new_seqs = BTreeMap::new();
    for (pen, seqs) in arrived {
        let change = seq_runs::merge(existing.get(*pen).map_or(&[], Vec::as_slice), seqs);
        removed.extend(change.removed.iter().map(|run| (*pen, run.last)));
        added.extend(change.added.iter().map(|run| (*pen, run.first, run.last)));
        if let (Some(first), Some(last)) = (change.new_seqs.first(), change.new_seqs.last()) {
            new_seqs.insert((*pen).to_owned(), (*first, *last));
        }
    }
    if !removed.is_empty() {
        sqlx::query(
            "DELETE FROM received_seq_runs
             WHERE (pen_serial, last_seq) IN (SELECT value ->> 0, value ->> 1 FROM json_each(?))",
        )
        .bind(json_array(&removed))
        .execute(&mut **tx)
        .await?;
    }
    if !added.is_empty() {
        sqlx::query(
            "INSERT INTO received_seq_runs (pen_serial, first_seq, last_seq)
             SELECT value ->> 0, value ->> 1, value ->> 2 FROM json_each(?)",
        )
        .bind(json_array(&added))
        .execute(&mut **tx)
        .await?;
    }
    Ok(new_seqs)
}

/// Moves each pen's last-seen time forward (never back), in one statement.
async fn touch_last_seen_many(
    tx: &mut Transaction<'_, Sqlite>,
    telemetry: &BTreeMap<PenSerial, PenTelemetry>,
) -> Result<()> {
    let seen: Vec<(&str, i64)> =
        telemetry.iter().filter_map(|(pen, messages)| Some((pen.as_str(), messages.newest_sample_ms?))).collect();
    if seen.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE pens SET last_seen_ms = seen.value ->> 1 FROM json_each(?) AS seen
         WHERE pens.pen_serial = seen.value ->> 0
           AND (pens.last_seen_ms IS NULL OR pens.last_seen_ms < seen.value ->> 1)",
    )
    .bind(json_array(&seen))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Sessions with an active TELEMETRY_GAP whose span overlaps the sequence numbers a pen just
/// filled in (pen -> lowest and highest new number): those may be the missing messages.
async fn gapped_sessions_overlapping(
    tx: &mut Transaction<'_, Sqlite>,
    new_seqs: &BTreeMap<String, (u64, u64)>,
) -> Result<Vec<SessionRef>> {
    if new_seqs.is_empty() {
        return Ok(Vec::new());
    }
    let ranges: Vec<(&str, u64, u64)> =
        new_seqs.iter().map(|(pen, (min_seq, max_seq))| (pen.as_str(), *min_seq, *max_seq)).collect();
    let rows = sqlx::query(
        "WITH filled (pen_serial, min_seq, max_seq) AS (
             SELECT value ->> 0, value ->> 1, value ->> 2 FROM json_each(?1))
         SELECT s.pen_serial, s.session_id FROM filled
         JOIN violations v ON v.rule = ?2 AND v.pen_serial = filled.pen_serial AND v.retracted_ms IS NULL
         JOIN sessions s ON s.pen_serial = v.pen_serial AND s.session_id = v.session_id
         WHERE s.start_seq < filled.max_seq AND s.end_seq > filled.min_seq",
    )
    .bind(json_array(&ranges))
    .bind(Rule::TelemetryGap.id())
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().filter_map(|row| stored_session_ref(row.get(0), row.get(1))).collect())
}

/// Rows as a JSON array of arrays, for `json_each`.
fn json_array<T: serde::Serialize>(rows: &[T]) -> String {
    serde_json::to_string(rows).expect("tuples of strings and integers always serialize")
}

fn stored_session_ref(pen: String, session_id: String) -> Option<SessionRef> {
    Some(SessionRef { pen: PenSerial::parse(&pen).ok()?, session_id: SessionId::parse(&session_id).ok()? })
}

/// Makes the recorded violations agree with the judgements: raise what is new, retract what
/// later evidence withdrew. Unchanged judgements write nothing.
pub(crate) async fn reconcile(
    tx: &mut Transaction<'_, Sqlite>,
    judgements: &[Judgement],
    now: i64,
    effects: &mut Effects,
) -> Result<()> {
    for judgement in judgements {
        let rule = judgement.rule;
        let session = &judgement.session;
        let active: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM violations WHERE rule = ? AND pen_serial = ? AND session_id = ? AND retracted_ms IS NULL",
        )
        .bind(rule.id())
        .bind(session.pen.as_str())
        .bind(session.session_id.as_str())
        .fetch_optional(&mut **tx)
        .await?;
        match (&judgement.explanation, active) {
            (Some(explanation), None) => {
                let row = sqlx::query(
                    "INSERT INTO violations (rule, severity, explanation, related_pen, related_session_id, pen_serial,
                         clinic_id, chain_id, session_id, cartridge_gtin, cartridge_serial, device_time_ms, detected_ms,
                         change_seq)
                     SELECT ?, ?, ?, ?, ?, pen_serial, clinic_id, chain_id, session_id, cartridge_gtin, cartridge_serial,
                         COALESCE(started_ms, ended_ms, 0), ?, (SELECT COALESCE(MAX(change_seq), 0) + 1 FROM violations)
                     FROM sessions WHERE pen_serial = ? AND session_id = ?
                     RETURNING id, clinic_id, chain_id, cartridge_serial, device_time_ms",
                )
                .bind(rule.id())
                .bind(rule.severity().as_str())
                .bind(explanation)
                .bind(judgement.related.as_ref().map(|related| related.pen.as_str()))
                .bind(judgement.related.as_ref().map(|related| related.session_id.as_str()))
                .bind(now)
                .bind(session.pen.as_str())
                .bind(session.session_id.as_str())
                .fetch_one(&mut **tx)
                .await?;
                effects.raised.push(RaisedViolation {
                    id: row.get(0),
                    rule,
                    explanation: explanation.clone(),
                    pen: session.pen.to_string(),
                    clinic: row.get(1),
                    chain: row.get(2),
                    session_id: session.session_id.to_string(),
                    cartridge_serial: row.get(3),
                    device_time_ms: row.get(4),
                });
            }
            (None, Some(id)) => {
                let row = sqlx::query(
                    "UPDATE violations SET retracted_ms = ?, retraction_reason = ?,
                         change_seq = (SELECT COALESCE(MAX(change_seq), 0) + 1 FROM violations)
                     WHERE id = ?
                     RETURNING explanation, clinic_id, chain_id, cartridge_serial, device_time_ms",
                )
                .bind(now)
                .bind(RETRACTION_REASON)
                .bind(id)
                .fetch_one(&mut **tx)
                .await?;
                effects.retracted.push(RaisedViolation {
                    id,
                    rule,
                    explanation: row.get(0),
                    pen: session.pen.to_string(),
                    clinic: row.get(1),
                    chain: row.get(2),
                    session_id: session.session_id.to_string(),
                    cartridge_serial: row.get(3),
                    device_time_ms: row.get(4),
                });
            }
            _ => {}
        }
    }
    Ok(())
}

async fn ended_session(
    tx: &mut Transaction<'_, Sqlite>,
    pen: &PenSerial,
    session_id: &SessionId,
) -> Result<Option<EndedSession>> {
    let row = sqlx::query(
        "SELECT clinic_id, chain_id, area, started_ms, ended_ms, duration_ms, cartridge_serial, cartridge_lot,
             strokes, motor_seconds, max_depth_mm
         FROM sessions WHERE pen_serial = ? AND session_id = ? AND ended_ms IS NOT NULL",
    )
    .bind(pen.as_str())
    .bind(session_id.as_str())
    .fetch_optional(&mut **tx)
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

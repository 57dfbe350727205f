//! Ingest batches and what they ask of the record, and the SQLite store's entry points for
//! them: each batch in one write transaction (the work itself: `crate::record`).

use std::collections::{BTreeMap, BTreeSet};

use penwarden_domain::compliance::{Rule, SessionRef};
use penwarden_domain::{EventRecord, PenSerial, SessionId};
use sqlx::{Row, Sqlite};

use crate::directory::PenPlacement;
use crate::sqlite_record::SqliteRecord;
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
        let mut record = SqliteRecord(&mut tx);
        let effects =
            crate::record::apply_batch(&mut record, batch, &self.directory, &self.thresholds, outbox_lines).await?;
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

pub(crate) async fn insert_quarantine(connection: &mut sqlx::SqliteConnection, entry: &QuarantineEntry) -> Result<()> {
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

// The per-pen statements below bind the whole batch as one JSON array and read it back with
// json_each: the SQL text never changes, so SQLite prepares each statement once per connection
// (sqlx caches it) instead of parsing a new multi-row statement for every batch size, and there
// is no bound-parameter limit to chunk around.

/// Rows as a JSON array of arrays, for `json_each`.
pub(crate) fn json_array<T: serde::Serialize>(rows: &[T]) -> String {
    serde_json::to_string(rows).expect("tuples of strings and integers always serialize")
}

pub(crate) fn stored_session_ref(pen: String, session_id: String) -> Option<SessionRef> {
    Some(SessionRef { pen: PenSerial::parse(&pen).ok()?, session_id: SessionId::parse(&session_id).ok()? })
}

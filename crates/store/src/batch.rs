//! Ingest batches and what they ask of the record, and the store's entry points for them: each
//! batch in one write transaction (the work itself: `crate::record`), and the outbox of lines
//! for InfluxDB.

use std::collections::{BTreeMap, BTreeSet};

use crate::backend::{in_record_transaction, reading, writing};
use crate::directory::PenPlacement;
use crate::record::RecordTx as _;
use crate::{Result, Store};
use penwarden_domain::compliance::{Rule, SessionRef};
use penwarden_domain::{EventRecord, PenSerial, SessionId};

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
        let effects = in_record_transaction!(self, record => {
            crate::record::apply_batch(record, batch, &self.directory, &self.thresholds, outbox_lines).await?
        })?;
        self.announce_changes(&effects);
        for pen in &batch.auto_register {
            if self.directory.get(pen).is_none() {
                self.directory.insert(pen.clone(), PenPlacement::default());
            }
        }
        Ok(effects)
    }

    /// Quarantines what went wrong after its batch was committed (a line InfluxDB refused).
    pub async fn quarantine(&self, entries: &[QuarantineEntry]) -> Result<()> {
        in_record_transaction!(self, record => {
            for entry in entries {
                record.insert_quarantine(entry).await?;
            }
        })
    }

    /// Each pen's highest sequence number received so far.
    pub async fn highest_seqs(&self) -> Result<std::collections::HashMap<PenSerial, u64>> {
        let rows: Vec<(String, i64)> = reading!(self, pool => {
            sqlx::query_as("SELECT pen_serial, MAX(last_seq) FROM received_seq_runs GROUP BY pen_serial")
                .fetch_all(pool)
                .await?
        });
        Ok(rows.into_iter().filter_map(|(pen, seq)| Some((PenSerial::parse(&pen).ok()?, seq.max(0) as u64))).collect())
    }

    /// Oldest outbox rows first, at most `limit`, claimed or not (to look at; ingest claims
    /// what it delivers with `claim_outbox`).
    pub async fn pending_outbox(&self, limit: i64) -> Result<Vec<OutboxRow>> {
        let rows: Vec<(i64, String, i64)> = reading!(self, pool => {
            sqlx::query_as("SELECT id, lines, created_ms FROM influx_outbox ORDER BY id LIMIT $1")
                .bind(limit)
                .fetch_all(pool)
                .await?
        });
        Ok(rows.into_iter().map(|(id, lines, created_ms)| OutboxRow { id, lines, created_ms }).collect())
    }

    /// Claims the oldest unclaimed outbox rows, at most `limit`, for `lease_ms` from `now_ms`:
    /// no other instance sharing the store claims them meanwhile, so each row is delivered by
    /// one instance. Delete them once delivered, or release them if they could not be; an
    /// instance that dies holding a claim loses it when the lease runs out.
    pub async fn claim_outbox(&self, limit: i64, now_ms: i64, lease_ms: i64) -> Result<Vec<OutboxRow>> {
        let sql = format!(
            "UPDATE influx_outbox SET claimed_until_ms = $1
             WHERE id IN (SELECT id FROM influx_outbox WHERE claimed_until_ms IS NULL OR claimed_until_ms <= $2
                          ORDER BY id LIMIT $3{})
             RETURNING id, lines, created_ms",
            self.backend.dialect().skip_locked()
        );
        let mut rows: Vec<(i64, String, i64)> = writing!(self, pool => {
            sqlx::query_as(&sql).bind(now_ms.saturating_add(lease_ms)).bind(now_ms).bind(limit).fetch_all(pool).await?
        });
        rows.sort_unstable_by_key(|(id, _, _)| *id);
        Ok(rows.into_iter().map(|(id, lines, created_ms)| OutboxRow { id, lines, created_ms }).collect())
    }

    /// Gives claimed rows back undelivered (InfluxDB is down), for whichever instance tries next.
    pub async fn release_outbox(&self, ids: &[i64]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "UPDATE influx_outbox SET claimed_until_ms = NULL
             WHERE id IN (SELECT CAST(released.value AS BIGINT) FROM {})",
            self.backend.dialect().json_rows(1, "released")
        );
        writing!(self, pool => sqlx::query(&sql).bind(json_array(ids)).execute(pool).await.map(|_| ())?);
        Ok(())
    }

    /// Forgets outbox rows once InfluxDB has accepted their lines. By id, not "up to an id":
    /// where ids are handed out before commit (a PostgreSQL sequence), a row with a smaller id
    /// may become visible only after a bigger one was read, and must not be deleted unread.
    pub async fn delete_outbox(&self, ids: &[i64]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "DELETE FROM influx_outbox WHERE id IN (SELECT CAST(delivered.value AS BIGINT) FROM {})",
            self.backend.dialect().json_rows(1, "delivered")
        );
        writing!(self, pool => sqlx::query(&sql).bind(json_array(ids)).execute(pool).await.map(|_| ())?);
        Ok(())
    }

    /// Spools lines InfluxDB could not take now; they are written before newer ones later.
    pub async fn spool(&self, lines: &str, now_ms: i64) -> Result<()> {
        writing!(self, pool => {
            sqlx::query("INSERT INTO influx_outbox (lines, created_ms) VALUES ($1, $2)")
                .bind(lines)
                .bind(now_ms)
                .execute(pool)
                .await
                .map(|_| ())?
        });
        Ok(())
    }

    /// Bytes of line protocol waiting in the outbox (a full scan: call at start, then track).
    pub async fn outbox_bytes(&self) -> Result<u64> {
        let bytes: i64 = reading!(self, pool => {
            sqlx::query_scalar("SELECT CAST(COALESCE(SUM(LENGTH(lines)), 0) AS BIGINT) FROM influx_outbox")
                .fetch_one(pool)
                .await?
        });
        Ok(bytes.max(0) as u64)
    }
}

/// Lines waiting for InfluxDB: derived points, and telemetry spooled during an outage.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub id: i64,
    pub lines: String,
    pub created_ms: i64,
}

/// Rows as a JSON array of arrays, for `Dialect::json_rows`: one statement text for any number
/// of rows, which each connection prepares once (sqlx caches it).
pub(crate) fn json_array<T: serde::Serialize>(rows: &[T]) -> String {
    serde_json::to_string(rows).expect("tuples of strings and integers always serialize")
}

pub(crate) fn stored_session_ref(pen: String, session_id: String) -> Option<SessionRef> {
    Some(SessionRef { pen: PenSerial::parse(&pen).ok()?, session_id: SessionId::parse(&session_id).ok()? })
}

//! What a batch of pen messages, or a recall, does to the compliance record, whatever database
//! holds it. The facts go in, the rules (pure, in the domain crate) judge, and the judgements are
//! reconciled with the violations on record. Each backend implements [`RecordTx`]: SQL that
//! fetches one kind of fact or stores one kind of result, inside the caller's write
//! transaction. The order of the work and every decision are here, once, so backends cannot
//! drift apart.

use std::collections::{BTreeMap, BTreeSet};

use penwarden_domain::compliance::{
    judge_cartridge_reuse, judge_disinfection, judge_session, judge_telemetry_gap, CartridgeUse, Judgement, LotFacts,
    PenFact, Rule, SessionFacts, SessionRef, SessionSpan, Thresholds,
};
use penwarden_domain::{CartridgeKey, DeviceEvent, EventRecord, PenSerial, SessionId, TreatmentArea};

use crate::batch::{
    Effects, EndedSession, IngestBatch, PenStateUpdate, PenTelemetry, QuarantineEntry, RaisedViolation, StatusReport,
    TelemetryMessage,
};
use crate::directory::{PenDirectory, PenPlacement};
use crate::seq_runs::{self, SeqRun};
use crate::Result;

/// What became of an event offered to the record.
pub(crate) enum Insertion {
    New,
    /// The same (pen, seq) with the same content: a redelivery, nothing to do.
    Redelivered,
    /// The same (pen, seq) with other content.
    Conflict,
}

/// What the record holds about one started session, for the session rules.
pub(crate) struct StoredSession {
    pub(crate) started_ms: i64,
    pub(crate) cartridge_udi: String,
    pub(crate) cartridge_signature: Vec<u8>,
    pub(crate) area: Option<String>,
    pub(crate) depth_setting_mm: Option<f64>,
    pub(crate) max_depth_mm: Option<f64>,
    pub(crate) operator_licence_level: Option<i64>,
    /// The pen's last status report before the session, by seq.
    pub(crate) pen_motor_hours: Option<f64>,
    /// The pen's last firmware report (status or birth) before the session, by seq.
    pub(crate) pen_firmware: Option<String>,
    /// The registered lot of the cartridge: its manufacturer's public key, and whether it is
    /// recalled.
    pub(crate) lot: Option<(Vec<u8>, bool)>,
    /// Motor time and strokes of every session of the cartridge that started no later.
    pub(crate) cartridge_motor_seconds: f64,
    pub(crate) cartridge_strokes: i64,
    pub(crate) start_seq: Option<i64>,
    pub(crate) end_seq: Option<i64>,
}

/// The facts and results of the record, inside one write transaction, in one backend's SQL.
pub(crate) trait RecordTx {
    async fn register_unknown_pen(&mut self, pen: &PenSerial, now_ms: i64) -> Result<()>;
    async fn insert_quarantine(&mut self, entry: &QuarantineEntry) -> Result<()>;
    /// Records a birth or last will; returns the sessions a birth's firmware judges.
    async fn record_state(&mut self, state: &PenStateUpdate, now: i64) -> Result<Vec<SessionRef>>;
    async fn touch_last_seen(&mut self, pen: &PenSerial, seen_ms: i64) -> Result<()>;
    async fn touch_last_seen_many(&mut self, telemetry: &BTreeMap<PenSerial, PenTelemetry>) -> Result<()>;
    /// Each pen's stored runs of received numbers reaching into `[min - margin, max + margin]`.
    async fn stored_runs(&mut self, windows: &[(&str, u64, u64)], margin: u64)
        -> Result<BTreeMap<String, Vec<SeqRun>>>;
    /// Replaces runs (pen, last seq) by new ones (pen, first, last).
    async fn replace_runs(&mut self, removed: &[(&str, u64)], added: &[(&str, u64, u64)]) -> Result<()>;
    async fn received_runs_between(&mut self, pen: &PenSerial, after: u64, before: u64) -> Result<Vec<SeqRun>>;
    async fn telemetry_digest_slot(&mut self, pen: &PenSerial, slot: u64) -> Result<Option<TelemetryMessage>>;
    /// Keeps digests of new telemetry (pen, slot, seq, digest), at most one per slot; a slot
    /// keeps its newest seq.
    async fn store_telemetry_digests(&mut self, fresh: &[(&str, u64, u64, i64)]) -> Result<()>;
    async fn event_recorded(&mut self, pen: &PenSerial, seq: u64) -> Result<bool>;
    /// Whether `seq` of `pen` was received and no event holds it (a telemetry message did).
    async fn seq_received_without_event(&mut self, pen: &PenSerial, seq: u64) -> Result<bool>;
    async fn insert_event(&mut self, record: &EventRecord, now: i64) -> Result<Insertion>;
    async fn record_session_start(
        &mut self,
        record: &EventRecord,
        placement: &PenPlacement,
        now: i64,
    ) -> Result<Option<CartridgeKey>>;
    async fn record_session_end(&mut self, record: &EventRecord, placement: &PenPlacement) -> Result<()>;
    async fn session_cartridge(&mut self, pen: &PenSerial, session_id: &SessionId) -> Result<Option<CartridgeKey>>;
    async fn record_status(&mut self, pen: &PenSerial, battery_pct: f64, motor_hours: f64) -> Result<()>;
    async fn sessions_judged_by_status(&mut self, pen: &PenSerial, status_seq: u64) -> Result<Vec<SessionRef>>;
    async fn gapped_sessions_overlapping(&mut self, new_seqs: &BTreeMap<String, (u64, u64)>)
        -> Result<Vec<SessionRef>>;
    async fn cartridge_uses(&mut self, key: &CartridgeKey) -> Result<Vec<CartridgeUse>>;
    async fn stored_session(&mut self, session: &SessionRef) -> Result<Option<StoredSession>>;
    /// The pen's disinfection-rule facts from its last session start before `min_seq` on, and
    /// whether there is such a start.
    async fn pen_window(&mut self, pen: &PenSerial, min_seq: u64) -> Result<(Vec<PenFact>, bool)>;
    async fn active_violation(&mut self, rule: Rule, session: &SessionRef) -> Result<Option<i64>>;
    async fn raise_violation(
        &mut self,
        judgement: &Judgement,
        explanation: &str,
        now_ms: i64,
    ) -> Result<RaisedViolation>;
    async fn retract_violation(
        &mut self,
        id: i64,
        rule: Rule,
        session: &SessionRef,
        reason: &str,
        now_ms: i64,
    ) -> Result<RaisedViolation>;
    async fn ended_session(&mut self, pen: &PenSerial, session_id: &SessionId) -> Result<Option<EndedSession>>;
    async fn insert_outbox(&mut self, lines: Vec<String>, now_ms: i64) -> Result<()>;
    /// Sets the pen's firmware and model from its reports with the highest seq (firmware:
    /// status events and births; model: births), whatever order they arrived in.
    async fn refresh_firmware_and_model(&mut self, pen: &PenSerial) -> Result<()>;
    /// Marks a lot recalled (keeping the first recall's time); false if it is not registered.
    async fn recall_lot(&mut self, gtin: &str, lot: &str, reason: &str, now_ms: i64) -> Result<bool>;
    async fn sessions_of_lot(&mut self, gtin: &str, lot: &str) -> Result<Vec<SessionRef>>;
}

/// A backend's connection, seen as the record.
pub(crate) trait OpenRecord {
    type Record<'c>: RecordTx
    where
        Self: 'c;

    fn record(&mut self) -> Self::Record<'_>;
}

const RETRACTION_REASON: &str = "withdrawn: device data that arrived later changed the judgement of this session";

/// Applies a batch inside the caller's write transaction; `outbox_lines` turns its effects into
/// time-series lines, stored in the same transaction.
pub(crate) async fn apply_batch<R: RecordTx>(
    record: &mut R,
    batch: &IngestBatch,
    directory: &PenDirectory,
    thresholds: &Thresholds,
    outbox_lines: impl FnOnce(&Effects) -> Vec<String>,
) -> Result<Effects> {
    let mut effects = Effects::default();
    let now = batch.received_ms;

    for pen in &batch.auto_register {
        record.register_unknown_pen(pen, now).await?;
    }

    for entry in &batch.quarantine {
        record.insert_quarantine(entry).await?;
    }
    effects.quarantined = batch.quarantine.len();

    let mut touched_sessions: BTreeSet<SessionRef> = BTreeSet::new();
    for state in &batch.states {
        touched_sessions.extend(record.record_state(state, now).await?);
    }

    record.touch_last_seen_many(&batch.telemetry).await?;

    // Sequence numbers that arrived in this batch, telemetry and new events alike.
    let telemetry = classify_telemetry(record, &batch.telemetry).await?;
    effects.duplicate_telemetry = telemetry.redelivered;
    effects.telemetry_conflicts = telemetry.conflicts;
    let mut arrived = telemetry.accepted;

    let mut touched_pens: BTreeMap<PenSerial, u64> = BTreeMap::new();
    let mut touched_cartridges: BTreeSet<CartridgeKey> = BTreeSet::new();
    let mut ended: Vec<(PenSerial, SessionId)> = Vec::new();
    // Sessions whose own facts changed (above: a firmware a birth announced) are judged
    // again by the session rules.
    for (position, event) in batch.events.iter().enumerate() {
        if seq_taken_by_telemetry(record, batch, event).await? {
            effects.seq_conflicts.push(position);
            continue;
        }
        match record.insert_event(event, now).await? {
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
        arrived.entry(event.pen.as_str()).or_default().push(event.seq);
        record.touch_last_seen(&event.pen, event.device_time_unix_ms).await?;
        let placement = directory.get(&event.pen).unwrap_or_default();
        match &event.event {
            DeviceEvent::SessionStarted { session_id, .. } => {
                if let Some(key) = record.record_session_start(event, &placement, now).await? {
                    touched_cartridges.insert(key);
                }
                touched_sessions.insert(SessionRef { pen: event.pen.clone(), session_id: session_id.clone() });
            }
            DeviceEvent::SessionEnded { session_id, .. } => {
                record.record_session_end(event, &placement).await?;
                // Its motor time counts toward the cartridge's wear in every later session.
                if let Some(key) = record.session_cartridge(&event.pen, session_id).await? {
                    touched_cartridges.insert(key);
                }
                touched_sessions.insert(SessionRef { pen: event.pen.clone(), session_id: session_id.clone() });
                ended.push((event.pen.clone(), session_id.clone()));
            }
            DeviceEvent::Status { battery_pct, firmware, motor_hours } => {
                record.record_status(&event.pen, *battery_pct, *motor_hours).await?;
                // Sessions that started after this status (and before the pen's next one)
                // are judged by it: it may have arrived late.
                touched_sessions.extend(record.sessions_judged_by_status(&event.pen, event.seq).await?);
                effects.statuses.push(StatusReport {
                    pen: event.pen.clone(),
                    device_time_ms: event.device_time_unix_ms,
                    battery_pct: *battery_pct,
                    firmware: firmware.clone(),
                    motor_hours: *motor_hours,
                });
            }
            _ => {}
        }
        if matches!(
            event.event,
            DeviceEvent::SessionStarted { .. } | DeviceEvent::SessionEnded { .. } | DeviceEvent::Disinfected { .. }
        ) {
            let min_seq = touched_pens.entry(event.pen.clone()).or_insert(event.seq);
            *min_seq = (*min_seq).min(event.seq);
        }
    }

    // The range of numbers each pen newly filled in: a late message can close a session's
    // telemetry gap.
    let new_seqs = record_received_seqs(record, &arrived).await?;
    touched_sessions.extend(record.gapped_sessions_overlapping(&new_seqs).await?);
    for key in &touched_cartridges {
        let uses = record.cartridge_uses(key).await?;
        touched_sessions.extend(uses.iter().map(|usage| usage.session.clone()));
        let judgements = judge_cartridge_reuse(&uses);
        reconcile(record, &judgements, now, &mut effects).await?;
    }
    for session in &touched_sessions {
        let judgements = judge_stored_session(record, session, thresholds).await?;
        reconcile(record, &judgements, now, &mut effects).await?;
    }
    for (pen, min_seq) in &touched_pens {
        let (facts, anchored) = record.pen_window(pen, *min_seq).await?;
        let judgements = judge_disinfection(pen, &facts, anchored);
        reconcile(record, &judgements, now, &mut effects).await?;
    }
    for (pen, session_id) in &ended {
        if let Some(session) = record.ended_session(pen, session_id).await? {
            effects.ended_sessions.push(session);
        }
    }

    record.insert_outbox(outbox_lines(&effects), now).await?;
    Ok(effects)
}

/// Recalls a lot: every session that ever used it is judged again (CARTRIDGE_RECALLED) and the
/// verdicts reconciled with the record. `None` if the lot is not registered.
pub(crate) async fn recall_lot<R: RecordTx>(
    record: &mut R,
    (gtin, lot): (&str, &str),
    reason: &str,
    thresholds: &Thresholds,
    now_ms: i64,
    outbox_lines: impl FnOnce(&Effects) -> Vec<String>,
) -> Result<Option<Effects>> {
    if !record.recall_lot(gtin, lot, reason, now_ms).await? {
        return Ok(None);
    }
    let sessions = record.sessions_of_lot(gtin, lot).await?;
    Ok(Some(rejudge_sessions(record, &sessions, thresholds, now_ms, outbox_lines).await?))
}

/// Judges `sessions` again (a lot recalled) and reconciles the verdicts with the record.
async fn rejudge_sessions<R: RecordTx>(
    record: &mut R,
    sessions: &[SessionRef],
    thresholds: &Thresholds,
    now_ms: i64,
    outbox_lines: impl FnOnce(&Effects) -> Vec<String>,
) -> Result<Effects> {
    let mut effects = Effects::default();
    for session in sessions {
        let judgements = judge_stored_session(record, session, thresholds).await?;
        reconcile(record, &judgements, now_ms, &mut effects).await?;
    }
    record.insert_outbox(outbox_lines(&effects), now_ms).await?;
    Ok(effects)
}

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
async fn classify_telemetry<'a, R: RecordTx>(
    record: &mut R,
    telemetry: &'a BTreeMap<PenSerial, PenTelemetry>,
) -> Result<TelemetryArrival<'a>> {
    let windows: Vec<(&str, u64, u64)> = telemetry
        .iter()
        .filter_map(|(pen, sent)| {
            let seqs = sent.messages.iter().map(|message| message.seq);
            Some((pen.as_str(), seqs.clone().min()?, seqs.max()?))
        })
        .collect();
    let received = if windows.is_empty() { BTreeMap::new() } else { record.stored_runs(&windows, 0).await? };
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
                    Some(recorded_telemetry_matches(record, pen, message).await?)
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
    // One row per slot: a slot keeps the newest number that fell into it, and PostgreSQL
    // refuses a statement that would upsert one row twice.
    fresh.sort_unstable_by(|a, b| (a.0, a.1, std::cmp::Reverse(a.2)).cmp(&(b.0, b.1, std::cmp::Reverse(b.2))));
    fresh.dedup_by(|later, kept| (later.0, later.1) == (kept.0, kept.1));
    record.store_telemetry_digests(&fresh).await?;
    Ok(arrival)
}

/// Whether a telemetry message whose number was received before says what the first one said.
async fn recorded_telemetry_matches<R: RecordTx>(
    record: &mut R,
    pen: &PenSerial,
    message: &TelemetryMessage,
) -> Result<bool> {
    match record.telemetry_digest_slot(pen, message.seq % TELEMETRY_DIGEST_SLOTS).await? {
        Some(kept) if kept.seq == message.seq => return Ok(kept.digest == message.digest),
        // A newer number took the slot: this one is older than any redelivery can be.
        Some(kept) if kept.seq > message.seq => return Ok(false),
        _ => {}
    }
    // No digest: the number was an event's (a conflict), or arrived before digests were kept
    // (taken as the same, as for events recorded before theirs were).
    Ok(!record.event_recorded(pen, message.seq).await?)
}

/// Whether an event's number already belongs to a telemetry message: one that arrived in this
/// batch, or one received earlier (a received number that no recorded event has).
async fn seq_taken_by_telemetry<R: RecordTx>(record: &mut R, batch: &IngestBatch, event: &EventRecord) -> Result<bool> {
    if batch.telemetry.get(&event.pen).is_some_and(|sent| sent.messages.iter().any(|m| m.seq == event.seq)) {
        return Ok(true);
    }
    record.seq_received_without_event(&event.pen, event.seq).await
}

/// Merges the numbers that arrived into each pen's runs of received numbers; returns, per pen,
/// the lowest and highest number no run held before.
async fn record_received_seqs<R: RecordTx>(
    record: &mut R,
    arrived: &BTreeMap<&str, Vec<u64>>,
) -> Result<BTreeMap<String, (u64, u64)>> {
    let windows: Vec<(&str, u64, u64)> =
        arrived.iter().filter_map(|(pen, seqs)| Some((*pen, *seqs.iter().min()?, *seqs.iter().max()?))).collect();
    if windows.is_empty() {
        return Ok(BTreeMap::new());
    }
    // The stored runs each pen's new numbers can touch: those reaching into [min - 1, max + 1].
    let existing = record.stored_runs(&windows, 1).await?;
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
    record.replace_runs(&removed, &added).await?;
    Ok(new_seqs)
}

/// Makes the recorded violations agree with the judgements: raise what is new, retract what
/// later evidence withdrew. Unchanged judgements write nothing.
async fn reconcile<R: RecordTx>(
    record: &mut R,
    judgements: &[Judgement],
    now: i64,
    effects: &mut Effects,
) -> Result<()> {
    for judgement in judgements {
        let active = record.active_violation(judgement.rule, &judgement.session).await?;
        match (&judgement.explanation, active) {
            (Some(explanation), None) => {
                effects.raised.push(record.raise_violation(judgement, explanation, now).await?);
            }
            (None, Some(id)) => {
                let retracted =
                    record.retract_violation(id, judgement.rule, &judgement.session, RETRACTION_REASON, now).await?;
                effects.retracted.push(retracted);
            }
            _ => {}
        }
    }
    Ok(())
}

/// Judges one session with the six session rules, and TELEMETRY_GAP once it has ended; no
/// judgements until its start is known.
/// Cartridge wear counts this session and every session of the same cartridge that started
/// before it (by device time), and the pen's condition is its last report before the session by
/// sequence number (motor hours: status events; firmware: status events and births; unknown
/// when there is none, never the pen's current firmware), so the verdict does not depend on
/// arrival order.
async fn judge_stored_session<R: RecordTx>(
    record: &mut R,
    session: &SessionRef,
    thresholds: &Thresholds,
) -> Result<Vec<Judgement>> {
    let Some(stored) = record.stored_session(session).await? else { return Ok(Vec::new()) };
    let lot = stored.lot.as_ref().map(|(key, recalled)| LotFacts {
        recalled: *recalled,
        // A stored key of the wrong length cannot verify anything: all zeros is rejected.
        manufacturer_key: key.clone().try_into().unwrap_or([0u8; 32]),
    });
    let facts = SessionFacts {
        session: session.clone(),
        started_unix_ms: stored.started_ms,
        cartridge_udi: &stored.cartridge_udi,
        cartridge_signature: &stored.cartridge_signature,
        lot: lot.as_ref(),
        area: stored.area.as_deref().and_then(TreatmentArea::from_name).unwrap_or(TreatmentArea::Unspecified),
        depth_setting_mm: stored.depth_setting_mm.unwrap_or(0.0),
        max_depth_mm: stored.max_depth_mm,
        operator_licence_level: stored.operator_licence_level.and_then(|level| u8::try_from(level).ok()),
        cartridge_motor_seconds: stored.cartridge_motor_seconds,
        cartridge_strokes: stored.cartridge_strokes.max(0) as u64,
        pen_motor_hours: stored.pen_motor_hours,
        pen_firmware: stored.pen_firmware.as_deref(),
    };
    let mut judgements = judge_session(&facts, thresholds);
    if let (Some(start_seq), Some(end_seq)) = (stored.start_seq, stored.end_seq) {
        let (start_seq, end_seq) = (start_seq.max(0) as u64, end_seq.max(0) as u64);
        let runs = record.received_runs_between(&session.pen, start_seq, end_seq).await?;
        let received_inside = seq_runs::received_between(&runs, start_seq, end_seq);
        let span = SessionSpan { session: session.clone(), start_seq, end_seq, received_inside: &received_inside };
        judgements.push(judge_telemetry_gap(&span));
    }
    Ok(judgements)
}

//! Batches messages and makes their effects durable before acking them.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use penwarden_domain::PenSerial;
use penwarden_influx::{LineBuilder, RejectedLine, WriteReport, Writer};
use penwarden_store::{IngestBatch, PenPlacement, QuarantineEntry, Store, TelemetryMessage};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::decode::{self, Decoded, Rejection, Telemetry};
use crate::mqtt::{Acker, Connection, Incoming};
use crate::quarantine_log::QuarantineLog;
use crate::{now_ms, points, Options};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid ingest configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Unreachable(String),
    #[error(transparent)]
    Store(#[from] penwarden_store::Error),
    #[error(transparent)]
    Influx(#[from] penwarden_influx::Error),
}

/// Counters for logs, summaries and tests (Prometheus export builds on these).
#[derive(Debug, Default)]
pub struct Stats {
    pub messages: AtomicU64,
    pub acked: AtomicU64,
    pub quarantined: AtomicU64,
    pub samples: AtomicU64,
    pub points_written: AtomicU64,
    pub points_rejected: AtomicU64,
    /// Points written to the spool while InfluxDB was down.
    pub points_spooled: AtomicU64,
    pub duplicate_events: AtomicU64,
    pub violations_raised: AtomicU64,
    pub batches: AtomicU64,
}

/// A connected ingest, ready to run.
pub struct Service {
    options: Options,
    connection: Connection,
    store: Store,
    writer: Arc<Writer>,
    stats: Arc<Stats>,
    spool_bytes: u64,
    highest_seqs: HashMap<PenSerial, u64>,
}

const QUARANTINE_EXCERPT_BYTES: usize = 256;
const OUTBOX_ROWS_PER_BATCH: i64 = 200;
/// While InfluxDB is down, how often a batch tries it again instead of going to the spool.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long an instance holds the outbox rows it is delivering: longer than one InfluxDB write
/// with its retries takes, short enough that rows a crashed instance held go out soon after.
const OUTBOX_CLAIM_MS: i64 = 60_000;
/// With no messages arriving, how often acks that found the client's queue full are retried.
const ACK_RETRY_INTERVAL: Duration = Duration::from_millis(20);
/// With no messages arriving, how often the outbox is read: the API adds derived points to it
/// too (a lot recall's violations), and they must not wait for the next pen message.
const IDLE_DRAIN_INTERVAL: Duration = Duration::from_millis(500);

impl Service {
    /// Connects to the broker (failing clearly if it cannot).
    pub async fn connect(options: Options, store: Store, writer: Arc<Writer>) -> Result<Service, Error> {
        if options.batch_max_messages == 0 {
            return Err(Error::Config("batch_max_messages must be at least 1".into()));
        }
        let spool_bytes = store.outbox_bytes().await?;
        let highest_seqs = store.highest_seqs().await?;
        if spool_bytes > 0 {
            tracing::info!(spool_bytes, "points from before the last stop are waiting for InfluxDB");
        }
        let connection = Connection::open(&options).await?;
        Ok(Service { options, connection, store, writer, stats: Arc::default(), spool_bytes, highest_seqs })
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Runs until `shutdown` turns true, then stops taking messages, finishes and acks what it
    /// holds, and returns.
    ///
    /// `replays` brings quarantined messages an operator replays (the API's ReplayQuarantine):
    /// they go through the same pipeline as the broker's, without rate limiting or acks.
    pub fn spawn(
        self,
        shutdown: watch::Receiver<bool>,
        mut replays: mpsc::Receiver<penwarden_store::Replayable>,
    ) -> JoinHandle<Result<(), Error>> {
        let (forward, receive) = mpsc::channel(self.options.batch_max_messages * 2);
        let replay_forward = forward.clone();
        tokio::spawn(async move {
            while let Some(replayable) = replays.recv().await {
                if replay_forward.send(Incoming::replay(replayable)).await.is_err() {
                    break;
                }
            }
        });
        // Committed batches queue for their InfluxDB write, so a slow write does not hold up
        // the commits behind it (and the violations they raise). The bound keeps what waits
        // unacked, in memory, to a few batches.
        let (deliver, committed) = mpsc::channel(COMMITTED_BATCHES_WAITING);
        let (drained_tx, drained_rx) = watch::channel(false);
        let acker = self.connection.acker();
        let flood = crate::flood::FloodGuard::new(self.options.flood_burst, self.options.flood_rate_per_s);
        let mqtt = tokio::spawn(self.connection.run(forward, shutdown.clone(), drained_rx));
        let delivery = Delivery {
            spool_after: self.options.spool_after(),
            spool_max_bytes: self.options.spool_max_bytes,
            store: self.store.clone(),
            writer: self.writer,
            stats: self.stats.clone(),
            acker,
            spool_bytes: self.spool_bytes,
            influx_down_since: None,
            last_influx_attempt: None,
        };
        let delivery = tokio::spawn(delivery.run(committed, shutdown.clone()));
        let committer = Committer {
            options: self.options,
            store: self.store,
            stats: self.stats,
            flood,
            highest_seqs: self.highest_seqs,
            quarantine_log: QuarantineLog::new(),
        };
        tokio::spawn(async move {
            let committed = committer.run(receive, shutdown, deliver).await;
            let delivered = delivery.await.unwrap_or_else(|e| Err(Error::Unreachable(format!("delivery task: {e}"))));
            let _ = drained_tx.send(true);
            let _ = mqtt.await;
            committed.and(delivered)
        })
    }
}

/// A batch whose facts are committed to the store; its telemetry still has to reach InfluxDB
/// (or the spool) before its messages are acked.
struct CommittedBatch {
    messages: Vec<Incoming>,
    /// The batch's telemetry, with where each pen stood, for line protocol. Encoding it is the
    /// delivery stage's work: it stays off the path from a message to its commit.
    telemetry: Vec<(Telemetry, Arc<PenPlacement>)>,
    received_ms: i64,
    /// Bytes of derived points the commit added to the outbox.
    derived_bytes: u64,
    /// Committed after shutdown began: its write is not interrupted, so what arrived is acked.
    after_shutdown: bool,
}

/// First stage: batches messages, decodes them and commits each batch to the store.
struct Committer {
    options: Options,
    store: Store,
    stats: Arc<Stats>,
    flood: crate::flood::FloodGuard,
    /// Each registered pen's highest seq admitted so far, for `max_seq_jump`.
    highest_seqs: HashMap<PenSerial, u64>,
    quarantine_log: QuarantineLog,
}

const LINE_BUFFER_BYTES: usize = 1 << 20;
/// Committed batches that may wait for the delivery stage: enough to keep it busy while the
/// committer works, few enough that a backlog stays with the broker rather than in memory
/// (16 let RSS pass 150 MiB at 150k samples/s offered).
const COMMITTED_BATCHES_WAITING: usize = 4;

impl Committer {
    async fn run(
        mut self,
        mut receive: mpsc::Receiver<Incoming>,
        mut shutdown: watch::Receiver<bool>,
        deliver: mpsc::Sender<CommittedBatch>,
    ) -> Result<(), Error> {
        let mut messages = Vec::with_capacity(self.options.batch_max_messages);
        loop {
            let summary_due = self.quarantine_log.due_at();
            let first = tokio::select! {
                message = receive.recv() => message,
                _ = shutdown.changed() => None,
                _ = tokio::time::sleep_until(summary_due.unwrap_or_else(tokio::time::Instant::now)), if summary_due.is_some() => {
                    self.quarantine_log.flush_if_due(tokio::time::Instant::now());
                    continue;
                }
            };
            let Some(first) = first else { break };
            let mut urgent = is_device_event(&first);
            messages.push(first);
            // Telemetry waits up to the batch delay for company (bigger batches cost less per
            // message); a device event may raise a violation, so once one is in the batch it
            // takes only what has already arrived and goes.
            let deadline = tokio::time::Instant::now() + self.options.batch_max_delay();
            while messages.len() < self.options.batch_max_messages {
                let next = if urgent {
                    receive.try_recv().ok()
                } else {
                    tokio::time::timeout_at(deadline, receive.recv()).await.ok().flatten()
                };
                let Some(message) = next else { break };
                urgent |= is_device_event(&message);
                messages.push(message);
            }
            let batch = self.commit_batch(std::mem::take(&mut messages), false, &mut shutdown).await?;
            if deliver.send(batch).await.is_err() {
                // The delivery stage stopped on an error; it reports it.
                return Ok(());
            }
        }
        self.quarantine_log.flush();
        // Stop: what has already arrived is finished and acked; the rest stays with the broker.
        receive.close();
        while let Ok(message) = receive.try_recv() {
            messages.push(message);
        }
        if !messages.is_empty() {
            let mut no_interrupt = watch::channel(false).1;
            let batch = self.commit_batch(messages, true, &mut no_interrupt).await?;
            let _ = deliver.send(batch).await;
        }
        Ok(())
    }

    /// Decodes the messages and commits what they say in one transaction (retrying a transient
    /// store failure; nothing is acked meanwhile, so nothing is lost). A permanent failure is
    /// narrowed down to the messages that cause it, which go to the quarantine; the rest of the
    /// batch is committed.
    async fn commit_batch(
        &mut self,
        messages: Vec<Incoming>,
        after_shutdown: bool,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<CommittedBatch, Error> {
        let received_ms = now_ms();
        let limits = self.options.limits();
        let directory = self.store.directory().clone();
        let mut admitted = Vec::with_capacity(messages.len());
        let mut quarantine = Vec::new();
        let mut directory_checked = false;
        for (index, message) in messages.iter().enumerate() {
            let mut outcome = self.decode_and_admit(message, index, received_ms, &limits);
            if matches!(&outcome, Err(rejection) if rejection.reason == UNREGISTERED_PEN) && !directory_checked {
                // Another instance sharing the store may have registered the pen since this
                // one last read the directory: look once per batch before refusing.
                directory_checked = true;
                match self.store.refresh_directory().await {
                    Ok(true) => outcome = self.decode_and_admit(message, index, received_ms, &limits),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "could not check the pen directory for changes"),
                }
            }
            match outcome {
                Ok(message) => {
                    let lag_ms = received_ms - message.decoded.device_time_ms();
                    metrics::histogram!("penwarden_ingest_lag_seconds").record(lag_ms as f64 / 1000.0);
                    admitted.push(message);
                }
                Err(rejection) => {
                    quarantine.push(message_quarantine_entry(received_ms, message, rejection));
                }
            }
        }
        metrics::counter!("penwarden_mqtt_messages_received_total").increment(messages.len() as u64);

        // Commit everything at once; on a permanent failure, halves of a failing part, until the
        // messages that fail alone are found (a few commits per bad message, none otherwise).
        let mut derived_bytes = 0;
        let mut committed: Vec<Admitted> = Vec::with_capacity(admitted.len());
        let mut parts: Vec<(Vec<Admitted>, Vec<QuarantineEntry>)> = vec![(admitted, quarantine)];
        while let Some((part, part_quarantine)) = parts.pop() {
            let batch = ingest_batch(received_ms, &part, part_quarantine);
            if batch.is_empty() {
                continue;
            }
            match self.commit_retrying(&batch, &directory, shutdown).await {
                Ok((effects, bytes)) => {
                    derived_bytes += bytes;
                    self.record_effects(&effects);
                    self.record_quarantine(&batch.quarantine);
                    let (part, conflicting) = split_conflicts(part, &effects);
                    if !conflicting.is_empty() {
                        parts.push((Vec::new(), seq_conflicts(&conflicting, &messages, received_ms)));
                    }
                    committed.extend(part);
                }
                Err(Error::Store(e)) if part.len() > 1 => {
                    tracing::warn!(error = %e, messages = part.len(), "store refused a batch; narrowing it down");
                    let mut left = part;
                    let right = left.split_off(left.len() / 2);
                    // The quarantine entries go with the first half; the left half goes first.
                    parts.push((right, Vec::new()));
                    parts.push((left, batch.quarantine));
                }
                Err(Error::Store(e)) if part.len() == 1 => {
                    let message = &messages[part[0].index];
                    let rejection = Rejection {
                        reason: "store_rejected",
                        detail: format!("the store refused this message: {e}"),
                        pen: Some(part[0].decoded.pen().to_string()),
                    };
                    let mut entries = batch.quarantine;
                    entries.push(message_quarantine_entry(received_ms, message, rejection));
                    parts.push((Vec::new(), entries));
                }
                Err(e) => return Err(e),
            }
        }
        let replayed: Vec<i64> = messages.iter().filter_map(|message| message.replay_of).collect();
        if !replayed.is_empty() {
            // Marked after the commit: a crash in between replays them again, which changes
            // nothing (the pipeline is idempotent).
            if let Err(e) = self.store.mark_replayed(&replayed, received_ms).await {
                tracing::warn!(error = %e, "could not mark replayed quarantine entries; a new replay takes them again");
            }
            metrics::counter!("penwarden_quarantine_replayed_total").increment(replayed.len() as u64);
        }
        committed.sort_by_key(|message| message.index);
        let telemetry = committed
            .into_iter()
            .filter_map(|message| match message.decoded {
                Decoded::Telemetry(telemetry) => {
                    let placement = directory.get(&telemetry.pen).unwrap_or_default();
                    self.stats.samples.fetch_add(telemetry.samples.len() as u64, Ordering::Relaxed);
                    Some((telemetry, placement))
                }
                _ => None,
            })
            .collect();
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        Ok(CommittedBatch { messages, telemetry, received_ms, derived_bytes, after_shutdown })
    }

    /// Commits, retrying while the store fails transiently; a permanent failure is returned.
    async fn commit_retrying(
        &mut self,
        batch: &IngestBatch,
        directory: &penwarden_store::PenDirectory,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(penwarden_store::Effects, u64), Error> {
        let mut retry = StoreRetry::new();
        loop {
            match self.commit(batch, directory).await {
                Err(Error::Store(e)) if e.is_transient() => retry.wait(e, shutdown).await?,
                other => return other,
            }
        }
    }

    fn record_quarantine(&mut self, entries: &[QuarantineEntry]) {
        for entry in entries {
            metrics::counter!("penwarden_messages_quarantined_total", "reason" => entry.reason).increment(1);
            self.quarantine_log.record(entry);
        }
        self.quarantine_log.flush_if_due(tokio::time::Instant::now());
        self.stats.quarantined.fetch_add(entries.len() as u64, Ordering::Relaxed);
    }

    fn record_effects(&self, effects: &penwarden_store::Effects) {
        metrics::counter!("penwarden_duplicate_events_total").increment(effects.duplicate_events as u64);
        for violation in &effects.raised {
            metrics::counter!("penwarden_violations_raised_total", "rule" => violation.rule.id()).increment(1);
        }
        self.stats.duplicate_events.fetch_add(effects.duplicate_events as u64, Ordering::Relaxed);
        self.stats.violations_raised.fetch_add(effects.raised.len() as u64, Ordering::Relaxed);
        for violation in &effects.raised {
            tracing::info!(rule = violation.rule.id(), pen = %violation.pen, session = %violation.session_id, "violation raised");
        }
    }

    /// Applies the batch to the store in one transaction; derived points join the outbox.
    /// Returns the effects and the bytes of derived points added to the outbox.
    async fn commit(
        &mut self,
        batch: &IngestBatch,
        directory: &penwarden_store::PenDirectory,
    ) -> Result<(penwarden_store::Effects, u64), Error> {
        let started = std::time::Instant::now();
        let mut derived_bytes = 0;
        let derive = |effects: &penwarden_store::Effects| {
            let lines = points::derived(effects, directory);
            derived_bytes = lines.iter().map(|l| l.len() as u64).sum();
            lines
        };
        let applied = self.store.apply_batch(batch, derive).await?;
        metrics::histogram!("penwarden_store_commit_duration_seconds").record(started.elapsed().as_secs_f64());
        Ok((applied, derived_bytes))
    }

    /// Floods and unknown pens are quarantined (unknown pens are registered on the fly when
    /// auto-registration is on).
    fn decode_and_admit(
        &mut self,
        message: &Incoming,
        index: usize,
        received_ms: i64,
        limits: &decode::Limits,
    ) -> Result<Admitted, Rejection> {
        let decoded = if message.is_cut() {
            Err(decode::oversized(&self.options.topic_root, &message.topic, message.payload_len, limits))
        } else {
            decode::decode(&self.options.topic_root, &message.topic, &message.payload, received_ms, limits)
        };
        decoded.and_then(|decoded| self.admit(decoded, index, message.replay_of.is_some(), received_ms))
    }

    fn admit(&mut self, decoded: Decoded, index: usize, replay: bool, received_ms: i64) -> Result<Admitted, Rejection> {
        let pen = decoded.pen();
        // Unknown pens first: they get no flood bucket (20,000 made-up serials would otherwise
        // leave 20,000 buckets behind).
        let mut register = false;
        if self.store.directory().get(pen).is_none() {
            if !self.options.auto_register_pens {
                return Err(Rejection {
                    reason: UNREGISTERED_PEN,
                    detail: format!("pen {pen} is not registered (auto-registration is off)"),
                    pen: Some(pen.to_string()),
                });
            }
            register = true;
        }
        // A replay was reviewed by an operator: it is not part of a flood.
        if !replay && !self.flood.allow(pen, received_ms) {
            return Err(Rejection {
                reason: "rate_limited",
                detail: format!(
                    "pen {pen} exceeds {} messages/s after a burst of {}",
                    self.options.flood_rate_per_s, self.options.flood_burst
                ),
                pen: Some(pen.to_string()),
            });
        }
        let seq = decoded.seq();
        // A pen heard of for the first time may start anywhere (a pen registered after years
        // of use); from then on its seq may not leap.
        if let Some(highest) = self.highest_seqs.get_mut(pen) {
            if seq > highest.saturating_add(self.options.max_seq_jump) {
                return Err(Rejection {
                    reason: "seq_out_of_range",
                    detail: format!(
                        "seq {seq} is more than {} ahead of the highest seq pen {pen} has sent ({highest})",
                        self.options.max_seq_jump
                    ),
                    pen: Some(pen.to_string()),
                });
            }
            *highest = (*highest).max(seq);
        } else {
            // The serial is cloned once per pen, not per message.
            self.highest_seqs.insert(pen.clone(), seq);
        }
        Ok(Admitted { index, decoded, register })
    }
}

const UNREGISTERED_PEN: &str = "unregistered_pen";

/// A decoded message that passed admission, with its place in the batch.
struct Admitted {
    index: usize,
    decoded: Decoded,
    /// Its pen is unknown and auto-registration is on.
    register: bool,
}

/// Splits a committed part into the messages the store took and those it found conflicting:
/// a (pen, seq) already recorded with other content.
fn split_conflicts(part: Vec<Admitted>, effects: &penwarden_store::Effects) -> (Vec<Admitted>, Vec<Admitted>) {
    if effects.seq_conflicts.is_empty() && effects.telemetry_conflicts.is_empty() {
        return (part, Vec::new());
    }
    let conflicting_events: BTreeSet<usize> = effects.seq_conflicts.iter().copied().collect();
    let mut event_position = 0;
    part.into_iter().partition(|admitted| match &admitted.decoded {
        Decoded::Event(_) => {
            event_position += 1;
            !conflicting_events.contains(&(event_position - 1))
        }
        Decoded::Telemetry(telemetry) => !effects
            .telemetry_conflicts
            .contains(&(telemetry.pen.clone(), TelemetryMessage { seq: telemetry.seq, digest: telemetry.digest() })),
        Decoded::State(_) => true,
    })
}

/// Quarantine entries for the messages the store found conflicting: their (pen, seq) is
/// recorded with other content.
fn seq_conflicts(conflicting: &[Admitted], messages: &[Incoming], received_ms: i64) -> Vec<QuarantineEntry> {
    metrics::counter!("penwarden_seq_conflicts_total").increment(conflicting.len() as u64);
    conflicting
        .iter()
        .map(|admitted| {
            let message = &messages[admitted.index];
            let (pen, seq) = (admitted.decoded.pen(), admitted.decoded.seq());
            let rejection = Rejection {
                reason: "seq_conflict",
                detail: format!(
                    "pen {pen} already sent seq {seq} with other content (did it restart its seq counter?); \
                     not applied"
                ),
                pen: Some(pen.to_string()),
            };
            message_quarantine_entry(received_ms, message, rejection)
        })
        .collect()
}

/// The store's view of some of a batch's messages.
fn ingest_batch(received_ms: i64, part: &[Admitted], quarantine: Vec<QuarantineEntry>) -> IngestBatch {
    let mut batch = IngestBatch { received_ms, quarantine, ..IngestBatch::default() };
    for message in part {
        if message.register {
            batch.auto_register.insert(message.decoded.pen().clone());
        }
        match &message.decoded {
            Decoded::Telemetry(telemetry) => {
                let newest = telemetry.samples.iter().map(|s| s.time_unix_ms).max();
                batch.add_telemetry(&telemetry.pen, telemetry.seq, telemetry.digest(), newest);
            }
            Decoded::Event(event) => batch.events.push(event.clone()),
            Decoded::State(state) => batch.states.push(state.clone()),
        }
    }
    batch
}

/// Second stage: gets each committed batch's points into InfluxDB (or the spool), in commit
/// order, and only then acks its messages.
struct Delivery {
    spool_after: Duration,
    spool_max_bytes: u64,
    store: Store,
    writer: Arc<Writer>,
    stats: Arc<Stats>,
    acker: Acker,
    /// Bytes waiting in the outbox (spooled telemetry and derived points).
    spool_bytes: u64,
    influx_down_since: Option<i64>,
    last_influx_attempt: Option<std::time::Instant>,
}

impl Delivery {
    /// Runs until the committer stops (its sender drops), then sends the last acks.
    async fn run(
        mut self,
        mut committed: mpsc::Receiver<CommittedBatch>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), Error> {
        let mut lines = LineBuilder::with_capacity(LINE_BUFFER_BYTES);
        // Points of batches committed before a crash are still in the outbox.
        self.deliver(&mut lines, now_ms(), &mut shutdown).await?;
        loop {
            let batch = tokio::select! {
                batch = committed.recv() => batch,
                _ = tokio::time::sleep(ACK_RETRY_INTERVAL), if self.acker.has_waiting() => {
                    self.acker.flush();
                    continue;
                }
                _ = tokio::time::sleep(IDLE_DRAIN_INTERVAL) => {
                    lines.clear();
                    self.deliver(&mut lines, now_ms(), &mut shutdown).await?;
                    continue;
                }
            };
            let Some(batch) = batch else { break };
            lines.clear();
            for (telemetry, placement) in &batch.telemetry {
                points::telemetry(&mut lines, telemetry, placement);
            }
            self.spool_bytes += batch.derived_bytes;
            let mut no_interrupt = watch::channel(false).1;
            let interrupt = if batch.after_shutdown { &mut no_interrupt } else { &mut shutdown };
            self.deliver(&mut lines, batch.received_ms, interrupt).await?;
            for message in &batch.messages {
                self.acker.ack(message);
            }
            let count = batch.messages.len() as u64;
            metrics::counter!("penwarden_mqtt_messages_acked_total").increment(count);
            self.stats.messages.fetch_add(count, Ordering::Relaxed);
            self.stats.acked.fetch_add(count, Ordering::Relaxed);
        }
        self.acker.flush_all().await;
        tracing::info!("ingest drained");
        Ok(())
    }

    /// [`Delivery::deliver_points`], retrying transient store failures (reading or trimming
    /// the outbox, spooling) from where they stopped.
    async fn deliver(
        &mut self,
        lines: &mut LineBuilder,
        now_ms: i64,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), Error> {
        let telemetry_mark = lines.mark();
        let mut retry = StoreRetry::new();
        loop {
            match self.deliver_points(lines, now_ms, shutdown).await {
                Ok(()) => return Ok(()),
                Err(Error::Store(e)) if e.is_transient() => {
                    lines.truncate(telemetry_mark);
                    retry.wait(e, shutdown).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Gets a batch's telemetry (`lines`) and the oldest outbox rows into InfluxDB, or, while
    /// InfluxDB is down, the telemetry into the spool. Returns once the points are durable in
    /// one or the other, so the batch may be acked; when the spool is full it waits for
    /// InfluxDB instead, and nothing is acked meanwhile.
    async fn deliver_points(
        &mut self,
        lines: &mut LineBuilder,
        now_ms: i64,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), Error> {
        // The batch's own lines are the prefix of the buffer; outbox rows are appended.
        let telemetry_len = lines.as_str().len();
        // Read every time: a lot recall over the API adds derived points to the outbox too.
        // Claimed, so another instance sharing the store does not deliver the same rows.
        let outbox = self.store.claim_outbox(OUTBOX_ROWS_PER_BATCH, now_ms, OUTBOX_CLAIM_MS).await?;
        if telemetry_len == 0 && outbox.is_empty() {
            return Ok(());
        }
        let in_outage = self.influx_down_since.is_some();
        let probe_due = self.last_influx_attempt.is_none_or(|at| at.elapsed() >= PROBE_INTERVAL);
        if !in_outage || probe_due {
            for row in &outbox {
                lines.push_encoded(&row.lines);
            }
            // In an outage one attempt per probe is enough: the spool keeps ingest moving.
            let patience = if in_outage { Duration::ZERO } else { self.spool_after };
            self.last_influx_attempt = Some(std::time::Instant::now());
            match self.writer.write(lines.as_str(), Some(patience), shutdown).await {
                Ok(report) => {
                    self.quarantine_rejected(&report, now_ms).await?;
                    if let Some(since) = self.influx_down_since.take() {
                        tracing::info!(
                            down_for_ms = now_ms - since,
                            spool_bytes = self.spool_bytes,
                            "InfluxDB answers again; replaying the spool"
                        );
                    }
                    self.stats.points_written.fetch_add(report.lines as u64, Ordering::Relaxed);
                    self.stats.points_rejected.fetch_add(report.rejected_lines as u64, Ordering::Relaxed);
                    if !outbox.is_empty() {
                        let ids: Vec<i64> = outbox.iter().map(|row| row.id).collect();
                        self.store.delete_outbox(&ids).await?;
                        let drained: u64 = outbox.iter().map(|row| row.lines.len() as u64).sum();
                        self.spool_bytes = self.spool_bytes.saturating_sub(drained);
                    }
                    // The count kept here drifts: the committer adds a batch's derived rows to
                    // the outbox before this stage hears of their bytes (a delivery may take
                    // them first), and other instances sharing the store spool and deliver
                    // too. Once this instance sees no more rows to take, the store says what
                    // is left (a scan of what is left: next to nothing, or rows claimed by
                    // others).
                    if (outbox.len() as i64) < OUTBOX_ROWS_PER_BATCH && self.spool_bytes != 0 {
                        self.spool_bytes = self.store.outbox_bytes().await?;
                    }
                    let oldest = if outbox.len() as i64 == OUTBOX_ROWS_PER_BATCH { outbox.last() } else { None };
                    self.report_spool(oldest.map(|row| row.created_ms), now_ms);
                    return Ok(());
                }
                Err(penwarden_influx::Error::Unavailable(reason)) => {
                    if !in_outage {
                        tracing::error!(%reason, "InfluxDB is unavailable; spooling points to the store and acking");
                        self.influx_down_since = Some(now_ms);
                    }
                }
                Err(other) => {
                    self.release_claims(&outbox).await;
                    return Err(other.into());
                }
            }
        }
        self.release_claims(&outbox).await;
        let telemetry = &lines.as_str()[..telemetry_len];
        let oldest = outbox.first().map(|row| row.created_ms);
        if telemetry.is_empty() {
            self.report_spool(oldest, now_ms);
            return Ok(());
        }
        if self.spool_bytes + telemetry.len() as u64 > self.spool_max_bytes {
            metrics::gauge!("penwarden_spool_full").set(1.0);
            tracing::error!(
                spool_bytes = self.spool_bytes,
                limit = self.spool_max_bytes,
                "spool full: not acking until InfluxDB takes this batch (the broker keeps the messages)"
            );
            let report = self.writer.write(telemetry, None, shutdown).await?;
            self.quarantine_rejected(&report, now_ms).await?;
            self.stats.points_written.fetch_add(report.lines as u64, Ordering::Relaxed);
            metrics::gauge!("penwarden_spool_full").set(0.0);
            return Ok(());
        }
        self.store.spool(telemetry, now_ms).await?;
        self.spool_bytes += telemetry.len() as u64;
        let spooled = telemetry.lines().count() as u64;
        self.stats.points_spooled.fetch_add(spooled, Ordering::Relaxed);
        metrics::counter!("penwarden_points_spooled_total").increment(spooled);
        self.report_spool(oldest.or(Some(now_ms)), now_ms);
        Ok(())
    }

    /// Gives undelivered outbox rows back at once, for the next attempt of any instance. If the
    /// store cannot take that now, the claim runs out by itself (`OUTBOX_CLAIM_MS`).
    async fn release_claims(&self, outbox: &[penwarden_store::OutboxRow]) {
        let ids: Vec<i64> = outbox.iter().map(|row| row.id).collect();
        if let Err(error) = self.store.release_outbox(&ids).await {
            tracing::warn!(%error, rows = ids.len(), "cannot release outbox rows; their claim runs out by itself");
        }
    }

    /// Lines InfluxDB refused for good go to the quarantine with its reason, before the
    /// messages that made them are acked: a refused line is never only a log line.
    async fn quarantine_rejected(&self, report: &WriteReport, now_ms: i64) -> Result<(), Error> {
        if report.rejections.is_empty() {
            return Ok(());
        }
        let entries: Vec<QuarantineEntry> = report.rejections.iter().map(|r| influx_rejection(r, now_ms)).collect();
        self.store.quarantine(&entries).await?;
        metrics::counter!("penwarden_messages_quarantined_total", "reason" => INFLUX_REJECTED)
            .increment(entries.len() as u64);
        self.stats.quarantined.fetch_add(entries.len() as u64, Ordering::Relaxed);
        let example = &report.rejections[0];
        tracing::warn!(
            lines = entries.len(),
            status = example.status,
            reason = %example.reason,
            "InfluxDB refused lines; they are in the quarantine (reason influx_rejected)"
        );
        Ok(())
    }

    fn report_spool(&self, oldest_created_ms: Option<i64>, now_ms: i64) {
        metrics::gauge!("penwarden_spool_bytes").set(self.spool_bytes as f64);
        let age_s = oldest_created_ms.map_or(0.0, |created| (now_ms - created).max(0) as f64 / 1000.0);
        metrics::gauge!("penwarden_spool_oldest_age_seconds").set(age_s);
    }
}

/// Waits between attempts after a transient store failure (a full disk, an I/O error); the
/// batch is not acked meanwhile, so nothing is lost.
struct StoreRetry {
    backoff: Duration,
}

impl StoreRetry {
    fn new() -> StoreRetry {
        StoreRetry { backoff: Duration::from_millis(100) }
    }

    /// Logs the failure and waits before the next attempt, longer each time; gives up with the
    /// error on shutdown.
    async fn wait(&mut self, error: penwarden_store::Error, shutdown: &mut watch::Receiver<bool>) -> Result<(), Error> {
        metrics::counter!("penwarden_store_commit_failures_total").increment(1);
        tracing::error!(error = %error, retry_in_ms = self.backoff.as_millis() as u64, "store write failed; not acking");
        tokio::select! {
            _ = tokio::time::sleep(self.backoff) => {}
            _ = shutdown.changed() => return Err(error.into()),
        }
        self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
        Ok(())
    }
}

/// Session, cartridge and disinfection events travel on the events channel; telemetry and
/// birth/death state do not raise violations.
fn is_device_event(message: &Incoming) -> bool {
    message.topic.ends_with("/events")
}

const INFLUX_REJECTED: &str = "influx_rejected";

/// The quarantine entry of a line InfluxDB refused: its measurement as the topic, its pen tag
/// as the pen (when the line can be read back), InfluxDB's reason as the detail.
fn influx_rejection(rejected: &RejectedLine, now_ms: i64) -> QuarantineEntry {
    let parsed = penwarden_influx::line::parse_line(&rejected.line).ok();
    let measurement = parsed.as_ref().map_or_else(
        || rejected.line.split([',', ' ']).next().unwrap_or_default().to_owned(),
        |p| p.measurement.clone(),
    );
    let pen = parsed.and_then(|p| p.tags.into_iter().find(|(key, _)| key == "pen").map(|(_, pen)| pen));
    let detail = format!("InfluxDB answered {}: {}", rejected.status, rejected.reason);
    let rejection = Rejection { reason: INFLUX_REJECTED, detail, pen };
    quarantine_entry(now_ms, &measurement, rejected.line.as_bytes(), rejection)
}

fn quarantine_entry(received_ms: i64, topic: &str, payload: &[u8], rejection: Rejection) -> QuarantineEntry {
    let excerpt = &payload[..payload.len().min(QUARANTINE_EXCERPT_BYTES)];
    QuarantineEntry {
        received_ms,
        topic: topic.chars().take(256).collect(),
        pen: rejection.pen,
        reason: rejection.reason,
        detail: rejection.detail,
        payload_excerpt: excerpt.escape_ascii().to_string(),
        payload_len: payload.len(),
        payload: None,
    }
}

/// The quarantine entry of an MQTT message: its size as it arrived, and its whole payload
/// (for replay after review) unless it was cut for being over the limit.
fn message_quarantine_entry(received_ms: i64, message: &Incoming, rejection: Rejection) -> QuarantineEntry {
    QuarantineEntry {
        payload_len: message.payload_len,
        payload: (!message.is_cut()).then(|| message.payload.to_vec()),
        ..quarantine_entry(received_ms, &message.topic, &message.payload, rejection)
    }
}

/// Counter snapshot helper for summaries.
impl Stats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

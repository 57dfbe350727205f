//! The simulated fleet: layout, registration, and the pens' sessions.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use penwarden_domain::udi::{gtin_check_digit, Date};
use penwarden_domain::Udi;
use penwarden_proto::api::v1 as api;
use penwarden_proto::device::v1 as wire;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rumqttc::QoS;
use tokio::time::Instant;

use crate::inject::SessionFault;
use crate::link::Links;
use crate::Args;

pub(crate) struct Layout {
    pub(crate) pens: Vec<(String, String)>,
    pub(crate) clinics: Vec<(String, String)>,
    pub(crate) chains: Vec<String>,
    /// Each pen's highest seq penwarden already has (from an earlier run): the pen numbers on
    /// from there, as a real pen keeps its counter across restarts.
    pub(crate) last_seqs: std::collections::HashMap<String, u64>,
}

impl Layout {
    /// Pens round-robin over clinics, clinics round-robin over chains.
    pub(crate) fn new(pens: usize, clinics: usize, chains: usize) -> Layout {
        let chains: Vec<String> = (1..=chains).map(|i| format!("chain-{i}")).collect();
        let clinics: Vec<(String, String)> =
            (0..clinics).map(|i| (format!("clinic-{}", i + 1), chains[i % chains.len()].clone())).collect();
        let pens = (0..pens).map(|i| (format!("PW-{:06}", i + 1), clinics[i % clinics.len()].0.clone())).collect();
        Layout { pens, clinics, chains, last_seqs: Default::default() }
    }
}

type FleetClient = api::fleet_service_client::FleetServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, penwarden_proto::BearerToken>,
>;

async fn fleet_client(args: &Args) -> anyhow::Result<FleetClient> {
    let url = args.grpc_url.as_deref().context("no --grpc-url")?;
    let tls = penwarden_proto::ClientTlsFiles {
        ca_file: args.grpc_ca_file.clone(),
        identity: args.grpc_cert_file.clone().zip(args.grpc_key_file.clone()),
    };
    let channel = penwarden_proto::connect(url, &tls).await.map_err(anyhow::Error::msg)?;
    let token = penwarden_proto::BearerToken::new(&args.api_key()?).context("the API key holds invalid characters")?;
    Ok(api::fleet_service_client::FleetServiceClient::with_interceptor(channel, token))
}

/// Makes an API call, again while penwarden answers RESOURCE_EXHAUSTED (the key's rate limit:
/// registering a large fleet outruns it), pausing longer each time.
macro_rules! within_rate_limit {
    ($call:expr) => {{
        let mut pause = Duration::from_millis(50);
        loop {
            match $call.await {
                Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                other => break other,
            }
        }
    }};
}

pub(crate) async fn register(args: &Args, layout: &Layout, pens_too: bool) -> anyhow::Result<()> {
    let mut client = fleet_client(args).await?;
    let public_key = demo_manufacturer().verifying_key().to_bytes().to_vec();
    let lots = (1..=LOTS)
        .map(|lot| (format!("LOT{lot}"), GOOD_UNTIL))
        .chain([(EXPIRED_LOT.to_owned(), EXPIRED_ON), (RECALLED_LOT.to_owned(), GOOD_UNTIL)]);
    for (lot, expiry) in lots {
        let request = api::RegisterLotRequest {
            gtin: gtin(),
            lot,
            expiry: expiry.to_string(),
            manufacturer_id: MANUFACTURER.into(),
            public_key: public_key.clone(),
        };
        within_rate_limit!(client.register_lot(request.clone()))?;
    }
    for operator in 1..=OPERATORS {
        let request = api::RegisterOperatorRequest { operator_id: format!("op-{operator}"), licence_level: 3 };
        within_rate_limit!(client.register_operator(request.clone()))?;
    }
    if !pens_too {
        return Ok(());
    }
    for chain in &layout.chains {
        let request = api::RegisterChainRequest { chain_id: chain.clone(), name: format!("Chain {chain}") };
        within_rate_limit!(client.register_chain(request.clone()))?;
    }
    for (clinic, chain) in &layout.clinics {
        let request = api::RegisterClinicRequest {
            clinic_id: clinic.clone(),
            chain_id: chain.clone(),
            name: format!("Clinic {clinic}"),
        };
        within_rate_limit!(client.register_clinic(request.clone()))?;
    }
    for (pen, clinic) in &layout.pens {
        let request = api::RegisterPenRequest {
            pen_serial: pen.clone(),
            clinic_id: clinic.clone(),
            model: MODEL.into(),
            manufacturer_id: MANUFACTURER.into(),
        };
        within_rate_limit!(client.register_pen(request.clone()))?;
    }
    Ok(())
}

/// The highest seq penwarden has of each pen (pens it does not know are left out).
pub(crate) async fn last_seqs(args: &Args) -> anyhow::Result<std::collections::HashMap<String, u64>> {
    let mut client = fleet_client(args).await?;
    let pens = within_rate_limit!(client.list_pens(api::ListPensRequest::default()))?.into_inner().pens;
    Ok(pens.into_iter().map(|pen| (pen.pen_serial, pen.last_seq)).collect())
}

/// Recalls the lot every `recalled` injection used: at the end of the run, so the recall is
/// retroactive for sessions already recorded.
pub(crate) async fn recall(args: &Args) -> anyhow::Result<u32> {
    let mut client = fleet_client(args).await?;
    let request =
        api::RecallLotRequest { gtin: gtin(), lot: RECALLED_LOT.into(), reason: "pensim: simulated recall".into() };
    Ok(within_rate_limit!(client.recall_lot(request.clone()))?.into_inner().violations_raised)
}

const MODEL: &str = "SP-2";
const MANUFACTURER: &str = "demo-manufacturer";
const LOTS: u64 = 7;
const GOOD_UNTIL: Date = Date { year: 2030, month: 12, day: 31 };
const EXPIRED_LOT: &str = "LOTX";
const EXPIRED_ON: Date = Date { year: 2020, month: 1, day: 31 };
const RECALLED_LOT: &str = "LOTR";
/// Motor time an `overuse` session reports: past the default 1800 s cartridge limit.
const OVERUSE_MOTOR_SECONDS: f64 = 1900.0;
/// Motor hours of a pen injected `service-due`: past the default 500 h interval.
const OVERDUE_MOTOR_HOURS: f64 = 510.0;
const OPERATORS: u32 = 5;

/// The demo manufacturer's signing key: a fixed, public seed. For simulation only.
fn demo_manufacturer() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(b"penwarden-demo-manufacturer-key!")
}

/// A counterfeiter's key: its signatures look right but do not verify.
fn counterfeiter() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(b"not-the-manufacturer-key-at-all!")
}

fn gtin() -> String {
    let check = gtin_check_digit(GTIN_BODY);
    format!("{}{check}", std::str::from_utf8(GTIN_BODY).unwrap_or_default())
}

/// What a cartridge's chip carries: a signature over its UDI (the manufacturer's, if genuine).
fn sign(udi: &str, key: &ed25519_dalek::SigningKey) -> Vec<u8> {
    use ed25519_dalek::Signer;
    Udi::parse(udi)
        .map(|udi| key.sign(&penwarden_domain::compliance::signed_message(&udi)).to_bytes().to_vec())
        .unwrap_or_default()
}
const FIRMWARE: &str = "2.4.1";
/// A GTIN-13 body for the demo manufacturer's cartridges; the check digit is computed.
const GTIN_BODY: &[u8; 13] = b"0950600013435";

#[derive(Default)]
struct Counters {
    messages: AtomicU64,
    qos1_messages: AtomicU64,
    telemetry_messages: AtomicU64,
    event_messages: AtomicU64,
    samples: AtomicU64,
    sessions: AtomicU64,
    /// Sessions that must carry each rule's violation, by rule id.
    injected: Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

impl Counters {
    fn inject(&self, rule: &'static str) {
        *self.injected.lock().unwrap_or_else(|p| p.into_inner()).entry(rule).or_insert(0) += 1;
    }
}

pub(crate) struct Simulation {
    args: Args,
    layout: Layout,
    links: Arc<Links>,
    acked: Arc<AtomicU64>,
    min_session: Duration,
    max_session: Duration,
}

struct Shared {
    args: Args,
    links: Arc<Links>,
    counters: Counters,
    /// UDIs of cartridges already used in a started session (candidates for injected reuse).
    used_cartridges: Mutex<Vec<String>>,
    qos: QoS,
}

impl Simulation {
    pub(crate) async fn connect(
        args: &Args,
        layout: Layout,
        min_session: Duration,
        max_session: Duration,
    ) -> anyhow::Result<Simulation> {
        let acked = Arc::new(AtomicU64::new(0));
        let serials: Vec<String> = layout.pens.iter().map(|(serial, _)| serial.clone()).collect();
        // The first CONNACK proves the broker is there before any pen starts.
        let links = Links::open(args, &serials, acked.clone()).await?;
        Ok(Simulation { args: args.clone(), layout, links: Arc::new(links), acked, min_session, max_session })
    }

    pub(crate) async fn run(self) -> anyhow::Result<serde_json::Value> {
        let started = Instant::now();
        let qos = if self.args.qos == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce };
        let shared = Arc::new(Shared {
            args: self.args.clone(),
            links: self.links.clone(),
            counters: Counters::default(),
            used_cartridges: Mutex::new(Vec::new()),
            qos,
        });
        let deadline = started + Duration::from_secs(self.args.duration);
        let mut pens = Vec::new();
        for (index, (serial, _clinic)) in self.layout.pens.iter().enumerate() {
            let shared = shared.clone();
            let serial = serial.clone();
            let rng = StdRng::seed_from_u64(self.args.seed.wrapping_mul(1_000_003).wrapping_add(index as u64));
            let (min, max) = (self.min_session, self.max_session);
            let last_seq = self.layout.last_seqs.get(&serial).copied().unwrap_or(0);
            pens.push(tokio::spawn(async move { run_pen(shared, serial, last_seq, rng, deadline, min, max).await }));
        }
        for pen in pens {
            pen.await.context("a pen task panicked")??;
        }
        // Wait until the broker has acknowledged every QoS 1 publish.
        let published = shared.counters.qos1_messages.load(Ordering::Relaxed);
        {
            let wait = tokio::time::timeout(Duration::from_secs(60), async {
                while self.acked.load(Ordering::Relaxed) < published {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
            wait.await.context("the broker did not acknowledge every message within 60 s")?;
        }
        self.links.close().await?;

        let c = &shared.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let mut injected: serde_json::Map<String, serde_json::Value> = [
            "CARTRIDGE_REUSE",
            "CARTRIDGE_EXPIRED",
            "CARTRIDGE_RECALLED",
            "CARTRIDGE_UNVERIFIED",
            "CARTRIDGE_OVERUSE",
            "PEN_NOT_DISINFECTED",
            "DEPTH_LIMIT",
            "PEN_SERVICE_DUE",
            "TELEMETRY_GAP",
        ]
        .into_iter()
        .map(|rule| (rule.to_owned(), serde_json::Value::from(0u64)))
        .collect();
        for (rule, count) in c.injected.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            injected.insert((*rule).to_owned(), (*count).into());
        }
        let mut recall_raised = None;
        if self.args.inject.wants(SessionFault::Recalled) {
            recall_raised = Some(recall(&self.args).await.context("recalling the lot")?);
        }
        Ok(serde_json::json!({
            "pens": self.layout.pens.len(),
            "clinics": self.layout.clinics.len(),
            "chains": self.layout.chains.len(),
            "messages": get(&c.messages),
            "telemetry_messages": get(&c.telemetry_messages),
            "event_messages": get(&c.event_messages),
            "samples": get(&c.samples),
            "sessions": get(&c.sessions),
            "violations_injected": injected,
            "recall_violations_raised": recall_raised,
            "elapsed_s": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        }))
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl Shared {
    fn topic(&self, pen: &str, channel: &str) -> String {
        format!("{}/pens/{pen}/{channel}", self.args.topic_root)
    }

    fn encode<M: prost::Message + serde::Serialize>(&self, message: &M) -> Vec<u8> {
        if self.args.json {
            serde_json::to_vec(message).unwrap_or_default()
        } else {
            message.encode_to_vec()
        }
    }

    async fn publish(&self, pen: &str, channel: &str, payload: Vec<u8>, qos: QoS, retain: bool) -> anyhow::Result<()> {
        let topic = self.topic(pen, channel);
        self.links.client(pen)?.publish(topic, qos, retain, payload).await.context("queueing a publish")?;
        self.counters.messages.fetch_add(1, Ordering::Relaxed);
        if qos == QoS::AtLeastOnce {
            self.counters.qos1_messages.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn event(&self, pen: &str, seq: &mut u64, kind: wire::pen_event::Kind) -> anyhow::Result<()> {
        *seq += 1;
        let event = wire::PenEvent {
            schema_version: 1,
            pen_serial: pen.into(),
            seq: *seq,
            time_unix_ms: now_ms(),
            kind: Some(kind),
        };
        // Events are QoS 1 by protocol, whatever --qos says for telemetry.
        self.publish(pen, "events", self.encode(&event), QoS::AtLeastOnce, false).await?;
        self.counters.event_messages.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn state(&self, pen: &str, seq: u64, online: bool) -> anyhow::Result<()> {
        let state = wire::PenState {
            schema_version: 1,
            pen_serial: pen.into(),
            seq,
            time_unix_ms: now_ms(),
            online,
            firmware: FIRMWARE.into(),
            model: MODEL.into(),
        };
        self.publish(pen, "state", self.encode(&state), self.qos, true).await
    }
}

/// A fresh cartridge for a session: of a regular lot, or of the lot a fault needs.
fn new_udi(pen: &str, number: u64, fault: Option<SessionFault>) -> String {
    let (lot, expiry) = match fault {
        Some(SessionFault::Expired) => (EXPIRED_LOT.to_owned(), EXPIRED_ON),
        Some(SessionFault::Recalled) => (RECALLED_LOT.to_owned(), GOOD_UNTIL),
        _ => (format!("LOT{}", number % LOTS + 1), GOOD_UNTIL),
    };
    Udi::new(gtin(), expiry, lot, format!("{pen}-{number}")).to_human_readable()
}

async fn run_pen(
    shared: Arc<Shared>,
    pen: String,
    last_seq: u64,
    mut rng: StdRng,
    deadline: Instant,
    min_session: Duration,
    max_session: Duration,
) -> anyhow::Result<()> {
    use wire::pen_event::Kind;
    let injection = shared.args.inject.clone();
    // The birth takes the pen's next seq; the offline state at the end carries the last one.
    let mut seq = last_seq + 1;
    shared.state(&pen, seq, true).await?;
    let mut battery = 100.0_f64;
    // Up to 300 motor hours, well inside the service interval, unless injected overdue.
    let service_due = rng.gen_bool(injection.service_due);
    let mut motor_seconds_total =
        if service_due { OVERDUE_MOTOR_HOURS * 3600.0 } else { rng.gen_range(0.0..1_080_000.0_f64) };
    // A pen reports its condition when it boots, before any session.
    let status =
        wire::Status { battery_pct: battery, firmware: FIRMWARE.into(), motor_hours: motor_seconds_total / 3600.0 };
    shared.event(&pen, &mut seq, Kind::Status(status)).await?;
    let mut sessions = 0u64;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..800))).await;
        let skip_disinfection = sessions > 0 && rng.gen_bool(injection.no_disinfect);
        let mut fault = injection.session_fault(rng.gen_range(0.0..1.0));
        let reused = if fault == Some(SessionFault::Reuse) {
            let used = shared.used_cartridges.lock().unwrap_or_else(|p| p.into_inner());
            (!used.is_empty()).then(|| used[rng.gen_range(0..used.len())].clone())
        } else {
            None
        };
        if fault == Some(SessionFault::Reuse) && reused.is_none() {
            // Nothing to reuse yet: this session is a clean one.
            fault = None;
        }
        let udi = reused.unwrap_or_else(|| new_udi(&pen, sessions + 1, fault));
        let session_id = format!("{pen}-s{}", sessions + 1);

        let signer = if fault == Some(SessionFault::Counterfeit) { counterfeiter() } else { demo_manufacturer() };
        let signature = sign(&udi, &signer);
        let attached = wire::CartridgeAttached { cartridge_udi: udi.clone(), cartridge_signature: signature.clone() };
        shared.event(&pen, &mut seq, Kind::CartridgeAttached(attached)).await?;
        if !skip_disinfection {
            let method = wire::DisinfectionMethod::AlcoholWipe as i32;
            shared
                .event(&pen, &mut seq, Kind::PenDisinfected(wire::PenDisinfected { method, sheath_changed: true }))
                .await?;
        }
        // 0.5 to 1.0 mm: within the default limits of every area simulated here, unless the
        // session is to break the periorbital limit (0.5 mm).
        let (depth, area) = if fault == Some(SessionFault::Depth) {
            (1.0, wire::TreatmentArea::Periorbital)
        } else {
            let areas = [wire::TreatmentArea::Forehead, wire::TreatmentArea::Cheek, wire::TreatmentArea::Neck];
            (f64::from(rng.gen_range(2..=4u32)) * 0.25, areas[rng.gen_range(0..3)])
        };
        let start = wire::SessionStarted {
            session_id: session_id.clone(),
            cartridge_udi: udi.clone(),
            cartridge_signature: signature,
            operator_id: format!("op-{}", rng.gen_range(1..=OPERATORS)),
            area: area as i32,
            depth_setting_mm: depth,
            client_ref_hash: String::new(),
        };
        shared.event(&pen, &mut seq, Kind::SessionStarted(start)).await?;
        let started_ms = now_ms();
        shared.counters.sessions.fetch_add(1, Ordering::Relaxed);
        match fault {
            Some(fault) => shared.counters.inject(fault.rule()),
            // Only a cartridge whose first session broke no rule may be reused, so its reuse
            // breaks exactly one rule.
            None => shared.used_cartridges.lock().unwrap_or_else(|p| p.into_inner()).push(udi.clone()),
        }
        if skip_disinfection {
            shared.counters.inject("PEN_NOT_DISINFECTED");
        }
        if service_due {
            shared.counters.inject("PEN_SERVICE_DUE");
        }

        let total_samples =
            (rng.gen_range(min_session.as_secs_f64()..=max_session.as_secs_f64()) * 10.0).round() as i64;
        let mut sent = 0i64;
        let mut max_depth = 0.0_f64;
        // A gap session loses its first telemetry message: its number is used, never sent.
        let mut drop_next_telemetry = fault == Some(SessionFault::Gap);
        while sent < total_samples {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let count = (total_samples - sent).min(10);
            let samples: Vec<wire::Sample> = (sent..sent + count)
                .map(|k| {
                    let sample_depth = depth;
                    max_depth = max_depth.max(sample_depth);
                    battery = (battery - 0.002).max(5.0);
                    wire::Sample {
                        time_unix_ms: started_ms + k * 100,
                        depth_mm: sample_depth,
                        speed_rpm: 7000.0 + rng.gen_range(-150.0..150.0),
                        motor_current_ma: 320.0 + rng.gen_range(-20.0..20.0),
                        temperature_c: 31.0 + rng.gen_range(0.0..2.0),
                        battery_pct: battery,
                    }
                })
                .collect();
            sent += count;
            seq += 1;
            if std::mem::take(&mut drop_next_telemetry) {
                continue;
            }
            let batch = wire::TelemetryBatch {
                schema_version: 1,
                pen_serial: pen.clone(),
                seq,
                session_id: session_id.clone(),
                samples,
            };
            shared.publish(&pen, "telemetry", shared.encode(&batch), shared.qos, false).await?;
            shared.counters.telemetry_messages.fetch_add(1, Ordering::Relaxed);
            shared.counters.samples.fetch_add(count as u64, Ordering::Relaxed);
        }
        let motor_seconds =
            if fault == Some(SessionFault::Overuse) { OVERUSE_MOTOR_SECONDS } else { total_samples as f64 / 10.0 };
        motor_seconds_total += motor_seconds;
        let end = wire::SessionEnded {
            session_id,
            duration_ms: (now_ms() - started_ms).max(0) as u64,
            strokes: (motor_seconds * 120.0) as u64,
            motor_seconds,
            max_depth_mm: max_depth,
        };
        shared.event(&pen, &mut seq, Kind::SessionEnded(end)).await?;
        shared.event(&pen, &mut seq, Kind::CartridgeDetached(wire::CartridgeDetached { cartridge_udi: udi })).await?;
        let status =
            wire::Status { battery_pct: battery, firmware: FIRMWARE.into(), motor_hours: motor_seconds_total / 3600.0 };
        shared.event(&pen, &mut seq, Kind::Status(status)).await?;
        sessions += 1;
    }
    shared.state(&pen, seq, false).await
}

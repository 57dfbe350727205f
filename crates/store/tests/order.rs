//! Order independence, proven through the ingest path: the same device messages applied in
//! any arrival order, split into any batches, with redeliveries, leave exactly the active
//! violations that in-order processing leaves, also when three instances sharing the database
//! apply them at once. The streams cover cartridge reuse across pens,
//! disinfection, depth, telemetry gaps and the pen's service status: births and status events
//! that announce firmware below and above the minimum, so PEN_SERVICE_DUE must judge each
//! session by the firmware in force at it by seq.

use std::collections::BTreeSet;

use ed25519_dalek::{Signer, SigningKey};
use penwarden_domain::compliance::signed_message;
use penwarden_domain::{DeviceEvent, DisinfectionMethod, EventRecord, PenSerial, SessionId, TreatmentArea, Udi};
use penwarden_store::scratch::ScratchStore;
use penwarden_store::{IngestBatch, LotRow, PenStateUpdate, Store, ViolationFilter};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Message {
    Event(EventRecord),
    Telemetry(PenSerial, u64),
    State(PenStateUpdate),
}

/// Below and above the minimum supported firmware (2.0.0).
const FIRMWARES: [&str; 2] = ["1.9.0", "2.4.1"];

/// One simulated session on a pen.
#[derive(Debug, Clone)]
struct SessionPlan {
    /// A reconnect before the session: a birth announcing this firmware, and sometimes the
    /// last will of the connection before it.
    birth_before: Option<(&'static str, bool)>,
    /// Motor hours and firmware of a status report before the session (500 h is the service
    /// interval).
    status_before: Option<(f64, &'static str)>,
    disinfect_before: bool,
    cartridge: usize,
    telemetry: Vec<bool>,
    depth_mm: f64,
}

fn manufacturer() -> SigningKey {
    SigningKey::from_bytes(&[9u8; 32])
}

fn udi(cartridge: usize) -> String {
    format!("(01)09506000134352(17)301231(10)L(21)C{cartridge}")
}

/// A pen's messages in sequence order; `keep` false marks a telemetry message the pen lost.
fn pen_messages(pen: &PenSerial, start_ms: i64, sessions: &[SessionPlan]) -> Vec<Message> {
    let mut messages = Vec::new();
    let mut seq = 0u64;
    let mut time = start_ms;
    let next = |seq: &mut u64, time: &mut i64| {
        *seq += 1;
        *time += 10;
        (*seq, *time)
    };
    for (index, session) in sessions.iter().enumerate() {
        let session_id = SessionId::parse(&format!("s{index}")).unwrap();
        let event = |(seq, time): (u64, i64), event| {
            Message::Event(EventRecord { pen: pen.clone(), seq, device_time_unix_ms: time, event })
        };
        if let Some((firmware, will_before)) = session.birth_before {
            let state = |seq: u64, time: i64, online: bool, firmware: &str| PenStateUpdate {
                pen: pen.clone(),
                seq,
                device_time_ms: time,
                online,
                firmware: firmware.into(),
                model: "SP-2".into(),
            };
            if will_before && seq > 0 {
                // The last will of the previous connection carries that connection's birth seq
                // (here: the pen's last seq, as pensim does).
                messages.push(Message::State(state(seq, time, false, "")));
            }
            let (seq, time) = next(&mut seq, &mut time);
            messages.push(Message::State(state(seq, time, true, firmware)));
        }
        if let Some((motor_hours, firmware)) = session.status_before {
            let kind = DeviceEvent::Status { battery_pct: 80.0, firmware: firmware.into(), motor_hours };
            messages.push(event(next(&mut seq, &mut time), kind));
        }
        if session.disinfect_before {
            let kind = DeviceEvent::Disinfected { method: DisinfectionMethod::AlcoholWipe, sheath_changed: true };
            messages.push(event(next(&mut seq, &mut time), kind));
        }
        let cartridge_udi = udi(session.cartridge);
        let signature = manufacturer().sign(&signed_message(&Udi::parse(&cartridge_udi).unwrap())).to_bytes();
        let start = DeviceEvent::SessionStarted {
            session_id: session_id.clone(),
            cartridge_udi,
            cartridge_signature: signature.to_vec(),
            operator_id: None,
            area: TreatmentArea::Periorbital,
            depth_setting_mm: session.depth_mm,
        };
        messages.push(event(next(&mut seq, &mut time), start));
        for keep in &session.telemetry {
            let (seq, _) = next(&mut seq, &mut time);
            if *keep {
                messages.push(Message::Telemetry(pen.clone(), seq));
            }
        }
        let end = DeviceEvent::SessionEnded {
            session_id,
            duration_ms: 1000,
            strokes: 100,
            motor_seconds: 1.0,
            max_depth_mm: session.depth_mm,
        };
        messages.push(event(next(&mut seq, &mut time), end));
    }
    messages
}

fn session_plan() -> impl Strategy<Value = SessionPlan> {
    let firmware = prop::sample::select(FIRMWARES.to_vec());
    let birth = prop::option::weighted(0.4, (firmware.clone(), any::<bool>()));
    let status = prop::option::weighted(0.4, (prop_oneof![Just(100.0), Just(600.0)], firmware));
    let wear = (prop::bool::weighted(0.7), 0usize..4, prop::collection::vec(prop::bool::weighted(0.85), 0..4), 1u32..4);
    (birth, status, wear).prop_map(
        |(birth_before, status_before, (disinfect_before, cartridge, telemetry, quarter_mm))| SessionPlan {
            birth_before,
            status_before,
            disinfect_before,
            cartridge,
            telemetry,
            depth_mm: f64::from(quarter_mm) * 0.25,
        },
    )
}

/// Every message of 1 to 3 pens, in order, and an arrival plan: a permutation with some
/// messages delivered twice, cut into batches.
fn scenario() -> impl Strategy<Value = (Vec<Message>, Vec<usize>, Vec<usize>)> {
    prop::collection::vec((0i64..200, prop::collection::vec(session_plan(), 1..4)), 1..4)
        .prop_map(|pens| {
            pens.iter()
                .enumerate()
                .flat_map(|(index, (start, sessions))| {
                    pen_messages(&PenSerial::parse(&format!("P{index}")).unwrap(), start * 7, sessions)
                })
                .collect::<Vec<_>>()
        })
        .prop_flat_map(|messages| {
            let count = messages.len();
            let redelivered = prop::collection::vec(0..count, 0..=count / 3);
            let arrival = (Just((0..count).collect::<Vec<_>>()), redelivered)
                .prop_map(|(mut order, again)| {
                    order.extend(again);
                    order
                })
                .prop_shuffle();
            let cuts = prop::collection::vec(1usize..6, 1..(count + 2));
            (Just(messages), arrival, cuts)
        })
}

/// An empty store on the backend `PENWARDEN_TEST_STORE` names (SQLite unless told), with the
/// test manufacturer's lot.
async fn fresh_store() -> (Store, ScratchStore) {
    let scratch = ScratchStore::new().await;
    let store = Store::connect(scratch.url()).await.unwrap();
    let lot = LotRow {
        gtin: "09506000134352".into(),
        lot: "L".into(),
        expiry: "2030-12-31".into(),
        manufacturer_id: "acme".into(),
        public_key: manufacturer().verifying_key().to_bytes().to_vec(),
        recalled_ms: None,
    };
    store.register_lot(&lot, 0).await.unwrap();
    (store, scratch)
}

async fn apply(store: &Store, messages: &[&Message]) {
    let mut batch = IngestBatch { received_ms: 1, ..Default::default() };
    for message in messages {
        match message {
            Message::Event(record) => {
                batch.auto_register.insert(record.pen.clone());
                batch.events.push(record.clone());
            }
            Message::Telemetry(pen, seq) => {
                batch.auto_register.insert(pen.clone());
                batch.add_telemetry(pen, *seq, *seq as i64, None);
            }
            Message::State(state) => {
                batch.auto_register.insert(state.pen.clone());
                batch.states.push(state.clone());
            }
        }
    }
    // As ingest does: a transient failure (a deadlock victim, say) is retried.
    loop {
        match store.apply_batch(&batch, |_| Vec::new()).await {
            Ok(_) => return,
            Err(error) if error.is_transient() => tokio::task::yield_now().await,
            Err(error) => panic!("batch refused: {error}"),
        }
    }
}

async fn apply_all(store: &Store, batches: Vec<Vec<&Message>>) {
    for batch in batches {
        apply(store, &batch).await;
    }
}

/// The active violations as (rule, pen, session).
async fn active(store: &Store) -> BTreeSet<(String, String, String)> {
    let filter = ViolationFilter { limit: 1000, ..Default::default() };
    let rows = store.list_violations(&filter).await.unwrap();
    rows.into_iter().map(|v| (v.rule, v.pen_serial, v.session_id)).collect()
}

/// The arrivals cut into batches of `cuts` sizes (cycled).
fn batches<'m>(messages: &'m [Message], arrival: &[usize], cuts: &[usize]) -> Vec<Vec<&'m Message>> {
    let arrivals: Vec<&Message> = arrival.iter().map(|&index| &messages[index]).collect();
    let mut rest = arrivals.as_slice();
    let mut batches = Vec::new();
    for cut in cuts.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (batch, tail) = rest.split_at((*cut).min(rest.len()));
        batches.push(batch.to_vec());
        rest = tail;
    }
    batches
}

/// What the record says in the end: active violations, and each pen's state.
async fn outcome(store: &Store) -> (BTreeSet<(String, String, String)>, Vec<(String, bool, String, String)>) {
    let rows = store.list_pens(None, None, &penwarden_domain::access::Scope::All).await.unwrap();
    let pens = rows.into_iter().map(|p| (p.pen_serial, p.online, p.firmware, p.model)).collect();
    (active(store).await, pens)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn any_arrival_order_gives_the_in_order_violations((messages, arrival, cuts) in scenario()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (in_order, shuffled) = runtime.block_on(async {
            let (reference, _reference_scratch) = fresh_store().await;
            apply(&reference, &messages.iter().collect::<Vec<_>>()).await;

            let (store, _scratch) = fresh_store().await;
            for batch in batches(&messages, &arrival, &cuts) {
                apply(&store, &batch).await;
            }
            let result = (outcome(&reference).await, outcome(&store).await);
            reference.close().await;
            store.close().await;
            result
        });
        prop_assert_eq!(shuffled, in_order);
    }

    /// Three instances sharing one database apply the shuffled batches at once, each batch
    /// going to one of them at random: two of them may be judging sessions of one cartridge,
    /// or events of one pen, at the same moment. The record must end as one instance in order
    /// leaves it.
    #[test]
    fn three_instances_at_once_give_one_instance_s_violations(
        (messages, arrival, cuts) in scenario(),
        instance_of_batch in prop::collection::vec(0usize..3, 1..16),
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(3).enable_all().build().unwrap();
        let (in_order, concurrent) = runtime.block_on(async {
            let (reference, _reference_scratch) = fresh_store().await;
            apply(&reference, &messages.iter().collect::<Vec<_>>()).await;

            let (first, scratch) = fresh_store().await;
            let instances = [first, Store::connect(scratch.url()).await.unwrap(), Store::connect(scratch.url()).await.unwrap()];
            let mut queues: [Vec<Vec<&Message>>; 3] = Default::default();
            for (index, batch) in batches(&messages, &arrival, &cuts).into_iter().enumerate() {
                queues[instance_of_batch[index % instance_of_batch.len()]].push(batch);
            }
            let [a, b, c] = queues;
            tokio::join!(apply_all(&instances[0], a), apply_all(&instances[1], b), apply_all(&instances[2], c));
            let result = (outcome(&reference).await, outcome(&instances[0]).await);
            reference.close().await;
            for instance in &instances {
                instance.close().await;
            }
            result
        });
        prop_assert_eq!(concurrent, in_order);
    }
}

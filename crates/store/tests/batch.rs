//! The record's semantics through `apply_batch`: idempotent redelivery, order independence
//! of verdicts, retraction instead of silent rewrite.

use ed25519_dalek::{Signer, SigningKey};
use penwarden_domain::access::Scope;
use penwarden_domain::compliance::signed_message;
use penwarden_domain::{DeviceEvent, DisinfectionMethod, EventRecord, PenSerial, SessionId, TreatmentArea, Udi};
use penwarden_store::scratch::ScratchStore;
use penwarden_store::{IngestBatch, LotRow, PenStateUpdate, Store, ViolationFilter};

/// Device times in these tests count from here (2027-01-15): a UDI's two-digit year is read in
/// the century of the session's time, so sessions must be set in this era, as real ones are.
const ERA: i64 = 1_800_000_000_000;

const UDI: &str = "(01)09506000134352(17)301231(10)LOT7(21)C-1";

fn pen(serial: &str) -> PenSerial {
    PenSerial::parse(serial).unwrap()
}

fn manufacturer() -> SigningKey {
    SigningKey::from_bytes(&[42u8; 32])
}

/// The signature a genuine cartridge with this UDI carries.
fn genuine(udi: &str) -> Vec<u8> {
    Udi::parse(udi).map(|u| manufacturer().sign(&signed_message(&u)).to_bytes().to_vec()).unwrap_or_default()
}

fn start(pen_serial: &str, seq: u64, time: i64, session: &str, udi: &str) -> EventRecord {
    start_signed(pen_serial, seq, time, session, udi, genuine(udi))
}

fn start_signed(pen_serial: &str, seq: u64, time: i64, session: &str, udi: &str, signature: Vec<u8>) -> EventRecord {
    EventRecord {
        pen: pen(pen_serial),
        seq,
        device_time_unix_ms: ERA + time,
        event: DeviceEvent::SessionStarted {
            session_id: SessionId::parse(session).unwrap(),
            cartridge_udi: udi.into(),
            cartridge_signature: signature,
            operator_id: None,
            area: TreatmentArea::Cheek,
            depth_setting_mm: 1.0,
        },
    }
}

fn end(pen_serial: &str, seq: u64, time: i64, session: &str) -> EventRecord {
    EventRecord {
        pen: pen(pen_serial),
        seq,
        device_time_unix_ms: ERA + time,
        event: DeviceEvent::SessionEnded {
            session_id: SessionId::parse(session).unwrap(),
            duration_ms: 1000,
            strokes: 100,
            motor_seconds: 1.0,
            max_depth_mm: 1.0,
        },
    }
}

fn wipe(pen_serial: &str, seq: u64, time: i64) -> EventRecord {
    EventRecord {
        pen: pen(pen_serial),
        seq,
        device_time_unix_ms: ERA + time,
        event: DeviceEvent::Disinfected { method: DisinfectionMethod::AlcoholWipe, sheath_changed: true },
    }
}

/// A store that knows the test manufacturer's lots LOT7 and L.
/// On the backend `PENWARDEN_TEST_STORE` names (SQLite unless told).
async fn store() -> (Store, ScratchStore) {
    let scratch = ScratchStore::new().await;
    let store = Store::connect(scratch.url()).await.unwrap();
    for lot in ["LOT7", "L"] {
        store.register_lot(&lot_row(lot), 0).await.unwrap();
    }
    (store, scratch)
}

fn lot_row(lot: &str) -> LotRow {
    LotRow {
        gtin: "09506000134352".into(),
        lot: lot.into(),
        expiry: "2030-12-31".into(),
        manufacturer_id: "acme".into(),
        public_key: manufacturer().verifying_key().to_bytes().to_vec(),
        recalled_ms: None,
    }
}

async fn apply(store: &Store, events: Vec<EventRecord>) -> penwarden_store::Effects {
    let mut batch = IngestBatch { received_ms: 1, events, ..Default::default() };
    batch.auto_register = batch.events.iter().map(|e| e.pen.clone()).collect();
    store.apply_batch(&batch, |_| Vec::new()).await.unwrap()
}

async fn active(store: &Store, rule: &str) -> Vec<String> {
    let filter = ViolationFilter { rule: Some(rule.into()), limit: 100, ..Default::default() };
    let mut sessions: Vec<_> =
        store.list_violations(&filter).await.unwrap().into_iter().map(|v| v.session_id).collect();
    sessions.sort();
    sessions
}

#[tokio::test]
async fn redelivery_changes_nothing() {
    let (store, _dir) = store().await;
    let events = vec![start("P1", 1, 100, "a", UDI), end("P1", 2, 200, "a"), start("P2", 1, 300, "b", UDI)];
    let first = apply(&store, events.clone()).await;
    assert_eq!(first.new_events, 3);
    assert_eq!(first.raised.len(), 1);
    let again = apply(&store, events).await;
    assert_eq!(again.new_events, 0);
    assert_eq!(again.duplicate_events, 3);
    assert!(again.raised.is_empty() && again.retracted.is_empty());
    assert_eq!(active(&store, "CARTRIDGE_REUSE").await, ["b"]);
}

#[tokio::test]
async fn a_late_upload_moves_the_reuse_verdict_and_keeps_the_record() {
    let (store, _dir) = store().await;
    apply(&store, vec![start("P2", 1, 500, "later", UDI)]).await;
    assert!(active(&store, "CARTRIDGE_REUSE").await.is_empty());
    // P1 used the cartridge first, but uploads an hour late.
    let effects = apply(&store, vec![start("P1", 1, 100, "earlier", UDI)]).await;
    assert_eq!(effects.raised.len(), 1);
    assert_eq!(active(&store, "CARTRIDGE_REUSE").await, ["later"]);

    let cartridge = store.cartridge(&Udi::parse(UDI).unwrap().key(), &Scope::All).await.unwrap();
    assert_eq!(cartridge.sessions.len(), 2);
    assert_eq!(cartridge.sessions[0].session_id, "earlier");
    assert_eq!(cartridge.sessions[1].violated_rules, ["CARTRIDGE_REUSE"]);
}

#[tokio::test]
async fn a_cartridge_outside_the_scope_is_not_found_like_an_unknown_one() {
    let (store, _dir) = store().await;
    apply(&store, vec![start("P1", 1, 100, "a", UDI)]).await;
    let key = Udi::parse(UDI).unwrap().key();
    let seen = store.cartridge(&key, &Scope::All).await.unwrap();
    assert_eq!((seen.lot.as_str(), seen.sessions.len()), ("LOT7", 1));
    // P1 belongs to no chain, so a chain's key sees no session of the cartridge.
    let chain = Scope::new(penwarden_domain::access::Role::Chain, "chain-a").unwrap();
    let outside = store.cartridge(&key, &chain).await.unwrap_err();
    assert!(matches!(outside, penwarden_store::Error::NotFound(_)), "{outside:?}");
    let unknown = Udi::parse("(01)09506000134352(17)301231(10)LOT7(21)C-404").unwrap().key();
    let missing = store.cartridge(&unknown, &Scope::All).await.unwrap_err();
    assert!(matches!(missing, penwarden_store::Error::NotFound(_)), "{missing:?}");
}

#[tokio::test]
async fn disinfection_arriving_late_retracts_the_violation_visibly() {
    let (store, _dir) = store().await;
    apply(&store, vec![start("P1", 1, 100, "a", "(01)09506000134352(17)301231(10)L(21)X1"), end("P1", 2, 200, "a")])
        .await;
    apply(&store, vec![start("P1", 4, 400, "b", "(01)09506000134352(17)301231(10)L(21)X2")]).await;
    assert_eq!(active(&store, "PEN_NOT_DISINFECTED").await, ["b"]);

    let effects = apply(&store, vec![wipe("P1", 3, 300)]).await;
    assert_eq!(effects.retracted.len(), 1);
    assert!(active(&store, "PEN_NOT_DISINFECTED").await.is_empty());
    let all = store
        .list_violations(&ViolationFilter { include_retracted: true, limit: 10, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(all.len(), 1);
    assert!(all[0].retracted_ms.is_some() && all[0].retraction_reason.is_some());

    let sterility = store.pen_sterility(&pen("P1"), &Scope::All).await.unwrap();
    assert!(!sterility.ready_to_treat, "session b has not ended");
}

#[tokio::test]
async fn pen_sterility_answers_what_the_rule_would_judge() {
    let (store, _dir) = store().await;
    let udi = |serial: &str| format!("(01)09506000134352(17)301231(10)L(21){serial}");
    apply(&store, vec![start("P1", 1, 100, "a", &udi("S1")), end("P1", 2, 200, "a"), wipe("P1", 3, 300)]).await;
    // A wipe without a sheath change after one with it: the rule passes the next session, so
    // the pen is ready.
    let mut sheathless = wipe("P1", 4, 400);
    sheathless.event = DeviceEvent::Disinfected { method: DisinfectionMethod::AlcoholWipe, sheath_changed: false };
    apply(&store, vec![sheathless]).await;
    let sterility = store.pen_sterility(&pen("P1"), &Scope::All).await.unwrap();
    assert!(sterility.ready_to_treat, "{sterility:?}");
    assert!(!sterility.last_disinfection_changed_sheath, "the newest wipe is reported as it was");
    apply(&store, vec![start("P1", 5, 500, "b", &udi("S2"))]).await;
    assert!(active(&store, "PEN_NOT_DISINFECTED").await.is_empty(), "the rule agrees: b is compliant");
    apply(&store, vec![end("P1", 6, 600, "b")]).await;
    let sterility = store.pen_sterility(&pen("P1"), &Scope::All).await.unwrap();
    assert_eq!(sterility.reasons, ["no disinfection with sheath change since session b ended"]);
}

#[tokio::test]
async fn a_used_seq_with_other_content_is_a_conflict_not_a_duplicate() {
    let (store, _dir) = store().await;
    let first = start("P1", 1, 100, "s1", UDI);
    let effects = apply(&store, vec![first.clone()]).await;
    assert_eq!((effects.new_events, effects.duplicate_events, effects.seq_conflicts.len()), (1, 0, 0));
    let effects = apply(&store, vec![first]).await;
    assert_eq!((effects.new_events, effects.duplicate_events, effects.seq_conflicts.len()), (0, 1, 0));
    let reset = start("P1", 1, 900, "s2", "(01)09506000134352(17)301231(10)LOT7(21)C-2");
    let effects = apply(&store, vec![wipe("P1", 2, 800), reset]).await;
    assert_eq!((effects.new_events, effects.duplicate_events, effects.seq_conflicts), (1, 0, vec![1]));
    let unknown = Udi::parse("(01)09506000134352(17)301231(10)LOT7(21)C-2").unwrap().key();
    assert!(store.cartridge(&unknown, &Scope::All).await.is_err(), "the conflicting session is not applied");
}

/// Telemetry messages of pen P1 as (seq, digest of their content).
async fn apply_telemetry_content(store: &Store, messages: &[(u64, i64)]) -> penwarden_store::Effects {
    let mut batch = IngestBatch { received_ms: 1, ..Default::default() };
    for (seq, digest) in messages {
        batch.add_telemetry(&pen("P1"), *seq, *digest, None);
    }
    store.apply_batch(&batch, |_| Vec::new()).await.unwrap()
}

fn conflicts(effects: &penwarden_store::Effects) -> Vec<(u64, i64)> {
    effects.telemetry_conflicts.iter().map(|(_, message)| (message.seq, message.digest)).collect()
}

#[tokio::test]
async fn a_used_telemetry_seq_with_other_content_is_a_conflict_not_a_duplicate() {
    let (store, _dir) = store().await;
    let effects = apply_telemetry_content(&store, &[(1, 10), (2, 20), (3, 30)]).await;
    assert_eq!((effects.duplicate_telemetry, conflicts(&effects)), (0, vec![]));
    // The same content again is a redelivery, whatever batch it comes in.
    let effects = apply_telemetry_content(&store, &[(2, 20), (4, 40)]).await;
    assert_eq!((effects.duplicate_telemetry, conflicts(&effects)), (1, vec![]));
    // A pen that restarted its counter: seq 1 and 3 again with other samples.
    let effects = apply_telemetry_content(&store, &[(1, 11), (3, 30), (5, 50)]).await;
    assert_eq!((effects.duplicate_telemetry, conflicts(&effects)), (1, vec![(1, 11)]));
    // Within one batch: the first message with a number is the one taken.
    let effects = apply_telemetry_content(&store, &[(6, 60), (6, 60), (6, 61)]).await;
    assert_eq!((effects.duplicate_telemetry, conflicts(&effects)), (1, vec![(6, 61)]));
    // A number an event took is a conflict for telemetry, and the other way round.
    apply(&store, vec![wipe("P1", 7, 70)]).await;
    let effects = apply_telemetry_content(&store, &[(7, 70)]).await;
    assert_eq!(conflicts(&effects), vec![(7, 70)]);
    let effects = apply(&store, vec![wipe("P1", 4, 70), wipe("P1", 8, 80)]).await;
    assert_eq!((effects.new_events, effects.seq_conflicts), (1, vec![0]));
    let mut batch = IngestBatch { received_ms: 1, ..Default::default() };
    batch.add_telemetry(&pen("P1"), 9, 90, None);
    batch.events.push(wipe("P1", 9, 90));
    let effects = store.apply_batch(&batch, |_| Vec::new()).await.unwrap();
    assert_eq!((conflicts(&effects), effects.seq_conflicts), (vec![], vec![0]), "the telemetry came first");
}

#[tokio::test]
async fn telemetry_older_than_the_pen_s_recent_window_cannot_pass_for_a_redelivery() {
    let (store, _dir) = store().await;
    let first: Vec<(u64, i64)> = (1..=200).map(|seq| (seq, seq as i64)).collect();
    apply_telemetry_content(&store, &first).await;
    // Its content may even be the same: a redelivery never comes from that far back. It
    // loses nothing in the quarantine, the first delivery is recorded.
    let effects = apply_telemetry_content(&store, &[(3, 3), (150, 150), (150, 151)]).await;
    assert_eq!((effects.duplicate_telemetry, conflicts(&effects)), (1, vec![(3, 3), (150, 151)]));
}

fn state(seq: u64, time: i64, online: bool, firmware: &str) -> PenStateUpdate {
    PenStateUpdate {
        pen: pen("P1"),
        seq,
        device_time_ms: time,
        online,
        firmware: firmware.into(),
        model: "SP-2".into(),
    }
}

async fn apply_states(store: &Store, states: Vec<PenStateUpdate>) {
    let mut batch = IngestBatch { received_ms: 1, states, ..Default::default() };
    batch.auto_register.insert(pen("P1"));
    store.apply_batch(&batch, |_| Vec::new()).await.unwrap();
}

#[tokio::test]
async fn a_pen_s_state_is_its_state_message_with_the_highest_seq() {
    let (store, _dir) = store().await;
    let now = 1_800_000_000_000;
    // Retained: offline with a clock 23 h ahead. A later genuine birth must still win.
    apply_states(&store, vec![state(5, now + 23 * 3_600_000, false, "0.0.1")]).await;
    apply_states(&store, vec![state(6, now, true, "2.4.1")]).await;
    let row = store.pen(&pen("P1")).await.unwrap();
    assert_eq!((row.online, row.firmware.as_str()), (true, "2.4.1"));
    // The last will carries its birth's seq and is the newer of the two, in either order.
    apply_states(&store, vec![state(7, now + 1, false, ""), state(7, now + 1, true, "2.5.0")]).await;
    let row = store.pen(&pen("P1")).await.unwrap();
    assert_eq!((row.online, row.firmware.as_str()), (false, "2.5.0"));
    // A redelivered or late older state changes nothing.
    apply_states(&store, vec![state(6, now, true, "2.4.1"), state(3, now + 99 * 3_600_000, true, "9.9.9")]).await;
    let row = store.pen(&pen("P1")).await.unwrap();
    assert_eq!((row.online, row.firmware.as_str()), (false, "2.5.0"));
}

#[tokio::test]
async fn outbox_lines_commit_with_the_batch() {
    let (store, _dir) = store().await;
    let mut batch = IngestBatch { received_ms: 1, events: vec![start("P1", 1, 100, "a", UDI)], ..Default::default() };
    batch.auto_register.insert(pen("P1"));
    store.apply_batch(&batch, |_| vec!["m f=1i 1".into(), "m f=2i 2".into()]).await.unwrap();
    let pending = store.pending_outbox(10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].lines, "m f=1i 1\nm f=2i 2");
    store.spool("m f=3i 3", 5).await.unwrap();
    assert_eq!(store.outbox_bytes().await.unwrap(), 17 + 8);
    let pending = store.pending_outbox(10).await.unwrap();
    assert_eq!(pending.iter().map(|row| row.created_ms).collect::<Vec<_>>(), [1, 5], "oldest first");
    store.delete_outbox(&[pending[1].id]).await.unwrap();
    assert_eq!(store.pending_outbox(10).await.unwrap(), [pending[0].clone()], "only the rows named");
    store.delete_outbox(&[pending[0].id]).await.unwrap();
    assert!(store.pending_outbox(10).await.unwrap().is_empty());
    // An id is never handed out again: an instance still delivering a deleted row must not
    // delete a new one by its id.
    store.spool("m f=4i 4", 6).await.unwrap();
    let newest = store.pending_outbox(10).await.unwrap();
    assert!(newest[0].id > pending[1].id, "{newest:?} reuses an id of {pending:?}");
    store.delete_outbox(&[newest[0].id]).await.unwrap();
    assert_eq!(store.outbox_bytes().await.unwrap(), 0);
}

#[tokio::test]
async fn an_outbox_row_is_claimed_by_one_instance_until_delivered_released_or_expired() {
    let (first, scratch) = store().await;
    let second = Store::connect(scratch.url()).await.unwrap();
    for (lines, at) in [("m f=1i 1", 1), ("m f=2i 2", 2), ("m f=3i 3", 3)] {
        first.spool(lines, at).await.unwrap();
    }
    let claimed = first.claim_outbox(2, 1_000, 60_000).await.unwrap();
    assert_eq!(claimed.iter().map(|row| row.created_ms).collect::<Vec<_>>(), [1, 2], "oldest first");
    let rest = second.claim_outbox(10, 1_000, 60_000).await.unwrap();
    assert_eq!(rest.iter().map(|row| row.created_ms).collect::<Vec<_>>(), [3], "never a claimed row");
    assert!(second.claim_outbox(10, 2_000, 60_000).await.unwrap().is_empty());
    // Delivered: gone. Not delivered: released, and the next claim takes it at once.
    first.delete_outbox(&[claimed[0].id]).await.unwrap();
    first.release_outbox(&[claimed[1].id]).await.unwrap();
    assert_eq!(second.claim_outbox(10, 2_000, 60_000).await.unwrap(), [claimed[1].clone()]);
    // The claim of an instance that died runs out.
    assert!(first.claim_outbox(10, 60_999, 60_000).await.unwrap().is_empty());
    assert_eq!(first.claim_outbox(10, 61_000, 60_000).await.unwrap(), rest);
    second.close().await;
}

#[tokio::test]
async fn authenticity_expiry_and_retroactive_recall() {
    let (store, _dir) = store().await;
    let unknown_lot = "(01)09506000134352(17)301231(10)NOLOT(21)U1";
    let forged = SigningKey::from_bytes(&[1u8; 32]).sign(b"anything").to_bytes().to_vec();
    let expired = "(01)09506000134352(17)200131(10)L(21)OLD1";
    apply(
        &store,
        vec![
            start("P1", 1, 0, "fine", UDI),
            start("P2", 1, 0, "unknown-lot", unknown_lot),
            start_signed("P3", 1, 0, "counterfeit", "(01)09506000134352(17)301231(10)LOT7(21)F1", forged),
            start("P4", 1, 0, "expired", expired),
        ],
    )
    .await;
    assert_eq!(active(&store, "CARTRIDGE_UNVERIFIED").await, ["counterfeit", "unknown-lot"]);
    assert_eq!(active(&store, "CARTRIDGE_EXPIRED").await, ["expired"]);
    assert!(active(&store, "CARTRIDGE_RECALLED").await.is_empty());

    // The manufacturer recalls LOT7 later: the past session is flagged too, with its points.
    let effects = store
        .recall_lot("09506000134352", "LOT7", "sterility breach", 5, |e| vec![format!("{} raised", e.raised.len())])
        .await
        .unwrap();
    assert_eq!(active(&store, "CARTRIDGE_RECALLED").await, ["counterfeit", "fine"]);
    assert_eq!(effects.raised.len(), 2);
    assert_eq!(store.pending_outbox(10).await.unwrap().last().unwrap().lines, "2 raised");
    // A session on a recalled lot arriving afterwards is flagged on arrival.
    apply(&store, vec![start("P5", 1, 0, "after-recall", "(01)09506000134352(17)301231(10)LOT7(21)C-9")]).await;
    assert_eq!(active(&store, "CARTRIDGE_RECALLED").await, ["after-recall", "counterfeit", "fine"]);
    let missing = store.recall_lot("09506000134352", "NOPE", "x", 6, |_| Vec::new()).await;
    assert!(matches!(missing, Err(penwarden_store::Error::NotFound(_))));
}

async fn apply_telemetry(store: &Store, pen_serial: &str, seqs: &[u64]) -> penwarden_store::Effects {
    let mut batch = IngestBatch { received_ms: 1, ..Default::default() };
    for seq in seqs {
        batch.add_telemetry(&pen(pen_serial), *seq, *seq as i64, None);
    }
    store.apply_batch(&batch, |_| Vec::new()).await.unwrap()
}

#[tokio::test]
async fn a_telemetry_gap_is_raised_and_withdrawn_when_the_message_arrives_late() {
    let (store, _dir) = store().await;
    apply(&store, vec![wipe("P1", 1, 50), start("P1", 2, 100, "s", UDI)]).await;
    apply_telemetry(&store, "P1", &[3, 5]).await;
    assert!(active(&store, "TELEMETRY_GAP").await.is_empty(), "no verdict on a gap before the session ends");
    let effects = apply(&store, vec![end("P1", 6, 200, "s")]).await;
    assert_eq!(effects.raised.len(), 1, "{:?}", effects.raised);
    assert!(effects.raised[0].explanation.contains("first missing seq 4"), "{}", effects.raised[0].explanation);
    let cartridge = store.cartridge(&Udi::parse(UDI).unwrap().key(), &Scope::All).await.unwrap();
    assert_eq!(cartridge.sessions[0].verdict, penwarden_domain::compliance::Verdict::Incomplete);

    // Redelivering what arrived changes nothing; the missing message closes the gap.
    assert!(apply_telemetry(&store, "P1", &[3, 5]).await.retracted.is_empty());
    let effects = apply_telemetry(&store, "P1", &[4]).await;
    assert_eq!(effects.retracted.len(), 1);
    assert!(active(&store, "TELEMETRY_GAP").await.is_empty());
    let cartridge = store.cartridge(&Udi::parse(UDI).unwrap().key(), &Scope::All).await.unwrap();
    assert_eq!(cartridge.sessions[0].verdict, penwarden_domain::compliance::Verdict::Compliant);
}

/// Like `apply`, retrying what failed for the moment (a deadlock victim, say), as ingest does.
async fn apply_retrying(store: &Store, events: Vec<EventRecord>) {
    let mut batch = IngestBatch { received_ms: 1, events, ..Default::default() };
    batch.auto_register = batch.events.iter().map(|e| e.pen.clone()).collect();
    loop {
        match store.apply_batch(&batch, |_| Vec::new()).await {
            Ok(_) => return,
            Err(error) if error.is_transient() => tokio::task::yield_now().await,
            Err(error) => panic!("batch refused: {error}"),
        }
    }
}

/// The trap of several instances: three of them commit, at the same moment, sessions of three
/// pens with one cartridge. Each transaction alone sees no earlier use of it; unless the
/// transactions judge one after the other, CARTRIDGE_REUSE is missed. Every round must raise
/// it on the two later sessions, exactly as one instance does.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn three_instances_committing_one_cartridge_at_once_never_miss_its_reuse() {
    let (first, scratch) = store().await;
    let instances = [first, Store::connect(scratch.url()).await.unwrap(), Store::connect(scratch.url()).await.unwrap()];
    const ROUNDS: u64 = 20;
    for round in 0..ROUNDS {
        let udi = format!("(01)09506000134352(17)301231(10)LOT7(21)R-{round}");
        let session = format!("r{round}");
        let seq = 2 * round + 1;
        let time = 1_000 * round as i64;
        let batch = |instance: usize| {
            let pen_serial = format!("P{instance}");
            let started = time + instance as i64 * 10;
            vec![start(&pen_serial, seq, started, &session, &udi), end(&pen_serial, seq + 1, started + 5, &session)]
        };
        tokio::join!(
            apply_retrying(&instances[0], batch(0)),
            apply_retrying(&instances[1], batch(1)),
            apply_retrying(&instances[2], batch(2)),
        );
    }
    let filter = ViolationFilter { rule: Some("CARTRIDGE_REUSE".into()), limit: 1000, ..Default::default() };
    let reuses = instances[0].list_violations(&filter).await.unwrap();
    let mut flagged: Vec<(String, String)> = reuses.into_iter().map(|v| (v.session_id, v.pen_serial)).collect();
    flagged.sort();
    let expected: Vec<(String, String)> = (0..ROUNDS)
        .flat_map(|round| ["P1", "P2"].map(|pen| (format!("r{round}"), pen.to_owned())))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(flagged, expected, "each cartridge's second and third use is CARTRIDGE_REUSE");
    for instance in &instances {
        instance.close().await;
    }
}

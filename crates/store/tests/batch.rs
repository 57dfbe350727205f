//! The record's semantics through `apply_batch`: idempotent redelivery, order independence
//! of verdicts, retraction instead of silent rewrite.

use penwarden_domain::{DeviceEvent, DisinfectionMethod, EventRecord, PenSerial, SessionId, TreatmentArea, Udi};
use penwarden_store::{IngestBatch, Store, ViolationFilter};

const UDI: &str = "(01)09506000134352(17)301231(10)LOT7(21)C-1";

fn pen(serial: &str) -> PenSerial {
    PenSerial::parse(serial).unwrap()
}

fn start(pen_serial: &str, seq: u64, time: i64, session: &str, udi: &str) -> EventRecord {
    EventRecord {
        pen: pen(pen_serial),
        seq,
        device_time_unix_ms: time,
        event: DeviceEvent::SessionStarted {
            session_id: SessionId::parse(session).unwrap(),
            cartridge_udi: udi.into(),
            cartridge_signature: vec![],
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
        device_time_unix_ms: time,
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
        device_time_unix_ms: time,
        event: DeviceEvent::Disinfected { method: DisinfectionMethod::AlcoholWipe, sheath_changed: true },
    }
}

async fn store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!("sqlite:{}", dir.path().join("t.db").display())).await.unwrap();
    (store, dir)
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

    let cartridge = store.cartridge(&Udi::parse(UDI).unwrap().key()).await.unwrap();
    assert_eq!(cartridge.sessions.len(), 2);
    assert_eq!(cartridge.sessions[0].session_id, "earlier");
    assert_eq!(cartridge.sessions[1].violated_rules, ["CARTRIDGE_REUSE"]);
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

    let sterility = store.pen_sterility(&pen("P1")).await.unwrap();
    assert!(!sterility.ready_to_treat, "session b has not ended");
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
    store.delete_outbox(pending[1].id).await.unwrap();
    assert!(store.pending_outbox(10).await.unwrap().is_empty());
    assert_eq!(store.outbox_bytes().await.unwrap(), 0);
}

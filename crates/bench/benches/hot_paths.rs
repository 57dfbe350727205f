//! The ingest hot paths, one by one: payload decode, line-protocol encoding, rule evaluation
//! and the store's batch write. `cargo bench -p penwarden-bench` (docs/performance.md).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ed25519_dalek::{Signer, SigningKey};
use penwarden_bench::telemetry_payload;
use penwarden_domain::compliance::{judge_session, signed_message, LotFacts, SessionFacts, SessionRef, Thresholds};
use penwarden_domain::{DeviceEvent, EventRecord, PenSerial, SessionId, TreatmentArea, Udi};
use penwarden_influx::LineBuilder;
use penwarden_ingest::decode::{decode, Decoded, Limits};
use penwarden_store::{IngestBatch, PenPlacement, Store};

const NOW_MS: i64 = 1_800_000_000_000;
const SAMPLES_PER_MESSAGE: usize = 20;

fn decode_telemetry(c: &mut Criterion) {
    let payload = telemetry_payload("PW-000001", 7, SAMPLES_PER_MESSAGE, NOW_MS - 10_000);
    let limits = Limits::default();
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(SAMPLES_PER_MESSAGE as u64));
    group.bench_function("telemetry_20_samples_protobuf", |b| {
        b.iter(|| decode("pw/v1", black_box("pw/v1/pens/PW-000001/telemetry"), black_box(&payload), NOW_MS, &limits))
    });
    group.finish();
}

fn line_protocol(c: &mut Criterion) {
    let payload = telemetry_payload("PW-000001", 7, SAMPLES_PER_MESSAGE, NOW_MS - 10_000);
    let Ok(Decoded::Telemetry(telemetry)) =
        decode("pw/v1", "pw/v1/pens/PW-000001/telemetry", &payload, NOW_MS, &Limits::default())
    else {
        panic!("the benchmark payload must decode");
    };
    let placement = PenPlacement {
        clinic: Some(penwarden_domain::ClinicId::parse("clinic-1").expect("clinic id")),
        chain: Some(penwarden_domain::ChainId::parse("chain-1").expect("chain id")),
        model: "SP-2".into(),
    };
    let mut lines = LineBuilder::with_capacity(64 * 1024);
    let mut group = c.benchmark_group("line_protocol");
    group.throughput(Throughput::Elements(SAMPLES_PER_MESSAGE as u64));
    group.bench_function("telemetry_20_samples", |b| {
        b.iter(|| {
            lines.clear();
            penwarden_ingest::points::telemetry(&mut lines, black_box(&telemetry), &placement);
            black_box(lines.as_str().len())
        })
    });
    group.finish();
}

fn rules(c: &mut Criterion) {
    let key = SigningKey::from_bytes(&[7u8; 32]);
    let udi_text = "(01)09506000134352(17)301231(10)LOT1(21)C1";
    let udi = Udi::parse(udi_text).expect("udi");
    let signature = key.sign(&signed_message(&udi)).to_bytes();
    let lot = LotFacts { recalled: false, manufacturer_key: key.verifying_key().to_bytes() };
    let facts = SessionFacts {
        session: SessionRef {
            pen: PenSerial::parse("P1").expect("pen"),
            session_id: SessionId::parse("s1").expect("s"),
        },
        started_unix_ms: NOW_MS,
        cartridge_udi: udi_text,
        cartridge_signature: &signature,
        lot: Some(&lot),
        area: TreatmentArea::Cheek,
        depth_setting_mm: 1.0,
        max_depth_mm: Some(1.0),
        operator_licence_level: Some(3),
        cartridge_motor_seconds: 600.0,
        cartridge_strokes: 72_000,
        pen_motor_hours: Some(120.0),
        pen_firmware: Some("2.4.1"),
    };
    let thresholds = Thresholds::default();
    c.bench_function("rules/judge_session_with_signature", |b| {
        b.iter(|| judge_session(black_box(&facts), &thresholds))
    });
}

/// One ingest batch as the pipeline commits it under load: telemetry sequence numbers of many
/// pens, and a few session events.
fn store_batch(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        runtime.block_on(Store::connect(&format!("sqlite:{}", dir.path().join("bench.db").display()))).expect("store");
    let pens: Vec<PenSerial> = (0..1000).map(|i| PenSerial::parse(&format!("PW-{i:06}")).expect("pen")).collect();
    // The pens are known after their first messages; steady state registers nothing.
    let mut first = IngestBatch { received_ms: NOW_MS, ..IngestBatch::default() };
    first.auto_register = pens.iter().cloned().collect();
    runtime.block_on(store.apply_batch(&first, |_| Vec::new())).expect("register pens");
    let mut next_seq = 1u64;
    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(1000));
    group.sample_size(20);
    group.bench_function("batch_1000_telemetry_messages_and_4_events", |b| {
        b.iter_batched(
            || {
                let seq = next_seq;
                next_seq += 10;
                let mut batch = IngestBatch { received_ms: NOW_MS, ..IngestBatch::default() };
                for pen in &pens {
                    batch.add_telemetry(pen, seq, seq as i64, Some(NOW_MS));
                }
                for pen in pens.iter().take(2) {
                    let session_id = SessionId::parse(&format!("s{seq}")).expect("session");
                    batch.events.push(EventRecord {
                        pen: pen.clone(),
                        seq: seq + 1,
                        device_time_unix_ms: NOW_MS,
                        event: DeviceEvent::SessionStarted {
                            session_id: session_id.clone(),
                            cartridge_udi: format!("(01)09506000134352(17)301231(10)LOT1(21){pen}-{seq}"),
                            cartridge_signature: Vec::new(),
                            operator_id: None,
                            area: TreatmentArea::Cheek,
                            depth_setting_mm: 1.0,
                        },
                    });
                    batch.events.push(EventRecord {
                        pen: pen.clone(),
                        seq: seq + 2,
                        device_time_unix_ms: NOW_MS + 1000,
                        event: DeviceEvent::SessionEnded {
                            session_id,
                            duration_ms: 1000,
                            strokes: 120,
                            motor_seconds: 1.0,
                            max_depth_mm: 1.0,
                        },
                    });
                }
                batch
            },
            |batch| runtime.block_on(store.apply_batch(&batch, |_| Vec::new())).expect("apply"),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, decode_telemetry, line_protocol, rules, store_batch);
criterion_main!(benches);

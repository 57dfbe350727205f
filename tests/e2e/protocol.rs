//! Bad input lands in the quarantine with its reason; redelivery changes nothing; a late upload
//! moves a verdict and the record shows the correction. Through MQTT in and gRPC out.

use std::collections::HashMap;
use std::time::Duration;

use penwarden_proto::api::v1 as api;
use penwarden_proto::device::v1 as wire;
use penwarden_tests::{wait_for, Influxd, Mosquitto, Penwarden, Publisher};
use prost::Message;

const CARTRIDGE: &str = "(01)09506000134352(17)301231(10)LOT9(21)SHARED-1";
const OTHER_CARTRIDGE: &str = "(01)09506000134352(17)301231(10)LOT9(21)OTHER-1";

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn event(pen: &str, seq: u64, time: i64, kind: wire::pen_event::Kind) -> Vec<u8> {
    wire::PenEvent { schema_version: 1, pen_serial: pen.into(), seq, time_unix_ms: time, kind: Some(kind) }
        .encode_to_vec()
}

fn start(session: &str, udi: &str) -> wire::pen_event::Kind {
    wire::pen_event::Kind::SessionStarted(wire::SessionStarted {
        session_id: session.into(),
        cartridge_udi: udi.into(),
        cartridge_signature: crate::common::sign(udi),
        area: wire::TreatmentArea::Cheek as i32,
        depth_setting_mm: 1.0,
        ..Default::default()
    })
}

fn end(session: &str) -> wire::pen_event::Kind {
    wire::pen_event::Kind::SessionEnded(wire::SessionEnded { session_id: session.into(), ..Default::default() })
}

fn topic(pen: &str) -> String {
    format!("pw/v1/pens/{pen}/events")
}

async fn violations(penwarden: &Penwarden, include_retracted: bool) -> Vec<api::Violation> {
    let mut client = penwarden.compliance().await;
    let request = api::ListViolationsRequest { include_retracted, ..Default::default() };
    client.list_violations(request).await.unwrap().into_inner().violations
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_redelivery_and_late_uploads() {
    let mosquitto = Mosquitto::start().await;
    let influxd = Influxd::start().await;
    // Small limits so that an oversized payload and a flood are cheap to produce.
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("penwarden.toml");
    std::fs::write(&config, "[ingest]\nmax_payload_bytes = 4096\nflood_burst = 20\nflood_rate_per_s = 0\n").unwrap();
    let mut penwarden = Penwarden::start(
        &mosquitto.url(),
        &[
            ("PENWARDEN_CONFIG", config.display().to_string()),
            ("PENWARDEN_INFLUX_URL", influxd.url()),
            ("PENWARDEN_INFLUX_API", "v1".into()),
            ("PENWARDEN_AUTO_REGISTER_PENS", "false".into()),
        ],
    )
    .await;
    let mut fleet = penwarden.fleet().await;
    fleet.register_chain(api::RegisterChainRequest { chain_id: "chain-a".into(), name: "A".into() }).await.unwrap();
    let clinic =
        api::RegisterClinicRequest { clinic_id: "clinic-a".into(), chain_id: "chain-a".into(), name: "A1".into() };
    fleet.register_clinic(clinic).await.unwrap();
    for pen in ["P1", "P2", "FLOODER"] {
        let request =
            api::RegisterPenRequest { pen_serial: pen.into(), clinic_id: "clinic-a".into(), ..Default::default() };
        fleet.register_pen(request).await.unwrap();
    }
    crate::common::register_lot(&penwarden, "LOT9").await;
    let mut publisher = Publisher::connect(mosquitto.port).await;
    let t0 = now_ms() - 3_600_000;

    // Bad input, one of each kind.
    publisher.publish("pw/v1/pens/P1/telemetry", vec![0xde, 0xad, 0xbe, 0xef]).await;
    publisher.publish(&topic("GHOST"), event("GHOST", 1, t0, end("s"))).await;
    publisher.publish(&topic("P1"), event("P2", 1, t0, end("s"))).await;
    publisher.publish("pw/v1/pens/bad!serial/events", event("bad!serial", 1, t0, end("s"))).await;
    let v2 = wire::PenEvent { schema_version: 2, pen_serial: "P1".into(), seq: 1, time_unix_ms: t0, kind: None };
    publisher.publish(&topic("P1"), v2.encode_to_vec()).await;
    publisher.publish(&topic("P1"), event("P1", 1, now_ms() + 10 * 365 * 86_400_000, end("s"))).await;
    publisher.publish(&topic("P1"), vec![b'x'; 5000]).await;
    let nan = wire::TelemetryBatch {
        schema_version: 1,
        pen_serial: "P1".into(),
        seq: 1,
        session_id: String::new(),
        samples: vec![wire::Sample { time_unix_ms: t0, depth_mm: f64::NAN, ..Default::default() }],
    };
    publisher.publish("pw/v1/pens/P1/telemetry", nan.encode_to_vec()).await;
    publisher.publish(&topic("P1"), b"{\"schemaVersion\":1,\"penSerial\":\"\xff\"}".to_vec()).await;
    publisher.publish(&topic("P1"), format!("{}{}", "[".repeat(1000), "]".repeat(1000)).into_bytes()).await;
    let unknown_area = wire::pen_event::Kind::SessionStarted(wire::SessionStarted {
        session_id: "x".into(),
        area: 99,
        ..Default::default()
    });
    publisher.publish(&topic("P1"), event("P1", 1, t0, unknown_area)).await;
    // A flood: the burst of 20 passes, the rest is quarantined.
    for seq in 1..=25 {
        let status = wire::pen_event::Kind::Status(wire::Status { battery_pct: 50.0, ..Default::default() });
        publisher.publish(&topic("FLOODER"), event("FLOODER", seq, t0, status)).await;
    }

    // P2 used the cartridge at t0 + 60 s; the message is delivered twice.
    publisher.publish(&topic("P2"), event("P2", 1, t0 + 60_000, start("late", CARTRIDGE))).await;
    publisher.publish(&topic("P2"), event("P2", 1, t0 + 60_000, start("late", CARTRIDGE))).await;
    let mut compliance = penwarden.compliance().await;
    let cartridge_request = api::GetCartridgeRequest { udi: CARTRIDGE.into(), ..Default::default() };
    wait_for("P2's session", Duration::from_secs(30), || {
        let mut compliance = compliance.clone();
        let request = cartridge_request.clone();
        async move { compliance.get_cartridge(request).await.ok().filter(|c| c.get_ref().sessions.len() == 1) }
    })
    .await;
    assert!(violations(&penwarden, true).await.is_empty(), "one use so far is no violation");

    // P1 uploads late: it used the same cartridge first, then started another session without
    // disinfecting.
    publisher.publish(&topic("P1"), event("P1", 1, t0, start("early", CARTRIDGE))).await;
    publisher.publish(&topic("P1"), event("P1", 2, t0 + 1_000, end("early"))).await;
    publisher.publish(&topic("P1"), event("P1", 4, t0 + 2_000, start("next", OTHER_CARTRIDGE))).await;
    let active = wait_for("reuse and no-disinfection violations", Duration::from_secs(30), || async {
        Some(violations(&penwarden, false).await).filter(|v| v.len() == 2)
    })
    .await;
    let rules: HashMap<_, _> = active.iter().map(|v| (v.rule.as_str(), v.session_id.as_str())).collect();
    assert_eq!(rules, HashMap::from([("CARTRIDGE_REUSE", "late"), ("PEN_NOT_DISINFECTED", "next")]));
    let reuse = active.iter().find(|v| v.rule == "CARTRIDGE_REUSE").unwrap();
    assert_eq!(
        (reuse.pen_serial.as_str(), reuse.clinic_id.as_str(), reuse.chain_id.as_str()),
        ("P2", "clinic-a", "chain-a")
    );
    assert_eq!(reuse.cartridge_serial, "SHARED-1");
    assert_eq!(reuse.device_time_unix_ms, t0 + 60_000);

    let cartridge = compliance.get_cartridge(cartridge_request.clone()).await.unwrap().into_inner();
    assert_eq!(cartridge.status, api::CartridgeStatus::Reused as i32);
    let sessions: Vec<_> =
        cartridge.sessions.iter().map(|s| (s.session_id.as_str(), s.violated_rules.clone())).collect();
    assert_eq!(sessions, [("early", vec![]), ("late", vec!["CARTRIDGE_REUSE".to_string()])]);

    // The disinfection between the two sessions arrives last: the violation is retracted, visibly.
    let wipe = wire::pen_event::Kind::PenDisinfected(wire::PenDisinfected { method: 1, sheath_changed: true });
    publisher.publish(&topic("P1"), event("P1", 3, t0 + 1_500, wipe)).await;
    let active = wait_for("the retraction", Duration::from_secs(30), || async {
        Some(violations(&penwarden, false).await).filter(|v| v.len() == 1)
    })
    .await;
    assert_eq!(active[0].rule, "CARTRIDGE_REUSE");
    let all = violations(&penwarden, true).await;
    let retracted: Vec<_> = all.iter().filter(|v| v.retracted_unix_ms > 0).collect();
    assert_eq!(retracted.len(), 1);
    assert_eq!(retracted[0].rule, "PEN_NOT_DISINFECTED");
    assert!(!retracted[0].retraction_reason.is_empty());

    // Every bad message is in the quarantine with its reason; nothing else is.
    let mut quarantine = penwarden.quarantine_as(&penwarden.admin_token).await;
    let listed = quarantine.list_quarantine(api::ListQuarantineRequest::default()).await.unwrap().into_inner();
    let expected: HashMap<String, u64> = [
        ("decode_error", 2),
        ("unregistered_pen", 1),
        ("serial_mismatch", 1),
        ("topic_invalid", 1),
        ("unsupported_schema_version", 1),
        ("timestamp_out_of_range", 1),
        ("payload_too_large", 1),
        ("invalid_field", 2),
        ("invalid_utf8", 1),
        ("rate_limited", 5),
    ]
    .into_iter()
    .map(|(reason, count)| (reason.to_string(), count))
    .collect();
    assert_eq!(listed.counts_by_reason, expected);
    let garbage =
        listed.messages.iter().find(|m| m.topic.ends_with("/telemetry") && m.reason == "decode_error").unwrap();
    assert_eq!(
        (garbage.pen_serial.as_str(), garbage.payload_len, garbage.payload_excerpt.as_str()),
        ("P1", 4, "\\xde\\xad\\xbe\\xef")
    );

    // Pen sterility and clear errors.
    let sterility = compliance
        .get_pen_sterility(api::GetPenSterilityRequest { pen_serial: "P1".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(!sterility.ready_to_treat && sterility.reasons[0].contains("has not ended"), "{sterility:?}");
    let unknown = compliance.get_pen_sterility(api::GetPenSterilityRequest { pen_serial: "NOPE".into() }).await;
    assert_eq!(unknown.unwrap_err().code(), tonic::Code::NotFound);
    let bad_rule = api::ListViolationsRequest { rule: "NOT_A_RULE".into(), ..Default::default() };
    assert_eq!(compliance.list_violations(bad_rule).await.unwrap_err().code(), tonic::Code::InvalidArgument);

    assert!(penwarden.process.terminate(Duration::from_secs(30)).success());
}

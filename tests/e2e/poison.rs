//! Input that must not stop ingest or vanish: a payload larger than any client limit, a message
//! the store refuses, tag values line protocol cannot carry as such, lines InfluxDB refuses,
//! and points the API adds to the outbox while no pen is sending.

use std::time::Duration;

use penwarden_proto::api::v1 as api;
use penwarden_proto::device::v1 as wire;
use penwarden_tests::{metric, wait_for, Influxd, Mosquitto, Penwarden, Publisher};
use prost::Message;

const CARTRIDGE: &str = "(01)09506000134352(17)301231(10)LOT9(21)POISON-1";

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn event(pen: &str, seq: u64, time: i64, kind: wire::pen_event::Kind) -> Vec<u8> {
    wire::PenEvent { schema_version: 1, pen_serial: pen.into(), seq, time_unix_ms: time, kind: Some(kind) }
        .encode_to_vec()
}

fn status(battery_pct: f64) -> wire::pen_event::Kind {
    wire::pen_event::Kind::Status(wire::Status { battery_pct, firmware: "2.4.1".into(), motor_hours: 1.0 })
}

fn telemetry(pen: &str, seq: u64, time: i64, samples: usize) -> Vec<u8> {
    let samples = (0..samples)
        .map(|i| wire::Sample { time_unix_ms: time + i as i64 * 100, depth_mm: 0.5, ..Default::default() })
        .collect();
    wire::TelemetryBatch { schema_version: 1, pen_serial: pen.into(), seq, session_id: "s1".into(), samples }
        .encode_to_vec()
}

/// Mosquitto, InfluxDB 1.x and penwarden (v1 API, metrics on), with chain-a, clinic-a and the
/// given pens (serial, model) registered.
async fn start(pens: &[(&str, &str)]) -> (Mosquitto, Influxd, Penwarden, String) {
    start_with(pens, &[]).await
}

async fn start_with(pens: &[(&str, &str)], extra_env: &[(&str, String)]) -> (Mosquitto, Influxd, Penwarden, String) {
    let mosquitto = Mosquitto::start().await;
    let influxd = Influxd::start().await;
    let metrics_addr = format!("127.0.0.1:{}", penwarden_tests::free_port());
    let mut env = vec![
        ("PENWARDEN_INFLUX_URL", influxd.url()),
        ("PENWARDEN_INFLUX_API", "v1".into()),
        ("PENWARDEN_METRICS_ADDR", metrics_addr.clone()),
    ];
    env.extend(extra_env.iter().cloned());
    let penwarden = Penwarden::start(&mosquitto.url(), &env).await;
    let mut fleet = penwarden.fleet().await;
    fleet.register_chain(api::RegisterChainRequest { chain_id: "chain-a".into(), name: "A".into() }).await.unwrap();
    let clinic =
        api::RegisterClinicRequest { clinic_id: "clinic-a".into(), chain_id: "chain-a".into(), name: "A1".into() };
    fleet.register_clinic(clinic).await.unwrap();
    for (pen, model) in pens {
        let request = api::RegisterPenRequest {
            pen_serial: pen.to_string(),
            clinic_id: "clinic-a".into(),
            model: model.to_string(),
            ..Default::default()
        };
        fleet.register_pen(request).await.unwrap();
    }
    (mosquitto, influxd, penwarden, metrics_addr)
}

async fn quarantine(penwarden: &Penwarden) -> api::ListQuarantineResponse {
    let mut client = penwarden.quarantine_as(&penwarden.admin_token).await;
    client.list_quarantine(api::ListQuarantineRequest::default()).await.unwrap().into_inner()
}

async fn battery(penwarden: &Penwarden, pen: &str) -> Option<f64> {
    let mut fleet = penwarden.fleet().await;
    let pens = fleet.list_pens(api::ListPensRequest::default()).await.ok()?.into_inner().pens;
    pens.into_iter().find(|p| p.pen_serial == pen).map(|p| p.battery_pct).filter(|b| *b > 0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_larger_than_any_client_limit_is_quarantined_and_ingest_goes_on() {
    let (mosquitto, _influxd, mut penwarden, metrics_addr) = start(&[("P1", "SP-2")]).await;
    let mut publisher = Publisher::connect(mosquitto.port).await;
    let t0 = now_ms() - 60_000;
    // 70 MiB: more than the 64 MiB the MQTT client once accepted, so it dropped the connection
    // and the broker sent the message again on every reconnect.
    let huge = vec![b'{'; 70 << 20];
    publisher.publish("pw/v1/pens/P1/events", huge).await;
    publisher.publish("pw/v1/pens/P1/events", event("P1", 1, t0, status(77.0))).await;

    let landed =
        wait_for("the status after the huge message", Duration::from_secs(60), || battery(&penwarden, "P1")).await;
    assert_eq!(landed, 77.0);
    let listed = wait_for("the huge message in the quarantine", Duration::from_secs(30), || async {
        let listed = quarantine(&penwarden).await;
        (!listed.messages.is_empty()).then_some(listed)
    })
    .await;
    assert_eq!(listed.messages.len(), 1, "{listed:?}");
    let entry = &listed.messages[0];
    assert_eq!((entry.reason.as_str(), entry.pen_serial.as_str()), ("payload_too_large", "P1"));
    assert_eq!((entry.topic.as_str(), entry.payload_len), ("pw/v1/pens/P1/events", 70 << 20));
    assert!(entry.payload_excerpt.starts_with("{{{{"), "{entry:?}");
    assert!(entry.detail.contains("73400320 bytes"), "{entry:?}");
    assert_eq!(metric(&metrics_addr, "penwarden_mqtt_reconnects_total").await.unwrap_or(0.0), 0.0);

    // Acked: a restart does not bring it back.
    penwarden.terminate_and_restart().await;
    publisher.publish("pw/v1/pens/P1/events", event("P1", 2, t0 + 1, status(66.0))).await;
    wait_for("the next status", Duration::from_secs(30), || async {
        battery(&penwarden, "P1").await.filter(|b| *b == 66.0)
    })
    .await;
    assert_eq!(quarantine(&penwarden).await.messages.len(), 1, "the huge message came back");
    assert!(penwarden.process.terminate(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_store_refuses_is_quarantined_and_the_rest_of_its_batch_commits() {
    let (mosquitto, influxd, mut penwarden, _) = start(&[("P1", "SP-2"), ("P2", "SP-2")]).await;
    // A trigger makes the store refuse one message, always: a deterministic failure that no
    // retry can cure (a constraint, a type, a value the database cannot take).
    let store_url = penwarden.store_url();
    penwarden_tests::store_execute(
        &store_url,
        "CREATE TRIGGER refuse_poison BEFORE INSERT ON pen_events WHEN NEW.session_id = 'poison'
         BEGIN SELECT RAISE(ABORT, 'refused by the test trigger'); END",
        "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.session_id = 'poison' THEN RAISE EXCEPTION 'refused by the test trigger'; END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_poison BEFORE INSERT ON pen_events FOR EACH ROW EXECUTE FUNCTION refuse_poison();",
    )
    .await;
    // Published while penwarden is stopped, so all of them arrive at once, in one batch.
    assert!(penwarden.process.terminate(Duration::from_secs(30)).success());
    let mut publisher = Publisher::connect(mosquitto.port).await;
    let t0 = now_ms() - 60_000;
    let poison = wire::pen_event::Kind::SessionStarted(wire::SessionStarted {
        session_id: "poison".into(),
        cartridge_udi: CARTRIDGE.into(),
        ..Default::default()
    });
    publisher.publish("pw/v1/pens/P1/events", event("P1", 1, t0, status(41.0))).await;
    publisher.publish("pw/v1/pens/P1/events", event("P1", 2, t0 + 1, poison)).await;
    for seq in 1..=5 {
        publisher.publish("pw/v1/pens/P2/telemetry", telemetry("P2", seq, t0 + seq as i64 * 1000, 10)).await;
    }
    publisher.publish("pw/v1/pens/P2/events", event("P2", 6, t0 + 9000, status(42.0))).await;
    penwarden.restart().await;

    let listed = wait_for("the refused message in the quarantine", Duration::from_secs(60), || async {
        let listed = quarantine(&penwarden).await;
        (!listed.messages.is_empty()).then_some(listed)
    })
    .await;
    assert_eq!(listed.messages.len(), 1, "{listed:?}");
    let entry = &listed.messages[0];
    assert_eq!((entry.reason.as_str(), entry.pen_serial.as_str()), ("store_rejected", "P1"));
    assert!(entry.detail.contains("refused by the test trigger"), "{entry:?}");
    assert_eq!(wait_for("P1's status", Duration::from_secs(30), || battery(&penwarden, "P1")).await, 41.0);
    assert_eq!(wait_for("P2's status", Duration::from_secs(30), || battery(&penwarden, "P2")).await, 42.0);
    let influxd = &influxd;
    let samples = wait_for("P2's samples", Duration::from_secs(30), || async {
        let count = influxd.query_scalar("penwarden", "SELECT count(depth_mm) FROM pen_telemetry").await?;
        count.as_u64().filter(|n| *n == 50)
    })
    .await;
    assert_eq!(samples, 50);
    assert!(penwarden.process.terminate(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_values_line_protocol_cannot_carry_lose_no_points_and_refused_lines_are_quarantined() {
    // A model ending in a backslash once escaped the separator after it: InfluxDB refused every
    // line of the pen, and the messages were acked anyway.
    let (mosquitto, influxd, mut penwarden, _) = start(&[("P1", "SP-2\\"), ("P2", "SP 2,b=c")]).await;
    let mut publisher = Publisher::connect(mosquitto.port).await;
    let t0 = now_ms() - 60_000;
    publisher.publish("pw/v1/pens/P1/telemetry", telemetry("P1", 1, t0, 10)).await;
    publisher.publish("pw/v1/pens/P2/telemetry", telemetry("P2", 1, t0, 10)).await;
    let count = |query: &'static str| {
        let influxd = &influxd;
        move || async move { influxd.query_scalar("penwarden", query).await.and_then(|v| v.as_u64()) }
    };
    let p1 = "SELECT count(depth_mm) FROM pen_telemetry WHERE model = 'SP-2\u{FFFD}'";
    assert_eq!(
        wait_for("P1's samples", Duration::from_secs(30), || async { count(p1)().await.filter(|n| *n == 10) }).await,
        10
    );
    let p2 = "SELECT count(depth_mm) FROM pen_telemetry WHERE model = 'SP 2,b=c'";
    assert_eq!(
        wait_for("P2's samples", Duration::from_secs(30), || async { count(p2)().await.filter(|n| *n == 10) }).await,
        10
    );

    // A field whose type InfluxDB already knows otherwise: it refuses those lines for good.
    // (Types are fixed per shard, a week here: this is a month earlier, a shard of its own.)
    let month_ago = t0 - 30 * 86_400_000;
    let conflict = reqwest::Client::new()
        .post(format!("{}/write?db=penwarden&precision=ms", influxd.url()))
        .body(format!("pen_telemetry,pen=P1 speed_rpm=\"fast\" {}", month_ago - 1000))
        .send()
        .await
        .unwrap();
    assert!(conflict.status().is_success(), "{:?}", conflict.text().await);
    publisher.publish("pw/v1/pens/P1/telemetry", telemetry("P1", 2, month_ago, 3)).await;
    let listed = wait_for("the refused lines in the quarantine", Duration::from_secs(30), || async {
        let listed = quarantine(&penwarden).await;
        (listed.messages.len() == 3).then_some(listed)
    })
    .await;
    for entry in &listed.messages {
        assert_eq!((entry.reason.as_str(), entry.pen_serial.as_str()), ("influx_rejected", "P1"), "{entry:?}");
        assert_eq!(entry.topic, "pen_telemetry");
        assert!(entry.detail.contains("field type conflict"), "{entry:?}");
        assert!(entry.payload_excerpt.starts_with("pen_telemetry,chain=chain-a"), "{entry:?}");
    }
    assert!(penwarden.process.terminate(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recall_reaches_influxdb_while_no_pen_sends() {
    let (mosquitto, influxd, mut penwarden, _) = start(&[("P1", "SP-2")]).await;
    crate::common::register_lot(&penwarden, "LOT9").await;
    let mut publisher = Publisher::connect(mosquitto.port).await;
    let t0 = now_ms() - 60_000;
    let started = wire::pen_event::Kind::SessionStarted(wire::SessionStarted {
        session_id: "s1".into(),
        cartridge_udi: CARTRIDGE.into(),
        cartridge_signature: crate::common::sign(CARTRIDGE),
        area: wire::TreatmentArea::Cheek as i32,
        depth_setting_mm: 1.0,
        ..Default::default()
    });
    let ended =
        wire::pen_event::Kind::SessionEnded(wire::SessionEnded { session_id: "s1".into(), ..Default::default() });
    publisher.publish("pw/v1/pens/P1/events", event("P1", 1, t0, started)).await;
    publisher.publish("pw/v1/pens/P1/events", event("P1", 2, t0 + 1000, ended)).await;
    let sessions = || async {
        influxd.query_scalar("penwarden", "SELECT count(strokes) FROM pen_session").await.and_then(|v| v.as_u64())
    };
    wait_for("the session point", Duration::from_secs(30), || async { sessions().await.filter(|n| *n == 1) }).await;

    // No pen sends from here on.
    let mut fleet = penwarden.fleet().await;
    let recall = api::RecallLotRequest {
        gtin: crate::common::GTIN.into(),
        lot: "LOT9".into(),
        reason: "sterility breach".into(),
    };
    assert_eq!(fleet.recall_lot(recall).await.unwrap().into_inner().violations_raised, 1);
    let query = "SELECT count(active) FROM compliance_violation WHERE rule = 'CARTRIDGE_RECALLED'";
    let recalled = wait_for("the recall's violation in InfluxDB", Duration::from_secs(10), || async {
        influxd.query_scalar("penwarden", query).await.and_then(|v| v.as_u64())
    })
    .await;
    assert_eq!(recalled, 1);
    assert!(penwarden.process.terminate(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seq_far_ahead_cannot_make_a_pen_ready_for_good() {
    let (mosquitto, _influxd, mut penwarden, _) = start(&[("P1", "SP-2")]).await;
    let mut publisher = Publisher::connect(mosquitto.port).await;
    let t0 = now_ms() - 60_000;
    let started = wire::pen_event::Kind::SessionStarted(wire::SessionStarted {
        session_id: "s1".into(),
        cartridge_udi: CARTRIDGE.into(),
        ..Default::default()
    });
    let ended =
        wire::pen_event::Kind::SessionEnded(wire::SessionEnded { session_id: "s1".into(), ..Default::default() });
    let wipe = wire::pen_event::Kind::PenDisinfected(wire::PenDisinfected { method: 1, sheath_changed: true });
    publisher.publish("pw/v1/pens/P1/events", event("P1", 1, t0, started)).await;
    publisher.publish("pw/v1/pens/P1/events", event("P1", 2, t0 + 1000, ended)).await;
    publisher.publish("pw/v1/pens/P1/events", event("P1", i64::MAX as u64, t0 + 2000, wipe)).await;

    let listed = wait_for("the far-ahead seq in the quarantine", Duration::from_secs(30), || async {
        let listed = quarantine(&penwarden).await;
        (!listed.messages.is_empty()).then_some(listed)
    })
    .await;
    assert_eq!(listed.messages[0].reason, "seq_out_of_range", "{listed:?}");
    let mut compliance = penwarden.compliance().await;
    let sterility = compliance
        .get_pen_sterility(api::GetPenSterilityRequest { pen_serial: "P1".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(!sterility.ready_to_treat, "{sterility:?}");
    assert_eq!(sterility.reasons, ["no disinfection with sheath change since session s1 ended"]);
    assert!(penwarden.process.terminate(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_seq_with_other_content_is_quarantined_not_dropped() {
    let (mosquitto, influxd, mut penwarden, metrics_addr) = start(&[("P1", "SP-2")]).await;
    let mut publisher = Publisher::connect(mosquitto.port).await;
    let t0 = now_ms() - 60_000;
    let session = |id: &str, udi: &str| {
        wire::pen_event::Kind::SessionStarted(wire::SessionStarted {
            session_id: id.into(),
            cartridge_udi: udi.into(),
            ..Default::default()
        })
    };
    let first = "(01)09506000134352(17)301231(10)LOT9(21)FIRST-1";
    let second = "(01)09506000134352(17)301231(10)LOT9(21)SECOND-1";
    publisher.publish("pw/v1/pens/P1/events", event("P1", 1, t0, session("s1", first))).await;
    // Redelivered, byte for byte: changes nothing, quarantines nothing.
    publisher.publish("pw/v1/pens/P1/events", event("P1", 1, t0, session("s1", first))).await;
    // The pen was reset and numbers from 1 again: a second session under a used seq.
    publisher.publish("pw/v1/pens/P1/events", event("P1", 1, t0 + 600_000, session("s2", second))).await;
    // Telemetry alike: a redelivered batch adds nothing, one with other samples under a used
    // seq (after the reset, or under the event's seq 1) is quarantined, none of its samples
    // written.
    publisher.publish("pw/v1/pens/P1/telemetry", telemetry("P1", 2, t0 + 100, 3)).await;
    publisher.publish("pw/v1/pens/P1/telemetry", telemetry("P1", 2, t0 + 100, 3)).await;
    publisher.publish("pw/v1/pens/P1/telemetry", telemetry("P1", 2, t0 + 600_100, 5)).await;
    publisher.publish("pw/v1/pens/P1/telemetry", telemetry("P1", 1, t0 + 600_200, 7)).await;
    publisher.publish("pw/v1/pens/P1/telemetry", telemetry("P1", 3, t0 + 10_000, 2)).await;

    let listed = wait_for("the conflicting messages in the quarantine", Duration::from_secs(30), || async {
        let listed = quarantine(&penwarden).await;
        (listed.messages.len() >= 3).then_some(listed)
    })
    .await;
    assert_eq!(listed.messages.len(), 3, "{listed:?}");
    for entry in &listed.messages {
        assert_eq!((entry.reason.as_str(), entry.pen_serial.as_str()), ("seq_conflict", "P1"), "{entry:?}");
    }
    let mut details: Vec<&str> = listed.messages.iter().map(|entry| entry.detail.as_str()).collect();
    details.sort();
    assert!(
        details[0].contains("seq 1") && details[1].contains("seq 1") && details[2].contains("seq 2"),
        "{details:?}"
    );
    let samples = wait_for("the first deliveries' samples in InfluxDB", Duration::from_secs(30), || async {
        let count = influxd.query_scalar("penwarden", "SELECT count(depth_mm) FROM pen_telemetry").await?;
        (count.as_u64()? >= 5).then_some(count)
    })
    .await;
    assert_eq!(samples.as_u64(), Some(3 + 2), "only the first delivery of seq 2, and seq 3");
    let mut compliance = penwarden.compliance().await;
    let get = |udi: &str| api::GetCartridgeRequest { udi: udi.into(), ..Default::default() };
    assert_eq!(compliance.get_cartridge(get(first)).await.unwrap().into_inner().sessions.len(), 1);
    let missing = compliance.get_cartridge(get(second)).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "the conflicting session is not applied");
    let conflicts = metric(&metrics_addr, "penwarden_seq_conflicts_total").await;
    assert_eq!(conflicts, Some(3.0));
    assert!(penwarden.process.terminate(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pensim_numbers_on_in_a_second_run_against_the_same_store() {
    let (mosquitto, _influxd, mut penwarden, _) = start(&[]).await;
    let args = |seed: &str| {
        let mut args = crate::common::pensim_args_injecting(&mosquitto, &penwarden, "fleet", 3, 2, "reuse=0", &[]);
        args.extend(["--seed".to_string(), seed.to_string()]);
        args
    };
    let first = penwarden_tests::run_pensim(&args("1")).await;
    let second = penwarden_tests::run_pensim(&args("2")).await;
    let events = first["event_messages"].as_u64().unwrap() + second["event_messages"].as_u64().unwrap();
    let store_url = penwarden.store_url();
    let recorded = wait_for("both runs' events in the store", Duration::from_secs(60), || async {
        let store = penwarden_store::Store::connect(&store_url).await.ok()?;
        let recorded = store.event_count().await.ok()? as u64;
        store.close().await;
        (recorded >= events).then_some(recorded)
    })
    .await;
    assert_eq!(recorded, events, "every event of both runs, none taken for a duplicate");
    let listed = quarantine(&penwarden).await;
    assert!(listed.messages.is_empty(), "nothing quarantined: {:?}", listed.counts_by_reason);
    assert!(penwarden.process.terminate(Duration::from_secs(30)).success());
}

async fn stored_events(penwarden: &Penwarden) -> Option<u64> {
    let store_url = penwarden.store_url();
    let store = penwarden_store::Store::connect(&store_url).await.ok()?;
    let count = store.event_count().await.ok()? as u64;
    store.close().await;
    Some(count)
}

fn replay(penwarden: &Penwarden, args: &[&str]) -> String {
    let output = std::process::Command::new(penwarden_tests::binary("penwarden"))
        .args(["quarantine", "replay", "--grpc-url", &penwarden.endpoint()])
        .args(args)
        .env("PENWARDEN_API_KEY", &penwarden.admin_token)
        .output()
        .expect("run penwarden quarantine replay");
    assert!(output.status.success(), "replay failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_messages_are_replayed_after_review_once() {
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("penwarden.toml");
    std::fs::write(&config, "[ingest]\nflood_burst = 20\nflood_rate_per_s = 0\n").unwrap();
    let (mosquitto, _influxd, mut penwarden, _) =
        start_with(&[("P1", "SP-2"), ("P2", "SP-2")], &[("PENWARDEN_CONFIG", config.display().to_string())]).await;
    let mut publisher = Publisher::connect(mosquitto.port).await;
    let t0 = now_ms() - 60_000;
    for seq in 1..=25 {
        publisher.publish("pw/v1/pens/P1/events", event("P1", seq, t0 + seq as i64, status(50.0))).await;
    }
    publisher.publish("pw/v1/pens/P2/events", event("P2", 1, t0, status(50.0))).await;
    let events = wait_for("20 of P1's events and P2's", Duration::from_secs(30), || async {
        stored_events(&penwarden).await.filter(|n| *n == 21)
    })
    .await;
    assert_eq!(events, 21);
    assert_eq!(quarantine(&penwarden).await.counts_by_reason.get("rate_limited"), Some(&5));

    let printed = replay(&penwarden, &["--reason", "rate_limited", "--pen", "P1", "--since", "1970-01-01"]);
    assert!(printed.contains("replayed 5 quarantined messages (reason rate_limited, pen P1"), "{printed}");
    assert!(printed.contains("quarantine ids: "), "{printed}");
    let events = wait_for("the replayed events", Duration::from_secs(30), || async {
        stored_events(&penwarden).await.filter(|n| *n == 26)
    })
    .await;
    assert_eq!(events, 26, "every rate-limited event is in the record now");
    // Again: nothing is replayed twice, and the output says so.
    let printed = replay(&penwarden, &["--reason", "rate_limited"]);
    assert!(printed.contains("replayed 0 quarantined messages"), "{printed}");
    assert!(printed.contains("already replayed before: 5"), "{printed}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stored_events(&penwarden).await, Some(26));
    assert_eq!(quarantine(&penwarden).await.messages.len(), 5, "the originals stay, nothing new");
    assert!(penwarden.process.terminate(Duration::from_secs(30)).success());
}

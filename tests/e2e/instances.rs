//! Several instances on one store and one broker: each takes a share of the fleet through an
//! MQTT shared subscription, and together they record exactly what one instance would.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use penwarden_proto::api::v1 as api;
use penwarden_proto::device::v1 as wire;
use penwarden_tests::{metric, run_pensim, wait_for, Influxd, Mosquitto, Penwarden, Publisher};
use prost::Message;

use crate::common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_split_one_fleet_and_record_it_exactly_once() {
    let mosquitto = Mosquitto::start().await;
    let influxd = Influxd::start().await;
    let metrics = [penwarden_tests::free_port(), penwarden_tests::free_port()].map(|port| format!("127.0.0.1:{port}"));
    let env = [
        ("PENWARDEN_INFLUX_URL", influxd.url()),
        ("PENWARDEN_INFLUX_API", "v1".into()),
        ("PENWARDEN_MQTT_SHARE_GROUP", "ingest".into()),
        ("PENWARDEN_METRICS_ADDR", metrics[0].clone()),
    ];
    let mut first = Penwarden::start(&mosquitto.url(), &env).await;
    let mut second = Penwarden::start_sharing(&first, &[("PENWARDEN_METRICS_ADDR", metrics[1].clone())]).await;
    // A watcher on each instance, connected before any traffic: each must see what both raise.
    let mut watched = Vec::new();
    for instance in [&first, &second] {
        let mut compliance = instance.compliance().await;
        let request = api::WatchViolationsRequest::default();
        let stream = compliance.watch_violations(request).await.expect("WatchViolations").into_inner();
        let changes = Arc::new(Mutex::new(Vec::new()));
        watched.push((changes.clone(), tokio::spawn(common::collect_changes(stream, changes))));
    }

    // pensim registers its fleet through the first instance and publishes at once: the
    // second must know those pens when their messages come to it.
    let summary = run_pensim(&common::pensim_args(&mosquitto, &first, "fleet", 12, 8, &[])).await;
    let samples = summary["samples"].as_u64().expect("samples");
    let sessions = summary["sessions"].as_u64().expect("sessions");
    let events = summary["event_messages"].as_u64().expect("event_messages");
    let count = |query: &'static str| {
        let influxd = &influxd;
        async move { influxd.query_scalar("penwarden", query).await.and_then(|v| v.as_u64()) }
    };
    let landed = common::wait_for_count("every sample in InfluxDB", samples, || {
        count("SELECT count(depth_mm) FROM pen_telemetry")
    })
    .await;
    assert_eq!(landed, samples, "each sample exactly once in InfluxDB");
    let session_points =
        common::wait_for_count("a point per session", sessions, || count("SELECT count(strokes) FROM pen_session"))
            .await;
    assert_eq!(session_points, sessions, "each session exactly once in InfluxDB");
    // One record: both instances answer with exactly the injected violations.
    let expected = common::injected(&summary);
    common::wait_for_violations(&first, &expected, true).await;
    common::wait_for_violations(&second, &expected, true).await;

    // Each watcher saw every change once, in cursor order, ending in the record's state.
    let mut record = first.compliance().await;
    let listed = record.list_violations(api::ListViolationsRequest { page_size: 1000, ..Default::default() });
    let active: BTreeSet<i64> =
        listed.await.expect("ListViolations").into_inner().violations.iter().map(|v| v.id).collect();
    for (changes, _) in &watched {
        let seen = wait_for("each watcher to see every violation", Duration::from_secs(10), || async {
            let changes = changes.lock().unwrap().clone();
            let mut last_state = BTreeMap::new();
            for change in &changes {
                let violation = change.violation.as_ref().expect("a change names its violation");
                last_state.insert(violation.id, violation.retracted_unix_ms == 0);
            }
            let seen: BTreeSet<i64> = last_state.iter().filter(|(_, active)| **active).map(|(id, _)| *id).collect();
            (seen == active).then_some(changes)
        })
        .await;
        let cursors: Vec<i64> = seen.iter().map(|change| change.cursor[1..].parse().expect("cursor c<n>")).collect();
        assert!(cursors.windows(2).all(|pair| pair[0] < pair[1]), "no change twice, none out of order: {cursors:?}");
    }

    // Each took a share, and neither refused a pen the other registered.
    for addr in &metrics {
        let received = metric(addr, "penwarden_mqtt_messages_received_total").await.unwrap_or(0.0);
        assert!(received > 0.0, "instance with metrics on {addr} took no share of the fleet");
    }
    for instance in [&first, &second] {
        let mut client = instance.quarantine_as(&instance.admin_token).await;
        let listed = client.list_quarantine(api::ListQuarantineRequest::default()).await.unwrap().into_inner();
        assert!(listed.messages.is_empty(), "{:?}", listed.messages);
    }

    for instance in [&mut first, &mut second] {
        let status = instance.process.terminate(Duration::from_secs(30));
        assert!(status.success(), "penwarden exits 0 on SIGTERM, got {status}");
    }
    let store = penwarden_store::Store::connect(&first.store_url()).await.expect("open the store");
    assert_eq!(store.event_count().await.expect("count events") as u64, events, "each event exactly once");
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pen_registered_through_one_instance_and_a_revoked_key_hold_for_both() {
    let mosquitto = Mosquitto::start().await;
    let influxd = Influxd::start().await;
    let env = [
        ("PENWARDEN_INFLUX_URL", influxd.url()),
        ("PENWARDEN_INFLUX_API", "v1".into()),
        ("PENWARDEN_MQTT_SHARE_GROUP", "ingest".into()),
    ];
    let first = Penwarden::start(&mosquitto.url(), &env).await;
    let second = Penwarden::start_sharing(&first, &[]).await;
    first.register_clinic_a_with(&[]).await;

    // Registered through the first, and at once ten messages that the broker deals out to
    // both: the second has not polled the directory yet when its share arrives.
    let mut fleet = first.fleet().await;
    let pen = api::RegisterPenRequest {
        pen_serial: "LATE-1".into(),
        clinic_id: "clinic-a".into(),
        model: "SP-2".into(),
        ..Default::default()
    };
    fleet.register_pen(pen).await.expect("RegisterPen");
    let mut publisher = Publisher::connect(mosquitto.port).await;
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    for seq in 1..=10u64 {
        let status = wire::Status { battery_pct: 50.0 + seq as f64, firmware: "2.4.1".into(), motor_hours: 1.0 };
        let event = wire::PenEvent {
            schema_version: 1,
            pen_serial: "LATE-1".into(),
            seq,
            time_unix_ms: now_ms + seq as i64,
            kind: Some(wire::pen_event::Kind::Status(status)),
        };
        publisher.publish("pw/v1/pens/LATE-1/events", event.encode_to_vec()).await;
    }
    let store = penwarden_store::Store::connect(&first.store_url()).await.expect("open the store");
    let recorded = wait_for("all ten events in the record", Duration::from_secs(10), || async {
        let count = store.event_count().await.ok()?;
        (count >= 10).then_some(count)
    })
    .await;
    assert_eq!(recorded, 10);
    store.close().await;
    for instance in [&first, &second] {
        let mut client = instance.quarantine_as(&instance.admin_token).await;
        let listed = client.list_quarantine(api::ListQuarantineRequest::default()).await.unwrap().into_inner();
        assert!(listed.messages.is_empty(), "refused as unregistered: {:?}", listed.messages);
    }

    // A key revoked in the shared store is refused by every instance once its 5 s cache of
    // verified keys lets go.
    let key = first.create_api_key("admin", "");
    for instance in [&first, &second] {
        instance.fleet_as(&key).await.list_pens(api::ListPensRequest::default()).await.expect("the key works");
    }
    let key_id = key.split('_').nth(1).expect("pwk_<id>_<secret>");
    let (revoked, _, printed) = common::apikey_cli(&first, &["revoke", key_id]);
    assert!(revoked, "{printed}");
    tokio::time::sleep(Duration::from_millis(5500)).await;
    for instance in [&first, &second] {
        let refused = instance.fleet_as(&key).await.list_pens(api::ListPensRequest::default()).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    }
}

//! Safe on a shared network: penwarden logs in to a broker configured exactly like
//! deploy/mosquitto.conf (password file and ACL), never shows the password, and the ACL
//! confines each pen to its own topics.

use std::time::Duration;

use penwarden_proto::api::v1 as api;
use penwarden_proto::device::v1 as wire;
use penwarden_tests::{binary, free_port, wait_for, Influxd, Mosquitto, Penwarden, Publisher};
use prost::Message;

const PENWARDEN_PASSWORD: &str = "broker-s3cret-for-penwarden";

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn status(pen: &str, seq: u64, battery_pct: f64) -> Vec<u8> {
    let kind = wire::pen_event::Kind::Status(wire::Status { battery_pct, firmware: "2.4.1".into(), motor_hours: 1.0 });
    wire::PenEvent { schema_version: 1, pen_serial: pen.into(), seq, time_unix_ms: now_ms() - 1000, kind: Some(kind) }
        .encode_to_vec()
}

/// `penwarden serve` with the given broker login, expected to exit at start: its status and
/// everything it printed.
fn serve_expecting_exit(mosquitto: &Mosquitto, influxd: &Influxd, login: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(binary("penwarden"))
        .arg("serve")
        .env("PENWARDEN_MQTT_URL", mosquitto.url())
        .env("PENWARDEN_MQTT_CLIENT_ID", format!("penwarden-login-{}", free_port()))
        .env("PENWARDEN_DATABASE_URL", format!("sqlite:{}", dir.path().join("penwarden.db").display()))
        .env("PENWARDEN_GRPC_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("PENWARDEN_INFLUX_URL", influxd.url())
        .env("PENWARDEN_INFLUX_API", "v1")
        .env("RUST_LOG", "debug")
        .envs(login.iter().copied())
        .output()
        .expect("run penwarden serve");
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), printed)
}

async fn battery(penwarden: &Penwarden, pen: &str) -> Option<f64> {
    let mut fleet = penwarden.fleet().await;
    let pens = fleet.list_pens(api::ListPensRequest::default()).await.ok()?.into_inner().pens;
    pens.into_iter().find(|p| p.pen_serial == pen).map(|p| p.battery_pct).filter(|b| *b > 0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn penwarden_logs_in_to_the_deployed_broker_and_each_pen_is_confined_to_its_topics() {
    let mosquitto =
        Mosquitto::start_deployed(&[("penwarden", PENWARDEN_PASSWORD), ("P1", "pen-one-pass"), ("P2", "pen-two-pass")])
            .await;
    let influxd = Influxd::start().await;

    // No login, or a wrong password: a clear refusal at start, and the password never shown.
    let (ok, printed) = serve_expecting_exit(&mosquitto, &influxd, &[]);
    assert!(!ok && printed.contains("NotAuthorized"), "{printed}");
    let wrong = "wrong-s3cret-guess";
    let (ok, printed) = serve_expecting_exit(
        &mosquitto,
        &influxd,
        &[("PENWARDEN_MQTT_USERNAME", "penwarden"), ("PENWARDEN_MQTT_PASSWORD", wrong)],
    );
    assert!(!ok && printed.contains("NotAuthorized"), "{printed}");
    assert!(!printed.contains(wrong), "the password was printed: {printed}");
    // Credentials in the URL are refused, the password shown as ***.
    let in_url = format!("mqtt://penwarden:{PENWARDEN_PASSWORD}@127.0.0.1:{}", mosquitto.port);
    let (ok, printed) = serve_expecting_exit(&mosquitto, &influxd, &[("PENWARDEN_MQTT_URL", &in_url)]);
    assert!(!ok && printed.contains("PENWARDEN_MQTT_USERNAME"), "{printed}");
    assert!(!printed.contains(PENWARDEN_PASSWORD), "the password was printed: {printed}");

    // The right login, the password from a file.
    let secrets = tempfile::tempdir().unwrap();
    let password_file = secrets.path().join("mqtt-password");
    std::fs::write(&password_file, format!("{PENWARDEN_PASSWORD}\n")).unwrap();
    let env = [
        ("PENWARDEN_INFLUX_URL", influxd.url()),
        ("PENWARDEN_INFLUX_API", "v1".into()),
        ("PENWARDEN_MQTT_USERNAME", "penwarden".into()),
        ("PENWARDEN_MQTT_PASSWORD_FILE", password_file.display().to_string()),
    ];
    let mut penwarden = Penwarden::start(&mosquitto.url(), &env).await;
    let mut fleet = penwarden.fleet().await;
    fleet.register_chain(api::RegisterChainRequest { chain_id: "chain-a".into(), name: "A".into() }).await.unwrap();
    let clinic =
        api::RegisterClinicRequest { clinic_id: "clinic-a".into(), chain_id: "chain-a".into(), name: "A1".into() };
    fleet.register_clinic(clinic).await.unwrap();
    for pen in ["P1", "P2"] {
        let request = api::RegisterPenRequest {
            pen_serial: pen.into(),
            clinic_id: "clinic-a".into(),
            model: "SP-2".into(),
            ..Default::default()
        };
        fleet.register_pen(request).await.unwrap();
    }

    // P1 speaks for P2: the ACL refuses it (MQTT 3.1.1 has no way to say so: Mosquitto may
    // still ack, and closes the connection). Then P1 speaks for itself.
    let mut forger = Publisher::connect_as(mosquitto.port, "P1", "pen-one-pass").await;
    forger.try_publish("pw/v1/pens/P2/events", status("P2", 1, 11.0)).await;
    let mut p1 = Publisher::connect_as(mosquitto.port, "P1", "pen-one-pass").await;
    p1.publish("pw/v1/pens/P1/events", status("P1", 1, 51.0)).await;
    let landed = wait_for("P1's own status", Duration::from_secs(30), || async {
        battery(&penwarden, "P1").await.filter(|b| *b == 51.0)
    })
    .await;
    assert_eq!(landed, 51.0);
    // P1's own message came after the forged one: had the broker passed the forgery on, it
    // would have landed first.
    assert_eq!(battery(&penwarden, "P2").await, None, "a pen published as another pen");
    // P2 itself is heard.
    let mut p2 = Publisher::connect_as(mosquitto.port, "P2", "pen-two-pass").await;
    p2.publish("pw/v1/pens/P2/events", status("P2", 1, 22.0)).await;
    let landed = wait_for("P2's own status", Duration::from_secs(30), || async {
        battery(&penwarden, "P2").await.filter(|b| *b == 22.0)
    })
    .await;
    assert_eq!(landed, 22.0);
    assert!(penwarden.process.terminate(Duration::from_secs(30)).success());
}

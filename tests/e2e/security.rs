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
    penwarden.register_clinic_a_with(&["P1", "P2"]).await;

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

/// What the TLS tests need: a servers CA (broker, penwarden), a manufacturer's pen CA with P1
/// and P2, and a rogue CA that issued its own "P1". `clients-ca.crt` bundles the two trusted
/// issuers of client certificates, as deploy/mosquitto-tls.conf expects.
fn issue_tls_certificates(dir: &std::path::Path, pens: &[&str]) {
    let dir_text = dir.display().to_string();
    let d = dir_text.as_str();
    penwarden_tests::issue_certs(&["ca", d, "servers"]);
    penwarden_tests::issue_certs(&["ca", d, "maker"]);
    penwarden_tests::issue_certs(&["server", d, "servers", "broker", "127.0.0.1", "localhost"]);
    penwarden_tests::issue_certs(&["client", d, "servers", "penwarden"]);
    let mut pen_args = vec!["pens", d, "maker"];
    pen_args.extend_from_slice(pens);
    penwarden_tests::issue_certs(&pen_args);
    let rogue = dir.join("rogue");
    let rogue_text = rogue.display().to_string();
    penwarden_tests::issue_certs(&["ca", &rogue_text, "rogue"]);
    penwarden_tests::issue_certs(&["client", &rogue_text, "rogue", "P1"]);
    let bundle = [
        std::fs::read_to_string(dir.join("maker-ca.crt")).unwrap(),
        std::fs::read_to_string(dir.join("servers-ca.crt")).unwrap(),
    ]
    .concat();
    std::fs::write(dir.join("clients-ca.crt"), bundle).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_each_pen_is_its_certificate_and_nothing_else_gets_in() {
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path();
    issue_tls_certificates(dir, &["P1", "P2", "PW-000001", "PW-000002"]);
    let mosquitto = Mosquitto::start_deployed_tls(dir, &dir.join("clients-ca.crt")).await;
    let influxd = Influxd::start().await;
    let url = format!("mqtts://127.0.0.1:{}", mosquitto.port);
    let env = [
        ("PENWARDEN_INFLUX_URL", influxd.url()),
        ("PENWARDEN_INFLUX_API", "v1".into()),
        ("PENWARDEN_MQTT_CA_FILE", dir.join("servers-ca.crt").display().to_string()),
        ("PENWARDEN_MQTT_CERT_FILE", dir.join("penwarden.crt").display().to_string()),
        ("PENWARDEN_MQTT_KEY_FILE", dir.join("penwarden.key").display().to_string()),
    ];
    let mut penwarden = Penwarden::start(&url, &env).await;
    penwarden.register_clinic_a_with(&["P1", "P2"]).await;
    let ca = dir.join("servers-ca.crt");
    let identity = |pen: &str| (dir.join(format!("{pen}.crt")), dir.join(format!("{pen}.key")));

    // Nothing gets in without a certificate the broker trusts, nor in plaintext.
    assert!(
        !penwarden_tests::connects(penwarden_tests::tls_options(mosquitto.port, &ca, None)).await,
        "no certificate"
    );
    let (rogue_cert, rogue_key) = (dir.join("rogue/P1.crt"), dir.join("rogue/P1.key"));
    let rogue = penwarden_tests::tls_options(mosquitto.port, &ca, Some((&rogue_cert, &rogue_key)));
    assert!(!penwarden_tests::connects(rogue).await, "a certificate of an untrusted CA");
    let plaintext = rumqttc::MqttOptions::new("plaintext", "127.0.0.1", mosquitto.port);
    assert!(!penwarden_tests::connects(plaintext).await, "plaintext on the TLS listener");

    // P1 as P2: refused by the ACL. P1 as itself: lands. A P1 payload naming P2: quarantined.
    let (p1_cert, p1_key) = identity("P1");
    let mut forger = Publisher::connect_tls(mosquitto.port, &ca, Some((&p1_cert, &p1_key))).await;
    forger.try_publish("pw/v1/pens/P2/events", status("P2", 1, 11.0)).await;
    let mut p1 = Publisher::connect_tls(mosquitto.port, &ca, Some((&p1_cert, &p1_key))).await;
    p1.publish("pw/v1/pens/P1/events", status("P2", 1, 33.0)).await;
    p1.publish("pw/v1/pens/P1/events", status("P1", 1, 51.0)).await;
    let landed = wait_for("P1's own status", Duration::from_secs(30), || async {
        battery(&penwarden, "P1").await.filter(|b| *b == 51.0)
    })
    .await;
    assert_eq!(landed, 51.0);
    assert_eq!(battery(&penwarden, "P2").await, None, "a pen published as another pen");
    let mut quarantine = penwarden.quarantine_as(&penwarden.admin_token).await;
    let listed = quarantine.list_quarantine(api::ListQuarantineRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.counts_by_reason.get("serial_mismatch"), Some(&1), "{listed:?}");

    // pensim over mqtts://, each pen with its own certificate (registering its fleet first).
    let summary = penwarden_tests::run_pensim(&[
        "--mqtt-url".into(),
        url.clone(),
        "--mqtt-ca-file".into(),
        ca.display().to_string(),
        "--pen-cert-dir".into(),
        dir.display().to_string(),
        "--pens".into(),
        "2".into(),
        "--clinics".into(),
        "1".into(),
        "--chains".into(),
        "1".into(),
        "--duration".into(),
        "2".into(),
        "--session-secs".into(),
        "1..1".into(),
        "--grpc-url".into(),
        penwarden.endpoint(),
        "--api-key".into(),
        penwarden.admin_token.clone(),
    ])
    .await;
    let events = summary["event_messages"].as_u64().unwrap_or(0);
    assert!(events > 0, "{summary}");
    let stored = wait_for("pensim's events in the store", Duration::from_secs(30), || async {
        let mut fleet = penwarden.fleet().await;
        let pens = fleet.list_pens(api::ListPensRequest::default()).await.ok()?.into_inner().pens;
        let seqs: u64 = pens.iter().filter(|p| p.pen_serial.starts_with("PW-")).map(|p| p.last_seq).sum();
        (seqs > 0).then_some(seqs)
    })
    .await;
    assert!(stored > 0);
    assert!(penwarden.process.terminate(Duration::from_secs(30)).success());
}

/// An RPC with the admin key over `url` with `tls`: whether it was answered.
async fn answered(url: &str, tls: &penwarden_proto::ClientTlsFiles, token: &str) -> bool {
    let Ok(channel) = penwarden_proto::connect(url, tls).await else { return false };
    let token = penwarden_proto::BearerToken::new(token).unwrap();
    let mut fleet = api::fleet_service_client::FleetServiceClient::with_interceptor(channel, token);
    fleet.list_pens(api::ListPensRequest::default()).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_mutual_tls_and_never_plaintext_beyond_loopback_unless_told() {
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path().display().to_string();
    let dir = certs.path();
    penwarden_tests::issue_certs(&["ca", &d, "servers"]);
    penwarden_tests::issue_certs(&["ca", &d, "clients"]);
    penwarden_tests::issue_certs(&["server", &d, "servers", "api", "127.0.0.1", "localhost"]);
    penwarden_tests::issue_certs(&["client", &d, "clients", "ops"]);
    let path = |name: &str| dir.join(name).display().to_string();
    let mosquitto = Mosquitto::start().await;
    let influxd = Influxd::start().await;

    // Plaintext beyond loopback: refused at start, in one line, before anything listens.
    let (ok, printed) = serve_expecting_exit(&mosquitto, &influxd, &[("PENWARDEN_GRPC_ADDR", "0.0.0.0:0")]);
    assert!(!ok, "{printed}");
    let refusal = printed.lines().find(|line| line.contains("refusing to serve gRPC in plaintext on 0.0.0.0:0"));
    assert!(refusal.is_some_and(|line| line.contains("--allow-plaintext")), "{printed}");

    let env = [
        ("PENWARDEN_INFLUX_URL", influxd.url()),
        ("PENWARDEN_INFLUX_API", "v1".into()),
        ("PENWARDEN_GRPC_TLS_CERT_FILE", path("api.crt")),
        ("PENWARDEN_GRPC_TLS_KEY_FILE", path("api.key")),
        ("PENWARDEN_GRPC_TLS_CLIENT_CA_FILE", path("clients-ca.crt")),
        // The client side, as the CLI reads it (the harness connects with these too).
        ("PENWARDEN_GRPC_CA_FILE", path("servers-ca.crt")),
        ("PENWARDEN_GRPC_CERT_FILE", path("ops.crt")),
        ("PENWARDEN_GRPC_KEY_FILE", path("ops.key")),
    ];
    let mut penwarden = Penwarden::start(&mosquitto.url(), &env).await;
    let https = penwarden.endpoint();
    assert!(https.starts_with("https://"));
    let token = penwarden.admin_token.clone();
    let full = penwarden_proto::ClientTlsFiles {
        ca_file: Some(dir.join("servers-ca.crt")),
        identity: Some((dir.join("ops.crt"), dir.join("ops.key"))),
    };
    assert!(answered(&https, &full, &token).await, "a client with the CA and a client certificate");
    let no_identity = penwarden_proto::ClientTlsFiles { identity: None, ..full.clone() };
    assert!(!answered(&https, &no_identity, &token).await, "no client certificate");
    let wrong_ca = penwarden_proto::ClientTlsFiles { ca_file: Some(dir.join("clients-ca.crt")), ..full.clone() };
    assert!(!answered(&https, &wrong_ca, &token).await, "a server certificate the client does not trust");
    let plaintext = format!("http://{}", penwarden.grpc_addr);
    assert!(!answered(&plaintext, &Default::default(), &token).await, "plaintext");

    // The CLI speaks https:// with the same files.
    let output = std::process::Command::new(binary("penwarden"))
        .args(["violations", "--grpc-url", &https])
        .args(["--grpc-ca-file", &path("servers-ca.crt"), "--grpc-cert-file", &path("ops.crt")])
        .args(["--grpc-key-file", &path("ops.key")])
        .env("PENWARDEN_API_KEY", &token)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(penwarden.process.terminate(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_rotate_with_a_grace_period_and_each_has_a_rate_limit() {
    let mosquitto = Mosquitto::start().await;
    let influxd = Influxd::start().await;
    let env = [
        ("PENWARDEN_INFLUX_URL", influxd.url()),
        ("PENWARDEN_INFLUX_API", "v1".into()),
        ("PENWARDEN_API_RATE_LIMIT_PER_S", "1".into()),
        ("PENWARDEN_API_RATE_LIMIT_BURST", "3".into()),
    ];
    let mut penwarden = Penwarden::start(&mosquitto.url(), &env).await;
    async fn call(penwarden: &Penwarden, token: &str) -> Result<(), tonic::Status> {
        penwarden.fleet_as(token).await.list_pens(api::ListPensRequest::default()).await.map(|_| ())
    }

    // A burst of 3, then 1 a second: the 4th call at once is refused; another key is not.
    let busy = penwarden.create_api_key("admin", "");
    let calm = penwarden.create_api_key("admin", "");
    for _ in 0..3 {
        call(&penwarden, &busy).await.unwrap();
    }
    let limited = call(&penwarden, &busy).await.unwrap_err();
    assert_eq!(limited.code(), tonic::Code::ResourceExhausted, "{limited:?}");
    call(&penwarden, &calm).await.unwrap();

    // Rotation: the new key works at once; the old one stops after its grace (0 s here), once
    // the server's 5 s cache of verified keys lets go of it.
    let old = penwarden.create_api_key("chain", "chain-1");
    let old_id = old.split('_').nth(1).unwrap().to_owned();
    call(&penwarden, &old).await.unwrap();
    let (ok, new, printed) = crate::common::apikey_cli(&penwarden, &["rotate", &old_id, "--grace", "0s"]);
    assert!(ok, "{printed}");
    let new = new.trim().to_owned();
    assert!(new.starts_with("pwk_") && new != old);
    call(&penwarden, &new).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5500)).await;
    let refused = call(&penwarden, &old).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    call(&penwarden, &new).await.unwrap();

    // The list shows the old key expired and when keys were last used; never a secret.
    let (ok, listed, _) = crate::common::apikey_cli(&penwarden, &["list"]);
    assert!(ok);
    let old_line = listed.lines().find(|line| line.starts_with(&old_id)).unwrap();
    assert!(old_line.contains("expired"), "{old_line}");
    let new_id = new.split('_').nth(1).unwrap();
    let new_line = listed.lines().find(|line| line.starts_with(new_id)).unwrap();
    assert!(new_line.contains("active") && new_line.contains("rotation of"), "{new_line}");
    assert!(!listed.contains(new.rsplit('_').next().unwrap()), "a secret in the list");
    let used = listed.lines().find(|line| line.starts_with(busy.split('_').nth(1).unwrap())).unwrap();
    assert!(used.matches('Z').count() == 1, "last used shown: {used}");
    assert!(penwarden.process.terminate(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pensim_registers_a_fleet_larger_than_its_keys_burst() {
    let mosquitto = Mosquitto::start().await;
    let influxd = Influxd::start().await;
    let env = [
        ("PENWARDEN_INFLUX_URL", influxd.url()),
        ("PENWARDEN_INFLUX_API", "v1".into()),
        ("PENWARDEN_API_RATE_LIMIT_PER_S", "40".into()),
        ("PENWARDEN_API_RATE_LIMIT_BURST", "10".into()),
    ];
    let penwarden = Penwarden::start(&mosquitto.url(), &env).await;
    let pensim_key = penwarden.create_api_key("admin", "");
    // 60 pens, 6 clinics, 2 chains, lots and operators: far more calls than a burst of 10.
    let args: Vec<String> = [
        "--mqtt-url",
        &mosquitto.url(),
        "--pens",
        "60",
        "--clinics",
        "6",
        "--chains",
        "2",
        "--duration",
        "1",
        "--session-secs",
        "1..1",
        "--grpc-url",
        &penwarden.endpoint(),
        "--api-key",
        &pensim_key,
    ]
    .map(String::from)
    .to_vec();
    let summary = penwarden_tests::run_pensim(&args).await;
    assert_eq!(summary["pens"], 60, "{summary}");
    let registered = penwarden.fleet().await.list_pens(api::ListPensRequest::default()).await.unwrap().into_inner();
    assert_eq!(registered.pens.len(), 60);
}

//! Helpers shared by the end-to-end tests.

use std::collections::BTreeMap;
use std::time::Duration;

use penwarden_proto::api::v1 as api;
use penwarden_tests::{wait_for, Influxd, Mosquitto, Penwarden};

pub(crate) const SETTLE: Duration = Duration::from_secs(90);

/// The GTIN of the test manufacturer's cartridges.
pub(crate) const GTIN: &str = "09506000134352";

fn test_manufacturer() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[0x11; 32])
}

/// The signature a genuine cartridge with this UDI carries.
pub(crate) fn sign(udi: &str) -> Vec<u8> {
    use ed25519_dalek::Signer;
    let udi = penwarden_domain::Udi::parse(udi).expect("a valid UDI");
    test_manufacturer().sign(&penwarden_domain::compliance::signed_message(&udi)).to_bytes().to_vec()
}

/// Registers a lot of the test manufacturer, so its signed cartridges verify.
pub(crate) async fn register_lot(penwarden: &Penwarden, lot: &str) {
    let mut fleet = penwarden.fleet().await;
    let request = api::RegisterLotRequest {
        gtin: GTIN.into(),
        lot: lot.into(),
        expiry: "2030-12-31".into(),
        manufacturer_id: "test-manufacturer".into(),
        public_key: test_manufacturer().verifying_key().to_bytes().to_vec(),
    };
    fleet.register_lot(request).await.expect("RegisterLot");
}

/// Every active violation, all pages, counted by rule; asserts each carries its context.
pub(crate) async fn violations_by_rule(penwarden: &Penwarden, expect_placement: bool) -> BTreeMap<String, u64> {
    let mut client = penwarden.compliance().await;
    let mut counts = BTreeMap::new();
    let mut page_token = String::new();
    loop {
        let request = api::ListViolationsRequest { page_size: 7, page_token: page_token.clone(), ..Default::default() };
        let page = client.list_violations(request).await.expect("ListViolations").into_inner();
        for violation in &page.violations {
            assert!(!violation.severity.is_empty() && !violation.explanation.is_empty(), "{violation:?}");
            assert!(!violation.pen_serial.is_empty() && !violation.session_id.is_empty(), "{violation:?}");
            assert!(!violation.cartridge_serial.is_empty() && violation.device_time_unix_ms > 0, "{violation:?}");
            if expect_placement {
                assert!(!violation.clinic_id.is_empty() && !violation.chain_id.is_empty(), "{violation:?}");
            }
            *counts.entry(violation.rule.clone()).or_insert(0) += 1;
        }
        if page.next_page_token.is_empty() {
            return counts;
        }
        page_token = page.next_page_token;
    }
}

/// The value of an unlabelled counter in Prometheus text format.
pub(crate) fn metric_value(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

pub(crate) fn injected(summary: &serde_json::Value) -> BTreeMap<String, u64> {
    summary["violations_injected"]
        .as_object()
        .expect("violations_injected")
        .iter()
        .map(|(rule, count)| (rule.clone(), count.as_u64().expect("count")))
        .filter(|(_, count)| *count > 0)
        .collect()
}

/// pensim's arguments for a test fleet. `register`: `fleet` (pens registered) or `catalog`
/// (only lots and operators; pens auto-register).
pub(crate) fn pensim_args(
    mosquitto: &Mosquitto,
    penwarden: &Penwarden,
    register: &str,
    pens: usize,
    duration_s: u64,
    extra: &[&str],
) -> Vec<String> {
    pensim_args_injecting(mosquitto, penwarden, register, pens, duration_s, "reuse=0.25,no-disinfect=0.3", extra)
}

/// Like [`pensim_args`], with the given `--inject`.
pub(crate) fn pensim_args_injecting(
    mosquitto: &Mosquitto,
    penwarden: &Penwarden,
    register: &str,
    pens: usize,
    duration_s: u64,
    inject: &str,
    extra: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = [
        "--mqtt-url".to_string(),
        mosquitto.url(),
        "--grpc-url".into(),
        penwarden.endpoint(),
        "--register".into(),
        register.into(),
        "--api-key".into(),
        penwarden.admin_token.clone(),
        "--pens".into(),
        pens.to_string(),
        "--clinics".into(),
        "4".into(),
        "--chains".into(),
        "2".into(),
        "--duration".into(),
        duration_s.to_string(),
        "--session-secs".into(),
        "1..2".into(),
        "--inject".into(),
        inject.into(),
    ]
    .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Polls `count` until it reaches `expected` (or more); on timeout, fails with the last value.
pub(crate) async fn wait_for_count<F, Fut>(what: &str, expected: u64, count: F) -> u64
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<u64>>,
{
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        let last = count().await;
        if last >= Some(expected) {
            return last.unwrap_or_default();
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}: {last:?} of {expected}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the active violations, counted by rule, are exactly `expected`.
pub(crate) async fn wait_for_violations(
    penwarden: &Penwarden,
    expected: &BTreeMap<String, u64>,
    expect_placement: bool,
) {
    let found = wait_for("exactly the injected violations", SETTLE, || async {
        let found = violations_by_rule(penwarden, expect_placement).await;
        (&found == expected).then_some(found)
    })
    .await;
    assert_eq!(&found, expected, "exactly the injected violations, no more, no fewer");
}

/// Waits until InfluxDB holds exactly pensim's samples and sessions and the record exactly its
/// injected violations (each with clinic and chain when `expect_placement`), then stops penwarden (SIGTERM, exit 0) and checks every event is in the
/// store exactly once. Returns the verified counts for the test's log.
pub(crate) async fn verify_exactly_once(
    influxd: &Influxd,
    penwarden: &mut Penwarden,
    summary: &serde_json::Value,
    expect_placement: bool,
) -> String {
    let samples = summary["samples"].as_u64().expect("samples");
    let sessions = summary["sessions"].as_u64().expect("sessions");
    let events = summary["event_messages"].as_u64().expect("event_messages");
    let expected = injected(summary);
    let count =
        |query: &'static str| async move { influxd.query_scalar("penwarden", query).await.and_then(|v| v.as_u64()) };
    let landed =
        wait_for_count("every sample in InfluxDB", samples, || count("SELECT count(depth_mm) FROM pen_telemetry"))
            .await;
    assert_eq!(landed, samples, "each sample exactly once in InfluxDB");
    let session_points =
        wait_for_count("a point per session", sessions, || count("SELECT count(strokes) FROM pen_session")).await;
    assert_eq!(session_points, sessions, "each session exactly once in InfluxDB");
    wait_for_violations(penwarden, &expected, expect_placement).await;

    let status = penwarden.process.terminate(Duration::from_secs(30));
    assert!(status.success(), "penwarden exits 0 on SIGTERM, got {status}");
    let store = penwarden_store::Store::connect(&penwarden.store_url()).await.expect("open the store");
    let recorded = store.event_count().await.expect("count events") as u64;
    assert_eq!(recorded, events, "each event exactly once in the store");
    store.close().await;
    format!("samples={samples} sessions={sessions} events={events} violations={expected:?}")
}

/// Collects what a WatchViolations stream sends until it ends.
pub(crate) async fn collect_changes(
    mut stream: tonic::Streaming<api::ViolationChange>,
    into: std::sync::Arc<std::sync::Mutex<Vec<api::ViolationChange>>>,
) {
    use tokio_stream::StreamExt;
    while let Some(Ok(change)) = stream.next().await {
        into.lock().unwrap().push(change);
    }
}

/// Runs `penwarden apikey ARGS` on `penwarden`'s store, as an operator would: (success, stdout, stderr).
pub(crate) fn apikey_cli(penwarden: &Penwarden, args: &[&str]) -> (bool, String, String) {
    let store = penwarden.store_url();
    let output = std::process::Command::new(penwarden_tests::binary("penwarden"))
        .arg("apikey")
        .args(args)
        .env("PENWARDEN_DATABASE_URL", store)
        .output()
        .expect("run penwarden apikey");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (output.status.success(), stdout, String::from_utf8_lossy(&output.stderr).into_owned())
}

/// Every change a WatchViolations client of one instance receives, across that instance's
/// deaths: whenever the stream ends it connects again (retrying while the instance is down)
/// and resumes from the cursor of the last change it got, as a client should.
pub(crate) struct Follower {
    pub(crate) changes: std::sync::Arc<std::sync::Mutex<Vec<api::ViolationChange>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Follower {
    pub(crate) fn follow(penwarden: &Penwarden) -> Follower {
        let (endpoint, token) = (penwarden.endpoint(), penwarden.admin_token.clone());
        let changes = std::sync::Arc::new(std::sync::Mutex::new(Vec::<api::ViolationChange>::new()));
        let into = changes.clone();
        let task = tokio::spawn(async move {
            use tokio_stream::StreamExt;
            loop {
                let cursor = into.lock().unwrap().last().map(|change| change.cursor.clone()).unwrap_or_default();
                let request =
                    api::WatchViolationsRequest { from_beginning: cursor.is_empty(), cursor, ..Default::default() };
                if let Ok(channel) = penwarden_proto::connect(&endpoint, &Default::default()).await {
                    let token = penwarden_proto::BearerToken::new(&token).expect("a header-safe token");
                    let mut client =
                        penwarden_proto::api::v1::compliance_service_client::ComplianceServiceClient::with_interceptor(
                            channel, token,
                        );
                    if let Ok(response) = client.watch_violations(request).await {
                        let mut stream = response.into_inner();
                        while let Some(Ok(change)) = stream.next().await {
                            into.lock().unwrap().push(change);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Follower { changes, task }
    }

    /// Waits until the changes received leave exactly `active` (violation ids) active, and
    /// checks that no change came twice or out of order; returns how many it received.
    pub(crate) async fn saw_exactly(&self, active: &std::collections::BTreeSet<i64>) -> usize {
        let changes = wait_for("a watcher to see every violation", Duration::from_secs(20), || async {
            let changes = self.changes.lock().unwrap().clone();
            let mut last_state = BTreeMap::new();
            for change in &changes {
                let violation = change.violation.as_ref().expect("a change names its violation");
                last_state.insert(violation.id, violation.retracted_unix_ms == 0);
            }
            let seen: std::collections::BTreeSet<i64> =
                last_state.iter().filter(|(_, active)| **active).map(|(id, _)| *id).collect();
            (seen == *active).then_some(changes)
        })
        .await;
        let cursors: Vec<i64> = changes.iter().map(|change| change.cursor[1..].parse().expect("cursor c<n>")).collect();
        assert!(cursors.windows(2).all(|pair| pair[0] < pair[1]), "no change twice, none out of order: {cursors:?}");
        changes.len()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every violation visible to `token`, all pages of `page_size`, with the filter in `request`.
pub(crate) async fn all_violations(
    penwarden: &Penwarden,
    token: &str,
    request: api::ListViolationsRequest,
) -> Vec<api::Violation> {
    let mut client = penwarden.compliance_as(token).await;
    let mut found = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = api::ListViolationsRequest { page_token: page_token.clone(), ..request.clone() };
        let page = client.list_violations(request).await.expect("ListViolations").into_inner();
        found.extend(page.violations);
        if page.next_page_token.is_empty() {
            return found;
        }
        page_token = page.next_page_token;
    }
}

/// Mosquitto, InfluxDB 1.x and penwarden with its HTTP API and console on a free port.
pub(crate) struct WithHttp {
    pub(crate) mosquitto: Mosquitto,
    pub(crate) influxd: Influxd,
    pub(crate) penwarden: Penwarden,
    /// `http://127.0.0.1:PORT`
    pub(crate) base: String,
}

pub(crate) async fn start_with_http() -> WithHttp {
    let mosquitto = Mosquitto::start().await;
    let influxd = Influxd::start().await;
    let http_addr = format!("127.0.0.1:{}", penwarden_tests::free_port());
    let env = [
        ("PENWARDEN_INFLUX_URL", influxd.url()),
        ("PENWARDEN_INFLUX_API", "v1".into()),
        ("PENWARDEN_HTTP_ADDR", http_addr.clone()),
    ];
    let penwarden = Penwarden::start(&mosquitto.url(), &env).await;
    WithHttp { mosquitto, influxd, penwarden, base: format!("http://{http_addr}") }
}

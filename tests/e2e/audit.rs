//! The audit trail: every API call and every change, as a hash chain that `penwarden audit
//! verify` checks, naming exactly the entry that was edited, deleted or cut off.

use std::time::Duration;

use penwarden_proto::api::v1 as api;
use penwarden_tests::{binary, metric, store_execute, wait_for, Influxd, Mosquitto, Penwarden};
use tonic::Code;

fn audit_cli(penwarden: &Penwarden, args: &[&str]) -> (bool, String) {
    let store = penwarden.store_url();
    let output = std::process::Command::new(binary("penwarden"))
        .arg("audit")
        .args(args)
        .env("PENWARDEN_DATABASE_URL", store)
        .output()
        .expect("run penwarden audit");
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), printed)
}

async fn audit_events(penwarden: &Penwarden) -> Vec<api::AuditEvent> {
    let channel = penwarden_proto::connect(&penwarden.endpoint(), &Default::default()).await.unwrap();
    let token = penwarden_proto::BearerToken::new(&penwarden.admin_token).unwrap();
    let mut client = api::audit_service_client::AuditServiceClient::with_interceptor(channel, token);
    let mut events = Vec::new();
    let mut after_seq = 0;
    loop {
        let request = api::ListAuditEventsRequest { after_seq, page_size: 3 };
        let page = client.list_audit_events(request).await.unwrap().into_inner();
        events.extend(page.events);
        if page.next_after_seq == 0 {
            return events;
        }
        after_seq = page.next_after_seq;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_is_chained_and_verify_names_the_entry_that_was_changed() {
    let mosquitto = Mosquitto::start().await;
    let influxd = Influxd::start().await;
    let metrics_addr = format!("127.0.0.1:{}", penwarden_tests::free_port());
    let env = [
        ("PENWARDEN_INFLUX_URL", influxd.url()),
        ("PENWARDEN_INFLUX_API", "v1".into()),
        ("PENWARDEN_METRICS_ADDR", metrics_addr.clone()),
    ];
    let mut penwarden = Penwarden::start(&mosquitto.url(), &env).await;
    let mut fleet = penwarden.fleet().await;
    fleet.register_chain(api::RegisterChainRequest { chain_id: "chain-1".into(), name: "One".into() }).await.unwrap();
    let chain_token = penwarden.create_api_key("chain", "chain-1");
    let chain_key_id = chain_token.split('_').nth(1).unwrap().to_owned();
    let mut as_chain = penwarden.compliance_as(&chain_token).await;
    as_chain.list_violations(api::ListViolationsRequest::default()).await.unwrap();
    let denied = api::ListViolationsRequest { chain_id: "chain-2".into(), ..Default::default() };
    assert_eq!(as_chain.list_violations(denied).await.unwrap_err().code(), Code::PermissionDenied);
    // Well-formed, but no such key.
    let forged_token = format!("pwk_0123456789abcdef_{}", "5ec7e7".repeat(10) + "5ec7");
    let mut forged = penwarden.compliance_as(&forged_token).await;
    let refused = forged.list_violations(api::ListViolationsRequest::default()).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let channel = penwarden_proto::connect(&penwarden.endpoint(), &Default::default()).await.unwrap();
    let mut chain_audit = api::audit_service_client::AuditServiceClient::with_interceptor(
        channel,
        penwarden_proto::BearerToken::new(&chain_token).unwrap(),
    );
    let not_admin = chain_audit.list_audit_events(api::ListAuditEventsRequest::default()).await.unwrap_err();
    assert_eq!(not_admin.code(), Code::PermissionDenied);

    // The writer appends in batches: wait for the last call.
    let events = wait_for("the calls in the audit trail", Duration::from_secs(10), || async {
        let events = audit_events(&penwarden).await;
        events
            .iter()
            .any(|e| e.method.ends_with("AuditService/ListAuditEvents") && e.key_id == chain_key_id)
            .then_some(events)
    })
    .await;
    let methods: Vec<&str> = events.iter().map(|e| e.method.as_str()).collect();
    for expected in ["apikey.create", "penwarden.start", "penwarden.api.v1.FleetService/RegisterChain"] {
        assert!(methods.contains(&expected), "{expected} missing from {methods:?}");
    }
    let start = events.iter().find(|e| e.method == "penwarden.start").unwrap();
    assert!(start.request_json.contains("cartridge_max_strokes"), "thresholds at start: {}", start.request_json);
    let by_chain: Vec<&api::AuditEvent> = events.iter().filter(|e| e.key_id == chain_key_id).collect();
    let statuses: Vec<(&str, &str)> =
        by_chain.iter().map(|e| (e.method.rsplit('/').next().unwrap(), e.status.as_str())).collect();
    assert_eq!(
        statuses,
        [("ListViolations", "OK"), ("ListViolations", "PERMISSION_DENIED"), ("ListAuditEvents", "PERMISSION_DENIED")]
    );
    assert_eq!((by_chain[0].role.as_str(), by_chain[0].scope.as_str()), ("chain", "chain-1"));
    assert!(by_chain[1].request_json.contains("chain-2"), "the request's filters: {}", by_chain[1].request_json);
    let unauthenticated = events.iter().find(|e| e.status == "UNAUTHENTICATED").expect("the forged key's call");
    assert_eq!((unauthenticated.key_id.as_str(), unauthenticated.role.as_str()), ("0123456789abcdef", ""));
    // No secret anywhere: tokens appear by key id only.
    let chain_secret = chain_token.rsplit('_').next().unwrap();
    for event in &events {
        let text = format!("{event:?}");
        assert!(!text.contains(chain_secret) && !text.contains(&forged_token[21..]), "{text}");
    }
    assert!(events.windows(2).all(|pair| pair[1].previous_hash == pair[0].hash && pair[1].seq == pair[0].seq + 1));

    // The head as the metrics publish it (sequence number, first 52 bits of the hash), once the
    // writer has appended the last calls (it appends at most every 100 ms).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seq = metric(&metrics_addr, "penwarden_audit_head_seq").await.unwrap();
    let hash52 = metric(&metrics_addr, "penwarden_audit_head_hash52").await.unwrap();
    let metric_head = format!("{}:{:013x}", seq as i64, hash52 as u64);

    assert!(penwarden.process.terminate(Duration::from_secs(30)).success());
    let (ok, printed) = audit_cli(&penwarden, &["verify", "--head", &metric_head]);
    assert!(ok, "against the metric's head {metric_head}: {printed}");
    let (ok, printed) = audit_cli(&penwarden, &["verify"]);
    assert!(ok, "{printed}");
    let head = printed.split("head ").nth(1).unwrap().trim().to_owned();
    // Later than the events read above: reading the trail is audited too.
    let count: i64 = head.split(':').next().unwrap().parse().unwrap();
    assert!(count > events.len() as i64, "{printed}");
    let (ok, exported) = audit_cli(&penwarden, &["export"]);
    assert!(ok);
    assert_eq!(exported.lines().filter(|line| line.starts_with('{')).count() as i64, count);

    // Someone with the database drops the guard triggers and edits entry 4: named exactly.
    let store = penwarden.store_url();
    store_execute(
        &store,
        "DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete",
        "ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_change",
    )
    .await;
    let original = events[3].records;
    edit(&store, "UPDATE audit_log SET records = records + 1 WHERE seq = 4").await;
    let (ok, printed) = audit_cli(&penwarden, &["verify"]);
    assert!(!ok && printed.contains("broken at entry 4:"), "{printed}");
    edit(&store, &format!("UPDATE audit_log SET records = {original} WHERE seq = 4")).await;
    assert!(audit_cli(&penwarden, &["verify"]).0, "restored");
    // Entry 5 deleted: named exactly.
    edit(&store, "DELETE FROM audit_log WHERE seq = 5").await;
    let (ok, printed) = audit_cli(&penwarden, &["verify"]);
    assert!(!ok && printed.contains("broken at entry 5:") && printed.contains("missing"), "{printed}");
    // The tail cut off from entry 5 on: consistent on its own, caught against the head.
    edit(&store, "DELETE FROM audit_log WHERE seq >= 5").await;
    assert!(audit_cli(&penwarden, &["verify"]).0);
    let (ok, printed) = audit_cli(&penwarden, &["verify", "--head", &head]);
    assert!(!ok && printed.contains("broken at entry 5:") && printed.contains("cut off the end"), "{printed}");
    let (ok, printed) = audit_cli(&penwarden, &["verify", "--head", &metric_head]);
    assert!(!ok && printed.contains("cut off the end"), "{printed}");
}

/// The same statement on either backend.
async fn edit(store: &str, statement: &str) {
    store_execute(store, statement, statement).await;
}

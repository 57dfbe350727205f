//! The API over HTTP with JSON: the same answers as gRPC, field for field, the same keys and
//! scopes, and WatchViolations as server-sent events that resume from the last event's id.

use std::time::Duration;

use penwarden_proto::api::v1 as api;
use penwarden_tests::{run_pensim, unverified_session_start, Publisher};
use prost::Message;
use serde_json::Value;

use crate::common;

async fn post(base: &str, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut request = reqwest::Client::new().post(format!("{base}/api/v1/{path}")).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("the HTTP API answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON body"))
}

/// Reads server-sent events from a streaming response until `wanted` violation events came
/// or `patience` passed: their ids and data.
async fn events(response: &mut reqwest::Response, wanted: usize, patience: Duration) -> Vec<(String, Value)> {
    let mut buffer = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + patience;
    while events.len() < wanted {
        let chunk = tokio::time::timeout_at(deadline, response.chunk()).await;
        let Ok(Ok(Some(chunk))) = chunk else { break };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let field =
                |name: &str| block.lines().find_map(|line| line.strip_prefix(name).map(|v| v.trim_start().to_owned()));
            if field("event:").as_deref() == Some("violation") {
                let data = serde_json::from_str(&field("data:").expect("data")).expect("JSON data");
                events.push((field("id:").expect("an id"), data));
            }
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_api_answers_as_grpc_does_within_the_same_scopes_and_streams_violations() {
    let common::WithHttp { mosquitto, influxd: _influxd, penwarden, base } = common::start_with_http().await;
    let args = common::pensim_args_injecting(&mosquitto, &penwarden, "fleet", 8, 8, "reuse=0.3", &["--seed", "47"]);
    let summary = run_pensim(&args).await;
    common::wait_for_violations(&penwarden, &common::injected(&summary), true).await;
    let chain_key = penwarden.create_api_key("chain", "chain-1");

    // The same violations as gRPC gives the same key, field for field (protobuf JSON mapping).
    let request = api::ListViolationsRequest { page_size: 1000, ..Default::default() };
    let (status, listed) =
        post(&base, "ComplianceService/ListViolations", Some(&chain_key), serde_json::to_value(&request).unwrap())
            .await;
    assert_eq!(status, 200, "{listed}");
    let mut grpc = penwarden.compliance_as(&chain_key).await;
    let from_grpc = grpc.list_violations(request).await.expect("ListViolations").into_inner();
    assert_eq!(listed, serde_json::to_value(&from_grpc).unwrap(), "JSON and gRPC agree");
    let violations = listed["violations"].as_array().expect("violations");
    assert!(!violations.is_empty());
    assert!(violations.iter().all(|v| v["chainId"] == "chain-1"), "only chain-1's: {violations:?}");

    // A cartridge only chain-2 used is not found for chain-1's key, as over gRPC (pensim's
    // reuses may cross chains: such a cartridge chain-1 does see).
    let admin = &penwarden.admin_token;
    let (_, all) =
        post(&base, "ComplianceService/ListViolations", Some(admin), serde_json::json!({"pageSize": 1000})).await;
    let mut only_chain_2 = None;
    for violation in all["violations"].as_array().unwrap().iter().filter(|v| v["chainId"] == "chain-2") {
        let cartridge = serde_json::json!({"gtin": violation["cartridgeGtin"], "serial": violation["cartridgeSerial"]});
        let (status, body) = post(&base, "ComplianceService/GetCartridge", Some(admin), cartridge.clone()).await;
        assert_eq!(status, 200, "{body}");
        if body["sessions"].as_array().unwrap().iter().all(|session| session["chainId"] == "chain-2") {
            only_chain_2 = Some(cartridge);
            break;
        }
    }
    let cartridge = only_chain_2.expect("a cartridge only chain-2 used");
    let (status, body) = post(&base, "ComplianceService/GetCartridge", Some(&chain_key), cartridge).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("NOT_FOUND")), "{body}");

    // No key, a wrong key, a revoked key, a bad body, an unknown method.
    let (status, body) = post(&base, "FleetService/ListPens", None, serde_json::json!({})).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("UNAUTHENTICATED")), "{body}");
    let (status, _) = post(&base, "FleetService/ListPens", Some("pw_nokey_000"), serde_json::json!({})).await;
    assert_eq!(status, 401);
    let doomed = penwarden.create_api_key("chain", "chain-1");
    assert_eq!(post(&base, "FleetService/ListPens", Some(&doomed), serde_json::json!({})).await.0, 200);
    let (revoked, _, stderr) = common::apikey_cli(&penwarden, &["revoke", doomed.split('_').nth(1).unwrap()]);
    assert!(revoked, "{stderr}");
    tokio::time::sleep(Duration::from_secs(6)).await; // the key cache's 5 s
    assert_eq!(post(&base, "FleetService/ListPens", Some(&doomed), serde_json::json!({})).await.0, 401);
    let (status, body) = post(&base, "FleetService/ListPens", Some(admin), serde_json::json!({"clinicId": 7})).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("INVALID_ARGUMENT")), "{body}");
    assert_eq!(post(&base, "FleetService/Nothing", Some(admin), serde_json::json!({})).await.0, 404);

    // WatchViolations as server-sent events: chain-1's changes from the beginning, then one
    // raised while watching, then a reconnect from the last event's id gives nothing twice.
    let watch = |resume: Option<String>| {
        let mut request = reqwest::Client::new()
            .get(format!("{base}/api/v1/ComplianceService/WatchViolations?from_beginning=true"))
            .bearer_auth(&chain_key);
        if let Some(id) = resume {
            request = request.header("Last-Event-ID", id);
        }
        request.send()
    };
    let mut stream = watch(None).await.expect("the stream opens");
    assert_eq!(stream.status().as_u16(), 200);
    let seen = events(&mut stream, violations.len(), Duration::from_secs(15)).await;
    assert!(seen.len() >= violations.len(), "{} events for {} violations", seen.len(), violations.len());
    assert!(seen.iter().all(|(_, change)| change["violation"]["chainId"] == "chain-1"));
    let pen = violations[0]["penSerial"].as_str().unwrap().to_owned();
    let mut publisher = Publisher::connect(mosquitto.port).await;
    let event = unverified_session_start(&pen, "http-live", 1_000_000);
    publisher.publish(&format!("pw/v1/pens/{pen}/events"), event.encode_to_vec()).await;
    // Every change it raises (CARTRIDGE_UNVERIFIED at least), without asking again.
    let live = events(&mut stream, usize::MAX, Duration::from_secs(5)).await;
    assert!(!live.is_empty(), "the violation raised while watching arrives");
    assert!(live.iter().all(|(_, change)| change["violation"]["sessionId"] == "http-live"), "{live:?}");
    drop(stream);
    let last = live.last().unwrap().0.clone();
    let mut resumed = watch(Some(last)).await.expect("the stream opens again");
    let after = events(&mut resumed, 1, Duration::from_secs(3)).await;
    assert!(after.is_empty(), "nothing after the last event seen comes again: {after:?}");
}

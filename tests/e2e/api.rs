//! The gRPC API against a real run: scoping by role (a chain cannot read or infer another
//! chain's data), authentication, paging, live streaming with resume, lot tracing and reports.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use penwarden_proto::api::v1 as api;
use penwarden_tests::{run_pensim, wait_for, Influxd, Mosquitto, Penwarden};
use tokio_stream::StreamExt;
use tonic::Code;

use crate::common::{all_violations, collect_changes, injected, pensim_args_injecting, verify_exactly_once, SETTLE};

const INJECT: &str =
    "reuse=0.1,expired=0.1,recalled=0.1,counterfeit=0.1,overuse=0.1,depth=0.1,gap=0.1,no-disinfect=0.35,service-due=0.3";

fn code<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> Code {
    result.expect_err("the call must fail").code()
}

/// Reads changes from a watch stream into `into` until it ends or fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_paged_streamed_traced_and_reported() {
    let mosquitto = Mosquitto::start().await;
    let influxd = Influxd::start().await;
    let env = [("PENWARDEN_INFLUX_URL", influxd.url()), ("PENWARDEN_INFLUX_API", "v1".to_string())];
    let mut penwarden = Penwarden::start(&mosquitto.url(), &env).await;
    let admin = penwarden.admin_token.clone();

    // A live watcher, connected before any traffic.
    let mut compliance = penwarden.compliance().await;
    let live = Arc::new(Mutex::new(Vec::new()));
    let stream = compliance.watch_violations(api::WatchViolationsRequest::default()).await.unwrap().into_inner();
    let live_task = tokio::spawn(collect_changes(stream, live.clone()));

    let args = pensim_args_injecting(&mosquitto, &penwarden, "fleet", 10, 8, INJECT, &["--seed", "42"]);
    let summary = run_pensim(&args).await;
    let expected = injected(&summary);
    assert_eq!(expected.len(), 9, "every rule injected at least once: {summary}");
    let sessions = summary["sessions"].as_u64().unwrap();

    // Everything landed; the admin sees exactly the injected violations.
    let verified = verify_exactly_once(&influxd, &mut penwarden, &summary, true).await;
    eprintln!("api scenario: {verified}");
    penwarden.restart().await;
    let mut compliance = penwarden.compliance().await;
    let all =
        all_violations(&penwarden, &admin, api::ListViolationsRequest { page_size: 3, ..Default::default() }).await;
    let ids: BTreeSet<i64> = all.iter().map(|v| v.id).collect();
    assert_eq!(ids.len(), all.len(), "pages do not overlap");
    assert_eq!(all.len() as u64, expected.values().sum::<u64>());
    assert!(all.windows(2).all(|w| w[0].id > w[1].id), "newest first");

    // The live watcher saw every violation as it was raised, retroactive recalls included.
    live_task.abort();
    let streamed: BTreeSet<i64> = live.lock().unwrap().iter().map(|c| c.violation.as_ref().unwrap().id).collect();
    assert_eq!(streamed, ids, "the live stream carried every violation");

    // Resume: read a few changes, hang up, resume from the last cursor: nothing missed or doubled.
    let request = api::WatchViolationsRequest { from_beginning: true, ..Default::default() };
    let mut first = compliance.watch_violations(request).await.unwrap().into_inner();
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(first.next().await.unwrap().unwrap());
    }
    drop(first);
    let cursor = seen.last().unwrap().cursor.clone();
    let mut resumed = compliance
        .watch_violations(api::WatchViolationsRequest { cursor, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    while seen.len() < all.len() {
        let next = tokio::time::timeout(Duration::from_secs(10), resumed.next()).await.expect("more changes");
        seen.push(next.unwrap().unwrap());
    }
    let replayed: Vec<i64> = seen.iter().map(|c| c.violation.as_ref().unwrap().id).collect();
    assert_eq!(replayed.iter().copied().collect::<BTreeSet<_>>(), ids);
    assert_eq!(replayed.len(), ids.len(), "no change twice");
    let filtered =
        api::WatchViolationsRequest { rule: "DEPTH_LIMIT".into(), from_beginning: true, ..Default::default() };
    let mut depth_only = compliance.watch_violations(filtered).await.unwrap().into_inner();
    let first_depth = depth_only.next().await.unwrap().unwrap();
    assert_eq!(first_depth.violation.unwrap().rule, "DEPTH_LIMIT");

    // Authentication.
    let mut anonymous =
        api::compliance_service_client::ComplianceServiceClient::connect(penwarden.endpoint()).await.unwrap();
    assert_eq!(code(anonymous.list_violations(api::ListViolationsRequest::default()).await), Code::Unauthenticated);
    let mut forged = penwarden.compliance_as("pwk_0123456789abcdef_00").await;
    assert_eq!(code(forged.list_violations(api::ListViolationsRequest::default()).await), Code::Unauthenticated);
    let revoked = penwarden.create_api_key("chain", "chain-1");
    let key_id = revoked.split('_').nth(1).unwrap().to_owned();
    let status = std::process::Command::new(penwarden_tests::binary("penwarden"))
        .args(["apikey", "revoke", &key_id])
        .env("PENWARDEN_DATABASE_URL", penwarden.store_url())
        .status()
        .unwrap();
    assert!(status.success());
    let mut revoked_client = penwarden.compliance_as(&revoked).await;
    assert_eq!(
        code(revoked_client.list_violations(api::ListViolationsRequest::default()).await),
        Code::Unauthenticated
    );

    // A chain sees its own clinics' violations, all of them, and nothing of the other chain.
    let chain1 = penwarden.create_api_key("chain", "chain-1");
    let mine = all_violations(&penwarden, &chain1, api::ListViolationsRequest::default()).await;
    let chain1_by_admin: Vec<_> = all.iter().filter(|v| v.chain_id == "chain-1").collect();
    assert!(!mine.is_empty() && mine.len() < all.len());
    assert_eq!(mine.len(), chain1_by_admin.len());
    assert!(mine.iter().all(|v| v.chain_id == "chain-1"));
    let mut as_chain1 = penwarden.compliance_as(&chain1).await;
    for request in [
        api::ListViolationsRequest { chain_id: "chain-2".into(), ..Default::default() },
        api::ListViolationsRequest { clinic_id: "clinic-2".into(), ..Default::default() },
        api::ListViolationsRequest { clinic_id: "no-such-clinic".into(), ..Default::default() },
    ] {
        assert_eq!(code(as_chain1.list_violations(request).await), Code::PermissionDenied);
    }
    let other_chains_pen = all.iter().find(|v| v.chain_id == "chain-2").unwrap().pen_serial.clone();
    let narrowed = api::ListViolationsRequest { pen_serial: other_chains_pen.clone(), ..Default::default() };
    assert!(all_violations(&penwarden, &chain1, narrowed).await.is_empty(), "a filter cannot widen the scope");
    let watch_other = api::WatchViolationsRequest { chain_id: "chain-2".into(), ..Default::default() };
    assert_eq!(code(as_chain1.watch_violations(watch_other).await), Code::PermissionDenied);

    // Another chain's cartridge, pen and lot sessions look exactly like ones that do not exist.
    let others_cartridge = all.iter().find(|v| v.chain_id == "chain-2").unwrap();
    let lookup = api::GetCartridgeRequest {
        gtin: others_cartridge.cartridge_gtin.clone(),
        serial: others_cartridge.cartridge_serial.clone(),
        ..Default::default()
    };
    assert!(compliance.get_cartridge(lookup.clone()).await.is_ok());
    assert_eq!(code(as_chain1.get_cartridge(lookup).await), Code::NotFound);
    let sterility = api::GetPenSterilityRequest { pen_serial: other_chains_pen };
    assert!(compliance.get_pen_sterility(sterility.clone()).await.is_ok());
    assert_eq!(code(as_chain1.get_pen_sterility(sterility).await), Code::NotFound);
    let mut fleet_as_chain1 = penwarden.fleet_as(&chain1).await;
    let pens = fleet_as_chain1.list_pens(api::ListPensRequest::default()).await.unwrap().into_inner().pens;
    assert!(!pens.is_empty() && pens.iter().all(|p| p.chain_id == "chain-1"), "{pens:?}");
    assert!(pens.iter().all(|p| p.last_seen_unix_ms > 0 && !p.firmware.is_empty() && p.motor_hours > 0.0));
    let chain_request = api::RegisterChainRequest { chain_id: "chain-9".into(), name: "x".into() };
    assert_eq!(code(fleet_as_chain1.register_chain(chain_request).await), Code::PermissionDenied);
    let mut quarantine_as_chain1 = penwarden.quarantine_as(&chain1).await;
    assert_eq!(
        code(quarantine_as_chain1.list_quarantine(api::ListQuarantineRequest::default()).await),
        Code::PermissionDenied
    );

    // Trace a lot: every clinic that used it; a chain sees only its own.
    let trace =
        api::TraceLotRequest { gtin: "09506000134352".into(), lot: "LOT2".into(), page_size: 2, ..Default::default() };
    let traced = compliance.trace_lot(trace.clone()).await.unwrap().into_inner();
    assert!(traced.registered && traced.total_sessions > 0);
    let per_clinic: u64 = traced.clinics.iter().map(|c| c.sessions).sum();
    assert_eq!(per_clinic, traced.total_sessions);
    let mut pages = traced.sessions.clone();
    let mut token = traced.next_page_token.clone();
    while !token.is_empty() {
        let page = compliance.trace_lot(api::TraceLotRequest { page_token: token, ..trace.clone() }).await.unwrap();
        pages.extend(page.get_ref().sessions.clone());
        token = page.into_inner().next_page_token;
    }
    assert_eq!(pages.len() as u64, traced.total_sessions);
    assert!(pages.iter().all(|s| s.cartridge_lot == "LOT2"));
    let chain1_trace = as_chain1.trace_lot(trace.clone()).await.unwrap().into_inner();
    assert!(chain1_trace.clinics.iter().all(|c| c.chain_id == "chain-1"));
    assert!(chain1_trace.total_sessions < traced.total_sessions);
    let recalled =
        compliance.trace_lot(api::TraceLotRequest { lot: "LOTR".into(), ..trace.clone() }).await.unwrap().into_inner();
    assert!(recalled.recalled_unix_ms > 0);
    assert_eq!(recalled.total_sessions, expected["CARTRIDGE_RECALLED"]);

    // Reports: the whole fleet adds up to the run; the chains' reports add up to the fleet's.
    let report =
        compliance.get_compliance_report(api::GetComplianceReportRequest::default()).await.unwrap().into_inner();
    assert_eq!(report.sessions, sessions);
    assert_eq!(report.compliant_sessions + report.non_compliant_sessions + report.incomplete_sessions, sessions);
    let by_rule: BTreeMap<String, u64> =
        report.rules.iter().filter(|r| r.sessions > 0).map(|r| (r.rule.clone(), r.sessions)).collect();
    assert_eq!(by_rule, expected);
    let gap = report.rules.iter().find(|r| r.rule == "TELEMETRY_GAP").unwrap();
    assert!((gap.rate - gap.sessions as f64 / sessions as f64).abs() < 1e-9);
    let mut chain_sessions = 0;
    for chain in ["chain-1", "chain-2"] {
        let request = api::GetComplianceReportRequest { chain_id: chain.into(), ..Default::default() };
        chain_sessions += compliance.get_compliance_report(request).await.unwrap().get_ref().sessions;
    }
    assert_eq!(chain_sessions, sessions);
    let other_report = api::GetComplianceReportRequest { chain_id: "chain-2".into(), ..Default::default() };
    assert_eq!(code(as_chain1.get_compliance_report(other_report).await), Code::PermissionDenied);
    let own_report = as_chain1.get_compliance_report(api::GetComplianceReportRequest::default()).await.unwrap();
    assert_eq!(
        own_report.get_ref().non_compliant_sessions
            + own_report.get_ref().compliant_sessions
            + own_report.get_ref().incomplete_sessions,
        own_report.get_ref().sessions
    );
    assert!(own_report.get_ref().sessions < sessions);

    // A clinic sees itself; a manufacturer its own cartridges and pens, another one nothing.
    let clinic1 = penwarden.create_api_key("clinic", "clinic-1");
    let clinic_view = all_violations(&penwarden, &clinic1, api::ListViolationsRequest::default()).await;
    assert_eq!(clinic_view.len(), all.iter().filter(|v| v.clinic_id == "clinic-1").count());
    let maker = penwarden.create_api_key("manufacturer", "demo-manufacturer");
    assert_eq!(all_violations(&penwarden, &maker, api::ListViolationsRequest::default()).await.len(), all.len());
    let stranger = penwarden.create_api_key("manufacturer", "someone-else");
    assert!(all_violations(&penwarden, &stranger, api::ListViolationsRequest::default()).await.is_empty());
    let mut fleet_as_stranger = penwarden.fleet_as(&stranger).await;
    let recall = api::RecallLotRequest { gtin: "09506000134352".into(), lot: "LOT1".into(), reason: "x".into() };
    assert_eq!(code(fleet_as_stranger.recall_lot(recall).await), Code::NotFound);

    // Settled: nothing else changes while the checks ran.
    let settled = wait_for("a stable record", SETTLE, || async {
        let again = all_violations(&penwarden, &admin, api::ListViolationsRequest::default()).await;
        (again.len() == all.len()).then_some(again.len())
    })
    .await;
    assert_eq!(settled, all.len());
}

//! The compliance console in a real browser (Debian's Chromium, headless, over WebDriver):
//! a chain's key signs in and sees exactly its chain's violations, a violation raised meanwhile
//! appears without a reload, a cartridge lookup shows the cartridge's sessions, and a key
//! revoked while the page is open sends it back to the sign-in form, forgetting the key. Also:
//! every endpoint of the HTTP API refuses a missing, forged or revoked key.
//!
//! The screenshots of docs/console/ come from this test: run it with
//! `PENWARDEN_UPDATE_SCREENSHOTS=1` to refresh them.

use std::collections::BTreeSet;
use std::time::Duration;

use fantoccini::{Client, Locator};
use penwarden_proto::api::v1 as api;
use penwarden_tests::{run_pensim, unverified_session_start, wait_for, Browser, Penwarden, Publisher};
use prost::Message;
use serde_json::Value;

use crate::common;

/// Runs `script` in the page until it returns something other than null.
async fn wait_for_page(client: &Client, what: &str, script: &str) -> Value {
    wait_for(what, Duration::from_secs(30), || async {
        let value = client.execute(script, vec![]).await.unwrap_or_else(|e| panic!("{what}: {e}"));
        (!value.is_null()).then_some(value)
    })
    .await
}

async fn click(client: &Client, selector: &str) {
    client
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(selector))
        .await
        .unwrap_or_else(|e| panic!("{selector}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {selector}: {e}"));
}

async fn type_into(client: &Client, selector: &str, text: &str) {
    let field = client.find(Locator::Css(selector)).await.unwrap_or_else(|e| panic!("{selector}: {e}"));
    field.clear().await.expect("clear");
    field.send_keys(text).await.expect("type");
}

/// The rows of a table as the page shows them: one attribute of each.
async fn row_attributes(client: &Client, table: &str, attribute: &str) -> Vec<String> {
    let script =
        format!("return [...document.querySelectorAll('{table} tbody tr')].map(tr => tr.getAttribute('{attribute}'));");
    let value = client.execute(&script, vec![]).await.expect("rows");
    serde_json::from_value(value).expect("strings")
}

/// Keeps a screenshot of the page: under docs/console/ when asked to refresh them, otherwise
/// only checked to be a picture.
async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{name}: a picture of the page");
    if std::env::var_os("PENWARDEN_UPDATE_SCREENSHOTS").is_some() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/console");
        std::fs::create_dir_all(&dir).expect("docs/console");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write the screenshot");
    }
}

async fn all_violations(penwarden: &Penwarden, token: &str) -> Vec<api::Violation> {
    common::all_violations(penwarden, token, api::ListViolationsRequest { page_size: 1000, ..Default::default() }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_a_chain_its_own_violations_live_and_forgets_a_refused_key() {
    let common::WithHttp { mosquitto, influxd: _influxd, penwarden, base } = common::start_with_http().await;
    let inject = "reuse=0.25,no-disinfect=0.2,depth=0.1,service-due=0.5";
    let args = common::pensim_args_injecting(&mosquitto, &penwarden, "fleet", 8, 10, inject, &["--seed", "53"]);
    let summary = run_pensim(&args).await;
    common::wait_for_violations(&penwarden, &common::injected(&summary), true).await;
    let everything = all_violations(&penwarden, &penwarden.admin_token).await;
    let chain_1: BTreeSet<String> =
        everything.iter().filter(|v| v.chain_id == "chain-1").map(|v| v.id.to_string()).collect();
    assert!(!chain_1.is_empty(), "chain-1 has violations to show");
    assert!(everything.iter().any(|v| v.chain_id == "chain-2"), "and chain-2 has some the page must not show");
    let chain_key = penwarden.create_api_key("chain", "chain-1");

    let browser = Browser::start().await;
    let page = &browser.client;
    page.goto(&format!("{base}/")).await.expect("the console opens");

    // A forged key is refused, and the page says so.
    type_into(page, "#api-key", "pwk_0123456789abcdef_forged").await;
    click(page, "#sign-in-form button[type=submit]").await;
    let refusal =
        wait_for_page(page, "the refusal", "return document.querySelector('#sign-in-error').textContent || null;")
            .await;
    assert!(refusal.as_str().unwrap().contains("refused"), "{refusal}");
    screenshot(page, "sign-in").await;

    // The chain's key: the overview is the chain's own report.
    type_into(page, "#api-key", &chain_key).await;
    click(page, "#sign-in-form button[type=submit]").await;
    let places = wait_for_page(
        page,
        "the overview by chain and clinic",
        "const rows = document.querySelectorAll('#overview-places tbody tr'); \
         return rows.length ? [...rows].map(tr => tr.dataset.chain) : null;",
    )
    .await;
    assert!(places.as_array().unwrap().iter().all(|chain| chain == "chain-1"), "only chain-1: {places}");
    let report = penwarden
        .compliance_as(&chain_key)
        .await
        .get_compliance_report(api::GetComplianceReportRequest::default())
        .await
        .expect("the chain's report")
        .into_inner();
    let sessions_card = page
        .execute("return document.querySelector('#overview-totals .card .value').textContent;", vec![])
        .await
        .expect("the sessions card");
    assert_eq!(sessions_card, Value::String(report.sessions.to_string()), "the overview shows the chain's sessions");
    screenshot(page, "overview").await;
    // Nothing but the session: no key in local storage or a cookie.
    let stored = page
        .execute(
            "return [localStorage.length, document.cookie, sessionStorage.getItem('penwarden.apiKey') !== null];",
            vec![],
        )
        .await
        .expect("storage");
    assert_eq!(stored, serde_json::json!([0, "", true]));

    // The violation list: exactly chain-1's, nothing of chain-2.
    click(page, "#tabs a[data-view=violations]").await;
    wait_for_page(
        page,
        "the violation list",
        "return document.querySelector('#violations-table').dataset.loaded || null;",
    )
    .await;
    wait_for_page(page, "the live stream", "return document.querySelector('#live-state.live-on') ? true : null;").await;
    let shown: BTreeSet<String> =
        row_attributes(page, "#violations-table", "data-violation-id").await.into_iter().collect();
    assert_eq!(shown, chain_1, "the page lists exactly chain-1's violations");
    let chains: BTreeSet<String> = row_attributes(page, "#violations-table", "data-chain").await.into_iter().collect();
    assert_eq!(chains, BTreeSet::from(["chain-1".to_owned()]));
    screenshot(page, "violations").await;

    // A violation raised now appears without a reload: a session on a chain-1 pen with a
    // cartridge of a lot no manufacturer registered (CARTRIDGE_UNVERIFIED).
    page.execute("window.stillThisPage = true;", vec![]).await.expect("mark the page");
    let pen = everything.iter().find(|v| v.chain_id == "chain-1").expect("a chain-1 violation").pen_serial.clone();
    let event = unverified_session_start(&pen, "console-live", 1_000_000);
    let mut publisher = Publisher::connect(mosquitto.port).await;
    publisher.publish(&format!("pw/v1/pens/{pen}/events"), event.encode_to_vec()).await;
    // The page shows the session's violations as the record has them (the cartridge's, and
    // any other the session broke), without being asked.
    let raised: BTreeSet<String> = wait_for("the live violations in the record", common::SETTLE, || async {
        let now = all_violations(&penwarden, &penwarden.admin_token).await;
        let of_session: BTreeSet<String> = now
            .iter()
            .filter(|v| v.session_id == "console-live")
            .map(|v| format!("{} {} {}", v.id, v.rule, v.chain_id))
            .collect();
        of_session.iter().any(|v| v.contains("CARTRIDGE_UNVERIFIED")).then_some(of_session)
    })
    .await;
    let on_page = wait_for("the live violations on the page", Duration::from_secs(30), || async {
        let rows: Vec<String> = serde_json::from_value(
            page.execute(
                "return [...document.querySelectorAll('#violations-table tbody tr')] \
                   .filter(tr => tr.textContent.includes('console-live')) \
                   .map(tr => [tr.dataset.violationId, tr.dataset.rule, tr.dataset.chain].join(' '));",
                vec![],
            )
            .await
            .expect("rows"),
        )
        .expect("strings");
        let rows: BTreeSet<String> = rows.into_iter().collect();
        (rows == raised).then_some(rows)
    })
    .await;
    assert!(on_page.iter().all(|v| v.ends_with(" chain-1") && !chain_1.contains(v.split(' ').next().unwrap())));
    let reloaded = page.execute("return window.stillThisPage === true;", vec![]).await.expect("the mark");
    assert_eq!(reloaded, Value::Bool(true), "it came without a reload");

    // A cartridge lookup from the list shows the cartridge's sessions, as the API gives them.
    // A cartridge chain-1 itself used twice, where there is one (a reuse may cross chains).
    let mut compliance = penwarden.compliance_as(&chain_key).await;
    let mut reused = None;
    for violation in everything.iter().filter(|v| v.chain_id == "chain-1" && v.rule == "CARTRIDGE_REUSE") {
        let request = api::GetCartridgeRequest {
            gtin: violation.cartridge_gtin.clone(),
            serial: violation.cartridge_serial.clone(),
            ..Default::default()
        };
        let cartridge = compliance.get_cartridge(request).await.expect("GetCartridge").into_inner();
        let twice = cartridge.sessions.len() >= 2;
        if reused.is_none() || twice {
            reused = Some((violation.id, cartridge));
        }
        if twice {
            break;
        }
    }
    let (violation_id, cartridge) = reused.expect("a reused cartridge in chain-1");
    click(page, &format!("#violations-table tr[data-violation-id='{violation_id}'] td:nth-child(8) a")).await;
    wait_for_page(
        page,
        "the cartridge's sessions",
        "return document.querySelector('#cartridge-sessions tbody tr') ? true : null;",
    )
    .await;
    let sessions: Vec<String> = row_attributes(page, "#cartridge-sessions", "data-session-id").await;
    let expected: Vec<String> = cartridge.sessions.iter().map(|s| s.session_id.clone()).collect();
    assert_eq!(sessions, expected, "the page shows the cartridge's sessions");
    screenshot(page, "cartridge").await;

    // Its lot, traced: the clinics of chain-1 that used it.
    click(page, "#cartridge-facts dd a").await;
    wait_for_page(page, "the lot's clinics", "return document.querySelector('#lot-clinics tbody tr') ? true : null;")
        .await;
    let trace = penwarden
        .compliance_as(&chain_key)
        .await
        .trace_lot(api::TraceLotRequest {
            gtin: cartridge.gtin.clone(),
            lot: cartridge.lot.clone(),
            ..Default::default()
        })
        .await
        .expect("TraceLot")
        .into_inner();
    let clinics: Vec<String> = row_attributes(page, "#lot-clinics", "data-clinic").await;
    assert_eq!(clinics, trace.clinics.iter().map(|c| c.clinic_id.clone()).collect::<Vec<_>>());

    // The pens, with their service state.
    click(page, "#tabs a[data-view=pens]").await;
    wait_for_page(page, "the pens", "return document.querySelector('#pens-table tbody tr') ? true : null;").await;
    let pens = penwarden
        .fleet_as(&chain_key)
        .await
        .list_pens(api::ListPensRequest::default())
        .await
        .expect("ListPens")
        .into_inner()
        .pens;
    let mut expected: Vec<String> = pens.iter().map(|p| p.pen_serial.clone()).collect();
    expected.sort();
    assert_eq!(row_attributes(page, "#pens-table", "data-pen").await, expected);
    let due: Vec<String> = pens.iter().filter(|p| !p.service_due.is_empty()).map(|p| p.pen_serial.clone()).collect();
    let shown_due: Vec<String> = serde_json::from_value(
        page.execute(
            "return [...document.querySelectorAll('#pens-table tbody tr.service-due')].map(tr => tr.dataset.pen);",
            vec![],
        )
        .await
        .expect("pens due"),
    )
    .unwrap();
    let mut due_sorted = due.clone();
    due_sorted.sort();
    assert!(!due.is_empty(), "pensim made some of chain-1's pens due for service");
    assert_eq!(shown_due, due_sorted, "the pens due for service are marked");
    // Ready to treat, asked for one pen, says what GetPenSterility says.
    let sterility = penwarden
        .compliance_as(&chain_key)
        .await
        .get_pen_sterility(api::GetPenSterilityRequest { pen_serial: expected[0].clone() })
        .await
        .expect("GetPenSterility")
        .into_inner();
    click(page, &format!("#pens-table tr[data-pen='{}'] td:last-child a", expected[0])).await;
    let answer = wait_for_page(
        page,
        "the pen's readiness",
        &format!(
            "const cell = document.querySelector(\"#pens-table tr[data-pen='{}'] td:last-child span\"); \
             return cell.className ? cell.textContent : null;",
            expected[0]
        ),
    )
    .await;
    let answer = answer.as_str().unwrap();
    if sterility.ready_to_treat {
        assert_eq!(answer, "ready");
    } else {
        assert!(answer.starts_with("not ready: ") && answer.contains(&sterility.reasons[0]), "{answer}");
    }
    screenshot(page, "pens").await;

    // The key is revoked while the page is open: its next call is refused, and the page goes
    // back to signing in, the key forgotten.
    let (revoked, _, stderr) = common::apikey_cli(&penwarden, &["revoke", chain_key.split('_').nth(1).unwrap()]);
    assert!(revoked, "{stderr}");
    tokio::time::sleep(Duration::from_secs(6)).await; // the key cache's 5 s
    click(page, "#tabs a[data-view=violations]").await;
    click(page, "#violation-filters button[type=submit]").await;
    let message = wait_for_page(
        page,
        "the page refusing the revoked key",
        "return document.querySelector('#sign-in').hidden ? null : document.querySelector('#sign-in-error').textContent;",
    )
    .await;
    assert!(message.as_str().unwrap().contains("refused"), "{message}");
    let forgotten = page
        .execute(
            "return [sessionStorage.getItem('penwarden.apiKey'), \
                     document.querySelectorAll('tbody tr, dl.facts dd, #overview-totals .card').length];",
            vec![],
        )
        .await
        .expect("storage");
    assert_eq!(forgotten, serde_json::json!([null, 0]), "no key and no data left in the page");
    browser.close().await;
}

/// Every route of the HTTP API, with a request body that would be valid.
const METHODS: [&str; 16] = [
    "ComplianceService/GetCartridge",
    "ComplianceService/GetPenSterility",
    "ComplianceService/ListViolations",
    "ComplianceService/TraceLot",
    "ComplianceService/GetComplianceReport",
    "FleetService/RegisterChain",
    "FleetService/RegisterClinic",
    "FleetService/RegisterPen",
    "FleetService/ListPens",
    "FleetService/RegisterLot",
    "FleetService/AssignGtin",
    "FleetService/RegisterOperator",
    "FleetService/RecallLot",
    "QuarantineService/ListQuarantine",
    "QuarantineService/ReplayQuarantine",
    "AuditService/ListAuditEvents",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_http_endpoint_refuses_a_missing_forged_or_revoked_key() {
    let common::WithHttp { mosquitto: _mosquitto, influxd: _influxd, penwarden, base } =
        common::start_with_http().await;
    let admin = penwarden.create_api_key("admin", "");
    let http = reqwest::Client::new();
    let post = |method: &str, token: Option<&str>| {
        let mut request = http.post(format!("{base}/api/v1/{method}")).body("{}");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let watch = |token: Option<&str>| {
        let mut request = http.get(format!("{base}/api/v1/ComplianceService/WatchViolations"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    // The admin key passes authentication everywhere (a 401 below is the key, not the route).
    for method in METHODS {
        let status = post(method, Some(&admin)).await.expect("an answer").status().as_u16();
        assert_ne!(status, 401, "{method} takes a valid key");
        assert_ne!(status, 404, "{method} is a route");
    }
    assert_eq!(watch(Some(&admin)).await.expect("an answer").status().as_u16(), 200);

    let (revoked, _, stderr) = common::apikey_cli(&penwarden, &["revoke", admin.split('_').nth(1).unwrap()]);
    assert!(revoked, "{stderr}");
    tokio::time::sleep(Duration::from_secs(6)).await; // the key cache's 5 s
    let forged = "pwk_0123456789abcdef_0000000000000000000000000000000000000000000";
    for (token, what) in [(None, "no key"), (Some(forged), "a forged key"), (Some(admin.as_str()), "a revoked key")] {
        for method in METHODS {
            let response = post(method, token).await.expect("an answer");
            assert_eq!(response.status().as_u16(), 401, "{method} with {what}");
            let body: Value = response.json().await.expect("a JSON error");
            assert_eq!(body["code"], "UNAUTHENTICATED", "{method} with {what}");
            if let Some(token) = token {
                let secret = token.rsplit('_').next().unwrap();
                assert!(!body.to_string().contains(secret), "the answer never repeats the key");
            }
        }
        assert_eq!(watch(token).await.expect("an answer").status().as_u16(), 401, "the event stream with {what}");
    }
    // The console itself holds no data: its page and assets need no key.
    for asset in ["/console/", "/console/console.js", "/console/console.css"] {
        let response = http.get(format!("{base}{asset}")).send().await.expect("an answer");
        assert_eq!(response.status().as_u16(), 200, "{asset}");
        let policy = response.headers().get("content-security-policy").expect("a content security policy");
        assert!(policy.to_str().unwrap().contains("default-src 'none'"), "{asset}");
    }
}

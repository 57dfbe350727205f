//! The Grafana dashboards (deploy/grafana/dashboards), without a Grafana server: after real
//! traffic into a real InfluxDB, every InfluxQL panel query runs with its template variables,
//! `$timeFilter` and `$__interval` substituted as Grafana substitutes them, must parse and
//! return data, and the figures the traffic implies come out; every Prometheus panel names
//! metrics penwarden's /metrics serves.

use std::collections::BTreeMap;
use std::time::Duration;

use penwarden_tests::{free_port, metric, run_pensim, Influxd, Mosquitto, Penwarden, Publisher};
use serde_json::Value;

use crate::common;

const DATABASE: &str = "penwarden";

/// Every dashboard, by file name.
fn dashboards() -> BTreeMap<String, Value> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/dashboards");
    let mut boards = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("deploy/grafana/dashboards") {
        let path = entry.expect("a dashboard file").path();
        if path.extension().is_some_and(|ext| ext == "json") {
            let text = std::fs::read_to_string(&path).expect("read a dashboard");
            let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            boards.insert(path.file_name().unwrap().to_string_lossy().into_owned(), json);
        }
    }
    assert!(boards.len() >= 4, "the four dashboards: {:?}", boards.keys());
    boards
}

fn is_influx(datasource: &Value) -> bool {
    datasource["type"] == "influxdb"
}

/// A time range as Grafana gives it to InfluxQL, in epoch milliseconds.
#[derive(Clone, Copy)]
struct Range {
    from_ms: i64,
    to_ms: i64,
}

/// What Grafana does to an InfluxQL query: `$timeFilter`, `$__interval`, and each variable,
/// regex-escaped where it stands in a regex (`/^$var$/`; "All" is `.*`), as is elsewhere.
fn substitute(query: &str, range: Range, variables: &BTreeMap<String, String>) -> String {
    let mut query = query
        .replace("$timeFilter", &format!("time >= {}ms and time <= {}ms", range.from_ms, range.to_ms))
        .replace("$__interval", "1m");
    // Longest names first, so $pen does not eat the start of a $pens.
    let mut names: Vec<&String> = variables.keys().collect();
    names.sort_by_key(|name| std::cmp::Reverse(name.len()));
    for name in names {
        let value = &variables[name];
        let in_regex = if value == ".*" { value.clone() } else { regex_escape(value) };
        query = query.replace(&format!("/^${name}$/"), &format!("/^{in_regex}$/")).replace(&format!("${name}"), value);
    }
    let left = query
        .match_indices('$')
        .any(|(at, _)| query[at + 1..].starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'));
    assert!(!left, "a variable left in {query}");
    query
}

fn regex_escape(value: &str) -> String {
    value.chars().flat_map(|c| if r"\.+*?()|[]{}^$/".contains(c) { vec!['\\', c] } else { vec![c] }).collect()
}

/// Runs an InfluxQL query; its series, or the error InfluxDB gave.
async fn influxql(influxd: &Influxd, query: &str) -> Result<Vec<Value>, String> {
    let response = reqwest::Client::new()
        .post(format!("{}/query", influxd.url()))
        .form(&[("db", DATABASE), ("q", query), ("epoch", "ms")])
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let body: Value = response.json().await.map_err(|e| e.to_string())?;
    if let Some(error) = body["error"].as_str().or(body["results"][0]["error"].as_str()) {
        return Err(error.to_owned());
    }
    Ok(body["results"][0]["series"].as_array().cloned().unwrap_or_default())
}

/// Whether any series holds a value that is not null (beyond its time column).
fn has_data(series: &[Value]) -> bool {
    series.iter().any(|s| {
        s["values"].as_array().is_some_and(|rows| {
            rows.iter().any(|row| row.as_array().is_some_and(|cells| cells.iter().skip(1).any(|cell| !cell.is_null())))
        })
    })
}

/// The panels of a dashboard evaluated with one choice of variables: (panel title, refId) to
/// series, or the failures.
type Evaluated = BTreeMap<(String, String), Vec<Value>>;

async fn evaluate_panels(
    influxd: &Influxd,
    board: &Value,
    variables: &BTreeMap<String, String>,
    now_ms: i64,
) -> Result<Evaluated, Vec<String>> {
    let mut results = Evaluated::new();
    let mut failures = Vec::new();
    for panel in board["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().expect("every panel has a title").to_owned();
        // A panel's own time range ("today": from midnight, as Grafana's now/d in UTC).
        let range = match panel["timeFrom"].as_str() {
            Some("now/d") => Range { from_ms: now_ms - now_ms % 86_400_000, to_ms: now_ms + 3_600_000 },
            Some(other) => panic!("panel {title}: time range {other} not handled by this test"),
            None => Range { from_ms: now_ms - 30 * 86_400_000, to_ms: now_ms + 3_600_000 },
        };
        for target in panel["targets"].as_array().expect("targets") {
            if !is_influx(&target["datasource"]) {
                continue;
            }
            let refid = target["refId"].as_str().expect("refId").to_owned();
            let query = substitute(target["query"].as_str().expect("a raw InfluxQL query"), range, variables);
            match influxql(influxd, &query).await {
                Ok(series) if has_data(&series) => {
                    results.insert((title.clone(), refid), series);
                }
                Ok(_) => failures.push(format!("{title} ({refid}): no data from {query}")),
                Err(error) => failures.push(format!("{title} ({refid}): {error} in {query}")),
            }
        }
    }
    if failures.is_empty() {
        Ok(results)
    } else {
        Err(failures)
    }
}

/// Resolves the dashboard's variables in order (each variable's query sees the ones before
/// it) and evaluates its panels: "All" for a variable that offers it, otherwise each value in
/// turn until every panel returns data. Returns the panels' results, or every failure of the
/// first choice.
async fn evaluate(influxd: &Influxd, board: &Value, now_ms: i64) -> Result<Evaluated, Vec<String>> {
    let variables: Vec<Value> = board["templating"]["list"].as_array().cloned().unwrap_or_default();
    let mut first_failures = None;
    let mut stack: Vec<BTreeMap<String, String>> = vec![BTreeMap::new()];
    while let Some(chosen) = stack.pop() {
        let Some(variable) = variables.get(chosen.len()) else {
            match evaluate_panels(influxd, board, &chosen, now_ms).await {
                Ok(results) => return Ok(results),
                Err(failures) => {
                    first_failures.get_or_insert(failures);
                    continue;
                }
            }
        };
        let name = variable["name"].as_str().expect("a variable's name").to_owned();
        let candidates: Vec<String> = if variable["includeAll"] == true || !is_influx(&variable["datasource"]) {
            vec![".*".to_owned()]
        } else {
            let range = Range { from_ms: now_ms - 30 * 86_400_000, to_ms: now_ms + 3_600_000 };
            let query = substitute(variable["query"].as_str().expect("a variable query"), range, &chosen);
            let series = influxql(influxd, &query).await.unwrap_or_else(|e| panic!("variable {name}: {e} in {query}"));
            series
                .iter()
                .flat_map(|s| s["values"].as_array().cloned().unwrap_or_default())
                .filter_map(|row| row.as_array()?.last()?.as_str().map(str::to_owned))
                .collect()
        };
        // Last pushed is tried first: push in reverse to try the values in their order.
        for candidate in candidates.into_iter().rev() {
            let mut next = chosen.clone();
            next.insert(name.clone(), candidate);
            stack.push(next);
        }
    }
    Err(first_failures.unwrap_or_else(|| vec!["a variable offered no value".to_owned()]))
}

/// Sums the last column of every row, per value of `tag` (None: all together).
fn sum_by(series: &[Value], tag: Option<&str>, column: usize) -> BTreeMap<String, f64> {
    let mut sums = BTreeMap::new();
    for s in series {
        let key = tag.map_or(String::new(), |tag| s["tags"][tag].as_str().unwrap_or("").to_owned());
        for row in s["values"].as_array().into_iter().flatten() {
            *sums.entry(key.clone()).or_insert(0.0) += row[column].as_f64().unwrap_or(0.0);
        }
    }
    sums
}

fn single(results: &Evaluated, title: &str) -> f64 {
    let series = results.get(&(title.to_owned(), "A".to_owned())).unwrap_or_else(|| panic!("panel {title}"));
    series[0]["values"][0][1].as_f64().unwrap_or_else(|| panic!("panel {title}: {series:?}"))
}

fn panel<'a>(results: &'a Evaluated, title: &str) -> &'a [Value] {
    results.get(&(title.to_owned(), "A".to_owned())).unwrap_or_else(|| panic!("panel {title}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_query_runs_and_shows_what_the_traffic_did() {
    let mosquitto = Mosquitto::start().await;
    let influxd = Influxd::start().await;
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let env = [
        ("PENWARDEN_INFLUX_URL", influxd.url()),
        ("PENWARDEN_INFLUX_API", "v1".into()),
        ("PENWARDEN_METRICS_ADDR", metrics_addr.clone()),
    ];
    let penwarden = Penwarden::start(&mosquitto.url(), &env).await;
    // Violations of rules that do not share cartridges, so cartridges used = sessions - reuses.
    let inject = "reuse=0.2,no-disinfect=0.2,depth=0.1,gap=0.1";
    let args = common::pensim_args_injecting(&mosquitto, &penwarden, "fleet", 12, 10, inject, &["--seed", "41"]);
    let summary = run_pensim(&args).await;
    // One message for the quarantine, so its metric has a reason label to show.
    let mut publisher = Publisher::connect(mosquitto.port).await;
    publisher.publish("pw/v1/pens/PW-000001/events", b"not protobuf".to_vec()).await;

    let sessions = summary["sessions"].as_u64().expect("sessions");
    let injected = common::injected(&summary);
    let total_injected: u64 = injected.values().sum();
    let count = |query: &'static str| {
        let influxd = &influxd;
        async move { influxd.query_scalar(DATABASE, query).await.and_then(|v| v.as_u64()) }
    };
    common::wait_for_count("every session point", sessions, || count("SELECT count(strokes) FROM pen_session")).await;
    common::wait_for_count("every violation point", total_injected, || {
        count("SELECT sum(active) FROM compliance_violation")
    })
    .await;
    common::wait_for_violations(&penwarden, &injected, true).await;
    penwarden_tests::wait_for("the quarantined message counted", Duration::from_secs(10), || async {
        let text = reqwest::get(format!("http://{metrics_addr}/metrics")).await.ok()?.text().await.ok()?;
        text.contains("penwarden_messages_quarantined_total{").then_some(())
    })
    .await;

    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let boards = dashboards();
    let mut evaluated = BTreeMap::new();
    for (file, board) in &boards {
        let results =
            evaluate(&influxd, board, now_ms).await.unwrap_or_else(|failures| panic!("{file}: {failures:#?}"));
        evaluated.insert(file.clone(), results);
    }

    // What the traffic implies.
    let chain = &evaluated["chain-overview.json"];
    assert_eq!(single(chain, "Sessions (count)"), sessions as f64);
    let per_clinic = sum_by(panel(chain, "Sessions per clinic per day (count)"), Some("clinic"), 1);
    assert_eq!(per_clinic.values().sum::<f64>(), sessions as f64, "{per_clinic:?}");
    let store = penwarden_store::Store::connect(&penwarden.store_url()).await.expect("open the store");
    for (clinic, from_influx) in &per_clinic {
        let filter = penwarden_store::ReportFilter { clinic_id: Some(clinic.clone()), ..Default::default() };
        let report = store.compliance_report(&filter, &penwarden_domain::access::Scope::All).await.expect("report");
        assert_eq!(*from_influx, report.sessions as f64, "sessions of {clinic}: InfluxDB and the record");
    }
    store.close().await;
    let by_rule = sum_by(panel(chain, "Active violations by rule and clinic (count)"), Some("rule"), 1);
    let by_rule: BTreeMap<String, u64> = by_rule.into_iter().map(|(rule, n)| (rule, n as u64)).collect();
    let expected: BTreeMap<String, u64> =
        injected.iter().filter(|(_, n)| **n > 0).map(|(r, n)| (r.clone(), *n)).collect();
    assert_eq!(by_rule, expected, "violations by rule: the injected ones");
    assert_eq!(single(chain, "Cartridges used (count)"), (sessions - injected["CARTRIDGE_REUSE"]) as f64);
    let pens_with_sessions = influxql(&influxd, "SELECT count(strokes) FROM pen_session GROUP BY pen").await.unwrap();
    assert_eq!(single(chain, "Pens active (count)"), pens_with_sessions.len() as f64);

    // Every Prometheus panel names metrics penwarden serves.
    let served = reqwest::get(format!("http://{metrics_addr}/metrics")).await.unwrap().text().await.unwrap();
    let mut named = 0;
    for board in boards.values() {
        for panel in board["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap().iter().filter(|t| !is_influx(&t["datasource"])) {
                let expr = target["expr"].as_str().expect("a PromQL expression");
                for name in metric_names(expr) {
                    named += 1;
                    let listed = served
                        .lines()
                        .any(|line| line.strip_prefix(name.as_str()).is_some_and(|rest| rest.starts_with(['{', ' '])));
                    assert!(listed, "{}: {name} is not on /metrics", panel["title"]);
                }
            }
        }
    }
    assert!(named >= 10, "the operations dashboard names penwarden's metrics ({named})");
    assert!(metric(&metrics_addr, "penwarden_mqtt_reconnects_total").await.is_some(), "counters start at 0");

    // And the check has teeth: a field misspelt in a query is caught.
    let mut broken = boards["chain-overview.json"].clone();
    let query = broken["panels"][0]["targets"][0]["query"].as_str().unwrap().replace("\"strokes\"", "\"strokez\"");
    broken["panels"][0]["targets"][0]["query"] = query.into();
    let failures = evaluate(&influxd, &broken, now_ms).await.expect_err("a misspelt field must fail");
    assert!(failures.iter().any(|f| f.contains("strokez")), "{failures:?}");
}

/// The penwarden metric names a PromQL expression uses.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find("penwarden_") {
        let tail = &rest[start..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// With `database_per_chain`, each chain's points are in a database of its own (which
/// InfluxDB's per-database permissions can then give to that chain alone), none of another
/// chain's among them, and together exactly what the fleet sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_chain_s_points_go_to_a_database_of_its_own() {
    let mosquitto = Mosquitto::start().await;
    let influxd = Influxd::start().await;
    let env = [
        ("PENWARDEN_INFLUX_URL", influxd.url()),
        ("PENWARDEN_INFLUX_API", "v1".into()),
        ("PENWARDEN_INFLUX_DATABASE_PER_CHAIN", "penwarden_{chain}".into()),
    ];
    let penwarden = Penwarden::start(&mosquitto.url(), &env).await;
    let args = common::pensim_args_injecting(&mosquitto, &penwarden, "fleet", 8, 8, "reuse=0.3", &["--seed", "43"]);
    let summary = run_pensim(&args).await;
    let samples = summary["samples"].as_u64().expect("samples");
    let sessions = summary["sessions"].as_u64().expect("sessions");
    let count = |database: String, query: String| {
        let influxd = &influxd;
        async move { influxd.query_scalar(&database, &query).await.and_then(|v| v.as_u64()) }
    };
    let chains = ["chain-1", "chain-2"];
    let landed = common::wait_for_count("every sample in the chains' databases", samples, || async {
        let mut total = 0;
        for chain in chains {
            total += count(format!("penwarden_{chain}"), "SELECT count(depth_mm) FROM pen_telemetry".into()).await?;
        }
        Some(total)
    })
    .await;
    assert_eq!(landed, samples, "each sample once, in its chain's database");
    // Session points come from the record's outbox, which may land a moment after the samples.
    let session_points = common::wait_for_count("every session point in the chains' databases", sessions, || async {
        let mut total = 0;
        for chain in chains {
            total += count(format!("penwarden_{chain}"), "SELECT count(strokes) FROM pen_session".into()).await?;
        }
        Some(total)
    })
    .await;
    assert_eq!(session_points, sessions, "each session once, in its chain's database");
    for chain in chains {
        let database = format!("penwarden_{chain}");
        for measurement in ["pen_telemetry", "pen_session", "compliance_violation", "pen_status"] {
            let own = count(database.clone(), format!("SELECT count(*) FROM {measurement} WHERE chain = '{chain}'"));
            assert!(own.await.is_some(), "{chain} has {measurement} points");
            let foreign =
                count(database.clone(), format!("SELECT count(*) FROM {measurement} WHERE chain != '{chain}'"));
            assert_eq!(foreign.await, None, "no other chain's {measurement} in {database}");
        }
    }
    let in_default = count(DATABASE.into(), "SELECT count(depth_mm) FROM pen_telemetry WHERE chain =~ /./".into());
    assert_eq!(in_default.await, None, "no chain's points in the shared database");
}

//! Line protocol against the real InfluxDB 1.6.7: arbitrary tag values and string fields, written
//! by penwarden's encoder, read back through InfluxQL as the encoder documents.

use penwarden_influx::line::{string_field_as_stored, tag_value_as_stored, LineBuilder};
use penwarden_tests::Influxd;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Text with the characters line protocol treats specially, often; and any text at all.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z\\\\ ,=\"'\n\t#]{0,12}",
        any::<String>(),
        "\\PC{0,20}",
        // Every escape next to every separator.
        "(\\\\|,|=| |\"|a){0,10}",
    ]
}

async fn write_and_read(influxd: &Influxd, time_ms: i64, tag: &str, field: &str) -> (Option<String>, Option<String>) {
    let mut lines = LineBuilder::default();
    // `n` keeps a field in the point when `field` is empty.
    lines.point("roundtrip").tag("t", tag).string("s", field).int("n", time_ms).timestamp_ms(time_ms);
    let client = reqwest::Client::new();
    let written = client
        .post(format!("{}/write?db=lp&precision=ms", influxd.url()))
        .body(lines.as_str().to_owned())
        .send()
        .await
        .expect("write");
    let status = written.status();
    assert!(status.is_success(), "InfluxDB refused {:?}: {}", lines.as_str(), written.text().await.unwrap_or_default());
    // `n` too: InfluxQL returns no row when no selected field has a value.
    let query = format!("SELECT \"t\", \"s\", \"n\" FROM \"roundtrip\" WHERE time = {time_ms}ms");
    let response = client
        .get(format!("{}/query", influxd.url()))
        .query(&[("db", "lp"), ("q", query.as_str())])
        .send()
        .await
        .expect("query");
    let body: serde_json::Value = serde_json::from_str(&response.text().await.expect("body")).expect("json");
    let row = &body["results"][0]["series"][0]["values"][0];
    assert!(!row.is_null(), "the point at {time_ms} is not there: {body} (line {:?})", lines.as_str());
    (row[1].as_str().map(str::to_owned), row[2].as_str().map(str::to_owned))
}

#[test]
fn arbitrary_tag_values_and_string_fields_read_back_from_influxdb() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let influxd = runtime.block_on(Influxd::start());
    runtime.block_on(async {
        reqwest::Client::new()
            .post(format!("{}/query", influxd.url()))
            .form(&[("q", "CREATE DATABASE lp")])
            .send()
            .await
            .expect("create database")
    });
    let mut runner = TestRunner::new(Config { cases: 300, failure_persistence: None, ..Config::default() });
    let next_time = std::sync::atomic::AtomicI64::new(1_700_000_000_000);
    let result = runner.run(&(text(), text()), |(tag, field)| {
        let time_ms = next_time.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (read_tag, read_field) = runtime.block_on(write_and_read(&influxd, time_ms, &tag, &field));
        let expected_tag = (!tag.is_empty()).then(|| tag_value_as_stored(&tag));
        let expected_field = (!field.is_empty()).then(|| string_field_as_stored(&field));
        prop_assert_eq!(read_tag, expected_tag, "tag {:?}", tag);
        prop_assert_eq!(read_field, expected_field, "field {:?}", field);
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

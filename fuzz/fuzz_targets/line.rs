//! Any tag values and string fields: the encoder writes a line that InfluxDB's rules parse,
//! and each value reads back as documented (`tag_value_as_stored`, `string_field_as_stored`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use penwarden_influx::line::{parse_line, string_field_as_stored, tag_value_as_stored, FieldValue, LineBuilder};

fuzz_target!(|data: &[u8]| {
    // Values separated by 0xff (never in UTF-8): tags first, then string fields, alternating.
    let values: Vec<String> = data.split(|b| *b == 0xff).map(|v| String::from_utf8_lossy(v).into_owned()).collect();
    let keys = ["a", "b", "c", "d", "e", "f", "g", "h"];
    let mut lines = LineBuilder::default();
    let mut point = lines.point("m");
    let mut expected_tags = Vec::new();
    for (key, value) in keys.iter().zip(values.iter().step_by(2)) {
        point = point.tag(key, value);
        if !value.is_empty() {
            expected_tags.push((key.to_string(), tag_value_as_stored(value)));
        }
    }
    let mut expected_fields = Vec::new();
    for (key, value) in keys.iter().zip(values.iter().skip(1).step_by(2)) {
        point = point.string(key, value);
        if !value.is_empty() {
            expected_fields.push((key.to_string(), FieldValue::String(string_field_as_stored(value))));
        }
    }
    point.int("n", 1).timestamp_ms(1);
    expected_fields.push(("n".to_string(), FieldValue::Integer(1)));
    let parsed = parse_line(lines.as_str()).unwrap_or_else(|e| panic!("{e}: {:?}", lines.as_str()));
    assert_eq!(parsed.tags, expected_tags, "{:?}", lines.as_str());
    assert_eq!(parsed.fields, expected_fields, "{:?}", lines.as_str());
});

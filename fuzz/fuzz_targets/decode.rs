//! Any topic and payload: the decoder returns a value or a rejection, never panics, and a
//! rejection always carries a non-empty reason.
#![no_main]

use libfuzzer_sys::fuzz_target;
use penwarden_ingest::decode::{decode, Limits};

const NOW_MS: i64 = 1_800_000_000_000;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    // First byte picks the topic shape; the rest is the payload.
    let (selector, payload) = data.split_first().unwrap_or((&0, &[]));
    let topic = match selector % 4 {
        0 => "pw/v1/pens/PW-1/telemetry".to_string(),
        1 => "pw/v1/pens/PW-1/events".to_string(),
        2 => "pw/v1/pens/PW-1/state".to_string(),
        _ => String::from_utf8_lossy(payload.get(..payload.len().min(40)).unwrap_or_default()).into_owned(),
    };
    if let Err(rejection) = decode("pw/v1", &topic, payload, NOW_MS, &limits) {
        assert!(!rejection.reason.is_empty());
    }
});

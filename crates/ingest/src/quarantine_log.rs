//! Log lines about quarantined messages, summarised: one line per pen and interval, for the
//! pens with the most, and one line for the rest. A flood of bad messages (20,000 unknown
//! serials, say) must not become a flood of log lines; the quarantine itself keeps every one.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use penwarden_store::QuarantineEntry;
use tokio::time::Instant;

/// How often the summary is written while messages are being quarantined.
pub(crate) const INTERVAL: Duration = Duration::from_secs(10);
/// Pens named one by one per interval; the rest are counted together.
const PENS_NAMED: usize = 20;

#[derive(Debug, Default)]
struct PenSummary {
    count: u64,
    by_reason: BTreeMap<&'static str, u64>,
    /// The first message's topic and detail, as an example.
    example: Option<(String, String)>,
}

#[derive(Debug)]
pub(crate) struct QuarantineLog {
    pens: HashMap<String, PenSummary>,
    since: Instant,
}

/// One interval's summary, ready to log.
#[derive(Debug, PartialEq)]
pub(crate) struct Summary {
    /// (pen, messages, counts by reason, example topic, example detail), most messages first.
    pub(crate) named: Vec<(String, u64, String, String, String)>,
    /// Pens and messages beyond the named ones.
    pub(crate) other_pens: usize,
    pub(crate) other_messages: u64,
}

impl QuarantineLog {
    pub(crate) fn new() -> QuarantineLog {
        QuarantineLog { pens: HashMap::new(), since: Instant::now() }
    }

    pub(crate) fn record(&mut self, entry: &QuarantineEntry) {
        let pen = entry.pen.clone().unwrap_or_else(|| "(unknown pen)".to_owned());
        let summary = self.pens.entry(pen).or_default();
        summary.count += 1;
        *summary.by_reason.entry(entry.reason).or_default() += 1;
        summary.example.get_or_insert_with(|| (entry.topic.clone(), entry.detail.clone()));
    }

    /// When the pending summary is due, if there is one.
    pub(crate) fn due_at(&self) -> Option<Instant> {
        (!self.pens.is_empty()).then_some(self.since + INTERVAL)
    }

    /// Logs and clears the summary once an interval has passed since the last one.
    pub(crate) fn flush_if_due(&mut self, now: Instant) {
        if self.due_at().is_some_and(|due| now >= due) {
            self.flush();
        }
        if self.pens.is_empty() {
            self.since = now;
        }
    }

    /// Logs and clears the summary now (at shutdown).
    pub(crate) fn flush(&mut self) {
        if self.pens.is_empty() {
            return;
        }
        let summary = self.take();
        for (pen, messages, reasons, topic, detail) in &summary.named {
            tracing::warn!(%pen, messages, reasons = %reasons, example_topic = %topic, example = %detail,
                interval_s = INTERVAL.as_secs(), "messages quarantined");
        }
        if summary.other_pens > 0 {
            tracing::warn!(
                pens = summary.other_pens,
                messages = summary.other_messages,
                interval_s = INTERVAL.as_secs(),
                "messages of further pens quarantined"
            );
        }
    }

    /// The summary so far, most messages first; starts a new interval.
    pub(crate) fn take(&mut self) -> Summary {
        let mut pens: Vec<(String, PenSummary)> = self.pens.drain().collect();
        pens.sort_by(|a, b| b.1.count.cmp(&a.1.count).then_with(|| a.0.cmp(&b.0)));
        let rest = pens.split_off(pens.len().min(PENS_NAMED));
        self.since = Instant::now();
        Summary {
            named: pens
                .into_iter()
                .map(|(pen, summary)| {
                    let reasons = summary
                        .by_reason
                        .iter()
                        .map(|(reason, count)| format!("{reason}={count}"))
                        .collect::<Vec<_>>()
                        .join(",");
                    let (topic, detail) = summary.example.unwrap_or_default();
                    (pen, summary.count, reasons, topic, detail)
                })
                .collect(),
            other_pens: rest.len(),
            other_messages: rest.iter().map(|(_, summary)| summary.count).sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(pen: &str, reason: &'static str) -> QuarantineEntry {
        QuarantineEntry {
            received_ms: 0,
            topic: format!("pw/v1/pens/{pen}/events"),
            pen: Some(pen.to_owned()),
            reason,
            detail: "why".into(),
            payload_excerpt: String::new(),
            payload_len: 0,
            payload: None,
        }
    }

    #[test]
    fn twenty_thousand_pens_make_twenty_one_lines() {
        let mut log = QuarantineLog::new();
        for i in 0..20_000 {
            log.record(&entry(&format!("GHOST-{i}"), "unregistered_pen"));
        }
        for _ in 0..5 {
            log.record(&entry("P1", "rate_limited"));
        }
        log.record(&entry("P1", "decode_error"));
        let summary = log.take();
        assert_eq!(summary.named.len(), 20);
        assert_eq!(summary.named[0].0, "P1");
        assert_eq!((summary.named[0].1, summary.named[0].2.as_str()), (6, "decode_error=1,rate_limited=5"));
        assert_eq!((summary.other_pens, summary.other_messages), (19_981, 19_981));
        assert!(log.due_at().is_none(), "taken: nothing pending");
    }
}

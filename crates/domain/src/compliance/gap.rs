//! TELEMETRY_GAP: every message a pen sends carries the next number of one per-pen sequence,
//! so the messages of a session are exactly the numbers between its start and its end. A
//! number that never arrived means part of the evidence is missing.

use super::{Judgement, Rule, SessionRef};

/// A finished session's sequence span, and the numbers received strictly inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSpan<'a> {
    pub session: SessionRef,
    pub start_seq: u64,
    pub end_seq: u64,
    /// Sorted, distinct, all strictly between `start_seq` and `end_seq`.
    pub received_inside: &'a [u64],
}

/// Judges whether every message between a session's start and end arrived. A span whose end
/// does not follow its start cannot hold a gap: the pen's numbering is then wrong, which the
/// other rules do not depend on, so this rule stays silent rather than guess.
pub fn judge_telemetry_gap(span: &SessionSpan<'_>) -> Judgement {
    let judgement =
        |explanation| Judgement { rule: Rule::TelemetryGap, session: span.session.clone(), explanation, related: None };
    if span.end_seq <= span.start_seq {
        return judgement(None);
    }
    let expected = span.end_seq - span.start_seq - 1;
    let received = span.received_inside.len() as u64;
    if received >= expected {
        return judgement(None);
    }
    let first_missing = first_missing(span.start_seq + 1, span.received_inside);
    judgement(Some(format!(
        "{} of the {expected} messages between the session's start (seq {}) and end (seq {}) never arrived, \
         first missing seq {first_missing}; the session's evidence is incomplete",
        expected - received,
        span.start_seq,
        span.end_seq
    )))
}

/// The smallest number from `from` on that `received` (sorted, distinct, all >= `from`) lacks.
fn first_missing(from: u64, received: &[u64]) -> u64 {
    let mut next = from;
    for &seq in received {
        if seq != next {
            break;
        }
        next += 1;
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{PenSerial, SessionId};
    use proptest::prelude::*;

    fn session() -> SessionRef {
        SessionRef { pen: PenSerial::parse("P1").unwrap(), session_id: SessionId::parse("s1").unwrap() }
    }

    fn judge(start_seq: u64, end_seq: u64, received_inside: &[u64]) -> Option<String> {
        judge_telemetry_gap(&SessionSpan { session: session(), start_seq, end_seq, received_inside }).explanation
    }

    #[test]
    fn complete_sessions_have_no_gap() {
        assert_eq!(judge(10, 14, &[11, 12, 13]), None);
        assert_eq!(judge(10, 11, &[]), None, "a session with no telemetry between start and end");
    }

    #[test]
    fn a_missing_message_is_a_gap_and_named() {
        let explanation = judge(10, 14, &[11, 13]).expect("a gap");
        assert!(explanation.starts_with("1 of the 3 messages"), "{explanation}");
        assert!(explanation.contains("first missing seq 12"), "{explanation}");
        assert!(judge(10, 14, &[]).unwrap().contains("first missing seq 11"));
    }

    #[test]
    fn inverted_spans_are_not_judged() {
        assert_eq!(judge(14, 10, &[]), None);
        assert_eq!(judge(14, 14, &[]), None);
    }

    proptest! {
        /// Dropping any non-empty subset of the messages inside a span is a gap that names the
        /// smallest dropped number; dropping none is not.
        #[test]
        fn names_the_first_dropped_message(start in 0u64..1_000_000, len in 0u64..200, drops in prop::collection::btree_set(0u64..200, 0..10)) {
            let inside: Vec<u64> = (start + 1..start + 1 + len).collect();
            let dropped: Vec<u64> = drops.iter().filter(|d| **d < len).map(|d| start + 1 + d).collect();
            let received: Vec<u64> = inside.iter().copied().filter(|seq| !dropped.contains(seq)).collect();
            let explanation = judge(start, start + len + 1, &received);
            match dropped.first() {
                None => prop_assert_eq!(explanation, None),
                Some(first) => {
                    let explanation = explanation.expect("a gap");
                    let expected_prefix = format!("{} of the {} messages", dropped.len(), len);
                    let expected_first = format!("first missing seq {first};");
                    prop_assert!(explanation.starts_with(&expected_prefix), "{}", explanation);
                    prop_assert!(explanation.contains(&expected_first), "{}", explanation);
                }
            }
        }
    }
}

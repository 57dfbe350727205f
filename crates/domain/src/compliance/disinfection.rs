//! PEN_NOT_DISINFECTED: a session starts on a pen with no disinfection (with a sheath change)
//! since its previous session ended.
//!
//! Within one pen, the sequence number orders facts, not the device clock: it only grows, so
//! it survives clock resets, and it is what a late upload preserves.

use super::{Judgement, Rule, SessionRef};
use crate::ids::{PenSerial, SessionId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PenFactKind {
    SessionStarted(SessionId),
    SessionEnded(SessionId),
    Disinfected { sheath_changed: bool },
}

/// One fact of one pen's history, at its sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PenFact {
    pub seq: u64,
    pub kind: PenFactKind,
}

/// Judges the session starts in a window of one pen's history.
///
/// `facts` may come in any order; they are judged in sequence order. When `anchored` is true,
/// the earliest session start in the window is the anchor: the last session before the facts
/// that changed, judged earlier and not judged again (so a window need not reach back to the
/// pen's first session). Sessions started before anything else is known are compliant: there is
/// no previous client to protect the next one from.
pub fn judge_disinfection(pen: &PenSerial, facts: &[PenFact], anchored: bool) -> Vec<Judgement> {
    let mut ordered: Vec<&PenFact> = facts.iter().collect();
    ordered.sort_by_key(|fact| fact.seq);

    let mut judgements = Vec::new();
    let mut previous_session: Option<&SessionId> = None;
    let mut disinfected_since_previous = false;
    let mut anchor_pending = anchored;
    for fact in ordered {
        match &fact.kind {
            PenFactKind::SessionStarted(session_id) => {
                if anchor_pending {
                    anchor_pending = false;
                } else {
                    let explanation = match previous_session {
                        Some(previous) if !disinfected_since_previous => Some(format!(
                            "no disinfection with sheath change was logged on pen {pen} between session {previous} and this session"
                        )),
                        _ => None,
                    };
                    judgements.push(Judgement {
                        rule: Rule::PenNotDisinfected,
                        session: SessionRef { pen: pen.clone(), session_id: session_id.clone() },
                        explanation,
                    });
                }
                previous_session = Some(session_id);
                disinfected_since_previous = false;
            }
            // Wiping a pen while it treats does not count: only after the session ends.
            PenFactKind::SessionEnded(_) => disinfected_since_previous = false,
            PenFactKind::Disinfected { sheath_changed } => disinfected_since_previous |= *sheath_changed,
        }
    }
    judgements
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn session(id: &str) -> SessionId {
        SessionId::parse(id).unwrap()
    }

    fn start(seq: u64, id: &str) -> PenFact {
        PenFact { seq, kind: PenFactKind::SessionStarted(session(id)) }
    }
    fn end(seq: u64, id: &str) -> PenFact {
        PenFact { seq, kind: PenFactKind::SessionEnded(session(id)) }
    }
    fn wipe(seq: u64, sheath_changed: bool) -> PenFact {
        PenFact { seq, kind: PenFactKind::Disinfected { sheath_changed } }
    }

    fn violating(facts: &[PenFact], anchored: bool) -> Vec<String> {
        let pen = PenSerial::parse("P1").unwrap();
        judge_disinfection(&pen, facts, anchored)
            .into_iter()
            .filter(|j| j.is_violation())
            .map(|j| j.session.session_id.to_string())
            .collect()
    }

    #[test]
    fn disinfection_with_sheath_between_sessions_is_compliant() {
        let facts = [start(1, "a"), end(2, "a"), wipe(3, true), start(4, "b")];
        assert!(violating(&facts, false).is_empty());
    }

    #[test]
    fn missing_or_sheathless_disinfection_violates() {
        assert_eq!(violating(&[start(1, "a"), end(2, "a"), start(3, "b")], false), ["b"]);
        assert_eq!(violating(&[start(1, "a"), end(2, "a"), wipe(3, false), start(4, "b")], false), ["b"]);
    }

    #[test]
    fn wiping_during_a_session_does_not_count() {
        assert_eq!(violating(&[start(1, "a"), wipe(2, true), end(3, "a"), start(4, "b")], false), ["b"]);
    }

    #[test]
    fn the_anchor_is_not_judged_again() {
        let facts = [start(10, "anchor"), end(11, "anchor"), start(12, "next")];
        let pen = PenSerial::parse("P1").unwrap();
        let judged: Vec<_> =
            judge_disinfection(&pen, &facts, true).into_iter().map(|j| j.session.session_id.to_string()).collect();
        assert_eq!(judged, ["next"]);
    }

    proptest! {
        #[test]
        fn arrival_order_does_not_matter(
            steps in proptest::collection::vec((any::<bool>(), any::<bool>()), 1..12),
            rotation in 0usize..64,
        ) {
            // Each step is a session, optionally followed by a disinfection (with or without sheath).
            let mut facts = Vec::new();
            let mut seq = 0;
            for (i, (wiped, sheath)) in steps.iter().enumerate() {
                let id = format!("s{i}");
                seq += 1; facts.push(start(seq, &id));
                seq += 1; facts.push(end(seq, &id));
                if *wiped { seq += 1; facts.push(wipe(seq, *sheath)); }
            }
            let in_order = violating(&facts, false);
            let mut shuffled = facts.clone();
            let len = shuffled.len();
            shuffled.rotate_left(rotation % len);
            shuffled.reverse();
            prop_assert_eq!(violating(&shuffled, false), in_order.clone());
            // A session violates exactly when the step before it had no sheath-changing wipe.
            let expected: Vec<String> = (1..steps.len())
                .filter(|i| !(steps[i - 1].0 && steps[i - 1].1))
                .map(|i| format!("s{i}"))
                .collect();
            prop_assert_eq!(in_order, expected);
        }
    }
}

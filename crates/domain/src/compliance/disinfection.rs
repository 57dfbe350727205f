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

/// Where a pen stands after some of its history, read in sequence order: the one walk both the
/// rule and the readiness question take, so they cannot disagree.
#[derive(Debug, Default)]
struct Walk<'a> {
    previous_session: Option<&'a SessionId>,
    previous_ended: bool,
    disinfected_since_previous: bool,
}

impl<'a> Walk<'a> {
    /// Would a session starting now violate the rule? The explanation, if so.
    fn next_session_violation(&self, pen: &PenSerial) -> Option<String> {
        match self.previous_session {
            Some(previous) if !self.disinfected_since_previous => Some(format!(
                "no disinfection with sheath change was logged on pen {pen} between session {previous} and this session"
            )),
            _ => None,
        }
    }

    fn step(&mut self, fact: &'a PenFact) {
        match &fact.kind {
            PenFactKind::SessionStarted(session_id) => {
                self.previous_session = Some(session_id);
                self.previous_ended = false;
                self.disinfected_since_previous = false;
            }
            // Wiping a pen while it treats does not count: only after the session ends.
            PenFactKind::SessionEnded(_) => {
                self.previous_ended = true;
                self.disinfected_since_previous = false;
            }
            PenFactKind::Disinfected { sheath_changed } => self.disinfected_since_previous |= *sheath_changed,
        }
    }
}

fn in_sequence_order(facts: &[PenFact]) -> Vec<&PenFact> {
    let mut ordered: Vec<&PenFact> = facts.iter().collect();
    ordered.sort_by_key(|fact| fact.seq);
    ordered
}

/// Judges the session starts in a window of one pen's history.
///
/// `facts` may come in any order; they are judged in sequence order. When `anchored` is true,
/// the earliest session start in the window is the anchor: the last session before the facts
/// that changed, judged earlier and not judged again (so a window need not reach back to the
/// pen's first session). Sessions started before anything else is known are compliant: there is
/// no previous client to protect the next one from.
pub fn judge_disinfection(pen: &PenSerial, facts: &[PenFact], anchored: bool) -> Vec<Judgement> {
    let mut judgements = Vec::new();
    let mut walk = Walk::default();
    let mut anchor_pending = anchored;
    for fact in in_sequence_order(facts) {
        if let PenFactKind::SessionStarted(session_id) = &fact.kind {
            if anchor_pending {
                anchor_pending = false;
            } else {
                let explanation = walk.next_session_violation(pen);
                let related = explanation
                    .as_ref()
                    .and(walk.previous_session)
                    .map(|previous| SessionRef { pen: pen.clone(), session_id: previous.clone() });
                judgements.push(Judgement {
                    rule: Rule::PenNotDisinfected,
                    session: SessionRef { pen: pen.clone(), session_id: session_id.clone() },
                    explanation,
                    related,
                });
            }
        }
        walk.step(fact);
    }
    judgements
}

/// Why a pen is not ready to treat, naming its last session (which may be another tenant's,
/// if the pen moved: [`NotReady::describe`] leaves it out for a reader who may not see it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReady {
    SessionNotEnded(SessionId),
    NotDisinfectedSince(SessionId),
}

impl NotReady {
    /// The session the reason is about.
    pub fn session(&self) -> &SessionId {
        match self {
            NotReady::SessionNotEnded(session) | NotReady::NotDisinfectedSince(session) => session,
        }
    }

    /// The reason in words, naming the session only if `session_visible`.
    pub fn describe(&self, session_visible: bool) -> String {
        match (self, session_visible) {
            (NotReady::SessionNotEnded(session), true) => format!("session {session} has not ended"),
            (NotReady::SessionNotEnded(_), false) => {
                "the pen's last session (outside what this key may see) has not ended".into()
            }
            (NotReady::NotDisinfectedSince(session), true) => {
                format!("no disinfection with sheath change since session {session} ended")
            }
            (NotReady::NotDisinfectedSince(_), false) => {
                "no disinfection with sheath change since the pen's last session (outside what this key may see) ended"
                    .into()
            }
        }
    }
}

/// Why a session starting on the pen now would not be compliant (empty: ready to treat), from
/// its history since its last session started (any order). The same walk as
/// [`judge_disinfection`]: a pen is ready exactly when the rule would pass its next session.
pub fn readiness(pen: &PenSerial, facts: &[PenFact]) -> Vec<NotReady> {
    let mut walk = Walk::default();
    for fact in in_sequence_order(facts) {
        walk.step(fact);
    }
    match walk.previous_session {
        Some(session) if !walk.previous_ended => vec![NotReady::SessionNotEnded(session.clone())],
        Some(session) if walk.next_session_violation(pen).is_some() => {
            vec![NotReady::NotDisinfectedSince(session.clone())]
        }
        _ => Vec::new(),
    }
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

    fn reasons(facts: &[PenFact]) -> Vec<String> {
        readiness(&PenSerial::parse("P1").unwrap(), facts).iter().map(|reason| reason.describe(true)).collect()
    }

    #[test]
    fn a_reason_names_its_session_only_to_who_may_see_it() {
        let not_ended = &readiness(&PenSerial::parse("P1").unwrap(), &[start(1, "a")])[0];
        assert_eq!(not_ended.session().as_str(), "a");
        assert!(!not_ended.describe(false).contains("session a"));
        let unwiped = &readiness(&PenSerial::parse("P1").unwrap(), &[start(1, "a"), end(2, "a")])[0];
        assert!(!unwiped.describe(false).contains("session a"));
        // The rule's violation names the previous session as related.
        let judged =
            judge_disinfection(&PenSerial::parse("P1").unwrap(), &[start(1, "a"), end(2, "a"), start(3, "b")], false);
        assert_eq!(judged[1].related.as_ref().map(|r| r.session_id.as_str()), Some("a"));
        assert_eq!(judged[0].related, None);
    }

    #[test]
    fn readiness_agrees_with_the_rule() {
        assert!(reasons(&[]).is_empty());
        assert_eq!(reasons(&[start(1, "a")]), ["session a has not ended"]);
        assert_eq!(
            reasons(&[start(1, "a"), end(2, "a")]),
            ["no disinfection with sheath change since session a ended"]
        );
        assert!(reasons(&[start(1, "a"), end(2, "a"), wipe(3, true)]).is_empty());
        // A later wipe without a sheath change does not undo the one with it (the rule's view).
        assert!(reasons(&[start(1, "a"), end(2, "a"), wipe(3, true), wipe(4, false)]).is_empty());
        // A wipe during the session does not count, in any order.
        assert_eq!(reasons(&[end(3, "a"), wipe(2, true), start(1, "a")]).len(), 1);
    }

    proptest! {
        /// Ready to treat exactly when a session started next would pass PEN_NOT_DISINFECTED
        /// (and the previous one has ended).
        #[test]
        fn ready_exactly_when_the_next_session_would_pass(
            kinds in proptest::collection::vec(0u8..4, 0..12),
        ) {
            let mut facts = Vec::new();
            let mut open: Option<String> = None;
            for (i, kind) in kinds.iter().enumerate() {
                let seq = i as u64 + 1;
                match (kind, &open) {
                    (0, None) => { let id = format!("s{i}"); facts.push(start(seq, &id)); open = Some(id); }
                    (0, Some(id)) | (1, Some(id)) => { facts.push(end(seq, id)); open = None; }
                    (2, _) => facts.push(wipe(seq, true)),
                    _ => facts.push(wipe(seq, false)),
                }
            }
            let ready = reasons(&facts).is_empty();
            let mut next = facts.clone();
            next.push(start(1000, "next"));
            let rule_passes = !violating(&next, false).contains(&"next".to_string());
            prop_assert_eq!(ready, rule_passes && open.is_none(), "{:?}", facts);
        }

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

//! CARTRIDGE_REUSE: a cartridge serial appears in more than one session, on any pen in any
//! clinic. The first session by device time is the legitimate one; every other one violates.

use super::{Judgement, Rule, SessionRef};

/// One session's use of a cartridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartridgeUse {
    pub session: SessionRef,
    pub started_unix_ms: i64,
    pub start_seq: u64,
}

impl CartridgeUse {
    /// Device time decides; pen serial and sequence only break exact ties, deterministically.
    fn order_key(&self) -> (i64, &str, u64) {
        (self.started_unix_ms, self.session.pen.as_str(), self.start_seq)
    }
}

/// Judges every use of one cartridge. Any order of `uses` gives the same judgements.
pub fn judge_cartridge_reuse(uses: &[CartridgeUse]) -> Vec<Judgement> {
    let Some(first) = uses.iter().min_by(|a, b| a.order_key().cmp(&b.order_key())) else {
        return Vec::new();
    };
    uses.iter()
        .map(|usage| {
            let is_first = usage.session == first.session;
            Judgement {
                rule: Rule::CartridgeReuse,
                session: usage.session.clone(),
                explanation: (!is_first).then(|| {
                    format!(
                        "cartridge was already used in session {} on pen {} (started {} ms earlier by device time); a cartridge is single-use",
                        first.session.session_id,
                        first.session.pen,
                        usage.started_unix_ms - first.started_unix_ms
                    )
                }),
                related: (!is_first).then(|| first.session.clone()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{PenSerial, SessionId};
    use proptest::prelude::*;

    fn usage(pen: &str, session: &str, started: i64) -> CartridgeUse {
        CartridgeUse {
            session: SessionRef { pen: PenSerial::parse(pen).unwrap(), session_id: SessionId::parse(session).unwrap() },
            started_unix_ms: started,
            start_seq: 1,
        }
    }

    #[test]
    fn a_reuse_names_the_first_use_as_related() {
        let judged = judge_cartridge_reuse(&[usage("P2", "late", 2000), usage("P1", "first", 1000)]);
        assert_eq!(judged[0].related, Some(usage("P1", "first", 1000).session));
        assert_eq!(judged[1].related, None, "the first use names nothing");
    }

    #[test]
    fn single_use_is_fine() {
        let judgements = judge_cartridge_reuse(&[usage("P1", "s1", 10)]);
        assert_eq!(judgements.len(), 1);
        assert!(!judgements[0].is_violation());
    }

    #[test]
    fn later_uses_violate_even_when_they_arrive_first() {
        let judgements = judge_cartridge_reuse(&[usage("P2", "late", 500), usage("P1", "early", 100)]);
        let violating: Vec<_> =
            judgements.iter().filter(|j| j.is_violation()).map(|j| j.session.session_id.as_str()).collect();
        assert_eq!(violating, vec!["late"]);
    }

    proptest! {
        #[test]
        fn exactly_one_legitimate_use_in_any_order(mut starts in proptest::collection::vec(0i64..1_000, 1..8), seed in any::<u64>()) {
            let uses: Vec<_> = starts.iter().enumerate().map(|(i, t)| usage(&format!("P{i}"), "s", *t)).collect();
            let mut shuffled = uses.clone();
            // A deterministic shuffle from the seed.
            let len = shuffled.len();
            for i in 0..len { shuffled.swap(i, (seed as usize).wrapping_mul(i + 7) % len); }
            let mut a = judge_cartridge_reuse(&uses);
            let mut b = judge_cartridge_reuse(&shuffled);
            let key = |j: &Judgement| j.session.clone();
            a.sort_by_key(key);
            b.sort_by_key(key);
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(a.iter().filter(|j| !j.is_violation()).count(), 1);
            starts.sort_unstable();
            let legit = a.iter().find(|j| !j.is_violation()).unwrap();
            let legit_start = uses.iter().find(|u| u.session == legit.session).unwrap().started_unix_ms;
            prop_assert_eq!(legit_start, starts[0]);
        }
    }
}

//! The sequence numbers a pen's messages arrived with, kept as runs of consecutive numbers.
//!
//! TELEMETRY_GAP asks which numbers between a session's start and end never arrived. Keeping
//! one row per message for that made every batch write a row into a table that only grows, at
//! a place in its B-tree far from the last one (one page per message under load). A pen's
//! messages are nearly always consecutive, so a run per pen changes one small row per batch.

/// A run of received sequence numbers, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct SeqRun {
    pub(crate) first: u64,
    pub(crate) last: u64,
}

/// How one pen's runs change when new numbers arrive.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct RunChange {
    pub(crate) removed: Vec<SeqRun>,
    pub(crate) added: Vec<SeqRun>,
    /// The arrived numbers no run held before, sorted.
    pub(crate) new_seqs: Vec<u64>,
}

/// Merges `arrived` into `existing`, which must hold every stored run of the pen that overlaps
/// or touches `[min(arrived) - 1, max(arrived) + 1]` (others cannot change).
pub(crate) fn merge(existing: &[SeqRun], arrived: &[u64]) -> RunChange {
    let mut existing = existing.to_vec();
    existing.sort();
    let mut arrived = arrived.to_vec();
    arrived.sort_unstable();
    arrived.dedup();
    let new_seqs: Vec<u64> =
        arrived.into_iter().filter(|seq| !existing.iter().any(|run| run.first <= *seq && *seq <= run.last)).collect();

    let mut pieces: Vec<SeqRun> = existing.clone();
    pieces.extend(new_seqs.iter().map(|&seq| SeqRun { first: seq, last: seq }));
    pieces.sort();
    let mut merged: Vec<SeqRun> = Vec::with_capacity(pieces.len());
    for piece in pieces {
        match merged.last_mut() {
            Some(run) if piece.first <= run.last.saturating_add(1) => run.last = run.last.max(piece.last),
            _ => merged.push(piece),
        }
    }
    RunChange {
        removed: existing.iter().filter(|run| !merged.contains(run)).copied().collect(),
        added: merged.iter().filter(|run| !existing.contains(run)).copied().collect(),
        new_seqs,
    }
}

/// The numbers strictly between `after` and `before` that the runs hold, sorted.
pub(crate) fn received_between(runs: &[SeqRun], after: u64, before: u64) -> Vec<u64> {
    let mut seqs: Vec<u64> = runs
        .iter()
        .flat_map(|run| run.first.max(after.saturating_add(1))..=run.last.min(before.saturating_sub(1)))
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    seqs
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn run(first: u64, last: u64) -> SeqRun {
        SeqRun { first, last }
    }

    #[test]
    fn a_next_number_extends_the_last_run() {
        let change = merge(&[run(1, 10)], &[11, 12]);
        assert_eq!(change.removed, vec![run(1, 10)]);
        assert_eq!(change.added, vec![run(1, 12)]);
        assert_eq!(change.new_seqs, vec![11, 12]);
    }

    #[test]
    fn a_late_number_joins_two_runs_and_a_gap_starts_a_new_one() {
        let change = merge(&[run(1, 4), run(6, 9)], &[5, 12]);
        assert_eq!(change.removed, vec![run(1, 4), run(6, 9)]);
        assert_eq!(change.added, vec![run(1, 9), run(12, 12)]);
        assert_eq!(change.new_seqs, vec![5, 12]);
    }

    #[test]
    fn numbers_seen_before_change_nothing() {
        assert_eq!(merge(&[run(3, 8)], &[3, 5, 8, 5]), RunChange::default());
    }

    #[test]
    fn received_between_excludes_both_ends() {
        assert_eq!(received_between(&[run(1, 3), run(5, 9)], 2, 7), vec![3, 5, 6]);
        assert_eq!(received_between(&[run(0, 3)], 0, 1), Vec::<u64>::new());
    }

    proptest! {
        /// Whatever order numbers arrive in, the runs hold exactly the numbers received, as
        /// maximal runs, and each number counts as new exactly once.
        #[test]
        fn runs_hold_exactly_what_arrived(batches in prop::collection::vec(prop::collection::vec(0u64..60, 0..12), 0..12)) {
            let mut runs: Vec<SeqRun> = Vec::new();
            let mut received = BTreeSet::new();
            for batch in &batches {
                let (Some(&min), Some(&max)) = (batch.iter().min(), batch.iter().max()) else { continue };
                // As the store selects them: the runs that overlap or touch the batch's window.
                let window: Vec<SeqRun> = runs
                    .iter()
                    .filter(|r| r.last.saturating_add(1) >= min && r.first <= max.saturating_add(1))
                    .copied()
                    .collect();
                let change = merge(&window, batch);
                let fresh: BTreeSet<u64> = batch.iter().copied().filter(|seq| !received.contains(seq)).collect();
                prop_assert_eq!(change.new_seqs.iter().copied().collect::<BTreeSet<_>>(), fresh);
                runs.retain(|r| !change.removed.contains(r));
                runs.extend(change.added);
                received.extend(batch.iter().copied());
            }
            runs.sort();
            let held: BTreeSet<u64> = runs.iter().flat_map(|r| r.first..=r.last).collect();
            prop_assert_eq!(&held, &received);
            for pair in runs.windows(2) {
                prop_assert!(pair[0].last + 1 < pair[1].first, "runs {:?} should have merged", pair);
            }
            let all: Vec<u64> = received.iter().copied().filter(|s| *s > 10 && *s < 40).collect();
            prop_assert_eq!(received_between(&runs, 10, 40), all);
        }
    }
}

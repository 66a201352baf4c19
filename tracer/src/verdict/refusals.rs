//! The kernel's exact count of refused edge SYNs against what the events said, carried
//! across windows so a refusal is counted once even when its events arrive late.

use crate::correlate::Counts;

/// Refusals the kernel counted whose events had not arrived when their window closed, carried
/// from window to window: their events may still come out of the ring in a later window (a
/// flood fills it faster than it is read), and must not be counted a second time then.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RefusalLedger {
    /// Refusals added from the kernel's count whose events have not been read since.
    pub credited: u64,
}

/// The kernel's own count of refused edge SYNs (exact under any load; a refused SYN is not
/// retransmitted, so each is one attempt) against what the events said: attempts of unknown
/// outcome it accounts for are refusals, and refusals none of whose events arrived are added.
/// A flood that overflows the ring still shows as the refusals it is. Events beyond the
/// window's own count are late ones of refusals an earlier window already added: absorbed.
pub(super) fn reconcile_refusals(
    mut edge: Counts,
    kernel_refused: u64,
    ledger: &mut RefusalLedger,
    notes: &mut Vec<String>,
) -> Counts {
    let late = edge
        .refused
        .saturating_sub(kernel_refused)
        .min(ledger.credited);
    if late > 0 {
        ledger.credited -= late;
        edge.refused -= late;
        edge.syn = edge.syn.saturating_sub(late);
        notes.push(format!(
            "{late} refusals read late from the ring were already counted, from the kernel's own count, in an earlier window"
        ));
    }
    let missing = kernel_refused.saturating_sub(edge.refused);
    if missing == 0 {
        return edge;
    }
    let from_unknown = missing.min(edge.unknown);
    let unseen = missing - from_unknown;
    edge.unknown -= from_unknown;
    edge.refused += missing;
    edge.syn += unseen;
    ledger.credited += missing;
    notes.push(format!(
        "the kernel itself counted {kernel_refused} refused edge SYNs: {from_unknown} attempts whose answer was lost and {unseen} whose every event was lost are counted as refused"
    ));
    edge
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernels_refusal_count_turns_unknown_attempts_into_refusals() {
        let edge = Counts {
            syn: 1000,
            refused: 100,
            unknown: 900,
            ..Counts::default()
        };
        let mut notes = Vec::new();
        let e = reconcile_refusals(edge, 950, &mut RefusalLedger::default(), &mut notes);
        assert_eq!((e.syn, e.refused, e.unknown), (1000, 950, 50));
        assert!(
            notes[0].contains("850 attempts whose answer was lost and 0"),
            "{notes:?}"
        );
        // Refusals none of whose events arrived are added as attempts.
        let e = reconcile_refusals(edge, 5000, &mut RefusalLedger::default(), &mut Vec::new());
        assert_eq!((e.syn, e.refused, e.unknown), (5000, 5000, 0));
        let mut none = Vec::new();
        let e = reconcile_refusals(edge, 100, &mut RefusalLedger::default(), &mut none);
        assert_eq!(e, edge);
        assert!(none.is_empty());
    }

    /// A flood: the first window closes with most events still in (or lost from) the ring;
    /// the kernel's count fills the gap. The late events read in the next window are that gap,
    /// not new refusals: over both windows the refusals are the kernel's count, exactly.
    #[test]
    fn late_events_of_refusals_already_counted_are_not_counted_again() {
        let mut ledger = RefusalLedger::default();
        let first = Counts {
            syn: 141_000,
            refused: 141_000,
            ..Counts::default()
        };
        let a = reconcile_refusals(first, 200_000, &mut ledger, &mut Vec::new());
        assert_eq!((a.syn, a.refused), (200_000, 200_000));
        assert_eq!(ledger.credited, 59_000);
        let late = Counts {
            syn: 10_701,
            refused: 10_701,
            ..Counts::default()
        };
        let mut notes = Vec::new();
        let b = reconcile_refusals(late, 0, &mut ledger, &mut notes);
        assert_eq!((b.syn, b.refused), (0, 0));
        assert_eq!(ledger.credited, 59_000 - 10_701);
        assert!(notes[0].contains("10701 refusals read late"), "{notes:?}");
        // A later window's own refusals are its own, whatever credit is left.
        let own = Counts {
            syn: 3,
            refused: 3,
            ..Counts::default()
        };
        let c = reconcile_refusals(own, 3, &mut ledger, &mut Vec::new());
        assert_eq!((c.syn, c.refused), (3, 3));
        assert_eq!(ledger.credited, 59_000 - 10_701);
    }
}

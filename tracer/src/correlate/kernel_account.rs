//! Edge outcomes held to the kernel's exact count of refused edge SYNs, port by port. Under a
//! flood the ring loses events: a refusal whose reset was lost ends `unknown` (or waits for an
//! answer that never comes), one whose every event was lost is never seen at all. The kernel
//! counts each refusal before it asks the ring for space, so the counts per port are exact;
//! this turns the events' outcomes into counts that agree with them:
//!
//! - an edge attempt ending `unknown` at a port where the kernel counted more refusals than
//!   were counted so far is a refusal;
//! - refusals the kernel counted more than [`SETTLE`] ago that no attempt accounts for are
//!   credited (counted as refused now), and an attempt that ends later and is one of them —
//!   refused, or unknown — is absorbed, never counted twice.
//!
//! Pure: the agent feeds it decisions and the kernel's counts; unit tests drive it.

use std::collections::{BTreeMap, VecDeque};

use super::Outcome;

/// The kernel's refusal counts by port.
pub type ByPort = BTreeMap<u16, u64>;

/// Refusals this old that no decided attempt accounts for are credited: a refused attempt is
/// decided when its reset is read, well within this.
pub const SETTLE_SECS: usize = 3;
/// A credit no attempt claimed after this many readings never will be (an attempt without an
/// answer ends within 25 s): it lapses, so it cannot absorb later attempts' outcomes.
pub const CREDIT_READINGS: u64 = 30;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Port {
    /// Refusals counted (decided or credited).
    counted: u64,
    /// Credited refusals whose attempt has not ended yet: (reading, how many), oldest first.
    credited: VecDeque<(u64, u64)>,
}

impl Port {
    /// Takes one credit, if any: the attempt that ended is one already counted.
    fn absorb(&mut self) -> bool {
        let Some(front) = self.credited.front_mut() else {
            return false;
        };
        front.1 -= 1;
        if front.1 == 0 {
            self.credited.pop_front();
        }
        true
    }
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct KernelAccount {
    ports: BTreeMap<u16, Port>,
    /// The kernel's counts by port, one reading a second, oldest first.
    readings: VecDeque<BTreeMap<u16, u64>>,
    /// Readings taken so far.
    taken: u64,
}

impl KernelAccount {
    /// An edge attempt at `port` ended with `outcome`; `kernel` is the kernel's count of
    /// refusals at that port now. Returns the outcome to count, or `None` when the attempt
    /// was already counted (credited).
    pub fn decided(&mut self, port: u16, outcome: Outcome, kernel: u64) -> Option<Outcome> {
        let p = self.ports.entry(port).or_default();
        match outcome {
            Outcome::Refused | Outcome::Unknown if p.absorb() => None,
            Outcome::Refused => {
                p.counted += 1;
                Some(Outcome::Refused)
            }
            Outcome::Unknown if kernel > p.counted => {
                p.counted += 1;
                Some(Outcome::Refused)
            }
            other => Some(other),
        }
    }

    /// The kernel's counts by port now (call once a second). Returns the refusals to count
    /// now by port: those older than [`SETTLE_SECS`] that no attempt accounted for.
    #[cfg(test)]
    pub fn reading(&mut self, kernel: BTreeMap<u16, u64>) -> Vec<(u16, u64)> {
        self.settle(kernel).0
    }

    /// [`KernelAccount::reading`], and the settled reading itself (the kernel's counts
    /// [`SETTLE_SECS`] ago: every SYN of those refusals has been read, or lost, by now).
    pub fn settle(&mut self, kernel: ByPort) -> (Vec<(u16, u64)>, Option<ByPort>) {
        self.taken += 1;
        let taken = self.taken;
        for p in self.ports.values_mut() {
            p.credited.retain(|(at, _)| taken - at < CREDIT_READINGS);
        }
        self.readings.push_back(kernel);
        if self.readings.len() <= SETTLE_SECS {
            return (Vec::new(), None);
        }
        let Some(settled) = self.readings.pop_front() else {
            return (Vec::new(), None);
        };
        let mut credit = Vec::new();
        for (&port, &n) in &settled {
            let p = self.ports.entry(port).or_default();
            if n > p.counted {
                let missing = n - p.counted;
                p.counted += missing;
                p.credited.push_back((taken, missing));
                credit.push((port, missing));
            }
        }
        (credit, Some(settled))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(port: u16, n: u64) -> BTreeMap<u16, u64> {
        BTreeMap::from([(port, n)])
    }

    #[test]
    fn unknowns_the_kernel_counted_as_refused_are_refusals() {
        let mut k = KernelAccount::default();
        assert_eq!(k.decided(443, Outcome::Refused, 3), Some(Outcome::Refused));
        // Two more refused by the kernel: the two unknown attempts are they.
        assert_eq!(k.decided(443, Outcome::Unknown, 3), Some(Outcome::Refused));
        assert_eq!(k.decided(443, Outcome::Unknown, 3), Some(Outcome::Refused));
        // Beyond the kernel's count an unknown stays unknown; other outcomes are untouched.
        assert_eq!(k.decided(443, Outcome::Unknown, 3), Some(Outcome::Unknown));
        assert_eq!(
            k.decided(443, Outcome::Handshake, 3),
            Some(Outcome::Handshake)
        );
        // Another port has its own count.
        assert_eq!(k.decided(8443, Outcome::Unknown, 0), Some(Outcome::Unknown));
    }

    #[test]
    fn unseen_refusals_are_credited_once_settled_and_late_ones_absorbed() {
        let mut k = KernelAccount::default();
        // The kernel counted 10 refusals at 443; 6 attempts were decided refused.
        for _ in 0..6 {
            k.decided(443, Outcome::Refused, 10);
        }
        for _ in 0..SETTLE_SECS {
            assert!(k.reading(at(443, 10)).is_empty(), "not settled yet");
        }
        assert_eq!(k.reading(at(443, 10)), vec![(443, 4)]);
        assert!(k.reading(at(443, 10)).is_empty(), "credited once");
        // Two of the four end late (a reset read late, an attempt ended unknown): absorbed.
        assert_eq!(k.decided(443, Outcome::Refused, 10), None);
        assert_eq!(k.decided(443, Outcome::Unknown, 10), None);
        // Two credits never claimed: they lapse, and later outcomes count as they are.
        for _ in 0..CREDIT_READINGS {
            k.reading(at(443, 10));
        }
        assert_eq!(k.decided(443, Outcome::Refused, 11), Some(Outcome::Refused));
        assert_eq!(k.decided(443, Outcome::Unknown, 11), Some(Outcome::Unknown));
        // Whatever the order, the total counted is the kernel's.
        assert_eq!(k.ports[&443].counted, 11);
    }
}

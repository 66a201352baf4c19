//! Attempts counted by outcome: what a window reports for edge and non-edge peers.

use super::{Attempt, Outcome};

/// Distinct attempts by outcome, for one peer class (edge or not).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub syn: u64,
    pub handshakes: u64,
    pub refused: u64,
    pub firewall_drops: u64,
    pub overload_drops: u64,
    pub origin_resets: u64,
    pub unanswered: u64,
    pub other_drops: u64,
    /// Attempts whose answer may be among events the kernel lost.
    pub unknown: u64,
}

impl Counts {
    pub fn add(&mut self, a: &Attempt) {
        self.syn += 1;
        if a.established {
            self.handshakes += 1;
        }
        match a.outcome() {
            Outcome::Handshake => {}
            Outcome::OriginReset => self.origin_resets += 1,
            Outcome::Refused => self.refused += 1,
            Outcome::FirewallDrop => self.firewall_drops += 1,
            Outcome::OverloadDrop => self.overload_drops += 1,
            Outcome::Unanswered => self.unanswered += 1,
            Outcome::OtherDrop => self.other_drops += 1,
            Outcome::Unknown => self.unknown += 1,
        }
    }
}

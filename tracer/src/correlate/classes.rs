//! Edge attempts by outcome and kernel reason, with the peers each came from: what lets a
//! cause name the addresses behind it ("only 104.16.0.0/13 fails") and split drops by reason.
//! Bounded: a SYN flood from millions of addresses keeps counting attempts, not peers.

use std::{collections::BTreeMap, net::IpAddr};

use crate::{
    correlate::{Attempt, Outcome},
    reasons::{Reason, ReasonTable},
    verdict::AttemptClass,
};

/// Distinct peers remembered per class; attempts beyond are still counted.
const MAX_PEERS: usize = 1024;
/// Peers handed to the verdict per class.
const PEERS_KEPT: usize = 16;

#[derive(Default, Debug, Clone)]
struct ClassTally {
    attempts: u64,
    peers: BTreeMap<IpAddr, u64>,
}

#[derive(Default, Debug, Clone)]
pub struct Classes {
    by: BTreeMap<(Outcome, Option<Reason>), ClassTally>,
}

impl Classes {
    /// Counts an edge attempt under `outcome` with the reason the kernel gave for it.
    pub fn add(&mut self, a: &Attempt, outcome: Outcome) {
        let reason = a.reason_for(outcome);
        let class = self.by.entry((outcome, reason)).or_default();
        class.attempts += 1;
        let room = class.peers.len() < MAX_PEERS;
        if let Some(n) = class.peers.get_mut(&a.flow.peer) {
            *n += 1;
        } else if room {
            class.peers.insert(a.flow.peer, 1);
        }
    }

    /// The classes with reasons named for this kernel, each with its busiest peers.
    pub fn named(&self, names: &ReasonTable) -> Vec<AttemptClass> {
        self.by
            .iter()
            .map(|((outcome, reason), t)| {
                let mut peers: Vec<(IpAddr, u64)> = t.peers.iter().map(|(a, n)| (*a, *n)).collect();
                peers.sort_by_key(|(a, n)| (std::cmp::Reverse(*n), *a));
                peers.truncate(PEERS_KEPT);
                AttemptClass {
                    outcome: Some(*outcome),
                    reason: reason.map(|r| names.name(r).into_owned()),
                    attempts: t.attempts,
                    peers,
                }
            })
            .collect()
    }
}

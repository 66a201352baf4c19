//! A tunnel process's dials, counted by what they dialled: how many, how many connected,
//! which failed and with what error. The window's report decides from these which dials
//! went to the service and which to the edge.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    time::SystemTime,
};

use crate::{
    model::dial::{DialEvent, DialStep, SocketError},
    reasons::Reason,
};

/// Targets counted, at most: a process dialling thousands of addresses must not grow the
/// window without bound (the rest are counted together under the last target kept).
const MAX_TARGETS: usize = 256;

/// What became of the dials to one address and port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DialCounts {
    /// connect() calls.
    pub dials: u64,
    pub connected: u64,
    /// Dials that never connected, by the socket's error (`None`: unknown on this kernel).
    /// Error 0 is a dial its process gave up (Go cancels the slower of two dials).
    pub failed: BTreeMap<Option<SocketError>, u64>,
    /// Established connections that ended with an error (a reset), by the error.
    pub ended: BTreeMap<Option<SocketError>, u64>,
    /// SYNs of these dials the kernel dropped, by its reason (`None`: a kernel without
    /// reasons). A dial whose SYNs are dropped retransmits them: several per dial.
    pub syn_drops: BTreeMap<Option<Reason>, u64>,
    /// The processes that dialled.
    pub pids: BTreeSet<u32>,
    pub first_failure: Option<SystemTime>,
}

impl DialCounts {
    /// Dials that failed: given up by the process are not failures.
    pub fn failures(&self) -> u64 {
        self.failed
            .iter()
            .filter(|(e, _)| **e != Some(SocketError(SocketError::NONE)))
            .map(|(_, n)| n)
            .sum()
    }

    /// Dials that did not connect, for whatever reason: failed, unanswered, given up.
    pub fn not_connected(&self) -> u64 {
        self.failures() + self.unanswered() + self.abandoned()
    }

    /// Dials given up by the process itself (a timeout of its own, or the slower of two).
    pub fn abandoned(&self) -> u64 {
        self.failed
            .get(&Some(SocketError(SocketError::NONE)))
            .copied()
            .unwrap_or(0)
    }

    /// Dials with no answer by the window's end (a dropped SYN retransmits for minutes).
    pub fn unanswered(&self) -> u64 {
        self.dials
            .saturating_sub(self.connected + self.failures() + self.abandoned())
    }

    /// Connections reset after they were established.
    pub fn resets(&self) -> u64 {
        self.ended.values().sum()
    }

    /// "12 refused (ECONNREFUSED), 3 timed out (ETIMEDOUT)"
    pub fn failures_text(&self) -> String {
        let mut parts: Vec<String> = self
            .failed
            .iter()
            .filter(|(e, _)| **e != Some(SocketError(SocketError::NONE)))
            .map(|(e, n)| match e {
                Some(e) => format!("{n} {} ({})", failure_word(*e), e.name()),
                None => format!("{n} failed"),
            })
            .collect();
        if self.unanswered() > 0 {
            parts.push(format!("{} unanswered", self.unanswered()));
        }
        if self.abandoned() > 0 {
            parts.push(format!(
                "{} given up by the process before an answer",
                self.abandoned()
            ));
        }
        if self.resets() > 0 {
            parts.push(format!("{} reset after connecting", self.resets()));
        }
        parts.join(", ")
    }

    fn add(&mut self, other: &DialCounts) {
        self.dials += other.dials;
        self.connected += other.connected;
        for (e, n) in &other.failed {
            *self.failed.entry(*e).or_default() += n;
        }
        for (e, n) in &other.ended {
            *self.ended.entry(*e).or_default() += n;
        }
        for (r, n) in &other.syn_drops {
            *self.syn_drops.entry(*r).or_default() += n;
        }
        self.pids.extend(&other.pids);
        self.first_failure = match (self.first_failure, other.first_failure) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

fn failure_word(e: SocketError) -> &'static str {
    match e.0 {
        SocketError::ECONNREFUSED => "refused",
        SocketError::ETIMEDOUT => "timed out",
        SocketError::EHOSTUNREACH | SocketError::ENETUNREACH => "unreachable",
        SocketError::EPERM => "blocked",
        _ => "failed",
    }
}

/// A window's dials by target.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dials {
    pub by_target: BTreeMap<SocketAddr, DialCounts>,
}

impl Dials {
    pub fn observe(&mut self, e: &DialEvent) {
        let full = self.by_target.len() >= MAX_TARGETS && !self.by_target.contains_key(&e.target);
        let key = if full {
            *self.by_target.keys().next_back().expect("full")
        } else {
            e.target
        };
        let c = self.by_target.entry(key).or_default();
        c.pids.insert(e.pid);
        match e.step {
            DialStep::Connecting => c.dials += 1,
            DialStep::Connected => c.connected += 1,
            DialStep::Failed(err) => {
                *c.failed.entry(err).or_default() += 1;
                if err != Some(SocketError(SocketError::NONE)) {
                    c.first_failure.get_or_insert(e.ts);
                }
            }
            DialStep::Ended(err) => {
                *c.ended.entry(err).or_default() += 1;
                c.first_failure.get_or_insert(e.ts);
            }
            DialStep::SynDropped(reason) => {
                *c.syn_drops.entry(reason).or_default() += 1;
                c.first_failure.get_or_insert(e.ts);
            }
        }
    }

    /// The dials whose target `is_edge` says so, summed.
    pub fn total(&self, is_edge: impl Fn(&SocketAddr) -> bool) -> DialCounts {
        let mut sum = DialCounts::default();
        for (_, c) in self.by_target.iter().filter(|(t, _)| is_edge(t)) {
            sum.add(c);
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(target: &str, step: DialStep) -> DialEvent {
        DialEvent {
            ts: SystemTime::UNIX_EPOCH,
            pid: 812,
            netns: 1,
            target: target.parse().unwrap(),
            step,
        }
    }

    #[test]
    fn dials_are_counted_by_target_and_error() {
        let mut d = Dials::default();
        let refused = Some(SocketError(SocketError::ECONNREFUSED));
        for _ in 0..3 {
            d.observe(&ev("[::1]:8080", DialStep::Connecting));
            d.observe(&ev("[::1]:8080", DialStep::Failed(refused)));
        }
        d.observe(&ev("127.0.0.1:8080", DialStep::Connecting));
        d.observe(&ev("127.0.0.1:8080", DialStep::Connected));
        // Given up by the process (the slower of two dials): neither failed nor unanswered.
        d.observe(&ev("127.0.0.1:8080", DialStep::Connecting));
        d.observe(&ev(
            "127.0.0.1:8080",
            DialStep::Failed(Some(SocketError(0))),
        ));
        d.observe(&ev("127.0.0.1:9000", DialStep::Connecting));
        // Its SYN dropped twice (the first and a retransmission): still one dial, unanswered.
        let table = crate::reasons::ReasonTable::for_tests(&[(6, "NETFILTER_DROP")], &[]);
        for _ in 0..2 {
            d.observe(&ev(
                "127.0.0.1:9000",
                DialStep::SynDropped(Some(table.drop_reason(6))),
            ));
        }
        let v6 = &d.by_target[&"[::1]:8080".parse().unwrap()];
        assert_eq!((v6.dials, v6.failures(), v6.unanswered()), (3, 3, 0));
        assert_eq!(v6.failures_text(), "3 refused (ECONNREFUSED)");
        let v4 = &d.by_target[&"127.0.0.1:8080".parse().unwrap()];
        assert_eq!((v4.connected, v4.failures(), v4.abandoned()), (1, 0, 1));
        assert_eq!(v4.unanswered(), 0);
        let silent = &d.by_target[&"127.0.0.1:9000".parse().unwrap()];
        assert_eq!(silent.failures_text(), "1 unanswered");
        assert_eq!(silent.syn_drops[&Some(table.drop_reason(6))], 2);
        assert!(silent.first_failure.is_some());
        let all = d.total(|_| true);
        assert_eq!((all.dials, all.connected, all.failures()), (6, 1, 3));
    }

    #[test]
    fn targets_are_bounded() {
        let mut d = Dials::default();
        for port in 1..=1000u16 {
            d.observe(&ev(&format!("10.0.0.1:{port}"), DialStep::Connecting));
        }
        assert_eq!(d.by_target.len(), MAX_TARGETS);
        assert_eq!(d.total(|_| true).dials, 1000);
    }
}

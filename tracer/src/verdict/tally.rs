//! A window's finished attempts, tallied: counts by class, the classes of edge attempts, the
//! flows the firewall and routes are checked for, where forwarded attempts went.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use crate::{
    correlate::classes::Classes,
    correlate::{Attempt, Backend, Counts, Outcome, ReplyDrop},
    model::event::Flow,
    origin::firewall::Packet,
    reasons::Reason,
};

/// How many distinct dropped flows are checked against the firewall ruleset.
const FIREWALL_SAMPLES: usize = 8;

#[derive(Default, Debug, Clone)]
pub struct Tally {
    pub edge: Counts,
    pub non_edge: Counts,
    /// (local address, port) of edge attempts refused where they arrived.
    pub(super) refused_targets: BTreeSet<(IpAddr, u16)>,
    pub(super) filter_reasons: BTreeMap<Reason, u64>,
    pub(super) other_reasons: BTreeMap<Reason, u64>,
    pub(super) filtered: Vec<Packet>,
    pub(super) synack_retransmits: u64,
    /// Edge attempts the host forwarded, by (backend, edge port) and outcome.
    pub(super) backends: BTreeMap<(Backend, u16), BTreeMap<Outcome, u64>>,
    /// Edge attempts nothing answered, where no event said where they went: conntrack may
    /// (a backend dropping SYNs silently, its accept queue full). Bounded.
    pub(super) silent: Vec<(Flow, Outcome)>,
    /// Edge attempts by outcome and reason, with their peers.
    pub(super) classes: Classes,
    /// (peer, local) of attempts answered without completing or dropped by the reverse-path
    /// filter: the routes back are looked up for these. Bounded.
    pub(super) return_samples: Vec<(IpAddr, IpAddr)>,
    /// Edge handshakes the origin reset or closed within a second of the SYN, by port: the
    /// trace a failing TLS handshake leaves in the kernel.
    pub(super) quick_closes: BTreeMap<u16, u64>,
    /// The ports edge attempts reached: a TLS check is judged on these (or on ports given by
    /// name), a stray listener the edge never reached is not Cloudflare's problem.
    pub(super) edge_ports: BTreeSet<u16>,
    /// The edge's completed handshakes: how long each took.
    pub(super) handshakes: crate::correlate::timing::Handshakes,
    /// The window's exchanges on edge connections (set by the caller at the window's end).
    pub exchanges: crate::correlate::exchanges::ExchangeWindow,
    /// (first packet, failed) of each edge attempt, for when a failure began. Bounded.
    pub timeline: Vec<(std::time::SystemTime, bool)>,
    /// Edge attempts whose answer a filter dropped on its way out, by where and why, with
    /// one of them to test the ruleset there with. Bounded by namespaces × reasons.
    pub(super) reply_drops: BTreeMap<ReplyDrop, (u64, Packet)>,
}

/// Edge attempts kept on the timeline, at most.
const TIMELINE: usize = 200_000;

/// Routes back looked up, at most.
const ROUTE_SAMPLES: usize = 8;

/// Silent attempts kept for the conntrack lookup, at most.
const SILENT_SAMPLES: usize = 4096;

impl Tally {
    /// An attempt counted as a handshake earlier was reset by the origin (live mode).
    pub fn add_late_reset(&mut self, a: &Attempt) {
        if a.edge {
            self.edge.origin_resets += 1;
            self.classes.add(a, Outcome::OriginReset);
            self.add_backend(a, Outcome::OriginReset);
        } else {
            self.non_edge.origin_resets += 1;
        }
    }

    fn add_backend(&mut self, a: &Attempt, outcome: Outcome) {
        if let Some(b) = a.backend {
            *self
                .backends
                .entry((b, a.flow.local_port))
                .or_default()
                .entry(outcome)
                .or_default() += 1;
        }
    }

    pub fn add(&mut self, a: &Attempt) {
        if !a.edge {
            self.non_edge.add(a);
            return;
        }
        self.edge.add(a);
        self.edge_ports.insert(a.flow.local_port);
        self.synack_retransmits += u64::from(a.synack_retransmits);
        let outcome = a.outcome();
        if let Some(t) = a.handshake_time() {
            self.handshakes.add(t, a.syn_packets, a.synack_retransmits);
        }
        self.classes.add(a, outcome);
        self.add_backend(a, outcome);
        if outcome != Outcome::Unknown && self.timeline.len() < TIMELINE {
            self.timeline.push((a.first, outcome != Outcome::Handshake));
        }
        let quick = a
            .last
            .duration_since(a.first)
            .is_ok_and(|d| d <= std::time::Duration::from_secs(1));
        if a.established && (a.origin_reset || a.origin_closed_first) && quick {
            *self.quick_closes.entry(a.flow.local_port).or_default() += 1;
        }
        // Any unanswered attempt: a null route leaves no SYN-ACK to retransmit.
        let returns = outcome == Outcome::Unanswered || outcome == Outcome::OtherDrop;
        if let (Outcome::Unanswered, Some(r)) = (outcome, a.reply_drop) {
            if self.reply_drops.len() < FIREWALL_SAMPLES || self.reply_drops.contains_key(&r) {
                let (local, port) = a
                    .backend
                    .map_or((a.flow.local, a.flow.local_port), |b| (b.addr, b.port));
                let sample = Packet {
                    peer: a.flow.peer,
                    peer_port: Some(a.flow.peer_port),
                    local,
                    port,
                    forwarded: false,
                    iface: None,
                    reply: true,
                };
                self.reply_drops.entry(r).or_insert((0, sample)).0 += 1;
            }
        }
        let sample = (a.flow.peer, a.flow.local);
        if returns
            && self.return_samples.len() < ROUTE_SAMPLES
            && !self.return_samples.contains(&sample)
        {
            self.return_samples.push(sample);
        }
        let silent = matches!(outcome, Outcome::Unanswered | Outcome::OverloadDrop);
        if silent && a.backend.is_none() && self.silent.len() < SILENT_SAMPLES {
            self.silent.push((a.flow, outcome));
        }
        match outcome {
            Outcome::Refused if a.backend.is_none() => {
                self.refused_targets
                    .insert((a.flow.local, a.flow.local_port));
            }
            Outcome::FirewallDrop => {
                if let Some(reason) = a.filter_drop {
                    *self.filter_reasons.entry(reason).or_default() += 1;
                }
                // A forwarded packet is filtered at its rewritten destination.
                let p = match a.backend {
                    Some(b) => Packet {
                        peer: a.flow.peer,
                        peer_port: Some(a.flow.peer_port),
                        local: b.addr,
                        port: b.port,
                        forwarded: true,
                        iface: None,
                        reply: false,
                    },
                    None => Packet {
                        peer: a.flow.peer,
                        peer_port: Some(a.flow.peer_port),
                        local: a.flow.local,
                        port: a.flow.local_port,
                        forwarded: false,
                        iface: None,
                        reply: false,
                    },
                };
                let seen = self.filtered.iter().any(|q| {
                    q.port == p.port
                        && q.forwarded == p.forwarded
                        && q.peer.is_ipv4() == p.peer.is_ipv4()
                });
                if !seen && self.filtered.len() < FIREWALL_SAMPLES {
                    self.filtered.push(p);
                }
            }
            Outcome::OtherDrop => {
                if let Some(reason) = a.other_drop {
                    *self.other_reasons.entry(reason).or_default() += 1;
                }
            }
            _ => {}
        }
    }
}

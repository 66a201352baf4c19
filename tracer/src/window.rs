//! One observation window: finished attempts tallied, the origin's state sampled, and the
//! report built. `diagnose` runs one window; `agent` runs them back to back.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::SystemTime,
};

use crate::{
    correlate::{drop_class, Attempt, Counts, DropClass, Outcome},
    origin::{
        counters,
        firewall::{Packet, Ruleset},
        listeners::{self, Listener},
    },
    ranges::RangeSet,
    report::{window_value, RangesInfo, Report},
    verdict::{decide, Inputs},
};

/// How many distinct dropped flows are checked against the firewall ruleset.
const FIREWALL_SAMPLES: usize = 8;

#[derive(Default, Debug, Clone)]
pub struct Tally {
    pub edge: Counts,
    pub non_edge: Counts,
    refused_targets: BTreeSet<(IpAddr, u16)>,
    filter_reasons: BTreeMap<String, u64>,
    other_reasons: BTreeMap<String, u64>,
    filtered: Vec<Packet>,
    synack_retransmits: u64,
}

impl Tally {
    /// An attempt counted as a handshake earlier was reset by the origin (live mode).
    pub fn add_late_reset(&mut self, a: &Attempt) {
        if a.edge {
            self.edge.origin_resets += 1;
        } else {
            self.non_edge.origin_resets += 1;
        }
    }

    pub fn add(&mut self, a: &Attempt) {
        if !a.edge {
            self.non_edge.add(a);
            return;
        }
        self.edge.add(a);
        self.synack_retransmits += u64::from(a.synack_retransmits);
        match a.outcome() {
            Outcome::Refused => {
                self.refused_targets
                    .insert((a.flow.local, a.flow.local_port));
            }
            Outcome::FirewallDrop => {
                let reason = a.filter_drop.clone().unwrap_or_default();
                *self.filter_reasons.entry(reason.into_owned()).or_default() += 1;
                let p = Packet {
                    peer: a.flow.peer,
                    local: a.flow.local,
                    port: a.flow.local_port,
                };
                let seen = self
                    .filtered
                    .iter()
                    .any(|q| q.port == p.port && q.peer.is_ipv4() == p.peer.is_ipv4());
                if !seen && self.filtered.len() < FIREWALL_SAMPLES {
                    self.filtered.push(p);
                }
            }
            Outcome::OtherDrop => {
                let reason = a.other_drop.clone().unwrap_or_default();
                debug_assert_eq!(drop_class(&reason), DropClass::Other);
                *self.other_reasons.entry(reason.into_owned()).or_default() += 1;
            }
            _ => {}
        }
    }
}

/// The origin's listeners and counters at the start, sampled during, compared at the end.
pub struct OriginSampler {
    start_counters: BTreeMap<String, u64>,
    full_queues: Vec<Listener>,
}

impl OriginSampler {
    pub fn start() -> Self {
        let mut s = Self {
            start_counters: counters::read(),
            full_queues: Vec::new(),
        };
        s.sample();
        s
    }

    /// Looks for full accept queues now (they can drain before the window ends).
    pub fn sample(&mut self) {
        for l in listeners::read().into_iter().filter(Listener::queue_full) {
            match self
                .full_queues
                .iter_mut()
                .find(|f| f.addr == l.addr && f.port == l.port)
            {
                Some(f) => f.accept_queue = f.accept_queue.max(l.accept_queue),
                None => self.full_queues.push(l),
            }
        }
    }

    /// (listeners now, counter deltas, listeners seen full) — and restarts for the next window.
    pub fn finish(&mut self) -> (Vec<Listener>, BTreeMap<String, u64>, Vec<Listener>) {
        self.sample();
        let now = counters::read();
        let delta = counters::delta(&self.start_counters, &now);
        self.start_counters = now;
        let full = std::mem::take(&mut self.full_queues);
        (listeners::read(), delta, full)
    }
}

pub struct WindowContext<'a> {
    pub interface: &'a str,
    pub ports: &'a [u16],
    pub window_secs: f64,
    pub started_at: SystemTime,
    pub ranges: &'a RangeSet,
    pub notes: &'a [String],
    pub xdp_mode: &'a str,
    pub lost_events: u64,
    pub packets_seen: u64,
}

/// Builds the report; reads the firewall ruleset only when edge packets were filtered.
pub fn report(tally: &Tally, sampler: &mut OriginSampler, ctx: &WindowContext<'_>) -> Report {
    let (listeners, deltas, full) = sampler.finish();
    let firewall = if tally.edge.firewall_drops > 0 {
        Ruleset::read().map(|rs| {
            let mut findings = Vec::new();
            for p in &tally.filtered {
                for f in rs.blocking(*p) {
                    if !findings.contains(&f) {
                        findings.push(f);
                    }
                }
            }
            findings
        })
    } else {
        Ok(Vec::new())
    };
    let inputs = Inputs {
        interface: ctx.interface,
        ports: ctx.ports,
        window_secs: ctx.window_secs,
        edge: tally.edge,
        non_edge: tally.non_edge,
        refused_targets: tally.refused_targets.iter().copied().collect(),
        filter_reasons: tally.filter_reasons.clone(),
        other_reasons: tally.other_reasons.clone(),
        filtered_ports: tally.filtered.iter().map(|p| p.port).collect(),
        listeners: &listeners,
        full_queues: &full,
        counter_deltas: &deltas,
        synack_retransmits: tally.synack_retransmits,
        firewall,
        packets_seen: ctx.packets_seen,
        ranges: ctx.ranges,
    };
    let (verdict, causes) = decide(&inputs);
    Report {
        verdict,
        window_secs: window_value(ctx.window_secs),
        interface: ctx.interface.to_string(),
        ports: ctx.ports.to_vec(),
        edge: tally.edge,
        non_edge: tally.non_edge,
        causes,
        listeners,
        counters: deltas,
        ranges: RangesInfo::of(ctx.ranges),
        lost_events: ctx.lost_events,
        started_at: humantime::format_rfc3339_seconds(ctx.started_at).to_string(),
        xdp_mode: ctx.xdp_mode.to_string(),
        notes: ctx.notes.to_vec(),
    }
}

//! One observation window: finished attempts tallied, the origin's state sampled, and the
//! report built. `diagnose` runs one window; `agent` runs them back to back.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::SystemTime,
};

use crate::{
    capture::WindowCounts,
    correlate::classes::Classes,
    correlate::{Attempt, Backend, Counts, Outcome, ReplyDrop},
    model::event::Flow,
    origin::{
        backends, conntrack, counters,
        firewall::{Packet, Ruleset},
        listeners::{self, Listener},
        namespaces::Place,
        routes,
    },
    output::report::{window_value, RangesInfo, Report},
    ranges::RangeSet,
    reasons::{Reason, ReasonTable},
    verdict::{decide, Inputs, ReplyDrops},
};

/// How many distinct dropped flows are checked against the firewall ruleset.
const FIREWALL_SAMPLES: usize = 8;

#[derive(Default, Debug, Clone)]
pub struct Tally {
    pub edge: Counts,
    pub non_edge: Counts,
    /// (local address, port) of edge attempts refused where they arrived.
    refused_targets: BTreeSet<(IpAddr, u16)>,
    filter_reasons: BTreeMap<Reason, u64>,
    other_reasons: BTreeMap<Reason, u64>,
    filtered: Vec<Packet>,
    synack_retransmits: u64,
    /// Edge attempts the host forwarded, by (backend, edge port) and outcome.
    backends: BTreeMap<(Backend, u16), BTreeMap<Outcome, u64>>,
    /// Edge attempts nothing answered, where no event said where they went: conntrack may
    /// (a backend dropping SYNs silently, its accept queue full). Bounded.
    silent: Vec<(Flow, Outcome)>,
    /// Edge attempts by outcome and reason, with their peers.
    classes: Classes,
    /// (peer, local) of attempts answered without completing or dropped by the reverse-path
    /// filter: the routes back are looked up for these. Bounded.
    return_samples: Vec<(IpAddr, IpAddr)>,
    /// Edge handshakes the origin reset or closed within a second of the SYN, by port: the
    /// trace a failing TLS handshake leaves in the kernel.
    quick_closes: BTreeMap<u16, u64>,
    /// (first packet, failed) of each edge attempt, for when a failure began. Bounded.
    pub timeline: Vec<(std::time::SystemTime, bool)>,
    /// Edge attempts whose answer a filter dropped on its way out, by where and why, with
    /// one of them to test the ruleset there with. Bounded by namespaces × reasons.
    reply_drops: BTreeMap<ReplyDrop, (u64, Packet)>,
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
        self.synack_retransmits += u64::from(a.synack_retransmits);
        let outcome = a.outcome();
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
    /// The tracer's namespace (its listeners are read directly).
    pub netns: u32,
    /// Names of the kernel's reasons.
    pub reasons: &'a ReasonTable,
    /// The host forwards edge connections to other namespaces (and the tracer follows them).
    pub follows_forwarded: bool,
    pub ports: &'a [u16],
    pub window_secs: f64,
    pub started_at: SystemTime,
    pub ranges: &'a RangeSet,
    pub notes: &'a [String],
    pub xdp_mode: &'a str,
    pub arrival_hook: &'a str,
    /// Lost events, refused edge SYNs and frames, as the kernel counted them in the window.
    pub counted: WindowCounts,
    /// A TLS check (--hostname) runs beside this window.
    pub tls_checked: bool,
}

/// Builds the report; reads the firewall ruleset only when edge packets were filtered or
/// forwarded.
pub fn report(
    tally: &Tally,
    sampler: &mut OriginSampler,
    ctx: &WindowContext<'_>,
    ledger: &mut RefusalLedger,
) -> Report {
    let mut notes = ctx.notes.to_vec();
    let edge = reconcile_refusals(tally.edge, ctx.counted.kernel_refused, ledger, &mut notes);
    let (own_listeners, deltas, mut full) = sampler.finish();
    let forwarded =
        !tally.backends.is_empty() || (ctx.follows_forwarded && !tally.silent.is_empty());
    let ruleset = (tally.edge.firewall_drops > 0 || forwarded).then(Ruleset::read);
    let firewall = match (&ruleset, tally.edge.firewall_drops > 0) {
        (Some(Ok(rs)), true) => {
            let mut findings = Vec::new();
            for p in &tally.filtered {
                let p = Packet {
                    iface: Some(ctx.interface.to_string()),
                    ..p.clone()
                };
                for f in rs.blocking(&p) {
                    if !findings.contains(&f) {
                        findings.push(f);
                    }
                }
            }
            Ok(findings)
        }
        (Some(Err(e)), true) => Err(e.clone()),
        _ => Ok(Vec::new()),
    };
    let mut seen = tally.backends.clone();
    if ctx.follows_forwarded {
        silent_backends(&tally.silent, ctx.netns, &mut seen);
    }
    let mut backends = backends::resolve(
        &seen,
        ctx.netns,
        ruleset.as_ref().and_then(|r| r.as_ref().ok()),
    );
    let mut listeners = backends::all_listeners(own_listeners, &backends);
    if !backends.is_empty() {
        backends::name_owners(&mut listeners, &mut backends);
        // A backend's queue, read at the end: the container's counters are its own.
        full.extend(
            listeners
                .iter()
                .filter(|l| l.netns.is_some() && l.queue_full())
                .cloned(),
        );
    }
    let names = |m: &BTreeMap<Reason, u64>| -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for (r, n) in m {
            *out.entry(ctx.reasons.name(*r).into_owned()).or_default() += n;
        }
        out
    };
    let allowlists = match (&ruleset, tally.edge.firewall_drops > 0) {
        (Some(Ok(rs)), true) => rs.allowlists(ctx.ranges),
        _ => Vec::new(),
    };
    let classes = tally.classes.named(ctx.reasons);
    let rp_dropped = classes
        .iter()
        .any(|c| matches!(c.reason.as_deref(), Some("IP_RPFILTER" | "IP_INPUT_ROUTE")));
    let lost_synacks = tally.edge.unanswered > 0 && tally.synack_retransmits > 0;
    let routes: Vec<_> = if rp_dropped || tally.edge.unanswered > 0 {
        tally
            .return_samples
            .iter()
            .map(|(peer, local)| routes::route_back(*peer, *local))
            .collect()
    } else {
        Vec::new()
    };
    let rp_filter = (rp_dropped || lost_synacks)
        .then(|| routes::rp_filter(ctx.interface))
        .flatten();
    let inputs = Inputs {
        interface: ctx.interface,
        ports: ctx.ports,
        window_secs: ctx.window_secs,
        edge,
        non_edge: tally.non_edge,
        refused_targets: tally.refused_targets.iter().copied().collect(),
        filter_reasons: names(&tally.filter_reasons),
        other_reasons: names(&tally.other_reasons),
        filtered_ports: tally.filtered.iter().map(|p| p.port).collect(),
        listeners: &listeners,
        full_queues: &full,
        counter_deltas: &deltas,
        synack_retransmits: tally.synack_retransmits,
        firewall,
        ruleset: ruleset.as_ref().and_then(|r| r.as_ref().ok()),
        allowlists: &allowlists,
        packets_seen: ctx.counted.packets_seen,
        ranges: ctx.ranges,
        backends: &backends,
        classes: &classes,
        routes: &routes,
        rp_filter,
        reply_drops: &reply_drops(tally, ctx, ruleset.as_ref()),
        lost_events: ctx.counted.lost_events,
    };
    let (verdict, mut causes) = decide(&inputs);
    if !ctx.tls_checked {
        crate::verdict::tls::quick_close_hint(&mut causes, &tally.quick_closes, edge.handshakes);
    }
    Report {
        verdict,
        window_secs: window_value(ctx.window_secs),
        interface: ctx.interface.to_string(),
        ports: ctx.ports.to_vec(),
        edge,
        non_edge: tally.non_edge,
        causes,
        backends,
        listeners,
        counters: deltas,
        ranges: RangesInfo::of(ctx.ranges),
        lost_events: ctx.counted.lost_events,
        started_at: humantime::format_rfc3339_seconds(ctx.started_at).to_string(),
        xdp_mode: ctx.xdp_mode.to_string(),
        arrival_hook: ctx.arrival_hook.to_string(),
        notes,
        tls: Vec::new(),
        since: None,
    }
}

/// Where the answers to edge attempts were dropped on their way out, and the rules there that
/// drop them: this namespace's output path (its ruleset), or the namespace they pass through
/// (its forward path, read from inside it).
fn reply_drops(
    tally: &Tally,
    ctx: &WindowContext<'_>,
    own_ruleset: Option<&Result<Ruleset, String>>,
) -> Vec<ReplyDrops> {
    let mut out = Vec::new();
    for (drop, (attempts, sample)) in &tally.reply_drops {
        let own = drop.netns == ctx.netns || drop.netns == 0;
        let (place, enter, rules) = if own {
            let rules = match own_ruleset {
                Some(Ok(rs)) => Ok(rs.blocking(sample)),
                Some(Err(e)) => Err(e.clone()),
                None => Ruleset::read().map(|rs| rs.blocking(sample)),
            };
            ("this namespace".to_string(), None, rules)
        } else {
            let place = Place::of(drop.netns);
            let through = Packet {
                forwarded: true,
                ..sample.clone()
            };
            let rules = match &place.namespace {
                Some(ns) => ns.ruleset().map(|rs| rs.blocking(&through)),
                None => Err("the namespace is gone".to_string()),
            };
            (place.text, place.enter, rules)
        };
        out.push(ReplyDrops {
            place,
            own,
            reason: ctx.reasons.name(drop.reason).into_owned(),
            attempts: *attempts,
            rules,
            enter,
        });
    }
    out
}

/// Adds the backends conntrack names for attempts no event came back from: its DNAT mapping
/// gives the address and port, and the namespace is the one where that address is local.
fn silent_backends(
    silent: &[(Flow, Outcome)],
    own_netns: u32,
    seen: &mut BTreeMap<(Backend, u16), BTreeMap<Outcome, u64>>,
) {
    let flows: Vec<Flow> = silent.iter().map(|(f, _)| *f).collect();
    let targets = conntrack::dnat_targets(&flows);
    let mut netns_of: BTreeMap<IpAddr, Option<u32>> = BTreeMap::new();
    for (flow, outcome) in silent {
        let Some(&(addr, port)) = targets.get(flow) else {
            continue;
        };
        let netns = *netns_of.entry(addr).or_insert_with(|| {
            crate::origin::namespaces::Namespace::holding(addr, own_netns).map(|ns| ns.inode)
        });
        let backend = Backend {
            addr,
            port,
            netns: netns.unwrap_or(0),
        };
        *seen
            .entry((backend, flow.local_port))
            .or_default()
            .entry(*outcome)
            .or_default() += 1;
    }
}

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
fn reconcile_refusals(
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

//! One observation window: finished attempts tallied, the origin's state sampled, and the
//! report built. `diagnose` runs one window; `agent` runs them back to back.

use std::{collections::BTreeMap, net::IpAddr, time::SystemTime};

use crate::{
    capture::WindowCounts,
    correlate::{exchanges::ExchangeWindow, Backend, Counts, Outcome},
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

use super::refusals::reconcile_refusals;
pub use super::{refusals::RefusalLedger, tally::Tally};

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

/// What a window's report says besides its attempts: owned, so the report can be assembled
/// on another thread than the capture's.
pub struct WindowContext {
    pub interface: String,
    /// The tracer's namespace (its listeners are read directly).
    pub netns: u32,
    /// Names of the kernel's reasons.
    pub reasons: ReasonTable,
    /// The host forwards edge connections to other namespaces (and the tracer follows them).
    pub follows_forwarded: bool,
    pub ports: Vec<u16>,
    pub window_secs: f64,
    pub started_at: SystemTime,
    pub ranges: RangeSet,
    pub notes: Vec<String>,
    pub xdp_mode: &'static str,
    pub arrival_hook: &'static str,
    /// Lost events, refused edge SYNs and frames, as the kernel counted them in the window.
    pub counted: WindowCounts,
    /// A TLS check (--hostname) runs beside this window.
    pub tls_checked: bool,
    /// The Cloudflare Tunnel on this host, as watched in the window.
    pub tunnel: Option<crate::correlate::tunnel::TunnelSeen>,
    /// The latest audit of routes that swallow watched ranges, when the caller keeps one (the
    /// agent audits on its own schedule); `None`: the window audits when it needs to.
    pub misrouted: Option<Vec<crate::origin::range_routes::Misrouted>>,
}

/// A window closed on the capture thread — its tally, the kernel's refusals reconciled, the
/// origin's listeners and counters sampled: cheap, and what must happen in order. The report
/// is then [`assemble`]d from it, on another thread in the agent: that part reads the
/// firewall ruleset, other namespaces and routes, and may take seconds.
pub struct ClosedWindow {
    tally: Tally,
    edge: Counts,
    notes: Vec<String>,
    own_listeners: Vec<Listener>,
    deltas: BTreeMap<String, u64>,
    full: Vec<Listener>,
    ctx: WindowContext,
}

/// Closes a window (see [`ClosedWindow`]).
pub fn close(
    tally: Tally,
    sampler: &mut OriginSampler,
    ctx: WindowContext,
    ledger: &mut RefusalLedger,
) -> ClosedWindow {
    let mut notes = ctx.notes.clone();
    let edge = reconcile_refusals(tally.edge, ctx.counted.kernel_refused, ledger, &mut notes);
    let (own_listeners, deltas, full) = sampler.finish();
    ClosedWindow {
        tally,
        edge,
        notes,
        own_listeners,
        deltas,
        full,
        ctx,
    }
}

/// Builds the report; reads the firewall ruleset only when edge packets were filtered or
/// forwarded.
pub fn assemble(w: ClosedWindow) -> Report {
    let ClosedWindow {
        mut tally,
        edge,
        mut notes,
        own_listeners,
        deltas,
        mut full,
        ctx,
    } = w;
    let mut exchanges = std::mem::take(&mut tally.exchanges);
    let tally = &tally;
    let ctx = &ctx;
    let forwarded =
        !tally.backends.is_empty() || (ctx.follows_forwarded && !tally.silent.is_empty());
    let ruleset = (tally.edge.firewall_drops > 0 || forwarded).then(Ruleset::read);
    if let Some(Ok(Ruleset {
        sets_omitted: Some(why),
        ..
    })) = &ruleset
    {
        notes.push(why.clone());
    }
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
    if exchanges.slow > 0 {
        name_slow_holders(&mut exchanges, &mut listeners);
    }
    let names = |m: &BTreeMap<Reason, u64>| -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for (r, n) in m {
            *out.entry(ctx.reasons.name(*r).into_owned()).or_default() += n;
        }
        out
    };
    let allowlists = match (&ruleset, tally.edge.firewall_drops > 0) {
        (Some(Ok(rs)), true) => rs.allowlists(&ctx.ranges),
        _ => Vec::new(),
    };
    let classes = tally.classes.named(&ctx.reasons);
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
    // Which of the watched ranges this host routes away from its default route: asked with
    // the routes back, or when nothing arrived, so a swallowed range is named first.
    let misrouted = if routes.is_empty() && tally.edge.syn > 0 {
        Vec::new()
    } else if let Some(known) = &ctx.misrouted {
        known.clone()
    } else {
        let v4: Vec<ipnet::IpNet> = ctx.ranges.v4.iter().map(|n| (*n).into()).collect();
        let v6: Vec<ipnet::IpNet> = ctx.ranges.v6.iter().map(|n| (*n).into()).collect();
        crate::origin::range_routes::audit(&v4, &v6)
    };
    let rp_filter = (rp_dropped || lost_synacks)
        .then(|| routes::rp_filter(&ctx.interface))
        .flatten();
    let inputs = Inputs {
        interface: &ctx.interface,
        ports: &ctx.ports,
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
        ranges: &ctx.ranges,
        backends: &backends,
        classes: &classes,
        routes: &routes,
        misrouted: &misrouted,
        rp_filter,
        reply_drops: &reply_drops(tally, ctx, ruleset.as_ref()),
        lost_events: ctx.counted.lost_events,
        exchanges: &exchanges,
    };
    let (mut verdict, mut causes) = decide(&inputs);
    let timing = tally.handshakes.timing(&exchanges);
    let lines = [
        crate::verdict::timing::retransmitted_handshakes(&timing),
        crate::verdict::timing::idle_close_risk(&exchanges),
    ];
    if let Some(first) = causes.first_mut() {
        first.evidence.extend(lines.into_iter().flatten());
    }
    if !ctx.tls_checked {
        crate::verdict::tls::quick_close_hint(&mut causes, &tally.quick_closes, edge.handshakes);
    }
    let tunnel = ctx.tunnel.clone().map(|mut t| {
        t.name_drops(|r| ctx.reasons.name(r).into_owned());
        t
    });
    crate::verdict::tunnel::apply(&mut verdict, &mut causes, &mut notes, tunnel.as_ref());
    Report {
        verdict,
        window_secs: window_value(ctx.window_secs),
        interface: ctx.interface.clone(),
        ports: ctx.ports.clone(),
        edge,
        non_edge: tally.non_edge,
        causes,
        backends,
        listeners,
        counters: deltas,
        ranges: RangesInfo::of(&ctx.ranges),
        lost_events: ctx.counted.lost_events,
        started_at: humantime::format_rfc3339_seconds(ctx.started_at).to_string(),
        xdp_mode: ctx.xdp_mode.to_string(),
        arrival_hook: ctx.arrival_hook.to_string(),
        notes,
        tls: Vec::new(),
        since: None,
        edge_ports: tally.edge_ports.iter().copied().collect(),
        timing,
        tunnel,
    }
}

/// Names who holds the slow requests: the processes holding their sockets, and for a request
/// no process holds yet the process holding the listener on its port (found through /proc's
/// descriptors, only when a request was slow).
fn name_slow_holders(x: &mut ExchangeWindow, listeners: &mut [Listener]) {
    let unnamed: Vec<u64> = listeners
        .iter()
        .filter(|l| l.pid.is_none())
        .filter_map(|l| l.inode)
        .collect();
    let want_listener = x
        .slowest
        .iter()
        .any(|s| s.holder.is_none() && s.read != Some(true));
    if want_listener && !unnamed.is_empty() {
        let owners = crate::origin::processes::socket_owners(&unnamed);
        for l in listeners.iter_mut() {
            if let Some((pid, comm)) = l.inode.and_then(|i| owners.get(&i)) {
                l.pid = Some(*pid);
                l.comm = Some(comm.clone());
            }
        }
    }
    x.name_holders(|port| {
        let l = listeners
            .iter()
            .find(|l| l.port == port && l.pid.is_some())?;
        Some((l.pid?, l.comm.clone().unwrap_or_default()))
    });
}

/// Where the answers to edge attempts were dropped on their way out, and the rules there that
/// drop them: this namespace's output path (its ruleset), or the namespace they pass through
/// (its forward path, read from inside it).
fn reply_drops(
    tally: &Tally,
    ctx: &WindowContext,
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

//! From counted attempts and the origin's own state to a verdict, its evidence and what to do.
//! Pure: the inputs are plain data, so unit tests drive every rule.

use std::{collections::BTreeMap, net::IpAddr};

use serde::Serialize;

use crate::{
    correlate::{Counts, Outcome},
    origin::{backends::BackendReport, firewall::Finding, listeners::Listener},
    ranges::RangeSet,
};

/// The verdict of a window, and the kind of each cause. Wire names, headlines and the
/// outcomes each stands for are spelled here once; report, metrics and alerts match on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    NeverArriving,
    Refused,
    FirewallDrop,
    Overloaded,
    ResetByOrigin,
    Healthy,
    Unanswered,
    OtherDrop,
}

impl Verdict {
    pub const ALL: [Verdict; 8] = [
        Verdict::NeverArriving,
        Verdict::Refused,
        Verdict::FirewallDrop,
        Verdict::Overloaded,
        Verdict::ResetByOrigin,
        Verdict::Healthy,
        Verdict::Unanswered,
        Verdict::OtherDrop,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NeverArriving => "never_arriving",
            Self::Refused => "refused",
            Self::FirewallDrop => "firewall_drop",
            Self::Overloaded => "overloaded",
            Self::ResetByOrigin => "reset_by_origin",
            Self::Healthy => "healthy",
            Self::Unanswered => "unanswered",
            Self::OtherDrop => "other_drop",
        }
    }

    /// The one-line meaning, for the text report.
    pub fn headline(self) -> &'static str {
        match self {
            Self::NeverArriving => "Cloudflare's SYNs never reach this host",
            Self::Refused => "this host refuses Cloudflare's connections: nothing accepts them on that address and port",
            Self::FirewallDrop => "this host's firewall drops or rejects Cloudflare's connections",
            Self::Overloaded => "the server is overloaded: Cloudflare's SYNs are dropped for lack of queue room",
            Self::ResetByOrigin => "connections are accepted, then reset by the origin",
            Self::Healthy => "Cloudflare's connections are accepted",
            Self::Unanswered => "Cloudflare's SYNs arrive but get no answer",
            Self::OtherDrop => "the kernel drops Cloudflare's SYNs (see the reasons)",
        }
    }

    /// The attempt outcomes this verdict stands for (a backend is listed under a cause when
    /// attempts forwarded to it ended so).
    pub fn outcomes(self) -> &'static [Outcome] {
        match self {
            Self::NeverArriving => &[],
            Self::Refused => &[Outcome::Refused],
            Self::FirewallDrop => &[Outcome::FirewallDrop],
            Self::Overloaded => &[Outcome::OverloadDrop, Outcome::Unanswered],
            Self::ResetByOrigin => &[Outcome::OriginReset],
            Self::Healthy => &[Outcome::Handshake],
            Self::Unanswered => &[Outcome::Unanswered],
            Self::OtherDrop => &[Outcome::OtherDrop],
        }
    }
}

/// A failure (or healthy) finding with its weight in distinct attempts.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Cause {
    pub verdict: Verdict,
    pub attempts: u64,
    pub evidence: Vec<String>,
    pub next_steps: Vec<String>,
    /// Where the host forwarded the attempts of this cause (DNAT to containers).
    pub backends: Vec<BackendReport>,
}

/// What the verdict is decided from.
pub struct Inputs<'a> {
    pub interface: &'a str,
    pub ports: &'a [u16],
    pub window_secs: f64,
    pub edge: Counts,
    pub non_edge: Counts,
    /// (local address, port) of edge attempts the stack refused.
    pub refused_targets: Vec<(IpAddr, u16)>,
    /// Kernel reasons of edge filter drops, with attempt counts.
    pub filter_reasons: BTreeMap<String, u64>,
    pub other_reasons: BTreeMap<String, u64>,
    /// Ports of edge attempts that were dropped by a filter.
    pub filtered_ports: Vec<u16>,
    pub listeners: &'a [Listener],
    /// Listeners whose accept queue was seen full during the window.
    pub full_queues: &'a [Listener],
    pub counter_deltas: &'a BTreeMap<String, u64>,
    pub synack_retransmits: u64,
    pub firewall: Result<Vec<Finding>, String>,
    /// Frames the XDP program saw on the interface, and SYNs to watched ports from non-edge peers.
    pub packets_seen: u64,
    pub ranges: &'a RangeSet,
    /// Where forwarded edge attempts went.
    pub backends: &'a [BackendReport],
}

/// Below this share of edge attempts a failure does not make the origin unhealthy.
const HEALTHY_MAX_FAILURE_SHARE: f64 = 0.05;

const OVERLOAD_COUNTERS: [&str; 4] = [
    "ListenOverflows",
    "ListenDrops",
    "TCPReqQFullDrop",
    "TCPBacklogDrop",
];

fn ports_text(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

use crate::origin::backends::endpoint;

/// The verdict and every cause, largest first.
pub fn decide(i: &Inputs<'_>) -> (Verdict, Vec<Cause>) {
    let (verdict, mut causes) = rank(i);
    for c in &mut causes {
        c.backends = i
            .backends
            .iter()
            .filter(|b| c.verdict.outcomes().iter().any(|o| b.count(*o) > 0))
            .cloned()
            .collect();
    }
    (verdict, causes)
}

fn rank(i: &Inputs<'_>) -> (Verdict, Vec<Cause>) {
    if i.edge.syn == 0 {
        let cause = never_arriving(i);
        return (cause.verdict, vec![cause]);
    }
    let overload_evidence = overload_evidence(i);
    let mut causes = Vec::new();
    if i.edge.refused > 0 {
        causes.push(refused(i));
    }
    if i.edge.firewall_drops > 0 {
        causes.push(firewall_drop(i));
    }
    let overloaded = i.edge.overload_drops
        + if overload_evidence.is_empty() {
            0
        } else {
            i.edge.unanswered
        };
    if overloaded > 0 {
        causes.push(overload(i, overloaded, overload_evidence.clone()));
    }
    if i.edge.origin_resets > 0 {
        causes.push(reset_by_origin(i));
    }
    if overload_evidence.is_empty() && i.edge.unanswered > 0 {
        causes.push(unanswered(i));
    }
    if i.edge.other_drops > 0 {
        causes.push(other_drop(i));
    }
    causes.sort_by_key(|c| std::cmp::Reverse(c.attempts));

    let threshold = (i.edge.syn as f64 * HEALTHY_MAX_FAILURE_SHARE).max(f64::MIN_POSITIVE);
    let all_minor = causes.iter().all(|c| (c.attempts as f64) < threshold);
    if i.edge.handshakes > 0 && all_minor {
        let mut all = vec![healthy(i)];
        all.extend(causes);
        return (Verdict::Healthy, all);
    }
    let verdict = causes.first().map_or(Verdict::Healthy, |c| c.verdict);
    (verdict, causes)
}

fn overload_evidence(i: &Inputs<'_>) -> Vec<String> {
    let mut ev = Vec::new();
    for name in OVERLOAD_COUNTERS {
        if let Some(d) = i.counter_deltas.get(name).filter(|d| **d > 0) {
            ev.push(format!(
                "kernel counter {name} rose by {d} during the window"
            ));
        }
    }
    for l in i.full_queues {
        ev.push(format!(
            "accept queue of {}{} was full ({} waiting, backlog {}): the application is not accepting fast enough",
            l.endpoint(),
            l.place(),
            l.accept_queue,
            l.backlog.unwrap_or(0)
        ));
    }
    if i.synack_retransmits > 0 {
        ev.push(format!(
            "{} SYN-ACKs to the edge were retransmitted (the final ACK was dropped or never came)",
            i.synack_retransmits
        ));
    }
    ev
}

fn never_arriving(i: &Inputs<'_>) -> Cause {
    let mut evidence = vec![format!(
        "no SYN from Cloudflare's ranges ({} source, {} IPv4 + {} IPv6 ranges) reached {} on ports {} in {:.0} s",
        i.ranges.source,
        i.ranges.v4.len(),
        i.ranges.v6.len(),
        i.interface,
        ports_text(i.ports),
        i.window_secs
    )];
    if i.non_edge.syn > 0 {
        evidence.push(format!(
            "{} connection attempts from other peers did arrive ({} completed): the interface works, the edge's SYNs are stopped before this host or sent elsewhere",
            i.non_edge.syn, i.non_edge.handshakes
        ));
    } else if i.packets_seen > 0 {
        evidence.push(format!(
            "{} packets reached {} but no connection attempt to the watched ports from anyone",
            i.packets_seen, i.interface
        ));
    } else {
        evidence.push(format!(
            "no packet at all reached {}: wrong interface, interface down, or no traffic",
            i.interface
        ));
    }
    Cause {
        verdict: Verdict::NeverArriving,
        backends: Vec::new(),
        attempts: 0,
        evidence,
        next_steps: vec![
            "Check the DNS record in Cloudflare: the A/AAAA record must point at this origin's current public address (after a migration the old IP no longer answers); remove an AAAA record if the origin has no IPv6.".into(),
            "Check firewalls before this host (cloud security group, network ACL, provider firewall): they must allow Cloudflare's ranges to the ports above.".into(),
            format!("Check that {} is the interface the public address arrives on (--iface), and that traffic was expected in the window (Cloudflare connects only when requests come in).", i.interface),
            "Pause Cloudflare (DNS only, grey cloud) briefly to test whether the origin is reachable directly; check Cloudflare's status page for edge incidents.".into(),
        ],
    }
}

fn refused(i: &Inputs<'_>) -> Cause {
    let mut evidence = vec![format!(
        "{} edge connection attempts were answered with RST by the TCP stack: no socket matched (kernel reason NO_SOCKET)",
        i.edge.refused
    )];
    let mut next_steps = Vec::new();
    let mut targets = i.refused_targets.clone();
    targets.sort();
    targets.dedup();
    for (local, port) in targets {
        let on_port: Vec<&Listener> = i.listeners.iter().filter(|l| l.port == port).collect();
        if on_port.is_empty() {
            let others: Vec<String> = i
                .listeners
                .iter()
                .filter(|l| !l.is_loopback())
                .map(Listener::endpoint)
                .collect();
            if others.is_empty() {
                evidence.push(format!("nothing listens on port {port}"));
            } else {
                evidence.push(format!(
                    "nothing listens on port {port}; the server listens on a different port: {}",
                    others.join(", ")
                ));
            }
            next_steps.push(format!(
                "Start the web server (or fix its port) so it listens on {} — Cloudflare connects to {port} (SSL mode Flexible uses 80, Full/Strict 443); check its logs and memory/worker limits if it crashed.",
                endpoint(local, port)
            ));
        } else if !on_port.iter().any(|l| l.accepts(local)) {
            let bound: Vec<String> = on_port.iter().map(|l| l.endpoint()).collect();
            evidence.push(format!(
                "a listener exists only on {} — not on {}, where the edge connects",
                bound.join(", "),
                endpoint(local, port)
            ));
            let any = if local.is_ipv6() { "[::]" } else { "0.0.0.0" };
            next_steps.push(format!(
                "Bind the server to {any}:{port} (or {}), not {} — and for containers, publish the port on the host.",
                endpoint(local, port),
                bound.join(", ")
            ));
        } else if local.is_ipv4() && on_port.iter().all(|l| l.addr.is_ipv6()) {
            evidence.push(format!(
                "only an IPv6 listener ({}) exists on port {port} and it refused IPv4: it is IPv6-only (IPV6_V6ONLY or net.ipv6.bindv6only)",
                on_port.iter().map(|l| l.endpoint()).collect::<Vec<_>>().join(", ")
            ));
            next_steps.push(format!(
                "Also listen on 0.0.0.0:{port}, or turn IPV6_V6ONLY off for the [::]:{port} listener (nginx: `listen [::]:{port} ipv6only=off;`)."
            ));
        } else {
            evidence.push(format!(
                "a listener on port {port} exists now but refused during the window (restarted?)"
            ));
            next_steps.push("Check why the server stopped listening during the window (restarts, crashes, socket activation).".into());
        }
    }
    for b in i.backends.iter().filter(|b| b.count(Outcome::Refused) > 0) {
        refused_backend(b, &mut evidence, &mut next_steps);
    }
    next_steps.push(
        "Test locally, then from another network: `curl -v http://<origin-ip>:<port>/`.".into(),
    );
    Cause {
        verdict: Verdict::Refused,
        backends: Vec::new(),
        attempts: i.edge.refused,
        evidence,
        next_steps,
    }
}

/// Why a backend the host forwards to refused: nothing listens there, or only on its
/// loopback, or its namespace went away.
fn refused_backend(b: &BackendReport, evidence: &mut Vec<String>, next_steps: &mut Vec<String>) {
    let via = match b.dnat_chain() {
        Some(chain) => format!("port {} is DNATed there by {chain}", b.edge_port),
        None => format!("port {} is forwarded there", b.edge_port),
    };
    let listeners = match &b.listeners {
        Ok(l) => l,
        Err(why) => {
            evidence.push(format!(
                "{} edge attempts were forwarded to {} in {} and refused there; {why}",
                b.count(Outcome::Refused),
                b.endpoint(),
                b.place
            ));
            next_steps.push(format!(
                "Check that the container or service behind {} is running (docker ps -a; its logs), and that the DNAT rule points at its current address.",
                b.endpoint()
            ));
            return;
        }
    };
    let on_port: Vec<&Listener> = listeners.iter().filter(|l| l.port == b.port).collect();
    if on_port.is_empty() {
        evidence.push(format!(
            "nothing listens on {} in {} ({via})",
            b.endpoint(),
            b.place
        ));
        next_steps.push(format!(
            "Start the server in {} so it listens on port {} (check `docker ps -a` and the container's logs), or fix the published port (`docker run -p {}:<port the server uses>`).",
            b.place, b.port, b.edge_port
        ));
    } else if !on_port.iter().any(|l| l.accepts(b.addr)) {
        let bound: Vec<String> = on_port.iter().map(|l| l.endpoint()).collect();
        evidence.push(format!(
            "a listener exists only on {} in {} — not on {}, where {via}",
            bound.join(", "),
            b.place,
            b.endpoint()
        ));
        let any = if b.addr.is_ipv6() { "[::]" } else { "0.0.0.0" };
        next_steps.push(format!(
            "Bind the server inside {} to {any}:{} (or {}), not {}: forwarded connections arrive at the container's own address, not its loopback.",
            b.place,
            b.port,
            b.endpoint(),
            bound.join(", ")
        ));
    } else {
        evidence.push(format!(
            "a listener on {} in {} exists now but refused during the window (restarted?) ({via})",
            b.endpoint(),
            b.place
        ));
        next_steps.push(format!(
            "Check why the server in {} stopped listening during the window (restarts, crashes, health checks).",
            b.place
        ));
    }
}

fn firewall_drop(i: &Inputs<'_>) -> Cause {
    let reasons: Vec<String> = i
        .filter_reasons
        .iter()
        .map(|(r, n)| format!("{r} ×{n}"))
        .collect();
    let mut evidence = vec![format!(
        "{} edge connection attempts were dropped or rejected by a packet filter (kernel reasons: {})",
        i.edge.firewall_drops,
        reasons.join(", ")
    )];
    match &i.firewall {
        Ok(findings) if !findings.is_empty() => {
            for f in findings {
                evidence.push(format!(
                    "{} rule: {}",
                    if f.certain { "matching" } else { "possibly matching" },
                    f.rule
                ));
            }
        }
        Ok(_) => evidence.push("no nftables/iptables-nft rule evaluated as matching (iptables-legacy, a jump, or tc/BPF filter?)".into()),
        Err(e) => evidence.push(format!("firewall ruleset not read: {e}")),
    }
    for b in i
        .backends
        .iter()
        .filter(|b| b.count(Outcome::FirewallDrop) > 0)
    {
        evidence.push(format!(
            "{} of these attempts were forwarded to {} in {}: they cross the forward hook (FORWARD, Docker's DOCKER-USER), not input",
            b.count(Outcome::FirewallDrop),
            b.endpoint(),
            b.place
        ));
    }
    if i.non_edge.handshakes > 0 {
        evidence.push(format!(
            "meanwhile {} attempts from non-edge peers completed: an allowlist that admits others but misses Cloudflare's ranges",
            i.non_edge.handshakes
        ));
    } else if i.non_edge.firewall_drops > 0 {
        evidence.push(format!(
            "non-edge peers were dropped too ({} attempts): the port is closed by the firewall for everyone",
            i.non_edge.firewall_drops
        ));
    }
    let mut ports = i.filtered_ports.clone();
    ports.sort_unstable();
    ports.dedup();
    let mut next_steps = allowlist_steps(i, &ports);
    if i.backends
        .iter()
        .any(|b| b.count(Outcome::FirewallDrop) > 0)
    {
        next_steps.insert(
            0,
            "For published container ports, allow Cloudflare's ranges where Docker lets admins filter forwarded traffic: iptables -I DOCKER-USER -s <range> -j RETURN for each range, before the rule that drops them (remove that rule if it targets Cloudflare).".into(),
        );
    }
    Cause {
        verdict: Verdict::FirewallDrop,
        backends: Vec::new(),
        attempts: i.edge.firewall_drops,
        evidence,
        next_steps,
    }
}

/// Ready-to-run allowlists for the ranges in use.
fn allowlist_steps(i: &Inputs<'_>, ports: &[u16]) -> Vec<String> {
    let ports = if ports.is_empty() { i.ports } else { ports };
    let p = ports_text(ports);
    let v4: Vec<String> = i.ranges.v4.iter().map(ToString::to_string).collect();
    let v6: Vec<String> = i.ranges.v6.iter().map(ToString::to_string).collect();
    let chain = match &i.firewall {
        Ok(f) => f.iter().find_map(|f| {
            let rest = f.rule.strip_prefix("table ")?;
            let mut w = rest.split_whitespace();
            let (family, table, _, chain) = (w.next()?, w.next()?, w.next()?, w.next()?);
            Some(format!("{family} {table} {}", chain.trim_end_matches(':')))
        }),
        Err(_) => None,
    }
    .unwrap_or_else(|| "inet filter input".into());
    let mut steps = vec![
        format!(
            "Allow Cloudflare's ranges before the dropping rule (nftables): nft insert rule {chain} ip saddr {{ {} }} tcp dport {{ {p} }} accept; nft insert rule {chain} ip6 saddr {{ {} }} tcp dport {{ {p} }} accept",
            v4.join(", "),
            v6.join(", ")
        ),
        format!(
            "Or with iptables: for r in {}; do iptables -I INPUT -p tcp -m multiport --dports {p} -s $r -j ACCEPT; done; for r in {}; do ip6tables -I INPUT -p tcp -m multiport --dports {p} -s $r -j ACCEPT; done",
            v4.join(" "),
            v6.join(" ")
        ),
        "Also allow them in cloud security groups, WAF/fail2ban/rate limits that may treat Cloudflare's addresses as attackers; the ranges change, so refresh them automatically (`tracer ranges --refresh`).".into(),
    ];
    steps.push(
        "Relax the rule briefly to confirm, then re-tighten it with the allowlist in place.".into(),
    );
    steps
}

fn overload(i: &Inputs<'_>, attempts: u64, mut evidence: Vec<String>) -> Cause {
    evidence.insert(
        0,
        format!(
            "{attempts} edge connection attempts went unanswered or were dropped for lack of room ({} with an explicit kernel drop, {} silently)",
            i.edge.overload_drops,
            attempts - i.edge.overload_drops
        ),
    );
    Cause {
        verdict: Verdict::Overloaded,
        backends: Vec::new(),
        attempts,
        evidence,
        next_steps: vec![
            "Raise the listen backlog of the server (e.g. nginx `listen 443 backlog=4096;`) and net.core.somaxconn / net.ipv4.tcp_max_syn_backlog to match.".into(),
            "Add workers/threads or capacity, and check the application is not stuck (blocked event loop, exhausted worker pool, CPU or memory limits).".into(),
            "Keep net.ipv4.tcp_syncookies=1; it helps a full SYN queue but not a full accept queue.".into(),
        ],
    }
}

fn reset_by_origin(i: &Inputs<'_>) -> Cause {
    Cause {
        verdict: Verdict::ResetByOrigin,
        backends: Vec::new(),
        attempts: i.edge.origin_resets,
        evidence: vec![format!(
            "{} of {} edge connections completed the handshake and were then reset by the origin (RST from a socket: application abort, SO_LINGER 0, TLS failure, or worker crash)",
            i.edge.origin_resets, i.edge.handshakes
        )],
        next_steps: vec![
            "Check the web server and application logs at the times of the resets (crashes, aborted requests, connection limits).".into(),
            "Under Full/Full (Strict) SSL, test the TLS handshake as Cloudflare does: openssl s_client -connect <origin-ip>:443 -servername <hostname>; a valid, unexpired certificate whose name matches is needed.".into(),
            "Check proxies or load balancers in front of the application for connection limits and idle timeouts.".into(),
        ],
    }
}

fn unanswered(i: &Inputs<'_>) -> Cause {
    Cause {
        verdict: Verdict::Unanswered,
        backends: Vec::new(),
        attempts: i.edge.unanswered,
        evidence: vec![format!(
            "{} edge SYNs reached {} but got no answer the kernel recorded: no handshake, no RST, no drop, and no listen-queue counter rose",
            i.edge.unanswered, i.interface
        )],
        next_steps: vec![
            "Check the return path: an egress filter or asymmetric route may lose the SYN-ACK (tcpdump -ni <iface> 'tcp[tcpflags] & tcp-syn != 0').".into(),
            "Check reverse-path filtering (net.ipv4.conf.*.rp_filter) and policy routing for Cloudflare's source addresses.".into(),
        ],
    }
}

fn other_drop(i: &Inputs<'_>) -> Cause {
    let reasons: Vec<String> = i
        .other_reasons
        .iter()
        .map(|(r, n)| format!("{r} ×{n}"))
        .collect();
    Cause {
        verdict: Verdict::OtherDrop,
        backends: Vec::new(),
        attempts: i.edge.other_drops,
        evidence: vec![format!(
            "{} edge connection attempts were dropped by the kernel for other reasons: {}",
            i.edge.other_drops,
            reasons.join(", ")
        )],
        next_steps: vec!["Look up the kernel drop reasons above (include/net/dropreason-core.h) and the matching /proc/net/netstat counters.".into()],
    }
}

fn healthy(i: &Inputs<'_>) -> Cause {
    Cause {
        verdict: Verdict::Healthy,
        backends: Vec::new(),
        attempts: i.edge.handshakes,
        evidence: vec![format!(
            "{} of {} edge connection attempts completed the handshake; no failure reached 5%",
            i.edge.handshakes, i.edge.syn
        )],
        next_steps: vec![
            "The origin accepts Cloudflare's connections now: if 521s continue, check other origins behind the same hostname and the DNS record, and run this again while the errors happen.".into(),
        ],
    }
}

#[cfg(test)]
mod tests {
    /// The lab scenario (`cargo xtask lab`, tests/src/scenarios.rs) that produces each verdict:
    /// exhaustive, so a new verdict does not compile until the lab names it (or says why not).
    fn lab_scenario(v: Verdict) -> Option<&'static str> {
        match v {
            Verdict::Healthy => Some("healthy"),
            Verdict::Refused => Some("nothing listens"),
            Verdict::FirewallDrop => Some("nft drops edge, allowlist admits others"),
            Verdict::Overloaded => Some("accept queue full"),
            Verdict::ResetByOrigin => Some("application resets after accept"),
            Verdict::NeverArriving => Some("edge drops its own SYNs"),
            // No lab cause yields these yet: the field-verdicts work (rp_filter, other drop
            // reasons) adds their scenarios.
            Verdict::Unanswered | Verdict::OtherDrop => None,
        }
    }

    #[test]
    fn the_lab_names_a_scenario_for_each_verdict() {
        let scenarios = include_str!("../../tests/src/scenarios.rs");
        for v in Verdict::ALL {
            let Some(name) = lab_scenario(v) else {
                continue;
            };
            let at = scenarios
                .find(&format!("name: \"{name}\","))
                .unwrap_or_else(|| panic!("no lab scenario {name:?}"));
            let expected = scenarios[at..].lines().nth(1).unwrap_or_default().trim();
            assert_eq!(
                expected,
                format!("expected: \"{}\",", v.as_str()),
                "scenario {name:?} for {}",
                v.as_str()
            );
        }
    }

    use super::*;
    use crate::origin::firewall::Finding;

    struct Fixture {
        listeners: Vec<Listener>,
        full: Vec<Listener>,
        deltas: BTreeMap<String, u64>,
        ranges: RangeSet,
    }

    fn fixture() -> Fixture {
        Fixture {
            listeners: vec![],
            full: vec![],
            deltas: BTreeMap::new(),
            ranges: RangeSet::embedded(),
        }
    }

    fn inputs<'a>(f: &'a Fixture, edge: Counts) -> Inputs<'a> {
        Inputs {
            interface: "eth0",
            ports: &[443],
            window_secs: 30.0,
            edge,
            non_edge: Counts::default(),
            refused_targets: vec![],
            filter_reasons: BTreeMap::new(),
            other_reasons: BTreeMap::new(),
            filtered_ports: vec![],
            listeners: &f.listeners,
            full_queues: &f.full,
            counter_deltas: &f.deltas,
            synack_retransmits: 0,
            firewall: Ok(vec![]),
            packets_seen: 0,
            ranges: &f.ranges,
            backends: &[],
        }
    }

    fn listener(addr: &str, port: u16) -> Listener {
        Listener {
            addr: addr.parse().unwrap(),
            port,
            accept_queue: 0,
            backlog: Some(128),
            ..Listener::default()
        }
    }

    #[test]
    fn nothing_from_the_edge_is_never_arriving() {
        let f = fixture();
        let mut i = inputs(&f, Counts::default());
        i.non_edge.syn = 12;
        let (v, causes) = decide(&i);
        assert_eq!(v, Verdict::NeverArriving);
        assert!(causes[0].evidence[1].contains("12 connection attempts from other peers"));
    }

    #[test]
    fn refused_names_a_loopback_only_listener() {
        let mut f = fixture();
        f.listeners = vec![listener("127.0.0.1", 443)];
        let edge = Counts {
            syn: 4,
            refused: 4,
            ..Counts::default()
        };
        let mut i = inputs(&f, edge);
        i.refused_targets = vec![("192.0.2.1".parse().unwrap(), 443)];
        let (v, causes) = decide(&i);
        assert_eq!(v, Verdict::Refused);
        assert!(
            causes[0]
                .evidence
                .iter()
                .any(|e| e.contains("only on 127.0.0.1:443")),
            "{causes:?}"
        );
        assert!(causes[0].next_steps[0].contains("0.0.0.0:443"));
    }

    #[test]
    fn refused_names_a_different_port() {
        let mut f = fixture();
        f.listeners = vec![listener("0.0.0.0", 8080)];
        let edge = Counts {
            syn: 1,
            refused: 1,
            ..Counts::default()
        };
        let mut i = inputs(&f, edge);
        i.refused_targets = vec![("192.0.2.1".parse().unwrap(), 443)];
        let (_, causes) = decide(&i);
        assert!(
            causes[0].evidence[1].contains("different port: 0.0.0.0:8080"),
            "{causes:?}"
        );
    }

    #[test]
    fn firewall_drop_with_rule_and_allowlist() {
        let f = fixture();
        let edge = Counts {
            syn: 3,
            firewall_drops: 3,
            ..Counts::default()
        };
        let mut i = inputs(&f, edge);
        i.non_edge = Counts {
            syn: 2,
            handshakes: 2,
            ..Counts::default()
        };
        i.filter_reasons.insert("NETFILTER_DROP".into(), 3);
        i.filtered_ports = vec![443];
        i.firewall = Ok(vec![Finding {
            rule: "table inet filter chain input handle 4: tcp dport 443 drop".into(),
            certain: true,
        }]);
        let (v, causes) = decide(&i);
        assert_eq!(v, Verdict::FirewallDrop);
        let c = &causes[0];
        assert!(c.evidence.iter().any(|e| e.contains("handle 4")));
        assert!(c.evidence.iter().any(|e| e.contains("admits others")));
        assert!(c.next_steps[0]
            .contains("nft insert rule inet filter input ip saddr { 173.245.48.0/20"));
        assert!(c.next_steps[1].contains("iptables -I INPUT"));
    }

    #[test]
    fn unanswered_with_overflow_counters_is_overloaded() {
        let mut f = fixture();
        f.deltas.insert("ListenOverflows".into(), 5);
        let edge = Counts {
            syn: 6,
            handshakes: 1,
            unanswered: 5,
            ..Counts::default()
        };
        let (v, causes) = decide(&inputs(&f, edge));
        assert_eq!(v, Verdict::Overloaded);
        assert_eq!(causes[0].attempts, 5);
        assert!(causes[0]
            .evidence
            .iter()
            .any(|e| e.contains("ListenOverflows rose by 5")));
    }

    #[test]
    fn unanswered_without_evidence_stays_unanswered() {
        let f = fixture();
        let edge = Counts {
            syn: 2,
            unanswered: 2,
            ..Counts::default()
        };
        let (v, _) = decide(&inputs(&f, edge));
        assert_eq!(v, Verdict::Unanswered);
    }

    #[test]
    fn resets_after_handshake() {
        let f = fixture();
        let edge = Counts {
            syn: 10,
            handshakes: 10,
            origin_resets: 10,
            ..Counts::default()
        };
        let (v, causes) = decide(&inputs(&f, edge));
        assert_eq!(v, Verdict::ResetByOrigin);
        assert_eq!(causes[0].attempts, 10);
    }

    #[test]
    fn healthy_below_five_percent() {
        let f = fixture();
        let edge = Counts {
            syn: 100,
            handshakes: 96,
            refused: 4,
            ..Counts::default()
        };
        let (v, causes) = decide(&inputs(&f, edge));
        assert_eq!(v, Verdict::Healthy);
        assert_eq!(causes[0].verdict, Verdict::Healthy);
        assert_eq!(causes[1].verdict, Verdict::Refused);
        let edge = Counts {
            syn: 100,
            handshakes: 95,
            refused: 5,
            ..Counts::default()
        };
        assert_eq!(decide(&inputs(&f, edge)).0, Verdict::Refused);
    }

    #[test]
    fn mixed_causes_pick_the_largest_and_list_all() {
        let f = fixture();
        let edge = Counts {
            syn: 10,
            refused: 3,
            firewall_drops: 7,
            ..Counts::default()
        };
        let (v, causes) = decide(&inputs(&f, edge));
        assert_eq!(v, Verdict::FirewallDrop);
        let names: Vec<Verdict> = causes.iter().map(|c| c.verdict).collect();
        assert_eq!(names, [Verdict::FirewallDrop, Verdict::Refused]);
    }
}

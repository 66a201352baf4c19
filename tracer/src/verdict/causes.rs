//! The causes that need no firewall or route reading: nothing arrives, nothing listens, the
//! queue is full, the origin resets, the kernel drops for another reason, all is well.

use super::{ports_text, Cause, Inputs, Verdict};
use crate::{
    correlate::Outcome,
    origin::{
        backends::{endpoint, BackendReport},
        listeners::Listener,
    },
    reasons::meaning::{drop_meaning, reset_meaning, RESET_COUNTERS},
};

pub(super) fn never_arriving(i: &Inputs<'_>) -> Cause {
    let mut evidence = vec![format!(
        "no SYN from Cloudflare's ranges ({} source, {} IPv4 + {} IPv6 ranges) reached {} on ports {} in {:.0} s",
        i.ranges.source,
        i.ranges.v4.len(),
        i.ranges.v6.len(),
        i.interface,
        ports_text(i.ports),
        i.window_secs
    )];
    let mut next_steps = Vec::new();
    // Routes that swallow ranges first: known without traffic, and what an edge that gave up
    // on this origin would leave behind.
    if !i.misrouted.is_empty() {
        evidence.push(format!(
            "this host routes replies to {} of Cloudflare's ranges another way than its default route: {}",
            i.misrouted.len(),
            i.misrouted
                .iter()
                .map(|m| format!("{} by `{}`", m.range, m.route_text()))
                .collect::<Vec<_>>()
                .join("; ")
        ));
        next_steps.extend(i.misrouted.iter().map(|m| super::sentence(&m.fix())));
    }
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
    next_steps.extend([
            "Check the DNS record in Cloudflare: the A/AAAA record must point at this origin's current public address (after a migration the old IP no longer answers); remove an AAAA record if the origin has no IPv6.".into(),
            "Check firewalls before this host (cloud security group, network ACL, provider firewall): they must allow Cloudflare's ranges to the ports above.".into(),
            format!("Check that {} is the interface the public address arrives on (--iface), and that traffic was expected in the window (Cloudflare connects only when requests come in).", i.interface),
            "Pause Cloudflare (DNS only, grey cloud) briefly to test whether the origin is reachable directly; check Cloudflare's status page for edge incidents.".into(),
        ]);
    Cause::new(Verdict::NeverArriving, 0, evidence, next_steps)
}

pub(super) fn refused(i: &Inputs<'_>) -> Cause {
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
    Cause::new(Verdict::Refused, i.edge.refused, evidence, next_steps)
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

pub(super) fn overload(i: &Inputs<'_>, attempts: u64, mut evidence: Vec<String>) -> Cause {
    evidence.insert(
        0,
        format!(
            "{attempts} edge connection attempts went unanswered or were dropped for lack of room ({} with an explicit kernel drop, {} silently)",
            i.edge.overload_drops,
            attempts - i.edge.overload_drops
        ),
    );
    Cause::new(
        Verdict::Overloaded,
        attempts,
        evidence,
        vec![
            "Raise the listen backlog of the server (e.g. nginx `listen 443 backlog=4096;`) and net.core.somaxconn / net.ipv4.tcp_max_syn_backlog to match.".into(),
            "Add workers/threads or capacity, and check the application is not stuck (blocked event loop, exhausted worker pool, CPU or memory limits).".into(),
            "Keep net.ipv4.tcp_syncookies=1; it helps a full SYN queue but not a full accept queue.".into(),
        ],
    )
}

/// Resets after the handshake, explained by the kernel's RST reasons (6.10+) or, before
/// that, by the TcpExt abort counters that rose.
pub(super) fn reset_by_origin(i: &Inputs<'_>) -> Cause {
    let mut evidence = vec![format!(
        "{} of {} edge connections completed the handshake and were then reset by the origin",
        i.edge.origin_resets, i.edge.handshakes
    )];
    let mut next_steps = Vec::new();
    let mut explained = |name: &str, n: u64, how: &str, evidence: &mut Vec<String>| {
        let m = reset_meaning(name);
        evidence.push(format!("{how} {name} ×{n}: {}", m.what));
        if !next_steps.contains(&m.next.to_string()) {
            next_steps.push(m.next.to_string());
        }
    };
    let by_reason: Vec<(&str, u64)> = i
        .classes
        .iter()
        .filter(|c| c.outcome == Some(Outcome::OriginReset))
        .filter_map(|c| Some((c.reason.as_deref()?, c.attempts)))
        .collect();
    if by_reason.is_empty() {
        for (counter, name) in RESET_COUNTERS {
            if let Some(n) = i.counter_deltas.get(counter).filter(|n| **n > 0) {
                explained(
                    name,
                    *n,
                    &format!("kernel counter {counter} rose:"),
                    &mut evidence,
                );
            }
        }
    } else {
        for (name, n) in by_reason {
            explained(name, n, "kernel RST reason", &mut evidence);
        }
    }
    if evidence.len() == 1 {
        evidence.push("the kernel gave no reason: application abort, SO_LINGER 0, TLS failure or worker crash".into());
        next_steps.push("Check the web server and application logs at the times of the resets (crashes, aborted requests, connection limits).".into());
    }
    next_steps.push("Under Full/Full (Strict) SSL, test the TLS handshake as Cloudflare does: openssl s_client -connect <origin-ip>:443 -servername <hostname>; a valid, unexpired certificate whose name matches is needed.".into());
    next_steps.push("Check proxies or load balancers in front of the application for connection limits and idle timeouts.".into());
    Cause::new(
        Verdict::ResetByOrigin,
        i.edge.origin_resets,
        evidence,
        next_steps,
    )
}

pub(super) fn unanswered(i: &Inputs<'_>, attempts: u64) -> Cause {
    let mut evidence = vec![format!(
        "{attempts} edge SYNs reached {} but got no answer the kernel recorded: no SYN-ACK retransmitted, no RST, no drop, and no listen-queue counter rose",
        i.interface
    )];
    let mut next_steps = Vec::new();
    if let Some(n) = i.counter_deltas.get("ListenDrops").filter(|n| **n > 0) {
        // ListenDrops without ListenOverflows: the listener dropped SYNs with room in its queue.
        evidence.push(format!(
            "kernel counter ListenDrops rose by {n} while ListenOverflows did not: a listener dropped SYNs with room in its queue — when no route can carry its SYN-ACK back, for lack of memory, or by a security module"
        ));
        next_steps.push("Check the route back to the edge (`ip route get <edge address> from <origin address>`, `ip rule show`) and the kernel log for memory pressure (`dmesg`); this is not a full accept queue: raising backlogs will not help.".into());
    }
    next_steps.extend([
        "Capture on the interface while the edge connects (tcpdump -ni <iface> 'tcp[tcpflags] & (tcp-syn|tcp-rst) != 0') to see whether anything answers.".to_string(),
        "Check for something consuming SYNs before TCP (a tc or XDP program redirecting them, an IPVS or proxy rule).".to_string(),
    ]);
    Cause::new(Verdict::Unanswered, attempts, evidence, next_steps)
}

/// Drops for reasons other than no socket, a filter, a full queue or reverse-path filtering:
/// each reason with its plain meaning and next step; an unknown one is said to be unknown.
pub(super) fn other_drop(i: &Inputs<'_>, attempts: u64) -> Cause {
    let mut evidence = vec![format!(
        "{attempts} edge connection attempts were dropped by the kernel for other reasons"
    )];
    let mut next_steps = Vec::new();
    for (name, n) in i
        .other_reasons
        .iter()
        .filter(|(r, _)| *r != super::RPFILTER)
    {
        let m = drop_meaning(name);
        evidence.push(format!("kernel drop reason {name} ×{n}: {}", m.what));
        let step = m.next.replace("<iface>", i.interface);
        if !next_steps.contains(&step) {
            next_steps.push(step);
        }
    }
    Cause::new(Verdict::OtherDrop, attempts, evidence, next_steps)
}

pub(super) fn healthy(i: &Inputs<'_>) -> Cause {
    Cause::new(
        Verdict::Healthy,
        i.edge.handshakes,
        vec![format!(
            "{} of {} edge connection attempts completed the handshake; no failure reached 5%",
            i.edge.handshakes, i.edge.syn
        )],
        vec![
            "The origin accepts Cloudflare's connections now: if 521s continue, check other origins behind the same hostname and the DNS record, and run this again while the errors happen.".into(),
        ],
    )
}

/// Attempts whose answer may be among events the kernel lost: counted apart, never as
/// unanswered, so a flood that overflows the ring buffer cannot fake a silent origin.
pub(super) fn unknown(i: &Inputs<'_>) -> Cause {
    Cause::new(
        Verdict::Unknown,
        i.edge.unknown,
        vec![format!(
            "{} edge connection attempts got no answer the tracer saw, but the kernel lost events while they were open ({} lost): their outcome is unknown and every count is a lower bound",
            i.edge.unknown, i.lost_events
        )],
        vec![
            "Run again when the load is lower, or watch fewer ports (--port): the kernel's ring buffer overflowed.".into(),
            "Compare with the kernel's own counters (`nstat -az TcpExtListenOverflows TcpOutRsts`) for the window.".into(),
        ],
    )
}

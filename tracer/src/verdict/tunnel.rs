//! A Cloudflare Tunnel's findings into the report: `tunnel_origin_unreachable` for each
//! service `cloudflared` dials and cannot reach (502), `tunnel_down` when it holds no
//! connection to the edge (1033/530), or a healthy tunnel. A tunnel origin receives no edge
//! SYN: while a tunnel runs, `never_arriving` is what a tunnel looks like, not a fault.

use std::collections::BTreeMap;

use super::{Cause, Verdict};
use crate::{
    correlate::tunnel::{ServiceDials, TunnelSeen},
    origin::listeners::Listener,
};

/// Adds the tunnel's causes to a window's verdict and causes.
pub fn apply(
    verdict: &mut Verdict,
    causes: &mut Vec<Cause>,
    notes: &mut Vec<String>,
    seen: Option<&TunnelSeen>,
) {
    let Some(seen) = seen else {
        return;
    };
    let (mut found, tunnel_notes) = causes_of(seen);
    notes.extend(tunnel_notes);
    match *verdict {
        Verdict::NeverArriving => {
            notes.push(format!(
                "no SYN from Cloudflare's ranges arrived directly: the edge reaches this origin through the tunnel ({})",
                processes_text(seen)
            ));
            causes.retain(|c| c.verdict != Verdict::NeverArriving);
            if found.is_empty() {
                found.push(healthy(seen));
            }
            *verdict = found[0].verdict;
            found.append(causes);
            *causes = found;
        }
        Verdict::Healthy if !found.is_empty() => {
            *verdict = found[0].verdict;
            found.append(causes);
            *causes = found;
        }
        _ => causes.append(&mut found),
    }
}

/// "the kernel dropped 6 of cloudflared's SYNs to 127.0.0.1:8080 (NETFILTER_DROP ×6: an
/// nftables/iptables rule dropped or rejected it)" — what the drop hook saw of these dials,
/// by the kernel's reason.
fn syn_drops_text(
    seen: &TunnelSeen,
    c: &crate::correlate::dials::DialCounts,
    to: &str,
) -> Option<String> {
    let total: u64 = c.syn_drops.values().sum();
    if total == 0 {
        return None;
    }
    let parts: Vec<String> = c
        .syn_drops
        .iter()
        .map(|(r, n)| {
            let name = seen.drop_name(*r);
            let meaning = crate::reasons::meaning::drop_meaning(name);
            if meaning.known {
                format!("{name} ×{n}: {}", meaning.what)
            } else {
                format!("{name} ×{n}")
            }
        })
        .collect();
    Some(format!(
        "the kernel dropped {total} of {}'s SYNs to {to} ({})",
        seen.name,
        parts.join("; ")
    ))
}

fn processes_text(seen: &TunnelSeen) -> String {
    if seen.processes.is_empty() {
        return format!("{} dialled, and is gone", seen.name);
    }
    seen.processes
        .iter()
        .map(|p| p.describe())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The tunnel's failing causes, largest first, and notes for what does not fail.
pub fn causes_of(seen: &TunnelSeen) -> (Vec<Cause>, Vec<String>) {
    let mut causes = Vec::new();
    let mut notes = Vec::new();
    // Dials refused on one address and connected on another of the same port: cloudflared
    // (Go) tries each address `localhost` resolves to, so the service is reached.
    let mut connected_by_port: BTreeMap<u16, u64> = BTreeMap::new();
    for s in &seen.services {
        *connected_by_port.entry(s.target.port()).or_default() += s.counts.connected;
    }
    for s in &seen.services {
        // A dial given up by cloudflared is its own connect timeout, unless another address
        // of the port connected (the slower of two dials is cancelled): the rule below.
        let failed = s.counts.not_connected();
        if failed + s.counts.resets() == 0 {
            continue;
        }
        let connected_elsewhere =
            connected_by_port[&s.target.port()].saturating_sub(s.counts.connected);
        if s.counts.resets() == 0 && connected_elsewhere >= failed {
            notes.push(format!(
                "{} dialled {} {} times first ({}), then connected to the same port on another address: the service is reached, at the cost of a failed dial each time — name that address in cloudflared's ingress rule",
                processes_text(seen),
                s.target,
                s.counts.dials,
                s.counts.failures_text()
            ));
            continue;
        }
        causes.push(origin_unreachable(seen, s));
    }
    if let Some(down) = tunnel_down(seen) {
        causes.push(down);
    }
    if let Some(n) = seen.udp_rcvbuf_errors.filter(|n| *n > 0) {
        notes.push(format!(
            "UdpRcvbufErrors rose by {n} in {}'s namespace: QUIC datagrams from the edge were dropped for a full receive buffer — raise net.core.rmem_max and net.core.rmem_default (cloudflared asks for 7.5 MB)",
            seen.name
        ));
    }
    causes.sort_by_key(|c| std::cmp::Reverse(c.attempts));
    (causes, notes)
}

/// The address a URL in cloudflared's `ingress` names: `http://127.0.0.1:8080`,
/// `http://[::1]:8080`.
fn service_url(l: &Listener, port: u16) -> String {
    let host = match l.addr {
        a if a.is_unspecified() && a.is_ipv6() => "[::1]".to_string(),
        a if a.is_unspecified() => "127.0.0.1".to_string(),
        std::net::IpAddr::V6(a) => format!("[{a}]"),
        a => a.to_string(),
    };
    format!("http://{host}:{port}")
}

fn origin_unreachable(seen: &TunnelSeen, s: &ServiceDials) -> Cause {
    let target = s.target;
    let port = target.port();
    let c = &s.counts;
    let mut evidence = vec![format!(
        "{} dialled {target} {} times in the window: {}{}",
        processes_text(seen),
        c.dials,
        c.failures_text(),
        if c.connected > 0 {
            format!("; {} connected", c.connected)
        } else {
            String::new()
        }
    )];
    let dropped = syn_drops_text(seen, c, &target.to_string());
    if let Some(d) = &dropped {
        evidence.push(d.clone());
    }
    let mut next = Vec::new();
    let accepting: Vec<&Listener> = s
        .listeners
        .iter()
        .filter(|l| l.accepts(target.ip()))
        .collect();
    if s.on_this_host == Some(false) {
        evidence.push(format!(
            "{} is not an address of {}'s network namespace: the service runs on another host or in a container",
            target.ip(),
            seen.name
        ));
        next.push(format!(
            "Check the service at {target} is up and reachable from this host (`curl -v http://{target}/`), and that a firewall between them allows it; for a container, name it in the ingress rule by an address or name this host resolves."
        ));
    } else if s.listeners.is_empty() {
        evidence.push(format!(
            "nothing listens on port {port} where {} runs",
            seen.name
        ));
        next.push(format!(
            "Start the service so it listens on {target} (or on all addresses), or correct the port in cloudflared's ingress rule (`service: http://localhost:{port}` must name the port the service listens on); check the service's logs if it crashed."
        ));
    } else if accepting.is_empty() {
        let bound: Vec<String> = s.listeners.iter().map(Listener::endpoint).collect();
        evidence.push(format!(
            "dialled {target}; the service listens on {} only",
            bound.join(", ")
        ));
        let url = service_url(&s.listeners[0], port);
        next.push(format!(
            "In cloudflared's ingress rule, name the address the service listens on: `service: {url}` instead of `localhost:{port}` (localhost resolves to {} first here), then restart cloudflared.",
            target.ip()
        ));
        next.push(format!(
            "Or make the service listen on {target} too, or on all addresses (nginx: `listen {}:{port};`).",
            if target.is_ipv6() { "[::]" } else { "0.0.0.0" }
        ));
    } else if c.not_connected() > 0 {
        let queue: Vec<String> = accepting
            .iter()
            .filter(|l| l.queue_full())
            .map(|l| format!("{} ({})", l.endpoint(), l.queue_text()))
            .collect();
        let listening: Vec<String> = accepting.iter().map(|l| l.endpoint()).collect();
        if !queue.is_empty() {
            evidence.push(format!(
                "the service's accept queue is full: {}",
                queue.join(", ")
            ));
            next.push("The service is not accepting fast enough: raise its worker count and listen backlog, or find what blocks it.".into());
        } else if dropped.is_some() {
            evidence.push(format!(
                "a listener takes {target} ({}): the SYNs never reached it",
                listening.join(", ")
            ));
            next.push(format!(
                "Check the firewall for rules on the loopback interface and the output path that match port {port}: `nft list ruleset | grep -n -e 'lo' -e {port}` or `iptables -S | grep -e lo -e {port}`; loopback traffic must be accepted."
            ));
        } else {
            evidence.push(format!(
                "a listener takes {target} ({}), yet the dials failed: a firewall rule between {} and the service rejects or drops them, or the service restarted in the window",
                listening.join(", "),
                seen.name
            ));
            next.push(format!(
                "Check the firewall for rules on the loopback interface and the output path that match port {port}: `nft list ruleset | grep -n -e 'lo' -e {port}` or `iptables -S | grep -e lo -e {port}`; loopback traffic must be accepted."
            ));
        }
    }
    if c.resets() > 0 {
        evidence.push(format!(
            "the service reset {} connections cloudflared had opened",
            c.resets()
        ));
        next.push("Check the service's logs at the times of the resets: it closed connections with unread requests, crashed, or hit a limit.".into());
    }
    let mut cause = Cause::new(
        Verdict::TunnelOriginUnreachable,
        c.not_connected() + c.resets(),
        evidence,
        next,
    );
    cause.evidence.push(super::error_text(502));
    cause
}

fn tunnel_down(seen: &TunnelSeen) -> Option<Cause> {
    let e = &seen.edge;
    let s = &seen.edge_sockets;
    let stopped = seen.running.is_empty();
    if !stopped && s.any() {
        return None;
    }
    let mut evidence = Vec::new();
    if stopped {
        evidence.push(format!(
            "{} is not running at the window's end ({} seen during it)",
            seen.name,
            processes_text(seen)
        ));
    } else {
        evidence.push(format!(
            "{} holds no connection to Cloudflare's edge: no TCP connection to port 7844 established{}, no UDP (QUIC) socket",
            processes_text(seen),
            if s.tcp_connecting > 0 {
                format!(" ({} still connecting)", s.tcp_connecting)
            } else {
                String::new()
            }
        ));
    }
    if e.dials > 0 {
        evidence.push(format!(
            "{} dials to the edge in the window: {}{}",
            e.dials,
            if e.not_connected() > 0 {
                e.failures_text()
            } else {
                "none failed".into()
            },
            if e.connected > 0 {
                format!("; {} connected", e.connected)
            } else {
                String::new()
            }
        ));
    } else if !stopped {
        evidence.push("it dialled nothing toward the edge in the window".into());
    }
    if let Some(d) = syn_drops_text(seen, e, "the edge") {
        evidence.push(d);
    }
    evidence.push(super::error_text(1033));
    let next = vec![
        if stopped {
            format!("Start {} again (`systemctl restart cloudflared`) and find why it stopped (`journalctl -u cloudflared`).", seen.name)
        } else {
            "Read cloudflared's log (`journalctl -u cloudflared`): an invalid or revoked tunnel token, or a deleted tunnel, shows there; `cloudflared tunnel info NAME` lists the edge's connections.".into()
        },
        "Allow outbound TCP and UDP to port 7844 (region1.v2.argotunnel.com and region2.v2.argotunnel.com) in this host's and the network's firewalls; where UDP is blocked, run cloudflared with `--protocol http2`.".into(),
    ];
    Some(Cause::new(
        Verdict::TunnelDown,
        e.not_connected().max(1),
        evidence,
        next,
    ))
}

fn healthy(seen: &TunnelSeen) -> Cause {
    let connected: u64 = seen.services.iter().map(|s| s.counts.connected).sum();
    let targets: Vec<String> = seen.services.iter().map(|s| s.target.to_string()).collect();
    let s = &seen.edge_sockets;
    let mut evidence = vec![if targets.is_empty() {
        format!(
            "{} dialled no service in the window: no request came through the tunnel, or its ingress rule names a host that does not resolve (a name is looked up before any connection, so a failed lookup leaves nothing to see here; cloudflared's log says `no such host`)",
            processes_text(seen)
        )
    } else {
        format!(
            "{} connected to its service {connected} times ({}), none failed",
            processes_text(seen),
            targets.join(", ")
        )
    }];
    evidence.push(format!(
        "toward the edge: {} TCP connections to port 7844 established, {} UDP (QUIC) sockets",
        s.tcp_established, s.udp
    ));
    Cause::new(
        Verdict::Healthy,
        connected,
        evidence,
        vec!["The tunnel reaches its service and the edge now: if visitors see 502 or 1033, run this again while they do; `cloudflared tunnel info NAME` shows the edge's side.".into()],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        correlate::dials::DialCounts, model::dial::SocketError, origin::tunnel::EdgeSockets,
    };

    fn all_text(c: &Cause) -> String {
        format!("{}\n{}", c.evidence.join("\n"), c.next_steps.join("\n"))
    }

    fn listener(addr: &str, port: u16) -> Listener {
        Listener {
            addr: addr.parse().unwrap(),
            port,
            ..Listener::default()
        }
    }

    #[test]
    fn localhost_as_ipv6_against_an_ipv4_listener_names_both_and_the_ingress_fix() {
        let (causes, _) = causes_of(&TunnelSeen::sample());
        assert_eq!(causes.len(), 1);
        let c = &causes[0];
        assert_eq!(c.verdict, Verdict::TunnelOriginUnreachable);
        assert_eq!(c.cloudflare_error, Some(502));
        assert_eq!(c.attempts, 12);
        let text = all_text(c);
        assert!(
            text.contains("dialled [::1]:8080 12 times in the window: 12 refused (ECONNREFUSED)"),
            "{text}"
        );
        assert!(
            text.contains("dialled [::1]:8080; the service listens on 127.0.0.1:8080 only"),
            "{text}"
        );
        assert!(
            text.contains("`service: http://127.0.0.1:8080` instead of `localhost:8080`"),
            "{text}"
        );
        assert!(text.contains("nginx: `listen [::]:8080;`"), "{text}");
    }

    #[test]
    fn a_refused_address_with_a_working_fallback_is_a_note_not_a_cause() {
        let mut seen = TunnelSeen::sample();
        let mut v4 = seen.services[0].clone();
        v4.target = "127.0.0.1:8080".parse().unwrap();
        v4.counts = DialCounts {
            dials: 12,
            connected: 12,
            ..DialCounts::default()
        };
        seen.services.push(v4);
        let (causes, notes) = causes_of(&seen);
        assert!(causes.is_empty(), "{causes:#?}");
        assert!(
            notes[0].contains("then connected to the same port on another address"),
            "{notes:?}"
        );
    }

    #[test]
    fn nothing_listening_and_a_listener_that_refuses_are_told_apart() {
        let mut seen = TunnelSeen::sample();
        seen.services[0].listeners.clear();
        let text = all_text(&causes_of(&seen).0[0]);
        assert!(
            text.contains("nothing listens on port 8080 where cloudflared runs"),
            "{text}"
        );
        assert!(
            text.contains("correct the port in cloudflared's ingress rule"),
            "{text}"
        );

        seen.services[0].listeners = vec![listener("::", 8080)];
        let text = all_text(&causes_of(&seen).0[0]);
        assert!(
            text.contains("a listener takes [::1]:8080 ([::]:8080), yet the dials failed"),
            "{text}"
        );
        assert!(text.contains("loopback traffic must be accepted"), "{text}");
    }

    /// The drop hook's SYNs of the dials: a listener there and SYNs dropped by netfilter is
    /// said as the kernel's fact, not guessed; the same drops toward the edge join tunnel_down.
    #[test]
    fn syns_the_kernel_dropped_are_named_with_their_reason() {
        let table = crate::reasons::ReasonTable::for_tests(&[(6, "NETFILTER_DROP")], &[]);
        let netfilter = table.drop_reason(6);
        let mut seen = TunnelSeen::sample();
        let s = &mut seen.services[0];
        s.target = "127.0.0.1:8080".parse().unwrap();
        s.counts = DialCounts {
            dials: 2,
            failed: [(Some(SocketError(SocketError::NONE)), 2)].into(),
            syn_drops: [(Some(netfilter), 4)].into(),
            ..DialCounts::default()
        };
        seen.edge.syn_drops = [(None, 1)].into();
        seen.edge_sockets.tcp_established = 0;
        seen.name_drops(|r| table.name(r).into_owned());
        let (causes, _) = causes_of(&seen);
        let text = all_text(&causes[0]);
        assert!(
            text.contains("the kernel dropped 4 of cloudflared's SYNs to 127.0.0.1:8080 (NETFILTER_DROP ×4: an nftables/iptables rule dropped or rejected it)"),
            "{text}"
        );
        assert!(
            text.contains(
                "a listener takes 127.0.0.1:8080 (127.0.0.1:8080): the SYNs never reached it"
            ),
            "{text}"
        );
        assert!(!text.contains("or the service restarted"), "{text}");
        let down = causes
            .iter()
            .find(|c| c.verdict == Verdict::TunnelDown)
            .expect("tunnel_down");
        assert!(
            all_text(down)
                .contains("the kernel dropped 1 of cloudflared's SYNs to the edge (unknown ×1)"),
            "{}",
            all_text(down)
        );
    }

    #[test]
    fn dials_nobody_answered_count_and_a_remote_service_is_said() {
        let mut seen = TunnelSeen::sample();
        let s = &mut seen.services[0];
        s.target = "10.0.0.7:8080".parse().unwrap();
        s.on_this_host = Some(false);
        s.counts = DialCounts {
            dials: 4,
            ..DialCounts::default()
        };
        let c = &causes_of(&seen).0[0];
        assert_eq!(c.attempts, 4);
        let text = all_text(c);
        assert!(text.contains("4 unanswered"), "{text}");
        assert!(
            text.contains("not an address of cloudflared's network namespace"),
            "{text}"
        );
    }

    #[test]
    fn resets_after_connecting_are_unreachable_too() {
        let mut seen = TunnelSeen::sample();
        seen.services[0].counts = DialCounts {
            dials: 5,
            connected: 5,
            ended: [(Some(SocketError(SocketError::ECONNRESET)), 3)].into(),
            ..DialCounts::default()
        };
        seen.services[0].listeners = vec![listener("::1", 8080)];
        let c = &causes_of(&seen).0[0];
        assert_eq!(c.attempts, 3);
        assert!(
            all_text(c).contains("the service reset 3 connections"),
            "{c:#?}"
        );
    }

    #[test]
    fn no_edge_connection_or_no_process_is_tunnel_down() {
        let mut seen = TunnelSeen::sample();
        seen.services.clear();
        seen.edge_sockets = EdgeSockets::default();
        seen.edge = DialCounts {
            dials: 3,
            failed: [(Some(SocketError(SocketError::ECONNREFUSED)), 3)].into(),
            ..DialCounts::default()
        };
        let (causes, _) = causes_of(&seen);
        assert_eq!(causes[0].verdict, Verdict::TunnelDown);
        assert_eq!(causes[0].cloudflare_error, Some(1033));
        let text = all_text(&causes[0]);
        assert!(
            text.contains("no TCP connection to port 7844 established"),
            "{text}"
        );
        assert!(
            text.contains("3 dials to the edge in the window: 3 refused (ECONNREFUSED)"),
            "{text}"
        );

        seen.running.clear();
        let text = all_text(&causes_of(&seen).0[0]);
        assert!(
            text.contains("cloudflared is not running at the window's end"),
            "{text}"
        );
        assert!(text.contains("systemctl restart cloudflared"), "{text}");

        // A QUIC socket counts as a way to the edge.
        let mut quic = TunnelSeen::sample();
        quic.services.clear();
        quic.edge_sockets = EdgeSockets {
            udp: 1,
            ..EdgeSockets::default()
        };
        quic.udp_rcvbuf_errors = Some(40);
        let (causes, notes) = causes_of(&quic);
        assert!(causes.is_empty());
        assert!(notes[0].contains("UdpRcvbufErrors rose by 40"), "{notes:?}");
    }

    fn cause(v: Verdict) -> Cause {
        Cause::new(v, 3, vec!["e".into()], vec![])
    }

    #[test]
    fn a_tunnel_replaces_never_arriving_and_joins_failing_edge_verdicts() {
        // Nothing arrives directly, the tunnel works: healthy, never_arriving a note.
        let mut healthy = TunnelSeen::sample();
        healthy.services[0].counts = DialCounts {
            dials: 7,
            connected: 7,
            ..DialCounts::default()
        };
        let (mut v, mut causes, mut notes) = (
            Verdict::NeverArriving,
            vec![cause(Verdict::NeverArriving)],
            vec![],
        );
        apply(&mut v, &mut causes, &mut notes, Some(&healthy));
        assert_eq!(v, Verdict::Healthy);
        assert_eq!(causes.len(), 1);
        assert!(
            causes[0].evidence[0].contains("connected to its service 7 times"),
            "{causes:#?}"
        );
        assert!(notes[0].contains("through the tunnel"), "{notes:?}");

        // Nothing arrives, the tunnel fails: its cause is the verdict.
        let (mut v, mut causes, mut notes) = (
            Verdict::NeverArriving,
            vec![cause(Verdict::NeverArriving)],
            vec![],
        );
        apply(&mut v, &mut causes, &mut notes, Some(&TunnelSeen::sample()));
        assert_eq!(v, Verdict::TunnelOriginUnreachable);
        assert_eq!(causes.len(), 1);

        // Direct edge connections fail too: their verdict stays first, the tunnel's follows.
        let (mut v, mut causes, mut notes) =
            (Verdict::Refused, vec![cause(Verdict::Refused)], vec![]);
        apply(&mut v, &mut causes, &mut notes, Some(&TunnelSeen::sample()));
        assert_eq!(v, Verdict::Refused);
        assert_eq!(causes[1].verdict, Verdict::TunnelOriginUnreachable);

        // No tunnel: nothing changes.
        let (mut v, mut causes, mut notes) = (
            Verdict::NeverArriving,
            vec![cause(Verdict::NeverArriving)],
            vec![],
        );
        apply(&mut v, &mut causes, &mut notes, None);
        assert_eq!(
            (v, causes.len(), notes.len()),
            (Verdict::NeverArriving, 1, 0)
        );
    }
}

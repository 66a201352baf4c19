//! `return_path`: the edge's SYNs arrive and are answered, but the answers do not get back —
//! replies routed out another interface, an upstream that drops the origin's outbound, or
//! strict reverse-path filtering dropping the SYNs because the route back leaves elsewhere.

use super::{Cause, Inputs, Verdict, INPUT_ROUTE, RPFILTER};
use crate::{
    origin::routes::{rp_filter_text, Route},
    reasons::meaning::drop_meaning,
};

pub(super) fn return_path(i: &Inputs<'_>, lost_synacks: u64, rp_drops: u64) -> Cause {
    let mut evidence = Vec::new();
    let mut next_steps = Vec::new();
    if lost_synacks > 0 {
        evidence.push(format!(
            "{lost_synacks} edge SYNs were answered with SYN-ACKs ({} retransmitted) but no final ACK came back, and no listen-queue counter rose: the answers are lost on the way back",
            i.synack_retransmits
        ));
    }
    if rp_drops > 0 {
        let named = i.other_reasons.get(RPFILTER).copied().unwrap_or(0);
        if named > 0 {
            evidence.push(format!(
                "{named} edge SYNs were dropped with kernel reason {RPFILTER}: {}",
                drop_meaning(RPFILTER).what
            ));
        }
        if rp_drops > named {
            evidence.push(format!(
                "{} edge SYNs were dropped in the input route lookup ({INPUT_ROUTE}, read from the freeing function on this kernel) with strict reverse-path filtering on {}",
                rp_drops - named,
                i.interface
            ));
        }
    }
    let mut elsewhere: Vec<&Route> = Vec::new();
    for route in i.routes {
        match route {
            Ok(r) if r.dev != i.interface => {
                evidence.push(format!(
                    "the route back to {} from {} is {} — not {}, where the edge's SYNs arrive",
                    r.peer,
                    r.local,
                    r.describe(),
                    i.interface
                ));
                elsewhere.push(r);
            }
            Ok(r) => evidence.push(format!(
                "the route back to {} from {} is {}, the interface the SYNs arrived on: the replies leave the right way and are lost beyond this host",
                r.peer,
                r.local,
                r.describe()
            )),
            Err(e) => evidence.push(e.clone()),
        }
    }
    if let Some(mode) = i.rp_filter {
        evidence.push(format!(
            "reverse-path filtering on {}: {}",
            i.interface,
            rp_filter_text(mode)
        ));
    }
    for r in &elsewhere {
        next_steps.push(format!(
            "Send replies to Cloudflare back out {iface}: `ip route get {peer} from {local}` must name dev {iface}. Fix the route or add a policy rule for the origin's address, e.g. `ip rule add from {local} lookup 100` and `ip route add default via <gateway on {iface}> dev {iface} table 100` (persist it in the network configuration).",
            iface = i.interface,
            peer = r.peer,
            local = r.local
        ));
    }
    if rp_drops > 0 || i.rp_filter == Some(1) {
        next_steps.push(format!(
            "Use loose reverse-path filtering on {iface}: `sysctl -w net.ipv4.conf.{iface}.rp_filter=2` (and net.ipv4.conf.all.rp_filter=2 if `all` is 1 — the kernel applies the larger), persisted in /etc/sysctl.d/.",
            iface = i.interface
        ));
    }
    if elsewhere.is_empty() {
        next_steps.push(format!(
            "Check that SYN-ACKs leave {iface} (`tcpdump -ni {iface} 'tcp[tcpflags] & tcp-syn != 0 and tcp[tcpflags] & tcp-ack != 0'`), then outbound filtering beyond this host: cloud security group egress rules, the provider's firewall, an upstream router.",
            iface = i.interface
        ));
    }
    let mut steps = next_steps;
    steps.push("SYN-ACK retransmits alone are not overload: do not raise backlogs or add workers for this.".into());
    Cause::new(
        Verdict::ReturnPath,
        lost_synacks + rp_drops,
        evidence,
        steps,
    )
}

//! `return_path`: the edge's SYNs arrive and are answered — or taken — but the answers do not
//! get back: SYN-ACKs lost beyond this host, replies routed out another interface, strict
//! reverse-path filtering dropping the SYNs because the route back leaves elsewhere, a null
//! route (`unreachable`, `blackhole`, `prohibit`: fail2ban's `route` action, an admin's
//! null-routing) leaving the listener nothing to answer with, or a filter dropping the answers
//! on their way out, here or in the namespace they pass through (the host of a container).
//!
//! One verdict for all of them, not one each: to the edge they are the same 522 (a SYN with
//! no SYN-ACK back), and what tells them apart — the route, the namespace, the rule — is
//! evidence and fix, which each cause carries.

use super::{Cause, Inputs, LostAnswers, ReplyDrops, Verdict, INPUT_ROUTE, RPFILTER};
use crate::{
    origin::routes::{rp_filter_text, NullRouteEntry, Route},
    reasons::meaning::drop_meaning,
};

pub(super) fn return_path(i: &Inputs<'_>, lost: &LostAnswers) -> Cause {
    let mut evidence = Vec::new();
    let mut next_steps = Vec::new();
    // First: a route that swallows the ranges these peers came from (known without traffic).
    // Null routes are told below with the peer's own route (and unbanned the way they were
    // banned).
    for m in i.misrouted.iter().filter(|m| {
        !matches!(m.hop, crate::origin::range_routes::Hop::Null(_))
            && i.routes.iter().flatten().any(|r| m.range.contains(&r.peer))
    }) {
        evidence.push(format!(
            "this host routes replies to Cloudflare's {} by `{}`, not the way its default route goes (`tracer ranges --audit` lists every such range)",
            m.range,
            m.route_text()
        ));
        next_steps.push(super::sentence(&m.fix()));
    }
    for r in i.reply_drops {
        reply_drops(i, r, &mut evidence, &mut next_steps);
    }
    if lost.synacks > 0 {
        evidence.push(format!(
            "{} edge SYNs were answered with SYN-ACKs ({} retransmitted) but no final ACK came back, and no listen-queue counter rose: the answers are lost on the way back",
            lost.synacks, i.synack_retransmits
        ));
    }
    if lost.null_routed > 0 {
        evidence.push(format!(
            "{} edge SYNs were taken by the listener, which found no route for its SYN-ACK and dropped them{}",
            lost.null_routed,
            listen_drops_text(i)
        ));
    }
    if lost.rp_drops > 0 {
        rp_drop_evidence(i, lost.rp_drops, &mut evidence);
    }
    let mut elsewhere: Vec<&Route> = Vec::new();
    let mut nulls: Vec<&NullRouteEntry> = Vec::new();
    for route in i.routes {
        match route {
            Ok(r) if r.null.is_some() => {
                let n = r.null.as_ref().expect("checked");
                evidence.push(format!(
                    "the reply to {} from {} cannot be routed: the route that catches it is `{}`",
                    r.peer,
                    r.local,
                    r.describe()
                ));
                if !nulls.contains(&n) {
                    nulls.push(n);
                }
            }
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
    if let Some(mode) = i.rp_filter.filter(|_| lost.synacks + lost.rp_drops > 0) {
        evidence.push(format!(
            "reverse-path filtering on {}: {}",
            i.interface,
            rp_filter_text(mode)
        ));
    }
    null_route_steps(&nulls, &mut next_steps);
    for r in &elsewhere {
        next_steps.push(format!(
            "Send replies to Cloudflare back out {iface}: `ip route get {peer} from {local}` must name dev {iface}. Fix the route or add a policy rule for the origin's address, e.g. `ip rule add from {local} lookup 100` and `ip route add default via <gateway on {iface}> dev {iface} table 100` (persist it in the network configuration).",
            iface = i.interface,
            peer = r.peer,
            local = r.local
        ));
    }
    if lost.rp_drops > 0 || (i.rp_filter == Some(1) && lost.synacks > 0) {
        next_steps.push(format!(
            "Use loose reverse-path filtering on {iface}: `sysctl -w net.ipv4.conf.{iface}.rp_filter=2` (and net.ipv4.conf.all.rp_filter=2 if `all` is 1 — the kernel applies the larger), persisted in /etc/sysctl.d/.",
            iface = i.interface
        ));
    }
    if lost.synacks > 0 && elsewhere.is_empty() {
        next_steps.push(format!(
            "Check that SYN-ACKs leave {iface} (`tcpdump -ni {iface} 'tcp[tcpflags] & tcp-syn != 0 and tcp[tcpflags] & tcp-ack != 0'`), then outbound filtering beyond this host: cloud security group egress rules, the provider's firewall, an upstream router.",
            iface = i.interface
        ));
    }
    next_steps.push(
        "Lost answers are not overload: do not raise backlogs or add workers for this.".into(),
    );
    Cause::new(Verdict::ReturnPath, lost.total(), evidence, next_steps)
}

/// " (kernel counter ListenDrops rose by 3, ListenOverflows did not: the accept queue had room)"
fn listen_drops_text(i: &Inputs<'_>) -> String {
    let drops = i.counter_deltas.get("ListenDrops").copied().unwrap_or(0);
    let overflows = i
        .counter_deltas
        .get("ListenOverflows")
        .copied()
        .unwrap_or(0);
    match (drops, overflows) {
        (0, _) => String::new(),
        (d, 0) => format!(
            " (kernel counter ListenDrops rose by {d}, ListenOverflows did not: the accept queue had room)"
        ),
        (d, o) => format!(" (kernel counters ListenDrops rose by {d}, ListenOverflows by {o})"),
    }
}

fn rp_drop_evidence(i: &Inputs<'_>, rp_drops: u64, evidence: &mut Vec<String>) {
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

/// The fix for null routes: delete them; those with fail2ban's shape are unbanned through
/// fail2ban (deleting its route by hand leaves its state behind, and it bans again).
fn null_route_steps(nulls: &[&NullRouteEntry], next_steps: &mut Vec<String>) {
    let quoted = |list: &[&&NullRouteEntry], f: &dyn Fn(&NullRouteEntry) -> String| {
        list.iter()
            .map(|n| format!("`{}`", f(n)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (routes, rules): (Vec<&&NullRouteEntry>, Vec<&&NullRouteEntry>) =
        nulls.iter().partition(|n| n.prefix.is_some());
    for n in rules {
        next_steps.push(format!(
            "No route of type {kind} covers the edge's addresses, so a policy rule does (`ip rule show` lists rules with action {kind}): delete it with `ip rule del …` naming its priority.",
            kind = n.kind.as_str()
        ));
    }
    let bans: Vec<&&NullRouteEntry> = routes
        .iter()
        .copied()
        .filter(|n| n.looks_like_a_ban())
        .collect();
    if let Some(first) = bans.first().and_then(|n| n.prefix) {
        let ip = first.addr();
        next_steps.push(format!(
            "{} {} the shape fail2ban's `route` ban action writes (`ip route add <blocktype> <ip>`). If fail2ban banned {}, unban through it, or it bans again: `fail2ban-client banned {ip}` names the jail, then `fail2ban-client set <jail> unbanip {ip}`. Add Cloudflare's ranges to `ignoreip` in /etc/fail2ban/jail.local: behind Cloudflare the address to ban is the visitor's (CF-Connecting-IP), never the edge's.",
            quoted(&bans, &|n| n.describe()),
            if bans.len() == 1 { "has" } else { "have" },
            if bans.len() == 1 { "this edge address" } else { "these edge addresses" },
        ));
    }
    if !routes.is_empty() {
        next_steps.push(format!(
            "{} the null route{} that swallow{} the edge's replies: {} (and from the network configuration that adds {} at boot), or narrow {} so {} no longer cover{} Cloudflare's ranges.",
            if bans.is_empty() { "Remove" } else { "Otherwise remove" },
            if routes.len() == 1 { "" } else { "s" },
            if routes.len() == 1 { "s" } else { "" },
            quoted(&routes, &|n| n.delete_command()),
            if routes.len() == 1 { "it" } else { "them" },
            if routes.len() == 1 { "it" } else { "them" },
            if routes.len() == 1 { "it" } else { "they" },
            if routes.len() == 1 { "s" } else { "" },
        ));
    }
}

/// The answers dropped on their way out of this namespace, or in the one they pass through.
fn reply_drops(
    i: &Inputs<'_>,
    r: &ReplyDrops,
    evidence: &mut Vec<String>,
    next_steps: &mut Vec<String>,
) {
    let where_ = if r.own {
        format!(
            "by this namespace's own output path, after {} answered",
            i.interface
        )
    } else {
        format!(
            "in {}, which this namespace's replies pass through — not by this namespace's firewall, and not beyond this host",
            r.place
        )
    };
    evidence.push(format!(
        "the SYN-ACKs answering {} edge attempts were dropped (kernel reason {}) {where_}",
        r.attempts, r.reason
    ));
    let enter = r
        .enter
        .as_deref()
        .map(|e| format!("{e} "))
        .unwrap_or_default();
    match &r.rules {
        Ok(rules) if !rules.is_empty() => {
            for f in rules {
                evidence.push(format!(
                    "{}: {}",
                    if f.certain {
                        "the rule that drops them"
                    } else {
                        "a rule that may drop them"
                    },
                    f.rule
                ));
            }
            next_steps.push(format!(
                "Let the origin's replies through {}: delete or narrow that rule (`{enter}nft -a list ruleset` shows its handle; `{enter}nft delete rule <family> <table> <chain> handle <handle>`), or accept the connections it has seen first (`ct state established,related accept` before it).",
                if r.own { "this namespace's output path".to_string() } else { r.place.clone() }
            ));
        }
        Ok(_) => {
            evidence.push(format!(
                "no rule of that namespace's nftables ruleset evaluated as dropping a SYN-ACK to the edge: look at iptables-legacy (`{enter}iptables-legacy-save`), tc and BPF filters there"
            ));
            next_steps.push(format!(
                "Find what drops the replies in {}: `{enter}nft -a list ruleset`, `{enter}iptables-legacy-save`, `{enter}tc filter show dev <its interface> egress`.",
                r.place
            ));
        }
        Err(why) => {
            evidence.push(format!("its ruleset was not read: {why}"));
            next_steps.push(format!(
                "Read the ruleset of {} (`{enter}nft -a list ruleset`) for a rule dropping traffic to Cloudflare's ranges or SYN-ACKs in its forward path, and remove or narrow it.",
                r.place
            ));
        }
    }
}

//! The return path's rule with recorded inputs: null routes, answers dropped in another
//! namespace, and `ListenDrops` that is not overload.

use super::tests::{class, fixture, inputs};
use super::*;
use crate::{
    correlate::Counts,
    origin::{
        firewall::Finding,
        routes::{NullRoute, NullRouteEntry, Route},
    },
};

fn null_route(
    peer: &str,
    kind: NullRoute,
    prefix: &str,
    table: Option<&str>,
) -> Result<Route, String> {
    Ok(Route {
        peer: peer.parse().unwrap(),
        local: "192.0.2.1".parse().unwrap(),
        dev: String::new(),
        gateway: None,
        prefsrc: None,
        table: None,
        null: Some(NullRouteEntry {
            kind,
            prefix: Some(prefix.parse().unwrap()),
            table: table.map(String::from),
        }),
    })
}

fn unanswered(n: u64) -> Counts {
    Counts {
        syn: n,
        unanswered: n,
        ..Counts::default()
    }
}

#[test]
fn a_null_route_to_the_edge_is_the_return_path_not_overload() {
    // What the kernel shows for `ip route add unreachable 173.245.48.10`: the SYNs arrive,
    // the listener finds no route for its SYN-ACK, ListenDrops rises, ListenOverflows does not.
    let mut f = fixture();
    f.deltas.insert("ListenDrops".into(), 3);
    let classes = [class(Outcome::Unanswered, None, &[("173.245.48.10", 3)])];
    let routes = [null_route(
        "173.245.48.10",
        NullRoute::Unreachable,
        "173.245.48.10/32",
        None,
    )];
    let mut i = inputs(&f, unanswered(3));
    i.classes = &classes;
    i.routes = &routes;
    let (v, causes) = decide(&i);
    assert_eq!(v, Verdict::ReturnPath, "{causes:#?}");
    assert_eq!(causes.len(), 1, "{causes:#?}");
    let c = &causes[0];
    assert_eq!((c.attempts, c.cloudflare_error), (3, Some(522)));
    let ev = c.evidence.join("\n");
    assert!(ev.contains("`unreachable 173.245.48.10`"), "{ev}");
    assert!(
        ev.contains("ListenDrops rose by 3, ListenOverflows did not"),
        "{ev}"
    );
    let steps = c.next_steps.join("\n");
    assert!(
        steps.contains("ip route del unreachable 173.245.48.10"),
        "{steps}"
    );
    assert!(
        steps.contains("fail2ban-client set <jail> unbanip 173.245.48.10"),
        "{steps}"
    );
    assert!(!steps.contains("backlog="), "{steps}");
    assert_eq!(c.peers[0].addr.to_string(), "173.245.48.10");
}

#[test]
fn a_null_route_for_a_range_in_another_table_is_not_called_a_ban() {
    let f = fixture();
    let classes = [class(Outcome::Unanswered, None, &[("2606:4700::10", 2)])];
    let routes = [null_route(
        "2606:4700::10",
        NullRoute::Blackhole,
        "2606:4700::/32",
        Some("100"),
    )];
    let mut i = inputs(&f, unanswered(2));
    i.classes = &classes;
    i.routes = &routes;
    let (v, causes) = decide(&i);
    assert_eq!(v, Verdict::ReturnPath);
    let steps = causes[0].next_steps.join("\n");
    assert!(
        steps.contains("ip -6 route del blackhole 2606:4700::/32 table 100"),
        "{steps}"
    );
    assert!(!steps.contains("fail2ban"), "{steps}");
}

#[test]
fn listen_drops_alone_are_not_overload() {
    let mut f = fixture();
    f.deltas.insert("ListenDrops".into(), 4);
    let i = inputs(&f, unanswered(4));
    let (v, causes) = decide(&i);
    assert_eq!(v, Verdict::Unanswered, "{causes:#?}");
    let ev = causes[0].evidence.join("\n");
    assert!(
        ev.contains("ListenDrops rose by 4 while ListenOverflows did not"),
        "{ev}"
    );
    assert!(!causes[0].next_steps.join("\n").contains("backlog="));
}

#[test]
fn a_full_queue_is_still_overload() {
    for counter in ["ListenOverflows", "TCPReqQFullDrop", "TCPReqQFullDoCookies"] {
        let mut f = fixture();
        f.deltas.insert("ListenDrops".into(), 3);
        f.deltas.insert(counter.into(), 3);
        let classes = [class(Outcome::Unanswered, None, &[("173.245.48.10", 3)])];
        let mut i = inputs(&f, unanswered(3));
        i.classes = &classes;
        i.synack_retransmits = 2;
        let (v, causes) = decide(&i);
        assert_eq!(v, Verdict::Overloaded, "{counter}: {causes:#?}");
        assert_eq!(causes[0].peers.len(), 1);
    }
}

fn host_drops(rules: Result<Vec<Finding>, String>) -> ReplyDrops {
    ReplyDrops {
        place: "the host's network namespace netns:[4026531840] (pid 1's)".into(),
        own: false,
        reason: "NETFILTER_DROP".into(),
        attempts: 3,
        rules,
        enter: Some("nsenter --net=/proc/1/ns/net".into()),
    }
}

fn forward_rule() -> Finding {
    Finding {
        rule: "forward rule 1: ip daddr 173.245.48.0/20 tcp flags syn,ack / syn,ack drop (table inet hostfw, handle 2)".into(),
        certain: true,
        family: "inet".into(),
        table: "hostfw".into(),
        chain: "forward".into(),
        base_chain: "forward".into(),
        owner: None,
        rate_limit: None,
        rejects: false,
    }
}

#[test]
fn answers_dropped_in_the_hosts_forward_path_are_named_there() {
    let f = fixture();
    let drops = [host_drops(Ok(vec![forward_rule()]))];
    let classes = [class(Outcome::Unanswered, None, &[("173.245.48.10", 3)])];
    let mut i = inputs(&f, unanswered(3));
    i.synack_retransmits = 6;
    i.reply_drops = &drops;
    i.classes = &classes;
    let (v, causes) = decide(&i);
    assert_eq!(v, Verdict::ReturnPath, "{causes:#?}");
    let c = &causes[0];
    assert_eq!((c.attempts, c.cloudflare_error), (3, Some(522)));
    let ev = c.evidence.join("\n");
    assert!(ev.contains("dropped (kernel reason NETFILTER_DROP) in the host's network namespace netns:[4026531840]"), "{ev}");
    assert!(ev.contains("not by this namespace's firewall"), "{ev}");
    assert!(
        ev.contains("the rule that drops them: forward rule 1"),
        "{ev}"
    );
    assert!(!ev.contains("this host's firewall drops"), "{ev}");
    let steps = c.next_steps.join("\n");
    assert!(
        steps.contains("nsenter --net=/proc/1/ns/net nft -a list ruleset"),
        "{steps}"
    );
    // An unreadable ruleset is said, with where to read it.
    let drops = [host_drops(Err(
        "cannot enter /proc/1/ns/net: Operation not permitted".into(),
    ))];
    i.reply_drops = &drops;
    let (_, causes) = decide(&i);
    let ev = causes[0].evidence.join("\n");
    assert!(
        ev.contains("its ruleset was not read: cannot enter"),
        "{ev}"
    );
}

#[test]
fn answers_dropped_outrank_queue_counters_for_their_attempts() {
    let mut f = fixture();
    f.deltas.insert("ListenOverflows".into(), 2);
    let drops = [host_drops(Ok(vec![forward_rule()]))];
    let mut i = inputs(&f, unanswered(5));
    i.reply_drops = &drops;
    let (v, causes) = decide(&i);
    assert_eq!(v, Verdict::ReturnPath, "{causes:#?}");
    let by: Vec<(Verdict, u64)> = causes.iter().map(|c| (c.verdict, c.attempts)).collect();
    assert_eq!(by, [(Verdict::ReturnPath, 3), (Verdict::Overloaded, 2)]);
}

/// #31: SYN-ACKs to an edge peer in 172.64.0.0/13 lost while a VPN route `172.0.0.0/8` takes
/// the range: the swallowing route is said first, with its fix, before the per-peer route.
#[test]
fn a_range_swallowed_by_a_route_is_named_first() {
    use crate::origin::range_routes::{Hop, Misrouted};
    let f = fixture();
    let classes = [class(Outcome::Unanswered, None, &[("172.64.1.10", 3)])];
    let routes = [Ok(Route {
        peer: "172.64.1.10".parse().unwrap(),
        local: "192.0.2.1".parse().unwrap(),
        dev: "vpn0".into(),
        gateway: Some("10.8.0.1".parse().unwrap()),
        prefsrc: None,
        table: None,
        null: None,
    })];
    let via = |dev: &str, gw: &str| Hop::Via {
        dev: dev.into(),
        gateway: Some(gw.parse().unwrap()),
        table: None,
    };
    let misrouted = [
        Misrouted {
            range: "172.64.0.0/13".parse().unwrap(),
            probe: "172.64.0.0".parse().unwrap(),
            prefix: Some("172.0.0.0/8".parse().unwrap()),
            hop: via("vpn0", "10.8.0.1"),
            default: Some(via("eth0", "192.0.2.254")),
        },
        // A swallowed range no peer of this window came from is left to the audit.
        Misrouted {
            range: "104.16.0.0/13".parse().unwrap(),
            probe: "104.16.0.0".parse().unwrap(),
            prefix: Some("104.0.0.0/8".parse().unwrap()),
            hop: via("wg0", "10.9.0.1"),
            default: Some(via("eth0", "192.0.2.254")),
        },
    ];
    let mut i = inputs(&f, unanswered(3));
    i.classes = &classes;
    i.routes = &routes;
    i.misrouted = &misrouted;
    i.synack_retransmits = 3;
    let (v, causes) = decide(&i);
    assert_eq!(v, Verdict::ReturnPath, "{causes:#?}");
    let c = &causes[0];
    assert!(
        c.evidence[0].contains("Cloudflare's 172.64.0.0/13 by `172.0.0.0/8 via 10.8.0.1 dev vpn0`"),
        "{:#?}",
        c.evidence
    );
    assert!(!c.evidence.join("\n").contains("104.16.0.0/13"));
    assert!(
        c.next_steps[0].contains("ip route add 172.64.0.0/13 via 192.0.2.254 dev eth0"),
        "{:#?}",
        c.next_steps
    );
}

//! Replies that never get back (#25), on the real kernel: the edge retransmits while the
//! origin's SYN-ACKs are lost beyond it, dropped in the forward path of the host a namespace
//! replies through, or cannot be routed at all (null routes, fail2ban's `route` action). Each
//! is `return_path` with a 522 and the route, namespace or rule named — never `other_drop`,
//! `firewall_drop` in the wrong namespace, or `overloaded`.

use integration_tests::{
    cause, lines as text,
    scenarios::{self, verdict_of, Scenario, Vantage},
    tools, Lab, EDGE2_V4, EDGE2_V6, EDGE3_V4, EDGE3_V6, EDGE_V4, EDGE_V6, ORIGIN_IF, ORIGIN_V4,
};
use serde_json::Value;

/// The tracer runs confined as a shipped form (TRACER_CONFINE).
fn confined() -> bool {
    integration_tests::confine::Confinement::from_env().is_some()
}

/// No cause but `return_path` (the freed retransmissions are not drops; no overload).
fn only_return_path(r: &Value) {
    let verdicts: Vec<&Value> = r["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["verdict"])
        .collect();
    assert_eq!(verdicts, ["return_path"], "{r:#}");
}

#[test]
fn synacks_lost_beyond_the_host_while_the_edge_retransmits_are_the_return_path() {
    let r = verdict_of("SYN-ACKs lost beyond this host while the edge retransmits");
    only_return_path(&r);
    assert_eq!(r["edge"]["other_drops"], 0, "{r:#}");
    let c = cause(&r, "return_path");
    assert_eq!(c["cloudflare_error"], 522);
    let ev = text(&c["evidence"]);
    assert!(
        ev.contains("retransmitted) but no final ACK came back"),
        "{ev}"
    );
    // The route back is the arrival interface: lost beyond this host.
    assert!(
        ev.contains(&format!("dev {ORIGIN_IF}")) && ev.contains("lost beyond this host"),
        "{ev}"
    );
    assert!(!ev.contains("NOT_SPECIFIED"), "{ev}");
}

#[test]
fn replies_out_another_interface_while_the_edge_retransmits_are_not_drops() {
    let r = verdict_of("replies routed out another interface");
    only_return_path(&r);
    assert_eq!(r["edge"]["other_drops"], 0, "{r:#}");
}

#[test]
fn synacks_dropped_in_the_hosts_forward_path_are_named_there() {
    let r = verdict_of("SYN-ACKs dropped in the host's forward path");
    only_return_path(&r);
    assert_eq!(r["edge"]["firewall_drops"], 0, "{r:#}");
    let c = cause(&r, "return_path");
    assert_eq!(c["cloudflare_error"], 522);
    let ev = text(&c["evidence"]);
    // The lab's origin namespace is the host here: named, with its rule.
    assert!(
        ev.contains("(kernel reason NETFILTER_DROP) in network namespace t521-"),
        "{ev}"
    );
    assert!(ev.contains("not by this namespace's firewall"), "{ev}");
    if confined() {
        // Entering the host's namespace to read its ruleset needs CAP_SYS_ADMIN, which the
        // shipped forms do not grant: said in one line, with how to grant it.
        assert!(
            ev.contains("its ruleset was not read") && ev.contains("needs CAP_SYS_ADMIN"),
            "{ev}"
        );
    } else {
        assert!(
            ev.contains("the rule that drops them: forward rule 1: ip daddr 173.245.48.0/20 tcp flags syn,ack / syn,ack drop (table inet hostfw"),
            "{ev}"
        );
    }
    assert!(!ev.contains("this host's firewall drops"), "{ev}");
    let steps = text(&c["next_steps"]);
    assert!(steps.contains("nsenter --net=/run/netns/t521-"), "{steps}");
}

#[test]
fn null_routes_to_edge_addresses_are_the_return_path_with_each_route() {
    let r = verdict_of("null routes to edge addresses (IPv4 and IPv6)");
    only_return_path(&r);
    assert_eq!(r["edge"]["overload_drops"], 0, "{r:#}");
    assert!(
        r["counters"]["ListenDrops"].as_u64().unwrap_or(0) >= 6,
        "{r:#}"
    );
    assert_eq!(
        r["counters"]["ListenOverflows"].as_u64().unwrap_or(0),
        0,
        "{r:#}"
    );
    let c = cause(&r, "return_path");
    assert_eq!(c["cloudflare_error"], 522);
    assert_eq!(c["attempts"], 6, "{c:#}");
    let ev = text(&c["evidence"]);
    for route in [
        format!("`unreachable {EDGE_V4}`"),
        format!("`blackhole {EDGE2_V4}`"),
        format!("`prohibit {EDGE3_V4}`"),
        format!("`unreachable {EDGE_V6}`"),
        format!("`blackhole {EDGE2_V6}`"),
        format!("`prohibit {EDGE3_V6}`"),
    ] {
        assert!(ev.contains(&route), "{route} not in {ev}");
    }
    assert!(ev.contains("ListenOverflows did not"), "{ev}");
    let steps = text(&c["next_steps"]);
    assert!(
        steps.contains(&format!("ip route del unreachable {EDGE_V4}")),
        "{steps}"
    );
    assert!(
        steps.contains(&format!("ip -6 route del prohibit {EDGE3_V6}")),
        "{steps}"
    );
    assert!(
        steps.contains("fail2ban-client set <jail> unbanip"),
        "{steps}"
    );
    assert!(!steps.contains("backlog="), "{steps}");
}

/// fail2ban's own `route` ban action (`ip route add unreachable <ip>`), run by fail2ban.
#[test]
fn fail2bans_route_action_is_named_with_the_unban() {
    let s = Scenario {
        name: "fail2ban route action null-routes an edge address",
        expected: "return_path",
        counts: "syn=3 handshakes=0 unanswered=3",
        ports: "443",
        vantage: Vantage::Origin,
        extra: &[],
        setup: |lab: &Lab| {
            lab.origin
                .sh("sysctl -qw net.ipv4.ip_forward=0 net.ipv6.conf.all.forwarding=0");
            lab.edge_by_default_route(&[]);
            let f2b = tools::Fail2ban::start(&lab.origin, "nginx-http-auth", "route");
            f2b.client(&format!("set nginx-http-auth banip {EDGE_V4}"));
            let route = lab.origin.sh("ip route show type unreachable");
            assert!(
                route.contains(EDGE_V4),
                "fail2ban did not add its route: {route}"
            );
            let l = lab.origin.listen("0.0.0.0", 443, 128);
            vec![Box::new(f2b), Box::new(l)]
        },
        traffic: |lab: &Lab| {
            std::thread::scope(|s| {
                for _ in 0..3 {
                    s.spawn(|| {
                        lab.edge.connect(
                            EDGE_V4,
                            integration_tests::sockaddr(ORIGIN_V4, 443),
                            scenarios::RETRYING,
                        )
                    });
                }
            });
        },
    };
    let (r, _) = scenarios::run(&s);
    assert_eq!(r["verdict"], "return_path", "{r:#}");
    assert_eq!(scenarios::counts_differ(&s, &r), None, "{r:#}");
    let c = cause(&r, "return_path");
    let ev = text(&c["evidence"]);
    assert!(ev.contains(&format!("`unreachable {EDGE_V4}`")), "{ev}");
    let steps = text(&c["next_steps"]);
    assert!(steps.contains("fail2ban's `route` ban action"), "{steps}");
    assert!(
        steps.contains(&format!("fail2ban-client banned {EDGE_V4}")),
        "{steps}"
    );
}

/// A failure already going on when the tracer starts: the since line says the tracer started
/// after it began, with what the host dates, and does not send a local cause upstream.
#[test]
fn a_failure_older_than_the_tracer_is_said_honestly() {
    let r = verdict_of("nothing listens");
    let since = &r["since"];
    assert_eq!(since["from_start"], true, "{r:#}");
    let t = since["text"].as_str().unwrap();
    assert!(
        t.contains("already happening when the tracer started watching"),
        "{t}"
    );
    assert!(t.contains("the host booted"), "{t}");
    assert!(!t.contains("upstream"), "{t}");
    assert!(
        since["dated"].as_array().is_some_and(|d| !d.is_empty()),
        "{r:#}"
    );
}

/// #31's acceptance: edge traffic from a range a `172.0.0.0/8` route swallows is the return
/// path, and the report names the swallowing route and the range first.
#[test]
fn a_route_swallowing_an_edge_range_is_named_first() {
    let r = scenarios::verdict_of("a 172.0.0.0/8 route swallows 172.64.0.0/13");
    let cause = &r["causes"][0];
    let first = cause["evidence"][0].as_str().unwrap_or_default();
    assert!(
        first.contains("172.64.0.0/13") && first.contains("172.0.0.0/8 via 10.99.0.2"),
        "{r:#}"
    );
    let steps = cause["next_steps"].to_string();
    assert!(
        steps.contains("ip route add 172.64.0.0/13 dev o521"),
        "{r:#}"
    );
}

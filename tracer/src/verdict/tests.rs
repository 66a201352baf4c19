//! Verdict rules driven with plain inputs.

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
        Verdict::ReturnPath => Some("replies routed out another interface"),
        Verdict::SlowResponse => Some("application answers after 4 s"),
        Verdict::KeepaliveRace => Some("keep-alive closed after 1 s, next request at 1.4 s"),
        Verdict::TunnelOriginUnreachable => {
            Some("tunnel: cloudflared dials [::1]:8080, the service listens on 127.0.0.1:8080")
        }
        Verdict::TunnelDown => Some("tunnel: cloudflared cannot connect to the edge"),
        // No lab cause yields these: an unanswered SYN with no SYN-ACK needs something that
        // swallows SYNs before TCP without a drop reason, and the other drop reasons need
        // broken hardware or checksums; unit tests drive them.
        // Unknown needs the kernel to lose events: the flood test in tests/tests/root/hardening.rs.
        // TlsFailure needs --hostname and a TLS server: tests/tests/root/tls.rs.
        Verdict::Unanswered | Verdict::OtherDrop | Verdict::Unknown | Verdict::TlsFailure => None,
    }
}

#[test]
fn the_lab_names_a_scenario_for_each_verdict() {
    let scenarios = integration_tests::scenarios::all();
    for v in Verdict::ALL {
        let Some(name) = lab_scenario(v) else {
            continue;
        };
        let s = scenarios
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no lab scenario {name:?}"));
        assert_eq!(s.expected, v.as_str(), "scenario {name:?}");
    }
}

use super::{names::*, *};
use crate::{
    correlate::Counts,
    origin::{
        firewall::{owner::Owner, Allowlist, Finding},
        listeners::Listener,
        routes::Route,
    },
    ranges::RangeSet,
};

pub(super) struct Fixture {
    listeners: Vec<Listener>,
    full: Vec<Listener>,
    pub deltas: BTreeMap<String, u64>,
    ranges: RangeSet,
    pub exchanges: crate::correlate::exchanges::ExchangeWindow,
}

pub(super) fn fixture() -> Fixture {
    Fixture {
        listeners: vec![],
        full: vec![],
        deltas: BTreeMap::new(),
        ranges: RangeSet::embedded(),
        exchanges: Default::default(),
    }
}

pub(super) fn inputs<'a>(f: &'a Fixture, edge: Counts) -> Inputs<'a> {
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
        ruleset: None,
        allowlists: &[],
        packets_seen: 0,
        ranges: &f.ranges,
        backends: &[],
        classes: &[],
        routes: &[],
        misrouted: &[],
        rp_filter: None,
        reply_drops: &[],
        lost_events: 0,
        exchanges: &f.exchanges,
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

/// #31: nothing arrived while a null route swallows a range: the route is said right after
/// the silence, and its removal is the first step.
#[test]
fn never_arriving_names_a_swallowed_range_first() {
    use crate::origin::{
        range_routes::{Hop, Misrouted},
        routes::{NullRoute, NullRouteEntry},
    };
    let f = fixture();
    let misrouted = [Misrouted {
        range: "173.245.48.0/20".parse().unwrap(),
        probe: "173.245.48.0".parse().unwrap(),
        prefix: Some("173.245.48.0/20".parse().unwrap()),
        hop: Hop::Null(NullRouteEntry {
            kind: NullRoute::Blackhole,
            prefix: Some("173.245.48.0/20".parse().unwrap()),
            table: None,
        }),
        default: None,
    }];
    let mut i = inputs(&f, Counts::default());
    i.misrouted = &misrouted;
    let (v, causes) = decide(&i);
    assert_eq!(v, Verdict::NeverArriving);
    assert!(
        causes[0].evidence[1].contains("173.245.48.0/20 by `blackhole 173.245.48.0/20`"),
        "{:#?}",
        causes[0].evidence
    );
    assert!(
        causes[0].next_steps[0].contains("ip route del blackhole 173.245.48.0/20"),
        "{:#?}",
        causes[0].next_steps
    );
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
        rule: "input rule 2: tcp dport 443 drop (table inet filter, handle 4)".into(),
        certain: true,
        family: "inet".into(),
        table: "filter".into(),
        chain: "input".into(),
        base_chain: "input".into(),
        owner: None,
        rate_limit: None,
        rejects: false,
    }]);
    let (v, causes) = decide(&i);
    assert_eq!(v, Verdict::FirewallDrop);
    let c = &causes[0];
    assert!(c.evidence.iter().any(|e| e.contains("handle 4")));
    assert!(c.evidence.iter().any(|e| e.contains("admits others")));
    assert!(
        c.next_steps[0].contains("nft insert rule inet filter input ip saddr { 173.245.48.0/20")
    );
    // The rule is in an nft table: the fix is an nft command for it, not iptables.
    assert!(
        !c.next_steps.iter().any(|s| s.contains("iptables")),
        "{c:?}"
    );
    assert_eq!(c.cloudflare_error, Some(522));
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

pub(super) fn class(outcome: Outcome, reason: Option<&str>, peers: &[(&str, u64)]) -> AttemptClass {
    AttemptClass {
        outcome: Some(outcome),
        reason: reason.map(String::from),
        attempts: peers.iter().map(|(_, n)| n).sum(),
        peers: peers
            .iter()
            .map(|(a, n)| (a.parse().unwrap(), *n))
            .collect(),
    }
}

fn route(dev: &str) -> Result<Route, String> {
    Ok(Route {
        peer: "104.16.0.5".parse().unwrap(),
        local: "192.0.2.1".parse().unwrap(),
        dev: dev.into(),
        gateway: Some("10.9.0.1".parse().unwrap()),
        prefsrc: None,
        table: Some("100".into()),
        null: None,
    })
}

#[test]
fn synack_retransmits_without_queue_counters_are_the_return_path() {
    let f = fixture();
    let edge = Counts {
        syn: 4,
        unanswered: 4,
        ..Counts::default()
    };
    let classes = [class(
        Outcome::Unanswered,
        None,
        &[("104.16.0.5", 3), ("104.16.0.6", 1)],
    )];
    let routes = [route("eth1")];
    let mut i = inputs(&f, edge);
    i.synack_retransmits = 8;
    i.classes = &classes;
    i.routes = &routes;
    i.rp_filter = Some(0);
    let (v, causes) = decide(&i);
    assert_eq!(v, Verdict::ReturnPath);
    let c = &causes[0];
    assert_eq!(c.attempts, 4);
    assert_eq!(c.cloudflare_error, Some(522));
    let ev = c.evidence.join("\n");
    assert!(
        ev.contains("via 10.9.0.1 dev eth1") && ev.contains("not eth0"),
        "{ev}"
    );
    assert!(ev.contains("104.16.0.5 ×3 (104.16.0.0/13)"), "{ev}");
    assert_eq!(c.peers[0].range.as_deref(), Some("104.16.0.0/13"));
    let steps = c.next_steps.join("\n");
    assert!(steps.contains("ip rule add from 192.0.2.1"), "{steps}");
    assert!(!steps.contains("backlog="), "{steps}");
    // The same with a queue counter risen is overload.
    let mut f = fixture();
    f.deltas.insert("ListenOverflows".into(), 4);
    let mut i = inputs(&f, edge);
    i.synack_retransmits = 8;
    assert_eq!(decide(&i).0, Verdict::Overloaded);
}

#[test]
fn rp_filter_drops_are_the_return_path_with_loose_mode_as_the_fix() {
    let f = fixture();
    let edge = Counts {
        syn: 5,
        other_drops: 5,
        ..Counts::default()
    };
    let classes = [class(
        Outcome::OtherDrop,
        Some("IP_RPFILTER"),
        &[("173.245.48.10", 5)],
    )];
    let routes = [route("eth1")];
    let mut i = inputs(&f, edge);
    i.other_reasons.insert("IP_RPFILTER".into(), 5);
    i.classes = &classes;
    i.routes = &routes;
    i.rp_filter = Some(1);
    let (v, causes) = decide(&i);
    assert_eq!(v, Verdict::ReturnPath);
    assert_eq!(causes.len(), 1, "{causes:?}");
    let steps = causes[0].next_steps.join("\n");
    assert!(steps.contains("net.ipv4.conf.eth0.rp_filter=2"), "{steps}");
    assert!(causes[0].evidence.join("\n").contains("strict (1)"));
}

#[test]
fn other_drop_reasons_are_explained_and_unknown_ones_named() {
    let f = fixture();
    let edge = Counts {
        syn: 3,
        other_drops: 3,
        ..Counts::default()
    };
    let mut i = inputs(&f, edge);
    i.other_reasons.insert("TCP_CSUM".into(), 2);
    i.other_reasons.insert("SUBSYS_7_3".into(), 1);
    let (v, causes) = decide(&i);
    assert_eq!(v, Verdict::OtherDrop);
    let ev = causes[0].evidence.join("\n");
    assert!(ev.contains("TCP_CSUM ×2: the checksum was wrong"), "{ev}");
    assert!(
        ev.contains("SUBSYS_7_3 ×1: a drop reason this tracer does not know"),
        "{ev}"
    );
    assert!(causes[0]
        .next_steps
        .iter()
        .any(|s| s.contains("ethtool -K eth0 rx off")));
}

#[test]
fn resets_are_explained_by_the_kernels_reason() {
    let f = fixture();
    let edge = Counts {
        syn: 3,
        handshakes: 3,
        origin_resets: 3,
        ..Counts::default()
    };
    let classes = [class(
        Outcome::OriginReset,
        Some("TCP_TIMEWAIT_SOCKET"),
        &[("173.245.48.10", 3)],
    )];
    let mut i = inputs(&f, edge);
    i.classes = &classes;
    let (v, causes) = decide(&i);
    assert_eq!(v, Verdict::ResetByOrigin);
    let c = &causes[0];
    assert_eq!(c.cloudflare_error, Some(520));
    let ev = c.evidence.join("\n");
    assert!(
        ev.contains("kernel RST reason TCP_TIMEWAIT_SOCKET ×3"),
        "{ev}"
    );
    assert!(ev.contains("idle or keep-alive timeout"), "{ev}");
    assert!(!ev.contains("SO_LINGER 0"), "{ev}");
    assert!(
        c.next_steps[0].contains("keepalive_timeout"),
        "{:?}",
        c.next_steps
    );
    // Before 6.10: the counter that rose.
    let mut f = fixture();
    f.deltas.insert("TCPAbortOnData".into(), 3);
    let (_, causes) = decide(&inputs(&f, edge));
    assert!(causes[0]
        .evidence
        .join("\n")
        .contains("TCPAbortOnData rose: TCP_ABORT_ON_DATA ×3"));
}

fn finding(owner: Option<Owner>, rule: &str, chain: &str, rejects: bool) -> Finding {
    Finding {
        rule: rule.into(),
        certain: true,
        family: "ip".into(),
        table: "filter".into(),
        chain: chain.into(),
        base_chain: "INPUT".into(),
        owner,
        rate_limit: None,
        rejects,
    }
}

#[test]
fn fail2ban_ban_gives_unban_ignoreip_and_real_ip() {
    let f = fixture();
    let edge = Counts {
        syn: 3,
        firewall_drops: 3,
        ..Counts::default()
    };
    let classes = [class(
        Outcome::FirewallDrop,
        Some("NETFILTER_DROP"),
        &[("173.245.48.77", 3)],
    )];
    let mut i = inputs(&f, edge);
    i.classes = &classes;
    i.filter_reasons.insert("NETFILTER_DROP".into(), 3);
    i.firewall = Ok(vec![finding(
        Some(Owner::Fail2ban {
            jail: Some("nginx-http-auth".into()),
        }),
        "INPUT → f2b-nginx-http-auth rule 1: ip saddr 173.245.48.77 counter reject (table ip filter, handle 5)",
        "f2b-nginx-http-auth",
        true,
    )]);
    let (v, causes) = decide(&i);
    assert_eq!(v, Verdict::FirewallDrop);
    let c = &causes[0];
    assert_eq!(c.cloudflare_error, Some(521));
    let ev = c.evidence.join("\n");
    assert!(
        ev.contains("written by fail2ban (jail nginx-http-auth)"),
        "{ev}"
    );
    let steps = c.next_steps.join("\n");
    assert!(
        steps.contains("fail2ban-client set nginx-http-auth unbanip 173.245.48.77"),
        "{steps}"
    );
    assert!(steps.contains("ignoreip"), "{steps}");
    assert!(steps.contains("CF-Connecting-IP"), "{steps}");
    assert!(!steps.contains("nft insert rule inet filter"), "{steps}");
}

#[test]
fn ufw_policy_gives_ufw_allow() {
    let f = fixture();
    let edge = Counts {
        syn: 2,
        firewall_drops: 2,
        ..Counts::default()
    };
    let mut i = inputs(&f, edge);
    i.firewall = Ok(vec![finding(
        Some(Owner::Ufw),
        "table ip filter chain INPUT: policy drop (no rule accepts it)",
        "INPUT",
        false,
    )]);
    let (_, causes) = decide(&i);
    let steps = causes[0].next_steps.join("\n");
    assert!(
        steps.contains("ufw allow from $r to any port 443 proto tcp"),
        "{steps}"
    );
}

#[test]
fn an_allowlist_with_gaps_gets_only_the_missing_ranges() {
    let f = fixture();
    let edge = Counts {
        syn: 2,
        firewall_drops: 2,
        ..Counts::default()
    };
    let lists = [Allowlist {
        kind: "set",
        family: "inet".into(),
        table: "filter".into(),
        name: "cloudflare_v4".into(),
        ip: "ipv4",
        admitted: vec!["173.245.48.0/20".into()],
        partly: vec![],
        missing: vec!["104.16.0.0/13".into()],
        owner: None,
    }];
    let mut i = inputs(&f, edge);
    i.allowlists = &lists;
    let (_, causes) = decide(&i);
    let c = &causes[0];
    let ev = c.evidence.join("\n");
    assert!(ev.contains("allowlist set inet filter cloudflare_v4 admits 1 of 2 Cloudflare IPv4 ranges; it lacks 104.16.0.0/13"), "{ev}");
    let steps = c.next_steps.join("\n");
    assert!(
        steps.contains("nft add element inet filter cloudflare_v4 { 104.16.0.0/13 }"),
        "{steps}"
    );
    assert!(!steps.contains("173.245.48.0/20"), "{steps}");
}

#[test]
fn no_rule_found_names_a_chain_that_exists_or_none() {
    let f = fixture();
    let edge = Counts {
        syn: 2,
        firewall_drops: 2,
        ..Counts::default()
    };
    let rs = crate::origin::firewall::Ruleset::parse(
        r#"{"nftables":[{"chain":{"family":"ip","table":"mangle","name":"PREROUTING","hook":"prerouting","prio":-150,"policy":"accept"}},{"chain":{"family":"inet","table":"fw","name":"in_chain","hook":"input","prio":0,"policy":"accept"}}]}"#,
        "",
    )
    .unwrap();
    let mut i = inputs(&f, edge);
    i.ruleset = Some(&rs);
    let (_, causes) = decide(&i);
    let steps = causes[0].next_steps.join("\n");
    assert!(
        steps.contains("nft insert rule inet fw in_chain ip saddr"),
        "{steps}"
    );
    assert!(!steps.contains("inet filter input"), "{steps}");
    let i = inputs(&f, edge);
    let (_, causes) = decide(&i);
    assert!(causes[0].next_steps[0].contains("No nftables/iptables-nft chain filters this traffic"));
}

#[test]
fn a_tc_filter_drop_is_explained_without_nft_advice() {
    let f = fixture();
    let edge = Counts {
        syn: 2,
        firewall_drops: 2,
        ..Counts::default()
    };
    let mut i = inputs(&f, edge);
    i.filter_reasons.insert("TC_INGRESS".into(), 2);
    let (v, causes) = decide(&i);
    assert_eq!(v, Verdict::FirewallDrop);
    let ev = causes[0].evidence.join("\n");
    assert!(
        ev.contains("TC_INGRESS ×2: a tc filter or BPF program"),
        "{ev}"
    );
    let steps = causes[0].next_steps.join("\n");
    assert!(steps.contains("tc filter show dev eth0 ingress"), "{steps}");
    assert!(!steps.contains("nft insert"), "{steps}");
}

#[test]
fn unknown_attempts_never_outrank_what_was_seen_nor_make_it_unhealthy() {
    let f = fixture();
    let edge = Counts {
        syn: 100,
        handshakes: 10,
        unknown: 90,
        ..Counts::default()
    };
    let mut i = inputs(&f, edge);
    i.lost_events = 5000;
    let (v, causes) = decide(&i);
    assert_eq!(v, Verdict::Healthy, "{causes:?}");
    assert!(causes
        .iter()
        .any(|c| c.verdict == Verdict::Unknown && c.evidence[0].contains("5000 lost")));
    let edge = Counts {
        syn: 100,
        refused: 10,
        unknown: 90,
        ..Counts::default()
    };
    let (v, causes) = decide(&inputs(&f, edge));
    assert_eq!(v, Verdict::Refused);
    assert_eq!(causes.last().unwrap().verdict, Verdict::Unknown);
    let edge = Counts {
        syn: 10,
        unknown: 10,
        ..Counts::default()
    };
    assert_eq!(decide(&inputs(&f, edge)).0, Verdict::Unknown);
}

#[test]
fn exit_codes_tell_healthy_failing_never_arriving_and_inconclusive_apart() {
    for v in Verdict::ALL {
        let code = v.exit_code();
        assert!(code != 2 && code != EXIT_ERROR, "{v:?}: {code}");
        let want = match v {
            Verdict::Healthy => 0,
            Verdict::NeverArriving => EXIT_NEVER_ARRIVING,
            Verdict::Unknown => EXIT_INCONCLUSIVE,
            _ => EXIT_FAILING,
        };
        assert_eq!(code, want, "{v:?}");
    }
    let codes = [
        0,
        EXIT_ERROR,
        2,
        EXIT_FAILING,
        EXIT_NEVER_ARRIVING,
        EXIT_INCONCLUSIVE,
    ];
    let mut distinct = codes.to_vec();
    distinct.dedup();
    assert_eq!(distinct.len(), codes.len());
}

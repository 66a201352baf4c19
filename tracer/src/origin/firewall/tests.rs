//! The evaluator against saved rulesets of real tools (`nft -j list ruleset` and `nft -a list
//! ruleset` in a lab namespace) and small hand-written ones.

use super::*;

const JSON: &str = r#"{"nftables": [{"table": {"family": "inet", "name": "filter", "handle": 1}}, {"set": {"family": "inet", "name": "allow", "table": "filter", "type": "ipv4_addr", "handle": 5, "flags": ["interval"], "elem": [{"prefix": {"addr": "192.0.2.0", "len": 24}}]}}, {"chain": {"family": "inet", "table": "filter", "name": "input", "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}}, {"rule": {"family": "inet", "table": "filter", "chain": "input", "handle": 3, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.0.0.0", "len": 8}}}}, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": {"set": [80, 443]}}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "input", "handle": 4, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 443}}, {"drop": null}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "input", "handle": 6, "expr": [{"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@allow"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 8080}}, {"counter": {"packets": 0, "bytes": 0}}, {"reject": {"type": "tcp reset"}}]}}, {"table": {"family": "ip", "name": "filter", "handle": 2}}, {"chain": {"family": "ip", "table": "filter", "name": "INPUT", "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}}, {"rule": {"family": "ip", "table": "filter", "chain": "INPUT", "handle": 2, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 2053}}, {"counter": {"packets": 0, "bytes": 0}}, {"xt": {"type": "target", "name": "REJECT"}}]}}, {"rule": {"family": "ip", "table": "filter", "chain": "INPUT", "handle": 3, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "1.2.3.0", "len": 24}}}}, {"xt": {"type": "match", "name": "multiport"}}, {"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]}}]}"#;
const TEXT: &str = "table inet filter { # handle 1
\tchain input { # handle 1
\t\ttype filter hook input priority filter; policy accept;
\t\tip saddr 10.0.0.0/8 tcp dport { 80, 443 } accept # handle 3
\t\ttcp dport 443 drop # handle 4
\t\tip saddr != @allow tcp dport 8080 counter packets 7 bytes 420 reject with tcp reset # handle 6
\t}
}
table ip filter { # handle 2
\tchain INPUT { # handle 1
\t\ttcp dport 2053 counter packets 0 bytes 0 reject with tcp reset # handle 2
\t}
}";

fn pkt(peer: &str, port: u16) -> Packet {
    Packet {
        peer: peer.parse().unwrap(),
        peer_port: Some(40000),
        local: "192.0.2.1".parse().unwrap(),
        port,
        forwarded: false,
        iface: Some("eth0".into()),
        reply: false,
    }
}

/// A ruleset written by iptables-nft as Docker writes it: PREROUTING -> DOCKER DNAT of
/// 443 to 172.17.0.2:80, FORWARD -> DOCKER-USER (an admin's drop of an edge range) ->
/// RETURN, FORWARD -> DOCKER-FORWARD accept.
fn docker() -> Ruleset {
    Ruleset::parse(
        include_str!("testdata/docker-iptables-nft.json"),
        include_str!("testdata/docker-iptables-nft.nft"),
    )
    .unwrap()
}

fn forwarded(peer: &str) -> Packet {
    Packet {
        peer: peer.parse().unwrap(),
        peer_port: Some(40000),
        local: "172.17.0.2".parse().unwrap(),
        port: 80,
        forwarded: true,
        iface: Some("eth0".into()),
        reply: false,
    }
}

#[test]
fn follows_forward_into_docker_user() {
    let rs = docker();
    let f = rs.blocking(&forwarded("173.245.48.10"));
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(f[0].certain);
    assert!(
        f[0].rule
            .starts_with("FORWARD → DOCKER-USER rule 1: ip saddr 173.245.48.0/20"),
        "{}",
        f[0].rule
    );
    // Others return from DOCKER-USER and are accepted by DOCKER-FORWARD.
    assert!(rs.blocking(&forwarded("198.51.100.7")).is_empty());
    // The same packet on input (not forwarded) crosses no chain here.
    assert!(rs.blocking(&pkt("173.245.48.10", 443)).is_empty());
}

#[test]
fn names_the_dnat_rule_from_the_text() {
    let rs = docker();
    let rule = rs
        .dnat_rule("172.17.0.2".parse().unwrap(), 80)
        .expect("DOCKER's rule");
    assert!(
        rule.starts_with("table ip nat chain DOCKER handle ")
            && rule.ends_with("dnat to 172.17.0.2:80"),
        "{rule}"
    );
    assert_eq!(rs.dnat_rule("172.17.0.2".parse().unwrap(), 8080), None);
    assert_eq!(rs.dnat_rule("172.17.0.3".parse().unwrap(), 80), None);
}

#[test]
fn finds_the_dropping_rule() {
    let rs = Ruleset::parse(JSON, TEXT).unwrap();
    let f = rs.blocking(&pkt("173.245.48.10", 443));
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(
        f[0].rule,
        "input rule 2: tcp dport 443 drop (table inet filter, handle 4)"
    );
    assert!(f[0].certain);
    // An accepted peer stops at the accept rule.
    assert!(rs.blocking(&pkt("10.1.2.3", 443)).is_empty());
}

#[test]
fn named_set_negation_and_xt_targets() {
    let rs = Ruleset::parse(JSON, TEXT).unwrap();
    let f = rs.blocking(&pkt("173.245.48.10", 8080));
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(f[0]
        .rule
        .contains("rule 3: ip saddr != @allow tcp dport 8080 counter reject with tcp reset"));
    assert!(
        rs.blocking(&pkt("192.0.2.10", 8080)).is_empty(),
        "allowed by the set"
    );
    let f = rs.blocking(&pkt("173.245.48.10", 2053));
    assert_eq!(
        f[0].rule,
        "INPUT rule 1: tcp dport 2053 counter reject with tcp reset (table ip filter, handle 2)"
    );
    assert!(f[0].rejects);
    // xt match: possible, not certain.
    let f = rs.blocking(&pkt("1.2.3.4", 80));
    assert_eq!(f.len(), 1);
    assert!(!f[0].certain);
}

#[test]
fn ipv6_skips_ip_family_rules() {
    let rs = Ruleset::parse(JSON, TEXT).unwrap();
    assert!(rs.blocking(&pkt("2606:4700::10", 2053)).is_empty());
    assert_eq!(rs.blocking(&pkt("2606:4700::10", 443)).len(), 1);
}

#[test]
fn policy_drop_is_reported() {
    let json = r#"{"nftables":[{"chain":{"family":"inet","table":"t","name":"in","hook":"input","policy":"drop"}},{"rule":{"family":"inet","table":"t","chain":"in","handle":2,"expr":[{"match":{"op":"==","left":{"payload":{"protocol":"ip","field":"saddr"}},"right":{"prefix":{"addr":"192.0.2.0","len":24}}}},{"accept":null}]}}]}"#;
    let rs = Ruleset::parse(json, "").unwrap();
    let f = rs.blocking(&pkt("173.245.48.10", 443));
    assert_eq!(f.len(), 1);
    assert!(f[0].rule.contains("policy drop"));
    assert!(rs.blocking(&pkt("192.0.2.10", 443)).is_empty());
}

fn saved(name: &str) -> Ruleset {
    let (json, text) = match name {
        "fail2ban-iptables-multiport" => (
            include_str!("testdata/fail2ban-iptables-multiport.json"),
            include_str!("testdata/fail2ban-iptables-multiport.nft"),
        ),
        "fail2ban-nftables" => (
            include_str!("testdata/fail2ban-nftables.json"),
            include_str!("testdata/fail2ban-nftables.nft"),
        ),
        "ufw" => (
            include_str!("testdata/ufw.json"),
            include_str!("testdata/ufw.nft"),
        ),
        // firewalld 1.3 run in a lab namespace, default zone public, with
        // `firewall-cmd --zone=public --add-rich-rule='rule family=ipv4 source
        // address=173.245.48.0/20 port port=443 protocol=tcp reject'`.
        // crowdsec-firewall-bouncer 0.0.25 (nftables mode) in a lab namespace, fed one ban
        // decision for 173.245.48.77 by a stand-in for CrowdSec's local API.
        "crowdsec" => (
            include_str!("testdata/crowdsec.json"),
            include_str!("testdata/crowdsec.nft"),
        ),
        "firewalld" => (
            include_str!("testdata/firewalld.json"),
            include_str!("testdata/firewalld.nft"),
        ),
        _ => unreachable!(),
    };
    Ruleset::parse(json, text).unwrap()
}

#[test]
fn fail2ban_iptables_multiport_ban_is_named_with_its_jail() {
    let rs = saved("fail2ban-iptables-multiport");
    let f = rs.blocking(&pkt("173.245.48.10", 443));
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(f[0].certain, "{f:?}");
    assert!(f[0].rejects);
    assert!(
        f[0].rule
            .starts_with("INPUT → f2b-nginx-http-auth rule 1: ip saddr 173.245.48.10"),
        "{}",
        f[0].rule
    );
    assert_eq!(
        f[0].owner,
        Some(Owner::Fail2ban {
            jail: Some("nginx-http-auth".into())
        })
    );
    // Another edge address, and another port, pass.
    assert!(rs.blocking(&pkt("173.245.48.11", 443)).is_empty());
    assert!(rs.blocking(&pkt("173.245.48.10", 8443)).is_empty());
}

#[test]
fn fail2ban_nftables_set_ban_is_named_with_its_jail() {
    let rs = saved("fail2ban-nftables");
    let f = rs.blocking(&pkt("173.245.48.10", 80));
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(f[0].certain);
    assert_eq!(
        f[0].owner,
        Some(Owner::Fail2ban {
            jail: Some("nginx-http-auth".into())
        })
    );
    assert!(f[0].rule.starts_with("f2b-chain rule 1:"), "{}", f[0].rule);
    assert!(rs.blocking(&pkt("173.245.48.11", 80)).is_empty());
}

#[test]
fn ufw_default_deny_is_its_policy_and_an_allowed_source_passes() {
    let rs = saved("ufw");
    let f = rs.blocking(&pkt("173.245.48.10", 443));
    let policy: Vec<&Finding> = f
        .iter()
        .filter(|f| f.rule.contains("policy drop"))
        .collect();
    assert_eq!(policy.len(), 1, "{f:#?}");
    assert_eq!(policy[0].chain, "INPUT");
    // No rule of ufw's own chains is taken for the drop.
    assert!(
        f.iter()
            .all(|f| !f.certain || f.rule.contains("policy drop")),
        "{f:#?}"
    );
    // `ufw allow from 192.0.2.0/24 to any port 443 proto tcp`
    assert!(
        rs.blocking(&pkt("192.0.2.10", 443))
            .iter()
            .all(|f| !f.certain),
        "{:#?}",
        rs.blocking(&pkt("192.0.2.10", 443))
    );
}

/// A set allowlist made from an old copy of Cloudflare's list: 104.16.0.0/13 is missing.
fn stale_allowlist() -> Ruleset {
    let ranges = crate::ranges::RangeSet::embedded();
    let elems: Vec<String> = ranges
        .v4
        .iter()
        .filter(|n| n.to_string() != "104.16.0.0/13")
        .map(|n| {
            format!(
                r#"{{"prefix": {{"addr": "{}", "len": {}}}}}"#,
                n.network(),
                n.prefix_len()
            )
        })
        .collect();
    let json = format!(
        r#"{{"nftables": [{{"set": {{"family": "inet", "table": "filter", "name": "cloudflare_v4", "type": "ipv4_addr", "flags": ["interval"], "elem": [{}]}}}},
        {{"chain": {{"family": "inet", "table": "filter", "name": "input", "hook": "input", "prio": 0, "policy": "drop"}}}},
        {{"rule": {{"family": "inet", "table": "filter", "chain": "input", "handle": 3, "expr": [{{"match": {{"op": "==", "left": {{"payload": {{"protocol": "ip", "field": "saddr"}}}}, "right": "@cloudflare_v4"}}}}, {{"match": {{"op": "==", "left": {{"payload": {{"protocol": "tcp", "field": "dport"}}}}, "right": 443}}}}, {{"accept": null}}]}}}}]}}"#,
        elems.join(", ")
    );
    Ruleset::parse(&json, "").unwrap()
}

#[test]
fn stale_allowlist_set_misses_exactly_one_range() {
    let rs = stale_allowlist();
    let ranges = crate::ranges::RangeSet::embedded();
    let lists = rs.allowlists(&ranges);
    assert_eq!(lists.len(), 1, "{lists:#?}");
    let l = &lists[0];
    assert_eq!(l.location(), "set inet filter cloudflare_v4");
    assert_eq!(l.missing, ["104.16.0.0/13"]);
    assert!(l.partly.is_empty());
    assert_eq!(l.admitted.len(), ranges.v4.len() - 1);
    // The drop: the policy, for the missing range only.
    let f = rs.blocking(&pkt("104.16.0.5", 443));
    assert!(f[0].rule.contains("policy drop"), "{f:?}");
    assert!(rs.blocking(&pkt("173.245.48.10", 443)).is_empty());
}

#[test]
fn chains_of_source_accepts_are_allowlists_and_offices_are_not() {
    let json = r#"{"nftables": [
        {"chain": {"family": "ip", "table": "filter", "name": "INPUT", "hook": "input", "prio": 0, "policy": "drop"}},
        {"rule": {"family": "ip", "table": "filter", "chain": "INPUT", "handle": 2, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "173.245.48.0", "len": 21}}}}, {"xt": {"type": "target", "name": "ACCEPT"}}]}},
        {"rule": {"family": "ip", "table": "filter", "chain": "INPUT", "handle": 3, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "103.21.244.0", "len": 22}}}}, {"xt": {"type": "target", "name": "ACCEPT"}}]}},
        {"rule": {"family": "ip", "table": "filter", "chain": "INPUT", "handle": 4, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "198.51.100.7"}}, {"accept": null}]}},
        {"chain": {"family": "ip", "table": "filter", "name": "office", "policy": "accept"}},
        {"rule": {"family": "ip", "table": "filter", "chain": "office", "handle": 9, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "198.51.100.8"}}, {"accept": null}]}}
    ]}"#;
    let rs = Ruleset::parse(json, "").unwrap();
    let lists = rs.allowlists(&crate::ranges::RangeSet::embedded());
    assert_eq!(lists.len(), 1, "{lists:#?}");
    assert_eq!(lists[0].location(), "chain ip filter INPUT");
    assert_eq!(lists[0].admitted, ["103.21.244.0/22"]);
    assert_eq!(lists[0].partly, ["173.245.48.0/20"]);
    assert!(lists[0].missing.contains(&"104.16.0.0/13".to_string()));
}

#[test]
fn verdict_maps_and_rate_limits() {
    let json = r#"{"nftables": [
        {"chain": {"family": "inet", "table": "t", "name": "in", "hook": "input", "prio": 0, "policy": "accept"}},
        {"rule": {"family": "inet", "table": "t", "chain": "in", "handle": 2, "expr": [{"vmap": {"key": {"payload": {"protocol": "ip", "field": "saddr"}}, "data": {"set": [[{"prefix": {"addr": "173.245.48.0", "len": 20}}, {"drop": null}], ["192.0.2.10", {"accept": null}]]}}}]}},
        {"rule": {"family": "inet", "table": "t", "chain": "in", "handle": 3, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 443}}, {"xt": {"type": "match", "name": "connlimit"}}, {"xt": {"type": "target", "name": "REJECT"}}]}}
    ]}"#;
    let text = "table inet t {\n\tchain in {\n\t\tip saddr vmap { 173.245.48.0/20 : drop, 192.0.2.10 : accept } # handle 2\n\t\ttcp dport 443 xt match connlimit reject # handle 3\n\t}\n}\n";
    let mut rs = Ruleset::parse(json, text).unwrap();
    text::parse_iptables_save(
        "*t\n-A in -j X\n-A in -p tcp --dport 443 -m connlimit --connlimit-above 10 --connlimit-mask 32 -j REJECT\n",
        "inet",
        &mut rs.xt_lines,
    );
    let f = rs.blocking(&pkt("173.245.48.10", 443));
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(f[0].certain && f[0].rule.contains("vmap"), "{f:?}");
    assert!(rs.blocking(&pkt("192.0.2.10", 443)).is_empty());
    let f = rs.blocking(&pkt("198.51.100.7", 443));
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(!f[0].certain);
    assert_eq!(
        f[0].rate_limit.as_deref(),
        Some("-m connlimit --connlimit-above 10 --connlimit-mask 32")
    );
}

#[test]
fn a_rule_that_may_accept_makes_what_follows_uncertain() {
    let json = r#"{"nftables": [
        {"chain": {"family": "inet", "table": "t", "name": "in", "hook": "input", "prio": 0, "policy": "accept"}},
        {"rule": {"family": "inet", "table": "t", "chain": "in", "handle": 2, "expr": [{"xt": {"type": "match", "name": "owner"}}, {"accept": null}]}},
        {"rule": {"family": "inet", "table": "t", "chain": "in", "handle": 3, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": "https"}}, {"drop": null}]}}
    ]}"#;
    let rs = Ruleset::parse(json, "").unwrap();
    let f = rs.blocking(&pkt("173.245.48.10", 443));
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(!f[0].certain, "{f:?}");
}

#[test]
fn netdev_ingress_chains_apply_to_their_device_only() {
    let json = r#"{"nftables": [
        {"chain": {"family": "netdev", "table": "edge", "name": "in", "hook": "ingress", "dev": "eth0", "prio": -500, "policy": "accept"}},
        {"rule": {"family": "netdev", "table": "edge", "chain": "in", "handle": 2, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "173.245.48.0", "len": 20}}}}, {"drop": null}]}}
    ]}"#;
    let rs = Ruleset::parse(json, "").unwrap();
    let f = rs.blocking(&pkt("173.245.48.10", 443));
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(f[0].certain);
    let mut other = pkt("173.245.48.10", 443);
    other.iface = Some("eth1".into());
    assert!(rs.blocking(&other).is_empty());
}

#[test]
fn firewalld_rich_rule_and_zone_reject_are_named_with_the_zone() {
    let rs = saved("firewalld");
    let f = rs.blocking(&pkt("173.245.48.10", 443));
    let certain: Vec<&Finding> = f.iter().filter(|f| f.certain).collect();
    assert_eq!(certain.len(), 1, "{f:#?}");
    let rule = certain[0];
    assert!(rule.rejects, "{rule:?}");
    assert!(
        rule.rule
            .contains("ip saddr 173.245.48.0/20 tcp dport 443 reject"),
        "{}",
        rule.rule
    );
    assert!(rule.rule.starts_with("filter_INPUT → "), "{}", rule.rule);
    assert_eq!(
        rule.owner,
        Some(Owner::Firewalld {
            zone: Some("public".into())
        })
    );
    // Another source on a port the zone does not open: the zone's final reject.
    let f = rs.blocking(&pkt("198.51.100.7", 8443));
    let certain: Vec<&Finding> = f.iter().filter(|f| f.certain).collect();
    assert_eq!(certain.len(), 1, "{f:#?}");
    assert!(
        certain[0]
            .rule
            .contains("reject with icmpx admin-prohibited"),
        "{certain:?}"
    );
    assert!(matches!(certain[0].owner, Some(Owner::Firewalld { .. })));
}

#[test]
fn crowdsec_ban_set_is_named_as_crowdsec() {
    let rs = saved("crowdsec");
    let f = rs.blocking(&pkt("173.245.48.77", 443));
    assert_eq!(f.len(), 1, "{f:#?}");
    assert!(f[0].certain && !f[0].rejects);
    assert!(f[0].rule.contains("@crowdsec-blacklists"), "{}", f[0].rule);
    assert_eq!(f[0].owner, Some(Owner::Crowdsec));
    assert!(rs.blocking(&pkt("173.245.48.78", 443)).is_empty());
    assert!(rs.blocking(&pkt("2606:4700::10", 443)).is_empty());
}

/// A host's forward chain that drops SYN-ACKs going to an edge range (the namespace a
/// container or VM-like namespace replies through), written by nft 1.0.6.
fn host_forward_drops_synacks() -> Ruleset {
    Ruleset::parse(
        include_str!("testdata/host-forward-drops-synacks.json"),
        include_str!("testdata/host-forward-drops-synacks.nft"),
    )
    .unwrap()
}

#[test]
fn a_reply_through_the_host_meets_its_forward_rule() {
    let rs = host_forward_drops_synacks();
    let reply = Packet {
        forwarded: true,
        reply: true,
        iface: None,
        ..pkt("173.245.48.10", 443)
    };
    let f = rs.blocking(&reply);
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(f[0].certain);
    assert_eq!(f[0].base_chain, "forward");
    assert!(
        f[0].rule.contains("tcp flags syn,ack / syn,ack drop"),
        "{}",
        f[0].rule
    );
    // The edge's own SYN through the same host is not what it drops ...
    let syn = Packet {
        forwarded: true,
        iface: None,
        ..pkt("173.245.48.10", 443)
    };
    assert!(rs.blocking(&syn).is_empty());
    // ... nor a reply to a peer outside the range.
    let other = Packet {
        peer: "192.0.2.10".parse().unwrap(),
        ..reply
    };
    assert!(rs.blocking(&other).is_empty());
}

#[test]
fn tcp_flag_masks_are_evaluated_for_both_directions() {
    // `tcp flags & (fin|syn|rst|ack) == syn`: a SYN matches, a SYN-ACK does not.
    let rs = Ruleset::parse(
        r#"{"nftables": [{"chain": {"family": "inet", "table": "t", "name": "input", "hook": "input", "prio": 0, "policy": "accept"}},
        {"rule": {"family": "inet", "table": "t", "chain": "input", "handle": 2, "expr": [
          {"match": {"op": "==", "left": {"&": [{"payload": {"protocol": "tcp", "field": "flags"}}, {"|": ["fin", "syn", "rst", "ack"]}]}, "right": "syn"}},
          {"drop": null}]}}]}"#,
        "",
    )
    .unwrap();
    assert_eq!(rs.blocking(&pkt("173.245.48.10", 443)).len(), 1);
    let out = Packet {
        reply: true,
        ..pkt("173.245.48.10", 443)
    };
    // A reply leaves by output, where this input chain is not walked at all.
    assert!(rs.blocking(&out).is_empty());
}

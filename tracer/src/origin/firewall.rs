//! Which firewall rule drops the edge's packets? Reads the nftables ruleset (iptables-nft rules
//! included) and evaluates the common matches (addresses, ports, protocol, sets) against a
//! dropped flow. What it cannot evaluate (jumps, xt matches, marks) makes a finding uncertain,
//! never silently certain.

use std::{collections::HashMap, net::IpAddr, process::Command};

use ipnet::IpNet;
use serde_json::Value;

/// A packet to test: the edge peer sending to the origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub peer: IpAddr,
    /// Where it is going: the origin's address, or after DNAT the backend's.
    pub local: IpAddr,
    pub port: u16,
    /// DNATed to another namespace: it crosses the forward hook, not input.
    pub forwarded: bool,
}

/// How a chain ended for the packet.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ending {
    Accepted,
    Dropped,
    /// No rule decided: the caller goes on (the base chain's policy applies).
    Fallthrough,
}

/// Jumps followed at most: nftables allows 16 levels.
const MAX_JUMPS: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// e.g. "table inet filter chain input handle 4: tcp dport 443 drop"
    pub rule: String,
    /// Every match of the rule was evaluated and matched.
    pub certain: bool,
}

#[derive(Debug, Default)]
pub struct Ruleset {
    items: Vec<Value>,
    /// (family, table, chain, handle) -> rule text from `nft -a list ruleset`.
    text: HashMap<(String, String, String, u64), String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tri {
    Yes,
    No,
    Unknown,
}

impl Ruleset {
    /// The ruleset of this namespace, or why it cannot be read.
    pub fn read() -> Result<Self, String> {
        let run = |args: &[&str]| -> Result<String, String> {
            let out = Command::new("nft")
                .args(args)
                .output()
                .map_err(|e| format!("nft not available ({e})"))?;
            if !out.status.success() {
                return Err(format!(
                    "nft failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let json = run(&["-j", "list", "ruleset"])?;
        let text = run(&["-a", "list", "ruleset"]).unwrap_or_default();
        Self::parse(&json, &text)
    }

    pub fn parse(json: &str, text: &str) -> Result<Self, String> {
        let v: Value = serde_json::from_str(json).map_err(|e| format!("nft JSON: {e}"))?;
        let items = v["nftables"].as_array().cloned().unwrap_or_default();
        Ok(Self {
            items,
            text: parse_text(text),
        })
    }

    fn set_elements(&self, family: &str, table: &str, name: &str) -> Option<Vec<Value>> {
        self.items.iter().find_map(|i| {
            let s = i.get("set").or_else(|| i.get("map"))?;
            (s["family"] == family && s["table"] == table && s["name"] == name)
                .then(|| s["elem"].as_array().cloned().unwrap_or_default())
        })
    }

    /// Rules (and chain policies) that would drop or reject `p` on input (forward, when it
    /// was forwarded), following jumps and gotos into the chains they name.
    pub fn blocking(&self, p: Packet) -> Vec<Finding> {
        let hooks: &[&str] = if p.forwarded {
            &["prerouting", "forward"]
        } else {
            &["prerouting", "input"]
        };
        let mut out = Vec::new();
        for chain in self
            .items
            .iter()
            .filter_map(|i| i.get("chain"))
            .filter(|c| c["hook"].as_str().is_some_and(|h| hooks.contains(&h)))
            .filter(|c| family_applies(c["family"].as_str().unwrap_or(""), p.peer))
        {
            let (family, table, name) = (
                chain["family"].as_str().unwrap_or(""),
                chain["table"].as_str().unwrap_or(""),
                chain["name"].as_str().unwrap_or(""),
            );
            let at = ChainRef {
                family,
                table,
                base: name,
            };
            let ending = self.eval_chain(at, name, p, true, 0, &mut out);
            if ending == Ending::Fallthrough && chain["policy"] == "drop" {
                out.push(Finding {
                    rule: format!(
                        "table {family} {table} chain {name}: policy drop (no rule accepts it)"
                    ),
                    certain: true,
                });
            }
        }
        out
    }

    /// Evaluates the rules of `chain` in order. `certain`: every match on the way here was
    /// evaluated and matched (a finding behind an unknown jump is only possible).
    fn eval_chain(
        &self,
        at: ChainRef<'_>,
        chain: &str,
        p: Packet,
        certain: bool,
        depth: usize,
        out: &mut Vec<Finding>,
    ) -> Ending {
        if depth > MAX_JUMPS {
            return Ending::Fallthrough;
        }
        let (family, table) = (at.family, at.table);
        for rule in self
            .items
            .iter()
            .filter_map(|i| i.get("rule"))
            .filter(|r| r["family"] == family && r["table"] == table && r["chain"] == chain)
        {
            let exprs = rule["expr"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            let mut all = Tri::Yes;
            let mut verdict = None;
            for e in exprs {
                if let Some(m) = e.get("match") {
                    match self.eval_match(family, table, m, p) {
                        Tri::No => {
                            all = Tri::No;
                            break;
                        }
                        Tri::Unknown => all = Tri::Unknown,
                        Tri::Yes => {}
                    }
                } else if let Some(v) = verdict_of(e) {
                    verdict = Some((v, e));
                } else if !is_harmless(e) {
                    all = Tri::Unknown;
                }
            }
            if all == Tri::No {
                continue;
            }
            let sure = certain && all == Tri::Yes;
            match verdict {
                Some(("drop" | "reject", _)) => {
                    let handle = rule["handle"].as_u64().unwrap_or(0);
                    let body = self
                        .text
                        .get(&(family.into(), table.into(), chain.into(), handle))
                        .cloned()
                        .unwrap_or_else(|| "(rule)".into());
                    let from = if chain == at.base {
                        String::new()
                    } else {
                        format!(" (from {})", at.base)
                    };
                    out.push(Finding {
                        rule: format!(
                            "table {family} {table} chain {chain} handle {handle}{from}: {body}"
                        ),
                        certain: sure,
                    });
                    if sure {
                        return Ending::Dropped;
                    }
                }
                Some(("accept", _)) if sure => return Ending::Accepted,
                Some(("jump" | "goto", e)) => {
                    let target = e
                        .get("jump")
                        .or_else(|| e.get("goto"))
                        .and_then(|j| j["target"].as_str())
                        .unwrap_or("");
                    let ending = self.eval_chain(at, target, p, sure, depth + 1, out);
                    if ending != Ending::Fallthrough && all == Tri::Yes {
                        return ending;
                    }
                    if e.get("goto").is_some() && all == Tri::Yes {
                        return Ending::Fallthrough;
                    }
                }
                Some(("return", _)) if all == Tri::Yes => return Ending::Fallthrough,
                _ => {}
            }
        }
        Ending::Fallthrough
    }

    /// The rule that DNATs to `addr:port`, from the ruleset's text (iptables-nft writes
    /// Docker's DNAT as an xt target whose destination only the text shows): "table ip nat
    /// chain DOCKER handle 4: iifname != \"docker0\" tcp dport 443 dnat to 172.17.0.2:80".
    pub fn dnat_rule(&self, addr: IpAddr, port: u16) -> Option<String> {
        let to = match addr {
            IpAddr::V4(a) => format!("to {a}:{port}"),
            IpAddr::V6(a) => format!("to [{a}]:{port}"),
        };
        let mut found: Vec<_> = self
            .text
            .iter()
            .filter(|(_, body)| {
                body.contains("dnat ")
                    && body
                        .split(" to ")
                        .skip(1)
                        .any(|rest| format!("to {rest}").starts_with(&to))
            })
            .collect();
        found.sort();
        found.first().map(|((family, table, chain, handle), body)| {
            format!("table {family} {table} chain {chain} handle {handle}: {body}")
        })
    }

    fn eval_match(&self, family: &str, table: &str, m: &Value, p: Packet) -> Tri {
        let op = m["op"].as_str().unwrap_or("==");
        let left = &m["left"];
        let subject: Subject = if let Some(pl) = left.get("payload") {
            match (pl["protocol"].as_str(), pl["field"].as_str()) {
                (Some("ip"), Some(f)) | (Some("ip6"), Some(f)) => {
                    let v6 = pl["protocol"] == "ip6";
                    if v6 != p.peer.is_ipv6() {
                        return Tri::No; // The match implies the other family.
                    }
                    match f {
                        "saddr" => Subject::Addr(p.peer),
                        "daddr" => Subject::Addr(p.local),
                        "protocol" | "nexthdr" => Subject::Proto,
                        _ => return Tri::Unknown,
                    }
                }
                (Some("tcp" | "th"), Some("dport")) => Subject::Port(p.port),
                _ => return Tri::Unknown,
            }
        } else if let Some(meta) = left.get("meta") {
            match meta["key"].as_str() {
                Some("l4proto") => Subject::Proto,
                Some("nfproto") => Subject::Family,
                _ => return Tri::Unknown,
            }
        } else {
            return Tri::Unknown;
        };
        let hit = self.value_matches(family, table, &m["right"], subject, p);
        match (op, hit) {
            (_, Tri::Unknown) => Tri::Unknown,
            ("==" | "in", h) => h,
            ("!=", Tri::Yes) => Tri::No,
            ("!=", Tri::No) => Tri::Yes,
            _ => Tri::Unknown,
        }
    }

    fn value_matches(
        &self,
        family: &str,
        table: &str,
        right: &Value,
        s: Subject,
        p: Packet,
    ) -> Tri {
        if let Some(name) = right.as_str().and_then(|r| r.strip_prefix('@')) {
            return match self.set_elements(family, table, name) {
                Some(elems) => any_of(elems.iter().map(|e| {
                    let v = e.get("elem").map(|x| &x["val"]).unwrap_or(e);
                    self.value_matches(family, table, v, s, p)
                })),
                None => Tri::Unknown,
            };
        }
        if let Some(set) = right.get("set").and_then(Value::as_array) {
            return any_of(
                set.iter()
                    .map(|v| self.value_matches(family, table, v, s, p)),
            );
        }
        match s {
            Subject::Port(port) => {
                if let Some(n) = right.as_u64() {
                    return tri(n == u64::from(port));
                }
                if let Some(r) = right.get("range").and_then(Value::as_array) {
                    if let (Some(a), Some(b)) = (
                        r.first().and_then(Value::as_u64),
                        r.get(1).and_then(Value::as_u64),
                    ) {
                        return tri((a..=b).contains(&u64::from(port)));
                    }
                }
                Tri::Unknown
            }
            Subject::Addr(addr) => {
                if let Some(text) = right.as_str() {
                    return match text.parse::<IpAddr>() {
                        Ok(a) => tri(a == addr),
                        Err(_) => Tri::Unknown,
                    };
                }
                if let Some(pre) = right.get("prefix") {
                    let net = format!("{}/{}", pre["addr"].as_str().unwrap_or(""), pre["len"]);
                    return match net.parse::<IpNet>() {
                        Ok(n) => tri(n.contains(&addr)),
                        Err(_) => Tri::Unknown,
                    };
                }
                if let Some(r) = right.get("range").and_then(Value::as_array) {
                    let a = r
                        .first()
                        .and_then(Value::as_str)
                        .and_then(|t| t.parse::<IpAddr>().ok());
                    let b = r
                        .get(1)
                        .and_then(Value::as_str)
                        .and_then(|t| t.parse::<IpAddr>().ok());
                    if let (Some(a), Some(b)) = (a, b) {
                        return tri(a <= addr && addr <= b);
                    }
                }
                Tri::Unknown
            }
            Subject::Proto => match right {
                Value::String(s) => tri(s == "tcp"),
                Value::Number(n) => tri(n.as_u64() == Some(6)),
                _ => Tri::Unknown,
            },
            Subject::Family => match right.as_str() {
                Some("ipv4") => tri(p.peer.is_ipv4()),
                Some("ipv6") => tri(p.peer.is_ipv6()),
                _ => Tri::Unknown,
            },
        }
    }
}

/// The base chain an evaluation started from, and its table.
#[derive(Clone, Copy)]
struct ChainRef<'a> {
    family: &'a str,
    table: &'a str,
    base: &'a str,
}

#[derive(Clone, Copy)]
enum Subject {
    Addr(IpAddr),
    Port(u16),
    Proto,
    Family,
}

fn tri(b: bool) -> Tri {
    if b {
        Tri::Yes
    } else {
        Tri::No
    }
}

fn any_of(it: impl Iterator<Item = Tri>) -> Tri {
    let mut result = Tri::No;
    for t in it {
        match t {
            Tri::Yes => return Tri::Yes,
            Tri::Unknown => result = Tri::Unknown,
            Tri::No => {}
        }
    }
    result
}

fn family_applies(family: &str, peer: IpAddr) -> bool {
    match family {
        "inet" | "netdev" | "bridge" => true,
        "ip" => peer.is_ipv4(),
        "ip6" => peer.is_ipv6(),
        _ => false,
    }
}

fn verdict_of(e: &Value) -> Option<&'static str> {
    if e.get("drop").is_some() {
        return Some("drop");
    }
    if e.get("reject").is_some() {
        return Some("reject");
    }
    if e.get("accept").is_some() {
        return Some("accept");
    }
    if let Some(xt) = e.get("xt") {
        if xt["type"] == "target" {
            return match xt["name"].as_str() {
                Some("REJECT" | "DROP") => Some("reject"),
                Some("ACCEPT") => Some("accept"),
                _ => None,
            };
        }
    }
    if e.get("jump").is_some() {
        return Some("jump");
    }
    if e.get("goto").is_some() {
        return Some("goto");
    }
    if e.get("return").is_some() {
        return Some("return");
    }
    None
}

/// Statements that neither match nor decide.
fn is_harmless(e: &Value) -> bool {
    ["counter", "log", "limit", "comment", "meta", "mangle", "ct"]
        .iter()
        .any(|k| e.get(*k).is_some())
}

/// `nft -a list ruleset` text: rule bodies by (family, table, chain, handle).
fn parse_text(text: &str) -> HashMap<(String, String, String, u64), String> {
    let mut out = HashMap::new();
    let (mut family, mut table, mut chain) = (String::new(), String::new(), String::new());
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("table ") {
            let mut w = rest.split_whitespace();
            family = w.next().unwrap_or("").into();
            table = w.next().unwrap_or("").into();
        } else if let Some(rest) = t.strip_prefix("chain ") {
            chain = rest.split_whitespace().next().unwrap_or("").into();
        } else if let Some((body, handle)) = t.rsplit_once("# handle ") {
            if let Ok(h) = handle.trim().parse::<u64>() {
                let body = strip_counters(body.trim());
                out.insert((family.clone(), table.clone(), chain.clone(), h), body);
            }
        }
    }
    out
}

/// "counter packets 3 bytes 180" changes every run; drop the numbers.
fn strip_counters(body: &str) -> String {
    let words: Vec<&str> = body.split_whitespace().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        if words[i] == "packets" || words[i] == "bytes" {
            i += 2;
            continue;
        }
        out.push(words[i]);
        i += 1;
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
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
            local: "192.0.2.1".parse().unwrap(),
            port,
            forwarded: false,
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
            local: "172.17.0.2".parse().unwrap(),
            port: 80,
            forwarded: true,
        }
    }

    #[test]
    fn follows_forward_into_docker_user() {
        let rs = docker();
        let f = rs.blocking(forwarded("173.245.48.10"));
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].certain);
        assert!(
            f[0].rule.starts_with(
                "table ip filter chain DOCKER-USER handle 4 (from FORWARD): ip saddr 173.245.48.0/20"
            ),
            "{}",
            f[0].rule
        );
        // Others return from DOCKER-USER and are accepted by DOCKER-FORWARD.
        assert!(rs.blocking(forwarded("198.51.100.7")).is_empty());
        // The same packet on input (not forwarded) crosses no chain here.
        assert!(rs.blocking(pkt("173.245.48.10", 443)).is_empty());
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
        let f = rs.blocking(pkt("173.245.48.10", 443));
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(
            f[0].rule,
            "table inet filter chain input handle 4: tcp dport 443 drop"
        );
        assert!(f[0].certain);
        // An accepted peer stops at the accept rule.
        assert!(rs.blocking(pkt("10.1.2.3", 443)).is_empty());
    }

    #[test]
    fn named_set_negation_and_xt_targets() {
        let rs = Ruleset::parse(JSON, TEXT).unwrap();
        let f = rs.blocking(pkt("173.245.48.10", 8080));
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0]
            .rule
            .contains("handle 6: ip saddr != @allow tcp dport 8080 counter reject with tcp reset"));
        assert!(
            rs.blocking(pkt("192.0.2.10", 8080)).is_empty(),
            "allowed by the set"
        );
        let f = rs.blocking(pkt("173.245.48.10", 2053));
        assert_eq!(
            f[0].rule,
            "table ip filter chain INPUT handle 2: tcp dport 2053 counter reject with tcp reset"
        );
        // xt match: possible, not certain.
        let f = rs.blocking(pkt("1.2.3.4", 80));
        assert_eq!(f.len(), 1);
        assert!(!f[0].certain);
    }

    #[test]
    fn ipv6_skips_ip_family_rules() {
        let rs = Ruleset::parse(JSON, TEXT).unwrap();
        assert!(rs.blocking(pkt("2606:4700::10", 2053)).is_empty());
        assert_eq!(rs.blocking(pkt("2606:4700::10", 443)).len(), 1);
    }

    #[test]
    fn policy_drop_is_reported() {
        let json = r#"{"nftables":[{"chain":{"family":"inet","table":"t","name":"in","hook":"input","policy":"drop"}},{"rule":{"family":"inet","table":"t","chain":"in","handle":2,"expr":[{"match":{"op":"==","left":{"payload":{"protocol":"ip","field":"saddr"}},"right":{"prefix":{"addr":"192.0.2.0","len":24}}}},{"accept":null}]}}]}"#;
        let rs = Ruleset::parse(json, "").unwrap();
        let f = rs.blocking(pkt("173.245.48.10", 443));
        assert_eq!(f.len(), 1);
        assert!(f[0].rule.contains("policy drop"));
        assert!(rs.blocking(pkt("192.0.2.10", 443)).is_empty());
    }
}

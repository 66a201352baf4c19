//! One rule against one packet: its matches (payload, meta, conntrack, fib, TCP flags), named
//! and anonymous sets, verdict maps, and the xt matches iptables-nft leaves opaque in JSON but
//! nft decodes in its text. Three-valued: a match it cannot evaluate is Unknown, never Yes.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;

use super::{Packet, Ruleset};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Tri {
    Yes,
    No,
    Unknown,
}

impl Tri {
    fn and(self, other: Tri) -> Tri {
        match (self, other) {
            (Tri::No, _) | (_, Tri::No) => Tri::No,
            (Tri::Unknown, _) | (_, Tri::Unknown) => Tri::Unknown,
            _ => Tri::Yes,
        }
    }
}

pub(super) fn tri(b: bool) -> Tri {
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

/// A rule's matches taken together, and what it does when they match.
#[derive(Debug)]
pub(super) struct RuleEval {
    pub all: Tri,
    /// drop, reject, accept, jump, goto, return.
    pub verdict: Option<String>,
    /// The chain a jump or goto names.
    pub target: Option<String>,
    /// A named set the rule matched the packet against.
    pub set: Option<String>,
    /// The rule applies only beyond (or below) a rate or connection count.
    pub rate_limit: Option<String>,
}

#[derive(Clone, Copy)]
enum Subject {
    Addr(IpAddr),
    Port(u16),
    Proto,
    Family,
    /// The packet's TCP flags under this mask (`tcp flags & (syn|ack) == ...`).
    Flags(u8),
    /// Conntrack state of a connection's first packet.
    CtState,
    CtStatus,
    /// fib daddr type.
    DaddrType,
    Iface,
}

/// Statements that neither match nor decide.
const HARMLESS: [&str; 12] = [
    "counter",
    "log",
    "comment",
    "mangle",
    "set",
    "notrack",
    "snat",
    "dnat",
    "masquerade",
    "redirect",
    "quota",
    "synproxy",
];

/// Well-known service names nft prints for ports.
fn service_port(name: &str) -> Option<u16> {
    Some(match name {
        "http" | "www" => 80,
        "https" => 443,
        "http-alt" | "webcache" => 8080,
        "ssh" => 22,
        "smtp" => 25,
        "domain" => 53,
        n => return n.parse().ok(),
    })
}

/// States in a conntrack match's right side ("new", ["established", "related"], a set).
fn names_in(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().flat_map(names_in).collect(),
        Value::Object(o) => o.get("set").map(names_in).unwrap_or_default(),
        _ => Vec::new(),
    }
}

impl Ruleset {
    pub(super) fn eval_rule(
        &self,
        family: &str,
        table: &str,
        chain: &str,
        position: usize,
        rule: &Value,
        p: &Packet,
    ) -> RuleEval {
        let mut ev = RuleEval {
            all: Tri::Yes,
            verdict: None,
            target: None,
            set: None,
            rate_limit: None,
        };
        let handle = rule["handle"].as_u64().unwrap_or(0);
        let text = self
            .text
            .get(&(family.into(), table.into(), chain.into(), handle))
            .map(String::as_str)
            .unwrap_or("");
        let exprs = rule["expr"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        for e in exprs {
            if let Some(m) = e.get("match") {
                if let Some(name) = m["right"].as_str().and_then(|r| r.strip_prefix('@')) {
                    ev.set = Some(name.to_string());
                }
                ev.all = ev.all.and(self.eval_match(family, table, m, p));
            } else if let Some(v) = e.get("vmap") {
                let (hit, verdict) = self.eval_vmap(family, table, v, p);
                ev.all = ev.all.and(hit);
                if let Some(v) = verdict {
                    set_verdict(&mut ev, &v);
                }
            } else if let Some(xt) = e.get("xt") {
                let name = xt["name"].as_str().unwrap_or("");
                if xt["type"] == "target" {
                    match name {
                        "REJECT" => ev.verdict = Some("reject".into()),
                        "DROP" => ev.verdict = Some("drop".into()),
                        "ACCEPT" => ev.verdict = Some("accept".into()),
                        "RETURN" => ev.verdict = Some("return".into()),
                        "LOG" | "NFLOG" | "MARK" | "CONNMARK" | "DNAT" | "SNAT" | "MASQUERADE"
                        | "REDIRECT" => {}
                        _ => ev.all = ev.all.and(Tri::Unknown),
                    }
                } else {
                    let at = (family, table, chain, position);
                    let (hit, limit) = self.eval_xt(name, text, at, p);
                    ev.all = ev.all.and(hit);
                    if limit.is_some() {
                        ev.rate_limit = limit;
                    }
                }
            } else if e.get("limit").is_some()
                || e.get("meter").is_some()
                || e.get("ct count").is_some()
            {
                ev.rate_limit = Some(limit_text(text));
                ev.all = ev.all.and(Tri::Unknown);
            } else if !set_verdict(&mut ev, e) && !HARMLESS.iter().any(|k| e.get(*k).is_some()) {
                ev.all = ev.all.and(Tri::Unknown);
            }
            if ev.all == Tri::No {
                break;
            }
        }
        ev
    }

    /// `ip saddr vmap { 173.245.48.0/20 : drop, ... }` or `vmap @name`: the verdict of the
    /// element the packet matches.
    fn eval_vmap(&self, family: &str, table: &str, v: &Value, p: &Packet) -> (Tri, Option<Value>) {
        let Some(subject) = subject_of(&v["key"], p) else {
            return (Tri::Unknown, None);
        };
        let elems: Vec<Value> = match &v["data"] {
            Value::String(s) => match s
                .strip_prefix('@')
                .and_then(|n| self.set_elements(family, table, n))
            {
                Some(elems) => elems,
                // A named map whose elements are unknown: any verdict may apply.
                None => return (Tri::Unknown, None),
            },
            d => d["set"].as_array().cloned().unwrap_or_default(),
        };
        let mut unsure = None;
        for pair in &elems {
            let (Some(key), Some(verdict)) = (pair.get(0), pair.get(1)) else {
                continue;
            };
            match self.value_matches(family, table, key, subject, p) {
                Tri::Yes if unsure.is_none() => return (Tri::Yes, Some(verdict.clone())),
                Tri::Yes | Tri::Unknown => {
                    unsure.get_or_insert_with(|| verdict.clone());
                }
                Tri::No => {}
            }
        }
        match unsure {
            Some(v) => (Tri::Unknown, Some(v)),
            None => (Tri::No, None),
        }
    }

    /// An xt match, from the text nft decodes it to (ct state, fib daddr type), or from the
    /// `iptables-save` line for the details nft does not show.
    fn eval_xt(
        &self,
        name: &str,
        text: &str,
        (family, table, chain, position): (&str, &str, &str, usize),
        p: &Packet,
    ) -> (Tri, Option<String>) {
        let saved = self
            .xt_lines
            .get(&(family.to_string(), table.to_string(), chain.to_string()))
            .and_then(|l| l.get(position));
        match name {
            "conntrack" | "state" => match text.split("ct state ").nth(1) {
                Some(rest) => {
                    let (neg, rest) = match rest.strip_prefix("!= ") {
                        Some(r) => (true, r),
                        None => (false, rest),
                    };
                    let states = rest.split_whitespace().next().unwrap_or("");
                    let state = p.ct_state();
                    let hit = states.split(',').any(|s| s == state);
                    (tri(hit != neg), None)
                }
                None => (Tri::Unknown, None),
            },
            "addrtype" => match text.split("fib daddr type ").nth(1) {
                Some(rest) => {
                    let local = rest.split_whitespace().next() == Some("local");
                    (tri(local && p.to_this_host()), None)
                }
                None => (Tri::Unknown, None),
            },
            "comment" => (Tri::Yes, None),
            // nft decodes multiport to `tcp dport { 80, 443 }` in its text.
            "multiport" | "tcp" => {
                let dport = match (ports_in_text(text, "dport"), p.dport()) {
                    (Some(ports), Some(port)) => Some(ports_have(&ports, port)),
                    (Some(_), None) => Some(Tri::Unknown),
                    (None, _) => None,
                };
                let sport = match (ports_in_text(text, "sport"), p.sport()) {
                    (Some(ports), Some(peer)) => Some(ports_have(&ports, peer)),
                    (Some(_), None) => Some(Tri::Unknown),
                    (None, _) => None,
                };
                match (dport, sport) {
                    (None, None) => (Tri::Unknown, None),
                    (d, s) => (d.unwrap_or(Tri::Yes).and(s.unwrap_or(Tri::Yes)), None),
                }
            }
            "connlimit" | "hashlimit" | "limit" | "recent" => {
                let detail = saved
                    .map(|l| xt_options(l, name))
                    .unwrap_or_else(|| format!("xt match {name}"));
                (Tri::Unknown, Some(detail))
            }
            _ => (Tri::Unknown, None),
        }
    }

    fn eval_match(&self, family: &str, table: &str, m: &Value, p: &Packet) -> Tri {
        let op = m["op"].as_str().unwrap_or("==");
        let left = &m["left"];
        // The family a payload match implies.
        if let Some(pl) = left.get("payload") {
            let proto = pl["protocol"].as_str();
            if matches!(proto, Some("ip")) && p.peer.is_ipv6()
                || matches!(proto, Some("ip6")) && p.peer.is_ipv4()
            {
                return Tri::No;
            }
            if matches!(proto, Some("udp" | "icmp" | "icmpv6" | "sctp")) {
                return Tri::No;
            }
        }
        let Some(subject) = subject_of(left, p) else {
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
        p: &Packet,
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
        if let Some(v) = right.get("elem").map(|x| &x["val"]) {
            return self.value_matches(family, table, v, s, p);
        }
        scalar_matches(right, s, p)
    }
}

/// Records a verdict statement; false when `e` is none.
fn set_verdict(ev: &mut RuleEval, e: &Value) -> bool {
    for kind in ["drop", "reject", "accept", "return"] {
        if e.get(kind).is_some() {
            ev.verdict = Some(kind.into());
            return true;
        }
    }
    for kind in ["jump", "goto"] {
        if let Some(j) = e.get(kind) {
            ev.verdict = Some(kind.into());
            ev.target = j["target"].as_str().map(String::from);
            return true;
        }
    }
    false
}

fn subject_of(left: &Value, p: &Packet) -> Option<Subject> {
    if let Some(pl) = left.get("payload") {
        return match (pl["protocol"].as_str(), pl["field"].as_str()) {
            (Some("ip" | "ip6"), Some("saddr")) => Some(Subject::Addr(p.saddr())),
            (Some("ip" | "ip6"), Some("daddr")) => Some(Subject::Addr(p.daddr())),
            (Some("ip"), Some("protocol")) | (Some("ip6"), Some("nexthdr")) => Some(Subject::Proto),
            (Some("tcp" | "th"), Some("dport")) => p.dport().map(Subject::Port),
            (Some("tcp" | "th"), Some("sport")) => p.sport().map(Subject::Port),
            _ => None,
        };
    }
    if let Some(meta) = left.get("meta") {
        return match meta["key"].as_str() {
            Some("l4proto") => Some(Subject::Proto),
            Some("nfproto" | "protocol") => Some(Subject::Family),
            Some("iifname") if p.iface.is_some() => Some(Subject::Iface),
            _ => None,
        };
    }
    if let Some(ct) = left.get("ct") {
        return match ct["key"].as_str() {
            Some("state") => Some(Subject::CtState),
            Some("status") => Some(Subject::CtStatus),
            _ => None,
        };
    }
    if let Some(fib) = left.get("fib") {
        let flags = names_in(&fib["flags"]);
        return (fib["result"] == "type" && flags == ["daddr"]).then_some(Subject::DaddrType);
    }
    if let Some(and) = left.get("&").and_then(Value::as_array) {
        let is_flags = and
            .first()
            .and_then(|x| x.get("payload"))
            .is_some_and(|pl| pl["protocol"] == "tcp" && pl["field"] == "flags");
        return if is_flags {
            and.get(1).and_then(flag_bits).map(Subject::Flags)
        } else {
            None
        };
    }
    None
}

fn scalar_matches(right: &Value, s: Subject, p: &Packet) -> Tri {
    match s {
        Subject::Port(port) => {
            if let Some(n) = right.as_u64() {
                return tri(n == u64::from(port));
            }
            if let Some(n) = right.as_str().and_then(service_port) {
                return tri(n == port);
            }
            if let Some(r) = right.get("range").and_then(Value::as_array) {
                let bound = |v: Option<&Value>| {
                    v.and_then(|v| {
                        v.as_u64()
                            .or_else(|| v.as_str().and_then(service_port).map(u64::from))
                    })
                };
                if let (Some(a), Some(b)) = (bound(r.first()), bound(r.get(1))) {
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
                let bound = |v: Option<&Value>| {
                    v.and_then(Value::as_str)
                        .and_then(|t| t.parse::<IpAddr>().ok())
                };
                if let (Some(a), Some(b)) = (bound(r.first()), bound(r.get(1))) {
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
            Some("ipv4" | "ip") => tri(p.peer.is_ipv4()),
            Some("ipv6" | "ip6") => tri(p.peer.is_ipv6()),
            _ => Tri::Unknown,
        },
        Subject::CtState => {
            let states = names_in(right);
            if states.is_empty() {
                Tri::Unknown
            } else {
                tri(states.iter().any(|s| s == p.ct_state()))
            }
        }
        Subject::CtStatus => {
            let status = names_in(right);
            if status.iter().any(|s| s == "dnat") {
                tri(p.forwarded)
            } else {
                Tri::Unknown
            }
        }
        Subject::DaddrType => match right.as_str() {
            Some("local") => tri(p.to_this_host()),
            Some(_) => Tri::No,
            None => Tri::Unknown,
        },
        // `tcp flags & (fin|syn|rst|ack) == syn`: the packet's flags under the mask.
        Subject::Flags(mask) => match flag_bits(right) {
            Some(wanted) => tri(p.tcp_flags() & mask == wanted),
            None => Tri::Unknown,
        },
        Subject::Iface => match (right.as_str(), &p.iface) {
            (Some(name), Some(iface)) => {
                let pattern = name.strip_suffix('*');
                tri(pattern.map_or(name == iface, |pre| iface.starts_with(pre)))
            }
            _ => Tri::Unknown,
        },
    }
}

/// TCP flag bits named in nft JSON: "syn", ["syn", "ack"], { "|": ["syn", "ack"] }.
fn flag_bits(v: &Value) -> Option<u8> {
    match v {
        Value::String(name) => Some(match name.as_str() {
            "fin" => 0x01,
            "syn" => 0x02,
            "rst" => 0x04,
            "psh" => 0x08,
            "ack" => 0x10,
            "urg" => 0x20,
            "ecn" => 0x40,
            "cwr" => 0x80,
            _ => return None,
        }),
        Value::Number(n) => n.as_u64().and_then(|n| u8::try_from(n).ok()),
        Value::Array(items) => items
            .iter()
            .try_fold(0u8, |acc, i| Some(acc | flag_bits(i)?)),
        Value::Object(o) => flag_bits(o.get("|")?),
        _ => None,
    }
}

/// The ports after "dport" (or "sport") in a rule's text: "443", "{ 80, 443 }", "8000-8080",
/// service names; negated lists are not decoded.
fn ports_in_text(text: &str, field: &str) -> Option<Vec<(u16, u16)>> {
    let rest = text.split(&format!("{field} ")).nth(1)?;
    if rest.starts_with("!=") {
        return None;
    }
    let items: Vec<&str> = if let Some(list) = rest.strip_prefix("{ ") {
        list.split('}').next()?.split(',').map(str::trim).collect()
    } else {
        vec![rest.split_whitespace().next()?]
    };
    items
        .iter()
        .map(|item| match item.split_once('-') {
            Some((a, b)) => Some((service_port(a)?, service_port(b)?)),
            None => service_port(item).map(|p| (p, p)),
        })
        .collect()
}

fn ports_have(ports: &[(u16, u16)], port: u16) -> Tri {
    tri(ports.iter().any(|(a, b)| (*a..=*b).contains(&port)))
}

/// "limit rate over 5/second" from a rule's text, or the whole text.
fn limit_text(text: &str) -> String {
    for key in ["limit rate", "ct count", "meter"] {
        if let Some(at) = text.find(key) {
            let rest = &text[at..];
            let end = rest
                .find(" counter")
                .or_else(|| rest.find(" drop"))
                .unwrap_or(rest.len());
            return rest[..end].to_string();
        }
    }
    text.to_string()
}

/// "-m connlimit --connlimit-above 10 --connlimit-mask 32" out of an iptables-save line.
fn xt_options(line: &str, name: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let Some(at) = words.windows(2).position(|w| w[0] == "-m" && w[1] == name) else {
        return format!("xt match {name}");
    };
    let mut out = vec!["-m", name];
    for w in &words[at + 2..] {
        if *w == "-m" || *w == "-j" {
            break;
        }
        out.push(w);
    }
    out.join(" ")
}

//! Allowlist audit: sets and chains of source accepts that admit some of Cloudflare's ranges
//! — an allowlist built for the edge — and exactly which of the watched ranges each misses.
//! A copy of the list taken before Cloudflare added a range keeps failing for that range only.

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;
use serde_json::Value;

use super::{
    owner::{owner_of, Owner},
    Ruleset,
};
use crate::ranges::RangeSet;

/// An allowlist of source addresses found in the ruleset, against the watched ranges of one
/// family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allowlist {
    /// "set", or "chain" for a chain of source-accept rules.
    pub kind: &'static str,
    pub family: String,
    pub table: String,
    /// The set's name, or the chain's.
    pub name: String,
    /// "ipv4" or "ipv6".
    pub ip: &'static str,
    /// Watched ranges it admits whole.
    pub admitted: Vec<String>,
    /// Watched ranges it admits only part of.
    pub partly: Vec<String>,
    /// Watched ranges it does not admit at all.
    pub missing: Vec<String>,
    pub owner: Option<Owner>,
}

impl Allowlist {
    /// "set inet filter cf_v4", "chain ip filter INPUT".
    pub fn location(&self) -> String {
        format!("{} {} {} {}", self.kind, self.family, self.table, self.name)
    }

    pub fn complete(&self) -> bool {
        self.missing.is_empty() && self.partly.is_empty()
    }
}

/// (kind, family, table, set or chain name) of a source list.
type ListKey = (&'static str, String, String, String);

/// An address interval, inclusive, as 128-bit numbers (IPv4 in the low 32 bits).
type Span = (u128, u128);

fn span(net: &IpNet) -> Span {
    match net {
        IpNet::V4(n) => (
            u128::from(u32::from(n.network())),
            u128::from(u32::from(n.broadcast())),
        ),
        IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
    }
}

fn addr_num(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// A set element or a match's right side as (is IPv6, span).
fn spans_of(v: &Value, out: &mut Vec<(bool, Span)>) {
    if let Some(s) = v.as_str() {
        if let Ok(a) = s.parse::<IpAddr>() {
            out.push((a.is_ipv6(), (addr_num(a), addr_num(a))));
        }
    } else if let Some(pre) = v.get("prefix") {
        let net = format!("{}/{}", pre["addr"].as_str().unwrap_or(""), pre["len"]);
        if let Ok(n) = net.parse::<IpNet>() {
            out.push((matches!(n, IpNet::V6(_)), span(&n)));
        }
    } else if let Some(r) = v.get("range").and_then(Value::as_array) {
        let bound = |x: Option<&Value>| {
            x.and_then(Value::as_str)
                .and_then(|t| t.parse::<IpAddr>().ok())
        };
        if let (Some(a), Some(b)) = (bound(r.first()), bound(r.get(1))) {
            out.push((a.is_ipv6(), (addr_num(a), addr_num(b))));
        }
    } else if let Some(e) = v.get("elem") {
        spans_of(&e["val"], out);
    } else if let Some(set) = v.get("set").and_then(Value::as_array) {
        for x in set {
            spans_of(x, out);
        }
    }
}

/// How much of `want` the union of `have` covers: whole, part, or none.
fn coverage(want: Span, have: &[Span]) -> (bool, bool) {
    let mut parts: Vec<Span> = have
        .iter()
        .filter(|(a, b)| *b >= want.0 && *a <= want.1)
        .map(|(a, b)| ((*a).max(want.0), (*b).min(want.1)))
        .collect();
    if parts.is_empty() {
        return (false, false);
    }
    parts.sort_unstable();
    let mut next = want.0;
    for (a, b) in parts {
        if a > next {
            return (false, true);
        }
        if b >= want.1 {
            return (true, true);
        }
        next = next.max(b + 1);
    }
    (false, true)
}

impl Ruleset {
    /// Every set or chain of source accepts that admits at least one watched range, whole or
    /// in part, with the ranges it admits and misses.
    pub fn allowlists(&self, ranges: &RangeSet) -> Vec<Allowlist> {
        // (kind, family, table, name) -> spans, from rules that accept by source.
        let mut found: BTreeMap<ListKey, Vec<(bool, Span)>> = BTreeMap::new();
        for rule in self.items.iter().filter_map(|i| i.get("rule")) {
            let exprs = rule["expr"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            let accepts = exprs.iter().any(|e| {
                e.get("accept").is_some()
                    || e.get("xt")
                        .is_some_and(|x| x["type"] == "target" && x["name"] == "ACCEPT")
            });
            let drops = exprs.iter().any(|e| {
                e.get("drop").is_some()
                    || e.get("reject").is_some()
                    || e.get("xt").is_some_and(|x| {
                        x["type"] == "target" && (x["name"] == "DROP" || x["name"] == "REJECT")
                    })
            });
            let s = |k: &str| rule[k].as_str().unwrap_or("").to_string();
            for m in exprs.iter().filter_map(|e| e.get("match")) {
                let is_saddr = m["left"]
                    .get("payload")
                    .is_some_and(|p| p["field"] == "saddr");
                let op = m["op"].as_str().unwrap_or("==");
                let admits = (accepts && op != "!=") || (drops && op == "!=");
                if !is_saddr || !admits {
                    continue;
                }
                if let Some(name) = m["right"].as_str().and_then(|r| r.strip_prefix('@')) {
                    let elems = self
                        .set_elements(&s("family"), &s("table"), name)
                        .unwrap_or_default();
                    let mut spans = Vec::new();
                    for e in &elems {
                        spans_of(e, &mut spans);
                    }
                    found
                        .entry(("set", s("family"), s("table"), name.to_string()))
                        .or_insert(spans);
                } else {
                    let mut spans = Vec::new();
                    spans_of(&m["right"], &mut spans);
                    found
                        .entry(("chain", s("family"), s("table"), s("chain")))
                        .or_default()
                        .extend(spans);
                }
            }
        }
        let mut out = Vec::new();
        for ((kind, family, table, name), spans) in found {
            for v6 in [false, true] {
                let have: Vec<Span> = spans
                    .iter()
                    .filter(|(is6, _)| *is6 == v6)
                    .map(|(_, s)| *s)
                    .collect();
                if have.is_empty() {
                    continue;
                }
                let watched: Vec<IpNet> = if v6 {
                    ranges.v6.iter().map(|n| IpNet::V6(*n)).collect()
                } else {
                    ranges.v4.iter().map(|n| IpNet::V4(*n)).collect()
                };
                let (mut admitted, mut partly, mut missing) = (Vec::new(), Vec::new(), Vec::new());
                for net in &watched {
                    match coverage(span(net), &have) {
                        (true, _) => admitted.push(net.to_string()),
                        (false, true) => partly.push(net.to_string()),
                        (false, false) => missing.push(net.to_string()),
                    }
                }
                if admitted.is_empty() && partly.is_empty() {
                    continue; // Not an allowlist for the edge (an office, a VPN).
                }
                let set = (kind == "set").then_some(name.as_str());
                let chain = if kind == "chain" { name.as_str() } else { "" };
                out.push(Allowlist {
                    kind,
                    owner: owner_of(&table, chain, set),
                    family: family.clone(),
                    table: table.clone(),
                    name: name.clone(),
                    ip: if v6 { "ipv6" } else { "ipv4" },
                    admitted,
                    partly,
                    missing,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_whole_part_none() {
        assert_eq!(coverage((10, 20), &[(0, 30)]), (true, true));
        assert_eq!(coverage((10, 20), &[(10, 14), (15, 20)]), (true, true));
        assert_eq!(coverage((10, 20), &[(10, 14), (16, 20)]), (false, true));
        assert_eq!(coverage((10, 20), &[(21, 30)]), (false, false));
        assert_eq!(coverage((10, 20), &[(12, 13)]), (false, true));
    }
}

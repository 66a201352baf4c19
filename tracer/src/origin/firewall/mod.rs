//! Which firewall rule drops the edge's packets? Reads the nftables ruleset (iptables-nft rules
//! included) and evaluates it against a dropped flow the way the kernel walks it: base chains
//! of the prerouting and input hooks (forward, for DNATed flows), jumps and gotos, named and
//! anonymous sets, verdict maps, intervals, and the iptables-nft matches whose text nft
//! decodes. What it cannot evaluate makes a finding uncertain, never silently certain; rate
//! limits are reported as such.

mod audit;
mod matches;
pub mod owner;
#[cfg(test)]
mod tests;
mod text;

use std::{collections::HashMap, net::IpAddr};

use serde_json::Value;

pub use audit::Allowlist;
use matches::Tri;
use owner::owner_of;
pub use owner::Owner;

/// A packet to test: the edge peer's SYN to the origin, or (`reply`) the origin's SYN-ACK
/// back to the peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub peer: IpAddr,
    pub peer_port: Option<u16>,
    /// The origin's end: its address, or after DNAT the backend's.
    pub local: IpAddr,
    pub port: u16,
    /// It crosses the forward hook, not input (or output): DNATed to another namespace, or
    /// a reply passing through the host of the namespace that sent it.
    pub forwarded: bool,
    /// The interface it arrived on.
    pub iface: Option<String>,
    /// The origin's SYN-ACK going back to the peer, not the peer's SYN.
    pub reply: bool,
}

impl Packet {
    pub(crate) fn saddr(&self) -> IpAddr {
        if self.reply {
            self.local
        } else {
            self.peer
        }
    }

    pub(crate) fn daddr(&self) -> IpAddr {
        if self.reply {
            self.peer
        } else {
            self.local
        }
    }

    pub(crate) fn sport(&self) -> Option<u16> {
        if self.reply {
            Some(self.port)
        } else {
            self.peer_port
        }
    }

    pub(crate) fn dport(&self) -> Option<u16> {
        if self.reply {
            self.peer_port
        } else {
            Some(self.port)
        }
    }

    /// Conntrack's state for it: a SYN starts a connection; the answer to it is the first
    /// packet of the reply direction, which conntrack already calls established.
    pub(crate) fn ct_state(&self) -> &'static str {
        if self.reply {
            "established"
        } else {
            "new"
        }
    }

    /// The TCP flags it carries.
    pub(crate) fn tcp_flags(&self) -> u8 {
        if self.reply {
            0x12
        } else {
            0x02
        }
    }

    /// Addressed to this host (`fib daddr type local`).
    pub(crate) fn to_this_host(&self) -> bool {
        !self.forwarded && !self.reply
    }
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
    /// "INPUT → f2b-nginx-http-auth rule 1: ip saddr 173.245.48.10 reject (table ip filter,
    /// handle 5)", or "table inet filter chain input: policy drop (no rule accepts it)".
    pub rule: String,
    /// Every match of the rule and on the way to it was evaluated and matched.
    pub certain: bool,
    pub family: String,
    pub table: String,
    /// The chain holding the rule (the base chain for a policy).
    pub chain: String,
    /// The base chain the packet entered by (hook input, forward, prerouting).
    pub base_chain: String,
    /// The tool that wrote it, when its names show.
    pub owner: Option<Owner>,
    /// The rule drops only above a rate or connection count ("connlimit above 10").
    pub rate_limit: Option<String>,
    /// It rejects (the edge sees a reset or ICMP error: 521) rather than drops (522).
    pub rejects: bool,
}

#[derive(Debug, Default)]
pub struct Ruleset {
    items: Vec<Value>,
    /// (family, table, chain, handle) -> rule text from `nft -a list ruleset`.
    text: HashMap<(String, String, String, u64), String>,
    /// (family, table, chain) -> `iptables-save` rule lines in order, for the details of xt
    /// matches nft only names (connlimit, hashlimit).
    xt_lines: HashMap<(String, String, String), Vec<String>>,
    /// Read without set elements (the whole ruleset was too large or too slow to list): a
    /// match on a named set is unknown, never "not in the set". Says why.
    pub sets_omitted: Option<String>,
}

/// After a ruleset too large to list whole, reads leave set elements out for this long
/// (listing them again would cost the same seconds every window).
const TERSE_FOR: std::time::Duration = std::time::Duration::from_secs(600);

/// Until when reads leave set elements out (seconds since the epoch; 0: read them).
static TERSE_UNTIL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Where an evaluation is: the base chain it started from, its table, the chains walked.
#[derive(Clone)]
struct Walk<'a> {
    family: &'a str,
    table: &'a str,
    path: Vec<String>,
}

use super::run_tool as run;

impl Ruleset {
    /// The ruleset of this namespace, or why it cannot be read. Bounded in time and size
    /// ([`super::TOOL_TIME`], [`super::TOOL_BYTES`]): a ruleset too large to list whole (a set
    /// of a million addresses) is read again without set elements (`nft -t`), evaluated as far
    /// as that goes, and says so in [`Ruleset::sets_omitted`].
    pub fn read() -> Result<Self, String> {
        use super::ToolError;
        use std::sync::atomic::Ordering;
        let terse_until = TERSE_UNTIL.load(Ordering::Relaxed);
        let whole = if unix_now() < terse_until {
            Err(ToolError::TooLarge(super::TOOL_BYTES))
        } else {
            super::run_bounded(
                "nft",
                &["-j", "list", "ruleset"],
                super::TOOL_TIME,
                super::TOOL_BYTES,
            )
        };
        let (json, text, omitted) = match whole {
            Ok(json) => {
                let text = run("nft", &["-a", "list", "ruleset"]).unwrap_or_default();
                (json, text, None)
            }
            Err(e @ (ToolError::TooLarge(_) | ToolError::TimedOut(_))) => {
                if terse_until == 0 || unix_now() >= terse_until {
                    TERSE_UNTIL.store(unix_now() + TERSE_FOR.as_secs(), Ordering::Relaxed);
                }
                let json = run("nft", &["-j", "-t", "list", "ruleset"])?;
                let text = run("nft", &["-a", "-t", "list", "ruleset"]).unwrap_or_default();
                let why = format!(
                    "the nftables ruleset is too large to read whole (nft {e}): read without set elements, so rules matching a set are not evaluated (tried again in {} min)",
                    TERSE_FOR.as_secs() / 60
                );
                (json, text, Some(why))
            }
            Err(e) => return Err(format!("nft: {e}")),
        };
        let mut rs = Self::parse(&json, &text)?;
        rs.sets_omitted = omitted;
        for (save, family) in [("iptables-save", "ip"), ("ip6tables-save", "ip6")] {
            if let Ok(out) = run(save, &[]) {
                text::parse_iptables_save(&out, family, &mut rs.xt_lines);
            }
        }
        Ok(rs)
    }

    pub fn parse(json: &str, text: &str) -> Result<Self, String> {
        let v: Value = serde_json::from_str(json).map_err(|e| format!("nft JSON: {e}"))?;
        let items = v["nftables"].as_array().cloned().unwrap_or_default();
        Ok(Self {
            items,
            text: text::parse_text(text),
            xt_lines: HashMap::new(),
            sets_omitted: None,
        })
    }

    fn chains(&self) -> impl Iterator<Item = &Value> {
        self.items.iter().filter_map(|i| i.get("chain"))
    }

    fn rules<'s>(
        &'s self,
        family: &'s str,
        table: &'s str,
        chain: &'s str,
    ) -> impl Iterator<Item = &'s Value> {
        self.items
            .iter()
            .filter_map(|i| i.get("rule"))
            .filter(move |r| r["family"] == family && r["table"] == table && r["chain"] == chain)
    }

    /// A named set's elements; `None` when unknown (no such set, or read without elements).
    fn set_elements(&self, family: &str, table: &str, name: &str) -> Option<Vec<Value>> {
        if self.sets_omitted.is_some() {
            return None;
        }
        self.items.iter().find_map(|i| {
            let s = i.get("set").or_else(|| i.get("map"))?;
            (s["family"] == family && s["table"] == table && s["name"] == name)
                .then(|| s["elem"].as_array().cloned().unwrap_or_default())
        })
    }

    /// Base chains on `hook` for packets of `peer`'s family: (family, table, chain).
    pub fn base_chains(&self, hook: &str, v6: bool) -> Vec<(String, String, String)> {
        self.chains()
            .filter(|c| c["hook"] == hook)
            .filter(|c| family_applies(c["family"].as_str().unwrap_or(""), v6))
            .map(|c| {
                let s = |k: &str| c[k].as_str().unwrap_or("").to_string();
                (s("family"), s("table"), s("name"))
            })
            .collect()
    }

    /// Who set a base chain's policy: its own name's owner, or that of the manager whose
    /// chains it jumps to (ufw's `default deny` is the INPUT policy of a chain full of
    /// `ufw-*` jumps).
    fn policy_owner(&self, family: &str, table: &str, chain: &str) -> Option<Owner> {
        owner_of(table, chain, None).or_else(|| {
            self.rules(family, table, chain).find_map(|r| {
                let exprs = r["expr"].as_array()?;
                let target = exprs
                    .iter()
                    .find_map(|e| e.get("jump").or_else(|| e.get("goto")))?["target"]
                    .as_str()?;
                owner_of(table, target, None)
                    .filter(|o| matches!(o, Owner::Ufw | Owner::Firewalld { .. }))
            })
        })
    }

    /// Rules (and chain policies) that would drop or reject `p` on input (forward, when it
    /// was forwarded), following jumps and gotos into the chains they name.
    pub fn blocking(&self, p: &Packet) -> Vec<Finding> {
        // netdev ingress (per interface) runs first, then prerouting, then input or forward;
        // a reply sent here leaves by output and postrouting.
        let hooks: &[&str] = match (p.reply, p.forwarded) {
            (false, true) => &["ingress", "prerouting", "forward"],
            (true, true) => &["ingress", "prerouting", "forward", "postrouting"],
            (false, false) => &["ingress", "prerouting", "input"],
            (true, false) => &["output", "postrouting"],
        };
        let mut out = Vec::new();
        let mut bases: Vec<&Value> = self
            .chains()
            .filter(|c| c["hook"].as_str().is_some_and(|h| hooks.contains(&h)))
            .filter(|c| family_applies(c["family"].as_str().unwrap_or(""), p.peer.is_ipv6()))
            // An ingress chain belongs to its device(s).
            .filter(|c| match (c.get("dev"), &p.iface) {
                (Some(dev), Some(iface)) => {
                    dev == iface.as_str()
                        || dev
                            .as_array()
                            .is_some_and(|d| d.iter().any(|x| x == iface.as_str()))
                }
                _ => true,
            })
            .collect();
        // The kernel runs a hook's chains by priority; prerouting before input/forward.
        bases.sort_by_key(|c| {
            let hook_order = hooks.iter().position(|h| c["hook"] == *h).unwrap_or(0);
            (hook_order, c["prio"].as_i64().unwrap_or(0))
        });
        for chain in bases {
            let (family, table, name) = (
                chain["family"].as_str().unwrap_or(""),
                chain["table"].as_str().unwrap_or(""),
                chain["name"].as_str().unwrap_or(""),
            );
            let mut walk = Walk {
                family,
                table,
                path: vec![name.to_string()],
            };
            let (ending, clean) = self.eval_chain(&mut walk, name, p, true, 0, &mut out);
            if ending == Ending::Fallthrough && chain["policy"] == "drop" {
                out.push(Finding {
                    rule: format!(
                        "table {family} {table} chain {name}: policy drop (no rule accepts it)"
                    ),
                    certain: clean,
                    family: family.into(),
                    table: table.into(),
                    chain: name.into(),
                    base_chain: name.into(),
                    owner: self.policy_owner(family, table, name),
                    rate_limit: None,
                    rejects: false,
                });
            }
            if ending == Ending::Dropped {
                break;
            }
        }
        out
    }

    /// Evaluates the rules of `chain` in order. `entered`: every match on the way here was
    /// evaluated and matched. Returns how the chain ended and whether that end is certain for
    /// a packet that entered it (no rule that may have accepted or returned came before).
    fn eval_chain(
        &self,
        walk: &mut Walk<'_>,
        chain: &str,
        p: &Packet,
        entered: bool,
        depth: usize,
        out: &mut Vec<Finding>,
    ) -> (Ending, bool) {
        if depth > MAX_JUMPS {
            return (Ending::Fallthrough, false);
        }
        let (family, table) = (walk.family, walk.table);
        let mut clean = true;
        for (position, rule) in self.rules(family, table, chain).enumerate() {
            let handle = rule["handle"].as_u64().unwrap_or(0);
            let eval = self.eval_rule(family, table, chain, position, rule, p);
            if eval.all == Tri::No {
                continue;
            }
            let matched = eval.all == Tri::Yes;
            let sure = entered && clean && matched;
            match eval.verdict.as_deref() {
                Some(v @ ("drop" | "reject")) => {
                    let body = self
                        .text
                        .get(&(family.into(), table.into(), chain.into(), handle))
                        .cloned()
                        .unwrap_or_else(|| "(rule)".into());
                    let limited = eval.rate_limit.is_some();
                    out.push(Finding {
                        rule: format!(
                            "{} rule {}: {body} (table {family} {table}, handle {handle})",
                            walk.path.join(" → "),
                            position + 1
                        ),
                        certain: sure && !limited,
                        family: family.into(),
                        table: table.into(),
                        chain: chain.into(),
                        base_chain: walk.path[0].clone(),
                        owner: owner_of(table, chain, eval.set.as_deref()),
                        rate_limit: eval.rate_limit.clone(),
                        rejects: v == "reject",
                    });
                    if matched && !limited {
                        return (Ending::Dropped, clean);
                    }
                    clean = false;
                }
                Some("accept") if matched => return (Ending::Accepted, clean),
                Some(kind @ ("jump" | "goto")) => {
                    let target = eval.target.clone().unwrap_or_default();
                    walk.path.push(target.clone());
                    let (ending, inner) = self.eval_chain(walk, &target, p, sure, depth + 1, out);
                    walk.path.pop();
                    if matched && (ending != Ending::Fallthrough || kind == "goto") {
                        return (ending, clean && inner);
                    }
                    if ending != Ending::Fallthrough || !inner {
                        clean = false;
                    }
                }
                Some("return") if matched => return (Ending::Fallthrough, clean),
                // It may have accepted or returned: what follows is only possibly reached.
                Some("accept" | "return") => clean = false,
                _ => {}
            }
        }
        (Ending::Fallthrough, clean)
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
}

fn family_applies(family: &str, v6: bool) -> bool {
    match family {
        "inet" | "netdev" | "bridge" => true,
        "ip" => !v6,
        "ip6" => v6,
        _ => false,
    }
}

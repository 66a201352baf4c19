//! `firewall_drop`: the rule and the path to it, who wrote it, and the fix in that tool's own
//! terms — fail2ban's jail, ufw, firewalld's zone, Docker's DOCKER-USER, CrowdSec's decisions,
//! or an nft/iptables rule in a table and chain that exist in the live ruleset. An allowlist
//! that misses some of Cloudflare's ranges gets exactly those ranges.

use std::net::IpAddr;

use super::{ports_text, Cause, Inputs, Verdict};
use crate::{
    correlate::Outcome,
    origin::firewall::{owner::Owner, Allowlist, Finding},
    reasons::meaning::drop_meaning,
};

/// Edge peers of filtered attempts, most first.
fn dropped_peers(i: &Inputs<'_>) -> Vec<IpAddr> {
    let mut peers: Vec<(IpAddr, u64)> = i
        .classes
        .iter()
        .filter(|c| c.outcome == Some(Outcome::FirewallDrop))
        .flat_map(|c| c.peers.iter().copied())
        .collect();
    peers.sort_by_key(|(a, n)| (std::cmp::Reverse(*n), *a));
    let mut out: Vec<IpAddr> = Vec::new();
    for (a, _) in peers {
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out.truncate(5);
    out
}

pub(super) fn firewall_drop(i: &Inputs<'_>) -> Cause {
    let reasons: Vec<String> = i
        .filter_reasons
        .iter()
        .map(|(r, n)| format!("{r} ×{n}"))
        .collect();
    let mut evidence = vec![format!(
        "{} edge connection attempts were dropped or rejected by a packet filter (kernel reasons: {})",
        i.edge.firewall_drops,
        reasons.join(", ")
    )];
    // Filters other than netfilter (tc, XDP, socket filters, cgroup BPF, LSMs): the ruleset
    // is not where to look; say what each is.
    let mut other_filters = Vec::new();
    for (name, n) in i
        .filter_reasons
        .iter()
        .filter(|(r, _)| *r != "NETFILTER_DROP")
    {
        let m = drop_meaning(name);
        evidence.push(format!("kernel drop reason {name} ×{n}: {}", m.what));
        other_filters.push(m.next.replace("<iface>", i.interface));
    }
    let findings: &[Finding] = i.firewall.as_deref().unwrap_or(&[]);
    match &i.firewall {
        Ok(f) if !f.is_empty() => {
            for f in f {
                let who = f
                    .owner
                    .as_ref()
                    .map(|o| format!(", written by {}", o.describe()))
                    .unwrap_or_default();
                let limit = f
                    .rate_limit
                    .as_ref()
                    .map(|l| format!(" — a rate limit ({l}): it drops only beyond it, and the edge's many connections from few addresses trip per-source limits"))
                    .unwrap_or_default();
                evidence.push(format!(
                    "{} rule{who}: {}{limit}",
                    if f.certain { "matching" } else { "possibly matching" },
                    f.rule
                ));
            }
        }
        Ok(_) => evidence.push(
            "no nftables/iptables-nft rule evaluated as matching: the drop is elsewhere (iptables-legacy, a tc or BPF filter)".into(),
        ),
        Err(e) => evidence.push(format!("firewall ruleset not read: {e}")),
    }
    let gaps: Vec<&Allowlist> = i.allowlists.iter().filter(|a| !a.complete()).collect();
    for a in &gaps {
        evidence.push(allowlist_text(a));
    }
    for b in i
        .backends
        .iter()
        .filter(|b| b.count(Outcome::FirewallDrop) > 0)
    {
        evidence.push(format!(
            "{} of these attempts were forwarded to {} in {}: they cross the forward hook (FORWARD, Docker's DOCKER-USER), not input",
            b.count(Outcome::FirewallDrop),
            b.endpoint(),
            b.place
        ));
    }
    if i.non_edge.handshakes > 0 {
        evidence.push(format!(
            "meanwhile {} attempts from non-edge peers completed: an allowlist that admits others but misses Cloudflare's ranges",
            i.non_edge.handshakes
        ));
    } else if i.non_edge.firewall_drops > 0 {
        evidence.push(format!(
            "non-edge peers were dropped too ({} attempts): the port is closed by the firewall for everyone",
            i.non_edge.firewall_drops
        ));
    }
    let mut ports = i.filtered_ports.clone();
    ports.sort_unstable();
    ports.dedup();
    let ports = if ports.is_empty() {
        i.ports.to_vec()
    } else {
        ports
    };
    let (v4, v6) = ranges_to_admit(i, &gaps);
    let mut fix = Fix {
        ports: ports_text(&ports),
        first_port: ports.first().copied().unwrap_or(443),
        v4,
        v6,
        steps: Vec::new(),
    };
    for a in &gaps {
        fix.allowlist(a);
    }
    let peers = dropped_peers(i);
    let mut owners: Vec<&Owner> = Vec::new();
    for f in findings.iter().filter(|f| f.owner.is_some()) {
        let owner = f.owner.as_ref().expect("filtered");
        if !owners.contains(&owner) {
            owners.push(owner);
            fix.owner(owner, f, &peers);
        }
    }
    let netfilter = i.filter_reasons.contains_key("NETFILTER_DROP") || i.filter_reasons.is_empty();
    if owners.is_empty() && gaps.is_empty() && netfilter {
        fix.generic(i, findings);
    }
    fix.steps.extend(other_filters);
    fix.steps.push("Relax the rule briefly to confirm, then re-tighten it with the allowlist in place; Cloudflare's ranges change, so refresh them automatically (`tracer ranges --refresh`, `tracer ranges --audit`).".into());
    let mut cause = Cause::new(
        Verdict::FirewallDrop,
        i.edge.firewall_drops,
        evidence,
        fix.steps,
    );
    let certain: Vec<&Finding> = findings.iter().filter(|f| f.certain).collect();
    if !certain.is_empty() && certain.iter().all(|f| f.rejects) {
        cause.cloudflare_error = Some(521);
    }
    cause
}

/// "set inet filter cloudflare_v4 admits 14 of 15 Cloudflare IPv4 ranges; it lacks
/// 104.16.0.0/13"
pub fn allowlist_text(a: &Allowlist) -> String {
    let total = a.admitted.len() + a.partly.len() + a.missing.len();
    let mut s = format!(
        "allowlist {}{} admits {} of {total} Cloudflare {} ranges",
        a.location(),
        a.owner
            .as_ref()
            .map(|o| format!(" ({})", o.describe()))
            .unwrap_or_default(),
        a.admitted.len(),
        if a.ip == "ipv6" { "IPv6" } else { "IPv4" },
    );
    if !a.missing.is_empty() {
        s += &format!("; it lacks {}", a.missing.join(", "));
    }
    if !a.partly.is_empty() {
        s += &format!("; it covers only part of {}", a.partly.join(", "));
    }
    s
}

/// The ranges a fix must admit: only those allowlists lack, when an allowlist exists;
/// otherwise all watched ranges.
fn ranges_to_admit(i: &Inputs<'_>, gaps: &[&Allowlist]) -> (Vec<String>, Vec<String>) {
    if gaps.is_empty() {
        return (
            i.ranges.v4.iter().map(ToString::to_string).collect(),
            i.ranges.v6.iter().map(ToString::to_string).collect(),
        );
    }
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for a in gaps {
        let list = if a.ip == "ipv6" { &mut v6 } else { &mut v4 };
        for r in a.missing.iter().chain(&a.partly) {
            if !list.contains(r) {
                list.push(r.clone());
            }
        }
    }
    (v4, v6)
}

/// Next steps under construction.
struct Fix {
    ports: String,
    first_port: u16,
    v4: Vec<String>,
    v6: Vec<String>,
    steps: Vec<String>,
}

impl Fix {
    fn all_ranges(&self) -> Vec<&String> {
        self.v4.iter().chain(&self.v6).collect()
    }

    /// Adds the missing ranges to the allowlist itself.
    fn allowlist(&mut self, a: &Allowlist) {
        let add: Vec<&String> = a.missing.iter().chain(&a.partly).collect();
        let list = add.iter().map(|s| s.as_str()).collect::<Vec<_>>();
        let step = match (a.kind, a.family.as_str()) {
            ("set", _) => format!(
                "Add the ranges the allowlist lacks: nft add element {} {} {} {{ {} }}",
                a.family,
                a.table,
                a.name,
                list.join(", ")
            ),
            (_, "ip" | "ip6") => {
                let cmd = if a.family == "ip6" { "ip6tables" } else { "iptables" };
                format!(
                    "Add the ranges the allowlist lacks: for r in {}; do {cmd} -I {} -s $r -p tcp -m multiport --dports {} -j ACCEPT; done",
                    list.join(" "),
                    a.name,
                    self.ports
                )
            }
            _ => format!(
                "Add the ranges the allowlist lacks: nft insert rule {} {} {} {} saddr {{ {} }} tcp dport {{ {} }} accept",
                a.family,
                a.table,
                a.name,
                if a.ip == "ipv6" { "ip6" } else { "ip" },
                list.join(", "),
                self.ports
            ),
        };
        self.steps.push(step);
    }

    fn owner(&mut self, owner: &Owner, f: &Finding, peers: &[IpAddr]) {
        let ranges = self
            .all_ranges()
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        let port = self.first_port;
        match owner {
            Owner::Fail2ban { jail } => {
                let unban: Vec<String> = peers
                    .iter()
                    .map(|p| match jail {
                        Some(j) => format!("fail2ban-client set {j} unbanip {p}"),
                        None => format!("fail2ban-client unban {p}"),
                    })
                    .collect();
                if !unban.is_empty() {
                    self.steps.push(format!(
                        "Unban the edge addresses fail2ban banned{}: {}",
                        jail.as_ref().map(|j| format!(" in jail {j}")).unwrap_or_default(),
                        unban.join("; ")
                    ));
                }
                self.steps.push(format!(
                    "Stop fail2ban banning Cloudflare: add its ranges to ignoreip in /etc/fail2ban/jail.local under [DEFAULT] (ignoreip = 127.0.0.1/8 ::1 {ranges}), then `fail2ban-client reload`."
                ));
                self.steps.push("Log visitors' addresses instead of the edge's, so fail2ban bans visitors: nginx `real_ip_header CF-Connecting-IP;` with `set_real_ip_from <range>;` for each Cloudflare range (Apache: mod_remoteip, `RemoteIPHeader CF-Connecting-IP` and `RemoteIPTrustedProxy <range>`).".into());
            }
            Owner::Ufw => {
                let verb = if f.rule.contains("policy drop") {
                    "allow"
                } else {
                    "insert 1 allow"
                };
                self.steps.push(format!(
                    "Allow Cloudflare's ranges with ufw: for r in {ranges}; do ufw {verb} from $r to any port {port} proto tcp; done"
                ));
            }
            Owner::Firewalld { zone } => {
                let zone = zone.as_deref().unwrap_or("public");
                self.steps.push(format!(
                    "Allow Cloudflare's ranges in firewalld's zone {zone}: for r in {ranges}; do firewall-cmd --permanent --zone={zone} --add-rich-rule=\"rule source address=$r port port={port} protocol=tcp accept\"; done; firewall-cmd --reload"
                ));
            }
            Owner::Docker => self.steps.push(format!(
                "For published container ports, allow Cloudflare's ranges where Docker lets admins filter forwarded traffic: for r in {ranges}; do iptables -I DOCKER-USER -s $r -j RETURN; done — before the rule that drops them (remove that rule if it targets Cloudflare)."
            )),
            Owner::Crowdsec => {
                let delete: Vec<String> = peers
                    .iter()
                    .map(|p| format!("cscli decisions delete --ip {p}"))
                    .collect();
                if !delete.is_empty() {
                    self.steps.push(format!(
                        "Remove CrowdSec's decisions against the edge: {}",
                        delete.join("; ")
                    ));
                }
                self.steps.push(format!("Whitelist Cloudflare's ranges in CrowdSec (a whitelist parser in /etc/crowdsec/parsers/s02-enrich/ with cidr: {ranges}) and have the web server log CF-Connecting-IP, so visitors are judged, not the edge."));
            }
        }
    }

    /// No manager owns the rule: an nft or iptables rule in a chain that exists.
    fn generic(&mut self, i: &Inputs<'_>, findings: &[Finding]) {
        let v4 = self.v4.join(", ");
        let v6 = self.v6.join(", ");
        let at = findings
            .iter()
            .map(|f| (f.family.clone(), f.table.clone(), f.base_chain.clone()))
            .next()
            .or_else(|| {
                let forwarded = i
                    .backends
                    .iter()
                    .any(|b| b.count(Outcome::FirewallDrop) > 0);
                let hook = if forwarded { "forward" } else { "input" };
                i.ruleset?.base_chains(hook, false).into_iter().next()
            });
        let Some((family, table, chain)) = at else {
            self.steps.push("No nftables/iptables-nft chain filters this traffic: check iptables-legacy (`iptables-legacy-save`), tc filters (`tc filter show dev <iface> ingress`) and cgroup BPF programs.".into());
            return;
        };
        if matches!(family.as_str(), "ip" | "ip6") && table == "filter" {
            self.steps.push(format!(
                "Allow Cloudflare's ranges before the dropping rule (iptables): for r in {}; do iptables -I {chain} -p tcp -m multiport --dports {} -s $r -j ACCEPT; done; for r in {}; do ip6tables -I {chain} -p tcp -m multiport --dports {} -s $r -j ACCEPT; done",
                self.v4.join(" "),
                self.ports,
                self.v6.join(" "),
                self.ports
            ));
            return;
        }
        let mut cmds = Vec::new();
        if !v4.is_empty() && family != "ip6" {
            cmds.push(format!("nft insert rule {family} {table} {chain} ip saddr {{ {v4} }} tcp dport {{ {} }} accept", self.ports));
        }
        if !v6.is_empty() && family != "ip" {
            cmds.push(format!("nft insert rule {family} {table} {chain} ip6 saddr {{ {v6} }} tcp dport {{ {} }} accept", self.ports));
        }
        self.steps.push(format!(
            "Allow Cloudflare's ranges before the dropping rule (nftables): {}",
            cmds.join("; ")
        ));
    }
}

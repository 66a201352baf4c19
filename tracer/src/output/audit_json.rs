//! `tracer ranges --audit --format json`: the ranges audited against and each allowlist found.

use serde::Serialize;

use crate::{
    origin::{
        firewall::{Allowlist, Owner},
        range_routes::{Hop, Misrouted},
    },
    output::report::RangesInfo,
};

#[derive(Serialize)]
pub struct AuditJson<'a> {
    ranges: RangesInfo,
    /// Every allowlist admits every range.
    complete: bool,
    allowlists: Vec<AllowlistJson<'a>>,
    /// Watched ranges (or parts of them) whose replies do not leave the way the default route
    /// goes: empty when all is well.
    routes: Vec<RouteJson>,
}

impl<'a> AuditJson<'a> {
    pub fn of(ranges: RangesInfo, lists: &'a [Allowlist], routes: &[Misrouted]) -> Self {
        Self {
            ranges,
            complete: lists.iter().all(Allowlist::complete),
            allowlists: lists.iter().map(AllowlistJson::of).collect(),
            routes: routes.iter().map(RouteJson::of).collect(),
        }
    }
}

/// One misrouted range: `{"range": "172.64.0.0/13", "type": "unicast", "prefix":
/// "172.0.0.0/8", "dev": "tun0", "via": "10.8.0.1", "table": null, "route": "…", "fix": "…"}`.
#[derive(Serialize)]
struct RouteJson {
    range: String,
    /// unicast, unreachable, blackhole, prohibit, or none (no route at all).
    #[serde(rename = "type")]
    kind: &'static str,
    prefix: Option<String>,
    dev: Option<String>,
    via: Option<String>,
    table: Option<String>,
    /// The route as `ip route` writes it.
    route: String,
    fix: String,
}

impl RouteJson {
    fn of(m: &Misrouted) -> Self {
        let (kind, dev, via, table) = match &m.hop {
            Hop::Via {
                dev,
                gateway,
                table,
            } => (
                "unicast",
                Some(dev.clone()),
                gateway.map(|g| g.to_string()),
                table.clone(),
            ),
            Hop::Null(n) => (n.kind.as_str(), None, None, n.table.clone()),
            Hop::None => ("none", None, None, None),
        };
        Self {
            range: m.range.to_string(),
            kind,
            prefix: m.prefix.map(|p| p.to_string()),
            dev,
            via,
            table,
            route: m.route_text(),
            fix: m.fix(),
        }
    }
}

#[derive(Serialize)]
struct AllowlistJson<'a> {
    /// "set", or "chain" for a chain of source-accept rules.
    kind: &'static str,
    family: &'a str,
    table: &'a str,
    name: &'a str,
    /// "ipv4" or "ipv6".
    ip: &'static str,
    admitted: &'a [String],
    partly: &'a [String],
    missing: &'a [String],
    owner: Option<OwnerJson<'a>>,
}

impl<'a> AllowlistJson<'a> {
    fn of(a: &'a Allowlist) -> Self {
        Self {
            kind: a.kind,
            family: &a.family,
            table: &a.table,
            name: &a.name,
            ip: a.ip,
            admitted: &a.admitted,
            partly: &a.partly,
            missing: &a.missing,
            owner: a.owner.as_ref().map(OwnerJson::of),
        }
    }
}

/// `{"tool": "fail2ban", "jail": "sshd"}`, `{"tool": "ufw"}`.
#[derive(Serialize)]
#[serde(tag = "tool", rename_all = "snake_case")]
enum OwnerJson<'a> {
    Fail2ban { jail: Option<&'a str> },
    Ufw,
    Firewalld { zone: Option<&'a str> },
    Docker,
    Crowdsec,
}

impl<'a> OwnerJson<'a> {
    fn of(o: &'a Owner) -> Self {
        match o {
            Owner::Fail2ban { jail } => Self::Fail2ban {
                jail: jail.as_deref(),
            },
            Owner::Ufw => Self::Ufw,
            Owner::Firewalld { zone } => Self::Firewalld {
                zone: zone.as_deref(),
            },
            Owner::Docker => Self::Docker,
            Owner::Crowdsec => Self::Crowdsec,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_tagged_by_tool() {
        let lists = [Allowlist {
            kind: "set",
            family: "inet".into(),
            table: "f2b-table".into(),
            name: "addr-set-sshd".into(),
            ip: "ipv4",
            admitted: vec!["173.245.48.0/20".into()],
            partly: Vec::new(),
            missing: vec!["103.21.244.0/22".into()],
            owner: Some(Owner::Fail2ban {
                jail: Some("sshd".into()),
            }),
        }];
        let ranges = RangesInfo::of(&crate::ranges::RangeSet::embedded());
        let v = serde_json::to_value(AuditJson::of(ranges, &lists, &[])).unwrap();
        assert_eq!(v["routes"], serde_json::json!([]));
        assert_eq!(v["complete"], false);
        assert_eq!(
            v["allowlists"][0],
            serde_json::json!({
                "kind": "set", "family": "inet", "table": "f2b-table", "name": "addr-set-sshd",
                "ip": "ipv4", "admitted": ["173.245.48.0/20"], "partly": [],
                "missing": ["103.21.244.0/22"], "owner": {"tool": "fail2ban", "jail": "sshd"}
            })
        );
        let docker = serde_json::to_value(OwnerJson::of(&Owner::Docker)).unwrap();
        assert_eq!(docker, serde_json::json!({"tool": "docker"}));
    }
}

//! The way back: which route the origin takes to reach an edge peer (policy rules included),
//! and how strictly the arrival interface filters by reverse path. A handshake that never
//! completes while SYN-ACKs go out another interface is a return-path fault, not overload; a
//! SYN taken by a listener that cannot route its answer at all (an `unreachable`, `blackhole`
//! or `prohibit` route — what fail2ban's `route` action writes) is one too.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;

/// A route that answers no packet: the kernel refuses to send to it (`ip route add TYPE PREFIX`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NullRoute {
    /// EHOSTUNREACH: an ICMP host-unreachable for forwarded packets.
    Unreachable,
    /// EINVAL: silently discarded.
    Blackhole,
    /// EACCES: an ICMP administratively-prohibited for forwarded packets.
    Prohibit,
}

impl NullRoute {
    /// The route type's name in `ip route`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unreachable => "unreachable",
            Self::Blackhole => "blackhole",
            Self::Prohibit => "prohibit",
        }
    }

    /// The type a failed `ip route get` names by its error (the kernel's errno for the type).
    pub fn of_error(message: &str) -> Option<Self> {
        if message.contains("No route to host") {
            Some(Self::Unreachable)
        } else if message.contains("Invalid argument") {
            Some(Self::Blackhole)
        } else if message.contains("Permission denied") {
            Some(Self::Prohibit)
        } else {
            None
        }
    }
}

/// The null route that catches a peer: its type, prefix and table, as `ip route` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NullRouteEntry {
    pub kind: NullRoute,
    /// The route's destination ("173.245.48.10" for a host route, "0.0.0.0/0" for default);
    /// `None` when no route of the type covers the peer (a policy rule of that type).
    pub prefix: Option<IpNet>,
    /// Policy-routing table, when not main.
    pub table: Option<String>,
}

impl NullRouteEntry {
    /// "unreachable 173.245.48.10" / "blackhole 104.16.0.0/13 table 100" — as `ip route` writes it.
    pub fn describe(&self) -> String {
        let mut s = self.kind.as_str().to_string();
        if let Some(p) = self.prefix {
            s += &format!(" {}", show_prefix(p));
        }
        if let Some(t) = &self.table {
            s += &format!(" table {t}");
        }
        s
    }

    /// A single-address route in the main table: the shape fail2ban's `route` action writes
    /// (`ip route add <blocktype> <ip>`).
    pub fn looks_like_a_ban(&self) -> bool {
        self.table.is_none()
            && self
                .prefix
                .is_some_and(|p| p.prefix_len() == p.max_prefix_len())
    }

    /// The command that removes it.
    pub fn delete_command(&self) -> String {
        let family = match self.prefix {
            Some(IpNet::V6(_)) => "-6 ",
            _ => "",
        };
        format!("ip {family}route del {}", self.describe())
    }
}

/// A host route is written as its address, as `ip route` prints it.
fn show_prefix(p: IpNet) -> String {
    if p.prefix_len() == p.max_prefix_len() {
        p.addr().to_string()
    } else {
        p.to_string()
    }
}

/// The route the kernel picks for a reply from `local` to `peer`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub peer: IpAddr,
    pub local: IpAddr,
    /// Output interface (empty for a null route).
    pub dev: String,
    pub gateway: Option<IpAddr>,
    /// Source address the kernel would pick.
    pub prefsrc: Option<IpAddr>,
    /// Policy-routing table, when not main.
    pub table: Option<String>,
    /// The reply cannot be routed at all: the null route that catches it.
    pub null: Option<NullRouteEntry>,
}

impl Route {
    /// "via 10.9.0.1 dev eth1 src 192.0.2.1 (table 100)", or "unreachable 173.245.48.10".
    pub fn describe(&self) -> String {
        if let Some(n) = &self.null {
            return match n.prefix {
                Some(_) => n.describe(),
                None => format!("{} (a policy rule: `ip rule show`)", n.kind.as_str()),
            };
        }
        let mut s = String::new();
        if let Some(g) = self.gateway {
            s += &format!("via {g} ");
        }
        s += &format!("dev {}", self.dev);
        if let Some(src) = self.prefsrc {
            s += &format!(" src {src}");
        }
        if let Some(t) = &self.table {
            s += &format!(" (table {t})");
        }
        s
    }
}

/// `ip -j route get PEER from LOCAL` in this namespace; when the kernel refuses to route it,
/// the null route (from `ip route show table all type TYPE`) that catches the peer.
pub fn route_back(peer: IpAddr, local: IpAddr) -> Result<Route, String> {
    let (p, l) = (peer.to_string(), local.to_string());
    match super::run_tool("ip", &["-j", "-d", "route", "get", &p, "from", &l]) {
        Ok(out) => parse(&out, peer, local),
        Err(e) => {
            let Some(kind) = NullRoute::of_error(&e) else {
                return Err(format!("no route back to {peer} from {local}: {e}"));
            };
            let listed = null_routes_listed(peer.is_ipv6(), kind);
            Ok(Route {
                peer,
                local,
                dev: String::new(),
                gateway: None,
                prefsrc: None,
                table: None,
                null: Some(null_route_for(&listed, kind, peer)),
            })
        }
    }
}

/// `ip -j route show table all type KIND` for a family (empty when `ip` fails).
pub fn null_routes_listed(v6: bool, kind: NullRoute) -> String {
    let family = if v6 { "-6" } else { "-4" };
    super::run_tool(
        "ip",
        &[
            family,
            "-j",
            "route",
            "show",
            "table",
            "all",
            "type",
            kind.as_str(),
        ],
    )
    .unwrap_or_default()
}

/// The most specific route of `kind` in `ip -j route show table all type KIND` that covers
/// `peer` (a policy rule of that type when none does).
pub fn null_route_for(json: &str, kind: NullRoute, peer: IpAddr) -> NullRouteEntry {
    let routes: Vec<Value> = serde_json::from_str(json).unwrap_or_default();
    let best = routes
        .iter()
        .filter_map(|r| {
            let dst = r["dst"].as_str()?;
            let net: IpNet = match dst {
                "default" if peer.is_ipv4() => "0.0.0.0/0".parse().ok()?,
                "default" => "::/0".parse().ok()?,
                d => d
                    .parse()
                    .ok()
                    .or_else(|| d.parse::<IpAddr>().ok().map(IpNet::from))?,
            };
            net.contains(&peer).then_some((net, table_of(&r["table"])))
        })
        .max_by_key(|(net, _)| net.prefix_len());
    NullRouteEntry {
        kind,
        prefix: best.as_ref().map(|(n, _)| *n),
        table: best.and_then(|(_, t)| t),
    }
}

/// A table name unless it is main (`ip -j` omits it there, or says "main" or 254).
pub fn table_of(v: &Value) -> Option<String> {
    match v {
        Value::String(t) if t != "main" => Some(t.clone()),
        Value::Number(n) if n.as_u64() != Some(254) => Some(n.to_string()),
        _ => None,
    }
}

/// Parses `ip -j route get` output.
pub fn parse(json: &str, peer: IpAddr, local: IpAddr) -> Result<Route, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("ip -j route get: {e}"))?;
    let r = v
        .as_array()
        .and_then(|a| a.first())
        .ok_or("ip -j route get: no route in the answer")?;
    let addr = |k: &str| r[k].as_str().and_then(|s| s.parse::<IpAddr>().ok());
    let dev = r["dev"]
        .as_str()
        .ok_or("ip -j route get: no output interface")?;
    let table = table_of(&r["table"]);
    Ok(Route {
        peer,
        local,
        dev: dev.to_string(),
        gateway: addr("gateway"),
        prefsrc: addr("prefsrc"),
        table,
        null: None,
    })
}

/// Reverse-path filtering in effect on `iface` for IPv4: the larger of `all` and the
/// interface's own setting (0 off, 1 strict, 2 loose), as the kernel applies it.
pub fn rp_filter(iface: &str) -> Option<u8> {
    let read = |name: &str| -> Option<u8> {
        let path = format!("/proc/sys/net/ipv4/conf/{name}/rp_filter");
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    };
    let own = read(iface);
    let all = read("all");
    own.into_iter().chain(all).max()
}

/// "strict (1)", "loose (2)", "off (0)".
pub fn rp_filter_text(mode: u8) -> String {
    match mode {
        0 => "off (0)".into(),
        1 => "strict (1)".into(),
        2 => "loose (2)".into(),
        n => format!("{n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_policy_route_and_a_plain_one() {
        let peer = "173.245.48.10".parse().unwrap();
        let local = "192.0.2.1".parse().unwrap();
        let r = parse(
            r#"[{"dst":"173.245.48.10","gateway":"10.9.0.1","dev":"eth1","table":"100","prefsrc":"192.0.2.1","flags":[],"uid":0,"cache":[]}]"#,
            peer,
            local,
        )
        .unwrap();
        assert_eq!(r.dev, "eth1");
        assert_eq!(
            r.describe(),
            "via 10.9.0.1 dev eth1 src 192.0.2.1 (table 100)"
        );
        let r = parse(
            r#"[{"dst":"173.245.48.10","dev":"eth0","table":"main","prefsrc":"192.0.2.1","flags":[]}]"#,
            peer,
            local,
        )
        .unwrap();
        assert_eq!(r.describe(), "dev eth0 src 192.0.2.1");
        assert!(parse("[]", peer, local).is_err());
        assert!(parse("not json", peer, local).is_err());
    }

    #[test]
    fn the_most_specific_null_route_covering_the_peer_is_named() {
        let peer: IpAddr = "173.245.48.10".parse().unwrap();
        let listed = r#"[{"type":"unreachable","dst":"173.245.48.10","flags":[]},
            {"type":"unreachable","dst":"173.245.48.0/20","table":"100","flags":[]},
            {"type":"unreachable","dst":"198.51.100.7","flags":[]}]"#;
        let n = null_route_for(listed, NullRoute::Unreachable, peer);
        assert_eq!(n.describe(), "unreachable 173.245.48.10");
        assert!(n.looks_like_a_ban());
        assert_eq!(n.delete_command(), "ip route del unreachable 173.245.48.10");
        // A range in another table is not a ban's shape.
        let n = null_route_for(
            r#"[{"type":"blackhole","dst":"173.245.48.0/20","table":"100","flags":[]}]"#,
            NullRoute::Blackhole,
            peer,
        );
        assert_eq!(n.describe(), "blackhole 173.245.48.0/20 table 100");
        assert!(!n.looks_like_a_ban());
        // IPv6, default, and none covering the peer (a policy rule).
        let v6: IpAddr = "2606:4700::10".parse().unwrap();
        let n = null_route_for(
            r#"[{"type":"prohibit","dst":"default","dev":"lo","flags":[]}]"#,
            NullRoute::Prohibit,
            v6,
        );
        assert_eq!(n.delete_command(), "ip -6 route del prohibit ::/0");
        let n = null_route_for("[]", NullRoute::Prohibit, v6);
        assert_eq!(n.prefix, None);
        assert_eq!(
            NullRoute::of_error("ip failed: RTNETLINK answers: No route to host"),
            Some(NullRoute::Unreachable)
        );
        assert_eq!(
            NullRoute::of_error("RTNETLINK answers: Invalid argument"),
            Some(NullRoute::Blackhole)
        );
        assert_eq!(
            NullRoute::of_error("RTNETLINK answers: Permission denied"),
            Some(NullRoute::Prohibit)
        );
        assert_eq!(
            NullRoute::of_error("RTNETLINK answers: Network is unreachable"),
            None
        );
    }
}

//! The way back: which route the origin takes to reach an edge peer (policy rules included),
//! and how strictly the arrival interface filters by reverse path. A handshake that never
//! completes while SYN-ACKs go out another interface is a return-path fault, not overload; a
//! SYN taken by a listener that cannot route its answer at all (an `unreachable`, `blackhole`
//! or `prohibit` route — what fail2ban's `route` action writes) is one too.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::sys::netlink::{self, ListedRoute, RouteAnswer, RouteKind};

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

    /// The type a refused route lookup names by its errno (the kernel's error for the type).
    pub fn of_errno(errno: i32) -> Option<Self> {
        match errno {
            libc::EHOSTUNREACH => Some(Self::Unreachable),
            libc::EINVAL => Some(Self::Blackhole),
            libc::EACCES => Some(Self::Prohibit),
            _ => None,
        }
    }

    /// The null type of a route, if it is one.
    pub fn of_kind(kind: RouteKind) -> Option<Self> {
        match kind {
            RouteKind::Unreachable => Some(Self::Unreachable),
            RouteKind::Blackhole => Some(Self::Blackhole),
            RouteKind::Prohibit => Some(Self::Prohibit),
            _ => None,
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

/// The route back to `peer` from `local` in this namespace (`ip route get PEER from LOCAL`,
/// asked over netlink); when the kernel refuses to route it, the null route that catches the
/// peer.
pub fn route_back(peer: IpAddr, local: IpAddr) -> Result<Route, String> {
    let null = |kind: NullRoute, table: Option<String>| {
        let listed = netlink::routes_listed(peer.is_ipv6()).unwrap_or_default();
        let mut entry = null_route_for(&listed, kind, peer);
        entry.table = entry.table.or(table);
        Route {
            peer,
            local,
            dev: String::new(),
            gateway: None,
            prefsrc: None,
            table: None,
            null: Some(entry),
        }
    };
    match netlink::route_get(peer, Some(local)) {
        Ok(a) => match NullRoute::of_kind(a.kind) {
            Some(kind) => Ok(null(kind, table_name(a.table))),
            None => Route::from_answer(&a, peer, local),
        },
        Err(e) => match e.raw_os_error().and_then(NullRoute::of_errno) {
            Some(kind) => Ok(null(kind, None)),
            None => Err(format!("no route back to {peer} from {local}: {e}")),
        },
    }
}

/// The most specific route of `kind` among `listed` (`ip route show table all`) that covers
/// `peer` (a policy rule of that type when none does).
pub fn null_route_for(listed: &[ListedRoute], kind: NullRoute, peer: IpAddr) -> NullRouteEntry {
    let best = listed
        .iter()
        .filter(|r| NullRoute::of_kind(r.kind) == Some(kind) && r.dst.contains(&peer))
        .max_by_key(|r| r.dst.prefix_len());
    NullRouteEntry {
        kind,
        prefix: best.map(|r| r.dst),
        table: best.and_then(|r| table_name(r.table)),
    }
}

/// A table's name as `ip route` prints it, unless it is main (which `ip` omits).
pub fn table_name(table: u32) -> Option<String> {
    match table {
        netlink::MAIN_TABLE => None,
        255 => Some("local".into()),
        253 => Some("default".into()),
        n => Some(n.to_string()),
    }
}

impl Route {
    /// The kernel's answer for a reply's way out.
    pub fn from_answer(a: &RouteAnswer, peer: IpAddr, local: IpAddr) -> Result<Route, String> {
        let dev = a
            .dev
            .clone()
            .ok_or_else(|| format!("the route back to {peer} has no output interface"))?;
        Ok(Route {
            peer,
            local,
            dev,
            gateway: a.gateway,
            prefsrc: a.prefsrc,
            table: table_name(a.table),
            null: None,
        })
    }
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
    fn a_policy_route_and_a_plain_one_are_described() {
        let peer = "173.245.48.10".parse().unwrap();
        let local = "192.0.2.1".parse().unwrap();
        let answer = |gateway: Option<&str>, dev: Option<&str>, table| RouteAnswer {
            kind: RouteKind::Unicast,
            table,
            dev: dev.map(String::from),
            gateway: gateway.map(|g| g.parse().unwrap()),
            prefsrc: Some(local),
        };
        let r =
            Route::from_answer(&answer(Some("10.9.0.1"), Some("eth1"), 100), peer, local).unwrap();
        assert_eq!(r.dev, "eth1");
        assert_eq!(
            r.describe(),
            "via 10.9.0.1 dev eth1 src 192.0.2.1 (table 100)"
        );
        let r = Route::from_answer(&answer(None, Some("eth0"), 254), peer, local).unwrap();
        assert_eq!(r.describe(), "dev eth0 src 192.0.2.1");
        // An interface gone between the answer and its name.
        assert!(Route::from_answer(&answer(None, None, 254), peer, local).is_err());
    }

    #[test]
    fn the_most_specific_null_route_covering_the_peer_is_named() {
        let peer: IpAddr = "173.245.48.10".parse().unwrap();
        let listed: Vec<ListedRoute> = [
            "unreachable 173.245.48.10",
            "unreachable 173.245.48.0/20 table 100",
            "unreachable 198.51.100.7",
            "173.245.48.0/24 via 10.9.0.1 dev eth1",
        ]
        .map(netlink::listed)
        .into();
        let n = null_route_for(&listed, NullRoute::Unreachable, peer);
        assert_eq!(n.describe(), "unreachable 173.245.48.10");
        assert!(n.looks_like_a_ban());
        assert_eq!(n.delete_command(), "ip route del unreachable 173.245.48.10");
        // A range in another table is not a ban's shape.
        let n = null_route_for(
            &[netlink::listed("blackhole 173.245.48.0/20 table 100")],
            NullRoute::Blackhole,
            peer,
        );
        assert_eq!(n.describe(), "blackhole 173.245.48.0/20 table 100");
        assert!(!n.looks_like_a_ban());
        // IPv6, default, and none covering the peer (a policy rule).
        let v6: IpAddr = "2606:4700::10".parse().unwrap();
        let n = null_route_for(
            &[netlink::listed("prohibit ::/0 dev lo")],
            NullRoute::Prohibit,
            v6,
        );
        assert_eq!(n.delete_command(), "ip -6 route del prohibit ::/0");
        let n = null_route_for(&[], NullRoute::Prohibit, v6);
        assert_eq!(n.prefix, None);
        assert_eq!(
            NullRoute::of_errno(libc::EHOSTUNREACH),
            Some(NullRoute::Unreachable)
        );
        assert_eq!(
            NullRoute::of_errno(libc::EINVAL),
            Some(NullRoute::Blackhole)
        );
        assert_eq!(NullRoute::of_errno(libc::EACCES), Some(NullRoute::Prohibit));
        assert_eq!(NullRoute::of_errno(libc::ENETUNREACH), None);
        assert_eq!(
            NullRoute::of_kind(RouteKind::Blackhole),
            Some(NullRoute::Blackhole)
        );
        assert_eq!(NullRoute::of_kind(RouteKind::Unicast), None);
    }
}

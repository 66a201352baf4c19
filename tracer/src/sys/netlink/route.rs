//! Routes, asked as `ip route get` and `ip route show table all` ask them.

use std::{io, net::IpAddr};

use ipnet::IpNet;
use netlink_packet_route::{
    route::{RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteType},
    AddressFamily, RouteNetlinkMessage,
};

use super::{ask, interface_name, Answer};

/// A route's type, as `ip route` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    Unicast,
    Local,
    Blackhole,
    Unreachable,
    Prohibit,
    /// Broadcast, multicast, anycast, throw, NAT...: never a way out to the edge.
    Other,
}

impl From<RouteType> for RouteKind {
    fn from(t: RouteType) -> Self {
        match t {
            RouteType::Unicast => Self::Unicast,
            RouteType::Local => Self::Local,
            RouteType::BlackHole => Self::Blackhole,
            RouteType::Unreachable => Self::Unreachable,
            RouteType::Prohibit => Self::Prohibit,
            _ => Self::Other,
        }
    }
}

/// The main table's number: `ip` omits it.
pub const MAIN_TABLE: u32 = 254;

/// One route of a table, as `ip route show table all` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedRoute {
    pub dst: IpNet,
    pub kind: RouteKind,
    pub table: u32,
    /// Output interface (None for a null route, or one whose index has no name any more).
    pub dev: Option<String>,
    pub gateway: Option<IpAddr>,
}

/// The kernel's choice for one destination, as `ip route get` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteAnswer {
    pub kind: RouteKind,
    pub table: u32,
    pub dev: Option<String>,
    pub gateway: Option<IpAddr>,
    /// The source address the kernel would pick.
    pub prefsrc: Option<IpAddr>,
}

fn family_of(v6: bool) -> AddressFamily {
    if v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    }
}

/// A route attribute's address, when it is an IP one.
pub fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// The parts of a route message both listings and answers use.
struct Parsed {
    dst: Option<IpAddr>,
    kind: RouteKind,
    table: u32,
    oif: Option<u32>,
    gateway: Option<IpAddr>,
    prefsrc: Option<IpAddr>,
}

fn parse(m: &RouteMessage) -> Parsed {
    let mut p = Parsed {
        dst: None,
        kind: m.header.kind.into(),
        table: u32::from(m.header.table),
        oif: None,
        gateway: None,
        prefsrc: None,
    };
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => p.dst = ip_of(d),
            RouteAttribute::Gateway(g) => p.gateway = ip_of(g),
            RouteAttribute::PrefSource(s) => p.prefsrc = ip_of(s),
            RouteAttribute::Oif(i) => p.oif = Some(*i),
            // Tables above 255 only fit the attribute.
            RouteAttribute::Table(t) => p.table = *t,
            _ => {}
        }
    }
    p
}

/// `ip route get DST [from SRC]`: the route the kernel picks, policy rules included, with the
/// table that held it. A null route is an error carrying its errno (EHOSTUNREACH, EINVAL,
/// EACCES); no route at all is ENETUNREACH.
pub fn route_get(dst: IpAddr, from: Option<IpAddr>) -> io::Result<RouteAnswer> {
    let host = if dst.is_ipv6() { 128 } else { 32 };
    let mut m = RouteMessage::default();
    m.header = RouteHeader {
        address_family: family_of(dst.is_ipv6()),
        destination_prefix_length: host,
        source_prefix_length: if from.is_some() { host } else { 0 },
        // Name the table the answer came from (as `ip route get` asks).
        flags: RouteFlags::LookupTable,
        ..RouteHeader::default()
    };
    m.attributes.push(RouteAttribute::Destination(dst.into()));
    if let Some(src) = from {
        m.attributes.push(RouteAttribute::Source(src.into()));
    }
    let answer = ask(
        netlink_sys::protocols::NETLINK_ROUTE,
        RouteNetlinkMessage::GetRoute(m),
        Answer::One,
    )?;
    let Some(RouteNetlinkMessage::NewRoute(r)) = answer.into_iter().next() else {
        return Err(io::Error::other("the kernel's answer held no route"));
    };
    let p = parse(&r);
    Ok(RouteAnswer {
        kind: p.kind,
        table: p.table,
        dev: p.oif.and_then(interface_name),
        gateway: p.gateway,
        prefsrc: p.prefsrc,
    })
}

/// `ip -4|-6 route show table all`: every route of every table of one family.
pub fn routes_listed(v6: bool) -> io::Result<Vec<ListedRoute>> {
    let mut m = RouteMessage::default();
    m.header.address_family = family_of(v6);
    let parts = ask(
        netlink_sys::protocols::NETLINK_ROUTE,
        RouteNetlinkMessage::GetRoute(m),
        Answer::Dump,
    )?;
    Ok(parts
        .iter()
        .filter_map(|part| match part {
            RouteNetlinkMessage::NewRoute(r) => Some(r),
            _ => None,
        })
        .filter_map(|r| {
            let p = parse(r);
            let addr = p.dst.unwrap_or(if v6 {
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
            });
            let dst = IpNet::new(addr, r.header.destination_prefix_length).ok()?;
            Some(ListedRoute {
                dst,
                kind: p.kind,
                table: p.table,
                dev: p.oif.and_then(interface_name),
                gateway: p.gateway,
            })
        })
        .collect())
}

/// A listed route from a line as `ip route show` writes it ("unreachable 173.245.48.0/20",
/// "172.0.0.0/8 via 10.8.0.1 dev tun0 table 100", "default via 192.0.2.254 dev eth0"): the
/// unit tests' recorded routing tables.
#[cfg(test)]
pub fn listed(line: &str) -> ListedRoute {
    let mut words = line.split_whitespace().peekable();
    let kind = match words.peek() {
        Some(&"unreachable") => RouteKind::Unreachable,
        Some(&"blackhole") => RouteKind::Blackhole,
        Some(&"prohibit") => RouteKind::Prohibit,
        Some(&"local") => RouteKind::Local,
        _ => RouteKind::Unicast,
    };
    if kind != RouteKind::Unicast {
        words.next();
    }
    let dst = words.next().expect("a destination");
    let v6 = dst.contains(':');
    let dst: IpNet = match dst {
        "default" if v6 => "::/0".parse().unwrap(),
        "default" => "0.0.0.0/0".parse().unwrap(),
        d => d
            .parse()
            .or_else(|_| d.parse::<IpAddr>().map(IpNet::from))
            .expect("a prefix"),
    };
    let mut r = ListedRoute {
        dst,
        kind,
        table: MAIN_TABLE,
        dev: None,
        gateway: None,
    };
    while let (Some(k), Some(v)) = (words.next(), words.next()) {
        match k {
            "via" => r.gateway = Some(v.parse().expect("a gateway")),
            "dev" => r.dev = Some(v.to_string()),
            "table" => r.table = v.parse().expect("a table number"),
            _ => {}
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_namespace_answers_for_loopback() {
        // Works unprivileged: every namespace routes 127.0.0.1 through its local table.
        let a = route_get("127.0.0.1".parse().unwrap(), None).unwrap();
        assert_eq!(a.kind, RouteKind::Local);
        assert_eq!(a.dev.as_deref(), Some("lo"));
        let listed = routes_listed(false).unwrap();
        assert!(
            listed.iter().any(|r| r.kind == RouteKind::Local
                && r.dst.contains(&"127.0.0.1".parse::<IpAddr>().unwrap())),
            "{listed:?}"
        );
        assert_eq!(interface_name(1).as_deref(), Some("lo"));
    }
}

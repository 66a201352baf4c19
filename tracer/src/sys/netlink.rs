//! Asking the kernel over netlink, in this thread's network namespace: one request and its
//! answer (or a dump's parts), with the messages built and read by the rust-netlink crates
//! (netlink-packet-route, netlink-packet-sock-diag) rather than by hand. Routes are asked
//! here as `ip route get` and `ip route show table all` ask them — the kernel decides, policy
//! rules included — without depending on `ip` being installed.

use std::{fmt::Debug, io, net::IpAddr, os::fd::AsRawFd as _, time::Duration};

use ipnet::IpNet;
use netlink_packet_core::{
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
    NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::{
    link::{LinkAttribute, LinkMessage, LinkXdp},
    route::{RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteType},
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{Socket, SocketAddr};

/// How long the kernel may take to answer (it answers at once; this only bounds a wait that
/// should never happen).
const ANSWER_TIME: Duration = Duration::from_secs(2);
/// A dump larger than this is refused rather than held: a host carrying a full BGP table is
/// not one whose routes this tool lists.
pub const MAX_PARTS: usize = 200_000;

/// One request; every inner message of the answer. A dump ends at its Done; a plain request at
/// its first answer. The kernel's error is returned as the errno it carries.
pub fn ask<M>(protocol: isize, message: M, dump: bool) -> io::Result<Vec<M>>
where
    M: NetlinkSerializable + NetlinkDeserializable + Debug,
    NetlinkPayload<M>: From<M>,
{
    let mut socket = Socket::new(protocol)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    set_receive_timeout(&socket, ANSWER_TIME)?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
    header.sequence_number = 1;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;

    let mut out = Vec::new();
    let mut datagram = vec![0u8; 64 * 1024];
    loop {
        let n = socket.recv(&mut &mut datagram[..], 0)?;
        let mut rest = &datagram[..n];
        while !rest.is_empty() {
            let m = NetlinkMessage::<M>::deserialize(rest)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = (m.header.length as usize).next_multiple_of(4);
            match m.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                NetlinkPayload::InnerMessage(inner) => {
                    if out.len() >= MAX_PARTS {
                        return Err(io::Error::other(format!(
                            "the kernel's answer has more than {MAX_PARTS} parts"
                        )));
                    }
                    out.push(inner);
                    if !dump {
                        return Ok(out);
                    }
                }
                // An acknowledgement (error 0), a no-op or an overrun notice.
                _ if !dump => return Ok(out),
                _ => {}
            }
            if len == 0 || len >= rest.len() {
                break;
            }
            rest = &rest[len..];
        }
    }
}

fn set_receive_timeout(socket: &Socket, t: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: libc::suseconds_t::from(t.subsec_micros() as i32),
    };
    // SAFETY: setsockopt with a timeval of the size given, on a socket we own.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

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

/// An interface's name by index, in this namespace (None once it is gone).
pub fn interface_name(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: if_indextoname writes at most IF_NAMESIZE bytes, NUL included, into buf.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
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
        false,
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
        true,
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

/// The id of the XDP program attached to `iface` now (RTM_GETLINK's IFLA_XDP, what `ip -d
/// link` shows), if any.
pub fn xdp_program_id(iface: &str) -> io::Result<Option<u32>> {
    let name = std::ffi::CString::new(iface)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in an interface name"))?;
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    let mut m = LinkMessage::default();
    m.header.index = index;
    let answer = ask(
        netlink_sys::protocols::NETLINK_ROUTE,
        RouteNetlinkMessage::GetLink(m),
        false,
    )?;
    let Some(RouteNetlinkMessage::NewLink(link)) = answer.into_iter().next() else {
        return Err(io::Error::other("the kernel's answer held no link"));
    };
    Ok(link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Xdp(xdp) => xdp.iter().find_map(|x| match x {
            LinkXdp::ProgId(id) if *id != 0 => Some(*id),
            _ => None,
        }),
        _ => None,
    }))
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

//! The kernel's own change notifications: rtnetlink (links, addresses, routes) and the
//! nftables monitor group (NFNLGRP_NFTABLES: tables, chains, rules, sets, elements, each
//! batch closed by a new generation). Decoded into words here; what is relevant is decided
//! by [`super::watch`]. Rtnetlink bodies are read by netlink-packet-route; nf_tables
//! notifications, which no maintained crate reads, by the few lines below (the table, chain
//! or set names and the generation are all the journal needs of them).

use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
};

use netlink_packet_core::ParseableParametrized as _;
use netlink_packet_route::{
    address::AddressAttribute,
    link::{LinkAttribute, LinkFlags, LinkInfo},
    route::RouteAttribute,
    RouteNetlinkMessage,
};

use crate::sys::netlink::{ip_of, RouteKind};

const NLMSG_HDRLEN: usize = 16;
const NETLINK_NETFILTER: i32 = 12;
const NFNLGRP_NFTABLES: u32 = 7;
const SOL_NETLINK: i32 = 270;
const NETLINK_ADD_MEMBERSHIP: i32 = 1;

/// A non-blocking netlink socket joined to notification groups.
pub struct Socket {
    fd: OwnedFd,
}

impl Socket {
    fn open(protocol: i32, groups: u32, add: &[u32]) -> io::Result<Socket> {
        // SAFETY: plain socket(2); the fd is owned right away.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                protocol,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain data; zeroed is valid.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = groups;
        // SAFETY: addr is a valid sockaddr_nl of the given size.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        for g in add {
            // SAFETY: setsockopt with a u32 group number.
            let r = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    SOL_NETLINK,
                    NETLINK_ADD_MEMBERSHIP,
                    (g as *const u32).cast(),
                    4,
                )
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(Socket { fd })
    }

    /// Links, IPv4/IPv6 addresses and routes.
    pub fn route() -> io::Result<Socket> {
        let groups = (libc::RTMGRP_LINK
            | libc::RTMGRP_IPV4_IFADDR
            | libc::RTMGRP_IPV6_IFADDR
            | libc::RTMGRP_IPV4_ROUTE
            | libc::RTMGRP_IPV6_ROUTE) as u32;
        Socket::open(libc::NETLINK_ROUTE, groups, &[])
    }

    /// The nftables monitor (needs CAP_NET_ADMIN).
    pub fn nftables() -> io::Result<Socket> {
        Socket::open(NETLINK_NETFILTER, 0, &[NFNLGRP_NFTABLES])
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Every message waiting, as (type, payload after the netlink header). Stops at
    /// EAGAIN; an overrun (ENOBUFS: notifications were lost) is reported as `lost`.
    pub fn drain(&self, buf: &mut [u8], mut each: impl FnMut(u16, &[u8])) -> bool {
        let mut lost = false;
        loop {
            // SAFETY: recv into a buffer we own, of its length.
            let n = unsafe { libc::recv(self.raw(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENOBUFS) {
                    lost = true;
                    continue;
                }
                return lost;
            }
            if n == 0 {
                return lost;
            }
            messages(&buf[..n as usize], &mut each);
        }
    }
}

/// The messages of one datagram.
pub fn messages(mut b: &[u8], each: &mut impl FnMut(u16, &[u8])) {
    while b.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let kind = u16::from_ne_bytes([b[4], b[5]]);
        if len < NLMSG_HDRLEN || len > b.len() {
            return;
        }
        each(kind, &b[NLMSG_HDRLEN..len]);
        let next = len.next_multiple_of(4).min(b.len());
        b = &b[next..];
    }
}

/// The attributes after a fixed header of `skip` bytes: (type without flags, value).
pub fn attrs(payload: &[u8], skip: usize) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut b = payload.get(skip..).unwrap_or_default();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let kind = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((kind, &b[4..len]));
        b = &b[len.next_multiple_of(4).min(b.len())..];
    }
    out
}

fn string(v: &[u8]) -> String {
    String::from_utf8_lossy(v.split(|&c| c == 0).next().unwrap_or_default()).into_owned()
}

/// An rtnetlink notification, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RtChange {
    Link {
        index: u32,
        name: String,
        /// IFLA_INFO_KIND: "veth", "bridge", ... (empty for a physical NIC).
        kind: String,
        up: bool,
        /// The up/running flags changed (not just statistics).
        flags_changed: bool,
        removed: bool,
    },
    Address {
        index: u32,
        addr: IpAddr,
        prefix: u8,
        removed: bool,
    },
    Route {
        dst: Option<IpAddr>,
        dst_len: u8,
        gateway: Option<IpAddr>,
        oif: Option<u32>,
        table: u32,
        kind: RouteKind,
        removed: bool,
    },
}

const RTM_DELLINK: u16 = 17;
const RTM_DELADDR: u16 = 21;
const RTM_DELROUTE: u16 = 25;
#[cfg(test)]
const RTM_NEWROUTE: u16 = 24;

/// One rtnetlink notification's body (`kind` is its message type), read by
/// netlink-packet-route. Anything it cannot read, or that is not a link, address or route,
/// is None.
pub fn decode_route(kind: u16, p: &[u8]) -> Option<RtChange> {
    match RouteNetlinkMessage::parse_with_param(p, kind).ok()? {
        RouteNetlinkMessage::NewLink(m) | RouteNetlinkMessage::DelLink(m) => {
            let mut name = String::new();
            let mut link_kind = String::new();
            for a in &m.attributes {
                match a {
                    LinkAttribute::IfName(n) => name = n.clone(),
                    LinkAttribute::LinkInfo(infos) => {
                        for i in infos {
                            if let LinkInfo::Kind(k) = i {
                                link_kind = k.to_string();
                            }
                        }
                    }
                    _ => {}
                }
            }
            Some(RtChange::Link {
                index: m.header.index,
                name,
                kind: link_kind,
                up: m.header.flags.contains(LinkFlags::Up),
                flags_changed: m
                    .header
                    .change_mask
                    .intersects(LinkFlags::Up | LinkFlags::Running),
                removed: kind == RTM_DELLINK,
            })
        }
        RouteNetlinkMessage::NewAddress(m) | RouteNetlinkMessage::DelAddress(m) => {
            let pick = |want_local: bool| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(ip) if want_local => Some(*ip),
                    AddressAttribute::Address(ip) if !want_local => Some(*ip),
                    _ => None,
                })
            };
            // IFA_LOCAL is the address itself on point-to-point links; IFA_ADDRESS otherwise.
            let address = pick(true).or_else(|| pick(false))?;
            Some(RtChange::Address {
                index: m.header.index,
                addr: address,
                prefix: m.header.prefix_len,
                removed: kind == RTM_DELADDR,
            })
        }
        RouteNetlinkMessage::NewRoute(m) | RouteNetlinkMessage::DelRoute(m) => {
            let mut change = RtChange::Route {
                dst: None,
                dst_len: m.header.destination_prefix_length,
                gateway: None,
                oif: None,
                table: u32::from(m.header.table),
                kind: m.header.kind.into(),
                removed: kind == RTM_DELROUTE,
            };
            if let RtChange::Route {
                dst,
                gateway,
                oif,
                table,
                ..
            } = &mut change
            {
                for a in &m.attributes {
                    match a {
                        RouteAttribute::Destination(d) => *dst = ip_of(d),
                        RouteAttribute::Gateway(g) => *gateway = ip_of(g),
                        RouteAttribute::Oif(i) => *oif = Some(*i),
                        RouteAttribute::Table(t) => *table = *t,
                        _ => {}
                    }
                }
            }
            Some(change)
        }
        _ => None,
    }
}

/// An nftables notification: (operation, object, family/table/chain-or-set) — or the end of a
/// batch (a new generation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NftChange {
    Object {
        added: bool,
        object: &'static str,
        /// "inet filter", "inet filter/input", "inet f2b-table/addr-set-sshd".
        place: String,
    },
    Generation(u32),
}

const NFNL_SUBSYS_NFTABLES: u16 = 10;

fn family_name(f: u8) -> &'static str {
    match f {
        1 => "inet",
        2 => "ip",
        3 => "arp",
        5 => "netdev",
        7 => "bridge",
        10 => "ip6",
        _ => "?",
    }
}

pub fn decode_nft(kind: u16, p: &[u8]) -> Option<NftChange> {
    if kind >> 8 != NFNL_SUBSYS_NFTABLES || p.len() < 4 {
        return None;
    }
    let msg = kind & 0xff;
    // nfgenmsg: family, version, res_id.
    let family = family_name(p[0]);
    let a = attrs(p, 4);
    let get = |t: u16| a.iter().find(|(k, _)| *k == t).map(|(_, v)| string(v));
    let (added, object) = match msg {
        0 => (true, "table"),
        2 => (false, "table"),
        3 => (true, "chain"),
        5 => (false, "chain"),
        6 => (true, "rule"),
        8 => (false, "rule"),
        9 => (true, "set"),
        11 => (false, "set"),
        12 => (true, "set element"),
        14 => (false, "set element"),
        15 => {
            let id = a
                .iter()
                .find(|(k, _)| *k == 1)
                .and_then(|(_, v)| v.get(..4))
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .unwrap_or(0);
            return Some(NftChange::Generation(id));
        }
        _ => return None,
    };
    // Attribute 1 is the table in every one of these; 2 the chain (rules), the set (elements)
    // or the object's own name (chains, sets).
    let table = get(1).unwrap_or_default();
    let place = match (object, get(2), get(3)) {
        ("table", _, _) => format!("{family} {table}"),
        ("rule", Some(chain), _) | ("set element", Some(chain), _) => {
            format!("{family} {table}/{chain}")
        }
        (_, Some(name), _) => format!("{family} {table}/{name}"),
        _ => format!("{family} {table}"),
    };
    Some(NftChange::Object {
        added,
        object,
        place,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(t: u16, v: &[u8]) -> Vec<u8> {
        let len = 4 + v.len();
        let mut b = Vec::new();
        b.extend_from_slice(&(len as u16).to_ne_bytes());
        b.extend_from_slice(&t.to_ne_bytes());
        b.extend_from_slice(v);
        b.resize(len.next_multiple_of(4), 0);
        b
    }

    #[test]
    fn a_rule_added_names_its_table_and_chain() {
        let mut p = vec![1, 0, 0, 0];
        p.extend(attr(1, b"filter\0"));
        p.extend(attr(2, b"input\0"));
        let c = decode_nft((10 << 8) | 6, &p).unwrap();
        assert_eq!(
            c,
            NftChange::Object {
                added: true,
                object: "rule",
                place: "inet filter/input".into()
            }
        );
        let mut g = vec![0, 0, 0, 0];
        g.extend(attr(1, &7u32.to_be_bytes()));
        assert_eq!(
            decode_nft((10 << 8) | 15, &g),
            Some(NftChange::Generation(7))
        );
        // Another subsystem is not ours.
        assert_eq!(decode_nft((11 << 8) | 6, &p), None);
    }

    #[test]
    fn a_route_is_decoded() {
        let mut p = vec![libc::AF_INET as u8, 20, 0, 0, 254, 3, 0, 1, 0, 0, 0, 0];
        p.extend(attr(libc::RTA_DST, &[173, 245, 48, 0]));
        p.extend(attr(libc::RTA_GATEWAY, &[10, 99, 0, 2]));
        p.extend(attr(libc::RTA_OIF, &7u32.to_ne_bytes()));
        let r = decode_route(RTM_NEWROUTE, &p).unwrap();
        assert_eq!(
            r,
            RtChange::Route {
                dst: Some("173.245.48.0".parse().unwrap()),
                dst_len: 20,
                gateway: Some("10.99.0.2".parse().unwrap()),
                oif: Some(7),
                table: 254,
                kind: RouteKind::Unicast,
                removed: false
            }
        );
    }

    #[test]
    fn a_deleted_veth_says_its_kind() {
        let mut p = vec![0u8; 16];
        p[4..8].copy_from_slice(&9u32.to_ne_bytes());
        p.extend(attr(libc::IFLA_IFNAME, b"veth1a2b\0"));
        p.extend(attr(18, &attr(1, b"veth\0")));
        match decode_route(RTM_DELLINK, &p) {
            Some(RtChange::Link {
                name,
                kind,
                removed,
                ..
            }) => {
                assert_eq!(
                    (name.as_str(), kind.as_str(), removed),
                    ("veth1a2b", "veth", true)
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn truncated_input_is_ignored() {
        assert_eq!(decode_route(RTM_NEWROUTE, &[2, 0]), None);
        let mut n = 0;
        messages(&[255, 255, 0, 0, 0, 0], &mut |_, _| n += 1);
        assert_eq!(n, 0);
        assert!(attrs(&[200, 0, 1, 0, 1], 0).is_empty());
    }
}

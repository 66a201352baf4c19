//! What is attached to an interface: its XDP program, its clsact BPF filters (what `ip -d
//! link` and `tc filter` show and remove).

use std::io;

use netlink_packet_route::{
    link::{LinkAttribute, LinkMessage, LinkXdp},
    tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcHeader, TcMessage, TcOption},
    RouteNetlinkMessage,
};

use super::{ask, interface_index, Answer};

/// The id of the XDP program attached to `iface` now (RTM_GETLINK's IFLA_XDP, what `ip -d
/// link` shows), if any.
pub fn xdp_program_id(iface: &str) -> io::Result<Option<u32>> {
    let mut m = LinkMessage::default();
    m.header.index = interface_index(iface)?;
    let answer = ask(
        netlink_sys::protocols::NETLINK_ROUTE,
        RouteNetlinkMessage::GetLink(m),
        Answer::One,
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

/// A BPF classifier on an interface's clsact hook, as `tc filter show dev IF ingress|egress`
/// lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BpfFilter {
    pub pref: u16,
    pub handle: u32,
    /// The program's name as the filter records it (`tc` shows it as `bpf_name`).
    pub name: String,
}

fn clsact_filter_header(index: u32, egress: bool) -> TcHeader {
    TcHeader {
        index: index as i32,
        parent: TcHandle {
            major: TcHandle::CLSACT.major,
            minor: if egress {
                TcHandle::MIN_EGRESS
            } else {
                TcHandle::MIN_INGRESS
            },
        },
        ..TcHeader::default()
    }
}

/// The BPF filters on `iface`'s clsact ingress (or egress) hook.
pub fn clsact_bpf_filters(iface: &str, egress: bool) -> io::Result<Vec<BpfFilter>> {
    let mut m = TcMessage::default();
    m.header = clsact_filter_header(interface_index(iface)?, egress);
    let parts = ask(
        netlink_sys::protocols::NETLINK_ROUTE,
        RouteNetlinkMessage::GetTrafficFilter(m),
        Answer::Dump,
    )?;
    Ok(parts
        .iter()
        .filter_map(|p| match p {
            RouteNetlinkMessage::NewTrafficFilter(f) => Some(f),
            _ => None,
        })
        .filter(|f| {
            f.attributes
                .iter()
                .any(|a| matches!(a, TcAttribute::Kind(k) if k == "bpf"))
        })
        // A chain's head (handle 0) carries no program.
        .filter(|f| u32::from(f.header.handle) != 0)
        .map(|f| BpfFilter {
            pref: (f.header.info >> 16) as u16,
            handle: f.header.handle.into(),
            name: f
                .attributes
                .iter()
                .find_map(|a| match a {
                    TcAttribute::Options(o) => o.iter().find_map(|o| match o {
                        TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => Some(n.clone()),
                        _ => None,
                    }),
                    _ => None,
                })
                .unwrap_or_default(),
        })
        .collect())
}

/// `tc filter del dev IF ingress|egress pref P handle H bpf`.
pub fn delete_clsact_filter(iface: &str, egress: bool, filter: &BpfFilter) -> io::Result<()> {
    let mut m = TcMessage::default();
    m.header = clsact_filter_header(interface_index(iface)?, egress);
    m.header.handle = filter.handle.into();
    // The priority in the high half, the protocol (any: 0) in the low one.
    m.header.info = u32::from(filter.pref) << 16;
    m.attributes.push(TcAttribute::Kind("bpf".into()));
    ask(
        netlink_sys::protocols::NETLINK_ROUTE,
        RouteNetlinkMessage::DelTrafficFilter(m),
        Answer::Ack,
    )
    .map(drop)
}

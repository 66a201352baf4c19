//! XDP: which SYNs reach the NIC. Always `XDP_PASS`: the tracer never changes traffic.

use aya_ebpf::{bindings::xdp_action::XDP_PASS, macros::xdp, programs::XdpContext};
use tracer_common::{counter, EventKind, EVENT_F_EDGE, EVENT_F_HAS_TCP};

use crate::common::{count, emit, empty_event, peer_flags, port_watched};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

#[xdp]
pub fn xdp_syn(ctx: XdpContext) -> u32 {
    let _ = try_xdp_syn(&ctx);
    XDP_PASS
}

/// An empty program, measured beside `xdp_syn` by `cargo xtask bench`.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// Bounds-checked pointer to `len` bytes at `offset` of the frame.
#[inline(always)]
fn bytes_at(ctx: &XdpContext, offset: usize, len: usize) -> Option<*const u8> {
    let start = ctx.data();
    if start + offset + len > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *const u8)
}

#[inline(always)]
fn be16(p: *const u8) -> u16 {
    unsafe { u16::from_be_bytes([*p, *p.add(1)]) }
}

#[inline(always)]
fn try_xdp_syn(ctx: &XdpContext) -> Option<()> {
    count(counter::XDP_PACKETS);
    let eth = bytes_at(ctx, 0, ETH_HLEN)?;
    let mut ether_type = be16(unsafe { eth.add(12) });
    let mut l3 = ETH_HLEN;
    // Up to two VLAN tags (802.1Q, QinQ).
    for _ in 0..2 {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        let tag = bytes_at(ctx, l3, 4)?;
        ether_type = be16(unsafe { tag.add(2) });
        l3 += 4;
    }

    let mut event = empty_event(EventKind::Syn as u32);
    let l4 = match ether_type {
        ETH_P_IP => {
            let ip = bytes_at(ctx, l3, 20)?;
            let ver_ihl = unsafe { *ip };
            let ihl = usize::from(ver_ihl & 0x0f) * 4;
            if ver_ihl >> 4 != 4 || ihl < 20 || unsafe { *ip.add(9) } != IPPROTO_TCP {
                return None;
            }
            // Any fragment (MF set or non-zero offset): not a SYN we can read whole.
            if be16(unsafe { ip.add(6) }) & 0x3fff != 0 {
                return None;
            }
            event.family = 4;
            for i in 0..4 {
                event.peer_addr[i] = unsafe { *ip.add(12 + i) };
                event.local_addr[i] = unsafe { *ip.add(16 + i) };
            }
            l3 + ihl
        }
        ETH_P_IPV6 => {
            let ip = bytes_at(ctx, l3, 40)?;
            // Extension headers (fragments included) are not followed: a SYN carries none.
            if unsafe { *ip } >> 4 != 6 || unsafe { *ip.add(6) } != IPPROTO_TCP {
                return None;
            }
            event.family = 6;
            for i in 0..16 {
                event.peer_addr[i] = unsafe { *ip.add(8 + i) };
                event.local_addr[i] = unsafe { *ip.add(24 + i) };
            }
            l3 + 40
        }
        _ => return None,
    };

    let tcp = bytes_at(ctx, l4, 20)?;
    let flags = unsafe { *tcp.add(13) };
    if flags & TCP_SYN == 0 || flags & TCP_ACK != 0 {
        return None;
    }
    let dport = be16(unsafe { tcp.add(2) });
    if !port_watched(dport) {
        return None;
    }
    let edge_flags = match peer_flags(event.family, &event.peer_addr) {
        Some(f) => {
            count(if f & EVENT_F_EDGE != 0 {
                counter::SYN_EDGE
            } else {
                counter::SYN_OTHER
            });
            f
        }
        None => {
            count(counter::SYN_OTHER);
            return None;
        }
    };
    event.peer_port = be16(tcp);
    event.local_port = dport;
    event.seq = unsafe { u32::from_be_bytes([*tcp.add(4), *tcp.add(5), *tcp.add(6), *tcp.add(7)]) };
    event.tcp_flags = u32::from(flags);
    event.flags = edge_flags | EVENT_F_HAS_TCP;
    event.aux = ctx.ingress_ifindex() as u64;
    emit(event);
    Some(())
}

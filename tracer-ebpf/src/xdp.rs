//! XDP: which SYNs reach the NIC. Always `XDP_PASS`: the tracer never changes traffic.
//!
//! Hot path first: most frames are not bare SYNs to a watched port and leave after a few
//! bounds-checked loads; most non-edge SYNs leave after a one-bit pre-filter, before the trie.

use aya_ebpf::{
    bindings::xdp_action::XDP_PASS, helpers::bpf_ktime_get_coarse_ns, macros::xdp,
    programs::XdpContext,
};
use tracer_common::{counter, Event, EventKind, EVENT_F_EDGE, EVENT_F_HAS_TCP};

use crate::common::{all_peers, count, peer_is_edge, port_watched, EVENTS};

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
    u16::from_be(unsafe { core::ptr::read_unaligned(p as *const u16) })
}

#[inline(always)]
fn try_xdp_syn(ctx: &XdpContext) -> Option<()> {
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

    // (family, offset of the source address, offset of the TCP header)
    let (family, src_at, l4) = match ether_type {
        ETH_P_IP => {
            let ip = bytes_at(ctx, l3, 20)?;
            let ver_ihl = unsafe { *ip };
            let ihl = usize::from(ver_ihl & 0x0f) * 4;
            // Any fragment (MF set or non-zero offset) is not a SYN we can read whole.
            if ver_ihl >> 4 != 4
                || ihl < 20
                || unsafe { *ip.add(9) } != IPPROTO_TCP
                || be16(unsafe { ip.add(6) }) & 0x3fff != 0
            {
                return None;
            }
            (4u32, l3 + 12, l3 + ihl)
        }
        ETH_P_IPV6 => {
            let ip = bytes_at(ctx, l3, 40)?;
            // Extension headers (fragments included) are not followed: a SYN carries none.
            if unsafe { *ip } >> 4 != 6 || unsafe { *ip.add(6) } != IPPROTO_TCP {
                return None;
            }
            (6u32, l3 + 8, l3 + 40)
        }
        _ => return None,
    };

    let tcp = bytes_at(ctx, l4, 20)?;
    let flags = unsafe { *tcp.add(13) };
    if flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return None;
    }
    let dport = be16(unsafe { tcp.add(2) });
    if !port_watched(dport) {
        return None;
    }

    let mut peer = [0u8; 16];
    let mut local = [0u8; 16];
    if family == 4 {
        let a = bytes_at(ctx, src_at, 8)?;
        for i in 0..4 {
            peer[i] = unsafe { *a.add(i) };
            local[i] = unsafe { *a.add(4 + i) };
        }
    } else {
        let a = bytes_at(ctx, src_at, 32)?;
        for i in 0..16 {
            peer[i] = unsafe { *a.add(i) };
            local[i] = unsafe { *a.add(16 + i) };
        }
    }
    let edge = peer_is_edge(family, &peer);
    if !edge && !all_peers() {
        return None;
    }

    // Written in place in the ring: no copy through the stack.
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(counter::LOST);
        return None;
    };
    entry.write(Event {
        // The coarse clock (one jiffy): the precise one costs ~40 ns per SYN on virtual
        // machines, and events are ordered by the ring, not by their stamps.
        ts_ns: unsafe { bpf_ktime_get_coarse_ns() },
        kind: EventKind::Syn as u32,
        family,
        peer_addr: peer,
        local_addr: local,
        peer_port: be16(tcp),
        local_port: dport,
        flags: if edge { EVENT_F_EDGE } else { 0 } | EVENT_F_HAS_TCP,
        reason: 0,
        state: 0,
        tcp_flags: u32::from(flags),
        seq: u32::from_be(unsafe { core::ptr::read_unaligned(tcp.add(4) as *const u32) }),
        aux: ctx.ingress_ifindex() as u64,
    });
    entry.submit(0);
    Some(())
}

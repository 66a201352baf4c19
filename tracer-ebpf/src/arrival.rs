//! The arrival hook's logic, shared by XDP and TC: which frames are SYNs to a watched port
//! from a wanted peer, recorded in the SYN log (and, when following forwarded connections, in
//! `ARRIVALS`). Both hooks see the frame from its Ethernet header and never change it.
//!
//! Hot path first: most frames are not bare SYNs to a watched port and leave after a few
//! bounds-checked loads; most non-edge SYNs leave after a one-bit pre-filter, before the trie.

use aya_ebpf::{
    bindings::BPF_RB_PROD_POS,
    helpers::{bpf_get_smp_processor_id, bpf_jiffies64},
};
use tracer_common::{counter, ArrivalKey, EVENT_F_EDGE};

use crate::common::{
    all_peers, config, count, follow_forwarded, peer_is_edge_v4, peer_is_edge_v6, port_watched,
    record_arrival, ring_doorbell, EVENTS, SYN_CURSORS, SYN_LOG,
};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// A hook's view of the frame: its bytes between `data` and `data_end`.
pub trait Frame {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
}

impl Frame for aya_ebpf::programs::XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        aya_ebpf::programs::XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        aya_ebpf::programs::XdpContext::data_end(self)
    }
}

impl Frame for aya_ebpf::programs::TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        aya_ebpf::programs::TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        aya_ebpf::programs::TcContext::data_end(self)
    }
}

/// Bounds-checked pointer to `len` bytes at `offset` of the frame.
#[inline(always)]
pub fn bytes_at(ctx: &impl Frame, offset: usize, len: usize) -> Option<*const u8> {
    let start = ctx.data();
    if start + offset + len > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *const u8)
}

/// A 16-bit load from the packet, host order. Packet headers sit at any alignment; the
/// verifier allows misaligned packet loads where the CPU does (x86-64, arm64), and a
/// `read_unaligned` would be split into single-byte loads by the BPF backend.
#[inline(always)]
pub fn be16(p: *const u8) -> u16 {
    #[allow(clippy::cast_ptr_alignment)]
    u16::from_be(unsafe { *(p as *const u16) })
}

#[inline(always)]
pub fn load32(p: *const u8) -> u32 {
    #[allow(clippy::cast_ptr_alignment)]
    unsafe {
        *(p as *const u32)
    }
}

#[inline(always)]
pub fn try_arrival(ctx: &impl Frame) -> Option<()> {
    // Untagged IPv4 without options, the shape of nearly every frame: one bounds check covers
    // the Ethernet, IP and TCP headers, and a frame that is not a SYN leaves after a handful
    // of loads.
    if let Some(eth) = bytes_at(ctx, 0, ETH_HLEN + 40) {
        let ip = unsafe { eth.add(ETH_HLEN) };
        if be16(unsafe { eth.add(12) }) == ETH_P_IP && unsafe { *ip } == 0x45 {
            if !ipv4_whole_tcp(ip) {
                return None;
            }
            let tcp = unsafe { ip.add(20) };
            return segment(4, unsafe { ip.add(12) }, tcp, payload_v4(ip, 20, tcp));
        }
    }
    try_any_frame(ctx)
}

/// Does the IPv4 header at `ip` (20 readable bytes) carry TCP, unfragmented? Any fragment (MF
/// set or a non-zero offset) is not a SYN we can read whole.
#[inline(always)]
fn ipv4_whole_tcp(ip: *const u8) -> bool {
    let protocol = unsafe { *ip.add(9) };
    protocol == IPPROTO_TCP && be16(unsafe { ip.add(6) }) & 0x3fff == 0
}

/// Every other shape: VLAN tags, IPv4 options, IPv6, frames shorter than the fast path reads.
#[inline(always)]
fn try_any_frame(ctx: &impl Frame) -> Option<()> {
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

    let (family, src, tcp, payload) = parse_l3(ctx, ether_type, l3)?;
    segment(family, src, tcp, payload)
}

/// Payload bytes of an IPv4 segment: total length less the IP (`ihl` bytes) and TCP headers.
/// A GRO or GSO packet of 64 KiB and more has no total length (BIG TCP): it counts as payload.
#[inline(always)]
fn payload_v4(ip: *const u8, ihl: usize, tcp: *const u8) -> u32 {
    let total = u32::from(be16(unsafe { ip.add(2) }));
    if total == 0 {
        return 1;
    }
    let doff = u32::from(unsafe { *tcp.add(12) } >> 4) * 4;
    total.saturating_sub(ihl as u32 + doff)
}

/// Payload bytes of an IPv6 segment (no extension headers).
#[inline(always)]
fn payload_v6(ip: *const u8, tcp: *const u8) -> u32 {
    let len = u32::from(be16(unsafe { ip.add(4) }));
    if len == 0 {
        return 1;
    }
    let doff = u32::from(unsafe { *tcp.add(12) } >> 4) * 4;
    len.saturating_sub(doff)
}

/// Any frame's TCP segment: (family, source address followed by the destination, TCP header
/// with 20 readable bytes, flags, payload length). For the departure hook.
#[inline(always)]
pub fn parse_tcp(ctx: &impl Frame) -> Option<(u8, *const u8, *const u8, u8, u32)> {
    let eth = bytes_at(ctx, 0, ETH_HLEN)?;
    let ether_type = be16(unsafe { eth.add(12) });
    let (family, src, tcp, payload) = parse_l3(ctx, ether_type, ETH_HLEN)?;
    Some((family, src, tcp, unsafe { *tcp.add(13) }, payload))
}

/// The IP and TCP headers at `l3`: (family, source address, TCP header, payload length).
#[inline(always)]
fn parse_l3(
    ctx: &impl Frame,
    ether_type: u16,
    l3: usize,
) -> Option<(u8, *const u8, *const u8, u32)> {
    // (family, source address, TCP header)
    let (family, src, l4, ip, ihl) = match ether_type {
        ETH_P_IP => {
            let ip = bytes_at(ctx, l3, 20)?;
            let ver_ihl = unsafe { *ip };
            let ihl = usize::from(ver_ihl & 0x0f) * 4;
            if ver_ihl >> 4 != 4 || ihl < 20 || !ipv4_whole_tcp(ip) {
                return None;
            }
            (4u8, unsafe { ip.add(12) }, l3 + ihl, ip, ihl)
        }
        ETH_P_IPV6 => {
            let ip = bytes_at(ctx, l3, 40)?;
            // Extension headers (fragments included) are not followed: a SYN carries none.
            if unsafe { *ip } >> 4 != 6 || unsafe { *ip.add(6) } != IPPROTO_TCP {
                return None;
            }
            (6u8, unsafe { ip.add(8) }, l3 + 40, ip, 40)
        }
        _ => return None,
    };
    let tcp = bytes_at(ctx, l4, 20)?;
    let payload = if family == 4 {
        payload_v4(ip, ihl, tcp)
    } else {
        payload_v6(ip, tcp)
    };
    Some((family, src, tcp, payload))
}

/// A TCP segment arriving: a bare SYN goes to the SYN log, any other to the exchanges.
#[inline(always)]
fn segment(family: u8, src: *const u8, tcp: *const u8, payload: u32) -> Option<()> {
    let flags = unsafe { *tcp.add(13) };
    if flags & TCP_SYN == 0 {
        crate::exchange::inbound(family, src, tcp, flags, payload);
        return None;
    }
    syn(family, src, tcp)
}

/// The TCP header at `tcp` (20 readable bytes), the source address at `src` followed by the
/// destination (4 or 16 bytes each): a bare SYN to a watched port from a wanted peer is recorded.
#[inline(always)]
fn syn(family: u8, src: *const u8, tcp: *const u8) -> Option<()> {
    let flags = unsafe { *tcp.add(13) };
    if flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return None;
    }
    let dport = be16(unsafe { tcp.add(2) });
    if !port_watched(dport) {
        return None;
    }

    let edge = if family == 4 {
        peer_is_edge_v4(u32::from_be(load32(src)))
    } else {
        peer_is_edge_v6(src)
    };
    if !edge && !all_peers() {
        return None;
    }
    if follow_forwarded() {
        remember_arrival(family, src, tcp);
    }
    record_syn(family, src, tcp, flags, edge)
}

/// Remembers the SYN by its peer address and port, which DNAT leaves alone, so the tracepoints
/// can tell the forwarded connection's events in another namespace from that namespace's own.
#[inline(always)]
fn remember_arrival(family: u8, src: *const u8, tcp: *const u8) {
    let mut key = ArrivalKey {
        addr: [0; 16],
        port: be16(tcp),
        family: u16::from(family),
    };
    let words = key.addr.as_mut_ptr() as *mut u32;
    unsafe {
        *words = load32(src);
        if family == 6 {
            for i in 1..4 {
                *words.add(i) = load32(src.add(4 * i));
            }
        }
    }
    record_arrival(&key, u32::from_be(load32(unsafe { tcp.add(4) })));
}

/// Appends the SYN to this CPU's part of the SYN log, or counts it lost when that is full.
/// XDP runs with bottom halves off: nothing else writes this CPU's part meanwhile.
#[inline(always)]
fn record_syn(family: u8, src: *const u8, tcp: *const u8, flags: u8, edge: bool) -> Option<()> {
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let cursor = SYN_CURSORS.get_ptr_mut(cpu)?;
    let slots = config!(syn_slots_per_cpu);
    let written = unsafe { (*cursor).written };
    let read = unsafe { core::ptr::read_volatile(&(*cursor).read) };
    if written.wrapping_sub(read) >= u64::from(slots) {
        count(counter::LOST);
        return None;
    }
    let index = cpu
        .wrapping_mul(slots)
        .wrapping_add(written as u32 & slots.wrapping_sub(1));
    let r = SYN_LOG.get_ptr_mut(index)?;
    unsafe {
        // Order against the ring's events by the ring's producer position, not by a clock:
        // the precise clock costs ~30 ns on a kvm-clock VM, and a coarse one ties within a
        // tick (a client reusing its port would see its new SYN sorted before the old
        // connection's close). Jiffies only say when, for people.
        (*r).jiffies = bpf_jiffies64();
        (*r).ring_pos = EVENTS.query(u64::from(BPF_RB_PROD_POS));
        if family == 4 {
            // An IPv4 address is the first 4 bytes, zeros after: two 8-byte stores per address
            // (little-endian, so the loaded word lands in the first bytes).
            let peer = (*r).peer_addr.as_mut_ptr() as *mut u64;
            let local = (*r).local_addr.as_mut_ptr() as *mut u64;
            *peer = u64::from(load32(src));
            *peer.add(1) = 0;
            *local = u64::from(load32(src.add(4)));
            *local.add(1) = 0;
        } else {
            let peer = (*r).peer_addr.as_mut_ptr() as *mut u32;
            let local = (*r).local_addr.as_mut_ptr() as *mut u32;
            for i in 0..4 {
                *peer.add(i) = load32(src.add(4 * i));
                *local.add(i) = load32(src.add(16 + 4 * i));
            }
        }
        (*r).peer_port = be16(tcp);
        (*r).local_port = be16(tcp.add(2));
        (*r).seq = u32::from_be(load32(tcp.add(4)));
        (*r).family = family;
        (*r).tcp_flags = flags;
        (*r).flags = if edge { EVENT_F_EDGE as u16 } else { 0 };
        // The record is whole before the cursor says so (x86-64 keeps stores in order; the
        // fence keeps the compiler from moving them).
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::Release);
        core::ptr::write_volatile(&mut (*cursor).written, written.wrapping_add(1));
    }
    if written == read {
        ring_doorbell();
    }
    Some(())
}

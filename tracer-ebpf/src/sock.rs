//! How the origin's TCP stack answers: resets sent and received, handshakes completed,
//! connections closed, SYN-ACKs retransmitted.

use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use tracer_common::{
    Event, EventKind, SockTpLayout, EVENT_F_HAS_REASON, EVENT_F_HAS_SOCK, FIELD_ABSENT,
};

use crate::common::{
    config, emit, empty_event, field, in_watched_netns, peer_flags, port_watched, read_kernel,
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;
const TCP_LISTEN: i32 = 10;

/// Reads the split address fields: the `s*` side is the local socket, `d*` the peer.
#[inline(always)]
fn read_split(ctx: &TracePointContext, l: &SockTpLayout, ev: &mut Event) -> Option<()> {
    let family: u16 = field(ctx, l.family)?;
    ev.local_port = field(ctx, l.sport)?;
    ev.peer_port = field(ctx, l.dport)?;
    match family {
        AF_INET => {
            let s: [u8; 4] = field(ctx, l.saddr)?;
            let d: [u8; 4] = field(ctx, l.daddr)?;
            ev.family = 4;
            ev.local_addr[..4].copy_from_slice(&s);
            ev.peer_addr[..4].copy_from_slice(&d);
        }
        AF_INET6 => {
            ev.family = 6;
            ev.local_addr = field(ctx, l.saddr_v6)?;
            ev.peer_addr = field(ctx, l.daddr_v6)?;
        }
        _ => return None,
    }
    Some(())
}

/// Reads a 28-byte sockaddr_in/sockaddr_in6 field: (family 4|6, port host order, address).
#[inline(always)]
fn read_sockaddr(ctx: &TracePointContext, offset: u16) -> Option<(u32, u16, [u8; 16])> {
    let sa: [u8; 28] = field(ctx, offset)?;
    let family = u16::from_ne_bytes([sa[0], sa[1]]);
    let port = u16::from_be_bytes([sa[2], sa[3]]);
    let mut addr = [0u8; 16];
    match family {
        AF_INET => {
            addr[..4].copy_from_slice(&sa[4..8]);
            Some((4, port, addr))
        }
        AF_INET6 => {
            addr.copy_from_slice(&sa[8..24]);
            Some((6, port, addr))
        }
        _ => None,
    }
}

/// A dual-stack (`[::]`) socket reports IPv4 peers as v4-mapped IPv6 (::ffff:a.b.c.d); the
/// packets themselves are IPv4, so the event must be too.
#[inline(always)]
fn unmap_v4(ev: &mut Event) {
    let mapped = |a: &[u8; 16]| a[..10] == [0u8; 10] && a[10] == 0xff && a[11] == 0xff;
    if ev.family == 6 && mapped(&ev.peer_addr) && mapped(&ev.local_addr) {
        ev.family = 4;
        for i in 0..4 {
            ev.peer_addr[i] = ev.peer_addr[12 + i];
            ev.local_addr[i] = ev.local_addr[12 + i];
        }
        for i in 4..16 {
            ev.peer_addr[i] = 0;
            ev.local_addr[i] = 0;
        }
    }
}

/// Common tail: watched port, wanted peer, our namespace; then send.
#[inline(always)]
fn filter_and_emit(mut ev: Event, sk: u64, skb: u64) -> Option<()> {
    unmap_v4(&mut ev);
    if !port_watched(ev.local_port) {
        return None;
    }
    ev.flags |= peer_flags(ev.family, &ev.peer_addr)?;
    if !in_watched_netns(sk, skb) {
        return None;
    }
    if sk != 0 {
        ev.flags |= EVENT_F_HAS_SOCK;
    }
    emit(ev);
    Some(())
}

#[tracepoint]
pub fn tp_send_reset(ctx: TracePointContext) -> u32 {
    let _ = try_send_reset(&ctx);
    0
}

fn try_send_reset(ctx: &TracePointContext) -> Option<()> {
    let l = config!(send_reset);
    let sk: u64 = field(ctx, l.split.skaddr).unwrap_or(0);
    let skb: u64 = field(ctx, l.skbaddr).unwrap_or(0);
    let mut ev = empty_event(EventKind::ResetSent as u32);
    if l.sockaddr_saddr != FIELD_ABSENT {
        // Since 6.10: saddr is the origin's side even when replying to a packet without socket.
        let (family, local_port, local_addr) = read_sockaddr(ctx, l.sockaddr_saddr)?;
        let (_, peer_port, peer_addr) = read_sockaddr(ctx, l.sockaddr_daddr)?;
        ev.family = family;
        ev.local_port = local_port;
        ev.local_addr = local_addr;
        ev.peer_port = peer_port;
        ev.peer_addr = peer_addr;
    } else {
        read_split(ctx, &l.split, &mut ev)?;
    }
    ev.state = field::<i32>(ctx, l.state).unwrap_or(0) as u32;
    if let Some(reason) = field::<u32>(ctx, l.reason) {
        ev.reason = reason;
        ev.flags |= EVENT_F_HAS_REASON;
    }
    filter_and_emit(ev, sk, skb)
}

#[tracepoint]
pub fn tp_recv_reset(ctx: TracePointContext) -> u32 {
    let _ = try_receive_reset(&ctx);
    0
}

fn try_receive_reset(ctx: &TracePointContext) -> Option<()> {
    let l = config!(receive_reset);
    let sk: u64 = field(ctx, l.skaddr)?;
    let mut ev = empty_event(EventKind::ResetReceived as u32);
    read_split(ctx, &l, &mut ev)?;
    ev.aux = field::<u64>(ctx, l.sock_cookie).unwrap_or(0);
    filter_and_emit(ev, sk, 0)
}

#[tracepoint]
pub fn tp_set_state(ctx: TracePointContext) -> u32 {
    let _ = try_set_state(&ctx);
    0
}

/// Which state changes are reported: a passive open completing, and closes (not of listeners).
#[inline(always)]
fn state_change_kind(old: i32, new: i32) -> Option<EventKind> {
    if new == TCP_ESTABLISHED && old == TCP_SYN_RECV {
        Some(EventKind::Established)
    } else if new == TCP_CLOSE && old != TCP_LISTEN {
        Some(EventKind::Closed)
    } else {
        None
    }
}

/// The raw tracepoint gets `(sk, oldstate, newstate)` directly: no trace record is filled for
/// the ~10 state changes of every connection in every namespace, most of which leave at once.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn raw_set_state(ctx: RawTracePointContext) -> u32 {
    let _ = try_raw_set_state(&ctx);
    0
}

fn try_raw_set_state(ctx: &RawTracePointContext) -> Option<()> {
    let old = ctx.arg::<u64>(1) as i32;
    let new = ctx.arg::<u64>(2) as i32;
    let kind = state_change_kind(old, new)?;
    let sk: u64 = ctx.arg(0);
    let o = config!(sock);
    if read_kernel::<u16>(sk, o.protocol)? != IPPROTO_TCP {
        return None;
    }
    let local_port = u16::from_be(read_kernel(sk, o.sport)?);
    if !port_watched(local_port) {
        return None;
    }
    let mut ev = empty_event(kind as u32);
    ev.local_port = local_port;
    ev.peer_port = u16::from_be(read_kernel(sk, o.dport)?);
    match read_kernel::<u16>(sk, o.family)? {
        AF_INET => {
            ev.family = 4;
            let s: [u8; 4] = read_kernel(sk, o.rcv_saddr)?;
            let d: [u8; 4] = read_kernel(sk, o.daddr)?;
            ev.local_addr[..4].copy_from_slice(&s);
            ev.peer_addr[..4].copy_from_slice(&d);
        }
        AF_INET6 => {
            ev.family = 6;
            ev.local_addr = read_kernel(sk, o.v6_rcv_saddr)?;
            ev.peer_addr = read_kernel(sk, o.v6_daddr)?;
        }
        _ => return None,
    }
    ev.state = ((old as u32) << 8) | new as u32;
    filter_and_emit(ev, sk, 0)
}

fn try_set_state(ctx: &TracePointContext) -> Option<()> {
    let l = config!(set_state);
    let old: i32 = field(ctx, l.oldstate)?;
    let new: i32 = field(ctx, l.newstate)?;
    let kind = state_change_kind(old, new)?;
    if field::<u16>(ctx, l.protocol).unwrap_or(IPPROTO_TCP) != IPPROTO_TCP {
        return None;
    }
    let sk: u64 = field(ctx, l.skaddr)?;
    let mut ev = empty_event(kind as u32);
    read_split(ctx, &l, &mut ev)?;
    ev.state = ((old as u32) << 8) | new as u32;
    filter_and_emit(ev, sk, 0)
}

#[tracepoint]
pub fn tp_synack_rtx(ctx: TracePointContext) -> u32 {
    let _ = try_retransmit_synack(&ctx);
    0
}

fn try_retransmit_synack(ctx: &TracePointContext) -> Option<()> {
    let l = config!(retransmit_synack);
    let sk: u64 = field(ctx, l.skaddr)?;
    let mut ev = empty_event(EventKind::SynackRetransmit as u32);
    read_split(ctx, &l, &mut ev)?;
    filter_and_emit(ev, sk, 0)
}

//! How the origin's TCP stack answers: resets sent and received, handshakes completed,
//! connections closed, SYN-ACKs retransmitted.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::bpf_skc_to_tcp_sock,
    },
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use tracer_common::{
    Event, EventKind, SockTpLayout, CONFIG_F_NO_CLOSES, EVENT_F_EDGE, EVENT_F_HAS_REASON,
    EVENT_F_HAS_SOCK, FIELD_ABSENT,
};

use crate::common::{
    all_peers, attribution, classify_netns, config, emit, empty_event, field, follow_forwarded,
    listen_allowed, load, net_inum, net_of_sock, netns_filter, netns_of, peer_flags,
    peer_is_edge_v4, peer_is_edge_v6, port_watched, reserve_event,
};

pub(crate) const AF_INET: u16 = 2;
pub(crate) const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const TCP_ESTABLISHED: i32 = 1;
pub(crate) const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
pub(crate) const TCP_CLOSE: i32 = 7;
const TCP_LISTEN: i32 = 10;

/// Reads the split address fields: the `s*` side is the local socket, `d*` the peer.
#[inline(always)]
pub(crate) fn read_split(ctx: &TracePointContext, l: &SockTpLayout, ev: &mut Event) -> Option<()> {
    // Older kernels' tcp_event_sk_skb has no family: its IPv6 fields always hold the
    // addresses, IPv4 ones v4-mapped (TP_STORE_ADDRS), which unmap_v4 turns back.
    let family: u16 = if l.family == FIELD_ABSENT {
        AF_INET6
    } else {
        field(ctx, l.family)?
    };
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
fn read_sockaddr(ctx: &TracePointContext, offset: u16) -> Option<(u16, u16, [u8; 16])> {
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
pub(crate) fn unmap_v4(ev: &mut Event) {
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

/// Common tail: watched port, wanted peer, our namespace — or a connection the host forwarded
/// (see [`attribution`]); then send.
#[inline(always)]
fn filter_and_emit(mut ev: Event, sk: u64, skb: u64) -> Option<()> {
    unmap_v4(&mut ev);
    let watched = port_watched(ev.local_port);
    if !watched && !follow_forwarded() {
        return None;
    }
    ev.flags |= peer_flags(ev.family, &ev.peer_addr)?;
    let ns = netns_of(sk, skb);
    ev.flags |= attribution(watched, ns, ev.family, &ev.peer_addr, ev.peer_port, None)?;
    ev.netns = ns.inum;
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
    let mut ev = empty_event(EventKind::ResetSent as u16);
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
    let mut ev = empty_event(EventKind::ResetReceived as u16);
    read_split(ctx, &l, &mut ev)?;
    ev.aux = field::<u64>(ctx, l.sock_cookie).unwrap_or(0);
    filter_and_emit(ev, sk, 0)
}

#[tracepoint]
pub fn tp_set_state(ctx: TracePointContext) -> u32 {
    let _ = try_set_state(&ctx);
    0
}

/// Which state changes are reported: a passive open completing, and closes (not of listeners)
/// unless userspace does not want them.
#[inline(always)]
fn state_change_kind(old: i32, new: i32) -> Option<EventKind> {
    if new == TCP_ESTABLISHED && old == TCP_SYN_RECV {
        Some(EventKind::Established)
    } else if new == TCP_CLOSE && old != TCP_LISTEN && config!(flags) & CONFIG_F_NO_CLOSES == 0 {
        Some(EventKind::Closed)
    } else {
        None
    }
}

/// The BTF tracepoint gets `(sk, oldstate, newstate)` as typed pointers: no trace record is
/// filled for the ~10 state changes of every connection in every namespace (most leave at the
/// first compare), and the socket is read with plain loads the verifier checks against the
/// kernel's types instead of a helper call per field. This runs for every connection the host
/// makes or accepts, so its cost is the tracer's cost under load.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn btf_set_state(ctx: BtfTracePointContext) -> u32 {
    let _ = try_btf_set_state(&ctx);
    0
}

fn try_btf_set_state(ctx: &BtfTracePointContext) -> Option<()> {
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    let _ = crate::dial::btf_dial(ctx.arg(0), old, new);
    if listener_change(old, new) {
        return emit_listen_event(ctx.arg(0), old, new);
    }
    let kind = state_change_kind(old, new)?;
    emit_sock_event(ctx.arg(0), kind, ((old as u32) << 8) | new as u32)
}

/// A socket starts listening, or a listener closes. Not every change from LISTEN: a passive
/// open's child socket is cloned from its listener and goes LISTEN -> SYN_RECV, once per
/// connection accepted.
#[inline(always)]
fn listener_change(old: i32, new: i32) -> bool {
    new == TCP_LISTEN || (old == TCP_LISTEN && new == TCP_CLOSE)
}

/// A listener on a watched port opened or closed, in any namespace (rare: no peer filter),
/// with the task doing it — the change journal's listener changes, to the moment.
#[inline(always)]
fn emit_listen_event(sk: *mut c_void, old: i32, new: i32) -> Option<()> {
    let tp = unsafe { bpf_skc_to_tcp_sock(sk) }.cast::<u8>().cast_const();
    if tp.is_null() {
        return None;
    }
    let o = config!(sock);
    let mut ev = empty_event(EventKind::Listen as u16);
    ev.local_port = u16::from_be(unsafe { load::<u16>(tp, o.sport) });
    if !port_watched(ev.local_port) {
        return None;
    }
    match unsafe { load::<u16>(tp, o.family) } {
        AF_INET => {
            ev.family = 4;
            let a: u32 = unsafe { load(tp, o.rcv_saddr) };
            ev.local_addr[..4].copy_from_slice(&a.to_ne_bytes());
        }
        AF_INET6 => {
            ev.family = 6;
            ev.local_addr = unsafe { load(tp, o.v6_rcv_saddr) };
        }
        _ => return None,
    }
    if netns_filter() {
        let sk_net = config!(kernel.sk_net);
        let net = unsafe { load::<*const u8>(tp, sk_net) };
        ev.netns = net_inum(net).unwrap_or(0);
        if !listen_allowed(net as u64, ev.netns) {
            return None;
        }
    } else {
        ev.netns = config!(netns_inum);
    }
    listen_event_tail(ev, old, new)
}

/// The task and the states, then send: shared by both tracepoint flavours.
#[inline(always)]
fn listen_event_tail(mut ev: Event, old: i32, new: i32) -> Option<()> {
    ev.state = ((old as u32) << 8) | new as u32;
    ev.aux = bpf_get_current_pid_tgid();
    if let Ok(comm) = bpf_get_current_comm() {
        ev.peer_addr = comm;
    }
    emit(ev);
    Some(())
}

/// Sends `kind` for a socket given as a BTF-typed pointer: watched port, wanted peer, our
/// namespace. Addresses travel as 8-byte words and the event is written straight into its ring
/// entry: this runs once per connection the host accepts, so every load and store shows.
#[inline(always)]
fn emit_sock_event(sk: *mut c_void, kind: EventKind, state: u32) -> Option<()> {
    // NULL unless a full TCP socket; typed as `tcp_sock`, so `inet_sport` (past `struct sock`)
    // is in bounds for the verifier.
    let tp = unsafe { bpf_skc_to_tcp_sock(sk) }.cast::<u8>().cast_const();
    if tp.is_null() {
        return None;
    }
    let o = config!(sock);
    let local_port = u16::from_be(unsafe { load::<u16>(tp, o.sport) });
    let watched = port_watched(local_port);
    if !watched && !follow_forwarded() {
        return None;
    }
    // (family, peer, local): an IPv4 address is its 4 bytes then zeros (little-endian words).
    let (family, peer, local) = match unsafe { load::<u16>(tp, o.family) } {
        AF_INET => (
            4u16,
            [u64::from(unsafe { load::<u32>(tp, o.daddr) }), 0],
            [u64::from(unsafe { load::<u32>(tp, o.rcv_saddr) }), 0],
        ),
        AF_INET6 => {
            let peer: [u64; 2] = unsafe { load(tp, o.v6_daddr) };
            let local: [u64; 2] = unsafe { load(tp, o.v6_rcv_saddr) };
            // A dual-stack (`[::]`) socket reports IPv4 peers as ::ffff:a.b.c.d; the packets
            // are IPv4, so the event is too. Bytes 8..12 = 00 00 ff ff.
            let mapped = |a: &[u64; 2]| a[0] == 0 && a[1] as u32 == 0xffff_0000;
            if mapped(&peer) && mapped(&local) {
                (4, [peer[1] >> 32, 0], [local[1] >> 32, 0])
            } else {
                (6, peer, local)
            }
        }
        _ => return None,
    };
    let edge = if family == 4 {
        peer_is_edge_v4(u32::from_be(peer[0] as u32))
    } else {
        peer_is_edge_v6(peer.as_ptr().cast::<u8>())
    };
    if !edge && !all_peers() {
        return None;
    }
    let ns = classify_netns(if netns_filter() {
        let sk_net = config!(kernel.sk_net);
        net_inum(unsafe { load::<*const u8>(tp, sk_net) })
    } else {
        None
    });
    let peer_port = u16::from_be(unsafe { load::<u16>(tp, o.dport) });
    let forwarded = if watched && ns.own {
        0
    } else {
        let peer_bytes: [u8; 16] = unsafe { core::mem::transmute(peer) };
        attribution(watched, ns, family, &peer_bytes, peer_port, None)?
    };
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    let mut entry = reserve_event()?;
    let ev = entry.as_mut_ptr();
    unsafe {
        (*ev).ts_ns = ts_ns;
        (*ev).kind = kind as u16;
        (*ev).family = family;
        (*ev).netns = ns.inum;
        let p = (*ev).peer_addr.as_mut_ptr().cast::<[u64; 2]>();
        let l = (*ev).local_addr.as_mut_ptr().cast::<[u64; 2]>();
        *p = peer;
        *l = local;
        (*ev).peer_port = peer_port;
        (*ev).local_port = local_port;
        (*ev).flags = EVENT_F_HAS_SOCK | forwarded | if edge { EVENT_F_EDGE } else { 0 };
        (*ev).reason = 0;
        (*ev).state = state;
        (*ev).tcp_flags = 0;
        (*ev).seq = 0;
        (*ev).aux = 0;
    }
    entry.submit(0);
    Some(())
}

fn try_set_state(ctx: &TracePointContext) -> Option<()> {
    let l = config!(set_state);
    let old: i32 = field(ctx, l.oldstate)?;
    let new: i32 = field(ctx, l.newstate)?;
    if field::<u16>(ctx, l.protocol).unwrap_or(IPPROTO_TCP) == IPPROTO_TCP {
        if let Some(sk) = field::<u64>(ctx, l.skaddr) {
            let _ = crate::dial::classic_dial(ctx, &l, sk, old, new);
        }
    }
    let listen = listener_change(old, new);
    let kind = if listen {
        EventKind::Listen
    } else {
        state_change_kind(old, new)?
    };
    if field::<u16>(ctx, l.protocol).unwrap_or(IPPROTO_TCP) != IPPROTO_TCP {
        return None;
    }
    let sk: u64 = field(ctx, l.skaddr)?;
    if listen {
        let mut ev = empty_event(kind as u16);
        read_split(ctx, &l, &mut ev)?;
        unmap_v4(&mut ev);
        if !port_watched(ev.local_port) {
            return None;
        }
        ev.peer_addr = [0; 16];
        ev.peer_port = 0;
        ev.netns = netns_of(sk, 0).inum;
        if netns_filter() && !listen_allowed(net_of_sock(sk), ev.netns) {
            return None;
        }
        return listen_event_tail(ev, old, new);
    }
    let mut ev = empty_event(kind as u16);
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
    let mut ev = empty_event(EventKind::SynackRetransmit as u16);
    read_split(ctx, &l, &mut ev)?;
    filter_and_emit(ev, sk, 0)
}

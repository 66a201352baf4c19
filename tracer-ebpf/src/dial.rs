//! Outgoing connections of the processes userspace names in `DIALERS` (a Cloudflare Tunnel's
//! `cloudflared`): each connect, its answer, and a connection ending with an error. A tunnel
//! origin receives no edge SYN: what fails is `cloudflared`'s own connection to the service
//! (or to the edge), and the kernel sees it here, on `sock:inet_sock_set_state`.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated::bpf_skc_to_tcp_sock},
    programs::TracePointContext,
};
use tracer_common::{
    dial_target, Event, EventKind, SockTpLayout, DIAL_SYN_DROPPED, EVENT_F_HAS_REASON,
    EVENT_F_HAS_SOCK, FIELD_ABSENT,
};

use crate::{
    common::{
        config, emit, empty_event, load, net_inum, netns_of, read_kernel, DIALERS, DIALERS_ON,
        DIALS, DIAL_TARGETS,
    },
    sock::{read_split, unmap_v4, AF_INET, AF_INET6, TCP_CLOSE, TCP_SYN_SENT},
};

/// The connecting task of a followed socket whose state changes so: a connect by a dialler
/// (followed from now on), the connect's answer, or the close. `None` for any other socket or
/// change, after one array load while no dialler is named.
#[inline(always)]
fn dialler(sk: u64, old: i32, new: i32) -> Option<u64> {
    // The states first (registers), then the count (an inlined array load): most of the ~10
    // changes of every connection leave at the first compare.
    if new != TCP_SYN_SENT && old != TCP_SYN_SENT && new != TCP_CLOSE {
        return None;
    }
    if *DIALERS_ON.get(0)? == 0 {
        return None;
    }
    if new == TCP_SYN_SENT {
        // connect() runs in the caller's context: the current task is the dialler.
        let pid_tgid = bpf_get_current_pid_tgid();
        unsafe { DIALERS.get((pid_tgid >> 32) as u32) }?;
        DIALS.insert(sk, pid_tgid, 0).ok()?;
        return Some(pid_tgid);
    }
    let pid_tgid = *unsafe { DIALS.get(sk) }?;
    if new == TCP_CLOSE {
        let _ = DIALS.remove(sk);
    }
    Some(pid_tgid)
}

/// The socket's error as it closes (`ECONNREFUSED` for a reset answer, `ETIMEDOUT`, an ICMP
/// error; 0 when the process closed it), where BTF gave its place.
#[inline(always)]
fn socket_error(sk: u64, new: i32) -> Option<u32> {
    if new != TCP_CLOSE {
        return None;
    }
    let at = config!(sk_err);
    if at == FIELD_ABSENT {
        return None;
    }
    read_kernel::<i32>(sk, at).map(|e| e as u32)
}

/// Sends the step unless it is an uneventful close: a connection that was answered and then
/// ended without an error is the normal case and says nothing.
#[inline(always)]
fn send(mut ev: Event, sk: u64, old: i32, new: i32, pid_tgid: u64) -> Option<()> {
    if new == TCP_SYN_SENT {
        // Remembered by where it goes: a SYN dropped after leaving its socket is matched so.
        let key = dial_target(ev.family, &ev.peer_addr, ev.peer_port);
        let _ = DIAL_TARGETS.insert(key, pid_tgid, 0);
    }
    let err = socket_error(sk, new);
    if new == TCP_CLOSE && old != TCP_SYN_SENT && err.unwrap_or(0) == 0 {
        return None;
    }
    if let Some(e) = err {
        ev.reason = e;
        ev.flags |= EVENT_F_HAS_REASON;
    }
    ev.flags |= EVENT_F_HAS_SOCK;
    ev.state = ((old as u32) << 8) | new as u32;
    ev.aux = pid_tgid;
    emit(ev);
    Some(())
}

/// BTF flavour: the socket read with typed loads.
#[inline(always)]
pub fn btf_dial(sk: *mut c_void, old: i32, new: i32) -> Option<()> {
    let pid_tgid = dialler(sk as u64, old, new)?;
    let tp = unsafe { bpf_skc_to_tcp_sock(sk) }.cast::<u8>().cast_const();
    if tp.is_null() {
        return None;
    }
    let o = config!(sock);
    let mut ev = empty_event(EventKind::Dial as u16);
    ev.local_port = u16::from_be(unsafe { load::<u16>(tp, o.sport) });
    ev.peer_port = u16::from_be(unsafe { load::<u16>(tp, o.dport) });
    match unsafe { load::<u16>(tp, o.family) } {
        AF_INET => {
            ev.family = 4;
            let l: u32 = unsafe { load(tp, o.rcv_saddr) };
            let p: u32 = unsafe { load(tp, o.daddr) };
            ev.local_addr[..4].copy_from_slice(&l.to_ne_bytes());
            ev.peer_addr[..4].copy_from_slice(&p.to_ne_bytes());
        }
        AF_INET6 => {
            ev.family = 6;
            ev.local_addr = unsafe { load(tp, o.v6_rcv_saddr) };
            ev.peer_addr = unsafe { load(tp, o.v6_daddr) };
        }
        _ => return None,
    }
    unmap_v4(&mut ev);
    let sk_net = config!(kernel.sk_net);
    ev.netns = net_inum(unsafe { load::<*const u8>(tp, sk_net) }).unwrap_or(0);
    send(ev, sk as u64, old, new, pid_tgid)
}

/// Classic flavour: the addresses from the trace record.
#[inline(always)]
pub fn classic_dial(
    ctx: &TracePointContext,
    l: &SockTpLayout,
    sk: u64,
    old: i32,
    new: i32,
) -> Option<()> {
    let pid_tgid = dialler(sk, old, new)?;
    let mut ev = empty_event(EventKind::Dial as u16);
    read_split(ctx, l, &mut ev)?;
    unmap_v4(&mut ev);
    ev.netns = netns_of(sk, 0).inum;
    send(ev, sk, old, new, pid_tgid)
}

/// A bare SYN the kernel dropped (`skb:kfree_skb`), read from the packet: `dropped` holds its
/// family and addresses as read (the source in `peer_addr`, the destination in `local_addr`),
/// `sport`/`dport` its ports. When a followed process connected to that address and port, the
/// SYN is taken for one of its dials — matched by where it goes, not by its socket: on the
/// output path the packet holds one, past loopback (the receiving side's input path) none,
/// and one lookup serves both in the little stack the drop hook has left. `dropped` becomes
/// the `Dial` record, for the caller to send (one event on the stack); otherwise it is left
/// as it was and the answer is `None`. One array load while no dialler is named.
#[inline(always)]
pub fn dropped_syn(
    dropped: &mut Event,
    sport: u16,
    dport: u16,
    reason: Option<u32>,
    netns: impl Fn() -> u32,
) -> Option<()> {
    if *DIALERS_ON.get(0)? == 0 {
        return None;
    }
    let key = dial_target(dropped.family, &dropped.local_addr, dport);
    let pid_tgid = *unsafe { DIAL_TARGETS.get(key) }?;
    // Swapped eight bytes at a time through registers: a 16-byte temporary would not fit the
    // stack left.
    for half in [0, 8] {
        let p = u64::from_ne_bytes(dropped.peer_addr[half..half + 8].try_into().ok()?);
        let l = u64::from_ne_bytes(dropped.local_addr[half..half + 8].try_into().ok()?);
        dropped.peer_addr[half..half + 8].copy_from_slice(&l.to_ne_bytes());
        dropped.local_addr[half..half + 8].copy_from_slice(&p.to_ne_bytes());
    }
    dropped.kind = EventKind::Dial as u16;
    dropped.peer_port = dport;
    dropped.local_port = sport;
    if let Some(r) = reason {
        dropped.reason = r;
        dropped.flags |= EVENT_F_HAS_REASON;
    }
    dropped.state = ((TCP_SYN_SENT as u32) << 8) | DIAL_SYN_DROPPED;
    dropped.aux = pid_tgid;
    dropped.netns = netns();
    Some(())
}

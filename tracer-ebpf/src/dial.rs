//! Outgoing connections of the processes userspace names in `DIALERS` (a Cloudflare Tunnel's
//! `cloudflared`): each connect, its answer, and a connection ending with an error. A tunnel
//! origin receives no edge SYN: what fails is `cloudflared`'s own connection to the service
//! (or to the edge), and the kernel sees it here, on `sock:inet_sock_set_state`.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated::bpf_skc_to_tcp_sock},
    programs::TracePointContext,
};
use tracer_common::{EventKind, SockTpLayout, EVENT_F_HAS_REASON, EVENT_F_HAS_SOCK, FIELD_ABSENT};

use crate::{
    common::{
        config, emit, empty_event, load, net_inum, netns_of, read_kernel, DIALERS, DIALERS_ON,
        DIALS,
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
fn send(mut ev: tracer_common::Event, sk: u64, old: i32, new: i32, pid_tgid: u64) -> Option<()> {
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

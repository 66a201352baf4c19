//! `skb:kfree_skb`: TCP packets of watched flows that the kernel dropped, with its reason.
//! The flow is read from the dropped packet's own headers, since a SYN to a closed port or one
//! dropped by netfilter has no socket.

use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use tracer_common::{
    Event, EventKind, CONFIG_F_ATTEMPT_DROPS, DROP_REASON_WORDS, EVENT_F_EDGE, EVENT_F_EGRESS,
    EVENT_F_HAS_REASON, EVENT_F_HAS_TCP,
};

use crate::common::{
    attribution, classify_netns, config, count_refused, emit_from, field, follow_forwarded, load,
    net_inum, netns_filter, netns_of, peer_flags, port_watched, read_kernel, scratch_event, Netns,
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
/// `sk_buff.network_header`/`transport_header` value meaning "not set".
const HEADER_UNSET: u16 = 0xffff;

/// The dropped packet's place in memory: what both programs read before the packet itself.
struct SkbView {
    /// ntohs(skb->protocol)
    protocol: u16,
    head: u64,
    network: u16,
    transport: u16,
}

/// Teardown reasons are never reported in attempt mode: checked before anything else because
/// at one per connection a purged queue is this hook's most frequent call under load.
#[inline(always)]
fn is_teardown(reason: u32) -> Option<bool> {
    if config!(flags) & CONFIG_F_ATTEMPT_DROPS == 0 {
        return Some(false);
    }
    reason_set!(teardown_reasons, reason)
}

/// Is `reason` in the CONFIG bitmap `$bits` (`None` past it: subsystem reasons)? One constant
/// index per word: LLVM may bounds-check a copy of a computed index and then use the
/// original, whose bounds the verifier then does not know.
macro_rules! reason_set {
    ($bits:ident, $reason:expr) => {{
        let reason: u32 = $reason;
        let bit = 1u64 << (reason & 63);
        let word = match reason >> 6 {
            0 => config!($bits[0]),
            1 => config!($bits[1]),
            2 => config!($bits[2]),
            3 => config!($bits[3]),
            4 => config!($bits[4]),
            5 => config!($bits[5]),
            6 => config!($bits[6]),
            7 => config!($bits[7]),
            _ => return None,
        };
        Some(word & bit != 0)
    }};
}
use reason_set;

const _: () = assert!(DROP_REASON_WORDS == 8, "reason_set! reads eight words");

/// The BTF tracepoint gets `(skb, location, reason, ...)` directly: no trace record is filled
/// for every packet freed with a reason in every namespace, and the `sk_buff` is read with
/// plain loads the verifier checks (the packet bytes still need the read helper).
#[btf_tracepoint(function = "kfree_skb")]
pub fn btf_kfree_skb(ctx: BtfTracePointContext) -> u32 {
    let _ = try_btf_kfree_skb(&ctx);
    0
}

fn try_btf_kfree_skb(ctx: &BtfTracePointContext) -> Option<()> {
    let reason: u32 = ctx.arg(2);
    if is_teardown(reason) == Some(true) {
        return None;
    }
    let skb: *const u8 = ctx.arg(0);
    let k = config!(kernel);
    let view = SkbView {
        protocol: u16::from_be(unsafe { load::<u16>(skb, k.skb_protocol) }),
        head: unsafe { load::<u64>(skb, k.skb_head) },
        network: unsafe { load::<u16>(skb, k.skb_network_header) },
        transport: unsafe { load::<u16>(skb, k.skb_transport_header) },
    };
    let location: u64 = ctx.arg(1);
    drop_event(&view, Some(reason), location, || skb_netns(skb))
}

/// [`netns_of`] for a BTF-typed `sk_buff`: its socket's namespace, else its device's.
#[inline(always)]
fn skb_netns(skb: *const u8) -> Netns {
    if !netns_filter() {
        return classify_netns(None);
    }
    let k = config!(kernel);
    let sk = unsafe { load::<*const u8>(skb, k.skb_sk) };
    let net = if !sk.is_null() {
        unsafe { load::<*const u8>(sk, k.sk_net) }
    } else {
        let dev = unsafe { load::<*const u8>(skb, k.skb_dev) };
        if dev.is_null() {
            core::ptr::null()
        } else {
            unsafe { load::<*const u8>(dev, k.dev_nd_net) }
        }
    };
    classify_netns(net_inum(net))
}

#[tracepoint]
pub fn tp_kfree_skb(ctx: TracePointContext) -> u32 {
    let _ = try_kfree_skb(&ctx);
    0
}

fn try_kfree_skb(ctx: &TracePointContext) -> Option<()> {
    let reason = field::<u32>(ctx, config!(kfree_skb.reason));
    if reason.and_then(is_teardown) == Some(true) {
        return None;
    }
    let skb: u64 = field(ctx, config!(kfree_skb.skbaddr))?;
    let view = SkbView {
        // The tracepoint stores ntohs(skb->protocol).
        protocol: field(ctx, config!(kfree_skb.protocol))?,
        head: read_kernel(skb, config!(kernel.skb_head))?,
        network: read_kernel(skb, config!(kernel.skb_network_header))?,
        transport: read_kernel(skb, config!(kernel.skb_transport_header)).unwrap_or(HEADER_UNSET),
    };
    let location = field::<u64>(ctx, config!(kfree_skb.location)).unwrap_or(0);
    drop_event(&view, reason, location, || netns_of(0, skb))
}

/// Reads the dropped packet's headers and sends the drop if it is a watched flow's, or as its
/// `Dial` record a followed process's SYN (see [`crate::dial::dropped_syn`]). The event is
/// built in this CPU's scratch slot: the stack has no room for it beside the packet's headers.
#[inline(always)]
fn drop_event(
    view: &SkbView,
    reason: Option<u32>,
    location: u64,
    netns: impl Fn() -> Netns,
) -> Option<()> {
    if view.protocol != ETH_P_IP && view.protocol != ETH_P_IPV6 {
        return None;
    }
    let (head, network, transport) = (view.head, view.network, view.transport);
    if head == 0 || network == HEADER_UNSET {
        return None;
    }

    let event = scratch_event(EventKind::Drop as u16)?;
    let ip = head + u64::from(network);
    let first: u8 = read_kernel(ip, 0)?;
    let tcp_offset = match first >> 4 {
        4 => {
            let hdr: [u8; 20] = read_kernel(ip, 0)?;
            if hdr[9] != IPPROTO_TCP || u16::from_be_bytes([hdr[6], hdr[7]]) & 0x1fff != 0 {
                return None;
            }
            event.family = 4;
            event.peer_addr[..4].copy_from_slice(&hdr[12..16]);
            event.local_addr[..4].copy_from_slice(&hdr[16..20]);
            u64::from(hdr[0] & 0x0f) * 4
        }
        6 => {
            let hdr: [u8; 40] = read_kernel(ip, 0)?;
            if hdr[6] != IPPROTO_TCP {
                return None;
            }
            event.family = 6;
            event.peer_addr.copy_from_slice(&hdr[8..24]);
            event.local_addr.copy_from_slice(&hdr[24..40]);
            40
        }
        _ => return None,
    };
    let tcp_at = if transport != HEADER_UNSET && transport > network {
        head + u64::from(transport)
    } else {
        ip + tcp_offset
    };
    let tcp: [u8; 14] = read_kernel(tcp_at, 0)?;
    if !wanted(reason, tcp[13]) {
        return None;
    }
    let sport = u16::from_be_bytes([tcp[0], tcp[1]]);
    let dport = u16::from_be_bytes([tcp[2], tcp[3]]);
    let bare_syn = tcp[13] & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if bare_syn && crate::dial::dropped_syn(event, sport, dport, reason, || netns().inum).is_some()
    {
        emit_from(event);
        return Some(());
    }

    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    // Incoming packets are addressed to a watched port; outgoing ones come from it. A packet
    // of a forwarded connection may have neither (DNAT rewrote the port): then the side whose
    // address and port arrived at the interface is the peer.
    let (in_watched, out_watched) = (port_watched(dport), port_watched(sport));
    if !in_watched && !out_watched && !follow_forwarded() {
        return None;
    }
    let incoming = if in_watched || !out_watched {
        orient(event, sport, dport, false);
        event_attribution(event, in_watched, bare_syn.then_some(seq), &netns)
    } else {
        None
    };
    if incoming.is_none() {
        if in_watched && !follow_forwarded() {
            return None;
        }
        orient(event, sport, dport, true);
        event_attribution(event, out_watched, None, &netns)?;
    }
    // Counted before the ring is asked for space: under a flood that fills it, the number of
    // refused edge SYNs stays exact.
    if bare_syn
        && incoming.is_some()
        && event.flags & EVENT_F_EDGE != 0
        && reason.is_some_and(|r| r != 0 && r == config!(no_socket_reason))
    {
        count_refused(dport);
    }
    event.seq = seq;
    event.tcp_flags = u32::from(tcp[13]);
    event.flags |= EVENT_F_HAS_TCP;
    if let Some(reason) = reason {
        event.reason = reason;
        event.flags |= EVENT_F_HAS_REASON;
    }
    event.aux = location;
    emit_from(event);
    Some(())
}

/// Sets the event's ports and direction: as received (`egress` false: the source is the peer)
/// or as sent by the origin (the destination is the peer; addresses are swapped once).
#[inline(always)]
fn orient(event: &mut Event, sport: u16, dport: u16, egress: bool) {
    if egress {
        if event.flags & EVENT_F_EGRESS == 0 {
            core::mem::swap(&mut event.peer_addr, &mut event.local_addr);
            event.flags |= EVENT_F_EGRESS;
        }
        event.peer_port = dport;
        event.local_port = sport;
    } else {
        event.peer_port = sport;
        event.local_port = dport;
    }
}

/// The peer is wanted and the event belongs to the tracer (see [`attribution`]): sets the
/// edge, forwarded and namespace marks. The namespace is read only once a peer is wanted.
#[inline(always)]
fn event_attribution(
    event: &mut Event,
    watched_port: bool,
    syn_seq: Option<u32>,
    netns: &impl Fn() -> Netns,
) -> Option<()> {
    let edge = peer_flags(event.family, &event.peer_addr)?;
    let ns = netns();
    let forwarded = attribution(
        watched_port,
        ns,
        event.family,
        &event.peer_addr,
        event.peer_port,
        syn_seq,
    )?;
    event.flags |= edge | forwarded;
    event.netns = ns.inum;
    Some(())
}

/// Everything, or (`CONFIG_F_ATTEMPT_DROPS`) what can decide a connection attempt: a bare SYN,
/// or another packet dropped for one of the reasons userspace listed.
#[inline(always)]
fn wanted(reason: Option<u32>, tcp_flags: u8) -> bool {
    if config!(flags) & CONFIG_F_ATTEMPT_DROPS == 0 || tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        return true;
    }
    let Some(reason) = reason else {
        return true;
    };
    attempt_reason(reason) == Some(true)
}

#[inline(always)]
fn attempt_reason(reason: u32) -> Option<bool> {
    reason_set!(drop_reasons, reason)
}

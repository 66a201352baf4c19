//! `skb:kfree_skb`: TCP packets of watched flows that the kernel dropped, with its reason.
//! The flow is read from the dropped packet's own headers, since a SYN to a closed port or one
//! dropped by netfilter has no socket.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tracer_common::{
    Event, EventKind, CONFIG_F_ATTEMPT_DROPS, DROP_REASON_WORDS, EVENT_F_EGRESS,
    EVENT_F_HAS_REASON, EVENT_F_HAS_TCP,
};

use crate::common::{
    config, emit, empty_event, field, in_watched_netns, peer_flags, port_watched, read_kernel,
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
/// `sk_buff.network_header`/`transport_header` value meaning "not set".
const HEADER_UNSET: u16 = 0xffff;

#[tracepoint]
pub fn tp_kfree_skb(ctx: TracePointContext) -> u32 {
    let _ = try_kfree_skb(&ctx);
    0
}

fn try_kfree_skb(ctx: &TracePointContext) -> Option<()> {
    if config!(flags) & CONFIG_F_ATTEMPT_DROPS != 0 {
        // Before anything else: at one per connection, a purged queue is this program's most
        // frequent call under load.
        let reason = field::<u32>(ctx, config!(kfree_skb.reason))?;
        let word = (reason >> 6) as usize;
        if word < DROP_REASON_WORDS
            && config!(teardown_reasons[word]) & (1u64 << (reason & 63)) != 0
        {
            return None;
        }
    }
    // The tracepoint stores ntohs(skb->protocol).
    let protocol: u16 = field(ctx, config!(kfree_skb.protocol))?;
    if protocol != ETH_P_IP && protocol != ETH_P_IPV6 {
        return None;
    }
    let skb: u64 = field(ctx, config!(kfree_skb.skbaddr))?;
    let head: u64 = read_kernel(skb, config!(kernel.skb_head))?;
    let network: u16 = read_kernel(skb, config!(kernel.skb_network_header))?;
    if head == 0 || network == HEADER_UNSET {
        return None;
    }
    let transport: u16 =
        read_kernel(skb, config!(kernel.skb_transport_header)).unwrap_or(HEADER_UNSET);

    let mut event = empty_event(EventKind::Drop as u32);
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
    if !wanted(ctx, tcp[13]) {
        return None;
    }
    let sport = u16::from_be_bytes([tcp[0], tcp[1]]);
    let dport = u16::from_be_bytes([tcp[2], tcp[3]]);

    // Incoming packets are addressed to a watched port; outgoing ones come from it.
    if port_watched(dport) {
        event.peer_port = sport;
        event.local_port = dport;
    } else if port_watched(sport) {
        core::mem::swap(&mut event.peer_addr, &mut event.local_addr);
        event.peer_port = dport;
        event.local_port = sport;
        event.flags |= EVENT_F_EGRESS;
    } else {
        return None;
    }
    event.flags |= peer_flags(event.family, &event.peer_addr)?;
    if !in_watched_netns(0, skb) {
        return None;
    }
    finish(ctx, &mut event, &tcp);
    emit(event);
    Some(())
}

/// Everything, or (`CONFIG_F_ATTEMPT_DROPS`) what can decide a connection attempt: a bare SYN,
/// or another packet dropped for one of the reasons userspace listed.
#[inline(always)]
fn wanted(ctx: &TracePointContext, tcp_flags: u8) -> bool {
    if config!(flags) & CONFIG_F_ATTEMPT_DROPS == 0 || tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        return true;
    }
    let Some(reason) = field::<u32>(ctx, config!(kfree_skb.reason)) else {
        return true;
    };
    let word = (reason >> 6) as usize;
    if word >= DROP_REASON_WORDS {
        return false;
    }
    config!(drop_reasons[word]) & (1u64 << (reason & 63)) != 0
}

#[inline(always)]
fn finish(ctx: &TracePointContext, event: &mut Event, tcp: &[u8; 14]) {
    event.seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    event.tcp_flags = u32::from(tcp[13]);
    event.flags |= EVENT_F_HAS_TCP;
    if let Some(reason) = field::<u32>(ctx, config!(kfree_skb.reason)) {
        event.reason = reason;
        event.flags |= EVENT_F_HAS_REASON;
    }
    event.aux = field::<u64>(ctx, config!(kfree_skb.location)).unwrap_or(0);
}

//! Edge exchanges, timed without reading a byte of payload: when a request arrives (edge
//! payload on a connection with none pending), when the first response byte leaves, when the
//! origin closes the connection and whether the edge then sends on it anyway. The request is
//! kept in the flow's map entry; the response sends one event carrying when the request
//! began, and only rare transitions (a close after idle, a request after the close, a reset
//! with a request waiting) send their own. Userspace reads requests still waiting from the
//! map, the whole of it only when the count of requests begun has moved. Per packet the work
//! is a port and range test and, on edge connections, one map lookup. On a busy host
//! userspace narrows the followed connections to a hash sample (`EXCHANGE_SAMPLE`): the rest
//! cost the hash, no table access. What it all means (slow, idle, a keep-alive race) is
//! decided in userspace.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, TC_ACT_UNSPEC},
    helpers::{bpf_jiffies64, bpf_ktime_get_ns},
    macros::{classifier, map},
    maps::Array,
    programs::TcContext,
};
use tracer_common::{
    counter, in_exchange_sample, slot_bucket, ArrivalKey, Event, EventKind, ExchangeSample,
    FlowSlot, FlowState, EVENT_F_EDGE, EVENT_F_EGRESS, EVENT_F_PENDING, EXCHANGE_FLOWS,
    FLOW_F_AFTER_CLOSE, FLOW_F_EDGE_CLOSED, FLOW_F_ORIGIN_CLOSED, PHASE_REQUEST, PHASE_RESPONSE,
};

use crate::{
    arrival::{be16, bytes_at, load32, parse_tcp},
    common::{
        count, empty_event, key_words, peer_is_edge_v4, peer_is_edge_v6, port_watched,
        reserve_event, same_key,
    },
};

pub const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;

/// Edge connections being followed, by the peer's address and port: a direct-mapped table
/// in buckets of two slots. An LRU hash cost every new connection an allocation and its
/// list's lock; here a connection costs a hash and five stores. A new connection displaces
/// a closed or free slot of its bucket first, else the older: under more live edge
/// connections than slots some go unfollowed, as the LRU's evictions did. Userspace reads
/// waiting requests through mmap. Two CPUs writing one slot at once (two new connections in
/// one bucket within nanoseconds) can blur one exchange; nothing depends on it.
#[map]
pub static FLOWS: Array<FlowSlot> = Array::with_max_entries(EXCHANGE_FLOWS, BPF_F_MMAPABLE);

/// `[0]`: which edge connections are followed ([`ExchangeSample`]); userspace samples them
/// when edge requests come faster than the host should pay to time each one.
#[map]
pub static EXCHANGE_SAMPLE: Array<ExchangeSample> = Array::with_max_entries(1, 0);

/// The sample in force.
#[inline(always)]
fn sample() -> ExchangeSample {
    match EXCHANGE_SAMPLE.get_ptr(0) {
        Some(s) => unsafe { core::ptr::read_volatile(s) },
        None => ExchangeSample::default(),
    }
}

/// The slot of the followed connection `key`, if its bucket holds it under `epoch`.
#[inline(always)]
fn find(key: &ArrivalKey, epoch: u32) -> Option<*mut FlowSlot> {
    let w = key_words(key);
    let first = slot_bucket(w, EXCHANGE_FLOWS);
    let a = FLOWS.get_ptr_mut(first)?;
    if same_key(w, unsafe { &raw const (*a).key }) && unsafe { (*a).epoch } == epoch {
        return Some(a);
    }
    let b = FLOWS.get_ptr_mut(first + 1)?;
    if same_key(w, unsafe { &raw const (*b).key }) && unsafe { (*b).epoch } == epoch {
        return Some(b);
    }
    None
}

/// Does the slot follow a connection the edge may still use? (Free, edge-closed and
/// earlier epochs' slots are taken first.)
#[inline(always)]
fn live(slot: *const FlowSlot, epoch: u32) -> bool {
    unsafe {
        (*slot).key.family != 0
            && (*slot).epoch == epoch
            && (*slot).state.flags & FLOW_F_EDGE_CLOSED == 0
    }
}

/// Starts following `key` with `state` in its bucket.
#[inline(always)]
fn follow(key: &ArrivalKey, state: FlowState, epoch: u32) {
    let first = slot_bucket(key_words(key), EXCHANGE_FLOWS);
    let (Some(a), Some(b)) = (FLOWS.get_ptr_mut(first), FLOWS.get_ptr_mut(first + 1)) else {
        return;
    };
    let slot = match (live(a, epoch), live(b, epoch)) {
        (true, false) => b,
        (false, _) => a,
        (true, true) => {
            if unsafe { (*b).state.last_jiffies < (*a).state.last_jiffies } {
                b
            } else {
                a
            }
        }
    };
    unsafe {
        (*slot).key = *key;
        (*slot).epoch = epoch;
        (*slot).state = state;
    }
}

/// Stops following the connection in `slot` (it becomes free).
#[inline(always)]
fn forget(slot: *mut FlowSlot) {
    unsafe { (*slot).key.family = 0 };
}

// Every function that reads addresses from the packet is instantiated per family (`V6`):
// the verifier then checks each address read against that family's bounds, which a family
// held in a register would not tell it.

/// An address at `addr` (4 or 16 readable bytes), as the 16-byte form events carry.
#[inline(always)]
fn addr_of<const V6: bool>(addr: *const u8) -> [u8; 16] {
    let mut out = [0u8; 16];
    let words = out.as_mut_ptr() as *mut u32;
    unsafe {
        *words = load32(addr);
        if V6 {
            for i in 1..4 {
                *words.add(i) = load32(addr.add(4 * i));
            }
        }
    }
    out
}

#[inline(always)]
fn is_edge<const V6: bool>(addr: *const u8) -> bool {
    if V6 {
        peer_is_edge_v6(addr)
    } else {
        peer_is_edge_v4(u32::from_be(load32(addr)))
    }
}

/// Sends a transition of the flow `key` at `ts`, the local side at `local` (4 or 16 bytes).
#[inline(always)]
fn send<const V6: bool>(
    kind: EventKind,
    key: &ArrivalKey,
    local: *const u8,
    local_port: u16,
    ts: u64,
    flags: u32,
    aux: u64,
) {
    let Some(mut entry) = reserve_event() else {
        return;
    };
    let mut ev: Event = empty_event(kind as u16);
    ev.ts_ns = ts;
    ev.family = key.family;
    ev.peer_addr = key.addr;
    ev.local_addr = addr_of::<V6>(local);
    ev.peer_port = key.port;
    ev.local_port = local_port;
    ev.flags = EVENT_F_EDGE | flags;
    ev.aux = aux;
    entry.write(ev);
    entry.submit(0);
}

/// A segment arriving (not a SYN): `src` is the source address followed by the destination,
/// `tcp` the TCP header (20 readable bytes), `payload` its payload length.
#[inline(always)]
pub fn inbound(family: u8, src: *const u8, tcp: *const u8, flags: u8, payload: u32) {
    // Pure ACKs, most frames of a download, leave first.
    if payload == 0 && flags & (TCP_FIN | TCP_RST) == 0 {
        return;
    }
    if family == 4 {
        inbound_at::<false>(src, tcp, flags, payload);
    } else {
        inbound_at::<true>(src, tcp, flags, payload);
    }
}

#[inline(always)]
fn key_of<const V6: bool>(addr: *const u8, port: u16) -> ArrivalKey {
    ArrivalKey {
        addr: addr_of::<V6>(addr),
        port,
        family: if V6 { 6 } else { 4 },
    }
}

#[inline(always)]
fn inbound_at<const V6: bool>(src: *const u8, tcp: *const u8, flags: u8, payload: u32) {
    let local_port = be16(unsafe { tcp.add(2) });
    if !port_watched(local_port) || !is_edge::<V6>(src) {
        return;
    }
    let key = key_of::<V6>(src, be16(tcp));
    let sample = sample();
    if !in_exchange_sample(key_words(&key), sample.shift) {
        return;
    }
    let local = unsafe { src.add(if V6 { 16 } else { 4 }) };
    let Some(slot) = find(&key, sample.epoch) else {
        // A connection not followed yet (new, or older than the tracer): its first payload is
        // a request.
        if payload == 0 || flags & (TCP_FIN | TCP_RST) != 0 {
            return;
        }
        let state = FlowState {
            request_ns: unsafe { bpf_ktime_get_ns() },
            last_jiffies: unsafe { bpf_jiffies64() },
            local_port,
            phase: PHASE_REQUEST,
            flags: 0,
        };
        follow(&key, state, sample.epoch);
        count(counter::REQUESTS_BEGUN);
        return;
    };
    let s = unsafe { &raw mut (*slot).state };
    if flags & TCP_RST != 0 {
        if unsafe { (*s).phase } == PHASE_REQUEST {
            let now = unsafe { bpf_ktime_get_ns() };
            send::<V6>(EventKind::ExchangeReset, &key, local, local_port, now, 0, 0);
        }
        forget(slot);
        return;
    }
    // Races between CPUs (a flow's two directions on two CPUs) can only blur a transition's
    // time by a packet: the state is an observation, not a lock.
    unsafe {
        if payload > 0 {
            let f = (*s).flags;
            if f & FLOW_F_EDGE_CLOSED != 0 {
                // The edge had closed that connection: this is a new one from the same port
                // (entries are left for the LRU to take, not deleted per connection).
                (*s).phase = PHASE_REQUEST;
                (*s).request_ns = bpf_ktime_get_ns();
                (*s).flags = 0;
                count(counter::REQUESTS_BEGUN);
            } else if f & FLOW_F_ORIGIN_CLOSED != 0 {
                if f & FLOW_F_AFTER_CLOSE == 0 {
                    (*s).flags = f | FLOW_F_AFTER_CLOSE;
                    let now = bpf_ktime_get_ns();
                    send::<V6>(
                        EventKind::RequestAfterClose,
                        &key,
                        local,
                        local_port,
                        now,
                        0,
                        (*s).last_jiffies,
                    );
                }
            } else if (*s).phase != PHASE_REQUEST {
                (*s).phase = PHASE_REQUEST;
                (*s).request_ns = bpf_ktime_get_ns();
                count(counter::REQUESTS_BEGUN);
            }
            touch(s);
        }
        if flags & TCP_FIN != 0 {
            (*s).flags |= FLOW_F_EDGE_CLOSED;
        }
    }
}

/// The last payload's tick, stored only when it changed (one store a tick, not a packet).
#[inline(always)]
unsafe fn touch(s: *mut FlowState) {
    let now = unsafe { bpf_jiffies64() };
    unsafe {
        if (*s).last_jiffies != now {
            (*s).last_jiffies = now;
        }
    }
}

/// A segment leaving: `src` is the (local) source address followed by the destination.
#[inline(always)]
fn outbound(family: u8, src: *const u8, tcp: *const u8, flags: u8, payload: u32) {
    if payload == 0 && flags & (TCP_FIN | TCP_RST) == 0 {
        return;
    }
    if family == 4 {
        outbound_at::<false>(src, tcp, flags, payload);
    } else {
        outbound_at::<true>(src, tcp, flags, payload);
    }
}

#[inline(always)]
fn outbound_at<const V6: bool>(src: *const u8, tcp: *const u8, flags: u8, payload: u32) {
    let local_port = be16(tcp);
    let peer = unsafe { src.add(if V6 { 16 } else { 4 }) };
    if !port_watched(local_port) || !is_edge::<V6>(peer) {
        return;
    }
    let key = key_of::<V6>(peer, be16(unsafe { tcp.add(2) }));
    let sample = sample();
    if !in_exchange_sample(key_words(&key), sample.shift) {
        return;
    }
    let Some(slot) = find(&key, sample.epoch) else {
        return;
    };
    let s = unsafe { &raw mut (*slot).state };
    if flags & TCP_RST != 0 {
        if unsafe { (*s).phase } == PHASE_REQUEST {
            let now = unsafe { bpf_ktime_get_ns() };
            send::<V6>(
                EventKind::ExchangeReset,
                &key,
                src,
                local_port,
                now,
                EVENT_F_EGRESS,
                0,
            );
        }
        forget(slot);
        return;
    }
    unsafe {
        if payload > 0 {
            if (*s).phase == PHASE_REQUEST {
                (*s).phase = PHASE_RESPONSE;
                send_response::<V6>(&key, local_port, &*s);
            }
            touch(s);
        }
        if flags & TCP_FIN != 0 {
            let f = (*s).flags;
            if f & (FLOW_F_EDGE_CLOSED | FLOW_F_ORIGIN_CLOSED) == 0 {
                (*s).flags = f | FLOW_F_ORIGIN_CLOSED;
                let pending = if (*s).phase == PHASE_REQUEST {
                    EVENT_F_PENDING
                } else {
                    0
                };
                // A close within a tick of the last payload ends the response itself
                // (`Connection: close`): no idle close, and no event for every such
                // connection. Userspace's bar for an idle close is far above two ticks.
                if pending == 0 && bpf_jiffies64().wrapping_sub((*s).last_jiffies) <= 1 {
                    return;
                }
                let now = bpf_ktime_get_ns();
                send::<V6>(
                    EventKind::OriginClosed,
                    &key,
                    src,
                    local_port,
                    now,
                    pending,
                    (*s).last_jiffies,
                );
            }
        }
    }
}

/// The first response byte left: one event with when the request began.
#[inline(always)]
fn send_response<const V6: bool>(key: &ArrivalKey, local_port: u16, s: &FlowState) {
    let Some(mut entry) = reserve_event() else {
        return;
    };
    let mut ev: Event = empty_event(EventKind::ResponseBegan as u16);
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    ev.family = key.family;
    ev.peer_addr = key.addr;
    ev.peer_port = key.port;
    ev.local_port = local_port;
    ev.flags = EVENT_F_EDGE;
    ev.aux = s.request_ns;
    entry.write(ev);
    entry.submit(0);
}

/// TC egress on the watched interface: the origin's answers to the edge.
#[classifier]
pub fn tc_reply(ctx: TcContext) -> i32 {
    // Untagged IPv4 without options, nearly every frame: one bounds check, and a frame with
    // no payload, FIN or RST (an ACK, a SYN-ACK) leaves after a handful of loads.
    if let Some(eth) = bytes_at(&ctx, 0, 14 + 40) {
        let ip = unsafe { eth.add(14) };
        if be16(unsafe { eth.add(12) }) == 0x0800 && unsafe { *ip } == 0x45 {
            let tcp = unsafe { ip.add(20) };
            if unsafe { *ip.add(9) } != 6 || be16(unsafe { ip.add(6) }) & 0x3fff != 0 {
                return TC_ACT_UNSPEC;
            }
            let flags = unsafe { *tcp.add(13) };
            let total = u32::from(be16(unsafe { ip.add(2) }));
            let header = 20 + u32::from(unsafe { *tcp.add(12) } >> 4) * 4;
            // No total length: a GSO packet of 64 KiB and more (BIG TCP), payload.
            let payload = if total == 0 {
                1
            } else {
                total.saturating_sub(header)
            };
            if flags & TCP_SYN == 0 {
                outbound(4, unsafe { ip.add(12) }, tcp, flags, payload);
            }
            return TC_ACT_UNSPEC;
        }
    }
    if let Some((family, src, tcp, flags, payload)) = parse_tcp(&ctx) {
        if flags & TCP_SYN == 0 {
            outbound(family, src, tcp, flags, payload);
        }
    }
    TC_ACT_UNSPEC
}

/// An empty program on the same hook, for `cargo xtask bench` and `TRACER_EMPTY_PROGRAMS`.
#[classifier]
pub fn tc_reply_pass(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

//! Maps, load-time configuration and helpers shared by every program.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    helpers::{bpf_jiffies64, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::map,
    maps::{
        lpm_trie::{Key, LpmTrie},
        ring_buf::RingBufEntry,
        Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf,
    },
    programs::TracePointContext,
};
use tracer_common::{
    counter, slot_bucket, ArrivalKey, ArrivalSlot, Config, Event, Ipv4Key, Ipv6Key, ListenBudget,
    SynCursor, SynRecord, ARRIVAL_SLOTS, CONFIG_F_ALL_PEERS, CONFIG_F_FOLLOW_FORWARDED,
    CONFIG_F_NETNS_FILTER, DIALERS_MAX, DIALS_MAX, EVENT_F_EDGE, FIELD_ABSENT, LISTEN_BUDGETS,
    LISTEN_PER_SEC, PORT_BITMAP_WORDS, PREFILTER_WORDS, REFUSED_PORTS, SLASH24_WORDS,
};

/// Written by userspace at load time; read with `read_volatile` so the compiler cannot fold the
/// defaults into the code.
#[unsafe(no_mangle)]
pub static CONFIG: Config = Config::DEFAULT;

/// Events to userspace. Userspace resizes it at load time (`--ring-size`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 23, 0);

/// The SYN log: `syn_slots_per_cpu` records per possible CPU, each CPU writing only its own
/// part; userspace maps it and reads behind the cursors. Sized by userspace at load time.
#[map]
pub static SYN_LOG: Array<SynRecord> = Array::with_max_entries(1, BPF_F_MMAPABLE);
/// One [`SynCursor`] per possible CPU, also mapped by userspace.
#[map]
pub static SYN_CURSORS: Array<SynCursor> = Array::with_max_entries(1, BPF_F_MMAPABLE);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Refused edge SYNs by watched port, per CPU: exact under any flood, like the total.
#[map]
pub static EDGE_REFUSED_BY_PORT: PerCpuHashMap<u16, u64> =
    PerCpuHashMap::with_max_entries(REFUSED_PORTS, 0);

/// Counts a refused edge SYN to `port`, in the total and by port.
#[inline(always)]
pub fn count_refused(port: u16) {
    count(counter::EDGE_SYN_REFUSED);
    match EDGE_REFUSED_BY_PORT.get_ptr_mut(port) {
        // Per-CPU slot: no other writer runs on this CPU while we hold it.
        Some(n) => unsafe { *n += 1 },
        None => {
            let _ = EDGE_REFUSED_BY_PORT.insert(port, 1u64, 0);
        }
    }
}

/// Listener changes sent per network namespace this second (see [`listen_allowed`]).
#[map]
pub static LISTEN_BUDGET: LruHashMap<u32, ListenBudget> =
    LruHashMap::with_max_entries(LISTEN_BUDGETS, 0);

/// Watched local ports, one bit per port.
#[map]
pub static PORTS: Array<u64> = Array::with_max_entries(PORT_BITMAP_WORDS, 0);

/// Watched peer ranges (Cloudflare's by default).
#[map]
pub static EDGE_V4: LpmTrie<Ipv4Key, u8> = LpmTrie::with_max_entries(4096, 0);
#[map]
pub static EDGE_V6: LpmTrie<Ipv6Key, u8> = LpmTrie::with_max_entries(4096, 0);

/// IPv4 at /24 granularity, one bit per /24 (inlined array loads, no trie walk): FULL24 when a
/// watched range covers the whole /24, PART24 when a longer prefix lies inside it (then the
/// trie decides).
#[map]
pub static EDGE_V4_FULL24: Array<u64> = Array::with_max_entries(SLASH24_WORDS, 0);
#[map]
pub static EDGE_V4_PART24: Array<u64> = Array::with_max_entries(SLASH24_WORDS, 0);
/// IPv6: one bit per value of the first 16 bits that overlaps a watched range; the trie decides.
#[map]
pub static EDGE_V6_PREFILTER: Array<u64> = Array::with_max_entries(PREFILTER_WORDS, 0);

/// SYNs logged at the watched interface ([`ArrivalSlot`]), written by the arrival hook only
/// with `CONFIG_F_FOLLOW_FORWARDED`; the tracepoints look events of other namespaces up here.
/// A direct-mapped table: an LRU hash cost every SYN an allocation from a list, the largest
/// single cost of a connection. Userspace sizes it at load time: `ARRIVAL_SLOTS`, or a
/// bucket's worth when nothing is followed (lookups past the end find nothing).
#[map]
pub static ARRIVALS: Array<ArrivalSlot> = Array::with_max_entries(2, 0);

/// Processes whose outgoing connections are followed (a tunnel's `cloudflared`), by thread
/// group id. Userspace finds them by name and keeps this current.
#[map]
pub static DIALERS: HashMap<u32, u8> = HashMap::with_max_entries(DIALERS_MAX, 0);
/// `[0]`: how many `DIALERS` there are. While 0, a state change looks no further than this
/// one array load (it runs for every connection the host makes or accepts).
#[map]
pub static DIALERS_ON: Array<u32> = Array::with_max_entries(1, 0);
/// Their connections being followed: socket address -> the connecting task's `pid_tgid`.
#[map]
pub static DIALS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(DIALS_MAX, 0);
/// Where they connected to -> the connecting task's `pid_tgid`: for dropped SYNs that no
/// longer carry their socket.
#[map]
pub static DIAL_TARGETS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(DIALS_MAX, 0);

/// Reads one configuration field without letting the compiler assume its initial value.
macro_rules! config {
    ($($field:tt)+) => {
        unsafe { core::ptr::read_volatile(&$crate::common::CONFIG.$($field)+) }
    };
}
pub(crate) use config;

#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // Per-CPU slot: no other writer runs on this CPU while we hold it.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
pub fn port_watched(port: u16) -> bool {
    match PORTS.get(u32::from(port >> 6)) {
        Some(word) => *word & (1u64 << (port & 63)) != 0,
        None => false,
    }
}

#[inline(always)]
pub fn all_peers() -> bool {
    config!(flags) & CONFIG_F_ALL_PEERS != 0
}

#[inline(always)]
fn bit_set(map: &Array<u64>, index: u32) -> bool {
    match map.get(index >> 6) {
        Some(word) => *word & (1u64 << (index & 63)) != 0,
        None => false,
    }
}

/// Is the IPv4 peer (host order) inside the watched ranges? Whole /24s answer from a bitmap
/// (inlined array loads); only a /24 split by a longer prefix walks the trie.
#[inline(always)]
pub fn peer_is_edge_v4(addr: u32) -> bool {
    let slash24 = addr >> 8;
    if bit_set(&EDGE_V4_FULL24, slash24) {
        return true;
    }
    if !bit_set(&EDGE_V4_PART24, slash24) {
        return false;
    }
    EDGE_V4.get(Key::new(32, addr.to_be_bytes())).is_some()
}

/// Is the IPv6 peer at `addr` (16 readable bytes) inside the watched ranges? A bitmap of the
/// first 16 bits turns most non-edge peers away before the trie.
#[inline(always)]
pub fn peer_is_edge_v6(addr: *const u8) -> bool {
    let first16 = u16::from_be_bytes(unsafe { [*addr, *addr.add(1)] });
    if !bit_set(&EDGE_V6_PREFILTER, u32::from(first16)) {
        return false;
    }
    let mut bytes = [0u8; 16];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = unsafe { *addr.add(i) };
    }
    EDGE_V6.get(Key::new(128, bytes)).is_some()
}

/// Is the peer inside the watched ranges? `family` is 4 or 6. Each map has its own call site so
/// the verifier can inline the array lookups (a map chosen at run time cannot be).
#[inline(always)]
pub fn peer_is_edge(family: u16, addr: &[u8; 16]) -> bool {
    if family == 4 {
        peer_is_edge_v4(u32::from_be_bytes([addr[0], addr[1], addr[2], addr[3]]))
    } else {
        peer_is_edge_v6(addr.as_ptr())
    }
}

/// Edge flag for the event, or `None` when the peer is not wanted (non-edge, no `--all-peers`).
#[inline(always)]
pub fn peer_flags(family: u16, addr: &[u8; 16]) -> Option<u32> {
    if peer_is_edge(family, addr) {
        Some(EVENT_F_EDGE)
    } else if all_peers() {
        Some(0)
    } else {
        None
    }
}

/// A ring entry for one event, or `None`, counted as lost, when the ring buffer is full.
#[inline(always)]
pub fn reserve_event() -> Option<RingBufEntry<Event>> {
    let entry = EVENTS.reserve::<Event>(0);
    if entry.is_none() {
        count(counter::LOST);
    }
    entry
}

/// Wakes the reader for a SYN logged on a CPU whose log it had read empty: the log cannot
/// signal, and the agent sleeps until the ring does when a drain found nothing. A record
/// shorter than an event, which the reader skips (its place in the ring still counts); the
/// ring wakes the reader only when it had read everything. Not counted lost when the ring is
/// full: the SYN is in the log, and a full ring is being read.
#[inline(always)]
pub fn ring_doorbell() {
    let _ = EVENTS.output::<u64>(0u64, 0);
}

/// An event built in place of the stack, one per CPU: for a program whose stack is full (the
/// drop hook). Programs of one kind do not nest on a CPU, so one slot serves.
#[map]
pub static SCRATCH_EVENT: PerCpuArray<Event> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's scratch event, set to `empty_event(kind)`.
#[inline(always)]
pub fn scratch_event(kind: u16) -> Option<&'static mut Event> {
    let event = unsafe { &mut *SCRATCH_EVENT.get_ptr_mut(0)? };
    *event = empty_event(kind);
    Some(event)
}

/// Sends an event built in place (copied into the ring), or counts it as lost.
#[inline(always)]
pub fn emit_from(event: &mut Event) {
    event.ts_ns = unsafe { bpf_ktime_get_ns() };
    if EVENTS.output::<Event>(&*event, 0).is_err() {
        count(counter::LOST);
    }
}

/// Sends the event, or counts it as lost when the ring buffer is full.
#[inline(always)]
pub fn emit(mut event: Event) {
    event.ts_ns = unsafe { bpf_ktime_get_ns() };
    if let Some(mut entry) = reserve_event() {
        entry.write(event);
        entry.submit(0);
    }
}

pub const fn empty_event(kind: u16) -> Event {
    Event {
        ts_ns: 0,
        kind,
        family: 0,
        netns: 0,
        peer_addr: [0; 16],
        local_addr: [0; 16],
        peer_port: 0,
        local_port: 0,
        flags: 0,
        reason: 0,
        state: 0,
        tcp_flags: 0,
        seq: 0,
        aux: 0,
    }
}

/// Reads a tracepoint field; `None` when this kernel's tracepoint lacks it.
#[inline(always)]
pub fn field<T>(ctx: &TracePointContext, offset: u16) -> Option<T> {
    if offset == FIELD_ABSENT {
        return None;
    }
    unsafe { ctx.read_at::<T>(usize::from(offset)).ok() }
}

/// Reads a `T` at `base + offset` in kernel memory; `None` when the offset is unknown.
#[inline(always)]
pub fn read_kernel<T>(base: u64, offset: u16) -> Option<T> {
    if offset == FIELD_ABSENT || base == 0 {
        return None;
    }
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T).ok() }
}

/// A `T` at `base + offset`. `base` is a BTF-typed kernel pointer and `offset` a constant
/// from `CONFIG` (frozen, so the verifier knows it): the verifier checks the access against
/// the kernel's struct layout and makes the load fault-safe.
#[inline(always)]
pub unsafe fn load<T>(base: *const u8, offset: u16) -> T {
    unsafe { core::ptr::read(base.add(usize::from(offset)).cast::<T>()) }
}

#[inline(always)]
pub fn follow_forwarded() -> bool {
    config!(flags) & CONFIG_F_FOLLOW_FORWARDED != 0
}

#[inline(always)]
pub fn netns_filter() -> bool {
    config!(flags) & CONFIG_F_NETNS_FILTER != 0
}

/// Records a SYN that arrived at the watched interface (`follow_forwarded` only).
#[inline(always)]
pub fn record_arrival(key: &ArrivalKey, seq: u32) {
    let w = key_words(key);
    let first = slot_bucket(w, ARRIVAL_SLOTS);
    let (Some(a), Some(b)) = (ARRIVALS.get_ptr_mut(first), ARRIVALS.get_ptr_mut(first + 1)) else {
        return;
    };
    let slot = unsafe {
        if same_key(w, &raw const (*a).key) || (*a).key.family == 0 {
            a
        } else if same_key(w, &raw const (*b).key) || (*b).key.family == 0 {
            b
        } else if ((*a).tick.wrapping_sub((*b).tick) as i32) > 0 {
            // `a` is the newer.
            b
        } else {
            a
        }
    };
    unsafe {
        (*slot).key = *key;
        (*slot).seq = seq;
        (*slot).tick = bpf_jiffies64() as u32;
    }
}

/// Did a SYN from this peer address and port arrive at the watched interface? With `seq` (the
/// event is a bare SYN), it must be that SYN: a new connection from the same peer port is not.
#[inline(always)]
pub fn arrival_matches(family: u16, peer: &[u8; 16], peer_port: u16, seq: Option<u32>) -> bool {
    let key = ArrivalKey {
        addr: *peer,
        port: peer_port,
        family,
    };
    let w = key_words(&key);
    let first = slot_bucket(w, ARRIVAL_SLOTS);
    for i in 0..2 {
        let Some(slot) = ARRIVALS.get_ptr(first + i) else {
            return false;
        };
        if same_key(w, unsafe { &raw const (*slot).key }) {
            return seq.is_none_or(|s| s == unsafe { (*slot).seq });
        }
    }
    false
}

/// A key as five words, for hashing and comparing.
#[inline(always)]
pub fn key_words(key: &ArrivalKey) -> &[u32; 5] {
    // SAFETY: `ArrivalKey` is 20 bytes aligned to 4.
    unsafe { &*(key as *const ArrivalKey).cast::<[u32; 5]>() }
}

/// Is the key at `other` (in a table slot) the key of `words`?
#[inline(always)]
pub fn same_key(words: &[u32; 5], other: *const ArrivalKey) -> bool {
    let o = unsafe { &*other.cast::<[u32; 5]>() };
    words[0] == o[0] && words[1] == o[1] && words[2] == o[2] && words[3] == o[3] && words[4] == o[4]
}

/// `net.ns.inum` of a BTF-typed `struct net *` (NULL when unknown).
#[inline(always)]
pub fn net_inum(net: *const u8) -> Option<u32> {
    if net.is_null() {
        return None;
    }
    let offset = config!(kernel.net_inum);
    Some(unsafe { load::<u32>(net, offset) })
}

/// Where an event happened, as far as the tracer is concerned.
#[derive(Clone, Copy)]
pub struct Netns {
    /// The namespace inode (the tracer's own when the filter is off: no BTF).
    pub inum: u32,
    /// The tracer's own namespace.
    pub own: bool,
}

/// Classifies a namespace inode read from the kernel (`None`: unreadable). Misses are counted.
#[inline(always)]
pub fn classify_netns(inum: Option<u32>) -> Netns {
    let own_inum = config!(netns_inum);
    if !netns_filter() {
        return Netns {
            inum: own_inum,
            own: true,
        };
    }
    let inum = inum.unwrap_or(0);
    let own = inum == own_inum;
    if !own {
        count(counter::OTHER_NETNS);
    }
    Netns { inum, own }
}

/// `sk->__sk_common.skc_net->ns.inum`
#[inline(always)]
fn netns_of_sock(sk: u64) -> Option<u32> {
    let net: u64 = read_kernel(sk, config!(kernel.sk_net))?;
    read_kernel(net, config!(kernel.net_inum))
}

/// May a listener change in the namespace at `net` (a kernel `struct net *`, inode `inum`) be
/// sent? Not from a namespace an unprivileged user made (its owning user namespace is not the
/// initial one: `unshare -rn` and a listen/close loop must not fill the ring); and, but for
/// the tracer's own namespace, at most [`LISTEN_PER_SEC`] a second per namespace. Refusals
/// are counted. Without the offsets (no BTF), every change is sent, as before.
#[inline(always)]
pub fn listen_allowed(net: u64, inum: u32) -> bool {
    if inum == config!(netns_inum) {
        return true;
    }
    if let Some(user_ns) = read_kernel::<u64>(net, config!(kernel.net_user_ns)) {
        if read_kernel::<i32>(user_ns, config!(kernel.userns_level)).is_some_and(|l| l != 0) {
            count(counter::LISTEN_UNPRIVILEGED);
            return false;
        }
    }
    let second = unsafe { bpf_ktime_get_ns() } / 1_000_000_000;
    let budget = match LISTEN_BUDGET.get_ptr_mut(inum) {
        Some(b) => b,
        None => {
            let fresh = ListenBudget {
                second,
                sent: 0,
                _pad: 0,
            };
            let _ = LISTEN_BUDGET.insert(inum, fresh, 0);
            match LISTEN_BUDGET.get_ptr_mut(inum) {
                Some(b) => b,
                None => return true,
            }
        }
    };
    // Races between CPUs only blur the count by a few: a budget, not an exact limit.
    unsafe {
        if (*budget).second != second {
            (*budget).second = second;
            (*budget).sent = 0;
        }
        if (*budget).sent >= LISTEN_PER_SEC {
            count(counter::LISTEN_THROTTLED);
            return false;
        }
        (*budget).sent += 1;
    }
    true
}

/// The `struct net *` of a socket given as a plain address (classic tracepoints).
#[inline(always)]
pub fn net_of_sock(sk: u64) -> u64 {
    read_kernel(sk, config!(kernel.sk_net)).unwrap_or(0)
}

/// The namespace of a packet: its socket's when it has one, else its device's.
#[inline(always)]
fn netns_of_skb(skb: u64) -> Option<u32> {
    let sk: u64 = read_kernel(skb, config!(kernel.skb_sk)).unwrap_or(0);
    if sk != 0 {
        return netns_of_sock(sk);
    }
    let dev: u64 = read_kernel(skb, config!(kernel.skb_dev))?;
    let net: u64 = read_kernel(dev, config!(kernel.dev_nd_net))?;
    read_kernel(net, config!(kernel.net_inum))
}

/// The namespace of a socket or packet given as plain addresses (classic tracepoints).
/// Tracepoints fire for every namespace; without the filter (no BTF) everything counts as the
/// tracer's own and userspace says so.
#[inline(always)]
pub fn netns_of(sk: u64, skb: u64) -> Netns {
    if !netns_filter() {
        return classify_netns(None);
    }
    classify_netns(if sk != 0 {
        netns_of_sock(sk)
    } else {
        netns_of_skb(skb)
    })
}

/// Does an event at a watched (`watched_port`) or other local port, in `ns`, belong to the
/// tracer? A watched port in its own namespace does; anything else only as a connection the
/// host forwarded, whose peer address and port arrived at the watched interface. Returns the
/// `EVENT_F_FORWARDED` bit or `None`. Callers have already checked the peer is wanted (the
/// cheapest test), so another namespace's own traffic rarely gets as far as the lookup.
#[inline(always)]
pub fn attribution(
    watched_port: bool,
    ns: Netns,
    family: u16,
    peer: &[u8; 16],
    peer_port: u16,
    seq: Option<u32>,
) -> Option<u32> {
    if watched_port && ns.own {
        return Some(0);
    }
    if follow_forwarded() && arrival_matches(family, peer, peer_port, seq) {
        Some(tracer_common::EVENT_F_FORWARDED)
    } else {
        None
    }
}

//! Types shared by the kernel programs (`tracer-ebpf`) and userspace (`tracer`).
//!
//! Everything here is `#[repr(C)]` with explicit padding and no `bool`/`Option`, so both sides
//! agree on the layout byte for byte. The size asserts catch drift at compile time.
#![no_std]

use core::mem::size_of;

/// What a kernel event records. The numbers travel in [`Event::kind`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A TCP SYN (no ACK) to a watched port arrived at the NIC (XDP).
    Syn = 1,
    /// The kernel freed a TCP packet of a watched flow with a drop reason (`skb:kfree_skb`).
    Drop = 2,
    /// The TCP stack sent a RST (`tcp:tcp_send_reset`).
    ResetSent = 3,
    /// The TCP stack received a RST on a socket (`tcp:tcp_receive_reset`).
    ResetReceived = 4,
    /// A passive open completed: SYN_RECV -> ESTABLISHED (`sock:inet_sock_set_state`).
    Established = 5,
    /// A connection on a watched port went to CLOSE (`sock:inet_sock_set_state`).
    Closed = 6,
    /// The origin retransmitted a SYN-ACK (`tcp:tcp_retransmit_synack`).
    SynackRetransmit = 7,
    /// A socket on a watched port started or stopped listening (`sock:inet_sock_set_state`
    /// to or from LISTEN), in any namespace: `state` is `old << 8 | new`, `aux` the current
    /// task's `pid_tgid`, `peer_addr` its comm (NUL-padded); the local side is the listener's.
    Listen = 8,
    /// The origin sent its first payload byte after a request (TC egress): `aux` is when the
    /// request began (`bpf_ktime_get_ns`). Requests still waiting are read from `FLOWS`
    /// itself; whether the application read one, userspace asks the socket tables.
    ResponseBegan = 11,
    /// The origin closed (FIN) an edge connection the edge had not closed (TC egress): `aux`
    /// is the jiffies of the last payload either way; `EVENT_F_PENDING` when a request had
    /// no response yet.
    OriginClosed = 12,
    /// Payload from the edge on a connection the origin had already closed: a request that
    /// meets a reset. Sent once per connection.
    RequestAfterClose = 13,
    /// A followed edge connection was reset (`EVENT_F_EGRESS`: by the origin) while a request
    /// was waiting for its response.
    ExchangeReset = 14,
    /// A process userspace named in `DIALERS` (a tunnel's `cloudflared`) connecting out
    /// (`sock:inet_sock_set_state`): the connect (-> SYN_SENT), its answer (SYN_SENT ->
    /// ESTABLISHED or CLOSE), or the connection ending with an error. `state` is
    /// `old << 8 | new`, `aux` the connecting task's `pid_tgid`, the peer the address dialled;
    /// with `EVENT_F_HAS_REASON`, `reason` is the socket's error (`sk_err`, an errno) as it
    /// closed. The local port is 0 at the connect (the kernel picks it just after). A SYN of
    /// such a connection the kernel dropped (`skb:kfree_skb`) is one too, with `state`
    /// `TCP_SYN_SENT << 8 | DIAL_SYN_DROPPED` and the drop reason in `reason`.
    Dial = 15,
}

impl EventKind {
    pub const fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Syn,
            2 => Self::Drop,
            3 => Self::ResetSent,
            4 => Self::ResetReceived,
            5 => Self::Established,
            6 => Self::Closed,
            7 => Self::SynackRetransmit,
            8 => Self::Listen,
            11 => Self::ResponseBegan,
            12 => Self::OriginClosed,
            13 => Self::RequestAfterClose,
            14 => Self::ExchangeReset,
            15 => Self::Dial,
            _ => return None,
        })
    }
}

/// [`Event::flags`]: the peer is inside the watched (edge) ranges.
pub const EVENT_F_EDGE: u32 = 1 << 0;
/// [`Event::flags`]: [`Event::reason`] holds a kernel reason code.
pub const EVENT_F_HAS_REASON: u32 = 1 << 1;
/// [`Event::flags`]: the event had a socket (`skaddr != 0`).
pub const EVENT_F_HAS_SOCK: u32 = 1 << 2;
/// [`Event::flags`]: [`Event::tcp_flags`] and [`Event::seq`] were read from the packet.
pub const EVENT_F_HAS_TCP: u32 = 1 << 3;
/// [`Event::flags`]: the packet was leaving the origin (peer = destination).
pub const EVENT_F_EGRESS: u32 = 1 << 4;
/// [`Event::flags`]: not a watched port in the tracer's own namespace, but the peer's address
/// and port match a SYN that arrived at the watched interface (`ARRIVALS`): the host handed
/// the connection on (DNAT to a container, another namespace).
pub const EVENT_F_FORWARDED: u32 = 1 << 5;
/// [`Event::flags`] of `OriginClosed`: a request was still waiting for its response.
pub const EVENT_F_PENDING: u32 = 1 << 7;

/// Slots of the exchange table (`FLOWS`): a power of two, in buckets of two. A new connection
/// takes a free or closed slot of its bucket before it displaces a live one (the older).
pub const EXCHANGE_FLOWS: u32 = 65536;

/// [`FlowState::phase`]: a request arrived and no response byte has left yet.
pub const PHASE_REQUEST: u8 = 1;
/// [`FlowState::phase`]: the origin is answering (or has answered) the last request.
pub const PHASE_RESPONSE: u8 = 2;
/// [`FlowState::flags`]: the origin sent its FIN first.
pub const FLOW_F_ORIGIN_CLOSED: u8 = 1 << 1;
/// [`FlowState::flags`]: the edge sent its FIN.
pub const FLOW_F_EDGE_CLOSED: u8 = 1 << 2;
/// [`FlowState::flags`]: a request after the origin's close was reported.
pub const FLOW_F_AFTER_CLOSE: u8 = 1 << 3;

/// One edge connection's exchange, kept by the arrival and departure hooks (`FLOWS`, keyed by
/// the peer's address and port as [`ArrivalKey`], which DNAT leaves alone). Only the response
/// and the rare transitions send events; a request still waiting is read from the map by
/// userspace. Per-packet work is a lookup and, once a tick, a store.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    /// `bpf_ktime_get_ns()` when the pending request began.
    pub request_ns: u64,
    /// `bpf_jiffies64()` of the last payload either way.
    pub last_jiffies: u64,
    /// The local port the edge connected to (as it arrived).
    pub local_port: u16,
    /// `PHASE_*`.
    pub phase: u8,
    /// `FLOW_F_*`.
    pub flags: u8,
}

const _: () = assert!(size_of::<FlowState>() == 24);

/// One slot of the exchange table `FLOWS`: a direct-mapped array (no lock, no allocation per
/// connection, which an LRU hash costs every new connection), indexed by a hash of the key.
/// `key.family == 0`: free.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowSlot {
    pub key: ArrivalKey,
    /// The [`ExchangeSample::epoch`] it was followed under: a slot of an earlier epoch is
    /// free (its connection may have left the sample and come back, its state stale).
    pub epoch: u32,
    pub state: FlowState,
}

const _: () = assert!(size_of::<FlowSlot>() == 48);

/// The first slot of a key's bucket in a direct-mapped table of `slots` slots (a power of
/// two) in buckets of two (`FLOWS`, `ARRIVALS`): a multiplicative hash of the key's address
/// words and port (`words`: the key as five words), its top bits the bucket.
#[inline(always)]
pub fn slot_bucket(words: &[u32; 5], slots: u32) -> u32 {
    let bucket_bits = (slots / 2).trailing_zeros();
    let h = key_fold(words).wrapping_mul(0x9E37_79B1);
    (h >> (32 - bucket_bits)) * 2
}

/// The largest [`ExchangeSample::shift`]: one edge connection in 1,024 followed.
pub const SAMPLE_SHIFT_MAX: u32 = 10;

/// Which edge connections the exchange timing follows (`EXCHANGE_SAMPLE[0]`, written by
/// userspace as the request rate moves): 1 in `2^shift`, by a hash of the connection's key.
/// Both packet programs compute the same test, so a connection outside the sample costs them
/// no table access at all. `epoch` changes with every new setting.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExchangeSample {
    pub shift: u32,
    pub epoch: u32,
}

/// Is the connection with key `words` among the 1 in `2^shift` followed? The top bits of a
/// second multiplicative hash of the key (the bucket takes the first's), so a sample spreads
/// over the whole table.
#[inline(always)]
pub fn in_exchange_sample(words: &[u32; 5], shift: u32) -> bool {
    if shift == 0 {
        return true;
    }
    let shift = if shift > SAMPLE_SHIFT_MAX {
        SAMPLE_SHIFT_MAX
    } else {
        shift
    };
    let h = key_fold(words).wrapping_mul(0x85EB_CA6B);
    h >> (32 - shift) == 0
}

/// A key's address words and port folded into one word, which the table's bucket and the
/// exchange sample each hash with their own multiplier.
#[inline(always)]
fn key_fold(words: &[u32; 5]) -> u32 {
    let port = words[4] & 0xffff;
    words[0] ^ words[1] ^ words[2] ^ words[3] ^ (port << 16) ^ port
}

/// Slots of `ARRIVALS`, when forwarded connections are followed (a power of two): SYNs of
/// several seconds at a hundred thousand a second, well over the 25 s an attempt may stay open
/// at thousands of connections per second.
pub const ARRIVAL_SLOTS: u32 = 1 << 17;

/// One slot of `ARRIVALS`: a SYN logged at the watched interface, by the peer's address and
/// port (which DNAT leaves alone). Direct-mapped like `FLOWS`: a new SYN takes its key's slot
/// (a retransmission, a reused port) or the older of its bucket. `key.family == 0`: free.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArrivalSlot {
    pub key: ArrivalKey,
    /// The SYN's sequence number.
    pub seq: u32,
    /// The low bits of `bpf_jiffies64()` when it arrived: which of a bucket's two is older.
    pub tick: u32,
    pub _pad: u32,
}

const _: () = assert!(size_of::<ArrivalSlot>() == 32);

/// One kernel observation, written to the ring buffer.
///
/// Addresses are from the origin's point of view: `local_*` is this host, `peer_*` the other end.
/// IPv4 addresses use the first 4 bytes of the 16-byte arrays. Ports are in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// An [`EventKind`] number.
    pub kind: u16,
    /// 4 or 6.
    pub family: u16,
    /// Inode of the network namespace the kernel saw the event in (0: unknown, no BTF).
    pub netns: u32,
    pub peer_addr: [u8; 16],
    pub local_addr: [u8; 16],
    pub peer_port: u16,
    pub local_port: u16,
    /// `EVENT_F_*` bits.
    pub flags: u32,
    /// Raw kernel reason: `enum skb_drop_reason` for drops, `enum sk_rst_reason` for sent resets.
    pub reason: u32,
    /// TCP state: the socket's state for resets; `old << 8 | new` for state changes.
    pub state: u32,
    /// TCP header flags byte (FIN=0x01, SYN=0x02, RST=0x04, ACK=0x10) when known.
    pub tcp_flags: u32,
    /// TCP sequence number when known (a retransmitted SYN repeats it).
    pub seq: u32,
    /// Kind-specific: ingress ifindex for SYNs, drop location for drops, socket cookie otherwise.
    pub aux: u64,
}

const _: () = assert!(size_of::<Event>() == 80);

/// One SYN seen by XDP, in the per-CPU SYN log (`SYN_LOG`, read by userspace through mmap).
///
/// SYNs are the one high-rate fact: recording one costs a few plain stores into this CPU's
/// part of an array, where a ring-buffer event costs a lock shared by every CPU. Same
/// conventions as [`Event`]. One record per cache line.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynRecord {
    /// `bpf_jiffies64()`: when, to a tick (the verifier inlines it into a load; a clock helper
    /// costs more than the rest of the record). Userspace converts it to CLOCK_MONOTONIC with
    /// pairs read by `xdp_clock`. Order comes from `ring_pos`, not from time.
    pub jiffies: u64,
    /// The ring buffer's producer position when the SYN arrived: every event reserved in the
    /// ring before this SYN starts below it, every event reserved after starts at or above it.
    /// Userspace merges the two streams by it (a precise clock read costs more than the rest
    /// of the record on some VMs, and a coarse one cannot order a port reused within a tick).
    pub ring_pos: u64,
    pub peer_addr: [u8; 16],
    pub local_addr: [u8; 16],
    pub peer_port: u16,
    pub local_port: u16,
    /// The SYN's sequence number (the ISN; a retransmission repeats it).
    pub seq: u32,
    pub _pad: u32,
    /// 4 or 6.
    pub family: u8,
    pub tcp_flags: u8,
    /// `EVENT_F_EDGE` or 0.
    pub flags: u16,
}

const _: () = assert!(size_of::<SynRecord>() == 64);

/// One CPU's cursors into its part of the SYN log, on a cache line of their own.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynCursor {
    /// Records this CPU has written (only the kernel writes it).
    pub written: u64,
    /// Records userspace has consumed (only userspace writes it). The kernel writes no
    /// record while `written - read` equals the slots per CPU: it counts a loss instead.
    pub read: u64,
    pub _pad: [u64; 6],
}

const _: () = assert!(size_of::<SynCursor>() == 64);

/// Indices into the per-CPU `COUNTERS` array. The kernel only adds; userspace sums the CPUs.
/// Kept off the per-packet path: a per-CPU update costs ~10 ns per packet.
pub mod counter {
    /// Events lost: ring-buffer reservations that failed, SYNs that found their CPU's part of
    /// the SYN log full.
    pub const LOST: u32 = 0;
    /// Tracepoint hits skipped because they belonged to another network namespace.
    pub const OTHER_NETNS: u32 = 1;
    /// Bare SYNs from watched peers to watched ports freed with [`super::Config::no_socket_reason`]
    /// (refused): counted before any ring space is asked for, so a flood that overflows the
    /// ring still has an exact refusal count.
    pub const EDGE_SYN_REFUSED: u32 = 2;
    /// Listener changes on watched ports not sent: in a namespace an unprivileged user made
    /// (owned by a user namespace other than the initial one, `unshare -rn`).
    pub const LISTEN_UNPRIVILEGED: u32 = 3;
    /// Listener changes on watched ports not sent: over a namespace's budget
    /// ([`super::LISTEN_PER_SEC`] a second, except the tracer's own namespace).
    pub const LISTEN_THROTTLED: u32 = 4;
    /// Edge requests begun (a followed connection's phase set to request), counted after the
    /// slot says so: while this count stands, no slot of `FLOWS` has begun waiting, and
    /// userspace re-reads only the slots it found waiting instead of the whole table.
    pub const REQUESTS_BEGUN: u32 = 5;
    /// Number of counters.
    pub const COUNT: u32 = 6;
}

/// Watched ports whose refused edge SYNs are counted one by one (`EDGE_REFUSED_BY_PORT`);
/// beyond, only the total ([`counter::EDGE_SYN_REFUSED`]) is.
pub const REFUSED_PORTS: u32 = 256;

/// Listener changes a network namespace other than the tracer's may send per second: a
/// container restarting its server sends a few; a loop of listen/close sends thousands.
pub const LISTEN_PER_SEC: u32 = 20;

/// Network namespaces whose listener budget is tracked at once (least recently used go).
pub const LISTEN_BUDGETS: u32 = 1024;

/// One namespace's listener budget: the second it is for, and changes sent in it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenBudget {
    pub second: u64,
    pub sent: u32,
    pub _pad: u32,
}

/// Sentinel for a tracepoint field or kernel struct member that does not exist on this kernel.
pub const FIELD_ABSENT: u16 = 0xffff;

/// Offsets of the fields used from the `sock:*`/`tcp:*` tracepoints that carry split
/// address fields (`sport`, `dport`, `family`, `saddr`, `daddr`, `saddr_v6`, `daddr_v6`).
/// Their `s*` side is the local socket, their `d*` side the peer; ports are host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockTpLayout {
    pub skaddr: u16,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub saddr: u16,
    pub daddr: u16,
    pub saddr_v6: u16,
    pub daddr_v6: u16,
    /// `inet_sock_set_state` only.
    pub oldstate: u16,
    pub newstate: u16,
    pub protocol: u16,
    /// `tcp_receive_reset` only.
    pub sock_cookie: u16,
}

impl SockTpLayout {
    pub const ABSENT: Self = Self {
        skaddr: FIELD_ABSENT,
        sport: FIELD_ABSENT,
        dport: FIELD_ABSENT,
        family: FIELD_ABSENT,
        saddr: FIELD_ABSENT,
        daddr: FIELD_ABSENT,
        saddr_v6: FIELD_ABSENT,
        daddr_v6: FIELD_ABSENT,
        oldstate: FIELD_ABSENT,
        newstate: FIELD_ABSENT,
        protocol: FIELD_ABSENT,
        sock_cookie: FIELD_ABSENT,
    };
}

/// `tcp:tcp_send_reset`. Since Linux 6.10 it carries `saddr`/`daddr` as 28-byte sockaddrs
/// (local first, ports in network order) and a `reason`; before, split fields like
/// [`SockTpLayout`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendResetLayout {
    pub skbaddr: u16,
    pub state: u16,
    pub reason: u16,
    /// `saddr`/`daddr` as sockaddr_in/sockaddr_in6; FIELD_ABSENT when the split layout is used.
    pub sockaddr_saddr: u16,
    pub sockaddr_daddr: u16,
    pub _pad: u16,
    pub split: SockTpLayout,
}

/// `skb:kfree_skb`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KfreeSkbLayout {
    pub skbaddr: u16,
    pub location: u16,
    pub protocol: u16,
    pub reason: u16,
}

/// Kernel struct member offsets, read from BTF at run time (`FIELD_ABSENT` when unknown).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `sk_buff.sk`
    pub skb_sk: u16,
    /// `sk_buff.dev`
    pub skb_dev: u16,
    /// `sk_buff.head`
    pub skb_head: u16,
    /// `sk_buff.network_header`
    pub skb_network_header: u16,
    /// `sk_buff.transport_header`
    pub skb_transport_header: u16,
    /// `net_device.nd_net` (a `possible_net_t` holding `struct net *`)
    pub dev_nd_net: u16,
    /// `sock.__sk_common.skc_net`
    pub sk_net: u16,
    /// `net.ns.inum`
    pub net_inum: u16,
    /// `sk_buff.protocol` (network order)
    pub skb_protocol: u16,
    /// `net.user_ns`: the user namespace that owns a network namespace
    pub net_user_ns: u16,
    /// `user_namespace.level`: 0 for the initial user namespace
    pub userns_level: u16,
    pub _pad: [u16; 1],
}

impl KernelOffsets {
    pub const ABSENT: Self = Self {
        skb_sk: FIELD_ABSENT,
        skb_dev: FIELD_ABSENT,
        skb_head: FIELD_ABSENT,
        skb_network_header: FIELD_ABSENT,
        skb_transport_header: FIELD_ABSENT,
        dev_nd_net: FIELD_ABSENT,
        sk_net: FIELD_ABSENT,
        net_inum: FIELD_ABSENT,
        skb_protocol: FIELD_ABSENT,
        net_user_ns: FIELD_ABSENT,
        userns_level: FIELD_ABSENT,
        _pad: [0; 1],
    };
}

/// `struct sock` members read by the BTF `inet_sock_set_state` program (offsets from BTF).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockOffsets {
    /// `__sk_common.skc_family`
    pub family: u16,
    /// `sk_protocol` (not read since `bpf_skc_to_tcp_sock` checks it; its presence still
    /// tells the layout is this kernel's)
    pub protocol: u16,
    /// `inet_sock.inet_sport` (local port, network order; `skc_num` is already zero when a
    /// closing socket's state changes)
    pub sport: u16,
    /// `__sk_common.skc_dport` (peer port, network order)
    pub dport: u16,
    /// `__sk_common.skc_rcv_saddr`
    pub rcv_saddr: u16,
    /// `__sk_common.skc_daddr`
    pub daddr: u16,
    /// `__sk_common.skc_v6_rcv_saddr`
    pub v6_rcv_saddr: u16,
    /// `__sk_common.skc_v6_daddr`
    pub v6_daddr: u16,
}

impl SockOffsets {
    pub const ABSENT: Self = Self {
        family: FIELD_ABSENT,
        protocol: FIELD_ABSENT,
        sport: FIELD_ABSENT,
        dport: FIELD_ABSENT,
        rcv_saddr: FIELD_ABSENT,
        daddr: FIELD_ABSENT,
        v6_rcv_saddr: FIELD_ABSENT,
        v6_daddr: FIELD_ABSENT,
    };

    pub fn complete(&self) -> bool {
        [
            self.family,
            self.protocol,
            self.sport,
            self.dport,
            self.rcv_saddr,
            self.daddr,
            self.v6_rcv_saddr,
            self.v6_daddr,
        ]
        .iter()
        .all(|o| *o != FIELD_ABSENT)
    }
}

/// Processes whose connections are followed (`DIALERS`), at most.
pub const DIALERS_MAX: u32 = 64;
/// Their connections being followed (`DIALS`), at most.
pub const DIALS_MAX: u32 = 4096;
/// A `Dial` record's new "state" for a SYN the kernel dropped (no TCP state has this number).
pub const DIAL_SYN_DROPPED: u32 = 0xff;

/// Where a followed process connected to, as `DIAL_TARGETS` keys it: a SYN dropped after its
/// socket let go of it (on loopback, at the receiving side) is matched by it. IPv4: the
/// address and port exactly; IPv6: the address folded to 48 bits beside the port (a
/// collision can only credit a dropped SYN to the wrong dialling process, never invent one).
/// One word: the drop hook's stack has no room for a wider key.
pub const fn dial_target(family: u16, addr: &[u8; 16], port: u16) -> u64 {
    let mut folded: u64 = 0;
    if family == 4 {
        folded = u32::from_be_bytes([addr[0], addr[1], addr[2], addr[3]]) as u64;
    } else {
        let mut i = 0;
        while i < 16 {
            let word = u32::from_be_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]) as u64;
            folded ^= word.rotate_left((i as u32) * 3);
            i += 4;
        }
        folded &= 0xffff_ffff_ffff;
    }
    (folded << 16) | port as u64
}

/// [`Config::flags`]: emit events for peers outside the watched ranges too.
pub const CONFIG_F_ALL_PEERS: u32 = 1 << 0;
/// [`Config::flags`]: drop tracepoint events whose network namespace is not `netns_inum`.
pub const CONFIG_F_NETNS_FILTER: u32 = 1 << 1;
/// [`Config::flags`]: report only drops that can decide a connection attempt: bare SYNs for
/// any reason, other packets only for a reason set in [`Config::drop_reasons`]. Spares
/// `diagnose` and `agent` the drops of connections long established (one `QUEUE_PURGE` per
/// connection closed with its peer's FIN unread, for instance).
pub const CONFIG_F_ATTEMPT_DROPS: u32 = 1 << 2;

/// [`Config::flags`]: follow edge connections the host forwards to other namespaces: XDP
/// records each SYN it logs in `ARRIVALS`, and the tracepoints accept events of other
/// namespaces and unwatched ports whose peer address and port are recorded there. Set only
/// when the tracer's namespace forwards packets: without forwarding nothing changes.
pub const CONFIG_F_FOLLOW_FORWARDED: u32 = 1 << 4;

/// [`Config::flags`]: report no closing connections. The agent settles a connection at its
/// handshake, so a close is a second ring event and table lookup per connection it does not
/// use; this spares both at tens of thousands of connections per second.
pub const CONFIG_F_NO_CLOSES: u32 = 1 << 3;

/// Words of [`Config::drop_reasons`]: one bit per `enum skb_drop_reason` value below 512
/// (subsystem reasons, with high bits set, are never in it).
pub const DROP_REASON_WORDS: usize = 8;

/// Load-time configuration, written into the programs' read-only data
/// (`EbpfLoader::override_global("CONFIG", ..)`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub flags: u32,
    /// Inode number of the network namespace that counts (`stat /proc/self/ns/net`).
    pub netns_inum: u32,
    pub kernel: KernelOffsets,
    pub kfree_skb: KfreeSkbLayout,
    pub send_reset: SendResetLayout,
    pub receive_reset: SockTpLayout,
    pub set_state: SockTpLayout,
    pub retransmit_synack: SockTpLayout,
    /// `req` field of `tcp_retransmit_synack` (unused today, kept for layout checks).
    pub synack_req: u16,
    /// `sock.sk_err`: the error a dialling socket closed with (BTF kernels).
    pub sk_err: u16,
    pub sock: SockOffsets,
    /// With [`CONFIG_F_ATTEMPT_DROPS`]: the drop reasons reported for packets other than SYNs.
    pub drop_reasons: [u64; DROP_REASON_WORDS],
    /// With [`CONFIG_F_ATTEMPT_DROPS`]: reasons never reported, checked before the packet is
    /// read (a queue purged because its socket went away: one per connection closed with
    /// data unread, in every namespace).
    pub teardown_reasons: [u64; DROP_REASON_WORDS],
    /// Records per CPU in the SYN log (a power of two); `SYN_LOG` holds this many per
    /// possible CPU.
    pub syn_slots_per_cpu: u32,
    /// This kernel's number for the drop reason NO_SOCKET (0: none).
    pub no_socket_reason: u32,
}

impl Config {
    pub const DEFAULT: Self = Self {
        flags: 0,
        netns_inum: 0,
        kernel: KernelOffsets::ABSENT,
        kfree_skb: KfreeSkbLayout {
            skbaddr: FIELD_ABSENT,
            location: FIELD_ABSENT,
            protocol: FIELD_ABSENT,
            reason: FIELD_ABSENT,
        },
        send_reset: SendResetLayout {
            skbaddr: FIELD_ABSENT,
            state: FIELD_ABSENT,
            reason: FIELD_ABSENT,
            sockaddr_saddr: FIELD_ABSENT,
            sockaddr_daddr: FIELD_ABSENT,
            _pad: 0,
            split: SockTpLayout::ABSENT,
        },
        receive_reset: SockTpLayout::ABSENT,
        set_state: SockTpLayout::ABSENT,
        retransmit_synack: SockTpLayout::ABSENT,
        synack_req: FIELD_ABSENT,
        sk_err: FIELD_ABSENT,
        sock: SockOffsets::ABSENT,
        drop_reasons: [0; DROP_REASON_WORDS],
        teardown_reasons: [0; DROP_REASON_WORDS],
        syn_slots_per_cpu: 1,
        no_socket_reason: 0,
    };
}

const _: () = assert!(size_of::<Config>().is_multiple_of(8));

/// Number of u64 words in the watched-port bitmap (`PORTS` array map): one bit per port.
pub const PORT_BITMAP_WORDS: u32 = 65536 / 64;

/// Words of the edge pre-filter bitmaps (`EDGE_V4_PREFILTER`, `EDGE_V6_PREFILTER`): one bit
/// per value of an address's first 16 bits.
pub const PREFILTER_WORDS: u32 = 65536 / 64;

/// Words of the IPv4 /24 bitmaps (`EDGE_V4_FULL24`, `EDGE_V4_PART24`): one bit per /24.
pub const SLASH24_WORDS: u32 = (1 << 24) / 64;

/// Key of `ARRIVALS`: a peer's address and port as the SYN arrived at the watched interface,
/// which DNAT leaves alone. IPv4 addresses use the first 4 bytes, zeros after. Aligned to
/// words so the kernel compares keys five words at a time.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArrivalKey {
    pub addr: [u8; 16],
    pub port: u16,
    /// 4 or 6.
    pub family: u16,
}

const _: () = assert!(size_of::<ArrivalKey>() == 20);

/// Key data of the IPv4 LPM trie (`EDGE_V4`).
pub type Ipv4Key = [u8; 4];
/// Key data of the IPv6 LPM trie (`EDGE_V6`).
pub type Ipv6Key = [u8; 16];

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for SynRecord {}
    unsafe impl aya::Pod for SynCursor {}
    unsafe impl aya::Pod for ArrivalKey {}
    unsafe impl aya::Pod for ListenBudget {}
    unsafe impl aya::Pod for FlowState {}
    unsafe impl aya::Pod for FlowSlot {}
    unsafe impl aya::Pod for ExchangeSample {}
    unsafe impl aya::Pod for ArrivalSlot {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    fn words(addr: [u8; 4], port: u16) -> [u32; 5] {
        let key = ArrivalKey {
            addr: [
                addr[0], addr[1], addr[2], addr[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
            port,
            family: 4,
        };
        // SAFETY: 20 bytes aligned to 4, as the kernel reads it.
        unsafe { *(&key as *const ArrivalKey).cast::<[u32; 5]>() }
    }

    #[test]
    fn a_sample_takes_its_share_of_one_address_s_ports_across_the_table() {
        // 1 in 16 of 20,000 ports of one address: about 1,250, and spread over the buckets
        // (not piled into the few whose index shares the sample's bits).
        for shift in [0, 4, SAMPLE_SHIFT_MAX] {
            let taken: Vec<[u32; 5]> = (1024..21024u16)
                .map(|p| words([173, 245, 48, 10], p))
                .filter(|w| in_exchange_sample(w, shift))
                .collect();
            let expected = 20_000 >> shift;
            assert!(
                taken.len().abs_diff(expected) <= expected / 5 + 10,
                "shift {shift}: {} taken",
                taken.len()
            );
            let mut buckets: Vec<u32> = taken
                .iter()
                .map(|w| slot_bucket(w, EXCHANGE_FLOWS))
                .collect();
            buckets.sort_unstable();
            buckets.dedup();
            assert!(
                buckets.len() * 10 >= taken.len() * 8,
                "shift {shift}: piled up"
            );
        }
        // Past the largest shift: the largest.
        let w = words([173, 245, 48, 10], 5000);
        assert_eq!(
            in_exchange_sample(&w, 31),
            in_exchange_sample(&w, SAMPLE_SHIFT_MAX)
        );
    }

    #[test]
    fn buckets_stay_in_the_table_and_spread_one_address_s_ports() {
        // The edge connects from few addresses and many ports: 20,000 ports of one address
        // into 32,768 buckets must not pile up (an even spread leaves ~54% of them used, so
        // few connections share a bucket of two).
        let mut used = [0u8; (EXCHANGE_FLOWS / 2) as usize];
        for port in 1024..21024u16 {
            let b = slot_bucket(&words([173, 245, 48, 10], port), EXCHANGE_FLOWS);
            assert!(b.is_multiple_of(2) && b + 1 < EXCHANGE_FLOWS);
            used[(b / 2) as usize] = used[(b / 2) as usize].saturating_add(1);
        }
        let over_two = used.iter().filter(|&&n| n > 2).count();
        assert!(
            over_two < 600,
            "{over_two} buckets hold more than two connections"
        );
        let b = slot_bucket(&words([173, 245, 48, 10], 80), ARRIVAL_SLOTS);
        assert!(b.is_multiple_of(2) && b + 1 < ARRIVAL_SLOTS);
        // Addresses differ in the bucket as ports do.
        assert_ne!(
            slot_bucket(&words([173, 245, 48, 10], 5000), EXCHANGE_FLOWS),
            slot_bucket(&words([173, 245, 48, 11], 5000), EXCHANGE_FLOWS)
        );
    }
}

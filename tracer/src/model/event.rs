//! The typed internal event: each kernel record decoded once, here, into kinds, flags, states,
//! reasons and namespaces as types. Correlation works on this; the `tracer events` schema is a
//! view of it built at output (`events.rs`).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::SystemTime,
};

use tracer_common::{
    EventKind, SynRecord, EVENT_F_EDGE, EVENT_F_EGRESS, EVENT_F_FORWARDED, EVENT_F_HAS_REASON,
    EVENT_F_HAS_SOCK, EVENT_F_HAS_TCP,
};

use crate::{
    model::clock::{Clock, JiffiesClock},
    reasons::{Reason, ReasonTable},
};

/// What a kernel event records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A SYN to a watched port arrived at the watched interface.
    Syn,
    /// The kernel freed a TCP packet of a watched flow with a drop reason.
    Drop,
    /// The TCP stack sent a RST.
    ResetSent,
    /// The TCP stack received a RST on a socket.
    ResetReceived,
    /// A passive open completed (SYN_RECV -> ESTABLISHED).
    Established,
    /// A connection went to CLOSE.
    Closed,
    /// The origin retransmitted a SYN-ACK.
    SynackRetransmit,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Syn,
        Kind::Drop,
        Kind::ResetSent,
        Kind::ResetReceived,
        Kind::Established,
        Kind::Closed,
        Kind::SynackRetransmit,
    ];

    /// The wire name (`tracer events`, the agent's log).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Syn => "syn",
            Self::Drop => "drop",
            Self::ResetSent => "reset_sent",
            Self::ResetReceived => "reset_received",
            Self::Established => "established",
            Self::Closed => "closed",
            Self::SynackRetransmit => "synack_retransmit",
        }
    }

    /// `None` for a kernel kind that is not a connection's event (listeners: [`ListenerEvent`]).
    fn of_kernel(kind: EventKind) -> Option<Self> {
        Some(match kind {
            EventKind::Syn => Self::Syn,
            EventKind::Drop => Self::Drop,
            EventKind::ResetSent => Self::ResetSent,
            EventKind::ResetReceived => Self::ResetReceived,
            EventKind::Established => Self::Established,
            EventKind::Closed => Self::Closed,
            EventKind::SynackRetransmit => Self::SynackRetransmit,
            EventKind::Listen => return None,
        })
    }
}

/// A TCP connection's two ends from the origin's point of view, as the kernel saw them where
/// the event happened (after DNAT for a forwarded connection's events).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Flow {
    pub peer: IpAddr,
    pub peer_port: u16,
    pub local: IpAddr,
    pub local_port: u16,
}

/// The TCP header's flag bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;

    /// A SYN without ACK: a connection attempt's first packet (or its retransmission).
    pub fn is_bare_syn(self) -> bool {
        self.0 & (Self::SYN | Self::ACK) == Self::SYN
    }
}

/// `enum tcp_state`
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
    BoundInactive,
    Unknown(u8),
}

impl TcpState {
    const KNOWN: [TcpState; 13] = [
        Self::Established,
        Self::SynSent,
        Self::SynRecv,
        Self::FinWait1,
        Self::FinWait2,
        Self::TimeWait,
        Self::Close,
        Self::CloseWait,
        Self::LastAck,
        Self::Listen,
        Self::Closing,
        Self::NewSynRecv,
        Self::BoundInactive,
    ];

    pub fn from_raw(raw: u32) -> Self {
        match raw.checked_sub(1).and_then(|i| Self::KNOWN.get(i as usize)) {
            Some(s) => *s,
            None => Self::Unknown(raw.min(255) as u8),
        }
    }

    /// The kernel's number for the state.
    pub fn raw(self) -> u32 {
        match self {
            Self::Unknown(n) => u32::from(n),
            known => Self::KNOWN.iter().position(|s| *s == known).unwrap_or(0) as u32 + 1,
        }
    }

    /// Does a reset the origin sent on a socket in this state end an accepted connection?
    /// Every state from the handshake to the close does (the stack closes a socket with unread
    /// data or `SO_LINGER` 0, then resets it); a listener's or request's reset is the attempt's
    /// own answer, and a `TIME_WAIT` socket's answers a stray segment after the connection
    /// ended.
    pub fn is_after_accept(self) -> bool {
        matches!(
            self,
            Self::Established
                | Self::FinWait1
                | Self::FinWait2
                | Self::Close
                | Self::CloseWait
                | Self::LastAck
                | Self::Closing
        )
    }
}

/// The socket state an event reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// The socket's state (a reset sent from a socket).
    At(TcpState),
    /// A state change (established, closed).
    Change { old: TcpState, new: TcpState },
}

/// Which way a dropped packet was going.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Arriving at the origin (from the peer).
    In,
    /// Sent by the origin (to the peer).
    Out,
}

/// One kernel observation, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub ts: SystemTime,
    pub kind: Kind,
    pub flow: Flow,
    /// Inode of the network namespace the kernel saw it in.
    pub netns: u32,
    /// The peer is inside the watched ranges.
    pub edge: bool,
    /// The kernel attributed it to an arrival by the peer's address and port: not a watched
    /// port in the tracer's own namespace (a connection the host forwarded).
    pub forwarded: bool,
    /// The packet's TCP flags and sequence number (syn, drop).
    pub tcp: Option<(TcpFlags, u32)>,
    pub state: Option<State>,
    pub reason: Option<Reason>,
    /// drop: which way the packet was going.
    pub direction: Option<Direction>,
    /// reset_sent: whether a socket matched (false: "no socket", i.e. refused).
    pub socket: Option<bool>,
}

impl Event {
    /// The packet is a bare SYN arriving from the peer: a connection attempt's first packet.
    pub fn is_inbound_syn(&self) -> bool {
        match self.kind {
            Kind::Syn => true,
            Kind::Drop => {
                self.direction != Some(Direction::Out)
                    && self.tcp.is_some_and(|(flags, _)| flags.is_bare_syn())
            }
            _ => false,
        }
    }

    pub fn seq(&self) -> Option<u32> {
        self.tcp.map(|(_, seq)| seq)
    }
}

/// An edge SYN-less event of `kind` from 173.245.48.10:`peer_port` to 192.0.2.1:443 in the
/// host's namespace, at `ms` after the epoch: what tests build recorded sequences from.
#[cfg(test)]
pub fn sample(kind: Kind, peer_port: u16, ms: u64) -> Event {
    Event {
        ts: SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms),
        kind,
        flow: Flow {
            peer: "173.245.48.10".parse().unwrap(),
            peer_port,
            local: "192.0.2.1".parse().unwrap(),
            local_port: 443,
        },
        netns: 4026531840,
        edge: true,
        forwarded: false,
        tcp: None,
        state: None,
        reason: None,
        direction: None,
        socket: None,
    }
}

/// A socket on a watched port started (`up`) or stopped listening, in any namespace, and the
/// task that did it (for a crash, the dying process). The change journal's listener changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerEvent {
    pub ts: SystemTime,
    pub up: bool,
    pub addr: IpAddr,
    pub port: u16,
    pub netns: u32,
    pub pid: u32,
    comm: [u8; 16],
}

impl ListenerEvent {
    /// The task's command name.
    pub fn comm(&self) -> String {
        let end = self.comm.iter().position(|&b| b == 0).unwrap_or(16);
        String::from_utf8_lossy(&self.comm[..end]).into_owned()
    }

    #[cfg(test)]
    pub fn sample(up: bool, addr: IpAddr, port: u16, netns: u32, pid: u32, comm: &str) -> Self {
        let mut c = [0u8; 16];
        let n = comm.len().min(15);
        c[..n].copy_from_slice(&comm.as_bytes()[..n]);
        Self {
            ts: SystemTime::now(),
            up,
            addr,
            port,
            netns,
            pid,
            comm: c,
        }
    }
}

/// What the capture hands out: events, and the kernel's word that it lost some.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    Event(Event),
    /// A listener on a watched port opened or closed.
    Listener(ListenerEvent),
    /// Events the kernel could not queue since the previous loss record.
    Loss {
        ts: SystemTime,
        count: u64,
    },
}

fn addr(family: u16, bytes: &[u8; 16]) -> Option<IpAddr> {
    match family {
        4 => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        6 => Some(IpAddr::V6(Ipv6Addr::from(*bytes)).to_canonical()),
        _ => None,
    }
}

/// Decodes a ring record: a connection's event or a listener's change; `None` for a kind or
/// family this build does not know.
pub fn decode_record(
    raw: &tracer_common::Event,
    clock: &Clock,
    reasons: &ReasonTable,
) -> Option<Record> {
    if EventKind::from_u32(u32::from(raw.kind))? != EventKind::Listen {
        return decode(raw, clock, reasons).map(Record::Event);
    }
    const TCP_LISTEN: u32 = 10;
    Some(Record::Listener(ListenerEvent {
        ts: clock.wall(raw.ts_ns),
        up: raw.state & 0xff == TCP_LISTEN,
        addr: addr(raw.family, &raw.local_addr)?,
        port: raw.local_port,
        netns: raw.netns,
        // pid_tgid: the process (thread group) id is the high half.
        pid: (raw.aux >> 32) as u32,
        comm: raw.peer_addr,
    }))
}

/// Decodes a ring event of a connection; `None` for a kind or family this build does not know.
pub fn decode(raw: &tracer_common::Event, clock: &Clock, reasons: &ReasonTable) -> Option<Event> {
    let kind = Kind::of_kernel(EventKind::from_u32(u32::from(raw.kind))?)?;
    let has = |f: u32| raw.flags & f != 0;
    let reason = match (has(EVENT_F_HAS_REASON), kind) {
        (true, Kind::Drop) => Some(reasons.drop_reason(raw.reason)),
        (true, _) => Some(Reason::Reset { code: raw.reason }),
        // Before 5.17: the function that freed it, where it tells (`aux` is the location).
        (false, Kind::Drop) if raw.aux != 0 => reasons.drop_reason_at(raw.aux),
        (false, _) => None,
    };
    let state = match kind {
        Kind::ResetSent if has(EVENT_F_HAS_SOCK) => Some(State::At(TcpState::from_raw(raw.state))),
        Kind::Established | Kind::Closed => Some(State::Change {
            old: TcpState::from_raw(raw.state >> 8),
            new: TcpState::from_raw(raw.state & 0xff),
        }),
        _ => None,
    };
    Some(Event {
        ts: clock.wall(raw.ts_ns),
        kind,
        flow: Flow {
            peer: addr(raw.family, &raw.peer_addr)?,
            peer_port: raw.peer_port,
            local: addr(raw.family, &raw.local_addr)?,
            local_port: raw.local_port,
        },
        netns: raw.netns,
        edge: has(EVENT_F_EDGE),
        forwarded: has(EVENT_F_FORWARDED),
        tcp: has(EVENT_F_HAS_TCP).then_some((TcpFlags(raw.tcp_flags as u8), raw.seq)),
        state,
        reason,
        direction: (kind == Kind::Drop).then_some(if has(EVENT_F_EGRESS) {
            Direction::Out
        } else {
            Direction::In
        }),
        socket: (kind == Kind::ResetSent).then(|| has(EVENT_F_HAS_SOCK)),
    })
}

/// Decodes a record of the SYN log: a `syn` event at the watched interface, which is in the
/// tracer's namespace (`netns`).
pub fn decode_syn(
    raw: &SynRecord,
    clock: &Clock,
    jiffies: &JiffiesClock,
    netns: u32,
) -> Option<Event> {
    let family = u16::from(raw.family);
    Some(Event {
        ts: clock.wall(jiffies.mono_ns(raw.jiffies)),
        kind: Kind::Syn,
        flow: Flow {
            peer: addr(family, &raw.peer_addr)?,
            peer_port: raw.peer_port,
            local: addr(family, &raw.local_addr)?,
            local_port: raw.local_port,
        },
        netns,
        edge: u32::from(raw.flags) & EVENT_F_EDGE != 0,
        forwarded: false,
        tcp: Some((TcpFlags(raw.tcp_flags), raw.seq)),
        state: None,
        reason: None,
        direction: None,
        socket: None,
    })
}

#[cfg(test)]
mod tests {
    use tracer_common::Event as RawEvent;

    use super::*;
    use crate::{model::clock::JiffiesSample, reasons::DropClass};

    pub fn raw(kind: EventKind) -> RawEvent {
        let mut peer = [0u8; 16];
        peer[..4].copy_from_slice(&[173, 245, 48, 10]);
        let mut local = [0u8; 16];
        local[..4].copy_from_slice(&[192, 0, 2, 1]);
        RawEvent {
            ts_ns: 1_000_000_000,
            kind: kind as u16,
            family: 4,
            netns: 4026531840,
            peer_addr: peer,
            local_addr: local,
            peer_port: 40000,
            local_port: 443,
            flags: EVENT_F_EDGE,
            reason: 0,
            state: 0,
            tcp_flags: 0,
            seq: 0,
            aux: 0,
        }
    }

    fn table() -> ReasonTable {
        ReasonTable::for_tests(&[(3, "NO_SOCKET"), (12, "NETFILTER_DROP")], &[])
    }

    #[test]
    fn a_listen_transition_decodes_to_a_listener_change() {
        let mut r = raw(EventKind::Listen);
        r.peer_addr = [0; 16];
        r.peer_addr[..5].copy_from_slice(b"nginx");
        r.local_addr = [0; 16];
        r.aux = (812u64 << 32) | 815;
        // LISTEN -> CLOSE: stopped listening.
        r.state = (10 << 8) | 7;
        let Some(Record::Listener(l)) = decode_record(&r, &Clock::now(), &table()) else {
            panic!("not a listener change");
        };
        assert!(!l.up);
        assert_eq!((l.pid, l.comm().as_str(), l.port), (812, "nginx", 443));
        assert_eq!(l.addr, "0.0.0.0".parse::<IpAddr>().unwrap());
        // CLOSE -> LISTEN: started.
        r.state = (7 << 8) | 10;
        assert!(matches!(
            decode_record(&r, &Clock::now(), &table()),
            Some(Record::Listener(ListenerEvent { up: true, .. }))
        ));
        // A connection's event still decodes as one.
        assert!(matches!(
            decode_record(&raw(EventKind::Established), &Clock::now(), &table()),
            Some(Record::Event(_))
        ));
    }

    #[test]
    fn a_netfilter_drop_decodes_to_types() {
        let mut r = raw(EventKind::Drop);
        r.flags |= EVENT_F_HAS_REASON | EVENT_F_HAS_TCP | EVENT_F_FORWARDED;
        r.reason = 12;
        r.tcp_flags = 0x02;
        r.seq = 77;
        r.local_port = 80;
        let e = decode(&r, &Clock::now(), &table()).unwrap();
        assert_eq!(e.kind, Kind::Drop);
        assert_eq!(e.flow.peer, "173.245.48.10".parse::<IpAddr>().unwrap());
        assert_eq!(e.flow.local_port, 80);
        assert_eq!(
            e.reason,
            Some(Reason::Drop {
                code: 12,
                class: DropClass::Filter
            })
        );
        assert_eq!(e.tcp, Some((TcpFlags(TcpFlags::SYN), 77)));
        assert_eq!(e.direction, Some(Direction::In));
        assert!(e.edge && e.forwarded && e.is_inbound_syn());
        assert_eq!(e.netns, 4026531840);
    }

    #[test]
    fn refusals_states_and_ipv6() {
        let mut r = raw(EventKind::ResetSent);
        r.flags |= EVENT_F_HAS_REASON;
        r.reason = 1;
        let e = decode(&r, &Clock::now(), &table()).unwrap();
        assert_eq!(e.socket, Some(false));
        assert_eq!(e.state, None);
        assert_eq!(e.reason, Some(Reason::Reset { code: 1 }));

        let mut r = raw(EventKind::Established);
        r.family = 6;
        r.peer_addr = "2606:4700::10".parse::<Ipv6Addr>().unwrap().octets();
        r.state = (3 << 8) | 1;
        r.flags = 0;
        let e = decode(&r, &Clock::now(), &table()).unwrap();
        assert_eq!(e.flow.peer, "2606:4700::10".parse::<IpAddr>().unwrap());
        assert_eq!(
            e.state,
            Some(State::Change {
                old: TcpState::SynRecv,
                new: TcpState::Established
            })
        );
        assert!(!e.edge && !e.forwarded);
    }

    #[test]
    fn unknown_kind_or_family_is_skipped() {
        let mut r = raw(EventKind::Syn);
        r.kind = 99;
        assert!(decode(&r, &Clock::now(), &table()).is_none());
        let mut r = raw(EventKind::Drop);
        r.family = 9;
        assert!(decode(&r, &Clock::now(), &table()).is_none());
    }

    #[test]
    fn a_syn_record_decodes_in_the_tracers_namespace() {
        let mut peer = [0u8; 16];
        peer[..4].copy_from_slice(&[173, 245, 48, 10]);
        let mut local = [0u8; 16];
        local[..4].copy_from_slice(&[192, 0, 2, 1]);
        let r = SynRecord {
            jiffies: 1000,
            ring_pos: 0,
            peer_addr: peer,
            local_addr: local,
            peer_port: 40000,
            local_port: 443,
            seq: 9,
            _pad: 0,
            family: 4,
            tcp_flags: 0x02,
            flags: EVENT_F_EDGE as u16,
        };
        let clock = Clock::now();
        let jiffies = JiffiesClock::new(JiffiesSample {
            jiffies: 1002,
            mono_ns: 50_000_000,
        });
        let e = decode_syn(&r, &clock, &jiffies, 7).unwrap();
        assert_eq!(e.ts, clock.wall(42_000_000));
        assert_eq!(e.kind, Kind::Syn);
        assert_eq!(e.flow.local, "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!((e.flow.peer_port, e.flow.local_port), (40000, 443));
        assert_eq!(e.tcp, Some((TcpFlags(0x02), 9)));
        assert!(e.edge && e.is_inbound_syn());
        assert_eq!(e.netns, 7);
    }

    #[test]
    fn tcp_states_round_trip_and_resets_after_accept() {
        for raw in 1..=13 {
            assert_eq!(TcpState::from_raw(raw).raw(), raw);
        }
        assert_eq!(TcpState::from_raw(99), TcpState::Unknown(99));
        assert_eq!(TcpState::from_raw(10), TcpState::Listen);
        for s in [
            TcpState::Established,
            TcpState::CloseWait,
            TcpState::FinWait1,
            TcpState::Close,
        ] {
            assert!(s.is_after_accept(), "{s:?}");
        }
        for s in [
            TcpState::Listen,
            TcpState::SynRecv,
            TcpState::NewSynRecv,
            TcpState::TimeWait,
        ] {
            assert!(!s.is_after_accept(), "{s:?}");
        }
    }
}

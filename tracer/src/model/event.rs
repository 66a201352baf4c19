//! The typed internal event: each kernel record decoded once, here, into kinds, flags, states,
//! reasons and namespaces as types. Correlation works on this; the `tracer events` schema is a
//! view of it built at output (`events.rs`).

use std::{net::IpAddr, time::SystemTime};

use tracer_common::EventKind;

use crate::reasons::Reason;

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
    pub(super) fn of_kernel(kind: EventKind) -> Option<Self> {
        Some(match kind {
            EventKind::Syn => Self::Syn,
            EventKind::Drop => Self::Drop,
            EventKind::ResetSent => Self::ResetSent,
            EventKind::ResetReceived => Self::ResetReceived,
            EventKind::Established => Self::Established,
            EventKind::Closed => Self::Closed,
            EventKind::SynackRetransmit => Self::SynackRetransmit,
            EventKind::Listen
            | EventKind::ResponseBegan
            | EventKind::OriginClosed
            | EventKind::RequestAfterClose
            | EventKind::ExchangeReset
            | EventKind::Dial => return None,
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
    /// Raw (NUL-padded); read it with [`ListenerEvent::comm`].
    pub(super) comm: [u8; 16],
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
    /// A step of an edge connection's exchange (request, response, close).
    Exchange(super::exchange::ExchangeEvent),
    /// A step of a tunnel process's connection out (to its service or to the edge).
    Dial(super::dial::DialEvent),
    /// Events the kernel could not queue since the previous loss record.
    Loss {
        ts: SystemTime,
        count: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

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

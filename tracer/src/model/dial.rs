//! A tunnel process's outgoing connection, step by step: what `cloudflared` dialled and what
//! the kernel answered. Decoded once from the ring's `Dial` records.

use std::{net::SocketAddr, time::SystemTime};

use crate::reasons::Reason;

/// One step of a followed process's connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DialEvent {
    pub ts: SystemTime,
    /// The dialling process (thread group id).
    pub pid: u32,
    /// The network namespace the socket is in.
    pub netns: u32,
    /// The address and port dialled.
    pub target: SocketAddr,
    pub step: DialStep,
}

/// What became of a dial.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DialStep {
    /// connect(): the SYN goes out.
    Connecting,
    /// The handshake completed.
    Connected,
    /// It never connected: the socket's error says why (`None`: unknown on this kernel).
    Failed(Option<SocketError>),
    /// An established connection ended with an error (a reset).
    Ended(Option<SocketError>),
    /// The kernel dropped one of its SYNs (a firewall rule, a null route...), for the reason
    /// it gave (`None`: a kernel without drop reasons). Retransmissions are dropped again.
    SynDropped(Option<Reason>),
}

/// The error a socket closed with (`sk_err`), as an errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketError(pub u32);

impl SocketError {
    pub const NONE: u32 = 0;
    pub const EPERM: u32 = 1;
    pub const EPIPE: u32 = 32;
    pub const ENETUNREACH: u32 = 101;
    pub const ECONNRESET: u32 = 104;
    pub const ETIMEDOUT: u32 = 110;
    pub const ECONNREFUSED: u32 = 111;
    pub const EHOSTUNREACH: u32 = 113;

    /// The C name, as `strace` and the kernel's headers spell it.
    pub fn name(self) -> String {
        match self.0 {
            Self::NONE => "closed by the process".into(),
            Self::EPERM => "EPERM".into(),
            Self::EPIPE => "EPIPE".into(),
            Self::ENETUNREACH => "ENETUNREACH".into(),
            Self::ECONNRESET => "ECONNRESET".into(),
            Self::ETIMEDOUT => "ETIMEDOUT".into(),
            Self::ECONNREFUSED => "ECONNREFUSED".into(),
            Self::EHOSTUNREACH => "EHOSTUNREACH".into(),
            n => format!("errno {n}"),
        }
    }
}

/// `enum tcp_state` numbers the steps are read from.
const TCP_ESTABLISHED: u32 = 1;
const TCP_SYN_SENT: u32 = 2;
const TCP_CLOSE: u32 = 7;

/// The step a `Dial` record's `old << 8 | new` state and error stand for; for a dropped SYN
/// (`DIAL_SYN_DROPPED`), `drop_reason` names its reason.
pub fn step_of(
    state: u32,
    error: Option<u32>,
    drop_reason: impl Fn(u32) -> Reason,
) -> Option<DialStep> {
    let (old, new) = (state >> 8, state & 0xff);
    if new == tracer_common::DIAL_SYN_DROPPED {
        return Some(DialStep::SynDropped(error.map(drop_reason)));
    }
    let error = error.map(SocketError);
    Some(match (old, new) {
        (_, TCP_SYN_SENT) => DialStep::Connecting,
        (TCP_SYN_SENT, TCP_ESTABLISHED) => DialStep::Connected,
        (TCP_SYN_SENT, TCP_CLOSE) => DialStep::Failed(error),
        (_, TCP_CLOSE) => DialStep::Ended(error),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_errors_are_steps() {
        let table = crate::reasons::ReasonTable::for_tests(&[(6, "NETFILTER_DROP")], &[]);
        let step_of = |state, error| step_of(state, error, |c| table.drop_reason(c));
        assert_eq!(step_of(7 << 8 | 2, None), Some(DialStep::Connecting));
        assert_eq!(step_of(2 << 8 | 1, None), Some(DialStep::Connected));
        assert_eq!(
            step_of(2 << 8 | 7, Some(111)),
            Some(DialStep::Failed(Some(SocketError(111))))
        );
        assert_eq!(
            step_of(1 << 8 | 7, Some(104)),
            Some(DialStep::Ended(Some(SocketError(104))))
        );
        assert_eq!(step_of(1 << 8 | 4, None), None);
        assert_eq!(
            step_of(2 << 8 | tracer_common::DIAL_SYN_DROPPED, Some(6)),
            Some(DialStep::SynDropped(Some(table.drop_reason(6))))
        );
        assert_eq!(
            step_of(2 << 8 | tracer_common::DIAL_SYN_DROPPED, None),
            Some(DialStep::SynDropped(None))
        );
        assert_eq!(SocketError(111).name(), "ECONNREFUSED");
        assert_eq!(SocketError(0).name(), "closed by the process");
        assert_eq!(SocketError(99).name(), "errno 99");
    }
}

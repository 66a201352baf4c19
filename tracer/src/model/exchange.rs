//! One step of an edge exchange, as the kernel saw it (`tracer-ebpf/src/exchange.rs`):
//! requests arriving, read, answered, and connections the origin closed.

use std::{net::IpAddr, time::Duration, time::SystemTime};

/// The task that read a request: pid and comm (NUL-padded).
pub type Task = (u32, [u8; 16]);

/// What happened on an edge connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The first response byte left, for the request that began at `request_at` (the edge's
    /// payload on a connection with none pending); `reader`: the task that had read it.
    ResponseBegan {
        request_at: SystemTime,
        reader: Option<Task>,
    },
    /// The origin closed the connection first, `idle` after the last payload either way
    /// (`None` when the kernel's tick could not be converted); `pending`: a request was
    /// still waiting for its response.
    OriginClosed {
        idle: Option<Duration>,
        pending: bool,
    },
    /// The edge sent on a connection the origin had closed: the request meets a reset.
    RequestAfterClose,
    /// The connection was reset with a request waiting (`by_origin`: the origin sent the RST).
    Reset { by_origin: bool },
}

/// A step of the exchange on the edge connection from `peer`:`peer_port` to `local_port`
/// (the port as it arrived: before DNAT for a forwarded connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExchangeEvent {
    pub ts: SystemTime,
    pub peer: IpAddr,
    pub peer_port: u16,
    pub local_port: u16,
    pub step: Step,
}

/// A request still waiting for its first response byte, read from the kernel's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitingRequest {
    pub peer: IpAddr,
    pub peer_port: u16,
    pub local_port: u16,
    pub since: SystemTime,
    pub reader: Option<Task>,
}

/// A task's comm, as text.
pub fn comm_text(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(16);
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

//! One step of an edge exchange, as the kernel saw it (`tracer-ebpf/src/exchange.rs`):
//! requests arriving, read, answered, and connections the origin closed.

use std::{net::IpAddr, time::Duration, time::SystemTime};

/// What happened on an edge connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The edge sent a request (payload with none pending).
    RequestBegan,
    /// The application read the pending request: the reading task.
    RequestRead { pid: u32, comm: [u8; 16] },
    /// The first response byte left; `read`: the application had read the request by then.
    ResponseBegan { read: bool },
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
/// (the port as it arrived: before DNAT for a forwarded connection, except for `RequestRead`,
/// which the application's socket reports after it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExchangeEvent {
    pub ts: SystemTime,
    pub peer: IpAddr,
    pub peer_port: u16,
    pub local_port: u16,
    pub step: Step,
}

/// A task's comm, as text.
pub fn comm_text(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(16);
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

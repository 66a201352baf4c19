//! One step of an edge exchange, as the kernel saw it (`tracer-ebpf/src/exchange.rs`):
//! requests arriving, answered, and connections the origin closed; and what a look at a
//! waiting request's socket found (`origin::request_sockets`): read or not, and by whom.

use std::{net::IpAddr, time::Duration, time::SystemTime};

/// A process: pid and comm (NUL-padded).
pub type Task = (u32, [u8; 16]);

/// What happened on an edge connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The first response byte left, for the request that began at `request_at` (the edge's
    /// payload on a connection with none pending).
    ResponseBegan { request_at: SystemTime },
    /// The socket of the request waiting since `request_at`, looked at in the kernel's socket
    /// tables: `read` when nothing waits in its receive queue (the application took the
    /// request), and the process holding it (none while it waits to be accepted).
    Looked {
        request_at: SystemTime,
        read: bool,
        holder: Option<Task>,
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
    /// The kernel's tick of the connection's last payload, compared between looks only (has
    /// more of the request arrived since?).
    pub last_tick: u64,
}

/// A comm as the kernel keeps it (16 bytes, NUL-padded, cut at 15).
pub fn comm_bytes(comm: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    let n = comm.len().min(15);
    out[..n].copy_from_slice(&comm.as_bytes()[..n]);
    out
}

/// A task's comm, as text.
pub fn comm_text(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(16);
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

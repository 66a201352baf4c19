//! The report's `tunnel` object: the Cloudflare Tunnel processes found and what was watched
//! of them (null when none ran).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    correlate::{
        dials::DialCounts,
        tunnel::{ServiceDials, TunnelSeen},
    },
    model::dial::SocketError,
};

#[derive(Serialize)]
pub struct TunnelJson<'a> {
    /// The process name looked for (`--tunnel-process`).
    process_name: &'a str,
    processes: Vec<ProcessJson<'a>>,
    /// Any of them still ran at the window's end.
    running: bool,
    /// Dials to anything but the edge: the services behind the tunnel.
    services: Vec<ServiceJson>,
    /// Dials to the edge and the connections held to it.
    edge: EdgeJson,
}

#[derive(Serialize)]
struct ProcessJson<'a> {
    pid: u32,
    name: &'a str,
    netns: Option<u32>,
    container: Option<&'a str>,
}

/// What became of dials, as counts and by the socket's error.
#[derive(Serialize)]
struct DialsJson {
    dials: u64,
    connected: u64,
    /// Never connected, with an error.
    failed: u64,
    /// No answer by the window's end.
    unanswered: u64,
    /// Reset after connecting.
    resets: u64,
    /// Given up by the process itself (the slower of two dials).
    abandoned: u64,
    /// Failures and resets by the socket's error (`ECONNREFUSED`, `ETIMEDOUT`, …;
    /// `unknown` on a kernel without BTF).
    errors: BTreeMap<String, u64>,
    /// SYNs of these dials the kernel dropped, by its drop reason (`NETFILTER_DROP`, …;
    /// `unknown` on a kernel without drop reasons).
    syn_drops: BTreeMap<String, u64>,
}

impl DialsJson {
    fn of(c: &DialCounts, t: &TunnelSeen) -> Self {
        let mut errors = BTreeMap::new();
        let name = |e: &Option<SocketError>| e.map_or("unknown".to_string(), |e| e.name());
        for (e, n) in c.failed.iter().chain(&c.ended) {
            if *e != Some(SocketError(SocketError::NONE)) {
                *errors.entry(name(e)).or_default() += n;
            }
        }
        // Two numbers the kernel does not name are both "unknown": summed.
        let mut syn_drops = BTreeMap::new();
        for (r, n) in &c.syn_drops {
            *syn_drops.entry(t.drop_name(*r).to_string()).or_default() += n;
        }
        Self {
            dials: c.dials,
            connected: c.connected,
            failed: c.failures(),
            unanswered: c.unanswered(),
            resets: c.resets(),
            abandoned: c.abandoned(),
            errors,
            syn_drops,
        }
    }
}

#[derive(Serialize)]
struct ServiceJson {
    /// The address and port dialled: `[::1]:8080`.
    target: String,
    #[serde(flatten)]
    dials: DialsJson,
    /// What listens on that port in the dialling process's namespace.
    listeners: Vec<String>,
    /// The target is an address of that namespace (null: not readable).
    on_this_host: Option<bool>,
}

impl ServiceJson {
    fn of(s: &ServiceDials, t: &TunnelSeen) -> Self {
        Self {
            target: s.target.to_string(),
            dials: DialsJson::of(&s.counts, t),
            listeners: s.listeners.iter().map(|l| l.endpoint()).collect(),
            on_this_host: s.on_this_host,
        }
    }
}

#[derive(Serialize)]
struct EdgeJson {
    #[serde(flatten)]
    dials: DialsJson,
    /// TCP connections to port 7844 established at the window's end (HTTP/2 transport).
    tcp_established: u32,
    tcp_connecting: u32,
    /// UDP sockets held (QUIC transport).
    udp_sockets: u32,
    /// `UdpRcvbufErrors` over the window in the processes' namespaces (null: not readable).
    udp_rcvbuf_errors: Option<u64>,
}

impl<'a> TunnelJson<'a> {
    pub fn of(t: &'a TunnelSeen) -> Self {
        Self {
            process_name: &t.name,
            processes: t
                .processes
                .iter()
                .map(|p| ProcessJson {
                    pid: p.pid,
                    name: &p.name,
                    netns: p.netns,
                    container: p.container.as_deref(),
                })
                .collect(),
            running: !t.running.is_empty(),
            services: t.services.iter().map(|s| ServiceJson::of(s, t)).collect(),
            edge: EdgeJson {
                dials: DialsJson::of(&t.edge, t),
                tcp_established: t.edge_sockets.tcp_established,
                tcp_connecting: t.edge_sockets.tcp_connecting,
                udp_sockets: t.edge_sockets.udp,
                udp_rcvbuf_errors: t.udp_rcvbuf_errors,
            },
        }
    }
}

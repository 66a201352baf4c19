//! The agent's Cloudflare Tunnel metrics: the processes watched, their dials by outcome, and
//! the connections they hold to the edge.

use anyhow::Result;
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Registry};

use super::metrics::{counter_vec, gauge, gauge_vec};
use crate::{
    correlate::tunnel::TunnelSeen,
    model::dial::{DialStep, SocketError},
    reasons::Reason,
};

/// The outcomes a dial is counted under.
const OUTCOMES: [&str; 6] = [
    "connected",
    "refused",
    "timed_out",
    "unreachable",
    "failed",
    "reset",
];

/// The outcome label of a dial's step; `None` for a connect (counted when it ends), for a
/// dial its process gave up, and for a dropped SYN (its dial ends later, timed out or given
/// up, and is counted then).
fn outcome(step: DialStep) -> Option<&'static str> {
    let failed = |e: Option<SocketError>| match e.map(|e| e.0) {
        Some(SocketError::NONE) => None,
        Some(SocketError::ECONNREFUSED) => Some("refused"),
        Some(SocketError::ETIMEDOUT) => Some("timed_out"),
        Some(SocketError::EHOSTUNREACH | SocketError::ENETUNREACH) => Some("unreachable"),
        _ => Some("failed"),
    };
    match step {
        DialStep::Connecting => None,
        DialStep::Connected => Some("connected"),
        DialStep::Failed(e) => failed(e),
        DialStep::Ended(_) => Some("reset"),
        DialStep::SynDropped(_) => None,
    }
}

pub struct TunnelMetrics {
    processes: IntGauge,
    dials: IntCounterVec,
    syn_drops: IntCounterVec,
    edge_connections: IntGaugeVec,
}

impl TunnelMetrics {
    pub fn new(r: &Registry) -> Result<Self> {
        let m = Self {
            processes: gauge(
                r,
                "tracer_tunnel_processes",
                "Cloudflare Tunnel processes (cloudflared, or --tunnel-process) running on this host.",
            )?,
            dials: counter_vec(
                r,
                "tracer_tunnel_dials_total",
                "Connections the tunnel's processes opened, by where to (`service`: what it forwards to; `edge`: Cloudflare) and outcome (connected, refused, timed_out, unreachable, failed, reset after connecting).",
                &["to", "outcome"],
            )?,
            // No series until a SYN is dropped: the reasons are the kernel's, found as they come.
            syn_drops: counter_vec(
                r,
                "tracer_tunnel_syn_drops_total",
                "SYNs of the tunnel processes' dials the kernel dropped, by where to (`service`, `edge`) and the kernel's drop reason (`NETFILTER_DROP`: a firewall rule; `unknown` on kernels without drop reasons).",
                &["to", "reason"],
            )?,
            edge_connections: gauge_vec(
                r,
                "tracer_tunnel_edge_connections",
                "What the tunnel's processes hold toward the edge at the last window's end: TCP connections to port 7844 established (`tcp`), UDP sockets for QUIC (`udp`).",
                &["transport"],
            )?,
        };
        for to in ["service", "edge"] {
            for o in OUTCOMES {
                m.dials.with_label_values(&[to, o]);
            }
        }
        for t in ["tcp", "udp"] {
            m.edge_connections.with_label_values(&[t]);
        }
        Ok(m)
    }

    /// One dial's step; `edge` says where it went; `drop_name` names a dropped SYN's reason.
    pub fn dial(&self, edge: bool, step: DialStep, drop_name: impl Fn(Reason) -> String) {
        let to = if edge { "edge" } else { "service" };
        if let Some(o) = outcome(step) {
            self.dials.with_label_values(&[to, o]).inc();
        }
        if let DialStep::SynDropped(r) = step {
            let reason = r.map_or_else(|| "unknown".to_string(), drop_name);
            self.syn_drops.with_label_values(&[to, &reason]).inc();
        }
    }

    /// At a window's end.
    pub fn window(&self, running: usize, seen: Option<&TunnelSeen>) {
        self.processes.set(running as i64);
        let s = seen.map(|s| s.edge_sockets).unwrap_or_default();
        self.edge_connections
            .with_label_values(&["tcp"])
            .set(i64::from(s.tcp_established));
        self.edge_connections
            .with_label_values(&["udp"])
            .set(i64::from(s.udp));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_counted_under_their_outcome() {
        let e = |n| Some(SocketError(n));
        assert_eq!(outcome(DialStep::Connecting), None);
        assert_eq!(outcome(DialStep::Connected), Some("connected"));
        assert_eq!(outcome(DialStep::Failed(e(111))), Some("refused"));
        assert_eq!(outcome(DialStep::Failed(e(110))), Some("timed_out"));
        assert_eq!(outcome(DialStep::Failed(e(113))), Some("unreachable"));
        assert_eq!(outcome(DialStep::Failed(e(0))), None);
        assert_eq!(outcome(DialStep::Failed(None)), Some("failed"));
        assert_eq!(outcome(DialStep::Ended(e(104))), Some("reset"));
        assert_eq!(outcome(DialStep::SynDropped(None)), None);
    }

    #[test]
    fn dropped_syns_are_counted_by_reason() {
        let r = Registry::new();
        let m = TunnelMetrics::new(&r).unwrap();
        let table = crate::reasons::ReasonTable::for_tests(&[(6, "NETFILTER_DROP")], &[]);
        let name = |x| table.name(x).into_owned();
        m.dial(
            false,
            DialStep::SynDropped(Some(table.drop_reason(6))),
            name,
        );
        m.dial(
            false,
            DialStep::SynDropped(Some(table.drop_reason(6))),
            name,
        );
        m.dial(true, DialStep::SynDropped(None), name);
        assert_eq!(
            m.syn_drops
                .with_label_values(&["service", "NETFILTER_DROP"])
                .get(),
            2
        );
        assert_eq!(m.syn_drops.with_label_values(&["edge", "unknown"]).get(), 1);
    }
}

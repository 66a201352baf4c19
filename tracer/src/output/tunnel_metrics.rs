//! The agent's Cloudflare Tunnel metrics: the processes watched, their dials by outcome, and
//! the connections they hold to the edge.

use anyhow::Result;
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Registry};

use super::metrics::{counter_vec, gauge, gauge_vec};
use crate::{
    correlate::tunnel::TunnelSeen,
    model::dial::{DialStep, SocketError},
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

    /// One dial's step; `edge` says where it went.
    pub fn dial(&self, edge: bool, step: DialStep) {
        if let Some(o) = outcome(step) {
            self.dials
                .with_label_values(&[if edge { "edge" } else { "service" }, o])
                .inc();
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
    }
}

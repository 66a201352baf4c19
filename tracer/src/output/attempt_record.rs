//! The agent's `attempt` log line: one per connection attempt that did not end in a
//! handshake, written when the attempt is over, with how many SYNs it took. A view of the
//! correlator's [`Attempt`], built at output; `deploy/schema/log-record.schema.json` describes
//! it.
//!
//! One line per attempt, not per packet: during a firewall incident each attempt's SYN is
//! retransmitted 2–6 times, and a line per retransmission tripled the log for nothing.

use std::{net::IpAddr, time::SystemTime};

use serde::Serialize;

use crate::{
    correlate::{Attempt, Backend},
    reasons::{Name, ReasonTable},
};

#[derive(Debug, Serialize)]
pub struct AttemptRecord {
    /// When the attempt was last seen (RFC 3339).
    pub ts: String,
    /// Always "attempt".
    pub kind: &'static str,
    /// [`super::LOG_SCHEMA`].
    pub schema: u32,
    pub outcome: &'static str,
    /// The origin reset the connection after its handshake completed (counted as a handshake
    /// in the metrics, and in `tracer_edge_resets_after_handshake_total`).
    pub after_handshake: bool,
    pub peer_addr: IpAddr,
    pub peer_port: u16,
    pub local_addr: IpAddr,
    pub local_port: u16,
    pub edge: bool,
    /// SYNs of this attempt that reached the interface (1 + retransmissions).
    pub syns: u32,
    /// SYN-ACKs the origin retransmitted.
    pub synack_retransmits: u32,
    /// When its first packet was seen (RFC 3339).
    pub first: String,
    /// The kernel's name for the drop or reset reason that decided it, when there is one.
    pub reason: Option<Name>,
    /// Where the host forwarded it (DNAT), when it was answered elsewhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendView>,
    /// The kernel lost events while it was open: what became of it may be among them.
    pub events_lost: bool,
}

#[derive(Debug, Serialize)]
pub struct BackendView {
    pub addr: IpAddr,
    pub port: u16,
    pub netns: u32,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

impl AttemptRecord {
    /// `after_handshake`: handed out as a reset after the handshake, not as an ended attempt.
    pub fn of(a: &Attempt, reasons: &ReasonTable, after_handshake: bool) -> Self {
        let outcome = a.outcome();
        let reason = a.reason_for(outcome);
        Self {
            ts: rfc3339(a.last),
            kind: "attempt",
            schema: super::LOG_SCHEMA,
            outcome: outcome.as_str(),
            after_handshake,
            peer_addr: a.flow.peer,
            peer_port: a.flow.peer_port,
            local_addr: a.flow.local,
            local_port: a.flow.local_port,
            edge: a.edge,
            syns: a.syn_packets.max(1),
            synack_retransmits: a.synack_retransmits,
            first: rfc3339(a.first),
            reason: reason.map(|r| reasons.name(r)),
            backend: a.backend.map(|Backend { addr, port, netns }| BackendView {
                addr,
                port,
                netns,
            }),
            events_lost: a.events_lost,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        correlate::{Correlator, Decided},
        model::event::{sample, Kind},
    };

    /// A SYN dropped by the firewall three times (the peer retransmits): one attempt, one
    /// line, three SYNs.
    #[test]
    fn a_retransmitted_attempt_is_one_record_with_its_syn_count() {
        let table = ReasonTable::for_tests(&[(12, "NETFILTER_DROP")], &[]);
        let mut c = Correlator::live().reporting_ended();
        let t0 = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000);
        for i in 0..3u64 {
            let mut syn = sample(Kind::Syn, 40000, 443);
            syn.ts = t0 + std::time::Duration::from_secs(i);
            c.observe(&syn);
            let mut drop = sample(Kind::Drop, 40000, 443);
            drop.ts = syn.ts;
            drop.reason = Some(crate::reasons::Reason::Drop {
                code: 12,
                class: crate::reasons::DropClass::Filter,
            });
            c.observe(&drop);
        }
        let early: Vec<Decided> = c.drain_decided().collect();
        assert!(
            early.iter().all(|d| !matches!(d, Decided::Ended(_))),
            "not over yet: {early:?}"
        );
        c.take_idle(
            t0 + std::time::Duration::from_secs(60),
            std::time::Duration::from_secs(2),
            std::time::Duration::from_secs(25),
        );
        let ended: Vec<Attempt> = c
            .drain_decided()
            .filter_map(|d| match d {
                Decided::Ended(a) => Some(a),
                _ => None,
            })
            .collect();
        assert_eq!(ended.len(), 1);
        let r = AttemptRecord::of(&ended[0], &table, false);
        assert_eq!(r.outcome, "firewall_drop");
        assert_eq!(r.syns, 3);
        assert_eq!(r.reason.as_deref(), Some("NETFILTER_DROP"));
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(json["kind"], "attempt");
        assert_eq!(json["syns"], 3);
    }

    /// Healthy connections write nothing.
    #[test]
    fn a_handshake_is_not_reported_as_ended() {
        let mut c = Correlator::live().reporting_ended();
        c.observe(&sample(Kind::Syn, 40001, 443));
        c.observe(&sample(Kind::Established, 40001, 443));
        assert!(c.drain_decided().all(|d| !matches!(d, Decided::Ended(_))));
    }
}

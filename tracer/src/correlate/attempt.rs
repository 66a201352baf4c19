//! One connection attempt and everything seen of it: which events decide it, and its outcome.

use std::time::SystemTime;

use super::{Backend, Outcome};
use crate::{
    model::event::{Direction, Event, Flow, Kind, State},
    reasons::{DropClass, Reason},
};

/// The origin's answer to an attempt (its SYN-ACK) dropped on the way out, and where: in
/// this namespace's output path, or in another namespace's forward path on the same kernel
/// (the host a container or VM-like namespace replies through).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplyDrop {
    pub reason: Reason,
    /// The namespace the kernel dropped it in.
    pub netns: u32,
}

/// One connection attempt and everything seen of it.
#[derive(Clone, Debug, PartialEq)]
pub struct Attempt {
    /// As the SYN arrived at the watched interface.
    pub flow: Flow,
    pub edge: bool,
    pub first: SystemTime,
    pub last: SystemTime,
    /// Initial sequence number: a retransmitted SYN repeats it, a new attempt does not.
    pub seq: Option<u32>,
    pub syn_packets: u32,
    /// SYNs of this attempt the kernel freed (decisive or not).
    pub syn_drops: u32,
    /// SYNs freed without ending the attempt: a retransmitted SYN that met the pending
    /// request (the kernel resends its SYN-ACK and frees the SYN), a duplicate. Never a drop.
    pub syn_frees_pending: u32,
    pub established: bool,
    /// When the handshake completed (the final ACK).
    pub established_at: Option<SystemTime>,
    pub closed: bool,
    pub refused: bool,
    /// Drops seen, by class.
    pub filter_drop: Option<Reason>,
    pub overload_drop: Option<Reason>,
    pub other_drop: Option<Reason>,
    /// The origin sent RST on a socket of this flow.
    pub origin_reset: bool,
    /// ... with the kernel's reason, when it gives one (6.10+).
    pub origin_reset_reason: Option<Reason>,
    pub peer_reset: bool,
    /// The origin closed the connection first (its socket left ESTABLISHED by sending FIN).
    pub origin_closed_first: bool,
    pub synack_retransmits: u32,
    /// The origin's answer was dropped on its way out (by a filter).
    pub reply_drop: Option<ReplyDrop>,
    /// Where the host forwarded it, when it answered in another place than it arrived.
    pub backend: Option<Backend>,
    /// Live mode: the outcome already handed out (the attempt counts once).
    pub decided: Option<Outcome>,
    /// The kernel lost events while this attempt was open.
    pub events_lost: bool,
}

impl Attempt {
    pub(super) fn new(flow: Flow, ev: &Event) -> Self {
        Self {
            flow,
            edge: ev.edge,
            first: ev.ts,
            last: ev.ts,
            seq: None,
            syn_packets: 0,
            syn_drops: 0,
            syn_frees_pending: 0,
            established: false,
            established_at: None,
            closed: false,
            refused: false,
            filter_drop: None,
            overload_drop: None,
            other_drop: None,
            origin_reset: false,
            origin_reset_reason: None,
            peer_reset: false,
            origin_closed_first: false,
            synack_retransmits: 0,
            reply_drop: None,
            backend: None,
            decided: None,
            events_lost: false,
        }
    }

    /// First SYN seen to the final ACK, when both were seen. A SYN is dated to its clock tick
    /// (the SYN log's jiffies), the handshake to the nanosecond: a handshake done within the
    /// SYN's tick can appear to end before it began, and took less than the tick — zero here,
    /// never left out of the count.
    pub fn handshake_time(&self) -> Option<std::time::Duration> {
        if self.syn_packets == 0 {
            return None;
        }
        Some(
            self.established_at?
                .duration_since(self.first)
                .unwrap_or_default(),
        )
    }

    /// The kernel's reason behind `outcome` for this attempt, when it gave one.
    pub fn reason_for(&self, outcome: Outcome) -> Option<Reason> {
        match outcome {
            Outcome::FirewallDrop => self.filter_drop,
            Outcome::OverloadDrop => self.overload_drop,
            Outcome::OtherDrop => self.other_drop,
            Outcome::OriginReset => self.origin_reset_reason,
            _ => None,
        }
    }

    /// The outcome, most decisive fact first. A firewall's verdict beats the stack's: a REJECT
    /// looks like a refusal to the edge but is the firewall's.
    pub fn outcome(&self) -> Outcome {
        if self.established {
            if self.origin_reset {
                Outcome::OriginReset
            } else {
                Outcome::Handshake
            }
        } else if self.filter_drop.is_some() {
            Outcome::FirewallDrop
        } else if self.refused {
            Outcome::Refused
        } else if self.overload_drop.is_some() {
            // SYN-ACK retransmits alone stay unanswered: a full accept queue and a lost return
            // path both show them; the verdict tells them apart by the queue counters.
            Outcome::OverloadDrop
        } else if self.origin_reset {
            Outcome::OriginReset
        } else if self.other_drop.is_some() {
            Outcome::OtherDrop
        } else if self.reply_drop.is_some() {
            // Answered, and the answer dropped on its way: the edge got none.
            Outcome::Unanswered
        } else if self.events_lost {
            Outcome::Unknown
        } else {
            Outcome::Unanswered
        }
    }

    /// Nothing more is expected: later packets of this flow would be a new attempt or noise.
    pub(super) fn is_settled(&self) -> bool {
        self.closed
            || (self.refused && !self.established)
            || self.origin_reset
            // Its answer may be among lost events: waiting for more tells nothing, and the
            // window it is counted in should be the one the kernel counted its SYN in.
            || (self.events_lost && self.outcome() == Outcome::Unknown)
    }

    /// Is a connection request pending for this attempt, so that a SYN freed now for no
    /// deciding reason is a retransmission (or duplicate) the request answered, not a drop?
    /// Yes once the origin (re)sent a SYN-ACK for it, or an earlier SYN was taken without
    /// being freed. The kernel frees such a SYN after resending the SYN-ACK (reason
    /// NOT_SPECIFIED from 5.17, from `tcp_v4_rcv`/`tcp_v6_rcv` before), on every kernel.
    pub(super) fn pending_request(&self) -> bool {
        // At the free, the SYN being freed may already be counted (its arrival event came
        // first) or not (the arrival record is read from another ring).
        self.synack_retransmits > 0 || self.syn_packets > self.syn_drops + 1
    }

    /// Applies one event that belongs to this attempt.
    pub(super) fn apply(&mut self, ev: &Event, inbound_syn: bool) {
        self.last = self.last.max(ev.ts);
        self.edge |= ev.edge;
        match ev.kind {
            Kind::Syn => {
                self.syn_packets += 1;
                self.seq = self.seq.or(ev.seq());
            }
            Kind::Drop => {
                let reason = ev.reason.unwrap_or(Reason::Drop {
                    code: 0,
                    class: DropClass::Other,
                });
                let class = match reason {
                    Reason::Drop { class, .. } => class,
                    Reason::Reset { .. } => DropClass::Other,
                };
                if ev.direction == Some(Direction::Out) && !inbound_syn {
                    // The origin's own packet (its SYN-ACK) filtered on the way out — here or
                    // in the namespace it is forwarded through: the answer was lost, the SYN
                    // was not refused.
                    if !self.established && class == DropClass::Filter {
                        self.reply_drop.get_or_insert(ReplyDrop {
                            reason,
                            netns: ev.netns,
                        });
                    }
                    return;
                }
                let mut decides = class.decides_attempts();
                if inbound_syn {
                    self.seq = self.seq.or(ev.seq());
                    if self.syn_packets == 0 {
                        // The NIC hook did not see it (another interface): the drop proves it came.
                        self.syn_packets = 1;
                    }
                    decides = if self.pending_request() {
                        // Only a reason that ends attempts whatever was pending: a filter, no
                        // queue room, or the kernel's own NO_SOCKET (the listener went away).
                        matches!(class, DropClass::Filter | DropClass::Overload)
                            || (class == DropClass::NoSocket && !reason.by_location())
                    } else {
                        true
                    };
                    self.syn_drops += 1;
                    if !decides {
                        self.syn_frees_pending += 1;
                    }
                }
                // A packet other than the SYN decides the attempt only when dropped for a
                // reason that can (refused, filtered, no queue room) — what the kernel filters
                // itself when it gives reasons; before 5.17 every free of any packet is a
                // "drop", so the rule is applied here. See [`Attempt::pending_request`] for
                // a SYN freed without ending its attempt.
                if !self.established && decides {
                    match reason {
                        Reason::Drop { class, .. } => match class {
                            DropClass::NoSocket => self.refused = true,
                            DropClass::Filter => self.filter_drop = Some(reason),
                            DropClass::Overload => self.overload_drop = Some(reason),
                            DropClass::Teardown => {}
                            DropClass::Other => self.other_drop = Some(reason),
                        },
                        Reason::Reset { .. } => self.other_drop = Some(reason),
                    }
                }
            }
            Kind::ResetSent => {
                if ev.socket == Some(false) {
                    if !self.established {
                        self.refused = true;
                    }
                } else {
                    self.origin_reset = true;
                    self.origin_reset_reason = ev.reason;
                }
            }
            Kind::ResetReceived => self.peer_reset = true,
            Kind::Established => {
                self.established = true;
                self.established_at.get_or_insert(ev.ts);
            }
            Kind::Closed => {
                self.closed = true;
                // The state the socket closed from: FIN_WAIT1/2, TIME_WAIT or CLOSING mean
                // this side sent the first FIN; LAST_ACK means the peer did.
                if let Some(State::Change { old, .. }) = ev.state {
                    if matches!(old.raw(), 4 | 5 | 6 | 11) {
                        self.origin_closed_first = true;
                    }
                }
            }
            Kind::SynackRetransmit => self.synack_retransmits += 1,
        }
    }
}

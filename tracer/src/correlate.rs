//! From events to connection attempts: from the SYN at the watched interface to its outcome,
//! wherever the origin answers it. Shared by `diagnose` (one window) and `agent` (rolling).
//!
//! An attempt is keyed by its flow as it arrived. Events of the same flow seen in the tracer's
//! namespace count for it directly; events of a connection the host forwarded (DNAT to a
//! container: another namespace, rewritten local address and port) are matched by what DNAT
//! leaves alone — the peer's address and port — and record where the attempt went
//! ([`Backend`]).

use std::{
    collections::{hash_map::Entry, HashMap},
    net::IpAddr,
    time::{Duration, SystemTime},
};

use serde::Serialize;

use crate::{
    model::event::{Direction, Event, Flow, Kind, Record, State},
    reasons::{DropClass, Reason},
};

/// foldhash, seeded per process: SipHash was a quarter of the agent's time at 40k
/// connections/s, and the keys are peers inside the watched ranges.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

pub mod classes;

pub use crate::model::outcome::{Backend, Outcome};

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
    fn new(flow: Flow, ev: &Event) -> Self {
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
    fn is_settled(&self) -> bool {
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
    fn pending_request(&self) -> bool {
        // At the free, the SYN being freed may already be counted (its arrival event came
        // first) or not (the arrival record is read from another ring).
        self.synack_retransmits > 0 || self.syn_packets > self.syn_drops + 1
    }

    /// Applies one event that belongs to this attempt.
    fn apply(&mut self, ev: &Event, inbound_syn: bool) {
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
            Kind::Established => self.established = true,
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

/// An outcome handed out in live mode.
#[derive(Clone, Debug, PartialEq)]
pub enum Decided {
    /// The attempt's outcome is known (for a handshake: at the handshake, while it is open).
    Attempt(Attempt),
    /// An attempt already counted as a handshake was then reset by the origin.
    LateReset(Attempt),
    /// With [`Correlator::reporting_ended`]: an attempt that did not end in a handshake left
    /// the table, with everything it took (its SYNs, the answers). Counted already.
    Ended(Attempt),
}

/// Live mode: hands out a failed attempt leaving the table, when asked to.
fn report_end(report: bool, a: &Attempt, decided: &mut Vec<Decided>) {
    if report && a.outcome() != Outcome::Handshake {
        decided.push(Decided::Ended(a.clone()));
    }
}

/// Live mode: queues the outcome once it is decisive; an attempt leaving undecided gets its
/// final outcome.
fn decide(a: &mut Attempt, leaving: bool, decided: &mut Vec<Decided>) {
    let outcome = a.outcome();
    let decisive = match outcome {
        // SYN-ACK retransmits alone may still end in a handshake: wait.
        Outcome::OverloadDrop => a.overload_drop.is_some(),
        Outcome::Unanswered => false,
        _ => true,
    };
    match a.decided {
        None if decisive || leaving => {
            a.decided = Some(outcome);
            decided.push(Decided::Attempt(a.clone()));
        }
        Some(Outcome::Handshake) if outcome == Outcome::OriginReset => {
            a.decided = Some(outcome);
            decided.push(Decided::LateReset(a.clone()));
        }
        _ => {}
    }
}

/// [`decide`] for an attempt that leaves now and is not needed after: moved, not cloned (a
/// handshake settles every healthy connection this way).
fn decide_leaving(mut a: Attempt, decided: &mut Vec<Decided>) {
    let outcome = a.outcome();
    match a.decided {
        None => {
            a.decided = Some(outcome);
            decided.push(Decided::Attempt(a));
        }
        Some(Outcome::Handshake) if outcome == Outcome::OriginReset => {
            a.decided = Some(outcome);
            decided.push(Decided::LateReset(a));
        }
        _ => {}
    }
}

/// A peer's address and port: what DNAT leaves alone.
type PeerKey = (IpAddr, u16);

fn peer_key(flow: &Flow) -> PeerKey {
    (flow.peer, flow.peer_port)
}

/// Settled forwarded connections remembered for a later reset (live mode): two generations,
/// the older dropped when the newer fills, so memory stays bounded at any rate.
#[derive(Default)]
struct RecentForwarded {
    now: FastMap<PeerKey, (Flow, Backend)>,
    before: FastMap<PeerKey, (Flow, Backend)>,
}

/// Entries per generation of [`RecentForwarded`].
const RECENT_GENERATION: usize = 32 * 1024;

impl RecentForwarded {
    fn insert(&mut self, flow: Flow, backend: Backend) {
        if self.now.len() >= RECENT_GENERATION {
            self.before = std::mem::take(&mut self.now);
        }
        self.now.insert(peer_key(&flow), (flow, backend));
    }

    fn get(&self, key: &PeerKey) -> Option<(Flow, Backend)> {
        self.now.get(key).or_else(|| self.before.get(key)).copied()
    }
}

/// Forgets an attempt's peer, unless a newer attempt from the same peer port took its place.
fn unindex(index: &mut Option<FastMap<PeerKey, Flow>>, key: &Flow) {
    if let Some(index) = index {
        if index.get(&peer_key(key)) == Some(key) {
            index.remove(&peer_key(key));
        }
    }
}

/// Open attempts kept at most (about 20 MB): beyond, the table makes room (see `evict_one`).
const MAX_OPEN: usize = 1 << 17;

/// Tracks open attempts; hands back the ones that are over.
#[derive(Default)]
pub struct Correlator {
    open: FastMap<Flow, Attempt>,
    /// Live mode (agent): outcomes are queued for `drain_decided` as soon as they are known,
    /// instead of when the attempt ends.
    live: bool,
    /// Live mode: hand out failed attempts as they leave ([`Decided::Ended`]).
    report_ended: bool,
    decided: Vec<Decided>,
    /// When false (after a window ends), events may finish open attempts but start none.
    pub closed_to_new: bool,
    /// Events the kernel reported lost.
    pub lost_events: u64,
    /// Attempts ended early because the table was full.
    pub evicted: u64,
    /// The tracer's namespace: an event elsewhere happened where the host forwarded it.
    own_netns: u32,
    /// Following forwarded connections: open attempts by peer address and port.
    by_peer: Option<FastMap<PeerKey, Flow>>,
    recent_forwarded: RecentForwarded,
}

impl Correlator {
    pub fn new() -> Self {
        Self::default()
    }

    /// A correlator for continuous use: see [`Correlator::drain_decided`]. A handshake settles
    /// its attempt, which leaves the table at once: the table holds only attempts still
    /// waiting for an answer, however many connections are open, and a connection's later
    /// reset by the origin is read from its own event (see [`crate::model::event::TcpState::is_after_accept`]).
    pub fn live() -> Self {
        Self {
            live: true,
            ..Self::default()
        }
    }

    /// Follows attempts the host forwards out of `own_netns` (the kernel does too): events
    /// whose addresses DNAT rewrote count for the attempt from the same peer address and port.
    pub fn following_forwarded(mut self, own_netns: u32) -> Self {
        self.own_netns = own_netns;
        self.by_peer = Some(FastMap::default());
        self
    }

    /// Live mode: outcomes decided since the last call. The agent drains the queue after every
    /// event, so it stays a slot or two long and in cache.
    pub fn drain_decided(&mut self) -> std::vec::Drain<'_, Decided> {
        self.decided.drain(..)
    }

    /// Removes an attempt; in live mode it is decided first if it was not yet.
    fn remove(&mut self, key: &Flow) -> Option<Attempt> {
        let mut a = self.open.remove(key)?;
        unindex(&mut self.by_peer, key);
        if self.live {
            decide(&mut a, true, &mut self.decided);
            report_end(self.report_ended, &a, &mut self.decided);
        }
        Some(a)
    }

    /// Live mode: also hand out each attempt that did not end in a handshake when it leaves
    /// the table ([`Decided::Ended`]), for one log line per attempt.
    pub fn reporting_ended(mut self) -> Self {
        self.report_ended = true;
        self
    }

    pub fn open_attempts(&self) -> usize {
        self.open.len()
    }

    /// Where an event happened, when that is not where its attempt arrived.
    fn backend_of(&self, ev: &Event, arrived: &Flow) -> Option<Backend> {
        let elsewhere = ev.netns != 0 && self.own_netns != 0 && ev.netns != self.own_netns;
        (elsewhere || ev.flow.local != arrived.local || ev.flow.local_port != arrived.local_port)
            .then_some(Backend {
                addr: ev.flow.local,
                port: ev.flow.local_port,
                netns: ev.netns,
            })
    }

    /// The attempt an event belongs to: its own flow if that is open or it happened where the
    /// attempt arrived; else, following forwarded connections, the open attempt from the same
    /// peer address and port (DNAT rewrote the local end). `None`: a forwarded event of no
    /// attempt.
    fn attempt_key(&self, ev: &Event) -> Option<(Flow, Option<Backend>)> {
        // Not following (no forwarding): the event's own flow, with no extra lookup — this
        // runs for every event at fleet rates. A SYN at the interface is always its own.
        let Some(index) = &self.by_peer else {
            return (!ev.forwarded).then_some((ev.flow, None));
        };
        if ev.kind == Kind::Syn || self.open.contains_key(&ev.flow) {
            return Some((ev.flow, None));
        }
        if let Some(flow) = index.get(&peer_key(&ev.flow)) {
            // The kernel says it is forwarded, or DNAT rewrote the address but kept a watched
            // port. Not a SYN at the interface (that starts its own attempt), nor the same
            // address at another port (the peer reusing its port for another connection); a
            // SYN must be the attempt's own.
            let rewritten = ev.forwarded || (ev.kind != Kind::Syn && ev.flow.local != flow.local);
            let isn_agrees = !ev.is_inbound_syn()
                || self
                    .open
                    .get(flow)
                    .and_then(|a| a.seq)
                    .zip(ev.seq())
                    .is_none_or(|(a, b)| a == b);
            if rewritten && isn_agrees {
                return Some((*flow, self.backend_of(ev, flow)));
            }
        }
        if ev.forwarded {
            // A connection settled at its handshake (live mode), reset later.
            let (flow, _) = self.recent_forwarded.get(&peer_key(&ev.flow))?;
            return Some((flow, self.backend_of(ev, &flow)));
        }
        Some((ev.flow, None))
    }

    /// Feeds one record; returns an attempt it displaced (same flow, new SYN). One hash
    /// lookup per event in the tracer's namespace: this runs for every event at fleet rates.
    pub fn observe_record(&mut self, record: &Record) -> Option<Attempt> {
        match record {
            Record::Event(ev) => self.observe(ev),
            Record::Listener(_) => None,
            Record::Loss { count, .. } => {
                self.lost_events += count;
                // Any open attempt's answer may be among the lost events.
                for a in self.open.values_mut() {
                    a.events_lost = true;
                }
                None
            }
        }
    }

    /// Feeds one event; returns an attempt it displaced (same flow, new SYN).
    pub fn observe(&mut self, ev: &Event) -> Option<Attempt> {
        let (key, backend) = self.attempt_key(ev)?;
        if self.live {
            match ev.kind {
                Kind::Established => {
                    self.settle_handshake(key, backend, ev);
                    return None;
                }
                Kind::ResetSent if !self.open.contains_key(&key) => {
                    self.late_reset(key, backend, ev);
                    return None;
                }
                _ => {}
            }
        }
        let inbound_syn = ev.is_inbound_syn();
        let starts = (inbound_syn || ev.kind == Kind::Established)
            && !self.closed_to_new
            && backend.is_none()
            && !ev.forwarded;
        let mut displaced = None;
        // A full table (a SYN flood of attempts nothing answers) makes room by ending one
        // attempt early, as unknown unless something decided it: memory stays bounded and no
        // count turns into a false "unanswered". Checked only when full.
        if starts && self.open.len() >= MAX_OPEN && !self.open.contains_key(&key) {
            displaced = self.evict_one();
        }
        // One hash lookup for an event in the tracer's namespace: this runs for every event at
        // fleet rates. Fields are borrowed apart so the entry stays open.
        let a = match self.open.entry(key) {
            Entry::Occupied(mut o) => {
                let a = o.get();
                let same = a.seq.is_none() || ev.seq().is_none() || a.seq == ev.seq();
                if inbound_syn && !same {
                    // The same four-tuple with a new ISN: a new attempt, the old one is over.
                    if !starts {
                        let mut old = o.remove();
                        unindex(&mut self.by_peer, &key);
                        if self.live {
                            decide(&mut old, true, &mut self.decided);
                            report_end(self.report_ended, &old, &mut self.decided);
                        }
                        return Some(old);
                    }
                    let mut old = std::mem::replace(o.get_mut(), Attempt::new(key, ev));
                    if self.live {
                        decide(&mut old, true, &mut self.decided);
                        report_end(self.report_ended, &old, &mut self.decided);
                    }
                    displaced = Some(old);
                }
                o.into_mut()
            }
            Entry::Vacant(v) => {
                if !starts {
                    return None;
                }
                if let Some(index) = &mut self.by_peer {
                    index.insert(peer_key(&key), key);
                }
                v.insert(Attempt::new(key, ev))
            }
        };
        // The namespace an answer was dropped in is not where the attempt was served.
        if backend.is_some() && ev.direction != Some(Direction::Out) {
            a.backend = backend;
        }
        a.apply(ev, inbound_syn);
        if self.live {
            decide(a, false, &mut self.decided);
            return None;
        }
        displaced
    }

    /// Ends one open attempt to make room (any: the table is a hash map); live mode decides
    /// it at once, otherwise it is handed back like a displaced attempt.
    fn evict_one(&mut self) -> Option<Attempt> {
        let key = *self.open.keys().next()?;
        let mut a = self.open.remove(&key)?;
        unindex(&mut self.by_peer, &key);
        a.events_lost = true;
        self.evicted += 1;
        if self.live {
            decide(&mut a, true, &mut self.decided);
            report_end(self.report_ended, &a, &mut self.decided);
            return None;
        }
        Some(a)
    }

    /// Live mode: the handshake decides the attempt, which leaves the table.
    fn settle_handshake(&mut self, key: Flow, backend: Option<Backend>, ev: &Event) {
        let mut a = match self.open.remove(&key) {
            Some(a) => {
                unindex(&mut self.by_peer, &key);
                a
            }
            None if !self.closed_to_new && backend.is_none() && !ev.forwarded => {
                Attempt::new(key, ev)
            }
            None => return,
        };
        a.last = a.last.max(ev.ts);
        a.edge |= ev.edge;
        a.established = true;
        if backend.is_some() {
            a.backend = backend;
        }
        if let Some(b) = a.backend {
            self.recent_forwarded.insert(a.flow, b);
        }
        report_end(self.report_ended, &a, &mut self.decided);
        decide_leaving(a, &mut self.decided);
    }

    /// Live mode: a reset the origin sent on a connection no longer in the table. From a
    /// socket between handshake and close it ends a connection already counted as a
    /// handshake; a forwarded one is counted on the flow it arrived with.
    fn late_reset(&mut self, key: Flow, backend: Option<Backend>, ev: &Event) {
        let after_accept = matches!(ev.state, Some(State::At(s)) if s.is_after_accept());
        if ev.socket != Some(true) || !after_accept {
            return;
        }
        let mut a = Attempt::new(key, ev);
        a.established = true;
        a.origin_reset = true;
        a.origin_reset_reason = ev.reason;
        a.backend = backend;
        a.decided = Some(Outcome::OriginReset);
        self.decided.push(Decided::LateReset(a));
    }

    /// Attempts that are over: settled ones idle for `settled_after`, any idle for `idle_after`
    /// (SYN retransmissions of one attempt come within about 20 s and must count once).
    pub fn take_idle(
        &mut self,
        now: SystemTime,
        settled_after: Duration,
        idle_after: Duration,
    ) -> Vec<Attempt> {
        let done: Vec<Flow> = self
            .open
            .iter()
            .filter(|(_, a)| {
                let idle = now.duration_since(a.last).unwrap_or_default();
                idle >= idle_after || (a.is_settled() && idle >= settled_after)
            })
            .map(|(k, _)| *k)
            .collect();
        done.iter().filter_map(|k| self.remove(k)).collect()
    }

    /// Attempts open when events were lost, with no answer seen: they end now, as unknown, so
    /// a window counts them beside the kernel's own counts for the same time.
    pub fn take_lost(&mut self) -> Vec<Attempt> {
        let done: Vec<Flow> = self
            .open
            .iter()
            .filter(|(_, a)| a.outcome() == Outcome::Unknown)
            .map(|(k, _)| *k)
            .collect();
        done.iter().filter_map(|k| self.remove(k)).collect()
    }

    /// Edge attempts open now, and how many of them failed so far (for a progress line).
    pub fn edge_attempts_open(&self) -> (u64, u64) {
        self.open
            .values()
            .filter(|a| a.edge)
            .fold((0, 0), |(n, f), a| {
                let failed = !matches!(
                    a.outcome(),
                    Outcome::Handshake | Outcome::Unanswered | Outcome::Unknown
                );
                (n + 1, f + u64::from(failed))
            })
    }

    /// Every attempt still open that has not got an answer, or none at all.
    pub fn pending(&self) -> usize {
        self.open
            .values()
            .filter(|a| a.outcome() == Outcome::Unanswered)
            .count()
    }

    /// Ends tracking: every open attempt.
    pub fn finish(&mut self) -> Vec<Attempt> {
        let keys: Vec<Flow> = self.open.keys().copied().collect();
        keys.iter().filter_map(|k| self.remove(k)).collect()
    }
}

/// Distinct attempts by outcome, for one peer class (edge or not).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub syn: u64,
    pub handshakes: u64,
    pub refused: u64,
    pub firewall_drops: u64,
    pub overload_drops: u64,
    pub origin_resets: u64,
    pub unanswered: u64,
    pub other_drops: u64,
    /// Attempts whose answer may be among events the kernel lost.
    pub unknown: u64,
}

impl Counts {
    pub fn add(&mut self, a: &Attempt) {
        self.syn += 1;
        if a.established {
            self.handshakes += 1;
        }
        match a.outcome() {
            Outcome::Handshake => {}
            Outcome::OriginReset => self.origin_resets += 1,
            Outcome::Refused => self.refused += 1,
            Outcome::FirewallDrop => self.firewall_drops += 1,
            Outcome::OverloadDrop => self.overload_drops += 1,
            Outcome::Unanswered => self.unanswered += 1,
            Outcome::OtherDrop => self.other_drops += 1,
            Outcome::Unknown => self.unknown += 1,
        }
    }
}

#[cfg(test)]
mod lost_replies;
#[cfg(test)]
mod tests;

#[cfg(test)]
mod bound_tests {
    use super::*;

    #[test]
    fn a_full_table_ends_attempts_early_as_unknown() {
        let mut c = Correlator::live();
        let mut ev = crate::model::event::sample(Kind::Syn, 0, 1000);
        for i in 0..(MAX_OPEN as u32 + 10) {
            ev.flow.peer_port = (i % 60000) as u16;
            ev.flow.peer = std::net::IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i / 60000));
            c.observe(&ev);
        }
        assert_eq!(c.open_attempts(), MAX_OPEN);
        assert_eq!(c.evicted, 10);
        let decided: Vec<Decided> = c.drain_decided().collect();
        assert!(decided.len() >= 10, "{}", decided.len());
    }
}

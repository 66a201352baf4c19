//! From events to connection attempts: per (peer, peer port, local, local port), from the SYN at
//! the NIC to its outcome. Shared by `diagnose` (one window) and `agent` (rolling).

use std::{
    collections::{hash_map::Entry, HashMap},
    net::IpAddr,
    time::{Duration, SystemTime},
};

use serde::Serialize;

use crate::events::{Kind, Name, TracedEvent};

/// Open attempts by flow. foldhash, seeded per process: SipHash was a quarter of the agent's
/// time at 40k connections/s, and the keys are peers inside the watched ranges.
type AttemptMap = HashMap<FlowKey, Attempt, foldhash::fast::RandomState>;

/// What became of one connection attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Handshake,
    Refused,
    FirewallDrop,
    OverloadDrop,
    OriginReset,
    Unanswered,
    OtherDrop,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Handshake,
        Outcome::Refused,
        Outcome::FirewallDrop,
        Outcome::OverloadDrop,
        Outcome::OriginReset,
        Outcome::Unanswered,
        Outcome::OtherDrop,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Handshake => "handshake",
            Self::Refused => "refused",
            Self::FirewallDrop => "firewall_drop",
            Self::OverloadDrop => "overload_drop",
            Self::OriginReset => "origin_reset",
            Self::Unanswered => "unanswered",
            Self::OtherDrop => "other_drop",
        }
    }
}

/// What a kernel drop reason means for an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropClass {
    /// No socket matched: the stack refuses (and sends RST unless a firewall ate it).
    NoSocket,
    /// A packet filter: netfilter, tc, cgroup BPF, XDP in generic mode, socket filters, LSMs.
    Filter,
    /// A queue was full: listen/accept queue, SYN queue, CPU backlog.
    Overload,
    Other,
}

pub fn drop_class(reason: &str) -> DropClass {
    match reason {
        "NO_SOCKET" => DropClass::NoSocket,
        r if r.starts_with("NETFILTER")
            || r.starts_with("TC_")
            || r.starts_with("BPF_CGROUP")
            || r == "XDP"
            || r == "SOCKET_FILTER"
            || r == "SECURITY_HOOK" =>
        {
            DropClass::Filter
        }
        r if r.contains("LISTEN_OVERFLOW")
            || r.contains("REQQFULL")
            || r == "CPU_BACKLOG"
            || r == "SOCKET_BACKLOG" =>
        {
            DropClass::Overload
        }
        _ => DropClass::Other,
    }
}

/// A packet thrown away because its queue's socket went away (one per connection closed with
/// data unread), whatever the packet: it cannot decide a connection attempt.
pub fn is_teardown(reason: &str) -> bool {
    matches!(reason, "QUEUE_PURGE" | "SOCKET_CLOSE")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub peer: IpAddr,
    pub peer_port: u16,
    pub local: IpAddr,
    pub local_port: u16,
}

impl FlowKey {
    fn of(ev: &TracedEvent) -> Option<Self> {
        Some(Self {
            peer: ev.peer_addr?,
            peer_port: ev.peer_port?,
            local: ev.local_addr?,
            local_port: ev.local_port?,
        })
    }
}

/// One connection attempt and everything seen of it.
#[derive(Clone, Debug, PartialEq)]
pub struct Attempt {
    pub flow: FlowKey,
    pub edge: bool,
    pub first: SystemTime,
    pub last: SystemTime,
    /// Initial sequence number: a retransmitted SYN repeats it, a new attempt does not.
    pub seq: Option<u32>,
    pub syn_packets: u32,
    pub established: bool,
    pub closed: bool,
    pub refused: bool,
    /// Reason names of drops seen, by class.
    pub filter_drop: Option<Name>,
    pub overload_drop: Option<Name>,
    pub other_drop: Option<Name>,
    /// The origin sent RST on a socket of this flow (reason name when known).
    pub origin_reset: Option<Name>,
    pub peer_reset: bool,
    pub synack_retransmits: u32,
    /// Live mode: the outcome already handed out (the attempt counts once).
    pub decided: Option<Outcome>,
}

impl Attempt {
    fn new(flow: FlowKey, ev: &TracedEvent) -> Self {
        Self {
            flow,
            edge: ev.edge == Some(true),
            first: ev.ts,
            last: ev.ts,
            seq: None,
            syn_packets: 0,
            established: false,
            closed: false,
            refused: false,
            filter_drop: None,
            overload_drop: None,
            other_drop: None,
            origin_reset: None,
            peer_reset: false,
            synack_retransmits: 0,
            decided: None,
        }
    }

    /// The outcome, most decisive fact first. A firewall's verdict beats the stack's: a REJECT
    /// looks like a refusal to the edge but is the firewall's.
    pub fn outcome(&self) -> Outcome {
        if self.established {
            if self.origin_reset.is_some() {
                Outcome::OriginReset
            } else {
                Outcome::Handshake
            }
        } else if self.filter_drop.is_some() {
            Outcome::FirewallDrop
        } else if self.refused {
            Outcome::Refused
        } else if self.overload_drop.is_some() || self.synack_retransmits > 0 {
            Outcome::OverloadDrop
        } else if self.origin_reset.is_some() {
            Outcome::OriginReset
        } else if self.other_drop.is_some() {
            Outcome::OtherDrop
        } else {
            Outcome::Unanswered
        }
    }

    /// Nothing more is expected: later packets of this flow would be a new attempt or noise.
    fn is_settled(&self) -> bool {
        self.closed || (self.refused && !self.established) || self.origin_reset.is_some()
    }
}

/// An outcome handed out in live mode.
#[derive(Clone, Debug, PartialEq)]
pub enum Decided {
    /// The attempt's outcome is known (for a handshake: at the handshake, while it is open).
    Attempt(Attempt),
    /// An attempt already counted as a handshake was then reset by the origin.
    LateReset(Attempt),
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

/// Does a reset the origin sent on a socket in this state end an accepted connection? Every
/// state from the handshake to the close does (the stack closes a socket with unread data or
/// `SO_LINGER` 0, then resets it); a listener's or request's reset is the attempt's own
/// answer, and a `TIME_WAIT` socket's answers a stray segment after the connection ended.
pub fn reset_after_accept(state: &str) -> bool {
    matches!(
        state,
        "TCP_ESTABLISHED"
            | "TCP_FIN_WAIT1"
            | "TCP_FIN_WAIT2"
            | "TCP_CLOSE"
            | "TCP_CLOSE_WAIT"
            | "TCP_LAST_ACK"
            | "TCP_CLOSING"
    )
}

/// Tracks open attempts; hands back the ones that are over.
#[derive(Default)]
pub struct Correlator {
    open: AttemptMap,
    /// Live mode (agent): outcomes are queued for `drain_decided` as soon as they are known,
    /// instead of when the attempt ends.
    live: bool,
    decided: Vec<Decided>,
    /// When false (after a window ends), events may finish open attempts but start none.
    pub closed_to_new: bool,
    /// Events the kernel reported lost.
    pub lost_events: u64,
}

impl Correlator {
    pub fn new() -> Self {
        Self::default()
    }

    /// A correlator for continuous use: see [`Correlator::drain_decided`]. A handshake settles
    /// its attempt, which leaves the table at once: the table holds only attempts still
    /// waiting for an answer, however many connections are open, and a connection's later
    /// reset by the origin is read from its own event (see [`reset_after_accept`]).
    pub fn live() -> Self {
        Self {
            live: true,
            ..Self::default()
        }
    }

    /// Live mode: outcomes decided since the last call. The agent drains the queue after every
    /// event, so it stays a slot or two long and in cache.
    pub fn drain_decided(&mut self) -> std::vec::Drain<'_, Decided> {
        self.decided.drain(..)
    }

    /// Removes an attempt; in live mode it is decided first if it was not yet.
    fn remove(&mut self, key: &FlowKey) -> Option<Attempt> {
        let mut a = self.open.remove(key)?;
        if self.live {
            decide(&mut a, true, &mut self.decided);
        }
        Some(a)
    }

    pub fn open_attempts(&self) -> usize {
        self.open.len()
    }

    /// Feeds one event; returns an attempt it displaced (same flow, new SYN). One hash
    /// lookup per event: this runs for every event at fleet rates.
    pub fn observe(&mut self, ev: &TracedEvent) -> Option<Attempt> {
        if ev.kind == Kind::Loss {
            self.lost_events += ev.count.unwrap_or(0);
            return None;
        }
        let key = FlowKey::of(ev)?;
        if self.live {
            match ev.kind {
                Kind::Established => {
                    self.settle_handshake(key, ev);
                    return None;
                }
                Kind::ResetSent if !self.open.contains_key(&key) => {
                    if ev.socket == Some(true)
                        && ev.state.as_deref().is_some_and(reset_after_accept)
                    {
                        let mut a = Attempt::new(key, ev);
                        a.established = true;
                        a.origin_reset =
                            Some(ev.reason.clone().unwrap_or(Name::Borrowed("UNKNOWN")));
                        a.decided = Some(Outcome::OriginReset);
                        self.decided.push(Decided::LateReset(a));
                    }
                    return None;
                }
                _ => {}
            }
        }
        let inbound_syn = match ev.kind {
            Kind::Syn => true,
            Kind::Drop => {
                ev.direction.as_deref() != Some("out")
                    && ev.has_tcp_flag("SYN")
                    && !ev.has_tcp_flag("ACK")
            }
            _ => false,
        };
        let starts = (inbound_syn || ev.kind == Kind::Established) && !self.closed_to_new;
        let mut displaced = None;
        let a = match self.open.entry(key) {
            Entry::Occupied(mut o) => {
                let a = o.get();
                let same = a.seq.is_none() || ev.seq.is_none() || a.seq == ev.seq;
                if inbound_syn && !same {
                    // The same four-tuple with a new ISN: a new attempt, the old one is over.
                    if !starts {
                        let mut old = o.remove();
                        if self.live {
                            decide(&mut old, true, &mut self.decided);
                        }
                        return Some(old);
                    }
                    let mut old = std::mem::replace(o.get_mut(), Attempt::new(key, ev));
                    if self.live {
                        decide(&mut old, true, &mut self.decided);
                    }
                    displaced = Some(old);
                }
                o.into_mut()
            }
            Entry::Vacant(v) => {
                if !starts {
                    return None;
                }
                v.insert(Attempt::new(key, ev))
            }
        };
        a.last = a.last.max(ev.ts);
        if ev.edge == Some(true) {
            a.edge = true;
        }
        match ev.kind {
            Kind::Syn => {
                a.syn_packets += 1;
                a.seq = a.seq.or(ev.seq);
            }
            Kind::Drop => {
                if inbound_syn {
                    a.seq = a.seq.or(ev.seq);
                    if a.syn_packets == 0 {
                        // The NIC hook did not see it (another interface): the drop proves it came.
                        a.syn_packets = 1;
                    }
                }
                if !a.established {
                    let reason = ev.reason.clone().unwrap_or(Name::Borrowed("UNKNOWN"));
                    match drop_class(&reason) {
                        DropClass::NoSocket => a.refused = true,
                        DropClass::Filter => a.filter_drop = Some(reason),
                        DropClass::Overload => a.overload_drop = Some(reason),
                        DropClass::Other => a.other_drop = Some(reason),
                    }
                }
            }
            Kind::ResetSent => {
                if ev.socket == Some(false) {
                    if !a.established {
                        a.refused = true;
                    }
                } else {
                    a.origin_reset = Some(ev.reason.clone().unwrap_or(Name::Borrowed("UNKNOWN")));
                }
            }
            Kind::ResetReceived => a.peer_reset = true,
            Kind::Established => a.established = true,
            Kind::Closed => a.closed = true,
            Kind::SynackRetransmit => a.synack_retransmits += 1,
            Kind::Loss => {}
        }
        if self.live {
            decide(a, false, &mut self.decided);
            return None;
        }
        displaced
    }

    /// Live mode: the handshake decides the attempt, which leaves the table.
    fn settle_handshake(&mut self, key: FlowKey, ev: &TracedEvent) {
        let mut a = match self.open.remove(&key) {
            Some(a) => a,
            None if !self.closed_to_new => Attempt::new(key, ev),
            None => return,
        };
        a.last = a.last.max(ev.ts);
        if ev.edge == Some(true) {
            a.edge = true;
        }
        a.established = true;
        decide_leaving(a, &mut self.decided);
    }

    /// Attempts that are over: settled ones idle for `settled_after`, any idle for `idle_after`
    /// (SYN retransmissions of one attempt come within about 20 s and must count once).
    pub fn take_idle(
        &mut self,
        now: SystemTime,
        settled_after: Duration,
        idle_after: Duration,
    ) -> Vec<Attempt> {
        let done: Vec<FlowKey> = self
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

    /// Every attempt still open that has not got an answer, or none at all.
    pub fn pending(&self) -> usize {
        self.open
            .values()
            .filter(|a| a.outcome() == Outcome::Unanswered)
            .count()
    }

    /// Ends tracking: every open attempt.
    pub fn finish(&mut self) -> Vec<Attempt> {
        let keys: Vec<FlowKey> = self.open.keys().copied().collect();
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EDGE: &str = "173.245.48.10";
    const ORIGIN: &str = "192.0.2.1";

    fn ev(kind: Kind, peer_port: u16, ms: u64) -> TracedEvent {
        let mut e = TracedEvent::loss(SystemTime::UNIX_EPOCH + Duration::from_millis(ms), 0);
        e.kind = kind;
        e.count = None;
        e.peer_addr = Some(EDGE.parse().unwrap());
        e.local_addr = Some(ORIGIN.parse().unwrap());
        e.peer_port = Some(peer_port);
        e.local_port = Some(443);
        e.edge = Some(true);
        e
    }

    fn syn(port: u16, seq: u32, ms: u64) -> TracedEvent {
        let mut e = ev(Kind::Syn, port, ms);
        e.tcp_flags = Some("SYN".into());
        e.seq = Some(seq);
        e
    }

    fn drop(
        port: u16,
        seq: u32,
        reason: &'static str,
        flags: &'static str,
        ms: u64,
    ) -> TracedEvent {
        let mut e = ev(Kind::Drop, port, ms);
        e.reason = Some(reason.into());
        e.tcp_flags = Some(flags.into());
        e.seq = Some(seq);
        e.direction = Some("in".into());
        e
    }

    fn reset_sent(port: u16, socket: bool, reason: &'static str, ms: u64) -> TracedEvent {
        let mut e = ev(Kind::ResetSent, port, ms);
        e.socket = Some(socket);
        e.reason = Some(reason.into());
        e
    }

    /// Live mode: what was decided since the last look.
    fn decided(c: &mut Correlator) -> Vec<Decided> {
        c.drain_decided().collect()
    }

    fn run(events: &[TracedEvent]) -> Vec<Attempt> {
        let mut c = Correlator::new();
        let mut out: Vec<Attempt> = events.iter().filter_map(|e| c.observe(e)).collect();
        out.extend(c.finish());
        out.sort_by_key(|a| a.flow.peer_port);
        out
    }

    #[test]
    fn closed_port_is_refused() {
        let a = run(&[
            syn(1000, 7, 0),
            reset_sent(1000, false, "NO_SOCKET", 1),
            drop(1000, 7, "NO_SOCKET", "SYN", 1),
        ]);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].outcome(), Outcome::Refused);
    }

    #[test]
    fn retransmitted_syns_count_once() {
        let a = run(&[
            syn(1000, 7, 0),
            drop(1000, 7, "NETFILTER_DROP", "SYN", 0),
            syn(1000, 7, 1000),
            drop(1000, 7, "NETFILTER_DROP", "SYN", 1000),
            syn(1000, 7, 3000),
            drop(1000, 7, "NETFILTER_DROP", "SYN", 3000),
        ]);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].syn_packets, 3);
        assert_eq!(a[0].outcome(), Outcome::FirewallDrop);
    }

    #[test]
    fn port_reuse_with_new_isn_is_a_new_attempt() {
        let a = run(&[
            syn(1000, 7, 0),
            reset_sent(1000, false, "NO_SOCKET", 0),
            syn(1000, 99, 5000),
            ev(Kind::Established, 1000, 5001),
        ]);
        assert_eq!(a.len(), 2);
        let outcomes: Vec<_> = a.iter().map(Attempt::outcome).collect();
        assert!(outcomes.contains(&Outcome::Refused));
        assert!(outcomes.contains(&Outcome::Handshake));
    }

    #[test]
    fn reject_with_tcp_reset_is_the_firewall() {
        // netfilter's RST: a NETFILTER_DROP and no tcp_send_reset.
        let a = run(&[syn(1000, 7, 0), drop(1000, 7, "NETFILTER_DROP", "SYN", 0)]);
        assert_eq!(a[0].outcome(), Outcome::FirewallDrop);
    }

    #[test]
    fn reset_after_handshake_is_the_origins() {
        let a = run(&[
            syn(1000, 7, 0),
            ev(Kind::Established, 1000, 1),
            reset_sent(1000, true, "NOT_SPECIFIED", 5),
            ev(Kind::Closed, 1000, 5),
        ]);
        assert_eq!(a[0].outcome(), Outcome::OriginReset);
        let mut c = Counts::default();
        c.add(&a[0]);
        assert_eq!((c.syn, c.handshakes, c.origin_resets), (1, 1, 1));
    }

    #[test]
    fn silent_syn_is_unanswered_and_synack_retransmit_is_overload() {
        let mut rtx = ev(Kind::SynackRetransmit, 2000, 1000);
        rtx.tcp_flags = None;
        let a = run(&[syn(1000, 7, 0), syn(2000, 8, 0), rtx]);
        assert_eq!(a[0].outcome(), Outcome::Unanswered);
        assert_eq!(a[1].outcome(), Outcome::OverloadDrop);
    }

    #[test]
    fn listen_overflow_on_final_ack_is_overload() {
        let a = run(&[
            syn(1000, 7, 0),
            drop(1000, 8, "TCP_LISTEN_OVERFLOW", "ACK", 1),
        ]);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].outcome(), Outcome::OverloadDrop);
    }

    #[test]
    fn drops_after_handshake_do_not_change_the_outcome() {
        let a = run(&[
            syn(1000, 7, 0),
            ev(Kind::Established, 1000, 1),
            drop(1000, 50, "TCP_OLD_DATA", "ACK|PSH", 3),
            reset_sent(1000, false, "NO_SOCKET", 9),
        ]);
        assert_eq!(a[0].outcome(), Outcome::Handshake);
    }

    #[test]
    fn events_without_a_syn_start_nothing() {
        let a = run(&[
            reset_sent(1000, false, "NO_SOCKET", 0),
            ev(Kind::Closed, 1001, 0),
        ]);
        assert!(a.is_empty());
    }

    #[test]
    fn syn_seen_only_as_a_drop_still_counts() {
        let a = run(&[drop(1000, 7, "NO_SOCKET", "SYN", 0)]);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].syn_packets, 1);
        assert_eq!(a[0].outcome(), Outcome::Refused);
    }

    #[test]
    fn closed_to_new_finishes_but_starts_nothing() {
        let mut c = Correlator::new();
        c.observe(&syn(1000, 7, 0));
        c.closed_to_new = true;
        c.observe(&syn(1001, 8, 1));
        c.observe(&reset_sent(1000, false, "NO_SOCKET", 2));
        let a = c.finish();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].outcome(), Outcome::Refused);
    }

    #[test]
    fn idle_attempts_are_taken_out() {
        let mut c = Correlator::new();
        c.observe(&syn(1000, 7, 0));
        c.observe(&reset_sent(1000, false, "NO_SOCKET", 0));
        c.observe(&syn(1001, 8, 0));
        let t = SystemTime::UNIX_EPOCH;
        let s = Duration::from_secs(2);
        let idle = Duration::from_secs(25);
        assert!(c.take_idle(t + Duration::from_secs(1), s, idle).is_empty());
        let settled = c.take_idle(t + Duration::from_secs(3), s, idle);
        assert_eq!(settled.len(), 1);
        assert_eq!(settled[0].flow.peer_port, 1000);
        assert_eq!(c.take_idle(t + Duration::from_secs(30), s, idle).len(), 1);
        assert_eq!(c.open_attempts(), 0);
    }

    #[test]
    fn loss_is_counted() {
        let mut c = Correlator::new();
        c.observe(&TracedEvent::loss(SystemTime::UNIX_EPOCH, 5));
        c.observe(&TracedEvent::loss(SystemTime::UNIX_EPOCH, 2));
        assert_eq!(c.lost_events, 7);
    }

    /// A reset the origin sent on a socket in `state`.
    fn reset_in_state(port: u16, state: &'static str, ms: u64) -> TracedEvent {
        let mut e = reset_sent(port, true, "NOT_SPECIFIED", ms);
        e.state = Some(state.into());
        e
    }

    #[test]
    fn handshakes_leave_the_table_in_live_mode_late_resets_still_count() {
        let mut c = Correlator::live();
        c.observe(&syn(1, 10, 0));
        assert_eq!(c.open_attempts(), 1);
        c.observe(&ev(Kind::Established, 1, 1));
        assert_eq!(c.open_attempts(), 0, "the handshake settles the attempt");
        assert!(
            matches!(&decided(&mut c)[..], [Decided::Attempt(a)] if a.outcome() == Outcome::Handshake && a.syn_packets == 1)
        );
        // A logged close finds nothing to do.
        c.observe(&ev(Kind::Closed, 1, 5));
        assert_eq!(c.open_attempts(), 0);
        // The stack closes with unread data, then resets: the origin reset the connection.
        c.observe(&reset_in_state(1, "TCP_CLOSE", 6));
        let d = decided(&mut c);
        assert!(
            matches!(&d[..], [Decided::LateReset(a)] if a.edge && a.flow.peer_port == 1 && a.outcome() == Outcome::OriginReset),
            "{d:?}"
        );
        // A TIME_WAIT socket answering a stray segment, a listener's reset of an attempt not
        // seen: neither ends an accepted connection.
        c.observe(&reset_in_state(1, "TCP_TIME_WAIT", 7));
        c.observe(&reset_in_state(2, "TCP_LISTEN", 7));
        c.observe(&reset_sent(3, false, "NO_SOCKET", 7));
        assert!(decided(&mut c).is_empty());
        assert_eq!(c.open_attempts(), 0);
        // The four-tuple again, new ISN: a new attempt, decided again.
        c.observe(&syn(1, 11, 1000));
        c.observe(&ev(Kind::Established, 1, 1001));
        assert!(
            matches!(&decided(&mut c)[..], [Decided::Attempt(a)] if a.outcome() == Outcome::Handshake)
        );
        assert_eq!(c.open_attempts(), 0);
    }

    #[test]
    fn resets_after_accept_by_state() {
        for state in [
            "TCP_ESTABLISHED",
            "TCP_CLOSE_WAIT",
            "TCP_FIN_WAIT1",
            "TCP_CLOSE",
        ] {
            assert!(reset_after_accept(state), "{state}");
        }
        for state in [
            "TCP_LISTEN",
            "TCP_SYN_RECV",
            "TCP_NEW_SYN_RECV",
            "TCP_TIME_WAIT",
        ] {
            assert!(!reset_after_accept(state), "{state}");
        }
    }

    #[test]
    fn live_mode_counts_each_attempt_once_as_soon_as_known() {
        let mut c = Correlator::live();
        // Handshake, decided at once though still open; then reset by the origin.
        c.observe(&syn(1000, 7, 0));
        assert!(decided(&mut c).is_empty());
        c.observe(&ev(Kind::Established, 1000, 1));
        let d = decided(&mut c);
        assert!(matches!(&d[..], [Decided::Attempt(a)] if a.outcome() == Outcome::Handshake));
        c.observe(&reset_in_state(1000, "TCP_ESTABLISHED", 5));
        assert!(matches!(&decided(&mut c)[..], [Decided::LateReset(_)]));
        // Firewall drop: decided at the first drop; retransmissions add nothing.
        c.observe(&syn(2000, 9, 0));
        c.observe(&drop(2000, 9, "NETFILTER_DROP", "SYN", 0));
        c.observe(&syn(2000, 9, 1000));
        c.observe(&drop(2000, 9, "NETFILTER_DROP", "SYN", 1000));
        let d = decided(&mut c);
        assert_eq!(d.len(), 1);
        // Silence: decided only when it leaves.
        c.observe(&syn(3000, 11, 0));
        assert!(decided(&mut c).is_empty());
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(60);
        c.take_idle(t, Duration::from_secs(2), Duration::from_secs(25));
        let d = decided(&mut c);
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(matches!(&d[0], Decided::Attempt(a) if a.outcome() == Outcome::Unanswered));
        assert_eq!(c.open_attempts(), 0);
    }

    #[test]
    fn drop_classes() {
        assert_eq!(drop_class("NO_SOCKET"), DropClass::NoSocket);
        assert_eq!(drop_class("NETFILTER_DROP"), DropClass::Filter);
        assert_eq!(drop_class("TC_INGRESS"), DropClass::Filter);
        assert_eq!(drop_class("TCP_LISTEN_OVERFLOW"), DropClass::Overload);
        assert_eq!(drop_class("CPU_BACKLOG"), DropClass::Overload);
        assert_eq!(drop_class("TCP_CSUM"), DropClass::Other);
    }
}

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

use crate::model::event::{Direction, Event, Flow, Kind, Record, State};

/// foldhash, seeded per process: SipHash was a quarter of the agent's time at 40k
/// connections/s, and the keys are peers inside the watched ranges.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

pub mod classes;

pub use crate::model::outcome::{Backend, Outcome};

mod attempt;
mod counts;
pub mod dials;
pub mod exchanges;
pub mod kernel_account;
pub mod timing;
pub mod tunnel;

pub use attempt::{Attempt, ReplyDrop};
pub use counts::Counts;

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

/// Open attempts kept at most (about 20 MB): beyond, the table makes room (see `make_room`).
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
    /// When the last loss was reported: an attempt that began before it and saw no answer may
    /// have had its answer among the lost events — it ends `unknown`, never `unanswered`.
    last_loss: Option<std::time::SystemTime>,
    /// Attempts ended early (or never tracked) because the table was full, and how many of
    /// them were the edge's: non-edge attempts go first, an edge attempt only when the table
    /// holds nothing else.
    pub evicted: u64,
    pub evicted_edge: u64,
    /// Non-edge attempts in the order they opened (keys may be stale: checked when used), the
    /// ones a full table ends first.
    non_edge_order: std::collections::VecDeque<Flow>,
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

    /// An attempt that began before the last reported loss may have lost its answer there.
    fn note_loss(last_loss: Option<std::time::SystemTime>, a: &mut Attempt) {
        if last_loss.is_some_and(|t| t >= a.first) {
            a.events_lost = true;
        }
    }

    /// Removes an attempt; in live mode it is decided first if it was not yet.
    fn remove(&mut self, key: &Flow) -> Option<Attempt> {
        let mut a = self.open.remove(key)?;
        unindex(&mut self.by_peer, key);
        Self::note_loss(self.last_loss, &mut a);
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
            Record::Listener(_) | Record::Exchange(_) | Record::Dial(_) => None,
            Record::Loss { count, ts } => {
                self.lost_events += count;
                self.last_loss = Some(self.last_loss.map_or(*ts, |t| t.max(*ts)));
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
            match self.make_room(ev.edge) {
                Some(d) => displaced = d,
                // Full of the edge's attempts: a non-edge one is not tracked at all.
                None => return None,
            }
        }
        // Stale keys (attempts already over) are dropped from the eviction order once it holds
        // twice what the table can: it stays bounded without a lookup per event.
        if starts && self.non_edge_order.len() > 2 * MAX_OPEN {
            let open = &self.open;
            self.non_edge_order
                .retain(|k| open.get(k).is_some_and(|a| !a.edge));
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
                        Self::note_loss(self.last_loss, &mut old);
                        if self.live {
                            decide(&mut old, true, &mut self.decided);
                            report_end(self.report_ended, &old, &mut self.decided);
                        }
                        return Some(old);
                    }
                    let mut old = std::mem::replace(o.get_mut(), Attempt::new(key, ev));
                    Self::note_loss(self.last_loss, &mut old);
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
                if !ev.edge {
                    self.non_edge_order.push_back(key);
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

    /// Makes room for a new attempt (`edge`: the newcomer is the edge's): ends the oldest
    /// non-edge attempt, else — for an edge newcomer only — any edge one. `None`: nothing may
    /// make room (a non-edge newcomer and a table full of edge attempts), the newcomer is not
    /// tracked and counted as evicted. A flood from outside the ranges never pushes the edge's
    /// attempts out.
    fn make_room(&mut self, edge: bool) -> Option<Option<Attempt>> {
        while let Some(key) = self.non_edge_order.pop_front() {
            if self.open.get(&key).is_some_and(|a| !a.edge) {
                return Some(self.evict(key));
            }
        }
        if !edge {
            self.evicted += 1;
            return None;
        }
        let key = *self.open.keys().next()?;
        self.evicted_edge += 1;
        Some(self.evict(key))
    }

    /// Ends the open attempt `key` early; live mode decides it at once, otherwise it is
    /// handed back like a displaced attempt.
    fn evict(&mut self, key: Flow) -> Option<Attempt> {
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
        a.established_at.get_or_insert(ev.ts);
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

    /// A table full of non-edge attempts (a random-source flood) makes room for the edge's
    /// by ending non-edge ones; the edge's are never pushed out by non-edge newcomers.
    #[test]
    fn a_non_edge_flood_never_evicts_the_edge() {
        let mut c = Correlator::live();
        let mut edge = crate::model::event::sample(Kind::Syn, 0, 1000);
        edge.edge = true;
        for port in 0..5u16 {
            edge.flow.peer_port = 40_000 + port;
            c.observe(&edge);
        }
        let mut flood = crate::model::event::sample(Kind::Syn, 0, 1000);
        flood.edge = false;
        for i in 0..(2 * MAX_OPEN as u32) {
            flood.flow.peer_port = (i % 60000) as u16;
            flood.flow.peer =
                std::net::IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000 + i / 60000));
            c.observe(&flood);
            if i == MAX_OPEN as u32 {
                // An edge attempt in the middle of the flood gets a place too.
                edge.flow.peer_port = 41_000;
                c.observe(&edge);
            }
        }
        assert_eq!(c.open_attempts(), MAX_OPEN);
        assert_eq!(c.evicted_edge, 0);
        assert!(c.evicted >= MAX_OPEN as u64, "{}", c.evicted);
        let edge_open = c.open.values().filter(|a| a.edge).count();
        assert_eq!(edge_open, 6);
        // A table of nothing but edge attempts: a non-edge newcomer is not tracked.
        let mut c = Correlator::live();
        for i in 0..MAX_OPEN as u32 {
            edge.flow.peer_port = (i % 60000) as u16;
            edge.flow.peer =
                std::net::IpAddr::V4(std::net::Ipv4Addr::from(0xadf5_3000 + i / 60000));
            c.observe(&edge);
        }
        flood.flow.peer_port = 7;
        c.observe(&flood);
        assert_eq!(c.open.values().filter(|a| !a.edge).count(), 0);
        assert_eq!((c.evicted, c.evicted_edge), (1, 0));
    }

    /// A SYN read after a loss was reported, but sent before it (the SYN log and the ring are
    /// merged by time): its reset may be among the lost events — unknown, never unanswered. A
    /// SYN after the loss with no answer is unanswered.
    #[test]
    fn an_attempt_begun_before_a_loss_is_never_unanswered() {
        use std::time::Duration;
        let mut c = Correlator::live();
        let syn = crate::model::event::sample(Kind::Syn, 40_000, 1_000);
        let loss_at = syn.ts + Duration::from_millis(500);
        c.observe_record(&Record::Loss {
            ts: loss_at,
            count: 7,
        });
        c.observe(&syn);
        let mut later = crate::model::event::sample(Kind::Syn, 40_001, 1_000);
        later.ts = loss_at + Duration::from_secs(1);
        c.observe(&later);
        let done = c.take_idle(
            later.ts + Duration::from_secs(60),
            Duration::from_secs(2),
            Duration::from_secs(25),
        );
        let outcome = |port: u16| {
            done.iter()
                .find(|a| a.flow.peer_port == port)
                .map(|a| a.decided.unwrap_or(a.outcome()))
        };
        assert_eq!(outcome(40_000), Some(Outcome::Unknown));
        assert_eq!(outcome(40_001), Some(Outcome::Unanswered));
    }

    /// First SYN to the final ACK, recorded: the edge's SYN retransmitted after 1 s, the
    /// handshake done 2 ms later — 1,002 ms, two SYNs.
    #[test]
    fn a_handshake_is_timed_from_the_first_syn() {
        let mut c = Correlator::live();
        c.observe(&crate::model::event::sample(Kind::Syn, 40_000, 10_000));
        c.observe(&crate::model::event::sample(Kind::Syn, 40_000, 11_000));
        c.observe(&crate::model::event::sample(
            Kind::Established,
            40_000,
            11_002,
        ));
        let decided: Vec<Decided> = c.drain_decided().collect();
        let Some(Decided::Attempt(a)) = decided.first() else {
            panic!("{decided:?}");
        };
        assert_eq!(a.syn_packets, 2);
        assert_eq!(a.handshake_time(), Some(Duration::from_millis(1002)));
        // A connection whose SYN was not seen has no handshake time.
        let mut c = Correlator::live();
        c.observe(&crate::model::event::sample(
            Kind::Established,
            40_001,
            11_002,
        ));
        let decided: Vec<Decided> = c.drain_decided().collect();
        let Some(Decided::Attempt(a)) = decided.first() else {
            panic!("{decided:?}");
        };
        assert_eq!(a.handshake_time(), None);
        // The SYN dated (to its tick) after the handshake's end: timed as zero, still counted.
        let mut c = Correlator::live();
        c.observe(&crate::model::event::sample(Kind::Syn, 40_002, 11_003));
        c.observe(&crate::model::event::sample(
            Kind::Established,
            40_002,
            11_002,
        ));
        let decided: Vec<Decided> = c.drain_decided().collect();
        let Some(Decided::Attempt(a)) = decided.first() else {
            panic!("{decided:?}");
        };
        assert_eq!(a.handshake_time(), Some(Duration::ZERO));
    }
}

//! The rule for lost replies, driven by event sequences as each kernel emits them: a packet
//! freed without ending its attempt — a retransmitted SYN that met the pending request, a
//! duplicate — never decides the outcome; the origin's own SYN-ACK dropped on its way out
//! (here, or in the namespace it is forwarded through) is a lost answer, not a refusal.

use std::time::SystemTime;

use super::*;
use crate::{
    model::event::{Direction, TcpFlags},
    reasons::{location, ReasonTable},
};

const OWN_NS: u32 = 4026531840;
const HOST_NS: u32 = 4026531999;
const SYN: u8 = TcpFlags::SYN;
const SYNACK: u8 = TcpFlags::SYN | TcpFlags::ACK;

/// How each kernel names the free of a retransmitted SYN a pending request answered.
enum Kernel {
    /// 5.10: no reasons; named by the freeing function (`tcp_v4_rcv` reads as NO_SOCKET).
    ByLocation,
    /// 6.1 (reason 2 = NOT_SPECIFIED), 6.12 and 7.x (the numbers move; the name does not).
    ByReason(u32),
}

fn table(k: &Kernel) -> ReasonTable {
    match k {
        Kernel::ByLocation => {
            let mut t = ReasonTable::default();
            t.by_location(location::Symbols::parse(
                "ffffffff81a00000 T tcp_v4_rcv\nffffffff81b00000 T nft_do_chain\n",
            ));
            t
        }
        Kernel::ByReason(code) => ReasonTable::for_tests(
            &[
                (*code, "NOT_SPECIFIED"),
                (3, "NO_SOCKET"),
                (12, "NETFILTER_DROP"),
            ],
            &[],
        ),
    }
}

fn ev(kind: Kind, port: u16, ms: u64) -> Event {
    crate::model::event::sample(kind, port, ms)
}

fn syn(port: u16, ms: u64) -> Event {
    let mut e = ev(Kind::Syn, port, ms);
    e.tcp = Some((TcpFlags(SYN), 7));
    e
}

/// The kernel freeing a SYN of `port` the way `k` names it.
fn syn_freed(k: &Kernel, port: u16, ms: u64) -> Event {
    let t = table(k);
    let mut e = ev(Kind::Drop, port, ms);
    e.tcp = Some((TcpFlags(SYN), 7));
    e.direction = Some(Direction::In);
    e.reason = match k {
        Kernel::ByLocation => t.drop_reason_at(0xffffffff81a00010),
        Kernel::ByReason(code) => Some(t.drop_reason(*code)),
    };
    e
}

fn synack_retransmit(port: u16, ms: u64) -> Event {
    ev(Kind::SynackRetransmit, port, ms)
}

/// What the origin sees when its SYN-ACKs never reach the edge: the edge's SYN at 0, then
/// its retransmissions at 1 s and 2 s (Cloudflare's 1, 1, 1, ... schedule), each answered by
/// resending the SYN-ACK and freeing the SYN; the origin's own timer retransmits too.
fn lost_synacks(k: &Kernel, port: u16, arrival_first: bool) -> Vec<Event> {
    let mut out = vec![syn(port, 0)];
    for at in [1000, 2000] {
        let (arrive, rtx, free) = (
            syn(port, at),
            synack_retransmit(port, at),
            syn_freed(k, port, at),
        );
        if arrival_first {
            out.extend([arrive, rtx, free]);
        } else {
            // The arrival record comes from another ring and may be read after the free.
            out.extend([rtx, free, arrive]);
        }
    }
    out.push(synack_retransmit(port, 2100));
    out
}

fn only(events: &[Event]) -> Attempt {
    let mut c = Correlator::new();
    for e in events {
        assert!(c.observe(e).is_none());
    }
    let mut all = c.finish();
    assert_eq!(all.len(), 1, "{all:?}");
    all.remove(0)
}

#[test]
fn a_retransmitted_syn_freed_by_a_pending_request_is_not_a_drop_on_any_kernel() {
    for k in [Kernel::ByLocation, Kernel::ByReason(2), Kernel::ByReason(0)] {
        for arrival_first in [true, false] {
            let a = only(&lost_synacks(&k, 1000, arrival_first));
            assert_eq!(a.outcome(), Outcome::Unanswered, "{a:?}");
            assert_eq!((a.syn_packets, a.syn_frees_pending), (3, 2));
            assert_eq!(a.synack_retransmits, 3);
            assert_eq!((a.refused, a.other_drop), (false, None));
        }
    }
}

#[test]
fn a_first_syn_freed_still_decides() {
    // 6.x: the first SYN freed for a reason is a drop of the attempt.
    let k = Kernel::ByReason(2);
    let a = only(&[syn(1000, 0), syn_freed(&k, 1000, 0)]);
    assert_eq!(a.outcome(), Outcome::OtherDrop);
    // 5.10: `tcp_v4_rcv` freeing a first SYN is a refusal (no socket wanted it) ...
    let k = Kernel::ByLocation;
    let a = only(&[syn(1000, 0), syn_freed(&k, 1000, 0)]);
    assert_eq!(a.outcome(), Outcome::Refused);
    // ... and so is every retransmission of a refused SYN (nothing was pending).
    let a = only(&[
        syn(1000, 0),
        syn_freed(&k, 1000, 0),
        syn(1000, 1000),
        syn_freed(&k, 1000, 1000),
    ]);
    assert_eq!(a.outcome(), Outcome::Refused);
}

#[test]
fn a_filter_or_the_kernels_no_socket_decides_even_with_a_request_pending() {
    let k = Kernel::ByReason(2);
    let t = table(&k);
    for (code, outcome) in [(12, Outcome::FirewallDrop), (3, Outcome::Refused)] {
        let mut late = syn_freed(&k, 1000, 1000);
        late.reason = Some(t.drop_reason(code));
        let a = only(&[
            syn(1000, 0),
            syn(1000, 1000),
            synack_retransmit(1000, 1000),
            late,
        ]);
        assert_eq!(a.outcome(), outcome);
    }
}

/// The origin's SYN-ACK as the kernel frees it on the way out, in `netns`.
fn synack_dropped(netns: u32, ms: u64) -> Event {
    let t = table(&Kernel::ByReason(2));
    let mut e = ev(Kind::Drop, 1000, ms);
    e.tcp = Some((TcpFlags(SYNACK), 99));
    e.direction = Some(Direction::Out);
    e.reason = Some(t.drop_reason(12));
    e.netns = netns;
    e.forwarded = netns != OWN_NS;
    e
}

#[test]
fn a_synack_dropped_in_another_namespace_is_a_lost_answer_not_a_firewall_drop() {
    let events = [
        syn(1000, 0),
        synack_dropped(HOST_NS, 0),
        synack_retransmit(1000, 1000),
        synack_dropped(HOST_NS, 1000),
    ];
    let mut c = Correlator::new().following_forwarded(OWN_NS);
    for e in &events {
        c.observe(e);
    }
    let a = c.finish().remove(0);
    assert_eq!(a.outcome(), Outcome::Unanswered);
    assert_eq!(a.filter_drop, None);
    assert_eq!(a.reply_drop.map(|r| r.netns), Some(HOST_NS));
    // Where it was dropped is not where it was served.
    assert_eq!(a.backend, None);
}

#[test]
fn a_synack_dropped_by_this_namespaces_output_filter_is_a_lost_answer() {
    let a = only(&[syn(1000, 0), synack_dropped(OWN_NS, 0)]);
    assert_eq!(a.outcome(), Outcome::Unanswered);
    assert_eq!(a.reply_drop.map(|r| r.netns), Some(OWN_NS));
}

#[test]
fn a_lost_answer_stays_unanswered_when_events_were_lost() {
    let mut c = Correlator::new();
    c.observe(&syn(1000, 0));
    c.observe(&synack_dropped(OWN_NS, 0));
    c.observe_record(&Record::Loss {
        ts: SystemTime::UNIX_EPOCH,
        count: 3,
    });
    assert_eq!(c.finish()[0].outcome(), Outcome::Unanswered);
}

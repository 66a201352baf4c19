//! The correlator driven by recorded event sequences: one namespace, and connections the host
//! forwards to a container (DNAT: other namespace, rewritten local end).

use std::time::{Duration, SystemTime};

use super::*;
use crate::reasons::Reason;
use crate::{
    model::event::{Direction, TcpFlags, TcpState},
    reasons::ReasonTable,
};

const HOST_NS: u32 = 4026531840;
const CONTAINER_NS: u32 = 4026532999;
const CONTAINER: &str = "172.17.0.2";

fn reasons() -> ReasonTable {
    ReasonTable::for_tests(
        &[
            (2, "NO_SOCKET"),
            (5, "NETFILTER_DROP"),
            (70, "TCP_LISTEN_OVERFLOW"),
            (71, "TCP_OLD_DATA"),
            (72, "QUEUE_PURGE"),
        ],
        &[],
    )
}

fn drop_reason(name: &str) -> Reason {
    let code = match name {
        "NO_SOCKET" => 2,
        "NETFILTER_DROP" => 5,
        "TCP_LISTEN_OVERFLOW" => 70,
        "TCP_OLD_DATA" => 71,
        "QUEUE_PURGE" => 72,
        _ => 999,
    };
    reasons().drop_reason(code)
}

fn ev(kind: Kind, peer_port: u16, ms: u64) -> Event {
    crate::model::event::sample(kind, peer_port, ms)
}

fn syn(port: u16, seq: u32, ms: u64) -> Event {
    let mut e = ev(Kind::Syn, port, ms);
    e.tcp = Some((TcpFlags(TcpFlags::SYN), seq));
    e
}

fn drop(port: u16, seq: u32, reason: &str, flags: u8, ms: u64) -> Event {
    let mut e = ev(Kind::Drop, port, ms);
    e.reason = Some(drop_reason(reason));
    e.tcp = Some((TcpFlags(flags), seq));
    e.direction = Some(Direction::In);
    e
}

fn reset_sent(port: u16, socket: bool, ms: u64) -> Event {
    let mut e = ev(Kind::ResetSent, port, ms);
    e.socket = Some(socket);
    e.reason = Some(Reason::Reset { code: 1 });
    e
}

/// A reset the origin sent on a socket in `state`.
fn reset_in_state(port: u16, state: TcpState, ms: u64) -> Event {
    let mut e = reset_sent(port, true, ms);
    e.state = Some(State::At(state));
    e
}

/// The event as the container saw it: DNATed to 172.17.0.2:80 in another namespace.
fn in_container(mut e: Event) -> Event {
    e.flow.local = CONTAINER.parse().unwrap();
    e.flow.local_port = 80;
    e.netns = CONTAINER_NS;
    e.forwarded = true;
    e
}

const SYN: u8 = TcpFlags::SYN;
const ACK: u8 = TcpFlags::ACK;

/// Live mode: what was decided since the last look.
fn decided(c: &mut Correlator) -> Vec<Decided> {
    c.drain_decided().collect()
}

fn run_with(mut c: Correlator, events: &[Event]) -> Vec<Attempt> {
    let mut out: Vec<Attempt> = events.iter().filter_map(|e| c.observe(e)).collect();
    out.extend(c.finish());
    out.sort_by_key(|a| a.flow.peer_port);
    out
}

fn run(events: &[Event]) -> Vec<Attempt> {
    run_with(Correlator::new(), events)
}

fn run_forwarding(events: &[Event]) -> Vec<Attempt> {
    run_with(Correlator::new().following_forwarded(HOST_NS), events)
}

#[test]
fn closed_port_is_refused() {
    let a = run(&[
        syn(1000, 7, 0),
        reset_sent(1000, false, 1),
        drop(1000, 7, "NO_SOCKET", SYN, 1),
    ]);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].outcome(), Outcome::Refused);
    assert_eq!(a[0].backend, None);
}

#[test]
fn retransmitted_syns_count_once() {
    let a = run(&[
        syn(1000, 7, 0),
        drop(1000, 7, "NETFILTER_DROP", SYN, 0),
        syn(1000, 7, 1000),
        drop(1000, 7, "NETFILTER_DROP", SYN, 1000),
        syn(1000, 7, 3000),
        drop(1000, 7, "NETFILTER_DROP", SYN, 3000),
    ]);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].syn_packets, 3);
    assert_eq!(a[0].outcome(), Outcome::FirewallDrop);
}

#[test]
fn port_reuse_with_new_isn_is_a_new_attempt() {
    let a = run(&[
        syn(1000, 7, 0),
        reset_sent(1000, false, 0),
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
    let a = run(&[syn(1000, 7, 0), drop(1000, 7, "NETFILTER_DROP", SYN, 0)]);
    assert_eq!(a[0].outcome(), Outcome::FirewallDrop);
}

#[test]
fn reset_after_handshake_is_the_origins() {
    let a = run(&[
        syn(1000, 7, 0),
        ev(Kind::Established, 1000, 1),
        reset_sent(1000, true, 5),
        ev(Kind::Closed, 1000, 5),
    ]);
    assert_eq!(a[0].outcome(), Outcome::OriginReset);
    let mut c = Counts::default();
    c.add(&a[0]);
    assert_eq!((c.syn, c.handshakes, c.origin_resets), (1, 1, 1));
}

#[test]
fn synack_retransmits_alone_leave_an_attempt_unanswered() {
    // A full accept queue and a lost return path both retransmit SYN-ACKs: the attempt stays
    // unanswered and the verdict tells them apart by the queue counters.
    let rtx = ev(Kind::SynackRetransmit, 2000, 1000);
    let a = run(&[syn(1000, 7, 0), syn(2000, 8, 0), rtx]);
    assert_eq!(a[0].outcome(), Outcome::Unanswered);
    assert_eq!(a[1].outcome(), Outcome::Unanswered);
    assert_eq!(a[1].synack_retransmits, 1);
}

#[test]
fn listen_overflow_on_final_ack_is_overload() {
    let a = run(&[
        syn(1000, 7, 0),
        drop(1000, 8, "TCP_LISTEN_OVERFLOW", ACK, 1),
    ]);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].outcome(), Outcome::OverloadDrop);
}

#[test]
fn drops_after_handshake_and_teardown_drops_do_not_change_the_outcome() {
    let a = run(&[
        syn(1000, 7, 0),
        ev(Kind::Established, 1000, 1),
        drop(1000, 50, "TCP_OLD_DATA", ACK | TcpFlags::PSH, 3),
        reset_sent(1000, false, 9),
        syn(2000, 8, 0),
        drop(2000, 9, "QUEUE_PURGE", ACK, 1),
        ev(Kind::Established, 2000, 2),
    ]);
    assert_eq!(a[0].outcome(), Outcome::Handshake);
    assert_eq!(a[1].outcome(), Outcome::Handshake);
}

#[test]
fn events_without_a_syn_start_nothing() {
    let a = run(&[reset_sent(1000, false, 0), ev(Kind::Closed, 1001, 0)]);
    assert!(a.is_empty());
}

#[test]
fn syn_seen_only_as_a_drop_still_counts() {
    let a = run(&[drop(1000, 7, "NO_SOCKET", SYN, 0)]);
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
    c.observe(&reset_sent(1000, false, 2));
    let a = c.finish();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].outcome(), Outcome::Refused);
}

#[test]
fn idle_attempts_are_taken_out() {
    let mut c = Correlator::new();
    c.observe(&syn(1000, 7, 0));
    c.observe(&reset_sent(1000, false, 0));
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
    for count in [5, 2] {
        c.observe_record(&Record::Loss {
            ts: SystemTime::UNIX_EPOCH,
            count,
        });
    }
    assert_eq!(c.lost_events, 7);
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
    c.observe(&reset_in_state(1, TcpState::Close, 6));
    let d = decided(&mut c);
    assert!(
        matches!(&d[..], [Decided::LateReset(a)] if a.edge && a.flow.peer_port == 1 && a.outcome() == Outcome::OriginReset),
        "{d:?}"
    );
    // A TIME_WAIT socket answering a stray segment, a listener's reset of an attempt not
    // seen: neither ends an accepted connection.
    c.observe(&reset_in_state(1, TcpState::TimeWait, 7));
    c.observe(&reset_in_state(2, TcpState::Listen, 7));
    c.observe(&reset_sent(3, false, 7));
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
fn live_mode_counts_each_attempt_once_as_soon_as_known() {
    let mut c = Correlator::live();
    // Handshake, decided at once though still open; then reset by the origin.
    c.observe(&syn(1000, 7, 0));
    assert!(decided(&mut c).is_empty());
    c.observe(&ev(Kind::Established, 1000, 1));
    let d = decided(&mut c);
    assert!(matches!(&d[..], [Decided::Attempt(a)] if a.outcome() == Outcome::Handshake));
    c.observe(&reset_in_state(1000, TcpState::Established, 5));
    assert!(matches!(&decided(&mut c)[..], [Decided::LateReset(_)]));
    // Firewall drop: decided at the first drop; retransmissions add nothing.
    c.observe(&syn(2000, 9, 0));
    c.observe(&drop(2000, 9, "NETFILTER_DROP", SYN, 0));
    c.observe(&syn(2000, 9, 1000));
    c.observe(&drop(2000, 9, "NETFILTER_DROP", SYN, 1000));
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

// Forwarded connections: recorded as the kernel reports them with Docker's `-p 443:80`.

fn container_backend() -> Backend {
    Backend {
        addr: CONTAINER.parse().unwrap(),
        port: 80,
        netns: CONTAINER_NS,
    }
}

#[test]
fn a_handshake_in_the_container_is_healthy_and_names_the_backend() {
    let a = run_forwarding(&[
        syn(1000, 7, 0),
        in_container(ev(Kind::Established, 1000, 1)),
        in_container(ev(Kind::Closed, 1000, 5)),
    ]);
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(a[0].outcome(), Outcome::Handshake);
    assert_eq!(
        a[0].flow.local_port, 443,
        "counted on the port the edge used"
    );
    assert_eq!(a[0].backend, Some(container_backend()));
}

#[test]
fn nothing_listening_in_the_container_is_refused_there() {
    let a = run_forwarding(&[
        syn(1000, 7, 0),
        in_container(drop(1000, 7, "NO_SOCKET", SYN, 1)),
        in_container(reset_sent(1000, false, 1)),
        syn(1001, 8, 2),
        in_container(reset_sent(1001, false, 3)),
    ]);
    assert_eq!(a.len(), 2);
    for attempt in &a {
        assert_eq!(attempt.outcome(), Outcome::Refused);
        assert_eq!(attempt.syn_packets, 1);
        assert_eq!(attempt.backend, Some(container_backend()));
    }
}

#[test]
fn a_forward_chain_drop_in_the_host_is_the_firewalls() {
    // FORWARD / DOCKER-USER drops the DNATed SYN in the host's namespace: the host's netns,
    // the rewritten address (the kernel flags it forwarded: port 80 is not watched).
    let mut dropped = drop(1000, 7, "NETFILTER_DROP", SYN, 1);
    dropped.flow.local = CONTAINER.parse().unwrap();
    dropped.flow.local_port = 80;
    dropped.forwarded = true;
    let a = run_forwarding(&[syn(1000, 7, 0), dropped, syn(1000, 7, 1000), dropped]);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].outcome(), Outcome::FirewallDrop);
    assert_eq!(a[0].syn_packets, 2);
    let b = a[0].backend.unwrap();
    assert_eq!((b.port, b.netns), (80, HOST_NS));
}

#[test]
fn dnat_to_the_same_port_is_followed_without_the_kernels_mark() {
    // `-p 443:443`: the container's port is watched too; in the host's namespace the kernel
    // reports the FORWARD drop at the rewritten address as an ordinary event.
    let mut dropped = drop(1000, 7, "NETFILTER_DROP", SYN, 1);
    dropped.flow.local = CONTAINER.parse().unwrap();
    let a = run_forwarding(&[syn(1000, 7, 0), dropped]);
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(a[0].outcome(), Outcome::FirewallDrop);
    assert_eq!(a[0].backend.unwrap().port, 443);
}

#[test]
fn forwarded_events_of_no_attempt_count_for_nothing() {
    // The container dialled an edge address itself: the kernel lets nothing of it through
    // unless a SYN from that peer port arrived; a stray one that got through starts nothing.
    let a = run_forwarding(&[
        in_container(ev(Kind::Established, 5000, 0)),
        in_container(reset_sent(5000, false, 1)),
    ]);
    assert!(a.is_empty(), "{a:?}");
}

#[test]
fn the_same_peer_port_to_another_local_port_is_its_own_attempt() {
    let mut other = syn(1000, 9, 1);
    other.flow.local_port = 80;
    let mut refused = reset_sent(1000, false, 2);
    refused.flow.local_port = 80;
    let a = run_forwarding(&[
        syn(1000, 7, 0),
        other,
        refused,
        ev(Kind::Established, 1000, 3),
    ]);
    assert_eq!(a.len(), 2, "{a:?}");
    let by_port = |p| a.iter().find(|x| x.flow.local_port == p).unwrap();
    assert_eq!(by_port(80).outcome(), Outcome::Refused);
    assert_eq!(by_port(443).outcome(), Outcome::Handshake);
    assert!(a.iter().all(|x| x.backend.is_none()));
}

#[test]
fn a_syn_drop_with_another_isn_is_not_the_attempts() {
    let mut late = in_container(drop(1000, 99, "NO_SOCKET", SYN, 1));
    late.forwarded = true;
    let a = run_forwarding(&[syn(1000, 7, 0), late]);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].outcome(), Outcome::Unanswered);
}

#[test]
fn live_mode_settles_forwarded_handshakes_and_their_late_resets() {
    let mut c = Correlator::live().following_forwarded(HOST_NS);
    c.observe(&syn(1000, 7, 0));
    c.observe(&in_container(ev(Kind::Established, 1000, 1)));
    let d = decided(&mut c);
    assert!(
        matches!(&d[..], [Decided::Attempt(a)] if a.outcome() == Outcome::Handshake && a.flow.local_port == 443 && a.backend == Some(container_backend())),
        "{d:?}"
    );
    assert_eq!(c.open_attempts(), 0);
    // The application in the container aborts the connection later.
    c.observe(&in_container(reset_in_state(
        1000,
        TcpState::Established,
        9,
    )));
    let d = decided(&mut c);
    assert!(
        matches!(&d[..], [Decided::LateReset(a)] if a.flow.local_port == 443 && a.backend == Some(container_backend())),
        "{d:?}"
    );
    // Refused in the container: decided at once, on the edge's port.
    c.observe(&syn(1001, 8, 10));
    c.observe(&in_container(reset_sent(1001, false, 11)));
    let d = decided(&mut c);
    assert!(
        matches!(&d[..], [Decided::Attempt(a)] if a.outcome() == Outcome::Refused && a.flow.local_port == 443),
        "{d:?}"
    );
}

#[test]
fn attempts_open_when_events_are_lost_are_unknown_not_unanswered() {
    let mut c = Correlator::new();
    c.observe(&syn(1000, 7, 0));
    c.observe_record(&Record::Loss {
        ts: std::time::SystemTime::UNIX_EPOCH,
        count: 5,
    });
    c.observe(&syn(2000, 8, 1));
    let mut a = c.finish();
    a.sort_by_key(|a| a.flow.peer_port);
    assert_eq!(a[0].outcome(), Outcome::Unknown);
    // Opened after the loss was noticed: unanswered as usual.
    assert_eq!(a[1].outcome(), Outcome::Unanswered);
    let mut counts = Counts::default();
    counts.add(&a[0]);
    assert_eq!((counts.unknown, counts.unanswered), (1, 0));
}

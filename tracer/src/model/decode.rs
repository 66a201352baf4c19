//! Kernel records decoded once into typed events: the ring's connection events and listener
//! changes, and the SYN log's records. A new kind of record needs its decoding here and
//! nowhere else; every later stage works on [`Event`] and [`Record`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use std::time::Duration;

use tracer_common::{
    EventKind, SynRecord, EVENT_F_EDGE, EVENT_F_EGRESS, EVENT_F_FORWARDED, EVENT_F_HAS_REASON,
    EVENT_F_HAS_SOCK, EVENT_F_HAS_TCP, EVENT_F_PENDING,
};

use crate::{
    model::{
        clock::{Clock, JiffiesClock},
        dial::{self, DialEvent},
        event::{Direction, Event, Flow, Kind, ListenerEvent, Record, State, TcpFlags, TcpState},
        exchange::{ExchangeEvent, Step, WaitingRequest},
    },
    reasons::{Reason, ReasonTable},
};

fn addr(family: u16, bytes: &[u8; 16]) -> Option<IpAddr> {
    match family {
        4 => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        6 => Some(IpAddr::V6(Ipv6Addr::from(*bytes)).to_canonical()),
        _ => None,
    }
}

/// Decodes a ring record: a connection's event or a listener's change; `None` for a kind or
/// family this build does not know.
pub fn decode_record(
    raw: &tracer_common::Event,
    clock: &Clock,
    jiffies: &JiffiesClock,
    reasons: &ReasonTable,
) -> Option<Record> {
    let kind = EventKind::from_u32(u32::from(raw.kind))?;
    if let Some(step) = exchange_step(kind, raw, clock, jiffies) {
        return Some(Record::Exchange(ExchangeEvent {
            ts: clock.wall(raw.ts_ns),
            peer: addr(raw.family, &raw.peer_addr)?,
            peer_port: raw.peer_port,
            local_port: raw.local_port,
            step,
        }));
    }
    if kind == EventKind::Dial {
        let ip = addr(raw.family, &raw.peer_addr)?;
        return Some(Record::Dial(DialEvent {
            ts: clock.wall(raw.ts_ns),
            pid: (raw.aux >> 32) as u32,
            netns: raw.netns,
            target: std::net::SocketAddr::new(ip, raw.peer_port),
            step: dial::step_of(
                raw.state,
                (raw.flags & EVENT_F_HAS_REASON != 0).then_some(raw.reason),
                |code| reasons.drop_reason(code),
            )?,
        }));
    }
    if kind != EventKind::Listen {
        return decode(raw, clock, reasons).map(Record::Event);
    }
    const TCP_LISTEN: u32 = 10;
    Some(Record::Listener(ListenerEvent {
        ts: clock.wall(raw.ts_ns),
        up: raw.state & 0xff == TCP_LISTEN,
        addr: addr(raw.family, &raw.local_addr)?,
        port: raw.local_port,
        netns: raw.netns,
        // pid_tgid: the process (thread group) id is the high half.
        pid: (raw.aux >> 32) as u32,
        comm: raw.peer_addr,
    }))
}

/// The exchange step a ring record stands for, if it is one.
fn exchange_step(
    kind: EventKind,
    raw: &tracer_common::Event,
    clock: &Clock,
    jiffies: &JiffiesClock,
) -> Option<Step> {
    let has = |f: u32| raw.flags & f != 0;
    Some(match kind {
        EventKind::ResponseBegan => Step::ResponseBegan {
            request_at: clock.wall(raw.aux),
        },
        EventKind::OriginClosed => Step::OriginClosed {
            // The last payload's tick: its start, so never later than the payload.
            idle: raw
                .ts_ns
                .checked_sub(jiffies.mono_ns(raw.aux))
                .map(Duration::from_nanos),
            pending: has(EVENT_F_PENDING),
        },
        EventKind::RequestAfterClose => Step::RequestAfterClose,
        EventKind::ExchangeReset => Step::Reset {
            by_origin: has(EVENT_F_EGRESS),
        },
        _ => return None,
    })
}

/// Decodes a followed edge connection's entry whose request is still waiting.
pub fn decode_waiting(
    key: &tracer_common::ArrivalKey,
    s: &tracer_common::FlowState,
    clock: &Clock,
) -> Option<WaitingRequest> {
    Some(WaitingRequest {
        peer: addr(key.family, &key.addr)?,
        peer_port: key.port,
        local_port: s.local_port,
        since: clock.wall(s.request_ns),
        last_tick: s.last_jiffies,
    })
}

/// Decodes a ring event of a connection; `None` for a kind or family this build does not know.
pub fn decode(raw: &tracer_common::Event, clock: &Clock, reasons: &ReasonTable) -> Option<Event> {
    let kind = Kind::of_kernel(EventKind::from_u32(u32::from(raw.kind))?)?;
    let has = |f: u32| raw.flags & f != 0;
    let reason = match (has(EVENT_F_HAS_REASON), kind) {
        (true, Kind::Drop) => Some(reasons.drop_reason(raw.reason)),
        (true, _) => Some(Reason::Reset { code: raw.reason }),
        // Before 5.17: the function that freed it, where it tells (`aux` is the location).
        (false, Kind::Drop) if raw.aux != 0 => reasons.drop_reason_at(raw.aux),
        (false, _) => None,
    };
    let state = match kind {
        Kind::ResetSent if has(EVENT_F_HAS_SOCK) => Some(State::At(TcpState::from_raw(raw.state))),
        Kind::Established | Kind::Closed => Some(State::Change {
            old: TcpState::from_raw(raw.state >> 8),
            new: TcpState::from_raw(raw.state & 0xff),
        }),
        _ => None,
    };
    Some(Event {
        ts: clock.wall(raw.ts_ns),
        kind,
        flow: Flow {
            peer: addr(raw.family, &raw.peer_addr)?,
            peer_port: raw.peer_port,
            local: addr(raw.family, &raw.local_addr)?,
            local_port: raw.local_port,
        },
        netns: raw.netns,
        edge: has(EVENT_F_EDGE),
        forwarded: has(EVENT_F_FORWARDED),
        tcp: has(EVENT_F_HAS_TCP).then_some((TcpFlags(raw.tcp_flags as u8), raw.seq)),
        state,
        reason,
        direction: (kind == Kind::Drop).then_some(if has(EVENT_F_EGRESS) {
            Direction::Out
        } else {
            Direction::In
        }),
        socket: (kind == Kind::ResetSent).then(|| has(EVENT_F_HAS_SOCK)),
    })
}

/// Decodes a record of the SYN log: a `syn` event at the watched interface, which is in the
/// tracer's namespace (`netns`).
pub fn decode_syn(
    raw: &SynRecord,
    clock: &Clock,
    jiffies: &JiffiesClock,
    netns: u32,
) -> Option<Event> {
    let family = u16::from(raw.family);
    Some(Event {
        ts: clock.wall(jiffies.mono_ns(raw.jiffies)),
        kind: Kind::Syn,
        flow: Flow {
            peer: addr(family, &raw.peer_addr)?,
            peer_port: raw.peer_port,
            local: addr(family, &raw.local_addr)?,
            local_port: raw.local_port,
        },
        netns,
        edge: u32::from(raw.flags) & EVENT_F_EDGE != 0,
        forwarded: false,
        tcp: Some((TcpFlags(raw.tcp_flags), raw.seq)),
        state: None,
        reason: None,
        direction: None,
        socket: None,
    })
}

#[cfg(test)]
mod tests {
    use tracer_common::Event as RawEvent;

    use super::*;
    use crate::{model::clock::JiffiesSample, reasons::DropClass};

    pub fn raw(kind: EventKind) -> RawEvent {
        let mut peer = [0u8; 16];
        peer[..4].copy_from_slice(&[173, 245, 48, 10]);
        let mut local = [0u8; 16];
        local[..4].copy_from_slice(&[192, 0, 2, 1]);
        RawEvent {
            ts_ns: 1_000_000_000,
            kind: kind as u16,
            family: 4,
            netns: 4026531840,
            peer_addr: peer,
            local_addr: local,
            peer_port: 40000,
            local_port: 443,
            flags: EVENT_F_EDGE,
            reason: 0,
            state: 0,
            tcp_flags: 0,
            seq: 0,
            aux: 0,
        }
    }

    fn jiffies() -> JiffiesClock {
        JiffiesClock::new(JiffiesSample {
            jiffies: 1000,
            mono_ns: 1_000_000_000,
        })
    }

    #[test]
    fn exchange_steps_decode_with_their_times() {
        let clock = Clock::now();
        let mut r = raw(EventKind::OriginClosed);
        // Closed at 5 s; the last payload in tick 1250, 250 ticks of 4 ms after tick 1000 at
        // 1 s: at 2 s, so 3 s idle.
        r.ts_ns = 5_000_000_000;
        r.aux = 1250;
        r.flags |= EVENT_F_PENDING;
        let Some(Record::Exchange(e)) = decode_record(&r, &clock, &jiffies(), &table()) else {
            panic!("not an exchange");
        };
        assert_eq!(
            e.step,
            Step::OriginClosed {
                idle: Some(Duration::from_secs(3)),
                pending: true
            }
        );
        assert_eq!((e.peer_port, e.local_port), (40000, 443));
        let mut r = raw(EventKind::ResponseBegan);
        r.aux = 1_000_000_000;
        let Some(Record::Exchange(e)) = decode_record(&r, &clock, &jiffies(), &table()) else {
            panic!("not an exchange");
        };
        let Step::ResponseBegan { request_at } = e.step else {
            panic!("{e:?}");
        };
        assert_eq!(request_at, clock.wall(1_000_000_000));
    }

    fn table() -> ReasonTable {
        ReasonTable::for_tests(&[(3, "NO_SOCKET"), (12, "NETFILTER_DROP")], &[])
    }

    #[test]
    fn a_listen_transition_decodes_to_a_listener_change() {
        let mut r = raw(EventKind::Listen);
        r.peer_addr = [0; 16];
        r.peer_addr[..5].copy_from_slice(b"nginx");
        r.local_addr = [0; 16];
        r.aux = (812u64 << 32) | 815;
        // LISTEN -> CLOSE: stopped listening.
        r.state = (10 << 8) | 7;
        let Some(Record::Listener(l)) = decode_record(&r, &Clock::now(), &jiffies(), &table())
        else {
            panic!("not a listener change");
        };
        assert!(!l.up);
        assert_eq!((l.pid, l.comm().as_str(), l.port), (812, "nginx", 443));
        assert_eq!(l.addr, "0.0.0.0".parse::<IpAddr>().unwrap());
        // CLOSE -> LISTEN: started.
        r.state = (7 << 8) | 10;
        assert!(matches!(
            decode_record(&r, &Clock::now(), &jiffies(), &table()),
            Some(Record::Listener(ListenerEvent { up: true, .. }))
        ));
        // A connection's event still decodes as one.
        assert!(matches!(
            decode_record(
                &raw(EventKind::Established),
                &Clock::now(),
                &jiffies(),
                &table()
            ),
            Some(Record::Event(_))
        ));
    }

    #[test]
    fn a_netfilter_drop_decodes_to_types() {
        let mut r = raw(EventKind::Drop);
        r.flags |= EVENT_F_HAS_REASON | EVENT_F_HAS_TCP | EVENT_F_FORWARDED;
        r.reason = 12;
        r.tcp_flags = 0x02;
        r.seq = 77;
        r.local_port = 80;
        let e = decode(&r, &Clock::now(), &table()).unwrap();
        assert_eq!(e.kind, Kind::Drop);
        assert_eq!(e.flow.peer, "173.245.48.10".parse::<IpAddr>().unwrap());
        assert_eq!(e.flow.local_port, 80);
        assert_eq!(
            e.reason,
            Some(Reason::Drop {
                code: 12,
                class: DropClass::Filter
            })
        );
        assert_eq!(e.tcp, Some((TcpFlags(TcpFlags::SYN), 77)));
        assert_eq!(e.direction, Some(Direction::In));
        assert!(e.edge && e.forwarded && e.is_inbound_syn());
        assert_eq!(e.netns, 4026531840);
    }

    #[test]
    fn refusals_states_and_ipv6() {
        let mut r = raw(EventKind::ResetSent);
        r.flags |= EVENT_F_HAS_REASON;
        r.reason = 1;
        let e = decode(&r, &Clock::now(), &table()).unwrap();
        assert_eq!(e.socket, Some(false));
        assert_eq!(e.state, None);
        assert_eq!(e.reason, Some(Reason::Reset { code: 1 }));

        let mut r = raw(EventKind::Established);
        r.family = 6;
        r.peer_addr = "2606:4700::10".parse::<Ipv6Addr>().unwrap().octets();
        r.state = (3 << 8) | 1;
        r.flags = 0;
        let e = decode(&r, &Clock::now(), &table()).unwrap();
        assert_eq!(e.flow.peer, "2606:4700::10".parse::<IpAddr>().unwrap());
        assert_eq!(
            e.state,
            Some(State::Change {
                old: TcpState::SynRecv,
                new: TcpState::Established
            })
        );
        assert!(!e.edge && !e.forwarded);
    }

    #[test]
    fn unknown_kind_or_family_is_skipped() {
        let mut r = raw(EventKind::Syn);
        r.kind = 99;
        assert!(decode(&r, &Clock::now(), &table()).is_none());
        let mut r = raw(EventKind::Drop);
        r.family = 9;
        assert!(decode(&r, &Clock::now(), &table()).is_none());
    }

    #[test]
    fn a_syn_record_decodes_in_the_tracers_namespace() {
        let mut peer = [0u8; 16];
        peer[..4].copy_from_slice(&[173, 245, 48, 10]);
        let mut local = [0u8; 16];
        local[..4].copy_from_slice(&[192, 0, 2, 1]);
        let r = SynRecord {
            jiffies: 1000,
            ring_pos: 0,
            peer_addr: peer,
            local_addr: local,
            peer_port: 40000,
            local_port: 443,
            seq: 9,
            _pad: 0,
            family: 4,
            tcp_flags: 0x02,
            flags: EVENT_F_EDGE as u16,
        };
        let clock = Clock::now();
        let jiffies = JiffiesClock::new(JiffiesSample {
            jiffies: 1002,
            mono_ns: 50_000_000,
        });
        let e = decode_syn(&r, &clock, &jiffies, 7).unwrap();
        assert_eq!(e.ts, clock.wall(42_000_000));
        assert_eq!(e.kind, Kind::Syn);
        assert_eq!(e.flow.local, "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!((e.flow.peer_port, e.flow.local_port), (40000, 443));
        assert_eq!(e.tcp, Some((TcpFlags(0x02), 9)));
        assert!(e.edge && e.is_inbound_syn());
        assert_eq!(e.netns, 7);
    }
}

//! Kernel events decoded for people and machines: the `tracer events` JSON-lines schema.

use std::{
    borrow::Cow,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::OnceLock,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};
use tracer_common::{
    Event, EventKind, SynRecord, EVENT_F_EDGE, EVENT_F_EGRESS, EVENT_F_HAS_REASON,
    EVENT_F_HAS_SOCK, EVENT_F_HAS_TCP,
};

use crate::kernel::ReasonNames;

/// A name an event carries: borrowed from a table built once (the common case, no allocation
/// per event), or owned (parsed back from JSON, an unknown code).
pub type Name = Cow<'static, str>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Syn,
    Drop,
    ResetSent,
    ResetReceived,
    Established,
    Closed,
    SynackRetransmit,
    Loss,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Syn => "syn",
            Self::Drop => "drop",
            Self::ResetSent => "reset_sent",
            Self::ResetReceived => "reset_received",
            Self::Established => "established",
            Self::Closed => "closed",
            Self::SynackRetransmit => "synack_retransmit",
            Self::Loss => "loss",
        }
    }
}

/// One event as `tracer events` prints it. Addresses are from the origin's point of view.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TracedEvent {
    #[serde(with = "rfc3339")]
    pub ts: SystemTime,
    pub kind: Kind,
    pub peer_addr: Option<IpAddr>,
    pub peer_port: Option<u16>,
    pub local_addr: Option<IpAddr>,
    pub local_port: Option<u16>,
    /// Peer inside the watched ranges.
    pub edge: Option<bool>,
    /// The kernel's own name for the drop or reset reason.
    pub reason: Option<Name>,
    /// TCP flags of the packet, e.g. "SYN" (syn, drop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_flags: Option<Name>,
    /// TCP sequence number of the packet (syn, drop); a retransmitted SYN repeats it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u32>,
    /// TCP state (reset_sent) or transition (established, closed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<Name>,
    /// reset_sent: whether a socket matched (false: "no socket", i.e. refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<bool>,
    /// drop: "in" for packets arriving, "out" for packets the origin sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Name>,
    /// loss: events lost since the previous loss event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

impl TracedEvent {
    pub fn loss(ts: SystemTime, count: u64) -> Self {
        Self {
            ts,
            kind: Kind::Loss,
            peer_addr: None,
            peer_port: None,
            local_addr: None,
            local_port: None,
            edge: None,
            reason: None,
            tcp_flags: None,
            seq: None,
            state: None,
            socket: None,
            direction: None,
            count: Some(count),
        }
    }

    pub fn has_tcp_flag(&self, flag: &str) -> bool {
        self.tcp_flags
            .as_deref()
            .is_some_and(|f| f.split('|').any(|x| x == flag))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// One aligned line for people.
    pub fn to_text(&self) -> String {
        let ts = humantime::format_rfc3339_millis(self.ts).to_string();
        let mut line = format!("{ts}  {:<17}", self.kind.as_str());
        if self.kind == Kind::Loss {
            let _ = write!(
                line,
                " {} events lost (ring buffer full)",
                self.count.unwrap_or(0)
            );
            return line;
        }
        let endpoint = |a: Option<IpAddr>, p: Option<u16>| match (a, p) {
            (Some(IpAddr::V6(a)), Some(p)) => format!("[{a}]:{p}"),
            (Some(a), Some(p)) => format!("{a}:{p}"),
            _ => "-".to_string(),
        };
        let _ = write!(
            line,
            " {:>28} -> {:<28} {:<8}",
            endpoint(self.peer_addr, self.peer_port),
            endpoint(self.local_addr, self.local_port),
            if self.edge == Some(true) {
                "edge"
            } else {
                "non-edge"
            }
        );
        for extra in [&self.reason, &self.tcp_flags, &self.state]
            .into_iter()
            .flatten()
        {
            let _ = write!(line, " {extra}");
        }
        if self.socket == Some(false) {
            line.push_str(" no-socket");
        }
        if self.direction.as_deref() == Some("out") {
            line.push_str(" outgoing");
        }
        line.trim_end().to_string()
    }
}

mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_micros(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&text).map_err(serde::de::Error::custom)
    }
}

/// Converts the kernel's CLOCK_MONOTONIC stamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    wall_at_zero: SystemTime,
}

impl Clock {
    pub fn now() -> Self {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid out-pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let mono = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
        Self {
            wall_at_zero: SystemTime::now() - mono,
        }
    }

    pub fn wall(&self, mono_ns: u64) -> SystemTime {
        self.wall_at_zero + Duration::from_nanos(mono_ns)
    }
}

/// The jiffies counter and CLOCK_MONOTONIC_COARSE (ns), read together in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JiffiesSample {
    pub jiffies: u64,
    pub mono_ns: u64,
}

/// Converts the SYN log's jiffies to CLOCK_MONOTONIC: from the newest sample, back by the tick
/// length measured between the first sample and the newest. The result is the start of the
/// SYN's tick, so never later than the SYN itself; the tick length is known to a fraction of a
/// percent after a second, and SYNs are converted within a poll of arriving.
#[derive(Clone, Copy, Debug)]
pub struct JiffiesClock {
    first: JiffiesSample,
    last: JiffiesSample,
}

/// Tick length until two samples a tick apart measure it (CONFIG_HZ=250, the common default).
const ASSUMED_TICK_NS: f64 = 4_000_000.0;

impl JiffiesClock {
    pub fn new(sample: JiffiesSample) -> Self {
        Self {
            first: sample,
            last: sample,
        }
    }

    pub fn update(&mut self, sample: JiffiesSample) {
        if sample.jiffies >= self.last.jiffies && sample.mono_ns >= self.last.mono_ns {
            self.last = sample;
        }
    }

    pub fn tick_ns(&self) -> f64 {
        let ticks = self.last.jiffies - self.first.jiffies;
        if ticks == 0 {
            return ASSUMED_TICK_NS;
        }
        (self.last.mono_ns - self.first.mono_ns) as f64 / ticks as f64
    }

    pub fn mono_ns(&self, jiffies: u64) -> u64 {
        let tick = self.tick_ns();
        if jiffies >= self.last.jiffies {
            let ahead = (jiffies - self.last.jiffies) as f64 * tick;
            self.last.mono_ns.saturating_add(ahead as u64)
        } else {
            let behind = (self.last.jiffies - jiffies) as f64 * tick;
            self.last.mono_ns.saturating_sub(behind as u64)
        }
    }
}

/// "SYN|ACK" for 0x12; "NONE" without any of the six classic flags.
pub fn tcp_flags_name(flags: u32) -> Name {
    const NAMES: [(u32, &str); 6] = [
        (0x02, "SYN"),
        (0x10, "ACK"),
        (0x01, "FIN"),
        (0x04, "RST"),
        (0x08, "PSH"),
        (0x20, "URG"),
    ];
    static TABLE: OnceLock<Vec<String>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        (0..64u32)
            .map(|f| {
                let names: Vec<&str> = NAMES
                    .iter()
                    .filter(|(bit, _)| f & bit != 0)
                    .map(|(_, n)| *n)
                    .collect();
                if names.is_empty() {
                    "NONE".into()
                } else {
                    names.join("|")
                }
            })
            .collect()
    });
    Name::Borrowed(table[(flags & 0x3f) as usize].as_str())
}

const TCP_STATES: [&str; 14] = [
    "TCP_STATE_0",
    "TCP_ESTABLISHED",
    "TCP_SYN_SENT",
    "TCP_SYN_RECV",
    "TCP_FIN_WAIT1",
    "TCP_FIN_WAIT2",
    "TCP_TIME_WAIT",
    "TCP_CLOSE",
    "TCP_CLOSE_WAIT",
    "TCP_LAST_ACK",
    "TCP_LISTEN",
    "TCP_CLOSING",
    "TCP_NEW_SYN_RECV",
    "TCP_BOUND_INACTIVE",
];

pub fn tcp_state_name(state: u32) -> Name {
    match TCP_STATES.get(state as usize) {
        Some(name) => Name::Borrowed(name),
        None => format!("TCP_STATE_{state}").into(),
    }
}

/// "TCP_SYN_RECV->TCP_ESTABLISHED" for a state change packed as `old << 8 | new`.
pub fn tcp_transition_name(packed: u32) -> Name {
    static TABLE: OnceLock<Vec<String>> = OnceLock::new();
    let n = TCP_STATES.len();
    let (old, new) = ((packed >> 8) as usize, (packed & 0xff) as usize);
    if old < n && new < n {
        let table = TABLE.get_or_init(|| {
            (0..n * n)
                .map(|i| format!("{}->{}", TCP_STATES[i / n], TCP_STATES[i % n]))
                .collect()
        });
        return Name::Borrowed(table[old * n + new].as_str());
    }
    format!(
        "{}->{}",
        tcp_state_name(packed >> 8),
        tcp_state_name(packed & 0xff)
    )
    .into()
}

fn addr(family: u32, bytes: &[u8; 16]) -> Option<IpAddr> {
    match family {
        4 => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        6 => Some(IpAddr::V6(Ipv6Addr::from(*bytes)).to_canonical()),
        _ => None,
    }
}

/// Decodes a raw kernel event; `None` for a kind this build does not know.
pub fn decode(raw: &Event, clock: &Clock, names: &ReasonNames) -> Option<TracedEvent> {
    let kind = match EventKind::from_u32(raw.kind)? {
        EventKind::Syn => Kind::Syn,
        EventKind::Drop => Kind::Drop,
        EventKind::ResetSent => Kind::ResetSent,
        EventKind::ResetReceived => Kind::ResetReceived,
        EventKind::Established => Kind::Established,
        EventKind::Closed => Kind::Closed,
        EventKind::SynackRetransmit => Kind::SynackRetransmit,
    };
    let has = |f: u32| raw.flags & f != 0;
    let reason = has(EVENT_F_HAS_REASON).then(|| match kind {
        Kind::Drop => names.drop_reason(raw.reason),
        _ => names.reset_reason(raw.reason),
    });
    let state = match kind {
        Kind::ResetSent if has(EVENT_F_HAS_SOCK) => Some(tcp_state_name(raw.state)),
        Kind::Established | Kind::Closed => Some(tcp_transition_name(raw.state)),
        _ => None,
    };
    Some(TracedEvent {
        ts: clock.wall(raw.ts_ns),
        kind,
        peer_addr: addr(raw.family, &raw.peer_addr),
        peer_port: Some(raw.peer_port),
        local_addr: addr(raw.family, &raw.local_addr),
        local_port: Some(raw.local_port),
        edge: Some(has(EVENT_F_EDGE)),
        reason,
        tcp_flags: has(EVENT_F_HAS_TCP).then(|| tcp_flags_name(raw.tcp_flags)),
        seq: has(EVENT_F_HAS_TCP).then_some(raw.seq),
        state,
        socket: (kind == Kind::ResetSent).then(|| has(EVENT_F_HAS_SOCK)),
        direction: (kind == Kind::Drop)
            .then(|| Name::Borrowed(if has(EVENT_F_EGRESS) { "out" } else { "in" })),
        count: None,
    })
}

/// Decodes a record of the SYN log: a `syn` event.
pub fn decode_syn(raw: &SynRecord, clock: &Clock, jiffies: &JiffiesClock) -> TracedEvent {
    let family = u32::from(raw.family);
    TracedEvent {
        ts: clock.wall(jiffies.mono_ns(raw.jiffies)),
        kind: Kind::Syn,
        peer_addr: addr(family, &raw.peer_addr),
        peer_port: Some(raw.peer_port),
        local_addr: addr(family, &raw.local_addr),
        local_port: Some(raw.local_port),
        edge: Some(u32::from(raw.flags) & EVENT_F_EDGE != 0),
        reason: None,
        tcp_flags: Some(tcp_flags_name(u32::from(raw.tcp_flags))),
        seq: Some(raw.seq),
        state: None,
        socket: None,
        direction: None,
        count: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(kind: EventKind) -> Event {
        let mut peer = [0u8; 16];
        peer[..4].copy_from_slice(&[173, 245, 48, 10]);
        let mut local = [0u8; 16];
        local[..4].copy_from_slice(&[192, 0, 2, 1]);
        Event {
            ts_ns: 1_000_000_000,
            kind: kind as u32,
            family: 4,
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

    fn names() -> ReasonNames {
        let mut n = ReasonNames::default();
        n.drop.insert(3, "NO_SOCKET");
        n.drop.insert(12, "NETFILTER_DROP");
        n.reset.insert(1, "NO_SOCKET");
        n
    }

    #[test]
    fn decodes_a_netfilter_drop_of_a_syn() {
        let mut r = raw(EventKind::Drop);
        r.flags |= EVENT_F_HAS_REASON | EVENT_F_HAS_TCP;
        r.reason = 12;
        r.tcp_flags = 0x02;
        r.seq = 77;
        let e = decode(&r, &Clock::now(), &names()).unwrap();
        assert_eq!(e.kind, Kind::Drop);
        assert_eq!(e.peer_addr, Some("173.245.48.10".parse().unwrap()));
        assert_eq!(e.local_port, Some(443));
        assert_eq!(e.reason.as_deref(), Some("NETFILTER_DROP"));
        assert_eq!(e.tcp_flags.as_deref(), Some("SYN"));
        assert_eq!(e.direction.as_deref(), Some("in"));
        assert_eq!(e.edge, Some(true));
        let json: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        for key in [
            "ts",
            "kind",
            "peer_addr",
            "peer_port",
            "local_addr",
            "local_port",
            "edge",
            "reason",
        ] {
            assert!(json.get(key).is_some(), "missing {key}");
        }
        assert_eq!(json["kind"], "drop");
        assert_eq!(json["peer_addr"], "173.245.48.10");
        let back: TracedEvent = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(back.kind, e.kind);
        assert_eq!(back.seq, Some(77));
    }

    #[test]
    fn decodes_a_refusal_without_socket() {
        let mut r = raw(EventKind::ResetSent);
        r.flags |= EVENT_F_HAS_REASON;
        r.reason = 1;
        let e = decode(&r, &Clock::now(), &names()).unwrap();
        assert_eq!(e.reason.as_deref(), Some("NO_SOCKET"));
        assert_eq!(e.socket, Some(false));
        assert_eq!(e.state, None);
        assert!(e.to_text().contains("no-socket"));
    }

    #[test]
    fn unknown_and_subsystem_reasons_get_names() {
        let n = names();
        assert_eq!(n.drop_reason(999), "DROP_REASON_999");
        assert_eq!(n.drop_reason(0x0002_0005), "SUBSYS_2_5");
        assert_eq!(n.reset_reason(77), "RST_REASON_77");
    }

    #[test]
    fn decodes_ipv6_and_state_changes() {
        let mut r = raw(EventKind::Established);
        r.family = 6;
        r.peer_addr = "2606:4700::10".parse::<Ipv6Addr>().unwrap().octets();
        r.state = (3 << 8) | 1;
        r.flags = 0;
        let e = decode(&r, &Clock::now(), &names()).unwrap();
        assert_eq!(e.peer_addr, Some("2606:4700::10".parse().unwrap()));
        assert_eq!(e.state.as_deref(), Some("TCP_SYN_RECV->TCP_ESTABLISHED"));
        assert_eq!(e.edge, Some(false));
        assert!(e.to_text().contains("[2606:4700::10]:40000"));
    }

    #[test]
    fn unknown_kind_is_skipped_and_loss_has_a_count() {
        let mut r = raw(EventKind::Syn);
        r.kind = 99;
        assert!(decode(&r, &Clock::now(), &names()).is_none());
        let l = TracedEvent::loss(SystemTime::now(), 5);
        let json: serde_json::Value = serde_json::from_str(&l.to_json()).unwrap();
        assert_eq!(json["kind"], "loss");
        assert_eq!(json["count"], 5);
        assert!(json["peer_addr"].is_null());
    }

    #[test]
    fn decodes_a_syn_record() {
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
        let e = decode_syn(&r, &clock, &jiffies);
        assert_eq!(e.ts, clock.wall(42_000_000));
        assert_eq!(e.kind, Kind::Syn);
        assert_eq!(e.peer_addr, Some("173.245.48.10".parse().unwrap()));
        assert_eq!(e.local_addr, Some("192.0.2.1".parse().unwrap()));
        assert_eq!((e.peer_port, e.local_port), (Some(40000), Some(443)));
        assert_eq!(e.tcp_flags.as_deref(), Some("SYN"));
        assert_eq!((e.seq, e.edge), (Some(9), Some(true)));
    }

    #[test]
    fn jiffies_convert_with_the_measured_tick() {
        let sample = |jiffies, mono_ns| JiffiesSample { jiffies, mono_ns };
        let mut c = JiffiesClock::new(sample(100, 1_000_000_000));
        // One sample: the assumed tick.
        assert_eq!(c.mono_ns(100), 1_000_000_000);
        assert_eq!(c.mono_ns(99), 996_000_000);
        // HZ=1000 measured over a second.
        c.update(sample(1100, 2_000_000_000));
        assert_eq!(c.tick_ns(), 1_000_000.0);
        assert_eq!(c.mono_ns(1090), 1_990_000_000);
        assert_eq!(c.mono_ns(1101), 2_001_000_000);
        // A stale sample (older than the newest) is ignored.
        c.update(sample(1050, 1_500_000_000));
        assert_eq!(c.mono_ns(1100), 2_000_000_000);
        // Far in the past saturates rather than wrapping.
        assert_eq!(c.mono_ns(0), 900_000_000);
        assert_eq!(JiffiesClock::new(sample(10, 0)).mono_ns(0), 0);
    }

    #[test]
    fn flag_names() {
        assert_eq!(tcp_flags_name(0x12), "SYN|ACK");
        assert_eq!(tcp_flags_name(0), "NONE");
        assert_eq!(tcp_flags_name(0x11), "ACK|FIN");
        assert_eq!(tcp_state_name(10), "TCP_LISTEN");
        assert_eq!(tcp_state_name(99), "TCP_STATE_99");
        assert_eq!(tcp_transition_name((9 << 8) | 7), "TCP_LAST_ACK->TCP_CLOSE");
        assert_eq!(
            tcp_transition_name((99 << 8) | 7),
            "TCP_STATE_99->TCP_CLOSE"
        );
    }
}

//! The `tracer events` JSON-lines and text schema: a view of the typed events, built at
//! output. Nothing reads it back but tests.

use std::{fmt::Write as _, net::IpAddr, sync::OnceLock, time::SystemTime};

use serde::{Deserialize, Serialize};

use crate::{
    model::event::{self, Direction, Event, Record, State, TcpFlags, TcpState},
    reasons::{Name, ReasonTable},
};

/// `kind` in the schema: an event's kind (named by [`event::Kind::as_str`]), or `loss`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Event(event::Kind),
    Loss,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Event(kind) => kind.as_str(),
            Self::Loss => "loss",
        }
    }
}

impl Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        if name == "loss" {
            return Ok(Self::Loss);
        }
        event::Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == name)
            .map(Self::Event)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown kind {name}")))
    }
}

/// One event as `tracer events` prints it. Addresses are from the origin's point of view.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    #[serde(with = "rfc3339")]
    pub ts: SystemTime,
    pub kind: Kind,
    /// [`super::LOG_SCHEMA`].
    #[serde(default)]
    pub schema: u32,
    pub peer_addr: Option<IpAddr>,
    pub peer_port: Option<u16>,
    pub local_addr: Option<IpAddr>,
    pub local_port: Option<u16>,
    /// Inode of the network namespace the kernel saw the event in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u32>,
    /// Peer inside the watched ranges.
    pub edge: Option<bool>,
    /// The event belongs to an edge attempt the host forwarded (DNAT to a container or another
    /// namespace): addresses are as the kernel saw them there.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forwarded: bool,
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

impl EventRecord {
    pub fn loss(ts: SystemTime, count: u64) -> Self {
        Self {
            ts,
            kind: Kind::Loss,
            schema: super::LOG_SCHEMA,
            peer_addr: None,
            peer_port: None,
            local_addr: None,
            local_port: None,
            netns: None,
            edge: None,
            forwarded: false,
            reason: None,
            tcp_flags: None,
            seq: None,
            state: None,
            socket: None,
            direction: None,
            count: Some(count),
        }
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

/// "SYN|ACK" for 0x12; "NONE" without any of the six classic flags.
pub fn tcp_flags_name(flags: TcpFlags) -> Name {
    const NAMES: [(u8, &str); 6] = [
        (TcpFlags::SYN, "SYN"),
        (TcpFlags::ACK, "ACK"),
        (TcpFlags::FIN, "FIN"),
        (TcpFlags::RST, "RST"),
        (TcpFlags::PSH, "PSH"),
        (TcpFlags::URG, "URG"),
    ];
    static TABLE: OnceLock<Vec<String>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        (0..64u8)
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
    Name::Borrowed(table[usize::from(flags.0 & 0x3f)].as_str())
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

pub fn tcp_state_name(state: TcpState) -> Name {
    match TCP_STATES.get(state.raw() as usize) {
        Some(name) => Name::Borrowed(name),
        None => format!("TCP_STATE_{}", state.raw()).into(),
    }
}

/// "TCP_SYN_RECV->TCP_ESTABLISHED"
pub fn tcp_transition_name(old: TcpState, new: TcpState) -> Name {
    static TABLE: OnceLock<Vec<String>> = OnceLock::new();
    let n = TCP_STATES.len();
    let (o, w) = (old.raw() as usize, new.raw() as usize);
    if o < n && w < n {
        let table = TABLE.get_or_init(|| {
            (0..n * n)
                .map(|i| format!("{}->{}", TCP_STATES[i / n], TCP_STATES[i % n]))
                .collect()
        });
        return Name::Borrowed(table[o * n + w].as_str());
    }
    format!("{}->{}", tcp_state_name(old), tcp_state_name(new)).into()
}

impl EventRecord {
    /// The view of a captured record; listeners' changes are the journal's, not events.
    pub fn of(record: &Record, reasons: &ReasonTable) -> Option<Self> {
        match record {
            Record::Event(ev) => Some(Self::of_event(ev, reasons)),
            Record::Loss { ts, count } => Some(Self::loss(*ts, *count)),
            // Exchanges are summed up in the report's timing, not logged one by one.
            Record::Listener(_) | Record::Exchange(_) | Record::Dial(_) => None,
        }
    }

    pub fn of_event(ev: &Event, reasons: &ReasonTable) -> Self {
        Self {
            ts: ev.ts,
            kind: Kind::Event(ev.kind),
            schema: super::LOG_SCHEMA,
            peer_addr: Some(ev.flow.peer),
            peer_port: Some(ev.flow.peer_port),
            local_addr: Some(ev.flow.local),
            local_port: Some(ev.flow.local_port),
            netns: Some(ev.netns),
            edge: Some(ev.edge),
            forwarded: ev.forwarded,
            reason: ev.reason.map(|r| reasons.name(r)),
            tcp_flags: ev.tcp.map(|(flags, _)| tcp_flags_name(flags)),
            seq: ev.seq(),
            state: ev.state.map(|s| match s {
                State::At(state) => tcp_state_name(state),
                State::Change { old, new } => tcp_transition_name(old, new),
            }),
            socket: ev.socket,
            direction: ev.direction.map(|d| {
                Name::Borrowed(match d {
                    Direction::In => "in",
                    Direction::Out => "out",
                })
            }),
            count: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;
    use crate::{model::event::Kind as EvKind, reasons::Reason};

    fn table() -> ReasonTable {
        ReasonTable::for_tests(
            &[(3, "NO_SOCKET"), (12, "NETFILTER_DROP")],
            &[(1, "NO_SOCKET")],
        )
    }

    fn ev(kind: EvKind) -> Event {
        crate::model::event::sample(kind, 40000, 1000)
    }

    #[test]
    fn a_drop_as_json_keeps_every_field_and_adds_netns() {
        let t = table();
        let mut e = ev(EvKind::Drop);
        e.reason = Some(t.drop_reason(12));
        e.tcp = Some((TcpFlags(0x02), 77));
        e.direction = Some(Direction::In);
        let r = EventRecord::of_event(&e, &t);
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        for key in [
            "ts",
            "kind",
            "peer_addr",
            "peer_port",
            "local_addr",
            "local_port",
            "edge",
            "reason",
            "netns",
        ] {
            assert!(json.get(key).is_some(), "missing {key}");
        }
        assert_eq!(json["kind"], "drop");
        assert_eq!(json["peer_addr"], "173.245.48.10");
        assert_eq!(json["reason"], "NETFILTER_DROP");
        assert_eq!(json["tcp_flags"], "SYN");
        assert_eq!(json["direction"], "in");
        assert_eq!(json["netns"], 4026531840u64);
        assert!(json.get("forwarded").is_none(), "only said when true");
        let back: EventRecord = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(back.seq, Some(77));
        assert_eq!(back.kind, Kind::Event(EvKind::Drop));
        for kind in EvKind::ALL {
            let json = serde_json::to_string(&Kind::Event(kind)).unwrap();
            assert_eq!(
                serde_json::from_str::<Kind>(&json).unwrap(),
                Kind::Event(kind)
            );
        }
    }

    #[test]
    fn refusal_text_and_forwarded_mark() {
        let t = table();
        let mut e = ev(EvKind::ResetSent);
        e.reason = Some(Reason::Reset { code: 1 });
        e.socket = Some(false);
        e.forwarded = true;
        let r = EventRecord::of_event(&e, &t);
        assert_eq!(r.reason.as_deref(), Some("NO_SOCKET"));
        assert!(r.to_text().contains("no-socket"));
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(json["forwarded"], true);
    }

    #[test]
    fn ipv6_and_state_changes() {
        let mut e = ev(EvKind::Established);
        e.flow.peer = IpAddr::V6("2606:4700::10".parse::<Ipv6Addr>().unwrap());
        e.state = Some(State::Change {
            old: TcpState::SynRecv,
            new: TcpState::Established,
        });
        let r = EventRecord::of_event(&e, &table());
        assert_eq!(r.state.as_deref(), Some("TCP_SYN_RECV->TCP_ESTABLISHED"));
        assert!(r.to_text().contains("[2606:4700::10]:40000"));
    }

    #[test]
    fn loss_has_a_count() {
        let l = EventRecord::of(
            &Record::Loss {
                ts: SystemTime::UNIX_EPOCH,
                count: 5,
            },
            &table(),
        )
        .unwrap();
        let json: serde_json::Value = serde_json::from_str(&l.to_json()).unwrap();
        assert_eq!(json["kind"], "loss");
        assert_eq!(json["count"], 5);
        assert!(json["peer_addr"].is_null());
    }

    #[test]
    fn listener_changes_are_not_events() {
        let ev = crate::model::event::ListenerEvent::sample(
            false,
            "0.0.0.0".parse().unwrap(),
            443,
            1,
            2,
            "nginx",
        );
        assert!(EventRecord::of(&Record::Listener(ev), &table()).is_none());
    }

    #[test]
    fn flag_and_state_names() {
        assert_eq!(tcp_flags_name(TcpFlags(0x12)), "SYN|ACK");
        assert_eq!(tcp_flags_name(TcpFlags(0)), "NONE");
        assert_eq!(tcp_flags_name(TcpFlags(0x11)), "ACK|FIN");
        assert_eq!(tcp_state_name(TcpState::Listen), "TCP_LISTEN");
        assert_eq!(tcp_state_name(TcpState::Unknown(99)), "TCP_STATE_99");
        assert_eq!(
            tcp_transition_name(TcpState::LastAck, TcpState::Close),
            "TCP_LAST_ACK->TCP_CLOSE"
        );
        assert_eq!(
            tcp_transition_name(TcpState::Unknown(99), TcpState::Close),
            "TCP_STATE_99->TCP_CLOSE"
        );
    }
}

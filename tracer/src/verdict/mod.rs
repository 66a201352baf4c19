//! From counted attempts and the origin's own state to a verdict, its evidence and what to do.
//! Pure: the inputs are plain data, so unit tests drive every rule.
//!
//! One module per family of causes; this one holds the verdict table, what a cause carries,
//! and the ranking.

mod causes;
mod firewall;
mod return_path;
pub mod tls;
pub mod window;

pub use firewall::allowlist_text;
#[cfg(test)]
mod lost_answers_tests;
#[cfg(test)]
mod tests;

use std::{collections::BTreeMap, net::IpAddr};

use crate::{
    correlate::{Counts, Outcome},
    origin::{
        backends::BackendReport,
        firewall::{Allowlist, Finding, Ruleset},
        listeners::Listener,
        routes::Route,
    },
    ranges::RangeSet,
};

/// The verdict of a window, and the kind of each cause. Wire names, headlines, the outcomes
/// each stands for and the Cloudflare error each shows are spelled here once; report, metrics
/// and alerts match on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    NeverArriving,
    Refused,
    FirewallDrop,
    Overloaded,
    ResetByOrigin,
    Healthy,
    Unanswered,
    OtherDrop,
    ReturnPath,
    /// Edge SYNs arrived, but the kernel lost the events that would say what became of them.
    Unknown,
    /// The TLS handshake Cloudflare makes under Full / Full (Strict) fails, or the certificate
    /// is not valid for Strict (`--hostname`): 525 or 526.
    TlsFailure,
}

impl Verdict {
    pub const ALL: [Verdict; 11] = [
        Verdict::NeverArriving,
        Verdict::Refused,
        Verdict::FirewallDrop,
        Verdict::Overloaded,
        Verdict::ResetByOrigin,
        Verdict::Healthy,
        Verdict::Unanswered,
        Verdict::OtherDrop,
        Verdict::ReturnPath,
        Verdict::Unknown,
        Verdict::TlsFailure,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NeverArriving => "never_arriving",
            Self::Refused => "refused",
            Self::FirewallDrop => "firewall_drop",
            Self::Overloaded => "overloaded",
            Self::ResetByOrigin => "reset_by_origin",
            Self::Healthy => "healthy",
            Self::Unanswered => "unanswered",
            Self::OtherDrop => "other_drop",
            Self::ReturnPath => "return_path",
            Self::Unknown => "unknown",
            Self::TlsFailure => "tls_failure",
        }
    }

    /// The one-line meaning, for the text report.
    pub fn headline(self) -> &'static str {
        match self {
            Self::NeverArriving => "Cloudflare's SYNs never reach this host",
            Self::Refused => "this host refuses Cloudflare's connections: nothing accepts them on that address and port",
            Self::FirewallDrop => "this host's firewall drops or rejects Cloudflare's connections",
            Self::Overloaded => "the server is overloaded: Cloudflare's SYNs are dropped for lack of queue room",
            Self::ResetByOrigin => "connections are accepted, then reset by the origin",
            Self::Healthy => "Cloudflare's connections are accepted",
            Self::Unanswered => "Cloudflare's SYNs arrive but get no answer",
            Self::OtherDrop => "the kernel drops Cloudflare's SYNs (see the reasons)",
            Self::ReturnPath => "Cloudflare's SYNs arrive, but the replies do not get back the way they came",
            Self::Unknown => "Cloudflare's SYNs arrive, but the kernel lost the events that would say what became of them",
            Self::TlsFailure => "connections are accepted, but the TLS handshake Cloudflare makes fails or the certificate is not valid for Full (Strict)",
        }
    }

    /// The attempt outcomes this verdict stands for (a backend is listed under a cause when
    /// attempts forwarded to it ended so).
    pub fn outcomes(self) -> &'static [Outcome] {
        match self {
            Self::NeverArriving => &[],
            Self::Refused => &[Outcome::Refused],
            Self::FirewallDrop => &[Outcome::FirewallDrop],
            Self::Overloaded => &[Outcome::OverloadDrop, Outcome::Unanswered],
            Self::ResetByOrigin => &[Outcome::OriginReset],
            Self::Healthy => &[Outcome::Handshake],
            Self::Unanswered => &[Outcome::Unanswered],
            Self::OtherDrop => &[Outcome::OtherDrop],
            Self::ReturnPath => &[Outcome::Unanswered],
            Self::Unknown => &[Outcome::Unknown],
            Self::TlsFailure => &[],
        }
    }

    /// What the failure is called in "… began 14:02:11" (`since`); None for what is not a
    /// failure of the edge's attempts.
    pub fn failure_noun(self) -> Option<&'static str> {
        match self {
            Self::Refused => Some("refusals"),
            Self::FirewallDrop => Some("firewall drops"),
            Self::Overloaded => Some("overload drops"),
            Self::ResetByOrigin => Some("resets"),
            Self::Unanswered => Some("unanswered SYNs"),
            Self::OtherDrop => Some("kernel drops"),
            Self::ReturnPath => Some("lost replies"),
            Self::NeverArriving | Self::Healthy | Self::Unknown | Self::TlsFailure => None,
        }
    }

    /// The cause lies on this host — its listeners, firewall, queues or application — rather
    /// than possibly beyond it (answers lost on the way back, SYNs never arriving).
    pub fn is_local(self) -> bool {
        matches!(
            self,
            Self::Refused
                | Self::FirewallDrop
                | Self::Overloaded
                | Self::ResetByOrigin
                | Self::OtherDrop
                | Self::TlsFailure
        )
    }

    /// `tracer diagnose --exit-code`: 0 healthy, [`EXIT_FAILING`] for a failure of the edge's
    /// connections, [`EXIT_NEVER_ARRIVING`] when none arrived, [`EXIT_INCONCLUSIVE`] when the
    /// kernel lost the events that would say. Never 2 (clap's usage error) nor 1 (an error).
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Healthy => 0,
            Self::NeverArriving => EXIT_NEVER_ARRIVING,
            Self::Unknown => EXIT_INCONCLUSIVE,
            Self::Refused
            | Self::FirewallDrop
            | Self::Overloaded
            | Self::ResetByOrigin
            | Self::Unanswered
            | Self::OtherDrop
            | Self::ReturnPath
            | Self::TlsFailure => EXIT_FAILING,
        }
    }

    /// The error Cloudflare's visitors see for this cause (../shared/KERNEL-FACTS.md): 521 for
    /// an RST to the SYN, 522 when the SYN or its answer is lost, 520 for a reset after the
    /// handshake. A firewall that rejects instead of dropping gives 521 ([`Cause`] says so).
    pub fn cloudflare_error(self) -> Option<u16> {
        match self {
            Self::Refused => Some(521),
            Self::NeverArriving
            | Self::FirewallDrop
            | Self::Overloaded
            | Self::Unanswered
            | Self::OtherDrop
            | Self::ReturnPath => Some(522),
            Self::ResetByOrigin => Some(520),
            // 526 for a certificate Strict refuses ([`Cause`] says which).
            Self::TlsFailure => Some(525),
            Self::Healthy | Self::Unknown => None,
        }
    }
}

/// Exit status of a tracer error (bad input, missing privileges, a kernel it cannot serve).
pub const EXIT_ERROR: u8 = 1;
/// `diagnose --exit-code`: the edge's connections fail (any failing verdict).
pub const EXIT_FAILING: u8 = 3;
/// `diagnose --exit-code`: no edge SYN arrived in the window.
pub const EXIT_NEVER_ARRIVING: u8 = 4;
/// `diagnose --exit-code`: edge SYNs arrived but the kernel lost what became of them.
pub const EXIT_INCONCLUSIVE: u8 = 5;

/// An edge address and how many of a cause's attempts came from it.
#[derive(Clone, Debug, PartialEq)]
pub struct Peer {
    pub addr: IpAddr,
    pub attempts: u64,
    /// The watched (Cloudflare) range it belongs to.
    pub range: Option<String>,
}

/// A failure (or healthy) finding with its weight in distinct attempts.
#[derive(Clone, Debug, PartialEq)]
pub struct Cause {
    pub verdict: Verdict,
    pub attempts: u64,
    pub evidence: Vec<String>,
    pub next_steps: Vec<String>,
    /// Where the host forwarded the attempts of this cause (DNAT to containers).
    pub backends: Vec<BackendReport>,
    /// The error Cloudflare shows for this cause (521, 522, 520); none when healthy.
    pub cloudflare_error: Option<u16>,
    /// The edge addresses behind this cause, most attempts first.
    pub peers: Vec<Peer>,
}

impl Cause {
    fn new(verdict: Verdict, attempts: u64, evidence: Vec<String>, next: Vec<String>) -> Self {
        Cause {
            verdict,
            attempts,
            evidence,
            next_steps: next,
            backends: Vec::new(),
            cloudflare_error: verdict.cloudflare_error(),
            peers: Vec::new(),
        }
    }
}

/// Edge attempts of one outcome and kernel reason, with the peers they came from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AttemptClass {
    pub outcome: Option<Outcome>,
    /// The kernel's name of the drop or reset reason, when it gave one.
    pub reason: Option<String>,
    pub attempts: u64,
    /// Most attempts first (bounded).
    pub peers: Vec<(IpAddr, u64)>,
}

/// The origin's answers (SYN-ACKs) to edge attempts dropped by a filter on their way out, in
/// one namespace for one reason.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplyDrops {
    /// "this namespace's output path" or "the host's namespace netns:[…] (pid 1 systemd)".
    pub place: String,
    /// It is the tracer's own namespace.
    pub own: bool,
    /// The kernel's drop reason.
    pub reason: String,
    /// Edge attempts whose answer was dropped there.
    pub attempts: u64,
    /// The rules of that namespace's ruleset that drop such a reply, or why it was not read.
    pub rules: Result<Vec<Finding>, String>,
    /// How to run a command in that namespace (`nsenter --net=/proc/1/ns/net`), when not ours.
    pub enter: Option<String>,
}

/// What the verdict is decided from.
pub struct Inputs<'a> {
    pub interface: &'a str,
    pub ports: &'a [u16],
    pub window_secs: f64,
    pub edge: Counts,
    pub non_edge: Counts,
    /// (local address, port) of edge attempts the stack refused.
    pub refused_targets: Vec<(IpAddr, u16)>,
    /// Kernel reasons of edge filter drops, with attempt counts.
    pub filter_reasons: BTreeMap<String, u64>,
    pub other_reasons: BTreeMap<String, u64>,
    /// Ports of edge attempts that were dropped by a filter.
    pub filtered_ports: Vec<u16>,
    pub listeners: &'a [Listener],
    /// Listeners whose accept queue was seen full during the window.
    pub full_queues: &'a [Listener],
    pub counter_deltas: &'a BTreeMap<String, u64>,
    pub synack_retransmits: u64,
    pub firewall: Result<Vec<Finding>, String>,
    /// The live ruleset, when it was read (fixes name its tables and chains).
    pub ruleset: Option<&'a Ruleset>,
    /// Allowlists that admit some of the watched ranges but not all.
    pub allowlists: &'a [Allowlist],
    /// Frames the XDP program saw on the interface, and SYNs to watched ports from non-edge peers.
    pub packets_seen: u64,
    pub ranges: &'a RangeSet,
    /// Where forwarded edge attempts went.
    pub backends: &'a [BackendReport],
    /// Edge attempts by outcome and reason, with their peers.
    pub classes: &'a [AttemptClass],
    /// The routes back to the peers of unanswered or reverse-path-filtered attempts.
    pub routes: &'a [Result<Route, String>],
    /// Reverse-path filtering in effect on the interface (0 off, 1 strict, 2 loose).
    pub rp_filter: Option<u8>,
    /// Answers to edge attempts dropped on their way out, by namespace and reason.
    pub reply_drops: &'a [ReplyDrops],
    /// Events the kernel lost during the window.
    pub lost_events: u64,
}

/// Below this share of edge attempts a failure does not make the origin unhealthy.
const HEALTHY_MAX_FAILURE_SHARE: f64 = 0.05;

/// Peers listed per cause.
const PEERS_SHOWN: usize = 5;

/// Counters that say a listen queue had no room: what makes unanswered attempts overload.
/// `ListenDrops` is not one — it also counts every SYN a listener drops for any other reason
/// (no route for its SYN-ACK, no memory, an LSM), and rises with `ListenOverflows` anyway when
/// the queue is full.
const OVERLOAD_COUNTERS: [&str; 3] = ["ListenOverflows", "TCPReqQFullDrop", "TCPReqQFullDoCookies"];

/// The kernel's name for a reverse-path filter drop.
const RPFILTER: &str = "IP_RPFILTER";
/// Before 5.17: a drop in the input route lookup (reasons read from the freeing function);
/// with strict rp_filter on the interface, the reverse-path filter.
const INPUT_ROUTE: &str = "IP_INPUT_ROUTE";

fn ports_text(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The verdict an outcome stands for on its own (without the counters that tell overload or
/// a return-path fault from plain unanswered SYNs).
pub fn for_outcome(o: Outcome) -> Verdict {
    let class = AttemptClass {
        outcome: Some(o),
        ..AttemptClass::default()
    };
    cause_of(&class, &Lens::default())
}

/// What tells unanswered attempts apart.
#[derive(Default)]
struct Lens {
    /// A queue counter rose or a queue was seen full.
    overload: bool,
    /// The answers are known lost: SYN-ACKs retransmitted, dropped on the way out, or no
    /// route for them.
    answers_lost: bool,
    /// Strict reverse-path filtering on the interface.
    strict: bool,
}

/// Which cause an attempt class belongs to. Unanswered attempts are a return-path fault when
/// their answers are known lost, overload when a queue counter or a full queue says so, and
/// plain unanswered otherwise.
fn cause_of(class: &AttemptClass, lens: &Lens) -> Verdict {
    let strict = lens.strict;
    match class.outcome {
        None => Verdict::NeverArriving,
        Some(Outcome::Unknown) => Verdict::Unknown,
        Some(Outcome::Handshake) => Verdict::Healthy,
        Some(Outcome::Refused) => Verdict::Refused,
        Some(Outcome::FirewallDrop) => Verdict::FirewallDrop,
        Some(Outcome::OverloadDrop) => Verdict::Overloaded,
        Some(Outcome::OriginReset) => Verdict::ResetByOrigin,
        Some(Outcome::Unanswered) if lens.overload && !lens.answers_lost => Verdict::Overloaded,
        Some(Outcome::Unanswered) if lens.answers_lost => Verdict::ReturnPath,
        Some(Outcome::Unanswered) => Verdict::Unanswered,
        Some(Outcome::OtherDrop) if class.reason.as_deref() == Some(RPFILTER) => {
            Verdict::ReturnPath
        }
        Some(Outcome::OtherDrop) if class.reason.as_deref() == Some(INPUT_ROUTE) && strict => {
            Verdict::ReturnPath
        }
        Some(Outcome::OtherDrop) => Verdict::OtherDrop,
    }
}

/// The verdict and every cause, largest first.
pub fn decide(i: &Inputs<'_>) -> (Verdict, Vec<Cause>) {
    let (verdict, mut causes) = rank(i);
    let overload = overload_evidence(i);
    let lost = lost_answers(i, &overload);
    let lens = Lens {
        overload: !overload.is_empty(),
        answers_lost: lost.total() > 0,
        strict: i.rp_filter == Some(1),
    };
    for c in &mut causes {
        c.backends = i
            .backends
            .iter()
            .filter(|b| c.verdict.outcomes().iter().any(|o| b.count(*o) > 0))
            .cloned()
            .collect();
        let mut peers: BTreeMap<IpAddr, u64> = BTreeMap::new();
        for class in i.classes.iter().filter(|k| cause_of(k, &lens) == c.verdict) {
            for (addr, n) in &class.peers {
                *peers.entry(*addr).or_default() += n;
            }
        }
        let mut peers: Vec<(IpAddr, u64)> = peers.into_iter().collect();
        peers.sort_by_key(|(a, n)| (std::cmp::Reverse(*n), *a));
        c.peers = peers
            .into_iter()
            .take(PEERS_SHOWN)
            .map(|(addr, attempts)| Peer {
                addr,
                attempts,
                range: i.ranges.range_of(addr).map(|r| r.to_string()),
            })
            .collect();
        if !c.peers.is_empty() && c.verdict != Verdict::Healthy {
            c.evidence.push(peers_text(&c.peers));
        }
        if let Some(code) = c.cloudflare_error {
            c.evidence.push(error_text(code));
        }
    }
    (verdict, causes)
}

/// "edge peers: 104.16.0.5 ×3 (104.16.0.0/13), 173.245.48.10 ×1 (173.245.48.0/20)"
fn peers_text(peers: &[Peer]) -> String {
    let list: Vec<String> = peers
        .iter()
        .map(|p| match &p.range {
            Some(r) => format!("{} ×{} ({r})", p.addr, p.attempts),
            None => format!("{} ×{}", p.addr, p.attempts),
        })
        .collect();
    format!("edge peers affected: {}", list.join(", "))
}

fn error_text(code: u16) -> String {
    let how = match code {
        521 => "the SYN is answered with a reset",
        520 => "the connection is reset after the handshake",
        _ => "the SYN or its answer is lost, and the edge times out",
    };
    format!("Cloudflare shows error {code} for this cause ({how}); if visitors see another error, look at other origins or load balancers behind the same hostname")
}

fn rank(i: &Inputs<'_>) -> (Verdict, Vec<Cause>) {
    if i.edge.syn == 0 {
        let cause = causes::never_arriving(i);
        return (cause.verdict, vec![cause]);
    }
    let overload_evidence = overload_evidence(i);
    let lost = lost_answers(i, &overload_evidence);
    let mut causes = Vec::new();
    if i.edge.refused > 0 {
        causes.push(causes::refused(i));
    }
    if i.edge.firewall_drops > 0 {
        causes.push(firewall::firewall_drop(i));
    }
    // Unanswered attempts whose answers are not known lost: overload when a queue says so.
    let rest = i.edge.unanswered - lost.unanswered();
    let overloaded = i.edge.overload_drops
        + if overload_evidence.is_empty() {
            0
        } else {
            rest
        };
    if overloaded > 0 {
        causes.push(causes::overload(i, overloaded, overload_evidence.clone()));
    }
    if i.edge.origin_resets > 0 {
        causes.push(causes::reset_by_origin(i));
    }
    if lost.total() > 0 {
        causes.push(return_path::return_path(i, &lost));
    }
    if overload_evidence.is_empty() && rest > 0 {
        causes.push(causes::unanswered(i, rest));
    }
    if i.edge.other_drops > lost.rp_drops {
        causes.push(causes::other_drop(i, i.edge.other_drops - lost.rp_drops));
    }
    if i.edge.unknown > 0 {
        causes.push(causes::unknown(i));
    }
    causes.sort_by_key(|c| std::cmp::Reverse(c.attempts));

    let threshold = (i.edge.syn as f64 * HEALTHY_MAX_FAILURE_SHARE).max(f64::MIN_POSITIVE);
    let all_minor = causes
        .iter()
        .all(|c| c.verdict == Verdict::Unknown || (c.attempts as f64) < threshold);
    if i.edge.handshakes > 0 && all_minor {
        let mut all = vec![causes::healthy(i)];
        all.extend(causes);
        return (Verdict::Healthy, all);
    }
    // Attempts of unknown outcome never outrank a cause the tracer saw.
    causes.sort_by_key(|c| c.verdict == Verdict::Unknown);
    let verdict = causes.first().map_or(Verdict::Healthy, |c| c.verdict);
    (verdict, causes)
}

/// Edge attempts whose answers are known not to get back, by how: the return path's share.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LostAnswers {
    /// Answered with SYN-ACKs that were retransmitted (no queue counter rose): lost beyond.
    pub synacks: u64,
    /// The SYN dropped by the reverse-path filter (the route back leaves elsewhere).
    pub rp_drops: u64,
    /// The listener took the SYN but no route could carry its answer (a null route).
    pub null_routed: u64,
    /// The answer dropped by a filter on its way out, here or in a namespace it crosses.
    pub reply_dropped: u64,
}

impl LostAnswers {
    pub fn total(&self) -> u64 {
        self.synacks + self.rp_drops + self.null_routed + self.reply_dropped
    }

    /// Those among the unanswered attempts (reverse-path drops are drops).
    fn unanswered(&self) -> u64 {
        self.synacks + self.null_routed + self.reply_dropped
    }
}

/// The rule for answers that never get back, in order of certainty: a reply the kernel saw
/// dropped on its way out; a peer whose route back is a null route (the listener drops the
/// SYN for want of a route: `ListenDrops` rises, `ListenOverflows` does not); then, while no
/// queue counter rose, SYN-ACKs retransmitted with no final ACK back. Freed packets that do
/// not end an attempt never decide it (see `correlate`); `ListenDrops` alone is never overload.
fn lost_answers(i: &Inputs<'_>, overload_evidence: &[String]) -> LostAnswers {
    let reply_dropped = i
        .reply_drops
        .iter()
        .map(|r| r.attempts)
        .sum::<u64>()
        .min(i.edge.unanswered);
    let null_routed = null_routed_attempts(i).min(i.edge.unanswered - reply_dropped);
    let rest = i.edge.unanswered - reply_dropped - null_routed;
    let synacks = if overload_evidence.is_empty() && i.synack_retransmits > 0 {
        rest
    } else {
        0
    };
    LostAnswers {
        synacks,
        rp_drops: rp_drops(i),
        null_routed,
        reply_dropped,
    }
}

/// Unanswered edge attempts from peers a null route catches (counted by peer; the peers of a
/// class are bounded, so this is a lower bound on a flood from many addresses).
fn null_routed_attempts(i: &Inputs<'_>) -> u64 {
    let nulls: Vec<&crate::origin::routes::Route> = i
        .routes
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .filter(|r| r.null.is_some())
        .collect();
    if nulls.is_empty() {
        return 0;
    }
    let caught = |peer: IpAddr| {
        nulls.iter().any(|r| {
            r.peer == peer
                || r.null
                    .as_ref()
                    .and_then(|n| n.prefix)
                    .is_some_and(|p| p.contains(&peer))
        })
    };
    i.classes
        .iter()
        .filter(|c| c.outcome == Some(Outcome::Unanswered))
        .flat_map(|c| c.peers.iter())
        .filter(|(peer, _)| caught(*peer))
        .map(|(_, n)| n)
        .sum()
}

/// Drops by the reverse-path filter: named so (5.17+), or in the input route lookup with
/// strict rp_filter on the interface (before).
fn rp_drops(i: &Inputs<'_>) -> u64 {
    let named = i.other_reasons.get(RPFILTER).copied().unwrap_or(0);
    let by_location = if i.rp_filter == Some(1) {
        i.other_reasons.get(INPUT_ROUTE).copied().unwrap_or(0)
    } else {
        0
    };
    named + by_location
}

/// Queue counters and full queues: what makes unanswered attempts overload. SYN-ACK
/// retransmits alone are not overload: they are what a lost return path looks like too.
fn overload_evidence(i: &Inputs<'_>) -> Vec<String> {
    let mut ev = Vec::new();
    for name in OVERLOAD_COUNTERS {
        if let Some(d) = i.counter_deltas.get(name).filter(|d| **d > 0) {
            ev.push(format!(
                "kernel counter {name} rose by {d} during the window"
            ));
        }
    }
    for l in i.full_queues {
        ev.push(format!(
            "accept queue of {}{} was full ({}): the application is not accepting fast enough",
            l.endpoint(),
            l.place(),
            l.queue_text()
        ));
    }
    if !ev.is_empty() && i.synack_retransmits > 0 {
        ev.push(format!(
            "{} SYN-ACKs to the edge were retransmitted (the final ACK was dropped for lack of queue room)",
            i.synack_retransmits
        ));
    }
    ev
}

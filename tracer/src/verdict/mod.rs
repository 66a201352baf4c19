//! From counted attempts and the origin's own state to a verdict, its evidence and what to do.
//! Pure: the inputs are plain data, so unit tests drive every rule.
//!
//! One module per family of causes; `names` holds the verdict table, `inputs` what the rules
//! read and what a cause carries; this one the ranking.

mod causes;
mod firewall;
mod inputs;
mod names;
mod refusals;
mod return_path;
mod tally;
pub mod timing;
pub mod tls;
pub mod tunnel;
pub mod window;

pub use firewall::allowlist_text;
pub use inputs::{AttemptClass, Cause, Inputs, Peer, ReplyDrops};
pub use names::{Verdict, EXIT_ERROR};
#[cfg(test)]
mod lost_answers_tests;
#[cfg(test)]
pub(crate) mod tests;

use std::{collections::BTreeMap, net::IpAddr};

use crate::correlate::Outcome;

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
        524 => "the response does not begin within the proxy read timeout",
        502 => "cloudflared answers the edge's request with Bad Gateway",
        1033 => "the edge finds no connected cloudflared for the tunnel (HTTP 530)",
        _ => "the SYN or its answer is lost, and the edge times out",
    };
    format!("Cloudflare shows error {code} for this cause ({how}); if visitors see another error, look at other origins or load balancers behind the same hostname")
}

fn rank(i: &Inputs<'_>) -> (Verdict, Vec<Cause>) {
    let exchange_causes: Vec<Cause> = [timing::slow_response(i), timing::keepalive_race(i)]
        .into_iter()
        .flatten()
        .collect();
    if i.edge.syn == 0 {
        // No new connection, but requests on connections already open: the edge arrives.
        if i.exchanges.requests > 0 {
            let mut causes = exchange_causes;
            causes.sort_by_key(|c| std::cmp::Reverse(c.attempts));
            let Some(first) = causes.first() else {
                return (Verdict::Healthy, vec![timing::healthy_reused(i)]);
            };
            return (first.verdict, causes);
        }
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
    // Resets of requests that met a closed connection are the keep-alive race's, not a
    // cause of their own.
    if i.edge.origin_resets > i.exchanges.after_close {
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
        // Connections are accepted: what the application does with the requests decides.
        let mut all = exchange_causes;
        all.sort_by_key(|c| std::cmp::Reverse(c.attempts));
        let verdict = all.first().map_or(Verdict::Healthy, |c| c.verdict);
        all.push(causes::healthy(i));
        all.extend(causes);
        return (verdict, all);
    }
    // A failing connection verdict first; the application's causes after it.
    causes.extend(exchange_causes);
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

/// A clause as a next step: capitalised, with its full stop.
pub(super) fn sentence(clause: &str) -> String {
    let mut c = clause.chars();
    let first: String = c
        .next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default();
    format!("{first}.")
}

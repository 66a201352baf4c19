//! What the rules decide from (`Inputs`: counts, classes of attempts, the host's state) and
//! what they give (`Cause`: a verdict with its weight, evidence, fixes and peers).

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

use super::Verdict;

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
    pub(super) fn new(
        verdict: Verdict,
        attempts: u64,
        evidence: Vec<String>,
        next: Vec<String>,
    ) -> Self {
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
    /// Watched ranges this host routes another way than its default route (asked with the
    /// routes back).
    pub misrouted: &'a [crate::origin::range_routes::Misrouted],
    /// Reverse-path filtering in effect on the interface (0 off, 1 strict, 2 loose).
    pub rp_filter: Option<u8>,
    /// Answers to edge attempts dropped on their way out, by namespace and reason.
    pub reply_drops: &'a [ReplyDrops],
    /// Events the kernel lost during the window.
    pub lost_events: u64,
    /// Requests, responses and closes on edge connections.
    pub exchanges: &'a crate::correlate::exchanges::ExchangeWindow,
}

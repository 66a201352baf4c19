//! What became of a connection attempt, and where a forwarded one was answered: the words
//! correlation decides and every later stage (the host's backends, verdicts, views) reads.

use std::net::IpAddr;

/// What became of one connection attempt. Wire names in [`Outcome::as_str`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    Handshake,
    Refused,
    FirewallDrop,
    OverloadDrop,
    OriginReset,
    Unanswered,
    OtherDrop,
    /// Nothing answered that the tracer saw, but the kernel lost events while the attempt was
    /// open: its answer may be among them. Never counted as unanswered.
    Unknown,
}

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::Handshake,
        Outcome::Refused,
        Outcome::FirewallDrop,
        Outcome::OverloadDrop,
        Outcome::OriginReset,
        Outcome::Unanswered,
        Outcome::OtherDrop,
        Outcome::Unknown,
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
            Self::Unknown => "unknown",
        }
    }
}

/// Where a forwarded attempt was answered: its local end after DNAT, in the namespace that
/// answered it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    pub addr: IpAddr,
    pub port: u16,
    pub netns: u32,
}

//! The `Verdict` enum: each verdict's wire name, headline, the outcomes it stands for and the
//! Cloudflare error it shows, spelled once; and the exit statuses of `diagnose --exit-code`.

use crate::correlate::Outcome;

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
    /// Responses begin later than Cloudflare's proxy read timeout: 524.
    SlowResponse,
    /// The origin closes idle edge connections sooner than the edge reuses them, and requests
    /// meet the closed connections: 520.
    KeepaliveRace,
    /// A Cloudflare Tunnel's `cloudflared` cannot reach the service it forwards to: 502.
    TunnelOriginUnreachable,
    /// A Cloudflare Tunnel's `cloudflared` has no working connection to the edge: 1033/530.
    TunnelDown,
}

impl Verdict {
    pub const ALL: [Verdict; 15] = [
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
        Verdict::SlowResponse,
        Verdict::KeepaliveRace,
        Verdict::TunnelOriginUnreachable,
        Verdict::TunnelDown,
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
            Self::SlowResponse => "slow_response",
            Self::KeepaliveRace => "keepalive_race",
            Self::TunnelOriginUnreachable => "tunnel_origin_unreachable",
            Self::TunnelDown => "tunnel_down",
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
            Self::SlowResponse => "connections are accepted, but the application answers later than Cloudflare waits for a response",
            Self::KeepaliveRace => "the origin closes idle connections Cloudflare still reuses: requests meet a closed connection and are reset",
            Self::TunnelOriginUnreachable => "the Cloudflare Tunnel on this host cannot reach the service it forwards to",
            Self::TunnelDown => "the Cloudflare Tunnel on this host has no working connection to Cloudflare's edge",
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
            Self::TlsFailure
            | Self::SlowResponse
            | Self::KeepaliveRace
            | Self::TunnelOriginUnreachable
            | Self::TunnelDown => &[],
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
            Self::SlowResponse => Some("slow responses"),
            Self::KeepaliveRace => Some("requests on closed connections"),
            Self::TunnelOriginUnreachable => Some("failed dials to the tunnel's service"),
            Self::TunnelDown => Some("tunnel outages"),
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
                | Self::SlowResponse
                | Self::KeepaliveRace
                | Self::TunnelOriginUnreachable
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
            | Self::TlsFailure
            | Self::SlowResponse
            | Self::KeepaliveRace
            | Self::TunnelOriginUnreachable
            | Self::TunnelDown => EXIT_FAILING,
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
            Self::ResetByOrigin | Self::KeepaliveRace => Some(520),
            Self::SlowResponse => Some(524),
            // 526 for a certificate Strict refuses ([`Cause`] says which).
            Self::TlsFailure => Some(525),
            Self::TunnelOriginUnreachable => Some(502),
            // 530 with error 1033 on the page.
            Self::TunnelDown => Some(1033),
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

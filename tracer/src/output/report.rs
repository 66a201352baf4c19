//! The `diagnose` result: one JSON document for scripts, a short report for people.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::Serialize;

use crate::{
    correlate::Counts,
    origin::{backends::BackendReport, listeners::Listener},
    output::text_wrap::{self, wrap, WIDTH},
    ranges::RangeSet,
    verdict::{Cause, Verdict},
};

#[derive(Clone, Debug, Serialize)]
pub struct RangesInfo {
    pub source: String,
    pub ipv4: Vec<String>,
    pub ipv6: Vec<String>,
    pub etag: Option<String>,
    pub fetched_at: Option<String>,
    pub age_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl RangesInfo {
    pub fn of(set: &RangeSet) -> Self {
        Self {
            source: set.source.to_string(),
            ipv4: set.v4.iter().map(ToString::to_string).collect(),
            ipv6: set.v6.iter().map(ToString::to_string).collect(),
            etag: set.etag.clone(),
            fetched_at: set
                .fetched_at
                .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
            age_secs: set.age_secs(),
            path: set.path.clone(),
        }
    }
}

/// A window's diagnosis: the model the views render (`to_text`, and `to_json` through
/// [`crate::output::report_json`]).
#[derive(Clone, Debug)]
pub struct Report {
    pub verdict: Verdict,
    pub window_secs: serde_json::Value,
    pub interface: String,
    pub ports: Vec<u16>,
    pub edge: Counts,
    pub non_edge: Counts,
    pub causes: Vec<Cause>,
    /// Where the host forwarded edge attempts (DNAT to containers, other namespaces).
    pub backends: Vec<BackendReport>,
    pub listeners: Vec<Listener>,
    /// TCP counter changes over the window.
    pub counters: BTreeMap<String, u64>,
    pub ranges: RangesInfo,
    pub lost_events: u64,
    /// When the window started (RFC 3339).
    pub started_at: String,
    /// "driver" or "generic" XDP; "none" when the arrival hook is TC.
    pub xdp_mode: String,
    /// Where arriving SYNs are seen: `xdp_driver`, `xdp_generic`, `tcx`, `tc_clsact`.
    pub arrival_hook: String,
    /// Hooks this kernel lacks and what that degrades.
    pub notes: Vec<String>,
    /// TLS checks (`--hostname`): one per port and hostname; empty without --hostname.
    pub tls: Vec<crate::tls::TlsCheck>,
    /// When the current failure began and what changed just before; null when there is no
    /// failure of the edge's attempts.
    pub since: Option<crate::journal::since::Since>,
    /// The ports edge attempts reached in the window (not in the JSON: the counts say it).
    pub edge_ports: Vec<u16>,
    /// How long the edge's handshakes took.
    pub timing: crate::correlate::timing::Timing,
    /// The Cloudflare Tunnel on this host, when one ran or dialled in the window.
    pub tunnel: Option<crate::correlate::tunnel::TunnelSeen>,
}

/// "0.0.0.0:443 (accept queue 0/511, port reservation)", "127.0.0.1:80 in container
/// 3f2a9c4b1d2e (accept queue 0/128)".
fn listener_text(l: &Listener) -> String {
    let text = format!("{}{}", l.endpoint(), l.place());
    let queue = match l.backlog {
        Some(b) => format!("accept queue {}/{b}", l.accept_queue),
        None => format!("accept queue {}", l.accept_queue),
    };
    match l.role {
        Some(role) => format!("{text} ({queue}, {})", role.replace('_', " ")),
        None => format!("{text} ({queue})"),
    }
}

/// "cloudflared (pid 812) — dials: [::1]:8080 12 (0 connected; 12 refused (ECONNREFUSED));
/// edge: 1 TCP connection to 7844, 0 UDP sockets"
fn tunnel_text(t: &crate::correlate::tunnel::TunnelSeen) -> String {
    let procs: Vec<String> = t.processes.iter().map(|p| p.describe()).collect();
    let procs = if procs.is_empty() {
        format!("{} (not running)", t.name)
    } else {
        procs.join(", ")
    };
    let services: Vec<String> = t
        .services
        .iter()
        .map(|s| {
            let failures = s.counts.failures_text();
            format!(
                "{} {} ({} connected{})",
                s.target,
                s.counts.dials,
                s.counts.connected,
                if failures.is_empty() {
                    String::new()
                } else {
                    format!("; {failures}")
                }
            )
        })
        .collect();
    let e = &t.edge_sockets;
    format!(
        "{procs} — dials to services: {}; to the edge: {} ({} connected); held toward the edge: {} TCP connections to 7844, {} UDP sockets",
        if services.is_empty() {
            "none".to_string()
        } else {
            services.join(", ")
        },
        t.edge.dials,
        t.edge.connected,
        e.tcp_established,
        e.udp
    )
}

pub fn window_value(secs: f64) -> serde_json::Value {
    if secs.fract() == 0.0 && (0.0..1e15).contains(&secs) {
        serde_json::Value::from(secs as u64)
    } else {
        serde_json::Value::from(secs)
    }
}

/// A row of the counts table: label and field.
type Row = (&'static str, fn(&Counts) -> u64);

impl Report {
    /// The TLS checks of this window: shown as they are; each failing one on a port that is
    /// judged — given with `--port` (`named_ports`), or reached by the edge in the window — a
    /// cause, the others notes (`verdict::tls` decides how they change the verdict).
    pub fn add_tls_checks(&mut self, checks: Vec<crate::tls::TlsCheck>, named_ports: bool) {
        let judged = if named_ports {
            self.ports.clone()
        } else {
            self.edge_ports.clone()
        };
        crate::verdict::tls::apply(
            &mut self.verdict,
            &mut self.causes,
            &mut self.notes,
            &checks,
            &judged,
        );
        self.tls = checks;
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&crate::output::report_json::ReportJson::of(self))
            .unwrap_or_default()
    }

    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let error = self
            .causes
            .first()
            .and_then(|c| c.cloudflare_error)
            .map(|e| format!(" (Cloudflare shows {e})"))
            .unwrap_or_default();
        s += &wrap(
            &format!(
                "VERDICT: {} — {}{error}",
                self.verdict.as_str(),
                self.verdict.headline()
            ),
            "",
            "  ",
            WIDTH,
        );
        if let Some(since) = &self.since {
            s += &wrap(&since.text, "  Since: ", "         ", WIDTH);
        }
        let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
        s += &wrap(
            &format!(
                "window {} s on {} (arrival hook {}), ports {}; ranges: {} ({} IPv4 + {} IPv6)",
                self.window_secs,
                self.interface,
                self.arrival_hook,
                ports.join(","),
                self.ranges.source,
                self.ranges.ipv4.len(),
                self.ranges.ipv6.len()
            ),
            "  ",
            "    ",
            WIDTH,
        );
        for (i, cause) in self.causes.iter().enumerate() {
            let _ = writeln!(s);
            if i == 0 {
                let _ = writeln!(s, "Evidence:");
            } else {
                let _ = writeln!(
                    s,
                    "Also: {} ({} attempts{})",
                    cause.verdict.as_str(),
                    cause.attempts,
                    cause
                        .cloudflare_error
                        .map(|e| format!(", Cloudflare shows {e}"))
                        .unwrap_or_default()
                );
            }
            for e in &cause.evidence {
                s += &wrap(e, "  - ", "    ", WIDTH);
            }
            let _ = writeln!(
                s,
                "{}",
                if i == 0 {
                    "Next steps:"
                } else {
                    "  next steps:"
                }
            );
            for (n, step) in cause.next_steps.iter().enumerate() {
                s += &text_wrap::step(n + 1, step, "  ");
            }
        }
        self.counts_text(&mut s);
        self.timing_text(&mut s);
        // "Label: a, b, c" wrapped, or "Label: none".
        let list = |label: &str, items: Vec<String>, none: &str| {
            let items = if items.is_empty() {
                none.to_string()
            } else {
                items.join(", ")
            };
            wrap(&format!("{label}: {items}"), "", "  ", WIDTH)
        };
        s += &list(
            "Listeners",
            self.listeners.iter().map(listener_text).collect(),
            "none",
        );
        for c in &self.tls {
            s += &wrap(&c.line(), "TLS ", "      ", WIDTH);
        }
        if let Some(t) = &self.tunnel {
            s += &wrap(&tunnel_text(t), "Tunnel: ", "  ", WIDTH);
        }
        let counters: Vec<String> = self
            .counters
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("{k} +{v}"))
            .collect();
        s += &list("Kernel counters over the window", counters, "no change");
        if self.lost_events > 0 {
            let _ = writeln!(
                s,
                "Lost events: {} (ring buffer full; counts are lower bounds)",
                self.lost_events
            );
        }
        // Each note once, even when two sources said the same.
        let mut said: Vec<&String> = Vec::new();
        for n in &self.notes {
            if !said.contains(&n) {
                s += &wrap(n, "Note: ", "      ", WIDTH);
                said.push(n);
            }
        }
        text_wrap::printable(&s).into_owned()
    }

    /// How long the edge's handshakes, responses and idle connections took, when there were any.
    fn timing_text(&self, s: &mut String) {
        let ms = |v: f64| {
            if v < 10.0 {
                format!("{v:.1} ms")
            } else if v < 10_000.0 {
                format!("{v:.0} ms")
            } else {
                format!("{:.0} s", v / 1000.0)
            }
        };
        let t = &self.timing;
        let mut line = |text: String| *s += &wrap(&text, "", "  ", WIDTH);
        if t.response.count > 0 || t.slow_responses > 0 {
            line(format!(
                "Response time (edge request to first response byte): p50 {}, p99 {}, max {} over {} responses of {} requests; {} past the edge's read timeout ({} of them unread)",
                ms(t.response.p50_ms),
                ms(t.response.p99_ms),
                ms(t.response.max_ms),
                t.response.count,
                t.requests,
                t.slow_responses,
                t.slow_unread
            ));
        }
        if t.exchanges_followed_one_in > 1 && (t.requests > 0 || t.idle_close.count > 0) {
            line(format!(
                "Exchange timing followed 1 in {} edge connections (a busy host: --timing-sample-above); the response and idle-close figures are theirs",
                t.exchanges_followed_one_in
            ));
        }
        if t.idle_close.count > 0 || t.requests_after_close > 0 {
            line(format!(
                "Idle close (origin closed an idle edge connection): p50 {}, max {} over {} closes; {} requests arrived after the close",
                ms(t.idle_close.p50_ms),
                ms(t.idle_close.max_ms),
                t.idle_close.count,
                t.requests_after_close
            ));
        }
        let h = &self.timing.handshake;
        if h.count == 0 {
            return;
        }
        *s += &wrap(
            &format!(
                "Handshake time (edge, first SYN to final ACK): p50 {}, p99 {}, max {} over {} handshakes; {} needed the edge's SYN again, {} the origin's SYN-ACK again",
                ms(h.p50_ms),
                ms(h.p99_ms),
                ms(h.max_ms),
                h.count,
                self.timing.after_syn_retransmits,
                self.timing.after_synack_retransmits
            ),
            "",
            "  ",
            WIDTH,
        );
    }

    /// The counts table and where forwarded attempts went.
    fn counts_text(&self, s: &mut String) {
        let _ = writeln!(*s);
        let _ = writeln!(*s, "Connection attempts (distinct)   edge  non-edge");
        let rows: [Row; 9] = [
            ("SYN", |c| c.syn),
            ("handshakes", |c| c.handshakes),
            ("refused", |c| c.refused),
            ("firewall drops", |c| c.firewall_drops),
            ("overload drops", |c| c.overload_drops),
            ("origin resets", |c| c.origin_resets),
            ("unanswered", |c| c.unanswered),
            ("other drops", |c| c.other_drops),
            ("unknown (events lost)", |c| c.unknown),
        ];
        for (name, get) in rows {
            let _ = writeln!(
                s,
                "  {name:<30}{:>6}{:>10}",
                get(&self.edge),
                get(&self.non_edge)
            );
        }
        for b in &self.backends {
            let outcomes: Vec<String> = b
                .outcomes
                .iter()
                .map(|(o, n)| format!("{} {n}", o.as_str()))
                .collect();
            *s += &wrap(
                &format!(
                    "Forwarded: edge port {} -> {} in {}{} ({})",
                    b.edge_port,
                    b.endpoint(),
                    b.place,
                    b.dnat_chain()
                        .map(|c| format!(" by {c}"))
                        .unwrap_or_default(),
                    outcomes.join(", ")
                ),
                "",
                "  ",
                WIDTH,
            );
        }
    }
}

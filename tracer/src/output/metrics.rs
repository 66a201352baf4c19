//! The agent's Prometheus metrics (served by `output::http`).

use std::time::SystemTime;

use anyhow::Result;
use prometheus::{
    Encoder as _, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::{correlate::Outcome, ranges::RangeSet, verdict::Verdict};

/// The alert in `deploy/alerts.yml` that fires for a verdict: a new verdict does not compile
/// until it is decided here, and a test checks each named alert exists, carries a
/// `verdict` label naming it, a description and a runbook entry in the README.
pub fn alert_for(verdict: Verdict) -> Option<&'static str> {
    match verdict {
        Verdict::Refused => Some("CloudflareConnectionsRefused"),
        Verdict::FirewallDrop => Some("CloudflareConnectionsFirewalled"),
        Verdict::Overloaded => Some("OriginOverloaded"),
        Verdict::ResetByOrigin => Some("OriginResetsConnections"),
        Verdict::Unanswered => Some("CloudflareConnectionsUnanswered"),
        Verdict::OtherDrop => Some("OriginDropsConnections"),
        Verdict::NeverArriving => Some("CloudflareTrafficNeverArrives"),
        Verdict::ReturnPath => Some("OriginRepliesLost"),
        Verdict::Unknown => Some("TracerLosingEvents"),
        Verdict::TlsFailure => Some("OriginTlsFailing"),
        Verdict::SlowResponse => Some("OriginRespondsTooSlowly"),
        Verdict::KeepaliveRace => Some("OriginClosesReusedConnections"),
        Verdict::TunnelOriginUnreachable => Some("CloudflareTunnelOriginUnreachable"),
        Verdict::TunnelDown => Some("CloudflareTunnelDown"),
        Verdict::Healthy => None,
    }
}

type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A histogram by port whose series are resolved once per watched port: a label lookup per
/// observation would hash strings at connection rates.
struct PortHistogram {
    vec: HistogramVec,
    /// Each port's histogram once it has a first observation: a port no edge connection
    /// used has no series (13 ports of buckets would be most of an agent's series).
    series: std::sync::RwLock<FastMap<u16, prometheus::Histogram>>,
}

impl PortHistogram {
    fn new(r: &Registry, name: &str, help: &str, buckets: &[f64]) -> Result<Self> {
        let vec = HistogramVec::new(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
            &["port"],
        )?;
        r.register(Box::new(vec.clone()))?;
        Ok(Self {
            vec,
            series: Default::default(),
        })
    }

    fn observe(&self, port: u16, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        // Observed under the read lock: a clone of the handle would be two atomic operations
        // more on every response.
        if let Ok(m) = self.series.read() {
            if let Some(h) = m.get(&port) {
                return h.observe(secs);
            }
        }
        let h = self.vec.with_label_values(&[&port.to_string()]);
        h.observe(secs);
        if let Ok(mut m) = self.series.write() {
            m.insert(port, h);
        }
    }
}

pub struct Metrics {
    registry: Registry,
    /// Series resolved once: (edge, port, outcome) -> counter, port -> edge SYN counter.
    /// Counter handles resolved once: a label lookup per connection would hash strings.
    connection_series: FastMap<(bool, u16, Outcome), IntCounter>,
    syn_series: FastMap<u16, IntCounter>,
    /// (edge, port) -> resets after the handshake.
    late_reset_series: FastMap<(bool, u16), IntCounter>,
    edge_late_resets: IntCounterVec,
    non_edge_late_resets: IntCounterVec,
    build_info: IntGaugeVec,
    kernel_release: String,
    edge_connections: IntCounterVec,
    non_edge_connections: IntCounterVec,
    edge_syn: IntCounterVec,
    events_lost: IntCounter,
    ranges_info: IntGaugeVec,
    arrival_hook: IntGaugeVec,
    ranges_fetched_at: std::sync::Mutex<Option<SystemTime>>,
    ranges_fetched: IntGauge,
    verdict: IntGaugeVec,
    open_attempts: IntGauge,
    windows: IntCounter,
    log_suppressed: IntCounter,
    log_write_errors: IntCounter,
    log_rotation_failures: IntCounter,
    syns_refused: IntCounter,
    attempts_evicted: IntCounter,
    edge_attempts_evicted: IntCounter,
    listener_changes_dropped: IntCounterVec,
    /// Edge timing by port: handshakes, responses, idle closes.
    handshake_seconds: PortHistogram,
    response_seconds: PortHistogram,
    idle_close_seconds: PortHistogram,
    slow_responses: IntCounter,
    exchanges_followed_one_in: IntGauge,
    requests_after_close: IntCounter,
    tls_ok: IntGaugeVec,
    tls_not_after: IntGaugeVec,
    misrouted: IntGauge,
    changes: IntCounterVec,
    pub tunnel: super::tunnel_metrics::TunnelMetrics,
}

/// The event log's counters: lines held back, lines not written, rotations failed.
fn log_counters(r: &Registry) -> Result<(IntCounter, IntCounter, IntCounter)> {
    let log_suppressed = counter(
        r,
        "tracer_log_lines_suppressed_total",
        "Event log lines held back by the rate limit (summed up in `suppressed` lines).",
    )?;
    let log_write_errors = counter(
        r,
        "tracer_log_write_errors_total",
        "Log lines that could not be written (full disk, closed output).",
    )?;
    let log_rotation_failures = counter(
        r,
        "tracer_log_rotation_failures_total",
        "Log rotations that failed (something squats `<log>.1`): the log was truncated to keep its size cap.",
    )?;
    Ok((log_suppressed, log_write_errors, log_rotation_failures))
}

fn counter(r: &Registry, name: &str, help: &str) -> Result<IntCounter> {
    let c = IntCounter::new(name, help)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

pub(super) fn gauge(r: &Registry, name: &str, help: &str) -> Result<IntGauge> {
    let g = IntGauge::new(name, help)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

pub(super) fn gauge_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

pub(super) fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

impl Metrics {
    pub fn new(ports: &[u16]) -> Result<Self> {
        let r = Registry::new();
        let edge_connections = counter_vec(
            &r,
            "tracer_edge_connections_total",
            "Connection attempts from the watched (edge) ranges by outcome; each attempt counts once, in the outcome it ended with (origin_reset: reset by the origin before its handshake completed; a reset after the handshake is in tracer_edge_resets_after_handshake_total).",
            &["port", "outcome"],
        )?;
        let non_edge_connections = counter_vec(
            &r,
            "tracer_non_edge_connections_total",
            "Connection attempts from peers outside the watched ranges by outcome, as tracer_edge_connections_total.",
            &["port", "outcome"],
        )?;
        let edge_late_resets = counter_vec(
            &r,
            "tracer_edge_resets_after_handshake_total",
            "Edge connections the origin reset after their handshake completed (already counted as handshake in tracer_edge_connections_total).",
            &["port"],
        )?;
        let non_edge_late_resets = counter_vec(
            &r,
            "tracer_non_edge_resets_after_handshake_total",
            "Connections from peers outside the watched ranges the origin reset after their handshake completed.",
            &["port"],
        )?;
        let build_info = gauge_vec(&r, "tracer_build_info", "The tracer's version, the running kernel's release and the arrival hook attached (value 1).", &["version", "kernel", "arrival_hook"])?;
        let tls_ok = gauge_vec(&r, "tracer_tls_check_ok", "1 when the last TLS check (--hostname) of the port worked under Full (Strict): handshake done, certificate valid for the hostname; 0 when not.", &["port", "hostname"])?;
        let tls_not_after = gauge_vec(&r, "tracer_tls_certificate_not_after_timestamp_seconds", "When the certificate the port served for the hostname expires (its notAfter, Unix seconds), from the last TLS check.", &["port", "hostname"])?;
        let changes = counter_vec(
            &r,
            "tracer_changes_total",
            "Changes on the origin the journal recorded, by kind (listener_up, listener_down, firewall, route, address, link, sysctl, ranges, hook).",
            &["what"],
        )?;
        let edge_syn = counter_vec(
            &r,
            "tracer_edge_syn_total",
            "SYN packets from the watched ranges seen at the NIC (retransmissions included).",
            &["port"],
        )?;
        let events_lost = counter(
            &r,
            "tracer_events_lost_total",
            "Kernel events lost because a kernel buffer was full: the event ring buffer or the arrival hook's SYN log (counts are lower bounds while it rises).",
        )?;
        let ranges_info = gauge_vec(
            &r,
            "tracer_ranges_info",
            "The watched ranges in use (value 1).",
            &["source", "etag"],
        )?;
        let arrival_hook = gauge_vec(
            &r,
            "tracer_arrival_hook",
            "Where arriving SYNs are seen (value 1): xdp_driver, xdp_generic, tcx or tc_clsact.",
            &["hook"],
        )?;
        let tunnel = super::tunnel_metrics::TunnelMetrics::new(&r)?;
        let misrouted = gauge(
            &r,
            "tracer_ranges_misrouted",
            "Watched ranges (or parts of them) this host routes another way than its default route — another interface or gateway, or a null route — so replies to them do not get back (523/522); `tracer ranges --audit` lists them.",
        )?;
        let ranges_fetched = gauge(
            &r,
            "tracer_ranges_fetched_timestamp_seconds",
            "When the ranges in use were fetched or recorded (Unix seconds).",
        )?;
        let verdict = gauge_vec(
            &r,
            "tracer_verdict",
            "1 for the verdict of the last completed window, 0 for the others.",
            &["verdict"],
        )?;
        let open_attempts = gauge(
            &r,
            "tracer_open_attempts",
            "Connection attempts awaiting an answer now.",
        )?;
        let windows = IntCounter::new("tracer_windows_total", "Verdict windows completed.")?;
        r.register(Box::new(windows.clone()))?;
        let syns_refused = counter(
            &r,
            "tracer_edge_syns_refused_total",
            "SYNs from the watched ranges to watched ports the kernel refused (no socket), counted in the kernel: exact even when events are lost.",
        )?;
        let attempts_evicted = counter(
            &r,
            "tracer_attempts_evicted_total",
            "Open attempts ended early (as unknown unless decided) because the attempt table was full.",
        )?;
        let listener_changes_dropped = counter_vec(
            &r,
            "tracer_listener_changes_dropped_total",
            "Listener changes on watched ports not journaled: in a namespace an unprivileged user made (unprivileged_namespace), over a namespace's budget of 20 a second (rate_limit), or with the journal's queue full (journal_full).",
            &["reason"],
        )?;
        for reason in ["unprivileged_namespace", "rate_limit", "journal_full"] {
            listener_changes_dropped.with_label_values(&[reason]);
        }
        let edge_attempts_evicted = counter(
            &r,
            "tracer_edge_attempts_evicted_total",
            "Of those, the edge's: only when the table holds nothing but edge attempts (non-edge ones go first).",
        )?;
        let (log_suppressed, log_write_errors, log_rotation_failures) = log_counters(&r)?;
        let handshake_seconds = PortHistogram::new(
            &r,
            "tracer_edge_handshake_seconds",
            "Edge handshakes by port: first SYN seen to the final ACK (SYN retransmissions after 1, 2, 3 … s show as the steps).",
            &[0.001, 0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 1.5, 2.5, 4.0, 8.0, 19.0],
        )?;
        let response_seconds = PortHistogram::new(
            &r,
            "tracer_edge_response_seconds",
            "Edge requests by port: the request's arrival to the first response byte leaving (Cloudflare gives up at its proxy read timeout, 100 s by default: 524).",
            &[0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 100.0, 300.0],
        )?;
        let idle_close_seconds = PortHistogram::new(
            &r,
            "tracer_edge_idle_close_seconds",
            "Edge connections the origin closed while idle, by port: how long they had been idle (Cloudflare reuses idle connections up to 900 s; closing sooner risks 520).",
            &[1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0],
        )?;
        let slow_responses = counter(
            &r,
            "tracer_edge_slow_responses_total",
            "Edge requests whose first response byte came later than the edge's read timeout (--edge-read-timeout, 100 s by default), or had not come by then: 524 for the visitor.",
        )?;
        let exchanges_followed_one_in = gauge(
            &r,
            "tracer_edge_exchanges_followed_one_in",
            "1 in how many edge connections the exchange timing followed in the last window (1: every one; more above --timing-sample-above requests a second, chosen by a hash of each connection): the response and idle-close histograms and the slow and after-close counters count those.",
        )?;
        exchanges_followed_one_in.set(1);
        let requests_after_close = counter(
            &r,
            "tracer_edge_requests_after_close_total",
            "Edge requests that arrived on a connection the origin had already closed (answered with a reset): 520 for the visitor.",
        )?;

        let mut m = Self {
            registry: r,
            connection_series: FastMap::default(),
            syn_series: FastMap::default(),
            late_reset_series: FastMap::default(),
            edge_late_resets,
            non_edge_late_resets,
            build_info,
            kernel_release: crate::kernel::release(),
            edge_connections,
            non_edge_connections,
            edge_syn,
            events_lost,
            ranges_info,
            arrival_hook,
            ranges_fetched_at: std::sync::Mutex::new(None),
            ranges_fetched,
            verdict,
            open_attempts,
            windows,
            log_suppressed,
            log_rotation_failures,
            log_write_errors,
            syns_refused,
            attempts_evicted,
            edge_attempts_evicted,
            listener_changes_dropped,
            handshake_seconds,
            response_seconds,
            idle_close_seconds,
            slow_responses,
            exchanges_followed_one_in,
            requests_after_close,
            tls_ok,
            tls_not_after,
            misrouted,
            changes,
            tunnel,
        };
        m.every_series_from_the_start(ports);
        // The standard process_* metrics: CPU seconds, resident memory, open files, start time.
        m.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(m)
    }

    /// Every series exists from the start, so rate() and absent() work before the first
    /// event; the counters per port and outcome are resolved once (no label lookup per
    /// connection).
    fn every_series_from_the_start(&mut self, ports: &[u16]) {
        for &port in ports {
            let p = port.to_string();
            self.syn_series
                .insert(port, self.edge_syn.with_label_values(&[&p]));
            self.late_reset_series
                .insert((true, port), self.edge_late_resets.with_label_values(&[&p]));
            self.late_reset_series.insert(
                (false, port),
                self.non_edge_late_resets.with_label_values(&[&p]),
            );
            for o in Outcome::ALL {
                self.connection_series.insert(
                    (true, port, o),
                    self.edge_connections.with_label_values(&[&p, o.as_str()]),
                );
            }
        }
        for v in Verdict::ALL {
            self.verdict.with_label_values(&[v.as_str()]).set(0);
        }
        for w in crate::journal::What::ALL {
            self.changes.with_label_values(&[w.as_str()]);
        }
    }

    pub fn change(&self, what: crate::journal::What) {
        self.changes.with_label_values(&[what.as_str()]).inc();
    }

    /// The latest TLS check results (the series of checks no longer made go away).
    pub fn set_tls(&self, checks: &[crate::tls::TlsCheck]) {
        self.tls_ok.reset();
        self.tls_not_after.reset();
        for c in checks {
            let labels = [c.port.to_string(), c.hostname.clone()];
            let labels = [labels[0].as_str(), labels[1].as_str()];
            self.tls_ok.with_label_values(&labels).set(i64::from(c.ok));
            if let Some(leaf) = c.certificates.first() {
                self.tls_not_after
                    .with_label_values(&labels)
                    .set(leaf.not_after_unix);
            }
        }
    }

    /// The correlator's running count of attempts ended early for room.
    pub fn set_evicted(&self, total: u64, edge: u64) {
        for (c, total) in [
            (&self.attempts_evicted, total),
            (&self.edge_attempts_evicted, edge),
        ] {
            let now = c.get();
            if total > now {
                c.inc_by(total - now);
            }
        }
    }

    /// Listener changes not journaled, by reason: running totals.
    pub fn set_listener_changes_dropped(&self, unprivileged: u64, throttled: u64, queue: u64) {
        for (reason, total) in [
            ("unprivileged_namespace", unprivileged),
            ("rate_limit", throttled),
            ("journal_full", queue),
        ] {
            let c = self.listener_changes_dropped.with_label_values(&[reason]);
            let now = c.get();
            if total > now {
                c.inc_by(total - now);
            }
        }
    }

    /// The kernel's running count of refused edge SYNs.
    pub fn set_syns_refused(&self, total: u64) {
        let now = self.syns_refused.get();
        if total > now {
            self.syns_refused.inc_by(total - now);
        }
    }

    /// The event log's running totals, as counters.
    pub fn set_log_counts(&self, suppressed: u64, write_errors: u64, rotation_failures: u64) {
        for (c, total) in [
            (&self.log_suppressed, suppressed),
            (&self.log_write_errors, write_errors),
            (&self.log_rotation_failures, rotation_failures),
        ] {
            let now = c.get();
            if total > now {
                c.inc_by(total - now);
            }
        }
    }

    pub fn connection(&self, edge: bool, port: u16, outcome: Outcome) {
        self.connections(edge, port, outcome, 1);
    }

    /// `n` connections of one outcome at once (refusals credited from the kernel's count).
    pub fn connections(&self, edge: bool, port: u16, outcome: Outcome, n: u64) {
        match self.connection_series.get(&(edge, port, outcome)) {
            Some(c) => c.inc_by(n),
            None => {
                let family = if edge {
                    &self.edge_connections
                } else {
                    &self.non_edge_connections
                };
                family
                    .with_label_values(&[&port.to_string(), outcome.as_str()])
                    .inc_by(n);
            }
        }
    }

    /// A connection already counted as a handshake was reset by the origin.
    pub fn reset_after_handshake(&self, edge: bool, port: u16) {
        match self.late_reset_series.get(&(edge, port)) {
            Some(c) => c.inc(),
            None => {
                let family = if edge {
                    &self.edge_late_resets
                } else {
                    &self.non_edge_late_resets
                };
                family.with_label_values(&[&port.to_string()]).inc();
            }
        }
    }

    pub fn edge_syn(&self, port: u16) {
        match self.syn_series.get(&port) {
            Some(c) => c.inc(),
            None => self.edge_syn.with_label_values(&[&port.to_string()]).inc(),
        }
    }

    /// A completed edge handshake at `port` and how long it took.
    pub fn handshake(&self, port: u16, took: std::time::Duration) {
        self.handshake_seconds.observe(port, took);
    }

    /// A step of an edge exchange that is timed or counted.
    pub fn exchange(&self, o: crate::correlate::exchanges::Observed) {
        use crate::correlate::exchanges::Observed;
        match o {
            Observed::Response { port, time } => self.response_seconds.observe(port, time),
            Observed::IdleClose { port, idle } => self.idle_close_seconds.observe(port, idle),
            Observed::AfterClose { .. } => {}
        }
    }

    /// A window's slow responses and requests after a close (counted when it closes: a
    /// request still waiting is slow only once it has waited the read timeout).
    pub fn exchange_window(&self, slow: u64, after_close: u64, followed_one_in: u32) {
        self.slow_responses.inc_by(slow);
        self.requests_after_close.inc_by(after_close);
        self.exchanges_followed_one_in
            .set(i64::from(followed_one_in.max(1)));
    }

    /// Edge SYNs at `port` are at least the `refused` the kernel counted there: a refused SYN
    /// whose record was lost still arrived.
    pub fn edge_syns_at_least(&self, port: u16, refused: u64) {
        let c = match self.syn_series.get(&port) {
            Some(c) => c.clone(),
            None => self.edge_syn.with_label_values(&[&port.to_string()]),
        };
        let now = c.get();
        if refused > now {
            c.inc_by(refused - now);
        }
    }

    pub fn lost(&self, n: u64) {
        self.events_lost.inc_by(n);
    }

    pub fn set_open_attempts(&self, n: usize) {
        self.open_attempts.set(n as i64);
    }

    pub fn set_ranges(&self, set: &RangeSet) {
        self.ranges_info.reset();
        self.ranges_info
            .with_label_values(&[&set.source.to_string(), set.etag.as_deref().unwrap_or("")])
            .set(1);
        if let Ok(mut t) = self.ranges_fetched_at.lock() {
            *t = set.fetched_at;
        }
    }

    pub fn set_arrival_hook(&self, hook: &str) {
        self.arrival_hook.reset();
        self.arrival_hook.with_label_values(&[hook]).set(1);
        self.build_info.reset();
        self.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), &self.kernel_release, hook])
            .set(1);
    }

    pub fn set_misrouted(&self, n: usize) {
        self.misrouted.set(n as i64);
    }

    pub fn set_verdict(&self, verdict: Verdict) {
        for v in Verdict::ALL {
            self.verdict
                .with_label_values(&[v.as_str()])
                .set(i64::from(v == verdict));
        }
        self.windows.inc();
    }

    /// The text exposition (Prometheus text format 0.0.4).
    pub fn render(&self) -> String {
        if let Ok(t) = self.ranges_fetched_at.lock() {
            let at = t
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            self.ranges_fetched.set(at as i64);
        }
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    const RULES: &str = include_str!("../../../deploy/alerts.yml");
    const README: &str = include_str!("../../../README.md");

    /// Each alert's block of text in deploy/alerts.yml, by name.
    fn alert_blocks() -> Vec<(&'static str, &'static str)> {
        RULES
            .split("- alert: ")
            .skip(1)
            .map(|b| (b.lines().next().unwrap_or("").trim(), b))
            .collect()
    }

    #[test]
    fn every_verdict_has_its_alert_labelled_with_it() {
        let blocks = alert_blocks();
        for v in Verdict::ALL {
            let Some(alert) = alert_for(v) else { continue };
            let (_, block) = blocks
                .iter()
                .find(|(name, _)| *name == alert)
                .unwrap_or_else(|| panic!("{alert} for {} missing", v.as_str()));
            assert!(
                block.contains(&format!("verdict: {}\n", v.as_str())),
                "{alert} lacks the label verdict: {}",
                v.as_str()
            );
        }
    }

    #[test]
    fn every_alert_has_a_description_and_a_runbook_in_the_readme() {
        let blocks = alert_blocks();
        assert!(blocks.len() >= 12, "{blocks:?}");
        for (name, block) in blocks {
            assert!(block.contains("description:"), "{name} has no description");
            let anchor = name.to_lowercase();
            assert!(
                block.contains(&format!(
                    "runbook_url: \"{}#{anchor}\"",
                    crate::commands::RUNBOOK_BASE
                )),
                "{name}: runbook_url must point at #{anchor} of the public README"
            );
            assert!(
                README.contains(&format!("\n### {name}\n")),
                "README has no runbook heading `### {name}`"
            );
        }
    }

    use super::*;

    #[test]
    fn exposition_has_every_series() {
        let m = Metrics::new(&[443]).unwrap();
        m.connection(true, 443, Outcome::Refused);
        m.connection(false, 443, Outcome::Handshake);
        m.edge_syn(443);
        m.set_ranges(&RangeSet::embedded());
        m.set_verdict(Verdict::Refused);
        let text = m.render();
        assert!(
            text.contains("tracer_edge_connections_total{outcome=\"refused\",port=\"443\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tracer_edge_connections_total{outcome=\"unanswered\",port=\"443\"} 0")
        );
        assert!(text
            .contains("tracer_non_edge_connections_total{outcome=\"handshake\",port=\"443\"} 1"));
        assert!(text.contains("tracer_edge_syn_total{port=\"443\"} 1"));
        assert!(text.contains("tracer_events_lost_total 0"));
        assert!(text.contains(
            "tracer_ranges_info{etag=\"38f79d050aa027e3be3865e495dcc9bc\",source=\"embedded\"} 1"
        ));
        assert!(text.contains("tracer_ranges_fetched_timestamp_seconds "));
        assert!(text.contains("tracer_verdict{verdict=\"refused\"} 1"));
        assert!(text.contains("tracer_verdict{verdict=\"healthy\"} 0"));
    }
}

//! `tracer agent`: the continuous service. Events and per-window verdicts as JSON lines,
//! Prometheus metrics, ranges refreshed in place.

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::Result;
use tokio::sync::mpsc;

use crate::{
    capture::session::{Next, Sink},
    capture::{Capture, RunningCounts},
    cli::{AgentArgs, LogEvents},
    correlate::{kernel_account::KernelAccount, Correlator, Decided, Outcome},
    journal::{since::FailureClock, watch::Watcher, Change, Journal, What},
    kernel::InterfaceChange,
    model::event::{Kind, Record},
    output::attempt_record::AttemptRecord,
    output::event_log::{EventLog, LimitKey},
    output::events::EventRecord,
    output::metrics::Metrics,
    ranges::RangeSet,
    reasons::ReasonTable,
    tls::{TlsCheck, TlsSettings},
    verdict::window::{self, OriginSampler, Tally},
};

mod ranges;
mod route_audit;
mod start;
mod window_close;

use ranges::{refresh, Refreshed};

pub use start::run;

/// Settled attempts (closed, refused) leave after this idle time...
const SETTLED_AFTER: Duration = Duration::from_secs(2);
/// ...others after this: a dropped SYN is retransmitted for about 20 s and must count once.
const IDLE_AFTER: Duration = Duration::from_secs(25);

/// How often /proc is searched for the tunnel's processes (a restarted cloudflared is
/// followed within this).
const TUNNEL_LOOK_EVERY: Duration = Duration::from_secs(5);
/// How often the loop looks for a window's report while one is being assembled.
const REPORT_POLL: Duration = Duration::from_millis(100);
/// At exit, reports still being assembled are waited for this long at most.
const REPORTS_AT_EXIT: Duration = Duration::from_secs(2);

/// What log lines are limited by: the watched range a peer is in, else its /24 or /48.
fn peer_group(ranges: &RangeSet, peer: IpAddr) -> String {
    if let Some(r) = ranges.range_of(peer) {
        return r.to_string();
    }
    let len = if peer.is_ipv4() { 24 } else { 48 };
    ipnet::IpNet::new(peer, len)
        .map(|n| n.trunc().to_string())
        .unwrap_or_else(|_| peer.to_string())
}

/// An attempt's outcome (edge, port, outcome) into the metrics. The edge's are held to the
/// kernel's exact count of refusals ([`KernelAccount`]): an unknown one waits for the next
/// tick, where the kernel's count says whether it was a refusal.
fn count_outcome(
    metrics: &Metrics,
    account: &mut KernelAccount,
    unknown_edge: &mut Vec<u16>,
    (edge, port, outcome): (bool, u16, Outcome),
) {
    if !edge {
        metrics.connection(false, port, outcome);
    } else if outcome == Outcome::Unknown {
        unknown_edge.push(port);
    } else if let Some(o) = account.decided(port, outcome, 0) {
        metrics.connection(true, port, o);
    }
}

/// Which kernel records are logged one per line: every one with `all`; with `failures` only
/// losses (failed attempts are logged once each, as `attempt` lines, when they are over).
fn wanted(record: &Record, level: LogEvents) -> bool {
    match (level, record) {
        // A listener's change is logged as the journal's `change` line.
        (_, Record::Listener(_)) => false,
        (LogEvents::All, _) => true,
        (LogEvents::None, _) => false,
        (LogEvents::Failures, Record::Loss { .. }) => true,
        (LogEvents::Failures, Record::Event(_)) => false,
        // Exchanges are timed in the metrics and the verdict record, not logged one by one.
        (_, Record::Exchange(_) | Record::Dial(_)) => false,
    }
}

/// The agent's work on the capture: every record logged, counted and correlated as it comes;
/// windows, housekeeping, log reopening and range updates on ticks.
struct Agent {
    args: AgentArgs,
    iface: String,
    ports: Vec<u16>,
    netns: u32,
    follows_forwarded: bool,
    reasons: ReasonTable,
    notes: Vec<String>,
    /// The arrival hook attached now (it changes when the interface comes back).
    arrival_hook: crate::kernel::ArrivalHook,
    ranges: RangeSet,
    metrics: Arc<Metrics>,
    sink: EventLog,
    correlator: Correlator,
    tally: Tally,
    /// Requests, responses and closes on edge connections.
    exchanges: crate::correlate::exchanges::Exchanges,
    sampler: OriginSampler,
    window_start: (Instant, SystemTime),
    /// The kernel's and the interface's counts when the window started.
    counts_at_start: RunningCounts,
    /// Refusals credited from the kernel's count, carried across windows.
    refusals: window::RefusalLedger,
    /// The edge's outcomes held to the kernel's count of refusals, and the edge's unknown
    /// outcomes waiting for it.
    kernel_account: KernelAccount,
    unknown_edge: Vec<u16>,
    /// Closed windows, assembled into reports off the capture thread.
    assembler: window_close::Assembler,
    last_housekeeping: Instant,
    next_refresh: Option<Instant>,
    refresh_tx: mpsc::Sender<Refreshed>,
    refresh_rx: mpsc::Receiver<Refreshed>,
    /// Set by the SIGHUP task: reopen the log file.
    hup: Arc<AtomicBool>,
    /// Said in this window's verdict record (the interface went away, came back).
    window_notes: Vec<String>,
    /// A failed re-attach is warned about once, then retried quietly.
    reattach_failed: bool,
    /// Why the last refresh failed, while it keeps failing so.
    refresh_error: Option<String>,
    /// `--hostname`: the TLS check, run once per window in the background.
    tls: Option<TlsSettings>,
    /// The latest TLS results, carried by each window's verdict until the next ones.
    tls_results: Vec<TlsCheck>,
    tls_tx: mpsc::Sender<Vec<TlsCheck>>,
    tls_rx: mpsc::Receiver<Vec<TlsCheck>>,
    tls_running: bool,
    /// The change journal: the host watched for changes, and the recent ones.
    watcher: Watcher,
    journal: Journal,
    /// When the current failure of edge attempts began.
    failure_clock: FailureClock,
    /// What the host dates, read once a failure older than the agent is seen.
    dated: Vec<crate::journal::dated::Dated>,
    /// The last failed edge attempt's outcome: what the current failure is called.
    last_failure: Option<crate::correlate::Outcome>,
    /// `GET /history`, rebuilt when `history_dirty`.
    history: crate::output::http::History,
    /// What `/healthz` reports: the capture draining, the arrival hook attached.
    health: Arc<crate::output::http::Health>,
    history_dirty: bool,
    last_verdict: Option<(crate::verdict::Verdict, SystemTime)>,
    /// Watched ranges this host routes another way than its default route.
    route_audit: route_audit::RouteAudit,
    misrouted: Vec<crate::origin::range_routes::Misrouted>,
    /// The Cloudflare Tunnel's processes and their dials.
    tunnel: crate::correlate::tunnel::TunnelWatch,
    last_tunnel_look: Instant,
}

impl Sink for Agent {
    /// One event at a time, straight from the kernel's buffers: this runs for every one.
    fn record(&mut self, record: Record) {
        if let Record::Listener(l) = record {
            self.watcher.listener(l);
            return;
        }
        match &record {
            Record::Event(ev) if ev.kind == Kind::Syn && ev.edge => {
                self.metrics.edge_syn(ev.flow.local_port);
            }
            Record::Loss { count, .. } => self.metrics.lost(*count),
            _ => {}
        }
        if wanted(&record, self.args.log_events) {
            let reasons = &self.reasons;
            match &record {
                Record::Event(ev) => {
                    let key = LimitKey {
                        kind: ev.kind.as_str(),
                        peers: peer_group(&self.ranges, ev.flow.peer),
                    };
                    let text = || EventRecord::of_event(ev, reasons).to_json();
                    self.sink.event(key, Instant::now(), text);
                }
                Record::Loss { ts, count } => {
                    self.sink.line(&EventRecord::loss(*ts, *count).to_json())
                }
                Record::Listener(_) | Record::Exchange(_) | Record::Dial(_) => {}
            }
        }
        if let Record::Exchange(x) = &record {
            if let Some(o) = self.exchanges.observe(x) {
                self.metrics.exchange(o);
            }
            return;
        }
        if let Record::Dial(d) = &record {
            let edge = crate::correlate::tunnel::is_edge(&d.target, &self.ranges);
            let reasons = &self.reasons;
            self.metrics
                .tunnel
                .dial(edge, d.step, |r| reasons.name(r).into_owned());
            self.tunnel.observe(d);
            return;
        }
        self.correlator.observe_record(&record);
        self.count_decided();
    }

    fn tick(&mut self, capture: &mut Capture) -> Result<Next> {
        // A tick follows each drain of the kernel's buffers (or the drain interval passing).
        self.health.drained();
        self.sink.roll(Instant::now());
        self.metrics.set_log_counts(
            self.sink.suppressed,
            self.sink.write_errors,
            self.sink.rotation_failures,
        );
        if self.hup.swap(false, Ordering::Relaxed) {
            match self.sink.reopen() {
                Ok(()) => tracing::info!("log file reopened"),
                Err(e) => tracing::warn!("cannot reopen the log file: {e:#}"),
            }
        }
        if let Ok(result) = self.refresh_rx.try_recv() {
            self.apply_refresh(capture, result);
        }
        for c in self.watcher.drain() {
            self.record_change(c);
        }
        if let Ok(checks) = self.tls_rx.try_recv() {
            self.tls_running = false;
            self.metrics.set_tls(&checks);
            self.tls_results = checks;
        }
        if self.last_housekeeping.elapsed() >= Duration::from_secs(1) {
            self.correlator
                .take_idle(SystemTime::now(), SETTLED_AFTER, IDLE_AFTER);
            self.count_decided();
            self.sampler.sample();
            self.metrics
                .set_open_attempts(self.correlator.open_attempts());
            self.metrics.set_syns_refused(capture.edge_syns_refused());
            self.count_unknown_edge(capture);
            self.settle_with_kernel(capture);
            if let Ok(k) = capture.probe.counters() {
                self.metrics.set_listener_changes_dropped(
                    k[tracer_common::counter::LISTEN_UNPRIVILEGED as usize],
                    k[tracer_common::counter::LISTEN_THROTTLED as usize],
                    self.watcher.dropped(),
                );
            }
            self.metrics
                .set_evicted(self.correlator.evicted, self.correlator.evicted_edge);
            self.watch_interface(capture);
            if let Some(found) = self.route_audit.poll(&self.ranges) {
                self.routes_audited(found);
            }
            if self.last_tunnel_look.elapsed() >= TUNNEL_LOOK_EVERY {
                self.last_tunnel_look = Instant::now();
                if let Some(pids) = self.tunnel.refresh() {
                    self.follow_tunnel(capture, &pids);
                }
            }
            if std::mem::take(&mut self.history_dirty) {
                self.publish_history();
            }
            self.last_housekeeping = Instant::now();
        }
        if self.window_start.0.elapsed() >= Duration::from_secs_f64(self.args.window) {
            self.close_window(capture);
        }
        for (report, started) in self.assembler.done() {
            self.finish_window(report, started);
        }
        if let Some(at) = self.next_refresh {
            if Instant::now() >= at {
                // One fetch at a time: the next is scheduled when this one's result arrives.
                self.next_refresh = None;
                let tx = self.refresh_tx.clone();
                let file = self.args.ranges.file.clone();
                tokio::spawn(async move {
                    let _ = tx.send(refresh(file).await).await;
                });
            }
        }
        self.count_unknown_edge(capture);
        self.sink.flush();
        Ok(Next::Continue)
    }

    /// Housekeeping is once a second, and a window closes on time: a quiet origin wakes the
    /// agent about once a second (events wake it sooner). A closed window's report is taken
    /// as soon as it is assembled.
    fn tick_every(&self) -> Duration {
        if self.assembler.pending() {
            return REPORT_POLL;
        }
        let window = Duration::from_secs_f64(self.args.window);
        Duration::from_secs(1).min(window.saturating_sub(self.window_start.0.elapsed()))
    }

    fn finish(&mut self, _: &mut Capture, _: bool) -> Result<()> {
        // Windows closed but still being assembled are reported before the agent exits.
        for (report, started) in self.assembler.wait_done(REPORTS_AT_EXIT) {
            self.finish_window(report, started);
        }
        // Attempts still open end with what is known of them: each gets its line.
        self.correlator.finish();
        self.count_decided();
        self.sink.flush();
        Ok(())
    }
}

impl Agent {
    /// Hands the tunnel's processes to the kernel; a failure is warned about.
    pub(super) fn follow_tunnel(&mut self, capture: &mut Capture, pids: &[u32]) {
        if let Err(e) = capture.probe.set_dialers(pids) {
            tracing::warn!("the tunnel's connections cannot be followed: {e:#}");
        }
    }

    /// A change on the host: logged (`kind: change`, rate-limited like events), counted, and
    /// kept for `since`.
    fn record_change(&mut self, c: Change) {
        if self.args.log_events != LogEvents::None {
            let key = LimitKey {
                kind: "change",
                peers: c.what.as_str().to_string(),
            };
            let line = c.to_json();
            self.sink.event(key, Instant::now(), || line);
        }
        self.metrics.change(c.what);
        if matches!(c.what, What::Route | What::Ranges) {
            self.route_audit.mark();
        }
        self.journal.push(c);
        self.history_dirty = true;
    }

    /// A route audit finished: the gauge, and a warning when what it found changed.
    fn routes_audited(&mut self, found: Vec<crate::origin::range_routes::Misrouted>) {
        self.metrics.set_misrouted(found.len());
        let names = |v: &[crate::origin::range_routes::Misrouted]| {
            v.iter().map(|m| m.range).collect::<Vec<_>>()
        };
        if names(&found) != names(&self.misrouted) {
            for m in &found {
                tracing::warn!(range = %m.range, route = %m.route_text(), "replies to a watched range do not leave by the default route: {}", m.fix());
            }
        }
        self.misrouted = found;
    }

    /// Outcomes the correlator decided: into the metrics and the window's tally; attempts
    /// that are over, one log line each.
    fn count_decided(&mut self) {
        let log_attempts = self.args.log_events != LogEvents::None;
        for d in self.correlator.drain_decided() {
            let (attempt, after_handshake) = match d {
                Decided::Attempt(a) => {
                    let outcome = a.decided.unwrap_or(a.outcome());
                    if let (true, Some(t)) = (a.edge, a.handshake_time()) {
                        self.metrics.handshake(a.flow.local_port, t);
                    }
                    count_outcome(
                        &self.metrics,
                        &mut self.kernel_account,
                        &mut self.unknown_edge,
                        (a.edge, a.flow.local_port, outcome),
                    );
                    if a.edge && outcome != crate::correlate::Outcome::Unknown {
                        let failed = outcome != crate::correlate::Outcome::Handshake;
                        let before = self.failure_clock.began();
                        self.failure_clock.observe(a.first, failed);
                        if failed {
                            self.last_failure = Some(outcome);
                        }
                        self.history_dirty |= before != self.failure_clock.began();
                    }
                    self.tally.add(&a);
                    continue;
                }
                Decided::LateReset(a) => {
                    // Already counted as a handshake: a series of its own keeps each attempt
                    // in one outcome.
                    self.metrics
                        .reset_after_handshake(a.edge, a.flow.local_port);
                    self.tally.add_late_reset(&a);
                    (a, true)
                }
                Decided::Ended(a) => (a, false),
            };
            if log_attempts {
                let key = LimitKey {
                    kind: "attempt",
                    peers: peer_group(&self.ranges, attempt.flow.peer),
                };
                let reasons = &self.reasons;
                self.sink.event(key, Instant::now(), || {
                    AttemptRecord::of(&attempt, reasons, after_handshake).to_json()
                });
            }
        }
    }

    /// The edge's unknown outcomes since the last tick, against the kernel's count now.
    fn count_unknown_edge(&mut self, capture: &Capture) {
        if self.unknown_edge.is_empty() {
            return;
        }
        let kernel = capture.probe.refused_by_port();
        for port in std::mem::take(&mut self.unknown_edge) {
            let refused = kernel.get(&port).copied().unwrap_or(0);
            if let Some(o) = self.kernel_account.decided(port, Outcome::Unknown, refused) {
                self.metrics.connection(true, port, o);
            }
        }
    }

    /// Once a second: refusals the kernel counted that no attempt accounted for (their events
    /// all lost) are counted, and the edge's SYNs are at least its refusals.
    fn settle_with_kernel(&mut self, capture: &Capture) {
        let (credit, settled) = self.kernel_account.settle(capture.probe.refused_by_port());
        for (port, n) in credit {
            self.metrics.connections(true, port, Outcome::Refused, n);
        }
        for (port, refused) in settled.unwrap_or_default() {
            self.metrics.edge_syns_at_least(port, refused);
        }
    }

    /// The interface gone (deleted veth, NIC removed) is said once; when an interface of that
    /// name comes back the arrival hook is attached to it again, so the agent never runs
    /// blind reporting `never_arriving`.
    fn watch_interface(&mut self, capture: &mut Capture) {
        let iface = self.iface.clone();
        let now = humantime::format_rfc3339_seconds(SystemTime::now());
        match capture.probe.check_interface() {
            Ok(InterfaceChange::Same) => {}
            Ok(InterfaceChange::Gone) => {
                self.health.set_hook_attached(false);
                tracing::warn!("interface {iface} disappeared: nothing arrives through it; the agent attaches again when an interface of that name comes back");
                self.window_notes.push(format!(
                    "interface {iface} disappeared at {now}: edge SYNs after that were not seen"
                ));
            }
            Ok(InterfaceChange::Back) => {
                self.health.set_hook_attached(true);
                self.reattach_failed = false;
                self.arrival_hook = capture.probe.arrival_hook;
                let hook = self.arrival_hook.as_str();
                self.record_change(Change::new(
                    What::Hook,
                    format!("arrival hook ({hook}) attached again to {iface}, which came back"),
                ));
                self.metrics.set_arrival_hook(hook);
                tracing::warn!(
                    hook,
                    "interface {iface} is back: arrival hook attached again"
                );
                self.window_notes.push(format!(
                    "interface {iface} came back at {now}: arrival hook attached again"
                ));
            }
            Err(e) => {
                if !self.reattach_failed {
                    tracing::warn!("interface {iface} is back but the arrival hook cannot attach to it (retrying): {e:#}");
                }
                self.reattach_failed = true;
                capture.probe.mark_interface_gone();
            }
        }
    }
}

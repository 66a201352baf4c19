//! `tracer agent`: the continuous service. Events and per-window verdicts as JSON lines,
//! Prometheus metrics, ranges refreshed in place.

use std::{
    net::IpAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};

use crate::{
    capture::session::{self, Next, Sink},
    capture::{write_ready_file, Capture},
    cli::{AgentArgs, LogEvents},
    correlate::{Correlator, Decided},
    journal::{
        since::{self, FailureClock},
        watch::Watcher,
        Change, Journal, What,
    },
    kernel::InterfaceChange,
    model::event::{Kind, Record},
    output::attempt_record::AttemptRecord,
    output::event_log::{EventLog, LimitKey},
    output::events::EventRecord,
    output::metrics::{self, Metrics},
    ranges::{fetch, RangeSet},
    reasons::ReasonTable,
    sys::netinfo,
    tls::{TlsCheck, TlsSettings},
    verdict::window::{self, OriginSampler, Tally, WindowContext},
};

/// Settled attempts (closed, refused) leave after this idle time...
const SETTLED_AFTER: Duration = Duration::from_secs(2);
/// ...others after this: a dropped SYN is retransmitted for about 20 s and must count once.
const IDLE_AFTER: Duration = Duration::from_secs(25);

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
    }
}

/// What a refresh produced, sent back from its background task.
type Refreshed = Result<(RangeSet, Option<String>)>;

async fn refresh(file: Option<PathBuf>) -> Refreshed {
    match file {
        Some(path) => Ok((RangeSet::from_file(&path)?, None)),
        None => Ok(fetch::refresh().await),
    }
}

/// The agent never needs to run the moment it wakes: the kernel's buffers hold seconds of
/// events, well over its drain interval. SCHED_BATCH stops its wake-ups from preempting the
/// server it watches, and `nice` (10 by default) lets the server go first under saturation,
/// where the agent's interference costs the server more than the agent's own CPU time. Set on
/// this thread before any other starts, so every thread inherits it.
fn yield_to_workload(nice: i32) {
    // Zeroed (priority 0, as SCHED_BATCH needs): musl's struct has fields glibc's lacks.
    // SAFETY: sched_param is plain integers; all-zero is a valid value.
    let param: libc::sched_param = unsafe { std::mem::zeroed() };
    // SAFETY: syscalls on this thread with valid arguments.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
        tracing::debug!(
            "cannot switch to SCHED_BATCH: {}",
            std::io::Error::last_os_error()
        );
    }
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
        tracing::warn!(
            "cannot set niceness {nice}: {}",
            std::io::Error::last_os_error()
        );
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
    sampler: OriginSampler,
    window_start: (Instant, SystemTime),
    packets_at_start: u64,
    /// The kernel's count of refused edge SYNs when the window started.
    refused_at_start: u64,
    /// Refusals credited from the kernel's count, carried across windows.
    refusals: window::RefusalLedger,
    lost_at_start: u64,
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
    history: metrics::History,
    history_dirty: bool,
    last_verdict: Option<(crate::verdict::Verdict, SystemTime)>,
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
                Record::Listener(_) => {}
            }
        }
        self.correlator.observe_record(&record);
        self.count_decided();
    }

    fn tick(&mut self, capture: &mut Capture) -> Result<Next> {
        self.sink.roll(Instant::now());
        self.metrics
            .set_log_counts(self.sink.suppressed, self.sink.write_errors);
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
            self.metrics.set_evicted(self.correlator.evicted);
            self.watch_interface(capture);
            if std::mem::take(&mut self.history_dirty) {
                self.publish_history();
            }
            self.last_housekeeping = Instant::now();
        }
        if self.window_start.0.elapsed() >= Duration::from_secs_f64(self.args.window) {
            self.close_window(capture);
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
        self.sink.flush();
        Ok(Next::Continue)
    }

    fn finish(&mut self, _: &mut Capture, _: bool) -> Result<()> {
        // Attempts still open end with what is known of them: each gets its line.
        self.correlator.finish();
        self.count_decided();
        self.sink.flush();
        Ok(())
    }
}

impl Agent {
    /// What `GET /history` answers: the journal (an hour at most), the current failure's
    /// beginning with the changes before it, the last window's verdict.
    fn publish_history(&self) {
        let noun = self
            .last_failure
            .and_then(|o| crate::verdict::for_outcome(o).failure_noun())
            .unwrap_or("failures");
        let since = self.failure_clock.began().map(|(began, from_start)| {
            let hints = since::Hints {
                local: self
                    .last_failure
                    .is_some_and(|o| crate::verdict::for_outcome(o).is_local()),
                dated: &self.dated,
            };
            since::since(noun, began, from_start, self.journal.all(), hints)
        });
        let changes: Vec<serde_json::Value> = self
            .journal
            .all()
            .map(|c| serde_json::from_str(&c.to_json()).unwrap_or_default())
            .collect();
        let doc = serde_json::json!({
            "updated_at": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            "interface": self.iface,
            "last_verdict": self.last_verdict.map(|(v, at)| serde_json::json!({
                "verdict": v.as_str(),
                "window_started_at": humantime::format_rfc3339_seconds(at).to_string(),
            })),
            "since": since.as_ref().map(crate::output::report_json::SinceJson::of),
            "changes": changes,
        });
        if let Ok(mut h) = self.history.lock() {
            *h = doc.to_string();
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
        self.journal.push(c);
        self.history_dirty = true;
    }

    /// Outcomes the correlator decided: into the metrics and the window's tally; attempts
    /// that are over, one log line each.
    fn count_decided(&mut self) {
        let log_attempts = self.args.log_events != LogEvents::None;
        for d in self.correlator.drain_decided() {
            let (attempt, after_handshake) = match d {
                Decided::Attempt(a) => {
                    let outcome = a.decided.unwrap_or(a.outcome());
                    self.metrics.connection(a.edge, a.flow.local_port, outcome);
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

    /// The interface gone (deleted veth, NIC removed) is said once; when an interface of that
    /// name comes back the arrival hook is attached to it again, so the agent never runs
    /// blind reporting `never_arriving`.
    fn watch_interface(&mut self, capture: &mut Capture) {
        let iface = self.iface.clone();
        let now = humantime::format_rfc3339_seconds(SystemTime::now());
        match capture.probe.check_interface() {
            Ok(InterfaceChange::Same) => {}
            Ok(InterfaceChange::Gone) => {
                tracing::warn!("interface {iface} disappeared: nothing arrives through it; the agent attaches again when an interface of that name comes back");
                self.window_notes.push(format!(
                    "interface {iface} disappeared at {now}: edge SYNs after that were not seen"
                ));
            }
            Ok(InterfaceChange::Back) => {
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

    fn apply_refresh(&mut self, capture: &mut Capture, result: Refreshed) {
        self.next_refresh = self.args.refresh_ranges_every.map(|d| Instant::now() + d);
        match result {
            Ok((set, note)) => {
                if let Some(n) = note {
                    tracing::warn!("{n}");
                }
                match capture.probe.set_ranges(&set) {
                    Ok(()) => {
                        tracing::info!(source = %set.source, ipv4 = set.v4.len(), ipv6 = set.v6.len(), "ranges updated in place");
                        if set.etag != self.ranges.etag
                            || set.v4 != self.ranges.v4
                            || set.v6 != self.ranges.v6
                        {
                            let tag =
                                |s: &RangeSet| s.etag.clone().unwrap_or_else(|| "none".into());
                            self.record_change(Change::new(
                                What::Ranges,
                                format!(
                                    "ranges refreshed from {}: etag {} → {} ({} → {} ranges)",
                                    set.source,
                                    tag(&self.ranges),
                                    tag(&set),
                                    self.ranges.v4.len() + self.ranges.v6.len(),
                                    set.v4.len() + set.v6.len()
                                ),
                            ));
                        }
                        self.metrics.set_ranges(&set);
                        self.ranges = set;
                        self.refresh_error = None;
                    }
                    Err(e) => self.refresh_failed(format!(
                        "cannot update the kernel's ranges, keeping the current list: {e:#}"
                    )),
                }
            }
            Err(e) => self.refresh_failed(format!(
                "ranges refresh failed, keeping the current list: {e:#}"
            )),
        }
    }

    /// A failed refresh is warned about when its reason is new, not at every retry.
    fn refresh_failed(&mut self, why: String) {
        if self.refresh_error.as_deref() != Some(why.as_str()) {
            tracing::warn!("{why} (said again only if the reason changes)");
            self.window_notes.push(why.clone());
            self.refresh_error = Some(why);
        }
    }

    fn close_window(&mut self, capture: &Capture) {
        let notes: Vec<String> = self
            .notes
            .iter()
            .chain(&self.window_notes)
            .cloned()
            .collect();
        // Attempts whose answer may be among lost events are counted in this window, beside
        // the kernel's own count of refusals for it.
        self.correlator.take_lost();
        self.count_decided();
        let lost_total = capture.lost_total();
        let now_packets = netinfo::rx_packets(&self.iface);
        let refused_now = capture.edge_syns_refused();
        let ctx = WindowContext {
            interface: &self.iface,
            netns: self.netns,
            reasons: &self.reasons,
            follows_forwarded: self.follows_forwarded,
            ports: &self.ports,
            window_secs: self.args.window,
            started_at: self.window_start.1,
            ranges: &self.ranges,
            notes: &notes,
            xdp_mode: self.arrival_hook.xdp_mode(),
            arrival_hook: self.arrival_hook.as_str(),
            lost_events: lost_total - self.lost_at_start,
            packets_seen: now_packets.saturating_sub(self.packets_at_start),
            kernel_refused: refused_now.saturating_sub(self.refused_at_start),
            tls_checked: self.tls.is_some(),
        };
        let mut report = window::report(&self.tally, &mut self.sampler, &ctx, &mut self.refusals);
        self.window_notes.clear();
        if let (Some(noun), Some((began, from_start))) =
            (report.verdict.failure_noun(), self.failure_clock.began())
        {
            if from_start && self.dated.is_empty() {
                self.dated = crate::journal::dated::gather(&report.listeners);
            }
            let hints = since::Hints {
                local: report.verdict.is_local(),
                dated: &self.dated,
            };
            report.since = Some(since::since(
                noun,
                began,
                from_start,
                self.journal.all(),
                hints,
            ));
        }
        if let Some(tls) = &self.tls {
            report.add_tls_checks(self.tls_results.clone());
            // The next check, in the background: each handshake may take seconds.
            if !self.tls_running {
                self.tls_running = true;
                let (tls, tx) = (tls.clone(), self.tls_tx.clone());
                let (report_ports, listeners) = (report.ports.clone(), report.listeners.clone());
                let (iface, explicit) = (self.iface.clone(), !self.args.capture.ports.is_empty());
                tokio::task::spawn_blocking(move || {
                    let view = crate::tls::TlsTargets {
                        ports: &report_ports,
                        listeners: &listeners,
                    };
                    let checks = crate::tls::check_targets(&tls, &view, &iface, explicit);
                    let _ = tx.blocking_send(checks);
                });
            }
        }
        self.metrics.set_verdict(report.verdict);
        self.last_verdict = Some((report.verdict, self.window_start.1));
        self.history_dirty = true;
        tracing::info!(
            verdict = report.verdict.as_str(),
            alert = metrics::alert_for(report.verdict).unwrap_or("none"),
            "window closed"
        );
        self.sink
            .line(&crate::output::verdict_record::verdict_record(
                &report,
                &self.ranges,
            ));
        self.tally = Tally::default();
        self.window_start = (Instant::now(), SystemTime::now());
        self.packets_at_start = now_packets;
        self.lost_at_start = lost_total;
        self.refused_at_start = refused_now;
    }
}

pub async fn run(args: AgentArgs) -> Result<()> {
    super::check_seconds("--window", args.window)?;
    let tls = TlsSettings::from_args(&args.tls.hostnames, args.tls.tls_ca.as_deref())?;
    if let Some(every) = args.refresh_ranges_every {
        // Re-reading a local file is cheap; the API is asked at most once a minute.
        if args.ranges.file.is_none() && every < Duration::from_secs(60) {
            anyhow::bail!(
                "--refresh-ranges-every {}: at least 1m when refreshing from the API (the list changes a few times a year); a --ranges FILE may be re-read more often",
                humantime::format_duration(every)
            );
        }
        if args.ranges.file.is_none() {
            crate::ranges::fetch::check_env()?;
        }
    }
    yield_to_workload(args.nice);
    let (ranges, note) = fetch::resolve(args.ranges.file.as_deref(), false).await?;
    if let Some(n) = &note {
        tracing::warn!("{n}");
    }
    let ports = args.capture.ports();
    let metrics = Arc::new(Metrics::new(&ports)?);
    metrics.set_ranges(&ranges);
    let history: metrics::History = Default::default();
    metrics::serve(args.metrics_addr, metrics.clone(), history.clone()).await?;
    let sink = EventLog::open(
        args.log_file.as_deref(),
        Some(args.log_max_mb.saturating_mul(1024 * 1024)),
    )?;
    let super::Started { probe, iface, .. } = super::start_probe(
        &args.capture,
        &ranges,
        super::Wanted {
            all_peers: true,
            attempt_drops_only: true,
            // Connections are settled at their handshake; closes are only logged.
            closes: args.log_events == LogEvents::All,
        },
        crate::kernel::AGENT_RING_BYTES,
    )?;
    for n in &probe.notes {
        tracing::warn!("{n}");
    }
    let mut correlator = Correlator::live().reporting_ended();
    if probe.follows_forwarded {
        correlator = correlator.following_forwarded(probe.netns);
    }
    let (notes, netns) = (probe.notes.clone(), probe.netns);
    let follows_forwarded = probe.follows_forwarded;
    let arrival_hook = probe.arrival_hook;
    metrics.set_arrival_hook(arrival_hook.as_str());
    let reasons = probe.reasons.clone();
    let mut capture = Capture::new(probe)?;
    // A few drains per second, not one per event: the ring holds well over this interval.
    capture.set_min_interval(Duration::from_millis(100));
    let hup = Arc::new(AtomicBool::new(false));
    let mut hup_signal = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let hup_flag = hup.clone();
    tokio::spawn(async move {
        while hup_signal.recv().await.is_some() {
            hup_flag.store(true, Ordering::Relaxed);
        }
    });
    // Watching for changes from before the tracer says it is ready.
    let watcher = Watcher::start(&iface, &ports, &ranges, netns);
    let signals = crate::capture::Shutdown::listen();
    write_ready_file(args.capture.ready_file.as_deref())?;
    tracing::info!(interface = %iface, metrics = %args.metrics_addr, "agent running");

    let (refresh_tx, refresh_rx) = mpsc::channel::<Refreshed>(1);
    let (tls_tx, tls_rx) = mpsc::channel::<Vec<TlsCheck>>(1);
    let mut agent = Agent {
        next_refresh: first_refresh(
            args.refresh_ranges_every,
            args.ranges.file.is_some(),
            ranges.age_secs(),
        ),
        packets_at_start: netinfo::rx_packets(&iface),
        refused_at_start: 0,
        refusals: window::RefusalLedger::default(),
        args,
        iface,
        ports,
        netns,
        follows_forwarded,
        reasons,
        notes,
        arrival_hook,
        ranges,
        metrics,
        sink,
        correlator,
        tally: Tally::default(),
        sampler: OriginSampler::start(),
        window_start: (Instant::now(), SystemTime::now()),
        lost_at_start: 0,
        last_housekeeping: Instant::now(),
        refresh_tx,
        refresh_rx,
        hup,
        window_notes: Vec::new(),
        reattach_failed: false,
        refresh_error: None,
        tls,
        tls_results: Vec::new(),
        tls_tx,
        tls_rx,
        tls_running: false,
        watcher,
        journal: Journal::default(),
        failure_clock: FailureClock::default(),
        dated: Vec::new(),
        last_failure: None,
        history,
        history_dirty: true,
        last_verdict: None,
    };
    session::run(&mut capture, &mut agent, signals).await?;
    tracing::info!("stopping: detaching programs");
    drop(capture);
    Ok(())
}

/// When the first refresh is due: at once when the list from the API's cache (or the embedded
/// one) is already older than the interval — a fresh install must not wait 6 h on a list
/// recorded weeks ago — otherwise one interval from now. A `--ranges FILE` was just read.
fn first_refresh(
    every: Option<Duration>,
    from_file: bool,
    age_secs: Option<u64>,
) -> Option<Instant> {
    let every = every?;
    let stale = age_secs.is_none_or(|age| age >= every.as_secs());
    Some(if stale && !from_file {
        Instant::now()
    } else {
        Instant::now() + every
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_older_than_the_interval_is_refreshed_at_start() {
        let six_hours = Some(Duration::from_secs(6 * 3600));
        let soon = |at: Option<Instant>| at.is_some_and(|t| t <= Instant::now());
        // The embedded list, recorded 60 days ago.
        assert!(soon(first_refresh(six_hours, false, Some(60 * 86400))));
        // A cache of unknown age.
        assert!(soon(first_refresh(six_hours, false, None)));
        // A cache fetched an hour ago waits for the interval.
        assert!(!soon(first_refresh(six_hours, false, Some(3600))));
        // A file just read, and no refresh at all.
        assert!(!soon(first_refresh(six_hours, true, Some(60 * 86400))));
        assert_eq!(first_refresh(None, false, Some(60 * 86400)), None);
    }
}

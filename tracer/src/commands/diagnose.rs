//! `tracer diagnose`: one window, one verdict.

use std::{
    io::{IsTerminal as _, Write as _},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Result;

use crate::{
    capture::session::{self, Next, Sink},
    capture::{write_ready_file, Capture},
    cli::{DiagnoseArgs, Format},
    correlate::Correlator,
    kernel::InterfaceChange,
    model::event::Record,
    ranges::fetch,
    tls::TlsSettings,
    verdict::window::{self, OriginSampler, Tally},
};

/// After the window, how long open attempts may still get their answer (a SYN-ACK's ACK).
const GRACE: Duration = Duration::from_secs(1);

/// One window: attempts correlated and tallied, the origin sampled, then a grace period in
/// which attempts begun in the window may still get their answer.
struct Window {
    correlator: Correlator,
    tally: Tally,
    sampler: OriginSampler,
    start: Instant,
    length: Duration,
    /// Set when the window is over and the grace period began.
    grace_end: Option<Instant>,
    last_sample: Instant,
    /// The progress line on a terminal, when shown.
    progress: Option<Progress>,
    /// How long the window really ran (shorter when interrupted).
    elapsed: Option<Duration>,
    /// What happened to the interface during the window, for the report.
    notes: Vec<String>,
    iface: String,
    /// The change journal's watcher: the kernel's listener events go to it.
    watcher: Option<crate::journal::watch::Watcher>,
    /// Requests, responses and closes on edge connections.
    exchanges: crate::correlate::exchanges::Exchanges,
    /// The Cloudflare Tunnel's processes and their dials.
    tunnel: crate::correlate::tunnel::TunnelWatch,
}

/// The progress line's pace: redrawn at most 4 times a second, however often the capture
/// ticks.
#[derive(Default)]
struct Progress {
    drawn: Option<Instant>,
}

impl Progress {
    const EVERY: Duration = Duration::from_millis(250);

    fn due(&mut self, now: Instant) -> bool {
        if self
            .drawn
            .is_some_and(|t| now.saturating_duration_since(t) < Self::EVERY)
        {
            return false;
        }
        self.drawn = Some(now);
        true
    }
}

impl Window {
    /// The interface going away (or coming back, re-attached) during the window is said in
    /// the report: edge SYNs in between were not seen.
    fn watch_interface(&mut self, capture: &mut Capture) {
        let now = humantime::format_rfc3339_seconds(SystemTime::now());
        let iface = &self.iface;
        match capture.probe.check_interface() {
            Ok(InterfaceChange::Same) => {}
            Ok(InterfaceChange::Gone) => self.notes.push(format!(
                "interface {iface} disappeared at {now}: edge SYNs after that were not seen"
            )),
            Ok(InterfaceChange::Back) => self.notes.push(format!(
                "interface {iface} came back at {now}: arrival hook attached again"
            )),
            Err(e) => {
                let note = format!(
                    "interface {iface} came back but the arrival hook could not attach: {e:#}"
                );
                if !self.notes.contains(&note) {
                    self.notes.push(note);
                }
                capture.probe.mark_interface_gone();
            }
        }
    }
}

impl Sink for Window {
    fn record(&mut self, record: Record) {
        if let Record::Listener(l) = record {
            if let Some(w) = &self.watcher {
                w.listener(l);
            }
            return;
        }
        if let Record::Exchange(x) = &record {
            self.exchanges.observe(x);
            return;
        }
        if let Record::Dial(d) = &record {
            self.tunnel.observe(d);
            return;
        }
        if let Some(done) = self.correlator.observe_record(&record) {
            self.tally.add(&done);
        }
    }

    fn tick(&mut self, capture: &mut Capture) -> Result<Next> {
        if let Some(end) = self.grace_end {
            // Requests begun in the window get their answer too, within the grace.
            let done = (self.correlator.pending() == 0 && capture.waiting_requests().is_empty())
                || Instant::now() >= end;
            return Ok(if done { Next::Stop } else { Next::Continue });
        }
        if self.last_sample.elapsed() >= Duration::from_secs(1) {
            self.sampler.sample();
            self.last_sample = Instant::now();
            self.watch_interface(capture);
            if let Some(pids) = self.tunnel.refresh() {
                follow_tunnel(capture, &pids, &mut self.notes);
            }
        }
        if let Some(p) = &mut self.progress {
            if p.due(Instant::now()) {
                // Rounded up: a 30 s window starts at "30 s left".
                let left = self
                    .length
                    .saturating_sub(self.start.elapsed())
                    .as_millis()
                    .div_ceil(1000);
                // Attempts, as the report counts them: ended ones and those still open.
                let (open, open_failed) = self.correlator.edge_attempts_open();
                let e = &self.tally.edge;
                let attempts = e.syn + open;
                let failed = e.refused
                    + e.firewall_drops
                    + e.overload_drops
                    + e.origin_resets
                    + e.other_drops
                    + open_failed;
                eprint!(
                    "\r\x1b[2K{left:>4} s left · edge attempts {attempts} · failed so far {failed}"
                );
                let _ = std::io::stderr().flush();
            }
        }
        if self.start.elapsed() >= self.length {
            // Let attempts begun in the window get their answer; start no new ones.
            self.elapsed = Some(self.start.elapsed());
            self.correlator.closed_to_new = true;
            self.grace_end = Some(Instant::now() + GRACE);
        }
        Ok(Next::Continue)
    }

    fn tick_every(&self) -> Duration {
        if self.grace_end.is_some() {
            return Duration::from_millis(50);
        }
        (self.length.saturating_sub(self.start.elapsed())).min(Duration::from_millis(250))
    }

    fn finish(&mut self, _: &mut Capture, interrupted: bool) -> Result<()> {
        if interrupted && self.elapsed.is_none() {
            self.elapsed = Some(self.start.elapsed());
        }
        for done in self.correlator.finish() {
            self.tally.add(&done);
        }
        if self.progress.is_some() {
            eprint!("\r\x1b[2K");
        }
        Ok(())
    }
}

/// Hands the tunnel's processes to the kernel; a failure is said once in the report.
fn follow_tunnel(capture: &mut Capture, pids: &[u32], notes: &mut Vec<String>) {
    if let Err(e) = capture.probe.set_dialers(pids) {
        let note = format!("the tunnel's connections cannot be followed: {e:#}");
        if !notes.contains(&note) {
            notes.push(note);
        }
    }
}

/// Runs a diagnosis; with `--exit-code`, the exit status says the verdict
/// ([`crate::verdict::Verdict::exit_code`]).
pub async fn run(args: DiagnoseArgs) -> Result<u8> {
    if let Some(span) = args.since {
        super::history::run(&args, span).await?;
        return Ok(0);
    }
    super::check_seconds("--duration", args.duration)?;
    let tls = TlsSettings::from_args(&args.tls.hostnames, args.tls.tls_ca.as_deref())?;
    // Notes (a ranges fallback, a hook this kernel lacks) are said once, in the report.
    let (ranges, note) = fetch::resolve(args.ranges.file.as_deref(), args.refresh_ranges).await?;
    // Non-edge peers too: they tell a dead interface from a blocked edge.
    let super::Started {
        probe,
        iface,
        ports,
    } = super::start_probe(
        &args.capture,
        &ranges,
        super::Wanted {
            all_peers: true,
            attempt_drops_only: true,
            closes: true,
        },
        crate::kernel::DEFAULT_RING_BYTES,
    )?;
    let mut notes = probe.notes.clone();
    notes.extend(note);
    let (xdp_mode, netns, reasons) = (
        probe.arrival_hook.xdp_mode(),
        probe.netns,
        probe.reasons.clone(),
    );
    let (follows_forwarded, sees_listeners) = (probe.follows_forwarded, probe.sees_listeners);
    let arrival_hook = probe.arrival_hook.as_str();
    let mut correlator = Correlator::new();
    if probe.follows_forwarded {
        correlator = correlator.following_forwarded(netns);
    }
    let mut capture = Capture::new(probe)?;
    capture.set_read_timeout(args.timeouts.edge_read_timeout);
    capture.set_timing_sample_above(args.timeouts.timing_sample_above);
    // What changes on the host during the window, for when a failure began.
    let watcher =
        crate::journal::watch::Watcher::start(&iface, &ports, &ranges, netns, sees_listeners);
    let at_start = capture.running_counts(&iface);
    let sampler = OriginSampler::start();
    let signals = crate::capture::Shutdown::listen();
    write_ready_file(args.capture.ready_file.as_deref())?;

    let started_at = SystemTime::now();
    let mut w = Window {
        correlator,
        tally: Tally::default(),
        sampler,
        start: Instant::now(),
        length: Duration::from_secs_f64(args.duration),
        grace_end: None,
        last_sample: Instant::now(),
        progress: (args.format == Format::Text
            && !crate::environment::get().no_color
            && std::io::stdout().is_terminal()
            && std::io::stderr().is_terminal())
        .then(Progress::default),
        elapsed: None,
        notes: Vec::new(),
        iface: iface.clone(),
        watcher: Some(watcher),
        exchanges: crate::correlate::exchanges::Exchanges::new(
            args.timeouts.edge_read_timeout,
            args.timeouts.edge_idle_timeout,
        ),
        tunnel: crate::correlate::tunnel::TunnelWatch::new(&args.tunnel.tunnel_process),
    };
    let pids = w.tunnel.pids();
    if !pids.is_empty() {
        follow_tunnel(&mut capture, &pids, &mut w.notes);
    }
    session::run(&mut capture, &mut w, signals).await?;

    let interrupted = w.elapsed.is_some_and(|e| e < w.length);
    notes.append(&mut w.notes);
    let window_secs = match w.elapsed {
        Some(e) if interrupted => e.as_secs_f64(),
        _ => args.duration,
    };
    let ctx = window::WindowContext {
        interface: iface.clone(),
        netns,
        reasons: reasons.clone(),
        follows_forwarded,
        ports: ports.clone(),
        window_secs,
        started_at,
        ranges: ranges.clone(),
        notes: notes.clone(),
        xdp_mode,
        arrival_hook,
        counted: at_start.until(&capture.running_counts(&iface)),
        tls_checked: tls.is_some(),
        tunnel: w.tunnel.close_window(&ranges, netns),
        misrouted: None,
    };
    // The window is over: its report is assembled here (the agent does it on another thread).
    w.tally.exchanges = w
        .exchanges
        .take_window(SystemTime::now(), &capture.waiting_requests());
    w.tally.exchanges.followed_one_in = capture.take_exchange_sample();
    let closed = window::close(
        w.tally.clone(),
        &mut w.sampler,
        ctx,
        &mut window::RefusalLedger::default(),
    );
    let mut report = window::assemble(closed);
    let watcher = w.watcher.take();
    let changes = watcher.as_ref().map(|w| w.drain()).unwrap_or_default();
    drop(watcher);
    let dated = crate::journal::dated::gather(&report.listeners);
    report.since =
        crate::journal::since::of_window(report.verdict, &w.tally.timeline, changes.iter(), &dated);
    if let Some(tls) = &tls {
        // After the window: the checks' own connections are not counted in it.
        let view = crate::tls::TlsTargets {
            ports: &report.ports,
            listeners: &report.listeners,
        };
        let named = !args.capture.ports.is_empty();
        let checks = crate::tls::check_targets(tls, &view, &iface, named);
        report.add_tls_checks(checks, named);
    }
    let mut out = std::io::stdout().lock();
    match args.format {
        Format::Json => writeln!(out, "{}", report.to_json())?,
        Format::Text => write!(out, "{}", report.to_text())?,
    }
    out.flush()?;
    Ok(if args.exit_code {
        report.verdict.exit_code()
    } else {
        0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_line_redraws_at_most_four_times_a_second() {
        let mut p = Progress::default();
        let t0 = Instant::now();
        // Ticks every 10 ms for two seconds.
        let drawn = (0..200)
            .filter(|i| p.due(t0 + Duration::from_millis(10 * i)))
            .count();
        assert_eq!(drawn, 8);
    }
}

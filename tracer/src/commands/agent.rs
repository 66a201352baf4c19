//! `tracer agent`: the continuous service. Events and per-window verdicts as JSON lines,
//! Prometheus metrics, ranges refreshed in place.

use std::{
    fs::{File, OpenOptions},
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result};
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    capture::{write_ready_file, Capture},
    cli::{AgentArgs, LogEvents},
    correlate::{Correlator, Decided},
    events::Kind,
    export::{self, Metrics},
    netinfo,
    ranges::{fetch, RangeSet},
    window::{self, OriginSampler, Tally, WindowContext},
};

/// Settled attempts (closed, refused) leave after this idle time...
const SETTLED_AFTER: Duration = Duration::from_secs(2);
/// ...others after this: a dropped SYN is retransmitted for about 20 s and must count once.
const IDLE_AFTER: Duration = Duration::from_secs(25);

/// The JSON-lines log: stdout, or a file reopened on SIGHUP (logrotate).
enum Sink {
    Stdout(BufWriter<std::io::Stdout>),
    File { path: PathBuf, out: BufWriter<File> },
}

impl Sink {
    fn open(path: Option<&Path>) -> Result<Self> {
        Ok(match path {
            None => Sink::Stdout(BufWriter::new(std::io::stdout())),
            Some(p) => Sink::File {
                path: p.to_path_buf(),
                out: BufWriter::new(open_log(p)?),
            },
        })
    }

    fn reopen(&mut self) -> Result<()> {
        if let Sink::File { path, out } = self {
            out.flush()?;
            *out = BufWriter::new(open_log(path)?);
        }
        Ok(())
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Sink::Stdout(w) => w,
            Sink::File { out, .. } => out,
        }
    }

    fn line(&mut self, text: &str) {
        let w = self.writer();
        if let Err(e) = writeln!(w, "{text}") {
            tracing::warn!("log write failed: {e}");
        }
    }

    fn flush(&mut self) {
        let _ = self.writer().flush();
    }
}

fn open_log(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .with_context(|| format!("cannot open log file {}", path.display()))
}

fn wanted(kind: Kind, level: LogEvents) -> bool {
    match level {
        LogEvents::All => true,
        LogEvents::None => false,
        LogEvents::Failures => !matches!(kind, Kind::Syn | Kind::Established | Kind::Closed),
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
    let param = libc::sched_param { sched_priority: 0 };
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

pub async fn run(args: AgentArgs) -> Result<()> {
    super::check_duration(args.window).context("--window")?;
    yield_to_workload(args.nice);
    let (mut ranges, note) = fetch::resolve(args.ranges.as_deref(), false).await?;
    if let Some(n) = &note {
        tracing::warn!("{n}");
    }
    let ports = args.capture.ports();
    let metrics = Arc::new(Metrics::new(&ports)?);
    metrics.set_ranges(&ranges);
    export::serve(args.metrics_addr, metrics.clone()).await?;
    let mut sink = Sink::open(args.log_file.as_deref())?;
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
    let notes = probe.notes.clone();
    let xdp_mode = probe.xdp_mode;
    let mut capture = Capture::new(probe)?;
    // A few drains per second, not one per event: the ring holds well over this interval.
    capture.set_min_interval(Duration::from_millis(100));
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    write_ready_file(args.capture.ready_file.as_deref())?;
    tracing::info!(interface = %iface, metrics = %args.metrics_addr, "agent running");

    let window_len = Duration::from_secs_f64(args.window);
    let mut window_start = (Instant::now(), SystemTime::now());
    let mut packets_at_start = netinfo::rx_packets(&iface);
    let mut lost_at_start = 0u64;
    let mut sampler = OriginSampler::start();
    let mut tally = Tally::default();
    let mut correlator = Correlator::live();
    let mut last_housekeeping = Instant::now();
    let mut next_refresh = args.refresh_ranges_every.map(|d| Instant::now() + d);
    let (refresh_tx, mut refresh_rx) = tokio::sync::mpsc::channel::<Refreshed>(1);

    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                match sink.reopen() {
                    Ok(()) => tracing::info!("log file reopened"),
                    Err(e) => tracing::warn!("cannot reopen the log file: {e:#}"),
                }
            }
            Some(result) = refresh_rx.recv() => match result {
                Ok((set, note)) => {
                    if let Some(n) = note {
                        tracing::warn!("{n}");
                    }
                    match capture.probe.set_ranges(&set) {
                        Ok(()) => {
                            tracing::info!(source = %set.source, ipv4 = set.v4.len(), ipv6 = set.v6.len(), "ranges updated in place");
                            metrics.set_ranges(&set);
                            ranges = set;
                        }
                        Err(e) => tracing::warn!("cannot update the kernel's ranges: {e:#}"),
                    }
                }
                Err(e) => tracing::warn!("ranges refresh failed, keeping the current list: {e:#}"),
            },
            r = capture.wait(Duration::from_millis(250)) => r?,
        }

        // One event at a time, straight from the kernel's buffers: this runs for every one.
        capture.drain_each(false, |ev| {
            match ev.kind {
                Kind::Syn if ev.edge == Some(true) => {
                    if let Some(p) = ev.local_port {
                        metrics.edge_syn(p);
                    }
                }
                Kind::Loss => metrics.lost(ev.count.unwrap_or(0)),
                _ => {}
            }
            if wanted(ev.kind, args.log_events) {
                sink.line(&ev.to_json());
            }
            correlator.observe(&ev);
            for d in correlator.drain_decided() {
                count_decided(&metrics, &mut tally, d);
            }
        });

        if last_housekeeping.elapsed() >= Duration::from_secs(1) {
            correlator.take_idle(SystemTime::now(), SETTLED_AFTER, IDLE_AFTER);
            for d in correlator.drain_decided() {
                count_decided(&metrics, &mut tally, d);
            }
            sampler.sample();
            metrics.set_open_attempts(correlator.open_attempts());
            last_housekeeping = Instant::now();
        }

        if window_start.0.elapsed() >= window_len {
            let lost_total = capture.lost_total();
            let now_packets = netinfo::rx_packets(&iface);
            let ctx = WindowContext {
                interface: &iface,
                ports: &ports,
                window_secs: args.window,
                started_at: window_start.1,
                ranges: &ranges,
                notes: &notes,
                xdp_mode,
                lost_events: lost_total - lost_at_start,
                packets_seen: now_packets.saturating_sub(packets_at_start),
            };
            let report = window::report(&tally, &mut sampler, &ctx);
            metrics.set_verdict(&report.verdict);
            sink.line(&verdict_record(&report));
            tally = Tally::default();
            window_start = (Instant::now(), SystemTime::now());
            packets_at_start = now_packets;
            lost_at_start = lost_total;
        }
        if let Some(at) = next_refresh {
            if Instant::now() >= at {
                next_refresh = args.refresh_ranges_every.map(|d| Instant::now() + d);
                let tx = refresh_tx.clone();
                let file = args.ranges.clone();
                tokio::spawn(async move {
                    let _ = tx.send(refresh(file).await).await;
                });
            }
        }
        sink.flush();
    }
    sink.flush();
    tracing::info!("stopping: detaching programs");
    drop(capture);
    Ok(())
}

/// An attempt's outcome into the metrics and the window's tally.
fn count_decided(metrics: &Metrics, tally: &mut Tally, d: Decided) {
    match d {
        Decided::Attempt(a) => {
            metrics.connection(a.edge, a.flow.local_port, a.decided.unwrap_or(a.outcome()));
            tally.add(&a);
        }
        Decided::LateReset(a) => {
            metrics.connection(
                a.edge,
                a.flow.local_port,
                crate::correlate::Outcome::OriginReset,
            );
            tally.add_late_reset(&a);
        }
    }
}

/// `{"ts":..,"kind":"verdict", <the diagnose JSON fields>}`
fn verdict_record(report: &crate::report::Report) -> String {
    let mut v = serde_json::to_value(report).unwrap_or_default();
    if let Some(obj) = v.as_object_mut() {
        obj.insert(
            "ts".into(),
            humantime::format_rfc3339_micros(SystemTime::now())
                .to_string()
                .into(),
        );
        obj.insert("kind".into(), "verdict".into());
    }
    v.to_string()
}

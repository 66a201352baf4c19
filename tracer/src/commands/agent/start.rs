//! Starting the agent: settings checked, the probe loaded, the endpoint served, the agent
//! built and run until a signal.

use std::{
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

use super::{ranges::first_refresh, Agent, Refreshed};
use crate::{
    capture::session::{self},
    capture::{write_ready_file, Capture},
    cli::{AgentArgs, LogEvents},
    correlate::Correlator,
    journal::{since::FailureClock, watch::Watcher, Journal},
    output::event_log::EventLog,
    output::metrics::Metrics,
    ranges::fetch,
    tls::{TlsCheck, TlsSettings},
    verdict::window::{self, OriginSampler, Tally},
};

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

pub async fn run(args: AgentArgs) -> Result<()> {
    let timeouts = args.timeouts;
    let tunnel_process = args.tunnel.tunnel_process.clone();
    crate::commands::check_seconds("--window", args.window)?;
    let tls = TlsSettings::from_args(&args.tls.hostnames, args.tls.tls_ca.as_deref())?;
    let web = Arc::new(match &args.web_config_file {
        Some(path) => crate::output::web_config::WebConfig::load(path)
            .map_err(|e| anyhow::anyhow!("--web.config.file {e:#}"))?,
        None => crate::output::web_config::WebConfig::open(),
    });
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
    let history: crate::output::http::History = Default::default();
    let health = Arc::new(crate::output::http::Health::default());
    crate::output::http::serve(
        args.metrics_addr,
        crate::output::http::Endpoint {
            metrics: metrics.clone(),
            history: history.clone(),
            health: health.clone(),
            web,
            history_beyond_loopback: args.web_enable_history,
        },
    )?;
    let sink = EventLog::open(
        args.log_file.as_deref(),
        Some(args.log_max_mb.saturating_mul(1024 * 1024)),
    )?;
    let crate::commands::Started { probe, iface, .. } = crate::commands::start_probe(
        &args.capture,
        &ranges,
        crate::commands::Wanted {
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
    let sees_listeners = probe.sees_listeners;
    let follows_forwarded = probe.follows_forwarded;
    let arrival_hook = probe.arrival_hook;
    metrics.set_arrival_hook(arrival_hook.as_str());
    let reasons = probe.reasons.clone();
    let mut capture = Capture::new(probe)?;
    capture.set_read_timeout(timeouts.edge_read_timeout);
    capture.set_timing_sample_above(timeouts.timing_sample_above);
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
    let watcher = Watcher::start(&iface, &ports, &ranges, netns, sees_listeners);
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
        counts_at_start: capture.running_counts(&iface),
        refusals: window::RefusalLedger::default(),
        assembler: super::window_close::Assembler::start(),
        kernel_account: Default::default(),
        unknown_edge: Vec::new(),
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
        exchanges: crate::correlate::exchanges::Exchanges::new(
            timeouts.edge_read_timeout,
            timeouts.edge_idle_timeout,
        ),
        sampler: OriginSampler::start(),
        window_start: (Instant::now(), SystemTime::now()),
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
        route_audit: super::route_audit::RouteAudit::new(),
        misrouted: Vec::new(),
        tunnel: crate::correlate::tunnel::TunnelWatch::new(&tunnel_process),
        last_tunnel_look: Instant::now(),
        last_failure: None,
        history,
        health,
        history_dirty: true,
        last_verdict: None,
    };
    let pids = agent.tunnel.pids();
    if !pids.is_empty() {
        agent.follow_tunnel(&mut capture, &pids);
    }
    session::run(&mut capture, &mut agent, signals).await?;
    tracing::info!("stopping: detaching programs");
    drop(capture);
    Ok(())
}

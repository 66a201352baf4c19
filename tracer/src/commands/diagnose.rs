//! `tracer diagnose`: one window, one verdict.

use std::{
    io::{IsTerminal as _, Write as _},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Result;

use crate::{
    capture::{shutdown_signal, write_ready_file, Capture},
    cli::{DiagnoseArgs, Format},
    correlate::Correlator,
    events::Kind,
    netinfo,
    ranges::fetch,
    window::{self, OriginSampler, Tally, WindowContext},
};

/// After the window, how long open attempts may still get their answer (a SYN-ACK's ACK).
const GRACE: Duration = Duration::from_secs(1);

pub async fn run(args: DiagnoseArgs) -> Result<()> {
    super::check_duration(args.duration)?;
    let (ranges, note) = fetch::resolve(args.ranges.as_deref(), args.refresh_ranges).await?;
    if let Some(n) = &note {
        eprintln!("note: {n}");
    }
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
    super::print_notes(&probe);
    let mut notes = probe.notes.clone();
    notes.extend(note);
    let xdp_mode = probe.xdp_mode;
    let mut capture = Capture::new(probe)?;
    let packets_at_start = netinfo::rx_packets(&iface);
    let mut sampler = OriginSampler::start();
    write_ready_file(args.capture.ready_file.as_deref())?;

    let progress = args.format == Format::Text
        && std::env::var_os("NO_COLOR").is_none()
        && std::io::stdout().is_terminal()
        && std::io::stderr().is_terminal();
    let started_at = SystemTime::now();
    let start = Instant::now();
    let window = Duration::from_secs_f64(args.duration);
    let mut correlator = Correlator::new();
    let mut tally = Tally::default();
    let mut batch = Vec::new();
    let mut live = (0u64, 0u64); // (edge SYNs, edge failures) for the progress line
    let mut last_sample = Instant::now();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut interrupted = false;

    while start.elapsed() < window {
        let tick = (window - start.elapsed()).min(Duration::from_millis(250));
        tokio::select! {
            _ = &mut shutdown => { interrupted = true; break; }
            r = capture.next_batch(&mut batch, tick) => r?,
        }
        for ev in batch.drain(..) {
            if ev.edge == Some(true) {
                match ev.kind {
                    Kind::Syn => live.0 += 1,
                    Kind::Drop | Kind::ResetSent => live.1 += 1,
                    _ => {}
                }
            }
            if let Some(done) = correlator.observe(&ev) {
                tally.add(&done);
            }
        }
        if last_sample.elapsed() >= Duration::from_secs(1) {
            sampler.sample();
            last_sample = Instant::now();
        }
        if progress {
            // Rounded up: a 30 s window starts at "30 s left".
            let left = window
                .saturating_sub(start.elapsed())
                .as_millis()
                .div_ceil(1000);
            eprint!(
                "\r\x1b[2K{left:>4} s left · edge SYNs {} · failure events {}",
                live.0, live.1
            );
            let _ = std::io::stderr().flush();
        }
    }
    let elapsed = start.elapsed();

    // Let attempts begun in the window get their answer; start no new ones.
    correlator.closed_to_new = true;
    let grace_end = Instant::now() + GRACE;
    while !interrupted && correlator.pending() > 0 && Instant::now() < grace_end {
        capture
            .next_batch(&mut batch, Duration::from_millis(50))
            .await?;
        for ev in batch.drain(..) {
            if let Some(done) = correlator.observe(&ev) {
                tally.add(&done);
            }
        }
    }
    capture.drain_all(&mut batch);
    for ev in batch.drain(..) {
        if let Some(done) = correlator.observe(&ev) {
            tally.add(&done);
        }
    }
    for done in correlator.finish() {
        tally.add(&done);
    }
    if progress {
        eprint!("\r\x1b[2K");
    }

    let window_secs = if interrupted {
        elapsed.as_secs_f64()
    } else {
        args.duration
    };
    let ctx = WindowContext {
        interface: &iface,
        ports: &ports,
        window_secs,
        started_at,
        ranges: &ranges,
        notes: &notes,
        xdp_mode,
        lost_events: correlator.lost_events.max(capture.lost_total()),
        packets_seen: netinfo::rx_packets(&iface).saturating_sub(packets_at_start),
    };
    let report = window::report(&tally, &mut sampler, &ctx);
    let mut out = std::io::stdout().lock();
    match args.format {
        Format::Json => writeln!(out, "{}", report.to_json())?,
        Format::Text => write!(out, "{}", report.to_text())?,
    }
    out.flush()?;
    Ok(())
}

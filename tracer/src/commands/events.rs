//! `tracer events`: stream kernel events.

use std::{
    io::Write as _,
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{
    capture::{shutdown_signal, write_ready_file, Capture},
    cli::{EventsArgs, Format},
    ranges::RangeSet,
};

pub async fn run(args: EventsArgs) -> Result<()> {
    if let Some(d) = args.duration {
        super::check_duration(d)?;
    }
    let ranges = match &args.ranges {
        Some(path) => RangeSet::from_file(path)?,
        None => RangeSet::embedded(),
    };
    let super::Started { probe, .. } = super::start_probe(
        &args.capture,
        &ranges,
        super::Wanted {
            all_peers: args.all_peers,
            attempt_drops_only: false,
            closes: true,
        },
        crate::kernel::DEFAULT_RING_BYTES,
    )?;
    super::print_notes(&probe);
    let mut capture = Capture::new(probe)?;
    write_ready_file(args.capture.ready_file.as_deref())?;

    let deadline = args
        .duration
        .map(|d| Instant::now() + Duration::from_secs_f64(d));
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut batch = Vec::new();
    let stdout = std::io::stdout();
    loop {
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if remaining == Some(Duration::ZERO) {
            break;
        }
        let tick = remaining
            .unwrap_or(Duration::from_millis(250))
            .min(Duration::from_millis(250));
        tokio::select! {
            _ = &mut shutdown => break,
            r = capture.next_batch(&mut batch, tick) => r?,
        }
        if !emit(&stdout, &mut batch, args.format) {
            return Ok(()); // stdout closed (e.g. `| head`): nothing left to do.
        }
    }
    capture.drain_all(&mut batch);
    emit(&stdout, &mut batch, args.format);
    Ok(())
}

/// Writes and clears the batch; false when stdout is gone.
fn emit(
    stdout: &std::io::Stdout,
    batch: &mut Vec<crate::events::TracedEvent>,
    format: Format,
) -> bool {
    if batch.is_empty() {
        return true;
    }
    let mut out = stdout.lock();
    for ev in batch.drain(..) {
        let line = match format {
            Format::Json => ev.to_json(),
            Format::Text => ev.to_text(),
        };
        if writeln!(out, "{line}").is_err() {
            return false;
        }
    }
    out.flush().is_ok()
}

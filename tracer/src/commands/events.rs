//! `tracer events`: stream kernel events.

use std::{
    io::{BufWriter, Stdout, Write as _},
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{
    capture::session::{self, Next, Sink},
    capture::{write_ready_file, Capture},
    cli::{EventsArgs, Format},
    model::event::Record,
    output::events::EventRecord,
    ranges::fetch,
    reasons::ReasonTable,
};

/// Prints every record; stops at the deadline or when stdout goes away (`| head`).
struct Printer {
    out: BufWriter<Stdout>,
    format: Format,
    reasons: ReasonTable,
    deadline: Option<Instant>,
    closed: bool,
    /// The write error that stopped printing, unless it was a closed pipe.
    failed: Option<std::io::Error>,
}

impl Sink for Printer {
    fn record(&mut self, record: Record) {
        if self.closed {
            return;
        }
        let Some(view) = EventRecord::of(&record, &self.reasons) else {
            return;
        };
        let line = match self.format {
            Format::Json => view.to_json(),
            Format::Text => crate::output::text_wrap::printable(&view.to_text()).into_owned(),
        };
        if let Err(e) = writeln!(self.out, "{line}") {
            self.fail(e);
        }
    }

    fn tick(&mut self, _: &mut Capture) -> Result<Next> {
        if let Err(e) = self.out.flush() {
            self.fail(e);
        }
        let past = self.deadline.is_some_and(|d| Instant::now() >= d);
        Ok(if self.closed || past {
            Next::Stop
        } else {
            Next::Continue
        })
    }

    fn tick_every(&self) -> Duration {
        let left = self
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()));
        left.unwrap_or(Duration::MAX)
            .min(Duration::from_millis(250))
    }

    fn finish(&mut self, _: &mut Capture, _: bool) -> Result<()> {
        if let Err(e) = self.out.flush() {
            self.fail(e);
        }
        match self.failed.take() {
            Some(e) => anyhow::bail!("cannot write events to stdout: {e}"),
            None => Ok(()),
        }
    }
}

impl Printer {
    /// Stops printing. A reader that went away (`| head`) is a normal end; any other write
    /// error (a full disk, /dev/full) makes the command fail.
    fn fail(&mut self, e: std::io::Error) {
        self.closed = true;
        if e.kind() != std::io::ErrorKind::BrokenPipe && self.failed.is_none() {
            self.failed = Some(e);
        }
    }
}

pub async fn run(args: EventsArgs) -> Result<()> {
    if let Some(d) = args.duration {
        super::check_seconds("--duration", d)?;
    }
    let (ranges, note) = fetch::resolve_offline(args.ranges.file.as_deref())?;
    if let Some(n) = note {
        eprintln!("note: {n}");
    }
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
    let reasons = probe.reasons.clone();
    let mut capture = Capture::new(probe)?;
    let signals = crate::capture::Shutdown::listen();
    write_ready_file(args.capture.ready_file.as_deref())?;
    let mut printer = Printer {
        out: BufWriter::new(std::io::stdout()),
        format: args.format,
        reasons,
        deadline: args
            .duration
            .map(|d| Instant::now() + Duration::from_secs_f64(d)),
        closed: false,
        failed: None,
    };
    session::run(&mut capture, &mut printer, signals).await
}

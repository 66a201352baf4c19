//! The one capture loop: `events`, `diagnose` and `agent` each plug in a [`Sink`] — what they
//! do with records and when they stop — and this drives it until the sink is done or a signal
//! (Ctrl-C, SIGTERM) ends it.

use std::time::Duration;

use anyhow::Result;

use crate::{
    capture::{Capture, Shutdown},
    model::event::Record,
};

/// Whether the loop goes on after a tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    Continue,
    Stop,
}

/// What a command does with the capture.
pub trait Sink {
    /// One record, in the kernel's order.
    fn record(&mut self, record: Record);

    /// After each drain (at most `tick_every` apart): housekeeping, windows, deadlines.
    fn tick(&mut self, capture: &mut Capture) -> Result<Next>;

    /// The longest wait for events before the next tick.
    fn tick_every(&self) -> Duration {
        Duration::from_millis(250)
    }

    /// The loop ended, every record handed over; `interrupted`: by a signal.
    fn finish(&mut self, capture: &mut Capture, interrupted: bool) -> Result<()>;
}

/// Runs `sink` on `capture` until it stops or a signal comes.
pub async fn run(capture: &mut Capture, sink: &mut impl Sink, mut signals: Shutdown) -> Result<()> {
    let shutdown = signals.wait();
    tokio::pin!(shutdown);
    let mut interrupted = false;
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                interrupted = true;
                break;
            }
            r = capture.wait(sink.tick_every()) => r?,
        }
        capture.drain_each(false, |r| sink.record(r));
        if sink.tick(capture)? == Next::Stop {
            break;
        }
    }
    capture.drain_each(true, |r| sink.record(r));
    sink.finish(capture, interrupted)
}

//! Reading the kernel's events: the ring buffer (as it signals) and the per-CPU SYN log (polled),
//! merged in time order, and a `loss` event whenever the kernel counted events it could not
//! queue. Shared by `events`, `diagnose` and `agent`.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use tokio::io::{unix::AsyncFd, Interest};
use tracer_common::{counter, Event};

use crate::{
    events::{decode, decode_syn, Clock, TracedEvent},
    kernel::{synlog::SynLog, Probe},
};

pub struct Capture {
    pub probe: Probe,
    ring: AsyncFd<RingBuf<MapData>>,
    syn_log: SynLog,
    clock: Clock,
    lost_reported: u64,
    /// Drains are at least this far apart, so a busy ring costs a few wake-ups per second
    /// rather than one per event.
    min_interval: Duration,
    last_drain: Instant,
    last_loss_check: Instant,
}

/// How often the kernel's loss counter is read (a syscall per CPU).
const LOSS_CHECK_EVERY: Duration = Duration::from_millis(250);
/// The SYN log does not signal: it is read at least this often, even when the ring is quiet
/// (SYNs nobody answers). Its smallest part per CPU holds 1024 SYNs... at 20k SYN/s per CPU
/// for this long; the default sizes hold well over 300k SYN/s per CPU.
const SYN_LOG_POLL: Duration = Duration::from_millis(50);

impl Capture {
    pub fn new(mut probe: Probe) -> Result<Self> {
        let ring = probe.take_ring()?;
        let syn_log = probe.take_syn_log()?;
        // SAFETY: the RingBuf owns its fd and lives inside the AsyncFd, so the fd stays open for
        // as long as it is registered.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(std::io::Error::from)
            .context("registering the ring buffer with the runtime")?;
        Ok(Self {
            probe,
            ring,
            syn_log,
            clock: Clock::now(),
            lost_reported: 0,
            min_interval: Duration::ZERO,
            last_drain: Instant::now(),
            last_loss_check: Instant::now(),
        })
    }

    /// Coalesce wake-ups: drain at most once per `interval` (the ring must hold that long).
    pub fn set_min_interval(&mut self, interval: Duration) {
        self.min_interval = interval;
    }

    /// Total events the kernel could not queue so far.
    pub fn lost_total(&self) -> u64 {
        self.lost_reported
    }

    /// Waits until events are ready, at most `tick`, then appends what is there.
    pub async fn next_batch(&mut self, out: &mut Vec<TracedEvent>, tick: Duration) -> Result<()> {
        let since = self.last_drain.elapsed();
        if since < self.min_interval {
            tokio::time::sleep(self.min_interval - since).await;
        }
        let wait = tick.min(SYN_LOG_POLL);
        if let Ok(guard) = tokio::time::timeout(wait, self.ring.readable_mut()).await {
            let mut guard = guard.context("waiting for the ring buffer")?;
            guard.clear_ready();
        }
        self.drain(out);
        Ok(())
    }

    /// Appends everything queued now in time order, plus a loss event if the kernel counted
    /// new losses.
    pub fn drain(&mut self, out: &mut Vec<TracedEvent>) {
        self.last_drain = Instant::now();
        let start = out.len();
        let ring = self.ring.get_mut();
        while let Some(item) = ring.next() {
            if item.len() < size_of::<Event>() {
                continue;
            }
            // SAFETY: the kernel wrote a whole `Event`; read_unaligned copes with any alignment.
            let raw: Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            if let Some(ev) = decode(&raw, &self.clock, &self.probe.names) {
                out.push(ev);
            }
        }
        // The log after the ring: the SYN behind any event just read is already in it.
        let from_ring = out.len();
        let clock = self.clock;
        self.syn_log.drain(|r| out.push(decode_syn(r, &clock)));
        if from_ring > start && out.len() > from_ring {
            // Both carry the precise monotonic clock: time order is the kernel's order.
            out[start..].sort_by_key(|e| e.ts);
        }
        if self.last_loss_check.elapsed() < LOSS_CHECK_EVERY {
            return;
        }
        self.last_loss_check = Instant::now();
        self.check_loss(out);
    }

    /// Reads the kernel's loss counter now; appends a loss event if it rose.
    pub fn check_loss(&mut self, out: &mut Vec<TracedEvent>) {
        if let Ok(counters) = self.probe.counters() {
            let lost = counters[counter::LOST as usize];
            if lost > self.lost_reported {
                out.push(TracedEvent::loss(
                    SystemTime::now(),
                    lost - self.lost_reported,
                ));
                self.lost_reported = lost;
            }
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Creates the ready file once every program is attached.
pub fn write_ready_file(path: Option<&std::path::Path>) -> Result<()> {
    if let Some(path) = path {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .with_context(|| format!("cannot write ready file {}", path.display()))?;
    }
    Ok(())
}

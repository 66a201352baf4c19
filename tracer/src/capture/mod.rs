//! Reading the kernel's events: the ring buffer (as it signals) and the per-CPU SYN log (polled),
//! merged in the kernel's order, and a `loss` event whenever the kernel counted events it could
//! not queue. Shared by `events`, `diagnose` and `agent`.
//! The order of the two streams is `order`'s.

pub mod looks;
mod order;
pub mod sampling;
pub mod session;

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use tokio::io::{unix::AsyncFd, Interest};
use tracer_common::{counter, Event as RawEvent, SynRecord};

use self::order::{merge_by_ring_pos, ready_syns, ring_record_bytes, sort_by_ring_pos, Merged};
use crate::{
    kernel::{flow_table::FlowTable, synlog::SynLog, Probe},
    model::clock::{Clock, JiffiesClock},
    model::{
        decode::{decode_record, decode_syn},
        event::Record,
    },
};

pub struct Capture {
    pub probe: Probe,
    ring: AsyncFd<RingBuf<MapData>>,
    syn_log: SynLog,
    /// The exchange table, for the requests still waiting (`None`: not mapped, none seen).
    flows: Option<FlowTable>,
    /// When to look at waiting requests' sockets (read or not, and by whom); `None`: never
    /// (`events` reports no exchanges).
    looks: Option<looks::Looks>,
    /// Ring position of the next record to read (the ring starts empty at 0).
    ring_pos: u64,
    /// Ring records of the current drain, with their positions: kept raw (80 bytes) and
    /// decoded straight into the output, so each event is built once, in place.
    ring_batch: Vec<(u64, RawEvent)>,
    /// SYN records not yet handed out, in log order.
    held_syns: Vec<SynRecord>,
    clock: Clock,
    jiffies: JiffiesClock,
    lost_reported: u64,
    /// Drains are at least this far apart, so a busy ring costs a few wake-ups per second
    /// rather than one per event.
    min_interval: Duration,
    last_drain: Instant,
    /// The last drain found nothing (no ring record, no SYN, none held back): the next wait
    /// may last until the ring says something — the kernel rings it for the first SYN it logs
    /// after a drain too — or the tick comes.
    quiet: bool,
    /// Wakes the coalescing waits once at their deadline; `None`: tokio's timers.
    timer: Option<crate::sys::timer::Timer>,
    /// Which edge connections the exchange timing follows, and the sample the kernel has.
    sample: sampling::SampleControl,
    sample_in_kernel: tracer_common::ExchangeSample,
}

/// Without coalescing (`diagnose`, `events`) the SYN log is read at least this often, even
/// when the ring is quiet (SYNs nobody answers). Its smallest part per CPU holds 1024 SYNs...
/// at 20k SYN/s per CPU for this long; the default sizes hold well over 300k SYN/s per CPU.
/// (The kernel also rings the ring for the first SYN it logs after a drain: the coalescing
/// wait of the agent relies on that, not on this poll.)
const SYN_LOG_POLL: Duration = Duration::from_millis(50);

impl Capture {
    pub fn new(mut probe: Probe) -> Result<Self> {
        let ring = probe.take_ring()?;
        let syn_log = probe.take_syn_log()?;
        let flows = probe
            .take_flow_table()
            .inspect_err(|e| tracing::warn!("requests still waiting are not seen: {e:#}"))
            .ok();
        let jiffies = JiffiesClock::new(probe.jiffies_now()?);
        // SAFETY: the RingBuf owns its fd and lives inside the AsyncFd, so the fd stays open for
        // as long as it is registered.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(std::io::Error::from)
            .context("registering the ring buffer with the runtime")?;
        Ok(Self {
            probe,
            ring,
            syn_log,
            flows,
            looks: None,
            ring_pos: 0,
            ring_batch: Vec::new(),
            held_syns: Vec::new(),
            clock: Clock::now(),
            jiffies,
            lost_reported: 0,
            min_interval: Duration::ZERO,
            last_drain: Instant::now(),
            quiet: false,
            timer: None,
            sample: sampling::SampleControl::new(0),
            sample_in_kernel: Default::default(),
        })
    }

    /// Samples the exchange timing above `limit` edge requests a second (0: never).
    pub fn set_timing_sample_above(&mut self, limit: u32) {
        self.sample = sampling::SampleControl::new(limit);
    }

    /// 1 in how many edge connections the exchange timing followed at the sparsest since the
    /// last call (1: every one).
    pub fn take_exchange_sample(&mut self) -> u32 {
        self.sample.take_peak()
    }

    /// Hands the kernel a new sample when the request rate calls for one.
    fn update_sample(&mut self) {
        let now = Instant::now();
        if !self.sample.due(now) {
            return;
        }
        let begun = self.probe.counter(counter::REQUESTS_BEGUN).ok();
        let Some(sample) = self.sample.update(begun, now) else {
            return;
        };
        match self.probe.set_exchange_sample(sample) {
            Ok(()) => {
                tracing::info!(
                    "exchange timing follows 1 in {} edge connections",
                    1u32 << sample.shift
                );
                self.sample_in_kernel = sample;
            }
            Err(e) => tracing::warn!("the exchange timing's sample is unchanged: {e:#}"),
        }
    }

    /// Looks at waiting requests in time to tell a request slower than `read_timeout` read
    /// or not.
    pub fn set_read_timeout(&mut self, read_timeout: Duration) {
        self.looks = Some(looks::Looks::new(read_timeout));
    }

    /// Coalesce wake-ups: drain at most once per `interval` (the ring must hold that long).
    pub fn set_min_interval(&mut self, interval: Duration) {
        self.min_interval = interval;
        if self.timer.is_none() {
            self.timer = crate::sys::timer::Timer::new()
                .inspect_err(|e| tracing::debug!("no timerfd ({e}): tokio's timers"))
                .ok();
        }
    }

    /// Total events the kernel could not queue so far.
    pub fn lost_total(&self) -> u64 {
        self.lost_reported
    }

    /// Edge SYNs the kernel refused (no socket) since the programs loaded, counted in the
    /// kernel: exact even when the ring buffer overflowed.
    pub fn edge_syns_refused(&self) -> u64 {
        self.probe
            .counters()
            .map(|c| c[counter::EDGE_SYN_REFUSED as usize])
            .unwrap_or(0)
    }

    /// Edge requests still waiting for their first response byte, from the kernel's table.
    pub fn waiting_requests(&self) -> Vec<crate::model::exchange::WaitingRequest> {
        let Some(flows) = &self.flows else {
            return Vec::new();
        };
        let begun = self.probe.counter(counter::REQUESTS_BEGUN).ok();
        flows
            .waiting(begun, self.sample_in_kernel.epoch)
            .iter()
            .filter_map(|(k, s)| crate::model::decode::decode_waiting(k, s, &self.clock))
            .collect()
    }

    /// The running counts a window starts from (`iface`: the watched interface).
    pub fn running_counts(&self, iface: &str) -> RunningCounts {
        RunningCounts {
            lost: self.lost_total(),
            refused: self.edge_syns_refused(),
            packets: crate::sys::netinfo::rx_packets(iface),
        }
    }

    /// Waits until events are ready, at most `tick` (and at least the minimum interval since
    /// the last drain).
    pub async fn wait(&mut self, tick: Duration) -> Result<()> {
        if self.min_interval >= SYN_LOG_POLL {
            return self.wait_coalesced(tick).await;
        }
        let since = self.last_drain.elapsed();
        if since < self.min_interval {
            tokio::time::sleep(self.min_interval - since).await;
        }
        let wait = tick.min(SYN_LOG_POLL);
        if let Ok(guard) = tokio::time::timeout(wait, self.ring.readable_mut()).await {
            let mut guard = guard.context("waiting for the ring buffer")?;
            guard.clear_ready();
        }
        Ok(())
    }

    /// The agent's wait: each wake-up is a preemption of the server on a busy host (and an
    /// exit in a VM), so there are as few as the work needs. While events come, one timer a
    /// drain, `min_interval` apart. After a drain that found nothing, the ring's own signal
    /// or the tick, whichever is first: an origin that serves one long upload, or nothing,
    /// wakes the tracer about once a tick. The kernel signals the ring for the first record
    /// after a drain, SYNs included (a SYN logged on a CPU whose log was read empty rings it).
    async fn wait_coalesced(&mut self, tick: Duration) -> Result<()> {
        let next_drain = self.last_drain + self.min_interval;
        if self.quiet {
            let until = self.last_drain + tick.max(self.min_interval);
            let (ring, timer) = (&mut self.ring, &mut self.timer);
            tokio::select! {
                guard = ring.readable_mut() => {
                    guard.context("waiting for the ring buffer")?.clear_ready();
                }
                r = sleep_until(timer, until) => return r,
            }
        }
        sleep_until(&mut self.timer, next_drain).await
    }

    /// Hands each event queued now to `each`, in the kernel's order (`flush`: the last drain,
    /// nothing held back). For the agent at fleet rates: a drain's events are never all in
    /// memory at once (a hundred milliseconds of them is megabytes, which evicts the
    /// workload's cache).
    pub fn drain_each(&mut self, flush: bool, mut each: impl FnMut(Record)) {
        self.last_drain = Instant::now();
        let ring = self.ring.get_mut();
        while let Some(item) = ring.next() {
            let pos = self.ring_pos;
            self.ring_pos += ring_record_bytes(item.len());
            if item.len() < size_of::<RawEvent>() {
                continue;
            }
            // SAFETY: the kernel wrote a whole `Event`; read_unaligned copes with any alignment.
            let raw: RawEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            self.ring_batch.push((pos, raw));
        }
        // The log after the ring, so the ring events a logged SYN follows are already read
        // (or it waits).
        let held = &mut self.held_syns;
        let logged = self.syn_log.drain(|r| held.push(*r));
        self.quiet = self.ring_batch.is_empty() && logged == 0 && held.is_empty();
        // The loss counter after the log, before any record goes out: an event lost before a
        // SYN handed out now is in this count. An attempt whose reset was lost is then known
        // to have lost it before the same flow's next SYN displaces it (a flood that reuses
        // ports): it ends unknown, which the kernel's count can settle, never unanswered.
        self.check_loss(&mut each);
        let held = &mut self.held_syns;
        let ready = if flush {
            sort_by_ring_pos(held);
            held.len()
        } else {
            ready_syns(held, self.ring_pos)
        };
        if ready > 0 {
            // A fresh sample after the log was read: every record's tick is behind it.
            if let Ok(sample) = self.probe.jiffies_now() {
                self.jiffies.update(sample);
            }
        }
        let (clock, jiffies, reasons) = (self.clock, self.jiffies, &self.probe.reasons);
        let netns = self.probe.netns;
        merge_by_ring_pos(&self.ring_batch, &held[..ready], |item| {
            let record = match item {
                Merged::Ring(raw) => decode_record(raw, &clock, &jiffies, reasons),
                Merged::Syn(r) => decode_syn(r, &clock, &jiffies, netns).map(Record::Event),
            };
            if let Some(record) = record {
                each(record);
            }
        });
        self.ring_batch.clear();
        held.drain(..ready);
        self.look_at_waiting(&mut each);
        self.update_sample();
    }

    /// Looks at the sockets of requests that have waited a while, when a pass is due: what it
    /// finds comes out as exchange steps.
    fn look_at_waiting(&mut self, mut each: impl FnMut(Record)) {
        let now = Instant::now();
        if !self.looks.as_ref().is_some_and(|l| l.due(now)) {
            return;
        }
        let wall = SystemTime::now();
        let waiting = self.waiting_requests();
        let Some(looks) = &mut self.looks else {
            return;
        };
        let picked = looks.pick(wall, now, &waiting);
        if picked.is_empty() {
            return;
        }
        let peers = picked.iter().map(|r| (r.peer, r.peer_port)).collect();
        let found = crate::origin::request_sockets::look(&peers);
        for step in looks.steps(wall, now, &picked, &found) {
            each(Record::Exchange(step));
        }
    }

    /// Reads the kernel's loss counter now (one syscall a drain); hands out a loss event if it
    /// rose.
    fn check_loss(&mut self, mut each: impl FnMut(Record)) {
        if let Ok(lost) = self.probe.counter(counter::LOST) {
            if lost > self.lost_reported {
                each(Record::Loss {
                    ts: SystemTime::now(),
                    count: lost - self.lost_reported,
                });
                self.lost_reported = lost;
            }
        }
    }
}

/// Sleeps until `at` on `timer`, or on tokio's timers without one.
async fn sleep_until(timer: &mut Option<crate::sys::timer::Timer>, at: Instant) -> Result<()> {
    match timer {
        Some(t) => t
            .sleep_until(at)
            .await
            .context("waiting on the drain timer"),
        None => {
            tokio::time::sleep_until(at.into()).await;
            Ok(())
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
/// SIGTERM and SIGINT, listened for from the moment this is made: made before the ready file
/// is written, so a signal sent as soon as the tracer says it is ready stops it cleanly (a
/// handler installed only when the loop first waits would leave that signal to kill it).
pub struct Shutdown {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Shutdown {
    pub fn listen() -> Shutdown {
        use tokio::signal::unix::{signal, SignalKind};
        Shutdown {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
        }
    }

    /// Resolves at the first SIGTERM or SIGINT.
    pub async fn wait(&mut self) {
        async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            _ = recv(&mut self.term) => {}
            _ = recv(&mut self.int) => {}
        }
    }
}

/// Creates the ready file once every program is attached: a new temporary file beside it,
/// renamed into place, so a script that sees the file reads the whole process id at once and
/// a symlink planted at either name is never followed.
pub fn write_ready_file(path: Option<&std::path::Path>) -> Result<()> {
    // Under systemd (Type=notify) the same moment is READY=1.
    if let Err(e) = crate::sys::service::notify_ready() {
        tracing::warn!("cannot tell the service manager we are ready: {e}");
    }
    if let Some(path) = path {
        crate::sys::safe_fs::write_atomic(
            path,
            format!("{}\n", std::process::id()).as_bytes(),
            0o644,
        )
        .with_context(|| format!("cannot write ready file {}", path.display()))?;
    }
    Ok(())
}

/// Counts that only grow while the tracer runs — events the kernel lost, edge SYNs it refused,
/// frames the interface received. A window's figures are the differences between its end and
/// its start: `diagnose` takes one window, the agent one after another.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunningCounts {
    lost: u64,
    refused: u64,
    packets: u64,
}

/// What the kernel and the interface counted during one window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowCounts {
    /// Events the kernel could not queue.
    pub lost_events: u64,
    /// Edge SYNs the kernel refused, counted in the kernel (exact even when events were lost).
    pub kernel_refused: u64,
    /// Frames the interface received.
    pub packets_seen: u64,
}

impl RunningCounts {
    /// The window from `self` to `end` (counters never run backwards; an interface that came
    /// back starts again from 0).
    pub fn until(&self, end: &RunningCounts) -> WindowCounts {
        WindowCounts {
            lost_events: end.lost.saturating_sub(self.lost),
            kernel_refused: end.refused.saturating_sub(self.refused),
            packets_seen: end.packets.saturating_sub(self.packets),
        }
    }
}

//! The agent's view of routes that swallow the edge (`tracer ranges --audit`'s `routes`):
//! audited at start, after a route or ranges change, and every few minutes besides (a change
//! the journal did not hear of), on a thread of its own — each audit runs `ip` once per range.

use std::{
    sync::mpsc,
    time::{Duration, Instant},
};

use ipnet::IpNet;

use crate::{origin::range_routes::Misrouted, ranges::RangeSet};

/// Audits at least this far apart, however often routes change.
const MIN_GAP: Duration = Duration::from_secs(2);
/// And at most this far apart.
const EVERY: Duration = Duration::from_secs(300);

pub struct RouteAudit {
    /// An audit has finished since the start: its result stands for the windows.
    audited: bool,
    dirty: bool,
    running: bool,
    last: Instant,
    tx: mpsc::Sender<Vec<Misrouted>>,
    rx: mpsc::Receiver<Vec<Misrouted>>,
}

impl RouteAudit {
    pub fn new() -> Self {
        let (tx, rx) = mpsc::channel();
        Self {
            audited: false,
            dirty: true,
            running: false,
            last: Instant::now() - MIN_GAP,
            tx,
            rx,
        }
    }

    /// Has an audit finished since the start?
    pub fn audited(&self) -> bool {
        self.audited
    }

    /// Routes or ranges changed: audit again soon.
    pub fn mark(&mut self) {
        self.dirty = true;
    }

    /// Starts an audit when one is due; hands out a finished one's result.
    pub fn poll(&mut self, ranges: &RangeSet) -> Option<Vec<Misrouted>> {
        let done = self.rx.try_recv().ok();
        if done.is_some() {
            self.running = false;
            self.audited = true;
        }
        let due = self.dirty || self.last.elapsed() >= EVERY;
        if due && !self.running && self.last.elapsed() >= MIN_GAP {
            self.dirty = false;
            self.running = true;
            self.last = Instant::now();
            let v4: Vec<IpNet> = ranges.v4.iter().map(|n| (*n).into()).collect();
            let v6: Vec<IpNet> = ranges.v6.iter().map(|n| (*n).into()).collect();
            let tx = self.tx.clone();
            let spawned = std::thread::Builder::new()
                .name("route-audit".into())
                .spawn(move || {
                    let _ = tx.send(crate::origin::range_routes::audit(&v4, &v6));
                });
            if spawned.is_err() {
                self.running = false;
            }
        }
        done
    }
}

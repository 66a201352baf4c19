//! A window's end: the report, its verdict record, the TLS check for the next, and
//! `GET /history`.

use std::time::{Instant, SystemTime};

use crate::{output::report::Report, verdict::window::ClosedWindow};

use super::Agent;
use crate::{
    capture::Capture,
    journal::since::{self},
    output::metrics::{self},
    verdict::window::{self, WindowContext},
};

impl Agent {
    /// What `GET /history` answers: the journal (an hour at most), the current failure's
    /// beginning with the changes before it, the last window's verdict.
    pub(super) fn publish_history(&self) {
        let noun = self
            .last_failure
            .and_then(|o| crate::verdict::for_outcome(o).failure_noun())
            .unwrap_or("failures");
        let since = self.failure_clock.began().map(|(began, from_start)| {
            let hints = since::Hints {
                local: self
                    .last_failure
                    .is_some_and(|o| crate::verdict::for_outcome(o).is_local()),
                dated: &self.dated,
            };
            since::since(noun, began, from_start, self.journal.all(), hints)
        });
        let changes: Vec<serde_json::Value> = self
            .journal
            .all()
            .map(|c| serde_json::from_str(&c.to_json()).unwrap_or_default())
            .collect();
        let doc = serde_json::json!({
            "updated_at": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            "interface": self.iface,
            "last_verdict": self.last_verdict.map(|(v, at)| serde_json::json!({
                "verdict": v.as_str(),
                "window_started_at": humantime::format_rfc3339_seconds(at).to_string(),
            })),
            "since": since.as_ref().map(crate::output::report_json::SinceJson::of),
            "changes": changes,
        });
        if let Ok(mut h) = self.history.lock() {
            *h = doc.to_string();
        }
    }

    /// Closes the window on the capture thread (cheap, in order) and hands it to the
    /// assembler; its report comes back through [`Agent::finish_window`].
    pub(super) fn close_window(&mut self, capture: &mut Capture) {
        let notes: Vec<String> = self
            .notes
            .iter()
            .chain(&self.window_notes)
            .cloned()
            .collect();
        // Attempts whose answer may be among lost events are counted in this window, beside
        // the kernel's own count of refusals for it.
        self.correlator.take_lost();
        self.count_decided();
        let counts_now = capture.running_counts(&self.iface);
        let ctx = WindowContext {
            interface: self.iface.clone(),
            netns: self.netns,
            reasons: self.reasons.clone(),
            follows_forwarded: self.follows_forwarded,
            ports: self.ports.clone(),
            window_secs: self.args.window,
            started_at: self.window_start.1,
            ranges: self.ranges.clone(),
            notes,
            xdp_mode: self.arrival_hook.xdp_mode(),
            arrival_hook: self.arrival_hook.as_str(),
            counted: self.counts_at_start.until(&counts_now),
            tls_checked: self.tls.is_some(),
            tunnel: self.tunnel.close_window(&self.ranges, self.netns),
            // Audited on the agent's own schedule (start, route changes, every 5 minutes).
            // (Until the first has finished, the window audits itself.)
            misrouted: self.route_audit.audited().then(|| self.misrouted.clone()),
        };
        self.metrics
            .tunnel
            .window(self.tunnel.pids().len(), ctx.tunnel.as_ref());
        self.tally.exchanges = self
            .exchanges
            .take_window(SystemTime::now(), &capture.waiting_requests());
        self.tally.exchanges.followed_one_in = capture.take_exchange_sample();
        let x = &self.tally.exchanges;
        self.metrics
            .exchange_window(x.slow, x.after_close, x.followed_one_in);
        let closed = window::close(
            std::mem::take(&mut self.tally),
            &mut self.sampler,
            ctx,
            &mut self.refusals,
        );
        self.assembler.submit(closed, self.window_start.1);
        self.window_notes.clear();
        self.window_start = (Instant::now(), SystemTime::now());
        self.counts_at_start = counts_now;
    }

    /// A window's report, assembled: its `since`, the TLS results, the metrics and the
    /// verdict record.
    pub(super) fn finish_window(&mut self, mut report: Report, started: SystemTime) {
        if let (Some(noun), Some((began, from_start))) =
            (report.verdict.failure_noun(), self.failure_clock.began())
        {
            if from_start && self.dated.is_empty() {
                self.dated = crate::journal::dated::gather(&report.listeners);
            }
            let hints = since::Hints {
                local: report.verdict.is_local(),
                dated: &self.dated,
            };
            report.since = Some(since::since(
                noun,
                began,
                from_start,
                self.journal.all(),
                hints,
            ));
        }
        if let Some(tls) = &self.tls {
            report.add_tls_checks(
                self.tls_results.clone(),
                !self.args.capture.ports.is_empty(),
            );
            // The next check, in the background: each handshake may take seconds.
            if !self.tls_running {
                self.tls_running = true;
                let (tls, tx) = (tls.clone(), self.tls_tx.clone());
                let (report_ports, listeners) = (report.ports.clone(), report.listeners.clone());
                let (iface, explicit) = (self.iface.clone(), !self.args.capture.ports.is_empty());
                tokio::task::spawn_blocking(move || {
                    let view = crate::tls::TlsTargets {
                        ports: &report_ports,
                        listeners: &listeners,
                    };
                    let checks = crate::tls::check_targets(&tls, &view, &iface, explicit);
                    let _ = tx.blocking_send(checks);
                });
            }
        }
        self.metrics.set_verdict(report.verdict);
        self.last_verdict = Some((report.verdict, started));
        self.history_dirty = true;
        tracing::info!(
            verdict = report.verdict.as_str(),
            alert = metrics::alert_for(report.verdict).unwrap_or("none"),
            "window closed"
        );
        self.sink
            .line(&crate::output::verdict_record::verdict_record(
                &report,
                &self.ranges,
            ));
    }
}

/// Windows closed but not yet assembled, at most: a backlog this deep means every window's
/// reads take several windows' time; later ones are skipped (and said) until it drains.
const BACKLOG: usize = 8;

/// Assembles closed windows into reports on a thread of its own, in the order they closed:
/// reading a large ruleset, other namespaces or routes never stalls the capture thread (which
/// must keep draining the kernel's buffers).
pub(super) struct Assembler {
    to: std::sync::mpsc::SyncSender<(ClosedWindow, SystemTime)>,
    from: std::sync::mpsc::Receiver<(Report, SystemTime)>,
    /// Windows skipped because the backlog was full.
    pub skipped: u64,
    /// Windows handed over whose report has not come back.
    pending: usize,
}

impl Assembler {
    pub(super) fn start() -> Self {
        let (to, windows) = std::sync::mpsc::sync_channel::<(ClosedWindow, SystemTime)>(BACKLOG);
        let (done, from) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("window-report".into())
            .spawn(move || {
                while let Ok((closed, started)) = windows.recv() {
                    if done.send((window::assemble(closed), started)).is_err() {
                        break;
                    }
                }
            })
            .expect("a thread for window reports");
        Self {
            to,
            from,
            skipped: 0,
            pending: 0,
        }
    }

    fn submit(&mut self, closed: ClosedWindow, started: SystemTime) {
        if self.to.try_send((closed, started)).is_ok() {
            self.pending += 1;
        } else {
            self.skipped += 1;
            tracing::warn!(
                skipped = self.skipped,
                "a window's report was skipped: the previous {BACKLOG} are still being assembled (the firewall ruleset, other namespaces or routes are slow to read)"
            );
        }
    }

    /// Reports assembled since the last call, in window order.
    pub(super) fn done(&mut self) -> Vec<(Report, SystemTime)> {
        let done: Vec<_> = self.from.try_iter().collect();
        self.pending = self.pending.saturating_sub(done.len());
        done
    }

    /// Whether a closed window's report is still being assembled.
    pub(super) fn pending(&self) -> bool {
        self.pending > 0
    }

    /// The reports still being assembled, waited for at most `within` in all (the agent is
    /// stopping: a window it closed is reported, not lost).
    pub(super) fn wait_done(&mut self, within: std::time::Duration) -> Vec<(Report, SystemTime)> {
        let until = std::time::Instant::now() + within;
        let mut done = self.done();
        while self.pending > 0 {
            let left = until.saturating_duration_since(std::time::Instant::now());
            match self.from.recv_timeout(left) {
                Ok(r) => {
                    self.pending -= 1;
                    done.push(r);
                }
                Err(_) => break,
            }
        }
        done
    }
}

//! A window's end: the report, its verdict record, the TLS check for the next, and
//! `GET /history`.

use std::time::{Instant, SystemTime};

use super::Agent;
use crate::{
    capture::Capture,
    journal::since::{self},
    output::metrics::{self},
    verdict::window::{self, Tally, WindowContext},
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

    pub(super) fn close_window(&mut self, capture: &Capture) {
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
            interface: &self.iface,
            netns: self.netns,
            reasons: &self.reasons,
            follows_forwarded: self.follows_forwarded,
            ports: &self.ports,
            window_secs: self.args.window,
            started_at: self.window_start.1,
            ranges: &self.ranges,
            notes: &notes,
            xdp_mode: self.arrival_hook.xdp_mode(),
            arrival_hook: self.arrival_hook.as_str(),
            counted: self.counts_at_start.until(&counts_now),
            tls_checked: self.tls.is_some(),
        };
        let mut report = window::report(&self.tally, &mut self.sampler, &ctx, &mut self.refusals);
        self.window_notes.clear();
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
        self.last_verdict = Some((report.verdict, self.window_start.1));
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
        self.tally = Tally::default();
        self.window_start = (Instant::now(), SystemTime::now());
        self.counts_at_start = counts_now;
    }
}

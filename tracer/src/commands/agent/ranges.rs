//! Ranges refreshed in place: fetched in the background, swapped into the kernel's maps.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Result;

use super::Agent;
use crate::{
    capture::Capture,
    journal::{Change, What},
    ranges::{fetch, RangeSet},
};

/// What a refresh produced, sent back from its background task.
pub(super) type Refreshed = Result<(RangeSet, Option<String>)>;

pub(super) async fn refresh(file: Option<PathBuf>) -> Refreshed {
    match file {
        Some(path) => Ok((RangeSet::from_file(&path)?, None)),
        None => Ok(fetch::refresh().await),
    }
}

impl Agent {
    pub(super) fn apply_refresh(&mut self, capture: &mut Capture, result: Refreshed) {
        self.next_refresh = self.args.refresh_ranges_every.map(|d| Instant::now() + d);
        match result {
            Ok((set, note)) => {
                if let Some(n) = note {
                    tracing::warn!("{n}");
                }
                match capture.probe.set_ranges(&set) {
                    Ok(()) => {
                        tracing::info!(source = %set.source, ipv4 = set.v4.len(), ipv6 = set.v6.len(), "ranges updated in place");
                        if set.etag != self.ranges.etag
                            || set.v4 != self.ranges.v4
                            || set.v6 != self.ranges.v6
                        {
                            let tag =
                                |s: &RangeSet| s.etag.clone().unwrap_or_else(|| "none".into());
                            self.record_change(Change::new(
                                What::Ranges,
                                format!(
                                    "ranges refreshed from {}: etag {} → {} ({} → {} ranges)",
                                    set.source,
                                    tag(&self.ranges),
                                    tag(&set),
                                    self.ranges.v4.len() + self.ranges.v6.len(),
                                    set.v4.len() + set.v6.len()
                                ),
                            ));
                        }
                        self.metrics.set_ranges(&set);
                        self.ranges = set;
                        self.refresh_error = None;
                    }
                    Err(e) => self.refresh_failed(format!(
                        "cannot update the kernel's ranges, keeping the current list: {e:#}"
                    )),
                }
            }
            Err(e) => self.refresh_failed(format!(
                "ranges refresh failed, keeping the current list: {e:#}"
            )),
        }
    }

    /// A failed refresh is warned about when its reason is new, not at every retry.
    pub(super) fn refresh_failed(&mut self, why: String) {
        if self.refresh_error.as_deref() != Some(why.as_str()) {
            tracing::warn!("{why} (said again only if the reason changes)");
            self.window_notes.push(why.clone());
            self.refresh_error = Some(why);
        }
    }
}

/// When the first refresh is due: at once when the list from the API's cache (or the embedded
/// one) is already older than the interval — a fresh install must not wait 6 h on a list
/// recorded weeks ago — otherwise one interval from now. A `--ranges FILE` was just read.
pub(super) fn first_refresh(
    every: Option<Duration>,
    from_file: bool,
    age_secs: Option<u64>,
) -> Option<Instant> {
    let every = every?;
    let stale = age_secs.is_none_or(|age| age >= every.as_secs());
    Some(if stale && !from_file {
        Instant::now()
    } else {
        Instant::now() + every
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_older_than_the_interval_is_refreshed_at_start() {
        let six_hours = Some(Duration::from_secs(6 * 3600));
        let soon = |at: Option<Instant>| at.is_some_and(|t| t <= Instant::now());
        // The embedded list, recorded 60 days ago.
        assert!(soon(first_refresh(six_hours, false, Some(60 * 86400))));
        // A cache of unknown age.
        assert!(soon(first_refresh(six_hours, false, None)));
        // A cache fetched an hour ago waits for the interval.
        assert!(!soon(first_refresh(six_hours, false, Some(3600))));
        // A file just read, and no refresh at all.
        assert!(!soon(first_refresh(six_hours, true, Some(60 * 86400))));
        assert_eq!(first_refresh(None, false, Some(60 * 86400)), None);
    }
}

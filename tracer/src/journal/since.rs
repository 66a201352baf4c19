//! When the current failure began, and what changed just before: the "failure began" rule and
//! the report's `since`.
//!
//! The rule: a failure begins at the first failed edge attempt after a healthy stretch (at
//! least [`HEALTHY_STRETCH`] handshakes in a row), or at the first failed attempt seen when
//! there was no healthy stretch before it (then `from_start`: it may have begun earlier). A
//! lone failure between handshakes ends with the next healthy stretch and is forgotten.
//! Attempts may be decided out of order (an unanswered one only after 25 s): the beginning is
//! the earliest failed attempt of the current run.

use std::time::{Duration, SystemTime};

use super::{dated::Dated, Change};

/// Handshakes in a row that end a failure.
pub const HEALTHY_STRETCH: u32 = 3;
/// Changes this long before the failure began are candidates.
pub const LOOK_BACK: Duration = Duration::from_secs(60);
/// ... and this long after: a change sampled (listeners every 250 ms around the kernel's
/// transitions) is seen a little late.
pub const LOOK_AHEAD: Duration = Duration::from_secs(1);

/// How late a sampled change may be seen and still count as at the beginning (seconds).
const SAMPLED_LATE: f64 = 0.3;

/// Follows the edge attempts' outcomes in the order they are decided.
#[derive(Clone, Debug, Default)]
pub struct FailureClock {
    /// The earliest failed attempt of the current run of failures.
    began: Option<SystemTime>,
    /// No healthy stretch was seen before the current run.
    from_start: bool,
    /// Handshakes in a row since the last failure.
    healthy: u32,
    /// Any attempt seen at all.
    seen: bool,
}

impl FailureClock {
    pub fn observe(&mut self, ts: SystemTime, failed: bool) {
        let first = !self.seen;
        self.seen = true;
        if failed {
            self.healthy = 0;
            match self.began {
                None => {
                    self.began = Some(ts);
                    self.from_start = first;
                }
                Some(b) if ts < b => self.began = Some(ts),
                Some(_) => {}
            }
        } else {
            self.healthy += 1;
            if self.healthy >= HEALTHY_STRETCH {
                self.began = None;
                self.from_start = false;
            }
        }
    }

    /// The current failure's beginning, if one is going on.
    pub fn began(&self) -> Option<(SystemTime, bool)> {
        self.began.map(|b| (b, self.from_start))
    }
}

/// A change near the failure's beginning, as the report says it.
#[derive(Clone, Debug, PartialEq)]
pub struct NearChange {
    pub ts: String,
    pub what: &'static str,
    pub detail: String,
    /// Seconds from the change to the failure's beginning (negative: seen just after it).
    pub before_secs: f64,
}

/// The report's `since`.
#[derive(Clone, Debug, PartialEq)]
pub struct Since {
    /// When the failure began: the first failed edge attempt after a healthy stretch.
    pub began: String,
    /// No healthy stretch was seen first: it began at or before this.
    pub from_start: bool,
    /// Changes from 60 s before to 1 s after it began, the nearest first.
    pub changes: Vec<NearChange>,
    /// The sentence the text report leads with.
    pub text: String,
    /// For a failure older than the tracer (`from_start`): what the host can date after the
    /// fact (the listening processes' starts, firewall files written, the boot), newest first.
    pub dated: Vec<Dated>,
}

/// What `since` says besides the changes it saw.
#[derive(Clone, Copy, Debug, Default)]
pub struct Hints<'a> {
    /// The cause is on this host (refused, a firewall, a full queue, a reset): never say
    /// "look upstream" for it.
    pub local: bool,
    /// What the host can date, for a failure older than the tracer.
    pub dated: &'a [Dated],
}

impl Hints<'_> {
    /// Where to look when no change explains the failure.
    fn look(&self) -> &'static str {
        if self.local {
            "the cause below is on this host"
        } else {
            "the cause below says where the answers are lost"
        }
    }
}

fn clock(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// `since` for a failure of kind `what` ("refusals", "firewall drops") that began at `began`,
/// from the journal's changes.
pub fn since<'a>(
    what: &str,
    began: SystemTime,
    from_start: bool,
    changes: impl Iterator<Item = &'a Change>,
    hints: Hints<'_>,
) -> Since {
    let mut near: Vec<(f64, &Change)> = changes
        .filter(|c| {
            c.ts <= began + LOOK_AHEAD
                && began.duration_since(c.ts).unwrap_or_default() <= LOOK_BACK
        })
        .map(|c| {
            let before = match began.duration_since(c.ts) {
                Ok(d) => d.as_secs_f64(),
                Err(e) => -e.duration().as_secs_f64(),
            };
            (before, c)
        })
        .collect();
    // Nearest first; a change seen after the beginning leads only when it is within one
    // sampling step of it (250 ms around the kernel's transitions), else any change before it
    // goes first.
    let key = |before: f64| {
        if before >= -SAMPLED_LATE {
            before.abs()
        } else {
            1e6 - before
        }
    };
    near.sort_by(|a, b| key(a.0).total_cmp(&key(b.0)));
    let when = clock(began);
    let start = if from_start {
        format!("{what} were already happening at {when} (the start of what the tracer saw)")
    } else {
        format!("{what} began {when}")
    };
    let text = match near.first() {
        // The journal starts with the tracer: it cannot have seen the change, so say so,
        // with what the host can date after the fact.
        None if from_start => {
            let mut t = format!(
                "{what} were already happening when the tracer started watching ({when}): they began earlier, and what changed then is not in its journal"
            );
            if !hints.dated.is_empty() {
                t += &format!(
                    "; what this host can date: {}",
                    super::dated::text(hints.dated)
                );
            }
            format!("{t}; {}", hints.look())
        }
        Some((before, c)) if *before >= 0.0 => {
            format!("{start}, {before:.1} s after {}", c.detail)
        }
        Some((before, c)) => format!(
            "{start}, together with {} (seen {:.1} s later)",
            c.detail,
            -before
        ),
        None => format!(
            "{start}; no change on this host in the {} s before (listeners, nftables, routes, addresses, sysctls, ranges): {}",
            LOOK_BACK.as_secs(),
            hints.look()
        ),
    };
    Since {
        began: when,
        from_start,
        changes: near
            .into_iter()
            .map(|(before_secs, c)| NearChange {
                ts: clock(c.ts),
                what: c.what.as_str(),
                detail: c.detail.clone(),
                before_secs: (before_secs * 1000.0).round() / 1000.0,
            })
            .collect(),
        text,
        dated: if from_start {
            hints.dated.to_vec()
        } else {
            Vec::new()
        },
    }
}

/// `since` for a diagnose window: its edge attempts replayed in time order.
pub fn of_window<'a>(
    verdict: crate::verdict::Verdict,
    timeline: &[(SystemTime, bool)],
    changes: impl Iterator<Item = &'a Change>,
    dated: &[Dated],
) -> Option<Since> {
    let noun = verdict.failure_noun()?;
    let mut sorted = timeline.to_vec();
    sorted.sort_by_key(|(t, _)| *t);
    let mut clock = FailureClock::default();
    for (t, failed) in sorted {
        clock.observe(t, failed);
    }
    let (began, from_start) = clock.began()?;
    let hints = Hints {
        local: verdict.is_local(),
        dated,
    };
    Some(since(noun, began, from_start, changes, hints))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::What;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    /// `o` handshake, `x` failure, one a second from t(0).
    fn run(seq: &str) -> FailureClock {
        let mut c = FailureClock::default();
        for (i, ch) in seq.chars().enumerate() {
            c.observe(t(i as u64), ch == 'x');
        }
        c
    }

    #[test]
    fn a_failure_begins_after_a_healthy_stretch() {
        assert_eq!(run("oooooxxxx").began(), Some((t(5), false)));
    }

    #[test]
    fn a_single_stray_failure_is_forgotten_after_a_healthy_stretch() {
        assert_eq!(run("oooxooo").began(), None);
        // ... but while fewer handshakes than a stretch followed, it is still going on.
        assert_eq!(run("oooxo").began(), Some((t(3), false)));
    }

    #[test]
    fn flapping_keeps_the_first_failure_of_the_run() {
        assert_eq!(run("oooxoxoxx").began(), Some((t(3), false)));
    }

    #[test]
    fn a_failure_present_from_the_start_says_so() {
        assert_eq!(run("xxxx").began(), Some((t(0), true)));
        // A healthy stretch later starts the next failure fresh.
        assert_eq!(run("xxoooxx").began(), Some((t(5), false)));
    }

    #[test]
    fn an_attempt_decided_late_moves_the_beginning_back() {
        let mut c = run("oooxx");
        c.observe(t(2), true);
        assert_eq!(c.began(), Some((t(2), false)));
    }

    #[test]
    fn the_nearest_change_before_is_named() {
        let changes = [
            Change {
                ts: t(100),
                what: What::Firewall,
                detail: "nftables: 1 rule added to inet filter/input".into(),
            },
            Change {
                ts: t(130),
                what: What::ListenerDown,
                detail: "nginx (pid 812) stopped listening on 0.0.0.0:443".into(),
            },
            // Too old.
            Change {
                ts: t(10),
                what: What::Route,
                detail: "old".into(),
            },
        ];
        let s = since(
            "refusals",
            t(131) + Duration::from_millis(800),
            false,
            changes.iter(),
            Hints::default(),
        );
        assert_eq!(s.changes.len(), 2);
        assert_eq!(s.changes[0].what, "listener_down");
        assert_eq!(s.changes[0].before_secs, 1.8);
        assert!(
            s.text
                .ends_with("1.8 s after nginx (pid 812) stopped listening on 0.0.0.0:443"),
            "{}",
            s.text
        );
        assert!(s.text.starts_with("refusals began "), "{}", s.text);
    }

    #[test]
    fn a_change_before_leads_one_seen_well_after() {
        let changes = [
            Change {
                ts: t(100) + Duration::from_millis(900),
                what: What::Address,
                detail: "late".into(),
            },
            Change {
                ts: t(98),
                what: What::ListenerDown,
                detail: "before".into(),
            },
        ];
        let s = since("refusals", t(100), false, changes.iter(), Hints::default());
        assert_eq!(s.changes[0].detail, "before");
    }

    #[test]
    fn no_change_found_is_said() {
        let s = since(
            "refusals",
            t(100),
            false,
            std::iter::empty(),
            Hints::default(),
        );
        assert!(s.changes.is_empty());
        assert!(s.text.contains("no change on this host"), "{}", s.text);
    }

    #[test]
    fn a_change_sampled_just_after_is_kept_and_said_so() {
        let c = Change {
            ts: t(100) + Duration::from_millis(200),
            what: What::ListenerDown,
            detail: "x stopped listening".into(),
        };
        let s = since(
            "refusals",
            t(100),
            false,
            std::iter::once(&c),
            Hints::default(),
        );
        assert!(
            s.text
                .contains("together with x stopped listening (seen 0.2 s later)"),
            "{}",
            s.text
        );
    }

    #[test]
    fn a_failure_older_than_the_tracer_says_so_and_what_the_host_dates() {
        let dated = [
            Dated::new(
                t(50),
                "nginx (pid 812, listening on 0.0.0.0:443) started".into(),
            ),
            Dated::new(t(0), "the host booted".into()),
        ];
        let hints = Hints {
            local: true,
            dated: &dated,
        };
        let s = since("refusals", t(100), true, std::iter::empty(), hints);
        assert!(
            s.text
                .contains("were already happening when the tracer started watching"),
            "{}",
            s.text
        );
        assert!(
            s.text.contains("what changed then is not in its journal"),
            "{}",
            s.text
        );
        assert!(
            s.text
                .contains("nginx (pid 812, listening on 0.0.0.0:443) started 2027-01-15T08:00:50Z"),
            "{}",
            s.text
        );
        assert!(
            s.text.ends_with("the cause below is on this host"),
            "{}",
            s.text
        );
        assert!(!s.text.contains("upstream"), "{}", s.text);
        assert_eq!(s.dated.len(), 2);
    }

    #[test]
    fn a_local_cause_is_never_sent_upstream() {
        for local in [true, false] {
            let hints = Hints { local, dated: &[] };
            let s = since("refusals", t(100), false, std::iter::empty(), hints);
            assert!(!s.text.contains("upstream"), "{}", s.text);
            assert!(s.dated.is_empty());
        }
    }
}

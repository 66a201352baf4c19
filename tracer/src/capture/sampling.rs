//! How many edge connections the exchange timing follows. Timing an exchange costs the packet
//! programs a table slot per connection, its cache line passed between the CPU taking the
//! edge's packets and the one sending the answers: nothing at a few thousand requests a
//! second, several per cent of the host at tens of thousands (`cargo xtask bench --only
//! rate`). Above `--timing-sample-above` requests a second the kernel follows 1 in 2^k
//! connections, by a hash of the connection (the same test on both hooks, so the others cost
//! no table access at all), k the smallest that brings the followed rate under the limit.
//! Percentiles of a hash sample stand for the whole; counts are the followed connections'.
//! Pure: unit tests drive it with recorded counts.

use std::time::{Duration, Instant};

use tracer_common::{ExchangeSample, SAMPLE_SHIFT_MAX};

/// How often the rate is looked at: a burst is sampled within about this long.
const EVERY: Duration = Duration::from_millis(500);

/// How long the rate must stay low before fewer connections are left out: a rate around the
/// limit does not flap (each change starts the followed exchanges afresh).
const CALM: Duration = Duration::from_secs(10);

/// Edge requests a second above which the timing samples, by default: at this rate timing
/// every exchange costs well under one per cent of a CPU (BENCHMARKS.md).
pub const DEFAULT_LIMIT: u32 = 5_000;

/// The sample in force and what decides the next.
#[derive(Debug)]
pub struct SampleControl {
    /// Requests a second above which connections are left out (`None`: every one followed).
    limit: Option<u32>,
    current: ExchangeSample,
    /// The kernel's count of followed requests begun at the last look, and when.
    last: Option<(Instant, u64)>,
    /// Since when a smaller shift would have done.
    calm_since: Option<Instant>,
    /// The largest shift in force since the last [`SampleControl::take_peak`].
    peak: u32,
}

impl SampleControl {
    /// `limit` 0: follow every connection whatever the rate.
    pub fn new(limit: u32) -> Self {
        Self {
            limit: (limit > 0).then_some(limit),
            current: ExchangeSample::default(),
            last: None,
            calm_since: None,
            peak: 0,
        }
    }

    #[cfg(test)]
    pub fn current(&self) -> ExchangeSample {
        self.current
    }

    /// Is a look due (so the count is worth reading)?
    pub fn due(&self, now: Instant) -> bool {
        self.limit.is_some()
            && self
                .last
                .is_none_or(|(at, _)| now.duration_since(at) >= EVERY)
    }

    /// Looks at the kernel's count of followed requests begun (`None`: unreadable, nothing
    /// changes); a new sample to hand the kernel when it should change.
    pub fn update(&mut self, begun: Option<u64>, now: Instant) -> Option<ExchangeSample> {
        let (limit, begun) = (self.limit?, begun?);
        let Some((at, before)) = self.last else {
            self.last = Some((now, begun));
            return None;
        };
        let elapsed = now.duration_since(at);
        if elapsed < EVERY {
            return None;
        }
        self.last = Some((now, begun));
        // The followed connections' requests stand for 2^shift times as many.
        let rate = begun.saturating_sub(before) as f64 / elapsed.as_secs_f64()
            * f64::from(1u32 << self.current.shift);
        let wanted = shift_for(rate, limit);
        let shift = self.current.shift;
        if wanted < shift {
            let since = *self.calm_since.get_or_insert(now);
            if now.duration_since(since) < CALM {
                return None;
            }
        }
        self.calm_since = None;
        if wanted == shift {
            return None;
        }
        self.current = ExchangeSample {
            shift: wanted,
            epoch: self.current.epoch.wrapping_add(1),
        };
        self.peak = self.peak.max(wanted);
        Some(self.current)
    }

    /// 1 in how many connections were followed at the sparsest since the last call (1:
    /// every one); the next call starts from the sample in force.
    pub fn take_peak(&mut self) -> u32 {
        let peak = self.peak.max(self.current.shift);
        self.peak = self.current.shift;
        1 << peak
    }
}

/// The smallest shift that brings `rate` requests a second under `limit`.
fn shift_for(rate: f64, limit: u32) -> u32 {
    let mut shift = 0;
    while shift < SAMPLE_SHIFT_MAX && rate / f64::from(1u32 << shift) > f64::from(limit) {
        shift += 1;
    }
    shift
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recorded: 2,000 requests a second, then 60,000 (the kernel then counts only the
    /// followed sixteenth), then back to 2,000: the sample narrows at once and widens only
    /// after ten calm seconds.
    #[test]
    fn the_sample_narrows_at_once_and_widens_after_a_calm() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut c = SampleControl::new(5_000);
        let mut begun = 0u64;
        assert_eq!(c.update(Some(begun), at(0)), None, "first look: a baseline");
        begun += 2_000;
        assert_eq!(c.update(Some(begun), at(1)), None);
        assert_eq!(c.take_peak(), 1);

        begun += 60_000;
        let s = c.update(Some(begun), at(2)).expect("narrowed");
        assert_eq!(
            (s.shift, s.epoch),
            (4, 1),
            "60,000/s: 1 in 16 brings it to 3,750/s"
        );
        // Now the kernel counts 1 in 16.
        for t in 3..=5 {
            begun += 60_000 / 16;
            assert_eq!(c.update(Some(begun), at(t)), None, "steady at {t} s");
        }
        assert_eq!(c.take_peak(), 16);

        for t in 6..=15 {
            begun += 2_000 / 16;
            assert_eq!(c.update(Some(begun), at(t)), None, "still calming at {t} s");
        }
        begun += 2_000 / 16;
        let s = c.update(Some(begun), at(16)).expect("widened");
        assert_eq!((s.shift, s.epoch), (0, 2));
        assert_eq!(c.take_peak(), 16, "the window saw 1 in 16");
        assert_eq!(c.take_peak(), 1);
    }

    /// A burst inside the calm restarts it; looks closer than a second apart wait.
    #[test]
    fn a_burst_during_the_calm_starts_it_again() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut c = SampleControl::new(1_000);
        let mut begun = 0;
        c.update(Some(begun), at(0));
        begun += 4_000;
        assert_eq!(c.update(Some(begun), at(300)), None, "too soon");
        assert_eq!(c.update(Some(begun), at(1_000)).map(|s| s.shift), Some(2));
        // 500/s (counted 125): calm from 2 s...
        for s in 2..=6 {
            begun += 125;
            assert_eq!(c.update(Some(begun), at(s * 1_000)), None);
        }
        // ...a second at 4,000/s (counted 1,000) ends it...
        begun += 1_000;
        assert_eq!(c.update(Some(begun), at(7_000)), None);
        // ...and widening waits ten seconds from the next calm one.
        for s in 8..=17 {
            begun += 125;
            assert_eq!(c.update(Some(begun), at(s * 1_000)), None, "at {s} s");
        }
        begun += 125;
        assert_eq!(c.update(Some(begun), at(18_000)).map(|s| s.shift), Some(0));
    }

    #[test]
    fn without_a_limit_or_a_count_nothing_changes() {
        let t0 = Instant::now();
        let mut c = SampleControl::new(0);
        for s in 0..5 {
            assert_eq!(
                c.update(Some(s * 1_000_000), t0 + Duration::from_secs(s)),
                None
            );
        }
        let mut c = SampleControl::new(10);
        assert_eq!(c.update(None, t0), None);
        assert_eq!(c.update(None, t0 + Duration::from_secs(2)), None);
        assert_eq!(c.current(), ExchangeSample::default());
    }

    #[test]
    fn the_shift_is_the_smallest_under_the_limit_and_capped() {
        assert_eq!(shift_for(0.0, 5_000), 0);
        assert_eq!(shift_for(5_000.0, 5_000), 0);
        assert_eq!(shift_for(5_001.0, 5_000), 1);
        assert_eq!(shift_for(60_000.0, 5_000), 4);
        assert_eq!(shift_for(1e12, 5_000), SAMPLE_SHIFT_MAX);
    }
}

//! Kernel clocks to wall-clock time: CLOCK_MONOTONIC stamps of ring events, and the jiffies of
//! the SYN log.

use std::time::{Duration, SystemTime};

/// Converts the kernel's CLOCK_MONOTONIC stamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    wall_at_zero: SystemTime,
}

impl Clock {
    pub fn now() -> Self {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid out-pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let mono = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
        Self {
            wall_at_zero: SystemTime::now() - mono,
        }
    }

    pub fn wall(&self, mono_ns: u64) -> SystemTime {
        self.wall_at_zero + Duration::from_nanos(mono_ns)
    }
}

/// The jiffies counter and CLOCK_MONOTONIC_COARSE (ns), read together in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JiffiesSample {
    pub jiffies: u64,
    pub mono_ns: u64,
}

/// Converts the SYN log's jiffies to CLOCK_MONOTONIC: from the newest sample, back by the tick
/// length measured between the first sample and the newest. The result is the start of the
/// SYN's tick, so never later than the SYN itself; the tick length is known to a fraction of a
/// percent after a second, and SYNs are converted within a poll of arriving.
#[derive(Clone, Copy, Debug)]
pub struct JiffiesClock {
    first: JiffiesSample,
    last: JiffiesSample,
}

/// Tick length until two samples a tick apart measure it (CONFIG_HZ=250, the common default).
const ASSUMED_TICK_NS: f64 = 4_000_000.0;

impl JiffiesClock {
    pub fn new(sample: JiffiesSample) -> Self {
        Self {
            first: sample,
            last: sample,
        }
    }

    pub fn update(&mut self, sample: JiffiesSample) {
        if sample.jiffies >= self.last.jiffies && sample.mono_ns >= self.last.mono_ns {
            self.last = sample;
        }
    }

    pub fn tick_ns(&self) -> f64 {
        let ticks = self.last.jiffies - self.first.jiffies;
        if ticks == 0 {
            return ASSUMED_TICK_NS;
        }
        (self.last.mono_ns - self.first.mono_ns) as f64 / ticks as f64
    }

    pub fn mono_ns(&self, jiffies: u64) -> u64 {
        let tick = self.tick_ns();
        if jiffies >= self.last.jiffies {
            let ahead = (jiffies - self.last.jiffies) as f64 * tick;
            self.last.mono_ns.saturating_add(ahead as u64)
        } else {
            let behind = (self.last.jiffies - jiffies) as f64 * tick;
            self.last.mono_ns.saturating_sub(behind as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jiffies_convert_with_the_measured_tick() {
        let sample = |jiffies, mono_ns| JiffiesSample { jiffies, mono_ns };
        let mut c = JiffiesClock::new(sample(100, 1_000_000_000));
        // One sample: the assumed tick.
        assert_eq!(c.mono_ns(100), 1_000_000_000);
        assert_eq!(c.mono_ns(99), 996_000_000);
        // HZ=1000 measured over a second.
        c.update(sample(1100, 2_000_000_000));
        assert_eq!(c.tick_ns(), 1_000_000.0);
        assert_eq!(c.mono_ns(1090), 1_990_000_000);
        assert_eq!(c.mono_ns(1101), 2_001_000_000);
        // A stale sample (older than the newest) is ignored.
        c.update(sample(1050, 1_500_000_000));
        assert_eq!(c.mono_ns(1100), 2_000_000_000);
        // Far in the past saturates rather than wrapping.
        assert_eq!(c.mono_ns(0), 900_000_000);
        assert_eq!(JiffiesClock::new(sample(10, 0)).mono_ns(0), 0);
    }
}

//! Durations summed up without keeping each: a log-scale histogram (5 % wide buckets from
//! 10 µs to about 1,000 s) gives percentiles within 5 %, the count and the maximum exact, in
//! fixed memory whatever the rate — the agent sees a window's handshakes one by one.

use std::time::Duration;

/// Buckets grow by this factor.
const GROWTH: f64 = 1.05;
/// The first bucket's upper bound, in microseconds.
const FIRST_US: f64 = 10.0;
/// Enough buckets to reach ~1,000 s; longer ones fall in the last.
const BUCKETS: usize = 380;

/// A summary of durations: `{count, p50, p99, max}` in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The edge's handshakes in a window: their durations, and how many needed a retransmission.
#[derive(Clone, Debug, Default)]
pub struct Handshakes {
    pub times: Durations,
    /// Handshakes that completed only after the edge sent its SYN again.
    pub after_syn_retransmits: u64,
    /// Handshakes that completed only after the origin sent its SYN-ACK again.
    pub after_synack_retransmits: u64,
}

/// What the report says of timing.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Timing {
    pub handshake: Summary,
    pub after_syn_retransmits: u64,
    pub after_synack_retransmits: u64,
    /// Edge request to the first response byte.
    pub response: Summary,
    /// Idle time before the origin closed an edge connection.
    pub idle_close: Summary,
    /// Edge requests seen (on new connections and ones already open).
    pub requests: u64,
    /// Requests past the edge's read timeout, and those of them the application had not read.
    pub slow_responses: u64,
    pub slow_unread: u64,
    /// Requests that arrived on connections the origin had already closed.
    pub requests_after_close: u64,
    /// 1 in how many edge connections the exchange timing followed (1: every one): the
    /// response and idle-close figures and the counts of requests are theirs.
    pub exchanges_followed_one_in: u32,
}

impl Handshakes {
    /// A completed edge handshake: first SYN to final ACK, `syns` SYNs seen, `synacks_again`
    /// SYN-ACKs the origin sent again.
    pub fn add(&mut self, time: Duration, syns: u32, synacks_again: u32) {
        self.times.add(time);
        self.after_syn_retransmits += u64::from(syns > 1);
        self.after_synack_retransmits += u64::from(synacks_again > 0);
    }

    /// The window's timing, with its exchanges.
    pub fn timing(&self, x: &super::exchanges::ExchangeWindow) -> Timing {
        Timing {
            handshake: self.times.summary(),
            after_syn_retransmits: self.after_syn_retransmits,
            after_synack_retransmits: self.after_synack_retransmits,
            response: x.responses.summary(),
            idle_close: x.idle_closes.summary(),
            requests: x.requests,
            slow_responses: x.slow,
            slow_unread: x.slow_unread,
            requests_after_close: x.after_close,
            exchanges_followed_one_in: x.followed_one_in.max(1),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Durations {
    buckets: Box<[u64; BUCKETS]>,
    count: u64,
    max: Duration,
}

impl Default for Durations {
    fn default() -> Self {
        Self {
            buckets: Box::new([0; BUCKETS]),
            count: 0,
            max: Duration::ZERO,
        }
    }
}

fn bucket_of(d: Duration) -> usize {
    let us = d.as_secs_f64() * 1e6;
    if us <= FIRST_US {
        return 0;
    }
    (((us / FIRST_US).ln() / GROWTH.ln()).ceil() as usize).min(BUCKETS - 1)
}

/// A bucket's upper bound in milliseconds.
fn upper_ms(bucket: usize) -> f64 {
    FIRST_US * GROWTH.powi(bucket as i32) / 1000.0
}

impl Durations {
    pub fn add(&mut self, d: Duration) {
        self.buckets[bucket_of(d)] += 1;
        self.count += 1;
        self.max = self.max.max(d);
    }

    /// The `q`-quantile (0..=1), as its bucket's upper bound (never above the maximum).
    fn quantile_ms(&self, q: f64) -> f64 {
        let rank = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return upper_ms(i).min(self.max.as_secs_f64() * 1000.0);
            }
        }
        self.max.as_secs_f64() * 1000.0
    }

    pub fn summary(&self) -> Summary {
        if self.count == 0 {
            return Summary::default();
        }
        Summary {
            count: self.count,
            p50_ms: self.quantile_ms(0.5),
            p99_ms: self.quantile_ms(0.99),
            max_ms: self.max.as_secs_f64() * 1000.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_within_five_percent_count_and_max_exact() {
        let mut d = Durations::default();
        assert_eq!(d.summary(), Summary::default());
        // 98 handshakes of 0.4 ms, one of 1,000 ms and one of 3,001 ms (retransmitted SYNs).
        for _ in 0..98 {
            d.add(Duration::from_micros(400));
        }
        d.add(Duration::from_millis(1000));
        d.add(Duration::from_millis(3001));
        let s = d.summary();
        assert_eq!(s.count, 100);
        assert!((0.4..=0.42).contains(&s.p50_ms), "{s:?}");
        assert!((1000.0..=1050.0).contains(&s.p99_ms), "{s:?}");
        assert_eq!(s.max_ms, 3001.0);
        // Longer than the last bucket: counted, the maximum still exact.
        d.add(Duration::from_secs(5000));
        assert_eq!(d.summary().max_ms, 5_000_000.0);
        assert_eq!(d.summary().count, 101);
    }
}

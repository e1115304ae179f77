//! A token bucket: how long a call must wait so that calls to one service never go faster
//! than `qps` on average, nor more than `burst` at once.
//!
//! client-go's flowcontrol is the reference (10 queries a second, bursts of 100, for every
//! client of an API server). A call that finds no token reserves the next one and waits for
//! it, so waiting calls go out in the order they asked, each `1/qps` after the one before,
//! however many wait. Time is the caller's monotonic clock, as a [`Duration`] since any
//! fixed start.

use std::time::Duration;

/// A rate and a burst, as the operator sets them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Calls a second, on average.
    pub qps: f64,
    /// Calls that may go at once after a quiet while.
    pub burst: u32,
}

impl Rate {
    /// A rate, if it can be kept: `qps` a positive finite number, `burst` at least 1.
    ///
    /// # Errors
    /// Why not, in words for the operator.
    pub fn new(qps: f64, burst: u32) -> Result<Rate, String> {
        if !(qps.is_finite() && qps > 0.0) {
            return Err(format!("qps must be a number above 0 (found {qps})"));
        }
        if burst == 0 {
            return Err("burst must be at least 1".into());
        }
        Ok(Rate { qps, burst })
    }
}

/// The bucket's state. It starts full.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: Rate,
    /// Tokens at `at`; below zero when calls are waiting for tokens not yet made.
    tokens: f64,
    at: Duration,
}

impl TokenBucket {
    /// A full bucket at time `now`.
    pub fn new(rate: Rate, now: Duration) -> TokenBucket {
        TokenBucket {
            rate,
            tokens: f64::from(rate.burst),
            at: now,
        }
    }

    /// Takes a token for a call made at `now`, and says how long the call must wait before
    /// it goes: zero while tokens are left. A time earlier than the last one counts as the
    /// last one.
    pub fn reserve(&mut self, now: Duration) -> Duration {
        let now = now.max(self.at);
        let refill = (now - self.at).as_secs_f64() * self.rate.qps;
        self.tokens = (self.tokens + refill).min(f64::from(self.rate.burst));
        self.at = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate.qps)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    /// When each of `calls` calls asked at `asked(i)` goes out.
    fn departures(rate: Rate, calls: usize, asked: impl Fn(usize) -> f64) -> Vec<f64> {
        let mut bucket = TokenBucket::new(rate, Duration::ZERO);
        (0..calls)
            .map(|i| {
                let at = asked(i);
                at + bucket.reserve(secs(at)).as_secs_f64()
            })
            .collect()
    }

    #[test]
    fn a_burst_goes_at_once_and_the_rest_at_the_rate_in_the_order_asked() {
        let out = departures(Rate::new(10.0, 100).unwrap(), 150, |_| 0.0);
        assert!(out[..100].iter().all(|t| *t == 0.0), "{:?}", &out[..100]);
        for (i, t) in out[100..].iter().enumerate() {
            let expected = (i + 1) as f64 / 10.0;
            assert!((t - expected).abs() < 1e-9, "call {} went at {t}", 100 + i);
        }
    }

    #[test]
    fn no_window_of_any_length_holds_more_than_burst_plus_rate_times_length() {
        // A failing controller asks as fast as it can: 1,000 calls a second for a minute.
        let rate = Rate::new(10.0, 100).unwrap();
        let out = departures(rate, 60_000, |i| i as f64 / 1000.0);
        for window in [1.0, 5.0, 30.0] {
            let most = out
                .iter()
                .enumerate()
                .map(|(i, start)| out[i..].partition_point(|t| *t < start + window))
                .max()
                .unwrap();
            let bound = 100.0 + 10.0 * window + 1.0;
            assert!(
                (most as f64) <= bound,
                "{most} calls in {window}s, bound {bound}"
            );
        }
    }

    #[test]
    fn tokens_come_back_at_the_rate_up_to_the_burst_and_no_further() {
        let rate = Rate::new(2.0, 4).unwrap();
        let mut bucket = TokenBucket::new(rate, Duration::ZERO);
        for _ in 0..4 {
            assert_eq!(bucket.reserve(Duration::ZERO), Duration::ZERO);
        }
        assert_eq!(bucket.reserve(Duration::ZERO), secs(0.5));
        // An hour later the bucket is full again, with 4 tokens, not 7,200.
        let later = secs(3600.0);
        for _ in 0..4 {
            assert_eq!(bucket.reserve(later), Duration::ZERO);
        }
        assert_eq!(bucket.reserve(later), secs(0.5));
    }

    #[test]
    fn a_clock_that_steps_back_gives_no_tokens() {
        let mut bucket = TokenBucket::new(Rate::new(1.0, 1).unwrap(), secs(10.0));
        assert_eq!(bucket.reserve(secs(10.0)), Duration::ZERO);
        assert_eq!(bucket.reserve(secs(5.0)), secs(1.0));
    }

    #[test]
    fn a_rate_that_cannot_be_kept_is_refused_with_the_reason() {
        assert!(Rate::new(0.0, 1).unwrap_err().contains("qps"));
        assert!(Rate::new(f64::NAN, 1).unwrap_err().contains("qps"));
        assert!(Rate::new(-1.0, 1).unwrap_err().contains("qps"));
        assert!(Rate::new(1.0, 0).unwrap_err().contains("burst"));
    }
}

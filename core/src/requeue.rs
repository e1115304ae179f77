//! When to look at a cluster again after an error: exponential backoff with full jitter.
//!
//! The AWS SDK already retries throttling and 5xx within one call; this is the controller's
//! own requeue of a key whose reconcile failed, so that one bad key never spins.

use std::time::Duration;

/// The delay before attempt `attempt` (1 for the first retry): a uniformly random point
/// between zero and `min(cap, base * 2^(attempt-1))`, chosen by `jitter` in `[0, 1)`.
/// Full jitter spreads retries of many keys failing together.
pub fn backoff(attempt: u32, base: Duration, cap: Duration, jitter: f64) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let ceiling = exp.min(cap);
    ceiling.mul_f64(jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn ceiling_doubles_per_attempt_up_to_the_cap() {
        let almost_one = 0.999_999;
        let ceilings: Vec<u64> = (1..=8)
            .map(|a| backoff(a, 2 * S, 60 * S, almost_one).as_secs())
            .collect();
        assert_eq!(ceilings, [1, 3, 7, 15, 31, 59, 59, 59]);
    }

    #[test]
    fn jitter_spreads_between_zero_and_the_ceiling() {
        assert_eq!(backoff(3, 2 * S, 60 * S, 0.0), Duration::ZERO);
        assert_eq!(backoff(3, 2 * S, 60 * S, 0.5), 4 * S);
        assert_eq!(backoff(3, 2 * S, 60 * S, 7.0), 8 * S, "jitter is clamped");
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        assert_eq!(backoff(u32::MAX, 2 * S, 60 * S, 0.5), 30 * S);
    }
}

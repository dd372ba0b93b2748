//! Retry timing: exponential backoff with full jitter, and `Retry-After`.

use std::time::{Duration, SystemTime};

use rand::Rng;

/// The wait before the next try after `failures` failed attempts in a row (1 or more):
/// a uniform draw from zero to `initial * 2^(failures-1)`, capped at `max` ("full jitter").
pub fn full_jitter(
    initial: Duration,
    max: Duration,
    failures: u32,
    rng: &mut impl Rng,
) -> Duration {
    let ceiling = ceiling(initial, max, failures);
    let ms = crate::config::units::millis(ceiling);
    Duration::from_millis(rng.random_range(0..=ms))
}

/// The upper bound of the draw after `failures` failed attempts.
pub fn ceiling(initial: Duration, max: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(32);
    initial.saturating_mul(1u32 << doublings.min(31)).min(max)
}

/// Reads a `Retry-After` value: seconds, or an HTTP date (relative to `now`).
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_doubles_from_initial_and_stops_at_max() {
        let (i, m) = (Duration::from_secs(1), Duration::from_secs(300));
        let c: Vec<u64> = (1..=11).map(|n| ceiling(i, m, n).as_secs()).collect();
        assert_eq!(c, vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(ceiling(i, m, 1000), m);
    }

    #[test]
    fn draws_stay_between_zero_and_the_ceiling_and_spread_out() {
        let mut rng = rand::rng();
        let (i, m) = (Duration::from_millis(100), Duration::from_secs(10));
        let draws: Vec<Duration> = (0..1000).map(|_| full_jitter(i, m, 4, &mut rng)).collect();
        assert!(draws.iter().all(|d| *d <= Duration::from_millis(800)));
        assert!(draws.iter().any(|d| *d < Duration::from_millis(200)));
        assert!(draws.iter().any(|d| *d > Duration::from_millis(600)));
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon", now), None);
    }
}

//! When to try again: exponential backoff with full jitter, `Retry-After` honoured, bounded by
//! `max_attempts` and `max_age`.
//!
//! Full jitter (a uniform delay in `[0, min(max, initial·2ⁿ)]`) spreads the retries of many
//! lanes that failed together, so a recovering receiver is not hit by synchronized waves.
//! It is a few lines; the backoff crates offer "delay + jitter", which keeps the waves.

use std::time::{Duration, SystemTime};

use crate::config::{RetryConfig, StatusMatch};

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub max_attempts: u32,
    pub max_age: Duration,
    /// Answers that refuse the event itself: dead-lettered at once (`retry.dead_letter_on`).
    pub dead_letter_on: Vec<StatusMatch>,
}

impl RetryPolicy {
    pub fn from_config(config: &RetryConfig) -> RetryPolicy {
        RetryPolicy {
            initial_backoff: config.initial_backoff.0,
            max_backoff: config.max_backoff.0,
            max_attempts: config.max_attempts,
            max_age: config.max_age.0,
            dead_letter_on: config.dead_letter_on.clone(),
        }
    }

    /// Whether an answer with `status` refuses the event itself rather than says the
    /// endpoint is failing.
    pub fn refuses_the_event(&self, status: u16) -> bool {
        self.dead_letter_on.iter().any(|m| m.matches(status))
    }

    /// The wait before attempt `attempts + 1`, or `None` when the event has run out of
    /// attempts or of age. `retry_after` is the receiver's own request, which wins over the
    /// backoff (the receiver knows best when it can take more) but not over `max_age`.
    pub fn next_delay(
        &self,
        attempts: u32,
        first_received: SystemTime,
        retry_after: Option<Duration>,
    ) -> Option<Duration> {
        if attempts >= self.max_attempts {
            return None;
        }
        let delay = retry_after.unwrap_or_else(|| self.backoff(attempts));
        // Saturating: `Retry-After` is the receiver's number, as large as it likes.
        let age_then = first_received
            .elapsed()
            .unwrap_or_default()
            .saturating_add(delay);
        (age_then <= self.max_age).then_some(delay)
    }

    /// The longest wait between two attempts of an event.
    pub fn max_backoff(&self) -> Duration {
        self.max_backoff
    }

    fn backoff(&self, attempts: u32) -> Duration {
        let exponent = attempts.saturating_sub(1).min(32);
        let ceiling = self
            .initial_backoff
            .saturating_mul(1u32 << exponent.min(31))
            .min(self.max_backoff);
        ceiling.mul_f64(rand::random::<f64>())
    }
}

/// Parses `Retry-After`: delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(SystemTime::now()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_retry_after_runs_out_of_age_instead_of_overflowing() {
        let huge = parse_retry_after("18446744073709551615");
        assert_eq!(huge, Some(Duration::from_secs(u64::MAX)));
        assert_eq!(policy().next_delay(1, SystemTime::now(), huge), None);
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            max_attempts: 5,
            max_age: Duration::from_secs(60),
            dead_letter_on: Vec::new(),
        }
    }

    #[test]
    fn delays_grow_with_full_jitter_up_to_the_cap() {
        let p = policy();
        for attempts in 1..5 {
            let cap =
                Duration::from_millis(100 * (1 << (attempts - 1))).min(Duration::from_secs(1));
            for _ in 0..50 {
                assert!(p.next_delay(attempts, SystemTime::now(), None).unwrap() <= cap);
            }
        }
    }

    #[test]
    fn attempts_and_age_end_retries() {
        let p = policy();
        assert_eq!(p.next_delay(5, SystemTime::now(), None), None);
        let old = SystemTime::now() - Duration::from_secs(61);
        assert_eq!(p.next_delay(1, old, None), None);
        let nearly = SystemTime::now() - Duration::from_secs(55);
        assert_eq!(
            p.next_delay(1, nearly, Some(Duration::from_secs(10))),
            None,
            "a Retry-After past max_age"
        );
        assert_eq!(
            p.next_delay(1, SystemTime::now(), Some(Duration::from_secs(7))),
            Some(Duration::from_secs(7))
        );
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// A receiver's `Retry-After`, whatever it says, gives a delay or none.
        #[test]
        fn any_retry_after(text in prop_oneof!["\\PC{0,40}", "[0-9]{0,30}"]) {
            let policy = RetryPolicy {
                initial_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_secs(1),
                max_attempts: 3,
                max_age: Duration::from_secs(60),
                dead_letter_on: Vec::new(),
            };
            let _ = policy.next_delay(1, SystemTime::now(), parse_retry_after(&text));
        }
    }
}

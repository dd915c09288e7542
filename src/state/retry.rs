//! The queue's retry policy, pure: whether a failed job is tried again
//! (by its failure kind and the attempts it has left, never by the words
//! of its error), and how long it waits first. [`Queue::finish`] applies
//! it.
//!
//! [`Queue::finish`]: super::queue::Queue::finish

use std::time::Duration;

use crate::model::FailureKind;

/// After the `attempts`-th attempt failed with `kind`: how long to wait
/// before the next, or `None` when the failure is final (a kind not worth
/// retrying, or no attempt left of `max_attempts`).
pub fn retry_after(
    kind: FailureKind,
    attempts: u32,
    max_attempts: u32,
    base: Duration,
) -> Option<Duration> {
    (kind.is_retryable() && attempts < max_attempts).then(|| backoff(base, attempts))
}

/// Exponential backoff after the `attempt`-th failure: base, 2·base, 4·base…
/// capped at an hour.
pub fn backoff(base: Duration, attempt: u32) -> Duration {
    (base * 2u32.saturating_pow(attempt.saturating_sub(1).min(16))).min(Duration::from_secs(3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_secs(30);

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(BASE, 1), Duration::from_secs(30));
        assert_eq!(backoff(BASE, 2), Duration::from_secs(60));
        assert_eq!(backoff(BASE, 3), Duration::from_secs(120));
        assert_eq!(backoff(BASE, 30), Duration::from_secs(3600));
    }

    #[test]
    fn an_infrastructure_failure_is_retried_after_the_backoff_while_attempts_remain() {
        assert_eq!(
            retry_after(FailureKind::Infra, 1, 3, BASE),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            retry_after(FailureKind::Infra, 2, 3, BASE),
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn a_cancelled_build_is_retried() {
        assert_eq!(
            retry_after(FailureKind::Cancelled, 1, 2, BASE),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn the_last_attempt_is_final() {
        assert_eq!(retry_after(FailureKind::Infra, 3, 3, BASE), None);
        assert_eq!(retry_after(FailureKind::Infra, 4, 3, BASE), None);
    }

    #[test]
    fn recipe_and_no_builder_failures_are_final_from_the_first_attempt() {
        assert_eq!(retry_after(FailureKind::Recipe, 1, 3, BASE), None);
        assert_eq!(retry_after(FailureKind::NoBuilder, 1, 3, BASE), None);
    }
}

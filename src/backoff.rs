//! Exponential backoff for everything that retries: the client's watch, the
//! agent and the Redis subscriber use this one definition.

use std::time::Duration;

/// Waits that start at `min`, double with each attempt and stop growing at
/// `max`. With jitter each wait is cut by up to half, at random, so a fleet
/// of clients that failed together does not retry in step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first wait.
    pub min: Duration,
    /// The longest wait.
    pub max: Duration,
    /// Whether each wait is shortened by a random share of up to 50%.
    pub jitter: bool,
}

impl Backoff {
    /// Doubling from `min` to `max`, without jitter.
    pub const fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            jitter: false,
        }
    }

    /// The same waits, each cut by up to half at random.
    pub const fn jittered(self) -> Self {
        Self {
            jitter: true,
            ..self
        }
    }

    /// The wait before retry number `attempt`, counting from 0:
    /// `min * 2^attempt`, at most `max` (before jitter).
    pub fn delay(&self, attempt: u32) -> Duration {
        // 2^16 times any sensible `min` is past any sensible `max`.
        let wait = self
            .min
            .saturating_mul(2u32.saturating_pow(attempt.min(16)))
            .min(self.max);
        if self.jitter {
            wait.mul_f64(rand::random_range(0.5..=1.0))
        } else {
            wait
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        assert_eq!(b.delay(0), Duration::from_millis(100));
        assert_eq!(b.delay(3), Duration::from_millis(800));
        assert_eq!(b.delay(5), Duration::from_secs(2));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(2));
    }

    #[test]
    fn jitter_cuts_at_most_half() {
        let b = Backoff::new(Duration::from_millis(200), Duration::from_secs(10)).jittered();
        for attempt in 0..40 {
            let d = b.delay(attempt);
            assert!(d <= Duration::from_secs(10), "{attempt}: {d:?}");
            assert!(d >= Duration::from_millis(100), "{attempt}: {d:?}");
        }
        assert!(b.delay(30) >= Duration::from_secs(5));
    }
}

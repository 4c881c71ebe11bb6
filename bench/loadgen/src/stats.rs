//! What one scenario measured: successes with their latencies, and errors
//! by kind.

use std::collections::BTreeMap;
use std::time::Duration;

/// Why one call did not count as a success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The call ended with a non-OK gRPC status.
    Status(tonic::Code),
    /// The call succeeded but the response was not what the scenario
    /// expects (e.g. fewer nodes than were seeded).
    BadResponse(&'static str),
    /// No response within the call timeout (the call was abandoned).
    TimedOut,
}

impl Failure {
    /// A short label for reports, e.g. `Unavailable` or `bad: node count`.
    pub fn label(&self) -> String {
        match self {
            Failure::Status(code) => format!("{code:?}"),
            Failure::BadResponse(what) => format!("bad: {what}"),
            Failure::TimedOut => "client timeout".into(),
        }
    }
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        Failure::Status(status.code())
    }
}

/// Calls recorded by one load task or by a whole scenario.
#[derive(Debug, Default)]
pub struct Recorder {
    /// Latency of every successful call, in nanoseconds.
    latencies: Vec<u64>,
    /// Failed calls by kind (the [`Failure::label`]).
    errors: BTreeMap<String, u64>,
}

impl Recorder {
    /// Records one call and how it ended.
    pub fn record(&mut self, latency: Duration, result: Result<(), Failure>) {
        match result {
            Ok(()) => self.latencies.push(latency.as_nanos() as u64),
            Err(failure) => *self.errors.entry(failure.label()).or_default() += 1,
        }
    }

    /// Adds another recorder's calls to this one.
    pub fn merge(&mut self, other: Recorder) {
        self.latencies.extend(other.latencies);
        for (failure, n) in other.errors {
            *self.errors.entry(failure).or_default() += n;
        }
    }

    /// Number of failed calls.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Summarises the calls of a window `window` long.
    pub fn summary(mut self, window: Duration) -> Summary {
        self.latencies.sort_unstable();
        let ok = self.latencies.len() as u64;
        Summary {
            ok,
            errors: self.error_count(),
            error_kinds: self.errors.into_iter().collect(),
            ops_per_sec: ok as f64 / window.as_secs_f64(),
            p50: percentile(&self.latencies, 0.50),
            p99: percentile(&self.latencies, 0.99),
            max: self.latencies.last().copied().map(Duration::from_nanos),
        }
    }
}

/// The figures reported for one scenario.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Successful calls completed in the measured window.
    pub ok: u64,
    /// Failed calls completed in the measured window.
    pub errors: u64,
    /// Failed calls by kind.
    pub error_kinds: Vec<(String, u64)>,
    /// Successful calls per second of the measured window.
    pub ops_per_sec: f64,
    /// Median latency of the successful calls.
    pub p50: Option<Duration>,
    /// 99th percentile latency of the successful calls.
    pub p99: Option<Duration>,
    /// Slowest successful call.
    pub max: Option<Duration>,
}

/// The `q` quantile (0..=1) of sorted nanosecond samples, nearest rank.
fn percentile(sorted: &[u64], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted.len()) - 1;
    Some(Duration::from_nanos(sorted[index]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&samples, 0.50), Some(Duration::from_nanos(50)));
        assert_eq!(percentile(&samples, 0.99), Some(Duration::from_nanos(99)));
        assert_eq!(percentile(&[7], 0.99), Some(Duration::from_nanos(7)));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn errors_are_counted_by_kind() {
        let mut a = Recorder::default();
        a.record(Duration::from_micros(10), Ok(()));
        a.record(
            Duration::from_micros(10),
            Err(Failure::Status(tonic::Code::Unavailable)),
        );
        let mut b = Recorder::default();
        b.record(
            Duration::from_micros(10),
            Err(Failure::BadResponse("node count")),
        );
        b.record(
            Duration::from_micros(30),
            Err(Failure::Status(tonic::Code::Unavailable)),
        );
        a.merge(b);
        let s = a.summary(Duration::from_secs(1));
        assert_eq!((s.ok, s.errors), (1, 3));
        assert_eq!(
            s.error_kinds,
            vec![
                ("Unavailable".to_string(), 2),
                ("bad: node count".to_string(), 1)
            ]
        );
    }
}

//! The closed-loop load driver shared by every scenario, so both systems
//! get exactly the same client machinery: `concurrency` tasks spread over
//! the given clients (one HTTP/2 connection each), each calling as fast as
//! responses come back, first through a warm-up that is not measured, then
//! through a measured window of fixed length.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::cpu::CpuWatch;
use crate::stats::{Failure, Recorder, Summary};

/// How long and how hard to drive one scenario.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Concurrent calls in flight (one task each).
    pub concurrency: usize,
    /// Calling time before measuring starts.
    pub warmup: Duration,
    /// Length of the measured window.
    pub duration: Duration,
    /// A call taking longer than this is abandoned and counted as an error.
    pub call_timeout: Duration,
}

/// What one scenario measured.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Calls completed in the measured window.
    pub summary: Summary,
    /// Failed calls during the warm-up (not in `summary`).
    pub warmup_errors: u64,
    /// Cores used by each watched process during the window.
    pub cpu: Vec<Option<f64>>,
    /// Cores used by everything else on the machine during the window.
    pub other_cpu: Option<f64>,
    /// The server's resident memory with the load on (fan-out scenarios).
    pub rss_bytes: Option<u64>,
}

/// Drives `op` per `plan`. Task `i` uses `clients[i % clients.len()]`;
/// `op` gets a client and a sequence number unique across tasks (for
/// cycling through a pool of keys). A call counts in the window it
/// completes in; no call starts after the window ends.
///
/// # Panics
/// If `clients` is empty or a load task panics.
pub async fn run<C, F, Fut>(clients: &[C], plan: &Plan, cpu: &CpuWatch, op: F) -> Measured
where
    C: Clone + Send + 'static,
    F: Fn(C, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Failure>> + Send + 'static,
{
    assert!(!clients.is_empty(), "no clients to drive");
    let op = Arc::new(op);
    let seq = Arc::new(AtomicU64::new(0));
    let measure_from = Instant::now() + plan.warmup;
    let until = measure_from + plan.duration;

    let tasks: Vec<_> = (0..plan.concurrency)
        .map(|i| {
            let client = clients[i % clients.len()].clone();
            let op = Arc::clone(&op);
            let seq = Arc::clone(&seq);
            let call_timeout = plan.call_timeout;
            tokio::spawn(async move {
                let mut window = Recorder::default();
                let mut warmup_errors = 0;
                loop {
                    let started = Instant::now();
                    if started >= until {
                        break;
                    }
                    let n = seq.fetch_add(1, Ordering::Relaxed);
                    let result = tokio::time::timeout(call_timeout, op(client.clone(), n))
                        .await
                        .unwrap_or(Err(Failure::TimedOut));
                    let done = Instant::now();
                    if done < measure_from {
                        warmup_errors += u64::from(result.is_err());
                    } else if done < until {
                        window.record(done - started, result);
                    }
                }
                (window, warmup_errors)
            })
        })
        .collect();

    tokio::time::sleep_until(measure_from).await;
    let before = cpu.snapshot();
    tokio::time::sleep_until(until).await;
    let after = cpu.snapshot();

    let mut window = Recorder::default();
    let mut warmup_errors = 0;
    for task in tasks {
        let (recorded, errors) = task.await.expect("load task panicked");
        window.merge(recorded);
        warmup_errors += errors;
    }
    Measured {
        summary: window.summary(plan.duration),
        warmup_errors,
        cpu: cpu.cores(&before, &after, plan.duration),
        other_cpu: cpu.others(&before, &after, plan.duration),
        rss_bytes: None,
    }
}

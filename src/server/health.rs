//! Keeps `grpc.health.v1.Health` in step with the backend: SERVING while
//! the registry answers, NOT_SERVING within about a second of it failing.
//! One slow answer is no outage: a load balancer acting on health would
//! pull a healthy server that is busy (a RESYNC of every watcher, say), so
//! it takes [`FAILURES_TO_DOWN`] failed probes in a row.

use std::sync::Arc;
use std::time::Duration;

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::proto::v1::discovery_server::DiscoveryServer;
use crate::store::Registry;

use super::discovery::DiscoveryService;

/// How often the backend is pinged.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// How long one ping may take before it counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Failed probes in a row that make the backend down. A Redis that is
/// gone refuses at once, so three take about 0.5 s (two intervals); one
/// that stops answering takes three timeouts, 1.5 s (a late tick fires at
/// once). One success makes it up again.
const FAILURES_TO_DOWN: u32 = 3;

/// Probes `registry` forever and reports its state for the overall server
/// (`""`) and for `discovered.v1.Discovery`. Logs each change once.
pub async fn monitor(registry: Arc<dyn Registry>, reporter: HealthReporter) {
    let mut last: Option<bool> = None;
    let mut failures = 0;
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = match tokio::time::timeout(PROBE_TIMEOUT, registry.ping()).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("no answer within 500 ms".to_string()),
        };
        failures = if result.is_ok() { 0 } else { failures + 1 };
        let up = is_up(failures, last.is_some());
        if last == Some(up) {
            if let Err(e) = &result {
                tracing::debug!(error = %e, failures, "registry store probe failed");
            }
            continue;
        }
        report(&reporter, up).await;
        match result {
            Ok(()) if last.is_some() => {
                tracing::info!(store = %registry.describe(), "registry store is back: SERVING")
            }
            Ok(()) => tracing::debug!("registry store answers: SERVING"),
            Err(e) => tracing::warn!(error = %e, "registry store unreachable: NOT_SERVING"),
        }
        last = Some(up);
    }
}

/// Whether the backend counts as up after `failures` failed probes in a
/// row: down only after [`FAILURES_TO_DOWN`] of them, or at once when
/// nothing has been `reported` yet (a server that starts with Redis away
/// says so at its first probe).
fn is_up(failures: u32, reported: bool) -> bool {
    failures == 0 || (reported && failures < FAILURES_TO_DOWN)
}

/// Sets the status of the overall server (`""`) and of the Discovery
/// service.
async fn report(reporter: &HealthReporter, up: bool) {
    type Discovery = DiscoveryServer<DiscoveryService>;
    crate::metrics::metrics().store_up.set(i64::from(up));
    if up {
        reporter
            .set_service_status("", ServingStatus::Serving)
            .await;
        reporter.set_serving::<Discovery>().await;
    } else {
        reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
        reporter.set_not_serving::<Discovery>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_failed_probe_is_no_outage_but_three_in_a_row_are() {
        assert!(is_up(0, true));
        assert!(is_up(1, true));
        assert!(is_up(2, true));
        assert!(!is_up(3, true));
        assert!(!is_up(4, true));
        // The first probe reports what it finds.
        assert!(!is_up(1, false));
        assert!(is_up(0, false));
    }
}

//! The server's metrics, for Prometheus (`/metrics` on `--http-listen`).
//!
//! One set per process, created on first use: the code that counts (the
//! gRPC layer, watch and xDS streams, the stores' expiry, the read cache)
//! reaches it through [`metrics()`] without threading a handle through
//! every constructor. A process serves one registry, so process-wide is
//! what an operator reads; tests that run several servers in one process
//! compare before and after.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every metric the server keeps.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Finished gRPC calls by method and status code.
    pub grpc_requests: IntCounterVec,
    /// How long unary calls took, by method.
    pub grpc_duration: HistogramVec,
    /// Watch streams open now.
    pub watch_streams: IntGauge,
    /// xDS streams open now.
    pub xds_streams: IntGauge,
    /// Watch events sent to clients (every stream's, each counted).
    pub watch_events: IntCounter,
    /// RESYNC events sent to watch clients.
    pub watch_resyncs: IntCounter,
    /// xDS responses sent, by type (LDS, RDS, CDS, EDS).
    pub xds_responses: IntCounterVec,
    /// xDS responses clients rejected, by type.
    pub xds_nacks: IntCounterVec,
    /// Expiry sweeps this server ran.
    pub expiry_sweeps: IntCounter,
    /// Nodes whose TTL ran out (every expiry on the change feed).
    pub nodes_expired: IntCounter,
    /// From a node's deadline to its expiry event.
    pub expiry_lag: Histogram,
    /// Whether the store answers (1) or not (0), as the health service
    /// sees it.
    pub store_up: IntGauge,
    /// Times the store's Redis master changed under the server.
    pub store_failovers: IntCounter,
    /// Store commands that failed.
    pub store_errors: IntCounter,
    /// The store's connections by state (idle, in_use).
    pub store_pool: IntGaugeVec,
    /// Read cache answers found, by answer (nodes, service).
    pub cache_hits: IntCounterVec,
    /// Read cache answers not found, by answer.
    pub cache_misses: IntCounterVec,
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// Registers `metric` (a valid one: the names and labels are ours) and
/// hands it back.
fn register<M: Collector + Clone + 'static>(
    registry: &Registry,
    metric: Result<M, prometheus::Error>,
) -> M {
    let metric = metric.expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("registered once");
    metric
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(registry, IntCounter::new(name, help))
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels))
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(registry, IntGauge::new(name, help))
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process metrics registered once");
        // From 0.5 ms (a cached read) to 10 s (a call that waited out a
        // failover).
        let call_buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let grpc_duration = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "discovered_grpc_request_duration_seconds",
                    "How long unary gRPC calls took, from request to the end of the answer, by method",
                )
                .buckets(call_buckets),
                &["method"],
            ),
        );
        // The sweep runs every few hundred milliseconds: lags from 10 ms
        // to a minute (a store that was down when the node ran out).
        let expiry_lag = register(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "discovered_expiry_lag_seconds",
                    "From a node's deadline to its expiry event",
                )
                .buckets(vec![
                    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                ]),
            ),
        );
        let store_pool = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "discovered_store_pool_connections",
                    "Connections of the store's pool to Redis, by state (idle, in_use)",
                ),
                &["state"],
            ),
        );
        Self {
            grpc_requests: counter_vec(
                &registry,
                "discovered_grpc_requests_total",
                "Finished gRPC calls, by method and status code",
                &["method", "code"],
            ),
            grpc_duration,
            watch_streams: gauge(
                &registry,
                "discovered_watch_streams_open",
                "WatchService streams open now",
            ),
            xds_streams: gauge(
                &registry,
                "discovered_xds_streams_open",
                "xDS (ADS) streams open now",
            ),
            watch_events: counter(
                &registry,
                "discovered_watch_events_sent_total",
                "Events sent on WatchService streams (one per stream that sent it)",
            ),
            watch_resyncs: counter(
                &registry,
                "discovered_watch_resyncs_total",
                "RESYNC events sent on WatchService streams",
            ),
            xds_responses: counter_vec(
                &registry,
                "discovered_xds_responses_total",
                "xDS responses sent, by type (LDS, RDS, CDS, EDS)",
                &["type"],
            ),
            xds_nacks: counter_vec(
                &registry,
                "discovered_xds_nacks_total",
                "xDS responses a client rejected, by type",
                &["type"],
            ),
            expiry_sweeps: counter(
                &registry,
                "discovered_expiry_sweeps_total",
                "Expiry sweeps run by this server",
            ),
            nodes_expired: counter(
                &registry,
                "discovered_nodes_expired_total",
                "Nodes whose TTL ran out, as the change feed told this server (whichever server expired them)",
            ),
            expiry_lag,
            store_up: gauge(
                &registry,
                "discovered_store_up",
                "Whether the store answers (1) or not (0)",
            ),
            store_failovers: counter(
                &registry,
                "discovered_store_failovers_total",
                "Times the Redis master changed under this server (Sentinel)",
            ),
            store_errors: counter(
                &registry,
                "discovered_store_errors_total",
                "Store operations that failed (Redis unreachable, failing over, or an error)",
            ),
            store_pool,
            cache_hits: counter_vec(
                &registry,
                "discovered_read_cache_hits_total",
                "Reads answered from the read cache, by answer (nodes, service)",
                &["answer"],
            ),
            cache_misses: counter_vec(
                &registry,
                "discovered_read_cache_misses_total",
                "Reads the read cache could not answer, by answer (nodes, service)",
                &["answer"],
            ),
            registry,
        }
    }

    /// Every metric in Prometheus's text format.
    pub fn encode(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding the metrics failed: {e}\n"))
    }

    /// Counts a node's expiry, `lag` after its deadline.
    pub fn expired(&self, lag: Duration) {
        self.nodes_expired.inc();
        self.expiry_lag.observe(lag.as_secs_f64());
    }
}

/// Counts one open stream in `gauge` while it lives.
#[derive(Debug)]
pub struct OpenStream(&'static IntGauge);

impl OpenStream {
    /// One more open stream in `gauge`.
    pub fn new(gauge: &'static IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.dec();
    }
}

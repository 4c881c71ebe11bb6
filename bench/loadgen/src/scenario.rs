//! The scenarios: which call each makes and how it is compared.

use clap::ValueEnum;

/// A system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    /// discovered (gRPC server over Redis).
    Discovered,
    /// etcd v3.
    Etcd,
    /// The bare tonic server answering GetNodes with a fixed reply.
    Ceiling,
}

impl System {
    /// Name in reports.
    pub fn name(self) -> &'static str {
        match self {
            System::Discovered => "discovered",
            System::Etcd => "etcd",
            System::Ceiling => "ceiling",
        }
    }
}

/// One measured workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// discovered GetNodes of the seeded service.
    GetNodes,
    /// The ceiling server's GetNodes: one fixed answer of the same nodes.
    CeilingGetNodes,
    /// etcd Range of the seeded prefix, linearizable (etcd's default).
    RangeLinearizable,
    /// etcd Range of the seeded prefix, serializable (member-local).
    RangeSerializable,
    /// discovered RegisterNode with a TTL, over a pool of node names.
    RegisterNode,
    /// etcd Put attached to one lease, over the same pool of keys.
    PutLease,
    /// One change to 1,000 discovered WatchService streams.
    #[value(name = "fanout-1000")]
    Fanout1000,
    /// One change to 10,000 discovered WatchService streams.
    #[value(name = "fanout-10000")]
    Fanout10000,
    /// One Put to 1,000 etcd Watch streams.
    #[value(name = "etcd-fanout-1000")]
    EtcdFanout1000,
    /// One Put to 10,000 etcd Watch streams.
    #[value(name = "etcd-fanout-10000")]
    EtcdFanout10000,
    /// 10,000 discovered nodes expiring together: NODE_EXPIRED's lag.
    #[value(name = "expiry-10000")]
    Expiry10000,
    /// 10,000 etcd keys of one lease expiring: the DELETE events' lag.
    #[value(name = "etcd-expiry-10000")]
    EtcdExpiry10000,
}

impl Scenario {
    /// Every scenario, in run order: reads, then writes, each discovered
    /// first.
    pub const ALL: [Scenario; 12] = [
        Scenario::GetNodes,
        Scenario::CeilingGetNodes,
        Scenario::RangeLinearizable,
        Scenario::RangeSerializable,
        Scenario::RegisterNode,
        Scenario::PutLease,
        Scenario::Fanout1000,
        Scenario::EtcdFanout1000,
        Scenario::Fanout10000,
        Scenario::EtcdFanout10000,
        Scenario::Expiry10000,
        Scenario::EtcdExpiry10000,
    ];

    /// Watch streams of a fan-out scenario; `None` for the others.
    pub fn fanout_streams(self) -> Option<usize> {
        match self {
            Scenario::Fanout1000 | Scenario::EtcdFanout1000 => Some(1_000),
            Scenario::Fanout10000 | Scenario::EtcdFanout10000 => Some(10_000),
            _ => None,
        }
    }

    /// Nodes that expire together in an expiry scenario; `None` for the
    /// others.
    pub fn expiring_nodes(self) -> Option<usize> {
        match self {
            Scenario::Expiry10000 | Scenario::EtcdExpiry10000 => Some(10_000),
            _ => None,
        }
    }

    /// Whether it measures how late events arrive (fan-out, expiry)
    /// rather than calls per second.
    pub fn is_latency(self) -> bool {
        self.fanout_streams().is_some() || self.expiring_nodes().is_some()
    }

    /// etcd's scenario measuring the same as this discovered one.
    pub fn etcd_counterpart(self) -> Option<Scenario> {
        match self {
            Scenario::Fanout1000 => Some(Scenario::EtcdFanout1000),
            Scenario::Fanout10000 => Some(Scenario::EtcdFanout10000),
            Scenario::Expiry10000 => Some(Scenario::EtcdExpiry10000),
            _ => None,
        }
    }

    /// The system it calls.
    pub fn system(self) -> System {
        match self {
            Scenario::GetNodes
            | Scenario::RegisterNode
            | Scenario::Fanout1000
            | Scenario::Fanout10000
            | Scenario::Expiry10000 => System::Discovered,
            Scenario::CeilingGetNodes => System::Ceiling,
            _ => System::Etcd,
        }
    }

    /// Description in reports.
    pub fn label(self) -> &'static str {
        match self {
            Scenario::GetNodes => "read: GetNodes",
            Scenario::CeilingGetNodes => "read: GetNodes, fixed answer (ceiling)",
            Scenario::RangeLinearizable => "read: Range prefix, linearizable",
            Scenario::RangeSerializable => "read: Range prefix, serializable",
            Scenario::RegisterNode => "write: RegisterNode ttl",
            Scenario::PutLease => "write: Put with lease",
            Scenario::Fanout1000 => "fan-out: 1 change to 1,000 WatchService streams",
            Scenario::Fanout10000 => "fan-out: 1 change to 10,000 WatchService streams",
            Scenario::EtcdFanout1000 => "fan-out: 1 Put to 1,000 Watch streams",
            Scenario::EtcdFanout10000 => "fan-out: 1 Put to 10,000 Watch streams",
            Scenario::Expiry10000 => "expiry: 10,000 nodes expiring together (NODE_EXPIRED lag)",
            Scenario::EtcdExpiry10000 => "expiry: 10,000 keys of one lease (DELETE lag)",
        }
    }

    /// Short name in the JSON output (the CLI value).
    pub fn id(self) -> &'static str {
        match self {
            Scenario::GetNodes => "get-nodes",
            Scenario::CeilingGetNodes => "ceiling-get-nodes",
            Scenario::RangeLinearizable => "range-linearizable",
            Scenario::RangeSerializable => "range-serializable",
            Scenario::RegisterNode => "register-node",
            Scenario::PutLease => "put-lease",
            Scenario::Fanout1000 => "fanout-1000",
            Scenario::Fanout10000 => "fanout-10000",
            Scenario::EtcdFanout1000 => "etcd-fanout-1000",
            Scenario::EtcdFanout10000 => "etcd-fanout-10000",
            Scenario::Expiry10000 => "expiry-10000",
            Scenario::EtcdExpiry10000 => "etcd-expiry-10000",
        }
    }
}

/// A target: discovered's figure over the best of the comparable ones
/// (etcd's, or the ceiling's).
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// What is compared, in reports.
    pub label: &'static str,
    /// The discovered scenario.
    pub discovered: Scenario,
    /// The scenarios compared with (etcd's, or the ceiling); the fastest
    /// of those that ran counts.
    pub etcd: &'static [Scenario],
    /// The ratio discovered must reach.
    pub min_ratio: f64,
}

/// The project's targets.
pub const TARGETS: [Target; 3] = [
    Target {
        label: "GetNodes vs etcd's faster Range",
        discovered: Scenario::GetNodes,
        etcd: &[Scenario::RangeLinearizable, Scenario::RangeSerializable],
        min_ratio: 4.0,
    },
    Target {
        label: "GetNodes vs the ceiling (bare tonic, fixed answer)",
        discovered: Scenario::GetNodes,
        etcd: &[Scenario::CeilingGetNodes],
        min_ratio: 0.6,
    },
    Target {
        label: "RegisterNode vs etcd Put with lease",
        discovered: Scenario::RegisterNode,
        etcd: &[Scenario::PutLease],
        min_ratio: 1.5,
    },
];

/// A bound on one of discovered's latency figures (fan-out, expiry).
#[derive(Debug, Clone, Copy)]
pub struct LatencyTarget {
    /// The fan-out or expiry scenario.
    pub scenario: Scenario,
    /// Most p99 delivery time, milliseconds.
    pub max_p99_ms: f64,
    /// Most server RSS with the streams open, MB (10^6 bytes).
    pub max_rss_mb: Option<f64>,
}

/// The fan-out and expiry targets (issue 14).
pub const LATENCY_TARGETS: [LatencyTarget; 3] = [
    LatencyTarget {
        scenario: Scenario::Fanout1000,
        max_p99_ms: 10.0,
        max_rss_mb: None,
    },
    LatencyTarget {
        scenario: Scenario::Fanout10000,
        max_p99_ms: 50.0,
        max_rss_mb: Some(150.0),
    },
    LatencyTarget {
        scenario: Scenario::Expiry10000,
        max_p99_ms: 1000.0,
        max_rss_mb: None,
    },
];

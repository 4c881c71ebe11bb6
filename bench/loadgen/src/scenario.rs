//! The scenarios: which call each makes and how it is compared.

use clap::ValueEnum;

/// A system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    /// discovered (gRPC server over Redis).
    Discovered,
    /// etcd v3.
    Etcd,
}

impl System {
    /// Name in reports.
    pub fn name(self) -> &'static str {
        match self {
            System::Discovered => "discovered",
            System::Etcd => "etcd",
        }
    }
}

/// One measured workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// discovered GetNodes of the seeded service.
    GetNodes,
    /// etcd Range of the seeded prefix, linearizable (etcd's default).
    RangeLinearizable,
    /// etcd Range of the seeded prefix, serializable (member-local).
    RangeSerializable,
    /// discovered RegisterNode with a TTL, over a pool of node names.
    RegisterNode,
    /// etcd Put attached to one lease, over the same pool of keys.
    PutLease,
}

impl Scenario {
    /// Every scenario, in run order: reads, then writes, each discovered
    /// first.
    pub const ALL: [Scenario; 5] = [
        Scenario::GetNodes,
        Scenario::RangeLinearizable,
        Scenario::RangeSerializable,
        Scenario::RegisterNode,
        Scenario::PutLease,
    ];

    /// The system it calls.
    pub fn system(self) -> System {
        match self {
            Scenario::GetNodes | Scenario::RegisterNode => System::Discovered,
            _ => System::Etcd,
        }
    }

    /// Description in reports.
    pub fn label(self) -> &'static str {
        match self {
            Scenario::GetNodes => "read: GetNodes",
            Scenario::RangeLinearizable => "read: Range prefix, linearizable",
            Scenario::RangeSerializable => "read: Range prefix, serializable",
            Scenario::RegisterNode => "write: RegisterNode ttl",
            Scenario::PutLease => "write: Put with lease",
        }
    }

    /// Short name in the JSON output (the CLI value).
    pub fn id(self) -> &'static str {
        match self {
            Scenario::GetNodes => "get-nodes",
            Scenario::RangeLinearizable => "range-linearizable",
            Scenario::RangeSerializable => "range-serializable",
            Scenario::RegisterNode => "register-node",
            Scenario::PutLease => "put-lease",
        }
    }
}

/// A target: discovered's figure over the best of etcd's comparable ones.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// What is compared, in reports.
    pub label: &'static str,
    /// The discovered scenario.
    pub discovered: Scenario,
    /// The etcd scenarios; the fastest of those that ran counts.
    pub etcd: &'static [Scenario],
    /// The ratio discovered must reach.
    pub min_ratio: f64,
}

/// The project's targets.
pub const TARGETS: [Target; 2] = [
    Target {
        label: "GetNodes vs etcd's faster Range",
        discovered: Scenario::GetNodes,
        etcd: &[Scenario::RangeLinearizable, Scenario::RangeSerializable],
        min_ratio: 4.0,
    },
    Target {
        label: "RegisterNode vs etcd Put with lease",
        discovered: Scenario::RegisterNode,
        etcd: &[Scenario::PutLease],
        min_ratio: 1.2,
    },
];

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
}

impl Scenario {
    /// Every scenario, in run order: reads, then writes, each discovered
    /// first.
    pub const ALL: [Scenario; 6] = [
        Scenario::GetNodes,
        Scenario::CeilingGetNodes,
        Scenario::RangeLinearizable,
        Scenario::RangeSerializable,
        Scenario::RegisterNode,
        Scenario::PutLease,
    ];

    /// The system it calls.
    pub fn system(self) -> System {
        match self {
            Scenario::GetNodes | Scenario::RegisterNode => System::Discovered,
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
        min_ratio: 1.2,
    },
];

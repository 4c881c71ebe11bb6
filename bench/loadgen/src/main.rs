//! `loadgen`: drives discovered and etcd with the same closed-loop gRPC
//! load and reports throughput, latency and errors side by side.
//!
//! It seeds a read set in each system (a service of `--nodes` nodes), runs
//! each scenario for a warm-up plus a measured window, checks the gRPC
//! status and the content of every response, and prints a markdown report
//! with the ratios against the project's targets. See `bench/run.sh`,
//! which starts the servers and runs this.

mod ceiling;
mod cpu;
mod driver;
mod expiry;
mod fanout;
mod lean;
mod proto;
mod report;
mod scenario;
mod stats;
mod workload;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tonic::client::Grpc;
use tonic::transport::Channel;

use crate::cpu::{CpuWatch, Watched};
use crate::driver::Plan;
use crate::proto::discovered::discovery_client::DiscoveryClient;
use crate::proto::etcdserverpb::kv_client::KvClient;
use crate::report::Outcome;
use crate::scenario::{Scenario, System};
use crate::workload::{READ_SERVICE, WRITE_SERVICE};

/// Benchmarks discovered against etcd over gRPC.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// discovered's gRPC address, e.g. http://127.0.0.1:50051.
    #[arg(long)]
    discovered: Option<String>,

    /// etcd's client address, e.g. http://127.0.0.1:2379.
    #[arg(long)]
    etcd: Option<String>,

    /// The ceiling server's address (see --serve-ceiling), for the
    /// ceiling-get-nodes scenario.
    #[arg(long)]
    ceiling: Option<String>,

    /// Instead of benchmarking, serve the ceiling on this address: seed the
    /// read set in --discovered, take its GetNodes answer once and answer
    /// every GetNodes with it.
    #[arg(long, value_name = "ADDR")]
    serve_ceiling: Option<std::net::SocketAddr>,

    /// Scenarios to run, in this order [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    scenarios: Vec<Scenario>,

    /// Concurrent calls in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,

    /// HTTP/2 connections per system; calls are spread over them.
    #[arg(long, default_value_t = 4)]
    channels: usize,

    /// Unmeasured seconds of load before each measured window.
    #[arg(long, default_value_t = 2.0)]
    warmup_secs: f64,

    /// Measured seconds per scenario.
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,

    /// Times to run the whole list of scenarios; each scenario reports its
    /// median round (by ops/s) and the range over all rounds.
    #[arg(long, default_value_t = 1)]
    rounds: usize,

    /// Nodes in the service the read scenarios fetch (0 measures the bare
    /// cost of a call, with --read-service naming an empty service).
    #[arg(long, default_value_t = 20)]
    nodes: u64,

    /// The service the read scenarios fetch (etcd: its key prefix).
    #[arg(long, default_value = READ_SERVICE)]
    read_service: String,

    /// Distinct node names the write scenarios cycle through.
    #[arg(long, default_value_t = 1000)]
    pool: u64,

    /// TTL in seconds of the written nodes (etcd: of the lease).
    #[arg(long, default_value_t = 30)]
    ttl: i64,

    /// Writes per fan-out scenario, each one change to every stream.
    #[arg(long, default_value_t = 20)]
    fanout_writes: u64,

    /// Milliseconds between two fan-out writes.
    #[arg(long, default_value_t = 200)]
    fanout_spacing_ms: u64,

    /// TTL in seconds of the nodes (etcd: of the lease) in the expiry
    /// scenarios: long enough to write them all first (etcd takes about
    /// 9 s for 10,000 keys on one lease here, discovered about 1 s).
    #[arg(long, default_value_t = 20)]
    expiry_ttl: i64,

    /// Skip seeding the read set (it must be there already).
    #[arg(long)]
    no_seed: bool,

    /// Only seed the read set in each system given, then exit (for
    /// clients other than this one, such as h2load).
    #[arg(long, conflicts_with = "no_seed")]
    seed_only: bool,

    /// Also report the CPU use of a process, as [SYSTEM/]NAME=PID, e.g.
    /// discovered/redis=1234; a SYSTEM (discovered or etcd) counts the
    /// process in that system's server CPU per call. Repeatable.
    #[arg(long = "watch", value_parser = Watched::parse)]
    watch: Vec<Watched>,

    /// Write the results as JSON to this file too.
    #[arg(long)]
    json: Option<PathBuf>,

    /// Worker threads of the load generator's runtime [default: one per core].
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        runtime.worker_threads(n);
    }
    let runtime = runtime.enable_all().build()?;
    if let Some(listen) = args.serve_ceiling {
        let discovered = args
            .discovered
            .as_deref()
            .context("--serve-ceiling needs --discovered")?;
        return runtime.block_on(ceiling::serve(
            listen,
            discovered,
            &args.read_service,
            args.nodes,
        ));
    }
    runtime.block_on(run(args))
}

/// The connections to each system, made only for systems some scenario
/// uses.
struct Connections {
    discovered: Vec<Channel>,
    etcd: Vec<Channel>,
    ceiling: Vec<Channel>,
}

impl Connections {
    async fn connect(args: &Args, scenarios: &[Scenario]) -> anyhow::Result<Self> {
        // Fan-out and expiry scenarios open connections of their own.
        let wants = |system| {
            scenarios
                .iter()
                .any(|s| s.system() == system && !s.is_latency())
        };
        let open = async |url: &Option<String>, system: System| -> anyhow::Result<Vec<Channel>> {
            if !wants(system) {
                return Ok(Vec::new());
            }
            let url = url.as_deref().with_context(|| {
                format!("--{} is required for the chosen scenarios", system.name())
            })?;
            workload::connect(url, args.channels).await
        };
        Ok(Self {
            discovered: open(&args.discovered, System::Discovered).await?,
            etcd: open(&args.etcd, System::Etcd).await?,
            ceiling: open(&args.ceiling, System::Ceiling).await?,
        })
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    anyhow::ensure!(args.channels > 0, "--channels must be at least 1");
    anyhow::ensure!(args.pool > 0, "--pool must be at least 1");
    anyhow::ensure!(args.ttl > 0, "--ttl must be at least 1");
    anyhow::ensure!(args.rounds > 0, "--rounds must be at least 1");
    if args.seed_only {
        return seed_only(&args).await;
    }
    let scenarios = if args.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        args.scenarios.clone()
    };
    let plan = Plan {
        concurrency: args.concurrency,
        warmup: Duration::from_secs_f64(args.warmup_secs),
        duration: Duration::from_secs_f64(args.duration_secs),
        call_timeout: Duration::from_secs(5),
    };
    let mut watched = args.watch.clone();
    watched.push(Watched::this_process());
    let cpu = CpuWatch::new(watched);
    let conns = Connections::connect(&args, &scenarios).await?;

    if !args.no_seed {
        if !conns.discovered.is_empty() {
            workload::seed_discovered(conns.discovered[0].clone(), &args.read_service, args.nodes)
                .await?;
        }
        if !conns.etcd.is_empty() {
            workload::seed_etcd(conns.etcd[0].clone(), &args.read_service, args.nodes).await?;
        }
    }

    let sizes = workload::record_sizes(args.ttl);
    println!(
        "concurrency {} over {} HTTP/2 connections per system; {:.0} s warm-up + {:.0} s measured per scenario; \
         read set {} nodes; write pool {} names, ttl {} s; node record: RegisterNode request {} B, etcd JSON value {} B",
        plan.concurrency,
        args.channels,
        plan.warmup.as_secs_f64(),
        plan.duration.as_secs_f64(),
        args.nodes,
        args.pool,
        args.ttl,
        sizes.register_request,
        sizes.etcd_value,
    );
    println!();

    // Rounds interleave the scenarios, so that a slow spell of the
    // machine hits both systems rather than one.
    let mut runs: Vec<Vec<driver::Measured>> = vec![Vec::new(); scenarios.len()];
    for round in 1..=args.rounds {
        for (scenario, runs) in scenarios.iter().zip(&mut runs) {
            eprintln!(
                "round {round}/{}: {} {} ...",
                args.rounds,
                scenario.system().name(),
                scenario.label()
            );
            let measured = run_scenario(*scenario, &args, &plan, &cpu, &conns).await?;
            eprintln!(
                "  {:.0} ops/s, {} errors",
                measured.summary.ops_per_sec, measured.summary.errors
            );
            runs.push(measured);
        }
    }
    let outcomes: Vec<Outcome> = scenarios
        .iter()
        .zip(runs)
        .map(|(scenario, runs)| Outcome::median_of(*scenario, runs))
        .collect();

    print!("{}", report::markdown(&outcomes, cpu.procs()));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report::json(&outcomes, cpu.procs()))?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

async fn run_scenario(
    scenario: Scenario,
    args: &Args,
    plan: &Plan,
    cpu: &CpuWatch,
    conns: &Connections,
) -> anyhow::Result<driver::Measured> {
    let expected = args.nodes as usize;
    let pool = args.pool;
    let measured = match scenario {
        Scenario::GetNodes | Scenario::CeilingGetNodes => {
            let channels = if scenario == Scenario::GetNodes {
                &conns.discovered
            } else {
                &conns.ceiling
            };
            let clients: Vec<_> = channels.iter().cloned().map(Grpc::new).collect();
            let request = workload::get_nodes_request(&args.read_service);
            driver::run(&clients, plan, cpu, move |client, _| {
                workload::get_nodes(client, request.clone(), expected)
            })
            .await
        }
        Scenario::RangeLinearizable | Scenario::RangeSerializable => {
            let clients: Vec<_> = conns.etcd.iter().cloned().map(Grpc::new).collect();
            let serializable = scenario == Scenario::RangeSerializable;
            let request =
                workload::range_request(&workload::etcd_prefix(&args.read_service), serializable);
            driver::run(&clients, plan, cpu, move |client, _| {
                workload::range(client, request.clone(), expected)
            })
            .await
        }
        Scenario::RegisterNode => {
            let clients: Vec<_> = conns
                .discovered
                .iter()
                .cloned()
                .map(DiscoveryClient::new)
                .collect();
            let requests: Arc<Vec<_>> = Arc::new(
                (0..pool)
                    .map(|i| workload::register_request(WRITE_SERVICE, i, args.ttl))
                    .collect(),
            );
            driver::run(&clients, plan, cpu, move |client, n| {
                workload::register_node(client, requests[(n % pool) as usize].clone())
            })
            .await
        }
        Scenario::PutLease => {
            // One lease for every put, granted now and long enough to
            // outlive the scenario (an expired lease fails every put).
            let window = (plan.warmup + plan.duration).as_secs() as i64;
            let lease_ttl = args.ttl.max(window + 30);
            let lease = workload::grant_lease(conns.etcd[0].clone(), lease_ttl).await?;
            let clients: Vec<_> = conns.etcd.iter().cloned().map(KvClient::new).collect();
            let requests: Arc<Vec<_>> = Arc::new(
                (0..pool)
                    .map(|i| workload::put_request(WRITE_SERVICE, i, args.ttl, lease))
                    .collect(),
            );
            driver::run(&clients, plan, cpu, move |client, n| {
                workload::put(client, requests[(n % pool) as usize].clone())
            })
            .await
        }
        Scenario::Fanout1000
        | Scenario::Fanout10000
        | Scenario::EtcdFanout1000
        | Scenario::EtcdFanout10000 => {
            let (target, url, pid) = watched_server(scenario, args)?;
            let fanout_plan = fanout::FanoutPlan {
                streams: scenario.fanout_streams().unwrap_or(1),
                writes: args.fanout_writes,
                spacing: Duration::from_millis(args.fanout_spacing_ms),
                settle: Duration::from_secs(10),
                open_timeout: Duration::from_secs(120),
            };
            fanout::run(target, url, &fanout_plan, cpu, pid).await?
        }
        Scenario::Expiry10000 | Scenario::EtcdExpiry10000 => {
            let (target, url, pid) = watched_server(scenario, args)?;
            let expiry_plan = expiry::ExpiryPlan {
                nodes: scenario.expiring_nodes().unwrap_or(1),
                ttl_secs: args.expiry_ttl,
                concurrency: args.concurrency,
                settle: Duration::from_secs(30),
            };
            expiry::run(target, url, &expiry_plan, cpu, pid).await?
        }
    };
    Ok(measured)
}

/// For a fan-out or expiry scenario: which system it watches, its address,
/// and the PID of its server process whose memory counts (the watched
/// process named after the system), if given.
fn watched_server(
    scenario: Scenario,
    args: &Args,
) -> anyhow::Result<(fanout::Target, &str, Option<u32>)> {
    let system = scenario.system();
    let (target, url) = match system {
        System::Etcd => (fanout::Target::Etcd, &args.etcd),
        _ => (fanout::Target::Discovered, &args.discovered),
    };
    let url = url
        .as_deref()
        .with_context(|| format!("--{} is required for the chosen scenarios", system.name()))?;
    let pid = args
        .watch
        .iter()
        .find(|w| w.name == system.name())
        .and_then(|w| w.pid);
    Ok((target, url, pid))
}

/// Seeds the read set in every system whose address is given.
async fn seed_only(args: &Args) -> anyhow::Result<()> {
    if let Some(url) = &args.discovered {
        let channel = workload::connect(url, 1).await?.remove(0);
        workload::seed_discovered(channel, &args.read_service, args.nodes).await?;
    }
    if let Some(url) = &args.etcd {
        let channel = workload::connect(url, 1).await?.remove(0);
        workload::seed_etcd(channel, &args.read_service, args.nodes).await?;
    }
    Ok(())
}

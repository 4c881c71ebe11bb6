//! Request bodies that do not decode (issue 11): random bytes, mutated
//! valid bodies, invalid UTF-8 in a string field, a wrong wire type and
//! nesting past prost's recursion limit, sent as raw gRPC frames over a real
//! HTTP/2 connection to every RPC of `discovered.v1.Discovery`. Each one is
//! the caller's error (INVALID_ARGUMENT naming the message), never
//! INTERNAL; none changes what is stored; the server still answers after.
//!
//! The cases come from a fixed-seed PRNG, so a failure is reproducible. A
//! generated body that happens to decode (an empty one, a mutant that only
//! touched a value) is a valid request: it is sent too, after the check that
//! nothing changed, and only has to get a status other than INTERNAL.
//!
//! The suite sends 3,894 cases. `DISCOVERED_FUZZ_CASES` (a total, spread
//! over the RPCs like the default) and `DISCOVERED_FUZZ_SEED` send others:
//! `bench/fuzz.sh` sends a million. Cases are made, sent and checked in
//! batches of [`BATCH`], the registry put back to its seed between batches,
//! so memory stays flat whatever the count. A summary line (counts per
//! status, rate) is printed to stderr; a failure names the RPC, the case's
//! index and the seed.
use std::collections::BTreeMap;
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use discovered::proto::v1::*;
use futures::{StreamExt, stream};
use prost::Message;
use prost::bytes::{Buf, BufMut};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::common::*;

/// Random bodies per RPC.
const RANDOM_CASES: usize = 250;
/// Mutations of the valid body per RPC.
const MUTANT_CASES: usize = 100;
/// Hand-made bodies per RPC (see [`crafted`]), whatever the count.
const CRAFTED: usize = 4;
/// The seed of the suite's cases.
const DEFAULT_SEED: u64 = 11;
/// Cases made, sent and checked at a time: more than the default run, so
/// that one is a single batch.
const BATCH: usize = 10_000;
/// How often (in cases) a long run says how far it is.
const PROGRESS: usize = 100_000;
/// Calls in flight at once on the one connection.
const CONCURRENCY: usize = 16;
/// The group and service every valid body names, seeded before the run.
const GROUP: &str = "dec";
const SERVICE: &str = "svc";
const NODE: &str = "n1";

/// Sends and receives message bodies as they are, so a test can put any
/// bytes in a gRPC frame.
#[derive(Debug, Clone, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

/// One RPC of the Discovery service, as the cases need it.
struct Rpc {
    /// The method name, e.g. `RegisterNode`.
    method: &'static str,
    /// The full name of its request message.
    request: &'static str,
    /// A valid request body, naming the seeded group, service and node.
    valid: Vec<u8>,
    /// The number of a string field of the request.
    string_field: u32,
    /// Whether a body decodes as the request message (checked with the
    /// same generated types the server uses).
    decodes: fn(&[u8]) -> bool,
    /// Server streaming (WatchService) rather than unary.
    streaming: bool,
}

fn decodes<T: Message + Default>(body: &[u8]) -> bool {
    T::decode(body).is_ok()
}

/// An [`Rpc`] whose valid body is `valid`.
fn rpc<T: Message + Default + prost::Name>(method: &'static str, valid: T) -> Rpc {
    Rpc {
        method,
        request: leak(T::full_name()),
        valid: valid.encode_to_vec(),
        string_field: 1,
        decodes: decodes::<T>,
        streaming: false,
    }
}

/// An [`Rpc`] whose valid body has a map field, `map_field`: its entries
/// are put in a fixed order. prost encodes a map (a `HashMap`) in the
/// order of its iteration, which changes from run to run; the mutants of
/// such a body, and whether they decode, would change with it, and a seed
/// would not make the same cases again.
fn rpc_with_map<T>(method: &'static str, valid: T, map_field: u32) -> Rpc
where
    T: Message + Default + prost::Name + PartialEq + std::fmt::Debug,
{
    let mut rpc = rpc(method, T::default());
    rpc.valid = sorted_map(&valid.encode_to_vec(), map_field);
    assert_eq!(T::decode(&rpc.valid[..]).expect("sorted body"), valid);
    rpc
}

/// `body` with the entries of its map field `field` (each one a record of
/// that field) sorted by their bytes, in the places they had.
fn sorted_map(body: &[u8], field: u32) -> Vec<u8> {
    let mut records = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let start = body.len() - rest.len();
        let key = prost::encoding::decode_varint(&mut rest).expect("key");
        let skip = match key & 7 {
            0 => {
                prost::encoding::decode_varint(&mut rest).expect("varint");
                0
            }
            1 => 8,
            2 => usize::try_from(prost::encoding::decode_varint(&mut rest).expect("length"))
                .expect("length"),
            5 => 4,
            other => panic!("wire type {other} in a valid body"),
        };
        rest = &rest[skip..];
        records.push((
            key >> 3 == u64::from(field),
            &body[start..body.len() - rest.len()],
        ));
    }
    let mut entries: Vec<&[u8]> = records.iter().filter(|r| r.0).map(|r| r.1).collect();
    entries.sort();
    let mut entries = entries.into_iter();
    let mut out = Vec::with_capacity(body.len());
    for (is_entry, record) in records {
        out.extend_from_slice(if is_entry {
            entries.next().expect("entry")
        } else {
            record
        });
    }
    out
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// Every RPC of `discovered.v1.Discovery`.
fn rpcs() -> Vec<Rpc> {
    let mut all = writes();
    all.extend(reads());
    all
}

/// The RPCs that change the registry.
fn writes() -> Vec<Rpc> {
    let (g, s, n) = (GROUP.to_string(), SERVICE.to_string(), NODE.to_string());
    vec![
        // Their metadata (fields 9 and 13) is a map.
        rpc_with_map("RegisterService", full_service(GROUP, SERVICE), 9),
        rpc_with_map("RegisterNode", full_node(GROUP, SERVICE, NODE, 1), 13),
        rpc(
            "Heartbeat",
            HeartbeatRequest {
                service_group: g.clone(),
                service_name: s.clone(),
                node_name: n.clone(),
                ..Default::default()
            },
        ),
        rpc(
            "RemoveNode",
            RemoveNodeRequest {
                service_group: g.clone(),
                service_name: s.clone(),
                node_name: n,
                ..Default::default()
            },
        ),
        rpc(
            "RemoveService",
            RemoveServiceRequest {
                service_group: g.clone(),
                service_name: s,
                allow_missing: false,
            },
        ),
        rpc(
            "RemoveServiceGroup",
            RemoveServiceGroupRequest {
                service_group: g,
                allow_missing: false,
            },
        ),
    ]
}

/// The RPCs that read the registry.
fn reads() -> Vec<Rpc> {
    let (g, s) = (GROUP.to_string(), SERVICE.to_string());
    let list_groups = ListServiceGroupsRequest {
        page_size: 10,
        page_token: String::new(),
    };
    vec![
        rpc(
            "GetService",
            GetServiceRequest {
                service_group: g.clone(),
                service_name: s.clone(),
                ..Default::default()
            },
        ),
        rpc(
            "GetNodes",
            GetNodesRequest {
                service_group: g.clone(),
                service_name: s.clone(),
            },
        ),
        rpc(
            "ListServices",
            ListServicesRequest {
                service_group: g.clone(),
                page_size: 10,
                page_token: String::new(),
            },
        ),
        // Its field 1 is page_size; page_token (2) is its string.
        Rpc {
            string_field: 2,
            ..rpc("ListServiceGroups", list_groups)
        },
        Rpc {
            streaming: true,
            ..rpc(
                "WatchService",
                WatchServiceRequest {
                    service_group: g,
                    service_name: s,
                    send_initial: Some(true),
                },
            )
        },
    ]
}

/// A protobuf field key: field number and wire type.
fn key(field: u32, wire_type: u8) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_varint(u64::from(field << 3 | u32::from(wire_type)), &mut out);
    out
}

/// The hand-made bodies: each names one way a body fails to decode.
fn crafted(rpc: &Rpc) -> [Vec<u8>; CRAFTED] {
    // A string field holding "\xC3(": a UTF-8 lead byte without its
    // continuation.
    let mut bad_utf8 = key(rpc.string_field, 2);
    bad_utf8.extend([2, 0xC3, b'(']);
    // The string field sent as a varint.
    let mut wrong_wire_type = key(rpc.string_field, 0);
    wrong_wire_type.push(1);
    // An unknown field of 200 nested groups: past prost's recursion limit
    // of 100, which applies to skipped fields too.
    let mut deep = Vec::new();
    for _ in 0..200 {
        deep.extend(key(15, 3));
    }
    // A length prefix that runs past the end of the body.
    let mut truncated = key(rpc.string_field, 2);
    truncated.push(50);
    truncated.extend(b"short");
    [bad_utf8, wrong_wire_type, deep, truncated]
}

/// How many cases a run sends, and from which seed: by default
/// [`RANDOM_CASES`] and [`MUTANT_CASES`] per RPC from [`DEFAULT_SEED`];
/// `DISCOVERED_FUZZ_CASES` (the total) and `DISCOVERED_FUZZ_SEED` in the
/// environment change either (`bench/fuzz.sh` sends a million).
struct Plan {
    seed: u64,
    /// Per RPC, in the order of [`rpcs`]: its random bodies and its mutants
    /// (its [`CRAFTED`] bodies come on top).
    per_rpc: Vec<(usize, usize)>,
}

impl Plan {
    fn from_env(rpcs: usize) -> Plan {
        let seed = env_number("DISCOVERED_FUZZ_SEED").unwrap_or(DEFAULT_SEED);
        let per_rpc = match env_number("DISCOVERED_FUZZ_CASES") {
            None => vec![(RANDOM_CASES, MUTANT_CASES); rpcs],
            Some(total) => spread(usize::try_from(total).expect("case count"), rpcs),
        };
        Plan { seed, per_rpc }
    }

    /// Every case of the run.
    fn total(&self) -> usize {
        self.per_rpc.iter().map(|(r, m)| r + m + CRAFTED).sum()
    }

    /// The random bodies among them.
    fn random(&self) -> usize {
        self.per_rpc.iter().map(|(r, _)| r).sum()
    }

    /// What a failure message needs to make its case again.
    fn rerun(&self) -> String {
        format!(
            "DISCOVERED_FUZZ_SEED={} DISCOVERED_FUZZ_CASES={}",
            self.seed,
            self.total()
        )
    }

    /// The cases, made one at a time as they are taken.
    fn cases<'a>(&'a self, rpcs: &'a [Rpc]) -> Cases<'a> {
        Cases {
            rpcs,
            plan: self,
            rng: StdRng::seed_from_u64(self.seed),
            rpc: 0,
            k: 0,
            index: 0,
        }
    }
}

/// A variable of the environment as a number (`1_000_000` allowed); None
/// when it is unset or empty.
fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?.replace('_', "");
    if value.is_empty() {
        return None;
    }
    Some(
        value
            .parse()
            .unwrap_or_else(|e| panic!("{name}={value}: not a number: {e}")),
    )
}

/// `total` cases over `rpcs` RPCs: each RPC's crafted bodies, and the rest
/// split as evenly as it goes, random and mutant in the default proportion
/// (so 3,894, the default count, gives the default cases).
fn spread(total: usize, rpcs: usize) -> Vec<(usize, usize)> {
    let crafted = CRAFTED * rpcs;
    assert!(
        total >= crafted,
        "DISCOVERED_FUZZ_CASES={total}: at least {crafted}, the crafted bodies of every RPC"
    );
    let rest = total - crafted;
    (0..rpcs)
        .map(|i| {
            let share = rest / rpcs + usize::from(i < rest % rpcs);
            let random = share * RANDOM_CASES / (RANDOM_CASES + MUTANT_CASES);
            (random, share - random)
        })
        .collect()
}

/// One request of the run.
struct Case {
    /// Its place in the run: with the seed and the count, what makes it
    /// again.
    index: usize,
    /// Its RPC, an index in [`rpcs`].
    rpc: usize,
    body: Vec<u8>,
}

/// The cases of a [`Plan`], RPC after RPC: its random bodies, its mutants,
/// then its crafted bodies, all drawn from the one PRNG in that order, so a
/// seed and a count always give the same cases. Made lazily: a million
/// cases are never in memory at once.
struct Cases<'a> {
    rpcs: &'a [Rpc],
    plan: &'a Plan,
    rng: StdRng,
    /// The RPC being made, and its next case.
    rpc: usize,
    k: usize,
    /// The next case's index in the run.
    index: usize,
}

impl Iterator for Cases<'_> {
    type Item = Case;

    fn next(&mut self) -> Option<Case> {
        loop {
            let rpc = self.rpcs.get(self.rpc)?;
            let (random, mutants) = self.plan.per_rpc[self.rpc];
            let k = self.k;
            let body = if k < random {
                random_body(&mut self.rng)
            } else if k < random + mutants {
                mutant(&mut self.rng, &rpc.valid)
            } else if let Some(body) = crafted(rpc).into_iter().nth(k - random - mutants) {
                body
            } else {
                self.rpc += 1;
                self.k = 0;
                continue;
            };
            let case = Case {
                index: self.index,
                rpc: self.rpc,
                body,
            };
            self.k += 1;
            self.index += 1;
            return Some(case);
        }
    }
}

/// A random body, up to 100 bytes.
fn random_body(rng: &mut StdRng) -> Vec<u8> {
    let mut body = vec![0u8; rng.random_range(0..100)];
    rng.fill(&mut body[..]);
    body
}

/// The valid body with a byte flipped, a tail cut off or a byte inserted.
fn mutant(rng: &mut StdRng, valid: &[u8]) -> Vec<u8> {
    let mut body = valid.to_vec();
    let at = rng.random_range(0..body.len());
    match rng.random_range(0..3) {
        0 => body[at] ^= 1 << rng.random_range(0..8),
        1 => body.truncate(at),
        _ => body.insert(at, rng.random()),
    }
    body
}

/// Sends `body` as the one request message of `rpc` on its own call.
/// A streaming call that starts is dropped at once: only its status
/// matters here.
async fn send(channel: &Channel, rpc: &Rpc, body: Vec<u8>) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let path = format!("/discovered.v1.Discovery/{}", rpc.method)
        .parse()
        .expect("path");
    let request = tonic::Request::new(body);
    if rpc.streaming {
        grpc.server_streaming(request, path, RawCodec).await?;
    } else {
        grpc.unary(request, path, RawCodec).await?;
    }
    Ok(())
}

/// What the run has seen so far.
#[derive(Default)]
struct Tally {
    sent: usize,
    /// Cases whose body decodes as their RPC's request.
    decodable: usize,
    /// Answers per status code (`Ok` for a success).
    codes: BTreeMap<String, usize>,
    /// Answers that fail the test, and the first few of them in full.
    failures: usize,
    examples: Vec<String>,
}

impl Tally {
    /// One line: what was sent, what came back, how fast.
    fn summary(&self, plan: &Plan, elapsed: Duration) -> String {
        let codes: Vec<String> = self.codes.iter().map(|(c, n)| format!("{c} {n}")).collect();
        format!(
            "decoding: {} cases sent (seed {}), {} decoded as valid requests; \
             answers: {}; {} failures, {} server panics; {:.1} s, {:.0} cases/s",
            self.sent,
            plan.seed,
            self.decodable,
            codes.join(", "),
            self.failures,
            SERVER_PANICS.load(Ordering::Relaxed),
            elapsed.as_secs_f64(),
            self.sent as f64 / elapsed.as_secs_f64(),
        )
    }

    /// Fails the test, printing the summary, if any answer so far was
    /// wrong or the server panicked.
    fn check(&self, plan: &Plan, started: Instant) {
        let panics = SERVER_PANICS.load(Ordering::Relaxed);
        if self.failures == 0 && panics == 0 {
            return;
        }
        eprintln!("{}", self.summary(plan, started.elapsed()));
        panic!(
            "{} wrong answers and {panics} panics on the server's threads \
             (to make the same cases: {}), e.g.:\n{}",
            self.failures,
            plan.rerun(),
            self.examples.join("\n")
        );
    }
}

/// Whether an answer is right for a case: `None`, or what is wrong.
type Judge = fn(&Rpc, &Result<(), Status>) -> Option<String>;

/// An undecodable body's answer: INVALID_ARGUMENT naming the request
/// message, and nothing else.
fn undecodable_answer(rpc: &Rpc, result: &Result<(), Status>) -> Option<String> {
    let prefix = format!("request body is not a valid {}: ", rpc.request);
    match result {
        Err(s) if s.code() == Code::InvalidArgument && s.message().starts_with(&prefix) => None,
        other => Some(format!("{other:?}")),
    }
}

/// A valid request's answer: anything that is an answer, and not INTERNAL.
fn valid_answer(_: &Rpc, result: &Result<(), Status>) -> Option<String> {
    match result {
        Err(s)
            if matches!(
                s.code(),
                Code::Internal | Code::Unknown | Code::DeadlineExceeded
            ) =>
        {
            Some(format!("{s:?}"))
        }
        _ => None,
    }
}

/// Sends `cases` with [`CONCURRENCY`] in flight at once, and tallies each
/// answer as `judge` finds it. Answers are counted, not kept.
async fn send_all(
    channel: &Channel,
    rpcs: &[Rpc],
    plan: &Plan,
    cases: Vec<Case>,
    judge: Judge,
    tally: &mut Tally,
) {
    let answers = stream::iter(cases)
        .map(|case| async move {
            let call = send(channel, &rpcs[case.rpc], case.body.clone());
            let result = tokio::time::timeout(WAIT, call)
                .await
                .unwrap_or_else(|_| Err(Status::deadline_exceeded("no answer within WAIT")));
            (case, result)
        })
        .buffer_unordered(CONCURRENCY);
    let mut answers = std::pin::pin!(answers);
    while let Some((case, result)) = answers.next().await {
        let rpc = &rpcs[case.rpc];
        tally.sent += 1;
        let code = result.as_ref().err().map_or(Code::Ok, Status::code);
        *tally.codes.entry(format!("{code:?}")).or_default() += 1;
        if let Some(wrong) = judge(rpc, &result) {
            tally.failures += 1;
            if tally.examples.len() < 10 {
                tally.examples.push(format!(
                    "{} case {} (seed {}): body {:02x?}: {wrong}",
                    rpc.method, case.index, plan.seed, case.body
                ));
            }
        }
    }
}

/// What is stored, as the read RPCs show it.
async fn snapshot(c: &mut Client) -> (Vec<String>, Vec<String>, Vec<Node>) {
    (
        groups(c).await,
        services(c, GROUP).await,
        get_nodes(c, GROUP, SERVICE).await,
    )
}

/// Puts the registry back to the seeded group, service and node: the valid
/// requests of the batch before may have removed them, or added nodes with
/// a TTL that would expire (a change) while the next batch runs.
async fn reseed(c: &mut Client) {
    for round in 0.. {
        assert!(round < 100, "the groups do not go away");
        let (names, _) = try_list_groups(c, 1000, "")
            .await
            .unwrap_or_else(|e| panic!("ListServiceGroups: {e}"));
        if names.is_empty() {
            break;
        }
        for group in names {
            try_remove_group(c, &group, true)
                .await
                .unwrap_or_else(|e| panic!("RemoveServiceGroup {group}: {e}"));
        }
    }
    register_service(c, full_service(GROUP, SERVICE)).await;
    register_node(c, full_node(GROUP, SERVICE, NODE, 1)).await;
}

/// The name of the test runtime's threads, where the in-process server and
/// its Redis client run (the test's own code runs on the test's thread).
const WORKER_THREAD: &str = "decoding-fuzz-worker";

/// Panics on [`WORKER_THREAD`]s: a handler that panics. Without this, one
/// would show only as a reset stream among the answers.
static SERVER_PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts the panics of [`WORKER_THREAD`]s in [`SERVER_PANICS`] from now on
/// (they are still printed as before). The hook is the process's, but
/// other tests' threads have other names.
fn count_server_panics() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some(WORKER_THREAD) {
                SERVER_PANICS.fetch_add(1, Ordering::Relaxed);
            }
            previous(info);
        }));
    });
}

#[test]
fn undecodable_requests_are_invalid_argument_for_every_rpc() {
    count_server_panics();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(WORKER_THREAD)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(undecodable_requests());
}

async fn undecodable_requests() {
    let mut t = TestServer::start(Backend::Redis).await;
    let rpcs = rpcs();
    let plan = Plan::from_env(rpcs.len());
    let mut cases = plan.cases(&rpcs);
    let mut tally = Tally::default();
    let started = Instant::now();
    loop {
        let batch: Vec<Case> = cases.by_ref().take(BATCH).collect();
        let Some(first) = batch.first().map(|c| c.index) else {
            break;
        };
        let last = first + batch.len() - 1;
        reseed(&mut t.client).await;
        let before = snapshot(&mut t.client).await;
        let (undecodable, decodable): (Vec<Case>, Vec<Case>) = batch
            .into_iter()
            .partition(|c| !(rpcs[c.rpc].decodes)(&c.body));
        tally.decodable += decodable.len();
        send_all(
            &t.channel,
            &rpcs,
            &plan,
            undecodable,
            undecodable_answer,
            &mut tally,
        )
        .await;
        tally.check(&plan, started);
        assert_eq!(
            snapshot(&mut t.client).await,
            before,
            "a bad body among cases {first}..={last} changed the registry (to make them: {})",
            plan.rerun()
        );

        // Bodies that decode are requests like any other: whatever they do,
        // they are answered, and not with INTERNAL.
        send_all(
            &t.channel,
            &rpcs,
            &plan,
            decodable,
            valid_answer,
            &mut tally,
        )
        .await;
        tally.check(&plan, started);
        if (last + 1).is_multiple_of(PROGRESS) {
            eprintln!(
                "decoding: {} of {} cases, {:.0} s",
                last + 1,
                plan.total(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    eprintln!("{}", tally.summary(&plan, started.elapsed()));
    assert_eq!(tally.sent, plan.total());
    assert!(
        tally.sent - tally.decodable > plan.random() / 2,
        "most random bodies should not decode: {} of {} did",
        tally.decodable,
        tally.sent
    );

    // And the server still serves.
    let node = full_node(GROUP, "after", NODE, 2);
    within(
        "a valid call after the bad ones",
        register_node(&mut t.client, node),
    )
    .await;
    assert_eq!(
        node_names(&get_nodes(&mut t.client, GROUP, "after").await),
        [NODE]
    );
}

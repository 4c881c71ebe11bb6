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
/// Calls in flight at once on the one connection.
const CONCURRENCY: usize = 16;
/// The group and service every valid body names, seeded before the run.
const GROUP: &str = "dec";
const SERVICE: &str = "svc";
const NODE: &str = "n1";

/// One request: the index of its RPC in [`rpcs`], and its body.
type Case = (usize, Vec<u8>);
/// A case sent, with what the server answered.
type Answered = (usize, Vec<u8>, Result<(), Status>);

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
        rpc("RegisterService", full_service(GROUP, SERVICE)),
        rpc("RegisterNode", full_node(GROUP, SERVICE, NODE, 1)),
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
fn crafted(rpc: &Rpc) -> Vec<Vec<u8>> {
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
    vec![bad_utf8, wrong_wire_type, deep, truncated]
}

/// Random bodies, up to 100 bytes.
fn random_bodies(rng: &mut StdRng) -> Vec<Vec<u8>> {
    (0..RANDOM_CASES)
        .map(|_| {
            let mut body = vec![0u8; rng.random_range(0..100)];
            rng.fill(&mut body[..]);
            body
        })
        .collect()
}

/// The valid body with a byte flipped, a tail cut off or a byte inserted.
fn mutants(rng: &mut StdRng, valid: &[u8]) -> Vec<Vec<u8>> {
    (0..MUTANT_CASES)
        .map(|_| {
            let mut body = valid.to_vec();
            let at = rng.random_range(0..body.len());
            match rng.random_range(0..3) {
                0 => body[at] ^= 1 << rng.random_range(0..8),
                1 => body.truncate(at),
                _ => body.insert(at, rng.random()),
            }
            body
        })
        .collect()
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

/// Sends every case (RPC index, body) with a few in flight at once, and
/// returns each with its result.
async fn send_all(channel: &Channel, rpcs: &[Rpc], cases: Vec<Case>) -> Vec<Answered> {
    stream::iter(cases)
        .map(|(i, body)| async move {
            let call = send(channel, &rpcs[i], body.clone());
            let result = tokio::time::timeout(WAIT, call)
                .await
                .unwrap_or_else(|_| Err(Status::deadline_exceeded("no answer within WAIT")));
            (i, body, result)
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await
}

/// What is stored, as the read RPCs show it.
async fn snapshot(c: &mut Client) -> (Vec<String>, Vec<String>, Vec<Node>) {
    (
        groups(c).await,
        services(c, GROUP).await,
        get_nodes(c, GROUP, SERVICE).await,
    )
}

/// Every generated and crafted case, split into those that do not decode
/// as their RPC's request and those that do.
fn cases(rpcs: &[Rpc]) -> (Vec<Case>, Vec<Case>) {
    let mut rng = StdRng::seed_from_u64(11);
    let mut all = Vec::new();
    for (i, rpc) in rpcs.iter().enumerate() {
        let bodies = random_bodies(&mut rng)
            .into_iter()
            .chain(mutants(&mut rng, &rpc.valid))
            .chain(crafted(rpc));
        all.extend(bodies.map(|b| (i, b)));
    }
    all.into_iter().partition(|(i, b)| !(rpcs[*i].decodes)(b))
}

/// The failures among `results` of undecodable bodies: any answer but
/// INVALID_ARGUMENT naming the request message.
fn wrong_answers(rpcs: &[Rpc], results: &[Answered]) -> Vec<String> {
    results
        .iter()
        .filter_map(|(i, body, result)| {
            let rpc = &rpcs[*i];
            let prefix = format!("request body is not a valid {}: ", rpc.request);
            match result {
                Err(s) if s.code() == Code::InvalidArgument && s.message().starts_with(&prefix) => {
                    None
                }
                other => Some(format!("{} {body:02x?}: {other:?}", rpc.method)),
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_requests_are_invalid_argument_for_every_rpc() {
    let mut t = TestServer::start(Backend::Redis).await;
    register_service(&mut t.client, full_service(GROUP, SERVICE)).await;
    register_node(&mut t.client, full_node(GROUP, SERVICE, NODE, 1)).await;
    let before = snapshot(&mut t.client).await;

    let rpcs = rpcs();
    let (undecodable, decodable) = cases(&rpcs);
    assert!(undecodable.len() > rpcs.len() * RANDOM_CASES / 2);
    let results = send_all(&t.channel, &rpcs, undecodable).await;
    let wrong = wrong_answers(&rpcs, &results);
    assert!(
        wrong.is_empty(),
        "{} of {} undecodable bodies got another answer than INVALID_ARGUMENT, e.g.:\n{}",
        wrong.len(),
        results.len(),
        wrong[..wrong.len().min(10)].join("\n")
    );
    assert_eq!(
        snapshot(&mut t.client).await,
        before,
        "a bad body changed the registry"
    );

    // Bodies that decode are requests like any other: whatever they do,
    // they are answered, and not with INTERNAL.
    let results = send_all(&t.channel, &rpcs, decodable).await;
    for (i, body, result) in &results {
        if let Err(s) = result {
            assert!(
                !matches!(
                    s.code(),
                    Code::Internal | Code::Unknown | Code::DeadlineExceeded
                ),
                "{} {body:02x?}: {s:?}",
                rpcs[*i].method
            );
        }
    }

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

//! Read calls that decode a response only as far as the benchmark checks
//! it.
//!
//! The load generator shares the machine's cores with the servers, so
//! every microsecond it spends per call is taken from the systems under
//! test. Decoding the 20 nodes of a GetNodes response into full messages
//! (strings, maps, timestamps) cost the load generator about a third of
//! its CPU, far more than decoding etcd's Range response (plain bytes),
//! which skewed the comparison against discovered. So both read scenarios
//! use the same lean decoding instead: each repeated entry (a `Node`, a
//! `KeyValue`) stays an undecoded byte slice that is only counted.
//!
//! The fan-out scenarios decode watch events the same way: discovered's
//! `WatchEvent` to its type and its node's metadata entries, etcd's
//! `WatchResponse` to each event's key and version.
//!
//! The calls go through the same `tonic::client::Grpc` over the same
//! channels as the generated clients; only the response type differs. A
//! message field and a bytes field share protobuf's length-delimited wire
//! type, so these types decode the real responses.

use bytes::Bytes;
use tonic::client::Grpc;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Request, Status};

use tonic::Streaming;

use crate::proto::discovered::{GetNodesRequest, WatchServiceRequest};
use crate::proto::etcdserverpb::watch_request::RequestUnion;
use crate::proto::etcdserverpb::{RangeRequest, WatchCreateRequest, WatchRequest};
use futures::StreamExt;

/// `discovered.v1.GetNodesResponse` with each node left encoded.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeList {
    /// The encoded `Node` messages.
    #[prost(bytes = "bytes", repeated, tag = "1")]
    pub nodes: Vec<Bytes>,
}

/// `etcdserverpb.RangeResponse` with each key-value left encoded (and the
/// header and counters skipped).
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValueList {
    /// The encoded `mvccpb.KeyValue` messages.
    #[prost(bytes = "bytes", repeated, tag = "2")]
    pub kvs: Vec<Bytes>,
}

/// `discovered.v1.WatchEvent` as far as the fan-out checks it: its type
/// and its node's metadata, each entry left encoded.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LeanEvent {
    /// `WatchEvent.type`.
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    /// `WatchEvent.node`.
    #[prost(message, optional, tag = "4")]
    pub node: Option<LeanNode>,
}

/// `discovered.v1.Node` with only its metadata entries, encoded.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LeanNode {
    /// The encoded map entries of `Node.metadata`.
    #[prost(bytes = "bytes", repeated, tag = "13")]
    pub metadata: Vec<Bytes>,
}

/// `discovered.v1.WatchEvent` as far as the expiry scenario checks it:
/// its type and its node's name.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NamedEvent {
    /// `WatchEvent.type`.
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    /// `WatchEvent.node`.
    #[prost(message, optional, tag = "4")]
    pub node: Option<NamedNode>,
}

/// `discovered.v1.Node` with only its name.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NamedNode {
    /// `Node.node_name`.
    #[prost(string, tag = "3")]
    pub node_name: String,
}

/// One entry of a protobuf `map<string, string>`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MapEntry {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

impl LeanNode {
    /// The metadata value under `key`, if any.
    pub fn metadata(&self, key: &str) -> Option<String> {
        self.metadata
            .iter()
            .filter_map(|e| <MapEntry as prost::Message>::decode(e.clone()).ok())
            .find(|e| e.key == key)
            .map(|e| e.value)
    }
}

/// `etcdserverpb.WatchResponse` as far as the fan-out checks it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LeanWatchResponse {
    #[prost(bool, tag = "3")]
    pub created: bool,
    #[prost(bool, tag = "4")]
    pub canceled: bool,
    #[prost(string, tag = "6")]
    pub cancel_reason: String,
    #[prost(message, repeated, tag = "11")]
    pub events: Vec<LeanEtcdEvent>,
}

/// `mvccpb.Event` with only its type and its key-value's key and version.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LeanEtcdEvent {
    /// PUT (0) or DELETE (1).
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    #[prost(message, optional, tag = "2")]
    pub kv: Option<LeanKeyValue>,
}

/// `mvccpb.KeyValue`'s key and version (the value is skipped).
#[derive(Clone, PartialEq, prost::Message)]
pub struct LeanKeyValue {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(int64, tag = "4")]
    pub version: i64,
}

/// discovered `WatchService`, events decoded lean as `T` ([`LeanEvent`]
/// or [`NamedEvent`]).
pub async fn watch_service<T>(
    grpc: &mut Grpc<Channel>,
    request: WatchServiceRequest,
) -> Result<Streaming<T>, Status>
where
    T: prost::Message + Default + Send + 'static,
{
    ready(grpc).await?;
    let codec = tonic_prost::ProstCodec::<WatchServiceRequest, T>::default();
    let path = PathAndQuery::from_static("/discovered.v1.Discovery/WatchService");
    Ok(grpc
        .server_streaming(Request::new(request), path, codec)
        .await?
        .into_inner())
}

/// etcd `Watch.Watch` with one watch on every key under `prefix`,
/// responses decoded lean. The request stream stays open: etcd keeps the
/// watch for as long.
pub async fn etcd_watch(
    grpc: &mut Grpc<Channel>,
    prefix: &str,
) -> Result<Streaming<LeanWatchResponse>, Status> {
    let range = crate::workload::range_request(prefix, false);
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: range.key,
            range_end: range.range_end,
            start_revision: 0,
        })),
    };
    let requests = futures::stream::iter([create]).chain(futures::stream::pending());
    ready(grpc).await?;
    let codec = tonic_prost::ProstCodec::<WatchRequest, LeanWatchResponse>::default();
    let path = PathAndQuery::from_static("/etcdserverpb.Watch/Watch");
    Ok(grpc
        .streaming(Request::new(requests), path, codec)
        .await?
        .into_inner())
}

async fn ready(grpc: &mut Grpc<Channel>) -> Result<(), Status> {
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("channel not ready: {e}")))
}

/// A unary call on `path` whose response is decoded as `Resp`.
async fn unary<Req, Resp>(
    grpc: &mut Grpc<Channel>,
    path: &'static str,
    request: Req,
) -> Result<Resp, Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    ready(grpc).await?;
    let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
    let response = grpc
        .unary(
            Request::new(request),
            PathAndQuery::from_static(path),
            codec,
        )
        .await?;
    Ok(response.into_inner())
}

/// discovered `GetNodes`, nodes left encoded.
pub async fn get_nodes(
    grpc: &mut Grpc<Channel>,
    request: GetNodesRequest,
) -> Result<NodeList, Status> {
    unary(grpc, "/discovered.v1.Discovery/GetNodes", request).await
}

/// etcd `KV.Range`, key-values left encoded.
pub async fn range(
    grpc: &mut Grpc<Channel>,
    request: RangeRequest,
) -> Result<KeyValueList, Status> {
    unary(grpc, "/etcdserverpb.KV/Range", request).await
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::proto::discovered::{GetNodesResponse, Node};
    use crate::proto::etcdserverpb::RangeResponse;
    use crate::proto::mvccpb::KeyValue;

    #[test]
    fn lean_types_decode_the_real_messages() {
        let full = GetNodesResponse {
            nodes: vec![
                Node {
                    node_name: "a".into(),
                    ..Default::default()
                },
                Node {
                    node_name: "b".into(),
                    port: 80,
                    ..Default::default()
                },
            ],
        };
        let lean = NodeList::decode(full.encode_to_vec().as_slice()).unwrap();
        assert_eq!(lean.nodes.len(), 2);
        assert_eq!(Node::decode(lean.nodes[1].clone()).unwrap(), full.nodes[1]);

        let full = RangeResponse {
            kvs: vec![KeyValue::default(); 3],
            count: 3,
            ..Default::default()
        };
        let lean = KeyValueList::decode(full.encode_to_vec().as_slice()).unwrap();
        assert_eq!(lean.kvs.len(), 3);
    }

    #[test]
    fn lean_watch_types_decode_the_real_messages() {
        use crate::proto::discovered::WatchEvent;
        use crate::proto::etcdserverpb::WatchResponse;
        use crate::proto::mvccpb::Event;

        let full = WatchEvent {
            r#type: 3,
            node: Some(Node {
                node_name: "a".into(),
                metadata: [("zone", "z1"), ("seq", "42")]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            }),
            sequence: 9,
            ..Default::default()
        };
        let lean = LeanEvent::decode(full.encode_to_vec().as_slice()).unwrap();
        assert_eq!(lean.r#type, 3);
        let node = lean.node.expect("the node");
        assert_eq!(node.metadata("seq").as_deref(), Some("42"));
        assert_eq!(node.metadata("absent"), None);

        let full = WatchResponse {
            created: true,
            events: vec![Event {
                kv: Some(KeyValue {
                    key: b"k".to_vec(),
                    version: 5,
                    value: b"v".to_vec(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let lean = LeanWatchResponse::decode(full.encode_to_vec().as_slice()).unwrap();
        assert!(lean.created && !lean.canceled);
        let kv = lean.events[0].kv.as_ref().expect("a key-value");
        assert_eq!((kv.key.as_slice(), kv.version), (&b"k"[..], 5));
    }
}

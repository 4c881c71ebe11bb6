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
//! The calls go through the same `tonic::client::Grpc` over the same
//! channels as the generated clients; only the response type differs. A
//! message field and a bytes field share protobuf's length-delimited wire
//! type, so these types decode the real responses.

use bytes::Bytes;
use tonic::client::Grpc;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::proto::discovered::GetNodesRequest;
use crate::proto::etcdserverpb::RangeRequest;

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
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("channel not ready: {e}")))?;
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
}

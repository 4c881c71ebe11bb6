//! The ceiling: a bare tonic server that answers every
//! `discovered.v1.Discovery/GetNodes` with one fixed, pre-built answer (no
//! Redis, no lookup), so the `ceiling-get-nodes` scenario measures what
//! this machine's gRPC stack alone can serve with a reply of the same size.
//!
//! The answer is taken once, at start, from the running discovered (after
//! seeding the read set there): the very bytes `get-nodes` reads. Its nodes
//! stay encoded ([`NodeList`]), so each reply costs a copy of them, not a
//! protobuf encoding of 20 records.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context as _, ensure};
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Context, Poll, Service, http};
use tonic::server::{NamedService, UnaryService};
use tonic::{Request, Response, Status};

use crate::lean::{self, NodeList};
use crate::proto::discovered::GetNodesRequest;
use crate::workload;

/// Seeds `service` in discovered, fetches its GetNodes answer and serves it
/// on `listen` until killed.
pub async fn serve(
    listen: SocketAddr,
    discovered: &str,
    service: &str,
    nodes: u64,
) -> anyhow::Result<()> {
    let channel = workload::connect(discovered, 1).await?.remove(0);
    workload::seed_discovered(channel.clone(), service, nodes).await?;
    let mut grpc = tonic::client::Grpc::new(channel);
    let answer = lean::get_nodes(&mut grpc, workload::get_nodes_request(service))
        .await
        .context("fetching the GetNodes answer from discovered")?;
    ensure!(
        answer.nodes.len() as u64 == nodes,
        "discovered returned {} nodes, expected {nodes}",
        answer.nodes.len()
    );
    eprintln!(
        "ceiling: serving a GetNodes answer of {} nodes, {} B, on {listen}",
        answer.nodes.len(),
        prost::Message::encoded_len(&answer)
    );
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(Ceiling {
            answer: Arc::new(answer),
        })
        .serve(listen)
        .await
        .context("ceiling server")
}

/// `discovered.v1.Discovery` with GetNodes only.
#[derive(Clone)]
struct Ceiling {
    answer: Arc<NodeList>,
}

impl NamedService for Ceiling {
    const NAME: &'static str = "discovered.v1.Discovery";
}

/// The GetNodes handler: the fixed answer, whatever was asked.
struct GetNodes(Arc<NodeList>);

impl UnaryService<GetNodesRequest> for GetNodes {
    type Response = NodeList;
    type Future = std::future::Ready<Result<Response<NodeList>, Status>>;

    fn call(&mut self, _request: Request<GetNodesRequest>) -> Self::Future {
        std::future::ready(Ok(Response::new((*self.0).clone())))
    }
}

impl Service<http::Request<Body>> for Ceiling {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != "/discovered.v1.Discovery/GetNodes" {
            return Box::pin(async {
                Ok(Status::unimplemented("ceiling: GetNodes only").into_http())
            });
        }
        let answer = Arc::clone(&self.answer);
        Box::pin(async move {
            let codec = tonic_prost::ProstCodec::<NodeList, GetNodesRequest>::default();
            let mut grpc = tonic::server::Grpc::new(codec);
            Ok(grpc.unary(GetNodes(answer), request).await)
        })
    }
}

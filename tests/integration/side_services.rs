//! The standard gRPC side services: server reflection (v1 and v1alpha, so
//! that grpcurl 1.8 works without a proto file) and health.

use crate::common::{Backend, TestServer};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Lists the services and fetches the file defining a symbol through one
/// reflection version; returns (service names, file names received).
macro_rules! reflect {
    ($version:ident, $channel:expr, $symbol:expr) => {{
        use tonic_reflection::pb::$version::ServerReflectionRequest;
        use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;

        let mut client = ServerReflectionClient::new($channel);
        let requests = vec![
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            },
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::FileContainingSymbol($symbol.into())),
            },
            // What a client asks next to resolve an import.
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::FileByFilename(
                    "google/protobuf/timestamp.proto".into(),
                )),
            },
        ];
        let mut stream = client
            .server_reflection_info(tokio_stream::iter(requests))
            .await
            .expect("reflection call")
            .into_inner();
        let mut services = Vec::new();
        let mut files = Vec::new();
        while let Some(resp) = stream.message().await.expect("reflection response") {
            match resp.message_response.expect("a response") {
                MessageResponse::ListServicesResponse(list) => {
                    services.extend(list.service.into_iter().map(|s| s.name));
                }
                MessageResponse::FileDescriptorResponse(fd) => {
                    for bytes in fd.file_descriptor_proto {
                        let file: prost_types::FileDescriptorProto =
                            prost::Message::decode(bytes.as_slice()).expect("descriptor");
                        files.push(file.name().to_string());
                    }
                }
                other => panic!("unexpected reflection response: {other:?}"),
            }
        }
        services.sort();
        (services, files)
    }};
}

const EXPECTED_SERVICES: [&str; 4] = [
    "discovered.v1.Discovery",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

#[tokio::test]
async fn reflection_v1_lists_and_describes_everything() {
    let t = TestServer::start(Backend::Memory).await;
    let (services, files) = reflect!(v1, t.channel.clone(), "discovered.v1.Discovery");
    assert_eq!(services, EXPECTED_SERVICES);
    assert!(
        files.contains(&"discovered/v1/discovery.proto".to_string()),
        "{files:?}"
    );
    assert!(
        files.contains(&"google/protobuf/timestamp.proto".to_string()),
        "{files:?}"
    );
}

#[tokio::test]
async fn reflection_v1alpha_lists_and_describes_everything() {
    let t = TestServer::start(Backend::Memory).await;
    let (services, files) = reflect!(v1alpha, t.channel.clone(), "grpc.health.v1.Health");
    assert_eq!(services, EXPECTED_SERVICES);
    assert!(
        files.iter().any(|f| f.ends_with("health.proto")),
        "{files:?}"
    );
    assert!(
        files.contains(&"google/protobuf/timestamp.proto".to_string()),
        "{files:?}"
    );
}

#[tokio::test]
async fn health_reports_serving_for_the_server_and_the_service() {
    for backend in [Backend::Memory, Backend::Redis] {
        let t = TestServer::start(backend).await;
        let mut client = HealthClient::new(t.channel.clone());
        for service in ["", "discovered.v1.Discovery"] {
            let status = crate::common::eventually(
                &format!("{backend:?}: health of {service:?} to be reported"),
                || {
                    let mut client = client.clone();
                    async move {
                        client
                            .check(HealthCheckRequest {
                                service: service.into(),
                            })
                            .await
                            .ok()
                            .map(|r| r.into_inner().status)
                    }
                },
            )
            .await;
            assert_eq!(
                status,
                ServingStatus::Serving as i32,
                "{backend:?} {service:?}"
            );
        }
        let unknown = client
            .check(HealthCheckRequest {
                service: "no.such.Service".into(),
            })
            .await
            .expect_err("unknown service");
        assert_eq!(unknown.code(), tonic::Code::NotFound);
    }
}

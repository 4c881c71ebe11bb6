//! The gRPC calls as the tests make them: each wrapper panics with what it
//! was asked when the call fails, so a test reads as the steps it takes.
//! And the checks of a refused call.

use discovered::proto::v1::discovery_client::DiscoveryClient;
use discovered::proto::v1::*;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The generated gRPC client, over one channel.
pub type Client = DiscoveryClient<Channel>;

/// RegisterNode, which must succeed.
pub async fn register_node(c: &mut Client, req: RegisterNodeRequest) -> Node {
    let what = format!(
        "RegisterNode {}/{}/{}",
        req.service_group, req.service_name, req.node_name
    );
    c.register_node(req)
        .await
        .unwrap_or_else(|s| panic!("{what}: {s:?}"))
        .into_inner()
}

/// RegisterNode, tried again until it succeeds: for a server whose Redis
/// is coming back.
pub async fn register_node_eventually(c: &Client, req: RegisterNodeRequest) -> Node {
    let what = format!(
        "RegisterNode {}/{}/{} to succeed",
        req.service_group, req.service_name, req.node_name
    );
    super::eventually(&what, || {
        let (mut c, req) = (c.clone(), req.clone());
        async move { c.register_node(req).await.ok() }
    })
    .await
    .into_inner()
}

/// RegisterService, which must succeed.
pub async fn register_service(c: &mut Client, req: RegisterServiceRequest) -> Service {
    let what = format!("RegisterService {}/{}", req.service_group, req.service_name);
    c.register_service(req)
        .await
        .unwrap_or_else(|s| panic!("{what}: {s:?}"))
        .into_inner()
}

/// GetNodes, which must succeed.
pub async fn get_nodes(c: &mut Client, group: &str, service: &str) -> Vec<Node> {
    c.get_nodes(GetNodesRequest {
        service_group: group.into(),
        service_name: service.into(),
    })
    .await
    .unwrap_or_else(|s| panic!("GetNodes {group}/{service}: {s:?}"))
    .into_inner()
    .nodes
}

/// GetService.
pub async fn get_service(
    c: &mut Client,
    group: &str,
    name: &str,
    reveal: bool,
) -> Result<Service, Status> {
    c.get_service(GetServiceRequest {
        service_group: group.into(),
        service_name: name.into(),
        reveal_credentials: reveal,
    })
    .await
    .map(|r| r.into_inner())
}

/// One page of ListServices: its service names and the next page's token.
pub async fn try_list_services(
    c: &mut Client,
    group: &str,
    size: u32,
    token: &str,
) -> Result<(Vec<String>, String), Status> {
    let page = c
        .list_services(ListServicesRequest {
            service_group: group.into(),
            page_size: size,
            page_token: token.into(),
        })
        .await?
        .into_inner();
    Ok((page.service_names, page.next_page_token))
}

/// One page of ListServiceGroups: its group names and the next page's
/// token.
pub async fn try_list_groups(
    c: &mut Client,
    size: u32,
    token: &str,
) -> Result<(Vec<String>, String), Status> {
    let page = c
        .list_service_groups(ListServiceGroupsRequest {
            page_size: size,
            page_token: token.into(),
        })
        .await?
        .into_inner();
    Ok((page.service_groups, page.next_page_token))
}

/// Every service name of a group (one page of up to 1000).
pub async fn services(c: &mut Client, group: &str) -> Vec<String> {
    let (names, next) = try_list_services(c, group, 1000, "")
        .await
        .unwrap_or_else(|e| panic!("ListServices {group}: {e}"));
    assert_eq!(next, "", "a single page was expected");
    names
}

/// Every group name (one page of up to 1000).
pub async fn groups(c: &mut Client) -> Vec<String> {
    let (names, next) = try_list_groups(c, 1000, "")
        .await
        .unwrap_or_else(|e| panic!("ListServiceGroups: {e}"));
    assert_eq!(next, "", "a single page was expected");
    names
}

/// RemoveNode (naming no instance).
pub async fn try_remove_node(
    c: &mut Client,
    group: &str,
    service: &str,
    node: &str,
    allow_missing: bool,
) -> Result<RemoveNodeResponse, Status> {
    c.remove_node(RemoveNodeRequest {
        service_group: group.into(),
        service_name: service.into(),
        node_name: node.into(),
        allow_missing,
        instance_id: String::new(),
    })
    .await
    .map(|r| r.into_inner())
}

/// RemoveService.
pub async fn try_remove_service(
    c: &mut Client,
    group: &str,
    service: &str,
    allow_missing: bool,
) -> Result<RemoveServiceResponse, Status> {
    c.remove_service(RemoveServiceRequest {
        service_group: group.into(),
        service_name: service.into(),
        allow_missing,
    })
    .await
    .map(|r| r.into_inner())
}

/// RemoveServiceGroup.
pub async fn try_remove_group(
    c: &mut Client,
    group: &str,
    allow_missing: bool,
) -> Result<RemoveServiceGroupResponse, Status> {
    c.remove_service_group(RemoveServiceGroupRequest {
        service_group: group.into(),
        allow_missing,
    })
    .await
    .map(|r| r.into_inner())
}

/// `grpc.health.v1.Health/Check` of `service` (`""`: the whole server) on
/// `t`'s channel; None when the call fails or the status is unknown.
pub async fn health(t: &super::TestServer, service: &str) -> Option<ServingStatus> {
    health_on(&t.channel, service).await
}

/// [`health`] over `channel`: for a task that owns a clone of it.
pub async fn health_on(channel: &Channel, service: &str) -> Option<ServingStatus> {
    let mut client = HealthClient::new(channel.clone());
    let resp = client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(resp.into_inner().status).ok()
}

/// The names of `nodes`, in their order.
pub fn node_names(nodes: &[Node]) -> Vec<String> {
    nodes.iter().map(|n| n.node_name.clone()).collect()
}

/// An event's type (UNSPECIFIED for a value this build does not know).
pub fn kind(e: &WatchEvent) -> EventType {
    EventType::try_from(e.r#type).unwrap_or(EventType::Unspecified)
}

/// Whether `message` names `field` as a word of its own (so that "ip" is
/// not found in "description").
pub fn mentions(message: &str, field: &str) -> bool {
    let ident = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    message.match_indices(field).any(|(i, _)| {
        !ident(message[..i].chars().next_back())
            && !ident(message[i + field.len()..].chars().next())
    })
}

/// The error status of a call that must fail with `code`.
#[track_caller]
pub fn expect_code<T>(r: Result<T, Status>, code: Code, what: &str) -> Status {
    match r {
        Ok(_) => panic!("{what}: expected {code:?}, got OK"),
        Err(s) => {
            assert_eq!(s.code(), code, "{what}: wrong code ({:?})", s.message());
            s
        }
    }
}

/// A status that must be INVALID_ARGUMENT naming `field`.
#[track_caller]
pub fn assert_invalid(s: &Status, field: &str, what: &str) {
    assert_eq!(
        s.code(),
        Code::InvalidArgument,
        "{what}: wrong code ({:?})",
        s.message()
    );
    assert!(
        mentions(s.message(), field),
        "{what}: message should name {field:?}: {:?}",
        s.message()
    );
}

/// A call that must fail with INVALID_ARGUMENT naming `field`.
#[track_caller]
pub fn expect_invalid<T>(r: Result<T, Status>, field: &str, what: &str) {
    let s = expect_code(r, Code::InvalidArgument, what);
    assert_invalid(&s, field, what);
}

//! Tokens, roles and scopes (`--auth-file`, issue 12), on a real server:
//! which call each kind of caller may make, with which status and message
//! when not; health and reflection; reloading the file while clients stay
//! connected; and the binary refusing a bad file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use discovered::auth::{Auth, hash_token};
use discovered::proto::v1 as pb;
use discovered::server::Settings;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::common::*;

/// A directory of its own for one test's auth file, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "discovered-auth-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        // Write then rename, as the README tells operators to: the poller
        // never sees half a file.
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, contents).expect("write auth file");
        std::fs::rename(&tmp, &path).expect("rename auth file");
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `[[token]]` entry for `token`, with `extra` lines (a scope).
fn token(name: &str, token: &str, role: &str, extra: &str) -> String {
    format!(
        "[[token]]\nname = \"{name}\"\nsha256 = \"{}\"\nrole = \"{role}\"\n{extra}\n",
        hash_token(token)
    )
}

/// An in-memory server with the auth file `path`.
async fn server(path: &Path) -> (TestServer, Arc<Auth>) {
    let auth = Auth::load(path).expect("valid auth file");
    let t = TestServer::memory_with(Settings {
        auth: Some(auth.clone()),
        ..Settings::default()
    })
    .await;
    (t, auth)
}

/// `message` with `authorization: Bearer <token>` when there is a token.
fn with<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut r = Request::new(message);
    if let Some(t) = token {
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("header value"),
        );
    }
    r
}

// ---- The table: every call by every kind of caller -------------------

/// The callers of the table, one per column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    /// No authorization header.
    Nobody,
    /// A token the file does not have.
    Unknown,
    Read,
    Register,
    Admin,
    /// A register token scoped to group "other".
    OtherGroup,
    /// A register token scoped to service "other" of group "default".
    OtherService,
}

const COLUMNS: [Who; 7] = [
    Who::Nobody,
    Who::Unknown,
    Who::Read,
    Who::Register,
    Who::Admin,
    Who::OtherGroup,
    Who::OtherService,
];

impl Who {
    fn token(self) -> Option<&'static str> {
        match self {
            Who::Nobody => None,
            Who::Unknown => Some("tok-unknown-0b6e2c"),
            Who::Read => Some("tok-read-5d1f77"),
            Who::Register => Some("tok-register-8a90c3"),
            Who::Admin => Some("tok-admin-e4b218"),
            Who::OtherGroup => Some("tok-other-group-19ad4f"),
            Who::OtherService => Some("tok-other-service-c27e05"),
        }
    }

    /// The role a denial names (the roles of the file below).
    fn role(self) -> &'static str {
        match self {
            Who::Read => "read",
            Who::Admin => "admin",
            _ => "register",
        }
    }
}

/// The auth file of the table.
fn table_file() -> String {
    [
        token("reader", Who::Read.token().unwrap(), "read", ""),
        token("registrar", Who::Register.token().unwrap(), "register", ""),
        token("ops", Who::Admin.token().unwrap(), "admin", ""),
        token(
            "other-group-agent",
            Who::OtherGroup.token().unwrap(),
            "register",
            "groups = [\"other\"]",
        ),
        token(
            "other-service-agent",
            Who::OtherService.token().unwrap(),
            "register",
            "groups = [\"default\"]\nservices = [\"other\"]",
        ),
    ]
    .concat()
}

/// The calls of the table, one per row, all on service "payments" (node
/// "n1") of group "default".
#[derive(Debug, Clone, Copy)]
enum Rpc {
    RegisterService,
    RegisterNode,
    Heartbeat,
    RemoveNode,
    GetService,
    /// GetService with reveal_credentials = true.
    RevealCredentials,
    GetNodes,
    ListServices,
    ListServiceGroups,
    /// WatchService of service "payments".
    WatchService,
    /// WatchService of the whole group.
    WatchGroup,
    RemoveService,
    RemoveServiceGroup,
}

const OK: Code = Code::Ok;
const UNAUTH: Code = Code::Unauthenticated;
const DENIED: Code = Code::PermissionDenied;

/// What each caller gets. The scoped columns are register tokens: they
/// are denied what they may do only elsewhere, and what needs admin.
/// Listings are filtered to the scope rather than refused (a token scoped
/// to another group may not list this group's services).
#[rustfmt::skip]
const TABLE: &[(Rpc, [Code; 7])] = &[
    //                       nobody  unknown read    register admin  other-group other-service
    (Rpc::RegisterService,    [UNAUTH, UNAUTH, DENIED, OK,      OK,    DENIED,     DENIED]),
    (Rpc::RegisterNode,       [UNAUTH, UNAUTH, DENIED, OK,      OK,    DENIED,     DENIED]),
    (Rpc::Heartbeat,          [UNAUTH, UNAUTH, DENIED, OK,      OK,    DENIED,     DENIED]),
    (Rpc::RemoveNode,         [UNAUTH, UNAUTH, DENIED, OK,      OK,    DENIED,     DENIED]),
    (Rpc::GetService,         [UNAUTH, UNAUTH, OK,     OK,      OK,    DENIED,     DENIED]),
    (Rpc::RevealCredentials,  [UNAUTH, UNAUTH, DENIED, DENIED,  OK,    DENIED,     DENIED]),
    (Rpc::GetNodes,           [UNAUTH, UNAUTH, OK,     OK,      OK,    DENIED,     DENIED]),
    (Rpc::ListServices,       [UNAUTH, UNAUTH, OK,     OK,      OK,    DENIED,     OK    ]),
    (Rpc::ListServiceGroups,  [UNAUTH, UNAUTH, OK,     OK,      OK,    OK,         OK    ]),
    (Rpc::WatchService,       [UNAUTH, UNAUTH, OK,     OK,      OK,    DENIED,     DENIED]),
    (Rpc::WatchGroup,         [UNAUTH, UNAUTH, OK,     OK,      OK,    DENIED,     DENIED]),
    (Rpc::RemoveService,      [UNAUTH, UNAUTH, DENIED, DENIED,  OK,    DENIED,     DENIED]),
    (Rpc::RemoveServiceGroup, [UNAUTH, UNAUTH, DENIED, DENIED,  OK,    DENIED,     DENIED]),
];

impl Rpc {
    /// The least role allowed to make the call, as denials name it.
    fn needs(self) -> &'static str {
        match self {
            Rpc::GetService
            | Rpc::GetNodes
            | Rpc::ListServices
            | Rpc::ListServiceGroups
            | Rpc::WatchService
            | Rpc::WatchGroup => "read",
            Rpc::RegisterService | Rpc::RegisterNode | Rpc::Heartbeat | Rpc::RemoveNode => {
                "register"
            }
            Rpc::RevealCredentials | Rpc::RemoveService | Rpc::RemoveServiceGroup => "admin",
        }
    }

    /// How a denial names the call.
    fn name(self) -> &'static str {
        match self {
            Rpc::RevealCredentials => "GetService with reveal_credentials",
            Rpc::WatchGroup => "WatchService",
            Rpc::RegisterService => "RegisterService",
            Rpc::RegisterNode => "RegisterNode",
            Rpc::Heartbeat => "Heartbeat",
            Rpc::RemoveNode => "RemoveNode",
            Rpc::GetService => "GetService",
            Rpc::GetNodes => "GetNodes",
            Rpc::ListServices => "ListServices",
            Rpc::ListServiceGroups => "ListServiceGroups",
            Rpc::WatchService => "WatchService",
            Rpc::RemoveService => "RemoveService",
            Rpc::RemoveServiceGroup => "RemoveServiceGroup",
        }
    }

    /// Makes the call as `token`'s holder; only its status matters.
    async fn call(self, c: &mut Client, token: Option<&str>) -> Result<(), Status> {
        let (g, s) = ("default", "payments");
        match self {
            Rpc::RegisterService => {
                c.register_service(with(bare_service(g, s), token)).await?;
            }
            Rpc::RegisterNode => {
                c.register_node(with(bare_node(g, s, "n2", None), token))
                    .await?;
            }
            Rpc::Heartbeat => {
                let r = pb::HeartbeatRequest {
                    service_group: g.into(),
                    service_name: s.into(),
                    node_name: "n1".into(),
                    ..Default::default()
                };
                c.heartbeat(with(r, token)).await?;
            }
            Rpc::RemoveNode => {
                let r = pb::RemoveNodeRequest {
                    service_group: g.into(),
                    service_name: s.into(),
                    node_name: "n1".into(),
                    ..Default::default()
                };
                c.remove_node(with(r, token)).await?;
            }
            Rpc::GetService | Rpc::RevealCredentials => {
                let r = pb::GetServiceRequest {
                    service_group: g.into(),
                    service_name: s.into(),
                    reveal_credentials: matches!(self, Rpc::RevealCredentials),
                };
                c.get_service(with(r, token)).await?;
            }
            Rpc::GetNodes => {
                let r = pb::GetNodesRequest {
                    service_group: g.into(),
                    service_name: s.into(),
                };
                c.get_nodes(with(r, token)).await?;
            }
            Rpc::ListServices => {
                let r = pb::ListServicesRequest {
                    service_group: g.into(),
                    ..Default::default()
                };
                c.list_services(with(r, token)).await?;
            }
            Rpc::ListServiceGroups => {
                c.list_service_groups(with(pb::ListServiceGroupsRequest::default(), token))
                    .await?;
            }
            Rpc::WatchService | Rpc::WatchGroup => {
                let r = pb::WatchServiceRequest {
                    service_group: g.into(),
                    service_name: if matches!(self, Rpc::WatchService) {
                        s.into()
                    } else {
                        String::new()
                    },
                    ..Default::default()
                };
                // The stream's first answer is enough; dropping it ends it.
                c.watch_service(with(r, token)).await?;
            }
            Rpc::RemoveService => {
                let r = pb::RemoveServiceRequest {
                    service_group: g.into(),
                    service_name: s.into(),
                    ..Default::default()
                };
                c.remove_service(with(r, token)).await?;
            }
            Rpc::RemoveServiceGroup => {
                let r = pb::RemoveServiceGroupRequest {
                    service_group: g.into(),
                    ..Default::default()
                };
                c.remove_service_group(with(r, token)).await?;
            }
        }
        Ok(())
    }
}

/// Registers service "payments" with node "n1", so that every call of the
/// table finds what it names (an earlier cell may have removed it). The
/// node is registered by the register token in its own column and by the
/// admin otherwise: nodes belong to who registered them, and this table
/// is about roles and scopes (the ownership test is below).
async fn seed(c: &mut Client, who: Who) {
    let admin = Who::Admin.token();
    c.register_service(with(full_service("default", "payments"), admin))
        .await
        .expect("seed service");
    let remove = pb::RemoveNodeRequest {
        service_name: "payments".into(),
        node_name: "n1".into(),
        allow_missing: true,
        ..Default::default()
    };
    c.remove_node(with(remove, admin))
        .await
        .expect("clear the seed node");
    let owner = if who == Who::Register {
        who.token()
    } else {
        admin
    };
    c.register_node(with(bare_node("default", "payments", "n1", None), owner))
        .await
        .expect("seed node");
}

#[tokio::test]
async fn every_call_by_every_caller() {
    let dir = Dir::new();
    let (t, _auth) = server(&dir.file("auth.toml", &table_file())).await;
    let mut c = t.client.clone();
    let secrets: Vec<&str> = COLUMNS.iter().filter_map(|w| w.token()).collect();
    let mut wrong = Vec::new();
    for (rpc, codes) in TABLE {
        for (who, want) in COLUMNS.iter().zip(codes) {
            seed(&mut c, *who).await;
            let got = rpc.call(&mut c, who.token()).await;
            let (code, message) = match &got {
                Ok(()) => (Code::Ok, String::new()),
                Err(s) => (s.code(), s.message().to_string()),
            };
            if code != *want {
                wrong.push(format!(
                    "{rpc:?} by {who:?}: want {want:?}, got {code:?} {message:?}"
                ));
                continue;
            }
            for secret in &secrets {
                assert!(
                    !message.contains(secret),
                    "{rpc:?} by {who:?}: the message shows a token: {message}"
                );
            }
            if code == DENIED {
                let role = who.role();
                let prefix = format!("(role {role}) may not {}: ", rpc.name());
                assert!(message.contains(&prefix), "{rpc:?} by {who:?}: {message}");
                // A caller with too low a role is told the role it needs;
                // one with the role, what its scope leaves out.
                let role_ok = role == "admin" || role == rpc.needs() || rpc.needs() == "read";
                let why = if role_ok {
                    "scope does not include".to_string()
                } else {
                    format!("needs role {}", rpc.needs())
                };
                assert!(
                    message.contains(&why),
                    "{rpc:?} by {who:?}: want {why:?} in {message}"
                );
            }
            if code == UNAUTH {
                assert!(!message.is_empty(), "{rpc:?} by {who:?}: an empty message");
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "cells that differ from the table:\n{}",
        wrong.join("\n")
    );
}

#[tokio::test]
async fn denials_name_the_caller_and_what_is_missing() {
    let dir = Dir::new();
    let (t, _auth) = server(&dir.file("auth.toml", &table_file())).await;
    let mut c = t.client.clone();
    seed(&mut c, Who::Admin).await;
    let e = Rpc::RegisterNode
        .call(&mut c, Who::Read.token())
        .await
        .unwrap_err();
    assert_eq!(
        e.message(),
        r#""reader" (role read) may not RegisterNode: needs role register"#
    );
    let e = Rpc::RegisterNode
        .call(&mut c, Who::OtherService.token())
        .await
        .unwrap_err();
    assert_eq!(
        e.message(),
        r#""other-service-agent" (role register) may not RegisterNode: scope does not include service "payments" of group "default""#
    );
    let e = Rpc::GetNodes
        .call(&mut c, Who::OtherGroup.token())
        .await
        .unwrap_err();
    assert_eq!(
        e.message(),
        r#""other-group-agent" (role register) may not GetNodes: scope does not include group "default""#
    );
    let e = Rpc::GetNodes.call(&mut c, None).await.unwrap_err();
    assert!(e.message().contains("authorization: Bearer"), "{e:?}");
    let e = Rpc::GetNodes
        .call(&mut c, Who::Unknown.token())
        .await
        .unwrap_err();
    assert_eq!(e.code(), UNAUTH);
    assert!(!e.message().contains(Who::Unknown.token().unwrap()));
}

#[tokio::test]
async fn listings_show_only_the_scope() {
    let dir = Dir::new();
    let (t, _auth) = server(&dir.file("auth.toml", &table_file())).await;
    let mut c = t.client.clone();
    let admin = Who::Admin.token();
    for (g, s) in [
        ("default", "payments"),
        ("default", "other"),
        ("default", "orders"),
        ("other", "x"),
        ("third", "y"),
    ] {
        c.register_service(with(bare_service(g, s), admin))
            .await
            .expect("register");
        c.register_node(with(bare_node(g, s, "n1", None), admin))
            .await
            .expect("register node");
    }
    let groups = |who: Who, size: u32, page_token: &str| {
        let mut c = c.clone();
        let r = pb::ListServiceGroupsRequest {
            page_size: size,
            page_token: page_token.into(),
        };
        async move {
            let r = c
                .list_service_groups(with(r, who.token()))
                .await
                .expect("list groups")
                .into_inner();
            (r.service_groups, r.next_page_token)
        }
    };
    assert_eq!(
        groups(Who::Admin, 0, "").await.0,
        ["default", "other", "third"]
    );
    assert_eq!(
        groups(Who::OtherGroup, 0, "").await,
        (vec!["other".into()], String::new())
    );
    let services = |who: Who, size: u32, page_token: &str| {
        let mut c = c.clone();
        let r = pb::ListServicesRequest {
            service_group: "default".into(),
            page_size: size,
            page_token: page_token.into(),
        };
        async move {
            let r = c
                .list_services(with(r, who.token()))
                .await
                .expect("list services")
                .into_inner();
            (r.service_names, r.next_page_token)
        }
    };
    assert_eq!(
        services(Who::Read, 0, "").await.0,
        ["orders", "other", "payments"]
    );
    assert_eq!(
        services(Who::OtherService, 0, "").await,
        (vec!["other".into()], String::new())
    );
    // Paging a scoped listing: tokens are names the scope shows.
    assert_eq!(
        services(Who::OtherService, 1, "").await,
        (vec!["other".into()], String::new())
    );
    assert_eq!(
        services(Who::Read, 1, "orders").await,
        (vec!["other".into()], "other".into())
    );
}

// ---- Health and reflection --------------------------------------------

#[tokio::test]
async fn health_is_open_and_reflection_needs_any_valid_identity() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let dir = Dir::new();
    let (t, _auth) = server(&dir.file("auth.toml", &table_file())).await;
    assert_eq!(health(&t, "").await, Some(ServingStatus::Serving));

    let list = |channel: Channel, token: Option<&'static str>| async move {
        let mut client = ServerReflectionClient::new(channel);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = client
            .server_reflection_info(with(tokio_stream::iter([request]), token))
            .await?
            .into_inner();
        let mut names = Vec::new();
        while let Some(r) = stream.message().await? {
            if let Some(MessageResponse::ListServicesResponse(l)) = r.message_response {
                names.extend(l.service.into_iter().map(|s| s.name));
            }
        }
        Ok::<_, Status>(names)
    };
    let refused = list(t.channel.clone(), None).await.unwrap_err();
    assert_eq!(refused.code(), UNAUTH, "{refused:?}");
    let refused = list(t.channel.clone(), Who::Unknown.token())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), UNAUTH, "{refused:?}");
    let names = list(t.channel.clone(), Who::Read.token())
        .await
        .expect("reflection with a read token");
    assert!(
        names.contains(&"discovered.v1.Discovery".to_string()),
        "{names:?}"
    );
}

// ---- Reload -------------------------------------------------------------

#[tokio::test]
async fn a_rewritten_file_applies_on_open_connections_and_a_broken_one_does_not() {
    let dir = Dir::new();
    let path = dir.file("auth.toml", &token("alpha", "token-a", "read", ""));
    let (t, auth) = server(&path).await;
    let mut c = t.client.clone();
    let groups = |c: &mut Client, tok: &'static str| {
        let mut c = c.clone();
        async move {
            c.list_service_groups(with(pb::ListServiceGroupsRequest::default(), Some(tok)))
                .await
                .map(|_| ())
                .map_err(|s| s.code())
        }
    };
    assert_eq!(groups(&mut c, "token-a").await, Ok(()));
    assert_eq!(groups(&mut c, "token-b").await, Err(UNAUTH));

    // The poller picks the new file up: same client, same connection.
    dir.file("auth.toml", &token("beta", "token-b", "read", ""));
    eventually("token A refused and token B accepted", || {
        let mut c = c.clone();
        async move {
            let a = groups(&mut c, "token-a").await;
            let b = groups(&mut c, "token-b").await;
            (a == Err(UNAUTH) && b == Ok(())).then_some(())
        }
    })
    .await;

    // A broken file is refused, by SIGHUP's entry point and by the poller,
    // and B stays in force.
    dir.file(
        "auth.toml",
        &format!("{}role = \"root\"\n", token("gamma", "token-c", "read", "")),
    );
    let e = auth.reload_now().expect_err("a broken file is refused");
    assert!(e.to_string().contains("auth.toml"), "{e}");
    tokio::time::sleep(discovered::auth::POLL_INTERVAL + Duration::from_millis(500)).await;
    assert_eq!(groups(&mut c, "token-b").await, Ok(()));
    assert_eq!(groups(&mut c, "token-c").await, Err(UNAUTH));
}

#[tokio::test]
async fn an_open_watch_ends_when_a_reload_takes_its_access_away() {
    let dir = Dir::new();
    let file = |alpha_scope: &str| {
        [
            token("alpha", "token-a", "read", alpha_scope),
            token("beta", "token-b", "read", ""),
            token("ops", "token-ops", "admin", ""),
        ]
        .concat()
    };
    let path = dir.file("auth.toml", &file(""));
    let (t, auth) = server(&path).await;
    let c = t.client.clone();
    let watch = |tok: &'static str| {
        let mut c = c.clone();
        async move {
            let request = pb::WatchServiceRequest {
                service_name: "payments".into(),
                ..Default::default()
            };
            let mut stream = c
                .watch_service(with(request, Some(tok)))
                .await
                .expect("a watch")
                .into_inner();
            let synced = stream.message().await.expect("an event").expect("open");
            assert_eq!(kind(&synced), pb::EventType::Synced);
            stream
        }
    };
    let mut a = watch("token-a").await;
    let mut b = watch("token-b").await;

    // A reload that leaves both entries as they are ends neither.
    dir.file("auth.toml", &file(""));
    auth.reload_now().expect("reload");
    // A's scope no longer covers the service: A's watch ends with
    // PERMISSION_DENIED; B's goes on.
    dir.file("auth.toml", &file("groups = [\"elsewhere\"]"));
    auth.reload_now().expect("reload");
    let status = within("A's watch to end", a.message())
        .await
        .expect_err("A's watch ends with a status");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    c.clone()
        .register_node(with(node(8443, ""), Some("token-ops")))
        .await
        .expect("a change");
    let added = within("B's watch to go on", b.message())
        .await
        .expect("B's watch is open")
        .expect("an event");
    assert_eq!(kind(&added), pb::EventType::NodeAdded);

    // B's entry removed: UNAUTHENTICATED, naming the entry, not the token.
    dir.file("auth.toml", &token("ops", "token-ops", "admin", ""));
    auth.reload_now().expect("reload");
    let status = within("B's watch to end", b.message())
        .await
        .expect_err("B's watch ends with a status");
    assert_eq!(status.code(), UNAUTH, "{status:?}");
    assert!(status.message().contains("\"beta\""), "{status:?}");
    assert!(!status.message().contains("token-b"), "{status:?}");
}

// ---- Without an auth file ---------------------------------------------

#[tokio::test]
async fn without_an_auth_file_a_token_is_ignored() {
    let t = TestServer::start(Backend::Memory).await;
    let mut c = t.client.clone();
    seed(&mut c, Who::Admin).await;
    Rpc::RemoveServiceGroup
        .call(&mut c, Some("anything"))
        .await
        .expect("no auth file: everything allowed");
}

// ---- The binary -------------------------------------------------------

#[test]
fn the_binary_refuses_a_bad_auth_file_in_one_line() {
    let dir = Dir::new();
    let path = dir.file(
        "bad.toml",
        "[[token]]\nname = \"payments-agent\"\nsha256 = \"abc\"\nrole = \"register\"\n",
    );
    let line = format!("serve --listen 127.0.0.1:0 --auth-file {}", path.display());
    let (status, stderr) = Proc::spawn(&line, &[]).wait();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("error: auth file "), "{stderr}");
    assert!(stderr.contains("bad.toml"), "{stderr}");
    assert!(
        stderr.contains(r#"token 1 ("payments-agent"): sha256: must be 64 hex digits"#),
        "{stderr}"
    );

    // The environment variable names it too; a missing file is an error.
    let missing = dir.0.join("missing.toml");
    let (status, stderr) = Proc::spawn(
        "serve --listen 127.0.0.1:0",
        &[("DISCOVERED_AUTH_FILE", missing.to_str().unwrap())],
    )
    .wait();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("missing.toml: cannot read it"), "{stderr}");
}

// ---- Ownership and the audit log ---------------------------------------

/// Two register tokens and an admin: A's node, B the would-be hijacker.
fn owners_file() -> String {
    [
        token("agent-a", "tok-a", "register", ""),
        token("agent-b", "tok-b", "register", ""),
        token("ops", "tok-ops", "admin", ""),
    ]
    .concat()
}

fn node(port: u32, instance: &str) -> pb::RegisterNodeRequest {
    pb::RegisterNodeRequest {
        service_name: "payments".into(),
        node_name: "pay-1".into(),
        ip: vec!["10.0.0.1".into()],
        port,
        instance_id: instance.into(),
        ttl_seconds: Some(60),
        ..Default::default()
    }
}

fn denied_as_owned(result: Result<impl std::fmt::Debug, Status>, what: &str) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
    assert!(
        status.message().contains(r#"registered by "agent-a""#),
        "{what}: {}",
        status.message()
    );
}

#[tokio::test]
async fn another_identity_cannot_take_over_a_live_node() {
    let dir = Dir::new();
    let (t, _auth) = server(&dir.file("auth.toml", &owners_file())).await;
    let mut c = t.client.clone();
    c.register_node(with(node(8443, ""), Some("tok-a")))
        .await
        .expect("A registers its node");

    // The hijack of the issue: B re-registers A's node without naming an
    // instance, to redirect it. Refused, as are B's renewal and removal.
    denied_as_owned(
        c.register_node(with(node(6666, ""), Some("tok-b"))).await,
        "B re-registering A's node",
    );
    let beat = pb::HeartbeatRequest {
        service_name: "payments".into(),
        node_name: "pay-1".into(),
        ttl_seconds: Some(60),
        ..Default::default()
    };
    denied_as_owned(
        c.heartbeat(with(beat.clone(), Some("tok-b"))).await,
        "B renewing A's node",
    );
    let remove = pb::RemoveNodeRequest {
        service_name: "payments".into(),
        node_name: "pay-1".into(),
        ..Default::default()
    };
    denied_as_owned(
        c.remove_node(with(remove.clone(), Some("tok-b"))).await,
        "B removing A's node",
    );
    let nodes = c
        .get_nodes(with(
            pb::GetNodesRequest {
                service_name: "payments".into(),
                ..Default::default()
            },
            Some("tok-a"),
        ))
        .await
        .expect("get nodes")
        .into_inner()
        .nodes;
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].port, 8443, "the node still points where A said");

    // A new instance of A takes its own node over; A renews it.
    c.register_node(with(node(8444, "a-second-life"), Some("tok-a")))
        .await
        .expect("a new instance of A");
    c.heartbeat(with(beat, Some("tok-a")))
        .await
        .expect("A renews");
    // An admin may remove anyone's node.
    let removed = c
        .remove_node(with(remove, Some("tok-ops")))
        .await
        .expect("an admin removes")
        .into_inner();
    assert!(removed.removed);
}

#[tokio::test]
async fn every_change_writes_one_audit_line_naming_who_from_where_and_what() {
    let dir = Dir::new();
    let path = dir.file("auth.toml", &owners_file());
    let port = free_port();
    let proc = Proc::spawn(
        &format!(
            "serve --listen 127.0.0.1:{port} --auth-file {}",
            path.display()
        ),
        &[("RUST_LOG", "warn,discovered::audit=info")],
    );
    let mut c = eventually("the server to listen", || async move {
        connect_lazily_ok(port).await
    })
    .await;
    c.register_node(with(node(8443, ""), Some("tok-a")))
        .await
        .expect("A registers");
    // The same again only renews the node: no line.
    c.register_node(with(node(8443, ""), Some("tok-a")))
        .await
        .expect("A registers the same again");
    c.register_node(with(node(6666, ""), Some("tok-b")))
        .await
        .expect_err("B is refused");
    c.get_nodes(with(
        pb::GetNodesRequest {
            service_name: "payments".into(),
            ..Default::default()
        },
        Some("tok-a"),
    ))
    .await
    .expect("a read");
    let remove = pb::RemoveServiceRequest {
        service_name: "payments".into(),
        ..Default::default()
    };
    c.remove_service(with(remove.clone(), Some("tok-a")))
        .await
        .expect_err("a register token may not remove a service");
    c.remove_service(with(remove, Some("tok-ops")))
        .await
        .expect("an admin removes the service");
    proc.signal("TERM");
    let (_, stderr) = proc.wait_async().await;
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("registry change"))
        .collect();
    assert_eq!(
        lines.len(),
        4,
        "one line per change call, reads none: {stderr}"
    );
    let expect = [
        (
            "who=agent-a",
            "call=\"RegisterNode\"",
            "what=default/payments/pay-1",
            "outcome=\"ok\"",
        ),
        (
            "who=agent-b",
            "call=\"RegisterNode\"",
            "what=default/payments/pay-1",
            "PermissionDenied",
        ),
        (
            "who=agent-a",
            "call=\"RemoveService\"",
            "what=default/payments",
            "PermissionDenied",
        ),
        (
            "who=ops",
            "call=\"RemoveService\"",
            "what=default/payments",
            "outcome=\"ok\"",
        ),
    ];
    for (line, (who, call, what, outcome)) in lines.iter().zip(expect) {
        for part in [who, call, what, outcome, "from=127.0.0.1:"] {
            assert!(
                line.contains(part),
                "{part:?} missing from the audit line {line:?}"
            );
        }
        for secret in ["tok-a", "tok-b", "tok-ops"] {
            assert!(!line.contains(secret), "a token in the audit line {line:?}");
        }
    }
}

/// A client of the server on `port` once it answers.
async fn connect_lazily_ok(port: u16) -> Option<Client> {
    Client::connect(format!("http://127.0.0.1:{port}"))
        .await
        .ok()
}

/// The real binary at `RUST_LOG=debug,discovered=trace` with an auth file:
/// calls with good, unknown and under-privileged tokens, a watch, and a
/// reload; not one token in anything it printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_in_any_log_line() {
    use discovered::client::{Client as Typed, ConnectOptions};

    let dir = Dir::new();
    let path = dir.file("auth.toml", &owners_file());
    let port = free_port();
    let proc = Proc::spawn(
        &format!(
            "serve --listen 127.0.0.1:{port} --auth-file {}",
            path.display()
        ),
        &[("RUST_LOG", "debug,discovered=trace")],
    );
    let url = format!("http://127.0.0.1:{port}");
    let as_ = |token: &str| ConnectOptions {
        tls: None,
        token: Some(token.into()),
    };
    let a = eventually("the server to listen", || {
        let (url, options) = (url.clone(), as_("tok-a"));
        async move { Typed::connect_with(&url, &options).await.ok() }
    })
    .await;
    let b = Typed::connect_with(&url, &as_("tok-b")).await.expect("B");
    let unknown = Typed::connect_with(&url, &as_("tok-unknown-77"))
        .await
        .expect("connect");
    let watch = a.watch("", "payments");
    futures::pin_mut!(watch);
    let _ = within("a watch event", futures::StreamExt::next(&mut watch)).await;
    a.register_node(node(8443, "")).await.expect("A registers");
    b.register_node(node(6666, ""))
        .await
        .expect_err("B may not take A's node");
    unknown
        .get_nodes("", "payments")
        .await
        .expect_err("an unknown token");
    dir.file("auth.toml", &owners_file().replace("agent-b", "agent-b2"));
    tokio::time::sleep(discovered::auth::POLL_INTERVAL + Duration::from_millis(500)).await;
    proc.signal("TERM");
    let (_, stderr) = proc.wait_async().await;
    assert!(
        stderr.contains("DEBUG") || stderr.contains("TRACE"),
        "{stderr}"
    );
    assert!(
        stderr.contains("auth file loaded"),
        "the reload was seen: {stderr}"
    );
    for token in ["tok-a", "tok-b", "tok-ops", "tok-unknown-77"] {
        assert!(!stderr.contains(token), "{token} in the log");
        assert!(
            !stderr.contains(&hash_token(token)),
            "the hash of {token} in the log"
        );
    }
}

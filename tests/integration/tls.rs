//! TLS and mutual TLS (issue 12), with real handshakes and certificates
//! made for each test: who gets in, what the server sees of a client
//! certificate, certificate rotation under open streams, SIGHUP, and the
//! command line and the agent over TLS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use discovered::client::{Client as Typed, ClientResult, ConnectOptions, Event};
use discovered::proto::v1::RegisterNodeRequest;
use discovered::server::{RunningServer, Settings, TlsFiles, tls};
use discovered::store::MemoryRegistry;
use futures::{Stream, StreamExt};

use crate::common::pki::*;
use crate::common::*;

/// An in-memory server with TLS from `files`.
async fn tls_server(files: TlsFiles) -> RunningServer {
    let settings = Settings {
        tls: Some(files),
        ..Settings::default()
    };
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    RunningServer::start_with(Arc::new(MemoryRegistry::new()), settings, addr)
        .await
        .expect("start server")
}

fn node(name: &str) -> RegisterNodeRequest {
    RegisterNodeRequest {
        service_name: "payments".into(),
        node_name: name.into(),
        port: 8080,
        ..Default::default()
    }
}

/// Connects with `options` and makes one call: what a client gets.
async fn call(url: &str, options: &ConnectOptions) -> ClientResult<()> {
    let client = within("connect", Typed::connect_with(url, options)).await?;
    within("a call", client.get_nodes("", "payments")).await?;
    Ok(())
}

/// The next event of a watch that is not the initial state.
async fn next_event(events: &mut (impl Stream<Item = ClientResult<Event>> + Unpin)) -> Event {
    within("a watch event", events.next())
        .await
        .expect("the watch goes on")
        .expect("a watch event, not an error")
}

/// Reads a watch up to SYNCED.
async fn synced(events: &mut (impl Stream<Item = ClientResult<Event>> + Unpin)) {
    loop {
        if next_event(events).await == Event::Synced {
            return;
        }
    }
}

#[tokio::test]
async fn a_client_trusting_the_ca_calls_and_watches() {
    let (ca, dir) = (Ca::new("test CA"), Dir::new());
    let server = tls_server(dir.server_files(&ca.server(), None)).await;
    assert!(server.url().starts_with("https://"));
    let client = Typed::connect_with(&server.url(), &trusting(&ca, None))
        .await
        .expect("a client trusting the CA connects");
    let mut events = Box::pin(client.watch("", "payments"));
    synced(&mut events).await;
    client.register_node(node("n1")).await.expect("register");
    match next_event(&mut events).await {
        Event::NodeAdded(n) => assert_eq!(n.node_name, "n1"),
        other => panic!("expected NODE_ADDED, got {other:?}"),
    }
    let nodes = client.get_nodes("", "payments").await.expect("get nodes");
    assert_eq!(nodes.len(), 1);
    // By host name too (the certificate names localhost).
    let by_name = format!("https://localhost:{}", server.addr.port());
    call(&by_name, &trusting(&ca, None))
        .await
        .expect("localhost");
}

#[tokio::test]
async fn plaintext_and_untrusting_clients_are_refused() {
    let (ca, dir) = (Ca::new("test CA"), Dir::new());
    let server = tls_server(dir.server_files(&ca.server(), None)).await;
    let plain = format!("http://{}", server.addr);
    assert!(
        call(&plain, &ConnectOptions::default()).await.is_err(),
        "a plaintext client got an answer from the TLS port"
    );
    let other = Ca::new("another CA");
    let refused = call(&server.url(), &trusting(&other, None))
        .await
        .expect_err("a client not trusting the server's CA must not connect");
    assert!(
        refused.to_string().contains("certificate"),
        "the error says why: {refused}"
    );
    // The server goes on serving.
    call(&server.url(), &trusting(&ca, None))
        .await
        .expect("a good client");
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate_of_the_client_ca() {
    let (ca, clients, dir) = (Ca::new("server CA"), Ca::new("client CA"), Dir::new());
    let server = tls_server(dir.server_files(&ca.server(), Some(&clients))).await;
    assert!(
        call(&server.url(), &trusting(&ca, None)).await.is_err(),
        "a client without a certificate got an answer"
    );
    let stranger = Ca::new("another CA").client();
    assert!(
        call(&server.url(), &trusting(&ca, Some(&stranger)))
            .await
            .is_err(),
        "a client certificate of another CA was accepted"
    );
    call(&server.url(), &trusting(&ca, Some(&clients.client())))
        .await
        .expect("a certificate of the client CA gets in");
}

#[tokio::test]
async fn a_rotated_certificate_serves_new_connections_while_open_streams_go_on() {
    let (old_ca, dir) = (Ca::new("old CA"), Dir::new());
    let old = old_ca.server();
    let files = dir.server_files(&old, None);
    let server = tls_server(files.clone()).await;
    let new_ca = Ca::new("new CA");
    assert_eq!(
        served_certificate(server.addr, &[&old_ca]).await,
        Ok(old.der.clone())
    );

    let client = Typed::connect_with(&server.url(), &trusting(&old_ca, None))
        .await
        .expect("connect");
    let mut events = Box::pin(client.watch("", "payments"));
    synced(&mut events).await;

    // Key first: in between, the files do not match and the reload fails,
    // which must keep the old certificate.
    let new = new_ca.server();
    dir.write("key.pem", &new.key_pem);
    dir.write("cert.pem", &new.cert_pem);
    let served = eventually("the new certificate to be served", || async {
        let der = served_certificate(server.addr, &[&old_ca, &new_ca])
            .await
            .ok()?;
        (der == new.der).then_some(der)
    })
    .await;
    assert_eq!(served, new.der);
    // The watch opened before the rotation is still there, on its
    // connection and its session: a change reaches it, with no RESYNC.
    client
        .register_node(node("n1"))
        .await
        .expect("register on the old connection");
    match next_event(&mut events).await {
        Event::NodeAdded(n) => assert_eq!(n.node_name, "n1"),
        other => panic!("expected NODE_ADDED on the open watch, got {other:?}"),
    }

    // A broken file: the certificate in use stays.
    dir.write(
        "cert.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    );
    tokio::time::sleep(tls::POLL * 2 + Duration::from_millis(500)).await;
    assert_eq!(
        served_certificate(server.addr, &[&old_ca, &new_ca]).await,
        Ok(new.der.clone()),
        "a bad certificate file must leave the previous one in use"
    );
    call(&server.url(), &trusting(&new_ca, None))
        .await
        .expect("new clients still get in");
}

#[tokio::test]
async fn a_reload_trigger_rereads_the_files_at_once() {
    let (ca, dir) = (Ca::new("CA"), Dir::new());
    let first = ca.server();
    let reload = discovered::server::Reload::new();
    let settings = Settings {
        tls: Some(dir.server_files(&first, None)),
        reload: reload.clone(),
        ..Settings::default()
    };
    let server = RunningServer::start_with(
        Arc::new(MemoryRegistry::new()),
        settings,
        "127.0.0.1:0".parse().expect("addr"),
    )
    .await
    .expect("start");
    let second = ca.server();
    dir.write("key.pem", &second.key_pem);
    dir.write("cert.pem", &second.cert_pem);
    reload.trigger();
    // Well within one poll interval: the trigger did it.
    let deadline = tokio::time::Instant::now() + tls::POLL / 2;
    loop {
        let served = served_certificate(server.addr, &[&ca])
            .await
            .expect("handshake");
        if served == second.der {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the trigger did not reload within half a poll interval"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_bad_file_at_start_is_an_error_naming_it() {
    let (ca, dir) = (Ca::new("CA"), Dir::new());
    let mut files = dir.server_files(&ca.server(), None);
    // A key that is not the certificate's.
    files.key = dir.write("other-key.pem", &ca.server().key_pem);
    let error = discovered::server::TlsConfig::load(files.clone()).expect_err("mismatched key");
    assert_eq!(error.path, files.key, "{error}");
    files.cert = dir.write("empty.pem", "");
    let error = discovered::server::TlsConfig::load(files.clone()).expect_err("no certificate");
    assert_eq!(error.path, files.cert, "{error}");
}

#[test]
fn tls_flag_mistakes_are_one_line_errors() {
    let (status, stderr) =
        Proc::spawn("serve --listen 127.0.0.1:0 --tls-cert cert.pem", &[]).wait();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--tls-key"), "{stderr}");
    let dir = Dir::new();
    let missing = dir.path("missing.pem");
    let (status, stderr) = Proc::spawn(
        &format!(
            "serve --listen 127.0.0.1:0 --tls-cert {} --tls-key {}",
            missing.display(),
            missing.display()
        ),
        &[],
    )
    .wait();
    assert_eq!(status.code(), Some(1), "{stderr}");
    let last = stderr.trim().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains(&missing.display().to_string()),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_connection_that_never_starts_tls_is_closed_after_the_handshake_timeout() {
    use tokio::io::AsyncReadExt;
    let (ca, dir) = (Ca::new("CA"), Dir::new());
    let handshake = Duration::from_secs(1);
    let settings = Settings {
        tls: Some(dir.server_files(&ca.server(), None)),
        limits: discovered::server::Limits {
            handshake_timeout: handshake,
            ..Default::default()
        },
        ..Settings::default()
    };
    let server = RunningServer::start_with(
        Arc::new(MemoryRegistry::new()),
        settings,
        "127.0.0.1:0".parse().expect("addr"),
    )
    .await
    .expect("start");
    let started = tokio::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let mut buf = [0u8; 64];
    let read = within("a silent connection to be closed", silent.read(&mut buf)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() >= handshake, "closed before the timeout");
}

/// `discovered serve` with TLS from `dir` on `port`, debug logs on.
fn serve_tls(dir: &Dir, port: u16, mutual: bool) -> Proc {
    let mut line = format!(
        "serve --listen 127.0.0.1:{port} --tls-cert {} --tls-key {}",
        dir.path("cert.pem").display(),
        dir.path("key.pem").display()
    );
    if mutual {
        line += &format!(" --tls-client-ca {}", dir.path("client-ca.pem").display());
    }
    Proc::spawn(&line, &[("RUST_LOG", "discovered=debug")])
}

/// Waits until the server at `port` answers a client with `options`.
async fn answering(port: u16, options: &ConnectOptions) -> Typed {
    let url = format!("https://127.0.0.1:{port}");
    eventually("the server to answer over TLS", || async {
        let client = Typed::connect_with(&url, options).await.ok()?;
        client.get_nodes("", "payments").await.ok()?;
        Some(client)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_binarys_certificate_at_once() {
    let (ca, dir) = (Ca::new("CA"), Dir::new());
    dir.server_files(&ca.server(), None);
    let port = free_port();
    let server = serve_tls(&dir, port, false);
    answering(port, &trusting(&ca, None)).await;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let second = ca.server();
    dir.write("key.pem", &second.key_pem);
    dir.write("cert.pem", &second.cert_pem);
    server.signal("HUP");
    eventually("the new certificate after SIGHUP", || async {
        (served_certificate(addr, &[&ca]).await.ok()? == second.der).then_some(())
    })
    .await;
    // SIGHUP did not stop the server.
    call(&format!("https://127.0.0.1:{port}"), &trusting(&ca, None))
        .await
        .expect("still serving after SIGHUP");
    server.signal("TERM");
    let (status, stderr) = server.wait_async().await;
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("SIGHUP: reloading"), "{stderr}");
    assert!(stderr.contains("TLS certificate reloaded"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_and_the_agent_work_over_mutual_tls_and_the_server_sees_the_client_certificate() {
    let (ca, clients, dir) = (Ca::new("server CA"), Ca::new("client CA"), Dir::new());
    dir.server_files(&ca.server(), Some(&clients));
    let identity = clients.client();
    let ca_pem = dir.write("ca.pem", &ca.pem());
    let cert_pem = dir.write("client.pem", &identity.cert_pem);
    let key_pem = dir.write("client-key.pem", &identity.key_pem);
    let port = free_port();
    let server = serve_tls(&dir, port, true);
    let client = answering(port, &trusting(&ca, Some(&identity))).await;
    let tls_flags = format!(
        "--tls-ca {} --tls-cert {} --tls-key {}",
        ca_pem.display(),
        cert_pem.display(),
        key_pem.display()
    );

    // The CLI, by flags and by environment.
    let url = format!("https://127.0.0.1:{port}");
    let (status, stderr) = Proc::spawn(
        &format!("register-node payments cli-1 --port 80 --server {url} {tls_flags}"),
        &[],
    )
    .wait_async()
    .await;
    assert!(status.success(), "register-node over mutual TLS: {stderr}");
    let listed = tokio::process::Command::new(BIN)
        .args(argv(&format!(
            "nodes payments --output json --server 127.0.0.1:{port}"
        )))
        .env("DISCOVERED_TLS_CA", &ca_pem)
        .env("DISCOVERED_TLS_CERT", &cert_pem)
        .env("DISCOVERED_TLS_KEY", &key_pem)
        .output();
    let listed = within("discovered nodes", listed).await.expect("run");
    assert!(
        listed.status.success(),
        "nodes over mutual TLS: {}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(String::from_utf8_lossy(&listed.stdout).contains("cli-1"));
    // Without a client certificate the CLI is refused. With TLS 1.3 the
    // server's refusal arrives after the client has finished its side of
    // the handshake, so the first call fails rather than the connect, with
    // whatever status tonic makes of the closed connection (UNKNOWN with
    // the alert "CertificateRequired" in its causes, or CANCELLED when
    // the connection is seen closed first): only the failure is asserted.
    let (status, stderr) = Proc::spawn(
        &format!(
            "nodes payments --server {url} --tls-ca {}",
            ca_pem.display()
        ),
        &[],
    )
    .wait_async()
    .await;
    assert!(!status.success(), "refused without a client certificate");
    assert!(stderr.starts_with("error: "), "{stderr}");

    // The agent registers over mutual TLS, and leaves on SIGTERM.
    let agent = Proc::spawn(
        &format!(
            "agent --server {url} {tls_flags} --service payments --node agent-1 --port 9000 --no-auto"
        ),
        &[],
    );
    eventually("the agent's node", || async {
        let nodes = client.get_nodes("", "payments").await.ok()?;
        nodes.iter().any(|n| n.node_name == "agent-1").then_some(())
    })
    .await;
    agent.signal("TERM");
    let (status, stderr) = agent.wait_async().await;
    assert!(status.success(), "agent: {stderr}");

    server.signal("TERM");
    let (status, stderr) = server.wait_async().await;
    assert!(status.success(), "{stderr}");
    // What the server made of the client certificate, per connection:
    // the SAN URI first, then the DNS name.
    let seen = stderr
        .lines()
        .find(|l| l.contains("client certificate verified"))
        .unwrap_or_else(|| panic!("no client certificate logged: {stderr}"));
    assert!(
        seen.contains(&format!("[\"{AGENT_ID}\", \"agent.example.org\"]")),
        "{seen}"
    );
    // Refused handshakes are logged at debug with the peer.
    assert!(stderr.contains("TLS handshake failed"), "{stderr}");
}

#[test]
fn the_token_shows_in_no_error_message() {
    // Nobody listens on port 1: the connect error must not carry the token.
    let (status, stderr) = Proc::spawn(
        "nodes payments --server 127.0.0.1:1 --token s3cret-token",
        &[],
    )
    .wait();
    assert_eq!(status.code(), Some(5), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
    // Given as a flag, it shows in the process list: a warning says so and
    // names the variable to use, not the value.
    assert!(
        stderr.contains("warning: a secret was given on the command line with --token")
            && stderr.contains("DISCOVERED_TOKEN"),
        "{stderr}"
    );
    // A token a header cannot carry: refused, without repeating it.
    let (status, stderr) = Proc::spawn(
        "nodes payments --server 127.0.0.1:1",
        &[("DISCOVERED_TOKEN", "s3cret\ttoken\u{7f}")],
    )
    .wait();
    assert!(!status.success(), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
    assert!(
        !stderr.contains("warning:"),
        "from the environment: no warning: {stderr}"
    );
    // Nor does --help show the variable's value.
    let out = std::process::Command::new(BIN)
        .args(["nodes", "--help"])
        .env("DISCOVERED_TOKEN", "s3cret-token")
        .output()
        .expect("run");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("s3cret"));
}

#[tokio::test]
async fn a_client_certificate_is_an_identity_of_the_auth_file() {
    let dir = Dir::new();
    let ca = Ca::new("test-ca");
    let agent = ca.client();
    // The agent's certificate subject is a register identity scoped to
    // "payments"; no token is needed.
    let auth_file = dir.write(
        "auth.toml",
        &format!(
            "[[identity]]\nsubject = \"{AGENT_ID}\"\nrole = \"register\"\nservices = [\"payments\"]\n"
        ),
    );
    let settings = Settings {
        tls: Some(dir.server_files(&ca.server(), Some(&ca))),
        auth: Some(discovered::auth::Auth::load(&auth_file).expect("auth file")),
        ..Settings::default()
    };
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let server = RunningServer::start_with(Arc::new(MemoryRegistry::new()), settings, addr)
        .await
        .expect("start server");
    let client = within(
        "connect",
        Typed::connect_with(&server.url(), &trusting(&ca, Some(&agent))),
    )
    .await
    .expect("mutual TLS");
    let registered = within("register", client.register_node(node("pay-1")))
        .await
        .expect("the certificate's identity may register in its scope");
    assert_eq!(registered.node_name, "pay-1");
    let mut outside = node("ord-1");
    outside.service_name = "orders".into();
    let denied = within("register elsewhere", client.register_node(outside))
        .await
        .expect_err("outside its scope");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    assert!(denied.to_string().contains(AGENT_ID), "{denied}");
}

//! The HTTP side port (`--http-listen`, issue 16) on a real server:
//! metrics that move with calls and expiries, Prometheus service discovery
//! with its filters, the dashboard's API and event stream, and the auth
//! file's rules on all of them. Prometheus itself and the dashboard in a
//! browser are driven by `tests/operators/` (Python).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use discovered::proto::v1 as pb;
use discovered::server::Settings;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::common::*;

/// An in-memory server with the side port on, and its address.
async fn server_with(mut settings: Settings) -> (TestServer, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    settings.http_listen = Some(addr);
    let t = TestServer::memory_with(settings).await;
    listening(addr).await;
    (t, addr)
}

/// Waits until the side port accepts connections (the server binds it in
/// its own task).
async fn listening(addr: SocketAddr) {
    eventually("the side port listens", || async {
        TcpStream::connect(addr).await.ok().map(drop)
    })
    .await;
}

/// An answer: status, content type, body.
struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

fn request(path: &str, token: Option<&str>, close: bool) -> String {
    let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
    let connection = if close { "connection: close\r\n" } else { "" };
    format!("GET {path} HTTP/1.1\r\nhost: test\r\n{auth}{connection}\r\n")
}

/// GET `path` over HTTP/1.1 (the whole answer, with a length).
async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Answer {
    let mut tcp = within("connect", TcpStream::connect(addr))
        .await
        .expect("side port listens");
    tcp.write_all(request(path, token, true).as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    within("the answer", tcp.read_to_end(&mut raw))
        .await
        .unwrap();
    let raw = String::from_utf8(raw).expect("utf-8 answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a head");
    let status = head[9..12].parse().expect("a status");
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_string)
        })
        .unwrap_or_default();
    Answer {
        status,
        content_type,
        body: body.to_string(),
    }
}

/// The samples of `/metrics` by name with labels, as Prometheus prints
/// them (`name{a="b"}`).
async fn samples(addr: SocketAddr, token: Option<&str>) -> BTreeMap<String, f64> {
    let answer = get(addr, "/metrics", token).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        answer.content_type.starts_with("text/plain; version=0.0.4"),
        "{}",
        answer.content_type
    );
    answer
        .body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').expect("name value");
            (name.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

fn value(samples: &BTreeMap<String, f64>, name: &str) -> f64 {
    samples.get(name).copied().unwrap_or(0.0)
}

fn node(service: &str, name: &str, ip: &str, port: u32) -> pb::RegisterNodeRequest {
    pb::RegisterNodeRequest {
        service_name: service.into(),
        node_name: name.into(),
        ip: vec![ip.into()],
        port,
        auto: Some(false),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_calls_by_method_and_code_and_time_them() {
    let (mut t, addr) = server_with(Settings::default()).await;
    let not_found = r#"discovered_grpc_requests_total{code="NOT_FOUND",method="GetService"}"#;
    let timed = r#"discovered_grpc_request_duration_seconds_count{method="GetNodes"}"#;
    let before = samples(addr, None).await;
    let missing = get_service(&mut t.client, "", "nosuch", false).await;
    assert!(missing.is_err());
    get_nodes(&mut t.client, "", "payments").await;
    let after = samples(addr, None).await;
    // Other tests of this process count too: at least ours.
    assert!(
        value(&after, not_found) >= value(&before, not_found) + 1.0,
        "{after:?}"
    );
    assert!(value(&after, timed) >= value(&before, timed) + 1.0);
    for name in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "discovered_store_up",
    ] {
        assert!(after.contains_key(name), "{name} missing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiry_moves_the_expiry_metrics() {
    let (mut t, addr) = server_with(Settings::default()).await;
    let before = samples(addr, None).await;
    let mut short = node("expiring", "a", "10.0.0.1", 80);
    short.ttl_seconds = Some(1);
    register_node(&mut t.client, short).await;
    eventually("the node expires", || {
        let mut client = t.client.clone();
        async move {
            get_nodes(&mut client, "", "expiring")
                .await
                .is_empty()
                .then_some(())
        }
    })
    .await;
    let after = eventually("the expiry is counted", || async {
        let after = samples(addr, None).await;
        let counted = value(&after, "discovered_nodes_expired_total")
            > value(&before, "discovered_nodes_expired_total");
        counted.then_some(after)
    })
    .await;
    for name in [
        "discovered_expiry_lag_seconds_count",
        "discovered_expiry_sweeps_total",
    ] {
        assert!(
            value(&after, name) > value(&before, name),
            "{name} did not move"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_streams_are_counted_while_they_are_open() {
    let (t, addr) = server_with(Settings::default()).await;
    let open = |s: &BTreeMap<String, f64>| value(s, "discovered_watch_streams_open");
    let before = open(&samples(addr, None).await);
    let mut client = t.client.clone();
    let watch = client
        .watch_service(pb::WatchServiceRequest {
            service_name: "payments".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let during = open(&samples(addr, None).await);
    assert!(during >= before + 1.0, "{before} -> {during}");
    drop(watch);
    eventually("the closed stream is no longer counted", || async {
        (open(&samples(addr, None).await) < during).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_service_discovery_lists_every_node_with_its_labels() {
    let (mut t, addr) = server_with(Settings::default()).await;
    let mut a = node("payments", "pay-1", "10.0.0.1", 8443);
    a.metadata = [("app.kubernetes.io/name".to_string(), "pay".to_string())].into();
    a.locality = Some(pb::Locality {
        region: "eu".into(),
        zone: "eu-1".into(),
        sub_zone: String::new(),
    });
    register_node(&mut t.client, a).await;
    register_node(&mut t.client, node("payments", "pay-2", "::1", 8443)).await;
    register_node(&mut t.client, node("payments", "no-port", "10.0.0.3", 0)).await;
    register_node(
        &mut t.client,
        pb::RegisterNodeRequest {
            service_group: "shop".into(),
            ..node("orders", "ord-1", "10.0.1.1", 9000)
        },
    )
    .await;

    let targets = |body: &str| -> Vec<(String, serde_json::Value)> {
        let v: serde_json::Value = serde_json::from_str(body).expect("JSON");
        v.as_array()
            .expect("an array")
            .iter()
            .map(|g| {
                (
                    g["targets"][0].as_str().unwrap().to_string(),
                    g["labels"].clone(),
                )
            })
            .collect()
    };
    let all = get(addr, "/sd/prometheus", None).await;
    assert_eq!(all.status, 200);
    assert_eq!(all.content_type, "application/json");
    let all = targets(&all.body);
    let names: Vec<&str> = all.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        names,
        ["10.0.0.1:8443", "[::1]:8443", "10.0.1.1:9000"],
        "a node without a port is no target"
    );
    let labels = &all[0].1;
    assert_eq!(labels["__meta_discovered_group"], "default");
    assert_eq!(labels["__meta_discovered_service"], "payments");
    assert_eq!(labels["__meta_discovered_node"], "pay-1");
    assert_eq!(labels["__meta_discovered_zone"], "eu-1");
    assert_eq!(labels["__meta_discovered_status"], "serving");
    assert_eq!(
        labels["__meta_discovered_metadata_app_kubernetes_io_name"],
        "pay"
    );

    let shop = targets(&get(addr, "/sd/prometheus?group=shop", None).await.body);
    assert_eq!(shop.len(), 1);
    assert_eq!(shop[0].1["__meta_discovered_node"], "ord-1");
    let orders = targets(
        &get(addr, "/sd/prometheus?service=payments", None)
            .await
            .body,
    );
    assert_eq!(orders.len(), 2, "only the default group's payments");
    assert!(targets(&get(addr, "/sd/prometheus?service=nosuch", None).await.body).is_empty());
    let bad = get(addr, "/sd/prometheus?group=bad%20name", None).await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("group"), "{}", bad.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_api_and_its_event_stream_show_every_change() {
    let (mut t, addr) = server_with(Settings::default()).await;
    register_node(&mut t.client, node("payments", "pay-1", "10.0.0.1", 80)).await;
    let registry = get(addr, "/api/registry", None).await;
    let v: serde_json::Value = serde_json::from_str(&registry.body).unwrap();
    assert_eq!(v["groups"][0]["name"], "default");
    assert_eq!(v["groups"][0]["services"][0]["nodes"][0]["name"], "pay-1");
    assert!(v["server_time_ms"].as_i64().unwrap() > 0);

    let mut events = Events::open(addr).await;
    assert_eq!(events.next().await.0, "ready");
    let mut draining = node("payments", "pay-1", "10.0.0.1", 80);
    draining.status = pb::NodeStatus::Draining as i32;
    register_node(&mut t.client, draining).await;
    let (kind, data) = events.next().await;
    assert_eq!(kind, "node_updated");
    assert_eq!(data["node"]["status"], "draining");
    try_remove_node(&mut t.client, "", "payments", "pay-1", false)
        .await
        .unwrap();
    assert_eq!(events.next().await.0, "node_removed");

    // The stream ends when the server stops.
    let TestServer { server, .. } = t;
    let stopped = tokio::spawn(server.stop());
    within("the event stream ends", events.end()).await;
    within("the server stops", stopped).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_auth_file_the_side_port_wants_an_identity() {
    let auth = read_tokens(&[
        ("all", "read-all", ""),
        ("shop", "read-shop", "groups = [\"shop\"]"),
    ]);
    let (t, addr) = server_with(Settings {
        auth: Some(auth),
        ..Settings::default()
    })
    .await;
    drop(t.client);

    for path in ["/metrics", "/sd/prometheus", "/api/registry"] {
        let refused = get(addr, path, None).await;
        assert_eq!(refused.status, 401, "{path}: {}", refused.body);
        let wrong = get(addr, path, Some("not-a-token")).await;
        assert_eq!(wrong.status, 401, "{path}");
        assert_eq!(
            get(addr, path, Some("read-all")).await.status,
            200,
            "{path}"
        );
    }
    let refused = get(addr, "/api/registry", None).await;
    assert_eq!(refused.content_type, "application/json");
    assert!(refused.body.contains("error"), "{}", refused.body);
    // The page itself holds no registry data.
    let page = get(addr, "/", None).await;
    assert_eq!(page.status, 200);
    assert!(page.content_type.starts_with("text/html"));
    assert_eq!(get(addr, "/assets/app.js", None).await.status, 200);
    // A scope elsewhere: a service it names is refused.
    let scoped = get(
        addr,
        "/sd/prometheus?group=default&service=payments",
        Some("read-shop"),
    )
    .await;
    assert_eq!(scoped.status, 403, "{}", scoped.body);
    let scoped = get(
        addr,
        "/sd/prometheus?group=shop&service=payments",
        Some("read-shop"),
    )
    .await;
    assert_eq!(scoped.status, 200, "{}", scoped.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_get_is_served_and_unknown_paths_are_not_found() {
    let (_t, addr) = server_with(Settings::default()).await;
    assert_eq!(get(addr, "/nope", None).await.status, 404);
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        b"POST /metrics HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut raw = String::new();
    within("the answer", tcp.read_to_string(&mut raw))
        .await
        .unwrap();
    assert!(raw.starts_with("HTTP/1.1 405"), "{raw}");
}

/// `/api/events` read frame by frame (chunked transfer encoding).
struct Events {
    reader: BufReader<TcpStream>,
}

impl Events {
    async fn open(addr: SocketAddr) -> Self {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(request("/api/events", None, false).as_bytes())
            .await
            .unwrap();
        let mut reader = BufReader::new(tcp);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            within("the head", reader.read_line(&mut line))
                .await
                .unwrap();
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/event-stream"),
            "{head}"
        );
        Self { reader }
    }

    /// The next chunk of the body; `None` at its end.
    async fn chunk(&mut self) -> Option<String> {
        let mut size = String::new();
        if self.reader.read_line(&mut size).await.ok()? == 0 {
            return None;
        }
        let size = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
        let mut chunk = vec![0; size + 2];
        self.reader.read_exact(&mut chunk).await.ok()?;
        (size > 0).then(|| String::from_utf8_lossy(&chunk[..size]).into_owned())
    }

    /// The next event (keepalives skipped): its type and data.
    async fn next(&mut self) -> (String, serde_json::Value) {
        loop {
            let chunk = within("an event", self.chunk())
                .await
                .expect("the stream open");
            if chunk.starts_with(':') {
                continue;
            }
            let mut lines = chunk.lines();
            let kind = lines
                .next()
                .unwrap()
                .strip_prefix("event: ")
                .expect("event line")
                .to_string();
            let data = lines
                .next()
                .unwrap()
                .strip_prefix("data: ")
                .expect("data line");
            return (kind, serde_json::from_str(data).expect("JSON data"));
        }
    }

    async fn end(mut self) {
        while self.chunk().await.is_some() {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_the_side_port_serves_https_with_the_same_certificate() {
    use crate::common::pki::{Ca, Dir};
    let ca = Ca::new("side-port-ca");
    let dir = Dir::new();
    let files = dir.server_files(&ca.server(), None);
    // The gRPC port speaks TLS too: no plaintext test client for it.
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let settings = Settings {
        tls: Some(files),
        http_listen: Some(addr),
        ..Settings::default()
    };
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let registry = Arc::new(discovered::store::MemoryRegistry::new());
    let _server = discovered::server::RunningServer::start_with(registry, settings, any)
        .await
        .unwrap();
    listening(addr).await;

    // A client that offers HTTP/1.1 only, as curl --http1.1 does.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let mut tls = within("the TLS handshake", connector.connect(name, tcp))
        .await
        .expect("HTTPS");
    tls.write_all(request("/sd/prometheus", None, true).as_bytes())
        .await
        .unwrap();
    let mut raw = String::new();
    within("the answer", tls.read_to_string(&mut raw))
        .await
        .unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.ends_with("[]"), "{raw}");

    // Plaintext is not served.
    let plain = TcpStream::connect(addr).await.unwrap();
    let mut plain = plain;
    plain
        .write_all(request("/metrics", None, true).as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    let _ = within("the refusal", plain.read_to_end(&mut raw)).await;
    assert!(
        !String::from_utf8_lossy(&raw).contains("discovered_"),
        "metrics in plaintext"
    );
}

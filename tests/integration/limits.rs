//! The bounds on streams and connections (issue 11): per-connection
//! HTTP/2 streams, open watch streams per server, the server's HTTP/2
//! keepalive, and its handshake and idle timeouts, each against a real
//! server.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use discovered::proto::v1::*;
use discovered::server::{Limits, Settings};
use futures::{StreamExt, stream};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::common::*;

/// An in-memory server with `limits`.
async fn server_with(limits: Limits) -> TestServer {
    TestServer::memory_with(Settings {
        limits,
        ..Settings::default()
    })
    .await
}

/// Samples the open watch streams (the fan-out's receivers) for `span`
/// and returns the most seen at once.
async fn most_open_during(t: &TestServer, span: Duration) -> usize {
    let end = tokio::time::Instant::now() + span;
    let mut most = 0;
    while tokio::time::Instant::now() < end {
        most = most.max(t.hub.receivers());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    most
}

/// Opens a watch of default/payments and reads it up to SYNCED: `Ok` with
/// the open stream, or the status the watch was refused with.
async fn open_synced(mut client: Client) -> Result<tonic::Streaming<WatchEvent>, tonic::Status> {
    let request = WatchServiceRequest {
        service_name: "payments".into(),
        ..Default::default()
    };
    let mut stream = client.watch_service(request).await?.into_inner();
    loop {
        let event = stream.message().await?.expect("the stream goes on");
        if kind(&event) == EventType::Synced {
            return Ok(stream);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_holds_at_most_max_concurrent_streams() {
    const LIMIT: usize = 10;
    const WATCHES: usize = 30;
    let t = server_with(Limits {
        max_concurrent_streams: LIMIT as u32,
        ..Limits::default()
    })
    .await;
    let baseline = t.hub.receivers();
    // Every watch goes over the test server's one channel, so one HTTP/2
    // connection; each holds its stream open until `release`. A stream
    // past the limit waits in the client, or is refused (REFUSED_STREAM,
    // UNAVAILABLE) if the client sent it before it knew the limit: HTTP/2
    // allows either, and neither reaches the service.
    let (release, released) = watch::channel(false);
    let synced = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..WATCHES {
        let (client, mut released) = (t.client.clone(), released.clone());
        let (synced, refused) = (synced.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            match open_synced(client).await {
                Ok(stream) => {
                    synced.fetch_add(1, Ordering::SeqCst);
                    let _ = released.wait_for(|r| *r).await;
                    drop(stream);
                }
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                    refused.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    eventually("the first streams to open", || async {
        (synced.load(Ordering::SeqCst) >= LIMIT).then_some(())
    })
    .await;
    let most = most_open_during(&t, Duration::from_millis(500)).await - baseline;
    assert_eq!(
        most, LIMIT,
        "the server held {most} streams of one connection"
    );
    assert_eq!(synced.load(Ordering::SeqCst), LIMIT, "the rest wait");

    // The waiting streams open in turn once the first ones end.
    release.send(true).expect("tasks listen");
    for task in tasks {
        within("every watch to open or be refused", task)
            .await
            .expect("watch task");
    }
    let (synced, refused) = (
        synced.load(Ordering::SeqCst),
        refused.load(Ordering::SeqCst),
    );
    assert_eq!(
        synced + refused,
        WATCHES,
        "{synced} opened, {refused} refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_past_max_watch_streams_are_refused_until_one_closes() {
    const LIMIT: usize = 3;
    let mut t = server_with(Limits {
        max_watch_streams: LIMIT,
        ..Limits::default()
    })
    .await;
    let mut open = Vec::new();
    for _ in 0..LIMIT {
        let mut w = Watch::open(&mut t.client, "", "payments", None).await;
        w.initial("default", "payments").await;
        open.push(w);
    }
    let request = WatchServiceRequest {
        service_name: "payments".into(),
        ..Default::default()
    };
    // Each refusal is the same, however often a client asks.
    for _ in 0..3 {
        let status = Watch::refusal(&mut t.client, request.clone()).await;
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("--max-watch-streams")
                && status.message().contains(&LIMIT.to_string()),
            "the message names the limit: {status:?}"
        );
    }
    // Other calls are not limited by it.
    get_nodes(&mut t.client, "", "payments").await;

    // A closed stream gives its place back.
    drop(open.pop());
    let mut client = t.client.clone();
    let mut w = eventually("a place for a new watch", || {
        let mut client = client.clone();
        async move {
            let r = client
                .watch_service(WatchServiceRequest {
                    service_name: "payments".into(),
                    ..Default::default()
                })
                .await;
            r.ok().map(|r| r.into_inner())
        }
    })
    .await;
    let first = within("the new watch's first event", w.message())
        .await
        .expect("the new watch is served")
        .expect("an event");
    assert_eq!(kind(&first), EventType::Synced, "{first:?}");
    let status = Watch::refusal(&mut client, request).await;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
}

#[tokio::test]
async fn a_client_that_never_answers_pings_is_cut() {
    let t = server_with(Limits {
        http2_keepalive_interval: Some(Duration::from_secs(1)),
        http2_keepalive_timeout: Duration::from_secs(1),
        ..Limits::default()
    })
    .await;
    // A raw HTTP/2 client: the preface and an empty SETTINGS frame, then
    // silence. It reads what the server sends but never acknowledges a
    // ping, like a peer that vanished behind a NAT.
    let mut conn = tokio::net::TcpStream::connect(t.server.addr)
        .await
        .expect("connect");
    conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .expect("preface");
    let closed = async {
        let mut buf = [0u8; 4096];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    within(
        "the server to close a connection that ignores its pings",
        closed,
    )
    .await;
}

/// The client's half of an HTTP/2 start: the preface and an empty SETTINGS
/// frame.
const PREFACE_AND_SETTINGS: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
/// The HTTP/2 frame type of GOAWAY.
const GOAWAY: u8 = 0x7;

/// The HTTP/2 frame type of PING.
const PING: u8 = 0x6;

/// Reads HTTP/2 frames until the server closes `conn`, answering its pings
/// as any client does (a graceful close waits for one); returns the types
/// of the frames it sent.
async fn frames_until_closed(conn: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut types = Vec::new();
    let mut header = [0u8; 9];
    while conn.read_exact(&mut header).await.is_ok() {
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let (kind, flags) = (header[3], header[4]);
        types.push(kind);
        let mut payload = vec![0u8; len];
        if conn.read_exact(&mut payload).await.is_err() {
            break;
        }
        if kind == PING && flags & 0x1 == 0 {
            let mut ack = vec![0, 0, 8, PING, 0x1, 0, 0, 0, 0];
            ack.extend_from_slice(&payload);
            if conn.write_all(&ack).await.is_err() {
                break;
            }
        }
    }
    types
}

/// Reads until the server closes `conn`, discarding what it sends.
async fn closed(conn: &mut tokio::net::TcpStream) {
    let mut buf = [0u8; 4096];
    while let Ok(1..) = conn.read(&mut buf).await {}
}

#[tokio::test]
async fn a_connection_that_never_speaks_http2_is_closed() {
    let handshake = Duration::from_secs(1);
    let t = server_with(Limits {
        handshake_timeout: handshake,
        ..Limits::default()
    })
    .await;
    // Silence after connecting: closed once the handshake time is up.
    let started = tokio::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(t.server.addr)
        .await
        .expect("connect");
    within("a silent connection to be closed", closed(&mut silent)).await;
    assert!(
        started.elapsed() >= handshake,
        "closed before the handshake timeout"
    );
    // Half a preface, then silence: the same.
    let mut partial = tokio::net::TcpStream::connect(t.server.addr)
        .await
        .expect("connect");
    partial.write_all(b"PRI * HTTP").await.expect("write");
    within(
        "a half-started connection to be closed",
        closed(&mut partial),
    )
    .await;
    // Not HTTP/2 at all: closed at once, with nothing sent back.
    let mut http1 = tokio::net::TcpStream::connect(t.server.addr)
        .await
        .expect("connect");
    http1
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    within(
        "an HTTP/1 request to be closed",
        http1.read_to_end(&mut answer),
    )
    .await
    .ok();
    assert!(answer.is_empty(), "an HTTP/1 request got {answer:?}");
    // The server goes on serving.
    let mut client = t.client.clone();
    assert!(
        get_nodes(&mut client, "default", "payments")
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn an_idle_connection_gets_a_goaway_and_is_closed() {
    let t = server_with(Limits {
        idle_timeout: Some(Duration::from_secs(1)),
        ..Limits::default()
    })
    .await;
    let mut conn = tokio::net::TcpStream::connect(t.server.addr)
        .await
        .expect("connect");
    conn.write_all(PREFACE_AND_SETTINGS).await.expect("preface");
    let types = within(
        "an idle connection to be closed",
        frames_until_closed(&mut conn),
    )
    .await;
    assert_eq!(
        types.last(),
        Some(&GOAWAY),
        "the server closes an idle connection with a GOAWAY (frame types sent: {types:?})"
    );
}

#[tokio::test]
async fn a_watch_keeps_its_connection_and_clients_reconnect_after_an_idle_close() {
    let idle = Duration::from_secs(1);
    let t = server_with(Limits {
        idle_timeout: Some(idle),
        ..Limits::default()
    })
    .await;
    // A watch on a connection of its own outlives several idle timeouts.
    let mut watcher = connect(&t.server.url()).await;
    let mut w = Watch::open(&mut watcher, "default", "payments", None).await;
    assert!(w.initial("default", "payments").await.is_empty());
    tokio::time::sleep(idle * 3).await;
    let mut writer = connect(&t.server.url()).await;
    let node = register_node(&mut writer, full_node("default", "payments", "n1", 1)).await;
    w.expect_node(EventType::NodeAdded, &node).await;
    // The writer's connection went idle and was closed in between calls:
    // its next call still succeeds, on a new connection.
    tokio::time::sleep(idle * 3).await;
    assert_eq!(get_nodes(&mut writer, "default", "payments").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_and_resyncs() {
    const BUDGET: usize = 8 * 1024;
    /// What the client's HTTP/2 stream and connection windows let the
    /// server send before the client takes anything.
    const CLIENT_WINDOW: usize = 65_535;
    /// The server's tonic encodes up to 16 KiB of messages (and one more)
    /// before handing them on.
    const TONIC_CHUNK: usize = 16 * 1024;
    const NODES: u32 = 100;
    const METADATA: usize = 2 * 1024;
    let t = server_with(Limits {
        watch_buffer_bytes: BUDGET,
        ..Limits::default()
    })
    .await;
    let channel = tonic::transport::Endpoint::from_shared(t.server.url())
        .expect("url")
        .initial_stream_window_size(CLIENT_WINDOW as u32)
        .initial_connection_window_size(CLIENT_WINDOW as u32)
        .connect()
        .await
        .expect("connect");
    let mut frozen = open_synced(Client::new(channel)).await.expect("a watch");

    // The watcher stops reading. More changes than the fan-out keeps for
    // a watcher that fell behind, each node 2 KiB of metadata: megabytes
    // offered to a stream whose client takes none of it. One write at a
    // time, so the stream's task keeps up with the fan-out and only its
    // budget stops it from queueing everything.
    let writes = discovered::store::FANOUT_CAPACITY as u32 + 500;
    let writer = t.client.clone();
    stream::iter(0..writes)
        .for_each_concurrent(1, |i| {
            let mut c = writer.clone();
            async move {
                let mut req =
                    full_node("default", "payments", &format!("n{}", i % NODES), i % NODES);
                // Each write changes the node (an identical one is only a renewal).
                req.metadata = meta(&[("blob", &"x".repeat(METADATA)), ("write", &i.to_string())]);
                register_node(&mut c, req).await;
            }
        })
        .await;

    // Reading again: what was held for it arrives, then RESYNC and the
    // current state. What was held is bounded by the stream's budget (its
    // HTTP/2 send buffer) and the client's window, not by what was offered.
    let mut held = 0;
    loop {
        let event = within("the frozen watch's next event", frozen.message())
            .await
            .expect("the stream goes on")
            .expect("an event");
        if kind(&event) == EventType::Resync {
            break;
        }
        assert_ne!(kind(&event), EventType::Synced, "no RESYNC came");
        held += event.encoded_len();
    }
    let offered = writes as usize * METADATA;
    let bound = BUDGET + CLIENT_WINDOW + TONIC_CHUNK + 2 * (METADATA + 512);
    assert!(
        held <= bound,
        "the server held {held} bytes for a client that did not read (bound {bound}, offered {offered})"
    );
    let mut nodes = 0;
    loop {
        let event = within("the state after RESYNC", frozen.message())
            .await
            .expect("the stream goes on")
            .expect("an event");
        match kind(&event) {
            EventType::Initial => nodes += 1,
            EventType::Synced => break,
            other => panic!("{other:?} between RESYNC and SYNCED"),
        }
    }
    assert_eq!(nodes, NODES, "the state after RESYNC has every node");
}

//! The bounds on streams and connections (issue 11): per-connection
//! HTTP/2 streams, open watch streams per server, and the server's HTTP/2
//! keepalive, each against a real server.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use discovered::proto::v1::*;
use discovered::server::{Limits, Settings};
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

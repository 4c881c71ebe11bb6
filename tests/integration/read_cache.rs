//! The read cache (issue 14): each server keeps the encoded GetNodes
//! answer of a service, and a registered service's GetService answer,
//! until something could have changed them. Each way an
//! answer goes is caused here on real Redis: a write through this server,
//! a change through another server (the change feed), a RESYNC, the feed
//! breaking, and the earliest deadline passing.

use std::time::{Duration, Instant};

use redis::AsyncCommands;

use crate::common::*;

/// How long a change through one server may take to show in another's
/// answers: the change feed's delivery (milliseconds) with room for a
/// loaded machine. A correctness bound, not a speed target.
const FEED_BOUND: Duration = Duration::from_secs(3);

fn names(nodes: &[discovered::proto::v1::Node]) -> Vec<String> {
    nodes.iter().map(|n| n.node_name.clone()).collect()
}

/// Gets `service`'s answer cached in the server behind `c`, then deletes
/// `node` straight in Redis, as nothing in `discovered` would: no change
/// is published, so the cached answer still shows it, and only the
/// cache's other paths can notice. Whether an answer was cached shows
/// only in that way: a read right after a write may find its own change
/// still on the feed (which then forgets the answer it stored), so this
/// tries again (restoring the node) until the answer stayed.
async fn cache_then_delete(c: &mut Client, redis: &RedisServer, service: &str, node: &str) {
    let key = format!("discovered:v2:{{g/{service}}}:nodes");
    let mut conn = redis.connection().await;
    let stored: String = conn.hget(&key, node).await.expect("HGET");
    for _ in 0..100 {
        let cached = names(&get_nodes(c, "g", service).await);
        assert!(cached.contains(&node.to_string()), "{cached:?}");
        let removed: u32 = conn.hdel(&key, node).await.expect("HDEL");
        assert_eq!(removed, 1);
        if names(&get_nodes(c, "g", service).await).contains(&node.to_string()) {
            return;
        }
        let () = conn.hset(&key, node, &stored).await.expect("HSET");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("GetNodes of g/{service} was never answered from the cache");
}

/// Reads `service` through `c` until its node names are `want`, at most
/// [`FEED_BOUND`]; returns how long that took.
async fn until_names(c: &mut Client, service: &str, want: &[&str]) -> Duration {
    let start = Instant::now();
    loop {
        let got = names(&get_nodes(c, "g", service).await);
        if got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < FEED_BOUND,
            "GetNodes of g/{service} still {got:?} after {FEED_BOUND:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_is_served_from_the_cache_until_something_changes_it() {
    let mut t = TestServer::start(Backend::Redis).await;
    register_node(&mut t.client, bare_node("g", "s", "n1", None)).await;
    register_node(&mut t.client, bare_node("g", "s", "n2", None)).await;
    // Cached: a change Redis never announces is not seen...
    let redis = t.redis.take().expect("redis");
    cache_then_delete(&mut t.client, &redis, "s", "n2").await;
    assert_eq!(
        names(&get_nodes(&mut t.client, "g", "s").await),
        ["n1", "n2"]
    );
    t.redis = Some(redis);
    // ...until a write through this server, which answers only once the
    // cached answer is gone (read-your-writes).
    register_node(&mut t.client, bare_node("g", "s", "n3", None)).await;
    assert_eq!(
        names(&get_nodes(&mut t.client, "g", "s").await),
        ["n1", "n3"]
    );
}

/// Leaves B's cached answer of `g/s` stale: node `x` registered through A,
/// cached by B, then deleted straight in Redis (no change published). B's
/// answers still show `x` (whose names beside it are `now`), so only the
/// change feed can bring them up to date.
async fn stale_on_b(a: &mut TestServer, b: &mut TestServer, redis: &RedisServer, now: &[&str]) {
    register_node(&mut a.client, bare_node("g", "s", "x", None)).await;
    let mut with_x = now.to_vec();
    with_x.push("x");
    with_x.sort_unstable();
    until_names(&mut b.client, "s", &with_x).await;
    cache_then_delete(&mut b.client, redis, "s", "x").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_another_server_reaches_this_ones_answers() {
    let redis = RedisServer::start();
    let mut a = TestServer::sharing(&redis).await;
    let mut b = TestServer::sharing(&redis).await;
    register_node(&mut a.client, bare_node("g", "s", "n1", None)).await;
    // Before each change through A, B serves a stale cached answer; after
    // it, B's answers are Redis's state (x gone) within the bound.
    stale_on_b(&mut a, &mut b, &redis, &["n1"]).await;
    register_node(&mut a.client, bare_node("g", "s", "n2", None)).await;
    until_names(&mut b.client, "s", &["n1", "n2"]).await;
    stale_on_b(&mut a, &mut b, &redis, &["n1", "n2"]).await;
    try_remove_node(&mut a.client, "g", "s", "n1", false)
        .await
        .expect("RemoveNode");
    until_names(&mut b.client, "s", &["n2"]).await;
    stale_on_b(&mut a, &mut b, &redis, &["n2"]).await;
    try_remove_service(&mut a.client, "g", "s", false)
        .await
        .expect("RemoveService");
    until_names(&mut b.client, "s", &[]).await;
}

/// A server on Redis whose cached answer of `g/s` shows nodes `n1` and
/// `n2`, while Redis holds `n1` only (see [`cache_then_delete`]).
async fn stale_answer_cached() -> TestServer {
    let mut t = TestServer::start(Backend::Redis).await;
    register_node(&mut t.client, bare_node("g", "s", "n1", None)).await;
    register_node(&mut t.client, bare_node("g", "s", "n2", None)).await;
    let redis = t.redis.take().expect("redis");
    cache_then_delete(&mut t.client, &redis, "s", "n2").await;
    t.redis = Some(redis);
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_empties_the_cache() {
    let mut t = stale_answer_cached().await;
    // A key of ours expiring is something else changing the registry:
    // watchers resync, and the cache forgets everything.
    let mut conn = t.redis().connection().await;
    let () = conn
        .set_options(
            "discovered:v2:stray",
            1,
            redis::SetOptions::default().with_expiration(redis::SetExpiry::PX(1)),
        )
        .await
        .expect("SET PX");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let _: bool = conn.exists("discovered:v2:stray").await.expect("EXISTS");
    until_names(&mut t.client, "s", &["n1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_bypass_the_cache_of_a_broken_feed() {
    let mut t = stale_answer_cached().await;
    // The change subscription's connection dies, and Redis then stops
    // answering for a while, so the subscription cannot come back (nor
    // send the RESYNC that would empty the cache). Whatever happens while
    // it is down is unknown: reads must go to Redis (and fail here, with
    // UNAVAILABLE) rather than answer from the cache.
    let mut conn = t.redis().connection().await;
    let killed: u32 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await
        .expect("CLIENT KILL");
    assert!(killed >= 1, "the server's subscription was killed");
    let pause = Duration::from_secs(6);
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(pause.as_millis() as u64)
        .arg("ALL")
        .query_async(&mut conn)
        .await
        .expect("CLIENT PAUSE");
    let paused = Instant::now();
    // Until the server notices the lost subscription, the stale answer
    // may still come; the first other answer must come while Redis is
    // paused: a read that went to Redis.
    let first_other = loop {
        let reply = t
            .client
            .get_nodes(discovered::proto::v1::GetNodesRequest {
                service_group: "g".into(),
                service_name: "s".into(),
            })
            .await;
        match reply {
            Ok(r) if names(&r.get_ref().nodes) == ["n1", "n2"] => {
                assert!(
                    paused.elapsed() < pause,
                    "the stale cached answer outlived the lost feed"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => break other,
        }
    };
    assert!(
        paused.elapsed() < pause,
        "the first read past the cache came after the pause"
    );
    let status = first_other.expect_err("Redis is paused: the read that bypassed the cache fails");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    // Once Redis answers again, the subscription is back and reads are
    // Redis's state.
    tokio::time::sleep(pause.saturating_sub(paused.elapsed())).await;
    until_names(&mut t.client, "s", &["n1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_node_is_never_served_from_the_cache() {
    let mut t = TestServer::start(Backend::Redis).await;
    register_node(&mut t.client, bare_node("g", "s", "keep", None)).await;
    let short = register_node(&mut t.client, bare_node("g", "s", "short", Some(1))).await;
    let deadline = ms(&short.expires_at);
    // Read over and over across the deadline: before it the node is
    // there (from the cache, mostly), from it on never.
    loop {
        let before = now_ms();
        let got = names(&get_nodes(&mut t.client, "g", "s").await);
        let after = now_ms();
        if before >= deadline {
            assert_eq!(got, ["keep"], "read at {before}, deadline {deadline}");
            if after > deadline + 500 {
                break;
            }
        } else if after < deadline {
            assert_eq!(
                got,
                ["keep", "short"],
                "read at {after}, deadline {deadline}"
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Gets `service`'s GetService answer cached in the server behind `c`,
/// then deletes its record straight in Redis (no change published): the
/// service stays listed, so a read from Redis now answers an implicit
/// service (no endpoint), and the cached answer still shows the record.
/// Retried as [`cache_then_delete`] is.
async fn cache_service_then_delete(c: &mut Client, redis: &RedisServer, service: &str) {
    let key = format!("discovered:v2:{{g/{service}}}:service");
    let mut conn = redis.connection().await;
    let stored: String = conn.get(&key).await.expect("GET");
    for _ in 0..100 {
        let cached = get_service(c, "g", service, false)
            .await
            .expect("GetService");
        assert!(!cached.endpoint.is_empty(), "{cached:?}");
        let removed: u32 = conn.del(&key).await.expect("DEL");
        assert_eq!(removed, 1);
        let again = get_service(c, "g", service, false)
            .await
            .expect("GetService");
        if again.endpoint == cached.endpoint {
            return;
        }
        let () = conn.set(&key, &stored).await.expect("SET");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("GetService of g/{service} was never answered from the cache");
}

/// Reads `service`'s record through `c` until its endpoint is `want`, at
/// most [`FEED_BOUND`].
async fn until_endpoint(c: &mut Client, service: &str, want: &str) {
    let start = Instant::now();
    loop {
        let got = get_service(c, "g", service, false)
            .await
            .expect("GetService");
        if got.endpoint == want {
            return;
        }
        assert!(
            start.elapsed() < FEED_BOUND,
            "GetService of g/{service} still has endpoint {:?} after {FEED_BOUND:?}, want {want:?}",
            got.endpoint
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_services_answer_is_cached_until_it_changes() {
    let redis = RedisServer::start();
    let mut a = TestServer::sharing(&redis).await;
    let mut b = TestServer::sharing(&redis).await;
    register_service(&mut a.client, bare_service("g", "s")).await;
    until_endpoint(&mut b.client, "s", "http://x").await;
    // Cached on B: a deletion Redis never announces is not seen...
    cache_service_then_delete(&mut b.client, &redis, "s").await;
    let cached = get_service(&mut b.client, "g", "s", false).await;
    assert_eq!(cached.expect("cached").endpoint, "http://x");
    // ...but an answer that reveals credentials is read from Redis each
    // time (the record is gone there: an implicit service).
    let revealed = get_service(&mut b.client, "g", "s", true).await;
    assert_eq!(revealed.expect("revealed").endpoint, "");
    // A change through A reaches B's answer through the change feed.
    let mut changed = bare_service("g", "s");
    changed.endpoint = "http://y".into();
    register_service(&mut a.client, changed).await;
    until_endpoint(&mut b.client, "s", "http://y").await;
    // A write through B answers only once B's cached answer is gone: even
    // an identical registration, which publishes no change but moves
    // updated_at.
    let before = get_service(&mut b.client, "g", "s", false).await;
    let before = before.expect("GetService").updated_at.expect("updated_at");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut same = bare_service("g", "s");
    same.endpoint = "http://y".into();
    let renewed = register_service(&mut b.client, same).await;
    let after = get_service(&mut b.client, "g", "s", false).await;
    let after = after.expect("GetService").updated_at.expect("updated_at");
    assert_eq!(Some(after), renewed.updated_at, "the renewal's updated_at");
    assert!(
        (after.seconds, after.nanos) > (before.seconds, before.nanos),
        "{after:?} after {before:?}"
    );
    cache_service_then_delete(&mut b.client, &redis, "s").await;
    let mut again = bare_service("g", "s");
    again.endpoint = "http://z".into();
    register_service(&mut b.client, again).await;
    let now = get_service(&mut b.client, "g", "s", false).await;
    assert_eq!(now.expect("GetService").endpoint, "http://z");
    // A removal through A: B answers NOT_FOUND within the bound.
    try_remove_service(&mut a.client, "g", "s", false)
        .await
        .expect("RemoveService");
    let start = Instant::now();
    while get_service(&mut b.client, "g", "s", false).await.is_ok() {
        assert!(
            start.elapsed() < FEED_BOUND,
            "B still answers a removed service"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_known_only_by_its_nodes_is_never_cached() {
    let mut t = TestServer::start(Backend::Redis).await;
    register_node(&mut t.client, bare_node("g", "s", "n1", None)).await;
    for _ in 0..3 {
        let implicit = get_service(&mut t.client, "g", "s", false).await;
        assert_eq!(implicit.expect("an implicit service").endpoint, "");
    }
    // Its listing goes without a change message (as a registration that
    // raced a removal can leave it): the next answer is Redis's.
    let redis = t.redis.as_ref().expect("redis");
    let mut conn = redis.connection().await;
    let removed: u32 = conn
        .zrem("discovered:v2:{listing}:group:g:services", "s")
        .await
        .expect("ZREM");
    assert_eq!(removed, 1);
    let status = get_service(&mut t.client, "g", "s", false)
        .await
        .expect_err("no longer listed");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
}

//! `discovered agent` and `discovered serve` as real processes: the agent
//! keeps its node registered through restarts and removes it on SIGTERM.

use std::time::Duration;

use crate::common::{Proc, RedisServer, eventually, free_port, ms, now_ms, within};
use discovered::client::{Client, Event};
use discovered::hostfacts;
use discovered::proto::v1::{Node, NodeStatus};
use futures::StreamExt;

const TTL: u64 = 2;

struct Setup {
    redis: RedisServer,
    port: u16,
    server: Option<Proc>,
    client: Client,
}

impl Setup {
    /// Stops the server, and starts it again on the same port and Redis
    /// once the node's TTL has run out.
    async fn restart_server_after_the_ttl(&mut self) {
        drop(self.server.take());
        tokio::time::sleep(Duration::from_secs(TTL + 1)).await;
        self.server = Some(serve(&self.redis, self.port));
    }
}

fn serve(redis: &RedisServer, port: u16) -> Proc {
    let redis = redis.url();
    Proc::spawn(
        &format!("serve --listen 127.0.0.1:{port} --redis-url {redis}"),
        &[],
    )
}

async fn setup() -> Setup {
    let redis = RedisServer::start();
    let port = free_port();
    let server = serve(&redis, port);
    let client = eventually("the server to listen", || async move {
        Client::connect(&format!("127.0.0.1:{port}")).await.ok()
    })
    .await;
    Setup {
        redis,
        port,
        server: Some(server),
        client,
    }
}

fn agent(port: u16, node: &str) -> Proc {
    Proc::spawn(
        &format!(
            "agent --server 127.0.0.1:{port} --service payments --node {node} --port 9000 \
             --ttl {TTL} --meta role=api"
        ),
        &[],
    )
}

async fn node(client: &Client, name: &str) -> Option<Node> {
    client
        .get_nodes("", "payments")
        .await
        .ok()?
        .into_iter()
        .find(|n| n.node_name == name)
}

async fn wait_for_node(client: &Client, name: &str, what: &str) -> Node {
    eventually(what, || async move { node(client, name).await }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_registers_host_facts_stays_alive_and_leaves_on_sigterm() {
    let s = setup().await;
    let agent = agent(s.port, "n1");
    let n = wait_for_node(&s.client, "n1", "the agent's node").await;
    let facts = hostfacts::gather();
    assert_eq!(n.port, 9000);
    assert_eq!(n.ip, facts.ip);
    assert_eq!(
        (n.cpu_count, n.memory_mb),
        (facts.cpu_count, facts.memory_mb)
    );
    assert_eq!(
        (n.os.as_str(), n.arch.as_str()),
        (facts.os.as_str(), facts.arch.as_str())
    );
    assert_eq!(n.platform_name, facts.platform_name);
    assert_eq!(n.metadata.get("role").map(String::as_str), Some("api"));
    assert_eq!(
        n.metadata.get("kernel_version"),
        Some(&facts.kernel_version)
    );
    assert_eq!(n.instance_id.len(), 32);

    // Alive past several TTLs, as the same registration.
    let later = ms(&n.registered_at) + 3 * TTL as i64 * 1000;
    eventually("three TTLs to pass", || async move {
        (now_ms() > later).then_some(())
    })
    .await;
    let still = node(&s.client, "n1")
        .await
        .expect("the node expired under a running agent");
    assert_eq!(
        (still.registered_at, still.instance_id.clone()),
        (n.registered_at, n.instance_id.clone())
    );

    agent.signal("TERM");
    let (status, stderr) = agent.wait_async().await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        node(&s.client, "n1").await.is_none(),
        "SIGTERM must remove the node"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_registers_its_locality_and_weight_and_drains_before_leaving() {
    const DRAIN: u64 = 2;
    let s = setup().await;
    let agent = Proc::spawn(
        &format!(
            "agent --server 127.0.0.1:{} --service payments --node n1 --port 9000 --ttl {TTL} \
             --region eu --zone eu-1 --sub-zone rack-7 --weight 30 --drain-seconds {DRAIN}",
            s.port
        ),
        &[],
    );
    let n = wait_for_node(&s.client, "n1", "the agent's node").await;
    let locality = n.locality.clone().expect("a locality");
    assert_eq!(
        (
            locality.region.as_str(),
            locality.zone.as_str(),
            locality.sub_zone.as_str()
        ),
        ("eu", "eu-1", "rack-7")
    );
    assert_eq!(n.weight, 30);
    assert_eq!(n.status, NodeStatus::Serving as i32);

    let mut events = Box::pin(s.client.watch("", "payments"));
    let _ = until(&mut events, |e| matches!(e, Event::Synced)).await;
    agent.signal("TERM");
    // First draining, still listed...
    let drained = until(&mut events, |e| matches!(e, Event::NodeUpdated(_))).await;
    let Event::NodeUpdated(drained) = drained else {
        unreachable!()
    };
    assert_eq!(drained.status, NodeStatus::Draining as i32);
    assert_eq!(drained.instance_id, n.instance_id);
    let marked = now_ms();
    let listed = node(&s.client, "n1")
        .await
        .expect("a draining node stays listed");
    assert_eq!(listed.status, NodeStatus::Draining as i32);
    // ...then removed once the drain is over, and the agent exits cleanly.
    let removed = until(&mut events, |e| matches!(e, Event::NodeRemoved(_))).await;
    let after = now_ms() - marked;
    assert!(
        after >= (DRAIN as i64) * 1000 - 200,
        "removed {after} ms after draining, before the {DRAIN} s drain: {removed:?}"
    );
    let (status, stderr) = agent.wait_async().await;
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_leaves_its_node_to_expire() {
    let s = setup().await;
    let mut agent = agent(s.port, "n1");
    let n = wait_for_node(&s.client, "n1", "the agent's node").await;
    let mut events = Box::pin(s.client.watch("", "payments"));
    // The watch holds the state before the agent dies.
    loop {
        let e = within("the watch's SYNCED", events.next()).await;
        if let Some(Ok(Event::Synced)) = e {
            break;
        }
    }
    let _ = agent.child.kill();
    let _ = agent.child.wait();
    let expired = within("NODE_EXPIRED after the agent was killed", async {
        while let Some(e) = events.next().await {
            if let Ok(Event::NodeExpired(node)) = e {
                return node;
            }
        }
        panic!("watch ended");
    })
    .await;
    assert_eq!(expired.node_name, "n1");
    assert_eq!(expired.ip, n.ip);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_keeps_the_successors_node() {
    let s = setup().await;
    let first = agent(s.port, "n1");
    let n1 = wait_for_node(&s.client, "n1", "agent 1's node").await;
    let _second = agent(s.port, "n1");
    let n2 = eventually("agent 2 to take the node over", || {
        let client = s.client.clone();
        let old = n1.instance_id.clone();
        async move { node(&client, "n1").await.filter(|n| n.instance_id != old) }
    })
    .await;
    first.signal("TERM");
    let (status, stderr) = first.wait_async().await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    let kept = node(&s.client, "n1")
        .await
        .expect("agent 1 removed agent 2's node");
    assert_eq!(kept.instance_id, n2.instance_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_node_was_taken_over_stops_renewing_it() {
    let s = setup().await;
    let first = agent(s.port, "n1");
    let n1 = wait_for_node(&s.client, "n1", "agent 1's node").await;
    let mut second = agent(s.port, "n1");
    eventually("agent 2 to take the node over", || {
        let client = s.client.clone();
        let old = n1.instance_id.clone();
        async move { node(&client, "n1").await.filter(|n| n.instance_id != old) }
    })
    .await;
    // Agent 1 heartbeats every TTL/3: within one TTL it has been refused.
    tokio::time::sleep(Duration::from_secs(TTL)).await;
    let mut events = Box::pin(s.client.watch("", "payments"));
    let _ = until(&mut events, |e| matches!(e, Event::Synced)).await;

    // With agent 2 gone without a word, nobody renews the node: it expires,
    // and agent 1 neither heartbeats it back nor registers it again.
    let _ = second.child.kill();
    let _ = second.child.wait();
    let expired = until(&mut events, |e| matches!(e, Event::NodeExpired(_))).await;
    let Event::NodeExpired(expired) = expired else {
        unreachable!()
    };
    assert_eq!(expired.node_name, "n1");
    let quiet = tokio::time::timeout(Duration::from_secs(2 * TTL), events.next()).await;
    assert!(
        quiet.is_err(),
        "agent 1 took the node back after it was taken over: {quiet:?}"
    );
    assert!(node(&s.client, "n1").await.is_none());

    first.signal("TERM");
    let (status, stderr) = first.wait_async().await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(
        stderr.matches("another instance owns the node now").count(),
        1,
        "{stderr}"
    );
    assert!(
        !stderr.contains("node removed"),
        "agent 1 removed a node it no longer owns: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_logged_once_however_many_retries_it_takes() {
    let mut s = setup().await;
    let agent = agent(s.port, "n1");
    wait_for_node(&s.client, "n1", "the agent's node").await;

    // Down for longer than the TTL: the agent retries several times (its
    // backoff is capped at TTL/3) and the node is gone when it comes back.
    s.restart_server_after_the_ttl().await;
    wait_for_node(&s.client, "n1", "the node after the server came back").await;

    agent.signal("TERM");
    let (status, stderr) = agent.wait_async().await;
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(
        stderr.matches("cannot reach the registry").count(),
        1,
        "{stderr}"
    );
    assert_eq!(stderr.matches("node registered").count(), 2, "{stderr}");
}

/// Reads events until one matches, failing after [`WAIT`](crate::common::WAIT).
async fn until(
    events: &mut (impl futures::Stream<Item = discovered::client::ClientResult<Event>> + Unpin),
    want: impl Fn(&Event) -> bool,
) -> Event {
    within("the awaited event", async {
        while let Some(e) = events.next().await {
            match e {
                Ok(e) if want(&e) => return e,
                Ok(_) => {}
                Err(e) => panic!("watch failed: {e}"),
            }
        }
        panic!("watch ended");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_comes_back_after_the_server_and_after_redis_restart() {
    let mut s = setup().await;
    let _agent = agent(s.port, "n1");
    wait_for_node(&s.client, "n1", "the agent's node").await;

    // The server dies long enough for the node to expire, then returns.
    s.restart_server_after_the_ttl().await;
    wait_for_node(&s.client, "n1", "the node after the server came back").await;

    // Redis restarts empty: the agent's heartbeat gets NOT_FOUND and it
    // registers again.
    s.redis.restart();
    wait_for_node(&s.client, "n1", "the node after Redis restarted empty").await;
}

#[test]
fn a_bad_or_missing_agent_flag_is_one_line_and_exit_code_two() {
    for (args, names) in [
        ("agent --service x --ttl 0", "--ttl"),
        ("agent --service x --ttl soon", "--ttl"),
        ("agent --ttl 30", "--service"),
        ("agent --service x --meta novalue", "--meta"),
        ("agent --service x --port 70000", "--port"),
    ] {
        let (status, stderr) = Proc::spawn(args, &[]).wait();
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: want one line, got {stderr:?}");
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains(names),
            "{args:?}: {stderr}"
        );
    }
}

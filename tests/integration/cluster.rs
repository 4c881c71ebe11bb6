//! Redis Cluster (issue 13). For now the fixture the Cluster tests stand
//! on: six real nodes forming three shards.

use std::time::Duration;

use crate::common::cluster::{
    ClusterFixture, MASTERS, SLOTS, command_keys, key_counts, parse_commandstats,
    parse_monitor_line,
};
use crate::common::command_on;

/// `CLUSTER NODES` of the node on `port`: one line per node, with its id,
/// address, flags and the master it replicates.
fn cluster_nodes(port: u16) -> String {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("url");
    let mut conn = client.get_connection().expect("connect");
    redis::cmd("CLUSTER")
        .arg("NODES")
        .query(&mut conn)
        .expect("CLUSTER NODES")
}

#[test]
fn the_fixture_is_three_masters_each_with_a_replica() {
    let cluster = ClusterFixture::start();
    let nodes = cluster_nodes(cluster.nodes[0].port);
    let lines: Vec<Vec<&str>> = nodes
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines.len(), 2 * MASTERS, "{nodes}");
    let masters: Vec<&str> = lines
        .iter()
        .filter(|f| f[2].contains("master"))
        .map(|f| f[0])
        .collect();
    assert_eq!(masters.len(), MASTERS, "{nodes}");
    // Every replica follows a different master.
    let mut followed: Vec<&str> = lines
        .iter()
        .filter(|f| f[2].contains("slave"))
        .map(|f| f[3])
        .collect();
    followed.sort_unstable();
    followed.dedup();
    assert_eq!(followed.len(), MASTERS, "{nodes}");
    assert!(followed.iter().all(|m| masters.contains(m)), "{nodes}");
    // Every node listens on loopback only.
    assert!(
        lines.iter().all(|f| f[1].starts_with("127.0.0.1:")),
        "{nodes}"
    );
}

// ---------------------------------------------------------------------------
// The fixture's fault helpers (need nothing from the server)
// ---------------------------------------------------------------------------

/// A plain connection to the node serving `key`, and a SET of it there.
async fn set_on_owner(cluster: &ClusterFixture, key: &str, value: &str) {
    let owner = cluster.master_of(key).await;
    let _: () = command_on(owner.port, redis::cmd("SET").arg(key).arg(value))
        .await
        .unwrap_or_else(|e| panic!("SET {key} on {}: {e}", owner.port));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fixture_reads_its_topology_slots_commandstats_and_commands() {
    let cluster = ClusterFixture::start();
    let t = cluster.topology().await;
    let masters = t.masters();
    assert_eq!(masters.len(), MASTERS, "{t:?}");
    assert_eq!(
        masters.iter().map(|m| m.slot_count()).sum::<usize>(),
        usize::from(SLOTS)
    );
    for m in &masters {
        assert_eq!(t.replicas_of(&m.id).len(), 1, "{t:?}");
    }
    // The slot the notes measured, and its owner.
    assert_eq!(cluster.keyslot("{default/payments}").await, 15393);
    let owner = cluster
        .master_of("discovered:v2:{default/payments}:nodes")
        .await;
    assert!(owner.owns(15393), "{owner:?}");

    // Commands counted per master, and seen with their keys by MONITOR
    // (EVALSHA's keys after its numkeys, the script's own commands too).
    let before = cluster.master_commandstats().await;
    let sampler = cluster.start_monitor(Duration::from_secs(1)).await;
    set_on_owner(&cluster, "{default/payments}:x", "1").await;
    let script = redis::Script::new("return redis.call('GET', KEYS[1])");
    let mut conn = redis::Client::open(format!("redis://127.0.0.1:{}/", owner.port))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let got: String = script
        .key("{default/payments}:x")
        .invoke_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(got, "1");
    let sampled = sampler.await.unwrap();
    let after = cluster.master_commandstats().await;
    let set_calls = |s: &std::collections::BTreeMap<
        u16,
        std::collections::BTreeMap<String, u64>,
    >| { s[&owner.port].get("set").copied().unwrap_or(0) };
    assert_eq!(set_calls(&after), set_calls(&before) + 1);
    let evalsha = sampled
        .iter()
        .find(|s| s.command == "EVALSHA" || s.command == "EVAL")
        .unwrap_or_else(|| panic!("no EVALSHA sampled: {sampled:?}"));
    assert_eq!(evalsha.keys, ["{default/payments}:x"]);
    assert!(!evalsha.from_script);
    assert!(
        sampled
            .iter()
            .any(|s| s.from_script && s.command == "GET" && s.keys == ["{default/payments}:x"]),
        "{sampled:?}"
    );
    let counts = key_counts(&sampled);
    assert_eq!(counts[0].0, "{default/payments}:x", "{counts:?}");
}

#[test]
fn monitor_lines_and_key_arguments_parse() {
    let (lua, args) = parse_monitor_line(
        r#"+1700000000.123456 [0 127.0.0.1:5000] "EVALSHA" "abc" "2" "k\"1" "k2" "a\x41\\""#,
    )
    .unwrap();
    assert!(!lua);
    assert_eq!(args, ["EVALSHA", "abc", "2", "k\"1", "k2", "aA\\"]);
    assert_eq!(command_keys(&args), ["k\"1", "k2"]);
    let (lua, args) = parse_monitor_line(r#"1.5 [0 lua] "hset" "h" "f" "v""#).unwrap();
    assert!(lua);
    assert_eq!(command_keys(&args), ["h"]);
    assert!(parse_monitor_line("+OK").is_none());
    let stats = parse_commandstats(
        "# Commandstats\r\ncmdstat_get:calls=12,usec=3,usec_per_call=0.25,rejected_calls=0,failed_calls=0\r\ncmdstat_evalsha:calls=4,usec=1\r\n",
    );
    assert_eq!(stats["get"], 12);
    assert_eq!(stats["evalsha"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fixture_fails_over_on_request_and_moves_slots() {
    let cluster = ClusterFixture::start();
    let t = cluster.topology().await;
    let master = t.masters()[0].clone();
    let replica = t.replicas_of(&master.id)[0].clone();
    let old = cluster.failover(replica.port).await;
    assert_eq!(old.id, master.id);
    let t = cluster.topology().await;
    assert!(t.by_id(&replica.id).unwrap().master);
    assert_eq!(
        t.by_id(&master.id).unwrap().follows.as_deref(),
        Some(replica.id.as_str())
    );

    let masters = t.masters();
    let (from, to) = (masters[0].id.clone(), masters[1].id.clone());
    let key = "{default/payments}:moved";
    let moved = cluster.reshard(&from, &to, 100).await;
    assert_eq!(moved.len(), 100);
    let t = cluster.topology().await;
    for s in &moved {
        assert_eq!(t.owner(*s).map(|n| n.id.as_str()), Some(to.as_str()));
    }
    // Data in the slots moves along.
    set_on_owner(&cluster, key, "v").await;
    let owner = cluster.master_of(key).await;
    let v: String = command_on(owner.port, redis::cmd("GET").arg(key))
        .await
        .unwrap();
    assert_eq!(v, "v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fixture_promotes_a_replica_when_a_master_is_killed() {
    let mut cluster = ClusterFixture::start();
    let slot = cluster.keyslot("{default/payments}").await;
    let old = cluster.master_of("{default/payments}").await;
    let replica = cluster.topology().await.replicas_of(&old.id)[0].clone();
    let t_kill = std::time::Instant::now();
    let pid = cluster.kill(old.port);
    assert!(pid > 0);
    let new = cluster.wait_promoted(slot, &old.id).await;
    eprintln!(
        "kill -9 of {} (pid {pid}): {} serves slot {slot} everywhere at +{:?}",
        old.port,
        new.port,
        t_kill.elapsed()
    );
    assert_eq!(new.id, replica.id);
    assert_eq!(cluster.live_ports().len(), 2 * MASTERS - 1);
}

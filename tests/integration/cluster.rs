//! Redis Cluster (issue 13). For now the fixture the Cluster tests stand
//! on: six real nodes forming three shards.

use crate::common::cluster::{ClusterFixture, MASTERS};

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

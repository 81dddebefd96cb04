//! Consensus with real node processes: election, replication through any node,
//! leader failure during writes, catch-up from a snapshot, full restarts and
//! membership changes.

use std::time::Duration;

use synod_tests::{ok, wait_for, Cluster, Options};

fn replicate_through_every_node(n: u64) {
    let cluster = Cluster::start(n);
    for id in 1..=n {
        cluster.put(id, &format!("from-{id}"), &format!("v{id}")).expect("write through node");
    }
    for reader in 1..=n {
        for writer in 1..=n {
            cluster.wait_value(reader, &format!("from-{writer}"), &format!("v{writer}"));
        }
    }
    assert_eq!(cluster.voters(1).len() as u64, n);
}

#[test]
fn replication_three_nodes_write_anywhere_read_everywhere() {
    // A 3-node cluster elects a leader and a write through any node is readable on every node.
    replicate_through_every_node(3);
}

#[test]
fn replication_five_nodes_write_anywhere_read_everywhere() {
    // The same holds for 5 nodes.
    replicate_through_every_node(5);
}

#[test]
fn replication_leader_killed_during_writes_loses_nothing_and_catches_up_from_snapshot() {
    // kill -9 of the leader mid-stream: a new leader takes over, every acknowledged
    // write survives, and the restarted node catches up from a snapshot because
    // the log it missed was purged meanwhile.
    let mut cluster = Cluster::start_with(
        3,
        Options { snapshot_every_entries: 10, logs_kept_after_snapshot: 2, ..Options::default() },
    );
    let leader = cluster.wait_leader();
    let entry = (1..=3).find(|id| *id != leader).unwrap();
    let mut acked = Vec::new();
    for i in 0..60 {
        if i == 15 {
            cluster.kill(leader);
        }
        let (key, value) = (format!("k{i:03}"), format!("v{i}"));
        // An operator retries until the write is acknowledged.
        wait_for(&format!("write {key} acknowledged"), Duration::from_secs(60), || {
            cluster.put(entry, &key, &value).ok()
        });
        acked.push((key, value));
    }
    let new_leader = cluster.wait_leader();
    assert_ne!(new_leader, leader, "the killed leader cannot still lead");
    for id in (1..=3).filter(|id| *id != leader) {
        for (key, value) in &acked {
            assert_eq!(cluster.get(id, key).as_deref(), Some(value.as_str()), "node {id} lost {key}");
        }
    }
    let purged = cluster.status(new_leader).unwrap()["purged_index"].as_u64().unwrap_or(0);
    assert!(purged > 20, "the leader purged its log past the restarted node's position (purged {purged})");

    cluster.start_node(leader);
    for (key, value) in &acked {
        cluster.wait_value(leader, key, value);
    }
    assert!(
        cluster.nodes[&leader].log_text().contains("installed snapshot from the leader"),
        "the restarted node caught up from a snapshot"
    );
    assert!(
        cluster.nodes[&leader].log_text().contains("installing a verified snapshot"),
        "the snapshot it installed was endorsed by enough members"
    );
}

#[test]
fn replication_full_cluster_kill_and_restart_keeps_committed_state() {
    // Every node killed with SIGKILL at once, then restarted: all committed state is there.
    let mut cluster = Cluster::start(3);
    for i in 0..10 {
        cluster.put(1, &format!("k{i}"), &format!("v{i}")).unwrap();
    }
    for id in 1..=3 {
        cluster.kill(id);
    }
    for id in 1..=3 {
        cluster.start_node(id);
    }
    cluster.wait_leader();
    for id in 1..=3 {
        for i in 0..10 {
            cluster.wait_value(id, &format!("k{i}"), &format!("v{i}"));
        }
    }
    cluster.put(2, "after-restart", "yes").unwrap();
    cluster.wait_value(3, "after-restart", "yes");
}

#[test]
fn replication_graceful_stop_exits_cleanly_and_cluster_carries_on() {
    // SIGTERM stops a node cleanly (exit 0) and the other two keep committing.
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_leader();
    assert!(cluster.stop(leader), "node exits 0 on SIGTERM");
    assert!(cluster.nodes[&leader].log_text().contains("node stopped cleanly"));
    let survivor = (1..=3).find(|id| *id != leader).unwrap();
    wait_for("a write after the leader stopped", Duration::from_secs(60), || cluster.put(survivor, "k", "v").ok());
}

#[test]
fn membership_node_joins_and_leaves_with_admin_signature() {
    // A new node joins after an admin authorises it, receives the data, becomes a
    // voter, and leaves again when an admin removes it.
    let mut cluster = Cluster::start(3);
    cluster.put(1, "before-join", "1").unwrap();
    cluster.add_node_files(4);
    cluster.start_new_nodes(&[4]);
    let (raft_addr, api_addr) = (cluster.nodes[&4].raft_addr.clone(), cluster.nodes[&4].api_addr.clone());
    ok(&cluster.synod(1, &["cluster", "add-member", "--id", "4", "--raft-addr", &raft_addr, "--api-addr", &api_addr]));
    cluster.wait_value(4, "before-join", "1");
    wait_for("node 4 to become a voter", Duration::from_secs(60), || cluster.voters(1).contains(&4).then_some(()));
    ok(&cluster.synod(1, &["cluster", "remove-member", "--id", "4"]));
    wait_for("node 4 to leave the voters", Duration::from_secs(60), || (!cluster.voters(1).contains(&4)).then_some(()));
    cluster.put(2, "after-leave", "1").unwrap();
    cluster.wait_value(3, "after-leave", "1");
}

#[test]
fn harness_moves_a_new_node_whose_port_another_process_took() {
    // Tests run in parallel processes: a port chosen for a node can be taken by
    // another test's node before this one binds it. The node says so and the
    // harness starts it on new ports, so a busy machine fails no test.
    let mut cluster = Cluster::prepare(Options::default());
    cluster.add_node_files(1);
    let taken = std::net::UdpSocket::bind(&cluster.nodes[&1].raft_addr).unwrap();
    cluster.start_new_nodes(&[1]);
    assert_ne!(cluster.nodes[&1].raft_addr, taken.local_addr().unwrap().to_string());
    assert!(cluster.nodes[&1].log_text().contains(synod_node::server::PORT_TAKEN));
    let addr = format!("--member=1={},{}", cluster.nodes[&1].raft_addr, cluster.nodes[&1].api_addr);
    ok(&cluster.synod(1, &["cluster", "init", &addr]));
    cluster.wait_leader();
    cluster.put(1, "k", "v").unwrap();
}

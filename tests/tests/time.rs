//! Bounded time with real node processes: a leader whose clock runs 200 days
//! ahead (the test-build fault `clock-ahead-200d`) stamps entries with the
//! time of a majority of clocks, so writes keep working while it leads and the
//! cluster's time has not moved once its clock is correct again.

use std::time::{Duration, Instant};

use synod_tests::{ok, wait_for, Cluster};

/// How far the fault puts the clock ahead (`synod_node::faults::FAR_AHEAD_MS`).
const FAR_AHEAD_MS: i64 = 200 * 24 * 60 * 60 * 1000;
/// The harness's longest election timeout (`election_timeout_max_ms` in its node.toml).
const ELECTION_TIMEOUT_MAX: Duration = Duration::from_millis(1600);

/// Stops node `id` and starts it again, with `faults` (or none) in `SYNOD_FAULTS`.
fn restart(cluster: &mut Cluster, id: u64, faults: Option<&str>) {
    assert!(cluster.stop(id), "node {id} did not stop cleanly");
    match faults {
        Some(f) => cluster.options.node_faults.insert(id, f.to_string()),
        None => cluster.options.node_faults.remove(&id),
    };
    cluster.start_node(id);
}

#[test]
fn time_leader_clock_200_days_ahead_neither_stalls_writes_nor_moves_time() {
    // A leader whose clock is 200 days ahead commits writes within two election timeouts and
    // shows its followers' clocks 200 days behind its own in status; restarted with a correct
    // clock, `kv put` and `sign` work at once (before, the log's time stayed 200 days ahead and
    // every command was refused as expired until real time caught up).
    let mut cluster = Cluster::start(3);
    ok(&cluster.synod(1, &["key", "create", "deploy", "-t", "2", "--open-policy", "-o", "json"]));
    let skewed = cluster.wait_leader();
    restart(&mut cluster, skewed, Some("clock-ahead-200d"));
    // Hand leadership to the skewed node: restart whichever other node leads until it does.
    wait_for("the node with the skewed clock to lead", Duration::from_secs(120), || {
        let leader = cluster.wait_leader();
        if leader == skewed {
            return Some(());
        }
        restart(&mut cluster, leader, None);
        None
    });

    let started = Instant::now();
    cluster.put(skewed, "while-ahead", "1").expect("a write while the leader's clock runs 200 days ahead");
    let took = started.elapsed();
    assert!(took < 2 * ELECTION_TIMEOUT_MAX, "the write took {took:?}");
    // The offsets are the leader's figures: read them while the skewed node still leads (an
    // election can move leadership between the write and the read; hand it back then).
    let (status, table) =
        wait_for("the skewed leader's status with its followers' clocks", Duration::from_secs(120), || {
            let leader = cluster.wait_leader();
            if leader != skewed {
                restart(&mut cluster, leader, None);
                return None;
            }
            let status = cluster.status(skewed)?;
            let members = status["members"].as_array()?.clone();
            let all = members.iter().all(|m| m["node_id"].as_u64() == Some(skewed) || m["clock_offset_ms"].is_i64());
            let table = cluster.synod(skewed, &["status"]);
            (all && table.status.success()).then(|| (status, String::from_utf8_lossy(&table.stdout).into_owned()))
        });
    for member in status["members"].as_array().unwrap() {
        let id = member["node_id"].as_u64().unwrap();
        let offset = member["clock_offset_ms"].as_i64();
        if id == skewed {
            assert_eq!(offset, Some(0), "{status}");
        } else {
            let offset = offset.unwrap_or_else(|| panic!("no clock offset for node {id}: {status}"));
            assert!((offset + FAR_AHEAD_MS).abs() < 60_000, "node {id}'s offset is {offset} ms: {status}");
        }
    }
    assert!(table.contains("CLOCK") && table.contains("-17280000."), "{table}");

    restart(&mut cluster, skewed, None);
    let leader = cluster.wait_leader();
    cluster.put(leader, "after-restart", "2").expect("a write at once once every clock is correct");
    let request = cluster.sign(leader, "deploy", b"release 1", "rel-1").expect("signing at once");
    assert_eq!(request["status"], "signed", "{request}");
}

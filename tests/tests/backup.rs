//! Backups, restores and rolled-back disks, with real node processes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use synod_tests::{fails, ok, run_synod, wait_for, Cluster, Options};

fn key(cluster: &Cluster, via: u64, name: &str) -> Value {
    serde_json::from_str(&ok(&cluster.synod(via, &["key", "show", name, "-o", "json"]))).expect("key JSON")
}

fn backup(cluster: &Cluster, id: u64, name: &str) -> PathBuf {
    let out = cluster.path(name);
    ok(&cluster.synod(id, &["node", "backup", "--out", out.to_str().unwrap()]));
    out
}

fn restore(config: &Path, file: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["node", "restore", file.to_str().unwrap(), "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    run_synod(&args, &[("SYNOD_DEV", "1".into())])
}

/// A write that may meet an election: retried until it succeeds.
fn put(cluster: &Cluster, via: u64, key: &str) {
    wait_for("a write to succeed", Duration::from_secs(30), || cluster.put(via, key, "v").ok());
}

fn copy_dir(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(status.success(), "cp -a {} {}", from.display(), to.display());
}

#[test]
fn backup_refuses_tampered_foreign_and_other_nodes_backups_and_a_wrong_kek_names_the_backend() {
    // `restore --verify` on an intact backup reports each share's version and generation;
    // an altered file, another node's, another cluster's, and a wrong KEK are each refused
    // with a message that says which, and nothing is written.
    let cluster = Cluster::start(3);
    ok(&cluster.synod(1, &["key", "create", "kept", "-t", "2", "--open-policy"]));
    let file = backup(&cluster, 2, "node-2.backup");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "a backup is written for its owner only");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains("signing_share"), "the backup holds no plaintext share");

    let config2 = cluster.nodes[&2].config.clone();
    let verified: Value = serde_json::from_str(&ok(&restore(&config2, &file, &["--verify", "-o", "json"]))).unwrap();
    let shares = verified["shares"].as_array().unwrap();
    assert_eq!(shares.len(), 1, "{verified}");
    assert_eq!(
        (&shares[0]["name"], &shares[0]["version"], &shares[0]["generation"]),
        (&"kept".into(), &1.into(), &0.into())
    );
    assert_eq!(shares[0]["checked_against_state"], true, "{verified}");

    // Another node's backup.
    let why = fails(&restore(&cluster.nodes[&1].config, &file, &["--verify"]));
    assert!(why.contains("node 2's, not node 1's"), "{why}");

    // Altered: one hex digit of a sealed record changed inside the signed content.
    let mut file_json: Value = serde_json::from_str(&text).unwrap();
    let inner = file_json["backup"].as_str().unwrap().to_string();
    let at = inner.find("\"value\":\"").unwrap() + 20;
    let flipped = if &inner[at..at + 1] == "0" { "1" } else { "0" };
    file_json["backup"] = Value::String(format!("{}{flipped}{}", &inner[..at], &inner[at + 1..]));
    let altered = cluster.path("altered.backup");
    std::fs::write(&altered, serde_json::to_vec(&file_json).unwrap()).unwrap();
    let why = fails(&restore(&config2, &altered, &["--verify"]));
    assert!(why.contains("altered after node 2 wrote it"), "{why}");

    // Another cluster's.
    let other = Cluster::start(1);
    let foreign = backup(&other, 1, "foreign.backup");
    let why = fails(&restore(&cluster.nodes[&1].config, &foreign, &["--verify"]));
    assert!(why.contains("another cluster"), "{why}");

    // The wrong KEK: node 2's config pointing at a new key file.
    let wrong_kek = cluster.path("wrong-kek.bin");
    ok(&run_synod(&["kek", "generate-file", "--out", wrong_kek.to_str().unwrap()], &[]));
    let config_text = std::fs::read_to_string(&config2).unwrap();
    let wrong_config = cluster.nodes[&2].dir.join("wrong-kek.toml");
    std::fs::write(&wrong_config, config_text.replace("path = \"kek.bin\"", &format!("path = {:?}", wrong_kek)))
        .unwrap();
    let why = fails(&restore(&wrong_config, &file, &["--verify"]));
    assert!(why.contains("does not open the backup") && why.contains("file KEK"), "{why}");

    // A restore never writes into a data directory in use.
    let why = fails(&restore(&config2, &file, &[]));
    assert!(why.contains("is not empty"), "{why}");
}

#[test]
fn backup_old_restore_catches_up_drops_the_stale_generation_and_signs_after_repair() {
    // Node 3 is backed up; then 30 more writes and a refresh. Node 3 loses its disk and is
    // restored from the old backup: it catches up from its peers, deletes the stale
    // generation, reports its missing current share, and after `synod key repair` signs
    // (node 1 down, so nodes 2 and 3 sign) under the unchanged public key.
    let mut cluster = Cluster::start(3);
    ok(&cluster.synod(1, &["key", "create", "kept", "-t", "2", "--open-policy"]));
    let before = key(&cluster, 1, "kept");
    let file = backup(&cluster, 3, "node-3.backup");
    for i in 0..30 {
        cluster.put(1, &format!("after-backup-{i}"), "v").expect("a write");
    }
    let refreshed: Value =
        serde_json::from_str(&ok(&cluster.synod(1, &["key", "refresh", "kept", "-o", "json"]))).unwrap();
    assert_eq!(refreshed["generation"], 1);

    cluster.kill(3);
    std::fs::remove_dir_all(cluster.nodes[&3].dir.join("data")).unwrap();
    let restored: Value =
        serde_json::from_str(&ok(&restore(&cluster.nodes[&3].config, &file, &["-o", "json"]))).unwrap();
    assert_eq!(restored["shares"][0]["generation"], 0, "{restored}");
    cluster.start_node(3);
    wait_for("node 3 to catch up past the writes after its backup", Duration::from_secs(60), || {
        (cluster.get(3, "after-backup-29").as_deref() == Some("v")).then_some(())
    });
    wait_for("the log to record node 3's missing current share", Duration::from_secs(60), || {
        (key(&cluster, 1, "kept")["shares_missing"] == serde_json::json!([3])).then_some(())
    });
    let log = cluster.nodes[&3].log_text();
    assert!(log.contains("deleted this node's shares of old generations"), "the stale generation goes");

    let repaired: Value =
        serde_json::from_str(&ok(&cluster.synod(2, &["key", "repair", "kept", "--node", "3", "-o", "json"]))).unwrap();
    assert_eq!(repaired["shares_missing"], Value::Null, "{repaired}");
    cluster.kill(1);
    let signed = cluster.sign(2, "kept", b"signed by the restored node", "restored").expect("nodes 2 and 3 sign");
    assert_eq!(signed["signers"], serde_json::json!([2, 3]), "{signed}");
    assert_eq!(key(&cluster, 2, "kept")["public_key"], before["public_key"]);
}

#[test]
fn backup_rolled_back_disk_grants_no_vote_until_a_majority_has_answered() {
    // Node 3's data directory is copied while it runs on, then the cluster moves on (writes,
    // a new leader). Node 3 is stopped and restarted on the old copy, which has lost its
    // latest vote and entries; at the same moment the leader is killed, so the one node left
    // needs node 3's vote. Node 3 grants none while it cannot hear a majority of the others
    // (it says so in its log), so no leader is elected on its stale word. Once the killed node
    // is back, node 3 votes only above the highest term reported, a leader is elected, and
    // node 3 catches up.
    let mut cluster = Cluster::start(3);
    put(&cluster, 1, "before-copy");
    assert!(cluster.stop(3));
    let old = cluster.path("node-3-old-data");
    copy_dir(&cluster.nodes[&3].dir.join("data"), &old);
    cluster.start_node(3);
    let first = cluster.wait_leader();
    cluster.kill(first);
    cluster.start_node(first);
    cluster.wait_leader();
    for i in 0..20 {
        put(&cluster, 3, &format!("after-copy-{i}"));
    }
    let term_before: u64 = cluster.status(3).unwrap()["term"].as_u64().unwrap();

    assert!(cluster.stop(3));
    std::fs::remove_dir_all(cluster.nodes[&3].dir.join("data")).unwrap();
    copy_dir(&old, &cluster.nodes[&3].dir.join("data"));
    let down = cluster.wait_leader();
    let alone = if down == 1 { 2 } else { 1 };
    let mark = cluster.nodes[&3].log_text().len();
    cluster.kill(down);
    cluster.start_node(3);
    wait_for("node 3 to refuse a vote on its rolled-back disk", Duration::from_secs(30), || {
        let log = cluster.nodes[&3].log_text();
        log[mark..].contains("the boot check has not heard from a majority of the other voters").then_some(())
    });
    for _ in 0..6 {
        let status = cluster.status(alone).expect("the remaining node answers");
        assert!(status["leader_id"].is_null(), "no leader while node 3 cannot check its disk: {status}");
        std::thread::sleep(Duration::from_millis(500));
    }
    cluster.start_node(down);
    let leader = cluster.wait_leader();
    let log = cluster.nodes[&3].log_text();
    assert!(log[mark..].contains("this node's disk may have been rolled back"), "node 3 says why it waited");
    let term_after: u64 = cluster.status(leader).unwrap()["term"].as_u64().unwrap();
    assert!(term_after > term_before, "the new leader's term {term_after} is above the old {term_before}");
    put(&cluster, leader, "after-rollback");
    cluster.wait_value(3, "after-copy-19", "v");
    cluster.wait_value(3, "after-rollback", "v");
}

/// The audit records node `id` exports, as (seq, hash).
fn audit_chain(cluster: &Cluster, id: u64) -> Vec<(u64, String)> {
    ok(&cluster.synod(id, &["audit", "export"]))
        .lines()
        .map(|l| {
            let r: Value = serde_json::from_str(l).expect("an audit record");
            (r["seq"].as_u64().unwrap(), r["hash"].as_str().unwrap().to_string())
        })
        .collect()
}

#[test]
fn backup_every_data_directory_lost_the_cluster_comes_back_from_node_backups() {
    // Every node is backed up, then every node is killed -9 and every data directory wiped.
    // Each is restored from its own backup (sealed shares and the committed state, its
    // snapshot verified), and the cluster elects, signs with every key that existed, and its
    // audit chain verifies and holds the chain it had at the backup, record for record.
    // Snapshot points every 20 entries, so the backups carry a snapshot and the log after it.
    let options = Options { snapshot_every_entries: 20, logs_kept_after_snapshot: 10, ..Options::default() };
    let mut cluster = Cluster::start_with(3, options);
    ok(&cluster.synod(1, &["key", "create", "two", "-t", "2", "--open-policy"]));
    ok(&cluster.synod(1, &["key", "create", "three", "-t", "3", "--open-policy"]));
    for i in 0..10 {
        put(&cluster, 1, &format!("before-{i}"));
    }
    cluster.sign(1, "two", b"before the loss", "before").expect("signs");
    wait_for("every node to hold an endorsed snapshot", Duration::from_secs(60), || {
        (1..=3).all(|id| cluster.status(id).is_some_and(|s| s["snapshot_index"].as_u64().is_some())).then_some(())
    });
    let files: Vec<PathBuf> = (1..=3).map(|id| backup(&cluster, id, &format!("node-{id}.backup"))).collect();
    for file in &files {
        let outer: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
        let inner: Value = serde_json::from_str(outer["backup"].as_str().unwrap()).unwrap();
        assert!(inner["raft"]["snapshot_meta"].is_object(), "the backup carries a snapshot");
    }
    let chain = audit_chain(&cluster, 1);
    let public: Vec<Value> = ["two", "three"].iter().map(|k| key(&cluster, 1, k)["public_key"].clone()).collect();

    for id in 1..=3 {
        cluster.kill(id);
    }
    for id in 1..=3 {
        std::fs::remove_dir_all(cluster.nodes[&id].dir.join("data")).unwrap();
        let restored: Value =
            serde_json::from_str(&ok(&restore(&cluster.nodes[&id].config, &files[id as usize - 1], &["-o", "json"])))
                .unwrap();
        assert!(restored["restored_log_index"].as_u64().is_some(), "{restored}");
    }
    for id in 1..=3 {
        cluster.start_node(id);
    }
    let leader = cluster.wait_leader();
    for (name, public_key) in ["two", "three"].iter().zip(&public) {
        let signed = wait_for("a signature after the restore", Duration::from_secs(60), || {
            cluster.sign(leader, name, b"after the restore", &format!("after-{name}")).ok()
        });
        assert_eq!(&signed["public_key"], public_key, "{signed}");
    }
    assert_eq!(cluster.get(leader, "before-9").as_deref(), Some("v"));
    ok(&cluster.synod(leader, &["audit", "verify"]));
    let after = audit_chain(&cluster, leader);
    assert_eq!(&after[..chain.len()], &chain[..], "the chain at the backup is kept record for record");
}

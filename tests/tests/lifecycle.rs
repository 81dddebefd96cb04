//! A key's service life with real node processes: disable stops signing and
//! enable restores it; a scheduled destruction refuses use at once, can be
//! cancelled, and at its deadline leaves no sealed share of the key in any
//! node's store, keeping the public key and the name.

use std::time::Duration;

use serde_json::Value;
use synod_node::store::{SledStore, Store, Tree};
use synod_tests::{fails, ok, wait_for, Cluster, Options};

/// Three nodes whose genesis allows destruction after `wait_min` (the default, 7 days, when `None`).
fn cluster_with_destroy_wait(wait_min: Option<&str>) -> Cluster {
    let mut cluster = Cluster::prepare(Options::default());
    for id in 1..=3 {
        cluster.add_node_files(id);
    }
    cluster.start_new_nodes(&[1, 2, 3]);
    let mut args = cluster.init_args();
    args.extend(wait_min.map(|w| format!("--key-destroy-wait-min={w}")));
    let init = cluster.synod(1, &args.iter().map(String::as_str).collect::<Vec<_>>());
    ok(&init);
    let warned = String::from_utf8_lossy(&init.stderr).contains("not production");
    assert_eq!(warned, wait_min.is_some(), "a minimum below 7 days is flagged, the default is not");
    cluster.wait_leader();
    cluster
}

fn key(cluster: &Cluster, name: &str) -> Value {
    serde_json::from_str(&ok(&cluster.synod(1, &["key", "show", name, "-o", "json"]))).expect("key JSON")
}

#[test]
fn lifecycle_disable_enable_and_destroy_leave_no_share_on_any_node() {
    let mut cluster = cluster_with_destroy_wait(Some("3s"));
    let created = ok(&cluster.synod(1, &["key", "create", "life", "-t", "2", "--open-policy", "-o", "json"]));
    let key_id = serde_json::from_str::<Value>(&created).unwrap()["id"].as_str().unwrap().to_string();
    let pem = ok(&cluster.synod(1, &["key", "show", "life", "--format", "pem"]));
    cluster.sign(2, "life", b"before", "r-before").expect("an active key signs");

    // Disable: refused, naming the state and the way back; enable: signs again.
    ok(&cluster.synod(1, &["key", "disable", "life"]));
    assert_eq!(key(&cluster, "life")["status"], "disabled");
    let err = cluster.sign(2, "life", b"while disabled", "r-disabled").unwrap_err();
    assert!(err.contains("disabled") && err.contains("synod key enable life"), "{err}");
    ok(&cluster.synod(1, &["key", "enable", "life"]));
    cluster.sign(3, "life", b"after enable", "r-enabled").expect("an enabled key signs");

    // Below the genesis minimum: refused with the minimum.
    let err = fails(&cluster.synod(1, &["key", "destroy", "life", "--after", "1s"]));
    assert!(err.contains("at least 3 seconds"), "{err}");

    // Scheduled: refuses use at once; cancelled: stays disabled until enabled.
    ok(&cluster.synod(1, &["key", "destroy", "life", "--after", "1h"]));
    assert_eq!(key(&cluster, "life")["status"], "destroy_scheduled");
    let err = cluster.sign(1, "life", b"scheduled", "r-scheduled").unwrap_err();
    assert!(err.contains("scheduled for destruction") && err.contains("--cancel"), "{err}");
    ok(&cluster.synod(1, &["key", "destroy", "life", "--cancel"]));
    assert_eq!(key(&cluster, "life")["status"], "disabled");
    ok(&cluster.synod(1, &["key", "enable", "life"]));

    // Destroyed at the deadline: every participant deletes its shares and says so.
    ok(&cluster.synod(1, &["key", "destroy", "life", "--after", "3s"]));
    let destroyed = wait_for("every participant to delete its shares", Duration::from_secs(60), || {
        let k = key(&cluster, "life");
        (k["status"] == "destroyed" && k["shares_destroyed"] == serde_json::json!([1, 2, 3])).then_some(k)
    });
    let err = cluster.sign(2, "life", b"after destroy", "r-destroyed").unwrap_err();
    assert!(err.contains("destroyed"), "{err}");
    let err = fails(&cluster.synod(1, &["key", "create", "life", "-t", "2", "--open-policy"]));
    assert!(err.contains("already exists"), "a destroyed key's name is never reused: {err}");
    assert_eq!(ok(&cluster.synod(1, &["key", "show", "life", "--format", "pem"])), pem, "the public key is kept");
    assert!(destroyed["destroy_at_ms"].is_u64(), "{destroyed}");
    let table = ok(&cluster.synod(1, &["key", "show", "life"]));
    assert!(table.contains("destroyed") && table.contains("shares gone"), "{table}");

    // No sealed secret of the key is left in any node's store.
    for id in 1..=3 {
        assert!(cluster.stop(id), "node {id} stops cleanly");
        let store =
            SledStore::open(&cluster.nodes[&id].dir.join("data").join("store")).expect("the node's store opens");
        let sealed = store.scan(Tree::Sealed, &[], None, usize::MAX).expect("scan");
        assert!(!sealed.is_empty(), "node {id}'s store holds its KEK canary: this is the node's store");
        let left = sealed.iter().filter(|(k, _)| k.windows(key_id.len()).any(|w| w == key_id.as_bytes())).count();
        assert_eq!(left, 0, "node {id} still holds {left} sealed secrets of the destroyed key");
    }
}

#[test]
fn lifecycle_wiped_node_reports_its_lost_share_and_the_others_still_sign() {
    // A participant whose data directory is wiped comes back without its share: it says so in
    // health and status, the log records it with the key, and the two others still sign; a
    // rotation brings it back into the key.
    let mut cluster = cluster_with_destroy_wait(None);
    ok(&cluster.synod(1, &["key", "create", "kept", "-t", "2", "--open-policy"]));
    cluster.sign(1, "kept", b"before", "w-before").expect("signs with every share");
    cluster.kill(3);
    std::fs::remove_dir_all(cluster.nodes[&3].dir.join("data")).unwrap();
    cluster.start_node(3);
    let status = wait_for("node 3 to report its lost share", Duration::from_secs(60), || {
        let status = cluster.status(3)?;
        (status["shares_missing"] == serde_json::json!(["kept"])).then_some(status)
    });
    assert_eq!(status["node_id"], 3);
    let health: Value = serde_json::from_str(&ok(&cluster.synod(3, &["health", "-o", "json"]))).unwrap();
    assert_eq!(health["shares_missing"], 1, "{health}");
    let recorded = wait_for("the log to record the lost share", Duration::from_secs(30), || {
        let k = key(&cluster, "kept");
        (k["shares_missing"] == serde_json::json!([3])).then_some(k)
    });
    assert_eq!(recorded["status"], "active");
    let table = ok(&cluster.synod(1, &["key", "show", "kept"]));
    assert!(table.contains("shares missing: nodes [3]"), "{table}");
    cluster.sign(1, "kept", b"after the wipe", "w-after").expect("the two others still sign");
    // Until repair exists, a rotation gives node 3 a share again (of a new version, with a new
    // public key): 3 of 3 signs only with it.
    ok(&cluster.synod(1, &["key", "rotate", "kept", "-t", "3", "--overlap", "0s"]));
    let signed = cluster.sign(2, "kept", b"after the rotation", "w-rotated").expect("version 2 signs");
    assert_eq!(signed["signers"], serde_json::json!([1, 2, 3]), "{signed}");
    assert_eq!(signed["key_version"], 2);
}

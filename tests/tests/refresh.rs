//! Proactive refresh with real node processes: signing goes on under load
//! while a key's shares are refreshed, the public key (checked by OpenSSL)
//! does not change, and every node deletes its old share; a participant
//! killed mid-refresh aborts it, after every node restarts the old
//! generation still signs, and a second refresh completes.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use synod_node::store::{SledStore, Store, Tree};
use synod_tests::{fails, ok, openssl_verifies, wait_for, Cluster, Options};

/// Concurrent clients signing while the refresh runs.
const LOAD_CLIENTS: u64 = 8;

fn key(cluster: &Cluster, name: &str) -> Value {
    serde_json::from_str(&ok(&cluster.synod(1, &["key", "show", name, "-o", "json"]))).expect("key JSON")
}

/// The generations of `key_id` each node holds sealed shares of, read from
/// its store once it has stopped (a sealed secret's store key ends with its
/// generation, 4 bytes big-endian).
fn sealed_generations(cluster: &mut Cluster, key_id: &str, nodes: &[u64]) -> Vec<(u64, BTreeSet<u32>)> {
    nodes
        .iter()
        .map(|&id| {
            assert!(cluster.stop(id), "node {id} stops cleanly");
            let store =
                SledStore::open(&cluster.nodes[&id].dir.join("data").join("store")).expect("the node's store opens");
            let sealed = store.scan(Tree::Sealed, &[], None, usize::MAX).expect("scan");
            let generations = sealed
                .iter()
                .filter(|(k, _)| k.windows(key_id.len()).any(|w| w == key_id.as_bytes()))
                .map(|(k, _)| u32::from_be_bytes(k[k.len() - 4..].try_into().unwrap()))
                .collect();
            (id, generations)
        })
        .collect()
}

#[test]
fn refresh_under_load_keeps_the_public_key_and_deletes_every_old_share() {
    let mut cluster = Cluster::start(3);
    ok(&cluster.synod(1, &["key", "create", "rel", "-t", "2", "--open-policy"]));
    let before = key(&cluster, "rel");
    let key_id = before["id"].as_str().unwrap().to_string();
    let pem = cluster.path("rel.pem");
    std::fs::write(&pem, ok(&cluster.synod(1, &["key", "show", "rel", "--format", "pem"]))).unwrap();
    cluster.sign(1, "rel", b"before the refresh", "before").expect("generation 0 signs");

    let stop = AtomicBool::new(false);
    let (refreshed, outcomes) = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..LOAD_CLIENTS)
            .map(|c| {
                let (cluster, stop) = (&cluster, &stop);
                scope.spawn(move || {
                    // Each client signs one request after another through its own node; a
                    // failed request is sent once more (a new attempt of the same id).
                    let (mut signed, mut retried, mut failed) = (0, 0, Vec::new());
                    for i in 0.. {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let (via, id) = (c % 3 + 1, format!("load-{c}-{i}"));
                        let message = format!("client {c} request {i}");
                        match cluster.sign(via, "rel", message.as_bytes(), &id) {
                            Ok(_) => signed += 1,
                            Err(_) => {
                                retried += 1;
                                match cluster.sign(via, "rel", message.as_bytes(), &id) {
                                    Ok(_) => signed += 1,
                                    Err(e) => failed.push(e),
                                }
                            }
                        }
                    }
                    (signed, retried, failed)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        let refreshed = cluster.synod(2, &["key", "refresh", "rel", "-o", "json"]);
        // Keep the load on a moment after the switch, so requests straddle it.
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, Ordering::Relaxed);
        let outcomes: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
        (refreshed, outcomes)
    });
    let refreshed: Value = serde_json::from_str(&ok(&refreshed)).expect("key JSON");
    assert_eq!(refreshed["generation"], 1, "{refreshed}");
    assert_eq!(refreshed["public_key"], before["public_key"], "the public key did not change");
    assert!(refreshed["refresh"].is_null() && refreshed["refreshed_at_ms"].is_u64(), "{refreshed}");
    let signed: u64 = outcomes.iter().map(|o| o.0).sum();
    let retried: u64 = outcomes.iter().map(|o| o.1).sum();
    let failed: Vec<&String> = outcomes.iter().flat_map(|o| &o.2).collect();
    assert!(signed >= LOAD_CLIENTS, "only {signed} requests signed under load");
    assert!(failed.is_empty(), "requests failed twice ({retried} retried): {failed:?}");
    eprintln!("under load: {signed} requests signed, {retried} needed a second attempt");

    // The new generation signs; OpenSSL verifies under the unchanged public key.
    let after = cluster.sign(3, "rel", b"after the refresh", "after").expect("generation 1 signs");
    let message = cluster.path("msg-after");
    let signature = cluster.path("after.sig");
    std::fs::write(&signature, hex::decode(after["signature"].as_str().unwrap()).unwrap()).unwrap();
    assert!(openssl_verifies(&pem, &message, &signature), "OpenSSL verifies under the key's one public key");
    assert_eq!(
        ok(&cluster.synod(1, &["key", "show", "rel", "--format", "pem"])),
        std::fs::read_to_string(&pem).unwrap()
    );
    let table = ok(&cluster.synod(1, &["key", "show", "rel"]));
    assert!(table.contains("generation:    1"), "{table}");

    // Every node deleted its share of generation 0 once generation 1 was current.
    wait_for("every node to delete generation 0", Duration::from_secs(30), || {
        let logs: Vec<String> = (1..=3).map(|id| cluster.nodes[&id].log_text()).collect();
        logs.iter().all(|l| l.contains("deleted this node's shares of old generations")).then_some(())
    });
    for (id, generations) in sealed_generations(&mut cluster, &key_id, &[1, 2, 3]) {
        assert_eq!(generations, BTreeSet::from([1]), "node {id} holds only its generation-1 share");
    }
}

#[test]
fn refresh_participant_killed_mid_refresh_aborts_and_the_old_generation_signs() {
    // Node 3 pauses between sealing its new share and confirming; it is killed there. Every
    // node is then restarted, so no share held in memory hides a blob deleted too early; the
    // refresh is aborted (node 3 lost its refresh secrets) and the 3-of-3 key, which needs
    // every share of the old generation, still signs. A second refresh then completes.
    let options = Options { node_faults: [(3, "pause-refresh-confirm".to_string())].into(), ..Options::default() };
    let mut cluster = Cluster::start_with(3, options);
    ok(&cluster.synod(1, &["key", "create", "rel", "-t", "3", "--open-policy"]));
    let key_id = key(&cluster, "rel")["id"].as_str().unwrap().to_string();
    cluster.sign(1, "rel", b"before", "before").expect("generation 0 signs");

    let refresh = {
        let env = cluster.env(1);
        std::thread::spawn(move || synod_tests::run_synod(&["key", "refresh", "rel"], &env))
    };
    wait_for("nodes 1 and 2 to confirm, node 3 to have sealed", Duration::from_secs(60), || {
        let k = key(&cluster, "rel");
        let confirmed = k["refresh"]["confirmed"].as_array().map_or(0, Vec::len);
        let sealed = cluster.nodes[&3].log_text().contains("pausing 5 s before confirming the refresh");
        (confirmed == 2 && sealed).then_some(())
    });
    cluster.kill(3);
    for id in [1, 2] {
        assert!(cluster.stop(id), "node {id} stops cleanly");
    }
    for id in [1, 2, 3] {
        cluster.start_node(id);
    }
    let aborted = wait_for("the refresh to be aborted", Duration::from_secs(60), || {
        let out = cluster.synod(1, &["key", "show", "rel", "-o", "json"]);
        let k: Value = serde_json::from_slice(&out.stdout).ok()?;
        (k["refresh"].is_null() && k["refresh_failed"].is_string()).then_some(k)
    });
    assert_eq!(aborted["generation"], 0, "{aborted}");
    let reason = aborted["refresh_failed"].as_str().unwrap();
    assert!(reason.contains("node 3") && reason.contains("restarted during the refresh"), "{reason}");
    let err = fails(&refresh.join().unwrap());
    assert!(err.contains("refresh to generation 1 aborted") && err.contains("synod key refresh rel"), "{err}");

    let signed = cluster.sign(2, "rel", b"after the abort", "after").expect("generation 0 still signs");
    assert_eq!(signed["signers"], serde_json::json!([1, 2, 3]), "{signed}");

    // A new refresh completes (node 3 still pauses 5 s before confirming); its generation-1
    // shares replace the ones sealed for the aborted attempt, and generation 0 is deleted.
    let again: Value = serde_json::from_str(&ok(&cluster.synod(1, &["key", "refresh", "rel", "-o", "json"]))).unwrap();
    assert_eq!((&again["generation"], &again["refresh_failed"]), (&1.into(), &Value::Null), "{again}");
    let signed = cluster.sign(3, "rel", b"after the second refresh", "again").expect("generation 1 signs");
    assert_eq!(signed["signers"], serde_json::json!([1, 2, 3]), "{signed}");
    wait_for("every node to delete generation 0", Duration::from_secs(30), || {
        (1..=3)
            .all(|id| cluster.nodes[&id].log_text().contains("deleted this node's shares of old generations"))
            .then_some(())
    });
    for (id, generations) in sealed_generations(&mut cluster, &key_id, &[1, 2, 3]) {
        assert_eq!(generations, BTreeSet::from([1]), "node {id} holds only its generation-1 share");
    }
}

/// Node `id`'s share of generation `generation` of `key` (version 1), unsealed
/// from the store at `data` (a node's data directory or a copy of it) with the
/// node's KEK file.
fn unseal_share(
    cluster: &Cluster,
    data: &Path,
    id: u64,
    key: &Value,
    generation: u32,
) -> frost_ed25519::keys::KeyPackage {
    use synod_node::kek::soft::SoftKek;
    use synod_node::sealed::{Purpose, SealContext, SealedStore};
    let store = SledStore::open(&data.join("store")).expect("the store opens");
    let kek = SoftKek::from_file(&cluster.nodes[&id].dir.join("kek.bin")).expect("the node's KEK");
    let sealed = SealedStore::new(std::sync::Arc::new(store), std::sync::Arc::new(kek));
    let cluster_id = cluster.status(1).expect("status")["cluster_id"].as_str().unwrap().to_string();
    let ctx = SealContext {
        cluster_id,
        node_id: id,
        key_id: key["id"].as_str().unwrap().to_string(),
        key_version: 1,
        generation,
        purpose: Purpose::KeyPackage,
    };
    let plain = sealed.get(&ctx).expect("unseals").expect("a share of that generation");
    frost_ed25519::keys::KeyPackage::deserialize(&plain).unwrap()
}

/// Whether these shares make a valid signature under `key`'s public key
/// (FROST's own aggregation, cheater detection off, so only the group
/// signature is judged: what a thief holding these shares would get).
fn shares_combine(key: &Value, shares: &[&frost_ed25519::keys::KeyPackage]) -> bool {
    use frost_ed25519 as frost;
    let group = hex::decode(key["public_key"].as_str().unwrap()).unwrap();
    let group = frost::VerifyingKey::deserialize(&group).unwrap();
    let verifying_shares = shares.iter().map(|s| (*s.identifier(), *s.verifying_share())).collect();
    let public = frost::keys::PublicKeyPackage::new(verifying_shares, group, Some(2));
    let mut rng = rand_core::OsRng;
    let (mut nonces, mut commitments) = (std::collections::BTreeMap::new(), std::collections::BTreeMap::new());
    for share in shares {
        let (nonce, commitment) = frost::round1::commit(share.signing_share(), &mut rng);
        nonces.insert(*share.identifier(), nonce);
        commitments.insert(*share.identifier(), commitment);
    }
    let signing = frost::SigningPackage::new(commitments, b"does this combine?");
    let signature_shares = shares
        .iter()
        .map(|s| (*s.identifier(), frost::round2::sign(&signing, &nonces[s.identifier()], s).unwrap()))
        .collect();
    frost::aggregate_custom(&signing, &signature_shares, &public, frost::CheaterDetection::Disabled).is_ok()
}

#[test]
fn refresh_repair_gives_a_wiped_node_its_share_and_a_refresh_makes_the_old_copy_useless() {
    // Node 3's data directory is copied (the "old disk"), then wiped. It reports the lost share;
    // `synod key repair` gives it the identical share back from the two others, and it signs
    // again (node 1 down, so nodes 2 and 3 sign) under the unchanged public key. After a
    // refresh, the old disk's share no longer combines with a current one.
    let mut cluster = Cluster::start(3);
    ok(&cluster.synod(1, &["key", "create", "kept", "-t", "2", "--open-policy"]));
    let before = key(&cluster, "kept");
    assert!(cluster.stop(3), "node 3 stops cleanly");
    let old_disk = cluster.path("node-3-old-data");
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(cluster.nodes[&3].dir.join("data"))
        .arg(&old_disk)
        .status()
        .unwrap();
    assert!(copied.success());
    std::fs::remove_dir_all(cluster.nodes[&3].dir.join("data")).unwrap();
    cluster.start_node(3);
    wait_for("the log to record node 3's lost share", Duration::from_secs(60), || {
        (key(&cluster, "kept")["shares_missing"] == serde_json::json!([3])).then_some(())
    });

    let repaired: Value =
        serde_json::from_str(&ok(&cluster.synod(2, &["key", "repair", "kept", "--node", "3", "-o", "json"]))).unwrap();
    assert_eq!(repaired["shares_missing"], Value::Null, "{repaired}");
    assert_eq!(repaired["public_key"], before["public_key"]);
    let health: Value = serde_json::from_str(&ok(&cluster.synod(3, &["health", "-o", "json"]))).unwrap();
    assert_eq!(health["shares_missing"], 0, "node 3 no longer warns: {health}");
    cluster.kill(1);
    let signed = cluster.sign(2, "kept", b"signed by the repaired node", "repaired").expect("nodes 2 and 3 sign");
    assert_eq!(signed["signers"], serde_json::json!([2, 3]), "{signed}");
    cluster.start_node(1);
    wait_for("node 1 to answer again", Duration::from_secs(60), || cluster.status(1));

    // Until a refresh, the old disk's share still combines (the repaired share is identical).
    let current = key(&cluster, "kept");
    let old_share = unseal_share(&cluster, &old_disk, 3, &current, 0);
    let refreshed: Value =
        serde_json::from_str(&ok(&cluster.synod(1, &["key", "refresh", "kept", "-o", "json"]))).unwrap();
    assert_eq!((&refreshed["generation"], &refreshed["public_key"]), (&1.into(), &before["public_key"]));
    wait_for("every node to delete generation 0", Duration::from_secs(30), || {
        (1..=3)
            .all(|id| cluster.nodes[&id].log_text().contains("deleted this node's shares of old generations"))
            .then_some(())
    });
    let after = key(&cluster, "kept");
    assert!(cluster.stop(2), "node 2 stops cleanly");
    let node2 = cluster.nodes[&2].dir.join("data");
    let new_share = unseal_share(&cluster, &node2, 2, &after, 1);
    let old_share_2 = unseal_share(&cluster, &old_disk, 3, &after, 0);
    assert_eq!(old_share.signing_share(), old_share_2.signing_share());
    assert!(cluster.stop(3), "node 3 stops cleanly");
    let new_share_3 = unseal_share(&cluster, &cluster.nodes[&3].dir.join("data"), 3, &after, 1);
    assert!(shares_combine(&after, &[&new_share, &new_share_3]), "current shares combine");
    assert!(!shares_combine(&after, &[&new_share, &old_share]), "the old disk's share no longer combines");
}

#[test]
fn refresh_member_leaves_and_a_new_one_joins_a_key_with_its_public_key_unchanged_while_it_signs() {
    // A 3-of-5 key: node 5 leaves it by a refresh that removes it (and then the cluster), node
    // 6 joins the cluster and is enrolled in the key by a repair at its id, then a refresh
    // gives every participant a fresh share. A client signs throughout; the public key never
    // changes, and node 6 signs when two of the others are down.
    let mut cluster = Cluster::start(5);
    ok(&cluster.synod(1, &["key", "create", "rel", "-t", "3", "--open-policy"]));
    let public_key = key(&cluster, "rel")["public_key"].clone();
    let stop = AtomicBool::new(false);
    let (signed, failed) = std::thread::scope(|scope| {
        let background = scope.spawn(|| {
            let (mut signed, mut failed) = (0, Vec::new());
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let (id, message) = (format!("steady-{i}"), format!("steady {i}"));
                let result = cluster.sign(1, "rel", message.as_bytes(), &id);
                match result.or_else(|_| cluster.sign(1, "rel", message.as_bytes(), &id)) {
                    Ok(_) => signed += 1,
                    Err(e) => failed.push(e),
                }
            }
            (signed, failed)
        });
        let left: Value =
            serde_json::from_str(&ok(&cluster.synod(2, &["key", "refresh", "rel", "--remove", "5", "-o", "json"])))
                .unwrap();
        assert_eq!((&left["participants"], &left["public_key"]), (&serde_json::json!([1, 2, 3, 4]), &public_key));
        ok(&cluster.synod(2, &["cluster", "remove-member", "--id", "5"]));
        wait_for("node 5 to leave the voters", Duration::from_secs(60), || {
            (!cluster.voters(1).contains(&5)).then_some(())
        });
        stop.store(true, Ordering::Relaxed);
        background.join().unwrap()
    });
    assert!(signed > 0 && failed.is_empty(), "{signed} signed while node 5 left; failed twice: {failed:?}");
    wait_for("node 5 to delete its share", Duration::from_secs(30), || {
        cluster.nodes[&5].log_text().contains("deleted this node's shares of old generations").then_some(())
    });

    cluster.kill(5);
    cluster.add_node_files(6);
    cluster.start_new_nodes(&[6]);
    let (raft_addr, api_addr) = (cluster.nodes[&6].raft_addr.clone(), cluster.nodes[&6].api_addr.clone());
    ok(&cluster.synod(1, &["cluster", "add-member", "--id", "6", "--raft-addr", &raft_addr, "--api-addr", &api_addr]));
    wait_for("node 6 to become a voter", Duration::from_secs(60), || cluster.voters(1).contains(&6).then_some(()));
    let enrolled: Value =
        serde_json::from_str(&ok(&cluster.synod(3, &["key", "repair", "rel", "--node", "6", "-o", "json"]))).unwrap();
    assert_eq!(
        (&enrolled["participants"], &enrolled["public_key"]),
        (&serde_json::json!([1, 2, 3, 4, 6]), &public_key)
    );
    let refreshed: Value =
        serde_json::from_str(&ok(&cluster.synod(3, &["key", "refresh", "rel", "-o", "json"]))).unwrap();
    assert_eq!((&refreshed["generation"], &refreshed["public_key"]), (&2.into(), &public_key), "{refreshed}");

    // Nodes 3 and 4 down: 1, 2 and the new node 6 sign.
    cluster.kill(3);
    cluster.kill(4);
    let last = cluster.sign(6, "rel", b"signed with node 6", "joined").expect("nodes 1, 2 and 6 sign");
    assert_eq!(last["signers"], serde_json::json!([1, 2, 6]), "{last}");
    let signature = cluster.path("joined.sig");
    std::fs::write(&signature, last["signature"].as_str().unwrap()).unwrap();
    let message = cluster.path("msg-joined");
    let args =
        ["verify", "--key", "rel", "--in", message.to_str().unwrap(), "--signature", signature.to_str().unwrap()];
    let verified = ok(&cluster.synod(1, &args));
    assert!(verified.contains("key version 1"), "the one public key verifies it: {verified}");
}

#[test]
fn refresh_on_a_schedule_starts_by_itself_and_stops_when_told() {
    let cluster = Cluster::start(3);
    ok(&cluster.synod(1, &["key", "create", "timed", "-t", "2", "--open-policy"]));
    let public_key = key(&cluster, "timed")["public_key"].clone();
    let err = fails(&cluster.synod(1, &["key", "refresh", "timed", "--every", "1s"]));
    assert!(err.contains("10 s to 365 days"), "{err}");
    let said = ok(&cluster.synod(1, &["key", "refresh", "timed", "--every", "10s"]));
    assert!(said.contains("refreshed every 10 seconds of log time"), "{said}");
    assert_eq!(key(&cluster, "timed")["refresh_every_ms"], 10_000);
    let table = ok(&cluster.synod(2, &["key", "show", "timed"]));
    assert!(table.contains("refresh every: 10s"), "{table}");
    let refreshed = wait_for("the scheduled refresh", Duration::from_secs(60), || {
        let k = key(&cluster, "timed");
        (k["generation"].as_u64() >= Some(1)).then_some(k)
    });
    assert_eq!(refreshed["public_key"], public_key);
    cluster.sign(2, "timed", b"after a scheduled refresh", "timed-1").expect("the new generation signs");
    ok(&cluster.synod(1, &["key", "refresh", "timed", "--no-schedule"]));
    let stopped = key(&cluster, "timed");
    assert!(stopped["refresh_every_ms"].is_null() && stopped["refresh_due_at_ms"].is_null(), "{stopped}");
}

//! Key versions with real node processes and OpenSSL verifying: a key signs
//! with version 1, is rotated to a version 2 with another threshold, signs
//! with version 2; a version-1 request committed before the switch finishes
//! on version 1 during the overlap, and version 1 refuses new requests once
//! the overlap has ended.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use synod_tests::{fails, ok, openssl_verifies, wait_for, Cluster};

/// How long version 1 keeps signing requests that name it after the rotation.
const OVERLAP: &str = "30s";

fn key(cluster: &Cluster, name: &str) -> Value {
    serde_json::from_str(&ok(&cluster.synod(1, &["key", "show", name, "-o", "json"]))).expect("key JSON")
}

/// Signs `message` through node `via` with extra `synod sign` flags; the request JSON.
fn sign(cluster: &Cluster, via: u64, message: &str, id: &str, extra: &[&str]) -> Result<Value, String> {
    let file = cluster.path(&format!("{id}.msg"));
    std::fs::write(&file, message).unwrap();
    // Small amounts need no approval (the policy's tier starts above 100).
    let mut args =
        vec!["sign", "rel", "--in", file.to_str().unwrap(), "--request-id", id, "--attr", "amount=1", "-o", "json"];
    args.extend_from_slice(extra);
    let out = cluster.synod(via, &args);
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).expect("request JSON"))
    } else {
        Err(synod_tests::error_text(&out))
    }
}

/// Writes the request's raw signature next to its message; returns the signature's path.
fn signature_file(cluster: &Cluster, request: &Value) -> std::path::PathBuf {
    let id = request["request_id"].as_str().unwrap();
    let path = cluster.path(&format!("{id}.sig"));
    std::fs::write(&path, hex::decode(request["signature"].as_str().expect("signed")).unwrap()).unwrap();
    path
}

#[test]
fn rotation_new_version_signs_old_finishes_its_requests_then_retires() {
    let cluster = Cluster::start(3);
    let (alice, alice_public) = cluster.keygen("alice");
    ok(&cluster.synod(1, &["operator", "add", "alice", "--key", &alice_public, "--roles", "approver"]));
    let policy = cluster.path("policy.json");
    std::fs::write(
        &policy,
        r#"{"approvers": ["alice"], "tiers": [{"attribute": "amount", "above": 100, "approvals_required": 1}]}"#,
    )
    .unwrap();
    ok(&cluster.synod(1, &["key", "create", "rel", "-t", "2", "--policy", policy.to_str().unwrap()]));
    let pem_v1 = cluster.path("v1.pem");
    std::fs::write(&pem_v1, ok(&cluster.synod(1, &["key", "show", "rel", "--format", "pem"]))).unwrap();
    let first = sign(&cluster, 1, "signed by v1", "one", &[]).expect("version 1 signs");
    assert_eq!(first["key_version"], 1);
    // A request on version 1 that waits for an approval across the rotation.
    let held = cluster.path("held.msg");
    std::fs::write(&held, "held across the rotation").unwrap();
    let args = ["request", "sign", "rel", "--in", held.to_str().unwrap(), "--request-id", "held", "--attr"];
    ok(&cluster.synod(2, &[&args[..], &["amount=500", "-o", "json"]].concat()));

    // Rotate to 3 of 3: the new version is the primary, version 1 is retiring.
    let rotated = cluster.synod(1, &["key", "rotate", "rel", "-t", "3", "--overlap", OVERLAP, "-o", "json"]);
    let rotated: Value = serde_json::from_str(&ok(&rotated)).unwrap();
    assert_eq!(rotated["version"], 2, "{rotated}");
    assert_eq!(rotated["threshold"], 3);
    let versions = rotated["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2, "{rotated}");
    assert_eq!((&versions[0]["status"], &versions[0]["primary"]), (&"retiring".into(), &false.into()));
    assert_eq!((&versions[1]["status"], &versions[1]["primary"]), (&"active".into(), &true.into()));
    let pem_v2 = cluster.path("v2.pem");
    std::fs::write(&pem_v2, ok(&cluster.synod(1, &["key", "show", "rel", "--format", "pem"]))).unwrap();
    assert_ne!(std::fs::read(&pem_v1).unwrap(), std::fs::read(&pem_v2).unwrap());
    let jwks: Value =
        serde_json::from_str(&ok(&cluster.synod(1, &["key", "show", "rel", "--format", "jwks"]))).unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2, "both versions sign during the overlap: {jwks}");

    let second = sign(&cluster, 2, "signed by v2", "two", &[]).expect("version 2 signs");
    assert_eq!(second["key_version"], 2);
    assert_eq!(second["signers"].as_array().unwrap().len(), 3, "version 2 needs all three: {second}");
    // The held request was committed on version 1 and finishes there once approved.
    ok(&cluster.synod_as(1, &alice, &["approve", "held", "--yes"]));
    let held_done: Value =
        serde_json::from_str(&ok(&cluster.synod(3, &["request", "wait", "held", "-o", "json"]))).unwrap();
    assert_eq!((&held_done["status"], &held_done["key_version"]), (&"signed".into(), &1.into()), "{held_done}");
    // During the overlap a request may still name version 1.
    let named = sign(&cluster, 3, "named v1", "named", &["--key-version", "1"]).expect("version 1 in its overlap");
    assert_eq!(named["key_version"], 1);

    // OpenSSL: each signature verifies under its own version's key, not the other's.
    for (request, pem, other) in [
        (&first, &pem_v1, &pem_v2),
        (&held_done, &pem_v1, &pem_v2),
        (&named, &pem_v1, &pem_v2),
        (&second, &pem_v2, &pem_v1),
    ] {
        let id = request["request_id"].as_str().unwrap();
        let (message, signature) = (cluster.path(&format!("{id}.msg")), signature_file(&cluster, request));
        assert!(openssl_verifies(pem, &message, &signature), "openssl refused {id}");
        assert!(!openssl_verifies(other, &message, &signature), "{id} verified under the other version");
        let verified = ok(&cluster.synod(
            1,
            &["verify", "--key", "rel", "--in", message.to_str().unwrap(), "--signature", signature.to_str().unwrap()],
        ));
        let version = request["key_version"].as_u64().unwrap();
        assert!(verified.contains(&format!("key version {version}")), "{verified}");
    }

    // After the overlap version 1 is retired: it refuses new requests, naming why.
    let retire_at = key(&cluster, "rel")["versions"][0]["retire_at_ms"].as_u64().expect("a deadline");
    wait_for("version 1's overlap to end", Duration::from_secs(60), || {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        (now > retire_at + 1_000).then_some(())
    });
    let err = sign(&cluster, 1, "too late", "late", &["--key-version", "1"]).unwrap_err();
    assert!(err.contains("version 1 of key rel is retired"), "{err}");
    let after = key(&cluster, "rel");
    assert_eq!(after["versions"][0]["status"], "retired", "{after}");
    let jwks: Value =
        serde_json::from_str(&ok(&cluster.synod(1, &["key", "show", "rel", "--format", "jwks"]))).unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1, "a retired version is no longer published: {jwks}");
    sign(&cluster, 2, "still signing", "primary", &[]).expect("the primary signs on");
    let table = ok(&cluster.synod(1, &["key", "show", "rel"]));
    assert!(table.contains("v1") && table.contains("retired") && table.contains("(primary)"), "{table}");
    let err = fails(&cluster.synod(1, &["key", "rotate", "rel", "--overlap", "31d"]));
    assert!(err.contains("at most 30 days"), "{err}");
}

#[test]
fn rotation_moves_a_key_off_a_leaving_member_and_onto_a_new_one_while_it_signs() {
    // A 3-of-5 key loses node 5 and gains node 6 by two rotations; the cluster refuses to drop
    // node 5 while it holds a share in service, and a signer keeps signing throughout.
    let mut cluster = Cluster::start(5);
    ok(&cluster.synod(1, &["key", "create", "rel", "-t", "3", "--open-policy"]));
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (signed, failures) = std::thread::scope(|scope| {
        let background = scope.spawn(|| {
            // One request at a time through node 1, until told to stop.
            let (mut signed, mut failures) = (0, Vec::new());
            for i in 0.. {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                match sign(&cluster, 1, &format!("steady {i}"), &format!("steady-{i}"), &[]) {
                    Ok(_) => signed += 1,
                    Err(e) => failures.push(e),
                }
            }
            (signed, failures)
        });
        let err = fails(&cluster.synod(2, &["cluster", "remove-member", "--id", "5"]));
        assert!(
            err.contains("holds shares of keys in service (rel v1)") && err.contains("--participants 1,2,3,4"),
            "{err}"
        );
        let moved =
            ok(&cluster
                .synod(2, &["key", "rotate", "rel", "--participants", "1,2,3,4", "--overlap", "0s", "-o", "json"]));
        assert_eq!(serde_json::from_str::<Value>(&moved).unwrap()["participants"], serde_json::json!([1, 2, 3, 4]));
        ok(&cluster.synod(2, &["cluster", "remove-member", "--id", "5"]));
        wait_for("node 5 to leave the voters", Duration::from_secs(60), || {
            (!cluster.voters(1).contains(&5)).then_some(())
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        background.join().unwrap()
    });
    assert!(signed > 0, "nothing was signed while node 5 left");
    // A request in flight across the switch may fail once with the retirement; none other does.
    assert!(failures.iter().all(|e| e.contains("retired")) && failures.len() <= 1, "{failures:?}");

    cluster.kill(5);
    cluster.add_node_files(6);
    cluster.start_new_nodes(&[6]);
    let (raft_addr, api_addr) = (cluster.nodes[&6].raft_addr.clone(), cluster.nodes[&6].api_addr.clone());
    ok(&cluster.synod(1, &["cluster", "add-member", "--id", "6", "--raft-addr", &raft_addr, "--api-addr", &api_addr]));
    wait_for("node 6 to become a voter", Duration::from_secs(60), || cluster.voters(1).contains(&6).then_some(()));
    let joined = ok(&cluster.synod(3, &["key", "rotate", "rel", "--participants", "1,2,3,4,6", "-o", "json"]));
    let joined: Value = serde_json::from_str(&joined).unwrap();
    assert_eq!((&joined["version"], &joined["threshold"]), (&3.into(), &3.into()), "{joined}");
    let last = sign(&cluster, 6, "signed with node 6 a participant", "joined", &[]).expect("version 3 signs");
    assert_eq!(last["key_version"], 3);
}

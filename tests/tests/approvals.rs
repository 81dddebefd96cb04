//! Operators, policies and approvals with real node processes, and the audit
//! chain: no single operator can sign alone, every node enforces the policy
//! itself, and every action lands in a hash-chained log.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::Signer;
use serde_json::Value;
use synod_proto::authz::{approval_bytes, ApprovalSignature, ApprovalStatement};
use synod_proto::{Envelope, OperatorKey, SignedCommand};
use synod_tests::{fails, ok, wait_for, Cluster, Options};

/// A 3-node cluster with a 2-of-3 key `vault` whose policy needs 2 of alice, bob and carol,
/// and dave, who may request. Returns the key files by name.
fn setup(options: Options) -> (Cluster, std::collections::BTreeMap<&'static str, PathBuf>) {
    let cluster = Cluster::start_with(3, options);
    ok(&cluster.synod(1, &["key", "create", "vault", "-t", "2"]));
    let keys = cluster.add_operators(&[
        ("alice", "approver"),
        ("bob", "approver"),
        ("carol", "approver"),
        ("dave", "requester,approver"),
    ]);
    let policy = cluster.path("policy.json");
    std::fs::write(
        &policy,
        r#"{"requesters": ["dave"], "approvers": ["alice", "bob", "carol", "dave"], "approvals_required": 2,
            "environments": ["prod"],
            "tiers": [{"attribute": "amount", "above": 10000, "approvals_required": 3}]}"#,
    )
    .unwrap();
    ok(&cluster.synod(1, &["key", "policy", "set", "vault", "--file", policy.to_str().unwrap()]));
    (cluster, keys)
}

/// dave asks for a signature; returns the request JSON.
fn request(cluster: &Cluster, keys: &std::collections::BTreeMap<&str, PathBuf>, id: &str, extra: &[&str]) -> Value {
    let msg = cluster.path(&format!("{id}.msg"));
    std::fs::write(&msg, format!("transfer for {id}")).unwrap();
    let mut args = vec!["request", "sign", "vault", "--in", msg.to_str().unwrap(), "--request-id", id, "-o", "json"];
    args.extend_from_slice(extra);
    let out = ok(&cluster.synod_as(2, &keys["dave"], &args));
    serde_json::from_str(&out).unwrap()
}

fn show(cluster: &Cluster, id: &str) -> Value {
    serde_json::from_str(&ok(&cluster.synod(3, &["request", "show", id, "-o", "json"]))).unwrap()
}

/// The request as node 3 sees it, or None while node 3 has not applied it yet
/// (reads are local; the request was written through another node).
fn try_show(cluster: &Cluster, id: &str) -> Option<Value> {
    let out = cluster.synod(3, &["request", "show", id, "-o", "json"]);
    out.status.success().then(|| serde_json::from_slice(&out.stdout).unwrap())
}

fn approve(
    cluster: &Cluster,
    keys: &std::collections::BTreeMap<&str, PathBuf>,
    who: &str,
    id: &str,
) -> Result<String, String> {
    let out = cluster.synod_as(1, &keys[who], &["approve", id, "--yes"]);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn approvals_m_minus_one_gives_nothing_m_gives_a_signature() {
    // With 2 approvals required, one approval leaves the request unsigned; the second makes every
    // node sign, and the signature verifies. A request above the tier limit needs a third.
    let (cluster, keys) = setup(Options::default());
    let r = request(&cluster, &keys, "pay-1", &["--environment", "prod", "--attr", "amount=500"]);
    assert_eq!(r["status"], "awaiting_approval", "{r}");
    approve(&cluster, &keys, "alice", "pay-1").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let after_one = show(&cluster, "pay-1");
    assert_eq!(after_one["status"], "awaiting_approval");
    assert!(after_one["signature"].is_null());
    assert_eq!(after_one["approval_progress"][0].as_str().unwrap().split(' ').next(), Some("1/2"));
    approve(&cluster, &keys, "bob", "pay-1").unwrap();
    let signed = wait_for("the signature", Duration::from_secs(20), || {
        let v = show(&cluster, "pay-1");
        (v["status"] == "signed").then_some(v)
    });
    assert_eq!(signed["signature"].as_str().unwrap().len(), 128);

    // Above the tier: two approvals are not enough.
    request(&cluster, &keys, "pay-2", &["--environment", "prod", "--attr", "amount=50000"]);
    approve(&cluster, &keys, "alice", "pay-2").unwrap();
    approve(&cluster, &keys, "bob", "pay-2").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(show(&cluster, "pay-2")["status"], "awaiting_approval");
    approve(&cluster, &keys, "carol", "pay-2").unwrap();
    wait_for("the tiered signature", Duration::from_secs(20), || {
        (show(&cluster, "pay-2")["status"] == "signed").then_some(())
    });

    // The policy's environment list and requester list hold.
    let msg = cluster.path("x.msg");
    std::fs::write(&msg, "x").unwrap();
    let err = fails(&cluster.synod_as(
        1,
        &keys["dave"],
        &["request", "sign", "vault", "--in", msg.to_str().unwrap(), "--environment", "dev"],
    ));
    assert!(err.contains("environment \"dev\" is not allowed"), "{err}");
    let err = fails(&cluster.synod_as(1, &keys["alice"], &["request", "sign", "vault", "--in", msg.to_str().unwrap()]));
    assert!(err.contains("may not request"), "{err}");
}

#[test]
fn approvals_of_an_approver_revoked_mid_request_stop_counting() {
    // alice approves, then an admin removes her: her approval no longer counts on any node, so
    // bob's approval alone does not release a share; her key names no operator any more and the
    // cluster refuses her name; carol's approval then completes the request.
    let (cluster, keys) = setup(Options::default());
    let r = request(&cluster, &keys, "pay-r", &["--environment", "prod", "--attr", "amount=500"]);
    assert_eq!(r["status"], "awaiting_approval", "{r}");
    approve(&cluster, &keys, "alice", "pay-r").unwrap();
    ok(&cluster.synod(1, &["operator", "remove", "alice"]));
    approve(&cluster, &keys, "bob", "pay-r").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    for id in 1..=3 {
        let v: Value =
            serde_json::from_str(&ok(&cluster.synod(id, &["request", "show", "pay-r", "-o", "json"]))).unwrap();
        assert_eq!(v["status"], "awaiting_approval", "node {id}: {v}");
        assert!(v["signature"].is_null(), "node {id}: {v}");
        assert_eq!(v["approval_progress"][0].as_str().unwrap().split(' ').next(), Some("1/2"), "node {id}: {v}");
    }
    // Her key no longer names an operator, so she cannot even read the request she approved;
    // claiming her name anyway in a hand-made approval is refused by the cluster.
    let err = approve(&cluster, &keys, "alice", "pay-r").unwrap_err();
    assert!(err.contains("belongs to no operator"), "{err}");
    let statement = statement_of(&cluster, "pay-r");
    let answer = post_approval(&cluster, &keys["alice"], "pay-r", "alice", mallory_sig(&keys["alice"], &statement));
    assert!(answer.contains("\"rejected\""), "{answer}");
    approve(&cluster, &keys, "carol", "pay-r").unwrap();
    wait_for("the signature after a live second approval", Duration::from_secs(20), || {
        (show(&cluster, "pay-r")["status"] == "signed").then_some(())
    });
}

/// Submits a hand-made approval with curl (the CLI only makes valid ones).
fn post_approval(cluster: &Cluster, signer: &Path, request_id: &str, approver: &str, signature: String) -> String {
    let status: Value = serde_json::from_str(&ok(&cluster.synod(1, &["status", "-o", "json"]))).unwrap();
    let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&std::fs::read_to_string(signer).unwrap()).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let envelope = Envelope {
        cluster_id: status["cluster_id"].as_str().unwrap().into(),
        command_id: hex::encode(now.to_be_bytes()) + &hex::encode(rand_bytes()),
        issued_at_ms: now,
        expires_at_ms: now + 60_000,
        command: synod_proto::Command::Approve {
            request_id: request_id.into(),
            approver: approver.into(),
            signature: ApprovalSignature::Ed25519 { signature },
        },
    };
    let body = serde_json::to_string(&SignedCommand::sign(&envelope, &key)).unwrap();
    let env = cluster.env(1);
    let get = |k: &str| env.iter().find(|(n, _)| *n == k).unwrap().1.clone();
    let out = Command::new("curl")
        .args([
            "-s",
            "--cacert",
            &get("SYNOD_CACERT"),
            "--cert",
            &get("SYNOD_CLIENT_CERT"),
            "--key",
            &get("SYNOD_CLIENT_KEY"),
        ])
        .args(["-H", "content-type: application/json", "--data-binary", &body])
        .arg(format!("{}/v1/commands", get("SYNOD_ADDR")))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn rand_bytes() -> [u8; 8] {
    let mut b = [0u8; 8];
    b.copy_from_slice(
        &std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos().to_le_bytes()[..8],
    );
    b
}

/// The statement of request `id`, as approvers sign it.
fn statement_of(cluster: &Cluster, id: &str) -> ApprovalStatement {
    let info = show(cluster, id);
    let status: Value = serde_json::from_str(&ok(&cluster.synod(1, &["status", "-o", "json"]))).unwrap();
    ApprovalStatement {
        cluster_id: status["cluster_id"].as_str().unwrap().into(),
        request_id: id.into(),
        requester: OperatorKey::from_hex(info["requester"].as_str().unwrap()).unwrap(),
        key_id: info["key_id"].as_str().unwrap().into(),
        key_version: info["key_version"].as_u64().unwrap() as u32,
        message_sha256: info["message_sha256"].as_str().unwrap().into(),
        purpose: info["purpose"].as_str().unwrap().into(),
        environment: info["environment"].as_str().unwrap().into(),
        attributes: serde_json::from_value(info["attributes"].clone()).unwrap(),
        policy_version: info["policy_version"].as_u64().unwrap(),
        expires_at_ms: info["expires_at_ms"].as_u64().unwrap(),
        // A cluster of current rules signs version 2 statements, which name the format.
        format: (info["statement_version"].as_u64() == Some(2)).then(|| {
            let format: Option<synod_proto::format::FormatInfo> = serde_json::from_value(info["format"].clone()).ok();
            synod_proto::authz::StatementFormat::of(format.as_ref())
        }),
    }
}

#[test]
fn approvals_forged_replayed_expired_duplicate_and_self_are_refused_and_audited() {
    // Each bad approval is refused with its reason, changes nothing, and its refusal is in the audit log.
    let (cluster, keys) = setup(Options::default());
    request(&cluster, &keys, "r1", &["--environment", "prod", "--attr", "amount=1"]);
    request(&cluster, &keys, "r2", &["--environment", "prod", "--attr", "amount=1"]);

    // Forged: mallory signs and claims to be alice.
    let (mallory, _) = cluster.keygen("mallory");
    let forged = mallory_sig(&mallory, &statement_of(&cluster, "r1"));
    let answer = post_approval(&cluster, &mallory, "r1", "alice", forged);
    assert!(answer.contains("does not verify"), "{answer}");

    // Replayed: alice's genuine approval of r1 submitted for r2.
    let alice = ed25519_dalek::SigningKey::from_pkcs8_pem(&std::fs::read_to_string(&keys["alice"]).unwrap()).unwrap();
    let genuine = hex::encode(alice.sign(&approval_bytes(&statement_of(&cluster, "r1"))).to_bytes());
    let answer = post_approval(&cluster, &keys["alice"], "r2", "alice", genuine);
    assert!(answer.contains("does not verify"), "{answer}");

    // Duplicate and self approval.
    approve(&cluster, &keys, "alice", "r1").unwrap();
    let err = approve(&cluster, &keys, "alice", "r1").unwrap_err();
    assert!(err.contains("already approved"), "{err}");
    let err = approve(&cluster, &keys, "dave", "r1").unwrap_err();
    assert!(err.contains("cannot approve their own request"), "{err}");
    assert_eq!(show(&cluster, "r1")["approvals"], serde_json::json!(["alice"]));

    // Expired: a request valid for 2 s.
    request(&cluster, &keys, "r3", &["--environment", "prod", "--attr", "amount=1", "--ttl-secs", "2"]);
    std::thread::sleep(Duration::from_secs(3));
    let err = approve(&cluster, &keys, "bob", "r3").unwrap_err();
    assert!(err.contains("expired") || err.contains("no longer pending"), "{err}");

    let audit: Value =
        serde_json::from_str(&ok(&cluster.synod(2, &["audit", "list", "--limit", "1000", "-o", "json"]))).unwrap();
    let refused: Vec<String> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "approve" && r["result"] == "refused")
        .map(|r| r["detail"].as_str().unwrap().to_string())
        .collect();
    for needle in ["does not verify", "already approved", "own request"] {
        assert!(refused.iter().any(|d| d.contains(needle)), "no audited refusal with {needle:?} in {refused:?}");
    }
}

fn mallory_sig(key: &Path, statement: &ApprovalStatement) -> String {
    let k = ed25519_dalek::SigningKey::from_pkcs8_pem(&std::fs::read_to_string(key).unwrap()).unwrap();
    hex::encode(k.sign(&approval_bytes(statement)).to_bytes())
}

#[test]
fn approvals_ssh_keygen_signature_counts_and_wrong_namespace_does_not() {
    // An approver with an OpenSSH key approves with `ssh-keygen -Y sign -n synod-approval@v1`;
    // a signature made under another namespace is refused.
    let (cluster, keys) = setup(Options::default());
    let ssh_key = cluster.path("erin");
    let gen = Command::new("ssh-keygen").args(["-t", "ed25519", "-N", "", "-q", "-f"]).arg(&ssh_key).output().unwrap();
    assert!(gen.status.success());
    let pub_path = format!("{}.pub", ssh_key.display());
    ok(&cluster.synod(1, &["operator", "add", "erin", "--ssh-key", &pub_path, "--roles", "approver"]));
    let policy = cluster.path("policy2.json");
    std::fs::write(&policy, r#"{"approvers": ["alice", "erin"], "approvals_required": 2}"#).unwrap();
    ok(&cluster.synod(1, &["key", "policy", "set", "vault", "--file", policy.to_str().unwrap()]));
    request(&cluster, &keys, "s1", &[]);
    let statement = cluster.path("s1.statement");
    ok(&cluster.synod(1, &["request", "statement", "s1", "--out", statement.to_str().unwrap()]));

    let sign = |namespace: &str| {
        let sig = PathBuf::from(format!("{}.sig", statement.display()));
        let _ = std::fs::remove_file(&sig);
        let out = Command::new("ssh-keygen")
            .args(["-Y", "sign", "-n", namespace, "-f"])
            .arg(&ssh_key)
            .arg(&statement)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        sig
    };
    let wrong = sign("git");
    let err = fails(&cluster.synod(1, &["approve", "s1", "--yes", "--ssh-signature", wrong.to_str().unwrap()]));
    assert!(err.contains("namespace"), "{err}");
    let right = sign("synod-approval@v1");
    ok(&cluster.synod(1, &["approve", "s1", "--yes", "--ssh-signature", right.to_str().unwrap()]));
    approve(&cluster, &keys, "alice", "s1").unwrap();
    wait_for("the signature", Duration::from_secs(20), || try_show(&cluster, "s1").filter(|v| v["status"] == "signed"));
    assert_eq!(show(&cluster, "s1")["approvals"], serde_json::json!(["erin", "alice"]));
}

#[test]
fn approvals_leader_that_skips_the_policy_gets_no_shares() {
    // Every node is built to skip the policy when it leads (a test-build fault): the leader
    // coordinates an unapproved request and offers its own share, but the followers check the
    // policy themselves and refuse, so the request fails and no signature exists.
    let (cluster, keys) = setup(Options { faults: Some("skip-policy".into()), ..Options::default() });
    request(&cluster, &keys, "sneaky", &["--environment", "prod", "--attr", "amount=1"]);
    let failed = wait_for("the request to fail", Duration::from_secs(30), || {
        try_show(&cluster, "sneaky").filter(|v| v["status"] == "failed")
    });
    assert!(failed["signature"].is_null());
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("lacks approvals"), "{error}");
}

#[test]
fn audit_chain_is_identical_everywhere_and_tampering_is_caught() {
    // After signing, approvals and a restart, every node exports the same chain and it verifies;
    // a record changed on one node's disk is caught by `synod audit verify` there.
    let (mut cluster, keys) =
        setup(Options { snapshot_every_entries: 10, logs_kept_after_snapshot: 2, ..Options::default() });
    request(&cluster, &keys, "a1", &["--environment", "prod", "--attr", "amount=1"]);
    approve(&cluster, &keys, "alice", "a1").unwrap();
    approve(&cluster, &keys, "bob", "a1").unwrap();
    wait_for("the signature", Duration::from_secs(20), || try_show(&cluster, "a1").filter(|v| v["status"] == "signed"));
    cluster.stop(3);
    for i in 0..5 {
        ok(&cluster.synod(1, &["kv", "put", &format!("k{i}"), "v"]));
    }
    cluster.start_node(3);
    let export = |id: u64| {
        wait_for("node to answer", Duration::from_secs(30), || {
            let out = cluster.synod(id, &["audit", "export"]);
            out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        })
    };
    // The nodes keep writing on their own (endorsements of snapshot points), so each
    // comparison exports both sides afresh.
    let same = |a: u64, b: u64| {
        let one = export(a);
        (one == export(b)).then_some(one)
    };
    let one = wait_for("node 3 to catch up", Duration::from_secs(30), || same(1, 3));
    let lines = one.lines().count();
    assert!(lines > 20, "only {lines} audit records");
    wait_for("node 2 to agree", Duration::from_secs(30), || same(1, 2));
    for id in 1..=3 {
        ok(&cluster.synod(id, &["audit", "verify"]));
    }
    // A checkpoint: the audit key (made by DKG) threshold-signs the head; OpenSSL verifies it
    // over the message rebuilt from the exported record.
    ok(&cluster.synod(1, &["key", "create", "audit", "-t", "2"]));
    ok(&cluster.synod(2, &["audit", "checkpoint"]));
    let dir = cluster.path("checkpoints");
    ok(&cluster.synod(3, &["audit", "checkpoints", "--out-dir", dir.to_str().unwrap()]));
    let msgs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "msg"))
        .collect();
    assert!(!msgs.is_empty(), "no checkpoint written");
    for msg in &msgs {
        let openssl = Command::new("openssl")
            .args(["pkeyutl", "-verify", "-pubin", "-rawin", "-inkey"])
            .arg(dir.join("audit-key.pem"))
            .arg("-in")
            .arg(msg)
            .arg("-sigfile")
            .arg(msg.with_extension("sig"))
            .output()
            .unwrap();
        assert!(openssl.status.success(), "openssl refused checkpoint {}", msg.display());
    }
    // The audit key signs nothing else.
    let other = cluster.path("other.msg");
    std::fs::write(&other, "not a checkpoint").unwrap();
    let err = fails(&cluster.synod(1, &["sign", "audit", "--in", other.to_str().unwrap()]));
    assert!(err.contains("audit checkpoints only"), "{err}");
    let one = export(1);

    // An exported copy with one changed record fails offline verification.
    let tampered = one.replacen("\"applied\"", "\"refused\"", 1);
    let file = cluster.path("audit.jsonl");
    std::fs::write(&file, tampered).unwrap();
    let err = fails(&cluster.synod(1, &["audit", "verify", "--file", file.to_str().unwrap()]));
    assert!(err.contains("chain broken at record"), "{err}");

    // On disk: stop node 2, change record 3 in its store, start it again.
    assert!(cluster.stop(2));
    {
        use synod_node::store::{Durability, Op, Store, Tree};
        let store = synod_node::store::SledStore::open(&cluster.nodes[&2].dir.join("data/store")).unwrap();
        let mut key = b"audit/".to_vec();
        key.extend_from_slice(&3u64.to_be_bytes());
        let value = store.get(Tree::Meta, &key).unwrap().expect("record 3");
        let changed = String::from_utf8(value).unwrap().replacen("\"detail\":\"", "\"detail\":\"(edited) ", 1);
        store.write(vec![Op::Put { tree: Tree::Meta, key, value: changed.into_bytes() }], Durability::Sync).unwrap();
    }
    cluster.start_node(2);
    let err = wait_for("node 2 to answer", Duration::from_secs(30), || {
        let out = cluster.synod(2, &["audit", "verify"]);
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        (!out.status.success() && text.contains("record 3")).then_some(text)
    });
    assert!(err.contains("hash does not match"), "{err}");
}

#[test]
fn admin_operations_need_the_admin_quorum() {
    // With two admins required, one admin's policy change is only a proposal; the second
    // admin's agreement carries it.
    let (cluster, _keys) = setup(Options::default());
    let (admin2, public) = cluster.keygen("admin2");
    ok(&cluster.synod(1, &["operator", "add", "admin2", "--key", &public, "--roles", "admin,requester"]));
    ok(&cluster.synod(1, &["admin", "policy", "--approvals", "2"]));
    let policy = cluster.path("lax.json");
    std::fs::write(&policy, r#"{"approvals_required": 0}"#).unwrap();
    let out =
        ok(&cluster.synod(1, &["key", "policy", "set", "vault", "--file", policy.to_str().unwrap(), "-o", "json"]));
    let v: Value = serde_json::from_str(&out).unwrap();
    let detail = v["detail"].as_str().unwrap();
    assert!(detail.contains("needs 2 admin approvals"), "{detail}");
    let key: Value = serde_json::from_str(&ok(&cluster.synod(1, &["key", "show", "vault", "-o", "json"]))).unwrap();
    assert_eq!(key["policy"]["approvals_required"], 2, "one admin alone changed the policy");
    let proposal_id = detail.split_whitespace().nth(1).unwrap();
    ok(&cluster.synod_as(1, &admin2, &["admin", "approve", proposal_id]));
    let key: Value = serde_json::from_str(&ok(&cluster.synod(1, &["key", "show", "vault", "-o", "json"]))).unwrap();
    assert_eq!(key["policy"]["approvals_required"], 0);
}

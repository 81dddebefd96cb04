//! Denying and cancelling signing requests with real node processes: an
//! approver's signed denial fails a request (and the audit log keeps it), its
//! requester may cancel it, and nobody else may.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use synod_tests::{fails, ok, wait_for, Cluster};

/// How long a read may take to show a write sent through another node (reads are local).
const CONVERGE: Duration = Duration::from_secs(30);

/// A 3-node cluster with a 2-of-3 key `vault` whose policy needs 1 approval of alice or bob;
/// dave and erin may request. Returns the operators' key files by name.
fn setup() -> (Cluster, BTreeMap<&'static str, PathBuf>) {
    let cluster = Cluster::start(3);
    ok(&cluster.synod(1, &["key", "create", "vault", "-t", "2"]));
    let keys = cluster.add_operators(&[
        ("alice", "approver"),
        ("bob", "approver"),
        ("dave", "requester"),
        ("erin", "requester"),
    ]);
    let policy = cluster.path("policy.json");
    std::fs::write(
        &policy,
        r#"{"requesters": ["dave", "erin"], "approvers": ["alice", "bob"], "approvals_required": 1}"#,
    )
    .unwrap();
    ok(&cluster.synod(1, &["key", "policy", "set", "vault", "--file", policy.to_str().unwrap()]));
    (cluster, keys)
}

/// `who` asks for a signature under `vault` with request id `id`.
fn request(cluster: &Cluster, keys: &BTreeMap<&str, PathBuf>, who: &str, id: &str) {
    let msg = cluster.path(&format!("{id}.msg"));
    std::fs::write(&msg, format!("release {id}")).unwrap();
    let args = ["request", "sign", "vault", "--in", msg.to_str().unwrap(), "--request-id", id, "-o", "json"];
    let out: Value = serde_json::from_str(&ok(&cluster.synod_as(1, &keys[who], &args))).unwrap();
    assert_eq!(out["status"], "awaiting_approval", "{out}");
}

/// Request `id` as node 3 sees it once it has failed.
fn failed(cluster: &Cluster, id: &str) -> Value {
    wait_for(&format!("request {id} to fail on node 3"), CONVERGE, || {
        let out = cluster.synod(3, &["request", "show", id, "-o", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["status"] == "failed").then_some(v)
    })
}

#[test]
fn deny_cancel_denied_request_fails_is_audited_and_shown_and_only_its_requester_cancels() {
    // alice denies dave's request: it fails naming her and her reason, `request show` says so,
    // the audit log holds the denial, and no approval can revive it. dave cancels another
    // request of his; erin cannot cancel dave's.
    let (cluster, keys) = setup();
    request(&cluster, &keys, "dave", "rel-1");
    let out =
        ok(&cluster.synod_as(2, &keys["alice"], &["request", "deny", "rel-1", "--reason", "wrong branch", "--yes"]));
    assert!(out.contains("alice denied rel-1"), "{out}");
    let info = failed(&cluster, "rel-1");
    assert_eq!(info["error"], "denied by alice: wrong branch", "{info}");
    assert_eq!(info["denials"], serde_json::json!(["alice: wrong branch"]));
    assert!(info["signature"].is_null());
    let table = ok(&cluster.synod(3, &["request", "show", "rel-1"]));
    assert!(table.contains("denied:     alice: wrong branch"), "{table}");
    let err = fails(&cluster.synod_as(1, &keys["bob"], &["approve", "rel-1", "--yes"]));
    assert!(err.contains("no longer pending"), "{err}");
    let err = fails(&cluster.synod_as(1, &keys["bob"], &["request", "deny", "rel-1", "--reason", "x", "--yes"]));
    assert!(err.contains("no longer pending"), "{err}");

    let audit: Value =
        serde_json::from_str(&ok(&cluster.synod(2, &["audit", "list", "--limit", "1000", "-o", "json"]))).unwrap();
    let denials: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "deny" && r["request_id"] == "rel-1" && r["result"] == "applied")
        .collect();
    assert_eq!(denials.len(), 1, "{audit}");

    // A requester may withdraw their own request, and only theirs.
    request(&cluster, &keys, "dave", "rel-2");
    let err = fails(&cluster.synod_as(1, &keys["erin"], &["request", "cancel", "rel-2"]));
    assert!(err.contains("only the requester of rel-2"), "{err}");
    ok(&cluster.synod_as(1, &keys["dave"], &["request", "cancel", "rel-2"]));
    let info = failed(&cluster, "rel-2");
    assert_eq!(info["error"], "cancelled by its requester", "{info}");
    let err = fails(&cluster.synod_as(1, &keys["alice"], &["approve", "rel-2", "--yes"]));
    assert!(err.contains("no longer pending"), "{err}");
}

#[test]
fn deny_cancel_ssh_keygen_denial_counts_and_a_signed_approval_statement_does_not() {
    // An approver with an OpenSSH key denies with `ssh-keygen -Y sign` over the denial statement
    // (`request statement --denial`); her signature of the approval statement is refused as one.
    let (cluster, keys) = setup();
    let ssh_key = cluster.path("frank");
    let gen = std::process::Command::new("ssh-keygen")
        .args(["-t", "ed25519", "-N", "", "-q", "-f"])
        .arg(&ssh_key)
        .output()
        .unwrap();
    assert!(gen.status.success());
    let public = format!("{}.pub", ssh_key.display());
    ok(&cluster.synod(1, &["operator", "add", "frank", "--ssh-key", &public, "--roles", "approver"]));
    let policy = cluster.path("policy-ssh.json");
    std::fs::write(&policy, r#"{"approvers": ["alice", "frank"], "approvals_required": 1}"#).unwrap();
    ok(&cluster.synod(1, &["key", "policy", "set", "vault", "--file", policy.to_str().unwrap()]));
    request(&cluster, &keys, "dave", "rel-3");
    let sign = |statement: &std::path::Path| {
        let sig = PathBuf::from(format!("{}.sig", statement.display()));
        let out = std::process::Command::new("ssh-keygen")
            .args(["-Y", "sign", "-n", "synod-approval@v1", "-f"])
            .arg(&ssh_key)
            .arg(statement)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        sig
    };
    let approval = cluster.path("rel-3.approval");
    ok(&cluster.synod(1, &["request", "statement", "rel-3", "--out", approval.to_str().unwrap()]));
    let denial = cluster.path("rel-3.denial");
    ok(&cluster.synod(1, &["request", "statement", "rel-3", "--denial", "--out", denial.to_str().unwrap()]));
    let deny = |sig: &std::path::Path| {
        let args = ["request", "deny", "rel-3", "--reason", "unsigned tag", "--yes", "--ssh-signature"];
        let mut args = args.to_vec();
        args.push(sig.to_str().unwrap());
        cluster.synod(1, &args)
    };
    let err = fails(&deny(&sign(&approval)));
    assert!(err.contains("SSH denial by frank refused"), "{err}");
    ok(&deny(&sign(&denial)));
    let info = failed(&cluster, "rel-3");
    assert_eq!(info["error"], "denied by frank: unsigned tag", "{info}");
}

//! What every format shares: nodes parse the declared format and refuse bytes that do not parse,
//! a policy restricts formats and SSHSIG namespaces, and an approver sees (and signs) the
//! format and the artifact hash read from the signed bytes.

use std::time::Duration;

use serde_json::Value;
use synod_proto::sshsig::SignedData;
use synod_tests::{fails, ok, wait_for, Cluster};

use super::{cluster_with_key, write};

fn sshsig_blob(namespace: &str, hash: [u8; 64]) -> Vec<u8> {
    SignedData { namespace: namespace.into(), hash_alg: "sha512".into(), hash: hash.to_vec() }.to_bytes()
}

fn show(cluster: &Cluster, via: u64, id: &str) -> Value {
    serde_json::from_str(&ok(&cluster.synod(via, &["request", "show", id, "-o", "json"]))).unwrap()
}

#[test]
fn core_bytes_that_do_not_parse_as_their_format_are_refused_by_every_node() {
    let cluster = cluster_with_key("k");
    let junk = write(&cluster, "junk", b"SSHSIG but not a signed-data blob");
    for node in 1..=3 {
        let id = format!("junk-{node}");
        let error = fails(&cluster.synod(
            node,
            &["request", "sign", "k", "--format", "sshsig", "--in", junk.to_str().unwrap(), "--request-id", &id],
        ));
        assert!(error.contains("does not parse as sshsig"), "node {node}: {error}");
        assert!(error.contains("synod sign --format sshsig"), "node {node} says how to build it: {error}");
        assert!(fails(&cluster.synod(node, &["request", "show", &id])).contains(&id));
    }
    // The same kind of bytes, well formed, are taken, and every node reads the same artifact hash.
    let blob = write(&cluster, "blob", &sshsig_blob("file", [5; 64]));
    let out = ok(&cluster.synod(
        2,
        &["request", "sign", "k", "--format", "sshsig", "--in", blob.to_str().unwrap(), "--request-id", "good"],
    ));
    assert!(out.contains("format:     sshsig"), "{out}");
    assert!(out.contains(&format!("artifact:   sha512:{}", hex::encode([5; 64]))), "{out}");
    for node in 1..=3 {
        let info = wait_for("the request on every node", Duration::from_secs(10), || {
            let out = cluster.synod(node, &["request", "show", "good", "-o", "json"]);
            out.status.success().then(|| serde_json::from_slice::<Value>(&out.stdout).unwrap())
        });
        assert_eq!(info["format"]["format"], "sshsig");
        assert_eq!(info["format"]["namespace"], "file");
        assert_eq!(info["format"]["artifact_hash"], format!("sha512:{}", hex::encode([5; 64])));
        assert_eq!(info["statement_version"], 2);
    }
    // The audit log records the format and the artifact hash.
    let audit = ok(&cluster.synod(1, &["audit", "list", "-o", "json"]));
    assert!(audit.contains(&format!("sha512:{}", hex::encode([5; 64]))), "the audit names the artifact hash");
}

#[test]
fn core_policy_restricts_formats_and_namespaces_and_approvers_see_the_artifact_hash() {
    let cluster = cluster_with_key("release");
    let (alice, alice_public) = cluster.keygen("alice");
    ok(&cluster.synod(1, &["operator", "add", "alice", "--key", &alice_public, "--roles", "approver"]));
    let policy = write(
        &cluster,
        "policy.json",
        br#"{"approvers": ["alice"], "approvals_required": 1, "formats": ["sshsig"], "namespaces": ["git"]}"#,
    );
    ok(&cluster.synod(1, &["key", "policy", "set", "release", "--file", policy.to_str().unwrap()]));
    let shown = ok(&cluster.synod(1, &["key", "policy", "show", "release", "-o", "json"]));
    assert!(shown.contains("\"formats\"") && shown.contains("\"git\""), "{shown}");

    // Raw bytes, and SSHSIG in another namespace, are refused by the policy.
    let plain = write(&cluster, "plain", b"hello");
    let error = fails(&cluster.synod(1, &["request", "sign", "release", "--in", plain.to_str().unwrap()]));
    assert!(error.contains("does not sign the raw format"), "{error}");
    let file_blob = write(&cluster, "file-blob", &sshsig_blob("file", [1; 64]));
    let error = fails(
        &cluster.synod(1, &["request", "sign", "release", "--format", "sshsig", "--in", file_blob.to_str().unwrap()]),
    );
    assert!(error.contains("namespace \"file\""), "{error}");

    // SSHSIG in namespace git waits for alice, who sees the format and the artifact hash.
    let git_blob = write(&cluster, "git-blob", &sshsig_blob("git", [2; 64]));
    ok(&cluster.synod(
        1,
        &[
            "request",
            "sign",
            "release",
            "--format",
            "sshsig",
            "--in",
            git_blob.to_str().unwrap(),
            "--request-id",
            "tag",
        ],
    ));
    let info = show(&cluster, 1, "tag");
    assert_eq!(info["status"], "awaiting_approval", "{info}");
    let table = ok(&cluster.synod(3, &["request", "show", "tag"]));
    assert!(table.contains("format:     sshsig"), "{table}");
    assert!(table.contains(&format!("sha512:{}", hex::encode([2; 64]))), "{table}");
    assert!(table.contains("namespace:  git"), "{table}");
    let approved = cluster.synod_as(1, &alice, &["approve", "tag", "--yes"]);
    let told = String::from_utf8_lossy(&approved.stderr).into_owned();
    assert!(approved.status.success(), "{told}");
    assert!(told.contains("format:      sshsig"), "the approver is shown the format: {told}");
    assert!(told.contains(&format!("artifact:    sha512:{}", hex::encode([2; 64]))), "{told}");
    let signed = wait_for("the approved signature", Duration::from_secs(20), || {
        let v = show(&cluster, 2, "tag");
        (v["status"] == "signed").then_some(v)
    });
    assert_eq!(signed["format"]["format"], "sshsig");
}

//! Scoped reads against real node processes, each as an attack: a client
//! certificate alone reads health, status and metrics and nothing else; a read signature that is
//! forged, stale or made for another cluster is refused with why; and a signed
//! read returns what that operator may see (its own requests and their
//! signatures, what awaits its approval, or everything for auditors and admins).

use std::path::{Path, PathBuf};
use std::process::Command;

use ed25519_dalek::pkcs8::DecodePrivateKey;
use serde_json::Value;
use synod_proto::readsig::{ReadSignature, READ_SIGNATURE_HEADER, READ_SKEW_MS_MAX};
use synod_tests::{fails, ok, run_synod, Cluster};

/// Makes an operator key file; returns its path and public key (hex).
fn keygen(cluster: &Cluster, name: &str) -> (PathBuf, String) {
    let path = cluster.path(&format!("{name}.pem"));
    let out = ok(&cluster.synod(1, &["operator", "keygen", "--out", path.to_str().unwrap(), "-o", "json"]));
    let v: Value = serde_json::from_str(&out).unwrap();
    (path, v["public_key"].as_str().unwrap().to_string())
}

/// The CLI at node `id` as the operator whose key is `key`, or with no operator key at all.
fn synod_as(cluster: &Cluster, id: u64, key: Option<&Path>, args: &[&str]) -> std::process::Output {
    let mut env = cluster.env(id);
    env.retain(|(k, _)| *k != "SYNOD_OPERATOR_KEY");
    if let Some(key) = key {
        env.push(("SYNOD_OPERATOR_KEY", key.display().to_string()));
    }
    run_synod(args, &env)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// One raw GET at node 1 with `cert` (a `certs/client-<name>` stem) and the
/// read-signature header `signature`: the HTTP status and the body.
fn curl(cluster: &Cluster, cert: &str, path: &str, signature: Option<String>) -> (u16, String) {
    let env = cluster.env(1);
    let get = |k: &str| env.iter().find(|(n, _)| *n == k).unwrap().1.clone();
    let cert_file = cluster.path(&format!("certs/client-{cert}.crt"));
    let key_file = cluster.path(&format!("certs/client-{cert}.key"));
    let mut command = Command::new("curl");
    command.args(["-s", "-w", "\n%{http_code}", "--cacert", &get("SYNOD_CACERT")]);
    command.args(["--cert", cert_file.to_str().unwrap(), "--key", key_file.to_str().unwrap()]);
    if let Some(signature) = signature {
        command.args(["-H", &format!("{READ_SIGNATURE_HEADER}: {signature}")]);
    }
    let out = command.arg(format!("{}{path}", get("SYNOD_ADDR"))).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn signing_key(path: &Path) -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_pkcs8_pem(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn cluster_id(cluster: &Cluster) -> String {
    let status: Value = serde_json::from_str(&ok(&cluster.synod(1, &["status", "-o", "json"]))).unwrap();
    status["cluster_id"].as_str().unwrap().to_string()
}

#[test]
fn reads_bare_certificate_and_bad_signatures_are_refused() {
    //! A certificate without an operator signature reads health only (status
    //! and metrics too only before genesis); a read
    //! signature by an unknown key, for another path, another cluster, or
    //! older than the skew limit is refused with why; a good one reads.
    let cluster = Cluster::start(1);
    let admin = cluster.path("admin.pem");

    // Attack 1: a bare client certificate asks for everything. Only health answers
    // (Prometheus, which cannot sign, scrapes the separate metrics listener).
    let (code, body) = curl(&cluster, "tester", "/v1/sys/health", None);
    assert_eq!(code, 200, "{body}");
    for path in [
        "/v1/sys/status",
        "/v1/sys/metrics",
        "/v1/keys",
        "/v1/keys/audit",
        "/v1/requests/anything",
        "/v1/operators",
        "/v1/admin/proposals",
        "/v1/audit",
        "/v1/audit/head",
        "/v1/audit/checkpoints",
        "/v1/kv",
        "/v1/kv/greeting",
    ] {
        let (code, body) = curl(&cluster, "tester", path, None);
        assert_eq!(code, 401, "{path}: {body}");
        assert!(body.contains("SYNOD_OPERATOR_KEY"), "{path} says what to do: {body}");
    }
    // The CLI without an operator key: health works, status and the operators say what to set.
    ok(&synod_as(&cluster, 1, None, &["health"]));
    for args in [&["status"][..], &["operator", "list"]] {
        let err = fails(&synod_as(&cluster, 1, None, args));
        assert!(err.contains("needs an operator") && err.contains("SYNOD_OPERATOR_KEY"), "{args:?}: {err}");
    }

    let id = cluster_id(&cluster);
    let sign = |key: &ed25519_dalek::SigningKey, cluster: &str, path: &str, at: u64| {
        Some(ReadSignature::sign(key, cluster, "GET", path, at).to_header())
    };
    let key = signing_key(&admin);
    // A good signature reads (the control).
    let (code, body) = curl(&cluster, "tester", "/v1/audit", sign(&key, &id, "/v1/audit", now_ms()));
    assert_eq!(code, 200, "{body}");

    // Attack 2: a key that is no operator's.
    let (stranger, _) = keygen(&cluster, "stranger");
    let (code, body) = curl(&cluster, "tester", "/v1/audit", sign(&signing_key(&stranger), &id, "/v1/audit", now_ms()));
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("belongs to no operator"), "{body}");

    // Attack 3: the admin's signature for one path, replayed on another.
    let (code, body) = curl(&cluster, "tester", "/v1/audit?from=1", sign(&key, &id, "/v1/audit", now_ms()));
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("does not verify"), "{body}");

    // Attack 4: a signature made for another cluster, replayed here.
    let (code, body) = curl(&cluster, "tester", "/v1/audit", sign(&key, "synod-elsewhere", "/v1/audit", now_ms()));
    assert_eq!(code, 401, "{body}");
    assert!(body.contains(&format!("on cluster {id}")), "{body}");

    // Attack 5: a signature captured earlier than the skew allows.
    let stale = now_ms() - READ_SKEW_MS_MAX - 5_000;
    let (code, body) = curl(&cluster, "tester", "/v1/audit", sign(&key, &id, "/v1/audit", stale));
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("before this node's clock"), "{body}");

    // Attack 6: a forged signature (the admin's key id, random bytes).
    let forged =
        format!("v1;key={};created={};sig={}", hex::encode(key.verifying_key().to_bytes()), now_ms(), "ab".repeat(64));
    let (code, body) = curl(&cluster, "tester", "/v1/audit", Some(forged));
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("does not verify"), "{body}");
}

/// Sets `key`'s policy from JSON text.
fn set_policy(cluster: &Cluster, key: &str, policy: &str) {
    let file = cluster.path(&format!("policy-{key}.json"));
    std::fs::write(&file, policy).unwrap();
    ok(&cluster.synod(1, &["key", "policy", "set", key, "--file", file.to_str().unwrap()]));
}

/// `synod request show ID -o json` as `key`, or the CLI's error.
fn show_as(cluster: &Cluster, key: &Path, id: &str) -> Result<Value, String> {
    let out = synod_as(cluster, 1, Some(key), &["request", "show", id, "-o", "json"]);
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(synod_tests::error_text(&out))
    }
}

/// The request ids of the audit records `key` reads.
fn audited_requests(cluster: &Cluster, key: &Path) -> Vec<String> {
    let out = ok(&synod_as(cluster, 1, Some(key), &["audit", "export"]));
    out.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter_map(|r| r["request_id"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn reads_each_operator_sees_its_own_scope() {
    //! A requester sees its own request and signature but not another's; an
    //! approver named by the policy sees what awaits it (without the signature),
    //! one not named sees nothing; an auditor reads the audit log and everything.
    let cluster = Cluster::start(3);
    ok(&cluster.synod(1, &["key", "create", "open", "-t", "2"]));
    ok(&cluster.synod(1, &["key", "create", "vault", "-t", "2"]));
    let mut keys = std::collections::BTreeMap::new();
    for (name, roles) in [
        ("rita", "requester"),
        ("mallory", "requester"),
        ("alice", "approver"),
        ("carol", "approver"),
        ("eve", "auditor"),
    ] {
        let (path, public) = keygen(&cluster, name);
        ok(&cluster.synod(1, &["operator", "add", name, "--key", &public, "--roles", roles]));
        keys.insert(name, path);
    }
    set_policy(&cluster, "open", r#"{"requesters": ["rita", "mallory"]}"#);
    set_policy(&cluster, "vault", r#"{"requesters": ["rita"], "approvers": ["alice"], "approvals_required": 1}"#);

    // rita signs with the open key and reads her own request and its signature.
    let msg = cluster.path("r1.msg");
    std::fs::write(&msg, "pay 100 to bob").unwrap();
    let args = ["request", "sign", "open", "--in", msg.to_str().unwrap(), "--request-id", "r1", "-o", "json"];
    let r1: Value = serde_json::from_str(&ok(&synod_as(&cluster, 1, Some(&keys["rita"]), &args))).unwrap();
    let signature = r1["signature"].as_str().expect("a signature").to_string();
    assert_eq!(show_as(&cluster, &keys["rita"], "r1").unwrap()["signature"].as_str(), Some(signature.as_str()));

    // Attack: mallory, another requester, wants rita's signature to broadcast it first.
    let err = show_as(&cluster, &keys["mallory"], "r1").unwrap_err();
    assert!(err.contains("reading request r1 needs the operator who made it") && err.contains("mallory"), "{err}");
    assert!(!audited_requests(&cluster, &keys["mallory"]).contains(&"r1".to_string()));
    // ...nor do approvers the open key's policy does not name.
    assert!(show_as(&cluster, &keys["alice"], "r1").is_err());
    // mallory still lists keys (to know what to ask for) but not proposals.
    ok(&synod_as(&cluster, 1, Some(&keys["mallory"]), &["key", "list"]));
    let (code, body) = {
        let key = signing_key(&keys["mallory"]);
        let id = cluster_id(&cluster);
        curl(
            &cluster,
            "tester",
            "/v1/admin/proposals",
            Some(ReadSignature::sign(&key, &id, "GET", "/v1/admin/proposals", now_ms()).to_header()),
        )
    };
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("needs an auditor or an admin"), "{body}");

    // rita asks for a vault signature, which waits for alice.
    std::fs::write(&msg, "pay 1000000 to bob").unwrap();
    let args = ["request", "sign", "vault", "--in", msg.to_str().unwrap(), "--request-id", "v1", "-o", "json"];
    let v1: Value = serde_json::from_str(&ok(&synod_as(&cluster, 1, Some(&keys["rita"]), &args))).unwrap();
    assert_eq!(v1["status"], "awaiting_approval", "{v1}");
    // alice, named by the policy, sees it; carol, an approver it does not name, does not.
    assert_eq!(show_as(&cluster, &keys["alice"], "v1").unwrap()["status"], "awaiting_approval");
    let err = show_as(&cluster, &keys["carol"], "v1").unwrap_err();
    assert!(err.contains("an approver named by its key's policy"), "{err}");
    // alice approves through the CLI (which reads the request as her), and reads its audit records.
    ok(&synod_as(&cluster, 1, Some(&keys["alice"]), &["approve", "v1", "--yes"]));
    let signed = synod_tests::wait_for("v1 to be signed", std::time::Duration::from_secs(60), || {
        let info = show_as(&cluster, &keys["rita"], "v1").ok()?;
        (info["status"] == "signed").then_some(info)
    });
    assert!(signed["signature"].is_string(), "{signed}");
    // alice sees the request but not its signature: the output is rita's.
    assert!(show_as(&cluster, &keys["alice"], "v1").unwrap()["signature"].is_null());
    let alice_audit = audited_requests(&cluster, &keys["alice"]);
    assert!(alice_audit.contains(&"v1".to_string()), "{alice_audit:?}");
    assert!(!alice_audit.contains(&"r1".to_string()), "{alice_audit:?}");
    assert!(!audited_requests(&cluster, &keys["carol"]).contains(&"v1".to_string()));

    // eve, the auditor, reads the whole log and every request with its signature.
    let eve_audit = audited_requests(&cluster, &keys["eve"]);
    assert!(eve_audit.contains(&"r1".to_string()) && eve_audit.contains(&"v1".to_string()), "{eve_audit:?}");
    assert_eq!(show_as(&cluster, &keys["eve"], "r1").unwrap()["signature"].as_str(), Some(signature.as_str()));
    ok(&synod_as(&cluster, 1, Some(&keys["eve"]), &["audit", "verify"]));
    ok(&synod_as(&cluster, 1, Some(&keys["eve"]), &["admin", "proposals"]));
}

#[test]
fn reads_metrics_listener_serves_prometheus_without_identity() {
    //! Prometheus cannot sign reads: a node configured with `metrics_listen`
    //! serves its figures there over plain HTTP, while the API's
    //! `/v1/sys/metrics` still refuses a bare certificate.
    let mut cluster = Cluster::start(1);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    assert!(cluster.stop(1));
    let config = cluster.nodes[&1].config.clone();
    let text = std::fs::read_to_string(&config).unwrap();
    let text =
        text.replacen("\ngenesis_admins", &format!("\nmetrics_listen = \"127.0.0.1:{port}\"\ngenesis_admins"), 1);
    std::fs::write(&config, text).unwrap();
    cluster.start_node(1);
    cluster.wait_leader();
    let out = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}", &format!("http://127.0.0.1:{port}/metrics")])
        .output()
        .expect("curl is installed by scripts/test");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.ends_with("\n200") && text.contains("synod_raft_is_leader{node=\"1\"} 1"), "{text}");
    let (code, body) = curl(&cluster, "tester", "/v1/sys/metrics", None);
    assert_eq!(code, 401, "{body}");
}

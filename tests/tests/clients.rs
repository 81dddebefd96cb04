//! What one client can hold open, and revocation that bites, with real node
//! processes: each test is an attack a requester or a lone admin tried, and
//! the refusal it now meets (rules 4, `state::RULES_BOUNDED_CLIENTS`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;
use synod_proto::{Command, Envelope, SignedCommand};
use synod_tests::{fails, ok, Cluster};

/// A 3-node cluster with a 2-of-3 key `vault` whose policy needs one approval
/// from alice, and dave and erin, who may request (dave at most `dave_max` at once).
fn setup(dave_max: &str) -> (Cluster, BTreeMap<&'static str, PathBuf>) {
    let cluster = Cluster::start(3);
    let mut keys = BTreeMap::new();
    for (name, roles, extra) in [
        ("alice", "approver", vec![]),
        ("dave", "requester", vec!["--pending-max", dave_max]),
        ("erin", "requester", vec![]),
    ] {
        let (path, public) = cluster.keygen(name);
        let mut args = vec!["operator", "add", name, "--key", &public, "--roles", roles];
        args.extend(extra);
        ok(&cluster.synod(1, &args));
        keys.insert(name, path);
    }
    let policy = cluster.path("policy.json");
    std::fs::write(&policy, r#"{"approvers": ["alice"], "approvals_required": 1}"#).unwrap();
    ok(&cluster.synod(1, &["key", "create", "vault", "-t", "2", "--policy", policy.to_str().unwrap()]));
    (cluster, keys)
}

/// `who` asks for a signature of `id`'s message on `vault`.
fn request(cluster: &Cluster, keys: &BTreeMap<&str, PathBuf>, who: &str, id: &str) -> std::process::Output {
    let msg = cluster.path(&format!("{id}.msg"));
    std::fs::write(&msg, format!("transfer for {id}")).unwrap();
    cluster.synod_as(2, &keys[who], &["request", "sign", "vault", "--in", msg.to_str().unwrap(), "--request-id", id])
}

fn show(cluster: &Cluster, id: &str) -> Value {
    serde_json::from_str(&ok(&cluster.synod(3, &["request", "show", id, "-o", "json"]))).unwrap()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// POSTs a command signed by the admin with the given validity window to
/// node 1's `/v1/sign` (the route `synod sign` uses); returns the JSON answer.
fn post_signed(cluster: &Cluster, name: &str, issued_at_ms: u64, expires_at_ms: u64, command: Command) -> Value {
    let cluster_id = cluster.status(1).unwrap()["cluster_id"].as_str().unwrap().to_string();
    let admin = synod_cli::operator::load_operator_key(&cluster.path("admin.pem")).unwrap();
    let envelope = Envelope {
        cluster_id,
        command_id: format!("{:032x}", now_ms() + issued_at_ms),
        issued_at_ms,
        expires_at_ms,
        command,
    };
    let body = cluster.path(&format!("{name}.json"));
    std::fs::write(&body, serde_json::to_string(&SignedCommand::sign(&envelope, &admin)).unwrap()).unwrap();
    let env: BTreeMap<&str, String> = cluster.env(1).into_iter().collect();
    let out = std::process::Command::new("curl")
        .args(["-sS", "--cacert", &env["SYNOD_CACERT"], "--cert", &env["SYNOD_CLIENT_CERT"]])
        .args(["--key", &env["SYNOD_CLIENT_KEY"], "-H", "content-type: application/json", "--data-binary"])
        .arg(format!("@{}", body.display()))
        .arg(format!("{}/v1/sign", env["SYNOD_ADDR"]))
        .output()
        .expect("curl is installed by scripts/test");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stdout)))
}

fn sign_request(request_id: &str) -> Command {
    Command::SignRequest {
        format: None,
        trusted_comment: None,
        request_id: request_id.into(),
        key: "vault".into(),
        message: hex_of(request_id.as_bytes()),
        purpose: String::new(),
        environment: String::new(),
        attributes: BTreeMap::new(),
        version: None,
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn clients_long_validity_and_reserved_ids_are_refused() {
    // A command issued ten years ahead is refused (it once held a pending slot for ten
    // years); a command valid for the whole 24 h makes a request that still expires within
    // the policy's approval window; `checkpoint-<n>` and `synod-` ids belong to the cluster.
    let (cluster, keys) = setup("64");
    let ten_years = 10 * 365 * 24 * 3600 * 1000;
    let now = now_ms();
    let answer = post_signed(&cluster, "future", now + ten_years, now + ten_years + 60_000, sign_request("future-1"));
    let text = answer.to_string();
    assert!(text.contains("ahead of the log's time") && text.contains("check the clock"), "{text}");

    let answer = post_signed(&cluster, "long", now, now + 24 * 3600 * 1000 - 1, sign_request("long-1"));
    assert_eq!(answer["status"], "awaiting_approval", "{answer}");
    let expires = answer["expires_at_ms"].as_u64().unwrap();
    let window = synod_node::state::REQUEST_APPROVAL_MS_DEFAULT;
    assert!(expires <= now_ms() + window, "a request lives at most its approval window: {expires}");

    for id in ["checkpoint-18446744073709551613", "synod-x"] {
        let err = fails(&request(&cluster, &keys, "dave", id));
        assert!(err.contains("reserved for the cluster's own requests"), "{err}");
    }
}

#[test]
fn clients_one_requester_cannot_fill_the_pending_slots() {
    // dave may hold 3 requests open (his pending_max); the fourth is refused naming the quota,
    // and erin, another requester, still gets hers in.
    let (cluster, keys) = setup("3");
    for i in 0..3 {
        ok(&request(&cluster, &keys, "dave", &format!("d-{i}")));
    }
    let err = fails(&request(&cluster, &keys, "dave", "d-3"));
    assert!(err.contains("dave already has 3 requests pending (at most 3)") && err.contains("pending_max"), "{err}");
    ok(&request(&cluster, &keys, "erin", "e-0"));
    assert_eq!(show(&cluster, "e-0")["status"], "awaiting_approval");
}

#[test]
fn clients_removed_requester_pending_request_never_signs() {
    // dave's request waits for alice; an admin removes dave; the request fails on every node
    // at once, and alice's approval afterwards is refused: nothing is signed.
    let (cluster, keys) = setup("64");
    ok(&request(&cluster, &keys, "dave", "gone-1"));
    let removed = ok(&cluster.synod(1, &["operator", "remove", "dave"]));
    assert!(removed.contains("1 of their pending requests failed"), "{removed}");
    for node in 1..=3 {
        let r: Value =
            serde_json::from_str(&ok(&cluster.synod(node, &["request", "show", "gone-1", "-o", "json"]))).unwrap();
        assert_eq!(r["status"], "failed", "node {node}: {r}");
        assert!(r["error"].as_str().unwrap().contains("requester dave was removed"), "{r}");
    }
    let err = fails(&cluster.synod_as(1, &keys["alice"], &["approve", "gone-1", "--yes"]));
    assert!(err.contains("no longer pending"), "{err}");
    assert!(show(&cluster, "gone-1")["signature"].is_null());
}

#[test]
fn clients_policy_that_expired_mid_request_releases_no_share() {
    // The policy expires 4 s after dave's request; alice approves once it has: her approval
    // comes too late and the request fails naming the policy; no signature exists.
    let (cluster, keys) = setup("64");
    let policy = cluster.path("short.json");
    let expires = now_ms() + 4_000;
    std::fs::write(
        &policy,
        format!(r#"{{"approvers": ["alice"], "approvals_required": 1, "expires_at_ms": {expires}}}"#),
    )
    .unwrap();
    ok(&cluster.synod(1, &["key", "policy", "set", "vault", "--file", policy.to_str().unwrap()]));
    ok(&request(&cluster, &keys, "dave", "late-1"));
    std::thread::sleep(std::time::Duration::from_millis(expires.saturating_sub(now_ms()) + 500));
    // Any entry moves the log's time past the policy's expiry.
    cluster.put(1, "tick", "1").unwrap();
    let err = fails(&cluster.synod_as(1, &keys["alice"], &["approve", "late-1", "--yes"]));
    assert!(err.contains("no longer pending"), "{err}");
    let r = show(&cluster, "late-1");
    assert_eq!(r["status"], "failed", "{r}");
    assert!(r["error"].as_str().unwrap().contains("policy expired"), "{r}");
    assert!(r["signature"].is_null());
}

#[test]
fn clients_fresh_key_cannot_sign_before_its_policy_is_set_under_the_quorum() {
    // Two admins must agree to admin operations. admin2 agrees to create a key; the admin who
    // proposed it (also a requester) cannot sign with it, because a key made without a policy
    // signs nothing; a policy one admin proposes is still not enough; once admin2 agrees, it signs.
    let cluster = Cluster::start(3);
    let (admin2, public) = cluster.keygen("admin2");
    ok(&cluster.synod(1, &["operator", "add", "admin2", "--key", &public, "--roles", "admin,requester"]));
    ok(&cluster.synod(1, &["admin", "policy", "--approvals", "2"]));
    // The proposal id is the second word of "proposal <id> (...) needs 2 admin approvals".
    let proposal_of = |text: &str| -> String {
        assert!(text.contains("needs 2 admin approvals"), "{text}");
        text.split("proposal ").nth(1).unwrap().split_whitespace().next().unwrap().to_string()
    };
    let err = fails(&cluster.synod(1, &["key", "create", "fresh", "-t", "2"]));
    ok(&cluster.synod_as(1, &admin2, &["admin", "approve", &proposal_of(&err)]));
    synod_tests::wait_for("key fresh active", std::time::Duration::from_secs(60), || {
        let out = cluster.synod(1, &["key", "show", "fresh", "-o", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["status"] == "active").then_some(())
    });
    let err = cluster.sign(1, "fresh", b"mine", "fresh-1").unwrap_err();
    assert!(err.contains("has no signing policy yet"), "{err}");

    let policy = cluster.path("open.json");
    std::fs::write(&policy, "{}").unwrap();
    let out =
        ok(&cluster.synod(1, &["key", "policy", "set", "fresh", "--file", policy.to_str().unwrap(), "-o", "json"]));
    let proposal = proposal_of(&out);
    let err = cluster.sign(1, "fresh", b"mine", "fresh-2").unwrap_err();
    assert!(err.contains("has no signing policy yet"), "one admin alone set the policy: {err}");
    ok(&cluster.synod_as(1, &admin2, &["admin", "approve", &proposal]));
    let signed = cluster.sign(1, "fresh", b"mine", "fresh-3").unwrap();
    assert!(signed["signature"].is_string(), "{signed}");
}

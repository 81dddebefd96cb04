//! `synod request list` (`GET /v1/requests`) with real node processes: an
//! approver finds what waits for it without being told a request id, and
//! every operator's list holds exactly what it may read one by one.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use synod_tests::{fails, ok, Cluster};

/// How long a list read may take to show writes sent through another node (reads are local).
const CONVERGE: Duration = Duration::from_secs(30);

/// A 3-node cluster with two 2-of-3 keys: `vault` needs 2 approvals of alice and bob, and only
/// dave may request on it; `ops` needs none, and dave and erin may request on it. Returns the
/// operators' key files by name.
fn setup() -> (Cluster, BTreeMap<&'static str, PathBuf>) {
    let cluster = Cluster::start(3);
    ok(&cluster.synod(1, &["key", "create", "vault", "-t", "2"]));
    ok(&cluster.synod(1, &["key", "create", "ops", "-t", "2"]));
    let keys = cluster.add_operators(&[
        ("alice", "approver"),
        ("bob", "approver"),
        ("dave", "requester"),
        ("erin", "requester"),
    ]);
    let policies = [
        ("vault", r#"{"requesters": ["dave"], "approvers": ["alice", "bob"], "approvals_required": 2}"#),
        ("ops", r#"{"requesters": ["dave", "erin"]}"#),
    ];
    for (key, policy) in policies {
        let file = cluster.path(&format!("{key}-policy.json"));
        std::fs::write(&file, policy).unwrap();
        ok(&cluster.synod(1, &["key", "policy", "set", key, "--file", file.to_str().unwrap()]));
    }
    (cluster, keys)
}

/// `who` asks for a signature of a message under `key` with request id `id`; returns its status.
fn request(cluster: &Cluster, keys: &BTreeMap<&str, PathBuf>, who: &str, key: &str, id: &str) -> String {
    let msg = cluster.path(&format!("{id}.msg"));
    std::fs::write(&msg, format!("release {id}")).unwrap();
    let args = ["request", "sign", key, "--in", msg.to_str().unwrap(), "--request-id", id, "--purpose", "release"];
    let out = ok(&cluster.synod_as(2, &keys[who], &[&args[..], &["-o", "json"][..]].concat()));
    let info: Value = serde_json::from_str(&out).unwrap();
    info["status"].as_str().unwrap().to_string()
}

/// `synod request list -o json` at node 3 as the operator with key file `key`, parsed.
fn list(cluster: &Cluster, key: &std::path::Path, args: &[&str]) -> Value {
    let out = ok(&cluster.synod_as(3, key, &[&["request", "list", "-o", "json"][..], args].concat()));
    serde_json::from_str(&out).expect("request list -o json is JSON")
}

fn ids(page: &Value) -> Vec<String> {
    page["requests"].as_array().unwrap().iter().map(|r| r["request_id"].as_str().unwrap().to_string()).collect()
}

/// Waits until the list node 3 gives `key`'s operator for `args` holds exactly `expected`
/// (newest first); returns that page.
fn eventually(cluster: &Cluster, key: &std::path::Path, args: &[&str], expected: &[&str]) -> Value {
    let mut last = Vec::new();
    let found = wait_for_quietly(|| {
        let page = list(cluster, key, args);
        last = ids(&page);
        (last == expected).then_some(page)
    });
    found.unwrap_or_else(|| panic!("request list {args:?}: expected {expected:?}, last saw {last:?}"))
}

/// Polls `f` until it gives a value or [`CONVERGE`] passes.
fn wait_for_quietly<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + CONVERGE;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn request_list_approvers_find_what_awaits_them_and_each_operator_sees_its_scope() {
    // dave makes three vault requests (awaiting approval) and one ops request (signed at once);
    // erin makes one ops request. alice's `--mine-to-approve` shows the vault requests she has not
    // approved, bob's all three; each requester lists only its own; `--status signed` and
    // `--key` narrow the admin's list; the table names requesters; paging visits every request.
    let (cluster, keys) = setup();
    let admin = cluster.path("admin.pem");
    for id in ["v-1", "v-2", "v-3"] {
        assert_eq!(request(&cluster, &keys, "dave", "vault", id), "awaiting_approval");
    }
    ok(&cluster.synod_as(1, &keys["alice"], &["approve", "v-1", "--yes"]));
    request(&cluster, &keys, "dave", "ops", "o-dave");
    request(&cluster, &keys, "erin", "ops", "o-erin");

    // Approvers: what waits for them, newest first, and not what alice approved already.
    let waiting = eventually(&cluster, &keys["alice"], &["--mine-to-approve"], &["v-3", "v-2"]);
    assert!(waiting["next"].is_null(), "{waiting}");
    for request in waiting["requests"].as_array().unwrap() {
        assert_eq!(request["status"], "awaiting_approval", "{request}");
        assert_eq!(request["key_name"], "vault", "{request}");
    }
    eventually(&cluster, &keys["bob"], &["--mine-to-approve"], &["v-3", "v-2", "v-1"]);
    // Without the filter an approver sees the requests of keys that name it, and only those.
    eventually(&cluster, &keys["alice"], &[], &["v-3", "v-2", "v-1"]);

    // Requesters see only their own, whether or not they ask for `--mine`.
    eventually(&cluster, &keys["erin"], &[], &["o-erin"]);
    eventually(&cluster, &keys["erin"], &["--mine"], &["o-erin"]);
    eventually(&cluster, &keys["dave"], &["--mine"], &["o-dave", "v-3", "v-2", "v-1"]);
    // A requester is asked to approve nothing.
    eventually(&cluster, &keys["dave"], &["--mine-to-approve"], &[]);

    // An admin sees everything; status and key narrow it.
    eventually(&cluster, &admin, &["--status", "signed"], &["o-erin", "o-dave"]);
    eventually(&cluster, &admin, &["--status", "awaiting_approval", "--key", "vault"], &["v-3", "v-2", "v-1"]);
    eventually(&cluster, &admin, &["--key", "ops", "--mine"], &[]);
    let signed = list(&cluster, &keys["erin"], &["--status", "signed"]);
    assert_eq!(signed["requests"][0]["signature"].as_str().map(str::len), Some(128), "{signed}");

    // Paging: two at a time, following `next`, visits every request once, newest first.
    let mut seen = Vec::new();
    let mut before: Option<u64> = None;
    for _ in 0..5 {
        let before_arg = before.map(|b| b.to_string());
        let mut args = vec!["--limit", "2"];
        if let Some(b) = &before_arg {
            args.extend(["--before-index", b]);
        }
        let page = list(&cluster, &admin, &args);
        seen.extend(ids(&page));
        match page["next"].as_u64() {
            Some(next) => before = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, ["o-erin", "o-dave", "v-3", "v-2", "v-1"]);

    // The table: a header, requester names, RFC 3339 expiry, the approvals progress.
    let table = ok(&cluster.synod_as(3, &keys["alice"], &["request", "list", "--mine-to-approve"]));
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    for column in ["ID", "KEY", "STATUS", "FORMAT", "PURPOSE", "REQUESTER", "EXPIRES", "PROGRESS"] {
        assert!(header.contains(column), "{header}");
    }
    let row = lines.next().unwrap();
    assert!(row.starts_with("v-3 "), "{table}");
    let expires = waiting["requests"][0]["expires_at_ms"].as_u64().unwrap();
    let expires = synod_cli::display::time_ms(expires);
    for cell in ["vault", "awaiting_approval", "raw", "release", "dave", expires.as_str(), "0/2 from [alice, bob]"] {
        assert!(row.contains(cell), "{cell:?} missing from {row:?}");
    }

    // Bad filters are refused saying what to give.
    let err = fails(&cluster.synod_as(3, &keys["alice"], &["request", "list", "--limit", "0"]));
    assert!(err.contains("500"), "{err}");
}

#[test]
fn request_list_needs_an_operator_signature() {
    // A call with a client certificate but no read signature learns it must sign the read with
    // its operator key; `approver=` takes only `me`.
    let cluster = Cluster::start(1);
    let env = cluster.env(1);
    let get = |k: &str| env.iter().find(|(n, _)| *n == k).unwrap().1.clone();
    let curl = |path: &str| {
        let out = std::process::Command::new("curl")
            .args(["-s", "--cacert", &get("SYNOD_CACERT"), "--cert", &get("SYNOD_CLIENT_CERT")])
            .args(["--key", &get("SYNOD_CLIENT_KEY")])
            .arg(format!("{}{path}", get("SYNOD_ADDR")))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let answer = curl("/v1/requests?approver=me");
    assert!(answer.contains("SYNOD_OPERATOR_KEY"), "{answer}");
    let answer = curl("/v1/requests?approver=bob");
    assert!(answer.contains("the one value is `me`"), "{answer}");
    // Signed by the admin, the list answers (empty: nothing was asked yet).
    let page: Value = serde_json::from_str(&ok(&cluster.synod(1, &["request", "list", "-o", "json"]))).unwrap();
    assert_eq!(page["requests"], serde_json::json!([]));
}

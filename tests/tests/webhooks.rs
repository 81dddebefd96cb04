//! Webhook notifications with real node processes: the leader POSTs each event to
//! the webhooks that want it, signed with RFC 9421 by its node certificate's key;
//! a receiver here verifies every one against the cluster CA and drops duplicates
//! by idempotency id. A receiver that is down delays no signature and gets its
//! notification once it is back; one that accepts and never answers holds up
//! neither the signature nor another webhook's notifications.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest, Sha256};
use synod_tests::{ok, wait_for, Cluster};

/// How long a notification may take to arrive (a retry backs off up to 32 s by then).
const ARRIVAL: Duration = Duration::from_secs(120);

/// What a receiver got: verified notifications by path, duplicates, and refusals.
#[derive(Default)]
struct Received {
    /// (path, payload) of each verified notification, first copy only, in arrival order.
    notifications: Vec<(String, Value)>,
    ids: BTreeSet<String>,
    /// Notifications that came again (a new leader sends the last minute again) whose
    /// payload differs from the first copy under the same id: there must be none.
    resent_changed: Vec<(Value, Value)>,
    /// Why a notification was refused (a signature that did not verify, say).
    refused: Vec<String>,
    /// The newest notification as it came: its target URI, `Name: value` header lines and body.
    newest_raw: Option<(String, String, Vec<u8>)>,
}

struct Receiver {
    port: u16,
    /// The cluster CA (DER) the sending node's certificate must chain to.
    ca_der: Vec<u8>,
    got: Mutex<Received>,
}

impl Receiver {
    /// Serves on 127.0.0.1:`port` (0: any free port) on `rt`.
    fn start(rt: &tokio::runtime::Runtime, port: u16, ca_der: Vec<u8>) -> Arc<Receiver> {
        let listener = rt.block_on(tokio::net::TcpListener::bind(("127.0.0.1", port))).expect("the receiver binds");
        let port = listener.local_addr().unwrap().port();
        let receiver = Arc::new(Receiver { port, ca_der, got: Mutex::default() });
        let app = axum::Router::new().fallback(receive).with_state(receiver.clone());
        rt.spawn(async move { axum::serve(listener, app).await });
        receiver
    }

    fn url(port: u16, path: &str) -> String {
        format!("http://127.0.0.1:{port}{path}")
    }

    /// The verified notifications at `path`.
    fn at(&self, path: &str) -> Vec<Value> {
        let got = self.got.lock().unwrap();
        got.notifications.iter().filter(|(p, _)| p == path).map(|(_, v)| v.clone()).collect()
    }

    /// The payload at `path` of `event` for `request`, once it has arrived.
    fn wait(&self, path: &str, event: &str, request: &str) -> Value {
        wait_for(&format!("{event} for {request} at {path}"), ARRIVAL, || {
            self.at(path).into_iter().find(|n| n["event"] == event && n["request_id"] == request)
        })
    }

    fn refused(&self) -> Vec<String> {
        self.got.lock().unwrap().refused.clone()
    }
}

/// Verifies one notification as a receiver must, then keeps it unless its id was seen.
async fn receive(
    State(receiver): State<Arc<Receiver>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let mut got = receiver.got.lock().unwrap();
    let lines: Vec<String> = headers.iter().map(|(n, v)| format!("{n}: {}", v.to_str().unwrap_or_default())).collect();
    got.newest_raw = Some((Receiver::url(receiver.port, &uri.to_string()), lines.join("\n"), body.to_vec()));
    match verify(&receiver, &method, &uri, &headers, &body) {
        Ok(payload) => {
            let id = payload["id"].as_str().unwrap_or_default().to_string();
            if got.ids.insert(id.clone()) {
                got.notifications.push((uri.path().to_string(), payload));
            } else {
                let first = got.notifications.iter().find(|(_, p)| p["id"] == id.as_str()).map(|(_, p)| p.clone());
                if let Some(first) = first.filter(|first| *first != payload) {
                    got.resent_changed.push((first, payload));
                }
            }
            StatusCode::OK
        }
        Err(why) => {
            got.refused.push(why);
            StatusCode::UNAUTHORIZED
        }
    }
}

/// RFC 9421 as a receiver checks it: the certificate in `Synod-Node-Certificate` chains to
/// the cluster CA; its key's thumbprint is the `keyid`; the body matches `Content-Digest`; the
/// signature over the rebuilt base verifies with that key; the body's id is the `Idempotency-Key`.
fn verify(receiver: &Receiver, method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Result<Value, String> {
    let header = |name: &str| {
        headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string).ok_or(format!("no {name} header"))
    };
    let certificate = STANDARD.decode(header("synod-node-certificate")?).map_err(|e| e.to_string())?;
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let (_node, key) = synod_node::pki::verify_node_certificate(&receiver.ca_der, &certificate, now_ms)?;
    let digest = format!("sha-256=:{}:", STANDARD.encode(Sha256::digest(body)));
    if header("content-digest")? != digest {
        return Err("the body does not match Content-Digest".into());
    }
    let input = header("signature-input")?;
    let params = input.strip_prefix("synod=").ok_or("Signature-Input is not labelled synod")?;
    let keyid = format!("keyid=\"{}\"", synod_proto::keyfmt::jwk_thumbprint(&key));
    if !params.contains(&keyid) || !params.contains("alg=\"ed25519\"") {
        return Err(format!("Signature-Input {params} does not name the certificate's key and ed25519"));
    }
    let target = Receiver::url(receiver.port, &uri.to_string());
    let names = ["@method", "@target-uri", "content-type", "content-digest", "idempotency-key"];
    let values =
        [method.to_string(), target, header("content-type")?, header("content-digest")?, header("idempotency-key")?];
    let components: Vec<(&str, &str)> = names.into_iter().zip(values.iter().map(String::as_str)).collect();
    let base = synod_proto::format::http::signature_base(&components, params)?;
    let signature = header("signature")?;
    let encoded =
        signature.strip_prefix("synod=:").and_then(|s| s.strip_suffix(':')).ok_or("Signature is not synod=:…:")?;
    let signature: [u8; 64] =
        STANDARD.decode(encoded).ok().and_then(|b| b.try_into().ok()).ok_or("the signature is not 64 bytes")?;
    synod_proto::keyfmt::verify(&key, base.as_bytes(), &signature).map_err(|e| format!("signature: {e}"))?;
    let payload: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if payload["id"] != header("idempotency-key")? {
        return Err("the body's id is not the Idempotency-Key".into());
    }
    Ok(payload)
}

/// A 3-node cluster with operators alice and bob (approvers) and dave (requester). Returns
/// their key files and the cluster CA (DER).
fn setup() -> (Cluster, BTreeMap<&'static str, PathBuf>, Vec<u8>) {
    let cluster = Cluster::start(3);
    let keys = cluster.add_operators(&[("alice", "approver"), ("bob", "approver"), ("dave", "requester")]);
    let ca = synod_node::pki::certificate_der(&cluster.path("ca/ca.crt")).expect("the cluster CA");
    (cluster, keys, ca)
}

/// docs/examples/webhook_verify.py, the receivers' verifier, accepts the newest notification
/// as it came (its signature is recent, as the script wants), and refuses it with one byte of
/// the body changed.
fn python_verifier_accepts(cluster: &Cluster, receiver: &Receiver) {
    let (target, headers, body) = receiver.got.lock().unwrap().newest_raw.clone().expect("a notification came");
    let (headers_file, body_file) = (cluster.path("notification.headers"), cluster.path("notification.body"));
    std::fs::write(&headers_file, headers).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/webhook_verify.py");
    let run = |body: &[u8]| {
        std::fs::write(&body_file, body).unwrap();
        std::process::Command::new("python3")
            .arg(&script)
            .args(["--ca", cluster.path("ca/ca.crt").to_str().unwrap(), "--target-uri", &target])
            .args(["--headers", headers_file.to_str().unwrap(), "--body", body_file.to_str().unwrap()])
            .output()
            .expect("python3 runs")
    };
    let out = run(&body);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let payload: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(payload, serde_json::from_slice::<Value>(&body).unwrap());
    let mut changed = body.clone();
    changed[2] ^= 1;
    let out = run(&changed);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Content-Digest"));
}

/// `synod webhook status -o json` at the leader: this webhook's record there.
fn delivery_at_leader(cluster: &Cluster, name: &str) -> Value {
    let leader = cluster.wait_leader();
    let status: Value =
        serde_json::from_str(&ok(&cluster.synod(leader, &["webhook", "status", "-o", "json"]))).unwrap();
    let hooks = status["webhooks"].as_array().cloned().unwrap_or_default();
    hooks.into_iter().find(|h| h["name"] == name).map(|h| h["delivery"].clone()).unwrap_or(Value::Null)
}

#[test]
fn webhooks_the_awaited_approver_hears_of_a_request_its_approval_and_its_signature_signed_by_the_leader() {
    // A request that needs alice's approval reaches alice's webhook as awaiting_approval
    // (naming her), then approved and signed; one nobody approves in time as expired; one
    // she denies as denied and failed; one whose key is disabled as failed. bob, whom none
    // of them concerns, hears nothing.
    // Every notification verifies against the cluster CA, and `webhook list` and `status`
    // show the webhooks and their deliveries.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (cluster, keys, ca) = setup();
    let receiver = Receiver::start(&rt, 0, ca);
    ok(&cluster.synod(1, &["key", "create", "vault", "-t", "2"]));
    let policy = cluster.path("policy.json");
    std::fs::write(&policy, r#"{"requesters": ["dave"], "approvers": ["alice"], "approvals_required": 1}"#).unwrap();
    ok(&cluster.synod(1, &["key", "policy", "set", "vault", "--file", policy.to_str().unwrap()]));
    let alice_url = Receiver::url(receiver.port, "/alice?team=ops");
    ok(&cluster.synod(1, &["webhook", "set", "alice", "--url", &alice_url, "--operator", "alice"]));
    let bob_url = Receiver::url(receiver.port, "/bob");
    ok(&cluster.synod(2, &["webhook", "set", "bob", "--url", &bob_url, "--operator", "bob", "--key", "vault"]));
    let list = ok(&cluster.synod(3, &["webhook", "list"]));
    assert!(list.contains("alice") && list.contains("bob") && list.contains("http://127.0.0.1"), "{list}");
    assert!(!list.contains("/alice?team"), "the list shows the URL's origin only: {list}");

    let msg = cluster.path("rel-1.msg");
    std::fs::write(&msg, "release 1").unwrap();
    let args = ["request", "sign", "vault", "--in", msg.to_str().unwrap(), "--request-id", "rel-1", "-o", "json"];
    let out: Value = serde_json::from_str(&ok(&cluster.synod_as(1, &keys["dave"], &args))).unwrap();
    assert_eq!(out["status"], "awaiting_approval", "{out}");
    let awaiting = receiver.wait("/alice", "awaiting_approval", "rel-1");
    assert_eq!(awaiting["awaiting"], serde_json::json!(["alice"]), "{awaiting}");
    assert_eq!(awaiting["key"], "vault");
    assert_eq!(awaiting["requester"], "dave");
    assert_eq!(awaiting["progress"], "0/1 from [alice]");
    let text = awaiting["text"].as_str().unwrap();
    assert!(text.contains("`rel-1`") && text.contains("awaits approval from `alice`"), "{text}");

    ok(&cluster.synod_as(2, &keys["alice"], &["approve", "rel-1", "--yes"]));
    let approved = receiver.wait("/alice", "approved", "rel-1");
    assert_eq!(approved["progress"], "1/1 from [alice]", "{approved}");
    assert_eq!(approved["awaiting"], serde_json::json!([]));
    let signed = receiver.wait("/alice", "signed", "rel-1");
    assert!(signed["audit_seq"].as_u64() > approved["audit_seq"].as_u64(), "{signed}");
    let ids: BTreeSet<&str> = [&awaiting, &approved, &signed].iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 3, "each notification has its own idempotency id");
    assert!(ids.iter().all(|id| id.len() == 64));

    // A request nobody approves within the policy's window expires when the next entry is
    // applied after its deadline (a kv write here, made until the notification comes).
    let window =
        r#"{"requesters": ["dave"], "approvers": ["alice"], "approvals_required": 1, "approval_window_ms": 1500}"#;
    std::fs::write(&policy, window).unwrap();
    ok(&cluster.synod(1, &["key", "policy", "set", "vault", "--file", policy.to_str().unwrap()]));
    let args = ["request", "sign", "vault", "--in", msg.to_str().unwrap(), "--request-id", "rel-2", "-o", "json"];
    ok(&cluster.synod_as(1, &keys["dave"], &args));
    receiver.wait("/alice", "awaiting_approval", "rel-2");
    let expired = wait_for("rel-2 to expire and alice to hear of it", ARRIVAL, || {
        ok(&cluster.synod(1, &["kv", "put", "tick", "1"]));
        receiver.at("/alice").into_iter().find(|n| n["event"] == "expired" && n["request_id"] == "rel-2")
    });
    assert!(expired["text"].as_str().unwrap().contains("expired"), "{expired}");

    // A denial that fails a request is both denied and failed.
    let args = ["request", "sign", "vault", "--in", msg.to_str().unwrap(), "--request-id", "rel-3", "-o", "json"];
    ok(&cluster.synod_as(1, &keys["dave"], &args));
    receiver.wait("/alice", "awaiting_approval", "rel-3");
    ok(&cluster.synod_as(3, &keys["alice"], &["request", "deny", "rel-3", "--reason", "wrong build", "--yes"]));
    let denied = receiver.wait("/alice", "denied", "rel-3");
    assert!(denied["text"].as_str().unwrap().contains("denied by `alice`: `wrong build`"), "{denied}");
    let failed = receiver.wait("/alice", "failed", "rel-3");
    assert_eq!(failed["audit_seq"], denied["audit_seq"], "{failed}");

    // A request failed by its key's disabling (no record of the request's own) fails too.
    let args = ["request", "sign", "vault", "--in", msg.to_str().unwrap(), "--request-id", "rel-4", "-o", "json"];
    ok(&cluster.synod_as(1, &keys["dave"], &args));
    receiver.wait("/alice", "awaiting_approval", "rel-4");
    ok(&cluster.synod(2, &["key", "disable", "vault"]));
    let failed = receiver.wait("/alice", "failed", "rel-4");
    assert!(failed["text"].as_str().unwrap().contains("failed: "), "{failed}");

    python_verifier_accepts(&cluster, &receiver);
    assert!(receiver.at("/bob").is_empty(), "bob's webhook heard of a request that does not concern him");
    // A notification sent again (a new leader sends the last minute again) keeps its id
    // and its payload, so the receiver's dropping it loses nothing.
    let changed = receiver.got.lock().unwrap().resent_changed.clone();
    assert!(changed.is_empty(), "notifications sent again with another payload: {changed:?}");
    assert!(receiver.refused().is_empty(), "refused notifications: {:?}", receiver.refused());
    let delivery = wait_for("the leader's record of alice's deliveries", ARRIVAL, || {
        let d = delivery_at_leader(&cluster, "alice");
        (d["delivered"].as_u64() >= Some(3)).then_some(d)
    });
    assert!(delivery["last_success_ms"].as_u64().is_some(), "{delivery}");
    let table = ok(&cluster.synod(cluster.wait_leader(), &["webhook", "status"]));
    assert!(table.contains("sends (leader)") && table.contains("alice"), "{table}");

    ok(&cluster.synod(1, &["webhook", "remove", "bob"]));
    let list: Value = serde_json::from_str(&ok(&cluster.synod(2, &["webhook", "list", "-o", "json"]))).unwrap();
    let configured: Vec<&Value> =
        list["webhooks"].as_array().unwrap().iter().filter(|h| h["configured"] == true).collect();
    assert_eq!(configured.len(), 1, "{list}");
}

/// A receiver that accepts connections and never answers: its sockets stay open, unread.
fn silent_receiver() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("the silent receiver binds");
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    port
}

#[test]
fn webhooks_a_receiver_that_is_down_delays_no_signature_and_gets_the_notification_when_back() {
    // The webhook's receiver is not listening, and another webhook's accepts connections
    // and never answers (its attempts hang until their timeout): the requests are signed all
    // the same (the CLI waits for their signatures as usual) while the leader records failed
    // attempts. Once the receiver listens on the same port, the retried notification
    // arrives, verified, once, whatever the silent one holds.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (cluster, _keys, ca) = setup();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    ok(&cluster.synod(1, &["key", "create", "open", "-t", "2", "--open-policy"]));
    ok(&cluster.synod(1, &["webhook", "set", "late", "--url", &Receiver::url(port, "/late"), "--event", "signed"]));
    // The silent one's URL comes from a file, as a chat's secret URL would.
    let url_file = cluster.path("silent.url");
    std::fs::write(&url_file, format!("{}\n", Receiver::url(silent_receiver(), "/silent"))).unwrap();
    ok(&cluster.synod(1, &["webhook", "set", "silent", "--url-file", url_file.to_str().unwrap()]));
    for n in 0..4 {
        let id = format!("busy-{n}");
        let signed = cluster.sign(2, "open", id.as_bytes(), &id).expect("signed while a receiver hangs");
        assert_eq!(signed["status"], "signed", "{signed}");
    }
    let signed = cluster.sign(2, "open", b"nightly build", "nightly-1").expect("signed while the receiver is down");
    assert_eq!(signed["status"], "signed", "{signed}");
    let failed = wait_for("a failed delivery attempt at the leader", ARRIVAL, || {
        let d = delivery_at_leader(&cluster, "late");
        (d["failed_attempts"].as_u64() >= Some(1)).then_some(d)
    });
    assert!(failed["last_error"].as_str().is_some_and(|e| !e.contains("/late")), "{failed}");
    assert_eq!(failed["delivered"], 0, "{failed}");

    // The silent webhook wants all five signatures and holds its attempts for their
    // timeout; the late one still gets all of its own, each once.
    let receiver = Receiver::start(&rt, port, ca);
    let note = receiver.wait("/late", "signed", "nightly-1");
    assert_eq!(note["key"], "open", "{note}");
    for n in 0..4 {
        receiver.wait("/late", "signed", &format!("busy-{n}"));
    }
    assert!(receiver.refused().is_empty(), "refused notifications: {:?}", receiver.refused());
    let events: BTreeSet<String> = receiver.at("/late").iter().map(|n| n["event"].to_string()).collect();
    assert_eq!(events.len(), 1, "only the signed event was asked for: {events:?}");
    assert_eq!(receiver.at("/late").len(), 5);
    let silent = delivery_at_leader(&cluster, "silent");
    assert_eq!(silent["delivered"], 0, "the silent receiver never answers: {silent}");
}

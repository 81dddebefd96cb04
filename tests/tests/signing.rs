//! Threshold keys and signing with real node processes: DKG, signatures that
//! standard tools verify, nodes down or lying, a leader killed mid-signature,
//! and nonces that never serve two signing packages.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use synod_tests::{fails, ok, wait_for, Cluster, Options};

/// Creates a key and returns its JSON description.
fn create_key(cluster: &Cluster, via: u64, name: &str, threshold: u16) -> Value {
    let out =
        ok(&cluster.synod(via, &["key", "create", name, "-t", &threshold.to_string(), "--open-policy", "-o", "json"]));
    let key: Value = serde_json::from_str(&out).expect("key JSON");
    assert_eq!(key["status"], "active", "{key}");
    key
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Checks a signature with OpenSSL, Python's `cryptography` and `synod verify`.
fn verify_everywhere(cluster: &Cluster, key: &str, message: &[u8], request: &Value) {
    let dir = cluster.path("verify");
    std::fs::create_dir_all(&dir).unwrap();
    let signature = hex_decode(request["signature"].as_str().expect("a signature"));
    let via = cluster.nodes.values().find(|n| n.is_running()).expect("a running node").id;
    let pem = ok(&cluster.synod(via, &["key", "show", key, "--format", "pem"]));
    let pem_path = write(&dir, "pub.pem", pem.as_bytes());
    let msg_path = write(&dir, "msg", message);
    let sig_path = write(&dir, "sig", &signature);

    let openssl = Command::new("openssl")
        .args(["pkeyutl", "-verify", "-pubin", "-rawin", "-inkey"])
        .arg(&pem_path)
        .arg("-in")
        .arg(&msg_path)
        .arg("-sigfile")
        .arg(&sig_path)
        .output()
        .expect("openssl runs");
    assert!(openssl.status.success(), "openssl refused: {}", String::from_utf8_lossy(&openssl.stdout));

    let python = Command::new("python3")
        .arg("-c")
        .arg(
            "import sys\n\
             from cryptography.hazmat.primitives.serialization import load_pem_public_key\n\
             key = load_pem_public_key(open(sys.argv[1], 'rb').read())\n\
             key.verify(open(sys.argv[3], 'rb').read(), open(sys.argv[2], 'rb').read())\n\
             print('ok')",
        )
        .arg(&pem_path)
        .arg(&msg_path)
        .arg(&sig_path)
        .output()
        .expect("python3 runs");
    assert!(python.status.success(), "python cryptography refused: {}", String::from_utf8_lossy(&python.stderr));

    let args = ["verify", "--public-key", pem_path.to_str().unwrap(), "--in", msg_path.to_str().unwrap()];
    ok(&cluster.synod(via, &[&args[..], &["--signature", sig_path.to_str().unwrap()]].concat()));
}

fn hex_decode(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
}

/// Every "released signature share" line of every node's log: no nonce
/// commitment may appear with two different signing packages.
fn assert_nonces_single_use(cluster: &Cluster, ids: impl Iterator<Item = u64>) -> usize {
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut lines = 0;
    for id in ids {
        for line in cluster.nodes[&id].log_text().lines().filter(|l| l.contains("released signature share")) {
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(&format!("{name}=")))
                    .unwrap_or_else(|| panic!("no {name} in {line}"))
                    .to_string()
            };
            seen.entry(format!("{id}/{}", field("commitment"))).or_default().insert(field("package_sha256"));
            lines += 1;
        }
    }
    for (commitment, packages) in &seen {
        assert_eq!(packages.len(), 1, "nonce {commitment} served {} signing packages", packages.len());
    }
    lines
}

fn signs_and_verifies(n: u64, t: u16) {
    let cluster = Cluster::start(n);
    let key = create_key(&cluster, 1, "release", t);
    assert_eq!(key["participants"].as_array().unwrap().len() as u64, n);
    for (i, via) in (1..=n).take(3).enumerate() {
        let message = format!("release artifact {i} of a {t}-of-{n} key").into_bytes();
        let request = cluster.sign(via, "release", &message, &format!("rel-{i}")).expect("signed");
        assert_eq!(request["signers"].as_array().unwrap().len(), usize::from(t));
        verify_everywhere(&cluster, "release", &message, &request);
    }
    assert!(assert_nonces_single_use(&cluster, 1..=n) >= 3 * usize::from(t));
}

#[test]
fn signing_2_of_3_verifies_with_openssl_and_python() {
    // A key made by DKG on three nodes signs; OpenSSL, Python and synod verify accept every signature.
    signs_and_verifies(3, 2);
}

#[test]
fn signing_3_of_5_verifies_with_openssl_and_python() {
    // The same for three of five.
    signs_and_verifies(5, 3);
}

#[test]
fn signing_5_of_7_verifies_with_openssl_and_python() {
    // The same for five of seven.
    signs_and_verifies(7, 5);
}

#[test]
fn signing_request_id_is_idempotent_and_bound_to_one_message() {
    // A retry with the same request id returns the same signature; another message under that id is refused;
    // a message over 64 KiB is refused with advice; key formats print for every standard.
    let cluster = Cluster::start(3);
    create_key(&cluster, 1, "tokens", 2);
    let first = cluster.sign(2, "tokens", b"mint 5", "mint-1").unwrap();
    let again = cluster.sign(3, "tokens", b"mint 5", "mint-1").unwrap();
    assert_eq!(first["signature"], again["signature"]);
    let err = cluster.sign(1, "tokens", b"mint 500", "mint-1").unwrap_err();
    assert!(err.contains("one request id, one message"), "{err}");
    let big = cluster.path("big");
    std::fs::write(&big, vec![0u8; 64 * 1024 + 1]).unwrap();
    let err = fails(&cluster.synod(1, &["sign", "tokens", "--in", big.to_str().unwrap()]));
    assert!(err.contains("at most 65536 bytes") && err.contains("digest"), "{err}");
    let err = fails(&cluster.synod(1, &["sign", "nope", "--in", big.to_str().unwrap()]));
    assert!(err.contains("at most"), "{err}");
    for format in ["hex", "pem", "jwk", "openssh"] {
        let out = ok(&cluster.synod(1, &["key", "show", "tokens", "--format", format]));
        assert!(!out.trim().is_empty());
    }
    let err = cluster.sign(1, "missing-key", b"x", "m-2").unwrap_err();
    assert!(err.contains("no key named"), "{err}");
    let err = fails(&cluster.synod(1, &["key", "create", "tokens"]));
    assert!(err.contains("already exists"), "{err}");
}

#[test]
fn signing_survives_n_minus_t_down_and_fails_cleanly_below_t() {
    // 4-of-5: with one signer killed the key still signs; with two killed (Raft still has a
    // quorum) the request fails within seconds with an error naming the silent nodes, and
    // no signature exists for it.
    let mut cluster = Cluster::start(5);
    create_key(&cluster, 1, "treasury", 4);
    let leader = cluster.wait_leader();
    let mut others = (1..=5).filter(|id| *id != leader);
    let (first, second) = (others.next().unwrap(), others.next().unwrap());
    cluster.kill(first);
    let request = cluster.sign(leader, "treasury", b"pay 1", "pay-1").expect("signs with n - t down");
    verify_everywhere(&cluster, "treasury", b"pay 1", &request);
    cluster.kill(second);
    let started = Instant::now();
    let err = cluster.sign(leader, "treasury", b"pay 2", "pay-2").unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(20), "failing took {:?}", started.elapsed());
    assert!(err.contains("only 3 of the 4 signers needed"), "{err}");
    let show = ok(&cluster.synod(leader, &["request", "show", "pay-2", "-o", "json"]));
    let show: Value = serde_json::from_str(&show).unwrap();
    assert_eq!(show["status"], "failed");
    assert!(show["signature"].is_null());
}

#[test]
fn signing_corrupt_share_names_the_culprit_and_still_signs() {
    // A node that sends invalid signature shares (a test-build fault) is named as the culprit
    // and left out; the request still gets a valid signature.
    let options = Options { node_faults: [(2, "corrupt-shares".to_string())].into(), ..Options::default() };
    let cluster = Cluster::start_with(3, options);
    create_key(&cluster, 1, "webhooks", 2);
    let mut caught = None;
    for i in 0..30 {
        let message = format!("event {i}").into_bytes();
        let request = cluster.sign(1, "webhooks", &message, &format!("ev-{i}")).expect("signed despite a liar");
        verify_everywhere(&cluster, "webhooks", &message, &request);
        if request["culprits"].as_array().is_some_and(|c| !c.is_empty()) {
            caught = Some(request);
            break;
        }
    }
    let request = caught.expect("node 2 was chosen as a signer and caught");
    assert_eq!(request["culprits"], serde_json::json!([2]));
    assert!(!request["signers"].as_array().unwrap().contains(&serde_json::json!(2)));
    assert!(request["sessions"].as_u64().unwrap() >= 2);
    assert_nonces_single_use(&cluster, 1..=3);
}

#[test]
fn signing_dkg_liar_is_named_and_the_key_is_made_without_it() {
    // A participant that sends the others round-2 packages that do not match its round-1
    // commitments (a test-build fault) makes the generation abort, and the error names it; the
    // same name is free again, and the key made without that node signs.
    let options = Options { node_faults: [(2, "corrupt-dkg-shares".to_string())].into(), ..Options::default() };
    let cluster = Cluster::start_with(3, options);
    let err = fails(&cluster.synod(1, &["key", "create", "payments", "-t", "2"]));
    assert!(err.contains("key generation aborted") && err.contains("(culprit: node 2)"), "{err}");
    assert!(err.contains("--participants 1,3"), "the error says how to go on: {err}");
    let aborted: Value = serde_json::from_str(&ok(&cluster.synod(3, &["key", "list", "-o", "json"]))).unwrap();
    assert!(aborted.to_string().contains("aborted"), "{aborted}");
    let out = ok(&cluster
        .synod(1, &["key", "create", "payments", "-t", "2", "--participants", "1,3", "--open-policy", "-o", "json"]));
    let key: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(key["status"], "active", "{key}");
    assert_eq!(key["participants"], serde_json::json!([1, 3]));
    let request = cluster.sign(2, "payments", b"after the liar", "pay-1").expect("signed without node 2");
    verify_everywhere(&cluster, "payments", b"after the liar", &request);
}

#[test]
fn signing_leader_killed_mid_signature_completes_exactly_once() {
    // Every coordinator pauses 3 s between round 1 and round 2 (once per process). The leader is
    // kill -9ed in that pause; the new leader runs a fresh session and the request completes once:
    // every node holds the same signature, and a retry returns it.
    let options = Options { faults: Some("pause-between-rounds".into()), ..Options::default() };
    let mut cluster = Cluster::start_with(3, options);
    create_key(&cluster, 1, "releases", 2);
    let leader = cluster.wait_leader();
    let via = (1..=3).find(|id| *id != leader).unwrap();
    let file = cluster.path("mid-msg");
    std::fs::write(&file, b"release 1.0").unwrap();
    let mut child = Command::new(synod_tests::synod_bin())
        .args(["sign", "releases", "--in", file.to_str().unwrap(), "--request-id", "rel-1.0", "-o", "json"])
        .envs(cluster.env(via))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the leader to start a session", Duration::from_secs(20), || {
        cluster.nodes[&leader].log_text().contains("pause-between-rounds").then_some(())
    });
    cluster.kill(leader);
    let out = wait_for("the sign command to finish", Duration::from_secs(60), || child.try_wait().unwrap());
    let mut stdout = String::new();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(out.success(), "sign failed: {stderr}");
    let request: Value = serde_json::from_str(&stdout).unwrap();
    verify_everywhere(&cluster, "releases", b"release 1.0", &request);

    cluster.start_node(leader);
    for id in 1..=3 {
        let signature = wait_for("every node to hold the signature", Duration::from_secs(30), || {
            let out = cluster.synod(id, &["request", "show", "rel-1.0", "-o", "json"]);
            let v: Value = serde_json::from_slice(&out.stdout).ok()?;
            (v["status"] == "signed").then(|| v["signature"].clone())
        });
        assert_eq!(signature, request["signature"], "node {id} holds another signature");
    }
    let retry = cluster.sign(leader, "releases", b"release 1.0", "rel-1.0").unwrap();
    assert_eq!(retry["signature"], request["signature"]);
    // More signing after the leader change, with retries of the same ids: still no nonce reuse.
    for i in 0..10 {
        let message = format!("patch {i}").into_bytes();
        cluster.sign(1 + i % 3, "releases", &message, &format!("patch-{i}")).unwrap();
        cluster.sign(1 + (i + 1) % 3, "releases", &message, &format!("patch-{i}")).unwrap();
    }
    assert!(assert_nonces_single_use(&cluster, 1..=3) >= 20);
}

#[test]
fn signing_dkg_needs_every_participant_and_says_so() {
    // Key generation with a participant down fails at once, naming it; nothing is created.
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_leader();
    let down = (1..=3).find(|id| *id != leader).unwrap();
    cluster.kill(down);
    let err = fails(&cluster.synod(leader, &["key", "create", "later", "-t", "2"]));
    assert!(err.contains("needs all 3 participants up") && err.contains(&format!("node {down}")), "{err}");
    let list = ok(&cluster.synod(leader, &["key", "list", "-o", "json"]));
    assert!(!list.contains("later"), "{list}");
}

#[test]
fn signing_imported_key_keeps_its_public_key() {
    // An existing Ed25519 key (made by OpenSSL) is split on the operator's machine and imported;
    // the cluster's signatures verify under the original public key.
    let cluster = Cluster::start(3);
    let key_file = cluster.path("legacy.pem");
    let gen = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&key_file)
        .output()
        .expect("openssl runs");
    assert!(gen.status.success());
    let pub_file = cluster.path("legacy.pub.pem");
    let export = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key_file)
        .arg("-out")
        .arg(&pub_file)
        .output()
        .unwrap();
    assert!(export.status.success());
    let key_file = key_file.to_str().unwrap();
    let out = ok(&cluster
        .synod(1, &["key", "import", "legacy", "--key-file", key_file, "-t", "2", "--open-policy", "-o", "json"]));
    let key: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(key["origin"], "imported");
    assert_eq!(key["status"], "active");
    let request = cluster.sign(2, "legacy", b"migrated", "mig-1").unwrap();
    let sig = cluster.path("mig.sig");
    std::fs::write(&sig, hex_decode(request["signature"].as_str().unwrap())).unwrap();
    let msg = cluster.path("mig.msg");
    std::fs::write(&msg, b"migrated").unwrap();
    let openssl = Command::new("openssl")
        .args(["pkeyutl", "-verify", "-pubin", "-rawin", "-inkey"])
        .arg(&pub_file)
        .arg("-in")
        .arg(&msg)
        .arg("-sigfile")
        .arg(&sig)
        .output()
        .unwrap();
    assert!(openssl.status.success(), "the original public key does not verify the cluster's signature");
}

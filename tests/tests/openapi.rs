//! The API's OpenAPI document and the recipe for clients in other languages, against real
//! nodes: the document a node serves validates as OpenAPI 3.1 (`openapi-spec-validator`), and
//! docs/examples/sign.py, written from docs/api.md with Python's `cryptography` and `requests`
//! only, gets a signature that verifies.

use std::path::{Path, PathBuf};
use std::process::Command;

use ed25519_dalek::{Signature, VerifyingKey};
use serde_json::Value;
use synod_tests::{ok, tls, Cluster};

/// `GET path` on node `id` over TLS, with the test client certificate or none; the status
/// code and the body.
async fn get(cluster: &Cluster, id: u64, path: &str, with_certificate: bool) -> (u16, String) {
    let connector = if with_certificate { tls::authenticated(cluster) } else { tls::anonymous(cluster) };
    let request = format!("GET {path} HTTP/1.1\r\nHost: synod\r\nConnection: close\r\n\r\n");
    let answer = tls::exchange(&connector, &cluster.nodes[&id].api_addr, request.as_bytes()).await;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    (status, body.to_string())
}

fn repository_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

#[tokio::test(flavor = "multi_thread")]
async fn openapi_document_served_by_a_node_validates() {
    // A node serves its API's document to any client certificate (none: 401), the same
    // document its router was built from, and openapi-spec-validator accepts it as OpenAPI 3.1.
    let cluster = Cluster::start(1);
    let (status, body) = get(&cluster, 1, "/v1/sys/openapi", true).await;
    assert_eq!(status, 200, "GET /v1/sys/openapi: {body}");
    let served: Value = serde_json::from_str(&body).expect("the document is JSON");
    let built = serde_json::to_value(synod_node::api::openapi_document()).expect("the document serialises");
    assert_eq!(served, built, "the node serves the document of its own routes");
    assert_eq!(served["openapi"], "3.1.0");
    for path in ["/v1/sys/health", "/v1/sign", "/v1/requests/{id}", "/v1/kv/{key}", "/v1/sys/openapi"] {
        assert!(served["paths"].get(path).is_some(), "the document lists {path}");
    }
    let (status, _) = get(&cluster, 1, "/v1/sys/openapi", false).await;
    assert_eq!(status, 401, "without a client certificate the document is refused");

    let file = cluster.path("openapi.json");
    std::fs::write(&file, &body).unwrap();
    let out = Command::new("python3")
        .args(["-m", "openapi_spec_validator", "--schema", "3.1", "--validation-errors", "all"])
        .arg(&file)
        .output()
        .expect("python3 runs; scripts/test installs openapi-spec-validator");
    assert!(
        out.status.success(),
        "openapi-spec-validator refuses the document:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn openapi_python_example_signs_and_verifies() {
    // docs/examples/sign.py builds and signs a sign_request with the admin's operator key,
    // submits it to a follower (which forwards it to the leader) with the test client
    // certificate and no wait, then waits for the result with signed reads of the request, reads
    // it back as its requester and verifies it; the signature it prints verifies here too, under
    // the key's public key as the cluster reports it.
    let cluster = Cluster::start(3);
    let leader = cluster.wait_leader();
    let follower = *cluster.nodes.keys().find(|id| **id != leader).expect("a follower");
    let key: Value = serde_json::from_str(&ok(
        &cluster.synod(leader, &["key", "create", "py", "-t", "2", "--open-policy", "-o", "json"])
    ))
    .expect("key JSON");
    assert_eq!(key["status"], "active", "{key}");

    let message = "release 1.0, signed from Python";
    let out = Command::new("python3")
        .arg(repository_file("docs/examples/sign.py"))
        .args(["--key", "py", "--message", message, "--request-id", "python-1", "--wait-ms", "0"])
        .envs(cluster.env(follower))
        .output()
        .expect("python3 runs; scripts/test installs cryptography and requests");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "sign.py failed:\n{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let printed: Value = serde_json::from_str(stdout.trim()).expect("sign.py prints one JSON object");
    assert_eq!(printed["request_id"], "python-1");
    assert_eq!(printed["public_key"], key["public_key"], "the key's public key");
    assert_eq!(printed["message"], hex::encode(message));

    let public_key: [u8; 32] =
        hex::decode(key["public_key"].as_str().expect("a public key")).expect("hex").try_into().expect("32 bytes");
    let signature: [u8; 64] =
        hex::decode(printed["signature"].as_str().expect("a signature")).expect("hex").try_into().expect("64 bytes");
    VerifyingKey::from_bytes(&public_key)
        .expect("an Ed25519 key")
        .verify_strict(message.as_bytes(), &Signature::from_bytes(&signature))
        .expect("the signature sign.py printed verifies");

    // The cluster agrees: the request is signed with that signature.
    let request: Value =
        serde_json::from_str(&ok(&cluster.synod(leader, &["request", "show", "python-1", "-o", "json"])))
            .expect("request JSON");
    assert_eq!(request["signature"], printed["signature"]);
}

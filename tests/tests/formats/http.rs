//! RFC 9421 HTTP message signatures made by a real cluster and checked by the Python
//! `http-message-signatures` package on a `requests` request.

use serde_json::Value;
use synod_tests::{fails, ok};

use super::{cluster_with_key, tool, write};

/// Verifies a request built from argv (method, URI, body file, the signer's headers
/// file, the key's PEM, the expected keyid, then NAME:VALUE headers) with
/// `HTTPMessageVerifier`, and checks the body against Content-Digest by hand too.
/// Prints `digest matches|differs` and `verified ...` or `refused ...`; exits 0
/// only when both hold.
const VERIFIER: &str = r#"
import sys, base64, hashlib, requests
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from http_message_signatures import HTTPMessageVerifier, HTTPSignatureKeyResolver, algorithms

method, uri, body_path, headers_path, pem_path, keyid = sys.argv[1:7]
body = open(body_path, "rb").read()
headers = {}
for header in sys.argv[7:]:
    name, value = header.split(":", 1)
    headers[name.strip()] = value.strip()
sent = dict(line.split(": ", 1) for line in open(headers_path).read().splitlines() if line)
headers.update(sent)
request = requests.Request(method, uri, headers=headers, data=body).prepare()

algorithm, digest = sent["Content-Digest"].split("=", 1)
matches = algorithm == "sha-256" and base64.b64decode(digest.strip(":")) == hashlib.sha256(body).digest()
print("digest", "matches" if matches else "differs")

class ClusterKey(HTTPSignatureKeyResolver):
    def resolve_public_key(self, key_id):
        if key_id != keyid:
            return None
        return load_pem_public_key(open(pem_path, "rb").read())

verifier = HTTPMessageVerifier(signature_algorithm=algorithms.ED25519, key_resolver=ClusterKey())
try:
    results = verifier.verify(request, body=body, require_components=["@method", "@target-uri", "content-digest"])
except Exception as e:
    print("refused", type(e).__name__, e)
    sys.exit(1)
print("verified", results[0].label, results[0].parameters["keyid"], sorted(results[0].covered_components))
sys.exit(0 if matches else 1)
"#;

#[test]
fn http_signature_verifies_with_http_message_signatures() {
    // A webhook's signature headers made by the cluster verify with http-message-signatures
    // on the same request; a changed body (Content-Digest mismatch, checked by the library
    // and by hand) or a changed covered header is refused, by it and by `synod verify`.
    let cluster = cluster_with_key("hooks");
    let body = br#"{"event":"deploy","id":42}"#;
    let body_path = write(&cluster, "body.json", body);
    let body_file = body_path.to_str().unwrap();
    let pem = ok(&cluster.synod(1, &["key", "show", "hooks", "--format", "pem"]));
    let pem_path = write(&cluster, "hooks.pem", pem.as_bytes());
    let pem_file = pem_path.to_str().unwrap();
    let jwks: Value =
        serde_json::from_str(&ok(&cluster.synod(1, &["key", "show", "hooks", "--format", "jwks"]))).unwrap();
    let kid = jwks["keys"][0]["kid"].as_str().unwrap().to_string();
    let uri = "https://hooks.example.com/deliver?team=ops";
    let request = ["--method", "POST", "--target-uri", uri, "--header", "Content-Type: application/json"];
    let request = [&request[..], &["--header", "X-Delivery: 42"]].concat();

    let headers_path = cluster.path("signature.txt");
    let headers_file = headers_path.to_str().unwrap();
    let mut sign = vec!["sign", "hooks", "--format", "http-signature", "--in", body_file, "-o", "json"];
    sign.extend(&request);
    sign.extend(["--out", headers_file]);
    let signed: Value = serde_json::from_str(&ok(&cluster.synod(1, &sign))).unwrap();
    let headers = std::fs::read_to_string(&headers_path).unwrap();
    assert_eq!(
        headers,
        format!(
            "Content-Digest: {}\nSignature-Input: {}\nSignature: {}\n",
            signed["content_digest"].as_str().unwrap(),
            signed["signature_input"].as_str().unwrap(),
            signed["signature"].as_str().unwrap()
        )
    );
    let input = signed["signature_input"].as_str().unwrap();
    assert!(
        input.starts_with(r#"sig1=("@method" "@target-uri" "content-digest" "content-type" "x-delivery");created="#),
        "{input}"
    );
    assert!(input.ends_with(&format!(r#";keyid="{kid}";alg="ed25519""#)), "{input}");

    let verify = |body: &str, extra: &[&str]| {
        let mut args = vec!["-c", VERIFIER, "POST", uri, body, headers_file, pem_file, kid.as_str()];
        args.extend(extra);
        tool("python3", &args, None)
    };
    let (verified, said) = verify(body_file, &["Content-Type: application/json", "X-Delivery: 42"]);
    assert!(verified && said.contains("digest matches") && said.contains("verified sig1"), "{said}");

    // Nodes read the request line and the body's digest from the signature base.
    let request_id = signed["request_id"].as_str().unwrap();
    let shown: Value =
        serde_json::from_str(&ok(&cluster.synod(3, &["request", "show", request_id, "-o", "json"]))).unwrap();
    assert_eq!(shown["format"]["format"], "http-signature", "{shown}");
    assert_eq!(shown["format"]["summary"], format!("POST {uri}"), "{shown}");
    assert_eq!(shown["format"]["artifact_hash"], signed["artifact_hash"], "{shown}");
    use sha2::Digest;
    let hash = format!("sha256:{}", hex::encode(sha2::Sha256::digest(body)));
    assert_eq!(signed["artifact_hash"], hash.as_str(), "{signed}");

    let mut check = vec!["verify", "--format", "http-signature", "--key", "hooks", "--signature", headers_file];
    check.extend(&request);
    ok(&cluster.synod(1, &[&check[..], &["--in", body_file]].concat()));

    // Another body: the digest differs, and the library says so too.
    let changed = write(&cluster, "changed.json", br#"{"event":"deploy","id":43}"#);
    let changed_file = changed.to_str().unwrap();
    let (verified, said) = verify(changed_file, &["Content-Type: application/json", "X-Delivery: 42"]);
    assert!(!verified && said.contains("digest differs") && said.contains("refused"), "{said}");
    let refused = fails(&cluster.synod(1, &[&check[..], &["--in", changed_file]].concat()));
    assert!(refused.contains("does not match the signed Content-Digest"), "{refused}");

    // Another value of a covered header: the signature fails.
    let (verified, said) = verify(body_file, &["Content-Type: application/json", "X-Delivery: 43"]);
    assert!(!verified && said.contains("digest matches") && said.contains("refused"), "{said}");
    let mut other = vec!["verify", "--format", "http-signature", "--key", "hooks", "--signature", headers_file];
    other.extend(["--method", "POST", "--target-uri", uri, "--header", "Content-Type: application/json"]);
    other.extend(["--header", "X-Delivery: 43", "--in", body_file]);
    let refused = fails(&cluster.synod(1, &other));
    assert!(refused.contains("does not verify"), "{refused}");

    // A header the signer computes itself cannot be given.
    let mut refused_sign = vec!["sign", "hooks", "--format", "http-signature", "--in", body_file];
    refused_sign.extend(["--method", "POST", "--target-uri", uri, "--header", "Content-Digest: sha-256=:AA==:"]);
    let refused = fails(&cluster.synod(1, &refused_sign));
    assert!(refused.contains("computed by the signer"), "{refused}");
}

//! JWS and JWT tokens made by a real cluster and checked by PyJWT and jwcrypto.

use serde_json::Value;
use sha2::Digest;
use synod_tests::{fails, ok};

use super::{cluster_with_key, tool, write};

/// PyJWT with the key's SPKI PEM: prints the verified subject, or the exception's class.
const PYJWT: &str = r#"
import sys, jwt
token = open(sys.argv[1]).read().strip()
try:
    claims = jwt.decode(token, open(sys.argv[2]).read(), algorithms=["EdDSA"], audience="deployers")
except Exception as e:
    print(type(e).__name__, e)
    sys.exit(1)
print("sub", claims["sub"])
"#;

/// jwcrypto with the key's JWKS (it picks the key by the token's kid): prints the
/// verified subject, or the exception's class.
const JWCRYPTO: &str = r#"
import sys, json
from jwcrypto import jwk, jwt
token = open(sys.argv[1]).read().strip()
keys = jwk.JWKSet.from_json(open(sys.argv[2]).read())
try:
    verified = jwt.JWT(jwt=token, key=keys, algs=[sys.argv[3]])
except Exception as e:
    # Through a set, jwcrypto says only that no key verified; the key the kid names says why.
    print(type(e).__name__, e)
    kid = jwt.JWT(jwt=token).token.jose_header["kid"]
    try:
        jwt.JWT(jwt=token, key=keys.get_key(kid), algs=[sys.argv[3]])
    except Exception as e:
        print(type(e).__name__, e)
    sys.exit(1)
print("sub", json.loads(verified.claims)["sub"])
"#;

/// Writes a copy of a token whose payload says deploy-43 where it said deploy-42,
/// with the original header and signature.
const TAMPER: &str = r#"
import sys, base64
header, payload, signature = open(sys.argv[1]).read().strip().split(".")
claims = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
assert b"deploy-42" in claims
payload = base64.urlsafe_b64encode(claims.replace(b"deploy-42", b"deploy-43")).rstrip(b"=").decode()
open(sys.argv[2], "w").write(".".join([header, payload, signature]) + "\n")
"#;

#[test]
fn jws_and_jwt_verify_with_pyjwt_and_jwcrypto() {
    // A JWT the cluster signs verifies with PyJWT (PEM) and jwcrypto (JWKS, by kid), as
    // EdDSA and as Ed25519; the same token with one claim character changed is refused by
    // both and by `synod verify`; the request names format jwt and the claims' hash.
    let cluster = cluster_with_key("tokens");
    let dir = cluster.path("");
    let claims = br#"{"iss":"synod","sub":"deploy-42","aud":"deployers","exp":4102444800}"#;
    let mut pretty = b"\n  ".to_vec();
    pretty.extend_from_slice(claims);
    pretty.extend_from_slice(b"\n");
    let claims_path = write(&cluster, "claims.json", &pretty);
    let claims_file = claims_path.to_str().unwrap();
    let pem = ok(&cluster.synod(1, &["key", "show", "tokens", "--format", "pem"]));
    let pem_path = write(&cluster, "tokens.pem", pem.as_bytes());
    let jwks = ok(&cluster.synod(1, &["key", "show", "tokens", "--format", "jwks"]));
    let jwks_path = write(&cluster, "tokens.jwks", jwks.as_bytes());
    let kid = serde_json::from_str::<Value>(&jwks).unwrap()["keys"][0]["kid"].as_str().unwrap().to_string();

    let token_path = cluster.path("token.jwt");
    let signed = ok(&cluster.synod(
        1,
        &[
            "sign",
            "tokens",
            "--format",
            "jwt",
            "--in",
            claims_file,
            "--out",
            token_path.to_str().unwrap(),
            "-o",
            "json",
        ],
    ));
    let signed: Value = serde_json::from_str(&signed).unwrap();
    assert_eq!(signed["header"], serde_json::json!({"alg": "EdDSA", "kid": kid, "typ": "JWT"}), "{signed}");
    let token = std::fs::read_to_string(&token_path).unwrap();
    assert_eq!(token.trim_end(), signed["token"], "the file holds the token and a newline");
    assert_eq!(token.matches('.').count(), 2, "{token}");

    let token_file = token_path.to_str().unwrap();
    let (verified, said) = tool("python3", &["-c", PYJWT, token_file, pem_path.to_str().unwrap()], None);
    assert!(verified && said.contains("sub deploy-42"), "PyJWT: {said}");
    let (verified, said) = tool("python3", &["-c", JWCRYPTO, token_file, jwks_path.to_str().unwrap(), "EdDSA"], None);
    assert!(verified && said.contains("sub deploy-42"), "jwcrypto: {said}");
    let shown =
        ok(&cluster.synod(1, &["verify", "--format", "jwt", "--key", "tokens", "--in", token_file, "-o", "json"]));
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["valid"], true, "{shown}");
    assert_eq!(shown["header"]["kid"], kid.as_str(), "{shown}");
    assert_eq!(shown["payload"]["sub"], "deploy-42", "{shown}");

    // What every node read: the format and the hash of the claims as signed (the file's
    // JSON without the whitespace around it).
    let request_id = signed["request_id"].as_str().unwrap();
    let request: Value =
        serde_json::from_str(&ok(&cluster.synod(2, &["request", "show", request_id, "-o", "json"]))).unwrap();
    assert_eq!(request["format"]["format"], "jwt", "{request}");
    let hash = format!("sha256:{}", hex::encode(sha2::Sha256::digest(claims)));
    assert_eq!(request["format"]["artifact_hash"], hash.as_str(), "{request}");
    assert_eq!(signed["artifact_hash"], hash.as_str(), "{signed}");
    assert!(request["format"]["summary"].as_str().unwrap().contains("sub=deploy-42"), "{request}");

    // One character of the claims changed: everyone refuses the token.
    let tampered = cluster.path("tampered.jwt");
    let (made, said) = tool("python3", &["-c", TAMPER, token_file, tampered.to_str().unwrap()], Some(&dir));
    assert!(made, "{said}");
    let tampered_file = tampered.to_str().unwrap();
    let (verified, said) = tool("python3", &["-c", PYJWT, tampered_file, pem_path.to_str().unwrap()], None);
    assert!(!verified && said.contains("InvalidSignatureError"), "PyJWT accepted a changed token: {said}");
    let (verified, said) =
        tool("python3", &["-c", JWCRYPTO, tampered_file, jwks_path.to_str().unwrap(), "EdDSA"], None);
    assert!(!verified && said.contains("InvalidJWSSignature"), "jwcrypto accepted a changed token: {said}");
    let refused = fails(&cluster.synod(1, &["verify", "--format", "jwt", "--key", "tokens", "--in", tampered_file]));
    assert!(refused.contains("does not verify"), "{refused}");

    // The fully specified algorithm name (RFC 9864), for verifiers that know it.
    let ed25519_path = cluster.path("ed25519.jwt");
    ok(&cluster.synod(
        1,
        &[
            "sign",
            "tokens",
            "--format",
            "jwt",
            "--alg",
            "Ed25519",
            "--in",
            claims_file,
            "--out",
            ed25519_path.to_str().unwrap(),
        ],
    ));
    let ed25519_file = ed25519_path.to_str().unwrap();
    let (verified, said) =
        tool("python3", &["-c", JWCRYPTO, ed25519_file, jwks_path.to_str().unwrap(), "Ed25519"], None);
    assert!(verified && said.contains("sub deploy-42"), "jwcrypto (Ed25519): {said}");
    let pem_text = pem_path.to_str().unwrap();
    ok(&cluster.synod(1, &["verify", "--format", "jwt", "--public-key", pem_text, "--in", ed25519_file]));

    // A JWS signs any bytes; a JWT refuses what is not a JSON object of claims.
    let notes = write(&cluster, "notes.txt", b"release 1.2.3 \xff\n");
    let jws = ok(&cluster.synod(1, &["sign", "tokens", "--format", "jws", "--in", notes.to_str().unwrap()]));
    let jws_path = write(&cluster, "notes.jws", jws.as_bytes());
    let shown = ok(&cluster.synod(
        1,
        &["verify", "--format", "jws", "--public-key", pem_text, "--in", jws_path.to_str().unwrap(), "-o", "json"],
    ));
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert!(shown["header"].get("typ").is_none(), "{shown}");
    assert_eq!(shown["payload_base64url"], "cmVsZWFzZSAxLjIuMyD_Cg", "{shown}");
    let refused = fails(&cluster.synod(1, &["sign", "tokens", "--format", "jwt", "--in", notes.to_str().unwrap()]));
    assert!(refused.contains("not JSON") && refused.contains("--format jws"), "{refused}");
    let list = write(&cluster, "list.json", b"[1, 2]");
    let refused = fails(&cluster.synod(1, &["sign", "tokens", "--format", "jwt", "--in", list.to_str().unwrap()]));
    assert!(refused.contains("not an object"), "{refused}");
    let refused =
        fails(&cluster.synod(1, &["sign", "tokens", "--format", "jwt", "--alg", "none", "--in", claims_file]));
    assert!(refused.contains("EdDSA"), "{refused}");
}

//! RFC 9421 HTTP message signatures on a notification, by the sending node's
//! certificate key (Ed25519, the key it signs the commands it authors with).
//!
//! The signature covers `"@method" "@target-uri" "content-type" "content-digest"
//! "idempotency-key"` under the label `synod`, with `created`, `keyid` (the RFC
//! 7638 thumbprint of the node's public key as a JWK) and `alg="ed25519"`. The
//! body is bound by `Content-Digest: sha-256=:…:` (RFC 9530). The node's
//! certificate travels in `Synod-Node-Certificate` (DER, base64): a receiver
//! checks that it chains to the cluster CA, takes the public key from it, checks
//! the key's thumbprint is the `keyid`, and verifies. The signature base is built
//! by `synod_proto::format::http`, as `synod sign --format http-signature` builds it.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use synod_proto::format::http;

use crate::pki::NodeIdentity;

/// The signature's label in `Signature-Input` and `Signature`.
pub const LABEL: &str = "synod";
/// The header carrying the sending node's certificate (DER, base64).
pub const CERTIFICATE_HEADER: &str = "synod-node-certificate";
/// The body's media type.
pub const CONTENT_TYPE: &str = "application/json";
/// The covered components, in order.
pub const COVERED: [&str; 5] = ["@method", "@target-uri", "content-type", "content-digest", "idempotency-key"];

/// The headers that sign one POST: (name, value), names lowercase.
pub fn headers(
    identity: &NodeIdentity,
    keyid: &str,
    target_uri: &str,
    id: &str,
    body: &[u8],
    created_s: u64,
) -> Result<Vec<(&'static str, String)>, String> {
    let digest = format!("sha-256=:{}:", STANDARD.encode(Sha256::digest(body)));
    let params = http::signature_params(&COVERED, created_s, keyid);
    let values = ["POST", target_uri, CONTENT_TYPE, &digest, id];
    let components: Vec<(&str, &str)> = COVERED.into_iter().zip(values).collect();
    let base = http::signature_base(&components, &params)?;
    let signature = identity.sign_bytes(base.as_bytes());
    Ok(vec![
        ("content-type", CONTENT_TYPE.to_string()),
        ("content-digest", digest),
        ("idempotency-key", id.to_string()),
        ("signature-input", format!("{LABEL}={params}")),
        ("signature", format!("{LABEL}=:{}:", STANDARD.encode(signature))),
        (CERTIFICATE_HEADER, STANDARD.encode(&identity.cert_der)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_signature_verifies_with_the_certificate_key_over_the_rebuilt_base() {
        // A receiver rebuilds the base from the request it got and verifies it with the
        // key of the certificate in the header, which chains to the cluster CA.
        let mut rng = rand_core::OsRng;
        let (ca, identities) = crate::pki::in_memory_pki(&[1], &mut rng).unwrap();
        let identity = &identities[0];
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        let (_, public) = crate::pki::verify_node_certificate(&ca, &identity.cert_der, now_ms).unwrap();
        let keyid = synod_proto::keyfmt::jwk_thumbprint(&public);
        let body = br#"{"event":"signed"}"#;
        let uri = "https://hooks.example.com/synod?x=1";
        let headers = headers(identity, &keyid, uri, "abc", body, 1_700_000_000).unwrap();
        let get = |name: &str| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone()).unwrap();
        let cert = STANDARD.decode(get(CERTIFICATE_HEADER)).unwrap();
        let (node, key) = crate::pki::verify_node_certificate(&ca, &cert, now_ms).unwrap();
        assert_eq!((node, key), (1, public));
        let params = get("signature-input").strip_prefix("synod=").unwrap().to_string();
        assert!(params.contains(&format!("keyid=\"{keyid}\"")) && params.ends_with("alg=\"ed25519\""), "{params}");
        let base = format!(
            "\"@method\": POST\n\"@target-uri\": {uri}\n\"content-type\": application/json\n\
             \"content-digest\": {}\n\"idempotency-key\": abc\n\"@signature-params\": {params}",
            get("content-digest")
        );
        let signature = get("signature");
        let encoded = signature.strip_prefix("synod=:").and_then(|s| s.strip_suffix(':')).unwrap();
        let signature: [u8; 64] = STANDARD.decode(encoded).unwrap().try_into().unwrap();
        synod_proto::keyfmt::verify(&key, base.as_bytes(), &signature).unwrap();
        assert!(synod_proto::keyfmt::verify(&key, base.replace("abc", "abd").as_bytes(), &signature).is_err());
        assert_eq!(get("content-digest"), format!("sha-256=:{}:", STANDARD.encode(Sha256::digest(body))));
    }
}

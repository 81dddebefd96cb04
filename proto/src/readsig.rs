//! Signed reads: how an operator proves who is reading.
//!
//! A client certificate only says that the cluster CA issued it; what a read
//! may return depends on which operator is asking. Every read the CLI sends
//! carries one header, [`READ_SIGNATURE_HEADER`], in the spirit of an RFC 9421
//! HTTP message signature: the operator's Ed25519 key (the one that signs its
//! commands) signs [`read_signing_bytes`], which covers [`READ_DOMAIN`], the
//! cluster id, the method, the path with its query, the signing time and the
//! key. A node accepts it within [`READ_SKEW_MS_MAX`] of its own clock. A
//! replay inside that window re-reads only what the same operator may read
//! anyway; a signature made for another cluster, path or key does not verify.
//!
//! The header is `v1;key=<hex>;created=<ms since the epoch>;sig=<hex>`. Its own
//! encoding rather than RFC 9421's structured fields keeps the verifier to a
//! page of code; the covered components are the ones RFC 9421 would name
//! (`@method`, `@path`, `@query`, `created`, `keyid`) plus the cluster id.

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

use crate::command::OperatorKey;

/// The HTTP header that carries a read signature (lower case, as HTTP/2 and axum spell it).
pub const READ_SIGNATURE_HEADER: &str = "synod-read-signature";
/// Domain-separation tag that opens every signed read.
pub const READ_DOMAIN: &[u8] = b"synod/read/v1\0";
/// How far a read's signing time may be from the node's clock, either way, in ms.
pub const READ_SKEW_MS_MAX: u64 = 60_000;
/// The longest read-signature header accepted.
pub const READ_SIGNATURE_HEADER_BYTES_MAX: usize = 512;

/// The bytes an operator signs to read `path_and_query` with `method` from
/// cluster `cluster_id` at `signed_at_ms`: [`READ_DOMAIN`], then each of the
/// cluster id, method and path with query as a 4-byte big-endian length and
/// its bytes, the time as 8 bytes big-endian, and the 32-byte key.
pub fn read_signing_bytes(
    cluster_id: &str,
    method: &str,
    path_and_query: &str,
    signed_at_ms: u64,
    key: &OperatorKey,
) -> Vec<u8> {
    let mut out = READ_DOMAIN.to_vec();
    for field in [cluster_id, method, path_and_query] {
        out.extend_from_slice(&(field.len() as u32).to_be_bytes());
        out.extend_from_slice(field.as_bytes());
    }
    out.extend_from_slice(&signed_at_ms.to_be_bytes());
    out.extend_from_slice(&key.0);
    out
}

/// One read signature, as carried in [`READ_SIGNATURE_HEADER`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadSignature {
    /// The operator key that signed; the node looks the operator up by it.
    pub key: OperatorKey,
    /// When the client signed (ms since the epoch, its clock), checked against the node's.
    pub signed_at_ms: u64,
    /// Ed25519 over [`read_signing_bytes`].
    pub signature: [u8; 64],
}

impl ReadSignature {
    /// Signs a read of `path_and_query` (the request target as sent, e.g. `/v1/audit?from=1`).
    pub fn sign(key: &SigningKey, cluster_id: &str, method: &str, path_and_query: &str, signed_at_ms: u64) -> Self {
        let operator = OperatorKey::of(key);
        let bytes = read_signing_bytes(cluster_id, method, path_and_query, signed_at_ms, &operator);
        ReadSignature { key: operator, signed_at_ms, signature: key.sign(&bytes).to_bytes() }
    }

    /// The header value.
    pub fn to_header(&self) -> String {
        format!("v1;key={};created={};sig={}", self.key.to_hex(), self.signed_at_ms, hex::encode(self.signature))
    }

    /// Reads a header value; the error says what is wrong with it.
    pub fn parse(header: &str) -> Result<Self, String> {
        if header.len() > READ_SIGNATURE_HEADER_BYTES_MAX {
            return Err(format!("the read signature is longer than {READ_SIGNATURE_HEADER_BYTES_MAX} bytes"));
        }
        let mut parts = header.split(';');
        if parts.next() != Some("v1") {
            return Err("the read signature does not start with `v1;` (this node reads version 1)".into());
        }
        let (mut key, mut created, mut sig) = (None, None, None);
        for part in parts {
            let (name, value) =
                part.split_once('=').ok_or_else(|| format!("read signature part {part:?} is not name=value"))?;
            let slot = match name {
                "key" => &mut key,
                "created" => &mut created,
                "sig" => &mut sig,
                other => return Err(format!("read signature has an unknown part {other:?}")),
            };
            if slot.replace(value).is_some() {
                return Err(format!("read signature names {name} twice"));
            }
        }
        let missing = |what: &str| format!("read signature has no {what}=");
        let key = OperatorKey::from_hex(key.ok_or_else(|| missing("key"))?)
            .map_err(|e| format!("read signature key is not an operator key: {e}"))?;
        let created = created.ok_or_else(|| missing("created"))?;
        let signed_at_ms: u64 =
            created.parse().map_err(|_| format!("read signature created={created:?} is not ms since the epoch"))?;
        let signature: [u8; 64] = hex::decode(sig.ok_or_else(|| missing("sig"))?)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("read signature sig= is not 64 bytes of hex")?;
        Ok(ReadSignature { key, signed_at_ms, signature })
    }

    /// Checks the signature for this cluster, method and target, and its time
    /// against `now_ms` (the verifier's clock). Says nothing about who the key belongs to.
    pub fn verify(&self, cluster_id: &str, method: &str, path_and_query: &str, now_ms: u64) -> Result<(), String> {
        let skew = now_ms.abs_diff(self.signed_at_ms);
        if skew > READ_SKEW_MS_MAX {
            let (direction, ms) = if self.signed_at_ms < now_ms { ("before", skew) } else { ("after", skew) };
            return Err(format!(
                "the read was signed {ms} ms {direction} this node's clock; a signature is good for {READ_SKEW_MS_MAX} ms \
                 either way (sign each read afresh, and check the clocks)"
            ));
        }
        let key = VerifyingKey::from_bytes(&self.key.0).map_err(|_| "the read signature key is not an Ed25519 key")?;
        let bytes = read_signing_bytes(cluster_id, method, path_and_query, self.signed_at_ms, &self.key);
        key.verify_strict(&bytes, &ed25519_dalek::Signature::from_bytes(&self.signature)).map_err(|_| {
            format!(
                "the read signature does not verify for {method} {path_and_query} on cluster {cluster_id} \
                 (signed for another cluster or path, or not by key {})",
                self.key.to_hex()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    #[test]
    fn readsig_round_trip_verifies() {
        //! A signed read survives its header and verifies for what it names.
        let sig = ReadSignature::sign(&key(), "c1", "GET", "/v1/audit?from=1", 1_000_000);
        let parsed = ReadSignature::parse(&sig.to_header()).unwrap();
        assert_eq!(parsed, sig);
        parsed.verify("c1", "GET", "/v1/audit?from=1", 1_030_000).unwrap();
    }

    #[test]
    fn readsig_other_cluster_path_or_time_refused() {
        //! The signature binds the cluster, the target and a short validity.
        let sig = ReadSignature::sign(&key(), "c1", "GET", "/v1/audit?from=1", 1_000_000);
        assert!(sig.verify("c2", "GET", "/v1/audit?from=1", 1_000_000).unwrap_err().contains("cluster c2"));
        assert!(sig.verify("c1", "GET", "/v1/audit?from=2", 1_000_000).is_err());
        assert!(sig.verify("c1", "POST", "/v1/audit?from=1", 1_000_000).is_err());
        assert!(sig
            .verify("c1", "GET", "/v1/audit?from=1", 1_000_000 + READ_SKEW_MS_MAX + 1)
            .unwrap_err()
            .contains("before"));
        assert!(sig
            .verify("c1", "GET", "/v1/audit?from=1", 1_000_000 - READ_SKEW_MS_MAX - 1)
            .unwrap_err()
            .contains("after"));
    }

    #[test]
    fn readsig_malformed_headers_refused() {
        //! Each malformed header is refused with what is wrong.
        let good = ReadSignature::sign(&key(), "c1", "GET", "/", 5).to_header();
        assert!(ReadSignature::parse(&good.replace("v1;", "v2;")).unwrap_err().contains("v1"));
        assert!(ReadSignature::parse(&format!("{good};key=00")).unwrap_err().contains("twice"));
        assert!(ReadSignature::parse("v1;key=zz;created=1;sig=00").unwrap_err().contains("key"));
        assert!(ReadSignature::parse(&good.replace("created=5", "created=x")).unwrap_err().contains("created"));
        assert!(ReadSignature::parse(&format!("{good};extra=1")).unwrap_err().contains("unknown"));
    }
}

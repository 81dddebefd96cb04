//! OpenPGP v4 signatures (RFC 4880) with EdDSA (algorithm 22, Ed25519): the
//! hash of the signed data and the signature's hashed trailer is what EdDSA
//! signs in OpenPGP, so a request carries exactly that digest, 32 bytes
//! (SHA-256) or 64 (SHA-512). No node can read into a digest: the request is
//! opaque, and it names no artifact hash because the digest covers the
//! signature's own creation time and subpackets too, so it is not the hash
//! of any file an approver could recompute.

use super::Inspection;

/// A SHA-256 digest, the shorter hash an OpenPGP request may sign.
pub const SHA256_BYTES: usize = 32;
/// A SHA-512 digest, the hash `synod sign --format openpgp` uses.
pub const SHA512_BYTES: usize = 64;

/// Reads the format's to-be-signed bytes: exactly one SHA-256 or SHA-512 digest.
pub fn inspect(message: &[u8]) -> Result<Inspection, String> {
    if message.len() != SHA256_BYTES && message.len() != SHA512_BYTES {
        return Err(format!(
            "an OpenPGP request signs one digest, {SHA256_BYTES} bytes (SHA-256) or {SHA512_BYTES} bytes \
             (SHA-512), and this message is {} bytes",
            message.len()
        ));
    }
    Ok(Inspection {
        artifact_hash: None,
        namespace: None,
        opaque: true,
        summary: "OpenPGP signature digest (opaque: the hash of the file and the signature's trailer)".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openpgp_digests_are_opaque_and_name_no_artifact_hash() {
        for len in [SHA256_BYTES, SHA512_BYTES] {
            let read = inspect(&vec![0xabu8; len]).unwrap();
            assert!(read.opaque);
            assert_eq!(read.artifact_hash, None);
            assert_eq!(read.namespace, None);
            assert!(read.summary.starts_with("OpenPGP signature digest (opaque"), "{}", read.summary);
        }
    }

    #[test]
    fn openpgp_refuses_anything_but_one_digest() {
        // Empty, truncated, between the sizes, trailing bytes, a whole signature packet, the limit.
        for len in [0, 1, 20, 31, 33, 48, 63, 65, 96, 128, 64 * 1024] {
            let error = inspect(&vec![7u8; len]).unwrap_err();
            assert!(error.contains(&format!("this message is {len} bytes")), "{error}");
            assert!(error.contains("32 bytes (SHA-256) or 64 bytes (SHA-512)"), "{error}");
        }
    }
}

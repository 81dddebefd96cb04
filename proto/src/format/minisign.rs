//! minisign's pre-hashed signature (`ED`): the cluster signs the file's
//! BLAKE2b-512 digest, 64 bytes no node can read into, so the request is
//! opaque and its artifact hash is that digest (an approver recomputes it with
//! `b2sum`). minisign's second signature, the global signature over the first
//! signature and the trusted comment, is made by the state itself once the
//! first is signed (request [`global_request_id`]); it never passes through
//! [`inspect`].

use super::{hash_label, Inspection};

/// The length of a BLAKE2b-512 digest, the only message a minisign request signs.
pub const DIGEST_BYTES: usize = 64;

/// Reads the format's to-be-signed bytes: exactly one BLAKE2b-512 digest.
pub fn inspect(message: &[u8]) -> Result<Inspection, String> {
    if message.len() != DIGEST_BYTES {
        return Err(format!(
            "a minisign request signs the file's {DIGEST_BYTES}-byte BLAKE2b-512 digest, and this message is {} bytes",
            message.len()
        ));
    }
    Ok(Inspection {
        artifact_hash: Some(hash_label("blake2b-512", message)),
        namespace: None,
        opaque: true,
        summary: "minisign pre-hashed signature (BLAKE2b-512 of the file)".into(),
    })
}

/// The request id of the minisign global signature that follows request
/// `parent_id`: inside the reserved `synod-` prefix, so no client can take it,
/// and fixed by the parent's id, so the client knows where to wait.
pub fn global_request_id(parent_id: &str) -> String {
    use sha2::Digest;
    format!("synod-global-{}", &hex::encode(sha2::Sha256::digest(parent_id.as_bytes()))[..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minisign_digest_is_opaque_and_names_its_hash() {
        let digest = [0xabu8; DIGEST_BYTES];
        let read = inspect(&digest).unwrap();
        assert!(read.opaque);
        assert_eq!(read.artifact_hash.as_deref(), Some(format!("blake2b-512:{}", "ab".repeat(64)).as_str()));
        assert_eq!(read.summary, "minisign pre-hashed signature (BLAKE2b-512 of the file)");
        assert_eq!(read.namespace, None);
    }

    #[test]
    fn minisign_refuses_anything_but_one_digest() {
        for len in [0, 1, 32, 63, 65, 128, 64 * 1024] {
            let error = inspect(&vec![7u8; len]).unwrap_err();
            assert!(error.contains(&format!("this message is {len} bytes")), "{error}");
        }
    }

    #[test]
    fn minisign_global_request_ids_are_reserved_and_fixed_by_the_parent() {
        let id = global_request_id("release-42");
        assert!(id.starts_with("synod-global-") && id.len() == "synod-global-".len() + 32, "{id}");
        assert_eq!(id, global_request_id("release-42"));
        assert_ne!(id, global_request_id("release-43"));
    }
}

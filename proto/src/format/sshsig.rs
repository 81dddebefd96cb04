//! SSHSIG (`PROTOCOL.sshsig`): the signed-data blob `ssh-keygen -Y sign` signs, which
//! binds a namespace and the hash of the file. Files of any size: the client
//! hashes them (SHA-512 by default) and only the blob, under 1 KiB, reaches the cluster.

use super::{hash_label, Inspection};
use crate::sshsig::SignedData;

/// Reads the signed-data blob: its namespace and the artifact hash it names.
pub fn inspect(message: &[u8]) -> Result<Inspection, String> {
    let data = SignedData::parse(message)?;
    Ok(Inspection {
        artifact_hash: Some(hash_label(&data.hash_alg, &data.hash)),
        summary: format!("SSHSIG in namespace {}", data.namespace),
        namespace: Some(data.namespace),
        opaque: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A well-formed signed-data blob naming the SHA-512 of "hello".
    fn blob(namespace: &str) -> (Vec<u8>, Vec<u8>) {
        use sha2::Digest as _;
        let hash = sha2::Sha512::digest(b"hello").to_vec();
        let data = SignedData { namespace: namespace.into(), hash_alg: "sha512".into(), hash: hash.clone() };
        (data.to_bytes(), hash)
    }

    /// An SSH `string`.
    fn string(bytes: &[u8]) -> Vec<u8> {
        let mut out = u32::try_from(bytes.len()).unwrap().to_be_bytes().to_vec();
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn sshsig_inspect_names_namespace_and_hash() {
        // Proves nodes read the namespace and the artifact hash from the signed bytes themselves.
        let (bytes, hash) = blob("git");
        let read = inspect(&bytes).expect("parses");
        assert_eq!(read.namespace.as_deref(), Some("git"));
        assert_eq!(read.artifact_hash, Some(format!("sha512:{}", hex::encode(hash))));
        assert!(!read.opaque);
        assert!(read.summary.contains("git"), "{}", read.summary);
    }

    #[test]
    fn sshsig_inspect_refuses_hostile_blobs() {
        // Proves truncated blobs, trailing bytes, other hashes, wrong hash lengths, reserved data,
        // empty or control-character namespaces and huge lengths are refused without panics.
        let (good, hash) = blob("file");
        for cut in 0..good.len() {
            assert!(inspect(&good[..cut]).is_err(), "a blob cut at {cut} parsed");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(inspect(&trailing).is_err());
        let build = |namespace: &[u8], reserved: &[u8], alg: &[u8], hash: &[u8]| {
            let mut out = b"SSHSIG".to_vec();
            for field in [namespace, reserved, alg, hash] {
                out.extend(string(field));
            }
            out
        };
        assert_eq!(inspect(&build(b"file", b"", b"sha512", &hash)).map(|i| i.namespace), Ok(Some("file".into())));
        let refused = [
            build(b"file", b"", b"sha1", &hash[..20]),
            build(b"file", b"", b"sha256", &hash),
            build(b"file", b"", b"sha512", &hash[..32]),
            build(b"file", b"x", b"sha512", &hash),
            build(b"", b"", b"sha512", &hash),
            build(b"fi\nle", b"", b"sha512", &hash),
            build(&[0xff, 0xfe], b"", b"sha512", &hash),
            [b"SSHSIH".as_slice(), &good[6..]].concat(),
            [b"SSHSIG".as_slice(), &u32::MAX.to_be_bytes(), b"file"].concat(),
            // A whole SSHSIG signature blob (version field first) is not signed data.
            [b"SSHSIG".as_slice(), &1u32.to_be_bytes(), &good[6..]].concat(),
        ];
        for bytes in refused {
            assert!(inspect(&bytes).is_err(), "{}", hex::encode(&bytes));
        }
        let error = inspect(&build(b"file", b"", b"sha1", &hash[..20])).unwrap_err();
        assert!(error.contains("sha1"), "{error}");
    }
}

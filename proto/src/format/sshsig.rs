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

//! (This format's reader is not built yet; requests declaring it are refused.)

use super::Inspection;

/// Reads the format's to-be-signed bytes.
pub fn inspect(message: &[u8]) -> Result<Inspection, String> {
    let _ = message;
    Err("this node cannot read this format yet".into())
}

/// The request id of the minisign global signature that follows request
/// `parent_id`: inside the reserved `synod-` prefix, so no client can take it,
/// and fixed by the parent's id, so the client knows where to wait.
pub fn global_request_id(parent_id: &str) -> String {
    use sha2::Digest;
    format!("synod-global-{}", &hex::encode(sha2::Sha256::digest(parent_id.as_bytes()))[..32])
}

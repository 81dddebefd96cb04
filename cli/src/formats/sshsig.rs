//! `synod sign --format sshsig` and `synod verify --format sshsig`: OpenSSH file signatures
//! (`PROTOCOL.sshsig`), the `-----BEGIN SSH SIGNATURE-----` files `ssh-keygen -Y sign` writes
//! and `ssh-keygen -Y verify` and git read.
//!
//! The file is hashed here with SHA-512, streaming, so files of any size sign without being
//! read into memory; the cluster signs only the SSHSIG signed-data blob (the namespace and
//! that hash, under 1 KiB), which every node parses, so the namespace and the file's hash are
//! what approvers see and the audit log records.

use std::path::Path;

use anyhow::{anyhow, bail, Context};
use sha2::{Sha256, Sha512};
use ssh_key::HashAlg;
use synod_proto::format::SignFormat;
use synod_proto::sshsig::{armor_ed25519, SignedData, SshPublicKey, SshSignature, MAX_ARMORED_LEN};

use super::args::FormatArgs;
use super::{Candidates, ClusterSigner};
use crate::display::{note, shown};
use crate::{Output, SignArgs, VerifyArgs};

/// `synod sign --format sshsig`: hashes the file, has the cluster sign the SSHSIG signed data,
/// and writes the armored signature (to `--out`, or stdout).
pub async fn sign(args: &SignArgs) -> anyhow::Result<()> {
    refuse_other_options(&args.format)?;
    if args.signature_format.is_some() {
        bail!("--signature-format applies to raw signatures; an SSHSIG signature is always the armored .sig text");
    }
    let namespace = namespace(&args.format)?;
    // The key is looked up first, so a wrong name fails before a large file is hashed.
    let signer = ClusterSigner::of(args).await?;
    let hash = hash_file(&args.input, HashAlg::Sha512)?;
    let data = SignedData { namespace: namespace.to_owned(), hash_alg: HashAlg::Sha512.as_str().to_owned(), hash };
    let signed = signer.sign(SignFormat::Sshsig, &data.to_bytes(), None).await?;
    let public_key = signer.public_key();
    let armored = armor_ed25519(&public_key, namespace, HashAlg::Sha512, &signed.signature)
        .map_err(|e| anyhow!("cannot write the SSHSIG signature: {e}"))?;
    // What is written is read back and checked as a verifier would, so a signature that
    // ssh-keygen would refuse never leaves this command.
    SshSignature::read(&armored)
        .and_then(|sig| sig.verify_hash(namespace, &data.hash, &SshPublicKey::Ed25519(public_key)))
        .map_err(|e| {
            anyhow!("the SSHSIG signature for request {} does not verify: {e}", shown(&signed.info.request_id))
        })?;

    if let Some(path) = &args.out {
        std::fs::write(path, &armored).with_context(|| format!("cannot write {}", path.display()))?;
    }
    match (args.client.output.output, &args.out) {
        (Output::Json, out) => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "request_id": signed.info.request_id,
                "key": signer.key().name,
                "key_version": signer.version(),
                "format": SignFormat::Sshsig,
                "namespace": namespace,
                "artifact_hash": synod_proto::format::hash_label(HashAlg::Sha512.as_str(), &data.hash),
                "public_key": hex::encode(public_key),
                "signature": armored,
                "out": out.as_ref().map(|p| p.display().to_string()),
            }))?
        ),
        (Output::Table, Some(path)) => note(format_args!(
            "SSHSIG signature (namespace {namespace}) for request {} written to {}",
            shown(&signed.info.request_id),
            path.display()
        )),
        (Output::Table, None) => print!("{armored}"),
    }
    Ok(())
}

/// `synod verify --format sshsig`: checks the namespace, that the key inside the signature is
/// one of the candidates, then the signature over the file's hash (`verify_strict`).
pub fn verify(args: &VerifyArgs, candidates: &Candidates) -> anyhow::Result<(Option<u32>, [u8; 32])> {
    refuse_other_options(&args.format)?;
    let namespace = namespace(&args.format)?;
    // ssh-keygen -Y sign writes FILE.sig next to FILE; that is read when --signature is absent.
    let default_path = args.input.with_file_name(format!(
        "{}.sig",
        args.input.file_name().map(|name| name.to_string_lossy()).unwrap_or_default()
    ));
    let path = args.signature.as_ref().unwrap_or(&default_path);
    let len = std::fs::metadata(path)
        .with_context(|| format!("cannot read the signature {}; name it with --signature FILE.sig", path.display()))?
        .len();
    if len > MAX_ARMORED_LEN as u64 {
        bail!(
            "{} is {len} bytes, more than the {MAX_ARMORED_LEN} an SSH signature may be: give the .sig file \
             ssh-keygen -Y sign or synod sign --format sshsig wrote",
            path.display()
        );
    }
    let armored = std::fs::read_to_string(path).with_context(|| format!("cannot read {} as text", path.display()))?;
    let signature = SshSignature::read(&armored).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    if signature.namespace != namespace.as_bytes() {
        bail!(
            "the signature was made for namespace {}, not {namespace:?}: a signature only counts in the namespace \
             it was made for",
            signature.namespace_quoted()
        );
    }
    let found =
        candidates.iter().find(|(_, key)| SshPublicKey::Ed25519(*key) == signature.signer).ok_or_else(|| {
            let which = if candidates.len() > 1 {
                format!("any of the {} versions of the key", candidates.len())
            } else {
                "the given key".to_string()
            };
            anyhow!("the signature was made by key {}, which is not {which}", signature.signer.fingerprint())
        })?;
    let hash = hash_file(&args.input, signature.hash_alg)?;
    signature.verify_hash(namespace, &hash, &signature.signer).map_err(|e| match e {
        synod_proto::sshsig::SshSigError::BadSignature => anyhow!(
            "the SSHSIG signature does not verify: {} is not the file that was signed, or the signature was altered",
            args.input.display()
        ),
        other => anyhow!("{other}"),
    })?;
    Ok(*found)
}

/// The `--namespace` sshsig requires: non-empty printable text.
fn namespace(format: &FormatArgs) -> anyhow::Result<&str> {
    let namespace = format.namespace.as_deref().ok_or_else(|| {
        anyhow!(
            "--format sshsig needs --namespace NS, the namespace the signature is for: git for commits and tags, \
             file for files, or your own; verifiers pass the same namespace"
        )
    })?;
    if namespace.is_empty() || namespace.chars().any(char::is_control) {
        bail!("--namespace must be non-empty printable text (git, file, ...)");
    }
    Ok(namespace)
}

/// Refuses the options of other formats rather than ignoring them.
fn refuse_other_options(format: &FormatArgs) -> anyhow::Result<()> {
    format.refuse_others(&["--namespace"])
}

/// The SSHSIG hash of a file of any size, read in bounded pieces.
pub fn hash_file(path: &Path, alg: HashAlg) -> anyhow::Result<Vec<u8>> {
    Ok(match alg {
        HashAlg::Sha256 => super::hash_file::<Sha256>(path)?.to_vec(),
        _ => super::hash_file::<Sha512>(path)?.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    #[test]
    fn sshsig_hash_file_streams_in_chunks() {
        // Proves hashing in chunks gives the one-shot digest, across a chunk boundary.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let bytes: Vec<u8> = (0..super::super::HASH_PIECE_BYTES + 1234).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(hash_file(&path, HashAlg::Sha512).unwrap(), Sha512::digest(&bytes).to_vec());
        assert_eq!(hash_file(&path, HashAlg::Sha256).unwrap(), Sha256::digest(&bytes).to_vec());
    }
}

//! Offline commands: the CA (`synod ca ...`) and operator keys (`synod operator ...`).
//! They touch only local files and never talk to a node.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::SigningKey;
use synod_proto::OperatorKey;

use super::{CaCmd, IssueCmd, OperatorCmd, Output};
use crate::pki::{self, Subject};

/// Runs `synod ca ...`.
pub fn ca(cmd: CaCmd) -> anyhow::Result<()> {
    match cmd {
        CaCmd::Init { dir, name } => {
            let info = pki::ca_init(&dir, &name)?;
            println!("CA certificate: {}", info.cert_path.display());
            println!("CA key:         {} (keep it offline; it can mint node certificates)", info.key_path.display());
            println!("fingerprint:    {}", info.fingerprint_sha256);
        }
        CaCmd::Issue(IssueCmd::Node { id, sans, ca_dir, out, days }) => {
            let issued = pki::issue(&ca_dir, &Subject::Node { id, sans }, &out, days)?;
            println!("certificate: {}\nkey:         {}", issued.cert_path.display(), issued.key_path.display());
        }
        CaCmd::Issue(IssueCmd::Client { name, ca_dir, out, days }) => {
            let issued = pki::issue(&ca_dir, &Subject::Client { name }, &out, days)?;
            println!("certificate: {}\nkey:         {}", issued.cert_path.display(), issued.key_path.display());
        }
    }
    Ok(())
}

/// Runs `synod operator ...`.
pub fn operator(cmd: OperatorCmd) -> anyhow::Result<()> {
    let (key, output) = match cmd {
        OperatorCmd::Keygen { out, output } => (keygen(&out)?, output),
        OperatorCmd::Show { key, output } => (load_operator_key(&key)?, output),
    };
    let public = OperatorKey::of(&key);
    match output.output {
        Output::Json => println!("{}", serde_json::json!({ "public_key": public })),
        Output::Table => println!("{public}"),
    }
    Ok(())
}

/// Writes a new operator key to `path` (never overwriting) and returns it.
pub fn keygen(path: &Path) -> anyhow::Result<SigningKey> {
    let key = SigningKey::generate(&mut rand_core::OsRng);
    let pem = key.to_pkcs8_pem(Default::default()).context("encoding the operator key")?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create operator key file {} (it must not exist yet)", path.display()))?;
    file.write_all(pem.as_bytes())?;
    file.sync_all()?;
    Ok(key)
}

/// Reads an operator key file written by `synod operator keygen`.
pub fn load_operator_key(path: &Path) -> anyhow::Result<SigningKey> {
    let pem = zeroize::Zeroizing::new(std::fs::read_to_string(path).with_context(|| {
        format!("cannot read operator key {}; create one with `synod operator keygen`", path.display())
    })?);
    SigningKey::from_pkcs8_pem(&pem)
        .map_err(|_| anyhow::anyhow!("operator key {} is not an Ed25519 PKCS#8 PEM private key", path.display()))
}

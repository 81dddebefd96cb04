//! Offline commands: the CA (`synod ca ...`) and operator keys (`synod operator ...`).
//! They touch only local files and never talk to a node.

use std::path::Path;

use anyhow::Context;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::SigningKey;
use synod_proto::OperatorKey;
use zeroize::Zeroizing;

use super::{CaCmd, IssueArgs, IssueCmd, KekCmd, OperatorCmd, Output};
use synod_node::pki::{self, Subject};

/// Runs `synod ca ...`.
pub fn ca(cmd: CaCmd) -> anyhow::Result<()> {
    match cmd {
        CaCmd::Init { dir, name, protect } => {
            let passphrase = if protect { Some(ca_passphrase(true)?) } else { None };
            let info = pki::ca_init(&dir, &name, passphrase.as_deref().map(String::as_str))?;
            println!("CA certificate: {}", info.cert_path.display());
            println!("CA key:         {} (keep it offline; it can mint node certificates)", info.key_path.display());
            println!("fingerprint:    {}", info.fingerprint_sha256);
        }
        CaCmd::Issue(IssueArgs { kind: None, renew: Some(cert), ca_dir, days }) => {
            let ca_dir = ca_dir.context("--renew needs --ca-dir, the directory holding ca.crt and ca.key")?;
            let passphrase = passphrase_if_protected(&ca_dir)?;
            let renewed = pki::renew(&ca_dir, &cert, days, passphrase.as_deref().map(String::as_str))?;
            println!(
                "renewed {:?} for {} days\ncertificate: {} (the key file is unchanged)\nprevious:    {}\n\
                 send SIGHUP to a running node to use it",
                renewed.subject,
                renewed.validity_days,
                renewed.cert_path.display(),
                renewed.previous_path.display()
            );
        }
        CaCmd::Issue(IssueArgs { kind: None, .. }) => {
            anyhow::bail!("say what to issue: `synod ca issue node ...`, `synod ca issue client ...`, or `synod ca issue --renew CERT_FILE --ca-dir DIR`")
        }
        CaCmd::Issue(IssueArgs { kind: Some(IssueCmd::Node { id, sans, ca_dir, out, days }), .. }) => {
            let passphrase = passphrase_if_protected(&ca_dir)?;
            let issued = pki::issue(
                &ca_dir,
                &Subject::Node { id, sans },
                &out,
                days,
                passphrase.as_deref().map(String::as_str),
            )?;
            println!("certificate: {}\nkey:         {}", issued.cert_path.display(), issued.key_path.display());
        }
        CaCmd::Issue(IssueArgs { kind: Some(IssueCmd::Client { name, ca_dir, out, days }), .. }) => {
            let passphrase = passphrase_if_protected(&ca_dir)?;
            let issued =
                pki::issue(&ca_dir, &Subject::Client { name }, &out, days, passphrase.as_deref().map(String::as_str))?;
            println!("certificate: {}\nkey:         {}", issued.cert_path.display(), issued.key_path.display());
        }
    }
    Ok(())
}

/// The CA passphrase from `SYNOD_CA_PASSPHRASE`, or asked on the terminal
/// (twice when it is being chosen).
fn ca_passphrase(choosing: bool) -> anyhow::Result<Zeroizing<String>> {
    if let Ok(p) = std::env::var("SYNOD_CA_PASSPHRASE") {
        if !p.is_empty() {
            return Ok(Zeroizing::new(p));
        }
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        anyhow::bail!("the CA passphrase is needed: set SYNOD_CA_PASSPHRASE or run on a terminal");
    }
    let first = Zeroizing::new(rpassword::prompt_password("CA key passphrase: ")?);
    if choosing {
        if first.len() < 12 {
            anyhow::bail!("choose a passphrase of at least 12 characters");
        }
        let second = Zeroizing::new(rpassword::prompt_password("Repeat the passphrase: ")?);
        if first != second {
            anyhow::bail!("the passphrases differ; nothing was written");
        }
    }
    Ok(first)
}

fn passphrase_if_protected(ca_dir: &Path) -> anyhow::Result<Option<Zeroizing<String>>> {
    Ok(if pki::ca_key_is_protected(ca_dir)? { Some(ca_passphrase(false)?) } else { None })
}

/// Runs `synod operator ...`.
pub fn operator(cmd: OperatorCmd) -> anyhow::Result<()> {
    let (key, output) = match cmd {
        OperatorCmd::Keygen { out, output } => (keygen(&out)?, output),
        OperatorCmd::Show { key, output } => (load_operator_key(&key)?, output),
        other => anyhow::bail!("{other:?} talks to the cluster; it is handled by cli::authz"),
    };
    let public = OperatorKey::of(&key);
    match output.output {
        Output::Json => println!("{}", serde_json::json!({ "public_key": public })),
        Output::Table => println!("{public}"),
    }
    Ok(())
}

/// Runs `synod kek ...`.
pub fn kek(cmd: KekCmd) -> anyhow::Result<()> {
    match cmd {
        KekCmd::GenerateFile { out } => {
            synod_node::kek::soft::SoftKek::generate_file(&out)?;
            println!("wrote a new KEK to {} (mode 0600); a development setting", out.display());
        }
        KekCmd::Pkcs11Keygen { module, token_label, key_label, pin_file } => {
            let pin = match pin_file {
                Some(path) => {
                    let text = Zeroizing::new(
                        std::fs::read_to_string(&path)
                            .with_context(|| format!("cannot read PIN file {}", path.display()))?,
                    );
                    text.trim().to_string()
                }
                None => synod_node::hygiene::secret(synod_node::config::PIN_ENV_DEFAULT, "the token PIN")?
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "set --pin-file, SYNOD_PKCS11_PIN_FILE or SYNOD_PKCS11_PIN to the token's user PIN"
                        )
                    })?
                    .to_string(),
            };
            let cfg = synod_node::kek::pkcs11::Pkcs11Config {
                module,
                token_label: token_label.clone(),
                key_label: key_label.clone(),
                pin: zeroize::Zeroizing::new(pin),
            };
            synod_node::kek::pkcs11::Pkcs11Kek::generate_key(&cfg)?;
            println!("created non-extractable AES-256 key {key_label:?} on token {token_label:?}");
        }
    }
    Ok(())
}

/// Writes a new operator key to `path` (never overwriting) and returns it.
pub fn keygen(path: &Path) -> anyhow::Result<SigningKey> {
    let key = SigningKey::generate(&mut rand_core::OsRng);
    let der = key.to_pkcs8_der().context("encoding the operator key")?;
    // PKCS#8 v1 so that OpenSSL and ssh tooling read it too.
    let pem = pki::pkcs8_pem_v1(der.as_bytes())?;
    synod_node::files::write_new(path, pem.as_bytes(), synod_node::files::PRIVATE_MODE)
        .with_context(|| format!("cannot create operator key file {} (it must not exist yet)", path.display()))?;
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

//! Offline commands: the CA (`synod ca ...`), operator keys (`synod operator ...`)
//! and KEKs (`synod kek ...`). They touch only local files (and a PKCS#11
//! token) and never talk to a node.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::SigningKey;
use synod_proto::OperatorKey;
use zeroize::Zeroizing;

use super::display::{note, shown};
use super::{CaCmd, IssueArgs, IssueCmd, KekCmd, OperatorCmd, Output};
use synod_node::pki::{self, Subject};

/// Runs `synod ca ...`.
pub fn ca(cmd: CaCmd) -> anyhow::Result<()> {
    match cmd {
        CaCmd::Init { dir, name, protect, output } => {
            let passphrase = if protect { Some(ca_passphrase(true)?) } else { None };
            let info = pki::ca_init(&dir, &name, passphrase.as_deref().map(String::as_str))?;
            match output.output {
                Output::Json => print_json(&serde_json::json!({
                    "certificate": info.cert_path,
                    "key": info.key_path,
                    "fingerprint_sha256": info.fingerprint_sha256,
                    "protected": protect,
                }))?,
                Output::Table => {
                    println!("CA certificate: {}", info.cert_path.display());
                    println!(
                        "CA key:         {} (keep it offline; it can mint node certificates)",
                        info.key_path.display()
                    );
                    println!("fingerprint:    {}", info.fingerprint_sha256);
                }
            }
        }
        CaCmd::Issue(IssueArgs { kind: None, renew: Some(cert), ca_dir, days, output }) => {
            let ca_dir = ca_dir.context("--renew needs --ca-dir, the directory holding ca.crt and ca.key")?;
            let passphrase = passphrase_if_protected(&ca_dir)?;
            let renewed = pki::renew(&ca_dir, &cert, days, passphrase.as_deref().map(String::as_str))?;
            match output.output {
                Output::Json => print_json(&serde_json::json!({
                    "subject": subject_json(&renewed.subject),
                    "certificate": renewed.cert_path,
                    "previous": renewed.previous_path,
                    "validity_days": renewed.validity_days,
                }))?,
                Output::Table => println!(
                    "renewed {} for {} days\ncertificate: {} (the key file is unchanged)\nprevious:    {}\n\
                     send SIGHUP to a running node to use it",
                    subject_name(&renewed.subject),
                    renewed.validity_days,
                    renewed.cert_path.display(),
                    renewed.previous_path.display()
                ),
            }
        }
        CaCmd::Issue(IssueArgs { kind: None, .. }) => {
            anyhow::bail!("say what to issue: `synod ca issue node ...`, `synod ca issue client ...`, or `synod ca issue --renew CERT_FILE --ca-dir DIR`")
        }
        CaCmd::Issue(IssueArgs { kind: Some(IssueCmd::Node { id, sans, ca_dir, out, days, output }), .. }) => {
            issue(&ca_dir, Subject::Node { id, sans }, &out, days, output.output)?;
        }
        CaCmd::Issue(IssueArgs { kind: Some(IssueCmd::Client { name, ca_dir, out, days, output }), .. }) => {
            issue(&ca_dir, Subject::Client { name }, &out, days, output.output)?;
        }
        CaCmd::Issue(IssueArgs { kind: Some(IssueCmd::Console { name, dns, ca_dir, out, days, output }), .. }) => {
            issue_console(&ca_dir, &name, &dns, &out, days, output.output)?;
        }
    }
    Ok(())
}

/// `synod ca issue node|client`: issues the certificate and says where it is.
fn issue(ca_dir: &Path, subject: Subject, out: &Path, days: u32, output: Output) -> anyhow::Result<()> {
    let passphrase = passphrase_if_protected(ca_dir)?;
    let issued = pki::issue(ca_dir, &subject, out, days, passphrase.as_deref().map(String::as_str))?;
    match output {
        Output::Json => print_json(&serde_json::json!({
            "subject": subject_json(&subject),
            "certificate": issued.cert_path,
            "key": issued.key_path,
            "validity_days": days,
        })),
        Output::Table => {
            println!("certificate: {}\nkey:         {}", issued.cert_path.display(), issued.key_path.display());
            Ok(())
        }
    }
}

/// `synod ca issue console`: issues the console's P-256 certificate and says which web CA
/// browsers must trust.
fn issue_console(
    ca_dir: &Path,
    name: &str,
    dns: &[String],
    out: &Path,
    days: u32,
    output: Output,
) -> anyhow::Result<()> {
    let passphrase = passphrase_if_protected(ca_dir)?;
    let issued = pki::issue_console(ca_dir, name, dns, out, days, passphrase.as_deref().map(String::as_str))?;
    match output {
        Output::Json => print_json(&serde_json::json!({
            "certificate": issued.cert_path,
            "key": issued.key_path,
            "dns": dns,
            "validity_days": days,
            "web_ca": issued.web_ca_path,
            "web_ca_created": issued.web_ca_created,
            "web_ca_fingerprint_sha256": issued.web_ca_fingerprint_sha256,
        })),
        Output::Table => {
            println!("certificate: {}\nkey:         {}", issued.cert_path.display(), issued.key_path.display());
            let made = if issued.web_ca_created { ", made now" } else { "" };
            println!(
                "web CA:      {} (fingerprint {}{made})",
                issued.web_ca_path.display(),
                issued.web_ca_fingerprint_sha256
            );
            println!(
                "Browsers must trust the web CA: import {} into their trust store. Then set [console] in node.toml:\n  \
                 listen = \"0.0.0.0:8443\"\n  certificate = \"{}\"\n  key = \"{}\"",
                issued.web_ca_path.display(),
                issued.cert_path.display(),
                issued.key_path.display()
            );
            Ok(())
        }
    }
}

/// Who a certificate is for, as JSON: `{"node": 3, "sans": [...]}` or `{"client": "ci"}`.
fn subject_json(subject: &Subject) -> serde_json::Value {
    match subject {
        Subject::Node { id, sans } => serde_json::json!({ "node": id, "sans": sans }),
        Subject::Client { name } => serde_json::json!({ "client": name }),
    }
}

/// Who a certificate is for, in words: `node 3`, `client "ci"`.
fn subject_name(subject: &Subject) -> String {
    match subject {
        Subject::Node { id, .. } => format!("the certificate of node {id}"),
        Subject::Client { name } => format!("the certificate of client {}", shown(name)),
    }
}

/// Prints `value` as pretty JSON on stdout.
fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
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
pub async fn kek(cmd: KekCmd) -> anyhow::Result<()> {
    match cmd {
        KekCmd::Rotate { config, new_kek_file, new_kek_config, output } => {
            let new = match (new_kek_file, new_kek_config) {
                (Some(path), None) => NewKekArg::File(path),
                (None, Some(path)) => NewKekArg::Config(path),
                _ => bail!("name the new KEK with exactly one of --new-kek-file and --new-kek-config"),
            };
            rotate(&config, new, output.output).await?;
        }
        KekCmd::GenerateFile { out, output } => {
            synod_node::kek::soft::SoftKek::generate_file(&out)?;
            match output.output {
                Output::Json => print_json(&serde_json::json!({ "file": out, "mode": "0600" }))?,
                Output::Table => println!("wrote a new KEK to {} (mode 0600); a development setting", out.display()),
            }
        }
        KekCmd::Pkcs11Keygen { module, token_label, key_label, pin_file, output } => {
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
                module: module.clone(),
                token_label: token_label.clone(),
                key_label: key_label.clone(),
                pin: zeroize::Zeroizing::new(pin),
            };
            synod_node::kek::pkcs11::Pkcs11Kek::generate_key(&cfg)?;
            match output.output {
                Output::Json => print_json(&serde_json::json!({
                    "module": module,
                    "token_label": token_label,
                    "key_label": key_label,
                }))?,
                Output::Table => println!("created non-extractable AES-256 key {key_label:?} on token {token_label:?}"),
            }
        }
    }
    Ok(())
}

/// Where `synod kek rotate` finds the KEK to move to.
enum NewKekArg {
    /// `--new-kek-file`: a key file made by `synod kek generate-file`.
    File(PathBuf),
    /// `--new-kek-config`: a file whose `[kek]` table names it, in node.toml's format.
    Config(PathBuf),
}

/// The secret variables `synod kek rotate` may read: those of node.toml's
/// `[kek]` and of the new KEK's table, for `main` to take out of the
/// environment before any thread starts (invariant 25).
pub fn rotate_secret_env_names(config: &Path, new_kek_config: Option<&Path>) -> Vec<String> {
    let mut names = synod_node::server::secret_env_names(config);
    if let Some(kek) = new_kek_config.and_then(|path| synod_node::server::load_kek_table(path).ok()) {
        names.extend(synod_node::server::kek_secret_env_names(&kek));
    }
    names
}

/// `synod kek rotate`: moves a stopped node's data directory to a new KEK.
///
/// Decisions:
/// - Offline only. The node holds sled's lock on its data directory while it
///   runs, so opening the store is the check: a locked directory is refused
///   with "stop the node first". Nothing in a running node has to change.
/// - The current KEK is opened from node.toml as `synod node start` opens it
///   (`server::kek_secret`, `server::open_kek`: the same `*_FILE`, credential,
///   variable and prompt rules) and must open the KEK check with the node's
///   label; rotation never creates a check or a salt.
/// - The new KEK comes from `--new-kek-file` (which must exist: rotation
///   makes no key material, as no other command that uses a KEK does) or
///   from `--new-kek-config`, a `[kek]` table in node.toml's format, so every
///   backend is named one way and the table can be pasted into node.toml.
/// - The same KEK is refused before anything is written: by its config (the
///   same key file, the same key label on the same token, the same
///   passphrase), and by its key (`SealedStore::reseal_all` checks that the
///   old KEK cannot open what the new one seals: a copied key file).
/// - A new passphrase KEK gets a fresh salt, stored in the same write as the
///   re-sealed secrets; moving away from a passphrase removes the salt. So a
///   passphrase can move to another passphrase, and the old one opens nothing.
/// - node.toml is not edited: the operator points it at the new KEK, starts
///   the node and then destroys the old KEK. What to do is printed.
async fn rotate(config_path: &Path, new: NewKekArg, output: Output) -> anyhow::Result<()> {
    use synod_node::config::{KekConfig, NodeConfig};
    use synod_node::sealed::{NewKek, SealedStore};
    use synod_node::server;

    let config = NodeConfig::load(config_path)?;
    let new_config = match new {
        NewKekArg::File(path) => KekConfig::File { path: std::path::absolute(&path)? },
        NewKekArg::Config(path) => server::load_kek_table(&path)?,
    };
    refuse_same_kek_config(&config.kek, &new_config, config_path)?;
    let store = open_stopped_store(&config, config_path)?;
    let keks = open_keks(&config, config_path, &new_config, store.as_ref()).await?;

    let label = server::kek_check_label(config.node_id);
    let old_kek = keks.old.describe();
    let new_kek = keks.new.describe();
    let sealed = SealedStore::new(store, keks.old);
    let report = tokio::task::spawn_blocking(move || {
        let target = NewKek { kek: keks.new.as_ref(), passphrase_salt: keks.new_salt };
        sealed.reseal_all(&label, &target, &mut |p| {
            note(format_args!("re-sealed and checked {} of {} secrets", p.done, p.total));
        })
    })
    .await?
    .map_err(|e| explain_reseal_error(e, &config, config_path))?;
    print_rotated(&RotateSummary {
        config_path,
        config: &config,
        old_kek: &old_kek,
        new_kek: &new_kek,
        new_config: &new_config,
        report,
        output,
    })
}

/// The two KEKs of a rotation, opened.
struct RotationKeks {
    /// The KEK node.toml names, which sealed the data directory.
    old: Arc<dyn synod_node::kek::Kek>,
    /// The KEK to move to.
    new: Arc<dyn synod_node::kek::Kek>,
    /// The fresh salt `new` was derived with, when it is a passphrase KEK.
    new_salt: Option<[u8; synod_node::kek::soft::SALT_BYTES]>,
}

/// Reads both KEKs' secrets (refusing the current passphrase as the new one)
/// and opens both KEKs as `synod node start` would. Writes nothing: the
/// current passphrase KEK's salt must already be in the data directory.
async fn open_keks(
    config: &synod_node::config::NodeConfig,
    config_path: &Path,
    new_config: &synod_node::config::KekConfig,
    store: &dyn synod_node::store::Store,
) -> anyhow::Result<RotationKeks> {
    use synod_node::config::KekConfig;
    use synod_node::server::{self, KekSecret};
    let old_secret = server::kek_secret(&config.kek, current_passphrase_prompt)?;
    let new_secret = server::kek_secret(new_config, new_passphrase_prompt)?;
    if let (KekSecret::Passphrase(old), KekSecret::Passphrase(new)) = (&old_secret, &new_secret) {
        if old == new {
            bail!(
                "the new KEK's passphrase is the current one, so the old KEK could not be destroyed; choose \
                 another passphrase (give it in another variable: env = \"SYNOD_NEW_KEK_PASSPHRASE\" in the new \
                 [kek] table, or leave both unset to be asked)"
            );
        }
    }
    let old_salt = match config.kek {
        KekConfig::Passphrase { .. } => {
            Some(synod_node::sealed::stored_passphrase_salt(store)?.with_context(|| {
                format!(
                    "{} says the KEK is a passphrase, but the data directory {} holds no passphrase salt, so no \
                 passphrase KEK sealed it; set [kek] to the KEK that did",
                    config_path.display(),
                    config.data_dir.display()
                )
            })?)
        }
        _ => None,
    };
    let new_salt = match new_config {
        KekConfig::Passphrase { .. } => Some(synod_node::sealed::new_passphrase_salt()?),
        _ => None,
    };
    let old = server::open_kek(&config.kek, old_secret, old_salt)
        .await
        .with_context(|| format!("cannot open the current KEK ([kek] in {})", config_path.display()))?;
    let new = server::open_kek(new_config, new_secret, new_salt).await.context("cannot open the new KEK")?;
    Ok(RotationKeks { old, new, new_salt })
}

/// Says whether anything was written when re-sealing failed, and what to do.
fn explain_reseal_error(
    error: synod_node::sealed::SealError,
    config: &synod_node::config::NodeConfig,
    config_path: &Path,
) -> anyhow::Error {
    use synod_node::sealed::SealError;
    let data_dir = config.data_dir.display();
    match error {
        SealError::ResealUnverified { .. } => anyhow::Error::new(error),
        SealError::WrongKek { .. } => anyhow::Error::new(error).context(format!(
            "nothing was written: [kek] in {} does not name the KEK that sealed {data_dir} (if it was rotated \
             already, name the KEK it was rotated to)",
            config_path.display()
        )),
        error => anyhow::Error::new(error)
            .context(format!("nothing was written: the data directory {data_dir} is unchanged")),
    }
}

/// Refuses a new KEK config that names the current KEK: the same key file,
/// or the same key label on the same token of the same module. (The same
/// passphrase is found once both are read; a copied key file by
/// `reseal_all`.) A new key file must exist.
fn refuse_same_kek_config(
    old: &synod_node::config::KekConfig,
    new: &synod_node::config::KekConfig,
    config_path: &Path,
) -> anyhow::Result<()> {
    use synod_node::config::KekConfig;
    let canonical = |path: &Path| std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    if let KekConfig::File { path } = new {
        if !path.exists() {
            bail!(
                "the new KEK file {} does not exist; create it first with `synod kek generate-file --out {}`",
                path.display(),
                path.display()
            );
        }
    }
    let same = match (old, new) {
        (KekConfig::File { path: a }, KekConfig::File { path: b }) => canonical(a) == canonical(b),
        (
            KekConfig::Pkcs11 { module: m1, token_label: t1, key_label: k1, .. },
            KekConfig::Pkcs11 { module: m2, token_label: t2, key_label: k2, .. },
        ) => canonical(m1) == canonical(m2) && t1 == t2 && k1 == k2,
        _ => false,
    };
    if same {
        bail!(
            "the new KEK is the one [kek] in {} already names; re-sealing under it would not let the old KEK be \
             destroyed. Make a new KEK (`synod kek generate-file --out NEW`, or `synod kek pkcs11-keygen` with \
             another --key-label) and name that one",
            config_path.display()
        );
    }
    Ok(())
}

/// Opens the node's store, which must exist and must not be open in a running node.
fn open_stopped_store(
    config: &synod_node::config::NodeConfig,
    config_path: &Path,
) -> anyhow::Result<Arc<dyn synod_node::store::Store>> {
    use synod_node::store::{SledStore, StoreError};
    let dir = config.data_dir.join("store");
    if !dir.join("db").exists() {
        bail!(
            "{} holds no node store: the node has never started, so nothing is sealed and there is nothing to \
             re-seal; point [kek] in {} at the new KEK and start the node",
            config.data_dir.display(),
            config_path.display()
        );
    }
    match SledStore::open(&dir) {
        Ok(store) => Ok(Arc::new(store)),
        Err(StoreError::Locked { path, .. }) => bail!(
            "the data directory {} is in use, most likely by the running node: stop the node first (`synod kek \
             rotate` works on a stopped node only), then run this again",
            path.display()
        ),
        Err(e) => Err(e.into()),
    }
}

/// Asks for the current KEK passphrase.
fn current_passphrase_prompt() -> std::io::Result<Zeroizing<String>> {
    rpassword::prompt_password("Current KEK passphrase: ").map(Zeroizing::new)
}

/// Asks twice for the new KEK passphrase; answers that differ are refused.
fn new_passphrase_prompt() -> std::io::Result<Zeroizing<String>> {
    let first = Zeroizing::new(rpassword::prompt_password("New KEK passphrase: ")?);
    let second = Zeroizing::new(rpassword::prompt_password("Repeat the new KEK passphrase: ")?);
    if first != second {
        return Err(std::io::Error::other("the new passphrases differ; nothing was written"));
    }
    Ok(first)
}

/// What `synod kek rotate` did, for [`print_rotated`].
struct RotateSummary<'a> {
    /// node.toml, named in the next steps.
    config_path: &'a Path,
    /// Its contents: the node, the data directory and the old KEK.
    config: &'a synod_node::config::NodeConfig,
    /// The old KEK as `Kek::describe` names it.
    old_kek: &'a str,
    /// The new KEK as `Kek::describe` names it.
    new_kek: &'a str,
    /// The `[kek]` table that names the new KEK, to paste into node.toml.
    new_config: &'a synod_node::config::KekConfig,
    /// What was re-sealed.
    report: synod_node::sealed::ResealReport,
    /// Table or JSON.
    output: Output,
}

/// Prints what was done and what the operator does next.
fn print_rotated(summary: &RotateSummary<'_>) -> anyhow::Result<()> {
    use synod_node::sealed::SaltChange;
    let RotateSummary { config_path, config, old_kek, new_kek, new_config, report, output } = summary;
    let table = synod_node::server::kek_table_toml(new_config);
    let steps = [
        format!("point [kek] in {} at the new KEK:\n{table}", config_path.display()),
        format!("start the node: synod node start --config {}", config_path.display()),
        format!("then destroy the old KEK: {}", destroy_advice(&config.kek)),
    ];
    let warning = "until the old KEK is destroyed, every earlier copy of this data directory (backups, copied \
                   disks, old blocks sled's log may still hold) still opens with it";
    let salt = match report.salt {
        SaltChange::Unchanged => "unchanged",
        SaltChange::Written => "written",
        SaltChange::Removed => "removed",
    };
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "node_id": config.node_id,
                "data_dir": config.data_dir,
                "secrets": report.secrets,
                "passphrase_salt": salt,
                "old_kek": old_kek,
                "new_kek": new_kek,
                "new_kek_config": new_config,
                "next_steps": steps,
                "warning": warning,
            }))?
        ),
        Output::Table => {
            println!(
                "re-sealed {} secret(s) and the KEK check of node {} in {} under {new_kek}, in one synced write",
                report.secrets,
                config.node_id,
                config.data_dir.display()
            );
            println!("the data directory no longer opens with {old_kek} (passphrase salt: {salt})\n\nnext:");
            for (i, step) in steps.iter().enumerate() {
                let step = step.trim_end().replace('\n', "\n       ");
                println!("  {}. {step}", i + 1);
            }
            println!("\n{}{}", &warning[..1].to_uppercase(), &warning[1..]);
        }
    }
    Ok(())
}

/// How to destroy a KEK of this kind for good.
fn destroy_advice(kek: &synod_node::config::KekConfig) -> String {
    use synod_node::config::KekConfig;
    match kek {
        KekConfig::File { path } => {
            format!("shred -u {} (and delete every copy of that file, backups included)", path.display())
        }
        KekConfig::Passphrase { .. } => "forget the old passphrase: remove it from every file, secret store and \
                                          credential that holds it"
            .to_string(),
        KekConfig::Pkcs11 { module, token_label, key_label, .. } => format!(
            "delete the key {key_label:?} from token {token_label:?}, e.g. `pkcs11-tool --module {} --login \
             --token-label {token_label} --delete-object --type secrkey --label {key_label}`",
            module.display()
        ),
    }
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

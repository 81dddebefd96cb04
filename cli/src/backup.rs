//! `synod node backup` and `synod node restore` (see `synod_node::backup`).

use std::path::Path;

use anyhow::{bail, Context};
use serde_json::json;
use synod_node::backup::{self, BackupFile, NodeBackup, ShareCheck};
use synod_node::config::{KekConfig, NodeConfig};
use synod_node::server;

use crate::client::ApiClient;
use crate::display::{note, time_ms};
use crate::{ClientArgs, Output};

/// `synod node backup --out FILE`: asks the node at `--addr` for its signed
/// backup and writes it to a new file of mode 0600.
pub async fn node_backup(out: &Path, client: &ClientArgs) -> anyhow::Result<()> {
    if out.exists() {
        bail!("{} already exists; a backup never overwrites a file: name a new one", out.display());
    }
    let api = ApiClient::new(client)?;
    note(format_args!("asking {} for its backup", client.addr));
    let (_, file): (u16, BackupFile) = api.get("/v1/sys/backup").await?;
    let text = serde_json::to_vec_pretty(&file)?;
    let backup: NodeBackup = serde_json::from_str(&file.backup).context("the node's backup does not parse")?;
    synod_node::files::write_new(out, &text, synod_node::files::PRIVATE_MODE)
        .with_context(|| format!("cannot write {}", out.display()))?;
    match client.output.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "file": out,
                "node_id": backup.node_id,
                "cluster_id": backup.cluster_id,
                "log_index": backup.log_index,
                "taken_at_ms": backup.taken_at_ms,
                "kek_backend": backup.kek_backend,
                "shares": backup.shares,
            }))?
        ),
        Output::Table => {
            println!(
                "node {} of cluster {} backed up at log index {} to {} ({} bytes, mode 0600)",
                backup.node_id,
                backup.cluster_name,
                backup.log_index,
                out.display(),
                text.len()
            );
            println!("taken at:     {} (the node's clock)", time_ms(backup.taken_at_ms));
            println!("sealed under: {} ({})", backup.kek, backup.kek_backend);
            print_shares(
                backup
                    .shares
                    .iter()
                    .map(|s| (s.name.as_deref().unwrap_or(&s.key_id), s.version, s.generation, s.current)),
            );
            println!(
                "The file holds ciphertext only; it opens with this node's KEK alone. Keep the KEK's own backup \
                 apart from it. After a refresh or a KEK rotation, take new backups and destroy this one."
            );
        }
    }
    Ok(())
}

fn print_shares<'a>(shares: impl Iterator<Item = (&'a str, u32, u32, bool)>) {
    let mut any = false;
    for (name, version, generation, current) in shares {
        any = true;
        let when = if current { "current" } else { "not current when taken" };
        println!("  share of {name} v{version} generation {generation} ({when})");
    }
    if !any {
        println!("  no key shares");
    }
}

/// `synod node restore FILE --config node.toml [--verify]`.
pub async fn node_restore(file: &Path, config_path: &Path, verify_only: bool, output: Output) -> anyhow::Result<()> {
    let config = NodeConfig::load(config_path)?;
    let ca_der = synod_node::pki::certificate_der(&config.tls.ca_cert)
        .with_context(|| format!("cannot read the CA certificate named by {}", config_path.display()))?;
    let bytes = read_bounded(file)?;
    let backup =
        backup::open(&bytes, &ca_der, config.node_id).with_context(|| format!("{} was refused", file.display()))?;
    let kek = open_backup_kek(&config, config_path, &backup).await?;
    let drilled = {
        let backup = backup.clone();
        tokio::task::spawn_blocking(move || backup::drill(&backup, kek)).await?
    }
    .with_context(|| format!("{} does not open with this node's KEK", file.display()))?;
    if verify_only {
        return report(&backup, &drilled, None, output);
    }
    let store_dir = config.data_dir.join("store");
    let path = config.data_dir.display().to_string();
    let nonempty = std::fs::read_dir(&config.data_dir).map(|mut d| d.next().is_some()).unwrap_or(false);
    if nonempty {
        return Err(backup::BackupError::DataDirNotEmpty { path }.into());
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    std::fs::set_permissions(&config.data_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let store: std::sync::Arc<dyn synod_node::store::Store> =
        std::sync::Arc::new(synod_node::store::SledStore::open(&store_dir)?);
    let ca_fingerprint = synod_node::pki::fingerprint(&ca_der.clone().into());
    if ca_fingerprint != backup.ca_fingerprint {
        bail!(
            "the backup names CA {} but this node's CA is {ca_fingerprint}; report this as a Synod bug",
            backup.ca_fingerprint
        );
    }
    let written = backup::restore(&backup, &*store, &path)?;
    server::check_data_dir(&*store, &config, &ca_fingerprint)?;
    let mut seeded = None;
    if let Some(copy) = &backup.raft {
        let trust = synod_node::raft::snapshot::Trust {
            ca_der: &ca_der,
            cluster_id: None,
            members: None,
            required: config.raft.snapshot_endorsements_min,
            now_ms: now_ms(),
        };
        let last = backup::seed_raft(copy, store.clone(), config.node_id, &trust, config.raft.snapshot_every_entries)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "the backup's committed state was refused ({e}); the data directory {} holds a partial restore: \
                     remove it before trying another backup",
                    config.data_dir.display()
                )
            })?;
        seeded = Some(last);
    }
    drop(store);
    report(&backup, &drilled, Some((written, seeded)), output)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn read_bounded(file: &Path) -> anyhow::Result<Vec<u8>> {
    let len = std::fs::metadata(file).with_context(|| format!("cannot read {}", file.display()))?.len();
    if len > backup::BACKUP_BYTES_MAX as u64 {
        return Err(backup::BackupError::TooLarge { len: len as usize, max: backup::BACKUP_BYTES_MAX }.into());
    }
    std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))
}

/// Opens the KEK node.toml names, as `synod node start` does; a passphrase
/// KEK takes its salt from the backup.
async fn open_backup_kek(
    config: &NodeConfig,
    config_path: &Path,
    backup: &NodeBackup,
) -> anyhow::Result<std::sync::Arc<dyn synod_node::kek::Kek>> {
    let secret = server::kek_secret(&config.kek, || {
        rpassword::prompt_password("KEK passphrase of the backed-up node: ").map(zeroize::Zeroizing::new)
    })?;
    let salt = match config.kek {
        KekConfig::Passphrase { .. } => {
            let records = backup::records_store(backup)?;
            Some(synod_node::sealed::stored_passphrase_salt(&records)?.with_context(|| {
                format!(
                    "{} says the KEK is a passphrase, but the backup holds no passphrase salt: node {} sealed it \
                     under its {} KEK ({}); set [kek] to that KEK",
                    config_path.display(),
                    backup.node_id,
                    backup.kek_backend,
                    backup.kek
                )
            })?)
        }
        _ => None,
    };
    server::open_kek(&config.kek, secret, salt)
        .await
        .with_context(|| format!("cannot open the KEK of {} ([kek])", config_path.display()))
}

fn report(
    backup: &NodeBackup,
    drilled: &[ShareCheck],
    written: Option<(usize, Option<u64>)>,
    output: Output,
) -> anyhow::Result<()> {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "node_id": backup.node_id,
                "cluster_id": backup.cluster_id,
                "log_index": backup.log_index,
                "taken_at_ms": backup.taken_at_ms,
                "kek_backend": backup.kek_backend,
                "shares": drilled,
                "restored_records": written.map(|(n, _)| n),
                "restored_log_index": written.and_then(|(_, last)| last),
            }))?
        ),
        Output::Table => {
            let verb = if written.is_some() { "restored" } else { "verified" };
            println!(
                "backup of node {} (cluster {}, log index {}, taken at {}) {verb}: every share unsealed with this \
                 node's KEK ({})",
                backup.node_id,
                backup.cluster_name,
                backup.log_index,
                time_ms(backup.taken_at_ms),
                backup.kek_backend
            );
            for c in drilled {
                let against = if c.checked_against_state {
                    "matches the committed verifying share"
                } else {
                    "consistent in itself (not the current generation when taken)"
                };
                println!(
                    "  {} v{} generation {}: {against}",
                    c.name.as_deref().unwrap_or(&c.key_id),
                    c.version,
                    c.generation
                );
            }
            if let Some((n, seeded)) = written {
                match seeded {
                    Some(last) => println!(
                        "{n} sealed records and the committed state up to log index {last} written (its snapshot \
                         verified). Writes after that index are not in this backup."
                    ),
                    None => println!("{n} sealed records written; the node catches up its log from its peers."),
                }
                println!(
                    "Start the node: it votes only once a majority of the other voters has answered (its vote is not \
                     in the backup), catches up, deletes shares of generations no longer current, and reports any \
                     key whose current share it lacks (`synod status` shows shares_missing); give it back with \
                     `synod key repair NAME --node {}`.",
                    backup.node_id
                );
            }
        }
    }
    Ok(())
}

//! Key and signing commands: `synod key ...`, `synod sign`, `synod verify`,
//! `synod request ...`. They speak the HTTPS API like every client command.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use ed25519_dalek::pkcs8::DecodePrivateKey;
use frost_ed25519 as frost;
use synod_proto::api::{ImportShare, KeyInfo, KeyList, KeyStatus, KeyVersionInfo, Status, WriteResponse};
use synod_proto::command::MESSAGE_BYTES_MAX;
use synod_proto::keyfmt::{self, SignatureFormat};
use synod_proto::rpc::SecretHex;
use synod_proto::{Command, NodeId, Outcome};
use zeroize::Zeroizing;

use super::client::{cluster_id, sign as sign_command, ApiClient};
use super::display::{note, shown, time_ms, time_ms_or_dash};
use super::{ClientArgs, KeyCmd, Output, SignArgs, VerifyArgs};

/// How often progress is polled while waiting for a key.
const POLL: Duration = Duration::from_millis(200);
/// How long `key create` and `key import` wait for the key to turn active.
const KEY_WAIT: Duration = Duration::from_secs(150);

/// `synod key ...`.
pub async fn key(cmd: KeyCmd) -> anyhow::Result<()> {
    match cmd {
        KeyCmd::Create { name, threshold, participants, policy, client } => {
            let policy = super::authz::key_policy(&policy)?;
            let unset = policy.is_none();
            let key = create(&client, &name, threshold, participants, policy).await?;
            print_key(&client, &key)?;
            if unset {
                note(format_args!(
                    "Key {name} has no signing policy, so it signs nothing yet. Set one with \
                     `synod key policy set {name} --file policy.json` (or create keys with --policy FILE or \
                     --open-policy)."
                ));
            }
            Ok(())
        }
        KeyCmd::Import { name, key_file, threshold, participants, policy, client } => {
            let policy = super::authz::key_policy(&policy)?;
            import(&client, &name, &key_file, threshold, participants, policy).await
        }
        KeyCmd::Rotate { name, threshold, participants, overlap, client } => {
            let overlap_ms = u64::try_from(overlap.as_millis()).unwrap_or(u64::MAX);
            rotate(&client, &name, threshold, participants, overlap_ms).await?;
            let key = get_key(&ApiClient::new(&client)?, &name).await?;
            print_key(&client, &key)
        }
        KeyCmd::Refresh { name, every, no_schedule, client, .. } if every.is_some() || no_schedule => {
            let every_ms = every.map(|e| u64::try_from(e.as_millis()).unwrap_or(u64::MAX));
            let command = Command::SetRefreshSchedule { key: name, every_ms };
            super::authz::submit(&client, "/v1/commands", command).await.map(drop)
        }
        KeyCmd::Refresh { name, remove, client, .. } => {
            let key = refresh(&client, &name, remove).await?;
            print_key(&client, &key)
        }
        KeyCmd::Repair { name, node, client } => {
            let key = repair(&client, &name, node).await?;
            print_key(&client, &key)
        }
        KeyCmd::List(client) => {
            let (_, list): (u16, KeyList) = ApiClient::new(&client)?.get("/v1/keys").await?;
            match client.output.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&list)?),
                Output::Table => {
                    println!(
                        "{:<24} {:>3} {:<17} {:<10} {:<9} {:<24} PUBLIC KEY",
                        "NAME", "V", "STATUS", "ORIGIN", "T-OF-N", "CREATED"
                    );
                    let mut keys: Vec<&KeyInfo> = list.keys.iter().collect();
                    keys.sort_by(|a, b| (&a.name, a.version).cmp(&(&b.name, b.version)));
                    for k in keys {
                        let tn = format!("{}-of-{}", k.threshold, k.participants.len());
                        let public = k.public_key.as_deref().unwrap_or("-");
                        println!(
                            "{:<24} {:>3} {:<17} {:<10} {:<9} {:<24} {public}",
                            shown(&k.name),
                            k.version,
                            k.status,
                            shown(&k.origin),
                            tn,
                            time_ms(k.created_at_ms)
                        );
                    }
                }
            }
            Ok(())
        }
        KeyCmd::Policy(cmd) => super::authz::policy(cmd).await,
        KeyCmd::Csr(args) => super::formats::cms::csr(args).await,
        KeyCmd::Certificate(args) => super::formats::cms::certificate(args).await,
        KeyCmd::Openpgp(args) => super::formats::openpgp::key(args).await,
        KeyCmd::Show { name, format, client } => {
            let key = get_key(&ApiClient::new(&client)?, &name).await?;
            if format == Some(keyfmt::PublicKeyFormat::Jwks) {
                println!("{:#}", keyfmt::public_keys_jwks(&signing_public_keys(&key)?));
                return Ok(());
            }
            if let Some(format) = format {
                let public = public_key_of(&key)?;
                let text = keyfmt::format_public_key(&public, format, &key.name);
                match client.output.output {
                    // The key in its format as a string field, so a program reads it like any other answer.
                    Output::Json => println!(
                        "{}",
                        serde_json::to_string_pretty(&serde_json::json!({
                            "name": key.name,
                            "version": key.version,
                            "format": format.to_string(),
                            "public_key": text.trim_end(),
                        }))?
                    ),
                    Output::Table => println!("{}", text.trim_end()),
                }
                return Ok(());
            }
            print_key(&client, &key)
        }
        KeyCmd::Disable { name, client } => {
            super::authz::submit(&client, "/v1/commands", Command::DisableKey { key: name }).await.map(drop)
        }
        KeyCmd::Enable { name, client } => {
            super::authz::submit(&client, "/v1/commands", Command::EnableKey { key: name }).await.map(drop)
        }
        KeyCmd::Destroy { name, cancel: true, client, .. } => {
            super::authz::submit(&client, "/v1/commands", Command::CancelKeyDestroy { key: name }).await.map(drop)
        }
        KeyCmd::Destroy { name, after, client, .. } => {
            let wait_ms = after.map_or(synod_proto::command::KEY_DESTROY_WAIT_DEFAULT_MS, |after| {
                u64::try_from(after.as_millis()).unwrap_or(u64::MAX)
            });
            let command = Command::ScheduleKeyDestroy { key: name.clone(), wait_ms };
            super::authz::submit(&client, "/v1/commands", command).await?;
            if client.output.output == Output::Table {
                note(format_args!(
                    "Until the deadline, `synod key destroy {} --cancel` stops it. What deletion cannot reach: \
                     earlier blocks of each node's store and any backup or copy of a data directory may still \
                     hold the sealed shares until each node's KEK is rotated (`synod kek rotate`) and the old \
                     KEK destroyed.",
                    shown(&name)
                ));
            }
            Ok(())
        }
    }
}

async fn get_key(api: &ApiClient, name: &str) -> anyhow::Result<KeyInfo> {
    let (_, key): (u16, KeyInfo) = api.get(&format!("/v1/keys/{name}")).await?;
    Ok(key)
}

/// The public keys of a key's versions that still sign (active or retiring),
/// the primary first: what a JWKS publishes during a rotation's overlap.
fn signing_public_keys(key: &KeyInfo) -> anyhow::Result<Vec<[u8; 32]>> {
    if key.versions.is_empty() {
        return Ok(vec![public_key_of(key)?]);
    }
    let mut versions: Vec<&KeyVersionInfo> = key
        .versions
        .iter()
        .filter(|v| matches!(v.status, KeyStatus::Active | KeyStatus::Retiring) && v.public_key.is_some())
        .collect();
    versions.sort_by_key(|v| (!v.primary, std::cmp::Reverse(v.version)));
    if versions.is_empty() {
        bail!("key {} has no version that signs (status {})", shown(&key.name), key.status);
    }
    versions
        .iter()
        .map(|v| keyfmt::parse_public_key(v.public_key.as_deref().unwrap_or_default()).map_err(|e| anyhow!("{e}")))
        .collect()
}

fn public_key_of(key: &KeyInfo) -> anyhow::Result<[u8; 32]> {
    let hex_key = key.public_key.as_deref().ok_or_else(|| anyhow!("key {} has no public key yet", key.name))?;
    keyfmt::parse_public_key(hex_key).map_err(|e| anyhow!("{e}"))
}

fn print_key(client: &ClientArgs, key: &KeyInfo) -> anyhow::Result<()> {
    match client.output.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(key)?),
        Output::Table => {
            println!("name:          {}", shown(&key.name));
            println!("id:            {}", shown(&key.id));
            println!("version:       {}", key.version);
            println!("status:        {}", key.status);
            println!("origin:        {}", key.origin);
            println!(
                "threshold:     {} of {} (participants {:?})",
                key.threshold,
                key.participants.len(),
                key.participants
            );
            println!("public key:    {}", key.public_key.as_deref().unwrap_or("-"));
            println!("created:       {} (log time)", time_ms(key.created_at_ms));
            println!("activated:     {}", time_ms_or_dash(key.activated_at_ms));
            if key.generation > 0 || key.refresh.is_some() {
                let when = key.refreshed_at_ms.map(|at| format!(" (refreshed {}, log time)", time_ms(at)));
                println!("generation:    {}{}", key.generation, when.unwrap_or_default());
            }
            if let (Some(every), Some(due)) = (key.refresh_every_ms, key.refresh_due_at_ms) {
                let due = time_ms(due);
                let every = humantime::format_duration(Duration::from_millis(every));
                println!("refresh every: {every} (next at {due}, log time)");
            }
            if let Some(refresh) = &key.refresh {
                let n = key.participants.len();
                println!(
                    "refreshing:    to generation {} since {}: round-1 packages {}/{n}, confirmed {}/{n}",
                    refresh.generation,
                    time_ms(refresh.started_at_ms),
                    refresh.round1_received.len(),
                    refresh.confirmed.len()
                );
            }
            if let Some(failed) = &key.refresh_failed {
                println!("last refresh:  {}", shown(failed));
            }
            if let Some(repair) = &key.repair {
                let what = if repair.enrolling { "enrolling" } else { "repairing" };
                println!(
                    "{what:<14} node {} since {} (helpers {:?}, committed {}/{})",
                    repair.target,
                    time_ms(repair.started_at_ms),
                    repair.helpers,
                    repair.committed.len(),
                    repair.helpers.len()
                );
            }
            if let Some(failed) = &key.repair_failed {
                println!("last repair:   {}", shown(failed));
            }
            if key.policy_unset {
                println!("policy:        none yet: signs nothing until `synod key policy set`");
            } else {
                println!(
                    "policy:        version {} (`synod key policy show {}`)",
                    key.policy_version,
                    shown(&key.name)
                );
            }
            if let Some(reason) = &key.abort_reason {
                println!("aborted:       {}", shown(reason));
            }
            if let Some(at) = key.retire_at_ms {
                println!("retires:       {} (log time; it verifies afterwards)", time_ms(at));
            }
            if let Some(at) = key.destroy_at_ms {
                let when = time_ms(at);
                let verb = if key.status == KeyStatus::Destroyed { "destroyed" } else { "destroy at" };
                println!("{verb:<14} {when} (log time)");
            }
            if !key.shares_missing.is_empty() {
                println!("shares missing: nodes {:?} (their data directories lost them)", key.shares_missing);
            }
            if key.status == KeyStatus::Destroyed {
                println!("shares gone:   {:?} of {:?}", key.shares_destroyed, key.participants);
            }
            if key.versions.len() > 1 {
                println!("versions:");
                for v in &key.versions {
                    let primary = if v.primary { " (primary)" } else { "" };
                    let until = v
                        .retire_at_ms
                        .filter(|_| v.status == KeyStatus::Retiring)
                        .map(|at| format!(" until {}", time_ms(at)));
                    println!(
                        "  v{:<4} {:<17} {}-of-{} activated {:<24} {}{primary}{}",
                        v.version,
                        v.status.to_string(),
                        v.threshold,
                        v.participants.len(),
                        time_ms_or_dash(v.activated_at_ms),
                        v.public_key.as_deref().unwrap_or("-"),
                        until.unwrap_or_default()
                    );
                }
            }
        }
    }
    Ok(())
}

/// Every member's id, for the default participant list.
async fn members(api: &ApiClient) -> anyhow::Result<Status> {
    let (_, status): (u16, Status) = api.get("/v1/sys/status").await?;
    Ok(status)
}

fn default_threshold(n: usize) -> u16 {
    (n / 2 + 1).max(2) as u16
}

/// Generates a key by DKG and waits, with progress on stderr, until it is active.
pub async fn create(
    client: &ClientArgs,
    name: &str,
    threshold: Option<u16>,
    participants: Vec<NodeId>,
    policy: Option<synod_proto::authz::Policy>,
) -> anyhow::Result<KeyInfo> {
    let api = ApiClient::new(client)?;
    let status = members(&api).await?;
    let participants =
        if participants.is_empty() { status.members.iter().map(|m| m.node_id).collect() } else { participants };
    let threshold = threshold.unwrap_or_else(|| default_threshold(participants.len()));
    let cluster = cluster_id(&status)?;
    let command = Command::CreateKey { name: name.to_string(), threshold, participants, policy };
    let signed = sign_command(client, &cluster, command)?;
    let (_, response): (u16, WriteResponse) = api.post("/v1/keys", &signed).await?;
    refused(&response)?;
    proposed(&response, name)?;
    let key_id = key_id_of(&signed)?;
    note(format_args!(
        "generating key {name} ({threshold} of {}): distributed key generation started",
        status.members.len()
    ));
    wait_active(&api, &key_id).await
}

/// Starts a new version of `name` by DKG and waits, with progress on stderr,
/// until it is active (and so the primary).
async fn rotate(
    client: &ClientArgs,
    name: &str,
    threshold: Option<u16>,
    participants: Vec<NodeId>,
    overlap_ms: u64,
) -> anyhow::Result<KeyInfo> {
    let api = ApiClient::new(client)?;
    let current = get_key(&api, name).await?;
    let status = members(&api).await?;
    let participants = if participants.is_empty() { current.participants.clone() } else { participants };
    let threshold = threshold.unwrap_or(current.threshold);
    let n = participants.len();
    let command = Command::RotateKey { name: name.to_string(), threshold, participants, overlap_ms };
    let signed = sign_command(client, &cluster_id(&status)?, command)?;
    let (_, response): (u16, WriteResponse) = api.post("/v1/keys", &signed).await?;
    refused(&response)?;
    proposed(&response, name)?;
    let key_id = key_id_of(&signed)?;
    note(format_args!(
        "rotating key {name}: version {} stays primary while the new version is generated ({threshold} of {n})",
        current.version
    ));
    wait_active(&api, &key_id).await
}

/// Refreshes the shares of `name`'s primary version and waits, with
/// progress on stderr, until the new generation is current or the refresh
/// was aborted.
async fn refresh(client: &ClientArgs, name: &str, remove: Vec<NodeId>) -> anyhow::Result<KeyInfo> {
    let api = ApiClient::new(client)?;
    let before = get_key(&api, name).await?;
    let status = members(&api).await?;
    let command = Command::RefreshKey { key: name.to_string(), remove: remove.clone() };
    let signed = sign_command(client, &cluster_id(&status)?, command)?;
    let (_, response): (u16, WriteResponse) = api.post("/v1/keys", &signed).await?;
    refused(&response)?;
    proposed(&response, name)?;
    let n = before.participants.len() - before.participants.iter().filter(|p| remove.contains(p)).count();
    note(format_args!(
        "refreshing key {name} version {}: generation {} signs until every participant holds generation {}",
        before.version,
        before.generation,
        before.generation + 1
    ));
    let deadline = tokio::time::Instant::now() + KEY_WAIT;
    let mut last = String::new();
    loop {
        let key = match get_key(&api, &before.id).await {
            Ok(key) => key,
            // A node may restart while its key refreshes; the refresh goes on without it.
            Err(e) if tokio::time::Instant::now() < deadline => {
                let unreachable = format!("  cannot read the key now ({e}); retrying");
                if unreachable != last {
                    note(format_args!("{unreachable}"));
                    last = unreachable;
                }
                tokio::time::sleep(POLL).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        match &key.refresh {
            None if key.generation > before.generation => {
                note(format_args!(
                    "key {} version {}: generation {} is current; every node deletes its share of generation {}",
                    shown(&key.name),
                    key.version,
                    key.generation,
                    before.generation
                ));
                return Ok(key);
            }
            None => bail!(
                "{}. Run `synod key refresh {}` again once every participant is up",
                shown(key.refresh_failed.as_deref().unwrap_or("the refresh was aborted")),
                shown(name)
            ),
            Some(refresh) => {
                let progress = format!(
                    "round-1 packages {}/{n}, new shares sealed and confirmed {}/{n}",
                    refresh.round1_received.len(),
                    refresh.confirmed.len()
                );
                if progress != last {
                    note(format_args!("  {progress}"));
                    last = progress;
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("key {} is still refreshing after {} s ({last})", shown(name), KEY_WAIT.as_secs());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Gives `node` its share of `name`'s primary version and waits, with
/// progress on stderr, until it holds it or the repair was aborted.
async fn repair(client: &ClientArgs, name: &str, node: NodeId) -> anyhow::Result<KeyInfo> {
    let api = ApiClient::new(client)?;
    let before = get_key(&api, name).await?;
    let status = members(&api).await?;
    let command = Command::RepairShare { key: name.to_string(), target: node };
    let signed = sign_command(client, &cluster_id(&status)?, command)?;
    let (_, response): (u16, WriteResponse) = api.post("/v1/commands", &signed).await?;
    refused(&response)?;
    proposed(&response, name)?;
    if let Outcome::Applied { detail } = &response.outcome {
        note(format_args!("{}", shown(detail)));
    }
    let deadline = tokio::time::Instant::now() + KEY_WAIT;
    let mut last = String::new();
    loop {
        let key = get_key(&api, &before.id).await?;
        match &key.repair {
            None if key.repair_failed.is_none() => {
                note(format_args!(
                    "node {node} holds its share of key {} again. Run `synod key refresh {}` once every participant                      is up, so that a copy of the lost share stops combining with the others",
                    shown(&key.name),
                    shown(&key.name)
                ));
                return Ok(key);
            }
            None => bail!(
                "{}. Run `synod key repair {} --node {node}` again (other helpers are chosen without a named culprit)",
                shown(key.repair_failed.as_deref().unwrap_or("the repair was aborted")),
                shown(name)
            ),
            Some(repair) => {
                let progress = format!("helpers' commitments {}/{}", repair.committed.len(), repair.helpers.len());
                if progress != last {
                    note(format_args!("  {progress}"));
                    last = progress;
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("key {} is still repairing after {} s ({last})", shown(name), KEY_WAIT.as_secs());
        }
        tokio::time::sleep(POLL).await;
    }
}

fn key_id_of(signed: &synod_proto::SignedCommand) -> anyhow::Result<String> {
    let envelope: synod_proto::Envelope = serde_json::from_str(&signed.envelope)?;
    Ok(envelope.command_id)
}

/// Under an admin quorum the command is only proposed: nothing to wait for
/// until the other admins agree.
fn proposed(response: &WriteResponse, name: &str) -> anyhow::Result<()> {
    if let Outcome::Applied { detail } = &response.outcome {
        if detail.starts_with("proposal ") && detail.contains("admin approvals") {
            bail!("{detail}. Key {name} is made once enough admins agree; then watch it with `synod key show {name}`");
        }
    }
    Ok(())
}

fn refused(response: &WriteResponse) -> anyhow::Result<()> {
    if let Outcome::Rejected { reason, .. } = &response.outcome {
        bail!("the cluster refused the command: {reason}");
    }
    Ok(())
}

/// Waits for a key to turn active, printing progress to stderr.
async fn wait_active(api: &ApiClient, key_id: &str) -> anyhow::Result<KeyInfo> {
    let deadline = tokio::time::Instant::now() + KEY_WAIT;
    let mut last = String::new();
    loop {
        let key = get_key(api, key_id).await?;
        let n = key.participants.len();
        let progress =
            format!("round-1 packages {}/{n}, confirmations {}/{n}", key.round1_received.len(), key.confirmed.len());
        match key.status {
            KeyStatus::Active if key.version > 1 => {
                note(format_args!("key {} version {} is active and is now the primary", shown(&key.name), key.version));
                return Ok(key);
            }
            KeyStatus::Active => {
                note(format_args!("key {} is active", shown(&key.name)));
                return Ok(key);
            }
            KeyStatus::Aborted if key.version > 1 => {
                let culprit = key.culprit.map(|c| format!(" (culprit: node {c})")).unwrap_or_default();
                bail!(
                    "rotation aborted: {}{culprit}. The previous version stays primary; run `synod key rotate {}` \
                     again (without a culprit among --participants)",
                    key.abort_reason.unwrap_or_default(),
                    shown(&key.name)
                )
            }
            KeyStatus::Aborted => {
                let advice = match key.culprit {
                    Some(culprit) => {
                        let others: Vec<String> =
                            key.participants.iter().filter(|p| **p != culprit).map(|p| p.to_string()).collect();
                        format!(
                            " (culprit: node {culprit}). The name is free again: investigate node {culprit}, or \
                             create the key without it (--participants {})",
                            others.join(",")
                        )
                    }
                    None => ". The name is free again: run `synod key create` again".to_string(),
                };
                bail!("key generation aborted: {}{advice}", key.abort_reason.unwrap_or_default())
            }
            _ if progress != last => {
                note(format_args!("  {progress}"));
                last = progress;
            }
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("key {} is still generating after {} s ({last})", key.name, KEY_WAIT.as_secs());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Splits an existing Ed25519 key on this machine and sends each share to its
/// node over TLS to that node's own certificate; the key never reaches a node whole.
async fn import(
    client: &ClientArgs,
    name: &str,
    key_file: &Path,
    threshold: Option<u16>,
    participants: Vec<NodeId>,
    policy: Option<synod_proto::authz::Policy>,
) -> anyhow::Result<()> {
    let api = ApiClient::new(client)?;
    let status = members(&api).await?;
    let participants: Vec<NodeId> =
        if participants.is_empty() { status.members.iter().map(|m| m.node_id).collect() } else { participants };
    let threshold = threshold.unwrap_or_else(|| default_threshold(participants.len()));
    let (shares, public) = split_key_file(key_file, threshold, &participants)?;
    let package = hex::encode(public.serialize().map_err(|e| anyhow!("{e}"))?);
    let cluster = cluster_id(&status)?;
    let command = Command::ImportKey {
        name: name.to_string(),
        threshold,
        participants: participants.clone(),
        public_key_package: package,
        policy,
    };
    let signed = sign_command(client, &cluster, command)?;
    let (_, response): (u16, WriteResponse) = api.post("/v1/keys", &signed).await?;
    refused(&response)?;
    let key_id = key_id_of(&signed)?;
    let addrs: BTreeMap<NodeId, String> = status.members.iter().map(|m| (m.node_id, m.addr.api_addr.clone())).collect();
    for (node, share) in shares {
        let addr = addrs.get(&node).ok_or_else(|| anyhow!("node {node} has no API address in the member list"))?;
        let node_api = ApiClient::for_node(client, node, addr).await?;
        let body = ImportShare { key_id: key_id.clone(), share };
        let _: (u16, serde_json::Value) = node_api
            .post(&format!("/v1/keys/{name}/share"), &body)
            .await
            .with_context(|| format!("sending node {node} its share"))?;
        note(format_args!("  share sealed on node {node}"));
    }
    let key = wait_active(&api, &key_id).await?;
    print_key(client, &key)
}

/// Reads an Ed25519 PKCS#8 PEM key and splits it into one share per participant.
/// The key and its scalar are zeroized when this returns.
fn split_key_file(
    path: &Path,
    threshold: u16,
    participants: &[NodeId],
) -> anyhow::Result<(BTreeMap<NodeId, SecretHex>, frost::keys::PublicKeyPackage)> {
    let pem = Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("cannot read key file {}", path.display()))?,
    );
    let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem).map_err(|_| {
        anyhow!(
            "{} is not an Ed25519 private key in PKCS#8 PEM (e.g. from `openssl genpkey -algorithm ed25519`)",
            path.display()
        )
    })?;
    let scalar = Zeroizing::new(key.to_scalar().to_bytes());
    drop(key);
    let frost_key = frost::SigningKey::deserialize(&*scalar).map_err(|e| anyhow!("cannot use the key: {e}"))?;
    let ids: Vec<frost::Identifier> = participants
        .iter()
        .map(|n| u16::try_from(*n).ok().and_then(|n| frost::Identifier::try_from(n).ok()))
        .collect::<Option<_>>()
        .ok_or_else(|| anyhow!("participant ids must be 1 to 65535"))?;
    let n = participants.len() as u16;
    let (shares, public) =
        frost::keys::split(&frost_key, n, threshold, frost::keys::IdentifierList::Custom(&ids), &mut rand_core::OsRng)
            .map_err(|e| anyhow!("cannot split the key {threshold} of {n}: {e}"))?;
    drop(frost_key);
    let mut out = BTreeMap::new();
    for (node, id) in participants.iter().zip(&ids) {
        let share = shares.get(id).ok_or_else(|| anyhow!("no share for node {node}"))?;
        let bytes = Zeroizing::new(share.serialize().map_err(|e| anyhow!("{e}"))?);
        out.insert(*node, SecretHex::new(hex::encode(&*bytes)));
    }
    Ok((out, public))
}

/// `synod sign`.
pub async fn sign(args: SignArgs) -> anyhow::Result<()> {
    let format = args.format.format;
    if format != synod_proto::format::SignFormat::Raw {
        return super::formats::sign(format, args).await;
    }
    let message = read_message(&args.input)?;
    let signer = super::formats::ClusterSigner::of(&args).await?;
    let super::formats::Signed { signature, info } =
        signer.sign(synod_proto::format::SignFormat::Raw, &message, None).await?;
    let request_id = info.request_id.clone();
    if args.client.output.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    }
    let format =
        args.signature_format.unwrap_or(if args.out.is_some() { SignatureFormat::Raw } else { SignatureFormat::Hex });
    let encoded = keyfmt::encode_signature(&signature, format);
    match &args.out {
        Some(path) => {
            std::fs::write(path, &encoded).with_context(|| format!("cannot write {}", path.display()))?;
            note(format_args!("signature for request {} written to {}", shown(&request_id), path.display()));
        }
        None if args.client.output.output == Output::Table => {
            use std::io::Write;
            std::io::stdout().write_all(&encoded)?;
        }
        None => {}
    }
    Ok(())
}

pub fn read_message(path: &Path) -> anyhow::Result<Vec<u8>> {
    let len = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?.len();
    if len > MESSAGE_BYTES_MAX as u64 {
        bail!(
            "{} is {len} bytes; a message may be at most {MESSAGE_BYTES_MAX} bytes. Sign a SHA-256 digest of large artifacts instead",
            path.display()
        );
    }
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// `synod verify`: offline with `--public-key`, or with the public keys of a
/// cluster key's versions, naming the version that verifies.
pub async fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    // (version, public key): the version is known only for a cluster key.
    let candidates: Vec<(Option<u32>, [u8; 32])> = match (&args.public_key, &args.key) {
        (Some(text_or_file), _) => {
            let text = match std::fs::read_to_string(text_or_file) {
                Ok(text) => text,
                Err(_) => text_or_file.clone(),
            };
            vec![(None, keyfmt::parse_public_key(&text).map_err(|e| anyhow!("{e}"))?)]
        }
        (None, Some(name)) => {
            let key = get_key(&ApiClient::new(&args.client)?, name).await?;
            let versions: Vec<(Option<u32>, [u8; 32])> = key
                .versions
                .iter()
                .rev()
                .filter_map(|v| Some((Some(v.version), keyfmt::parse_public_key(v.public_key.as_deref()?).ok()?)))
                .collect();
            if versions.is_empty() {
                vec![(Some(key.version), public_key_of(&key)?)]
            } else {
                versions
            }
        }
        (None, None) => bail!("name the key with --key NAME (asks the cluster) or --public-key FILE|HEX (offline)"),
    };
    let format = args.format.format;
    let (version, public) = if format == synod_proto::format::SignFormat::Raw {
        verify_raw(&args, &candidates)?
    } else {
        super::formats::verify(format, &args, &candidates)?
    };
    match args.client.output.output {
        Output::Json => {
            let mut shown = serde_json::json!({
                "valid": true,
                "format": format,
                "public_key": hex::encode(public),
                "key_version": version
            });
            // A token's header and payload are what its verifier acts on: show them.
            if matches!(format, synod_proto::format::SignFormat::Jws | synod_proto::format::SignFormat::Jwt) {
                if let serde_json::Value::Object(contents) = super::formats::jws::contents(format, &args)? {
                    shown.as_object_mut().expect("a JSON object").extend(contents);
                }
            }
            println!("{shown}")
        }
        Output::Table => match version {
            Some(v) => {
                println!("signature is valid ({format}, Ed25519, key version {v}, public key {})", hex::encode(public))
            }
            None => println!("signature is valid ({format}, Ed25519, public key {})", hex::encode(public)),
        },
    }
    Ok(())
}

/// A raw RFC 8032 signature of the file: the candidate that verifies it.
fn verify_raw(args: &VerifyArgs, candidates: &super::formats::Candidates) -> anyhow::Result<(Option<u32>, [u8; 32])> {
    let message = std::fs::read(&args.input).with_context(|| format!("cannot read {}", args.input.display()))?;
    let path = args.signature.as_ref().ok_or_else(|| anyhow!("give the signature file with --signature FILE"))?;
    let sig_bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let signature = keyfmt::decode_signature(&sig_bytes).map_err(|e| anyhow!("{e}"))?;
    let mut last_error = None;
    let matched = candidates.iter().find(|(_, public)| match keyfmt::verify(public, &message, &signature) {
        Ok(()) => true,
        Err(e) => {
            last_error = Some(e);
            false
        }
    });
    let Some(found) = matched else {
        let error = last_error.map(|e| e.to_string()).unwrap_or_default();
        if candidates.len() > 1 {
            bail!("{error} (tried all {} versions of the key)", candidates.len());
        }
        bail!("{error}");
    };
    Ok(*found)
}

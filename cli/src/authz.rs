//! Operators, policies, requests with approvals, admin proposals and the audit
//! log: `synod operator add|remove|list`, `synod key policy ...`, `synod request
//! sign|list|show|wait|statement|deny|cancel`, `synod approve`, `synod admin ...`, `synod audit ...`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use ed25519_dalek::Signer as _;
use serde_json::Value;
use synod_proto::api::{KeyInfo, RequestInfo, RequestList, RequestStatus, Status, WriteResponse};
use synod_proto::authz::{approval_bytes, denial_bytes, ApprovalSignature, ApprovalStatement, Policy};
use synod_proto::{Command, OperatorKey, Outcome, SignedCommand};

use super::client::{cluster_id, sign as sign_command, ApiClient};
use super::display::{note, shown, time_ms, time_ms_or_dash};
use super::operator::load_operator_key;
use super::{AdminCmd, ApproveArgs, AuditCmd, ClientArgs, Output, PolicyCmd, RequestCmd};
use synod_node::state::{verify_chain, AuditHead, AuditRecord};

/// How often `request wait` polls.
const POLL: Duration = Duration::from_millis(500);
/// The longest a request made with `synod request sign` stays open for approvals by default.
pub const REQUEST_TTL_SECS_DEFAULT: u64 = 3600;

async fn status_of(api: &ApiClient) -> anyhow::Result<Status> {
    let (_, status): (u16, Status) = api.get("/v1/sys/status").await?;
    Ok(status)
}

/// Signs `command` and posts it to `path`; fails with the reason when the cluster refused it.
pub(crate) async fn submit(client: &ClientArgs, path: &str, command: Command) -> anyhow::Result<WriteResponse> {
    let api = ApiClient::new(client)?;
    let cluster = cluster_id(&status_of(&api).await?)?;
    let signed = sign_command(client, &cluster, command)?;
    let (_, response): (u16, WriteResponse) = api.post(path, &signed).await?;
    print_write(client, &response)?;
    Ok(response)
}

fn print_write(client: &ClientArgs, response: &WriteResponse) -> anyhow::Result<()> {
    match client.output.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(response)?),
        Output::Table => match &response.outcome {
            Outcome::Applied { detail } => println!("{}", shown(detail)),
            Outcome::Rejected { .. } | Outcome::Internal => {}
        },
    }
    if let Outcome::Rejected { reason, .. } = &response.outcome {
        bail!("the cluster refused it: {reason}");
    }
    Ok(())
}

/// Reads a public key given as 64 hex characters or an Ed25519 PKCS#8/SPKI PEM file.
fn read_operator_key(text: &str) -> anyhow::Result<OperatorKey> {
    if let Ok(key) = OperatorKey::from_hex(text) {
        return Ok(key);
    }
    let path = Path::new(text);
    let content = std::fs::read_to_string(path)
        .with_context(|| format!("{text:?} is neither 64 hex characters nor a readable key file"))?;
    if content.contains("PRIVATE KEY") {
        return Ok(OperatorKey::of(&load_operator_key(path)?));
    }
    let key = synod_proto::keyfmt::parse_public_key(&content).map_err(|e| anyhow!("{e}"))?;
    Ok(OperatorKey(key))
}

/// `synod operator add|remove|list`.
pub async fn operator(cmd: super::OperatorCmd) -> anyhow::Result<()> {
    match cmd {
        super::OperatorCmd::Add { name, key, ssh_key, roles, pending_max, client } => {
            let key = key.as_deref().map(read_operator_key).transpose()?;
            let ssh_key = match ssh_key {
                Some(text) if Path::new(&text).exists() => Some(
                    std::fs::read_to_string(&text).with_context(|| format!("cannot read {text}"))?.trim().to_string(),
                ),
                other => other,
            };
            if let Some(line) = &ssh_key {
                synod_proto::sshsig::SshPublicKey::parse(line).map_err(|e| anyhow!("--ssh-key: {e}"))?;
            }
            submit(&client, "/v1/commands", Command::AddOperator { name, key, ssh_key, roles, pending_max }).await?;
        }
        super::OperatorCmd::Remove { name, client } => {
            submit(&client, "/v1/commands", Command::RemoveOperator { name }).await?;
        }
        super::OperatorCmd::List(client) => {
            let (_, list): (u16, Value) = ApiClient::new(&client)?.get("/v1/operators").await?;
            match client.output.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&list)?),
                Output::Table => {
                    println!("{:<24} {:<36} {:<10} KEY", "NAME", "ROLES", "SSH");
                    for op in list["operators"].as_array().into_iter().flatten() {
                        let roles: Vec<&str> =
                            op["roles"].as_array().into_iter().flatten().filter_map(|r| r.as_str()).collect();
                        println!(
                            "{:<24} {:<36} {:<10} {}",
                            shown(op["name"].as_str().unwrap_or("-")),
                            shown(&roles.join(",")),
                            if op["ssh_key"].is_null() { "-" } else { "yes" },
                            shown(op["key"].as_str().unwrap_or("-"))
                        );
                    }
                    println!("admin operations need {} admin(s)", list["admin_approvals_required"]);
                }
            }
        }
        super::OperatorCmd::Passkey(cmd) => return super::passkey::passkey(cmd).await,
        other => return super::operator::operator(other),
    }
    Ok(())
}

/// `synod key policy set|show`.
pub async fn policy(cmd: PolicyCmd) -> anyhow::Result<()> {
    match cmd {
        PolicyCmd::Set { name, file, client } => {
            let policy = read_policy(&file)?;
            submit(&client, "/v1/commands", Command::SetPolicy { key: name, policy }).await?;
        }
        PolicyCmd::Show { name, client } => {
            let (_, key): (u16, KeyInfo) = ApiClient::new(&client)?.get(&format!("/v1/keys/{name}")).await?;
            match client.output.output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "policy_version": key.policy_version,
                        "policy": key.policy,
                    }))?
                ),
                Output::Table => print_policy(&key),
            }
        }
    }
    Ok(())
}

/// A key's policy as a `key: value` list; empty lists say what they allow.
fn print_policy(key: &KeyInfo) {
    let list = |names: &[String], empty: &str| {
        if names.is_empty() {
            empty.to_string()
        } else {
            names.iter().map(|n| shown(n).to_string()).collect::<Vec<_>>().join(", ")
        }
    };
    let policy = &key.policy;
    println!("key:                {}", shown(&key.name));
    if key.policy_unset {
        println!("policy:             none yet: signs nothing until `synod key policy set`");
        return;
    }
    println!("policy version:     {}", key.policy_version);
    println!("requesters:         {}", list(&policy.requesters, "any operator with the requester role"));
    println!("approvers:          {}", list(&policy.approvers, "none"));
    println!("approvals required: {}", policy.approvals_required);
    println!("environments:       {}", list(&policy.environments, "any"));
    println!("purposes:           {}", list(&policy.purposes, "any"));
    println!("expires:            {}", policy.expires_at_ms.map_or_else(|| "never".to_string(), time_ms));
    let window = policy.approval_window_ms.map_or_else(
        || "the node's default (4h)".to_string(),
        |ms| humantime::format_duration(Duration::from_millis(ms)).to_string(),
    );
    println!("approval window:    {window}");
    for tier in &policy.tiers {
        println!(
            "tier:               {} above {}: {} approval(s) from {}",
            shown(&tier.attribute),
            tier.above,
            tier.approvals_required,
            list(&tier.approvers, "the policy's approvers")
        );
    }
}

/// Parses `k=v` declarations.
fn attributes(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| anyhow!("--attr {p:?} is not NAME=VALUE (e.g. amount=5000)"))
        })
        .collect()
}

fn print_request(client: &ClientArgs, info: &RequestInfo) -> anyhow::Result<()> {
    match client.output.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(info)?),
        Output::Table => {
            println!("request:    {}", shown(&info.request_id));
            println!("key:        {} ({}, version {})", shown(&info.key_name), shown(&info.key_id), info.key_version);
            println!("status:     {}", info.status);
            println!("message:    {} bytes, sha256 {}", info.message_bytes, shown(&info.message_sha256));
            for line in format_lines(info.format.as_ref()) {
                println!("{line}");
            }
            println!("purpose:    {}", shown(&info.purpose));
            println!("env:        {}", shown(&info.environment));
            for (k, v) in &info.attributes {
                println!("declared:   {} = {} (the requester's claim)", shown(k), shown(v));
            }
            println!("requester:  {}", info.requester);
            println!("created:    {} (log index {})", time_ms(info.created_at_ms), info.created_index);
            println!("expires:    {}", time_ms(info.expires_at_ms));
            if let Some(finished) = info.finished_at_ms {
                println!("finished:   {}", time_ms(finished));
            }
            if !info.approval_progress.is_empty() {
                println!("approvals:  {} (by {})", progress(info), approvers(info));
            }
            for denial in &info.denials {
                println!("denied:     {}", shown(denial));
            }
            println!("signature:  {}", shown(info.signature.as_deref().unwrap_or("-")));
            if !info.signers.is_empty() {
                println!("signers:    {:?} in {} session(s)", info.signers, info.sessions);
            }
            if !info.culprits.is_empty() {
                println!("culprits:   {:?}", info.culprits);
            }
            if let Some(error) = &info.error {
                println!("error:      {}", shown(error));
            }
        }
    }
    Ok(())
}

/// What every node read from a request's signed bytes, as `label: value` lines
/// aligned like [`print_request`]'s, escaped for a terminal: the format, the
/// artifact hash (or that the bytes are an opaque digest), the SSHSIG namespace,
/// minisign's trusted comment, and a summary.
fn format_lines(format: Option<&synod_proto::format::FormatInfo>) -> Vec<String> {
    let Some(f) = format else {
        return vec!["format:     raw (the message is signed as it is)".into()];
    };
    let mut lines = vec![format!("format:     {}", f.format)];
    if let Some(hash) = &f.inspection.artifact_hash {
        lines.push(format!("artifact:   {} (read from the signed bytes)", shown(hash)));
    }
    if f.inspection.opaque {
        lines.push(
            "opaque:     yes: the signed bytes are a digest nothing can be read from; trust the requester for \
             what it is a digest of"
                .into(),
        );
    }
    if let Some(namespace) = &f.inspection.namespace {
        lines.push(format!("namespace:  {}", shown(namespace)));
    }
    if let Some(comment) = &f.trusted_comment {
        lines.push(format!("comment:    {} (minisign trusted comment, signed too)", shown(comment)));
    }
    if let Some(parent) = &f.global_of {
        lines.push(format!("signs:      request {}'s signature and trusted comment", shown(parent)));
    }
    if !f.inspection.summary.is_empty() {
        lines.push(format!("reads:      {}", shown(&f.inspection.summary)));
    }
    lines
}

/// The request's policy progress, escaped for a terminal.
fn progress(info: &RequestInfo) -> String {
    info.approval_progress.iter().map(|p| shown(p).to_string()).collect::<Vec<_>>().join("; ")
}

/// Who approved the request so far, escaped for a terminal.
fn approvers(info: &RequestInfo) -> String {
    let names: Vec<String> = info.approvals.iter().map(|a| shown(a).to_string()).collect();
    if names.is_empty() {
        "nobody yet".into()
    } else {
        names.join(", ")
    }
}

async fn get_request(api: &ApiClient, id: &str, wait_ms: u64) -> anyhow::Result<RequestInfo> {
    let (_, info): (u16, RequestInfo) = api.get(&format!("/v1/requests/{id}?wait_ms={wait_ms}")).await?;
    Ok(info)
}

/// `synod request ...`.
pub async fn request(cmd: RequestCmd) -> anyhow::Result<()> {
    match cmd {
        RequestCmd::List { status, key, mine_to_approve, mine, limit, before_index, client } => {
            // reqwest's URL type encodes the query, and the client signs the path and query it parses.
            let mut url = reqwest::Url::parse("https://node.invalid/v1/requests").expect("a constant URL");
            url.query_pairs_mut().append_pair("limit", &limit.to_string());
            let params = [
                ("status", status),
                ("key", key),
                ("approver", mine_to_approve.then(|| "me".to_string())),
                ("requester", mine.then(|| "me".to_string())),
                ("before_index", before_index.map(|i| i.to_string())),
            ];
            for (name, value) in params.into_iter().filter_map(|(n, v)| Some((n, v?))) {
                url.query_pairs_mut().append_pair(name, &value);
            }
            let query = url.query().unwrap_or_default().to_string();
            list_requests(&client, &query).await
        }
        RequestCmd::Show { id, wait_secs, client } => {
            let info = get_request(&ApiClient::new(&client)?, &id, wait_secs * 1000).await?;
            print_request(&client, &info)
        }
        RequestCmd::Sign {
            key,
            input,
            format,
            trusted_comment,
            request_id,
            purpose,
            environment,
            attrs,
            key_version,
            client,
        } => {
            let mut client = client;
            if client.ttl_secs == super::TTL_SECS_DEFAULT {
                client.ttl_secs = REQUEST_TTL_SECS_DEFAULT;
            }
            let message = super::keys::read_message(&input)?;
            let api = ApiClient::new(&client)?;
            let request_id =
                request_id.unwrap_or_else(|| synod_proto::command::random_command_id(&mut rand_core::OsRng));
            let command = Command::SignRequest {
                format: format.filter(|f| *f != synod_proto::format::SignFormat::Raw),
                trusted_comment,
                request_id: request_id.clone(),
                key,
                message: hex::encode(&message),
                purpose: purpose.unwrap_or_default(),
                environment: environment.unwrap_or_default(),
                attributes: attributes(&attrs)?,
                version: key_version,
            };
            let signed = sign_command(&client, &cluster_id(&status_of(&api).await?)?, command)?;
            let (_, info): (u16, RequestInfo) = api.post("/v1/sign?wait_ms=2000", &signed).await?;
            print_request(&client, &info)?;
            if info.status == RequestStatus::AwaitingApproval {
                let id = shown(&request_id);
                note(format_args!("approve with: synod approve {id}   (then: synod request wait {id})"));
            }
            Ok(())
        }
        RequestCmd::Wait { id, timeout_secs, client } => {
            let api = ApiClient::new(&client)?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout_secs);
            let mut last = String::new();
            loop {
                let info = get_request(&api, &id, 0).await?;
                let progress = format!("{} {}", info.status, progress(&info));
                if progress != last {
                    note(format_args!("  {progress}"));
                    last = progress;
                }
                match info.status {
                    RequestStatus::Signed => return print_request(&client, &info),
                    RequestStatus::Failed => bail!("request {id} failed: {}", info.error.unwrap_or_default()),
                    _ if tokio::time::Instant::now() >= deadline => {
                        bail!("request {id} is still {} after {timeout_secs} s", info.status)
                    }
                    _ => tokio::time::sleep(POLL).await,
                }
            }
        }
        RequestCmd::Deny { id, reason, ssh_signature, approver, yes, client } => {
            deny(id, reason, ssh_signature.as_deref(), approver.as_deref(), yes, &client).await
        }
        RequestCmd::Cancel { id, client } => {
            submit(&client, "/v1/commands", Command::CancelRequest { request_id: id }).await?;
            Ok(())
        }
        RequestCmd::Statement { id, out, denial, client } => {
            let api = ApiClient::new(&client)?;
            let statement = statement(&api, &id).await?;
            let bytes = if denial { denial_bytes(&statement) } else { approval_bytes(&statement) };
            std::fs::write(&out, bytes).with_context(|| format!("cannot write {}", out.display()))?;
            let namespace = synod_proto::authz::APPROVAL_SSH_NAMESPACE;
            if client.output.output == Output::Json {
                let written = serde_json::json!({ "request_id": id, "file": out, "ssh_namespace": namespace });
                println!("{}", serde_json::to_string_pretty(&written)?);
            }
            let id = shown(&id);
            let (what, then) = if denial {
                ("denial", format!("synod request deny {id} --reason <why>"))
            } else {
                ("approval", format!("synod approve {id}"))
            };
            note(format_args!(
                "wrote the {what} statement of {id} to {}; sign it with\n  ssh-keygen -Y sign -n {namespace} -f <key> {}\nthen: {then} --ssh-signature {}.sig --as <your operator name>",
                out.display(),
                out.display(),
                out.display()
            ));
            Ok(())
        }
    }
}

/// `synod request list`: one page of the requests this operator may read.
async fn list_requests(client: &ClientArgs, query: &str) -> anyhow::Result<()> {
    let api = ApiClient::new(client)?;
    let (_, list): (u16, RequestList) = api.get(&format!("/v1/requests?{query}")).await?;
    if client.output.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    // Requesters are shown by name; any operator may read the operator list.
    let (_, operators): (u16, Value) = api.get("/v1/operators").await?;
    let names: BTreeMap<String, String> = operators["operators"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|op| Some((op["key"].as_str()?.to_string(), op["name"].as_str()?.to_string())))
        .collect();
    print_requests(&list, &names);
    Ok(())
}

/// A page of requests as a table, every field others chose escaped; progress last, as it is
/// the widest. `names` maps operator keys (hex) to names.
fn print_requests(list: &RequestList, names: &BTreeMap<String, String>) {
    if list.requests.is_empty() {
        println!("no requests match");
        return;
    }
    println!(
        "{:<34} {:<16} {:<18} {:<9} {:<16} {:<16} {:<25} PROGRESS",
        "ID", "KEY", "STATUS", "FORMAT", "PURPOSE", "REQUESTER", "EXPIRES"
    );
    for info in &list.requests {
        let requester = info.requester.to_hex();
        let requester = names.get(&requester).unwrap_or(&requester);
        let format = info.format.as_ref().map_or_else(|| "raw".to_string(), |f| f.format.to_string());
        let progress = if info.approval_progress.is_empty() { "-".to_string() } else { progress(info) };
        println!(
            "{:<34} {:<16} {:<18} {:<9} {:<16} {:<16} {:<25} {progress}",
            shown(&info.request_id),
            shown(&info.key_name),
            info.status,
            format,
            shown(if info.purpose.is_empty() { "-" } else { &info.purpose }),
            shown(requester),
            time_ms(info.expires_at_ms),
        );
    }
    if let Some(next) = list.next {
        note(format_args!("more requests match: add --before-index {next} for the next page"));
    }
}

/// The statement approvers of request `id` sign, from what the node reports.
async fn statement(api: &ApiClient, id: &str) -> anyhow::Result<ApprovalStatement> {
    Ok(statement_and_request(api, id).await?.0)
}

/// [`statement`], with the request it was built from (for the approver's summary).
async fn statement_and_request(api: &ApiClient, id: &str) -> anyhow::Result<(ApprovalStatement, RequestInfo)> {
    let info = get_request(api, id, 0).await?;
    let cluster = cluster_id(&status_of(api).await?)?;
    let request = info.clone();
    Ok((info.approval_statement(&cluster), request))
}

/// What an approver is about to approve, every field escaped ([`shown`]):
/// the lines `synod approve` prints (on stderr) before it asks.
pub fn approval_summary(statement: &ApprovalStatement, info: &RequestInfo) -> Vec<String> {
    let mut lines = vec![
        format!("request:     {}", shown(&statement.request_id)),
        format!(
            "key:         {} ({}, version {})",
            shown(&info.key_name),
            shown(&statement.key_id),
            statement.key_version
        ),
        format!("message:     {} bytes, sha256 {}", info.message_bytes, shown(&statement.message_sha256)),
    ];
    // The format lines as the node read them; the statement signs the format and artifact hash too.
    lines.extend(format_lines(info.format.as_ref()).into_iter().map(|l| match l.split_once(':') {
        Some((label, rest)) => format!("{:<13}{}", format!("{label}:"), rest.trim_start()),
        None => l,
    }));
    lines.push(format!("purpose:     {}", shown(&statement.purpose)));
    lines.push(format!("environment: {}", shown(&statement.environment)));
    if statement.attributes.is_empty() {
        lines.push("declared:    (nothing)".into());
    }
    for (k, v) in &statement.attributes {
        lines.push(format!("declared:    {} = {} (the requester's claim)", shown(k), shown(v)));
    }
    lines.push(format!("requester:   {}", statement.requester));
    let progress = if info.approval_progress.is_empty() { "-".to_string() } else { progress(info) };
    lines.push(format!(
        "policy:      version {}: {progress} (approved by {})",
        statement.policy_version,
        approvers(info)
    ));
    for denial in &info.denials {
        lines.push(format!("denied:      {}", shown(denial)));
    }
    lines
}

/// Shows what is being approved and, unless `--yes`, asks on the terminal.
fn confirm_approval(args: &ApproveArgs, statement: &ApprovalStatement, info: &RequestInfo) -> anyhow::Result<()> {
    confirm(Verdict::Approve, args.yes, statement, info)
}

/// What an approver says of a request: the statement's name and the prompt differ.
#[derive(Clone, Copy)]
enum Verdict {
    Approve,
    Deny,
}

/// Shows the request an approver is about to approve or deny and, unless
/// `yes`, asks on the terminal.
fn confirm(verdict: Verdict, yes: bool, statement: &ApprovalStatement, info: &RequestInfo) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    let (doing, command, question, refused) = match verdict {
        Verdict::Approve => ("approving", "synod approve", "Approve this request?", "not approved"),
        Verdict::Deny => ("denying", "synod request deny", "Deny this request?", "not denied"),
    };
    note(format_args!("You are {doing}:"));
    for line in approval_summary(statement, info) {
        note(format_args!("  {line}"));
    }
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "{command} asks for confirmation on a terminal, and stdin is not one; pass --yes to go on with \
             request {} without asking (scripts)",
            shown(&statement.request_id)
        );
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
        bail!("{refused}: the answer was not yes");
    }
    Ok(())
}

/// The approver's name and signature over `bytes` (an approval or denial
/// statement): the `ssh-keygen -Y sign` signature in `ssh_signature`, or one
/// made with the operator key. The name is found from the key unless given.
async fn approver_signature(
    api: &ApiClient,
    client: &ClientArgs,
    ssh_signature: Option<&Path>,
    approver: Option<&str>,
    bytes: &[u8],
) -> anyhow::Result<(String, ApprovalSignature)> {
    let (_, operators): (u16, Value) = api.get("/v1/operators").await?;
    let operators = operators["operators"].as_array().cloned().unwrap_or_default();
    match ssh_signature {
        Some(path) => {
            let armored = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            let signer = synod_proto::sshsig::signer_of(&armored).map_err(|e| anyhow!("{e}"))?;
            let name = match approver {
                Some(name) => name.to_string(),
                None => operators
                    .iter()
                    .find(|op| {
                        op["ssh_key"]
                            .as_str()
                            .and_then(|l| synod_proto::sshsig::SshPublicKey::parse(l).ok())
                            .is_some_and(|k| k == signer)
                    })
                    .and_then(|op| op["name"].as_str().map(String::from))
                    .ok_or_else(|| anyhow!("no operator has the SSH key {}; pass --as NAME", signer.fingerprint()))?,
            };
            Ok((name, ApprovalSignature::Ssh { armored }))
        }
        None => {
            let path = client
                .operator_key
                .as_ref()
                .ok_or_else(|| anyhow!("set SYNOD_OPERATOR_KEY to your operator key, or pass --ssh-signature FILE"))?;
            let key = load_operator_key(path)?;
            let public = OperatorKey::of(&key).to_hex();
            let name = match approver {
                Some(name) => name.to_string(),
                None => operators
                    .iter()
                    .find(|op| op["key"].as_str() == Some(public.as_str()))
                    .and_then(|op| op["name"].as_str().map(String::from))
                    .ok_or_else(|| anyhow!("no operator has the key {public}; pass --as NAME"))?,
            };
            let signature = key.sign(bytes);
            Ok((name, ApprovalSignature::Ed25519 { signature: hex::encode(signature.to_bytes()) }))
        }
    }
}

/// Submits an approval or denial: the signature inside carries the authority,
/// so without an operator key the envelope is signed by a throwaway key.
async fn submit_verdict(api: &ApiClient, client: &ClientArgs, cluster: &str, command: Command) -> anyhow::Result<()> {
    let signed = match &client.operator_key {
        Some(_) => sign_command(client, cluster, command)?,
        None => sign_ephemeral(client, cluster, command),
    };
    let (_, response): (u16, WriteResponse) = api.post("/v1/commands", &signed).await?;
    print_write(client, &response)
}

/// `synod approve ID`: signs the request's approval statement with the operator
/// key, or submits an `ssh-keygen -Y sign` signature of it.
pub async fn approve(args: ApproveArgs) -> anyhow::Result<()> {
    let client = &args.client;
    let api = ApiClient::new(client)?;
    let (statement, info) = statement_and_request(&api, &args.id).await?;
    confirm_approval(&args, &statement, &info)?;
    let bytes = approval_bytes(&statement);
    let (approver, signature) =
        approver_signature(&api, client, args.ssh_signature.as_deref(), args.approver.as_deref(), &bytes).await?;
    let command = Command::Approve { request_id: args.id.clone(), approver, signature };
    submit_verdict(&api, client, &statement.cluster_id, command).await
}

/// `synod request deny ID --reason TEXT`: signs the request's denial statement.
async fn deny(
    id: String,
    reason: String,
    ssh_signature: Option<&Path>,
    approver: Option<&str>,
    yes: bool,
    client: &ClientArgs,
) -> anyhow::Result<()> {
    let api = ApiClient::new(client)?;
    let (statement, info) = statement_and_request(&api, &id).await?;
    confirm(Verdict::Deny, yes, &statement, &info)?;
    let bytes = denial_bytes(&statement);
    let (approver, signature) = approver_signature(&api, client, ssh_signature, approver, &bytes).await?;
    let command = Command::Deny { request_id: id, approver, reason, signature };
    submit_verdict(&api, client, &statement.cluster_id, command).await
}

fn sign_ephemeral(client: &ClientArgs, cluster: &str, command: Command) -> SignedCommand {
    let key = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
    SignedCommand::sign(&super::client::envelope(client, cluster, command), &key)
}

/// `synod admin ...`.
pub async fn admin(cmd: AdminCmd) -> anyhow::Result<()> {
    match cmd {
        AdminCmd::Policy { approvals, client } => {
            submit(&client, "/v1/commands", Command::SetAdminPolicy { approvals_required: approvals }).await?;
        }
        AdminCmd::Approve { proposal_id, client } => {
            submit(&client, "/v1/commands", Command::ApproveProposal { proposal_id }).await?;
        }
        AdminCmd::Proposals(client) => {
            let (_, list): (u16, Value) = ApiClient::new(&client)?.get("/v1/admin/proposals").await?;
            match client.output.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&list)?),
                Output::Table => print_proposals(&list),
            }
        }
    }
    Ok(())
}

/// Pending admin proposals as a table: what each would do, who agreed, until when.
fn print_proposals(list: &Value) {
    let proposals = list["proposals"].as_array().cloned().unwrap_or_default();
    if proposals.is_empty() {
        println!("no admin proposals are pending");
        return;
    }
    println!("{:<34} {:<24} {:<26} AGREED", "ID", "EXPIRES", "COMMAND");
    for p in &proposals {
        let agreed: Vec<String> = p["approvals"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|a| shown(a).to_string())
            .collect();
        println!(
            "{:<34} {:<24} {:<26} {}",
            shown(p["id"].as_str().unwrap_or("-")),
            time_ms_or_dash(p["expires_at_ms"].as_u64()),
            shown(p["command"]["type"].as_str().unwrap_or("-")),
            agreed.join(", ")
        );
    }
    println!("agree with: synod admin approve ID");
}

/// One audit record as a `key: value` list, every field a person may read.
fn print_audit_record(r: &AuditRecord) {
    let opt = |v: &Option<String>| shown(v.as_deref().unwrap_or("-")).to_string();
    println!("seq:         {}", r.seq);
    println!("log index:   {}", r.index);
    println!("time:        {} (log time)", time_ms(r.time_ms));
    println!("kind:        {}", shown(&r.kind));
    println!("result:      {}", shown(&r.result));
    println!("detail:      {}", shown(&r.detail));
    println!("actor:       {}", opt(&r.actor));
    println!("author:      {}", r.author);
    println!("command id:  {}", opt(&r.command_id));
    let version = r.key_version.map(|v| format!(" (version {v})")).unwrap_or_default();
    println!("key:         {}{version}", opt(&r.key_id));
    println!("request:     {}", opt(&r.request_id));
    println!("purpose:     {}", opt(&r.purpose));
    println!("environment: {}", opt(&r.environment));
    if let Some(format) = r.format {
        println!("format:      {format}");
    }
    if let Some(hash) = &r.artifact_hash {
        println!("artifact:    {}", shown(hash));
    }
    if !r.approvals.is_empty() {
        let approvals: Vec<String> = r.approvals.iter().map(|a| shown(a).to_string()).collect();
        println!("approvals:   {}", approvals.join(", "));
    }
    if !r.signers.is_empty() {
        println!("signers:     {:?}", r.signers);
    }
    println!("prev hash:   {}", shown(&r.prev_hash));
    println!("hash:        {}", shown(&r.hash));
}

/// Audit checkpoints as a table.
fn print_checkpoints(list: &Value) {
    println!("audit key:   {}", shown(list["public_key"].as_str().unwrap_or("none yet")));
    let checkpoints = list["checkpoints"].as_array().cloned().unwrap_or_default();
    if checkpoints.is_empty() {
        println!("no checkpoints yet; ask for one with `synod audit checkpoint`");
        return;
    }
    println!("{:>8} {:<10} {:<34} SIGNATURE", "SEQ", "STATUS", "REQUEST");
    for c in &checkpoints {
        println!(
            "{:>8} {:<10} {:<34} {}",
            c["seq"].as_u64().map_or("-".to_string(), |s| s.to_string()),
            shown(c["status"].as_str().unwrap_or("-")),
            shown(c["request_id"].as_str().unwrap_or("-")),
            shown(c["signature"].as_str().unwrap_or("-"))
        );
    }
}

/// Every audit record the node has, page by page, and its head.
async fn fetch_audit(api: &ApiClient) -> anyhow::Result<(AuditHead, Vec<AuditRecord>)> {
    let mut records: Vec<AuditRecord> = Vec::new();
    loop {
        let from = records.last().map_or(1, |r| r.seq + 1);
        let (_, page): (u16, Value) = api.get(&format!("/v1/audit?from={from}")).await?;
        let head: AuditHead = serde_json::from_value(page["head"].clone())?;
        let batch: Vec<AuditRecord> = serde_json::from_value(page["records"].clone())?;
        let done = batch.is_empty() || batch.last().is_some_and(|r| r.seq >= head.seq);
        records.extend(batch);
        if done {
            return Ok((head, records));
        }
    }
}

/// `synod audit ...`.
pub async fn audit(cmd: AuditCmd) -> anyhow::Result<()> {
    match cmd {
        AuditCmd::List { from, limit, client } => {
            let api = ApiClient::new(&client)?;
            let (_, page): (u16, Value) = api.get(&format!("/v1/audit?from={from}&limit={limit}")).await?;
            let records: Vec<AuditRecord> = serde_json::from_value(page["records"].clone())?;
            match client.output.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&records)?),
                Output::Table => {
                    println!(
                        "{:>6} {:>7} {:<24} {:<18} {:<8} {:<18} DETAIL",
                        "SEQ", "INDEX", "TIME", "KIND", "RESULT", "ACTOR"
                    );
                    for r in &records {
                        println!(
                            "{:>6} {:>7} {:<24} {:<18} {:<8} {:<18} {}",
                            r.seq,
                            r.index,
                            time_ms(r.time_ms),
                            shown(&r.kind),
                            shown(&r.result),
                            shown(r.actor.as_deref().unwrap_or("-")),
                            shown(&r.detail)
                        );
                    }
                }
            }
        }
        AuditCmd::Show { seq, client } => {
            let (_, page): (u16, Value) =
                ApiClient::new(&client)?.get(&format!("/v1/audit?from={seq}&limit=1")).await?;
            let records: Vec<AuditRecord> = serde_json::from_value(page["records"].clone())?;
            let record = records.into_iter().find(|r| r.seq == seq).ok_or_else(|| anyhow!("no audit record {seq}"))?;
            match client.output.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&record)?),
                Output::Table => print_audit_record(&record),
            }
        }
        AuditCmd::Export(client) => {
            let (_, records) = fetch_audit(&ApiClient::new(&client)?).await?;
            for r in records {
                println!("{}", serde_json::to_string(&r)?);
            }
        }
        AuditCmd::Checkpoint(client) => {
            let api = ApiClient::new(&client)?;
            let (_, started): (u16, Value) = api.post("/v1/audit/checkpoint", &serde_json::json!({})).await?;
            let id = started["request_id"].as_str().ok_or_else(|| anyhow!("no request id in {started}"))?;
            note(format_args!("checkpoint requested as {}; waiting for the audit key's signature", shown(id)));
            let info = get_request(&api, id, 30_000).await?;
            if info.status != RequestStatus::Signed {
                bail!("checkpoint {id} is {}: {}", info.status, info.error.unwrap_or_default());
            }
            print_request(&client, &info)?;
        }
        AuditCmd::Checkpoints { out_dir, client } => {
            let api = ApiClient::new(&client)?;
            let (_, list): (u16, Value) = api.get("/v1/audit/checkpoints").await?;
            let Some(dir) = out_dir else {
                match client.output.output {
                    Output::Json => println!("{}", serde_json::to_string_pretty(&list)?),
                    Output::Table => print_checkpoints(&list),
                }
                return Ok(());
            };
            let written = write_checkpoints(&api, &list, &dir).await?;
            if client.output.output == Output::Json {
                let files = serde_json::json!({ "dir": dir, "checkpoints": written });
                println!("{}", serde_json::to_string_pretty(&files)?);
            }
        }
        AuditCmd::Verify { file, client } => {
            let (head, records) = match &file {
                Some(path) => {
                    let text =
                        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
                    let records = text
                        .lines()
                        .filter(|l| !l.trim().is_empty())
                        .enumerate()
                        .map(|(i, l)| {
                            serde_json::from_str(l).with_context(|| format!("line {} is not a record", i + 1))
                        })
                        .collect::<anyhow::Result<Vec<AuditRecord>>>()?;
                    (None, records)
                }
                None => {
                    let (head, records) = fetch_audit(&ApiClient::new(&client)?).await?;
                    (Some(head), records)
                }
            };
            let computed = verify_chain(&AuditHead::default(), &records)
                .map_err(|(seq, why)| anyhow!("audit chain broken at record {seq}: {why}"))?;
            if let Some(head) = head {
                if head != computed {
                    bail!(
                        "the node's chain head is record {} {} but its records give {} {}: records are missing or were changed",
                        head.seq, head.hash, computed.seq, computed.hash
                    );
                }
            }
            match client.output.output {
                Output::Json => {
                    println!("{}", serde_json::json!({ "valid": true, "records": records.len(), "head": computed }))
                }
                Output::Table => {
                    println!("audit chain valid: {} records, head {} {}", records.len(), computed.seq, computed.hash)
                }
            }
        }
    }
    Ok(())
}

/// Writes every signed checkpoint as files standard tools verify; returns the
/// sequence numbers written. The message is rebuilt here from the node's own
/// record, so the files prove that record.
async fn write_checkpoints(api: &ApiClient, list: &Value, dir: &Path) -> anyhow::Result<Vec<u64>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cluster = list["cluster_id"].as_str().unwrap_or_default();
    let public = list["public_key"].as_str().ok_or_else(|| anyhow!("the cluster has no audit key"))?;
    let public = synod_proto::keyfmt::parse_public_key(public).map_err(|e| anyhow!("{e}"))?;
    std::fs::write(dir.join("audit-key.pem"), synod_proto::keyfmt::public_key_pem(&public))?;
    let (_, records) = fetch_audit(api).await?;
    let mut written = Vec::new();
    for cp in list["checkpoints"].as_array().into_iter().flatten().filter(|c| c["status"] == "signed") {
        let seq = cp["seq"].as_u64().ok_or_else(|| anyhow!("bad checkpoint {cp}"))?;
        let record = records.iter().find(|r| r.seq == seq).ok_or_else(|| anyhow!("no audit record {seq}"))?;
        let hash: [u8; 32] = hex::decode(&record.hash)?.try_into().map_err(|_| anyhow!("bad record hash"))?;
        let message = synod_proto::authz::checkpoint_message(cluster, seq, &hash);
        let signature = hex::decode(cp["signature"].as_str().unwrap_or_default())?;
        std::fs::write(dir.join(format!("checkpoint-{seq}.msg")), &message)?;
        std::fs::write(dir.join(format!("checkpoint-{seq}.sig")), &signature)?;
        written.push(seq);
    }
    note(format_args!(
        "wrote {} checkpoints and audit-key.pem to {}; check one with\n  openssl pkeyutl -verify -pubin -inkey audit-key.pem -rawin -in checkpoint-N.msg -sigfile checkpoint-N.sig",
        written.len(),
        dir.display()
    ));
    Ok(written)
}

/// A policy from a JSON file, checked before it is sent.
pub fn read_policy(file: &std::path::Path) -> anyhow::Result<Policy> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let policy: Policy = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a policy (JSON; see `synod key policy set --help`)", file.display()))?;
    policy.validate().map_err(|e| anyhow!("{} is not a valid policy: {e}", file.display()))?;
    Ok(policy)
}

/// The policy a new key starts with, from `--policy` or `--open-policy`; `None`
/// when neither is given (the key then signs nothing until one is set).
pub fn key_policy(args: &super::KeyPolicyArgs) -> anyhow::Result<Option<Policy>> {
    match (&args.policy, args.open_policy) {
        (Some(file), _) => read_policy(file).map(Some),
        (None, true) => Ok(Some(Policy::default())),
        (None, false) => Ok(None),
    }
}

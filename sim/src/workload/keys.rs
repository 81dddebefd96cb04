//! The admin's `synod key create`: right after genesis, before any fault, it
//! creates [`KEY_NAME`] by DKG over every node with a majority threshold, then
//! registers the approvers and sets the key's policy ([`sim_policy`]); if the
//! fault plan asks (`keygen_during_faults`, on in `chaos`), it also creates
//! [`KEY_NAME_FAULTS`] at a random moment of the fault window, with a policy
//! that allows SSHSIG in one namespace only ([`super::key_faults_policy`]). A key is
//! created again whenever its generation aborts (leaving out a participant the
//! abort names as the culprit, as an operator would) or its create command
//! does not take (a participant unreachable, no answer), until a node reports
//! it active. Each active key goes into `History::keys` (for [`KEY_NAME`] only
//! once its policy is committed) and each create command is counted in
//! `History::key_attempts`: the driver opens the fault window once
//! [`KEY_NAME`] is there, the signing clients wait for it, and
//! `SigningLiveness` requires every key the run generates to be there within
//! its bound after the heal (`key-generation-liveness`, naming the attempts).

use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use synod_proto::api::{ClientRequest, KeyInfo, KeyStatus};
use synod_proto::authz::{Policy, Role, Tier};
use synod_proto::webauthn::WebAuthnConfig;
use synod_proto::NodeError;
use synod_proto::{Command, NodeId, OperatorKey, Outcome};

use super::{
    call_node, key_info, short, written, ClientCtx, KeyAck, Phase, Submission, AMOUNT, AMOUNT_APPROVAL_ABOVE,
    APPROVALS_REQUIRED, APPROVERS, CALL_TIMEOUT, KEY_NAME, KEY_NAME_FAULTS, PASSKEY_APPROVER, PASSKEY_ORIGIN,
    PASSKEY_RP_ID,
};

/// How long a client waits for one create-key call (pings of every participant, then the write).
pub const CREATE_KEY_TIMEOUT: Duration = Duration::from_secs(6);

/// A key's threshold for `participants`: a majority (at least 2, FROST's minimum).
pub fn key_threshold(participants: u64) -> u16 {
    (participants / 2 + 1).max(2) as u16
}

/// The admin's `synod key create`: [`KEY_NAME`] right after genesis, before
/// any fault, then its approvers and its policy (the driver opens the fault
/// window once the key is active and its policy committed), then, if asked,
/// [`KEY_NAME_FAULTS`] at a random moment of the fault window. Each key is over
/// every node with a majority threshold and is created again whenever its
/// generation aborts (the name is then free), until a node reports it active;
/// a participant an abort names as the culprit is left out of the next
/// attempt, as an operator would.
/// A node refuses to start a generation while a participant is unreachable
/// (503); that is retried too.
pub async fn keygen_client(ctx: ClientCtx) -> turmoil::Result {
    let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed ^ 0x6b65_7967);
    while ctx.history.borrow().phase == Phase::Boot {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let participants: Vec<NodeId> = (1..=ctx.nodes).collect();
    let ack = create_key(&ctx, &mut rng, KEY_NAME, &participants).await;
    set_up_approvals(&ctx, &mut rng).await;
    ctx.history.borrow_mut().keys.insert(KEY_NAME.to_string(), ack);
    if ctx.keygen_during_faults {
        while ctx.history.borrow().phase == Phase::Setup {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.next_u64() % 10_000)).await;
        let ack = create_key(&ctx, &mut rng, KEY_NAME_FAULTS, &participants).await;
        ctx.history.borrow_mut().keys.insert(KEY_NAME_FAULTS.to_string(), ack);
    }
    ctx.history.borrow_mut().clients_done += 1;
    Ok(())
}

/// The policy of [`KEY_NAME`]: requests declaring an [`AMOUNT`] above
/// [`AMOUNT_APPROVAL_ABOVE`] (or none) need [`APPROVALS_REQUIRED`] of the [`APPROVERS`].
pub fn sim_policy() -> Policy {
    let approvers: Vec<String> = APPROVERS.iter().map(|a| a.to_string()).collect();
    Policy {
        approvers,
        tiers: vec![Tier {
            attribute: AMOUNT.into(),
            above: AMOUNT_APPROVAL_ABOVE,
            approvals_required: APPROVALS_REQUIRED,
            approvers: Vec::new(),
        }],
        ..Policy::default()
    }
}

/// Registers the approvers and sets [`KEY_NAME`]'s policy (before any fault);
/// then sets the relying party, registers [`PASSKEY_APPROVER`]'s passkey
/// through node 1's console (a node-authored command) and approves it.
async fn set_up_approvals(ctx: &ClientCtx, rng: &mut ChaCha8Rng) {
    let mut commands: Vec<Command> = APPROVERS
        .iter()
        .zip(&ctx.approvers)
        .map(|(name, key)| Command::AddOperator {
            name: name.to_string(),
            key: Some(OperatorKey::of(key)),
            ssh_key: None,
            roles: vec![Role::Approver],
            pending_max: None,
        })
        .collect();
    commands.push(Command::SetPolicy { key: KEY_NAME.into(), policy: sim_policy() });
    let config =
        WebAuthnConfig { rp_id: PASSKEY_RP_ID.into(), rp_name: "Synod".into(), origins: vec![PASSKEY_ORIGIN.into()] };
    commands.push(Command::SetWebAuthn { config: config.clone() });
    for command in commands {
        // An earlier attempt applied without an answer.
        commit(ctx, rng, command, None, "already exists").await;
    }
    let (registration, credential_id, public_key) = {
        let passkey = ctx.passkey.borrow();
        (
            passkey.register(PASSKEY_RP_ID, PASSKEY_ORIGIN, b"console challenge"),
            passkey.credential_id(),
            passkey.public_key(),
        )
    };
    ctx.history.borrow_mut().passkeys.insert(credential_id.clone(), public_key);
    // The fingerprint the approver reads off the console and tells the admin.
    let fingerprint = synod_proto::webauthn::read_registration(&config, &registration, None)
        .expect("the workload's own registration reads")
        .fingerprint;
    let register =
        Command::RegisterPasskey { node_id: 1, operator: PASSKEY_APPROVER.into(), label: "sim".into(), registration };
    commit(ctx, rng, register, Some(0), "already registered").await;
    let approve = Command::ApprovePasskey { operator: PASSKEY_APPROVER.into(), credential_id, fingerprint };
    commit(ctx, rng, approve, None, "waits for approval").await;
}

/// Commits `command` signed by the admin (or as node `as_node` + 1), until it
/// is applied or refused with `done_if` (an earlier attempt took).
async fn commit(ctx: &ClientCtx, rng: &mut ChaCha8Rng, command: Command, as_node: Option<usize>, done_if: &str) {
    let kind = command.kind();
    loop {
        let signed = match as_node {
            Some(i) => ctx.identities[i].sign(&ctx.envelope(rng, command.clone())),
            None => ctx.sign(&ctx.admin, rng, command.clone()),
        };
        let first = ctx.random_node(rng);
        let response = ctx.submit(Submission::Command(&signed), first, rng, 20).await;
        match response.map(|r| r.outcome) {
            Some(Outcome::Applied { detail }) => {
                ctx.event(format!("admin: {kind}: {detail}"));
                break;
            }
            Some(Outcome::Rejected { reason, .. }) if reason.contains(done_if) => break,
            other => ctx.event(format!("admin: {kind} not applied yet: {other:?}")),
        }
    }
}

/// Creates the key `name` (again, when a generation aborts) until a node reports it active.
pub(super) async fn create_key(ctx: &ClientCtx, rng: &mut ChaCha8Rng, name: &str, participants: &[NodeId]) -> KeyAck {
    let mut participants = participants.to_vec();
    // The id of the last generation this client started (a key's id is its create command's id).
    let mut last_attempt: Option<String> = None;
    let mut target = ctx.random_node(rng);
    loop {
        let info =
            call_node(&ctx.net, target, &ClientRequest::GetKey { name: name.to_string() }, CALL_TIMEOUT, key_info)
                .await;
        target = ctx.random_node(rng);
        match info {
            Ok(Ok(info)) if info.status == KeyStatus::Active => {
                let group_key = info.public_key.unwrap_or_default();
                ctx.event(format!("admin: key {name} ({}) active, group key {}", info.id, short(&group_key)));
                return KeyAck { id: info.id, name: name.to_string(), group_key, at_ms: ctx.now_ms() };
            }
            Ok(Ok(info)) if info.status == KeyStatus::Generating => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            // Aborted, or unknown to that node: create it (again). A node that lags
            // behind a generation in progress makes this a second create_key, which
            // the state machine refuses because the name is taken.
            Ok(Ok(_)) | Ok(Err(NodeError::NotFound { .. })) => {}
            _ => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        // Why the last attempt ended (the name is free again): leave out a culprit.
        if let Some(id) = &last_attempt {
            let previous =
                call_node(&ctx.net, target, &ClientRequest::GetKey { name: id.clone() }, CALL_TIMEOUT, key_info).await;
            if let Ok(Ok(KeyInfo { culprit: Some(culprit), abort_reason, .. })) = previous {
                if participants.contains(&culprit) {
                    participants.retain(|p| *p != culprit);
                    ctx.event(format!(
                        "admin: key {name} aborted naming n{culprit} the culprit ({}); creating it without n{culprit}",
                        abort_reason.unwrap_or_default()
                    ));
                }
            }
        }
        let threshold = key_threshold(participants.len() as u64);
        // The open policy, as before keys could start without one; the
        // workload's key gets its approval policy right after. The key made
        // under faults signs SSHSIG in one namespace only, from the start.
        let policy = Some(if name == KEY_NAME_FAULTS { super::key_faults_policy() } else { Policy::default() });
        let command =
            Command::CreateKey { name: name.to_string(), threshold, participants: participants.clone(), policy };
        let signed = ctx.sign(&ctx.admin, rng, command);
        last_attempt = signed.verify().ok().map(|envelope| envelope.command_id);
        *ctx.history.borrow_mut().key_attempts.entry(name.to_string()).or_default() += 1;
        let create = ClientRequest::CreateKey { command: signed.clone() };
        let answer = call_node(&ctx.net, target, &create, CREATE_KEY_TIMEOUT, written).await;
        let what = match answer {
            Ok(Ok(response)) => format!("{:?} at index {}", response.outcome, response.index),
            Ok(Err(e)) => format!("error: {e}"),
            Err(e) => format!("no answer ({e:?})"),
        };
        ctx.event(format!("admin: create key {name} ({threshold} of {participants:?}) via n{target}: {what}"));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

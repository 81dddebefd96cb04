//! The admin's key lifecycle inside the fault window: at a random moment it
//! creates [`LIFE_KEY`] (open policy), rotates it to a version 2 with a
//! random threshold (a short [`OVERLAP_MS`], during which some requests name
//! version 1), repairs the share of any participant that restarted on an
//! empty disk, refreshes its shares while requests keep coming, then takes
//! it through `disable`, `enable` and `destroy` (with
//! the genesis's short [`DESTROY_WAIT_MS`]), while it keeps sending sign
//! requests on it, and follows the key until a node shows it destroyed with
//! every participant's shares deleted. A rotation that does not finish
//! before [`ROTATION_GIVE_UP_AFTER_HEAL_MS`] after the heal is left to the
//! disable, which aborts it.
//!
//! Its requests go into `History::sent` (so the signing checkers judge every
//! share and signature for them) but not into `History::sign_pending`: a
//! request on a key taken out of service is failed, never signed, and no
//! liveness bound waits for it. The lifecycle checker
//! (`checker/lifecycle.rs`) judges every share released for them against the
//! key's status in the releasing signer's own state; the planted
//! `skip-key-status` must be caught.

use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use sha2::Digest;
use synod_proto::api::{ClientRequest, KeyStatus};
use synod_proto::{Command, Outcome};

use super::keys::create_key;
use super::{call_node, key_info, sign_call, Approval, ClientCtx, Phase, SentRequest, Submission, CALL_TIMEOUT};
use crate::cluster::EPOCH_MS;

/// The key the lifecycle client creates, takes out of service and destroys.
pub const LIFE_KEY: &str = "sim-life";
/// The shortest destruction waiting period of the simulated cluster (its
/// genesis), and the one the admin asks for.
pub const DESTROY_WAIT_MS: u64 = 2_000;
/// The client pauses up to this long between two steps of the key's life, in ms.
const STEP_PAUSE_MS_MAX: u64 = 2_000;
/// How long the version a rotation replaces keeps signing requests that name it.
pub const OVERLAP_MS: u64 = 1_500;
/// How many times the client starts a rotation that aborted.
const ROTATIONS_TRIED_MAX: u32 = 4;
/// How many times the client starts a refresh that aborted.
const REFRESHES_TRIED_MAX: u32 = 3;
/// How many repairs the client starts in all.
const REPAIRS_TRIED_MAX: u32 = 4;
/// The client stops waiting for a rotation (or a refresh) this long after the heal (or after
/// it started the rotation, if that was later).
const ROTATION_GIVE_UP_AFTER_HEAL_MS: u64 = 8_000;

/// The admin's lifecycle client (see the module comment). Runs only with
/// `keygen_during_faults` (the chaos profile).
pub async fn lifecycle_client(ctx: ClientCtx) -> turmoil::Result {
    let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed ^ 0x11fe_c7c1e);
    while matches!(ctx.history.borrow().phase, Phase::Boot | Phase::Setup) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(rng.next_u64() % 5_000)).await;
    let participants: Vec<u64> = (1..=ctx.nodes).collect();
    let ack = create_key(&ctx, &mut rng, LIFE_KEY, &participants).await;
    let mut seq = 0;
    for _ in 0..1 + rng.next_u64() % 3 {
        send_request(&ctx, &mut rng, seq, None).await;
        seq += 1;
    }
    if rotate(&ctx, &mut rng).await {
        // Some requests name version 1 during its overlap, some after it: either may be
        // signed while the old version is retiring in the signer's own state, never after.
        let until = ctx.now_ms() + OVERLAP_MS + 500;
        while ctx.now_ms() < until {
            let version = (rng.next_u64() % 2 == 0).then_some(1);
            send_request(&ctx, &mut rng, seq, version).await;
            seq += 1;
        }
    }
    repair(&ctx, &mut rng, &mut seq).await;
    refresh(&ctx, &mut rng, &mut seq).await;
    let steps = [
        Command::DisableKey { key: LIFE_KEY.into() },
        Command::EnableKey { key: LIFE_KEY.into() },
        Command::ScheduleKeyDestroy { key: LIFE_KEY.into(), wait_ms: DESTROY_WAIT_MS },
    ];
    for command in steps {
        let pause = rng.next_u64() % STEP_PAUSE_MS_MAX;
        let until = ctx.now_ms() + pause;
        while ctx.now_ms() < until {
            send_request(&ctx, &mut rng, seq, None).await;
            seq += 1;
        }
        admin_step(&ctx, &mut rng, command).await;
    }
    // A few more requests: every one must be refused or fail, none signed.
    for _ in 0..3 {
        let version = (rng.next_u64() % 3 == 0).then_some(1);
        send_request(&ctx, &mut rng, seq, version).await;
        seq += 1;
    }
    // Follow the key until its destruction is done and cleaned up everywhere.
    loop {
        let target = ctx.random_node(&mut rng);
        let read = ClientRequest::GetKey { name: LIFE_KEY.to_string() };
        if let Ok(Ok(info)) = call_node(&ctx.net, target, &read, CALL_TIMEOUT, key_info).await {
            if info.status == KeyStatus::Destroyed && info.shares_destroyed == info.participants {
                ctx.event(format!("life: key {LIFE_KEY} ({}) destroyed and its shares deleted on n{target}", ack.id));
                break;
            }
            if let Some(late) = due_after_the_run(&ctx, info.destroy_at_ms) {
                ctx.event(format!(
                    "life: key {LIFE_KEY}'s destruction is due {late} ms after the heal by true time (the log's \
                     time ran ahead within its bound when it was scheduled); not followed further"
                ));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ctx.history.borrow_mut().clients_done += 1;
    Ok(())
}

/// How long after the heal a destruction may fall due by true time and still
/// be followed to its end (the driver's liveness bound is longer by the time
/// the deletions take).
const DUE_AFTER_HEAL_FOLLOWED_MS: u64 = 15_000;

/// When the log's time ran ahead (within the bound a time leader and jumped
/// clocks allow) as the destruction was scheduled, its deadline by true time
/// may fall after the run: then how long after the heal, once healed.
fn due_after_the_run(ctx: &ClientCtx, destroy_at_ms: Option<u64>) -> Option<u64> {
    let Phase::Healed { at_ms } = ctx.history.borrow().phase else { return None };
    let due = destroy_at_ms?.checked_sub(EPOCH_MS)?;
    (due > at_ms + DUE_AFTER_HEAL_FOLLOWED_MS).then(|| due - at_ms)
}

/// Rotates [`LIFE_KEY`] to a new version with a random threshold among the
/// current version's participants, following it until a node shows the new
/// version as the primary; starts it again when it aborted (without the
/// culprit it named, as `synod key rotate` advises), at most
/// [`ROTATIONS_TRIED_MAX`] times. Whether it did.
async fn rotate(ctx: &ClientCtx, rng: &mut ChaCha8Rng) -> bool {
    let started_ms = ctx.now_ms();
    let mut tried = 0;
    let mut culprits: Vec<u64> = Vec::new();
    let mut last_attempt: Option<String> = None;
    loop {
        let target = ctx.random_node(rng);
        let read = ClientRequest::GetKey { name: LIFE_KEY.to_string() };
        let info = call_node(&ctx.net, target, &read, CALL_TIMEOUT, key_info).await;
        if let Ok(Ok(info)) = &info {
            if info.version > 1 {
                ctx.event(format!("life: key {LIFE_KEY} version {} ({}) is the primary", info.version, info.id));
                return true;
            }
            let generating = info.versions.iter().any(|v| v.status == KeyStatus::Generating);
            if !generating {
                if tried == ROTATIONS_TRIED_MAX {
                    ctx.event(format!("life: rotation of {LIFE_KEY} not done after {tried} tries; going on"));
                    return false;
                }
                if let Some(id) = &last_attempt {
                    let read = ClientRequest::GetKey { name: id.clone() };
                    if let Ok(Ok(aborted)) = call_node(&ctx.net, target, &read, CALL_TIMEOUT, key_info).await {
                        culprits.extend(aborted.culprit);
                    }
                }
                tried += 1;
                let participants: Vec<u64> =
                    info.participants.iter().copied().filter(|p| !culprits.contains(p)).collect();
                let n = participants.len() as u64;
                let threshold = (2 + rng.next_u64() % n.saturating_sub(1).max(1)) as u16;
                let overlap_ms = OVERLAP_MS;
                let command = Command::RotateKey { name: LIFE_KEY.into(), threshold, participants, overlap_ms };
                last_attempt = admin_step(ctx, rng, command).await;
            }
        }
        if let Phase::Healed { at_ms } = ctx.history.borrow().phase {
            if ctx.now_ms() > at_ms.max(started_ms) + ROTATION_GIVE_UP_AFTER_HEAL_MS {
                ctx.event(format!("life: rotation of {LIFE_KEY} still not done after the heal; going on"));
                return false;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Repairs the share of one participant of [`LIFE_KEY`]'s primary while
/// sending sign requests: one that reported its share missing (it restarted
/// on an empty disk) if there is one, else a random one (which gets its
/// identical share again: the whole protocol runs, helpers and checks
/// included). A repair that aborted is run again (the cluster picks helpers
/// without its culprit), at most [`REPAIRS_TRIED_MAX`] times in all; one
/// that completed ends it. Gives up as a rotation does after the heal.
async fn repair(ctx: &ClientCtx, rng: &mut ChaCha8Rng, seq: &mut u64) {
    let started_ms = ctx.now_ms();
    let mut tried = 0;
    let mut chosen: Option<u64> = None;
    // Whether a repair was seen applied (in progress, or its entry's answer).
    let mut applied = false;
    loop {
        let target = ctx.random_node(rng);
        let read = ClientRequest::GetKey { name: LIFE_KEY.to_string() };
        if let Ok(Ok(info)) = call_node(&ctx.net, target, &read, CALL_TIMEOUT, key_info).await {
            let missing = *chosen.get_or_insert_with(|| {
                let pick = rng.next_u64() as usize % info.participants.len().max(1);
                info.shares_missing.first().copied().unwrap_or(info.participants[pick])
            });
            applied |= info.repair.is_some();
            let done = applied && info.repair.is_none() && info.repair_failed.is_none();
            if done && !info.shares_missing.contains(&missing) {
                ctx.event(format!("life: key {LIFE_KEY}: node {missing} holds its share (repaired)"));
                return;
            }
            if info.repair.is_none() {
                if tried == REPAIRS_TRIED_MAX {
                    ctx.event(format!("life: repair of {LIFE_KEY} not done after {tried} tries; going on"));
                    return;
                }
                tried += 1;
                let command = Command::RepairShare { key: LIFE_KEY.into(), target: missing };
                let signed = ctx.sign(&ctx.admin, rng, command);
                match ctx.submit(Submission::Command(&signed), target, rng, 20).await.map(|r| r.outcome) {
                    Some(Outcome::Applied { detail }) => {
                        applied = true;
                        ctx.event(format!("life: repair_share: {detail}"))
                    }
                    Some(Outcome::Rejected { reason, .. }) if !reason.contains("in progress") => {
                        ctx.event(format!("life: repair_share refused: {reason}; going on"));
                        return;
                    }
                    other => ctx.event(format!("life: repair_share not applied yet: {other:?}")),
                }
            }
        }
        if let Phase::Healed { at_ms } = ctx.history.borrow().phase {
            if ctx.now_ms() > at_ms.max(started_ms) + ROTATION_GIVE_UP_AFTER_HEAL_MS {
                ctx.event(format!("life: repair of {LIFE_KEY} still not done after the heal; going on"));
                return;
            }
        }
        send_request(ctx, rng, *seq, None).await;
        *seq += 1;
    }
}

/// Refreshes the shares of [`LIFE_KEY`]'s primary while sending sign
/// requests on it, following the key until a node shows the new generation
/// current; starts the refresh again when it aborted, at most
/// [`REFRESHES_TRIED_MAX`] times. A refresh the cluster refuses (a
/// participant restarted on an empty disk and reported its share missing) is
/// not tried again. Whether it completed.
async fn refresh(ctx: &ClientCtx, rng: &mut ChaCha8Rng, seq: &mut u64) -> bool {
    let started_ms = ctx.now_ms();
    let mut tried = 0;
    let mut before: Option<u32> = None;
    loop {
        let target = ctx.random_node(rng);
        let read = ClientRequest::GetKey { name: LIFE_KEY.to_string() };
        if let Ok(Ok(info)) = call_node(&ctx.net, target, &read, CALL_TIMEOUT, key_info).await {
            let from = *before.get_or_insert(info.generation);
            if info.generation > from {
                ctx.event(format!(
                    "life: key {LIFE_KEY} version {} generation {} is current",
                    info.version, info.generation
                ));
                return true;
            }
            if info.refresh.is_none() {
                if tried == REFRESHES_TRIED_MAX {
                    ctx.event(format!("life: refresh of {LIFE_KEY} not done after {tried} tries; going on"));
                    return false;
                }
                tried += 1;
                let signed = ctx.sign(&ctx.admin, rng, Command::RefreshKey { key: LIFE_KEY.into(), remove: vec![] });
                match ctx.submit(Submission::Command(&signed), target, rng, 20).await.map(|r| r.outcome) {
                    Some(Outcome::Applied { detail }) => ctx.event(format!("life: refresh_key: {detail}")),
                    Some(Outcome::Rejected { reason, .. }) if !reason.contains("already refreshing") => {
                        ctx.event(format!("life: refresh_key refused: {reason}; going on"));
                        return false;
                    }
                    other => ctx.event(format!("life: refresh_key not applied yet: {other:?}")),
                }
            }
        }
        if let Phase::Healed { at_ms } = ctx.history.borrow().phase {
            if ctx.now_ms() > at_ms.max(started_ms) + ROTATION_GIVE_UP_AFTER_HEAL_MS {
                ctx.event(format!("life: refresh of {LIFE_KEY} still not done after the heal; going on"));
                return false;
            }
        }
        // Requests straddle the switch: each is signed on one generation, never on a mix.
        send_request(ctx, rng, *seq, None).await;
        *seq += 1;
    }
}

/// One lifecycle command, submitted until the cluster applies it (or says
/// an earlier attempt already did). The id of the command that applied, when
/// this call saw it apply.
async fn admin_step(ctx: &ClientCtx, rng: &mut ChaCha8Rng, command: Command) -> Option<String> {
    let kind = command.kind();
    loop {
        let signed = ctx.sign(&ctx.admin, rng, command.clone());
        let first = ctx.random_node(rng);
        match ctx.submit(Submission::Command(&signed), first, rng, 20).await.map(|r| r.outcome) {
            Some(Outcome::Applied { detail }) => {
                ctx.event(format!("life: {kind}: {detail}"));
                return signed.verify().ok().map(|envelope| envelope.command_id);
            }
            // An earlier attempt applied without an answer (and the deadline may have passed since).
            Some(Outcome::Rejected { reason, .. })
                if reason.contains("already scheduled")
                    || reason.contains("is destroyed")
                    || reason.contains("still generating") =>
            {
                ctx.event(format!("life: {kind}: an earlier attempt applied ({reason})"));
                return None;
            }
            other => {
                ctx.event(format!("life: {kind} not applied yet: {other:?}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One sign request on [`LIFE_KEY`] (naming `version`, or the primary), sent
/// once; whatever happens to it is the checkers' to judge.
async fn send_request(ctx: &ClientCtx, rng: &mut ChaCha8Rng, seq: u64, version: Option<u32>) {
    let request_id = format!("life-{seq:04}");
    let mut message = vec![0u8; 16];
    rng.fill_bytes(&mut message);
    ctx.history.borrow_mut().sent.insert(
        request_id.clone(),
        SentRequest {
            client: 0,
            message_sha256: hex::encode(sha2::Sha256::digest(&message)),
            message: message.clone(),
            conflicts: Vec::new(),
            submitted_at_ms: ctx.now_ms(),
            approval: Approval::NotNeeded,
            format: None,
            trusted_comment: None,
        },
    );
    let mut command = super::sign_request_command(&request_id, LIFE_KEY, &hex::encode(&message), 1);
    if let Command::SignRequest { version: named, .. } = &mut command {
        *named = version;
    }
    let signed = ctx.sign(&ctx.admin, rng, command);
    let target = ctx.random_node(rng);
    let answer = call_node(&ctx.net, target, &sign_call(&signed), Duration::from_secs(3), super::request_info).await;
    let what = match answer {
        Ok(Ok(info)) => info.status.to_string(),
        Ok(Err(e)) => format!("refused: {e}"),
        Err(e) => format!("no answer ({e:?})"),
    };
    let named = version.map(|v| format!(" (version {v})")).unwrap_or_default();
    ctx.event(format!("life: {request_id}{named} via n{target}: {what}"));
    tokio::time::sleep(Duration::from_millis(50 + rng.next_u64() % 150)).await;
}

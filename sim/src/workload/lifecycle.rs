//! The admin's key lifecycle inside the fault window: at a random moment it
//! creates [`LIFE_KEY`] (open policy), then takes it through `disable`,
//! `enable` and `destroy` (with the genesis's short [`DESTROY_WAIT_MS`]),
//! while it keeps sending sign requests on it, and follows the key until a
//! node shows it destroyed with every participant's shares deleted.
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
    let steps = [
        Command::DisableKey { key: LIFE_KEY.into() },
        Command::EnableKey { key: LIFE_KEY.into() },
        Command::ScheduleKeyDestroy { key: LIFE_KEY.into(), wait_ms: DESTROY_WAIT_MS },
    ];
    for command in steps {
        let pause = rng.next_u64() % STEP_PAUSE_MS_MAX;
        let until = ctx.now_ms() + pause;
        while ctx.now_ms() < until {
            send_request(&ctx, &mut rng, seq).await;
            seq += 1;
        }
        admin_step(&ctx, &mut rng, command).await;
    }
    // A few more requests: every one must be refused or fail, none signed.
    for _ in 0..3 {
        send_request(&ctx, &mut rng, seq).await;
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

/// One lifecycle command, submitted until the cluster applies it (or says
/// an earlier attempt already did).
async fn admin_step(ctx: &ClientCtx, rng: &mut ChaCha8Rng, command: Command) {
    let kind = command.kind();
    loop {
        let signed = ctx.sign(&ctx.admin, rng, command.clone());
        let first = ctx.random_node(rng);
        match ctx.submit(Submission::Command(&signed), first, rng, 20).await.map(|r| r.outcome) {
            Some(Outcome::Applied { detail }) => {
                ctx.event(format!("life: {kind}: {detail}"));
                return;
            }
            // An earlier attempt applied without an answer (and the deadline may have passed since).
            Some(Outcome::Rejected { reason, .. })
                if reason.contains("already scheduled") || reason.contains("is destroyed") =>
            {
                ctx.event(format!("life: {kind}: an earlier attempt applied ({reason})"));
                return;
            }
            other => {
                ctx.event(format!("life: {kind} not applied yet: {other:?}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One sign request on [`LIFE_KEY`], sent once; whatever happens to it is the
/// checkers' to judge.
async fn send_request(ctx: &ClientCtx, rng: &mut ChaCha8Rng, seq: u64) {
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
        },
    );
    let command = super::sign_request_command(&request_id, LIFE_KEY, &hex::encode(&message), 1);
    let signed = ctx.sign(&ctx.admin, rng, command);
    let target = ctx.random_node(rng);
    let answer = call_node(&ctx.net, target, &sign_call(&signed), Duration::from_secs(3), super::request_info).await;
    let what = match answer {
        Ok(Ok(info)) => info.status.to_string(),
        Ok(Err(e)) => format!("refused: {e}"),
        Err(e) => format!("no answer ({e:?})"),
    };
    ctx.event(format!("life: {request_id} via n{target}: {what}"));
    tokio::time::sleep(Duration::from_millis(50 + rng.next_u64() % 150)).await;
}

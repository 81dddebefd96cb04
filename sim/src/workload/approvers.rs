//! The approvers: for every request the signing clients want approved
//! ([`Approval::Given`]) and not yet signed, they read it from a random node
//! and, if it awaits approval and shows the message the client sent, the
//! approvers it lacks (from a random one on) sign the approval statement built
//! from what that node shows and submit it; a failed request sent again is
//! approved again. They stop once every signing client has finished. What they
//! record (`History::approvals_applied`) no checker reads; what they never do
//! is what `PolicyBeforeShares` relies on: a request withheld from them
//! (`Approval::Withheld`) must stay awaiting approval on every node
//! (`policy-bypassed`) with no share released for it (`share-without-policy`).

use std::time::Duration;

use ed25519_dalek::Signer as _;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use synod_proto::api::RequestStatus;
use synod_proto::authz::{approval_bytes, ApprovalSignature};
use synod_proto::webauthn::statement_challenge;
use synod_proto::{Command, Outcome};

use super::{
    call_node, get_request, request_info, Approval, ClientCtx, Submission, APPROVALS_REQUIRED, APPROVERS, CALL_TIMEOUT,
    PASSKEY_APPROVER, PASSKEY_ORIGIN, PASSKEY_RP_ID,
};

/// The approvers: for every request they are to approve that is still
/// unsigned, once a node shows it awaiting approval, approvers not yet counted
/// (from a random one on) sign the approval statement built from what that
/// node shows and submit it. A failed request sent again is a fresh attempt,
/// approved again. Stops once every signing client has finished.
pub async fn approver_client(ctx: ClientCtx, signing_clients: usize) -> turmoil::Result {
    let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed ^ 0xa99_0000);
    loop {
        let (done, wanted) = {
            let history = ctx.history.borrow();
            let wanted: Vec<String> = history
                .sign_pending
                .keys()
                .filter(|id| history.sent.get(*id).is_some_and(|s| s.approval == Approval::Given))
                .cloned()
                .collect();
            (history.signing_clients_done >= signing_clients, wanted)
        };
        if done && wanted.is_empty() {
            break;
        }
        for request_id in wanted {
            approve(&ctx, &mut rng, &request_id).await;
        }
        tokio::time::sleep(Duration::from_millis(50 + rng.next_u64() % 100)).await;
    }
    ctx.history.borrow_mut().clients_done += 1;
    ctx.event("approvers: done".into());
    Ok(())
}

/// Reads `request_id` from a random node and, if it awaits approval, gives the approvals it lacks.
async fn approve(ctx: &ClientCtx, rng: &mut ChaCha8Rng, request_id: &str) {
    let target = ctx.random_node(rng);
    let answer =
        call_node(&ctx.net, target, &get_request(request_id, Duration::ZERO), CALL_TIMEOUT, request_info).await;
    let Ok(Ok(info)) = answer else { return };
    let sent_sha256 = ctx.history.borrow().sent.get(request_id).map(|s| s.message_sha256.clone());
    // An approver checks what it approves: the message the client sent, nothing else.
    if info.status != RequestStatus::AwaitingApproval || sent_sha256.as_deref() != Some(info.message_sha256.as_str()) {
        return;
    }
    let statement = info.approval_statement(&ctx.cluster_id);
    let bytes = approval_bytes(&statement);
    if !info.approvals.iter().any(|x| x == PASSKEY_APPROVER) {
        let challenge = statement_challenge(&bytes);
        probe_cloned_passkey(ctx, rng, request_id, PASSKEY_APPROVER, target, &challenge).await;
    }
    let have = APPROVERS.iter().filter(|a| info.approvals.iter().any(|x| x == *a)).count();
    let mut missing = (APPROVALS_REQUIRED as usize).saturating_sub(have);
    let first = rng.next_u64() as usize % APPROVERS.len();
    for i in (0..APPROVERS.len()).map(|i| (first + i) % APPROVERS.len()) {
        if missing == 0 {
            break;
        }
        let name = APPROVERS[i];
        if info.approvals.iter().any(|x| x == name) {
            continue;
        }
        missing -= 1;
        let key = &ctx.approvers[i];
        let signature = if name == PASSKEY_APPROVER {
            let challenge = statement_challenge(&bytes);
            let assertion = ctx.passkey.borrow_mut().assert(PASSKEY_RP_ID, PASSKEY_ORIGIN, &challenge);
            ApprovalSignature::web_authn(assertion)
        } else {
            ApprovalSignature::Ed25519 { signature: hex::encode(key.sign(&bytes).to_bytes()) }
        };
        let command = Command::Approve { request_id: request_id.to_string(), approver: name.to_string(), signature };
        // The approval signature is the authority; the approver signs the envelope too.
        let signed = ctx.sign(key, rng, command);
        let outcome = ctx.submit(Submission::Command(&signed), target, rng, 5).await.map(|r| r.outcome);
        if let Some(Outcome::Applied { detail }) = &outcome {
            ctx.history.borrow_mut().approvals_applied += 1;
            ctx.event(format!("approvers: {detail}"));
        } else {
            ctx.event(format!("approvers: {name} on {request_id}: {outcome:?}"));
        }
    }
}

/// Sends, for every request the passkey approver has not approved, an approval
/// made by a clone of its authenticator: the counter set back to the last one
/// it used. Every node must refuse it once the approval that used that counter
/// is in the log (the counter does not grow); the passkeys checker catches a
/// state that counts it (`passkey-counter-not-growing`). When that approval was
/// lost on the way, the clone's counter is the highest the cluster has seen and
/// it counts, as the authenticator's own would (`passkey-clone/applied`): the
/// checker judges counters in log order, as the nodes do.
async fn probe_cloned_passkey(
    ctx: &ClientCtx,
    rng: &mut ChaCha8Rng,
    request_id: &str,
    name: &str,
    target: synod_proto::NodeId,
    challenge: &[u8],
) {
    let assertion = {
        let mut passkey = ctx.passkey.borrow_mut();
        let next = passkey.next_counter();
        if next <= 1 {
            return; // Nothing used yet (the workload starts the counter at 1): nothing to go back to.
        }
        passkey.set_counter(next - 1);
        let cloned = passkey.assert(PASSKEY_RP_ID, PASSKEY_ORIGIN, challenge);
        passkey.set_counter(next);
        cloned
    };
    let command = Command::Approve {
        request_id: request_id.to_string(),
        approver: name.to_string(),
        signature: ApprovalSignature::web_authn(assertion),
    };
    let signed = ctx.sign(&ctx.stranger, rng, command);
    let outcome = ctx.submit(Submission::Command(&signed), target, rng, 3).await.map(|r| r.outcome);
    let applied = matches!(outcome, Some(Outcome::Applied { .. }));
    let mut history = ctx.history.borrow_mut();
    // Shown with the run's format counts.
    let label = if applied { "passkey-clone/applied" } else { "passkey-clone/refused" };
    *history.format_counts.entry(label.into()).or_default() += 1;
    drop(history);
    ctx.event(format!("approvers: cloned passkey of {name} on {request_id}: {outcome:?}"));
}

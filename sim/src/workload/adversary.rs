//! The byzantine leader's accomplice: takes the forgeries the driver queues in
//! `History::forgery_queue` (the schedule's byzantine-leader faults), builds
//! each forged entry (a `put` or a membership change signed by a stranger, an
//! admin `put` altered after signing, or a replay of the latest acknowledged
//! write, or a follower's signing outcome signed with its real node key) and
//! proposes it straight to Raft on the leader, skipping
//! `Node::write`'s checks. After a replay it asks every node what it recorded
//! of the replayed command (`GetCommand`, into `History::lookups`): the
//! replay's refusal must not replace the applied record. Each outcome goes into `History::forged`:
//! `ForgeriesRefused` requires that none was applied (a replay of a write an
//! equivocating leader altered excepted) and that no node ever holds a
//! [`FORGED_PREFIX`] key or member [`FORGED_NODE`].

use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use synod_proto::{Command, Envelope, LogEntry, NodeAddr, NodeId, SignedCommand};

use super::{
    Approval, ClientCtx, ForgedResult, LookupCause, Phase, Submission, FORGED_NODE, FORGED_PREFIX, FORGED_REASON,
};
use crate::cluster::EPOCH_MS;
use crate::net;
use crate::schedule::Forgery;

/// How long after a replay the adversary asks the nodes for the replayed
/// command's record: long enough for followers to apply the replay's entry.
const REPLAY_LOOKUP_DELAY: Duration = Duration::from_millis(300);

/// The byzantine leader's accomplice: proposes the forgeries the driver
/// schedules straight to Raft on the leader, then records their outcomes.
pub async fn adversary(ctx: ClientCtx) -> turmoil::Result {
    let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed ^ 0xbad);
    loop {
        let job = ctx.history.borrow_mut().forgery_queue.pop_front();
        let Some((fault_id, forgery, leader)) = job else {
            if matches!(ctx.history.borrow().phase, Phase::Healed { .. }) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let (response, replayed) = if matches!(forgery, Forgery::NodeOutcome | Forgery::MemberOutcome) {
            let build = outcome_forgery(&ctx, &mut rng, forgery);
            (ctx.submit(Submission::RawBy(&build), leader, &mut rng, 10).await, None)
        } else {
            let (entry, replayed_key) = forge(&ctx, &mut rng, fault_id, forgery);
            let response = ctx.submit(Submission::Raw(&entry), leader, &mut rng, 10).await;
            (response, replayed_key.map(|key| (key, entry.command)))
        };
        let outcome = response.map(|r| r.outcome);
        ctx.event(format!("adversary: forgery #{fault_id} {forgery:?} -> {outcome:?}"));
        let replayed_key = replayed.as_ref().map(|(key, _)| key.clone());
        ctx.history.borrow_mut().forged.push(ForgedResult { fault_id, forgery, replayed_key, outcome });
        if let Some((key, command)) = replayed {
            ask_after_replay(&ctx, &key, &command, &mut rng).await;
        }
    }
    ctx.history.borrow_mut().clients_done += 1;
    Ok(())
}

/// After a replay of an applied write: asks every node what it recorded of
/// the command, once the followers have had time to apply the replay. Each
/// must still say "applied" at the first index: the replay's refusal must not
/// replace that record (`CommandOutcomesMatchLog`).
async fn ask_after_replay(ctx: &ClientCtx, key: &str, command: &SignedCommand, rng: &mut ChaCha8Rng) {
    tokio::time::sleep(REPLAY_LOOKUP_DELAY).await;
    for node in 1..=ctx.nodes {
        ctx.lookup(command, key, node, LookupCause::AfterReplay, rng).await;
    }
}

/// A forged entry, and for a replay the key of the write it proposes again.
fn forge(ctx: &ClientCtx, rng: &mut ChaCha8Rng, fault_id: usize, forgery: Forgery) -> (LogEntry, Option<String>) {
    let put = Command::Put { key: format!("{FORGED_PREFIX}{fault_id}"), value: "x".into() };
    let replayable =
        ctx.history.borrow().acks.iter().rev().find(|a| a.index.is_some()).map(|a| (a.command.clone(), a.key.clone()));
    let mut replayed_key = None;
    let command = match forgery {
        Forgery::NonAdminWrite => ctx.sign(&ctx.stranger, rng, put),
        Forgery::NonAdminMember => {
            let addr = NodeAddr { raft_addr: net::node_addr(FORGED_NODE), api_addr: "n99:8000".into() };
            ctx.sign(&ctx.stranger, rng, Command::AddMember { node_id: FORGED_NODE, addr })
        }
        Forgery::Tampered => {
            let mut signed = ctx.sign(&ctx.admin, rng, put);
            signed.envelope = signed.envelope.replace("\"value\":\"x\"", "\"value\":\"y\"");
            signed
        }
        Forgery::NodeOutcome | Forgery::MemberOutcome => unreachable!("built per proposing node by outcome_forgery"),
        Forgery::Replay => match replayable {
            Some((command, key)) => {
                replayed_key = Some(key);
                command
            }
            None => ctx.sign(&ctx.stranger, rng, put),
        },
    };
    (LogEntry { time_ms: EPOCH_MS + ctx.now_ms(), command }, replayed_key)
}

/// A forged `sign_failed`, built for the node that proposes it (the leader
/// that took up signing in the entry's term). [`Forgery::NodeOutcome`] names
/// that node but is signed by a stranger with certificate bytes `00`, so only
/// the certificate check refuses it; [`Forgery::MemberOutcome`] is signed with
/// the real certificate and key of another member (the next node id), so only
/// the coordinator check refuses it.
fn outcome_forgery<'a>(ctx: &'a ClientCtx, rng: &mut ChaCha8Rng, forgery: Forgery) -> impl Fn(NodeId) -> LogEntry + 'a {
    let command = Command::SignFailed {
        request_id: withheld_request(ctx),
        node_id: 0,
        reason: FORGED_REASON.into(),
        culprits: Vec::new(),
        attempt: 0,
    };
    let time_ms = EPOCH_MS + ctx.now_ms();
    let envelope = Envelope::new(ctx.cluster_id.clone(), command, time_ms, 60_000, rng);
    move |proposer| {
        let member = if forgery == Forgery::MemberOutcome { proposer % ctx.nodes + 1 } else { proposer };
        let mut envelope = envelope.clone();
        if let Command::SignFailed { node_id, .. } = &mut envelope.command {
            *node_id = member;
        }
        let command = if forgery == Forgery::MemberOutcome {
            ctx.identities[(member - 1) as usize].sign(&envelope)
        } else {
            SignedCommand { certificate: Some("00".into()), ..SignedCommand::sign(&envelope, &ctx.stranger) }
        };
        LogEntry { time_ms, command }
    }
}

/// A request that stays pending (its approvals are withheld), so a wrongly
/// accepted outcome would change it.
fn withheld_request(ctx: &ClientCtx) -> String {
    ctx.history
        .borrow()
        .sent
        .iter()
        .rev()
        .find(|(_, s)| s.approval == Approval::Withheld)
        .map(|(id, _)| id.clone())
        .unwrap_or_else(|| "no-request-yet".into())
}

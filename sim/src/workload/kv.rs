//! The key-value writers: each client signs, as the admin, `put`s of a new key
//! per write (`c{client}/{seq}`, so a lost write cannot hide behind a later
//! one) and sends each until it is answered (leader hints, retries without
//! bound), as the CLI does: when an attempt's answer is lost, or an error says
//! the write may have been proposed, or a retry is refused as a replay of the
//! first attempt, the client first asks nodes what became of the command
//! (`GetCommand`, [`ClientCtx::fate`]) and takes the recorded outcome; only a
//! command no node knows yet is sent again. After one in
//! [`LOOKUP_SAMPLE_ONE_IN`] ordinary acknowledgements it also looks the write
//! up on a random node. Every lookup answer goes into `History::lookups`
//! (`CommandOutcomesMatchLog` judges them against the committed log).
//!
//! Each acknowledged write goes into `History::acks` with its signed command
//! and the index the cluster named (the write's answer or a node's record;
//! none only when a replay refusal came and no node could be asked):
//! `AckedWritesKept` requires the entry applied at that index to carry that
//! command and, after the heal, every node to hold the key and value (unless
//! an equivocating leader altered its entry). The driver fires the faults
//! triggered after N acknowledged writes by their count, and names the writes
//! still in `History::pending` when clients have not finished within the
//! liveness bound. The adversary replays the latest acknowledged write that
//! has an index.

use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use synod_proto::api::{ClientRequest, CommandStatus, WriteResponse};
use synod_proto::{Command, NodeError, NodeId, Outcome, SignedCommand};

use super::{
    call_node, written, Ack, ClientCtx, Fate, LookupCause, Phase, Workload, CALL_TIMEOUT, FATE_ASKS,
    LOOKUP_SAMPLE_ONE_IN,
};

/// Replicated key-value writes, one unique key per write, so a lost write
/// cannot hide behind a later one.
pub struct KvWorkload;

impl Workload for KvWorkload {
    fn next_command(&mut self, client: usize, seq: u64, rng: &mut ChaCha8Rng) -> Command {
        Command::Put { key: format!("c{client}/{seq:05}"), value: format!("{:016x}", rng.next_u64()) }
    }
}

/// How one write ended for its client.
enum Written {
    /// Applied, at the index its answer or a node's record named (none when a
    /// replay refusal came and no node could be asked).
    Acked { index: Option<u64>, how: &'static str },
    /// Refused, or never to commit: what said so.
    Refused(String),
}

/// One workload client: writes until the heal, then `writes_after_heal` more.
pub async fn workload_client(ctx: ClientCtx, client: usize, mut workload: Box<dyn Workload>) -> turmoil::Result {
    let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed ^ (0xc11e_0000 + client as u64));
    while ctx.history.borrow().phase == Phase::Boot {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut after_heal = 0;
    for seq in 0.. {
        if matches!(ctx.history.borrow().phase, Phase::Healed { .. }) {
            if after_heal == ctx.writes_after_heal {
                break;
            }
            after_heal += 1;
        }
        let command = workload.next_command(client, seq, &mut rng);
        let Command::Put { key, value } = command.clone() else { unreachable!("the kv workload only puts") };
        let signed = ctx.sign(&ctx.admin, &mut rng, command);
        ctx.history.borrow_mut().pending.insert((client, seq), key.clone());
        let first = ctx.random_node(&mut rng);
        let end = write(&ctx, &signed, &key, first, &mut rng).await;
        let event = {
            let mut history = ctx.history.borrow_mut();
            history.pending.remove(&(client, seq));
            match &end {
                Written::Acked { index, how } => {
                    let ack =
                        Ack { key: key.clone(), value, index: *index, command: signed.clone(), at_ms: ctx.now_ms() };
                    history.acks.push(ack);
                    format!("c{client}: ack {key} at index {index:?} ({how})")
                }
                Written::Refused(why) => {
                    history.refused += 1;
                    format!("c{client}: {key} refused: {why}")
                }
            }
        };
        ctx.event(event);
        if matches!(end, Written::Acked { how: "answered", .. }) && rng.next_u64() % LOOKUP_SAMPLE_ONE_IN == 0 {
            let node = ctx.random_node(&mut rng);
            ctx.lookup(&signed, &key, node, LookupCause::Sampled, &mut rng).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.next_u64() % 50)).await;
    }
    ctx.history.borrow_mut().clients_done += 1;
    ctx.event(format!("c{client}: done"));
    Ok(())
}

/// Sends `signed` until it is answered, following leader hints. A lost answer
/// (or an error after which the write may have been proposed) is not simply
/// sent again: the client first asks what became of the command.
async fn write(ctx: &ClientCtx, signed: &SignedCommand, key: &str, first: NodeId, rng: &mut ChaCha8Rng) -> Written {
    let request = ClientRequest::Write { command: signed.clone() };
    let mut target = first;
    loop {
        let asks = match call_node(&ctx.net, target, &request, CALL_TIMEOUT, written).await {
            Ok(Ok(response)) => return settle(ctx, signed, key, response, rng).await,
            Ok(Err(e)) if e.leader().is_some_and(|hint| hint.node_id != target) => {
                target = e.leader().map_or(target, |hint| hint.node_id);
                continue;
            }
            // Refused before anything was proposed.
            Ok(Err(NodeError::NotLeader { .. } | NodeError::Invalid { .. } | NodeError::NotInitialised { .. })) => 0,
            // The node may have proposed it before it answered.
            Ok(Err(_)) => 1,
            // The answer was lost: the node may have applied it.
            Err(_) => FATE_ASKS,
        };
        if asks > 0 {
            match ctx.fate(signed, key, LookupCause::Lost, asks, rng).await {
                Fate::Known(known) => return recorded(&known),
                Fate::Never(answer) => return Written::Refused(format!("it can never commit: {:?}", answer.errors)),
                Fate::Unknown => {}
            }
        }
        target = ctx.random_node(rng);
        tokio::time::sleep(Duration::from_millis(20 + rng.next_u64() % 80)).await;
    }
}

/// How a write's answer ends it. A refusal as a replay means an earlier
/// attempt (a lost one, or a copy the network duplicated) applied first: the
/// client asks a node for that command's record and takes its index.
async fn settle(
    ctx: &ClientCtx,
    signed: &SignedCommand,
    key: &str,
    response: WriteResponse,
    rng: &mut ChaCha8Rng,
) -> Written {
    match &response.outcome {
        Outcome::Applied { .. } => Written::Acked { index: Some(response.index), how: "answered" },
        Outcome::Rejected { reason, .. } if reason.contains("replay") => {
            match ctx.fate(signed, key, LookupCause::Replay, FATE_ASKS, rng).await {
                Fate::Known(known) => recorded(&known),
                // No node could be asked: the refusal alone says an earlier attempt applied.
                Fate::Unknown | Fate::Never(_) => Written::Acked { index: None, how: "a retry; applied earlier" },
            }
        }
        other => Written::Refused(format!("{other:?}")),
    }
}

/// A write ended by a node's record of it.
fn recorded(known: &synod_proto::api::CommandOutcome) -> Written {
    match known.status {
        CommandStatus::Applied => Written::Acked { index: known.index, how: "by its record" },
        _ => Written::Refused(format!("its record says {:?} at index {:?}", known.outcome, known.index)),
    }
}

//! The key-value writers: each client signs, as the admin, `put`s of a new key
//! per write (`c{client}/{seq}`, so a lost write cannot hide behind a later
//! one) and submits each through `ClientCtx::submit` (leader hints, retries
//! without bound) until it is answered, writing until the heal and then
//! `writes_after_heal` more. Each acknowledged write goes into `History::acks`
//! with its signed command and the index the cluster named (none when a
//! retry's "replay" refusal acknowledges an attempt that applied unseen):
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
use synod_proto::{Command, Outcome};

use super::{Ack, ClientCtx, Phase, Submission, Workload};

/// Replicated key-value writes, one unique key per write, so a lost write
/// cannot hide behind a later one.
pub struct KvWorkload;

impl Workload for KvWorkload {
    fn next_command(&mut self, client: usize, seq: u64, rng: &mut ChaCha8Rng) -> Command {
        Command::Put { key: format!("c{client}/{seq:05}"), value: format!("{:016x}", rng.next_u64()) }
    }
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
        let first = 1 + rng.next_u64() % ctx.nodes;
        let response = ctx
            .submit(Submission::Command(&signed), first, &mut rng, u32::MAX)
            .await
            .expect("unbounded attempts always end in a response");
        let event = {
            let mut history = ctx.history.borrow_mut();
            history.pending.remove(&(client, seq));
            let ack = |index| Ack { key: key.clone(), value, index, command: signed.clone(), at_ms: ctx.now_ms() };
            match &response.outcome {
                Outcome::Applied { .. } => {
                    history.acks.push(ack(Some(response.index)));
                    format!("c{client}: ack {key} at index {}", response.index)
                }
                Outcome::Rejected { reason, .. } if reason.contains("replay") => {
                    // A retry of a write whose first attempt applied without an answer.
                    history.acks.push(ack(None));
                    format!("c{client}: ack {key} (a retry; applied earlier)")
                }
                other => {
                    history.refused += 1;
                    format!("c{client}: {key} refused: {other:?}")
                }
            }
        };
        ctx.event(event);
        tokio::time::sleep(Duration::from_millis(rng.next_u64() % 50)).await;
    }
    ctx.history.borrow_mut().clients_done += 1;
    ctx.event(format!("c{client}: done"));
    Ok(())
}

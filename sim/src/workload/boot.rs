//! The boot client: `synod cluster init` against node 1 with the genesis
//! command (one admin, every simulated node a member, the simulation's CA),
//! retried until genesis is committed; an earlier attempt that committed with
//! its answer lost comes back as a conflict, which also ends it. It moves the
//! run from [`Phase::Boot`] to [`Phase::Setup`]: the driver steps until then
//! before anything else (and fails the run if genesis is not committed in
//! time), and the writers and the admin wait for it. `ForgeriesRefused` holds
//! every node to the admins this genesis names (the driver builds that set
//! from the same admin key).
//!
//! First, an intruder (a client-certificate holder with a key of its own)
//! sends the last node a genesis naming itself the admin. Every node's
//! operator pinned only the simulation's admin (`genesis_admins`), so it must
//! be refused; with the planted `skip-genesis-pin` it initialises the cluster
//! and `ForgeriesRefused` sees admins genesis did not name.

use std::time::Duration;

use ed25519_dalek::SigningKey;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use synod_proto::api::ClientRequest;
use synod_proto::NodeError;
use synod_proto::{Command, Member, NodeAddr, OperatorKey, SignedCommand};

use super::{call_node, written, ClientCtx, Phase};
use crate::net;

/// The genesis command: one admin, every simulated node a member.
pub fn genesis(ctx: &ClientCtx, rng: &mut ChaCha8Rng) -> SignedCommand {
    genesis_by(ctx, &ctx.admin, rng)
}

/// A genesis naming, and signed by, `admin`.
fn genesis_by(ctx: &ClientCtx, admin: &SigningKey, rng: &mut ChaCha8Rng) -> SignedCommand {
    let members = (1..=ctx.nodes)
        .map(|id| Member {
            node_id: id,
            addr: NodeAddr { raft_addr: net::node_addr(id), api_addr: format!("{}:8000", net::node_name(id)) },
        })
        .collect();
    let command = Command::VersionedGenesis {
        rules: synod_proto::command::RULES_CURRENT,
        admins: vec![OperatorKey::of(admin)],
        members,
        ca_certificate: ctx.ca_certificate.clone(),
    };
    ctx.sign(admin, rng, command)
}

/// `synod cluster init` against node 1, retried until genesis is committed,
/// after the intruder's attempt on the last node.
pub async fn boot_client(ctx: ClientCtx) -> turmoil::Result {
    let mut intruder_rng = ChaCha8Rng::seed_from_u64(ctx.seed ^ 0x1a7d);
    let foreign = ClientRequest::Init { command: genesis_by(&ctx, &ctx.stranger, &mut intruder_rng) };
    let answer = call_node(&ctx.net, ctx.nodes, &foreign, Duration::from_secs(20), written).await;
    ctx.event(format!("boot: an intruder's genesis at n{}: {answer:?}", ctx.nodes));
    let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed ^ 0xb007);
    let command = genesis(&ctx, &mut rng);
    loop {
        let init = ClientRequest::Init { command: command.clone() };
        match call_node(&ctx.net, 1, &init, Duration::from_secs(20), written).await {
            Ok(Ok(response)) if response.outcome.is_applied() => break,
            // An earlier attempt committed it and only the answer was lost.
            Ok(Err(NodeError::Conflict { .. })) => break,
            other => {
                ctx.event(format!("boot: init not done yet: {other:?}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let mut history = ctx.history.borrow_mut();
    history.phase = Phase::Setup;
    history.genesis_at_ms = ctx.now_ms();
    drop(history);
    ctx.event("boot: genesis committed".into());
    Ok(())
}

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
use synod_proto::{Command, Envelope, Member, NodeAddr, OperatorKey, SignedCommand};

use super::{call_node, written, ClientCtx, Phase, COMMAND_TTL_MS};
use crate::cluster::EPOCH_MS;
use crate::net;

/// What a simulated genesis names besides its admin.
pub struct GenesisOf<'a> {
    /// How many nodes there are; every one is a member.
    pub nodes: u64,
    /// The cluster CA (hex DER).
    pub ca_certificate: &'a str,
    /// The name the genesis envelope carries (the cluster id derives from the whole envelope).
    pub cluster_name: &'a str,
}

/// A genesis naming, and signed by, `admin`, issued at the simulation's
/// epoch. The run builds the real one before any client starts, so every
/// client signs for the cluster id derived from it.
pub fn genesis_by(of: &GenesisOf<'_>, admin: &SigningKey, rng: &mut ChaCha8Rng) -> SignedCommand {
    let members = (1..=of.nodes)
        .map(|id| Member {
            node_id: id,
            addr: NodeAddr { raft_addr: net::node_addr(id), api_addr: format!("{}:8000", net::node_name(id)) },
        })
        .collect();
    let command = Command::VersionedGenesis {
        rules: synod_proto::command::RULES_CURRENT,
        admins: vec![OperatorKey::of(admin)],
        members,
        ca_certificate: of.ca_certificate.to_string(),
        key_destroy_wait_min_ms: Some(super::lifecycle::DESTROY_WAIT_MS),
    };
    let envelope = Envelope::new(of.cluster_name, command, EPOCH_MS, COMMAND_TTL_MS, rng);
    SignedCommand::sign(&envelope, admin)
}

/// `synod cluster init` against node 1, retried until genesis is committed,
/// after the intruder's attempt on the last node.
pub async fn boot_client(ctx: ClientCtx) -> turmoil::Result {
    let mut intruder_rng = ChaCha8Rng::seed_from_u64(ctx.seed ^ 0x1a7d);
    let of = GenesisOf { nodes: ctx.nodes, ca_certificate: &ctx.ca_certificate, cluster_name: &ctx.cluster_name };
    let foreign = ClientRequest::Init { command: genesis_by(&of, &ctx.stranger, &mut intruder_rng) };
    let answer = call_node(&ctx.net, ctx.nodes, &foreign, Duration::from_secs(20), written).await;
    ctx.event(format!("boot: an intruder's genesis at n{}: {answer:?}", ctx.nodes));
    let command = ctx.genesis.clone();
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

//! A byzantine member that sends its peers snapshots: runs on that node's own
//! host (so its calls carry its identity, as its certificate would) next to
//! the honest node code, which it does not change.
//!
//! While the fault window is open, every 1 to 3 s it sends every other member:
//! - a **forged** snapshot: its own state plus a key under
//!   [`crate::workload::FORGED_PREFIX`], claimed 1,000 entries and 50 terms
//!   ahead, endorsed by itself alone, under a vote for itself in that term; and
//! - while it leads, a **stale** one: the newest snapshot its node would send,
//!   genuinely endorsed, under its own vote (installed only by a receiver that is
//!   behind it, such as a wiped node, which must then sign nothing until it has
//!   caught up to a majority-confirmed index).
//!
//! `ForgeriesRefused` fails the run if any node ever holds the forged key, and
//! the state checker if states diverge; `--plant trust-snapshot` makes the
//! receivers install without checks, which those checkers must catch.

use std::sync::Arc;
use std::time::Duration;

use openraft::raft::InstallSnapshotRequest;
use openraft::{CommittedLeaderId, LogId, SnapshotMeta, Vote};
use rand_chacha::ChaCha20Rng;
use rand_core::RngCore;
use sha2::{Digest, Sha256};
use synod_node::node::Node;
use synod_node::pki::NodeIdentity;
use synod_node::raft::snapshot::{encode, Tail};
use synod_proto::command::SnapshotPoint;
use synod_proto::rpc::{PeerRequest, SNAPSHOT_CHUNK_BYTES};
use synod_proto::{Command, Envelope, NodeAddr, NodeId};

use crate::net::SharedNet;
use crate::workload::FORGED_PREFIX;

type Meta = SnapshotMeta<NodeId, NodeAddr>;

/// How far ahead of its own state the forged snapshot claims to be.
const FORGED_ENTRIES_AHEAD: u64 = 1_000;
const FORGED_TERMS_AHEAD: u64 = 50;

/// Sends forged and stale snapshots from `node` until its host crashes.
pub async fn forge_snapshots(node: Arc<Node>, net: SharedNet, identity: Arc<NodeIdentity>, mut rng: ChaCha20Rng) {
    loop {
        tokio::time::sleep(Duration::from_millis(1_000 + rng.next_u64() % 2_000)).await;
        if !net.lock().expect("net").window_open() {
            continue;
        }
        // The node's real audit chain, so the forgery fails only for want of endorsers.
        let Ok(audit) = node.audit_records(1, usize::MAX).await else { continue };
        let Some((vote, meta, data)) = forged(&node, &identity, audit, &mut rng) else { continue };
        net.lock().expect("net").counted("forged_snapshot");
        send_to_peers(&node, vote, &meta, &data).await;
        // The stale one only while this node leads, under its own vote: a vote for itself
        // that it did not win would let it collect a second vote in a term from a node that
        // had voted for another (any byzantine voter can split a term that way; Raft is not
        // byzantine tolerant, and the Raft checkers assume honest votes).
        let vote = node.raft.metrics().borrow().vote;
        let leading = vote.is_committed() && vote.leader_id().voted_for() == Some(node.id);
        if let Some((meta, data)) = node.state().points().ready_snapshot().filter(|_| leading) {
            net.lock().expect("net").counted("stale_snapshot");
            send_to_peers(&node, vote, &meta, &data).await;
        }
    }
}

/// A snapshot of this node's state with a forged key, claimed far ahead and
/// endorsed by this node alone; `None` before genesis.
fn forged(
    node: &Node,
    identity: &NodeIdentity,
    audit: Vec<synod_node::state::AuditRecord>,
    rng: &mut ChaCha20Rng,
) -> Option<(Vote<NodeId>, Meta, Vec<u8>)> {
    let mut applied = node.state().read().clone();
    let cluster_id = applied.state.cluster_id.clone()?;
    let last = applied.last_applied?;
    let term = last.leader_id.term + FORGED_TERMS_AHEAD;
    let forged_last = LogId::new(CommittedLeaderId::new(term, node.id), last.index + FORGED_ENTRIES_AHEAD);
    let key = format!("{FORGED_PREFIX}snapshot-n{}", node.id);
    let record = synod_proto::api::KvRecord {
        key: key.clone(),
        value: "x".into(),
        version: 1,
        author: synod_proto::OperatorKey([0; 32]),
        updated_index: forged_last.index,
        updated_at_ms: applied.state.time_ms,
    };
    applied.state.kv.insert(key, record);
    applied.last_applied = Some(forged_last);
    let applied_json = serde_json::to_vec(&applied).expect("state serialises");
    let point = SnapshotPoint {
        cluster_id: cluster_id.clone(),
        index: forged_last.index,
        term,
        state_sha256: hex::encode(Sha256::digest(&applied_json)),
    };
    let command = Command::Endorse { node_id: node.id, point };
    let endorsement = identity.sign(&Envelope::new(cluster_id, command, node.now_ms(), 60_000, rng));
    let audit: Vec<_> = audit.into_iter().take_while(|r| r.seq <= applied.state.audit_head.seq).collect();
    let data = encode(&applied_json, &Tail { audit, endorsements: vec![endorsement] });
    let meta = SnapshotMeta {
        last_log_id: Some(forged_last),
        last_membership: applied.last_membership.clone(),
        snapshot_id: format!("forged-{}", forged_last.index),
    };
    Some((Vote::new_committed(term, node.id), meta, data))
}

/// Sends the snapshot to every other member, in chunks, as Raft would.
async fn send_to_peers(node: &Node, vote: Vote<NodeId>, meta: &Meta, data: &[u8]) {
    let members = node.state().read().state.members.clone();
    for (&target, addr) in members.iter().filter(|(id, _)| **id != node.id) {
        let mut offset = 0;
        for chunk in data.chunks(SNAPSHOT_CHUNK_BYTES as usize) {
            let done = offset + chunk.len() == data.len();
            let request =
                InstallSnapshotRequest { vote, meta: meta.clone(), offset: offset as u64, data: chunk.to_vec(), done };
            let call = node.transport().call(
                target,
                addr.raft_addr.clone(),
                PeerRequest::InstallSnapshot(request),
                Duration::from_secs(2),
            );
            if call.await.is_err() {
                break;
            }
            offset += chunk.len();
        }
    }
}

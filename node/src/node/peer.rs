//! Answers other nodes' calls: Raft's RPCs (through the vote gate, and never
//! under a vote the sender cannot hold), snapshots (verified first), pings,
//! forwarded writes, DKG round-2 packages and the signer's preprocessing and
//! share calls.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use synod_proto::rpc::{PeerRequest, PeerResponse};
use synod_proto::NodeId;

use super::Node;
use crate::faults;
use crate::transport::PeerHandler;

impl Node {
    /// Whether `peer` may speak to this node: a member of the signed registry,
    /// or, before genesis has been applied here, of Raft's bootstrap membership.
    pub fn is_member(&self, peer: NodeId) -> bool {
        let applied = self.shared.read();
        if applied.state.cluster_id.is_some() {
            return applied.state.members.contains_key(&peer);
        }
        let membership = applied.last_membership.membership();
        let bootstrap = membership.nodes().next().is_none();
        // An uninitialised node accepts any node certified by the cluster CA, so
        // that it can be initialised or join; it holds nothing worth protecting yet.
        bootstrap || membership.nodes().any(|(id, _)| *id == peer)
    }

    /// Why a call only a leader makes (entries, a snapshot) must be refused, if it must.
    fn refuse_leader_call(&self, from: NodeId, vote: &openraft::Vote<NodeId>) -> Option<String> {
        refuse_borrowed_vote(from, vote).or_else(|| self.refuse_rival_leader(vote))
    }

    /// A refusal when `vote` is committed for one leader in a term this node
    /// holds committed for another. Two leaders of one term cannot both be
    /// elected, so the sender lies; and openraft 0.9 panics when it compares
    /// two such votes (`Vote::partial_cmp`), which would stop this node's Raft
    /// (found by the simulator's snapshot forger).
    pub(super) fn refuse_rival_leader(&self, vote: &openraft::Vote<NodeId>) -> Option<String> {
        let mine = self.raft.metrics().borrow().vote;
        rival_leaders(vote, &mine).then(|| {
            format!(
                "a committed vote for {} in term {}, which this node knows is led by {}",
                vote.leader_id().voted_for().map_or("no node".into(), |n| format!("node {n}")),
                vote.leader_id().term,
                mine.leader_id().voted_for().map_or("no node".into(), |n| format!("node {n}")),
            )
        })
    }
}

/// Entries and snapshots come only from the leader their vote names. A member
/// sending them under another node's vote (this node's own, say) would make
/// this node follow a leader that never spoke; openraft 0.9 even asserts, on a
/// leader handed its own vote, that it is not leading (the simulator found it).
fn refuse_borrowed_vote(from: NodeId, vote: &openraft::Vote<NodeId>) -> Option<String> {
    let leader = vote.leader_id().voted_for();
    (leader != Some(from)).then(|| {
        format!(
            "node {from} sent entries or a snapshot under the vote of {}; only that leader may",
            leader.map_or("no node".to_string(), |l| format!("node {l}"))
        )
    })
}

/// Whether two votes name different leaders, both committed, in one term
/// (openraft cannot order them, and panics if asked to).
pub(super) fn rival_leaders(a: &openraft::Vote<NodeId>, b: &openraft::Vote<NodeId>) -> bool {
    a.is_committed() && b.is_committed() && a.leader_id().partial_cmp(b.leader_id()).is_none()
}

/// Serves peers' calls on behalf of a node.
pub struct NodeHandler(pub Arc<Node>);

impl PeerHandler for NodeHandler {
    fn is_authorized(&self, peer: NodeId) -> bool {
        self.0.is_member(peer)
    }

    fn handle(&self, from: NodeId, request: PeerRequest) -> BoxFuture<'static, PeerResponse> {
        let node = self.0.clone();
        async move {
            match request {
                PeerRequest::AppendEntries(rpc) => {
                    if let Some(why) = node.refuse_leader_call(from, &rpc.vote) {
                        tracing::warn!(from, why, "refusing entries");
                        return PeerResponse::Refused(why);
                    }
                    if let Some(why) = node.refuse_foreign_genesis(&rpc.entries) {
                        tracing::warn!(from, why, "refusing a genesis this node's operator did not pin");
                        return PeerResponse::Refused(why);
                    }
                    if let Some(why) = node.refuse_time_ahead(from, &rpc) {
                        return PeerResponse::TimeRefused(why);
                    }
                    node.note_leader_commit(rpc.leader_commit.map(|l| l.index));
                    let result = node.raft.append_entries(rpc).await;
                    PeerResponse::AppendEntries { result, clock_ms: node.now_ms() }
                }
                PeerRequest::Vote(rpc) => {
                    if let Some(why) = node.refuse_rival_leader(&rpc.vote) {
                        tracing::warn!(from, why, "refusing a vote request");
                        return PeerResponse::Refused(why);
                    }
                    match node.refuse_vote(&rpc) {
                        Some(refusal) => PeerResponse::Vote(Ok(refusal)),
                        None => PeerResponse::Vote(node.raft.vote(rpc).await),
                    }
                }
                PeerRequest::InstallSnapshot(rpc) => {
                    if let Some(why) = node.refuse_leader_call(from, &rpc.vote) {
                        tracing::warn!(from, why, "refusing a snapshot");
                        return PeerResponse::Refused(why);
                    }
                    node.receive_snapshot_chunk(from, rpc).await
                }
                PeerRequest::Ping => {
                    let last_log = node.last_log_id().await;
                    let metrics = node.raft.metrics().borrow().clone();
                    let applied = node.shared.read();
                    PeerResponse::Pong {
                        node_id: node.id,
                        cluster_id: applied.state.cluster_id.clone(),
                        last_applied: applied.last_applied.map(|l| l.index),
                        vote: Some(metrics.vote),
                        last_log,
                    }
                }
                PeerRequest::Forward(command) => {
                    tracing::debug!(from, "write forwarded by a follower");
                    PeerResponse::Forward(node.write_inner(command, false).await)
                }
                PeerRequest::DkgRound2 { key_id, package } => {
                    PeerResponse::DkgRound2(node.dkg.receive_round2(&*node, from, &key_id, &package))
                }
                PeerRequest::RefreshRound2 { key_id, generation, attempt, package } => PeerResponse::RefreshRound2(
                    node.refreshes.receive_round2(&*node, from, &key_id, (generation, attempt), &package),
                ),
                PeerRequest::RepairDelta { key_id, target, attempt, delta } => PeerResponse::RepairDelta(
                    node.repairs.receive_delta(&*node, from, &key_id, (target, attempt), &delta),
                ),
                PeerRequest::RepairSigma { key_id, attempt, sigma } => {
                    PeerResponse::RepairSigma(node.repairs.receive_sigma(&*node, from, &key_id, attempt, &sigma))
                }
                PeerRequest::SignPreprocess { key_id, count } => {
                    let answer = node.signer.preprocess(&key_id, count, from).await;
                    PeerResponse::SignPreprocess(answer.map(|batch| faults::wrong_commitments(node.id, batch)))
                }
                PeerRequest::SignShare { asks } if asks.len() > synod_proto::rpc::SHARE_ASKS_MAX => {
                    PeerResponse::Refused(format!(
                        "{} share asks in one call; at most {} are accepted",
                        asks.len(),
                        synod_proto::rpc::SHARE_ASKS_MAX
                    ))
                }
                PeerRequest::SignShare { asks } => {
                    if let Some(why) = node.share_gate_refusal() {
                        return PeerResponse::SignShare(asks.iter().map(|_| Err(why.clone())).collect());
                    }
                    let answers = node.signer.share_batch(&asks, from, false).await;
                    if answers.iter().any(Result::is_ok) {
                        faults::crash_point(node.id, faults::SIGNER_AFTER_SHARE).await;
                    }
                    PeerResponse::SignShare(answers)
                }
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use openraft::Vote;

    use super::*;

    #[test]
    fn peer_votes_a_sender_cannot_hold_are_refused() {
        // Entries under another node's vote are refused; a rival committed leader of the
        // same term is recognised without asking openraft to compare (which panics).
        assert!(refuse_borrowed_vote(2, &Vote::new_committed(5, 2)).is_none());
        let why = refuse_borrowed_vote(3, &Vote::new_committed(5, 2)).unwrap();
        assert!(why.contains("node 3") && why.contains("vote of node 2"), "{why}");
        assert!(rival_leaders(&Vote::new_committed(5, 2), &Vote::new_committed(5, 3)));
        assert!(!rival_leaders(&Vote::new_committed(5, 2), &Vote::new_committed(5, 2)));
        assert!(!rival_leaders(&Vote::new_committed(6, 2), &Vote::new_committed(5, 3)));
        assert!(!rival_leaders(&Vote::new(5, 2), &Vote::new_committed(5, 3)));
    }
}

//! The vote gate: a node that started on an empty disk grants no vote until it
//! has caught up with the log a leader sent it.

use synod_proto::NodeId;

use super::Node;

/// Where a node that started on an empty disk stands.
///
/// Raft assumes a node never loses its vote or acknowledged entries. A node
/// whose disk was wiped or replaced looks exactly like a new one, so until it
/// has caught up with the log a leader sent it, it grants no vote: otherwise it
/// could vote twice in a term, or for a candidate that lacks entries it had
/// acknowledged (the simulator found committed entries lost that way). The one
/// vote it may grant is in the bootstrap election of a new cluster, whose
/// candidate holds only the initial membership (log index 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CatchUp {
    /// The node's disk held Raft state when it started.
    NotNeeded,
    /// Empty disk; no leader has told it the commit index yet.
    AwaitingLeader,
    /// Empty disk; caught up once it has applied this index.
    Until(u64),
    /// Caught up.
    Done,
}

impl Node {
    /// Records the commit index a leader sent to a node that started on an empty disk.
    pub(super) fn note_leader_commit(&self, commit_index: Option<u64>) {
        let mut catch_up = self.catch_up.lock().expect("catch-up lock");
        if *catch_up == CatchUp::AwaitingLeader {
            *catch_up = CatchUp::Until(commit_index.unwrap_or(0));
        }
    }

    /// Where this node stands after an empty disk, moving `Until` to `Done`
    /// once it has applied the target; with the Raft metrics it judged by.
    fn catch_up_now(&self) -> (CatchUp, openraft::RaftMetrics<NodeId, synod_proto::NodeAddr>) {
        let mut catch_up = self.catch_up.lock().expect("catch-up lock");
        let metrics = self.raft.metrics().borrow().clone();
        if let CatchUp::Until(target) = *catch_up {
            if metrics.last_applied.is_some_and(|l| l.index >= target) {
                tracing::info!(target, "caught up after starting on an empty disk; voting again");
                *catch_up = CatchUp::Done;
            }
        }
        (*catch_up, metrics)
    }

    /// Whether this node started on an empty disk and has not caught up yet,
    /// past a new cluster's bootstrap: then it must not stand for election
    /// either. Its own vote counts like any other, so a wiped node that stood
    /// with the log it had rebuilt so far could be elected by voters that lack
    /// committed entries it had held before the wipe (the simulator lost a
    /// committed entry that way: chaos seed 403, where time refusals had held
    /// two followers back).
    pub(super) fn catching_up(&self) -> bool {
        let (catch_up, metrics) = self.catch_up_now();
        let bootstrap = metrics.last_log_index.is_none_or(|i| i == 0);
        matches!(catch_up, CatchUp::AwaitingLeader | CatchUp::Until(_)) && !bootstrap
    }

    /// A refusal when this node started on an empty disk and has not caught up
    /// (see [`CatchUp`]); `None` when Raft may decide the vote.
    pub(super) fn refuse_vote(
        &self,
        request: &openraft::raft::VoteRequest<NodeId>,
    ) -> Option<openraft::raft::VoteResponse<NodeId>> {
        let (catch_up, metrics) = self.catch_up_now();
        let bootstrap = request.last_log_id.is_none_or(|l| l.index == 0);
        if matches!(catch_up, CatchUp::NotNeeded | CatchUp::Done) || bootstrap {
            return None;
        }
        tracing::info!(candidate = %request.vote, state = ?catch_up, "refusing a vote: started on an empty disk and not caught up yet");
        Some(openraft::raft::VoteResponse { vote: metrics.vote, vote_granted: false, last_log_id: None })
    }
}

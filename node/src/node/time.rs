//! The node's side of bounded time (`crate::time`): the stamp this node puts
//! on the entries it proposes as leader, the follower's gate on entries
//! stamped too far ahead, and the leader's view of its voters' clocks.

use std::collections::{BTreeMap, BTreeSet};

use openraft::raft::AppendEntriesRequest;
use synod_proto::{NodeId, TypeConfig};

use super::Node;
use crate::{faults, time};

/// The leader whose entries this follower refused as stamped too far ahead:
/// its term and node. Its later calls in that term are refused too, so that
/// its heartbeats do not keep this node from electing another leader.
pub(super) type TimeRefused = std::sync::Mutex<Option<(u64, NodeId)>>;

impl Node {
    /// The time to stamp on an entry this node proposes: the time of a
    /// majority of the voters' clocks (this node's and the fresh estimates of
    /// the others'), or this node's clock when it has no fresh estimates from
    /// a majority; see [`time::stamp_ms`].
    pub(super) fn stamp_time_ms(&self) -> u64 {
        let own_ms = self.now_ms();
        if faults::enabled_for(self.id, faults::STAMP_FAR_AHEAD) {
            tracing::warn!(node = self.id, "fault stamp-far-ahead: stamping this entry 200 days ahead");
            return own_ms.saturating_add(faults::FAR_AHEAD_MS);
        }
        let voters: BTreeSet<NodeId> =
            self.raft.metrics().borrow().membership_config.membership().voter_ids().collect();
        let estimates = self.peer_health.clock_estimates(self.silent_limit);
        let majority_ms = time::majority_clock_ms(self.id, own_ms, &voters, &estimates).unwrap_or(own_ms);
        let state_ms = self.shared.read().state.time_ms;
        time::stamp_ms(majority_ms, state_ms, self.clock_skew_ms_max)
    }

    /// Why this follower refuses an AppendEntries whose entries are stamped
    /// more than `raft.clock_skew_ms_max` ahead of its own clock (or that comes
    /// from a leader it already refused so in the same term), or `None` to let
    /// Raft judge the call. The whole call is refused, never trimmed: openraft
    /// counts every entry it sent as stored when the answer is a success. A
    /// call from a term older than this node's goes to Raft, which refuses it
    /// with the newer vote, so a leader that stamped ahead learns it was
    /// replaced and steps down.
    pub(super) fn refuse_time_ahead(&self, from: NodeId, rpc: &AppendEntriesRequest<TypeConfig>) -> Option<String> {
        if faults::enabled(faults::TRUST_ENTRY_TIME) {
            return None;
        }
        let term = rpc.vote.leader_id().term;
        if term < self.raft.metrics().borrow().vote.leader_id().term {
            return None;
        }
        let mut refused = self.time_refused.lock().expect("time refusal lock");
        if *refused == Some((term, from)) {
            return Some(format!(
                "node {} refused entries node {from} stamped too far ahead in term {term}; it ignores node {from} \
                 until another leader is elected",
                self.id
            ));
        }
        let own_ms = self.now_ms();
        let (index, ahead_ms) = time::first_entry_ahead(&rpc.entries, own_ms, self.clock_skew_ms_max)?;
        tracing::warn!(
            leader = from,
            term,
            index,
            ahead_ms,
            allowed_ms = self.clock_skew_ms_max,
            "refusing entries the leader stamped too far ahead of this node's clock; check both clocks"
        );
        *refused = Some((term, from));
        Some(format!(
            "entry {index} from leader {from} is stamped {ahead_ms} ms ahead of node {}'s clock (at most {} ms \
             allowed, raft.clock_skew_ms_max); check the clocks of both nodes",
            self.id, self.clock_skew_ms_max
        ))
    }

    /// While this node leads: each member's clock offset from this node's
    /// clock, in ms, from the fresh estimates (this node's own is 0).
    pub(super) fn clock_offsets_ms(&self) -> BTreeMap<NodeId, i64> {
        let own_ms = self.now_ms();
        let mut offsets: BTreeMap<NodeId, i64> = self
            .peer_health
            .clock_estimates(self.silent_limit)
            .into_iter()
            .map(|(peer, estimate)| (peer, estimate as i64 - own_ms as i64))
            .collect();
        offsets.insert(self.id, 0);
        offsets
    }
}

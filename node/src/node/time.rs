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

/// How long a node whose stamped time a majority refuses stays out of
/// elections at most, in election timeouts (it comes back at once when another
/// leader has taken over).
const TIME_STAND_DOWN_TIMEOUTS: u64 = 20;

/// Keeps a node whose stamped time a majority refuses out of elections. Its
/// log holds entries stamped far ahead that the others refuse, and it is the
/// longest log, so it would win election after election and raise the term
/// each time, disrupting the others' elections (found by the simulator: chaos
/// seeds 227, 250, 718 and 943). Out of elections, it lets the others elect a
/// leader, whose entries then truncate its future-stamped ones.
pub(super) async fn stand_down_when_time_refused(node: std::sync::Weak<Node>, tuning: crate::config::RaftTuning) {
    let tick = std::time::Duration::from_millis(tuning.heartbeat_ms);
    let recent = std::time::Duration::from_millis(2 * tuning.election_timeout_max_ms);
    let stand_down = std::time::Duration::from_millis(TIME_STAND_DOWN_TIMEOUTS * tuning.election_timeout_max_ms);
    let mut until: Option<tokio::time::Instant> = None;
    loop {
        tokio::time::sleep(tick).await;
        let Some(node) = node.upgrade() else { return };
        let m = node.raft.metrics().borrow().clone();
        if let Some(deadline) = until {
            let replaced = m.current_leader.is_some_and(|leader| leader != node.id);
            if replaced || tokio::time::Instant::now() >= deadline {
                tracing::info!(replaced, "standing for election again");
                node.peer_health.forget_time_refusals();
                // `break_election_ties` switches elections back on.
                node.time_standing_down.store(false, std::sync::atomic::Ordering::Relaxed);
                until = None;
            }
            continue;
        }
        let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
        let others = voters.iter().filter(|v| **v != node.id).count();
        let majority = voters.len() / 2 + 1;
        let refusers = node.peer_health.time_refusers(recent);
        // This node cannot commit when the others that take its entries, with it, are no majority.
        if voters.contains(&node.id) && others - refusers.len().min(others) + 1 < majority {
            tracing::warn!(
                ?refusers,
                "a majority refuses the time this node stamped on its entries; it stops standing for election \
                 until another leader has taken over; check this node's clock"
            );
            // `break_election_ties` switches elections off while the flag is set.
            node.time_standing_down.store(true, std::sync::atomic::Ordering::Relaxed);
            until = Some(tokio::time::Instant::now() + stand_down);
        }
    }
}

/// How far this node's wall clock may move apart from its monotonic clock
/// between two looks before it takes itself for resumed (or cloned).
pub const RESUME_GAP_MS: u64 = 5_000;
/// How often the clocks are compared.
const RESUME_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Drops the signer's fresh nonce slots whenever the wall clock and the
/// monotonic clock move apart by more than [`RESUME_GAP_MS`]: a VM snapshot
/// resumed (once or twice), a process frozen and thawed, or a clock stepped.
/// A guest cannot reliably tell it was resumed, and two resumed images of one
/// node would hold the same nonces; clones of a running node are unsupported
/// (ARCHITECTURE.md, *Cloned memory*), and this is the detection that makes the
/// common case safe. A dropped slot costs the coordinator a refill.
pub(super) async fn drop_slots_on_resume(node: std::sync::Weak<Node>) {
    let Some(first) = node.upgrade() else { return };
    let mut last = (first.now_ms(), tokio::time::Instant::now());
    drop(first);
    loop {
        tokio::time::sleep(RESUME_CHECK_EVERY).await;
        let Some(node) = node.upgrade() else { return };
        let now = (node.now_ms(), tokio::time::Instant::now());
        let wall = now.0 as i128 - last.0 as i128;
        let mono = now.1.duration_since(last.1).as_millis() as i128;
        if (wall - mono).unsigned_abs() > RESUME_GAP_MS as u128 {
            let dropped = node.signer.drop_fresh_slots();
            tracing::warn!(
                wall_ms = wall,
                monotonic_ms = mono,
                dropped,
                "the wall clock and the monotonic clock moved apart: this process may have been suspended and \
                 resumed, or cloned; every unused nonce slot is dropped"
            );
        }
        last = now;
    }
}

//! The node's background tasks: on the leader, membership reconciliation,
//! signing coordination and audit checkpoints; on every node, its DKG steps,
//! nonce clean-up, a key's end of life (`lifecycle.rs`) and breaking election
//! ties.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use synod_proto::{NodeAddr, NodeId};

use super::{Node, KEYS_TICK};
use crate::config::RaftTuning;

/// How often the leader checkpoints the audit chain (when it has grown).
const CHECKPOINT_EVERY_MS: u64 = 60_000;

/// How often the leader reconciles Raft membership with the signed registry.
const RECONCILE_EVERY: Duration = Duration::from_millis(500);
/// A learner is promoted to voter once it is this close to the leader's log.
const PROMOTE_LAG_ENTRIES_MAX: u64 = 64;

impl Node {
    /// On the leader, every [`CHECKPOINT_EVERY_MS`], asks for a checkpoint of the
    /// audit chain when it has grown beyond the last checkpoint (and its result).
    fn maybe_checkpoint(self: &Arc<Self>) {
        let now = self.now_ms();
        {
            let mut last = self.last_checkpoint_ms.lock().expect("checkpoint lock");
            if now.saturating_sub(*last) < CHECKPOINT_EVERY_MS {
                return;
            }
            *last = now;
        }
        let due = {
            let applied = self.shared.read();
            let state = &applied.state;
            let audit_key = state.key_by_name(synod_proto::authz::AUDIT_KEY_NAME);
            // Only the audit key's requests are checkpoints (a client's request
            // id never starts with the reserved prefix under rules 4, and under
            // older rules such a request names another key).
            let last_seq = audit_key.map_or(0, |audit| {
                state
                    .requests
                    .values()
                    .filter(|r| r.key_id == audit.id)
                    .filter_map(|r| crate::state::checkpoint_seq(&r.request_id))
                    .max()
                    .unwrap_or(0)
            });
            // The checkpoint's own entry and its result add two records; they alone need no new checkpoint.
            audit_key.is_some_and(|k| k.status == crate::state::KeyStatus::Active)
                && state.audit_head.seq > last_seq + 2
        };
        if due {
            let node = self.clone();
            tokio::spawn(async move {
                if let Err(e) = node.checkpoint().await {
                    tracing::info!(error = %e, "audit checkpoint not committed; will retry");
                }
            });
        }
    }
}

/// How many terms in a row a node may stand as candidate before it pauses.
const CANDIDATE_TERMS_MAX: u64 = 3;

/// How long a node that split the vote for [`CANDIDATE_TERMS_MAX`] terms stays
/// out of elections, in maximum election timeouts, before a random fraction of
/// one more. openraft times the next candidacy from the node's own last vote
/// (its election timeout, plus its `smaller_log_timeout` of two more once a
/// peer refused it holding a longer log), so two candidates that voted for
/// themselves at one tick come back at one tick. A pause that ends before that
/// deadline changes nothing; one that covers it and ends at a random point
/// gives the two different phases (chaos seed 715: a pause of a fraction of a
/// timeout left two candidates colliding for 15 s while the only longer log
/// stood down for its stamped time).
const SPLIT_VOTE_PAUSE_TIMEOUTS: u64 = 3;

/// How long a candidate refused by a peer with a longer log stays out of
/// elections, in maximum election timeouts (plus up to one more of jitter).
/// The peer ahead waits up to three between candidacies (its own timeout plus
/// openraft's `smaller_log_timeout`, two more, which it pays once any node
/// refused it holding a still longer log), and it only wins a term no one has
/// voted in: every node behind it must be out at the same time, long enough for
/// it to climb past the terms they used. With three, two nodes behind took
/// turns standing first forever (the 1,000-seed sweep, two seeds of it).
const LOG_BEHIND_PAUSE_TIMEOUTS: u64 = 8;

/// Breaks election ties that would otherwise repeat forever. openraft 0.9 draws
/// a node's election timeout once per boot and checks it on a coarse tick, so
/// two candidates with the same timeout and phase split the vote term after
/// term (the simulator found it once in 1,000 chaos seeds, with a node that
/// started on an empty disk withholding its vote). Two rules, each pausing this
/// node's own elections (from the node's RNG seam, which shifts its phase):
/// - a node that has stood as candidate for several terms without a leader
///   pauses past its next candidacy, for [`SPLIT_VOTE_PAUSE_TIMEOUTS`] and a
///   random fraction of one more, then stands at once: its own random phase,
///   not openraft's timer, which a vote it granted the other candidate would
///   have set to the same tick;
/// - a candidate whose vote a peer refused holding a longer log cannot win
///   while that peer can, and standing first every term it would take the
///   votes that peer needs (openraft 0.9 has no pre-vote): it stays out for
///   [`LOG_BEHIND_PAUSE_TIMEOUTS`] so the peer stands first (or until any node
///   leads a newer term: then the pause has served). A peer whose entries
///   this node refused as stamped too far ahead does not count: its log is
///   longer only by those entries.
pub(super) async fn break_election_ties(node: std::sync::Weak<Node>, tuning: RaftTuning) {
    let mut streak_start: Option<u64> = None;
    let mut paused_until: Option<tokio::time::Instant> = None;
    // The term in which the current pause began.
    let mut paused_in_term = 0;
    // Whether the pause ends with this node standing at once (a split-vote pause).
    let mut stand_after_pause = false;
    let recent = std::time::Duration::from_millis(tuning.election_timeout_max_ms);
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(tuning.heartbeat_ms)).await;
        let Some(node) = node.upgrade() else { return };
        let now = tokio::time::Instant::now();
        // A pause lets a peer ahead win; once any node has led a newer term, it
        // has served, and a leader that then fails (one whose entries a
        // majority refuses as stamped ahead, say) must not find the others
        // still out of elections (chaos seed 104: 9 s without a leader).
        if paused_until.is_some() {
            let (leader, term) = {
                let m = node.raft.metrics().borrow().clone();
                (m.current_leader, m.current_term)
            };
            if leader.is_some() && term > paused_in_term {
                paused_until = None;
            }
        }
        // The one place that switches this node's elections: off while it catches up
        // after an empty disk or is below its boot floor, while a majority refuses its stamped time, or while it
        // pauses to break a tie.
        let pausing = paused_until.is_some_and(|until| now < until);
        let off = pausing
            || node.standing_barred().await
            || node.time_standing_down.load(std::sync::atomic::Ordering::Relaxed);
        node.raft.runtime_config().elect(!off);
        if pausing {
            continue;
        }
        let m = node.raft.metrics().borrow().clone();
        if std::mem::take(&mut stand_after_pause) && !off && paused_until.is_some() && m.current_leader.is_none() {
            // The pause ended at a random moment of this node's own: stand now, rather
            // than when openraft's timer, which the other candidate may share, says.
            tracing::info!(term = m.current_term, "standing for election after a split-vote pause");
            if let Err(e) = node.raft.trigger().elect().await {
                tracing::warn!(error = %e, "could not stand for election");
            }
            continue;
        }
        if m.state != ServerState::Candidate || m.current_leader.is_some() {
            streak_start = None;
            continue;
        }
        let refused_leader = node.time_refused.lock().expect("time refusal lock").map(|(_, leader)| leader);
        let ahead: Vec<NodeId> =
            node.peer_health.take_logs_ahead(recent).into_iter().filter(|p| Some(*p) != refused_leader).collect();
        let pause_ms = if !ahead.is_empty() {
            let jitter = {
                let mut rng = node.seams.rng.lock().expect("rng lock");
                rand_core::RngCore::next_u64(&mut *rng) % tuning.election_timeout_max_ms
            };
            tracing::info!(term = m.current_term, ?ahead, "peers hold longer logs; letting them stand first");
            LOG_BEHIND_PAUSE_TIMEOUTS * tuning.election_timeout_max_ms + jitter
        } else {
            let start = *streak_start.get_or_insert(m.current_term);
            if m.current_term.saturating_sub(start) < CANDIDATE_TERMS_MAX {
                continue;
            }
            let pause_ms = SPLIT_VOTE_PAUSE_TIMEOUTS * tuning.election_timeout_max_ms + {
                let mut rng = node.seams.rng.lock().expect("rng lock");
                rand_core::RngCore::next_u64(&mut *rng) % tuning.election_timeout_max_ms
            };
            tracing::info!(
                term = m.current_term,
                pause_ms,
                "split votes for several terms; pausing elections to break the tie"
            );
            stand_after_pause = true;
            pause_ms
        };
        streak_start = None;
        node.raft.runtime_config().elect(false);
        paused_until = Some(now + std::time::Duration::from_millis(pause_ms));
        paused_in_term = m.current_term;
    }
}

/// Drives keys and signing: this node's DKG and refresh steps, and on the leader a
/// coordinator for every pending request, plus clean-up of finished requests'
/// nonces. DKG steps wait for writes, so they run in their own loop.
pub(super) async fn keys_and_signing(weak: std::sync::Weak<Node>) {
    let dkg_weak = weak.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(KEYS_TICK).await;
            let Some(node) = dkg_weak.upgrade() else { return };
            node.dkg.tick(&*node).await;
            node.refreshes.tick(&*node).await;
            node.repairs.tick(&*node).await;
        }
    });
    let mut applied = match weak.upgrade() {
        Some(node) => node.shared.subscribe(),
        None => return,
    };
    loop {
        // React to newly applied entries at once; the tick retries what is still open.
        tokio::select! {
            _ = applied.changed() => {}
            _ = tokio::time::sleep(KEYS_TICK) => {}
        }
        let Some(node) = weak.upgrade() else { return };
        node.signer.forget_finished();
        node.leader.forget_keys(|key_id| node.signer.signs_with(key_id));
        let leader = node.raft.metrics().borrow().state == ServerState::Leader;
        if leader {
            node.leader.start_pending();
            node.maybe_checkpoint();
        }
        node.tend_key_lifecycle(leader);
    }
}

/// On the leader, brings Raft's membership in line with the signed registry:
/// registry members join as learners and are promoted once caught up; voters
/// the registry no longer names are removed. Only the registry grants
/// membership, so a leader cannot add a node without an admin's signature.
pub(super) async fn reconcile_membership(node: std::sync::Weak<Node>) {
    loop {
        tokio::time::sleep(RECONCILE_EVERY).await;
        let Some(node) = node.upgrade() else { return };
        if let Err(e) = reconcile_once(&node).await {
            tracing::warn!(error = %e, "membership change did not complete; will retry");
        }
    }
}

async fn reconcile_once(node: &Node) -> anyhow::Result<()> {
    let m = node.raft.metrics().borrow().clone();
    if m.state != ServerState::Leader {
        return Ok(());
    }
    let registry: BTreeMap<NodeId, NodeAddr> = {
        let applied = node.shared.read();
        if applied.state.cluster_id.is_none() {
            return Ok(());
        }
        applied.state.members.clone()
    };
    let membership = m.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let known: BTreeSet<NodeId> = membership.nodes().map(|(id, _)| *id).collect();
    let wanted: BTreeSet<NodeId> = registry.keys().copied().collect();
    if voters == wanted {
        return Ok(());
    }
    for id in wanted.difference(&known) {
        tracing::info!(node = id, "adding authorised member as a learner");
        node.raft.add_learner(*id, registry[id].clone(), false).await?;
    }
    let last = m.last_log_index.unwrap_or(0);
    let caught_up = |id: &NodeId| {
        let matched = m.replication.as_ref().and_then(|r| r.get(id).cloned().flatten()).map_or(0, |l| l.index);
        last.saturating_sub(matched) <= PROMOTE_LAG_ENTRIES_MAX
    };
    let ready: BTreeSet<NodeId> =
        wanted.iter().copied().filter(|id| voters.contains(id) || (known.contains(id) && caught_up(id))).collect();
    if ready != voters && !ready.is_empty() {
        tracing::info!(?voters, ?ready, "changing voters to match the signed registry");
        node.raft.change_membership(ready, false).await?;
    }
    Ok(())
}

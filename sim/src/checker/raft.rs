//! Raft safety ([`RaftSafety`]): at most one leader per term (checked when
//! openraft is built for classic Raft, as Synod builds it; see
//! [`one_leader_per_term`]), an entry once applied anywhere is the same entry everywhere (committed
//! entries never change; applied logs are prefix-consistent), and a node's
//! applied index never goes back within one boot. They hold because openraft
//! is Raft: votes and the log are on the simulated disk, which outlives
//! crashes (a node restarted on an empty disk grants no vote until it has
//! caught up); an entry commits only on a majority; and only a candidate
//! holding every committed entry can win a vote. An equivocating leader, which
//! sends followers two entries under one log id, is outside crash-fault Raft's
//! model: log agreement skips the indexes it altered, the other checks stay.

use std::collections::BTreeMap;

use openraft::ServerState;
use synod_proto::NodeId;

use super::{Checker, Step, Violation};

/// Whether openraft allows only one leader per term. openraft 0.9 by default
/// uses "advanced" leader ids, `(term, node_id)`, totally ordered: a voter that
/// voted for n2 in term 5 may still vote for n3 in term 5 (n3 > n2), so two
/// leaders in one term is by design, and the later one wins. Only with its
/// `single-term-leader` feature is the committed leader id the bare term, as in
/// classic Raft. Detected from the type's size so the check follows the build.
pub fn one_leader_per_term() -> bool {
    std::mem::size_of::<openraft::CommittedLeaderId<NodeId>>() == std::mem::size_of::<u64>()
}

/// Raft safety: at most one leader per leader id (per term under classic
/// Raft, see [`one_leader_per_term`]); an entry, once applied anywhere,
/// is the same entry everywhere (applied logs are prefix-consistent); a node's
/// applied index never goes backwards within one boot.
///
/// A leader that restarts comes back believing it still leads its old term
/// until it hears from the others; that is the same node in the same term, so
/// it does not count as a second leader.
pub struct RaftSafety {
    /// Whether two leaders in one term is a violation in this build.
    one_per_term: bool,
    leaders: BTreeMap<u64, NodeId>,
    applied: BTreeMap<NodeId, u64>,
}

impl Default for RaftSafety {
    fn default() -> Self {
        RaftSafety { one_per_term: one_leader_per_term(), leaders: BTreeMap::new(), applied: BTreeMap::new() }
    }
}

impl Checker for RaftSafety {
    fn name(&self) -> &'static str {
        "raft-safety"
    }

    fn check_step(&mut self, step: &Step) -> Result<(), Violation> {
        for v in step.nodes {
            if v.role == ServerState::Leader && self.one_per_term {
                let first = *self.leaders.entry(v.term).or_insert(v.id);
                if first != v.id {
                    return Err(Violation::new(
                        "raft-election-safety",
                        format!("n{first} and n{} both became leader in term {}", v.id, v.term),
                    ));
                }
            }
            let applied = v.applied.unwrap_or(0);
            if v.restarted {
                self.applied.insert(v.id, applied);
            } else if let Some(before) = self.applied.insert(v.id, applied) {
                if applied < before {
                    return Err(Violation::new(
                        "raft-applied-monotonic",
                        format!("n{}'s applied index went back from {before} to {applied} without a restart", v.id),
                    ));
                }
            }
            for e in &v.new_entries {
                // An equivocating leader sent two entries under this log id: outside
                // crash-fault Raft's model (see ARCHITECTURE.md, `sim/`).
                if step.equivocations.contains_key(&e.index) {
                    continue;
                }
                if let Some(first) = step.committed.get(&e.index) {
                    if first.hash != e.hash {
                        return Err(Violation::new(
                            "raft-committed-entries-never-change",
                            format!(
                                "index {}: n{} applied an entry of term {} ({}), n{} had applied one of term {} ({})",
                                e.index,
                                v.id,
                                e.term,
                                &e.hash[..12],
                                first.node,
                                first.term,
                                &first.hash[..12]
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

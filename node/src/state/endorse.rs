//! Endorsements of snapshot points: a node vouches, by a command signed with
//! its certificate key, that the committed log up to a point gave it the state
//! with a given digest. The state keeps the signed endorsements of the newest
//! few points, so a node can ship them with a snapshot and a receiver can
//! count, by signatures it checks itself, how many members vouch for it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use synod_proto::command::SnapshotPoint;
use synod_proto::{NodeId, SignedCommand};

use super::{ClusterState, Refusal};

/// How many snapshot points the state keeps endorsements for (the newest).
pub const ENDORSED_POINTS_KEPT: usize = 4;

/// One node's endorsement of one point, as committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endorsement {
    pub point: SnapshotPoint,
    /// The command exactly as the node signed it, for receivers to verify.
    pub command: SignedCommand,
}

impl ClusterState {
    /// Records `node`'s endorsement of `point`, committed at `index`.
    pub(super) fn endorse(
        &mut self,
        index: u64,
        node: NodeId,
        point: &SnapshotPoint,
        signed: &SignedCommand,
    ) -> Result<String, Refusal> {
        if point.index >= index {
            return Err(format!(
                "node {node} endorses point {} from entry {index}; a point must precede it",
                point.index
            )
            .into());
        }
        if Some(&point.cluster_id) != self.cluster_id.as_ref() {
            return Err(format!("endorsement names cluster {}, not this cluster", point.cluster_id).into());
        }
        let newest_kept = self.endorsements.keys().rev().nth(ENDORSED_POINTS_KEPT - 1).copied();
        if newest_kept.is_some_and(|oldest| point.index < oldest) {
            return Err(format!(
                "point {} is older than every point this cluster still keeps endorsements of",
                point.index
            )
            .into());
        }
        let by_node = self.endorsements.entry(point.index).or_default();
        if by_node.contains_key(&node) {
            return Err(Refusal::conflict(format!("node {node} already endorsed point {}", point.index)));
        }
        by_node.insert(node, Endorsement { point: point.clone(), command: signed.clone() });
        while self.endorsements.len() > ENDORSED_POINTS_KEPT {
            self.endorsements.pop_first();
        }
        Ok(format!("node {node} endorses point {} (state {})", point.index, &point.state_sha256[..16]))
    }

    /// The endorsements of point `index` that name `point` exactly, by node.
    pub fn endorsements_of(&self, point: &SnapshotPoint) -> BTreeMap<NodeId, SignedCommand> {
        self.endorsements
            .get(&point.index)
            .into_iter()
            .flatten()
            .filter(|(_, e)| &e.point == point)
            .map(|(node, e)| (*node, e.command.clone()))
            .collect()
    }

    /// How many members must vouch for a snapshot before this state's node
    /// installs it: a majority of members, and at least the largest threshold
    /// of any key, so that with fewer than `threshold` compromised nodes at
    /// least one honest node vouches for it; and never below `floor`.
    pub fn endorsements_required(&self, floor: usize) -> usize {
        let majority = self.members.len() / 2 + 1;
        let threshold = self.keys.values().map(|k| usize::from(k.threshold)).max().unwrap_or(0);
        majority.max(threshold).max(floor)
    }
}

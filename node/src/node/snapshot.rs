//! Snapshots between nodes, verified (see `raft/snapshot.rs` for the why).
//!
//! Three jobs:
//! - **Endorsing points.** `apply` hands this node a copy of the state at every
//!   point; it serialises it off the state lock, commits an `endorse` command
//!   signed with its certificate key, and once enough members vouch for the
//!   same bytes it asks Raft for a snapshot, which is then built from that point.
//! - **Receiving.** A peer's `InstallSnapshot` chunks are collected here under a
//!   size cap, checked against what this node already trusts, and only then
//!   handed to Raft; a refused snapshot never reaches openraft (whose install
//!   errors are fatal and which adopts the sender's vote), and the refusal
//!   names the sender.
//! - **The share gate.** Endorsements prove how a state was derived, not that
//!   it is fresh. After installing a snapshot the node releases no signature
//!   share until it has applied a commit index that a majority of members
//!   confirm. (A node that starts on an empty disk holds no share to release;
//!   it gets one only through key generation or an import, in entries it
//!   applies itself.)

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::{Arc, Weak};
use std::time::Duration;

use openraft::raft::{InstallSnapshotRequest, InstallSnapshotResponse};
use openraft::storage::Snapshot;
use openraft::{SnapshotMeta, Vote};
use synod_proto::command::SnapshotPoint;
use synod_proto::rpc::{PeerRequest, PeerResponse};
use synod_proto::{Command, NodeAddr, NodeId, TypeConfig};

use super::Node;
use crate::raft::snapshot::{self as format, Point, Trust, SNAPSHOT_BYTES_MAX};
use crate::raft::state_machine::build_point;

/// How often the node looks for a point that enough members now endorse.
const READY_CHECK_EVERY: Duration = Duration::from_millis(250);
/// How often an endorsement that has not shown up committed is sent again.
const ENDORSE_RETRY_EVERY: Duration = Duration::from_secs(2);
/// How many times an endorsement is sent before the node waits for the next point.
const ENDORSE_ATTEMPTS_MAX: u32 = 5;
/// How long the share gate waits for one round of peers' answers.
const CONFIRM_ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between rounds of the share gate's questions.
const CONFIRM_RETRY_EVERY: Duration = Duration::from_millis(500);

/// A snapshot being received, chunk by chunk, from one peer.
pub(super) struct Incoming {
    from: NodeId,
    vote: Vote<NodeId>,
    meta: SnapshotMeta<NodeId, NodeAddr>,
    data: Vec<u8>,
}

/// Whether this node may release signature shares (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ShareGate {
    Open,
    /// Asking peers how far they have applied.
    AwaitingMajority,
    /// Open once this node has applied this index, which a majority confirmed.
    Until(u64),
}

impl Node {
    /// Answers one `InstallSnapshot` chunk from `from`.
    pub(super) async fn receive_snapshot_chunk(
        &self,
        from: NodeId,
        rpc: InstallSnapshotRequest<TypeConfig>,
    ) -> PeerResponse {
        let my_vote = self.raft.metrics().borrow().vote;
        let newer_or_same =
            matches!(rpc.vote.partial_cmp(&my_vote), Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal));
        if !newer_or_same {
            // As openraft does: a sender from an older term learns the newer vote.
            return PeerResponse::InstallSnapshot(Ok(InstallSnapshotResponse { vote: my_vote }));
        }
        let finished = {
            let mut incoming = self.incoming.lock().expect("incoming snapshot lock");
            if rpc.offset == 0 {
                *incoming = Some(Incoming { from, vote: rpc.vote, meta: rpc.meta.clone(), data: Vec::new() });
            }
            let follows = incoming.as_ref().is_some_and(|i| {
                i.from == from && i.meta.snapshot_id == rpc.meta.snapshot_id && i.data.len() as u64 == rpc.offset
            });
            if !follows {
                return PeerResponse::Refused(format!(
                    "snapshot chunk at offset {} does not follow what this node received; send it again from offset 0",
                    rpc.offset
                ));
            }
            let receiving = incoming.as_mut().expect("checked above");
            if receiving.data.len() + rpc.data.len() > SNAPSHOT_BYTES_MAX {
                *incoming = None;
                tracing::warn!(from, "refused a snapshot larger than {SNAPSHOT_BYTES_MAX} bytes");
                return PeerResponse::Refused(format!("snapshot exceeds {SNAPSHOT_BYTES_MAX} bytes"));
            }
            receiving.data.extend_from_slice(&rpc.data);
            if !rpc.done {
                return PeerResponse::InstallSnapshot(Ok(InstallSnapshotResponse { vote: my_vote }));
            }
            incoming.take().expect("checked above")
        };
        self.install_verified(finished).await
    }

    /// Checks a whole received snapshot and, if it holds, hands it to Raft.
    async fn install_verified(&self, snapshot: Incoming) -> PeerResponse {
        let Incoming { from, vote, meta, data } = snapshot;
        let verdict = if crate::faults::enabled_for(self.id, crate::faults::TRUST_SNAPSHOT) {
            Ok(format::Verified { endorsers: Vec::new() })
        } else {
            self.verify_snapshot(&meta, &data)
        };
        let verified = match verdict {
            Ok(verified) => verified,
            Err(why) => {
                tracing::warn!(from, snapshot_id = %meta.snapshot_id, why, "refused a snapshot");
                return PeerResponse::Refused(format!("snapshot {} from node {from} refused: {why}", meta.snapshot_id));
            }
        };
        tracing::info!(from, snapshot_id = %meta.snapshot_id, endorsers = ?verified.endorsers, "installing a verified snapshot");
        // No `note_leader_commit` here: a snapshot is an endorsed point, older than the
        // commit index (a forged one could claim any), and a node on an empty disk that
        // took it for the commit index would vote again before it holds every committed
        // entry (the simulator lost a committed entry that way). The leader's next
        // AppendEntries carries the commit index.
        self.close_share_gate("installed a snapshot");
        let snapshot = Snapshot { meta, snapshot: Box::new(Cursor::new(data)) };
        match self.raft.install_full_snapshot(vote, snapshot).await {
            Ok(response) => {
                self.metrics.snapshot_installs.increment(1);
                PeerResponse::InstallSnapshot(Ok(InstallSnapshotResponse { vote: response.vote }))
            }
            Err(fatal) => PeerResponse::InstallSnapshot(Err(openraft::error::RaftError::Fatal(fatal))),
        }
    }

    /// [`format::verify`] against what this node trusts: its own applied
    /// state if it has one, else its own CA and the configured floor.
    fn verify_snapshot(&self, meta: &SnapshotMeta<NodeId, NodeAddr>, data: &[u8]) -> Result<format::Verified, String> {
        let applied = self.shared.read();
        let state = &applied.state;
        let now_ms = self.now_ms();
        if state.cluster_id.is_none() {
            let trust = Trust {
                ca_der: &self.identity.ca_der,
                cluster_id: None,
                members: None,
                required: self.endorsements_floor,
                now_ms,
            };
            return format::verify(&trust, meta, data);
        }
        let ca_der = state.ca_certificate.as_deref().and_then(|c| hex::decode(c).ok()).unwrap_or_default();
        let members = state.members.keys().copied().collect();
        let trust = Trust {
            ca_der: &ca_der,
            cluster_id: state.cluster_id.as_deref(),
            members: Some(&members),
            required: state.endorsements_required(self.endorsements_floor),
            now_ms,
        };
        format::verify(&trust, meta, data)
    }

    /// Closes the share gate and starts asking peers how far they have applied.
    pub(super) fn close_share_gate(self: &Node, why: &str) {
        let mut gate = self.share_gate.lock().expect("share gate lock");
        if *gate == ShareGate::AwaitingMajority {
            return;
        }
        tracing::info!(why, "no signature shares until this node has applied a commit index a majority confirms");
        *gate = ShareGate::AwaitingMajority;
        drop(gate);
        let weak = self.weak_self.clone();
        tokio::spawn(confirm_commit(weak));
    }

    /// Why this node may not release shares now, if it may not.
    pub(super) fn share_gate_refusal(&self) -> Option<String> {
        let mut gate = self.share_gate.lock().expect("share gate lock");
        match *gate {
            ShareGate::Open => None,
            ShareGate::Until(index) if self.shared.read().last_applied.is_some_and(|l| l.index >= index) => {
                tracing::info!(index, "caught up to a majority-confirmed commit index; signing again");
                *gate = ShareGate::Open;
                None
            }
            ShareGate::Until(index) => Some(format!(
                "node {} is catching up after a restart or an installed snapshot: it signs again once it \
                 has applied index {index}, which a majority confirmed",
                self.id
            )),
            ShareGate::AwaitingMajority => Some(format!(
                "node {} is catching up after a restart or an installed snapshot and has not yet heard \
                 from a majority",
                self.id
            )),
        }
    }

    /// A point's state, serialised and endorsed by this node; kept until a newer one is ready.
    async fn endorse_point(&self, applied: Arc<crate::raft::state_machine::Applied>) {
        let point = match build_point(&self.shared, self.store.clone(), applied).await {
            Ok(Some(point)) => Arc::new(point),
            Ok(None) => return,
            Err(e) => {
                tracing::error!(error = %e, "could not serialise a snapshot point");
                return;
            }
        };
        let index = point.point.index;
        {
            let mut built = self.points_built.lock().expect("points lock");
            built.insert(index, point.clone());
            while built.len() > crate::state::ENDORSED_POINTS_KEPT {
                built.pop_first();
            }
        }
        let command = Command::Endorse { node_id: self.id, point: point.point.clone() };
        let weak = self.weak_self.clone();
        tokio::spawn(async move {
            for _ in 0..ENDORSE_ATTEMPTS_MAX {
                let Some(node) = weak.upgrade() else { return };
                if node.shared.read().state.endorsements_of(&point.point).contains_key(&node.id) {
                    return;
                }
                match node.write_as_node(command.clone()).await {
                    Ok(_) => return,
                    Err(e) => tracing::debug!(index, error = %e, "endorsement not committed yet"),
                }
                drop(node);
                tokio::time::sleep(ENDORSE_RETRY_EVERY).await;
            }
        });
    }

    /// If a point newer than the stored snapshot is endorsed by enough members
    /// (by this node's own count), makes it the next snapshot and asks Raft to build it.
    async fn snapshot_if_endorsed(&self) {
        let snapshot_index = self.raft.metrics().borrow().snapshot.map(|l| l.index);
        let ready_index = self.shared.points().ready_index();
        let built: Vec<Arc<Point>> = self.points_built.lock().expect("points lock").values().rev().cloned().collect();
        let found = {
            let applied = self.shared.read();
            let state = &applied.state;
            let required = state.endorsements_required(self.endorsements_floor);
            built.into_iter().filter(|p| Some(p.point.index) > snapshot_index.max(ready_index)).find_map(|point| {
                let endorsements: BTreeMap<NodeId, _> = state
                    .endorsements_of(&point.point)
                    .into_iter()
                    .filter(|(node, _)| state.members.contains_key(node))
                    .collect();
                (endorsements.len() >= required).then(|| (point, endorsements.into_values().collect::<Vec<_>>()))
            })
        };
        let Some((point, endorsements)) = found else { return };
        let SnapshotPoint { index, .. } = point.point;
        tracing::info!(index, endorsers = endorsements.len(), "snapshot point endorsed; building the snapshot");
        self.shared.points().set_ready(point, endorsements);
        // Older points will never be built; the ready one is held by `Points` until a newer replaces it.
        self.points_built.lock().expect("points lock").retain(|i, _| *i > index);
        if let Err(e) = self.raft.trigger().snapshot().await {
            tracing::warn!(error = %e, "could not ask Raft for a snapshot");
        }
    }

    /// The last applied index each reachable member reports, and this node's own.
    async fn applied_by_members(&self) -> (usize, Vec<u64>) {
        let (members, own) = {
            let applied = self.shared.read();
            (applied.state.members.clone(), applied.last_applied.map_or(0, |l| l.index))
        };
        let asks = members.iter().filter(|(id, _)| **id != self.id).map(|(&id, addr)| {
            let call = self.transport.call(id, addr.raft_addr.clone(), PeerRequest::Ping, CONFIRM_ASK_TIMEOUT);
            async move {
                match call.await {
                    Ok(PeerResponse::Pong { last_applied, .. }) => last_applied,
                    _ => None,
                }
            }
        });
        let mut indexes: Vec<u64> = futures::future::join_all(asks).await.into_iter().flatten().collect();
        if members.contains_key(&self.id) {
            indexes.push(own);
        }
        (members.len(), indexes)
    }
}

/// Endorses every point `apply` captures, and turns endorsed points into snapshots.
pub(super) async fn endorse_points(node: Weak<Node>) {
    let Some(mut captured) = node.upgrade().map(|n| n.shared.points().subscribe()) else { return };
    loop {
        tokio::select! {
            changed = captured.changed() => {
                if changed.is_err() {
                    return;
                }
                let applied = captured.borrow_and_update().clone();
                let Some(node) = node.upgrade() else { return };
                if let Some(applied) = applied {
                    node.endorse_point(applied).await;
                }
            }
            _ = tokio::time::sleep(READY_CHECK_EVERY) => {}
        }
        let Some(node) = node.upgrade() else { return };
        node.snapshot_if_endorsed().await;
    }
}

/// Asks the members how far they have applied until a majority answers, and
/// sets the share gate to open at the index a majority has reached.
async fn confirm_commit(node: Weak<Node>) {
    loop {
        let Some(n) = node.upgrade() else { return };
        let (members, mut indexes) = n.applied_by_members().await;
        let majority = members / 2 + 1;
        if members > 0 && indexes.len() >= majority {
            // The majority-th highest: a majority of members has applied at least this.
            indexes.sort_unstable_by(|a, b| b.cmp(a));
            let confirmed = indexes[majority - 1];
            let mut gate = n.share_gate.lock().expect("share gate lock");
            if *gate == ShareGate::AwaitingMajority {
                tracing::info!(confirmed, "a majority confirmed a commit index; signing resumes once it is applied");
                *gate = ShareGate::Until(confirmed);
            }
            return;
        }
        drop(n);
        tokio::time::sleep(CONFIRM_RETRY_EVERY).await;
    }
}

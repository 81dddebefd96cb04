//! Readiness: whether this node can take part in signing now (`GET /v1/sys/ready`), for load
//! balancers and for `systemd`'s status line.
//!
//! Health (`/v1/sys/health`) says whether the node is up and knows a leader; readiness asks
//! more: the node is initialised, knows a leader, has caught up (its share gate is open), holds
//! the share of every active key it is a participant of, and, for each such key, sees at least
//! the key's threshold of its signers answering. Each miss is a reason in words an operator can
//! act on, so the same answer serves a probe (the status code) and a person (the body).
//!
//! The write path asks the same probe whether a majority of the voters is reachable before it
//! answers "no majority" (`write.rs`).
//!
//! Which peers answer is asked afresh ([`Node::peers_answering`]): a follower makes no Raft
//! calls of its own while a leader is up, so what its calls last saw would age. The answer is
//! kept for [`PROBE_FRESH`], so however often readiness and metrics are asked (readiness needs no
//! certificate), a node pings each peer at most once per [`PROBE_FRESH`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use synod_proto::api::Readiness;
use synod_proto::rpc::{PeerRequest, PeerResponse};
use synod_proto::NodeId;

use super::Node;
use crate::state::KeyStatus;

/// How long one probe of the peers stands for all askers.
pub const PROBE_FRESH: Duration = Duration::from_secs(1);
/// How long a peer has to answer a probe's ping: short, so that a write to a cluster without a
/// majority is refused well within a client's patience (a live peer answers in milliseconds).
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1_000);

/// The last probe of the peers: when, and which answered.
pub(super) type Probe = tokio::sync::Mutex<Option<(tokio::time::Instant, BTreeMap<NodeId, bool>)>>;

impl Node {
    /// Which other members answer a ping, as of at most [`PROBE_FRESH`] ago. Concurrent askers
    /// wait for one probe rather than each sending their own.
    pub async fn peers_answering(&self) -> BTreeMap<NodeId, bool> {
        let mut last = self.probe.lock().await;
        if let Some((at, answers)) = last.as_ref() {
            if at.elapsed() < PROBE_FRESH {
                return answers.clone();
            }
        }
        let members = self.shared.read().state.members.clone();
        let pings = members.iter().filter(|(id, _)| **id != self.id).map(|(id, addr)| async move {
            let answer = self.transport.call(*id, addr.raft_addr.clone(), PeerRequest::Ping, PROBE_TIMEOUT).await;
            (*id, matches!(answer, Ok(PeerResponse::Pong { .. })))
        });
        let answers: BTreeMap<NodeId, bool> = futures::future::join_all(pings).await.into_iter().collect();
        *last = Some((tokio::time::Instant::now(), answers.clone()));
        answers
    }

    /// Whether this node can take part in signing now, and why not.
    pub async fn readiness(&self) -> Readiness {
        let answering = self.peers_answering().await;
        // Both read the state themselves: before the state lock below.
        let catching_up = self.share_gate_refusal();
        let missing = self.missing_share_names();
        let m = self.raft.metrics().borrow().clone();
        let applied = self.shared.read();
        let state = &applied.state;
        let mut reasons = Vec::new();
        if state.cluster_id.is_none() {
            reasons.push("the cluster is not initialised; run `synod cluster init`".to_string());
        }
        if m.current_leader.is_none() {
            reasons.push(format!(
                "node {} knows no leader (term {}); a majority of the voters must be up and reachable",
                self.id, m.current_term
            ));
        }
        reasons.extend(catching_up);
        // Readiness needs no certificate, so its reasons count keys and never name them (key
        // names are an operator's read, `crate::caller`); `synod status` and `synod key list`
        // name them for an operator.
        if !missing.is_empty() {
            reasons.push(format!(
                "node {} holds no share of {} of its keys; `synod status` names them, and `synod key repair` \
                 restores each",
                self.id,
                missing.len()
            ));
        }
        let mut short = 0;
        let mut silent = BTreeSet::new();
        for key in state.keys.values().filter(|k| k.status == KeyStatus::Active && k.participants.contains(&self.id)) {
            let down: Vec<NodeId> = key
                .participants
                .iter()
                .copied()
                .filter(|p| *p != self.id && !answering.get(p).copied().unwrap_or(false))
                .collect();
            if key.participants.len() - down.len() < usize::from(key.threshold) {
                short += 1;
                silent.extend(down);
            }
        }
        if short > 0 {
            let silent: Vec<String> = silent.iter().map(|id| id.to_string()).collect();
            reasons.push(format!(
                "{short} of this node's keys cannot be signed now: fewer of their signers answer than their \
                 threshold (not answering: nodes {}); `synod key list` names the keys",
                silent.join(", ")
            ));
        }
        Readiness {
            node_id: self.id,
            ready: reasons.is_empty(),
            reasons,
            leader_id: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            last_applied_index: m.last_applied.map(|l| l.index),
        }
    }
}

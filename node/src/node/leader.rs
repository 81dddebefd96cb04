//! The node as the leader's signing context ([`synod_coordinator::Context`]):
//! what is pending and what to sign from this node's applied state, calls to
//! signers over the transport or to this node's own signer, and commits
//! through the write path. The coordinator crate does the rest.
//!
//! Before it coordinates anything in a term, the leader commits its take-up
//! of signing for that term ([`Command::Coordinate`]); every node accepts
//! signing outcomes in a term only from the node that took it up, so the
//! context offers no request and sends no outcome until the take-up is applied.

use std::sync::{Arc, Weak};
use std::time::Duration;

use frost_ed25519::keys::PublicKeyPackage;
use futures::future::BoxFuture;
use futures::FutureExt;
use synod_coordinator::leader::SIGNER_CALL_TIMEOUT;
use synod_coordinator::{CallError, Context, RequestToSign};
use synod_proto::rpc::{NonceBatch, PeerRequest, PeerResponse, ShareAsk};
use synod_proto::{Command, NodeId};

use super::Node;
use crate::faults;

/// The leader's view of its node. It holds the node weakly: the node owns the
/// leader, and the leader's background tasks end when the node is dropped.
pub struct NodeContext {
    pub(super) id: NodeId,
    pub(super) node: Weak<Node>,
}

fn gone() -> CallError {
    CallError::Unreachable("this node is shutting down".into())
}

impl Context for NodeContext {
    fn node_id(&self) -> NodeId {
        self.id
    }

    fn now_ms(&self) -> u64 {
        self.node.upgrade().map_or(0, |node| node.now_ms())
    }

    fn likely_down(&self, peer: NodeId) -> bool {
        self.node.upgrade().is_some_and(|node| node.likely_down(peer))
    }

    fn ready_requests(&self) -> Vec<String> {
        let Some(node) = self.node.upgrade() else { return Vec::new() };
        if !node.coordinates_signing() {
            node.take_up_signing();
            return Vec::new();
        }
        let applied = node.state().read();
        let state = &applied.state;
        let skip_policy = faults::enabled(faults::SKIP_POLICY);
        state
            .pending_requests
            .iter()
            .filter(|id| skip_policy || state.requests.get(*id).is_some_and(|r| state.ready_to_sign(r, false).is_ok()))
            .cloned()
            .collect()
    }

    fn request(&self, request_id: &str) -> Option<RequestToSign> {
        let node = self.node.upgrade()?;
        let applied = node.state().read();
        let state = &applied.state;
        let request = state.requests.get(request_id)?;
        let key = state.keys.get(&request.key_id)?;
        Some(RequestToSign {
            message: request.message_bytes()?,
            key_id: key.id.clone(),
            key_name: key.name.clone(),
            threshold: key.threshold,
            participants: key.participants.clone(),
            min_index: applied.last_applied.map_or(0, |l| l.index),
            attempt: request.attempt,
            generation: key.generation,
        })
    }

    fn public_keys(&self, key_id: &str, generation: u32) -> Option<PublicKeyPackage> {
        let node = self.node.upgrade()?;
        let applied = node.state().read();
        let key = applied.state.keys.get(key_id).filter(|k| k.generation == generation)?;
        key.public_keys()
    }

    fn preprocess(
        &self,
        signer: NodeId,
        key_id: &str,
        count: u32,
    ) -> BoxFuture<'static, Result<NonceBatch, CallError>> {
        let (node, key_id) = (self.node.upgrade(), key_id.to_string());
        async move {
            let node = node.ok_or_else(gone)?;
            if signer == node.id {
                return node.signer().preprocess(&key_id, count, node.id).await.map_err(CallError::Refused);
            }
            match call(&node, signer, PeerRequest::SignPreprocess { key_id, count }).await? {
                PeerResponse::SignPreprocess(answer) => answer.map_err(CallError::Refused),
                PeerResponse::Refused(why) => Err(CallError::Refused(why)),
                other => Err(CallError::Malformed(format!("{other:?}"))),
            }
        }
        .boxed()
    }

    fn shares(&self, signer: NodeId, asks: Vec<ShareAsk>) -> BoxFuture<'static, Vec<Result<String, CallError>>> {
        let node = self.node.upgrade();
        async move {
            let count = asks.len();
            let Some(node) = node else { return vec![Err(gone()); count] };
            if signer == node.id {
                if let Some(why) = node.share_gate_refusal() {
                    return vec![Err(CallError::Refused(why)); count];
                }
                let answers = node.signer().share_batch(&asks, node.id, true).await;
                return answers.into_iter().map(|a| a.map_err(CallError::Refused)).collect();
            }
            match call(&node, signer, PeerRequest::SignShare { asks }).await {
                Ok(PeerResponse::SignShare(answers)) => {
                    answers.into_iter().map(|a| a.map_err(CallError::Refused)).collect()
                }
                Ok(PeerResponse::Refused(why)) => vec![Err(CallError::Refused(why)); count],
                Ok(other) => vec![Err(CallError::Malformed(format!("{other:?}"))); count],
                Err(e) => vec![Err(e); count],
            }
        }
        .boxed()
    }

    fn commit(&self, command: Command) -> BoxFuture<'static, Result<(), String>> {
        let node = self.node.upgrade();
        async move {
            let node = node.ok_or("this node is shutting down")?;
            if !node.coordinates_signing() {
                return Err(format!(
                    "node {} has not taken up signing in its current term, so its outcome would be refused",
                    node.id
                ));
            }
            node.write_as_node(command).await.map(drop).map_err(|e| e.to_string())
        }
        .boxed()
    }

    fn coordinated(&self, report: &synod_coordinator::Coordinated<'_>) {
        let Some(node) = self.node.upgrade() else { return };
        let metrics = node.metrics();
        let outcome = if report.signed { "signed" } else { "failed" };
        metrics.duration("synod_sign_coordination_duration_seconds", outcome, report.took);
        metrics.histogram("synod_sign_sessions", &[("outcome", outcome)]).record(f64::from(report.sessions));
        for culprit in report.culprits {
            metrics.counter("synod_sign_culprits_total", &[("culprit", &culprit.to_string())]).increment(1);
        }
    }

    fn share_missed(&self, signer: NodeId, why: &synod_coordinator::CallError) {
        let Some(node) = self.node.upgrade() else { return };
        let reason = match why {
            synod_coordinator::CallError::Unreachable(_) => "unreachable",
            synod_coordinator::CallError::Refused(_) => "refused",
            synod_coordinator::CallError::Malformed(_) => "malformed",
        };
        node.metrics()
            .counter("synod_sign_missed_shares_total", &[("signer", &signer.to_string()), ("reason", reason)])
            .increment(1);
    }

    fn after_shares(&self) -> BoxFuture<'static, ()> {
        faults::crash_point(self.id, faults::LEADER_AFTER_SHARES).boxed()
    }

    fn between_rounds(&self) -> BoxFuture<'static, ()> {
        pause_between_rounds().boxed()
    }
}

impl Node {
    /// Whether this node's signing outcomes would be accepted in its current
    /// term: its take-up for the term is applied here (or the cluster's rules
    /// predate take-ups).
    fn coordinates_signing(&self) -> bool {
        let term = self.raft.metrics().borrow().current_term;
        let applied = self.state().read();
        let state = &applied.state;
        state.rules < crate::state::RULES_COORDINATOR || state.coordinators.get(&term) == Some(&self.id)
    }

    /// Commits this node's take-up of signing for its current term in the
    /// background, unless one is already on its way; a failed one is sent again
    /// at the next call (the signing loop's tick).
    fn take_up_signing(self: &Arc<Self>) {
        let term = self.raft.metrics().borrow().current_term;
        {
            let mut taking_up = self.taking_up.lock().expect("take-up lock");
            if *taking_up == Some(term) {
                return;
            }
            *taking_up = Some(term);
        }
        let node = self.clone();
        tokio::spawn(async move {
            let take_up = Command::Coordinate { node_id: node.id, term };
            match node.write_as_node(take_up).await {
                Ok(_) => tracing::info!(term, "took up signing for this term"),
                Err(e) => tracing::info!(term, error = %e, "signing take-up not committed; will retry"),
            }
            let mut taking_up = node.taking_up.lock().expect("take-up lock");
            if *taking_up == Some(term) {
                *taking_up = None;
            }
        });
    }
}

/// Calls `to` over the transport, bounded by [`SIGNER_CALL_TIMEOUT`].
async fn call(node: &Arc<Node>, to: NodeId, request: PeerRequest) -> Result<PeerResponse, CallError> {
    let addr = node.state().read().state.members.get(&to).map(|m| m.raft_addr.clone());
    let addr = addr.ok_or(CallError::Unreachable(format!("node {to} is not a member")))?;
    node.transport()
        .call(to, addr, request, SIGNER_CALL_TIMEOUT)
        .await
        .map_err(|e| CallError::Unreachable(e.to_string()))
}

/// The [`faults::PAUSE_BETWEEN_ROUNDS`] coordinator: once per process.
async fn pause_between_rounds() {
    static PAUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if faults::enabled(faults::PAUSE_BETWEEN_ROUNDS) && !PAUSED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        tracing::warn!("fault pause-between-rounds: waiting 3 s between round 1 and round 2");
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

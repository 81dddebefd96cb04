//! The leader's side of signing: runs the coordinator's sessions for every
//! pending request and commits the outcome.
//!
//! The coordinator crate decides what to ask whom; this module wires its calls
//! to the transport (or to this node's own signer) and commits the result as a
//! node-signed command, which every node verifies before storing. A leader that
//! dies mid-signature leaves the request pending; the next leader starts fresh
//! sessions with new commitments.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use frost::round1::SigningCommitments;
use frost::round2::SignatureShare;
use frost::SigningPackage;
use frost_ed25519 as frost;
use futures::future::BoxFuture;
use futures::FutureExt;
use synod_coordinator::{CallError, Job, Signers};
use synod_proto::rpc::{PeerRequest, PeerResponse};
use synod_proto::{Command, NodeAddr, NodeId};
use tracing::Instrument;

use crate::node::Node;

/// How long a signer may take to answer one round.
pub const SIGNER_CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a signer caught sending an invalid share is left out of new sessions.
pub const CULPRIT_EXCLUSION_MS: u64 = 60_000;
/// The most requests this leader coordinates at once.
pub const COORDINATIONS_MAX: usize = 256;

/// Coordination state on this node (meaningful while it leads).
#[derive(Default)]
pub struct Coordination {
    /// Requests with a session loop running here.
    in_flight: std::sync::Mutex<BTreeSet<String>>,
    /// Signers caught cheating, until when (node clock, ms).
    culprits: std::sync::Mutex<BTreeMap<NodeId, u64>>,
    /// Parsed public key packages by key id: parsing checks every point, which
    /// costs more than the coordinator's share of the signing itself.
    public_keys: std::sync::Mutex<BTreeMap<String, Arc<frost::keys::PublicKeyPackage>>>,
}

/// The coordinator's calls, over the transport or to this node's own signer.
struct NodeSigners {
    node: Arc<Node>,
    members: BTreeMap<NodeId, NodeAddr>,
    /// This node's applied index when it took the request up; signers catch up to it first.
    min_index: u64,
}

impl NodeSigners {
    async fn call(&self, to: NodeId, request: PeerRequest) -> Result<PeerResponse, CallError> {
        let addr = self.members.get(&to).ok_or(CallError::Unreachable(format!("node {to} is not a member")))?;
        self.node
            .transport()
            .call(to, addr.raft_addr.clone(), request, SIGNER_CALL_TIMEOUT)
            .await
            .map_err(|e| CallError::Unreachable(e.to_string()))
    }
}

impl Signers for NodeSigners {
    fn commit<'a>(
        &'a self,
        node: NodeId,
        request_id: &'a str,
        session_id: &'a str,
    ) -> BoxFuture<'a, Result<(SigningCommitments, String), CallError>> {
        async move {
            let answer = if node == self.node.id {
                self.node.signer().commit(request_id, session_id, self.min_index, true).await
            } else {
                let request = PeerRequest::SignCommit {
                    request_id: request_id.into(),
                    session_id: session_id.into(),
                    min_index: self.min_index,
                };
                match self.call(node, request).await? {
                    PeerResponse::SignCommit(answer) => answer,
                    PeerResponse::Refused(why) => Err(why),
                    other => return Err(CallError::Malformed(format!("{other:?}"))),
                }
            };
            let answer = answer.map_err(CallError::Refused)?;
            let bytes =
                hex::decode(&answer.commitments).map_err(|_| CallError::Malformed("commitments not hex".into()))?;
            let commitments =
                SigningCommitments::deserialize(&bytes).map_err(|e| CallError::Malformed(e.to_string()))?;
            Ok((commitments, answer.incarnation))
        }
        .boxed()
    }

    fn share<'a>(
        &'a self,
        node: NodeId,
        request_id: &'a str,
        session_id: &'a str,
        incarnation: &'a str,
        package: &'a SigningPackage,
    ) -> BoxFuture<'a, Result<SignatureShare, CallError>> {
        async move {
            pause_between_rounds().await;
            let package_hex =
                hex::encode(package.serialize().map_err(|e| CallError::Malformed(format!("package: {e}")))?);
            let answer = if node == self.node.id {
                self.node.signer().share(request_id, session_id, incarnation, &package_hex, true).await
            } else {
                let request = PeerRequest::SignShare {
                    request_id: request_id.into(),
                    session_id: session_id.into(),
                    incarnation: incarnation.into(),
                    signing_package: package_hex,
                };
                match self.call(node, request).await? {
                    PeerResponse::SignShare(answer) => answer,
                    PeerResponse::Refused(why) => Err(why),
                    other => return Err(CallError::Malformed(format!("{other:?}"))),
                }
            };
            let share_hex = answer.map_err(CallError::Refused)?;
            let bytes = hex::decode(share_hex).map_err(|_| CallError::Malformed("share not hex".into()))?;
            SignatureShare::deserialize(&bytes).map_err(|e| CallError::Malformed(e.to_string()))
        }
        .boxed()
    }
}

/// The [`crate::faults::PAUSE_BETWEEN_ROUNDS`] coordinator: once per process.
async fn pause_between_rounds() {
    static PAUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if crate::faults::enabled(crate::faults::PAUSE_BETWEEN_ROUNDS)
        && !PAUSED.swap(true, std::sync::atomic::Ordering::SeqCst)
    {
        tracing::warn!("fault pause-between-rounds: waiting 3 s between round 1 and round 2");
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

impl Coordination {
    /// On the leader, starts a session loop for every pending request that has none.
    pub fn start_pending(&self, node: &Arc<Node>) {
        let pending: Vec<String> = {
            let applied = node.state().read();
            let state = &applied.state;
            let skip_policy = crate::faults::enabled(crate::faults::SKIP_POLICY);
            state
                .pending_requests
                .iter()
                .filter(|id| {
                    skip_policy || state.requests.get(*id).is_some_and(|r| state.ready_to_sign(r, false).is_ok())
                })
                .cloned()
                .collect()
        };
        let mut in_flight = self.in_flight.lock().expect("in-flight lock");
        for request_id in pending {
            if in_flight.len() >= COORDINATIONS_MAX {
                break;
            }
            if in_flight.insert(request_id.clone()) {
                let node = node.clone();
                tokio::spawn(async move {
                    coordinate(&node, &request_id).await;
                    node.coordination().in_flight.lock().expect("in-flight lock").remove(&request_id);
                });
            }
        }
    }

    fn public_keys_of(&self, key: &crate::state::KeyRecord) -> Option<Arc<frost::keys::PublicKeyPackage>> {
        let mut cache = self.public_keys.lock().expect("public keys lock");
        if let Some(found) = cache.get(&key.id) {
            return Some(found.clone());
        }
        let parsed = Arc::new(key.public_keys()?);
        if cache.len() >= COORDINATIONS_MAX {
            cache.clear();
        }
        cache.insert(key.id.clone(), parsed.clone());
        Some(parsed)
    }

    fn excluded(&self, now: u64) -> BTreeSet<NodeId> {
        let mut culprits = self.culprits.lock().expect("culprits lock");
        culprits.retain(|_, until| *until > now);
        culprits.keys().copied().collect()
    }

    fn punish(&self, nodes: &[NodeId], now: u64) {
        let mut culprits = self.culprits.lock().expect("culprits lock");
        for node in nodes {
            culprits.insert(*node, now + CULPRIT_EXCLUSION_MS);
        }
    }
}

/// Runs one request's sessions and commits the signature or the failure.
async fn coordinate(node: &Arc<Node>, request_id: &str) {
    let (message, key, members, min_index) = {
        let applied = node.state().read();
        let min_index = applied.last_applied.map_or(0, |l| l.index);
        let state = &applied.state;
        let Some(request) = state.requests.get(request_id) else { return };
        let Some(key) = state.keys.get(&request.key_id) else { return };
        let Some(message) = request.message_bytes() else { return };
        (message, key.clone(), state.members.clone(), min_index)
    };
    let coordination = node.coordination();
    let Some(public_keys) = coordination.public_keys_of(&key) else { return };
    let job = Job {
        request_id,
        message: &message,
        public_keys: &public_keys,
        threshold: key.threshold,
        participants: &key.participants,
        excluded: coordination.excluded(node.now_ms()),
    };
    let signers = NodeSigners { node: node.clone(), members, min_index };
    let span = tracing::info_span!("coordinate", request_id, key = %key.name);
    let outcome = synod_coordinator::run(job, &signers, || node.seams().random_id()).instrument(span).await;
    let command = match outcome {
        Ok(signed) => {
            coordination.punish(&signed.culprits, node.now_ms());
            Command::SignResult {
                request_id: request_id.to_string(),
                node_id: node.id,
                signature: hex::encode(signed.signature),
                signers: signed.signers,
                culprits: signed.culprits,
                sessions: signed.sessions,
            }
        }
        Err(failure) => {
            coordination.punish(&failure.culprits, node.now_ms());
            tracing::warn!(request_id, reason = %failure.reason, "request could not be signed");
            Command::SignFailed {
                request_id: request_id.to_string(),
                node_id: node.id,
                reason: failure.reason,
                culprits: failure.culprits,
            }
        }
    };
    if let Err(e) = node.write_as_node(command).await {
        tracing::info!(request_id, error = %e, "signing outcome not committed; the next leader will retry");
    }
}

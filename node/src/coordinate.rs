//! The leader's side of signing: runs the coordinator's sessions for every
//! pending request and commits the outcome.
//!
//! The coordinator crate decides what to ask whom; this module wires its calls
//! to the transport (or to this node's own signer) and commits the result as a
//! node-signed command, which every node verifies before storing. A leader that
//! dies mid-signature leaves the request pending; the next leader starts fresh
//! sessions with new commitments.
//!
//! Two things make a signature cost one round trip and few messages:
//! - **Preprocessed commitments.** For every (signer, key) the leader keeps a
//!   pool of nonce commitments the signer made ahead of time
//!   ([`PeerRequest::SignPreprocess`], [`PREPROCESS_BATCH`] at a time, refilled
//!   in the background below [`PREPROCESS_LOW`]). A session takes one from each
//!   of t signers, so round 1 costs no message. The signer holds the nonces;
//!   the pool holds only public commitments and the tickets (incarnation and
//!   slot) that redeem them, so losing a pool loses nothing but work. A signer
//!   that fails a call has its pool dropped (it may have restarted, which
//!   killed its nonces).
//! - **Live signers first.** A signer that has left the leader's heartbeats
//!   unanswered for a while offers its commitments only after
//!   [`SILENT_SIGNER_HANDICAP`], so sessions pick signers that are up.
//! - **Batched shares.** Round-2 asks for one signer wait in its outbox while
//!   an earlier batch is on the wire and leave together in one
//!   [`PeerRequest::SignShare`], at most [`SHARE_BATCHES_IN_FLIGHT`] batches per
//!   signer at once. A lone request leaves at once; no timer delays it.
//! - **Batched outcomes.** Signatures and failures that finish while an earlier
//!   outcome entry is being committed go together in one node-signed
//!   `sign_outcomes` entry (at most [`SIGN_OUTCOMES_MAX`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Duration;

use frost::round1::SigningCommitments;
use frost::round2::SignatureShare;
use frost::SigningPackage;
use frost_ed25519 as frost;
use futures::future::BoxFuture;
use futures::FutureExt;
use synod_coordinator::{CallError, Job, Signers};
use synod_proto::command::SIGN_OUTCOMES_MAX;
use synod_proto::rpc::{NonceBatch, PeerRequest, PeerResponse, ShareAsk, SHARE_ASKS_MAX};
use synod_proto::{Command, NodeId};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use crate::node::Node;

/// How long a signer may take to answer one call.
pub const SIGNER_CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a signer caught sending an invalid share is left out of new sessions.
pub const CULPRIT_EXCLUSION_MS: u64 = 60_000;
/// The most requests this leader coordinates at once.
pub const COORDINATIONS_MAX: usize = 256;
/// Commitments asked of a signer per preprocessing call.
pub const PREPROCESS_BATCH: u32 = 16;
/// A pool is refilled when fewer commitments than this remain.
pub const PREPROCESS_LOW: usize = 16;
/// Share batches on the wire to one signer at once.
pub const SHARE_BATCHES_IN_FLIGHT: usize = 2;
/// How long a signer that has stopped answering heartbeats waits before its
/// commitments are offered: the others answer first and are chosen, so a dead
/// signer's pool does not make a session wait for its round-2 timeout.
pub const SILENT_SIGNER_HANDICAP: Duration = Duration::from_millis(500);

/// A preprocessed commitment and the ticket that redeems it.
type Ticketed = (SigningCommitments, String);

/// One signer's preprocessed commitments for one key.
struct Pool {
    ready: VecDeque<Ticketed>,
    refilling: bool,
    /// Why the last refill failed; cleared by the next success.
    failed: Option<CallError>,
    /// Bumped after every refill, successful or not.
    refilled: watch::Sender<u64>,
}

impl Pool {
    fn new() -> Pool {
        Pool { ready: VecDeque::new(), refilling: false, failed: None, refilled: watch::Sender::new(0) }
    }
}

/// A round-2 ask waiting in a signer's outbox, and where its answer goes.
type Outgoing = (ShareAsk, oneshot::Sender<Result<String, CallError>>);

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
    /// Preprocessed commitments by (signer, key id).
    pools: std::sync::Mutex<BTreeMap<(NodeId, String), Pool>>,
    /// Round-2 outboxes by signer (other nodes only).
    outboxes: std::sync::Mutex<BTreeMap<NodeId, mpsc::UnboundedSender<Outgoing>>>,
    /// The queue of the task that commits signing outcomes in batches.
    outcomes: std::sync::Mutex<Option<mpsc::UnboundedSender<PendingOutcome>>>,
}

/// The coordinator's calls for one request, over the transport or to this node's own signer.
struct NodeSigners {
    node: Arc<Node>,
    key_id: String,
    /// This node's applied index when it took the request up; signers catch up to it first.
    min_index: u64,
}

impl Signers for NodeSigners {
    fn commitments<'a>(&'a self, signer: NodeId) -> BoxFuture<'a, Result<Ticketed, CallError>> {
        take_commitments(self.node.clone(), signer, self.key_id.clone()).boxed()
    }

    fn unused(&self, signer: NodeId, commitments: SigningCommitments, ticket: String) {
        let mut pools = self.node.coordination().pools.lock().expect("pools lock");
        if let Some(pool) = pools.get_mut(&(signer, self.key_id.clone())) {
            pool.ready.push_front((commitments, ticket));
        }
    }

    fn share<'a>(
        &'a self,
        signer: NodeId,
        request_id: &'a str,
        ticket: &'a str,
        _package: &'a SigningPackage,
        serialized: &'a [u8],
    ) -> BoxFuture<'a, Result<SignatureShare, CallError>> {
        async move {
            pause_between_rounds().await;
            let (incarnation, slot) = parse_ticket(ticket).ok_or(CallError::Malformed(format!("ticket {ticket}")))?;
            let package = hex::encode(serialized);
            let ask = ShareAsk {
                request_id: request_id.into(),
                slot,
                incarnation: incarnation.into(),
                signing_package: package,
                min_index: self.min_index,
            };
            let answer = if signer == self.node.id {
                let mut answers = self.node.signer().share_batch(std::slice::from_ref(&ask), self.node.id, true).await;
                answers.pop().unwrap_or(Err("no answer".into())).map_err(CallError::Refused)
            } else {
                send_share(&self.node, signer, ask).await
            };
            let answer = answer.inspect_err(|_| self.node.coordination().drop_pools_of(signer))?;
            let bytes = hex::decode(answer).map_err(|_| CallError::Malformed("share not hex".into()))?;
            SignatureShare::deserialize(&bytes).map_err(|e| CallError::Malformed(e.to_string()))
        }
        .boxed()
    }
}

fn ticket(incarnation: &str, slot: u64) -> String {
    format!("{incarnation}/{slot}")
}

fn parse_ticket(ticket: &str) -> Option<(&str, u64)> {
    let (incarnation, slot) = ticket.rsplit_once('/')?;
    Some((incarnation, slot.parse().ok()?))
}

/// One preprocessed commitment of `signer` for `key_id`: from the pool, or
/// after a refill (at most [`SIGNER_CALL_TIMEOUT`]).
async fn take_commitments(node: Arc<Node>, signer: NodeId, key_id: String) -> Result<Ticketed, CallError> {
    if node.likely_down(signer) {
        tokio::time::sleep(SILENT_SIGNER_HANDICAP).await;
    }
    let mut waited = false;
    loop {
        let mut refilled = {
            let mut pools = node.coordination().pools.lock().expect("pools lock");
            let pool = pools.entry((signer, key_id.clone())).or_insert_with(Pool::new);
            let taken = pool.ready.pop_front();
            let low = pool.ready.len() < PREPROCESS_LOW;
            if (taken.is_none() || low) && !pool.refilling {
                pool.refilling = true;
                tokio::spawn(refill(node.clone(), signer, key_id.clone()));
            }
            if let Some(taken) = taken {
                return Ok(taken);
            }
            if waited {
                return Err(pool.failed.clone().unwrap_or(CallError::Unreachable("no commitments left".into())));
            }
            pool.refilled.subscribe()
        };
        if tokio::time::timeout(SIGNER_CALL_TIMEOUT, refilled.changed()).await.is_err() {
            return Err(CallError::Unreachable(format!("no nonce commitments from node {signer} in time")));
        }
        waited = true;
    }
}

/// Asks `signer` for [`PREPROCESS_BATCH`] commitments for `key_id` and adds them to its pool.
async fn refill(node: Arc<Node>, signer: NodeId, key_id: String) {
    let answer = if signer == node.id {
        node.signer().preprocess(&key_id, PREPROCESS_BATCH, node.id).await.map_err(CallError::Refused)
    } else {
        let request = PeerRequest::SignPreprocess { key_id: key_id.clone(), count: PREPROCESS_BATCH };
        match call(&node, signer, request).await {
            Ok(PeerResponse::SignPreprocess(answer)) => answer.map_err(CallError::Refused),
            Ok(PeerResponse::Refused(why)) => Err(CallError::Refused(why)),
            Ok(other) => Err(CallError::Malformed(format!("{other:?}"))),
            Err(e) => Err(e),
        }
    };
    let parsed = match answer {
        // Parsing checks every point: milliseconds per batch, off the async workers.
        Ok(batch) => crate::seams::run_blocking(move || parse_batch(batch))
            .await
            .unwrap_or_else(|e| Err(CallError::Malformed(e.to_string()))),
        Err(e) => Err(e),
    };
    let mut pools = node.coordination().pools.lock().expect("pools lock");
    let pool = pools.entry((signer, key_id)).or_insert_with(Pool::new);
    pool.refilling = false;
    match parsed {
        Ok((incarnation, fresh)) => {
            // Commitments from an earlier boot of the signer are dead: its nonces died with it.
            pool.ready.retain(|(_, t)| parse_ticket(t).is_some_and(|(i, _)| i == incarnation));
            pool.ready.extend(fresh);
            pool.failed = None;
        }
        Err(e) => {
            tracing::info!(signer, error = %e, "no preprocessed commitments from signer");
            pool.failed = Some(e);
        }
    }
    pool.refilled.send_modify(|n| *n += 1);
}

fn parse_batch(batch: NonceBatch) -> Result<(String, Vec<Ticketed>), CallError> {
    let mut out = Vec::with_capacity(batch.commitments.len());
    for (i, hex_commitments) in batch.commitments.iter().enumerate() {
        let bytes = hex::decode(hex_commitments).map_err(|_| CallError::Malformed("commitments not hex".into()))?;
        let commitments = SigningCommitments::deserialize(&bytes).map_err(|e| CallError::Malformed(e.to_string()))?;
        out.push((commitments, ticket(&batch.incarnation, batch.first_slot + i as u64)));
    }
    Ok((batch.incarnation, out))
}

async fn call(node: &Node, to: NodeId, request: PeerRequest) -> Result<PeerResponse, CallError> {
    let addr = node.state().read().state.members.get(&to).map(|m| m.raft_addr.clone());
    let addr = addr.ok_or(CallError::Unreachable(format!("node {to} is not a member")))?;
    node.transport()
        .call(to, addr, request, SIGNER_CALL_TIMEOUT)
        .await
        .map_err(|e| CallError::Unreachable(e.to_string()))
}

/// Puts `ask` in `signer`'s outbox and waits for its answer.
async fn send_share(node: &Arc<Node>, signer: NodeId, ask: ShareAsk) -> Result<String, CallError> {
    let (answer_to, answer) = oneshot::channel();
    {
        let mut outboxes = node.coordination().outboxes.lock().expect("outboxes lock");
        let outbox = outboxes.entry(signer).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(drain_outbox(Arc::downgrade(node), signer, rx));
            tx
        });
        if outbox.send((ask, answer_to)).is_err() {
            outboxes.remove(&signer);
            return Err(CallError::Unreachable("the outbox to this signer closed; retry".into()));
        }
    }
    answer.await.map_err(|_| CallError::Unreachable("the share batch was dropped".into()))?
}

/// Sends `signer`'s round-2 asks in batches: everything that queued up while
/// earlier batches were on the wire leaves together.
async fn drain_outbox(node: Weak<Node>, signer: NodeId, mut outbox: mpsc::UnboundedReceiver<Outgoing>) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(SHARE_BATCHES_IN_FLIGHT));
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        let Some(first) = outbox.recv().await else { return };
        let mut batch = vec![first];
        while batch.len() < SHARE_ASKS_MAX {
            match outbox.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let Some(node) = node.upgrade() else { return };
        tokio::spawn(async move {
            let (asks, answer_to): (Vec<ShareAsk>, Vec<_>) = batch.into_iter().unzip();
            let count = asks.len();
            let answers = match call(&node, signer, PeerRequest::SignShare { asks }).await {
                Ok(PeerResponse::SignShare(answers)) if answers.len() == count => {
                    answers.into_iter().map(|a| a.map_err(CallError::Refused)).collect()
                }
                Ok(PeerResponse::Refused(why)) => vec![Err(CallError::Refused(why)); count],
                Ok(other) => vec![Err(CallError::Malformed(format!("{other:?}"))); count],
                Err(e) => vec![Err(e); count],
            };
            for (to, answer) in answer_to.into_iter().zip(answers) {
                let _ = to.send(answer);
            }
            drop(permit);
        });
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

    /// Forgets every commitment `signer` preprocessed for this node: after a
    /// failed call it may have restarted, and its nonces with it.
    fn drop_pools_of(&self, signer: NodeId) {
        let mut pools = self.pools.lock().expect("pools lock");
        for ((of, _), pool) in pools.iter_mut() {
            if *of == signer {
                pool.ready.clear();
            }
        }
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
    let (message, key, min_index, attempt) = {
        let applied = node.state().read();
        let min_index = applied.last_applied.map_or(0, |l| l.index);
        let state = &applied.state;
        let Some(request) = state.requests.get(request_id) else { return };
        let Some(key) = state.keys.get(&request.key_id) else { return };
        let Some(message) = request.message_bytes() else { return };
        (message, key.clone(), min_index, request.attempt)
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
    let signers = NodeSigners { node: node.clone(), key_id: key.id.clone(), min_index };
    let span = tracing::info_span!("coordinate", request_id, key = %key.name);
    let outcome = synod_coordinator::run(job, &signers).instrument(span).await;
    let command = match outcome {
        Ok(signed) => {
            crate::faults::crash_point(node.id, crate::faults::LEADER_AFTER_SHARES).await;
            coordination.punish(&signed.culprits, node.now_ms());
            Command::SignResult {
                request_id: request_id.to_string(),
                node_id: node.id,
                signature: hex::encode(signed.signature),
                signers: signed.signers,
                culprits: signed.culprits,
                sessions: signed.sessions,
                attempt,
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
                attempt,
            }
        }
    };
    if let Err(e) = commit_outcome(node, command).await {
        tracing::info!(request_id, error = %e, "signing outcome not committed; the next leader will retry");
    }
}

/// Outcomes that finished while a batch was being committed, by JSON size, at most.
const OUTCOME_BATCH_BYTES_MAX: usize = 96 * 1024;

/// A signing outcome waiting for the writer, and where to say whether it was committed.
type PendingOutcome = (Command, oneshot::Sender<Result<(), String>>);

/// Commits a signing outcome. Outcomes that finish while an earlier batch is
/// being committed go together in one node-signed `sign_outcomes` entry; a lone
/// one goes at once as itself. Returns once its entry is committed (the caller
/// keeps the request "in flight" until then, so it is not coordinated twice).
async fn commit_outcome(node: &Arc<Node>, outcome: Command) -> Result<(), String> {
    let (done, committed) = oneshot::channel();
    {
        let mut writer = node.coordination().outcomes.lock().expect("outcome writer lock");
        let queue = writer.get_or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(write_outcomes(Arc::downgrade(node), rx));
            tx
        });
        if queue.send((outcome, done)).is_err() {
            *writer = None;
            return Err("the outcome writer stopped; retry".into());
        }
    }
    committed.await.map_err(|_| "the outcome batch was dropped".to_string())?
}

async fn write_outcomes(node: Weak<Node>, mut queue: mpsc::UnboundedReceiver<PendingOutcome>) {
    while let Some(first) = queue.recv().await {
        let mut bytes = serde_json::to_vec(&first.0).map_or(0, |b| b.len());
        let mut batch = vec![first];
        while batch.len() < SIGN_OUTCOMES_MAX && bytes < OUTCOME_BATCH_BYTES_MAX {
            match queue.try_recv() {
                Ok(next) => {
                    bytes += serde_json::to_vec(&next.0).map_or(0, |b| b.len());
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let Some(node) = node.upgrade() else { return };
        let (mut outcomes, done): (Vec<Command>, Vec<_>) = batch.into_iter().unzip();
        let command = match outcomes.len() {
            1 => outcomes.remove(0),
            _ => Command::SignOutcomes { node_id: node.id, outcomes },
        };
        let result = node.write_as_node(command).await.map(drop).map_err(|e| e.to_string());
        for done in done {
            let _ = done.send(result.clone());
        }
    }
}

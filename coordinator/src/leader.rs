//! The leader's signing desk: for every pending request it runs the sessions
//! of [`crate::run`] and commits the outcome, keeping what makes that cheap
//! between requests.
//!
//! It reaches its node only through [`Context`], a narrow trait: what is
//! pending, what to sign, a call to a signer, a commit. The node implements it
//! over its state, transport, own signer and write path; nothing in it can
//! reach a share, a nonce or the KEK. A leader that dies mid-signature leaves
//! the request pending; the next leader starts fresh sessions with new
//! commitments.
//!
//! What it keeps between requests:
//! - **Preprocessed commitments.** For every (signer, key) a pool of nonce
//!   commitments the signer made ahead of time ([`PREPROCESS_BATCH`] at a
//!   time, refilled in the background below [`PREPROCESS_LOW`]). A session
//!   takes one from each of t signers, so round 1 costs no message. The signer
//!   holds the nonces; the pool holds only public commitments and the
//!   [`Ticket`]s that redeem them, so losing a pool loses nothing but work. A
//!   signer that fails a call has its pool dropped (it may have restarted,
//!   which killed its nonces).
//! - **Live signers first.** A signer that has left the leader's heartbeats
//!   unanswered for a while offers its commitments only after
//!   [`SILENT_SIGNER_HANDICAP`], so sessions pick signers that are up.
//! - **Batched shares.** Round-2 asks for one signer wait in its outbox while
//!   an earlier batch is on the wire and leave together in one call, at most
//!   [`SHARE_BATCHES_IN_FLIGHT`] batches per signer at once. A lone request
//!   leaves at once; no timer delays it.
//! - **Batched outcomes.** Signatures and failures that finish while an earlier
//!   outcome entry is being committed go together in one node-signed
//!   `sign_outcomes` entry (at most [`SIGN_OUTCOMES_MAX`]).
//! - **Culprit bans.** A signer caught sending an invalid share stays out of new
//!   sessions for [`CULPRIT_EXCLUSION_MS`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use frost::keys::PublicKeyPackage;
use frost::round1::SigningCommitments;
use frost::round2::SignatureShare;
use frost::SigningPackage;
use frost_ed25519 as frost;
use futures::future::BoxFuture;
use futures::FutureExt;
use synod_proto::command::SIGN_OUTCOMES_MAX;
use synod_proto::rpc::{NonceBatch, ShareAsk, SHARE_ASKS_MAX};
use synod_proto::{Command, NodeId};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use crate::{CallError, Job, Signers, Ticket};

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
/// How many times a request is run again after its key's shares moved to a
/// new generation under it (a refresh completes once per generation, so one
/// retry is the rule; two leave room for a second refresh).
pub const GENERATION_RETRIES_MAX: u32 = 2;
/// Outcomes that finished while a batch was being committed, by JSON size, at most.
pub const OUTCOME_BATCH_BYTES_MAX: usize = 96 * 1024;

/// What one committed request asks to have signed, read from the node's own
/// applied state when the request is taken up.
#[derive(Clone, Debug)]
pub struct RequestToSign {
    pub message: Vec<u8>,
    pub key_id: String,
    /// The key's name, for logs.
    pub key_name: String,
    pub threshold: u16,
    /// Participants in preference order. FROST identifier = node id.
    pub participants: Vec<NodeId>,
    /// The node's applied index when it took the request up; signers catch up to it first.
    pub min_index: u64,
    /// The attempt this leader coordinates; its outcome names it.
    pub attempt: u32,
    /// The generation of the key's shares current in the node's state (a
    /// refresh makes a new one): every ask of the job names it.
    pub generation: u32,
}

/// What the leader's signing needs from its node. Every call that reaches a
/// signer (another node, or this node's own signer when `signer` is this
/// node's id) is bounded by [`SIGNER_CALL_TIMEOUT`] by the implementation.
pub trait Context: Send + Sync + 'static {
    /// This node's id: its own signer is called directly, not through an outbox.
    fn node_id(&self) -> NodeId;
    /// This node's clock, in ms since the epoch (bans are timed by it).
    fn now_ms(&self) -> u64;
    /// Whether `peer` has stopped answering this node's Raft heartbeats.
    fn likely_down(&self, peer: NodeId) -> bool;
    /// The pending requests to coordinate now, in order (their policy is met).
    fn ready_requests(&self) -> Vec<String>;
    /// What to sign for `request_id`, or `None` when it is gone or not signable.
    fn request(&self, request_id: &str) -> Option<RequestToSign>;
    /// The public key package of generation `generation` of `key_id`, or
    /// `None` when that is not the key's current generation (parsed on a
    /// cache miss only).
    fn public_keys(&self, key_id: &str, generation: u32) -> Option<PublicKeyPackage>;
    /// Asks `signer` for `count` preprocessed commitments for `key_id`.
    fn preprocess(&self, signer: NodeId, key_id: &str, count: u32)
        -> BoxFuture<'static, Result<NonceBatch, CallError>>;
    /// Asks `signer` for signature shares, one answer per ask, in order.
    fn shares(&self, signer: NodeId, asks: Vec<ShareAsk>) -> BoxFuture<'static, Vec<Result<String, CallError>>>;
    /// Commits a node-authored outcome command; `Ok` once it is committed.
    fn commit(&self, command: Command) -> BoxFuture<'static, Result<(), String>>;
    /// Called after a session's shares aggregated, before the outcome is
    /// committed (the simulator crashes a leader there).
    fn after_shares(&self) -> BoxFuture<'static, ()> {
        futures::future::ready(()).boxed()
    }
    /// Called once a request's sessions are over, before its outcome is committed: what the
    /// node's metrics record of it.
    fn coordinated(&self, _report: &Coordinated<'_>) {}
    /// Called when `signer` gave no signature share for a round-2 ask (silent, refused or
    /// malformed): what the node's metrics count per signer.
    fn share_missed(&self, _signer: NodeId, _why: &CallError) {}
    /// Called between round 1 and round 2 (a test build pauses there once).
    fn between_rounds(&self) -> BoxFuture<'static, ()> {
        futures::future::ready(()).boxed()
    }
}

/// How one request's coordination went, for [`Context::coordinated`].
#[derive(Debug)]
pub struct Coordinated<'a> {
    /// Whether a signature came out of it.
    pub signed: bool,
    /// From taking the request up to its outcome, retries after a refresh included.
    pub took: Duration,
    /// FROST sessions run (the last attempt's).
    pub sessions: u32,
    /// Signers whose shares failed verification.
    pub culprits: &'a [NodeId],
}

/// A preprocessed commitment and the ticket that redeems it.
type Ticketed = (SigningCommitments, Ticket);

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

/// A signing outcome waiting for the writer, and where to say whether it was committed.
type PendingOutcome = (Command, oneshot::Sender<Result<(), String>>);

/// The leader's signing state on one node (meaningful while it leads).
pub struct Leader<C: Context> {
    ctx: C,
    /// Requests with a session loop running here.
    in_flight: Mutex<BTreeSet<String>>,
    /// Signers caught cheating, until when (node clock, ms).
    culprits: Mutex<BTreeMap<NodeId, u64>>,
    /// Parsed public key packages by key id and generation: parsing checks
    /// every point, which costs more than the coordinator's share of the
    /// signing itself.
    public_keys: Mutex<BTreeMap<(String, u32), Arc<PublicKeyPackage>>>,
    /// Preprocessed commitments by (signer, key id).
    pools: Mutex<BTreeMap<(NodeId, String), Pool>>,
    /// Round-2 outboxes by signer (other nodes only).
    outboxes: Mutex<BTreeMap<NodeId, mpsc::UnboundedSender<Outgoing>>>,
    /// The queue of the task that commits signing outcomes in batches.
    outcomes: Mutex<Option<mpsc::UnboundedSender<PendingOutcome>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<C: Context> Leader<C> {
    pub fn new(ctx: C) -> Leader<C> {
        Leader {
            ctx,
            in_flight: Mutex::default(),
            culprits: Mutex::default(),
            public_keys: Mutex::default(),
            pools: Mutex::default(),
            outboxes: Mutex::default(),
            outcomes: Mutex::default(),
        }
    }

    /// Starts a session loop for every ready request that has none (at most
    /// [`COORDINATIONS_MAX`] at once). Call it on the leader only.
    pub fn start_pending(self: &Arc<Self>) {
        let pending = self.ctx.ready_requests();
        let mut in_flight = lock(&self.in_flight);
        for request_id in pending {
            if in_flight.len() >= COORDINATIONS_MAX {
                break;
            }
            if in_flight.insert(request_id.clone()) {
                let leader = self.clone();
                tokio::spawn(async move {
                    leader.coordinate(&request_id).await;
                    lock(&leader.in_flight).remove(&request_id);
                });
            }
        }
    }

    /// Runs one request's sessions and commits the signature or the failure.
    ///
    /// A refresh that completes while a job runs makes the signers refuse its
    /// asks (each signs only with the generation current in its own state, so
    /// no session mixes generations and no honest signer is blamed). A job
    /// that failed while the node's own state moved to another generation of
    /// the key is run again on that generation, at most
    /// [`GENERATION_RETRIES_MAX`] times, and its failure is not committed.
    /// Only the node's own state decides that, so a signer that claims a
    /// switch that did not happen gains nothing.
    async fn coordinate(self: &Arc<Self>, request_id: &str) {
        let started = tokio::time::Instant::now();
        let mut retries = 0;
        let (request, outcome) = loop {
            let Some(request) = self.ctx.request(request_id) else { return };
            let Some(public_keys) = self.public_keys_of(&request.key_id, request.generation) else { return };
            let job = Job {
                request_id,
                message: &request.message,
                public_keys: &public_keys,
                threshold: request.threshold,
                participants: &request.participants,
                excluded: self.excluded(self.ctx.now_ms()),
            };
            let signers = RequestSigners {
                leader: self.clone(),
                key_id: request.key_id.clone(),
                min_index: request.min_index,
                generation: request.generation,
            };
            let span = tracing::info_span!("coordinate", request_id, key = %request.key_name);
            let outcome = crate::run(job, &signers).instrument(span).await;
            let switched = outcome.is_err()
                && self.ctx.request(request_id).is_some_and(|now| now.generation != request.generation);
            if switched && retries < GENERATION_RETRIES_MAX {
                retries += 1;
                tracing::info!(request_id, generation = request.generation, "key refreshed during signing; retrying");
                continue;
            }
            break (request, outcome);
        };
        let node_id = self.ctx.node_id();
        let (signed, sessions, culprits) = match &outcome {
            Ok(s) => (true, s.sessions, &s.culprits),
            Err(f) => (false, f.sessions, &f.culprits),
        };
        self.ctx.coordinated(&Coordinated { signed, took: started.elapsed(), sessions, culprits });
        let command = match outcome {
            Ok(signed) => {
                self.ctx.after_shares().await;
                self.punish(&signed.culprits, self.ctx.now_ms());
                Command::SignResult {
                    request_id: request_id.to_string(),
                    node_id,
                    signature: hex::encode(signed.signature),
                    signers: signed.signers,
                    culprits: signed.culprits,
                    sessions: signed.sessions,
                    attempt: request.attempt,
                }
            }
            Err(failure) => {
                self.punish(&failure.culprits, self.ctx.now_ms());
                tracing::warn!(request_id, reason = %failure.reason, "request could not be signed");
                Command::SignFailed {
                    request_id: request_id.to_string(),
                    node_id,
                    reason: failure.reason,
                    culprits: failure.culprits,
                    attempt: request.attempt,
                }
            }
        };
        if let Err(e) = self.commit_outcome(command).await {
            tracing::info!(request_id, error = %e, "signing outcome not committed; the next leader will retry");
        }
    }

    fn public_keys_of(&self, key_id: &str, generation: u32) -> Option<Arc<PublicKeyPackage>> {
        let id = (key_id.to_string(), generation);
        if let Some(found) = lock(&self.public_keys).get(&id) {
            return Some(found.clone());
        }
        let parsed = Arc::new(self.ctx.public_keys(key_id, generation)?);
        let mut cache = lock(&self.public_keys);
        if cache.len() >= COORDINATIONS_MAX {
            cache.clear();
        }
        cache.insert(id, parsed.clone());
        Some(parsed)
    }

    fn excluded(&self, now: u64) -> BTreeSet<NodeId> {
        let mut culprits = lock(&self.culprits);
        culprits.retain(|_, until| *until > now);
        culprits.keys().copied().collect()
    }

    fn punish(&self, nodes: &[NodeId], now: u64) {
        let mut culprits = lock(&self.culprits);
        for node in nodes {
            culprits.insert(*node, now + CULPRIT_EXCLUSION_MS);
        }
    }

    /// Forgets every commitment `signer` preprocessed for this node: after a
    /// failed call it may have restarted, and its nonces with it.
    fn drop_pools_of(&self, signer: NodeId) {
        for ((of, _), pool) in lock(&self.pools).iter_mut() {
            if *of == signer {
                pool.ready.clear();
            }
        }
    }

    /// Forgets the commitments of every key `signs` says no longer signs (a
    /// key disabled or destroyed): its signers drop those nonces when they
    /// apply the change, so tickets kept here would name empty slots after
    /// the key is enabled again. Call it whenever applied state changes.
    pub fn forget_keys(&self, signs: impl Fn(&str) -> bool) {
        for ((_, key_id), pool) in lock(&self.pools).iter_mut() {
            if !signs(key_id) {
                pool.ready.clear();
            }
        }
    }

    /// One preprocessed commitment of `signer` for `key_id`: from the pool, or
    /// after a refill (at most [`SIGNER_CALL_TIMEOUT`]).
    async fn take_commitments(self: &Arc<Self>, signer: NodeId, key_id: &str) -> Result<Ticketed, CallError> {
        if signer != self.ctx.node_id() && self.ctx.likely_down(signer) {
            tokio::time::sleep(SILENT_SIGNER_HANDICAP).await;
        }
        let mut waited = false;
        loop {
            let mut refilled = {
                let mut pools = lock(&self.pools);
                let pool = pools.entry((signer, key_id.to_string())).or_insert_with(Pool::new);
                let taken = pool.ready.pop_front();
                let low = pool.ready.len() < PREPROCESS_LOW;
                if (taken.is_none() || low) && !pool.refilling {
                    pool.refilling = true;
                    tokio::spawn(self.clone().refill(signer, key_id.to_string()));
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
    async fn refill(self: Arc<Self>, signer: NodeId, key_id: String) {
        let answer = self.ctx.preprocess(signer, &key_id, PREPROCESS_BATCH).await;
        let parsed = match answer {
            // Parsing checks every point: milliseconds per batch, off the async workers.
            Ok(batch) => run_blocking(move || parse_batch(batch)).await,
            Err(e) => Err(e),
        };
        let mut pools = lock(&self.pools);
        let pool = pools.entry((signer, key_id)).or_insert_with(Pool::new);
        pool.refilling = false;
        match parsed {
            Ok((incarnation, fresh)) => {
                // Commitments from an earlier boot of the signer are dead: its nonces died with it.
                pool.ready.retain(|(_, t)| t.incarnation == incarnation);
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

    /// Round 2 for one signer: this node's own signer directly, another
    /// through its outbox.
    async fn share(self: &Arc<Self>, signer: NodeId, ask: ShareAsk) -> Result<String, CallError> {
        self.ctx.between_rounds().await;
        let answer = if signer == self.ctx.node_id() {
            let mut answers = self.ctx.shares(signer, vec![ask]).await;
            answers.pop().unwrap_or(Err(CallError::Malformed("no answer".into())))
        } else {
            self.send_share(signer, ask).await
        };
        answer.inspect_err(|why| {
            self.ctx.share_missed(signer, why);
            self.drop_pools_of(signer)
        })
    }

    /// Puts `ask` in `signer`'s outbox and waits for its answer.
    async fn send_share(self: &Arc<Self>, signer: NodeId, ask: ShareAsk) -> Result<String, CallError> {
        let (answer_to, answer) = oneshot::channel();
        {
            let mut outboxes = lock(&self.outboxes);
            let outbox = outboxes.entry(signer).or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(drain_outbox(Arc::downgrade(self), signer, rx));
                tx
            });
            if outbox.send((ask, answer_to)).is_err() {
                outboxes.remove(&signer);
                return Err(CallError::Unreachable("the outbox to this signer closed; retry".into()));
            }
        }
        answer.await.map_err(|_| CallError::Unreachable("the share batch was dropped".into()))?
    }

    /// Commits a signing outcome. Outcomes that finish while an earlier batch is
    /// being committed go together in one node-signed `sign_outcomes` entry; a lone
    /// one goes at once as itself. Returns once its entry is committed (the caller
    /// keeps the request "in flight" until then, so it is not coordinated twice).
    async fn commit_outcome(self: &Arc<Self>, outcome: Command) -> Result<(), String> {
        let (done, committed) = oneshot::channel();
        {
            let mut writer = lock(&self.outcomes);
            let queue = writer.get_or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(write_outcomes(Arc::downgrade(self), rx));
                tx
            });
            if queue.send((outcome, done)).is_err() {
                *writer = None;
                return Err("the outcome writer stopped; retry".into());
            }
        }
        committed.await.map_err(|_| "the outcome batch was dropped".to_string())?
    }
}

/// The coordinator's calls for one request.
struct RequestSigners<C: Context> {
    leader: Arc<Leader<C>>,
    key_id: String,
    /// The leader's applied index when it took the request up.
    min_index: u64,
    /// The generation of the key's shares the job verifies against.
    generation: u32,
}

impl<C: Context> Signers for RequestSigners<C> {
    fn commitments<'a>(&'a self, signer: NodeId) -> BoxFuture<'a, Result<Ticketed, CallError>> {
        self.leader.take_commitments(signer, &self.key_id).boxed()
    }

    fn unused(&self, signer: NodeId, commitments: SigningCommitments, ticket: Ticket) {
        if let Some(pool) = lock(&self.leader.pools).get_mut(&(signer, self.key_id.clone())) {
            pool.ready.push_front((commitments, ticket));
        }
    }

    fn share<'a>(
        &'a self,
        signer: NodeId,
        request_id: &'a str,
        ticket: &'a Ticket,
        _package: &'a SigningPackage,
        serialized: &'a [u8],
    ) -> BoxFuture<'a, Result<SignatureShare, CallError>> {
        async move {
            let ask = ShareAsk {
                request_id: request_id.into(),
                slot: ticket.slot,
                incarnation: ticket.incarnation.clone(),
                signing_package: hex::encode(serialized),
                min_index: self.min_index,
                generation: self.generation,
            };
            let answer = self.leader.share(signer, ask).await?;
            let bytes = hex::decode(answer).map_err(|_| CallError::Malformed("share not hex".into()))?;
            SignatureShare::deserialize(&bytes).map_err(|e| CallError::Malformed(e.to_string()))
        }
        .boxed()
    }
}

/// Parses a signer's preprocessed batch into ticketed commitments.
fn parse_batch(batch: NonceBatch) -> Result<(String, Vec<Ticketed>), CallError> {
    let mut out = Vec::with_capacity(batch.commitments.len());
    for (i, hex_commitments) in batch.commitments.iter().enumerate() {
        let bytes = hex::decode(hex_commitments).map_err(|_| CallError::Malformed("commitments not hex".into()))?;
        let commitments = SigningCommitments::deserialize(&bytes).map_err(|e| CallError::Malformed(e.to_string()))?;
        let ticket = Ticket { incarnation: batch.incarnation.clone(), slot: batch.first_slot + i as u64 };
        out.push((commitments, ticket));
    }
    Ok((batch.incarnation, out))
}

/// Runs CPU-heavy parsing off the async workers. On a current-thread runtime
/// (each host of the deterministic simulator is one) it runs inline: a
/// blocking-pool thread would finish at a wall-clock moment and make the
/// simulation depend on it. (The node's `seams::run_blocking` does the same;
/// the coordinator may not depend on the node, so it keeps this twin.)
async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CallError> + Send + 'static,
) -> Result<T, CallError> {
    if tokio::runtime::Handle::current().runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread {
        return f();
    }
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| Err(CallError::Malformed(e.to_string())))
}

/// Sends `signer`'s round-2 asks in batches: everything that queued up while
/// earlier batches were on the wire leaves together.
async fn drain_outbox<C: Context>(
    leader: Weak<Leader<C>>,
    signer: NodeId,
    mut outbox: mpsc::UnboundedReceiver<Outgoing>,
) {
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
        let Some(leader) = leader.upgrade() else { return };
        tokio::spawn(async move {
            let (asks, answer_to): (Vec<ShareAsk>, Vec<_>) = batch.into_iter().unzip();
            let count = asks.len();
            let mut answers = leader.ctx.shares(signer, asks).await;
            if answers.len() != count {
                answers = vec![Err(CallError::Malformed(format!("{} answers to {count} asks", answers.len()))); count];
            }
            for (to, answer) in answer_to.into_iter().zip(answers) {
                let _ = to.send(answer);
            }
            drop(permit);
        });
    }
}

/// Commits queued outcomes, batching those that queued during the last commit.
async fn write_outcomes<C: Context>(leader: Weak<Leader<C>>, mut queue: mpsc::UnboundedReceiver<PendingOutcome>) {
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
        let Some(leader) = leader.upgrade() else { return };
        let (mut outcomes, done): (Vec<Command>, Vec<_>) = batch.into_iter().unzip();
        let command = match outcomes.len() {
            1 => outcomes.remove(0),
            _ => Command::SignOutcomes { node_id: leader.ctx.node_id(), outcomes },
        };
        let result = leader.ctx.commit(command).await;
        for done in done {
            let _ = done.send(result.clone());
        }
    }
}

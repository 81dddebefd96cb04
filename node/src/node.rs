//! A running node: Raft, the state machine, the peer transport and the write
//! path, assembled from seams so the simulator can build the same thing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use openraft::error::{ClientWriteError, RaftError};
use openraft::ServerState;
use synod_proto::api::{ApiError, Health, LeaderHint, MemberStatus, RequestInfo, Status, WriteResponse};
use synod_proto::command::Authority;
use synod_proto::rpc::{PeerRequest, PeerResponse};
use synod_proto::{Command, LogEntry, NodeAddr, NodeId, SignedCommand};

use crate::config::RaftTuning;
use crate::coordinate::Coordination;
use crate::dkg::Dkg;
use crate::faults;
use crate::pki::NodeIdentity;
use crate::raft::log_store::LogStore;
use crate::raft::network::Network;
use crate::raft::state_machine::{SharedState, StateMachine};
use crate::raft::Raft;
use crate::sealed::SealedStore;
use crate::seams::Seams;
use crate::signer::Signer;
use crate::store::Store;
use crate::transport::{PeerHandler, PeerTransport};

/// How many refused commands a node lets into the log per minute (they are
/// audited); more are answered with 429 and not logged, so a flood of forged
/// input cannot grow the log without bound.
const REFUSALS_PER_MINUTE_MAX: u32 = 60;

/// A fixed-window counter of commands admitted that will be refused.
#[derive(Default)]
struct RefusalBudget(std::sync::Mutex<(u64, u32)>);

impl RefusalBudget {
    /// Whether one more may be admitted at `now_ms`.
    fn admit(&self, now_ms: u64) -> bool {
        let mut window = self.0.lock().expect("refusal budget lock");
        let minute = now_ms / 60_000;
        if window.0 != minute {
            *window = (minute, 0);
        }
        window.1 += 1;
        window.1 <= REFUSALS_PER_MINUTE_MAX
    }
}

/// How often the leader checkpoints the audit chain (when it has grown).
const CHECKPOINT_EVERY_MS: u64 = 60_000;

/// How long a participant may take to answer the ping before a key generation.
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a forwarded write may take at the leader.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the leader waits for its proposal to commit and apply. openraft
/// answers a proposal when its index is applied or its entry is truncated
/// away, but not when a snapshot from a newer leader replaces the entry: the
/// deposed leader's caller would wait forever (found by the simulator: a DKG
/// confirmation proposed just before its node lost leadership held the node's
/// key generation loop, and the key never became active). Shorter than
/// [`FORWARD_TIMEOUT`], so a forwarding node hears the leader's answer.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the leader reconciles Raft membership with the signed registry.
const RECONCILE_EVERY: Duration = Duration::from_millis(500);
/// A learner is promoted to voter once it is this close to the leader's log.
const PROMOTE_LAG_ENTRIES_MAX: u64 = 64;

/// Everything a node is built from.
pub struct NodeParts {
    pub id: NodeId,
    pub store: Arc<dyn Store>,
    pub transport: Arc<dyn PeerTransport>,
    /// Secrets at rest, sealed under the node's KEK.
    pub sealed: Arc<SealedStore>,
    /// The node's certificate and key, which sign the commands it authors.
    pub identity: Arc<NodeIdentity>,
    pub seams: Seams,
    pub tuning: RaftTuning,
}

/// How long a node-authored command stays valid.
const NODE_COMMAND_TTL_MS: u64 = 5 * 60 * 1000;
/// How often the key and signing loop runs (DKG steps, coordination, nonce clean-up).
const KEYS_TICK: Duration = Duration::from_millis(20);

/// A running node.
pub struct Node {
    pub id: NodeId,
    pub raft: Raft,
    shared: SharedState,
    transport: Arc<dyn PeerTransport>,
    sealed: Arc<SealedStore>,
    seams: Seams,
    /// Random per boot; later issues tag nonces with it so none survive a restart.
    pub incarnation: String,
    /// Set while this node started on an empty disk and has not yet caught up.
    catch_up: std::sync::Mutex<CatchUp>,
    identity: Arc<NodeIdentity>,
    /// The node's store (the audit records live in it).
    store: Arc<dyn Store>,
    /// When this node last considered an audit checkpoint (its clock, ms).
    last_checkpoint_ms: std::sync::Mutex<u64>,
    /// Bounds how many commands this node lets into the log knowing they will be refused.
    refusals: RefusalBudget,
    signer: Signer,
    dkg: Dkg,
    coordination: Coordination,
    /// When each peer last answered this node's Raft calls.
    peer_health: Arc<crate::raft::network::PeerHealth>,
    /// A peer silent for this long is taken to be down (several heartbeats).
    silent_limit: std::time::Duration,
}

/// Where a node that started on an empty disk stands.
///
/// Raft assumes a node never loses its vote or acknowledged entries. A node
/// whose disk was wiped or replaced looks exactly like a new one, so until it
/// has caught up with the log a leader sent it, it grants no vote: otherwise it
/// could vote twice in a term, or for a candidate that lacks entries it had
/// acknowledged (the simulator found committed entries lost that way). The one
/// vote it may grant is in the bootstrap election of a new cluster, whose
/// candidate holds only the initial membership (log index 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CatchUp {
    /// The node's disk held Raft state when it started.
    NotNeeded,
    /// Empty disk; no leader has told it the commit index yet.
    AwaitingLeader,
    /// Empty disk; caught up once it has applied this index.
    Until(u64),
    /// Caught up.
    Done,
}

impl Node {
    /// Builds the Raft instance over the given seams. Does not start serving peers.
    pub async fn start(parts: NodeParts) -> anyhow::Result<Arc<Node>> {
        let t = &parts.tuning;
        let config = openraft::Config {
            cluster_name: "synod".into(),
            heartbeat_interval: t.heartbeat_ms,
            election_timeout_min: t.election_timeout_min_ms,
            election_timeout_max: t.election_timeout_max_ms,
            max_payload_entries: synod_proto::rpc::APPEND_ENTRIES_MAX,
            snapshot_max_chunk_size: synod_proto::rpc::SNAPSHOT_CHUNK_BYTES,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(t.snapshot_every_entries),
            max_in_snapshot_log_to_keep: t.logs_kept_after_snapshot,
            purge_batch_size: 1,
            ..Default::default()
        };
        let config = Arc::new(config.validate()?);
        let (state_machine, shared) = StateMachine::open(parts.store.clone(), parts.id)?;
        let mut log_store = LogStore::new(parts.store.clone());
        let empty_disk = {
            use openraft::storage::RaftLogStorage;
            let vote = log_store.read_vote().await?;
            let log = log_store.get_log_state().await?;
            vote.is_none() && log.last_log_id.is_none() && shared.read().last_applied.is_none()
        };
        let catch_up = if empty_disk { CatchUp::AwaitingLeader } else { CatchUp::NotNeeded };
        let peer_health = Arc::new(crate::raft::network::PeerHealth::default());
        let network = Network::new(parts.transport.clone(), peer_health.clone());
        let raft = Raft::new(parts.id, config, network, log_store, state_machine).await?;
        let incarnation = parts.seams.random_id();
        if parts.identity.id != parts.id {
            anyhow::bail!("the node certificate names node {}, but this is node {}", parts.identity.id, parts.id);
        }
        let signer = Signer::new(
            parts.id,
            incarnation.clone(),
            shared.clone(),
            parts.sealed.clone(),
            parts.store.clone(),
            parts.seams.rng.clone(),
        );
        let node = Arc::new(Node {
            id: parts.id,
            raft,
            shared,
            transport: parts.transport,
            sealed: parts.sealed,
            seams: parts.seams,
            incarnation,
            catch_up: std::sync::Mutex::new(catch_up),
            identity: parts.identity,
            store: parts.store.clone(),
            last_checkpoint_ms: std::sync::Mutex::new(0),
            refusals: RefusalBudget::default(),
            signer,
            dkg: Dkg::default(),
            coordination: Coordination::default(),
            peer_health,
            silent_limit: std::time::Duration::from_millis(parts.tuning.heartbeat_ms * SILENT_HEARTBEATS),
        });
        tokio::spawn(reconcile_membership(Arc::downgrade(&node)));
        tokio::spawn(keys_and_signing(Arc::downgrade(&node)));
        tokio::spawn(break_election_ties(Arc::downgrade(&node), parts.tuning.clone()));
        Ok(node)
    }

    /// The applied state, for reads.
    pub fn state(&self) -> &SharedState {
        &self.shared
    }

    /// This node's clock (the seam), in ms since the epoch.
    pub fn now_ms(&self) -> u64 {
        self.seams.clock.now_ms()
    }

    pub fn seams(&self) -> &Seams {
        &self.seams
    }

    pub fn transport(&self) -> &Arc<dyn PeerTransport> {
        &self.transport
    }

    pub fn sealed(&self) -> &Arc<SealedStore> {
        &self.sealed
    }

    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    pub fn coordination(&self) -> &Coordination {
        &self.coordination
    }

    /// Whether `peer` has left this node's Raft calls (heartbeats included)
    /// unanswered for [`SILENT_HEARTBEATS`] heartbeat intervals.
    pub fn likely_down(&self, peer: NodeId) -> bool {
        peer != self.id && self.peer_health.silent_for(peer) > self.silent_limit
    }

    /// Commits a command this node authors (DKG messages, signing outcomes),
    /// signed with its certificate key.
    pub async fn write_as_node(&self, command: Command) -> Result<WriteResponse, ApiError> {
        let cluster_id = self.shared.read().state.cluster_id.clone();
        let cluster_id = cluster_id.ok_or_else(|| ApiError::new(412, "the cluster is not initialised"))?;
        let now = self.now_ms();
        let envelope = {
            let mut rng = self.seams.rng.lock().expect("rng lock");
            synod_proto::Envelope::new(cluster_id, command, now, NODE_COMMAND_TTL_MS, &mut *rng)
        };
        let response = self.write(self.identity.sign(&envelope)).await?;
        if let synod_proto::Outcome::Rejected { reason } = &response.outcome {
            return Err(ApiError::new(409, reason.clone()));
        }
        Ok(response)
    }

    /// Commits a signed command through Raft from any node: the leader proposes
    /// it, a follower forwards it to the leader.
    pub async fn write(&self, command: SignedCommand) -> Result<WriteResponse, ApiError> {
        self.write_inner(command, true).await
    }

    async fn write_inner(&self, command: SignedCommand, may_forward: bool) -> Result<WriteResponse, ApiError> {
        if !faults::enabled(faults::SKIP_AUTHOR_CHECK) {
            self.precheck(&command)?;
        }
        let entry = LogEntry { time_ms: self.seams.clock.now_ms(), command: command.clone() };
        #[cfg(feature = "fault-injection")]
        if faults::enabled(faults::ACK_BEFORE_COMMIT) {
            if let Some(planted) = ack_before_commit(&self.raft, entry.clone()).await {
                return planted;
            }
        }
        let Ok(written) = tokio::time::timeout(COMMIT_TIMEOUT, self.raft.client_write(entry)).await else {
            return Err(ApiError::unavailable(format!(
                "the write was proposed but not committed within {} s (leadership may have changed); \
                 it may still commit: send the same signed command again, which is applied at most once",
                COMMIT_TIMEOUT.as_secs()
            )));
        };
        match written {
            Ok(resp) => {
                faults::crash_point(self.id, faults::WRITE_AFTER_COMMIT).await;
                Ok(WriteResponse { index: resp.log_id.index, outcome: resp.data })
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(fwd))) => {
                let (Some(leader), Some(addr)) = (fwd.leader_id, fwd.leader_node) else {
                    return Err(ApiError::unavailable("no leader is elected right now; retry in a moment"));
                };
                if !may_forward {
                    return Err(not_leader(leader, &addr));
                }
                let response = self.forward(leader, addr, command).await?;
                // Read your writes: what the leader applied is visible here before the answer.
                self.wait_applied(response.index, tokio::time::Instant::now() + FORWARD_TIMEOUT).await;
                Ok(response)
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(ApiError::new(409, e.to_string()))
            }
            Err(RaftError::Fatal(e)) => Err(ApiError::unavailable(format!("this node's Raft has stopped: {e}"))),
        }
    }

    async fn forward(&self, leader: NodeId, addr: NodeAddr, command: SignedCommand) -> Result<WriteResponse, ApiError> {
        let response = self
            .transport
            .call(leader, addr.raft_addr.clone(), PeerRequest::Forward(command), FORWARD_TIMEOUT)
            .await
            .map_err(|e| {
                let mut err = ApiError::unavailable(format!("could not forward the write to leader {leader}: {e}"));
                err.leader_hint = Some(LeaderHint { node_id: leader, api_addr: addr.api_addr.clone() });
                err
            })?;
        match response {
            PeerResponse::Forward(result) => result,
            other => Err(ApiError::unavailable(format!("leader {leader} answered the forward with {other:?}"))),
        }
    }

    /// `POST /v1/keys`: commits a create-key or import-key command. A DKG needs
    /// every participant up, so for a new key each one is pinged first and the
    /// error names any that does not answer.
    pub async fn create_key(&self, command: SignedCommand) -> Result<WriteResponse, ApiError> {
        let envelope = command.verify().map_err(|e| ApiError::bad_request(e.to_string()))?;
        let participants = match &envelope.command {
            Command::CreateKey { participants, .. } => participants.clone(),
            Command::ImportKey { .. } => Vec::new(),
            other => {
                return Err(ApiError::bad_request(format!("expected create_key or import_key, got {}", other.kind())))
            }
        };
        let members = self.shared.read().state.members.clone();
        let pings = participants.iter().filter(|p| **p != self.id).map(|&p| {
            let addr = members.get(&p).map(|a| a.raft_addr.clone());
            async move {
                let Some(addr) = addr else { return Some((p, "not a member".to_string())) };
                match self.transport.call(p, addr, PeerRequest::Ping, PING_TIMEOUT).await {
                    Ok(PeerResponse::Pong { .. }) => None,
                    Ok(other) => Some((p, format!("answered {other:?}"))),
                    Err(e) => Some((p, e.to_string())),
                }
            }
        });
        let down: Vec<(NodeId, String)> = futures::future::join_all(pings).await.into_iter().flatten().collect();
        if !down.is_empty() {
            let detail: Vec<String> = down.iter().map(|(n, why)| format!("node {n}: {why}")).collect();
            return Err(ApiError::unavailable(format!(
                "key generation needs all {} participants up; not reachable: {}. Start them, or name other \
                 participants with --participants",
                participants.len(),
                detail.join("; ")
            )));
        }
        self.write(command).await
    }

    /// `POST /v1/sign`: commits a sign request (or finds the same one already
    /// committed) and waits up to `wait` for its outcome.
    pub async fn sign(&self, command: SignedCommand, wait: Duration) -> Result<RequestInfo, ApiError> {
        let envelope = command.verify().map_err(|e| ApiError::bad_request(e.to_string()))?;
        let Command::SignRequest { request_id, .. } = &envelope.command else {
            return Err(ApiError::bad_request(format!("expected sign_request, got {}", envelope.command.kind())));
        };
        let deadline = tokio::time::Instant::now() + wait;
        // A request is idempotent by id, so a write whose answer was lost (a leader
        // that died after committing it) is simply sent again.
        let response = loop {
            match self.write(command.clone()).await {
                Ok(response) => break response,
                Err(e) if e.status == 503 && tokio::time::Instant::now() < deadline => {
                    tracing::info!(request_id, error = %e, "sign request not acknowledged; sending it again");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e),
            }
        };
        if let synod_proto::Outcome::Rejected { reason } = response.outcome {
            let status = if reason.contains("one request id, one message") { 409 } else { 403 };
            return Err(ApiError::new(status, reason));
        }
        // `write` answers once this node has applied the request (see `write_inner`).
        let info = self.shared.read().state.request_info(request_id);
        if info.as_ref().is_some_and(|i| i.status == "awaiting_approval") {
            return info.ok_or_else(|| ApiError::new(404, "request vanished"));
        }
        self.wait_request(request_id, deadline.saturating_duration_since(tokio::time::Instant::now())).await
    }

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
            let last_seq = state
                .requests
                .keys()
                .filter_map(|id| id.strip_prefix("checkpoint-").and_then(|n| n.parse::<u64>().ok()))
                .max()
                .unwrap_or(0);
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

    /// Commits an audit checkpoint request; returns its request id.
    pub async fn checkpoint(&self) -> Result<String, ApiError> {
        let response = self.write_as_node(Command::AuditCheckpoint { node_id: self.id }).await?;
        let synod_proto::Outcome::Applied { detail } = response.outcome else {
            return Err(ApiError::new(500, "the checkpoint was not applied"));
        };
        Ok(detail.split([':', ' ']).next().unwrap_or_default().to_string())
    }

    /// Audit records `from..` (at most `limit`) from this node's store.
    pub async fn audit_records(&self, from: u64, limit: usize) -> std::io::Result<Vec<crate::state::AuditRecord>> {
        let store = self.store.clone();
        crate::seams::run_blocking(move || crate::raft::state_machine::read_audit(&*store, from, limit))
            .await?
            .map_err(std::io::Error::other)
    }

    /// Waits (until `deadline`) for this node to apply the entry at `index`, so
    /// that what a forwarded write did is visible here too.
    async fn wait_applied(&self, index: u64, deadline: tokio::time::Instant) {
        let mut applied = self.shared.subscribe();
        while self.shared.read().last_applied.is_none_or(|l| l.index < index) && tokio::time::Instant::now() < deadline
        {
            if let Ok(Err(_)) = tokio::time::timeout_at(deadline, applied.changed()).await {
                tokio::time::sleep(Duration::from_millis(10)).await; // The state machine is gone.
            }
        }
    }

    /// Waits up to `wait` for a request to leave `pending` on this node.
    pub async fn wait_request(&self, request_id: &str, wait: Duration) -> Result<RequestInfo, ApiError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut applied = self.shared.subscribe();
        loop {
            let info = self.shared.read().state.request_info(request_id);
            let info = info.ok_or_else(|| ApiError::new(404, format!("no request {request_id} on this node")))?;
            let open = info.status == "pending" || info.status == "awaiting_approval";
            if !open || tokio::time::Instant::now() >= deadline {
                return Ok(info);
            }
            if let Ok(Err(_)) = tokio::time::timeout_at(deadline, applied.changed()).await {
                tokio::time::sleep(Duration::from_millis(10)).await; // The state machine is gone.
            }
        }
    }

    /// The leader's own early check; every node checks again when applying.
    fn precheck(&self, command: &SignedCommand) -> Result<(), ApiError> {
        let envelope = command.verify().map_err(|e| ApiError::bad_request(e.to_string()))?;
        let applied = self.shared.read();
        let state = &applied.state;
        match (&state.cluster_id, &envelope.command) {
            (None, Command::Genesis { admins, .. }) if admins.contains(&command.author) => Ok(()),
            (None, Command::Genesis { .. }) => {
                Err(ApiError::new(403, "genesis must be signed by one of the admins it names"))
            }
            (None, _) => Err(ApiError::new(412, "the cluster is not initialised; run `synod cluster init` first")),
            (Some(_), Command::Genesis { .. }) => Err(ApiError::new(409, "the cluster is already initialised")),
            (Some(id), _) if *id != envelope.cluster_id => {
                Err(ApiError::new(400, format!("command is for cluster {}, this is cluster {id}", envelope.cluster_id)))
            }
            (Some(_), cmd) => match cmd.authority() {
                Authority::Genesis => Ok(()),
                Authority::Admin if !state.admins.contains(&command.author) => {
                    Err(ApiError::new(403, format!("operator {} is not an admin of this cluster", command.author)))
                }
                Authority::Requester if !state.has_role(&command.author, synod_proto::authz::Role::Requester) => {
                    Err(ApiError::new(
                        403,
                        format!("operator {} may not request signatures in this cluster", command.author),
                    ))
                }
                Authority::Node(_) if command.certificate.is_none() => {
                    Err(ApiError::bad_request("a node-authored command must carry the node's certificate"))
                }
                Authority::Anyone => match cmd {
                    // An approval that every node would refuse still goes into the log, so
                    // its refusal is audited, but only at a bounded rate.
                    Command::Approve { request_id, approver, signature } => {
                        match state.check_approve(&command.author, request_id, approver, signature) {
                            Ok(()) => Ok(()),
                            Err(reason) if self.refusals.admit(self.now_ms()) => {
                                tracing::info!(
                                    request_id,
                                    approver,
                                    reason,
                                    "committing an approval that will be refused, for the audit log"
                                );
                                Ok(())
                            }
                            Err(reason) => Err(ApiError::new(
                                429,
                                format!("{reason}; too many refused approvals recently, so this one is not logged"),
                            )),
                        }
                    }
                    _ => Ok(()),
                },
                _ => Ok(()),
            },
        }
    }

    /// `synod cluster init`: initialises Raft with the genesis members (if this
    /// node is uninitialised) and commits the genesis command.
    pub async fn init(&self, command: SignedCommand) -> Result<WriteResponse, ApiError> {
        let envelope = command.verify().map_err(|e| ApiError::bad_request(e.to_string()))?;
        let Command::Genesis { members, ca_certificate, .. } = &envelope.command else {
            return Err(ApiError::bad_request("init takes a genesis command"));
        };
        let ca = hex::decode(ca_certificate).map_err(|_| ApiError::bad_request("the CA certificate is not hex"))?;
        crate::pki::verify_node_certificate(&ca, &self.identity.cert_der, self.now_ms()).map_err(|e| {
            ApiError::bad_request(format!(
                "genesis names a CA that did not issue this node's certificate ({e}); pass the cluster's ca.crt"
            ))
        })?;
        let members = synod_proto::command::member_map(members);
        if let Some(id) = &self.shared.read().state.cluster_id {
            return Err(ApiError::new(409, format!("this node already belongs to cluster {id}")));
        }
        if !members.contains_key(&self.id) {
            return Err(ApiError::bad_request(format!(
                "genesis members {:?} do not include this node ({}); send init to one of them",
                members.keys().collect::<Vec<_>>(),
                self.id
            )));
        }
        let initialized = self.raft.is_initialized().await.map_err(|e| ApiError::unavailable(e.to_string()))?;
        if !initialized {
            self.raft
                .initialize(members.clone())
                .await
                .map_err(|e| ApiError::new(409, format!("could not initialise Raft: {e}")))?;
        }
        let wait = self.raft.wait(Some(Duration::from_secs(15)));
        wait.metrics(|m| m.current_leader.is_some(), "a leader is elected").await.map_err(|_| {
            ApiError::unavailable("no leader was elected within 15 s; are the other genesis members running?")
        })?;
        // The leader may need a moment to commit its first blank entry.
        let mut last_err = None;
        for _ in 0..20 {
            match self.write(command.clone()).await {
                Ok(r) => return Ok(r),
                Err(e) if e.status == 503 => {
                    last_err = Some(e);
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| ApiError::unavailable("genesis was not committed")))
    }

    /// The role name for health and status.
    fn role(state: ServerState) -> &'static str {
        match state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        }
    }

    /// `GET /v1/sys/health` and its HTTP status code.
    pub fn health(&self, standby_ok: bool) -> (u16, Health) {
        let m = self.raft.metrics().borrow().clone();
        let applied = self.shared.read();
        let initialized = applied.state.cluster_id.is_some();
        let health = Health {
            node_id: self.id,
            initialized,
            role: Self::role(m.state).into(),
            leader_id: m.current_leader,
            term: m.current_term,
            members: m.membership_config.membership().voter_ids().collect(),
            last_applied_index: m.last_applied.map(|l| l.index),
            cluster_id: applied.state.cluster_id.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            kek_backend: self.sealed.kek().backend().into(),
        };
        let code = match (initialized, m.state, m.current_leader) {
            (false, _, _) => 501,
            (true, ServerState::Leader, _) => 200,
            (true, _, Some(_)) if standby_ok => 200,
            (true, _, Some(_)) => 429,
            (true, _, None) => 503,
        };
        (code, health)
    }

    /// `GET /v1/sys/status`.
    pub fn status(&self) -> Status {
        let m = self.raft.metrics().borrow().clone();
        let applied = self.shared.read();
        let state = &applied.state;
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, addr)| MemberStatus {
                node_id: *id,
                addr: addr.clone(),
                voter: voters.contains(id),
                authorized: state.members.contains_key(id) || state.cluster_id.is_none(),
                matched_index: m.replication.as_ref().and_then(|r| r.get(id).cloned().flatten()).map(|l| l.index),
            })
            .collect();
        Status {
            node_id: self.id,
            cluster_id: state.cluster_id.clone(),
            role: Self::role(m.state).into(),
            leader_id: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            last_applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            members,
            admins: state.admins.iter().copied().collect(),
            applied_commands: state.applied_commands,
            rejected_commands: state.rejected_commands,
            recent_rejections: state.recent_rejections.iter().cloned().collect(),
            unauthorized_membership_entries: state.unauthorized_membership_entries,
            kek: self.sealed.kek().describe(),
            incarnation: self.incarnation.clone(),
        }
    }

    /// Whether `peer` may speak to this node: a member of the signed registry,
    /// or, before genesis has been applied here, of Raft's bootstrap membership.
    pub fn is_member(&self, peer: NodeId) -> bool {
        let applied = self.shared.read();
        if applied.state.cluster_id.is_some() {
            return applied.state.members.contains_key(&peer);
        }
        let membership = applied.last_membership.membership();
        let bootstrap = membership.nodes().next().is_none();
        // An uninitialised node accepts any node certified by the cluster CA, so
        // that it can be initialised or join; it holds nothing worth protecting yet.
        bootstrap || membership.nodes().any(|(id, _)| *id == peer)
    }

    /// Records the commit index a leader sent to a node that started on an empty disk.
    fn note_leader_commit(&self, commit_index: Option<u64>) {
        let mut catch_up = self.catch_up.lock().expect("catch-up lock");
        if *catch_up == CatchUp::AwaitingLeader {
            *catch_up = CatchUp::Until(commit_index.unwrap_or(0));
        }
    }

    /// A refusal when this node started on an empty disk and has not caught up
    /// (see [`CatchUp`]); `None` when Raft may decide the vote.
    fn refuse_vote(
        &self,
        request: &openraft::raft::VoteRequest<NodeId>,
    ) -> Option<openraft::raft::VoteResponse<NodeId>> {
        let mut catch_up = self.catch_up.lock().expect("catch-up lock");
        let metrics = self.raft.metrics().borrow().clone();
        if let CatchUp::Until(target) = *catch_up {
            if metrics.last_applied.is_some_and(|l| l.index >= target) {
                tracing::info!(target, "caught up after starting on an empty disk; voting again");
                *catch_up = CatchUp::Done;
            }
        }
        let bootstrap = request.last_log_id.is_none_or(|l| l.index == 0);
        if matches!(*catch_up, CatchUp::NotNeeded | CatchUp::Done) || bootstrap {
            return None;
        }
        tracing::info!(candidate = %request.vote, state = ?*catch_up, "refusing a vote: started on an empty disk and not caught up yet");
        Some(openraft::raft::VoteResponse { vote: metrics.vote, vote_granted: false, last_log_id: None })
    }

    /// Stops Raft.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

fn not_leader(leader: NodeId, addr: &NodeAddr) -> ApiError {
    let mut err = ApiError::new(421, format!("node {leader} is the leader; send the write there"));
    err.leader_hint = Some(LeaderHint { node_id: leader, api_addr: addr.api_addr.clone() });
    err
}

/// Serves peers' calls on behalf of a node.
pub struct NodeHandler(pub Arc<Node>);

impl PeerHandler for NodeHandler {
    fn is_authorized(&self, peer: NodeId) -> bool {
        self.0.is_member(peer)
    }

    fn handle(&self, from: NodeId, request: PeerRequest) -> BoxFuture<'static, PeerResponse> {
        let node = self.0.clone();
        async move {
            match request {
                PeerRequest::AppendEntries(rpc) => {
                    node.note_leader_commit(rpc.leader_commit.map(|l| l.index));
                    PeerResponse::AppendEntries(node.raft.append_entries(rpc).await)
                }
                PeerRequest::Vote(rpc) => match node.refuse_vote(&rpc) {
                    Some(refusal) => PeerResponse::Vote(Ok(refusal)),
                    None => PeerResponse::Vote(node.raft.vote(rpc).await),
                },
                PeerRequest::InstallSnapshot(rpc) => {
                    node.note_leader_commit(rpc.meta.last_log_id.map(|l| l.index));
                    PeerResponse::InstallSnapshot(node.raft.install_snapshot(rpc).await)
                }
                PeerRequest::Ping => {
                    PeerResponse::Pong { node_id: node.id, cluster_id: node.shared.read().state.cluster_id.clone() }
                }
                PeerRequest::Forward(command) => {
                    tracing::debug!(from, "write forwarded by a follower");
                    PeerResponse::Forward(node.write_inner(command, false).await)
                }
                PeerRequest::DkgRound2 { key_id, package } => {
                    PeerResponse::DkgRound2(node.dkg.receive_round2(&node, from, &key_id, &package))
                }
                PeerRequest::SignPreprocess { key_id, count } => {
                    let answer = node.signer.preprocess(&key_id, count, from).await;
                    PeerResponse::SignPreprocess(answer.map(|batch| faults::wrong_commitments(node.id, batch)))
                }
                PeerRequest::SignShare { asks } if asks.len() > synod_proto::rpc::SHARE_ASKS_MAX => {
                    PeerResponse::Refused(format!(
                        "{} share asks in one call; at most {} are accepted",
                        asks.len(),
                        synod_proto::rpc::SHARE_ASKS_MAX
                    ))
                }
                PeerRequest::SignShare { asks } => {
                    let answers = node.signer.share_batch(&asks, from, false).await;
                    if answers.iter().any(Result::is_ok) {
                        faults::crash_point(node.id, faults::SIGNER_AFTER_SHARE).await;
                    }
                    PeerResponse::SignShare(answers)
                }
            }
        }
        .boxed()
    }
}

/// Heartbeat intervals without an answer after which a peer is taken to be down.
pub const SILENT_HEARTBEATS: u64 = 5;

/// How many terms in a row a node may stand as candidate before it pauses.
const CANDIDATE_TERMS_MAX: u64 = 3;

/// Breaks election ties that would otherwise repeat forever. openraft 0.9 draws
/// a node's election timeout once per boot and checks it on a coarse tick, so
/// two candidates with the same timeout and phase split the vote term after
/// term (the simulator found it once in 1,000 chaos seeds, with a node that
/// started on an empty disk withholding its vote). A node that has stood as
/// candidate for several terms without a leader pauses its own elections for
/// a random fraction of the election timeout (from the node's RNG seam), which
/// shifts its phase.
async fn break_election_ties(node: std::sync::Weak<Node>, tuning: RaftTuning) {
    let mut streak_start: Option<u64> = None;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(tuning.heartbeat_ms)).await;
        let Some(node) = node.upgrade() else { return };
        let m = node.raft.metrics().borrow().clone();
        if m.state != ServerState::Candidate || m.current_leader.is_some() {
            streak_start = None;
            continue;
        }
        let start = *streak_start.get_or_insert(m.current_term);
        if m.current_term.saturating_sub(start) < CANDIDATE_TERMS_MAX {
            continue;
        }
        streak_start = None;
        let pause_ms = {
            let mut rng = node.seams.rng.lock().expect("rng lock");
            rand_core::RngCore::next_u64(&mut *rng) % tuning.election_timeout_max_ms
        };
        tracing::info!(
            term = m.current_term,
            pause_ms,
            "split votes for several terms; pausing elections to break the tie"
        );
        node.raft.runtime_config().elect(false);
        tokio::time::sleep(std::time::Duration::from_millis(pause_ms)).await;
        node.raft.runtime_config().elect(true);
    }
}

/// Drives keys and signing: this node's DKG steps, and on the leader a
/// coordinator for every pending request, plus clean-up of finished requests'
/// nonces. DKG steps wait for writes, so they run in their own loop.
async fn keys_and_signing(weak: std::sync::Weak<Node>) {
    let dkg_weak = weak.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(KEYS_TICK).await;
            let Some(node) = dkg_weak.upgrade() else { return };
            node.dkg.tick(&node).await;
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
        if node.raft.metrics().borrow().state == ServerState::Leader {
            node.coordination.start_pending(&node);
            node.maybe_checkpoint();
        }
    }
}

/// On the leader, brings Raft's membership in line with the signed registry:
/// registry members join as learners and are promoted once caught up; voters
/// the registry no longer names are removed. Only the registry grants
/// membership, so a leader cannot add a node without an admin's signature.
async fn reconcile_membership(node: std::sync::Weak<Node>) {
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

/// The [`faults::ACK_BEFORE_COMMIT`] write path: on a leader, proposes `entry` and
/// answers once the leader's own log holds it, without waiting for a quorum.
/// Returns `None` on a follower, which then takes the normal path.
#[cfg(feature = "fault-injection")]
async fn ack_before_commit(
    raft: &crate::raft::Raft,
    entry: synod_proto::LogEntry,
) -> Option<Result<synod_proto::api::WriteResponse, synod_proto::api::ApiError>> {
    use synod_proto::api::{ApiError, WriteResponse};
    let metrics = raft.metrics().borrow().clone();
    if metrics.state != openraft::ServerState::Leader {
        return None;
    }
    let index = metrics.last_log_index.map_or(1, |i| i + 1);
    // The planted bug: the commit is never awaited (the receiver is dropped).
    if let Err(e) = raft.client_write_ff(entry).await {
        return Some(Err(ApiError::unavailable(format!("this node's Raft has stopped: {e}"))));
    }
    let appended = raft
        .wait(Some(std::time::Duration::from_secs(1)))
        .metrics(|m| m.last_log_index >= Some(index), "the leader appended the entry")
        .await;
    Some(match appended {
        Ok(_) => Ok(WriteResponse {
            index,
            outcome: synod_proto::Outcome::Applied {
                detail: format!("acknowledged at append ({})", faults::ACK_BEFORE_COMMIT),
            },
        }),
        Err(e) => Err(ApiError::unavailable(format!("entry not appended: {e}"))),
    })
}

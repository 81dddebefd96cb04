//! The write path: the early check a node makes before proposing (every node
//! checks again when it applies), proposing on the leader, forwarding from a
//! follower, and the client operations built on it (sign, create key, init).
//!
//! Two answers come at once rather than after a timeout: a command already
//! applied is answered with its recorded outcome (a client that lost the first
//! answer sends the same bytes again), and a node that has no leader and
//! cannot reach a majority of the voters says so, naming those it cannot
//! reach ([`Node::peers_answering`], the probe readiness uses too).

use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use synod_proto::api::{RequestInfo, RequestStatus, WriteResponse, NO_MAJORITY_PREFIX};
use synod_proto::command::Authority;
use synod_proto::raft::Refusal;
use synod_proto::rpc::{PeerRequest, PeerResponse};
use synod_proto::{Command, LeaderHint, LogEntry, NodeAddr, NodeError, NodeId, Outcome, SignedCommand};

use super::{Node, NODE_COMMAND_TTL_MS};
use crate::faults;

/// How many refused commands a node lets into the log per minute (they are
/// audited); more are answered with 429 and not logged, so a flood of forged
/// input cannot grow the log without bound.
pub const REFUSALS_PER_MINUTE_MAX: u32 = 60;

/// A fixed-window counter of commands admitted that will be refused.
#[derive(Default)]
pub(super) struct RefusalBudget(std::sync::Mutex<(u64, u32)>);

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

impl Node {
    /// Commits a command this node authors (DKG messages, signing outcomes),
    /// signed with its certificate key.
    pub async fn write_as_node(&self, command: Command) -> Result<WriteResponse, NodeError> {
        let cluster_id = self.shared.read().state.cluster_id.clone();
        let cluster_id = cluster_id.ok_or_else(|| NodeError::not_initialised("the cluster is not initialised"))?;
        let now = self.now_ms();
        let envelope = {
            let mut rng = self.seams.rng.lock().expect("rng lock");
            synod_proto::Envelope::new(cluster_id, command, now, NODE_COMMAND_TTL_MS, &mut *rng)
        };
        let response = self.write(self.identity.sign(&envelope)).await?;
        refused_as_error(&response.outcome)?;
        Ok(response)
    }

    /// Commits a signed command through Raft from any node: the leader proposes
    /// it, a follower forwards it to the leader.
    pub async fn write(&self, command: SignedCommand) -> Result<WriteResponse, NodeError> {
        self.write_inner(command, true).await
    }

    pub(super) async fn write_inner(
        &self,
        command: SignedCommand,
        may_forward: bool,
    ) -> Result<WriteResponse, NodeError> {
        if let Some(known) = self.known_write(&command) {
            return Ok(known);
        }
        if !faults::enabled(faults::SKIP_AUTHOR_CHECK) {
            self.precheck(&command)?;
        }
        if self.leads() && self.majority_silent() {
            // A leader cut off from its voters would hold the proposal until it times out.
            if let Some(lost) = self.majority_out_of_reach().await {
                return Err(lost);
            }
        }
        let entry = LogEntry { time_ms: self.stamp_time_ms(), command: command.clone() };
        #[cfg(synod_faults)]
        if faults::enabled(faults::ACK_BEFORE_COMMIT) {
            if let Some(planted) = ack_before_commit(&self.raft, entry.clone()).await {
                return planted;
            }
        }
        let proposed = tokio::time::Instant::now();
        let written = tokio::time::timeout(COMMIT_TIMEOUT, self.raft.client_write(entry)).await;
        let outcome = match &written {
            Ok(Ok(_)) => "committed",
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => "not_leader",
            Ok(Err(_)) => "failed",
            Err(_) => "timed_out",
        };
        self.metrics.duration("synod_raft_commit_duration_seconds", outcome, proposed.elapsed());
        let Ok(written) = written else {
            return Err(NodeError::MayStillCommit {
                message: format!(
                    "the write was proposed but not committed within {} s (leadership may have changed); \
                     it may still commit: send the same signed command again, which is applied at most once",
                    COMMIT_TIMEOUT.as_secs()
                ),
            });
        };
        match written {
            Ok(resp) => {
                faults::crash_point(self.id, faults::WRITE_AFTER_COMMIT).await;
                pause_after_commit(&command).await;
                Ok(WriteResponse { index: resp.log_id.index, outcome: resp.data })
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(fwd))) => {
                let (Some(leader), Some(addr)) = (fwd.leader_id, fwd.leader_node) else {
                    if let Some(lost) = self.majority_out_of_reach().await {
                        return Err(lost);
                    }
                    return Err(NodeError::unavailable("no leader is elected right now; retry in a moment"));
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
                Err(NodeError::conflict(e.to_string()))
            }
            Err(RaftError::Fatal(e)) => Err(NodeError::unavailable(format!("this node's Raft has stopped: {e}"))),
        }
    }

    async fn forward(
        &self,
        leader: NodeId,
        addr: NodeAddr,
        command: SignedCommand,
    ) -> Result<WriteResponse, NodeError> {
        let response = self
            .transport
            .call(leader, addr.raft_addr.clone(), PeerRequest::Forward(command), FORWARD_TIMEOUT)
            .await
            .map_err(|e| NodeError::Unavailable {
                message: format!("could not forward the write to leader {leader}: {e}"),
                leader: Some(LeaderHint { node_id: leader, api_addr: addr.api_addr.clone() }),
            })?;
        match response {
            PeerResponse::Forward(result) => result,
            other => Err(NodeError::unavailable(format!("leader {leader} answered the forward with {other:?}"))),
        }
    }

    /// `POST /v1/keys`: commits a create-key, import-key, rotate-key or refresh-key
    /// command. A DKG or a refresh needs every participant up, so each one is
    /// pinged first and the error names any that does not answer.
    pub async fn create_key(&self, command: SignedCommand) -> Result<WriteResponse, NodeError> {
        // Sent again after a lost answer: the key exists; its participants need no ping.
        if let Some(known) = self.known_write(&command) {
            return Ok(known);
        }
        let envelope = command.verify().map_err(|e| NodeError::invalid(e.to_string()))?;
        let participants = match &envelope.command {
            Command::CreateKey { participants, .. } | Command::RotateKey { participants, .. } => participants.clone(),
            // Those a refresh removes take no part: a member leaving may be down.
            Command::RefreshKey { key, remove } => {
                let applied = self.shared.read();
                let found = applied.state.key_by_name(key);
                let participants = found
                    .map(|k| k.participants.clone())
                    .ok_or(NodeError::not_found(format!("no key named {key:?}")))?;
                participants.into_iter().filter(|p| !remove.contains(p)).collect()
            }
            Command::ImportKey { .. } => Vec::new(),
            other => {
                return Err(NodeError::invalid(format!(
                    "expected create_key, import_key, rotate_key or refresh_key, got {}",
                    other.kind()
                )))
            }
        };
        let refresh = matches!(envelope.command, Command::RefreshKey { .. });
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
            return Err(NodeError::unavailable(format!(
                "{} needs all {} participants up; not reachable: {}. Start them{}",
                if refresh { "a refresh" } else { "key generation" },
                participants.len(),
                detail.join("; "),
                if refresh { "" } else { ", or name other participants with --participants" }
            )));
        }
        self.write(command).await
    }

    /// `POST /v1/sign`: commits a sign request (or finds the same one already
    /// committed) and waits up to `wait` for its outcome.
    pub async fn sign(&self, command: SignedCommand, wait: Duration) -> Result<RequestInfo, NodeError> {
        let envelope = command.verify().map_err(|e| NodeError::invalid(e.to_string()))?;
        let Command::SignRequest { request_id, .. } = &envelope.command else {
            return Err(NodeError::invalid(format!("expected sign_request, got {}", envelope.command.kind())));
        };
        let deadline = tokio::time::Instant::now() + wait;
        // A request is idempotent by id, so a write whose answer was lost (a leader
        // that died after committing it) is simply sent again.
        let response = loop {
            match self.write(command.clone()).await {
                Ok(response) => break response,
                Err(e) if e.is_retryable() && !is_no_majority(&e) && tokio::time::Instant::now() < deadline => {
                    tracing::info!(request_id, error = %e, "sign request not acknowledged; sending it again");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e),
            }
        };
        refused_as_error(&response.outcome)?;
        // `write` answers once this node has applied the request (see `write_inner`).
        let info = self.shared.read().state.request_info(request_id);
        if info.as_ref().is_some_and(|i| i.status == RequestStatus::AwaitingApproval) {
            return info.ok_or_else(|| NodeError::not_found("request vanished"));
        }
        self.wait_request(request_id, deadline.saturating_duration_since(tokio::time::Instant::now())).await
    }

    /// Commits an audit checkpoint request; returns its request id.
    pub async fn checkpoint(&self) -> Result<String, NodeError> {
        let response = self.write_as_node(Command::AuditCheckpoint { node_id: self.id }).await?;
        let synod_proto::Outcome::Applied { detail } = response.outcome else {
            return Err(NodeError::internal("the checkpoint was not applied"));
        };
        Ok(detail.split([':', ' ']).next().unwrap_or_default().to_string())
    }

    /// Waits (until `deadline`) for this node to apply the entry at `index`, so
    /// that what a forwarded write did is visible here too.
    pub(super) async fn wait_applied(&self, index: u64, deadline: tokio::time::Instant) {
        let mut applied = self.shared.subscribe();
        while self.shared.read().last_applied.is_none_or(|l| l.index < index) && tokio::time::Instant::now() < deadline
        {
            if let Ok(Err(_)) = tokio::time::timeout_at(deadline, applied.changed()).await {
                tokio::time::sleep(Duration::from_millis(10)).await; // The state machine is gone.
            }
        }
    }

    /// Waits up to `wait` for a request to leave `pending` on this node.
    pub async fn wait_request(&self, request_id: &str, wait: Duration) -> Result<RequestInfo, NodeError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut applied = self.shared.subscribe();
        loop {
            let info = self.shared.read().state.request_info(request_id);
            let info = info.ok_or_else(|| NodeError::not_found(format!("no request {request_id} on this node")))?;
            if !info.status.is_open() || tokio::time::Instant::now() >= deadline {
                return Ok(info);
            }
            if let Ok(Err(_)) = tokio::time::timeout_at(deadline, applied.changed()).await {
                tokio::time::sleep(Duration::from_millis(10)).await; // The state machine is gone.
            }
        }
    }

    /// The leader's own early check; every node checks again when applying.
    fn precheck(&self, command: &SignedCommand) -> Result<(), NodeError> {
        // No expiry check by this node's clock: a leader whose clock runs ahead would
        // refuse every command and stall the cluster while it keeps office. The log's
        // time decides expiry, at apply.
        let envelope = command.verify_for_admission().map_err(|e| NodeError::invalid(e.to_string()))?;
        // The term the entry would be proposed in (a follower forwards to the leader of
        // this term, which checks again); it decides who may report signing outcomes.
        let (term, leading) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            (m.current_term, m.state == openraft::ServerState::Leader && m.current_leader == Some(self.id))
        };
        if let Command::Coordinate { node_id, term: claimed } = &envelope.command {
            // Only the leader takes up signing, for itself, in its own term: a follower's
            // take-up (or one for a term still to come) must not get in through it.
            if *node_id != self.id || !leading || *claimed != term {
                return Err(NodeError::refused(format!(
                    "node {node_id} cannot take up signing for term {claimed} through node {}: a take-up is \
                     proposed only by the leader, for itself, in its current term",
                    self.id
                )));
            }
        }
        let applied = self.shared.read();
        let state = &applied.state;
        match (&state.cluster_id, &envelope.command) {
            (None, Command::Genesis { .. }) => Err(NodeError::invalid(
                "a genesis without a rules version would start a cluster under the rules before versioning; \
                 initialise it with this version's `synod cluster init`",
            )),
            (None, Command::VersionedGenesis { admins, .. }) if admins.contains(&command.author) => {
                self.genesis_author_pinned(&command.author).map_err(NodeError::refused)
            }
            (None, Command::VersionedGenesis { .. }) => {
                Err(NodeError::refused("genesis must be signed by one of the admins it names"))
            }
            (None, _) => {
                Err(NodeError::not_initialised("the cluster is not initialised; run `synod cluster init` first"))
            }
            (Some(_), cmd) if cmd.genesis().is_some() => Err(NodeError::conflict("the cluster is already initialised")),
            (Some(id), _) if *id != envelope.cluster_id => {
                Err(NodeError::invalid(format!("command is for cluster {}, this is cluster {id}", envelope.cluster_id)))
            }
            (Some(_), cmd) => match cmd.authority() {
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
                            Err(reason) => Err(NodeError::rate_limited(format!(
                                "{reason}; too many refused approvals recently, so this one is not logged"
                            ))),
                        }
                    }
                    _ => Ok(()),
                },
                // The same rule every node applies: a node-authored command needs its
                // node's certificate and key, so forged ones never reach the log.
                _ => state.authorise(cmd, command, term).map_err(NodeError::refused),
            },
        }
    }

    /// `synod cluster init`: initialises Raft with the genesis members (if this
    /// node is uninitialised) and commits the genesis command.
    pub async fn init(&self, command: SignedCommand) -> Result<WriteResponse, NodeError> {
        // Sent again after a lost answer: the cluster it made answers with its genesis.
        if let Some(known) = self.known_write(&command) {
            return Ok(known);
        }
        let envelope = command.verify().map_err(|e| NodeError::invalid(e.to_string()))?;
        let Some(synod_proto::command::GenesisParts { members, ca_certificate, rules, .. }) =
            envelope.command.genesis()
        else {
            return Err(NodeError::invalid("init takes a genesis command"));
        };
        if rules == 0 {
            // Refused before Raft is initialised, as the write path would refuse it.
            return Err(NodeError::invalid(
                "a genesis without a rules version would start a cluster under the rules before versioning; \
                 initialise it with this version's `synod cluster init`",
            ));
        }
        // Before Raft is initialised with these members: a refused genesis leaves nothing behind.
        self.genesis_author_pinned(&command.author).map_err(NodeError::refused)?;
        let ca = hex::decode(ca_certificate).map_err(|_| NodeError::invalid("the CA certificate is not hex"))?;
        crate::pki::verify_node_certificate(&ca, &self.identity.cert_der, self.now_ms()).map_err(|e| {
            NodeError::invalid(format!(
                "genesis names a CA that did not issue this node's certificate ({e}); pass the cluster's ca.crt"
            ))
        })?;
        let members = synod_proto::command::member_map(members);
        if let Some(id) = &self.shared.read().state.cluster_id {
            return Err(NodeError::conflict(format!("this node already belongs to cluster {id}")));
        }
        if !members.contains_key(&self.id) {
            return Err(NodeError::invalid(format!(
                "genesis members {:?} do not include this node ({}); send init to one of them",
                members.keys().collect::<Vec<_>>(),
                self.id
            )));
        }
        let initialized = self.raft.is_initialized().await.map_err(|e| NodeError::unavailable(e.to_string()))?;
        if !initialized {
            self.raft
                .initialize(members.clone())
                .await
                .map_err(|e| NodeError::conflict(format!("could not initialise Raft: {e}")))?;
        }
        let wait = self.raft.wait(Some(Duration::from_secs(15)));
        wait.metrics(|m| m.current_leader.is_some(), "a leader is elected").await.map_err(|_| {
            NodeError::unavailable("no leader was elected within 15 s; are the other genesis members running?")
        })?;
        // The leader may need a moment to commit its first blank entry.
        let mut last_err = None;
        for _ in 0..20 {
            match self.write(command.clone()).await {
                Ok(r) => return Ok(r),
                Err(e) if e.is_retryable() => {
                    last_err = Some(e);
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| NodeError::unavailable("genesis was not committed")))
    }

    /// Whether this node takes a genesis signed by `author`: one of the
    /// `genesis_admins` its operator pinned in node.toml. The refusal says why not.
    fn genesis_author_pinned(&self, author: &synod_proto::OperatorKey) -> Result<(), String> {
        if self.genesis_admins.contains(author) || faults::enabled(faults::SKIP_GENESIS_PIN) {
            return Ok(());
        }
        Err(format!(
            "genesis is signed by operator {author}, whom this node's genesis_admins (node.toml) do not name; \
             only the admins its operator pinned may initialise the cluster it joins"
        ))
    }

    /// Whether an uninitialised node may take these entries: any genesis among
    /// them must be signed by an admin its operator pinned. A refusal names it.
    pub(super) fn refuse_foreign_genesis(
        &self,
        entries: &[openraft::Entry<synod_proto::TypeConfig>],
    ) -> Option<String> {
        if self.shared.read().state.cluster_id.is_some() {
            return None;
        }
        entries.iter().find_map(|entry| {
            let openraft::EntryPayload::Normal(data) = &entry.payload else { return None };
            let envelope: synod_proto::Envelope = serde_json::from_str(&data.command.envelope).ok()?;
            envelope.command.genesis()?;
            self.genesis_author_pinned(&data.command.author).err()
        })
    }
}

impl Node {
    /// The recorded answer to `command` if it was already applied (rules 8 on):
    /// a client that lost the first answer sends the same signed command again
    /// and gets the first outcome, with nothing proposed. Only the command's
    /// author gets it, proven by the signature over the very envelope.
    fn known_write(&self, command: &SignedCommand) -> Option<WriteResponse> {
        let envelope: synod_proto::Envelope = serde_json::from_str(&command.envelope).ok()?;
        let known = {
            let applied = self.shared.read();
            let record = applied.state.outcomes.get(&envelope.command_id)?;
            let ours = record.author == command.author && record.outcome.is_applied();
            ours.then(|| WriteResponse { index: record.index, outcome: record.outcome.clone() })?
        };
        command.verify().ok()?;
        tracing::info!(command_id = envelope.command_id, index = known.index, "answering a command sent again");
        Some(known)
    }

    /// Whether this node is the Raft leader now.
    fn leads(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.state == openraft::ServerState::Leader && m.current_leader == Some(self.id)
    }

    /// The voters of the current membership, this node included if it is one.
    fn voters(&self) -> Vec<NodeId> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        voters
    }

    /// Whether this node's own calls say that too few voters answer for a
    /// majority (cheap: no call is made).
    fn majority_silent(&self) -> bool {
        let voters = self.voters();
        let heard = voters.iter().filter(|p| **p != self.id && !self.likely_down(**p)).count();
        let me = usize::from(voters.contains(&self.id));
        me + heard < voters.len() / 2 + 1
    }

    /// The error to answer a write with when this node cannot reach a majority
    /// of the voters (itself included): the peers are asked afresh
    /// ([`Node::peers_answering`]), so the answer does not rest on calls this node
    /// happened to make. `None` when a majority answers (no leader yet, or one is
    /// being elected).
    pub(super) async fn majority_out_of_reach(&self) -> Option<NodeError> {
        let voters = self.voters();
        if voters.is_empty() {
            return None;
        }
        let answering = self.peers_answering().await;
        let answers: Vec<(NodeId, bool)> = voters
            .iter()
            .filter(|p| **p != self.id)
            .map(|p| (*p, answering.get(p).copied().unwrap_or(false)))
            .collect();
        let needed = voters.len() / 2 + 1;
        let reachable = usize::from(voters.contains(&self.id)) + answers.iter().filter(|(_, up)| *up).count();
        if reachable >= needed {
            return None;
        }
        let silent: Vec<NodeId> = answers.iter().filter(|(_, up)| !*up).map(|(p, _)| *p).collect();
        let heard: Vec<String> = silent
            .iter()
            .map(|p| match self.peer_health.silent_for(*p) {
                d if d.is_zero() => format!("node {p} did not answer a ping"),
                d => format!("node {p} last heard {} s ago", d.as_secs()),
            })
            .collect();
        Some(NodeError::unavailable(format!(
            "{NO_MAJORITY_PREFIX}: {} unreachable ({}); at least {needed} of {} voters must be up. Start the \
             stopped nodes or mend the network between them; nothing was proposed",
            node_list(&silent),
            heard.join(", "),
            voters.len()
        )))
    }
}

/// "node 2", "nodes 2 and 3", "nodes 2, 3 and 4".
fn node_list(ids: &[NodeId]) -> String {
    let names: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
    match names.as_slice() {
        [one] => format!("node {one}"),
        [init @ .., last] => format!("nodes {} and {last}", init.join(", ")),
        [] => "no node".into(),
    }
}

/// Whether `error` says the cluster has lost its majority (waiting will not help).
pub fn is_no_majority(error: &NodeError) -> bool {
    matches!(error, NodeError::Unavailable { message, .. } if message.starts_with(NO_MAJORITY_PREFIX))
}

/// The [`faults::PAUSE_AFTER_COMMIT`] node: once per process, after an
/// operator's `put` commits here, waits 5 s before answering, so that a test
/// can kill the node while its client waits for an answer that then never comes.
async fn pause_after_commit(command: &SignedCommand) {
    static PAUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !faults::enabled(faults::PAUSE_AFTER_COMMIT) || command.certificate.is_some() {
        return;
    }
    let put = serde_json::from_str::<synod_proto::Envelope>(&command.envelope)
        .is_ok_and(|e| matches!(e.command, Command::Put { .. }));
    if put && !PAUSED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        tracing::warn!("fault pause-after-commit: the put committed; waiting 5 s before answering");
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

fn not_leader(leader: NodeId, addr: &NodeAddr) -> NodeError {
    NodeError::NotLeader { leader: LeaderHint { node_id: leader, api_addr: addr.api_addr.clone() } }
}

/// A committed command the state machine refused, as the error its author gets.
fn refused_as_error(outcome: &Outcome) -> Result<(), NodeError> {
    match outcome {
        Outcome::Rejected { reason, refusal: Refusal::Conflict } => Err(NodeError::conflict(reason.clone())),
        Outcome::Rejected { reason, .. } => Err(NodeError::refused(reason.clone())),
        _ => Ok(()),
    }
}

/// The [`faults::ACK_BEFORE_COMMIT`] write path: on a leader, proposes `entry` and
/// answers once the leader's own log holds it, without waiting for a quorum.
/// Returns `None` on a follower, which then takes the normal path.
#[cfg(synod_faults)]
async fn ack_before_commit(
    raft: &crate::raft::Raft,
    entry: synod_proto::LogEntry,
) -> Option<Result<WriteResponse, NodeError>> {
    let metrics = raft.metrics().borrow().clone();
    if metrics.state != openraft::ServerState::Leader {
        return None;
    }
    let index = metrics.last_log_index.map_or(1, |i| i + 1);
    // The planted bug: the commit is never awaited (the receiver is dropped).
    if let Err(e) = raft.client_write_ff(entry).await {
        return Some(Err(NodeError::unavailable(format!("this node's Raft has stopped: {e}"))));
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
        Err(e) => Err(NodeError::unavailable(format!("entry not appended: {e}"))),
    })
}

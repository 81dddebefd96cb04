//! Every client call, served in one place: [`Node::serve_client`] takes a
//! [`ClientRequest`] and answers a [`ClientResponse`] or a typed
//! [`NodeError`]. The HTTP API (`crate::api`) and the simulator's clients
//! only translate to and from these; neither reads the state itself. Every
//! call names its [`Caller`], and what it may read is judged here, by the
//! rules of `crate::caller`, for every surface alike.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use synod_proto::api::{
    ClientRequest, CommandOutcome, CommandStatus, Health, KeyInfo, KeyList, KvList, KvRecord, RequestInfo, RequestList,
    Status, WriteResponse,
};
use synod_proto::{NodeError, NodeId};

use super::Node;
use crate::caller::{Access, Caller};
use crate::state::{AuditHead, AuditRecord, KnownCommand, Operator, Proposal};

mod request_list;

/// The most audit records one call returns.
pub const AUDIT_PAGE_MAX: usize = 1000;
/// The most audit records one call scans for a caller who sees only some.
pub const AUDIT_SCAN_MAX: usize = 100 * AUDIT_PAGE_MAX;
/// How long a call may wait for a request's outcome, at most.
pub const WAIT_MS_MAX: u64 = 120_000;
/// How long a read waits for this node to apply the index its client has
/// already seen (`min_index`) before it answers 503 saying how far behind it is.
pub const MIN_INDEX_WAIT_MS_MAX: u64 = 5_000;

/// A node's answer to a [`ClientRequest`]. These carry the node's own state
/// types (operators, audit records), so they are defined here rather than in
/// proto; the HTTP API sends each payload as JSON, and the simulator carries
/// the whole value over its simulated network.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientResponse {
    Health(Health),
    Status(Box<Status>),
    /// A committed write, applied or refused (the outcome says which).
    Written(WriteResponse),
    /// An imported share was sealed on this node.
    ShareSealed {
        node_id: NodeId,
    },
    Request(Box<RequestInfo>),
    /// A page of the requests the caller may read (`GET /v1/requests`).
    Requests(RequestList),
    Keys(KeyList),
    Key(Box<KeyInfo>),
    KvList(KvList),
    Kv(KvRecord),
    Operators {
        operators: Vec<Operator>,
        admin_approvals_required: u32,
        /// The relying party passkeys are judged by, when set (rules 11).
        webauthn: Option<synod_proto::webauthn::WebAuthnConfig>,
        /// Passkey registrations waiting for the admins.
        pending_passkeys: Vec<crate::state::PendingPasskey>,
    },
    Proposals {
        proposals: Vec<Proposal>,
    },
    Audit {
        head: AuditHead,
        records: Vec<AuditRecord>,
    },
    AuditHead(AuditHead),
    /// An audit checkpoint request was committed.
    Checkpoint {
        request_id: String,
    },
    /// Every checkpoint: the sequence number and hash it covers, the exact
    /// message the audit key signs, and the signature once made.
    Checkpoints(CheckpointList),
    /// What became of a command (`GET /v1/commands/{id}`); known or not.
    Command(Box<CommandOutcome>),
}

/// `GET /v1/audit/checkpoints`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckpointList {
    pub cluster_id: String,
    /// The audit key's public key (hex), once it exists.
    pub public_key: Option<String>,
    pub checkpoints: Vec<CheckpointInfo>,
}

/// One audit checkpoint request.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckpointInfo {
    pub seq: u64,
    pub request_id: String,
    pub status: synod_proto::api::RequestStatus,
    pub signature: Option<String>,
    pub message_sha256: String,
}

/// Whether `request` reads the state (and so waits for the caller's `min_index`).
fn is_read(request: &ClientRequest) -> bool {
    !matches!(
        request,
        ClientRequest::Health
            | ClientRequest::Init { .. }
            | ClientRequest::Write { .. }
            | ClientRequest::CreateKey { .. }
            | ClientRequest::ImportShare { .. }
            | ClientRequest::Sign { .. }
            | ClientRequest::AuditCheckpoint
    )
}

fn wait(wait_ms: u64) -> Duration {
    Duration::from_millis(wait_ms.min(WAIT_MS_MAX))
}

impl Node {
    /// The caller of an HTTP call, judged against this node's applied state
    /// and clocks: see [`Caller::identify`]. A read signature is fresh by this
    /// node's own clock or by the log's clock (the newest entry time applied
    /// here plus the time elapsed since, on the monotonic clock), so a node
    /// whose wall clock is wrong still serves signed reads, status included,
    /// and shows what is wrong.
    pub fn identify(
        &self,
        certificate: Option<crate::pki::PeerIdentity>,
        read_signature: Option<&str>,
        method: &str,
        path_and_query: &str,
    ) -> Result<Caller, NodeError> {
        let applied = self.shared.read();
        let clocks = [self.now_ms(), self.log_clock_ms(applied.state.time_ms)];
        Caller::identify(&applied.state, certificate, read_signature, method, path_and_query, &clocks)
    }

    /// The log's clock now: `log_time_ms` (the applied state's time) plus the
    /// time elapsed since this node first saw it. Behind true time by how long
    /// the entry took to reach this node, and after a restart by how old the
    /// newest replayed entry was, until the next entry.
    fn log_clock_ms(&self, log_time_ms: u64) -> u64 {
        let now = tokio::time::Instant::now();
        let mut seen = self.log_clock.lock().expect("log clock lock");
        if seen.0 != log_time_ms {
            *seen = (log_time_ms, now);
        }
        log_time_ms.saturating_add(now.saturating_duration_since(seen.1).as_millis() as u64)
    }

    /// Serves one client call for `caller`, which decides what it may read
    /// ([`crate::caller`]): refused calls name who may make them, and lists
    /// hold only what the caller may see.
    pub async fn serve_client(&self, caller: &Caller, request: ClientRequest) -> Result<ClientResponse, NodeError> {
        use ClientResponse as R;
        if !matches!(request, ClientRequest::Health) {
            caller.require_certificate()?;
        }
        if let Some(index) = caller.min_index.filter(|_| is_read(&request)) {
            self.caught_up_to(index).await?;
        }
        Ok(match request {
            ClientRequest::Health => R::Health(self.health()),
            ClientRequest::Status => {
                caller.require_operator_of(&self.shared.read().state, "the node's status")?;
                R::Status(Box::new(self.status()))
            }
            ClientRequest::Init { command } => R::Written(self.init(command).await?),
            ClientRequest::Write { command } => R::Written(self.write(command).await?),
            ClientRequest::CreateKey { command } => R::Written(self.create_key(command).await?),
            ClientRequest::ImportShare { share } => {
                crate::dkg::import_share(self, &share.key_id, &share.share).await?;
                R::ShareSealed { node_id: self.id }
            }
            ClientRequest::Sign { command, wait_ms } => {
                let arrived = tokio::time::Instant::now();
                let answer = self.sign(command, wait(wait_ms)).await;
                let outcome = match &answer {
                    Ok(info) => match info.status {
                        synod_proto::api::RequestStatus::Signed => "signed",
                        synod_proto::api::RequestStatus::Failed => "failed",
                        synod_proto::api::RequestStatus::AwaitingApproval => "awaiting_approval",
                        synod_proto::api::RequestStatus::Pending => "pending",
                    },
                    Err(_) => "error",
                };
                self.metrics.duration("synod_sign_request_duration_seconds", outcome, arrived.elapsed());
                R::Request(Box::new(answer?))
            }
            ClientRequest::GetRequest { request_id, wait_ms } => {
                // Refuse before waiting, and judge again what the wait returns.
                self.request_access(caller, &request_id)?;
                let mut info = self.wait_request(&request_id, wait(wait_ms)).await?;
                if self.request_access(caller, &request_id)? == Some(Access::WithoutSignature) {
                    info.signature = None;
                }
                R::Request(Box::new(info))
            }
            ClientRequest::ListRequests { filter } => {
                let operator = caller.require_operator("the signing requests")?;
                let filter = request_list::checked(filter)?;
                R::Requests(request_list::list(&self.shared.read().state, operator, &filter))
            }
            ClientRequest::ListKeys => {
                caller.require_operator("the keys")?;
                R::Keys(KeyList { keys: self.shared.read().state.keys.values().map(|k| k.info()).collect() })
            }
            ClientRequest::GetKey { name } => {
                caller.require_operator(&format!("key {name:?}"))?;
                let applied = self.shared.read();
                let state = &applied.state;
                let key = state.key_by_name(&name).or_else(|| state.keys.get(&name));
                let key = key.ok_or_else(|| {
                    NodeError::not_found(format!("no key named {name:?}; list keys with `synod key list`"))
                })?;
                R::Key(Box::new(state.key_info_with_versions(key)))
            }
            ClientRequest::ListKv => {
                caller.require_operator("the key-value records")?;
                R::KvList(KvList {
                    keys: self.shared.read().state.kv.iter().map(|(k, r)| (k.clone(), r.version)).collect(),
                })
            }
            ClientRequest::GetKv { key } => {
                caller.require_operator(&format!("record {key:?}"))?;
                let record = self.shared.read().state.kv.get(&key).cloned();
                R::Kv(record.ok_or_else(|| NodeError::not_found(format!("no record under key {key:?} on this node")))?)
            }
            ClientRequest::ListOperators => {
                caller.require_operator("the operators")?;
                let applied = self.shared.read();
                let now = applied.state.time_ms;
                R::Operators {
                    operators: applied.state.operators.values().cloned().collect(),
                    admin_approvals_required: applied.state.admin_approvals_required,
                    webauthn: applied.state.webauthn.clone(),
                    pending_passkeys: applied
                        .state
                        .pending_passkeys
                        .values()
                        .filter(|p| p.expires_at_ms >= now)
                        .cloned()
                        .collect(),
                }
            }
            ClientRequest::ListProposals => {
                caller.require_overseer("the admin proposals")?;
                let mut proposals: Vec<Proposal> = self.shared.read().state.proposals.values().cloned().collect();
                // A chat webhook's URL carries its token: auditors see where it points, not the token.
                for p in &mut proposals {
                    if let synod_proto::Command::SetWebhook { webhook } = &mut p.command {
                        webhook.url = webhook.redacted_url();
                    }
                }
                R::Proposals { proposals }
            }
            ClientRequest::AuditRecords { from, limit } => {
                let operator = caller.require_operator("the audit log")?;
                let (head, mut records) = self.audit_page(from, limit).await?;
                if operator.oversees() {
                    return Ok(R::Audit { head, records });
                }
                // Others see the records of the requests they may read; scan on, page by
                // page, until some are found or the head is reached, so that an empty
                // page still means the end (as `synod audit export` reads it).
                let mut next = from.max(1);
                let mut scanned = 0;
                loop {
                    next = records.last().map_or(next, |r| r.seq + 1);
                    scanned += records.len();
                    {
                        let applied = self.shared.read();
                        records.retain(|r| operator.may_read_audit_record(&applied.state, r));
                    }
                    if !records.is_empty() || next > head.seq || scanned >= AUDIT_SCAN_MAX {
                        break;
                    }
                    records = self.audit_page(next, limit).await?.1;
                    if records.is_empty() {
                        break;
                    }
                }
                R::Audit { head, records }
            }
            ClientRequest::AuditHead => {
                caller.require_operator("the audit head")?;
                R::AuditHead(self.shared.read().state.audit_head.clone())
            }
            ClientRequest::AuditCheckpoint => R::Checkpoint { request_id: self.checkpoint().await? },
            ClientRequest::AuditCheckpoints => {
                caller.require_overseer("the audit checkpoints")?;
                R::Checkpoints(self.checkpoints())
            }
            ClientRequest::GetCommand { command_id, expires_at_ms } => {
                R::Command(Box::new(self.command_outcome(caller, &command_id, expires_at_ms)?))
            }
        })
    }

    /// Waits up to [`MIN_INDEX_WAIT_MS_MAX`] for this node to apply `index`, or
    /// refuses (503) saying how far behind it is.
    async fn caught_up_to(&self, index: u64) -> Result<(), NodeError> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(MIN_INDEX_WAIT_MS_MAX);
        self.wait_applied(index, deadline).await;
        let applied = self.shared.read().last_applied.map_or(0, |l| l.index);
        if applied >= index {
            return Ok(());
        }
        Err(NodeError::unavailable(format!(
            "node {} has applied the log up to index {applied}, {} entries behind index {index}, which this client \
             has already seen; it did not catch up within {} s: ask another node, or retry in a moment",
            self.id,
            index - applied,
            MIN_INDEX_WAIT_MS_MAX / 1000
        )))
    }

    /// What became of command `command_id`, for its author and admins: applied
    /// or refused, with index and outcome; or not known here, and then whether
    /// it can still commit, judged by `expires_at_ms` (the envelope's) when given.
    fn command_outcome(
        &self,
        caller: &Caller,
        command_id: &str,
        expires_at_ms: Option<u64>,
    ) -> Result<CommandOutcome, NodeError> {
        caller.require_operator(&format!("the outcome of command {command_id}"))?;
        if command_id.len() != 32 || hex::decode(command_id).is_err() {
            return Err(NodeError::invalid(format!(
                "{command_id:?} is not a command id (32 hex digits, the envelope's command_id)"
            )));
        }
        let applied = self.shared.read();
        let state = &applied.state;
        let mut answer = CommandOutcome {
            command_id: command_id.to_string(),
            status: CommandStatus::Unknown,
            index: None,
            outcome: None,
            author: None,
            is_final: false,
            applied_index: applied.last_applied.map_or(0, |l| l.index),
            log_time_ms: state.time_ms,
            errors: Vec::new(),
        };
        match state.command_outcome(command_id) {
            Some(KnownCommand::Recorded(record)) => {
                caller.may_read_command(command_id, &record.author)?;
                answer.status =
                    if record.outcome.is_applied() { CommandStatus::Applied } else { CommandStatus::Rejected };
                answer.index = Some(record.index);
                answer.outcome = Some(record.outcome.clone());
                answer.author = Some(record.author);
                answer.is_final = true;
            }
            Some(KnownCommand::SeenOnly) => {
                answer.status = CommandStatus::Applied;
                answer.is_final = true;
            }
            None => {
                let (is_final, error) = self.not_known(command_id, state, answer.applied_index, expires_at_ms);
                answer.is_final = is_final;
                answer.errors.push(error);
            }
        }
        Ok(answer)
    }

    /// Whether a command this node does not know can no longer commit, and
    /// words saying so and what to do.
    fn not_known(
        &self,
        command_id: &str,
        state: &crate::state::ClusterState,
        applied_index: u64,
        expires_at_ms: Option<u64>,
    ) -> (bool, String) {
        let here = format!("command {command_id} is not in node {}'s log up to index {applied_index}", self.id);
        let time = state.time_ms;
        let Some(expires) = expires_at_ms else {
            return (
                false,
                format!(
                    "{here}; give its expiry (?expires_at_ms=, the envelope's) to learn whether it still can commit"
                ),
            );
        };
        if !state.never_commits(expires) {
            return (
                false,
                format!(
                    "{here}; it may still commit until the log's time ({time} ms) passes its expiry ({expires} ms)"
                ),
            );
        }
        let forgotten = expires.saturating_add(crate::state::OUTCOME_KEPT_AFTER_EXPIRY_MS) < time;
        if forgotten || state.rules < crate::state::RULES_COMMAND_OUTCOMES {
            return (
                true,
                format!(
                    "{here}, and it can no longer commit (the log's time {time} ms is past its expiry {expires} ms); \
                     whether it applied before can no longer be told here (its record would be gone by now); read \
                     the state it would have changed"
                ),
            );
        }
        (
            true,
            format!(
                "{here}, and it never will: the log's time ({time} ms) is past its expiry ({expires} ms), so it did \
                 not commit; sign and send a new command"
            ),
        )
    }

    /// What `caller` may see of request `request_id`: `None` when there is no
    /// such request yet (the wait says so), a refusal when it may see nothing.
    fn request_access(&self, caller: &Caller, request_id: &str) -> Result<Option<Access>, NodeError> {
        caller.require_operator(&format!("request {request_id}"))?;
        let applied = self.shared.read();
        match applied.state.requests.get(request_id) {
            Some(request) => caller.request_access(&applied.state, request).map(Some),
            None => Ok(None),
        }
    }

    /// Audit records from `from`, at most `limit` (and [`AUDIT_PAGE_MAX`]),
    /// only those the applied state vouches for.
    async fn audit_page(&self, from: u64, limit: usize) -> Result<(AuditHead, Vec<AuditRecord>), NodeError> {
        let head = self.shared.read().state.audit_head.clone();
        // The state moves just before its records reach the store; wait for them.
        for _ in 0..1000 {
            if self.shared.audit_written() >= head.seq {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let records = self
            .audit_records(from.max(1), limit.min(AUDIT_PAGE_MAX))
            .await
            .map_err(|e| NodeError::internal(format!("cannot read the audit log: {e}")))?;
        // A crash may leave newer buffered records than the applied state holds.
        Ok((head.clone(), records.into_iter().filter(|r| r.seq <= head.seq).collect()))
    }

    fn checkpoints(&self) -> CheckpointList {
        let applied = self.shared.read();
        let state = &applied.state;
        let public_key = state.key_by_name(synod_proto::authz::AUDIT_KEY_NAME).and_then(|k| k.group_key.clone());
        let mut checkpoints: Vec<CheckpointInfo> = state
            .requests
            .keys()
            .filter_map(|id| crate::state::checkpoint_seq(id))
            .filter_map(|seq| state.request_info(&crate::state::checkpoint_request_id(seq)).map(|info| (seq, info)))
            .map(|(seq, info)| CheckpointInfo {
                seq,
                request_id: info.request_id,
                status: info.status,
                signature: info.signature,
                message_sha256: info.message_sha256,
            })
            .collect();
        checkpoints.sort_by_key(|c| c.seq);
        CheckpointList { cluster_id: state.cluster_id.clone().unwrap_or_default(), public_key, checkpoints }
    }
}

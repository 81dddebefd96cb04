//! HTTP/JSON API bodies, shared by the node's server and the CLI.
//!
//! Conventions follow Vault: JSON everywhere, errors as `{"errors": [...]}`,
//! health status codes that load balancers understand.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::command::{OperatorKey, SignedCommand};
use crate::raft::{NodeAddr, Outcome};
use crate::NodeId;

/// `GET /v1/sys/health`.
///
/// Status codes: 200 leader; 429 follower that knows a leader (200 with
/// `?standbyok=true`); 501 not initialised; 503 no leader known.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Health {
    pub node_id: NodeId,
    pub initialized: bool,
    pub role: RaftRole,
    pub leader_id: Option<NodeId>,
    pub term: u64,
    pub members: Vec<NodeId>,
    pub last_applied_index: Option<u64>,
    pub cluster_id: Option<String>,
    pub version: String,
    /// The KEK backend sealing this node's secrets: `file`, `passphrase` or `pkcs11`.
    pub kek_backend: String,
    /// How many active keys this node is a participant of but holds no share
    /// of (its disk was lost or wiped); `synod status` names them.
    #[serde(default)]
    pub shares_missing: u32,
}

/// `GET /v1/sys/ready`: whether this node can take part in signing now (200), or why not (503).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Readiness {
    pub node_id: NodeId,
    pub ready: bool,
    /// What keeps the node from signing, each in words an operator can act on; empty when ready.
    pub reasons: Vec<String>,
    pub leader_id: Option<NodeId>,
    pub term: u64,
    /// With the applied index below, how far the node has caught up with its own log.
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
}

/// One member as this node sees it.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemberStatus {
    pub node_id: NodeId,
    pub addr: NodeAddr,
    /// True for a voter, false for a learner.
    pub voter: bool,
    /// In the signed member registry (false only for an entry a leader added unsigned).
    pub authorized: bool,
    /// The highest log index the leader knows this member holds (leader only).
    pub matched_index: Option<u64>,
    /// This member's clock minus the leader's, in ms, as the leader estimates
    /// it from the member's latest AppendEntries answer (leader only; absent
    /// when the answer is not fresh).
    #[serde(default)]
    pub clock_offset_ms: Option<i64>,
}

/// A command the state machine refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Rejection {
    pub index: u64,
    pub author: OperatorKey,
    pub kind: String,
    pub reason: String,
}

/// `GET /v1/sys/status`: the node's view of the cluster.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Status {
    pub node_id: NodeId,
    /// The id every command and approval names (derived from the genesis).
    pub cluster_id: Option<String>,
    /// The name the operator chose at `cluster init`, a readable label (none
    /// for a cluster whose id is that name, from before ids were derived).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_name: Option<String>,
    pub role: RaftRole,
    pub leader_id: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    /// Snapshot endorsement: the newest point this node serialised, and the
    /// newest one enough members vouch for (a growing gap means some member
    /// is down or disagrees, and the log is not purged past the endorsed one).
    #[serde(default)]
    pub newest_point_index: Option<u64>,
    #[serde(default)]
    pub endorsed_point_index: Option<u64>,
    /// Why this node releases no signature shares now (catching up after a
    /// snapshot or an empty disk), if it does not.
    #[serde(default)]
    pub signing_paused: Option<String>,
    pub members: Vec<MemberStatus>,
    pub admins: Vec<OperatorKey>,
    pub applied_commands: u64,
    pub rejected_commands: u64,
    /// The most recent refusals, newest last (bounded).
    pub recent_rejections: Vec<Rejection>,
    /// Raft membership entries that named nodes outside the signed registry.
    pub unauthorized_membership_entries: u64,
    /// The KEK backend, described without secrets.
    pub kek: String,
    /// Whether this node's memory is locked (unsealed shares and nonces never
    /// reach swap); when not, [`Status::memory_lock_refused`] says why.
    #[serde(default)]
    pub memory_locked: bool,
    /// Why the OS refused to lock memory, and how to allow it (or why it was
    /// not attempted); none when locked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_lock_refused: Option<String>,
    /// Whether the process is not dumpable (no core dump; no ptrace or
    /// `/proc/<pid>/mem` for other users) and its core file limit is 0.
    #[serde(default)]
    pub core_dumps_off: bool,
    /// This boot's random incarnation id.
    /// Names of active keys this node is a participant of but holds no share of.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares_missing: Vec<String>,
    pub incarnation: String,
}

/// The answer to a write: where it landed and what it did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WriteResponse {
    pub index: u64,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// `GET /v1/kv/{key}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KvRecord {
    pub key: String,
    pub value: String,
    /// Increments with every write of this key.
    pub version: u64,
    pub author: OperatorKey,
    pub updated_index: u64,
    pub updated_at_ms: u64,
}

/// `GET /v1/kv`: every key with its version.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KvList {
    pub keys: BTreeMap<String, u64>,
}

pub use crate::error::LeaderHint;

/// Every call a client makes on a node. The node serves them in one place
/// (`Node::serve_client`); its HTTP API and the simulator's clients are thin
/// translators to and from it, so the simulator runs the client path too.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum ClientRequest {
    /// `GET /v1/sys/health` (no client certificate needed). The HTTP code,
    /// which depends on `?standbyok`, is the API's business.
    Health,
    /// `GET /v1/sys/status` and `/v1/sys/metrics`.
    Status,
    /// `POST /v1/sys/init`: a genesis command.
    Init { command: SignedCommand },
    /// `POST /v1/commands`: any signed command.
    Write { command: SignedCommand },
    /// `POST /v1/keys`: create_key, import_key or rotate_key, after pinging the participants.
    CreateKey { command: SignedCommand },
    /// `POST /v1/keys/{name}/share`: an imported share for this node.
    ImportShare { share: ImportShare },
    /// `POST /v1/sign`: a sign request, waiting up to `wait_ms` for its outcome.
    Sign { command: SignedCommand, wait_ms: u64 },
    /// `GET /v1/requests/{id}`, waiting up to `wait_ms` while it is open.
    GetRequest { request_id: String, wait_ms: u64 },
    /// `GET /v1/requests`: a page of the requests the caller may read, newest first.
    ListRequests { filter: RequestFilter },
    /// `GET /v1/keys`.
    ListKeys,
    /// `GET /v1/keys/{name}`: the live key of that name, else the key with that id.
    GetKey { name: String },
    /// `GET /v1/kv`.
    ListKv,
    /// `GET /v1/kv/{key}`.
    GetKv { key: String },
    /// `GET /v1/operators`.
    ListOperators,
    /// `GET /v1/admin/proposals`.
    ListProposals,
    /// `GET /v1/audit`: records from `from` (1 is the first), at most `limit`.
    AuditRecords { from: u64, limit: usize },
    /// `GET /v1/audit/head`.
    AuditHead,
    /// `POST /v1/audit/checkpoint`.
    AuditCheckpoint,
    /// `GET /v1/audit/checkpoints`.
    AuditCheckpoints,
    /// `GET /v1/commands/{id}`: what became of the command with that
    /// `command_id`; `expires_at_ms` (the envelope's, when the caller knows
    /// it) lets the node say whether a command it does not know can still commit.
    GetCommand { command_id: String, expires_at_ms: Option<u64> },
}

/// The JSON body of every error response: `{"errors": ["..."]}`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub errors: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<LeaderHint>,
}

/// A node's part in Raft right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RaftRole {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

/// Where a key stands, as the API and the CLI name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    /// Waiting for round-1 packages or confirmations.
    Generating,
    /// Every participant confirmed the same key; it signs.
    Active,
    /// Generation failed; the name is free again.
    Aborted,
    /// An admin stopped it; `synod key enable` lets it sign again.
    Disabled,
    /// Its destruction is scheduled (`destroy_at_ms`); it signs nothing, and
    /// until the deadline `synod key destroy --cancel` can still stop it.
    DestroyScheduled,
    /// Destroyed: every participant deletes its shares; the public key and
    /// the audit trail remain, and the name is never used again.
    Destroyed,
    /// A version a rotation replaced, within its overlap (`retire_at_ms`):
    /// requests already committed on it finish, and a request may still
    /// name it; requests naming only the key go to the primary.
    Retiring,
    /// A version past its overlap: it signs nothing; its public key still
    /// verifies what it signed.
    Retired,
}

/// Where a signing request stands, as the API and the CLI name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    /// Committed; its policy still needs approvals.
    AwaitingApproval,
    /// Committed with its policy met; being signed.
    Pending,
    Signed,
    Failed,
}

impl RequestStatus {
    /// Whether the request may still change (wait for it).
    pub fn is_open(self) -> bool {
        matches!(self, RequestStatus::AwaitingApproval | RequestStatus::Pending)
    }
}

macro_rules! snake_case_display {
    ($($t:ty),*) => {$(
        impl std::fmt::Display for $t {
            /// The same word as in JSON.
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let word = serde_json::to_value(self).map_err(|_| std::fmt::Error)?;
                f.write_str(word.as_str().unwrap_or_default())
            }
        }
    )*};
}
snake_case_display!(RaftRole, KeyStatus, RequestStatus);

/// `GET /v1/keys/{name}`: a signing key as every node's state records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyInfo {
    /// The key id (the id of the command that created it).
    pub id: String,
    pub name: String,
    /// The version's number under its name: 1 for a new key, one more for
    /// each rotation (numbers are never reused).
    pub version: u32,
    /// Signers needed for a signature.
    pub threshold: u16,
    /// Nodes holding a share; FROST identifier = node id.
    pub participants: Vec<NodeId>,
    pub status: KeyStatus,
    /// `dkg` (generated by the nodes) or `imported` (split by a dealer on an operator's machine).
    pub origin: String,
    /// The Ed25519 public key (hex), once known.
    pub public_key: Option<String>,
    /// DKG progress: participants whose round-1 package is committed.
    pub round1_received: Vec<NodeId>,
    /// Participants that confirmed the same group key.
    pub confirmed: Vec<NodeId>,
    /// Why generation was aborted, and by whose fault when known.
    pub abort_reason: Option<String>,
    pub culprit: Option<NodeId>,
    pub created_at_ms: u64,
    pub activated_at_ms: Option<u64>,
    /// The key's signing policy and its version.
    pub policy: crate::authz::Policy,
    pub policy_version: u64,
    /// The key was made without a policy and signs nothing until an admin
    /// sets one (`policy` is then not in force).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub policy_unset: bool,
    /// When the key is (or was) destroyed, by the log's time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destroy_at_ms: Option<u64>,
    /// Participants that confirmed they deleted their shares of a destroyed key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares_destroyed: Vec<NodeId>,
    /// Participants that reported holding no share of this key (a lost disk).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares_missing: Vec<NodeId>,
    /// When a replaced version stops signing, by the log's time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_at_ms: Option<u64>,
    /// Every version under this key's name, oldest first (in `GET
    /// /v1/keys/{name}`; a version generating for a rotation included).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<KeyVersionInfo>,
    /// The generation of the shares that sign: 0 from the key's generation,
    /// one more for each completed refresh (the public key never changes).
    #[serde(default)]
    pub generation: u32,
    /// When the last refresh completed, by the log's time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refreshed_at_ms: Option<u64>,
    /// A refresh in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<RefreshInfo>,
    /// Why the last refresh was aborted (cleared when another starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_failed: Option<String>,
    /// The refresh schedule, and when the next scheduled refresh is due (log time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_every_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_due_at_ms: Option<u64>,
    /// A repair in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair: Option<RepairInfo>,
    /// Why the last repair was aborted (cleared when another starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair_failed: Option<String>,
}

/// A repair (or enrollment) of one node's share in progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RepairInfo {
    /// The node getting its share.
    pub target: NodeId,
    /// Whether the target is joining the key (not a participant before).
    pub enrolling: bool,
    /// The participants whose shares help, in id order.
    pub helpers: Vec<NodeId>,
    /// Helpers whose commitments are in the log.
    pub committed: Vec<NodeId>,
    pub started_at_ms: u64,
}

/// A refresh of a key's shares in progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RefreshInfo {
    /// The generation it makes.
    pub generation: u32,
    /// Who holds a share of the new generation (those it removes do not).
    pub participants: Vec<NodeId>,
    pub started_at_ms: u64,
    /// Participants whose round-1 package is committed.
    pub round1_received: Vec<NodeId>,
    /// Participants that sealed the new generation and confirmed its package.
    pub confirmed: Vec<NodeId>,
}

/// One version of a key, as `synod key show` lists them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyVersionInfo {
    pub version: u32,
    pub id: String,
    pub status: KeyStatus,
    /// Whether requests naming only the key go to this version.
    pub primary: bool,
    pub threshold: u16,
    pub participants: Vec<NodeId>,
    pub public_key: Option<String>,
    pub activated_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_at_ms: Option<u64>,
}

/// `GET /v1/keys`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyInfo>,
}

/// `GET /v1/requests/{id}` and the answer to `POST /v1/sign`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RequestInfo {
    pub request_id: String,
    pub key_id: String,
    pub key_name: String,
    /// The Ed25519 public key (hex) the signature verifies under.
    pub public_key: String,
    /// SHA-256 of the message (hex) and its length.
    pub message_sha256: String,
    pub message_bytes: usize,
    pub purpose: String,
    pub requester: OperatorKey,
    pub status: RequestStatus,
    /// The 64-byte RFC 8032 signature (hex), once signed.
    pub signature: Option<String>,
    /// The nodes whose shares made the signature.
    pub signers: Vec<NodeId>,
    /// Signers caught sending invalid shares for this request.
    pub culprits: Vec<NodeId>,
    /// Signing sessions the coordinator needed.
    pub sessions: u32,
    /// Why the last attempt failed.
    pub error: Option<String>,
    pub created_index: u64,
    pub created_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    /// The requester's declarations.
    pub environment: String,
    pub attributes: BTreeMap<String, String>,
    /// Approvers who approved so far.
    pub approvals: Vec<String>,
    /// Denials so far, each "approver: reason" (rules 10 and later).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denials: Vec<String>,
    /// "1/2 from [alice, bob]" per requirement of the key's policy.
    pub approval_progress: Vec<String>,
    pub policy_version: u64,
    pub key_version: u32,
    /// After this (log time, ms) the request fails and approvals are refused.
    pub expires_at_ms: u64,
    /// The declared signing format and what every node read from the message
    /// (absent for a plain message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<crate::format::FormatInfo>,
    /// The version of the approval statement approvers sign: 2 from rules 9
    /// on (it names the format and the artifact hash), 1 before.
    #[serde(default = "statement_version_1")]
    pub statement_version: u32,
}

fn statement_version_1() -> u32 {
    1
}

impl RequestInfo {
    /// The approval statement of this request, as approvers build it from what
    /// a node reports (they check the message hash and the artifact hash against
    /// what they were asked to approve).
    pub fn approval_statement(&self, cluster_id: &str) -> crate::authz::ApprovalStatement {
        crate::authz::ApprovalStatement {
            cluster_id: cluster_id.to_string(),
            request_id: self.request_id.clone(),
            requester: self.requester,
            key_id: self.key_id.clone(),
            key_version: self.key_version,
            message_sha256: self.message_sha256.clone(),
            purpose: self.purpose.clone(),
            environment: self.environment.clone(),
            attributes: self.attributes.clone(),
            policy_version: self.policy_version,
            expires_at_ms: self.expires_at_ms,
            format: (self.statement_version >= 2).then(|| crate::authz::StatementFormat::of(self.format.as_ref())),
        }
    }
}

/// How many requests a `GET /v1/requests` page holds when the client names no `limit`.
pub const REQUEST_LIST_LIMIT_DEFAULT: usize = 50;
/// The most requests one `GET /v1/requests` page holds; a larger `limit` is cut to it.
pub const REQUEST_LIST_LIMIT_MAX: usize = 500;

/// `GET /v1/requests`: which of the requests the caller may read to list. Every
/// condition given must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestFilter {
    /// Only requests in this status (`status=`).
    pub status: Option<RequestStatus>,
    /// Only requests on the key of this name or id (`key=`).
    pub key: Option<String>,
    /// Only requests awaiting the calling operator's approval (`approver=me`):
    /// its key's policy asks the operator for one, and it has not given it.
    pub awaiting_my_approval: bool,
    /// Only the calling operator's own requests (`requester=me`).
    pub mine: bool,
    /// The most requests on the page (1 to [`REQUEST_LIST_LIMIT_MAX`]).
    pub limit: usize,
    /// Only requests created at a log index below this one: the previous
    /// page's [`RequestList::next`].
    pub before_index: Option<u64>,
}

/// `GET /v1/requests`: a page of requests, newest first (by the log index that
/// created each, then by request id).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RequestList {
    /// The requests, as `GET /v1/requests/{id}` shows each to the caller.
    pub requests: Vec<RequestInfo>,
    /// Set when more requests match: pass it as `before_index` for the next
    /// page. It is the `created_index` of the page's oldest request; a page
    /// never splits the requests one log entry created, so paging neither
    /// skips nor repeats one.
    pub next: Option<u64>,
}

/// `POST /v1/keys/{name}/share`: one imported share, sent by the operator's CLI
/// straight to the node that will hold it (over TLS to that node only).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImportShare {
    pub key_id: String,
    /// Hex FROST `SecretShare` for this node.
    #[schema(value_type = String)]
    pub share: crate::rpc::SecretHex,
}

/// `GET /v1/commands/{id}`: what became of a command, found by its envelope's
/// `command_id`. 200 when this node knows it (applied, or refused); 404 when
/// it does not, with [`CommandOutcome::is_final`] saying whether it may still
/// commit. A client whose write's answer was lost asks this before it sends
/// the same signed command again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CommandOutcome {
    pub command_id: String,
    pub status: CommandStatus,
    /// The log index the command was applied (or refused) at, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
    /// What applying it did, as its write answered; absent when not known
    /// here, and for a cluster whose rules keep no outcomes (before version 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// Who signed the command, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<OperatorKey>,
    /// For a command not known here: true when it can never commit any more
    /// (this node has applied entries past the command's expiry, and later
    /// entries are never older), false while it still may. True for a known one.
    #[serde(rename = "final")]
    pub is_final: bool,
    /// The highest log index this node has applied.
    pub applied_index: u64,
    /// The log's time at that index (ms since the epoch).
    pub log_time_ms: u64,
    /// For a command not known here: what that means and what to do, so that
    /// the 404's body reads as an [`ErrorBody`] too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// Whether a node knows a command, and how it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CommandStatus {
    /// Committed and applied (it changed the state, or was taken as a proposal).
    Applied,
    /// Committed and refused by the state machine; nothing changed.
    Rejected,
    /// Not in this node's applied log (or its record has expired).
    Unknown,
}

/// The query parameter of a read that carries the highest log index its
/// client has seen (read your writes): a node that has applied less waits up
/// to `node::client::MIN_INDEX_WAIT_MS_MAX`, then answers 503 saying how far behind it is.
pub const MIN_INDEX_PARAM: &str = "min_index";

/// How a node's refusal begins when it has no leader and cannot reach a
/// majority of the voters; clients stop retrying when they see it.
pub const NO_MAJORITY_PREFIX: &str = "the cluster has no majority";

//! HTTP/JSON API bodies, shared by the node's server and the CLI.
//!
//! Conventions follow Vault: JSON everywhere, errors as `{"errors": [...]}`,
//! health status codes that load balancers understand.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::command::OperatorKey;
use crate::raft::{NodeAddr, Outcome};
use crate::NodeId;

/// `GET /v1/sys/health`.
///
/// Status codes: 200 leader; 429 follower that knows a leader (200 with
/// `?standbyok=true`); 501 not initialised; 503 no leader known.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Health {
    pub node_id: NodeId,
    pub initialized: bool,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: String,
    pub leader_id: Option<NodeId>,
    pub term: u64,
    pub members: Vec<NodeId>,
    pub last_applied_index: Option<u64>,
    pub cluster_id: Option<String>,
    pub version: String,
    /// The KEK backend sealing this node's secrets: `file`, `passphrase` or `pkcs11`.
    pub kek_backend: String,
}

/// One member as this node sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberStatus {
    pub node_id: NodeId,
    pub addr: NodeAddr,
    /// True for a voter, false for a learner.
    pub voter: bool,
    /// In the signed member registry (false only for an entry a leader added unsigned).
    pub authorized: bool,
    /// The highest log index the leader knows this member holds (leader only).
    pub matched_index: Option<u64>,
}

/// A command the state machine refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub index: u64,
    pub author: OperatorKey,
    pub kind: String,
    pub reason: String,
}

/// `GET /v1/sys/status`: the node's view of the cluster.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub node_id: NodeId,
    pub cluster_id: Option<String>,
    pub role: String,
    pub leader_id: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
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
    /// This boot's random incarnation id.
    pub incarnation: String,
}

/// The answer to a write: where it landed and what it did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteResponse {
    pub index: u64,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// `GET /v1/kv/{key}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KvList {
    pub keys: BTreeMap<String, u64>,
}

/// An error the API returns, with the HTTP status it maps to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    /// Set when the request should be retried at the leader.
    pub leader_hint: Option<LeaderHint>,
}

/// Where the current leader is, when known.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderHint {
    pub node_id: NodeId,
    pub api_addr: String,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), leader_hint: None }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, message)
    }
}

/// The JSON body of every error response: `{"errors": ["..."]}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub errors: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<LeaderHint>,
}

/// `GET /v1/keys/{name}`: a signing key as every node's state records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// The key id (the id of the command that created it).
    pub id: String,
    pub name: String,
    /// 1 until rotation exists.
    pub version: u32,
    /// Signers needed for a signature.
    pub threshold: u16,
    /// Nodes holding a share; FROST identifier = node id.
    pub participants: Vec<NodeId>,
    /// `generating`, `active` or `aborted`.
    pub status: String,
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
}

/// `GET /v1/keys`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyList {
    pub keys: Vec<KeyInfo>,
}

/// `GET /v1/requests/{id}` and the answer to `POST /v1/sign`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
    /// `awaiting_approval`, `pending` (being signed), `signed` or `failed`.
    pub status: String,
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
    /// "1/2 from [alice, bob]" per requirement of the key's policy.
    pub approval_progress: Vec<String>,
    pub policy_version: u64,
    pub key_version: u32,
    /// After this (log time, ms) the request fails and approvals are refused.
    pub expires_at_ms: u64,
}

/// `POST /v1/keys/{name}/share`: one imported share, sent by the operator's CLI
/// straight to the node that will hold it (over TLS to that node only).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImportShare {
    pub key_id: String,
    /// Hex FROST `SecretShare` for this node.
    pub share: crate::rpc::SecretHex,
}

//! Every client call, served in one place: [`Node::serve_client`] takes a
//! [`ClientRequest`] and answers a [`ClientResponse`] or a typed
//! [`NodeError`]. The HTTP API (`crate::api`) and the simulator's clients
//! only translate to and from these; neither reads the state itself.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use synod_proto::api::{ClientRequest, Health, KeyInfo, KeyList, KvList, KvRecord, RequestInfo, Status, WriteResponse};
use synod_proto::{NodeError, NodeId};

use super::Node;
use crate::state::{AuditHead, AuditRecord, Operator, Proposal};

/// The most audit records one call returns.
pub const AUDIT_PAGE_MAX: usize = 1000;
/// How long a call may wait for a request's outcome, at most.
pub const WAIT_MS_MAX: u64 = 120_000;

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
    Keys(KeyList),
    Key(Box<KeyInfo>),
    KvList(KvList),
    Kv(KvRecord),
    Operators {
        operators: Vec<Operator>,
        admin_approvals_required: u32,
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
}

/// `GET /v1/audit/checkpoints`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointList {
    pub cluster_id: String,
    /// The audit key's public key (hex), once it exists.
    pub public_key: Option<String>,
    pub checkpoints: Vec<CheckpointInfo>,
}

/// One audit checkpoint request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointInfo {
    pub seq: u64,
    pub request_id: String,
    pub status: synod_proto::api::RequestStatus,
    pub signature: Option<String>,
    pub message_sha256: String,
}

fn wait(wait_ms: u64) -> Duration {
    Duration::from_millis(wait_ms.min(WAIT_MS_MAX))
}

impl Node {
    /// Serves one client call. Whether the caller may make it (a client
    /// certificate) is the transport's business and is checked before.
    pub async fn serve_client(&self, request: ClientRequest) -> Result<ClientResponse, NodeError> {
        use ClientResponse as R;
        Ok(match request {
            ClientRequest::Health => R::Health(self.health()),
            ClientRequest::Status => R::Status(Box::new(self.status())),
            ClientRequest::Init { command } => R::Written(self.init(command).await?),
            ClientRequest::Write { command } => R::Written(self.write(command).await?),
            ClientRequest::CreateKey { command } => R::Written(self.create_key(command).await?),
            ClientRequest::ImportShare { share } => {
                crate::dkg::import_share(self, &share.key_id, &share.share).await?;
                R::ShareSealed { node_id: self.id }
            }
            ClientRequest::Sign { command, wait_ms } => R::Request(Box::new(self.sign(command, wait(wait_ms)).await?)),
            ClientRequest::GetRequest { request_id, wait_ms } => {
                R::Request(Box::new(self.wait_request(&request_id, wait(wait_ms)).await?))
            }
            ClientRequest::ListKeys => {
                R::Keys(KeyList { keys: self.shared.read().state.keys.values().map(|k| k.info()).collect() })
            }
            ClientRequest::GetKey { name } => {
                let applied = self.shared.read();
                let state = &applied.state;
                let key = state.key_by_name(&name).or_else(|| state.keys.get(&name));
                let key = key.ok_or_else(|| {
                    NodeError::not_found(format!("no key named {name:?}; list keys with `synod key list`"))
                })?;
                R::Key(Box::new(key.info()))
            }
            ClientRequest::ListKv => R::KvList(KvList {
                keys: self.shared.read().state.kv.iter().map(|(k, r)| (k.clone(), r.version)).collect(),
            }),
            ClientRequest::GetKv { key } => {
                let record = self.shared.read().state.kv.get(&key).cloned();
                R::Kv(record.ok_or_else(|| NodeError::not_found(format!("no record under key {key:?} on this node")))?)
            }
            ClientRequest::ListOperators => {
                let applied = self.shared.read();
                R::Operators {
                    operators: applied.state.operators.values().cloned().collect(),
                    admin_approvals_required: applied.state.admin_approvals_required,
                }
            }
            ClientRequest::ListProposals => {
                R::Proposals { proposals: self.shared.read().state.proposals.values().cloned().collect() }
            }
            ClientRequest::AuditRecords { from, limit } => {
                let (head, records) = self.audit_page(from, limit).await?;
                R::Audit { head, records }
            }
            ClientRequest::AuditHead => R::AuditHead(self.shared.read().state.audit_head.clone()),
            ClientRequest::AuditCheckpoint => R::Checkpoint { request_id: self.checkpoint().await? },
            ClientRequest::AuditCheckpoints => R::Checkpoints(self.checkpoints()),
        })
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

//! The audit chain: one record per applied entry, hash-chained.
//!
//! Every committed command, applied or refused, becomes an [`AuditRecord`]
//! whose hash covers the previous record's hash and the record itself. The
//! chain is a pure function of the committed log, so every node holds the same
//! one; changing, dropping or reordering a record breaks every hash after it.
//! The state keeps only the head; records live in the store and in snapshots.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use synod_proto::{Command, Envelope, LogEntry, NodeId, OperatorKey, Outcome};

use super::ClusterState;

/// Domain tag of record hashes.
const AUDIT_DOMAIN: &[u8] = b"synod/audit/v1\0";
/// The hash before the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The newest record's sequence number and hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditHead {
    pub seq: u64,
    pub hash: String,
}

impl Default for AuditHead {
    fn default() -> Self {
        AuditHead { seq: 0, hash: GENESIS_HASH.into() }
    }
}

/// One audited action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditRecord {
    /// 1, 2, 3, ... with no gaps.
    pub seq: u64,
    /// The log index of the entry.
    pub index: u64,
    /// The entry's time (ms since the epoch).
    pub time_ms: u64,
    /// The command kind (`sign_request`, `approve`, `key_abort`, ...) or `unparseable`.
    pub kind: String,
    /// The key that signed the command.
    pub author: OperatorKey,
    /// The operator's name, or `node-<id>` for node-authored commands, when known.
    pub actor: Option<String>,
    pub command_id: Option<String>,
    pub key_id: Option<String>,
    pub key_version: Option<u32>,
    pub request_id: Option<String>,
    pub purpose: Option<String>,
    pub environment: Option<String>,
    /// Approvers whose approvals the request holds after this entry.
    pub approvals: Vec<String>,
    /// Signers of a signature.
    pub signers: Vec<NodeId>,
    /// `applied` or `refused`.
    pub result: String,
    /// What it did, or why it was refused.
    pub detail: String,
    /// The request's declared signing format (rules 9 and later, when one was declared).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<synod_proto::format::SignFormat>,
    /// The artifact hash every node read from the request's signed bytes (`ALGORITHM:HEX`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_hash: Option<String>,
    /// The previous record's hash.
    pub prev_hash: String,
    /// SHA-256 over the domain tag, `prev_hash` and this record without `hash`.
    pub hash: String,
}

impl AuditRecord {
    /// The hash this record must carry.
    pub fn compute_hash(&self) -> String {
        let mut unhashed = self.clone();
        unhashed.hash = String::new();
        let body = serde_json::to_vec(&unhashed).expect("record serialises");
        let mut h = Sha256::new();
        h.update(AUDIT_DOMAIN);
        h.update(self.prev_hash.as_bytes());
        h.update(&body);
        hex::encode(h.finalize())
    }
}

/// Checks a sequence of records: consecutive numbers from `from_seq`, each
/// hash correct and chained to the one before (`prev` for the first). Returns
/// the head, or the first broken record and why.
pub fn verify_chain<'a>(
    prev: &AuditHead,
    records: impl IntoIterator<Item = &'a AuditRecord>,
) -> Result<AuditHead, (u64, String)> {
    let mut head = prev.clone();
    for r in records {
        if r.seq != head.seq + 1 {
            return Err((r.seq, format!("expected record {} next, found {}", head.seq + 1, r.seq)));
        }
        if r.prev_hash != head.hash {
            return Err((r.seq, "its prev_hash is not the previous record's hash".into()));
        }
        if r.compute_hash() != r.hash {
            return Err((r.seq, "its hash does not match its contents (the record was changed)".into()));
        }
        head = AuditHead { seq: r.seq, hash: r.hash.clone() };
    }
    Ok(head)
}

impl ClusterState {
    /// Appends the record of one applied entry to the chain.
    pub(super) fn audit(&mut self, index: u64, entry: &LogEntry, envelope: Option<&Envelope>, outcome: &Outcome) {
        let command = envelope.map(|e| &e.command);
        let (result, detail) = match outcome {
            Outcome::Applied { detail } => ("applied", detail.clone()),
            Outcome::Rejected { reason, .. } => ("refused", reason.clone()),
            Outcome::Internal => ("internal", String::new()),
        };
        let request_id = command.and_then(request_id_of);
        let request = request_id.as_ref().and_then(|id| self.requests.get(id));
        let key_id = envelope.and_then(|e| self.key_id_of(e)).or_else(|| request.map(|r| r.key_id.clone()));
        let key_version = key_id.as_ref().and_then(|id| self.keys.get(id)).map(|k| k.version);
        let actor = match command.map(|c| c.authority()) {
            Some(synod_proto::command::Authority::Node(id)) => Some(format!("node-{id}")),
            _ => self.operator_by_key(&entry.command.author).map(|op| op.name.clone()),
        };
        let mut record = AuditRecord {
            seq: self.audit_head.seq + 1,
            index,
            time_ms: self.time_ms,
            kind: command.map_or("unparseable", |c| c.kind()).to_string(),
            author: entry.command.author,
            actor,
            command_id: envelope.map(|e| e.command_id.clone()),
            key_id,
            key_version,
            request_id,
            purpose: request.map(|r| r.purpose.clone()),
            environment: request.map(|r| r.environment.clone()),
            approvals: request.map(|r| r.approvals.iter().map(|a| a.approver.clone()).collect()).unwrap_or_default(),
            signers: request.map(|r| r.signers.clone()).unwrap_or_default(),
            result: result.into(),
            detail,
            format: request.and_then(|r| r.format.as_ref()).map(|f| f.format),
            artifact_hash: request.and_then(|r| r.format.as_ref()).and_then(|f| f.inspection.artifact_hash.clone()),
            prev_hash: self.audit_head.hash.clone(),
            hash: String::new(),
        };
        record.hash = record.compute_hash();
        self.audit_head = AuditHead { seq: record.seq, hash: record.hash.clone() };
        self.audit_out.push(record);
    }

    fn key_id_of(&self, envelope: &Envelope) -> Option<String> {
        match &envelope.command {
            Command::DkgRound1 { key_id, .. }
            | Command::RefreshRound1 { key_id, .. }
            | Command::RefreshConfirm { key_id, .. }
            | Command::RefreshAbort { key_id, .. }
            | Command::RefreshDue { key_id, .. }
            | Command::RepairCommit { key_id, .. }
            | Command::RepairDone { key_id, .. }
            | Command::RepairAbort { key_id, .. }
            | Command::KeyConfirm { key_id, .. }
            | Command::KeyAbort { key_id, .. }
            | Command::KeyDestroyDue { key_id, .. }
            | Command::KeySharesDestroyed { key_id, .. }
            | Command::ShareMissing { key_id, .. } => Some(key_id.clone()),
            // A created key's id is its command id (present only if it was created).
            Command::CreateKey { .. } | Command::ImportKey { .. } | Command::RotateKey { .. } => {
                self.keys.contains_key(&envelope.command_id).then(|| envelope.command_id.clone())
            }
            Command::SetPolicy { key: name, .. }
            | Command::DisableKey { key: name }
            | Command::RefreshKey { key: name, .. }
            | Command::RepairShare { key: name, .. }
            | Command::SetRefreshSchedule { key: name, .. }
            | Command::EnableKey { key: name }
            | Command::ScheduleKeyDestroy { key: name, .. }
            | Command::CancelKeyDestroy { key: name } => self.key_names.get(name).cloned(),
            _ => None,
        }
    }

    /// Takes the records appended since the last call, for the store.
    pub fn take_audit(&mut self) -> Vec<AuditRecord> {
        std::mem::take(&mut self.audit_out)
    }
}

fn request_id_of(command: &Command) -> Option<String> {
    match command {
        Command::SignRequest { request_id, .. }
        | Command::SignResult { request_id, .. }
        | Command::SignFailed { request_id, .. }
        | Command::Approve { request_id, .. }
        | Command::Deny { request_id, .. }
        | Command::CancelRequest { request_id } => Some(request_id.clone()),
        _ => None,
    }
}

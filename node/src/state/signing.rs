//! Signing requests in the replicated state: one request id, one message.
//!
//! A request is committed before any signer releases a share, and every signer
//! reads the message from its own copy of it. A result is stored only after
//! every node has verified the signature against the key and its own copy of
//! the message. The first valid result wins; FROST signatures are randomised,
//! so a second coordinator's different but valid signature of the same message
//! is refused, and no second message is ever signed under one id.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use synod_proto::api::{self, RequestInfo};
use synod_proto::command::COMMAND_TTL_MS_MAX;
use synod_proto::format::{FormatInfo, SignFormat};
use synod_proto::{Envelope, NodeId, OperatorKey};

use super::{ClusterState, KeyStatus, Refusal};

/// The most requests that may wait for a signature at once; more are refused
/// until some finish.
pub const PENDING_REQUESTS_MAX: usize = 1024;

/// How long an audit checkpoint request may wait for its signature.
const CHECKPOINT_TTL_MS: u64 = 10 * 60 * 1000;

/// How long (log time) a request that needs no approval may wait for its
/// signature (rules 4 and later), whatever its command's validity says.
pub const REQUEST_PENDING_MS_MAX: u64 = 10 * 60 * 1000;

/// How long a request that waits for approvals may stay pending when its
/// policy names no `approval_window_ms` (rules 4 and later). Never more than
/// the 24 h a command may be valid for.
pub const REQUEST_APPROVAL_MS_DEFAULT: u64 = 4 * 60 * 60 * 1000;

/// How many requests one operator may have pending at once unless an admin
/// set the operator's own `pending_max` (rules 4 and later): sixteen
/// requesters at the default cannot fill [`PENDING_REQUESTS_MAX`].
pub const PENDING_PER_OPERATOR_DEFAULT: u32 = 64;

/// Request id prefixes the cluster keeps for itself (rules 4 and later): a
/// client's `checkpoint-<n>` once passed for the newest audit checkpoint and
/// switched automatic checkpoints off.
pub const RESERVED_REQUEST_ID_PREFIXES: &[&str] = &[CHECKPOINT_PREFIX, "synod-"];

/// Who sent a signing outcome, and for which attempt of the request.
#[derive(Clone, Copy, Debug)]
pub(super) struct Coordinated {
    pub node: NodeId,
    pub attempt: u32,
}

/// What a coordinator says it made for a request: the signature, who signed,
/// who was caught cheating, and in how many sessions.
pub(super) struct Made<'a> {
    pub signature_hex: &'a str,
    pub signers: &'a [NodeId],
    pub culprits: &'a [NodeId],
    pub sessions: u32,
}

/// What a requester declares about a request, checked against the key's policy.
pub(super) struct Declared<'a> {
    pub purpose: &'a str,
    pub environment: &'a str,
    pub attributes: &'a std::collections::BTreeMap<String, String>,
    /// The request command's expiry: approvals and signing must happen before it.
    pub expires_at_ms: u64,
    /// The key version asked for; the primary when `None`.
    pub version: Option<u32>,
    /// The format the message is in (rules 9 and later); raw when `None`.
    pub format: Option<SignFormat>,
    /// minisign's trusted comment.
    pub trusted_comment: Option<&'a str>,
}

/// Where a request stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RequestStatus {
    Pending,
    Signed { signature: String },
    Failed { reason: String },
}

/// A signing request as the log decided it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub request_id: String,
    pub key_id: String,
    /// The message (hex) while the request is pending; dropped once it is
    /// finished (its hash stays), so finished requests cost little memory.
    pub message: Option<String>,
    pub message_sha256: String,
    pub message_bytes: usize,
    pub purpose: String,
    /// Declared by the requester; the policy may restrict it.
    #[serde(default)]
    pub environment: String,
    /// Declared by the requester (e.g. `amount`); policy tiers read them. A
    /// declaration is the requester's claim, which approvers see and sign.
    #[serde(default)]
    pub attributes: std::collections::BTreeMap<String, String>,
    pub requester: OperatorKey,
    /// The key's policy version when the request was made; approvals name it.
    #[serde(default)]
    pub policy_version: u64,
    /// Approvals collected so far.
    #[serde(default)]
    pub approvals: Vec<super::ApprovalRecord>,
    /// Denials collected so far (rules 10 and later); skipped when empty so
    /// older states keep their bytes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denials: Vec<super::DenialRecord>,
    /// After this (log time) the request is failed and approvals are refused.
    #[serde(default)]
    pub expires_at_ms: u64,
    pub status: RequestStatus,
    /// Earlier attempts under this request id that failed (0 for the first).
    /// A leader cut off while it coordinated an earlier attempt may still get
    /// that attempt's outcome committed; see [`ClusterState::outcome_applies`].
    #[serde(default)]
    pub attempt: u32,
    pub signers: Vec<NodeId>,
    pub culprits: Vec<NodeId>,
    pub sessions: u32,
    pub created_index: u64,
    pub created_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    /// The declared format and what every node read from the message (rules 9
    /// and later, when one was declared).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<FormatInfo>,
}

impl RequestRecord {
    /// A new pending request for `key`.
    fn new(
        request_id: &str,
        key: &super::KeyRecord,
        message_hex: &str,
        requester: OperatorKey,
        declared: &Declared<'_>,
        index: u64,
        now_ms: u64,
    ) -> Self {
        RequestRecord {
            request_id: request_id.to_string(),
            key_id: key.id.clone(),
            message: Some(message_hex.to_string()),
            message_sha256: sha256_hex(message_hex),
            message_bytes: message_hex.len() / 2,
            purpose: declared.purpose.to_string(),
            environment: declared.environment.to_string(),
            attributes: declared.attributes.clone(),
            requester,
            policy_version: key.policy_version,
            approvals: Vec::new(),
            denials: Vec::new(),
            expires_at_ms: declared.expires_at_ms,
            status: RequestStatus::Pending,
            attempt: 0,
            signers: Vec::new(),
            culprits: Vec::new(),
            sessions: 0,
            created_index: index,
            created_at_ms: now_ms,
            finished_at_ms: None,
            format: None,
        }
    }

    /// The message bytes, while pending.
    pub fn message_bytes(&self) -> Option<Vec<u8>> {
        hex::decode(self.message.as_deref()?).ok()
    }
}

/// The request id of the audit checkpoint of record `seq`: the one place it is built.
pub fn checkpoint_request_id(seq: u64) -> String {
    format!("{CHECKPOINT_PREFIX}{seq}")
}

/// The record a checkpoint request id covers, or `None` for any other request id.
pub fn checkpoint_seq(request_id: &str) -> Option<u64> {
    request_id.strip_prefix(CHECKPOINT_PREFIX)?.parse().ok()
}

const CHECKPOINT_PREFIX: &str = "checkpoint-";

pub use synod_proto::format::minisign::global_request_id as minisign_global_request_id;

impl ClusterState {
    /// The API view of a request.
    pub fn request_info(&self, request_id: &str) -> Option<RequestInfo> {
        let r = self.requests.get(request_id)?;
        let key = self.keys.get(&r.key_id);
        let progress = self.policy_progress(r, false).ok();
        let (status, signature, error) = match &r.status {
            RequestStatus::Pending if progress.as_ref().is_some_and(|p| !p.met) => {
                (api::RequestStatus::AwaitingApproval, None, None)
            }
            RequestStatus::Pending => (api::RequestStatus::Pending, None, None),
            RequestStatus::Signed { signature } => (api::RequestStatus::Signed, Some(signature.clone()), None),
            RequestStatus::Failed { reason } => (api::RequestStatus::Failed, None, Some(reason.clone())),
        };
        Some(RequestInfo {
            request_id: r.request_id.clone(),
            key_id: r.key_id.clone(),
            key_name: key.map(|k| k.name.clone()).unwrap_or_default(),
            public_key: key.and_then(|k| k.group_key.clone()).unwrap_or_default(),
            message_sha256: r.message_sha256.clone(),
            message_bytes: r.message_bytes,
            purpose: r.purpose.clone(),
            requester: r.requester,
            status,
            signature,
            signers: r.signers.clone(),
            culprits: r.culprits.clone(),
            sessions: r.sessions,
            error,
            created_index: r.created_index,
            created_at_ms: r.created_at_ms,
            finished_at_ms: r.finished_at_ms,
            environment: r.environment.clone(),
            attributes: r.attributes.clone(),
            approvals: r.approvals.iter().map(|a| a.approver.clone()).collect(),
            denials: r.denials.iter().map(|d| format!("{}: {}", d.approver, d.reason)).collect(),
            approval_progress: progress.map(|p| p.summary).unwrap_or_default(),
            policy_version: r.policy_version,
            key_version: key.map_or(0, |k| k.version),
            expires_at_ms: r.expires_at_ms,
            format: r.format.clone(),
            statement_version: if self.rules >= super::RULES_SIGN_FORMATS { 2 } else { 1 },
        })
    }

    /// A sign request whose id is already known, with the same message from the
    /// same requester: a pending or signed one is answered as it stands. A failed
    /// one is replaced by [`Self::sign_request`] with a fresh attempt (new expiry,
    /// current policy version, approvals given again); a replayed command is left
    /// to the replay check. Returns `None` when the command must go on.
    ///
    /// A signed minisign request whose global signature failed (its signers
    /// were unreachable, say) is answered by asking for the global signature
    /// again: the client's way to finish the artifact.
    pub(super) fn existing_request(&mut self, index: u64, envelope: &Envelope, author: OperatorKey) -> Option<String> {
        let synod_proto::Command::SignRequest { request_id, message, format, .. } = &envelope.command else {
            return None;
        };
        let record = self.requests.get(request_id)?;
        if record.message_sha256 != sha256_hex(message)
            || record.requester != author
            || record.format.as_ref().map(|f| f.format) != *format
        {
            return None;
        }
        match &record.status {
            RequestStatus::Pending => Some(format!("request {request_id} is already pending")),
            RequestStatus::Signed { signature } => {
                let signature = hex::decode(signature).ok().and_then(|b| <[u8; 64]>::try_from(b).ok());
                let again = signature.and_then(|sig| self.follow_with_global_signature(index, request_id, sig));
                Some(match again {
                    Some(global) => {
                        format!("request {request_id} is already signed; its global signature is asked for again ({global})")
                    }
                    None => format!("request {request_id} is already signed"),
                })
            }
            RequestStatus::Failed { .. } => None,
        }
    }

    pub(super) fn sign_request(
        &mut self,
        index: u64,
        requester: OperatorKey,
        request_id: &str,
        key_name: &str,
        message_hex: &str,
        mut declared: Declared<'_>,
    ) -> Result<String, Refusal> {
        let bounded =
            self.rules >= super::RULES_BOUNDED_CLIENTS && !crate::faults::enabled(crate::faults::SKIP_CLIENT_BOUNDS);
        if let Some(prefix) = RESERVED_REQUEST_ID_PREFIXES.iter().find(|p| request_id.starts_with(**p)) {
            if bounded {
                return Err(format!(
                    "request ids starting with {prefix:?} are reserved for the cluster's own requests; pick another id"
                )
                .into());
            }
        }
        // A failed request sent again (same message, same requester) is a fresh attempt.
        let attempt = match self.requests.get(request_id) {
            None => 0,
            Some(r)
                if matches!(r.status, RequestStatus::Failed { .. })
                    && r.message_sha256 == sha256_hex(message_hex)
                    && r.requester == requester
                    && r.format.as_ref().map(|f| f.format) == declared.format =>
            {
                r.attempt + 1
            }
            Some(_) => {
                return Err(Refusal::conflict(format!(
                    "request id {request_id} already names another message (or requester); one request id, one message"
                )))
            }
        };
        if key_name == synod_proto::authz::AUDIT_KEY_NAME {
            return Err("the audit key signs audit checkpoints only".into());
        }
        let key = self.requested_version(key_name, declared.version)?;
        let ignore_status = key.status.is_out_of_service() && crate::faults::enabled(crate::faults::SKIP_KEY_STATUS);
        if key.status != KeyStatus::Active && !ignore_status {
            return Err(key.not_signing().into());
        }
        if bounded && key.policy_unset {
            return Err(format!(
                "key {key_name} has no signing policy yet, so it signs nothing; an admin sets one with \
                 `synod key policy set {key_name} --file policy.json` (under the admin quorum)"
            )
            .into());
        }
        if self.pending_requests.len() >= PENDING_REQUESTS_MAX {
            return Err(format!("{PENDING_REQUESTS_MAX} requests are already pending; retry later").into());
        }
        let policy = &key.policy;
        let requester_name = self.operator_by_key(&requester).map(|op| op.name.clone()).unwrap_or_default();
        if bounded {
            let quota =
                self.operator_by_key(&requester).and_then(|op| op.pending_max).unwrap_or(PENDING_PER_OPERATOR_DEFAULT)
                    as usize;
            let theirs = self
                .pending_requests
                .iter()
                .filter(|id| self.requests.get(*id).is_some_and(|r| r.requester == requester))
                .count();
            if theirs >= quota {
                return Err(format!(
                    "{requester_name} already has {theirs} requests pending (at most {quota}); wait for some to \
                     finish, or ask an admin to raise this operator's pending_max"
                )
                .into());
            }
        }
        if !policy.requesters.is_empty() && !policy.requesters.contains(&requester_name) {
            return Err(
                format!("{requester_name} is not among the requesters the policy of key {key_name} allows").into()
            );
        }
        if !policy.environments.is_empty() && !policy.environments.iter().any(|e| e == declared.environment) {
            return Err(format!(
                "environment {:?} is not allowed for key {key_name} (allowed: {:?})",
                declared.environment, policy.environments
            )
            .into());
        }
        if !policy.purposes.is_empty() && !policy.purposes.iter().any(|p| p == declared.purpose) {
            return Err(format!(
                "purpose {:?} is not allowed for key {key_name} (allowed: {:?})",
                declared.purpose, policy.purposes
            )
            .into());
        }
        if policy.expires_at_ms.is_some_and(|at| at < self.time_ms) {
            return Err(format!("the policy of key {key_name} has expired; an admin must renew it").into());
        }
        let format = match declared.format {
            Some(format) => {
                // Command::validate parsed it already; read again here for what it names.
                let bytes = hex::decode(message_hex).map_err(|_| "the message is not hex")?;
                let inspection = synod_proto::format::inspect(format, &bytes).map_err(|e| e.to_string())?;
                Some(FormatInfo {
                    format,
                    inspection,
                    trusted_comment: declared.trusted_comment.map(str::to_string),
                    global_of: None,
                })
            }
            None => None,
        };
        let named = format.as_ref().map_or(SignFormat::Raw, |f| f.format);
        if !policy.formats.is_empty() && !policy.formats.contains(&named) {
            let allowed: Vec<&str> = policy.formats.iter().map(|f| f.name()).collect();
            return Err(format!(
                "key {key_name} does not sign the {named} format (its policy allows: {}); sign with `--format {}`",
                allowed.join(", "),
                allowed[0]
            )
            .into());
        }
        if let Some(namespace) = format.as_ref().and_then(|f| f.inspection.namespace.as_deref()) {
            let ignore = crate::faults::enabled(crate::faults::IGNORE_NAMESPACE_POLICY);
            if !policy.namespaces.is_empty() && !policy.namespaces.iter().any(|n| n == namespace) && !ignore {
                return Err(format!(
                    "key {key_name} does not sign in SSHSIG namespace {namespace:?} (its policy allows: {})",
                    policy.namespaces.join(", ")
                )
                .into());
            }
        }
        let needs = key.policy.requirements(declared.attributes);
        if bounded {
            // A request's life is the log's, not its command's: at most
            // REQUEST_PENDING_MS_MAX, or the policy's approval window when
            // people must approve it.
            let life = if needs.is_empty() {
                REQUEST_PENDING_MS_MAX
            } else {
                policy.approval_window_ms.unwrap_or(REQUEST_APPROVAL_MS_DEFAULT).min(COMMAND_TTL_MS_MAX)
            };
            declared.expires_at_ms = declared.expires_at_ms.min(self.time_ms.saturating_add(life));
        }
        let record = RequestRecord {
            attempt,
            format,
            ..RequestRecord::new(request_id, key, message_hex, requester, &declared, index, self.time_ms)
        };
        let detail = if needs.is_empty() {
            format!("request {request_id} pending: {} bytes with key {key_name}", record.message_bytes)
        } else {
            let summary: Vec<String> = needs.iter().map(|(g, n)| format!("{n} from [{}]", g.join(", "))).collect();
            format!("request {request_id} awaits approvals: {}", summary.join("; "))
        };
        self.requests.insert(request_id.to_string(), record);
        self.pending_requests.insert(request_id.to_string());
        Ok(detail)
    }

    fn pending_request(&self, request_id: &str) -> Result<&RequestRecord, Refusal> {
        let record = self.requests.get(request_id).ok_or(format!("no request {request_id}"))?;
        if record.status != RequestStatus::Pending {
            return Err(format!("request {request_id} is no longer pending").into());
        }
        Ok(record)
    }

    /// Turns the audit chain's head (before this entry) into a request on the
    /// audit key: `checkpoint-<seq>`, signing [`checkpoint_message`].
    pub(super) fn audit_checkpoint(&mut self, index: u64, author: OperatorKey) -> Result<String, Refusal> {
        use synod_proto::authz::{checkpoint_message, AUDIT_KEY_NAME};
        let key = self
            .key_by_name(AUDIT_KEY_NAME)
            .filter(|k| k.status == KeyStatus::Active)
            .ok_or("there is no active audit key; an admin creates it with `synod key create audit`")?;
        let head = self.audit_head.clone();
        if head.seq == 0 {
            return Err("the audit chain is empty".into());
        }
        let request_id = checkpoint_request_id(head.seq);
        if self.requests.contains_key(&request_id) {
            return Ok(format!("{request_id} already exists"));
        }
        if self.rules >= super::RULES_BOUNDED_CLIENTS {
            // One checkpoint waits at a time, inside the shared pending cap.
            let audit_key = key.id.clone();
            if let Some(waiting) =
                self.pending_requests.iter().find(|id| self.requests.get(*id).is_some_and(|r| r.key_id == audit_key))
            {
                return Ok(format!("{waiting} is still pending; the next checkpoint waits for it"));
            }
            if self.pending_requests.len() >= PENDING_REQUESTS_MAX {
                return Err(format!("{PENDING_REQUESTS_MAX} requests are already pending; retry later").into());
            }
        }
        let hash: [u8; 32] = hex::decode(&head.hash).ok().and_then(|b| b.try_into().ok()).ok_or("bad head hash")?;
        let cluster = self.cluster_id.clone().unwrap_or_default();
        let message = hex::encode(checkpoint_message(&cluster, head.seq, &hash));
        let declared = Declared {
            purpose: "audit-checkpoint",
            environment: "",
            attributes: &Default::default(),
            expires_at_ms: self.time_ms + CHECKPOINT_TTL_MS,
            version: None,
            format: None,
            trusted_comment: None,
        };
        let record = RequestRecord::new(&request_id, key, &message, author, &declared, index, self.time_ms);
        self.requests.insert(request_id.clone(), record);
        self.pending_requests.insert(request_id.clone());
        Ok(format!("{request_id}: audit head {} {} to be signed by the audit key", head.seq, head.hash))
    }

    /// An outcome applies only to the attempt it was coordinated for. A leader
    /// cut off while it coordinated an earlier attempt may get that outcome
    /// committed late, after the client sent the failed request again (found by
    /// the simulator); applied, it would end the fresh attempt, or store a
    /// signature the fresh attempt's approvals never covered.
    fn outcome_applies(&self, record: &RequestRecord, by: Coordinated) -> Result<(), Refusal> {
        if by.attempt == record.attempt {
            return Ok(());
        }
        Err(format!(
            "the outcome from node {} is for attempt {} of request {}, which is at attempt {}; not applied",
            by.node,
            by.attempt + 1,
            record.request_id,
            record.attempt + 1
        )
        .into())
    }

    pub(super) fn sign_result(
        &mut self,
        index: u64,
        request_id: &str,
        by: Coordinated,
        made: Made<'_>,
    ) -> Result<String, Refusal> {
        let Made { signature_hex, signers, culprits, sessions } = made;
        let record = self.pending_request(request_id)?;
        self.outcome_applies(record, by)?;
        let node = by.node;
        let key = self.keys.get(&record.key_id).ok_or("the request's key is gone")?;
        let group = key.group_key_bytes().ok_or("the request's key has no group key")?;
        let message = record.message_bytes().ok_or("the request has no message")?;
        let signature: [u8; 64] = hex::decode(signature_hex)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("signature is not 64 bytes of hex")?;
        let verifying = ed25519_dalek::VerifyingKey::from_bytes(&group).map_err(|_| "group key is not a point")?;
        verifying
            .verify_strict(&message, &ed25519_dalek::Signature::from_bytes(&signature))
            .map_err(|_| format!("signature from node {node} does not verify for request {request_id}; not stored"))?;
        if signers.len() < usize::from(key.threshold) || signers.iter().any(|s| !key.participants.contains(s)) {
            return Err(format!("signer list {signers:?} is not {} participants of the key", key.threshold).into());
        }
        let now = self.time_ms;
        let record = self.requests.get_mut(request_id).expect("checked above");
        record.status = RequestStatus::Signed { signature: signature_hex.to_string() };
        record.signers = signers.to_vec();
        record.culprits = culprits.to_vec();
        record.sessions = sessions;
        record.message = None;
        record.finished_at_ms = Some(now);
        self.pending_requests.remove(request_id);
        let global = self.follow_with_global_signature(index, request_id, signature);
        let then = global.map(|id| format!("; its minisign global signature is request {id}")).unwrap_or_default();
        Ok(format!("request {request_id} signed by nodes {signers:?} (coordinated by node {node}){then}"))
    }

    /// minisign signs twice: the file's hash, then (the global signature) that
    /// signature with the trusted comment. Once a minisign request is signed,
    /// the state makes the second request itself, authorised by the first: its
    /// message is the committed signature and the committed comment, so nothing
    /// a client or leader says can change what it signs, and approvers see the
    /// request once. Returns the new request's id.
    ///
    /// Made again (a fresh attempt) when it failed and the parent is sent again;
    /// a pending or signed one stays as it is.
    fn follow_with_global_signature(&mut self, index: u64, request_id: &str, signature: [u8; 64]) -> Option<String> {
        let parent = self.requests.get(request_id)?;
        let info = parent.format.as_ref().filter(|f| f.format == SignFormat::Minisign && f.global_of.is_none())?;
        let comment = info.trusted_comment.clone().unwrap_or_default();
        let id = minisign_global_request_id(request_id);
        let attempt = match self.requests.get(&id) {
            None => 0,
            Some(earlier) if matches!(earlier.status, RequestStatus::Failed { .. }) => earlier.attempt + 1,
            Some(_) => return None,
        };
        let mut message = signature.to_vec();
        if !crate::faults::enabled(crate::faults::GLOBAL_SIGNS_WITHOUT_COMMENT) {
            message.extend_from_slice(comment.as_bytes());
        }
        let message_hex = hex::encode(&message);
        let now = self.time_ms;
        let record = RequestRecord {
            request_id: id.clone(),
            message_sha256: sha256_hex(&message_hex),
            message_bytes: message.len(),
            message: Some(message_hex),
            approvals: Vec::new(),
            denials: Vec::new(),
            // Its own short life: the parent may have waited long for approvals.
            expires_at_ms: now.saturating_add(REQUEST_PENDING_MS_MAX),
            status: RequestStatus::Pending,
            attempt,
            signers: Vec::new(),
            culprits: Vec::new(),
            sessions: 0,
            created_index: index,
            created_at_ms: now,
            finished_at_ms: None,
            format: Some(FormatInfo {
                format: SignFormat::Minisign,
                inspection: synod_proto::format::Inspection {
                    summary: format!("minisign global signature of request {request_id}"),
                    ..info.inspection.clone()
                },
                trusted_comment: Some(comment),
                global_of: Some(request_id.to_string()),
            }),
            ..parent.clone()
        };
        // One per minisign request, so the pending cap is not checked: the
        // parent held a slot until this moment.
        self.requests.insert(id.clone(), record);
        self.pending_requests.insert(id.clone());
        Some(id)
    }

    /// For minisign's global signature request: that its parent is signed and
    /// its message is exactly the parent's signature and trusted comment. Every
    /// signer checks this in its own state before it releases a share.
    pub fn global_signature_authorised(&self, request: &RequestRecord) -> Option<Result<(), String>> {
        let parent_id = request.format.as_ref()?.global_of.as_deref()?;
        let check = || {
            let parent = self.requests.get(parent_id).ok_or(format!("request {parent_id} is not in the state"))?;
            let RequestStatus::Signed { signature } = &parent.status else {
                return Err(format!("request {parent_id} is not signed, so its global signature is not due"));
            };
            let comment = parent.format.as_ref().and_then(|f| f.trusted_comment.as_deref()).unwrap_or_default();
            let expected = format!("{signature}{}", hex::encode(comment.as_bytes()));
            if request.message.as_deref().is_some_and(|m| m != expected) || request.requester != parent.requester {
                return Err(format!(
                    "request {} does not sign request {parent_id}'s signature and trusted comment",
                    request.request_id
                ));
            }
            Ok(())
        };
        Some(check())
    }

    pub(super) fn sign_failed(
        &mut self,
        request_id: &str,
        by: Coordinated,
        reason: &str,
        culprits: &[NodeId],
    ) -> Result<String, Refusal> {
        let record = self.pending_request(request_id)?;
        self.outcome_applies(record, by)?;
        self.fail_request(request_id, format!("node {}: {reason}", by.node), culprits);
        Ok(format!("request {request_id} failed: {reason}"))
    }

    pub(super) fn fail_request(&mut self, request_id: &str, reason: String, culprits: &[NodeId]) {
        let now = self.time_ms;
        if let Some(record) = self.requests.get_mut(request_id) {
            record.status = RequestStatus::Failed { reason };
            record.culprits = culprits.to_vec();
            record.finished_at_ms = Some(now);
            record.message = None;
        }
        self.pending_requests.remove(request_id);
    }

    /// Fails every pending request of `key_id`, saying why; returns how many.
    pub(super) fn fail_requests_of_key(&mut self, key_id: &str, reason: &str) -> usize {
        let theirs: Vec<String> = self
            .pending_requests
            .iter()
            .filter(|id| self.requests.get(*id).is_some_and(|r| r.key_id == key_id))
            .cloned()
            .collect();
        for id in &theirs {
            self.fail_request(id, reason.to_string(), &[]);
        }
        theirs.len()
    }

    /// Fails pending requests whose expiry (entry time) has passed, and
    /// (rules 4 and later) those whose key's policy has expired.
    pub(super) fn expire_requests(&mut self) {
        let now = self.time_ms;
        let policy_expired = |r: &RequestRecord| {
            self.rules >= super::RULES_BOUNDED_CLIENTS
                && self.keys.get(&r.key_id).is_some_and(|k| k.policy.expires_at_ms.is_some_and(|at| at < now))
        };
        let stale: Vec<(String, &str)> = self
            .pending_requests
            .iter()
            .filter_map(|id| {
                let r = self.requests.get(id)?;
                if r.expires_at_ms < now {
                    Some((id.clone(), "expired before it was signed"))
                } else if policy_expired(r) {
                    Some((id.clone(), "its key's policy expired before it was signed; an admin must renew the policy"))
                } else {
                    None
                }
            })
            .collect();
        for (id, reason) in stale {
            self.fail_request(&id, reason.to_string(), &[]);
        }
    }
}

/// SHA-256 (hex) of the message a hex string encodes.
fn sha256_hex(message_hex: &str) -> String {
    hex::encode(Sha256::digest(hex::decode(message_hex).unwrap_or_default()))
}

//! Who is calling: the one identity every client call is judged by.
//!
//! A [`Caller`] is the connection's client certificate (issued by the cluster
//! CA) and, when the call carries a read signature
//! ([`synod_proto::readsig`]), the operator whose key made it, looked up in the
//! applied state with the roles it holds now. The HTTP API builds one per call
//! ([`Caller::identify`]); the simulator's clients use
//! [`Caller::in_process`]; a later surface (a web console, a failover client)
//! builds one the same way and gets the same answers. The rules of what each
//! caller may read are here; `Node::serve_client` applies them to every call:
//!
//! - no certificate, or a certificate without an operator: health only, and
//!   the writes (they carry their own signed command); before genesis, when
//!   there are no operators, status and metrics too;
//! - any operator: status, metrics (Prometheus, which cannot sign, scrapes the
//!   separate metrics listener, `metrics_addr`), keys, key-value records,
//!   operators, the audit head;
//! - a request: its requester (with its signature), the approvers its key's
//!   policy names (without the signature), auditors and admins;
//! - audit records: auditors and admins all; other operators those of the
//!   requests they may read;
//! - proposals and checkpoints: auditors and admins;
//! - a command's outcome (`GET /v1/commands/{id}`): its author and admins;
//!   that a command is not known, any operator.
//!
//! A read may also say which log index its client has already seen
//! (`min_index`, [`synod_proto::api::MIN_INDEX_PARAM`]); the caller carries it,
//! and the node serves the read only once it has applied that far.

use std::collections::BTreeSet;

use synod_proto::authz::Role;
use synod_proto::readsig::ReadSignature;
use synod_proto::{NodeError, OperatorKey};

use crate::pki::PeerIdentity;
use crate::state::{AuditRecord, ClusterState, RequestRecord};

/// What to tell a caller whose read carries no operator signature.
const SIGN_READS: &str = "sign the read with your operator key: set SYNOD_OPERATOR_KEY (or --operator-key) to your \
                          operator key file and the synod CLI signs every read";

/// An operator whose read signature verified, as the applied state knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedOperator {
    /// The operator's name in the registry, for messages and policy lists.
    pub name: String,
    /// The key that signed the read: requests are matched to their requester by it.
    pub key: OperatorKey,
    /// The roles the operator holds when the call is served; they decide what it sees.
    pub roles: BTreeSet<Role>,
}

/// Who is calling, for every client call.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The connection's client certificate, when it presented one the CA issued.
    pub certificate: Option<PeerIdentity>,
    /// The operator who signed the call, when it carried a read signature.
    pub operator: Option<VerifiedOperator>,
    /// The highest log index the caller has seen (`min_index` in the read's
    /// query): the node answers a read only once it has applied that far, so
    /// a client reads its own writes whichever node serves it.
    pub min_index: Option<u64>,
}

impl Caller {
    /// The caller of an HTTP call: `certificate` from the TLS session and, if
    /// `read_signature` (the header) is present, the operator it proves,
    /// verified for `cluster_id`, `method` and `path_and_query`, and fresh by one of `clocks_ms`.
    /// A signature that is present but bad is refused with why, never ignored.
    pub fn identify(
        state: &ClusterState,
        certificate: Option<PeerIdentity>,
        read_signature: Option<&str>,
        method: &str,
        path_and_query: &str,
        clocks_ms: &[u64],
    ) -> Result<Caller, NodeError> {
        let min_index = min_index_of(path_and_query);
        let Some(header) = read_signature else {
            return Ok(Caller { certificate, operator: None, min_index });
        };
        let refuse = |why: String| NodeError::unauthenticated(format!("read signature refused: {why}"));
        let signature = ReadSignature::parse(header).map_err(refuse)?;
        let cluster_id = state.cluster_id.as_deref().ok_or_else(|| {
            NodeError::not_initialised(
                "this node has no cluster yet, so no operator can sign a read; run `synod cluster init`",
            )
        })?;
        // Fresh by any of the node's clocks (its own, the log's): the first one's
        // refusal is the one reported.
        let mut verdicts = clocks_ms.iter().map(|now| signature.verify(cluster_id, method, path_and_query, *now));
        let first = verdicts.next().unwrap_or_else(|| Err("this node has no clock to judge the read by".into()));
        if first.is_err() && !verdicts.any(|v| v.is_ok()) {
            first.map_err(refuse)?;
        }
        let operator = state.operators.values().find(|op| op.key == Some(signature.key)).ok_or_else(|| {
            refuse(format!(
                "key {} belongs to no operator of cluster {cluster_id}; an admin adds operators with `synod operator add`",
                signature.key.to_hex()
            ))
        })?;
        let operator =
            VerifiedOperator { name: operator.name.clone(), key: signature.key, roles: operator.roles.clone() };
        Ok(Caller { certificate, operator: Some(operator), min_index })
    }

    /// A caller known only by its connection's certificate (none: anyone), with
    /// no operator and no index to wait for.
    pub fn anonymous(certificate: Option<PeerIdentity>) -> Caller {
        Caller { certificate, operator: None, min_index: None }
    }

    /// The simulator's clients, which call the node inside one process with no
    /// TLS or HTTP in between: a certificate and an operator that sees everything.
    /// Nothing on the network builds one.
    pub fn in_process() -> Caller {
        Caller {
            certificate: Some(PeerIdentity::Client("in-process".into())),
            operator: Some(VerifiedOperator {
                name: "in-process".into(),
                key: OperatorKey([0; 32]),
                roles: [Role::Admin, Role::Auditor].into(),
            }),
            min_index: None,
        }
    }

    /// A console session's caller ([`crate::console`]): `operator` logged in with an approved
    /// passkey on this node's console. Browsers present no client certificate; the passkey
    /// login stands in for it and for the read signature, so the session reads exactly what
    /// this operator may read through the API.
    pub fn console_session(operator: VerifiedOperator) -> Caller {
        Caller { certificate: Some(PeerIdentity::Client("console".into())), operator: Some(operator), min_index: None }
    }

    /// Refuses a caller without a client certificate from the cluster CA.
    pub fn require_certificate(&self) -> Result<(), NodeError> {
        match self.certificate {
            Some(_) => Ok(()),
            None => Err(NodeError::unauthenticated(
                "this endpoint needs a client certificate from the cluster CA; set SYNOD_CLIENT_CERT and \
                 SYNOD_CLIENT_KEY (create one with `synod ca issue client`)",
            )),
        }
    }

    /// The operator, or a refusal saying that reading `what` needs one.
    pub fn require_operator(&self, what: &str) -> Result<&VerifiedOperator, NodeError> {
        self.require_certificate()?;
        self.operator.as_ref().ok_or_else(|| {
            NodeError::unauthenticated(format!(
                "reading {what} needs an operator, and this call carries no operator signature; {SIGN_READS}"
            ))
        })
    }

    /// Any operator once the node has a cluster; before genesis there are no
    /// operators, and a certificate is enough (`synod cluster init` reads
    /// status to find the members). For the node's status and metrics.
    pub fn require_operator_of(&self, state: &ClusterState, what: &str) -> Result<(), NodeError> {
        match state.cluster_id {
            Some(_) => self.require_operator(what).map(|_| ()),
            None => self.require_certificate(),
        }
    }

    /// An auditor or admin, or a refusal naming who may read `what`.
    pub fn require_overseer(&self, what: &str) -> Result<&VerifiedOperator, NodeError> {
        let operator = self.require_operator(what)?;
        if operator.oversees() {
            return Ok(operator);
        }
        Err(NodeError::refused(format!(
            "reading {what} needs an auditor or an admin, and operator {} has neither role; an admin grants one \
             with `synod operator add` under the admin policy",
            operator.name
        )))
    }

    /// An admin, or a refusal naming who may read `what`.
    pub fn require_admin(&self, what: &str) -> Result<&VerifiedOperator, NodeError> {
        let operator = self.require_operator(what)?;
        if operator.roles.contains(&Role::Admin) {
            return Ok(operator);
        }
        Err(NodeError::refused(format!(
            "reading {what} needs an admin, and operator {} is not one; ask an admin to run it",
            operator.name
        )))
    }

    /// How much of `request` this caller may see, or a refusal saying who may read it.
    pub fn request_access(&self, state: &ClusterState, request: &RequestRecord) -> Result<Access, NodeError> {
        let what = format!("request {}", request.request_id);
        let operator = self.require_operator(&what)?;
        match operator.request_access(state, request) {
            Some(access) => Ok(access),
            None => Err(NodeError::refused(format!(
                "reading request {} needs the operator who made it, an approver named by its key's policy, an auditor \
                 or an admin; operator {} is none of these",
                request.request_id, operator.name
            ))),
        }
    }
}

impl Caller {
    /// Whether this caller may read the outcome of command `command_id`,
    /// signed by `author`: its author and admins may; others are refused,
    /// saying who may.
    pub fn may_read_command(&self, command_id: &str, author: &OperatorKey) -> Result<(), NodeError> {
        let what = format!("the outcome of command {command_id}");
        let operator = self.require_operator(&what)?;
        if operator.key == *author || operator.roles.contains(&Role::Admin) {
            return Ok(());
        }
        Err(NodeError::refused(format!(
            "reading {what} needs the operator who signed it or an admin; operator {} is neither",
            operator.name
        )))
    }
}

/// The `min_index` of a read's query, if it has one that parses.
fn min_index_of(path_and_query: &str) -> Option<u64> {
    let (_, query) = path_and_query.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        (name == synod_proto::api::MIN_INDEX_PARAM).then(|| value.parse().ok()).flatten()
    })
}

/// What a caller may see of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Everything, the signature included: its requester, auditors, admins.
    Full,
    /// Everything but the signature: an approver named by the key's policy,
    /// who must see what it approves but has no use for the output.
    WithoutSignature,
}

impl VerifiedOperator {
    /// Auditors and admins see every request and the whole audit log.
    pub fn oversees(&self) -> bool {
        self.roles.contains(&Role::Auditor) || self.roles.contains(&Role::Admin)
    }

    /// What this operator may see of `request`, or `None`.
    pub fn request_access(&self, state: &ClusterState, request: &RequestRecord) -> Option<Access> {
        if self.oversees() || request.requester == self.key {
            return Some(Access::Full);
        }
        if self.roles.contains(&Role::Approver) && self.approves_for(state, request) {
            return Some(Access::WithoutSignature);
        }
        None
    }

    /// Whether the request's key's policy (any tier) names this operator as an
    /// approver, or its approval is already on the request.
    fn approves_for(&self, state: &ClusterState, request: &RequestRecord) -> bool {
        if request.approvals.iter().any(|a| a.approver == self.name) {
            return true;
        }
        let Some(key) = state.keys.get(&request.key_id) else { return false };
        let policy = &key.policy;
        policy.approvers.iter().chain(policy.tiers.iter().flat_map(|t| t.approvers.iter())).any(|n| *n == self.name)
    }

    /// Whether `request` waits for this operator's approval: the operator is an
    /// approver (role), a requirement of its key's policy for the request's
    /// declarations names it (`Policy::requirements`, tiers included), and its
    /// approval is not on the request yet. Whether the request still needs
    /// approvals at all is the caller's to check (its status).
    pub fn is_asked_to_approve(&self, state: &ClusterState, request: &RequestRecord) -> bool {
        if !self.roles.contains(&Role::Approver) || request.approvals.iter().any(|a| a.approver == self.name) {
            return false;
        }
        let Some(key) = state.keys.get(&request.key_id) else { return false };
        key.policy.requirements(&request.attributes).iter().any(|(group, _)| group.contains(&self.name))
    }

    /// Whether this operator may see `record`: overseers all, others the
    /// records of requests they may read.
    pub fn may_read_audit_record(&self, state: &ClusterState, record: &AuditRecord) -> bool {
        if self.oversees() {
            return true;
        }
        record
            .request_id
            .as_deref()
            .and_then(|id| state.requests.get(id))
            .is_some_and(|request| self.request_access(state, request).is_some())
    }
}

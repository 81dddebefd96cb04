//! The replicated cluster state and the one function that changes it.
//!
//! [`ClusterState::apply`] is pure and deterministic: it reads nothing but its
//! arguments (the entry's own time, never a clock), iterates only ordered maps,
//! and verifies every command's author signature and authority itself. Every
//! node runs it on every committed entry, so a leader that appends a forged,
//! altered or replayed command changes nothing anywhere; the refusal is logged
//! and counted.

mod audit;
mod authz;
mod endorse;
mod keys;
mod lifecycle;
mod passkeys;
mod refresh;
mod repair;
mod signing;
mod versions;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};
use synod_proto::api::{KvRecord, Rejection};
use synod_proto::command::{Authority, COMMAND_TTL_MS_MAX};
use synod_proto::{Command, Envelope, LogEntry, NodeAddr, NodeId, OperatorKey, Outcome, SignedCommand};

pub use audit::{verify_chain, AuditHead, AuditRecord, GENESIS_HASH};
pub use authz::{ApprovalRecord, DenialRecord, Operator, Progress, Proposal};
pub use endorse::{Endorsement, ENDORSED_POINTS_KEPT};
pub use keys::{frost_identifier, package_hash, KeyOrigin, KeyRecord, KeyStatus, DKG_TIMEOUT_MS};
pub use lifecycle::{duration_words, RULES_KEY_LIFECYCLE};
pub use passkeys::{algorithm_name, Passkey, PendingPasskey};
pub use refresh::{commitment_points, zero_polynomial_at, Refresh, RefreshFailure, RULES_KEY_REFRESH};
pub use repair::{lagrange, point_hex, public_of, Repair, RepairFailure};
pub use signing::{
    checkpoint_request_id, checkpoint_seq, RequestRecord, RequestStatus, PENDING_PER_OPERATOR_DEFAULT,
    PENDING_REQUESTS_MAX, REQUEST_APPROVAL_MS_DEFAULT, REQUEST_PENDING_MS_MAX, RESERVED_REQUEST_ID_PREFIXES,
};
pub use versions::RULES_KEY_VERSIONS;

/// How many recent refusals the state keeps for `status`.
pub const REJECTIONS_KEPT_MAX: usize = 32;

/// The rules a genesis made today names ([`Command::VersionedGenesis`]). A
/// rule that changes how an entry is judged gets a new version, and a state
/// keeps the version its genesis named, so a log replays exactly as it
/// applied, whatever binary replays it. Versions:
/// - 0: the rules before versioning (a plain [`Command::Genesis`], or a state
///   from before, with no `rules` field): any member may report a signing
///   outcome.
/// - 1: signing outcomes are accepted only from the node that took up signing
///   in the entry's term ([`Command::Coordinate`]).
/// - 2: every field of a command is within its limit
///   ([`synod_proto::limits::check_envelope`], as at admission).
/// - 3: the cluster id is derived from the genesis
///   ([`synod_proto::command::cluster_id_of_genesis`]); the name the genesis
///   envelope carries becomes `cluster_name`.
/// - 4: what one client can hold open is bounded ([`RULES_BOUNDED_CLIENTS`]).
/// - 5: keys can be disabled, enabled and destroyed after a waiting period
///   fixed at genesis ([`RULES_KEY_LIFECYCLE`]).
/// - 6: keys have versions; a rotation makes a new one, and the version it
///   replaces retires after an overlap ([`RULES_KEY_VERSIONS`]).
/// - 7: a key's shares can be refreshed to a new generation, and one node's
///   share repaired (or a new member enrolled), with the same public key
///   ([`RULES_KEY_REFRESH`]).
/// - 8: the state keeps what each command did, by command id, until shortly
///   after the command expires ([`RULES_COMMAND_OUTCOMES`]).
/// - 9: a sign request may declare its format, which every node parses; a
///   policy may restrict formats and SSHSIG namespaces; approvals sign a
///   version 2 statement that names the format and the artifact hash; a
///   minisign request's signature is followed by its global signature
///   ([`RULES_SIGN_FORMATS`]).
/// - 10: an approver may deny a pending request with a signed reason, and a
///   requester may cancel their own; either fails it ([`RULES_REQUEST_DENY_CANCEL`]).
pub use synod_proto::command::RULES_CURRENT;
/// The first rules version that needs a take-up before signing outcomes.
pub const RULES_COORDINATOR: u32 = 1;
/// The first rules version that checks every field's limit at apply.
pub const RULES_FIELD_LIMITS: u32 = 2;
/// The first rules version whose cluster id is derived from the genesis.
pub const RULES_DERIVED_CLUSTER_ID: u32 = 3;
/// The first rules version that bounds what one client can hold open: an
/// operator command issued at most [`ISSUED_AHEAD_MS_MAX`] ahead of the log's
/// time; requests pending at most [`signing::REQUEST_PENDING_MS_MAX`] (or their
/// policy's approval window) and [`signing::PENDING_PER_OPERATOR_DEFAULT`] per
/// requester; reserved request ids refused; one checkpoint pending at a time;
/// removing an operator fails their requests and drops their approvals; a new
/// key signs nothing until it has a policy; proposals per admin bounded.
pub const RULES_BOUNDED_CLIENTS: u32 = 4;
/// How far ahead of the log's time an operator's command may say it was
/// issued (ms). Beyond it the command is refused: its validity window would
/// reach past what the log's time can check.
pub const ISSUED_AHEAD_MS_MAX: u64 = 5 * 60 * 1000;
/// How many proposals one admin may have waiting at once.
pub const PROPOSALS_PER_ADMIN_MAX: usize = 16;
/// The first rules version whose state keeps each command's outcome by
/// command id ([`ClusterState::outcomes`]), for `GET /v1/commands/{id}`: a
/// client whose write's answer was lost learns what it did before it sends
/// it again. The records are part of the state every node digests, so a
/// cluster whose genesis named older rules keeps none and its state's bytes
/// stay what older binaries compute.
pub const RULES_COMMAND_OUTCOMES: u32 = 8;
/// The first rules version whose sign requests may declare a signing format
/// ([`synod_proto::format`]). Every field it adds to the state is skipped when
/// empty, so a cluster whose genesis named older rules keeps its state's bytes.
pub const RULES_SIGN_FORMATS: u32 = 9;
/// The first rules version with signed denials and requester cancellations
/// of a pending request. The denials it records are skipped when empty, so a
/// cluster whose genesis named older rules keeps its state's bytes.
pub const RULES_REQUEST_DENY_CANCEL: u32 = 10;
/// The first rules version with passkeys (WebAuthn approvals and denials, the
/// replicated relying party, registrations the admins approve) and webhooks.
/// What it adds to the state is skipped when empty.
pub const RULES_PASSKEYS: u32 = 11;
/// How long a command's outcome is kept after the command expires (ms): long
/// enough for a client that lost an answer near the end of its command's life
/// to still find it; until then, "not known and past its expiry" means it
/// never committed.
pub const OUTCOME_KEPT_AFTER_EXPIRY_MS: u64 = 10 * 60 * 1000;
/// How many terms' coordinators the state remembers. Entries apply in term
/// order, so only the newest is ever consulted; a few more cost nothing and
/// help `status` readers.
pub const COORDINATOR_TERMS_KEPT_MAX: usize = 8;

/// Everything the log has decided so far. Serialised whole into snapshots.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Set by the genesis command; every later command and approval must name
    /// it. Under [`RULES_DERIVED_CLUSTER_ID`] it is derived from the genesis
    /// envelope; before, it is the name the genesis envelope carried.
    pub cluster_id: Option<String>,
    /// The name the operator chose at `cluster init` (the genesis envelope's
    /// `cluster_id`), kept as a readable label when the id is derived.
    #[serde(default)]
    pub cluster_name: Option<String>,
    /// Which rules this state judges entries by ([`RULES_CURRENT`] from
    /// genesis on; 0, the default, for a state whose genesis predates them).
    #[serde(default)]
    pub rules: u32,
    /// Which node took up signing in each recent term (term → node), from
    /// committed [`Command::Coordinate`] entries; only that node's signing
    /// outcomes are accepted in entries of that term. At most
    /// [`COORDINATOR_TERMS_KEPT_MAX`] terms.
    #[serde(default)]
    pub coordinators: BTreeMap<u64, NodeId>,
    /// The Ed25519 keys of operators with the admin role (derived from `operators`).
    pub admins: BTreeSet<OperatorKey>,
    /// Operators by name: genesis admins first, then those admins add.
    pub operators: BTreeMap<String, Operator>,
    /// How many admins must agree to an admin operation (1 after genesis).
    pub admin_approvals_required: u32,
    /// Admin operations waiting for more admins, by proposal id.
    pub proposals: BTreeMap<String, Proposal>,
    /// The audit chain's newest record.
    pub audit_head: AuditHead,
    /// Records appended by `apply` and not yet taken by the state machine's store.
    #[serde(skip)]
    pub audit_out: Vec<AuditRecord>,
    /// Each outcome of the `sign_outcomes` being applied and how it was judged,
    /// for the audit (one record per outcome).
    #[serde(skip)]
    batch_judged: Vec<(Command, Result<String, String>)>,
    /// Whether the entry applied last was an endorsement (so the state
    /// machine does not make a snapshot point of a stretch holding nothing
    /// else, which would make endorsements of endorsements for ever).
    #[serde(skip)]
    pub last_was_endorsement: bool,
    /// The signed member registry: who may be part of the cluster.
    pub members: BTreeMap<NodeId, NodeAddr>,
    /// Replicated metadata records.
    pub kv: BTreeMap<String, KvRecord>,
    /// Command ids already applied, with their expiry, to refuse replays.
    pub seen_commands: BTreeMap<String, u64>,
    /// The same ids ordered by expiry, so expiring them costs only what expires.
    #[serde(default)]
    pub seen_by_expiry: BTreeSet<(u64, String)>,
    /// The latest entry time applied; state-machine time never goes backwards.
    pub time_ms: u64,
    pub applied_commands: u64,
    pub rejected_commands: u64,
    pub recent_rejections: VecDeque<Rejection>,
    /// Raft membership entries that named nodes outside `members`.
    pub unauthorized_membership_entries: u64,
    /// The cluster CA (hex DER) fixed at genesis; node-authored commands must
    /// carry a certificate it issued.
    pub ca_certificate: Option<String>,
    /// Signing keys by id.
    pub keys: BTreeMap<String, KeyRecord>,
    /// Names of keys that are generating, active, out of service or
    /// destroyed, to their ids (a destroyed key's name is never reused).
    pub key_names: BTreeMap<String, String>,
    /// The shortest waiting period before a key's destruction, from the
    /// genesis (rules 5 and later; `None`: the default of seven days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_destroy_wait_min_ms: Option<u64>,
    /// Signing requests by request id.
    pub requests: BTreeMap<String, RequestRecord>,
    /// Ids of requests still waiting for a signature.
    pub pending_requests: BTreeSet<String>,
    /// Signed endorsements of the newest snapshot points, by point index and node.
    #[serde(default)]
    pub endorsements: BTreeMap<u64, BTreeMap<NodeId, Endorsement>>,
    /// What each command did, by command id (rules 8 on: empty, and so not
    /// serialised, under older rules). Bounded like `seen_commands`: a record
    /// goes [`OUTCOME_KEPT_AFTER_EXPIRY_MS`] after its command expires. Refused
    /// commands are recorded too, though they never enter `seen_commands`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outcomes: BTreeMap<String, CommandRecord>,
    /// The same ids ordered by when their record goes, so expiring them costs
    /// only what expires.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub outcomes_by_expiry: BTreeSet<(u64, String)>,
    /// The relying party passkeys are judged by (rules 11 and later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webauthn: Option<synod_proto::webauthn::WebAuthnConfig>,
    /// Passkey registrations waiting for the admins, by credential id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pending_passkeys: BTreeMap<String, PendingPasskey>,
    /// Webhooks by name (rules 11 and later).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub webhooks: BTreeMap<String, synod_proto::webhook::Webhook>,
}

/// What one command did when it was applied (rules 8 on).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandRecord {
    /// The log index of the entry that carried it.
    pub index: u64,
    /// Who signed it (its signature verified): only its author and admins read the record.
    pub author: OperatorKey,
    /// The command's own expiry; the record goes [`OUTCOME_KEPT_AFTER_EXPIRY_MS`] later.
    pub expires_at_ms: u64,
    /// Applied or refused, as the write answered.
    pub outcome: Outcome,
}

/// Whether `signed` is node `node_id`'s: it carries a certificate that chains
/// to `ca_der` and is valid at `time_ms`, names `node_id`, and whose key made
/// the signature. (Membership is the caller's to check, against the state it
/// trusts.) The signature itself is checked by [`SignedCommand::verify`].
pub fn verify_node_author(ca_der: &[u8], node_id: NodeId, signed: &SignedCommand, time_ms: u64) -> Result<(), String> {
    let cert = signed.certificate.as_deref().and_then(|c| hex::decode(c).ok());
    let cert = cert.ok_or(format!("a command from node {node_id} must carry that node's certificate"))?;
    let (cert_node, key) = crate::pki::verify_node_certificate(ca_der, &cert, time_ms)?;
    if cert_node != node_id {
        return Err(format!("command claims node {node_id} but carries the certificate of node {cert_node}"));
    }
    if key != signed.author.0 {
        return Err(format!("command from node {node_id} is not signed by its certificate key"));
    }
    Ok(())
}

/// Why a command was refused; becomes [`Outcome::Rejected`].
pub(crate) struct Refusal {
    reason: String,
    kind: synod_proto::raft::Refusal,
}

impl Refusal {
    /// A refusal because the command contradicts what the log holds.
    pub(crate) fn conflict(reason: impl Into<String>) -> Refusal {
        Refusal { reason: reason.into(), kind: synod_proto::raft::Refusal::Conflict }
    }
}

impl<T: Into<String>> From<T> for Refusal {
    fn from(text: T) -> Self {
        Refusal { reason: text.into(), kind: synod_proto::raft::Refusal::Refused }
    }
}

impl ClusterState {
    /// Applies one committed application entry at `index`, proposed in `term`
    /// (the entry's own log id: who may report signing outcomes depends on it).
    pub fn apply(&mut self, index: u64, term: u64, entry: &LogEntry) -> Outcome {
        // State-machine time: the entry's, clamped so it never goes backwards.
        self.time_ms = self.time_ms.max(entry.time_ms);
        self.expire_seen();
        self.expire_keys();
        self.expire_refreshes();
        self.expire_repairs();
        self.retire_versions(index);
        self.expire_requests();
        self.expire_proposals();
        let envelope: Option<Envelope> = serde_json::from_str(&entry.command.envelope).ok();
        self.last_was_endorsement = matches!(&envelope, Some(e) if matches!(e.command, Command::Endorse { .. }));
        let outcome = self.apply_outcome(index, term, entry);
        if let Some(envelope) = &envelope {
            self.record_outcome(index, entry, envelope, &outcome);
        }
        let judged = std::mem::take(&mut self.batch_judged);
        match (&envelope, judged.is_empty()) {
            (Some(batch), false) => {
                // One record per outcome, as if each had been its own command.
                for (command, result) in judged {
                    let single = Envelope { command, ..batch.clone() };
                    let judged = match result {
                        Ok(detail) => Outcome::Applied { detail },
                        Err(reason) => Outcome::rejected(reason),
                    };
                    self.audit(index, entry, Some(&single), &judged);
                }
            }
            _ => self.audit(index, entry, envelope.as_ref(), &outcome),
        }
        outcome
    }

    fn apply_outcome(&mut self, index: u64, term: u64, entry: &LogEntry) -> Outcome {
        match self.try_apply(index, term, entry) {
            Ok(detail) => {
                self.applied_commands += 1;
                Outcome::Applied { detail }
            }
            Err(Refusal { reason, kind: refusal }) => {
                let kind = serde_json::from_str::<synod_proto::Envelope>(&entry.command.envelope)
                    .map(|e| e.command.kind().to_string())
                    .unwrap_or_else(|_| "unparseable".into());
                tracing::warn!(index, author = %entry.command.author, kind, reason, "refused a committed command");
                self.rejected_commands += 1;
                if self.recent_rejections.len() == REJECTIONS_KEPT_MAX {
                    self.recent_rejections.pop_front();
                }
                self.recent_rejections.push_back(Rejection {
                    index,
                    author: entry.command.author,
                    kind,
                    reason: reason.clone(),
                });
                Outcome::Rejected { reason, refusal }
            }
        }
    }

    fn try_apply(&mut self, index: u64, term: u64, entry: &LogEntry) -> Result<String, Refusal> {
        let signed = &entry.command;
        let envelope = signed.verify().map_err(|e| e.to_string())?;
        if self.rules >= RULES_FIELD_LIMITS {
            synod_proto::limits::check_envelope(&envelope).map_err(|e| e.to_string())?;
        }
        let now = self.time_ms;
        if envelope.expires_at_ms < now {
            return Err(format!(
                "command expired at {} ms, the log's time is {now} ms; sign a fresh one",
                envelope.expires_at_ms
            )
            .into());
        }
        if envelope.expires_at_ms.saturating_sub(envelope.issued_at_ms) > COMMAND_TTL_MS_MAX {
            return Err(format!("command is valid for longer than the {COMMAND_TTL_MS_MAX} ms maximum").into());
        }
        // Node-authored commands carry their node's certificate and clock, which
        // the time rules bound; an operator's clock is bounded here.
        let by_operator = !matches!(envelope.command.authority(), Authority::Node(_) | Authority::Genesis);
        if self.rules >= RULES_BOUNDED_CLIENTS
            && by_operator
            && envelope.issued_at_ms > now.saturating_add(ISSUED_AHEAD_MS_MAX)
            && !crate::faults::enabled(crate::faults::SKIP_CLIENT_BOUNDS)
        {
            return Err(format!(
                "command says it was issued at {} ms, {} ms ahead of the log's time {now} ms (at most {} ms \
                 allowed); check the clock of the machine that signed it and sign a fresh one",
                envelope.issued_at_ms,
                envelope.issued_at_ms - now,
                ISSUED_AHEAD_MS_MAX
            )
            .into());
        }
        if let Command::SignRequest { .. } = &envelope.command {
            // A byte-identical request again (a client retry) is answered, not refused as a replay.
            if let Some(detail) = self.existing_request(index, &envelope, signed.author) {
                return Ok(detail);
            }
        }
        if self.seen_commands.contains_key(&envelope.command_id) {
            return Err(format!("command id {} was already applied; this is a replay", envelope.command_id).into());
        }
        if envelope.command_id.len() != 32 || hex::decode(&envelope.command_id).is_err() {
            return Err("command id must be 16 bytes of hex".into());
        }

        let detail = match (&self.cluster_id, &envelope.command) {
            (None, command) if command.genesis().is_some() => {
                let synod_proto::command::GenesisParts {
                    rules,
                    admins,
                    members,
                    ca_certificate,
                    key_destroy_wait_min_ms,
                } = command.genesis().expect("a genesis");
                if !admins.contains(&signed.author) {
                    return Err("genesis must be signed by one of the admins it names".into());
                }
                if rules > RULES_CURRENT {
                    return Err(format!(
                        "genesis names rules version {rules}, but this node knows versions up to {RULES_CURRENT}; \
                         upgrade synod on every node"
                    )
                    .into());
                }
                let name = envelope.cluster_id.clone();
                let id = if rules >= RULES_DERIVED_CLUSTER_ID {
                    self.cluster_name = Some(name.clone());
                    synod_proto::command::cluster_id_of_genesis(&signed.envelope)
                } else {
                    name.clone()
                };
                self.cluster_id = Some(id.clone());
                self.rules = rules;
                self.ca_certificate = Some(ca_certificate.to_string());
                if rules >= RULES_KEY_LIFECYCLE {
                    self.key_destroy_wait_min_ms = key_destroy_wait_min_ms;
                } else if key_destroy_wait_min_ms.is_some() {
                    return Err(format!(
                        "genesis sets a key destruction waiting period, which needs rules version \
                         {RULES_KEY_LIFECYCLE}, but names version {rules}"
                    )
                    .into());
                }
                self.genesis_operators(admins);
                self.admin_approvals_required = 1;
                self.members = synod_proto::command::member_map(members);
                format!("cluster {name} initialised as {id} with {} admins and {} members", admins.len(), members.len())
            }
            (None, other) => {
                return Err(format!("{} before genesis; run `synod cluster init` first", other.kind()).into())
            }
            (Some(cluster_id), command) => {
                if &envelope.cluster_id != cluster_id {
                    return Err(format!(
                        "command is for cluster {}, this is cluster {cluster_id}",
                        envelope.cluster_id
                    )
                    .into());
                }
                let authority = command.authority();
                self.check_authority(authority, signed)?;
                self.check_coordination(command, term)?;
                match command {
                    Command::Endorse { node_id, point } => self.endorse(index, *node_id, point, signed)?,
                    Command::ApproveProposal { proposal_id } => match self
                        .approve_proposal(&signed.author, proposal_id)?
                    {
                        Some(proposal) => {
                            let carried = Envelope { command_id: proposal.id.clone(), ..envelope.clone() };
                            let detail = self.apply_command(index, &carried, proposal.proposer, &proposal.command)?;
                            format!("proposal {proposal_id} carried: {detail}")
                        }
                        None => format!("agreed to proposal {proposal_id}"),
                    },
                    _ if authority == Authority::Admin && self.admin_approvals_required > 1 => {
                        self.propose(&envelope.command_id, signed.author, command, envelope.expires_at_ms)?
                    }
                    _ => self.apply_command(index, &envelope, signed.author, command)?,
                }
            }
        };
        self.seen_by_expiry.insert((envelope.expires_at_ms, envelope.command_id.clone()));
        self.seen_commands.insert(envelope.command_id, envelope.expires_at_ms);
        Ok(detail)
    }

    /// Whether `signed`'s author may issue `command` in this state: the one
    /// authority rule, used by the node that receives a command (before it
    /// proposes it) and by every node that applies it. For a node-authored
    /// command that means the node's certificate from the cluster CA, its key
    /// as the signer, and membership.
    /// `term` is the term of the entry that carries (or, at admission, would
    /// carry) the command: it decides who may report signing outcomes.
    pub fn authorise(&self, command: &Command, signed: &SignedCommand, term: u64) -> Result<(), String> {
        self.check_authority(command.authority(), signed)
            .and_then(|()| self.check_coordination(command, term))
            .map_err(|refusal| refusal.reason)
    }

    /// Under [`RULES_COORDINATOR`]: a take-up counts only in an entry of the
    /// term it names, once per term, and a signing outcome only from the node
    /// that took up signing in its entry's term, so one compromised member
    /// cannot fail (or answer) requests that another node coordinates.
    fn check_coordination(&self, command: &Command, term: u64) -> Result<(), Refusal> {
        let coordinator = self.coordinators.get(&term);
        match command {
            Command::Coordinate { node_id, .. } if self.rules < RULES_COORDINATOR => Err(format!(
                "node {node_id} sent a signing take-up, which this cluster's rules (version {}) do not know",
                self.rules
            )
            .into()),
            Command::Coordinate { node_id, term: claimed } if *claimed != term => Err(format!(
                "node {node_id} takes up signing for term {claimed}, but its entry is in term {term}; a take-up \
                 counts only in the term it names"
            )
            .into()),
            Command::Coordinate { node_id, .. } => match coordinator {
                Some(holder) if holder != node_id => {
                    Err(format!("term {term} is already coordinated by node {holder}, not node {node_id}").into())
                }
                _ => Ok(()),
            },
            Command::SignResult { node_id, .. }
            | Command::SignFailed { node_id, .. }
            | Command::SignOutcomes { node_id, .. }
                if self.rules >= RULES_COORDINATOR
                    && !crate::faults::enabled(crate::faults::SKIP_COORDINATOR_CHECK) =>
            {
                match coordinator {
                    Some(holder) if holder == node_id => Ok(()),
                    Some(holder) => Err(format!(
                        "node {node_id} reports a signing outcome in term {term}, which node {holder} coordinates; \
                         only the node that took up signing in a term may report outcomes in it"
                    )
                    .into()),
                    None => Err(format!(
                        "node {node_id} reports a signing outcome in term {term}, in which no node has taken up \
                         signing; a leader commits its take-up before it coordinates"
                    )
                    .into()),
                }
            }
            _ => Ok(()),
        }
    }

    /// Checks that the command's author may issue it.
    fn check_authority(&self, authority: Authority, signed: &SignedCommand) -> Result<(), Refusal> {
        match authority {
            Authority::Genesis => Ok(()),
            Authority::Admin => {
                if self.admins.contains(&signed.author) {
                    Ok(())
                } else {
                    Err(format!("{} is not an admin of this cluster", signed.author).into())
                }
            }
            Authority::Requester => {
                if self.has_role(&signed.author, synod_proto::authz::Role::Requester) {
                    Ok(())
                } else {
                    Err(format!("{} may not request signatures in this cluster", signed.author).into())
                }
            }
            Authority::Anyone => Ok(()),
            Authority::Node(node_id) => self.check_node_author(node_id, signed),
        }
    }

    /// A node-authored command must carry a certificate from the cluster CA,
    /// valid at the entry's time, naming `node_id`, whose key signed the command,
    /// and the node must be a member.
    fn check_node_author(&self, node_id: NodeId, signed: &SignedCommand) -> Result<(), Refusal> {
        if crate::faults::enabled(crate::faults::SKIP_NODE_AUTHOR_CHECK) {
            return Ok(());
        }
        let ca = self.ca_certificate.as_deref().and_then(|c| hex::decode(c).ok());
        let ca = ca.ok_or("this cluster has no CA certificate in its state")?;
        verify_node_author(&ca, node_id, signed, self.time_ms)?;
        if !self.members.contains_key(&node_id) {
            return Err(format!("node {node_id} is not a member").into());
        }
        Ok(())
    }

    fn apply_command(
        &mut self,
        index: u64,
        envelope: &Envelope,
        author: OperatorKey,
        command: &Command,
    ) -> Result<String, Refusal> {
        match command {
            Command::Genesis { .. } | Command::VersionedGenesis { .. } => {
                Err("the cluster is already initialised; genesis happens once".into())
            }
            Command::AddMember { node_id, addr } => {
                if let Some(existing) = self.members.get(node_id) {
                    if existing != addr {
                        return Err(format!("node {node_id} is already a member at {existing}; remove it first").into());
                    }
                }
                self.members.insert(*node_id, addr.clone());
                Ok(format!("node {node_id} authorised at {addr}"))
            }
            Command::RemoveMember { node_id } => {
                if self.members.len() == 1 && self.members.contains_key(node_id) {
                    return Err("cannot remove the last member".into());
                }
                self.check_no_shares_in_service(*node_id)?;
                if self.members.remove(node_id).is_none() {
                    return Err(format!("node {node_id} is not a member").into());
                }
                Ok(format!("node {node_id} removed"))
            }
            Command::Put { key, value } => {
                let version = self.kv.get(key).map_or(1, |r| r.version + 1);
                self.kv.insert(
                    key.clone(),
                    KvRecord {
                        key: key.clone(),
                        value: value.clone(),
                        version,
                        author,
                        updated_index: index,
                        updated_at_ms: self.time_ms,
                    },
                );
                Ok(format!("{key} = version {version}"))
            }
            Command::CreateKey { name, threshold, participants, policy } => {
                let id = &envelope.command_id;
                let new = keys::NewKey { id, name, threshold: *threshold, participants, policy: policy.as_ref() };
                self.create_key(index, new)
            }
            Command::ImportKey { name, threshold, participants, public_key_package, policy } => {
                let id = &envelope.command_id;
                let new = keys::NewKey { id, name, threshold: *threshold, participants, policy: policy.as_ref() };
                self.import_key(index, new, public_key_package)
            }
            Command::RotateKey { name, threshold, participants, overlap_ms } => {
                let id = &envelope.command_id;
                let new =
                    versions::NewVersion { id, name, threshold: *threshold, participants, overlap_ms: *overlap_ms };
                self.rotate_key(index, new)
            }
            Command::RefreshKey { key, remove } => self.refresh_key(index, key, remove),
            Command::SetRefreshSchedule { key, every_ms } => self.set_refresh_schedule(key, *every_ms),
            Command::RefreshDue { key_id, .. } => self.refresh_due(index, key_id),
            Command::RefreshRound1 { key_id, node_id, generation, attempt, package } => {
                self.refresh_round1(key_id, *node_id, (*generation, *attempt), package)
            }
            Command::RefreshConfirm { key_id, node_id, generation, attempt, public_key_package_sha256 } => {
                self.refresh_confirm(index, key_id, *node_id, (*generation, *attempt), public_key_package_sha256)
            }
            Command::RefreshAbort { key_id, node_id, generation, attempt, reason, culprit } => {
                self.refresh_abort(key_id, *node_id, (*generation, *attempt), reason, *culprit)
            }
            Command::RepairShare { key, target } => self.repair_share(index, key, *target),
            Command::RepairCommit { key_id, node_id, target, attempt, deltas } => {
                self.repair_commit(key_id, *node_id, *target, *attempt, deltas)
            }
            Command::RepairDone { key_id, node_id, attempt } => self.repair_done(key_id, *node_id, *attempt),
            Command::RepairAbort { key_id, node_id, attempt, reason, culprit } => {
                self.repair_abort(key_id, *node_id, *attempt, reason, *culprit)
            }
            Command::DkgRound1 { key_id, node_id, package } => self.dkg_round1(key_id, *node_id, package),
            Command::KeyConfirm { key_id, node_id, group_key, public_key_package_sha256 } => {
                self.key_confirm(index, key_id, *node_id, group_key, public_key_package_sha256)
            }
            Command::KeyAbort { key_id, node_id, reason, culprit } => {
                self.key_abort(key_id, *node_id, reason, *culprit)
            }
            Command::SignRequest {
                request_id,
                key,
                message,
                purpose,
                environment,
                attributes,
                version,
                format,
                trusted_comment,
            } => {
                if format.is_some() {
                    self.needs_rules(RULES_SIGN_FORMATS, "a sign request that declares its format")?;
                }
                let declared = signing::Declared {
                    purpose,
                    environment,
                    attributes,
                    expires_at_ms: envelope.expires_at_ms,
                    version: *version,
                    format: *format,
                    trusted_comment: trusted_comment.as_deref(),
                };
                self.sign_request(index, author, request_id, key, message, declared)
            }
            Command::Approve { request_id, approver, signature } => {
                self.approve(index, &author, request_id, approver, signature)
            }
            Command::Deny { request_id, approver, reason, signature } => {
                self.needs_rules(RULES_REQUEST_DENY_CANCEL, "denying a request")?;
                self.deny(index, request_id, approver, reason, signature)
            }
            Command::CancelRequest { request_id } => {
                self.needs_rules(RULES_REQUEST_DENY_CANCEL, "cancelling a request")?;
                self.cancel_request(&author, request_id)
            }
            Command::AddOperator { name, key, ssh_key, roles, pending_max } => {
                self.add_operator(name, *key, ssh_key.as_deref(), roles, *pending_max)
            }
            Command::RemoveOperator { name } => self.remove_operator(name),
            Command::SetPolicy { key, policy } => self.set_policy(key, policy),
            Command::SetAdminPolicy { approvals_required } => {
                if *approvals_required as usize > self.admins.len() {
                    return Err(format!(
                        "{approvals_required} admin approvals cannot be met by {} admins",
                        self.admins.len()
                    )
                    .into());
                }
                self.admin_approvals_required = *approvals_required;
                Ok(format!("admin operations now need {approvals_required} admins"))
            }
            Command::ApproveProposal { .. } => Err("a proposal cannot approve a proposal".into()),
            Command::AuditCheckpoint { .. } => self.audit_checkpoint(index, author),
            Command::DisableKey { key } => self.disable_key(index, key),
            Command::EnableKey { key } => self.enable_key(index, key),
            Command::ScheduleKeyDestroy { key, wait_ms } => self.schedule_key_destroy(index, key, *wait_ms),
            Command::CancelKeyDestroy { key } => self.cancel_key_destroy(index, key),
            Command::KeyDestroyDue { key_id, .. } => self.key_destroy_due(index, key_id),
            Command::KeySharesDestroyed { key_id, node_id } => self.key_shares_destroyed(key_id, *node_id),
            Command::ShareMissing { key_id, node_id } => self.share_missing(key_id, *node_id),
            Command::Endorse { .. } => Err("an endorsement is applied as its node signed it, never carried".into()),
            Command::SetWebAuthn { config } => self.set_webauthn(config),
            Command::RegisterPasskey { node_id, operator, label, registration } => {
                self.register_passkey(*node_id, operator, label, registration)
            }
            Command::ApprovePasskey { operator, credential_id, fingerprint } => {
                self.approve_passkey(operator, credential_id, fingerprint)
            }
            Command::RemovePasskey { operator, credential_id } => self.remove_passkey(operator, credential_id),
            Command::SetWebhook { webhook } => self.set_webhook(webhook),
            Command::RemoveWebhook { name } => self.remove_webhook(name),
            Command::Coordinate { node_id, term } => {
                if self.coordinators.insert(*term, *node_id).is_some() {
                    return Ok(format!("node {node_id} already coordinates signing in term {term}"));
                }
                while self.coordinators.len() > COORDINATOR_TERMS_KEPT_MAX {
                    self.coordinators.pop_first();
                }
                Ok(format!("node {node_id} coordinates signing in term {term}"))
            }
            Command::SignResult { request_id, node_id, signature, signers, culprits, sessions, attempt } => {
                let by = signing::Coordinated { node: *node_id, attempt: *attempt };
                let made = signing::Made { signature_hex: signature, signers, culprits, sessions: *sessions };
                self.sign_result(index, request_id, by, made)
            }
            Command::SignFailed { request_id, node_id, reason, culprits, attempt } => self.sign_failed(
                request_id,
                signing::Coordinated { node: *node_id, attempt: *attempt },
                reason,
                culprits,
            ),
            Command::SignOutcomes { outcomes, .. } => {
                let mut stored = 0;
                for outcome in outcomes {
                    let judged = match outcome {
                        Command::SignResult { .. } | Command::SignFailed { .. } => {
                            self.apply_command(index, envelope, author, outcome)
                        }
                        other => Err(format!("{} cannot be a signing outcome", other.kind()).into()),
                    };
                    stored += usize::from(judged.is_ok());
                    self.batch_judged.push((outcome.clone(), judged.map_err(|refusal| refusal.reason)));
                }
                Ok(format!("{stored} of {} signing outcomes stored", outcomes.len()))
            }
        }
    }

    /// Refuses `what` unless this state's rules are at least `version`.
    fn needs_rules(&self, version: u32, what: &str) -> Result<(), Refusal> {
        if self.rules < version {
            return Err(format!(
                "{what} needs rules version {version}; this cluster's genesis named version {}",
                self.rules
            )
            .into());
        }
        Ok(())
    }

    /// Records a Raft membership entry; counts it when it names a node the
    /// signed registry does not authorise (a leader acting without authority).
    pub fn observe_membership(&mut self, index: u64, nodes: impl Iterator<Item = NodeId>) {
        if self.cluster_id.is_none() {
            return; // Bootstrap: `initialize` precedes genesis.
        }
        let strangers: Vec<NodeId> = nodes.filter(|id| !self.members.contains_key(id)).collect();
        if !strangers.is_empty() {
            tracing::error!(
                index,
                ?strangers,
                "raft membership names nodes outside the signed registry; they are refused at the transport"
            );
            self.unauthorized_membership_entries += 1;
        }
    }

    fn expire_seen(&mut self) {
        let now = self.time_ms;
        while let Some((expires, _)) = self.seen_by_expiry.first() {
            if *expires >= now {
                break;
            }
            let (_, id) = self.seen_by_expiry.pop_first().expect("first exists");
            self.seen_commands.remove(&id);
        }
        while let Some((forget_at, _)) = self.outcomes_by_expiry.first() {
            if *forget_at >= now {
                break;
            }
            let (_, id) = self.outcomes_by_expiry.pop_first().expect("first exists");
            self.outcomes.remove(&id);
        }
    }

    /// Under [`RULES_COMMAND_OUTCOMES`]: keeps what the command in `entry` did.
    /// An applied outcome is never replaced (a replay of it is refused, and a
    /// byte-identical sign request answered again, at later indexes); a refusal
    /// is kept only for a command whose signature verifies, so no one can file
    /// a refusal under another author's command id.
    fn record_outcome(&mut self, index: u64, entry: &LogEntry, envelope: &Envelope, outcome: &Outcome) {
        if self.rules < RULES_COMMAND_OUTCOMES || matches!(outcome, Outcome::Internal) {
            return;
        }
        let id = &envelope.command_id;
        if self.outcomes.get(id).is_some_and(|r| r.outcome.is_applied())
            && !crate::faults::enabled(crate::faults::OVERWRITE_APPLIED_OUTCOME)
        {
            return;
        }
        if !outcome.is_applied() && entry.command.verify().is_err() {
            return;
        }
        // A command claiming a longer life than any may have is kept no longer than one that may.
        let expires_at_ms = envelope.expires_at_ms.min(self.time_ms.saturating_add(COMMAND_TTL_MS_MAX));
        let forget_at = expires_at_ms.saturating_add(OUTCOME_KEPT_AFTER_EXPIRY_MS);
        if forget_at < self.time_ms {
            return;
        }
        if let Some(old) = self.outcomes.get(id) {
            let old_forget_at = old.expires_at_ms.saturating_add(OUTCOME_KEPT_AFTER_EXPIRY_MS);
            self.outcomes_by_expiry.remove(&(old_forget_at, id.clone()));
        }
        self.outcomes_by_expiry.insert((forget_at, id.clone()));
        let record = CommandRecord { index, author: entry.command.author, expires_at_ms, outcome: outcome.clone() };
        self.outcomes.insert(id.clone(), record);
    }

    /// What the command `command_id` did, if this state still knows: its
    /// record under [`RULES_COMMAND_OUTCOMES`]; under older rules only
    /// whether it was applied (`seen_commands`), with no index or outcome.
    pub fn command_outcome(&self, command_id: &str) -> Option<KnownCommand<'_>> {
        if let Some(record) = self.outcomes.get(command_id) {
            return Some(KnownCommand::Recorded(record));
        }
        (self.rules < RULES_COMMAND_OUTCOMES && self.seen_commands.contains_key(command_id))
            .then_some(KnownCommand::SeenOnly)
    }

    /// Whether a command that expires at `expires_at_ms` and is not in this
    /// state can never be applied from here on: the log's time is past its
    /// expiry, and it never goes backwards.
    pub fn never_commits(&self, expires_at_ms: u64) -> bool {
        expires_at_ms < self.time_ms
    }
}

/// What a state knows of one command ([`ClusterState::command_outcome`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KnownCommand<'a> {
    /// Its record: index, author and outcome.
    Recorded(&'a CommandRecord),
    /// Applied, under rules that keep no outcomes.
    SeenOnly,
}

impl ClusterState {}

#[cfg(test)]
mod deny_tests;
#[cfg(test)]
mod format_tests;
#[cfg(test)]
pub(crate) mod key_tests;
#[cfg(test)]
mod passkey_tests;
#[cfg(test)]
mod refresh_tests;
#[cfg(test)]
mod repair_tests;
#[cfg(test)]
mod version_tests;

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;
    use synod_proto::{Envelope, SignedCommand};

    use super::*;

    fn admin() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    fn addr(port: u16) -> NodeAddr {
        NodeAddr { raft_addr: format!("127.0.0.1:{port}"), api_addr: format!("127.0.0.1:{}", port + 1) }
    }

    fn entry(key: &SigningKey, id: u8, time_ms: u64, cluster: &str, command: Command) -> LogEntry {
        let env = Envelope {
            cluster_id: cluster.into(),
            command_id: format!("{id:032x}"),
            issued_at_ms: time_ms,
            expires_at_ms: time_ms + 60_000,
            command,
        };
        LogEntry { time_ms, command: SignedCommand::sign(&env, key) }
    }

    /// The genesis of the tests' one-node cluster under the current rules.
    fn genesis_command() -> Command {
        Command::VersionedGenesis {
            rules: RULES_CURRENT,
            admins: vec![OperatorKey::of(&admin())],
            members: vec![synod_proto::Member { node_id: 1, addr: addr(1000) }],
            ca_certificate: "00".into(),
            key_destroy_wait_min_ms: None,
        }
    }

    fn genesis() -> ClusterState {
        let mut state = ClusterState::default();
        assert!(state.apply(1, 1, &entry(&admin(), 1, 10, "c", genesis_command())).is_applied());
        state
    }

    /// The id later commands must name: derived from the genesis.
    fn id(state: &ClusterState) -> String {
        state.cluster_id.clone().expect("initialised")
    }

    #[test]
    fn state_cluster_id_is_derived_from_the_genesis_and_the_name_kept() {
        // Under the current rules the id is a hash of the genesis envelope, not the name it
        // carries: a command naming only the name is refused, and so is one for another
        // cluster made with the same name and admin (its genesis differs in id and time).
        let mut state = genesis();
        assert_eq!(state.cluster_name.as_deref(), Some("c"));
        assert_eq!(id(&state).len(), 64);
        assert_ne!(id(&state), "c");
        let put = || Command::Put { key: "a".into(), value: "1".into() };
        let named = state.apply(2, 1, &entry(&admin(), 2, 11, "c", put()));
        assert!(matches!(named, Outcome::Rejected { ref reason, .. } if reason.contains("this is cluster")));
        let mut twin = ClusterState::default();
        assert!(twin.apply(1, 1, &entry(&admin(), 9, 10, "c", genesis_command())).is_applied());
        assert_ne!(id(&twin), id(&state));
        let for_twin = state.apply(3, 1, &entry(&admin(), 3, 11, &id(&twin), put()));
        assert!(matches!(for_twin, Outcome::Rejected { ref reason, .. } if reason.contains("this is cluster")));
        assert!(state.apply(4, 1, &entry(&admin(), 4, 11, &id(&state), put())).is_applied());
    }

    #[test]
    fn state_genesis_then_admin_writes() {
        // Genesis fixes the admins; an admin's write applies and is versioned.
        let mut state = genesis();
        let put = Command::Put { key: "a".into(), value: "1".into() };
        assert!(state.apply(2, 1, &entry(&admin(), 2, 11, &id(&state), put)).is_applied());
        assert_eq!(state.kv["a"].version, 1);
    }

    #[test]
    fn state_unsigned_membership_change_is_refused() {
        // A member added by a non-admin key changes nothing, whoever committed it.
        let mut state = genesis();
        let stranger = SigningKey::from_bytes(&[9; 32]);
        let add = Command::AddMember { node_id: 9, addr: addr(2000) };
        let outcome = state.apply(2, 1, &entry(&stranger, 2, 11, &id(&state), add));
        assert!(matches!(outcome, Outcome::Rejected { ref reason, .. } if reason.contains("not an admin")));
        assert_eq!(state.members.len(), 1);
        assert_eq!(state.rejected_commands, 1);
    }

    #[test]
    fn state_replay_expiry_and_wrong_cluster_are_refused() {
        // A replayed, expired or foreign-cluster command is refused with its reason.
        let mut state = genesis();
        let put = || Command::Put { key: "a".into(), value: "1".into() };
        let e = entry(&admin(), 2, 11, &id(&state), put());
        assert!(state.apply(2, 1, &e).is_applied());
        assert!(matches!(state.apply(3, 1, &e), Outcome::Rejected { ref reason, .. } if reason.contains("replay")));
        let mut late = entry(&admin(), 3, 11, &id(&state), put());
        late.time_ms = 11 + 60_001;
        assert!(matches!(state.apply(4, 1, &late), Outcome::Rejected { ref reason, .. } if reason.contains("expired")));
        let foreign = entry(&admin(), 4, 200_000, "other", put());
        assert!(
            matches!(state.apply(5, 1, &foreign), Outcome::Rejected { ref reason, .. } if reason.contains("cluster"))
        );
    }

    #[test]
    fn state_outcomes_are_kept_by_command_id_until_after_expiry() {
        // An applied command's record holds its index and outcome; a replay of it leaves the
        // record alone; a refused command is recorded though it never enters seen_commands;
        // records go OUTCOME_KEPT_AFTER_EXPIRY_MS after their command's expiry.
        let mut state = genesis();
        let put = Command::Put { key: "a".into(), value: "1".into() };
        let e = entry(&admin(), 2, 11, &id(&state), put.clone());
        let applied = state.apply(2, 1, &e);
        assert!(applied.is_applied());
        let Some(KnownCommand::Recorded(record)) = state.command_outcome(&format!("{:032x}", 2)) else {
            panic!("the applied put is recorded")
        };
        assert_eq!((record.index, &record.outcome, record.author), (2, &applied, OperatorKey::of(&admin())));
        assert!(!state.apply(3, 1, &e).is_applied(), "a replay is refused");
        let Some(KnownCommand::Recorded(record)) = state.command_outcome(&format!("{:032x}", 2)) else {
            panic!("still recorded")
        };
        assert_eq!(record.index, 2, "the replay's refusal does not replace the applied outcome");

        let stranger = SigningKey::from_bytes(&[9; 32]);
        let refused = state.apply(4, 1, &entry(&stranger, 4, 12, &id(&state), put.clone()));
        assert!(!refused.is_applied());
        assert!(!state.seen_commands.contains_key(&format!("{:032x}", 4)));
        let Some(KnownCommand::Recorded(record)) = state.command_outcome(&format!("{:032x}", 4)) else {
            panic!("the refusal is recorded")
        };
        assert_eq!((record.index, record.author), (4, OperatorKey::of(&stranger)));
        assert!(state.command_outcome(&format!("{:032x}", 5)).is_none());
        assert!(!state.never_commits(11 + 60_000), "not yet past the command's expiry");

        // Past the expiry (entries expire 60 s after 11 ms) but within the grace: kept.
        let later = 11 + 60_000 + OUTCOME_KEPT_AFTER_EXPIRY_MS;
        let e = entry(&admin(), 6, later, &id(&state), Command::Put { key: "b".into(), value: "1".into() });
        assert!(state.apply(5, 1, &e).is_applied());
        assert!(state.never_commits(11 + 60_000));
        assert!(state.command_outcome(&format!("{:032x}", 2)).is_some());
        let e = entry(&admin(), 7, later + 10, &id(&state), Command::Put { key: "c".into(), value: "1".into() });
        assert!(state.apply(6, 1, &e).is_applied());
        assert!(state.command_outcome(&format!("{:032x}", 2)).is_none(), "forgotten after the grace");
        assert!(state.command_outcome(&format!("{:032x}", 4)).is_none());
        assert_eq!(state.outcomes.len(), state.outcomes_by_expiry.len());
    }

    #[test]
    fn state_outcomes_are_not_kept_under_older_rules_and_the_state_bytes_do_not_change() {
        // A cluster whose genesis named rules 7 keeps no outcomes, so its state serialises as
        // older binaries serialise it (no new field) and they agree on its digest; a command
        // applied there is still known, without its outcome.
        let mut state = ClusterState::default();
        let genesis = Command::VersionedGenesis {
            rules: RULES_COMMAND_OUTCOMES - 1,
            admins: vec![OperatorKey::of(&admin())],
            members: vec![synod_proto::Member { node_id: 1, addr: addr(1000) }],
            ca_certificate: "00".into(),
            key_destroy_wait_min_ms: None,
        };
        assert!(state.apply(1, 1, &entry(&admin(), 1, 10, "c", genesis)).is_applied());
        let put = Command::Put { key: "a".into(), value: "1".into() };
        assert!(state.apply(2, 1, &entry(&admin(), 2, 11, &id(&state), put)).is_applied());
        assert!(state.outcomes.is_empty());
        assert_eq!(state.command_outcome(&format!("{:032x}", 2)), Some(KnownCommand::SeenOnly));
        let json = serde_json::to_string(&state).unwrap();
        assert!(!json.contains("outcomes"), "no new field in an older cluster's state: {json}");
    }

    #[test]
    fn state_time_never_goes_backwards() {
        // An entry stamped earlier than the state's time does not rewind it.
        let mut state = genesis();
        let put = Command::Put { key: "a".into(), value: "1".into() };
        state.apply(2, 1, &entry(&admin(), 2, 5, &id(&state), put));
        assert_eq!(state.time_ms, 10);
    }
}

//! Operator-signed commands: the only way anything in Synod's state changes.
//!
//! A [`SignedCommand`] carries the exact JSON text of an [`Envelope`] that its
//! author signed with an Ed25519 operator key. The signature covers
//! [`COMMAND_DOMAIN`] followed by those bytes, so there is no canonicalisation
//! step to get wrong: verifiers check the bytes they received, then parse them.
//! Every node verifies every command when it applies the entry, so a leader
//! cannot invent, alter or replay authority.

use std::collections::BTreeMap;
use std::fmt;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::authz::{ApprovalSignature, Policy, Role};
use crate::raft::NodeAddr;
use crate::NodeId;

/// Domain-separation tag prefixed to every signed envelope.
pub const COMMAND_DOMAIN: &[u8] = b"synod/command/v1\0";

/// The largest envelope (signed JSON text) a node accepts. Later issues carry
/// messages of up to 64 KiB inside a command, hex-encoded.
pub const ENVELOPE_BYTES_MAX: usize = 160 * 1024;

/// Longest key accepted by `Put`.
pub const KV_KEY_BYTES_MAX: usize = 256;
/// Largest value accepted by `Put`.
pub const KV_VALUE_BYTES_MAX: usize = 32 * 1024;

/// The largest message a sign request carries (hex-encoded in the envelope, so
/// it fits [`ENVELOPE_BYTES_MAX`]). Larger artifacts are signed through a hash.
pub const MESSAGE_BYTES_MAX: usize = 64 * 1024;
/// The most participants a key may have (FROST identifiers are node ids).
pub const PARTICIPANTS_MAX: usize = 16;
/// The largest hex-encoded certificate a command carries.
pub const CERTIFICATE_HEX_BYTES_MAX: usize = 8 * 1024;
/// The longest key name, request id or purpose.
pub const NAME_BYTES_MAX: usize = 64;
/// The longest free-text reason a node gives when it aborts or fails something.
pub const REASON_BYTES_MAX: usize = 1024;
/// The largest hex-encoded FROST package in a command (a 16-participant public
/// key package is about 600 bytes; a round-1 package about 32·t + 100).
pub const PACKAGE_HEX_BYTES_MAX: usize = 16 * 1024;

/// The longest a command may stay valid after it was issued, so the replay
/// window (and the memory that guards it) stays bounded.
pub const COMMAND_TTL_MS_MAX: u64 = 24 * 60 * 60 * 1000;

/// An operator's Ed25519 public key, written as 64 hex characters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OperatorKey(pub [u8; 32]);

impl OperatorKey {
    /// Parses 64 hex characters.
    pub fn from_hex(text: &str) -> Result<Self, CommandError> {
        let bytes = hex::decode(text.trim())
            .map_err(|_| CommandError::Malformed(format!("operator key {text:?} is not hex")))?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| {
            CommandError::Malformed(format!("operator key {text:?} is not 32 bytes (64 hex characters)"))
        })?;
        VerifyingKey::from_bytes(&arr)
            .map_err(|_| CommandError::Malformed(format!("operator key {text:?} is not an Ed25519 point")))?;
        Ok(OperatorKey(arr))
    }

    /// The key as lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The public half of a signing key.
    pub fn of(signing_key: &SigningKey) -> Self {
        OperatorKey(signing_key.verifying_key().to_bytes())
    }
}

impl fmt::Display for OperatorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for OperatorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OperatorKey({})", self.to_hex())
    }
}

impl Serialize for OperatorKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for OperatorKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        OperatorKey::from_hex(&text).map_err(serde::de::Error::custom)
    }
}

/// In the API document, the key is what it serialises to: 64 hex characters.
impl utoipa::PartialSchema for OperatorKey {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^[0-9a-fA-F]{64}$"))
            .description(Some("An Ed25519 public key (an operator's or a node's), 64 hex characters."))
            .into()
    }
}

impl utoipa::ToSchema for OperatorKey {}

/// What a command asks the cluster to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// Fixes the root of authority: the genesis admins and the first members.
    /// Accepted once, as the first command of a cluster, signed by one of `admins`.
    /// `ca_certificate` (hex DER) is the cluster CA: commands that nodes author
    /// (DKG messages, signing results) must carry a certificate it issued.
    /// A genesis without a rules version: a cluster it starts judges by rules
    /// version 0. Kept so that logs committed before rules were versioned
    /// replay as they applied; a node refuses to admit it for a new cluster.
    Genesis { admins: Vec<OperatorKey>, members: Vec<Member>, ca_certificate: String },
    /// The genesis `synod cluster init` sends: as [`Command::Genesis`], and
    /// the rules version ([`RULES_CURRENT`] when it was made) by which the
    /// cluster judges every entry, so a log replays by its own rules
    /// whatever binary replays it.
    /// `key_destroy_wait_min_ms` (rules 5 and later) is the shortest waiting
    /// period an admin may give [`Command::ScheduleKeyDestroy`]; absent, it is
    /// [`KEY_DESTROY_WAIT_MIN_MS_DEFAULT`]. It is fixed here, never read from a
    /// node's configuration at apply, so every node judges a schedule alike and
    /// a node's operator cannot shorten it.
    VersionedGenesis {
        rules: u32,
        admins: Vec<OperatorKey>,
        members: Vec<Member>,
        ca_certificate: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_destroy_wait_min_ms: Option<u64>,
    },
    /// Authorises a node to join the cluster (first as a learner, then as a voter).
    AddMember { node_id: NodeId, addr: NodeAddr },
    /// Removes a node from the cluster.
    RemoveMember { node_id: NodeId },
    /// Writes a small replicated key-value record (cluster metadata).
    Put { key: String, value: String },
    /// Creates a signing key by distributed key generation among `participants`
    /// (admin). The key id is the command id. Under rules 4 and later a key
    /// signs nothing until it has a policy: `policy` here (the command is under
    /// the admin quorum like any admin command), or a later [`Command::SetPolicy`].
    CreateKey {
        name: String,
        threshold: u16,
        participants: Vec<NodeId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        policy: Option<Policy>,
    },
    /// Registers a key that a dealer split on the operator's machine (admin; for
    /// migrating an existing Ed25519 key). `public_key_package` is the hex FROST
    /// public key package; each share reaches its node encrypted, outside the log.
    /// `policy` as for [`Command::CreateKey`].
    ImportKey {
        name: String,
        threshold: u16,
        participants: Vec<NodeId>,
        public_key_package: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        policy: Option<Policy>,
    },
    /// Makes a new version of the key named `name` by a fresh DKG (admin;
    /// rules 6 and later). The version's key id is the command id. When every
    /// participant has confirmed it, it becomes the primary: new requests
    /// naming only the key go to it, and the version it replaces is retiring
    /// for `overlap_ms` of log time (requests already committed on it finish,
    /// and a request may still name it), then retired (it verifies only).
    /// Rotation is how a key's threshold or participants change.
    RotateKey { name: String, threshold: u16, participants: Vec<NodeId>, overlap_ms: u64 },
    /// Refreshes the shares of the key named `key` (its primary version) by a
    /// new generation of shares of the same secret (admin; rules 7 and later):
    /// the public key stays, every share changes, and each participant deletes
    /// its old share once the new generation is active. A refresh that cannot
    /// complete leaves the current generation signing. The participants in
    /// `remove` take no part and hold no share of the new generation: that is
    /// how a member leaves a key with its public key unchanged.
    RefreshKey {
        key: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        remove: Vec<NodeId>,
    },
    /// Refreshes the key named `key` (its primary version) every `every_ms` of
    /// log time from now on, or never again with `None` (admin; rules 7 and
    /// later; at least [`REFRESH_EVERY_MIN_MS`]). At each due time the leader
    /// writes a node-authored [`Command::RefreshDue`], which starts a refresh
    /// as `refresh_key` would.
    SetRefreshSchedule { key: String, every_ms: Option<u64> },
    /// A node reports that a key's scheduled refresh is due (entries move the
    /// log's time, so some node must write one). Refused before the due time
    /// by the log's time, and while a refresh or repair is in progress.
    RefreshDue { node_id: NodeId, key_id: String },
    /// A participant's refresh round-1 package (hex) for generation
    /// `generation` of key `key_id`: commitments to a polynomial with a zero
    /// constant term, `t − 1` coefficients. Every refresh and repair message
    /// names its `attempt` (the log index of the command that started it), so
    /// one from an earlier attempt that arrives late is refused, not taken
    /// for the current one's.
    RefreshRound1 { key_id: String, node_id: NodeId, generation: u32, attempt: u64, package: String },
    /// A participant sealed its share of generation `generation` and confirms
    /// the public key package it derived (SHA-256, hex). The generation turns
    /// current only when every participant has confirmed the package the state
    /// machine computed from the round-1 commitments.
    RefreshConfirm { key_id: String, node_id: NodeId, generation: u32, attempt: u64, public_key_package_sha256: String },
    /// A participant gives up on a refresh, naming the culprit when it knows one;
    /// the current generation keeps signing.
    RefreshAbort {
        key_id: String,
        node_id: NodeId,
        generation: u32,
        attempt: u64,
        reason: String,
        culprit: Option<NodeId>,
    },
    /// Gives node `target` its share of the key named `key` (its primary
    /// version, current generation) from `t` helpers, without the key ever
    /// being whole (admin; rules 7 and later). A participant that lost its
    /// share gets the identical share back; a member that is not a
    /// participant is enrolled with a new share of the same key. The repair
    /// values travel point to point over mutual TLS, never through the log.
    RepairShare { key: String, target: NodeId },
    /// A repair helper commits to the values it sends the other helpers:
    /// `g^δ` (hex compressed points), one per receiving helper in id order,
    /// as (helper, point) pairs. The state checks that they add up to the
    /// helper's part of the target's share.
    RepairCommit { key_id: String, node_id: NodeId, target: NodeId, attempt: u64, deltas: Vec<(NodeId, String)> },
    /// The repair's target sealed a share that matches its verifying share.
    RepairDone { key_id: String, node_id: NodeId, attempt: u64 },
    /// A helper or the target gives up on a repair, naming the culprit when it knows one.
    RepairAbort { key_id: String, node_id: NodeId, attempt: u64, reason: String, culprit: Option<NodeId> },
    /// A participant's DKG round-1 package (hex), signed with its node key.
    DkgRound1 { key_id: String, node_id: NodeId, package: String },
    /// A participant confirms the key it now holds a share of: the group key and
    /// SHA-256 of the serialized public key package (hex). The key turns active
    /// only when every participant has confirmed the same values.
    KeyConfirm { key_id: String, node_id: NodeId, group_key: String, public_key_package_sha256: String },
    /// A node gives up on a key generation or import that cannot complete,
    /// naming the culprit participant when it knows one.
    KeyAbort { key_id: String, node_id: NodeId, reason: String, culprit: Option<NodeId> },
    /// Asks the cluster to sign `message` (hex) with the key named `key`.
    /// One request id, one message: the same message again returns the same
    /// result, another message under that id is refused. `environment` and
    /// `attributes` are the requester's declarations that the key's policy
    /// checks and approvers see and sign.
    SignRequest {
        request_id: String,
        key: String,
        message: String,
        purpose: String,
        #[serde(default)]
        environment: String,
        #[serde(default)]
        attributes: BTreeMap<String, String>,
        /// The key version to sign with (rules 6 and later): the primary when
        /// absent; an older version only while it is retiring.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<u32>,
        /// The format `message` is the to-be-signed bytes of (rules 9 and later;
        /// raw when absent). Every node parses the message as this format and
        /// refuses it if it does not parse ([`crate::format::inspect`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        format: Option<crate::format::SignFormat>,
        /// minisign only: the trusted comment the cluster's global signature
        /// covers together with the request's signature.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trusted_comment: Option<String>,
    },
    /// An approver's signed approval of a pending request (anyone may submit it:
    /// the approval signature itself carries the authority).
    Approve { request_id: String, approver: String, signature: ApprovalSignature },
    /// An approver's signed denial of a pending request (rules 10 and later):
    /// the signature is over [`crate::authz::denial_bytes`], so an approval
    /// cannot stand in for a denial. Anyone may submit it, like an approval.
    /// Once the policy's `denials_required` approvers deny, the request fails.
    Deny { request_id: String, approver: String, reason: String, signature: ApprovalSignature },
    /// The requester withdraws their own pending request (rules 10 and later);
    /// it fails and releases nothing.
    CancelRequest { request_id: String },
    /// Registers an operator (admin): an Ed25519 key that signs commands and
    /// approvals, and/or an OpenSSH public key for `ssh-keygen -Y sign` approvals.
    /// `pending_max` raises or lowers how many of its requests may wait at once
    /// (rules 4 and later; the default is `PENDING_PER_OPERATOR_DEFAULT` in
    /// the node's state), so a CI requester can burst without one requester
    /// filling the shared cap.
    AddOperator {
        name: String,
        key: Option<OperatorKey>,
        ssh_key: Option<String>,
        roles: Vec<Role>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pending_max: Option<u32>,
    },
    /// Removes an operator (admin); approvals it gave stop counting.
    RemoveOperator { name: String },
    /// Replaces a key's signing policy (admin); the policy version increments and
    /// the key's pending requests must be approved again.
    SetPolicy { key: String, policy: Policy },
    /// Sets how many admins must agree to an admin operation (admin).
    SetAdminPolicy { approvals_required: u32 },
    /// An admin's agreement to a pending admin proposal.
    ApproveProposal { proposal_id: String },
    /// A node asks for a checkpoint: the state machine turns the audit chain's
    /// current head into a request on the audit key, which signs nothing else.
    AuditCheckpoint { node_id: NodeId },
    /// A node vouches that applying the committed log up to `point` gave it
    /// exactly the state whose digest the point names. A snapshot is installed
    /// only with enough of these from distinct members (see `raft/snapshot.rs`).
    Endorse { node_id: NodeId, point: SnapshotPoint },
    /// The coordinating node's result: a signature that every node verifies
    /// against the key and its own copy of the message before storing it.
    SignResult {
        request_id: String,
        node_id: NodeId,
        signature: String,
        signers: Vec<NodeId>,
        culprits: Vec<NodeId>,
        sessions: u32,
        /// The attempt of the request this outcome is for (0 for the first; a
        /// failed request sent again is a new attempt). Another attempt's
        /// outcome is refused.
        #[serde(default)]
        attempt: u32,
    },
    /// The coordinating node could not gather enough valid shares.
    SignFailed {
        request_id: String,
        node_id: NodeId,
        reason: String,
        culprits: Vec<NodeId>,
        /// As for [`Command::SignResult`].
        #[serde(default)]
        attempt: u32,
    },
    /// Several outcomes of one coordinating node in one entry, each a
    /// `sign_result` or `sign_failed` naming that node: one node signature and
    /// one envelope check per node for the lot. Every node judges and audits
    /// each outcome on its own; one refused outcome does not refuse the others.
    SignOutcomes {
        node_id: NodeId,
        /// The schema refers back to `Command` rather than expanding it again.
        #[schema(no_recursion)]
        outcomes: Vec<Command>,
    },
    /// Stops a key from signing (admin): new requests are refused and its
    /// pending requests fail; it can be enabled again (rules 5 and later).
    DisableKey { key: String },
    /// Lets a disabled key sign again (admin). A key whose destruction is
    /// scheduled must have the schedule cancelled first.
    EnableKey { key: String },
    /// Schedules a key's destruction `wait_ms` after this entry's time (admin;
    /// at least the genesis's minimum, at most [`KEY_DESTROY_WAIT_MAX_MS`]).
    /// From now on the key signs nothing; until the deadline the schedule can
    /// be cancelled.
    ScheduleKeyDestroy { key: String, wait_ms: u64 },
    /// Cancels a scheduled destruction (admin); the key is left disabled.
    CancelKeyDestroy { key: String },
    /// A node reports that a key's destruction deadline has passed: entries
    /// move the log's time, so some node must write one. Refused before the
    /// deadline by the log's time.
    KeyDestroyDue { node_id: NodeId, key_id: String },
    /// A participant of a destroyed key reports that it zeroized and deleted
    /// every sealed share of it. These track clean-up; the key is destroyed
    /// without them.
    KeySharesDestroyed { node_id: NodeId, key_id: String },
    /// A participant reports that it holds no share of an active key it
    /// confirmed (its disk was lost or wiped): audited, and shown with the
    /// key until the share is back.
    ShareMissing { node_id: NodeId, key_id: String },
    /// A new leader takes up signing for its term: committed before it
    /// coordinates anything, in an entry of the term it names. From then on
    /// only this node's signing outcomes are accepted in entries of that term
    /// (`openraft`'s single-term-leader log ids hold only the term, not the
    /// node, so the log has to say who coordinates).
    Coordinate { node_id: NodeId, term: u64 },
    /// Sets the relying party every node judges passkeys by (admin, rules 11
    /// and later): the RP ID (a domain) and the console's exact origins. Kept
    /// in the replicated state, never in a node's config, so that no node can
    /// accept an assertion made for another site.
    SetWebAuthn { config: crate::webauthn::WebAuthnConfig },
    /// A passkey an operator created in the console of node `node_id`
    /// (node-authored, rules 11 and later). Every node reads the registration
    /// itself; the credential waits until the admins approve it.
    RegisterPasskey {
        node_id: NodeId,
        operator: String,
        #[serde(default)]
        label: String,
        registration: crate::webauthn::Registration,
    },
    /// An admin approves a pending passkey: from now on it logs the operator
    /// into the console and signs their approvals and denials. `fingerprint`
    /// is the one the admins checked with its owner: the state refuses the
    /// approval when the key waiting under `credential_id` has another.
    ApprovePasskey { operator: String, credential_id: String, fingerprint: String },
    /// An admin removes an operator's passkey, approved or pending.
    RemovePasskey { operator: String, credential_id: String },
    /// Adds or replaces a webhook (admin, rules 11 and later).
    SetWebhook { webhook: crate::webhook::Webhook },
    /// Removes a webhook (admin).
    RemoveWebhook { name: String },
}

/// A snapshot point: the state a node derived from the committed log up to
/// and including entry (`term`, `index`), named by the SHA-256 of its
/// serialized form, which covers the Raft membership, everything a signer or
/// policy check reads, and the audit chain's head.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SnapshotPoint {
    /// The cluster the state belongs to, so a point cannot be carried to another.
    pub cluster_id: String,
    pub index: u64,
    pub term: u64,
    /// SHA-256 (hex) of the serialized applied state at that point.
    pub state_sha256: String,
}

impl SnapshotPoint {
    fn validate(&self) -> Result<(), CommandError> {
        // Sizes are checked with every other field's (`limits`); this is the shape.
        let digest_ok = self.state_sha256.len() == 64 && self.state_sha256.bytes().all(|b| b.is_ascii_hexdigit());
        if !digest_ok {
            return Err(CommandError::Malformed("snapshot point's state_sha256 must be 64 hex digits".into()));
        }
        Ok(())
    }
}

/// The rules version a genesis made today names (see `ClusterState::rules`
/// in the node): how entries are judged. A change to how an entry is judged
/// raises it, so that a cluster keeps the rules its genesis named.
pub const RULES_CURRENT: u32 = 11;

/// The shortest waiting period before a key's destruction when the genesis
/// names none: seven days, as production key managers require.
pub const KEY_DESTROY_WAIT_MIN_MS_DEFAULT: u64 = 7 * 24 * 60 * 60 * 1000;
/// The waiting period `synod key destroy` asks for unless told otherwise.
pub const KEY_DESTROY_WAIT_DEFAULT_MS: u64 = 30 * 24 * 60 * 60 * 1000;
/// The longest waiting period before a key's destruction.
pub const KEY_DESTROY_WAIT_MAX_MS: u64 = 365 * 24 * 60 * 60 * 1000;

/// How long the version a rotation replaces keeps signing requests that
/// name it, unless `synod key rotate --overlap` says otherwise.
pub const KEY_ROTATE_OVERLAP_DEFAULT_MS: u64 = 24 * 60 * 60 * 1000;
/// The longest overlap a rotation may give the version it replaces.
pub const KEY_ROTATE_OVERLAP_MAX_MS: u64 = 30 * 24 * 60 * 60 * 1000;

/// The shortest interval of a refresh schedule (a test cluster's; production
/// schedules are days or months).
pub const REFRESH_EVERY_MIN_MS: u64 = 10 * 1000;
/// The longest interval of a refresh schedule.
pub const REFRESH_EVERY_MAX_MS: u64 = 365 * 24 * 60 * 60 * 1000;

/// Domain-separation tag of a cluster id derived from its genesis.
pub const CLUSTER_ID_DOMAIN: &[u8] = b"synod/cluster-id/v1\0";

/// The id of the cluster a genesis makes (rules version 3 on): SHA-256 over
/// [`CLUSTER_ID_DOMAIN`] and the genesis envelope's exact signed text, as hex.
/// Two clusters made with the same name and admin keys still get different
/// ids (each genesis has its own random command id and times), so a command
/// or an approval made for one is refused by the other. The name the operator
/// chose stays a readable label.
pub fn cluster_id_of_genesis(envelope_text: &str) -> String {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    hash.update(CLUSTER_ID_DOMAIN);
    hash.update(envelope_text.as_bytes());
    hex::encode(hash.finalize())
}

/// What a genesis fixes, from either genesis command.
#[derive(Clone, Copy, Debug)]
pub struct GenesisParts<'a> {
    /// The rules version (0 for [`Command::Genesis`]).
    pub rules: u32,
    pub admins: &'a [OperatorKey],
    pub members: &'a [Member],
    pub ca_certificate: &'a str,
    /// The shortest destruction waiting period (rules 5 and later).
    pub key_destroy_wait_min_ms: Option<u64>,
}

/// The most outcomes one [`Command::SignOutcomes`] carries.
pub const SIGN_OUTCOMES_MAX: usize = 64;

/// Whose signature a command needs, checked by every node when it applies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Authority {
    /// One of the admins the genesis command itself names.
    Genesis,
    /// A genesis admin.
    Admin,
    /// An operator with the requester role (each key's policy narrows it further).
    Requester,
    /// Anyone: the command carries its own proof (an approval signature).
    Anyone,
    /// The node with this id, by the key of its CA-issued certificate.
    Node(NodeId),
}

impl Command {
    /// A short name for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::Genesis { .. } => "genesis",
            Command::VersionedGenesis { .. } => "versioned_genesis",
            Command::AddMember { .. } => "add_member",
            Command::RemoveMember { .. } => "remove_member",
            Command::Put { .. } => "put",
            Command::CreateKey { .. } => "create_key",
            Command::ImportKey { .. } => "import_key",
            Command::RotateKey { .. } => "rotate_key",
            Command::RefreshKey { .. } => "refresh_key",
            Command::SetRefreshSchedule { .. } => "set_refresh_schedule",
            Command::RefreshDue { .. } => "refresh_due",
            Command::RefreshRound1 { .. } => "refresh_round1",
            Command::RefreshConfirm { .. } => "refresh_confirm",
            Command::RefreshAbort { .. } => "refresh_abort",
            Command::RepairShare { .. } => "repair_share",
            Command::RepairCommit { .. } => "repair_commit",
            Command::RepairDone { .. } => "repair_done",
            Command::RepairAbort { .. } => "repair_abort",
            Command::DkgRound1 { .. } => "dkg_round1",
            Command::KeyConfirm { .. } => "key_confirm",
            Command::KeyAbort { .. } => "key_abort",
            Command::SignRequest { .. } => "sign_request",
            Command::SignResult { .. } => "sign_result",
            Command::SignFailed { .. } => "sign_failed",
            Command::SignOutcomes { .. } => "sign_outcomes",
            Command::Coordinate { .. } => "coordinate",
            Command::SetWebAuthn { .. } => "set_web_authn",
            Command::RegisterPasskey { .. } => "register_passkey",
            Command::ApprovePasskey { .. } => "approve_passkey",
            Command::RemovePasskey { .. } => "remove_passkey",
            Command::SetWebhook { .. } => "set_webhook",
            Command::RemoveWebhook { .. } => "remove_webhook",
            Command::DisableKey { .. } => "disable_key",
            Command::EnableKey { .. } => "enable_key",
            Command::ScheduleKeyDestroy { .. } => "schedule_key_destroy",
            Command::CancelKeyDestroy { .. } => "cancel_key_destroy",
            Command::KeyDestroyDue { .. } => "key_destroy_due",
            Command::KeySharesDestroyed { .. } => "key_shares_destroyed",
            Command::ShareMissing { .. } => "share_missing",
            Command::Approve { .. } => "approve",
            Command::Deny { .. } => "deny",
            Command::CancelRequest { .. } => "cancel_request",
            Command::AddOperator { .. } => "add_operator",
            Command::RemoveOperator { .. } => "remove_operator",
            Command::SetPolicy { .. } => "set_policy",
            Command::SetAdminPolicy { .. } => "set_admin_policy",
            Command::ApproveProposal { .. } => "approve_proposal",
            Command::AuditCheckpoint { .. } => "audit_checkpoint",
            Command::Endorse { .. } => "endorse",
        }
    }

    /// Whose signature this command needs.
    pub fn authority(&self) -> Authority {
        match self {
            Command::Genesis { .. } | Command::VersionedGenesis { .. } => Authority::Genesis,
            Command::AddMember { .. }
            | Command::RemoveMember { .. }
            | Command::Put { .. }
            | Command::CreateKey { .. }
            | Command::ImportKey { .. }
            | Command::RotateKey { .. }
            | Command::RefreshKey { .. }
            | Command::SetRefreshSchedule { .. }
            | Command::RepairShare { .. }
            | Command::AddOperator { .. }
            | Command::RemoveOperator { .. }
            | Command::SetPolicy { .. }
            | Command::SetAdminPolicy { .. }
            | Command::DisableKey { .. }
            | Command::EnableKey { .. }
            | Command::ScheduleKeyDestroy { .. }
            | Command::CancelKeyDestroy { .. }
            | Command::SetWebAuthn { .. }
            | Command::ApprovePasskey { .. }
            | Command::RemovePasskey { .. }
            | Command::SetWebhook { .. }
            | Command::RemoveWebhook { .. }
            | Command::ApproveProposal { .. } => Authority::Admin,
            Command::SignRequest { .. } | Command::CancelRequest { .. } => Authority::Requester,
            Command::Approve { .. } | Command::Deny { .. } => Authority::Anyone,
            Command::DkgRound1 { node_id, .. }
            | Command::RefreshRound1 { node_id, .. }
            | Command::RefreshConfirm { node_id, .. }
            | Command::RefreshAbort { node_id, .. }
            | Command::RefreshDue { node_id, .. }
            | Command::RepairCommit { node_id, .. }
            | Command::RepairDone { node_id, .. }
            | Command::RepairAbort { node_id, .. }
            | Command::KeyConfirm { node_id, .. }
            | Command::KeyAbort { node_id, .. }
            | Command::SignResult { node_id, .. }
            | Command::SignFailed { node_id, .. }
            | Command::SignOutcomes { node_id, .. }
            | Command::Coordinate { node_id, .. }
            | Command::AuditCheckpoint { node_id }
            | Command::KeyDestroyDue { node_id, .. }
            | Command::KeySharesDestroyed { node_id, .. }
            | Command::ShareMissing { node_id, .. }
            | Command::RegisterPasskey { node_id, .. }
            | Command::Endorse { node_id, .. } => Authority::Node(*node_id),
        }
    }

    /// What a genesis command fixes; `None` for any other command.
    pub fn genesis(&self) -> Option<GenesisParts<'_>> {
        match self {
            Command::Genesis { admins, members, ca_certificate } => {
                Some(GenesisParts { rules: 0, admins, members, ca_certificate, key_destroy_wait_min_ms: None })
            }
            Command::VersionedGenesis { rules, admins, members, ca_certificate, key_destroy_wait_min_ms } => {
                Some(GenesisParts {
                    rules: *rules,
                    admins,
                    members,
                    ca_certificate,
                    key_destroy_wait_min_ms: *key_destroy_wait_min_ms,
                })
            }
            _ => None,
        }
    }

    /// Checks sizes and shapes that do not depend on state.
    pub fn validate(&self) -> Result<(), CommandError> {
        match self {
            Command::Genesis { .. } | Command::VersionedGenesis { .. } => {
                let GenesisParts { admins, members, ca_certificate, .. } = self.genesis().expect("a genesis");
                validate_hex("CA certificate", ca_certificate, CERTIFICATE_HEX_BYTES_MAX)?;
                if admins.is_empty() {
                    return Err(CommandError::Malformed("genesis needs at least one admin key".into()));
                }
                if members.is_empty() {
                    return Err(CommandError::Malformed("genesis needs at least one member".into()));
                }
                if member_map(members).len() != members.len() {
                    return Err(CommandError::Malformed("genesis names a node id twice".into()));
                }
                members.iter().try_for_each(|m| validate_member(m.node_id, &m.addr))
            }
            Command::AddMember { node_id, addr } => validate_member(*node_id, addr),
            Command::RemoveMember { .. } => Ok(()),
            Command::Put { key, value } => {
                if key.is_empty() || key.len() > KV_KEY_BYTES_MAX {
                    return Err(CommandError::Malformed(format!(
                        "key must be 1 to {KV_KEY_BYTES_MAX} bytes, got {}",
                        key.len()
                    )));
                }
                if value.len() > KV_VALUE_BYTES_MAX {
                    return Err(CommandError::Malformed(format!(
                        "value is {} bytes; the limit is {KV_VALUE_BYTES_MAX}",
                        value.len()
                    )));
                }
                Ok(())
            }
            Command::CreateKey { name, threshold, participants, policy } => {
                validate_name("key name", name)?;
                validate_participants(*threshold, participants)?;
                policy.as_ref().map_or(Ok(()), Policy::validate)
            }
            Command::ImportKey { name, threshold, participants, public_key_package, policy } => {
                validate_name("key name", name)?;
                validate_participants(*threshold, participants)?;
                validate_hex("public key package", public_key_package, PACKAGE_HEX_BYTES_MAX)?;
                policy.as_ref().map_or(Ok(()), Policy::validate)
            }
            Command::RotateKey { name, threshold, participants, overlap_ms } => {
                validate_name("key name", name)?;
                validate_participants(*threshold, participants)?;
                if *overlap_ms > KEY_ROTATE_OVERLAP_MAX_MS {
                    return Err(CommandError::Malformed(format!(
                        "a rotation's overlap is at most {} days, not {} days",
                        KEY_ROTATE_OVERLAP_MAX_MS / DAY_MS,
                        overlap_ms / DAY_MS
                    )));
                }
                Ok(())
            }
            Command::RefreshKey { key, remove } => {
                validate_name("key name", key)?;
                if remove.len() > PARTICIPANTS_MAX {
                    return Err(CommandError::Malformed(format!("more than {PARTICIPANTS_MAX} nodes to remove")));
                }
                Ok(())
            }
            Command::RefreshRound1 { key_id, package, .. } => {
                validate_id("key id", key_id)?;
                validate_hex("refresh round-1 package", package, PACKAGE_HEX_BYTES_MAX)
            }
            Command::RefreshConfirm { key_id, public_key_package_sha256, .. } => {
                validate_id("key id", key_id)?;
                validate_hex("public key package hash", public_key_package_sha256, 64)
            }
            Command::RefreshAbort { key_id, reason, .. } => {
                validate_id("key id", key_id)?;
                validate_reason(reason)
            }
            Command::SetRefreshSchedule { key, every_ms } => {
                validate_name("key name", key)?;
                match every_ms {
                    Some(every) if !(REFRESH_EVERY_MIN_MS..=REFRESH_EVERY_MAX_MS).contains(every) => {
                        Err(CommandError::Malformed(format!(
                            "a refresh schedule's interval is {} s to {} days, not {} ms",
                            REFRESH_EVERY_MIN_MS / 1000,
                            REFRESH_EVERY_MAX_MS / DAY_MS,
                            every
                        )))
                    }
                    _ => Ok(()),
                }
            }
            Command::RefreshDue { key_id, .. } => validate_id("key id", key_id),
            Command::RepairShare { key, target } => {
                validate_name("key name", key)?;
                if *target == 0 || *target > u64::from(u16::MAX) {
                    return Err(CommandError::Malformed(format!(
                        "repair target {target} is not a node id (1 to 65535)"
                    )));
                }
                Ok(())
            }
            Command::RepairCommit { key_id, deltas, .. } => {
                validate_id("key id", key_id)?;
                if deltas.len() > PARTICIPANTS_MAX {
                    return Err(CommandError::Malformed(format!("more than {PARTICIPANTS_MAX} repair commitments")));
                }
                deltas.iter().try_for_each(|(_, d)| validate_hex("repair commitment", d, 64))
            }
            Command::RepairDone { key_id, .. } => validate_id("key id", key_id),
            Command::RepairAbort { key_id, reason, .. } => {
                validate_id("key id", key_id)?;
                validate_reason(reason)
            }
            Command::DkgRound1 { key_id, package, .. } => {
                validate_id("key id", key_id)?;
                validate_hex("round-1 package", package, PACKAGE_HEX_BYTES_MAX)
            }
            Command::KeyConfirm { key_id, group_key, public_key_package_sha256, .. } => {
                validate_id("key id", key_id)?;
                validate_hex("group key", group_key, 64)?;
                validate_hex("public key package hash", public_key_package_sha256, 64)
            }
            Command::KeyAbort { key_id, reason, .. } => {
                validate_id("key id", key_id)?;
                validate_reason(reason)
            }
            Command::SignRequest {
                request_id,
                key,
                message,
                purpose,
                environment,
                attributes,
                format,
                trusted_comment,
                ..
            } => {
                crate::authz::validate_label("environment", environment)?;
                crate::authz::validate_attributes(attributes)?;
                validate_name("request id", request_id)?;
                validate_name("key name", key)?;
                validate_hex("message", message, 2 * MESSAGE_BYTES_MAX).map_err(|_| {
                    CommandError::Malformed(format!(
                        "message must be hex of at most {MESSAGE_BYTES_MAX} bytes (got {} hex characters); \
                         sign larger artifacts in a format that signs their hash (`synod sign --format sshsig`, \
                         cms, minisign, openpgp)",
                        message.len()
                    ))
                })?;
                if purpose.len() > NAME_BYTES_MAX {
                    return Err(CommandError::Malformed(format!("purpose is longer than {NAME_BYTES_MAX} bytes")));
                }
                use crate::format::SignFormat;
                match (format, trusted_comment) {
                    (Some(SignFormat::Minisign), Some(comment)) => crate::format::validate_trusted_comment(comment)?,
                    (Some(SignFormat::Minisign), None) => {
                        return Err(CommandError::Malformed(
                            "a minisign request carries the trusted comment its global signature covers".into(),
                        ))
                    }
                    (_, Some(_)) => {
                        return Err(CommandError::Malformed("only a minisign request carries a trusted comment".into()))
                    }
                    _ => {}
                }
                if let Some(format) = format {
                    // Every node parses the to-be-signed bytes as the declared format.
                    let bytes =
                        hex::decode(message).map_err(|_| CommandError::Malformed("message is not hex".into()))?;
                    crate::format::inspect(*format, &bytes)?;
                }
                Ok(())
            }
            Command::SignResult { request_id, signature, signers, culprits, .. } => {
                validate_name("request id", request_id)?;
                validate_hex("signature", signature, 128)?;
                if signature.len() != 128 {
                    return Err(CommandError::Malformed("signature must be 64 bytes of hex".into()));
                }
                if signers.len() > PARTICIPANTS_MAX || culprits.len() > PARTICIPANTS_MAX {
                    return Err(CommandError::Malformed(format!("more than {PARTICIPANTS_MAX} signers or culprits")));
                }
                Ok(())
            }
            Command::Approve { request_id, approver, signature } => {
                validate_name("request id", request_id)?;
                validate_name("approver", approver)?;
                signature.validate()
            }
            Command::Deny { request_id, approver, reason, signature } => {
                validate_name("request id", request_id)?;
                validate_name("approver", approver)?;
                validate_reason(reason)?;
                if reason.chars().any(|c| c.is_control()) {
                    return Err(CommandError::Malformed(
                        "the denial reason must be printable (no control characters)".into(),
                    ));
                }
                signature.validate()
            }
            Command::CancelRequest { request_id } => validate_name("request id", request_id),
            Command::SetWebAuthn { config } => config.validate().map_err(|e| CommandError::Malformed(e.0)),
            Command::RegisterPasskey { operator, label, registration, .. } => {
                validate_name("operator", operator)?;
                if label.len() > crate::webauthn::LABEL_BYTES_MAX || label.chars().any(char::is_control) {
                    return Err(CommandError::Malformed(format!(
                        "a passkey label is at most {} printable characters",
                        crate::webauthn::LABEL_BYTES_MAX
                    )));
                }
                registration.validate().map_err(|e| CommandError::Malformed(e.0))
            }
            Command::ApprovePasskey { fingerprint, .. }
                if !fingerprint.starts_with("SHA256:") || fingerprint.len() > 64 =>
            {
                Err(CommandError::Malformed("a passkey fingerprint is SHA256: and 43 base64 characters".into()))
            }
            Command::ApprovePasskey { operator, credential_id, .. }
            | Command::RemovePasskey { operator, credential_id } => {
                validate_name("operator", operator)?;
                crate::webauthn::from_b64url(credential_id)
                    .ok()
                    .filter(|b| !b.is_empty() && b.len() <= crate::webauthn::CREDENTIAL_ID_BYTES_MAX)
                    .map(|_| ())
                    .ok_or_else(|| CommandError::Malformed("a credential id is 1 to 256 bytes of base64url".into()))
            }
            Command::SetWebhook { webhook } => webhook.validate(),
            Command::RemoveWebhook { name } => validate_name("webhook name", name),
            Command::AddOperator { name, key, ssh_key, roles, .. } => {
                validate_name("operator name", name)?;
                if key.is_none() && ssh_key.is_none() {
                    return Err(CommandError::Malformed(format!(
                        "operator {name} needs an Ed25519 key (--key) or an OpenSSH public key (--ssh-key)"
                    )));
                }
                if ssh_key.as_ref().is_some_and(|k| k.len() > 1024) {
                    return Err(CommandError::Malformed("the OpenSSH public key line is too long".into()));
                }
                if roles.is_empty() || roles.len() > 4 {
                    return Err(CommandError::Malformed(format!("operator {name} needs 1 to 4 roles")));
                }
                Ok(())
            }
            Command::RemoveOperator { name } => validate_name("operator name", name),
            Command::SetPolicy { key, policy } => {
                validate_name("key name", key)?;
                policy.validate()
            }
            Command::SetAdminPolicy { approvals_required } => {
                if *approvals_required == 0 {
                    return Err(CommandError::Malformed("the admin policy needs at least 1 approval".into()));
                }
                Ok(())
            }
            Command::ApproveProposal { proposal_id } => validate_id("proposal id", proposal_id),
            Command::DisableKey { key } | Command::EnableKey { key } | Command::CancelKeyDestroy { key } => {
                validate_name("key name", key)
            }
            Command::ScheduleKeyDestroy { key, wait_ms } => {
                validate_name("key name", key)?;
                if *wait_ms > KEY_DESTROY_WAIT_MAX_MS {
                    return Err(CommandError::Malformed(format!(
                        "a destruction may be scheduled at most {} days ahead, not {} days",
                        KEY_DESTROY_WAIT_MAX_MS / DAY_MS,
                        wait_ms / DAY_MS
                    )));
                }
                Ok(())
            }
            Command::KeyDestroyDue { key_id, .. }
            | Command::KeySharesDestroyed { key_id, .. }
            | Command::ShareMissing { key_id, .. } => validate_id("key id", key_id),
            Command::AuditCheckpoint { .. } | Command::Coordinate { .. } => Ok(()),
            Command::Endorse { point, .. } => point.validate(),
            Command::SignFailed { request_id, reason, culprits, .. } => {
                validate_name("request id", request_id)?;
                validate_reason(reason)?;
                if culprits.len() > PARTICIPANTS_MAX {
                    return Err(CommandError::Malformed(format!("more than {PARTICIPANTS_MAX} culprits")));
                }
                Ok(())
            }
            Command::SignOutcomes { node_id, outcomes } => {
                if outcomes.is_empty() || outcomes.len() > SIGN_OUTCOMES_MAX {
                    return Err(CommandError::Malformed(format!(
                        "sign_outcomes carries 1 to {SIGN_OUTCOMES_MAX} outcomes, not {}",
                        outcomes.len()
                    )));
                }
                for outcome in outcomes {
                    match outcome {
                        Command::SignResult { node_id: of, .. } | Command::SignFailed { node_id: of, .. }
                            if of == node_id =>
                        {
                            outcome.validate()?
                        }
                        other => {
                            return Err(CommandError::Malformed(format!(
                                "sign_outcomes of node {node_id} may carry only that node's sign_result and \
                                 sign_failed, not {} of node {:?}",
                                other.kind(),
                                other.authority()
                            )))
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// Names (keys, request ids): 1 to [`NAME_BYTES_MAX`] of `[A-Za-z0-9._-]`, not starting with `.` or `-`.
pub fn validate_name(what: &str, name: &str) -> Result<(), CommandError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > NAME_BYTES_MAX || !name.chars().all(ok_char) || name.starts_with(['.', '-']) {
        return Err(CommandError::Malformed(format!(
            "{what} {name:?} must be 1 to {NAME_BYTES_MAX} of A-Z a-z 0-9 . _ - (not starting with . or -)"
        )));
    }
    Ok(())
}

fn validate_id(what: &str, id: &str) -> Result<(), CommandError> {
    if id.len() != 32 || hex::decode(id).is_err() {
        return Err(CommandError::Malformed(format!("{what} {id:?} is not 16 bytes of hex")));
    }
    Ok(())
}

fn validate_hex(what: &str, text: &str, max_chars: usize) -> Result<(), CommandError> {
    if text.len() > max_chars {
        return Err(CommandError::Malformed(format!("{what} is longer than {max_chars} hex characters")));
    }
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(CommandError::Malformed(format!("{what} is not hex")));
    }
    Ok(())
}

fn validate_reason(reason: &str) -> Result<(), CommandError> {
    if reason.len() > REASON_BYTES_MAX {
        return Err(CommandError::Malformed(format!("reason is longer than {REASON_BYTES_MAX} bytes")));
    }
    Ok(())
}

fn validate_participants(threshold: u16, participants: &[NodeId]) -> Result<(), CommandError> {
    let distinct: std::collections::BTreeSet<_> = participants.iter().collect();
    if distinct.len() != participants.len() {
        return Err(CommandError::Malformed("a participant is named twice".into()));
    }
    if participants.len() > PARTICIPANTS_MAX {
        return Err(CommandError::Malformed(format!(
            "{} participants; a key may have at most {PARTICIPANTS_MAX}",
            participants.len()
        )));
    }
    if participants.iter().any(|id| *id == 0 || *id > u64::from(u16::MAX)) {
        return Err(CommandError::Malformed("participant node ids must be 1 to 65535".into()));
    }
    if threshold < 2 || usize::from(threshold) > participants.len() {
        return Err(CommandError::Malformed(format!(
            "threshold {threshold} must be at least 2 and at most the {} participants",
            participants.len()
        )));
    }
    Ok(())
}

fn validate_member(id: NodeId, addr: &NodeAddr) -> Result<(), CommandError> {
    if id == 0 {
        return Err(CommandError::Malformed("node id 0 is reserved; use 1 or more".into()));
    }
    for (field, value) in [("raft_addr", &addr.raft_addr), ("api_addr", &addr.api_addr)] {
        if value.parse::<std::net::SocketAddr>().is_err() && !value.contains(':') {
            return Err(CommandError::Malformed(format!("node {id}: {field} {value:?} is not host:port")));
        }
    }
    Ok(())
}

/// The signed text: which cluster, which command, when, and until when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Envelope {
    /// The cluster this command is for; a command for another cluster is refused.
    pub cluster_id: String,
    /// Unique per command (hex); the state machine refuses a second use while the
    /// command is still valid, so a captured command cannot be replayed.
    pub command_id: String,
    /// The author's clock when signing, informational.
    pub issued_at_ms: u64,
    /// After this (judged by the entry's time) the command is refused.
    pub expires_at_ms: u64,
    /// What to do.
    pub command: Command,
}

impl Envelope {
    /// The one way to make an envelope for a new command: a fresh random
    /// command id (see [`random_command_id`]), issued at `now_ms` and valid
    /// for `ttl_ms`.
    pub fn new(
        cluster_id: impl Into<String>,
        command: Command,
        now_ms: u64,
        ttl_ms: u64,
        rng: &mut (impl rand_core::RngCore + rand_core::CryptoRng + ?Sized),
    ) -> Envelope {
        Envelope {
            cluster_id: cluster_id.into(),
            command_id: random_command_id(rng),
            issued_at_ms: now_ms,
            expires_at_ms: now_ms.saturating_add(ttl_ms),
            command,
        }
    }
}

/// A fresh command id: 16 random bytes as 32 hex characters, so two authors
/// never pick the same one by chance.
pub fn random_command_id(rng: &mut (impl rand_core::RngCore + rand_core::CryptoRng + ?Sized)) -> String {
    let mut id = [0u8; 16];
    rng.fill_bytes(&mut id);
    hex::encode(id)
}

/// An envelope, its author and the author's signature over it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SignedCommand {
    /// The exact JSON text of the [`Envelope`] that was signed.
    #[schema(content_media_type = "application/json")]
    pub envelope: String,
    /// Who signed it.
    pub author: OperatorKey,
    /// Ed25519 signature over [`COMMAND_DOMAIN`] || `envelope`, hex.
    pub signature: String,
    /// For commands a node authors ([`Authority::Node`]): the node's certificate
    /// (hex DER), issued by the cluster CA, whose key is `author`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
}

impl SignedCommand {
    /// Serialises and signs an envelope.
    pub fn sign(envelope: &Envelope, key: &SigningKey) -> Self {
        let text = serde_json::to_string(envelope).expect("envelope serialises");
        let signature = key.sign(&signing_bytes(text.as_bytes()));
        SignedCommand {
            envelope: text,
            author: OperatorKey::of(key),
            signature: hex::encode(signature.to_bytes()),
            certificate: None,
        }
    }

    /// Serialises and signs an envelope with a node's certificate key, attaching
    /// the certificate (DER) so every node can check it chains to the cluster CA.
    pub fn sign_as_node(envelope: &Envelope, key: &SigningKey, certificate_der: &[u8]) -> Self {
        SignedCommand { certificate: Some(hex::encode(certificate_der)), ..Self::sign(envelope, key) }
    }

    /// Checks the signature over the carried bytes, then parses them.
    /// Says nothing about whether the author is allowed to do this: that is the
    /// state machine's decision.
    pub fn verify(&self) -> Result<Envelope, CommandError> {
        if self.envelope.len() > ENVELOPE_BYTES_MAX {
            return Err(CommandError::TooLarge { len: self.envelope.len(), max: ENVELOPE_BYTES_MAX });
        }
        let sig_bytes: [u8; 64] = hex::decode(&self.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| CommandError::Malformed("signature is not 64 bytes of hex".into()))?;
        let key = VerifyingKey::from_bytes(&self.author.0)
            .map_err(|_| CommandError::Malformed("author is not an Ed25519 key".into()))?;
        if self.certificate.as_ref().is_some_and(|c| c.len() > CERTIFICATE_HEX_BYTES_MAX) {
            return Err(CommandError::Malformed(format!(
                "certificate is longer than {CERTIFICATE_HEX_BYTES_MAX} hex characters"
            )));
        }
        let signature = ed25519_dalek::Signature::from_bytes(&sig_bytes);
        // verify_strict refuses small-order keys and malleable signatures.
        key.verify_strict(&signing_bytes(self.envelope.as_bytes()), &signature)
            .map_err(|_| CommandError::BadSignature { author: self.author })?;
        let envelope: Envelope = serde_json::from_str(&self.envelope)
            .map_err(|e| CommandError::Malformed(format!("envelope is not valid JSON for a command: {e}")))?;
        envelope.command.validate()?;
        Ok(envelope)
    }
}

impl SignedCommand {
    /// [`SignedCommand::verify`], every field within its limit
    /// ([`crate::limits::check_envelope`], which apply checks too under the
    /// rules that brought it), and the envelope carries no field that no
    /// command has. A node checks this before it proposes a command: unknown
    /// fields are signed and would be replicated to every log for nothing.
    /// (Applying ignores them, so entries already committed judge as before.)
    pub fn verify_for_admission(&self) -> Result<Envelope, CommandError> {
        let envelope = self.verify()?;
        crate::limits::check_envelope(&envelope)?;
        let sent: serde_json::Value = serde_json::from_str(&self.envelope)
            .map_err(|e| CommandError::Malformed(format!("envelope is not JSON: {e}")))?;
        let known = serde_json::to_value(&envelope).expect("envelope serialises");
        if let Some(path) = first_unknown_field(&sent, &known, "envelope") {
            return Err(CommandError::Malformed(format!(
                "{path} is not a field of this command; build commands with the synod CLI"
            )));
        }
        Ok(envelope)
    }
}

/// The path of the first field of `sent` that `known` (the same value as the
/// types read it) does not have, looking into nested objects.
fn first_unknown_field(sent: &serde_json::Value, known: &serde_json::Value, path: &str) -> Option<String> {
    let (serde_json::Value::Object(sent), serde_json::Value::Object(known)) = (sent, known) else { return None };
    for (name, value) in sent {
        let here = format!("{path}.{}", name.chars().take(64).collect::<String>());
        match known.get(name) {
            // A field sent with its default value that the types skip when writing is known.
            None if !is_empty(value) => return Some(here),
            None => {}
            Some(inner) => {
                if let Some(found) = first_unknown_field(value, inner, &here) {
                    return Some(found);
                }
            }
        }
    }
    None
}

fn is_empty(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

fn signing_bytes(envelope: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(COMMAND_DOMAIN.len() + envelope.len());
    out.extend_from_slice(COMMAND_DOMAIN);
    out.extend_from_slice(envelope);
    out
}

/// A node and its addresses, as named in genesis.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Member {
    pub node_id: NodeId,
    pub addr: NodeAddr,
}

/// The genesis member list as a map; `validate` has refused duplicates.
pub fn member_map(members: &[Member]) -> BTreeMap<NodeId, NodeAddr> {
    members.iter().map(|m| (m.node_id, m.addr.clone())).collect()
}

/// Why a command cannot even be considered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("malformed command: {0}")]
    Malformed(String),
    #[error("command is {len} bytes; the limit is {max}")]
    TooLarge { len: usize, max: usize },
    /// A field over its limit ([`crate::limits`]): which field (by path), its
    /// size, the limit and the limit's name.
    #[error("field {field} is {size} {unit}; the limit is {limit} ({name})")]
    FieldTooLarge { field: String, size: usize, unit: &'static str, limit: usize, name: &'static str },
    #[error("signature by {author} does not verify over this command; re-sign it with the operator key")]
    BadSignature { author: OperatorKey },
}

#[cfg(test)]
mod tests {
    #[test]
    fn command_admission_names_a_field_no_command_has() {
        // A command made by the types passes; one with an extra field, however deep, is
        // refused naming it; a default value written out that the types would skip passes.
        let key = SigningKey::from_bytes(&[3; 32]);
        let envelope = Envelope {
            cluster_id: "c".into(),
            command_id: format!("{:032x}", 1),
            issued_at_ms: 1,
            expires_at_ms: 2,
            command: Command::Put { key: "k".into(), value: "v".into() },
        };
        let signed = SignedCommand::sign(&envelope, &key);
        assert_eq!(signed.verify_for_admission().unwrap(), envelope);
        let resign = |text: String| SignedCommand {
            signature: hex::encode(key.sign(&signing_bytes(text.as_bytes())).to_bytes()),
            envelope: text,
            ..signed.clone()
        };
        let mut value = serde_json::to_value(&envelope).unwrap();
        value["command"]["padding"] = serde_json::json!("x");
        let err = resign(value.to_string()).verify_for_admission().unwrap_err().to_string();
        assert!(err.contains("envelope.command.padding"), "{err}");
        let mut value = serde_json::to_value(&envelope).unwrap();
        value["extra"] = serde_json::json!([]);
        assert!(resign(value.to_string()).verify_for_admission().is_ok());
        // It is not an admission rule at apply: `verify` still accepts it.
        let mut value = serde_json::to_value(&envelope).unwrap();
        value["extra"] = serde_json::json!(1);
        let padded = resign(value.to_string());
        assert!(padded.verify().is_ok() && padded.verify_for_admission().is_err());
    }

    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn envelope(command: Command) -> Envelope {
        Envelope { cluster_id: "c1".into(), command_id: "00".repeat(16), issued_at_ms: 1, expires_at_ms: 2, command }
    }

    #[test]
    fn command_sign_verify_round_trip() {
        // A command signed by an operator verifies and parses back to itself.
        let env = envelope(Command::Put { key: "k".into(), value: "v".into() });
        let signed = SignedCommand::sign(&env, &key(1));
        assert_eq!(signed.verify().unwrap(), env);
    }

    #[test]
    fn command_tampered_envelope_is_refused() {
        // Changing one byte of the signed text, or claiming another author, breaks the signature.
        let env = envelope(Command::Put { key: "k".into(), value: "v".into() });
        let mut signed = SignedCommand::sign(&env, &key(1));
        signed.envelope = signed.envelope.replace("\"v\"", "\"w\"");
        assert!(matches!(signed.verify(), Err(CommandError::BadSignature { .. })));
        let mut other = SignedCommand::sign(&env, &key(1));
        other.author = OperatorKey::of(&key(2));
        assert!(matches!(other.verify(), Err(CommandError::BadSignature { .. })));
    }

    #[test]
    fn command_oversized_and_garbage_are_refused() {
        // Inputs that are too large or not hex give errors, never panics.
        let mut signed = SignedCommand::sign(&envelope(Command::RemoveMember { node_id: 1 }), &key(1));
        signed.signature = "zz".into();
        assert!(matches!(signed.verify(), Err(CommandError::Malformed(_))));
        signed.envelope = "x".repeat(ENVELOPE_BYTES_MAX + 1);
        assert!(matches!(signed.verify(), Err(CommandError::TooLarge { .. })));
        assert!(OperatorKey::from_hex("abcd").is_err());
    }

    #[test]
    fn command_wire_format_is_pinned() {
        // The JSON shape of a command is a wire format; changing it breaks old logs.
        let env = envelope(Command::AddMember {
            node_id: 4,
            addr: NodeAddr { raft_addr: "127.0.0.1:1".into(), api_addr: "127.0.0.1:2".into() },
        });
        assert_eq!(
            serde_json::to_string(&env).unwrap(),
            r#"{"cluster_id":"c1","command_id":"00000000000000000000000000000000","issued_at_ms":1,"expires_at_ms":2,"command":{"type":"add_member","node_id":4,"addr":{"raft_addr":"127.0.0.1:1","api_addr":"127.0.0.1:2"}}}"#
        );
        let take_up = serde_json::to_string(&Command::Coordinate { node_id: 2, term: 7 }).unwrap();
        assert_eq!(take_up, r#"{"type":"coordinate","node_id":2,"term":7}"#);
        let genesis = Command::VersionedGenesis {
            rules: 2,
            admins: vec![],
            members: vec![],
            ca_certificate: "00".into(),
            key_destroy_wait_min_ms: None,
        };
        assert_eq!(
            serde_json::to_string(&genesis).unwrap(),
            r#"{"type":"versioned_genesis","rules":2,"admins":[],"members":[],"ca_certificate":"00"}"#
        );
    }
}

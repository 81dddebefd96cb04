//! Who may do what: operators and their roles, per-key signing policies, and
//! the approval statement approvers sign.
//!
//! An approval is a signature over [`approval_bytes`], a canonical, length-
//! prefixed encoding of everything the approver vouches for: the cluster, the
//! request, the requester, the key and its version, the message hash, purpose,
//! environment, every declared attribute, the policy version and the request's
//! expiry. Changing any of them makes another statement, so an approval cannot
//! be replayed for another request, cluster, message or purpose. Approvers sign
//! it with their operator key (Ed25519) or with `ssh-keygen -Y sign -n
//! synod-approval@v1` ([`APPROVAL_SSH_NAMESPACE`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::command::{validate_name, CommandError, OperatorKey, NAME_BYTES_MAX};
use crate::format::SignFormat;

/// Domain-separation tag that opens every approval statement.
pub const APPROVAL_DOMAIN: &[u8] = b"synod/approval/v1\0";
/// The tag of a version 2 statement (rules 9 and later), which adds the request's
/// format, the artifact hash read from its signed bytes, whether those are an
/// opaque digest, and minisign's trusted comment after the version 1 fields.
pub const APPROVAL_DOMAIN_V2: &[u8] = b"synod/approval/v2\0";
/// The namespace approvers pass to `ssh-keygen -Y sign -n`.
pub const APPROVAL_SSH_NAMESPACE: &str = "synod-approval@v1";
/// The domain tag that opens a denial statement ([`denial_bytes`]) in place
/// of the approval's, so no signature counts as both.
pub const DENIAL_DOMAIN: &[u8] = b"synod/denial/v1\0";
/// The name of the key that threshold-signs audit checkpoints and nothing else.
pub const AUDIT_KEY_NAME: &str = "audit";
/// Domain-separation tag of an audit checkpoint message.
pub const CHECKPOINT_DOMAIN: &[u8] = b"synod/audit-checkpoint/v1\0";

/// The message the audit key signs for a checkpoint: [`CHECKPOINT_DOMAIN`],
/// the cluster id (4-byte big-endian length, bytes), the record's sequence
/// number (8 bytes, big-endian) and its hash (32 bytes). Anyone holding the
/// records can rebuild it and check the signature with any Ed25519 tool.
pub fn checkpoint_message(cluster_id: &str, seq: u64, hash: &[u8; 32]) -> Vec<u8> {
    let mut out = CHECKPOINT_DOMAIN.to_vec();
    out.extend_from_slice(&(cluster_id.len() as u32).to_be_bytes());
    out.extend_from_slice(cluster_id.as_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(hash);
    out
}

/// The sequence number and hash a checkpoint message names, if it is one for `cluster_id`.
pub fn parse_checkpoint_message(cluster_id: &str, message: &[u8]) -> Option<(u64, [u8; 32])> {
    let prefix = checkpoint_message(cluster_id, 0, &[0; 32]);
    let head = prefix.len() - 40;
    if message.len() != prefix.len() || message[..head] != prefix[..head] {
        return None;
    }
    let seq = u64::from_be_bytes(message[head..head + 8].try_into().ok()?);
    let hash = message[head + 8..].try_into().ok()?;
    Some((seq, hash))
}

/// The most operators named in one policy list, tiers per policy, and declared attributes per request.
pub const POLICY_LIST_MAX: usize = 64;
/// The longest attribute value a request may declare.
pub const ATTRIBUTE_VALUE_BYTES_MAX: usize = 256;
/// The largest armored SSH signature an approval may carry.
pub const SSH_SIGNATURE_BYTES_MAX: usize = 8 * 1024;

/// What an operator may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// May ask for signatures (subject to each key's policy).
    Requester,
    /// May approve other operators' requests (when a policy names them).
    Approver,
    /// May change keys, policies, operators and membership (under the admin policy).
    Admin,
    /// May read the audit log.
    Auditor,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "requester" => Ok(Role::Requester),
            "approver" => Ok(Role::Approver),
            "admin" => Ok(Role::Admin),
            "auditor" => Ok(Role::Auditor),
            other => Err(format!("unknown role {other:?}; roles are requester, approver, admin, auditor")),
        }
    }
}

/// A key's signing policy. Evaluated by every node, in its own state, before
/// it releases a share.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Operators (by name) who may request; empty: any operator with the requester role.
    #[serde(default)]
    pub requesters: Vec<String>,
    /// Operators (by name) whose approvals count.
    #[serde(default)]
    pub approvers: Vec<String>,
    /// Approvals needed from `approvers` (0: none).
    #[serde(default)]
    pub approvals_required: u32,
    /// Allowed environments; empty: any.
    #[serde(default)]
    pub environments: Vec<String>,
    /// Allowed purposes; empty: any.
    #[serde(default)]
    pub purposes: Vec<String>,
    /// After this time (log time, ms since the epoch) the key signs nothing.
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
    /// Stricter requirements for requests whose declared attribute exceeds a limit.
    #[serde(default)]
    pub tiers: Vec<Tier>,
    /// How long (log time, ms) a request that waits for approvals may stay
    /// pending; unset: the node's default of 4 hours. Never more than the 24 h
    /// a command may be valid for. A request that needs no approval waits at
    /// most 10 minutes whatever this says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_window_ms: Option<u64>,
    /// The formats the key may sign (rules 9 and later), e.g. `["sshsig"]`;
    /// empty: any. `raw` is a plain message. Nodes parse every request's bytes
    /// as its declared format, so this holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub formats: Vec<SignFormat>,
    /// The SSHSIG namespaces the key may sign in (rules 9 and later), e.g.
    /// `["git"]`; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// How many of the approvers must deny a request before it fails (rules 10
    /// and later); unset: 1. At most the number of approvers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denials_required: Option<u32>,
}

/// "A request whose `attribute` is above `above` needs `approvals_required`
/// approvals from `approvers` (the policy's approvers when empty)."
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// The declared attribute compared, e.g. `amount` (an unsigned integer).
    pub attribute: String,
    /// The tier applies when the attribute is strictly above this.
    pub above: u64,
    pub approvals_required: u32,
    #[serde(default)]
    pub approvers: Vec<String>,
}

impl Policy {
    /// Checks sizes and shapes that do not depend on state.
    pub fn validate(&self) -> Result<(), CommandError> {
        let lists = [&self.requesters, &self.approvers, &self.environments, &self.purposes, &self.namespaces];
        if lists.iter().any(|l| l.len() > POLICY_LIST_MAX)
            || self.tiers.len() > POLICY_LIST_MAX
            || self.formats.len() > POLICY_LIST_MAX
        {
            return Err(CommandError::Malformed(format!("a policy list is longer than {POLICY_LIST_MAX}")));
        }
        for namespace in &self.namespaces {
            validate_label("namespace", namespace)?;
            if namespace.is_empty() {
                return Err(CommandError::Malformed("an SSHSIG namespace is never empty".into()));
            }
        }
        if !self.namespaces.is_empty() && !self.formats.is_empty() && !self.formats.contains(&SignFormat::Sshsig) {
            return Err(CommandError::Malformed(
                "the policy names SSHSIG namespaces but does not allow the sshsig format; add \"sshsig\" to formats"
                    .into(),
            ));
        }
        for name in self.requesters.iter().chain(&self.approvers) {
            validate_name("operator name", name)?;
        }
        for tier in &self.tiers {
            validate_name("tier attribute", &tier.attribute)?;
            if tier.approvers.len() > POLICY_LIST_MAX {
                return Err(CommandError::Malformed(format!("a tier names more than {POLICY_LIST_MAX} approvers")));
            }
            for name in &tier.approvers {
                validate_name("operator name", name)?;
            }
            let group = if tier.approvers.is_empty() { &self.approvers } else { &tier.approvers };
            if tier.approvals_required as usize > group.len() {
                return Err(CommandError::Malformed(format!(
                    "tier on {} needs {} approvals from {} approvers; it could never be met",
                    tier.attribute,
                    tier.approvals_required,
                    group.len()
                )));
            }
        }
        if let Some(window) = self.approval_window_ms {
            if window == 0 || window > crate::command::COMMAND_TTL_MS_MAX {
                return Err(CommandError::Malformed(format!(
                    "approval_window_ms is {window}; it must be between 1 and {} (24 h, the longest a command is valid)",
                    crate::command::COMMAND_TTL_MS_MAX
                )));
            }
        }
        if let Some(denials) = self.denials_required {
            let approvers = self.approver_names().len();
            if denials == 0 || denials as usize > approvers.max(1) {
                return Err(CommandError::Malformed(format!(
                    "the policy needs {denials} denials to fail a request but names {approvers} approvers; \
                     denials_required must be 1 to {}",
                    approvers.max(1)
                )));
            }
        }
        if self.approvals_required as usize > self.approvers.len() {
            return Err(CommandError::Malformed(format!(
                "the policy needs {} approvals but names {} approvers; it could never be met",
                self.approvals_required,
                self.approvers.len()
            )));
        }
        Ok(())
    }

    /// Everyone whose approval or denial counts: the policy's approvers and
    /// every tier's own group, each named once.
    pub fn approver_names(&self) -> std::collections::BTreeSet<&str> {
        let tiers = self.tiers.iter().flat_map(|t| t.approvers.iter());
        self.approvers.iter().chain(tiers).map(String::as_str).collect()
    }

    /// How many denials fail a request (rules 10 and later).
    pub fn denials_needed(&self) -> u32 {
        self.denials_required.unwrap_or(1)
    }

    /// The approvals a request with these attributes needs: (approver group, count)
    /// pairs, every one of which must be met. A tier over the policy's own
    /// approvers raises their count; a tier with its own group adds a requirement.
    pub fn requirements(&self, attributes: &BTreeMap<String, String>) -> Vec<(Vec<String>, u32)> {
        let mut base = self.approvals_required;
        let mut extra: Vec<(Vec<String>, u32)> = Vec::new();
        for tier in &self.tiers {
            let above = attributes.get(&tier.attribute).and_then(|v| v.trim().parse::<u64>().ok());
            // An attribute a tier needs but the request did not declare (or not as a number)
            // counts as above the limit: the strict reading.
            if above.is_some_and(|v| v <= tier.above) {
                continue;
            }
            if tier.approvers.is_empty() {
                base = base.max(tier.approvals_required);
            } else {
                extra.push((tier.approvers.clone(), tier.approvals_required));
            }
        }
        let mut out = Vec::new();
        if base > 0 {
            out.push((self.approvers.clone(), base));
        }
        out.extend(extra.into_iter().filter(|(_, n)| *n > 0));
        out
    }
}

/// How an approval is signed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ApprovalSignature {
    /// Ed25519 over [`approval_bytes`] with the approver's operator key (hex).
    Ed25519 { signature: String },
    /// An armored `ssh-keygen -Y sign -n synod-approval@v1` signature of [`approval_bytes`].
    Ssh { armored: String },
    /// A passkey's WebAuthn assertion whose challenge is SHA-256 of
    /// [`approval_bytes`] (rules 11 and later), every field base64url as the
    /// browser returns it: the credential id, the authenticator data, the
    /// client data JSON and the signature over `authenticatorData ||
    /// SHA-256(clientDataJSON)`. See `crate::webauthn`.
    WebAuthn { credential_id: String, authenticator_data: String, client_data_json: String, signature: String },
}

impl ApprovalSignature {
    pub fn validate(&self) -> Result<(), CommandError> {
        match self {
            ApprovalSignature::Ed25519 { signature } if signature.len() != 128 => {
                Err(CommandError::Malformed("an Ed25519 approval signature is 64 bytes of hex".into()))
            }
            ApprovalSignature::Ssh { armored } if armored.len() > SSH_SIGNATURE_BYTES_MAX => Err(
                CommandError::Malformed(format!("the SSH signature is longer than {SSH_SIGNATURE_BYTES_MAX} bytes")),
            ),
            ApprovalSignature::WebAuthn { .. } => {
                self.assertion().expect("a passkey approval").validate().map_err(|e| CommandError::Malformed(e.0))
            }
            _ => Ok(()),
        }
    }

    /// A passkey approval's assertion; `None` for other kinds.
    pub fn assertion(&self) -> Option<crate::webauthn::Assertion> {
        match self {
            ApprovalSignature::WebAuthn { credential_id, authenticator_data, client_data_json, signature } => {
                Some(crate::webauthn::Assertion {
                    credential_id: credential_id.clone(),
                    authenticator_data: authenticator_data.clone(),
                    client_data_json: client_data_json.clone(),
                    signature: signature.clone(),
                })
            }
            _ => None,
        }
    }

    /// The approval a passkey assertion makes.
    pub fn web_authn(assertion: crate::webauthn::Assertion) -> Self {
        ApprovalSignature::WebAuthn {
            credential_id: assertion.credential_id,
            authenticator_data: assertion.authenticator_data,
            client_data_json: assertion.client_data_json,
            signature: assertion.signature,
        }
    }
}

/// Everything an approver vouches for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalStatement {
    pub cluster_id: String,
    pub request_id: String,
    pub requester: OperatorKey,
    pub key_id: String,
    pub key_version: u32,
    /// SHA-256 of the message (hex).
    pub message_sha256: String,
    pub purpose: String,
    pub environment: String,
    pub attributes: BTreeMap<String, String>,
    pub policy_version: u64,
    pub expires_at_ms: u64,
    /// What the message is (rules 9 and later, and always then): its declared
    /// format and the artifact hash read from inside it. Present, the statement
    /// is version 2 ([`APPROVAL_DOMAIN_V2`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<StatementFormat>,
}

/// The format part of a version 2 approval statement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementFormat {
    pub format: SignFormat,
    /// `ALGORITHM:HEX` as the signed bytes name it; empty when they name none.
    pub artifact_hash: String,
    /// True when the signed bytes are an opaque digest (OpenPGP, minisign).
    pub opaque: bool,
    /// minisign's trusted comment; empty for other formats.
    pub trusted_comment: String,
}

impl StatementFormat {
    /// The statement's format part for a request with this format (raw when none).
    pub fn of(info: Option<&crate::format::FormatInfo>) -> Self {
        StatementFormat {
            format: info.map_or(SignFormat::Raw, |f| f.format),
            artifact_hash: info.and_then(|f| f.inspection.artifact_hash.clone()).unwrap_or_default(),
            opaque: info.is_some_and(|f| f.inspection.opaque),
            trusted_comment: info.and_then(|f| f.trusted_comment.clone()).unwrap_or_default(),
        }
    }
}

/// The canonical bytes of an approval statement: [`APPROVAL_DOMAIN`], then every
/// field as a 4-byte big-endian length and its bytes, in a fixed order (numbers
/// as 8-byte big-endian; attributes as their count, then key and value pairs in
/// key order). No two statements share an encoding. Pinned by a test.
///
/// A statement with a [`StatementFormat`] (rules 9 and later) opens with
/// [`APPROVAL_DOMAIN_V2`] instead and appends the format's name, the artifact
/// hash, the opaque flag (one byte) and the trusted comment, each as a field.
pub fn approval_bytes(s: &ApprovalStatement) -> Vec<u8> {
    let mut out = APPROVAL_DOMAIN.to_vec();
    let mut field = |bytes: &[u8]| {
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    field(s.cluster_id.as_bytes());
    field(s.request_id.as_bytes());
    field(&s.requester.0);
    field(s.key_id.as_bytes());
    field(&u64::from(s.key_version).to_be_bytes());
    field(s.message_sha256.as_bytes());
    field(s.purpose.as_bytes());
    field(s.environment.as_bytes());
    field(&(s.attributes.len() as u64).to_be_bytes());
    for (k, v) in &s.attributes {
        field(k.as_bytes());
        field(v.as_bytes());
    }
    field(&s.policy_version.to_be_bytes());
    field(&s.expires_at_ms.to_be_bytes());
    if let Some(f) = &s.format {
        field(f.format.name().as_bytes());
        field(f.artifact_hash.as_bytes());
        field(&[u8::from(f.opaque)]);
        field(f.trusted_comment.as_bytes());
    }
    if s.format.is_some() {
        out.splice(..APPROVAL_DOMAIN.len(), APPROVAL_DOMAIN_V2.iter().copied());
    }
    out
}

/// The canonical bytes of a denial statement: exactly [`approval_bytes`] with
/// [`DENIAL_DOMAIN`] in place of the approval's domain tag (version 1 or 2),
/// so a denial names the same request, message and policy version as an
/// approval would, yet neither can be replayed as the other. Pinned by a test.
pub fn denial_bytes(s: &ApprovalStatement) -> Vec<u8> {
    let approval = approval_bytes(s);
    let tag = if s.format.is_some() { APPROVAL_DOMAIN_V2.len() } else { APPROVAL_DOMAIN.len() };
    let mut out = DENIAL_DOMAIN.to_vec();
    out.extend_from_slice(&approval[tag..]);
    out
}

/// Checks a request's declared attributes.
pub fn validate_attributes(attributes: &BTreeMap<String, String>) -> Result<(), CommandError> {
    if attributes.len() > POLICY_LIST_MAX {
        return Err(CommandError::Malformed(format!("more than {POLICY_LIST_MAX} attributes")));
    }
    for (k, v) in attributes {
        validate_name("attribute name", k)?;
        if v.len() > ATTRIBUTE_VALUE_BYTES_MAX {
            return Err(CommandError::Malformed(format!(
                "attribute {k} is longer than {ATTRIBUTE_VALUE_BYTES_MAX} bytes"
            )));
        }
    }
    Ok(())
}

/// Checks an environment or purpose label.
pub fn validate_label(what: &str, text: &str) -> Result<(), CommandError> {
    if text.len() > NAME_BYTES_MAX || text.chars().any(|c| c.is_control()) {
        return Err(CommandError::Malformed(format!("{what} must be at most {NAME_BYTES_MAX} printable characters")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement() -> ApprovalStatement {
        ApprovalStatement {
            cluster_id: "c".into(),
            request_id: "r".into(),
            requester: OperatorKey([1; 32]),
            key_id: "k".into(),
            key_version: 1,
            message_sha256: "ab".into(),
            purpose: "p".into(),
            environment: "prod".into(),
            attributes: [("amount".to_string(), "5".to_string())].into(),
            policy_version: 2,
            expires_at_ms: 3,
            format: None,
        }
    }

    #[test]
    fn authz_version_2_statement_binds_the_format_and_the_artifact_hash() {
        let v1 = approval_bytes(&statement());
        let mut with_format = statement();
        with_format.format = Some(StatementFormat {
            format: SignFormat::Sshsig,
            artifact_hash: "sha512:00".into(),
            opaque: false,
            trusted_comment: String::new(),
        });
        let v2 = approval_bytes(&with_format);
        assert!(v2.starts_with(APPROVAL_DOMAIN_V2));
        // The version 1 fields, then the format's.
        assert_eq!(v2[APPROVAL_DOMAIN_V2.len()..v1.len()], v1[APPROVAL_DOMAIN.len()..]);
        assert_eq!(hex::encode(&v2[v1.len()..]), "00000006737368736967000000097368613531323a3030000000010000000000");
        for change in [
            |f: &mut StatementFormat| f.format = SignFormat::Raw,
            |f: &mut StatementFormat| f.artifact_hash = "sha512:01".into(),
            |f: &mut StatementFormat| f.opaque = true,
            |f: &mut StatementFormat| f.trusted_comment = "x".into(),
        ] {
            let mut other = with_format.clone();
            change(other.format.as_mut().unwrap());
            assert_ne!(approval_bytes(&other), v2);
        }
    }

    #[test]
    fn authz_denial_bytes_differ_from_approval_bytes_only_in_the_domain() {
        // A denial signs the approval's fields under its own tag; an approval signature never verifies as a denial.
        for format in [None, Some(StatementFormat::of(None))] {
            let mut s = statement();
            s.format = format;
            let approval = approval_bytes(&s);
            let denial = denial_bytes(&s);
            assert!(denial.starts_with(b"synod/denial/v1\0"));
            assert_ne!(denial, approval);
            let tag = if s.format.is_some() { APPROVAL_DOMAIN_V2.len() } else { APPROVAL_DOMAIN.len() };
            assert_eq!(denial[DENIAL_DOMAIN.len()..], approval[tag..]);
        }
        assert_eq!(hex::encode(&denial_bytes(&statement())[..DENIAL_DOMAIN.len()]), "73796e6f642f64656e69616c2f763100");
    }

    #[test]
    fn authz_approval_bytes_are_pinned() {
        // The approval encoding is what approvers sign; changing it invalidates every approval in flight.
        let bytes = approval_bytes(&statement());
        assert!(bytes.starts_with(APPROVAL_DOMAIN));
        assert_eq!(
            hex::encode(&bytes[APPROVAL_DOMAIN.len()..]),
            "00000001630000000172000000200101010101010101010101010101010101010101010101010101010101010101\
             000000016b00000008000000000000000100000002616200000001700000000470726f6400000008000000000000\
             000100000006616d6f756e740000000135000000080000000000000002000000080000000000000003"
        );
    }

    #[test]
    fn authz_every_field_changes_the_statement() {
        // Two statements that differ in any field, or move bytes between fields, encode differently.
        let base = approval_bytes(&statement());
        let mut other = statement();
        other.request_id = "r2".into();
        assert_ne!(approval_bytes(&other), base);
        let mut shifted = statement();
        shifted.cluster_id = "cr".into();
        shifted.request_id = String::new();
        assert_ne!(approval_bytes(&shifted), base);
        let mut env = statement();
        env.environment = "staging".into();
        assert_ne!(approval_bytes(&env), base);
    }

    #[test]
    fn authz_tiers_raise_or_add_requirements() {
        // Above the limit a tier raises the count or adds its own group; below it, only the base applies.
        let policy = Policy {
            approvers: vec!["a".into(), "b".into(), "c".into()],
            approvals_required: 1,
            tiers: vec![
                Tier { attribute: "amount".into(), above: 100, approvals_required: 2, approvers: vec![] },
                Tier { attribute: "amount".into(), above: 1000, approvals_required: 1, approvers: vec!["cfo".into()] },
            ],
            ..Policy::default()
        };
        let attrs = |v: &str| [("amount".to_string(), v.to_string())].into();
        assert_eq!(policy.requirements(&attrs("50")), vec![(policy.approvers.clone(), 1)]);
        assert_eq!(policy.requirements(&attrs("500")), vec![(policy.approvers.clone(), 2)]);
        assert_eq!(
            policy.requirements(&attrs("5000")),
            vec![(policy.approvers.clone(), 2), (vec!["cfo".to_string()], 1)]
        );
        // Undeclared counts as above every limit.
        assert_eq!(policy.requirements(&BTreeMap::new()).len(), 2);
        assert!(policy.validate().is_ok());
        let impossible = Policy { approvals_required: 4, ..policy };
        assert!(impossible.validate().is_err());
    }
}

//! Size limits on every string, list and map field of every command, and the
//! one function that checks them ([`check_envelope`]).
//!
//! Every node calls [`check_envelope`] when it admits a command (before
//! proposing it) and, under the rules version that introduced it, when it
//! applies the entry, so a command that passes one passes the other. A refusal
//! names the field, its size and the limit, by the limit's name. Limits that
//! existed before this module keep their names and homes (`command`, `authz`)
//! and are re-exported here, so this is the one list.

use crate::authz::ApprovalSignature;
use crate::command::{CommandError, Member};
use crate::{Command, Envelope, NodeAddr};

pub use crate::authz::{ATTRIBUTE_VALUE_BYTES_MAX, POLICY_LIST_MAX, SSH_SIGNATURE_BYTES_MAX};
pub use crate::command::{
    CERTIFICATE_HEX_BYTES_MAX, ENVELOPE_BYTES_MAX, KV_KEY_BYTES_MAX, KV_VALUE_BYTES_MAX, MESSAGE_BYTES_MAX,
    NAME_BYTES_MAX, PACKAGE_HEX_BYTES_MAX, PARTICIPANTS_MAX, REASON_BYTES_MAX, SIGN_OUTCOMES_MAX,
};

/// The longest cluster id an envelope names.
pub const CLUSTER_ID_BYTES_MAX: usize = 128;
/// A command id, key id or proposal id: 16 bytes as hex.
pub const ID_HEX_BYTES_MAX: usize = 32;
/// The most admin keys a genesis names.
pub const GENESIS_ADMINS_MAX: usize = 16;
/// The most members a genesis names (clusters have 3 to 9 nodes).
pub const MEMBERS_MAX: usize = 64;
/// The longest `host:port` address of a member.
pub const ADDR_BYTES_MAX: usize = 256;
/// A hex-encoded message to sign: twice [`MESSAGE_BYTES_MAX`].
pub const MESSAGE_HEX_BYTES_MAX: usize = 2 * MESSAGE_BYTES_MAX;
/// An Ed25519 signature (of a result or an approval) as hex.
pub const SIGNATURE_HEX_BYTES_MAX: usize = 128;
/// A 32-byte value (group key, SHA-256) as hex.
pub const DIGEST_HEX_BYTES_MAX: usize = 64;
/// The longest OpenSSH public key line an operator carries.
pub const SSH_KEY_LINE_BYTES_MAX: usize = 1024;
/// The most roles an operator has (there are four).
pub const ROLES_MAX: usize = 4;

/// Checks every string, list and map field of `envelope` against its limit.
/// The same function decides at admission and at apply.
pub fn check_envelope(envelope: &Envelope) -> Result<(), CommandError> {
    bytes("envelope.cluster_id", &envelope.cluster_id, CLUSTER_ID_BYTES_MAX, "cluster_id_bytes_max")?;
    bytes("envelope.command_id", &envelope.command_id, ID_HEX_BYTES_MAX, "id_hex_bytes_max")?;
    check_command(&envelope.command, envelope.command.kind())
}

/// Checks `command`'s fields; `at` names it in errors (`put`, `sign_outcomes.outcomes[2]`).
fn check_command(command: &Command, at: &str) -> Result<(), CommandError> {
    let f = |field: &str| format!("{at}.{field}");
    match command {
        Command::Genesis { .. } | Command::VersionedGenesis { .. } => {
            let crate::command::GenesisParts { admins, members, ca_certificate, .. } =
                command.genesis().expect("a genesis");
            items(&f("admins"), admins.len(), GENESIS_ADMINS_MAX, "genesis_admins_max")?;
            items(&f("members"), members.len(), MEMBERS_MAX, "members_max")?;
            for (i, Member { addr, .. }) in members.iter().enumerate() {
                check_addr(&f(&format!("members[{i}].addr")), addr)?;
            }
            bytes(&f("ca_certificate"), ca_certificate, CERTIFICATE_HEX_BYTES_MAX, "certificate_hex_bytes_max")
        }
        Command::AddMember { addr, .. } => check_addr(&f("addr"), addr),
        Command::RemoveMember { .. } | Command::SetAdminPolicy { .. } => Ok(()),
        Command::AuditCheckpoint { .. } | Command::Coordinate { .. } => Ok(()),
        Command::Endorse { point, .. } => {
            bytes(&f("point.cluster_id"), &point.cluster_id, CLUSTER_ID_BYTES_MAX, "cluster_id_bytes_max")?;
            bytes(&f("point.state_sha256"), &point.state_sha256, DIGEST_HEX_BYTES_MAX, "digest_hex_bytes_max")
        }
        Command::Put { key, value } => {
            bytes(&f("key"), key, KV_KEY_BYTES_MAX, "kv_key_bytes_max")?;
            bytes(&f("value"), value, KV_VALUE_BYTES_MAX, "kv_value_bytes_max")
        }
        Command::CreateKey { name, participants, policy, .. } => {
            name_bytes(&f("name"), name)?;
            items(&f("participants"), participants.len(), PARTICIPANTS_MAX, "participants_max")?;
            policy.as_ref().map_or(Ok(()), |p| policy_bytes(&f, p))
        }
        Command::RotateKey { name, participants, .. } => {
            name_bytes(&f("name"), name)?;
            items(&f("participants"), participants.len(), PARTICIPANTS_MAX, "participants_max")
        }
        Command::ImportKey { name, participants, public_key_package, policy, .. } => {
            name_bytes(&f("name"), name)?;
            items(&f("participants"), participants.len(), PARTICIPANTS_MAX, "participants_max")?;
            package_bytes(&f("public_key_package"), public_key_package)?;
            policy.as_ref().map_or(Ok(()), |p| policy_bytes(&f, p))
        }
        Command::DkgRound1 { key_id, package, .. } | Command::RefreshRound1 { key_id, package, .. } => {
            id_bytes(&f("key_id"), key_id)?;
            package_bytes(&f("package"), package)
        }
        Command::RefreshConfirm { key_id, public_key_package_sha256, .. } => {
            id_bytes(&f("key_id"), key_id)?;
            bytes(
                &f("public_key_package_sha256"),
                public_key_package_sha256,
                DIGEST_HEX_BYTES_MAX,
                "digest_hex_bytes_max",
            )
        }
        Command::KeyConfirm { key_id, group_key, public_key_package_sha256, .. } => {
            id_bytes(&f("key_id"), key_id)?;
            bytes(&f("group_key"), group_key, DIGEST_HEX_BYTES_MAX, "digest_hex_bytes_max")?;
            bytes(
                &f("public_key_package_sha256"),
                public_key_package_sha256,
                DIGEST_HEX_BYTES_MAX,
                "digest_hex_bytes_max",
            )
        }
        Command::RepairCommit { key_id, deltas, .. } => {
            id_bytes(&f("key_id"), key_id)?;
            items(&f("deltas"), deltas.len(), PARTICIPANTS_MAX, "participants_max")?;
            for (to, point) in deltas.iter() {
                bytes(&f(&format!("deltas[{to}]")), point, DIGEST_HEX_BYTES_MAX, "digest_hex_bytes_max")?;
            }
            Ok(())
        }
        Command::RepairDone { key_id, .. } => id_bytes(&f("key_id"), key_id),
        Command::RefreshKey { key, remove } => {
            name_bytes(&f("key"), key)?;
            items(&f("remove"), remove.len(), PARTICIPANTS_MAX, "participants_max")
        }
        Command::KeyAbort { key_id, reason, .. }
        | Command::RefreshAbort { key_id, reason, .. }
        | Command::RepairAbort { key_id, reason, .. } => {
            id_bytes(&f("key_id"), key_id)?;
            reason_bytes(&f("reason"), reason)
        }
        Command::SignRequest {
            request_id, key, message, purpose, environment, attributes, trusted_comment, ..
        } => {
            if let Some(comment) = trusted_comment {
                bytes(
                    &f("trusted_comment"),
                    comment,
                    crate::format::TRUSTED_COMMENT_BYTES_MAX,
                    "trusted_comment_bytes_max",
                )?;
            }
            name_bytes(&f("request_id"), request_id)?;
            name_bytes(&f("key"), key)?;
            bytes(&f("message"), message, MESSAGE_HEX_BYTES_MAX, "message_hex_bytes_max")?;
            name_bytes(&f("purpose"), purpose)?;
            name_bytes(&f("environment"), environment)?;
            items(&f("attributes"), attributes.len(), POLICY_LIST_MAX, "policy_list_max")?;
            for (name, value) in attributes {
                let at = f(&format!("attributes[{}]", clip(name)));
                name_bytes(&format!("{at}.name"), name)?;
                bytes(&at, value, ATTRIBUTE_VALUE_BYTES_MAX, "attribute_value_bytes_max")?;
            }
            Ok(())
        }
        Command::Approve { request_id, approver, signature } => {
            name_bytes(&f("request_id"), request_id)?;
            name_bytes(&f("approver"), approver)?;
            match signature {
                ApprovalSignature::Ed25519 { signature } => {
                    bytes(&f("signature.signature"), signature, SIGNATURE_HEX_BYTES_MAX, "signature_hex_bytes_max")
                }
                ApprovalSignature::Ssh { armored } => {
                    bytes(&f("signature.armored"), armored, SSH_SIGNATURE_BYTES_MAX, "ssh_signature_bytes_max")
                }
                // Bounded field by field by its own validation (`webauthn::Assertion::validate`).
                ApprovalSignature::WebAuthn { .. } => Ok(()),
            }
        }
        Command::Deny { request_id, approver, reason, signature } => {
            name_bytes(&f("request_id"), request_id)?;
            name_bytes(&f("approver"), approver)?;
            reason_bytes(&f("reason"), reason)?;
            match signature {
                ApprovalSignature::Ed25519 { signature } => {
                    bytes(&f("signature.signature"), signature, SIGNATURE_HEX_BYTES_MAX, "signature_hex_bytes_max")
                }
                ApprovalSignature::Ssh { armored } => {
                    bytes(&f("signature.armored"), armored, SSH_SIGNATURE_BYTES_MAX, "ssh_signature_bytes_max")
                }
                // Bounded field by field by its own validation (`webauthn::Assertion::validate`).
                ApprovalSignature::WebAuthn { .. } => Ok(()),
            }
        }
        Command::CancelRequest { request_id } => name_bytes(&f("request_id"), request_id),
        // Their sizes are bounded by their own validation (proto/src/webauthn, proto/src/webhook).
        Command::SetWebAuthn { .. } | Command::RegisterPasskey { .. } | Command::SetWebhook { .. } => Ok(()),
        Command::ApprovePasskey { operator, .. } | Command::RemovePasskey { operator, .. } => {
            name_bytes(&f("operator"), operator)
        }
        Command::RemoveWebhook { name } => name_bytes(&f("name"), name),
        Command::AddOperator { name, ssh_key, roles, .. } => {
            name_bytes(&f("name"), name)?;
            if let Some(line) = ssh_key {
                bytes(&f("ssh_key"), line, SSH_KEY_LINE_BYTES_MAX, "ssh_key_line_bytes_max")?;
            }
            items(&f("roles"), roles.len(), ROLES_MAX, "roles_max")
        }
        Command::RemoveOperator { name } => name_bytes(&f("name"), name),
        Command::SetPolicy { key, policy } => {
            name_bytes(&f("key"), key)?;
            policy_bytes(&f, policy)
        }
        Command::ApproveProposal { proposal_id } => id_bytes(&f("proposal_id"), proposal_id),
        Command::DisableKey { key }
        | Command::RepairShare { key, .. }
        | Command::SetRefreshSchedule { key, .. }
        | Command::EnableKey { key }
        | Command::CancelKeyDestroy { key }
        | Command::ScheduleKeyDestroy { key, .. } => name_bytes(&f("key"), key),
        Command::KeyDestroyDue { key_id, .. }
        | Command::KeySharesDestroyed { key_id, .. }
        | Command::ShareMissing { key_id, .. }
        | Command::RefreshDue { key_id, .. } => id_bytes(&f("key_id"), key_id),
        Command::SignResult { request_id, signature, signers, culprits, .. } => {
            name_bytes(&f("request_id"), request_id)?;
            bytes(&f("signature"), signature, SIGNATURE_HEX_BYTES_MAX, "signature_hex_bytes_max")?;
            items(&f("signers"), signers.len(), PARTICIPANTS_MAX, "participants_max")?;
            items(&f("culprits"), culprits.len(), PARTICIPANTS_MAX, "participants_max")
        }
        Command::SignFailed { request_id, reason, culprits, .. } => {
            name_bytes(&f("request_id"), request_id)?;
            reason_bytes(&f("reason"), reason)?;
            items(&f("culprits"), culprits.len(), PARTICIPANTS_MAX, "participants_max")
        }
        Command::SignOutcomes { outcomes, .. } => {
            items(&f("outcomes"), outcomes.len(), SIGN_OUTCOMES_MAX, "sign_outcomes_max")?;
            for (i, outcome) in outcomes.iter().enumerate() {
                check_command(outcome, &f(&format!("outcomes[{i}]")))?;
            }
            Ok(())
        }
    }
}

fn check_addr(at: &str, addr: &NodeAddr) -> Result<(), CommandError> {
    bytes(&format!("{at}.raft_addr"), &addr.raft_addr, ADDR_BYTES_MAX, "addr_bytes_max")?;
    bytes(&format!("{at}.api_addr"), &addr.api_addr, ADDR_BYTES_MAX, "addr_bytes_max")
}

/// A policy's lists and names, where the command carries one.
fn policy_bytes(f: &impl Fn(&str) -> String, policy: &crate::authz::Policy) -> Result<(), CommandError> {
    let lists = [
        ("requesters", &policy.requesters),
        ("approvers", &policy.approvers),
        ("environments", &policy.environments),
        ("purposes", &policy.purposes),
    ];
    for (list, names) in lists {
        let at = f(&format!("policy.{list}"));
        items(&at, names.len(), POLICY_LIST_MAX, "policy_list_max")?;
        for (i, name) in names.iter().enumerate() {
            name_bytes(&format!("{at}[{i}]"), name)?;
        }
    }
    items(&f("policy.tiers"), policy.tiers.len(), POLICY_LIST_MAX, "policy_list_max")?;
    for (i, tier) in policy.tiers.iter().enumerate() {
        let at = f(&format!("policy.tiers[{i}]"));
        name_bytes(&format!("{at}.attribute"), &tier.attribute)?;
        items(&format!("{at}.approvers"), tier.approvers.len(), POLICY_LIST_MAX, "policy_list_max")?;
        for (j, name) in tier.approvers.iter().enumerate() {
            name_bytes(&format!("{at}.approvers[{j}]"), name)?;
        }
    }
    Ok(())
}

fn name_bytes(field: &str, text: &str) -> Result<(), CommandError> {
    bytes(field, text, NAME_BYTES_MAX, "name_bytes_max")
}

fn id_bytes(field: &str, text: &str) -> Result<(), CommandError> {
    bytes(field, text, ID_HEX_BYTES_MAX, "id_hex_bytes_max")
}

fn reason_bytes(field: &str, text: &str) -> Result<(), CommandError> {
    bytes(field, text, REASON_BYTES_MAX, "reason_bytes_max")
}

fn package_bytes(field: &str, text: &str) -> Result<(), CommandError> {
    bytes(field, text, PACKAGE_HEX_BYTES_MAX, "package_hex_bytes_max")
}

fn bytes(field: &str, text: &str, limit: usize, name: &'static str) -> Result<(), CommandError> {
    if text.len() <= limit {
        return Ok(());
    }
    Err(CommandError::FieldTooLarge { field: field.to_string(), size: text.len(), unit: "bytes", limit, name })
}

fn items(field: &str, count: usize, limit: usize, name: &'static str) -> Result<(), CommandError> {
    if count <= limit {
        return Ok(());
    }
    Err(CommandError::FieldTooLarge { field: field.to_string(), size: count, unit: "items", limit, name })
}

/// A map key as it appears in a field path: at most 64 characters of it.
fn clip(name: &str) -> String {
    name.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(command: Command) -> Envelope {
        Envelope { cluster_id: "c".into(), command_id: "00".repeat(16), issued_at_ms: 0, expires_at_ms: 1, command }
    }

    #[test]
    fn limits_oversized_fields_are_named_with_their_size_and_limit() {
        // Each refusal names the field (nested ones by path), its size, the limit and its name;
        // fields at their limit pass.
        let put = |key: usize, value: usize| Command::Put { key: "k".repeat(key), value: "v".repeat(value) };
        assert!(check_envelope(&envelope(put(KV_KEY_BYTES_MAX, KV_VALUE_BYTES_MAX))).is_ok());
        let err = check_envelope(&envelope(put(KV_KEY_BYTES_MAX + 1, 1))).unwrap_err().to_string();
        assert_eq!(err, "field put.key is 257 bytes; the limit is 256 (kv_key_bytes_max)");

        let long_cluster = Envelope { cluster_id: "c".repeat(200), ..envelope(put(1, 1)) };
        let err = check_envelope(&long_cluster).unwrap_err().to_string();
        assert!(err.contains("envelope.cluster_id is 200 bytes") && err.contains("cluster_id_bytes_max"), "{err}");

        let addr = NodeAddr { raft_addr: "h".repeat(300), api_addr: "a:1".into() };
        let err = check_envelope(&envelope(Command::AddMember { node_id: 2, addr })).unwrap_err().to_string();
        assert!(err.contains("add_member.addr.raft_addr is 300 bytes") && err.contains("addr_bytes_max"), "{err}");

        let failed = Command::SignFailed {
            request_id: "r".into(),
            node_id: 1,
            reason: "x".repeat(REASON_BYTES_MAX + 1),
            culprits: vec![],
            attempt: 0,
        };
        let batch = Command::SignOutcomes { node_id: 1, outcomes: vec![failed] };
        let err = check_envelope(&envelope(batch)).unwrap_err().to_string();
        assert!(err.contains("sign_outcomes.outcomes[0].reason is 1025 bytes"), "{err}");

        let policy = crate::authz::Policy { environments: vec!["e".repeat(65)], ..Default::default() };
        let err = check_envelope(&envelope(Command::SetPolicy { key: "k".into(), policy })).unwrap_err();
        assert!(err.to_string().contains("set_policy.policy.environments[0] is 65 bytes"), "{err}");

        let admins = vec![crate::OperatorKey::of(&ed25519_dalek::SigningKey::from_bytes(&[1; 32])); 17];
        let genesis = Command::Genesis { admins, members: Vec::<Member>::new(), ca_certificate: String::new() };
        let err = check_envelope(&envelope(genesis)).unwrap_err().to_string();
        assert!(err.contains("genesis.admins is 17 items; the limit is 16 (genesis_admins_max)"), "{err}");
    }
}

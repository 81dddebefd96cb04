//! Key versions and rotation (rules 6 and later).
//!
//! A key name has versions, each its own DKG and its own key id; one is the
//! primary, which `key_names` points to and which requests naming only the
//! key use. `synod key rotate` ([`Command::RotateKey`]) starts a new version
//! next to the primary; the DKG and its confirmations run exactly as for a
//! new key. When every participant has confirmed it, the new version becomes
//! the primary and the one it replaces is *retiring* for the rotation's
//! overlap (its status stays active, with `retire_at_ms` set): requests
//! already committed on it finish, and a request may still name it with
//! `version`. At the deadline (the log's time, judged at every entry, and by
//! every signer against its own clock before it releases a share) it is
//! *retired*: it signs nothing, its pending requests fail, and its public key
//! still verifies what it signed.
//!
//! ```text
//!   v1 active (primary) ──rotate──► v2 generating ──all confirmed──► v2 active (primary)
//!                                        │                           v1 retiring ──overlap──► v1 retired
//!                                        └─ aborted (timeout, disagreement, disable, destroy): v1 stays primary
//! ```
//!
//! Rotation is how a key's threshold or participants change: each version
//! has its own. Version numbers are never reused (an aborted rotation's
//! number stays taken). The lifecycle commands name the key and act on all
//! its versions; a policy is the key's, so a policy change applies to every
//! version. The audit key is not rotated: its checkpoints name one public key.
//!
//! [`Command::RotateKey`]: synod_proto::Command::RotateKey

use synod_proto::api::KeyVersionInfo;
use synod_proto::NodeId;

use super::keys::{KeyOrigin, NewKey, Rotation};
use super::{ClusterState, KeyRecord, KeyStatus, Refusal};

/// The first rules version with key versions and rotation.
pub const RULES_KEY_VERSIONS: u32 = 6;

/// What a `rotate_key` command asks for.
pub(super) struct NewVersion<'a> {
    /// The command id, which becomes the version's key id.
    pub id: &'a str,
    pub name: &'a str,
    pub threshold: u16,
    pub participants: &'a [NodeId],
    pub overlap_ms: u64,
}

impl ClusterState {
    /// Every version ever made under `name` (aborted ones too), oldest first.
    pub fn versions_of<'a>(&'a self, name: &str) -> Vec<&'a KeyRecord> {
        let mut versions: Vec<&KeyRecord> = self.keys.values().filter(|k| k.name == name).collect();
        versions.sort_by_key(|k| (k.version, k.created_index));
        versions
    }

    /// The ids of `name`'s versions other than the primary that have not
    /// been aborted, oldest first: what the lifecycle commands act on along
    /// with the primary.
    pub(super) fn other_versions(&self, name: &str) -> Vec<String> {
        let primary = self.key_names.get(name);
        self.versions_of(name)
            .into_iter()
            .filter(|k| Some(&k.id) != primary && !matches!(k.status, KeyStatus::Aborted { .. }))
            .map(|k| k.id.clone())
            .collect()
    }

    /// The key a sign request names: the primary, or the version it asks for.
    pub(super) fn requested_version(&self, name: &str, version: Option<u32>) -> Result<&KeyRecord, Refusal> {
        let primary = self.key_by_name(name).ok_or(format!("no key named {name:?}"))?;
        let Some(version) = version else { return Ok(primary) };
        self.needs_rules(RULES_KEY_VERSIONS, "naming a key version")?;
        self.versions_of(name)
            .into_iter()
            .rev()
            .find(|k| k.version == version && !matches!(k.status, KeyStatus::Aborted { .. }))
            .ok_or_else(|| {
                format!(
                    "key {name} has no version {version} (the primary is version {}); see `synod key show {name}`",
                    primary.version
                )
                .into()
            })
    }

    /// The API view of the key named `name`, with all its versions.
    pub fn key_info_with_versions(&self, key: &KeyRecord) -> synod_proto::api::KeyInfo {
        let mut info = key.info();
        let primary = self.key_names.get(&key.name);
        info.versions = self
            .versions_of(&key.name)
            .into_iter()
            .filter(|k| !matches!(k.status, KeyStatus::Aborted { .. }) || k.id == key.id)
            .map(|k| KeyVersionInfo {
                version: k.version,
                id: k.id.clone(),
                status: k.api_status(),
                primary: Some(&k.id) == primary,
                threshold: k.threshold,
                participants: k.participants.clone(),
                public_key: k.group_key.clone(),
                activated_at_ms: k.activated_at_ms,
                retire_at_ms: k.retire_at_ms,
            })
            .collect();
        info
    }

    /// Under rules 6, a member that holds a share of a key in service (or of a
    /// version still generating) cannot be removed: the key would lose a
    /// signer without anyone deciding it. Rotating the key to participants
    /// without the member moves it off first; a retired or destroyed version
    /// does not hold the removal up. Nor does the audit key, which is not
    /// rotated: it loses the member's share and signs on while its threshold
    /// of participants remain.
    pub(super) fn check_no_shares_in_service(&self, node: NodeId) -> Result<(), Refusal> {
        if self.rules < RULES_KEY_VERSIONS {
            return Ok(());
        }
        let held: Vec<&KeyRecord> = self
            .keys
            .values()
            .filter(|k| {
                k.is_participant(node)
                    && k.name != synod_proto::authz::AUDIT_KEY_NAME
                    && matches!(
                        k.status,
                        KeyStatus::Generating | KeyStatus::Active | KeyStatus::Disabled | KeyStatus::DestroyScheduled
                    )
            })
            .collect();
        let Some(first) = held.first() else { return Ok(()) };
        let names: Vec<String> = held.iter().map(|k| format!("{} v{}", k.name, k.version)).collect();
        let others: Vec<String> = first.participants.iter().filter(|p| **p != node).map(|p| p.to_string()).collect();
        Err(format!(
            "node {node} holds shares of keys in service ({}); move each key off it first: a refresh keeps the \
             public key (`synod key refresh {} --remove {node}`), a rotation makes a new one (`synod key rotate {} \
             --participants {}`); or destroy the key. Then remove the node",
            names.join(", "),
            first.name,
            first.name,
            others.join(",")
        )
        .into())
    }

    pub(super) fn rotate_key(&mut self, index: u64, new: NewVersion<'_>) -> Result<String, Refusal> {
        let NewVersion { id, name, threshold, participants, overlap_ms } = new;
        self.needs_rules(RULES_KEY_VERSIONS, "rotation")?;
        if name == synod_proto::authz::AUDIT_KEY_NAME {
            return Err("the audit key is not rotated: its checkpoints name one public key".into());
        }
        let primary = self.key_by_name(name).ok_or(format!("no key named {name:?}"))?;
        if primary.status != KeyStatus::Active {
            return Err(format!("{}; only an active key can be rotated", primary.not_signing()).into());
        }
        let versions = self.versions_of(name);
        if let Some(pending) = versions.iter().find(|k| k.status == KeyStatus::Generating) {
            return Err(format!(
                "version {} of key {name} is still generating (id {}); wait for it to turn active or time out",
                pending.version, pending.id
            )
            .into());
        }
        let version = versions.iter().map(|k| k.version).max().unwrap_or_default() + 1;
        let (replaces, policy, policy_version, policy_unset) =
            (primary.id.clone(), primary.policy.clone(), primary.policy_version, primary.policy_unset);
        let primary_version = primary.version;
        // The policy is the key's, taken as it stands (not judged again as a new key's would be).
        let request = NewKey { id, name, threshold, participants, policy: None };
        let mut key = self.key_record(index, &request, KeyOrigin::Dkg)?;
        key.version = version;
        key.policy = policy;
        key.policy_version = policy_version;
        key.policy_unset = policy_unset;
        key.rotation = Some(Rotation { replaces, overlap_ms });
        let detail = format!(
            "key {name} version {version} ({id}) generating: {threshold} of {} participants {:?}; version {} stays \
             primary until it is active",
            key.participants.len(),
            key.participants,
            primary_version,
        );
        self.keys.insert(key.id.clone(), key);
        Ok(detail)
    }

    /// Makes the version `new_id`, just active, the primary of its name and
    /// starts the overlap of the version it replaces.
    pub(super) fn promote(&mut self, index: u64, new_id: &str, rotation: &Rotation) -> String {
        let Some(name) = self.keys.get(new_id).map(|k| k.name.clone()) else { return String::new() };
        self.key_names.insert(name.clone(), new_id.to_string());
        let at = self.time_ms.saturating_add(rotation.overlap_ms);
        let Some(old) = self.keys.get_mut(&rotation.replaces) else { return format!("it is key {name}'s primary") };
        old.retire_at_ms = Some(at);
        let old_version = old.version;
        let retired = self.retire_versions(index);
        let overlap = if retired > 0 {
            "retired at once (no overlap)".to_string()
        } else {
            format!("retiring until {at} ms ({})", super::duration_words(rotation.overlap_ms))
        };
        format!("it is key {name}'s primary; version {old_version} {overlap}")
    }

    /// Retires every version whose overlap has ended by the log's time,
    /// failing its pending requests. Returns how many it retired.
    pub(super) fn retire_versions(&mut self, index: u64) -> usize {
        if crate::faults::enabled(crate::faults::SKIP_RETIREMENT) {
            return 0;
        }
        let now = self.time_ms;
        let due: Vec<String> = self
            .keys
            .values()
            .filter(|k| {
                matches!(k.status, KeyStatus::Active | KeyStatus::Disabled)
                    && k.retire_at_ms.is_some_and(|at| at <= now)
            })
            .map(|k| k.id.clone())
            .collect();
        for id in &due {
            let Some(key) = self.keys.get_mut(id) else { continue };
            key.status = KeyStatus::Retired;
            key.status_index = index;
            let reason = format!("version {} of key {} retired: its overlap ended", key.version, key.name);
            tracing::info!(key = %key.name, version = key.version, "key version retired");
            self.fail_requests_of_key(id, &reason);
        }
        due.len()
    }
}

//! Signing keys in the replicated state: creation by DKG or import, the
//! committed round-1 packages, the confirmations, activation and abort.
//!
//! Pedersen DKG has no complaint round and the log is only as honest as the
//! leader, so a key turns active only when every participant has committed a
//! signed confirmation of the same group key and public key package, which the
//! state machine also computes itself from the committed round-1 commitments.

use std::collections::BTreeMap;

use frost_ed25519 as frost;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use synod_proto::api::KeyInfo;
use synod_proto::NodeId;

use super::{ClusterState, Refusal};

/// A key generation or import that has not completed this long after its
/// creation (by entry time) is aborted by the state machine itself.
pub const DKG_TIMEOUT_MS: u64 = 120_000;

/// A new key's version; each rotation adds one ([`super::versions`]).
pub(super) const FIRST_VERSION: u32 = 1;

/// How a key came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyOrigin {
    /// Distributed key generation among the nodes; the whole key never existed.
    Dkg,
    /// Split by a dealer on an operator's machine (migration of an existing key).
    Imported,
}

/// Where a key stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum KeyStatus {
    /// Waiting for round-1 packages or confirmations.
    Generating,
    /// Every participant confirmed the same key; it signs.
    Active,
    /// Generation failed; the name is free again.
    Aborted { reason: String, culprit: Option<NodeId> },
    /// An admin stopped it (rules 5 and later); enabling it makes it active again.
    Disabled,
    /// Its destruction is scheduled at `destroy_at_ms`; it signs nothing meanwhile.
    DestroyScheduled,
    /// Destroyed: it signs nothing, ever; its participants delete their shares.
    Destroyed,
    /// A version a rotation replaced, past its overlap (rules 6 and later):
    /// it signs nothing; its public key still verifies.
    Retired,
}

impl KeyStatus {
    /// Whether the key is out of service (disabled, its destruction scheduled
    /// or done, or a version retired by a rotation): such a key releases nothing.
    pub fn is_out_of_service(&self) -> bool {
        matches!(self, KeyStatus::Disabled | KeyStatus::DestroyScheduled | KeyStatus::Destroyed | KeyStatus::Retired)
    }

    /// The status as the API and the CLI name it.
    pub fn api(&self) -> synod_proto::api::KeyStatus {
        use synod_proto::api::KeyStatus as Api;
        match self {
            KeyStatus::Generating => Api::Generating,
            KeyStatus::Active => Api::Active,
            KeyStatus::Aborted { .. } => Api::Aborted,
            KeyStatus::Disabled => Api::Disabled,
            KeyStatus::DestroyScheduled => Api::DestroyScheduled,
            KeyStatus::Destroyed => Api::Destroyed,
            KeyStatus::Retired => Api::Retired,
        }
    }
}

/// A signing key as the log decided it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    pub version: u32,
    pub threshold: u16,
    /// Ascending; FROST identifier = node id.
    pub participants: Vec<NodeId>,
    pub origin: KeyOrigin,
    pub status: KeyStatus,
    /// Committed DKG round-1 packages (hex), by participant.
    pub round1: BTreeMap<NodeId, String>,
    /// The public key package (hex), once every round-1 package is in (DKG) or from the import.
    pub public_key_package: Option<String>,
    /// The Ed25519 group public key (hex).
    pub group_key: Option<String>,
    /// Participants that confirmed `group_key` and the package hash.
    pub confirmed: Vec<NodeId>,
    pub created_index: u64,
    pub created_at_ms: u64,
    pub activated_at_ms: Option<u64>,
    /// Who may request, and the approvals a signature needs.
    #[serde(default)]
    pub policy: synod_proto::authz::Policy,
    /// Increments with every policy change; approvals name the version they approve under.
    #[serde(default)]
    pub policy_version: u64,
    /// The key was made without a policy (rules 4 and later): it signs nothing
    /// until an admin sets one under the admin quorum. A default policy lets
    /// any requester sign without approvals, so it is never assumed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub policy_unset: bool,
    /// The log index of the entry that last changed the key's service status
    /// (activation, disable, enable, a destruction's schedule, cancel or
    /// deadline): a share released by a node whose applied index had reached
    /// it was released under that status.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub status_index: u64,
    /// When the key is (or was) destroyed, by the log's time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destroy_at_ms: Option<u64>,
    /// Participants that confirmed they deleted every share of the destroyed key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares_destroyed: Vec<NodeId>,
    /// Participants that reported holding no share of the key (a lost disk).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares_missing: Vec<NodeId>,
    /// For a version a rotation replaced: when it retires, by the log's time.
    /// Until then it is "retiring" (its status stays active).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_at_ms: Option<u64>,
    /// For a version made by a rotation: the id of the version it replaces
    /// once active, and how long that one keeps signing (its overlap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<Rotation>,
    /// The generation of the shares that sign (rules 7 and later): 0 from
    /// the key's generation, one more per completed refresh. Every node seals
    /// its share under its generation and signs only with the current one.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub generation: u32,
    /// The log index of the entry that made `generation` current.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation_index: u64,
    /// When the last refresh completed, by the log's time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refreshed_at_ms: Option<u64>,
    /// A refresh in progress ([`super::refresh`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<super::refresh::Refresh>,
    /// How the last refresh was aborted; cleared when another starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_failed: Option<super::refresh::RefreshFailure>,
    /// The key's refresh schedule: every this many ms of log time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_every_ms: Option<u64>,
    /// When the next scheduled refresh is due, by the log's time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_due_at_ms: Option<u64>,
    /// Nodes a refresh removed from the key, with the generation that
    /// refresh made: each deletes its shares of the generations before it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_participants: Vec<(NodeId, u32)>,
    /// A repair (or enrollment) in progress ([`super::repair`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair: Option<super::repair::Repair>,
    /// How the last repair was aborted; cleared when another starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair_failed: Option<super::repair::RepairFailure>,
}

/// What a version made by `rotate_key` replaces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    pub replaces: String,
    pub overlap_ms: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

impl KeyRecord {
    /// A key version just created at log `index` and time `now_ms`, waiting
    /// for its round-1 packages (or its imported shares), with the default
    /// policy at version 1. Participants are kept in ascending order.
    pub fn generating(
        id: &str,
        name: &str,
        threshold: u16,
        participants: &[NodeId],
        origin: KeyOrigin,
        index: u64,
        now_ms: u64,
    ) -> KeyRecord {
        let mut participants = participants.to_vec();
        participants.sort_unstable();
        KeyRecord {
            id: id.to_string(),
            name: name.to_string(),
            version: FIRST_VERSION,
            threshold,
            participants,
            origin,
            status: KeyStatus::Generating,
            round1: BTreeMap::new(),
            public_key_package: None,
            group_key: None,
            confirmed: Vec::new(),
            created_index: index,
            created_at_ms: now_ms,
            activated_at_ms: None,
            policy: Default::default(),
            policy_version: 1,
            policy_unset: false,
            status_index: 0,
            destroy_at_ms: None,
            shares_destroyed: Vec::new(),
            shares_missing: Vec::new(),
            retire_at_ms: None,
            rotation: None,
            generation: 0,
            generation_index: 0,
            refreshed_at_ms: None,
            refresh: None,
            refresh_failed: None,
            refresh_every_ms: None,
            refresh_due_at_ms: None,
            removed_participants: Vec::new(),
            repair: None,
            repair_failed: None,
        }
    }

    /// The status as the API names it: an active version with a retirement
    /// deadline is `retiring`.
    pub fn api_status(&self) -> synod_proto::api::KeyStatus {
        match self.status {
            KeyStatus::Active if self.retire_at_ms.is_some() => synod_proto::api::KeyStatus::Retiring,
            ref other => other.api(),
        }
    }

    /// The API view.
    pub fn info(&self) -> KeyInfo {
        let (abort_reason, culprit) = match &self.status {
            KeyStatus::Aborted { reason, culprit } => (Some(reason.clone()), *culprit),
            _ => (None, None),
        };
        KeyInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            version: self.version,
            threshold: self.threshold,
            participants: self.participants.clone(),
            status: self.api_status(),
            origin: match self.origin {
                KeyOrigin::Dkg => "dkg",
                KeyOrigin::Imported => "imported",
            }
            .into(),
            public_key: self.group_key.clone(),
            round1_received: self.round1.keys().copied().collect(),
            confirmed: self.confirmed.clone(),
            abort_reason,
            culprit,
            created_at_ms: self.created_at_ms,
            activated_at_ms: self.activated_at_ms,
            policy: self.policy.clone(),
            policy_version: self.policy_version,
            policy_unset: self.policy_unset,
            destroy_at_ms: self.destroy_at_ms,
            shares_destroyed: self.shares_destroyed.clone(),
            shares_missing: self.shares_missing.clone(),
            retire_at_ms: self.retire_at_ms,
            versions: Vec::new(),
            generation: self.generation,
            refreshed_at_ms: self.refreshed_at_ms,
            refresh: self.refresh.as_ref().map(|r| r.info()),
            refresh_failed: self.refresh_failed.as_ref().map(|f| f.describe(self.generation)),
            refresh_every_ms: self.refresh_every_ms,
            refresh_due_at_ms: self.refresh_due_at_ms,
            repair: self.repair.as_ref().map(|r| r.info()),
            repair_failed: self.repair_failed.as_ref().map(|f| f.describe()),
        }
    }

    /// The decoded public key package, once known.
    pub fn public_keys(&self) -> Option<frost::keys::PublicKeyPackage> {
        let bytes = hex::decode(self.public_key_package.as_deref()?).ok()?;
        frost::keys::PublicKeyPackage::deserialize(&bytes).ok()
    }

    /// The group public key, once known.
    pub fn group_key_bytes(&self) -> Option<[u8; 32]> {
        hex::decode(self.group_key.as_deref()?).ok()?.try_into().ok()
    }

    /// Why this key signs nothing now (for a key that is not active).
    pub fn not_signing(&self) -> String {
        let name = &self.name;
        match &self.status {
            KeyStatus::Generating => format!("key {name} is not active yet (still generating)"),
            KeyStatus::Active => format!("key {name} is active"),
            KeyStatus::Aborted { .. } => format!("key {name}'s generation was aborted"),
            KeyStatus::Disabled => {
                format!("key {name} is disabled; an admin enables it again with `synod key enable {name}`")
            }
            KeyStatus::DestroyScheduled => format!(
                "key {name} is scheduled for destruction at {} ms and signs nothing; an admin can still cancel with \
                 `synod key destroy {name} --cancel`",
                self.destroy_at_ms.unwrap_or_default()
            ),
            KeyStatus::Destroyed => format!("key {name} is destroyed; it signs nothing and its name is not reused"),
            KeyStatus::Retired => format!(
                "version {} of key {name} is retired (a rotation replaced it, and its overlap ended at {} ms); it \
                 verifies only. Request without --key-version to sign with the primary",
                self.version,
                self.retire_at_ms.unwrap_or_default()
            ),
        }
    }

    pub(super) fn is_participant(&self, node: NodeId) -> bool {
        self.participants.contains(&node)
    }
}

/// The FROST identifier of a participant node (node ids 1 to 65535).
pub fn frost_identifier(node: NodeId) -> Option<frost::Identifier> {
    u16::try_from(node).ok().and_then(|n| frost::Identifier::try_from(n).ok())
}

/// SHA-256 (hex) of a serialized public key package: what participants confirm.
pub fn package_hash(package_hex: &str) -> String {
    hex::encode(Sha256::digest(hex::decode(package_hex).unwrap_or_default()))
}

/// What a `create_key` or `import_key` command asks for.
pub(super) struct NewKey<'a> {
    /// The command id, which becomes the key id.
    pub id: &'a str,
    pub name: &'a str,
    pub threshold: u16,
    pub participants: &'a [NodeId],
    /// The policy the key starts with; `None` leaves it unset (rules 4 and later).
    pub policy: Option<&'a synod_proto::authz::Policy>,
}

impl ClusterState {
    /// The live key (generating or active) with this name.
    pub fn key_by_name(&self, name: &str) -> Option<&KeyRecord> {
        self.key_names.get(name).and_then(|id| self.keys.get(id))
    }

    fn new_key(&mut self, index: u64, new: &NewKey<'_>, origin: KeyOrigin) -> Result<KeyRecord, Refusal> {
        if let Some(existing) = self.key_by_name(new.name) {
            return Err(format!(
                "a key named {:?} already exists (id {}); pick another name, or make a new version with \
                 `synod key rotate {}`",
                new.name, existing.id, new.name
            )
            .into());
        }
        self.key_record(index, new, origin)
    }

    /// A generating key record for `new`, once its policy, id and participants check out.
    pub(super) fn key_record(&self, index: u64, new: &NewKey<'_>, origin: KeyOrigin) -> Result<KeyRecord, Refusal> {
        let NewKey { id, name, threshold, participants, policy } = *new;
        if let Some(policy) = policy {
            self.check_policy_names(policy)?;
        }
        let policy_unset = policy.is_none()
            && self.rules >= super::RULES_BOUNDED_CLIENTS
            && name != synod_proto::authz::AUDIT_KEY_NAME;
        if self.keys.contains_key(id) {
            return Err(format!("key id {id} is taken").into());
        }
        if let Some(stranger) = participants.iter().find(|p| !self.members.contains_key(p)) {
            return Err(format!("participant {stranger} is not a member of the cluster").into());
        }
        let mut key = KeyRecord::generating(id, name, threshold, participants, origin, index, self.time_ms);
        key.policy = policy.cloned().unwrap_or_default();
        key.policy_unset = policy_unset;
        Ok(key)
    }

    fn insert_key(&mut self, key: KeyRecord) {
        self.key_names.insert(key.name.clone(), key.id.clone());
        self.keys.insert(key.id.clone(), key);
    }

    pub(super) fn create_key(&mut self, index: u64, new: NewKey<'_>) -> Result<String, Refusal> {
        let key = self.new_key(index, &new, KeyOrigin::Dkg)?;
        let NewKey { id, name, threshold, .. } = new;
        let detail = format!(
            "key {name} ({id}) generating: {threshold} of {} participants {:?}",
            key.participants.len(),
            key.participants
        );
        self.insert_key(key);
        Ok(detail)
    }

    pub(super) fn import_key(&mut self, index: u64, new: NewKey<'_>, package_hex: &str) -> Result<String, Refusal> {
        let mut key = self.new_key(index, &new, KeyOrigin::Imported)?;
        let NewKey { id, name, threshold, .. } = new;
        let bytes = hex::decode(package_hex).map_err(|_| "public key package is not hex")?;
        let package = frost::keys::PublicKeyPackage::deserialize(&bytes)
            .map_err(|e| format!("public key package does not parse: {e}"))?;
        let expected: Vec<frost::Identifier> = key.participants.iter().filter_map(|p| frost_identifier(*p)).collect();
        let present: Vec<frost::Identifier> = package.verifying_shares().keys().copied().collect();
        if expected != present {
            return Err("public key package's identifiers are not the participants' node ids".into());
        }
        if package.min_signers().is_some_and(|m| m != threshold) {
            return Err("public key package's threshold differs from the command's".into());
        }
        let group = package.verifying_key().serialize().map_err(|e| format!("group key: {e}"))?;
        key.group_key = Some(hex::encode(group));
        key.public_key_package = Some(package_hex.to_string());
        let detail = format!("key {name} ({id}) imported; waiting for {} shares", key.participants.len());
        self.insert_key(key);
        Ok(detail)
    }

    fn generating_key(&mut self, key_id: &str, node: NodeId) -> Result<&mut KeyRecord, Refusal> {
        let key = self.keys.get_mut(key_id).ok_or(format!("no key with id {key_id}"))?;
        if key.status != KeyStatus::Generating {
            return Err(format!("key {} is not generating", key.name).into());
        }
        if !key.is_participant(node) {
            return Err(format!("node {node} is not a participant of key {}", key.name).into());
        }
        Ok(key)
    }

    pub(super) fn dkg_round1(&mut self, key_id: &str, node: NodeId, package_hex: &str) -> Result<String, Refusal> {
        let key = self.generating_key(key_id, node)?;
        if key.origin != KeyOrigin::Dkg {
            return Err("an imported key has no DKG rounds".into());
        }
        if key.round1.contains_key(&node) {
            return Err(format!("node {node} already committed its round-1 package for key {}", key.name).into());
        }
        let bytes = hex::decode(package_hex).map_err(|_| "round-1 package is not hex")?;
        let package = frost::keys::dkg::round1::Package::deserialize(&bytes)
            .map_err(|e| format!("round-1 package from node {node} does not parse: {e}"))?;
        if package.commitment().coefficients().len() != usize::from(key.threshold) {
            return Err(format!("round-1 package from node {node} commits to the wrong threshold").into());
        }
        key.round1.insert(node, package_hex.to_string());
        let name = key.name.clone();
        if key.round1.len() < key.participants.len() {
            return Ok(format!(
                "key {name}: round-1 package {}/{} (node {node})",
                key.round1.len(),
                key.participants.len()
            ));
        }
        // Every round-1 package is in: compute the public key package every participant must confirm.
        match public_package_from_round1(key) {
            Ok((package_hex, group_hex)) => {
                key.public_key_package = Some(package_hex);
                key.group_key = Some(group_hex.clone());
                Ok(format!("key {name}: all round-1 packages committed; group key {group_hex}"))
            }
            Err(reason) => {
                self.abort(key_id, reason.clone(), None);
                Ok(format!("key {name} aborted: {reason}"))
            }
        }
    }

    pub(super) fn key_confirm(
        &mut self,
        index: u64,
        key_id: &str,
        node: NodeId,
        group_key: &str,
        package_sha256: &str,
    ) -> Result<String, Refusal> {
        let now = self.time_ms;
        let key = self.generating_key(key_id, node)?;
        let (Some(ours), Some(package)) = (&key.group_key, &key.public_key_package) else {
            return Err(format!("key {} has no group key yet to confirm", key.name).into());
        };
        if key.confirmed.contains(&node) {
            return Err(format!("node {node} already confirmed key {}", key.name).into());
        }
        if ours != group_key || package_hash(package) != package_sha256 {
            let reason = format!(
                "node {node} derived a different key than the committed round-1 packages give; \
                 the DKG messages it saw differ (a participant or the leader equivocated). Run it again."
            );
            let name = key.name.clone();
            self.abort(key_id, reason, None);
            return Ok(format!("key {name} aborted: confirmations disagree"));
        }
        key.confirmed.push(node);
        key.confirmed.sort_unstable();
        if key.confirmed.len() < key.participants.len() {
            return Ok(format!("key {}: confirmation {}/{}", key.name, key.confirmed.len(), key.participants.len()));
        }
        key.status = KeyStatus::Active;
        key.status_index = index;
        key.activated_at_ms = Some(now);
        let detail = format!("key {} version {} active; public key {ours}", key.name, key.version);
        match key.rotation.clone() {
            Some(rotation) => Ok(format!("{detail}; {}", self.promote(index, key_id, &rotation))),
            None => Ok(detail),
        }
    }

    pub(super) fn key_abort(
        &mut self,
        key_id: &str,
        node: NodeId,
        reason: &str,
        culprit: Option<NodeId>,
    ) -> Result<String, Refusal> {
        let key = self.generating_key(key_id, node)?;
        let name = key.name.clone();
        self.abort(key_id, format!("node {node}: {reason}"), culprit);
        Ok(format!("key {name} aborted by node {node}"))
    }

    pub(super) fn abort(&mut self, key_id: &str, reason: String, culprit: Option<NodeId>) {
        if let Some(key) = self.keys.get_mut(key_id) {
            tracing::warn!(key = %key.name, key_id, reason, ?culprit, "key generation aborted");
            key.status = KeyStatus::Aborted { reason, culprit };
            key.round1.clear();
            if self.key_names.get(&key.name).is_some_and(|id| id == key_id) {
                self.key_names.remove(&key.name);
            }
        }
    }

    /// Aborts generations that ran past [`DKG_TIMEOUT_MS`] of entry time.
    pub(super) fn expire_keys(&mut self) {
        let now = self.time_ms;
        let stale: Vec<String> = self
            .keys
            .values()
            .filter(|k| k.status == KeyStatus::Generating && now.saturating_sub(k.created_at_ms) > DKG_TIMEOUT_MS)
            .map(|k| k.id.clone())
            .collect();
        for id in stale {
            let reason = format!("timed out after {} s; are all participants up?", DKG_TIMEOUT_MS / 1000);
            self.abort(&id, reason, None);
        }
    }
}

/// The public key package and group key (both hex) that the committed round-1
/// commitments determine.
fn public_package_from_round1(key: &KeyRecord) -> Result<(String, String), String> {
    let mut packages = BTreeMap::new();
    for (node, package_hex) in &key.round1 {
        let id = frost_identifier(*node).ok_or(format!("node id {node} has no FROST identifier"))?;
        let bytes = hex::decode(package_hex).map_err(|_| "round-1 package is not hex".to_string())?;
        let package = frost::keys::dkg::round1::Package::deserialize(&bytes).map_err(|e| e.to_string())?;
        packages.insert(id, package);
    }
    let commitments = packages.iter().map(|(id, p)| (*id, p.commitment())).collect();
    let public = frost::keys::PublicKeyPackage::from_dkg_commitments(&commitments)
        .map_err(|e| format!("the round-1 commitments do not combine into a key: {e}"))?;
    let bytes = public.serialize().map_err(|e| e.to_string())?;
    let group = public.verifying_key().serialize().map_err(|e| e.to_string())?;
    Ok((hex::encode(bytes), hex::encode(group)))
}

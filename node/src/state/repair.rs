//! Repair and enrollment (rules 7 and later): a node gets a share of a key's
//! current generation from `t` helpers, and the key is never whole anywhere.
//!
//! ```text
//!  repair_share NAME target ──► helpers: the first t participants holding shares
//!      helper i: δ_ij for each helper j (frost's repair part 1), g^δ_ij committed
//!                through the log; the state checks Σ_j g^δ_ij = λ_i · VS_i
//!      helper j: checks each δ_ij against its commitment, σ_j = Σ_i δ_ij (part 2)
//!                to the target over mTLS
//!      target:   checks g^σ_j = Σ_i g^δ_ij, derives its share (part 3), checks it
//!                against its verifying share, seals it, commits repair_done
//! ```
//!
//! A participant that lost its share gets the identical share back. A member
//! that is not a participant is enrolled: its verifying share is interpolated
//! in the exponent from the helpers' and added to the public key package, and
//! it joins the participants. Frost's part 3 detects no lying helper; the
//! commitments make every value checkable, so a wrong one names its sender.
//! One repair per key at a time, none during a refresh; aborted by a helper's
//! or the target's `repair_abort`, [`DKG_TIMEOUT_MS`] of log time, or the key
//! leaving service.

use std::collections::{BTreeMap, BTreeSet};

use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::Scalar;
use frost::keys::{PublicKeyPackage, VerifyingShare};
use frost_ed25519 as frost;
use serde::{Deserialize, Serialize};
use synod_proto::api::RepairInfo;
use synod_proto::NodeId;

use super::keys::{frost_identifier, DKG_TIMEOUT_MS};
use super::refresh::{point, RULES_KEY_REFRESH};
use super::{ClusterState, KeyRecord, KeyStatus, Refusal};

/// A repair in progress on a key version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repair {
    pub target: NodeId,
    /// The target was not a participant: it joins the key.
    pub enrolling: bool,
    /// Ascending.
    pub helpers: Vec<NodeId>,
    /// The log index of the `repair_share` that started it: every message names it.
    pub started_index: u64,
    pub started_at_ms: u64,
    /// `g^δ_ij` (hex), by helper i, then by helper j.
    pub commitments: BTreeMap<NodeId, BTreeMap<NodeId, String>>,
    /// The verifying share (hex) the target's share must have.
    pub verifying_share: String,
}

impl Repair {
    pub fn info(&self) -> RepairInfo {
        RepairInfo {
            target: self.target,
            enrolling: self.enrolling,
            helpers: self.helpers.clone(),
            committed: self.commitments.keys().copied().collect(),
            started_at_ms: self.started_at_ms,
        }
    }
}

/// How a repair was aborted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairFailure {
    pub target: NodeId,
    pub reason: String,
    pub culprit: Option<NodeId>,
}

impl RepairFailure {
    pub fn describe(&self) -> String {
        let blame = self.culprit.map(|c| format!(" (culprit: node {c})")).unwrap_or_default();
        format!("repair of node {}'s share aborted: {}{blame}", self.target, self.reason)
    }
}

impl ClusterState {
    /// `repair_share`: starts giving `target` its share of `name`'s primary version.
    pub(super) fn repair_share(&mut self, index: u64, name: &str, target: NodeId) -> Result<String, Refusal> {
        self.needs_rules(RULES_KEY_REFRESH, "repairing a key's share")?;
        let now = self.time_ms;
        if !self.members.contains_key(&target) {
            return Err(format!("node {target} is not a member of the cluster; add it first").into());
        }
        let key = self.key_by_name(name).ok_or(format!("no key named {name:?}"))?;
        if key.status != KeyStatus::Active {
            return Err(format!("cannot repair: {}", key.not_signing()).into());
        }
        if key.refresh.is_some() || key.repair.is_some() {
            return Err(format!(
                "key {name} has a refresh or repair in progress; wait for it to complete or abort (`synod key show {name}`)"
            )
            .into());
        }
        let public = key.public_keys().ok_or(format!("key {name}'s public key package does not parse"))?;
        let enrolling = !key.participants.contains(&target);
        let excluded: BTreeSet<NodeId> =
            key.repair_failed.iter().filter_map(|f| f.culprit).chain(key.shares_missing.iter().copied()).collect();
        let helpers: Vec<NodeId> = key
            .participants
            .iter()
            .copied()
            .filter(|p| *p != target && !excluded.contains(p) && self.members.contains_key(p))
            .take(usize::from(key.threshold))
            .collect();
        if helpers.len() < usize::from(key.threshold) {
            return Err(format!(
                "a repair needs {} helpers holding shares, and only nodes {helpers:?} can help (left out: {:?}); \
                 make a new version with `synod key rotate {name}`",
                key.threshold, excluded
            )
            .into());
        }
        let verifying_share = if enrolling {
            interpolate(&public, &helpers, target).ok_or("cannot interpolate the new member's verifying share")?
        } else {
            let id = frost_identifier(target).ok_or("no FROST identifier")?;
            let share = public.verifying_shares().get(&id).ok_or(format!("node {target} has no verifying share"))?;
            hex::encode(share.serialize().map_err(|e| e.to_string())?)
        };
        let id = key.id.clone();
        let key = self.keys.get_mut(&id).expect("found above");
        key.repair = Some(Repair {
            target,
            enrolling,
            helpers: helpers.clone(),
            started_index: index,
            started_at_ms: now,
            commitments: BTreeMap::new(),
            verifying_share,
        });
        key.repair_failed = None;
        let what = if enrolling { "enrolling" } else { "repairing the share of" };
        Ok(format!("key {name} version {}: {what} node {target}, helped by nodes {helpers:?}", key.version))
    }

    /// The key `key_id` with a repair in progress started at log index `attempt`.
    fn repairing(&mut self, key_id: &str, attempt: u64) -> Result<&mut KeyRecord, Refusal> {
        self.needs_rules(RULES_KEY_REFRESH, "repairing a key's share")?;
        let key = self.keys.get_mut(key_id).ok_or(format!("no key with id {key_id}"))?;
        match &key.repair {
            None => Err(format!("key {} has no repair in progress", key.name).into()),
            Some(repair) if repair.started_index != attempt => Err(format!(
                "the message is for an earlier repair of key {} (started at index {attempt}); the one in progress \
                 started at index {}",
                key.name, repair.started_index
            )
            .into()),
            Some(_) => Ok(key),
        }
    }

    pub(super) fn repair_commit(
        &mut self,
        key_id: &str,
        node: NodeId,
        target: NodeId,
        attempt: u64,
        deltas: &[(NodeId, String)],
    ) -> Result<String, Refusal> {
        let key = self.repairing(key_id, attempt)?;
        let name = key.name.clone();
        let public = key.public_keys().ok_or("the key's public key package does not parse")?;
        let repair = key.repair.as_mut().expect("checked by repairing");
        if repair.target != target {
            return Err(format!("key {name}'s repair is of node {}, not node {target}", repair.target).into());
        }
        if !repair.helpers.contains(&node) {
            return Err(format!("node {node} is not a helper of key {name}'s repair").into());
        }
        if repair.commitments.contains_key(&node) {
            return Err(format!("node {node} already committed its repair values for key {name}").into());
        }
        if deltas.iter().map(|(to, _)| *to).collect::<Vec<_>>() != repair.helpers {
            return Err(
                format!("node {node}'s repair commitments must name exactly the helpers {:?}", repair.helpers).into()
            );
        }
        let points: Option<Vec<EdwardsPoint>> = deltas.iter().map(|(_, d)| point_hex(d)).collect();
        let Some(points) = points else {
            return Err(format!("node {node}'s repair commitments are not curve points").into());
        };
        let helper_share = frost_identifier(node)
            .and_then(|id| public.verifying_shares().get(&id).copied())
            .and_then(|s| s.serialize().ok())
            .and_then(|b| point(&b))
            .ok_or(format!("node {node} has no verifying share"))?;
        let expected = helper_share * lagrange(&repair.helpers, node, target);
        if points.iter().sum::<EdwardsPoint>() != expected {
            let reason = format!("node {node}'s repair values do not add up to its part of the target's share");
            self.abort_repair(key_id, reason.clone(), Some(node));
            return Ok(format!("key {name}: repair aborted: {reason}"));
        }
        repair.commitments.insert(node, deltas.iter().cloned().collect());
        Ok(format!(
            "key {name}: repair commitments {}/{} (node {node})",
            repair.commitments.len(),
            repair.helpers.len()
        ))
    }

    pub(super) fn repair_done(&mut self, key_id: &str, node: NodeId, attempt: u64) -> Result<String, Refusal> {
        let key = self.repairing(key_id, attempt)?;
        let repair = key.repair.as_ref().expect("checked by repairing");
        if repair.target != node {
            return Err(format!("node {node} is not the target of key {}'s repair", key.name).into());
        }
        if repair.commitments.len() < repair.helpers.len() {
            return Err(format!("key {}'s repair still waits for helpers' commitments", key.name).into());
        }
        let repair = key.repair.take().expect("checked");
        key.shares_missing.retain(|n| *n != node);
        if !repair.enrolling {
            return Ok(format!("key {}: node {node} holds its share again", key.name));
        }
        let public = key.public_keys().ok_or("the key's public key package does not parse")?;
        let share = hex::decode(&repair.verifying_share)
            .ok()
            .and_then(|b| VerifyingShare::deserialize(&b).ok())
            .ok_or("the new member's verifying share does not parse")?;
        let mut shares = public.verifying_shares().clone();
        shares.insert(frost_identifier(node).ok_or("no FROST identifier")?, share);
        let package = PublicKeyPackage::new(shares, *public.verifying_key(), Some(key.threshold));
        key.public_key_package = Some(hex::encode(package.serialize().map_err(|e| e.to_string())?));
        key.participants.push(node);
        key.participants.sort_unstable();
        Ok(format!(
            "key {}: node {node} enrolled; participants now {:?} ({} of {})",
            key.name,
            key.participants,
            key.threshold,
            key.participants.len()
        ))
    }

    pub(super) fn repair_abort(
        &mut self,
        key_id: &str,
        node: NodeId,
        attempt: u64,
        reason: &str,
        culprit: Option<NodeId>,
    ) -> Result<String, Refusal> {
        let key = self.repairing(key_id, attempt)?;
        let repair = key.repair.as_ref().expect("checked by repairing");
        if repair.target != node && !repair.helpers.contains(&node) {
            return Err(format!("node {node} takes no part in key {}'s repair", key.name).into());
        }
        let name = key.name.clone();
        self.abort_repair(key_id, format!("node {node}: {reason}"), culprit);
        Ok(format!("key {name}: repair aborted by node {node}"))
    }

    fn abort_repair(&mut self, key_id: &str, reason: String, culprit: Option<NodeId>) {
        if let Some(key) = self.keys.get_mut(key_id) {
            let Some(repair) = key.repair.take() else { return };
            tracing::warn!(key = %key.name, target = repair.target, reason, ?culprit, "repair aborted");
            key.repair_failed = Some(RepairFailure { target: repair.target, reason, culprit });
        }
    }

    /// Aborts repairs that ran past [`DKG_TIMEOUT_MS`] of log time, and those of keys that left service.
    pub(super) fn expire_repairs(&mut self) {
        let now = self.time_ms;
        let stale: Vec<(String, String)> = self
            .keys
            .values()
            .filter_map(|k| {
                let repair = k.repair.as_ref()?;
                if k.status != KeyStatus::Active {
                    return Some((k.id.clone(), format!("the key left service ({})", k.not_signing())));
                }
                (now.saturating_sub(repair.started_at_ms) > DKG_TIMEOUT_MS).then(|| {
                    let missing: Vec<NodeId> =
                        repair.helpers.iter().copied().filter(|h| !repair.commitments.contains_key(h)).collect();
                    let reason = format!(
                        "timed out after {} s (commitments missing from {missing:?}); are the helpers and node {} up?",
                        DKG_TIMEOUT_MS / 1000,
                        repair.target
                    );
                    (k.id.clone(), reason)
                })
            })
            .collect();
        for (id, reason) in stale {
            self.abort_repair(&id, reason, None);
        }
    }
}

/// The Lagrange coefficient of helper `i` for interpolating at `target`
/// over `helpers`: Π_{j ≠ i} (target − j) / (i − j).
pub fn lagrange(helpers: &[NodeId], i: NodeId, target: NodeId) -> Scalar {
    let (x, xi) = (Scalar::from(target), Scalar::from(i));
    let mut numerator = Scalar::ONE;
    let mut denominator = Scalar::ONE;
    for &j in helpers.iter().filter(|j| **j != i) {
        let xj = Scalar::from(j);
        numerator *= x - xj;
        denominator *= xi - xj;
    }
    numerator * denominator.invert()
}

/// `target`'s verifying share (hex), interpolated in the exponent from the helpers'.
fn interpolate(public: &PublicKeyPackage, helpers: &[NodeId], target: NodeId) -> Option<String> {
    let mut sum = EdwardsPoint::default();
    for &h in helpers {
        let share = public.verifying_shares().get(&frost_identifier(h)?)?.serialize().ok()?;
        sum += point(&share)? * lagrange(helpers, h, target);
    }
    let share = VerifyingShare::deserialize(sum.compress().as_bytes()).ok()?;
    Some(hex::encode(share.serialize().ok()?))
}

/// A point from its hex compressed form.
pub fn point_hex(text: &str) -> Option<EdwardsPoint> {
    point(&hex::decode(text).ok()?)
}

/// The public value `g^s` of a 32-byte little-endian scalar, or `None` if not canonical.
pub fn public_of(scalar_bytes: &[u8]) -> Option<EdwardsPoint> {
    let array = <[u8; 32]>::try_from(scalar_bytes).ok()?;
    let scalar = Option::<Scalar>::from(Scalar::from_canonical_bytes(array))?;
    Some(curve25519_dalek::constants::ED25519_BASEPOINT_POINT * scalar)
}

//! Proactive refresh (rules 7 and later): a new generation of shares of the
//! same key, so a share that leaked before the refresh is worth nothing once
//! every copy of its generation is deleted.
//!
//! ```text
//!  refresh_key ──► round-1 packages (t − 1 commitments each, through the log)
//!      │             └─ all in: the state computes the new public key package
//!      │                 from public data alone (VS_i' = VS_i + Σ_j C_j(i))
//!      │          round-2 packages point to point over mTLS (never the log)
//!      │          each participant seals generation g+1, then confirms
//!      └─ every confirmation of the same package ──► generation g+1 signs;
//!         participants delete generation g's share
//! ```
//!
//! A refresh that cannot complete (a participant down or restarted, a wrong
//! package, a disagreeing confirmation, [`DKG_TIMEOUT_MS`] of log time, the
//! key leaving service) is aborted and generation `g` keeps signing: its
//! shares were never touched. The round-1 proof of knowledge is made for a
//! zero constant term and never verifies (frost's `refresh_dkg_part2` skips
//! it), so the state checks instead that each commitment has exactly `t − 1`
//! coefficients (the constant term is the identity by construction) and that
//! the group key is unchanged.
//!
//! Old shares still combine with each other after a refresh: a refresh
//! revokes only what was deleted (ARCHITECTURE.md, "Refresh").

use std::collections::BTreeMap;

use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::Scalar;
use frost::keys::{PublicKeyPackage, VerifyingShare};
use frost_ed25519 as frost;
use serde::{Deserialize, Serialize};
use synod_proto::api::RefreshInfo;
use synod_proto::NodeId;

use super::keys::{frost_identifier, package_hash, DKG_TIMEOUT_MS};
use super::{ClusterState, KeyRecord, KeyStatus, Refusal};

/// The first rules version with refresh.
pub const RULES_KEY_REFRESH: u32 = 7;

/// A refresh in progress on a key version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refresh {
    /// The generation it makes (the key's current one plus one).
    pub generation: u32,
    /// Who holds a share of the new generation: the key's participants but
    /// those the refresh removes. Ascending.
    pub participants: Vec<NodeId>,
    pub started_index: u64,
    pub started_at_ms: u64,
    /// Committed round-1 packages (hex), by participant.
    pub round1: BTreeMap<NodeId, String>,
    /// The new public key package (hex), once every round-1 package is in.
    pub public_key_package: Option<String>,
    /// Participants that sealed the new generation and confirmed the package.
    pub confirmed: Vec<NodeId>,
}

/// How a refresh was aborted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshFailure {
    /// The generation it would have made.
    pub generation: u32,
    pub reason: String,
    /// The participant whose message was wrong, when one is known.
    pub culprit: Option<NodeId>,
}

impl RefreshFailure {
    /// The sentence `synod key show` prints; `current` is the generation that still signs.
    pub fn describe(&self, current: u32) -> String {
        let blame = self.culprit.map(|c| format!(" (culprit: node {c})")).unwrap_or_default();
        format!(
            "refresh to generation {} aborted: {}{blame}; generation {current} still signs",
            self.generation, self.reason
        )
    }
}

impl Refresh {
    pub fn info(&self) -> RefreshInfo {
        RefreshInfo {
            generation: self.generation,
            participants: self.participants.clone(),
            started_at_ms: self.started_at_ms,
            round1_received: self.round1.keys().copied().collect(),
            confirmed: self.confirmed.clone(),
        }
    }
}

impl ClusterState {
    /// `refresh_key`: starts generation `g + 1` of the primary version of `name`.
    pub(super) fn refresh_key(&mut self, index: u64, name: &str, remove: &[NodeId]) -> Result<String, Refusal> {
        self.needs_rules(RULES_KEY_REFRESH, "refreshing a key's shares")?;
        let now = self.time_ms;
        let key = self.key_by_name(name).ok_or(format!("no key named {name:?}"))?;
        if key.status != KeyStatus::Active {
            return Err(format!("cannot refresh: {}", key.not_signing()).into());
        }
        if let Some(repair) = &key.repair {
            return Err(format!(
                "key {name} is repairing node {}'s share; refresh once the repair completes or aborts",
                repair.target
            )
            .into());
        }
        if let Some(refresh) = &key.refresh {
            return Err(format!(
                "key {name} is already refreshing to generation {} (round-1 packages from {:?}, confirmations from \
                 {:?}); wait for it to complete or abort",
                refresh.generation,
                refresh.round1.keys().collect::<Vec<_>>(),
                refresh.confirmed
            )
            .into());
        }
        if let Some(stranger) = remove.iter().find(|n| !key.participants.contains(n)) {
            return Err(format!("node {stranger} holds no share of key {name}; nothing to remove").into());
        }
        let participants: Vec<NodeId> = key.participants.iter().copied().filter(|p| !remove.contains(p)).collect();
        if participants.len() < usize::from(key.threshold) {
            return Err(format!(
                "removing nodes {remove:?} would leave {} participants for a {}-of-{} key; a refresh keeps the \
                 threshold, so make a new version with a lower one (`synod key rotate {name} --threshold T`)",
                participants.len(),
                key.threshold,
                key.participants.len()
            )
            .into());
        }
        if key.shares_missing.iter().any(|n| participants.contains(n)) {
            return Err(format!(
                "nodes {:?} reported holding no share of key {name}, and a refresh needs every participant's share; \
                 give them their share back first (`synod key repair {name} --node N`), or remove them from the key \
                 with `synod key refresh {name} --remove N`",
                key.shares_missing
            )
            .into());
        }
        if key.public_keys().is_none() {
            return Err(format!("key {name}'s public key package does not parse; it cannot be refreshed").into());
        }
        let id = key.id.clone();
        let key = self.keys.get_mut(&id).expect("found above");
        let generation = key.generation + 1;
        key.refresh = Some(Refresh {
            generation,
            participants: participants.clone(),
            started_index: index,
            started_at_ms: now,
            round1: BTreeMap::new(),
            public_key_package: None,
            confirmed: Vec::new(),
        });
        key.refresh_failed = None;
        let removing = if remove.is_empty() { String::new() } else { format!(", removing nodes {remove:?}") };
        Ok(format!(
            "key {name} version {}: refreshing its shares to generation {generation} among participants \
             {participants:?}{removing}",
            key.version
        ))
    }

    /// `set_refresh_schedule`: refresh `name`'s primary every `every_ms` of
    /// log time from now on (the first one `every_ms` from now), or never.
    pub(super) fn set_refresh_schedule(&mut self, name: &str, every_ms: Option<u64>) -> Result<String, Refusal> {
        self.needs_rules(RULES_KEY_REFRESH, "a refresh schedule")?;
        let now = self.time_ms;
        let id = self.key_by_name(name).ok_or(format!("no key named {name:?}"))?.id.clone();
        let key = self.keys.get_mut(&id).expect("found above");
        if key.status != KeyStatus::Active {
            return Err(format!("cannot schedule refreshes: {}", key.not_signing()).into());
        }
        key.refresh_every_ms = every_ms;
        key.refresh_due_at_ms = every_ms.map(|every| now.saturating_add(every));
        Ok(match (every_ms, key.refresh_due_at_ms) {
            (Some(every), Some(due)) => {
                format!("key {name}: refreshed every {} of log time, next at {due} ms", super::duration_words(every))
            }
            _ => format!("key {name}: no scheduled refreshes"),
        })
    }

    /// `refresh_due`: a scheduled refresh of `key_id` starts, if it is due by
    /// the log's time. The next one is due an interval later whether this one
    /// completes or aborts, so a participant that is down costs one attempt
    /// per interval, not one per entry.
    pub(super) fn refresh_due(&mut self, index: u64, key_id: &str) -> Result<String, Refusal> {
        self.needs_rules(RULES_KEY_REFRESH, "a refresh schedule")?;
        let now = self.time_ms;
        let key = self.keys.get(key_id).ok_or(format!("no key with id {key_id}"))?;
        let (Some(every), Some(due)) = (key.refresh_every_ms, key.refresh_due_at_ms) else {
            return Err(format!("key {} has no refresh schedule", key.name).into());
        };
        if due > now {
            return Err(format!("key {}'s refresh is due at {due} ms; the log's time is {now} ms", key.name).into());
        }
        let name = key.name.clone();
        if self.key_by_name(&name).map(|k| &k.id) != Some(&key.id) {
            return Err(format!("key {name} version {} is no longer the primary", key.version).into());
        }
        let key = self.keys.get_mut(key_id).expect("found above");
        key.refresh_due_at_ms = Some(now.saturating_add(every));
        match self.refresh_key(index, &name, &[]) {
            Ok(detail) => Ok(format!("scheduled: {detail}")),
            // Still a due time consumed: say why this one did not start.
            Err(refusal) => Ok(format!("scheduled refresh of key {name} not started: {}", refusal.reason)),
        }
    }

    /// Keys whose scheduled refresh is due at `now_ms` (the leader's stamp
    /// time) with nothing in progress.
    pub fn refreshes_due(&self, now_ms: u64) -> Vec<String> {
        self.keys
            .values()
            .filter(|k| {
                k.status == KeyStatus::Active
                    && k.refresh.is_none()
                    && k.repair.is_none()
                    && k.refresh_due_at_ms.is_some_and(|due| due <= now_ms)
                    && self.key_by_name(&k.name).is_some_and(|primary| primary.id == k.id)
            })
            .map(|k| k.id.clone())
            .collect()
    }

    /// The key `key_id` with a refresh to `generation` in progress, started
    /// at log index `attempt`, that `node` takes part in.
    fn refreshing(
        &mut self,
        key_id: &str,
        node: NodeId,
        generation: u32,
        attempt: u64,
    ) -> Result<&mut KeyRecord, Refusal> {
        self.needs_rules(RULES_KEY_REFRESH, "refreshing a key's shares")?;
        let key = self.keys.get_mut(key_id).ok_or(format!("no key with id {key_id}"))?;
        match &key.refresh {
            Some(refresh) if refresh.generation == generation && refresh.started_index != attempt => {
                return Err(format!(
                    "the message is for an earlier refresh of key {} (started at index {attempt}); the one in \
                     progress started at index {}",
                    key.name, refresh.started_index
                )
                .into())
            }
            Some(refresh) if refresh.generation == generation => {}
            Some(refresh) => {
                return Err(format!(
                    "key {} is refreshing to generation {}, not {generation}",
                    key.name, refresh.generation
                )
                .into())
            }
            None => return Err(format!("key {} has no refresh in progress", key.name).into()),
        }
        if !key.refresh.as_ref().is_some_and(|r| r.participants.contains(&node)) {
            return Err(format!("node {node} takes no part in key {}'s refresh", key.name).into());
        }
        Ok(key)
    }

    pub(super) fn refresh_round1(
        &mut self,
        key_id: &str,
        node: NodeId,
        (generation, attempt): (u32, u64),
        package_hex: &str,
    ) -> Result<String, Refusal> {
        let key = self.refreshing(key_id, node, generation, attempt)?;
        let threshold = key.threshold;
        let refresh = key.refresh.as_mut().expect("checked by refreshing");
        if refresh.round1.contains_key(&node) {
            return Err(
                format!("node {node} already committed its refresh round-1 package for key {}", key.name).into()
            );
        }
        let bytes = hex::decode(package_hex).map_err(|_| "refresh round-1 package is not hex")?;
        let package = frost::keys::dkg::round1::Package::deserialize(&bytes)
            .map_err(|e| format!("refresh round-1 package from node {node} does not parse: {e}"))?;
        // frost checks the count only on each receiver: a package with another
        // count would make the receivers disagree about the new shares.
        if package.commitment().coefficients().len() != usize::from(threshold) - 1 {
            return Err(format!(
                "refresh round-1 package from node {node} commits to {} coefficients; a refresh of a {threshold}-of-n \
                 key needs exactly {}",
                package.commitment().coefficients().len(),
                threshold - 1
            )
            .into());
        }
        refresh.round1.insert(node, package_hex.to_string());
        let (name, received, n) = (key.name.clone(), refresh.round1.len(), refresh.participants.len());
        if received < n {
            return Ok(format!("key {name}: refresh round-1 package {received}/{n} (node {node})"));
        }
        match refreshed_package(key) {
            Ok(package_hex) => {
                key.refresh.as_mut().expect("checked").public_key_package = Some(package_hex);
                Ok(format!("key {name}: all refresh round-1 packages committed; generation {generation} computed"))
            }
            Err(reason) => {
                self.abort_refresh(key_id, reason.clone(), None);
                Ok(format!("key {name}: refresh aborted: {reason}"))
            }
        }
    }

    pub(super) fn refresh_confirm(
        &mut self,
        index: u64,
        key_id: &str,
        node: NodeId,
        (generation, attempt): (u32, u64),
        package_sha256: &str,
    ) -> Result<String, Refusal> {
        let now = self.time_ms;
        let key = self.refreshing(key_id, node, generation, attempt)?;
        let refresh = key.refresh.as_mut().expect("checked by refreshing");
        let Some(package) = refresh.public_key_package.clone() else {
            return Err(format!("key {}'s refresh has no package to confirm yet", key.name).into());
        };
        if refresh.confirmed.contains(&node) {
            return Err(format!("node {node} already confirmed generation {generation} of key {}", key.name).into());
        }
        if package_hash(&package) != package_sha256 {
            let reason = format!(
                "node {node} derived another public key package than the committed round-1 packages give; the \
                 refresh messages it saw differ"
            );
            let name = key.name.clone();
            self.abort_refresh(key_id, reason, None);
            return Ok(format!("key {name}: refresh aborted: confirmations disagree"));
        }
        refresh.confirmed.push(node);
        refresh.confirmed.sort_unstable();
        if refresh.confirmed.len() < refresh.participants.len() {
            return Ok(format!(
                "key {}: generation {generation} confirmed {}/{}",
                key.name,
                refresh.confirmed.len(),
                refresh.participants.len()
            ));
        }
        let refresh = key.refresh.take().expect("checked");
        let removed: Vec<NodeId> =
            key.participants.iter().copied().filter(|p| !refresh.participants.contains(p)).collect();
        key.participants = refresh.participants;
        key.shares_missing.retain(|n| key.participants.contains(n));
        key.removed_participants.retain(|(n, _)| !removed.contains(n));
        key.removed_participants.extend(removed.iter().map(|n| (*n, generation)));
        key.public_key_package = Some(package);
        key.generation = generation;
        key.generation_index = index;
        key.refreshed_at_ms = Some(now);
        let left = if removed.is_empty() { String::new() } else { format!("; nodes {removed:?} left the key") };
        Ok(format!(
            "key {} version {}: generation {generation} current; every participant deletes generation {}{left}",
            key.name,
            key.version,
            generation - 1
        ))
    }

    pub(super) fn refresh_abort(
        &mut self,
        key_id: &str,
        node: NodeId,
        (generation, attempt): (u32, u64),
        reason: &str,
        culprit: Option<NodeId>,
    ) -> Result<String, Refusal> {
        let key = self.refreshing(key_id, node, generation, attempt)?;
        let name = key.name.clone();
        self.abort_refresh(key_id, format!("node {node}: {reason}"), culprit);
        Ok(format!("key {name}: refresh to generation {generation} aborted by node {node}"))
    }

    fn abort_refresh(&mut self, key_id: &str, reason: String, culprit: Option<NodeId>) {
        if let Some(key) = self.keys.get_mut(key_id) {
            let Some(refresh) = key.refresh.take() else { return };
            tracing::warn!(key = %key.name, generation = refresh.generation, reason, ?culprit, "refresh aborted");
            key.refresh_failed = Some(RefreshFailure { generation: refresh.generation, reason, culprit });
        }
    }

    /// Aborts refreshes that ran past [`DKG_TIMEOUT_MS`] of log time, and those
    /// of keys that left service.
    pub(super) fn expire_refreshes(&mut self) {
        let now = self.time_ms;
        let stale: Vec<(String, String)> = self
            .keys
            .values()
            .filter_map(|k| {
                let refresh = k.refresh.as_ref()?;
                if k.status != KeyStatus::Active {
                    return Some((k.id.clone(), format!("the key left service ({})", k.not_signing())));
                }
                (now.saturating_sub(refresh.started_at_ms) > DKG_TIMEOUT_MS).then(|| {
                    let missing: Vec<NodeId> =
                        refresh.participants.iter().copied().filter(|p| !refresh.round1.contains_key(p)).collect();
                    let unconfirmed: Vec<NodeId> =
                        refresh.participants.iter().copied().filter(|p| !refresh.confirmed.contains(p)).collect();
                    (
                        k.id.clone(),
                        format!(
                            "timed out after {} s (round-1 packages missing from {missing:?}, confirmations \
                             from {unconfirmed:?}); are all participants up?",
                            DKG_TIMEOUT_MS / 1000
                        ),
                    )
                })
            })
            .collect();
        for (id, reason) in stale {
            self.abort_refresh(&id, reason, None);
        }
    }
}

/// The public key package of the refresh's new generation (hex), from public
/// data alone: each participant's verifying share plus every participant's
/// zero-constant polynomial evaluated (in the exponent) at its identifier.
/// What each participant's `refresh_dkg_shares` derives, byte for byte.
fn refreshed_package(key: &KeyRecord) -> Result<String, String> {
    let old = key.public_keys().ok_or("the key's public key package does not parse")?;
    let refresh = key.refresh.as_ref().ok_or("no refresh")?;
    let mut polynomials: Vec<Vec<EdwardsPoint>> = Vec::new();
    for (node, package_hex) in &refresh.round1 {
        let bytes = hex::decode(package_hex).map_err(|_| "round-1 package is not hex".to_string())?;
        let package = frost::keys::dkg::round1::Package::deserialize(&bytes).map_err(|e| e.to_string())?;
        polynomials.push(
            commitment_points(&package).ok_or(format!("node {node}'s refresh commitments are not curve points"))?,
        );
    }
    let mut shares = BTreeMap::new();
    for participant in &refresh.participants {
        let id = frost_identifier(*participant).ok_or(format!("node {participant} has no FROST identifier"))?;
        let old_share = old.verifying_shares().get(&id).ok_or(format!("node {participant} has no verifying share"))?;
        let mut sum = old_share
            .serialize()
            .ok()
            .and_then(|b| point(&b))
            .ok_or(format!("node {participant}'s verifying share is not a curve point"))?;
        for polynomial in &polynomials {
            sum += zero_polynomial_at(polynomial, *participant);
        }
        let share = VerifyingShare::deserialize(sum.compress().as_bytes())
            .map_err(|e| format!("node {participant}'s new verifying share: {e}"))?;
        shares.insert(id, share);
    }
    // The group key is the old one: every refresh polynomial's constant term is the identity.
    let package = PublicKeyPackage::new(shares, *old.verifying_key(), Some(key.threshold));
    Ok(hex::encode(package.serialize().map_err(|e| e.to_string())?))
}

/// The coefficient commitments of a refresh round-1 package, as points
/// (the identity constant term left out, as frost sends them).
pub fn commitment_points(package: &frost::keys::dkg::round1::Package) -> Option<Vec<EdwardsPoint>> {
    package.commitment().coefficients().iter().map(|c| c.serialize().ok().and_then(|b| point(&b))).collect()
}

/// A zero-constant polynomial committed to by `coefficients` (from `x^1`
/// up), evaluated in the exponent at participant `node`'s identifier: the
/// public value of the share that polynomial gives `node`.
pub fn zero_polynomial_at(coefficients: &[EdwardsPoint], node: NodeId) -> EdwardsPoint {
    let x = Scalar::from(node);
    let mut power = x;
    let mut sum = EdwardsPoint::default();
    for coefficient in coefficients {
        sum += coefficient * power;
        power *= x;
    }
    sum
}

/// A curve point from its 32-byte compressed form.
pub(super) fn point(bytes: &[u8]) -> Option<EdwardsPoint> {
    CompressedEdwardsY::from_slice(bytes).ok()?.decompress()
}

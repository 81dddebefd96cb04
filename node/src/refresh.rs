//! This node's part in a proactive refresh of a key's shares
//! (`state/refresh.rs` has the rules).
//!
//! As in key generation ([`crate::dkg`]), what must be agreed goes through
//! the log (each participant's round-1 commitments, its confirmation) and
//! the secret round-2 values go point to point over mutual TLS. The
//! differences: the polynomials have a zero constant term, so the secret does
//! not change; each received round-2 value is checked against its sender's
//! committed commitments before frost combines them (frost's own check names
//! no culprit); and the new share is the old share plus the received values,
//! so the old share is unsealed for the last step. The new generation is
//! sealed before this node confirms; the old one is deleted only once the
//! log makes the new one current (`node/lifecycle.rs`). Secrets live only in
//! memory: a participant that restarts mid-refresh aborts it, and the current
//! generation keeps signing.

use std::collections::BTreeMap;
use std::sync::Mutex;

use frost::keys::dkg::{round1, round2};
use frost::keys::KeyPackage;
use frost_ed25519 as frost;
use synod_proto::rpc::{PeerRequest, SecretHex};
use synod_proto::{Command, NodeId};
use zeroize::Zeroizing;

use crate::dkg::{deliver_secrets, resubmit_due, seal, DkgHost};
use crate::signer::key_package_context;
use crate::state::{
    commitment_points, frost_identifier, package_hash, public_of, zero_polynomial_at, KeyRecord, KeyStatus,
    DKG_TIMEOUT_MS,
};

/// One refresh's secrets and progress on this node.
#[derive(Default)]
struct Local {
    round1_secret: Option<round1::SecretPackage>,
    round1_hex: String,
    round2_secret: Option<round2::SecretPackage>,
    outgoing: BTreeMap<NodeId, round2::Package>,
    received: BTreeMap<NodeId, round2::Package>,
    /// The package hash once the new share is sealed (empty while sealing).
    confirmation: Option<String>,
    last_submit_ms: u64,
    abort: Option<Command>,
}

/// A refresh: its key id, the generation it makes, and its attempt (the
/// log index of its `refresh_key`; a refresh aborted and started again makes
/// the same generation in a new attempt, whose values must not meet the
/// earlier one's).
type Attempt = (String, u32, u64);

/// The refreshes this node takes part in.
#[derive(Default)]
pub struct Refreshes {
    locals: Mutex<BTreeMap<Attempt, Local>>,
}

fn attempt_of(key: &KeyRecord) -> Option<Attempt> {
    key.refresh.as_ref().map(|r| (key.id.clone(), r.generation, r.started_index))
}

/// What a tick decided to do outside the lock. A step lives for one tick, so
/// a command unboxed in it costs nothing worth an allocation.
#[allow(clippy::large_enum_variant)]
enum Step {
    Submit(Command),
    Deliver(BTreeMap<NodeId, round2::Package>),
    /// Every round-2 value is in and checked: derive, check, seal, confirm.
    Finish {
        secret: Box<round2::SecretPackage>,
        round1: BTreeMap<frost::Identifier, round1::Package>,
        round2: BTreeMap<frost::Identifier, round2::Package>,
    },
}

impl Refreshes {
    /// Advances every refresh this node takes part in by one step.
    pub async fn tick(&self, node: &dyn DkgHost) {
        let now = node.now_ms();
        let keys: Vec<KeyRecord> = {
            let applied = node.state().read();
            applied
                .state
                .keys
                .values()
                .filter(|k| {
                    k.status == KeyStatus::Active
                        && k.refresh.as_ref().is_some_and(|r| r.participants.contains(&node.id()))
                })
                .cloned()
                .collect()
        };
        self.locals
            .lock()
            .expect("refresh lock")
            .retain(|attempt, _| keys.iter().any(|k| attempt_of(k).as_ref() == Some(attempt)));
        for key in keys {
            for step in self.plan(node.id(), &key, now, &node.seams().rng) {
                match step {
                    Step::Submit(command) => {
                        if let Err(e) = node.write_as_node(command).await {
                            tracing::info!(key = %key.name, error = %e, "refresh message not committed yet; will retry");
                        }
                    }
                    Step::Deliver(packages) => self.deliver(node, &key, packages).await,
                    Step::Finish { secret, round1, round2 } => {
                        let finished = finish(node, &key, &secret, &round1, &round2).await;
                        let started = key.refresh.as_ref().map_or(now, |r| r.started_at_ms);
                        let took = std::time::Duration::from_millis(now.saturating_sub(started));
                        let outcome = if finished.is_ok() { "sealed" } else { "failed" };
                        node.record_duration("synod_refresh_duration_seconds", outcome, took);
                        let command = match finished {
                            Ok(hash) => {
                                crate::faults::crash_point(node.id(), crate::faults::REFRESH_AFTER_SEAL).await;
                                if crate::faults::enabled_for(node.id(), crate::faults::PAUSE_REFRESH_CONFIRM) {
                                    tracing::warn!(key = %key.name, "fault: pausing 5 s before confirming the refresh");
                                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                                }
                                self.with_local(&key, |local| {
                                    local.confirmation = Some(hash.clone());
                                    local.last_submit_ms = now;
                                });
                                confirm(&key, node.id(), hash)
                            }
                            Err(reason) => {
                                let command = abort(&key, node.id(), reason, None);
                                self.with_local(&key, |local| {
                                    local.abort = Some(command.clone());
                                    local.last_submit_ms = now;
                                });
                                command
                            }
                        };
                        if let Err(e) = node.write_as_node(command).await {
                            tracing::info!(key = %key.name, error = %e, "refresh message not committed yet; will retry");
                        }
                    }
                }
            }
        }
    }

    fn with_local(&self, key: &KeyRecord, f: impl FnOnce(&mut Local)) {
        let Some(attempt) = attempt_of(key) else { return };
        if let Some(local) = self.locals.lock().expect("refresh lock").get_mut(&attempt) {
            f(local);
        }
    }

    /// Decides the next steps for one refresh (no I/O).
    fn plan(&self, me: NodeId, key: &KeyRecord, now: u64, rng: &crate::seams::SharedRng) -> Vec<Step> {
        let Some(refresh) = &key.refresh else { return Vec::new() };
        let n = refresh.participants.len();
        let mut locals = self.locals.lock().expect("refresh lock");
        let slot = (key.id.clone(), refresh.generation, refresh.started_index);
        let fresh = !locals.contains_key(&slot);
        if fresh && refresh.round1.contains_key(&me) && !refresh.confirmed.contains(&me) {
            let reason = "restarted during the refresh and lost its refresh secrets; run `synod key refresh` again";
            let local = locals.entry(slot).or_default();
            return give_up(local, abort(key, me, reason.into(), None), now);
        }
        if fresh && locals.len() >= crate::dkg::GENERATIONS_MAX {
            return Vec::new();
        }
        let local = locals.entry(slot).or_default();
        if let Some(command) = &local.abort {
            if resubmit_due(now, local.last_submit_ms) {
                local.last_submit_ms = now;
                return vec![Step::Submit(command.clone())];
            }
            return Vec::new();
        }
        if now.saturating_sub(refresh.started_at_ms) > DKG_TIMEOUT_MS {
            // By this node's clock: on an idle cluster no entry moves the log's time to its timeout.
            let missing: Vec<NodeId> =
                refresh.participants.iter().copied().filter(|p| !refresh.confirmed.contains(p)).collect();
            let reason = format!("timed out after {} s; confirmations missing from {missing:?}", DKG_TIMEOUT_MS / 1000);
            return give_up(local, abort(key, me, reason, None), now);
        }
        if refresh.confirmed.contains(&me) {
            // Our part is done but for values the others may still need (a delivery that failed
            // once must be sent again, or they wait for it until the refresh times out).
            if local.outgoing.is_empty() {
                return Vec::new();
            }
            return vec![Step::Deliver(local.outgoing.clone())];
        }

        // Round 1.
        if local.round1_hex.is_empty() {
            if refresh.round1.contains_key(&me) {
                return Vec::new(); // Handled above (restarted); unreachable in practice.
            }
            let Some(id) = frost_identifier(me) else { return Vec::new() };
            let part1 = {
                let mut guard = rng.lock().expect("rng lock");
                let rng: &mut dyn crate::seams::SecureRng = &mut *guard;
                frost::keys::refresh::refresh_dkg_part1(id, n as u16, key.threshold, rng)
            };
            match part1 {
                Ok((secret, package)) => {
                    local.round1_secret = Some(secret);
                    local.round1_hex = hex::encode(package.serialize().expect("round-1 package serialises"));
                }
                Err(e) => return give_up(local, abort(key, me, format!("refresh part 1 failed: {e}"), None), now),
            }
            local.last_submit_ms = now;
            return vec![Step::Submit(round1_command(key, me, &local.round1_hex))];
        }
        match refresh.round1.get(&me) {
            None => {
                if resubmit_due(now, local.last_submit_ms) {
                    local.last_submit_ms = now;
                    return vec![Step::Submit(round1_command(key, me, &local.round1_hex))];
                }
                return Vec::new();
            }
            Some(committed) if *committed != local.round1_hex => {
                let reason = "restarted during the refresh; the round-1 package committed for it is from before the \
                              restart and its secret is gone; run `synod key refresh` again";
                return give_up(local, abort(key, me, reason.into(), None), now);
            }
            Some(_) => {}
        }
        if refresh.round1.len() < n || refresh.public_key_package.is_none() {
            return Vec::new();
        }
        let round1 = match others_round1(key, me) {
            Ok(round1) => round1,
            Err(reason) => return give_up(local, abort(key, me, reason, None), now),
        };

        // Round 2: our zero-constant polynomial evaluated for each other participant.
        if let Some(secret) = local.round1_secret.take() {
            let by_id: BTreeMap<frost::Identifier, round1::Package> =
                round1.iter().map(|(_, (id, p))| (*id, p.clone())).collect();
            match frost::keys::refresh::refresh_dkg_part2(secret, &by_id) {
                Ok((secret2, packages)) => {
                    local.round2_secret = Some(secret2);
                    local.outgoing =
                        packages.into_iter().filter_map(|(id, p)| node_of(key, &id).map(|n| (n, p))).collect();
                }
                Err(e) => {
                    return give_up(local, abort(key, me, format!("refresh part 2 failed: {e}"), None), now);
                }
            }
        }
        let mut steps = Vec::new();
        if !local.outgoing.is_empty() {
            steps.push(Step::Deliver(local.outgoing.clone()));
        }

        // Round 3: once every value for us is in, each checked against its sender's commitments.
        if local.confirmation.is_none() && local.received.len() == n - 1 {
            let Some(secret2) = local.round2_secret.take() else { return steps };
            for (from, package) in &local.received {
                let Some((_, committed)) = round1.get(from) else { continue };
                if !matches_commitment(package, committed, me) {
                    let reason =
                        format!("the refresh value node {from} sent does not match its committed round-1 commitments");
                    return give_up(local, abort(key, me, reason, Some(*from)), now);
                }
            }
            let round2 =
                local.received.iter().filter_map(|(n, p)| frost_identifier(*n).map(|id| (id, p.clone()))).collect();
            let round1 = round1.into_values().collect();
            local.confirmation = Some(String::new()); // In progress: the next tick does not finish twice.
            steps.push(Step::Finish { secret: Box::new(secret2), round1, round2 });
            return steps;
        }
        if let Some(hash) = &local.confirmation {
            if !hash.is_empty() && resubmit_due(now, local.last_submit_ms) {
                local.last_submit_ms = now;
                steps.push(Step::Submit(confirm(key, me, hash.clone())));
            }
        }
        steps
    }

    /// Sends round-2 values to their recipients; delivered ones are not sent again.
    async fn deliver(&self, node: &dyn DkgHost, key: &KeyRecord, packages: BTreeMap<NodeId, round2::Package>) {
        let Some((_, generation, attempt)) = attempt_of(key) else { return };
        let requests = packages
            .into_iter()
            .filter_map(|(to, package)| {
                let package = crate::faults::corrupt_refresh_package(node.id(), package);
                let bytes = Zeroizing::new(package.serialize().ok()?);
                let package = SecretHex::new(hex::encode(&*bytes));
                Some((to, PeerRequest::RefreshRound2 { key_id: key.id.clone(), generation, attempt, package }))
            })
            .collect();
        for to in deliver_secrets(node, &key.name, "refresh value", requests).await {
            self.with_local(key, |local| {
                local.outgoing.remove(&to);
            });
        }
    }

    /// A round-2 value from participant `from` (authenticated by mutual TLS).
    pub fn receive_round2(
        &self,
        node: &dyn DkgHost,
        from: NodeId,
        key_id: &str,
        (generation, attempt): (u32, u64),
        package: &SecretHex,
    ) -> Result<(), String> {
        {
            let applied = node.state().read();
            let key = applied.state.keys.get(key_id).ok_or(format!("key {key_id} is not in this node's state yet"))?;
            match &key.refresh {
                Some(refresh) if refresh.generation == generation && refresh.started_index == attempt => {}
                _ => {
                    return Err(format!(
                        "key {} is not refreshing to generation {generation} in attempt {attempt} here",
                        key.name
                    ))
                }
            }
            let takes_part = |n: NodeId| key.refresh.as_ref().is_some_and(|r| r.participants.contains(&n));
            if !takes_part(from) || !takes_part(node.id()) {
                return Err(format!("node {from} and node {} do not both take part in the refresh", node.id()));
            }
        }
        let bytes = Zeroizing::new(hex::decode(package.expose()).map_err(|_| "refresh value is not hex")?);
        let package = round2::Package::deserialize(&bytes).map_err(|e| format!("refresh value does not parse: {e}"))?;
        let mut locals = self.locals.lock().expect("refresh lock");
        let local = locals
            .get_mut(&(key_id.to_string(), generation, attempt))
            .ok_or("this node holds no refresh secrets for the key (restarted?)")?;
        local.received.entry(from).or_insert(package);
        Ok(())
    }
}

/// Derives the new share from the old one and the received values, checks
/// it against the package the state computed, seals it under the new
/// generation, and returns the package hash to confirm.
async fn finish(
    node: &dyn DkgHost,
    key: &KeyRecord,
    secret: &round2::SecretPackage,
    round1: &BTreeMap<frost::Identifier, round1::Package>,
    round2: &BTreeMap<frost::Identifier, round2::Package>,
) -> Result<String, String> {
    let refresh = key.refresh.as_ref().ok_or("no refresh")?;
    let committed = refresh.public_key_package.clone().ok_or("no refreshed package committed yet")?;
    let old_public = key.public_keys().ok_or("the key's public key package does not parse")?;
    let cluster_id = node.state().read().state.cluster_id.clone().unwrap_or_default();
    let ctx = key_package_context(cluster_id, node.id(), key);
    let sealed = node.sealed().clone();
    let plain = crate::seams::run_blocking(move || sealed.get(&ctx))
        .await
        .map_err(|e| format!("unsealing failed: {e}"))?
        .map_err(|e| format!("cannot unseal its share of generation {}: {e}", key.generation))?
        .ok_or(format!("holds no share of generation {} to refresh", key.generation))?;
    let old = KeyPackage::deserialize(&plain).map_err(|e| format!("its sealed share does not parse: {e}"))?;
    let (new, public) = frost::keys::refresh::refresh_dkg_shares(secret, round1, round2, old_public, old)
        .map_err(|e| format!("refresh part 3 failed: {e}"))?;
    let package_hex = hex::encode(public.serialize().map_err(|e| e.to_string())?);
    if package_hex != committed {
        return Err("derived another refreshed public key package than the committed one".into());
    }
    let id = frost_identifier(node.id()).ok_or("no FROST identifier")?;
    if public.verifying_shares().get(&id) != Some(new.verifying_share()) {
        return Err("its new share does not match its verifying share in the refreshed package".into());
    }
    seal(node, key, refresh.generation, &new).await.map_err(|e| format!("cannot seal its new share: {e}"))?;
    Ok(package_hash(&package_hex))
}

/// Whether `package` (the value its sender's polynomial gives `me`) matches
/// the sender's committed coefficients: g^value = Σ_k C_k · me^k.
fn matches_commitment(package: &round2::Package, committed: &round1::Package, me: NodeId) -> bool {
    let Some(coefficients) = commitment_points(committed) else { return false };
    let value = Zeroizing::new(package.signing_share().serialize());
    public_of(&value) == Some(zero_polynomial_at(&coefficients, me))
}

fn give_up(local: &mut Local, command: Command, now: u64) -> Vec<Step> {
    local.abort = Some(command.clone());
    local.last_submit_ms = now;
    vec![Step::Submit(command)]
}

/// The refresh's generation and attempt, for its messages.
fn generation_of(key: &KeyRecord) -> (u32, u64) {
    key.refresh.as_ref().map_or((0, 0), |r| (r.generation, r.started_index))
}

fn round1_command(key: &KeyRecord, me: NodeId, package_hex: &str) -> Command {
    let (generation, attempt) = generation_of(key);
    Command::RefreshRound1 {
        key_id: key.id.clone(),
        node_id: me,
        generation,
        attempt,
        package: package_hex.to_string(),
    }
}

fn confirm(key: &KeyRecord, me: NodeId, hash: String) -> Command {
    let (generation, attempt) = generation_of(key);
    Command::RefreshConfirm {
        key_id: key.id.clone(),
        node_id: me,
        generation,
        attempt,
        public_key_package_sha256: hash,
    }
}

fn abort(key: &KeyRecord, me: NodeId, reason: String, culprit: Option<NodeId>) -> Command {
    tracing::warn!(key = %key.name, reason, ?culprit, "aborting a refresh");
    let (generation, attempt) = generation_of(key);
    Command::RefreshAbort { key_id: key.id.clone(), node_id: me, generation, attempt, reason, culprit }
}

fn node_of(key: &KeyRecord, id: &frost::Identifier) -> Option<NodeId> {
    key.participants.iter().copied().find(|n| frost_identifier(*n).as_ref() == Some(id))
}

/// The committed round-1 packages of every participant but `me`, by node.
fn others_round1(
    key: &KeyRecord,
    me: NodeId,
) -> Result<BTreeMap<NodeId, (frost::Identifier, round1::Package)>, String> {
    let refresh = key.refresh.as_ref().ok_or("no refresh")?;
    let mut out = BTreeMap::new();
    for (node, package_hex) in refresh.round1.iter().filter(|(n, _)| **n != me) {
        let id = frost_identifier(*node).ok_or("participant without identifier")?;
        let bytes = hex::decode(package_hex).map_err(|_| "round-1 package is not hex")?;
        let package = round1::Package::deserialize(&bytes).map_err(|e| format!("round-1 package: {e}"))?;
        out.insert(*node, (id, package));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{KeyOrigin, Refresh};

    #[test]
    fn refresh_values_are_delivered_even_after_this_node_confirmed() {
        // A participant derives, seals and confirms as soon as it holds the others' values;
        // one of its own deliveries may have failed meanwhile (the recipient restarted). It
        // must keep sending it, or that recipient never confirms (found by a real-process test
        // that restarted a node just before a refresh).
        let mut key = KeyRecord::generating("k1", "payments", 2, &[1, 2, 3], KeyOrigin::Dkg, 1, 1_000);
        key.status = KeyStatus::Active;
        key.refresh = Some(Refresh {
            generation: 1,
            participants: vec![1, 2, 3],
            started_index: 7,
            started_at_ms: 1_000,
            round1: BTreeMap::new(),
            public_key_package: None,
            confirmed: vec![1],
        });
        let ids: Vec<frost::Identifier> = (1..=3u16).map(|n| frost::Identifier::try_from(n).unwrap()).collect();
        let parts: Vec<_> = ids
            .iter()
            .map(|id| frost::keys::refresh::refresh_dkg_part1(*id, 3, 2, rand_core::OsRng).unwrap())
            .collect();
        let others = ids[1..].iter().zip(&parts[1..]).map(|(id, (_, p))| (*id, p.clone())).collect();
        let (_, packages) = frost::keys::refresh::refresh_dkg_part2(parts[0].0.clone(), &others).unwrap();
        let refreshes = Refreshes::default();
        let local = Local {
            round1_hex: "00".into(),
            outgoing: [(2, packages[&ids[1]].clone())].into_iter().collect(),
            confirmation: Some("ab".repeat(32)),
            ..Local::default()
        };
        refreshes.locals.lock().unwrap().insert(("k1".into(), 1, 7), local);
        let steps = refreshes.plan(1, &key, 2_000, &crate::seams::os_rng());
        match steps.as_slice() {
            [Step::Deliver(to)] => assert_eq!(to.keys().copied().collect::<Vec<_>>(), vec![2]),
            _ => panic!("expected the undelivered value to be sent again, got {} steps", steps.len()),
        }
        // Past the timeout by this node's clock, it gives up (no entry may come to move the log's time).
        let steps = refreshes.plan(1, &key, 1_000 + DKG_TIMEOUT_MS + 1, &crate::seams::os_rng());
        assert!(matches!(steps.as_slice(), [Step::Submit(Command::RefreshAbort { .. })]));
    }
}

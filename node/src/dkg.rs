//! This node's part in distributed key generation (FROST Pedersen DKG).
//!
//! The log carries what must be public and agreed: each participant's round-1
//! package, signed with its node key, and each participant's confirmation of
//! the resulting key. Round-2 packages are secret shares for one recipient and
//! go point to point over mutual TLS, never through the log. DKG secrets live
//! only in memory: a participant that restarts mid-generation aborts that
//! generation (liveness, never safety), and the operator runs it again with
//! fresh polynomials. The key package that comes out is sealed under the KEK
//! before the node confirms, so an active key always has every share at rest.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use frost::keys::dkg::{round1, round2};
use frost::keys::{KeyPackage, SecretShare};
use frost_ed25519 as frost;
use futures::future::BoxFuture;
use synod_proto::api::WriteResponse;
use synod_proto::rpc::{PeerRequest, PeerResponse, SecretHex};
use synod_proto::NodeError;
use synod_proto::{Command, NodeId};
use zeroize::Zeroizing;

use crate::raft::state_machine::SharedState;
use crate::sealed::SealedStore;
use crate::seams::Seams;
use crate::signer::key_package_context;
use crate::state::{frost_identifier, package_hash, KeyOrigin, KeyRecord, KeyStatus, DKG_TIMEOUT_MS};
use crate::transport::PeerTransport;

/// What key generation needs from the node it runs on. The node implements
/// it; this module never names the node, so the two do not call each other in
/// a circle.
pub trait DkgHost: Send + Sync {
    /// This node's id (= its FROST identifier).
    fn id(&self) -> NodeId;
    /// The applied state.
    fn state(&self) -> &SharedState;
    /// This node's clock, in ms since the epoch.
    fn now_ms(&self) -> u64;
    fn seams(&self) -> &Seams;
    /// Round-2 packages go point to point over it.
    fn transport(&self) -> &Arc<dyn PeerTransport>;
    /// The new share is sealed into it before the node confirms.
    fn sealed(&self) -> &Arc<SealedStore>;
    /// Commits a command this node authors (round-1 packages, confirmations, aborts).
    fn write_as_node(&self, command: Command) -> BoxFuture<'_, Result<WriteResponse, NodeError>>;
    /// This node holds its share of `key_id` again (a repair sealed it).
    fn share_restored(&self, _key_id: &str) {}
    /// How long this node's part of a generation took, from the log time it started to the
    /// sealed share (or the failure), for the node's metrics (`synod_dkg_duration_seconds`,
    /// `synod_refresh_duration_seconds`).
    fn record_duration(&self, _histogram: &'static str, _outcome: &str, _took: std::time::Duration) {}
}

/// How long to wait before submitting a message again that has not shown up
/// in the committed state (the write may have been lost with a leader).
pub(crate) const RESUBMIT_MS: u64 = 3_000;
/// Whether a message submitted at `last_ms` (this node's clock) is due again
/// at `now_ms`. Either way round: a clock stepped back (an NTP step) must not
/// hold a resubmission back by the size of the step (found by the simulator:
/// a participant whose clock jumped back 28 s sent its lost round-1 package
/// again only after the generation had stalled for longer than that).
pub(crate) fn resubmit_due(now_ms: u64, last_ms: u64) -> bool {
    now_ms.abs_diff(last_ms) >= RESUBMIT_MS
}

/// How long one round-2 delivery may take.
pub(crate) const DELIVERY_TIMEOUT: Duration = Duration::from_secs(2);
/// The most generations this node takes part in at once.
pub const GENERATIONS_MAX: usize = 16;

/// One generation's secrets and progress on this node.
#[derive(Default)]
struct Local {
    round1_secret: Option<round1::SecretPackage>,
    /// Our round-1 package (hex), as submitted.
    round1_hex: String,
    round2_secret: Option<round2::SecretPackage>,
    /// Round-2 packages not yet delivered, by recipient.
    outgoing: BTreeMap<NodeId, round2::Package>,
    /// Round-2 packages received, by sender.
    received: BTreeMap<NodeId, round2::Package>,
    /// (group key, package hash) once our key package is sealed.
    confirmation: Option<(String, String)>,
    last_submit_ms: u64,
    /// Our abort of this generation, sent again until the key is no longer generating.
    abort: Option<Command>,
}

/// The generations this node takes part in.
#[derive(Default)]
pub struct Dkg {
    locals: Mutex<BTreeMap<String, Local>>,
}

/// What a tick decided to do outside the lock. A step lives for one tick, so
/// a command unboxed in it costs nothing worth an allocation.
#[allow(clippy::large_enum_variant)]
enum Step {
    Submit(Command),
    Deliver(BTreeMap<NodeId, (String, round2::Package)>),
    Seal { key_package: Box<KeyPackage>, group: String, hash: String },
}

impl Dkg {
    /// Advances every generation this node takes part in by one step.
    pub async fn tick(&self, node: &dyn DkgHost) {
        let now = node.now_ms();
        let keys: Vec<KeyRecord> = {
            let applied = node.state().read();
            applied
                .state
                .keys
                .values()
                .filter(|k| k.status == KeyStatus::Generating && k.participants.contains(&node.id()))
                .cloned()
                .collect()
        };
        self.locals.lock().expect("dkg lock").retain(|id, _| keys.iter().any(|k| &k.id == id));
        for key in keys {
            let steps = self.plan(node.id(), &key, now, &node.seams().rng);
            for step in steps {
                match step {
                    Step::Submit(command) => {
                        if let Err(e) = node.write_as_node(command).await {
                            tracing::info!(key = %key.name, error = %e, "DKG message not committed yet; will retry");
                        }
                    }
                    Step::Deliver(packages) => self.deliver(node, &key, packages).await,
                    Step::Seal { key_package, group, hash } => {
                        let took = std::time::Duration::from_millis(now.saturating_sub(key.created_at_ms));
                        if let Err(e) = seal(node, &key, 0, &key_package).await {
                            node.record_duration("synod_dkg_duration_seconds", "failed", took);
                            tracing::error!(key = %key.name, error = %e, "cannot seal the new key share");
                            let reason = format!("cannot seal its key share: {e}");
                            let _ = node.write_as_node(abort(&key, node.id(), reason, None)).await;
                            continue;
                        }
                        node.record_duration("synod_dkg_duration_seconds", "sealed", took);
                        crate::faults::crash_point(node.id(), crate::faults::DKG_AFTER_SEAL).await;
                        let confirm = Command::KeyConfirm {
                            key_id: key.id.clone(),
                            node_id: node.id(),
                            group_key: group.clone(),
                            public_key_package_sha256: hash.clone(),
                        };
                        if let Some(local) = self.locals.lock().expect("dkg lock").get_mut(&key.id) {
                            local.confirmation = Some((group, hash));
                            local.last_submit_ms = now;
                        }
                        if let Err(e) = node.write_as_node(confirm).await {
                            tracing::info!(key = %key.name, error = %e, "confirmation not committed yet; will retry");
                        }
                    }
                }
            }
        }
    }

    /// Decides the next steps for one generation (no I/O).
    fn plan(&self, me: NodeId, key: &KeyRecord, now: u64, rng: &crate::seams::SharedRng) -> Vec<Step> {
        let mut locals = self.locals.lock().expect("dkg lock");
        let n = key.participants.len();
        let timed_out = now.saturating_sub(key.created_at_ms) > DKG_TIMEOUT_MS;
        if key.origin == KeyOrigin::Imported {
            return Vec::new(); // Shares arrive through the API (`import_share`).
        }
        let fresh = !locals.contains_key(&key.id);
        if fresh && key.round1.contains_key(&me) {
            // We committed a round-1 package in an earlier life; its secret died with it.
            let reason = "restarted during key generation and lost its DKG secrets; run `synod key create` again";
            let local = locals.entry(key.id.clone()).or_default();
            return give_up(local, abort(key, me, reason.into(), None), now);
        }
        if fresh && locals.len() >= GENERATIONS_MAX {
            return Vec::new();
        }
        let local = locals.entry(key.id.clone()).or_default();
        if let Some(command) = &local.abort {
            // The abort may have been lost (no leader right after a restart): send it again.
            if resubmit_due(now, local.last_submit_ms) {
                local.last_submit_ms = now;
                return vec![Step::Submit(command.clone())];
            }
            return Vec::new();
        }
        if timed_out {
            let missing: Vec<NodeId> =
                key.participants.iter().copied().filter(|p| !key.round1.contains_key(p)).collect();
            let reason = format!(
                "timed out after {} s; round-1 packages missing from nodes {missing:?}, round-2 packages received from {:?}",
                DKG_TIMEOUT_MS / 1000,
                local.received.keys().collect::<Vec<_>>()
            );
            return give_up(local, abort(key, me, reason, None), now);
        }

        // Round 1.
        if local.round1_hex.is_empty() {
            let Some(id) = frost_identifier(me) else { return Vec::new() };
            let part1 = {
                let mut guard = rng.lock().expect("rng lock");
                let rng: &mut dyn crate::seams::SecureRng = &mut *guard;
                frost::keys::dkg::part1(id, n as u16, key.threshold, rng)
            };
            match part1 {
                Ok((secret, package)) => {
                    local.round1_secret = Some(secret);
                    local.round1_hex = hex::encode(package.serialize().expect("round-1 package serialises"));
                }
                Err(e) => {
                    return give_up(local, abort(key, me, format!("DKG part 1 failed: {e}"), None), now);
                }
            }
            local.last_submit_ms = now;
            return vec![Step::Submit(round1_command(key, me, &local.round1_hex))];
        }
        match key.round1.get(&me) {
            None => {
                if resubmit_due(now, local.last_submit_ms) {
                    local.last_submit_ms = now;
                    return vec![Step::Submit(round1_command(key, me, &local.round1_hex))];
                }
                return Vec::new();
            }
            // The package committed for us is an earlier life's (its write was still on its way
            // when we restarted and drew new secrets): round 2 from our new secret would not match
            // it, and the others would blame us. Found by the simulator.
            Some(committed) if *committed != local.round1_hex => {
                let reason = "restarted during key generation; the round-1 package committed for it is from \
                              before the restart and its secret is gone; run `synod key create` again";
                return give_up(local, abort(key, me, reason.into(), None), now);
            }
            Some(_) => {}
        }
        if key.round1.len() < n {
            return Vec::new();
        }

        // Round 2: derive the shares for the others once every round-1 package is committed.
        if let Some(secret) = local.round1_secret.take() {
            let others = match others_round1(key, me) {
                Ok(others) => others,
                Err(reason) => {
                    return give_up(local, abort(key, me, reason, None), now);
                }
            };
            match frost::keys::dkg::part2(secret, &others) {
                Ok((secret2, packages)) => {
                    local.round2_secret = Some(secret2);
                    local.outgoing = packages
                        .into_iter()
                        .filter_map(|(id, p)| {
                            key.participants.iter().find(|n| frost_identifier(**n) == Some(id)).map(|n| (*n, p))
                        })
                        .collect();
                }
                Err(e) => {
                    let culprit = e.culprits().first().and_then(|c| node_of(key, c));
                    return give_up(local, abort(key, me, format!("DKG part 2 failed: {e}"), culprit), now);
                }
            }
        }
        let mut steps = Vec::new();
        if !local.outgoing.is_empty() {
            let packages = local.outgoing.iter().map(|(n, p)| (*n, (key.id.clone(), p.clone()))).collect();
            steps.push(Step::Deliver(packages));
        }

        // Round 3: once every share for us has arrived.
        if local.confirmation.is_none() && local.received.len() == n - 1 {
            let Some(secret2) = local.round2_secret.as_ref() else { return steps };
            let others = match others_round1(key, me) {
                Ok(o) => o,
                Err(_) => return steps,
            };
            let received: BTreeMap<frost::Identifier, round2::Package> =
                local.received.iter().filter_map(|(n, p)| frost_identifier(*n).map(|id| (id, p.clone()))).collect();
            match frost::keys::dkg::part3(secret2, &others, &received) {
                Ok((key_package, public)) => {
                    let package_hex = hex::encode(public.serialize().expect("public key package serialises"));
                    if key.public_key_package.as_deref() != Some(package_hex.as_str()) {
                        let reason = "derived a public key package that differs from the committed one".to_string();
                        return give_up(local, abort(key, me, reason, None), now);
                    }
                    let group = hex::encode(public.verifying_key().serialize().expect("group key serialises"));
                    local.round2_secret = None;
                    // Mark as in progress so the next tick does not seal twice.
                    local.confirmation = Some((String::new(), String::new()));
                    steps.push(Step::Seal {
                        key_package: Box::new(key_package),
                        group,
                        hash: package_hash(&package_hex),
                    });
                }
                Err(e) => {
                    let culprit = e.culprits().first().and_then(|c| node_of(key, c));
                    return give_up(local, abort(key, me, format!("DKG part 3 failed: {e}"), culprit), now);
                }
            }
            return steps;
        }
        if let Some((group, hash)) = &local.confirmation {
            let resubmit = !group.is_empty() && resubmit_due(now, local.last_submit_ms);
            if resubmit && !key.confirmed.contains(&me) {
                local.last_submit_ms = now;
                steps.push(Step::Submit(Command::KeyConfirm {
                    key_id: key.id.clone(),
                    node_id: me,
                    group_key: group.clone(),
                    public_key_package_sha256: hash.clone(),
                }));
            }
        }
        steps
    }

    /// Sends round-2 packages to their recipients; delivered ones are not sent again.
    async fn deliver(
        &self,
        node: &dyn DkgHost,
        key: &KeyRecord,
        packages: BTreeMap<NodeId, (String, round2::Package)>,
    ) {
        let requests = packages
            .into_iter()
            .filter_map(|(to, (key_id, package))| {
                let package = crate::faults::corrupt_dkg_package(node.id(), package);
                let bytes = Zeroizing::new(package.serialize().ok()?);
                Some((to, PeerRequest::DkgRound2 { key_id, package: SecretHex::new(hex::encode(&*bytes)) }))
            })
            .collect();
        for to in deliver_secrets(node, &key.name, "round-2 package", requests).await {
            if let Some(local) = self.locals.lock().expect("dkg lock").get_mut(&key.id) {
                local.outgoing.remove(&to);
            }
        }
    }

    /// A round-2 package from participant `from` (authenticated by mutual TLS).
    pub fn receive_round2(
        &self,
        node: &dyn DkgHost,
        from: NodeId,
        key_id: &str,
        package: &SecretHex,
    ) -> Result<(), String> {
        {
            let applied = node.state().read();
            let key = applied.state.keys.get(key_id).ok_or(format!("key {key_id} is not in this node's state yet"))?;
            if key.status != KeyStatus::Generating {
                return Err(format!("key {} is not generating", key.name));
            }
            if !key.participants.contains(&from) || !key.participants.contains(&node.id()) {
                return Err(format!("node {from} and node {} are not both participants", node.id()));
            }
        }
        let bytes = Zeroizing::new(hex::decode(package.expose()).map_err(|_| "round-2 package is not hex")?);
        let package =
            round2::Package::deserialize(&bytes).map_err(|e| format!("round-2 package does not parse: {e}"))?;
        let mut locals = self.locals.lock().expect("dkg lock");
        let local = locals.get_mut(key_id).ok_or("this node holds no DKG secrets for the key (restarted?)")?;
        local.received.entry(from).or_insert(package);
        Ok(())
    }
}

/// Sends each secret (`requests`, by recipient) point to point over mutual
/// TLS, all at once; returns the recipients that took theirs. The others are
/// sent again on a later tick. `what` names the secret in logs.
pub(crate) async fn deliver_secrets(
    node: &dyn DkgHost,
    key_name: &str,
    what: &str,
    requests: Vec<(NodeId, PeerRequest)>,
) -> Vec<NodeId> {
    let members = node.state().read().state.members.clone();
    let calls = requests.into_iter().filter_map(|(to, request)| {
        let addr = members.get(&to)?.raft_addr.clone();
        Some(async move { (to, node.transport().call(to, addr, request, DELIVERY_TIMEOUT).await) })
    });
    let mut taken = Vec::new();
    for (to, result) in futures::future::join_all(calls).await {
        match result.as_ref().map(PeerResponse::secret_taken) {
            Ok(Some(Ok(()))) => taken.push(to),
            Ok(Some(Err(why))) => tracing::info!(key = %key_name, to, why, "{what} refused; will retry"),
            Ok(None) => tracing::info!(key = %key_name, to, answer = ?result, "unexpected answer to a {what}"),
            Err(e) => tracing::info!(key = %key_name, to, error = %e, "{what} not delivered; will retry"),
        }
    }
    taken
}

/// An imported share sent by the operator's CLI: verified against the
/// committed public key package, sealed, then confirmed in the log.
pub async fn import_share(node: &dyn DkgHost, key_id: &str, share: &SecretHex) -> Result<(), NodeError> {
    let key = {
        let applied = node.state().read();
        let key = applied.state.keys.get(key_id).ok_or(NodeError::not_found(format!("no key with id {key_id}")))?;
        if key.origin != KeyOrigin::Imported || key.status != KeyStatus::Generating {
            return Err(NodeError::conflict(format!("key {} is not waiting for imported shares", key.name)));
        }
        if !key.participants.contains(&node.id()) {
            return Err(NodeError::invalid(format!("node {} is not a participant of key {}", node.id(), key.name)));
        }
        key.clone()
    };
    let bytes = Zeroizing::new(hex::decode(share.expose()).map_err(|_| NodeError::invalid("share is not hex"))?);
    let secret =
        SecretShare::deserialize(&bytes).map_err(|e| NodeError::invalid(format!("share does not parse: {e}")))?;
    if Some(*secret.identifier()) != frost_identifier(node.id()) {
        return Err(NodeError::invalid(format!("this share is for another participant, not node {}", node.id())));
    }
    let key_package = KeyPackage::try_from(secret)
        .map_err(|e| NodeError::invalid(format!("share does not verify against its commitment: {e}")))?;
    let public = key.public_keys().ok_or(NodeError::internal("the key's public package does not parse"))?;
    let id = frost_identifier(node.id()).expect("checked above");
    if key_package.verifying_key() != public.verifying_key()
        || public.verifying_shares().get(&id) != Some(key_package.verifying_share())
    {
        return Err(NodeError::invalid("this share does not belong to the key's committed public key package"));
    }
    seal(node, &key, 0, &key_package).await.map_err(|e| NodeError::internal(format!("cannot seal the share: {e}")))?;
    let confirm = Command::KeyConfirm {
        key_id: key.id.clone(),
        node_id: node.id(),
        group_key: key.group_key.clone().unwrap_or_default(),
        public_key_package_sha256: package_hash(key.public_key_package.as_deref().unwrap_or_default()),
    };
    node.write_as_node(confirm).await.map(|_| ())
}

/// Seals `key_package` as this node's share of generation `generation` of `key`.
pub(crate) async fn seal(
    node: &dyn DkgHost,
    key: &KeyRecord,
    generation: u32,
    key_package: &KeyPackage,
) -> Result<(), String> {
    let cluster_id = node.state().read().state.cluster_id.clone().unwrap_or_default();
    let mut ctx = key_package_context(cluster_id, node.id(), key);
    ctx.generation = generation;
    let bytes = Zeroizing::new(key_package.serialize().map_err(|e| e.to_string())?);
    let sealed = node.sealed().clone();
    crate::seams::run_blocking(move || sealed.put(&ctx, &bytes))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// Records our abort and sends it; `plan` sends it again until it is committed.
fn give_up(local: &mut Local, command: Command, now: u64) -> Vec<Step> {
    local.abort = Some(command.clone());
    local.last_submit_ms = now;
    vec![Step::Submit(command)]
}

fn round1_command(key: &KeyRecord, me: NodeId, package_hex: &str) -> Command {
    Command::DkgRound1 { key_id: key.id.clone(), node_id: me, package: package_hex.to_string() }
}

fn abort(key: &KeyRecord, me: NodeId, reason: String, culprit: Option<NodeId>) -> Command {
    tracing::warn!(key = %key.name, reason, ?culprit, "aborting key generation");
    Command::KeyAbort { key_id: key.id.clone(), node_id: me, reason, culprit }
}

fn node_of(key: &KeyRecord, id: &frost::Identifier) -> Option<NodeId> {
    key.participants.iter().copied().find(|n| frost_identifier(*n).as_ref() == Some(id))
}

/// The committed round-1 packages of every participant but `me`.
fn others_round1(key: &KeyRecord, me: NodeId) -> Result<BTreeMap<frost::Identifier, round1::Package>, String> {
    let mut out = BTreeMap::new();
    for (node, package_hex) in key.round1.iter().filter(|(n, _)| **n != me) {
        let id = frost_identifier(*node).ok_or("participant without identifier")?;
        let bytes = hex::decode(package_hex).map_err(|_| "round-1 package is not hex")?;
        let package = round1::Package::deserialize(&bytes).map_err(|e| format!("round-1 package: {e}"))?;
        out.insert(id, package);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generating(participants: Vec<NodeId>) -> KeyRecord {
        KeyRecord::generating("k1", "payments", 2, &participants, KeyOrigin::Dkg, 1, 1_000)
    }

    fn submitted(steps: Vec<Step>) -> Vec<Command> {
        steps.into_iter().filter_map(|s| if let Step::Submit(c) = s { Some(c) } else { None }).collect()
    }

    #[test]
    fn dkg_round1_committed_from_before_a_restart_aborts_instead_of_sending_mismatched_shares() {
        // A participant whose round-1 write was still on its way when it restarted draws new
        // secrets and submits again; if the old package is the one committed, round 2 from the new
        // secret would not match it and the others would name this honest node the culprit. It
        // aborts the generation instead, naming nobody.
        let dkg = Dkg::default();
        let rng = crate::seams::os_rng();
        let mut key = generating(vec![1, 2, 3]);
        let first = submitted(dkg.plan(1, &key, 2_000, &rng));
        let Some(Command::DkgRound1 { package, .. }) = first.first() else { panic!("round 1 first: {first:?}") };
        // The same package committed: no abort, the node waits for the others.
        key.round1.insert(1, package.clone());
        assert!(submitted(dkg.plan(1, &key, 2_100, &rng)).is_empty());
        // A package from an earlier life committed instead: abort, no culprit.
        let (_, earlier) =
            frost::keys::dkg::part1(frost_identifier(1).unwrap(), 3, 2, &mut *rng.lock().unwrap()).unwrap();
        key.round1.insert(1, hex::encode(earlier.serialize().unwrap()));
        let steps = submitted(dkg.plan(1, &key, 2_200, &rng));
        match steps.as_slice() {
            [Command::KeyAbort { node_id: 1, culprit: None, reason, .. }] => {
                assert!(reason.contains("before the restart"), "{reason}")
            }
            other => panic!("expected one abort, got {other:?}"),
        }
    }
}

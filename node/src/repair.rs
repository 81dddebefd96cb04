//! This node's part in a repair or an enrollment (`state/repair.rs` has the
//! rules and the picture): as a helper it splits its part of the target's
//! share into values for the other helpers, commits their public values
//! through the log and sends each value over mutual TLS; it checks the
//! values it receives against their senders' commitments and sends their sum
//! to the target. As the target it checks each sum against the commitments,
//! derives its share, checks it against the verifying share the state holds
//! for it, seals it, and says so. Values live only in memory: a helper or
//! target that restarts mid-repair aborts it, and the admin runs it again.

use std::collections::BTreeMap;
use std::sync::Mutex;

use frost::keys::repairable::{Delta, Sigma};
use frost::keys::KeyPackage;
use frost_ed25519 as frost;
use synod_proto::rpc::{PeerRequest, SecretHex};
use synod_proto::{Command, NodeId};
use zeroize::Zeroizing;

use crate::dkg::{deliver_secrets, resubmit_due, seal, DkgHost};
use crate::signer::key_package_context;
use crate::state::{frost_identifier, point_hex, public_of, KeyRecord, KeyStatus, Repair, DKG_TIMEOUT_MS};

/// One repair's values and progress on this node.
#[derive(Default)]
struct Local {
    /// Our values for each helper (ours to ourselves included), once drawn.
    deltas: Option<BTreeMap<NodeId, Delta>>,
    /// The commitment command, as submitted.
    commit: Option<Command>,
    /// Values to deliver, by helper.
    outgoing: BTreeMap<NodeId, Delta>,
    /// Values received, by sending helper.
    received: BTreeMap<NodeId, Delta>,
    /// Our sum for the target, once computed and until delivered.
    sigma: Option<Sigma>,
    sigma_delivered: bool,
    /// As the target: sums received, by helper.
    sigmas: BTreeMap<NodeId, Sigma>,
    /// As the target: the done command once the share is sealed.
    done: Option<Command>,
    last_submit_ms: u64,
    abort: Option<Command>,
}

/// A repair: its key id, its target, and its attempt (the log index of its
/// `repair_share`; a repair aborted and started again must not meet the
/// earlier attempt's values).
type Attempt = (String, NodeId, u64);

/// The repairs this node takes part in.
#[derive(Default)]
pub struct Repairs {
    locals: Mutex<BTreeMap<Attempt, Local>>,
}

fn attempt_of(key: &KeyRecord) -> Option<Attempt> {
    key.repair.as_ref().map(|r| (key.id.clone(), r.target, r.started_index))
}

impl Repairs {
    /// Advances every repair this node takes part in.
    pub async fn tick(&self, node: &dyn DkgHost) {
        let me = node.id();
        let keys: Vec<KeyRecord> = {
            let applied = node.state().read();
            applied
                .state
                .keys
                .values()
                .filter(|k| {
                    k.status == KeyStatus::Active
                        && k.repair.as_ref().is_some_and(|r| r.target == me || r.helpers.contains(&me))
                })
                .cloned()
                .collect()
        };
        self.locals
            .lock()
            .expect("repair lock")
            .retain(|attempt, _| keys.iter().any(|k| attempt_of(k).as_ref() == Some(attempt)));
        for key in keys {
            let repair = key.repair.clone().expect("filtered");
            if let Err((reason, culprit)) = self.advance(node, &key, &repair).await {
                let attempt = repair.started_index;
                let command = Command::RepairAbort { key_id: key.id.clone(), node_id: me, attempt, reason, culprit };
                tracing::warn!(key = %key.name, ?command, "aborting a repair");
                self.with_local(&key.id, &repair, |local| {
                    local.abort = Some(command.clone());
                    local.last_submit_ms = node.now_ms();
                });
                submit(node, &key, command).await;
            }
        }
    }

    fn with_local<T>(&self, key_id: &str, repair: &Repair, f: impl FnOnce(&mut Local) -> T) -> T {
        let mut locals = self.locals.lock().expect("repair lock");
        f(locals.entry((key_id.to_string(), repair.target, repair.started_index)).or_default())
    }

    /// One step of one repair; `Err` gives up, with the reason and the culprit.
    async fn advance(
        &self,
        node: &dyn DkgHost,
        key: &KeyRecord,
        repair: &Repair,
    ) -> Result<(), (String, Option<NodeId>)> {
        let (me, now) = (node.id(), node.now_ms());
        let slot = (key.id.clone(), repair.target, repair.started_index);
        let fresh = !self.locals.lock().expect("repair lock").contains_key(&slot);
        // A resend of what is still waiting for the log.
        let pending = self.with_local(&key.id, repair, |local| {
            let due = resubmit_due(now, local.last_submit_ms);
            let waiting = local.abort.clone().or_else(|| {
                let committed = repair.commitments.contains_key(&me);
                local.commit.clone().filter(|_| !committed)
            });
            let waiting = waiting.or_else(|| local.done.clone());
            due.then(|| {
                local.last_submit_ms = now;
                waiting
            })
            .flatten()
        });
        if self.with_local(&key.id, repair, |local| local.abort.is_some()) {
            if let Some(command) = pending {
                submit(node, key, command).await;
            }
            return Ok(());
        }
        if let Some(command) = pending {
            submit(node, key, command).await;
        }
        if now.saturating_sub(repair.started_at_ms) > DKG_TIMEOUT_MS {
            // By this node's clock: on an idle cluster no entry moves the log's time to its timeout.
            return Err((format!("timed out after {} s", DKG_TIMEOUT_MS / 1000), None));
        }
        if repair.helpers.contains(&me) {
            if fresh && repair.commitments.contains_key(&me) {
                return Err(("restarted during the repair and lost its repair values; run it again".into(), None));
            }
            self.help(node, key, repair).await?;
        }
        if repair.target == me {
            self.finish(node, key, repair).await?;
        }
        Ok(())
    }

    /// The helper's side.
    async fn help(&self, node: &dyn DkgHost, key: &KeyRecord, repair: &Repair) -> Result<(), (String, Option<NodeId>)> {
        let me = node.id();
        let drawn = self.with_local(&key.id, repair, |local| local.deltas.is_some());
        if !drawn {
            let own = unseal_own(node, key).await.map_err(|e| (e, None))?;
            let helpers: Vec<frost::Identifier> = repair.helpers.iter().filter_map(|h| frost_identifier(*h)).collect();
            let target = frost_identifier(repair.target).ok_or(("no FROST identifier".to_string(), None))?;
            let deltas = {
                let mut guard = node.seams().rng.lock().expect("rng lock");
                let mut rng: &mut dyn crate::seams::SecureRng = &mut *guard;
                frost::keys::repairable::repair_share_part1::<frost::Ed25519Sha512, _>(&helpers, &own, &mut rng, target)
            }
            .map_err(|e| (format!("repair part 1 failed: {e}"), None))?;
            let by_node: BTreeMap<NodeId, Delta> =
                deltas.into_iter().filter_map(|(id, d)| node_of(&repair.helpers, &id).map(|n| (n, d))).collect();
            let mut commitments = Vec::new();
            for (to, delta) in &by_node {
                let public = public_of(&Zeroizing::new(delta.serialize()))
                    .ok_or(("a repair value is not a scalar".to_string(), None))?;
                commitments.push((*to, hex::encode(public.compress().as_bytes())));
            }
            let commit = Command::RepairCommit {
                key_id: key.id.clone(),
                node_id: me,
                target: repair.target,
                attempt: repair.started_index,
                deltas: commitments,
            };
            self.with_local(&key.id, repair, |local| {
                local.outgoing = by_node.iter().filter(|(to, _)| **to != me).map(|(to, d)| (*to, *d)).collect();
                local.received.insert(me, by_node[&me]);
                local.deltas = Some(by_node);
                local.commit = Some(commit.clone());
                local.last_submit_ms = node.now_ms();
            });
            submit(node, key, commit).await;
        }
        // Deliver our values to the other helpers.
        let outgoing = self.with_local(&key.id, repair, |local| local.outgoing.clone());
        if !outgoing.is_empty() {
            let requests = outgoing
                .into_iter()
                .map(|(to, delta)| {
                    let delta = crate::faults::corrupt_repair_value(me, delta);
                    let delta = SecretHex::new(hex::encode(Zeroizing::new(delta.serialize()).as_slice()));
                    let (key_id, target, attempt) = (key.id.clone(), repair.target, repair.started_index);
                    (to, PeerRequest::RepairDelta { key_id, target, attempt, delta })
                })
                .collect();
            for to in deliver_secrets(node, &key.name, "repair value", requests).await {
                self.with_local(&key.id, repair, |local| local.outgoing.remove(&to));
            }
        }
        // Once every helper's values are committed and ours received: check, sum, send.
        let (received, sigma, delivered) =
            self.with_local(&key.id, repair, |local| (local.received.clone(), local.sigma, local.sigma_delivered));
        if delivered || repair.commitments.len() < repair.helpers.len() || received.len() < repair.helpers.len() {
            return Ok(());
        }
        let sigma = match sigma {
            Some(sigma) => sigma,
            None => {
                for (from, delta) in &received {
                    let committed = repair.commitments.get(from).and_then(|c| c.get(&me)).and_then(|p| point_hex(p));
                    if committed.is_none() || public_of(&Zeroizing::new(delta.serialize())) != committed {
                        let reason = format!("the repair value node {from} sent does not match its commitment");
                        return Err((reason, Some(*from)));
                    }
                }
                let deltas: Vec<Delta> = received.values().copied().collect();
                let sigma = frost::keys::repairable::repair_share_part2(&deltas);
                self.with_local(&key.id, repair, |local| local.sigma = Some(sigma));
                sigma
            }
        };
        let request = PeerRequest::RepairSigma {
            key_id: key.id.clone(),
            attempt: repair.started_index,
            sigma: SecretHex::new(hex::encode(Zeroizing::new(sigma.serialize()).as_slice())),
        };
        if !deliver_secrets(node, &key.name, "repair sum", vec![(repair.target, request)]).await.is_empty() {
            self.with_local(&key.id, repair, |local| local.sigma_delivered = true);
        }
        Ok(())
    }

    /// The target's side.
    async fn finish(
        &self,
        node: &dyn DkgHost,
        key: &KeyRecord,
        repair: &Repair,
    ) -> Result<(), (String, Option<NodeId>)> {
        let (sigmas, done) = self.with_local(&key.id, repair, |local| (local.sigmas.clone(), local.done.is_some()));
        if done || sigmas.len() < repair.helpers.len() || repair.commitments.len() < repair.helpers.len() {
            return Ok(());
        }
        for (from, sigma) in &sigmas {
            let expected: Option<curve25519_dalek::EdwardsPoint> = repair
                .commitments
                .values()
                .map(|c| c.get(from).and_then(|p| point_hex(p)))
                .sum::<Option<curve25519_dalek::EdwardsPoint>>();
            if expected.is_none() || public_of(&Zeroizing::new(sigma.serialize())) != expected {
                return Err((
                    format!("the repair sum node {from} sent does not match the helpers' commitments"),
                    Some(*from),
                ));
            }
        }
        let public = key.public_keys().ok_or(("the key's public key package does not parse".to_string(), None))?;
        let id = frost_identifier(node.id()).ok_or(("no FROST identifier".to_string(), None))?;
        let sigmas: Vec<Sigma> = sigmas.values().copied().collect();
        let package = frost::keys::repairable::repair_share_part3(&sigmas, id, &public)
            .map_err(|e| (format!("repair part 3 failed: {e}"), None))?;
        let derived = package.verifying_share().serialize().map(hex::encode).unwrap_or_default();
        if derived != repair.verifying_share {
            return Err(("the repaired share does not match its verifying share".into(), None));
        }
        seal(node, key, key.generation, &package)
            .await
            .map_err(|e| (format!("cannot seal the repaired share: {e}"), None))?;
        node.share_restored(&key.id);
        let done = Command::RepairDone { key_id: key.id.clone(), node_id: node.id(), attempt: repair.started_index };
        self.with_local(&key.id, repair, |local| {
            local.done = Some(done.clone());
            local.last_submit_ms = node.now_ms();
        });
        tracing::info!(key = %key.name, "sealed this node's repaired share");
        submit(node, key, done).await;
        Ok(())
    }

    /// A helper's value from helper `from` (authenticated by mutual TLS).
    pub fn receive_delta(
        &self,
        node: &dyn DkgHost,
        from: NodeId,
        key_id: &str,
        (target, attempt): (NodeId, u64),
        delta: &SecretHex,
    ) -> Result<(), String> {
        let me = node.id();
        let repair = check_repair(node, key_id, |r| {
            r.target == target && r.started_index == attempt && r.helpers.contains(&from) && r.helpers.contains(&me)
        })?;
        let bytes = Zeroizing::new(hex::decode(delta.expose()).map_err(|_| "repair value is not hex")?);
        let delta = Delta::deserialize(&bytes).map_err(|e| format!("repair value does not parse: {e}"))?;
        self.with_local(key_id, &repair, |local| {
            local.received.entry(from).or_insert(delta);
        });
        Ok(())
    }

    /// A helper's sum for this node, the target (authenticated by mutual TLS).
    pub fn receive_sigma(
        &self,
        node: &dyn DkgHost,
        from: NodeId,
        key_id: &str,
        attempt: u64,
        sigma: &SecretHex,
    ) -> Result<(), String> {
        let me = node.id();
        let repair =
            check_repair(node, key_id, |r| r.target == me && r.started_index == attempt && r.helpers.contains(&from))?;
        let bytes = Zeroizing::new(hex::decode(sigma.expose()).map_err(|_| "repair sum is not hex")?);
        let sigma = Sigma::deserialize(&bytes).map_err(|e| format!("repair sum does not parse: {e}"))?;
        self.with_local(key_id, &repair, |local| {
            local.sigmas.entry(from).or_insert(sigma);
        });
        Ok(())
    }
}

/// The repair of `key_id` in progress here, if this call belongs to it.
fn check_repair(node: &dyn DkgHost, key_id: &str, fits: impl Fn(&Repair) -> bool) -> Result<Repair, String> {
    let applied = node.state().read();
    let key = applied.state.keys.get(key_id).ok_or(format!("key {key_id} is not in this node's state yet"))?;
    match &key.repair {
        Some(repair) if fits(repair) => Ok(repair.clone()),
        _ => Err(format!("key {} has no repair here that this call belongs to", key.name)),
    }
}

async fn submit(node: &dyn DkgHost, key: &KeyRecord, command: Command) {
    if let Err(e) = node.write_as_node(command).await {
        tracing::info!(key = %key.name, error = %e, "repair message not committed yet; will retry");
    }
}

async fn unseal_own(node: &dyn DkgHost, key: &KeyRecord) -> Result<KeyPackage, String> {
    let cluster_id = node.state().read().state.cluster_id.clone().unwrap_or_default();
    let ctx = key_package_context(cluster_id, node.id(), key);
    let sealed = node.sealed().clone();
    let plain = crate::seams::run_blocking(move || sealed.get(&ctx))
        .await
        .map_err(|e| format!("unsealing failed: {e}"))?
        .map_err(|e| format!("cannot unseal its share: {e}"))?
        .ok_or(format!("holds no share of generation {} to help with", key.generation))?;
    KeyPackage::deserialize(&plain).map_err(|e| format!("its sealed share does not parse: {e}"))
}

fn node_of(nodes: &[NodeId], id: &frost::Identifier) -> Option<NodeId> {
    nodes.iter().copied().find(|n| frost_identifier(*n).as_ref() == Some(id))
}

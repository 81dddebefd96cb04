//! The signer: this node's side of FROST signing.
//!
//! Before it releases a share the signer checks, in its own committed state,
//! that the request exists and is pending, that the key's policy is met (every
//! approval's signature verified again here), that its key is active and this
//! node holds a share, and that the message in the signing package is byte for
//! byte the message it committed. The leader's word counts for nothing.
//!
//! Nonces are preprocessed (FROST's round 1 done ahead of requests): a
//! coordinator asks for a batch of commitments for a key, and each nonce pair
//! waits in memory in its own numbered slot, bound to that key and to the
//! asking node, tagged with this boot's incarnation. A slot's nonces are taken
//! out before the share is computed, so they serve exactly one signing package;
//! a byte-identical retry of that package gets the same share back, anything
//! else is refused. A restart forgets every slot: no backup, snapshot or lost
//! write can bring a used nonce back. Key packages are unsealed on first use
//! and kept in zeroizing memory while the node runs (ARCHITECTURE.md, "Sealed
//! secrets").

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use frost::keys::KeyPackage;
use frost::round1::{SigningCommitments, SigningNonces};
use frost::round2::SignatureShare;
use frost::SigningPackage;
use frost_ed25519 as frost;
use sha2::{Digest, Sha256};
use synod_proto::rpc::{NonceBatch, ShareAsk, PREPROCESS_COUNT_MAX};
use synod_proto::NodeId;

use crate::raft::state_machine::SharedState;
use crate::sealed::{Purpose, SealContext, SealedStore};
use crate::seams::SharedRng;
use crate::state::{frost_identifier, ClusterState, KeyRecord, KeyStatus, RequestStatus};

/// The most shares one request may take from this signer. A coordinator needs
/// at most n − t + 1 per leader; this leaves room for several leader changes.
pub const SHARES_PER_REQUEST_MAX: u32 = 32;
/// The most nonce slots held at once, fresh and used, over all keys and coordinators.
pub const SLOTS_MAX: usize = 8192;
/// The most fresh slots one coordinator may hold here: a new batch beyond it
/// drops that coordinator's oldest fresh slots (dropping nonces is always safe).
pub const FRESH_PER_COORDINATOR_MAX: usize = 2048;
/// How long a signer waits for a request it is asked about to reach its own
/// committed state before it refuses.
pub const CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_millis(1500);
/// How many released shares the signer remembers for inspection (the simulator's checker).
pub const RELEASED_KEPT_MAX: usize = 4096;

/// A share this signer released: public facts only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Released {
    pub request_id: String,
    /// The preprocessed slot whose nonces made the share.
    pub slot: u64,
    /// The nonce commitments (hex) the share was computed with.
    pub commitment: String,
    /// SHA-256 of the signing package it signed.
    pub package_sha256: [u8; 32],
    /// The log index this signer had applied when it checked the request: the
    /// state it decided by (the simulator's lifecycle checker reads the key's
    /// status at that point).
    pub checked_at_index: u64,
    /// The generation of the key's shares current in this signer's state
    /// when it checked the request.
    pub generation: u32,
    /// The share (hex FROST `SignatureShare`).
    pub share: String,
    /// The signing package it signed, kept only in builds with faults (the
    /// simulator's checker verifies each share against its generation's
    /// verifying share); a package holds the message, up to 64 KiB.
    pub signing_package: Option<Arc<Vec<u8>>>,
}

/// One preprocessed nonce pair, before and after use. Unboxed on purpose:
/// slots are bounded by [`SLOTS_MAX`] (a few MiB at most) and a box would be
/// one more heap copy of secret nonces to zeroize.
#[allow(clippy::large_enum_variant)]
enum Slot {
    /// Handed out as commitments, not yet used.
    Fresh {
        key_id: String,
        owner: NodeId,
        nonces: SigningNonces,
        commitments: SigningCommitments,
        /// The commitments as handed out (hex), for the record of released shares.
        commitments_hex: String,
    },
    /// Used for exactly this request's package; the nonces are gone.
    Used { request_id: String, package_sha256: [u8; 32], share: SignatureShare },
}

/// Every slot on this signer, by number (numbers only grow, so the smallest is the oldest).
#[derive(Default)]
struct Slots {
    next: u64,
    by_number: BTreeMap<u64, Slot>,
    /// Shares released per pending request.
    shares: BTreeMap<String, u32>,
}

impl Slots {
    /// Drops the oldest fresh slots (of `owner`, or of anyone) until `room` more fit.
    fn make_room(&mut self, owner: NodeId, room: usize) -> Result<(), String> {
        let fresh_of = |slots: &BTreeMap<u64, Slot>| {
            slots.values().filter(|s| matches!(s, Slot::Fresh { owner: o, .. } if *o == owner)).count()
        };
        let mut evict = (fresh_of(&self.by_number) + room).saturating_sub(FRESH_PER_COORDINATOR_MAX);
        let mut evict_any = (self.by_number.len() + room).saturating_sub(SLOTS_MAX);
        let numbers: Vec<u64> = self.by_number.keys().copied().collect();
        for number in numbers {
            if evict == 0 && evict_any == 0 {
                break;
            }
            let Some(Slot::Fresh { owner: o, .. }) = self.by_number.get(&number) else { continue };
            let mine = *o == owner;
            if mine || evict_any > 0 {
                self.by_number.remove(&number);
                evict_any = evict_any.saturating_sub(1);
                if mine {
                    evict = evict.saturating_sub(1);
                }
            }
        }
        if self.by_number.len() + room > SLOTS_MAX {
            return Err(format!("{SLOTS_MAX} nonce slots are in use on this signer; retry once requests finish"));
        }
        Ok(())
    }
}

/// This node's signer.
pub struct Signer {
    node_id: NodeId,
    /// The node's store, to check audit checkpoints against this node's own chain.
    store: Arc<dyn crate::store::Store>,
    incarnation: String,
    state: SharedState,
    sealed: Arc<SealedStore>,
    rng: SharedRng,
    /// Unsealed shares by key id, with their generation.
    key_packages: Mutex<BTreeMap<String, (u32, Arc<KeyPackage>)>>,
    slots: Mutex<Slots>,
    /// The most recent shares released, oldest first.
    released: Mutex<std::collections::VecDeque<Released>>,
    /// This node's clock and its allowance (`raft.clock_skew_ms_max`): a
    /// signer also refuses a request that has expired by its own clock, so a
    /// leader that holds the log's time back cannot keep an expired request
    /// (and its approvals) signable.
    clock: LocalClock,
}

/// A signer's own clock, with the skew it allows other clocks.
pub struct LocalClock {
    pub clock: Arc<dyn crate::seams::Clock>,
    pub skew_ms_max: u64,
}

impl Signer {
    pub fn new(
        node_id: NodeId,
        incarnation: String,
        state: SharedState,
        sealed: Arc<SealedStore>,
        store: Arc<dyn crate::store::Store>,
        rng: SharedRng,
        clock: LocalClock,
    ) -> Self {
        Signer {
            node_id,
            store,
            incarnation,
            state,
            sealed,
            rng,
            key_packages: Mutex::default(),
            slots: Mutex::default(),
            released: Mutex::default(),
            clock,
        }
    }

    /// The key, if it is active and this node holds a share of it.
    fn check_key<'a>(&self, state: &'a ClusterState, key_id: &str) -> Result<&'a KeyRecord, String> {
        let key = state.keys.get(key_id).ok_or(format!("key {key_id} is not in this node's committed state"))?;
        let ignore_status = key.status.is_out_of_service() && crate::faults::enabled(crate::faults::SKIP_KEY_STATUS);
        if key.status != KeyStatus::Active && !ignore_status {
            return Err(key.not_signing());
        }
        if !key.participants.contains(&self.node_id) {
            return Err(format!("node {} holds no share of key {}", self.node_id, key.name));
        }
        Ok(key)
    }

    /// The pending request and its key, if this node may sign it.
    /// `local` is true when this node's own coordinator asks (it is the leader).
    fn check_request(
        &self,
        state: &ClusterState,
        request_id: &str,
        local: bool,
    ) -> Result<(Vec<u8>, KeyRecord), String> {
        let request = state.requests.get(request_id).ok_or(format!(
            "request {request_id} is not in this node's committed log (yet); retry once it has caught up"
        ))?;
        if request.status != RequestStatus::Pending {
            return Err(format!("request {request_id} is no longer pending"));
        }
        let own_ms = self.clock.clock.now_ms();
        if request.expires_at_ms.saturating_add(self.clock.skew_ms_max) < own_ms {
            tracing::warn!(
                request_id,
                expires_at_ms = request.expires_at_ms,
                own_ms,
                "refusing a request expired by this node's clock"
            );
            return Err(format!(
                "request {request_id} expired at {} ms, {} ms ago by node {}'s clock (more than the {} ms allowed \
                 for clock skew), though the log's time still counts it pending; check the leader's clock",
                request.expires_at_ms,
                own_ms - request.expires_at_ms,
                self.node_id,
                self.clock.skew_ms_max
            ));
        }
        // The policy, with every approval's signature verified again, in this node's own state.
        if !(local && crate::faults::enabled(crate::faults::SKIP_POLICY)) {
            state.ready_to_sign(request, true)?;
            // The policy's expiry by this node's own clock too (less the skew
            // it allows), as for the request's.
            state.still_authorised(request, own_ms.saturating_sub(self.clock.skew_ms_max))?;
        }
        let key = self.check_key(state, &request.key_id)?;
        let message = request.message_bytes().ok_or("the request has no message")?;
        if key.name == synod_proto::authz::AUDIT_KEY_NAME {
            self.check_checkpoint(state, &message)?;
        }
        Ok((message, key.clone()))
    }

    /// The audit key signs only a checkpoint of this node's own audit chain.
    fn check_checkpoint(&self, state: &ClusterState, message: &[u8]) -> Result<(), String> {
        let cluster = state.cluster_id.as_deref().unwrap_or_default();
        let (seq, hash) = synod_proto::authz::parse_checkpoint_message(cluster, message)
            .ok_or("the audit key signs audit checkpoints only")?;
        let records = crate::raft::state_machine::read_audit(&*self.store, seq, 1).map_err(|e| e.to_string())?;
        let mine = records.into_iter().find(|r| r.seq == seq).ok_or(format!("audit record {seq} is not here yet"))?;
        if mine.hash != hex::encode(hash) {
            return Err(format!("audit record {seq} here has another hash; refusing to sign that checkpoint"));
        }
        Ok(())
    }

    /// Waits (at most [`CATCH_UP_WAIT`]) until this node has applied the log up
    /// to `min_index`: the coordinator on the leader may ask a moment before a
    /// follower has learned that a request (or the approval that made it ready)
    /// is committed. The coordinator's index is at or after every request it asks about.
    async fn catch_up(&self, min_index: u64) {
        let deadline = tokio::time::Instant::now() + CATCH_UP_WAIT;
        let mut applied = self.state.subscribe();
        loop {
            if self.state.read().last_applied.is_some_and(|l| l.index >= min_index) {
                return;
            }
            match tokio::time::timeout_at(deadline, applied.changed()).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
    }

    /// A coordinator asks for commitments only for a key its own state holds active, and this
    /// signer's applied state may lag it by the entry that activated the key: waits (at most
    /// [`CATCH_UP_WAIT`]) while the key is unknown here or still generating, so a lag is not
    /// answered as a refusal that fails the request. Any other status is answered at once.
    async fn settle_key(&self, key_id: &str) {
        let deadline = tokio::time::Instant::now() + CATCH_UP_WAIT;
        let mut applied = self.state.subscribe();
        loop {
            let lagging = {
                let applied = self.state.read();
                applied.state.keys.get(key_id).is_none_or(|k| k.status == KeyStatus::Generating)
            };
            if !lagging {
                return;
            }
            match tokio::time::timeout_at(deadline, applied.changed()).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
    }

    /// Preprocessing: `count` fresh nonce pairs for `key_id`, each in its own
    /// slot bound to the key and to `owner` (the coordinator that asked), and
    /// their commitments.
    pub async fn preprocess(&self, key_id: &str, count: u32, owner: NodeId) -> Result<NonceBatch, String> {
        if count == 0 || count > PREPROCESS_COUNT_MAX {
            return Err(format!("ask for 1 to {PREPROCESS_COUNT_MAX} nonce commitments, not {count}"));
        }
        self.settle_key(key_id).await;
        let key = {
            let applied = self.state.read();
            self.check_key(&applied.state, key_id)?.clone()
        };
        let key_package = self.key_package(&key, applied_cluster_id(&self.state)).await?;
        // A batch is milliseconds of curve arithmetic: off the async workers.
        let rng = self.rng.clone();
        let mut pairs: Vec<(SigningNonces, SigningCommitments)> = crate::seams::run_blocking(move || {
            let mut guard = rng.lock().expect("rng lock");
            let mut rng: &mut dyn crate::seams::SecureRng = &mut *guard;
            (0..count).map(|_| frost::round1::commit(key_package.signing_share(), &mut rng)).collect()
        })
        .await
        .map_err(|e| format!("preprocessing failed: {e}"))?;
        reuse_nonces(&mut pairs);
        let mut slots = self.slots.lock().expect("slots lock");
        slots.make_room(owner, pairs.len())?;
        let first_slot = slots.next;
        let mut commitments = Vec::with_capacity(pairs.len());
        for (nonces, commitment) in pairs {
            let commitments_hex = hex::encode(commitment.serialize().expect("commitments serialise"));
            commitments.push(commitments_hex.clone());
            let number = slots.next;
            slots.next += 1;
            let fresh = Slot::Fresh { key_id: key.id.clone(), owner, nonces, commitments: commitment, commitments_hex };
            slots.by_number.insert(number, fresh);
        }
        Ok(NonceBatch { incarnation: self.incarnation.clone(), first_slot, commitments })
    }

    /// Signature shares for a batch of asks from coordinator `owner`, in order.
    /// `local` is true when this node's own coordinator asks (it is the leader).
    pub async fn share_batch(&self, asks: &[ShareAsk], owner: NodeId, local: bool) -> Vec<Result<String, String>> {
        self.catch_up(asks.iter().map(|a| a.min_index).max().unwrap_or(0)).await;
        let mut answers = Vec::with_capacity(asks.len());
        for ask in asks {
            answers.push(self.share(ask, owner, local).await);
        }
        answers
    }

    /// This node's signature share for one request's signing package, judged
    /// on the state this node has applied (see [`Signer::share_batch`]).
    async fn share(&self, ask: &ShareAsk, owner: NodeId, local: bool) -> Result<String, String> {
        let ShareAsk { request_id, slot, incarnation, signing_package, .. } = ask;
        let (request_id, slot) = (request_id.as_str(), *slot);
        if *incarnation != self.incarnation {
            return Err(format!(
                "node {} restarted since it handed out slot {slot}; its nonces are gone, preprocess again",
                self.node_id
            ));
        }
        let package_bytes = hex::decode(signing_package).map_err(|_| "signing package is not hex".to_string())?;
        let package_sha256: [u8; 32] = Sha256::digest(&package_bytes).into();
        let package =
            SigningPackage::deserialize(&package_bytes).map_err(|e| format!("signing package does not parse: {e}"))?;
        let (message, key, checked_at_index) = {
            let applied = self.state.read();
            let (message, key) = self.check_request(&applied.state, request_id, local)?;
            (message, key, applied.last_applied.map_or(0, |l| l.index))
        };
        if ask.generation != key.generation {
            return Err(format!(
                "node {} signs with generation {} of key {}'s shares, not generation {} (a refresh completed in                  between); the coordinator retries on the current generation",
                self.node_id, key.generation, key.name, ask.generation
            ));
        }
        let key_package = self.key_package(&key, applied_cluster_id(&self.state)).await?;
        if package.message() != message.as_slice() {
            tracing::warn!(request_id, slot, "signing package carries another message than the committed request");
            return Err(format!("the signing package's message is not request {request_id}'s committed message"));
        }
        let mine = frost_identifier(self.node_id).ok_or("this node id has no FROST identifier")?;
        let participants: Vec<frost::Identifier> =
            key.participants.iter().filter_map(|p| frost_identifier(*p)).collect();
        let signers = package.signing_commitments();
        if signers.len() < usize::from(key.threshold) || signers.keys().any(|id| !participants.contains(id)) {
            return Err(format!("the signing package does not name {} participants of the key", key.threshold));
        }

        let mut slots = self.slots.lock().expect("slots lock");
        let (nonces, commitment_hex) = match slots.by_number.remove(&slot) {
            None => {
                return Err(format!(
                    "node {} has no nonces in slot {slot} (never handed out, dropped, or restarted); preprocess again",
                    self.node_id
                ))
            }
            Some(Slot::Used { request_id: used_by, package_sha256: used_for, share }) => {
                let result = if used_by == request_id && used_for == package_sha256 {
                    // A byte-identical retry: the same share, no new use of the nonce.
                    Ok(hex::encode(share.serialize()))
                } else {
                    tracing::warn!(request_id, slot, "refused a second signing package for a used nonce");
                    Err(format!("slot {slot}'s nonce already signed another package; use a fresh slot"))
                };
                slots.by_number.insert(slot, Slot::Used { request_id: used_by, package_sha256: used_for, share });
                return result;
            }
            Some(Slot::Fresh { key_id, owner: holder, nonces, commitments, commitments_hex }) => {
                let refusal = if key_id != key.id || holder != owner {
                    Some(format!("slot {slot} was handed out for another key or coordinator"))
                } else if signers.get(&mine) != Some(&commitments) {
                    Some(format!("the signing package does not carry this node's commitments of slot {slot}"))
                } else if slots.shares.get(request_id).copied().unwrap_or(0) >= SHARES_PER_REQUEST_MAX {
                    Some(format!("request {request_id} already took {SHARES_PER_REQUEST_MAX} shares here"))
                } else {
                    None
                };
                if let Some(refusal) = refusal {
                    // Not consumed: the ask is wrong, the nonce was not used.
                    let fresh = Slot::Fresh { key_id, owner: holder, nonces, commitments, commitments_hex };
                    slots.by_number.insert(slot, fresh);
                    return Err(refusal);
                }
                (nonces, commitments_hex)
            }
        };
        // The nonces left the map above and are dropped (zeroized) at the end of this scope.
        let share = frost::round2::sign(&package, &nonces, &key_package).map_err(|e| format!("signing failed: {e}"))?;
        let share = crate::faults::corrupt_share(self.node_id, share);
        let share_hex = hex::encode(share.serialize());
        slots.by_number.insert(slot, Slot::Used { request_id: request_id.to_string(), package_sha256, share });
        *slots.shares.entry(request_id.to_string()).or_default() += 1;
        drop(slots);
        let mut released = self.released.lock().expect("released lock");
        if released.len() == RELEASED_KEPT_MAX {
            released.pop_front();
        }
        released.push_back(Released {
            request_id: request_id.to_string(),
            slot,
            commitment: commitment_hex.clone(),
            package_sha256,
            checked_at_index,
            generation: key.generation,
            share: share_hex.clone(),
            signing_package: cfg!(synod_faults).then(|| Arc::new(package_bytes.clone())),
        });
        drop(released);
        tracing::info!(
            node = self.node_id,
            request_id,
            slot,
            commitment = %commitment_hex,
            package_sha256 = %hex::encode(package_sha256),
            "released signature share"
        );
        Ok(share_hex)
    }

    /// Whether `key_id` is active in this node's applied state: the keys
    /// whose fresh slots [`Signer::forget_finished`] keeps.
    pub fn signs_with(&self, key_id: &str) -> bool {
        self.state.read().state.keys.get(key_id).is_some_and(|k| k.status == KeyStatus::Active)
    }

    /// Drops every fresh slot (their nonces with them); returns how many. Called
    /// when this process may have been suspended and resumed, or cloned: two
    /// running images of one signer would hold the same nonces, and one
    /// coordinator could redeem the same slot at both for two packages.
    pub fn drop_fresh_slots(&self) -> usize {
        let mut slots = self.slots.lock().expect("slots lock");
        let before = slots.by_number.len();
        slots.by_number.retain(|_, slot| matches!(slot, Slot::Used { .. }));
        before - slots.by_number.len()
    }

    /// Drops used slots of requests that are no longer pending, and fresh
    /// slots of keys that are no longer active.
    pub fn forget_finished(&self) {
        let applied = self.state.read();
        let pending = &applied.state.pending_requests;
        let keys = &applied.state.keys;
        let active = |id: &str| keys.get(id).is_some_and(|k| k.status == KeyStatus::Active);
        let mut slots = self.slots.lock().expect("slots lock");
        slots.by_number.retain(|_, slot| match slot {
            Slot::Fresh { key_id, .. } => active(key_id),
            Slot::Used { request_id, .. } => pending.contains(request_id),
        });
        slots.shares.retain(|request_id, _| pending.contains(request_id));
        drop(slots);
        let current = |id: &str, generation: u32| keys.get(id).is_some_and(|k| k.generation == generation);
        let keep_old = crate::faults::enabled_for(self.node_id, crate::faults::KEEP_OLD_GENERATION);
        self.key_packages
            .lock()
            .expect("key packages lock")
            .retain(|id, (generation, _)| active(id) && (keep_old || current(id, *generation)));
    }

    /// The most recent shares this signer released (at most [`RELEASED_KEPT_MAX`]).
    pub fn released(&self) -> Vec<Released> {
        self.released.lock().expect("released lock").iter().cloned().collect()
    }

    /// Open nonce slots, for status and the simulator.
    pub fn open_slots(&self) -> usize {
        self.slots.lock().expect("slots lock").by_number.len()
    }

    /// The key package for `key`, unsealed on first use.
    async fn key_package(&self, key: &KeyRecord, cluster_id: String) -> Result<Arc<KeyPackage>, String> {
        if let Some((generation, found)) = self.key_packages.lock().expect("key packages lock").get(&key.id) {
            // The planted bug keeps signing with whatever generation it unsealed first.
            if *generation == key.generation
                || crate::faults::enabled_for(self.node_id, crate::faults::KEEP_OLD_GENERATION)
            {
                return Ok(found.clone());
            }
        }
        let ctx = key_package_context(cluster_id, self.node_id, key);
        let sealed = self.sealed.clone();
        let what = ctx.clone();
        let plain = crate::seams::run_blocking(move || sealed.get(&what))
            .await
            .map_err(|e| format!("unsealing failed: {e}"))?
            .map_err(|e| format!("cannot unseal this node's share of key {}: {e}", key.name))?
            .ok_or(format!("node {} has no sealed share of key {}", self.node_id, key.name))?;
        let package =
            KeyPackage::deserialize(&plain).map_err(|e| format!("the sealed key package does not parse: {e}"))?;
        let package = Arc::new(package);
        self.key_packages.lock().expect("key packages lock").insert(key.id.clone(), (key.generation, package.clone()));
        Ok(package)
    }
}

/// The [`crate::faults::NONCE_REUSE`] signer: every second slot of a batch
/// gets the nonces of the slot before it, so two slots (and so two signing
/// packages) share one nonce pair. Never in a release build.
fn reuse_nonces(pairs: &mut [(SigningNonces, SigningCommitments)]) {
    if !crate::faults::enabled(crate::faults::NONCE_REUSE) {
        return;
    }
    for i in (1..pairs.len()).step_by(2) {
        pairs[i] = pairs[i - 1].clone();
    }
}

fn applied_cluster_id(state: &SharedState) -> String {
    state.read().state.cluster_id.clone().unwrap_or_default()
}

/// Where a node's share of the current generation of a key is sealed.
pub fn key_package_context(cluster_id: String, node_id: NodeId, key: &KeyRecord) -> SealContext {
    SealContext {
        cluster_id,
        node_id,
        key_id: key.id.clone(),
        key_version: key.version,
        generation: key.generation,
        purpose: Purpose::KeyPackage,
    }
}

#[cfg(test)]
#[path = "signer_tests.rs"]
mod tests;

//! The signer: this node's side of FROST signing.
//!
//! Before it releases a share the signer checks, in its own committed state,
//! that the request exists and is pending, that the key's policy is met (every
//! approval's signature verified again here), that its key is active and this
//! node holds a share, and that the message in the signing package is byte for
//! byte the message it committed. The leader's word counts for nothing.
//!
//! Nonces live only in memory, one slot per (request, session), tagged with
//! this boot's incarnation. A slot's nonces are taken out before the share is
//! computed, so they serve exactly one signing package; a byte-identical retry
//! of that package gets the same share back, anything else is refused. A
//! restart forgets every slot: no backup, snapshot or lost write can bring a
//! used nonce back. Key packages are unsealed on first use and kept in
//! zeroizing memory while the node runs (ARCHITECTURE.md, "Sealed secrets").

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use frost::keys::KeyPackage;
use frost::round1::{SigningCommitments, SigningNonces};
use frost::round2::SignatureShare;
use frost::SigningPackage;
use frost_ed25519 as frost;
use sha2::{Digest, Sha256};
use synod_proto::rpc::SignerCommitments;
use synod_proto::NodeId;

use crate::raft::state_machine::SharedState;
use crate::sealed::{Purpose, SealContext, SealedStore};
use crate::seams::SharedRng;
use crate::state::{frost_identifier, ClusterState, KeyRecord, KeyStatus, RequestStatus};

/// The most sessions one request may open on this signer. A coordinator needs
/// at most n − t + 1 per leader; this leaves room for several leader changes.
pub const SESSIONS_PER_REQUEST_MAX: usize = 32;
/// The most nonce slots held at once, over all requests.
pub const SLOTS_MAX: usize = 8192;
/// How long a signer waits for a request it is asked about to reach its own
/// committed state before it refuses.
pub const CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_millis(1500);
/// How many released shares the signer remembers for inspection (the simulator's checker).
pub const RELEASED_KEPT_MAX: usize = 4096;

/// A share this signer released: public facts only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Released {
    pub request_id: String,
    pub session_id: String,
    /// The nonce commitments (hex) the share was computed with.
    pub commitment: String,
    /// SHA-256 of the signing package it signed.
    pub package_sha256: [u8; 32],
}

/// One session's nonces, before and after use. Unboxed on purpose: slots are
/// bounded by [`SLOTS_MAX`] (about 6 MiB at most) and a box would be one more
/// heap copy of secret nonces to zeroize.
#[allow(clippy::large_enum_variant)]
enum Slot {
    /// Committed, not yet used.
    Fresh { nonces: SigningNonces, commitments: SigningCommitments },
    /// Used for exactly this package; the nonces are gone.
    Used { package_sha256: [u8; 32], share: SignatureShare },
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
    key_packages: Mutex<BTreeMap<String, Arc<KeyPackage>>>,
    /// Nonce slots by (request id, session id).
    slots: Mutex<BTreeMap<(String, String), Slot>>,
    /// The most recent shares released, oldest first.
    released: Mutex<std::collections::VecDeque<Released>>,
}

impl Signer {
    pub fn new(
        node_id: NodeId,
        incarnation: String,
        state: SharedState,
        sealed: Arc<SealedStore>,
        store: Arc<dyn crate::store::Store>,
        rng: SharedRng,
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
        }
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
        // The policy, with every approval's signature verified again, in this node's own state.
        if !(local && crate::faults::enabled(crate::faults::SKIP_POLICY)) {
            state.ready_to_sign(request, true)?;
        }
        let key = state.keys.get(&request.key_id).ok_or("the request's key is unknown here")?;
        if key.status != KeyStatus::Active {
            return Err(format!("key {} is not active", key.name));
        }
        if !key.participants.contains(&self.node_id) {
            return Err(format!("node {} holds no share of key {}", self.node_id, key.name));
        }
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
    /// to `min_index` and holds `request_id`: the coordinator on the leader may
    /// ask a moment before a follower has learned that the request (or the
    /// approval that made it ready) is committed.
    async fn catch_up(&self, request_id: &str, min_index: u64) {
        let deadline = tokio::time::Instant::now() + CATCH_UP_WAIT;
        let mut applied = self.state.subscribe();
        loop {
            {
                let now = self.state.read();
                let caught_up = now.last_applied.is_some_and(|l| l.index >= min_index);
                if caught_up && now.state.requests.contains_key(request_id) {
                    return;
                }
            }
            match tokio::time::timeout_at(deadline, applied.changed()).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
    }

    /// Round 1: fresh commitments for a session of a committed, pending request.
    pub async fn commit(
        &self,
        request_id: &str,
        session_id: &str,
        min_index: u64,
        local: bool,
    ) -> Result<SignerCommitments, String> {
        self.catch_up(request_id, min_index).await;
        let key = {
            let applied = self.state.read();
            self.check_request(&applied.state, request_id, local)?.1
        };
        let key_package = self.key_package(&key, applied_cluster_id(&self.state)).await?;
        let mut slots = self.slots.lock().expect("slots lock");
        let slot_key = (request_id.to_string(), session_id.to_string());
        if let Some(slot) = slots.get(&slot_key) {
            return match slot {
                // A retried round 1 for the same session: the same, still unused commitments.
                Slot::Fresh { commitments, .. } => Ok(self.answer(commitments)),
                Slot::Used { .. } => Err(format!("session {session_id} already produced a share; start a new one")),
            };
        }
        let per_request =
            slots.range((request_id.to_string(), String::new())..).take_while(|(k, _)| k.0 == request_id).count();
        if per_request >= SESSIONS_PER_REQUEST_MAX {
            return Err(format!("request {request_id} already opened {SESSIONS_PER_REQUEST_MAX} sessions here"));
        }
        if slots.len() >= SLOTS_MAX {
            return Err(format!("{SLOTS_MAX} signing sessions are open on node {}; retry later", self.node_id));
        }
        if let Some(planted) = reuse_request_nonces(&slots, request_id) {
            let answer = self.answer(&planted.1);
            slots.insert(slot_key, Slot::Fresh { nonces: planted.0, commitments: planted.1 });
            return Ok(answer);
        }
        let (nonces, commitments) = {
            let mut guard = self.rng.lock().expect("rng lock");
            let mut rng: &mut dyn crate::seams::SecureRng = &mut *guard;
            frost::round1::commit(key_package.signing_share(), &mut rng)
        };
        let answer = self.answer(&commitments);
        slots.insert(slot_key, Slot::Fresh { nonces, commitments });
        Ok(answer)
    }

    fn answer(&self, commitments: &SigningCommitments) -> SignerCommitments {
        SignerCommitments {
            commitments: hex::encode(commitments.serialize().expect("commitments serialise")),
            incarnation: self.incarnation.clone(),
        }
    }

    /// Round 2: this node's signature share for a signing package.
    pub async fn share(
        &self,
        request_id: &str,
        session_id: &str,
        incarnation: &str,
        package_hex: &str,
        local: bool,
    ) -> Result<String, String> {
        if incarnation != self.incarnation {
            return Err(format!(
                "node {} restarted since it committed for session {session_id}; its nonces are gone, start a new session",
                self.node_id
            ));
        }
        let package_bytes = hex::decode(package_hex).map_err(|_| "signing package is not hex".to_string())?;
        let package_sha256: [u8; 32] = Sha256::digest(&package_bytes).into();
        let package =
            SigningPackage::deserialize(&package_bytes).map_err(|e| format!("signing package does not parse: {e}"))?;
        let (message, key) = {
            let applied = self.state.read();
            self.check_request(&applied.state, request_id, local)?
        };
        let key_package = self.key_package(&key, applied_cluster_id(&self.state)).await?;
        if package.message() != message.as_slice() {
            tracing::warn!(
                request_id,
                session_id,
                "signing package carries another message than the committed request"
            );
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
        let slot_key = (request_id.to_string(), session_id.to_string());
        let nonces = match slots.remove(&slot_key) {
            None => {
                return Err(format!(
                "node {} has no nonces for session {session_id} (never committed, or restarted); start a new session",
                self.node_id
            ))
            }
            Some(Slot::Used { package_sha256: used_for, share }) => {
                let result = if used_for == package_sha256 {
                    // A byte-identical retry: the same share, no new use of the nonce.
                    Ok(hex::encode(share.serialize()))
                } else {
                    tracing::warn!(request_id, session_id, "refused a second signing package for a used nonce");
                    Err(format!("session {session_id}'s nonce already signed another package; start a new session"))
                };
                slots.insert(slot_key, Slot::Used { package_sha256: used_for, share });
                return result;
            }
            Some(Slot::Fresh { nonces, commitments }) => {
                if signers.get(&mine) != Some(&commitments) {
                    // Not consumed: the package is wrong, the nonce was not used.
                    slots.insert(slot_key, Slot::Fresh { nonces, commitments });
                    return Err("the signing package does not carry this node's commitments for the session".into());
                }
                nonces
            }
        };
        // The nonces left the map above and are dropped (zeroized) at the end of this scope.
        let share = frost::round2::sign(&package, &nonces, &key_package).map_err(|e| format!("signing failed: {e}"))?;
        let share = crate::faults::corrupt_share(self.node_id, share);
        let commitment_hex = hex::encode(nonces.commitments().serialize().unwrap_or_default());
        slots.insert(slot_key, Slot::Used { package_sha256, share });
        drop(slots);
        let mut released = self.released.lock().expect("released lock");
        if released.len() == RELEASED_KEPT_MAX {
            released.pop_front();
        }
        released.push_back(Released {
            request_id: request_id.to_string(),
            session_id: session_id.to_string(),
            commitment: commitment_hex.clone(),
            package_sha256,
        });
        drop(released);
        tracing::info!(
            node = self.node_id,
            request_id,
            session_id,
            commitment = %commitment_hex,
            package_sha256 = %hex::encode(package_sha256),
            "released signature share"
        );
        Ok(hex::encode(share.serialize()))
    }

    /// Drops the nonce slots of requests that are no longer pending.
    pub fn forget_finished(&self) {
        let applied = self.state.read();
        let pending = &applied.state.pending_requests;
        self.slots.lock().expect("slots lock").retain(|(request_id, _), _| pending.contains(request_id));
        let keys = &applied.state.keys;
        self.key_packages
            .lock()
            .expect("key packages lock")
            .retain(|id, _| keys.get(id).is_some_and(|k| k.status == KeyStatus::Active));
    }

    /// The most recent shares this signer released (at most [`RELEASED_KEPT_MAX`]).
    pub fn released(&self) -> Vec<Released> {
        self.released.lock().expect("released lock").iter().cloned().collect()
    }

    /// Open nonce slots, for status and the simulator.
    pub fn open_slots(&self) -> usize {
        self.slots.lock().expect("slots lock").len()
    }

    /// The key package for `key`, unsealed on first use.
    async fn key_package(&self, key: &KeyRecord, cluster_id: String) -> Result<Arc<KeyPackage>, String> {
        if let Some(found) = self.key_packages.lock().expect("key packages lock").get(&key.id) {
            return Ok(found.clone());
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
        self.key_packages.lock().expect("key packages lock").insert(key.id.clone(), package.clone());
        Ok(package)
    }
}

/// The [`crate::faults::NONCE_REUSE`] signer: a new session of a request gets
/// the nonces of another still-unused session of that request (a signer that
/// keys nonces by request instead of by session). Never in a release build.
fn reuse_request_nonces(
    slots: &BTreeMap<(String, String), Slot>,
    request_id: &str,
) -> Option<(SigningNonces, SigningCommitments)> {
    if !crate::faults::enabled(crate::faults::NONCE_REUSE) {
        return None;
    }
    slots.range((request_id.to_string(), String::new())..).take_while(|(k, _)| k.0 == request_id).find_map(
        |(_, slot)| match slot {
            Slot::Fresh { nonces, commitments } => Some((nonces.clone(), *commitments)),
            Slot::Used { .. } => None,
        },
    )
}

fn applied_cluster_id(state: &SharedState) -> String {
    state.read().state.cluster_id.clone().unwrap_or_default()
}

/// Where a node's share of a key is sealed.
pub fn key_package_context(cluster_id: String, node_id: NodeId, key: &KeyRecord) -> SealContext {
    SealContext {
        cluster_id,
        node_id,
        key_id: key.id.clone(),
        key_version: key.version,
        generation: 0,
        purpose: Purpose::KeyPackage,
    }
}

//! The signing invariants, checked without scoping even under an equivocating
//! leader: a nonce serves one signing package ([`NonceSingleUse`]); one
//! request id has one message and one signature, the one clients were
//! answered ([`OneMessagePerRequest`]); every stored signature verifies under
//! its key's group key over the message the client sent ([`SignaturesVerify`]);
//! no signer releases a share unless its own committed state holds the
//! request, sent by a requester, with its policy met, and no coordinator takes
//! a request up before that ([`PolicyBeforeShares`]). They hold because the
//! signer, not the leader, decides: it takes a slot's nonces out before it
//! computes a share, and a restart forgets every slot, so no nonce signs twice;
//! it checks the request, the policy (approvals verified again) and the
//! message byte for byte in its own committed state. The state keeps the first
//! message committed under a request id, and stores a signature only after
//! every node has verified it against its own copy of the message; the first
//! valid one wins. The planted `nonce-reuse` and `skip-policy` bugs break the
//! first and the last of these, and the simulator's tests show they are caught.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};

use synod_node::state::{ClusterState, RequestStatus};
use synod_proto::authz::{Role, AUDIT_KEY_NAME};
use synod_proto::NodeId;

use super::{Checker, Release, Step, Violation};
use crate::workload::History;

/// A nonce serves one signing package: over the whole run, a (node, nonce
/// commitment) pair is never seen with two different signing-package hashes,
/// from every share any signer released (collected by the [`Observer`](super::Observer)).
#[derive(Default)]
pub struct NonceSingleUse {
    /// (node, commitment hex) -> (package hash, request id, session id) of its first use.
    used: BTreeMap<(NodeId, String), ([u8; 32], String, u64)>,
}

impl Checker for NonceSingleUse {
    fn name(&self) -> &'static str {
        "nonce-single-use"
    }

    fn check_step(&mut self, step: &Step) -> Result<(), Violation> {
        for Release { node, released: r, .. } in step.releases {
            match self.used.entry((*node, r.commitment.clone())) {
                Entry::Vacant(slot) => {
                    slot.insert((r.package_sha256, r.request_id.clone(), r.slot));
                }
                Entry::Occupied(first) => {
                    let (package, request, slot) = first.get();
                    if *package != r.package_sha256 {
                        return Err(Violation::new(
                            "nonce-single-use",
                            format!(
                                "n{node} released two shares with one nonce (commitment {}): request {request} \
                                 slot {slot} (package {}) and request {} slot {} (package {})",
                                &r.commitment[r.commitment.len().saturating_sub(16)..],
                                &hex::encode(package)[..12],
                                r.request_id,
                                r.slot,
                                &hex::encode(r.package_sha256)[..12]
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn check_final(&mut self, step: &Step) -> Result<(), Violation> {
        self.check_step(step)
    }
}

/// One request id, one message, one signature: on every node, at every time, a
/// request's message hash is the hash of the first message a client sent under
/// its id; once any node stores a signature for it, no node ever stores
/// another; a signature a client saw acknowledged is the one stored; and no
/// client ever saw a second message accepted (the workload's anomalies).
#[derive(Default)]
pub struct OneMessagePerRequest {
    /// The first signature any node stored per request id, and on which node.
    stored: BTreeMap<String, (String, NodeId)>,
    /// Message hashes of requests no client sent, as first seen.
    unsent: BTreeMap<String, String>,
    /// Client acknowledgements (by position) not yet matched with a stored signature.
    unmatched: BTreeSet<usize>,
    ack_cursor: usize,
}

impl OneMessagePerRequest {
    fn check_node(&mut self, id: NodeId, state: &ClusterState, history: &History) -> Result<(), Violation> {
        for (request_id, r) in &state.requests {
            // Requests no client sent (a node's own, e.g. audit checkpoints) are held
            // to the first message hash any node showed for them.
            let first = match history.sent.get(request_id) {
                Some(sent) => &sent.message_sha256,
                None => self.unsent.entry(request_id.clone()).or_insert_with(|| r.message_sha256.clone()),
            };
            if r.message_sha256 != *first {
                return Err(Violation::new(
                    "one-message-per-request",
                    format!(
                        "n{id} holds request {request_id} with message {}, but the first message sent under that \
                         id was {}",
                        &r.message_sha256[..12.min(r.message_sha256.len())],
                        &first[..12.min(first.len())]
                    ),
                ));
            }
            if let RequestStatus::Signed { signature } = &r.status {
                let (first, node) = self.stored.entry(request_id.clone()).or_insert_with(|| (signature.clone(), id));
                if first != signature {
                    return Err(Violation::new(
                        "one-message-per-request",
                        format!(
                            "request {request_id}: n{id} stores signature {} but n{node} stored {} first",
                            &signature[..16.min(signature.len())],
                            &first[..16.min(first.len())]
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Checker for OneMessagePerRequest {
    fn name(&self) -> &'static str {
        "one-message-per-request"
    }

    fn check_step(&mut self, step: &Step) -> Result<(), Violation> {
        if let Some(anomaly) = step.history.sign_anomalies.first() {
            return Err(Violation::new("one-message-per-request", format!("a client saw: {anomaly}")));
        }
        for v in step.nodes.iter().filter(|v| v.moved) {
            self.check_node(v.id, &v.node.state().read().state, step.history)?;
        }
        let acks = &step.history.sign_acks;
        self.unmatched.extend(self.ack_cursor..acks.len());
        self.ack_cursor = acks.len();
        let mut matched = Vec::new();
        for &i in &self.unmatched {
            let ack = &acks[i];
            let Some((stored, node)) = self.stored.get(&ack.request_id) else { continue };
            if *stored != ack.signature {
                return Err(Violation::new(
                    "one-message-per-request",
                    format!(
                        "request {}: a client was answered signature {}{} (t={} ms) but n{node} stores {}",
                        ack.request_id,
                        &ack.signature[..16.min(ack.signature.len())],
                        if ack.retry { " on a re-send" } else { "" },
                        ack.at_ms,
                        &stored[..16.min(stored.len())]
                    ),
                ));
            }
            matched.push(i);
        }
        for i in matched {
            self.unmatched.remove(&i);
        }
        Ok(())
    }

    fn check_final(&mut self, step: &Step) -> Result<(), Violation> {
        for v in step.nodes {
            let applied = v.node.state().read();
            self.check_node(v.id, &applied.state, step.history)?;
            for ack in &step.history.sign_acks {
                let status = applied.state.requests.get(&ack.request_id).map(|r| &r.status);
                if !matches!(status, Some(RequestStatus::Signed { signature }) if *signature == ack.signature) {
                    return Err(Violation::new(
                        "one-message-per-request",
                        format!(
                            "request {} was acknowledged signed ({}) but after the heal n{} holds {status:?}",
                            ack.request_id,
                            &ack.signature[..16.min(ack.signature.len())],
                            v.id
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Every signature any node stores verifies (`verify_strict`) under its key's
/// group key over the message the client sent under that request id; and every
/// node holds the same group key for a key id. (A request no client sent, such
/// as a node's audit checkpoint, is verified over the message a node held while
/// it was pending, when one was seen.)
#[derive(Default)]
pub struct SignaturesVerify {
    /// Signatures verified already: request id -> signature (hex).
    verified: BTreeMap<String, String>,
    /// Messages of pending requests no client sent, as first seen.
    unsent: BTreeMap<String, Vec<u8>>,
    /// Each key's group key (hex) as first seen, and on which node.
    group_keys: BTreeMap<String, (String, NodeId)>,
}

impl SignaturesVerify {
    fn check_node(&mut self, id: NodeId, state: &ClusterState, history: &History) -> Result<(), Violation> {
        for (key_id, key) in &state.keys {
            let Some(group) = &key.group_key else { continue };
            let (first, node) = self.group_keys.entry(key_id.clone()).or_insert_with(|| (group.clone(), id));
            if first != group {
                return Err(Violation::new(
                    "signature-verifies",
                    format!("key {}: n{id} holds group key {group} but n{node} holds {first}", key.name),
                ));
            }
        }
        for (request_id, r) in &state.requests {
            let signature = match &r.status {
                RequestStatus::Signed { signature } => signature,
                RequestStatus::Pending if !history.sent.contains_key(request_id) => {
                    if let (false, Some(message)) = (self.unsent.contains_key(request_id), r.message_bytes()) {
                        self.unsent.insert(request_id.clone(), message);
                    }
                    continue;
                }
                _ => continue,
            };
            if self.verified.get(request_id) == Some(signature) {
                continue;
            }
            let fail =
                |why: String| Violation::new("signature-verifies", format!("n{id}, request {request_id}: {why}"));
            let message = match history.sent.get(request_id) {
                Some(sent) => &sent.message,
                None => match self.unsent.get(request_id) {
                    Some(message) => message,
                    None => continue, // Signed before any step showed it pending: nothing to verify against.
                },
            };
            let key = state.keys.get(&r.key_id).ok_or_else(|| fail(format!("key {} is unknown", r.key_id)))?;
            let group = key
                .group_key_bytes()
                .and_then(|g| ed25519_dalek::VerifyingKey::from_bytes(&g).ok())
                .ok_or_else(|| fail(format!("key {} has no valid group key", key.name)))?;
            let bytes: [u8; 64] = hex::decode(signature)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| fail(format!("stored signature {signature} is not 64 bytes of hex")))?;
            group.verify_strict(message, &ed25519_dalek::Signature::from_bytes(&bytes)).map_err(|_| {
                fail(format!(
                    "stored signature {} does not verify under key {} over the message sent under that id ({})",
                    &signature[..16],
                    key.name,
                    &r.message_sha256[..12.min(r.message_sha256.len())]
                ))
            })?;
            self.verified.insert(request_id.clone(), signature.clone());
        }
        Ok(())
    }
}

impl Checker for SignaturesVerify {
    fn name(&self) -> &'static str {
        "signature-verifies"
    }

    fn check_step(&mut self, step: &Step) -> Result<(), Violation> {
        for v in step.nodes.iter().filter(|v| v.moved) {
            self.check_node(v.id, &v.node.state().read().state, step.history)?;
        }
        Ok(())
    }

    fn check_final(&mut self, step: &Step) -> Result<(), Violation> {
        for v in step.nodes {
            self.check_node(v.id, &v.node.state().read().state, step.history)?;
        }
        Ok(())
    }
}

/// No share without a committed, operator-signed request whose policy is met,
/// in the releasing signer's own state: for every share a signer released, its
/// request exists in that node's state, was sent by a client (or is the node's
/// own audit checkpoint) whose key holds the requester role there, and its
/// key's policy is met with every approval's signature verified again. And no
/// coordinator takes a request up before its policy is met (`policy-bypassed`):
/// a request the approvers leave unapproved stays pending on every node.
///
/// The signer's state is read when its shares are collected (every
/// [`HARVEST_EVERY_MS`](super::HARVEST_EVERY_MS), and right before a crash), not at the release itself:
/// approvals are never withdrawn in the simulation, so a request whose policy
/// was met at the release is still met then. (A request failed and sent again
/// is a new record without approvals; the client waits at least 200 ms before
/// sending it again, far longer than the collection interval.)
#[derive(Default)]
pub struct PolicyBeforeShares {
    /// Shares judged already, by (node, request id, slot).
    judged: BTreeSet<(NodeId, String, u64)>,
}

impl PolicyBeforeShares {
    fn judge(release: &Release, history: &History) -> Result<(), String> {
        let r = &release.released;
        let applied = release.handle.state().read();
        let state = &applied.state;
        let request =
            state.requests.get(&r.request_id).ok_or_else(|| format!("request {} is not in its state", r.request_id))?;
        let key = state.keys.get(&request.key_id).ok_or_else(|| format!("key {} is unknown", request.key_id))?;
        let checkpoint = key.name == AUDIT_KEY_NAME;
        // minisign's global signature request is the state's own, made for a request a client sent.
        let sent_by_client = |id: &str| history.sent.contains_key(id);
        let global_of = request.format.as_ref().and_then(|f| f.global_of.as_deref());
        if !checkpoint && !sent_by_client(&r.request_id) && !global_of.is_some_and(sent_by_client) {
            return Err(format!("no client sent request {}", r.request_id));
        }
        if !checkpoint && !state.has_role(&request.requester, Role::Requester) {
            return Err(format!("request {}'s author {} is not a requester", r.request_id, request.requester));
        }
        if history.withheld.contains(&r.request_id) {
            return Err(format!("request {} was never approved", r.request_id));
        }
        let progress = state.policy_progress(request, true)?;
        if !progress.met {
            return Err(format!(
                "request {}'s policy is not met in its state: {}",
                r.request_id,
                progress.summary.join("; ")
            ));
        }
        Ok(())
    }

    /// No coordinator took up a request before its policy was met: in the
    /// simulation nothing but a coordinator's outcome ends a request (runs are
    /// far shorter than any expiry, and policies change only before the first
    /// request), so a request that is signed or failed must have its policy met.
    fn check_coordinated(id: NodeId, state: &ClusterState, history: &History) -> Result<(), Violation> {
        for (request_id, r) in &state.requests {
            if r.status == RequestStatus::Pending {
                continue;
            }
            let met = state.policy_progress(r, false).map(|p| p.met).unwrap_or(false);
            if !met || history.withheld.contains(request_id) {
                let summary = state.policy_progress(r, false).map(|p| p.summary.join("; ")).unwrap_or_else(|e| e);
                return Err(Violation::new(
                    "policy-bypassed",
                    format!(
                        "request {request_id} was taken up before its policy was met ({summary}{}): n{id} holds it {:?}",
                        if history.withheld.contains(request_id) { "; the approvers never approved it" } else { "" },
                        r.status
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl Checker for PolicyBeforeShares {
    fn name(&self) -> &'static str {
        "share-without-policy"
    }

    fn check_step(&mut self, step: &Step) -> Result<(), Violation> {
        for release in step.releases {
            let r = &release.released;
            if !self.judged.insert((release.node, r.request_id.clone(), r.slot)) {
                continue;
            }
            Self::judge(release, step.history).map_err(|why| {
                Violation::new(
                    "share-without-policy",
                    format!("n{} released a share for request {} (slot {}): {why}", release.node, r.request_id, r.slot),
                )
            })?;
        }
        for v in step.nodes.iter().filter(|v| v.moved) {
            Self::check_coordinated(v.id, &v.node.state().read().state, step.history)?;
        }
        Ok(())
    }

    fn check_final(&mut self, step: &Step) -> Result<(), Violation> {
        self.check_step(step)?;
        for v in step.nodes {
            Self::check_coordinated(v.id, &v.node.state().read().state, step.history)?;
        }
        Ok(())
    }
}

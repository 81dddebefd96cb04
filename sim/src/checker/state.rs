//! The replicated state: nodes at one applied index hold the same state, and
//! all nodes hold the same state after the heal ([`StateAgreement`]); no
//! acknowledged write is lost ([`AckedWritesKept`]); forged, tampered or
//! replayed commands never change the state ([`ForgeriesRefused`]); no node
//! applies a command its operator did not sign ([`AlteredCommandsRefused`]).
//! They hold because the state is a deterministic function of the committed
//! log; a write is acknowledged only once its entry is committed (the planted
//! `ack-before-commit` breaks exactly that); and every node verifies every
//! command at apply time (its operator's signature and authority, and that
//! its command id was not applied before), so a forged or altered command is
//! refused, and audited, wherever it lands. Nodes that applied different
//! versions of a `put` an equivocating leader altered differ in key-value data
//! and audit chains for good: from the first altered index on, agreement
//! compares only [`SigningView`], and an acknowledged write whose entry was
//! altered is not required after the heal.

use std::collections::{BTreeMap, BTreeSet};

use synod_node::state::ClusterState;
use synod_proto::{NodeId, OperatorKey, Outcome};

use super::{hash_value, state_hash, Checker, Step, Violation};
use crate::net::EQUIVOCATED_VALUE;
use crate::workload::{FORGED_NODE, FORGED_PREFIX, FORGED_REASON};

/// The parts of a state that an equivocating leader's altered `put`s cannot
/// change: authority, membership, keys and signing requests.
#[derive(serde::Serialize)]
struct SigningView<'a> {
    cluster_id: &'a Option<String>,
    admins: &'a BTreeSet<OperatorKey>,
    operators: &'a BTreeMap<String, synod_node::state::Operator>,
    members: &'a BTreeMap<NodeId, synod_proto::NodeAddr>,
    keys: &'a BTreeMap<String, synod_node::state::KeyRecord>,
    requests: &'a BTreeMap<String, synod_node::state::RequestRecord>,
    pending_requests: &'a BTreeSet<String>,
}

/// The hash of [`SigningView`]: what nodes must agree on after an equivocation.
pub fn signing_hash(state: &ClusterState) -> String {
    hash_value(&SigningView {
        cluster_id: &state.cluster_id,
        admins: &state.admins,
        operators: &state.operators,
        members: &state.members,
        keys: &state.keys,
        requests: &state.requests,
        pending_requests: &state.pending_requests,
    })
}

/// State-machine agreement: nodes at the same applied index hold the same
/// state. From the first entry an equivocating leader altered on, nodes that
/// applied different versions of it hold different key-value data and audit
/// chains for good; there they must still agree on [`SigningView`].
#[derive(Default)]
pub struct StateAgreement {
    hashes: BTreeMap<u64, (String, NodeId)>,
    signing: BTreeMap<u64, (String, NodeId)>,
}

impl Checker for StateAgreement {
    fn name(&self) -> &'static str {
        "state-agreement"
    }

    fn check_step(&mut self, step: &Step) -> Result<(), Violation> {
        let split = step.equivocations.keys().next().copied();
        for v in step.nodes {
            let (Some(hash), Some(index)) = (&v.state_hash, v.applied) else { continue };
            let (hashes, hash) = if split.is_some_and(|at| index >= at) {
                (&mut self.signing, signing_hash(&v.node.state().read().state))
            } else {
                (&mut self.hashes, hash.clone())
            };
            let hash = &hash;
            let (first, node) = hashes.entry(index).or_insert_with(|| (hash.clone(), v.id));
            if first != hash {
                return Err(Violation::new(
                    "state-machine-agreement",
                    format!(
                        "at applied index {index}, n{}'s state is {} but n{node}'s was {}",
                        v.id,
                        &hash[..12],
                        &first[..12]
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check_final(&mut self, step: &Step) -> Result<(), Violation> {
        let hash = if step.equivocations.is_empty() { state_hash } else { signing_hash };
        let hashes: BTreeSet<(Option<u64>, String)> =
            step.nodes.iter().map(|v| (v.applied, hash(&v.node.state().read().state))).collect();
        if hashes.len() > 1 {
            return Err(Violation::new(
                "state-machine-convergence",
                format!("after the heal the nodes differ: {hashes:?}"),
            ));
        }
        Ok(())
    }
}

/// No acknowledged write is lost: the entry at the index a write was
/// acknowledged with is that write's command, wherever it is applied; after the
/// heal every live node holds every acknowledged write.
#[derive(Default)]
pub struct AckedWritesKept {
    /// Acks (by position in the history) whose index has not been seen applied yet.
    unverified: BTreeSet<usize>,
    /// How many acks have been looked at.
    cursor: usize,
}

impl Checker for AckedWritesKept {
    fn name(&self) -> &'static str {
        "acked-writes-kept"
    }

    fn check_step(&mut self, step: &Step) -> Result<(), Violation> {
        let acks = &step.history.acks;
        for (i, ack) in acks.iter().enumerate().skip(self.cursor) {
            if ack.index.is_some() {
                self.unverified.insert(i);
            }
        }
        self.cursor = acks.len();
        let mut verified = Vec::new();
        for &i in &self.unverified {
            let ack = &acks[i];
            let index = ack.index.expect("only indexed acks are queued");
            let seen = step.nodes.iter().flat_map(|v| &v.new_entries).find(|e| e.index == index);
            let Some(entry) = step.committed.get(&index).or(seen) else { continue };
            if entry.signature.as_deref() != Some(ack.command.signature.as_str()) {
                return Err(Violation::new(
                    "acknowledged-write-lost",
                    format!(
                        "{} was acknowledged at index {index} (t={} ms), but the entry applied there (n{}, term {}) is another one",
                        ack.key, ack.at_ms, entry.node, entry.term
                    ),
                ));
            }
            verified.push(i);
        }
        for i in verified {
            self.unverified.remove(&i);
        }
        Ok(())
    }

    fn check_final(&mut self, step: &Step) -> Result<(), Violation> {
        for v in step.nodes {
            let applied = v.node.state().read();
            let altered: BTreeSet<&str> = step.equivocations.values().map(|e| e.key.as_str()).collect();
            // A write whose entry an equivocating leader altered is refused by the
            // followers that got the altered version; the others hold it.
            for ack in step.history.acks.iter().filter(|a| !altered.contains(a.key.as_str())) {
                let held = applied.state.kv.get(&ack.key).map(|r| r.value.as_str());
                if held != Some(ack.value.as_str()) {
                    return Err(Violation::new(
                        "acknowledged-write-lost",
                        format!(
                            "{} was acknowledged (index {:?}) but n{} holds {held:?} after the heal",
                            ack.key, ack.index, v.id
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Forged, tampered or replayed commands never change the state: each comes
/// back `Rejected`, and no node ever holds a forged key, a forged member or an
/// admin that genesis did not name.
#[derive(Default)]
pub struct ForgeriesRefused {
    cursor: usize,
}

impl ForgeriesRefused {
    fn check_state(id: NodeId, state: &ClusterState, admins: &BTreeSet<OperatorKey>) -> Result<(), Violation> {
        let forged_key =
            state.kv.range(FORGED_PREFIX.to_string()..).next().filter(|(k, _)| k.starts_with(FORGED_PREFIX));
        if let Some((key, _)) = forged_key {
            return Err(Violation::new("forged-command-applied", format!("n{id} holds forged key {key}")));
        }
        if state.members.contains_key(&FORGED_NODE) {
            return Err(Violation::new("forged-command-applied", format!("n{id} lists forged member {FORGED_NODE}")));
        }
        let forged_outcome = state.requests.values().find(|r| match &r.status {
            synod_node::state::RequestStatus::Failed { reason } => reason.contains(FORGED_REASON),
            _ => false,
        });
        if let Some(request) = forged_outcome {
            return Err(Violation::new(
                "forged-command-applied",
                format!("n{id} failed request {} on a forged node-authored outcome", request.request_id),
            ));
        }
        if state.cluster_id.is_some() && &state.admins != admins {
            return Err(Violation::new("forged-command-applied", format!("n{id}'s admins differ from genesis")));
        }
        Ok(())
    }
}

impl Checker for ForgeriesRefused {
    fn name(&self) -> &'static str {
        "forgeries-refused"
    }

    fn check_step(&mut self, step: &Step) -> Result<(), Violation> {
        let altered: BTreeSet<&str> = step.equivocations.values().map(|e| e.key.as_str()).collect();
        for f in &step.history.forged[self.cursor..] {
            // A replayed write that an equivocating leader had altered was refused by the
            // followers that got the altered version: to them the replay is the
            // operator-signed command's first appearance, and applying it is right.
            if f.replayed_key.as_deref().is_some_and(|k| altered.contains(k)) {
                continue;
            }
            if let Some(outcome @ Outcome::Applied { .. }) = &f.outcome {
                return Err(Violation::new(
                    "forged-command-applied",
                    format!("forgery #{} ({:?}) was applied: {outcome:?}", f.fault_id, f.forgery),
                ));
            }
        }
        self.cursor = step.history.forged.len();
        for v in step.nodes.iter().filter(|v| v.moved) {
            Self::check_state(v.id, &v.node.state().read().state, step.admins)?;
        }
        Ok(())
    }

    fn check_final(&mut self, step: &Step) -> Result<(), Violation> {
        for v in step.nodes {
            Self::check_state(v.id, &v.node.state().read().state, step.admins)?;
        }
        Ok(())
    }
}

/// No node applies a command its operator did not sign: an entry an
/// equivocating leader altered (a `put` whose value it changed after the admin
/// signed it) is refused by every node that got it, so no node ever holds the
/// altered value.
pub struct AlteredCommandsRefused;

impl AlteredCommandsRefused {
    fn check_node(id: NodeId, state: &ClusterState, step: &Step) -> Result<(), Violation> {
        for e in step.equivocations.values() {
            if state.kv.get(&e.key).is_some_and(|r| r.value == EQUIVOCATED_VALUE) {
                return Err(Violation::new(
                    "altered-command-applied",
                    format!(
                        "n{id} applied the put of {} that n{} altered at index {} (term {}) for {:?}",
                        e.key, e.leader, e.index, e.term, e.victims
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl Checker for AlteredCommandsRefused {
    fn name(&self) -> &'static str {
        "altered-command-applied"
    }

    fn check_step(&mut self, step: &Step) -> Result<(), Violation> {
        if step.equivocations.is_empty() {
            return Ok(());
        }
        for v in step.nodes.iter().filter(|v| v.moved) {
            Self::check_node(v.id, &v.node.state().read().state, step)?;
        }
        Ok(())
    }

    fn check_final(&mut self, step: &Step) -> Result<(), Violation> {
        for v in step.nodes {
            Self::check_node(v.id, &v.node.state().read().state, step)?;
        }
        Ok(())
    }
}

/// Under rules 4 no pending request outlives its bound by log time: 10 min
/// when it needs no approval, the policy's approval window (at most 24 h)
/// when it does; and no requester holds more than its quota. The signing
/// clients' hostile requests (issued ten years ahead) are what would break it;
/// the planted `skip-client-bounds` leaves the bounds out.
pub struct RequestsBounded;

impl RequestsBounded {
    fn check_state(id: NodeId, state: &ClusterState) -> Result<(), Violation> {
        use synod_node::state::{PENDING_PER_OPERATOR_DEFAULT, REQUEST_PENDING_MS_MAX};
        if state.rules < synod_node::state::RULES_BOUNDED_CLIENTS {
            return Ok(());
        }
        let mut per_requester: BTreeMap<OperatorKey, u32> = BTreeMap::new();
        for request in state.pending_requests.iter().filter_map(|r| state.requests.get(r)) {
            let Some(key) = state.keys.get(&request.key_id) else { continue };
            let life = if key.policy.requirements(&request.attributes).is_empty() {
                REQUEST_PENDING_MS_MAX
            } else {
                synod_proto::command::COMMAND_TTL_MS_MAX
            };
            if request.expires_at_ms > request.created_at_ms.saturating_add(life) {
                return Err(Violation::new(
                    "request-outlives-its-bound",
                    format!(
                        "n{id}: request {} made at {} ms stays pending until {} ms, more than {life} ms",
                        request.request_id, request.created_at_ms, request.expires_at_ms
                    ),
                ));
            }
            *per_requester.entry(request.requester).or_default() += 1;
        }
        for (requester, count) in per_requester {
            let quota =
                state.operator_by_key(&requester).and_then(|op| op.pending_max).unwrap_or(PENDING_PER_OPERATOR_DEFAULT);
            if count > quota {
                return Err(Violation::new(
                    "requester-over-quota",
                    format!("n{id}: requester {requester} holds {count} pending requests, more than {quota}"),
                ));
            }
        }
        Ok(())
    }
}

impl Checker for RequestsBounded {
    fn name(&self) -> &'static str {
        "requests-bounded"
    }

    fn check_step(&mut self, step: &Step) -> Result<(), Violation> {
        for v in step.nodes.iter().filter(|v| v.moved) {
            Self::check_state(v.id, &v.node.state().read().state)?;
        }
        Ok(())
    }
}

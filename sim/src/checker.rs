//! Invariant checkers, run after every simulation step.
//!
//! The [`Observer`] looks at every running node after each step and reports
//! what changed: its Raft role and term, the entries it applied since the last
//! step (read back from its disk and hashed), and a hash of its state when
//! the applied index moved. Each [`Checker`] judges one invariant from that
//! [`Step`] and the clients' [`History`]. The observer also collects, from
//! every running signer, the shares it released (public facts: commitment and
//! package hash), for the nonce checker. Later issues add checkers (audit
//! chains prefix-identical) by implementing the trait and adding them to [`all`].

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use openraft::{EntryPayload, RaftLogReader, ServerState};
use synod_node::node::Node;
use synod_node::raft::log_store::LogStore;
use synod_node::signer::{Released, RELEASED_KEPT_MAX};
use synod_node::state::{ClusterState, RequestStatus};
use synod_proto::authz::{Role, AUDIT_KEY_NAME};
use synod_proto::{NodeId, OperatorKey, Outcome};

use crate::cluster::Machine;
use crate::config::SimConfig;
use crate::net::{Equivocation, EQUIVOCATED_VALUE};
use crate::trace::Trace;
use crate::workload::{History, Phase, FORGED_NODE, FORGED_PREFIX, KEY_NAME, KEY_NAME_FAULTS};

/// How often (simulated ms) the observer collects the shares every running
/// signer released. Collecting copies a node's whole list, so not every step;
/// nothing is lost in between, because the driver also collects from a node
/// right before it crashes it (the list lives in the node's memory only).
pub const HARVEST_EVERY_MS: u64 = 20;

/// A broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The invariant's name, e.g. `raft-election-safety`.
    pub invariant: &'static str,
    /// What was seen, naming nodes, indices and terms.
    pub detail: String,
}

impl Violation {
    fn new(invariant: &'static str, detail: impl Into<String>) -> Violation {
        Violation { invariant, detail: detail.into() }
    }
}

/// One applied log entry as seen on one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryRecord {
    pub index: u64,
    pub term: u64,
    /// SHA-256 of the whole entry (log id and payload), hex.
    pub hash: String,
    /// The command's signature for application entries: identifies the command.
    pub signature: Option<String>,
    /// Which node it was first seen on.
    pub node: NodeId,
}

/// What one running node looks like after a step.
pub struct NodeView {
    pub id: NodeId,
    pub node: Arc<Node>,
    pub role: ServerState,
    pub term: u64,
    pub leader: Option<NodeId>,
    /// The last applied log index.
    pub applied: Option<u64>,
    /// Whether this is a new boot since the last step.
    pub restarted: bool,
    /// Entries applied since the last step that are still on the node's disk.
    pub new_entries: Vec<EntryRecord>,
    /// Whether the applied index moved in this step (the state may have changed).
    pub moved: bool,
    /// The state's hash, when the applied index moved in this step to an index
    /// whose state is to be compared (see [`STATE_HASH_EVERY_MS`]).
    pub state_hash: Option<String>,
}

/// Everything the checkers see after one step.
pub struct Step<'a> {
    pub now_ms: u64,
    pub nodes: &'a [NodeView],
    /// Applied entries by index, as first seen on any node.
    pub committed: &'a BTreeMap<u64, EntryRecord>,
    pub history: &'a History,
    /// The genesis admins: the only operators there may ever be.
    pub admins: &'a BTreeSet<OperatorKey>,
    /// Signature shares released since the last step (see [`HARVEST_EVERY_MS`]).
    pub releases: &'a [Release],
    /// Entries an equivocating leader sent altered to some followers, by index.
    pub equivocations: &'a BTreeMap<u64, Equivocation>,
}

/// A share a signer released, with the node that released it (whose state is
/// still readable after it crashed: it is the signer's state at the crash).
pub struct Release {
    pub node: NodeId,
    pub handle: Arc<Node>,
    pub released: Released,
}

/// One invariant.
pub trait Checker {
    fn name(&self) -> &'static str;
    /// Judges the state after one step.
    fn check_step(&mut self, step: &Step) -> Result<(), Violation>;
    /// Judges the end state, after the heal, once every node has caught up.
    fn check_final(&mut self, _step: &Step) -> Result<(), Violation> {
        Ok(())
    }
}

/// Every checker, in the order they run.
pub fn all(cfg: &SimConfig) -> Vec<Box<dyn Checker>> {
    vec![
        Box::new(RaftSafety::default()),
        Box::new(StateAgreement::default()),
        Box::new(AckedWritesKept::default()),
        Box::new(ForgeriesRefused::default()),
        Box::new(AlteredCommandsRefused),
        Box::new(NonceSingleUse::default()),
        Box::new(OneMessagePerRequest::default()),
        Box::new(SignaturesVerify::default()),
        Box::new(PolicyBeforeShares::default()),
        Box::new(HonestNotBlamed {
            byzantine: crate::schedule::draw_byzantine_signer(cfg.seed, &cfg.plan, cfg.nodes).map(|(node, _)| node),
        }),
        Box::new(SigningLiveness { bound_ms: cfg.sign_liveness_bound_ms, keys: expected_keys(cfg) }),
    ]
}

/// The keys a run generates.
pub fn expected_keys(cfg: &SimConfig) -> Vec<&'static str> {
    match (signing_enabled(cfg), cfg.plan.keygen_during_faults) {
        (false, _) => Vec::new(),
        (true, false) => vec![KEY_NAME],
        (true, true) => vec![KEY_NAME, KEY_NAME_FAULTS],
    }
}

/// Whether a run creates a key and signs: it needs clients and at least two
/// nodes (FROST's smallest threshold is 2).
pub fn signing_enabled(cfg: &SimConfig) -> bool {
    cfg.signing_clients > 0 && cfg.nodes >= 2
}

/// How often (simulated ms) a node's state is hashed at an applied index no
/// node's state was hashed at yet. At an index another node's state was
/// hashed at, it is always hashed (and compared). Hashing every state at every
/// applied index took most of the simulator's own time: the state grows with
/// the run, so that cost grew with the square of the run's length.
pub const STATE_HASH_EVERY_MS: u64 = 500;

/// Per-node memory of the observer.
#[derive(Default)]
struct Seen {
    boots: u64,
    applied: Option<u64>,
    role: Option<(ServerState, u64, Option<NodeId>)>,
    /// When this node's state was last hashed at a new index.
    hashed_at_ms: Option<u64>,
}

/// Looks at the nodes after each step; keeps the committed-entry map.
#[derive(Default)]
pub struct Observer {
    seen: BTreeMap<NodeId, Seen>,
    pub committed: BTreeMap<u64, EntryRecord>,
    /// Applied indexes at which some node's state was hashed.
    hashed: BTreeSet<u64>,
    /// States hashed, for the report.
    pub states_hashed: u64,
    /// Per machine: the boot whose released shares were collected, and how many.
    released_seen: BTreeMap<NodeId, (u64, usize)>,
    /// Shares collected since the last step, for the checkers.
    pub releases: Vec<Release>,
    /// Every share collected in the run.
    pub shares_released: usize,
    last_harvest_ms: Option<u64>,
}

/// SHA-256 of a value, hex (of its canonical binary encoding; see [`crate::digest`]).
fn hash_value<T: serde::Serialize>(value: &T) -> String {
    crate::digest::digest_hex(value)
}

/// The hash of a state.
pub fn state_hash(state: &ClusterState) -> String {
    hash_value(state)
}

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

impl Observer {
    /// Observes every running machine; writes role changes and applies to the trace.
    pub fn observe(&mut self, machines: &[Machine], now_ms: u64, trace: &mut Trace) -> Vec<NodeView> {
        let mut views = Vec::new();
        for m in machines {
            let Some(node) = m.running() else { continue };
            let boots = m.boots.load(std::sync::atomic::Ordering::Relaxed);
            let seen = self.seen.entry(m.id).or_default();
            let restarted = seen.boots != boots;
            if restarted {
                *seen = Seen { boots, ..Seen::default() };
            }
            let (role, term, leader) = {
                let metrics = node.raft.metrics();
                let m = metrics.borrow();
                (m.state, m.current_term, m.current_leader)
            };
            if seen.role != Some((role, term, leader)) {
                trace.event(now_ms, format!("n{} {role:?} term {term} leader {leader:?}", m.id));
                seen.role = Some((role, term, leader));
            }
            let (applied, state_hash) = {
                let shared = node.state().read();
                let applied = shared.last_applied.map(|l| l.index);
                let index = applied.unwrap_or(0);
                let due = seen.hashed_at_ms.is_none_or(|at| now_ms >= at + STATE_HASH_EVERY_MS);
                let wanted = applied != seen.applied && (due || self.hashed.contains(&index));
                if wanted && self.hashed.insert(index) {
                    seen.hashed_at_ms = Some(now_ms);
                }
                self.states_hashed += u64::from(wanted);
                (applied, wanted.then(|| state_hash(&shared.state)))
            };
            let moved = applied != seen.applied;
            let mut new_entries = Vec::new();
            if applied != seen.applied {
                let from = if restarted { 0 } else { seen.applied.map_or(0, |i| i + 1) };
                if let Some(to) = applied.filter(|to| *to >= from) {
                    new_entries = read_entries(m, from, to);
                }
                trace.event(
                    now_ms,
                    format!(
                        "n{} applied {:?} state {}",
                        m.id,
                        applied,
                        &state_hash.as_deref().unwrap_or("")[..8.min(state_hash.as_ref().map_or(0, |h| h.len()))]
                    ),
                );
            }
            views.push(NodeView {
                id: m.id,
                node,
                role,
                term,
                leader,
                applied,
                restarted,
                new_entries,
                moved,
                state_hash,
            });
            seen.applied = applied;
        }
        if self.last_harvest_ms.is_none_or(|at| now_ms >= at + HARVEST_EVERY_MS) {
            self.last_harvest_ms = Some(now_ms);
            for m in machines {
                self.harvest(m);
            }
        }
        views
    }

    /// Collects the shares `m`'s signer released since the last collection.
    /// The driver calls it right before crashing `m`, whose list dies with it.
    pub fn harvest(&mut self, m: &Machine) {
        let Some(node) = m.running() else { return };
        let boots = m.boots.load(std::sync::atomic::Ordering::Relaxed);
        let list = node.signer().released();
        let seen = self.released_seen.entry(m.id).or_insert((boots, 0));
        if seen.0 != boots {
            *seen = (boots, 0);
        }
        // The list is append-only until it is full; then it drops its oldest
        // entries, and everything is passed on again (the checker deduplicates).
        let from = if list.len() >= RELEASED_KEPT_MAX { 0 } else { seen.1.min(list.len()) };
        self.shares_released += list.len().saturating_sub(seen.1);
        seen.1 = list.len();
        self.releases.extend(list.into_iter().skip(from).map(|released| Release {
            node: m.id,
            handle: node.clone(),
            released,
        }));
    }

    /// Remembers the entries of this step (after the checkers have judged them).
    pub fn commit(&mut self, views: &[NodeView]) {
        for view in views {
            for e in &view.new_entries {
                self.committed.entry(e.index).or_insert_with(|| e.clone());
            }
        }
        self.releases.clear();
    }
}

/// Reads entries `from..=to` back from a node's disk (those not yet purged).
fn read_entries(m: &Machine, from: u64, to: u64) -> Vec<EntryRecord> {
    let mut log = LogStore::new(Arc::new(m.disk.clone()));
    // The memory store answers at once; there is nothing to wait for.
    let entries = futures::executor::block_on(log.try_get_log_entries(from..=to)).unwrap_or_default();
    entries
        .iter()
        .map(|e| EntryRecord {
            index: e.log_id.index,
            term: e.log_id.leader_id.term,
            hash: hash_value(e),
            signature: match &e.payload {
                EntryPayload::Normal(entry) => Some(entry.command.signature.clone()),
                _ => None,
            },
            node: m.id,
        })
        .collect()
}

/// Whether openraft allows only one leader per term. openraft 0.9 by default
/// uses "advanced" leader ids, `(term, node_id)`, totally ordered: a voter that
/// voted for n2 in term 5 may still vote for n3 in term 5 (n3 > n2), so two
/// leaders in one term is by design, and the later one wins. Only with its
/// `single-term-leader` feature is the committed leader id the bare term, as in
/// classic Raft. Detected from the type's size so the check follows the build.
pub fn one_leader_per_term() -> bool {
    std::mem::size_of::<openraft::CommittedLeaderId<NodeId>>() == std::mem::size_of::<u64>()
}

/// Raft safety: at most one leader per leader id (per term under classic
/// Raft, see [`one_leader_per_term`]); an entry, once applied anywhere,
/// is the same entry everywhere (applied logs are prefix-consistent); a node's
/// applied index never goes backwards within one boot.
///
/// A leader that restarts comes back believing it still leads its old term
/// until it hears from the others; that is the same node in the same term, so
/// it does not count as a second leader.
pub struct RaftSafety {
    /// Whether two leaders in one term is a violation in this build.
    one_per_term: bool,
    leaders: BTreeMap<u64, NodeId>,
    applied: BTreeMap<NodeId, u64>,
}

impl Default for RaftSafety {
    fn default() -> Self {
        RaftSafety { one_per_term: one_leader_per_term(), leaders: BTreeMap::new(), applied: BTreeMap::new() }
    }
}

impl Checker for RaftSafety {
    fn name(&self) -> &'static str {
        "raft-safety"
    }

    fn check_step(&mut self, step: &Step) -> Result<(), Violation> {
        for v in step.nodes {
            if v.role == ServerState::Leader && self.one_per_term {
                let first = *self.leaders.entry(v.term).or_insert(v.id);
                if first != v.id {
                    return Err(Violation::new(
                        "raft-election-safety",
                        format!("n{first} and n{} both became leader in term {}", v.id, v.term),
                    ));
                }
            }
            let applied = v.applied.unwrap_or(0);
            if v.restarted {
                self.applied.insert(v.id, applied);
            } else if let Some(before) = self.applied.insert(v.id, applied) {
                if applied < before {
                    return Err(Violation::new(
                        "raft-applied-monotonic",
                        format!("n{}'s applied index went back from {before} to {applied} without a restart", v.id),
                    ));
                }
            }
            for e in &v.new_entries {
                // An equivocating leader sent two entries under this log id: outside
                // crash-fault Raft's model (see ARCHITECTURE.md, `sim/`).
                if step.equivocations.contains_key(&e.index) {
                    continue;
                }
                if let Some(first) = step.committed.get(&e.index) {
                    if first.hash != e.hash {
                        return Err(Violation::new(
                            "raft-committed-entries-never-change",
                            format!(
                                "index {}: n{} applied an entry of term {} ({}), n{} had applied one of term {} ({})",
                                e.index,
                                v.id,
                                e.term,
                                &e.hash[..12],
                                first.node,
                                first.term,
                                &first.hash[..12]
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
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

/// A nonce serves one signing package: over the whole run, a (node, nonce
/// commitment) pair is never seen with two different signing-package hashes,
/// from every share any signer released (collected by the [`Observer`]).
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
/// [`HARVEST_EVERY_MS`], and right before a crash), not at the release itself:
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
        if !checkpoint && !history.sent.contains_key(&r.request_id) {
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

/// Only a byzantine signer is ever named a culprit: on every node, the
/// culprits of every request (signers whose share failed verification) and of
/// every aborted key generation (a participant whose round-2 package did not
/// match its round-1 commitments) are the run's byzantine signer, if any. An
/// honest signer named culprit would be left out of sessions for a minute, or
/// of the key made again: one lie could then stall signing.
pub struct HonestNotBlamed {
    pub byzantine: Option<NodeId>,
}

impl HonestNotBlamed {
    fn check_node(&self, id: NodeId, state: &ClusterState) -> Result<(), Violation> {
        for (request_id, r) in &state.requests {
            if let Some(honest) = r.culprits.iter().find(|c| Some(**c) != self.byzantine) {
                return Err(Violation::new(
                    "honest-signer-blamed",
                    format!(
                        "n{id} holds request {request_id} naming n{honest} a culprit; the byzantine signer is {:?}",
                        self.byzantine
                    ),
                ));
            }
        }
        for key in state.keys.values() {
            if let synod_node::state::KeyStatus::Aborted { culprit: Some(honest), reason } = &key.status {
                if Some(*honest) != self.byzantine {
                    return Err(Violation::new(
                        "honest-signer-blamed",
                        format!(
                            "n{id} holds key {} aborted naming n{honest} the culprit ({reason}); the byzantine \
                             signer is {:?}",
                            key.name, self.byzantine
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Checker for HonestNotBlamed {
    fn name(&self) -> &'static str {
        "honest-signer-blamed"
    }

    fn check_step(&mut self, step: &Step) -> Result<(), Violation> {
        for v in step.nodes.iter().filter(|v| v.moved) {
            self.check_node(v.id, &v.node.state().read().state)?;
        }
        Ok(())
    }

    fn check_final(&mut self, step: &Step) -> Result<(), Violation> {
        for v in step.nodes {
            self.check_node(v.id, &v.node.state().read().state)?;
        }
        Ok(())
    }
}

/// After the heal, with every node up, every key the run generates becomes
/// active, and every sign request is signed, within `bound_ms` (of the heal,
/// or of the request's submission if later).
pub struct SigningLiveness {
    pub bound_ms: u64,
    /// The keys this run generates.
    pub keys: Vec<&'static str>,
}

impl Checker for SigningLiveness {
    fn name(&self) -> &'static str {
        "signing-liveness-after-heal"
    }

    fn check_step(&mut self, step: &Step) -> Result<(), Violation> {
        let Phase::Healed { at_ms } = step.history.phase else { return Ok(()) };
        if step.now_ms <= at_ms + self.bound_ms {
            return Ok(());
        }
        if let Some(name) = self.keys.iter().find(|k| !step.history.keys.contains_key(**k)) {
            return Err(Violation::new(
                "key-generation-liveness",
                format!(
                    "{} ms after the heal, with every node up, key {name} is not active ({} create_key commands sent)",
                    self.bound_ms,
                    step.history.key_attempts.get(*name).copied().unwrap_or(0)
                ),
            ));
        }
        for (request_id, submitted) in &step.history.sign_pending {
            let since = (*submitted).max(at_ms);
            if step.now_ms > since + self.bound_ms {
                return Err(Violation::new(
                    "signing-liveness-after-heal",
                    format!(
                        "request {request_id} (submitted at {submitted} ms) is not signed {} ms after {}",
                        self.bound_ms,
                        if *submitted > at_ms { "its submission" } else { "the heal" }
                    ),
                ));
            }
        }
        Ok(())
    }
}

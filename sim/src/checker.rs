//! Invariant checkers, run after every simulation step.
//!
//! The [`Observer`] looks at every running node after each step and reports
//! what changed: its Raft role and term, the entries it applied since the last
//! step (read back from its disk and hashed), and a hash of its state when
//! the applied index moved. Each [`Checker`] judges one invariant from that
//! [`Step`] and the clients' [`History`]. Later issues add checkers (signatures
//! verify under the group key, no nonce reuse, audit chains prefix-identical)
//! by implementing the trait and adding them to [`all`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use openraft::{EntryPayload, RaftLogReader, ServerState};
use sha2::{Digest, Sha256};
use synod_node::node::Node;
use synod_node::raft::log_store::LogStore;
use synod_node::state::ClusterState;
use synod_proto::{NodeId, OperatorKey, Outcome};

use crate::cluster::Machine;
use crate::trace::Trace;
use crate::workload::{History, FORGED_NODE, FORGED_PREFIX};

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
    /// The state's hash, when the applied index moved in this step.
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
pub fn all() -> Vec<Box<dyn Checker>> {
    vec![
        Box::new(RaftSafety::default()),
        Box::new(StateAgreement::default()),
        Box::new(AckedWritesKept::default()),
        Box::new(ForgeriesRefused::default()),
    ]
}

/// Per-node memory of the observer.
#[derive(Default)]
struct Seen {
    boots: u64,
    applied: Option<u64>,
    role: Option<(ServerState, u64, Option<NodeId>)>,
}

/// Looks at the nodes after each step; keeps the committed-entry map.
#[derive(Default)]
pub struct Observer {
    seen: BTreeMap<NodeId, Seen>,
    pub committed: BTreeMap<u64, EntryRecord>,
}

/// SHA-256 of a value's JSON, hex.
fn hash_json<T: serde::Serialize>(value: &T) -> String {
    hex::encode(Sha256::digest(serde_json::to_vec(value).expect("serialises")))
}

/// The hash of a state.
pub fn state_hash(state: &ClusterState) -> String {
    hash_json(state)
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
                let hash = (applied != seen.applied).then(|| state_hash(&shared.state));
                (applied, hash)
            };
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
            views.push(NodeView { id: m.id, node, role, term, leader, applied, restarted, new_entries, state_hash });
            seen.applied = applied;
        }
        views
    }

    /// Remembers the entries of this step (after the checkers have judged them).
    pub fn commit(&mut self, views: &[NodeView]) {
        for view in views {
            for e in &view.new_entries {
                self.committed.entry(e.index).or_insert_with(|| e.clone());
            }
        }
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
            hash: hash_json(e),
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

/// State-machine agreement: nodes at the same applied index hold the same state.
#[derive(Default)]
pub struct StateAgreement {
    hashes: BTreeMap<u64, (String, NodeId)>,
}

impl Checker for StateAgreement {
    fn name(&self) -> &'static str {
        "state-agreement"
    }

    fn check_step(&mut self, step: &Step) -> Result<(), Violation> {
        for v in step.nodes {
            let (Some(hash), Some(index)) = (&v.state_hash, v.applied) else { continue };
            let (first, node) = self.hashes.entry(index).or_insert_with(|| (hash.clone(), v.id));
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
        let hashes: BTreeSet<(Option<u64>, String)> =
            step.nodes.iter().map(|v| (v.applied, state_hash(&v.node.state().read().state))).collect();
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
            for ack in &step.history.acks {
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
        for f in &step.history.forged[self.cursor..] {
            if let Some(outcome @ Outcome::Applied { .. }) = &f.outcome {
                return Err(Violation::new(
                    "forged-command-applied",
                    format!("forgery #{} ({:?}) was applied: {outcome:?}", f.fault_id, f.forgery),
                ));
            }
        }
        self.cursor = step.history.forged.len();
        for v in step.nodes.iter().filter(|v| v.state_hash.is_some()) {
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

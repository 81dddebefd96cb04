//! The observer: what each step shows the checkers. It checks no invariant
//! itself. After every step it reads each running node's Raft role and term,
//! the entries applied since the last step (read back from the node's disk and
//! hashed: the checkers compare what was stored, not what was sent) and, at
//! sampled applied indexes, a hash of its state; every [`HARVEST_EVERY_MS`],
//! and right before the driver crashes a node, it collects the shares each
//! signer released. It draws no randomness and iterates only `BTreeMap`s and
//! lists in node order, so observing does not change a seed's replay.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use openraft::{EntryPayload, RaftLogReader, ServerState};
use synod_node::raft::log_store::LogStore;
use synod_node::signer::RELEASED_KEPT_MAX;
use synod_proto::NodeId;

use super::{hash_value, state_hash, EntryRecord, NodeView, Release};
use crate::cluster::Machine;
use crate::trace::Trace;

/// How often (simulated ms) the observer collects the shares every running
/// signer released. Collecting copies a node's whole list, so not every step;
/// nothing is lost in between, because the driver also collects from a node
/// right before it crashes it (the list lives in the node's memory only).
pub const HARVEST_EVERY_MS: u64 = 20;

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

//! The simulated machines: one turmoil host per node, running the production
//! [`Node`] over an in-memory disk, a simulated clock and a seeded RNG.
//!
//! A node's disk ([`MemoryStore`]) is owned here, outside the host closure, so
//! it outlives turmoil's crash: a crash drops every task of the host (Raft, the
//! server, in-flight calls) and then [`MemoryStore::crash`] drops the writes
//! that were not synced; a restart builds a new `Node` on the surviving disk,
//! or on a wiped one.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use synod_node::config::RaftTuning;
use synod_node::kek::soft::SoftKek;
use synod_node::kek::Kek;
use synod_node::node::{Node, NodeParts};
use synod_node::sealed::SealedStore;
use synod_node::seams::{Clock, Seams};
use synod_node::store::{MemoryStore, Store};
use synod_proto::NodeId;

use crate::net::{self, SharedNet, SimTransport};

/// Unix time (ms) at which every simulation starts: 2030-01-01. Fixed so that
/// no wall-clock time reaches a trace or an entry.
pub const EPOCH_MS: u64 = 1_893_456_000_000;

/// Simulated time, in ms since the simulation started; the driver advances it
/// before each step, and every clock reads it.
pub type SimNow = Arc<AtomicU64>;

/// A node's wall clock: simulated time plus this node's offset (skew and jumps).
pub struct SimClock {
    now: SimNow,
    offset_ms: Arc<AtomicI64>,
}

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        let now = (EPOCH_MS + self.now.load(Ordering::Relaxed)) as i64;
        now.saturating_add(self.offset_ms.load(Ordering::Relaxed)).max(0) as u64
    }
}

/// One simulated machine: what survives its crashes and what the driver inspects.
#[derive(Clone)]
pub struct Machine {
    pub id: NodeId,
    /// The disk; survives crashes (minus unsynced writes) unless wiped.
    pub disk: MemoryStore,
    /// The running node, for checkers and faults; empty while crashed.
    pub node: Arc<Mutex<Option<Arc<Node>>>>,
    /// This node's clock offset from simulated time, in ms.
    pub clock_offset_ms: Arc<AtomicI64>,
    /// How many times the node has booted; seeds each boot's RNG differently.
    pub boots: Arc<AtomicU64>,
}

impl Machine {
    pub fn new(id: NodeId) -> Machine {
        Machine {
            id,
            disk: MemoryStore::new(),
            node: Arc::new(Mutex::new(None)),
            clock_offset_ms: Arc::new(AtomicI64::new(0)),
            boots: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The running node, if the machine is up and has finished starting.
    pub fn running(&self) -> Option<Arc<Node>> {
        self.node.lock().expect("node slot").clone()
    }
}

/// What a host needs to boot its node.
#[derive(Clone)]
pub struct Boot {
    pub machine: Machine,
    pub seed: u64,
    pub now: SimNow,
    pub net: SharedNet,
    pub tuning: RaftTuning,
    /// The node's certificate and key (from the simulation's in-memory CA).
    pub identity: Arc<synod_node::pki::NodeIdentity>,
    /// The admin whose genesis the node takes, as its node.toml would pin it.
    pub genesis_admin: synod_proto::OperatorKey,
    /// Whether this node sends forged and stale snapshots (a byzantine member).
    pub forges_snapshots: bool,
}

/// The host's software: start the production node, then serve it.
pub async fn run_node(boot: Boot) -> turmoil::Result {
    let m = &boot.machine;
    let boot_no = m.boots.fetch_add(1, Ordering::Relaxed);
    let rng = ChaCha20Rng::seed_from_u64(boot.seed ^ (m.id << 32) ^ boot_no.wrapping_mul(0x9e37_79b9));
    let seams = Seams {
        clock: Arc::new(SimClock { now: boot.now.clone(), offset_ms: m.clock_offset_ms.clone() }),
        rng: Arc::new(Mutex::new(rng)),
    };
    // The machine's KEK: derived from the seed and the machine, so it survives
    // crashes and restarts like a real node's KEK.
    let mut kek_bytes = zeroize::Zeroizing::new([0u8; 32]);
    ChaCha20Rng::seed_from_u64(boot.seed ^ m.id.wrapping_mul(0x5eed_0b1e_c7ed)).fill_bytes(&mut *kek_bytes);
    let kek: Arc<dyn Kek> = Arc::new(SoftKek::from_key_bytes(kek_bytes));
    let store: Arc<dyn Store> = Arc::new(m.disk.clone());
    let parts = NodeParts {
        id: m.id,
        store: store.clone(),
        sealed: Arc::new(SealedStore::new(store, kek)),
        transport: Arc::new(SimTransport { id: m.id, net: boot.net.clone() }),
        identity: boot.identity.clone(),
        seams,
        tuning: boot.tuning.clone(),
        genesis_admins: [boot.genesis_admin].into_iter().collect(),
    };
    let node = Node::start(parts).await.map_err(|e| format!("node {} failed to start: {e:#}", m.id))?;
    *m.node.lock().expect("node slot") = Some(node.clone());
    if boot.forges_snapshots {
        let rng = ChaCha20Rng::seed_from_u64(boot.seed ^ 0x666f_7267 ^ boot_no);
        tokio::spawn(crate::forger::forge_snapshots(node.clone(), boot.net.clone(), boot.identity.clone(), rng));
    }
    net::serve(node).await
}

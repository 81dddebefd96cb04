//! One seed, end to end: build the simulated cluster, run genesis, the
//! workload and the fault schedule, check every step, heal, check liveness and
//! convergence, and report.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use openraft::ServerState;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use synod_proto::{NodeId, OperatorKey};

use crate::checker::{self, Checker, NodeView, Observer, Step, Violation};
use crate::cluster::{self, Boot, Machine, EPOCH_MS};
use crate::config::SimConfig;
use crate::net::{self, FaultCounts, NetFaults, SharedNet};
use crate::schedule::{self, Fault, FaultKind, Target, Trigger};
use crate::trace::{SharedTrace, Trace};
use crate::workload::{self, ClientCtx, History, KvWorkload, Phase, SharedHistory};

/// How long genesis may take before the run fails.
const GENESIS_BOUND_MS: u64 = 30_000;
/// Trace lines printed with a failure.
pub const TAIL_LINES: usize = 40;

/// What one seed did.
#[derive(Clone, Debug)]
pub struct SeedReport {
    pub seed: u64,
    pub violation: Option<Violation>,
    pub trace_hash: String,
    pub trace_lines: usize,
    pub tail: Vec<String>,
    pub writes_acked: usize,
    /// Answers nodes gave to command lookups (`GetCommand`).
    pub lookups: usize,
    /// Sign requests a client saw signed (re-sends not counted).
    pub signatures: usize,
    /// Signature shares the signers released (collected from the nodes).
    pub shares: usize,
    pub entries_applied: u64,
    pub forgeries: usize,
    /// Requests whose record names a culprit (a signer whose share failed
    /// verification), on the first running node at the end.
    pub culprits: usize,
    pub faults: BTreeMap<String, u64>,
    /// Sign requests the clients sent, by format (`raw`, `sshsig/git`, ...),
    /// probes the cluster refused, and minisign global signatures by outcome.
    pub formats: BTreeMap<String, u64>,
    /// Scheduled faults that actually fired, by id (the candidates for shrinking).
    pub fired: Vec<usize>,
    /// Named fault points that crashed a node (also candidates for shrinking).
    pub fired_points: Vec<String>,
    /// Whether a byzantine signer lied in this run (also a candidate).
    pub byzantine_signer: bool,
    pub sim_ms: u64,
    pub wall_ms: u64,
    pub replay: String,
    /// The whole trace, when asked for.
    pub trace: Option<Vec<String>>,
}

/// Crashes at named fault points (`synod_node::faults::crash_point`): what the
/// hook the nodes call decides, from its own seeded RNG, and what the driver
/// has still to carry out.
struct PointCrashes {
    rng: ChaCha8Rng,
    p: f64,
    /// Crashes still allowed in this run.
    left: u32,
    /// Whether a crash may fire now: the window is open and the crash budget
    /// has room. Cleared when one fires, until the driver has crashed the node.
    allowed: bool,
    /// Points that fired already (each fires at most once per run).
    fired: BTreeSet<&'static str>,
    /// Nodes stopped at a point, to be crashed by the driver at its next step.
    queue: Vec<(NodeId, &'static str)>,
}

type SharedPoints = Arc<Mutex<PointCrashes>>;

/// Installs the hook that decides crashes at named fault points.
fn install_point_hook(seed: u64, plan: &crate::config::FaultPlan, skip: BTreeSet<String>) -> SharedPoints {
    let points = Arc::new(Mutex::new(PointCrashes {
        rng: ChaCha8Rng::seed_from_u64(seed ^ 0x706f_696e_7473),
        p: plan.crash_point_p,
        left: plan.crash_points,
        allowed: false,
        fired: BTreeSet::new(),
        queue: Vec::new(),
    }));
    let shared = points.clone();
    synod_node::faults::set_point_hook(Some(Arc::new(move |node, name| {
        let mut p = shared.lock().expect("fault points");
        if !p.allowed || p.left == 0 || p.fired.contains(name) {
            return false;
        }
        // A skipped point still draws, so the points after it decide as before.
        if (p.rng.next_u64() as f64 / u64::MAX as f64) >= p.p || skip.contains(name) {
            return false;
        }
        p.left -= 1;
        p.allowed = false;
        p.fired.insert(name);
        p.queue.push((node, name));
        true
    })));
    points
}

/// A network fault to undo later.
enum Repair {
    /// The time to crash a node and restart it on the copy of its disk taken earlier.
    RollBack {
        id: NodeId,
        copy: synod_node::store::memory::DiskCopy,
        down_ms: u64,
    },
    Partition(Vec<(NodeId, NodeId)>),
    OneWay(NodeId, NodeId),
    Slow(NodeId),
    Equivocation(NodeId),
    StampAhead(NodeId),
}

/// The disk a crashed node restarts on.
#[derive(Clone)]
enum Restart {
    /// Its own disk, minus unsynced writes.
    SameDisk,
    /// An empty one.
    EmptyDisk,
    /// A copy of its disk taken earlier.
    RolledBack(synod_node::store::memory::DiskCopy),
}

/// The driver's view of the world between steps.
struct Driver<'a> {
    cfg: &'a SimConfig,
    sim: turmoil::Sim<'static>,
    machines: Vec<Machine>,
    net: SharedNet,
    counts: FaultCounts,
    trace: SharedTrace,
    history: SharedHistory,
    now: Arc<AtomicU64>,
    schedule: Vec<Fault>,
    fired: Vec<usize>,
    /// Crashed nodes: restart time and the disk they restart on.
    down: BTreeMap<NodeId, (u64, Restart)>,
    /// Wiped or rolled-back nodes still catching up, with the index they must reach.
    catching_up: BTreeMap<NodeId, u64>,
    repairs: Vec<(u64, Repair)>,
    /// Whether a partition (symmetric or one-way) is in force.
    partitioned: bool,
    observer: Observer,
    /// The network's record of entries an equivocating leader altered.
    equivocations: BTreeMap<u64, net::Equivocation>,
    points: SharedPoints,
    checkers: Vec<Box<dyn Checker>>,
    admins: BTreeSet<OperatorKey>,
    leader: Option<NodeId>,
}

impl Driver<'_> {
    fn now_ms(&self) -> u64 {
        self.now.load(Ordering::Relaxed)
    }

    fn event(&self, text: impl AsRef<str>) {
        self.trace.borrow_mut().event(self.now_ms(), text);
    }

    fn count(&self, kind: &'static str) {
        net::count(&self.counts, kind);
    }

    fn minority(&self) -> usize {
        ((self.cfg.nodes - 1) / 2) as usize
    }

    fn resolve(&self, target: Target) -> NodeId {
        match target {
            Target::Node(id) => id,
            Target::Leader => self.leader.unwrap_or(1),
        }
    }

    fn is_up(&self, id: NodeId) -> bool {
        !self.down.contains_key(&id)
    }

    /// Fires every scheduled fault whose trigger has come.
    fn fire_due(&mut self) {
        let Phase::Chaos = self.history.borrow().phase else { return };
        let since_genesis = self.now_ms() - self.history.borrow().window_at_ms;
        let acks = self.history.borrow().acks.len() as u64;
        let due: Vec<Fault> = self
            .schedule
            .iter()
            .filter(|f| match f.trigger {
                Trigger::AtMs(ms) => since_genesis >= ms,
                Trigger::AfterAcks(n) => acks >= n,
            })
            .cloned()
            .collect();
        self.schedule.retain(|f| !due.contains(f));
        for fault in due {
            if self.cfg.skip_faults.contains(&fault.id) {
                continue;
            }
            if self.fire(&fault) {
                self.fired.push(fault.id);
                self.count(fault.kind.name());
                self.event(format!("fault {fault}"));
            } else {
                self.count("skipped");
                self.event(format!("fault skipped {fault}"));
            }
        }
    }

    /// Applies one fault; false when it cannot apply now (the fault budget or
    /// another partition is in the way).
    fn fire(&mut self, fault: &Fault) -> bool {
        let now = self.now_ms();
        let all: Vec<NodeId> = (1..=self.cfg.nodes).collect();
        match &fault.kind {
            FaultKind::Partition { side, heal_after_ms } => {
                if self.partitioned {
                    return false;
                }
                let side: BTreeSet<NodeId> = side.iter().map(|t| self.resolve(*t)).collect();
                let pairs: Vec<(NodeId, NodeId)> =
                    side.iter().flat_map(|a| all.iter().filter(|b| !side.contains(b)).map(move |b| (*a, *b))).collect();
                for (a, b) in &pairs {
                    self.sim.partition(net::node_name(*a), net::node_name(*b));
                }
                self.partitioned = true;
                self.repairs.push((now + heal_after_ms, Repair::Partition(pairs)));
            }
            FaultKind::OneWay { from, to, heal_after_ms } => {
                let (from, to) = (self.resolve(*from), self.resolve(*to));
                if self.partitioned || from == to {
                    return false;
                }
                self.sim.partition_oneway(net::node_name(from), net::node_name(to));
                self.partitioned = true;
                self.repairs.push((now + heal_after_ms, Repair::OneWay(from, to)));
            }
            FaultKind::Crash { node, down_ms, wipe } => {
                let id = self.resolve(*node);
                // Safety needs a majority with intact disks: a crashed node, or a
                // wiped one that has not caught up, counts against the minority.
                if !self.is_up(id) || self.down.len() + self.catching_up.len() >= self.minority() {
                    return false;
                }
                // A replaced disk takes a while; by then the node's old terms are
                // over, so it cannot vote twice in one (it has forgotten its vote).
                let down_ms =
                    if *wipe { (*down_ms).max(4 * self.cfg.tuning.election_timeout_max_ms) } else { *down_ms };
                self.crash(id, now + down_ms, if *wipe { Restart::EmptyDisk } else { Restart::SameDisk });
            }
            FaultKind::RollBack { node, copy_age_ms, down_ms } => {
                let id = self.resolve(*node);
                if !self.is_up(id) {
                    return false;
                }
                let copy = self.machines[id as usize - 1].disk.copy();
                self.event(format!("copy of n{id}'s disk taken; it is restored in {copy_age_ms} ms"));
                self.repairs.push((now + copy_age_ms, Repair::RollBack { id, copy, down_ms: *down_ms }));
            }
            FaultKind::ClockSkew { node, offset_ms } => {
                self.machines[*node as usize - 1].clock_offset_ms.store(*offset_ms, Ordering::Relaxed);
            }
            FaultKind::ClockJump { node, jump_ms } => {
                let limit = self.cfg.plan.clock_skew_ms_max + self.cfg.plan.clock_jump_ms_max;
                let offset = &self.machines[*node as usize - 1].clock_offset_ms;
                let next = (offset.load(Ordering::Relaxed) + jump_ms).clamp(-limit, limit);
                offset.store(next, Ordering::Relaxed);
            }
            FaultKind::Slow { node, extra_ms, for_ms } => {
                let id = self.resolve(*node);
                self.net.lock().expect("net").set_slow(id, Some(*extra_ms));
                self.repairs.push((now + for_ms, Repair::Slow(id)));
            }
            FaultKind::Equivocate { victims, rotation, for_ms } => {
                let Some(leader) = self.leader else { return false };
                let followers: Vec<NodeId> = all.iter().copied().filter(|n| *n != leader).collect();
                let victims: BTreeSet<NodeId> =
                    (0..*victims as usize).map(|i| followers[(*rotation as usize + i) % followers.len()]).collect();
                self.event(format!("n{leader} equivocates towards {victims:?} for {for_ms} ms"));
                self.net.lock().expect("net").set_equivocating(Some((leader, victims)));
                self.repairs.push((now + for_ms, Repair::Equivocation(leader)));
            }
            FaultKind::StampAhead { for_ms } => {
                let Some(leader) = self.leader else { return false };
                self.event(format!("n{leader} stamps its entries 200 days ahead for {for_ms} ms"));
                synod_node::faults::switch_for_node(leader, synod_node::faults::STAMP_FAR_AHEAD, true)
                    .expect("a known fault");
                self.repairs.push((now + for_ms, Repair::StampAhead(leader)));
            }
            FaultKind::Byzantine { forgery } => {
                let leader = self.leader.unwrap_or(1);
                self.history.borrow_mut().forgery_queue.push_back((fault.id, *forgery, leader));
            }
        }
        true
    }

    /// Crashes node `id` (losing its unsynced writes) until `restart_at_ms`.
    fn crash(&mut self, id: NodeId, restart_at_ms: u64, restart: Restart) {
        // The signer's list of released shares lives in memory: collect it first.
        self.observer.harvest(&self.machines[id as usize - 1]);
        self.sim.crash(net::node_name(id));
        let m = &self.machines[id as usize - 1];
        *m.node.lock().expect("node slot") = None;
        m.disk.crash();
        self.down.insert(id, (restart_at_ms, restart));
    }

    /// Crashes the nodes stopped at a named fault point, then says whether
    /// another point may fire before the next step.
    fn crash_at_points(&mut self, window_open: bool) {
        let queue = std::mem::take(&mut self.points.lock().expect("fault points").queue);
        for (id, name) in queue {
            let down_ms = 200 + self.points.lock().expect("fault points").rng.next_u64() % 3_000;
            self.count("crash_point");
            self.event(format!("fault point {name} on n{id}: crash, restart in {down_ms} ms"));
            if self.is_up(id) {
                self.crash(id, self.now_ms() + down_ms, Restart::SameDisk);
            }
        }
        let room = self.down.len() + self.catching_up.len() < self.minority();
        self.points.lock().expect("fault points").allowed = window_open && room;
    }

    /// Restarts nodes whose downtime is over and undoes expired network faults.
    fn recover_due(&mut self, force: bool) {
        let now = self.now_ms();
        let restarts: Vec<(NodeId, Restart)> = self
            .down
            .iter()
            .filter(|(_, (at, _))| force || *at <= now)
            .map(|(id, (_, restart))| (*id, restart.clone()))
            .collect();
        for (id, restart) in restarts {
            self.down.remove(&id);
            let disk = &self.machines[id as usize - 1].disk;
            let on = match &restart {
                Restart::SameDisk => "",
                Restart::EmptyDisk => {
                    disk.wipe();
                    " on an empty disk"
                }
                Restart::RolledBack(copy) => {
                    disk.roll_back(copy);
                    " on an earlier copy of its disk"
                }
            };
            if !matches!(restart, Restart::SameDisk) {
                let target = self.observer.committed.keys().next_back().copied().unwrap_or(0);
                self.catching_up.insert(id, target);
            }
            self.sim.bounce(net::node_name(id));
            self.event(format!("restart n{id}{on}"));
        }
        let (due, later): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.repairs).into_iter().partition(|(at, _)| force || *at <= now);
        self.repairs = later;
        for (_, repair) in due {
            match repair {
                Repair::RollBack { id, copy, down_ms } => {
                    // Like a wipe, a rolled-back disk counts against the minority
                    // until it has caught up; at the heal it is not rolled back.
                    if force || !self.is_up(id) || self.down.len() + self.catching_up.len() >= self.minority() {
                        self.event(format!("n{id}'s disk is not rolled back (down, or no room for another fault)"));
                        continue;
                    }
                    // A key of threshold t over n nodes spares n − t shares, and the byzantine
                    // signer and the run's wipe take them: a copy older than a share sealed
                    // since would leave a key that cannot sign.
                    if self.machines[id as usize - 1].disk.copy_lacks_secrets(&copy) {
                        self.count("skipped");
                        self.event(format!("n{id}'s disk is not rolled back: the copy predates a key share it holds"));
                        continue;
                    }
                    self.count("disk_rollback_done");
                    self.event(format!("n{id} crashes; it restarts on the earlier copy of its disk in {down_ms} ms"));
                    self.crash(id, now + down_ms, Restart::RolledBack(copy));
                }
                Repair::Partition(pairs) => {
                    for (a, b) in pairs {
                        self.sim.repair(net::node_name(a), net::node_name(b));
                    }
                    self.partitioned = false;
                    self.event("partition healed");
                }
                Repair::OneWay(from, to) => {
                    self.sim.repair_oneway(net::node_name(from), net::node_name(to));
                    self.partitioned = false;
                    self.event(format!("one-way partition n{from}->n{to} healed"));
                }
                Repair::Slow(id) => {
                    self.net.lock().expect("net").set_slow(id, None);
                    self.event(format!("n{id} no longer slow"));
                }
                Repair::Equivocation(id) => {
                    self.net.lock().expect("net").set_equivocating(None);
                    self.event(format!("n{id} no longer equivocates"));
                }
                Repair::StampAhead(id) => {
                    synod_node::faults::switch_for_node(id, synod_node::faults::STAMP_FAR_AHEAD, false)
                        .expect("a known fault");
                    self.event(format!("n{id} stamps honestly again"));
                }
            }
        }
    }

    /// Ends the fault window: every network fault undone, every node restarted.
    fn heal(&mut self) {
        self.crash_at_points(false);
        self.recover_due(true);
        self.net.lock().expect("net").heal();
        let now = self.now_ms();
        self.history.borrow_mut().phase = Phase::Healed { at_ms: now };
        self.event("heal: faults stop; liveness phase");
    }

    /// Observes the nodes and runs every checker.
    fn check(&mut self) -> Result<Vec<NodeView>, Violation> {
        let now = self.now_ms();
        {
            let net = self.net.lock().expect("net");
            if net.equivocations != self.equivocations {
                self.equivocations = net.equivocations.clone();
            }
        }
        let views = self.observer.observe(&self.machines, now, &mut self.trace.borrow_mut());
        self.leader = views.iter().filter(|v| v.role == ServerState::Leader).max_by_key(|v| v.term).map(|v| v.id);
        for v in &views {
            if let Some(target) = self.catching_up.get(&v.id) {
                if v.applied.unwrap_or(0) >= *target {
                    self.catching_up.remove(&v.id);
                }
            }
        }
        let history = self.history.borrow();
        let step = Step {
            now_ms: now,
            nodes: &views,
            committed: &self.observer.committed,
            history: &history,
            admins: &self.admins,
            releases: &self.observer.releases,
            equivocations: &self.equivocations,
        };
        for c in &mut self.checkers {
            c.check_step(&step)?;
        }
        drop(history);
        self.observer.commit(&views);
        Ok(views)
    }

    fn final_check(&mut self, views: &[NodeView]) -> Result<(), Violation> {
        for m in &self.machines {
            self.observer.harvest(m);
        }
        let history = self.history.borrow();
        let step = Step {
            now_ms: self.now_ms(),
            nodes: views,
            committed: &self.observer.committed,
            history: &history,
            admins: &self.admins,
            releases: &self.observer.releases,
            equivocations: &self.equivocations,
        };
        for c in &mut self.checkers {
            c.check_final(&step)?;
        }
        Ok(())
    }

    /// One simulation step, then the checks.
    fn step(&mut self) -> Result<(bool, Vec<NodeView>), Violation> {
        let elapsed = self.sim.elapsed().as_millis() as u64;
        self.now.store(elapsed, Ordering::Relaxed);
        let finished = self.sim.step().map_err(|e| Violation::new_host(e.to_string()))?;
        Ok((finished, self.check()?))
    }

    /// The run after genesis setup; returns at the first violation.
    fn drive(&mut self) -> Result<(), Violation> {
        // Genesis, then the signing key, before any fault.
        while self.history.borrow().phase == Phase::Boot {
            self.step()?;
            if self.now_ms() > GENESIS_BOUND_MS {
                return Err(Violation::liveness(format!("genesis was not committed within {GENESIS_BOUND_MS} ms")));
            }
        }
        let keygen_bound = self.now_ms() + GENESIS_BOUND_MS;
        while checker::signing_enabled(self.cfg) && !self.history.borrow().keys.contains_key(workload::KEY_NAME) {
            self.step()?;
            if self.now_ms() > keygen_bound {
                return Err(Violation::key_liveness(format!(
                    "without any fault, key {} was not active {GENESIS_BOUND_MS} ms after genesis",
                    workload::KEY_NAME
                )));
            }
        }
        {
            let mut history = self.history.borrow_mut();
            history.phase = Phase::Chaos;
            history.window_at_ms = self.now_ms();
        }
        self.event("fault window opens");
        self.net.lock().expect("net").open_window();
        let heal_at = self.history.borrow().window_at_ms + self.cfg.plan.window_ms;
        // The fault window.
        while self.now_ms() < heal_at {
            self.fire_due();
            self.recover_due(false);
            self.crash_at_points(true);
            self.step()?;
        }
        self.heal();
        // Liveness: every client finishes its pending and remaining writes.
        let deadline = heal_at + self.cfg.liveness_bound_ms;
        loop {
            let (finished, _) = self.step()?;
            if finished {
                break;
            }
            if self.now_ms() > deadline {
                let history = self.history.borrow();
                let pending: Vec<String> = history.pending.values().cloned().collect();
                let signing: Vec<&String> = history.sign_pending.keys().collect();
                let keys: Vec<&str> =
                    checker::expected_keys(self.cfg).into_iter().filter(|k| !history.keys.contains_key(*k)).collect();
                let key = if keys.is_empty() { String::new() } else { format!("; keys not active: {keys:?}") };
                return Err(Violation::liveness(format!(
                    "{} ms after the heal, with every node up, clients have not finished: writes pending \
                     {pending:?}; sign requests pending {signing:?}{key}",
                    self.cfg.liveness_bound_ms
                )));
            }
        }
        self.event("liveness: every client finished");
        // Convergence: every node applies up to the same index.
        let deadline = self.now_ms() + self.cfg.liveness_bound_ms;
        loop {
            let (_, views) = self.step()?;
            let applied: BTreeSet<Option<u64>> = views.iter().map(|v| v.applied).collect();
            if views.len() == self.cfg.nodes as usize && applied.len() == 1 {
                self.event(format!("converged at {:?}", applied.first().copied().flatten()));
                return self.final_check(&views);
            }
            if self.now_ms() > deadline {
                return Err(Violation::liveness(format!("nodes did not converge after the heal: applied {applied:?}")));
            }
        }
    }
}

impl Violation {
    fn liveness(detail: String) -> Violation {
        Violation { invariant: "liveness-after-heal", detail }
    }

    fn key_liveness(detail: String) -> Violation {
        Violation { invariant: "key-generation-liveness", detail }
    }

    fn new_host(detail: String) -> Violation {
        Violation { invariant: "node-software-failed", detail }
    }
}

/// One client's run, as a task of the clients' host.
type ClientTask = std::pin::Pin<Box<dyn std::future::Future<Output = turmoil::Result> + 'static>>;

/// Runs every client as its own task and ends when all have; the first error
/// (in client order) is the host's.
async fn run_clients(clients: Vec<(String, ClientTask)>) -> turmoil::Result {
    let handles: Vec<(String, tokio::task::JoinHandle<turmoil::Result>)> =
        clients.into_iter().map(|(name, task)| (name, tokio::task::spawn_local(task))).collect();
    for (name, handle) in handles {
        handle.await.map_err(|e| format!("client {name} panicked: {e}"))?.map_err(|e| format!("client {name}: {e}"))?;
    }
    Ok(())
}

/// Runs one seed. Call it once per process: some libraries keep thread-local
/// RNG state that a second run in the same process would continue.
pub fn run_seed(cfg: &SimConfig, keep_trace: bool) -> SeedReport {
    assert!(synod_node::faults::built(), "the simulator needs fault injection: {}", synod_node::faults::NOT_BUILT);
    let wall = Instant::now();
    synod_proto::runtime::seed_thread_rng(cfg.seed);
    let plants: Vec<&str> = cfg.plants.iter().map(String::as_str).collect();
    synod_node::faults::set_for_process(&plants).expect("plants are validated by the caller");
    let byzantine = schedule::draw_byzantine_signer(cfg.seed, &cfg.plan, cfg.nodes).filter(|_| !cfg.honest_signers);
    if let Some((node, lie)) = byzantine {
        synod_node::faults::set_for_node(node, &[lie]).expect("byzantine behaviours are known faults");
    }
    let points = install_point_hook(cfg.seed, &cfg.plan, cfg.skip_points.clone());
    let forger = schedule::draw_snapshot_forger(cfg.seed, &cfg.plan, cfg.nodes);

    let mut sim = turmoil::Builder::new()
        .rng_seed(cfg.seed)
        .epoch(UNIX_EPOCH + Duration::from_millis(EPOCH_MS))
        .tick_duration(Duration::from_millis(1))
        .simulation_duration(Duration::from_secs(24 * 3600))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(3))
        .build();

    let counts: FaultCounts = Default::default();
    let net = NetFaults::new(cfg.seed, cfg.plan.clone(), counts.clone());
    let now = Arc::new(AtomicU64::new(0));
    let trace: SharedTrace = Default::default();
    let history = History::new();
    let machines: Vec<Machine> = (1..=cfg.nodes).map(Machine::new).collect();
    // The cluster CA and node certificates, from the seed like everything else.
    let ids: Vec<u64> = machines.iter().map(|m| m.id).collect();
    let (ca_der, identities) =
        synod_node::pki::in_memory_pki(&ids, &mut ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x7061_6b69)).expect("sim PKI");
    let mut key_rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x6b65_7973);
    let mut key = || {
        let mut bytes = [0u8; 32];
        key_rng.fill_bytes(&mut bytes);
        SigningKey::from_bytes(&bytes)
    };
    let (admin, stranger) = (key(), key());
    let approvers = workload::APPROVERS.iter().map(|_| key()).collect();
    let mut passkey = synod_proto::webauthn::soft::SoftAuthenticator::new(
        synod_proto::webauthn::soft::SoftAlgorithm::Es256,
        &mut ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x7061_7373),
    );
    // A counter that starts above 0, so every assertion's counter is one the state must see grow.
    passkey.set_counter(1);
    let identities: Vec<Arc<synod_node::pki::NodeIdentity>> = identities.into_iter().map(Arc::new).collect();
    for (m, identity) in machines.iter().zip(identities.iter().cloned()) {
        let boot = Boot {
            machine: m.clone(),
            seed: cfg.seed,
            now: now.clone(),
            net: net.clone(),
            tuning: cfg.tuning.clone(),
            identity,
            genesis_admin: OperatorKey::of(&admin),
            forges_snapshots: forger == Some(m.id),
        };
        sim.host(net::node_name(m.id), move || cluster::run_node(boot.clone()));
    }

    let cluster_name = format!("sim-{}", cfg.seed);
    let ca_certificate = hex::encode(&ca_der);
    let genesis = {
        let of = workload::GenesisOf { nodes: cfg.nodes, ca_certificate: &ca_certificate, cluster_name: &cluster_name };
        workload::genesis_by(&of, &admin, &mut ChaCha8Rng::seed_from_u64(cfg.seed ^ 0xb007))
    };
    let ctx = ClientCtx {
        seed: cfg.seed,
        nodes: cfg.nodes,
        cluster_id: synod_proto::command::cluster_id_of_genesis(&genesis.envelope),
        cluster_name,
        genesis,
        ca_certificate,
        admin: admin.clone(),
        stranger,
        identities,
        approvers,
        passkey: std::rc::Rc::new(std::cell::RefCell::new(passkey)),
        net: net.clone(),
        now: now.clone(),
        history: history.clone(),
        trace: trace.clone(),
        writes_after_heal: cfg.writes_after_heal,
        signs_after_heal: cfg.signs_after_heal,
        keygen_during_faults: cfg.plan.keygen_during_faults,
    };
    // Every client runs as its own task on one turmoil host: turmoil ticks each
    // host's runtime and scans every link once per host per step, so one host
    // for all clients instead of one each makes the run about a third cheaper.
    // Clients are never partitioned (only per-message faults reach them), so
    // sharing a host changes no fault they see.
    let mut clients: Vec<(String, ClientTask)> = vec![("boot".into(), Box::pin(workload::boot_client(ctx.clone())))];
    for c in 1..=cfg.clients {
        clients.push((format!("c{c}"), Box::pin(workload::workload_client(ctx.clone(), c, Box::new(KvWorkload)))));
    }
    if checker::signing_enabled(cfg) {
        clients.push(("admin".into(), Box::pin(workload::keygen_client(ctx.clone()))));
        for s in 1..=cfg.signing_clients {
            clients.push((format!("s{s}"), Box::pin(workload::signing_client(ctx.clone(), s))));
        }
        clients.push(("approvers".into(), Box::pin(workload::approver_client(ctx.clone(), cfg.signing_clients))));
        if cfg.plan.keygen_during_faults {
            clients.push(("life".into(), Box::pin(workload::lifecycle_client(ctx.clone()))));
        }
    }
    clients.push(("adversary".into(), Box::pin(workload::adversary(ctx))));
    sim.client(net::CLIENTS_HOST, run_clients(clients));

    let schedule = schedule::draw(cfg.seed, &cfg.plan, cfg.nodes);
    {
        let mut t = trace.borrow_mut();
        t.event(0, format!("seed {} profile {} nodes {} plants {:?}", cfg.seed, cfg.profile, cfg.nodes, cfg.plants));
        if let Some((node, lie)) = byzantine {
            t.event(0, format!("byzantine signer n{node}: {lie} for the whole run"));
            net::count(&counts, "byzantine_signer");
        } else if cfg.honest_signers {
            t.event(0, "no byzantine signer (--honest-signers)");
        }
        if let Some(node) = forger {
            t.event(0, format!("snapshot forger n{node}: sends forged and stale snapshots while the window is open"));
        }
        for f in &schedule {
            let skipped = if cfg.skip_faults.contains(&f.id) { " (skipped)" } else { "" };
            t.event(0, format!("schedule {f}{skipped}"));
        }
    }
    let mut driver = Driver {
        cfg,
        sim,
        machines,
        net,
        counts: counts.clone(),
        trace: trace.clone(),
        history: history.clone(),
        now,
        schedule,
        fired: Vec::new(),
        down: BTreeMap::new(),
        catching_up: BTreeMap::new(),
        repairs: Vec::new(),
        partitioned: false,
        observer: Observer::default(),
        equivocations: BTreeMap::new(),
        points,
        checkers: checker::all(cfg),
        admins: [OperatorKey::of(&admin)].into_iter().collect(),
        leader: None,
    };
    let result = driver.drive();
    let sim_ms = driver.now_ms();
    if let Err(v) = &result {
        // Keys still generating, as each node sees them: what a stuck generation waits for.
        for m in &driver.machines {
            let Some(node) = m.running() else { continue };
            let applied = node.state().read();
            for key in applied.state.keys.values().filter(|k| k.status != synod_node::state::KeyStatus::Active) {
                let round1: Vec<&NodeId> = key.round1.keys().collect();
                driver.event(format!(
                    "n{}: key {} {:?}: round-1 packages from {round1:?}, confirmed by {:?}",
                    m.id, key.name, key.status, key.confirmed
                ));
            }
        }
        driver.event(format!("VIOLATION {}: {}", v.invariant, v.detail));
    }
    let entries_applied = driver.observer.committed.keys().next_back().copied().unwrap_or(0);
    let shares = driver.observer.shares_released;
    let culprits = driver
        .machines
        .iter()
        .find_map(|m| m.running())
        .map_or(0, |node| node.state().read().state.requests.values().filter(|r| !r.culprits.is_empty()).count());
    // minisign global signatures as the same node ends with them (no client can send one again).
    let globals_final: Vec<String> = driver.machines.iter().find_map(|m| m.running()).map_or(Vec::new(), |node| {
        let applied = node.state().read();
        let globals =
            applied.state.requests.values().filter(|r| r.format.as_ref().is_some_and(|f| f.global_of.is_some()));
        globals.map(|r| format!("minisign-global-final/{}", status_word(&r.status))).collect()
    });
    let fired = driver.fired.clone();
    let fired_points = driver.points.lock().expect("fault points").fired.iter().map(|n| n.to_string()).collect();
    drop(driver);
    let faults = counts.lock().expect("counts").iter().map(|(k, v)| (k.to_string(), *v)).collect();
    let history = history.borrow();
    let trace = trace.borrow();
    SeedReport {
        seed: cfg.seed,
        violation: result.err(),
        trace_hash: trace.hash(),
        trace_lines: trace.len(),
        tail: trace.tail(TAIL_LINES),
        writes_acked: history.acks.len(),
        lookups: history.lookups.len(),
        signatures: history.sign_acks.iter().filter(|a| !a.retry).count(),
        shares,
        entries_applied,
        forgeries: history.forged.len(),
        culprits,
        faults,
        formats: format_counts(&history, globals_final),
        fired,
        fired_points,
        byzantine_signer: byzantine.is_some(),
        sim_ms,
        wall_ms: wall.elapsed().as_millis() as u64,
        replay: cfg.replay_command(),
        trace: keep_trace.then(|| trace.lines().to_vec()),
    }
}

/// What the clients sent by format, with the format probes by kind and whether they were refused.
fn format_counts(history: &History, globals_final: Vec<String>) -> BTreeMap<String, u64> {
    let mut counts = history.format_counts.clone();
    for label in globals_final {
        *counts.entry(label).or_default() += 1;
    }
    for probe in history.format_probes.values() {
        let answer = match &probe.answer {
            Some(Err(_)) => "refused",
            Some(Ok(_)) => "applied",
            None => "unanswered",
        };
        *counts.entry(format!("probe-{:?}/{answer}", probe.kind).to_lowercase()).or_default() += 1;
    }
    counts
}

fn status_word(status: &synod_node::state::RequestStatus) -> &'static str {
    match status {
        synod_node::state::RequestStatus::Pending => "pending",
        synod_node::state::RequestStatus::Signed { .. } => "signed",
        synod_node::state::RequestStatus::Failed { .. } => "failed",
    }
}

/// Trace is used by the driver through [`SharedTrace`]; re-exported for tests.
pub type TraceLog = Trace;

//! The fault schedule: a list of fault events drawn, before the run starts,
//! from an RNG seeded only by the run's seed, and triggered by simulated time
//! or by workload progress (acknowledged writes), never by wall time.
//!
//! Every event has an id; `--skip-faults` leaves events out by id without
//! changing the others, which is how a failing schedule is shrunk and replayed.

use std::fmt;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use synod_proto::NodeId;

use crate::config::FaultPlan;

/// Which node a fault hits; the leader is resolved when the fault fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Leader,
    Node(NodeId),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Leader => f.write_str("leader"),
            Target::Node(id) => write!(f, "n{id}"),
        }
    }
}

/// What a byzantine leader slips into the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forgery {
    /// A write signed by a key that is not an admin's.
    NonAdminWrite,
    /// A membership change signed by a key that is not an admin's.
    NonAdminMember,
    /// An admin's write whose envelope was altered after signing.
    Tampered,
    /// An admin's write that was already applied, proposed again.
    Replay,
    /// A signing outcome "from" the leader that proposes it (a `sign_failed`
    /// for a request the approvers withhold) signed by a key that is not that
    /// node's, with certificate bytes that are no certificate.
    NodeOutcome,
    /// A compromised member's signing outcome: a `sign_failed` for a request
    /// the approvers withhold, signed with a follower's real certificate and
    /// key, for a request that follower does not coordinate (the leader took
    /// up signing in its term).
    MemberOutcome,
}

impl Forgery {
    pub const ALL: [Forgery; 6] = [
        Forgery::NonAdminWrite,
        Forgery::NonAdminMember,
        Forgery::Tampered,
        Forgery::Replay,
        Forgery::NodeOutcome,
        Forgery::MemberOutcome,
    ];
}

/// One kind of scheduled fault, with its parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Cuts `side` off from the other nodes, both ways, for `heal_after_ms`.
    Partition { side: Vec<Target>, heal_after_ms: u64 },
    /// Drops everything `from` sends to `to` for `heal_after_ms`.
    OneWay { from: Target, to: Target, heal_after_ms: u64 },
    /// Crashes a node (losing unsynced writes) and restarts it after `down_ms`,
    /// on an empty disk if `wipe`.
    Crash { node: Target, down_ms: u64, wipe: bool },
    /// Copies a node's disk now; `copy_age_ms` later crashes the node and
    /// restarts it after `down_ms` on that copy.
    RollBack { node: Target, copy_age_ms: u64, down_ms: u64 },
    /// Sets a node's clock offset.
    ClockSkew { node: NodeId, offset_ms: i64 },
    /// Moves a node's clock by `jump_ms` at once.
    ClockJump { node: NodeId, jump_ms: i64 },
    /// Adds `extra_ms` to every message to or from a node, for `for_ms`.
    Slow { node: Target, extra_ms: u64, for_ms: u64 },
    /// The current leader proposes a forged entry.
    Byzantine { forgery: Forgery },
    /// The current leader stamps its entries 200 days ahead for `for_ms`.
    StampAhead { for_ms: u64 },
    /// The current leader equivocates for `for_ms`: `victims` of its followers
    /// (from the `rotation`-th on, in id order) get `put` entries altered.
    Equivocate { victims: u64, rotation: u64, for_ms: u64 },
}

impl FaultKind {
    /// A short name, for counts.
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::Partition { .. } => "partition",
            FaultKind::OneWay { .. } => "one_way_partition",
            FaultKind::Crash { wipe: false, .. } => "crash_restart",
            FaultKind::Crash { wipe: true, .. } => "crash_wipe_restart",
            FaultKind::RollBack { .. } => "disk_rollback",
            FaultKind::ClockSkew { .. } => "clock_skew",
            FaultKind::ClockJump { .. } => "clock_jump",
            FaultKind::Slow { .. } => "slow_node",
            FaultKind::Byzantine { .. } => "byzantine_proposal",
            FaultKind::Equivocate { .. } => "equivocating_leader",
            FaultKind::StampAhead { .. } => "time_leader",
        }
    }
}

/// When a fault fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// At this many ms after genesis.
    AtMs(u64),
    /// When this many writes have been acknowledged.
    AfterAcks(u64),
}

/// One scheduled fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub id: usize,
    pub trigger: Trigger,
    pub kind: FaultKind,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let when = match self.trigger {
            Trigger::AtMs(ms) => format!("t+{ms}ms"),
            Trigger::AfterAcks(n) => format!("after {n} acks"),
        };
        write!(f, "#{} {when}: {:?}", self.id, self.kind)
    }
}

/// Draws the schedule for `plan` over `nodes` nodes.
pub fn draw(seed: u64, plan: &FaultPlan, nodes: u64) -> Vec<Fault> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7363_6865_6475_6c65);
    let mut r = |n: u64| if n == 0 { 0 } else { rng.next_u64() % n };
    let window = plan.window_ms.max(1);
    let minority = (nodes - 1) / 2;
    let mut kinds = Vec::new();
    for _ in 0..plan.partitions {
        let side = if r(2) == 0 {
            vec![Target::Leader]
        } else {
            let size = 1 + r(minority.max(1));
            let mut side: Vec<Target> = Vec::new();
            while (side.len() as u64) < size {
                let t = Target::Node(1 + r(nodes));
                if !side.contains(&t) {
                    side.push(t);
                }
            }
            side
        };
        kinds.push(FaultKind::Partition { side, heal_after_ms: 500 + r(3_000) });
    }
    for _ in 0..plan.one_way_partitions {
        let from = if r(2) == 0 { Target::Leader } else { Target::Node(1 + r(nodes)) };
        let to = Target::Node(1 + r(nodes));
        kinds.push(FaultKind::OneWay { from, to, heal_after_ms: 500 + r(3_000) });
    }
    for i in 0..plan.crashes + plan.wipes {
        let node = if r(2) == 0 { Target::Leader } else { Target::Node(1 + r(nodes)) };
        kinds.push(FaultKind::Crash { node, down_ms: 200 + r(3_000), wipe: i >= plan.crashes });
    }
    for _ in 0..plan.rollbacks {
        let node = if r(2) == 0 { Target::Leader } else { Target::Node(1 + r(nodes)) };
        kinds.push(FaultKind::RollBack { node, copy_age_ms: 1_000 + r(7_000), down_ms: 100 + r(1_500) });
    }
    for _ in 0..plan.clock_skews {
        let offset_ms = r(2 * plan.clock_skew_ms_max as u64 + 1) as i64 - plan.clock_skew_ms_max;
        kinds.push(FaultKind::ClockSkew { node: 1 + r(nodes), offset_ms });
    }
    for _ in 0..plan.clock_jumps {
        let jump_ms = r(2 * plan.clock_jump_ms_max as u64 + 1) as i64 - plan.clock_jump_ms_max;
        kinds.push(FaultKind::ClockJump { node: 1 + r(nodes), jump_ms });
    }
    for _ in 0..plan.slow_nodes {
        let node = if r(2) == 0 { Target::Leader } else { Target::Node(1 + r(nodes)) };
        kinds.push(FaultKind::Slow { node, extra_ms: 20 + r(300), for_ms: 1_000 + r(4_000) });
    }
    for _ in 0..plan.byzantine_proposals {
        kinds.push(FaultKind::Byzantine { forgery: Forgery::ALL[r(Forgery::ALL.len() as u64) as usize] });
    }
    for _ in 0..plan.equivocations {
        // At least one follower gets the altered entries and at least one the originals.
        let victims = 1 + r(nodes.saturating_sub(2).max(1));
        kinds.push(FaultKind::Equivocate { victims, rotation: r(nodes), for_ms: 500 + r(2_500) });
    }
    for _ in 0..plan.time_leaders {
        kinds.push(FaultKind::StampAhead { for_ms: 1_000 + r(4_000) });
    }
    let mut faults: Vec<Fault> = kinds
        .into_iter()
        .map(|kind| {
            // A third of the faults wait for workload progress rather than a time.
            let trigger = if r(3) == 0 { Trigger::AfterAcks(1 + r(window / 40)) } else { Trigger::AtMs(r(window)) };
            Fault { id: 0, trigger, kind }
        })
        .collect();
    faults.sort_by_key(|f| match f.trigger {
        Trigger::AtMs(ms) => (0, ms),
        Trigger::AfterAcks(n) => (1, n),
    });
    for (id, fault) in faults.iter_mut().enumerate() {
        fault.id = id;
    }
    faults
}

/// The byzantine signer of a run, if the plan has one: which node, and which
/// of `synod_node::faults::BYZANTINE_SIGNER` it does. From its own RNG, so the
/// fault schedule does not depend on it.
pub fn draw_byzantine_signer(seed: u64, plan: &FaultPlan, nodes: u64) -> Option<(NodeId, &'static str)> {
    if plan.byzantine_signers == 0 || nodes < 3 {
        return None;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6279_7a61_6e74_696e);
    let node = 1 + rng.next_u64() % nodes;
    let lies = synod_node::faults::BYZANTINE_SIGNER;
    Some((node, lies[(rng.next_u64() % lies.len() as u64) as usize]))
}

/// The node that sends forged and stale snapshots, if the plan has one.
pub fn draw_snapshot_forger(seed: u64, plan: &FaultPlan, nodes: u64) -> Option<NodeId> {
    if plan.snapshot_forgers == 0 || nodes < 3 {
        return None;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x736e_6170_666f_7267);
    Some(1 + rng.next_u64() % nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_same_seed_same_schedule() {
        // The schedule is a function of the seed and the plan alone.
        let plan = FaultPlan::chaos();
        assert_eq!(draw(9, &plan, 5), draw(9, &plan, 5));
        assert_ne!(draw(9, &plan, 5), draw(10, &plan, 5));
        assert!(draw(9, &FaultPlan::none(), 5).is_empty());
    }

    #[test]
    fn schedule_one_byzantine_signer_at_most() {
        // Chaos makes one node per seed a byzantine signer, with a known lie; quiet makes none.
        for seed in 0..50 {
            let (node, lie) = draw_byzantine_signer(seed, &FaultPlan::chaos(), 5).expect("chaos has one");
            assert!((1..=5).contains(&node));
            assert!(synod_node::faults::BYZANTINE_SIGNER.contains(&lie));
        }
        assert_eq!(draw_byzantine_signer(1, &FaultPlan::none(), 5), None);
    }
}

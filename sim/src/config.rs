//! What a run simulates: the profile, the fault plan and the cluster shape.

use std::collections::BTreeSet;
use std::fmt;

use synod_node::config::RaftTuning;

/// A named set of fault knobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// No faults at all: a baseline that must always pass and converge quickly.
    Quiet,
    /// Every fault kind switched on, restarts on an empty disk included.
    Chaos,
}

impl Profile {
    pub const ALL: [Profile; 2] = [Profile::Quiet, Profile::Chaos];

    pub fn name(self) -> &'static str {
        match self {
            Profile::Quiet => "quiet",
            Profile::Chaos => "chaos",
        }
    }

    pub fn parse(text: &str) -> Result<Profile, String> {
        Profile::ALL.into_iter().find(|p| p.name() == text).ok_or_else(|| {
            let names: Vec<_> = Profile::ALL.iter().map(|p| p.name()).collect();
            format!("unknown profile {text:?}; known profiles: {}", names.join(", "))
        })
    }

    /// The fault plan this profile stands for.
    pub fn plan(self) -> FaultPlan {
        match self {
            Profile::Quiet => FaultPlan::none(),
            Profile::Chaos => FaultPlan::chaos(),
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Every fault's knob. Per-message faults are probabilities applied to each
/// call while the fault window is open; scheduled faults are counts of events
/// the schedule places inside the window; a byzantine signer lies for the
/// whole run; named fault points fire while the window is open.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultPlan {
    /// How long the fault window lasts after genesis, in simulated ms; then
    /// everything heals and the liveness phase starts.
    pub window_ms: u64,
    /// Probability that a request is lost (the caller times out).
    pub request_loss: f64,
    /// Probability that a response is lost after the callee acted on the request.
    pub response_loss: f64,
    /// Probability that a request is delivered twice (two connections).
    pub duplicate: f64,
    /// Uniform extra delay before each message, in ms: reorders concurrent calls.
    pub jitter_ms_max: u64,
    /// Probability of a delay spike on a message.
    pub spike: f64,
    /// Largest delay spike, in ms.
    pub spike_ms_max: u64,
    /// Symmetric partitions (a minority, or the current leader, cut off).
    pub partitions: u32,
    /// One-way partitions (one node cannot send to another).
    pub one_way_partitions: u32,
    /// Crashes followed by a restart on the same disk, losing unsynced writes.
    pub crashes: u32,
    /// Crashes followed by a restart on an empty disk.
    pub wipes: u32,
    /// Disk rollbacks: a copy of a node's disk is taken, and 1 to 8 s later
    /// the node is crashed and restarted on that copy, which has lost the
    /// votes and entries written since (a restored backup or VM snapshot).
    pub rollbacks: u32,
    /// Clock skews (a node's clock set off by up to `clock_skew_ms_max`).
    pub clock_skews: u32,
    /// Clock jumps (a node's clock moved by up to `clock_jump_ms_max` at once).
    pub clock_jumps: u32,
    pub clock_skew_ms_max: i64,
    pub clock_jump_ms_max: i64,
    /// Periods in which one node's messages are slowed down.
    pub slow_nodes: u32,
    /// Entries proposed by a byzantine leader: not signed by an admin, tampered
    /// after signing, or replayed.
    pub byzantine_proposals: u32,
    /// Probability that a signer's answer to a signing round 2 (`SignShare`) is
    /// lost after it released its share: the coordinator hears nothing and
    /// retries the request in a new session, which is where nonces could be
    /// misused. On top of `response_loss`.
    pub share_answer_loss: f64,
    /// Whether a second key is generated while the faults are on (the first is
    /// always generated before the fault window opens, so that signing runs
    /// through the whole window).
    pub keygen_during_faults: bool,
    /// Periods in which the leader equivocates: it sends some followers `put`
    /// entries altered after the admin signed them, with the original's index
    /// and term, and the others the original.
    pub equivocations: u32,
    /// Periods in which the current leader stamps the entries it proposes 200
    /// days ahead of its clock (a byzantine leader moving the cluster's time),
    /// each lasting 1 to 5 s.
    pub time_leaders: u32,
    /// Byzantine signers (0 or 1: keys are a majority threshold, and a lying
    /// signer must not stop signing). The node and its lie (invalid shares, or
    /// commitments it holds no nonces for) are drawn from the seed; it lies for
    /// the whole run, heal included.
    pub byzantine_signers: u32,
    /// Nodes that send forged and stale snapshots (0 or 1, drawn from the seed):
    /// while the window is open, every 1 to 3 s it sends every other member a
    /// state of its own making under a much higher term, endorsed by itself
    /// only, and the newest genuinely endorsed snapshot it holds.
    pub snapshot_forgers: u32,
    /// Crashes at named fault points (`synod_node::faults::POINTS`): at most
    /// this many per run, each point at most once.
    pub crash_points: u32,
    /// Probability that a node reaching a named fault point crashes there
    /// (while the window is open and the crash budget allows).
    pub crash_point_p: f64,
}

impl FaultPlan {
    /// No faults.
    pub fn none() -> FaultPlan {
        FaultPlan {
            window_ms: 8_000,
            request_loss: 0.0,
            response_loss: 0.0,
            duplicate: 0.0,
            jitter_ms_max: 0,
            spike: 0.0,
            spike_ms_max: 0,
            partitions: 0,
            one_way_partitions: 0,
            crashes: 0,
            wipes: 0,
            rollbacks: 0,
            clock_skews: 0,
            clock_jumps: 0,
            clock_skew_ms_max: 0,
            clock_jump_ms_max: 0,
            slow_nodes: 0,
            byzantine_proposals: 0,
            share_answer_loss: 0.0,
            keygen_during_faults: false,
            equivocations: 0,
            time_leaders: 0,
            byzantine_signers: 0,
            snapshot_forgers: 0,
            crash_points: 0,
            crash_point_p: 0.0,
        }
    }

    /// Every fault on.
    pub fn chaos() -> FaultPlan {
        FaultPlan {
            window_ms: 20_000,
            request_loss: 0.02,
            response_loss: 0.02,
            duplicate: 0.02,
            jitter_ms_max: 4,
            spike: 0.01,
            spike_ms_max: 400,
            partitions: 3,
            one_way_partitions: 2,
            crashes: 3,
            wipes: 1,
            rollbacks: 2,
            clock_skews: 2,
            clock_jumps: 2,
            clock_skew_ms_max: 10_000,
            clock_jump_ms_max: 60_000,
            slow_nodes: 2,
            byzantine_proposals: 4,
            share_answer_loss: 0.2,
            keygen_during_faults: true,
            equivocations: 1,
            time_leaders: 1,
            byzantine_signers: 1,
            snapshot_forgers: 1,
            crash_points: 6,
            crash_point_p: 0.05,
        }
    }
}

/// Everything one run depends on besides the code: same config, same trace.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub profile: Profile,
    pub plan: FaultPlan,
    /// Number of Raft members (all named in genesis).
    pub nodes: u64,
    /// Number of concurrent client tasks.
    pub clients: usize,
    /// Writes each client still makes after the heal (the liveness phase).
    pub writes_after_heal: u32,
    /// Concurrent signing clients (0: no key is created, nothing is signed).
    pub signing_clients: usize,
    /// Sign requests each signing client still makes after the heal.
    pub signs_after_heal: u32,
    /// After the heal, every pending write must complete within this many ms.
    pub liveness_bound_ms: u64,
    /// After the heal (or its submission, if later), every sign request must be
    /// signed within this many ms.
    pub sign_liveness_bound_ms: u64,
    /// Planted bugs switched on (names from `synod_node::faults`).
    pub plants: Vec<String>,
    /// Scheduled faults left out, by id (for shrinking and replaying a shrunk schedule).
    pub skip_faults: BTreeSet<usize>,
    /// Named fault points that never crash a node in this run (shrinking).
    pub skip_points: BTreeSet<String>,
    /// No byzantine signer, even if the plan draws one (shrinking).
    pub honest_signers: bool,
    pub tuning: RaftTuning,
}

impl SimConfig {
    pub fn new(seed: u64, profile: Profile) -> SimConfig {
        SimConfig {
            seed,
            profile,
            plan: profile.plan(),
            nodes: 5,
            clients: 3,
            writes_after_heal: 5,
            signing_clients: 2,
            signs_after_heal: 3,
            liveness_bound_ms: 30_000,
            sign_liveness_bound_ms: 20_000,
            plants: Vec::new(),
            skip_faults: BTreeSet::new(),
            skip_points: BTreeSet::new(),
            honest_signers: false,
            tuning: RaftTuning {
                // openraft checks the election timeout on a tick of 1.5 heartbeats and
                // draws each node's timeout once per boot, so the range must span many
                // ticks; with 500–1000 ms on a 150 ms tick three candidates kept
                // colliding in every term (split votes until the liveness bound).
                heartbeat_ms: 50,
                election_timeout_min_ms: 500,
                election_timeout_max_ms: 1_500,
                // Small, so that snapshots, purges and snapshot installs happen in every run.
                snapshot_every_entries: 100,
                logs_kept_after_snapshot: 20,
                snapshot_endorsements_min: 2,
                // The production default: well above the honest skews and jumps (70 s at most).
                clock_skew_ms_max: synod_node::time::CLOCK_SKEW_MS_MAX_DEFAULT,
            },
        }
    }

    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        format!("SYNOD_BUILD_FAULTS=1 cargo run -p synod-sim --release -- {}", self.args().join(" "))
    }

    /// The `synod-sim` arguments that run this configuration (the nodes
    /// flag only when it is not the default).
    pub fn args(&self) -> Vec<String> {
        let mut args = vec!["--seed".to_string(), self.seed.to_string(), "--profile".into(), self.profile.to_string()];
        if self.nodes != 5 {
            args.extend(["--nodes".into(), self.nodes.to_string()]);
        }
        for plant in &self.plants {
            args.extend(["--plant".into(), plant.clone()]);
        }
        if !self.skip_faults.is_empty() {
            let ids: Vec<String> = self.skip_faults.iter().map(|i| i.to_string()).collect();
            args.extend(["--skip-faults".into(), ids.join(",")]);
        }
        if !self.skip_points.is_empty() {
            let names: Vec<&str> = self.skip_points.iter().map(String::as_str).collect();
            args.extend(["--skip-points".into(), names.join(",")]);
        }
        if self.honest_signers {
            args.push("--honest-signers".into());
        }
        args
    }
}

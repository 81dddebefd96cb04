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
//!
//! One file per concern; [`all`] runs them in this order after every step:
//! - `raft.rs`: log and leader safety ([`RaftSafety`]).
//! - `time.rs`: state time never runs far ahead of true time ([`BoundedTime`]).
//! - `state.rs`: the replicated state: agreement, acknowledged writes kept,
//!   forged and altered commands refused.
//! - `outcomes.rs`: what nodes answer about a command (`GetCommand`) matches
//!   the committed log ([`CommandOutcomesMatchLog`]).
//! - `formats.rs`: signing formats (rules 9): requests' bytes parse as their
//!   declared format, which their key's policy allows; minisign's global
//!   signature signs exactly its parent's signature and trusted comment;
//!   malformed requests never accepted ([`FormatsHold`]).
//! - `passkeys.rs`: passkey approvals verify as WebAuthn assertions over the statement's
//!   hash, and a credential's counters grow in log order ([`PasskeysHold`]).
//! - `signing.rs`: nonce single use, one message and one signature per
//!   request, signatures verify, no share without a met policy.
//! - `lifecycle.rs`: a key disabled, scheduled for destruction, destroyed or
//!   retired in a signer's own state releases nothing.
//! - `versions.rs`: one primary per key, the newest active version; no
//!   request taken on a version past its retirement.
//! - `generations.rs`: a key's group key never changes across refreshes;
//!   every share released verifies against the generation current in the
//!   releasing signer's own state.
//! - `blame.rs`: only the byzantine signer is ever named a culprit.
//! - `liveness.rs`: key generation and signing are live after the heal.
//!
//! `observer.rs` holds the [`Observer`], which builds each [`Step`]. This file
//! holds what they share: the [`Step`] and its views, [`Violation`], the
//! [`Checker`] trait and the list of checkers, and the state hash.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use openraft::ServerState;
use synod_node::node::Node;
use synod_node::signer::Released;
use synod_node::state::ClusterState;
use synod_proto::{NodeId, OperatorKey};

use crate::config::SimConfig;
use crate::net::Equivocation;
use crate::workload::{History, KEY_NAME, KEY_NAME_FAULTS};

mod blame;
mod formats;
mod generations;
mod lifecycle;
mod liveness;
mod observer;
mod outcomes;
mod passkeys;
mod raft;
mod signing;
mod state;
mod time;
mod versions;

pub use blame::HonestNotBlamed;
pub use formats::FormatsHold;
pub use generations::GenerationsConsistent;
pub use lifecycle::OutOfServiceReleasesNothing;
pub use liveness::SigningLiveness;
pub use observer::{Observer, HARVEST_EVERY_MS, STATE_HASH_EVERY_MS};
pub use outcomes::CommandOutcomesMatchLog;
pub use passkeys::PasskeysHold;
pub use raft::{one_leader_per_term, RaftSafety};
pub use signing::{NonceSingleUse, OneMessagePerRequest, PolicyBeforeShares, SignaturesVerify};
pub use state::{
    signing_hash, AckedWritesKept, AlteredCommandsRefused, ForgeriesRefused, RequestsBounded, StateAgreement,
};
pub use time::BoundedTime;
pub use versions::VersionsConsistent;

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
    let byzantine = crate::schedule::draw_byzantine_signer(cfg.seed, &cfg.plan, cfg.nodes).map(|(node, _)| node);
    vec![
        Box::new(RaftSafety::default()),
        // Before the signing checkers: time moved far ahead expires pending requests at once,
        // which they would report first as a request failed before its policy was met.
        Box::new(BoundedTime {
            bound_ms: (cfg.plan.clock_skew_ms_max + cfg.plan.clock_jump_ms_max) as u64 + cfg.tuning.clock_skew_ms_max,
        }),
        Box::new(StateAgreement::default()),
        Box::new(AckedWritesKept::default()),
        Box::new(CommandOutcomesMatchLog::default()),
        Box::new(ForgeriesRefused::default()),
        Box::new(RequestsBounded),
        Box::new(AlteredCommandsRefused),
        // Before the signing checkers: a request taken against its format or
        // policy is judged here, by name, before its shares are.
        Box::new(FormatsHold::default()),
        Box::new(PasskeysHold::default()),
        Box::new(NonceSingleUse::default()),
        Box::new(OneMessagePerRequest::default()),
        Box::new(SignaturesVerify::default()),
        Box::new(PolicyBeforeShares::default()),
        Box::new(OutOfServiceReleasesNothing::default()),
        Box::new(VersionsConsistent),
        Box::new(GenerationsConsistent::new(byzantine)),
        Box::new(HonestNotBlamed { byzantine }),
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

/// SHA-256 of a value, hex (of its canonical binary encoding; see [`crate::digest`]).
fn hash_value<T: serde::Serialize>(value: &T) -> String {
    crate::digest::digest_hex(value)
}

/// The hash of a state.
pub fn state_hash(state: &ClusterState) -> String {
    hash_value(state)
}

//! A running node: Raft, the state machine, the peer transport and the write
//! path, assembled from seams so the simulator can build the same thing.
//!
//! The rooms: this file builds the node and answers reads (health, status);
//! `client` serves every client call (the API and the simulator translate to it);
//! `write` is the write path (checks, proposing, forwarding); `peer` answers
//! other nodes; `vote` holds the gates that keep a node on an empty or
//! possibly rolled-back disk from voting; `loops` are the background tasks
//! (membership, election ties, keys and signing, checkpoints); `leader` hands
//! the coordinator crate its narrow context; `dkg_host` does the same for this
//! node's key generation; `backup` builds the node's signed backup.

mod backup;
mod client;
mod dkg_host;
mod figures;
mod leader;
mod lifecycle;
mod loops;
mod peer;
mod ready;
mod snapshot;
#[cfg(test)]
pub(crate) mod testing;
mod time;
mod vote;
mod write;

pub use client::{CheckpointInfo, CheckpointList, ClientResponse, AUDIT_PAGE_MAX, WAIT_MS_MAX};
use loops::{break_election_ties, keys_and_signing, reconcile_membership};
pub use peer::NodeHandler;
use vote::{BootCheck, CatchUp};
use write::RefusalBudget;
pub use write::REFUSALS_PER_MINUTE_MAX;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use synod_coordinator::Leader;
use synod_proto::api::{Health, MemberStatus, RaftRole, Status};
use synod_proto::NodeId;

use crate::config::RaftTuning;
use crate::dkg::Dkg;
use crate::pki::NodeIdentity;
use crate::raft::log_store::LogStore;
use crate::raft::network::Network;
use crate::raft::state_machine::{SharedState, StateMachine};
use crate::raft::Raft;
use crate::sealed::SealedStore;
use crate::seams::Seams;
use crate::signer::Signer;
use crate::store::Store;
use crate::transport::PeerTransport;

/// Everything a node is built from.
pub struct NodeParts {
    pub id: NodeId,
    pub store: Arc<dyn Store>,
    pub transport: Arc<dyn PeerTransport>,
    /// Secrets at rest, sealed under the node's KEK.
    pub sealed: Arc<SealedStore>,
    /// The node's certificate and key, which sign the commands it authors.
    pub identity: Arc<NodeIdentity>,
    pub seams: Seams,
    pub tuning: RaftTuning,
    /// The operator keys whose genesis this node takes (`genesis_admins` in node.toml).
    pub genesis_admins: BTreeSet<synod_proto::OperatorKey>,
}

/// How long a node-authored command stays valid.
const NODE_COMMAND_TTL_MS: u64 = 5 * 60 * 1000;
/// How often the key and signing loop runs (DKG steps, coordination, nonce clean-up).
const KEYS_TICK: Duration = Duration::from_millis(20);

/// A running node.
pub struct Node {
    pub id: NodeId,
    pub raft: Raft,
    shared: SharedState,
    transport: Arc<dyn PeerTransport>,
    sealed: Arc<SealedStore>,
    seams: Seams,
    /// Random per boot; later issues tag nonces with it so none survive a restart.
    pub incarnation: String,
    /// Set while this node started on an empty disk and has not yet caught up.
    catch_up: std::sync::Mutex<CatchUp>,
    /// Where this node stands in the boot check every start runs (its disk may be rolled back).
    boot: std::sync::Mutex<BootCheck>,
    identity: Arc<NodeIdentity>,
    /// The node's store (the audit records live in it).
    store: Arc<dyn Store>,
    /// When this node last considered an audit checkpoint (its clock, ms).
    last_checkpoint_ms: std::sync::Mutex<u64>,
    /// When this node last started key lifecycle work, and whether that work
    /// is still running (`lifecycle.rs`).
    lifecycle_last: std::sync::Mutex<Option<tokio::time::Instant>>,
    lifecycle_busy: std::sync::atomic::AtomicBool,
    /// The (key id, generation) pairs whose share this node has looked for in
    /// its sealed store this boot (a node restored from an old backup replays
    /// the log and sees each generation in turn), and the keys it found missing.
    shares_checked: std::sync::Mutex<BTreeSet<(String, u32)>>,
    shares_missing: std::sync::Mutex<BTreeSet<String>>,
    /// (key id, generation) whose older generations this node deleted this boot.
    generations_cleaned: std::sync::Mutex<BTreeSet<(String, u32)>>,
    /// The newest log time this node has seen applied, and when (monotonic):
    /// the log's clock, which read signatures may also be judged by.
    log_clock: std::sync::Mutex<(u64, tokio::time::Instant)>,
    /// Bounds how many commands this node lets into the log knowing they will be refused.
    refusals: RefusalBudget,
    signer: Signer,
    dkg: Dkg,
    refreshes: crate::refresh::Refreshes,
    repairs: crate::repair::Repairs,
    /// The leader's signing (pools, outboxes, sessions); works only while this node leads.
    leader: Arc<Leader<leader::NodeContext>>,
    /// When each peer last answered this node's Raft calls.
    peer_health: Arc<crate::raft::network::PeerHealth>,
    /// A peer silent for this long is taken to be down (several heartbeats).
    silent_limit: std::time::Duration,
    /// The operator keys whose genesis this node takes.
    genesis_admins: BTreeSet<synod_proto::OperatorKey>,
    /// This node's recorder: what `/v1/sys/metrics` serves (`crate::metrics`).
    metrics: Arc<crate::metrics::Metrics>,
    /// The last probe of which peers answer (readiness and metrics, `ready.rs`).
    probe: ready::Probe,
    /// The node itself, for the tasks it starts.
    weak_self: std::sync::Weak<Node>,
    /// A snapshot a peer is sending, collected chunk by chunk before it is checked.
    incoming: std::sync::Mutex<Option<snapshot::Incoming>>,
    /// The snapshot points this node serialised and endorsed, newest last.
    points_built: std::sync::Mutex<std::collections::BTreeMap<u64, Arc<crate::raft::snapshot::Point>>>,
    /// Whether this node may release signature shares (closed while it catches up).
    share_gate: std::sync::Mutex<snapshot::ShareGate>,
    /// The fewest members that must vouch for a snapshot (`raft.snapshot_endorsements_min`).
    endorsements_floor: usize,
    /// How far ahead of this node's clock an entry may be stamped (`raft.clock_skew_ms_max`).
    clock_skew_ms_max: u64,
    /// The leader (term, node) whose entries this node last refused as stamped too far ahead.
    time_refused: time::TimeRefused,
    /// Set while this node stays out of elections because a majority refuses
    /// its stamped time (the election tie-breaker must not switch them back on).
    time_standing_down: std::sync::atomic::AtomicBool,
    /// The term whose signing take-up this node is committing, if any, so a
    /// new leader sends one take-up at a time (see `leader.rs`).
    taking_up: std::sync::Mutex<Option<u64>>,
    /// The webhook sender (`crate::webhooks`): sends while this node leads.
    webhooks: Arc<crate::webhooks::Webhooks>,
}

impl Node {
    /// Builds the Raft instance over the given seams. Does not start serving peers.
    pub async fn start(parts: NodeParts) -> anyhow::Result<Arc<Node>> {
        let t = &parts.tuning;
        let config = openraft::Config {
            cluster_name: "synod".into(),
            heartbeat_interval: t.heartbeat_ms,
            election_timeout_min: t.election_timeout_min_ms,
            election_timeout_max: t.election_timeout_max_ms,
            max_payload_entries: synod_proto::rpc::APPEND_ENTRIES_MAX,
            snapshot_max_chunk_size: synod_proto::rpc::SNAPSHOT_CHUNK_BYTES,
            // Snapshots are built only at endorsed points, when the node asks (`snapshot`).
            snapshot_policy: openraft::SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: t.logs_kept_after_snapshot,
            purge_batch_size: 1,
            ..Default::default()
        };
        let config = Arc::new(config.validate()?);
        let (state_machine, shared) = StateMachine::open(parts.store.clone(), parts.id, t.snapshot_every_entries)?;
        let metrics = crate::metrics::Metrics::new(parts.id);
        let state_machine = state_machine.observed_by(metrics.clone());
        let mut log_store = LogStore::new(parts.store.clone()).observed_by(metrics.clone());
        let empty_disk = {
            use openraft::storage::RaftLogStorage;
            let vote = log_store.read_vote().await?;
            let log = log_store.get_log_state().await?;
            vote.is_none() && log.last_log_id.is_none() && shared.read().last_applied.is_none()
        };
        let catch_up = if empty_disk { CatchUp::AwaitingLeader } else { CatchUp::NotNeeded };
        let trust_disk = crate::faults::enabled_for(parts.id, crate::faults::TRUST_ROLLED_BACK_VOTE);
        if !trust_disk {
            vote::step_down_from_disk(&mut log_store, parts.id).await?;
        }
        let peer_health = Arc::new(crate::raft::network::PeerHealth::default());
        let network = Network::new(parts.transport.clone(), peer_health.clone());
        let raft = Raft::new(parts.id, config, network, log_store, state_machine).await?;
        let incarnation = parts.seams.random_id();
        if parts.identity.id != parts.id {
            anyhow::bail!("the node certificate names node {}, but this is node {}", parts.identity.id, parts.id);
        }
        let signer = Signer::new(
            parts.id,
            incarnation.clone(),
            shared.clone(),
            parts.sealed.clone(),
            parts.store.clone(),
            parts.seams.rng.clone(),
            crate::signer::LocalClock { clock: parts.seams.clock.clone(), skew_ms_max: parts.tuning.clock_skew_ms_max },
        );
        let id = parts.id;
        let webhooks = Arc::new(crate::webhooks::Webhooks::new(
            parts.store.clone(),
            parts.identity.clone(),
            metrics.clone(),
            parts.seams.clone(),
        ));
        let node = Arc::new_cyclic(|weak| Node {
            id: parts.id,
            raft,
            shared,
            transport: parts.transport,
            sealed: parts.sealed,
            seams: parts.seams,
            incarnation,
            catch_up: std::sync::Mutex::new(catch_up),
            boot: std::sync::Mutex::new(if trust_disk || empty_disk { BootCheck::Lifted } else { BootCheck::Waiting }),
            identity: parts.identity,
            store: parts.store.clone(),
            last_checkpoint_ms: std::sync::Mutex::new(0),
            lifecycle_last: std::sync::Mutex::new(None),
            lifecycle_busy: Default::default(),
            shares_checked: Default::default(),
            shares_missing: Default::default(),
            generations_cleaned: Default::default(),
            log_clock: std::sync::Mutex::new((0, tokio::time::Instant::now())),
            refusals: RefusalBudget::default(),
            signer,
            dkg: Dkg::default(),
            refreshes: Default::default(),
            repairs: Default::default(),
            leader: Arc::new(Leader::new(leader::NodeContext { id, node: weak.clone() })),
            peer_health,
            silent_limit: std::time::Duration::from_millis(parts.tuning.heartbeat_ms * SILENT_HEARTBEATS),
            genesis_admins: parts.genesis_admins,
            metrics,
            probe: Default::default(),
            weak_self: weak.clone(),
            incoming: std::sync::Mutex::new(None),
            points_built: std::sync::Mutex::default(),
            share_gate: std::sync::Mutex::new(snapshot::ShareGate::Open),
            endorsements_floor: parts.tuning.snapshot_endorsements_min,
            clock_skew_ms_max: parts.tuning.clock_skew_ms_max,
            time_refused: Default::default(),
            time_standing_down: Default::default(),
            taking_up: std::sync::Mutex::new(None),
            webhooks,
        });
        tokio::spawn(vote::boot_check(
            Arc::downgrade(&node),
            Duration::from_millis(parts.tuning.election_timeout_max_ms),
            Duration::from_millis(parts.tuning.heartbeat_ms * SILENT_HEARTBEATS),
        ));
        let restored = empty_disk && node.sealed.has_secrets().unwrap_or(false);
        if !empty_disk || restored {
            // The applied state may be older than what this node last applied
            // (a rolled-back disk): like a snapshot, it could show a request
            // pending that the cluster has since finished. A restored node's
            // shares are older than the log it will replay.
            node.close_share_gate("started on a disk that may have been rolled back, or restored");
        }
        tokio::spawn(snapshot::endorse_points(Arc::downgrade(&node)));
        tokio::spawn(reconcile_membership(Arc::downgrade(&node)));
        tokio::spawn(keys_and_signing(Arc::downgrade(&node)));
        tokio::spawn(break_election_ties(Arc::downgrade(&node), parts.tuning.clone()));
        tokio::spawn(time::drop_slots_on_resume(Arc::downgrade(&node)));
        tokio::spawn(figures::watch_metrics(Arc::downgrade(&node)));
        tokio::spawn(time::stand_down_when_time_refused(Arc::downgrade(&node), parts.tuning.clone()));
        tokio::spawn(crate::webhooks::run(Arc::downgrade(&node.webhooks), node.shared.clone(), {
            let weak = Arc::downgrade(&node);
            move || weak.upgrade().is_some_and(|n| n.raft.metrics().borrow().state == ServerState::Leader)
        }));
        Ok(node)
    }

    /// The applied state, for reads.
    pub fn state(&self) -> &SharedState {
        &self.shared
    }

    /// This node's clock (the seam), in ms since the epoch.
    pub fn now_ms(&self) -> u64 {
        self.seams.clock.now_ms()
    }

    pub fn seams(&self) -> &Seams {
        &self.seams
    }

    pub fn transport(&self) -> &Arc<dyn PeerTransport> {
        &self.transport
    }

    pub fn sealed(&self) -> &Arc<SealedStore> {
        &self.sealed
    }

    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    pub fn leader(&self) -> &Arc<Leader<leader::NodeContext>> {
        &self.leader
    }

    /// The webhook sender: its queue and this node's delivery records.
    pub fn webhooks(&self) -> &Arc<crate::webhooks::Webhooks> {
        &self.webhooks
    }

    /// This node's metrics recorder.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// How long `peer` has left this node's Raft calls unanswered.
    pub fn silent_for(&self, peer: NodeId) -> std::time::Duration {
        self.peer_health.silent_for(peer)
    }

    /// Signing requests still open: (policy met, waiting for a signature; awaiting approvals).
    pub fn open_requests(&self) -> (usize, usize) {
        let applied = self.shared.read();
        let state = &applied.state;
        let ready = state
            .pending_requests
            .iter()
            .filter(|id| state.requests.get(*id).is_some_and(|r| state.ready_to_sign(r, false).is_ok()))
            .count();
        (ready, state.pending_requests.len() - ready)
    }

    /// Whether `peer` has left this node's Raft calls (heartbeats included)
    /// unanswered for [`SILENT_HEARTBEATS`] heartbeat intervals.
    pub fn likely_down(&self, peer: NodeId) -> bool {
        peer != self.id && self.peer_health.silent_for(peer) > self.silent_limit
    }

    /// Audit records `from..` (at most `limit`) from this node's store.
    pub async fn audit_records(&self, from: u64, limit: usize) -> std::io::Result<Vec<crate::state::AuditRecord>> {
        let store = self.store.clone();
        crate::seams::run_blocking(move || crate::raft::state_machine::read_audit(&*store, from, limit))
            .await?
            .map_err(std::io::Error::other)
    }

    /// The role for health and status.
    fn role(state: ServerState) -> RaftRole {
        match state {
            ServerState::Leader => RaftRole::Leader,
            ServerState::Follower => RaftRole::Follower,
            ServerState::Candidate => RaftRole::Candidate,
            ServerState::Learner => RaftRole::Learner,
            ServerState::Shutdown => RaftRole::Shutdown,
        }
    }

    /// `GET /v1/sys/health` and its HTTP status code.
    pub fn health(&self) -> Health {
        // Before the state lock below: it reads the state itself.
        let shares_missing = self.missing_share_names().len() as u32;
        let m = self.raft.metrics().borrow().clone();
        let applied = self.shared.read();
        Health {
            node_id: self.id,
            initialized: applied.state.cluster_id.is_some(),
            role: Self::role(m.state),
            leader_id: m.current_leader,
            term: m.current_term,
            members: m.membership_config.membership().voter_ids().collect(),
            last_applied_index: m.last_applied.map(|l| l.index),
            cluster_id: applied.state.cluster_id.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            kek_backend: self.sealed.kek().backend().into(),
            shares_missing,
        }
    }

    /// `GET /v1/sys/status`.
    pub fn status(&self) -> Status {
        // Before the state lock below: the gate reads the state itself.
        let signing_paused = self.share_gate_refusal();
        let shares_missing = self.missing_share_names();
        let hardening = crate::hygiene::hardening();
        let m = self.raft.metrics().borrow().clone();
        let applied = self.shared.read();
        let state = &applied.state;
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let offsets = if m.state == ServerState::Leader { self.clock_offsets_ms() } else { Default::default() };
        let members = membership
            .nodes()
            .map(|(id, addr)| MemberStatus {
                node_id: *id,
                addr: addr.clone(),
                voter: voters.contains(id),
                authorized: state.members.contains_key(id) || state.cluster_id.is_none(),
                matched_index: m.replication.as_ref().and_then(|r| r.get(id).cloned().flatten()).map(|l| l.index),
                clock_offset_ms: offsets.get(id).copied(),
            })
            .collect();
        Status {
            node_id: self.id,
            cluster_id: state.cluster_id.clone(),
            cluster_name: state.cluster_name.clone(),
            role: Self::role(m.state),
            leader_id: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            last_applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            newest_point_index: self
                .points_built
                .lock()
                .expect("points lock")
                .keys()
                .next_back()
                .copied()
                .max(self.shared.points().ready_index()),
            endorsed_point_index: self.shared.points().ready_index(),
            signing_paused,
            members,
            admins: state.admins.iter().copied().collect(),
            applied_commands: state.applied_commands,
            rejected_commands: state.rejected_commands,
            recent_rejections: state.recent_rejections.iter().cloned().collect(),
            unauthorized_membership_entries: state.unauthorized_membership_entries,
            kek: self.sealed.kek().describe(),
            memory_locked: hardening.is_some_and(|h| h.memory_locked.is_ok()),
            memory_lock_refused: match hardening {
                None => Some("process hardening was not applied (a node inside another process)".into()),
                Some(h) => h.memory_locked.clone().err(),
            },
            core_dumps_off: hardening.is_some_and(|h| h.not_dumpable.is_ok() && h.core_limit_zero.is_ok()),
            incarnation: self.incarnation.clone(),
            shares_missing,
        }
    }

    /// Stops Raft.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

/// Heartbeat intervals without an answer after which a peer is taken to be down.
pub const SILENT_HEARTBEATS: u64 = 5;

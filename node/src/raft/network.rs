//! openraft's network traits over [`PeerTransport`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use synod_proto::rpc::{PeerRequest, PeerResponse};
use synod_proto::{NodeAddr, NodeId, TypeConfig};

use crate::transport::{PeerTransport, TransportError};

/// When each peer last answered a Raft call from this node. A leader sends
/// every follower a heartbeat at least every `raft.heartbeat_ms`, so a peer
/// that has not answered for several heartbeats is likely down: the signing
/// coordinator prefers other signers, at no cost in messages.
///
/// Also the clock each peer last reported in an AppendEntries answer, and when
/// (this node's monotonic time, simulated in the simulator): the leader
/// estimates each voter's clock from it to stamp entries with the time of a
/// majority of clocks (`crate::time`).
#[derive(Default)]
pub struct PeerHealth {
    /// Per peer: when this node first called it, and when it last answered.
    answers: Mutex<BTreeMap<NodeId, (tokio::time::Instant, Option<tokio::time::Instant>)>>,
    /// Per peer: its clock (ms since the epoch) and the instant its answer arrived.
    clocks: Mutex<BTreeMap<NodeId, (u64, tokio::time::Instant)>>,
    /// Per peer: when it last refused entries this node stamped too far ahead.
    time_refusals: Mutex<BTreeMap<NodeId, tokio::time::Instant>>,
    /// Per peer: when it last refused this node's vote request holding a
    /// longer log than this node's (so this node cannot win while it can).
    logs_ahead: Mutex<BTreeMap<NodeId, tokio::time::Instant>>,
}

impl PeerHealth {
    fn tried(&self, peer: NodeId) {
        let now = tokio::time::Instant::now();
        self.answers.lock().expect("peer health lock").entry(peer).or_insert((now, None));
    }

    fn answered(&self, peer: NodeId) {
        let now = tokio::time::Instant::now();
        self.answers.lock().expect("peer health lock").entry(peer).or_insert((now, None)).1 = Some(now);
    }

    /// Records that `peer` refused this node's entries as stamped too far ahead.
    fn time_refused(&self, peer: NodeId) {
        self.time_refusals.lock().expect("time refusals lock").insert(peer, tokio::time::Instant::now());
    }

    /// The peers that refused this node's stamped time within `recent`.
    pub fn time_refusers(&self, recent: Duration) -> Vec<NodeId> {
        let now = tokio::time::Instant::now();
        let refusals = self.time_refusals.lock().expect("time refusals lock");
        refusals.iter().filter(|(_, at)| now.saturating_duration_since(**at) <= recent).map(|(p, _)| *p).collect()
    }

    /// Forgets every time refusal (another leader has taken over).
    pub fn forget_time_refusals(&self) {
        self.time_refusals.lock().expect("time refusals lock").clear();
    }

    fn log_ahead(&self, peer: NodeId) {
        self.logs_ahead.lock().expect("logs ahead lock").insert(peer, tokio::time::Instant::now());
    }

    /// The peers that refused this node's vote with a longer log within
    /// `recent`, forgetting them (each refusal pauses this node's elections once).
    pub fn take_logs_ahead(&self, recent: Duration) -> Vec<NodeId> {
        let now = tokio::time::Instant::now();
        let mut ahead = self.logs_ahead.lock().expect("logs ahead lock");
        let peers = ahead.iter().filter(|(_, at)| now.saturating_duration_since(**at) <= recent).map(|(p, _)| *p);
        let peers = peers.collect();
        ahead.clear();
        peers
    }

    /// Records the clock `peer` reported just now.
    pub fn clock_reported(&self, peer: NodeId, clock_ms: u64) {
        self.clocks.lock().expect("peer clocks lock").insert(peer, (clock_ms, tokio::time::Instant::now()));
    }

    /// Each peer's clock now, estimated from its latest report no older than
    /// `fresh` (the report plus the time elapsed here since it arrived).
    pub fn clock_estimates(&self, fresh: Duration) -> BTreeMap<NodeId, u64> {
        let now = tokio::time::Instant::now();
        let clocks = self.clocks.lock().expect("peer clocks lock");
        clocks
            .iter()
            .filter_map(|(peer, (clock_ms, at))| {
                let age = now.saturating_duration_since(*at);
                (age <= fresh).then(|| (*peer, clock_ms.saturating_add(age.as_millis() as u64)))
            })
            .collect()
    }

    /// How long `peer` has left this node's Raft calls unanswered (zero if it
    /// was never called, or answered the latest).
    pub fn silent_for(&self, peer: NodeId) -> Duration {
        let health = self.answers.lock().expect("peer health lock");
        let Some((first_tried, answered)) = health.get(&peer) else { return Duration::ZERO };
        tokio::time::Instant::now().saturating_duration_since(answered.unwrap_or(*first_tried))
    }
}

/// Makes one [`PeerClient`] per replication target.
#[derive(Clone)]
pub struct Network {
    transport: Arc<dyn PeerTransport>,
    health: Arc<PeerHealth>,
}

impl Network {
    pub fn new(transport: Arc<dyn PeerTransport>, health: Arc<PeerHealth>) -> Self {
        Network { transport, health }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> Self::Network {
        PeerClient {
            transport: self.transport.clone(),
            health: self.health.clone(),
            target,
            addr: node.raft_addr.clone(),
        }
    }
}

/// Sends Raft RPCs to one peer.
pub struct PeerClient {
    transport: Arc<dyn PeerTransport>,
    health: Arc<PeerHealth>,
    target: NodeId,
    addr: String,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, NodeAddr, RaftError<NodeId, E>>>;

impl PeerClient {
    async fn call<T, E: std::error::Error>(
        &self,
        request: PeerRequest,
        option: &RPCOption,
        pick: impl FnOnce(PeerResponse) -> Option<Result<T, RaftError<NodeId, E>>>,
    ) -> RpcResult<T, E> {
        self.health.tried(self.target);
        let response = self.transport.call(self.target, self.addr.clone(), request, option.hard_ttl()).await.map_err(
            |e| match e {
                TransportError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&e)),
                other => RPCError::Network(NetworkError::new(&other)),
            },
        )?;
        self.health.answered(self.target);
        let refused = |what: String| RPCError::Network(NetworkError::new(&std::io::Error::other(what)));
        match response {
            PeerResponse::Refused(reason) => Err(refused(format!("node {} refused: {reason}", self.target))),
            PeerResponse::TimeRefused(reason) => {
                self.health.time_refused(self.target);
                Err(refused(format!("node {} refused: {reason}", self.target)))
            }
            other => match pick(other) {
                Some(Ok(value)) => Ok(value),
                Some(Err(remote)) => Err(RPCError::RemoteError(RemoteError::new(self.target, remote))),
                None => Err(refused(format!("node {} answered with the wrong response type", self.target))),
            },
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        let (health, target) = (self.health.clone(), self.target);
        self.call(PeerRequest::AppendEntries(rpc), &option, |r| match r {
            PeerResponse::AppendEntries { result, clock_ms } => {
                health.clock_reported(target, clock_ms);
                Some(result)
            }
            _ => None,
        })
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(PeerRequest::InstallSnapshot(rpc), &option, |r| match r {
            PeerResponse::InstallSnapshot(r) => Some(r),
            _ => None,
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        let mine = rpc.last_log_id;
        let response = self
            .call(PeerRequest::Vote(rpc), &option, |r| match r {
                PeerResponse::Vote(r) => Some(r),
                _ => None,
            })
            .await;
        if let Ok(answer) = &response {
            if !answer.vote_granted && answer.last_log_id > mine {
                self.health.log_ahead(self.target);
            }
        }
        response
    }
}

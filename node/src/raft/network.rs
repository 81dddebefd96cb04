//! openraft's network traits over [`PeerTransport`].

use std::sync::Arc;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use synod_proto::rpc::{PeerRequest, PeerResponse};
use synod_proto::{NodeAddr, NodeId, TypeConfig};

use crate::transport::{PeerTransport, TransportError};

/// Makes one [`PeerClient`] per replication target.
#[derive(Clone)]
pub struct Network {
    transport: Arc<dyn PeerTransport>,
}

impl Network {
    pub fn new(transport: Arc<dyn PeerTransport>) -> Self {
        Network { transport }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> Self::Network {
        PeerClient { transport: self.transport.clone(), target, addr: node.raft_addr.clone() }
    }
}

/// Sends Raft RPCs to one peer.
pub struct PeerClient {
    transport: Arc<dyn PeerTransport>,
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
        let response = self.transport.call(self.target, self.addr.clone(), request, option.hard_ttl()).await.map_err(
            |e| match e {
                TransportError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&e)),
                other => RPCError::Network(NetworkError::new(&other)),
            },
        )?;
        let refused = |what: String| RPCError::Network(NetworkError::new(&std::io::Error::other(what)));
        match response {
            PeerResponse::Refused(reason) => Err(refused(format!("node {} refused: {reason}", self.target))),
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
        self.call(PeerRequest::AppendEntries(rpc), &option, |r| match r {
            PeerResponse::AppendEntries(r) => Some(r),
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
        self.call(PeerRequest::Vote(rpc), &option, |r| match r {
            PeerResponse::Vote(r) => Some(r),
            _ => None,
        })
        .await
    }
}

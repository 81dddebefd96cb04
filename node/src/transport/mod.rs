//! The network seam: how one node calls another.
//!
//! [`PeerTransport`] is what Raft replication and request forwarding use;
//! [`PeerHandler`] is what a node exposes to its peers. Production runs both over
//! QUIC with mutual TLS ([`quic`]); the simulator swaps in its own network.

pub mod quic;

use std::time::Duration;

use futures::future::BoxFuture;
use synod_proto::rpc::{PeerRequest, PeerResponse};
use synod_proto::NodeId;

/// Why a call to a peer produced no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// No connection could be made (peer down, address wrong, TLS refused).
    #[error("node {node} at {addr} is unreachable: {reason}")]
    Unreachable { node: NodeId, addr: String, reason: String },
    /// The connection broke or the peer sent something unreadable.
    #[error("call to node {node} failed: {reason}")]
    Failed { node: NodeId, reason: String },
    /// No answer within the deadline.
    #[error("call to node {node} timed out after {timeout_ms} ms")]
    Timeout { node: NodeId, timeout_ms: u64 },
}

/// Calls other nodes.
pub trait PeerTransport: Send + Sync + 'static {
    /// Sends one request to `target` at `addr` and waits at most `timeout` for its answer.
    fn call(
        &self,
        target: NodeId,
        addr: String,
        request: PeerRequest,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<PeerResponse, TransportError>>;
}

/// Answers calls from other nodes.
pub trait PeerHandler: Send + Sync + 'static {
    /// Whether `peer` may talk to this node now (it is in the signed member registry).
    fn is_authorized(&self, peer: NodeId) -> bool;
    /// Handles one authenticated, authorised request.
    fn handle(&self, from: NodeId, request: PeerRequest) -> BoxFuture<'static, PeerResponse>;
}

//! A node for the unit tests of the pieces that serve one (the API, the console): real, on
//! a memory store, not initialised, with no peers.

use std::sync::Arc;

use super::{Node, NodeParts};
use crate::transport::{PeerTransport, TransportError};

/// A transport whose every call fails: the node under test has no peers.
struct NoPeers;

impl PeerTransport for NoPeers {
    fn call(
        &self,
        target: synod_proto::NodeId,
        addr: String,
        _request: synod_proto::rpc::PeerRequest,
        _timeout: std::time::Duration,
    ) -> futures::future::BoxFuture<'static, Result<synod_proto::rpc::PeerResponse, TransportError>> {
        let error = TransportError::Unreachable { node: target, addr, reason: "no peers".into() };
        Box::pin(async move { Err(error) })
    }
}

/// A real node (id 1) on a memory store, not initialised (so no keys, operators or passkey
/// settings), with no peers.
pub(crate) async fn lone_node() -> Arc<Node> {
    let store: Arc<dyn crate::store::Store> = Arc::new(crate::store::MemoryStore::new());
    let kek = crate::kek::SoftKek::from_key_bytes(zeroize::Zeroizing::new([7u8; 32]));
    let (_, mut identities) = crate::pki::in_memory_pki(&[1], &mut rand_core::OsRng).expect("test PKI");
    Node::start(NodeParts {
        id: 1,
        store: store.clone(),
        transport: Arc::new(NoPeers),
        sealed: Arc::new(crate::sealed::SealedStore::new(store, Arc::new(kek))),
        identity: Arc::new(identities.remove(0)),
        seams: crate::seams::Seams::production(),
        tuning: crate::config::RaftTuning::default(),
        genesis_admins: Default::default(),
    })
    .await
    .expect("node starts")
}

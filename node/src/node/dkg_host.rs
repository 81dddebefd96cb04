//! The node as the host of its key generation ([`crate::dkg::DkgHost`]).

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use synod_proto::api::WriteResponse;
use synod_proto::NodeError;
use synod_proto::{Command, NodeId};

use super::Node;
use crate::dkg::DkgHost;
use crate::raft::state_machine::SharedState;
use crate::sealed::SealedStore;
use crate::seams::Seams;
use crate::transport::PeerTransport;

impl DkgHost for Node {
    fn id(&self) -> NodeId {
        self.id
    }

    fn state(&self) -> &SharedState {
        Node::state(self)
    }

    fn now_ms(&self) -> u64 {
        Node::now_ms(self)
    }

    fn seams(&self) -> &Seams {
        Node::seams(self)
    }

    fn transport(&self) -> &Arc<dyn PeerTransport> {
        Node::transport(self)
    }

    fn sealed(&self) -> &Arc<SealedStore> {
        Node::sealed(self)
    }

    fn write_as_node(&self, command: Command) -> BoxFuture<'_, Result<WriteResponse, NodeError>> {
        Node::write_as_node(self, command).boxed()
    }

    fn share_restored(&self, key_id: &str) {
        self.shares_missing.lock().expect("shares lock").remove(key_id);
    }

    fn record_duration(&self, histogram: &'static str, outcome: &str, took: std::time::Duration) {
        self.metrics.duration(histogram, outcome, took);
    }
}

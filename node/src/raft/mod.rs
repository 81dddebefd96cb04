//! Consensus glue: openraft's storage and network traits implemented over
//! Synod's seams ([`crate::store::Store`] and [`crate::transport::PeerTransport`]).

pub mod log_store;
pub mod network;
pub mod state_machine;

use synod_proto::TypeConfig;

/// The running Raft instance with Synod's types.
pub type Raft = openraft::Raft<TypeConfig>;

pub(crate) fn io_error(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

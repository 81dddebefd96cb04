//! Consensus glue: openraft's storage and network traits implemented over
//! Synod's seams ([`crate::store::Store`] and [`crate::transport::PeerTransport`]).

// openraft's trait methods return its own (large) StorageError; our helpers
// return the same type rather than boxing and unboxing it at every call.
#![allow(clippy::result_large_err)]

pub mod log_store;
pub mod network;
pub mod snapshot;
pub mod state_machine;

use synod_proto::TypeConfig;

/// The running Raft instance with Synod's types.
pub type Raft = openraft::Raft<TypeConfig>;

pub(crate) fn io_error(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

#[cfg(test)]
mod tests {
    //! openraft's own storage conformance suite, run over both stores.

    use std::sync::Arc;

    use openraft::testing::{StoreBuilder, Suite};
    use openraft::StorageError;
    use synod_proto::{NodeId, TypeConfig};

    use super::log_store::LogStore;
    use super::state_machine::StateMachine;
    use crate::store::{MemoryStore, SledStore, Store};

    struct MemoryBuilder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, ()> for MemoryBuilder {
        async fn build(&self) -> Result<((), LogStore, StateMachine), StorageError<NodeId>> {
            let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
            let sm = StateMachine::open_building_current(store.clone())?;
            Ok(((), LogStore::new(store), sm))
        }
    }

    struct SledBuilder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for SledBuilder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<NodeId>> {
            let dir = tempfile::tempdir().expect("tempdir");
            let store: Arc<dyn Store> = Arc::new(SledStore::open(&dir.path().join("store")).expect("open sled"));
            let sm = StateMachine::open_building_current(store.clone())?;
            Ok((dir, LogStore::new(store), sm))
        }
    }

    #[test]
    fn raft_storage_memory_passes_openraft_suite() {
        // The log store and state machine over the simulator's memory store meet openraft's storage contract.
        Suite::test_all(MemoryBuilder).unwrap();
    }

    #[test]
    fn raft_storage_sled_passes_openraft_suite() {
        // The same over the production sled store.
        Suite::test_all(SledBuilder).unwrap();
    }
}

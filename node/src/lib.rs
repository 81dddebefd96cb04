//! The Synod node: consensus, transport, storage, the client API and the CLI.
//!
//! See ARCHITECTURE.md at the repository root for the map.

#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod config;
pub mod coordinate;
pub mod dkg;
pub mod faults;
pub mod files;
pub mod kek;
pub mod node;
pub mod pki;
pub mod raft;
pub mod sealed;
pub mod seams;
pub mod server;
pub mod signer;
pub mod state;
pub mod store;
pub mod transport;

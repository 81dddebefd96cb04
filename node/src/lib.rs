//! The Synod node: consensus, transport, storage, the signer and the client API.
//! The `synod` command line lives in the `synod-cli` crate.
//!
//! See ARCHITECTURE.md at the repository root for the map.

// Denied, not forbidden: `hygiene` alone needs it, to overwrite secrets in the
// process's environment block and to call mlockall.
#![deny(unsafe_code)]

pub mod api;
pub mod backup;
pub mod caller;
pub mod config;
pub mod console;
pub mod dkg;
pub mod faults;
pub mod files;
#[allow(unsafe_code)]
pub mod hygiene;
pub mod kek;
pub mod metrics;
pub mod node;
pub mod notify;
pub mod pki;
pub mod raft;
pub mod refresh;
pub mod repair;
pub mod sealed;
pub mod seams;
pub mod server;
pub mod signer;
pub mod state;
pub mod store;
pub mod time;
pub mod transport;
pub mod webhooks;

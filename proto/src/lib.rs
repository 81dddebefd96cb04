//! Synod's wire and API types: the only crate that knows encodings.
//!
//! Everything that crosses a process boundary is defined here: the signed
//! commands that operators author ([`command`]), the Raft type configuration
//! and log entry ([`raft`]), the node-to-node RPC frames ([`rpc`]), the
//! HTTP/JSON API bodies ([`api`]), the typed error a node answers with
//! ([`error`]) and the size limit of every command field ([`limits`]). Other crates convert at the edge and never
//! derive wire serialization themselves.

#![forbid(unsafe_code)]

pub mod api;
pub mod authz;
pub mod command;
pub mod error;
pub mod format;
pub mod keyfmt;
pub mod limits;
pub mod raft;
pub mod readsig;
pub mod rpc;
pub mod runtime;
pub mod sshsig;
pub mod webauthn;
pub mod webhook;

/// A Raft member's identifier. Node ids are never reused for another machine.
pub type NodeId = u64;

pub use command::{Command, Envelope, Member, OperatorKey, SignedCommand};
pub use error::{LeaderHint, NodeError};
pub use raft::{LogEntry, NodeAddr, Outcome, TypeConfig};

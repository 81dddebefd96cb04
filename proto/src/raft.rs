//! The Raft type configuration: what a log entry carries and what applying it returns.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::command::SignedCommand;
use crate::NodeId;

/// Where a member can be reached. Stored in Raft's membership config and in the
/// signed member registry.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeAddr {
    /// QUIC address for Raft and node-to-node traffic, `host:port`.
    pub raft_addr: String,
    /// HTTPS address of the client API, `host:port`.
    pub api_addr: String,
}

impl std::fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "raft={} api={}", self.raft_addr, self.api_addr)
    }
}

/// One application entry in the replicated log.
///
/// `time_ms` is stamped by the leader that proposed the entry and is the only
/// clock the state machine ever reads (clamped to be monotonic), so every node
/// reaches the same state from the same log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Milliseconds since the Unix epoch on the proposing leader's clock.
    pub time_ms: u64,
    /// The operator-signed command; every node verifies it when applying.
    pub command: SignedCommand,
}

/// What applying one log entry did. Deterministic: every node computes the same.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The command was authorised and changed the state.
    Applied {
        /// A short human-readable account of the change.
        detail: String,
    },
    /// The command was refused by the state machine; nothing changed.
    Rejected {
        /// Why, in words an operator can act on.
        reason: String,
        /// What kind of refusal: most are the author's lack of authority or a
        /// bad command; a conflict contradicts what the log already holds.
        #[serde(default, skip_serializing_if = "Refusal::is_refused")]
        refusal: Refusal,
    },
    /// A Raft-internal entry (blank or membership) with no application effect.
    Internal,
}

/// What kind of refusal an [`Outcome::Rejected`] is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// Not authorised, expired, replayed, malformed or otherwise not allowed.
    #[default]
    Refused,
    /// It contradicts what the log holds (one request id, one message).
    Conflict,
}

impl Refusal {
    fn is_refused(&self) -> bool {
        *self == Refusal::Refused
    }
}

impl Outcome {
    /// A refusal of the common kind.
    pub fn rejected(reason: impl Into<String>) -> Outcome {
        Outcome::Rejected { reason: reason.into(), refusal: Refusal::Refused }
    }

    /// True when the command changed the state.
    pub fn is_applied(&self) -> bool {
        matches!(self, Outcome::Applied { .. })
    }
}

openraft::declare_raft_types!(
    /// Synod's Raft types: node ids are `u64`, entries carry [`LogEntry`].
    pub TypeConfig:
        D = LogEntry,
        R = Outcome,
        NodeId = NodeId,
        Node = NodeAddr,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = crate::runtime::SynodRuntime,
);

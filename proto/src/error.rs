//! What a node answers when it does not do what a client or a peer asked.
//!
//! The node's core returns [`NodeError`]; it travels as itself between nodes
//! (a forwarded write's answer) and to the simulator's clients. Only the
//! node's HTTP API maps it to a status code (`node/src/api.rs`), and only the
//! CLI formats it for people. Every message says what was wrong and, where
//! there is something to do, what to do.

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// Where the current leader is, when known.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LeaderHint {
    pub node_id: NodeId,
    pub api_addr: String,
}

/// Why a node did not do what it was asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NodeError {
    /// The input is malformed, or its signature does not verify.
    #[error("{message}")]
    Invalid { message: String },
    /// The caller presented no client certificate from the cluster CA.
    #[error("{message}")]
    Unauthenticated { message: String },
    /// The author may not do this, or the state machine refused the command.
    #[error("{message}")]
    Refused { message: String },
    /// Nothing by that name or id on this node.
    #[error("{message}")]
    NotFound { message: String },
    /// It contradicts what the log holds (one request id, one message; a second genesis).
    #[error("{message}")]
    Conflict { message: String },
    /// The cluster is not initialised yet.
    #[error("{message}")]
    NotInitialised { message: String },
    /// Too many refused commands recently; this one was not logged.
    #[error("{message}")]
    RateLimited { message: String },
    /// This node may not propose; send the write to the leader.
    #[error("node {} is the leader; send the write there", leader.node_id)]
    NotLeader { leader: LeaderHint },
    /// The write was proposed but is not known to have committed: sending the
    /// same signed command again is safe (a command id applies at most once).
    #[error("{message}")]
    MayStillCommit { message: String },
    /// The node cannot serve this now (no leader, a peer unreachable, Raft
    /// stopped, a request that failed to sign); `leader` says where to retry
    /// when known.
    #[error("{message}")]
    Unavailable { message: String, leader: Option<LeaderHint> },
    /// A failure on this node that is not the caller's doing.
    #[error("{message}")]
    Internal { message: String },
}

impl NodeError {
    pub fn invalid(message: impl Into<String>) -> Self {
        NodeError::Invalid { message: message.into() }
    }
    pub fn refused(message: impl Into<String>) -> Self {
        NodeError::Refused { message: message.into() }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        NodeError::NotFound { message: message.into() }
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        NodeError::Conflict { message: message.into() }
    }
    pub fn not_initialised(message: impl Into<String>) -> Self {
        NodeError::NotInitialised { message: message.into() }
    }
    pub fn rate_limited(message: impl Into<String>) -> Self {
        NodeError::RateLimited { message: message.into() }
    }
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        NodeError::Unauthenticated { message: message.into() }
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        NodeError::Unavailable { message: message.into(), leader: None }
    }
    pub fn internal(message: impl Into<String>) -> Self {
        NodeError::Internal { message: message.into() }
    }

    /// Whether the same call may succeed if sent again (to the leader, or a
    /// moment later): the error is about this moment, not about the input.
    pub fn is_retryable(&self) -> bool {
        matches!(self, NodeError::NotLeader { .. } | NodeError::MayStillCommit { .. } | NodeError::Unavailable { .. })
    }

    /// Where the leader is, when the error names it.
    pub fn leader(&self) -> Option<&LeaderHint> {
        match self {
            NodeError::NotLeader { leader } => Some(leader),
            NodeError::Unavailable { leader, .. } => leader.as_ref(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire form of an error between nodes is pinned: a forwarding node
    /// of one version reads a leader's answer of the same version.
    #[test]
    fn error_wire_shape_is_pinned() {
        let e = NodeError::NotLeader { leader: LeaderHint { node_id: 2, api_addr: "127.0.0.1:8202".into() } };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"kind":"not_leader","leader":{"node_id":2,"api_addr":"127.0.0.1:8202"}}"#
        );
        assert_eq!(e.to_string(), "node 2 is the leader; send the write there");
        let e = NodeError::conflict("one request id, one message");
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"kind":"conflict","message":"one request id, one message"}"#
        );
        assert!(!e.is_retryable());
        assert!(NodeError::unavailable("no leader").is_retryable());
    }
}

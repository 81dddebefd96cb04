//! Synod's signing coordinator: runs FROST signing sessions for a committed
//! request on behalf of the Raft leader.
//!
//! It picks signers, takes their nonce commitments (round 1, preprocessed by
//! the signers ahead of requests), builds the signing package, collects
//! signature shares (round 2), aggregates, and when a signer is silent or sends
//! an invalid share it starts a new session, with fresh commitments, over a
//! signer set that leaves the failed signer out.
//! Every failed session excludes at least one signer, so a request needs at
//! most `n − t + 1` sessions ([`sessions_max`]).
//!
//! [`leader`] is the leader's signing desk around it: the sessions of every
//! pending request, pools of preprocessed commitments, round-2 outboxes,
//! culprit bans and batched outcomes. It reaches its node through the narrow
//! [`leader::Context`] trait, which the node and the simulator implement.
//!
//! The coordinator holds no secret: by its dependency list (proto, FROST's
//! public types, futures, tokio's timers and channels; checked by
//! `scripts/check-layers`) it can never touch a share, a nonce or the KEK. The
//! signers decide for themselves whether to release a share; a coordinator
//! that lies gets refusals, not signatures. Calls to signers go through the
//! [`Signers`] trait, so the node wires the real transport and tests wire a
//! fake one.

#![forbid(unsafe_code)]

pub mod leader;
mod session;
mod ticket;

pub use leader::{Context, Coordinated, Leader, RequestToSign};
pub use session::{run, sessions_max, CallError, Failure, Job, Signed, Signers};
pub use ticket::Ticket;

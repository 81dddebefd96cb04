//! Synod's deterministic simulator: n real nodes (the production `Node`, its
//! Raft, state machine, write path and membership reconcile) in one process,
//! on simulated time, network, disk and randomness, all derived from one seed.
//!
//! The pieces, in the order a run uses them:
//! - [`config`]: the profile and [`config::FaultPlan`] (every fault's knob).
//! - [`schedule`]: the fault schedule drawn from its own seeded RNG.
//! - [`cluster`]: turmoil hosts running real nodes over in-memory disks that
//!   outlive crashes, with a seeded clock and RNG per node.
//! - [`net`]: the [`synod_node::transport::PeerTransport`] over turmoil TCP,
//!   with per-message faults.
//! - [`forger`]: a byzantine member that sends forged and stale snapshots.
//! - [`workload`]: simulated clients (writes, key generation, signing) and the
//!   byzantine adversary.
//! - [`checker`]: invariants checked after every simulation step ([`digest`]
//!   hashes states and entries for them).
//! - [`run`]: one seed, end to end, producing a [`run::SeedReport`].
//!
//! See sim/README.md for the design decisions and how to replay a seed.

#![forbid(unsafe_code)]

// turmoil seeds each simulated host's tokio scheduler only under this cfg;
// without it tokio's `select!` and task order draw from OS randomness.
#[cfg(not(tokio_unstable))]
compile_error!(
    "synod-sim must be built with `--cfg tokio_unstable` (set in .cargo/config.toml). \
     A RUSTFLAGS environment variable overrides that file: add `--cfg tokio_unstable` to it."
);

pub mod checker;
pub mod cluster;
pub mod config;
pub mod digest;
pub mod forger;
pub mod net;
pub mod run;
pub mod schedule;
pub mod trace;
pub mod workload;

//! Deliberately broken behaviours ("planted bugs") that prove the tests and the
//! simulator can fail. Switched on at run time with `SYNOD_FAULTS=name[,name...]`
//! (integration tests) or [`set_for_process`] (the simulator).
//!
//! They exist only in builds with the `fault-injection` cargo feature, which
//! the test command and the simulator enable and release builds do not: without
//! the feature [`enabled`] is a constant `false` and the faulty branches compile away.

/// A leader that skips its own checks of a client's command (signature,
/// author's authority) before proposing it. Followers must still refuse it.
pub const SKIP_AUTHOR_CHECK: &str = "skip-author-check";

/// A leader that answers a client write as soon as the entry is in its own
/// log, before a quorum has stored it (so before it is committed). A leader
/// that then crashes or is cut off loses a write its client saw succeed; the
/// simulator's "no acknowledged write lost" checker must catch it.
pub const ACK_BEFORE_COMMIT: &str = "ack-before-commit";

/// A signer that returns invalid signature shares (a lying peer). The
/// coordinator must name it as the culprit and still sign without it.
pub const CORRUPT_SHARES: &str = "corrupt-shares";

/// A coordinator that waits 3 s between signing round 1 and round 2, once per
/// process, so a test can kill the leader mid-signature.
pub const PAUSE_BETWEEN_ROUNDS: &str = "pause-between-rounds";

/// A signer whose preprocessing hands the same nonce pair out in two slots, so
/// one nonce can sign two packages. The simulator's nonce checker must catch it.
pub const NONCE_REUSE: &str = "nonce-reuse";

/// A node that ignores signing policies when it leads: its coordinator runs
/// requests that lack approvals and its own signer releases shares for them.
/// Followers (asked over the network) must still refuse, so no signature results.
pub const SKIP_POLICY: &str = "skip-policy";

/// Every fault this crate knows, for validating names.
pub const KNOWN: &[&str] =
    &[SKIP_AUTHOR_CHECK, ACK_BEFORE_COMMIT, CORRUPT_SHARES, PAUSE_BETWEEN_ROUNDS, NONCE_REUSE, SKIP_POLICY];

/// The [`CORRUPT_SHARES`] signer: changes the share's scalar.
pub fn corrupt_share(share: frost_ed25519::round2::SignatureShare) -> frost_ed25519::round2::SignatureShare {
    if !enabled(CORRUPT_SHARES) {
        return share;
    }
    let mut bytes = share.serialize();
    // The scalar is the last 32 bytes, little-endian; changing its low half keeps it canonical.
    let low = bytes.len() - 32;
    bytes[low..low + 16].iter_mut().for_each(|b| *b ^= 0x5a);
    tracing::warn!("fault corrupt-shares: sending an invalid signature share");
    frost_ed25519::round2::SignatureShare::deserialize(&bytes).unwrap_or(share)
}

#[cfg(feature = "fault-injection")]
static PROCESS_FAULTS: std::sync::RwLock<Vec<String>> = std::sync::RwLock::new(Vec::new());

/// Switches the named faults on for this whole process, in addition to any in
/// `SYNOD_FAULTS`; replaces the set given by an earlier call. Refuses a name
/// this crate does not know, listing the known ones.
#[cfg(feature = "fault-injection")]
pub fn set_for_process(names: &[&str]) -> Result<(), String> {
    if let Some(unknown) = names.iter().find(|n| !KNOWN.contains(n)) {
        return Err(format!("unknown fault {unknown:?}; known faults: {}", KNOWN.join(", ")));
    }
    let mut faults = PROCESS_FAULTS.write().unwrap_or_else(|e| e.into_inner());
    *faults = names.iter().map(|n| n.to_string()).collect();
    Ok(())
}

/// Whether the named fault is switched on for this process.
#[cfg(feature = "fault-injection")]
pub fn enabled(name: &str) -> bool {
    let set = PROCESS_FAULTS.read().unwrap_or_else(|e| e.into_inner()).iter().any(|f| f == name);
    set || std::env::var("SYNOD_FAULTS").map(|v| v.split(',').any(|f| f.trim() == name)).unwrap_or(false)
}

/// Whether the named fault is switched on for this process (never, in this build).
#[cfg(not(feature = "fault-injection"))]
pub fn enabled(_name: &str) -> bool {
    false
}

/// The faults this build can inject, for `synod version`.
pub fn available() -> &'static [&'static str] {
    if cfg!(feature = "fault-injection") {
        KNOWN
    } else {
        &[]
    }
}

/// The [`ACK_BEFORE_COMMIT`] write path: on a leader, proposes `entry` and
/// answers once the leader's own log holds it, without waiting for a quorum.
/// Returns `None` on a follower, which then takes the normal path.
#[cfg(feature = "fault-injection")]
pub async fn ack_before_commit(
    raft: &crate::raft::Raft,
    entry: synod_proto::LogEntry,
) -> Option<Result<synod_proto::api::WriteResponse, synod_proto::api::ApiError>> {
    use synod_proto::api::{ApiError, WriteResponse};
    let metrics = raft.metrics().borrow().clone();
    if metrics.state != openraft::ServerState::Leader {
        return None;
    }
    let index = metrics.last_log_index.map_or(1, |i| i + 1);
    // The planted bug: the commit is never awaited (the receiver is dropped).
    if let Err(e) = raft.client_write_ff(entry).await {
        return Some(Err(ApiError::unavailable(format!("this node's Raft has stopped: {e}"))));
    }
    let appended = raft
        .wait(Some(std::time::Duration::from_secs(1)))
        .metrics(|m| m.last_log_index >= Some(index), "the leader appended the entry")
        .await;
    Some(match appended {
        Ok(_) => Ok(WriteResponse {
            index,
            outcome: synod_proto::Outcome::Applied { detail: format!("acknowledged at append ({ACK_BEFORE_COMMIT})") },
        }),
        Err(e) => Err(ApiError::unavailable(format!("entry not appended: {e}"))),
    })
}

//! Deliberately broken behaviours ("planted bugs") that prove the tests and the
//! simulator can fail, byzantine behaviours of single nodes, and named fault
//! points where the simulator may crash a node.
//!
//! Planted bugs are switched on at run time with `SYNOD_FAULTS=name[,name...]`
//! (integration tests) or [`set_for_process`] (the simulator), for the whole
//! process. [`set_for_node`] switches faults on for one node only (the
//! simulator's byzantine signer: every node of a simulated cluster runs in one
//! process); [`enabled_for`] is true when either switch is on.
//!
//! Named fault points ([`crash_point`]) mark places where a crash is most
//! interesting ("the leader dies after collecting the shares, before it
//! commits the signature"). A hook the simulator installs ([`set_point_hook`])
//! decides, from its seed, whether the node crashes there: the point's future
//! then never completes and the simulator crashes that node's host.
//!
//! All of it exists only in builds made with `SYNOD_BUILD_FAULTS=1`, which
//! sets `--cfg synod_faults` for this crate alone (`node/build.rs`): the test
//! command sets it, release builds do not, and no cargo feature can switch it
//! on (feature unification would carry a feature into the release binary).
//! Without it [`enabled`] and [`enabled_for`] are a constant `false`,
//! [`crash_point`] returns at once, the faulty branches compile away, and the
//! switches ([`set_for_process`], [`set_for_node`], [`switch_for_node`])
//! refuse with [`NOT_BUILT`].

use synod_proto::NodeId;

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

/// A node that waits 5 s after an operator's `put` it proposed commits, before
/// it answers, once per process, so a test can kill it while its client waits
/// (the client must then learn the outcome from another node).
pub const PAUSE_AFTER_COMMIT: &str = "pause-after-commit";

/// A signer whose preprocessing hands the same nonce pair out in two slots, so
/// one nonce can sign two packages. The simulator's nonce checker must catch it.
pub const NONCE_REUSE: &str = "nonce-reuse";

/// A node that ignores signing policies when it leads: its coordinator runs
/// requests that lack approvals and its own signer releases shares for them.
/// Followers (asked over the network) must still refuse, so no signature results.
pub const SKIP_POLICY: &str = "skip-policy";

/// A state machine that leaves out the rules-4 bounds on requests (their life
/// by log time, per-operator quotas, reserved ids): a request signed with an
/// `issued_at` ten years ahead then stays pending for ten years.
pub const SKIP_CLIENT_BOUNDS: &str = "skip-client-bounds";

/// A cluster that never consults a key's service status: a disabled key, or
/// one whose destruction is scheduled or done, still takes requests, keeps
/// its pending ones and its signers release shares for them. The simulator's
/// lifecycle checker must catch it.
pub const SKIP_KEY_STATUS: &str = "skip-key-status";

/// A cluster that never retires a key version a rotation replaced: its
/// overlap never ends, so requests naming it are still taken and signed. The
/// simulator's versions checker must catch it.
pub const SKIP_RETIREMENT: &str = "skip-retirement";

/// A signer that keeps signing with the previous generation of a key's
/// shares after a refresh made a new one current (it never reloads its
/// share). The simulator's generations checker must catch it by checking
/// each released share against its generation's verifying share.
pub const KEEP_OLD_GENERATION: &str = "keep-old-generation";

/// A refresh participant that waits 5 s after sealing its new share before
/// it confirms, so a test can kill it mid-refresh (`tests/tests/refresh.rs`).
pub const PAUSE_REFRESH_CONFIRM: &str = "pause-refresh-confirm";

/// A node that trusts the vote and log on its disk after a restart, as if
/// disks never rolled back: it skips the boot check (invariant 35). The
/// simulator's `rollback-disk` fault must make a Raft checker catch it.
pub const TRUST_ROLLED_BACK_VOTE: &str = "trust-rolled-back-vote";

/// A signer that answers round 1 with commitments other than those of the
/// nonces it holds (its hiding and binding commitments swapped) when it
/// preprocesses. A package built from them does not carry its commitments, so
/// it refuses round 2 and the coordinator starts a new session without it.
pub const WRONG_COMMITMENTS: &str = "wrong-commitments";

/// A key-generation participant that sends every other participant a round-2
/// package (its secret share for them) that does not match the commitments it
/// committed in round 1. Each recipient's FROST part 3 names it; the generation
/// aborts with it as the culprit, and the operator creates the key without it.
pub const CORRUPT_DKG_SHARES: &str = "corrupt-dkg-shares";

/// A participant honest in key generation that, in a refresh or a repair,
/// sends values that do not match what it committed: refresh round-2 values
/// and repair values. Each receiver checks them against the sender's
/// commitments and aborts naming it; the current generation keeps signing.
pub const CORRUPT_REFRESH_VALUES: &str = "corrupt-refresh-values";

/// A node that takes a node-authored command (a DKG message, a signing
/// outcome) without checking that its node's certificate and key made it: any
/// key and any certificate bytes pass, at admission and at apply.
pub const SKIP_NODE_AUTHOR_CHECK: &str = "skip-node-author-check";

/// A node that takes a signing outcome from any member, whether or not it took
/// up signing in the entry's term (at admission and at apply).
pub const SKIP_COORDINATOR_CHECK: &str = "skip-coordinator-check";

/// A node that takes a genesis from any operator, whatever its node.toml's
/// `genesis_admins` pin: any client-certificate holder can make its cluster.
pub const SKIP_GENESIS_PIN: &str = "skip-genesis-pin";

/// A node that installs any snapshot a peer sends, without checking its
/// endorsements, its audit chain or that Raft is told the state it carries.
pub const TRUST_SNAPSHOT: &str = "trust-snapshot";
/// A state machine that lets a later outcome of a command replace its applied
/// record (`ClusterState::record_outcome` without its guard): the refused
/// replay of an applied command then files "refused: replay" over it, and
/// `GET /v1/commands/{id}` tells its author the write never happened. The
/// simulator's command-outcome checker must catch it.
pub const OVERWRITE_APPLIED_OUTCOME: &str = "overwrite-applied-outcome";

/// Followers that take every entry's time as stamped, without checking it
/// against their own clock: a leader stamping far ahead moves the cluster's
/// time. The simulator's time checker must catch it.
pub const TRUST_ENTRY_TIME: &str = "trust-entry-time";

/// A byzantine leader that stamps the entries it proposes with its own clock
/// plus [`FAR_AHEAD_MS`], instead of the time of a majority of clocks. The
/// simulator switches it on for one node for a bounded time.
pub const STAMP_FAR_AHEAD: &str = "stamp-far-ahead";

/// A node whose system clock runs [`FAR_AHEAD_MS`] ahead (an honest node with
/// a wrong clock; real processes only, through `SYNOD_FAULTS`).
pub const CLOCK_AHEAD_200D: &str = "clock-ahead-200d";

/// How far ahead [`STAMP_FAR_AHEAD`] and [`CLOCK_AHEAD_200D`] put a clock: 200 days.
pub const FAR_AHEAD_MS: u64 = 200 * 24 * 60 * 60 * 1000;

/// A state machine that takes a sign request without checking its SSHSIG
/// namespace against the key's policy (`namespaces`): a key kept to `git`
/// signs in any namespace. The simulator's formats checker must catch it.
pub const IGNORE_NAMESPACE_POLICY: &str = "ignore-namespace-policy";

/// A state machine that builds minisign's global signature request from the
/// parent's signature alone, leaving out the trusted comment it must cover.
/// Signers refuse it (their check wants the comment); the simulator's formats
/// checker must catch the message itself.
pub const GLOBAL_SIGNS_WITHOUT_COMMENT: &str = "global-signs-without-comment";

/// A state machine that takes a passkey approval without comparing its
/// signature counter with the one it keeps: a cloned authenticator, or an
/// assertion replayed with a counter set back, counts. The simulator's
/// passkeys checker must catch it.
pub const PASSKEY_IGNORES_COUNTER: &str = "passkey-ignores-counter";

/// Whether this build has the fault switches (`SYNOD_BUILD_FAULTS=1`).
pub fn built() -> bool {
    cfg!(synod_faults)
}

/// What a switch says in a build without faults, and how to get one.
pub const NOT_BUILT: &str = "this build has no fault injection (test-only switches); rebuild with \
     SYNOD_BUILD_FAULTS=1, e.g. `SYNOD_BUILD_FAULTS=1 cargo build --workspace --bins`";

/// Every fault this crate knows, for validating names.
pub const KNOWN: &[&str] = &[
    SKIP_AUTHOR_CHECK,
    ACK_BEFORE_COMMIT,
    CORRUPT_SHARES,
    PAUSE_BETWEEN_ROUNDS,
    PAUSE_AFTER_COMMIT,
    NONCE_REUSE,
    SKIP_POLICY,
    SKIP_CLIENT_BOUNDS,
    SKIP_KEY_STATUS,
    SKIP_RETIREMENT,
    KEEP_OLD_GENERATION,
    PAUSE_REFRESH_CONFIRM,
    TRUST_ROLLED_BACK_VOTE,
    WRONG_COMMITMENTS,
    CORRUPT_DKG_SHARES,
    CORRUPT_REFRESH_VALUES,
    SKIP_NODE_AUTHOR_CHECK,
    SKIP_GENESIS_PIN,
    TRUST_SNAPSHOT,
    TRUST_ENTRY_TIME,
    STAMP_FAR_AHEAD,
    CLOCK_AHEAD_200D,
    SKIP_COORDINATOR_CHECK,
    OVERWRITE_APPLIED_OUTCOME,
    IGNORE_NAMESPACE_POLICY,
    PASSKEY_IGNORES_COUNTER,
    GLOBAL_SIGNS_WITHOUT_COMMENT,
];

/// The byzantine signer behaviours one node can have ([`set_for_node`]).
pub const BYZANTINE_SIGNER: &[&str] = &[CORRUPT_SHARES, WRONG_COMMITMENTS, CORRUPT_DKG_SHARES, CORRUPT_REFRESH_VALUES];

/// The [`CORRUPT_SHARES`] signer: changes the share's scalar when that fault is
/// on for this process or for `node`.
pub fn corrupt_share(
    node: NodeId,
    share: frost_ed25519::round2::SignatureShare,
) -> frost_ed25519::round2::SignatureShare {
    if !enabled_for(node, CORRUPT_SHARES) {
        return share;
    }
    let mut bytes = share.serialize();
    change_trailing_scalar(&mut bytes);
    tracing::warn!(node, "fault corrupt-shares: sending an invalid signature share");
    frost_ed25519::round2::SignatureShare::deserialize(&bytes).unwrap_or(share)
}

/// The [`WRONG_COMMITMENTS`] signer: swaps the hiding and binding commitments
/// of every commitment in a preprocessing answer when that fault is on for this
/// process or for `node`. A commitment that does not parse is passed on unchanged.
pub fn wrong_commitments(node: NodeId, mut batch: synod_proto::rpc::NonceBatch) -> synod_proto::rpc::NonceBatch {
    use frost_ed25519::round1::SigningCommitments;
    if !enabled_for(node, WRONG_COMMITMENTS) {
        return batch;
    }
    tracing::warn!(node, "fault wrong-commitments: handing out commitments this node holds no nonces for");
    for commitments in &mut batch.commitments {
        let parsed = hex::decode(&*commitments).ok().and_then(|b| SigningCommitments::deserialize(&b).ok());
        if let Some(swapped) = parsed.and_then(|c| SigningCommitments::new(*c.binding(), *c.hiding()).serialize().ok())
        {
            *commitments = hex::encode(swapped);
        }
    }
    batch
}

/// The [`CORRUPT_REFRESH_VALUES`] participant as a repair helper: changes
/// each value it sends another helper (its commitment still names the real one).
pub fn corrupt_repair_value(
    node: NodeId,
    delta: frost_ed25519::keys::repairable::Delta,
) -> frost_ed25519::keys::repairable::Delta {
    if !enabled_for(node, CORRUPT_REFRESH_VALUES) {
        return delta;
    }
    let mut bytes = delta.serialize();
    change_trailing_scalar(&mut bytes);
    tracing::warn!(node, "fault corrupt-refresh-values: sending a repair value that does not match its commitment");
    frost_ed25519::keys::repairable::Delta::deserialize(&bytes).unwrap_or(delta)
}

/// The [`CORRUPT_DKG_SHARES`] participant: changes the secret share in a key
/// generation's round-2 package when that fault is on for this process or for `node`.
pub fn corrupt_dkg_package(
    node: NodeId,
    package: frost_ed25519::keys::dkg::round2::Package,
) -> frost_ed25519::keys::dkg::round2::Package {
    corrupt_round2(node, CORRUPT_DKG_SHARES, package)
}

/// The [`CORRUPT_REFRESH_VALUES`] participant: changes the value in a refresh
/// round-2 package.
pub fn corrupt_refresh_package(
    node: NodeId,
    package: frost_ed25519::keys::dkg::round2::Package,
) -> frost_ed25519::keys::dkg::round2::Package {
    corrupt_round2(node, CORRUPT_REFRESH_VALUES, package)
}

fn corrupt_round2(
    node: NodeId,
    fault: &str,
    package: frost_ed25519::keys::dkg::round2::Package,
) -> frost_ed25519::keys::dkg::round2::Package {
    if !enabled_for(node, fault) {
        return package;
    }
    let Ok(mut bytes) = package.serialize() else { return package };
    change_trailing_scalar(&mut bytes);
    tracing::warn!(node, fault, "sending a round-2 package that does not match round 1");
    frost_ed25519::keys::dkg::round2::Package::deserialize(&bytes).unwrap_or(package)
}

/// Changes the scalar that ends a serialized FROST share (its last 32 bytes,
/// little-endian); flipping bits of its low half keeps it canonical.
fn change_trailing_scalar(bytes: &mut [u8]) {
    let low = bytes.len().saturating_sub(32);
    let high = (low + 16).min(bytes.len());
    bytes[low..high].iter_mut().for_each(|b| *b ^= 0x5a);
}

#[cfg(synod_faults)]
static PROCESS_FAULTS: std::sync::RwLock<Vec<String>> = std::sync::RwLock::new(Vec::new());

/// Switches the named faults on for this whole process, in addition to any in
/// `SYNOD_FAULTS`; replaces the set given by an earlier call. Refuses a name
/// this crate does not know, listing the known ones.
#[cfg(synod_faults)]
pub fn set_for_process(names: &[&str]) -> Result<(), String> {
    if let Some(unknown) = names.iter().find(|n| !KNOWN.contains(n)) {
        return Err(format!("unknown fault {unknown:?}; known faults: {}", KNOWN.join(", ")));
    }
    let mut faults = PROCESS_FAULTS.write().unwrap_or_else(|e| e.into_inner());
    *faults = names.iter().map(|n| n.to_string()).collect();
    Ok(())
}

/// Refuses: this build has no faults ([`NOT_BUILT`]).
#[cfg(not(synod_faults))]
pub fn set_for_process(_names: &[&str]) -> Result<(), String> {
    Err(NOT_BUILT.to_string())
}

/// Whether the named fault is switched on for this process.
#[cfg(synod_faults)]
pub fn enabled(name: &str) -> bool {
    let set = PROCESS_FAULTS.read().unwrap_or_else(|e| e.into_inner()).iter().any(|f| f == name);
    set || std::env::var("SYNOD_FAULTS").map(|v| v.split(',').any(|f| f.trim() == name)).unwrap_or(false)
}

/// Whether the named fault is switched on for this process (never, in this build).
#[cfg(not(synod_faults))]
pub fn enabled(_name: &str) -> bool {
    false
}

#[cfg(synod_faults)]
static NODE_FAULTS: std::sync::RwLock<std::collections::BTreeMap<NodeId, Vec<String>>> =
    std::sync::RwLock::new(std::collections::BTreeMap::new());

/// Switches the named faults on for `node` only (the faults of other nodes are
/// kept); replaces that node's set given by an earlier call, and an empty list
/// clears it. Refuses a name this crate does not know, listing the known ones.
#[cfg(synod_faults)]
pub fn set_for_node(node: NodeId, names: &[&str]) -> Result<(), String> {
    if let Some(unknown) = names.iter().find(|n| !KNOWN.contains(n)) {
        return Err(format!("unknown fault {unknown:?}; known faults: {}", KNOWN.join(", ")));
    }
    let mut faults = NODE_FAULTS.write().unwrap_or_else(|e| e.into_inner());
    if names.is_empty() {
        faults.remove(&node);
    } else {
        faults.insert(node, names.iter().map(|n| n.to_string()).collect());
    }
    Ok(())
}

/// Switches one named fault on or off for `node`, keeping its other faults
/// (a byzantine signer may also become a byzantine leader for a while).
#[cfg(synod_faults)]
pub fn switch_for_node(node: NodeId, name: &str, on: bool) -> Result<(), String> {
    if !KNOWN.contains(&name) {
        return Err(format!("unknown fault {name:?}; known faults: {}", KNOWN.join(", ")));
    }
    let mut faults = NODE_FAULTS.write().unwrap_or_else(|e| e.into_inner());
    let set = faults.entry(node).or_default();
    set.retain(|f| f != name);
    if on {
        set.push(name.to_string());
    }
    if set.is_empty() {
        faults.remove(&node);
    }
    Ok(())
}

/// Refuses: this build has no faults ([`NOT_BUILT`]).
#[cfg(not(synod_faults))]
pub fn set_for_node(_node: NodeId, _names: &[&str]) -> Result<(), String> {
    Err(NOT_BUILT.to_string())
}

/// Refuses: this build has no faults ([`NOT_BUILT`]).
#[cfg(not(synod_faults))]
pub fn switch_for_node(_node: NodeId, _name: &str, _on: bool) -> Result<(), String> {
    Err(NOT_BUILT.to_string())
}

/// Whether the named fault is on for `node`: for this whole process, or for that node.
#[cfg(synod_faults)]
pub fn enabled_for(node: NodeId, name: &str) -> bool {
    let mine =
        NODE_FAULTS.read().unwrap_or_else(|e| e.into_inner()).get(&node).is_some_and(|f| f.iter().any(|f| f == name));
    mine || enabled(name)
}

/// Whether the named fault is on for `node` (never, in this build).
#[cfg(not(synod_faults))]
pub fn enabled_for(_node: NodeId, _name: &str) -> bool {
    false
}

/// Named fault point: a DKG participant has sealed its key package and has not
/// yet committed its confirmation (`dkg.rs`).
pub const DKG_AFTER_SEAL: &str = "dkg-after-seal-before-confirm";
/// Named fault point: a refresh participant has sealed its new generation
/// and has not yet committed its confirmation (`refresh.rs`).
pub const REFRESH_AFTER_SEAL: &str = "refresh-after-seal-before-confirm";
/// Named fault point: a write is committed and its client not yet answered (`node.rs`).
pub const WRITE_AFTER_COMMIT: &str = "write-after-commit-before-answer";
/// Named fault point: entries are applied to the in-memory state and their
/// audit records not yet written (`raft/state_machine.rs`).
pub const APPLY_BEFORE_AUDIT: &str = "apply-before-audit-write";
/// Named fault point: a snapshot is built and not yet stored (`raft/state_machine.rs`).
pub const SNAPSHOT_BEFORE_SAVE: &str = "snapshot-built-before-save";
/// Named fault point: a signer released its share and has not answered the
/// coordinator yet (`node.rs`, the handler of a remote `SignShare`).
pub const SIGNER_AFTER_SHARE: &str = "signer-after-share-before-answer";
/// Named fault point: the leader holds the shares of a signing session (the
/// coordinator returned) and has not committed the signature yet (`coordinate.rs`).
pub const LEADER_AFTER_SHARES: &str = "leader-after-shares-before-commit";

/// Every named fault point.
pub const POINTS: &[&str] = &[
    DKG_AFTER_SEAL,
    REFRESH_AFTER_SEAL,
    WRITE_AFTER_COMMIT,
    APPLY_BEFORE_AUDIT,
    SNAPSHOT_BEFORE_SAVE,
    SIGNER_AFTER_SHARE,
    LEADER_AFTER_SHARES,
];

/// Decides whether `node` crashes at the named point. Called on the node's own
/// task, in the order the points are reached, so a hook drawing from a seeded
/// RNG is deterministic under the simulator.
pub type PointHook = dyn Fn(NodeId, &'static str) -> bool + Send + Sync;

#[cfg(synod_faults)]
static POINT_HOOK: std::sync::RwLock<Option<std::sync::Arc<PointHook>>> = std::sync::RwLock::new(None);

/// Installs (or, with `None`, removes) the hook that decides crashes at named points.
#[cfg(synod_faults)]
pub fn set_point_hook(hook: Option<std::sync::Arc<PointHook>>) {
    *POINT_HOOK.write().unwrap_or_else(|e| e.into_inner()) = hook;
}

/// Does nothing: a build without faults has no crash points.
#[cfg(not(synod_faults))]
pub fn set_point_hook(_hook: Option<std::sync::Arc<PointHook>>) {}

/// A named fault point (one of [`POINTS`]). When the installed hook says that
/// `node` crashes here, the returned future never completes (the node is
/// crashed from outside, by the simulator); otherwise, and always in builds
/// without `synod_faults`, it completes at once.
pub async fn crash_point(node: NodeId, name: &'static str) {
    #[cfg(synod_faults)]
    {
        let hook = POINT_HOOK.read().unwrap_or_else(|e| e.into_inner()).clone();
        if hook.is_some_and(|decide| decide(node, name)) {
            tracing::warn!(node, point = name, "fault point: this node crashes here");
            std::future::pending::<()>().await;
        }
    }
    #[cfg(not(synod_faults))]
    let _ = (node, name);
}

/// The faults this build can inject, for `synod version`.
pub fn available() -> &'static [&'static str] {
    if cfg!(synod_faults) {
        KNOWN
    } else {
        &[]
    }
}

#[cfg(all(test, synod_faults))]
mod tests {
    use super::*;

    #[test]
    fn faults_per_node_switch_lies_on_that_node_only() {
        // A fault switched on for node 3 is on for node 3 alone; clearing it turns it off again.
        set_for_node(3, &[CORRUPT_SHARES]).expect("known fault");
        assert!(enabled_for(3, CORRUPT_SHARES));
        assert!(!enabled_for(2, CORRUPT_SHARES));
        assert!(!enabled(CORRUPT_SHARES));
        assert!(set_for_node(3, &["no-such-fault"]).is_err());
        set_for_node(3, &[]).expect("clearing");
        assert!(!enabled_for(3, CORRUPT_SHARES));
    }

    #[test]
    fn faults_crash_point_without_a_hook_returns_at_once() {
        // With no hook installed a named point is a no-op; a hook that says no lets it pass too.
        futures::executor::block_on(crash_point(1, DKG_AFTER_SEAL));
        set_point_hook(Some(std::sync::Arc::new(|_, _| false)));
        futures::executor::block_on(crash_point(1, WRITE_AFTER_COMMIT));
        set_point_hook(None);
    }
}

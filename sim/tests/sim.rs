//! The simulator's own acceptance tests, run against the `synod-sim` binary
//! (each seed in its own process, as the binary does). Bounded by seed counts,
//! never by wall time.

use std::process::{Command, Output};

fn sim(args: &[&str]) -> Output {
    assert!(synod_node::faults::built(), "the simulator's tests need a fault build: {}", synod_node::faults::NOT_BUILT);
    Command::new(env!("CARGO_BIN_EXE_synod-sim")).args(args).output().expect("run synod-sim")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn trace_hash(out: &Output) -> String {
    let text = stdout(out);
    let line = text.lines().find(|l| l.starts_with("seed ")).unwrap_or_else(|| panic!("no seed line in {text}"));
    line.rsplit("hash ").next().expect("a hash").trim().to_string()
}

/// Runs chaos `seeds` with `plant` (fail-fast, no shrinking) and asserts that a
/// seed failed and printed the command that replays it; the output, for the
/// test to check which invariant broke.
fn plant_caught(plant: &str, seeds: &str, jobs: &str) -> String {
    let out = sim(&["--seeds", seeds, "--plant", plant, "--fail-fast", "--no-shrink", "--jobs", jobs]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains(&format!("--plant {plant}")), "{text}");
    text
}

#[test]
fn sim_same_seed_gives_the_same_trace_hash() {
    // One seed replays byte for byte: two processes print the same trace hash; another seed differs.
    let a = sim(&["--seed", "7", "--profile", "chaos"]);
    let b = sim(&["--seed", "7", "--profile", "chaos"]);
    let c = sim(&["--seed", "8", "--profile", "chaos"]);
    assert!(a.status.success(), "{}", stdout(&a));
    assert_eq!(trace_hash(&a), trace_hash(&b));
    assert_ne!(trace_hash(&a), trace_hash(&c));
    assert_eq!(trace_hash(&a).len(), 64);
}

#[test]
fn sim_chaos_sweep_passes() {
    // A small chaos sweep (every fault kind on, 5 nodes: a byzantine signer, an equivocating leader and crashes at named fault points included) breaks no invariant, every write completes and every approved sign request is signed after the heal.
    let out = sim(&["--seeds", "100..120", "--profile", "chaos", "--no-shrink", "--jobs", "2"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("sweep: 20 seeds, 20 passed, 0 failed"), "{text}");
    let signatures: usize = text
        .split(" writes, ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no signature count in {text}"));
    assert!(signatures >= 100, "the sweep signed only {signatures} requests: {text}");
}

#[test]
fn sim_ack_before_commit_is_caught_with_a_replay_command() {
    // The planted ack-before-commit bug breaks "no acknowledged write lost" within 5 seeds, and the failure names the command that replays it.
    let text = plant_caught("ack-before-commit", "0..5", "1");
    assert!(text.contains("violated acknowledged-write-lost"), "{text}");
    assert!(text.contains("replay: SYNOD_BUILD_FAULTS=1 cargo run -p synod-sim --release -- --seed "), "{text}");
}

#[test]
fn sim_nonce_reuse_is_caught_with_a_replay_command() {
    // The planted nonce-reuse signer (a new session of a request reuses the nonces of another unused session) breaks "a nonce serves one signing package" within 8 chaos seeds, and the failure names the command that replays it.
    let text = plant_caught("nonce-reuse", "0..8", "2");
    assert!(text.contains("violated nonce-single-use"), "{text}");
}

#[test]
fn sim_skip_policy_is_caught_with_a_replay_command() {
    // The planted skip-policy leader (its coordinator takes up requests that lack approvals, and
    // its own signer releases shares for them) breaks "no request is taken up before its policy is
    // met" or "no share without a met policy", whichever a step sees first, within 4 chaos seeds,
    // and the failure names the command that replays it.
    let text = plant_caught("skip-policy", "0..4", "1");
    assert!(text.contains("violated policy-bypassed") || text.contains("violated share-without-policy"), "{text}");
}

#[test]
fn sim_skip_node_author_check_is_caught_with_a_replay_command() {
    // The planted node that takes node-authored commands without checking their node's
    // certificate and key lets the adversary's forged signing outcome (the proposing leader
    // failing a request the approvers withhold, signed by a stranger with certificate bytes "00") change
    // the state, which breaks "forged commands never change state" (caught on chaos seeds 16 and
    // 21 of 0..40; the forgery is one of six kinds drawn per scheduled byzantine fault).
    let text = plant_caught("skip-node-author-check", "14..22", "2");
    assert!(text.contains("violated forged-command-applied"), "{text}");
}

#[test]
fn sim_skip_coordinator_check_is_caught_with_a_replay_command() {
    // The planted node that takes a signing outcome from any member, whether or not it took
    // up signing in the entry's term, lets the adversary's `sign_failed` signed with a
    // follower's real certificate and key fail a request the approvers withhold, which breaks
    // "forged commands never change state" (caught on 8 of chaos seeds 0..80, seeds 33 and 34
    // first; the forgery is one of six kinds drawn per scheduled byzantine fault).
    let text = plant_caught("skip-coordinator-check", "33..35", "2");
    assert!(text.contains("violated forged-command-applied"), "{text}");
}

#[test]
fn sim_skip_genesis_pin_is_caught_with_a_replay_command() {
    // At boot an intruder sends the last node a genesis naming itself the admin. The planted
    // node that ignores its genesis_admins pin takes it, and the cluster's admins are not the
    // ones the real genesis names, which breaks "forged commands never change state" at once.
    let text = plant_caught("skip-genesis-pin", "0..2", "2");
    assert!(text.contains("violated forged-command-applied") && text.contains("admins differ"), "{text}");
}

#[test]
fn sim_trust_snapshot_is_caught_with_a_replay_command() {
    // A byzantine member sends its peers a snapshot of its own making (its state plus a
    // forged key, 50 terms ahead), endorsed by itself alone. The planted node installs
    // snapshots without checking their endorsements, so it takes the forged key, which
    // breaks "forged commands never change state".
    let text = plant_caught("trust-snapshot", "0..2", "2");
    assert!(text.contains("violated forged-command-applied") && text.contains("forged/snapshot-n"), "{text}");
}

#[test]
fn sim_trust_entry_time_is_caught_with_a_replay_command() {
    // A leader that stamps its entries 200 days ahead for a while (every chaos seed has one) moves
    // the cluster's time once followers take every entry's time as stamped (the planted
    // trust-entry-time), which breaks "state time never runs far ahead of true time" within 200
    // chaos seeds, and the failure names the command that replays it.
    let text = plant_caught("trust-entry-time", "0..200", "2");
    assert!(text.contains("violated state-time-ahead"), "{text}");
}

#[test]
fn sim_unknown_plant_is_refused_with_the_known_ones() {
    // A misspelt plant is an error that lists the plants the simulator knows.
    let out = sim(&["--seed", "1", "--plant", "ack-befor-commit"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("unknown plant") && err.contains("ack-before-commit"), "{err}");
}

#[test]
fn sim_shrinking_leaves_out_crash_points_and_the_byzantine_signer() {
    // Seed 0 with planted nonce reuse fails with a crash at a named point and a byzantine
    // signer in its run, neither needed for the bug: the shrunk replay leaves both out, and
    // running that replay fails the same way.
    let out = sim(&["--seed", "0", "--plant", "nonce-reuse"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("violated nonce-single-use"), "{text}");
    let replay = text.lines().find_map(|l| l.strip_prefix("replay: ")).expect("a replay line");
    assert!(replay.contains("--honest-signers") && replay.contains("--skip-points "), "{replay}");
    let args: Vec<&str> = replay.split_once(" -- ").expect("binary arguments").1.split(' ').collect();
    let again = sim(&[&args[..], &["--no-shrink"]].concat());
    let again_text = stdout(&again);
    assert_eq!(again.status.code(), Some(1), "{again_text}");
    assert!(again_text.contains("violated nonce-single-use"), "{again_text}");
    assert!(again_text.contains(&format!("replay: {replay}")), "{again_text}");
}

#[test]
fn sim_planted_skip_client_bounds_is_caught() {
    // A state machine without the rules-4 bounds keeps a request signed as if issued ten years
    // ahead pending for ten years; `requests-bounded` names it.
    let text = plant_caught("skip-client-bounds", "0..4", "2");
    assert!(text.contains("request-outlives-its-bound"), "{text}");
}

#[test]
fn sim_planted_skip_retirement_is_caught() {
    // A cluster whose rotated-out key version never retires keeps taking requests that name
    // it after its overlap; `retired-version-takes-requests` names the request and the deadline.
    let text = plant_caught("skip-retirement", "0..8", "2");
    assert!(text.contains("retired-version-takes-requests"), "{text}");
}

#[test]
fn sim_planted_skip_key_status_is_caught() {
    // A cluster that never consults a key's service status keeps signing on the lifecycle
    // client's key after it was disabled or scheduled for destruction;
    // `out-of-service-releases-nothing` names the share released by the signer's own state.
    let text = plant_caught("skip-key-status", "0..8", "2");
    assert!(text.contains("out-of-service-releases-nothing"), "{text}");
}

#[test]
fn sim_planted_keep_old_generation_is_caught() {
    // Signers that keep signing with the share they unsealed first after a refresh made a new
    // generation current: each share they release is checked by FROST against the verifying
    // share of the generation current in the signer's own state, so `share-of-current-generation`
    // names it (caught on 12 of chaos seeds 0..16).
    let text = plant_caught("keep-old-generation", "1..3", "2");
    assert!(text.contains("share-of-current-generation") && text.contains("does not verify"), "{text}");
}

#[test]
fn sim_planted_trust_rolled_back_vote_is_caught() {
    // Nodes that trust the vote and log on their disk after a restart: the `rollback-disk`
    // fault restarts one on an earlier copy of its disk, which resumes leading in its old term
    // or votes again in terms it already voted in, and entries committed before the rollback
    // change (caught on 8 of chaos seeds 0..100, the first at seed 10).
    let text = plant_caught("trust-rolled-back-vote", "10..12", "2");
    assert!(text.contains("raft-committed-entries-never-change") || text.contains("raft-election-safety"), "{text}");
}

#[test]
fn sim_planted_overwrite_applied_outcome_is_caught() {
    // A state machine that lets a later outcome replace a command's applied record: the refused
    // replay of an acknowledged write (the adversary's, or a writer's retry that reached the log
    // after its first attempt) files "refused: replay" over it, and a node asked about the
    // command (`GetCommand`) says it was refused at the replay's index; `command-outcomes-match-log`
    // names the write, the node and the index it was applied at (caught on 14 of chaos seeds
    // 0..20, the first at seed 0).
    let text = plant_caught("overwrite-applied-outcome", "0..2", "2");
    assert!(
        text.contains("violated command-outcome-contradicts-log") && text.contains("says it was refused"),
        "{text}"
    );
}

#[test]
fn sim_planted_ignore_namespace_policy_is_caught() {
    // A state machine that skips the SSHSIG namespace check takes the signing clients' probe
    // in namespace `file` on the key whose policy allows only `git`; `format-policy-bypassed`
    // names the request and the policy (caught on chaos seeds 1, 2, 4, 6 and 7 of 0..8).
    let text = plant_caught("ignore-namespace-policy", "1..3", "2");
    assert!(text.contains("violated format-policy-bypassed") && text.contains("namespace \"file\""), "{text}");
}

#[test]
fn sim_planted_passkey_ignores_counter_is_caught() {
    // A state machine that takes a passkey approval without comparing its signature counter
    // counts the approvers' cloned-authenticator probe (the counter set back to the last one
    // used); `passkey-counter-not-growing` names the credential and both approvals (caught on
    // chaos seeds 0, 5 and 7 of 0..8).
    let text = plant_caught("passkey-ignores-counter", "0..1", "1");
    assert!(text.contains("violated passkey-counter-not-growing") && text.contains("not above the"), "{text}");
}

#[test]
fn sim_planted_global_signs_without_comment_is_caught() {
    // A state machine that builds minisign's global signature request from the parent's
    // signature alone: `minisign-global-mismatch` names the global request and its parent as
    // soon as a node holds it (caught on chaos seeds 1 and 3 to 7 of 0..8: every seed with a
    // signed minisign request).
    let text = plant_caught("global-signs-without-comment", "1..3", "2");
    assert!(text.contains("violated minisign-global-mismatch") && text.contains("synod-global-"), "{text}");
}

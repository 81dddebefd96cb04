//! Keys and requests in the state machine: what a node, an admin or a leader
//! may and may not make it record. FROST runs in-process here; the real
//! network and processes are tested in `tests/tests/signing.rs`.

use std::collections::BTreeMap;

use ed25519_dalek::SigningKey;
use frost_ed25519 as frost;
use rand_core::OsRng;
use synod_proto::{Command, Envelope, LogEntry, Member, NodeAddr, OperatorKey, Outcome, SignedCommand};

use super::{ClusterState, KeyStatus, RequestStatus};
use crate::pki::{in_memory_pki, NodeIdentity};

const CLUSTER: &str = "c";
/// The destruction waiting period the test genesis allows.
const TEST_DESTROY_WAIT_MIN_MS: u64 = 60_000;

pub(crate) struct World {
    pub(crate) state: ClusterState,
    admin: SigningKey,
    nodes: Vec<NodeIdentity>,
    next_id: u32,
    pub(crate) index: u64,
    pub(crate) time_ms: u64,
    /// The Raft term the next entries are in.
    term: u64,
}

impl World {
    /// Genesis (under the current rules) with three members and the in-memory
    /// CA; node 1 takes up signing.
    pub(crate) fn new() -> World {
        World::under(Some(super::RULES_CURRENT))
    }

    /// As [`World::new`], with a genesis naming `rules` (`None`: a plain
    /// genesis from before rules were versioned, and no take-up).
    pub(crate) fn under(rules: Option<u32>) -> World {
        let (ca, nodes) = in_memory_pki(&[1, 2, 3, 4], &mut OsRng).unwrap(); // Node 4 may join.
        let admin = SigningKey::from_bytes(&[7; 32]);
        let members = (1..=3)
            .map(|id| Member {
                node_id: id,
                addr: NodeAddr { raft_addr: format!("n{id}:1"), api_addr: format!("n{id}:2") },
            })
            .collect();
        let mut world = World {
            state: ClusterState::default(),
            admin,
            nodes,
            next_id: 0,
            index: 0,
            time_ms: 1_800_000_000_000,
            term: 1,
        };
        let (admins, ca_certificate) = (vec![OperatorKey::of(&world.admin)], hex::encode(ca));
        let genesis = match rules {
            Some(rules) => Command::VersionedGenesis {
                rules,
                admins,
                members,
                ca_certificate,
                // A test cluster may choose a short waiting period at genesis.
                key_destroy_wait_min_ms: (rules >= super::RULES_KEY_LIFECYCLE).then_some(TEST_DESTROY_WAIT_MIN_MS),
            },
            None => Command::Genesis { admins, members, ca_certificate },
        };
        let outcome = world.by_admin(genesis);
        assert!(outcome.is_applied(), "{outcome:?}");
        if rules.is_some_and(|r| r >= super::RULES_COORDINATOR) {
            world.take_up(1);
        }
        world
    }

    /// A new term in which `node` leads and takes up signing, as a new leader does.
    pub(crate) fn take_up(&mut self, node: u64) {
        self.term += 1;
        let outcome = self.by_node(node, Command::Coordinate { node_id: node, term: self.term });
        assert!(outcome.is_applied(), "{outcome:?}");
    }

    pub(crate) fn envelope(&mut self, command: Command) -> Envelope {
        self.next_id += 1;
        Envelope {
            // The genesis names the cluster; every later command its (derived) id.
            cluster_id: self.state.cluster_id.clone().unwrap_or_else(|| CLUSTER.into()),
            command_id: format!("{:032x}", self.next_id),
            issued_at_ms: self.time_ms,
            expires_at_ms: self.time_ms + 60_000,
            command,
        }
    }

    pub(crate) fn apply(&mut self, command: SignedCommand) -> Outcome {
        self.index += 1;
        self.time_ms += 1;
        self.state.apply(self.index, self.term, &LogEntry { time_ms: self.time_ms, command })
    }

    pub(crate) fn by_admin(&mut self, command: Command) -> Outcome {
        let env = self.envelope(command);
        let signed = SignedCommand::sign(&env, &self.admin);
        self.apply(signed)
    }

    pub(crate) fn by_node(&mut self, node: u64, command: Command) -> Outcome {
        let env = self.envelope(command);
        let signed = self.nodes[(node - 1) as usize].sign(&env);
        self.apply(signed)
    }

    pub(crate) fn key_id(&self, name: &str) -> String {
        self.state.key_by_name(name).expect("key").id.clone()
    }
}

fn id(n: u64) -> frost::Identifier {
    frost::Identifier::try_from(n as u16).unwrap()
}

pub(crate) fn refused(outcome: &Outcome, needle: &str) {
    match outcome {
        Outcome::Rejected { reason, .. } => {
            assert!(reason.contains(needle), "refused for {reason:?}, expected {needle:?}")
        }
        other => panic!("expected a refusal containing {needle:?}, got {other:?}"),
    }
}

/// Runs a real 2-of-3 DKG through the state: round-1 packages and confirmations
/// as node-signed commands. Returns the key packages.
pub(crate) fn dkg(world: &mut World, name: &str) -> BTreeMap<u64, frost::keys::KeyPackage> {
    assert!(world
        .by_admin(Command::CreateKey {
            name: name.into(),
            threshold: 2,
            participants: vec![1, 2, 3],
            policy: Some(Default::default())
        })
        .is_applied());
    let key_id = world.key_id(name);
    dkg_rounds(world, &key_id, &[1, 2, 3], 2)
}

/// Runs the DKG rounds of the generating key `key_id` among `participants`
/// (node ids) with `threshold`, through the state. Returns the key packages.
pub(crate) fn dkg_rounds(
    world: &mut World,
    key_id: &str,
    participants: &[u64],
    threshold: u16,
) -> BTreeMap<u64, frost::keys::KeyPackage> {
    let key_id = key_id.to_string();
    let n_of = participants.len() as u16;
    let mut secrets = BTreeMap::new();
    let mut round1 = BTreeMap::new();
    for &n in participants {
        let (secret, package) = frost::keys::dkg::part1(id(n), n_of, threshold, OsRng).unwrap();
        let hex_package = hex::encode(package.serialize().unwrap());
        let outcome = world.by_node(n, Command::DkgRound1 { key_id: key_id.clone(), node_id: n, package: hex_package });
        assert!(outcome.is_applied(), "{outcome:?}");
        secrets.insert(n, secret);
        round1.insert(id(n), package);
    }
    let mut round2_secrets = BTreeMap::new();
    let mut inbox: BTreeMap<frost::Identifier, BTreeMap<frost::Identifier, _>> = BTreeMap::new();
    for (n, secret) in secrets {
        let others = round1.iter().filter(|(i, _)| **i != id(n)).map(|(i, p)| (*i, p.clone())).collect();
        let (secret2, packages) = frost::keys::dkg::part2(secret, &others).unwrap();
        for (to, package) in packages {
            inbox.entry(to).or_default().insert(id(n), package);
        }
        round2_secrets.insert(n, (secret2, others));
    }
    let mut key_packages = BTreeMap::new();
    for (n, (secret2, others)) in round2_secrets {
        let (key_package, public) = frost::keys::dkg::part3(&secret2, &others, &inbox[&id(n)]).unwrap();
        let package_hex = hex::encode(public.serialize().unwrap());
        let confirm = Command::KeyConfirm {
            key_id: key_id.clone(),
            node_id: n,
            group_key: hex::encode(public.verifying_key().serialize().unwrap()),
            public_key_package_sha256: super::package_hash(&package_hex),
        };
        let outcome = world.by_node(n, confirm);
        assert!(outcome.is_applied(), "{outcome:?}");
        key_packages.insert(n, key_package);
    }
    key_packages
}

#[test]
fn state_dkg_activates_only_when_every_participant_confirms() {
    // A key turns active after the last of three matching confirmations, with the group key the
    // round-1 commitments determine.
    let mut world = World::new();
    let packages = dkg(&mut world, "k");
    let key = world.state.key_by_name("k").unwrap();
    assert_eq!(key.status, KeyStatus::Active);
    assert_eq!(key.confirmed, vec![1, 2, 3]);
    let group = hex::encode(packages[&1].verifying_key().serialize().unwrap());
    assert_eq!(key.group_key.as_deref(), Some(group.as_str()));
}

#[test]
fn state_node_messages_need_the_nodes_own_certificate() {
    // A round-1 package is refused when it claims another node, comes from an operator key
    // without a certificate, from a non-participant, or twice from one node.
    let mut world = World::new();
    world.by_admin(Command::CreateKey {
        name: "k".into(),
        threshold: 2,
        participants: vec![1, 2],
        policy: Some(Default::default()),
    });
    let key_id = world.key_id("k");
    let (_, package) = frost::keys::dkg::part1(id(1), 2, 2, OsRng).unwrap();
    let package = hex::encode(package.serialize().unwrap());
    let round1 = |node_id| Command::DkgRound1 { key_id: key_id.clone(), node_id, package: package.clone() };

    refused(&world.by_node(2, round1(1)), "carries the certificate of node 2");
    refused(&world.by_admin(round1(1)), "must carry that node's certificate");
    refused(&world.by_node(3, round1(3)), "not a participant");
    assert!(world.by_node(1, round1(1)).is_applied());
    refused(&world.by_node(1, round1(1)), "already committed");

    // A certificate from another CA does not count, even for the right node id.
    let (_, strangers) = in_memory_pki(&[1], &mut OsRng).unwrap();
    let env = world.envelope(round1(1));
    refused(&world.apply(strangers[0].sign(&env)), "does not verify against the cluster CA");
}

#[test]
fn state_disagreeing_confirmation_aborts_and_frees_the_name() {
    // A participant that derived another key aborts the generation; the name can be used again.
    let mut world = World::new();
    world.by_admin(Command::CreateKey {
        name: "k".into(),
        threshold: 2,
        participants: vec![1, 2],
        policy: Some(Default::default()),
    });
    let key_id = world.key_id("k");
    for n in 1..=2 {
        let (_, package) = frost::keys::dkg::part1(id(n), 2, 2, OsRng).unwrap();
        let package = hex::encode(package.serialize().unwrap());
        assert!(world.by_node(n, Command::DkgRound1 { key_id: key_id.clone(), node_id: n, package }).is_applied());
    }
    let confirm = Command::KeyConfirm {
        key_id: key_id.clone(),
        node_id: 1,
        group_key: "00".repeat(32),
        public_key_package_sha256: "00".repeat(32),
    };
    assert!(world.by_node(1, confirm).is_applied());
    assert!(matches!(world.state.keys[&key_id].status, KeyStatus::Aborted { .. }));
    assert!(world.state.key_by_name("k").is_none());
    assert!(world
        .by_admin(Command::CreateKey {
            name: "k".into(),
            threshold: 2,
            participants: vec![1, 2],
            policy: Some(Default::default())
        })
        .is_applied());
}

/// A signature over `message` by signers 1 and 2.
/// A signature of `message` by the first threshold of `packages`' holders.
pub(crate) fn threshold_sign(packages: &BTreeMap<u64, frost::keys::KeyPackage>, message: &[u8]) -> String {
    let t = usize::from(*packages.values().next().expect("a package").min_signers());
    let signers: Vec<u64> = packages.keys().copied().take(t).collect();
    let mut nonces = BTreeMap::new();
    let mut commitments = BTreeMap::new();
    for &n in &signers {
        let (nonce, commitment) = frost::round1::commit(packages[&n].signing_share(), &mut OsRng);
        nonces.insert(n, nonce);
        commitments.insert(id(n), commitment);
    }
    let signing_package = frost::SigningPackage::new(commitments, message);
    let shares = signers
        .iter()
        .map(|n| (id(*n), frost::round2::sign(&signing_package, &nonces[n], &packages[n]).unwrap()))
        .collect();
    let verifying_shares = packages.iter().map(|(n, p)| (id(*n), *p.verifying_share())).collect();
    let first = packages.values().next().expect("a package");
    let public =
        frost::keys::PublicKeyPackage::new(verifying_shares, *first.verifying_key(), Some(*first.min_signers()));
    hex::encode(frost::aggregate(&signing_package, &shares, &public).unwrap().serialize().unwrap())
}

#[test]
fn state_requests_keep_one_message_and_only_verified_signatures() {
    // A result that does not verify is refused and the request stays pending; a valid one is
    // stored once; the same request id with another message is refused, with the same message
    // it is answered as it stands.
    let mut world = World::new();
    let packages = dkg(&mut world, "k");
    let request = |message: &[u8]| Command::SignRequest {
        format: None,
        trusted_comment: None,
        request_id: "r1".into(),
        key: "k".into(),
        message: hex::encode(message),
        purpose: String::new(),
        environment: String::new(),
        attributes: Default::default(),
        version: None,
    };
    assert!(world.by_admin(request(b"pay 1")).is_applied());
    let forged = threshold_sign(&packages, b"pay 1000");
    let result = |signature: String| Command::SignResult {
        request_id: "r1".into(),
        node_id: 1,
        signature,
        signers: vec![1, 2],
        culprits: vec![],
        sessions: 1,
        attempt: 0,
    };
    refused(&world.by_node(1, result(forged)), "does not verify");
    assert_eq!(world.state.requests["r1"].status, RequestStatus::Pending);
    let good = threshold_sign(&packages, b"pay 1");
    assert!(world.by_node(1, result(good.clone())).is_applied());
    assert_eq!(world.state.requests["r1"].status, RequestStatus::Signed { signature: good });
    refused(&world.by_node(1, result(threshold_sign(&packages, b"pay 1"))), "no longer pending");
    refused(&world.by_admin(request(b"pay 2")), "one request id, one message");
    assert!(world.by_admin(request(b"pay 1")).is_applied());
    assert!(world.state.pending_requests.is_empty());
}

#[test]
fn state_requests_need_an_active_key_and_a_requester() {
    // No request for a missing key, or from an operator who is not allowed to request.
    let mut world = World::new();
    let request = Command::SignRequest {
        format: None,
        trusted_comment: None,
        request_id: "r1".into(),
        key: "nope".into(),
        message: "00".into(),
        purpose: String::new(),
        environment: String::new(),
        attributes: Default::default(),
        version: None,
    };
    refused(&world.by_admin(request.clone()), "no key named");
    let stranger = SigningKey::from_bytes(&[9; 32]);
    let env = world.envelope(request);
    refused(&world.apply(SignedCommand::sign(&env, &stranger)), "may not request signatures");
}

#[test]
fn state_pending_request_fails_after_its_deadline() {
    // A request nobody signs is failed by entry time alone, so every node decides alike.
    let mut world = World::new();
    dkg(&mut world, "k");
    let request = Command::SignRequest {
        format: None,
        trusted_comment: None,
        request_id: "r1".into(),
        key: "k".into(),
        message: "00".into(),
        purpose: String::new(),
        environment: String::new(),
        attributes: Default::default(),
        version: None,
    };
    assert!(world.by_admin(request).is_applied());
    world.time_ms += 60_001; // past the request command's expiry
    world.by_admin(Command::Put { key: "tick".into(), value: "1".into() });
    assert!(matches!(world.state.requests["r1"].status, RequestStatus::Failed { .. }));
}

/// Adds operators and a policy needing `m` approvals from alice and bob to key `k`.
pub(crate) fn with_policy(world: &mut World, m: u32) -> BTreeMap<&'static str, SigningKey> {
    use synod_proto::authz::{Policy, Role};
    let mut keys = BTreeMap::new();
    for (i, (name, role)) in
        [("alice", Role::Approver), ("bob", Role::Approver), ("dave", Role::Requester)].iter().enumerate()
    {
        let key = SigningKey::from_bytes(&[20 + i as u8; 32]);
        let add = Command::AddOperator {
            name: (*name).into(),
            key: Some(OperatorKey::of(&key)),
            ssh_key: None,
            roles: vec![*role],
            pending_max: None,
        };
        assert!(world.by_admin(add).is_applied());
        keys.insert(*name, key);
    }
    let policy = Policy { approvers: vec!["alice".into(), "bob".into()], approvals_required: m, ..Policy::default() };
    assert!(world.by_admin(Command::SetPolicy { key: "k".into(), policy }).is_applied());
    keys
}

pub(crate) fn request_by(world: &mut World, key: &SigningKey, id: &str) -> Outcome {
    let env = world.envelope(Command::SignRequest {
        format: None,
        trusted_comment: None,
        request_id: id.into(),
        key: "k".into(),
        message: "00".into(),
        purpose: String::new(),
        environment: String::new(),
        attributes: Default::default(),
        version: None,
    });
    world.apply(SignedCommand::sign(&env, key))
}

/// `approver` (operator `name`) approves request `id`, sent by the admin.
pub(crate) fn approve(world: &mut World, id: &str, name: &str, approver: &SigningKey) -> Outcome {
    use ed25519_dalek::Signer;
    let statement = world.state.approval_statement(&world.state.requests[id]).unwrap();
    let signature = approver.sign(&synod_proto::authz::approval_bytes(&statement));
    let signature = synod_proto::authz::ApprovalSignature::Ed25519 { signature: hex::encode(signature.to_bytes()) };
    world.by_admin(Command::Approve { request_id: id.into(), approver: name.into(), signature })
}

#[test]
fn state_revoked_approver_no_longer_counts() {
    // An approver removed while a request waits takes its approval with it: the request is no
    // longer ready, in the state machine's view and in the signer's re-verification.
    let mut world = World::new();
    dkg(&mut world, "k");
    let keys = with_policy(&mut world, 1);
    assert!(request_by(&mut world, &keys["dave"], "r1").is_applied());
    assert!(approve(&mut world, "r1", "alice", &keys["alice"]).is_applied());
    let request = world.state.requests["r1"].clone();
    assert!(world.state.ready_to_sign(&request, true).is_ok());
    assert!(world.by_admin(Command::RemoveOperator { name: "alice".into() }).is_applied());
    let err = world.state.ready_to_sign(&request, true).unwrap_err();
    assert!(err.contains("lacks approvals"), "{err}");
}

#[test]
fn state_policy_change_fails_pending_requests_and_old_approvals() {
    // Changing a key's policy fails its pending requests: approvals given under the old
    // version cannot carry a request into the new one.
    let mut world = World::new();
    dkg(&mut world, "k");
    let keys = with_policy(&mut world, 2);
    assert!(request_by(&mut world, &keys["dave"], "r1").is_applied());
    let lax = synod_proto::authz::Policy::default();
    assert!(world.by_admin(Command::SetPolicy { key: "k".into(), policy: lax }).is_applied());
    assert!(matches!(world.state.requests["r1"].status, RequestStatus::Failed { .. }));
}

#[test]
fn state_admin_quorum_turns_admin_commands_into_proposals() {
    // With two admins required, one admin's command only proposes; another admin carries it;
    // the same admin agreeing twice does not.
    let mut world = World::new();
    let admin2 = SigningKey::from_bytes(&[42; 32]);
    let add = Command::AddOperator {
        name: "admin2".into(),
        key: Some(OperatorKey::of(&admin2)),
        ssh_key: None,
        roles: vec![synod_proto::authz::Role::Admin],
        pending_max: None,
    };
    assert!(world.by_admin(add).is_applied());
    assert!(world.by_admin(Command::SetAdminPolicy { approvals_required: 2 }).is_applied());
    let put = Command::Put { key: "x".into(), value: "1".into() };
    assert!(world.by_admin(put).is_applied());
    assert!(!world.state.kv.contains_key("x"), "one admin wrote alone");
    let proposal = world.state.proposals.keys().next().unwrap().clone();
    refused(&world.by_admin(Command::ApproveProposal { proposal_id: proposal.clone() }), "already agreed");
    let env = world.envelope(Command::ApproveProposal { proposal_id: proposal });
    assert!(world.apply(SignedCommand::sign(&env, &admin2)).is_applied());
    assert_eq!(world.state.kv["x"].value, "1");
}

#[test]
fn state_audit_chain_links_every_entry() {
    // Applied and refused entries alike append records whose chain verifies; the head matches.
    let mut world = World::new();
    dkg(&mut world, "k");
    world.by_admin(Command::RemoveOperator { name: "nobody".into() });
    let records = world.state.take_audit();
    assert_eq!(records.len() as u64, world.state.audit_head.seq);
    assert!(records.iter().any(|r| r.result == "refused"));
    let head = super::verify_chain(&super::AuditHead::default(), &records).unwrap();
    assert_eq!(head, world.state.audit_head);
    let mut changed = records.clone();
    changed[2].detail.push('!');
    assert_eq!(super::verify_chain(&super::AuditHead::default(), &changed).unwrap_err().0, 3);
}

#[test]
fn state_batched_outcomes_are_judged_and_audited_one_by_one() {
    // A node's batch of outcomes: a valid signature is stored, a forged one is refused, a failure
    // is recorded, each with its own audit record; the batch needs the node's own certificate and
    // may carry only that node's outcomes.
    let mut world = World::new();
    let packages = dkg(&mut world, "k");
    for (id, message) in [("r1", b"pay 1"), ("r2", b"pay 2"), ("r3", b"pay 3")] {
        let request = Command::SignRequest {
            format: None,
            trusted_comment: None,
            request_id: id.into(),
            key: "k".into(),
            message: hex::encode(message),
            purpose: String::new(),
            environment: String::new(),
            attributes: Default::default(),
            version: None,
        };
        assert!(world.by_admin(request).is_applied());
    }
    let result = |request_id: &str, signature: String| Command::SignResult {
        request_id: request_id.into(),
        node_id: 1,
        signature,
        signers: vec![1, 2],
        culprits: vec![],
        sessions: 1,
        attempt: 0,
    };
    let failed = Command::SignFailed {
        request_id: "r3".into(),
        node_id: 1,
        reason: "too few".into(),
        culprits: vec![],
        attempt: 0,
    };
    let good = threshold_sign(&packages, b"pay 1");
    let forged = threshold_sign(&packages, b"pay 1000");
    let batch =
        Command::SignOutcomes { node_id: 1, outcomes: vec![result("r1", good.clone()), result("r2", forged), failed] };
    refused(&world.by_admin(batch.clone()), "must carry that node's certificate");
    world.state.take_audit();
    let outcome = world.by_node(1, batch);
    assert!(outcome.is_applied(), "{outcome:?}");
    assert_eq!(world.state.requests["r1"].status, RequestStatus::Signed { signature: good });
    assert_eq!(world.state.requests["r2"].status, RequestStatus::Pending);
    assert!(matches!(world.state.requests["r3"].status, RequestStatus::Failed { .. }));
    let audit: Vec<_> =
        world.state.take_audit().into_iter().map(|r| (r.kind, r.request_id.unwrap_or_default(), r.result)).collect();
    let expect = |kind: &str, id: &str, result: &str| (kind.to_string(), id.to_string(), result.to_string());
    assert_eq!(
        audit,
        vec![
            expect("sign_result", "r1", "applied"),
            expect("sign_result", "r2", "refused"),
            expect("sign_failed", "r3", "applied")
        ]
    );
    let theirs =
        Command::SignFailed { request_id: "r2".into(), node_id: 2, reason: "x".into(), culprits: vec![], attempt: 0 };
    let foreign = Command::SignOutcomes { node_id: 1, outcomes: vec![theirs] };
    refused(&world.by_node(1, foreign), "may carry only that node's");
}

#[test]
fn state_late_outcome_of_a_failed_attempt_does_not_end_a_fresh_one() {
    // A request fails, is sent again (a fresh attempt awaiting approvals), and then a leader
    // that was cut off commits its late outcome of the first attempt: it is refused, before and
    // after the fresh attempt's approvals, and an outcome naming the fresh attempt applies.
    let mut world = World::new();
    dkg(&mut world, "k");
    let keys = with_policy(&mut world, 1);
    assert!(request_by(&mut world, &keys["dave"], "r1").is_applied());
    let fail = |node: u64, reason: &str, attempt: u32| Command::SignFailed {
        request_id: "r1".into(),
        node_id: node,
        reason: reason.into(),
        culprits: Vec::new(),
        attempt,
    };
    assert!(world.by_node(1, fail(1, "first attempt", 0)).is_applied());
    assert!(request_by(&mut world, &keys["dave"], "r1").is_applied());
    assert_eq!(world.state.requests["r1"].attempt, 1);
    world.take_up(2);
    refused(&world.by_node(2, fail(2, "late, from the first attempt", 0)), "is for attempt 1");
    assert_eq!(world.state.requests["r1"].status, RequestStatus::Pending);
    assert!(approve(&mut world, "r1", "alice", &keys["alice"]).is_applied());
    refused(&world.by_node(2, fail(2, "late, after the approvals", 0)), "is for attempt 1");
    assert_eq!(world.state.requests["r1"].status, RequestStatus::Pending);
    world.take_up(1);
    assert!(world.by_node(1, fail(1, "second attempt", 1)).is_applied());
}

/// A pending request `r1` on a fresh key `k`.
pub(crate) fn pending_request(world: &mut World) {
    dkg(world, "k");
    let request = Command::SignRequest {
        format: None,
        trusted_comment: None,
        request_id: "r1".into(),
        key: "k".into(),
        message: hex::encode(b"pay 1"),
        purpose: String::new(),
        environment: String::new(),
        attributes: Default::default(),
        version: None,
    };
    assert!(world.by_admin(request).is_applied());
}

fn failed_by(node: u64) -> Command {
    Command::SignFailed {
        request_id: "r1".into(),
        node_id: node,
        reason: "forged".into(),
        culprits: vec![],
        attempt: 0,
    }
}

#[test]
fn state_outcome_from_a_node_that_did_not_take_up_the_term_is_refused() {
    // Node 1 took up signing in this term; member node 2, with its own valid certificate,
    // reports a failure (alone or batched) for the request node 1 coordinates: refused, the
    // request stays pending. In a term nobody took up, even node 1's outcome is refused.
    let mut world = World::new();
    pending_request(&mut world);
    refused(&world.by_node(2, failed_by(2)), "which node 1 coordinates");
    let batch = Command::SignOutcomes { node_id: 2, outcomes: vec![failed_by(2)] };
    refused(&world.by_node(2, batch), "which node 1 coordinates");
    assert_eq!(world.state.requests["r1"].status, RequestStatus::Pending);
    world.term += 1;
    refused(&world.by_node(1, failed_by(1)), "no node has taken up signing");
    assert_eq!(world.state.requests["r1"].status, RequestStatus::Pending);
    world.take_up(1);
    assert!(world.by_node(1, failed_by(1)).is_applied());
}

#[test]
fn state_take_up_counts_only_in_its_own_term_and_once() {
    // A take-up naming another term than its entry's is refused (a follower cannot save one
    // for a term it may lead later), and a term's coordinator cannot be replaced; the same
    // node taking up its term again changes nothing. Only the last terms are remembered.
    let mut world = World::new();
    let term = world.term;
    refused(&world.by_node(2, Command::Coordinate { node_id: 2, term: term + 1 }), "counts only in the term");
    refused(&world.by_node(2, Command::Coordinate { node_id: 2, term }), "already coordinated by node 1");
    assert!(world.by_node(1, Command::Coordinate { node_id: 1, term }).is_applied());
    assert_eq!(world.state.coordinators.get(&term), Some(&1));
    for _ in 0..2 * super::COORDINATOR_TERMS_KEPT_MAX {
        world.take_up(3);
    }
    assert_eq!(world.state.coordinators.len(), super::COORDINATOR_TERMS_KEPT_MAX);
}

#[test]
fn state_rules_before_coordinators_replay_as_they_applied() {
    // A state whose genesis predates the rules version (no `rules` field in its snapshot)
    // judges as it always did: any member's outcome applies, and a take-up is refused.
    let mut world = World::new();
    pending_request(&mut world);
    let mut old = serde_json::to_value(&world.state).unwrap();
    let fields = old.as_object_mut().unwrap();
    fields.remove("rules");
    fields.remove("coordinators");
    world.state = serde_json::from_value(old).unwrap();
    assert_eq!(world.state.rules, 0);
    let term = world.term;
    refused(&world.by_node(2, Command::Coordinate { node_id: 2, term }), "rules (version 0) do not know");
    assert!(world.by_node(2, failed_by(2)).is_applied());
}

#[test]
fn state_oversized_field_is_refused_at_apply_naming_it() {
    // A command that skipped admission (a byzantine leader) with a field over its limit is
    // refused at apply with the same message admission gives; a state under the rules before
    // field limits applies it as it always did.
    let mut world = World::new();
    let oversized = world.envelope(Command::AddMember {
        node_id: 9,
        addr: NodeAddr { raft_addr: format!("n9:{}", "9".repeat(300)), api_addr: "n9:2".into() },
    });
    let signed = SignedCommand::sign(&oversized, &world.admin);
    refused(&world.apply(signed.clone()), "field add_member.addr.raft_addr is 303 bytes; the limit is 256");
    assert!(!world.state.members.contains_key(&9));
    world.state.rules = super::RULES_FIELD_LIMITS - 1;
    assert!(world.apply(signed).is_applied());
    assert!(world.state.members.contains_key(&9));
}

#[test]
fn state_genesis_names_the_rules_a_replay_judges_by() {
    // A plain genesis (a log from before rules were versioned) starts a state under rules 0
    // whatever rules this binary knows, so replaying that log judges its outcomes as they
    // applied; a genesis naming rules newer than this binary knows is refused, saying so.
    let mut world = World::under(None);
    assert_eq!(world.state.rules, 0);
    pending_request(&mut world);
    assert!(world.by_node(2, failed_by(2)).is_applied());
    let mut world = World::under(Some(super::RULES_CURRENT));
    assert_eq!(world.state.rules, super::RULES_CURRENT);
    pending_request(&mut world);
    refused(&world.by_node(2, failed_by(2)), "which node 1 coordinates");

    let mut fresh = World::new();
    fresh.state = ClusterState::default();
    let genesis = Command::VersionedGenesis {
        rules: super::RULES_CURRENT + 1,
        admins: vec![OperatorKey::of(&fresh.admin)],
        members: vec![Member { node_id: 1, addr: NodeAddr { raft_addr: "n1:1".into(), api_addr: "n1:2".into() } }],
        ca_certificate: "00".into(),
        key_destroy_wait_min_ms: None,
    };
    refused(&fresh.by_admin(genesis), "upgrade synod on every node");
    assert!(fresh.state.cluster_id.is_none());
}

#[test]
fn state_removed_approver_approval_is_dropped_and_not_inherited_by_a_namesake() {
    // Removing alice drops her approval from the pending request itself; an operator added
    // later under the same name does not inherit it.
    let mut world = World::new();
    dkg(&mut world, "k");
    let keys = with_policy(&mut world, 1);
    assert!(request_by(&mut world, &keys["dave"], "r1").is_applied());
    assert!(approve(&mut world, "r1", "alice", &keys["alice"]).is_applied());
    let removed = world.by_admin(Command::RemoveOperator { name: "alice".into() });
    assert!(matches!(&removed, Outcome::Applied { detail } if detail.contains("1 of their approvals")), "{removed:?}");
    assert!(world.state.requests["r1"].approvals.is_empty());
    let again = Command::AddOperator {
        name: "alice".into(),
        key: Some(OperatorKey::of(&keys["alice"])),
        ssh_key: None,
        roles: vec![synod_proto::authz::Role::Approver],
        pending_max: None,
    };
    assert!(world.by_admin(again).is_applied());
    let err = world.state.ready_to_sign(&world.state.requests["r1"].clone(), true).unwrap_err();
    assert!(err.contains("lacks approvals"), "{err}");
}

#[test]
fn state_requester_quota_is_per_operator_and_the_default_holds() {
    // dave may hold PENDING_PER_OPERATOR_DEFAULT requests open; the next is refused naming
    // the quota; a request needing no approval lives at most REQUEST_PENDING_MS_MAX.
    let mut world = World::new();
    dkg(&mut world, "k");
    let keys = with_policy(&mut world, 1);
    for i in 0..super::PENDING_PER_OPERATOR_DEFAULT {
        assert!(request_by(&mut world, &keys["dave"], &format!("q{i}")).is_applied());
    }
    refused(&request_by(&mut world, &keys["dave"], "one-more"), "already has 64 requests pending (at most 64)");
    let open = synod_proto::authz::Policy::default();
    assert!(world.by_admin(Command::SetPolicy { key: "k".into(), policy: open }).is_applied());
    assert!(request_by(&mut world, &keys["dave"], "quick").is_applied());
    let r = &world.state.requests["quick"];
    assert!(r.expires_at_ms <= r.created_at_ms + super::REQUEST_PENDING_MS_MAX, "{}", r.expires_at_ms);
}

#[test]
fn state_signer_rechecks_the_requester_and_the_policy_expiry() {
    // A request ready to sign stops being signable when its requester loses the role or the
    // policy expires: `still_authorised` runs before every share.
    let mut world = World::new();
    dkg(&mut world, "k");
    let keys = with_policy(&mut world, 0);
    assert!(request_by(&mut world, &keys["dave"], "r1").is_applied());
    let request = world.state.requests["r1"].clone();
    let now = world.state.time_ms;
    assert!(world.state.ready_to_sign(&request, true).is_ok());
    let mut expiring = world.state.keys[&request.key_id].policy.clone();
    expiring.expires_at_ms = Some(now + 1_000);
    let mut state = world.state.clone();
    state.keys.get_mut(&request.key_id).unwrap().policy = expiring;
    let err = state.still_authorised(&request, now + 2_000).unwrap_err();
    assert!(err.contains("expired"), "{err}");
    state.operators.get_mut("dave").unwrap().roles.clear();
    let err = state.still_authorised(&request, now).unwrap_err();
    assert!(err.contains("no longer has the requester role"), "{err}");
}

#[test]
fn state_key_without_policy_signs_nothing_until_one_is_set() {
    // Under rules 4 a key created without a policy refuses requests until an admin sets one.
    let mut world = World::new();
    let create = Command::CreateKey { name: "bare".into(), threshold: 2, participants: vec![1, 2, 3], policy: None };
    assert!(world.by_admin(create).is_applied());
    let id = world.key_id("bare");
    assert!(world.state.keys[&id].policy_unset);
    world.state.keys.get_mut(&id).unwrap().status = super::KeyStatus::Active;
    let env = world.envelope(Command::SignRequest {
        format: None,
        trusted_comment: None,
        request_id: "b1".into(),
        key: "bare".into(),
        message: "00".into(),
        purpose: String::new(),
        environment: String::new(),
        attributes: Default::default(),
        version: None,
    });
    let admin = world.admin.clone();
    refused(&world.apply(SignedCommand::sign(&env, &admin)), "has no signing policy yet");
    let open = synod_proto::authz::Policy::default();
    assert!(world.by_admin(Command::SetPolicy { key: "bare".into(), policy: open }).is_applied());
    assert!(!world.state.keys[&id].policy_unset);
}

fn disable(name: &str) -> Command {
    Command::DisableKey { key: name.into() }
}

fn schedule(name: &str, wait_ms: u64) -> Command {
    Command::ScheduleKeyDestroy { key: name.into(), wait_ms }
}

#[test]
fn state_disabled_key_fails_its_pending_requests_and_takes_no_new_ones_until_enabled() {
    // Disabling fails what is pending (so nothing is signed for it) and refuses new
    // requests naming the way back; enabling lets requests in again.
    let mut world = World::new();
    pending_request(&mut world);
    assert!(world.by_admin(disable("k")).is_applied());
    assert!(
        matches!(world.state.requests["r1"].status, RequestStatus::Failed { ref reason } if reason.contains("disabled"))
    );
    let key = world.state.key_by_name("k").unwrap();
    assert_eq!(key.status, KeyStatus::Disabled);
    assert_eq!(key.status_index, world.index);
    let again = |world: &mut World, id: &str| {
        world.by_admin(Command::SignRequest {
            format: None,
            trusted_comment: None,
            request_id: id.into(),
            key: "k".into(),
            message: hex::encode(b"pay 2"),
            purpose: String::new(),
            environment: String::new(),
            attributes: Default::default(),
            version: None,
        })
    };
    refused(&again(&mut world, "r2"), "synod key enable k");
    assert!(world.by_admin(Command::EnableKey { key: "k".into() }).is_applied());
    assert!(again(&mut world, "r3").is_applied());
    // The audit key is the nodes' own and cannot be taken out of service.
    refused(&world.by_admin(disable(synod_proto::authz::AUDIT_KEY_NAME)), "audit");
}

#[test]
fn state_destruction_waits_at_least_the_genesis_minimum_and_can_be_cancelled_until_due() {
    let mut world = World::new();
    pending_request(&mut world);
    refused(
        &world.by_admin(schedule("k", TEST_DESTROY_WAIT_MIN_MS - 1)),
        "at least 1 minute (fixed at this cluster's genesis), not 59999 ms",
    );
    assert!(world.by_admin(schedule("k", TEST_DESTROY_WAIT_MIN_MS)).is_applied());
    let key = world.state.key_by_name("k").unwrap().clone();
    assert_eq!(key.status, KeyStatus::DestroyScheduled);
    assert!(matches!(world.state.requests["r1"].status, RequestStatus::Failed { .. }), "scheduling stops use at once");
    refused(&world.by_admin(Command::EnableKey { key: "k".into() }), "--cancel");
    // The deadline by the log's time: early is refused, from any node.
    refused(&world.by_node(2, Command::KeyDestroyDue { node_id: 2, key_id: key.id.clone() }), "is due at");
    assert!(world.by_admin(Command::CancelKeyDestroy { key: "k".into() }).is_applied());
    assert_eq!(world.state.key_by_name("k").unwrap().status, KeyStatus::Disabled, "cancel leaves it disabled");
    assert_eq!(world.state.key_by_name("k").unwrap().destroy_at_ms, None);
    refused(&world.by_node(2, Command::KeyDestroyDue { node_id: 2, key_id: key.id.clone() }), "not scheduled");
}

#[test]
fn state_destroyed_key_signs_nothing_keeps_its_name_and_counts_share_deletions() {
    let mut world = World::new();
    dkg(&mut world, "k");
    let key_id = world.key_id("k");
    assert!(world.by_admin(schedule("k", TEST_DESTROY_WAIT_MIN_MS)).is_applied());
    assert_eq!(world.state.keys_due_for_destruction(world.time_ms), Vec::<String>::new());
    world.time_ms += TEST_DESTROY_WAIT_MIN_MS;
    assert_eq!(world.state.keys_due_for_destruction(world.time_ms), vec![key_id.clone()]);
    assert!(world.by_node(3, Command::KeyDestroyDue { node_id: 3, key_id: key_id.clone() }).is_applied());
    assert_eq!(world.state.keys[&key_id].status, KeyStatus::Destroyed);
    assert_eq!(world.state.shares_to_destroy(1), vec![key_id.clone()]);
    refused(&world.by_admin(schedule("k", TEST_DESTROY_WAIT_MIN_MS)), "destroyed");
    refused(&world.by_admin(Command::CancelKeyDestroy { key: "k".into() }), "no destruction to cancel");
    // The name is never used again.
    let create = Command::CreateKey { name: "k".into(), threshold: 2, participants: vec![1, 2, 3], policy: None };
    refused(&world.by_admin(create), "already exists");
    // Each participant reports its deletion once; a stranger's report is refused.
    assert!(world.by_node(1, Command::KeySharesDestroyed { node_id: 1, key_id: key_id.clone() }).is_applied());
    refused(&world.by_node(1, Command::KeySharesDestroyed { node_id: 1, key_id: key_id.clone() }), "already");
    assert_eq!(world.state.shares_to_destroy(1), Vec::<String>::new());
    assert_eq!(world.state.keys[&key_id].shares_destroyed, vec![1]);
    assert_eq!(world.state.keys[&key_id].info().status, synod_proto::api::KeyStatus::Destroyed);
    assert!(world.state.keys[&key_id].group_key.is_some(), "the public key is kept");
}

#[test]
fn state_lifecycle_commands_need_rules_five() {
    let mut world = World::under(Some(super::RULES_BOUNDED_CLIENTS));
    dkg(&mut world, "k");
    refused(&world.by_admin(disable("k")), "needs rules version 5");
}

#[test]
fn state_lost_share_is_recorded_once_per_participant_and_only_for_participants() {
    let mut world = World::new();
    dkg(&mut world, "k");
    let key_id = world.key_id("k");
    let report = |node| Command::ShareMissing { node_id: node, key_id: key_id.clone() };
    assert!(world.by_node(3, report(3)).is_applied());
    assert!(world.by_node(3, report(3)).is_applied(), "a second report says it is still missing");
    assert_eq!(world.state.keys[&key_id].shares_missing, vec![3]);
    // A node can report only its own share (the envelope is checked against the certificate).
    refused(&world.by_node(2, report(3)), "certificate");
}

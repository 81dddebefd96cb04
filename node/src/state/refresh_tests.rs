//! Proactive refresh in the state machine: the package the state computes
//! from public data is the one every participant derives, the public key
//! never changes, and every way a refresh can go wrong leaves the current
//! generation signing. FROST runs in-process; real processes are in
//! `tests/tests/refresh.rs`.

use std::collections::BTreeMap;

use frost_ed25519 as frost;
use rand_core::OsRng;
use synod_proto::{Command, Outcome};

use super::key_tests::{dkg, refused, World};
use super::{package_hash, DKG_TIMEOUT_MS};

type Packages = BTreeMap<u64, frost::keys::KeyPackage>;

fn id(n: u64) -> frost::Identifier {
    frost::Identifier::try_from(n as u16).unwrap()
}

/// The attempt of `k`'s refresh in progress (the log index that started it).
fn attempt(world: &World, key_id: &str) -> u64 {
    world.state.keys[key_id].refresh.as_ref().expect("a refresh in progress").started_index
}

fn refresh_key() -> Command {
    Command::RefreshKey { key: "k".into(), remove: vec![] }
}

/// Round 1 of a refresh to `generation` of `key_id` for every holder of
/// `old`, through the state. Returns each participant's round-1 secret and
/// every round-1 package.
fn round1(
    world: &mut World,
    key_id: &str,
    old: &Packages,
    generation: u32,
) -> (
    BTreeMap<u64, frost::keys::dkg::round1::SecretPackage>,
    BTreeMap<frost::Identifier, frost::keys::dkg::round1::Package>,
) {
    let (n, t) = (old.len() as u16, *old.values().next().unwrap().min_signers());
    let (mut secrets, mut packages) = (BTreeMap::new(), BTreeMap::new());
    let attempt = attempt(world, key_id);
    for &node in old.keys() {
        let (secret, package) = frost::keys::refresh::refresh_dkg_part1(id(node), n, t, OsRng).unwrap();
        let command = Command::RefreshRound1 {
            key_id: key_id.into(),
            node_id: node,
            generation,
            attempt,
            package: hex::encode(package.serialize().unwrap()),
        };
        let outcome = world.by_node(node, command);
        assert!(outcome.is_applied(), "{outcome:?}");
        secrets.insert(node, secret);
        packages.insert(id(node), package);
    }
    (secrets, packages)
}

/// Rounds 2 and 3 as each participant runs them; returns each one's new key
/// package and the hash of the public package it derived.
fn derive(
    old: &Packages,
    secrets: BTreeMap<u64, frost::keys::dkg::round1::SecretPackage>,
    round1: &BTreeMap<frost::Identifier, frost::keys::dkg::round1::Package>,
    public: &frost::keys::PublicKeyPackage,
) -> BTreeMap<u64, (frost::keys::KeyPackage, String)> {
    let others = |n: u64| -> BTreeMap<_, _> {
        round1.iter().filter(|(i, _)| **i != id(n)).map(|(i, p)| (*i, p.clone())).collect()
    };
    let mut inbox: BTreeMap<frost::Identifier, BTreeMap<frost::Identifier, _>> = BTreeMap::new();
    let mut round2_secrets = BTreeMap::new();
    for (n, secret) in secrets {
        let (secret2, packages) = frost::keys::refresh::refresh_dkg_part2(secret, &others(n)).unwrap();
        for (to, package) in packages {
            inbox.entry(to).or_default().insert(id(n), package);
        }
        round2_secrets.insert(n, secret2);
    }
    round2_secrets
        .into_iter()
        .map(|(n, secret2)| {
            let (new, derived) = frost::keys::refresh::refresh_dkg_shares(
                &secret2,
                &others(n),
                &inbox[&id(n)],
                public.clone(),
                old[&n].clone(),
            )
            .unwrap();
            (n, (new, package_hash(&hex::encode(derived.serialize().unwrap()))))
        })
        .collect()
}

/// A whole refresh of `k` through the state; returns the new key packages.
fn refresh(world: &mut World, old: &Packages) -> Packages {
    refresh_removing(world, old, &[])
}

/// A whole refresh of `k` through the state that removes `remove`; returns
/// the new key packages of those that remain.
fn refresh_removing(world: &mut World, old: &Packages, remove: &[u64]) -> Packages {
    let outcome = world.by_admin(Command::RefreshKey { key: "k".into(), remove: remove.to_vec() });
    assert!(outcome.is_applied(), "{outcome:?}");
    let old: Packages = old.iter().filter(|(n, _)| !remove.contains(n)).map(|(n, p)| (*n, p.clone())).collect();
    complete(world, &old)
}

/// Runs the refresh of `k` in progress to its end with the holders of `old`;
/// returns their new key packages.
fn complete(world: &mut World, old: &Packages) -> Packages {
    let key_id = world.key_id("k");
    let generation = world.state.keys[&key_id].refresh.as_ref().unwrap().generation;
    let public = world.state.keys[&key_id].public_keys().unwrap();
    let (secrets, packages) = round1(world, &key_id, old, generation);
    let mut new = Packages::new();
    let attempt = attempt(world, &key_id);
    for (n, (package, hash)) in derive(old, secrets, &packages, &public) {
        let confirm = Command::RefreshConfirm {
            key_id: key_id.clone(),
            node_id: n,
            generation,
            attempt,
            public_key_package_sha256: hash,
        };
        let outcome = world.by_node(n, confirm);
        assert!(outcome.is_applied(), "{outcome:?}");
        new.insert(n, package);
    }
    new
}

/// Signs `message` with the shares of `signers` from `packages`, against
/// `public`; `Err` when aggregation fails.
fn sign_with(
    packages: &[&frost::keys::KeyPackage],
    public: &frost::keys::PublicKeyPackage,
    message: &[u8],
) -> Result<frost::Signature, frost::Error> {
    let mut nonces = BTreeMap::new();
    let mut commitments = BTreeMap::new();
    for package in packages {
        let (nonce, commitment) = frost::round1::commit(package.signing_share(), &mut OsRng);
        nonces.insert(*package.identifier(), nonce);
        commitments.insert(*package.identifier(), commitment);
    }
    let signing_package = frost::SigningPackage::new(commitments, message);
    let shares = packages
        .iter()
        .map(|p| (*p.identifier(), frost::round2::sign(&signing_package, &nonces[p.identifier()], p).unwrap()))
        .collect();
    frost::aggregate(&signing_package, &shares, public)
}

#[test]
fn state_refresh_keeps_the_public_key_and_makes_every_share_new() {
    // The package the state computes from the round-1 commitments alone is
    // byte for byte the one each participant derives; once all confirm the
    // generation moves on, the group key is the same, new shares sign, and a
    // session mixing an old and a new share does not.
    let mut world = World::new();
    let old = dkg(&mut world, "k");
    let key_id = world.key_id("k");
    let before = world.state.keys[&key_id].clone();
    let new = refresh(&mut world, &old);
    let key = &world.state.keys[&key_id];
    assert_eq!((key.generation, key.refresh.is_none()), (1, true));
    assert_eq!(key.group_key, before.group_key);
    assert_ne!(key.public_key_package, before.public_key_package);
    let public = key.public_keys().unwrap();
    assert_eq!(public.verifying_key(), before.public_keys().unwrap().verifying_key());
    for (n, package) in &new {
        assert_ne!(package.signing_share(), old[n].signing_share(), "node {n}'s share changed");
        assert_eq!(public.verifying_shares()[&id(*n)], *package.verifying_share());
    }
    let signature = sign_with(&[&new[&1], &new[&3]], &public, b"after").expect("new shares sign");
    public.verifying_key().verify(b"after", &signature).unwrap();
    assert!(sign_with(&[&old[&1], &new[&3]], &public, b"mixed").is_err(), "old and new shares do not combine");
    // A second refresh builds on the first.
    let newer = refresh(&mut world, &new);
    assert_eq!(world.state.keys[&key_id].generation, 2);
    let public = world.state.keys[&key_id].public_keys().unwrap();
    sign_with(&[&newer[&2], &newer[&3]], &public, b"twice").expect("generation 2 signs");
}

#[test]
fn state_refresh_can_remove_a_participant_keeping_the_public_key() {
    // A 2-of-3 key refreshed without node 3: nodes 1 and 2 hold generation 1, node 3 holds
    // nothing of it and is told to delete its old share, and it may then leave the cluster.
    let mut world = World::new();
    let old = dkg(&mut world, "k");
    let key_id = world.key_id("k");
    let group = world.state.keys[&key_id].group_key.clone();
    refused(&world.by_admin(Command::RemoveMember { node_id: 3 }), "synod key refresh k --remove 3");
    refused(&world.by_admin(Command::RefreshKey { key: "k".into(), remove: vec![2, 3] }), "would leave 1");
    refused(&world.by_admin(Command::RefreshKey { key: "k".into(), remove: vec![4] }), "holds no share");
    let new = refresh_removing(&mut world, &old, &[3]);
    let key = &world.state.keys[&key_id];
    assert_eq!((key.participants.clone(), key.group_key.clone()), (vec![1, 2], group));
    assert_eq!(key.removed_participants, vec![(3, 1)]);
    let public = key.public_keys().unwrap();
    assert_eq!(public.verifying_shares().len(), 2);
    sign_with(&[&new[&1], &new[&2]], &public, b"two").expect("the remaining shares sign");
    assert!(sign_with(&[&new[&1], &old[&3]], &public, b"old").is_err(), "the removed node's share is useless");
    assert!(world.by_admin(Command::RemoveMember { node_id: 3 }).is_applied());
}

#[test]
fn state_refresh_commitments_must_have_t_minus_one_coefficients() {
    // frost checks the count only on each receiver; the state refuses a
    // package with another count (a DKG package commits to t coefficients).
    let mut world = World::new();
    dkg(&mut world, "k");
    let key_id = world.key_id("k");
    assert!(world.by_admin(refresh_key()).is_applied());
    let (_, dkg_package) = frost::keys::dkg::part1(id(1), 3, 2, OsRng).unwrap();
    let started = attempt(&world, &key_id);
    let command = Command::RefreshRound1 {
        key_id: key_id.clone(),
        node_id: 1,
        generation: 1,
        attempt: started,
        package: hex::encode(dkg_package.serialize().unwrap()),
    };
    refused(&world.by_node(1, command), "needs exactly 1");
    // Wrong generation, a stranger, and a second refresh at once are refused too.
    let (_, package) = frost::keys::refresh::refresh_dkg_part1(id(1), 3, 2, OsRng).unwrap();
    let package = hex::encode(package.serialize().unwrap());
    let at = |generation, node_id| Command::RefreshRound1 {
        key_id: key_id.clone(),
        node_id,
        generation,
        attempt: started,
        package: package.clone(),
    };
    refused(&world.by_node(1, at(2, 1)), "not 2");
    refused(&world.by_admin(refresh_key()), "already refreshing");
    assert!(world.by_node(1, at(1, 1)).is_applied());
    refused(&world.by_node(1, at(1, 1)), "already committed");
}

#[test]
fn state_aborted_refresh_leaves_the_current_generation_signing() {
    // A disagreeing confirmation, a participant's abort, the timeout and a
    // disable each end the refresh; generation 0 and its package stay.
    let mut world = World::new();
    let old = dkg(&mut world, "k");
    let key_id = world.key_id("k");
    let package = world.state.keys[&key_id].public_key_package.clone();
    let current = |world: &World| {
        let key = &world.state.keys[&key_id];
        (key.generation, key.refresh.is_none(), key.public_key_package.clone())
    };

    // Disagreeing confirmation.
    assert!(world.by_admin(refresh_key()).is_applied());
    round1(&mut world, &key_id, &old, 1);
    let wrong = Command::RefreshConfirm {
        key_id: key_id.clone(),
        node_id: 2,
        generation: 1,
        attempt: attempt(&world, &key_id),
        public_key_package_sha256: "00".repeat(32),
    };
    assert!(world.by_node(2, wrong).is_applied());
    assert_eq!(current(&world), (0, true, package.clone()));
    let failed = world.state.keys[&key_id].info().refresh_failed.unwrap();
    assert!(failed.contains("another public key package") && failed.contains("generation 0 still signs"), "{failed}");

    // A participant's abort, naming a culprit.
    assert!(world.by_admin(refresh_key()).is_applied());
    let started = attempt(&world, &key_id);
    let abort = |generation| Command::RefreshAbort {
        key_id: key_id.clone(),
        node_id: 3,
        generation,
        attempt: started,
        reason: "a wrong value".into(),
        culprit: Some(1),
    };
    refused(&world.by_node(3, abort(5)), "not 5");
    assert!(world.by_node(3, abort(1)).is_applied());

    assert_eq!(world.state.keys[&key_id].refresh_failed.as_ref().unwrap().culprit, Some(1));
    assert!(world.state.keys[&key_id].info().refresh_failed.unwrap().contains("culprit: node 1"));
    assert_eq!(current(&world), (0, true, package.clone()));

    // The same abort again, late, once another attempt at generation 1 has started: it is
    // for the earlier attempt and changes nothing (found by the simulator with a late
    // refresh value: each message names its attempt).
    assert!(world.by_admin(refresh_key()).is_applied());
    refused(&world.by_node(3, abort(1)), "earlier refresh");
    assert!(world.state.keys[&key_id].refresh.is_some());
    let current_attempt = Command::RefreshAbort {
        key_id: key_id.clone(),
        node_id: 3,
        generation: 1,
        attempt: attempt(&world, &key_id),
        reason: "stop".into(),
        culprit: None,
    };
    assert!(world.by_node(3, current_attempt).is_applied());

    // The timeout, by log time.
    assert!(world.by_admin(refresh_key()).is_applied());
    world.time_ms += DKG_TIMEOUT_MS + 1;
    assert!(world.by_admin(Command::Put { key: "tick".into(), value: String::new() }).is_applied());
    assert!(world.state.keys[&key_id].refresh_failed.as_ref().unwrap().reason.contains("timed out"));
    assert_eq!(current(&world), (0, true, package.clone()));

    // The key leaving service.
    assert!(world.by_admin(refresh_key()).is_applied());
    assert!(world.by_admin(Command::DisableKey { key: "k".into() }).is_applied());
    assert!(world.by_admin(Command::Put { key: "tick".into(), value: String::new() }).is_applied());
    assert!(world.state.keys[&key_id].refresh_failed.as_ref().unwrap().reason.contains("left service"));
    refused(&world.by_admin(refresh_key()), "disabled");
    assert_eq!(current(&world), (0, true, package));

    // And a refresh after all that still works once the key is back.
    assert!(world.by_admin(Command::EnableKey { key: "k".into() }).is_applied());
    refresh(&mut world, &old);
    assert_eq!(world.state.keys[&key_id].generation, 1);
}

#[test]
fn state_refresh_needs_every_share_and_rules_seven() {
    let mut world = World::new();
    dkg(&mut world, "k");
    let key_id = world.key_id("k");
    let report = Command::ShareMissing { node_id: 2, key_id: key_id.clone() };
    assert!(world.by_node(2, report).is_applied());
    refused(&world.by_admin(refresh_key()), "nodes [2] reported holding no share");

    let mut old_rules = World::under(Some(6));
    dkg(&mut old_rules, "k");
    refused(&old_rules.by_admin(refresh_key()), "needs rules version 7");
    let outcome: Outcome = old_rules.by_admin(Command::RefreshKey { key: "nothing".into(), remove: vec![] });
    refused(&outcome, "rules version 7");
}

#[test]
fn state_scheduled_refresh_starts_when_due_by_log_time_and_then_an_interval_later() {
    let mut world = World::new();
    let old = dkg(&mut world, "k");
    let key_id = world.key_id("k");
    let schedule = |every_ms| Command::SetRefreshSchedule { key: "k".into(), every_ms };
    let due = |world: &mut World| world.by_node(1, Command::RefreshDue { node_id: 1, key_id: world.key_id("k") });
    refused(&due(&mut world), "no refresh schedule");
    refused(&world.by_admin(schedule(Some(1_000))), "10 s to 365 days");
    assert!(world.by_admin(schedule(Some(60_000))).is_applied());
    let first = world.state.keys[&key_id].refresh_due_at_ms.unwrap();
    assert_eq!(world.state.refreshes_due(first - 1), Vec::<String>::new());
    assert_eq!(world.state.refreshes_due(first), vec![key_id.clone()]);
    refused(&due(&mut world), "is due at");
    world.time_ms = first;
    assert!(due(&mut world).is_applied());
    let key = &world.state.keys[&key_id];
    assert!(key.refresh.is_some(), "the scheduled refresh started");
    assert_eq!(key.refresh_due_at_ms, Some(world.time_ms + 60_000), "the next one an interval later");
    assert!(world.state.refreshes_due(u64::MAX).is_empty(), "nothing is due while one runs");
    // It completes as any refresh does.
    complete(&mut world, &old);
    assert_eq!(world.state.keys[&key_id].generation, 1);
    assert!(world.by_admin(schedule(None)).is_applied());
    assert!(world.state.refreshes_due(u64::MAX).is_empty());
}

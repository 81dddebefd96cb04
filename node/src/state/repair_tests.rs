//! Repair and enrollment in the state machine: helpers' commitments checked
//! against their verifying shares, the identical share back for a
//! participant, a new member's share matching its interpolated verifying
//! share and signing with the others. FROST runs in-process; real processes
//! are in `tests/tests/refresh.rs`.

use std::collections::BTreeMap;

use frost::keys::repairable::Delta;
use frost_ed25519 as frost;
use rand_core::OsRng;
use synod_proto::{Command, NodeAddr};

use super::key_tests::{dkg, refused, World};
use super::public_of;

type Packages = BTreeMap<u64, frost::keys::KeyPackage>;

fn id(n: u64) -> frost::Identifier {
    frost::Identifier::try_from(n as u16).unwrap()
}

fn done(world: &World, key_id: &str, node_id: u64) -> Command {
    let attempt = world.state.keys[key_id].repair.as_ref().expect("a repair in progress").started_index;
    Command::RepairDone { key_id: key_id.into(), node_id, attempt }
}

fn repair_of(target: u64) -> Command {
    Command::RepairShare { key: "k".into(), target }
}

/// Runs a repair of `target` through the state with the helpers it chose;
/// `lie` makes one helper commit to a wrong value. Returns the target's
/// derived key package (the helpers' values as they would travel over mTLS).
fn run_repair(
    world: &mut World,
    packages: &Packages,
    target: u64,
    lie: Option<u64>,
) -> Option<frost::keys::KeyPackage> {
    let key_id = world.key_id("k");
    let repair = world.state.keys[&key_id].repair.clone().expect("a repair in progress");
    let helpers: Vec<frost::Identifier> = repair.helpers.iter().map(|h| id(*h)).collect();
    let mut inbox: BTreeMap<u64, Vec<Delta>> = BTreeMap::new();
    for &helper in &repair.helpers {
        let deltas = frost::keys::repairable::repair_share_part1::<frost::Ed25519Sha512, _>(
            &helpers,
            &packages[&helper],
            &mut OsRng,
            id(target),
        )
        .unwrap();
        let mut commitments = Vec::new();
        for (to, delta) in &deltas {
            let to = repair.helpers.iter().copied().find(|h| id(*h) == *to).unwrap();
            let mut point = public_of(&delta.serialize()).unwrap();
            if lie == Some(helper) {
                point += curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
            }
            commitments.push((to, hex::encode(point.compress().as_bytes())));
            inbox.entry(to).or_default().push(*delta);
        }
        let attempt = repair.started_index;
        let commit =
            Command::RepairCommit { key_id: key_id.clone(), node_id: helper, target, attempt, deltas: commitments };
        let outcome = world.by_node(helper, commit);
        assert!(outcome.is_applied(), "{outcome:?}");
        world.state.keys[&key_id].repair.as_ref()?; // Aborted: nothing more to do.
    }
    let sigmas: Vec<_> = inbox.values().map(|deltas| frost::keys::repairable::repair_share_part2(deltas)).collect();
    let public = world.state.keys[&key_id].public_keys().unwrap();
    Some(frost::keys::repairable::repair_share_part3(&sigmas, id(target), &public).unwrap())
}

#[test]
fn state_repair_gives_a_participant_its_identical_share_back() {
    let mut world = World::new();
    let packages = dkg(&mut world, "k");
    let key_id = world.key_id("k");
    assert!(world.by_node(3, Command::ShareMissing { node_id: 3, key_id: key_id.clone() }).is_applied());
    assert!(world.by_admin(repair_of(3)).is_applied());
    let repair = world.state.keys[&key_id].repair.clone().unwrap();
    assert_eq!((repair.helpers.clone(), repair.enrolling), (vec![1, 2], false));
    refused(&world.by_admin(repair_of(2)), "in progress");
    refused(&world.by_admin(Command::RefreshKey { key: "k".into(), remove: vec![] }), "repairing node 3");
    let repaired = run_repair(&mut world, &packages, 3, None).unwrap();
    assert_eq!(repaired.signing_share(), packages[&3].signing_share(), "the identical share comes back");
    assert_eq!(hex::encode(repaired.verifying_share().serialize().unwrap()), repair.verifying_share);
    let (wrong, right) = (done(&world, &key_id, 1), done(&world, &key_id, 3));
    refused(&world.by_node(1, wrong), "not the target");
    assert!(world.by_node(3, right).is_applied());
    let key = &world.state.keys[&key_id];
    assert!(key.repair.is_none() && key.shares_missing.is_empty() && key.repair_failed.is_none());
    assert_eq!(key.participants, vec![1, 2, 3]);
}

#[test]
fn state_repair_helper_that_commits_a_wrong_value_is_named() {
    // frost's part 3 detects no lying helper; the state checks each helper's commitments
    // against its verifying share and aborts naming it. The next repair leaves it out.
    let mut world = World::new();
    let packages = dkg(&mut world, "k");
    let key_id = world.key_id("k");
    assert!(world.by_admin(repair_of(3)).is_applied());
    assert!(run_repair(&mut world, &packages, 3, Some(2)).is_none());
    let failed = world.state.keys[&key_id].repair_failed.clone().unwrap();
    assert_eq!(failed.culprit, Some(2), "{failed:?}");
    // Only nodes 1 and 3 are left to help a repair of node 3: too few for a 2-of-3 key.
    refused(&world.by_admin(repair_of(3)), "needs 2 helpers");
    // A repair of node 1 is helped by 3 and... not 2, the culprit: also too few.
    refused(&world.by_admin(repair_of(1)), "left out");
}

#[test]
fn state_enrollment_adds_a_member_to_a_key_with_the_same_public_key() {
    let mut world = World::new();
    let mut packages = dkg(&mut world, "k");
    let key_id = world.key_id("k");
    let group = world.state.keys[&key_id].group_key.clone();
    refused(&world.by_admin(repair_of(4)), "not a member");
    let addr = NodeAddr { raft_addr: "n4:1".into(), api_addr: "n4:2".into() };
    assert!(world.by_admin(Command::AddMember { node_id: 4, addr }).is_applied());
    assert!(world.by_admin(repair_of(4)).is_applied());
    assert!(world.state.keys[&key_id].repair.as_ref().unwrap().enrolling);
    let enrolled = run_repair(&mut world, &packages, 4, None).unwrap();
    let finished = done(&world, &key_id, 4);
    assert!(world.by_node(4, finished).is_applied());
    let key = &world.state.keys[&key_id];
    assert_eq!((key.participants.clone(), key.group_key.clone()), (vec![1, 2, 3, 4], group));
    let public = key.public_keys().unwrap();
    assert_eq!(public.verifying_shares()[&id(4)], *enrolled.verifying_share());
    packages.insert(4, enrolled);
    // The new member signs with any other participant, under the unchanged key.
    let mut only = Packages::new();
    only.insert(2, packages[&2].clone());
    only.insert(4, packages[&4].clone());
    let signature = super::key_tests::threshold_sign(&only, b"joined");
    let bytes: [u8; 64] = hex::decode(signature).unwrap().try_into().unwrap();
    let signature = frost::Signature::deserialize(&bytes).unwrap();
    public.verifying_key().verify(b"joined", &signature).unwrap();
}

//! Key versions and rotation in the state machine: a new primary, the
//! overlap of the version it replaces, retirement, and the lifecycle commands
//! over every version. FROST runs in-process; real processes are in
//! `tests/tests/rotation.rs`.

use synod_proto::api::KeyStatus as Api;
use synod_proto::{Command, Outcome};

use super::key_tests::{dkg, dkg_rounds, pending_request, refused, threshold_sign, with_policy, World};
use super::{KeyStatus, RequestStatus};

const OVERLAP_MS: u64 = 60_000;

fn rotate(threshold: u16, overlap_ms: u64) -> Command {
    Command::RotateKey { name: "k".into(), threshold, participants: vec![1, 2, 3], overlap_ms }
}

fn request(id: &str, version: Option<u32>) -> Command {
    Command::SignRequest {
        format: None,
        trusted_comment: None,
        request_id: id.into(),
        key: "k".into(),
        message: hex::encode(id),
        purpose: String::new(),
        environment: String::new(),
        attributes: Default::default(),
        version,
    }
}

fn signed(world: &mut World, id: &str, signers: Vec<u64>, signature: String) -> Outcome {
    world.by_node(
        1,
        Command::SignResult {
            request_id: id.into(),
            node_id: 1,
            signature,
            signers,
            culprits: vec![],
            sessions: 1,
            attempt: 0,
        },
    )
}

/// The id of the version of `k` generating for a rotation.
fn generating(world: &World) -> String {
    let versions = world.state.versions_of("k");
    versions.iter().find(|k| k.status == KeyStatus::Generating).expect("a generating version").id.clone()
}

#[test]
fn state_rotation_makes_a_new_primary_and_retires_the_old_after_its_overlap() {
    let mut world = World::new();
    let v1_packages = dkg(&mut world, "k");
    let v1 = world.key_id("k");
    assert!(world.by_admin(request("before", None)).is_applied());
    // A 3-of-3 second version: rotation is how the threshold changes.
    let outcome = world.by_admin(rotate(3, OVERLAP_MS));
    assert!(outcome.is_applied(), "{outcome:?}");
    let v2 = generating(&world);
    assert_eq!(world.state.keys[&v2].version, 2);
    refused(&world.by_admin(rotate(2, OVERLAP_MS)), "still generating");
    // Until the new version is active, the old one stays primary.
    assert_eq!(world.key_id("k"), v1);
    assert!(world.by_admin(request("during", None)).is_applied());
    assert_eq!(world.state.requests["during"].key_id, v1);
    let v2_packages = dkg_rounds(&mut world, &v2, &[1, 2, 3], 3);
    assert_eq!(world.key_id("k"), v2, "the new version is the primary once active");
    let old = &world.state.keys[&v1];
    assert_eq!(old.retire_at_ms, Some(world.time_ms + OVERLAP_MS));
    assert_eq!(old.info().status, Api::Retiring);
    assert_ne!(old.group_key, world.state.keys[&v2].group_key);
    // New requests go to the primary; naming version 1 is allowed during the overlap.
    assert!(world.by_admin(request("after", None)).is_applied());
    assert_eq!(world.state.requests["after"].key_id, v2);
    assert!(world.by_admin(request("named", Some(1))).is_applied());
    assert_eq!(world.state.requests["named"].key_id, v1);
    refused(&world.by_admin(request("nine", Some(9))), "has no version 9");
    // A request committed on v1 before the switch finishes on v1; v2 signs 3 of 3.
    let signature = threshold_sign(&v1_packages, b"before");
    assert!(signed(&mut world, "before", vec![1, 2], signature).is_applied());
    let signature = threshold_sign(&v2_packages, b"after");
    assert!(signed(&mut world, "after", vec![1, 2, 3], signature).is_applied());
    // A signature by the other version does not count.
    refused(&signed(&mut world, "named", vec![1, 2, 3], threshold_sign(&v2_packages, b"named")), "does not verify");
    // After the overlap (log time), v1 is retired: its pending requests fail, and it takes no new ones.
    world.time_ms += OVERLAP_MS;
    assert!(world.by_admin(request("late", None)).is_applied());
    assert_eq!(world.state.keys[&v1].status, KeyStatus::Retired);
    assert_eq!(world.state.keys[&v1].status_index, world.index);
    assert!(matches!(
        world.state.requests["named"].status,
        RequestStatus::Failed { ref reason } if reason.contains("retired")
    ));
    refused(&world.by_admin(request("too-late", Some(1))), "version 1 of key k is retired");
    let info = world.state.key_info_with_versions(world.state.key_by_name("k").unwrap());
    let listed: Vec<(u32, Api, bool)> = info.versions.iter().map(|v| (v.version, v.status, v.primary)).collect();
    assert_eq!(listed, vec![(1, Api::Retired, false), (2, Api::Active, true)]);
}

#[test]
fn state_signer_refuses_a_retiring_version_past_its_deadline_by_its_own_clock() {
    // The log's time moves only with entries; a signer judges the deadline by its own clock too.
    let mut world = World::new();
    dkg(&mut world, "k");
    assert!(world.by_admin(rotate(2, OVERLAP_MS)).is_applied());
    let v2 = generating(&world);
    dkg_rounds(&mut world, &v2, &[1, 2, 3], 2);
    assert!(world.by_admin(request("named", Some(1))).is_applied());
    let record = world.state.requests["named"].clone();
    assert!(world.state.still_authorised(&record, world.time_ms).is_ok());
    let error = world.state.still_authorised(&record, world.time_ms + OVERLAP_MS).unwrap_err();
    assert!(error.contains("retired"), "{error}");
}

#[test]
fn state_zero_overlap_retires_at_once_and_numbers_are_never_reused() {
    let mut world = World::new();
    pending_request(&mut world);
    let v1 = world.key_id("k");
    // An aborted rotation keeps its number: the next one is version 3.
    assert!(world.by_admin(rotate(2, 0)).is_applied());
    let aborted = generating(&world);
    world.time_ms += super::DKG_TIMEOUT_MS + 1;
    assert!(world.by_admin(request("tick", None)).is_applied());
    assert!(matches!(world.state.keys[&aborted].status, KeyStatus::Aborted { .. }));
    assert_eq!(world.key_id("k"), v1, "an aborted rotation leaves the primary");
    assert!(world.by_admin(rotate(2, 0)).is_applied());
    let v3 = generating(&world);
    assert_eq!(world.state.keys[&v3].version, 3);
    dkg_rounds(&mut world, &v3, &[1, 2, 3], 2);
    assert_eq!(world.state.keys[&v1].status, KeyStatus::Retired, "no overlap: retired when v3 turns active");
    assert!(matches!(world.state.requests["r1"].status, RequestStatus::Failed { .. }));
}

#[test]
fn state_lifecycle_commands_act_on_every_version() {
    let mut world = World::new();
    dkg(&mut world, "k");
    let v1 = world.key_id("k");
    assert!(world.by_admin(rotate(2, OVERLAP_MS)).is_applied());
    // A disable aborts a rotation still generating.
    assert!(world.by_admin(Command::DisableKey { key: "k".into() }).is_applied());
    let aborted = world.state.versions_of("k").into_iter().find(|k| k.version == 2).unwrap().clone();
    assert!(matches!(aborted.status, KeyStatus::Aborted { ref reason, .. } if reason.contains("disabled")));
    assert!(world.by_admin(Command::EnableKey { key: "k".into() }).is_applied());
    assert!(world.by_admin(rotate(2, OVERLAP_MS)).is_applied());
    let v3 = generating(&world);
    dkg_rounds(&mut world, &v3, &[1, 2, 3], 2);
    let statuses = |world: &World| [world.state.keys[&v1].status.clone(), world.state.keys[&v3].status.clone()];
    // Disable and enable act on the retiring version too.
    assert!(world.by_admin(Command::DisableKey { key: "k".into() }).is_applied());
    assert_eq!(statuses(&world), [KeyStatus::Disabled, KeyStatus::Disabled]);
    refused(&world.by_admin(request("off", Some(1))), "disabled");
    assert!(world.by_admin(Command::EnableKey { key: "k".into() }).is_applied());
    assert_eq!(statuses(&world), [KeyStatus::Active, KeyStatus::Active]);
    // A policy is the key's: every version follows it.
    let policy = synod_proto::authz::Policy::default();
    assert!(world.by_admin(Command::SetPolicy { key: "k".into(), policy }).is_applied());
    assert_eq!(world.state.keys[&v1].policy_version, world.state.keys[&v3].policy_version);
    // Destruction takes every version, the retiring one included, at one deadline.
    assert!(world.by_admin(Command::ScheduleKeyDestroy { key: "k".into(), wait_ms: 60_000 }).is_applied());
    assert_eq!(statuses(&world), [KeyStatus::DestroyScheduled, KeyStatus::DestroyScheduled]);
    assert_eq!(world.state.keys[&v1].destroy_at_ms, world.state.keys[&v3].destroy_at_ms);
    world.time_ms += 60_000;
    let mut due = world.state.keys_due_for_destruction(world.time_ms);
    due.sort();
    let mut both = vec![v1.clone(), v3.clone()];
    both.sort();
    assert_eq!(due, both);
    for key_id in due {
        assert!(world.by_node(2, Command::KeyDestroyDue { node_id: 2, key_id }).is_applied());
    }
    assert_eq!(statuses(&world), [KeyStatus::Destroyed, KeyStatus::Destroyed]);
    refused(&world.by_admin(rotate(2, OVERLAP_MS)), "destroyed");
}

#[test]
fn state_rotation_refusals_name_the_reason() {
    let mut world = World::under(Some(super::RULES_KEY_LIFECYCLE));
    dkg(&mut world, "k");
    refused(&world.by_admin(rotate(2, OVERLAP_MS)), "needs rules version 6");
    refused(&world.by_admin(request("v", Some(1))), "needs rules version 6");
    let mut world = World::new();
    refused(&world.by_admin(rotate(2, OVERLAP_MS)), "no key named");
    dkg(&mut world, "k");
    assert!(world.by_admin(Command::DisableKey { key: "k".into() }).is_applied());
    refused(&world.by_admin(rotate(2, OVERLAP_MS)), "only an active key can be rotated");
    let audit = Command::RotateKey {
        name: synod_proto::authz::AUDIT_KEY_NAME.into(),
        threshold: 2,
        participants: vec![1, 2, 3],
        overlap_ms: 0,
    };
    refused(&world.by_admin(audit), "audit key is not rotated");
}

#[test]
fn state_member_holding_a_share_in_service_is_removed_only_after_a_rotation_moves_the_key_off_it() {
    let mut world = World::new();
    dkg(&mut world, "k");
    let remove = || Command::RemoveMember { node_id: 3 };
    refused(&world.by_admin(remove()), "synod key rotate k --participants 1,2");
    let outcome = world.by_admin(Command::RotateKey {
        name: "k".into(),
        threshold: 2,
        participants: vec![1, 2],
        overlap_ms: OVERLAP_MS,
    });
    assert!(outcome.is_applied(), "{outcome:?}");
    // The version generating without node 3 and the retiring one with it still hold it.
    refused(&world.by_admin(remove()), "holds shares of keys in service (k v1)");
    let v2 = generating(&world);
    dkg_rounds(&mut world, &v2, &[1, 2], 2);
    refused(&world.by_admin(remove()), "k v1");
    world.time_ms += OVERLAP_MS;
    assert!(world.by_admin(remove()).is_applied(), "a retired version does not hold the removal up");
    assert!(!world.state.members.contains_key(&3));
}

#[test]
fn state_rotation_takes_the_policy_as_it_stands_even_naming_a_removed_operator() {
    // Removing an operator leaves the policies that name it; a rotation must not be refused
    // for that (it would be, were the policy judged again as a new key's).
    let mut world = World::new();
    dkg(&mut world, "k");
    with_policy(&mut world, 1);
    assert!(world.by_admin(Command::RemoveOperator { name: "bob".into() }).is_applied());
    let outcome = world.by_admin(rotate(2, OVERLAP_MS));
    assert!(outcome.is_applied(), "{outcome:?}");
    let v2 = generating(&world);
    let (old, new) = (world.state.key_by_name("k").unwrap(), &world.state.keys[&v2]);
    assert_eq!((&new.policy, new.policy_version), (&old.policy, old.policy_version));
}

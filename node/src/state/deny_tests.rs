//! Denials and cancellations of signing requests in the state machine (rules
//! 10): an approver's signed denial fails a pending request once the policy's
//! `denials_required` is reached, a requester may cancel their own request,
//! and a failed request is one no signer releases a share for.

use ed25519_dalek::{Signer, SigningKey};
use synod_proto::authz::{approval_bytes, denial_bytes, ApprovalSignature, Policy, Role};
use synod_proto::{Command, OperatorKey, SignedCommand};

use super::key_tests::{approve, dkg, refused, request_by, with_policy, World};
use super::RequestStatus;

/// The Ed25519 signature of `key` over `bytes`, as an approval or denial carries it.
fn signature(key: &SigningKey, bytes: &[u8]) -> ApprovalSignature {
    ApprovalSignature::Ed25519 { signature: hex::encode(key.sign(bytes).to_bytes()) }
}

/// `name` denies request `id` with a signature over its denial statement, sent by the admin.
fn deny(world: &mut World, id: &str, name: &str, key: &SigningKey, reason: &str) -> super::Outcome {
    let statement = world.state.approval_statement(&world.state.requests[id]).unwrap();
    let signature = signature(key, &denial_bytes(&statement));
    world.by_admin(Command::Deny { request_id: id.into(), approver: name.into(), reason: reason.into(), signature })
}

/// `key` (a requester) cancels request `id`.
fn cancel(world: &mut World, id: &str, key: &SigningKey) -> super::Outcome {
    let env = world.envelope(Command::CancelRequest { request_id: id.into() });
    world.apply(SignedCommand::sign(&env, key))
}

fn failed_reason(world: &World, id: &str) -> String {
    match &world.state.requests[id].status {
        RequestStatus::Failed { reason } => reason.clone(),
        other => panic!("request {id} is {other:?}, not failed"),
    }
}

/// Adds operator `name` with `role` and a key made from `seed`.
fn add_operator(world: &mut World, name: &str, role: Role, seed: u8) -> SigningKey {
    let key = SigningKey::from_bytes(&[seed; 32]);
    let add = Command::AddOperator {
        name: name.into(),
        key: Some(OperatorKey::of(&key)),
        ssh_key: None,
        roles: vec![role],
        pending_max: None,
    };
    assert!(world.by_admin(add).is_applied());
    key
}

#[test]
fn deny_by_an_approver_fails_the_request_and_no_signer_releases_a_share() {
    // One denial (the default) fails the request, the reason names the approver, and the
    // check every signer makes before a share refuses it.
    let mut world = World::new();
    dkg(&mut world, "k");
    let keys = with_policy(&mut world, 1);
    assert!(request_by(&mut world, &keys["dave"], "r1").is_applied());
    assert!(deny(&mut world, "r1", "alice", &keys["alice"], "not this release").is_applied());
    assert_eq!(failed_reason(&world, "r1"), "denied by alice: not this release");
    let info = world.state.request_info("r1").unwrap();
    assert_eq!(info.denials, vec!["alice: not this release".to_string()]);
    let record = world.state.requests["r1"].clone();
    assert!(world.state.ready_to_sign(&record, true).unwrap_err().contains("no longer pending"));
    // An approval after the denial comes too late, and so does a second denial.
    refused(&approve(&mut world, "r1", "bob", &keys["bob"]), "no longer pending");
    refused(&deny(&mut world, "r1", "bob", &keys["bob"], "me too"), "no longer pending");
    // The denial is audited under the request's id.
    let audit = world.state.take_audit();
    assert!(audit.iter().any(|r| r.request_id.as_deref() == Some("r1") && r.kind == "deny"));
}

#[test]
fn deny_refuses_forgeries_replayed_approvals_self_denial_and_non_approvers() {
    // A denial must be the named approver's signature over the denial statement: an approval
    // signature, another operator's signature or one by a non-approver does not count.
    let mut world = World::new();
    dkg(&mut world, "k");
    let keys = with_policy(&mut world, 2);
    let erin = add_operator(&mut world, "erin", Role::Approver, 40);
    assert!(request_by(&mut world, &keys["dave"], "r1").is_applied());
    let statement = world.state.approval_statement(&world.state.requests["r1"]).unwrap();
    let send = |world: &mut World, approver: &str, signature| {
        world.by_admin(Command::Deny {
            request_id: "r1".into(),
            approver: approver.into(),
            reason: "no".into(),
            signature,
        })
    };
    // Forged: bob's key signing as alice.
    refused(&send(&mut world, "alice", signature(&keys["bob"], &denial_bytes(&statement))), "does not verify");
    // An approval replayed as a denial.
    let approval = signature(&keys["alice"], &approval_bytes(&statement));
    refused(&send(&mut world, "alice", approval.clone()), "does not verify");
    // And a denial replayed as an approval.
    let denial = signature(&keys["alice"], &denial_bytes(&statement));
    let as_approval = Command::Approve { request_id: "r1".into(), approver: "alice".into(), signature: denial };
    refused(&world.by_admin(as_approval), "does not verify");
    // erin approves for no group of this policy; dave requested it.
    refused(&send(&mut world, "erin", signature(&erin, &denial_bytes(&statement))), "not an approver of key k");
    refused(&send(&mut world, "nobody", signature(&erin, &denial_bytes(&statement))), "not an approver of key k");
    assert!(matches!(world.state.requests["r1"].status, RequestStatus::Pending));
    // An approver who approved cannot also deny.
    assert!(approve(&mut world, "r1", "bob", &keys["bob"]).is_applied());
    refused(&deny(&mut world, "r1", "bob", &keys["bob"], "changed my mind"), "already approved");
    assert!(matches!(world.state.requests["r1"].status, RequestStatus::Pending));
}

#[test]
fn deny_by_the_requester_is_refused() {
    // A requester named among the approvers withdraws with a cancellation, not a denial.
    let mut world = World::new();
    dkg(&mut world, "k");
    let keys = with_policy(&mut world, 1);
    let both = SigningKey::from_bytes(&[41; 32]);
    let add = Command::AddOperator {
        name: "frank".into(),
        key: Some(OperatorKey::of(&both)),
        ssh_key: None,
        roles: vec![Role::Approver, Role::Requester],
        pending_max: None,
    };
    assert!(world.by_admin(add).is_applied());
    let policy = Policy {
        approvers: vec!["alice".into(), "bob".into(), "frank".into()],
        approvals_required: 1,
        ..Policy::default()
    };
    assert!(world.by_admin(Command::SetPolicy { key: "k".into(), policy }).is_applied());
    assert!(request_by(&mut world, &both, "r1").is_applied());
    refused(&deny(&mut world, "r1", "frank", &both, "mine"), "cancel it instead");
    assert!(deny(&mut world, "r1", "alice", &keys["alice"], "no").is_applied());
}

#[test]
fn deny_needs_denials_required_distinct_approvers() {
    // With denials_required 2 one denial records and waits; a duplicate counts once; the
    // second approver's denial fails the request, naming both.
    let mut world = World::new();
    dkg(&mut world, "k");
    let keys = with_policy(&mut world, 1);
    let too_many = Policy {
        approvers: vec!["alice".into(), "bob".into()],
        approvals_required: 1,
        denials_required: Some(3),
        ..Policy::default()
    };
    refused(
        &world.by_admin(Command::SetPolicy { key: "k".into(), policy: too_many }),
        "denials_required must be 1 to 2",
    );
    let policy = Policy {
        approvers: vec!["alice".into(), "bob".into()],
        approvals_required: 1,
        denials_required: Some(2),
        ..Policy::default()
    };
    assert!(world.by_admin(Command::SetPolicy { key: "k".into(), policy }).is_applied());
    assert!(request_by(&mut world, &keys["dave"], "r1").is_applied());
    assert!(deny(&mut world, "r1", "alice", &keys["alice"], "too big").is_applied());
    assert!(matches!(world.state.requests["r1"].status, RequestStatus::Pending));
    refused(&deny(&mut world, "r1", "alice", &keys["alice"], "again"), "already denied");
    assert!(deny(&mut world, "r1", "bob", &keys["bob"], "agreed").is_applied());
    assert_eq!(failed_reason(&world, "r1"), "denied by alice: too big; denied by bob: agreed");
}

#[test]
fn cancel_by_the_requester_fails_the_request_and_by_anyone_else_is_refused() {
    // Only the request's own requester may cancel it, and only while it is pending.
    let mut world = World::new();
    dkg(&mut world, "k");
    let keys = with_policy(&mut world, 1);
    let erin = add_operator(&mut world, "erin", Role::Requester, 42);
    assert!(request_by(&mut world, &keys["dave"], "r1").is_applied());
    refused(&cancel(&mut world, "r1", &erin), "only the requester of r1");
    refused(&world.by_admin(Command::CancelRequest { request_id: "r1".into() }), "only the requester of r1");
    refused(&cancel(&mut world, "nope", &keys["dave"]), "no request nope");
    assert!(matches!(world.state.requests["r1"].status, RequestStatus::Pending));
    assert!(cancel(&mut world, "r1", &keys["dave"]).is_applied());
    assert_eq!(failed_reason(&world, "r1"), "cancelled by its requester");
    refused(&cancel(&mut world, "r1", &keys["dave"]), "no longer pending");
    refused(&approve(&mut world, "r1", "alice", &keys["alice"]), "no longer pending");
    let record = world.state.requests["r1"].clone();
    assert!(world.state.ready_to_sign(&record, true).is_err());
}

#[test]
fn deny_and_cancel_need_rules_ten() {
    // A cluster whose genesis named rules 9 refuses both, and a policy setting denials_required.
    let mut world = World::under(Some(9));
    dkg(&mut world, "k");
    let keys = with_policy(&mut world, 1);
    assert!(request_by(&mut world, &keys["dave"], "r1").is_applied());
    refused(&deny(&mut world, "r1", "alice", &keys["alice"], "no"), "needs rules version 10");
    refused(&cancel(&mut world, "r1", &keys["dave"]), "needs rules version 10");
    let policy = Policy {
        approvers: vec!["alice".into(), "bob".into()],
        approvals_required: 1,
        denials_required: Some(1),
        ..Policy::default()
    };
    refused(&world.by_admin(Command::SetPolicy { key: "k".into(), policy }), "needs rules version 10");
    assert!(matches!(world.state.requests["r1"].status, RequestStatus::Pending));
    assert!(world.state.requests["r1"].denials.is_empty());
}

//! Passkeys in the state machine (rules 11): the replicated relying party, a
//! registration that waits for the admins, and approvals and denials that are
//! WebAuthn assertions over the statement's hash, with a counter that must grow.

use synod_proto::authz::{approval_bytes, denial_bytes, ApprovalSignature};
use synod_proto::webauthn::soft::{SoftAlgorithm, SoftAuthenticator};
use synod_proto::webauthn::{statement_challenge, WebAuthnConfig};
use synod_proto::Command;

use super::key_tests::{dkg, refused, request_by, with_policy, World};
use super::RequestStatus;

const RP: &str = "localhost";
const ORIGIN: &str = "https://localhost:8443";

fn setup(world: &mut World) {
    let config = WebAuthnConfig { rp_id: RP.into(), rp_name: "Synod".into(), origins: vec![ORIGIN.into()] };
    assert!(world.by_admin(Command::SetWebAuthn { config }).is_applied());
}

fn authenticator(_seed: u64, algorithm: SoftAlgorithm) -> SoftAuthenticator {
    SoftAuthenticator::new(algorithm, &mut rand_core::OsRng)
}

/// The fingerprint the console shows `auth`'s owner.
fn fingerprint(auth: &SoftAuthenticator) -> String {
    let config = WebAuthnConfig { rp_id: RP.into(), rp_name: String::new(), origins: vec![ORIGIN.into()] };
    synod_proto::webauthn::read_registration(&config, &auth.register(RP, ORIGIN, b"c"), None).unwrap().fingerprint
}

/// Registers `auth` for `operator` through node 1's console, and approves it as the admin.
fn enrol(world: &mut World, operator: &str, auth: &SoftAuthenticator) {
    let registration = auth.register(RP, ORIGIN, b"a challenge the console drew");
    let register =
        Command::RegisterPasskey { node_id: 1, operator: operator.into(), label: "laptop".into(), registration };
    assert!(world.by_node(1, register).is_applied());
    let approve = Command::ApprovePasskey {
        operator: operator.into(),
        credential_id: auth.credential_id(),
        fingerprint: fingerprint(auth),
    };
    assert!(world.by_admin(approve).is_applied());
}

/// `auth` approves request `id` for `name` (or denies it), made on `origin` for `rp`.
fn assertion(world: &World, id: &str, auth: &mut SoftAuthenticator, denial: bool) -> ApprovalSignature {
    let statement = world.state.approval_statement(&world.state.requests[id]).unwrap();
    let bytes = if denial { denial_bytes(&statement) } else { approval_bytes(&statement) };
    ApprovalSignature::web_authn(auth.assert(RP, ORIGIN, &statement_challenge(&bytes)))
}

fn approve_with(world: &mut World, id: &str, name: &str, signature: ApprovalSignature) -> super::Outcome {
    world.by_admin(Command::Approve { request_id: id.into(), approver: name.into(), signature })
}

#[test]
fn a_passkey_approval_counts_once_the_admins_approved_the_passkey() {
    let mut world = World::new();
    dkg(&mut world, "k");
    let keys = with_policy(&mut world, 2);
    setup(&mut world);
    let mut alice = authenticator(1, SoftAlgorithm::Es256);
    let mut bob = authenticator(2, SoftAlgorithm::Ed25519);
    // Registered but not yet approved: it approves nothing.
    let registration = alice.register(RP, ORIGIN, b"c");
    let register =
        Command::RegisterPasskey { node_id: 1, operator: "alice".into(), label: String::new(), registration };
    assert!(world.by_node(1, register).is_applied());
    assert_eq!(world.state.pending_passkeys.len(), 1);
    assert!(request_by(&mut world, &keys["dave"], "r1").is_applied());
    let early = assertion(&world, "r1", &mut alice, false);
    refused(&approve_with(&mut world, "r1", "alice", early), "no approved passkey");
    // The admins approve only the key whose fingerprint they checked.
    let wrong = Command::ApprovePasskey {
        operator: "alice".into(),
        credential_id: alice.credential_id(),
        fingerprint: fingerprint(&bob),
    };
    refused(&world.by_admin(wrong), "not the SHA256:");
    let approve = Command::ApprovePasskey {
        operator: "alice".into(),
        credential_id: alice.credential_id(),
        fingerprint: fingerprint(&alice),
    };
    assert!(world.by_admin(approve).is_applied());
    assert!(world.state.pending_passkeys.is_empty());
    enrol(&mut world, "bob", &bob);
    // Both approve with their passkeys: ES256 and Ed25519.
    let a = assertion(&world, "r1", &mut alice, false);
    assert!(approve_with(&mut world, "r1", "alice", a).is_applied());
    let b = assertion(&world, "r1", &mut bob, false);
    assert!(approve_with(&mut world, "r1", "bob", b).is_applied());
    let record = world.state.requests["r1"].clone();
    world.state.ready_to_sign(&record, true).expect("met, and every assertion verifies again");
    // A passkey removed mid-request takes its approval with it: out of the record, so the
    // leader's view (no re-verification) and the signers' agree and the request waits.
    let remove = Command::RemovePasskey { operator: "bob".into(), credential_id: bob.credential_id() };
    assert!(world.by_admin(remove).is_applied());
    let record = world.state.requests["r1"].clone();
    assert_eq!(record.approvals.iter().map(|a| a.approver.as_str()).collect::<Vec<_>>(), ["alice"]);
    assert!(world.state.ready_to_sign(&record, false).unwrap_err().contains("lacks approvals"));
    assert!(world.state.ready_to_sign(&record, true).unwrap_err().contains("lacks approvals"));
    // An origin taken out of the relying party takes the approvals made there with it.
    let config = WebAuthnConfig {
        rp_id: RP.into(),
        rp_name: "Synod".into(),
        origins: vec!["https://other.localhost:8443".into()],
    };
    assert!(world.by_admin(Command::SetWebAuthn { config }).is_applied());
    assert!(world.state.requests["r1"].approvals.is_empty());
}

#[test]
fn replayed_wrong_origin_wrong_rp_unverified_and_backward_counter_assertions_are_refused() {
    let mut world = World::new();
    dkg(&mut world, "k");
    let keys = with_policy(&mut world, 2);
    setup(&mut world);
    let mut alice = authenticator(3, SoftAlgorithm::Es256);
    enrol(&mut world, "alice", &alice);
    assert!(request_by(&mut world, &keys["dave"], "r1").is_applied());
    assert!(request_by(&mut world, &keys["dave"], "r2").is_applied());
    let statement = world.state.approval_statement(&world.state.requests["r2"]).unwrap();
    let challenge = statement_challenge(&approval_bytes(&statement));
    // Made for r1, sent for r2.
    let for_r1 = assertion(&world, "r1", &mut alice, false);
    refused(&approve_with(&mut world, "r2", "alice", for_r1), "another challenge");
    // A denial's assertion is not an approval.
    let denial = assertion(&world, "r2", &mut alice, true);
    refused(&approve_with(&mut world, "r2", "alice", denial), "another challenge");
    // Another origin and another RP ID.
    let other_origin = ApprovalSignature::web_authn(alice.assert(RP, "https://evil.example:8443", &challenge));
    refused(&approve_with(&mut world, "r2", "alice", other_origin), "not one of the cluster's console origins");
    let other_rp = ApprovalSignature::web_authn(alice.assert("evil.example", ORIGIN, &challenge));
    refused(&approve_with(&mut world, "r2", "alice", other_rp), "another RP ID");
    // No user verification.
    alice.user_verified = false;
    let unverified = ApprovalSignature::web_authn(alice.assert(RP, ORIGIN, &challenge));
    refused(&approve_with(&mut world, "r2", "alice", unverified), "UV flag unset");
    alice.user_verified = true;
    // Signed by another credential under alice's credential id.
    let mut mallory = authenticator(4, SoftAlgorithm::Es256);
    let mut forged = mallory.assert(RP, ORIGIN, &challenge);
    forged.credential_id = alice.credential_id();
    refused(&approve_with(&mut world, "r2", "alice", ApprovalSignature::web_authn(forged)), "does not verify");
    // A good one at counter 10 for r1, then one at counter 5 for r2: refused as a clone or replay.
    alice.set_counter(10);
    let good = assertion(&world, "r1", &mut alice, false);
    assert!(approve_with(&mut world, "r1", "alice", good).is_applied());
    alice.set_counter(5);
    let backwards = ApprovalSignature::web_authn(alice.assert(RP, ORIGIN, &challenge));
    refused(&approve_with(&mut world, "r2", "alice", backwards), "not above the 10");
    assert!(world.state.requests["r2"].approvals.is_empty());
    // Every refusal is audited under the request's id.
    let audit = world.state.take_audit();
    let refusals = audit.iter().filter(|r| r.request_id.as_deref() == Some("r2") && r.kind == "approve").count();
    assert_eq!(refusals, 7);
}

#[test]
fn a_passkey_denial_fails_the_request() {
    let mut world = World::new();
    dkg(&mut world, "k");
    let keys = with_policy(&mut world, 1);
    setup(&mut world);
    let mut bob = authenticator(5, SoftAlgorithm::Ed25519);
    enrol(&mut world, "bob", &bob);
    assert!(request_by(&mut world, &keys["dave"], "r1").is_applied());
    let signature = assertion(&world, "r1", &mut bob, true);
    let deny = Command::Deny { request_id: "r1".into(), approver: "bob".into(), reason: "no".into(), signature };
    assert!(world.by_admin(deny).is_applied());
    assert!(matches!(world.state.requests["r1"].status, RequestStatus::Failed { .. }));
}

#[test]
fn registrations_are_read_by_every_node_and_bounded() {
    let mut world = World::new();
    with_policy_free(&mut world);
    let auth = authenticator(6, SoftAlgorithm::Es256);
    let register = |auth: &SoftAuthenticator, origin: &str, operator: &str| Command::RegisterPasskey {
        node_id: 1,
        operator: operator.into(),
        label: String::new(),
        registration: auth.register(RP, origin, b"c"),
    };
    // Before an admin set the relying party, nothing registers.
    refused(&world.by_node(1, register(&auth, ORIGIN, "alice")), "not set up");
    setup(&mut world);
    refused(&world.by_node(1, register(&auth, "https://evil.example", "alice")), "origins");
    refused(&world.by_node(1, register(&auth, ORIGIN, "nobody")), "no operator named nobody");
    // A registration a node forges for itself without its certificate never counts.
    refused(&world.by_admin(register(&auth, ORIGIN, "alice")), "");
    for seed in 0..4 {
        let auth = authenticator(100 + seed, SoftAlgorithm::Es256);
        assert!(world.by_node(1, register(&auth, ORIGIN, "alice")).is_applied());
    }
    refused(&world.by_node(1, register(&authenticator(200, SoftAlgorithm::Es256), ORIGIN, "alice")), "too many");
    // bob registering alice's public key (read off a listing) under a credential id of his own
    // would count one touch of hers as two approvers: the same key is refused whatever its id.
    let mut alices = authenticator(7, SoftAlgorithm::Es256);
    assert!(world.by_node(1, register(&alices, ORIGIN, "bob")).is_applied());
    refused(&world.by_node(1, register(&alices, ORIGIN, "dave")), "already registered");
    alices.set_credential_id(b"another id, same key");
    refused(&world.by_node(1, register(&alices, ORIGIN, "dave")), "already registered");
    // Changing the RP ID drops every passkey made for the old one.
    let config = WebAuthnConfig {
        rp_id: "example.com".into(),
        rp_name: String::new(),
        origins: vec!["https://example.com".into()],
    };
    assert!(world.by_admin(Command::SetWebAuthn { config }).is_applied());
    assert!(world.state.pending_passkeys.is_empty());
}

fn with_policy_free(world: &mut World) {
    dkg(world, "k");
    with_policy(world, 1);
}

#[test]
fn passkeys_and_webhooks_need_rules_11() {
    let mut world = World::under(Some(super::RULES_REQUEST_DENY_CANCEL));
    let config = WebAuthnConfig { rp_id: RP.into(), rp_name: String::new(), origins: vec![ORIGIN.into()] };
    refused(&world.by_admin(Command::SetWebAuthn { config }), "rules");
    assert!(world.state.webauthn.is_none());
}

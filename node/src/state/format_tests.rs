//! Signing formats in the state machine (rules 9): every node parses the declared
//! format, policies restrict formats and SSHSIG namespaces, approvals sign the
//! version 2 statement, and a minisign signature is followed by its global
//! signature, authorised by the first.

use ed25519_dalek::Signer;
use synod_proto::authz::{approval_bytes, ApprovalSignature, Policy};
use synod_proto::format::SignFormat;
use synod_proto::sshsig::SignedData;
use synod_proto::{Command, SignedCommand};

use super::key_tests::{dkg, refused, threshold_sign, with_policy, World};
use super::RequestStatus;

fn sshsig_blob(namespace: &str) -> Vec<u8> {
    SignedData { namespace: namespace.into(), hash_alg: "sha512".into(), hash: vec![7; 64] }.to_bytes()
}

fn request(id: &str, message: &[u8], format: Option<SignFormat>, trusted_comment: Option<&str>) -> Command {
    Command::SignRequest {
        request_id: id.into(),
        key: "k".into(),
        message: hex::encode(message),
        purpose: String::new(),
        environment: String::new(),
        attributes: Default::default(),
        version: None,
        format,
        trusted_comment: trusted_comment.map(str::to_string),
    }
}

fn result(id: &str, signature: String) -> Command {
    Command::SignResult {
        request_id: id.into(),
        node_id: 1,
        signature,
        signers: vec![1, 2],
        culprits: vec![],
        sessions: 1,
        attempt: 0,
    }
}

#[test]
fn state_format_request_keeps_what_every_node_read_and_refuses_what_does_not_parse() {
    let mut world = World::new();
    dkg(&mut world, "k");
    assert!(world.by_admin(request("r1", &sshsig_blob("git"), Some(SignFormat::Sshsig), None)).is_applied());
    let info = world.state.request_info("r1").unwrap();
    let format = info.format.expect("the format is recorded");
    assert_eq!(format.format, SignFormat::Sshsig);
    assert_eq!(format.inspection.namespace.as_deref(), Some("git"));
    assert_eq!(format.inspection.artifact_hash, Some(format!("sha512:{}", hex::encode([7; 64]))));
    assert_eq!(info.statement_version, 2);
    // Bytes that do not parse as the declared format are refused at apply, by every node.
    refused(&world.by_admin(request("r2", b"not sshsig", Some(SignFormat::Sshsig), None)), "does not parse as sshsig");
    assert!(!world.state.requests.contains_key("r2"));
    // The audit record names the format and the artifact hash.
    let audit = world.state.take_audit();
    let record = audit.iter().find(|r| r.request_id.as_deref() == Some("r1")).unwrap();
    assert_eq!(record.format, Some(SignFormat::Sshsig));
    assert_eq!(record.artifact_hash, format.inspection.artifact_hash);
    // One request id, one format: the same bytes under another format are another request.
    refused(&world.by_admin(request("r1", &sshsig_blob("git"), None, None)), "one request id, one message");
}

#[test]
fn state_policy_restricts_formats_and_sshsig_namespaces() {
    let mut world = World::new();
    dkg(&mut world, "k");
    let policy = Policy { formats: vec![SignFormat::Sshsig], namespaces: vec!["git".into()], ..Policy::default() };
    assert!(world.by_admin(Command::SetPolicy { key: "k".into(), policy }).is_applied());
    refused(&world.by_admin(request("raw", b"hello", None, None)), "does not sign the raw format");
    refused(
        &world.by_admin(request("file", &sshsig_blob("file"), Some(SignFormat::Sshsig), None)),
        "does not sign in SSHSIG namespace \"file\"",
    );
    assert!(world.by_admin(request("git", &sshsig_blob("git"), Some(SignFormat::Sshsig), None)).is_applied());
    // A policy naming namespaces while refusing sshsig could never be used.
    let useless = Policy { formats: vec![SignFormat::Raw], namespaces: vec!["git".into()], ..Policy::default() };
    refused(&world.by_admin(Command::SetPolicy { key: "k".into(), policy: useless }), "add \"sshsig\" to formats");
}

#[test]
fn state_formats_need_rules_nine_and_older_rules_keep_version_1_statements() {
    let mut world = World::under(Some(8));
    dkg(&mut world, "k");
    refused(&world.by_admin(request("r1", &sshsig_blob("git"), Some(SignFormat::Sshsig), None)), "rules version 9");
    let policy = Policy { formats: vec![SignFormat::Sshsig], ..Policy::default() };
    refused(&world.by_admin(Command::SetPolicy { key: "k".into(), policy }), "rules version 9");
    assert!(world.by_admin(request("r2", b"hello", None, None)).is_applied());
    let statement = world.state.approval_statement(&world.state.requests["r2"]).unwrap();
    assert!(statement.format.is_none(), "rules 8 sign version 1 statements");
    assert_eq!(world.state.request_info("r2").unwrap().statement_version, 1);
}

#[test]
fn state_approvals_sign_the_version_2_statement_with_the_format() {
    let mut world = World::new();
    dkg(&mut world, "k");
    let keys = with_policy(&mut world, 1);
    let env = world.envelope(request("r1", &sshsig_blob("git"), Some(SignFormat::Sshsig), None));
    assert!(world.apply(SignedCommand::sign(&env, &keys["dave"])).is_applied());
    let statement = world.state.approval_statement(&world.state.requests["r1"]).unwrap();
    assert_eq!(statement.format.as_ref().unwrap().format, SignFormat::Sshsig);
    // An approval of the same request without the format part does not verify.
    let mut without = statement.clone();
    without.format = None;
    let sign =
        |bytes: Vec<u8>| ApprovalSignature::Ed25519 { signature: hex::encode(keys["alice"].sign(&bytes).to_bytes()) };
    let approve = |signature| Command::Approve { request_id: "r1".into(), approver: "alice".into(), signature };
    refused(&world.by_admin(approve(sign(approval_bytes(&without)))), "does not verify");
    assert!(world.by_admin(approve(sign(approval_bytes(&statement)))).is_applied());
    assert!(world.state.ready_to_sign(&world.state.requests["r1"].clone(), true).is_ok());
}

#[test]
fn state_minisign_signature_is_followed_by_its_global_signature() {
    let mut world = World::new();
    let packages = dkg(&mut world, "k");
    let digest = [9u8; 64];
    let comment = "timestamp:1800000000\tfile:release.tar.gz\thashed";
    refused(&world.by_admin(request("m", &digest, Some(SignFormat::Minisign), None)), "trusted comment");
    refused(&world.by_admin(request("m", b"hello", None, Some(comment))), "only a minisign request");
    assert!(world.by_admin(request("m", &digest, Some(SignFormat::Minisign), Some(comment))).is_applied());
    let first = threshold_sign(&packages, &digest);
    assert!(world.by_node(1, result("m", first.clone())).is_applied());
    // The state made the global signature's request: the committed signature, then the comment.
    let global = synod_proto::format::minisign::global_request_id("m");
    let record = world.state.requests[&global].clone();
    let mut expected = hex::decode(&first).unwrap();
    expected.extend_from_slice(comment.as_bytes());
    assert_eq!(record.message_bytes(), Some(expected.clone()));
    assert_eq!(record.format.as_ref().unwrap().global_of.as_deref(), Some("m"));
    assert!(world.state.ready_to_sign(&record, true).is_ok(), "authorised by its parent, no approvals");
    // Any other bytes under that request would not be authorised.
    let mut forged = record.clone();
    forged.message = Some(hex::encode(b"other bytes"));
    assert!(world.state.ready_to_sign(&forged, true).unwrap_err().contains("does not sign request m"));
    refused(&world.by_node(1, result(&global, threshold_sign(&packages, b"other bytes"))), "does not verify");
    // A global signature that failed is asked for again by sending the signed request again.
    let failed = Command::SignFailed {
        request_id: global.clone(),
        node_id: 1,
        reason: "only 1 usable signer".into(),
        culprits: vec![],
        attempt: 0,
    };
    assert!(world.by_node(1, failed).is_applied());
    let again = world.by_admin(request("m", &digest, Some(SignFormat::Minisign), Some(comment)));
    assert!(
        matches!(&again, synod_proto::Outcome::Applied { detail } if detail.contains("asked for again")),
        "{again:?}"
    );
    let retried = &world.state.requests[&global];
    assert_eq!((retried.status.clone(), retried.attempt), (RequestStatus::Pending, 1));
    let signed = Command::SignResult {
        request_id: global.clone(),
        node_id: 1,
        signature: threshold_sign(&packages, &expected),
        signers: vec![1, 2],
        culprits: vec![],
        sessions: 1,
        attempt: 1,
    };
    assert!(world.by_node(1, signed).is_applied());
    assert!(matches!(world.state.requests[&global].status, RequestStatus::Signed { .. }));
    // Once signed, sending the request again changes nothing.
    let unchanged = world.by_admin(request("m", &digest, Some(SignFormat::Minisign), Some(comment)));
    assert!(matches!(&unchanged, synod_proto::Outcome::Applied { detail } if detail.ends_with("already signed")));
    // A client cannot take the global request's id for itself.
    refused(&world.by_admin(request(&global, b"x", None, None)), "reserved");
}

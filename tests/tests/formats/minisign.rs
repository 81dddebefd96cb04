//! minisign: the cluster signs a file's BLAKE2b-512 digest as one opaque request,
//! its state follows with the global signature over that signature and the
//! trusted comment, and stock `minisign -V` accepts the `.minisig` under the key
//! `synod key show --format minisign` prints.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use synod_tests::{fails, ok, wait_for, Cluster};

use super::{cluster_with_key, tool, write};

fn show(cluster: &Cluster, id: &str) -> Value {
    serde_json::from_str(&ok(&cluster.synod(1, &["request", "show", id, "-o", "json"]))).unwrap()
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The key's minisign public key file, written next to the cluster's files.
fn public_key_file(cluster: &Cluster, key: &str) -> (PathBuf, String) {
    let text = ok(&cluster.synod(1, &["key", "show", key, "--format", "minisign"]));
    assert!(text.starts_with("untrusted comment: minisign public key "), "{text}");
    let line = text.lines().nth(1).expect("a key line").to_string();
    (write(cluster, &format!("{key}.pub"), text.as_bytes()), line)
}

/// `minisign -Vm file -x sig -p pub`: (accepted, output).
fn minisign_verifies(file: &Path, sig: &Path, public: &Path) -> (bool, String) {
    tool("minisign", &["-Vm", s(file), "-x", s(sig), "-p", s(public)], None)
}

/// b2sum's BLAKE2b-512 of a file, in hex.
fn b2sum(file: &Path) -> String {
    let (ok_, out) = tool("b2sum", &[s(file)], None);
    assert!(ok_, "{out}");
    out.split_whitespace().next().unwrap().to_string()
}

#[test]
fn minisign_signature_verifies_with_minisign() {
    // A file larger than one message is signed as a pre-hashed minisign signature; minisign and
    // `synod verify` accept it and show the trusted comment, and both refuse a changed byte of the
    // file and a changed trusted comment. The request is opaque with the file's BLAKE2b-512 as its
    // artifact hash, and the state made and signed the global signature request on its own.
    let cluster = cluster_with_key("release");
    let contents: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let file = write(&cluster, "release.tar", &contents);
    let sig = cluster.path("release.tar.minisig");
    let out = ok(&cluster.synod(
        1,
        &["sign", "release", "--format", "minisign", "--in", s(&file), "--out", s(&sig), "--request-id", "rel-1"],
    ));
    assert!(out.is_empty(), "the signature went to --out: {out}");
    let minisig = std::fs::read_to_string(&sig).unwrap();
    assert!(minisig.starts_with("untrusted comment: signature from synod key release\nRU"), "{minisig}");
    let (public, line) = public_key_file(&cluster, "release");

    let (accepted, text) = minisign_verifies(&file, &sig, &public);
    assert!(accepted, "minisign refused the signature: {text}");
    assert!(text.contains("Trusted comment: timestamp:") && text.contains("\tfile:release.tar\thashed"), "{text}");
    let (accepted, text) = tool("minisign", &["-Vm", s(&file), "-x", s(&sig), "-P", &line], None);
    assert!(accepted, "minisign -P refused the signature: {text}");

    // `synod verify` agrees, offline with the minisign public key and online with the key's name.
    let verify = |key_args: &[&str], sig: &Path| {
        let mut args = vec!["verify", "--format", "minisign", "--in", s(&file), "--signature", s(sig)];
        args.extend_from_slice(key_args);
        cluster.synod(1, &args)
    };
    let out = ok(&verify(&["--public-key", s(&public)], &sig));
    assert!(out.contains("trusted comment: timestamp:") && out.contains("signature is valid (minisign"), "{out}");
    let out = ok(&verify(&["--key", "release"], &sig));
    assert!(out.contains("key version 1"), "{out}");

    // One changed byte of the file: both refuse.
    let mut changed = contents.clone();
    changed[100_000] ^= 1;
    let tampered = write(&cluster, "tampered.tar", &changed);
    let (accepted, text) = minisign_verifies(&tampered, &sig, &public);
    assert!(!accepted, "minisign accepted a changed file: {text}");
    let err = fails(&cluster.synod(
        1,
        &["verify", "--format", "minisign", "--in", s(&tampered), "--signature", s(&sig), "--key", "release"],
    ));
    assert!(err.contains("does not verify"), "{err}");

    // A changed trusted comment: both refuse.
    let forged = write(&cluster, "forged.minisig", minisig.replace("\thashed", "\thashed\tapproved:yes").as_bytes());
    let (accepted, text) = minisign_verifies(&file, &forged, &public);
    assert!(!accepted, "minisign accepted a changed trusted comment: {text}");
    let err = fails(&verify(&["--public-key", s(&public)], &forged));
    assert!(err.contains("the comment was changed"), "{err}");

    // What nodes recorded: an opaque request naming the file's BLAKE2b-512, and its global signature.
    let parent = show(&cluster, "rel-1");
    assert_eq!(parent["status"], "signed", "{parent}");
    assert_eq!(parent["format"]["format"], "minisign", "{parent}");
    assert_eq!(parent["format"]["opaque"], true, "{parent}");
    assert_eq!(parent["format"]["artifact_hash"], format!("blake2b-512:{}", b2sum(&file)), "{parent}");
    let global_id = synod_proto::format::minisign::global_request_id("rel-1");
    let global = show(&cluster, &global_id);
    assert_eq!(global["status"], "signed", "{global}");
    assert_eq!(global["format"]["global_of"], "rel-1", "{global}");
    assert_eq!(
        global["message_bytes"].as_u64(),
        Some(64 + parent["format"]["trusted_comment"].as_str().unwrap().len() as u64)
    );
}

#[test]
fn minisign_json_output_and_custom_comment() {
    // With -o json and no --out, the .minisig text comes inside the JSON answer with the request ids,
    // and a trusted comment given on the command line is what minisign shows.
    let cluster = cluster_with_key("docs");
    let file = write(&cluster, "notes.txt", b"release notes\n");
    let out = ok(&cluster.synod(
        1,
        &["sign", "docs", "--format", "minisign", "--in", s(&file), "--trusted-comment", "build 42", "-o", "json"],
    ));
    let answer: Value = serde_json::from_str(&out).unwrap();
    let parent = answer["request_id"].as_str().unwrap();
    assert_eq!(answer["global_request_id"], synod_proto::format::minisign::global_request_id(parent));
    assert_eq!(answer["trusted_comment"], "build 42");
    let sig = write(&cluster, "notes.txt.minisig", answer["minisig"].as_str().unwrap().as_bytes());
    let (public, _) = public_key_file(&cluster, "docs");
    let (accepted, text) = minisign_verifies(&file, &sig, &public);
    assert!(accepted && text.contains("Trusted comment: build 42"), "{text}");
    // Without --signature, verify reads FILE.minisig, as minisign does.
    let out = ok(&cluster.synod(1, &["verify", "--format", "minisign", "--in", s(&file), "--key", "docs"]));
    assert!(out.contains("trusted comment: build 42"), "{out}");
    // A comment on more than one line is refused before anything is asked of the cluster.
    let err = fails(
        &cluster.synod(1, &["sign", "docs", "--format", "minisign", "--in", s(&file), "--trusted-comment", "a\nb"]),
    );
    assert!(err.contains("--trusted-comment"), "{err}");
}

#[test]
fn minisign_approved_once_signs_both_signatures() {
    // Under a policy that needs one approval, the minisign request waits for it; the approver
    // approves once, and both the file's signature and the global signature are made (the global
    // request with no approval of its own), and minisign accepts the result.
    let cluster = Cluster::start(3);
    ok(&cluster.synod(1, &["key", "create", "vault", "-t", "2"]));
    let (alice, alice_public) = cluster.keygen("alice");
    let (dave, dave_public) = cluster.keygen("dave");
    ok(&cluster.synod(1, &["operator", "add", "alice", "--key", &alice_public, "--roles", "approver"]));
    ok(&cluster.synod(1, &["operator", "add", "dave", "--key", &dave_public, "--roles", "requester"]));
    let policy =
        write(&cluster, "policy.json", br#"{"requesters": ["dave"], "approvers": ["alice"], "approvals_required": 1}"#);
    ok(&cluster.synod(1, &["key", "policy", "set", "vault", "--file", s(&policy)]));

    let file = write(&cluster, "payload.bin", b"the payload");
    let sig = cluster.path("payload.bin.minisig");
    let mut env = cluster.env(2);
    env.retain(|(k, _)| *k != "SYNOD_OPERATOR_KEY");
    env.push(("SYNOD_OPERATOR_KEY", dave.display().to_string()));
    let child = Command::new(synod_tests::synod_bin())
        .args([
            "sign",
            "vault",
            "--format",
            "minisign",
            "--in",
            s(&file),
            "--out",
            s(&sig),
            "--request-id",
            "pay-1",
            "--approval-wait-secs",
            "120",
        ])
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let pending = wait_for("the request to await approval", Duration::from_secs(60), || {
        let out = cluster.synod(1, &["request", "show", "pay-1", "-o", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["status"] == "awaiting_approval").then_some(v)
    });
    assert_eq!(pending["format"]["opaque"], true, "{pending}");
    ok(&cluster.synod_as(1, &alice, &["approve", "pay-1", "--yes"]));
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "sign failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("awaits approvals"));

    let (public, _) = public_key_file(&cluster, "vault");
    let (accepted, text) = minisign_verifies(&file, &sig, &public);
    assert!(accepted, "minisign refused the approved signature: {text}");
    let parent = show(&cluster, "pay-1");
    assert_eq!(parent["approvals"].as_array().map(Vec::len), Some(1), "{parent}");
    let global = show(&cluster, &synod_proto::format::minisign::global_request_id("pay-1"));
    assert_eq!(global["status"], "signed", "{global}");
    assert_eq!(global["approvals"], serde_json::json!([]), "{global}");
}

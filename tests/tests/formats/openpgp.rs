//! OpenPGP: `synod key openpgp` exports the cluster key as a v4 EdDSA public key whose
//! self-certification the cluster made, and `synod sign --format openpgp` makes detached
//! signatures that GnuPG (`gpgv`, `gpg --import`) and Sequoia (`sqv`) accept, each signature
//! one opaque request over the OpenPGP digest.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use synod_tests::{fails, ok, Cluster};

use super::{cluster_with_key, tool, write};

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Runs gpg with its own home directory: (success, stdout + stderr).
fn gpg(home: &Path, args: &[&str]) -> (bool, String) {
    let out =
        Command::new("gpg").env("GNUPGHOME", home).args(["--batch", "--no-tty"]).args(args).output().expect("gpg runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// A fresh GnuPG home in the cluster's directory (gpg wants it private).
fn gnupg_home(cluster: &Cluster) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let home = cluster.path("gnupg");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    home
}

#[test]
fn openpgp_detached_signature_verifies_with_gpgv_and_sqv() {
    // The exported key imports into GnuPG with its User ID and a valid cluster-made
    // self-certification; a 300 kB file's detached signature is accepted by gpgv, sqv and
    // `synod verify`, and one changed byte of the file is rejected by all three. The request is
    // opaque, and exporting twice gives the same fingerprint.
    let cluster = cluster_with_key("release");
    let user_id = "Release Team <release@example.com>";
    let key_asc = cluster.path("release.asc");
    let exported: Value = serde_json::from_str(&ok(
        &cluster.synod(1, &["key", "openpgp", "release", "--user-id", user_id, "--out", s(&key_asc), "-o", "json"])
    ))
    .unwrap();
    let fingerprint = exported["fingerprint"].as_str().expect("a fingerprint").to_string();
    assert_eq!(fingerprint.len(), 40, "{exported}");
    let armored = std::fs::read_to_string(&key_asc).unwrap();
    assert!(armored.starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----\n"), "{armored}");
    assert_eq!(exported["public_key"], armored);

    // The creation time defaults to the key's, so a second export names the same key.
    let key_show: Value =
        serde_json::from_str(&ok(&cluster.synod(1, &["key", "show", "release", "-o", "json"]))).unwrap();
    assert_eq!(exported["created"].as_u64().unwrap(), key_show["created_at_ms"].as_u64().unwrap() / 1000);
    let again: Value = serde_json::from_str(&ok(
        &cluster.synod(2, &["key", "openpgp", "release", "--user-id", user_id, "-o", "json"])
    ))
    .unwrap();
    assert_eq!(again["fingerprint"], fingerprint.as_str());

    // GnuPG imports it: the self-certification the cluster signed verifies.
    let home = gnupg_home(&cluster);
    let (imported, out) = gpg(&home, &["--import", s(&key_asc)]);
    assert!(imported, "{out}");
    assert!(out.contains("imported: 1"), "{out}");
    let (listed, out) = gpg(&home, &["--with-colons", "--check-signatures", &fingerprint]);
    assert!(listed, "{out}");
    assert!(out.lines().any(|l| l.starts_with("uid:") && l.contains(user_id)), "{out}");
    assert!(out.lines().any(|l| l.starts_with("sig:!:")), "the self-signature must check good: {out}");
    assert!(!out.contains("sig:-:") && !out.contains("sig:?:"), "{out}");
    let (listed, out) = gpg(&home, &["--list-keys", &fingerprint]);
    assert!(listed && out.contains(user_id) && out.contains("ed25519"), "{out}");
    assert!(!out.to_lowercase().contains("invalid") && !out.contains("no valid user IDs"), "{out}");

    // A detached signature of a file larger than one message.
    let contents: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let file = write(&cluster, "release.tar", &contents);
    let sig = cluster.path("release.tar.asc");
    let signed: Value = serde_json::from_str(&ok(&cluster
        .synod(1, &["sign", "release", "--format", "openpgp", "--in", s(&file), "--out", s(&sig), "-o", "json"])))
    .unwrap();
    assert_eq!(signed["fingerprint"], fingerprint.as_str());
    assert!(std::fs::read_to_string(&sig).unwrap().starts_with("-----BEGIN PGP SIGNATURE-----\n"));

    // gpgv wants a binary keyring.
    let keyring = cluster.path("release.gpg");
    let (dearmored, out) = gpg(&home, &["--dearmor", "--output", s(&keyring), s(&key_asc)]);
    assert!(dearmored, "{out}");
    let (accepted, out) = tool("gpgv", &["--keyring", s(&keyring), s(&sig), s(&file)], None);
    assert!(accepted, "gpgv refused: {out}");
    assert!(out.contains("Good signature"), "{out}");
    let (accepted, out) = tool("sqv", &["--keyring", s(&key_asc), s(&sig), s(&file)], None);
    assert!(accepted, "sqv refused: {out}");
    assert!(out.contains(&fingerprint), "sqv prints the signing key: {out}");
    let (accepted, out) = gpg(&home, &["--verify", s(&sig), s(&file)]);
    assert!(accepted && out.contains(user_id), "{out}");
    let verified = ok(&cluster
        .synod(1, &["verify", "--key", "release", "--format", "openpgp", "--in", s(&file), "--signature", s(&sig)]));
    assert!(verified.contains("signature is valid (openpgp, Ed25519, key version 1"), "{verified}");

    // `--signature-format raw` writes the binary packet, which gpgv and `synod verify` read too.
    let binary = cluster.path("release.tar.sig");
    ok(&cluster.synod(
        1,
        &["sign", "release", "--format", "openpgp", "--in", s(&file), "--out", s(&binary), "--signature-format", "raw"],
    ));
    assert_eq!(std::fs::read(&binary).unwrap()[0], 0xc2, "a new-format signature packet");
    let (accepted, out) = tool("gpgv", &["--keyring", s(&keyring), s(&binary), s(&file)], None);
    assert!(accepted, "gpgv refused the binary signature: {out}");
    let public_hex = key_show["public_key"].as_str().unwrap();
    ok(&cluster.synod(
        1,
        &["verify", "--public-key", public_hex, "--format", "openpgp", "--in", s(&file), "--signature", s(&binary)],
    ));

    // The request is opaque: nodes saw a digest and say so.
    let request_id = signed["request_id"].as_str().unwrap();
    let request: Value =
        serde_json::from_str(&ok(&cluster.synod(1, &["request", "show", request_id, "-o", "json"]))).unwrap();
    assert_eq!(request["format"]["format"], "openpgp", "{request}");
    assert_eq!(request["format"]["opaque"], true, "{request}");
    assert_eq!(request["message_bytes"], 64, "{request}");
    assert!(request["format"].get("artifact_hash").is_none(), "{request}");

    // One changed byte of the file: every verifier refuses.
    let mut tampered = contents.clone();
    tampered[150_000] ^= 0x01;
    let tampered = write(&cluster, "tampered.tar", &tampered);
    let (accepted, out) = tool("gpgv", &["--keyring", s(&keyring), s(&sig), s(&tampered)], None);
    assert!(!accepted && out.contains("BAD signature"), "gpgv accepted a changed file: {out}");
    let (accepted, out) = tool("sqv", &["--keyring", s(&key_asc), s(&sig), s(&tampered)], None);
    assert!(!accepted, "sqv accepted a changed file: {out}");
    let error = fails(&cluster.synod(
        1,
        &["verify", "--key", "release", "--format", "openpgp", "--in", s(&tampered), "--signature", s(&sig)],
    ));
    assert!(error.contains("does not match"), "{error}");
}

//! `synod kek rotate` with real node processes: a stopped node's data
//! directory moves to a new KEK (a key file, a key on a SoftHSM2 token, a
//! passphrase), the node then starts with the new KEK only and still signs
//! with its share, the old KEK is refused, and a copy of the data directory
//! taken before the rotation does not open with the new KEK.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use synod_tests::{fails, node_start_fails, ok, run_synod, softhsm_token, wait_for, Cluster, SOFTHSM_MODULE};

/// Creates a key that every node of the three must sign with (3 of 3), so a
/// signature proves that the rotated node's share still opens.
fn create_key_of_all_three(cluster: &Cluster, name: &str) {
    let out = ok(&cluster.synod(1, &["key", "create", name, "-t", "3", "--open-policy", "-o", "json"]));
    let key: Value = serde_json::from_str(&out).expect("key JSON");
    assert_eq!(key["status"], "active", "{key}");
}

/// Signs `message` with `key` once every node signs again; returns the signers.
fn sign_with_all(cluster: &Cluster, key: &str, message: &str) -> Vec<u64> {
    let mut attempt = 0;
    let request = wait_for("a signature by all three nodes", Duration::from_secs(90), || {
        attempt += 1;
        cluster.sign(1, key, message.as_bytes(), &format!("{message}-{attempt}")).ok()
    });
    request["signers"].as_array().expect("signers").iter().map(|s| s.as_u64().expect("a node id")).collect()
}

/// Runs `synod kek rotate --config <node id's config> ARGS -o json` with `envs`.
fn rotate(cluster: &Cluster, id: u64, args: &[&str], envs: &[(&str, String)]) -> Output {
    let config = cluster.nodes[&id].config.display().to_string();
    let all = [&["kek", "rotate", "--config", &config][..], args, &["-o", "json"]].concat();
    run_synod(&all, envs)
}

/// Replaces the `[kek]` table of node `id`'s node.toml with `table`.
fn set_kek(cluster: &Cluster, id: u64, table: &str) {
    let path = &cluster.nodes[&id].config;
    let text = std::fs::read_to_string(path).unwrap();
    let start = text.find("[kek]\n").expect("a [kek] table");
    let end = start + text[start..].find("\n[raft]").expect("[raft] after [kek]") + 1;
    std::fs::write(path, format!("{}{}\n{}", &text[..start], table.trim_end(), &text[end..])).unwrap();
}

/// Starts node `id` again and waits until it answers.
fn restart(cluster: &mut Cluster, id: u64) {
    cluster.start_node(id);
    wait_for(&format!("node {id} to answer"), Duration::from_secs(60), || cluster.status(id));
}

/// Writes `text` to `name` in node `id`'s directory; returns its path.
fn node_file(cluster: &Cluster, id: u64, name: &str, text: &str) -> PathBuf {
    let path = cluster.nodes[&id].dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(status.success(), "cp -a {} {}", from.display(), to.display());
}

#[test]
fn kek_rotate_to_a_new_file_keeps_signing_and_refuses_the_old_kek_and_old_copies() {
    // A node of a 3-of-3 key is stopped and rotated to a new key file: a running node and the current
    // KEK (by path or as a copied file) are refused first; afterwards the old KEK does not start the
    // node, the new one does and the key still signs, and a copy of the data directory taken before
    // the rotation does not open with the new KEK once the old key file is gone.
    let mut cluster = Cluster::start(3);
    create_key_of_all_three(&cluster, "rotated");
    assert!(sign_with_all(&cluster, "rotated", "before").contains(&2));
    let dir = cluster.nodes[&2].dir.clone();
    let (old_kek, new_kek) = (dir.join("kek.bin"), dir.join("kek-new.bin"));
    ok(&run_synod(&["kek", "generate-file", "--out", new_kek.to_str().unwrap()], &[]));

    let err = fails(&rotate(&cluster, 2, &["--new-kek-file", new_kek.to_str().unwrap()], &[]));
    assert!(err.contains("stop the node first"), "{err}");
    assert!(cluster.stop(2));
    let err = fails(&rotate(&cluster, 2, &["--new-kek-file", old_kek.to_str().unwrap()], &[]));
    assert!(err.contains("already names"), "{err}");
    let copied_kek = dir.join("kek-copy.bin");
    std::fs::copy(&old_kek, &copied_kek).unwrap();
    let err = fails(&rotate(&cluster, 2, &["--new-kek-file", copied_kek.to_str().unwrap()], &[]));
    assert!(err.contains("same key") && err.contains("nothing was written"), "{err}");
    let err = fails(&rotate(&cluster, 2, &["--new-kek-file", dir.join("missing.bin").to_str().unwrap()], &[]));
    assert!(err.contains("synod kek generate-file"), "{err}");

    let copy = cluster.path("copy-of-node-2");
    std::fs::create_dir_all(&copy).unwrap();
    copy_dir(&dir.join("data"), &copy.join("data"));
    let out = ok(&rotate(&cluster, 2, &["--new-kek-file", new_kek.to_str().unwrap()], &[]));
    let report: Value = serde_json::from_str(&out).expect("rotate JSON");
    assert!(report["secrets"].as_u64().unwrap() >= 1, "{report}");
    assert_eq!(report["passphrase_salt"], "unchanged", "{report}");
    assert_eq!(report["new_kek_config"]["path"], new_kek.to_str().unwrap(), "{report}");
    let steps = report["next_steps"].to_string();
    assert!(steps.contains("shred -u") && steps.contains(old_kek.to_str().unwrap()), "{steps}");

    let err = node_start_fails(&cluster.nodes[&2].config, &[]);
    assert!(err.contains("does not open"), "{err}");
    set_kek(&cluster, 2, "[kek]\nbackend = \"file\"\npath = \"kek-new.bin\"\n");
    std::fs::remove_file(&old_kek).unwrap();
    std::fs::remove_file(&copied_kek).unwrap();
    restart(&mut cluster, 2);
    assert!(sign_with_all(&cluster, "rotated", "after").contains(&2));

    let text = std::fs::read_to_string(&cluster.nodes[&2].config).unwrap();
    let copy_config = copy.join("node.toml");
    std::fs::write(&copy_config, text.replace("path = \"kek-new.bin\"", &format!("path = {new_kek:?}"))).unwrap();
    let err = node_start_fails(&copy_config, &[]);
    assert!(err.contains("does not open"), "{err}");
}

fn pkcs11_table(token: &str, key: &str) -> String {
    format!("[kek]\nbackend = \"pkcs11\"\nmodule = \"{SOFTHSM_MODULE}\"\ntoken_label = \"{token}\"\nkey_label = \"{key}\"\n")
}

#[test]
fn kek_rotate_into_a_token_and_to_another_key_on_it() {
    // A node moves from its key file to a key on a SoftHSM2 token and then to a second key on the same
    // token, each time with a [kek] table in node.toml's format; the key it already uses is refused,
    // the node starts only with the newest key, and the 3-of-3 key signs after each move.
    let mut cluster = Cluster::start(3);
    create_key_of_all_three(&cluster, "hsm-rotated");
    let token = "synod-rotate-2";
    let (conf, pin) = softhsm_token(cluster.dir.path(), token);
    let env = [("SOFTHSM2_CONF", conf.clone()), ("SYNOD_PKCS11_PIN", pin.clone())];
    for key in ["kek-a", "kek-b"] {
        let args = ["kek", "pkcs11-keygen", "--module", SOFTHSM_MODULE, "--token-label", token, "--key-label", key];
        ok(&run_synod(&args, &env));
    }
    let (a, b) = (pkcs11_table(token, "kek-a"), pkcs11_table(token, "kek-b"));
    let a_file = node_file(&cluster, 2, "kek-a.toml", &a);
    let b_file = node_file(&cluster, 2, "kek-b.toml", &b);
    cluster.node_env.insert(2, env.iter().map(|(k, v)| (k.to_string(), v.clone())).collect());

    assert!(cluster.stop(2));
    let out = ok(&rotate(&cluster, 2, &["--new-kek-config", a_file.to_str().unwrap()], &env));
    let report: Value = serde_json::from_str(&out).expect("rotate JSON");
    assert_eq!(report["new_kek_config"]["backend"], "pkcs11", "{report}");
    assert!(report["new_kek"].as_str().unwrap().contains("kek-a"), "{report}");
    set_kek(&cluster, 2, &a);
    restart(&mut cluster, 2);
    assert!(sign_with_all(&cluster, "hsm-rotated", "on-token-a").contains(&2));

    assert!(cluster.stop(2));
    let err = fails(&rotate(&cluster, 2, &["--new-kek-config", a_file.to_str().unwrap()], &env));
    assert!(err.contains("already names"), "{err}");
    let out = ok(&rotate(&cluster, 2, &["--new-kek-config", b_file.to_str().unwrap()], &env));
    let report: Value = serde_json::from_str(&out).expect("rotate JSON");
    assert!(report["next_steps"].to_string().contains("--delete-object --type secrkey --label kek-a"), "{report}");
    let err = node_start_fails(&cluster.nodes[&2].config, &env);
    assert!(err.contains("does not open"), "{err}");
    set_kek(&cluster, 2, &b);
    restart(&mut cluster, 2);
    assert!(sign_with_all(&cluster, "hsm-rotated", "on-token-b").contains(&2));
}

#[test]
fn kek_rotate_to_a_passphrase_and_to_another_passphrase() {
    // A node moves from its key file to a passphrase (given in another variable than the current one's)
    // and then to a second passphrase with a fresh salt: the same passphrase again is refused, the
    // first passphrase no longer starts the node, the second does, and the 3-of-3 key signs each time.
    let mut cluster = Cluster::start(3);
    create_key_of_all_three(&cluster, "pass-rotated");
    let new_table =
        node_file(&cluster, 3, "kek-new.toml", "[kek]\nbackend = \"passphrase\"\nenv = \"SYNOD_NEW_KEK_PASSPHRASE\"\n");
    let new_arg = ["--new-kek-config", new_table.to_str().unwrap()];
    let (first, second) = ("first rotation passphrase".to_string(), "second rotation passphrase".to_string());

    assert!(cluster.stop(3));
    let out = ok(&rotate(&cluster, 3, &new_arg, &[("SYNOD_NEW_KEK_PASSPHRASE", first.clone())]));
    let report: Value = serde_json::from_str(&out).expect("rotate JSON");
    assert_eq!(report["passphrase_salt"], "written", "{report}");
    assert!(!out.contains(&first), "the passphrase is never printed");
    set_kek(&cluster, 3, "[kek]\nbackend = \"passphrase\"\n");
    cluster.node_env.insert(3, vec![("SYNOD_KEK_PASSPHRASE".into(), first.clone())]);
    restart(&mut cluster, 3);
    assert!(sign_with_all(&cluster, "pass-rotated", "passphrase-1").contains(&3));

    assert!(cluster.stop(3));
    let same = [("SYNOD_KEK_PASSPHRASE", first.clone()), ("SYNOD_NEW_KEK_PASSPHRASE", first.clone())];
    let err = fails(&rotate(&cluster, 3, &new_arg, &same));
    assert!(err.contains("is the current one"), "{err}");
    let next = [("SYNOD_KEK_PASSPHRASE", first.clone()), ("SYNOD_NEW_KEK_PASSPHRASE", second.clone())];
    let out = ok(&rotate(&cluster, 3, &new_arg, &next));
    assert!(!out.contains(&first) && !out.contains(&second), "the passphrases are never printed");
    let err = node_start_fails(&cluster.nodes[&3].config, &[("SYNOD_KEK_PASSPHRASE", first)]);
    assert!(err.contains("does not open"), "{err}");
    cluster.node_env.insert(3, vec![("SYNOD_KEK_PASSPHRASE".into(), second)]);
    restart(&mut cluster, 3);
    assert!(sign_with_all(&cluster, "pass-rotated", "passphrase-2").contains(&3));
}

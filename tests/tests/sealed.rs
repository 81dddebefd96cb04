//! The key-encryption key at start-up: a node runs only with the KEK that
//! sealed its data directory, on the backend its config names, and says which
//! backend it uses.

use std::path::Path;
use std::process::Command;

use synod_tests::{fails, node_start_fails, ok, run_synod, softhsm_token, Cluster, Options, SOFTHSM_MODULE};

fn kek_backend(cluster: &Cluster, id: u64) -> String {
    let out = ok(&cluster.synod(id, &["health", "-o", "json"]));
    let health: serde_json::Value = serde_json::from_str(&out).unwrap();
    health["kek_backend"].as_str().unwrap_or_default().to_string()
}

#[test]
fn kek_wrong_or_missing_file_refuses_to_start() {
    // A node whose KEK file was replaced or removed refuses to start and says why.
    let mut cluster = Cluster::start_with(1, Options::default());
    assert_eq!(kek_backend(&cluster, 1), "file");
    assert!(cluster.stop(1));
    let node = &cluster.nodes[&1];
    let kek = node.dir.join("kek.bin");
    let config = node.config.display().to_string();

    std::fs::remove_file(&kek).unwrap();
    let err = node_start_fails(Path::new(&config), &[]);
    assert!(err.contains("kek.bin"), "{err}");

    ok(&run_synod(&["kek", "generate-file", "--out", &kek.display().to_string()], &[]));
    let err = node_start_fails(Path::new(&config), &[]);
    assert!(err.contains("KEK") && err.contains("does not open"), "{err}");
}

#[test]
fn kek_file_readable_by_others_is_refused() {
    // A KEK file that other users can read is refused with the chmod to run.
    use std::os::unix::fs::PermissionsExt;
    let mut cluster = Cluster::start_with(1, Options::default());
    assert!(cluster.stop(1));
    let node = &cluster.nodes[&1];
    let kek = node.dir.join("kek.bin");
    std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = node_start_fails(&node.config, &[]);
    assert!(err.contains("chmod 600") || err.contains("600"), "{err}");
}

#[test]
fn kek_pkcs11_node_runs_and_a_copied_data_dir_does_not_open_elsewhere() {
    // A node sealed by a key on a SoftHSM2 token runs and reports the pkcs11
    // backend; a copy of its data directory, started with a file KEK instead,
    // refuses to start: without the token its secrets stay sealed.
    let mut cluster = Cluster::prepare(Options::default());
    let (conf, pin) = softhsm_token(cluster.dir.path(), "synod-test-node-1");
    let env = [("SOFTHSM2_CONF", conf.clone()), ("SYNOD_PKCS11_PIN", pin.clone())];
    ok(&run_synod(&["kek", "pkcs11-keygen", "--module", SOFTHSM_MODULE, "--token-label", "synod-test-node-1"], &env));
    // Creating the same key twice is refused rather than shadowing the first.
    fails(&run_synod(
        &["kek", "pkcs11-keygen", "--module", SOFTHSM_MODULE, "--token-label", "synod-test-node-1"],
        &env,
    ));

    let node = cluster.add_node_files(1);
    let config_path = node.config.clone();
    let text = std::fs::read_to_string(&config_path).unwrap();
    let file_kek = "[kek]\nbackend = \"file\"\npath = \"kek.bin\"\n";
    let hsm_kek = format!(
        "[kek]\nbackend = \"pkcs11\"\nmodule = \"{SOFTHSM_MODULE}\"\ntoken_label = \"synod-test-node-1\"\nkey_label = \"synod-kek\"\n"
    );
    std::fs::write(&config_path, text.replace(file_kek, &hsm_kek)).unwrap();
    cluster.node_env.insert(1, env.iter().map(|(k, v)| (k.to_string(), v.clone())).collect());
    cluster.start_new_nodes(&[1]);
    let addr = format!("--member=1={},{}", cluster.nodes[&1].raft_addr, cluster.nodes[&1].api_addr);
    ok(&cluster.synod(1, &["cluster", "init", &addr]));
    cluster.wait_leader();
    assert_eq!(kek_backend(&cluster, 1), "pkcs11");
    assert!(cluster.stop(1));

    // Without the PIN the node refuses to start.
    let config = config_path.display().to_string();
    let err = node_start_fails(Path::new(&config), &[("SOFTHSM2_CONF", conf.clone())]);
    assert!(err.contains("SYNOD_PKCS11_PIN"), "{err}");
    // With a token label that does not exist it says which labels there are.
    std::fs::write(&config_path, text.replace(file_kek, &hsm_kek.replace("synod-test-node-1", "no-such-token")))
        .unwrap();
    let err = node_start_fails(Path::new(&config), &env);
    assert!(err.contains("no-such-token"), "{err}");

    // A copy of the data directory with a KEK file instead of the token does not open.
    let copy = cluster.dir.path().join("copy");
    std::fs::create_dir_all(&copy).unwrap();
    let status = Command::new("cp").arg("-a").arg(cluster.nodes[&1].dir.join("data")).arg(&copy).status().unwrap();
    assert!(status.success());
    ok(&run_synod(&["kek", "generate-file", "--out", &copy.join("kek.bin").display().to_string()], &[]));
    let copy_config = copy.join("node.toml");
    std::fs::write(&copy_config, &text).unwrap();
    let err = node_start_fails(Path::new(&copy_config), &[]);
    assert!(err.contains("does not open"), "{err}");
}

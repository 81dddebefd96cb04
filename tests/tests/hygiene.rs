//! Process hygiene of a running node: secrets given in its environment are
//! gone from `/proc/<pid>/environ`, it can leave no core file, it is not
//! dumpable, its memory is locked (the tests run as root, which may lock
//! memory) or it says why not, and a secret can come from a `*_FILE` or a
//! systemd credential.

use synod_tests::{ok, Cluster, Options};

const PASSPHRASE: &str = "hygiene-test-passphrase-7c1f";
const PIN: &str = "hygiene-test-pin-93ab";

/// Rewrites node `id`'s config to the passphrase KEK backend.
fn use_passphrase_kek(cluster: &Cluster, id: u64) {
    let config = &cluster.nodes[&id].config;
    let text = std::fs::read_to_string(config).unwrap();
    let file_kek = "[kek]\nbackend = \"file\"\npath = \"kek.bin\"\n";
    assert!(text.contains(file_kek), "the harness's config changed: {text}");
    std::fs::write(config, text.replace(file_kek, "[kek]\nbackend = \"passphrase\"\n")).unwrap();
}

/// A one-node cluster on the passphrase KEK, started with `env`.
fn passphrase_cluster(env: Vec<(String, String)>) -> Cluster {
    let mut cluster = Cluster::prepare(Options::default());
    cluster.add_node_files(1);
    use_passphrase_kek(&cluster, 1);
    cluster.node_env.insert(1, env);
    cluster.start_new_nodes(&[1]);
    let args = cluster.init_args();
    ok(&cluster.synod(1, &args.iter().map(String::as_str).collect::<Vec<_>>()));
    cluster.wait_leader();
    cluster
}

fn proc_file(pid: u32, name: &str) -> Vec<u8> {
    std::fs::read(format!("/proc/{pid}/{name}")).unwrap_or_else(|e| panic!("cannot read /proc/{pid}/{name}: {e}"))
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn hygiene_env_secrets_are_scrubbed_and_the_node_is_hardened() {
    // A node given its passphrase and a PIN in the environment runs with neither in
    // /proc/<pid>/environ, a core limit of 0, locked memory, and says so in status.
    let env =
        vec![("SYNOD_KEK_PASSPHRASE".to_string(), PASSPHRASE.to_string()), ("SYNOD_PKCS11_PIN".into(), PIN.into())];
    let cluster = passphrase_cluster(env);
    let pid = cluster.nodes[&1].pid().expect("node 1 runs");

    let environ = proc_file(pid, "environ");
    assert!(contains(&environ, "RUST_LOG="), "the environment is readable (run as root): {environ:?}");
    // The variables were given (their names stay, their values are zeros) and their values are gone.
    assert!(contains(&environ, "SYNOD_KEK_PASSPHRASE=\0") && contains(&environ, "SYNOD_PKCS11_PIN=\0"), "{environ:?}");
    assert!(!contains(&environ, PASSPHRASE), "the passphrase is still in /proc/{pid}/environ");
    assert!(!contains(&environ, PIN), "the PIN is still in /proc/{pid}/environ");

    let limits = String::from_utf8(proc_file(pid, "limits")).unwrap();
    let core = limits.lines().find(|l| l.starts_with("Max core file size")).expect("core limit line");
    assert_eq!(core.split_whitespace().skip(4).take(2).collect::<Vec<_>>(), ["0", "0"], "{core}");

    // Locked memory shows as VmLck; root may lock (CAP_IPC_LOCK), so the node does.
    let proc_status = String::from_utf8(proc_file(pid, "status")).unwrap();
    let locked_kb: u64 = proc_status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmLck line");
    assert!(locked_kb > 0, "no memory locked: {proc_status}");

    let status = cluster.status(1).expect("status");
    assert_eq!(status["memory_locked"], true, "{status}");
    assert!(status.get("memory_lock_refused").is_none(), "{status}");
    assert_eq!(status["core_dumps_off"], true, "{status}");
    let table = ok(&cluster.synod(1, &["status"]));
    assert!(table.contains("memory       locked") && table.contains("core dumps   off"), "{table}");
    // The node says it applied the hardening, without any secret in its log.
    let log = cluster.nodes[&1].log_text();
    assert!(log.contains("process hardening"), "{log}");
    assert!(!log.contains(PASSPHRASE) && !log.contains(PIN), "a secret is in the log");
}

#[test]
fn hygiene_secret_files_and_credentials_open_the_same_kek() {
    // The passphrase set in the environment at first start opens the data directory again
    // from SYNOD_KEK_PASSPHRASE_FILE and from $CREDENTIALS_DIRECTORY; a file others can read is refused.
    use std::os::unix::fs::PermissionsExt;
    let mut cluster = passphrase_cluster(vec![("SYNOD_KEK_PASSPHRASE".into(), PASSPHRASE.into())]);
    assert!(cluster.stop(1));

    let file = cluster.path("passphrase");
    std::fs::write(&file, format!("{PASSPHRASE}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let env = [("SYNOD_KEK_PASSPHRASE_FILE", file.display().to_string())];
    let err = synod_tests::node_start_fails(&cluster.nodes[&1].config, &env);
    assert!(err.contains("chmod 600") && err.contains("KEK passphrase"), "{err}");

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    cluster.node_env.insert(1, vec![("SYNOD_KEK_PASSPHRASE_FILE".into(), file.display().to_string())]);
    cluster.start_node(1);
    cluster.wait_leader();
    assert!(cluster.stop(1));

    let credentials = cluster.path("credentials");
    std::fs::create_dir_all(&credentials).unwrap();
    let credential = credentials.join("SYNOD_KEK_PASSPHRASE");
    std::fs::write(&credential, PASSPHRASE).unwrap();
    std::fs::set_permissions(&credential, std::fs::Permissions::from_mode(0o400)).unwrap();
    cluster.node_env.insert(1, vec![("CREDENTIALS_DIRECTORY".into(), credentials.display().to_string())]);
    cluster.start_node(1);
    cluster.wait_leader();
    assert!(cluster.stop(1));

    // A wrong passphrase in the file does not open the data directory.
    std::fs::set_permissions(&credential, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&credential, "not the passphrase").unwrap();
    let env = [("CREDENTIALS_DIRECTORY", credentials.display().to_string())];
    let err = synod_tests::node_start_fails(&cluster.nodes[&1].config, &env);
    assert!(err.contains("does not open"), "{err}");
}

#[test]
fn hygiene_memory_lock_refused_under_a_finite_limit_is_reported_not_fatal() {
    // A node without CAP_IPC_LOCK under a finite RLIMIT_MEMLOCK does not lock its memory (later
    // allocations would fail), runs anyway, and says why in its log and in status.
    for tool in ["setpriv", "prlimit"] {
        let found = std::process::Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success());
        assert!(found, "{tool} (util-linux) is required for this test: apt-get install util-linux");
    }
    let real = synod_tests::synod_bin();
    let tools = tempfile::tempdir().unwrap();
    let wrapper = tools.path().join("synod");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec setpriv --bounding-set -ipc_lock -- prlimit --memlock=65536:65536 {} \"$@\"\n",
            real.display()
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // Each nextest test is its own process: this reaches this test's harness only.
    std::env::set_var("SYNOD_BIN", &wrapper);
    let cluster = Cluster::start_with(1, Options::default());
    let pid = cluster.nodes[&1].pid().expect("node 1 runs");

    let limits = String::from_utf8(proc_file(pid, "limits")).unwrap();
    assert!(limits.lines().any(|l| l.starts_with("Max locked memory") && l.contains("65536")), "{limits}");
    let status = cluster.status(1).expect("status");
    assert_eq!(status["memory_locked"], false, "{status}");
    let why = status["memory_lock_refused"].as_str().unwrap_or_default();
    assert!(why.contains("RLIMIT_MEMLOCK is 65536 bytes") && why.contains("LimitMEMLOCK=infinity"), "{status}");
    assert_eq!(status["core_dumps_off"], true, "{status}");
    let log = cluster.nodes[&1].log_text();
    assert!(log.contains("refused by the OS") && log.contains("RLIMIT_MEMLOCK"), "{log}");
}

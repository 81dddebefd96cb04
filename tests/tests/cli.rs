//! The command line as a new user meets it: `synod dev`, and clear errors for
//! bad configuration and foreign data directories.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::Path;

use synod_tests::{fails, node_start_fails, ok, run_synod, synod_bin, wait_for, Cluster, Options};

/// A running `synod dev`: the process, the client environment it wrote, and its nodes' pids.
struct Dev {
    process: std::process::Child,
    vars: Vec<(String, String)>,
    pids: Vec<i32>,
}

/// Starts `synod dev` with `args` in `data` and waits until it reports the cluster is up.
fn start_dev(data: &Path, args: &[&str]) -> Dev {
    let mut process = Command::new(synod_bin())
        .arg("dev")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(process.stdout.take().unwrap()).lines();
    let mut seen = String::new();
    while !seen.contains("Press Ctrl-C") {
        match lines.next() {
            Some(Ok(line)) => {
                seen.push_str(&line);
                seen.push('\n');
            }
            _ => panic!("synod dev ended before the cluster was up:\n{seen}"),
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    assert!(seen.contains("export SYNOD_ADDR="), "{seen}");
    let env_text = std::fs::read_to_string(data.join("env")).unwrap();
    let vars: Vec<(String, String)> = env_text
        .lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(vars.len(), 5, "{env_text}");
    let cluster: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("cluster.json")).unwrap()).unwrap();
    let pids = cluster["nodes"].as_array().unwrap().iter().map(|n| n["pid"].as_i64().unwrap() as i32).collect();
    Dev { process, vars, pids }
}

impl Dev {
    /// The client environment `synod dev` wrote to `<data-dir>/env`.
    fn env(&self) -> Vec<(&str, String)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.clone())).collect()
    }

    /// SIGTERMs `synod dev` and asserts it and all its nodes exit cleanly.
    fn stop(mut self) {
        kill(Pid::from_raw(self.process.id() as i32), Signal::SIGTERM).unwrap();
        let status = wait_for("synod dev to exit", Duration::from_secs(30), || self.process.try_wait().unwrap());
        assert!(status.success(), "synod dev exits 0 on SIGTERM");
        for pid in &self.pids {
            assert!(kill(Pid::from_raw(*pid), None).is_err(), "node pid {pid} is gone");
        }
    }
}

#[test]
fn dev_runs_a_cluster_that_survives_a_killed_node_and_stops_cleanly() {
    // `synod dev` starts 3 node processes, writes env and cluster.json, survives
    // kill -9 of one node, and stops every node on SIGTERM.
    let dir = tempfile::tempdir().unwrap();
    let mut dev = start_dev(&dir.path().join("dev"), &["--nodes", "3"]);
    assert_eq!(dev.pids.len(), 3);
    let status: serde_json::Value =
        serde_json::from_str(&ok(&run_synod(&["status", "-o", "json"], &dev.env()))).unwrap();
    assert_eq!(status["members"].as_array().unwrap().len(), 3);
    ok(&run_synod(&["kv", "put", "greeting", "hello"], &dev.env()));

    // Kill a node that is not the one the env points at; the cluster carries on.
    let killed = dev.pids.remove(2);
    kill(Pid::from_raw(killed), Signal::SIGKILL).unwrap();
    wait_for("a write with one node killed", Duration::from_secs(60), || {
        run_synod(&["kv", "put", "after-kill", "yes"], &dev.env()).status.success().then_some(())
    });
    dev.stop();
}

#[test]
fn dev_readme_tour_works_for_each_role() {
    // The README's tour, each command run as the operator the README runs it as (reads are
    // signed by that operator's key, and scoped to it): the admin, then the approvers alice and bob.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    let dev = start_dev(&data, &["--nodes", "3"]);
    let admin = dev.env();
    let as_op = |name: &str| {
        let mut env = dev.env();
        env.retain(|(k, _)| *k != "SYNOD_OPERATOR_KEY");
        env.push(("SYNOD_OPERATOR_KEY", data.join(format!("{name}.pem")).display().to_string()));
        env
    };
    let msg = dir.path().join("m.txt");
    std::fs::write(&msg, "release 1.0\n").unwrap();
    let m = msg.to_str().unwrap();
    let sig = dir.path().join("m.sig").display().to_string();
    for args in [
        vec!["status"],
        vec!["status", "--output", "json"],
        vec!["health"],
        vec!["key", "list"],
        vec!["sign", "demo", "--in", m, "--out", &sig],
        vec!["verify", "--key", "demo", "--in", m, "--signature", &sig],
        vec!["key", "show", "demo", "--format", "pem"],
        vec!["sign", "demo", "--in", m, "--request-id", "rel-1.0"],
        vec!["request", "show", "rel-1.0"],
        vec!["kv", "put", "greeting", "hello"],
        vec!["key", "policy", "show", "treasury"],
        vec![
            "request",
            "sign",
            "treasury",
            "--in",
            m,
            "--request-id",
            "t1",
            "--purpose",
            "payout",
            "--attr",
            "amount=250",
        ],
    ] {
        ok(&run_synod(&args, &admin));
    }
    ok(&run_synod(&["approve", "t1", "--yes"], &as_op("alice")));
    let shown = ok(&run_synod(&["request", "show", "t1"], &admin));
    assert!(shown.contains("1/2"), "{shown}");
    ok(&run_synod(&["approve", "t1", "--yes"], &as_op("bob")));
    let waited = ok(&run_synod(&["request", "wait", "t1", "-o", "json"], &admin));
    assert!(waited.contains("\"signed\""), "{waited}");
    let err = fails(&run_synod(&["approve", "t1", "--yes"], &as_op("alice")));
    assert!(err.contains("already approved") || err.contains("no longer pending"), "{err}");
    ok(&run_synod(&["audit", "list"], &admin));
    ok(&run_synod(&["audit", "verify"], &admin));
    dev.stop();
}

#[test]
fn dev_with_softhsm_seals_under_a_token_per_node() {
    // `synod dev --hsm softhsm` gives each node its own SoftHSM2 token, and the
    // nodes report the pkcs11 KEK backend.
    let dir = tempfile::tempdir().unwrap();
    let dev = start_dev(&dir.path().join("dev"), &["--nodes", "2", "--hsm", "softhsm"]);
    let health: serde_json::Value =
        serde_json::from_str(&ok(&run_synod(&["health", "-o", "json"], &dev.env()))).unwrap();
    assert_eq!(health["kek_backend"], "pkcs11", "{health}");
    let status: serde_json::Value =
        serde_json::from_str(&ok(&run_synod(&["status", "-o", "json"], &dev.env()))).unwrap();
    assert!(status["kek"].as_str().unwrap().contains("synod-node-1"), "{status}");
    dev.stop();
}

#[test]
fn config_errors_name_the_file_and_the_field() {
    // A malformed config or a port in use gives an error naming the file, the field and the address.
    let mut cluster = Cluster::start_with(1, Options::default());
    let node = &cluster.nodes[&1];
    let text = std::fs::read_to_string(&node.config).unwrap();
    let bad = node.dir.join("bad.toml");
    std::fs::write(&bad, text.replace("node_id = 1", "node_id = \"one\"")).unwrap();
    let err = node_start_fails(Path::new(&bad), &[]);
    assert!(err.contains("bad.toml") && err.contains("node_id"), "{err}");

    // Same ports as the running node: the error says which address is taken.
    let busy = node.dir.join("busy.toml");
    std::fs::write(&busy, text.replace("data_dir = \"data\"", "data_dir = \"data2\"")).unwrap();
    let err = node_start_fails(Path::new(&busy), &[]);
    assert!(err.contains(&node.raft_addr) || err.contains(&node.api_addr), "{err}");
    assert!(err.contains("busy.toml"), "{err}");
    cluster.kill(1);
}

#[test]
fn data_dir_of_another_node_is_refused() {
    // A data directory that belongs to another node is refused, never reinitialised.
    let mut cluster = Cluster::start_with(2, Options::default());
    cluster.kill(1);
    cluster.kill(2);
    let node2 = &cluster.nodes[&2];
    let text = std::fs::read_to_string(&node2.config).unwrap();
    let data1 = cluster.nodes[&1].dir.join("data").display().to_string();
    let wrong = node2.dir.join("wrong.toml");
    std::fs::write(&wrong, text.replace("data_dir = \"data\"", &format!("data_dir = \"{data1}\""))).unwrap();
    let err = node_start_fails(Path::new(&wrong), &[]);
    assert!(err.contains("belongs to node 1"), "{err}");
}

#[test]
fn data_dir_corrupted_is_refused_with_advice() {
    // A corrupted store refuses to start with a message that says what to do.
    let mut cluster = Cluster::start_with(1, Options::default());
    cluster.kill(1);
    let node = &cluster.nodes[&1];
    let db = node.dir.join("data/store/db");
    std::fs::write(&db, vec![0x5a; 4096]).unwrap();
    let err = node_start_fails(&node.config, &[]);
    assert!(err.contains("corrupted") || err.contains("restore"), "{err}");
}

#[test]
fn cli_errors_say_what_to_set() {
    // Client commands without connection settings say which variable to set.
    let err = fails(&run_synod(&["status"], &[]));
    assert!(err.contains("SYNOD_CACERT"), "{err}");
    let err = fails(&run_synod(&["cluster", "init", "--member", "nonsense"], &[("SYNOD_CACERT", "/x".into())]));
    assert!(err.contains("ID=RAFT_ADDR,API_ADDR") || err.contains("SYNOD_OPERATOR_KEY"), "{err}");
    let out = ok(&run_synod(&["--help"], &[]));
    assert!(out.contains("dev") && out.contains("status"), "{out}");
}

#[test]
fn keys_and_certificates_are_readable_by_openssl() {
    // Operator keys, node and client keys and certificates are standard PEM that
    // OpenSSL (and so curl) reads, and certificates chain to the CA.
    let cluster = Cluster::prepare(Options::default());
    let p = |s: &str| cluster.path(s).display().to_string();
    ok(&run_synod(&["ca", "issue", "node", "--id", "1", "--ca-dir", &p("ca"), "--out", &p("certs")], &[]));
    for key in ["admin.pem", "certs/client-tester.key", "certs/node-1.key"] {
        let out = Command::new("openssl").args(["pkey", "-noout", "-in", &p(key)]).output().unwrap();
        assert!(out.status.success(), "{key}: {}", String::from_utf8_lossy(&out.stderr));
    }
    for cert in ["certs/client-tester.crt", "certs/node-1.crt"] {
        let out = Command::new("openssl").args(["verify", "-CAfile", &p("ca/ca.crt"), &p(cert)]).output().unwrap();
        assert!(out.status.success(), "{cert}: {}", String::from_utf8_lossy(&out.stdout));
    }
}

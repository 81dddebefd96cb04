//! Certificate renewal on a running node: `synod ca issue --renew` writes a new certificate
//! over the old one and SIGHUP makes the node present it to new connections without a
//! restart; replacements that do not check out are refused with a clear log line while the
//! current certificate keeps working.

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use synod_tests::{ok, run_synod, tls, wait_for, Cluster};

/// Sends SIGHUP to node `id` and waits until its log holds `count` lines containing `needle`.
fn hangup_and_wait(cluster: &Cluster, id: u64, needle: &str, count: usize) {
    let pid = cluster.nodes[&id].pid().expect("node running");
    kill(Pid::from_raw(pid as i32), Signal::SIGHUP).expect("send SIGHUP");
    wait_for(&format!("node {id} to log {needle:?} {count} times"), Duration::from_secs(20), || {
        (cluster.nodes[&id].log_text().matches(needle).count() >= count).then_some(())
    });
}

/// A new QUIC connection from node 2's certificate to node 1's Raft port is served (node 1's
/// peer transport took the reloaded configuration and it works).
fn ping_from_node_2(cluster: &Cluster) {
    let config = cluster.nodes[&2].config.display().to_string();
    let peer = format!("1={}", cluster.nodes[&1].raft_addr);
    let out = ok(&run_synod(&["node", "ping", "--config", &config, "--peer", &peer], &[]));
    assert!(out.contains("node 1 answered"), "{out}");
}

#[test]
fn node_sighup_reloads_renewed_certificate_and_refuses_bad_ones() {
    // The node keeps its pid and keeps serving across SIGHUP; after a renewal new API
    // connections see the new serial and expiry and new peer connections are served; a corrupt file, a certificate whose key is not the node's
    // key and a certificate from another CA are each refused with a log line naming the
    // problem, and the renewed certificate stays in use.
    let mut cluster = Cluster::start(3);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let cert_path = cluster.path("certs/node-1.crt");
    let pid = cluster.nodes[&1].pid().unwrap();
    let before = runtime.block_on(tls::presented_certificate(&cluster, 1));
    assert_eq!(before, tls::certificate_file_der(&cert_path), "the node presents its certificate file");

    let ca = cluster.path("ca").display().to_string();
    let out = ok(&run_synod(
        &["ca", "issue", "--renew", &cert_path.display().to_string(), "--ca-dir", &ca, "--days", "30"],
        &[],
    ));
    assert!(out.contains("key file is unchanged"), "{out}");
    let renewed = tls::certificate_file_der(&cert_path);
    assert_ne!(renewed, before);
    hangup_and_wait(&cluster, 1, "TLS material reloaded", 1);
    let after = runtime.block_on(tls::presented_certificate(&cluster, 1));
    assert_eq!(after, renewed, "new connections see the renewed certificate");
    let ((serial_before, expiry_before), (serial_after, expiry_after)) =
        (tls::serial_and_expiry(&before), tls::serial_and_expiry(&after));
    assert_ne!(serial_before, serial_after);
    assert!(expiry_after < expiry_before, "30 days instead of the default: {expiry_after} vs {expiry_before}");
    assert_eq!(cluster.nodes[&1].pid(), Some(pid));
    cluster.status(1).expect("the node still answers");
    ping_from_node_2(&cluster);

    // Three bad replacements, each refused while the renewed certificate stays in use.
    let other = tempfile::tempdir().unwrap();
    let p = |s: &str| other.path().join(s).display().to_string();
    ok(&run_synod(&["ca", "init", "--dir", &p("ca")], &[]));
    ok(&run_synod(
        &["ca", "issue", "node", "--id", "1", "--san", "127.0.0.1", "--ca-dir", &p("ca"), "--out", &p("foreign")],
        &[],
    ));
    ok(&run_synod(
        &["ca", "issue", "node", "--id", "1", "--san", "127.0.0.1", "--ca-dir", &ca, "--out", &p("rekeyed")],
        &[],
    ));
    let good = std::fs::read(&cert_path).unwrap();
    let bad: [(&str, Vec<u8>, &str); 3] = [
        (
            "corrupt",
            b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n".to_vec(),
            "cannot parse certificate",
        ),
        ("another key", std::fs::read(p("rekeyed/node-1.crt")).unwrap(), "does not match certificate"),
        ("another CA", std::fs::read(p("foreign/node-1.crt")).unwrap(), "not issued by this CA"),
    ];
    for (refusals, (what, contents, reason)) in bad.into_iter().enumerate() {
        std::fs::write(&cert_path, contents).unwrap();
        hangup_and_wait(&cluster, 1, "TLS reload refused", refusals + 1);
        let log = cluster.nodes[&1].log_text();
        let line = log.lines().rfind(|l| l.contains("TLS reload refused")).unwrap();
        assert!(line.contains(reason) && line.contains("node-1.crt"), "{what}: {line}");
        assert_eq!(runtime.block_on(tls::presented_certificate(&cluster, 1)), renewed, "{what}: old one kept");
        cluster.status(1).unwrap_or_else(|| panic!("{what}: the node stopped answering"));
        ping_from_node_2(&cluster);
    }
    std::fs::write(&cert_path, good).unwrap();
    assert_eq!(cluster.nodes[&1].pid(), Some(pid));
    assert_eq!(runtime.block_on(tls::metric(&cluster, 1, "synod_tls_reloads_total", None)), 1);
    assert_eq!(runtime.block_on(tls::metric(&cluster, 1, "synod_tls_reload_failures_total", None)), 3);
    assert!(cluster.stop(1), "the node still shuts down cleanly");
}

//! Running Synod as a platform service: a real node started the way systemd starts a
//! `Type=notify` unit (`NOTIFY_SOCKET` and `WATCHDOG_USEC` in its environment) speaks the notify
//! protocol, and the example configuration shipped in `deploy/` is one the real parser takes.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use synod_node::config::{KekConfig, NodeConfig};
use synod_node::notify::RELOAD_REFUSED_NOTE;
use synod_tests::{ok, wait_for, Cluster, Options};

/// The service manager's end of `NOTIFY_SOCKET`: a Unix datagram socket whose messages a
/// thread collects, one string per datagram (a datagram may hold several `KEY=value` lines).
struct NotifySocket {
    path: PathBuf,
    messages: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (messages, stop) = (messages.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(n) = socket.recv(&mut buf) {
                        messages.lock().unwrap().push(String::from_utf8_lossy(&buf[..n]).into_owned());
                    }
                }
            })
        };
        NotifySocket { path, messages, stop, reader: Some(reader) }
    }

    fn count(&self) -> usize {
        self.messages.lock().unwrap().len()
    }

    /// Waits for a datagram from index `from` on that holds the line `line`; returns its
    /// index and its text.
    fn wait_line(&self, from: usize, line: &str) -> (usize, String) {
        wait_for(&format!("the node to send {line:?}"), Duration::from_secs(60), || {
            let messages = self.messages.lock().unwrap();
            messages
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, m)| m.lines().any(|l| l == line))
                .map(|(i, m)| (i, m.clone()))
        })
    }

    /// Waits for a `STATUS=` line starting with `prefix`; returns the whole line.
    fn wait_status(&self, prefix: &str) -> String {
        let wanted = format!("STATUS={prefix}");
        wait_for(&format!("a status line starting {prefix:?}"), Duration::from_secs(60), || {
            let messages = self.messages.lock().unwrap();
            messages.iter().flat_map(|m| m.lines()).find(|l| l.starts_with(&wanted)).map(str::to_string)
        })
    }

    fn lines_equal(&self, line: &str) -> usize {
        self.messages.lock().unwrap().iter().flat_map(|m| m.lines()).filter(|l| *l == line).count()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

fn signal(cluster: &Cluster, id: u64, signal: Signal) {
    let pid = cluster.nodes[&id].pid().expect("node running");
    kill(Pid::from_raw(pid as i32), signal).expect("send a signal to the node");
}

#[test]
fn deploy_node_speaks_systemd_notify_protocol() {
    // A node under a notify socket sends READY=1 with a status line once it serves (before
    // any cluster exists: it does not wait for a quorum), then its Raft progress as STATUS=,
    // WATCHDOG=1 at half the interval asked for, RELOADING=1 then READY=1 around SIGHUP (and
    // keeps running, a refused reload included, which its status line names), and STOPPING=1
    // on SIGTERM before it exits cleanly.
    let mut cluster = Cluster::prepare(Options::default());
    let notify = NotifySocket::bind(cluster.dir.path());
    cluster.add_node_files(1);
    cluster.node_env.insert(
        1,
        vec![
            ("NOTIFY_SOCKET".into(), notify.path.display().to_string()),
            // One second: a ping every half second, so pings add up quickly.
            ("WATCHDOG_USEC".into(), "1000000".into()),
        ],
    );
    cluster.start_new_nodes(&[1]);

    let (_, ready) = notify.wait_line(0, "READY=1");
    assert!(
        ready
            .lines()
            .any(|l| l == "STATUS=no cluster yet: waiting for `synod cluster init` or to be added as a member"),
        "{ready}"
    );

    let args = cluster.init_args();
    ok(&cluster.synod(1, &args.iter().map(String::as_str).collect::<Vec<_>>()));
    cluster.wait_leader();
    let status = notify.wait_status("leader, term ");
    assert!(status.contains(", applied "), "{status}");

    wait_for("three watchdog pings", Duration::from_secs(60), || (notify.lines_equal("WATCHDOG=1") >= 3).then_some(()));

    let pid = cluster.nodes[&1].pid();
    let before_hup = notify.count();
    signal(&cluster, 1, Signal::SIGHUP);
    let (reloading, text) = notify.wait_line(before_hup, "RELOADING=1");
    assert!(
        text.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "systemd 253+ needs the time with RELOADING=1: {text}"
    );
    notify.wait_line(reloading + 1, "READY=1");
    assert_eq!(cluster.nodes[&1].pid(), pid, "SIGHUP never restarts the node");
    cluster.status(1).expect("the node still answers after SIGHUP");

    // A refused reload (a corrupt certificate file) keeps the node ready and says so in its
    // status line, until a reload is accepted again.
    let cert = cluster.path("certs/node-1.crt");
    let good = std::fs::read(&cert).unwrap();
    std::fs::write(&cert, b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n").unwrap();
    let before_bad = notify.count();
    signal(&cluster, 1, Signal::SIGHUP);
    let (reloading, _) = notify.wait_line(before_bad, "RELOADING=1");
    let (_, refused) = notify.wait_line(reloading + 1, "READY=1");
    assert!(refused.contains(RELOAD_REFUSED_NOTE), "{refused}");
    std::fs::write(&cert, good).unwrap();
    let before_good = notify.count();
    signal(&cluster, 1, Signal::SIGHUP);
    let (reloading, _) = notify.wait_line(before_good, "RELOADING=1");
    let (_, accepted) = notify.wait_line(reloading + 1, "READY=1");
    assert!(accepted.contains("STATUS=leader, term ") && !accepted.contains(RELOAD_REFUSED_NOTE), "{accepted}");
    assert_eq!(cluster.nodes[&1].pid(), pid, "a refused reload never stops the node");

    let before_term = notify.count();
    assert!(cluster.stop(1), "the node exits 0 on SIGTERM:\n{}", cluster.nodes[&1].log_text());
    notify.wait_line(before_term, "STOPPING=1");
}

/// `deploy/node.toml.example`, shipped in the .deb.
fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/node.toml.example")
}

/// The `key = ` names a TOML text sets, commented out or not.
fn keys_in(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.trim_start_matches('#').trim())
        .filter_map(|l| l.split_once(" = ").map(|(k, _)| k.trim().to_string()))
        .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .collect()
}

#[test]
fn deploy_example_config_parses_and_documents_every_field() {
    // The example configuration parses with the node's own parser once its placeholder admin
    // key is replaced; unedited, a node refuses it and names the field. Every field the parser
    // knows (optional ones and the other KEK backend's included) appears in it, so a new field
    // cannot ship undocumented.
    let text = std::fs::read_to_string(example_path()).expect("deploy/node.toml.example");
    let dir = tempfile::tempdir().unwrap();

    let unedited = dir.path().join("unedited.toml");
    std::fs::write(&unedited, &text).unwrap();
    let refusal = NodeConfig::load(&unedited).expect_err("the placeholder admin key must not parse").to_string();
    assert!(refusal.contains("genesis_admins"), "the refusal names the field: {refusal}");

    let key = "11".repeat(32);
    let edited = dir.path().join("node.toml");
    std::fs::write(&edited, text.replace("REPLACE-with-the-admin-public-key-hex", &key)).unwrap();
    let mut config = NodeConfig::load(&edited).unwrap_or_else(|e| panic!("the example must parse: {e}"));
    assert_eq!(config.genesis_admins.len(), 1);
    assert!(matches!(config.kek, KekConfig::Passphrase { .. }), "the example's KEK needs no file on disk");
    assert_eq!(config.data_dir, Path::new("/var/lib/synod"), "the unit's StateDirectory=synod");

    // Every field, with the optional ones set and the other KEK backend's fields too.
    config.metrics_listen = Some("127.0.0.1:9201".parse().unwrap());
    config.cluster_id = Some("prod".into());
    let mut fields = keys_in(&config.to_toml());
    config.kek = KekConfig::Pkcs11 {
        module: "/m.so".into(),
        token_label: "t".into(),
        key_label: "k".into(),
        pin_env: "P".into(),
        pin_file: Some("/p".into()),
    };
    fields.extend(keys_in(&config.to_toml()));
    let documented = keys_in(&text);
    let missing: Vec<&String> = fields.iter().filter(|f| !documented.contains(f)).collect();
    assert!(fields.len() > 20, "the serialised config lists its fields: {fields:?}");
    assert!(missing.is_empty(), "deploy/node.toml.example does not document {missing:?}");
}

//! Test support: real `synod` node processes on 127.0.0.1, driven through the
//! real CLI.
//!
//! A [`Cluster`] makes its CA, certificates, operator key and configs with the
//! `synod` binary itself, starts each node as its own OS process, and kills
//! every process it started when dropped. Tests speak to nodes only through
//! the CLI (and so through the HTTPS API), as an operator would.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use synod_cli::local;

pub mod tls;

/// The `synod` binary next to the test binary (target/<profile>/synod).
pub fn synod_bin() -> PathBuf {
    if let Ok(path) = std::env::var("SYNOD_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("synod");
    assert!(
        bin.exists(),
        "{} is missing; build it first: SYNOD_BUILD_FAULTS=1 cargo build --workspace --bins",
        bin.display()
    );
    bin
}

/// Raft timing and compaction for test clusters.
#[derive(Clone, Debug)]
pub struct Options {
    pub snapshot_every_entries: u64,
    pub logs_kept_after_snapshot: u64,
    /// `SYNOD_FAULTS` for every node (test builds only).
    pub faults: Option<String>,
    /// `SYNOD_FAULTS` for one node, overriding `faults` there.
    pub node_faults: BTreeMap<u64, String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            snapshot_every_entries: 2000,
            logs_kept_after_snapshot: 500,
            faults: None,
            node_faults: BTreeMap::new(),
        }
    }
}

/// One node process of a test cluster.
pub struct NodeProc {
    pub id: u64,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub raft_addr: String,
    pub api_addr: String,
    pub log: PathBuf,
    child: Option<Child>,
}

impl NodeProc {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The node's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A cluster of real node processes in a temporary directory.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: BTreeMap<u64, NodeProc>,
    pub options: Options,
    /// Extra environment for a node's process (e.g. SOFTHSM2_CONF and a PIN).
    pub node_env: BTreeMap<u64, Vec<(String, String)>>,
}

/// A free loopback address pair (UDP for Raft, TCP for the API) that this
/// process has not handed out before. Another test process may still take a
/// port before the node binds it; [`Cluster::start_new_nodes`] handles that.
fn free_ports() -> (String, String) {
    let (raft, api) = local::free_addrs(1).expect("free loopback ports")[0];
    (raft.to_string(), api.to_string())
}

/// A free loopback TCP port for a console (the UDP half of the pair goes unused).
fn free_console_port() -> u16 {
    local::free_addrs(1).expect("a free loopback port")[0].1.port()
}

/// Rewrites the `listen` line of a node config's `[console]` section to `port`, if it has one.
fn move_console(config: &Path, port: u16) {
    let text = std::fs::read_to_string(config).unwrap();
    let Some((node_part, console)) = text.split_once("[console]") else { return };
    let mut moved = format!("{node_part}[console]");
    for line in console.split_inclusive('\n') {
        if line.split('=').next().is_some_and(|key| key.trim() == "listen") {
            moved.push_str(&format!("listen = \"127.0.0.1:{port}\"\n"));
        } else {
            moved.push_str(line);
        }
    }
    std::fs::write(config, moved).unwrap();
}

/// Runs `synod` with `args` and `envs`, returning its output.
pub fn run_synod(args: &[&str], envs: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(synod_bin());
    cmd.args(args).env_remove("SYNOD_ADDR").env_remove("SYNOD_OPERATOR_KEY").stdin(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run synod")
}

/// Asserts success and returns stdout.
pub fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "synod failed: {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Asserts failure and returns stderr.
pub fn fails(output: &Output) -> String {
    assert!(!output.status.success(), "synod unexpectedly succeeded: {}", String::from_utf8_lossy(&output.stdout));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// What a failed command said: under `-o json` the messages of its
/// `{"errors": [...]}` line on stderr, joined with "; ", otherwise its stderr.
pub fn error_text(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let errors: Vec<String> = stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|v| v["errors"].as_array().cloned())
        .flatten()
        .filter_map(|e| e.as_str().map(str::to_string))
        .collect();
    if errors.is_empty() {
        stderr.into_owned()
    } else {
        errors.join("; ")
    }
}

/// Runs `synod node start --config CONFIG`, expecting it to refuse to start;
/// returns its stderr. A node that starts anyway is killed after 30 s and the
/// test fails, instead of hanging.
pub fn node_start_fails(config: &Path, envs: &[(&str, String)]) -> String {
    let mut cmd = Command::new(synod_bin());
    cmd.args(["node", "start", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn node");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("the node started although it should have refused: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "the node exited 0 although it should have refused");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Polls `f` until it returns Some or `timeout` passes (then panics with `what`).
/// Whether OpenSSL verifies an Ed25519 `signature` file over `message` under
/// the SPKI PEM public key `pem` (an implementation independent of Synod's).
pub fn openssl_verifies(pem: &Path, message: &Path, signature: &Path) -> bool {
    Command::new("openssl")
        .args(["pkeyutl", "-verify", "-pubin", "-rawin", "-inkey"])
        .arg(pem)
        .arg("-in")
        .arg(message)
        .arg("-sigfile")
        .arg(signature)
        .output()
        .expect("openssl is installed by scripts/test")
        .status
        .success()
}

pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Cluster {
    /// Starts `n` nodes and initialises the cluster with an admin key.
    pub fn start(n: u64) -> Cluster {
        Self::start_with(n, Options::default())
    }

    pub fn start_with(n: u64, options: Options) -> Cluster {
        let mut cluster = Self::prepare(options);
        for id in 1..=n {
            cluster.add_node_files(id);
        }
        cluster.start_new_nodes(&(1..=n).collect::<Vec<_>>());
        let args = cluster.init_args();
        ok(&cluster.synod(1, &args.iter().map(String::as_str).collect::<Vec<_>>()));
        cluster.wait_leader();
        cluster
    }

    /// `synod cluster init` with every node of the cluster a member.
    pub fn init_args(&self) -> Vec<String> {
        let members =
            self.nodes.values().map(|node| format!("--member={}={},{}", node.id, node.raft_addr, node.api_addr));
        ["cluster".to_string(), "init".to_string()].into_iter().chain(members).collect()
    }

    /// Makes the CA, the client certificate and the admin key; no nodes yet.
    pub fn prepare(options: Options) -> Cluster {
        let dir = tempfile::Builder::new().prefix("synod-test-").tempdir().unwrap();
        let p = |s: &str| dir.path().join(s).display().to_string();
        ok(&run_synod(&["ca", "init", "--dir", &p("ca")], &[]));
        ok(&run_synod(&["ca", "issue", "client", "--name", "tester", "--ca-dir", &p("ca"), "--out", &p("certs")], &[]));
        ok(&run_synod(&["operator", "keygen", "--out", &p("admin.pem")], &[]));
        Cluster { dir, nodes: BTreeMap::new(), options, node_env: BTreeMap::new() }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The test admin's public key (hex), which every node's config pins as
    /// the one allowed to initialise the cluster.
    pub fn admin_key_hex(&self) -> String {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        let pem = std::fs::read_to_string(self.path("admin.pem")).expect("admin key");
        let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem).expect("admin key PEM");
        hex::encode(key.verifying_key().to_bytes())
    }

    /// Issues a certificate for node `id` and writes its config (not started).
    pub fn add_node_files(&mut self, id: u64) -> &NodeProc {
        let ca = self.path("ca").display().to_string();
        let certs = self.path("certs").display().to_string();
        ok(&run_synod(
            &["ca", "issue", "node", "--id", &id.to_string(), "--san", "127.0.0.1", "--ca-dir", &ca, "--out", &certs],
            &[],
        ));
        let node_dir = self.path(&format!("node-{id}"));
        std::fs::create_dir_all(&node_dir).unwrap();
        ok(&run_synod(&["kek", "generate-file", "--out", &node_dir.join("kek.bin").display().to_string()], &[]));
        let (raft_addr, api_addr) = free_ports();
        let admin = self.admin_key_hex();
        let config = node_dir.join("node.toml");
        std::fs::write(
            &config,
            format!(
                "node_id = {id}\ndata_dir = \"data\"\nraft_listen = \"{raft_addr}\"\napi_listen = \"{api_addr}\"\n\
                 genesis_admins = [\"{admin}\"]\n\
                 [tls]\nca_cert = \"{ca}/ca.crt\"\ncert = \"{certs}/node-{id}.crt\"\nkey = \"{certs}/node-{id}.key\"\n\
                 [kek]\nbackend = \"file\"\npath = \"kek.bin\"\n\
                 [raft]\nheartbeat_ms = 150\nelection_timeout_min_ms = 800\nelection_timeout_max_ms = 1600\n\
                 snapshot_every_entries = {}\nlogs_kept_after_snapshot = {}\n",
                self.options.snapshot_every_entries, self.options.logs_kept_after_snapshot
            ),
        )
        .unwrap();
        let log = node_dir.join("node.log");
        self.nodes.insert(id, NodeProc { id, dir: node_dir, config, raft_addr, api_addr, log, child: None });
        &self.nodes[&id]
    }

    /// Starts (or restarts) node `id`'s process.
    pub fn start_node(&mut self, id: u64) {
        let faults = self.options.node_faults.get(&id).cloned().or_else(|| self.options.faults.clone());
        let node = self.nodes.get_mut(&id).expect("known node");
        assert!(node.child.is_none(), "node {id} is already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log).unwrap();
        let mut cmd = Command::new(synod_bin());
        cmd.args(["node", "start", "--config"])
            .arg(&node.config)
            .env("RUST_LOG", "info,openraft=warn,quinn=warn,sled=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(f) = faults {
            cmd.env("SYNOD_FAULTS", f);
        }
        for (k, v) in self.node_env.get(&id).into_iter().flatten() {
            cmd.env(k, v);
        }
        node.child = Some(cmd.spawn().expect("spawn node"));
    }

    /// Gives node `id` (not started yet) an approver console on a free loopback port, serving
    /// the certificate and key `certificate` and `key`. [`Cluster::start_new_nodes`] moves it
    /// to another port if that one is taken by then; [`Cluster::console_origin`] reads it.
    pub fn add_console(&mut self, id: u64, certificate: &Path, key: &Path) {
        let config = &self.nodes[&id].config;
        let port = free_console_port();
        let mut text = std::fs::read_to_string(config).unwrap();
        assert!(!text.contains("[console]"), "node {id} already has a console");
        text.push_str(&format!(
            "[console]\nlisten = \"127.0.0.1:{port}\"\ncertificate = \"{}\"\nkey = \"{}\"\n",
            certificate.display(),
            key.display()
        ));
        std::fs::write(config, text).unwrap();
    }

    /// Node `id`'s console origin as browsers open it, `https://localhost:PORT` (the RP ID is a
    /// domain, never an IP address), from its config: call it after the node started, since a
    /// start may move the console to another port.
    pub fn console_origin(&self, id: u64) -> Option<String> {
        let text = std::fs::read_to_string(&self.nodes[&id].config).ok()?;
        let section = text.split("[console]").nth(1)?;
        let listen = section.lines().find_map(|line| {
            let (key, value) = line.split_once('=')?;
            (key.trim() == "listen").then(|| value.trim().trim_matches('"').to_string())
        })?;
        let port = listen.parse::<std::net::SocketAddr>().ok()?.port();
        Some(format!("https://localhost:{port}"))
    }

    /// Starts nodes that are not members of a cluster yet and waits until each
    /// answers. Tests run in parallel processes, so another test's node can bind
    /// a port between [`free_ports`] choosing it and this node binding it; such a
    /// node gets new ports (its console too, if it has one) and starts again
    /// (`synod_cli::local`). (A member cannot move: its addresses are in the
    /// committed membership.)
    pub fn start_new_nodes(&mut self, ids: &[u64]) {
        for &id in ids {
            self.start_node(id);
        }
        for &id in ids {
            for attempt in 0.. {
                let exited = wait_for(&format!("node {id} to answer"), Duration::from_secs(60), || {
                    let node = self.nodes.get_mut(&id).expect("known node");
                    if node.child.as_mut().expect("started").try_wait().unwrap().is_some() {
                        return Some(true);
                    }
                    let out = self.synod(id, &["health", "-o", "json"]);
                    (!out.stdout.is_empty()).then_some(false)
                });
                if !exited {
                    break;
                }
                let node = self.nodes.get_mut(&id).expect("known node");
                node.child = None;
                assert!(
                    attempt < local::PORT_MOVES_MAX && local::exited_for_taken_port(&node.log),
                    "node {id} exited before answering:\n{}",
                    node.log_text()
                );
                let (raft_addr, api_addr) = free_ports();
                local::move_listen(&node.config, raft_addr.parse().unwrap(), api_addr.parse().unwrap()).unwrap();
                move_console(&node.config, free_console_port());
                (node.raft_addr, node.api_addr) = (raft_addr, api_addr);
                self.start_node(id);
            }
        }
    }

    /// SIGKILLs node `id`: no shutdown, no flush.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.nodes.get_mut(&id).and_then(|n| n.child.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERMs node `id` and waits for a clean exit; returns whether it exited 0.
    pub fn stop(&mut self, id: u64) -> bool {
        let Some(mut child) = self.nodes.get_mut(&id).and_then(|n| n.child.take()) else { return true };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let status = wait_for("node to exit", Duration::from_secs(20), || child.try_wait().unwrap());
        status.success()
    }

    /// Client environment pointing the CLI at node `id`.
    pub fn env(&self, id: u64) -> Vec<(&'static str, String)> {
        vec![
            ("SYNOD_ADDR", format!("https://{}", self.nodes[&id].api_addr)),
            ("SYNOD_CACERT", self.path("ca/ca.crt").display().to_string()),
            ("SYNOD_CLIENT_CERT", self.path("certs/client-tester.crt").display().to_string()),
            ("SYNOD_CLIENT_KEY", self.path("certs/client-tester.key").display().to_string()),
            ("SYNOD_OPERATOR_KEY", self.path("admin.pem").display().to_string()),
        ]
    }

    /// Runs the CLI against node `id`.
    pub fn synod(&self, id: u64, args: &[&str]) -> Output {
        run_synod(args, &self.env(id))
    }

    /// Runs the CLI against node `id` as the operator whose key file is `key`.
    pub fn synod_as(&self, id: u64, key: &Path, args: &[&str]) -> Output {
        let mut env = self.env(id);
        env.retain(|(k, _)| *k != "SYNOD_OPERATOR_KEY");
        env.push(("SYNOD_OPERATOR_KEY", key.display().to_string()));
        run_synod(args, &env)
    }

    /// Makes an operator key file `<name>.pem` in the cluster's directory;
    /// returns its path and public key (hex).
    pub fn keygen(&self, name: &str) -> (PathBuf, String) {
        let path = self.path(&format!("{name}.pem"));
        let out =
            ok(&self.synod(1, &["operator", "keygen", "--out", path.to_str().expect("utf-8 path"), "-o", "json"]));
        let v: Value = serde_json::from_str(&out).expect("keygen JSON");
        (path, v["public_key"].as_str().expect("a public key").to_string())
    }

    /// Adds an operator per `(name, roles)` (roles comma-separated, as `synod operator add
    /// --roles` takes them), each with a key file made by [`Cluster::keygen`], through node 1;
    /// returns the key files by name.
    pub fn add_operators(&self, people: &[(&'static str, &str)]) -> BTreeMap<&'static str, PathBuf> {
        let mut keys = BTreeMap::new();
        for &(name, roles) in people {
            let (path, public) = self.keygen(name);
            ok(&self.synod(1, &["operator", "add", name, "--key", &public, "--roles", roles]));
            keys.insert(name, path);
        }
        keys
    }

    /// `synod status -o json` at node `id`, or None when it does not answer.
    pub fn status(&self, id: u64) -> Option<Value> {
        let out = self.synod(id, &["status", "-o", "json"]);
        out.status.success().then(|| serde_json::from_slice(&out.stdout).expect("status JSON"))
    }

    /// Waits until every running node agrees on one leader; returns it.
    pub fn wait_leader(&self) -> u64 {
        wait_for("a leader that every running node knows", Duration::from_secs(60), || {
            let leaders: Vec<Option<u64>> = self
                .nodes
                .values()
                .filter(|n| n.is_running())
                .map(|n| self.status(n.id).and_then(|s| s["leader_id"].as_u64()))
                .collect();
            let first = leaders.first().copied().flatten()?;
            let leader_running = self.nodes.get(&first).is_some_and(NodeProc::is_running);
            (leader_running && leaders.iter().all(|l| *l == Some(first))).then_some(first)
        })
    }

    /// Writes key=value through node `id`; Err(stderr) when the CLI fails.
    pub fn put(&self, id: u64, key: &str, value: &str) -> Result<(), String> {
        let out = self.synod(id, &["kv", "put", key, value]);
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Signs `message` with key `key` through node `via` (`synod sign`); the
    /// request as JSON, or the CLI's error text.
    pub fn sign(&self, via: u64, key: &str, message: &[u8], request_id: &str) -> Result<Value, String> {
        let file = self.path(&format!("msg-{request_id}"));
        std::fs::write(&file, message).unwrap();
        let out =
            self.synod(via, &["sign", key, "--in", file.to_str().unwrap(), "--request-id", request_id, "-o", "json"]);
        if out.status.success() {
            Ok(serde_json::from_slice(&out.stdout).expect("request JSON"))
        } else {
            Err(error_text(&out))
        }
    }

    /// Reads key at node `id` from its applied state.
    pub fn get(&self, id: u64, key: &str) -> Option<String> {
        let out = self.synod(id, &["kv", "get", key, "-o", "json"]);
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v["value"].as_str().map(str::to_string)
    }

    /// Waits until node `id` holds `key` = `value`.
    pub fn wait_value(&self, id: u64, key: &str, value: &str) {
        wait_for(&format!("node {id} to hold {key}={value}"), Duration::from_secs(60), || {
            (self.get(id, key).as_deref() == Some(value)).then_some(())
        });
    }

    /// The ids of the voters as node `id` sees them.
    pub fn voters(&self, id: u64) -> Vec<u64> {
        let status = self.status(id).expect("status");
        status["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["voter"].as_bool() == Some(true))
            .map(|m| m["node_id"].as_u64().unwrap())
            .collect()
    }

    /// Stops every node (SIGKILL) and dumps the logs of a failing test.
    fn teardown(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
        if std::thread::panicking() {
            for node in self.nodes.values() {
                let log = node.log_text();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("---- node {} log (last 40 lines) ----", node.id);
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Where Debian's softhsm2 package puts its PKCS#11 module.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A SoftHSM2 configuration under `dir` with one token `label`: the
/// configuration file's path and the user PIN.
pub fn softhsm_token(dir: &Path, label: &str) -> (String, String) {
    assert!(
        Path::new(SOFTHSM_MODULE).exists(),
        "SoftHSM2 is required for this test: apt-get install softhsm2 (scripts/test installs it)"
    );
    let conf_dir = dir.join("softhsm");
    let tokens = conf_dir.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = conf_dir.join("softhsm2.conf");
    let text = format!("directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n", tokens.display());
    std::fs::write(&conf, text).unwrap();
    let out = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", label, "--so-pin", "12345678", "--pin", "4321"])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (conf.display().to_string(), "4321".to_string())
}

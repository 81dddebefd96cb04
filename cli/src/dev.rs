//! `synod dev`: a local cluster on 127.0.0.1 for trying Synod out.
//!
//! It makes a CA, node and client certificates, an admin operator key and one
//! config per node in the data directory, starts every node as its own OS
//! process, initialises the cluster, writes `env` (source it to point the CLI
//! at the cluster) and `cluster.json` (ids, pids, addresses), and on SIGINT or
//! SIGTERM stops the nodes cleanly. Run again with the same `--data-dir` and it
//! restarts the same cluster.
//!
//! With `-o json` its stdout is one JSON line once the cluster is up (what
//! `cluster.json` holds and the client settings), for a script that starts a
//! cluster and reads where it is; its progress goes to stderr as JSON lines.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use synod_proto::api::{Health, WriteResponse};
use synod_proto::authz::{Policy, Role};
use synod_proto::{NodeAddr, NodeId, OperatorKey};
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, SignalKind};

use super::client::{self, ApiClient};
use super::display::note;
use super::local::{exited_for_taken_port, free_addrs, log_tail, move_listen, PORT_MOVES_MAX};
use super::operator::{keygen, load_operator_key};
use super::{ClientArgs, DevArgs, DevHsm, Output, OutputArgs};
use synod_node::config::{ConsoleConfig, KekConfig, LogFormat, NodeConfig, RaftTuning, TlsFiles};
use synod_node::pki::{self, Subject};

/// How long to wait for the nodes to come up and elect a leader.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long nodes get to stop after SIGTERM before they are killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);
/// The shortest key destruction waiting period of a `synod dev` cluster:
/// a minute, so destruction can be tried out (production clusters keep 7 days).
const DEV_KEY_DESTROY_WAIT_MIN_MS: u64 = 60_000;

/// The PKCS#11 module of Debian's softhsm2 package.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// `cluster.json`: what is running where.
#[derive(Debug, Serialize, Deserialize)]
pub struct ClusterFile {
    pub cluster_id: String,
    pub data_dir: PathBuf,
    /// `none` (KEK files) or `softhsm` (one SoftHSM2 token per node).
    #[serde(default)]
    pub hsm: String,
    pub nodes: Vec<DevNode>,
}

/// One node of the dev cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevNode {
    pub id: NodeId,
    pub pid: Option<u32>,
    pub raft_addr: String,
    pub api_addr: String,
    pub config: PathBuf,
    pub log: PathBuf,
    /// The approver console's address (HTTPS, opened as `https://localhost:<port>/console`);
    /// absent in clusters made before the console existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_addr: Option<String>,
}

/// Runs the dev cluster in the foreground.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    synod_node::server::init_logging(LogFormat::Text, "warn");
    let output = args.output.output;
    let (data_dir, _temp) = match args.data_dir {
        Some(dir) => (absolute(&dir)?, None),
        None => {
            let temp = tempfile::Builder::new().prefix("synod-dev-").tempdir()?;
            (temp.path().to_path_buf(), Some(temp))
        }
    };
    std::fs::create_dir_all(&data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    let mut cluster = match std::fs::read(data_dir.join("cluster.json")) {
        Ok(bytes) => {
            let cluster: ClusterFile = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a dev cluster file", data_dir.join("cluster.json").display()))?;
            say(output, format_args!("Restarting the dev cluster in {}", data_dir.display()));
            cluster
        }
        Err(_) => {
            say(output, format_args!("Creating a {}-node dev cluster in {}", args.nodes, data_dir.display()));
            create(&data_dir, args.nodes, args.hsm).await?
        }
    };
    let fresh = !data_dir.join("cluster.json").exists();
    let softhsm_conf = (cluster.hsm == "softhsm").then(|| data_dir.join("softhsm/softhsm2.conf"));

    let mut children = BTreeMap::new();
    let result = async {
        let initialized = start_nodes(&data_dir, &mut cluster, &mut children, softhsm_conf.as_deref(), fresh).await?;
        // Node 1 may have moved to other ports: the client settings follow it.
        let client_args = client_args(&data_dir, &cluster);
        bring_up(&data_dir, &mut cluster, &client_args, initialized, output).await
    }
    .await;
    if let Err(e) = result {
        note(format_args!("The dev cluster did not come up: {e:#}"));
        print_logs_hint(&cluster);
        stop_all(&mut children).await;
        return Err(e);
    }
    wait_for_signal(&cluster, &mut children, output).await?;
    stop_all(&mut children).await;
    say(output, "All nodes stopped.");
    Ok(())
}

/// A line for the person watching: on stdout in a table, a JSON note on
/// stderr under `-o json` (stdout then holds only the cluster's description).
fn say(output: Output, text: impl std::fmt::Display) {
    match output {
        Output::Table => println!("{text}"),
        Output::Json => note(text),
    }
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    Ok(if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir()?.join(path) })
}

/// Makes node `id`'s KEK: a 0600 file, or a SoftHSM2 token with a
/// non-extractable key (all tokens share one SoftHSM2 configuration, since the
/// library reads it once per process).
async fn create_kek(data_dir: &Path, node_dir: &Path, id: NodeId, hsm: DevHsm) -> anyhow::Result<KekConfig> {
    match hsm {
        DevHsm::None => {
            let path = node_dir.join("kek.bin");
            synod_node::kek::soft::SoftKek::generate_file(&path)?;
            Ok(KekConfig::File { path })
        }
        DevHsm::Softhsm => {
            if !Path::new(SOFTHSM_MODULE).exists() {
                bail!("--hsm softhsm needs SoftHSM2 ({SOFTHSM_MODULE}); install it with: apt-get install softhsm2");
            }
            let hsm_dir = data_dir.join("softhsm");
            let label = format!("synod-node-{id}");
            let mut pin_bytes = [0u8; 12];
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut pin_bytes);
            let pin = hex::encode(pin_bytes);
            let so_pin = hex::encode(&pin_bytes[..6]);
            let conf = synod_node::kek::pkcs11::init_softhsm_token(&hsm_dir, &label, &so_pin, &pin)?;
            let pin_file = node_dir.join("pkcs11.pin");
            synod_node::files::write_new(&pin_file, pin.as_bytes(), synod_node::files::PRIVATE_MODE)
                .with_context(|| format!("cannot write the PIN file {}", pin_file.display()))?;
            let status = Command::new(std::env::current_exe()?)
                .args(["kek", "pkcs11-keygen", "--module", SOFTHSM_MODULE, "--token-label", &label, "--pin-file"])
                .arg(&pin_file)
                .env("SOFTHSM2_CONF", &conf)
                .stdout(Stdio::null())
                .status()
                .await?;
            if !status.success() {
                bail!("could not create the KEK on SoftHSM2 token {label}");
            }
            Ok(KekConfig::Pkcs11 {
                module: SOFTHSM_MODULE.into(),
                token_label: label,
                key_label: "synod-kek".into(),
                pin_env: "SYNOD_PKCS11_PIN".into(),
                pin_file: Some(pin_file),
            })
        }
    }
}

/// Generates the CA, certificates, keys and configs of a new dev cluster.
pub async fn create(data_dir: &Path, nodes: u64, hsm: DevHsm) -> anyhow::Result<ClusterFile> {
    let ca_dir = data_dir.join("ca");
    pki::ca_init(&ca_dir, "synod dev CA", None)?;
    let certs = data_dir.join("certs");
    pki::issue(&ca_dir, &Subject::Client { name: "dev".into() }, &certs, pki::CLIENT_VALIDITY_DAYS_DEFAULT, None)?;
    let admin = OperatorKey::of(&keygen(&data_dir.join("admin.pem"))?);
    let mut id_bytes = [0u8; 8];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id_bytes);
    let cluster_id = format!("synod-dev-{}", hex::encode(id_bytes));
    let addrs = free_addrs(nodes)?;
    // Each node's console listens on a TCP port of its own (the UDP half of the pair is unused).
    let console_addrs = free_addrs(nodes)?;
    let mut list = Vec::new();
    for ((id, (raft, api)), (_, console_addr)) in (1..=nodes).zip(addrs).zip(console_addrs) {
        let node_subject = Subject::Node { id, sans: vec!["127.0.0.1".into()] };
        let issued = pki::issue(&ca_dir, &node_subject, &certs, pki::NODE_VALIDITY_DAYS_DEFAULT, None)?;
        // A P-256 certificate for localhost from the web CA (ca/web-ca.pem, made on first use):
        // browsers verify neither Ed25519 nor certificates for 127.0.0.1 with passkeys.
        let console = pki::issue_console(
            &ca_dir,
            &format!("node-{id}"),
            &[CONSOLE_HOST.to_string()],
            &certs,
            pki::CONSOLE_VALIDITY_DAYS_DEFAULT,
            None,
        )?;
        let node_dir = data_dir.join(format!("node-{id}"));
        std::fs::create_dir_all(&node_dir)?;
        let config = NodeConfig {
            node_id: id,
            data_dir: node_dir.join("data"),
            raft_listen: raft,
            api_listen: api,
            metrics_listen: None,
            tls: TlsFiles { ca_cert: ca_dir.join("ca.crt"), cert: issued.cert_path, key: issued.key_path },
            kek: create_kek(data_dir, &node_dir, id, hsm).await?,
            raft: RaftTuning::default(),
            cluster_id: Some(cluster_id.clone()),
            genesis_admins: vec![admin],
            log_format: LogFormat::Text,
            console: Some(ConsoleConfig {
                listen: console_addr,
                certificate: console.cert_path,
                key: console.key_path,
            }),
        };
        let config_path = node_dir.join("node.toml");
        std::fs::write(&config_path, config.to_toml())?;
        list.push(DevNode {
            id,
            pid: None,
            raft_addr: raft.to_string(),
            api_addr: api.to_string(),
            config: config_path,
            log: node_dir.join("node.log"),
            console_addr: Some(console_addr.to_string()),
        });
    }
    let hsm = match hsm {
        DevHsm::None => "none",
        DevHsm::Softhsm => "softhsm",
    };
    Ok(ClusterFile { cluster_id, data_dir: data_dir.to_path_buf(), hsm: hsm.into(), nodes: list })
}

pub fn client_args(data_dir: &Path, cluster: &ClusterFile) -> ClientArgs {
    ClientArgs {
        addr: format!("https://{}", cluster.nodes[0].api_addr),
        addrs: Vec::new(),
        cacert: Some(data_dir.join("ca/ca.crt")),
        client_cert: Some(data_dir.join("certs/client-dev.crt")),
        client_key: Some(data_dir.join("certs/client-dev.key")),
        operator_key: Some(data_dir.join("admin.pem")),
        ttl_secs: 300,
        output: OutputArgs { output: Output::Table },
    }
}

pub fn spawn_node(node: &DevNode, softhsm_conf: Option<&Path>) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log)?;
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    if let Some(conf) = softhsm_conf {
        cmd.env("SOFTHSM2_CONF", conf);
    }
    cmd.args(["node", "start", "--config"])
        .arg(&node.config)
        // Tells the node it runs under `synod dev`, where a KEK file is expected.
        .env("SYNOD_DEV", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start node {}", node.id))
}

/// The name browsers open a dev node's console by: the passkeys' RP ID (never an IP address).
const CONSOLE_HOST: &str = "localhost";

/// The console's origin for a node whose console listens on `addr`.
fn console_origin(addr: &str) -> Option<String> {
    let port = addr.rsplit_once(':')?.1;
    Some(format!("https://{CONSOLE_HOST}:{port}"))
}

/// Sets the cluster's passkey relying party: RP ID localhost, each node's console an origin.
async fn console_webauthn(cluster: &ClusterFile, client_args: &ClientArgs) -> anyhow::Result<()> {
    let origins: Vec<String> =
        cluster.nodes.iter().filter_map(|n| n.console_addr.as_deref().and_then(console_origin)).collect();
    if origins.is_empty() {
        return Ok(());
    }
    let config = synod_proto::webauthn::WebAuthnConfig {
        rp_id: CONSOLE_HOST.into(),
        rp_name: "Synod dev cluster".into(),
        origins,
    };
    expect_applied(client::submit(client_args, synod_proto::Command::SetWebAuthn { config }).await?)
}

/// The signing key a new dev cluster creates for the tour (no approvals needed).
const DEMO_KEY: &str = "demo";
/// The key whose policy needs two approvals, from the demo approvers.
const TREASURY_KEY: &str = "treasury";
/// Demo approvers: an operator key file each in the data directory.
const DEMO_APPROVERS: [&str; 2] = ["alice", "bob"];

/// Creates the tour's keys and operators: `demo` signs on request; `treasury`
/// needs approvals from alice and bob, whose keys are written next to admin.pem.
async fn demo_keys(data_dir: &Path, client_args: &ClientArgs, output: Output) -> anyhow::Result<()> {
    let key = super::keys::create(client_args, DEMO_KEY, None, Vec::new(), Some(Policy::default())).await?;
    say(
        output,
        format_args!(
            "Created signing key {DEMO_KEY} ({} of {}) by distributed key generation; public key {}.",
            key.threshold,
            key.participants.len(),
            key.public_key.as_deref().unwrap_or("-")
        ),
    );
    for name in DEMO_APPROVERS {
        let signing = keygen(&data_dir.join(format!("{name}.pem")))?;
        let command = synod_proto::Command::AddOperator {
            name: name.to_string(),
            key: Some(OperatorKey::of(&signing)),
            ssh_key: None,
            roles: vec![Role::Approver],
            pending_max: None,
        };
        expect_applied(client::submit(client_args, command).await?)?;
    }
    let policy = Policy {
        approvers: DEMO_APPROVERS.iter().map(|n| n.to_string()).collect(),
        approvals_required: 2,
        ..Policy::default()
    };
    super::keys::create(client_args, TREASURY_KEY, None, Vec::new(), Some(policy)).await?;
    say(
        output,
        format_args!(
            "Created key {TREASURY_KEY}; its policy needs 2 approvals from {} (keys in {}).",
            DEMO_APPROVERS.join(" and "),
            data_dir.display()
        ),
    );
    Ok(())
}

fn expect_applied(response: synod_proto::api::WriteResponse) -> anyhow::Result<()> {
    match response.outcome {
        synod_proto::Outcome::Rejected { reason, .. } => {
            anyhow::bail!("the dev cluster refused a set-up step: {reason}")
        }
        _ => Ok(()),
    }
}

/// Starts every node of `cluster` and waits until each answers its health
/// endpoint; returns whether the cluster is initialised. A node whose process
/// exits first ends the wait at once, with the end of its log. In a cluster
/// not initialised yet (`fresh`: no member address is committed), a node that
/// exited because another program bound its port after [`free_addrs`] chose
/// it gets new ports and starts again, at most [`PORT_MOVES_MAX`] times.
pub async fn start_nodes(
    data_dir: &Path,
    cluster: &mut ClusterFile,
    children: &mut BTreeMap<NodeId, Child>,
    softhsm_conf: Option<&Path>,
    fresh: bool,
) -> anyhow::Result<bool> {
    for node in &mut cluster.nodes {
        let child = spawn_node(node, softhsm_conf)?;
        node.pid = child.id();
        children.insert(node.id, child);
    }
    let mut args = client_args(data_dir, cluster);
    let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
    let mut initialized = false;
    for node in &mut cluster.nodes {
        let mut moves = 0;
        args.addr = format!("https://{}", node.api_addr);
        let mut health_client = ApiClient::new(&args)?;
        loop {
            let err = match health_client.get::<Health>("/v1/sys/health").await {
                Ok((_, health)) => {
                    initialized |= health.initialized;
                    break;
                }
                Err(e) => e,
            };
            let exited = children.get_mut(&node.id).and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                if !(fresh && moves < PORT_MOVES_MAX && exited_for_taken_port(&node.log)) {
                    let tail = log_tail(&node.log, 12);
                    bail!("node {} exited ({status}) before answering; the end of its log:\n{tail}", node.id);
                }
                moves += 1;
                let (raft, api) = free_addrs(1)?[0];
                move_listen(&node.config, raft, api)?;
                note(format_args!("node {}: a port was taken meanwhile; moving it to raft {raft}, api {api}", node.id));
                (node.raft_addr, node.api_addr) = (raft.to_string(), api.to_string());
                args.addr = format!("https://{api}");
                health_client = ApiClient::new(&args)?;
                let child = spawn_node(node, softhsm_conf)?;
                node.pid = child.id();
                children.insert(node.id, child);
                continue;
            }
            if tokio::time::Instant::now() > deadline {
                bail!("node {} did not answer within {STARTUP_TIMEOUT:?}: {err}", node.id);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(initialized)
}

/// Commits genesis: every node of `cluster` a member, the dev admin key (`admin.pem`) the admin.
pub async fn init_cluster(
    data_dir: &Path,
    cluster: &ClusterFile,
    client_args: &ClientArgs,
) -> anyhow::Result<WriteResponse> {
    let members = cluster
        .nodes
        .iter()
        .map(|n| (n.id, NodeAddr { raft_addr: n.raft_addr.clone(), api_addr: n.api_addr.clone() }))
        .collect();
    let admin = OperatorKey::of(&load_operator_key(&data_dir.join("admin.pem"))?);
    client::init(client_args, &cluster.cluster_id, vec![admin], members, Some(DEV_KEY_DESTROY_WAIT_MIN_MS)).await
}

/// Initialises the cluster if needed, writes env and cluster.json.
async fn bring_up(
    data_dir: &Path,
    cluster: &mut ClusterFile,
    client_args: &ClientArgs,
    initialized: bool,
    output: Output,
) -> anyhow::Result<()> {
    if !initialized {
        let response = init_cluster(data_dir, cluster, client_args).await?;
        say(output, format_args!("Initialised cluster {} (genesis at index {}).", cluster.cluster_id, response.index));
        console_webauthn(cluster, client_args).await?;
        if cluster.nodes.len() >= 2 {
            demo_keys(data_dir, client_args, output).await?;
        }
    }
    std::fs::write(data_dir.join("cluster.json"), serde_json::to_string_pretty(&cluster)?)?;
    let env = format!(
        "export SYNOD_ADDR={}\nexport SYNOD_CACERT={}\nexport SYNOD_CLIENT_CERT={}\nexport SYNOD_CLIENT_KEY={}\nexport SYNOD_OPERATOR_KEY={}\n",
        client_args.addr,
        data_dir.join("ca/ca.crt").display(),
        data_dir.join("certs/client-dev.crt").display(),
        data_dir.join("certs/client-dev.key").display(),
        data_dir.join("admin.pem").display(),
    );
    std::fs::write(data_dir.join("env"), &env)?;
    if output == Output::Json {
        let mut up = serde_json::to_value(&*cluster)?;
        up["env_file"] = serde_json::json!(data_dir.join("env"));
        up["env"] = serde_json::json!({
            "SYNOD_ADDR": client_args.addr,
            "SYNOD_CACERT": data_dir.join("ca/ca.crt"),
            "SYNOD_CLIENT_CERT": data_dir.join("certs/client-dev.crt"),
            "SYNOD_CLIENT_KEY": data_dir.join("certs/client-dev.key"),
            "SYNOD_OPERATOR_KEY": data_dir.join("admin.pem"),
        });
        println!("{up}");
        note("The cluster is up; Ctrl-C (SIGINT) or SIGTERM stops it.");
        return Ok(());
    }
    println!();
    println!("The cluster is up. Point the CLI at it:");
    println!();
    print!("{env}");
    println!();
    println!("or: source {}", data_dir.join("env").display());
    println!();
    for node in &cluster.nodes {
        println!(
            "  node {}  pid {:<7} raft {:<21} api {:<21} log {}",
            node.id,
            node.pid.map_or("-".into(), |p| p.to_string()),
            node.raft_addr,
            node.api_addr,
            node.log.display()
        );
    }
    let consoles: Vec<String> =
        cluster.nodes.iter().filter_map(|n| n.console_addr.as_deref().and_then(console_origin)).collect();
    if !consoles.is_empty() {
        println!();
        println!("Approver console (passkeys): {}/console", consoles[0]);
        if consoles.len() > 1 {
            let others: Vec<String> = consoles[1..].iter().map(|c| format!("{c}/console")).collect();
            println!("  the other nodes': {}", others.join(", "));
        }
        println!(
            "  browsers must trust {} (the web CA) first",
            data_dir.join("ca").join(pki::WEB_CA_CERT_FILE).display()
        );
    }
    println!();
    println!("Try: synod status; echo hello > m.txt; synod sign {DEMO_KEY} --in m.txt --out m.sig;");
    println!("     synod verify --key {DEMO_KEY} --in m.txt --signature m.sig; kill -9 a node's pid and sign again.");
    println!("     synod request sign {TREASURY_KEY} --in m.txt --request-id t1   # then, as each approver:");
    println!("     SYNOD_OPERATOR_KEY={}/alice.pem synod approve t1; synod request wait t1", data_dir.display());
    println!("Press Ctrl-C to stop the cluster.");
    Ok(())
}

fn print_logs_hint(cluster: &ClusterFile) {
    for node in &cluster.nodes {
        note(format_args!("  node {} log: {}", node.id, node.log.display()));
    }
}

async fn wait_for_signal(
    cluster: &ClusterFile,
    children: &mut BTreeMap<NodeId, Child>,
    output: Output,
) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = tick.tick() => {
                let exited: Vec<(NodeId, String)> = children
                    .iter_mut()
                    .filter_map(|(id, child)| child.try_wait().ok().flatten().map(|s| (*id, s.to_string())))
                    .collect();
                for (id, how) in exited {
                    children.remove(&id);
                    let node = cluster.nodes.iter().find(|n| n.id == id).expect("known node");
                    say(
                        output,
                        format_args!(
                            "node {id} exited ({how}); the others carry on. Restart it with: {} node start --config {}",
                            std::env::current_exe()?.display(),
                            node.config.display()
                        ),
                    );
                }
            }
        }
    }
}

pub async fn stop_all(children: &mut BTreeMap<NodeId, Child>) {
    for child in children.values() {
        if let Some(pid) = child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
    for (id, child) in children.iter_mut() {
        match tokio::time::timeout(SHUTDOWN_GRACE, child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                note(format_args!("node {id} did not stop within {SHUTDOWN_GRACE:?}; killing it"));
                let _ = child.kill().await;
            }
        }
    }
}

//! `synod bench`: how fast the cluster signs, next to what this machine can do.
//!
//! For each key configuration (t-of-n) it starts a local cluster of n real node
//! processes on 127.0.0.1 (with `synod dev`'s CA, certificates and configs, in a
//! temporary directory), creates a key by DKG, and drives `POST /v1/sign` at each
//! concurrency level for a fixed number of requests, spread round-robin over the
//! nodes' API addresses (followers forward to the leader). Then it kills one
//! non-leader node with SIGKILL and measures again, and stops the cluster.
//! `--target-existing` measures the cluster the usual `SYNOD_*` client settings
//! point at instead (and kills nothing).
//!
//! In the same run, before any cluster starts, it measures in-process baselines:
//! the FROST ceiling (commit and sign for t signers, then aggregate, no network,
//! on one thread per core), one FROST signature on one thread, and plain
//! single-key ed25519-dalek signing on one thread. Each cluster level is reported
//! with p50/p99 latency, throughput, and its ratios to those baselines.
//!
//! Every request has its own request id and random message, and each worker
//! keeps one HTTPS client (one TLS connection per node) for its whole level;
//! those connections are opened before the timed section. Command envelopes are
//! signed with the operator key before timing unless `--sign-in-loop` is given.
//! A sample of the returned signatures is verified against the key's public key.
//!
//! Every node this command starts is stopped on success, error, SIGINT, SIGTERM
//! and SIGHUP (SIGKILL if it does not stop in time).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use ed25519_dalek::{Signer as _, SigningKey};
use frost_ed25519 as frost;
use serde::Serialize;
use synod_proto::api::{ErrorBody, KeyInfo, KeyStatus, RequestInfo, RequestStatus, Status};
use synod_proto::{keyfmt, Command, Envelope, NodeId, SignedCommand};
use tokio::process::Child;
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinSet;

use super::client::{cluster_id, ApiClient};
use super::dev::{self, ClusterFile};
use super::operator::load_operator_key;
use super::{BenchArgs, ClientArgs, DevHsm, Output};
use synod_node::config::LogFormat;
use synod_node::pki;

/// How long the API holds one sign request open for its signature.
const SIGN_WAIT_MS: u64 = 30_000;
/// The shortest validity of a pre-signed command: levels can take minutes.
const PRESIGNED_TTL_SECS_MIN: u64 = 3600;
/// Largest local cluster (`synod dev`'s limit).
const LOCAL_NODES_MAX: u16 = 9;
/// Signatures verified per level (spread over the level).
const VERIFY_SAMPLE: usize = 16;
/// Untimed signatures per node before a cluster's first level (warms the
/// signers' unsealed key packages and the nodes' QUIC connections).
const WARMUP_PER_NODE: usize = 2;

/// Set on SIGINT/SIGTERM/SIGHUP: in-process loops and workers stop early.
static STOP: AtomicBool = AtomicBool::new(false);

/// A key configuration: `threshold`-of-`nodes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyConfig {
    pub threshold: u16,
    pub nodes: u16,
}

impl KeyConfig {
    /// Parses `T-of-N` (e.g. `3-of-5`).
    pub fn parse(text: &str) -> Result<KeyConfig, String> {
        let err = || format!("{text:?} is not T-of-N (e.g. 3-of-5)");
        let (t, n) = text.trim().split_once("-of-").ok_or_else(err)?;
        let threshold: u16 = t.parse().map_err(|_| err())?;
        let nodes: u16 = n.parse().map_err(|_| err())?;
        if threshold < 2 || threshold > nodes {
            return Err(format!("{text}: FROST needs 2 <= T <= N"));
        }
        if usize::from(nodes) > synod_proto::command::PARTICIPANTS_MAX {
            return Err(format!("{text}: a key has at most {} participants", synod_proto::command::PARTICIPANTS_MAX));
        }
        Ok(KeyConfig { threshold, nodes })
    }
}

impl std::fmt::Display for KeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-of-{}", self.threshold, self.nodes)
    }
}

/// `synod bench`.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    synod_node::server::init_logging(LogFormat::Text, "warn");
    if !args.target_existing {
        if let Some(big) = args.configs.iter().find(|c| c.nodes > LOCAL_NODES_MAX) {
            bail!("{big}: a local cluster has at most {LOCAL_NODES_MAX} nodes");
        }
    }
    if !(args.baseline_secs > 0.0 && args.baseline_secs <= 600.0) {
        bail!("--baseline-secs must be between 0 and 600");
    }
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    // The bench owns every node it starts (in `LocalCluster`s inside this
    // future); dropping the future kills them.
    let mut work = Box::pin(bench(args));
    let interrupted = tokio::select! {
        result = &mut work => return result,
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
        _ = hup.recv() => "SIGHUP",
    };
    STOP.store(true, Ordering::SeqCst);
    eprintln!("\n{interrupted}: stopping every node this run started");
    drop(work);
    bail!("interrupted by {interrupted}")
}

/// The machine the numbers come from.
#[derive(Debug, Clone, Serialize)]
struct Machine {
    cores: usize,
    cpu: String,
    /// /proc/loadavg's 1, 5 and 15 minute load averages when the run started.
    loadavg_at_start: String,
}

impl Machine {
    fn detect() -> Machine {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let loadavg_at_start = std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default();
        Machine { cores, cpu, loadavg_at_start }
    }
}

/// In-process FROST numbers for one t-of-n.
#[derive(Debug, Clone, Serialize)]
struct FrostBaseline {
    config: String,
    nodes: u16,
    threshold: u16,
    /// All rounds for t signers plus aggregation, one thread per core.
    frost_ceiling_per_s: f64,
    frost_ceiling_threads: usize,
    /// Median of one signature's rounds on one thread.
    frost_inprocess_ms: f64,
}

/// One measured level.
#[derive(Debug, Clone, Serialize)]
struct Row {
    config: String,
    nodes: u16,
    threshold: u16,
    /// Nodes running during the level (nodes - 1 with a signer killed).
    nodes_running: usize,
    signer_killed: bool,
    /// The node killed with SIGKILL before this level, if any.
    killed_node: Option<NodeId>,
    concurrency: usize,
    requests: usize,
    /// Requests answered with a signature.
    ok: usize,
    errors: usize,
    /// The first error, if any.
    first_error: Option<String>,
    wall_s: f64,
    throughput_per_s: f64,
    p50_ms: Option<f64>,
    p90_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
    mean_ms: Option<f64>,
    throughput_ratio_to_ceiling: f64,
    p50_ratio_to_inprocess: Option<f64>,
    /// Median time between the request's log entry and its result's log entry
    /// (both stamped by the leader when it proposed them; ms resolution): the
    /// request's commit, the coordinator picking it up, both FROST rounds.
    entry_request_to_result_p50_ms: Option<u64>,
    entry_request_to_result_min_ms: Option<u64>,
    entry_request_to_result_p90_ms: Option<u64>,
    /// CPU time of all node processes during the level, per signature (local clusters).
    node_cpu_ms_per_signature: Option<f64>,
    /// CPU time of this process (the clients) during the level, per signature.
    client_cpu_ms_per_signature: f64,
    /// Share of the machine's cores that nodes and clients kept busy during the level.
    cpu_busy: Option<f64>,
    /// Share of the machine's cores busy with anything (/proc/stat) during the level:
    /// well above `cpu_busy` means other work on the machine competed with the bench.
    machine_cpu_busy: Option<f64>,
    signatures_verified: usize,
    frost_ceiling_per_s: f64,
    frost_inprocess_ms: f64,
    ed25519_dalek_per_s: f64,
    envelopes_precomputed: bool,
}

#[derive(Debug, Serialize)]
struct Baselines {
    ed25519_dalek_per_s: f64,
    frost: Vec<FrostBaseline>,
}

#[derive(Debug, Serialize)]
struct Report {
    machine: Machine,
    target: &'static str,
    requests_per_level: usize,
    concurrency: Vec<usize>,
    message_bytes: usize,
    /// True: command envelopes were signed with the operator key (and serialised)
    /// before timing, so latencies are the cluster's and the HTTPS round trip's.
    envelopes_precomputed: bool,
    baselines: Baselines,
    results: Vec<Row>,
    /// Why the run stopped early (the results are those measured before).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let machine = Machine::detect();
    let configs = resolve_configs(&args).await?;
    let secs = args.baseline_secs;
    let message_bytes = args.message_bytes as usize;

    eprintln!("in-process baselines ({} cores, {}), {secs} s each...", machine.cores, machine.cpu);
    let dalek = tokio::task::spawn_blocking(move || ed25519_dalek_per_s(secs, message_bytes)).await?;
    eprintln!("  ed25519-dalek sign, 1 thread: {dalek:.0}/s");
    let mut frost_baselines = BTreeMap::new();
    for config in &configs {
        if frost_baselines.contains_key(config) {
            continue;
        }
        let cfg = *config;
        let baseline = tokio::task::spawn_blocking(move || frost_baseline(cfg, secs, message_bytes)).await??;
        eprintln!(
            "  FROST {cfg} all rounds: ceiling {:.0}/s on {} threads, one signature {:.3} ms",
            baseline.frost_ceiling_per_s, baseline.frost_ceiling_threads, baseline.frost_inprocess_ms
        );
        frost_baselines.insert(cfg, baseline);
    }

    let mut rows = Vec::new();
    let mut failure = None;
    for config in &configs {
        let baseline = &frost_baselines[config];
        let result = if args.target_existing {
            bench_cluster(&args, &args.client, *config, None, baseline, dalek, &mut rows).await
        } else {
            eprintln!("{config}: starting {} nodes...", config.nodes);
            match LocalCluster::start(config.nodes, args.keep_dir).await {
                Ok(mut local) => {
                    let client_args = local.client_args.clone();
                    let result =
                        bench_cluster(&args, &client_args, *config, Some(&mut local), baseline, dalek, &mut rows).await;
                    if result.is_err() {
                        local.print_logs_hint();
                    }
                    eprintln!("{config}: stopping {} nodes...", local.children.len());
                    local.stop().await;
                    result
                }
                Err(e) => Err(e),
            }
        };
        if let Err(e) = result {
            // Report what was measured so far, then fail.
            failure = Some(e.context(format!("benchmarking {config}")));
            break;
        }
    }

    let report = Report {
        machine,
        target: if args.target_existing { "existing" } else { "local" },
        requests_per_level: args.requests as usize,
        concurrency: args.concurrency.iter().map(|c| *c as usize).collect(),
        message_bytes,
        envelopes_precomputed: !args.sign_in_loop,
        baselines: Baselines { ed25519_dalek_per_s: round(dalek, 1), frost: frost_baselines.into_values().collect() },
        results: rows,
        error: failure.as_ref().map(|e| format!("{e:#}")),
    };
    match args.client.output.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Table => print_table(&report),
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let failed: usize = report.results.iter().map(|r| r.errors).sum();
    if failed > 0 {
        eprintln!("warning: {failed} signing requests failed (see errors and first_error)");
    }
    if let Some(r) = report.results.iter().find(|r| r.ok == 0) {
        bail!(
            "{} c={}: no request was signed; first error: {}",
            r.config,
            r.concurrency,
            r.first_error.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

/// The configurations to measure: `--configs`, or the one of `--key`.
async fn resolve_configs(args: &BenchArgs) -> anyhow::Result<Vec<KeyConfig>> {
    if let (true, Some(name)) = (args.target_existing, &args.key) {
        let key = get_key(&ApiClient::new(&args.client)?, name).await?;
        let config = KeyConfig::parse(&format!("{}-of-{}", key.threshold, key.participants.len()))
            .map_err(|e| anyhow!("key {name}: {e}"))?;
        return Ok(vec![config]);
    }
    if args.configs.is_empty() {
        bail!("--configs names no configuration");
    }
    Ok(args.configs.clone())
}

async fn get_key(api: &ApiClient, name: &str) -> anyhow::Result<KeyInfo> {
    let (_, key): (u16, KeyInfo) = api.get(&format!("/v1/keys/{name}")).await?;
    Ok(key)
}

async fn get_status(api: &ApiClient) -> anyhow::Result<Status> {
    let (_, status): (u16, Status) = api.get("/v1/sys/status").await?;
    Ok(status)
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut buf);
    hex::encode(buf)
}

/// Creates (or finds) the key, then measures every level, and with a local
/// cluster kills one non-leader node and measures every level again.
#[allow(clippy::too_many_arguments)]
async fn bench_cluster(
    args: &BenchArgs,
    client_args: &ClientArgs,
    config: KeyConfig,
    mut local: Option<&mut LocalCluster>,
    baseline: &FrostBaseline,
    dalek: f64,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let api = ApiClient::new(client_args)?;
    let status = get_status(&api).await?;
    let key = match &args.key {
        Some(name) => get_key(&api, name).await?,
        None => {
            let mut members: Vec<NodeId> = status.members.iter().map(|m| m.node_id).collect();
            members.sort_unstable();
            if members.len() < usize::from(config.nodes) {
                eprintln!(
                    "{config}: skipped: the cluster has {} members, {config} needs {}",
                    members.len(),
                    config.nodes
                );
                return Ok(());
            }
            members.truncate(usize::from(config.nodes));
            let name = format!("bench-{}of{}-{}", config.threshold, config.nodes, random_hex(4));
            eprintln!("{config}: creating key {name} by DKG...");
            let open = Some(synod_proto::authz::Policy::default());
            super::keys::create(client_args, &name, Some(config.threshold), members, open).await?
        }
    };
    if key.status != KeyStatus::Active {
        bail!("key {} is {}, not active", key.name, key.status);
    }
    let public = keyfmt::parse_public_key(key.public_key.as_deref().unwrap_or_default())
        .map_err(|e| anyhow!("key {}: {e}", key.name))?;
    let status = get_status(&api).await?;
    let cluster = cluster_id(&status)?;
    let operator_path = client_args.operator_key.as_ref().ok_or_else(|| {
        anyhow!("sign requests must be signed; set SYNOD_OPERATOR_KEY (or --operator-key) to an admin's key")
    })?;
    let operator = Arc::new(load_operator_key(operator_path)?);
    let mut endpoints = Vec::new();
    for m in &status.members {
        let socket = tokio::net::lookup_host(&m.addr.api_addr)
            .await
            .with_context(|| format!("cannot resolve node {}'s API address {}", m.node_id, m.addr.api_addr))?
            .next()
            .ok_or_else(|| anyhow!("node {}'s API address {} resolves to nothing", m.node_id, m.addr.api_addr))?;
        endpoints.push((m.node_id, socket));
    }
    let mut target = Target::new(client_args, endpoints)?;
    let plan = Plan {
        cluster_id: cluster,
        key: key.name.clone(),
        operator,
        ttl_secs: client_args.ttl_secs.max(PRESIGNED_TTL_SECS_MIN),
        message_bytes: args.message_bytes as usize,
        presign: !args.sign_in_loop,
        run_id: random_hex(6),
    };
    let context = RowContext { config, baseline: baseline.clone(), dalek, precomputed: plan.presign };

    let mut phases = vec![false];
    if local.is_some() && !args.no_kill {
        phases.push(true);
    } else if args.target_existing && !args.no_kill {
        eprintln!("{config}: not killing a signer of a cluster this run did not start (use a local run)");
    }
    for killed in phases {
        let mut killed_node = None;
        if killed {
            let local = local.as_deref_mut().expect("a local cluster");
            let api = ApiClient::new(client_args)?;
            let status = get_status(&api).await?;
            let leader = status.leader_id.ok_or_else(|| anyhow!("the cluster has no leader"))?;
            let victim = key
                .participants
                .iter()
                .rev()
                .copied()
                .find(|id| *id != leader && local.children.contains_key(id))
                .ok_or_else(|| anyhow!("no non-leader participant to kill"))?;
            eprintln!("{config}: killing node {victim} (kill -9; the leader is node {leader})");
            local.kill(victim).await?;
            target.remove(victim);
            killed_node = Some(victim);
        }
        let phase = if killed { "killed" } else { "all" };
        let label = format!("{config}{}", if killed { " (1 killed)" } else { "" });
        // Warm-up: not measured.
        let warmup = (WARMUP_PER_NODE * target.nodes.len()).max(4);
        let jobs = Arc::new(plan.jobs(&format!("{phase}-w"), warmup)?);
        let pids: Option<Vec<u32>> = local.as_deref().map(LocalCluster::pids);
        let pids = pids.as_deref();
        let outcome = run_level(&target, jobs, target.nodes.len(), &format!("{label} warm-up"), &public, pids).await?;
        if let Some(e) = outcome.errors.first() {
            eprintln!("{label} warm-up: {} of {warmup} failed, e.g. {e}", outcome.errors.len());
        }
        for &concurrency in &args.concurrency {
            let concurrency = concurrency as usize;
            let requests = args.requests as usize;
            let jobs = Arc::new(plan.jobs(&format!("{phase}-c{concurrency}"), requests)?);
            let level_label = format!("{label} c={concurrency}");
            let outcome = run_level(&target, jobs, concurrency, &level_label, &public, pids).await?;
            let row = context.row(killed_node, target.nodes.len(), concurrency, requests, &outcome);
            eprintln!(
                "{level_label}: {}/{requests} in {:.2} s: {:.1}/s, p50 {} ms, p99 {} ms, entries p50 {} ms, {}{}",
                row.ok,
                row.wall_s,
                row.throughput_per_s,
                fmt_opt(row.p50_ms, 1),
                fmt_opt(row.p99_ms, 1),
                row.entry_request_to_result_p50_ms.map_or("-".into(), |v| v.to_string()),
                match (row.cpu_busy, row.machine_cpu_busy) {
                    (Some(ours), Some(all)) => format!("CPU {:.0}% busy (machine {:.0}%)", ours * 100.0, all * 100.0),
                    (None, Some(all)) => format!("machine CPU {:.0}% busy", all * 100.0),
                    _ => "-".into(),
                },
                if row.errors > 0 { format!(", {} errors", row.errors) } else { String::new() }
            );
            rows.push(row);
            if STOP.load(Ordering::SeqCst) {
                bail!("interrupted");
            }
        }
    }
    Ok(())
}

/// Everything a level's requests share.
struct Plan {
    cluster_id: String,
    key: String,
    operator: Arc<SigningKey>,
    ttl_secs: u64,
    message_bytes: usize,
    presign: bool,
    run_id: String,
}

impl Plan {
    /// `count` requests with unique ids and random messages; signed now unless signing is timed.
    fn jobs(&self, phase: &str, count: usize) -> anyhow::Result<Jobs> {
        let prefix = format!("bench-{}-{phase}", self.run_id);
        let mut ids = Vec::with_capacity(count);
        let mut messages = Vec::with_capacity(count);
        for i in 0..count {
            let mut message = vec![0u8; self.message_bytes];
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut message);
            let id = format!("{prefix}-{i}");
            if id.len() > synod_proto::command::NAME_BYTES_MAX {
                bail!("request id {id} is too long");
            }
            ids.push(id);
            messages.push(message);
        }
        let mut jobs = Jobs {
            ids,
            messages,
            bodies: Vec::new(),
            signer: Signer {
                cluster_id: self.cluster_id.clone(),
                key: self.key.clone(),
                operator: self.operator.clone(),
                ttl_secs: self.ttl_secs,
            },
        };
        if self.presign {
            jobs.bodies = (0..count).map(|i| jobs.sign(i)).collect::<anyhow::Result<_>>()?;
        }
        Ok(jobs)
    }
}

/// Signs sign-request commands with the operator key.
struct Signer {
    cluster_id: String,
    key: String,
    operator: Arc<SigningKey>,
    ttl_secs: u64,
}

/// One level's requests.
struct Jobs {
    ids: Vec<String>,
    messages: Vec<Vec<u8>>,
    /// Pre-signed, serialised commands (empty when signing is timed).
    bodies: Vec<Bytes>,
    signer: Signer,
}

impl Jobs {
    fn len(&self) -> usize {
        self.ids.len()
    }

    /// The body of request `i`: pre-signed, or signed now.
    fn body(&self, i: usize) -> anyhow::Result<Bytes> {
        match self.bodies.get(i) {
            Some(body) => Ok(body.clone()),
            None => self.sign(i),
        }
    }

    /// Request `i` as a signed `sign_request` command, serialised.
    fn sign(&self, i: usize) -> anyhow::Result<Bytes> {
        // Built from its JSON form so that fields added to SignRequest with
        // serde defaults (declarations for policies) keep their defaults here.
        let command: Command = serde_json::from_value(serde_json::json!({
            "type": "sign_request",
            "request_id": self.ids[i],
            "key": self.signer.key,
            "message": hex::encode(&self.messages[i]),
            "purpose": "synod bench",
        }))
        .context("building a sign_request command")?;
        let issued = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let envelope = Envelope::new(
            self.signer.cluster_id.clone(),
            command,
            issued,
            self.signer.ttl_secs * 1000,
            &mut rand_core::OsRng,
        );
        let signed = SignedCommand::sign(&envelope, &self.signer.operator);
        Ok(Bytes::from(serde_json::to_vec(&signed)?))
    }
}

/// The nodes requests go to, and how to reach them.
struct Target {
    tls: rustls::ClientConfig,
    /// Each node's id and API socket; requests go round-robin over them.
    nodes: Vec<(NodeId, SocketAddr)>,
}

impl Target {
    fn new(args: &ClientArgs, nodes: Vec<(NodeId, SocketAddr)>) -> anyhow::Result<Target> {
        let cacert = args.cacert.as_ref().ok_or_else(|| anyhow!("set SYNOD_CACERT to the cluster's ca.crt"))?;
        let tls = match (&args.client_cert, &args.client_key) {
            (Some(cert), Some(key)) => pki::TlsMaterial::load(cacert, cert, key)?.https_client_config()?,
            _ => bail!("set SYNOD_CLIENT_CERT and SYNOD_CLIENT_KEY"),
        };
        if nodes.is_empty() {
            bail!("the cluster lists no members");
        }
        Ok(Target { tls, nodes })
    }

    fn remove(&mut self, id: NodeId) {
        self.nodes.retain(|(n, _)| *n != id);
    }

    /// One worker's HTTPS client: the nodes by their certificate names
    /// (`node-<id>.synod`), so it works whatever addresses the certificates name.
    fn client(&self) -> anyhow::Result<reqwest::Client> {
        let mut builder = reqwest::Client::builder()
            .use_preconfigured_tls(self.tls.clone())
            .timeout(Duration::from_millis(SIGN_WAIT_MS + 30_000))
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(crate::client::POOL_IDLE_TIMEOUT);
        for (id, socket) in &self.nodes {
            builder = builder.resolve(&pki::node_server_name(*id), *socket);
        }
        Ok(builder.build()?)
    }

    fn base_urls(&self) -> Vec<String> {
        self.nodes.iter().map(|(id, s)| format!("https://{}:{}", pki::node_server_name(*id), s.port())).collect()
    }
}

/// What one level measured.
struct LevelOutcome {
    /// Latencies of the requests answered with a signature, sorted.
    latencies: Vec<Duration>,
    errors: Vec<String>,
    /// From the moment every worker was connected to the last answer.
    wall: Duration,
    verified: usize,
    /// Entry time from request to result of each signed request, sorted.
    entry_ms: Vec<u64>,
    /// CPU seconds used during the timed section by the node processes (None when
    /// they are not ours to watch) and by this process.
    node_cpu_s: Option<f64>,
    client_cpu_s: f64,
    /// Busy share of all cores during the timed section, from /proc/stat.
    machine_busy: Option<f64>,
}

/// Runs `jobs` with `concurrency` workers, each with its own HTTPS client.
async fn run_level(
    target: &Target,
    jobs: Arc<Jobs>,
    concurrency: usize,
    label: &str,
    public: &[u8; 32],
    node_pids: Option<&[u32]>,
) -> anyhow::Result<LevelOutcome> {
    let total = jobs.len();
    let concurrency = concurrency.clamp(1, total.max(1));
    let urls: Arc<Vec<String>> = Arc::new(target.base_urls());
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(concurrency + 1));
    let mut workers = JoinSet::new();
    for _ in 0..concurrency {
        let http = target.client()?;
        let (urls, jobs, next, done, barrier) =
            (urls.clone(), jobs.clone(), next.clone(), done.clone(), barrier.clone());
        workers.spawn(async move {
            // Open this worker's connection to every node before timing.
            for base in urls.iter() {
                let _ = http.get(format!("{base}/v1/sys/health?standbyok=true")).send().await;
            }
            barrier.wait().await;
            let mut samples = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= jobs.len() || STOP.load(Ordering::SeqCst) {
                    return samples;
                }
                let url = format!("{}/v1/sign?wait_ms={SIGN_WAIT_MS}", urls[i % urls.len()]);
                let started = Instant::now();
                let result = match jobs.body(i) {
                    Ok(body) => post_sign(&http, &url, body).await,
                    Err(e) => Err(format!("{e:#}")),
                };
                let latency = started.elapsed();
                done.fetch_add(1, Ordering::SeqCst);
                samples.push((i, latency, result));
            }
        });
    }
    barrier.wait().await;
    let started = Instant::now();
    let cpu_before = (node_pids.map(cpu_seconds), cpu_seconds(&[std::process::id()]));
    let machine_before = machine_ticks();
    let progress = tokio::spawn(progress(label.to_string(), done.clone(), total));
    let mut samples = Vec::with_capacity(total);
    while let Some(result) = workers.join_next().await {
        samples.extend(result.context("a bench worker panicked")?);
    }
    let wall = started.elapsed();
    let node_cpu_s = node_pids.map(cpu_seconds).zip(cpu_before.0).map(|(after, before)| after - before);
    let client_cpu_s = cpu_seconds(&[std::process::id()]) - cpu_before.1;
    let machine_busy = machine_before.zip(machine_ticks()).and_then(|((busy0, total0), (busy1, total1))| {
        (total1 > total0).then(|| (busy1 - busy0) as f64 / (total1 - total0) as f64)
    });
    progress.abort();
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K");
    }

    let mut latencies = Vec::with_capacity(samples.len());
    let mut errors = Vec::new();
    let mut signed = Vec::new();
    for (i, latency, result) in samples {
        match result {
            Ok(info) if info.request_id == jobs.ids[i] && info.status == RequestStatus::Signed => {
                latencies.push(latency);
                signed.push((i, info));
            }
            Ok(info) => {
                errors.push(format!("request {}: answered {} for {}", jobs.ids[i], info.status, info.request_id))
            }
            Err(e) => errors.push(format!("request {}: {e}", jobs.ids[i])),
        }
    }
    latencies.sort();
    let mut entry_ms: Vec<u64> = signed
        .iter()
        .filter_map(|(_, info)| info.finished_at_ms.map(|f| f.saturating_sub(info.created_at_ms)))
        .collect();
    entry_ms.sort_unstable();
    signed.sort_by_key(|(i, _)| *i);
    let step = (signed.len() / VERIFY_SAMPLE).max(1);
    let mut verified = 0;
    for (i, info) in signed.iter().step_by(step) {
        let signature: [u8; 64] = info
            .signature
            .as_deref()
            .and_then(|s| hex::decode(s).ok())
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| anyhow!("request {}: no valid signature in the answer", info.request_id))?;
        keyfmt::verify(public, &jobs.messages[*i], &signature)
            .map_err(|e| anyhow!("request {}: the returned signature does not verify: {e}", info.request_id))?;
        verified += 1;
    }
    Ok(LevelOutcome { latencies, errors, wall, verified, entry_ms, node_cpu_s, client_cpu_s, machine_busy })
}

/// User plus system CPU seconds of processes `pids` so far (0 for a process that is gone).
fn cpu_seconds(pids: &[u32]) -> f64 {
    // /proc/<pid>/stat counts in USER_HZ, which is 100 on Linux.
    const TICKS_PER_S: f64 = 100.0;
    let ticks: u64 = pids
        .iter()
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command name (field 2) is in parentheses and may contain spaces.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            // utime and stime are fields 14 and 15; fields[0] here is field 3.
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .sum();
    ticks as f64 / TICKS_PER_S
}

/// Busy and total CPU ticks of the whole machine so far (the `cpu` line of /proc/stat).
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let ticks: Vec<u64> = line.split_whitespace().take(8).map(|v| v.parse().ok()).collect::<Option<_>>()?;
    let total: u64 = ticks.iter().sum();
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some((total - idle, total))
}

/// One `POST /v1/sign`: the request's info once signed, or why not.
async fn post_sign(http: &reqwest::Client, url: &str, body: Bytes) -> Result<RequestInfo, String> {
    let response =
        http.post(url).header(reqwest::header::CONTENT_TYPE, "application/json").body(body).send().await.map_err(
            |e| {
                let mut text = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    text.push_str(&format!(": {s}"));
                    source = s.source();
                }
                text
            },
        )?;
    let code = response.status().as_u16();
    let bytes = response.bytes().await.map_err(|e| format!("reading the answer: {e}"))?;
    match code {
        200 => serde_json::from_slice(&bytes).map_err(|e| format!("unreadable answer: {e}")),
        202 => Err(format!("still pending after {SIGN_WAIT_MS} ms")),
        _ => Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(err) => format!("HTTP {code}: {}", err.errors.join("; ")),
            Err(_) => format!("HTTP {code}: {}", String::from_utf8_lossy(&bytes)),
        }),
    }
}

/// Prints `label: done/total` on stderr: in place on a terminal, else every 5 s.
async fn progress(label: String, done: Arc<AtomicUsize>, total: usize) {
    let terminal = std::io::stderr().is_terminal();
    let period = if terminal { Duration::from_millis(250) } else { Duration::from_secs(5) };
    let mut tick = tokio::time::interval(period);
    tick.tick().await;
    loop {
        tick.tick().await;
        let n = done.load(Ordering::SeqCst);
        if terminal {
            eprint!("\r\x1b[2K{label}: {n}/{total}");
            let _ = std::io::stderr().flush();
        } else {
            eprintln!("{label}: {n}/{total}");
        }
    }
}

/// What every row of one configuration shares.
struct RowContext {
    config: KeyConfig,
    baseline: FrostBaseline,
    dalek: f64,
    precomputed: bool,
}

impl RowContext {
    fn row(
        &self,
        killed_node: Option<NodeId>,
        nodes_running: usize,
        concurrency: usize,
        requests: usize,
        outcome: &LevelOutcome,
    ) -> Row {
        let ok = outcome.latencies.len();
        let wall_s = outcome.wall.as_secs_f64();
        let throughput = if wall_s > 0.0 { ok as f64 / wall_s } else { 0.0 };
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let pct = |p: f64| percentile(&outcome.latencies, p).map(|d| round(ms(d), 3));
        let p50 = percentile(&outcome.latencies, 0.50).map(ms);
        let mean = (ok > 0).then(|| outcome.latencies.iter().map(|d| ms(*d)).sum::<f64>() / ok as f64);
        let per_signature = |cpu_s: f64| round(cpu_s * 1e3 / ok.max(1) as f64, 3);
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
        let entry = |p: f64| {
            let sorted = &outcome.entry_ms;
            (!sorted.is_empty()).then(|| sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1])
        };
        Row {
            config: self.config.to_string(),
            nodes: self.config.nodes,
            threshold: self.config.threshold,
            nodes_running,
            signer_killed: killed_node.is_some(),
            killed_node,
            concurrency,
            requests,
            ok,
            errors: outcome.errors.len(),
            first_error: outcome.errors.first().cloned(),
            wall_s: round(wall_s, 3),
            throughput_per_s: round(throughput, 2),
            p50_ms: p50.map(|v| round(v, 3)),
            p90_ms: pct(0.90),
            p99_ms: pct(0.99),
            max_ms: outcome.latencies.last().map(|d| round(ms(*d), 3)),
            mean_ms: mean.map(|v| round(v, 3)),
            throughput_ratio_to_ceiling: sig(throughput / self.baseline.frost_ceiling_per_s),
            p50_ratio_to_inprocess: p50.map(|p| round(p / self.baseline.frost_inprocess_ms, 2)),
            entry_request_to_result_p50_ms: entry(0.5),
            entry_request_to_result_min_ms: outcome.entry_ms.first().copied(),
            entry_request_to_result_p90_ms: entry(0.9),
            node_cpu_ms_per_signature: outcome.node_cpu_s.map(per_signature),
            client_cpu_ms_per_signature: per_signature(outcome.client_cpu_s),
            cpu_busy: outcome
                .node_cpu_s
                .filter(|_| wall_s > 0.0)
                .map(|node| round((node + outcome.client_cpu_s) / (wall_s * cores), 2)),
            machine_cpu_busy: outcome.machine_busy.map(|b| round(b, 2)),
            signatures_verified: outcome.verified,
            frost_ceiling_per_s: self.baseline.frost_ceiling_per_s,
            frost_inprocess_ms: self.baseline.frost_inprocess_ms,
            ed25519_dalek_per_s: round(self.dalek, 1),
            envelopes_precomputed: self.precomputed,
        }
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// Four significant digits (ratios span orders of magnitude).
fn sig(value: f64) -> f64 {
    if value == 0.0 || !value.is_finite() {
        return value;
    }
    let decimals = 3 - value.abs().log10().floor() as i32;
    round(value, decimals.max(0))
}

fn fmt_opt(value: Option<f64>, decimals: usize) -> String {
    value.map_or("-".into(), |v| format!("{v:.decimals$}"))
}

fn print_table(report: &Report) {
    let m = &report.machine;
    println!(
        "synod bench: {} cores ({}, load average {} at start), {} requests per level, {}-byte messages, {} cluster(s)",
        m.cores, m.cpu, m.loadavg_at_start, report.requests_per_level, report.message_bytes, report.target
    );
    if report.envelopes_precomputed {
        println!("command envelopes were signed with the operator key before timing (--sign-in-loop to time it)");
    } else {
        println!("command envelopes were signed with the operator key inside the timed section");
    }
    println!();
    println!("in-process baselines (no network; measured before this run started any node):");
    println!("  ed25519-dalek sign, 1 thread:        {:>10.0} signatures/s", report.baselines.ed25519_dalek_per_s);
    for b in &report.baselines.frost {
        println!(
            "  FROST {:<7} all rounds, {} thread{}:  {:>10.0} signatures/s (ceiling); one signature on 1 thread {:.3} ms",
            b.config,
            b.frost_ceiling_threads,
            if b.frost_ceiling_threads == 1 { "" } else { "s" },
            b.frost_ceiling_per_s,
            b.frost_inprocess_ms
        );
    }
    println!();
    println!(
        "{:<8} {:<7} {:>5} {:>6} {:>6} {:>10} {:>9} {:>9} {:>9} {:>11} {:>11} {:>9} {:>11} {:>6} {:>7}",
        "CONFIG",
        "KILLED",
        "CONC",
        "REQS",
        "ERRORS",
        "THRPT/S",
        "P50 MS",
        "P99 MS",
        "MAX MS",
        "THRPT/CEIL",
        "P50/INPROC",
        "ENTRY MS",
        "NODE CPU MS",
        "BUSY",
        "MACHINE"
    );
    for r in &report.results {
        println!(
            "{:<8} {:<7} {:>5} {:>6} {:>6} {:>10.1} {:>9} {:>9} {:>9} {:>11} {:>11} {:>9} {:>11} {:>6} {:>7}",
            r.config,
            r.killed_node.map_or("-".into(), |n| format!("node {n}")),
            r.concurrency,
            r.requests,
            r.errors,
            r.throughput_per_s,
            fmt_opt(r.p50_ms, 1),
            fmt_opt(r.p99_ms, 1),
            fmt_opt(r.max_ms, 1),
            format!("{:.4}", r.throughput_ratio_to_ceiling),
            fmt_opt(r.p50_ratio_to_inprocess, 1),
            r.entry_request_to_result_p50_ms.map_or("-".into(), |v| v.to_string()),
            fmt_opt(r.node_cpu_ms_per_signature, 2),
            r.cpu_busy.map_or("-".into(), |v| format!("{:.0}%", v * 100.0)),
            r.machine_cpu_busy.map_or("-".into(), |v| format!("{:.0}%", v * 100.0)),
        );
    }
    println!();
    println!("ENTRY MS: p50 from the request's log entry to its result's (leader-stamped); NODE CPU MS: node");
    println!("CPU time per signature, all nodes; BUSY: nodes' and clients' CPU time over all cores' wall time;");
    println!("MACHINE: all CPU use (/proc/stat), so MACHINE well above BUSY means other work competed.");
    for r in report.results.iter().filter(|r| r.errors > 0) {
        println!(
            "{} c={}: {} errors, first: {}",
            r.config,
            r.concurrency,
            r.errors,
            r.first_error.as_deref().unwrap_or("")
        );
    }
}

// ---------------------------------------------------------------------------
// In-process baselines.

/// `t` dealt key packages of a `t`-of-`n` key and its public key package.
struct FrostFixture {
    signers: Vec<frost::keys::KeyPackage>,
    public: frost::keys::PublicKeyPackage,
}

impl FrostFixture {
    fn new(config: KeyConfig) -> anyhow::Result<FrostFixture> {
        let rng = frost::rand_core::OsRng;
        let (shares, public) = frost::keys::generate_with_dealer(
            config.nodes,
            config.threshold,
            frost::keys::IdentifierList::Default,
            rng,
        )
        .map_err(|e| anyhow!("dealing a {config} key: {e}"))?;
        let signers = shares
            .into_values()
            .take(usize::from(config.threshold))
            .map(frost::keys::KeyPackage::try_from)
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow!("{e}"))?;
        Ok(FrostFixture { signers, public })
    }

    /// Every round of one signature: commit for each signer, sign for each, aggregate
    /// (which verifies the signature).
    fn sign(&self, message: &[u8]) -> anyhow::Result<frost::Signature> {
        let mut rng = frost::rand_core::OsRng;
        let mut nonces = Vec::with_capacity(self.signers.len());
        let mut commitments = BTreeMap::new();
        for signer in &self.signers {
            let (n, c) = frost::round1::commit(signer.signing_share(), &mut rng);
            nonces.push(n);
            commitments.insert(*signer.identifier(), c);
        }
        let package = frost::SigningPackage::new(commitments, message);
        let mut shares = BTreeMap::new();
        for (signer, nonces) in self.signers.iter().zip(&nonces) {
            shares.insert(*signer.identifier(), frost::round2::sign(&package, nonces, signer)?);
        }
        Ok(frost::aggregate(&package, &shares, &self.public)?)
    }
}

/// The FROST ceiling (one thread per core) and one signature's latency (one thread).
fn frost_baseline(config: KeyConfig, secs: f64, message_bytes: usize) -> anyhow::Result<FrostBaseline> {
    let fixture = FrostFixture::new(config)?;
    let mut message = vec![0u8; message_bytes];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut message);
    let verifying = fixture.public.verifying_key().serialize().map_err(|e| anyhow!("{e}"))?;
    let public: [u8; 32] = verifying.try_into().map_err(|_| anyhow!("group key is not 32 bytes"))?;
    let signature = fixture.sign(&message)?;
    let signature: [u8; 64] =
        signature.serialize().map_err(|e| anyhow!("{e}"))?.try_into().map_err(|_| anyhow!("signature size"))?;
    keyfmt::verify(&public, &message, &signature).map_err(|e| anyhow!("in-process FROST signature: {e}"))?;

    // Latency: one thread, median of one signature.
    let mut times = Vec::new();
    let deadline = Instant::now() + Duration::from_secs_f64(secs / 2.0);
    while (Instant::now() < deadline || times.len() < 10) && !STOP.load(Ordering::Relaxed) {
        let started = Instant::now();
        std::hint::black_box(fixture.sign(&message)?);
        times.push(started.elapsed());
    }
    times.sort();
    let inprocess = percentile(&times, 0.5).unwrap_or_default();

    // Ceiling: one thread per core, all rounds each.
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let total: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (fixture, message) = (&fixture, &message);
                scope.spawn(move || {
                    let mut count = 0usize;
                    while Instant::now() < deadline && !STOP.load(Ordering::Relaxed) {
                        if fixture.sign(message).is_ok() {
                            count += 1;
                        }
                    }
                    count
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    let elapsed = started.elapsed().as_secs_f64();
    Ok(FrostBaseline {
        config: config.to_string(),
        nodes: config.nodes,
        threshold: config.threshold,
        frost_ceiling_per_s: round(total as f64 / elapsed, 1),
        frost_ceiling_threads: threads,
        frost_inprocess_ms: round(inprocess.as_secs_f64() * 1e3, 4),
    })
}

/// Plain single-key Ed25519 signatures per second on one thread.
fn ed25519_dalek_per_s(secs: f64, message_bytes: usize) -> f64 {
    let mut seed = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
    let key = SigningKey::from_bytes(&seed);
    let mut message = vec![0u8; message_bytes];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut message);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let mut count = 0usize;
    while Instant::now() < deadline && !STOP.load(Ordering::Relaxed) {
        for _ in 0..64 {
            std::hint::black_box(key.sign(std::hint::black_box(&message)));
        }
        count += 64;
    }
    count as f64 / started.elapsed().as_secs_f64()
}

// ---------------------------------------------------------------------------
// Local clusters.

/// A local cluster this run started: its node processes die with it.
struct LocalCluster {
    cluster: ClusterFile,
    client_args: ClientArgs,
    children: BTreeMap<NodeId, Child>,
    dir: Option<tempfile::TempDir>,
    keep_dir: bool,
}

impl LocalCluster {
    /// Creates `nodes` nodes' files in a temporary directory (as `synod dev` does),
    /// starts them, waits for them and commits genesis.
    async fn start(nodes: u16, keep_dir: bool) -> anyhow::Result<LocalCluster> {
        let dir = tempfile::Builder::new().prefix("synod-bench-").tempdir()?;
        let data_dir = dir.path().to_path_buf();
        let cluster = dev::create(&data_dir, u64::from(nodes), DevHsm::None).await?;
        let client_args = dev::client_args(&data_dir, &cluster);
        let mut local = LocalCluster { cluster, client_args, children: BTreeMap::new(), dir: Some(dir), keep_dir };
        let result = async {
            dev::start_nodes(&data_dir, &mut local.cluster, &mut local.children, None, true).await?;
            // A node may have moved to other ports while starting.
            local.client_args = dev::client_args(&data_dir, &local.cluster);
            dev::init_cluster(&data_dir, &local.cluster, &local.client_args).await
        }
        .await;
        if let Err(e) = result {
            local.print_logs_hint();
            local.stop().await;
            return Err(e.context(format!("the {nodes}-node local cluster did not come up")));
        }
        Ok(local)
    }

    /// SIGKILL one node and reap it.
    async fn kill(&mut self, id: NodeId) -> anyhow::Result<()> {
        let mut child = self.children.remove(&id).ok_or_else(|| anyhow!("node {id} is not running"))?;
        child.start_kill().with_context(|| format!("cannot kill node {id}"))?;
        child.wait().await?;
        Ok(())
    }

    /// The process ids of the nodes still running.
    fn pids(&self) -> Vec<u32> {
        self.children.values().filter_map(Child::id).collect()
    }

    fn data_dir(&self) -> PathBuf {
        self.cluster.data_dir.clone()
    }

    fn print_logs_hint(&self) {
        for node in &self.cluster.nodes {
            eprintln!("  node {} log: {}", node.id, node.log.display());
        }
        if !self.keep_dir {
            eprintln!("  (the directory is deleted on exit; --keep-dir keeps it)");
        }
    }

    /// SIGTERM every node, SIGKILL those that do not stop in time.
    async fn stop(&mut self) {
        dev::stop_all(&mut self.children).await;
        self.children.clear();
        if self.keep_dir {
            if let Some(dir) = self.dir.take() {
                let _ = dir.keep();
                eprintln!("kept {}", self.data_dir().display());
            }
        }
    }
}

impl Drop for LocalCluster {
    /// On any early exit (error, signal): SIGKILL every node still running and
    /// reap it before the directory goes.
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.start_kill();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for child in self.children.values_mut() {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.children.clear();
    }
}

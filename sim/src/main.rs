//! `synod-sim`: runs seeds of the deterministic simulator and reports.
//!
//! One seed runs in this process. A sweep (`--seeds A..B`) and shrinking
//! re-run this binary once per seed, because some libraries keep thread-local
//! RNG state (futures' `select!`) that a second run in one process would
//! continue from, breaking replay by seed.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Parser;
use serde_json::{json, Value};
use synod_sim::checker::Violation;
use synod_sim::config::{Profile, SimConfig};
use synod_sim::run::{run_seed, SeedReport};

/// Plants the simulator can provoke. (`corrupt-shares` process-wide would make
/// every signer lie; the chaos profile makes one signer per seed lie instead.)
const PLANTS: &[&str] = &[
    synod_node::faults::ACK_BEFORE_COMMIT,
    synod_node::faults::NONCE_REUSE,
    synod_node::faults::SKIP_POLICY,
    synod_node::faults::SKIP_NODE_AUTHOR_CHECK,
    synod_node::faults::SKIP_GENESIS_PIN,
    synod_node::faults::TRUST_SNAPSHOT,
    synod_node::faults::TRUST_ENTRY_TIME,
    synod_node::faults::SKIP_COORDINATOR_CHECK,
    synod_node::faults::SKIP_CLIENT_BOUNDS,
    synod_node::faults::SKIP_KEY_STATUS,
    synod_node::faults::SKIP_RETIREMENT,
    synod_node::faults::KEEP_OLD_GENERATION,
    synod_node::faults::TRUST_ROLLED_BACK_VOTE,
    synod_node::faults::OVERWRITE_APPLIED_OUTCOME,
    synod_node::faults::IGNORE_NAMESPACE_POLICY,
    synod_node::faults::PASSKEY_IGNORES_COUNTER,
    synod_node::faults::GLOBAL_SIGNS_WITHOUT_COMMENT,
];

#[derive(Parser, Debug)]
#[command(
    name = "synod-sim",
    about = "Synod's deterministic simulator: real nodes on simulated time, network and disk"
)]
struct Args {
    /// Run this one seed.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Sweep seeds A..B (B excluded), one process per seed.
    #[arg(long, value_name = "A..B")]
    seeds: Option<String>,
    /// Fault profile: quiet or chaos.
    #[arg(long, default_value = "chaos")]
    profile: String,
    /// Switch on a planted bug (repeatable).
    #[arg(long = "plant", value_name = "BUG")]
    plants: Vec<String>,
    /// Number of nodes.
    #[arg(long, default_value_t = 5)]
    nodes: u64,
    /// Leave out these scheduled faults, by id (a shrunk schedule).
    #[arg(long, value_delimiter = ',')]
    skip_faults: Vec<usize>,
    /// Never crash a node at these named fault points (a shrunk schedule).
    #[arg(long, value_delimiter = ',', value_name = "POINT")]
    skip_points: Vec<String>,
    /// No byzantine signer, even where the profile draws one (a shrunk schedule).
    #[arg(long)]
    honest_signers: bool,
    /// Seeds run at once in a sweep.
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// Stop a sweep at its first failing seed.
    #[arg(long)]
    fail_fast: bool,
    /// Do not shrink the fault schedule of a failing seed.
    #[arg(long)]
    no_shrink: bool,
    /// Write the whole trace of a single seed to this file.
    #[arg(long)]
    trace_file: Option<std::path::PathBuf>,
    /// Log the nodes' tracing output to stderr at this level filter (e.g. `warn`, `openraft=debug`).
    /// Debugging aid only: log lines are not part of the trace.
    #[arg(long, value_name = "FILTER")]
    log: Option<String>,
    /// Internal: run one seed and print its report as one JSON line.
    #[arg(long, hide = true)]
    child: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !synod_node::faults::built() {
        eprintln!(
            "Error: this synod-sim was built without fault injection, so it can plant no bug and crash no node. \
             Build it with SYNOD_BUILD_FAULTS=1, e.g. `SYNOD_BUILD_FAULTS=1 cargo build --release -p synod-sim`"
        );
        return ExitCode::from(2);
    }
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn config(args: &Args, seed: u64) -> anyhow::Result<SimConfig> {
    let profile = Profile::parse(&args.profile).map_err(anyhow::Error::msg)?;
    if let Some(unknown) = args.plants.iter().find(|p| !PLANTS.contains(&p.as_str())) {
        bail!("unknown plant {unknown:?}; known plants: {}", PLANTS.join(", "));
    }
    if let Some(unknown) = args.skip_points.iter().find(|p| !synod_node::faults::POINTS.contains(&p.as_str())) {
        bail!("unknown fault point {unknown:?}; known points: {}", synod_node::faults::POINTS.join(", "));
    }
    if args.nodes < 1 || args.nodes > 9 {
        bail!("--nodes must be 1 to 9, got {}", args.nodes);
    }
    let mut cfg = SimConfig::new(seed, profile);
    cfg.nodes = args.nodes;
    cfg.plants = args.plants.clone();
    cfg.skip_faults = args.skip_faults.iter().copied().collect();
    cfg.skip_points = args.skip_points.iter().cloned().collect();
    cfg.honest_signers = args.honest_signers;
    Ok(cfg)
}

fn run(args: Args) -> anyhow::Result<bool> {
    if let Some(filter) = &args.log {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .without_time()
            .with_writer(std::io::stderr)
            .init();
    }
    if let Some(range) = &args.seeds {
        let (a, b) = range.split_once("..").context("--seeds takes A..B, e.g. 0..100")?;
        let (a, b): (u64, u64) = (a.parse().context("--seeds start")?, b.parse().context("--seeds end")?);
        config(&args, a)?;
        return sweep(&args, a..b);
    }
    let cfg = config(&args, args.seed.unwrap_or(1))?;
    if args.child {
        let report = run_seed(&cfg, false);
        println!("{}", to_json(&report));
        return Ok(report.violation.is_none());
    }
    let report = run_seed(&cfg, args.trace_file.is_some());
    if let (Some(path), Some(lines)) = (&args.trace_file, &report.trace) {
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(path, text).with_context(|| format!("writing the trace to {}", path.display()))?;
    }
    print_report(&report);
    if report.violation.is_some() {
        print_failure(&args, &cfg, &report)?;
    }
    Ok(report.violation.is_none())
}

fn sweep(args: &Args, seeds: std::ops::Range<u64>) -> anyhow::Result<bool> {
    let wall = Instant::now();
    let mut pending: Vec<u64> = seeds.clone().rev().collect();
    let mut running: Vec<(u64, std::process::Child)> = Vec::new();
    let mut reports: BTreeMap<u64, SeedReport> = BTreeMap::new();
    let mut failed = false;
    while !pending.is_empty() || !running.is_empty() {
        while running.len() < args.jobs.max(1) && !(failed && args.fail_fast) {
            let Some(seed) = pending.pop() else { break };
            running.push((seed, spawn_child(&config(args, seed)?)?));
        }
        let (seed, child) = running.remove(0);
        let report = wait_child(seed, child)?;
        print_report(&report);
        failed |= report.violation.is_some();
        reports.insert(seed, report);
        if failed && args.fail_fast {
            pending.clear();
        }
    }
    let failures: Vec<&SeedReport> = reports.values().filter(|r| r.violation.is_some()).collect();
    summary(&reports, wall.elapsed().as_millis() as u64);
    for report in &failures {
        print_failure(args, &config(args, report.seed)?, report)?;
    }
    Ok(failures.is_empty())
}

fn summary(reports: &BTreeMap<u64, SeedReport>, wall_ms: u64) {
    let sim_ms: u64 = reports.values().map(|r| r.sim_ms).sum();
    let mut faults: BTreeMap<&str, u64> = BTreeMap::new();
    for r in reports.values() {
        for (k, v) in &r.faults {
            *faults.entry(k).or_default() += v;
        }
    }
    let mut formats: BTreeMap<&str, u64> = BTreeMap::new();
    for r in reports.values() {
        for (k, v) in &r.formats {
            *formats.entry(k).or_default() += v;
        }
    }
    let failed = reports.values().filter(|r| r.violation.is_some()).count();
    println!(
        "sweep: {} seeds, {} passed, {} failed; acked {} writes, {} signatures ({} shares, {} requests naming a culprit), {} command lookups; simulated {:.1} s in {:.1} s wall ({:.0}x); faults {faults:?}; formats {formats:?}",
        reports.len(),
        reports.len() - failed,
        failed,
        reports.values().map(|r| r.writes_acked).sum::<usize>(),
        reports.values().map(|r| r.signatures).sum::<usize>(),
        reports.values().map(|r| r.shares).sum::<usize>(),
        reports.values().map(|r| r.culprits).sum::<usize>(),
        reports.values().map(|r| r.lookups).sum::<usize>(),
        sim_ms as f64 / 1000.0,
        wall_ms as f64 / 1000.0,
        sim_ms as f64 / wall_ms.max(1) as f64,
    );
}

fn print_report(r: &SeedReport) {
    let status = match &r.violation {
        None => "ok".to_string(),
        Some(v) => format!("FAILED {}", v.invariant),
    };
    println!(
        "seed {} {status}: acked {} lookups {} signed {} shares {} applied {} forgeries {} culprits {} faults {:?} formats {:?} sim {:.1}s wall {:.2}s ({:.0}x) trace {} lines hash {}",
        r.seed,
        r.writes_acked,
        r.lookups,
        r.signatures,
        r.shares,
        r.entries_applied,
        r.forgeries,
        r.culprits,
        r.faults,
        r.formats,
        r.sim_ms as f64 / 1000.0,
        r.wall_ms as f64 / 1000.0,
        r.sim_ms as f64 / r.wall_ms.max(1) as f64,
        r.trace_lines,
        r.trace_hash
    );
}

fn print_failure(args: &Args, cfg: &SimConfig, report: &SeedReport) -> anyhow::Result<()> {
    let v = report.violation.as_ref().expect("a failure has a violation");
    println!("\n=== seed {} violated {}: {}", report.seed, v.invariant, v.detail);
    println!("--- trace tail ---");
    for line in &report.tail {
        println!("{line}");
    }
    let mut replay = cfg.clone();
    if !args.no_shrink && !Omit::candidates(report).is_empty() {
        replay = shrink(cfg, report, v)?;
        let dropped = replay.skip_faults.len() - cfg.skip_faults.len()
            + (replay.skip_points.len() - cfg.skip_points.len())
            + usize::from(replay.honest_signers && !cfg.honest_signers);
        println!(
            "--- shrunk: {dropped} of the faults that fired (scheduled, crash points, byzantine signer) left out; \
             it still fails ---"
        );
    }
    println!("replay: {}", replay.replay_command());
    std::io::stdout().flush()?;
    Ok(())
}

/// One thing a shrunk run leaves out.
#[derive(Clone, PartialEq)]
enum Omit {
    Fault(usize),
    Point(String),
    ByzantineSigner,
}

impl Omit {
    /// What fired in `report`, as things to try leaving out.
    fn candidates(report: &SeedReport) -> Vec<Omit> {
        let mut all: Vec<Omit> = report.fired.iter().copied().map(Omit::Fault).collect();
        all.extend(report.fired_points.iter().cloned().map(Omit::Point));
        if report.byzantine_signer {
            all.push(Omit::ByzantineSigner);
        }
        all
    }

    fn apply(&self, cfg: &mut SimConfig) {
        match self {
            Omit::Fault(id) => {
                cfg.skip_faults.insert(*id);
            }
            Omit::Point(name) => {
                cfg.skip_points.insert(name.clone());
            }
            Omit::ByzantineSigner => cfg.honest_signers = true,
        }
    }
}

/// Most runs a shrink makes.
const SHRINK_RUNS_MAX: usize = 64;

/// Leaves out what fired (scheduled faults, crashes at named points, the
/// byzantine signer) one at a time while the same invariant still fails. Leaving
/// out a crash point can let another point fire instead, so what the kept run
/// fired joins the candidates.
fn shrink(cfg: &SimConfig, report: &SeedReport, v: &Violation) -> anyhow::Result<SimConfig> {
    let mut best = cfg.clone();
    let mut tried: Vec<Omit> = Vec::new();
    let mut queue = Omit::candidates(report);
    let mut runs = 0;
    while let Some(omit) = queue.pop() {
        if tried.contains(&omit) || runs == SHRINK_RUNS_MAX {
            continue;
        }
        tried.push(omit.clone());
        let mut candidate = best.clone();
        omit.apply(&mut candidate);
        runs += 1;
        let r = wait_child(candidate.seed, spawn_child(&candidate)?)?;
        if r.violation.as_ref().map(|x| x.invariant) == Some(v.invariant) {
            best = candidate;
            queue.extend(Omit::candidates(&r).into_iter().filter(|d| !tried.contains(d)));
        }
    }
    Ok(best)
}

fn spawn_child(cfg: &SimConfig) -> anyhow::Result<std::process::Child> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let mut cmd = Command::new(exe);
    cmd.arg("--child").args(cfg.args());
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().context("starting a seed's process")
}

fn wait_child(seed: u64, child: std::process::Child) -> anyhow::Result<SeedReport> {
    let out = child.wait_with_output().context("waiting for a seed's process")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().last().and_then(|l| serde_json::from_str::<Value>(l).ok()) {
        Some(v) => from_json(&v),
        None => Ok(crashed(seed, &String::from_utf8_lossy(&out.stderr))),
    }
}

/// The report of a seed whose process died (a panic in node code, say).
fn crashed(seed: u64, stderr: &str) -> SeedReport {
    SeedReport {
        seed,
        violation: Some(Violation {
            invariant: "process-crashed",
            detail: stderr.lines().rev().take(20).collect::<Vec<_>>().join(" | "),
        }),
        trace_hash: String::new(),
        trace_lines: 0,
        tail: stderr
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
            .split_off(stderr.lines().count().saturating_sub(40)),
        writes_acked: 0,
        lookups: 0,
        signatures: 0,
        shares: 0,
        entries_applied: 0,
        forgeries: 0,
        culprits: 0,
        faults: BTreeMap::new(),
        formats: BTreeMap::new(),
        fired: Vec::new(),
        fired_points: Vec::new(),
        byzantine_signer: false,
        sim_ms: 0,
        wall_ms: 0,
        replay: String::new(),
        trace: None,
    }
}

fn to_json(r: &SeedReport) -> String {
    json!({
        "seed": r.seed,
        "invariant": r.violation.as_ref().map(|v| v.invariant),
        "detail": r.violation.as_ref().map(|v| v.detail.clone()),
        "trace_hash": r.trace_hash,
        "trace_lines": r.trace_lines,
        "tail": r.tail,
        "writes_acked": r.writes_acked,
        "lookups": r.lookups,
        "signatures": r.signatures,
        "shares": r.shares,
        "entries_applied": r.entries_applied,
        "forgeries": r.forgeries,
        "culprits": r.culprits,
        "faults": r.faults,
        "formats": r.formats,
        "fired": r.fired,
        "fired_points": r.fired_points,
        "byzantine_signer": r.byzantine_signer,
        "sim_ms": r.sim_ms,
        "wall_ms": r.wall_ms,
        "replay": r.replay,
    })
    .to_string()
}

/// Invariant names are `&'static str`; the child's are mapped back onto the known set.
fn invariant_name(name: &str) -> &'static str {
    const NAMES: &[&str] = &[
        "raft-election-safety",
        "raft-applied-monotonic",
        "raft-committed-entries-never-change",
        "state-machine-agreement",
        "state-machine-convergence",
        "acknowledged-write-lost",
        "command-outcome-contradicts-log",
        "forged-command-applied",
        "altered-command-applied",
        "nonce-single-use",
        "one-message-per-request",
        "signature-verifies",
        "share-without-policy",
        "honest-signer-blamed",
        "policy-bypassed",
        "signing-liveness-after-heal",
        "key-generation-liveness",
        "liveness-after-heal",
        "node-software-failed",
        "process-crashed",
        "state-time-ahead",
        "request-outlives-its-bound",
        "requester-over-quota",
        "out-of-service-releases-nothing",
        "one-primary-per-key",
        "retired-version-takes-requests",
        "group-key-unchanged",
        "share-of-current-generation",
        "format-unreadable",
        "format-policy-bypassed",
        "minisign-global-mismatch",
        "malformed-format-accepted",
        "passkey-approval-unverified",
        "passkey-counter-not-growing",
    ];
    NAMES.iter().find(|n| **n == name).copied().unwrap_or("unknown-invariant")
}

fn from_json(v: &Value) -> anyhow::Result<SeedReport> {
    let u = |k: &str| v[k].as_u64().unwrap_or(0);
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    let violation =
        v["invariant"].as_str().map(|name| Violation { invariant: invariant_name(name), detail: s("detail") });
    let strings = |k: &str| -> Vec<String> {
        v[k].as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect()).unwrap_or_default()
    };
    let faults = v["faults"]
        .as_object()
        .map(|o| o.iter().map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0))).collect())
        .unwrap_or_default();
    let formats = v["formats"]
        .as_object()
        .map(|o| o.iter().map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0))).collect())
        .unwrap_or_default();
    let fired: BTreeSet<usize> = v["fired"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_u64()).map(|x| x as usize).collect())
        .unwrap_or_default();
    Ok(SeedReport {
        seed: u("seed"),
        violation,
        trace_hash: s("trace_hash"),
        trace_lines: u("trace_lines") as usize,
        tail: strings("tail"),
        writes_acked: u("writes_acked") as usize,
        lookups: u("lookups") as usize,
        signatures: u("signatures") as usize,
        shares: u("shares") as usize,
        entries_applied: u("entries_applied"),
        forgeries: u("forgeries") as usize,
        culprits: u("culprits") as usize,
        faults,
        formats,
        fired: fired.into_iter().collect(),
        fired_points: strings("fired_points"),
        byzantine_signer: v["byzantine_signer"].as_bool().unwrap_or(false),
        sim_ms: u("sim_ms"),
        wall_ms: u("wall_ms"),
        replay: s("replay"),
        trace: None,
    })
}

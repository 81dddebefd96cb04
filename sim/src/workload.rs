//! The simulated users of the cluster: the bootstrap client that runs
//! `cluster init`, the workload clients, and the byzantine adversary.
//!
//! Everything they learn goes into the shared [`History`], which the checkers
//! read: which writes were acknowledged, at which index, and what happened to
//! each forged entry.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use synod_proto::api::{ApiError, WriteResponse};
use synod_proto::{Command, Envelope, LogEntry, Member, NodeAddr, NodeId, OperatorKey, Outcome, SignedCommand};

use crate::cluster::{SimNow, EPOCH_MS};
use crate::net::{self, Kind, SharedNet};
use crate::schedule::Forgery;
use crate::trace::SharedTrace;

/// How long a signed command stays valid: far longer than any run.
pub const COMMAND_TTL_MS: u64 = 10 * 60 * 1000;
/// How long a client waits for one attempt at a write.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// The node id a forged membership change tries to add.
pub const FORGED_NODE: NodeId = 99;
/// The key prefix of forged writes; no node may ever hold such a key.
pub const FORGED_PREFIX: &str = "forged/";

/// What clients submit. Later issues add signing requests and approvals.
pub trait Workload {
    /// The next command of client `client`; `seq` counts its commands from 0.
    fn next_command(&mut self, client: usize, seq: u64, rng: &mut ChaCha8Rng) -> Command;
}

/// Replicated key-value writes, one unique key per write, so a lost write
/// cannot hide behind a later one.
pub struct KvWorkload;

impl Workload for KvWorkload {
    fn next_command(&mut self, client: usize, seq: u64, rng: &mut ChaCha8Rng) -> Command {
        Command::Put { key: format!("c{client}/{seq:05}"), value: format!("{:016x}", rng.next_u64()) }
    }
}

/// A write the cluster acknowledged.
#[derive(Clone, Debug)]
pub struct Ack {
    pub key: String,
    pub value: String,
    /// The index the cluster named; `None` when the ack was a "replay" refusal
    /// of a retry whose first attempt had applied unseen.
    pub index: Option<u64>,
    /// The signed command, which identifies its entry in the log.
    pub command: SignedCommand,
    pub at_ms: u64,
}

/// What happened to one forged proposal.
#[derive(Clone, Debug)]
pub struct ForgedResult {
    pub fault_id: usize,
    pub forgery: Forgery,
    /// The outcome the state machine returned, if the leader answered.
    pub outcome: Option<Outcome>,
}

/// Where the run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Genesis not yet committed.
    Boot,
    /// The fault window is open.
    Chaos,
    /// Everything healed at this simulated time; liveness is measured from here.
    Healed { at_ms: u64 },
}

/// What the clients observed, shared with the driver and the checkers.
pub struct History {
    pub phase: Phase,
    pub genesis_at_ms: u64,
    pub acks: Vec<Ack>,
    /// Writes submitted and not yet answered: (client, seq) -> key.
    pub pending: BTreeMap<(usize, u64), String>,
    /// Writes the state machine refused although an admin signed them.
    pub refused: u64,
    pub forged: Vec<ForgedResult>,
    /// Forgeries the driver asked for: (fault id, forgery, leader to try first).
    pub forgery_queue: VecDeque<(usize, Forgery, NodeId)>,
    /// Clients (workload and adversary) that have finished.
    pub clients_done: usize,
}

pub type SharedHistory = Rc<RefCell<History>>;

impl History {
    pub fn new() -> SharedHistory {
        Rc::new(RefCell::new(History {
            phase: Phase::Boot,
            genesis_at_ms: 0,
            acks: Vec::new(),
            pending: BTreeMap::new(),
            refused: 0,
            forged: Vec::new(),
            forgery_queue: VecDeque::new(),
            clients_done: 0,
        }))
    }
}

/// What every simulated client shares.
#[derive(Clone)]
pub struct ClientCtx {
    pub seed: u64,
    pub nodes: u64,
    pub cluster_id: String,
    /// The simulation's cluster CA (hex DER), named in genesis.
    pub ca_certificate: String,
    pub admin: SigningKey,
    pub stranger: SigningKey,
    pub net: SharedNet,
    pub now: SimNow,
    pub history: SharedHistory,
    pub trace: SharedTrace,
    pub writes_after_heal: u32,
}

impl ClientCtx {
    fn now_ms(&self) -> u64 {
        self.now.load(Ordering::Relaxed)
    }

    fn event(&self, text: String) {
        self.trace.borrow_mut().event(self.now_ms(), text);
    }

    fn sign(&self, key: &SigningKey, rng: &mut ChaCha8Rng, command: Command) -> SignedCommand {
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        let now = EPOCH_MS + self.now_ms();
        let envelope = Envelope {
            cluster_id: self.cluster_id.clone(),
            command_id: hex::encode(id),
            issued_at_ms: now,
            expires_at_ms: now + COMMAND_TTL_MS,
            command,
        };
        SignedCommand::sign(&envelope, key)
    }

    /// Sends `body` to `first`, following leader hints and retrying elsewhere
    /// on errors, for at most `attempts` tries.
    async fn submit<B: serde::Serialize>(
        &self,
        kind: Kind,
        body: &B,
        first: NodeId,
        rng: &mut ChaCha8Rng,
        attempts: u32,
    ) -> Option<WriteResponse> {
        let mut target = first;
        for _ in 0..attempts {
            match net::client_call(&self.net, target, kind, body, CALL_TIMEOUT).await {
                Ok(Ok(response)) => return Some(response),
                Ok(Err(ApiError { leader_hint: Some(hint), .. })) if hint.node_id != target => target = hint.node_id,
                _ => {
                    target = 1 + rng.next_u64() % self.nodes;
                    tokio::time::sleep(Duration::from_millis(20 + rng.next_u64() % 80)).await;
                }
            }
        }
        None
    }
}

/// The genesis command: one admin, every simulated node a member.
pub fn genesis(ctx: &ClientCtx, rng: &mut ChaCha8Rng) -> SignedCommand {
    let members = (1..=ctx.nodes)
        .map(|id| Member {
            node_id: id,
            addr: NodeAddr { raft_addr: net::node_addr(id), api_addr: format!("{}:8000", net::node_name(id)) },
        })
        .collect();
    let command = Command::Genesis {
        admins: vec![OperatorKey::of(&ctx.admin)],
        members,
        ca_certificate: ctx.ca_certificate.clone(),
    };
    ctx.sign(&ctx.admin, rng, command)
}

/// `synod cluster init` against node 1, retried until genesis is committed.
pub async fn boot_client(ctx: ClientCtx) -> turmoil::Result {
    let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed ^ 0xb007);
    let command = genesis(&ctx, &mut rng);
    loop {
        match net::client_call(&ctx.net, 1, Kind::Init, &command, Duration::from_secs(20)).await {
            Ok(Ok(response)) if response.outcome.is_applied() => break,
            // An earlier attempt committed it and only the answer was lost.
            Ok(Err(e)) if e.status == 409 => break,
            other => {
                ctx.event(format!("boot: init not done yet: {other:?}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let mut history = ctx.history.borrow_mut();
    history.phase = Phase::Chaos;
    history.genesis_at_ms = ctx.now_ms();
    drop(history);
    ctx.event("boot: genesis committed".into());
    Ok(())
}

/// One workload client: writes until the heal, then `writes_after_heal` more.
pub async fn workload_client(ctx: ClientCtx, client: usize, mut workload: Box<dyn Workload>) -> turmoil::Result {
    let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed ^ (0xc11e_0000 + client as u64));
    while ctx.history.borrow().phase == Phase::Boot {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut after_heal = 0;
    for seq in 0.. {
        if matches!(ctx.history.borrow().phase, Phase::Healed { .. }) {
            if after_heal == ctx.writes_after_heal {
                break;
            }
            after_heal += 1;
        }
        let command = workload.next_command(client, seq, &mut rng);
        let Command::Put { key, value } = command.clone() else { unreachable!("the kv workload only puts") };
        let signed = ctx.sign(&ctx.admin, &mut rng, command);
        ctx.history.borrow_mut().pending.insert((client, seq), key.clone());
        let first = 1 + rng.next_u64() % ctx.nodes;
        let response = ctx
            .submit(Kind::Write, &signed, first, &mut rng, u32::MAX)
            .await
            .expect("unbounded attempts always end in a response");
        let event = {
            let mut history = ctx.history.borrow_mut();
            history.pending.remove(&(client, seq));
            let ack = |index| Ack { key: key.clone(), value, index, command: signed.clone(), at_ms: ctx.now_ms() };
            match &response.outcome {
                Outcome::Applied { .. } => {
                    history.acks.push(ack(Some(response.index)));
                    format!("c{client}: ack {key} at index {}", response.index)
                }
                Outcome::Rejected { reason } if reason.contains("replay") => {
                    // A retry of a write whose first attempt applied without an answer.
                    history.acks.push(ack(None));
                    format!("c{client}: ack {key} (a retry; applied earlier)")
                }
                other => {
                    history.refused += 1;
                    format!("c{client}: {key} refused: {other:?}")
                }
            }
        };
        ctx.event(event);
        tokio::time::sleep(Duration::from_millis(rng.next_u64() % 50)).await;
    }
    ctx.history.borrow_mut().clients_done += 1;
    ctx.event(format!("c{client}: done"));
    Ok(())
}

/// The byzantine leader's accomplice: proposes the forgeries the driver
/// schedules straight to Raft on the leader, then records their outcomes.
pub async fn adversary(ctx: ClientCtx) -> turmoil::Result {
    let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed ^ 0xbad);
    loop {
        let job = ctx.history.borrow_mut().forgery_queue.pop_front();
        let Some((fault_id, forgery, leader)) = job else {
            if matches!(ctx.history.borrow().phase, Phase::Healed { .. }) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let entry = forge(&ctx, &mut rng, fault_id, forgery);
        let response = ctx.submit(Kind::ProposeRaw, &entry, leader, &mut rng, 10).await;
        let outcome = response.map(|r| r.outcome);
        ctx.event(format!("adversary: forgery #{fault_id} {forgery:?} -> {outcome:?}"));
        ctx.history.borrow_mut().forged.push(ForgedResult { fault_id, forgery, outcome });
    }
    ctx.history.borrow_mut().clients_done += 1;
    Ok(())
}

fn forge(ctx: &ClientCtx, rng: &mut ChaCha8Rng, fault_id: usize, forgery: Forgery) -> LogEntry {
    let put = Command::Put { key: format!("{FORGED_PREFIX}{fault_id}"), value: "x".into() };
    let replayable = ctx.history.borrow().acks.iter().rev().find(|a| a.index.is_some()).map(|a| a.command.clone());
    let command = match forgery {
        Forgery::NonAdminWrite => ctx.sign(&ctx.stranger, rng, put),
        Forgery::NonAdminMember => {
            let addr = NodeAddr { raft_addr: net::node_addr(FORGED_NODE), api_addr: "n99:8000".into() };
            ctx.sign(&ctx.stranger, rng, Command::AddMember { node_id: FORGED_NODE, addr })
        }
        Forgery::Tampered => {
            let mut signed = ctx.sign(&ctx.admin, rng, put);
            signed.envelope = signed.envelope.replace("\"value\":\"x\"", "\"value\":\"y\"");
            signed
        }
        Forgery::Replay => replayable.unwrap_or_else(|| ctx.sign(&ctx.stranger, rng, put)),
    };
    LogEntry { time_ms: EPOCH_MS + ctx.now_ms(), command }
}

//! The simulated users of the cluster: the bootstrap client that runs
//! `cluster init`, the workload clients, the admin who creates the signing key
//! (and gives it a policy that needs human approvals above an amount), the
//! signing clients, the approvers, and the byzantine adversary.
//!
//! Everything they learn goes into the shared [`History`], which the checkers
//! read: which writes were acknowledged, at which index, what happened to
//! each forged entry, which message was sent under each request id and which
//! signatures the cluster acknowledged.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ed25519_dalek::{Signer as _, SigningKey};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use sha2::Digest;
use synod_node::node::ClientResponse;
use synod_proto::api::{ClientRequest, KeyInfo, KeyStatus, RequestInfo, RequestStatus, WriteResponse};
use synod_proto::authz::{approval_bytes, ApprovalSignature, ApprovalStatement, Policy, Role, Tier};
use synod_proto::NodeError;
use synod_proto::{Command, Envelope, LogEntry, Member, NodeAddr, NodeId, OperatorKey, Outcome, SignedCommand};

use crate::cluster::{SimNow, EPOCH_MS};
use crate::net::{self, SharedNet};
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
/// The name of the threshold key the admin creates before the fault window.
pub const KEY_NAME: &str = "sim-key";
/// The name of the key the admin generates while the faults are on.
pub const KEY_NAME_FAULTS: &str = "sim-key-2";
/// How long a client waits for one create-key call (pings of every participant, then the write).
pub const CREATE_KEY_TIMEOUT: Duration = Duration::from_secs(6);
/// How long a client waits for one sign or request-read call (the node itself waits up to
/// [`net::SIGN_WAIT`] for the signature).
pub const SIGN_CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// A signing client pauses up to this long between requests, in ms. Each request
/// grows the replicated state, which every node's state hash covers at every
/// applied index: this paces the signing load.
pub const SIGN_PAUSE_MS_MAX: u64 = 100;
/// Probability that a client re-sends a signed request (same id, same message, a new
/// command): it must get the same signature back.
pub const SIGN_RETRY_P: u64 = 15;
/// Probability (percent) that a client, once a request is committed, sends another
/// message under the same request id: it must be refused and never signed.
pub const SIGN_CONFLICT_P: u64 = 4;

/// The operators who approve [`KEY_NAME`]'s large requests (Ed25519 keys from the seed).
pub const APPROVERS: [&str; 3] = ["approver-1", "approver-2", "approver-3"];
/// The attribute [`KEY_NAME`]'s policy reads: requests declaring more than
/// [`AMOUNT_APPROVAL_ABOVE`] need [`APPROVALS_REQUIRED`] approvals.
pub const AMOUNT: &str = "amount";
pub const AMOUNT_APPROVAL_ABOVE: u64 = 1_000;
pub const APPROVALS_REQUIRED: u32 = 2;
/// Percent of sign requests on [`KEY_NAME`] that declare a large amount (and so need approvals).
pub const LARGE_REQUEST_P: u64 = 30;
/// Percent of large requests the approvers leave unapproved: they must never be signed.
pub const WITHHELD_P: u64 = 40;
/// How long a client follows a request the approvers leave unapproved, in ms.
pub const WITHHELD_FOLLOW_MS: u64 = 1_500;

/// What clients submit.
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

/// The threshold key, once a node reported it active.
#[derive(Clone, Debug)]
pub struct KeyAck {
    pub id: String,
    pub name: String,
    /// The Ed25519 group key (hex) the reporting node holds.
    pub group_key: String,
    pub at_ms: u64,
}

/// What the clients sent under one request id.
#[derive(Clone, Debug)]
pub struct SentRequest {
    pub client: usize,
    /// The first message sent under this id: the only one that may ever be signed.
    pub message: Vec<u8>,
    /// SHA-256 of `message`, hex (as the state stores it).
    pub message_sha256: String,
    /// Other messages (hex) sent later under the same id; each must be refused.
    pub conflicts: Vec<String>,
    pub submitted_at_ms: u64,
    /// What the approvers do with it.
    pub approval: Approval,
}

/// What the approvers do with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Approval {
    /// Its policy needs no approval (a small amount).
    NotNeeded,
    /// The approvers approve it (again after every failed attempt) until it is signed.
    Given,
    /// The approvers never approve it: no node may coordinate it, release a share for it or sign it.
    Withheld,
}

/// A signature a client saw acknowledged (`status: signed`).
#[derive(Clone, Debug)]
pub struct SignAck {
    pub request_id: String,
    /// Hex, as the node answered it.
    pub signature: String,
    pub at_ms: u64,
    /// Whether it answered a re-sent request (a new command, same id and message).
    pub retry: bool,
}

/// What happened to one forged proposal.
#[derive(Clone, Debug)]
pub struct ForgedResult {
    pub fault_id: usize,
    pub forgery: Forgery,
    /// For a replay: the key of the acknowledged write proposed again.
    pub replayed_key: Option<String>,
    /// The outcome the state machine returned, if the leader answered.
    pub outcome: Option<Outcome>,
}

/// Where the run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Genesis not yet committed.
    Boot,
    /// Genesis committed; the admin creates the signing key before any fault
    /// (clients already write).
    Setup,
    /// The fault window is open.
    Chaos,
    /// Everything healed at this simulated time; liveness is measured from here.
    Healed { at_ms: u64 },
}

/// What the clients observed, shared with the driver and the checkers.
pub struct History {
    pub phase: Phase,
    pub genesis_at_ms: u64,
    /// When the fault window opened (genesis, then the signing key, first).
    pub window_at_ms: u64,
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
    /// The threshold keys a node reported active, by name.
    pub keys: BTreeMap<String, KeyAck>,
    /// Create-key commands sent, by key name (one key may need several: an
    /// aborted generation frees the name).
    pub key_attempts: BTreeMap<String, u32>,
    /// Every request id a client used, with the first message sent under it.
    pub sent: BTreeMap<String, SentRequest>,
    /// Signatures the cluster acknowledged to a client, in order.
    pub sign_acks: Vec<SignAck>,
    /// Sign requests not yet acknowledged as signed: request id -> submitted at (ms).
    pub sign_pending: BTreeMap<String, u64>,
    /// What a client saw that must never happen (a second message accepted under
    /// one id, a signed request answered otherwise, ...); the checkers fail on these.
    pub sign_anomalies: Vec<String>,
    /// Second messages under a request id that the cluster refused (as it must).
    pub conflicts_refused: u64,
    /// Requests the approvers leave unapproved (see [`Approval::Withheld`]).
    pub withheld: BTreeSet<String>,
    /// Approvals the cluster applied.
    pub approvals_applied: u64,
    /// Signing clients that have finished (the approvers stop after them).
    pub signing_clients_done: usize,
}

pub type SharedHistory = Rc<RefCell<History>>;

impl History {
    pub fn new() -> SharedHistory {
        Rc::new(RefCell::new(History {
            phase: Phase::Boot,
            genesis_at_ms: 0,
            window_at_ms: 0,
            acks: Vec::new(),
            pending: BTreeMap::new(),
            refused: 0,
            forged: Vec::new(),
            forgery_queue: VecDeque::new(),
            clients_done: 0,
            keys: BTreeMap::new(),
            key_attempts: BTreeMap::new(),
            sent: BTreeMap::new(),
            sign_acks: Vec::new(),
            sign_pending: BTreeMap::new(),
            sign_anomalies: Vec::new(),
            conflicts_refused: 0,
            withheld: BTreeSet::new(),
            approvals_applied: 0,
            signing_clients_done: 0,
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
    /// The keys of [`APPROVERS`], in order.
    pub approvers: Vec<SigningKey>,
    pub net: SharedNet,
    pub now: SimNow,
    pub history: SharedHistory,
    pub trace: SharedTrace,
    pub writes_after_heal: u32,
    pub signs_after_heal: u32,
    /// Whether the admin also generates a second key while the faults are on.
    pub keygen_during_faults: bool,
}

impl ClientCtx {
    fn now_ms(&self) -> u64 {
        self.now.load(Ordering::Relaxed)
    }

    fn event(&self, text: String) {
        self.trace.borrow_mut().event(self.now_ms(), text);
    }

    fn healed(&self) -> bool {
        matches!(self.history.borrow().phase, Phase::Healed { .. })
    }

    fn random_node(&self, rng: &mut ChaCha8Rng) -> NodeId {
        1 + rng.next_u64() % self.nodes
    }

    fn anomaly(&self, text: String) {
        self.event(format!("ANOMALY {text}"));
        self.history.borrow_mut().sign_anomalies.push(text);
    }

    fn sign(&self, key: &SigningKey, rng: &mut ChaCha8Rng, command: Command) -> SignedCommand {
        let envelope = Envelope::new(self.cluster_id.clone(), command, EPOCH_MS + self.now_ms(), COMMAND_TTL_MS, rng);
        SignedCommand::sign(&envelope, key)
    }

    /// Sends `submission` to `first`, following leader hints and retrying
    /// elsewhere on errors, for at most `attempts` tries.
    async fn submit(
        &self,
        submission: Submission<'_>,
        first: NodeId,
        rng: &mut ChaCha8Rng,
        attempts: u32,
    ) -> Option<WriteResponse> {
        let mut target = first;
        for _ in 0..attempts {
            let answer = match submission {
                Submission::Command(command) => {
                    let request = ClientRequest::Write { command: command.clone() };
                    call_node(&self.net, target, &request, CALL_TIMEOUT, written).await
                }
                Submission::Raw(entry) => net::propose_raw_call(&self.net, target, entry, CALL_TIMEOUT).await,
            };
            match answer {
                Ok(Ok(response)) => return Some(response),
                Ok(Err(e)) if e.leader().is_some_and(|hint| hint.node_id != target) => {
                    target = e.leader().map_or(target, |hint| hint.node_id)
                }
                _ => {
                    target = 1 + rng.next_u64() % self.nodes;
                    tokio::time::sleep(Duration::from_millis(20 + rng.next_u64() % 80)).await;
                }
            }
        }
        None
    }
}

/// What [`ClientCtx::submit`] sends: a client's signed command, or the
/// byzantine leader's raw log entry.
#[derive(Clone, Copy)]
enum Submission<'a> {
    Command(&'a SignedCommand),
    Raw(&'a LogEntry),
}

/// A client call through `Node::serve_client`, taking the answer of the
/// expected shape (`written`, `request_info`, `key_info`).
async fn call_node<T>(
    net: &net::SharedNet,
    to: NodeId,
    request: &ClientRequest,
    timeout: Duration,
    shape: fn(ClientResponse) -> Option<T>,
) -> Result<Result<T, NodeError>, net::CallError> {
    let answer = net::client_call(net, to, request, timeout).await?;
    Ok(answer.and_then(|r| shape(r).ok_or_else(|| NodeError::internal("the node answered another call"))))
}

fn written(response: ClientResponse) -> Option<WriteResponse> {
    match response {
        ClientResponse::Written(w) => Some(w),
        _ => None,
    }
}

fn request_info(response: ClientResponse) -> Option<RequestInfo> {
    match response {
        ClientResponse::Request(info) => Some(*info),
        _ => None,
    }
}

fn key_info(response: ClientResponse) -> Option<KeyInfo> {
    match response {
        ClientResponse::Key(info) => Some(*info),
        _ => None,
    }
}

/// A sign request, waiting up to [`net::SIGN_WAIT`] for its outcome.
fn sign_call(command: &SignedCommand) -> ClientRequest {
    ClientRequest::Sign { command: command.clone(), wait_ms: net::SIGN_WAIT.as_millis() as u64 }
}

/// A request read, waiting up to `wait` while it is open.
fn get_request(request_id: &str, wait: Duration) -> ClientRequest {
    ClientRequest::GetRequest { request_id: request_id.to_string(), wait_ms: wait.as_millis() as u64 }
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
        let init = ClientRequest::Init { command: command.clone() };
        match call_node(&ctx.net, 1, &init, Duration::from_secs(20), written).await {
            Ok(Ok(response)) if response.outcome.is_applied() => break,
            // An earlier attempt committed it and only the answer was lost.
            Ok(Err(NodeError::Conflict { .. })) => break,
            other => {
                ctx.event(format!("boot: init not done yet: {other:?}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let mut history = ctx.history.borrow_mut();
    history.phase = Phase::Setup;
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
            .submit(Submission::Command(&signed), first, &mut rng, u32::MAX)
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
                Outcome::Rejected { reason, .. } if reason.contains("replay") => {
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
        let (entry, replayed_key) = forge(&ctx, &mut rng, fault_id, forgery);
        let response = ctx.submit(Submission::Raw(&entry), leader, &mut rng, 10).await;
        let outcome = response.map(|r| r.outcome);
        ctx.event(format!("adversary: forgery #{fault_id} {forgery:?} -> {outcome:?}"));
        ctx.history.borrow_mut().forged.push(ForgedResult { fault_id, forgery, replayed_key, outcome });
    }
    ctx.history.borrow_mut().clients_done += 1;
    Ok(())
}

/// A forged entry, and for a replay the key of the write it proposes again.
fn forge(ctx: &ClientCtx, rng: &mut ChaCha8Rng, fault_id: usize, forgery: Forgery) -> (LogEntry, Option<String>) {
    let put = Command::Put { key: format!("{FORGED_PREFIX}{fault_id}"), value: "x".into() };
    let replayable =
        ctx.history.borrow().acks.iter().rev().find(|a| a.index.is_some()).map(|a| (a.command.clone(), a.key.clone()));
    let mut replayed_key = None;
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
        Forgery::Replay => match replayable {
            Some((command, key)) => {
                replayed_key = Some(key);
                command
            }
            None => ctx.sign(&ctx.stranger, rng, put),
        },
    };
    (LogEntry { time_ms: EPOCH_MS + ctx.now_ms(), command }, replayed_key)
}

/// A key's threshold for `participants`: a majority (at least 2, FROST's minimum).
pub fn key_threshold(participants: u64) -> u16 {
    (participants / 2 + 1).max(2) as u16
}

/// The admin's `synod key create`: [`KEY_NAME`] right after genesis, before
/// any fault, then its approvers and its policy (the driver opens the fault
/// window once the key is active and its policy committed), then, if asked,
/// [`KEY_NAME_FAULTS`] at a random moment of the fault window. Each key is over
/// every node with a majority threshold and is created again whenever its
/// generation aborts (the name is then free), until a node reports it active;
/// a participant an abort names as the culprit is left out of the next
/// attempt, as an operator would.
/// A node refuses to start a generation while a participant is unreachable
/// (503); that is retried too.
pub async fn keygen_client(ctx: ClientCtx) -> turmoil::Result {
    let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed ^ 0x6b65_7967);
    while ctx.history.borrow().phase == Phase::Boot {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let participants: Vec<NodeId> = (1..=ctx.nodes).collect();
    let ack = create_key(&ctx, &mut rng, KEY_NAME, &participants).await;
    set_up_approvals(&ctx, &mut rng).await;
    ctx.history.borrow_mut().keys.insert(KEY_NAME.to_string(), ack);
    if ctx.keygen_during_faults {
        while ctx.history.borrow().phase == Phase::Setup {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.next_u64() % 10_000)).await;
        let ack = create_key(&ctx, &mut rng, KEY_NAME_FAULTS, &participants).await;
        ctx.history.borrow_mut().keys.insert(KEY_NAME_FAULTS.to_string(), ack);
    }
    ctx.history.borrow_mut().clients_done += 1;
    Ok(())
}

/// The policy of [`KEY_NAME`]: requests declaring an [`AMOUNT`] above
/// [`AMOUNT_APPROVAL_ABOVE`] (or none) need [`APPROVALS_REQUIRED`] of the [`APPROVERS`].
pub fn sim_policy() -> Policy {
    let approvers: Vec<String> = APPROVERS.iter().map(|a| a.to_string()).collect();
    Policy {
        approvers,
        tiers: vec![Tier {
            attribute: AMOUNT.into(),
            above: AMOUNT_APPROVAL_ABOVE,
            approvals_required: APPROVALS_REQUIRED,
            approvers: Vec::new(),
        }],
        ..Policy::default()
    }
}

/// Registers the approvers and sets [`KEY_NAME`]'s policy (before any fault).
async fn set_up_approvals(ctx: &ClientCtx, rng: &mut ChaCha8Rng) {
    let mut commands: Vec<Command> = APPROVERS
        .iter()
        .zip(&ctx.approvers)
        .map(|(name, key)| Command::AddOperator {
            name: name.to_string(),
            key: Some(OperatorKey::of(key)),
            ssh_key: None,
            roles: vec![Role::Approver],
        })
        .collect();
    commands.push(Command::SetPolicy { key: KEY_NAME.into(), policy: sim_policy() });
    for command in commands {
        let kind = command.kind();
        loop {
            let signed = ctx.sign(&ctx.admin, rng, command.clone());
            let first = ctx.random_node(rng);
            let response = ctx.submit(Submission::Command(&signed), first, rng, 20).await;
            match response.map(|r| r.outcome) {
                Some(Outcome::Applied { detail }) => {
                    ctx.event(format!("admin: {kind}: {detail}"));
                    break;
                }
                // An earlier attempt applied without an answer.
                Some(Outcome::Rejected { reason, .. }) if reason.contains("already exists") => break,
                other => ctx.event(format!("admin: {kind} not applied yet: {other:?}")),
            }
        }
    }
}

/// Creates the key `name` (again, when a generation aborts) until a node reports it active.
async fn create_key(ctx: &ClientCtx, rng: &mut ChaCha8Rng, name: &str, participants: &[NodeId]) -> KeyAck {
    let mut participants = participants.to_vec();
    // The id of the last generation this client started (a key's id is its create command's id).
    let mut last_attempt: Option<String> = None;
    let mut target = ctx.random_node(rng);
    loop {
        let info =
            call_node(&ctx.net, target, &ClientRequest::GetKey { name: name.to_string() }, CALL_TIMEOUT, key_info)
                .await;
        target = ctx.random_node(rng);
        match info {
            Ok(Ok(info)) if info.status == KeyStatus::Active => {
                let group_key = info.public_key.unwrap_or_default();
                ctx.event(format!("admin: key {name} ({}) active, group key {}", info.id, short(&group_key)));
                return KeyAck { id: info.id, name: name.to_string(), group_key, at_ms: ctx.now_ms() };
            }
            Ok(Ok(info)) if info.status == KeyStatus::Generating => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            // Aborted, or unknown to that node: create it (again). A node that lags
            // behind a generation in progress makes this a second create_key, which
            // the state machine refuses because the name is taken.
            Ok(Ok(_)) | Ok(Err(NodeError::NotFound { .. })) => {}
            _ => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        // Why the last attempt ended (the name is free again): leave out a culprit.
        if let Some(id) = &last_attempt {
            let previous =
                call_node(&ctx.net, target, &ClientRequest::GetKey { name: id.clone() }, CALL_TIMEOUT, key_info).await;
            if let Ok(Ok(KeyInfo { culprit: Some(culprit), abort_reason, .. })) = previous {
                if participants.contains(&culprit) {
                    participants.retain(|p| *p != culprit);
                    ctx.event(format!(
                        "admin: key {name} aborted naming n{culprit} the culprit ({}); creating it without n{culprit}",
                        abort_reason.unwrap_or_default()
                    ));
                }
            }
        }
        let threshold = key_threshold(participants.len() as u64);
        let command = Command::CreateKey { name: name.to_string(), threshold, participants: participants.clone() };
        let signed = ctx.sign(&ctx.admin, rng, command);
        last_attempt = signed.verify().ok().map(|envelope| envelope.command_id);
        *ctx.history.borrow_mut().key_attempts.entry(name.to_string()).or_default() += 1;
        let create = ClientRequest::CreateKey { command: signed.clone() };
        let answer = call_node(&ctx.net, target, &create, CREATE_KEY_TIMEOUT, written).await;
        let what = match answer {
            Ok(Ok(response)) => format!("{:?} at index {}", response.outcome, response.index),
            Ok(Err(e)) => format!("error: {e}"),
            Err(e) => format!("no answer ({e:?})"),
        };
        ctx.event(format!("admin: create key {name} ({threshold} of {participants:?}) via n{target}: {what}"));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The first 12 characters of a hex string, for the trace.
fn short(hex: &str) -> &str {
    &hex[..12.min(hex.len())]
}

/// A `sign_request` command declaring `amount` (see [`sim_policy`]). Built
/// from JSON rather than a struct literal so that it builds against every
/// version of `Command::SignRequest` that has these fields: later optional
/// fields take their defaults.
pub fn sign_request_command(request_id: &str, key: &str, message_hex: &str, amount: u64) -> Command {
    serde_json::from_value(serde_json::json!({
        "type": "sign_request",
        "request_id": request_id,
        "key": key,
        "message": message_hex,
        "purpose": "sim",
        "attributes": { AMOUNT: amount.to_string() },
    }))
    .expect("a sign_request command parses")
}

fn random_message(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut message = vec![0u8; 8 + (rng.next_u64() % 57) as usize];
    rng.fill_bytes(&mut message);
    message
}

/// One request a signing client makes.
pub struct Ask<'a> {
    pub client: usize,
    pub key: &'a str,
    pub request_id: &'a str,
    pub message: &'a [u8],
    /// The declared amount (see [`sim_policy`]).
    pub amount: u64,
    pub approval: Approval,
}

impl Ask<'_> {
    /// A new command asking for `message_hex` under this request's id.
    fn command(&self, ctx: &ClientCtx, rng: &mut ChaCha8Rng, message_hex: &str) -> SignedCommand {
        ctx.sign(&ctx.admin, rng, sign_request_command(self.request_id, self.key, message_hex, self.amount))
    }
}

/// One signing client: once the key is active, signs random messages until the
/// heal, then `signs_after_heal` more. Each request is followed until a node
/// answers `signed`; now and then the client re-sends a signed request (it must
/// get the same signature) or sends another message under a committed request
/// id (it must be refused). Some requests on [`KEY_NAME`] declare a large
/// amount and need approvals: most are approved by the approvers (and followed
/// until signed), the others are followed for a while and abandoned.
pub async fn signing_client(ctx: ClientCtx, client: usize) -> turmoil::Result {
    let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed ^ (0x5167_0000 + client as u64));
    while !ctx.history.borrow().keys.contains_key(KEY_NAME) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut after_heal = 0;
    for seq in 0.. {
        if ctx.healed() {
            if after_heal == ctx.signs_after_heal {
                break;
            }
            after_heal += 1;
        }
        // Every other request uses the key generated under faults, once it is active.
        let key = if seq % 2 == 1 && ctx.history.borrow().keys.contains_key(KEY_NAME_FAULTS) {
            KEY_NAME_FAULTS
        } else {
            KEY_NAME
        };
        let request_id = format!("s{client}-{seq:04}");
        let message = random_message(&mut rng);
        let large = key == KEY_NAME && rng.next_u64() % 100 < LARGE_REQUEST_P;
        let (amount, approval) = match (large, rng.next_u64() % 100 < WITHHELD_P) {
            (false, _) => (1 + rng.next_u64() % AMOUNT_APPROVAL_ABOVE, Approval::NotNeeded),
            (true, withheld) => (
                AMOUNT_APPROVAL_ABOVE + 1 + rng.next_u64() % 1_000_000,
                if withheld { Approval::Withheld } else { Approval::Given },
            ),
        };
        let ask = Ask { client, key, request_id: &request_id, message: &message, amount, approval };
        if approval == Approval::Withheld {
            follow_withheld(&ctx, &mut rng, &ask).await;
        } else {
            let signature = sign_until_signed(&ctx, &mut rng, &ask).await;
            if rng.next_u64() % 100 < SIGN_RETRY_P {
                resend_signed(&ctx, &mut rng, &ask, &signature).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.next_u64() % SIGN_PAUSE_MS_MAX)).await;
    }
    let mut history = ctx.history.borrow_mut();
    history.clients_done += 1;
    history.signing_clients_done += 1;
    drop(history);
    ctx.event(format!("s{client}: done"));
    Ok(())
}

/// Records a request a client is about to send for the first time.
fn record_sent(ctx: &ClientCtx, ask: &Ask) {
    let mut history = ctx.history.borrow_mut();
    let sent = SentRequest {
        client: ask.client,
        message: ask.message.to_vec(),
        message_sha256: hex::encode(sha2::Sha256::digest(ask.message)),
        conflicts: Vec::new(),
        submitted_at_ms: ctx.now_ms(),
        approval: ask.approval,
    };
    history.sent.insert(ask.request_id.to_string(), sent);
    match ask.approval {
        Approval::Withheld => history.withheld.insert(ask.request_id.to_string()),
        _ => history.sign_pending.insert(ask.request_id.to_string(), ctx.now_ms()).is_none(),
    };
}

/// Sends a request the approvers leave unapproved and follows it for
/// [`WITHHELD_FOLLOW_MS`] after a node first shows it committed: it must stay
/// `awaiting_approval` (the checkers judge every node's state; the client's
/// view is traced).
async fn follow_withheld(ctx: &ClientCtx, rng: &mut ChaCha8Rng, ask: &Ask<'_>) {
    record_sent(ctx, ask);
    let signed = ask.command(ctx, rng, &hex::encode(ask.message));
    let mut committed_at: Option<u64> = None;
    let mut last = String::new();
    while committed_at.is_none_or(|at| ctx.now_ms() < at + WITHHELD_FOLLOW_MS) {
        let target = ctx.random_node(rng);
        let answer = if committed_at.is_none() {
            call_node(&ctx.net, target, &sign_call(&signed), SIGN_CALL_TIMEOUT, request_info).await
        } else {
            call_node(&ctx.net, target, &get_request(ask.request_id, Duration::ZERO), CALL_TIMEOUT, request_info).await
        };
        match answer {
            Ok(Ok(info)) => {
                committed_at.get_or_insert(ctx.now_ms());
                if info.status.to_string() != last {
                    ctx.event(format!(
                        "s{}: {} (withheld) is {} on n{target}",
                        ask.client, ask.request_id, info.status
                    ));
                    last = info.status.to_string();
                }
            }
            Ok(Err(NodeError::Refused { message })) if message.contains("replay") => {
                committed_at.get_or_insert(ctx.now_ms());
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(100 + rng.next_u64() % 200)).await;
    }
    ctx.event(format!("s{}: {} left unapproved", ask.client, ask.request_id));
}

/// Submits a sign request and follows it until a node answers `signed`; returns the signature.
async fn sign_until_signed(ctx: &ClientCtx, rng: &mut ChaCha8Rng, ask: &Ask<'_>) -> String {
    let (client, request_id, message) = (ask.client, ask.request_id, ask.message);
    let message_hex = hex::encode(message);
    let message_sha256 = hex::encode(sha2::Sha256::digest(message));
    let mut signed = ask.command(ctx, rng, &message_hex);
    record_sent(ctx, ask);
    // Submit (the same command again is idempotent while the request is pending
    // or signed), then poll with reads, which write nothing. A failed request is
    // retried with a new command (same id, same message), which starts a fresh
    // attempt; the same command again would be refused as a replay.
    let mut submit = true;
    let mut not_found = 0;
    let mut conflict_tried = false;
    let mut target = ctx.random_node(rng);
    loop {
        let answer = if submit {
            call_node(&ctx.net, target, &sign_call(&signed), SIGN_CALL_TIMEOUT, request_info).await
        } else {
            call_node(&ctx.net, target, &get_request(request_id, net::SIGN_WAIT), SIGN_CALL_TIMEOUT, request_info).await
        };
        match answer {
            Ok(Ok(info)) => {
                if info.message_sha256 != message_sha256 {
                    ctx.anomaly(format!(
                        "{request_id}: n{target} answered for message {} but the client sent {}",
                        short(&info.message_sha256),
                        short(&message_sha256)
                    ));
                }
                // The request is committed: now a second message under its id must be refused.
                if !conflict_tried && rng.next_u64() % 100 < SIGN_CONFLICT_P {
                    conflict_tried = true;
                    send_conflict(ctx, rng, ask).await;
                }
                match (info.status, info.signature) {
                    (RequestStatus::Signed, Some(signature)) => {
                        let mut history = ctx.history.borrow_mut();
                        history.sign_pending.remove(request_id);
                        let ack = SignAck {
                            request_id: request_id.to_string(),
                            signature: signature.clone(),
                            at_ms: ctx.now_ms(),
                            retry: false,
                        };
                        history.sign_acks.push(ack);
                        drop(history);
                        ctx.event(format!(
                            "s{client}: {request_id} signed by {:?} in {} sessions via n{target}: {}",
                            info.signers,
                            info.sessions,
                            short(&signature)
                        ));
                        return signature;
                    }
                    (RequestStatus::Signed, None) => {
                        ctx.anomaly(format!("{request_id}: n{target} answered signed without a signature"));
                    }
                    (RequestStatus::Failed, _) => {
                        ctx.event(format!(
                            "s{client}: {request_id} failed: {}; sending it again",
                            info.error.unwrap_or_default()
                        ));
                        submit = true;
                        signed = ask.command(ctx, rng, &message_hex);
                        tokio::time::sleep(Duration::from_millis(200 + rng.next_u64() % 200)).await;
                    }
                    // Pending (or awaiting approval): poll; a read waits for the outcome itself.
                    _ => {
                        submit = false;
                        not_found = 0;
                    }
                }
            }
            Ok(Err(NodeError::Conflict { message })) => {
                ctx.anomaly(format!("{request_id}: its own first message was refused as a second one: {message}"));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Ok(Err(NodeError::Refused { message })) if message.contains("replay") => {
                // This command was applied before (the request has failed since): a new one.
                signed = ask.command(ctx, rng, &message_hex);
                target = ctx.random_node(rng);
            }
            Ok(Err(NodeError::NotFound { .. })) if !submit => {
                // That node has not applied the request (yet); after a few misses, submit again.
                not_found += 1;
                submit = not_found >= 3;
                target = ctx.random_node(rng);
                tokio::time::sleep(Duration::from_millis(50 + rng.next_u64() % 100)).await;
            }
            Ok(Err(e)) => {
                target = match e.leader() {
                    Some(hint) if hint.node_id != target => hint.node_id,
                    _ => ctx.random_node(rng),
                };
                tokio::time::sleep(Duration::from_millis(50 + rng.next_u64() % 100)).await;
            }
            Err(_) => {
                target = ctx.random_node(rng);
                tokio::time::sleep(Duration::from_millis(20 + rng.next_u64() % 80)).await;
            }
        }
    }
}

/// Sends another message under a committed request id; it must be refused.
async fn send_conflict(ctx: &ClientCtx, rng: &mut ChaCha8Rng, ask: &Ask<'_>) {
    let (client, request_id, message) = (ask.client, ask.request_id, ask.message);
    let mut other = random_message(rng);
    if other == message {
        other.push(0);
    }
    let other_hex = hex::encode(&other);
    if let Some(sent) = ctx.history.borrow_mut().sent.get_mut(request_id) {
        sent.conflicts.push(other_hex.clone());
    }
    let signed = ask.command(ctx, rng, &other_hex);
    for _ in 0..5 {
        let target = ctx.random_node(rng);
        let answer = call_node(&ctx.net, target, &sign_call(&signed), SIGN_CALL_TIMEOUT, request_info).await;
        match answer {
            // Answered with the request under that id: accepted only if it now names the second message.
            Ok(Ok(info)) => {
                let other_sha256 = hex::encode(sha2::Sha256::digest(&other));
                if info.message_sha256 == other_sha256 {
                    ctx.anomaly(format!(
                        "{request_id}: a second message ({}) was accepted by n{target}: status {}",
                        short(&other_sha256),
                        info.status
                    ));
                } else {
                    ctx.event(format!(
                        "s{client}: second message under {request_id}: n{target} answered with the first one ({})",
                        info.status
                    ));
                }
                return;
            }
            // A conflict: refused as a second message; refused: an earlier attempt of
            // this very command was refused already and this one is a replay of it.
            Ok(Err(e @ (NodeError::Conflict { .. } | NodeError::Refused { .. }))) => {
                ctx.history.borrow_mut().conflicts_refused += 1;
                ctx.event(format!("s{client}: second message under {request_id} refused ({e})"));
                return;
            }
            _ => tokio::time::sleep(Duration::from_millis(50 + rng.next_u64() % 100)).await,
        }
    }
}

/// Re-sends a signed request as a new command (same id, same message): the
/// answer must be the stored signature. A node that has not applied the
/// outcome within its wait answers from its stale state (`pending`, or
/// `failed` from an earlier attempt); that is asked again elsewhere.
async fn resend_signed(ctx: &ClientCtx, rng: &mut ChaCha8Rng, ask: &Ask<'_>, signature: &str) {
    let (client, request_id) = (ask.client, ask.request_id);
    let signed = ask.command(ctx, rng, &hex::encode(ask.message));
    for _ in 0..5 {
        let target = ctx.random_node(rng);
        let answer = call_node(&ctx.net, target, &sign_call(&signed), SIGN_CALL_TIMEOUT, request_info).await;
        match answer {
            Ok(Ok(RequestInfo { status: RequestStatus::Signed, signature: Some(again), .. })) => {
                let same = if again == signature { "the same signature" } else { "ANOTHER signature" };
                ctx.event(format!("s{client}: {request_id} re-sent via n{target}: {same}"));
                let ack =
                    SignAck { request_id: request_id.to_string(), signature: again, at_ms: ctx.now_ms(), retry: true };
                ctx.history.borrow_mut().sign_acks.push(ack);
                return;
            }
            Ok(Err(NodeError::Conflict { message })) => {
                ctx.anomaly(format!("{request_id}: re-sending the same message was refused: {message}"));
                return;
            }
            _ => tokio::time::sleep(Duration::from_millis(50 + rng.next_u64() % 100)).await,
        }
    }
}

/// The approvers: for every request they are to approve that is still
/// unsigned, once a node shows it awaiting approval, approvers not yet counted
/// (from a random one on) sign the approval statement built from what that
/// node shows and submit it. A failed request sent again is a fresh attempt,
/// approved again. Stops once every signing client has finished.
pub async fn approver_client(ctx: ClientCtx, signing_clients: usize) -> turmoil::Result {
    let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed ^ 0xa99_0000);
    loop {
        let (done, wanted) = {
            let history = ctx.history.borrow();
            let wanted: Vec<String> = history
                .sign_pending
                .keys()
                .filter(|id| history.sent.get(*id).is_some_and(|s| s.approval == Approval::Given))
                .cloned()
                .collect();
            (history.signing_clients_done >= signing_clients, wanted)
        };
        if done && wanted.is_empty() {
            break;
        }
        for request_id in wanted {
            approve(&ctx, &mut rng, &request_id).await;
        }
        tokio::time::sleep(Duration::from_millis(50 + rng.next_u64() % 100)).await;
    }
    ctx.history.borrow_mut().clients_done += 1;
    ctx.event("approvers: done".into());
    Ok(())
}

/// Reads `request_id` from a random node and, if it awaits approval, gives the approvals it lacks.
async fn approve(ctx: &ClientCtx, rng: &mut ChaCha8Rng, request_id: &str) {
    let target = ctx.random_node(rng);
    let answer =
        call_node(&ctx.net, target, &get_request(request_id, Duration::ZERO), CALL_TIMEOUT, request_info).await;
    let Ok(Ok(info)) = answer else { return };
    let sent_sha256 = ctx.history.borrow().sent.get(request_id).map(|s| s.message_sha256.clone());
    // An approver checks what it approves: the message the client sent, nothing else.
    if info.status != RequestStatus::AwaitingApproval || sent_sha256.as_deref() != Some(info.message_sha256.as_str()) {
        return;
    }
    let statement = ApprovalStatement {
        cluster_id: ctx.cluster_id.clone(),
        request_id: request_id.to_string(),
        requester: info.requester,
        key_id: info.key_id.clone(),
        key_version: info.key_version,
        message_sha256: info.message_sha256.clone(),
        purpose: info.purpose.clone(),
        environment: info.environment.clone(),
        attributes: info.attributes.clone(),
        policy_version: info.policy_version,
        expires_at_ms: info.expires_at_ms,
    };
    let bytes = approval_bytes(&statement);
    let have = APPROVERS.iter().filter(|a| info.approvals.iter().any(|x| x == *a)).count();
    let mut missing = (APPROVALS_REQUIRED as usize).saturating_sub(have);
    let first = rng.next_u64() as usize % APPROVERS.len();
    for i in (0..APPROVERS.len()).map(|i| (first + i) % APPROVERS.len()) {
        if missing == 0 {
            break;
        }
        let name = APPROVERS[i];
        if info.approvals.iter().any(|x| x == name) {
            continue;
        }
        missing -= 1;
        let key = &ctx.approvers[i];
        let signature = ApprovalSignature::Ed25519 { signature: hex::encode(key.sign(&bytes).to_bytes()) };
        let command = Command::Approve { request_id: request_id.to_string(), approver: name.to_string(), signature };
        // The approval signature is the authority; the approver signs the envelope too.
        let signed = ctx.sign(key, rng, command);
        let outcome = ctx.submit(Submission::Command(&signed), target, rng, 5).await.map(|r| r.outcome);
        if let Some(Outcome::Applied { detail }) = &outcome {
            ctx.history.borrow_mut().approvals_applied += 1;
            ctx.event(format!("approvers: {detail}"));
        } else {
            ctx.event(format!("approvers: {name} on {request_id}: {outcome:?}"));
        }
    }
}

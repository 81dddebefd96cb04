//! The simulated users of the cluster: the bootstrap client that runs
//! `cluster init`, the workload clients, the admin who creates the signing key
//! (and gives it a policy that needs human approvals above an amount), the
//! signing clients, the approvers, and the byzantine adversary.
//!
//! Everything they learn goes into the shared [`History`], which the checkers
//! read: which writes were acknowledged, at which index, what happened to
//! each forged entry, which message was sent under each request id and which
//! signatures the cluster acknowledged.
//!
//! One file per client; the driver (`run.rs`) starts them all on one turmoil
//! host, each with its own ChaCha RNG seeded from the run's seed:
//! - `boot.rs`: the genesis command and `cluster init` ([`boot_client`]).
//! - `kv.rs`: the key-value writers ([`KvWorkload`], [`workload_client`]).
//! - `adversary.rs`: the byzantine leader's forged proposals ([`adversary()`]).
//! - `keys.rs`: the admin: key creation by DKG, leaving out a culprit an
//!   aborted generation names, and the key's approvers and policy
//!   ([`keygen_client`], [`sim_policy`]).
//! - `signing.rs`: the signing clients: sign until signed, re-sends, second
//!   messages under one id, withheld requests ([`signing_client`]).
//! - `formats.rs`: what the signing clients' requests are in (raw bytes,
//!   SSHSIG blobs, minisign digests) and the format probes the cluster must
//!   refuse ([`FormatProbe`]).
//! - `approvers.rs`: the approvers ([`approver_client`]).
//! - `lifecycle.rs`: a key created, disabled, enabled and destroyed inside
//!   the fault window while requests keep coming ([`lifecycle_client`]).
//!
//! This file holds what they share: the [`History`] and its records, the
//! [`ClientCtx`] every client gets (signing commands, submitting writes with
//! leader-hint retries, trace events), the client call through
//! `Node::serve_client` and the knobs more than one client reads.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use rand_chacha::ChaCha8Rng;
use rand_core::RngCore;
use synod_node::node::ClientResponse;
use synod_proto::api::{ClientRequest, CommandOutcome, CommandStatus, KeyInfo, RequestInfo, WriteResponse};
use synod_proto::NodeError;
use synod_proto::{Command, Envelope, LogEntry, NodeId, Outcome, SignedCommand};

use crate::cluster::{SimNow, EPOCH_MS};
use crate::net::{self, SharedNet};
use crate::schedule::Forgery;
use crate::trace::SharedTrace;

mod adversary;
mod approvers;
mod boot;
mod formats;
mod keys;
mod kv;
pub mod lifecycle;
mod signing;

pub use adversary::adversary;
pub use approvers::approver_client;
pub use boot::{boot_client, genesis_by, GenesisOf};
pub use formats::{key_faults_policy, FormatProbe, ProbeKind, Shaped, KEY_FAULTS_NAMESPACE};
pub use keys::{key_threshold, keygen_client, sim_policy, CREATE_KEY_TIMEOUT};
pub use kv::{workload_client, KvWorkload};
pub use lifecycle::{lifecycle_client, LIFE_KEY};
pub use signing::{
    sign_request_command, signing_client, Ask, LARGE_REQUEST_P, SIGN_CALL_TIMEOUT, SIGN_CONFLICT_P, SIGN_PAUSE_MS_MAX,
    SIGN_RETRY_P, WITHHELD_FOLLOW_MS, WITHHELD_P,
};

/// How long a signed command stays valid: far longer than any run.
pub const COMMAND_TTL_MS: u64 = 10 * 60 * 1000;
/// How long a client waits for one attempt at a write.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How many nodes one command lookup tries before it gives up.
pub const LOOKUP_ATTEMPTS: u32 = 3;
/// How many lookups a client makes for a write whose answer was lost before
/// it sends the write again (the CLI asks for a while, then resends). After a
/// refusal that may follow a proposal (a 503) it asks once, as the CLI does.
pub const FATE_ASKS: u32 = 4;
/// One in this many ordinary acknowledgements is followed by a lookup of the
/// write on a random node.
pub const LOOKUP_SAMPLE_ONE_IN: u64 = 4;
/// The node id a forged membership change tries to add.
pub const FORGED_NODE: NodeId = 99;
/// The key prefix of forged writes; no node may ever hold such a key.
pub const FORGED_PREFIX: &str = "forged/";
/// The reason a forged signing outcome gives; no request may ever fail with it.
pub const FORGED_REASON: &str = "forged by the adversary";
/// The name of the threshold key the admin creates before the fault window.
pub const KEY_NAME: &str = "sim-key";
/// The name of the key the admin generates while the faults are on.
pub const KEY_NAME_FAULTS: &str = "sim-key-2";

/// The operators who approve [`KEY_NAME`]'s large requests (Ed25519 keys from the seed).
pub const APPROVERS: [&str; 3] = ["approver-1", "approver-2", "approver-3"];
/// The attribute [`KEY_NAME`]'s policy reads: requests declaring more than
/// [`AMOUNT_APPROVAL_ABOVE`] need [`APPROVALS_REQUIRED`] approvals.
pub const AMOUNT: &str = "amount";
pub const AMOUNT_APPROVAL_ABOVE: u64 = 1_000;
pub const APPROVALS_REQUIRED: u32 = 2;

/// What clients submit.
pub trait Workload {
    /// The next command of client `client`; `seq` counts its commands from 0.
    fn next_command(&mut self, client: usize, seq: u64, rng: &mut ChaCha8Rng) -> Command;
}

/// A write the cluster acknowledged.
#[derive(Clone, Debug)]
pub struct Ack {
    pub key: String,
    pub value: String,
    /// The index the cluster named: the write's answer, or, when that answer
    /// was lost or a retry was refused as a replay, a node's record of the
    /// command (`GetCommand`). `None` only when a retry was refused as a
    /// replay and no node could then be asked.
    pub index: Option<u64>,
    /// The signed command, which identifies its entry in the log.
    pub command: SignedCommand,
    pub at_ms: u64,
}

/// Why a client asked a node what became of one of its commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LookupCause {
    /// An attempt's answer was lost (or was an error that may follow a proposal).
    Lost,
    /// A retry was refused as a replay: the first attempt applied unseen.
    Replay,
    /// A sampled check after an ordinary acknowledgement.
    Sampled,
    /// The adversary proposed the command again and asks each node what it kept.
    AfterReplay,
}

/// One answer to `ClientRequest::GetCommand` about a kv write.
#[derive(Clone, Debug)]
pub struct Lookup {
    /// The write's key (`c{client}/{seq}`).
    pub key: String,
    /// The signed command asked about: its signature identifies its entries in the log.
    pub command: SignedCommand,
    /// The node that answered.
    pub node: NodeId,
    pub cause: LookupCause,
    pub answer: CommandOutcome,
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
    /// The format it declared (rules 9); raw when `None`.
    pub format: Option<synod_proto::format::SignFormat>,
    /// minisign: the trusted comment its global signature must cover.
    pub trusted_comment: Option<String>,
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
    /// Every answer a node gave to a command lookup, in order.
    pub lookups: Vec<Lookup>,
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
    /// Requests the cluster must refuse for their format, by request id
    /// (see [`FormatProbe`]).
    pub format_probes: BTreeMap<String, FormatProbe>,
    /// What the signing clients sent, by format label (`raw`, `sshsig/git`,
    /// `minisign`, ...), and what became of minisign's global signatures:
    /// the run's report prints them.
    pub format_counts: BTreeMap<String, u64>,
    /// The passkey approvers' credentials as the workload made them (credential
    /// id → public key), which the passkeys checker verifies approvals with,
    /// independently of any node's registry.
    pub passkeys: BTreeMap<String, synod_proto::webauthn::CoseKey>,
}

pub type SharedHistory = Rc<RefCell<History>>;

/// The approver who approves with a passkey (registered through node 1's
/// console, approved by the admin), and the relying party of the simulation.
pub const PASSKEY_APPROVER: &str = "approver-3";
pub const PASSKEY_RP_ID: &str = "synod.sim";
pub const PASSKEY_ORIGIN: &str = "https://synod.sim";

impl History {
    pub fn new() -> SharedHistory {
        Rc::new(RefCell::new(History {
            phase: Phase::Boot,
            genesis_at_ms: 0,
            window_at_ms: 0,
            acks: Vec::new(),
            lookups: Vec::new(),
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
            format_probes: BTreeMap::new(),
            format_counts: BTreeMap::new(),
            passkeys: BTreeMap::new(),
        }))
    }
}

/// What every simulated client shares.
#[derive(Clone)]
pub struct ClientCtx {
    pub seed: u64,
    pub nodes: u64,
    /// The cluster id every envelope and approval names: derived from
    /// [`ClientCtx::genesis`].
    pub cluster_id: String,
    /// The name the genesis envelope carries.
    pub cluster_name: String,
    /// The genesis the boot client commits (built before any client starts).
    pub genesis: SignedCommand,
    /// The simulation's cluster CA (hex DER), named in genesis.
    pub ca_certificate: String,
    pub admin: SigningKey,
    pub stranger: SigningKey,
    /// Every node's certificate and key, by node id − 1: the adversary signs
    /// with a compromised member's (a [`Forgery::MemberOutcome`]).
    pub identities: Vec<std::sync::Arc<synod_node::pki::NodeIdentity>>,
    /// The keys of [`APPROVERS`], in order.
    pub approvers: Vec<SigningKey>,
    /// The passkey of [`PASSKEY_APPROVER`], who approves with WebAuthn
    /// assertions instead of the key above.
    pub passkey: Rc<RefCell<synod_proto::webauthn::soft::SoftAuthenticator>>,
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
        SignedCommand::sign(&self.envelope(rng, command), key)
    }

    fn envelope(&self, rng: &mut ChaCha8Rng, command: Command) -> Envelope {
        Envelope::new(self.cluster_id.clone(), command, EPOCH_MS + self.now_ms(), COMMAND_TTL_MS, rng)
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
                Submission::RawBy(build) => {
                    net::propose_raw_call(&self.net, target, &build(target), CALL_TIMEOUT).await
                }
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

/// What a client learned of one of its commands by asking nodes ([`ClientCtx::fate`]).
#[derive(Clone, Debug)]
pub enum Fate {
    /// A node recorded it: applied or refused, at an index.
    Known(CommandOutcome),
    /// A node says it did not commit and never can (past its expiry).
    Never(CommandOutcome),
    /// No node knew it (it may still commit), or none answered.
    Unknown,
}

impl ClientCtx {
    /// Asks one node what became of `command` (`GetCommand`), trying other
    /// nodes when a call fails, at most [`LOOKUP_ATTEMPTS`] calls. Every
    /// answer goes into [`History::lookups`] and the trace.
    async fn lookup(
        &self,
        command: &SignedCommand,
        key: &str,
        first: NodeId,
        cause: LookupCause,
        rng: &mut ChaCha8Rng,
    ) -> Option<CommandOutcome> {
        let envelope: Envelope = serde_json::from_str(&command.envelope).expect("a client's own envelope parses");
        let request = ClientRequest::GetCommand {
            command_id: envelope.command_id.clone(),
            expires_at_ms: Some(envelope.expires_at_ms),
        };
        let mut target = first;
        for _ in 0..LOOKUP_ATTEMPTS {
            if let Ok(Ok(answer)) = call_node(&self.net, target, &request, CALL_TIMEOUT, command_outcome).await {
                self.record_lookup(command, key, target, cause, &answer);
                return Some(answer);
            }
            target = self.random_node(rng);
            tokio::time::sleep(Duration::from_millis(20 + rng.next_u64() % 80)).await;
        }
        None
    }

    fn record_lookup(
        &self,
        command: &SignedCommand,
        key: &str,
        node: NodeId,
        cause: LookupCause,
        answer: &CommandOutcome,
    ) {
        self.event(format!(
            "lookup {key} ({cause:?}) on n{node}: {:?} index {:?} final {} applied {}",
            answer.status, answer.index, answer.is_final, answer.applied_index
        ));
        self.history.borrow_mut().lookups.push(Lookup {
            key: key.to_string(),
            command: command.clone(),
            node,
            cause,
            answer: answer.clone(),
            at_ms: self.now_ms(),
        });
    }

    /// What became of `command`, as the CLI learns it before it sends a write
    /// again: asks up to `asks` times (a random node each time, a pause
    /// between) until a node knows it or says it can never commit.
    async fn fate(
        &self,
        command: &SignedCommand,
        key: &str,
        cause: LookupCause,
        asks: u32,
        rng: &mut ChaCha8Rng,
    ) -> Fate {
        for ask in 0..asks {
            if ask > 0 {
                tokio::time::sleep(Duration::from_millis(50 + rng.next_u64() % 150)).await;
            }
            let first = self.random_node(rng);
            let Some(answer) = self.lookup(command, key, first, cause, rng).await else { continue };
            // Another author's command under the same id is not this one.
            let ours = answer.author.is_none_or(|a| a == command.author);
            match answer.status {
                CommandStatus::Applied | CommandStatus::Rejected if ours => return Fate::Known(answer),
                _ if answer.is_final => return Fate::Never(answer),
                _ => {}
            }
        }
        Fate::Unknown
    }
}

/// What [`ClientCtx::submit`] sends: a client's signed command, or the
/// byzantine leader's raw log entry.
#[derive(Clone, Copy)]
enum Submission<'a> {
    Command(&'a SignedCommand),
    Raw(&'a LogEntry),
    /// A raw log entry built for the node it is proposed on.
    RawBy(&'a dyn Fn(NodeId) -> LogEntry),
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

fn command_outcome(response: ClientResponse) -> Option<CommandOutcome> {
    match response {
        ClientResponse::Command(outcome) => Some(*outcome),
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

/// The first 12 characters of a hex string, for the trace.
fn short(hex: &str) -> &str {
    &hex[..12.min(hex.len())]
}

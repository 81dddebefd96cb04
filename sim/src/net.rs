//! The simulated network: [`PeerTransport`] over turmoil TCP, the server each
//! simulated node runs, and the calls clients make.
//!
//! Why turmoil TCP and not an in-memory bus: turmoil already gives simulated
//! latency, symmetric and one-way partitions, and host crashes that drop a
//! node's connections with its tasks, all driven by simulated time and the
//! seed; and bytes cross the wire in the production frame format
//! ([`synod_proto::rpc`]), so encoding limits are exercised too. Each call is
//! one connection carrying one frame each way, bounded by the caller's timeout
//! (turmoil TCP does not retransmit, so a lost segment would otherwise wedge
//! the call). QUIC and mutual TLS are not simulated yet: identity is the
//! turmoil host name, checked against the sender id in the header.
//!
//! Per-message faults (loss of a request or a response, duplication, jitter
//! that reorders concurrent calls, delay spikes, slow nodes, lost answers to
//! signing round 2) are decided here
//! from one seeded RNG, in the order calls are made, which the deterministic
//! scheduler fixes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::de::DeserializeOwned;
use serde::Serialize;
use synod_node::node::{ClientResponse, Node, NodeHandler};
use synod_node::transport::{PeerHandler, PeerTransport, TransportError};
use synod_proto::api::{ClientRequest, WriteResponse};
use synod_proto::rpc::{self, PeerRequest, PeerResponse};
use synod_proto::{LeaderHint, LogEntry, NodeError, NodeId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use turmoil::net::{TcpListener, TcpStream};

use crate::config::FaultPlan;

/// The port every simulated node listens on.
pub const PORT: u16 = 7000;

/// The turmoil host name of node `id`.
/// The turmoil host every client task runs on.
pub const CLIENTS_HOST: &str = "clients";

pub fn node_name(id: NodeId) -> String {
    format!("n{id}")
}

/// The address of node `id`, as written in genesis.
pub fn node_addr(id: NodeId) -> String {
    format!("{}:{PORT}", node_name(id))
}

/// What a connection carries, in the first byte of the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Node to node: a [`PeerRequest`], answered with a [`PeerResponse`].
    Peer = 0,
    /// Client to node: a [`ClientRequest`], served by `Node::serve_client`
    /// exactly as the HTTP API serves it; answered with a [`ClientResponse`]
    /// or a [`NodeError`].
    Client = 1,
    /// Adversary to leader: a [`LogEntry`] proposed straight to Raft, skipping
    /// `Node::write`'s checks. This is the byzantine leader; it exists only here.
    ProposeRaw = 2,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Peer, Kind::Client, Kind::ProposeRaw];

    fn from_byte(b: u8) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| *k as u8 == b)
    }
}

/// How long a node waits for a signature before answering `pending` (simulated time).
pub const SIGN_WAIT: Duration = Duration::from_secs(1);

/// Counts of injected faults by kind, shared by the network and the driver.
pub type FaultCounts = Arc<Mutex<BTreeMap<&'static str, u64>>>;

/// Bumps one fault counter.
pub fn count(counts: &FaultCounts, kind: &'static str) {
    *counts.lock().expect("fault counts").entry(kind).or_default() += 1;
}

/// The value an equivocating leader writes into the `put` commands it alters;
/// no node may ever hold it.
pub const EQUIVOCATED_VALUE: &str = "equivocated";

/// A log entry an equivocating leader sent altered to some followers, with the
/// same index and term as the original the others got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Equivocation {
    pub index: u64,
    pub term: u64,
    /// The key of the `put` whose value was altered.
    pub key: String,
    pub leader: NodeId,
    /// Followers that were sent the altered entry.
    pub victims: BTreeSet<NodeId>,
}

/// The per-message fault state: one seeded RNG and the knobs.
pub struct NetFaults {
    rng: ChaCha8Rng,
    plan: FaultPlan,
    /// On only while the fault window is open (after genesis, until the heal).
    active: bool,
    /// Extra delay on every message to or from a slow node, in ms.
    slow: BTreeMap<NodeId, u64>,
    /// An equivocating leader and the followers it sends altered entries to.
    equivocating: Option<(NodeId, BTreeSet<NodeId>)>,
    /// Every entry sent altered, by index.
    pub equivocations: BTreeMap<u64, Equivocation>,
    counts: FaultCounts,
}

/// The network's shared handle.
pub type SharedNet = Arc<Mutex<NetFaults>>;

/// What happens to one call.
#[derive(Debug, Default)]
struct Decision {
    delay_ms: u64,
    lose_request: bool,
    lose_response: bool,
    duplicate: bool,
}

impl NetFaults {
    pub fn new(seed: u64, plan: FaultPlan, counts: FaultCounts) -> SharedNet {
        let rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6e65_7477_6f72_6b00);
        Arc::new(Mutex::new(NetFaults {
            rng,
            plan,
            active: false,
            slow: BTreeMap::new(),
            equivocating: None,
            equivocations: BTreeMap::new(),
            counts,
        }))
    }

    /// Starts the per-message faults (the fault window opens after genesis).
    pub fn open_window(&mut self) {
        self.active = true;
    }

    /// Whether the fault window is open.
    pub fn window_open(&self) -> bool {
        self.active
    }

    /// Counts one fault of `kind` for the report.
    pub fn counted(&self, kind: &'static str) {
        count(&self.counts, kind);
    }

    /// Stops every per-message fault (the heal).
    pub fn heal(&mut self) {
        self.active = false;
        self.slow.clear();
        self.equivocating = None;
    }

    /// Makes `leader` send altered `put` entries to `victims` (or stops it, with `None`).
    pub fn set_equivocating(&mut self, equivocating: Option<(NodeId, BTreeSet<NodeId>)>) {
        self.equivocating = equivocating;
    }

    /// The byzantine leader: when `from` equivocates towards `to`, alters the
    /// value of every `put` in an AppendEntries (same index and term), which
    /// breaks the admin's signature on it, and records what it altered.
    fn equivocate(&mut self, from: NodeId, to: NodeId, request: &mut PeerRequest) {
        let PeerRequest::AppendEntries(rpc) = request else { return };
        if !matches!(&self.equivocating, Some((leader, victims)) if *leader == from && victims.contains(&to)) {
            return;
        }
        for entry in &mut rpc.entries {
            let Some(key) = alter_put(entry) else { continue };
            let (index, term) = (entry.log_id.index, entry.log_id.leader_id.term);
            let record = self.equivocations.entry(index).or_insert_with(|| {
                count(&self.counts, "equivocated_entry");
                Equivocation { index, term, key, leader: from, victims: BTreeSet::new() }
            });
            record.victims.insert(to);
        }
    }

    pub fn set_slow(&mut self, node: NodeId, extra_ms: Option<u64>) {
        match extra_ms {
            Some(ms) => self.slow.insert(node, ms),
            None => self.slow.remove(&node),
        };
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.rng.next_u64() as f64 / u64::MAX as f64) < p
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.rng.next_u64() % (n + 1)
        }
    }

    fn decide(&mut self, from: NodeId, to: NodeId, share: bool) -> Decision {
        if !self.active {
            return Decision::default();
        }
        let plan = self.plan.clone();
        let mut d = Decision { delay_ms: self.below(plan.jitter_ms_max), ..Decision::default() };
        if self.chance(plan.spike) {
            d.delay_ms += self.below(plan.spike_ms_max);
            count(&self.counts, "delay_spike");
        }
        for node in [from, to] {
            if let Some(extra) = self.slow.get(&node) {
                d.delay_ms += *extra;
            }
        }
        if self.chance(plan.request_loss) {
            d.lose_request = true;
            count(&self.counts, "request_lost");
        } else if self.chance(plan.response_loss) {
            d.lose_response = true;
            count(&self.counts, "response_lost");
        } else if share && self.chance(plan.share_answer_loss) {
            d.lose_response = true;
            count(&self.counts, "share_answer_lost");
        }
        if !d.lose_request && self.chance(plan.duplicate) {
            d.duplicate = true;
            count(&self.counts, "duplicated");
        }
        d
    }
}

/// Why a simulated call produced no answer.
#[derive(Debug)]
pub enum CallError {
    Timeout,
    Io(String),
}

/// One call: connect, send one frame, read one frame, under the per-message
/// faults. `share` marks a signing round 2, whose answer may also be lost to
/// [`FaultPlan::share_answer_loss`].
async fn call<Req: Serialize, Resp: DeserializeOwned>(
    net: &SharedNet,
    from: NodeId,
    to: NodeId,
    kind: Kind,
    body: &Req,
    timeout: Duration,
    share: bool,
) -> Result<Resp, CallError> {
    let decision = net.lock().expect("net").decide(from, to, share);
    let mut request = vec![kind as u8];
    request.extend_from_slice(&from.to_be_bytes());
    request.extend_from_slice(&rpc::encode(body).map_err(|e| CallError::Io(e.to_string()))?);
    let attempt = async {
        if decision.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(decision.delay_ms)).await;
        }
        if decision.lose_request {
            return futures::future::pending().await;
        }
        if decision.duplicate {
            let copy = request.clone();
            // The duplicate's answer is dropped; the callee acts on it twice.
            tokio::spawn(async move {
                let _ = tokio::time::timeout(timeout, exchange(to, &copy)).await;
            });
        }
        let answer = exchange(to, &request).await?;
        if decision.lose_response {
            return futures::future::pending().await;
        }
        rpc::decode_body(&answer).map_err(|e| CallError::Io(e.to_string()))
    };
    tokio::time::timeout(timeout, attempt).await.map_err(|_| CallError::Timeout)?
}

async fn exchange(to: NodeId, request: &[u8]) -> Result<Vec<u8>, CallError> {
    let io = |e: std::io::Error| CallError::Io(e.to_string());
    let mut stream = TcpStream::connect(node_addr(to)).await.map_err(io)?;
    stream.write_all(request).await.map_err(io)?;
    read_frame(&mut stream).await.map_err(io)
}

async fn read_frame(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut header = [0u8; 5];
    stream.read_exact(&mut header).await?;
    let len = rpc::decode_header(header).map_err(std::io::Error::other)?;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    Ok(body)
}

/// A node's [`PeerTransport`] in the simulation.
pub struct SimTransport {
    pub id: NodeId,
    pub net: SharedNet,
}

impl PeerTransport for SimTransport {
    fn call(
        &self,
        target: NodeId,
        addr: String,
        request: PeerRequest,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<PeerResponse, TransportError>> {
        let (net, from) = (self.net.clone(), self.id);
        let mut request = request;
        net.lock().expect("net").equivocate(from, target, &mut request);
        // Every PeerRequest variant (Raft, forwarding, DKG round 2, signing) travels alike.
        let share = matches!(request, PeerRequest::SignShare { .. });
        async move {
            call(&net, from, target, Kind::Peer, &request, timeout, share).await.map_err(|e| match e {
                CallError::Timeout => TransportError::Timeout { node: target, timeout_ms: timeout.as_millis() as u64 },
                CallError::Io(reason) => TransportError::Unreachable { node: target, addr, reason },
            })
        }
        .boxed()
    }
}

/// Alters a `put` entry's value in its signed envelope text (so its signature
/// no longer verifies); returns the key, or `None` for any other entry.
fn alter_put(entry: &mut openraft::Entry<synod_proto::TypeConfig>) -> Option<String> {
    let openraft::EntryPayload::Normal(log_entry) = &mut entry.payload else { return None };
    let mut envelope: serde_json::Value = serde_json::from_str(&log_entry.command.envelope).ok()?;
    let command = envelope.get_mut("command")?;
    if command.get("type")?.as_str()? != "put" {
        return None;
    }
    let key = command.get("key")?.as_str()?.to_string();
    command["value"] = serde_json::Value::String(EQUIVOCATED_VALUE.into());
    log_entry.command.envelope = serde_json::to_string(&envelope).ok()?;
    Some(key)
}

/// A client's call to node `to`.
pub async fn client_call(
    net: &SharedNet,
    to: NodeId,
    request: &ClientRequest,
    timeout: Duration,
) -> Result<Result<ClientResponse, NodeError>, CallError> {
    call(net, 0, to, Kind::Client, request, timeout, false).await
}

/// The byzantine leader's call: `entry` proposed straight to Raft on `to`.
pub async fn propose_raw_call(
    net: &SharedNet,
    to: NodeId,
    entry: &LogEntry,
    timeout: Duration,
) -> Result<Result<WriteResponse, NodeError>, CallError> {
    call(net, 0, to, Kind::ProposeRaw, entry, timeout, false).await
}

/// Serves peers and clients until the host is crashed.
pub async fn serve(node: Arc<Node>) -> turmoil::Result {
    let listener = TcpListener::bind((IpAddr::V4(Ipv4Addr::UNSPECIFIED), PORT)).await?;
    loop {
        let (stream, peer) = listener.accept().await?;
        let node = node.clone();
        tokio::spawn(async move {
            let _ = serve_connection(stream, peer.ip(), node).await;
        });
    }
}

async fn serve_connection(mut stream: TcpStream, peer: IpAddr, node: Arc<Node>) -> std::io::Result<()> {
    let mut head = [0u8; 9];
    stream.read_exact(&mut head).await?;
    let kind = Kind::from_byte(head[0]).ok_or_else(|| std::io::Error::other("unknown kind"))?;
    let from = NodeId::from_be_bytes(head[1..9].try_into().expect("8 bytes"));
    let body = read_frame(&mut stream).await?;
    let decode_err = |e: rpc::FrameError| std::io::Error::other(e.to_string());
    let answer = match kind {
        Kind::Peer => {
            let request: PeerRequest = rpc::decode_body(&body).map_err(decode_err)?;
            let response = serve_peer(&node, peer, from, request).await;
            rpc::encode(&response)
        }
        Kind::Client => {
            let request: ClientRequest = rpc::decode_body(&body).map_err(decode_err)?;
            rpc::encode(&node.serve_client(&synod_node::caller::Caller::in_process(), request).await)
        }
        Kind::ProposeRaw => {
            let entry: LogEntry = rpc::decode_body(&body).map_err(decode_err)?;
            rpc::encode(&propose_raw(&node, entry).await)
        }
    };
    stream.write_all(&answer.map_err(decode_err)?).await
}

/// The production handler, behind the same identity and membership checks as QUIC.
async fn serve_peer(node: &Arc<Node>, peer: IpAddr, from: NodeId, request: PeerRequest) -> PeerResponse {
    // The sender's host name plays the part of its certificate.
    if turmoil::reverse_lookup(peer).as_deref() != Some(node_name(from).as_str()) {
        return PeerResponse::Refused(format!("sender claims node {from} from another host"));
    }
    let handler = NodeHandler(node.clone());
    if !handler.is_authorized(from) {
        return PeerResponse::Refused(format!("node {from} is not a member"));
    }
    handler.handle(from, request).await
}

/// The byzantine leader: appends an entry without `Node::write`'s checks.
async fn propose_raw(node: &Node, entry: LogEntry) -> Result<WriteResponse, NodeError> {
    use openraft::error::{ClientWriteError, RaftError};
    match node.raft.client_write(entry).await {
        Ok(resp) => Ok(WriteResponse { index: resp.log_id.index, outcome: resp.data }),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(fwd))) => Err(match fwd.leader_id {
            Some(id) => NodeError::NotLeader { leader: LeaderHint { node_id: id, api_addr: node_addr(id) } },
            None => NodeError::unavailable("no leader"),
        }),
        Err(e) => Err(NodeError::unavailable(e.to_string())),
    }
}

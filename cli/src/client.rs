//! Client commands: they sign commands with the operator key and speak the
//! node's HTTPS API.
//!
//! # Reaching the cluster
//!
//! `SYNOD_ADDRS` (or `--addrs`) lists node URLs, comma-separated
//! (`https://10.0.0.1:8201,https://10.0.0.2:8201,https://10.0.0.3:8201`);
//! `SYNOD_ADDR` (or `--addr`) names one, which is tried first when both are
//! set. [`ApiClient`] sends each call to the node that answered last and moves
//! to the next in the list when a node cannot be reached: the connection is
//! refused, the TLS handshake fails, or no answer starts in time. Any node
//! serves reads, and forwards writes to the leader; an answer `421` naming
//! the leader (`leader` in the error body) sends the write there.
//!
//! # Retries
//!
//! A `503` (no leader yet, a node catching up) is retried after a pause that
//! doubles from [`BACKOFF_FIRST_MS`] up to [`BACKOFF_MAX_MS`], with random
//! jitter of up to half of it, at most [`ATTEMPTS_MAX`] times per call. A
//! `503` that says the cluster has lost its majority
//! ([`synod_proto::api::NO_MAJORITY_PREFIX`]) is not retried: the node has
//! already asked the other voters, and the error names those that do not
//! answer.
//!
//! A write whose answer was lost (the node died or the connection broke after
//! the command was sent, or the node answered `503` and may have proposed
//! it) is never simply sent again. The client first asks a node what became of
//! the command, by its command id (`GET /v1/commands/{id}?expires_at_ms=`):
//! applied or refused, the original outcome is the answer, applied once. Not
//! known and past its expiry, it can never commit, and the client says so.
//! Not known yet, the client asks again for up to [`UNKNOWN_WAIT_MS`] (a
//! commit by a node that died reaches the others once a leader is elected),
//! then sends the same signed bytes again: a command id applies at most once,
//! and a node answers a command it already applied with its recorded outcome.
//!
//! # Reading your writes
//!
//! The client remembers the highest log index this process has seen (the
//! `index` of a write, a request's `created_index`, an outcome's index) and
//! sends it with every later read as the query parameter `min_index`
//! ([`synod_proto::api::MIN_INDEX_PARAM`]): a node that has applied less waits
//! up to 5 s to catch up, or answers `503` saying how far behind it is, and
//! the client asks the next node. So a read after a write in one process sees
//! the write, whichever node serves it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde::de::DeserializeOwned;
use synod_proto::api::{
    CommandOutcome, CommandStatus, ErrorBody, Health, KvList, KvRecord, Status, WriteResponse, MIN_INDEX_PARAM,
    NO_MAJORITY_PREFIX,
};
use synod_proto::{Command, Envelope, NodeAddr, NodeId, OperatorKey, Outcome, SignedCommand};

use super::display::shown;
use super::operator::load_operator_key;
use super::{ClientArgs, ClusterCmd, KvCmd, Output};
use synod_node::pki;

/// How long an idle pooled connection is reused: well under the node's
/// `api::HEADER_READ_TIMEOUT`, after which the node closes it, so a request never races
/// the node's close on a connection it is about to drop.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
const _: () = assert!(POOL_IDLE_TIMEOUT.as_millis() * 2 <= synod_node::api::HEADER_READ_TIMEOUT.as_millis());

/// The node a client talks to when neither `SYNOD_ADDR` nor `SYNOD_ADDRS` says otherwise.
pub const ADDR_DEFAULT: &str = "https://127.0.0.1:8201";
/// How long a connection to a node may take (TCP and TLS) before the next node is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How many times one call is retried after `503`s (or `421`s) before the client gives up.
pub const ATTEMPTS_MAX: u32 = 6;
/// The first pause before a retry (ms); each later one doubles, up to [`BACKOFF_MAX_MS`].
pub const BACKOFF_FIRST_MS: u64 = 200;
/// The longest pause before a retry (ms), jitter included at most 1.5 times this.
pub const BACKOFF_MAX_MS: u64 = 3_000;
/// How long the client keeps asking about a lost write that no node knows yet
/// before it sends the same signed command again (ms).
pub const UNKNOWN_WAIT_MS: u64 = 4_000;
/// How often it asks meanwhile (ms).
const UNKNOWN_POLL_MS: u64 = 400;
/// How many times a lost write is sent again at most (each after asking first).
pub const RESENDS_MAX: u32 = 3;

/// The highest log index this process has seen, sent with later reads
/// (`min_index`) so that a read never misses this process's own writes.
static SEEN_INDEX: AtomicU64 = AtomicU64::new(0);

/// Remembers `index` as seen, if it is the highest so far.
fn saw_index(index: u64) {
    SEEN_INDEX.fetch_max(index, Ordering::Relaxed);
}

/// The highest log index this process has seen (0: none yet).
pub fn seen_index() -> u64 {
    SEEN_INDEX.load(Ordering::Relaxed)
}

/// An HTTPS client for the cluster's nodes (or, from [`ApiClient::for_node`],
/// for one node only). Every read but health is signed with the operator key
/// when one is configured ([`synod_proto::readsig`]): what a node returns
/// depends on which operator reads. See the module documentation for how it
/// moves between nodes and retries.
pub struct ApiClient {
    http: reqwest::Client,
    /// The nodes' base URLs, in the order they are tried.
    bases: Vec<String>,
    /// Which of `bases` the next call goes to: the last that answered.
    current: AtomicUsize,
    /// The client's settings, kept to reach a leader that a hint names but `bases` does not.
    args: Option<ClientArgs>,
    /// The operator key file (`SYNOD_OPERATOR_KEY`), read at the first signed read.
    operator_key: Option<std::path::PathBuf>,
    /// The key and the cluster id reads are signed for, once known.
    reader: std::sync::OnceLock<(ed25519_dalek::SigningKey, String)>,
}

/// What became of one HTTP exchange with one node.
enum Exchange {
    /// The node answered: status and body.
    Answered(u16, Vec<u8>),
    /// Nothing was delivered (connection refused, TLS handshake failed, connect timeout):
    /// the same call may go to another node.
    NotDelivered(String),
    /// The request may have been delivered, and no answer came (the connection broke
    /// or timed out afterwards): a write's fate is unknown.
    Lost(String),
}

/// The parts of a signed command the client needs to ask what became of it.
struct SentCommand {
    command_id: String,
    expires_at_ms: u64,
    author: OperatorKey,
}

/// What a node says became of a lost write.
enum Fate {
    /// Applied or refused: the original answer.
    Known(CommandOutcome),
    /// Not known yet and it may still commit: send it again.
    Unknown,
    /// Not known, and it can no longer commit: why.
    Never(String),
}

impl ApiClient {
    /// Builds a client from flags/environment: trusts only the cluster CA and
    /// presents the client certificate when one is configured.
    pub fn new(args: &ClientArgs) -> anyhow::Result<Self> {
        let http = Self::http(args, |builder| builder)?;
        let bases = node_urls(args)?;
        Ok(ApiClient {
            http,
            bases,
            current: AtomicUsize::new(0),
            args: Some(args.clone()),
            operator_key: args.operator_key.clone(),
            reader: Default::default(),
        })
    }

    fn http(
        args: &ClientArgs,
        more: impl FnOnce(reqwest::ClientBuilder) -> reqwest::ClientBuilder,
    ) -> anyhow::Result<reqwest::Client> {
        let cacert = args.cacert.as_ref().ok_or_else(|| {
            anyhow!("no CA certificate given; set SYNOD_CACERT (or --cacert) to the cluster's ca.crt")
        })?;
        let tls = match (&args.client_cert, &args.client_key) {
            (Some(cert), Some(key)) => pki::TlsMaterial::load(cacert, cert, key)?.https_client_config()?,
            (None, None) => pki::https_client_config_anonymous(cacert)?,
            _ => bail!("set both SYNOD_CLIENT_CERT and SYNOD_CLIENT_KEY (or neither)"),
        };
        let builder = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_secs(60))
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT);
        Ok(more(builder).build()?)
    }

    /// A client for node `id` itself: the connection goes to `api_addr` but must
    /// present node `id`'s certificate (its DNS name `node-<id>.synod`), so what
    /// is sent reaches that node and no other. It never moves to another node.
    pub async fn for_node(args: &ClientArgs, id: NodeId, api_addr: &str) -> anyhow::Result<Self> {
        if args.client_cert.is_none() || args.client_key.is_none() {
            bail!("set SYNOD_CLIENT_CERT and SYNOD_CLIENT_KEY");
        }
        let socket = tokio::net::lookup_host(api_addr)
            .await
            .with_context(|| format!("cannot resolve node {id}'s API address {api_addr}"))?
            .next()
            .ok_or_else(|| anyhow!("node {id}'s API address {api_addr} resolves to nothing"))?;
        let name = pki::node_server_name(id);
        let http = Self::http(args, |builder| builder.resolve(&name, socket))?;
        Ok(ApiClient {
            http,
            bases: vec![format!("https://{name}:{}", socket.port())],
            current: AtomicUsize::new(0),
            args: None,
            operator_key: args.operator_key.clone(),
            reader: Default::default(),
        })
    }

    /// The node the next call goes to.
    fn base(&self) -> &str {
        &self.bases[self.current.load(Ordering::Relaxed) % self.bases.len()]
    }

    /// Moves to the next node in the list.
    fn next_node(&self) {
        let _ = self.current.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |i| Some((i + 1) % self.bases.len()));
    }

    /// One exchange with the current node, classified for failover.
    async fn exchange(&self, request: reqwest::RequestBuilder) -> Exchange {
        let base = self.base().to_string();
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => return classify(&base, &e),
        };
        let status = response.status().as_u16();
        match response.bytes().await {
            Ok(bytes) => Exchange::Answered(status, bytes.to_vec()),
            Err(e) => Exchange::Lost(format!("{base} broke off its answer: {}", chain(&e))),
        }
    }

    /// A GET of `path` (with its query), signed as a read when an operator key is set,
    /// from the first node that answers; a read is safe to send to any node.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<(u16, T)> {
        let (status, bytes) = self.get_raw(path, true).await?;
        decode(status, &bytes)
    }

    /// [`ApiClient::get`] as status and body, moving to the next node when one
    /// cannot be reached or is behind; `sign` says whether to sign the read.
    async fn get_raw(&self, path: &str, sign: bool) -> anyhow::Result<(u16, Vec<u8>)> {
        let path = with_min_index(path);
        let mut failures = Vec::new();
        for attempt in 0..ATTEMPTS_MAX {
            let mut unavailable = false;
            for _ in 0..self.bases.len() {
                let url = reqwest::Url::parse(&format!("{}{path}", self.base()))
                    .with_context(|| format!("{path:?} is not a valid API path"))?;
                // Sign the target exactly as it goes on the wire (the URL parser may escape it).
                let target = match url.query() {
                    Some(query) => format!("{}?{query}", url.path()),
                    None => url.path().to_string(),
                };
                let mut request = self.http.get(url);
                if sign {
                    if let Some(header) = Box::pin(self.read_signature("GET", &target)).await? {
                        request = request.header(synod_proto::readsig::READ_SIGNATURE_HEADER, header);
                    }
                }
                match self.exchange(request).await {
                    // A node that cannot serve now (no leader, behind this client's writes);
                    // health answers 503 with its own body, which is the answer.
                    Exchange::Answered(503, bytes)
                        if (self.bases.len() > 1 || attempt + 1 < ATTEMPTS_MAX)
                            && serde_json::from_slice::<ErrorBody>(&bytes).is_ok() =>
                    {
                        let why = error_text(503, &bytes);
                        if why.starts_with(NO_MAJORITY_PREFIX) {
                            bail!("{why}");
                        }
                        failures.push(format!("{}: {why}", self.base()));
                        unavailable = true;
                        self.next_node();
                    }
                    Exchange::Answered(status, bytes) => return Ok((status, bytes)),
                    Exchange::NotDelivered(why) | Exchange::Lost(why) => {
                        failures.push(why);
                        self.next_node();
                    }
                }
            }
            // No node can be reached at all: waiting will not change that soon.
            if !unavailable {
                break;
            }
            backoff(attempt).await;
        }
        bail!("{}", unreachable_text(&self.bases, &failures))
    }

    /// The read-signature header for `method path`, or `None` for health and
    /// when no operator key is configured (the node then answers health only).
    async fn read_signature(&self, method: &str, path: &str) -> anyhow::Result<Option<String>> {
        let Some(key_path) = &self.operator_key else { return Ok(None) };
        if path.starts_with("/v1/sys/health") {
            return Ok(None);
        }
        if self.reader.get().is_none() {
            let key = load_operator_key(key_path)?;
            let (status, bytes) = self.get_raw("/v1/sys/health?standbyok=true", false).await?;
            let (_, health): (u16, Health) = decode(status, &bytes)?;
            // A node without a cluster has no operators to sign for; it answers what it can.
            let Some(cluster_id) = health.cluster_id else { return Ok(None) };
            let _ = self.reader.set((key, cluster_id));
        }
        let (key, cluster_id) = self.reader.get().expect("set above");
        let signature = synod_proto::readsig::ReadSignature::sign(key, cluster_id, method, path, now_ms());
        Ok(Some(signature.to_header()))
    }

    /// A POST of `body` to `path`. When the body is a signed command, a lost
    /// answer is settled by asking what became of the command before it is
    /// sent again (see the module documentation); any other body is sent once
    /// to the first node that can be reached.
    pub async fn post<T: DeserializeOwned, B: serde::Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<(u16, T)> {
        // The same bytes every time: a resent command is the command first sent. (Wiped when
        // dropped: an imported share travels this way.)
        let bytes = zeroize::Zeroizing::new(serde_json::to_vec(body).context("cannot encode the request body")?);
        let command = serde_json::from_slice::<SignedCommand>(&bytes).ok().and_then(|signed| {
            let envelope: Envelope = serde_json::from_str(&signed.envelope).ok()?;
            Some(SentCommand {
                command_id: envelope.command_id,
                expires_at_ms: envelope.expires_at_ms,
                author: signed.author,
            })
        });
        let (status, answer) = self.post_raw(path, &bytes, command.as_ref()).await?;
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&answer) {
            let index = value.get("index").or_else(|| value.get("created_index")).and_then(|i| i.as_u64());
            index.into_iter().for_each(saw_index);
        }
        decode(status, &answer)
    }

    async fn post_raw(
        &self,
        path: &str,
        bytes: &[u8],
        command: Option<&SentCommand>,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let mut failures = Vec::new();
        let mut undelivered = 0;
        let mut attempts = 0;
        let mut resends = 0;
        // Whether an earlier send may have reached a node: a refusal as a replay then
        // means the first one applied.
        let mut maybe_sent = false;
        let mut hinted: Option<ApiClient> = None;
        loop {
            let via = hinted.as_ref().unwrap_or(self);
            let request = via
                .http
                .post(format!("{}{path}", via.base()))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(bytes.to_vec());
            let lost = match via.exchange(request).await {
                Exchange::NotDelivered(why) => {
                    failures.push(why);
                    hinted = None;
                    self.next_node();
                    undelivered += 1;
                    if undelivered >= self.bases.len() {
                        bail!("{}", unreachable_text(&self.bases, &failures));
                    }
                    continue;
                }
                Exchange::Lost(why) => why,
                Exchange::Answered(421, answer) if attempts < ATTEMPTS_MAX => {
                    attempts += 1;
                    let hint = serde_json::from_slice::<ErrorBody>(&answer).ok().and_then(|e| e.leader);
                    let Some(leader) = hint else { return Ok((421, answer)) };
                    hinted = self.towards(leader.node_id, &leader.api_addr).await?;
                    continue;
                }
                Exchange::Answered(503, answer) => {
                    let Some(command) = command else { return Ok((503, answer)) };
                    if attempts >= ATTEMPTS_MAX || lasting(&error_text(503, &answer)) {
                        return Ok((503, answer));
                    }
                    attempts += 1;
                    backoff(attempts - 1).await;
                    // The node may have proposed it before it answered: ask before sending it again.
                    maybe_sent = true;
                    match self.fate(command).await {
                        Ok(Fate::Known(known)) => return settled(&known),
                        Ok(Fate::Never(why)) => bail!("{why}"),
                        Ok(Fate::Unknown) | Err(_) => continue,
                    }
                }
                Exchange::Answered(status, answer) => {
                    let Some(command) = command.filter(|_| maybe_sent) else { return Ok((status, answer)) };
                    // A resend refused (as a replay of the first, which applied): the first one's outcome.
                    if let Ok(WriteResponse { outcome: Outcome::Rejected { .. }, .. }) = serde_json::from_slice(&answer)
                    {
                        if let Ok(Fate::Known(known)) = self.fate(command).await {
                            if known.status == CommandStatus::Applied {
                                return settled(&known);
                            }
                        }
                    }
                    return Ok((status, answer));
                }
            };
            let Some(command) = command else {
                bail!("{lost}; the request may or may not have been carried out");
            };
            failures.push(lost);
            maybe_sent = true;
            hinted = None;
            if resends >= RESENDS_MAX {
                bail!(
                    "command {} was sent {} times and no answer came back ({}); ask what became of it with \
                     `GET /v1/commands/{}` before signing it again",
                    command.command_id,
                    resends + 1,
                    failures.join("; "),
                    command.command_id
                );
            }
            match self.await_fate(command).await? {
                Fate::Known(known) => return settled(&known),
                Fate::Never(why) => bail!("{why}"),
                Fate::Unknown => resends += 1,
            }
        }
    }

    /// A client for the leader a `421` names: a node of the list at that
    /// address, or that node by its certificate name.
    async fn towards(&self, node_id: NodeId, api_addr: &str) -> anyhow::Result<Option<ApiClient>> {
        let known = self.bases.iter().position(|b| b.trim_start_matches("https://") == api_addr);
        if let Some(i) = known {
            self.current.store(i, Ordering::Relaxed);
            return Ok(None);
        }
        let Some(args) = &self.args else { return Ok(None) };
        Ok(Some(ApiClient::for_node(args, node_id, api_addr).await?))
    }

    /// Asks the nodes what became of a lost write until it is known, can no
    /// longer commit (an error), or [`UNKNOWN_WAIT_MS`] have passed.
    async fn await_fate(&self, command: &SentCommand) -> anyhow::Result<Fate> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(UNKNOWN_WAIT_MS);
        loop {
            let asked = self.fate(command).await;
            match asked {
                Ok(Fate::Known(known)) => return Ok(Fate::Known(known)),
                Ok(Fate::Never(why)) => return Ok(Fate::Never(why)),
                Ok(Fate::Unknown) if tokio::time::Instant::now() >= deadline => return Ok(Fate::Unknown),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(e.context(format!(
                        "the answer to command {} was lost, and no node could say what became of it",
                        command.command_id
                    )))
                }
                _ => tokio::time::sleep(Duration::from_millis(UNKNOWN_POLL_MS)).await,
            }
        }
    }

    /// One question to the nodes: what became of `command`. An error when no
    /// node answers.
    async fn fate(&self, command: &SentCommand) -> anyhow::Result<Fate> {
        let outcome = self.command_outcome(&command.command_id, Some(command.expires_at_ms)).await?;
        // Another author's command under the same id is not this one.
        let ours = outcome.author.is_none_or(|a| a == command.author);
        match outcome.status {
            CommandStatus::Applied | CommandStatus::Rejected if ours => Ok(Fate::Known(outcome)),
            _ if outcome.is_final => Ok(Fate::Never(format!(
                "the answer to command {} was lost, and it did not commit and can no longer: {}",
                command.command_id,
                outcome.errors.join("; ")
            ))),
            _ => Ok(Fate::Unknown),
        }
    }
}

impl ApiClient {
    /// What became of command `command_id` (`GET /v1/commands/{id}`), as a
    /// node answers it: known (200) or not (404, with whether it can still
    /// commit, judged by `expires_at_ms` when given). Any other answer is an error.
    pub async fn command_outcome(
        &self,
        command_id: &str,
        expires_at_ms: Option<u64>,
    ) -> anyhow::Result<CommandOutcome> {
        let mut path = format!("/v1/commands/{command_id}");
        if let Some(expires) = expires_at_ms {
            path.push_str(&format!("?expires_at_ms={expires}"));
        }
        let (status, bytes) = self.get_raw(&path, true).await?;
        let outcome: CommandOutcome = match (status, serde_json::from_slice(&bytes)) {
            (200 | 404, Ok(outcome)) => outcome,
            _ => bail!("{}", error_text(status, &bytes)),
        };
        outcome.index.into_iter().for_each(saw_index);
        Ok(outcome)
    }
}

/// The first answer to a write, rebuilt from what a node recorded of it: a
/// write's answer (the index and the outcome, 200 applied and 403 refused).
fn settled(known: &CommandOutcome) -> anyhow::Result<(u16, Vec<u8>)> {
    let outcome = known.outcome.clone().ok_or_else(|| {
        anyhow!(
            "command {} was applied, but this cluster's rules (from before version 8) keep no record of \
             what it did; read the state it changed to see",
            known.command_id
        )
    })?;
    let status = if outcome.is_applied() { 200 } else { 403 };
    let response = WriteResponse { index: known.index.unwrap_or_default(), outcome };
    Ok((status, serde_json::to_vec(&response)?))
}

/// The URLs of the nodes `args` names: `SYNOD_ADDR` first when it is set (or
/// when no list is), then `SYNOD_ADDRS`, each once.
fn node_urls(args: &ClientArgs) -> anyhow::Result<Vec<String>> {
    let addr_set = args.addr != ADDR_DEFAULT || std::env::var_os("SYNOD_ADDR").is_some();
    let listed = args.addrs.iter().flat_map(|a| a.split(',')).map(str::trim).filter(|a| !a.is_empty());
    let mut urls: Vec<String> = Vec::new();
    let first = (addr_set || args.addrs.iter().all(|a| a.trim().is_empty())).then_some(args.addr.as_str());
    for url in first.into_iter().chain(listed) {
        let url = url.trim_end_matches('/').to_string();
        if !url.starts_with("https://") {
            bail!("node address {url:?} (SYNOD_ADDR or SYNOD_ADDRS) must start with https://");
        }
        if !urls.contains(&url) {
            urls.push(url);
        }
    }
    Ok(urls)
}

/// `path` with the highest index this process has seen as `min_index`, for
/// every read but health.
fn with_min_index(path: &str) -> String {
    let seen = seen_index();
    if seen == 0 || path.starts_with("/v1/sys/health") {
        return path.to_string();
    }
    let separator = if path.contains('?') { '&' } else { '?' };
    format!("{path}{separator}{MIN_INDEX_PARAM}={seen}")
}

/// Whether a failed exchange reached the node: a failure to connect (refused,
/// TLS handshake, connect timeout) did not; anything later may have.
fn classify(base: &str, e: &reqwest::Error) -> Exchange {
    let text = format!("cannot reach {base}: {}", chain(e));
    if e.is_connect() || e.is_builder() {
        Exchange::NotDelivered(text)
    } else {
        Exchange::Lost(text)
    }
}

/// An error and its sources on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// The error of a failed call when no node could serve it.
fn unreachable_text(bases: &[String], failures: &[String]) -> String {
    match bases {
        [_] => failures.last().cloned().unwrap_or_else(|| format!("cannot reach {}", bases[0])),
        _ => format!(
            "no node of {} could serve this ({}); start them, or check SYNOD_ADDRS",
            bases.join(", "),
            failures.join("; ")
        ),
    }
}

/// Waits before retry `attempt` (0 first): doubling from [`BACKOFF_FIRST_MS`],
/// at most [`BACKOFF_MAX_MS`], plus up to half again at random so that many
/// clients do not retry in step.
async fn backoff(attempt: u32) {
    let base = BACKOFF_FIRST_MS.saturating_mul(1 << attempt.min(16)).min(BACKOFF_MAX_MS);
    let jitter = rand_core::RngCore::next_u64(&mut rand_core::OsRng) % (base / 2 + 1);
    tokio::time::sleep(Duration::from_millis(base + jitter)).await;
}

/// Whether a `503` says something waiting will not change: the cluster has
/// lost its majority, a committed request failed to sign, or a key operation
/// needs participants that are down (the node pinged them). Any other `503` is
/// retried; a wording this misses costs only the retries.
fn lasting(why: &str) -> bool {
    why.starts_with(NO_MAJORITY_PREFIX)
        || why.starts_with("request ")
        || why.starts_with("key generation needs all")
        || why.starts_with("a refresh needs all")
}

/// The words of an error answer.
fn error_text(status: u16, bytes: &[u8]) -> String {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(err) => {
            let mut text = err.errors.join("; ");
            if let Some(leader) = err.leader {
                text.push_str(&format!(" (leader: node {} at {})", leader.node_id, leader.api_addr));
            }
            format!("{text} (HTTP {status})")
        }
        Err(_) => format!("unexpected answer (HTTP {status}): {}", String::from_utf8_lossy(bytes)),
    }
}

/// A node's answer as `T`, or its error.
fn decode<T: DeserializeOwned>(status: u16, bytes: &[u8]) -> anyhow::Result<(u16, T)> {
    // An error body is an error even when the caller asked for any JSON value.
    let error = (status >= 400).then(|| serde_json::from_slice::<ErrorBody>(bytes).ok()).flatten();
    if error.is_none() {
        if let Ok(value) = serde_json::from_slice::<T>(bytes) {
            return Ok((status, value));
        }
    }
    bail!("{}", error_text(status, bytes))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Signs `command` for `cluster_id` with the operator key from `args`.
pub fn sign(args: &ClientArgs, cluster_id: &str, command: Command) -> anyhow::Result<SignedCommand> {
    let path = args.operator_key.as_ref().ok_or_else(|| {
        anyhow!("this command must be signed; set SYNOD_OPERATOR_KEY (or --operator-key) to your operator key file")
    })?;
    let key = load_operator_key(path)?;
    Ok(SignedCommand::sign(&envelope(args, cluster_id, command), &key))
}

/// The envelope of a new command from this client: a fresh id, valid for `--ttl`.
pub fn envelope(args: &ClientArgs, cluster_id: &str, command: Command) -> Envelope {
    Envelope::new(cluster_id, command, now_ms(), args.ttl_secs * 1000, &mut rand_core::OsRng)
}

/// The cluster id from a node's status, or an error saying to initialise it.
pub fn cluster_id(status: &Status) -> anyhow::Result<String> {
    status
        .cluster_id
        .clone()
        .ok_or_else(|| anyhow!("node {} is not initialised yet; run `synod cluster init` first", status.node_id))
}

/// Signs and submits a command against the cluster the node belongs to.
pub async fn submit(args: &ClientArgs, command: Command) -> anyhow::Result<WriteResponse> {
    let client = ApiClient::new(args)?;
    let (_, health): (u16, Health) = client.get("/v1/sys/health").await?;
    let cluster_id = health
        .cluster_id
        .ok_or_else(|| anyhow!("node {} is not initialised yet; run `synod cluster init` first", health.node_id))?;
    let signed = sign(args, &cluster_id, command)?;
    let (_, response): (u16, WriteResponse) = client.post("/v1/commands", &signed).await?;
    Ok(response)
}

fn print_write(args: &ClientArgs, response: &WriteResponse) -> anyhow::Result<()> {
    match args.output.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(response)?),
        Output::Table => match &response.outcome {
            Outcome::Applied { detail } => println!("committed at index {}: {}", response.index, shown(detail)),
            Outcome::Rejected { reason, .. } => {
                println!("committed at index {} but refused: {}", response.index, shown(reason))
            }
            Outcome::Internal => println!("committed at index {}", response.index),
        },
    }
    if let Outcome::Rejected { reason, .. } = &response.outcome {
        bail!("the cluster refused the command: {reason}");
    }
    Ok(())
}

fn parse_member(text: &str) -> anyhow::Result<(NodeId, NodeAddr)> {
    let err = || anyhow!("--member {text:?} is not ID=RAFT_ADDR,API_ADDR (e.g. 1=10.0.0.1:7001,10.0.0.1:8201)");
    let (id, addrs) = text.split_once('=').ok_or_else(err)?;
    let (raft_addr, api_addr) = addrs.split_once(',').ok_or_else(err)?;
    let id: NodeId = id.trim().parse().map_err(|_| err())?;
    Ok((id, NodeAddr { raft_addr: raft_addr.trim().into(), api_addr: api_addr.trim().into() }))
}

/// `synod cluster ...`.
pub async fn cluster(cmd: ClusterCmd) -> anyhow::Result<()> {
    match cmd {
        ClusterCmd::Webauthn(cmd) => crate::passkey::webauthn(cmd).await,
        ClusterCmd::Init { members, admins, cluster_id, key_destroy_wait_min, client } => {
            let members: BTreeMap<NodeId, NodeAddr> =
                members.iter().map(|m| parse_member(m)).collect::<anyhow::Result<_>>()?;
            let signer_path = client
                .operator_key
                .clone()
                .ok_or_else(|| anyhow!("set SYNOD_OPERATOR_KEY to the key of a genesis admin"))?;
            let mut admin_keys: Vec<OperatorKey> =
                admins.iter().map(|a| OperatorKey::from_hex(a)).collect::<Result<_, _>>()?;
            if admin_keys.is_empty() {
                admin_keys.push(OperatorKey::of(&load_operator_key(&signer_path)?));
            }
            let cluster_id = cluster_id.unwrap_or_else(|| {
                let mut id = [0u8; 8];
                rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
                format!("synod-{}", hex::encode(id))
            });
            let wait_min_ms = key_destroy_wait_min.map(|d| d.as_millis() as u64);
            if wait_min_ms.is_some_and(|ms| ms < synod_proto::command::KEY_DESTROY_WAIT_MIN_MS_DEFAULT) {
                super::display::note(
                    "warning: keys of this cluster can be destroyed after less than 7 days; that suits \
                     development and test clusters, not production (fixed for the cluster's life)",
                );
            }
            let response = init(&client, &cluster_id, admin_keys, members, wait_min_ms).await?;
            print_write(&client, &response)
        }
        ClusterCmd::AddMember { id, raft_addr, api_addr, client } => {
            let response =
                submit(&client, Command::AddMember { node_id: id, addr: NodeAddr { raft_addr, api_addr } }).await?;
            print_write(&client, &response)
        }
        ClusterCmd::RemoveMember { id, client } => {
            let response = submit(&client, Command::RemoveMember { node_id: id }).await?;
            print_write(&client, &response)
        }
    }
}

/// Signs and sends the genesis command.
pub async fn init(
    client_args: &ClientArgs,
    cluster_id: &str,
    admins: Vec<OperatorKey>,
    members: BTreeMap<NodeId, NodeAddr>,
    key_destroy_wait_min_ms: Option<u64>,
) -> anyhow::Result<WriteResponse> {
    let members = members.into_iter().map(|(node_id, addr)| synod_proto::Member { node_id, addr }).collect();
    let cacert = client_args.cacert.as_ref().ok_or_else(|| anyhow!("set SYNOD_CACERT to the cluster's ca.crt"))?;
    let ca_certificate = hex::encode(pki::certificate_der(cacert)?);
    let signed = sign(
        client_args,
        cluster_id,
        Command::VersionedGenesis {
            rules: synod_proto::command::RULES_CURRENT,
            admins,
            members,
            ca_certificate,
            key_destroy_wait_min_ms,
        },
    )?;
    let client = ApiClient::new(client_args)?;
    let (_, response): (u16, WriteResponse) =
        client.post("/v1/sys/init", &signed).await.context("cluster init failed")?;
    Ok(response)
}

/// `synod status`.
pub async fn status(args: &ClientArgs) -> anyhow::Result<()> {
    let client = ApiClient::new(args)?;
    let (_, status): (u16, Status) = client.get("/v1/sys/status").await?;
    if args.output.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    println!("cluster      {}", shown(status.cluster_id.as_deref().unwrap_or("(not initialised)")));
    if let Some(name) = &status.cluster_name {
        println!("name         {}", shown(name));
    }
    println!("this node    {} ({})", status.node_id, status.role);
    println!("leader       {}", status.leader_id.map_or("(none)".into(), |l| l.to_string()));
    println!("term         {}", status.term);
    println!("last index   {}", status.last_log_index.unwrap_or(0));
    println!("applied      {}", status.last_applied_index.unwrap_or(0));
    println!("refused      {}", status.rejected_commands);
    let point = |i: Option<u64>| i.map_or("-".to_string(), |i| i.to_string());
    println!(
        "snapshot     {} (newest point {}, endorsed {})",
        point(status.snapshot_index),
        point(status.newest_point_index),
        point(status.endorsed_point_index)
    );
    if let Some(why) = &status.signing_paused {
        println!("signing      paused: {}", shown(why));
    }
    match &status.memory_lock_refused {
        None if status.memory_locked => println!("memory       locked"),
        None => println!("memory       not locked"),
        Some(why) => println!("memory       not locked: {why}"),
    }
    println!("core dumps   {}", if status.core_dumps_off { "off" } else { "POSSIBLE (not hardened)" });
    println!();
    // CLOCK: the member's clock minus the leader's, as the leader estimates it (leader only).
    if !status.shares_missing.is_empty() {
        println!(
            "shares missing: this node holds no share of {} (its data directory lost them; the other \
             participants still sign while enough of them hold theirs)",
            status.shares_missing.iter().map(|n| shown(n).to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    println!("NODE   VOTER    AUTHORIZED RAFT                   API                    MATCHED  CLOCK");
    for m in &status.members {
        println!(
            "{:<6} {:<8} {:<10} {:<22} {:<22} {:<8} {}",
            m.node_id,
            m.voter,
            m.authorized,
            shown(&m.addr.raft_addr),
            shown(&m.addr.api_addr),
            m.matched_index.map_or("-".into(), |i| i.to_string()),
            m.clock_offset_ms.map_or("-".into(), clock_offset)
        );
    }
    Ok(())
}

/// A clock offset for people: `+0.012s`, `-3.400s`, `+17280000.000s`.
fn clock_offset(ms: i64) -> String {
    let sign = if ms < 0 { '-' } else { '+' };
    let ms = ms.unsigned_abs();
    format!("{sign}{}.{:03}s", ms / 1000, ms % 1000)
}

/// `synod health`: exits non-zero unless the node is initialised and knows a leader.
pub async fn health(args: &ClientArgs) -> anyhow::Result<()> {
    let client = ApiClient::new(args)?;
    let (code, health): (u16, Health) = client.get("/v1/sys/health?standbyok=true").await?;
    match args.output.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&health)?),
        Output::Table => println!(
            "node {} {} term {} leader {}",
            health.node_id,
            health.role,
            health.term,
            health.leader_id.map_or("(none)".into(), |l| l.to_string())
        ),
    }
    if health.shares_missing > 0 && args.output.output == Output::Table {
        eprintln!(
            "warning: node {} holds no share of {} active keys it is a participant of (`synod status` names them)",
            health.node_id, health.shares_missing
        );
    }
    if code != 200 {
        bail!("node {} is not healthy (HTTP {code})", health.node_id);
    }
    Ok(())
}

/// `synod kv ...`.
pub async fn kv(cmd: KvCmd) -> anyhow::Result<()> {
    match cmd {
        KvCmd::Put { key, value, client } => {
            let response = submit(&client, Command::Put { key, value }).await?;
            print_write(&client, &response)
        }
        KvCmd::Get { key, client } => {
            let api = ApiClient::new(&client)?;
            let (_, record): (u16, KvRecord) = api.get(&format!("/v1/kv/{key}")).await?;
            match client.output.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&record)?),
                Output::Table => {
                    println!("value:   {}", shown(&record.value));
                    let when = super::display::time_ms(record.updated_at_ms);
                    let (version, index, author) = (record.version, record.updated_index, &record.author);
                    println!("version: {version} (written at log index {index}, {when}, by {author})");
                }
            }
            Ok(())
        }
        KvCmd::List(client) => {
            let api = ApiClient::new(&client)?;
            let (_, list): (u16, KvList) = api.get("/v1/kv").await?;
            match client.output.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&list)?),
                Output::Table => list.keys.iter().for_each(|(k, v)| println!("{}\t(version {v})", shown(k))),
            }
            Ok(())
        }
    }
}

//! Client commands: they sign commands with the operator key and speak the
//! node's HTTPS API.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde::de::DeserializeOwned;
use synod_proto::api::{ErrorBody, Health, KvList, KvRecord, Status, WriteResponse};
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

/// An HTTPS client for one node's API. Every read but health is signed with
/// the operator key when one is configured ([`synod_proto::readsig`]): what a
/// node returns depends on which operator reads.
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    /// The operator key file (`SYNOD_OPERATOR_KEY`), read at the first signed read.
    operator_key: Option<std::path::PathBuf>,
    /// The key and the cluster id reads are signed for, once known.
    reader: std::sync::OnceLock<(ed25519_dalek::SigningKey, String)>,
}

impl ApiClient {
    /// Builds a client from flags/environment: trusts only the cluster CA and
    /// presents the client certificate when one is configured.
    pub fn new(args: &ClientArgs) -> anyhow::Result<Self> {
        let cacert = args.cacert.as_ref().ok_or_else(|| {
            anyhow!("no CA certificate given; set SYNOD_CACERT (or --cacert) to the cluster's ca.crt")
        })?;
        let tls = match (&args.client_cert, &args.client_key) {
            (Some(cert), Some(key)) => pki::TlsMaterial::load(cacert, cert, key)?.https_client_config()?,
            (None, None) => pki::https_client_config_anonymous(cacert)?,
            _ => bail!("set both SYNOD_CLIENT_CERT and SYNOD_CLIENT_KEY (or neither)"),
        };
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build()?;
        let base = args.addr.trim_end_matches('/').to_string();
        if !base.starts_with("https://") {
            bail!("SYNOD_ADDR {base:?} must start with https://");
        }
        Ok(ApiClient { http, base, operator_key: args.operator_key.clone(), reader: Default::default() })
    }

    async fn decode<T: DeserializeOwned>(&self, response: reqwest::Response) -> anyhow::Result<(u16, T)> {
        let status = response.status().as_u16();
        let bytes = response.bytes().await?;
        // An error body is an error even when the caller asked for any JSON value.
        let error = (status >= 400).then(|| serde_json::from_slice::<ErrorBody>(&bytes).ok()).flatten();
        if error.is_none() {
            if let Ok(value) = serde_json::from_slice::<T>(&bytes) {
                return Ok((status, value));
            }
        }
        if let Some(err) = error.or_else(|| serde_json::from_slice::<ErrorBody>(&bytes).ok()) {
            let mut text = err.errors.join("; ");
            if let Some(leader) = err.leader {
                text.push_str(&format!(" (leader: node {} at {})", leader.node_id, leader.api_addr));
            }
            bail!("{} (HTTP {status})", text);
        }
        bail!("unexpected answer (HTTP {status}): {}", String::from_utf8_lossy(&bytes))
    }

    /// A client for node `id` itself: the connection goes to `api_addr` but must
    /// present node `id`'s certificate (its DNS name `node-<id>.synod`), so what
    /// is sent reaches that node and no other.
    pub async fn for_node(args: &ClientArgs, id: NodeId, api_addr: &str) -> anyhow::Result<Self> {
        let cacert = args.cacert.as_ref().ok_or_else(|| anyhow!("set SYNOD_CACERT to the cluster's ca.crt"))?;
        let tls = match (&args.client_cert, &args.client_key) {
            (Some(cert), Some(key)) => pki::TlsMaterial::load(cacert, cert, key)?.https_client_config()?,
            _ => bail!("set SYNOD_CLIENT_CERT and SYNOD_CLIENT_KEY"),
        };
        let socket = tokio::net::lookup_host(api_addr)
            .await
            .with_context(|| format!("cannot resolve node {id}'s API address {api_addr}"))?
            .next()
            .ok_or_else(|| anyhow!("node {id}'s API address {api_addr} resolves to nothing"))?;
        let name = pki::node_server_name(id);
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .resolve(&name, socket)
            .timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build()?;
        Ok(ApiClient {
            http,
            base: format!("https://{name}:{}", socket.port()),
            operator_key: args.operator_key.clone(),
            reader: Default::default(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        request.send().await.map_err(|e| {
            let mut text = format!("cannot reach {}: {e}", self.base);
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            anyhow!(text)
        })
    }

    /// A GET of `path` (with its query), signed as a read when an operator key is set.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<(u16, T)> {
        let url = reqwest::Url::parse(&self.url(path)).with_context(|| format!("{path:?} is not a valid API path"))?;
        // Sign the target exactly as it goes on the wire (the URL parser may escape it).
        let target = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_string(),
        };
        let mut request = self.http.get(url);
        if let Some(header) = self.read_signature("GET", &target).await? {
            request = request.header(synod_proto::readsig::READ_SIGNATURE_HEADER, header);
        }
        let response = self.send(request).await?;
        self.decode(response).await
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
            let response = self.send(self.http.get(self.url("/v1/sys/health?standbyok=true"))).await?;
            let (_, health): (u16, Health) = self.decode(response).await?;
            // A node without a cluster has no operators to sign for; it answers what it can.
            let Some(cluster_id) = health.cluster_id else { return Ok(None) };
            let _ = self.reader.set((key, cluster_id));
        }
        let (key, cluster_id) = self.reader.get().expect("set above");
        let signature = synod_proto::readsig::ReadSignature::sign(key, cluster_id, method, path, now_ms());
        Ok(Some(signature.to_header()))
    }

    pub async fn post<T: DeserializeOwned, B: serde::Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<(u16, T)> {
        let response = self.send(self.http.post(self.url(path)).json(body)).await?;
        self.decode(response).await
    }
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
                eprintln!(
                    "warning: keys of this cluster can be destroyed after less than 7 days; that suits \
                     development and test clusters, not production (fixed for the cluster's life)"
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
                Output::Table => println!("{}", shown(&record.value)),
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

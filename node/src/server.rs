//! `synod node start`: a production node from its config file, with real
//! seams (sled, QUIC with mutual TLS, the system clock, the OS RNG), served
//! until SIGINT or SIGTERM, then shut down cleanly. SIGHUP re-reads the TLS
//! material (CA certificate, node certificate and key) for new API and peer
//! connections; a reload that fails keeps the old material and says why.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use synod_proto::NodeId;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use zeroize::Zeroizing;

use crate::config::{KekConfig, LogFormat, NodeConfig, TlsFiles};
use crate::kek::pkcs11::{Pkcs11Config, Pkcs11Kek};
use crate::kek::soft::{SoftKek, SALT_BYTES};
use crate::kek::Kek;
use crate::node::{Node, NodeHandler, NodeParts};
use crate::notify::Notifier;
use crate::pki::{PeerIdentity, TlsMaterial};
use crate::sealed::{KekCheck, SealedStore};
use crate::seams::Seams;
use crate::store::sled_store::SledStore;
use crate::store::{Durability, Op, Store, Tree};
use crate::transport::quic::QuicTransport;
use crate::{api, faults, hygiene};

const IDENTITY_KEY: &[u8] = b"node/identity";

/// What a data directory remembers about whom it belongs to.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct DataDirIdentity {
    node_id: NodeId,
    ca_fingerprint: String,
}

/// Sets up log output on stderr. `RUST_LOG` overrides the default filter.
pub fn init_logging(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Asks the person at the terminal for the KEK passphrase. The node library
/// reads no terminal itself; the `synod` binary passes its prompt in.
pub type PassphrasePrompt = fn() -> std::io::Result<zeroize::Zeroizing<String>>;

/// The environment variables that may hold this config's secrets (the KEK
/// passphrase, the token PIN), for [`hygiene::take_env_secrets`] before the
/// runtime starts. Empty when the config does not load (`run` then says why).
pub fn secret_env_names(config_path: &Path) -> Vec<String> {
    NodeConfig::load(config_path).map(|c| kek_secret_env_names(&c.kek)).unwrap_or_default()
}

/// The environment variable that may hold the secret of a `[kek]` table: its
/// passphrase or its token PIN. None for a key file.
pub fn kek_secret_env_names(kek: &KekConfig) -> Vec<String> {
    match kek {
        KekConfig::Passphrase { env } => vec![env.clone()],
        KekConfig::Pkcs11 { pin_env, .. } => vec![pin_env.clone()],
        KekConfig::File { .. } => Vec::new(),
    }
}

pub use crate::sealed::kek_check_label;

/// Runs a node until it is told to stop. `prompt` is used only for a
/// `passphrase` KEK whose variable is unset, when stdin is a terminal.
pub async fn run(config_path: &Path, prompt: PassphrasePrompt) -> anyhow::Result<()> {
    // Handlers first: a SIGHUP during start-up must not kill the node (its default action).
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let config = NodeConfig::load(config_path)?;
    init_logging(config.log_format, "info,openraft=warn,quinn=warn,sled=warn");
    hygiene::log_hardening();
    if !faults::available().is_empty() {
        tracing::warn!(faults = ?faults::available(), "this build can inject faults (SYNOD_FAULTS); never run it in production");
    }
    let tls = TlsMaterial::load(&config.tls.ca_cert, &config.tls.cert, &config.tls.key)?;
    if tls.identity != PeerIdentity::Node(config.node_id) {
        bail!(
            "certificate {} is for {:?}, but {} says node_id = {}; issue a certificate for this node with `synod ca issue node --id {}`",
            config.tls.cert.display(),
            tls.identity,
            config_path.display(),
            config.node_id,
            config.node_id
        );
    }

    create_private_dir(&config.data_dir)?;
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&config.data_dir.join("store"))?);
    check_data_dir(&*store, &config, &tls.ca_fingerprint())?;
    let secret = kek_secret(&config.kek, prompt)?;
    let salt = match config.kek {
        KekConfig::Passphrase { .. } => Some(crate::sealed::passphrase_salt(store.as_ref())?),
        KekConfig::File { .. } | KekConfig::Pkcs11 { .. } => None,
    };
    let kek = open_kek(&config.kek, secret, salt).await?;
    let sealed = Arc::new(SealedStore::new(store.clone(), kek.clone()));
    let check = {
        let sealed = sealed.clone();
        let label = kek_check_label(config.node_id);
        tokio::task::spawn_blocking(move || sealed.check_kek(&label)).await?
    };
    match check {
        Ok(KekCheck::Created) => tracing::info!(kek = %kek.describe(), "KEK bound to this data directory"),
        Ok(KekCheck::Verified) => {
            tracing::info!(kek = %kek.describe(), "KEK opens this data directory's sealed secrets")
        }
        Err(e) => bail!(
            "{e}; {} uses {}. The node does not start with a KEK that cannot open its own secrets",
            config_path.display(),
            kek.describe()
        ),
    }

    let transport = QuicTransport::bind(config.raft_listen, &tls)
        .with_context(|| listen_error("raft_listen", config.raft_listen, config_path))?;
    let api_listener = TcpListener::bind(config.api_listen)
        .await
        .with_context(|| listen_error("api_listen", config.api_listen, config_path))?;
    // The approver console's listener and certificate, checked before the node starts so a
    // bad `[console]` stops start-up with why.
    let console_listener = match &config.console {
        Some(console) => {
            let tls = crate::console::tls_config(&console.certificate, &console.key)?;
            let listener = TcpListener::bind(console.listen)
                .await
                .with_context(|| listen_error("console.listen", console.listen, config_path))?;
            Some((listener, tls))
        }
        None => None,
    };
    let metrics_listener = match config.metrics_listen {
        Some(addr) => {
            Some(TcpListener::bind(addr).await.with_context(|| listen_error("metrics_listen", addr, config_path))?)
        }
        None => None,
    };

    let node = Node::start(NodeParts {
        id: config.node_id,
        store: store.clone(),
        transport: Arc::new(transport.clone()),
        sealed,
        identity: Arc::new(crate::pki::NodeIdentity::from_tls(&tls)?),
        seams: Seams::production(),
        tuning: config.raft.clone(),
        genesis_admins: config.genesis_admins.iter().copied().collect(),
    })
    .await?;
    let (actual, name) = {
        let applied = node.state().read();
        (applied.state.cluster_id.clone(), applied.state.cluster_name.clone())
    };
    if let (Some(pinned), Some(actual)) = (&config.cluster_id, actual) {
        // The pin may name the derived id or the name chosen at init (which the
        // operator knows before the id exists).
        if *pinned != actual && name.as_ref() != Some(pinned) {
            node.shutdown().await;
            bail!(
                "data directory {} belongs to cluster {actual}, but {} pins cluster_id = {pinned}; refusing to start",
                config.data_dir.display(),
                config_path.display()
            );
        }
    }

    tokio::spawn(transport.clone().serve(Arc::new(NodeHandler(node.clone()))));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (https_tx, https_rx) = tokio::sync::watch::channel(tls.https_server_config()?);
    let api_task = tokio::spawn(api::serve(
        api::Listener::Api,
        api_listener,
        https_rx,
        api::router(node.clone()),
        stop_rx.clone(),
    ));
    // The console is served like the API (its gate, handshake and header deadlines) with its
    // own certificate, which SIGHUP re-reads too.
    let (console_task, console_tls) = match console_listener {
        Some((listener, tls)) => {
            tracing::info!(console = %listener.local_addr()?, "approver console listening (HTTPS, /console)");
            let (tx, rx) = tokio::sync::watch::channel(tls);
            let app = crate::console::routes::router(node.clone());
            (Some(tokio::spawn(api::serve(api::Listener::Console, listener, rx, app, stop_rx))), Some(tx))
        }
        None => (None, None),
    };
    if let Some(listener) = metrics_listener {
        tracing::info!(metrics = %listener.local_addr()?, "metrics listener ready (plain HTTP, GET /metrics)");
        let app = api::metrics_router(node.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "the metrics listener stopped");
            }
        });
    }
    let reloader = TlsReloader {
        config_path: config_path.to_path_buf(),
        node_id: config.node_id,
        ca_fingerprint: tls.ca_fingerprint(),
        paths: config.tls.clone(),
        https: https_tx,
        transport: transport.clone(),
    };
    tracing::info!(
        node_id = config.node_id,
        raft = %transport.local_addr()?,
        api = %config.api_listen,
        incarnation = %node.incarnation,
        "node ready"
    );
    // Ready once it listens with its KEK open, not once caught up (see `notify`).
    let notifier = Notifier::from_env();
    notifier.ready(&node);
    let notify_tasks = notifier.start_tasks(&node);

    loop {
        tokio::select! {
            _ = term.recv() => {
                tracing::info!("SIGTERM received; shutting down");
                break;
            }
            _ = int.recv() => {
                tracing::info!("SIGINT received; shutting down");
                break;
            }
            _ = hup.recv() => {
                notifier.reloading();
                let mut accepted = reloader.reload_and_log();
                if let (Some(tx), Some(console)) = (&console_tls, &config.console) {
                    accepted &= reload_console_tls(tx, console);
                }
                notifier.reloaded(&node, accepted);
            }
        }
    }
    notifier.stopping();
    drop(notify_tasks);
    let _ = stop_tx.send(true);
    let _ = api_task.await;
    if let Some(task) = console_task {
        let _ = task.await;
    }
    node.shutdown().await;
    transport.close().await;
    store.write(Vec::new(), Durability::Sync)?;
    tracing::info!("node stopped cleanly");
    Ok(())
}

/// Re-reads the console's certificate and key on `SIGHUP` for new console connections; a
/// failure keeps the old ones and says why. Returns whether the new ones were taken.
fn reload_console_tls(
    tx: &tokio::sync::watch::Sender<Arc<rustls::ServerConfig>>,
    console: &crate::config::ConsoleConfig,
) -> bool {
    match crate::console::tls_config(&console.certificate, &console.key) {
        Ok(tls) => {
            tx.send_replace(tls);
            tracing::info!(cert = %console.certificate.display(), "SIGHUP: console certificate reloaded");
            true
        }
        Err(e) => {
            api::COUNTERS.tls_reload_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::error!("SIGHUP: console certificate reload refused, the console keeps its current one: {e:#}");
            false
        }
    }
}

/// What `SIGHUP` re-reads and where the result goes.
struct TlsReloader {
    /// The config file, to name in errors.
    config_path: PathBuf,
    /// The node's id: a reloaded certificate must still name it.
    node_id: NodeId,
    /// The CA fingerprint the data directory is bound to: a reloaded CA certificate must be
    /// the same CA (a new CA is a new cluster; see ARCHITECTURE.md, open risks).
    ca_fingerprint: String,
    /// The files to re-read, from the config's `[tls]` section.
    paths: TlsFiles,
    /// The HTTPS configuration new API connections use.
    https: tokio::sync::watch::Sender<Arc<rustls::ServerConfig>>,
    /// The peer transport, whose QUIC configurations are replaced too.
    transport: Arc<QuicTransport>,
}

impl TlsReloader {
    /// Reloads, logs the outcome and counts it; never stops the node. Returns whether the
    /// new material was taken (for the service manager's status line).
    fn reload_and_log(&self) -> bool {
        match self.reload() {
            Ok(certificate) => {
                api::COUNTERS.tls_reloads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(cert = %self.paths.cert.display(), %certificate, "SIGHUP: TLS material reloaded; new API and peer connections use it");
                true
            }
            Err(e) => {
                api::COUNTERS.tls_reload_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::error!("SIGHUP: TLS reload refused, the node keeps its current certificate: {e:#}");
                false
            }
        }
    }

    /// Loads and checks the files, builds every configuration, and only then swaps them in,
    /// so a failure anywhere leaves the old material in use. Returns a summary of the new
    /// certificate.
    fn reload(&self) -> anyhow::Result<String> {
        let tls = TlsMaterial::load(&self.paths.ca_cert, &self.paths.cert, &self.paths.key)?;
        if tls.identity != PeerIdentity::Node(self.node_id) {
            bail!(
                "certificate {} is for {:?}, but {} says node_id = {}; renew this node's own certificate with `synod ca issue --renew`",
                self.paths.cert.display(),
                tls.identity,
                self.config_path.display(),
                self.node_id
            );
        }
        if tls.ca_fingerprint() != self.ca_fingerprint {
            bail!(
                "CA certificate {} is not the CA this node started with (fingerprint {}, now {}); a node cannot change CA while running",
                self.paths.ca_cert.display(),
                self.ca_fingerprint,
                tls.ca_fingerprint()
            );
        }
        let https = tls.https_server_config()?;
        let quic_server = tls.quic_server_config()?;
        let quic_client = tls.quic_client_config()?;
        self.transport.set_tls(quic_server, quic_client);
        self.https.send_replace(https);
        Ok(tls.certificate_summary())
    }
}

/// `synod node ping`: calls a peer over QUIC with this node's certificate, the
/// way Raft would, and reports who answered. Needs no running node here.
pub async fn ping(config_path: &Path, peer: NodeId, addr: &str) -> anyhow::Result<(NodeId, Option<String>)> {
    use crate::transport::PeerTransport;
    use synod_proto::rpc::{PeerRequest, PeerResponse};
    let config = NodeConfig::load(config_path)?;
    let tls = TlsMaterial::load(&config.tls.ca_cert, &config.tls.cert, &config.tls.key)?;
    let transport = QuicTransport::bind("0.0.0.0:0".parse().expect("literal"), &tls)?;
    let response = Arc::new(transport.clone())
        .call(peer, addr.to_string(), PeerRequest::Ping, std::time::Duration::from_secs(5))
        .await;
    transport.close().await;
    match response? {
        PeerResponse::Pong { node_id, cluster_id, .. } => Ok((node_id, cluster_id)),
        PeerResponse::Refused(reason) => bail!("node {peer} at {addr} refused the call: {reason}"),
        other => bail!("node {peer} at {addr} answered with {other:?}"),
    }
}

/// The secret a `[kek]` table needs to open, read by [`kek_secret`]. No
/// `Debug`: it would print the secret.
pub enum KekSecret {
    /// A key file needs none.
    None,
    /// The passphrase of a `passphrase` KEK.
    Passphrase(Zeroizing<String>),
    /// The user PIN of a `pkcs11` KEK's token.
    Pin(Zeroizing<String>),
}

/// Reads the secret `kek` needs: a passphrase from `<env>_FILE`, the systemd
/// credential, the variable or (on a terminal, when none is set) `prompt`; a
/// PIN from `pin_file`, `<pin_env>_FILE`, the credential or the variable.
pub fn kek_secret(kek: &KekConfig, prompt: PassphrasePrompt) -> anyhow::Result<KekSecret> {
    match kek {
        KekConfig::File { .. } => Ok(KekSecret::None),
        KekConfig::Passphrase { env } => {
            let passphrase = match hygiene::secret(env, "the KEK passphrase")? {
                Some(p) if !p.is_empty() => p,
                _ if std::io::IsTerminal::is_terminal(&std::io::stdin()) => prompt()?,
                _ => bail!(
                    "the KEK passphrase is missing: set {env}_FILE to a file of mode 0600 holding it, pass it as \
                     the systemd credential {env}, set {env}, or run on a terminal to be prompted"
                ),
            };
            Ok(KekSecret::Passphrase(passphrase))
        }
        KekConfig::Pkcs11 { pin_env, pin_file, .. } => {
            let pin = match pin_file {
                Some(path) => {
                    let text = hygiene::read_secret_file(path, "the token PIN", "pin_file in the [kek] section")?;
                    Zeroizing::new(text.trim().to_string())
                }
                None => hygiene::secret(pin_env, "the token PIN")?.ok_or_else(|| {
                    anyhow::anyhow!(
                        "the token PIN is missing: set pin_file in the [kek] section, {pin_env}_FILE, the systemd \
                         credential {pin_env}, or {pin_env}"
                    )
                })?,
            };
            Ok(KekSecret::Pin(pin))
        }
    }
}

/// Opens the KEK a `[kek]` table names with the secret [`kek_secret`] read
/// for it; a `passphrase` KEK also needs its Argon2id `salt` (the data
/// directory's, from `sealed::passphrase_salt`, or a fresh one for a KEK that
/// `synod kek rotate` moves to). Never falls back to another backend. Used by
/// `synod node start` and `synod kek rotate`, so both open KEKs alike.
pub async fn open_kek(
    kek: &KekConfig,
    secret: KekSecret,
    salt: Option<[u8; SALT_BYTES]>,
) -> anyhow::Result<Arc<dyn Kek>> {
    match (kek, secret) {
        (KekConfig::File { path }, KekSecret::None) => {
            if std::env::var_os("SYNOD_DEV").is_none() {
                tracing::warn!(
                    path = %path.display(),
                    "THE KEK IS IN A FILE: a development setting. Anyone who copies this machine's disk can unseal \
                     its secrets. Use backend = \"pkcs11\" or \"passphrase\" in production"
                );
            }
            Ok(Arc::new(SoftKek::from_file(path)?))
        }
        (KekConfig::Passphrase { .. }, KekSecret::Passphrase(passphrase)) => {
            let salt = salt.context("a passphrase KEK needs its salt; report this as a Synod bug")?;
            let kek = tokio::task::spawn_blocking(move || SoftKek::from_passphrase(&passphrase, &salt)).await??;
            Ok(Arc::new(kek))
        }
        (KekConfig::Pkcs11 { module, token_label, key_label, .. }, KekSecret::Pin(pin)) => {
            let cfg = Pkcs11Config {
                module: module.clone(),
                token_label: token_label.clone(),
                key_label: key_label.clone(),
                pin,
            };
            let kek = tokio::task::spawn_blocking(move || Pkcs11Kek::open(&cfg)).await??;
            Ok(Arc::new(kek))
        }
        _ => bail!("the KEK secret read does not fit the [kek] backend; report this as a Synod bug"),
    }
}

/// Reads the `[kek]` table of a TOML file (a whole node.toml or a file with
/// only that table; other tables are ignored), in node.toml's format, with
/// relative paths resolved against the file's directory as node.toml's are.
/// `synod kek rotate --new-kek-config` reads the KEK to move to this way.
pub fn load_kek_table(path: &Path) -> anyhow::Result<KekConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
    let kek = table.remove("kek").with_context(|| {
        format!(
            "{} has no [kek] table; write one as in node.toml (backend = \"file\", \"passphrase\" or \"pkcs11\")",
            path.display()
        )
    })?;
    let mut kek: KekConfig =
        kek.try_into().map_err(|e| anyhow::anyhow!("the [kek] table of {} is not valid: {e}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    match &mut kek {
        KekConfig::File { path } | KekConfig::Pkcs11 { pin_file: Some(path), .. } if path.is_relative() => {
            *path = base.join(&*path);
        }
        _ => {}
    }
    Ok(kek)
}

/// A `[kek]` table as node.toml holds it, to print for the operator to paste.
pub fn kek_table_toml(kek: &KekConfig) -> String {
    #[derive(Serialize)]
    struct Table<'a> {
        kek: &'a KekConfig,
    }
    toml::to_string_pretty(&Table { kek }).expect("a [kek] table serialises")
}

/// What a node says when it cannot bind a configured address; `synod dev`
/// looks for it to move a new node to free ports.
pub const PORT_TAKEN: &str = "another synod node or program may hold that port";

fn listen_error(field: &str, addr: SocketAddr, config: &Path) -> String {
    format!("cannot listen on {addr} ({field} in {}); {PORT_TAKEN}: pick a free one", config.display())
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))
}

/// Refuses a data directory that belongs to another node or cluster; stamps a
/// new one (`synod node restore` stamps the directory it fills). Never
/// reinitialises anything.
pub fn check_data_dir(store: &dyn Store, config: &NodeConfig, ca_fingerprint: &str) -> anyhow::Result<()> {
    let mine = DataDirIdentity { node_id: config.node_id, ca_fingerprint: ca_fingerprint.to_string() };
    match store.get(Tree::Meta, IDENTITY_KEY)? {
        None => {
            let value = serde_json::to_vec(&mine)?;
            store.write(vec![Op::Put { tree: Tree::Meta, key: IDENTITY_KEY.to_vec(), value }], Durability::Sync)?;
            Ok(())
        }
        Some(bytes) => {
            let theirs: DataDirIdentity = serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "data directory {} has an unreadable identity record; it may be corrupted",
                    config.data_dir.display()
                )
            })?;
            if theirs != mine {
                bail!(
                    "data directory {} belongs to node {} of the cluster whose CA fingerprint is {}, not to node {} with CA {}; \
                     point data_dir at this node's own directory (Synod never reinitialises one)",
                    config.data_dir.display(),
                    theirs.node_id,
                    theirs.ca_fingerprint,
                    mine.node_id,
                    mine.ca_fingerprint
                );
            }
            Ok(())
        }
    }
}

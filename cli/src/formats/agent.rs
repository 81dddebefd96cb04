//! `synod agent`: an ssh-agent whose keys are cluster keys, so `ssh-keygen -Y sign` and git
//! (gpg.format=ssh) sign commits, tags and files through the cluster.
//!
//! The agent offers only the keys it was started with, as ssh-ed25519 identities commented
//! `synod:KEY`. Each sign request becomes one cluster sign request:
//!
//! - data that opens with "SSHSIG" must be an SSHSIG signed-data blob; it is signed as format
//!   sshsig, so every node reads its namespace and file hash, a policy may restrict the
//!   namespaces, and the purpose `ssh-agent: sshsig namespace NS` is recorded;
//! - anything else is SSH authentication data (RFC 4252 userauth, bound to one session). It
//!   cannot open with "SSHSIG" (it opens with the length of the session id), and it says
//!   nothing an approver could check, so the agent refuses it unless started with
//!   `--allow-ssh-auth`; then it is a raw request with purpose `ssh-agent: ssh authentication`.
//!
//! The agent protocol can only answer a refusal with SSH_AGENT_FAILURE, so the agent says on
//! its stderr why it refused, and which request awaits which approvals. It never holds key
//! material: adding, removing and locking keys are refused.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use ssh_agent_lib::agent::{listen, Session};
use ssh_agent_lib::error::AgentError;
use ssh_agent_lib::proto::{
    AddIdentity, AddIdentityConstrained, AddSmartcardKeyConstrained, Identity, PublicCredential, RemoveIdentity,
    SignRequest, SmartcardKey,
};
use ssh_key::public::{Ed25519PublicKey, KeyData};
use ssh_key::{Algorithm, HashAlg, Signature};
use synod_proto::command::NAME_BYTES_MAX;
use synod_proto::format::{printable, SignFormat};
use synod_proto::sshsig::{SignedData, SshPublicKey};
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Semaphore;

use super::{ClusterSigner, Declared};
use crate::display::{note, shown};
use crate::{ClientArgs, Output};

/// How many sign requests the agent forwards to the cluster at once; more are refused, so a
/// runaway client cannot queue unbounded work behind approvals.
const SIGNS_IN_FLIGHT_MAX: usize = 8;

/// How many keys one agent offers.
const KEYS_MAX: usize = 32;

/// The purpose recorded for SSH authentication signatures.
const SSH_AUTH_PURPOSE: &str = "ssh-agent: ssh authentication";

/// `synod agent`.
#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The Unix socket to listen on (export SSH_AUTH_SOCK=PATH). Created with mode 0600; a
    /// stale socket there is replaced, any other file is left alone and refused.
    #[arg(long)]
    pub socket: PathBuf,
    /// The cluster key the agent offers (repeat for several). Each is offered at the version
    /// that is primary when the agent starts; restart the agent after a rotation.
    #[arg(long = "key", required = true)]
    pub keys: Vec<String>,
    /// Also sign SSH authentication (login) challenges. Off by default: they carry nothing an
    /// approver or a policy could check, unlike SSHSIG signatures, which name a namespace and
    /// a file hash.
    #[arg(long)]
    pub allow_ssh_auth: bool,
    /// How long one agent request waits for approvals when a key's policy needs them, in
    /// seconds; the agent prints which request awaits whom. When it expires the agent request
    /// fails (the cluster request stays pending until it expires).
    #[arg(long, default_value_t = 300)]
    pub approval_wait_secs: u64,
    /// How long one agent request waits for the signature once no approval is missing, in seconds.
    #[arg(long, default_value_t = 30)]
    pub wait_secs: u64,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// One key the agent offers.
#[derive(Clone, Debug)]
struct AgentKey {
    /// The cluster key's name.
    name: String,
    /// The version offered (the primary when the agent started), pinned in every request so
    /// the signature is by the public key the client was shown.
    version: u32,
    /// That version's public key.
    public_key: [u8; 32],
}

impl AgentKey {
    /// The key as the agent protocol carries it.
    fn key_data(&self) -> KeyData {
        KeyData::Ed25519(Ed25519PublicKey(self.public_key))
    }
}

/// What every connection shares.
struct Shared {
    /// How to reach the cluster and sign requests.
    client: ClientArgs,
    /// The keys offered, in the order given.
    keys: Vec<AgentKey>,
    /// Whether SSH authentication data is signed (`--allow-ssh-auth`).
    allow_ssh_auth: bool,
    /// How long a request waits for approvals.
    approval_wait: Duration,
    /// How long a request waits for its signature.
    wait: Duration,
    /// Bounds the sign requests in flight ([`SIGNS_IN_FLIGHT_MAX`]).
    in_flight: Semaphore,
}

/// One agent connection; every connection shares the keys and the bound on requests.
#[derive(Clone)]
struct ClusterAgent {
    shared: Arc<Shared>,
}

/// What a sign request's data is, and how it is requested from the cluster.
#[derive(Debug, PartialEq, Eq)]
struct Classified {
    format: SignFormat,
    /// The purpose recorded with the request.
    purpose: String,
}

/// Reads the data of an agent sign request: an SSHSIG signed-data blob, or SSH authentication
/// data (refused unless `allow_ssh_auth`).
fn classify(data: &[u8], allow_ssh_auth: bool) -> anyhow::Result<Classified> {
    if data.starts_with(b"SSHSIG") {
        let signed = SignedData::parse(data)
            .map_err(|e| anyhow!("the data opens with \"SSHSIG\" but is not an SSHSIG signed-data blob: {e}"))?;
        let purpose = format!("ssh-agent: sshsig namespace {}", signed.namespace);
        return Ok(Classified { format: SignFormat::Sshsig, purpose: printable(&purpose, NAME_BYTES_MAX) });
    }
    if !allow_ssh_auth {
        bail!(
            "this is an SSH authentication (login) signature, not an SSHSIG file signature, and this agent \
             signs only SSHSIG (ssh-keygen -Y sign, git); start `synod agent` with --allow-ssh-auth to let \
             the cluster sign SSH logins"
        );
    }
    Ok(Classified { format: SignFormat::Raw, purpose: SSH_AUTH_PURPOSE.to_string() })
}

impl Shared {
    /// Has the cluster sign one agent request.
    async fn sign(&self, request: &SignRequest) -> anyhow::Result<Signature> {
        let wanted = request.credential.key_data();
        let key = self.keys.iter().find(|key| key.key_data() == *wanted).ok_or_else(|| {
            let fingerprint = wanted.fingerprint(HashAlg::Sha256);
            let offered: Vec<&str> = self.keys.iter().map(|key| key.name.as_str()).collect();
            anyhow!(
                "the request names key {fingerprint}, which this agent does not offer (it offers {})",
                offered.join(", ")
            )
        })?;
        let classified = classify(&request.data, self.allow_ssh_auth)?;
        let _permit = self.in_flight.try_acquire().map_err(|_| {
            anyhow!("{SIGNS_IN_FLIGHT_MAX} sign requests are already in flight; retry when one of them finishes")
        })?;
        let declared = Declared {
            purpose: classified.purpose.clone(),
            wait: self.wait,
            approval_wait: self.approval_wait,
            ..Declared::default()
        };
        let signer = ClusterSigner::new(&self.client, &key.name, Some(key.version), declared).await?;
        if signer.public_key() != key.public_key {
            bail!(
                "key {} version {} no longer has the public key this agent offers; restart the agent",
                key.name,
                key.version
            );
        }
        let signed = signer.sign(classified.format, &request.data, None).await?;
        note(format_args!(
            "synod agent: request {} signed with key {} ({})",
            shown(&signed.info.request_id),
            shown(&key.name),
            shown(&classified.purpose)
        ));
        Signature::new(Algorithm::Ed25519, signed.signature.to_vec())
            .map_err(|e| anyhow!("cannot encode the signature for the agent protocol: {e}"))
    }
}

/// Says on stderr why an agent request was refused, and answers SSH_AGENT_FAILURE.
fn refuse(what: &str, why: impl std::fmt::Display) -> AgentError {
    note(format_args!("synod agent: refused {what}: {why}"));
    AgentError::Failure
}

/// The refusal of every request that would change the agent's keys.
const HOLDS_NO_KEYS: &str =
    "this agent holds no private keys (its keys are cluster keys); use ssh-add with another agent";

#[ssh_agent_lib::async_trait]
impl Session for ClusterAgent {
    async fn request_identities(&mut self) -> Result<Vec<Identity>, AgentError> {
        Ok(self
            .shared
            .keys
            .iter()
            .map(|key| Identity {
                credential: PublicCredential::Key(key.key_data()),
                comment: format!("synod:{}", key.name),
            })
            .collect())
    }

    async fn sign(&mut self, request: SignRequest) -> Result<Signature, AgentError> {
        self.shared.sign(&request).await.map_err(|e| refuse("a sign request", format_args!("{e:#}")))
    }

    async fn add_identity(&mut self, _identity: AddIdentity) -> Result<(), AgentError> {
        Err(refuse("adding a key", HOLDS_NO_KEYS))
    }

    async fn add_identity_constrained(&mut self, _identity: AddIdentityConstrained) -> Result<(), AgentError> {
        Err(refuse("adding a key", HOLDS_NO_KEYS))
    }

    async fn remove_identity(&mut self, _identity: RemoveIdentity) -> Result<(), AgentError> {
        Err(refuse("removing a key", "stop the agent, or restart it without that --key"))
    }

    async fn remove_all_identities(&mut self) -> Result<(), AgentError> {
        Err(refuse("removing all keys", "stop the agent instead"))
    }

    async fn add_smartcard_key(&mut self, _key: SmartcardKey) -> Result<(), AgentError> {
        Err(refuse("adding a smartcard key", HOLDS_NO_KEYS))
    }

    async fn add_smartcard_key_constrained(&mut self, _key: AddSmartcardKeyConstrained) -> Result<(), AgentError> {
        Err(refuse("adding a smartcard key", HOLDS_NO_KEYS))
    }

    async fn remove_smartcard_key(&mut self, _key: SmartcardKey) -> Result<(), AgentError> {
        Err(refuse("removing a smartcard key", HOLDS_NO_KEYS))
    }

    async fn lock(&mut self, _key: String) -> Result<(), AgentError> {
        Err(refuse("locking", "the cluster's policies and approvals guard the keys; stop the agent to stop signing"))
    }

    async fn unlock(&mut self, _key: String) -> Result<(), AgentError> {
        Err(refuse("unlocking", "this agent is never locked"))
    }
}

/// Serves the agent until SIGINT or SIGTERM, then removes the socket.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    if args.keys.len() > KEYS_MAX {
        bail!("an agent offers at most {KEYS_MAX} keys; start several agents for more");
    }
    let mut keys: Vec<AgentKey> = Vec::new();
    for name in &args.keys {
        let signer = ClusterSigner::new(&args.client, name, None, Declared::default()).await?;
        if keys.iter().any(|key| key.name == signer.key().name) {
            bail!("key {} is given twice; give each --key once", shown(name));
        }
        keys.push(AgentKey {
            name: signer.key().name.clone(),
            version: signer.version(),
            public_key: signer.public_key(),
        });
    }
    let listener = bind_private(&args.socket)?;
    let shared = Shared {
        client: args.client.clone(),
        keys,
        allow_ssh_auth: args.allow_ssh_auth,
        approval_wait: Duration::from_secs(args.approval_wait_secs),
        wait: Duration::from_secs(args.wait_secs),
        in_flight: Semaphore::new(SIGNS_IN_FLIGHT_MAX),
    };
    let socket = args.socket.display().to_string();
    match args.client.output.output {
        Output::Json => println!(
            "{}",
            serde_json::json!({
                "socket": socket,
                "keys": shared.keys.iter().map(|key| serde_json::json!({
                    "name": key.name,
                    "version": key.version,
                    "public_key": hex::encode(key.public_key),
                    "openssh": SshPublicKey::Ed25519(key.public_key).to_line(),
                })).collect::<Vec<_>>(),
                "allow_ssh_auth": shared.allow_ssh_auth,
            })
        ),
        Output::Table => println!("synod agent listening on {socket}; export SSH_AUTH_SOCK={socket}"),
    }
    let agent = ClusterAgent { shared: Arc::new(shared) };
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch for SIGINT")?;
    let served = tokio::select! {
        served = listen(listener, agent) => served.map_err(|e| anyhow!("the agent socket {socket} failed: {e}")),
        _ = terminate.recv() => Ok(()),
        _ = interrupt.recv() => Ok(()),
    };
    remove_socket(&args.socket);
    note(format_args!("synod agent stopped; {socket} removed"));
    served
}

/// Binds the agent socket with mode 0600. A stale socket at `path` is replaced; a socket an
/// agent still answers on, or any other kind of file, is refused.
///
/// The socket is bound inside a fresh 0700 directory next to `path`, made 0600 there and then
/// renamed into place, so it is never reachable by others, not even for an instant (a umask
/// would change the whole process's).
fn bind_private(path: &Path) -> anyhow::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!("an agent already listens on {}: stop it, or choose another --socket", path.display());
            }
            std::fs::remove_file(path).with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
        }
        Ok(_) => bail!("{} exists and is not a socket; it is left alone: choose another --socket path", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    }
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let staging = tempfile::Builder::new()
        .prefix(".synod-agent-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(parent)
        .with_context(|| format!("cannot create a private directory in {} for the socket", parent.display()))?;
    let staged = staging.path().join("s");
    let listener = UnixListener::bind(&staged)
        .with_context(|| format!("cannot listen on a socket in {} (is the path too long?)", parent.display()))?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make the socket in {} private", parent.display()))?;
    std::fs::rename(&staged, path).with_context(|| format!("cannot move the socket to {}", path.display()))?;
    Ok(listener)
}

/// Removes the socket at `path` if it still is one.
fn remove_socket(path: &Path) {
    let is_socket = std::fs::symlink_metadata(path).map(|meta| meta.file_type().is_socket()).unwrap_or(false);
    if is_socket {
        if let Err(e) = std::fs::remove_file(path) {
            note(format_args!("synod agent: cannot remove {}: {e}", path.display()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_classifies_sshsig_and_refuses_ssh_auth_by_default() {
        // Proves SSHSIG signed data becomes an sshsig request naming its namespace, malformed
        // SSHSIG data is refused, and SSH authentication data is refused unless allowed.
        let data = SignedData { namespace: "git".into(), hash_alg: "sha512".into(), hash: vec![7; 64] };
        let classified = classify(&data.to_bytes(), false).unwrap();
        assert_eq!(
            classified,
            Classified { format: SignFormat::Sshsig, purpose: "ssh-agent: sshsig namespace git".into() }
        );
        let long = SignedData { namespace: "n".repeat(200), ..data.clone() };
        assert!(classify(&long.to_bytes(), false).unwrap().purpose.len() <= NAME_BYTES_MAX);
        let mut broken = data.to_bytes();
        broken.push(0);
        assert!(classify(&broken, true).unwrap_err().to_string().contains("not an SSHSIG signed-data blob"));

        // RFC 4252 userauth data opens with string(session id).
        let mut auth = 32u32.to_be_bytes().to_vec();
        auth.extend_from_slice(&[9; 32]);
        auth.push(50);
        let refused = classify(&auth, false).unwrap_err().to_string();
        assert!(refused.contains("--allow-ssh-auth"), "{refused}");
        assert_eq!(
            classify(&auth, true).unwrap(),
            Classified { format: SignFormat::Raw, purpose: SSH_AUTH_PURPOSE.into() }
        );
    }

    #[tokio::test]
    async fn agent_socket_is_private_and_other_files_are_left_alone() {
        // Proves the socket is created 0600, a stale socket is replaced, and a regular file is refused.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = bind_private(&path).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert!(bind_private(&path).unwrap_err().to_string().contains("already listens"));
        drop(listener);
        let _again = bind_private(&path).expect("a stale socket is replaced");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "the staging directory is gone");
        remove_socket(&path);
        std::fs::write(&path, b"keep me").unwrap();
        assert!(bind_private(&path).unwrap_err().to_string().contains("not a socket"));
        assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
    }
}

//! `synod sign --format …` and `synod verify --format …`: the standard containers
//! a cluster signature goes into (SSHSIG, JWS/JWT, minisign, OpenPGP, X.509 and
//! CMS, RFC 9421 HTTP message signatures).
//!
//! Each format module builds its format's to-be-signed bytes on this machine
//! (hashing large files locally, so only a small statement of the hash reaches
//! the cluster), has the cluster sign exactly those bytes as one request that
//! declares the format ([`ClusterSigner::sign`]), and assembles the artifact the
//! format's own verifiers read. Every node parses the bytes as the declared format
//! (`synod_proto::format`), so what approvers see is what gets signed.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use synod_proto::api::{KeyInfo, RequestInfo, RequestStatus, Status};
use synod_proto::format::SignFormat;
use synod_proto::keyfmt;
use synod_proto::Command;

use super::client::{cluster_id, sign as sign_command, ApiClient};
use super::display::{note, shown};
use super::{ClientArgs, SignArgs, VerifyArgs};

pub mod agent;
pub mod args;
pub mod cms;
pub mod http;
pub mod jws;
pub mod minisign;
pub mod openpgp;
pub mod pdf;
pub mod sshsig;

/// How long one poll of a request waits on the node while the client waits for approvals.
const POLL_WAIT_MS: u64 = 10_000;

/// What a requester declares with every request, and how long it waits.
#[derive(Clone, Debug, Default)]
pub struct Declared {
    pub purpose: String,
    pub environment: String,
    pub attributes: std::collections::BTreeMap<String, String>,
    /// The request id; random when `None`.
    pub request_id: Option<String>,
    /// How long to wait for the signature once the request needs no more approvals.
    pub wait: Duration,
    /// How long to wait for approvals (zero: fail at once, naming the request to approve).
    pub approval_wait: Duration,
}

impl Declared {
    /// The declarations of `synod sign`.
    pub fn of(args: &SignArgs) -> anyhow::Result<Self> {
        Ok(Declared {
            purpose: args.purpose.clone().unwrap_or_default(),
            environment: args.environment.clone().unwrap_or_default(),
            attributes: args
                .attrs
                .iter()
                .map(|p| p.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
                .collect::<Option<_>>()
                .ok_or_else(|| anyhow!("--attr takes NAME=VALUE"))?,
            request_id: args.request_id.clone(),
            wait: Duration::from_secs(args.wait_secs),
            approval_wait: Duration::from_secs(args.approval_wait_secs),
        })
    }
}

/// A signature the cluster made, and the request that made it.
#[derive(Clone, Debug)]
pub struct Signed {
    pub signature: [u8; 64],
    pub info: RequestInfo,
}

/// Has one cluster key sign: the key's public key (pinned to one version, so
/// the key id a format embeds before signing names the version that signs) and
/// one request per to-be-signed message.
pub struct ClusterSigner {
    api: ApiClient,
    client: ClientArgs,
    cluster_id: String,
    key: KeyInfo,
    /// The version every request names, and its public key.
    version: u32,
    public_key: [u8; 32],
    declared: Declared,
}

impl ClusterSigner {
    /// Looks the key up; signs with `version`, or with the primary.
    pub async fn new(client: &ClientArgs, key: &str, version: Option<u32>, declared: Declared) -> anyhow::Result<Self> {
        let api = ApiClient::new(client)?;
        let (_, status): (u16, Status) = api.get("/v1/sys/status").await?;
        let cluster_id = cluster_id(&status)?;
        let (_, info): (u16, KeyInfo) = api.get(&format!("/v1/keys/{key}")).await?;
        let (version, public_key) = version_key(&info, version)?;
        Ok(ClusterSigner { api, client: client.clone(), cluster_id, key: info, version, public_key, declared })
    }

    /// [`ClusterSigner::new`] with the key, version and declarations of `synod sign`.
    pub async fn of(args: &SignArgs) -> anyhow::Result<Self> {
        Self::new(&args.client, &args.key, args.key_version, Declared::of(args)?).await
    }

    /// The public key of the version that signs.
    pub fn public_key(&self) -> [u8; 32] {
        self.public_key
    }

    /// The version that signs.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The key as the cluster reported it.
    pub fn key(&self) -> &KeyInfo {
        &self.key
    }

    /// The client arguments (for output options).
    pub fn client(&self) -> &ClientArgs {
        &self.client
    }

    /// Has the cluster sign `message` as `format` in one request, waiting for
    /// approvals as [`Declared::approval_wait`] allows (saying on stderr which
    /// request awaits whom). The signature is checked against the public key
    /// before it is returned.
    pub async fn sign(
        &self,
        format: SignFormat,
        message: &[u8],
        trusted_comment: Option<String>,
    ) -> anyhow::Result<Signed> {
        let request_id = self.declared.request_id.clone().unwrap_or_else(|| {
            let mut id = [0u8; 16];
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
            hex::encode(id)
        });
        let started = Instant::now();
        let info = self.submit(&request_id, format, message, trusted_comment).await?;
        let info = self.settle(info, started).await?;
        let signature = signature_of(&info)?;
        keyfmt::verify(&self.public_key, message, &signature).map_err(|e| {
            anyhow!("the cluster's signature for request {} does not verify: {e}", shown(&info.request_id))
        })?;
        Ok(Signed { signature, info })
    }

    /// Sends one sign request (`request_id` again with the same bytes is answered
    /// with what exists) and returns the node's answer after the request's wait.
    pub async fn submit(
        &self,
        request_id: &str,
        format: SignFormat,
        message: &[u8],
        trusted_comment: Option<String>,
    ) -> anyhow::Result<RequestInfo> {
        let request_id = request_id.to_string();
        let command = Command::SignRequest {
            request_id: request_id.clone(),
            key: self.key.name.clone(),
            message: hex::encode(message),
            purpose: self.declared.purpose.clone(),
            environment: self.declared.environment.clone(),
            attributes: self.declared.attributes.clone(),
            version: Some(self.version),
            format: (format != SignFormat::Raw).then_some(format),
            trusted_comment,
        };
        let signed = sign_command(&self.client, &self.cluster_id, command)?;
        let wait_ms = u64::try_from(self.declared.wait.as_millis()).unwrap_or(u64::MAX);
        let (_, info): (u16, RequestInfo) = self.api.post(&format!("/v1/sign?wait_ms={wait_ms}"), &signed).await?;
        Ok(info)
    }

    /// Waits for a request the cluster accepted (at `started`) until it is signed or
    /// failed, or until the waits [`Declared`] allows have passed since `started`.
    pub async fn settle(&self, mut info: RequestInfo, started: Instant) -> anyhow::Result<RequestInfo> {
        let mut told = false;
        loop {
            match info.status {
                RequestStatus::Signed => return Ok(info),
                RequestStatus::Failed => bail!(
                    "request {} failed: {}",
                    shown(&info.request_id),
                    info.error.as_deref().unwrap_or("no reason given")
                ),
                RequestStatus::AwaitingApproval if self.declared.approval_wait.is_zero() => bail!(
                    "request {id} needs approvals ({}); approvers run `synod approve {id}`, then `synod request wait {id}`",
                    info.approval_progress.join("; "),
                    id = shown(&info.request_id)
                ),
                RequestStatus::AwaitingApproval if started.elapsed() >= self.declared.approval_wait => bail!(
                    "request {id} still awaits approvals after {} s ({}); it stays pending until it expires: \
                     `synod request wait {id}` picks it up",
                    self.declared.approval_wait.as_secs(),
                    info.approval_progress.join("; "),
                    id = shown(&info.request_id)
                ),
                RequestStatus::AwaitingApproval if !told => {
                    told = true;
                    note(format_args!(
                        "request {id} awaits approvals: {}; approvers run `synod approve {id}` (waiting up to {} s)",
                        info.approval_progress.join("; "),
                        self.declared.approval_wait.as_secs(),
                        id = shown(&info.request_id)
                    ));
                }
                RequestStatus::Pending if started.elapsed() >= self.declared.wait.max(self.declared.approval_wait) => {
                    bail!(
                        "request {id} is still pending after {} s; check it with `synod request show {id}`",
                        started.elapsed().as_secs(),
                        id = shown(&info.request_id)
                    )
                }
                _ => {}
            }
            // Each poll waits on the node at most until this request's own deadline.
            let deadline = match info.status {
                RequestStatus::AwaitingApproval => self.declared.approval_wait,
                _ => self.declared.wait.max(self.declared.approval_wait),
            };
            let left = deadline.saturating_sub(started.elapsed()).max(Duration::from_millis(100));
            let wait_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX).min(POLL_WAIT_MS);
            info = self.request(&info.request_id, wait_ms).await?;
        }
    }

    /// A request as the cluster knows it, waiting up to `wait_ms` for it to finish.
    pub async fn request(&self, request_id: &str, wait_ms: u64) -> anyhow::Result<RequestInfo> {
        let (_, info): (u16, RequestInfo) =
            self.api.get(&format!("/v1/requests/{request_id}?wait_ms={wait_ms}")).await?;
        Ok(info)
    }
}

/// The signing version and its public key: `version`, or the primary.
fn version_key(key: &KeyInfo, version: Option<u32>) -> anyhow::Result<(u32, [u8; 32])> {
    let wanted = version.unwrap_or(key.version);
    let hex_key = if key.versions.is_empty() || wanted == key.version {
        key.public_key.clone()
    } else {
        key.versions.iter().find(|v| v.version == wanted).and_then(|v| v.public_key.clone())
    };
    let hex_key = hex_key.ok_or_else(|| anyhow!("key {} has no public key for version {wanted}", shown(&key.name)))?;
    Ok((wanted, keyfmt::parse_public_key(&hex_key).map_err(|e| anyhow!("{e}"))?))
}

fn signature_of(info: &RequestInfo) -> anyhow::Result<[u8; 64]> {
    let hex_sig = info.signature.as_deref().ok_or_else(|| anyhow!("request {} has no signature", info.request_id))?;
    hex::decode(hex_sig)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| anyhow!("the node returned a malformed signature"))
}

/// How much of a file is read at a time while it is hashed: artifacts of any size
/// are hashed in bounded memory.
const HASH_PIECE_BYTES: usize = 1024 * 1024;

/// Feeds the file at `path` to `f` in bounded pieces.
pub fn read_in_pieces(path: &std::path::Path, mut f: impl FnMut(&[u8])) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Read;
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut buffer = vec![0u8; HASH_PIECE_BYTES];
    loop {
        let read = match file.read(&mut buffer) {
            Ok(0) => return Ok(()),
            Ok(read) => read,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        f(buffer.get(..read).unwrap_or_default());
    }
}

/// The digest `D` of the file at `path`, read in bounded pieces.
pub fn hash_file<D: sha2::Digest>(path: &std::path::Path) -> anyhow::Result<sha2::digest::Output<D>> {
    let mut hasher = D::new();
    read_in_pieces(path, |piece| hasher.update(piece))?;
    Ok(hasher.finalize())
}

/// `synod sign --format F` for every format but raw.
pub async fn sign(format: SignFormat, args: SignArgs) -> anyhow::Result<()> {
    match format {
        SignFormat::Raw => unreachable!("raw signing is `keys::sign`"),
        SignFormat::Sshsig => sshsig::sign(&args).await,
        SignFormat::Jws | SignFormat::Jwt => jws::sign(format, &args).await,
        SignFormat::Minisign => minisign::sign(&args).await,
        SignFormat::Openpgp => openpgp::sign(&args).await,
        SignFormat::X509 => bail!("x509 is signed by `synod key csr` and `synod key certificate`, not `synod sign`"),
        SignFormat::Cms => cms::sign(&args).await,
        SignFormat::HttpSignature => http::sign(&args).await,
    }
}

/// The public keys a signature may be checked against: (version when known, key).
pub type Candidates = [(Option<u32>, [u8; 32])];

/// `synod verify --format F` for every format but raw: returns the candidate
/// that verified, or an error that says why none did.
pub fn verify(
    format: SignFormat,
    args: &VerifyArgs,
    candidates: &Candidates,
) -> anyhow::Result<(Option<u32>, [u8; 32])> {
    match format {
        SignFormat::Raw => unreachable!("raw verification is `keys::verify`"),
        SignFormat::Sshsig => sshsig::verify(args, candidates),
        SignFormat::Jws | SignFormat::Jwt => jws::verify(format, args, candidates),
        SignFormat::Minisign => minisign::verify(args, candidates),
        SignFormat::Openpgp => openpgp::verify(args, candidates),
        SignFormat::X509 | SignFormat::Cms => cms::verify(format, args, candidates),
        SignFormat::HttpSignature => http::verify(args, candidates),
    }
}

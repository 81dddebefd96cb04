//! The cluster's certificate authority and the TLS configurations built from it.
//!
//! Synod runs its own small CA: `ca_init` creates a self-signed Ed25519 CA in a directory,
//! `issue` signs node and client certificates with it, and `TlsMaterial` loads a CA
//! certificate plus one identity (certificate chain and key) and turns them into the four TLS
//! configurations a node needs: QUIC server and client for Raft traffic (mutual TLS, both ends
//! must hold a certificate from the cluster CA) and HTTPS server and client for the API (client
//! certificates optional on the server). Identities live in the certificate's common name:
//! `synod-node-<id>` for nodes and `synod-client-<name>` for operators and applications;
//! every node certificate also carries the DNS name `node-<id>.synod`, which is the server
//! name a peer dials, so a node cannot impersonate another on the Raft port.
//!
//! Everything uses the `ring` crypto provider explicitly, never a process-wide default, and
//! TLS 1.3 only. Key files are written 0600 and never overwritten; the key bytes are held in
//! zeroizing buffers while they pass through this module.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig, QuicServerConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, PKCS_ED25519,
};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, DnsName, PrivateKeyDer, UnixTime};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The ALPN protocol identifier spoken on the Raft QUIC port.
pub const ALPN_RAFT: &[u8] = b"synod-raft/1";

/// The ALPN protocol identifier of the HTTPS API.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// File names inside a CA directory.
const CA_CERT_FILE: &str = "ca.crt";
const CA_KEY_FILE: &str = "ca.key";

/// Common-name prefixes that carry a certificate's Synod identity.
const NODE_CN_PREFIX: &str = "synod-node-";
const CLIENT_CN_PREFIX: &str = "synod-client-";

/// The DNS zone reserved for node server names; extra SANs may not use it.
const NODE_SERVER_NAME_SUFFIX: &str = ".synod";

/// How long a new CA is valid.
const CA_VALIDITY_DAYS: u32 = 3650;
/// The longest validity `issue` accepts; the CA's own expiry may cap it further.
const VALIDITY_DAYS_MAX: u32 = CA_VALIDITY_DAYS;
/// How far in the past `not_before` is set, to tolerate clocks that run behind.
const CLOCK_SKEW_TOLERANCE_SECS: u64 = 3600;
const SECS_PER_DAY: u64 = 86_400;

/// The longest client name and CA common name accepted (X.520 ub-common-name is 64).
const CLIENT_NAME_BYTES_MAX: usize = 64;
const COMMON_NAME_BYTES_MAX: usize = 64;
/// The most extra subject alternative names one node certificate may carry.
const SANS_EXTRA_MAX: usize = 32;
/// The largest PEM file read; certificates and Ed25519 keys are a few hundred bytes.
const PEM_FILE_BYTES_MAX: u64 = 64 * 1024;

/// QUIC keep-alive and idle timeout; a keep-alive must fire well within the idle timeout.
const KEEP_ALIVE_INTERVAL_MS: u64 = 1_000;
const IDLE_TIMEOUT_MS: u32 = 10_000;
const _: () = assert!(KEEP_ALIVE_INTERVAL_MS * 3 <= IDLE_TIMEOUT_MS as u64);

const KEY_FILE_MODE: u32 = 0o600;
const CERT_FILE_MODE: u32 = 0o644;
const CA_DIR_MODE: u32 = 0o700;

/// Who is at the other end of a connection, as proven by its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerIdentity {
    /// A cluster node with its Raft node id.
    Node(u64),
    /// An operator or application, by the name it was issued under.
    Client(String),
}

/// The DNS name every certificate of node `id` carries and peers dial it by.
pub fn node_server_name(id: u64) -> String {
    format!("node-{id}{NODE_SERVER_NAME_SUFFIX}")
}

/// Where `ca_init` put the new CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaInfo {
    /// The CA certificate, to distribute to every node and client.
    pub cert_path: PathBuf,
    /// The CA private key, to keep offline once certificates are issued.
    pub key_path: PathBuf,
    /// Hex SHA-256 of the CA certificate's DER, for operators to compare out of band.
    pub fingerprint_sha256: String,
}

/// What a certificate is issued for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A cluster node.
    Node {
        /// The Raft node id; it becomes the common name `synod-node-<id>`.
        id: u64,
        /// Extra names the node is dialled by: IP addresses, or DNS names outside `.synod`.
        sans: Vec<String>,
    },
    /// An operator or application.
    Client {
        /// 1 to 64 of `[A-Za-z0-9._-]`; it becomes the common name `synod-client-<name>`.
        name: String,
    },
}

/// Where `issue` put the new certificate and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The PEM certificate.
    pub cert_path: PathBuf,
    /// The PEM PKCS#8 private key, mode 0600.
    pub key_path: PathBuf,
}

/// Which kind of PKI file an error is about; it decides the advice in the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// `ca.crt`, the cluster's trust anchor.
    CaCertificate,
    /// `ca.key`, the CA's signing key.
    CaKey,
    /// A node or client certificate chain.
    Certificate,
    /// A node or client private key.
    PrivateKey,
}

impl FileKind {
    /// What to do when this file is missing or unusable.
    fn hint(self) -> &'static str {
        match self {
            FileKind::CaCertificate | FileKind::CaKey => {
                "run `synod ca init` to create the CA, or point at the existing CA directory"
            }
            FileKind::Certificate | FileKind::PrivateKey => {
                "run `synod ca issue` to create it, or point at the right file"
            }
        }
    }
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileKind::CaCertificate => "CA certificate",
            FileKind::CaKey => "CA private key",
            FileKind::Certificate => "certificate",
            FileKind::PrivateKey => "private key",
        })
    }
}

/// Everything that can go wrong creating, loading or using the cluster PKI.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot create directory {}: {source}; check that the parent exists and is writable", path.display())]
    CreateDir { path: PathBuf, source: io::Error },

    #[error("refusing to overwrite {}: a CA already exists in {}; keep using it, or move the directory away if you really mean to start a new cluster CA", path.display(), dir.display())]
    CaExists { path: PathBuf, dir: PathBuf },

    #[error("refusing to overwrite {kind} {}: it already exists; remove the old certificate and key first if you mean to re-issue", path.display())]
    FileExists { kind: FileKind, path: PathBuf },

    #[error("cannot write {kind} {}: {source}; check that the directory is writable and the disk is not full", path.display())]
    Write { kind: FileKind, path: PathBuf, source: io::Error },

    #[error("cannot read {kind} {}: {source}; {}", path.display(), kind.hint())]
    Read { kind: FileKind, path: PathBuf, source: io::Error },

    #[error("cannot parse {kind} {}: {detail}; {}", path.display(), kind.hint())]
    Parse { kind: FileKind, path: PathBuf, detail: String },

    #[error("cannot generate the {what}: {source}")]
    Generate { what: &'static str, source: rcgen::Error },

    #[error("CA common name {name:?} is invalid: use 1 to {COMMON_NAME_BYTES_MAX} bytes without control characters")]
    InvalidCommonName { name: String },

    #[error("client name {name:?} is invalid: use 1 to {CLIENT_NAME_BYTES_MAX} characters from A-Z, a-z, 0-9, '.', '_' and '-'")]
    InvalidClientName { name: String },

    #[error("subject alternative name {san:?} is invalid: {reason}")]
    InvalidSan { san: String, reason: &'static str },

    #[error("node certificate asks for {count} extra subject alternative names; at most {SANS_EXTRA_MAX} are allowed")]
    TooManySans { count: usize },

    #[error("validity of {days} days is out of range: ask for 1 to {VALIDITY_DAYS_MAX} days")]
    InvalidValidity { days: u32 },

    #[error("a certificate valid for {days} days would outlive the CA {}, which expires in {ca_days_left} days; issue for fewer days or create a new CA", ca_path.display())]
    OutlivesCa { days: u32, ca_path: PathBuf, ca_days_left: u64 },

    #[error("CA private key {} does not belong to CA certificate {}; restore the matching pair from backup", key_path.display(), cert_path.display())]
    CaKeyMismatch { key_path: PathBuf, cert_path: PathBuf },

    #[error("certificate {} is not trusted by CA {}: {detail}; re-issue it with `synod ca issue` from this CA, or point at the CA that issued it", cert_path.display(), ca_path.display())]
    Untrusted { cert_path: PathBuf, ca_path: PathBuf, detail: String },

    #[error("private key {} does not match certificate {}: {detail}; use the key file issued together with this certificate", key_path.display(), cert_path.display())]
    KeyMismatch { key_path: PathBuf, cert_path: PathBuf, detail: String },

    #[error("certificate is not a Synod certificate: {detail}; certificates must come from `synod ca issue`")]
    NotSynodCertificate { detail: String },

    #[error("cannot build the {what} TLS configuration: {source}")]
    Tls { what: &'static str, source: rustls::Error },

    #[error("cannot build the {what} client-certificate verifier: {source}")]
    Verifier { what: &'static str, source: VerifierBuilderError },

    #[error("cannot use the {what} TLS configuration for QUIC: {source}")]
    Quic { what: &'static str, source: NoInitialCipherSuite },

    #[error(
        "the CA key {path} is protected by a passphrase; set SYNOD_CA_PASSPHRASE or run on a terminal to be prompted"
    )]
    CaKeyLocked { path: PathBuf },

    #[error("the passphrase does not open the CA key {path}; try again")]
    CaKeyPassphrase { path: PathBuf },

    #[error("cannot encode a private key: {detail}")]
    KeyProtection { detail: String },

    #[error("QUIC peer {remote} presented no certificate; the endpoint must be built with `TlsMaterial::quic_server_config` or `quic_client_config`")]
    NoPeerCertificate { remote: SocketAddr },
}

/// Creates a new cluster CA in `dir`: a self-signed Ed25519 certificate `ca.crt` (0644) and
/// its key `ca.key` (0600). Refuses to touch a directory that already holds either file.
/// With a passphrase the key is stored as an encrypted PKCS#8 document (PBES2: scrypt and
/// AES-256-CBC), so the key file alone can mint nothing; `issue` then needs the passphrase.
pub fn ca_init(dir: &Path, common_name: &str, passphrase: Option<&str>) -> Result<CaInfo, PkiError> {
    validate_common_name(common_name)?;
    create_dir(dir)?;
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    for path in [&key_path, &cert_path] {
        if path.symlink_metadata().is_ok() {
            return Err(PkiError::CaExists { path: path.clone(), dir: dir.to_path_buf() });
        }
    }

    let key = KeyPair::generate_for(&PKCS_ED25519).map_err(|source| PkiError::Generate { what: "CA key", source })?;
    let now_secs = unix_now_secs();
    let mut params = ca_params(common_name);
    set_validity(
        &mut params,
        now_secs.saturating_sub(CLOCK_SKEW_TOLERANCE_SECS),
        now_secs + u64::from(CA_VALIDITY_DAYS) * SECS_PER_DAY,
    );
    let cert = params.self_signed(&key).map_err(|source| PkiError::Generate { what: "CA certificate", source })?;

    let key_pem = match passphrase {
        None => key_pem_v1(&key)?,
        Some(passphrase) => encrypt_key_pem(&key, passphrase)?,
    };
    let ca_exists = |error: PkiError| match error {
        PkiError::FileExists { path, .. } => PkiError::CaExists { path, dir: dir.to_path_buf() },
        other => other,
    };
    write_new(&key_path, FileKind::CaKey, key_pem.as_bytes(), KEY_FILE_MODE).map_err(ca_exists)?;
    if let Err(error) = write_new(&cert_path, FileKind::CaCertificate, cert.pem().as_bytes(), CERT_FILE_MODE) {
        // Do not leave a key without its certificate behind: it would block the next attempt.
        let _ = fs::remove_file(&key_path);
        return Err(ca_exists(error));
    }
    Ok(CaInfo { cert_path, key_path, fingerprint_sha256: fingerprint(cert.der()) })
}

/// Issues a certificate for `subject`, signed by the CA in `ca_dir`, into `out_dir`
/// (`node-<id>.crt`/`.key` or `client-<name>.crt`/`.key`). Never overwrites a file.
/// `ca_passphrase` opens a passphrase-protected CA key (see [`ca_key_is_protected`]).
pub fn issue(
    ca_dir: &Path,
    subject: &Subject,
    out_dir: &Path,
    validity_days: u32,
    ca_passphrase: Option<&str>,
) -> Result<Issued, PkiError> {
    if validity_days == 0 || validity_days > VALIDITY_DAYS_MAX {
        return Err(PkiError::InvalidValidity { days: validity_days });
    }
    let plan = SubjectPlan::new(subject)?;
    let ca = CaSigner::load(ca_dir, ca_passphrase)?;

    let now_secs = unix_now_secs();
    let not_after_secs = now_secs + u64::from(validity_days) * SECS_PER_DAY;
    if not_after_secs > ca.not_after_secs {
        return Err(PkiError::OutlivesCa {
            days: validity_days,
            ca_path: ca.cert_path.clone(),
            ca_days_left: ca.not_after_secs.saturating_sub(now_secs) / SECS_PER_DAY,
        });
    }

    let key = KeyPair::generate_for(&PKCS_ED25519)
        .map_err(|source| PkiError::Generate { what: "certificate key", source })?;
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(&plan.common_name);
    params.subject_alt_names = plan.sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = plan.extended_key_usages;
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, now_secs.saturating_sub(CLOCK_SKEW_TOLERANCE_SECS), not_after_secs);
    let issuer = Issuer::new(ca_params(&ca.common_name), &ca.key);
    let cert = params.signed_by(&key, &issuer).map_err(|source| PkiError::Generate { what: "certificate", source })?;

    let cert_path = out_dir.join(format!("{}.crt", plan.file_stem));
    let key_path = out_dir.join(format!("{}.key", plan.file_stem));
    // Postcondition: what we hand out must verify exactly as peers will verify it. This also
    // catches a CA whose subject `ca_params` cannot reproduce byte for byte (a CA not made by
    // `ca_init`), since leaves would then name the wrong issuer.
    verify_chain(&ca.cert_der, std::slice::from_ref(cert.der())).map_err(|detail| PkiError::Parse {
        kind: FileKind::CaCertificate,
        path: ca.cert_path.clone(),
        detail: format!("a certificate signed with it does not verify ({detail}); was it made by `synod ca init`?"),
    })?;

    create_dir(out_dir)?;
    let key_pem = key_pem_v1(&key)?;
    write_new(&key_path, FileKind::PrivateKey, key_pem.as_bytes(), KEY_FILE_MODE)?;
    if let Err(error) = write_new(&cert_path, FileKind::Certificate, cert.pem().as_bytes(), CERT_FILE_MODE) {
        // The key we just wrote is useless without its certificate.
        let _ = fs::remove_file(&key_path);
        return Err(error);
    }
    Ok(Issued { cert_path, key_path })
}

/// The PEM label of an encrypted PKCS#8 key.
const ENCRYPTED_KEY_LABEL: &str = "ENCRYPTED PRIVATE KEY";

/// Whether the CA key in `ca_dir` is passphrase-protected (so `issue` needs the passphrase).
pub fn ca_key_is_protected(ca_dir: &Path) -> Result<bool, PkiError> {
    let key = read_limited(&ca_dir.join(CA_KEY_FILE), FileKind::CaKey)?;
    Ok(std::str::from_utf8(&key).is_ok_and(|text| text.contains(ENCRYPTED_KEY_LABEL)))
}

/// A key as a PKCS#8 v1 PEM document (RFC 8410, private key only). ring writes
/// v2 documents with the public key embedded, which OpenSSL 3.0 (and so curl)
/// cannot read; v1 reads everywhere.
fn key_pem_v1(key: &KeyPair) -> Result<Zeroizing<String>, PkiError> {
    pkcs8_pem_v1(&Zeroizing::new(key.serialize_der()))
}

/// Re-encodes a PKCS#8 DER private key as a v1 PEM document (see [`key_pem_v1`]).
pub fn pkcs8_pem_v1(der: &[u8]) -> Result<Zeroizing<String>, PkiError> {
    use pkcs8::der::pem::LineEnding;
    use pkcs8::der::EncodePem;
    let fail = |detail: String| PkiError::KeyProtection { detail };
    let mut info = pkcs8::PrivateKeyInfo::try_from(der).map_err(|e| fail(e.to_string()))?;
    info.public_key = None;
    let pem = info.to_pem(LineEnding::LF).map_err(|e| fail(e.to_string()))?;
    Ok(Zeroizing::new(pem))
}

fn encrypt_key_pem(key: &KeyPair, passphrase: &str) -> Result<Zeroizing<String>, PkiError> {
    use pkcs8::der::pem::LineEnding;
    let generate = |detail: String| PkiError::KeyProtection { detail };
    let der = Zeroizing::new(key.serialize_der());
    let info = pkcs8::PrivateKeyInfo::try_from(der.as_slice()).map_err(|e| generate(e.to_string()))?;
    let encrypted = info.encrypt(rand_core::OsRng, passphrase.as_bytes()).map_err(|e| generate(e.to_string()))?;
    let pem = encrypted.to_pem(ENCRYPTED_KEY_LABEL, LineEnding::LF).map_err(|e| generate(e.to_string()))?;
    Ok(Zeroizing::new(pem.to_string()))
}

fn decrypt_key_pem(text: &str, passphrase: &str, path: &Path) -> Result<KeyPair, PkiError> {
    let parse = |detail: String| PkiError::Parse { kind: FileKind::CaKey, path: path.to_path_buf(), detail };
    let (_, document) = pkcs8::Document::from_pem(text).map_err(|e| parse(e.to_string()))?;
    let encrypted = pkcs8::EncryptedPrivateKeyInfo::try_from(document.as_bytes()).map_err(|e| parse(e.to_string()))?;
    let plain =
        encrypted.decrypt(passphrase.as_bytes()).map_err(|_| PkiError::CaKeyPassphrase { path: path.to_path_buf() })?;
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from(plain.as_bytes());
    KeyPair::try_from(&der).map_err(|e| parse(e.to_string()))
}

/// Reads the Synod identity out of a certificate's common name.
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<PeerIdentity, PkiError> {
    let not_synod = |detail: String| PkiError::NotSynodCertificate { detail };
    let (rest, x509) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| not_synod(format!("cannot parse it as X.509: {e}")))?;
    if !rest.is_empty() {
        return Err(not_synod(format!("{} bytes of trailing data after the certificate", rest.len())));
    }
    let mut common_names = x509.subject().iter_common_name();
    let Some(common_name) = common_names.next() else {
        return Err(not_synod("the subject has no common name".to_string()));
    };
    if common_names.next().is_some() {
        return Err(not_synod("the subject has more than one common name".to_string()));
    }
    let common_name = common_name.as_str().map_err(|e| not_synod(format!("the common name is not a string: {e}")))?;
    parse_identity(common_name).map_err(not_synod)
}

/// A node's identity for the commands it authors (DKG messages, signing
/// results): its certificate and that certificate's Ed25519 key. Every node
/// checks such a command against the cluster CA named at genesis, so a leader
/// cannot forge one.
pub struct NodeIdentity {
    /// The node id the certificate names.
    pub id: u64,
    /// The certificate (DER), attached to every command the node signs.
    pub cert_der: Vec<u8>,
    /// The certificate's private key.
    key: ed25519_dalek::SigningKey,
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeIdentity").field("id", &self.id).field("key", &"<redacted>").finish()
    }
}

impl NodeIdentity {
    /// The identity in a node's TLS material (its certificate must be Ed25519, as
    /// `synod ca issue` makes them).
    pub fn from_tls(material: &TlsMaterial) -> Result<Self, PkiError> {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        let PeerIdentity::Node(id) = material.identity else {
            return Err(PkiError::NotSynodCertificate { detail: "a node needs a node certificate".into() });
        };
        let not_ed25519 = || PkiError::NotSynodCertificate {
            detail: "the node key is not an Ed25519 PKCS#8 key; issue node certificates with `synod ca issue node`"
                .into(),
        };
        let PrivateKeyDer::Pkcs8(der) = &material.key else { return Err(not_ed25519()) };
        let key = ed25519_dalek::SigningKey::from_pkcs8_der(der.secret_pkcs8_der()).map_err(|_| not_ed25519())?;
        Ok(NodeIdentity { id, cert_der: material.chain[0].to_vec(), key })
    }

    /// Signs an envelope as this node, attaching the certificate.
    pub fn sign(&self, envelope: &synod_proto::Envelope) -> synod_proto::SignedCommand {
        synod_proto::SignedCommand::sign_as_node(envelope, &self.key, &self.cert_der)
    }
}

/// The DER of the single certificate in a PEM file (the cluster CA's, for genesis).
pub fn certificate_der(path: &Path) -> Result<Vec<u8>, PkiError> {
    Ok(read_single_cert(path, FileKind::CaCertificate)?.to_vec())
}

/// Checks the certificate a node attached to a command it signed: it must
/// chain to the cluster CA at `time_ms` (the log entry's time, so every node
/// decides alike) and name a node. Returns the node id and the certificate's
/// Ed25519 public key, which must be the command's author.
pub fn verify_node_certificate(ca_der: &[u8], cert_der: &[u8], time_ms: u64) -> Result<(u64, [u8; 32]), String> {
    // Every node-authored entry carries a certificate, and the same few certificates come
    // back again and again; a chain that verified once only needs its validity window
    // checked against the new time, which gives the same answer as verifying it again.
    let cache_key: [u8; 32] = {
        let mut h = Sha256::new();
        h.update((ca_der.len() as u64).to_be_bytes());
        h.update(ca_der);
        h.update(cert_der);
        h.finalize().into()
    };
    if let Some(hit) = VERIFIED_CERTS.lock().expect("certificate cache lock").get(&cache_key) {
        if (hit.not_before_ms..=hit.not_after_ms).contains(&time_ms) {
            return Ok((hit.node_id, hit.key));
        }
    }
    let (node_id, key) = verify_node_certificate_uncached(ca_der, cert_der, time_ms)?;
    let (_, x509) = x509_parser::parse_x509_certificate(cert_der).map_err(|e| format!("cannot parse it: {e}"))?;
    let validity = x509.validity();
    let to_ms = |t: x509_parser::time::ASN1Time| u64::try_from(t.timestamp()).unwrap_or(0).saturating_mul(1000);
    let entry = VerifiedCert {
        node_id,
        key,
        not_before_ms: to_ms(validity.not_before),
        not_after_ms: to_ms(validity.not_after).saturating_add(999),
    };
    let mut cache = VERIFIED_CERTS.lock().expect("certificate cache lock");
    if cache.len() >= VERIFIED_CERTS_MAX {
        cache.clear();
    }
    cache.insert(cache_key, entry);
    Ok((node_id, key))
}

/// A node certificate whose chain verified, and when it is valid.
struct VerifiedCert {
    node_id: u64,
    key: [u8; 32],
    not_before_ms: u64,
    not_after_ms: u64,
}

/// How many verified certificates are remembered (cleared when full).
const VERIFIED_CERTS_MAX: usize = 1024;

static VERIFIED_CERTS: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<[u8; 32], VerifiedCert>>> =
    std::sync::LazyLock::new(Default::default);

fn verify_node_certificate_uncached(ca_der: &[u8], cert_der: &[u8], time_ms: u64) -> Result<(u64, [u8; 32]), String> {
    let ca = CertificateDer::from(ca_der);
    let cert = CertificateDer::from(cert_der);
    let roots = root_store(&ca).map_err(|e| format!("the cluster CA certificate is unusable: {e}"))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, ring_provider())
        .build()
        .map_err(|e| format!("cannot build a verifier: {e}"))?;
    let time = UnixTime::since_unix_epoch(Duration::from_millis(time_ms));
    verifier.verify_client_cert(&cert, &[], time).map_err(|e| {
        format!("the node certificate does not verify against the cluster CA: {}", describe_verify_error(e))
    })?;
    let PeerIdentity::Node(id) = identity_of(&cert).map_err(|e| e.to_string())? else {
        return Err("the certificate is not a node certificate".into());
    };
    let (_, x509) = x509_parser::parse_x509_certificate(cert_der).map_err(|e| format!("cannot parse it: {e}"))?;
    let key: [u8; 32] = x509
        .public_key()
        .subject_public_key
        .data
        .as_ref()
        .try_into()
        .map_err(|_| "the certificate key is not Ed25519".to_string())?;
    Ok((id, key))
}

/// A CA and node identities made in memory from `rng` (deterministic for a
/// seeded one), for the simulator and tests: returns the CA certificate (DER)
/// and one identity per id.
pub fn in_memory_pki(ids: &[u64], rng: &mut dyn rand_core::RngCore) -> Result<(Vec<u8>, Vec<NodeIdentity>), PkiError> {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let mut generate = |what| {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut *seed);
        let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
        let der = signing.to_pkcs8_der().map_err(|e| PkiError::NotSynodCertificate { detail: e.to_string() })?;
        let der = rustls_pki_types::PrivatePkcs8KeyDer::from(der.as_bytes());
        let pair = KeyPair::try_from(&der).map_err(|source| PkiError::Generate { what, source })?;
        Ok::<_, PkiError>((signing, pair))
    };
    let (_, ca_key) = generate("CA key")?;
    let mut ca = ca_params("synod-sim-ca");
    ca.serial_number = Some(rcgen::SerialNumber::from(1u64));
    set_validity(&mut ca, 0, 4_000_000_000);
    let ca_cert = ca.self_signed(&ca_key).map_err(|source| PkiError::Generate { what: "CA certificate", source })?;
    let issuer = Issuer::new(ca_params("synod-sim-ca"), &ca_key);
    let mut identities = Vec::new();
    for &id in ids {
        let (signing, key) = generate("node key")?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(&format!("{NODE_CN_PREFIX}{id}"));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(rcgen::SerialNumber::from(id + 1));
        set_validity(&mut params, 0, 4_000_000_000);
        let cert =
            params.signed_by(&key, &issuer).map_err(|source| PkiError::Generate { what: "certificate", source })?;
        identities.push(NodeIdentity { id, cert_der: cert.der().to_vec(), key: signing });
    }
    Ok((ca_cert.der().to_vec(), identities))
}

/// Hex SHA-256 of a certificate's DER encoding.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    hex::encode(Sha256::digest(cert.as_ref()))
}

/// The CA certificate plus one verified identity (certificate chain and private key).
pub struct TlsMaterial {
    /// The only trust anchor: peers must chain to it.
    pub ca: CertificateDer<'static>,
    /// Our certificate first, then any intermediates (none, with `synod ca issue`).
    pub chain: Vec<CertificateDer<'static>>,
    /// Our private key; private so it only leaves this module inside a TLS config.
    key: PrivateKeyDer<'static>,
    /// Who `chain[0]` says we are.
    pub identity: PeerIdentity,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("ca_fingerprint", &self.ca_fingerprint())
            .field("chain_fingerprints", &self.chain.iter().map(fingerprint).collect::<Vec<_>>())
            .field("key", &"<redacted>")
            .field("identity", &self.identity)
            .finish()
    }
}

impl TlsMaterial {
    /// Loads and cross-checks a CA certificate, a certificate chain and its key: the chain
    /// must verify against the CA now, the key must match the certificate, and the
    /// certificate must carry a Synod identity.
    pub fn load(ca_cert: &Path, cert: &Path, key: &Path) -> Result<Self, PkiError> {
        let ca = read_single_cert(ca_cert, FileKind::CaCertificate)?;
        let chain = read_certs(cert, FileKind::Certificate)?;
        let private_key = read_key(key)?;

        verify_chain(&ca, &chain).map_err(|detail| PkiError::Untrusted {
            cert_path: cert.to_path_buf(),
            ca_path: ca_cert.to_path_buf(),
            detail,
        })?;
        CertifiedKey::from_der(chain.clone(), private_key.clone_key(), &ring_provider())
            .and_then(|certified| certified.keys_match())
            .map_err(|e| PkiError::KeyMismatch {
                key_path: key.to_path_buf(),
                cert_path: cert.to_path_buf(),
                detail: e.to_string(),
            })?;
        let identity = identity_of(&chain[0]).map_err(|e| PkiError::Parse {
            kind: FileKind::Certificate,
            path: cert.to_path_buf(),
            detail: e.to_string(),
        })?;
        Ok(TlsMaterial { ca, chain, key: private_key, identity })
    }

    /// Hex SHA-256 of the CA certificate.
    pub fn ca_fingerprint(&self) -> String {
        fingerprint(&self.ca)
    }

    /// The Raft QUIC server: mutual TLS 1.3, a client certificate from the CA is required.
    pub fn quic_server_config(&self) -> Result<quinn::ServerConfig, PkiError> {
        const WHAT: &str = "QUIC server";
        let verifier = self.client_verifier(WHAT, ClientAuth::Required)?;
        let tls = self.server_tls(WHAT, verifier, ALPN_RAFT)?;
        let quic = QuicServerConfig::try_from(tls).map_err(|source| PkiError::Quic { what: WHAT, source })?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
        config.transport_config(Arc::new(transport_config()));
        Ok(config)
    }

    /// The Raft QUIC client: presents our certificate and accepts only a server that chains
    /// to the CA and carries the server name passed to `connect` (`node_server_name(id)`).
    pub fn quic_client_config(&self) -> Result<quinn::ClientConfig, PkiError> {
        const WHAT: &str = "QUIC client";
        let mut tls = self.client_tls(WHAT)?;
        tls.alpn_protocols = vec![ALPN_RAFT.to_vec()];
        let quic = QuicClientConfig::try_from(tls).map_err(|source| PkiError::Quic { what: WHAT, source })?;
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        config.transport_config(Arc::new(transport_config()));
        Ok(config)
    }

    /// The HTTPS API server: a client certificate is optional, but one that is presented
    /// must chain to the CA.
    pub fn https_server_config(&self) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        const WHAT: &str = "HTTPS server";
        let verifier = self.client_verifier(WHAT, ClientAuth::Optional)?;
        Ok(Arc::new(self.server_tls(WHAT, verifier, ALPN_HTTP1)?))
    }

    /// An HTTPS API client that trusts only the CA and presents our certificate.
    pub fn https_client_config(&self) -> Result<rustls::ClientConfig, PkiError> {
        let mut tls = self.client_tls("HTTPS client")?;
        tls.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
        Ok(tls)
    }

    fn client_verifier(&self, what: &'static str, auth: ClientAuth) -> Result<Arc<dyn ClientCertVerifier>, PkiError> {
        let roots = root_store(&self.ca).map_err(|source| PkiError::Tls { what, source })?;
        let builder = WebPkiClientVerifier::builder_with_provider(roots, ring_provider());
        let builder = match auth {
            ClientAuth::Required => builder,
            ClientAuth::Optional => builder.allow_unauthenticated(),
        };
        builder.build().map_err(|source| PkiError::Verifier { what, source })
    }

    fn server_tls(
        &self,
        what: &'static str,
        verifier: Arc<dyn ClientCertVerifier>,
        alpn: &[u8],
    ) -> Result<rustls::ServerConfig, PkiError> {
        let tls_error = |source| PkiError::Tls { what, source };
        let mut config = rustls::ServerConfig::builder_with_provider(ring_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_error)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(tls_error)?;
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(config)
    }

    fn client_tls(&self, what: &'static str) -> Result<rustls::ClientConfig, PkiError> {
        let tls_error = |source| PkiError::Tls { what, source };
        let roots = root_store(&self.ca).map_err(tls_error)?;
        rustls::ClientConfig::builder_with_provider(ring_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_error)?
            .with_root_certificates(roots)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(tls_error)
    }
}

/// Whether a server insists on a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientAuth {
    Required,
    Optional,
}

/// An HTTPS API client that trusts only the CA in `ca_cert` and presents no certificate.
pub fn https_client_config_anonymous(ca_cert: &Path) -> Result<rustls::ClientConfig, PkiError> {
    const WHAT: &str = "anonymous HTTPS client";
    let tls_error = |source| PkiError::Tls { what: WHAT, source };
    let ca = read_single_cert(ca_cert, FileKind::CaCertificate)?;
    let roots = root_store(&ca).map_err(|e| PkiError::Parse {
        kind: FileKind::CaCertificate,
        path: ca_cert.to_path_buf(),
        detail: e.to_string(),
    })?;
    let mut config = rustls::ClientConfig::builder_with_provider(ring_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(config)
}

/// Who the peer of an established QUIC connection is, from the certificate it presented.
pub fn peer_identity_from_quic(conn: &quinn::Connection) -> Result<PeerIdentity, PkiError> {
    let missing = || PkiError::NoPeerCertificate { remote: conn.remote_address() };
    let any = conn.peer_identity().ok_or_else(missing)?;
    let certs = any.downcast::<Vec<CertificateDer<'static>>>().map_err(|_| missing())?;
    let first = certs.first().ok_or_else(missing)?;
    identity_of(first)
}

/// What `issue` will put into a certificate for one subject, after validation.
struct SubjectPlan {
    common_name: String,
    sans: Vec<SanType>,
    extended_key_usages: Vec<ExtendedKeyUsagePurpose>,
    file_stem: String,
}

impl SubjectPlan {
    fn new(subject: &Subject) -> Result<Self, PkiError> {
        match subject {
            Subject::Node { id, sans } => {
                if sans.len() > SANS_EXTRA_MAX {
                    return Err(PkiError::TooManySans { count: sans.len() });
                }
                let own_name = node_server_name(*id);
                let mut san_types = vec![dns_san(&own_name)?];
                for san in sans {
                    let san_type = extra_san(san)?;
                    if !san_types.contains(&san_type) {
                        san_types.push(san_type);
                    }
                }
                Ok(SubjectPlan {
                    common_name: format!("{NODE_CN_PREFIX}{id}"),
                    sans: san_types,
                    extended_key_usages: vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
                    file_stem: format!("node-{id}"),
                })
            }
            Subject::Client { name } => {
                validate_client_name(name).map_err(|()| PkiError::InvalidClientName { name: name.clone() })?;
                Ok(SubjectPlan {
                    common_name: format!("{CLIENT_CN_PREFIX}{name}"),
                    sans: Vec::new(),
                    extended_key_usages: vec![ExtendedKeyUsagePurpose::ClientAuth],
                    file_stem: format!("client-{name}"),
                })
            }
        }
    }
}

/// An extra SAN for a node: an IP address if it parses as one, else a DNS name outside the
/// reserved `.synod` zone (which would let one node answer for another).
fn extra_san(san: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = san.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let lower = san.to_ascii_lowercase();
    let bare = lower.trim_end_matches('.');
    if bare == &NODE_SERVER_NAME_SUFFIX[1..] || bare.ends_with(NODE_SERVER_NAME_SUFFIX) {
        return Err(PkiError::InvalidSan {
            san: san.to_string(),
            reason: "names in the .synod zone are reserved for node identities",
        });
    }
    dns_san(san)
}

fn dns_san(name: &str) -> Result<SanType, PkiError> {
    let invalid = |reason| PkiError::InvalidSan { san: name.to_string(), reason };
    DnsName::try_from(name).map_err(|_| invalid("not an IP address or a valid DNS name"))?;
    let ia5 = name.to_string().try_into().map_err(|_| invalid("DNS names must be ASCII"))?;
    Ok(SanType::DnsName(ia5))
}

fn validate_client_name(name: &str) -> Result<(), ()> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > CLIENT_NAME_BYTES_MAX || !name.chars().all(allowed) {
        return Err(());
    }
    Ok(())
}

fn validate_common_name(name: &str) -> Result<(), PkiError> {
    if name.is_empty() || name.len() > COMMON_NAME_BYTES_MAX || name.chars().any(char::is_control) {
        return Err(PkiError::InvalidCommonName { name: name.to_string() });
    }
    Ok(())
}

/// Maps a certificate common name to an identity; the error is a detail for the message.
fn parse_identity(common_name: &str) -> Result<PeerIdentity, String> {
    if let Some(id_text) = common_name.strip_prefix(NODE_CN_PREFIX) {
        let id: u64 = id_text.parse().map_err(|_| format!("common name {common_name:?} has no valid node id"))?;
        // Reject "007" or "+7": one node, one spelling.
        if id.to_string() != id_text {
            return Err(format!("common name {common_name:?} spells the node id non-canonically"));
        }
        return Ok(PeerIdentity::Node(id));
    }
    if let Some(name) = common_name.strip_prefix(CLIENT_CN_PREFIX) {
        validate_client_name(name).map_err(|()| format!("common name {common_name:?} has an invalid client name"))?;
        return Ok(PeerIdentity::Client(name.to_string()));
    }
    Err(format!("common name {common_name:?} starts with neither {NODE_CN_PREFIX:?} nor {CLIENT_CN_PREFIX:?}"))
}

/// The parameters that define the CA as an issuer. `issue` rebuilds them from the common
/// name, so they must stay deterministic: the issuer name in every leaf is encoded from them.
fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(common_name);
    // Path length 0: the CA signs leaves only, never intermediate CAs.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

/// The CA loaded for signing.
struct CaSigner {
    cert_path: PathBuf,
    cert_der: CertificateDer<'static>,
    common_name: String,
    not_after_secs: u64,
    key: KeyPair,
}

impl CaSigner {
    fn load(ca_dir: &Path, passphrase: Option<&str>) -> Result<Self, PkiError> {
        let cert_path = ca_dir.join(CA_CERT_FILE);
        let key_path = ca_dir.join(CA_KEY_FILE);
        let cert_der = read_single_cert(&cert_path, FileKind::CaCertificate)?;
        let parse_error =
            |detail: String| PkiError::Parse { kind: FileKind::CaCertificate, path: cert_path.clone(), detail };
        let (_, x509) = x509_parser::parse_x509_certificate(cert_der.as_ref())
            .map_err(|e| parse_error(format!("not an X.509 certificate: {e}")))?;
        if !x509.is_ca() {
            return Err(parse_error("it is not a CA certificate".to_string()));
        }
        let common_name = x509
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .ok_or_else(|| parse_error("the subject has no common name".to_string()))?
            .to_string();
        let not_after_secs = u64::try_from(x509.validity().not_after.timestamp()).unwrap_or(0);
        let ca_spki = x509.public_key().raw.to_vec();
        drop(x509);

        let key_pem = read_limited(&key_path, FileKind::CaKey)?;
        let key_text = std::str::from_utf8(&key_pem).map_err(|_| PkiError::Parse {
            kind: FileKind::CaKey,
            path: key_path.clone(),
            detail: "not a PEM text file".to_string(),
        })?;
        let key = if key_text.contains(ENCRYPTED_KEY_LABEL) {
            let passphrase = passphrase.ok_or_else(|| PkiError::CaKeyLocked { path: key_path.clone() })?;
            decrypt_key_pem(key_text, passphrase, &key_path)?
        } else {
            KeyPair::from_pem(key_text).map_err(|e| PkiError::Parse {
                kind: FileKind::CaKey,
                path: key_path.clone(),
                detail: e.to_string(),
            })?
        };
        if key.subject_public_key_info() != ca_spki {
            return Err(PkiError::CaKeyMismatch { key_path, cert_path });
        }
        Ok(CaSigner { cert_path, cert_der, common_name, not_after_secs, key })
    }
}

/// Verifies `chain` against `ca` as a client certificate, the check every certificate we
/// issue passes (node certificates also carry serverAuth). Errors are message details.
fn verify_chain(ca: &CertificateDer<'_>, chain: &[CertificateDer<'_>]) -> Result<(), String> {
    let Some((end_entity, intermediates)) = chain.split_first() else {
        return Err("the file holds no certificate".to_string());
    };
    let roots = root_store(ca).map_err(|e| format!("the CA certificate is unusable: {e}"))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, ring_provider())
        .build()
        .map_err(|e| format!("cannot build a verifier: {e}"))?;
    verifier.verify_client_cert(end_entity, intermediates, UnixTime::now()).map(|_| ()).map_err(describe_verify_error)
}

fn describe_verify_error(error: rustls::Error) -> String {
    match error {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "it was not issued by this CA".to_string()
        }
        // Same issuer name, different key: typically another cluster's CA with the same name.
        rustls::Error::InvalidCertificate(CertificateError::BadSignature) => {
            "it was not issued by this CA (the issuer name matches but the signature does not)".to_string()
        }
        rustls::Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
            "it has expired".to_string()
        }
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => "it is not valid yet (check this machine's clock)".to_string(),
        other => other.to_string(),
    }
}

fn root_store(ca: &CertificateDer<'_>) -> Result<Arc<RootCertStore>, rustls::Error> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone().into_owned())?;
    Ok(Arc::new(roots))
}

fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn transport_config() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_millis(KEEP_ALIVE_INTERVAL_MS)));
    transport.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(IDLE_TIMEOUT_MS))));
    transport
}

/// Reads a whole PEM file of at most `PEM_FILE_BYTES_MAX` bytes into a zeroizing buffer.
fn read_limited(path: &Path, kind: FileKind) -> Result<Zeroizing<Vec<u8>>, PkiError> {
    let read_error = |source| PkiError::Read { kind, path: path.to_path_buf(), source };
    let file = File::open(path).map_err(read_error)?;
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(PEM_FILE_BYTES_MAX + 1).read_to_end(&mut bytes).map_err(read_error)?;
    if bytes.len() as u64 > PEM_FILE_BYTES_MAX {
        return Err(PkiError::Parse {
            kind,
            path: path.to_path_buf(),
            detail: format!("the file is larger than {PEM_FILE_BYTES_MAX} bytes"),
        });
    }
    Ok(bytes)
}

fn read_certs(path: &Path, kind: FileKind) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let bytes = read_limited(path, kind)?;
    let parse_error = |detail: String| PkiError::Parse { kind, path: path.to_path_buf(), detail };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| parse_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(parse_error("it holds no PEM \"CERTIFICATE\" block".to_string()));
    }
    Ok(certs)
}

fn read_single_cert(path: &Path, kind: FileKind) -> Result<CertificateDer<'static>, PkiError> {
    let mut certs = read_certs(path, kind)?;
    if certs.len() != 1 {
        return Err(PkiError::Parse {
            kind,
            path: path.to_path_buf(),
            detail: format!("expected exactly one certificate, found {}", certs.len()),
        });
    }
    Ok(certs.remove(0))
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, PkiError> {
    let bytes = read_limited(path, FileKind::PrivateKey)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| PkiError::Parse {
        kind: FileKind::PrivateKey,
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

/// Creates `dir` (and missing parents) with mode 0700; an existing directory is left as is.
fn create_dir(dir: &Path) -> Result<(), PkiError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(CA_DIR_MODE)
        .create(dir)
        .map_err(|source| PkiError::CreateDir { path: dir.to_path_buf(), source })
}

/// Writes a file that must not exist yet (see [`crate::files::write_new`]).
fn write_new(path: &Path, kind: FileKind, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    crate::files::write_new(path, contents, mode).map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            PkiError::FileExists { kind, path: path.to_path_buf() }
        } else {
            PkiError::Write { kind, path: path.to_path_buf(), source }
        }
    })
}

fn unix_now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_secs()).unwrap_or(0)
}

/// Sets a certificate's validity window from Unix seconds; rcgen's time type is reached by
/// inference so this crate needs no direct dependency on `time`.
fn set_validity(params: &mut CertificateParams, not_before_secs: u64, not_after_secs: u64) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + Duration::from_secs(not_before_secs);
    params.not_after = epoch + Duration::from_secs(not_after_secs);
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use std::net::Ipv4Addr;
    use tempfile::TempDir;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// How long any network step in these tests may take before the test fails.
    const STEP_TIMEOUT: Duration = Duration::from_secs(10);

    /// A CA with node 1, node 2 and client "alice" issued into `certs`.
    struct Cluster {
        _dir: TempDir,
        ca_dir: PathBuf,
        certs_dir: PathBuf,
        ca: CaInfo,
    }

    impl Cluster {
        fn new() -> Cluster {
            let dir = TempDir::new().expect("tempdir");
            let ca_dir = dir.path().join("ca");
            let certs_dir = dir.path().join("certs");
            let ca = ca_init(&ca_dir, "Synod test CA", None).expect("ca_init");
            let cluster = Cluster { _dir: dir, ca_dir, certs_dir, ca };
            cluster.issue(&node(1));
            cluster.issue(&node(2));
            cluster.issue(&Subject::Client { name: "alice".to_string() });
            cluster
        }

        fn issue(&self, subject: &Subject) -> Issued {
            issue(&self.ca_dir, subject, &self.certs_dir, 30, None).expect("issue")
        }

        fn material(&self, stem: &str) -> TlsMaterial {
            TlsMaterial::load(
                &self.ca.cert_path,
                &self.certs_dir.join(format!("{stem}.crt")),
                &self.certs_dir.join(format!("{stem}.key")),
            )
            .expect("load TlsMaterial")
        }
    }

    fn node(id: u64) -> Subject {
        Subject::Node { id, sans: vec!["127.0.0.1".to_string(), "localhost".to_string()] }
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    fn server_endpoint(material: &TlsMaterial) -> quinn::Endpoint {
        let config = material.quic_server_config().expect("quic_server_config");
        quinn::Endpoint::server(config, (Ipv4Addr::LOCALHOST, 0).into()).expect("server endpoint")
    }

    fn client_endpoint(material: &TlsMaterial) -> quinn::Endpoint {
        let mut endpoint = quinn::Endpoint::client((Ipv4Addr::LOCALHOST, 0).into()).expect("client endpoint");
        endpoint.set_default_client_config(material.quic_client_config().expect("client config"));
        endpoint
    }

    /// Opens a bidi stream, sends `message`, and reads the whole reply.
    async fn exchange(conn: &quinn::Connection, message: &[u8]) -> anyhow::Result<Vec<u8>> {
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(message).await?;
        send.finish()?;
        Ok(recv.read_to_end(1024).await?)
    }

    #[test]
    fn pki_issue_load_and_identify() {
        // Issuing node and client certificates yields loadable material with the right
        // identities, fingerprints and file modes.
        let cluster = Cluster::new();
        assert_eq!(mode_of(&cluster.ca.key_path), 0o600);
        assert_eq!(mode_of(&cluster.ca.cert_path), 0o644);
        assert_eq!(mode_of(&cluster.ca_dir), 0o700);
        for stem in ["node-1", "node-2", "client-alice"] {
            assert_eq!(mode_of(&cluster.certs_dir.join(format!("{stem}.key"))), 0o600);
            assert_eq!(mode_of(&cluster.certs_dir.join(format!("{stem}.crt"))), 0o644);
        }

        let node1 = cluster.material("node-1");
        assert_eq!(node1.identity, PeerIdentity::Node(1));
        assert_eq!(identity_of(&node1.chain[0]).unwrap(), PeerIdentity::Node(1));
        assert_eq!(node1.ca_fingerprint(), cluster.ca.fingerprint_sha256);
        assert_eq!(node1.ca_fingerprint().len(), 64);

        let alice = cluster.material("client-alice");
        assert_eq!(alice.identity, PeerIdentity::Client("alice".to_string()));
        assert_eq!(identity_of(&alice.chain[0]).unwrap(), PeerIdentity::Client("alice".to_string()));
        // The CA certificate itself carries no Synod identity.
        assert!(matches!(identity_of(&node1.ca), Err(PkiError::NotSynodCertificate { .. })));

        let debug = format!("{node1:?}");
        assert!(debug.contains("<redacted>"), "{debug}");
        assert!(!debug.contains("PRIVATE"), "{debug}");

        // Every TLS configuration builds from both kinds of material.
        for material in [&node1, &alice] {
            material.quic_server_config().expect("quic server");
            material.quic_client_config().expect("quic client");
            material.https_server_config().expect("https server");
            material.https_client_config().expect("https client");
        }
        https_client_config_anonymous(&cluster.ca.cert_path).expect("anonymous client");
    }

    #[test]
    fn pki_passphrase_protected_ca_needs_its_passphrase() {
        // A CA created with a passphrase stores an encrypted key: issuing needs the
        // passphrase, a wrong one is refused, and the key file holds no plain key.
        let dir = tempfile::tempdir().unwrap();
        let (ca_dir, out) = (dir.path().join("ca"), dir.path().join("certs"));
        ca_init(&ca_dir, "Protected CA", Some("correct horse")).unwrap();
        assert!(ca_key_is_protected(&ca_dir).unwrap());
        let text = fs::read_to_string(ca_dir.join(CA_KEY_FILE)).unwrap();
        assert!(text.contains("ENCRYPTED PRIVATE KEY") && !text.contains("BEGIN PRIVATE KEY"));
        assert!(matches!(issue(&ca_dir, &node(1), &out, 30, None), Err(PkiError::CaKeyLocked { .. })));
        assert!(matches!(issue(&ca_dir, &node(1), &out, 30, Some("wrong")), Err(PkiError::CaKeyPassphrase { .. })));
        let issued = issue(&ca_dir, &node(1), &out, 30, Some("correct horse")).unwrap();
        let material = TlsMaterial::load(&ca_dir.join(CA_CERT_FILE), &issued.cert_path, &issued.key_path).unwrap();
        assert_eq!(material.identity, PeerIdentity::Node(1));
    }

    #[test]
    fn pki_node_certificate_names() {
        // A node certificate carries its server name and the extra IP and DNS SANs, and only
        // node and client common names map to identities.
        let cluster = Cluster::new();
        let node1 = cluster.material("node-1");
        let (_, x509) = x509_parser::parse_x509_certificate(node1.chain[0].as_ref()).unwrap();
        let sans = x509.subject_alternative_name().unwrap().unwrap();
        use x509_parser::extensions::GeneralName;
        let names = &sans.value.general_names;
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(names.contains(&GeneralName::DNSName("node-1.synod")), "{names:?}");
        assert!(names.contains(&GeneralName::IPAddress(&[127, 0, 0, 1])), "{names:?}");
        assert!(names.contains(&GeneralName::DNSName("localhost")), "{names:?}");
        assert_eq!(node_server_name(7), "node-7.synod");

        assert_eq!(parse_identity("synod-node-42"), Ok(PeerIdentity::Node(42)));
        assert!(parse_identity("synod-node-042").is_err());
        assert!(parse_identity("synod-node-").is_err());
        assert!(parse_identity("synod-client-a/b").is_err());
        assert!(parse_identity("someone-else").is_err());
    }

    #[test]
    fn ca_init_refuses_overwrite() {
        // A second ca_init on the same directory fails, names the file, and changes nothing.
        let cluster = Cluster::new();
        let key_before = fs::read(&cluster.ca.key_path).unwrap();
        let cert_before = fs::read(&cluster.ca.cert_path).unwrap();
        let error = ca_init(&cluster.ca_dir, "another CA", None).unwrap_err();
        assert!(matches!(error, PkiError::CaExists { .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.contains("ca.key") && message.contains("already exists"), "{message}");
        assert_eq!(fs::read(&cluster.ca.key_path).unwrap(), key_before);
        assert_eq!(fs::read(&cluster.ca.cert_path).unwrap(), cert_before);
    }

    #[test]
    fn issue_refuses_overwrite_and_bad_subjects() {
        // issue never overwrites a key and rejects bad names, reserved SANs and bad validity.
        let cluster = Cluster::new();
        let key_path = cluster.certs_dir.join("node-1.key");
        let key_before = fs::read(&key_path).unwrap();
        let error = issue(&cluster.ca_dir, &node(1), &cluster.certs_dir, 30, None).unwrap_err();
        assert!(matches!(error, PkiError::FileExists { .. }), "{error}");
        assert_eq!(fs::read(&key_path).unwrap(), key_before);

        for name in ["", "a/b", "../x", "é", &"x".repeat(65)] {
            let subject = Subject::Client { name: name.to_string() };
            let error = issue(&cluster.ca_dir, &subject, &cluster.certs_dir, 30, None).unwrap_err();
            assert!(matches!(error, PkiError::InvalidClientName { .. }), "{name}: {error}");
        }
        for san in ["node-2.synod", "SYNOD", "not a name", "bad_.example..com"] {
            let subject = Subject::Node { id: 9, sans: vec![san.to_string()] };
            let error = issue(&cluster.ca_dir, &subject, &cluster.certs_dir, 30, None).unwrap_err();
            assert!(matches!(error, PkiError::InvalidSan { .. }), "{san}: {error}");
        }
        for days in [0, VALIDITY_DAYS_MAX + 1] {
            let error = issue(&cluster.ca_dir, &node(9), &cluster.certs_dir, days, None).unwrap_err();
            assert!(matches!(error, PkiError::InvalidValidity { .. }), "{error}");
        }
        // None of the refused requests left files behind.
        assert!(!cluster.certs_dir.join("node-9.key").exists());
    }

    #[test]
    fn issue_refuses_to_outlive_the_ca() {
        // A certificate may not be valid for longer than the CA that signs it.
        let dir = TempDir::new().unwrap();
        let key = KeyPair::generate_for(&PKCS_ED25519).unwrap();
        let mut params = ca_params("short-lived CA");
        let now_secs = unix_now_secs();
        set_validity(&mut params, now_secs, now_secs + 10 * SECS_PER_DAY);
        let cert = params.self_signed(&key).unwrap();
        fs::write(dir.path().join(CA_CERT_FILE), cert.pem()).unwrap();
        fs::write(dir.path().join(CA_KEY_FILE), key.serialize_pem()).unwrap();

        let out = dir.path().join("certs");
        let error = issue(dir.path(), &node(1), &out, 30, None).unwrap_err();
        assert!(matches!(error, PkiError::OutlivesCa { ca_days_left: 9..=10, .. }), "{error}");
        assert!(!out.join("node-1.key").exists());
        issue(dir.path(), &node(1), &out, 9, None).expect("a shorter certificate fits");
    }

    #[test]
    fn load_rejects_foreign_ca_wrong_key_and_missing_files() {
        // TlsMaterial::load refuses a certificate from another CA, a key from another
        // certificate and a missing file, each with a message naming the file and the fix.
        let cluster = Cluster::new();
        let other = Cluster::new();
        let cert = other.certs_dir.join("node-1.crt");
        let error = TlsMaterial::load(&cluster.ca.cert_path, &cert, &other.certs_dir.join("node-1.key")).unwrap_err();
        assert!(matches!(error, PkiError::Untrusted { .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.contains(&cert.display().to_string()), "{message}");
        assert!(message.contains("not issued by this CA"), "{message}");
        assert!(message.contains("synod ca issue"), "{message}");

        let error = TlsMaterial::load(
            &cluster.ca.cert_path,
            &cluster.certs_dir.join("node-1.crt"),
            &cluster.certs_dir.join("node-2.key"),
        )
        .unwrap_err();
        assert!(matches!(error, PkiError::KeyMismatch { .. }), "{error:?}");
        assert!(error.to_string().contains("node-2.key"), "{error}");

        let missing = cluster.certs_dir.join("node-5.crt");
        let error = TlsMaterial::load(&cluster.ca.cert_path, &missing, &missing.with_extension("key")).unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, PkiError::Read { .. }), "{error:?}");
        assert!(message.contains("node-5.crt"), "{message}");
        assert!(message.contains("synod ca issue"), "{message}");
    }

    #[tokio::test]
    async fn quic_mutual_tls_round_trip() {
        // Node 2 reaches node 1 over mutual TLS on 127.0.0.1, both sides learn each other's
        // identity, and dialling node 1 under node 3's server name fails.
        let cluster = Cluster::new();
        let server = server_endpoint(&cluster.material("node-1"));
        let server_addr = server.local_addr().unwrap();
        let server_task = tokio::spawn({
            let server = server.clone();
            async move {
                let conn = server.accept().await.expect("incoming").await?;
                // quinn only drives a handshake once it is accepted: keep accepting (and
                // dropping) later attempts, such as the wrong-name dial below.
                tokio::spawn(async move {
                    while let Some(incoming) = server.accept().await {
                        let _ = incoming.await;
                    }
                });
                let peer = peer_identity_from_quic(&conn)?;
                let (mut send, mut recv) = conn.accept_bi().await?;
                let request = recv.read_to_end(1024).await?;
                send.write_all(&[b"pong:".as_slice(), &request].concat()).await?;
                send.finish()?;
                // Wait for the client to read the reply and close.
                let _ = conn.closed().await;
                anyhow::Ok(peer)
            }
        });

        let client = client_endpoint(&cluster.material("node-2"));
        let conn = client.connect(server_addr, &node_server_name(1)).unwrap().await.expect("handshake");
        let handshake = conn
            .handshake_data()
            .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .expect("rustls handshake data");
        assert_eq!(handshake.protocol, Some(ALPN_RAFT.to_vec()));
        assert_eq!(peer_identity_from_quic(&conn).unwrap(), PeerIdentity::Node(1));
        let reply = tokio::time::timeout(STEP_TIMEOUT, exchange(&conn, b"ping"))
            .await
            .expect("exchange timed out")
            .expect("exchange");
        assert_eq!(reply, b"pong:ping");
        conn.close(0u32.into(), b"done");
        let peer = tokio::time::timeout(STEP_TIMEOUT, server_task)
            .await
            .expect("server timed out")
            .unwrap()
            .expect("server side");
        assert_eq!(peer, PeerIdentity::Node(2));

        // Node 1's certificate does not answer for node 3.
        let wrong_name = client.connect(server_addr, &node_server_name(3)).unwrap();
        let result = tokio::time::timeout(STEP_TIMEOUT, wrong_name).await.unwrap();
        assert!(result.is_err(), "connected to node 1 as node 3");
    }

    #[tokio::test]
    async fn quic_rejects_client_from_foreign_ca() {
        // A client whose certificate comes from another CA may finish its half of the TLS 1.3
        // handshake, but its first stream fails and the server sees the handshake error.
        let cluster = Cluster::new();
        let other = Cluster::new();
        let server = server_endpoint(&cluster.material("node-1"));
        let server_addr = server.local_addr().unwrap();
        let server_task = tokio::spawn({
            let server = server.clone();
            async move {
                let conn = server.accept().await.expect("incoming").await?;
                // Should not get here; if the handshake somehow passed, report the peer.
                let peer = peer_identity_from_quic(&conn)?;
                anyhow::Ok(peer)
            }
        });

        // The foreign client trusts our CA so that it is the server that must refuse it.
        let foreign = TlsMaterial { ca: cluster.material("node-1").ca.clone(), ..other.material("node-2") };
        let client = client_endpoint(&foreign);
        let attempt = async {
            let conn = client.connect(server_addr, &node_server_name(1))?.await?;
            exchange(&conn, b"ping").await
        };
        let result = tokio::time::timeout(STEP_TIMEOUT, attempt).await.expect("client timed out");
        assert!(result.is_err(), "foreign client got a reply: {result:?}");

        let server_result = tokio::time::timeout(STEP_TIMEOUT, server_task).await.expect("server timed out").unwrap();
        let error = server_result.expect_err("server accepted a foreign client");
        assert!(
            matches!(
                error.downcast_ref::<quinn::ConnectionError>(),
                Some(quinn::ConnectionError::TransportError(e)) if e.reason.contains("invalid peer certificate")
            ),
            "unexpected server error: {error:?}"
        );
    }

    #[tokio::test]
    async fn https_optional_client_certificates() {
        // The HTTPS server accepts an anonymous client and a client with a CA certificate
        // (seeing its identity), dialled by IP address, and refuses a foreign certificate.
        let cluster = Cluster::new();
        let other = Cluster::new();
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor =
            tokio_rustls::TlsAcceptor::from(cluster.material("node-1").https_server_config().expect("https server"));
        let server_task = tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..3 {
                let (tcp, _) = listener.accept().await.unwrap();
                let result = async {
                    let mut tls = acceptor.accept(tcp).await?;
                    let identity = match tls.get_ref().1.peer_certificates() {
                        Some(certs) => Some(identity_of(&certs[0])?),
                        None => None,
                    };
                    tls.write_all(b"ok").await?;
                    tls.shutdown().await?;
                    anyhow::Ok(identity)
                }
                .await;
                seen.push(result.map_err(|e| e.to_string()));
            }
            seen
        });

        let ip_name = rustls_pki_types::ServerName::from(IpAddr::from(Ipv4Addr::LOCALHOST));
        let configs = [
            https_client_config_anonymous(&cluster.ca.cert_path).unwrap(),
            cluster.material("client-alice").https_client_config().unwrap(),
            TlsMaterial { ca: cluster.material("node-1").ca.clone(), ..other.material("client-alice") }
                .https_client_config()
                .unwrap(),
        ];
        for config in configs {
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let result = async {
                let mut tls = connector.connect(ip_name.clone(), tcp).await?;
                let mut reply = Vec::new();
                tls.read_to_end(&mut reply).await?;
                anyhow::Ok(reply)
            };
            let _ = tokio::time::timeout(STEP_TIMEOUT, result).await;
        }
        let seen = tokio::time::timeout(STEP_TIMEOUT, server_task).await.unwrap().unwrap();
        assert_eq!(seen[0], Ok(None));
        assert_eq!(seen[1], Ok(Some(PeerIdentity::Client("alice".to_string()))));
        assert!(seen[2].is_err(), "foreign client accepted: {:?}", seen[2]);
    }
}

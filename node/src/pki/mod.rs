//! The cluster's public-key infrastructure: its certificate authority, the node and client
//! certificates it issues, the identities read back out of those certificates, and the TLS
//! configurations built from them.
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
//!
//! The module has three rooms, and every public item is re-exported here, so callers name
//! `pki::X` and never the room:
//!
//! - `ca`: creating and using the CA (`ca_init`, `issue`, key files and their
//!   passphrase protection).
//! - `identity`: who a certificate names (`PeerIdentity`, `identity_of`,
//!   `node_server_name`) and proving node authorship (`NodeIdentity`,
//!   `verify_node_certificate`, `in_memory_pki`). The replicated state machine depends on the
//!   PKI through this room only, so it depends on neither `ca` nor `tls`.
//! - `tls`: `TlsMaterial` and the rustls configurations for QUIC and HTTPS.
//!
//! This file holds what the rooms share: the error type, bounded reads of PEM files, chain
//! verification against the CA, and the certificate templates both the CA and the in-memory
//! PKI build from.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::NoInitialCipherSuite;
use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyUsagePurpose};
use rustls::crypto::CryptoProvider;
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use rustls::{CertificateError, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use zeroize::Zeroizing;

mod ca;
mod identity;
mod tls;

pub use ca::{
    ca_init, ca_key_is_protected, issue, issue_console, pkcs8_pem_v1, renew, CaInfo, ConsoleIssued, Issued, Renewed,
    Subject, CLIENT_VALIDITY_DAYS_DEFAULT, CONSOLE_VALIDITY_DAYS_DEFAULT, NODE_VALIDITY_DAYS_DEFAULT,
    VALIDITY_DAYS_MAX, WEB_CA_CERT_FILE, WEB_CA_KEY_FILE,
};
pub use identity::{
    certificate_der, fingerprint, identity_of, in_memory_pki, node_server_name, verify_node_certificate, NodeIdentity,
    PeerIdentity,
};
pub use tls::{https_client_config_anonymous, peer_identity_from_quic, TlsMaterial, ALPN_RAFT};

use ca::{COMMON_NAME_BYTES_MAX, SANS_EXTRA_MAX};
use identity::CLIENT_NAME_BYTES_MAX;

/// The largest PEM file read; certificates and Ed25519 keys are a few hundred bytes.
const PEM_FILE_BYTES_MAX: u64 = 64 * 1024;

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

    #[error("the web CA {} may vouch only for {permitted} and names under them, not {name:?} (browsers enforce its name constraints); use one of those names, or make a new web CA for this name by moving web-ca.pem and web-ca.key out of the CA directory", ca_path.display())]
    OutsideWebCa { name: String, ca_path: PathBuf, permitted: String },

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

/// The parameters that define the CA as an issuer. `issue` rebuilds them from the common
/// name, so they must stay deterministic: the issuer name in every leaf is encoded from them.
/// They live here rather than in `ca` because `in_memory_pki` builds its CA from them too.
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

/// Sets a certificate's validity window from Unix seconds; rcgen's time type is reached by
/// inference so this crate needs no direct dependency on `time`.
fn set_validity(params: &mut CertificateParams, not_before_secs: u64, not_after_secs: u64) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + Duration::from_secs(not_before_secs);
    params.not_after = epoch + Duration::from_secs(not_after_secs);
}

/// Verifies `chain` against `ca` as a client certificate, the check every certificate we
/// issue passes (node certificates also carry serverAuth). Errors are message details.
fn verify_chain(ca: &CertificateDer<'_>, chain: &[CertificateDer<'_>]) -> Result<(), String> {
    verify_chain_at(ca, chain, UnixTime::now())
}

/// [`verify_chain`] as of `time` (a renewal checks an expired certificate's issuer this way).
fn verify_chain_at(ca: &CertificateDer<'_>, chain: &[CertificateDer<'_>], time: UnixTime) -> Result<(), String> {
    let Some((end_entity, intermediates)) = chain.split_first() else {
        return Err("the file holds no certificate".to_string());
    };
    let roots = root_store(ca).map_err(|e| format!("the CA certificate is unusable: {e}"))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, ring_provider())
        .build()
        .map_err(|e| format!("cannot build a verifier: {e}"))?;
    verifier.verify_client_cert(end_entity, intermediates, time).map(|_| ()).map_err(describe_verify_error)
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

/// Fixtures the rooms' tests share: a CA with issued certificates in a temporary directory.
#[cfg(test)]
mod test_support {
    use std::path::PathBuf;

    use tempfile::TempDir;

    use super::{ca_init, issue, CaInfo, Issued, Subject, TlsMaterial};

    /// A CA with node 1, node 2 and client "alice" issued into `certs`.
    pub(super) struct Cluster {
        _dir: TempDir,
        pub(super) ca_dir: PathBuf,
        pub(super) certs_dir: PathBuf,
        pub(super) ca: CaInfo,
    }

    impl Cluster {
        pub(super) fn new() -> Cluster {
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

        pub(super) fn issue(&self, subject: &Subject) -> Issued {
            issue(&self.ca_dir, subject, &self.certs_dir, 30, None).expect("issue")
        }

        pub(super) fn material(&self, stem: &str) -> TlsMaterial {
            TlsMaterial::load(
                &self.ca.cert_path,
                &self.certs_dir.join(format!("{stem}.crt")),
                &self.certs_dir.join(format!("{stem}.key")),
            )
            .expect("load TlsMaterial")
        }
    }

    pub(super) fn node(id: u64) -> Subject {
        Subject::Node { id, sans: vec!["127.0.0.1".to_string(), "localhost".to_string()] }
    }
}

//! The approver console: web pages every node serves to people who approve signing
//! requests, on an HTTPS listener of its own (`[console]` in node.toml).
//!
//! An approver logs in with a passkey (a WebAuthn assertion over a challenge this node drew),
//! sees the requests waiting for them exactly as the API would show them to that operator
//! (the session is a [`crate::caller::Caller`] judged by the same rules), and approves or
//! denies one with a second assertion whose challenge is SHA-256 of the request's canonical
//! statement. This node wraps that assertion into a `Command::Approve` (or `Deny`) and writes
//! it; every node verifies the assertion on its own when it applies the command, so neither
//! this node nor the session can approve anything the passkey did not sign. An approver with
//! no passkey yet registers one here; it waits for the admins (`synod operator passkey approve`).
//!
//! The listener shares the API's defences ([`crate::api::serve`]: the connection gate,
//! handshake and header deadlines), adds its own request deadline and body limit, and asks
//! no client certificate: a browser proves who it is with a passkey. Its certificate must be
//! one browsers verify (P-256 or RSA; `synod ca issue console` makes one from the web CA),
//! since browsers do not verify the cluster CA's Ed25519 chains.
//!
//! Rooms: `session` (stateless challenges, sessions and the registration budget, in
//! memory), `pages` (the HTML, every value escaped), `routes` (the handlers), and `static/`
//! (the script and style sheet, embedded).

pub mod pages;
pub mod routes;
pub mod session;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A console request must be done within this time: the longest is an approval, which waits
/// for its command to commit.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest request body any console route reads: a registration's attestation object
/// (at most 4 KiB, base64url) with its client data, or an assertion with a reason.
pub const BODY_BYTES_MAX: usize = 24 * 1024;
const _: () = assert!(
    BODY_BYTES_MAX
        > 2 * (synod_proto::webauthn::ATTESTATION_OBJECT_BYTES_MAX + synod_proto::webauthn::CLIENT_DATA_BYTES_MAX)
);
/// The largest certificate or key file the console reads.
const PEM_FILE_BYTES_MAX: u64 = 64 * 1024;

/// The console's HTTPS configuration from its certificate and key files: TLS 1.3 and 1.2
/// (browsers speak both), HTTP/1.1, no client certificate asked.
pub fn tls_config(certificate: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use anyhow::Context;
    let read = |path: &Path| -> anyhow::Result<Vec<u8>> {
        let length =
            std::fs::metadata(path).with_context(|| format!("cannot read console file {}", path.display()))?.len();
        if length > PEM_FILE_BYTES_MAX {
            anyhow::bail!("console file {} is larger than {PEM_FILE_BYTES_MAX} bytes", path.display());
        }
        std::fs::read(path).with_context(|| format!("cannot read console file {}", path.display()))
    };
    let chain = CertificateDer::pem_slice_iter(&read(certificate)?)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("console certificate {} is not PEM", certificate.display()))?;
    if chain.is_empty() {
        anyhow::bail!(
            "console certificate {} holds no certificate; issue one with `synod ca issue console`",
            certificate.display()
        );
    }
    let key_pem = zeroize::Zeroizing::new(read(key)?);
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
        .with_context(|| format!("console key {} is not a PEM private key", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("the console's TLS versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .with_context(|| {
            format!(
                "console key {} does not go with certificate {} (or its kind is not supported: use P-256, as \
                 `synod ca issue console` does)",
                key.display(),
                certificate.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

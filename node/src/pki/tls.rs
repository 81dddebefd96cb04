//! The TLS side of the PKI: `TlsMaterial` loads a CA certificate plus one identity
//! (certificate chain and key) and builds the rustls configurations a node and its clients
//! need, for QUIC on the Raft port (mutual TLS, ALPN `synod-raft/1`, with the QUIC keep-alive
//! and idle timeout) and HTTPS on the API port (client certificates optional on the server).
//! `peer_identity_from_quic` reads who is at the other end of an established QUIC connection.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::identity::{fingerprint, identity_of, NodeIdentity, PeerIdentity};
use super::{read_certs, read_key, read_single_cert, ring_provider, root_store, verify_chain, FileKind, PkiError};

/// The ALPN protocol identifier spoken on the Raft QUIC port.
pub const ALPN_RAFT: &[u8] = b"synod-raft/1";

/// The ALPN protocol identifier of the HTTPS API.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// QUIC keep-alive and idle timeout; a keep-alive must fire well within the idle timeout.
const KEEP_ALIVE_INTERVAL_MS: u64 = 1_000;
const IDLE_TIMEOUT_MS: u32 = 10_000;
const _: () = assert!(KEEP_ALIVE_INTERVAL_MS * 3 <= IDLE_TIMEOUT_MS as u64);

/// The CA certificate plus one verified identity (certificate chain and private key).
pub struct TlsMaterial {
    /// The only trust anchor: peers must chain to it.
    pub ca: CertificateDer<'static>,
    /// Our certificate first, then any intermediates (none, with `synod ca issue`).
    pub chain: Vec<CertificateDer<'static>>,
    /// Our private key; private so it only leaves this module inside a TLS config or a
    /// `NodeIdentity` (`NodeIdentity::from_tls`).
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

    /// The node or client certificate's serial number and expiry, for logs:
    /// `serial <hex>, valid until <RFC 2822 time>`.
    pub fn certificate_summary(&self) -> String {
        match x509_parser::parse_x509_certificate(self.chain[0].as_ref()) {
            Ok((_, x509)) => {
                format!("serial {}, valid until {}", x509.raw_serial_as_string(), x509.validity().not_after)
            }
            Err(e) => format!("unparsable certificate ({e})"),
        }
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

fn transport_config() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_millis(KEEP_ALIVE_INTERVAL_MS)));
    transport.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(IDLE_TIMEOUT_MS))));
    transport
}

impl NodeIdentity {
    /// The identity in a node's TLS material (its certificate must be Ed25519, as
    /// `synod ca issue` makes them). Defined here, not in `identity`, so that the identity
    /// room (and the state machine that uses it) does not depend on TLS.
    pub fn from_tls(material: &TlsMaterial) -> Result<Self, PkiError> {
        NodeIdentity::from_certified_key(&material.ca, &material.identity, &material.chain[0], &material.key)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::net::{IpAddr, Ipv4Addr};
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::pki::node_server_name;
    use crate::pki::test_support::Cluster;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// How long any network step in these tests may take before the test fails.
    const STEP_TIMEOUT: Duration = Duration::from_secs(10);

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

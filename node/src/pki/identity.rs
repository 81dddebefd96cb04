//! Who a certificate names, and proof of node authorship. `identity_of` reads the Synod
//! identity out of a certificate's common name (`synod-node-<id>` or `synod-client-<name>`);
//! `NodeIdentity` signs the commands a node authors with its certificate's key, and
//! `verify_node_certificate` checks such a certificate against the cluster CA at the time of
//! the log entry. The replicated state machine reaches the PKI only through this room, which is
//! why it uses neither the CA's files (`ca`) nor rustls configurations (`tls`):
//! `NodeIdentity::from_tls`, which needs `TlsMaterial`, is defined in `tls`.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{
    ca_params, describe_verify_error, distinguished_name, read_single_cert, ring_provider, root_store, set_validity,
    FileKind, PkiError,
};

/// Common-name prefixes that carry a certificate's Synod identity.
pub(super) const NODE_CN_PREFIX: &str = "synod-node-";
pub(super) const CLIENT_CN_PREFIX: &str = "synod-client-";

/// The DNS zone reserved for node server names; extra SANs may not use it.
pub(super) const NODE_SERVER_NAME_SUFFIX: &str = ".synod";

/// The longest client name accepted (X.520 ub-common-name is 64).
pub(super) const CLIENT_NAME_BYTES_MAX: usize = 64;

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

/// Whether `name` is a valid client name: 1 to 64 of `[A-Za-z0-9._-]`.
pub(super) fn validate_client_name(name: &str) -> Result<(), ()> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > CLIENT_NAME_BYTES_MAX || !name.chars().all(allowed) {
        return Err(());
    }
    Ok(())
}

/// Hex SHA-256 of a certificate's DER encoding.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    hex::encode(Sha256::digest(cert.as_ref()))
}

/// The DER of the single certificate in a PEM file (the cluster CA's, for genesis).
pub fn certificate_der(path: &Path) -> Result<Vec<u8>, PkiError> {
    Ok(read_single_cert(path, FileKind::CaCertificate)?.to_vec())
}

/// A node's identity for the commands it authors (DKG messages, signing
/// results): its certificate and that certificate's Ed25519 key. Every node
/// checks such a command against the cluster CA named at genesis, so a leader
/// cannot forge one. It is made from a node's TLS material by
/// `NodeIdentity::from_tls` (in `tls`), or in memory by [`in_memory_pki`].
pub struct NodeIdentity {
    /// The node id the certificate names.
    pub id: u64,
    /// The certificate (DER), attached to every command the node signs.
    pub cert_der: Vec<u8>,
    /// The cluster CA (DER) the certificate chains to: the trust anchor for a
    /// snapshot sent to this node while it holds no verified state of its own.
    pub ca_der: Vec<u8>,
    /// The certificate's private key.
    key: ed25519_dalek::SigningKey,
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeIdentity").field("id", &self.id).field("key", &"<redacted>").finish()
    }
}

impl NodeIdentity {
    /// The identity of a node certificate (`identity` is what it names) and its private key,
    /// as `TlsMaterial` holds them (the key must be Ed25519 PKCS#8, as `synod ca issue`
    /// makes them). `NodeIdentity::from_tls` is the public way in.
    pub(super) fn from_certified_key(
        ca: &CertificateDer<'_>,
        identity: &PeerIdentity,
        cert: &CertificateDer<'_>,
        key: &PrivateKeyDer<'_>,
    ) -> Result<Self, PkiError> {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        let PeerIdentity::Node(id) = *identity else {
            return Err(PkiError::NotSynodCertificate { detail: "a node needs a node certificate".into() });
        };
        let not_ed25519 = || PkiError::NotSynodCertificate {
            detail: "the node key is not an Ed25519 PKCS#8 key; issue node certificates with `synod ca issue node`"
                .into(),
        };
        let PrivateKeyDer::Pkcs8(der) = key else { return Err(not_ed25519()) };
        let key = ed25519_dalek::SigningKey::from_pkcs8_der(der.secret_pkcs8_der()).map_err(|_| not_ed25519())?;
        Ok(NodeIdentity { id, cert_der: cert.to_vec(), ca_der: ca.to_vec(), key })
    }

    /// Signs `message` (already domain-separated by the caller) with the certificate's key.
    pub fn sign_bytes(&self, message: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer;
        self.key.sign(message).to_bytes()
    }

    /// Signs an envelope as this node, attaching the certificate.
    pub fn sign(&self, envelope: &synod_proto::Envelope) -> synod_proto::SignedCommand {
        synod_proto::SignedCommand::sign_as_node(envelope, &self.key, &self.cert_der)
    }
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

/// The chains `verify_node_certificate` has verified, keyed by SHA-256 over the CA and the
/// certificate. It is process-global because `verify_node_certificate` is a free function
/// that every state machine (and node) in the process calls with only the CA, the
/// certificate and a time (the simulator runs many of them in one process): a cache owned
/// by a caller would change that signature and its callers in the state machine and the
/// node. Sharing it is safe: an entry holds only what the CA and certificate bytes in its key
/// determine (node id, public key, validity window), so a hit answers exactly as a fresh
/// verification would, whoever asks. It is bounded: at `VERIFIED_CERTS_MAX` entries (under
/// a hundred bytes each) it is emptied before the next insert, so it never holds more.
static VERIFIED_CERTS: LazyLock<Mutex<HashMap<[u8; 32], VerifiedCert>>> = LazyLock::new(Default::default);

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
        identities.push(NodeIdentity {
            id,
            cert_der: cert.der().to_vec(),
            ca_der: ca_cert.der().to_vec(),
            key: signing,
        });
    }
    Ok((ca_cert.der().to_vec(), identities))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::test_support::Cluster;
    use x509_parser::extensions::GeneralName;

    #[test]
    fn pki_node_certificate_names() {
        // A node certificate carries its server name and the extra IP and DNS SANs, and only
        // node and client common names map to identities.
        let cluster = Cluster::new();
        let node1 = cluster.material("node-1");
        let (_, x509) = x509_parser::parse_x509_certificate(node1.chain[0].as_ref()).unwrap();
        let sans = x509.subject_alternative_name().unwrap().unwrap();
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
}

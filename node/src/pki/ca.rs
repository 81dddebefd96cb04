//! Creating and using the cluster CA: `ca_init` makes the CA's certificate and key, `issue`
//! signs node and client certificates with it, and the helpers here encode private keys as
//! PEM, optionally encrypted under a passphrase. The command line's operator commands
//! (`synod ca`, `synod dev`) call it; nothing in a running node reads the CA key.

use std::fs;
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
    PKCS_ECDSA_P256_SHA256, PKCS_ED25519,
};
use rustls_pki_types::{CertificateDer, DnsName, UnixTime};
use zeroize::Zeroizing;

use super::identity::{
    fingerprint, identity_of, node_server_name, validate_client_name, PeerIdentity, CLIENT_CN_PREFIX, NODE_CN_PREFIX,
    NODE_SERVER_NAME_SUFFIX,
};
use super::{
    ca_params, distinguished_name, read_limited, read_single_cert, set_validity, verify_chain, verify_chain_at,
    FileKind, PkiError,
};

/// File names inside a CA directory.
const CA_CERT_FILE: &str = "ca.crt";
const CA_KEY_FILE: &str = "ca.key";

/// How long a new CA is valid.
const CA_VALIDITY_DAYS: u32 = 3650;
/// The longest validity `issue` and `renew` accept (the CA/Browser Forum's limit for server
/// certificates); the CA's own expiry may cap it further. Certificates cannot be revoked, so
/// a short life is what bounds a lost one; renew them with `synod ca issue --renew`.
pub const VALIDITY_DAYS_MAX: u32 = 398;
/// The default validity of a node certificate: a node is renewed in place on `SIGHUP`.
pub const NODE_VALIDITY_DAYS_DEFAULT: u32 = 365;
/// The default validity of a client certificate: clients are many and easy to lose.
pub const CLIENT_VALIDITY_DAYS_DEFAULT: u32 = 90;
const _: () =
    assert!(NODE_VALIDITY_DAYS_DEFAULT <= VALIDITY_DAYS_MAX && CLIENT_VALIDITY_DAYS_DEFAULT <= VALIDITY_DAYS_MAX);
const _: () = assert!(VALIDITY_DAYS_MAX < CA_VALIDITY_DAYS);
/// Bytes of random serial number (RFC 5280 allows up to 20).
const SERIAL_BYTES: usize = 16;
/// How far in the past `not_before` is set, to tolerate clocks that run behind.
const CLOCK_SKEW_TOLERANCE_SECS: u64 = 3600;
const SECS_PER_DAY: u64 = 86_400;

/// The longest CA common name accepted (X.520 ub-common-name is 64).
pub(super) const COMMON_NAME_BYTES_MAX: usize = 64;
/// The most extra subject alternative names one node certificate may carry.
pub(super) const SANS_EXTRA_MAX: usize = 32;

const KEY_FILE_MODE: u32 = 0o600;
const CERT_FILE_MODE: u32 = 0o644;
const CA_DIR_MODE: u32 = 0o700;

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

    let key = KeyPair::generate_for(&PKCS_ED25519)
        .map_err(|source| PkiError::Generate { what: "certificate key", source })?;
    let cert = sign_leaf(&ca, &plan, validity_days, &key)?;
    let cert_path = out_dir.join(format!("{}.crt", plan.file_stem));
    let key_path = out_dir.join(format!("{}.key", plan.file_stem));

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

/// Signs a leaf certificate for `plan` over `public_key`, valid from a little before now for
/// `validity_days`, with a fresh random serial; checks it verifies against the CA.
fn sign_leaf(
    ca: &CaSigner,
    plan: &SubjectPlan,
    validity_days: u32,
    public_key: &impl PublicKeyData,
) -> Result<rcgen::Certificate, PkiError> {
    if validity_days == 0 || validity_days > VALIDITY_DAYS_MAX {
        return Err(PkiError::InvalidValidity { days: validity_days });
    }
    let (now_secs, not_after_secs) = validity_within(validity_days, &ca.cert_path, ca.not_after_secs)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(&plan.common_name);
    params.subject_alt_names = plan.sans.clone();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = plan.extended_key_usages.clone();
    params.use_authority_key_identifier_extension = true;
    // A random serial: rcgen's default is derived from the public key, so a renewal that
    // keeps the key would repeat its predecessor's serial.
    let mut serial = [0u8; SERIAL_BYTES];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut serial);
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    set_validity(&mut params, now_secs.saturating_sub(CLOCK_SKEW_TOLERANCE_SECS), not_after_secs);
    let issuer = Issuer::new(ca_params(&ca.common_name), &ca.key);
    let cert =
        params.signed_by(public_key, &issuer).map_err(|source| PkiError::Generate { what: "certificate", source })?;
    // Postcondition: what we hand out must verify exactly as peers will verify it. This also
    // catches a CA whose subject `ca_params` cannot reproduce byte for byte (a CA not made by
    // `ca_init`), since leaves would then name the wrong issuer.
    verify_chain(&ca.cert_der, std::slice::from_ref(cert.der())).map_err(|detail| PkiError::Parse {
        kind: FileKind::CaCertificate,
        path: ca.cert_path.clone(),
        detail: format!("a certificate signed with it does not verify ({detail}); was it made by `synod ca init`?"),
    })?;
    Ok(cert)
}

/// What `renew` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewed {
    /// The certificate file, now holding the new certificate.
    pub cert_path: PathBuf,
    /// The previous certificate, kept beside it (`<file>.prev`).
    pub previous_path: PathBuf,
    /// Who the certificate is for (unchanged).
    pub subject: Subject,
    /// The new certificate's validity in days.
    pub validity_days: u32,
}

/// Renews the certificate in `cert_path` with the CA in `ca_dir`: the same subject, SANs and
/// public key, a new serial and a new validity of `validity_days` (by default
/// [`NODE_VALIDITY_DAYS_DEFAULT`] or [`CLIENT_VALIDITY_DAYS_DEFAULT`]). The old certificate
/// may have expired, but it must have been issued by this CA.
///
/// The key is kept on purpose: the key file is never rewritten (a node reading its files on
/// `SIGHUP` can never see a certificate and a key that do not match), the CA needs no access
/// to the holder's key, and the file is replaced by one atomic rename. To change a key, issue a
/// new certificate instead. The previous certificate is kept as `<file>.prev`.
pub fn renew(
    ca_dir: &Path,
    cert_path: &Path,
    validity_days: Option<u32>,
    ca_passphrase: Option<&str>,
) -> Result<Renewed, PkiError> {
    let ca = CaSigner::load(ca_dir, ca_passphrase)?;
    let old = read_single_cert(cert_path, FileKind::Certificate)?;
    let parse_error =
        |detail: String| PkiError::Parse { kind: FileKind::Certificate, path: cert_path.to_path_buf(), detail };
    let (_, x509) = x509_parser::parse_x509_certificate(old.as_ref())
        .map_err(|e| parse_error(format!("not an X.509 certificate: {e}")))?;
    // Issued by this CA: verify the chain as of the middle of the old validity window, so an
    // expired certificate can still be renewed.
    let not_before = u64::try_from(x509.validity().not_before.timestamp()).unwrap_or(0);
    let not_after = u64::try_from(x509.validity().not_after.timestamp()).unwrap_or(0);
    let midpoint = UnixTime::since_unix_epoch(Duration::from_secs(not_before / 2 + not_after / 2));
    verify_chain_at(&ca.cert_der, std::slice::from_ref(&old), midpoint).map_err(|detail| PkiError::Untrusted {
        cert_path: cert_path.to_path_buf(),
        ca_path: ca.cert_path.clone(),
        detail,
    })?;
    let public_key = Ed25519PublicKey::from_spki(&x509).map_err(parse_error)?;
    let subject = match identity_of(&old)? {
        PeerIdentity::Node(id) => {
            let own = node_server_name(id);
            let sans = subject_alt_names(&x509).into_iter().filter(|san| *san != own).collect();
            Subject::Node { id, sans }
        }
        PeerIdentity::Client(name) => Subject::Client { name },
    };
    drop(x509);
    let validity_days = validity_days.unwrap_or(match subject {
        Subject::Node { .. } => NODE_VALIDITY_DAYS_DEFAULT,
        Subject::Client { .. } => CLIENT_VALIDITY_DAYS_DEFAULT,
    });
    let plan = SubjectPlan::new(&subject)?;
    let cert = sign_leaf(&ca, &plan, validity_days, &public_key)?;

    let with_suffix = |suffix: &str| {
        let mut name = cert_path.as_os_str().to_os_string();
        name.push(suffix);
        PathBuf::from(name)
    };
    let (next_path, previous_path) = (with_suffix(".next"), with_suffix(".prev"));
    let write_error = |source| PkiError::Write { kind: FileKind::Certificate, path: cert_path.to_path_buf(), source };
    // A `.next` file can only be left over from an interrupted renewal of this same file.
    let _ = fs::remove_file(&next_path);
    write_new(&next_path, FileKind::Certificate, cert.pem().as_bytes(), CERT_FILE_MODE)?;
    fs::copy(cert_path, &previous_path).map_err(write_error)?;
    fs::rename(&next_path, cert_path).map_err(write_error)?;
    if let Some(dir) = cert_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(write_error)?;
    }
    Ok(Renewed { cert_path: cert_path.to_path_buf(), previous_path, subject, validity_days })
}

/// The subject alternative names of a certificate as `issue` takes them: DNS names and IP
/// addresses as text.
fn subject_alt_names(x509: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok(Some(sans)) = x509.subject_alternative_name() else { return Vec::new() };
    sans.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(dns.to_string()),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => Some(IpAddr::from(<[u8; 4]>::try_from(*bytes).ok()?).to_string()),
                16 => Some(IpAddr::from(<[u8; 16]>::try_from(*bytes).ok()?).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// An Ed25519 public key taken from an existing certificate, to sign a renewal over.
struct Ed25519PublicKey(Vec<u8>);

impl Ed25519PublicKey {
    /// The Ed25519 OID (RFC 8410).
    const OID: &'static str = "1.3.101.112";

    fn from_spki(x509: &x509_parser::certificate::X509Certificate<'_>) -> Result<Self, String> {
        let spki = x509.public_key();
        if spki.algorithm.algorithm.to_id_string() != Self::OID {
            return Err("its key is not Ed25519; issue a new certificate instead of renewing".to_string());
        }
        Ok(Ed25519PublicKey(spki.subject_public_key.data.to_vec()))
    }
}

impl PublicKeyData for Ed25519PublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &PKCS_ED25519
    }
}

/// File names of the web CA, kept next to the cluster CA in its directory.
pub const WEB_CA_CERT_FILE: &str = "web-ca.pem";
pub const WEB_CA_KEY_FILE: &str = "web-ca.key";
/// The default validity of a console certificate (browsers refuse server certificates that
/// live longer than [`VALIDITY_DAYS_MAX`]).
pub const CONSOLE_VALIDITY_DAYS_DEFAULT: u32 = 365;
const _: () = assert!(CONSOLE_VALIDITY_DAYS_DEFAULT <= VALIDITY_DAYS_MAX);
/// How long a new web CA is valid: browsers trust it for every page it vouches for, so it
/// lives shorter than the cluster CA.
const WEB_CA_VALIDITY_DAYS: u32 = 5 * 365;
const _: () = assert!(VALIDITY_DAYS_MAX < WEB_CA_VALIDITY_DAYS && WEB_CA_VALIDITY_DAYS <= CA_VALIDITY_DAYS);

/// Where `issue_console` put the console's certificate, and the web CA a browser must trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleIssued {
    /// The PEM P-256 server certificate (`console-<name>.crt`).
    pub cert_path: PathBuf,
    /// Its PEM PKCS#8 key, mode 0600.
    pub key_path: PathBuf,
    /// The web CA's certificate, to add to the browsers' trust stores.
    pub web_ca_path: PathBuf,
    /// Whether this call created the web CA (the browsers must learn to trust it).
    pub web_ca_created: bool,
    /// Hex SHA-256 of the web CA certificate's DER, to compare out of band.
    pub web_ca_fingerprint_sha256: String,
}

/// Issues a P-256 server certificate for the approver console (`[console]` in node.toml),
/// named `synod-console-<name>` with the DNS names `dns_names` (at least one; never an IP
/// address, since a WebAuthn RP ID is a domain), signed by the web CA in `ca_dir`, into
/// `out_dir` as `console-<name>.crt`/`.key`. Never overwrites a file.
///
/// Browsers do not verify Ed25519 certificate chains, and the cluster CA is Ed25519, so the
/// console has a CA of its own: a P-256 "web CA" (`web-ca.pem`, `web-ca.key`) made next to the
/// cluster CA on first use, its key protected by `ca_passphrase` exactly when the cluster CA's
/// is. Nothing in the cluster trusts the web CA: it vouches for console pages to browsers only,
/// and only under the DNS names of the console certificate that made it (its name
/// constraints, which browsers enforce), so a stolen web CA key cannot vouch for other sites.
/// A console certificate for a name outside them is refused.
pub fn issue_console(
    ca_dir: &Path,
    name: &str,
    dns_names: &[String],
    out_dir: &Path,
    validity_days: u32,
    ca_passphrase: Option<&str>,
) -> Result<ConsoleIssued, PkiError> {
    if validity_days == 0 || validity_days > VALIDITY_DAYS_MAX {
        return Err(PkiError::InvalidValidity { days: validity_days });
    }
    validate_client_name(name).map_err(|()| PkiError::InvalidClientName { name: name.to_string() })?;
    if dns_names.is_empty() {
        return Err(PkiError::InvalidSan {
            san: String::new(),
            reason: "a console certificate needs at least one DNS name (--dns), the name browsers open it by",
        });
    }
    if dns_names.len() > SANS_EXTRA_MAX {
        return Err(PkiError::TooManySans { count: dns_names.len() });
    }
    let mut sans = Vec::new();
    for dns in dns_names {
        if dns.parse::<IpAddr>().is_ok() {
            return Err(PkiError::InvalidSan {
                san: dns.clone(),
                reason: "the console is opened by a DNS name (a WebAuthn RP ID is a domain, never an IP address); \
                         use localhost in development",
            });
        }
        let san = dns_san(dns)?;
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    let (ca, web_ca_created) = WebCa::load_or_create(ca_dir, ca_passphrase, dns_names)?;
    for dns in dns_names {
        if !ca.permits(dns) {
            return Err(PkiError::OutsideWebCa {
                name: dns.clone(),
                ca_path: ca.cert_path.clone(),
                permitted: ca.permitted_dns.join(", "),
            });
        }
    }
    let (now_secs, not_after_secs) = validity_within(validity_days, &ca.cert_path, ca.not_after_secs)?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|source| PkiError::Generate { what: "console key", source })?;
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(&format!("{CONSOLE_CN_PREFIX}{name}"));
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    set_validity(&mut params, now_secs.saturating_sub(CLOCK_SKEW_TOLERANCE_SECS), not_after_secs);
    let issuer = Issuer::new(ca_params(&ca.common_name), &ca.key);
    let cert =
        params.signed_by(&key, &issuer).map_err(|source| PkiError::Generate { what: "console certificate", source })?;
    // Postcondition: the certificate verifies as a browser will check it, for every name.
    for dns in dns_names {
        verify_server_chain(&ca.cert_der, cert.der(), dns).map_err(|detail| PkiError::Parse {
            kind: FileKind::CaCertificate,
            path: ca.cert_path.clone(),
            detail: format!("a console certificate signed with it does not verify for {dns} ({detail})"),
        })?;
    }

    create_dir(out_dir)?;
    let cert_path = out_dir.join(format!("console-{name}.crt"));
    let key_path = out_dir.join(format!("console-{name}.key"));
    write_new(&key_path, FileKind::PrivateKey, key_pem_v1(&key)?.as_bytes(), KEY_FILE_MODE)?;
    if let Err(error) = write_new(&cert_path, FileKind::Certificate, cert.pem().as_bytes(), CERT_FILE_MODE) {
        let _ = fs::remove_file(&key_path);
        return Err(error);
    }
    Ok(ConsoleIssued {
        cert_path,
        key_path,
        web_ca_path: ca.cert_path,
        web_ca_created,
        web_ca_fingerprint_sha256: fingerprint(&ca.cert_der),
    })
}

/// The common name prefix of console certificates.
const CONSOLE_CN_PREFIX: &str = "synod-console-";

/// A random serial: rcgen's default is derived from the public key.
fn random_serial() -> rcgen::SerialNumber {
    let mut serial = [0u8; SERIAL_BYTES];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut serial);
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    rcgen::SerialNumber::from_slice(&serial)
}

/// Verifies `leaf` as a TLS server certificate for `dns` under `ca`, as a browser would.
fn verify_server_chain(ca: &CertificateDer<'_>, leaf: &CertificateDer<'_>, dns: &str) -> Result<(), String> {
    let roots = super::root_store(ca).map_err(|e| format!("the web CA certificate is unusable: {e}"))?;
    use rustls::client::danger::ServerCertVerifier;
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, super::ring_provider())
        .build()
        .map_err(|e| format!("cannot build a verifier: {e}"))?;
    let server_name = rustls_pki_types::ServerName::try_from(dns.to_string()).map_err(|e| e.to_string())?;
    verifier
        .verify_server_cert(leaf, &[], &server_name, &[], UnixTime::now())
        .map(|_| ())
        .map_err(super::describe_verify_error)
}

/// The P-256 web CA, loaded (or made) for signing console certificates.
struct WebCa {
    cert_path: PathBuf,
    cert_der: CertificateDer<'static>,
    common_name: String,
    not_after_secs: u64,
    /// The DNS subtrees its name constraints permit (lower case): console certificates are
    /// issued only for names in them.
    permitted_dns: Vec<String>,
    key: KeyPair,
}

/// `name` (any case, with or without the final dot) lower-cased and without the final dot.
fn dns_canonical(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The web CA's name constraints: the DNS names given (and the names under them, as RFC 5280
/// reads a dNSName subtree), and no IP address at all.
fn web_ca_name_constraints(dns_names: &[String]) -> rcgen::NameConstraints {
    let mut permitted: Vec<String> = dns_names.iter().map(|name| dns_canonical(name)).collect();
    permitted.sort();
    permitted.dedup();
    rcgen::NameConstraints {
        permitted_subtrees: permitted.into_iter().map(rcgen::GeneralSubtree::DnsName).collect(),
        excluded_subtrees: vec![
            rcgen::GeneralSubtree::IpAddress(rcgen::CidrSubnet::V4([0; 4], [0; 4])),
            rcgen::GeneralSubtree::IpAddress(rcgen::CidrSubnet::V6([0; 16], [0; 16])),
        ],
    }
}

impl WebCa {
    /// Loads the web CA in `ca_dir`, or makes it when neither of its files exists yet. The
    /// cluster CA must be there: the web CA lives beside it, is named after it, and its key
    /// is protected exactly when the cluster CA's is. Returns whether it was made now.
    /// A new web CA is constrained to `dns_names` (see [`issue_console`]).
    fn load_or_create(
        ca_dir: &Path,
        passphrase: Option<&str>,
        dns_names: &[String],
    ) -> Result<(WebCa, bool), PkiError> {
        let cluster_cert = read_single_cert(&ca_dir.join(CA_CERT_FILE), FileKind::CaCertificate)?;
        let protected = ca_key_is_protected(ca_dir)?;
        if protected && passphrase.is_none() {
            return Err(PkiError::CaKeyLocked { path: ca_dir.join(CA_KEY_FILE) });
        }
        let passphrase = passphrase.filter(|_| protected);
        let cert_path = ca_dir.join(WEB_CA_CERT_FILE);
        let key_path = ca_dir.join(WEB_CA_KEY_FILE);
        if cert_path.symlink_metadata().is_err() && key_path.symlink_metadata().is_err() {
            Self::create(&cluster_cert, &cert_path, &key_path, passphrase, dns_names)?;
            return Ok((Self::load(cert_path, &key_path, passphrase)?, true));
        }
        Ok((Self::load(cert_path, &key_path, passphrase)?, false))
    }

    fn create(
        cluster_cert: &CertificateDer<'_>,
        cert_path: &Path,
        key_path: &Path,
        passphrase: Option<&str>,
        dns_names: &[String],
    ) -> Result<(), PkiError> {
        let cluster_name = x509_parser::parse_x509_certificate(cluster_cert.as_ref())
            .ok()
            .and_then(|(_, x509)| {
                x509.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_string)
            })
            .unwrap_or_else(|| "synod".to_string());
        // Named after the cluster CA, so a browser's trust store tells clusters apart.
        let suffix = " web CA";
        let mut common_name = cluster_name;
        while common_name.len() + suffix.len() > COMMON_NAME_BYTES_MAX {
            common_name.pop();
        }
        common_name.push_str(suffix);
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|source| PkiError::Generate { what: "web CA key", source })?;
        let now_secs = unix_now_secs();
        let mut params = ca_params(&common_name);
        set_validity(
            &mut params,
            now_secs.saturating_sub(CLOCK_SKEW_TOLERANCE_SECS),
            now_secs + u64::from(WEB_CA_VALIDITY_DAYS) * SECS_PER_DAY,
        );
        params.name_constraints = Some(web_ca_name_constraints(dns_names));
        let cert =
            params.self_signed(&key).map_err(|source| PkiError::Generate { what: "web CA certificate", source })?;
        let key_pem = match passphrase {
            None => key_pem_v1(&key)?,
            Some(passphrase) => encrypt_key_pem(&key, passphrase)?,
        };
        write_new(key_path, FileKind::CaKey, key_pem.as_bytes(), KEY_FILE_MODE)?;
        if let Err(error) = write_new(cert_path, FileKind::CaCertificate, cert.pem().as_bytes(), CERT_FILE_MODE) {
            let _ = fs::remove_file(key_path);
            return Err(error);
        }
        Ok(())
    }

    fn load(cert_path: PathBuf, key_path: &Path, passphrase: Option<&str>) -> Result<WebCa, PkiError> {
        let (ca, permitted_dns) = load_ca(cert_path, key_path.to_path_buf(), passphrase)?;
        if permitted_dns.is_empty() {
            return Err(PkiError::Parse {
                kind: FileKind::CaCertificate,
                path: ca.cert_path,
                detail: "it permits no DNS names (a web CA without name constraints could vouch for any site); \
                         move web-ca.pem and web-ca.key away, issue the console certificates again to make a \
                         constrained web CA, and have the browsers trust the new one"
                    .to_string(),
            });
        }
        let CaSigner { cert_path, cert_der, common_name, not_after_secs, key } = ca;
        Ok(WebCa { cert_path, cert_der, common_name, not_after_secs, permitted_dns, key })
    }

    /// Whether its name constraints permit the DNS name `name`: one of them, or a name under one.
    fn permits(&self, name: &str) -> bool {
        let name = dns_canonical(name);
        self.permitted_dns.iter().any(|base| name == *base || name.ends_with(&format!(".{base}")))
    }
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

fn validate_common_name(name: &str) -> Result<(), PkiError> {
    if name.is_empty() || name.len() > COMMON_NAME_BYTES_MAX || name.chars().any(char::is_control) {
        return Err(PkiError::InvalidCommonName { name: name.to_string() });
    }
    Ok(())
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
        load_ca(ca_dir.join(CA_CERT_FILE), ca_dir.join(CA_KEY_FILE), passphrase).map(|(ca, _)| ca)
    }
}

/// Reads a CA certificate and its key (decrypted with `passphrase` when it is protected),
/// checks that they belong together, and returns them with the DNS subtrees the
/// certificate's name constraints permit (lower case; none when it has no constraints).
fn load_ca(
    cert_path: PathBuf,
    key_path: PathBuf,
    passphrase: Option<&str>,
) -> Result<(CaSigner, Vec<String>), PkiError> {
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
    let constraints = x509
        .name_constraints()
        .map_err(|e| parse_error(format!("its name constraints do not parse: {e}")))?
        .and_then(|ext| ext.value.permitted_subtrees.clone())
        .unwrap_or_default();
    let permitted_dns: Vec<String> = constraints
        .iter()
        .filter_map(|subtree| match subtree.base {
            x509_parser::extensions::GeneralName::DNSName(name) => Some(dns_canonical(name)),
            _ => None,
        })
        .collect();
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
    Ok((CaSigner { cert_path, cert_der, common_name, not_after_secs, key }, permitted_dns))
}

/// Now and the end of a certificate valid `validity_days` from now (Unix seconds), or the
/// error when it would outlive its CA (at `ca_path`, ending at `ca_not_after_secs`).
fn validity_within(validity_days: u32, ca_path: &Path, ca_not_after_secs: u64) -> Result<(u64, u64), PkiError> {
    let now_secs = unix_now_secs();
    let not_after_secs = now_secs + u64::from(validity_days) * SECS_PER_DAY;
    if not_after_secs > ca_not_after_secs {
        return Err(PkiError::OutlivesCa {
            days: validity_days,
            ca_path: ca_path.to_path_buf(),
            ca_days_left: ca_not_after_secs.saturating_sub(now_secs) / SECS_PER_DAY,
        });
    }
    Ok((now_secs, not_after_secs))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::test_support::{node, Cluster};
    use crate::pki::{PeerIdentity, TlsMaterial};
    use tempfile::TempDir;

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
    fn pki_renew_keeps_subject_sans_and_key_with_a_new_serial() {
        // Renewing a node certificate keeps its identity, SANs and key (the old key file still
        // matches), takes a new serial and validity, keeps the old file as .prev, and is
        // refused for a certificate from another CA.
        let cluster = Cluster::new();
        let cert_path = cluster.certs_dir.join("node-1.crt");
        let before = fs::read(&cert_path).unwrap();
        let renewed = renew(&cluster.ca_dir, &cert_path, Some(7), None).expect("renew");
        assert_eq!(renewed.subject, node(1));
        assert_eq!(renewed.validity_days, 7);
        assert_eq!(fs::read(&renewed.previous_path).unwrap(), before);
        let material = cluster.material("node-1");
        assert_eq!(material.identity, PeerIdentity::Node(1));
        let old = read_single_cert(&renewed.previous_path, FileKind::Certificate).unwrap();
        let summary = |der: &CertificateDer<'_>| {
            let (_, x509) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
            (x509.raw_serial_as_string(), x509.validity().not_after.timestamp(), x509.public_key().raw.to_vec())
        };
        let (old_serial, old_expiry, old_key) = summary(&old);
        let (new_serial, new_expiry, new_key) = summary(&material.chain[0]);
        assert_ne!(old_serial, new_serial);
        assert!(new_expiry < old_expiry);
        assert_eq!(old_key, new_key);
        // A client certificate renews for the client default.
        let client = renew(&cluster.ca_dir, &cluster.certs_dir.join("client-alice.crt"), None, None).unwrap();
        assert_eq!(client.validity_days, CLIENT_VALIDITY_DAYS_DEFAULT);

        let other = Cluster::new();
        let error = renew(&cluster.ca_dir, &other.certs_dir.join("node-1.crt"), None, None).unwrap_err();
        assert!(matches!(error, PkiError::Untrusted { .. }), "{error}");
    }

    #[test]
    fn pki_console_certificate_is_p256_from_a_web_ca_made_once() {
        // The first console certificate makes the P-256 web CA beside the cluster CA (key 0600);
        // the next one reuses it; the certificate verifies for its DNS name under the web CA,
        // and IP addresses or no name at all are refused.
        use std::os::unix::fs::PermissionsExt;
        let cluster = Cluster::new();
        let out = cluster.certs_dir.join("console");
        let first = issue_console(&cluster.ca_dir, "n1", &["localhost".into()], &out, 30, None).unwrap();
        assert!(first.web_ca_created);
        let web_key = cluster.ca_dir.join(WEB_CA_KEY_FILE);
        assert_eq!(fs::metadata(&web_key).unwrap().permissions().mode() & 0o777, 0o600);
        let second = issue_console(&cluster.ca_dir, "n2", &["localhost".into()], &out, 30, None).unwrap();
        assert!(!second.web_ca_created);
        assert_eq!(first.web_ca_fingerprint_sha256, second.web_ca_fingerprint_sha256);
        let web_ca = read_single_cert(&first.web_ca_path, FileKind::CaCertificate).unwrap();
        let leaf = read_single_cert(&first.cert_path, FileKind::Certificate).unwrap();
        verify_server_chain(&web_ca, &leaf, "localhost").expect("verifies for localhost");
        assert!(verify_server_chain(&web_ca, &leaf, "example.org").is_err(), "not for another name");
        let (_, x509) = x509_parser::parse_x509_certificate(leaf.as_ref()).unwrap();
        assert_eq!(x509.public_key().algorithm.algorithm.to_id_string(), "1.2.840.10045.2.1", "an EC key");
        for names in [vec!["127.0.0.1".to_string()], Vec::new()] {
            let error = issue_console(&cluster.ca_dir, "n3", &names, &out, 30, None).unwrap_err();
            assert!(matches!(error, PkiError::InvalidSan { .. }), "{error}");
        }
        let error = issue_console(&cluster.ca_dir, "n1", &["localhost".into()], &out, 30, None).unwrap_err();
        assert!(matches!(error, PkiError::FileExists { .. }), "{error}");
    }

    #[test]
    fn pki_web_ca_is_constrained_to_the_first_console_names() {
        // The web CA permits the DNS names of the console certificate that made it (and names
        // under them) and no IP address, lives at most WEB_CA_VALIDITY_DAYS, and refuses a
        // console certificate for another name; a chain for a name under it still verifies.
        let cluster = Cluster::new();
        let out = cluster.certs_dir.join("console");
        let names = ["console.example.org".to_string(), "Approve.Example.NET".to_string()];
        let first = issue_console(&cluster.ca_dir, "n1", &names, &out, 30, None).unwrap();
        let web_ca = read_single_cert(&first.web_ca_path, FileKind::CaCertificate).unwrap();
        let (_, x509) = x509_parser::parse_x509_certificate(web_ca.as_ref()).unwrap();
        let life_days =
            (x509.validity().not_after.timestamp() - x509.validity().not_before.timestamp()) as u64 / SECS_PER_DAY;
        assert!(life_days <= u64::from(WEB_CA_VALIDITY_DAYS) + 1, "{life_days} days");
        let constraints = x509.name_constraints().unwrap().expect("name constraints").value.clone();
        let permitted: Vec<String> =
            constraints.permitted_subtrees.unwrap().iter().map(|subtree| format!("{:?}", subtree.base)).collect();
        assert_eq!(permitted, ["DNSName(\"approve.example.net\")", "DNSName(\"console.example.org\")"]);
        assert_eq!(constraints.excluded_subtrees.map(|e| e.len()), Some(2), "every IPv4 and IPv6 address");

        let under = issue_console(&cluster.ca_dir, "n2", &["n2.console.example.org".into()], &out, 30, None).unwrap();
        let leaf = read_single_cert(&under.cert_path, FileKind::Certificate).unwrap();
        verify_server_chain(&web_ca, &leaf, "n2.console.example.org").expect("a name under a permitted one");
        for outside in ["example.org", "evil-console.example.org", "bank.example.com"] {
            let error = issue_console(&cluster.ca_dir, "n3", &[outside.to_string()], &out, 30, None).unwrap_err();
            assert!(matches!(error, PkiError::OutsideWebCa { .. }), "{outside}: {error}");
            assert!(error.to_string().contains("console.example.org"), "{error}");
        }
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
}

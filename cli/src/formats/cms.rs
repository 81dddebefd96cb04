//! X.509 and CMS: `synod key csr` (a PKCS#10 request), `synod key certificate`
//! (a self-signed v3 certificate), `synod sign --format cms` (a detached CMS
//! SignedData, RFC 5652 with Ed25519 per RFC 8419) and `synod seal` (a PAdES
//! signature in a PDF, see [`super::pdf`]).
//!
//! Every structure is built here with the RustCrypto types (x509-cert, cms, der)
//! and only its to-be-signed DER goes to the cluster: the `TBSCertificate`, the
//! `CertificationRequestInfo`, or the `SignedAttributes` SET, which names the
//! document by its SHA-512 digest (computed here, so a document of any size
//! costs the cluster a few hundred bytes).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context};
use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignedAttributes, SignedData, SignerIdentifier, SignerInfo, SignerInfos,
};
use der::asn1::{BitString, OctetString, SetOfVec};
use der::{Any, Decode, DecodePem, Encode, EncodePem, Sequence};
use sha2::{Digest, Sha256, Sha512};
use spki::{AlgorithmIdentifierOwned, ObjectIdentifier, SubjectPublicKeyInfoOwned};
use synod_proto::format::cms::{CONTENT_TYPE, ID_DATA, MESSAGE_DIGEST, SIGNING_CERTIFICATE_V2, SIGNING_TIME};
use synod_proto::format::x509::ED25519;
use synod_proto::format::SignFormat;
use synod_proto::keyfmt;
use x509_cert::attr::Attribute;
use x509_cert::certificate::{Certificate, TbsCertificate};
use x509_cert::ext::pkix::{AuthorityKeyIdentifier, BasicConstraints, KeyUsage, KeyUsages, SubjectKeyIdentifier};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::request::{CertReq, CertReqInfo};
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};

use super::{Candidates, ClusterSigner, Declared, Signed};
use crate::display::{note, shown};
use crate::{Output, SignArgs, VerifyArgs};

/// id-sha512 (RFC 5754), the digest RFC 8419 requires with Ed25519.
const SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");
/// id-sha256, accepted when verifying signatures made elsewhere.
const SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
/// id-signedData (RFC 5652 5.1).
const SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
/// The longest a certificate may be valid, in days (about 30 years).
const CERTIFICATE_DAYS_MAX: u64 = 11_000;
/// The largest certificate or CMS file read, in bytes.
const DER_FILE_BYTES_MAX: u64 = 1 << 20;

fn ed25519() -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned { oid: ED25519, parameters: None }
}

fn spki_of(public_key: &[u8; 32]) -> anyhow::Result<SubjectPublicKeyInfoOwned> {
    Ok(SubjectPublicKeyInfoOwned { algorithm: ed25519(), subject_public_key: BitString::from_bytes(public_key)? })
}

/// The Ed25519 public key a certificate certifies, if it is one.
fn certified_key(cert: &Certificate) -> Option<[u8; 32]> {
    let spki = &cert.tbs_certificate.subject_public_key_info;
    if spki.algorithm.oid != ED25519 {
        return None;
    }
    spki.subject_public_key.as_bytes()?.try_into().ok()
}

fn parse_subject(text: &str) -> anyhow::Result<Name> {
    let name = Name::from_str(text).map_err(|e| {
        anyhow!("--subject {text:?} is not an RFC 4514 name ({e}); write e.g. \"CN=Acme Release,O=Acme\"")
    })?;
    if name.0.is_empty() {
        bail!("--subject is empty; write e.g. \"CN=Acme Release,O=Acme\"");
    }
    Ok(name)
}

/// Reads a PEM or DER file, at most [`DER_FILE_BYTES_MAX`] bytes.
fn read_bounded(path: &Path) -> anyhow::Result<Vec<u8>> {
    let len = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?.len();
    if len > DER_FILE_BYTES_MAX {
        bail!("{} is {len} bytes; a certificate or CMS file is at most {DER_FILE_BYTES_MAX} bytes", path.display());
    }
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn is_pem(bytes: &[u8]) -> bool {
    bytes.trim_ascii_start().starts_with(b"-----BEGIN")
}

/// A certificate file, PEM or DER.
pub fn read_certificate(path: &Path) -> anyhow::Result<Certificate> {
    let bytes = read_bounded(path)?;
    let cert = if is_pem(&bytes) { Certificate::from_pem(&bytes) } else { Certificate::from_der(&bytes) };
    cert.map_err(|e| {
        anyhow!(
            "{} is not an X.509 certificate in PEM or DER ({e}); make one with `synod key certificate`",
            path.display()
        )
    })
}

/// A cluster signer for the x509 commands, which take fewer options than `synod sign`.
pub(super) async fn signer(client: &crate::ClientArgs, key: &str, wait: &WaitArgs) -> anyhow::Result<ClusterSigner> {
    let declared = Declared {
        purpose: wait.purpose.clone().unwrap_or_default(),
        wait: Duration::from_secs(wait.wait_secs),
        approval_wait: Duration::from_secs(wait.approval_wait_secs),
        ..Declared::default()
    };
    ClusterSigner::new(client, key, wait.key_version, declared).await
}

/// Writes `bytes` to `out`, or to stdout when there is no `--out` and the output is for people.
fn write_out(out: Option<&Path>, bytes: &[u8], output: Output, what: &str, request_id: &str) -> anyhow::Result<()> {
    match out {
        Some(path) => {
            std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
            note(format_args!("{what} (request {}) written to {}", shown(request_id), path.display()));
        }
        None if output == Output::Table => {
            use std::io::Write;
            std::io::stdout().write_all(bytes)?;
        }
        None => {}
    }
    Ok(())
}

/// The options the x509 commands and `synod seal` share with `synod sign`.
#[derive(clap::Args, Debug)]
pub struct WaitArgs {
    /// Sign with this version of the key instead of its primary.
    #[arg(long)]
    pub key_version: Option<u32>,
    /// Why this is signed, recorded with the request.
    #[arg(long)]
    pub purpose: Option<String>,
    /// How long to wait for approvals when the key's policy needs them, in seconds (0: fail at
    /// once, naming the request approvers must approve).
    #[arg(long, default_value_t = 0)]
    pub approval_wait_secs: u64,
    /// How long to wait for the signature, in seconds.
    #[arg(long, default_value_t = 30)]
    pub wait_secs: u64,
}

/// `synod key csr`.
#[derive(clap::Args, Debug)]
pub struct CsrArgs {
    /// The cluster key.
    pub name: String,
    /// The subject, an RFC 4514 name, e.g. "CN=Acme Release,O=Acme".
    #[arg(long)]
    pub subject: String,
    /// Write the request (PEM) here instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub wait: WaitArgs,
    #[command(flatten)]
    pub client: crate::ClientArgs,
}

/// `synod key csr`: a PKCS#10 request whose `CertificationRequestInfo` the
/// cluster signs (format x509), for a CA to certify the key.
pub async fn csr(args: CsrArgs) -> anyhow::Result<()> {
    let subject = parse_subject(&args.subject)?;
    let signer = signer(&args.client, &args.name, &args.wait).await?;
    let info = CertReqInfo {
        version: x509_cert::request::Version::V1,
        subject,
        public_key: spki_of(&signer.public_key())?,
        attributes: SetOfVec::new(),
    };
    let Signed { signature, info: request } = signer.sign(SignFormat::X509, &info.to_der()?, None).await?;
    let csr = CertReq { info, algorithm: ed25519(), signature: BitString::from_bytes(&signature)? };
    let pem = csr.to_pem(der::pem::LineEnding::LF)?;
    let output = args.client.output.output;
    if output == Output::Json {
        println!(
            "{}",
            serde_json::json!({
                "request_id": request.request_id,
                "key_version": signer.version(),
                "subject": csr.info.subject.to_string(),
                "csr": pem,
            })
        );
    }
    write_out(args.out.as_deref(), pem.as_bytes(), output, "certificate signing request", &request.request_id)
}

/// `synod key certificate`.
#[derive(clap::Args, Debug)]
pub struct CertificateArgs {
    /// The cluster key.
    pub name: String,
    /// Make a self-signed certificate (the only kind made here; for a CA-issued one, send
    /// `synod key csr`'s request to the CA).
    #[arg(long)]
    pub self_signed: bool,
    /// The subject (and issuer), an RFC 4514 name, e.g. "CN=Acme Release,O=Acme".
    #[arg(long)]
    pub subject: String,
    /// How many days the certificate is valid from now.
    #[arg(long, default_value_t = 365)]
    pub days: u64,
    /// Write the certificate (PEM) here instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub wait: WaitArgs,
    #[command(flatten)]
    pub client: crate::ClientArgs,
}

/// `synod key certificate --self-signed`: a v3 certificate for document
/// signing (digitalSignature and nonRepudiation, not a CA) whose
/// `TBSCertificate` the cluster signs (format x509).
pub async fn certificate(args: CertificateArgs) -> anyhow::Result<()> {
    if !args.self_signed {
        bail!(
            "only self-signed certificates are made here: add --self-signed, or have a CA certify the key with \
             `synod key csr`"
        );
    }
    if args.days == 0 || args.days > CERTIFICATE_DAYS_MAX {
        bail!("--days must be 1 to {CERTIFICATE_DAYS_MAX}");
    }
    let subject = parse_subject(&args.subject)?;
    let signer = signer(&args.client, &args.name, &args.wait).await?;
    let public_key = signer.public_key();
    let tbs = self_signed_tbs(subject, &public_key, args.days)?;
    let Signed { signature, info: request } = signer.sign(SignFormat::X509, &tbs.to_der()?, None).await?;
    let cert = Certificate {
        tbs_certificate: tbs,
        signature_algorithm: ed25519(),
        signature: BitString::from_bytes(&signature)?,
    };
    let pem = cert.to_pem(der::pem::LineEnding::LF)?;
    let output = args.client.output.output;
    if output == Output::Json {
        let tbs = &cert.tbs_certificate;
        println!(
            "{}",
            serde_json::json!({
                "request_id": request.request_id,
                "key_version": signer.version(),
                "subject": tbs.subject.to_string(),
                "serial": hex::encode(tbs.serial_number.as_bytes()),
                "not_before": tbs.validity.not_before.to_string(),
                "not_after": tbs.validity.not_after.to_string(),
                "certificate": pem,
            })
        );
    }
    write_out(args.out.as_deref(), pem.as_bytes(), output, "certificate", &request.request_id)
}

fn self_signed_tbs(subject: Name, public_key: &[u8; 32], days: u64) -> anyhow::Result<TbsCertificate> {
    // A positive 16-byte serial with a non-zero first byte, so its DER is 16 bytes.
    let mut serial = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut serial);
    serial[0] = (serial[0] & 0x3f) | 0x40;
    // RFC 7093 method 1: the leftmost 160 bits of the SHA-256 of the public key.
    let key_id = OctetString::new(&Sha256::digest(public_key)[..20])?;
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?;
    let not_before = Time::try_from(SystemTime::UNIX_EPOCH + Duration::from_secs(now.as_secs()))?;
    let not_after = Time::try_from(SystemTime::UNIX_EPOCH + Duration::from_secs(now.as_secs() + days * 86_400))?;
    let extensions = vec![
        extension(&BasicConstraints { ca: false, path_len_constraint: None }, true)?,
        extension(&KeyUsage(KeyUsages::DigitalSignature | KeyUsages::NonRepudiation), true)?,
        extension(&SubjectKeyIdentifier(key_id.clone()), false)?,
        extension(
            &AuthorityKeyIdentifier {
                key_identifier: Some(key_id),
                authority_cert_issuer: None,
                authority_cert_serial_number: None,
            },
            false,
        )?,
    ];
    Ok(TbsCertificate {
        version: x509_cert::Version::V3,
        serial_number: SerialNumber::new(&serial)?,
        signature: ed25519(),
        issuer: subject.clone(),
        validity: Validity { not_before, not_after },
        subject,
        subject_public_key_info: spki_of(public_key)?,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions),
    })
}

fn extension<T: const_oid::AssociatedOid + Encode>(value: &T, critical: bool) -> anyhow::Result<Extension> {
    Ok(Extension { extn_id: T::OID, critical, extn_value: OctetString::new(value.to_der()?)? })
}

/// ESSCertIDv2 (RFC 5035 4) with the default hash, SHA-256, and no issuer-serial.
#[derive(Sequence)]
struct EssCertIdV2 {
    cert_hash: OctetString,
}

/// SigningCertificateV2 (RFC 5035 3) without policies.
#[derive(Sequence)]
struct SigningCertificateV2 {
    certs: Vec<EssCertIdV2>,
}

fn attribute(oid: ObjectIdentifier, value: Any) -> anyhow::Result<Attribute> {
    Ok(Attribute { oid, values: SetOfVec::try_from(vec![value])? })
}

/// What the signed attributes hold besides the content type and the digest.
pub struct AttributeOptions {
    /// signing-time: a detached CMS carries it; PAdES puts the time in the
    /// signature dictionary's /M instead (ETSI EN 319 142-1 5.2.2).
    pub signing_time: bool,
}

/// The signed attributes for `digest` (SHA-512 of the content) made with `cert`.
pub fn signed_attributes(
    digest: &[u8; 64],
    cert: &Certificate,
    options: &AttributeOptions,
) -> anyhow::Result<SignedAttributes> {
    let cert_hash = OctetString::new(Sha256::digest(cert.to_der()?).to_vec())?;
    let signing_certificate = SigningCertificateV2 { certs: vec![EssCertIdV2 { cert_hash }] };
    let mut attributes = vec![
        attribute(CONTENT_TYPE, Any::encode_from(&ID_DATA)?)?,
        attribute(MESSAGE_DIGEST, Any::encode_from(&OctetString::new(digest.to_vec())?)?)?,
        attribute(SIGNING_CERTIFICATE_V2, Any::encode_from(&signing_certificate)?)?,
    ];
    if options.signing_time {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?;
        let time = Time::try_from(SystemTime::UNIX_EPOCH + Duration::from_secs(now.as_secs()))?;
        attributes.push(attribute(SIGNING_TIME, Any::encode_from(&time)?)?);
    }
    // `try_from` sorts the SET into DER order.
    Ok(SetOfVec::try_from(attributes)?)
}

/// The certificate must certify the key that signs, or verifiers reject the signature.
pub fn check_certificate(cert: &Certificate, signer: &ClusterSigner) -> anyhow::Result<()> {
    if certified_key(cert) != Some(signer.public_key()) {
        bail!(
            "the certificate is not for key {} version {} (public key {}); make one with `synod key certificate {}`",
            shown(&signer.key().name),
            signer.version(),
            hex::encode(signer.public_key()),
            signer.key().name
        );
    }
    Ok(())
}

/// Has the cluster sign `attributes` (their DER SET, format cms) and wraps the
/// signature in a detached CMS `ContentInfo` that carries `cert`.
pub async fn signed_data(
    signer: &ClusterSigner,
    cert: &Certificate,
    attributes: SignedAttributes,
) -> anyhow::Result<(Vec<u8>, Signed)> {
    let signed = signer.sign(SignFormat::Cms, &attributes.to_der()?, None).await?;
    let tbs = &cert.tbs_certificate;
    let signer_info = SignerInfo {
        version: CmsVersion::V1,
        sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
            issuer: tbs.issuer.clone(),
            serial_number: tbs.serial_number.clone(),
        }),
        digest_alg: AlgorithmIdentifierOwned { oid: SHA512, parameters: None },
        signed_attrs: Some(attributes),
        signature_algorithm: ed25519(),
        signature: OctetString::new(signed.signature.to_vec())?,
        unsigned_attrs: None,
    };
    let signed_data = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::try_from(vec![AlgorithmIdentifierOwned { oid: SHA512, parameters: None }])?,
        encap_content_info: EncapsulatedContentInfo { econtent_type: ID_DATA, econtent: None },
        certificates: Some(CertificateSet(SetOfVec::try_from(vec![CertificateChoices::Certificate(cert.clone())])?)),
        crls: None,
        signer_infos: SignerInfos(SetOfVec::try_from(vec![signer_info])?),
    };
    let content = ContentInfo { content_type: SIGNED_DATA, content: Any::encode_from(&signed_data)? };
    Ok((content.to_der()?, signed))
}

fn sha512_file(path: &Path) -> anyhow::Result<[u8; 64]> {
    Ok(super::hash_file::<Sha512>(path)?.into())
}

/// `synod sign --format cms`.
pub async fn sign(args: &SignArgs) -> anyhow::Result<()> {
    let f = &args.format;
    f.refuse_others(&["--cert"])?;
    if args.signature_format.is_some() {
        bail!("--format cms writes DER (into --out) or PEM (on stdout); drop --signature-format");
    }
    let cert_path = f.cert.as_deref().ok_or_else(|| {
        anyhow!("--format cms needs the key's certificate: --cert cert.pem (make one with `synod key certificate`)")
    })?;
    let cert = read_certificate(cert_path)?;
    let signer = ClusterSigner::of(args).await?;
    check_certificate(&cert, &signer)?;
    let digest = sha512_file(&args.input)?;
    let attributes = signed_attributes(&digest, &cert, &AttributeOptions { signing_time: true })?;
    let (der, signed) = signed_data(&signer, &cert, attributes).await?;
    let output = args.client.output.output;
    let pem = der::pem::encode_string("CMS", der::pem::LineEnding::LF, &der)?;
    if output == Output::Json {
        // The request as the cluster reports it, and the signature file as PEM under `cms`.
        let mut json = serde_json::to_value(&signed.info)?;
        json["cms"] = serde_json::Value::String(pem.clone());
        println!("{}", serde_json::to_string_pretty(&json)?);
    }
    match &args.out {
        Some(path) => write_out(Some(path), &der, output, "CMS signature", &signed.info.request_id),
        None => write_out(None, pem.as_bytes(), output, "CMS signature", &signed.info.request_id),
    }
}

/// `synod verify --format x509` (a certificate or CSR's own signature) and
/// `synod verify --format cms` (a detached CMS signature of `--in`).
pub fn verify(
    format: SignFormat,
    args: &VerifyArgs,
    candidates: &Candidates,
) -> anyhow::Result<(Option<u32>, [u8; 32])> {
    match format {
        SignFormat::X509 => verify_x509(args, candidates),
        _ => verify_cms(args, candidates),
    }
}

fn verify_x509(args: &VerifyArgs, candidates: &Candidates) -> anyhow::Result<(Option<u32>, [u8; 32])> {
    if args.signature.is_some() {
        bail!("--format x509 verifies the certificate or CSR given with --in; drop --signature");
    }
    let bytes = read_bounded(&args.input)?;
    let cert = if is_pem(&bytes) { Certificate::from_pem(&bytes) } else { Certificate::from_der(&bytes) };
    let (tbs, algorithm, signature) = match cert {
        Ok(cert) => (cert.tbs_certificate.to_der()?, cert.signature_algorithm, cert.signature),
        Err(_) => {
            let csr = if is_pem(&bytes) { CertReq::from_pem(&bytes) } else { CertReq::from_der(&bytes) };
            let csr = csr.map_err(|e| {
                anyhow!("{} is neither an X.509 certificate nor a PKCS#10 request ({e})", args.input.display())
            })?;
            (csr.info.to_der()?, csr.algorithm, csr.signature)
        }
    };
    if algorithm.oid != ED25519 {
        bail!("the signature algorithm is {}, not Ed25519", algorithm.oid);
    }
    let signature: [u8; 64] = signature
        .as_bytes()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| anyhow!("the Ed25519 signature is not 64 bytes"))?;
    first_verifying(candidates, &tbs, &signature)
}

fn first_verifying(
    candidates: &Candidates,
    message: &[u8],
    signature: &[u8; 64],
) -> anyhow::Result<(Option<u32>, [u8; 32])> {
    candidates.iter().find(|(_, public)| keyfmt::verify(public, message, signature).is_ok()).copied().ok_or_else(|| {
        if candidates.len() > 1 {
            anyhow!("the signature does not verify with any of the {} versions of the key", candidates.len())
        } else {
            anyhow!("the signature does not verify with this public key")
        }
    })
}

fn verify_cms(args: &VerifyArgs, candidates: &Candidates) -> anyhow::Result<(Option<u32>, [u8; 32])> {
    let path = args.signature.as_deref().ok_or_else(|| anyhow!("give the CMS signature with --signature FILE.p7s"))?;
    let bytes = read_bounded(path)?;
    let der = if is_pem(&bytes) {
        let text = std::str::from_utf8(&bytes).map_err(|_| anyhow!("{} is not PEM text", path.display()))?;
        der::pem::decode_vec(text.as_bytes()).map_err(|e| anyhow!("{} is not PEM: {e}", path.display()))?.1
    } else {
        bytes
    };
    let content =
        ContentInfo::from_der(&der).map_err(|e| anyhow!("{} is not a CMS ContentInfo ({e})", path.display()))?;
    if content.content_type != SIGNED_DATA {
        bail!("{} is CMS content of type {}, not SignedData", path.display(), content.content_type);
    }
    let signed_data: SignedData = content.content.decode_as().map_err(|e| anyhow!("malformed SignedData: {e}"))?;
    if signed_data.encap_content_info.econtent.is_some() {
        bail!("the CMS signature carries its content; `synod verify --format cms` checks detached signatures");
    }
    let [signer_info] = signed_data.signer_infos.0.as_slice() else {
        bail!("the CMS signature has {} signers; expected one", signed_data.signer_infos.0.len());
    };
    let cert = signer_certificate(args, &signed_data, signer_info)?;
    let public = certified_key(&cert).ok_or_else(|| anyhow!("the signer's certificate is not for an Ed25519 key"))?;
    let found = candidates.iter().find(|(_, key)| *key == public).copied().ok_or_else(|| {
        anyhow!("the signer's certificate is for public key {}, which is not the key given", hex::encode(public))
    })?;
    if signer_info.signature_algorithm.oid != ED25519 {
        bail!("the signature algorithm is {}, not Ed25519", signer_info.signature_algorithm.oid);
    }
    let attributes = signer_info.signed_attrs.as_ref().ok_or_else(|| anyhow!("the signer has no signed attributes"))?;
    let attributes_der = attributes.to_der()?;
    // The same reading every node does: content type and exactly one message digest.
    let inspection = synod_proto::format::inspect(SignFormat::Cms, &attributes_der).map_err(|e| anyhow!("{e}"))?;
    let claimed = inspection.artifact_hash.unwrap_or_default();
    let actual = match signer_info.digest_alg.oid {
        SHA512 => synod_proto::format::hash_label("sha512", &sha512_file(&args.input)?),
        SHA256 => {
            let bytes = std::fs::read(&args.input).with_context(|| format!("cannot read {}", args.input.display()))?;
            synod_proto::format::hash_label("sha256", &Sha256::digest(bytes))
        }
        other => bail!("the digest algorithm is {other}; SHA-512 or SHA-256 expected"),
    };
    if claimed != actual {
        bail!(
            "{} is not the signed document: its digest is {actual}, the signature names {claimed}",
            args.input.display()
        );
    }
    let signature: [u8; 64] =
        signer_info.signature.as_bytes().try_into().map_err(|_| anyhow!("the Ed25519 signature is not 64 bytes"))?;
    keyfmt::verify(&public, &attributes_der, &signature).map_err(|e| anyhow!("{e}"))?;
    Ok(found)
}

/// The signer's certificate: `--cert`, or the one in the SignedData its SignerInfo names.
fn signer_certificate(args: &VerifyArgs, data: &SignedData, signer: &SignerInfo) -> anyhow::Result<Certificate> {
    if let Some(path) = &args.format.cert {
        return read_certificate(path);
    }
    let SignerIdentifier::IssuerAndSerialNumber(id) = &signer.sid else {
        bail!("the signer is named by subject key identifier; give its certificate with --cert");
    };
    data.certificates
        .iter()
        .flat_map(|set| set.0.iter())
        .find_map(|choice| match choice {
            CertificateChoices::Certificate(cert)
                if cert.tbs_certificate.issuer == id.issuer
                    && cert.tbs_certificate.serial_number == id.serial_number =>
            {
                Some(cert.clone())
            }
            _ => None,
        })
        .ok_or_else(|| anyhow!("the CMS signature does not carry the signer's certificate; give it with --cert"))
}

/// `synod seal`.
#[derive(clap::Args, Debug)]
pub struct SealArgs {
    /// The cluster key.
    pub key: String,
    /// The key's certificate (PEM or DER), from `synod key certificate` or your CA.
    #[arg(long)]
    pub cert: PathBuf,
    /// The PDF to seal.
    #[arg(long = "in")]
    pub input: PathBuf,
    /// Where to write the sealed PDF.
    #[arg(long)]
    pub out: PathBuf,
    /// The reason shown with the signature (/Reason).
    #[arg(long)]
    pub reason: Option<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
    #[command(flatten)]
    pub client: crate::ClientArgs,
}

/// `synod seal`: a PAdES signature added to a PDF as an incremental update.
pub async fn seal(args: SealArgs) -> anyhow::Result<()> {
    super::pdf::seal(args).await
}

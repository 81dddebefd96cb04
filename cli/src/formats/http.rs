//! `synod sign --format http-signature` and `synod verify --format
//! http-signature`: RFC 9421 HTTP message signatures with `alg="ed25519"`, the
//! headers a webhook sender adds to a request so that its receiver (with
//! `http-message-signatures` in Python, or any RFC 9421 library) knows the cluster
//! sent it.
//!
//! The body is hashed here into `Content-Digest: sha-256=:…:` (RFC 9530), so a
//! body of any size costs the cluster one small signature base. The signature
//! covers `("@method" "@target-uri" "content-digest" <each --header, lowercased>)`
//! with the parameters `created`, `keyid` (the RFC 7638 thumbprint of the signing
//! version's JWK, as `synod key show --format jwks` lists it) and `alg`, under
//! the label `sig1`. The cluster signs the signature base of RFC 9421 section 2.5
//! as one request, and every node reads it (`synod_proto::format::http`) before
//! any share is released.

use std::path::Path;

use anyhow::{anyhow, bail, Context};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::json;
use synod_proto::format::{hash_label, http, SignFormat};
use synod_proto::keyfmt;

use super::{Candidates, ClusterSigner};
use crate::display::{note, shown};
use crate::{Output, SignArgs, VerifyArgs};

/// The signature's label in `Signature-Input` and `Signature`.
const LABEL: &str = "sig1";
/// The largest headers file `synod verify` reads.
const HEADERS_FILE_BYTES_MAX: u64 = 64 * 1024;
/// Fields the signer computes itself; a `--header` naming one is refused.
const COMPUTED_FIELDS: [&str; 3] = ["content-digest", "signature-input", "signature"];

/// `synod sign --format http-signature`.
pub async fn sign(args: &SignArgs) -> anyhow::Result<()> {
    refuse_other_options(args)?;
    if args.signature_format.is_some() {
        bail!("--format http-signature writes the headers to send; drop --signature-format");
    }
    let request = Request::of(&args.format)?;
    let content_digest = content_digest(&sha256_file(&args.input)?);
    let signer = ClusterSigner::of(args).await?;
    let keyid = keyfmt::jwk_thumbprint(&signer.public_key());
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let mut names = vec!["@method", "@target-uri", "content-digest"];
    names.extend(request.headers.iter().map(|(name, _)| name.as_str()));
    let params = http::signature_params(&names, created, &keyid);
    let base = request.base(&params, Some(&content_digest))?;
    let signed = signer.sign(SignFormat::HttpSignature, base.as_bytes(), None).await?;
    let signature_input = format!("{LABEL}={params}");
    let signature = format!("{LABEL}=:{}:", STANDARD.encode(signed.signature));
    let headers =
        format!("Content-Digest: {content_digest}\nSignature-Input: {signature_input}\nSignature: {signature}\n");
    if let Some(path) = &args.out {
        std::fs::write(path, &headers).with_context(|| format!("cannot write {}", path.display()))?;
    }
    match args.client.output.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "format": SignFormat::HttpSignature,
                "key": signer.key().name,
                "key_version": signer.version(),
                "keyid": keyid,
                "request_id": signed.info.request_id,
                "artifact_hash": signed.info.format.as_ref().and_then(|f| f.inspection.artifact_hash.clone()),
                "out": args.out.as_ref().map(|p| p.display().to_string()),
                "content_digest": content_digest,
                "signature_input": signature_input,
                "signature": signature,
            }))?
        ),
        Output::Table if args.out.is_none() => print!("{headers}"),
        Output::Table => note(format_args!(
            "HTTP signature headers (request {}) written to {}",
            shown(&signed.info.request_id),
            args.out.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
        )),
    }
    Ok(())
}

/// `synod verify --format http-signature`: rebuilds the signature base from the
/// request (`--method`, `--target-uri`, `--header`), the body's digest and the
/// headers file (`--signature`), and checks the signature the `keyid` names.
pub fn verify(args: &VerifyArgs, candidates: &Candidates) -> anyhow::Result<(Option<u32>, [u8; 32])> {
    let f = &args.format;
    f.refuse_others(&["--method", "--target-uri", "--header"])?;
    let request = Request::of(&args.format)?;
    let path = args.signature.as_ref().ok_or_else(|| {
        anyhow!("give the headers file (Content-Digest, Signature-Input, Signature lines) with --signature FILE")
    })?;
    let received = Received::read(path)?;
    let base = request.base(&received.params, received.content_digest.as_deref())?;
    let read = http::read(base.as_bytes()).map_err(|why| anyhow!("{}: {why}", path.display()))?;
    let Some(stated) = read.component("content-digest") else {
        bail!("the signature does not cover content-digest, so it says nothing of the body; refusing it");
    };
    let artifact_hash = http::inspect(base.as_bytes())
        .map_err(|why| anyhow!("{}: {why}", path.display()))?
        .artifact_hash
        .ok_or_else(|| anyhow!("the covered Content-Digest names no body hash"))?;
    let body_hash = if artifact_hash.starts_with("sha512:") {
        hash_label("sha512", &sha512_file(&args.input)?)
    } else {
        hash_label("sha256", &sha256_file(&args.input)?)
    };
    if body_hash != artifact_hash {
        bail!(
            "the body in {} does not match the signed Content-Digest {}: the body was changed after signing",
            args.input.display(),
            shown(stated)
        );
    }
    let keyid = read.string_param("keyid");
    let named: Vec<&(Option<u32>, [u8; 32])> =
        candidates.iter().filter(|(_, public)| keyid.is_none_or(|k| keyfmt::jwk_thumbprint(public) == k)).collect();
    if named.is_empty() {
        let thumbprints: Vec<String> = candidates.iter().map(|(_, k)| keyfmt::jwk_thumbprint(k)).collect();
        bail!(
            "the signature's keyid {} is the thumbprint of none of the keys given ({}); check that this key signed it",
            shown(keyid.unwrap_or_default()),
            thumbprints.join(", ")
        );
    }
    for &&(version, public) in &named {
        if keyfmt::verify(&public, base.as_bytes(), &received.signature).is_ok() {
            return Ok((version, public));
        }
    }
    bail!(
        "the signature does not verify for this request: the method, target URI or a covered header differs from \
         what was signed (covered: {})",
        read.components.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(" ")
    )
}

/// The request a signature is for, as `--method`, `--target-uri` and `--header` give it.
struct Request {
    method: String,
    target_uri: String,
    /// (lowercased name, trimmed value), in the order given.
    headers: Vec<(String, String)>,
}

impl Request {
    fn of(args: &super::args::FormatArgs) -> anyhow::Result<Request> {
        let method = args.method.clone().ok_or_else(|| anyhow!("give the request method with --method, e.g. POST"))?;
        if method.is_empty() || !method.bytes().all(is_tchar) {
            bail!("--method {} is not an HTTP method (a token such as POST)", shown(&method));
        }
        let target_uri = args.target_uri.clone().ok_or_else(|| {
            anyhow!("give the request's absolute URI with --target-uri, e.g. https://example.com/hook")
        })?;
        let scheme_ok = target_uri.split_once("://").is_some_and(|(scheme, rest)| {
            !scheme.is_empty()
                && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
                && !rest.is_empty()
        });
        if !scheme_ok || !target_uri.bytes().all(|b| b.is_ascii_graphic()) {
            bail!(
                "--target-uri {} is not an absolute URI without spaces (percent-encode them), e.g. https://example.com/hook",
                shown(&target_uri)
            );
        }
        let mut headers: Vec<(String, String)> = Vec::new();
        for header in &args.headers {
            let (name, value) =
                header.split_once(':').ok_or_else(|| anyhow!("--header {} is not NAME:VALUE", shown(header)))?;
            let name = name.trim().to_ascii_lowercase();
            let value = value.trim_matches([' ', '\t']).to_string();
            if name.is_empty() || !name.bytes().all(is_tchar) {
                bail!("--header {}: {} is not a header name", shown(header), shown(&name));
            }
            if COMPUTED_FIELDS.contains(&name.as_str()) {
                bail!("--header {name} is computed by the signer; drop it");
            }
            if !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                bail!("--header {name}: its value has control or non-ASCII characters, which cannot be signed");
            }
            if headers.iter().any(|(n, _)| *n == name) {
                bail!(
                    "--header {name} is given twice; give it once, its values joined by \", \" (RFC 9421 section 2.1)"
                );
            }
            headers.push((name, value));
        }
        Ok(Request { method, target_uri, headers })
    }

    /// The RFC 9421 signature base of the components `params` lists, checked as every node checks it.
    fn base(&self, params: &str, content_digest: Option<&str>) -> anyhow::Result<String> {
        let mut components: Vec<(&str, String)> = Vec::new();
        for name in listed(params)? {
            let value = match name {
                "@method" => self.method.clone(),
                "@target-uri" => self.target_uri.clone(),
                "content-digest" => content_digest
                    .ok_or_else(|| {
                        anyhow!("the signature covers content-digest, but no Content-Digest line was given")
                    })?
                    .to_string(),
                derived if derived.starts_with('@') => {
                    bail!("the signature covers {derived}, which this verifier does not derive (only @method and @target-uri)")
                }
                field => self.headers.iter().find(|(n, _)| n == field).map(|(_, v)| v.clone()).ok_or_else(|| {
                    anyhow!("the signature covers header {field}; give it with --header {field}:VALUE")
                })?,
            };
            components.push((name, value));
        }
        let components: Vec<(&str, &str)> = components.iter().map(|(n, v)| (*n, v.as_str())).collect();
        http::signature_base(&components, params).map_err(|why| anyhow!("the signature base does not parse: {why}"))
    }
}

/// The component names of an inner list `("a" "b");params`, unchecked (the base's reader checks them).
fn listed(params: &str) -> anyhow::Result<Vec<&str>> {
    let list = params
        .strip_prefix('(')
        .and_then(|p| p.split_once(')'))
        .map(|(list, _)| list)
        .ok_or_else(|| anyhow!("the signature parameters {} do not start with an inner list", shown(params)))?;
    Ok(list.split(' ').filter(|i| !i.is_empty()).map(|i| i.trim_matches('"')).collect())
}

/// What a headers file says: `Content-Digest`, `Signature-Input` and `Signature` lines.
struct Received {
    content_digest: Option<String>,
    /// The `Signature-Input` member's value: the inner list and its parameters.
    params: String,
    signature: [u8; 64],
}

impl Received {
    fn read(path: &Path) -> anyhow::Result<Received> {
        let size = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?.len();
        if size > HEADERS_FILE_BYTES_MAX {
            bail!("{} is {size} bytes; a headers file is at most {HEADERS_FILE_BYTES_MAX}", path.display());
        }
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let (mut digest, mut input, mut signature) = (None, None, None);
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| anyhow!("{}: line {} is not Name: value", path.display(), shown(line)))?;
            let slot = match name.trim().to_ascii_lowercase().as_str() {
                "content-digest" => &mut digest,
                "signature-input" => &mut input,
                "signature" => &mut signature,
                _ => continue,
            };
            if slot.replace(value.trim().to_string()).is_some() {
                bail!("{} has {} twice", path.display(), name.trim());
            }
        }
        let input = input.ok_or_else(|| anyhow!("{} has no Signature-Input line", path.display()))?;
        let signature = signature.ok_or_else(|| anyhow!("{} has no Signature line", path.display()))?;
        let (label, params) = input.split_once('=').ok_or_else(|| anyhow!("Signature-Input is not label=(...)"))?;
        let encoded = signature
            .strip_prefix(label)
            .and_then(|s| s.strip_prefix("=:"))
            .and_then(|s| s.strip_suffix(':'))
            .ok_or_else(|| {
                anyhow!("Signature is not {label}=:BASE64: (one signature, labelled as in Signature-Input)")
            })?;
        let signature = STANDARD
            .decode(encoded)
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
            .ok_or_else(|| anyhow!("Signature {label} is not 64 bytes of base64"))?;
        Ok(Received { content_digest: digest, params: params.to_string(), signature })
    }
}

/// `sha-256=:BASE64:`, RFC 9530's Content-Digest of a body with this SHA-256.
fn content_digest(sha256: &[u8]) -> String {
    format!("sha-256=:{}:", STANDARD.encode(sha256))
}

fn sha256_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    Ok(super::hash_file::<sha2::Sha256>(path)?.to_vec())
}

fn sha512_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    Ok(super::hash_file::<sha2::Sha512>(path)?.to_vec())
}

/// An RFC 9110 token character.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Options of other formats are refused rather than ignored.
fn refuse_other_options(args: &SignArgs) -> anyhow::Result<()> {
    args.format.refuse_others(&["--method", "--target-uri", "--header"])
}

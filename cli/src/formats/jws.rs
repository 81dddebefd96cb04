//! `synod sign --format jws|jwt` and `synod verify --format jws|jwt`: compact
//! JWS tokens (RFC 7515) signed with EdDSA (RFC 8037), which PyJWT, jwcrypto, jose
//! and every other JOSE library verify against `synod key show --format jwks`.
//!
//! The header is `{"alg":"EdDSA","kid":"<RFC 7638 thumbprint>"}` (`"typ":"JWT"`
//! added for a JWT). The `kid` is the thumbprint of the signing version's JWK, the
//! same `kid` the key's JWKS lists, so a verifier picks the right version after a
//! rotation. The cluster signs the signing input `BASE64URL(header) "."
//! BASE64URL(payload)` as one request, and every node reads it as a JWS
//! (`synod_proto::format::jws`) before any share is released.

use std::path::Path;

use anyhow::{anyhow, bail, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};
use synod_proto::command::MESSAGE_BYTES_MAX;
use synod_proto::format::{jws, SignFormat};
use synod_proto::keyfmt;

use super::{Candidates, ClusterSigner};
use crate::display::{note, shown};
use crate::{Output, SignArgs, VerifyArgs};

/// The largest token file `synod verify` reads: a signing input the cluster
/// could have signed, its signature and some whitespace.
const TOKEN_BYTES_MAX: u64 = MESSAGE_BYTES_MAX as u64 + 1024;

/// `synod sign --format jws|jwt`.
pub async fn sign(format: SignFormat, args: &SignArgs) -> anyhow::Result<()> {
    refuse_other_options(format, args)?;
    let alg = algorithm(args.format.alg.as_deref())?;
    let payload = read_payload(format, &args.input)?;
    let signer = ClusterSigner::of(args).await?;
    let kid = keyfmt::jwk_thumbprint(&signer.public_key());
    // Written by hand so the member order is the documented one.
    let header = match format {
        SignFormat::Jwt => format!(r#"{{"alg":"{alg}","kid":"{kid}","typ":"JWT"}}"#),
        _ => format!(r#"{{"alg":"{alg}","kid":"{kid}"}}"#),
    };
    let signing_input = format!("{}.{}", URL_SAFE_NO_PAD.encode(&header), URL_SAFE_NO_PAD.encode(&payload));
    if signing_input.len() > MESSAGE_BYTES_MAX {
        bail!(
            "the token's signing input would be {} bytes (the payload grows by a third in base64url); the cluster \
             signs at most {MESSAGE_BYTES_MAX}: sign a smaller payload, or a digest of it",
            signing_input.len()
        );
    }
    // The check every node makes, made first here so a refusal names the file.
    jws::read(signing_input.as_bytes(), format == SignFormat::Jwt)
        .map_err(|why| anyhow!("{} cannot be signed as {format}: {why}", args.input.display()))?;
    let signed = signer.sign(format, signing_input.as_bytes(), None).await?;
    let token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signed.signature));
    if let Some(path) = &args.out {
        std::fs::write(path, format!("{token}\n")).with_context(|| format!("cannot write {}", path.display()))?;
    }
    match args.client.output.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "format": format,
                "key": signer.key().name,
                "key_version": signer.version(),
                "kid": kid,
                "request_id": signed.info.request_id,
                "artifact_hash": signed.info.format.as_ref().and_then(|f| f.inspection.artifact_hash.clone()),
                "header": serde_json::from_str::<Value>(&header)?,
                "out": args.out.as_ref().map(|p| p.display().to_string()),
                "token": token,
            }))?
        ),
        Output::Table if args.out.is_none() => println!("{token}"),
        Output::Table => note(format_args!(
            "{format} of {} (request {}) written to {}",
            args.input.display(),
            shown(&signed.info.request_id),
            args.out.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
        )),
    }
    Ok(())
}

/// `synod verify --format jws|jwt`: the candidate whose key verifies the token
/// (only the one the `kid` names, when the header has one).
pub fn verify(
    format: SignFormat,
    args: &VerifyArgs,
    candidates: &Candidates,
) -> anyhow::Result<(Option<u32>, [u8; 32])> {
    refuse_other_verify_options(format, args)?;
    let token = Token::read(format, &args.input)?;
    let kid = token.input.header.get("kid").and_then(Value::as_str);
    let named: Vec<&(Option<u32>, [u8; 32])> =
        candidates.iter().filter(|(_, public)| kid.is_none_or(|kid| keyfmt::jwk_thumbprint(public) == kid)).collect();
    if named.is_empty() {
        let thumbprints: Vec<String> = candidates.iter().map(|(_, k)| keyfmt::jwk_thumbprint(k)).collect();
        bail!(
            "the token's kid {} is the thumbprint of none of the keys given ({}); check that this key signed it \
             (`synod key show NAME --format jwks` lists each version's kid)",
            shown(kid.unwrap_or_default()),
            thumbprints.join(", ")
        );
    }
    for &&(version, public) in &named {
        if keyfmt::verify(&public, token.signing_input.as_bytes(), &token.signature).is_ok() {
            return Ok((version, public));
        }
    }
    bail!(
        "the token's signature does not verify under {}: the token was changed after signing, or another key \
         signed it",
        if named.len() > 1 { format!("any of the {} keys given", named.len()) } else { "the key given".into() }
    )
}

/// The token's header and payload, for `synod verify -o json`: a JWT's payload
/// as its claims, a JWS payload as text when it is UTF-8 and as base64url otherwise.
pub fn contents(format: SignFormat, args: &VerifyArgs) -> anyhow::Result<Value> {
    let token = Token::read(format, &args.input)?;
    let mut shown = json!({ "header": Value::Object(token.input.header) });
    match (token.input.claims, String::from_utf8(token.input.payload)) {
        (Some(claims), _) => shown["payload"] = Value::Object(claims),
        (None, Ok(text)) => shown["payload"] = Value::String(text),
        (None, Err(bytes)) => shown["payload_base64url"] = URL_SAFE_NO_PAD.encode(bytes.into_bytes()).into(),
    }
    Ok(shown)
}

/// A compact token read from a file.
struct Token {
    /// `BASE64URL(header) "." BASE64URL(payload)`, what the signature covers.
    signing_input: String,
    input: jws::SigningInput,
    signature: [u8; 64],
}

impl Token {
    fn read(format: SignFormat, path: &Path) -> anyhow::Result<Token> {
        let size = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?.len();
        if size > TOKEN_BYTES_MAX {
            bail!("{} is {size} bytes; no token the cluster signs is longer than {TOKEN_BYTES_MAX}", path.display());
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {} as text (a compact JWS is ASCII)", path.display()))?;
        let text = text.trim();
        let (signing_input, signature) = text
            .rsplit_once('.')
            .ok_or_else(|| anyhow!("{} is not a compact JWS (HEADER.PAYLOAD.SIGNATURE, base64url)", path.display()))?;
        let input = jws::read(signing_input.as_bytes(), format == SignFormat::Jwt)
            .map_err(|why| anyhow!("{} is not a {format} this verifier accepts: {why}", path.display()))?;
        let signature =
            URL_SAFE_NO_PAD.decode(signature).ok().and_then(|bytes| <[u8; 64]>::try_from(bytes).ok()).ok_or_else(
                || anyhow!("the signature part of {} is not 64 bytes of base64url without padding", path.display()),
            )?;
        Ok(Token { signing_input: signing_input.to_string(), input, signature })
    }
}

/// `EdDSA` unless `--alg` says `Ed25519`.
fn algorithm(alg: Option<&str>) -> anyhow::Result<&'static str> {
    match alg {
        None => Ok(jws::ALGORITHMS[0]),
        Some(alg) => jws::ALGORITHMS.into_iter().find(|a| *a == alg).ok_or_else(|| {
            anyhow!(
                "--alg {} is not an Ed25519 JOSE algorithm; use EdDSA (RFC 8037, what most libraries know) or \
                 Ed25519 (RFC 9864)",
                shown(alg)
            )
        }),
    }
}

/// A JWT's claims (the file's JSON object, whitespace around it dropped) or a JWS's bytes.
fn read_payload(format: SignFormat, path: &Path) -> anyhow::Result<Vec<u8>> {
    let size = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?.len();
    if size > MESSAGE_BYTES_MAX as u64 {
        bail!(
            "{} is {size} bytes; a token's payload is at most about {} bytes (the cluster signs at most \
             {MESSAGE_BYTES_MAX} of base64url): sign a digest of large files instead",
            path.display(),
            MESSAGE_BYTES_MAX / 4 * 3 - 128
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if format != SignFormat::Jwt {
        return Ok(bytes);
    }
    let claims = bytes.trim_ascii();
    match serde_json::from_slice::<Value>(claims) {
        Ok(Value::Object(_)) => Ok(claims.to_vec()),
        Ok(_) => bail!(
            "{} is JSON but not an object; a JWT's claims are one JSON object such as {{\"sub\":\"deploy\"}} \
             (use --format jws to sign other payloads)",
            path.display()
        ),
        Err(e) => bail!(
            "{} is not JSON ({e}); a JWT's claims are one JSON object (use --format jws to sign other payloads)",
            path.display()
        ),
    }
}

/// Options of other formats are refused rather than ignored.
fn refuse_other_options(format: SignFormat, args: &SignArgs) -> anyhow::Result<()> {
    args.format.refuse_others(&["--alg"])?;
    if args.signature_format.is_some() {
        bail!("--format {format} writes a compact token; drop --signature-format");
    }
    Ok(())
}

/// Verification reads the token and the key; the header names its alg.
fn refuse_other_verify_options(format: SignFormat, args: &VerifyArgs) -> anyhow::Result<()> {
    args.format.refuse_others(&[])?;
    if args.signature.is_some() {
        bail!("a compact {format} carries its signature: give the token with --in and drop --signature");
    }
    Ok(())
}

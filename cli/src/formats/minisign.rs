//! `synod sign --format minisign` and `synod verify --format minisign`: a
//! `.minisig` file exactly as `minisign -S` writes a pre-hashed signature, so
//! `minisign -V` checks it.
//!
//! minisign signs twice. The signature proper is Ed25519 over the file's
//! BLAKE2b-512 digest (computed here, streaming, whatever the file's size), sent
//! as one opaque sign request that approvers see once. The global signature is
//! Ed25519 over that signature and the trusted comment; the cluster's state
//! makes it on its own once the first is signed (request
//! `synod_proto::format::minisign::global_request_id`), so nothing said after
//! approval can change what it covers. The key id minisign keeps in both the
//! public key and the signature is derived from the cluster key
//! (`keyfmt::minisign_key_id`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use synod_proto::api::RequestInfo;
use synod_proto::format::minisign::global_request_id;
use synod_proto::format::{validate_trusted_comment, SignFormat};
use synod_proto::keyfmt;

use super::{Candidates, ClusterSigner, POLL_WAIT_MS};
use crate::display::{note, shown};
use crate::{Output, SignArgs, VerifyArgs};

/// minisign's algorithm tag of a pre-hashed signature (BLAKE2b-512 of the file).
const ALG_PREHASHED: [u8; 2] = *b"ED";
/// minisign's algorithm tag of a legacy signature over the whole file.
const ALG_LEGACY: [u8; 2] = *b"Ed";
/// The prefixes of a `.minisig` file's comment lines.
const UNTRUSTED_PREFIX: &str = "untrusted comment: ";
const TRUSTED_PREFIX: &str = "trusted comment: ";
/// The largest `.minisig` file read: four short lines and a comment of at most
/// `TRUSTED_COMMENT_BYTES_MAX` bytes fit many times over.
const MINISIG_BYTES_MAX: u64 = 64 * 1024;

/// `synod sign --format minisign`.
pub async fn sign(args: &SignArgs) -> anyhow::Result<()> {
    refuse_other_options(args)?;
    let comment = match &args.format.trusted_comment {
        Some(comment) => comment.clone(),
        None => default_comment(&args.input)?,
    };
    validate_trusted_comment(&comment).map_err(|e| anyhow!("{e}; give another with --trusted-comment"))?;
    let digest = blake2b_file(&args.input)?;
    let signer = ClusterSigner::of(args).await?;
    let public = signer.public_key();
    let parent = signer.sign(SignFormat::Minisign, &digest, Some(comment.clone())).await?;
    let global_id = global_request_id(&parent.info.request_id);
    let wait = Duration::from_secs(args.wait_secs);
    let global = match global_signature(&signer, &global_id, wait).await {
        Ok(global) => global,
        Err(first) => {
            // A global signature that failed (signers unreachable for a moment) is asked for
            // again by sending the signed request again; the state makes a fresh attempt.
            note(format_args!("the global signature did not come ({first:#}); asking for it again"));
            let parent_id = &parent.info.request_id;
            signer.submit(parent_id, SignFormat::Minisign, &digest, Some(comment.clone())).await?;
            global_signature(&signer, &global_id, wait).await?
        }
    };
    keyfmt::verify(&public, &global_message(&parent.signature, &comment), &global)
        .map_err(|e| anyhow!("the cluster's global signature (request {}) does not verify: {e}", shown(&global_id)))?;
    let key_id = keyfmt::minisign_key_id(&public);
    let name = &signer.key().name;
    let minisig = minisig_text(name, &key_id, &parent.signature, &comment, &global);
    if let Some(path) = &args.out {
        std::fs::write(path, &minisig).with_context(|| format!("cannot write {}", path.display()))?;
    }
    match args.client.output.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "key": name,
                "key_version": signer.version(),
                "minisign_key_id": keyfmt::minisign_key_id_hex(&key_id),
                "request_id": parent.info.request_id,
                "global_request_id": global_id,
                "artifact_hash": keyfmt_hash(&digest),
                "trusted_comment": comment,
                "out": args.out.as_ref().map(|p| p.display().to_string()),
                "minisig": minisig,
            }))?
        ),
        Output::Table if args.out.is_none() => print!("{minisig}"),
        Output::Table => note(format_args!(
            "minisign signature of {} (requests {} and {}) written to {}",
            args.input.display(),
            shown(&parent.info.request_id),
            shown(&global_id),
            args.out.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
        )),
    }
    Ok(())
}

/// `synod verify --format minisign`: checks the signature of the file's hash and
/// the global signature of the trusted comment, as `minisign -V` does, and
/// prints the trusted comment.
pub fn verify(args: &VerifyArgs, candidates: &Candidates) -> anyhow::Result<(Option<u32>, [u8; 32])> {
    if args.format.namespace.is_some()
        || args.format.alg.is_some()
        || args.format.cert.is_some()
        || args.format.trusted_comment.is_some()
        || args.format.method.is_some()
        || args.format.target_uri.is_some()
        || !args.format.headers.is_empty()
    {
        bail!("minisign verification reads only --in, --signature and the key; the trusted comment is in the .minisig");
    }
    let path = args.signature.clone().unwrap_or_else(|| default_minisig_path(&args.input));
    let minisig = read_minisig(&path)?;
    let wanted = candidates.iter().find(|(_, public)| keyfmt::minisign_key_id(public) == minisig.key_id);
    let Some(&(version, public)) = wanted else {
        let ids: Vec<String> =
            candidates.iter().map(|(_, k)| keyfmt::minisign_key_id_hex(&keyfmt::minisign_key_id(k))).collect();
        bail!(
            "{} was made by minisign key id {}, and the key given has id {}; check that this is the key that signed",
            path.display(),
            keyfmt::minisign_key_id_hex(&minisig.key_id),
            ids.join(", ")
        );
    };
    let message = match minisig.algorithm {
        ALG_PREHASHED => blake2b_file(&args.input)?.to_vec(),
        // Legacy signatures cover the file itself; Synod makes none, but minisign reads them.
        _ => std::fs::read(&args.input).with_context(|| format!("cannot read {}", args.input.display()))?,
    };
    keyfmt::verify(&public, &message, &minisig.signature).map_err(|e| {
        anyhow!("the signature in {} does not verify for {}: {e}", path.display(), args.input.display())
    })?;
    keyfmt::verify(&public, &global_message(&minisig.signature, &minisig.trusted_comment), &minisig.global).map_err(
        |e| {
            anyhow!(
                "the file's signature verifies, but the global signature of the trusted comment in {} does not ({e}): \
                 the comment was changed",
                path.display()
            )
        },
    )?;
    match args.client.output.output {
        Output::Json => note(format_args!("trusted comment: {}", shown(&minisig.trusted_comment))),
        Output::Table => println!("trusted comment: {}", shown(&minisig.trusted_comment)),
    }
    Ok((version, public))
}

/// Options of other formats are refused rather than ignored.
fn refuse_other_options(args: &SignArgs) -> anyhow::Result<()> {
    args.format.refuse_others(&["--trusted-comment"])?;
    if args.signature_format.is_some() {
        bail!("--format minisign writes a .minisig file; drop --signature-format");
    }
    Ok(())
}

/// The trusted comment minisign writes when none is given.
fn default_comment(input: &Path) -> anyhow::Result<String> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    let file = input.file_name().ok_or_else(|| anyhow!("{} names no file", input.display()))?.to_string_lossy();
    Ok(format!("timestamp:{now}\tfile:{file}\thashed"))
}

/// Where minisign looks for a file's signature when none is named.
fn default_minisig_path(input: &Path) -> PathBuf {
    let mut path = input.as_os_str().to_owned();
    path.push(".minisig");
    PathBuf::from(path)
}

fn blake2b_file(path: &Path) -> anyhow::Result<[u8; 64]> {
    Ok(super::hash_file::<blake2::Blake2b512>(path)?.into())
}

/// The artifact hash as nodes label it.
fn keyfmt_hash(digest: &[u8; 64]) -> String {
    synod_proto::format::hash_label("blake2b-512", digest)
}

/// What the global signature covers: the signature, then the trusted comment's bytes.
fn global_message(signature: &[u8; 64], comment: &str) -> Vec<u8> {
    let mut message = signature.to_vec();
    message.extend_from_slice(comment.as_bytes());
    message
}

/// Waits for the global signature request the state made after the parent was
/// signed. The node that answered for the parent applied that same entry, so the
/// request is there; a retry covers a client that moved to another node.
async fn global_signature(signer: &ClusterSigner, id: &str, wait: Duration) -> anyhow::Result<[u8; 64]> {
    let started = Instant::now();
    let info: RequestInfo = loop {
        match signer.request(id, POLL_WAIT_MS).await {
            Ok(info) => break info,
            Err(e) if started.elapsed() >= wait => {
                return Err(e.context(format!(
                    "the global signature request {} did not appear; check it with `synod request show {}`",
                    shown(id),
                    shown(id)
                )))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let info = signer.settle(info, started).await?;
    let hex_sig = info.signature.as_deref().ok_or_else(|| anyhow!("request {} has no signature", shown(id)))?;
    hex::decode(hex_sig)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| anyhow!("the node returned a malformed signature for request {}", shown(id)))
}

/// The `.minisig` file of a pre-hashed signature, as `minisign -S` writes it.
fn minisig_text(name: &str, key_id: &[u8; 8], signature: &[u8; 64], comment: &str, global: &[u8; 64]) -> String {
    let mut blob = Vec::with_capacity(74);
    blob.extend_from_slice(&ALG_PREHASHED);
    blob.extend_from_slice(key_id);
    blob.extend_from_slice(signature);
    format!(
        "{UNTRUSTED_PREFIX}signature from synod key {name}\n{}\n{TRUSTED_PREFIX}{comment}\n{}\n",
        STANDARD.encode(blob),
        STANDARD.encode(global)
    )
}

/// A `.minisig` file as read.
#[derive(Debug, PartialEq, Eq)]
struct Minisig {
    algorithm: [u8; 2],
    key_id: [u8; 8],
    signature: [u8; 64],
    trusted_comment: String,
    global: [u8; 64],
}

fn read_minisig(path: &Path) -> anyhow::Result<Minisig> {
    let len = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?.len();
    if len > MINISIG_BYTES_MAX {
        bail!("{} is {len} bytes, too large for a .minisig file; check the --signature path", path.display());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {} as text", path.display()))?;
    parse_minisig(&text).map_err(|why| {
        anyhow!(
            "{} is not a minisign signature: {why}; give the .minisig file `synod sign --format minisign` wrote",
            path.display()
        )
    })
}

/// Reads the four lines of a `.minisig` file (LF or CRLF).
fn parse_minisig(text: &str) -> Result<Minisig, String> {
    let mut lines = text.lines().map(|l| l.trim_end_matches('\r'));
    let mut next = |what: &str| lines.next().ok_or_else(|| format!("the {what} line is missing"));
    if !next("untrusted comment")?.starts_with(UNTRUSTED_PREFIX) {
        return Err(format!("the first line does not start with {UNTRUSTED_PREFIX:?}"));
    }
    let blob =
        STANDARD.decode(next("signature")?.trim()).map_err(|_| "the signature line is not base64".to_string())?;
    if blob.len() != 74 {
        return Err(format!("the signature line holds {} bytes, not 74", blob.len()));
    }
    let algorithm: [u8; 2] = [blob[0], blob[1]];
    if algorithm != ALG_PREHASHED && algorithm != ALG_LEGACY {
        return Err("the signature's algorithm is neither \"ED\" (pre-hashed) nor \"Ed\"".into());
    }
    let trusted_comment = next("trusted comment")?
        .strip_prefix(TRUSTED_PREFIX)
        .ok_or_else(|| format!("the third line does not start with {TRUSTED_PREFIX:?}"))?
        .to_string();
    let global = STANDARD
        .decode(next("global signature")?.trim())
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .ok_or_else(|| "the global signature line is not base64 of 64 bytes".to_string())?;
    let mut key_id = [0u8; 8];
    key_id.copy_from_slice(&blob[2..10]);
    let mut signature = [0u8; 64];
    signature.copy_from_slice(&blob[10..]);
    Ok(Minisig { algorithm, key_id, signature, trusted_comment, global })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minisign_minisig_text_round_trips() {
        let text = minisig_text("release", &[1; 8], &[2; 64], "timestamp:1\tfile:a\thashed", &[3; 64]);
        assert!(text.starts_with("untrusted comment: signature from synod key release\nRUQBAQEB"), "{text}");
        let read = parse_minisig(&text).unwrap();
        assert_eq!(
            read,
            Minisig {
                algorithm: ALG_PREHASHED,
                key_id: [1; 8],
                signature: [2; 64],
                trusted_comment: "timestamp:1\tfile:a\thashed".into(),
                global: [3; 64],
            }
        );
        assert_eq!(parse_minisig(&text.replace('\n', "\r\n")).unwrap(), read);
    }

    #[test]
    fn minisign_malformed_minisig_files_say_what_is_wrong() {
        let good = minisig_text("k", &[1; 8], &[2; 64], "c", &[3; 64]);
        let lines: Vec<&str> = good.lines().collect();
        let cases = [
            (String::new(), "untrusted comment line is missing"),
            (lines[..2].join("\n"), "trusted comment line is missing"),
            (lines[..3].join("\n"), "global signature line is missing"),
            (good.replacen("untrusted comment: ", "comment: ", 1), "first line"),
            (good.replacen("trusted comment: c", "comment: c", 1), "third line"),
            (good.replace(lines[1], "@@@"), "not base64"),
            (good.replace(lines[1], &STANDARD.encode([b'E'; 10])), "10 bytes"),
            (good.replace(lines[3], &STANDARD.encode([0; 63])), "64 bytes"),
        ];
        for (text, expected) in cases {
            let error = parse_minisig(&text).unwrap_err();
            assert!(error.contains(expected), "{error} (expected {expected:?})");
        }
        let mut blob = STANDARD.decode(lines[1]).unwrap();
        blob[..2].copy_from_slice(b"EX");
        let error = parse_minisig(&good.replace(lines[1], &STANDARD.encode(blob))).unwrap_err();
        assert!(error.contains("algorithm"), "{error}");
    }

    #[test]
    fn minisign_hashes_files_as_b2sum_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty");
        std::fs::write(&path, b"").unwrap();
        // BLAKE2b-512 of the empty string (RFC 7693 reference implementation).
        assert_eq!(
            hex::encode(blake2b_file(&path).unwrap()),
            "786a02f742015903c6c6fd852552d272912f4740e15847618a86e217f71f5419\
             d25e1031afee585313896444934eb04b903a685b1448b755d56f701afe9be2ce"
        );
        assert_eq!(default_minisig_path(Path::new("/a/b.tar")), PathBuf::from("/a/b.tar.minisig"));
    }
}

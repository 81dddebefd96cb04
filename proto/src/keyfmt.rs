//! Encodings of Ed25519 public keys and signatures that Synod's CLI and API print and read.
//!
//! A Synod cluster signs with one Ed25519 group key, and the people who check those signatures use
//! whatever tool they already have. This module is the single place that turns the 32-byte key and
//! the 64-byte signature into text those tools accept, and back. The encodings follow the standards:
//!
//! - RFC 8032: the raw 32-byte public key and 64-byte signature (printed as hex or base64), and
//!   the verification rule (checked here with ed25519-dalek's `verify_strict`).
//! - RFC 8410: the SubjectPublicKeyInfo that OpenSSL and most libraries read, as a PEM block
//!   labelled `PUBLIC KEY` around the 44-byte DER `302a300506032b6570032100 || key`. The DER goes
//!   through `ed25519::pkcs8::PublicKeyBytes` (re-exported by ed25519-dalek) and the PEM through
//!   RFC 7468's strict layout (64-character lines), as `openssl pkey -pubout` writes it.
//! - RFC 8037: a JSON Web Key `{"kty":"OKP","crv":"Ed25519","x":...}` where `x` is the key in
//!   base64url without padding.
//! - OpenSSH: an `authorized_keys` line `ssh-ed25519 <base64 of blob> <comment>`, where the blob
//!   is `string("ssh-ed25519") || string(key)` and each string is a 4-byte big-endian length
//!   followed by the bytes. Written and read with the `ssh-key` crate.
//! - minisign: a public key file `untrusted comment: minisign public key <KEY ID>` followed by the
//!   line `base64("Ed" || key id || key)`. minisign keys carry a random 8-byte key id that every
//!   signature repeats; a Synod key has none, so Synod derives it from the public key
//!   ([`minisign_key_id`]: the first 8 bytes of BLAKE2b-512(`synod-minisign-key-id` || key)).
//!   Anyone can recompute it, and a key's id never changes across nodes or releases.
//!
//! None of these readers checks the point: any 32 bytes round-trip through every encoding, and
//! [`parse_public_key`] judges the point once, whatever the encoding.
//!
//! Readers auto-detect the encoding, ignore surrounding whitespace and return a [`FormatError`]
//! that says what was wrong instead of panicking on malformed input.

use std::fmt;
use std::str::FromStr;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use ed25519_dalek::pkcs8::spki::der::pem::{self, LineEnding};
use ed25519_dalek::pkcs8::{DecodePublicKey, EncodePublicKey, PublicKeyBytes};
use ed25519_dalek::{Signature, VerifyingKey};
use ssh_key::public::{Ed25519PublicKey, KeyData};

use crate::sshsig::SSH_ED25519;

/// The PEM label of a SubjectPublicKeyInfo.
const PEM_LABEL: &str = "PUBLIC KEY";

/// Standard-alphabet base64 that accepts input with or without `=` padding (shared with [`crate::sshsig`]).
pub(crate) const STANDARD_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// URL-safe base64 that accepts input with or without `=` padding, as JWK `x` values are sometimes padded.
const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// How a public key is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublicKeyFormat {
    /// The 32 raw RFC 8032 key bytes as 64 lowercase hex characters.
    Hex,
    /// An RFC 8410 SubjectPublicKeyInfo in a `PUBLIC KEY` PEM block, as OpenSSL reads it.
    Pem,
    /// An RFC 8037 JSON Web Key (`kty` OKP, `crv` Ed25519).
    Jwk,
    /// An OpenSSH `authorized_keys` line starting `ssh-ed25519`.
    Openssh,
    /// An RFC 7517 JWK Set of the key's public keys, each with its RFC 7638
    /// thumbprint as `kid` (what a verifier of EdDSA JWTs or webhooks fetches).
    Jwks,
    /// A minisign public key file, with the key id derived by [`minisign_key_id`].
    Minisign,
}

impl PublicKeyFormat {
    /// Every public key format, in the order the CLI lists them.
    pub const ALL: [PublicKeyFormat; 6] = [
        PublicKeyFormat::Hex,
        PublicKeyFormat::Pem,
        PublicKeyFormat::Jwk,
        PublicKeyFormat::Openssh,
        PublicKeyFormat::Jwks,
        PublicKeyFormat::Minisign,
    ];

    /// Returns the lowercase name that [`FromStr`] and serde accept for this format.
    pub fn as_str(self) -> &'static str {
        match self {
            PublicKeyFormat::Hex => "hex",
            PublicKeyFormat::Pem => "pem",
            PublicKeyFormat::Jwk => "jwk",
            PublicKeyFormat::Openssh => "openssh",
            PublicKeyFormat::Jwks => "jwks",
            PublicKeyFormat::Minisign => "minisign",
        }
    }
}

impl fmt::Display for PublicKeyFormat {
    /// Writes the lowercase name of the format.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PublicKeyFormat {
    type Err = FormatError;

    /// Parses `hex`, `pem`, `jwk`, `openssh`, `jwks` or `minisign`, ignoring ASCII case and surrounding whitespace.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim();
        PublicKeyFormat::ALL
            .into_iter()
            .find(|format| format.as_str().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| FormatError::UnknownPublicKeyFormat(wanted.to_owned()))
    }
}

/// How a signature is printed or read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureFormat {
    /// The 64 raw RFC 8032 signature bytes, with nothing around them.
    Raw,
    /// The 64 signature bytes as 128 lowercase hex characters and a newline.
    Hex,
    /// The 64 signature bytes as standard padded base64 (88 characters) and a newline.
    Base64,
}

impl SignatureFormat {
    /// Every signature format, in the order the CLI lists them.
    pub const ALL: [SignatureFormat; 3] = [SignatureFormat::Raw, SignatureFormat::Hex, SignatureFormat::Base64];

    /// Returns the lowercase name that [`FromStr`] and serde accept for this format.
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureFormat::Raw => "raw",
            SignatureFormat::Hex => "hex",
            SignatureFormat::Base64 => "base64",
        }
    }
}

impl fmt::Display for SignatureFormat {
    /// Writes the lowercase name of the format.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SignatureFormat {
    type Err = FormatError;

    /// Parses `raw`, `hex` or `base64`, ignoring ASCII case and surrounding whitespace.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim();
        SignatureFormat::ALL
            .into_iter()
            .find(|format| format.as_str().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| FormatError::UnknownSignatureFormat(wanted.to_owned()))
    }
}

/// Why a key, a signature or a format name could not be read, or why a signature did not verify.
///
/// Every message says what was wrong and what the reader expected, so the CLI can print it as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The public key format name is not one of the supported names.
    #[error("unknown public key format \"{0}\"; choose one of: hex, pem, jwk, openssh, jwks, minisign")]
    UnknownPublicKeyFormat(String),
    /// The signature format name is not one of the supported names.
    #[error("unknown signature format \"{0}\"; choose one of: raw, hex, base64")]
    UnknownSignatureFormat(String),
    /// The text does not look like any supported public key encoding.
    #[error(
        "public key is not 64 hex characters, an SPKI PEM, a JWK, an OpenSSH ssh-ed25519 line or a minisign public key"
    )]
    UnrecognizedPublicKey,
    /// The text is hex but not exactly 64 characters long.
    #[error("public key hex has {0} characters; an Ed25519 public key is 64 hex characters (32 bytes)")]
    PublicKeyHexLength(usize),
    /// The PEM block is labelled something other than `PUBLIC KEY`.
    #[error(
        "PEM block is labelled \"{0}\"; expected \"PUBLIC KEY\" (export the public key, e.g. `openssl pkey -pubout`)"
    )]
    PemLabel(String),
    /// The PEM block is not well formed.
    #[error("PEM public key is malformed: {0}")]
    PemMalformed(String),
    /// The PEM block holds something other than an RFC 8410 Ed25519 SubjectPublicKeyInfo.
    #[error(
        "PEM public key is not an RFC 8410 Ed25519 key (expected 44 DER bytes starting 302a300506032b6570032100); \
         only Ed25519 keys are accepted"
    )]
    PemNotEd25519,
    /// The JSON is not an RFC 8037 Ed25519 public JWK.
    #[error(
        "JWK is not an Ed25519 public key: {0}; expected {{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"<base64url>\"}}"
    )]
    Jwk(String),
    /// The OpenSSH line names a key type other than `ssh-ed25519`.
    #[error("OpenSSH key type is \"{0}\"; only ssh-ed25519 keys are accepted")]
    OpensshKeyType(String),
    /// The OpenSSH line or its base64 blob is not well formed.
    #[error("OpenSSH public key is malformed: {0}; expected \"ssh-ed25519 AAAA... [comment]\"")]
    OpensshMalformed(String),
    /// The minisign public key is not `base64("Ed" || 8-byte key id || 32-byte key)`.
    #[error(
        "minisign public key is malformed: {0}; expected \"untrusted comment: minisign public key <KEY ID>\" \
         and a line with base64 of \"Ed\", the 8-byte key id and the 32-byte key (as `minisign -G` writes it)"
    )]
    MinisignMalformed(String),
    /// The 32 bytes do not decode to a point on the Ed25519 curve.
    #[error("public key bytes are not a valid Ed25519 point; check that the whole key was copied")]
    InvalidPoint,
    /// The public key has small order, so no signature under it proves anything.
    #[error("public key is a small-order (weak) Ed25519 point; signatures under it prove nothing and are refused")]
    WeakPublicKey,
    /// The signature file is not 64 raw bytes, 128 hex characters or base64 of 64 bytes.
    #[error(
        "signature is not 64 raw bytes, 128 hex characters or standard base64 of 64 bytes (read {0} bytes); \
         check that the file is the whole signature"
    )]
    UnrecognizedSignature(usize),
    /// The signature does not verify.
    #[error("signature does not verify under this public key for this message")]
    BadSignature,
}

/// Returns the public key as 64 lowercase hex characters.
pub fn public_key_hex(key: &[u8; 32]) -> String {
    hex::encode(key)
}

/// Returns the public key as an RFC 8410 SubjectPublicKeyInfo PEM block ending in a newline.
///
/// The DER inside is `302a300506032b6570032100 || key`; OpenSSL, Go, Java and Python read it directly.
pub fn public_key_pem(key: &[u8; 32]) -> String {
    // Encoding 32 bytes into a fixed 44-byte SPKI and its PEM cannot fail.
    PublicKeyBytes(*key).to_public_key_pem(LineEnding::LF).expect("an Ed25519 SPKI always encodes")
}

/// Returns the public key as an RFC 8037 JSON Web Key for signature verification.
///
/// The object has `kty` OKP, `crv` Ed25519, `x` (the key in base64url without padding), `use` sig,
/// `alg` EdDSA and, when `kid` is given, `kid`.
pub fn public_key_jwk(key: &[u8; 32], kid: Option<&str>) -> serde_json::Value {
    let mut jwk = serde_json::Map::new();
    jwk.insert("kty".into(), "OKP".into());
    jwk.insert("crv".into(), "Ed25519".into());
    jwk.insert("x".into(), URL_SAFE_NO_PAD.encode(key).into());
    if let Some(kid) = kid {
        jwk.insert("kid".into(), kid.into());
    }
    jwk.insert("use".into(), "sig".into());
    jwk.insert("alg".into(), "EdDSA".into());
    serde_json::Value::Object(jwk)
}

/// The RFC 7638 thumbprint of the key's JWK: SHA-256 over the required members
/// in lexicographic order without whitespace, base64url without padding.
pub fn jwk_thumbprint(key: &[u8; 32]) -> String {
    use sha2::Digest;
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, URL_SAFE_NO_PAD.encode(key));
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(canonical.as_bytes()))
}

/// An RFC 7517 JWK Set of `keys`, each with its [`jwk_thumbprint`] as `kid`.
pub fn public_keys_jwks(keys: &[[u8; 32]]) -> serde_json::Value {
    let keys: Vec<serde_json::Value> = keys.iter().map(|k| public_key_jwk(k, Some(&jwk_thumbprint(k)))).collect();
    serde_json::json!({ "keys": keys })
}

/// Returns the public key as one OpenSSH `authorized_keys` line without a trailing newline.
///
/// The line is `ssh-ed25519 <base64 blob> <comment>`; the comment is left out when it is empty.
pub fn public_key_openssh(key: &[u8; 32], comment: &str) -> String {
    let key = ssh_key::PublicKey::new(KeyData::Ed25519(Ed25519PublicKey(*key)), comment.trim());
    // ssh-key sizes its buffer exactly for the 51-byte blob and the comment, so this cannot fail.
    key.to_openssh().expect("an ssh-ed25519 line always encodes")
}

/// Returns the public key in `format`, using `name` as the JWK `kid` and as the OpenSSH comment.
///
/// The text is what the per-format function returns: the PEM ends with a newline, while hex, the
/// pretty-printed JWK and the OpenSSH line do not.
pub fn format_public_key(key: &[u8; 32], format: PublicKeyFormat, name: &str) -> String {
    match format {
        PublicKeyFormat::Hex => public_key_hex(key),
        PublicKeyFormat::Pem => public_key_pem(key),
        // The alternate Display of a JSON value is its pretty-printed form and cannot fail.
        PublicKeyFormat::Jwk => format!("{:#}", public_key_jwk(key, Some(name))),
        PublicKeyFormat::Openssh => public_key_openssh(key, name),
        PublicKeyFormat::Jwks => format!("{:#}", public_keys_jwks(&[*key])),
        PublicKeyFormat::Minisign => public_key_minisign(key),
    }
}

/// The domain of [`minisign_key_id`]'s hash, so the id is never some other hash of the key.
const MINISIGN_KEY_ID_DOMAIN: &[u8] = b"synod-minisign-key-id";
/// The untrusted comment line minisign writes above a public key, before the key id.
const MINISIGN_PUBLIC_COMMENT: &str = "untrusted comment: minisign public key ";
/// minisign's algorithm tag for Ed25519 in public keys (and legacy, not pre-hashed signatures).
pub const MINISIGN_ALG_ED25519: [u8; 2] = *b"Ed";

/// The 8-byte minisign key id of a Synod key, in the byte order minisign stores it: the first
/// 8 bytes of BLAKE2b-512(`synod-minisign-key-id` || key). minisign picks key ids at random
/// when it makes a key; a cluster key has no such id, so it is derived, which lets every
/// node, client and verifier agree on it without storing it.
pub fn minisign_key_id(key: &[u8; 32]) -> [u8; 8] {
    use blake2::Digest;
    let digest = blake2::Blake2b512::new().chain_update(MINISIGN_KEY_ID_DOMAIN).chain_update(key).finalize();
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    id
}

/// A minisign key id as minisign prints it: the 8 stored bytes read as a little-endian
/// integer, in uppercase hex without leading zeros (`%" PRIX64`), so an id whose top nibble is
/// zero has 15 digits or fewer, and a user comparing ids reads the same text in both tools.
pub fn minisign_key_id_hex(id: &[u8; 8]) -> String {
    format!("{:X}", u64::from_le_bytes(*id))
}

/// Returns the public key as a minisign public key file (two lines, ending in a newline), as
/// `minisign -p FILE` reads it; its second line alone is what `minisign -P` takes.
pub fn public_key_minisign(key: &[u8; 32]) -> String {
    let id = minisign_key_id(key);
    let mut blob = Vec::with_capacity(42);
    blob.extend_from_slice(&MINISIGN_ALG_ED25519);
    blob.extend_from_slice(&id);
    blob.extend_from_slice(key);
    format!("{MINISIGN_PUBLIC_COMMENT}{}\n{}\n", minisign_key_id_hex(&id), STANDARD.encode(blob))
}

/// Tells whether the text is a minisign public key: the file (its untrusted comment first) or
/// its base64 line alone (56 characters of base64 starting `RW`, which is how "Ed" encodes).
fn looks_like_minisign(text: &str) -> bool {
    text.starts_with("untrusted comment:") || (text.len() == 56 && text.starts_with("RW"))
}

/// Reads a minisign public key file or its base64 line, returning the key and its key id.
///
/// The key id is returned as the file states it; a key made by `minisign -G` has a random
/// one, a Synod key the one [`minisign_key_id`] derives.
pub fn parse_minisign_public_key(text: &str) -> Result<([u8; 32], [u8; 8]), FormatError> {
    let malformed = |why: &str| FormatError::MinisignMalformed(why.to_owned());
    let text = text.trim();
    let line = if text.starts_with("untrusted comment:") {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        lines.next();
        let line = lines.next().ok_or_else(|| malformed("the key line after the untrusted comment is missing"))?;
        if lines.next().is_some() {
            return Err(malformed("text follows the key line; give one key only"));
        }
        line
    } else {
        text
    };
    let blob = STANDARD_LENIENT.decode(line).map_err(|_| malformed("the key line is not base64"))?;
    if blob.len() != 42 {
        return Err(malformed(&format!("the key line holds {} bytes, not 42", blob.len())));
    }
    if blob[..2] != MINISIGN_ALG_ED25519 {
        return Err(malformed("the key's algorithm is not \"Ed\""));
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&blob[2..10]);
    let mut key = [0u8; 32];
    key.copy_from_slice(&blob[10..]);
    Ok((key, id))
}

/// Reads a public key given as 64 hex chars, an SPKI PEM (RFC 8410), a JWK JSON object, an OpenSSH
/// `ssh-ed25519 AAAA... [comment]` line, or a minisign public key (the file or its base64 line);
/// whitespace around is ignored.
///
/// The encoding is detected from the text. The bytes must be a valid Ed25519 point
/// ([`VerifyingKey::from_bytes`]); small-order keys are accepted here and refused by [`verify`].
pub fn parse_public_key(text: &str) -> Result<[u8; 32], FormatError> {
    let text = text.trim();
    let key = if text.starts_with("-----BEGIN ") {
        parse_pem(text)?
    } else if text.starts_with('{') {
        parse_jwk(text)?
    } else if looks_like_openssh(text) {
        parse_openssh(text)?
    } else if looks_like_minisign(text) {
        parse_minisign_public_key(text)?.0
    } else if !text.is_empty() && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        parse_hex(text)?
    } else {
        return Err(FormatError::UnrecognizedPublicKey);
    };
    VerifyingKey::from_bytes(&key).map_err(|_| FormatError::InvalidPoint)?;
    Ok(key)
}

/// Returns the signature in `format`: the 64 raw bytes, or hex or base64 text followed by a newline.
pub fn encode_signature(sig: &[u8; 64], format: SignatureFormat) -> Vec<u8> {
    match format {
        SignatureFormat::Raw => sig.to_vec(),
        SignatureFormat::Hex => format!("{}\n", hex::encode(sig)).into_bytes(),
        SignatureFormat::Base64 => format!("{}\n", STANDARD.encode(sig)).into_bytes(),
    }
}

/// Reads a signature file: exactly 64 raw bytes, or 128 hex chars, or standard base64 of 64 bytes
/// (surrounding whitespace ignored). Auto-detects.
///
/// A file of exactly 64 bytes is always taken as raw, since neither text encoding of a signature
/// is 64 characters long. Base64 is accepted with or without `=` padding.
pub fn decode_signature(bytes: &[u8]) -> Result<[u8; 64], FormatError> {
    if let Ok(raw) = <[u8; 64]>::try_from(bytes) {
        return Ok(raw);
    }
    let unrecognized = FormatError::UnrecognizedSignature(bytes.len());
    let text = std::str::from_utf8(bytes).map_err(|_| unrecognized.clone())?.trim();
    let decoded = if text.len() == 128 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(text).map_err(|_| unrecognized.clone())?
    } else {
        STANDARD_LENIENT.decode(text).map_err(|_| unrecognized.clone())?
    };
    <[u8; 64]>::try_from(decoded.as_slice()).map_err(|_| unrecognized)
}

/// Verifies an RFC 8032 Ed25519 signature with ed25519-dalek's `verify_strict` (refuses small-order keys
/// and non-canonical S).
///
/// Returns [`FormatError::InvalidPoint`] for bytes that are not a curve point,
/// [`FormatError::WeakPublicKey`] for a small-order key and [`FormatError::BadSignature`] when the
/// signature does not verify.
pub fn verify(public_key: &[u8; 32], message: &[u8], signature: &[u8; 64]) -> Result<(), FormatError> {
    let key = VerifyingKey::from_bytes(public_key).map_err(|_| FormatError::InvalidPoint)?;
    if key.is_weak() {
        return Err(FormatError::WeakPublicKey);
    }
    let signature = Signature::from_bytes(signature);
    key.verify_strict(message, &signature).map_err(|_| FormatError::BadSignature)
}

/// Tells whether the text starts with an OpenSSH public key type name such as `ssh-…` or `ecdsa-…`.
fn looks_like_openssh(text: &str) -> bool {
    let first = text.split_whitespace().next().unwrap_or("");
    ["ssh-", "ecdsa-", "sk-"].iter().any(|prefix| first.starts_with(prefix))
}

/// Reads a public key given as exactly 64 hex characters.
fn parse_hex(text: &str) -> Result<[u8; 32], FormatError> {
    if text.len() != 64 {
        return Err(FormatError::PublicKeyHexLength(text.len()));
    }
    let mut key = [0u8; 32];
    hex::decode_to_slice(text, &mut key).map_err(|_| FormatError::PublicKeyHexLength(text.len()))?;
    Ok(key)
}

/// Reads one RFC 8410 SubjectPublicKeyInfo PEM block labelled `PUBLIC KEY`.
///
/// The PEM layer is RFC 7468 as OpenSSL writes it (LF or CRLF, 64-character lines); the DER must name the
/// Ed25519 algorithm without parameters. The point itself is not checked here.
fn parse_pem(text: &str) -> Result<[u8; 32], FormatError> {
    let malformed = |err: pem::Error| {
        FormatError::PemMalformed(match err {
            pem::Error::PreEncapsulationBoundary => "the first line is not \"-----BEGIN <label>-----\"".into(),
            pem::Error::PostEncapsulationBoundary => {
                format!("there is no \"-----END {PEM_LABEL}-----\" line, or text follows it; give one key only")
            }
            other => format!("{other}; export it again with `openssl pkey -pubin -in KEY -pubout`"),
        })
    };
    let label = pem::decode_label(text.as_bytes()).map_err(malformed)?;
    if label != PEM_LABEL {
        return Err(FormatError::PemLabel(label.to_owned()));
    }
    let (_, der) = pem::decode_vec(text.as_bytes()).map_err(malformed)?;
    let key = PublicKeyBytes::from_public_key_der(&der).map_err(|_| FormatError::PemNotEd25519)?;
    Ok(key.to_bytes())
}

/// Reads an RFC 8037 public JWK with `kty` OKP and `crv` Ed25519.
fn parse_jwk(text: &str) -> Result<[u8; 32], FormatError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|err| FormatError::Jwk(format!("it is not valid JSON ({err})")))?;
    let mut object = value.as_object().ok_or_else(|| FormatError::Jwk("it is not a JSON object".into()))?;
    // A JWK Set with exactly one key reads as that key.
    if let Some(set) = object.get("keys") {
        let keys = set.as_array().ok_or_else(|| FormatError::Jwk("\"keys\" is not an array".into()))?;
        let [only] = keys.as_slice() else {
            return Err(FormatError::Jwk(format!("the JWK Set holds {} keys; give one JWK", keys.len())));
        };
        object = only.as_object().ok_or_else(|| FormatError::Jwk("the JWK Set's key is not an object".into()))?;
    }
    let member = |name: &str| -> Result<&str, FormatError> {
        match object.get(name) {
            Some(serde_json::Value::String(value)) => Ok(value),
            Some(_) => Err(FormatError::Jwk(format!("\"{name}\" is not a string"))),
            None => Err(FormatError::Jwk(format!("\"{name}\" is missing"))),
        }
    };
    let kty = member("kty")?;
    if kty != "OKP" {
        return Err(FormatError::Jwk(format!("\"kty\" is \"{kty}\", not \"OKP\"")));
    }
    let crv = member("crv")?;
    if crv != "Ed25519" {
        return Err(FormatError::Jwk(format!("\"crv\" is \"{crv}\", not \"Ed25519\"")));
    }
    if object.contains_key("d") {
        return Err(FormatError::Jwk("it contains the private key \"d\"; give the public JWK only".into()));
    }
    let x = URL_SAFE_LENIENT
        .decode(member("x")?)
        .map_err(|err| FormatError::Jwk(format!("\"x\" is not base64url ({err})")))?;
    <[u8; 32]>::try_from(x.as_slice()).map_err(|_| FormatError::Jwk(format!("\"x\" holds {} bytes, not 32", x.len())))
}

/// Reads an OpenSSH `ssh-ed25519 <base64 blob> [comment]` line.
///
/// The type word is checked here, so other key types get [`FormatError::OpensshKeyType`]; the blob is
/// decoded by ssh-key, which also requires the blob's type to match the word and no bytes after the key.
fn parse_openssh(text: &str) -> Result<[u8; 32], FormatError> {
    if text.lines().count() > 1 {
        return Err(FormatError::OpensshMalformed("the text has more than one line".into()));
    }
    let mut words = text.split_whitespace();
    let key_type = words.next().unwrap_or("");
    if key_type != SSH_ED25519 {
        return Err(FormatError::OpensshKeyType(key_type.to_owned()));
    }
    let encoded = words.next().ok_or_else(|| FormatError::OpensshMalformed("the key blob is missing".into()))?;
    // Rebuilt from the words, so any whitespace between them is accepted and the comment is ignored.
    let key = ssh_key::PublicKey::from_openssh(&format!("{key_type} {encoded}"))
        .map_err(|err| FormatError::OpensshMalformed(format!("the key blob is not an ssh-ed25519 key ({err})")))?;
    match key.key_data() {
        KeyData::Ed25519(key) => Ok(key.0),
        other => Err(FormatError::OpensshKeyType(other.algorithm().as_str().to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};
    use std::path::PathBuf;
    use std::process::Command;
    use std::time::{SystemTime, UNIX_EPOCH};

    /// The public key of RFC 8032 section 7.1 test 1.
    const RFC8032_TEST1_PUBLIC: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

    /// The secret key of RFC 8032 section 7.1 test 1.
    const RFC8032_TEST1_SECRET: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";

    /// The signature of the empty message in RFC 8032 section 7.1 test 1.
    const RFC8032_TEST1_SIGNATURE: &str = "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155\
                                           5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b";

    /// Returns the fixed signing key the round-trip tests use.
    fn signing_key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    /// Returns the fixed public key the round-trip tests use.
    fn fixed_key() -> [u8; 32] {
        signing_key().verifying_key().to_bytes()
    }

    /// Decodes a hex constant of a known length.
    fn unhex<const N: usize>(text: &str) -> [u8; N] {
        let mut out = [0u8; N];
        hex::decode_to_slice(text, &mut out).expect("test constant is hex");
        out
    }

    /// A scratch directory under the system temp dir that is removed when dropped.
    struct ScratchDir(PathBuf);

    impl ScratchDir {
        /// Creates a fresh directory whose name includes the process id and the time.
        fn new(tag: &str) -> Self {
            let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
            let dir = std::env::temp_dir().join(format!("synod-keyfmt-{tag}-{}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("create scratch dir");
            ScratchDir(dir)
        }

        /// Returns the path of `name` inside the directory.
        fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }

        /// Runs `openssl` with `args` inside the directory and panics with its stderr if it fails.
        fn openssl(&self, args: &[&str]) {
            let out = Command::new("openssl").args(args).current_dir(&self.0).output().expect("run openssl");
            assert!(out.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }

    impl Drop for ScratchDir {
        /// Removes the directory and everything in it.
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Tells whether an `openssl` binary can be run.
    fn have_openssl() -> bool {
        Command::new("openssl").arg("version").output().map(|out| out.status.success()).unwrap_or(false)
    }

    #[test]
    fn keyfmt_public_key_formats_round_trip() {
        // Proves every public key format, printed directly or via format_public_key, parses back to the same key.
        let key = fixed_key();
        for format in PublicKeyFormat::ALL {
            let text = format_public_key(&key, format, "synod-test");
            assert_eq!(parse_public_key(&text), Ok(key), "{format}: {text}");
            let padded = format!("\n  {text}\n\n");
            assert_eq!(parse_public_key(&padded), Ok(key), "{format} with whitespace around");
        }
        assert_eq!(parse_public_key(&public_key_hex(&key).to_uppercase()), Ok(key));
        assert_eq!(parse_public_key(&public_key_jwk(&key, None).to_string()), Ok(key));
        assert_eq!(parse_public_key(&public_key_openssh(&key, "")), Ok(key));
        assert_eq!(parse_public_key(&public_key_openssh(&key, "ops laptop 2024")), Ok(key));
        let crlf_pem = public_key_pem(&key).replace('\n', "\r\n");
        assert_eq!(parse_public_key(&crlf_pem), Ok(key));
        let padded_x = format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{}="}}"#, URL_SAFE_NO_PAD.encode(key));
        assert_eq!(parse_public_key(&padded_x), Ok(key));
    }

    #[test]
    fn keyfmt_rfc8032_vector1_outputs_are_pinned() {
        // Proves the PEM, JWK and OpenSSH encodings of the RFC 8032 test 1 key match independently computed values.
        let key = unhex::<32>(RFC8032_TEST1_PUBLIC);
        assert_eq!(
            public_key_pem(&key),
            concat!(
                "-----BEGIN PUBLIC KEY-----\n",
                "MCowBQYDK2VwAyEA11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\n",
                "-----END PUBLIC KEY-----\n",
            )
        );
        let jwk = public_key_jwk(&key, Some("test1"));
        assert_eq!(jwk["x"], "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo");
        assert_eq!(jwk["kty"], "OKP");
        assert_eq!(jwk["crv"], "Ed25519");
        assert_eq!(jwk["kid"], "test1");
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["alg"], "EdDSA");
        assert!(public_key_jwk(&key, None).get("kid").is_none());
        // Computed with Python's struct and base64 modules and accepted by `ssh-keygen -l`.
        assert_eq!(
            public_key_openssh(&key, "vector1"),
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINdamAGCsQq31Uv+08lkBzoO4XLz2qYjJa8CGmj3B1Ea vector1"
        );
        assert_eq!(public_key_hex(&key), RFC8032_TEST1_PUBLIC);
        let signature = unhex::<64>(RFC8032_TEST1_SIGNATURE);
        assert_eq!(verify(&key, b"", &signature), Ok(()));
        let secret = SigningKey::from_bytes(&unhex::<32>(RFC8032_TEST1_SECRET));
        assert_eq!(secret.verifying_key().to_bytes(), key);
    }

    #[test]
    fn keyfmt_openssl_agrees_with_pem_and_signatures() {
        // Proves OpenSSL verifies our signature under our PEM, and we read OpenSSL's PEM and verify its signature.
        if !have_openssl() {
            return;
        }
        let dir = ScratchDir::new("openssl");
        let signer = signing_key();
        let message = b"synod keyfmt interop message";
        std::fs::write(dir.path("pub.pem"), public_key_pem(&signer.verifying_key().to_bytes())).expect("write pem");
        std::fs::write(dir.path("msg"), message).expect("write message");
        let signature = signer.sign(message).to_bytes();
        std::fs::write(dir.path("sig"), encode_signature(&signature, SignatureFormat::Raw)).expect("write sig");
        dir.openssl(&["pkeyutl", "-verify", "-pubin", "-inkey", "pub.pem", "-rawin", "-in", "msg", "-sigfile", "sig"]);

        // The other direction: OpenSSL makes a key and a signature, and this module reads and checks them.
        dir.openssl(&["genpkey", "-algorithm", "ed25519", "-out", "priv.pem"]);
        dir.openssl(&["pkey", "-in", "priv.pem", "-pubout", "-out", "their_pub.pem"]);
        dir.openssl(&["pkeyutl", "-sign", "-inkey", "priv.pem", "-rawin", "-in", "msg", "-out", "their_sig"]);
        let their_pem = std::fs::read_to_string(dir.path("their_pub.pem")).expect("read openssl's PEM");
        let their_key = parse_public_key(&their_pem).expect("openssl's PEM parses");
        let their_sig = decode_signature(&std::fs::read(dir.path("their_sig")).expect("read openssl's signature"));
        assert_eq!(verify(&their_key, message, &their_sig.expect("openssl's signature decodes")), Ok(()));
    }

    #[test]
    fn keyfmt_signature_formats_round_trip() {
        // Proves every signature encoding decodes back to the same 64 bytes, with whitespace and padding tolerated.
        let signature = signing_key().sign(b"round trip").to_bytes();
        for format in SignatureFormat::ALL {
            let encoded = encode_signature(&signature, format);
            assert_eq!(decode_signature(&encoded), Ok(signature), "{format}");
        }
        assert_eq!(encode_signature(&signature, SignatureFormat::Raw).len(), 64);
        assert_eq!(encode_signature(&signature, SignatureFormat::Hex).len(), 129);
        assert_eq!(encode_signature(&signature, SignatureFormat::Base64).len(), 89);
        let unpadded = format!("  {}\r\n", STANDARD.encode(signature).trim_end_matches('='));
        assert_eq!(decode_signature(unpadded.as_bytes()), Ok(signature));
        let upper_hex = format!("\t{}\n\n", hex::encode_upper(signature));
        assert_eq!(decode_signature(upper_hex.as_bytes()), Ok(signature));
    }

    #[test]
    fn keyfmt_format_names_parse_and_serialize() {
        // Proves the format names parse case-insensitively, match serde's names, and unknown names list the choices.
        for format in PublicKeyFormat::ALL {
            assert_eq!(format.as_str().parse::<PublicKeyFormat>(), Ok(format));
            assert_eq!(serde_json::to_value(format).ok(), Some(serde_json::Value::from(format.as_str())));
        }
        for format in SignatureFormat::ALL {
            assert_eq!(format.as_str().to_uppercase().parse::<SignatureFormat>(), Ok(format));
            assert_eq!(serde_json::to_value(format).ok(), Some(serde_json::Value::from(format.as_str())));
        }
        let err = "der".parse::<PublicKeyFormat>().expect_err("der is not a format");
        assert!(err.to_string().contains("hex, pem, jwk, openssh"), "{err}");
        let err = "b64".parse::<SignatureFormat>().expect_err("b64 is not a format");
        assert!(err.to_string().contains("raw, hex, base64"), "{err}");
    }

    #[test]
    fn keyfmt_garbage_public_keys_are_errors() {
        // Proves malformed or foreign public keys give descriptive errors instead of panics.
        let key = fixed_key();
        assert_eq!(parse_public_key(&public_key_hex(&key)[..62]), Err(FormatError::PublicKeyHexLength(62)));
        assert_eq!(parse_public_key(""), Err(FormatError::UnrecognizedPublicKey));
        assert_eq!(parse_public_key("not a key"), Err(FormatError::UnrecognizedPublicKey));
        assert_eq!(
            parse_public_key(&public_key_pem(&key).replace("PUBLIC KEY", "PRIVATE KEY")),
            Err(FormatError::PemLabel("PRIVATE KEY".into()))
        );
        let bad_base64 = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA!!!\n-----END PUBLIC KEY-----\n";
        assert!(matches!(parse_public_key(bad_base64), Err(FormatError::PemMalformed(_))));
        let no_end = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\n";
        assert!(matches!(parse_public_key(no_end), Err(FormatError::PemMalformed(_))));
        // An X25519 SPKI (OID 1.3.101.110) has the same shape but is not an Ed25519 key.
        let x25519_pem = concat!(
            "-----BEGIN PUBLIC KEY-----\n",
            "MCowBQYDK2VuAyEA11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\n",
            "-----END PUBLIC KEY-----",
        );
        assert_eq!(parse_public_key(x25519_pem), Err(FormatError::PemNotEd25519));
        let x = URL_SAFE_NO_PAD.encode(key);
        let x25519_jwk = format!(r#"{{"kty":"OKP","crv":"X25519","x":"{x}"}}"#);
        assert!(matches!(parse_public_key(&x25519_jwk), Err(FormatError::Jwk(msg)) if msg.contains("X25519")));
        let ec_jwk = format!(r#"{{"kty":"EC","crv":"Ed25519","x":"{x}"}}"#);
        assert!(matches!(parse_public_key(&ec_jwk), Err(FormatError::Jwk(_))));
        let private_jwk = format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{x}","d":"{x}"}}"#);
        assert!(matches!(parse_public_key(&private_jwk), Err(FormatError::Jwk(msg)) if msg.contains("private")));
        let short_jwk = r#"{"kty":"OKP","crv":"Ed25519","x":"AAAA"}"#;
        assert!(matches!(parse_public_key(short_jwk), Err(FormatError::Jwk(_))));
        assert!(matches!(parse_public_key("{not json"), Err(FormatError::Jwk(_))));
        let rsa = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 user@host";
        assert_eq!(parse_public_key(rsa), Err(FormatError::OpensshKeyType("ssh-rsa".into())));
        // A line that says ssh-ed25519 but whose blob says ssh-rsa is refused.
        let mut blob = Vec::new();
        crate::sshsig::put_string(&mut blob, b"ssh-rsa");
        crate::sshsig::put_string(&mut blob, &key);
        let mismatched = format!("ssh-ed25519 {}", STANDARD.encode(&blob));
        assert!(matches!(parse_public_key(&mismatched), Err(FormatError::OpensshMalformed(_))));
        // A blob whose length prefix runs past its end is refused rather than read out of bounds.
        let truncated = format!("ssh-ed25519 {}", STANDARD.encode([0, 0, 0, 11, b's', b's', b'h']));
        assert!(matches!(parse_public_key(&truncated), Err(FormatError::OpensshMalformed(_))));
        assert!(matches!(parse_public_key("ssh-ed25519 @@@@"), Err(FormatError::OpensshMalformed(_))));
        assert!(matches!(parse_public_key("ssh-ed25519"), Err(FormatError::OpensshMalformed(_))));
        // y = 2 is not the y coordinate of any curve point.
        let mut off_curve = [0u8; 32];
        off_curve[0] = 2;
        assert_eq!(parse_public_key(&hex::encode(off_curve)), Err(FormatError::InvalidPoint));
    }

    #[test]
    fn keyfmt_encoders_take_any_32_bytes() {
        // Proves PEM and OpenSSH encode any 32 bytes without panicking, read back small-order keys unchanged (verify
        // refuses them), and leave non-points to parse_public_key's one point check.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let mut off_curve = [0u8; 32];
        off_curve[0] = 2;
        for format in [PublicKeyFormat::Pem, PublicKeyFormat::Openssh] {
            let text = format_public_key(&identity, format, "weak");
            assert_eq!(parse_public_key(&text), Ok(identity), "{format}");
            let text = format_public_key(&off_curve, format, "off");
            assert_eq!(parse_public_key(&text), Err(FormatError::InvalidPoint), "{format}");
        }
        assert_eq!(parse_pem(public_key_pem(&off_curve).trim()), Ok(off_curve));
        assert_eq!(parse_openssh(&public_key_openssh(&off_curve, "")), Ok(off_curve));
        // An sk-ssh-ed25519 line is not a plain Ed25519 key, and a PEM with RFC 1421 headers is refused.
        let sk = "sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAIP0X";
        assert_eq!(parse_public_key(sk), Err(FormatError::OpensshKeyType("sk-ssh-ed25519@openssh.com".into())));
        let headers = public_key_pem(&fixed_key()).replacen('\n', "\nProc-Type: 4,ENCRYPTED\n\n", 1);
        assert!(matches!(parse_public_key(&headers), Err(FormatError::PemMalformed(_))));
    }

    #[test]
    fn keyfmt_garbage_signatures_are_errors() {
        // Proves malformed signature files give descriptive errors instead of panics.
        let signature = signing_key().sign(b"garbage").to_bytes();
        assert_eq!(decode_signature(&signature[..63]), Err(FormatError::UnrecognizedSignature(63)));
        assert_eq!(decode_signature(b""), Err(FormatError::UnrecognizedSignature(0)));
        assert_eq!(decode_signature(b"not base64 at all!\n"), Err(FormatError::UnrecognizedSignature(19)));
        let short_hex = format!("{}\n", hex::encode(&signature[..63]));
        assert!(matches!(decode_signature(short_hex.as_bytes()), Err(FormatError::UnrecognizedSignature(_))));
        let short_base64 = format!("{}\n", STANDARD.encode(&signature[..63]));
        assert!(matches!(decode_signature(short_base64.as_bytes()), Err(FormatError::UnrecognizedSignature(_))));
        assert!(matches!(decode_signature(&[0xff; 65]), Err(FormatError::UnrecognizedSignature(65))));
        let message = FormatError::UnrecognizedSignature(63).to_string();
        assert!(message.contains("64 raw bytes") && message.contains("128 hex"), "{message}");
    }

    #[test]
    fn keyfmt_tampered_signature_fails_verify() {
        // Proves verify accepts a genuine signature and refuses a flipped bit, another message, a weak key and
        // a non-canonical S.
        let signer = signing_key();
        let key = fixed_key();
        let message = b"approve membership change 42";
        let signature = signer.sign(message).to_bytes();
        assert_eq!(verify(&key, message, &signature), Ok(()));
        let mut tampered = signature;
        tampered[10] ^= 0x01;
        assert_eq!(verify(&key, message, &tampered), Err(FormatError::BadSignature));
        assert_eq!(verify(&key, b"approve membership change 43", &signature), Err(FormatError::BadSignature));
        assert_eq!(
            FormatError::BadSignature.to_string(),
            "signature does not verify under this public key for this message"
        );
        // The identity point (y = 1) is a valid encoding of a small-order point.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(verify(&identity, message, &signature), Err(FormatError::WeakPublicKey));
        // S + L is the same scalar mod L but is not canonical, so strict verification refuses it.
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut malleated = signature;
        let mut carry = 0u16;
        for (i, l) in L.iter().enumerate() {
            let sum = u16::from(malleated[32 + i]) + u16::from(*l) + carry;
            malleated[32 + i] = (sum & 0xff) as u8;
            carry = sum >> 8;
        }
        assert_eq!(verify(&key, message, &malleated), Err(FormatError::BadSignature));
    }

    #[test]
    fn keyfmt_jwks_kid_is_the_rfc_7638_thumbprint_of_the_rfc_8037_example() {
        // RFC 8037 appendix A.2/A.3: the example Ed25519 key's JWK thumbprint.
        let x = URL_SAFE_NO_PAD.decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo").unwrap();
        let key: [u8; 32] = x.try_into().unwrap();
        assert_eq!(jwk_thumbprint(&key), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
        let set = public_keys_jwks(&[key]);
        assert_eq!(set["keys"][0]["kid"], "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
        assert_eq!(set["keys"][0]["x"], "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo");
        assert_eq!(set["keys"][0]["alg"], "EdDSA");
        assert_eq!("JWKS".parse::<PublicKeyFormat>().unwrap(), PublicKeyFormat::Jwks);
    }
    #[test]
    fn keyfmt_minisign_public_key_is_pinned_and_parses() {
        // Proves the minisign public key of the RFC 8032 test 1 key matches values computed with Python's
        // hashlib.blake2b and base64 (key id = first 8 bytes of BLAKE2b-512("synod-minisign-key-id" || key),
        // printed as minisign prints it), and that the file, its base64 line and CRLF copies parse back.
        let key = unhex::<32>(RFC8032_TEST1_PUBLIC);
        assert_eq!(minisign_key_id(&key), unhex::<8>("909c7300be79def4"));
        assert_eq!(minisign_key_id_hex(&minisign_key_id(&key)), "F4DE79BE00739C90");
        // minisign prints no leading zeros (a key id it wrote as CF6964CA44B49D3).
        assert_eq!(minisign_key_id_hex(&0x0CF6_964C_A44B_49D3u64.to_le_bytes()), "CF6964CA44B49D3");
        let text = public_key_minisign(&key);
        assert_eq!(
            text,
            "untrusted comment: minisign public key F4DE79BE00739C90\n\
             RWSQnHMAvnne9NdamAGCsQq31Uv+08lkBzoO4XLz2qYjJa8CGmj3B1Ea\n"
        );
        assert_eq!(format_public_key(&key, PublicKeyFormat::Minisign, "ignored"), text);
        assert_eq!(parse_minisign_public_key(&text), Ok((key, minisign_key_id(&key))));
        assert_eq!(parse_public_key(&text), Ok(key));
        assert_eq!(parse_public_key("RWSQnHMAvnne9NdamAGCsQq31Uv+08lkBzoO4XLz2qYjJa8CGmj3B1Ea"), Ok(key));
        assert_eq!(parse_public_key(&text.replace('\n', "\r\n")), Ok(key));
        assert_eq!("MiniSign".parse::<PublicKeyFormat>(), Ok(PublicKeyFormat::Minisign));
    }

    #[test]
    fn keyfmt_garbage_minisign_public_keys_are_errors() {
        // Proves malformed minisign public keys give descriptive errors instead of panics.
        let key = fixed_key();
        let good = public_key_minisign(&key);
        let line = good.lines().nth(1).unwrap().to_owned();
        let comment = "untrusted comment: minisign public key 0000000000000000";
        let malformed = |text: &str| matches!(parse_public_key(text), Err(FormatError::MinisignMalformed(_)));
        assert!(malformed(comment), "no key line");
        assert!(malformed(&format!("{comment}\n@@@@")), "not base64");
        assert!(malformed(&format!("{comment}\n{}", STANDARD.encode([b'E', b'd', 1, 2, 3]))), "short");
        assert!(malformed(&format!("{comment}\n{line}\n{line}")), "two keys");
        let mut blob = STANDARD.decode(&line).unwrap();
        blob[1] = b'D';
        assert!(malformed(&format!("{comment}\n{}", STANDARD.encode(&blob))), "secret-key or signature tag");
        let message = parse_public_key(comment).unwrap_err().to_string();
        assert!(message.contains("minisign -G"), "{message}");
        // A minisign key whose point is not on the curve is refused like any other encoding.
        let mut off_curve = [0u8; 32];
        off_curve[0] = 2;
        assert_eq!(parse_public_key(&public_key_minisign(&off_curve)), Err(FormatError::InvalidPoint));
    }

    #[test]
    fn keyfmt_reads_minisign_s_own_public_keys() {
        // Proves a public key file made by `minisign -G` (random key id) parses, with that id.
        if Command::new("minisign").arg("-v").output().map(|o| o.status.success()).unwrap_or(false) {
            let dir = ScratchDir::new("minisign");
            let out = Command::new("minisign")
                .args(["-G", "-W", "-f", "-p", "k.pub", "-s", "k.key"])
                .current_dir(&dir.0)
                .output()
                .expect("run minisign");
            assert!(out.status.success(), "minisign -G: {}", String::from_utf8_lossy(&out.stderr));
            let text = std::fs::read_to_string(dir.path("k.pub")).expect("read minisign's public key");
            let (key, id) = parse_minisign_public_key(&text).expect("minisign's public key parses");
            let comment = text.lines().next().unwrap_or_default();
            assert!(comment.ends_with(&format!(" {}", minisign_key_id_hex(&id))), "{text}");
            assert_eq!(parse_public_key(&text), Ok(key));
        }
    }
}

//! OpenSSH public keys and SSHSIG signatures, so approvers can approve with the SSH keys they already have.
//!
//! An approver signs a request file with `ssh-keygen -Y sign -n <namespace> -f KEY FILE`, which writes
//! an armored signature (`FILE.sig`). Synod registers the approver's OpenSSH public key (an
//! `authorized_keys`-style line) and checks such signatures here. Only Ed25519 keys are accepted:
//! plain `ssh-ed25519` keys and `sk-ssh-ed25519@openssh.com` keys that live on a FIDO security key.
//!
//! The formats follow OpenSSH's `PROTOCOL.sshsig`, `PROTOCOL.u2f` and RFC 4251 encodings, where a
//! `string` is a 4-byte big-endian length followed by that many bytes:
//!
//! - Public key blob: `string(type) || string(32-byte key)`, plus `|| string(application)` for
//!   `sk-ssh-ed25519@openssh.com`.
//! - Signature blob (the base64 body of the armor): `"SSHSIG" || uint32(1) || string(public key blob)
//!   || string(namespace) || string(reserved) || string(hash algorithm) || string(signature)`.
//! - Signed data: `"SSHSIG" || string(namespace) || string("") || string(hash algorithm) ||
//!   string(H(message))`, where H is SHA-256 or SHA-512 as named.
//! - `ssh-ed25519` signature: `string("ssh-ed25519") || string(64-byte Ed25519 signature of the signed data)`.
//! - `sk-ssh-ed25519@openssh.com` signature: `string("sk-ssh-ed25519@openssh.com") || string(64-byte
//!   signature) || byte(flags) || uint32(counter)`, where the authenticator's Ed25519 signature covers
//!   `SHA-256(application) || flags || counter || SHA-256(signed data)`.
//!
//! Everything here is deterministic (no clock, I/O or randomness), so it can run inside the replicated
//! state machine. Every length read from untrusted input is bounded, nothing panics on hostile input,
//! and every [`SshSigError`] says what was wrong and what to do about it.
//!
//! What Synod writes comes from the `ssh-key` crate: a key's blob, its `authorized_keys` line and its
//! `SHA256:` fingerprint are ssh-key's encodings of its `KeyData`, hash names are its `HashAlg`, and
//! the signed data is its `SshSig::signed_data`.
//!
//! # Why reading and verifying stay here
//!
//! Signatures are checked by this module, never by ssh-key's `verify`: ssh-key's Ed25519 verifiers
//! call ed25519-dalek's lenient `verify` (which accepts small-order keys and signatures that
//! `verify_strict` refuses), and for `sk-ssh-ed25519` keys they never look at the FIDO flags, so a
//! signature made without the user touching the security key would pass. Here every signature goes through `verify_strict` and
//! user presence is required. (Synod builds ssh-key without its `ed25519` feature, so its verifiers
//! cannot check an Ed25519 signature at all.)
//!
//! Untrusted bytes are read by the bounded reader below rather than by ssh-key's decoders, because
//! which keys and signatures are accepted must not change between Synod versions (the replicated
//! state machine reads them again whenever it applies a log entry), and ssh-key 0.6 reads differently:
//! `SshSig::from_pem` requires padded base64 in 70-character lines (Synod has always accepted any line
//! layout and missing padding), its length-prefixed fields are not required to be used up (so a
//! malformed `sk-ssh-ed25519` blob can still decode to a key), and its errors do not say which field
//! was wrong.

use base64::Engine as _;
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};
use ssh_key::public::{self, Ed25519PublicKey, KeyData};
use ssh_key::{HashAlg, SshSig};

use crate::keyfmt::STANDARD_LENIENT;

/// The longest armored signature accepted, in bytes. `ssh-keygen` writes about 300 bytes for Ed25519.
pub const MAX_ARMORED_LEN: usize = 16 * 1024;

/// The longest public key line accepted, in bytes.
pub const MAX_KEY_LINE_LEN: usize = 8 * 1024;

/// The longest length-prefixed string accepted inside a key or signature blob, in bytes.
pub const MAX_STRING_LEN: usize = 8 * 1024;

/// How many characters of an untrusted value (namespace, type name) an error message quotes.
const MAX_QUOTED_CHARS: usize = 64;

/// The OpenSSH type name of a plain Ed25519 key.
pub(crate) const SSH_ED25519: &str = "ssh-ed25519";

/// The OpenSSH type name of an Ed25519 key on a FIDO security key.
const SK_SSH_ED25519: &str = "sk-ssh-ed25519@openssh.com";

/// The six magic bytes that open both the signature blob and the signed data.
const MAGIC: &[u8; 6] = b"SSHSIG";

/// The only signature blob version OpenSSH defines.
const SIG_VERSION: u32 = 1;

/// The armor's first line.
const BEGIN_ARMOR: &str = "-----BEGIN SSH SIGNATURE-----";

/// The armor's last line.
const END_ARMOR: &str = "-----END SSH SIGNATURE-----";

/// The FIDO flag bit set when the user touched the security key (user presence).
const SK_USER_PRESENCE: u8 = 0x01;

/// The length of an Ed25519 public key.
const ED25519_KEY_LEN: usize = 32;

/// The length of an Ed25519 signature.
const ED25519_SIG_LEN: usize = 64;

/// What to tell someone whose key is of a type Synod does not accept.
const ED25519_ONLY_HINT: &str = "only Ed25519 keys are accepted (ssh-ed25519, or sk-ssh-ed25519@openssh.com on a \
                                 security key); create one with ssh-keygen -t ed25519 or ssh-keygen -t ed25519-sk";

/// An approver's SSH public key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SshPublicKey {
    /// ssh-ed25519
    Ed25519([u8; 32]),
    /// sk-ssh-ed25519@openssh.com: an Ed25519 key on a FIDO authenticator, with its application string
    /// (usually "ssh:").
    SkEd25519 {
        /// The 32-byte Ed25519 public key.
        key: [u8; 32],
        /// The FIDO application (relying party) string the key was created for, usually "ssh:".
        application: String,
    },
}

impl SshPublicKey {
    /// Parses one authorized_keys-style line "TYPE BASE64 [comment]" (ssh-ed25519 or
    /// sk-ssh-ed25519@openssh.com). Other types (ssh-rsa, ecdsa, sk-ecdsa) are refused with an error saying
    /// only Ed25519 keys are accepted. authorized_keys options before the type are not accepted.
    pub fn parse(line: &str) -> Result<Self, SshSigError> {
        if line.len() > MAX_KEY_LINE_LEN {
            return Err(SshSigError::TooLong { what: "public key line", len: line.len(), max: MAX_KEY_LINE_LEN });
        }
        let text = line.trim();
        if text.contains("PRIVATE KEY") {
            return Err(SshSigError::PrivateKeyGiven);
        }
        if text.contains(['\n', '\r']) {
            return Err(SshSigError::MalformedKeyLine("the text holds more than one line".into()));
        }
        let mut words = text.split_ascii_whitespace();
        let key_type = words.next().ok_or_else(|| SshSigError::MalformedKeyLine("the line is empty".into()))?;
        if key_type != SSH_ED25519 && key_type != SK_SSH_ED25519 {
            if looks_like_key_type(key_type) {
                return Err(SshSigError::UnsupportedKeyType(quote(key_type.as_bytes())));
            }
            return Err(SshSigError::MalformedKeyLine(format!(
                "it starts with {} instead of a key type (authorized_keys options are not accepted)",
                quote(key_type.as_bytes())
            )));
        }
        let encoded = words
            .next()
            .ok_or_else(|| SshSigError::MalformedKeyLine("the base64 key after the key type is missing".into()))?;
        let blob = STANDARD_LENIENT
            .decode(encoded)
            .map_err(|err| SshSigError::MalformedKeyLine(format!("the key is not valid base64 ({err})")))?;
        let key = Self::from_blob(&blob)?;
        if key.type_name() != key_type {
            return Err(SshSigError::KeyTypeMismatch { line: key_type.to_owned(), blob: key.type_name().to_owned() });
        }
        Ok(key)
    }

    /// The OpenSSH wire blob (string type || string key [|| string application]).
    pub fn to_blob(&self) -> Vec<u8> {
        // Writing a key blob into a Vec cannot fail.
        ssh_key::PublicKey::from(self.key_data()).to_bytes().expect("an Ed25519 key blob always encodes")
    }

    /// "TYPE BASE64" (no comment), canonical; parse(to_line()) round-trips.
    pub fn to_line(&self) -> String {
        // ssh-key sizes its buffer exactly for the blob, so this cannot fail.
        ssh_key::PublicKey::from(self.key_data()).to_openssh().expect("an Ed25519 key line always encodes")
    }

    /// "SHA256:<base64 without padding of SHA-256(blob)>", exactly as `ssh-keygen -l` prints.
    pub fn fingerprint(&self) -> String {
        self.key_data().fingerprint(HashAlg::Sha256).to_string()
    }

    /// The key in ssh-key's model, which encodes it.
    fn key_data(&self) -> KeyData {
        match self {
            SshPublicKey::Ed25519(key) => KeyData::Ed25519(Ed25519PublicKey(*key)),
            SshPublicKey::SkEd25519 { key, application } => {
                KeyData::SkEd25519(public::SkEd25519::new(Ed25519PublicKey(*key), application.clone()))
            }
        }
    }

    /// The OpenSSH type name: `ssh-ed25519` or `sk-ssh-ed25519@openssh.com`.
    fn type_name(&self) -> &'static str {
        match self {
            SshPublicKey::Ed25519(_) => SSH_ED25519,
            SshPublicKey::SkEd25519 { .. } => SK_SSH_ED25519,
        }
    }

    /// The 32 Ed25519 key bytes, whichever the type.
    fn ed25519_bytes(&self) -> &[u8; 32] {
        match self {
            SshPublicKey::Ed25519(key) | SshPublicKey::SkEd25519 { key, .. } => key,
        }
    }

    /// Reads a public key blob, refusing other key types, trailing bytes and unusable Ed25519 keys.
    fn from_blob(blob: &[u8]) -> Result<Self, SshSigError> {
        let mut reader = Reader::new(blob, "public key");
        let key_type = reader.string("key type")?;
        let key = match key_type {
            t if t == SSH_ED25519.as_bytes() => {
                let key = reader.ed25519_key()?;
                reader.finish()?;
                SshPublicKey::Ed25519(key)
            }
            t if t == SK_SSH_ED25519.as_bytes() => {
                let key = reader.ed25519_key()?;
                let application = reader.utf8("application")?.to_owned();
                reader.finish()?;
                SshPublicKey::SkEd25519 { key, application }
            }
            other => return Err(SshSigError::UnsupportedKeyType(quote(other))),
        };
        verifying_key(key.ed25519_bytes())?;
        Ok(key)
    }
}

/// Why an SSH public key or SSHSIG signature was refused. Each message says what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SshSigError {
    /// The input is longer than Synod reads.
    #[error("the {what} is {len} bytes, more than the {max} accepted: pass only the one key line or .sig file")]
    TooLong {
        /// What was too long.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The most accepted.
        max: usize,
    },
    /// The public key line is not "TYPE BASE64 [comment]".
    #[error("the SSH public key line is malformed: {0}; give the one line of the .pub file, \"ssh-ed25519 AAAA... [comment]\"")]
    MalformedKeyLine(String),
    /// A private key was given where a public key belongs.
    #[error(
        "this is a private key, not a public key: give the contents of the .pub file (never share the private key)"
    )]
    PrivateKeyGiven,
    /// The key is of a type other than ssh-ed25519 or sk-ssh-ed25519@openssh.com.
    #[error("SSH key type {0} is not accepted: {hint}", hint = ED25519_ONLY_HINT)]
    UnsupportedKeyType(String),
    /// The line's key type disagrees with the type inside its base64 blob.
    #[error("the key line says {line} but its base64 blob holds a {blob} key: copy the .pub line unchanged")]
    KeyTypeMismatch {
        /// The type word at the start of the line.
        line: String,
        /// The type inside the blob.
        blob: String,
    },
    /// The 32 key bytes are not a usable Ed25519 public key.
    #[error("the Ed25519 public key is unusable: {0}; generate a new key with ssh-keygen -t ed25519")]
    InvalidKey(String),
    /// The signature text lacks the `-----BEGIN SSH SIGNATURE-----` line.
    #[error("the signature does not start with \"-----BEGIN SSH SIGNATURE-----\": give the whole .sig file written by ssh-keygen -Y sign")]
    NotArmored,
    /// The signature text lacks the `-----END SSH SIGNATURE-----` line.
    #[error("the signature has no \"-----END SSH SIGNATURE-----\" line: it was cut off; give the whole .sig file")]
    MissingFooter,
    /// Something other than whitespace follows the end line.
    #[error("there is text after \"-----END SSH SIGNATURE-----\": give exactly one .sig file")]
    TrailingText,
    /// The armored body is not base64.
    #[error("the signature body is not valid base64 ({0}): copy the .sig file unchanged")]
    BadBase64(String),
    /// The blob does not open with "SSHSIG".
    #[error("the signature is not an SSHSIG signature (wrong magic bytes): create it with ssh-keygen -Y sign")]
    BadMagic,
    /// The blob's version is not 1.
    #[error("SSHSIG signature version {0} is not supported (only version 1): sign with a current ssh-keygen -Y sign")]
    UnsupportedVersion(u32),
    /// A blob ended before a field was complete.
    #[error("the {blob} is truncated in its {field}: it was damaged or cut off; copy it again in full")]
    Truncated {
        /// Which blob (signature, public key, ...).
        blob: &'static str,
        /// The field being read.
        field: &'static str,
    },
    /// A length-prefixed string is longer than Synod reads.
    #[error("the {field} in the {blob} is {len} bytes, more than the {max} accepted: the signature is damaged or not from ssh-keygen")]
    FieldTooLong {
        /// Which blob.
        blob: &'static str,
        /// The field.
        field: &'static str,
        /// Its declared length.
        len: usize,
        /// The most accepted.
        max: usize,
    },
    /// A field that must be text is not UTF-8.
    #[error("the {field} in the {blob} is not UTF-8 text: the key or signature is damaged")]
    NotUtf8 {
        /// Which blob.
        blob: &'static str,
        /// The field.
        field: &'static str,
    },
    /// Bytes follow the last field of a blob.
    #[error("the {0} has extra bytes after its last field: it is damaged; copy it again unchanged")]
    TrailingData(&'static str),
    /// The reserved field is not empty.
    #[error("the signature's reserved field is not empty, which SSHSIG version 1 does not allow: sign again with ssh-keygen -Y sign")]
    NonEmptyReserved,
    /// The signature was made by a different key than the approver's.
    #[error("signature was made by key {signer} which is not the approver's key {expected}: sign with the key registered for this approver")]
    WrongKey {
        /// The fingerprint of the key inside the signature.
        signer: String,
        /// The fingerprint of the approver's key.
        expected: String,
    },
    /// The signature was made for another namespace.
    #[error(
        "signature was made for namespace {got}, expected {expected:?}: sign with ssh-keygen -Y sign -n {expected}"
    )]
    WrongNamespace {
        /// The namespace inside the signature, quoted and shortened.
        got: String,
        /// The namespace Synod requires.
        expected: String,
    },
    /// The namespace is empty, which SSHSIG does not allow.
    #[error("the namespace is empty, which SSHSIG does not allow: sign with ssh-keygen -Y sign -n <namespace>")]
    EmptyNamespace,
    /// The message hash algorithm is neither sha256 nor sha512.
    #[error("signature uses hash algorithm {0}; only sha256 and sha512 are accepted: sign with ssh-keygen -Y sign (default sha512)")]
    UnsupportedHash(String),
    /// The inner signature's type does not match the key's type.
    #[error("the signature is of type {sig_type} but the key is {key_type}: the signature is damaged; sign again")]
    SignatureTypeMismatch {
        /// The type named in the signature.
        sig_type: String,
        /// The key's type.
        key_type: &'static str,
    },
    /// The inner Ed25519 signature is not 64 bytes.
    #[error("the Ed25519 signature is {0} bytes, not 64: the signature is damaged; sign again")]
    BadSignatureLength(usize),
    /// The Ed25519 signature does not verify.
    #[error("the signature does not verify: the signed file differs from this request, or the signature was altered; sign the exact request again")]
    BadSignature,
    /// A security-key signature without the user-presence flag.
    #[error("the security key did not assert user presence (touch); sign again and touch the key")]
    NoUserPresence,
}

/// Verifies an armored SSH signature ("-----BEGIN SSH SIGNATURE-----" ... "-----END SSH SIGNATURE-----", as
/// written by `ssh-keygen -Y sign`) over `message` under `namespace`, made by `key`.
///
/// Checks: magic "SSHSIG", version 1, the embedded public key equals `key`, the namespace equals `namespace`
/// exactly, an empty reserved field, hash algorithm "sha256" or "sha512", then the signature over the SSHSIG
/// signed-data blob (MAGIC || string(namespace) || string(reserved="") || string(hash_alg) ||
/// string(H(message))).
///
/// For ssh-ed25519: Ed25519 (`verify_strict`) over that blob. For sk-ssh-ed25519@openssh.com: the signature
/// blob is string("sk-ssh-ed25519@openssh.com") || string(64-byte sig) || byte flags || uint32 counter, and
/// the Ed25519 signature covers SHA-256(application) || flags || counter (4 bytes BE) || SHA-256(signed-data
/// blob); the user-presence flag (0x01) is required, and its absence on an otherwise valid signature is
/// reported as [`SshSigError::NoUserPresence`].
pub fn verify(armored: &str, namespace: &str, message: &[u8], key: &SshPublicKey) -> Result<(), SshSigError> {
    let blob = dearmor(armored)?;
    let parsed = ParsedSig::parse(&blob)?;
    if parsed.signer != *key {
        return Err(SshSigError::WrongKey { signer: parsed.signer.fingerprint(), expected: key.fingerprint() });
    }
    if parsed.namespace != namespace.as_bytes() {
        return Err(SshSigError::WrongNamespace { got: quote(parsed.namespace), expected: namespace.to_owned() });
    }
    // Exactly these two, even if a later ssh-key learns more names.
    let hash_alg = std::str::from_utf8(parsed.hash_alg)
        .ok()
        .and_then(|name| HashAlg::new(name).ok())
        .filter(|alg| matches!(alg, HashAlg::Sha256 | HashAlg::Sha512))
        .ok_or_else(|| SshSigError::UnsupportedHash(quote(parsed.hash_alg)))?;
    // MAGIC || string(namespace) || string("") || string(hash_alg) || string(H(message)); refuses only "".
    let signed_data = SshSig::signed_data(namespace, hash_alg, message).map_err(|_| SshSigError::EmptyNamespace)?;
    verify_inner(key, parsed.signature, &signed_data)
}

/// The public key embedded in an armored signature (to find which approver made it).
pub fn signer_of(armored: &str) -> Result<SshPublicKey, SshSigError> {
    let blob = dearmor(armored)?;
    Ok(ParsedSig::parse(&blob)?.signer)
}

/// The fields of an SSHSIG blob, borrowed from it.
struct ParsedSig<'a> {
    /// The embedded public key.
    signer: SshPublicKey,
    /// The namespace the signer chose.
    namespace: &'a [u8],
    /// The message hash algorithm name.
    hash_alg: &'a [u8],
    /// The inner SSH signature blob.
    signature: &'a [u8],
}

impl<'a> ParsedSig<'a> {
    /// Reads the blob's structure: magic, version, key, namespace, empty reserved, hash name, signature.
    fn parse(blob: &'a [u8]) -> Result<Self, SshSigError> {
        let mut reader = Reader::new(blob, "signature");
        let magic = reader.take(MAGIC.len(), "magic bytes").map_err(|_| SshSigError::BadMagic)?;
        if magic != MAGIC {
            return Err(SshSigError::BadMagic);
        }
        let version = reader.u32("version")?;
        if version != SIG_VERSION {
            return Err(SshSigError::UnsupportedVersion(version));
        }
        let key_blob = reader.string("public key")?;
        let namespace = reader.string("namespace")?;
        let reserved = reader.string("reserved field")?;
        let hash_alg = reader.string("hash algorithm")?;
        let signature = reader.string("signature")?;
        reader.finish()?;
        if !reserved.is_empty() {
            return Err(SshSigError::NonEmptyReserved);
        }
        let signer = SshPublicKey::from_blob(key_blob)?;
        Ok(ParsedSig { signer, namespace, hash_alg, signature })
    }
}

/// Checks the inner SSH signature blob over the SSHSIG signed data under `key`.
fn verify_inner(key: &SshPublicKey, sig_blob: &[u8], signed_data: &[u8]) -> Result<(), SshSigError> {
    let mut reader = Reader::new(sig_blob, "inner signature");
    let sig_type = reader.string("signature type")?;
    if sig_type != key.type_name().as_bytes() {
        return Err(SshSigError::SignatureTypeMismatch { sig_type: quote(sig_type), key_type: key.type_name() });
    }
    let sig_bytes = reader.string("Ed25519 signature")?;
    let sig_bytes: &[u8; ED25519_SIG_LEN] =
        sig_bytes.try_into().map_err(|_| SshSigError::BadSignatureLength(sig_bytes.len()))?;
    let signature = Signature::from_bytes(sig_bytes);
    let verifying_key = verifying_key(key.ed25519_bytes())?;
    match key {
        SshPublicKey::Ed25519(_) => {
            reader.finish()?;
            verifying_key.verify_strict(signed_data, &signature).map_err(|_| SshSigError::BadSignature)
        }
        SshPublicKey::SkEd25519 { application, .. } => {
            let flags = reader.u8("flags")?;
            let counter = reader.u32("counter")?;
            reader.finish()?;
            let mut sk_data = Vec::with_capacity(32 + 1 + 4 + 32);
            sk_data.extend_from_slice(&Sha256::digest(application.as_bytes()));
            sk_data.push(flags);
            sk_data.extend_from_slice(&counter.to_be_bytes());
            sk_data.extend_from_slice(&Sha256::digest(signed_data));
            verifying_key.verify_strict(&sk_data, &signature).map_err(|_| SshSigError::BadSignature)?;
            // Checked after the signature so the message is only given for genuine, untouched signatures.
            if flags & SK_USER_PRESENCE == 0 {
                return Err(SshSigError::NoUserPresence);
            }
            Ok(())
        }
    }
}

/// Decodes the 32 bytes as an Ed25519 public key, refusing invalid points and small-order (weak) keys.
fn verifying_key(key: &[u8; 32]) -> Result<VerifyingKey, SshSigError> {
    let verifying_key = VerifyingKey::from_bytes(key)
        .map_err(|_| SshSigError::InvalidKey("the 32 bytes are not a point on the Ed25519 curve".into()))?;
    if verifying_key.is_weak() {
        return Err(SshSigError::InvalidKey("it is a small-order (weak) key that anyone could sign for".into()));
    }
    Ok(verifying_key)
}

/// Strips the armor lines and decodes the base64 body, bounding the input size.
fn dearmor(armored: &str) -> Result<Vec<u8>, SshSigError> {
    if armored.len() > MAX_ARMORED_LEN {
        return Err(SshSigError::TooLong { what: "armored signature", len: armored.len(), max: MAX_ARMORED_LEN });
    }
    let rest = armored.trim().strip_prefix(BEGIN_ARMOR).ok_or(SshSigError::NotArmored)?;
    let end = rest.find(END_ARMOR).ok_or(SshSigError::MissingFooter)?;
    let (body, after) = rest.split_at(end);
    if !after[END_ARMOR.len()..].trim().is_empty() {
        return Err(SshSigError::TrailingText);
    }
    let encoded: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if encoded.is_empty() {
        return Err(SshSigError::BadBase64("the body between the armor lines is empty".into()));
    }
    STANDARD_LENIENT.decode(encoded.as_bytes()).map_err(|err| SshSigError::BadBase64(err.to_string()))
}

/// The fields of an SSHSIG signed-data blob (what the Ed25519 signature covers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedData {
    pub namespace: String,
    /// `sha256` or `sha512`.
    pub hash_alg: String,
    /// H(message), 32 or 64 bytes as `hash_alg` says.
    pub hash: Vec<u8>,
}

impl SignedData {
    /// The blob: `"SSHSIG" || string(namespace) || string("") || string(hash_alg) || string(hash)`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        for field in [self.namespace.as_bytes(), b"", self.hash_alg.as_bytes(), &self.hash] {
            out.extend_from_slice(&u32::try_from(field.len()).unwrap_or(u32::MAX).to_be_bytes());
            out.extend_from_slice(field);
        }
        out
    }

    /// Reads a signed-data blob, refusing anything `ssh-keygen -Y verify` would not
    /// check: an empty namespace, a reserved field, another hash or a hash of the wrong length.
    /// The error says what was wrong, for a requester.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let mut reader = Reader::new(bytes, "SSHSIG signed data");
        if reader.take(MAGIC.len(), "magic").map_err(|e| e.to_string())? != MAGIC {
            return Err("it does not open with \"SSHSIG\"".into());
        }
        let mut field = |name| reader.string(name).map(<[u8]>::to_vec).map_err(|e| e.to_string());
        let namespace = field("namespace")?;
        let reserved = field("reserved")?;
        let hash_alg = field("hash algorithm")?;
        let hash = field("hash")?;
        reader.finish().map_err(|e| e.to_string())?;
        let namespace = String::from_utf8(namespace).map_err(|_| "the namespace is not UTF-8".to_string())?;
        if namespace.is_empty() || namespace.chars().any(char::is_control) {
            return Err("the namespace must be non-empty printable text (git, file, ...)".into());
        }
        if !reserved.is_empty() {
            return Err("the reserved field is not empty".into());
        }
        let (hash_alg, expected) = match hash_alg.as_slice() {
            b"sha256" => ("sha256", 32),
            b"sha512" => ("sha512", 64),
            other => return Err(format!("hash algorithm {} is not sha256 or sha512", quote(other))),
        };
        if hash.len() != expected {
            return Err(format!("a {hash_alg} hash is {expected} bytes, not {}", hash.len()));
        }
        Ok(SignedData { namespace, hash_alg: hash_alg.to_string(), hash })
    }
}

/// Writes the armored signature `ssh-keygen -Y sign` writes for an ssh-ed25519 key: the SSHSIG
/// blob (version 1, the key blob, `namespace`, an empty reserved field, `hash_alg`, the
/// `ssh-ed25519` signature blob) in base64 lines of 70 characters between the armor lines,
/// ending in a line feed. `signature` is the Ed25519 signature of the signed data
/// ([`SignedData::to_bytes`]) under `public_key`; this does not check it.
pub fn armor_ed25519(
    public_key: &[u8; 32],
    namespace: &str,
    hash_alg: HashAlg,
    signature: &[u8; 64],
) -> Result<String, SshSigError> {
    if namespace.is_empty() {
        return Err(SshSigError::EmptyNamespace);
    }
    let key = KeyData::Ed25519(Ed25519PublicKey(*public_key));
    // A 64-byte Ed25519 signature and a non-empty namespace are all ssh-key checks, and
    // encoding into a String cannot fail, so these errors cannot occur.
    let signature = ssh_key::Signature::new(ssh_key::Algorithm::Ed25519, signature.to_vec())
        .map_err(|e| SshSigError::InvalidKey(e.to_string()))?;
    SshSig::new(key, namespace, hash_alg, signature)
        .and_then(|sig| sig.to_pem(ssh_key::LineEnding::LF))
        .map_err(|e| SshSigError::InvalidKey(e.to_string()))
}

/// An armored SSHSIG signature, read but not yet verified: which key made it, for which
/// namespace, and with which hash, so a verifier can pick the candidate key and hash a large
/// file itself (streaming) before [`SshSignature::verify_hash`] checks the signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshSignature {
    /// The public key embedded in the signature.
    pub signer: SshPublicKey,
    /// The namespace the signer chose, as written (not necessarily UTF-8).
    pub namespace: Vec<u8>,
    /// The message hash algorithm: sha256 or sha512.
    pub hash_alg: HashAlg,
    /// The inner SSH signature blob (`string(type) || string(signature)`).
    signature: Vec<u8>,
}

impl SshSignature {
    /// Reads an armored signature as [`verify`] does, refusing hash algorithms other than
    /// sha256 and sha512.
    pub fn read(armored: &str) -> Result<Self, SshSigError> {
        let blob = dearmor(armored)?;
        let parsed = ParsedSig::parse(&blob)?;
        let hash_alg = std::str::from_utf8(parsed.hash_alg)
            .ok()
            .and_then(|name| HashAlg::new(name).ok())
            .filter(|alg| matches!(alg, HashAlg::Sha256 | HashAlg::Sha512))
            .ok_or_else(|| SshSigError::UnsupportedHash(quote(parsed.hash_alg)))?;
        Ok(SshSignature {
            signer: parsed.signer,
            namespace: parsed.namespace.to_vec(),
            hash_alg,
            signature: parsed.signature.to_vec(),
        })
    }

    /// Verifies the signature over a message whose hash (with [`SshSignature::hash_alg`]) is
    /// `hash`, for `namespace`, made by `key`: the same checks as [`verify`], with the
    /// message already hashed.
    pub fn verify_hash(&self, namespace: &str, hash: &[u8], key: &SshPublicKey) -> Result<(), SshSigError> {
        if self.signer != *key {
            return Err(SshSigError::WrongKey { signer: self.signer.fingerprint(), expected: key.fingerprint() });
        }
        if self.namespace != namespace.as_bytes() {
            return Err(SshSigError::WrongNamespace { got: quote(&self.namespace), expected: namespace.to_owned() });
        }
        if namespace.is_empty() {
            return Err(SshSigError::EmptyNamespace);
        }
        let signed_data = SignedData {
            namespace: namespace.to_owned(),
            hash_alg: self.hash_alg.as_str().to_owned(),
            hash: hash.to_vec(),
        };
        verify_inner(key, &self.signature, &signed_data.to_bytes())
    }

    /// The namespace quoted and shortened for a message.
    pub fn namespace_quoted(&self) -> String {
        quote(&self.namespace)
    }
}

/// A bounds-checked cursor over an untrusted blob.
struct Reader<'a> {
    /// The bytes not yet read.
    rest: &'a [u8],
    /// Which blob this is, for error messages.
    blob: &'static str,
}

impl<'a> Reader<'a> {
    /// Starts reading `bytes`, named `blob` in errors.
    fn new(bytes: &'a [u8], blob: &'static str) -> Self {
        Reader { rest: bytes, blob }
    }

    /// Takes the next `len` bytes.
    fn take(&mut self, len: usize, field: &'static str) -> Result<&'a [u8], SshSigError> {
        if len > self.rest.len() {
            return Err(SshSigError::Truncated { blob: self.blob, field });
        }
        let (head, tail) = self.rest.split_at(len);
        self.rest = tail;
        Ok(head)
    }

    /// Reads one byte.
    fn u8(&mut self, field: &'static str) -> Result<u8, SshSigError> {
        let bytes = self.take(1, field)?;
        Ok(bytes.first().copied().unwrap_or_default())
    }

    /// Reads a big-endian uint32.
    fn u32(&mut self, field: &'static str) -> Result<u32, SshSigError> {
        let bytes = self.take(4, field)?;
        let array: [u8; 4] = bytes.try_into().map_err(|_| SshSigError::Truncated { blob: self.blob, field })?;
        Ok(u32::from_be_bytes(array))
    }

    /// Reads a length-prefixed string of at most [`MAX_STRING_LEN`] bytes.
    fn string(&mut self, field: &'static str) -> Result<&'a [u8], SshSigError> {
        let len = usize::try_from(self.u32(field)?).unwrap_or(usize::MAX);
        if len > MAX_STRING_LEN {
            return Err(SshSigError::FieldTooLong { blob: self.blob, field, len, max: MAX_STRING_LEN });
        }
        self.take(len, field)
    }

    /// Reads a length-prefixed string that must be UTF-8.
    fn utf8(&mut self, field: &'static str) -> Result<&'a str, SshSigError> {
        let bytes = self.string(field)?;
        std::str::from_utf8(bytes).map_err(|_| SshSigError::NotUtf8 { blob: self.blob, field })
    }

    /// Reads a length-prefixed 32-byte Ed25519 public key.
    fn ed25519_key(&mut self) -> Result<[u8; 32], SshSigError> {
        let bytes = self.string("Ed25519 key")?;
        bytes
            .try_into()
            .map_err(|_| SshSigError::InvalidKey(format!("the key is {} bytes, not {ED25519_KEY_LEN}", bytes.len())))
    }

    /// Requires that everything was read.
    fn finish(&self) -> Result<(), SshSigError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(SshSigError::TrailingData(self.blob))
        }
    }
}

/// Appends an SSH `string`: a 4-byte big-endian length, then the bytes. Tests build hostile blobs with it.
#[cfg(test)]
pub(crate) fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Tells whether a word looks like an OpenSSH key type name (so the key is refused as a type, not as garbage).
fn looks_like_key_type(word: &str) -> bool {
    ["ssh-", "ecdsa-", "sk-", "rsa-", "x509v3-"].iter().any(|prefix| word.starts_with(prefix))
        || word.ends_with("@openssh.com")
}

/// Quotes an untrusted value for an error message: lossy UTF-8, escaped, and shortened.
fn quote(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut chars = text.chars();
    let shown: String = chars.by_ref().take(MAX_QUOTED_CHARS).collect();
    if chars.next().is_some() {
        format!("{shown:?}...")
    } else {
        format!("{shown:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;
    use ed25519_dalek::{Signer, SigningKey};
    use sha2::Sha512;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The namespace the tests sign under.
    const NAMESPACE: &str = "synod-test";

    /// The message the tests sign.
    const MESSAGE: &[u8] = b"approve request 42: sign 0xdeadbeef with group key main\n";

    /// A fixed Ed25519 signing key.
    fn signing_key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    /// Returns the path of ssh-keygen, or None when it is not installed (the test is then skipped).
    fn ssh_keygen() -> Option<PathBuf> {
        let fixed = PathBuf::from("/usr/bin/ssh-keygen");
        if fixed.is_file() {
            return Some(fixed);
        }
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path).map(|dir| dir.join("ssh-keygen")).find(|candidate| candidate.is_file())
    }

    /// Runs ssh-keygen with `args` in `dir` (stdin from `stdin` if given); returns success and stdout.
    fn run(keygen: &Path, dir: &Path, args: &[&str], stdin: Option<&Path>) -> (bool, String) {
        let mut command = Command::new(keygen);
        command.args(args).current_dir(dir).env_remove("SSH_AUTH_SOCK").stdout(Stdio::piped()).stderr(Stdio::piped());
        command.stdin(match stdin {
            Some(path) => Stdio::from(std::fs::File::open(path).expect("open stdin file")),
            None => Stdio::null(),
        });
        let output = command.output().expect("run ssh-keygen");
        (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// A unique scratch directory under the system temp dir, removed when dropped.
    struct ScratchDir(PathBuf);

    impl ScratchDir {
        /// Creates a fresh directory named after the test, the process and a counter.
        fn new(tag: &str) -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let nanos =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("synod-sshsig-{tag}-{}-{nanos}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("create scratch dir");
            ScratchDir(dir)
        }

        /// The path of `name` inside the directory.
        fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }

        /// Reads `name` inside the directory as text.
        fn read(&self, name: &str) -> String {
            std::fs::read_to_string(self.path(name)).expect("read scratch file")
        }
    }

    impl Drop for ScratchDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Wraps an SSHSIG blob in armor the way OpenSSH does (base64 lines of 70 characters).
    fn armor(blob: &[u8]) -> String {
        let encoded = STANDARD.encode(blob);
        let mut out = format!("{BEGIN_ARMOR}\n");
        for chunk in encoded.as_bytes().chunks(70) {
            out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
            out.push('\n');
        }
        out.push_str(END_ARMOR);
        out.push('\n');
        out
    }

    /// Builds the SSHSIG signed-data blob over `message`.
    fn signed_data(namespace: &str, hash_alg: &str, message: &[u8]) -> Vec<u8> {
        let hash = match hash_alg {
            "sha256" => Sha256::digest(message).to_vec(),
            _ => Sha512::digest(message).to_vec(),
        };
        let mut data = MAGIC.to_vec();
        put_string(&mut data, namespace.as_bytes());
        put_string(&mut data, b"");
        put_string(&mut data, hash_alg.as_bytes());
        put_string(&mut data, &hash);
        data
    }

    /// Builds an SSHSIG blob from its fields.
    fn sshsig_blob(
        version: u32,
        key: &SshPublicKey,
        namespace: &str,
        reserved: &[u8],
        hash_alg: &str,
        sig: &[u8],
    ) -> Vec<u8> {
        let mut blob = MAGIC.to_vec();
        blob.extend_from_slice(&version.to_be_bytes());
        put_string(&mut blob, &key.to_blob());
        put_string(&mut blob, namespace.as_bytes());
        put_string(&mut blob, reserved);
        put_string(&mut blob, hash_alg.as_bytes());
        put_string(&mut blob, sig);
        blob
    }

    /// Signs `message` with a plain ssh-ed25519 key and returns the SSHSIG blob.
    fn ed25519_blob(signer: &SigningKey, namespace: &str, hash_alg: &str, message: &[u8]) -> Vec<u8> {
        let key = SshPublicKey::Ed25519(signer.verifying_key().to_bytes());
        let signature = signer.sign(&signed_data(namespace, hash_alg, message));
        let mut sig = Vec::new();
        put_string(&mut sig, SSH_ED25519.as_bytes());
        put_string(&mut sig, &signature.to_bytes());
        sshsig_blob(SIG_VERSION, &key, namespace, b"", hash_alg, &sig)
    }

    /// Signs `message` as a FIDO authenticator would with an sk-ssh-ed25519 key, signing `signed_counter`
    /// but writing `written_counter` into the blob.
    fn sk_blob(signer: &SigningKey, flags: u8, signed_counter: u32, written_counter: u32, message: &[u8]) -> Vec<u8> {
        let key = sk_key(signer);
        let data = signed_data(NAMESPACE, "sha512", message);
        let mut fido = Sha256::digest(b"ssh:").to_vec();
        fido.push(flags);
        fido.extend_from_slice(&signed_counter.to_be_bytes());
        fido.extend_from_slice(&Sha256::digest(&data));
        let signature = signer.sign(&fido);
        let mut sig = Vec::new();
        put_string(&mut sig, SK_SSH_ED25519.as_bytes());
        put_string(&mut sig, &signature.to_bytes());
        sig.push(flags);
        sig.extend_from_slice(&written_counter.to_be_bytes());
        sshsig_blob(SIG_VERSION, &key, NAMESPACE, b"", "sha512", &sig)
    }

    /// The sk-ssh-ed25519 public key of `signer` with application "ssh:".
    fn sk_key(signer: &SigningKey) -> SshPublicKey {
        SshPublicKey::SkEd25519 { key: signer.verifying_key().to_bytes(), application: "ssh:".into() }
    }

    #[test]
    fn sshsig_real_ssh_keygen_signature_verifies_and_mismatches_are_refused() {
        // Proves signatures made by the real `ssh-keygen -Y sign` verify, and wrong namespace, message or key are refused.
        let Some(keygen) = ssh_keygen() else { return };
        let dir = ScratchDir::new("real");
        for name in ["key", "other"] {
            let (ok, _) = run(&keygen, &dir.0, &["-t", "ed25519", "-N", "", "-q", "-C", "approver", "-f", name], None);
            assert!(ok, "ssh-keygen -t ed25519 failed");
        }
        std::fs::write(dir.path("msg"), MESSAGE).expect("write message");
        let (ok, _) = run(&keygen, &dir.0, &["-Y", "sign", "-n", NAMESPACE, "-f", "key", "msg"], None);
        assert!(ok, "ssh-keygen -Y sign failed");
        let armored = dir.read("msg.sig");
        let key = SshPublicKey::parse(&dir.read("key.pub")).expect("parse key.pub");
        let other = SshPublicKey::parse(&dir.read("other.pub")).expect("parse other.pub");

        assert_eq!(verify(&armored, NAMESPACE, MESSAGE, &key), Ok(()));
        assert_eq!(signer_of(&armored), Ok(key.clone()));

        // ssh-key reads ssh-keygen's key and signature to the same values as this module.
        let theirs = ssh_key::SshSig::from_pem(&armored).expect("ssh-key reads the signature");
        assert_eq!(theirs.public_key(), &key.key_data());
        assert_eq!(theirs.namespace(), NAMESPACE);
        let blob = dearmor(&armored).expect("dearmor");
        let ours = ParsedSig::parse(&blob).expect("parse");
        assert_eq!(Some(theirs.hash_alg().as_str().as_bytes()), Some(ours.hash_alg));
        assert_eq!(Vec::<u8>::try_from(theirs.signature().clone()).ok().as_deref(), Some(ours.signature));
        let their_key = ssh_key::PublicKey::from_openssh(dir.read("key.pub").trim()).expect("ssh-key reads key.pub");
        assert_eq!(their_key.key_data(), &key.key_data());
        assert_eq!(format!("{} {}", key.to_line(), their_key.comment()), dir.read("key.pub").trim());

        let err = verify(&armored, "synod-approval@v1", MESSAGE, &key).expect_err("wrong namespace");
        assert!(matches!(err, SshSigError::WrongNamespace { .. }), "{err:?}");
        assert!(err.to_string().contains("namespace \"synod-test\", expected \"synod-approval@v1\""), "{err}");

        let err = verify(&armored, NAMESPACE, b"approve request 43", &key).expect_err("tampered message");
        assert_eq!(err, SshSigError::BadSignature);

        let err = verify(&armored, NAMESPACE, MESSAGE, &other).expect_err("other key");
        assert!(err.to_string().contains(&key.fingerprint()), "{err}");
        assert!(err.to_string().contains("not the approver's key"), "{err}");

        for (name, parsed) in [("key.pub", &key), ("other.pub", &other)] {
            let (ok, listing) = run(&keygen, &dir.0, &["-l", "-f", name], None);
            assert!(ok, "ssh-keygen -l failed");
            assert_eq!(listing.split_whitespace().nth(1), Some(parsed.fingerprint().as_str()));
        }

        // With -O hashalg=sha256 where this ssh-keygen supports it (OpenSSH 8.9 and later).
        std::fs::remove_file(dir.path("msg.sig")).expect("remove msg.sig");
        let (ok, _) =
            run(&keygen, &dir.0, &["-Y", "sign", "-n", NAMESPACE, "-O", "hashalg=sha256", "-f", "key", "msg"], None);
        if ok {
            let armored = dir.read("msg.sig");
            let blob = dearmor(&armored).expect("dearmor");
            assert_eq!(ParsedSig::parse(&blob).map(|p| p.hash_alg.to_vec()).ok(), Some(b"sha256".to_vec()));
            assert_eq!(verify(&armored, NAMESPACE, MESSAGE, &key), Ok(()));
            assert_eq!(verify(&armored, NAMESPACE, b"other", &key), Err(SshSigError::BadSignature));
        }
    }

    #[test]
    fn sshsig_rust_made_signatures_are_accepted_by_ssh_keygen() {
        // Proves the test vectors built here (plain and sk) follow OpenSSH's format: ssh-keygen verifies them.
        let Some(keygen) = ssh_keygen() else { return };
        let dir = ScratchDir::new("cross");
        std::fs::write(dir.path("msg"), MESSAGE).expect("write message");
        let signer = signing_key(3);
        let cases = [
            (
                "plain.sig",
                "plain.pub",
                armor(&ed25519_blob(&signer, NAMESPACE, "sha512", MESSAGE)),
                SshPublicKey::Ed25519(signer.verifying_key().to_bytes()),
            ),
            ("sk.sig", "sk.pub", armor(&sk_blob(&signer, 0x01, 7, 7, MESSAGE)), sk_key(&signer)),
        ];
        for (sig_name, pub_name, armored, key) in cases {
            std::fs::write(dir.path(sig_name), &armored).expect("write sig");
            std::fs::write(dir.path(pub_name), format!("{} test\n", key.to_line())).expect("write pub");
            let (ok, _) = run(
                &keygen,
                &dir.0,
                &["-Y", "check-novalidate", "-n", NAMESPACE, "-s", sig_name],
                Some(&dir.path("msg")),
            );
            assert!(ok, "ssh-keygen -Y check-novalidate refused {sig_name}");
            let (ok, listing) = run(&keygen, &dir.0, &["-l", "-f", pub_name], None);
            assert!(ok, "ssh-keygen -l refused {pub_name}");
            assert_eq!(listing.split_whitespace().nth(1), Some(key.fingerprint().as_str()));
            assert_eq!(verify(&armored, NAMESPACE, MESSAGE, &key), Ok(()));
        }
    }

    #[test]
    fn sshsig_sk_signature_with_user_presence_verifies() {
        // Proves an sk-ssh-ed25519 signature with the user-presence flag verifies and names its signer.
        let signer = signing_key(9);
        let key = sk_key(&signer);
        let armored = armor(&sk_blob(&signer, 0x01, 7, 7, MESSAGE));
        assert!(armored.lines().all(|line| line.len() <= 70));
        assert_eq!(verify(&armored, NAMESPACE, MESSAGE, &key), Ok(()));
        assert_eq!(signer_of(&armored), Ok(key.clone()));
        assert_eq!(verify(&armored, NAMESPACE, b"tampered", &key), Err(SshSigError::BadSignature));
        let plain = SshPublicKey::Ed25519(signer.verifying_key().to_bytes());
        assert!(matches!(verify(&armored, NAMESPACE, MESSAGE, &plain), Err(SshSigError::WrongKey { .. })));
        let other_app = SshPublicKey::SkEd25519 { key: signer.verifying_key().to_bytes(), application: "ssh:x".into() };
        assert!(matches!(verify(&armored, NAMESPACE, MESSAGE, &other_app), Err(SshSigError::WrongKey { .. })));
    }

    #[test]
    fn sshsig_sk_signature_without_user_presence_is_refused() {
        // Proves a validly signed sk signature whose flags lack user presence (0x01) is refused with a clear error.
        let signer = signing_key(9);
        let armored = armor(&sk_blob(&signer, 0x00, 7, 7, MESSAGE));
        let err = verify(&armored, NAMESPACE, MESSAGE, &sk_key(&signer)).expect_err("no user presence");
        assert_eq!(err, SshSigError::NoUserPresence);
        assert!(err.to_string().contains("user presence (touch)"), "{err}");
        // Other flag bits (user verification 0x04) do not stand in for presence, nor hinder it.
        let armored = armor(&sk_blob(&signer, 0x04, 7, 7, MESSAGE));
        assert_eq!(verify(&armored, NAMESPACE, MESSAGE, &sk_key(&signer)), Err(SshSigError::NoUserPresence));
        let armored = armor(&sk_blob(&signer, 0x05, 7, 7, MESSAGE));
        assert_eq!(verify(&armored, NAMESPACE, MESSAGE, &sk_key(&signer)), Ok(()));
    }

    #[test]
    fn sshsig_sk_signature_with_changed_counter_fails() {
        // Proves the sk counter is covered by the signature: changing it after signing breaks verification.
        let signer = signing_key(9);
        let armored = armor(&sk_blob(&signer, 0x01, 7, 8, MESSAGE));
        assert_eq!(verify(&armored, NAMESPACE, MESSAGE, &sk_key(&signer)), Err(SshSigError::BadSignature));
        // So is the flags byte: a signature without presence cannot be upgraded by flipping the flag.
        let mut blob = sk_blob(&signer, 0x00, 7, 7, MESSAGE);
        let flags_at = blob.len() - 5;
        blob[flags_at] = 0x01;
        assert_eq!(verify(&armor(&blob), NAMESPACE, MESSAGE, &sk_key(&signer)), Err(SshSigError::BadSignature));
    }

    #[test]
    fn sshsig_public_key_lines_round_trip() {
        // Proves parse/to_line/to_blob round-trip for both key types, comments are ignored, and type mismatches are caught.
        let signer = signing_key(5);
        let plain = SshPublicKey::Ed25519(signer.verifying_key().to_bytes());
        for key in [plain.clone(), sk_key(&signer)] {
            let line = key.to_line();
            assert_eq!(SshPublicKey::parse(&line), Ok(key.clone()));
            assert_eq!(SshPublicKey::parse(&format!("  {line} alice@laptop with spaces\n")), Ok(key.clone()));
            assert!(key.fingerprint().starts_with("SHA256:") && !key.fingerprint().ends_with('='));
            assert_eq!(key.fingerprint().len(), "SHA256:".len() + 43);
        }
        assert!(plain.to_line().starts_with("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI"));
        assert!(sk_key(&signer)
            .to_line()
            .starts_with("sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29t"));
        let swapped = format!("{SK_SSH_ED25519} {}", plain.to_line().split(' ').nth(1).unwrap_or_default());
        assert!(matches!(SshPublicKey::parse(&swapped), Err(SshSigError::KeyTypeMismatch { .. })));
    }

    #[test]
    fn sshsig_other_key_types_are_refused() {
        // Proves ssh-rsa, ecdsa and sk-ecdsa keys, private keys and garbage lines are refused with a helpful error.
        let rsa = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDDHr/jh2Jy4yALcK4JyWbVkPRaWmhck3IgCoeOO3z1e2dBowLh64QAM+Qb72pxekALga2oi4GvT+TlWNhzPH4V4yM1YjEPg/Cha1GjQJ7H6pw2ZqMdJ6URsV7eyYM6oiM4c2DQp3WjRcWqWrtnDzHoXGZTHKw78cXbCB8+7E8Mbw== user@host";
        let err = SshPublicKey::parse(rsa).expect_err("rsa refused");
        assert_eq!(err, SshSigError::UnsupportedKeyType("\"ssh-rsa\"".into()));
        assert!(err.to_string().contains("only Ed25519 keys are accepted"), "{err}");
        for word in ["ecdsa-sha2-nistp256", "sk-ecdsa-sha2-nistp256@openssh.com", "ssh-dss"] {
            let err = SshPublicKey::parse(&format!("{word} AAAA")).expect_err("type refused");
            assert!(err.to_string().contains("only Ed25519 keys are accepted"), "{err}");
        }
        // An ssh-rsa blob behind an ssh-ed25519 word, and blobs of unknown types.
        let mut blob = Vec::new();
        put_string(&mut blob, b"ssh-rsa");
        put_string(&mut blob, &[1, 0, 1]);
        let line = format!("ssh-ed25519 {}", STANDARD.encode(&blob));
        assert!(matches!(SshPublicKey::parse(&line), Err(SshSigError::UnsupportedKeyType(_))));
        let cases = [
            "",
            "   \n",
            "ssh-ed25519",
            "ssh-ed25519 !!!notbase64",
            "ssh-ed25519 AAAA",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA==",
            "command=\"x\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5",
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU=\n-----END OPENSSH PRIVATE KEY-----",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA== one\nssh-ed25519 AAAA two",
        ];
        for case in cases {
            assert!(SshPublicKey::parse(case).is_err(), "accepted {case:?}");
        }
        let huge = format!("ssh-ed25519 {}", "A".repeat(MAX_KEY_LINE_LEN));
        assert!(matches!(SshPublicKey::parse(&huge), Err(SshSigError::TooLong { .. })));
        // A small-order key (the identity point) and a non-point are refused.
        let identity = {
            let mut b = [0u8; 32];
            b[0] = 1;
            b
        };
        let non_point = (0u8..=255)
            .map(|y| [y; 32])
            .find(|b| VerifyingKey::from_bytes(b).is_err())
            .expect("some repeated byte is not a curve point");
        for bytes in [identity, non_point] {
            let mut blob = Vec::new();
            put_string(&mut blob, SSH_ED25519.as_bytes());
            put_string(&mut blob, &bytes);
            let line = format!("ssh-ed25519 {}", STANDARD.encode(&blob));
            assert!(matches!(SshPublicKey::parse(&line), Err(SshSigError::InvalidKey(_))), "{line}");
        }
        // Trailing bytes after the key.
        let mut blob = SshPublicKey::Ed25519(signing_key(5).verifying_key().to_bytes()).to_blob();
        blob.push(0);
        let line = format!("ssh-ed25519 {}", STANDARD.encode(&blob));
        assert_eq!(SshPublicKey::parse(&line), Err(SshSigError::TrailingData("public key")));
    }

    #[test]
    fn sshsig_garbage_signatures_are_refused_without_panics() {
        // Proves malformed armor, base64, magic, version, reserved, hash and trailing data all give errors, never panics.
        let signer = signing_key(1);
        let key = SshPublicKey::Ed25519(signer.verifying_key().to_bytes());
        let good = ed25519_blob(&signer, NAMESPACE, "sha512", MESSAGE);
        assert_eq!(verify(&armor(&good), NAMESPACE, MESSAGE, &key), Ok(()));

        let check = |armored: &str| verify(armored, NAMESPACE, MESSAGE, &key);
        assert_eq!(check(""), Err(SshSigError::NotArmored));
        assert_eq!(check("hello"), Err(SshSigError::NotArmored));
        assert_eq!(check(&STANDARD.encode(&good)), Err(SshSigError::NotArmored));
        assert_eq!(check(&format!("{BEGIN_ARMOR}\n{}\n", STANDARD.encode(&good))), Err(SshSigError::MissingFooter));
        assert_eq!(check(&format!("{}junk", armor(&good))), Err(SshSigError::TrailingText));
        assert!(matches!(check(&format!("{BEGIN_ARMOR}\n{END_ARMOR}\n")), Err(SshSigError::BadBase64(_))));
        assert!(matches!(check(&format!("{BEGIN_ARMOR}\nU1NIU0lH*@!\n{END_ARMOR}\n")), Err(SshSigError::BadBase64(_))));
        assert!(matches!(check(&"A".repeat(MAX_ARMORED_LEN + 1)), Err(SshSigError::TooLong { .. })));
        // CRLF line endings and missing padding are tolerated.
        assert_eq!(check(&armor(&good).replace('\n', "\r\n")), Ok(()));
        assert_eq!(check(&armor(&good).replace('=', "")), Ok(()));

        let mut wrong_magic = good.clone();
        wrong_magic[0] = b'X';
        assert_eq!(check(&armor(&wrong_magic)), Err(SshSigError::BadMagic));
        assert_eq!(check(&armor(b"SSH")), Err(SshSigError::BadMagic));

        let sig_field = |blob: &[u8]| {
            let parsed = ParsedSig::parse(blob).expect("parse good blob");
            parsed.signature.to_vec()
        };
        let sig = sig_field(&good);
        let v2 = sshsig_blob(2, &key, NAMESPACE, b"", "sha512", &sig);
        assert_eq!(check(&armor(&v2)), Err(SshSigError::UnsupportedVersion(2)));
        let reserved = sshsig_blob(1, &key, NAMESPACE, b"x", "sha512", &sig);
        assert_eq!(check(&armor(&reserved)), Err(SshSigError::NonEmptyReserved));
        let md5 = sshsig_blob(1, &key, NAMESPACE, b"", "md5", &sig);
        assert_eq!(check(&armor(&md5)), Err(SshSigError::UnsupportedHash("\"md5\"".into())));
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(check(&armor(&trailing)), Err(SshSigError::TrailingData("signature")));
        let mut inner = sig.clone();
        inner.push(0);
        let inner_trailing = sshsig_blob(1, &key, NAMESPACE, b"", "sha512", &inner);
        assert_eq!(check(&armor(&inner_trailing)), Err(SshSigError::TrailingData("inner signature")));
        let mut short = Vec::new();
        put_string(&mut short, SSH_ED25519.as_bytes());
        put_string(&mut short, &[0u8; 63]);
        let short = sshsig_blob(1, &key, NAMESPACE, b"", "sha512", &short);
        assert_eq!(check(&armor(&short)), Err(SshSigError::BadSignatureLength(63)));
        let mut sk_typed = Vec::new();
        put_string(&mut sk_typed, SK_SSH_ED25519.as_bytes());
        put_string(&mut sk_typed, &[0u8; 64]);
        let sk_typed = sshsig_blob(1, &key, NAMESPACE, b"", "sha512", &sk_typed);
        assert!(matches!(check(&armor(&sk_typed)), Err(SshSigError::SignatureTypeMismatch { .. })));

        // A huge declared string length is refused before anything is read or allocated.
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&1u32.to_be_bytes());
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(check(&armor(&huge)), Err(SshSigError::FieldTooLong { .. })));
        assert!(signer_of(&armor(&huge)).is_err());

        // Every truncation is refused.
        for len in 0..good.len() {
            let armored = armor(&good[..len]);
            assert!(check(&armored).is_err(), "truncation to {len} accepted");
            assert!(signer_of(&armored).is_err(), "signer_of accepted truncation to {len}");
        }
    }

    #[test]
    fn sshsig_every_byte_flip_is_refused() {
        // Proves no single-byte change anywhere in a plain or sk SSHSIG blob still verifies (and none panics).
        let signer = signing_key(2);
        let plain = SshPublicKey::Ed25519(signer.verifying_key().to_bytes());
        let cases = [
            (ed25519_blob(&signer, NAMESPACE, "sha256", MESSAGE), plain),
            (sk_blob(&signer, 1, 7, 7, MESSAGE), sk_key(&signer)),
        ];
        for (blob, key) in cases {
            assert_eq!(verify(&armor(&blob), NAMESPACE, MESSAGE, &key), Ok(()));
            for at in 0..blob.len() {
                for mask in [0x01u8, 0x80] {
                    let mut flipped = blob.clone();
                    flipped[at] ^= mask;
                    assert!(
                        verify(&armor(&flipped), NAMESPACE, MESSAGE, &key).is_err(),
                        "flip {mask:#x} at {at} accepted"
                    );
                }
            }
        }
    }

    #[test]
    fn sshsig_non_canonical_and_foreign_blobs_are_refused() {
        // Proves key blobs ssh-key 0.6 would still decode (a key field that swallows the application) and
        // signatures by other key types are refused, with the type named, in lines and in signatures alike.
        let signer = signing_key(8);
        let key = sk_key(&signer);
        let mut swallowing = Vec::new();
        put_string(&mut swallowing, SK_SSH_ED25519.as_bytes());
        let mut field = signer.verifying_key().to_bytes().to_vec();
        put_string(&mut field, b"ssh:");
        put_string(&mut swallowing, &field);
        let line = format!("{SK_SSH_ED25519} {}", STANDARD.encode(&swallowing));
        assert!(matches!(SshPublicKey::parse(&line), Err(SshSigError::InvalidKey(_))), "{line}");
        let sig = sk_blob(&signer, 0x01, 7, 7, MESSAGE);
        let sig_field = ParsedSig::parse(&sig).expect("parse").signature.to_vec();
        let mut forged = MAGIC.to_vec();
        forged.extend_from_slice(&SIG_VERSION.to_be_bytes());
        put_string(&mut forged, &swallowing);
        for field in [NAMESPACE.as_bytes(), b"", b"sha512", &sig_field] {
            put_string(&mut forged, field);
        }
        assert!(matches!(signer_of(&armor(&forged)), Err(SshSigError::InvalidKey(_))));
        assert!(matches!(verify(&armor(&forged), NAMESPACE, MESSAGE, &key), Err(SshSigError::InvalidKey(_))));

        // A signature whose embedded key is ECDSA names the type.
        let mut ecdsa = Vec::new();
        put_string(&mut ecdsa, b"ecdsa-sha2-nistp256");
        put_string(&mut ecdsa, b"nistp256");
        put_string(&mut ecdsa, &[4; 65]);
        let mut foreign = MAGIC.to_vec();
        foreign.extend_from_slice(&SIG_VERSION.to_be_bytes());
        put_string(&mut foreign, &ecdsa);
        for field in [NAMESPACE.as_bytes(), b"", b"sha512", &sig_field] {
            put_string(&mut foreign, field);
        }
        let err = signer_of(&armor(&foreign)).expect_err("ecdsa refused");
        assert_eq!(err, SshSigError::UnsupportedKeyType("\"ecdsa-sha2-nistp256\"".into()));
        assert!(err.to_string().contains("only Ed25519 keys are accepted"), "{err}");

        // An sk signature cut before its counter, and an empty namespace.
        let mut cut = sig_field[..sig_field.len() - 2].to_vec();
        let cut_sig = sshsig_blob(SIG_VERSION, &key, NAMESPACE, b"", "sha512", &cut);
        assert_eq!(
            verify(&armor(&cut_sig), NAMESPACE, MESSAGE, &key),
            Err(SshSigError::Truncated { blob: "inner signature", field: "counter" })
        );
        cut.truncate(cut.len() - 3);
        let cut_sig = sshsig_blob(SIG_VERSION, &key, NAMESPACE, b"", "sha512", &cut);
        assert_eq!(
            verify(&armor(&cut_sig), NAMESPACE, MESSAGE, &key),
            Err(SshSigError::Truncated { blob: "inner signature", field: "flags" })
        );
        let unnamed = sshsig_blob(SIG_VERSION, &key, "", b"", "sha512", &sig_field);
        assert_eq!(verify(&armor(&unnamed), "", MESSAGE, &key), Err(SshSigError::EmptyNamespace));
    }

    #[test]
    fn sshsig_error_messages_say_what_to_do() {
        // Proves the namespace, wrong-key and hostile-namespace errors read as specified and stay short.
        let signer = signing_key(4);
        let key = SshPublicKey::Ed25519(signer.verifying_key().to_bytes());
        let armored = armor(&ed25519_blob(&signer, "git", "sha512", MESSAGE));
        let err = verify(&armored, "synod-approval@v1", MESSAGE, &key).expect_err("namespace");
        assert_eq!(
            err.to_string(),
            "signature was made for namespace \"git\", expected \"synod-approval@v1\": \
             sign with ssh-keygen -Y sign -n synod-approval@v1"
        );
        let other = SshPublicKey::Ed25519(signing_key(6).verifying_key().to_bytes());
        let err = verify(&armored, "git", MESSAGE, &other).expect_err("key");
        assert!(err
            .to_string()
            .starts_with(&format!("signature was made by key {} which is not the approver's key", key.fingerprint())));
        let hostile = format!("\u{1b}[31m{}\n", "x".repeat(1000));
        let armored = armor(&ed25519_blob(&signer, &hostile, "sha512", MESSAGE));
        let err = verify(&armored, "git", MESSAGE, &key).expect_err("namespace");
        assert!(err.to_string().len() < 300 && !err.to_string().contains('\u{1b}'), "{err}");
    }

    #[test]
    fn sshsig_armor_matches_ssh_keygen_byte_for_byte() {
        // Proves the armor Synod writes for a cluster signature is byte for byte what `ssh-keygen -Y sign`
        // writes with the same key (Ed25519 is deterministic), and that it reads back and verifies by hash.
        let Some(keygen) = ssh_keygen() else { return };
        let dir = ScratchDir::new("armor");
        let (ok, _) = run(&keygen, &dir.0, &["-t", "ed25519", "-N", "", "-q", "-C", "cluster", "-f", "key"], None);
        assert!(ok, "ssh-keygen -t ed25519 failed");
        std::fs::write(dir.path("msg"), MESSAGE).expect("write message");
        let (ok, _) = run(&keygen, &dir.0, &["-Y", "sign", "-n", "file", "-f", "key", "msg"], None);
        assert!(ok, "ssh-keygen -Y sign failed");
        let private = ssh_key::PrivateKey::from_openssh(dir.read("key")).expect("ssh-key reads the private key");
        let pair = private.key_data().ed25519().expect("an Ed25519 key");
        let signer = SigningKey::from_bytes(&pair.private.to_bytes());
        let public = signer.verifying_key().to_bytes();
        let data =
            SignedData { namespace: "file".into(), hash_alg: "sha512".into(), hash: Sha512::digest(MESSAGE).to_vec() };
        let signature = signer.sign(&data.to_bytes()).to_bytes();
        let armored = armor_ed25519(&public, "file", HashAlg::Sha512, &signature).expect("armor");
        assert_eq!(armored, dir.read("msg.sig"));
        assert!(armored.lines().all(|line| line.len() <= 70), "{armored}");

        let read = SshSignature::read(&armored).expect("read");
        let key = SshPublicKey::Ed25519(public);
        assert_eq!(
            (read.signer.clone(), read.namespace.as_slice(), read.hash_alg),
            (key.clone(), &b"file"[..], HashAlg::Sha512)
        );
        assert_eq!(read.verify_hash("file", &data.hash, &key), Ok(()));
        assert_eq!(verify(&armored, "file", MESSAGE, &key), Ok(()));
        let mut other = data.hash.clone();
        other[0] ^= 1;
        assert_eq!(read.verify_hash("file", &other, &key), Err(SshSigError::BadSignature));
        assert!(matches!(read.verify_hash("git", &data.hash, &key), Err(SshSigError::WrongNamespace { .. })));
        let stranger = SshPublicKey::Ed25519(signing_key(5).verifying_key().to_bytes());
        assert!(matches!(read.verify_hash("file", &data.hash, &stranger), Err(SshSigError::WrongKey { .. })));
        assert_eq!(armor_ed25519(&public, "", HashAlg::Sha512, &signature), Err(SshSigError::EmptyNamespace));
    }

    #[test]
    fn sshsig_signature_read_refuses_other_hashes_and_damage() {
        // Proves reading a signature for verification by hash refuses unknown hash names and damaged armor.
        let signer = signing_key(11);
        let armored = armor(&ed25519_blob(&signer, "file", "sha1", MESSAGE));
        assert_eq!(SshSignature::read(&armored), Err(SshSigError::UnsupportedHash("\"sha1\"".into())));
        let armored = armor(&ed25519_blob(&signer, "file", "sha256", MESSAGE));
        let read = SshSignature::read(&armored).expect("sha256 reads");
        let key = SshPublicKey::Ed25519(signer.verifying_key().to_bytes());
        assert_eq!(read.verify_hash("file", &Sha256::digest(MESSAGE), &key), Ok(()));
        assert_eq!(SshSignature::read(&armored[..armored.len() / 2]), Err(SshSigError::MissingFooter));
        assert_eq!(SshSignature::read("not a signature"), Err(SshSigError::NotArmored));
    }
}

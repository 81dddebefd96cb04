//! The key-encryption key (KEK) seam: the one key that seals every secret a
//! node keeps at rest (FROST key packages, DKG secret state), so that a copied
//! data directory holds only ciphertext.
//!
//! Three backends implement [`Kek`], all with AES-256-GCM:
//! - `file` ([`SoftKek::from_file`]): 32 random bytes in a file of mode 0600.
//!   The development default that `synod dev` writes; a production node says
//!   loudly that it runs with it.
//! - `passphrase` ([`SoftKek::from_passphrase`]): a key derived with Argon2id
//!   from an operator's passphrase and a salt kept in the data directory.
//! - `pkcs11` ([`Pkcs11Kek`]): a sensitive, non-extractable AES-256 key on a
//!   PKCS#11 token (an HSM; SoftHSM2 in tests and `synod dev --hsm softhsm`).
//!   Sealing and unsealing happen inside the token; the key never leaves it.
//!
//! No HSM computes FROST, so an unsealed share lives in this process's memory
//! while it is used, in a [`Zeroizing`] buffer that is wiped when dropped.
//!
//! # Blob layout
//!
//! [`SealedBlob::to_bytes`] writes `version (1) ‖ backend tag (1) ‖ IV (12) ‖
//! ciphertext ‖ GCM tag (16)`. The GCM associated data is `version ‖ backend
//! tag ‖ caller's AAD`, so the header is authenticated too: a blob cannot be
//! relabelled as another backend's or another version's.
//!
//! # The random-IV limit, and why Synod stays far below it
//!
//! Every seal draws a fresh random 96-bit IV from the OS RNG. GCM is broken if
//! an IV ever repeats under one key, and with random IVs NIST SP 800-38D caps
//! one key at 2^32 encryptions (keeping the chance of any repeat below 2^-32).
//! Synod seals a secret when a key is created (DKG), refreshed or re-shared,
//! and once per data directory for the KEK check: a handful of seals per key
//! version, never one per signature (signing nonces are kept in memory only and
//! never sealed). A node that sealed a new secret every second for a century
//! would reach about 3.2e9 seals, still below 2^32 (4.3e9); real nodes seal
//! thousands of times in their lives. If anything is ever sealed per
//! operation, it must go under a per-purpose data key, not under this KEK.
//!
//! # Blocking
//!
//! Every method blocks (an HSM round trip, an Argon2id derivation, a file
//! read). Async callers run them with `seams::run_blocking` or
//! `tokio::task::spawn_blocking`.

pub mod pkcs11;
pub mod soft;

use std::fmt;
use std::path::PathBuf;

use rand_core::RngCore;
use zeroize::Zeroizing;

pub use pkcs11::{init_softhsm_token, Pkcs11Config, Pkcs11Kek, SOFTHSM_MODULE};
pub use soft::SoftKek;

/// Bytes of a KEK (AES-256).
pub const KEY_BYTES: usize = 32;
/// Bytes of a GCM IV (96 bits, the size GCM processes without hashing it).
pub const IV_BYTES: usize = 12;
/// Bytes of a GCM authentication tag (128 bits, the full tag).
pub const TAG_BYTES: usize = 16;
/// The blob layout version this code writes and reads.
pub const BLOB_VERSION: u8 = 1;
/// Bytes a [`SealedBlob`] adds to its plaintext: version, backend tag, IV and GCM tag.
pub const BLOB_OVERHEAD_BYTES: usize = 2 + IV_BYTES + TAG_BYTES;

/// The key-encryption key of a node. Implementations are blocking and thread-safe.
pub trait Kek: Send + Sync + 'static {
    /// The backend's name as config and health show it: `"file"`, `"passphrase"` or `"pkcs11"`.
    fn backend(&self) -> &'static str;

    /// A description for logs and errors, without secrets, e.g.
    /// `pkcs11 token "synod-node-1", key "synod-kek"`.
    fn describe(&self) -> String;

    /// Encrypts `plaintext` with AES-256-GCM under a fresh random IV, binding `aad`.
    fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<SealedBlob, KekError>;

    /// Decrypts `blob` if it was sealed under this KEK with this exact `aad`.
    fn unseal(&self, aad: &[u8], blob: &SealedBlob) -> Result<Zeroizing<Vec<u8>>, KekError>;
}

/// Which backend sealed a blob, kept in the blob so that a node started with
/// another backend says so instead of reporting a generic failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A KEK read from a key file.
    File,
    /// A KEK derived from a passphrase with Argon2id.
    Passphrase,
    /// A KEK inside a PKCS#11 token.
    Pkcs11,
}

impl Backend {
    /// The name used in config, health and messages.
    pub fn name(self) -> &'static str {
        match self {
            Backend::File => "file",
            Backend::Passphrase => "passphrase",
            Backend::Pkcs11 => "pkcs11",
        }
    }

    fn tag(self) -> u8 {
        match self {
            Backend::File => 1,
            Backend::Passphrase => 2,
            Backend::Pkcs11 => 3,
        }
    }

    fn from_tag(tag: u8) -> Option<Backend> {
        match tag {
            1 => Some(Backend::File),
            2 => Some(Backend::Passphrase),
            3 => Some(Backend::Pkcs11),
            _ => None,
        }
    }
}

/// A secret sealed under a KEK. Not secret itself: IV and ciphertext may be
/// stored anywhere.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedBlob {
    /// The backend that sealed it; authenticated as part of the GCM associated data.
    pub backend: Backend,
    /// The random GCM IV drawn for this seal.
    pub iv: [u8; IV_BYTES],
    /// The ciphertext followed by the 16-byte GCM tag.
    pub ciphertext: Vec<u8>,
}

/// Prints lengths, not bytes, to keep logs short.
impl fmt::Debug for SealedBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedBlob")
            .field("backend", &self.backend)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

impl SealedBlob {
    /// `version ‖ backend tag ‖ IV ‖ ciphertext ‖ tag`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + IV_BYTES + self.ciphertext.len());
        out.push(BLOB_VERSION);
        out.push(self.backend.tag());
        out.extend_from_slice(&self.iv);
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// Parses [`SealedBlob::to_bytes`] output; anything else is refused with a
    /// message that says which part is wrong.
    pub fn from_bytes(bytes: &[u8]) -> Result<SealedBlob, KekError> {
        if bytes.len() < BLOB_OVERHEAD_BYTES {
            return Err(KekError::Malformed {
                detail: format!("{} bytes, shorter than the {BLOB_OVERHEAD_BYTES} bytes of an empty blob", bytes.len()),
            });
        }
        if bytes[0] != BLOB_VERSION {
            return Err(KekError::UnsupportedVersion { version: bytes[0] });
        }
        let Some(backend) = Backend::from_tag(bytes[1]) else {
            return Err(KekError::Malformed { detail: format!("unknown backend tag {}", bytes[1]) });
        };
        let mut iv = [0u8; IV_BYTES];
        iv.copy_from_slice(&bytes[2..2 + IV_BYTES]);
        Ok(SealedBlob { backend, iv, ciphertext: bytes[2 + IV_BYTES..].to_vec() })
    }
}

/// The GCM associated data of a blob: its header, then the caller's AAD.
pub(crate) fn gcm_aad(backend: Backend, aad: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + aad.len());
    out.push(BLOB_VERSION);
    out.push(backend.tag());
    out.extend_from_slice(aad);
    out
}

/// A fresh random IV from the OS RNG.
pub(crate) fn fresh_iv() -> Result<[u8; IV_BYTES], KekError> {
    let mut iv = [0u8; IV_BYTES];
    rand_core::OsRng.try_fill_bytes(&mut iv).map_err(|e| KekError::Random { detail: e.to_string() })?;
    Ok(iv)
}

/// Refuses a blob sealed by another backend before trying to open it.
pub(crate) fn check_backend(using: Backend, blob: &SealedBlob) -> Result<(), KekError> {
    if blob.backend != using {
        return Err(KekError::BackendMismatch { sealed_with: blob.backend.name(), using: using.name() });
    }
    Ok(())
}

/// Why a KEK operation failed. Messages say what failed and what to do; none
/// carries key bytes, a PIN, a passphrase or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum KekError {
    #[error(
        "the sealed secret does not open under this KEK: wrong key, wrong passphrase, another node's \
         data, or tampering; start the node with the KEK that sealed its data directory"
    )]
    Unseal,

    #[error(
        "the sealed secret was sealed by the {sealed_with} KEK backend but this node uses the {using} \
         backend, so it does not open; configure the KEK that sealed this data directory (the node \
         never falls back from one backend to another)"
    )]
    BackendMismatch { sealed_with: &'static str, using: &'static str },

    #[error(
        "a sealed blob is malformed ({detail}); the data directory is corrupted or was written by \
         something else: restore it from a backup"
    )]
    Malformed { detail: String },

    #[error(
        "a sealed blob has layout version {version}, but this synod reads version {BLOB_VERSION} only; \
         run the synod version that wrote this data directory"
    )]
    UnsupportedVersion { version: u8 },

    #[error("sealing failed ({detail}); report this as a Synod bug")]
    Seal { detail: String },

    #[error("could not draw random bytes from the operating system ({detail}); check /dev/urandom and getrandom")]
    Random { detail: String },

    #[error(
        "the KEK file {} does not exist; point the config at the file that sealed this data directory \
         (create a new one with `synod kek generate-file --out {}` only for a new, empty data directory)",
        path.display(), path.display()
    )]
    KeyFileMissing { path: PathBuf },

    #[error(
        "the KEK file {} has mode {mode:03o}: group or others can access it; run `chmod 600 {}` and \
         consider the key exposed if others could read it",
        path.display(), path.display()
    )]
    KeyFileMode { path: PathBuf, mode: u32 },

    #[error(
        "the KEK file {} holds {len} bytes, not a KEK: expected 32 raw bytes or 64 hex characters \
         (with an optional newline); check that the config points at the right file",
        path.display()
    )]
    KeyFileFormat { path: PathBuf, len: usize },

    #[error(
        "the KEK file {} already exists and is never overwritten (it may seal a data directory); \
         choose another path or remove the old file yourself if it is truly unused",
        path.display()
    )]
    KeyFileExists { path: PathBuf },

    #[error("could not {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("the KEK passphrase is empty; set a long passphrase (its environment variable or the prompt)")]
    PassphraseEmpty,

    #[error("deriving the KEK from the passphrase with Argon2id failed ({detail}); report this as a Synod bug")]
    Derive { detail: String },

    #[error(
        "the PKCS#11 module {} does not exist; install it (SoftHSM2: `apt-get install softhsm2`) or fix \
         the module path in the config",
        path.display()
    )]
    ModuleNotFound { path: PathBuf },

    #[error(
        "the PKCS#11 module {} could not be loaded or initialised ({detail}); check that it is a PKCS#11 \
         library for this architecture and that its own configuration (SoftHSM2: SOFTHSM2_CONF) is valid",
        path.display()
    )]
    Module { path: PathBuf, detail: String },

    #[error(
        "no PKCS#11 token labelled {label:?} in {}; tokens present: {}; fix token_label in the config, \
         or initialise the token (SoftHSM2: `softhsm2-util --init-token --free --label {label}`, with \
         SOFTHSM2_CONF naming its configuration)",
        module.display(), list_labels(present)
    )]
    TokenNotFound { module: PathBuf, label: String, present: Vec<String> },

    #[error(
        "{count} PKCS#11 tokens in {} are labelled {label:?}, so the KEK's token is ambiguous; give each \
         token a unique label",
        module.display()
    )]
    TokenAmbiguous { module: PathBuf, label: String, count: usize },

    #[error("the user PIN for PKCS#11 token {token:?} is incorrect; check the PIN's environment variable or file")]
    PinIncorrect { token: String },

    #[error(
        "the user PIN for PKCS#11 token {token:?} is locked after too many wrong attempts; the token's \
         security officer must unlock it"
    )]
    PinLocked { token: String },

    #[error(
        "PKCS#11 token {token:?} has no AES key labelled {key:?}; create it once with \
         `synod kek pkcs11-keygen --module {} --token-label {token} --key-label {key}` (an existing \
         data directory needs the key that sealed it, not a new one)",
        module.display()
    )]
    KeyNotFound { module: PathBuf, token: String, key: String },

    #[error(
        "PKCS#11 token {token:?} already holds a key labelled {key:?}; it is never replaced, since it may \
         seal a data directory; choose another key label"
    )]
    KeyExists { token: String, key: String },

    #[error("PKCS#11 token {token:?} holds {count} AES keys labelled {key:?}; give the KEK a unique label")]
    KeyAmbiguous { token: String, key: String, count: usize },

    #[error(
        "the key {key:?} on PKCS#11 token {token:?} is not fit to be a KEK ({detail}); create a new one \
         with `synod kek pkcs11-keygen` for a new data directory"
    )]
    KeyUnfit { token: String, key: String, detail: String },

    #[error(
        "PKCS#11 {operation} failed on token {token:?} ({detail}); check that the token is present and \
         the module works, then restart the node"
    )]
    Pkcs11 { token: String, operation: &'static str, detail: String },

    #[error("{detail}")]
    SoftHsm { detail: String },
}

fn list_labels(labels: &[String]) -> String {
    if labels.is_empty() {
        return "none".into();
    }
    labels.iter().map(|l| format!("{l:?}")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kek_blob_round_trips_through_bytes() {
        // Proves that the blob layout is version, backend tag, IV, ciphertext and parses back unchanged.
        let blob = SealedBlob { backend: Backend::Pkcs11, iv: [7; IV_BYTES], ciphertext: vec![9; 20] };
        let bytes = blob.to_bytes();
        assert_eq!(bytes[..2], [1, 3]);
        assert_eq!(bytes[2..14], [7; IV_BYTES]);
        assert_eq!(bytes.len(), 2 + IV_BYTES + 20);
        assert_eq!(SealedBlob::from_bytes(&bytes).unwrap(), blob);
    }

    #[test]
    fn kek_blob_garbage_is_refused_clearly() {
        // Proves that short input, another version and an unknown backend tag each give a clear error, no panic.
        let short = SealedBlob::from_bytes(&[1, 1, 0]).unwrap_err();
        assert!(matches!(short, KekError::Malformed { .. }) && short.to_string().contains("3 bytes"), "{short}");
        let mut bytes = SealedBlob { backend: Backend::File, iv: [0; IV_BYTES], ciphertext: vec![0; 16] }.to_bytes();
        bytes[0] = 9;
        let version = SealedBlob::from_bytes(&bytes).unwrap_err();
        assert!(matches!(version, KekError::UnsupportedVersion { version: 9 }), "{version}");
        bytes[0] = 1;
        bytes[1] = 0xEE;
        let tag = SealedBlob::from_bytes(&bytes).unwrap_err();
        assert!(tag.to_string().contains("unknown backend tag 238"), "{tag}");
        assert!(SealedBlob::from_bytes(&[]).is_err());
    }
}

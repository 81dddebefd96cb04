//! The software KEKs: a 256-bit key read from a file (the development default
//! that `synod dev` writes), or derived with Argon2id from a passphrase.
//!
//! Both seal with AES-256-GCM in this process, so the key sits in this
//! process's memory, in a zeroizing buffer. That is the difference from the
//! PKCS#11 backend, whose key never leaves the token.
//!
//! Argon2id parameters (pinned: changing them changes every derived KEK, so
//! they belong to the blob format): 64 MiB of memory, 3 passes, 1 lane, 32-byte
//! output. That is RFC 9106's second recommended setting with one lane (the
//! `argon2` crate runs lanes one after another without threads, so more lanes
//! would only cost time). It takes about 170 ms on this kind of machine
//! (2 cores; measured by `soft_passphrase_derivation_cost_is_bounded`), paid
//! once per node start.

use std::fmt;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand_core::RngCore;
use zeroize::Zeroizing;

use super::{check_backend, fresh_iv, gcm_aad, Backend, Kek, KekError, SealedBlob, KEY_BYTES};

/// Argon2id memory cost in KiB (64 MiB).
pub const ARGON2_MEMORY_KIB: u32 = 64 * 1024;
/// Argon2id passes over the memory.
pub const ARGON2_PASSES: u32 = 3;
/// Argon2id lanes.
pub const ARGON2_LANES: u32 = 1;
/// Bytes of the passphrase salt, kept in the data directory (`sealed::passphrase_salt`).
pub const SALT_BYTES: usize = 16;

/// A KEK held in this process: from a key file or a passphrase.
pub struct SoftKek {
    /// The AES-256 key; wiped when the KEK is dropped.
    key: Zeroizing<[u8; KEY_BYTES]>,
    /// `File` or `Passphrase`: recorded in every blob this KEK seals.
    backend: Backend,
    /// Where the key came from, for `describe` (a path or the KDF's name, never key bytes).
    origin: String,
}

impl fmt::Debug for SoftKek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoftKek")
            .field("backend", &self.backend)
            .field("origin", &self.origin)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl SoftKek {
    /// Reads a KEK file: exactly 32 raw bytes, or 64 hex characters with an
    /// optional trailing newline. A file that group or others may access
    /// (`mode & 0o077 != 0`) is refused before it is read.
    pub fn from_file(path: &Path) -> Result<SoftKek, KekError> {
        let io = |action| move |source| KekError::Io { action, path: path.to_path_buf(), source };
        let mut file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(KekError::KeyFileMissing { path: path.to_path_buf() });
            }
            Err(e) => return Err(io("open the KEK file")(e)),
        };
        let mode = file.metadata().map_err(io("read the metadata of the KEK file"))?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(KekError::KeyFileMode { path: path.to_path_buf(), mode: mode & 0o777 });
        }
        // Read at most one byte more than the longest valid file, so a wrong path cannot exhaust memory.
        let mut bytes = Zeroizing::new(Vec::with_capacity(68));
        Read::by_ref(&mut file).take(67).read_to_end(&mut bytes).map_err(io("read the KEK file"))?;
        let key = parse_key(&bytes).ok_or(KekError::KeyFileFormat { path: path.to_path_buf(), len: bytes.len() })?;
        Ok(SoftKek { key, backend: Backend::File, origin: format!("key file {}", path.display()) })
    }

    /// Writes a new random KEK to `path` as 64 hex characters and a newline,
    /// with mode 0600. Never overwrites: an existing file is an error, since it
    /// may seal a data directory. Returns the new KEK.
    pub fn generate_file(path: &Path) -> Result<SoftKek, KekError> {
        let mut key = Zeroizing::new([0u8; KEY_BYTES]);
        rand_core::OsRng.try_fill_bytes(&mut *key).map_err(|e| KekError::Random { detail: e.to_string() })?;
        let mut text = Zeroizing::new(hex::encode(*key));
        text.push('\n');
        crate::files::write_new(path, text.as_bytes(), crate::files::PRIVATE_MODE).map_err(|source| {
            if source.kind() == ErrorKind::AlreadyExists {
                KekError::KeyFileExists { path: path.to_path_buf() }
            } else {
                KekError::Io { action: "write the KEK file", path: path.to_path_buf(), source }
            }
        })?;
        Ok(SoftKek { key, backend: Backend::File, origin: format!("key file {}", path.display()) })
    }

    /// Derives a KEK from `passphrase` and the data directory's `salt` with
    /// Argon2id (see the module doc for the parameters and their cost). The
    /// same passphrase and salt always give the same KEK.
    pub fn from_passphrase(passphrase: &str, salt: &[u8; SALT_BYTES]) -> Result<SoftKek, KekError> {
        if passphrase.is_empty() {
            return Err(KekError::PassphraseEmpty);
        }
        let derive = |e: argon2::Error| KekError::Derive { detail: e.to_string() };
        let params =
            argon2::Params::new(ARGON2_MEMORY_KIB, ARGON2_PASSES, ARGON2_LANES, Some(KEY_BYTES)).map_err(derive)?;
        let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut key = Zeroizing::new([0u8; KEY_BYTES]);
        argon.hash_password_into(passphrase.as_bytes(), salt, &mut *key).map_err(derive)?;
        let origin = format!(
            "passphrase (Argon2id, {} MiB, {ARGON2_PASSES} passes, {ARGON2_LANES} lane)",
            ARGON2_MEMORY_KIB / 1024
        );
        Ok(SoftKek { key, backend: Backend::Passphrase, origin })
    }

    /// A file-backend KEK from key bytes already in memory, for the simulator
    /// and tests, which have no key file. Production reads a file or a passphrase.
    pub fn from_key_bytes(key: Zeroizing<[u8; KEY_BYTES]>) -> SoftKek {
        SoftKek { key, backend: Backend::File, origin: "in-memory key".to_string() }
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new((&*self.key).into())
    }
}

/// 32 raw bytes, or 64 hex characters followed by at most one newline.
fn parse_key(bytes: &[u8]) -> Option<Zeroizing<[u8; KEY_BYTES]>> {
    let mut key = Zeroizing::new([0u8; KEY_BYTES]);
    if bytes.len() == KEY_BYTES {
        key.copy_from_slice(bytes);
        return Some(key);
    }
    let text = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    if text.len() != 2 * KEY_BYTES {
        return None;
    }
    hex::decode_to_slice(text, &mut *key).ok()?;
    Some(key)
}

impl Kek for SoftKek {
    fn backend(&self) -> &'static str {
        self.backend.name()
    }

    fn describe(&self) -> String {
        self.origin.clone()
    }

    fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<SealedBlob, KekError> {
        let iv = fresh_iv()?;
        let aad = gcm_aad(self.backend, aad);
        let ciphertext = self
            .cipher()
            .encrypt(Nonce::from_slice(&iv), Payload { msg: plaintext, aad: &aad })
            // Encryption fails only for inputs beyond GCM's 64 GiB limit.
            .map_err(|_| KekError::Seal {
                detail: format!("AES-GCM refused {} bytes of plaintext", plaintext.len()),
            })?;
        Ok(SealedBlob { backend: self.backend, iv, ciphertext })
    }

    fn unseal(&self, aad: &[u8], blob: &SealedBlob) -> Result<Zeroizing<Vec<u8>>, KekError> {
        check_backend(self.backend, blob)?;
        let aad = gcm_aad(self.backend, aad);
        let plaintext = self
            .cipher()
            .decrypt(Nonce::from_slice(&blob.iv), Payload { msg: &blob.ciphertext, aad: &aad })
            .map_err(|_| KekError::Unseal)?;
        Ok(Zeroizing::new(plaintext))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AAD: &[u8] = b"synod/test-aad";

    fn write_mode(path: &Path, contents: &[u8], mode: u32) {
        std::fs::write(path, contents).expect("write a key file");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod the key file");
    }

    #[test]
    fn soft_file_seal_unseal_round_trip() {
        // Proves that a generated key file (mode 0600, hex) reads back as the same KEK and round-trips a secret.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek.bin");
        let generated = SoftKek::generate_file(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&path).unwrap().len(), 65, "64 hex characters and a newline");
        let read = SoftKek::from_file(&path).unwrap();
        let blob = generated.seal(AAD, b"a key package").unwrap();
        assert_eq!(blob.ciphertext.len(), 13 + 16);
        assert_eq!(&**read.unseal(AAD, &blob).unwrap(), b"a key package");
        assert_eq!(read.backend(), "file");
        assert!(read.describe().contains("kek.bin"), "{}", read.describe());
    }

    #[test]
    fn soft_file_accepts_raw_bytes_and_hex_with_newline() {
        // Proves that 32 raw bytes and 64 hex characters (with or without a newline) give the same KEK.
        let dir = tempfile::tempdir().unwrap();
        let key = [0x5Au8; 32];
        let (raw, hex_nl, hex_bare) = (dir.path().join("raw"), dir.path().join("hexnl"), dir.path().join("hex"));
        write_mode(&raw, &key, 0o600);
        write_mode(&hex_nl, format!("{}\n", hex::encode(key)).as_bytes(), 0o600);
        write_mode(&hex_bare, hex::encode(key).as_bytes(), 0o400);
        let blob = SoftKek::from_file(&raw).unwrap().seal(AAD, b"x").unwrap();
        assert_eq!(&**SoftKek::from_file(&hex_nl).unwrap().unseal(AAD, &blob).unwrap(), b"x");
        assert_eq!(&**SoftKek::from_file(&hex_bare).unwrap().unseal(AAD, &blob).unwrap(), b"x");
    }

    #[test]
    fn soft_file_with_mode_0644_is_refused() {
        // Proves that a key file readable by others is refused with the chmod to run, without being read.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek.bin");
        write_mode(&path, &[1u8; 32], 0o644);
        let error = SoftKek::from_file(&path).unwrap_err();
        assert!(matches!(error, KekError::KeyFileMode { mode: 0o644, .. }), "{error}");
        assert!(error.to_string().contains(&format!("chmod 600 {}", path.display())), "{error}");
        write_mode(&path, &[1u8; 32], 0o640);
        assert!(matches!(SoftKek::from_file(&path), Err(KekError::KeyFileMode { .. })));
    }

    #[test]
    fn soft_file_missing_or_garbled_is_refused_clearly() {
        // Proves that a missing file, a file of the wrong size and bad hex each name the file and say what to do.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek.bin");
        let missing = SoftKek::from_file(&path).unwrap_err();
        assert!(matches!(missing, KekError::KeyFileMissing { .. }), "{missing}");
        assert!(missing.to_string().contains("kek.bin") && missing.to_string().contains("does not exist"));
        write_mode(&path, &[1u8; 31], 0o600);
        let short = SoftKek::from_file(&path).unwrap_err();
        assert!(matches!(short, KekError::KeyFileFormat { len: 31, .. }), "{short}");
        write_mode(&path, "zz".repeat(32).as_bytes(), 0o600);
        assert!(matches!(SoftKek::from_file(&path), Err(KekError::KeyFileFormat { len: 64, .. })));
        write_mode(&path, &[b'a'; 4096], 0o600);
        assert!(matches!(SoftKek::from_file(&path), Err(KekError::KeyFileFormat { len: 67, .. })));
    }

    #[test]
    fn soft_generate_file_never_overwrites() {
        // Proves that generating a key file over an existing one is refused and leaves the old key intact.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek.bin");
        SoftKek::generate_file(&path).unwrap();
        let before = std::fs::read(&path).unwrap();
        let error = SoftKek::generate_file(&path).unwrap_err();
        assert!(matches!(error, KekError::KeyFileExists { .. }), "{error}");
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn soft_tampering_wrong_aad_and_wrong_key_give_unseal() {
        // Proves that a flipped ciphertext bit, IV bit or tag bit, another AAD and another key each give Unseal.
        let dir = tempfile::tempdir().unwrap();
        let kek = SoftKek::generate_file(&dir.path().join("a")).unwrap();
        let other = SoftKek::generate_file(&dir.path().join("b")).unwrap();
        let blob = kek.seal(AAD, &[42u8; 134]).unwrap();
        let last = blob.ciphertext.len() - 1;
        for (what, mutate) in [
            ("ciphertext", Box::new(|b: &mut SealedBlob| b.ciphertext[0] ^= 1) as Box<dyn Fn(&mut SealedBlob)>),
            ("tag", Box::new(move |b: &mut SealedBlob| b.ciphertext[last] ^= 0x80)),
            ("iv", Box::new(|b: &mut SealedBlob| b.iv[11] ^= 1)),
            ("truncated", Box::new(|b: &mut SealedBlob| b.ciphertext.truncate(10))),
        ] {
            let mut tampered = blob.clone();
            mutate(&mut tampered);
            assert!(matches!(kek.unseal(AAD, &tampered), Err(KekError::Unseal)), "{what}");
        }
        assert!(matches!(kek.unseal(b"synod/other-aad", &blob), Err(KekError::Unseal)));
        assert!(matches!(other.unseal(AAD, &blob), Err(KekError::Unseal)));
        assert_eq!(kek.unseal(AAD, &blob).unwrap().len(), 134, "the original still opens");
    }

    #[test]
    fn soft_passphrase_is_deterministic_per_salt_and_passphrase() {
        // Proves that one passphrase and salt always derive the same KEK, and another passphrase or salt does not.
        let salt = [3u8; SALT_BYTES];
        let kek = SoftKek::from_passphrase("correct horse battery staple", &salt).unwrap();
        let again = SoftKek::from_passphrase("correct horse battery staple", &salt).unwrap();
        let other = SoftKek::from_passphrase("correct horse battery stapler", &salt).unwrap();
        let salted = SoftKek::from_passphrase("correct horse battery staple", &[4u8; SALT_BYTES]).unwrap();
        let blob = kek.seal(AAD, b"share").unwrap();
        assert_eq!(&**again.unseal(AAD, &blob).unwrap(), b"share");
        assert!(matches!(other.unseal(AAD, &blob), Err(KekError::Unseal)));
        assert!(matches!(salted.unseal(AAD, &blob), Err(KekError::Unseal)));
        assert_eq!(kek.backend(), "passphrase");
        assert!(matches!(SoftKek::from_passphrase("", &salt), Err(KekError::PassphraseEmpty)));
    }

    #[test]
    fn soft_passphrase_derivation_cost_is_bounded() {
        // Proves that one Argon2id derivation with the pinned parameters stays under 2 s (it is paid at each start).
        let started = std::time::Instant::now();
        SoftKek::from_passphrase("a passphrase", &[0u8; SALT_BYTES]).unwrap();
        let elapsed = started.elapsed();
        eprintln!("Argon2id (64 MiB, 3 passes, 1 lane): {} ms", elapsed.as_millis());
        assert!(elapsed < std::time::Duration::from_secs(2), "{elapsed:?}");
    }

    #[test]
    fn soft_blob_of_another_backend_is_refused_by_name() {
        // Proves that a file KEK refuses a passphrase-sealed blob by naming both backends, before trying GCM.
        let dir = tempfile::tempdir().unwrap();
        let file = SoftKek::generate_file(&dir.path().join("k")).unwrap();
        let pass = SoftKek::from_passphrase("p", &[0u8; SALT_BYTES]).unwrap();
        let error = file.unseal(AAD, &pass.seal(AAD, b"s").unwrap()).unwrap_err();
        assert!(matches!(error, KekError::BackendMismatch { sealed_with: "passphrase", using: "file" }), "{error}");
        assert!(error.to_string().contains("does not open"), "{error}");
    }

    #[test]
    fn soft_key_bytes_kek_matches_the_same_key_from_a_file() {
        // Proves that an in-memory KEK (simulator) opens what a key file with the same bytes sealed.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        write_mode(&path, &[9u8; 32], 0o600);
        let blob = SoftKek::from_file(&path).unwrap().seal(AAD, b"s").unwrap();
        let kek = SoftKek::from_key_bytes(Zeroizing::new([9u8; 32]));
        assert_eq!(&**kek.unseal(AAD, &blob).unwrap(), b"s");
        assert_eq!(kek.backend(), "file");
    }

    #[test]
    fn soft_debug_prints_no_key() {
        // Proves that Debug of a soft KEK shows <redacted> and none of the key's hex.
        let key = [0xC3u8; 32];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        write_mode(&path, &key, 0o600);
        let text = format!("{:?}", SoftKek::from_file(&path).unwrap());
        assert!(text.contains("<redacted>") && !text.contains("c3c3") && !text.contains("195"), "{text}");
    }
}

//! The PKCS#11 KEK: a sensitive, non-extractable AES-256 key on a token (an
//! HSM), used with CKM_AES_GCM inside the token. The key never enters this
//! process; only the secrets it seals and unseals do.
//!
//! The token is found by its label, never by slot id (SoftHSM2 renumbers slots
//! when a token is initialised), and the key by its label on that token.
//!
//! # Threads and blocking
//!
//! A cryptoki `Session` is `Send` but not `Sync`, so [`Pkcs11Kek`] keeps its
//! one session behind a `Mutex`: calls from several threads take turns. Every
//! call is a blocking round trip to the token (about 15 µs per GCM operation on
//! SoftHSM2, far more on a network HSM); async callers must run them with
//! `seams::run_blocking` / `tokio::task::spawn_blocking`.
//!
//! # One library initialisation per process
//!
//! `C_Initialize` may run once per process and module, so the loaded modules
//! live in a process-wide map keyed by the module's canonical path; every
//! [`Pkcs11Kek`] of that module shares its context, and `C_Finalize` is never
//! called (the process exit releases the module). Login is per token and per
//! process in PKCS#11: a second [`Pkcs11Kek`] on a token this process has
//! already logged in to is let in on `CKR_USER_ALREADY_LOGGED_IN` without its
//! PIN being checked again. A node opens one KEK, so this only matters to tests.
//!
//! # SoftHSM2 and its configuration file
//!
//! SoftHSM2 reads the `SOFTHSM2_CONF` environment variable once, inside
//! `C_Initialize`, to find its token directory. Each Synod node is its own OS
//! process, so a node gets its own configuration through its environment (the
//! process that starts it sets `SOFTHSM2_CONF`, as `synod dev` does). Nothing
//! here sets the variable: changing a running process's environment races
//! with every thread that reads it. Tests that run in one process use one
//! configuration and one token directory, which holds many tokens, one label
//! each. [`init_softhsm_token`] writes such a configuration and adds a token to
//! it; it is for tests and `synod dev --hsm softhsm`, and puts the PINs on
//! `softhsm2-util`'s command line, visible to `ps` on the machine.
//!
//! SoftHSM2 2.6 lists the tokens that exist when a process initialises it and
//! never rescans: a process that has already loaded the module does not see a
//! token created afterwards. Create tokens first (or in another process, such
//! as a `synod kek pkcs11-keygen` child), then load the module.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

use super::{check_backend, fresh_iv, gcm_aad, Backend, Kek, KekError, SealedBlob, KEY_BYTES, TAG_BYTES};

/// The PKCS#11 module of Debian's softhsm2 package.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// PKCS#11 token labels are at most 32 bytes (blank-padded on the token).
pub const TOKEN_LABEL_BYTES_MAX: usize = 32;

/// Where the KEK lives on a PKCS#11 token and how to log in.
#[derive(Clone)]
pub struct Pkcs11Config {
    /// The PKCS#11 module (shared library), e.g. [`SOFTHSM_MODULE`].
    pub module: PathBuf,
    /// The token's label; slot ids are not stable, labels are.
    pub token_label: String,
    /// The label of the AES-256 key on the token.
    pub key_label: String,
    /// The token's user PIN; wiped when dropped, never printed.
    pub pin: Zeroizing<String>,
}

impl fmt::Debug for Pkcs11Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Config")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("key_label", &self.key_label)
            .field("pin", &"<redacted>")
            .finish()
    }
}

/// A KEK inside a PKCS#11 token, with a logged-in session on it.
pub struct Pkcs11Kek {
    /// The one user session; cryptoki sessions are not `Sync`, so calls take turns.
    session: Mutex<Session>,
    /// The AES key's handle, valid while `session` is open.
    key: ObjectHandle,
    /// The module's path, for `describe`.
    module: PathBuf,
    /// The token's label, for `describe` and errors.
    token_label: String,
    /// The key's label, for `describe`.
    key_label: String,
}

impl fmt::Debug for Pkcs11Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Kek")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("key_label", &self.key_label)
            .finish_non_exhaustive()
    }
}

impl Pkcs11Kek {
    /// Loads the module (once per process), finds the token by label, opens a
    /// read-write user session, logs in and finds the AES key by label. The key
    /// must be sensitive, non-extractable, 256-bit and allowed to encrypt and
    /// decrypt; anything else is refused. Blocking.
    pub fn open(cfg: &Pkcs11Config) -> Result<Pkcs11Kek, KekError> {
        let session = logged_in_session(cfg)?;
        let key = find_key(&session, cfg)?;
        check_key_fit(&session, key, cfg)?;
        Ok(Pkcs11Kek {
            session: Mutex::new(session),
            key,
            module: cfg.module.clone(),
            token_label: cfg.token_label.clone(),
            key_label: cfg.key_label.clone(),
        })
    }

    /// Creates the KEK on the token: an AES-256 token object labelled
    /// `key_label`, sensitive and non-extractable (it can never be read or
    /// wrapped out), allowed only to encrypt and decrypt. Refuses when a key
    /// with that label exists, since it may seal a data directory. Blocking.
    pub fn generate_key(cfg: &Pkcs11Config) -> Result<(), KekError> {
        let session = logged_in_session(cfg)?;
        let existing = session.find_objects(&key_template(cfg)).map_err(op(cfg, "find the key"))?;
        if !existing.is_empty() {
            return Err(KekError::KeyExists { token: cfg.token_label.clone(), key: cfg.key_label.clone() });
        }
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen((KEY_BYTES as CkUlong).into()),
            Attribute::Label(cfg.key_label.as_bytes().to_vec()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Sign(false),
            Attribute::Verify(false),
            Attribute::Derive(false),
        ];
        session.generate_key(&Mechanism::AesKeyGen, &template).map_err(op(cfg, "generate the key"))?;
        tracing::info!(token = %cfg.token_label, key = %cfg.key_label, "created a PKCS#11 KEK");
        Ok(())
    }

    fn session(&self) -> MutexGuard<'_, Session> {
        // A panic cannot leave the session half-used: every call below is one
        // complete C_Encrypt / C_Decrypt, so a poisoned lock is still usable.
        self.session.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn op_error(&self, operation: &'static str) -> impl Fn(CkError) -> KekError + '_ {
        move |e| KekError::Pkcs11 { token: self.token_label.clone(), operation, detail: detail(&e) }
    }
}

/// `CK_ULONG` (cryptoki's `Ulong` converts from it).
type CkUlong = std::os::raw::c_ulong;

impl Kek for Pkcs11Kek {
    fn backend(&self) -> &'static str {
        Backend::Pkcs11.name()
    }

    fn describe(&self) -> String {
        format!("pkcs11 token {:?}, key {:?} (module {})", self.token_label, self.key_label, self.module.display())
    }

    fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<SealedBlob, KekError> {
        let iv = fresh_iv()?;
        let aad = gcm_aad(Backend::Pkcs11, aad);
        let mut iv_param = iv;
        let params = GcmParams::new(&mut iv_param, &aad, (8 * TAG_BYTES as CkUlong).into())
            .map_err(self.op_error("prepare AES-GCM"))?;
        let ciphertext = self
            .session()
            .encrypt(&Mechanism::AesGcm(params), self.key, plaintext)
            .map_err(self.op_error("encrypt"))?;
        if ciphertext.len() != plaintext.len() + TAG_BYTES {
            return Err(KekError::Pkcs11 {
                token: self.token_label.clone(),
                operation: "encrypt",
                detail: format!(
                    "AES-GCM returned {} bytes for {} bytes of plaintext, expected the 16-byte tag appended",
                    ciphertext.len(),
                    plaintext.len()
                ),
            });
        }
        Ok(SealedBlob { backend: Backend::Pkcs11, iv, ciphertext })
    }

    fn unseal(&self, aad: &[u8], blob: &SealedBlob) -> Result<Zeroizing<Vec<u8>>, KekError> {
        check_backend(Backend::Pkcs11, blob)?;
        if blob.ciphertext.len() < TAG_BYTES {
            return Err(KekError::Unseal);
        }
        let aad = gcm_aad(Backend::Pkcs11, aad);
        let mut iv = blob.iv;
        let params = GcmParams::new(&mut iv, &aad, (8 * TAG_BYTES as CkUlong).into())
            .map_err(self.op_error("prepare AES-GCM"))?;
        match self.session().decrypt(&Mechanism::AesGcm(params), self.key, &blob.ciphertext) {
            Ok(plaintext) => Ok(Zeroizing::new(plaintext)),
            // A failed tag check comes back as CKR_GENERAL_ERROR from SoftHSM2 and as
            // CKR_ENCRYPTED_DATA_INVALID from others; all of these mean "does not open".
            Err(CkError::Pkcs11(
                RvError::GeneralError
                | RvError::EncryptedDataInvalid
                | RvError::EncryptedDataLenRange
                | RvError::DataInvalid
                | RvError::DataLenRange,
                _,
            )) => Err(KekError::Unseal),
            Err(e) => Err(self.op_error("decrypt")(e)),
        }
    }
}

/// The loaded and initialised modules of this process, by canonical path.
static CONTEXTS: Mutex<BTreeMap<PathBuf, Pkcs11>> = Mutex::new(BTreeMap::new());

/// The process's context for `module`, loading and initialising it on first use.
fn context(module: &Path) -> Result<Pkcs11, KekError> {
    let canonical = match std::fs::canonicalize(module) {
        Ok(path) => path,
        Err(_) => return Err(KekError::ModuleNotFound { path: module.to_path_buf() }),
    };
    let mut contexts = CONTEXTS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(ctx) = contexts.get(&canonical) {
        return Ok(ctx.clone());
    }
    let module_error = |e: CkError| KekError::Module { path: module.to_path_buf(), detail: detail(&e) };
    let ctx = Pkcs11::new(&canonical).map_err(module_error)?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        // Initialised already by other code in this process that loaded the same library.
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(module_error(e)),
    }
    contexts.insert(canonical, ctx.clone());
    Ok(ctx)
}

/// The slot of the one token labelled `cfg.token_label`.
fn find_token(ctx: &Pkcs11, cfg: &Pkcs11Config) -> Result<Slot, KekError> {
    let module_error = |e: CkError| KekError::Module { path: cfg.module.clone(), detail: detail(&e) };
    let mut present = Vec::new();
    let mut matches = Vec::new();
    for slot in ctx.get_slots_with_initialized_token().map_err(module_error)? {
        let label = ctx.get_token_info(slot).map_err(module_error)?.label().to_string();
        if label == cfg.token_label {
            matches.push(slot);
        }
        present.push(label);
    }
    match matches.as_slice() {
        [slot] => Ok(*slot),
        [] => Err(KekError::TokenNotFound { module: cfg.module.clone(), label: cfg.token_label.clone(), present }),
        _ => Err(KekError::TokenAmbiguous {
            module: cfg.module.clone(),
            label: cfg.token_label.clone(),
            count: matches.len(),
        }),
    }
}

/// A read-write session on the configured token, logged in as the user.
fn logged_in_session(cfg: &Pkcs11Config) -> Result<Session, KekError> {
    let ctx = context(&cfg.module)?;
    let slot = find_token(&ctx, cfg)?;
    let session = ctx.open_rw_session(slot).map_err(op(cfg, "open a session"))?;
    let pin = AuthPin::from(cfg.pin.as_str());
    match session.login(UserType::User, Some(&pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
        Err(CkError::Pkcs11(RvError::PinIncorrect | RvError::PinLenRange | RvError::PinInvalid, _)) => {
            Err(KekError::PinIncorrect { token: cfg.token_label.clone() })
        }
        Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(KekError::PinLocked { token: cfg.token_label.clone() }),
        Err(e) => Err(op(cfg, "log in")(e)),
    }
}

/// Matches the AES secret keys labelled `cfg.key_label`.
fn key_template(cfg: &Pkcs11Config) -> [Attribute; 3] {
    [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Label(cfg.key_label.as_bytes().to_vec()),
    ]
}

fn find_key(session: &Session, cfg: &Pkcs11Config) -> Result<ObjectHandle, KekError> {
    let keys = session.find_objects(&key_template(cfg)).map_err(op(cfg, "find the key"))?;
    match keys.as_slice() {
        [key] => Ok(*key),
        [] => Err(KekError::KeyNotFound {
            module: cfg.module.clone(),
            token: cfg.token_label.clone(),
            key: cfg.key_label.clone(),
        }),
        _ => Err(KekError::KeyAmbiguous {
            token: cfg.token_label.clone(),
            key: cfg.key_label.clone(),
            count: keys.len(),
        }),
    }
}

/// Refuses a key that could leave the token or is not AES-256 for GCM.
fn check_key_fit(session: &Session, key: ObjectHandle, cfg: &Pkcs11Config) -> Result<(), KekError> {
    let wanted = [
        AttributeType::Sensitive,
        AttributeType::Extractable,
        AttributeType::Encrypt,
        AttributeType::Decrypt,
        AttributeType::ValueLen,
    ];
    let attributes = session.get_attributes(key, &wanted).map_err(op(cfg, "read the key's attributes"))?;
    let (mut sensitive, mut extractable, mut encrypt, mut decrypt, mut bytes) = (false, true, false, false, 0u64);
    for attribute in attributes {
        match attribute {
            Attribute::Sensitive(v) => sensitive = v,
            Attribute::Extractable(v) => extractable = v,
            Attribute::Encrypt(v) => encrypt = v,
            Attribute::Decrypt(v) => decrypt = v,
            Attribute::ValueLen(v) => bytes = v.into(),
            _ => {}
        }
    }
    let problem = if !sensitive || extractable {
        Some("it is not sensitive and non-extractable, so it could be read out of the token".to_string())
    } else if !(encrypt && decrypt) {
        Some("it is not allowed to both encrypt and decrypt".to_string())
    } else if bytes != KEY_BYTES as u64 {
        Some(format!("it is {} bits long, not 256", bytes * 8))
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(detail) => Err(KekError::KeyUnfit { token: cfg.token_label.clone(), key: cfg.key_label.clone(), detail }),
    }
}

/// A cryptoki error as a short, secret-free detail: which call, which return value.
fn detail(error: &CkError) -> String {
    match error {
        CkError::Pkcs11(rv, function) => format!("C_{function:?} returned {rv:?}"),
        other => other.to_string(),
    }
}

fn op<'a>(cfg: &'a Pkcs11Config, operation: &'static str) -> impl Fn(CkError) -> KekError + 'a {
    move |e| KekError::Pkcs11 { token: cfg.token_label.clone(), operation, detail: detail(&e) }
}

/// Sets up a SoftHSM2 token for tests and `synod dev --hsm softhsm`: writes
/// `dir/softhsm2.conf` (token directory `dir/tokens`, file object store,
/// errors-only logging) unless it is there already, then runs
/// `softhsm2-util --init-token --free` with `SOFTHSM2_CONF` pointing at it.
/// One directory holds any number of tokens, one label each; a label that is
/// already there is refused. Returns the configuration's path, which a
/// process must have in its `SOFTHSM2_CONF` before it first opens the module.
pub fn init_softhsm_token(dir: &Path, label: &str, so_pin: &str, user_pin: &str) -> Result<PathBuf, KekError> {
    if label.is_empty() || label.len() > TOKEN_LABEL_BYTES_MAX {
        return Err(KekError::SoftHsm {
            detail: format!("token label {label:?} must be 1 to {TOKEN_LABEL_BYTES_MAX} bytes long; choose another"),
        });
    }
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).map_err(|source| KekError::Io {
        action: "create the SoftHSM2 token directory",
        path: tokens.clone(),
        source,
    })?;
    let conf = dir.join("softhsm2.conf");
    let text = format!(
        "# SoftHSM2 configuration written by synod.\ndirectories.tokendir = {}\nobjectstore.backend = file\n\
         log.level = ERROR\n",
        tokens.display()
    );
    if std::fs::read_to_string(&conf).ok().as_deref() != Some(text.as_str()) {
        std::fs::write(&conf, &text).map_err(|source| KekError::Io {
            action: "write the SoftHSM2 configuration",
            path: conf.clone(),
            source,
        })?;
    }
    let labels = softhsm_labels(&conf)?;
    if labels.iter().any(|l| l == label) {
        return Err(KekError::SoftHsm {
            detail: format!(
                "a SoftHSM2 token labelled {label:?} already exists in {}; labels must be unique, choose another",
                tokens.display()
            ),
        });
    }
    softhsm_util(&conf, &["--init-token", "--free", "--label", label, "--so-pin", so_pin, "--pin", user_pin])?;
    Ok(conf)
}

/// The labels of the initialised tokens under `conf`.
fn softhsm_labels(conf: &Path) -> Result<Vec<String>, KekError> {
    let out = softhsm_util(conf, &["--show-slots"])?;
    Ok(out
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Label:"))
        .map(|label| label.trim().to_string())
        .filter(|label| !label.is_empty())
        .collect())
}

/// Runs `softhsm2-util` with `SOFTHSM2_CONF=conf`, returning its standard output.
fn softhsm_util(conf: &Path, args: &[&str]) -> Result<String, KekError> {
    let out = Command::new("softhsm2-util").args(args).env("SOFTHSM2_CONF", conf).output().map_err(|e| {
        KekError::SoftHsm {
            detail: format!("could not run softhsm2-util ({e}); install SoftHSM2: `apt-get install softhsm2`"),
        }
    })?;
    if !out.status.success() {
        // softhsm2-util never echoes PINs, so its messages are safe to show.
        return Err(KekError::SoftHsm {
            detail: format!(
                "softhsm2-util {} failed ({}): {}",
                args.first().copied().unwrap_or_default(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A SoftHSM2 set-up shared by every test of this process: one configuration,
/// one token directory and one token per test (PKCS#11 login is per token and
/// per process, so tests that share a token would see each other's login).
///
/// SoftHSM2 2.6 lists the tokens that exist when the module is initialised and
/// never rescans, so every test token is created up front, before any test
/// loads the module: a new test adds its label to [`test_hsm::LABELS`].
#[cfg(test)]
pub(crate) mod test_hsm {
    use std::path::PathBuf;
    use std::sync::OnceLock;

    use super::*;

    /// The user PIN of every test token.
    pub(crate) const PIN: &str = "4321-synod";
    const SO_PIN: &str = "12345678";

    /// One token per test that uses one.
    const LABELS: &[&str] = &[
        "round-trip",
        "tamper",
        "tamper-other",
        "versus-soft",
        "extract",
        "present-token",
        "errors",
        "twice",
        "unique-label",
        "threads",
        "sealed-round-trip",
        "copy-origin",
        "copy-thief",
        "reseal-target",
    ];

    struct Hsm {
        /// Kept for the life of the process: the module reads its tokens from here.
        dir: tempfile::TempDir,
        conf: PathBuf,
    }

    static HSM: OnceLock<Hsm> = OnceLock::new();

    fn hsm() -> &'static Hsm {
        HSM.get_or_init(|| {
            assert!(
                Path::new(SOFTHSM_MODULE).exists(),
                "the pkcs11 tests need SoftHSM2 ({SOFTHSM_MODULE}); install it with `apt-get install -y softhsm2` \
                 (CI installs it; these tests never skip)"
            );
            let dir = tempfile::Builder::new().prefix("synod-softhsm-test").tempdir().expect("create a temp dir");
            let mut conf = PathBuf::new();
            for label in LABELS {
                conf = init_softhsm_token(dir.path(), label, SO_PIN, PIN).expect("initialise a SoftHSM2 token");
            }
            // Set before any test loads the module (they all come through here first), so C_Initialize reads it.
            std::env::set_var("SOFTHSM2_CONF", &conf);
            Hsm { dir, conf }
        })
    }

    /// Adds a token labelled `label` to the shared token directory (this process will not see it).
    pub(crate) fn init(label: &str) -> Result<PathBuf, KekError> {
        init_softhsm_token(hsm().dir.path(), label, SO_PIN, PIN)
    }

    /// The config naming the test token `label` (one of [`LABELS`]), whose key may not exist yet.
    pub(crate) fn token(label: &str) -> Pkcs11Config {
        assert!(LABELS.contains(&label), "add {label:?} to test_hsm::LABELS");
        assert!(hsm().conf.exists());
        Pkcs11Config {
            module: PathBuf::from(SOFTHSM_MODULE),
            token_label: label.to_string(),
            key_label: "synod-kek".to_string(),
            pin: Zeroizing::new(PIN.to_string()),
        }
    }

    /// The test token `label` with a KEK generated on it, opened.
    pub(crate) fn kek(label: &str) -> (Pkcs11Config, Pkcs11Kek) {
        let cfg = token(label);
        Pkcs11Kek::generate_key(&cfg).expect("generate the KEK");
        let kek = Pkcs11Kek::open(&cfg).expect("open the KEK");
        (cfg, kek)
    }
}

#[cfg(test)]
mod tests {
    use super::test_hsm;
    use super::*;
    use crate::kek::SoftKek;

    const AAD: &[u8] = b"synod/test-aad";

    #[test]
    fn pkcs11_seal_unseal_round_trip() {
        // Proves that a SoftHSM2 token key seals and unseals inside the token, with a fresh IV each time.
        let (_cfg, kek) = test_hsm::kek("round-trip");
        let secret = [0xABu8; 134];
        let first = kek.seal(AAD, &secret).unwrap();
        let second = kek.seal(AAD, &secret).unwrap();
        assert_ne!(first.iv, second.iv, "every seal draws a fresh IV");
        assert_ne!(first.ciphertext, second.ciphertext);
        assert_eq!(first.ciphertext.len(), 134 + TAG_BYTES);
        assert_eq!(&**kek.unseal(AAD, &first).unwrap(), &secret);
        assert_eq!(&**kek.unseal(AAD, &second).unwrap(), &secret);
        assert_eq!(kek.backend(), "pkcs11");
        assert!(kek.describe().contains("\"round-trip\"") && kek.describe().contains("synod-kek"));
    }

    #[test]
    fn pkcs11_tampering_wrong_aad_and_wrong_key_give_unseal() {
        // Proves that tampered ciphertext, tag or IV, another AAD, and another token's key each give Unseal.
        let (_cfg, kek) = test_hsm::kek("tamper");
        let (_other_cfg, other) = test_hsm::kek("tamper-other");
        let blob = kek.seal(AAD, b"share bytes").unwrap();
        let last = blob.ciphertext.len() - 1;
        let mut ciphertext = blob.clone();
        ciphertext.ciphertext[0] ^= 1;
        let mut tag = blob.clone();
        tag.ciphertext[last] ^= 1;
        let mut iv = blob.clone();
        iv.iv[0] ^= 1;
        let mut short = blob.clone();
        short.ciphertext.truncate(3);
        for (what, tampered) in [("ciphertext", ciphertext), ("tag", tag), ("iv", iv), ("short", short)] {
            let error = kek.unseal(AAD, &tampered).unwrap_err();
            assert!(matches!(error, KekError::Unseal), "{what}: {error}");
        }
        assert!(matches!(kek.unseal(b"another aad", &blob), Err(KekError::Unseal)));
        assert!(matches!(other.unseal(AAD, &blob), Err(KekError::Unseal)));
        assert_eq!(&**kek.unseal(AAD, &blob).unwrap(), b"share bytes", "the session still works");
    }

    #[test]
    fn pkcs11_blob_does_not_open_with_a_soft_kek() {
        // Proves that a token-sealed blob is refused by a file KEK, naming both backends.
        let (_cfg, kek) = test_hsm::kek("versus-soft");
        let dir = tempfile::tempdir().unwrap();
        let soft = SoftKek::generate_file(&dir.path().join("kek")).unwrap();
        let blob = kek.seal(AAD, b"s").unwrap();
        let error = soft.unseal(AAD, &blob).unwrap_err();
        assert!(matches!(error, KekError::BackendMismatch { sealed_with: "pkcs11", using: "file" }), "{error}");
        // Relabelling the blob as a file blob does not help: the backend tag is authenticated.
        let relabelled = SealedBlob { backend: Backend::File, ..blob };
        assert!(matches!(soft.unseal(AAD, &relabelled), Err(KekError::Unseal)));
    }

    #[test]
    fn pkcs11_key_is_not_extractable() {
        // Proves that the generated key's value cannot be read (CKA_VALUE is withheld) nor wrapped out of the token.
        let (_cfg, kek) = test_hsm::kek("extract");
        let session = kek.session();
        let attributes = session
            .get_attributes(
                kek.key,
                &[AttributeType::Value, AttributeType::Sensitive, AttributeType::Extractable, AttributeType::Token],
            )
            .unwrap();
        assert!(!attributes.iter().any(|a| matches!(a, Attribute::Value(_))), "CKA_VALUE must not be readable");
        assert!(attributes.iter().any(|a| matches!(a, Attribute::Sensitive(true))), "{attributes:?}");
        assert!(attributes.iter().any(|a| matches!(a, Attribute::Extractable(false))), "{attributes:?}");
        assert!(attributes.iter().any(|a| matches!(a, Attribute::Token(true))), "{attributes:?}");
        let wrapping = session
            .generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::AES),
                    Attribute::ValueLen((KEY_BYTES as CkUlong).into()),
                    Attribute::Token(false),
                    Attribute::Wrap(true),
                ],
            )
            .unwrap();
        let wrapped = session.wrap_key(&Mechanism::AesKeyWrapPad, wrapping, kek.key);
        assert!(
            matches!(wrapped, Err(CkError::Pkcs11(RvError::KeyUnextractable | RvError::KeyNotWrappable, _))),
            "wrapping the KEK must fail: {:?}",
            wrapped.map(|w| w.len())
        );
    }

    #[test]
    fn pkcs11_missing_token_lists_the_labels_present() {
        // Proves that a wrong token label is refused with an error that names it and lists the labels present.
        let mut cfg = test_hsm::token("present-token");
        cfg.token_label = "no-such-token".into();
        let error = Pkcs11Kek::open(&cfg).unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, KekError::TokenNotFound { .. }), "{text}");
        assert!(text.contains("\"no-such-token\"") && text.contains("\"present-token\""), "{text}");
    }

    #[test]
    fn pkcs11_wrong_pin_missing_key_and_missing_module_are_clear() {
        // Proves that a wrong PIN, an absent key and an absent module each give their own error saying what to do.
        let mut cfg = test_hsm::token("errors");
        let missing_key = Pkcs11Kek::open(&cfg).unwrap_err();
        assert!(matches!(missing_key, KekError::KeyNotFound { .. }), "{missing_key}");
        assert!(missing_key.to_string().contains("synod kek pkcs11-keygen"), "{missing_key}");
        cfg.pin = Zeroizing::new("9999-wrong".into());
        let wrong_pin = Pkcs11Kek::open(&cfg).unwrap_err();
        assert!(matches!(wrong_pin, KekError::PinIncorrect { .. }), "{wrong_pin}");
        assert!(!wrong_pin.to_string().contains("9999"), "no PIN in messages: {wrong_pin}");
        cfg.module = PathBuf::from("/nonexistent/libpkcs11.so");
        let no_module = Pkcs11Kek::open(&cfg).unwrap_err();
        assert!(matches!(no_module, KekError::ModuleNotFound { .. }), "{no_module}");
        assert!(no_module.to_string().contains("/nonexistent/libpkcs11.so"), "{no_module}");
    }

    #[test]
    fn pkcs11_generate_key_refuses_an_existing_label() {
        // Proves that generating a second key with the KEK's label is refused and the first key still works.
        let (cfg, kek) = test_hsm::kek("twice");
        let blob = kek.seal(AAD, b"first").unwrap();
        let error = Pkcs11Kek::generate_key(&cfg).unwrap_err();
        assert!(matches!(error, KekError::KeyExists { .. }), "{error}");
        assert_eq!(&**Pkcs11Kek::open(&cfg).unwrap().unseal(AAD, &blob).unwrap(), b"first");
    }

    #[test]
    fn pkcs11_duplicate_token_label_is_refused_at_init() {
        // Proves that init_softhsm_token refuses a label that already exists instead of making an ambiguous second token.
        let error = test_hsm::init("unique-label").unwrap_err();
        assert!(error.to_string().contains("already exists"), "{error}");
    }

    #[test]
    fn pkcs11_config_debug_redacts_the_pin() {
        // Proves that Debug of a PKCS#11 config never prints the PIN.
        let cfg = Pkcs11Config {
            module: PathBuf::from(SOFTHSM_MODULE),
            token_label: "t".into(),
            key_label: "k".into(),
            pin: Zeroizing::new("s3cret-pin".into()),
        };
        let text = format!("{cfg:?}");
        assert!(text.contains("<redacted>") && !text.contains("s3cret"), "{text}");
    }

    #[test]
    fn pkcs11_kek_is_shared_across_threads() {
        // Proves that one Pkcs11Kek serves concurrent seal/unseal calls from several threads (the session is locked).
        let (_cfg, kek) = test_hsm::kek("threads");
        let kek = std::sync::Arc::new(kek);
        let handles: Vec<_> = (0..4u8)
            .map(|i| {
                let kek = kek.clone();
                std::thread::spawn(move || {
                    for j in 0..50u8 {
                        let blob = kek.seal(&[i], &[j; 40]).unwrap();
                        assert_eq!(&**kek.unseal(&[i], &blob).unwrap(), &[j; 40]);
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
    }
}

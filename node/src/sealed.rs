//! The sealed-secret store: every secret a node keeps at rest (FROST key
//! packages, DKG secret state) is sealed under the node's KEK and stored in
//! [`Tree::Sealed`] of the node's [`Store`], so the data directory holds only
//! ciphertext.
//!
//! Each secret is bound by the GCM associated data to what it is for: the
//! cluster, the node, the key id, the key version, the share generation and
//! the purpose ([`SealContext::aad`]). A sealed blob copied to another key,
//! node, generation or purpose, in this data directory or another, does not
//! open. The store key is derived from the same fields, so each context has
//! exactly one slot.
//!
//! At start-up the node calls [`SealedStore::check_kek`]: the first time it
//! seals a random canary, later it unseals it, so a wrong passphrase, key
//! file or token stops the node before it tries to use a share.
//!
//! Records in [`Tree::Sealed`]: prefix 0 holds this module's own records (the
//! KEK check canary, the passphrase salt), prefix 1 the sealed secrets.
//! Every call blocks (store fsync, HSM round trip); async callers use
//! `seams::run_blocking`. Signing nonces are never stored here: they live in
//! memory only.

use std::fmt;
use std::sync::Arc;

use rand_core::RngCore;
use zeroize::Zeroizing;

use crate::kek::soft::SALT_BYTES;
use crate::kek::{Kek, KekError, SealedBlob, BLOB_OVERHEAD_BYTES};
use crate::store::{Durability, Op, Store, StoreError, Tree, VALUE_BYTES_MAX};

/// The domain tag that opens every AAD, so a seal for another use of the KEK can never collide.
pub const AAD_DOMAIN: &[u8] = b"synod/seal/v1\0";

/// The largest secret that can be sealed: its blob must fit in one store value.
pub const PLAINTEXT_BYTES_MAX: usize = VALUE_BYTES_MAX - BLOB_OVERHEAD_BYTES;

/// The longest cluster id or key id in a context; keeps store keys far below `KEY_BYTES_MAX`.
pub const CONTEXT_ID_BYTES_MAX: usize = 256;

/// Store-key prefix of this module's own records.
const PREFIX_INTERNAL: u8 = 0;
/// Store-key prefix of sealed secrets.
const PREFIX_SECRET: u8 = 1;
/// The KEK check record (prefix [`PREFIX_INTERNAL`]).
const KEK_CHECK_KEY: &[u8] = b"\0kek-check";
/// The passphrase salt record (prefix [`PREFIX_INTERNAL`]).
const SALT_KEY: &[u8] = b"\0passphrase-salt";
const _: () = assert!(KEK_CHECK_KEY[0] == PREFIX_INTERNAL && SALT_KEY[0] == PREFIX_INTERNAL);
/// Version byte of the KEK check and salt records.
const RECORD_VERSION: u8 = 1;
/// Bytes of the KEK check canary.
const CANARY_BYTES: usize = 32;

/// What a sealed secret is, bound into its AAD and store key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Purpose {
    /// A FROST `KeyPackage` (the node's signing share and the group's verifying key).
    KeyPackage,
    /// A participant's secret state between DKG rounds.
    DkgSecret,
    /// The canary of [`SealedStore::check_kek`].
    KekCheck,
}

impl Purpose {
    /// The name bound into the AAD; never change a published one.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::KeyPackage => "key-package",
            Purpose::DkgSecret => "dkg-secret",
            Purpose::KekCheck => "kek-check",
        }
    }

    fn code(self) -> u8 {
        match self {
            Purpose::KeyPackage => 1,
            Purpose::DkgSecret => 2,
            Purpose::KekCheck => 3,
        }
    }
}

/// Everything a sealed secret is bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealContext {
    /// The cluster the secret belongs to (its genesis id).
    pub cluster_id: String,
    /// The node that holds it; another node's blob does not open here.
    pub node_id: u64,
    /// The signing key the secret belongs to.
    pub key_id: String,
    /// The key's version (a rotation makes a new version).
    pub key_version: u32,
    /// The share generation within a version (a refresh makes a new one); 0 before any refresh.
    pub generation: u32,
    /// What the secret is.
    pub purpose: Purpose,
}

impl SealContext {
    /// `"synod/seal/v1\0"`, then each field as a 4-byte big-endian length and
    /// its bytes: cluster id, node id (8 bytes BE), key id, key version (4
    /// bytes BE), generation (4 bytes BE), purpose name. Unambiguous: no two
    /// contexts give the same bytes. Pinned by `sealed_aad_layout_is_pinned`.
    pub fn aad(&self) -> Vec<u8> {
        let mut out = AAD_DOMAIN.to_vec();
        let fields: [&[u8]; 6] = [
            self.cluster_id.as_bytes(),
            &self.node_id.to_be_bytes(),
            self.key_id.as_bytes(),
            &self.key_version.to_be_bytes(),
            &self.generation.to_be_bytes(),
            self.purpose.as_str().as_bytes(),
        ];
        for field in fields {
            out.extend_from_slice(&(field.len() as u32).to_be_bytes());
            out.extend_from_slice(field);
        }
        out
    }

    /// `1 ‖ purpose code ‖ len16 cluster ‖ cluster ‖ node BE ‖ len16 key id ‖ key id ‖ version BE ‖ generation BE`:
    /// secrets of one purpose, cluster, node and key sort together by version and generation.
    fn store_key(&self) -> Vec<u8> {
        let mut out = vec![PREFIX_SECRET, self.purpose.code()];
        out.extend_from_slice(&(self.cluster_id.len() as u16).to_be_bytes());
        out.extend_from_slice(self.cluster_id.as_bytes());
        out.extend_from_slice(&self.node_id.to_be_bytes());
        out.extend_from_slice(&(self.key_id.len() as u16).to_be_bytes());
        out.extend_from_slice(self.key_id.as_bytes());
        out.extend_from_slice(&self.key_version.to_be_bytes());
        out.extend_from_slice(&self.generation.to_be_bytes());
        out
    }

    /// Names the secret in errors and logs (no secret in it).
    fn describe(&self) -> String {
        format!(
            "{} of key {:?} v{} generation {} (node {}, cluster {:?})",
            self.purpose.as_str(),
            self.key_id,
            self.key_version,
            self.generation,
            self.node_id,
            self.cluster_id
        )
    }

    fn validate(&self) -> Result<(), SealError> {
        for (field, value) in [("cluster_id", &self.cluster_id), ("key_id", &self.key_id)] {
            if value.len() > CONTEXT_ID_BYTES_MAX {
                return Err(SealError::ContextField { field, len: value.len(), max: CONTEXT_ID_BYTES_MAX });
            }
        }
        Ok(())
    }
}

/// What [`SealedStore::check_kek`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KekCheck {
    /// A new data directory: the canary was sealed under this KEK and stored.
    Created,
    /// The stored canary opened under this KEK.
    Verified,
}

/// Why a sealed-store call failed. No message carries secret bytes.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(transparent)]
    Kek(#[from] KekError),

    #[error(transparent)]
    Store(#[from] StoreError),

    #[error("could not open the sealed {what}: {source}")]
    Open {
        what: String,
        #[source]
        source: KekError,
    },

    #[error(
        "a secret of {len} bytes cannot be sealed: at most {max} bytes fit in one store value; \
         split it or store it differently"
    )]
    TooLarge { len: usize, max: usize },

    #[error("the seal context's {field} is {len} bytes long, more than the {max} allowed; use a shorter id")]
    ContextField { field: &'static str, len: usize, max: usize },

    #[error(
        "this KEK ({kek}) does not open the data directory's sealed secrets: wrong passphrase, key file or \
         token? ({source}). Start the node with the KEK that sealed this data directory; a new KEK cannot \
         open old secrets"
    )]
    WrongKek {
        kek: String,
        #[source]
        source: KekError,
    },

    #[error(
        "the data directory's KEK check was made for {stored:?}, not {given:?}; this data directory belongs \
         to another node or cluster: use that node's data directory"
    )]
    CheckLabel { stored: String, given: String },

    #[error(
        "the data directory holds sealed secrets but no KEK check record, so whether this KEK ({kek}) is the \
         right one cannot be told; restore the data directory from a backup"
    )]
    CheckMissing { kek: String },

    #[error("the data directory's {record} record is malformed ({detail}); restore the data directory from a backup")]
    Record { record: &'static str, detail: String },
}

/// Secrets sealed under a KEK, kept in a [`Store`].
#[derive(Clone)]
pub struct SealedStore {
    /// Where the blobs live ([`Tree::Sealed`]).
    store: Arc<dyn Store>,
    /// Seals and unseals them.
    kek: Arc<dyn Kek>,
}

impl fmt::Debug for SealedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedStore").field("kek", &self.kek.describe()).finish_non_exhaustive()
    }
}

impl SealedStore {
    /// A sealed store over `store`, sealing with `kek`.
    pub fn new(store: Arc<dyn Store>, kek: Arc<dyn Kek>) -> SealedStore {
        SealedStore { store, kek }
    }

    /// The KEK, for health/status (`backend()`, `describe()`).
    pub fn kek(&self) -> &Arc<dyn Kek> {
        &self.kek
    }

    /// Seals `plaintext` for `ctx` and stores it durably (fsynced before this
    /// returns), replacing any secret of the same context. Blocking.
    pub fn put(&self, ctx: &SealContext, plaintext: &[u8]) -> Result<(), SealError> {
        ctx.validate()?;
        if plaintext.len() > PLAINTEXT_BYTES_MAX {
            return Err(SealError::TooLarge { len: plaintext.len(), max: PLAINTEXT_BYTES_MAX });
        }
        let blob = self.kek.seal(&ctx.aad(), plaintext)?;
        let op = Op::Put { tree: Tree::Sealed, key: ctx.store_key(), value: blob.to_bytes() };
        self.store.write(vec![op], Durability::Sync)?;
        Ok(())
    }

    /// The secret sealed for `ctx`, unsealed into zeroizing memory, or `None`
    /// if there is none. A blob that does not open gives [`SealError::Open`]. Blocking.
    pub fn get(&self, ctx: &SealContext) -> Result<Option<Zeroizing<Vec<u8>>>, SealError> {
        ctx.validate()?;
        let Some(bytes) = self.store.get(Tree::Sealed, &ctx.store_key())? else {
            return Ok(None);
        };
        let open = |source| SealError::Open { what: ctx.describe(), source };
        let blob = SealedBlob::from_bytes(&bytes).map_err(open)?;
        Ok(Some(self.kek.unseal(&ctx.aad(), &blob).map_err(open)?))
    }

    /// Removes the secret of `ctx` durably (an old generation after a
    /// refresh); removing a missing secret is not an error. Blocking.
    pub fn remove(&self, ctx: &SealContext) -> Result<(), SealError> {
        ctx.validate()?;
        self.store.write(vec![Op::Remove { tree: Tree::Sealed, key: ctx.store_key() }], Durability::Sync)?;
        Ok(())
    }

    /// Removes durably every secret bound to `key_id` of this node in
    /// `cluster_id`, of every purpose, version and generation (a destroyed
    /// key), in one write; returns how many there were. Blocking.
    ///
    /// What this cannot reach: the store appends, so earlier blocks on the
    /// disk and every backup or copy of the data directory may still hold
    /// the sealed blobs until the KEK that sealed them is destroyed
    /// (`synod kek rotate`, then delete the old KEK).
    pub fn remove_key(&self, cluster_id: &str, node_id: u64, key_id: &str) -> Result<usize, SealError> {
        let mut ops = Vec::new();
        let mut count = 0;
        for purpose in [Purpose::KeyPackage, Purpose::DkgSecret] {
            let ctx = SealContext {
                cluster_id: cluster_id.to_string(),
                node_id,
                key_id: key_id.to_string(),
                key_version: 0,
                generation: 0,
                purpose,
            };
            ctx.validate()?;
            // Every version and generation follows this prefix (the key id is length-prefixed).
            let mut from = ctx.store_key();
            from.truncate(from.len() - 8);
            let to = prefix_end(&from);
            count += self.store.scan(Tree::Sealed, &from, to.as_deref(), usize::MAX)?.len();
            ops.push(Op::RemoveRange { tree: Tree::Sealed, from, to_exclusive: to });
        }
        self.store.write(ops, Durability::Sync)?;
        Ok(count)
    }

    /// Checks that this KEK is the one that sealed the data directory. The
    /// first call on a data directory seals a random canary bound to `label`
    /// and stores it ([`KekCheck::Created`]); later calls must unseal it
    /// ([`KekCheck::Verified`]), or fail with [`SealError::WrongKek`]. `label`
    /// names the data directory's owner and must be the same at every start
    /// (e.g. `"node 3"`): another label gives [`SealError::CheckLabel`]. A
    /// data directory with sealed secrets but no canary is refused. Blocking.
    pub fn check_kek(&self, label: &str) -> Result<KekCheck, SealError> {
        let ctx = check_context(label);
        ctx.validate()?;
        let Some(record) = self.store.get(Tree::Sealed, KEK_CHECK_KEY)? else {
            return self.create_check(&ctx, label);
        };
        let (stored, blob) = parse_check_record(&record)?;
        if stored != label {
            return Err(SealError::CheckLabel { stored, given: label.to_string() });
        }
        let wrong = |source| SealError::WrongKek { kek: self.kek.describe(), source };
        let blob = SealedBlob::from_bytes(blob).map_err(wrong)?;
        let canary = self.kek.unseal(&ctx.aad(), &blob).map_err(wrong)?;
        if canary.len() != CANARY_BYTES {
            return Err(SealError::Record { record: "KEK check", detail: format!("canary of {} bytes", canary.len()) });
        }
        Ok(KekCheck::Verified)
    }

    fn create_check(&self, ctx: &SealContext, label: &str) -> Result<KekCheck, SealError> {
        let secrets = self.store.scan(Tree::Sealed, &[PREFIX_SECRET], Some(&[PREFIX_SECRET + 1]), 1)?;
        if !secrets.is_empty() {
            return Err(SealError::CheckMissing { kek: self.kek.describe() });
        }
        let mut canary = Zeroizing::new([0u8; CANARY_BYTES]);
        rand_core::OsRng.try_fill_bytes(&mut *canary).map_err(|e| KekError::Random { detail: e.to_string() })?;
        let blob = self.kek.seal(&ctx.aad(), &*canary)?;
        let mut record = vec![RECORD_VERSION];
        record.extend_from_slice(&(label.len() as u16).to_be_bytes());
        record.extend_from_slice(label.as_bytes());
        record.extend_from_slice(&blob.to_bytes());
        self.store.write(
            vec![Op::Put { tree: Tree::Sealed, key: KEK_CHECK_KEY.to_vec(), value: record }],
            Durability::Sync,
        )?;
        Ok(KekCheck::Created)
    }
}

/// The canary's context: bound to the label, purpose `KekCheck`.
fn check_context(label: &str) -> SealContext {
    SealContext {
        cluster_id: label.to_string(),
        node_id: 0,
        key_id: "kek-check".to_string(),
        key_version: 0,
        generation: 0,
        purpose: Purpose::KekCheck,
    }
}

/// The first key after every key that starts with `prefix` (`None`: no such key).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// `version ‖ len16 label ‖ label ‖ blob` → (label, blob bytes).
fn parse_check_record(record: &[u8]) -> Result<(String, &[u8]), SealError> {
    let malformed = |detail: &str| SealError::Record { record: "KEK check", detail: detail.to_string() };
    let [version, len_hi, len_lo, rest @ ..] = record else {
        return Err(malformed("too short"));
    };
    if *version != RECORD_VERSION {
        return Err(malformed(&format!("version {version}")));
    }
    let len = u16::from_be_bytes([*len_hi, *len_lo]) as usize;
    if rest.len() < len {
        return Err(malformed("label runs past the end"));
    }
    let label = std::str::from_utf8(&rest[..len]).map_err(|_| malformed("label is not UTF-8"))?;
    Ok((label.to_string(), &rest[len..]))
}

/// The data directory's salt for [`crate::kek::SoftKek::from_passphrase`]:
/// read from [`Tree::Sealed`], or drawn from the OS RNG and stored durably on
/// first use. The salt is not secret; it makes each data directory's KEK
/// different for one passphrase. Call it before building the passphrase KEK
/// (and so before [`SealedStore::new`]). Blocking.
pub fn passphrase_salt(store: &dyn Store) -> Result<[u8; SALT_BYTES], SealError> {
    if let Some(record) = store.get(Tree::Sealed, SALT_KEY)? {
        return match record.as_slice() {
            [RECORD_VERSION, salt @ ..] if salt.len() == SALT_BYTES => {
                let mut out = [0u8; SALT_BYTES];
                out.copy_from_slice(salt);
                Ok(out)
            }
            _ => Err(SealError::Record {
                record: "passphrase salt",
                detail: format!("{} bytes, version {:?}", record.len(), record.first()),
            }),
        };
    }
    let mut salt = [0u8; SALT_BYTES];
    rand_core::OsRng.try_fill_bytes(&mut salt).map_err(|e| KekError::Random { detail: e.to_string() })?;
    let mut record = vec![RECORD_VERSION];
    record.extend_from_slice(&salt);
    store.write(vec![Op::Put { tree: Tree::Sealed, key: SALT_KEY.to_vec(), value: record }], Durability::Sync)?;
    Ok(salt)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::kek::pkcs11::test_hsm;
    use crate::kek::SoftKek;
    use crate::store::{MemoryStore, SledStore};

    /// A recognisable 134-byte secret, the size of a FROST Ed25519 key package.
    fn secret() -> Vec<u8> {
        let mut bytes = b"SYNOD-PLAINTEXT-SHARE-MARKER:".to_vec();
        bytes.extend((0..134 - bytes.len()).map(|i| (i * 7 + 3) as u8));
        bytes
    }

    fn ctx() -> SealContext {
        SealContext {
            cluster_id: "c-1f2e".into(),
            node_id: 3,
            key_id: "payments".into(),
            key_version: 2,
            generation: 1,
            purpose: Purpose::KeyPackage,
        }
    }

    fn file_kek(dir: &Path, name: &str) -> Arc<dyn Kek> {
        Arc::new(SoftKek::generate_file(&dir.join(name)).expect("generate a KEK file"))
    }

    fn memory_sealed(kek: Arc<dyn Kek>) -> (MemoryStore, SealedStore) {
        let store = MemoryStore::new();
        (store.clone(), SealedStore::new(Arc::new(store), kek))
    }

    /// Every file under `dir`, recursively.
    fn files(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(files(&path));
            } else {
                out.push(path);
            }
        }
        out
    }

    /// The files under `dir` that contain `needle`.
    fn files_containing(dir: &Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
        files(dir)
            .into_iter()
            .filter(|f| std::fs::read(f).unwrap().windows(needle.len()).any(|w| w == needle))
            .collect()
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            let target = to.join(path.file_name().unwrap());
            if path.is_dir() {
                copy_dir(&path, &target);
            } else {
                std::fs::copy(&path, &target).unwrap();
            }
        }
    }

    #[test]
    fn sealed_aad_layout_is_pinned() {
        // Proves that the AAD bytes of a fixed context never change (a change would orphan every sealed secret).
        let aad = ctx().aad();
        let expected = concat!(
            "73796e6f642f7365616c2f763100", // "synod/seal/v1\0"
            "00000006",
            "632d31663265", // cluster id "c-1f2e"
            "00000008",
            "0000000000000003", // node id 3
            "00000008",
            "7061796d656e7473", // key id "payments"
            "00000004",
            "00000002", // key version 2
            "00000004",
            "00000001", // generation 1
            "0000000b",
            "6b65792d7061636b616765", // purpose "key-package"
        );
        assert_eq!(hex::encode(&aad), expected);
        let store_key = ctx().store_key();
        assert_eq!(hex::encode(store_key), "01010006632d31663265000000000000000300087061796d656e74730000000200000001");
    }

    #[test]
    fn sealed_aad_is_unambiguous_across_field_boundaries() {
        // Proves that moving bytes between adjacent string fields changes the AAD (length prefixes, not separators).
        let a = SealContext { cluster_id: "ab".into(), key_id: "c".into(), ..ctx() };
        let b = SealContext { cluster_id: "a".into(), key_id: "bc".into(), ..ctx() };
        assert_ne!(a.aad(), b.aad());
        assert_ne!(a.store_key(), b.store_key());
    }

    #[test]
    fn sealed_round_trip_on_the_file_backend() {
        // Proves that put/get round-trips a secret under a file KEK, that a missing context gives None, and remove works.
        let dir = tempfile::tempdir().unwrap();
        let (_store, sealed) = memory_sealed(file_kek(dir.path(), "kek"));
        assert_eq!(sealed.get(&ctx()).unwrap(), None);
        sealed.put(&ctx(), &secret()).unwrap();
        assert_eq!(sealed.get(&ctx()).unwrap().as_deref(), Some(&secret()));
        sealed.remove(&ctx()).unwrap();
        assert_eq!(sealed.get(&ctx()).unwrap(), None);
    }

    #[test]
    fn sealed_remove_key_removes_every_version_generation_and_purpose_of_that_key_only() {
        // Proves that destroying a key's shares reaches all its secrets and none of another key,
        // node or cluster, including a key whose id extends this one's.
        let dir = tempfile::tempdir().unwrap();
        let (_store, sealed) = memory_sealed(file_kek(dir.path(), "kek"));
        let mut doomed = Vec::new();
        for (version, generation, purpose) in
            [(1, 0, Purpose::KeyPackage), (2, 3, Purpose::KeyPackage), (1, 0, Purpose::DkgSecret)]
        {
            doomed.push(SealContext { key_version: version, generation, purpose, ..ctx() });
        }
        let kept = [
            SealContext { key_id: "payments-2".into(), ..ctx() },
            SealContext { node_id: 4, ..ctx() },
            SealContext { cluster_id: "c-other".into(), ..ctx() },
        ];
        for c in doomed.iter().chain(&kept) {
            sealed.put(c, &secret()).unwrap();
        }
        assert_eq!(sealed.remove_key("c-1f2e", 3, "payments").unwrap(), 3);
        for c in &doomed {
            assert_eq!(sealed.get(c).unwrap(), None, "{c:?}");
        }
        for c in &kept {
            assert!(sealed.get(c).unwrap().is_some(), "{c:?}");
        }
        assert_eq!(sealed.remove_key("c-1f2e", 3, "payments").unwrap(), 0, "removing again is not an error");
    }

    #[test]
    fn sealed_round_trip_on_the_pkcs11_backend() {
        // Proves that put/get round-trips a secret under a KEK inside a real SoftHSM2 token.
        let (_cfg, kek) = test_hsm::kek("sealed-round-trip");
        let (_store, sealed) = memory_sealed(Arc::new(kek));
        sealed.put(&ctx(), &secret()).unwrap();
        assert_eq!(sealed.get(&ctx()).unwrap().as_deref(), Some(&secret()));
    }

    /// Moves the blob stored for `from` to the slot of `to`, as an attacker with the disk could.
    fn move_blob(store: &MemoryStore, from: &SealContext, to: &SealContext) {
        let blob = store.get(Tree::Sealed, &from.store_key()).unwrap().expect("a stored blob");
        store.write(vec![Op::Put { tree: Tree::Sealed, key: to.store_key(), value: blob }], Durability::Sync).unwrap();
    }

    #[test]
    fn sealed_blob_moved_to_any_other_context_does_not_open() {
        // Proves that a blob copied to another cluster, node, key, version, generation or purpose gives Unseal, no panic.
        let dir = tempfile::tempdir().unwrap();
        let (store, sealed) = memory_sealed(file_kek(dir.path(), "kek"));
        sealed.put(&ctx(), &secret()).unwrap();
        let others = [
            ("cluster", SealContext { cluster_id: "c-other".into(), ..ctx() }),
            ("node", SealContext { node_id: 4, ..ctx() }),
            ("key id", SealContext { key_id: "payroll".into(), ..ctx() }),
            ("version", SealContext { key_version: 3, ..ctx() }),
            ("generation", SealContext { generation: 2, ..ctx() }),
            ("purpose", SealContext { purpose: Purpose::DkgSecret, ..ctx() }),
        ];
        for (field, other) in others {
            move_blob(&store, &ctx(), &other);
            let error = sealed.get(&other).unwrap_err();
            assert!(matches!(error, SealError::Open { source: KekError::Unseal, .. }), "{field}: {error}");
            assert!(error.to_string().contains("does not open under this KEK"), "{field}: {error}");
        }
        assert_eq!(sealed.get(&ctx()).unwrap().as_deref(), Some(&secret()), "the original still opens");
    }

    #[test]
    fn sealed_tampered_or_garbled_record_gives_an_error_not_a_panic() {
        // Proves that a flipped bit gives Unseal and a truncated record gives Malformed, each naming the secret.
        let dir = tempfile::tempdir().unwrap();
        let (store, sealed) = memory_sealed(file_kek(dir.path(), "kek"));
        sealed.put(&ctx(), &secret()).unwrap();
        let mut blob = store.get(Tree::Sealed, &ctx().store_key()).unwrap().unwrap();
        blob[40] ^= 0x10;
        store
            .write(vec![Op::Put { tree: Tree::Sealed, key: ctx().store_key(), value: blob.clone() }], Durability::Sync)
            .unwrap();
        let error = sealed.get(&ctx()).unwrap_err();
        assert!(matches!(error, SealError::Open { source: KekError::Unseal, .. }), "{error}");
        assert!(error.to_string().contains("key-package of key \"payments\" v2 generation 1"), "{error}");
        blob.truncate(5);
        store
            .write(vec![Op::Put { tree: Tree::Sealed, key: ctx().store_key(), value: blob }], Durability::Sync)
            .unwrap();
        let error = sealed.get(&ctx()).unwrap_err();
        assert!(matches!(error, SealError::Open { source: KekError::Malformed { .. }, .. }), "{error}");
    }

    #[test]
    fn sealed_wrong_kek_gives_unseal() {
        // Proves that secrets sealed under one KEK do not open under another over the same store.
        let dir = tempfile::tempdir().unwrap();
        let (store, sealed) = memory_sealed(file_kek(dir.path(), "kek"));
        sealed.put(&ctx(), &secret()).unwrap();
        let other = SealedStore::new(Arc::new(store), file_kek(dir.path(), "other"));
        let error = other.get(&ctx()).unwrap_err();
        assert!(matches!(error, SealError::Open { source: KekError::Unseal, .. }), "{error}");
    }

    #[test]
    fn sealed_values_over_the_store_limit_are_refused() {
        // Proves that the largest sealable secret fits one store value and one byte more is refused clearly.
        let dir = tempfile::tempdir().unwrap();
        let (_store, sealed) = memory_sealed(file_kek(dir.path(), "kek"));
        sealed.put(&ctx(), &vec![1u8; PLAINTEXT_BYTES_MAX]).unwrap();
        assert_eq!(sealed.get(&ctx()).unwrap().map(|s| s.len()), Some(PLAINTEXT_BYTES_MAX));
        let error = sealed.put(&ctx(), &vec![1u8; PLAINTEXT_BYTES_MAX + 1]).unwrap_err();
        assert!(matches!(error, SealError::TooLarge { len, max } if len == max + 1), "{error}");
        let long = SealContext { key_id: "k".repeat(CONTEXT_ID_BYTES_MAX + 1), ..ctx() };
        assert!(matches!(sealed.put(&long, b"x"), Err(SealError::ContextField { field: "key_id", .. })));
    }

    #[test]
    fn sealed_check_kek_creates_then_verifies_then_refuses_another_kek() {
        // Proves the start-up check: Created on a new store, Verified after, WrongKek with another KEK or passphrase.
        let dir = tempfile::tempdir().unwrap();
        let (store, sealed) = memory_sealed(file_kek(dir.path(), "kek"));
        assert_eq!(sealed.check_kek("node 3").unwrap(), KekCheck::Created);
        assert_eq!(sealed.check_kek("node 3").unwrap(), KekCheck::Verified);
        let other = SealedStore::new(Arc::new(store.clone()), file_kek(dir.path(), "other"));
        let error = other.check_kek("node 3").unwrap_err();
        assert!(matches!(error, SealError::WrongKek { .. }), "{error}");
        let text = error.to_string();
        assert!(text.contains("does not open the data directory's sealed secrets"), "{text}");
        assert!(text.contains("wrong passphrase, key file or token?"), "{text}");
        let salt = passphrase_salt(&store).unwrap();
        let pass = SealedStore::new(Arc::new(store.clone()), Arc::new(SoftKek::from_passphrase("pw", &salt).unwrap()));
        let error = pass.check_kek("node 3").unwrap_err();
        assert!(matches!(error, SealError::WrongKek { source: KekError::BackendMismatch { .. }, .. }), "{error}");
        let error = sealed.check_kek("node 4").unwrap_err();
        assert!(matches!(error, SealError::CheckLabel { .. }), "{error}");
    }

    #[test]
    fn sealed_check_kek_refuses_secrets_without_a_canary() {
        // Proves that a store holding sealed secrets but no check record is refused, not silently given a new canary.
        let dir = tempfile::tempdir().unwrap();
        let (_store, sealed) = memory_sealed(file_kek(dir.path(), "kek"));
        sealed.put(&ctx(), &secret()).unwrap();
        let error = sealed.check_kek("node 3").unwrap_err();
        assert!(matches!(error, SealError::CheckMissing { .. }), "{error}");
    }

    #[test]
    fn sealed_passphrase_salt_is_created_once_and_kept() {
        // Proves that the salt is drawn on first use, read back unchanged later, and differs between data directories.
        let store = MemoryStore::new();
        let salt = passphrase_salt(&store).unwrap();
        store.crash();
        assert_eq!(passphrase_salt(&store).unwrap(), salt, "stored durably");
        assert_ne!(passphrase_salt(&MemoryStore::new()).unwrap(), salt);
        let kek = Arc::new(SoftKek::from_passphrase("pw", &salt).unwrap());
        let sealed = SealedStore::new(Arc::new(store.clone()), kek);
        assert_eq!(sealed.check_kek("node 1").unwrap(), KekCheck::Created);
        let again = SealedStore::new(Arc::new(store), Arc::new(SoftKek::from_passphrase("pw", &salt).unwrap()));
        assert_eq!(again.check_kek("node 1").unwrap(), KekCheck::Verified);
    }

    #[test]
    fn sealed_sled_data_dir_holds_no_plaintext() {
        // Proves that after a 134-byte secret is sealed into sled, no file of the data dir holds its bytes,
        // while the same scan does find them when they are written unsealed (so the scan can see them).
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let store = Arc::new(SledStore::open(&data).unwrap());
        let sealed = SealedStore::new(store.clone(), file_kek(dir.path(), "kek"));
        sealed.check_kek("node 3").unwrap();
        sealed.put(&ctx(), &secret()).unwrap();
        assert_eq!(sealed.get(&ctx()).unwrap().as_deref(), Some(&secret()));
        drop(sealed);
        drop(store);
        assert!(files(&data).len() >= 2, "sled wrote its files: {:?}", files(&data));
        assert_eq!(files_containing(&data, &secret()), Vec::<std::path::PathBuf>::new());
        assert_eq!(files_containing(&data, &secret()[..16]), Vec::<std::path::PathBuf>::new());

        let control = dir.path().join("control");
        let store = SledStore::open(&control).unwrap();
        store.write(vec![Op::Put { tree: Tree::Meta, key: b"k".to_vec(), value: secret() }], Durability::Sync).unwrap();
        drop(store);
        assert!(!files_containing(&control, &secret()).is_empty(), "the scan finds unsealed bytes");
    }

    #[test]
    fn sealed_pkcs11_data_dir_copy_does_not_open_without_its_token() {
        // Proves that a copy of a data dir sealed by a SoftHSM2 token opens with that token only:
        // a file KEK and another token's key are both refused by the start-up check and by get.
        let (_cfg, kek) = test_hsm::kek("copy-origin");
        let kek: Arc<dyn Kek> = Arc::new(kek);
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let store = Arc::new(SledStore::open(&data).unwrap());
        let sealed = SealedStore::new(store.clone(), kek.clone());
        assert_eq!(sealed.check_kek("node 3").unwrap(), KekCheck::Created);
        sealed.put(&ctx(), &secret()).unwrap();
        drop((sealed, store));
        assert_eq!(files_containing(&data, &secret()), Vec::<std::path::PathBuf>::new());
        let copy = dir.path().join("copy");
        copy_dir(&data, &copy);

        let copied: Arc<dyn Store> = Arc::new(SledStore::open(&copy).unwrap());
        let with_file = SealedStore::new(copied.clone(), file_kek(dir.path(), "kek"));
        let error = with_file.check_kek("node 3").unwrap_err();
        assert!(error.to_string().contains("does not open"), "{error}");
        assert!(matches!(with_file.get(&ctx()), Err(SealError::Open { .. })));

        let (_other_cfg, other) = test_hsm::kek("copy-thief");
        let with_other = SealedStore::new(copied.clone(), Arc::new(other));
        assert!(matches!(with_other.check_kek("node 3"), Err(SealError::WrongKek { source: KekError::Unseal, .. })));
        assert!(matches!(with_other.get(&ctx()), Err(SealError::Open { source: KekError::Unseal, .. })));

        let with_token = SealedStore::new(copied, kek);
        assert_eq!(with_token.check_kek("node 3").unwrap(), KekCheck::Verified);
        assert_eq!(with_token.get(&ctx()).unwrap().as_deref(), Some(&secret()), "the right token opens the copy");
    }
}

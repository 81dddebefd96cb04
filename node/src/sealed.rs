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
//!
//! [`SealedStore::reseal_all`] moves a stopped node's data directory to a new
//! KEK (`synod kek rotate`): every secret and the canary are unsealed under
//! the old KEK, sealed under the new one with the same AAD, checked to open
//! again, and written back in one atomic, synced store write, so a crash
//! leaves either the old data directory or the new one, never a mix. Once the
//! old KEK is destroyed, every earlier copy of the blobs (sled's log may keep
//! old blocks; backups; copied disks) stays sealed for good.
//!
//! Every call blocks (store fsync, HSM round trip); async callers use
//! `seams::run_blocking`. Signing nonces are never stored here: they live in
//! memory only.

use std::fmt;
use std::sync::Arc;

use rand_core::RngCore;
use zeroize::Zeroizing;

use crate::kek::soft::SALT_BYTES;
use crate::kek::{Backend, Kek, KekError, SealedBlob, BLOB_OVERHEAD_BYTES};
use crate::store::{Durability, Op, Pair, Store, StoreError, Tree, VALUE_BYTES_MAX};

/// The domain tag that opens every AAD, so a seal for another use of the KEK can never collide.
pub const AAD_DOMAIN: &[u8] = b"synod/seal/v1\0";

/// The largest secret that can be sealed: its blob must fit in one store value.
pub const PLAINTEXT_BYTES_MAX: usize = VALUE_BYTES_MAX - BLOB_OVERHEAD_BYTES;

/// The most records of [`Tree::Sealed`] that [`SealedStore::reseal_all`] moves
/// to a new KEK. Every re-sealed blob waits in memory for the one write that
/// stores them all (a key package's blob and key are about 250 bytes, so about
/// 16 MiB at the limit); a node keeps one secret per key version it holds,
/// orders of magnitude fewer.
pub const RESEAL_RECORDS_MAX: usize = 1 << 16;

/// How many secrets [`SealedStore::reseal_all`] re-seals between two progress reports.
pub const RESEAL_PROGRESS_EVERY: usize = 1_000;

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

/// The label of a node's KEK check ([`SealedStore::check_kek`]): the same at
/// every start, in `synod kek rotate` and in the restore drill.
pub fn kek_check_label(node_id: u64) -> String {
    format!("node {node_id}")
}

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

    fn from_code(code: u8) -> Option<Purpose> {
        [Purpose::KeyPackage, Purpose::DkgSecret, Purpose::KekCheck].into_iter().find(|p| p.code() == code)
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

    /// The context whose [`SealContext::store_key`] is `key`, or `None` when
    /// `key` is not one (another prefix, an unknown purpose, a bad length, a
    /// non-UTF-8 id, trailing bytes). Re-sealing reads a secret's AAD back from
    /// its store key this way; the round trip is checked, so a key that parses
    /// is exactly the key of the context it gives.
    fn from_store_key(key: &[u8]) -> Option<SealContext> {
        let mut reader = KeyReader(key);
        if reader.bytes::<1>()? != [PREFIX_SECRET] {
            return None;
        }
        let [code] = reader.bytes::<1>()?;
        let ctx = SealContext {
            purpose: Purpose::from_code(code)?,
            cluster_id: reader.string16()?,
            node_id: u64::from_be_bytes(reader.bytes()?),
            key_id: reader.string16()?,
            key_version: u32::from_be_bytes(reader.bytes()?),
            generation: u32::from_be_bytes(reader.bytes()?),
        };
        (reader.0.is_empty() && ctx.store_key() == key).then_some(ctx)
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

/// Reads a store key front to back for [`SealContext::from_store_key`].
struct KeyReader<'a>(&'a [u8]);

impl KeyReader<'_> {
    /// The next `N` bytes, or `None` when fewer are left.
    fn bytes<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, tail) = self.0.split_first_chunk::<N>()?;
        self.0 = tail;
        Some(*head)
    }

    /// A 2-byte big-endian length, then that many bytes of UTF-8.
    fn string16(&mut self) -> Option<String> {
        let len = u16::from_be_bytes(self.bytes()?) as usize;
        let (head, tail) = self.0.split_at_checked(len)?;
        self.0 = tail;
        String::from_utf8(head.to_vec()).ok()
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

    #[error(
        "the data directory holds no KEK check record and no sealed secret: no node has started on it, so \
         nothing is sealed yet and there is nothing to re-seal; point the config at the new KEK and start the node"
    )]
    NothingSealed,

    #[error(
        "the new KEK ({new}) opens what the current KEK ({old}) seals: they are the same key, so re-sealing \
         would not let the old one be destroyed; make a new KEK (`synod kek generate-file`, or \
         `synod kek pkcs11-keygen` with another key label) and name that one"
    )]
    SameKek { old: String, new: String },

    #[error(
        "the new KEK ({kek}) sealed the {what} but did not open it again to the same bytes ({detail}); \
         check the new KEK's token or file and try again"
    )]
    ResealCheck { kek: String, what: String, detail: String },

    #[error(
        "the data directory holds a sealed-tree record this synod does not know (key {key}); a newer synod \
         may have written it, and re-sealing without it would leave it under the old KEK; re-seal with \
         the synod version that wrote the data directory"
    )]
    UnknownRecord { key: String },

    #[error(
        "the data directory holds more than {max} sealed records, more than one re-seal holds in memory; \
         report this as a Synod bug"
    )]
    TooManyRecords { max: usize },

    #[error(
        "the re-sealed records were written, but the KEK check read back does not open under the new KEK \
         ({kek}): {source}; keep both KEKs, do not start the node, and report this as a Synod bug"
    )]
    ResealUnverified {
        kek: String,
        #[source]
        source: Box<SealError>,
    },

    #[error("the new KEK is a {backend} KEK but {salt} passphrase salt came with it; report this as a Synod bug")]
    NewKekSalt { backend: &'static str, salt: &'static str },
}

/// The KEK that [`SealedStore::reseal_all`] moves a data directory to.
pub struct NewKek<'a> {
    /// Seals every secret and the KEK check from now on.
    pub kek: &'a dyn Kek,
    /// The Argon2id salt `kek` was derived with when it is a passphrase KEK (a
    /// fresh one from [`new_passphrase_salt`]), stored in the same write as the
    /// re-sealed secrets. `None` for the other backends; the old salt record,
    /// if any, is then removed.
    pub passphrase_salt: Option<[u8; SALT_BYTES]>,
}

/// What [`SealedStore::reseal_all`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResealReport {
    /// Secrets re-sealed (prefix 1 records), not counting the KEK check.
    pub secrets: usize,
    /// What became of the passphrase salt record.
    pub salt: SaltChange,
}

/// What [`SealedStore::reseal_all`] did to the passphrase salt record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaltChange {
    /// Neither KEK is a passphrase KEK: there was no salt record and there is none.
    Unchanged,
    /// The new passphrase KEK's salt was stored, replacing the old one if there was one.
    Written,
    /// The old passphrase KEK's salt was removed: the new KEK needs none.
    Removed,
}

/// How far [`SealedStore::reseal_all`] has got: `done` of `total` secrets
/// re-sealed and checked in memory (nothing is written until all are).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResealProgress {
    /// Secrets re-sealed so far.
    pub done: usize,
    /// Secrets in the data directory.
    pub total: usize,
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

    /// Whether a secret is stored for `ctx`, without unsealing it. Blocking.
    pub fn contains(&self, ctx: &SealContext) -> Result<bool, SealError> {
        ctx.validate()?;
        Ok(self.store.get(Tree::Sealed, &ctx.store_key())?.is_some())
    }

    /// Removes the secret of `ctx` durably (an old generation after a
    /// refresh); removing a missing secret is not an error. Blocking.
    pub fn remove(&self, ctx: &SealContext) -> Result<(), SealError> {
        ctx.validate()?;
        self.store.write(vec![Op::Remove { tree: Tree::Sealed, key: ctx.store_key() }], Durability::Sync)?;
        Ok(())
    }

    /// The generations of `ctx`'s key version (same cluster, node, key,
    /// version and purpose) sealed here, ascending. Blocking.
    pub fn generations(&self, ctx: &SealContext) -> Result<Vec<u32>, SealError> {
        let (from, to) = version_range(ctx)?;
        let found = self.store.scan(Tree::Sealed, &from, to.as_deref(), usize::MAX)?;
        Ok(found.iter().filter_map(|(key, _)| generation_of(&from, key)).collect())
    }

    /// Removes durably every generation of `ctx`'s key version older than
    /// `ctx.generation`, in one write; returns the generations removed. After
    /// a refresh this deletes the old share. Only older ones: a node's state
    /// may lag its disk (right after a restart it replays the log from its
    /// last snapshot), and a lagging state's current generation is never
    /// newer than the real one, so nothing current is ever deleted. Blocking.
    pub fn remove_older_generations(&self, ctx: &SealContext) -> Result<Vec<u32>, SealError> {
        let (from, to) = version_range(ctx)?;
        let mut ops = Vec::new();
        let mut removed = Vec::new();
        for (key, _) in self.store.scan(Tree::Sealed, &from, to.as_deref(), usize::MAX)? {
            match generation_of(&from, &key) {
                Some(generation) if generation < ctx.generation => {
                    removed.push(generation);
                    ops.push(Op::Remove { tree: Tree::Sealed, key });
                }
                _ => {}
            }
        }
        if !ops.is_empty() {
            self.store.write(ops, Durability::Sync)?;
        }
        Ok(removed)
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

    /// Every record of the sealed tree, as stored: the secrets (ciphertext
    /// only), the KEK check and the passphrase salt. What a node backup
    /// carries (`crate::backup`); at most [`RESEAL_RECORDS_MAX`]. Blocking.
    pub fn records(&self) -> Result<Vec<crate::store::Pair>, SealError> {
        Ok(self.store.scan(Tree::Sealed, &[], None, RESEAL_RECORDS_MAX)?)
    }

    /// The context of every secret this store holds, in store order. Blocking.
    pub fn secret_contexts(&self) -> Result<Vec<SealContext>, SealError> {
        let rows = self.store.scan(Tree::Sealed, &[PREFIX_SECRET], Some(&[PREFIX_SECRET + 1]), RESEAL_RECORDS_MAX)?;
        Ok(rows.iter().filter_map(|(key, _)| SealContext::from_store_key(key)).collect())
    }

    /// Whether this store holds any secret (one row read, not all). Blocking.
    pub fn has_secrets(&self) -> Result<bool, SealError> {
        Ok(!self.store.scan(Tree::Sealed, &[PREFIX_SECRET], Some(&[PREFIX_SECRET + 1]), 1)?.is_empty())
    }

    /// Whether this store holds the KEK check record (a node started on it, or a backup carries it).
    pub fn has_kek_check(&self) -> Result<bool, SealError> {
        Ok(self.store.get(Tree::Sealed, KEK_CHECK_KEY)?.is_some())
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
        open_check(self.kek.as_ref(), &record, label)?;
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
        self.store.write(
            vec![Op::Put { tree: Tree::Sealed, key: KEK_CHECK_KEY.to_vec(), value: check_record(label, &blob) }],
            Durability::Sync,
        )?;
        Ok(KekCheck::Created)
    }

    /// Moves this data directory from this store's KEK to `new` (`synod kek
    /// rotate`, on a stopped node). Blocking. In order:
    ///
    /// 1. The KEK check must open under the current KEK with `label` (as
    ///    [`SealedStore::check_kek`], but never creating one): a wrong current
    ///    KEK stops here, with [`SealError::WrongKek`], before anything else.
    /// 2. The canary is sealed under `new`; if the current KEK opens that
    ///    blob, the two are one key ([`SealError::SameKek`]).
    /// 3. Every secret (prefix 1) is unsealed under the current KEK with the
    ///    AAD its store key names, sealed under `new` with the same AAD, and
    ///    opened again under `new` to the same bytes. A secret that does not
    ///    open stops everything ([`SealError::Open`]): none is left behind
    ///    under the old KEK, and none is dropped. A record this code does not
    ///    know stops it too ([`SealError::UnknownRecord`]).
    /// 4. One write with [`Durability::Sync`] replaces every blob and the
    ///    KEK check, and stores the new passphrase salt or removes the old
    ///    one, so a crash leaves all of the old records or all of the new.
    /// 5. The stored KEK check must then open under `new`.
    ///
    /// Plaintext lives in zeroizing buffers, one secret at a time; only the
    /// new blobs wait for the write ([`RESEAL_RECORDS_MAX`] bounds them).
    /// `progress` hears every [`RESEAL_PROGRESS_EVERY`] secrets and at the end.
    pub fn reseal_all(
        &self,
        label: &str,
        new: &NewKek<'_>,
        progress: &mut dyn FnMut(ResealProgress),
    ) -> Result<ResealReport, SealError> {
        check_new_salt(new)?;
        let records = self.store.scan(Tree::Sealed, &[], None, RESEAL_RECORDS_MAX + 1)?;
        if records.len() > RESEAL_RECORDS_MAX {
            return Err(SealError::TooManyRecords { max: RESEAL_RECORDS_MAX });
        }
        let mut ops = vec![self.reseal_check(&records, label, new.kek)?];
        let (secrets, had_salt) = self.reseal_secrets(&records, new.kek, &mut ops, progress)?;
        let salt = match (new.passphrase_salt, had_salt) {
            (Some(salt), _) => {
                ops.push(Op::Put { tree: Tree::Sealed, key: SALT_KEY.to_vec(), value: salt_record(&salt) });
                SaltChange::Written
            }
            (None, true) => {
                ops.push(Op::Remove { tree: Tree::Sealed, key: SALT_KEY.to_vec() });
                SaltChange::Removed
            }
            (None, false) => SaltChange::Unchanged,
        };
        self.store.write(ops, Durability::Sync)?;
        let unverified = |source| SealError::ResealUnverified { kek: new.kek.describe(), source: Box::new(source) };
        let stored = self.store.get(Tree::Sealed, KEK_CHECK_KEY).map_err(|e| unverified(e.into()))?;
        let stored = stored.ok_or_else(|| unverified(SealError::CheckMissing { kek: new.kek.describe() }))?;
        open_check(new.kek, &stored, label).map_err(unverified)?;
        Ok(ResealReport { secrets, salt })
    }

    /// Steps 1 and 2 of [`SealedStore::reseal_all`]: opens the KEK check of
    /// `records` under the current KEK and seals its canary under `new`, which
    /// must be another key. Returns the op that stores the new KEK check.
    fn reseal_check(&self, records: &[Pair], label: &str, new: &dyn Kek) -> Result<Op, SealError> {
        let ctx = check_context(label);
        ctx.validate()?;
        let Some((_, check)) = records.iter().find(|(key, _)| key == KEK_CHECK_KEY) else {
            if records.iter().any(|(key, _)| key.first() == Some(&PREFIX_SECRET)) {
                return Err(SealError::CheckMissing { kek: self.kek.describe() });
            }
            return Err(SealError::NothingSealed);
        };
        let canary = open_check(self.kek.as_ref(), check, label)?;
        let blob = seal_checked(new, &ctx, &canary)?;
        if self.kek.unseal(&ctx.aad(), &blob).is_ok() {
            return Err(SealError::SameKek { old: self.kek.describe(), new: new.describe() });
        }
        Ok(Op::Put { tree: Tree::Sealed, key: KEK_CHECK_KEY.to_vec(), value: check_record(label, &blob) })
    }

    /// Step 3 of [`SealedStore::reseal_all`]: adds to `ops` a put of every
    /// secret of `records` sealed anew under `new`. Returns how many secrets
    /// there were and whether `records` held a passphrase salt.
    fn reseal_secrets(
        &self,
        records: &[Pair],
        new: &dyn Kek,
        ops: &mut Vec<Op>,
        progress: &mut dyn FnMut(ResealProgress),
    ) -> Result<(usize, bool), SealError> {
        let total = records.iter().filter(|(key, _)| key.first() == Some(&PREFIX_SECRET)).count();
        let (mut done, mut had_salt) = (0, false);
        for (key, value) in records {
            if key == KEK_CHECK_KEY {
                continue;
            }
            if key == SALT_KEY {
                had_salt = true;
                continue;
            }
            let Some(ctx) = SealContext::from_store_key(key) else {
                return Err(SealError::UnknownRecord { key: hex::encode(key) });
            };
            let open = |source| SealError::Open { what: ctx.describe(), source };
            let plaintext = self.kek.unseal(&ctx.aad(), &SealedBlob::from_bytes(value).map_err(open)?).map_err(open)?;
            let blob = seal_checked(new, &ctx, &plaintext)?;
            ops.push(Op::Put { tree: Tree::Sealed, key: key.clone(), value: blob.to_bytes() });
            done += 1;
            if done % RESEAL_PROGRESS_EVERY == 0 {
                progress(ResealProgress { done, total });
            }
        }
        assert_eq!(done, total, "every record with the secret prefix parsed as a secret and was re-sealed");
        progress(ResealProgress { done, total });
        Ok((done, had_salt))
    }
}

/// Refuses a [`NewKek`] whose salt does not fit its backend: a passphrase KEK
/// needs the salt it was derived with, any other KEK none.
fn check_new_salt(new: &NewKek<'_>) -> Result<(), SealError> {
    let passphrase = new.kek.backend() == Backend::Passphrase.name();
    match (passphrase, new.passphrase_salt.is_some()) {
        (true, false) => Err(SealError::NewKekSalt { backend: new.kek.backend(), salt: "no" }),
        (false, true) => Err(SealError::NewKekSalt { backend: new.kek.backend(), salt: "a" }),
        _ => Ok(()),
    }
}

/// Seals `plaintext` for `ctx` under `kek` and opens the blob again: a blob
/// that does not give the same bytes back is refused before it is stored.
fn seal_checked(kek: &dyn Kek, ctx: &SealContext, plaintext: &[u8]) -> Result<SealedBlob, SealError> {
    let blob = kek.seal(&ctx.aad(), plaintext)?;
    let refused = |detail: String| SealError::ResealCheck { kek: kek.describe(), what: ctx.describe(), detail };
    match kek.unseal(&ctx.aad(), &blob) {
        Ok(back) if back.as_slice() == plaintext => Ok(blob),
        Ok(back) => Err(refused(format!("{} bytes came back for {}", back.len(), plaintext.len()))),
        Err(e) => Err(refused(e.to_string())),
    }
}

/// Opens the KEK check `record` under `kek`, which must have been made for
/// `label`; returns the canary. [`SealError::WrongKek`] when it does not open.
fn open_check(kek: &dyn Kek, record: &[u8], label: &str) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let (stored, blob) = parse_check_record(record)?;
    if stored != label {
        return Err(SealError::CheckLabel { stored, given: label.to_string() });
    }
    let wrong = |source| SealError::WrongKek { kek: kek.describe(), source };
    let blob = SealedBlob::from_bytes(blob).map_err(wrong)?;
    let canary = kek.unseal(&check_context(label).aad(), &blob).map_err(wrong)?;
    if canary.len() != CANARY_BYTES {
        return Err(SealError::Record { record: "KEK check", detail: format!("canary of {} bytes", canary.len()) });
    }
    Ok(canary)
}

/// `version ‖ len16 label ‖ label ‖ blob`, the KEK check record.
fn check_record(label: &str, blob: &SealedBlob) -> Vec<u8> {
    let mut record = vec![RECORD_VERSION];
    record.extend_from_slice(&(label.len() as u16).to_be_bytes());
    record.extend_from_slice(label.as_bytes());
    record.extend_from_slice(&blob.to_bytes());
    record
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
/// The store keys of every generation of `ctx`'s key version: from the
/// prefix without the generation to the end of that prefix.
fn version_range(ctx: &SealContext) -> Result<(Vec<u8>, Option<Vec<u8>>), SealError> {
    ctx.validate()?;
    let mut from = ctx.store_key();
    from.truncate(from.len() - 4);
    let to = prefix_end(&from);
    Ok((from, to))
}

/// The generation a store key under `prefix` (see [`version_range`]) names.
fn generation_of(prefix: &[u8], key: &[u8]) -> Option<u32> {
    key.get(prefix.len()..).and_then(|tail| <[u8; 4]>::try_from(tail).ok()).map(u32::from_be_bytes)
}

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
    if let Some(salt) = stored_passphrase_salt(store)? {
        return Ok(salt);
    }
    let salt = new_passphrase_salt()?;
    store.write(
        vec![Op::Put { tree: Tree::Sealed, key: SALT_KEY.to_vec(), value: salt_record(&salt) }],
        Durability::Sync,
    )?;
    Ok(salt)
}

/// The data directory's passphrase salt, or `None` when it has none; never
/// writes (`synod kek rotate` must not change a data directory before the
/// current KEK is proven). Blocking.
pub fn stored_passphrase_salt(store: &dyn Store) -> Result<Option<[u8; SALT_BYTES]>, SealError> {
    let Some(record) = store.get(Tree::Sealed, SALT_KEY)? else {
        return Ok(None);
    };
    match record.as_slice() {
        [RECORD_VERSION, salt @ ..] if salt.len() == SALT_BYTES => {
            let mut out = [0u8; SALT_BYTES];
            out.copy_from_slice(salt);
            Ok(Some(out))
        }
        _ => Err(SealError::Record {
            record: "passphrase salt",
            detail: format!("{} bytes, version {:?}", record.len(), record.first()),
        }),
    }
}

/// A fresh passphrase salt from the OS RNG, for a data directory's first
/// passphrase KEK or for one it is moving to ([`NewKek::passphrase_salt`]).
pub fn new_passphrase_salt() -> Result<[u8; SALT_BYTES], SealError> {
    let mut salt = [0u8; SALT_BYTES];
    rand_core::OsRng.try_fill_bytes(&mut salt).map_err(|e| KekError::Random { detail: e.to_string() })?;
    Ok(salt)
}

/// `version ‖ salt`, the passphrase salt record.
fn salt_record(salt: &[u8; SALT_BYTES]) -> Vec<u8> {
    let mut record = vec![RECORD_VERSION];
    record.extend_from_slice(salt);
    record
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::kek::pkcs11::test_hsm;
    use crate::kek::{Pkcs11Config, Pkcs11Kek, SoftKek};
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
    fn sealed_older_generations_go_and_newer_ones_stay() {
        // After a refresh a node deletes the generations of the version older than its state's
        // current one, never a newer one (its state may lag its disk after a restart), and
        // nothing of another version or key.
        let dir = tempfile::tempdir().unwrap();
        let (_store, sealed) = memory_sealed(file_kek(dir.path(), "kek"));
        let at = |generation| SealContext { key_version: 2, generation, ..ctx() };
        for generation in [0, 1, 2, 3] {
            sealed.put(&at(generation), &secret()).unwrap();
        }
        let other_version = SealContext { key_version: 1, generation: 0, ..ctx() };
        let other_key = SealContext { key_id: "payments-2".into(), key_version: 2, generation: 0, ..ctx() };
        sealed.put(&other_version, &secret()).unwrap();
        sealed.put(&other_key, &secret()).unwrap();
        assert_eq!(sealed.generations(&at(2)).unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(sealed.remove_older_generations(&at(2)).unwrap(), vec![0, 1]);
        assert_eq!(sealed.generations(&at(0)).unwrap(), vec![2, 3], "the current and a newer one stay");
        assert!(sealed.get(&other_version).unwrap().is_some() && sealed.get(&other_key).unwrap().is_some());
        assert_eq!(sealed.remove_older_generations(&at(2)).unwrap(), Vec::<u32>::new(), "again: nothing");
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

    /// A store that refuses every write while `fail` is set, counting the writes it was asked for.
    #[derive(Clone, Default)]
    struct FailingStore {
        inner: MemoryStore,
        fail: Arc<std::sync::atomic::AtomicBool>,
        writes: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Store for FailingStore {
        fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(tree, key)
        }
        fn scan(&self, tree: Tree, from: &[u8], to: Option<&[u8]>, limit: usize) -> Result<Vec<Pair>, StoreError> {
            self.inner.scan(tree, from, to, limit)
        }
        fn first(&self, tree: Tree) -> Result<Option<Pair>, StoreError> {
            self.inner.first(tree)
        }
        fn last(&self, tree: Tree) -> Result<Option<Pair>, StoreError> {
            self.inner.last(tree)
        }
        fn write(&self, ops: Vec<Op>, durability: Durability) -> Result<(), StoreError> {
            self.writes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                let source = std::io::Error::other("the disk went away mid-write (test)");
                return Err(StoreError::Io { action: "write", path: "memory".into(), source });
            }
            self.inner.write(ops, durability)
        }
    }

    /// The secrets a node might hold: two key packages of two keys and a DKG secret in flight.
    fn contexts() -> Vec<SealContext> {
        vec![
            ctx(),
            SealContext { key_id: "payroll".into(), key_version: 1, generation: 0, ..ctx() },
            SealContext { key_id: "audit".into(), purpose: Purpose::DkgSecret, ..ctx() },
        ]
    }

    /// A distinct secret per context, so a blob moved between slots would be caught.
    fn secret_of(ctx: &SealContext) -> Vec<u8> {
        let mut bytes = secret();
        bytes.extend_from_slice(ctx.key_id.as_bytes());
        bytes
    }

    /// A data directory's sealed tree under `kek`: the KEK check of "node 3" and every secret of [`contexts`].
    fn sealed_node(store: Arc<dyn Store>, kek: Arc<dyn Kek>) -> SealedStore {
        let sealed = SealedStore::new(store, kek);
        assert_eq!(sealed.check_kek("node 3").unwrap(), KekCheck::Created);
        for ctx in contexts() {
            sealed.put(&ctx, &secret_of(&ctx)).unwrap();
        }
        sealed
    }

    fn sealed_tree(store: &dyn Store) -> Vec<Pair> {
        store.scan(Tree::Sealed, &[], None, usize::MAX).unwrap()
    }

    /// Asserts that `sealed`'s KEK opens the KEK check and every secret of [`contexts`].
    fn assert_opens_all(sealed: &SealedStore) {
        assert_eq!(sealed.check_kek("node 3").unwrap(), KekCheck::Verified);
        for ctx in contexts() {
            assert_eq!(sealed.get(&ctx).unwrap().as_deref(), Some(&secret_of(&ctx)), "{}", ctx.describe());
        }
    }

    /// Asserts that `sealed`'s KEK opens neither the KEK check nor any secret.
    fn assert_opens_none(sealed: &SealedStore) {
        assert!(matches!(sealed.check_kek("node 3"), Err(SealError::WrongKek { .. })));
        for ctx in contexts() {
            assert!(matches!(sealed.get(&ctx), Err(SealError::Open { .. })), "{}", ctx.describe());
        }
    }

    /// Opens the sled store at `path` again. sled's background flusher may hold the
    /// file lock for a moment after the last handle is dropped, so `Locked` is retried for up to 5 s.
    fn reopen(path: &Path) -> Arc<dyn Store> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match SledStore::open(path) {
                Ok(store) => return Arc::new(store),
                Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(e) => panic!("reopen the sled store: {e}"),
            }
        }
    }

    fn reseal(sealed: &SealedStore, new: &dyn Kek) -> Result<ResealReport, SealError> {
        sealed.reseal_all("node 3", &NewKek { kek: new, passphrase_salt: None }, &mut |_| {})
    }

    #[test]
    fn sealed_store_key_parses_back_to_its_context() {
        // Proves that every context's store key parses back to that context, and that no other bytes parse.
        for ctx in contexts().into_iter().chain([SealContext { cluster_id: String::new(), ..ctx() }]) {
            assert_eq!(SealContext::from_store_key(&ctx.store_key()), Some(ctx));
        }
        let key = ctx().store_key();
        for bad in [&[][..], &key[..key.len() - 1], &[key.as_slice(), &[0]].concat(), KEK_CHECK_KEY, SALT_KEY] {
            assert_eq!(SealContext::from_store_key(bad), None, "{bad:?}");
        }
        let mut unknown_purpose = key.clone();
        unknown_purpose[1] = 9;
        assert_eq!(SealContext::from_store_key(&unknown_purpose), None);
        let mut not_utf8 = key.clone();
        not_utf8[4] = 0xFF;
        assert_eq!(SealContext::from_store_key(&not_utf8), None);
    }

    #[test]
    fn sealed_reseal_moves_every_secret_and_the_canary_to_the_new_kek() {
        // Proves that after re-sealing, the new KEK opens every secret and the KEK check, the old KEK opens
        // none of them, every blob changed, and progress ends with every secret counted.
        let dir = tempfile::tempdir().unwrap();
        let store = MemoryStore::new();
        let old = sealed_node(Arc::new(store.clone()), file_kek(dir.path(), "old"));
        let before = sealed_tree(&store);
        let new_kek = file_kek(dir.path(), "new");
        let mut reports = Vec::new();
        let report = old
            .reseal_all("node 3", &NewKek { kek: new_kek.as_ref(), passphrase_salt: None }, &mut |p| reports.push(p))
            .unwrap();
        assert_eq!(report, ResealReport { secrets: 3, salt: SaltChange::Unchanged });
        assert_eq!(reports.last(), Some(&ResealProgress { done: 3, total: 3 }));
        let after = sealed_tree(&store);
        assert_eq!(after.len(), before.len(), "the same records, nothing added or dropped");
        for ((key_before, blob_before), (key_after, blob_after)) in before.iter().zip(&after) {
            assert_eq!(key_before, key_after);
            assert_ne!(blob_before, blob_after, "every blob is sealed anew");
        }
        assert_opens_all(&SealedStore::new(Arc::new(store.clone()), new_kek));
        assert_opens_none(&old);
        store.crash();
        assert_eq!(sealed_tree(&store), after, "the re-sealed records were synced");
    }

    #[test]
    fn sealed_reseal_refuses_a_wrong_current_kek_the_same_key_or_nothing_to_move_and_writes_nothing() {
        // Proves that a current KEK that does not open the KEK check, another label, a new KEK that is the
        // current key (the same file read twice), and an empty data directory are each refused with nothing written.
        let dir = tempfile::tempdir().unwrap();
        let store = FailingStore::default();
        sealed_node(Arc::new(store.clone()), file_kek(dir.path(), "old"));
        let before = sealed_tree(&store);
        let writes = store.writes.load(std::sync::atomic::Ordering::SeqCst);
        let stranger = file_kek(dir.path(), "stranger");
        let wrong = SealedStore::new(Arc::new(store.clone()), stranger.clone());
        let error = reseal(&wrong, file_kek(dir.path(), "new").as_ref()).unwrap_err();
        assert!(matches!(error, SealError::WrongKek { .. }), "{error}");

        let old: Arc<dyn Kek> = Arc::new(SoftKek::from_file(&dir.path().join("old")).unwrap());
        let current = SealedStore::new(Arc::new(store.clone()), old);
        let again = SoftKek::from_file(&dir.path().join("old")).unwrap();
        let error = reseal(&current, &again).unwrap_err();
        assert!(matches!(error, SealError::SameKek { .. }), "{error}");
        assert!(error.to_string().contains("they are the same key"), "{error}");
        let error = current
            .reseal_all("node 4", &NewKek { kek: stranger.as_ref(), passphrase_salt: None }, &mut |_| {})
            .unwrap_err();
        assert!(matches!(error, SealError::CheckLabel { .. }), "{error}");
        assert_eq!(sealed_tree(&store), before);
        assert_eq!(store.writes.load(std::sync::atomic::Ordering::SeqCst), writes, "no write was even tried");
        assert_opens_all(&current);

        let empty = SealedStore::new(Arc::new(MemoryStore::new()), file_kek(dir.path(), "fresh"));
        let error = reseal(&empty, stranger.as_ref()).unwrap_err();
        assert!(matches!(error, SealError::NothingSealed), "{error}");
    }

    #[test]
    fn sealed_reseal_interrupted_write_leaves_the_old_kek_in_charge() {
        // Proves that re-sealing stores everything in exactly one write, and that when that write fails
        // the data directory is as it was: the old KEK opens everything and the new one nothing.
        let dir = tempfile::tempdir().unwrap();
        let store = FailingStore::default();
        let old = sealed_node(Arc::new(store.clone()), file_kek(dir.path(), "old"));
        let before = sealed_tree(&store);
        let writes = store.writes.load(std::sync::atomic::Ordering::SeqCst);
        store.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        let new_kek = file_kek(dir.path(), "new");
        let error = reseal(&old, new_kek.as_ref()).unwrap_err();
        assert!(matches!(error, SealError::Store(StoreError::Io { .. })), "{error}");
        assert_eq!(store.writes.load(std::sync::atomic::Ordering::SeqCst), writes + 1, "one write for everything");
        store.fail.store(false, std::sync::atomic::Ordering::SeqCst);
        store.inner.crash();
        assert_eq!(sealed_tree(&store), before);
        assert_opens_all(&old);
        assert_opens_none(&SealedStore::new(Arc::new(store.clone()), new_kek.clone()));

        reseal(&old, new_kek.as_ref()).unwrap();
        assert_eq!(store.writes.load(std::sync::atomic::Ordering::SeqCst), writes + 2, "one write for everything");
        assert_opens_all(&SealedStore::new(Arc::new(store), new_kek));
    }

    #[test]
    fn sealed_reseal_refuses_a_secret_that_does_not_open_or_a_record_it_does_not_know() {
        // Proves that one secret the current KEK cannot open, or an unknown record in the sealed tree, stops
        // re-sealing before anything is written, naming the secret or the record.
        let dir = tempfile::tempdir().unwrap();
        let store = MemoryStore::new();
        let old = sealed_node(Arc::new(store.clone()), file_kek(dir.path(), "old"));
        let new_kek = file_kek(dir.path(), "new");
        let victim = contexts()[1].clone();
        let mut blob = store.get(Tree::Sealed, &victim.store_key()).unwrap().unwrap();
        blob[20] ^= 1;
        store
            .write(vec![Op::Put { tree: Tree::Sealed, key: victim.store_key(), value: blob }], Durability::Sync)
            .unwrap();
        let before = sealed_tree(&store);
        let error = reseal(&old, new_kek.as_ref()).unwrap_err();
        assert!(matches!(error, SealError::Open { source: KekError::Unseal, .. }), "{error}");
        assert!(error.to_string().contains("key \"payroll\" v1"), "{error}");
        assert_eq!(sealed_tree(&store), before);

        store.write(vec![Op::Remove { tree: Tree::Sealed, key: victim.store_key() }], Durability::Sync).unwrap();
        let unknown = Op::Put { tree: Tree::Sealed, key: vec![2, 1, 2, 3], value: vec![0; 40] };
        store.write(vec![unknown], Durability::Sync).unwrap();
        let before = sealed_tree(&store);
        let error = reseal(&old, new_kek.as_ref()).unwrap_err();
        assert!(matches!(error, SealError::UnknownRecord { ref key } if key == "02010203"), "{error}");
        assert_eq!(sealed_tree(&store), before);
    }

    #[test]
    fn sealed_reseal_to_and_from_passphrases_moves_the_salt() {
        // Proves that moving to a passphrase KEK stores its fresh salt in the same write, that a second
        // passphrase replaces the salt (the old passphrase then opens nothing), that moving to a file KEK
        // removes the salt, and that a salt that does not fit the new KEK's backend is refused.
        let dir = tempfile::tempdir().unwrap();
        let store = MemoryStore::new();
        let file = sealed_node(Arc::new(store.clone()), file_kek(dir.path(), "old"));
        assert_eq!(stored_passphrase_salt(&store).unwrap(), None);

        let first_salt = new_passphrase_salt().unwrap();
        let first: Arc<dyn Kek> = Arc::new(SoftKek::from_passphrase("first passphrase", &first_salt).unwrap());
        let missing = file.reseal_all("node 3", &NewKek { kek: first.as_ref(), passphrase_salt: None }, &mut |_| {});
        assert!(matches!(missing, Err(SealError::NewKekSalt { .. })), "{missing:?}");
        let new = NewKek { kek: first.as_ref(), passphrase_salt: Some(first_salt) };
        assert_eq!(file.reseal_all("node 3", &new, &mut |_| {}).unwrap().salt, SaltChange::Written);
        assert_eq!(stored_passphrase_salt(&store).unwrap(), Some(first_salt));
        let derived = SoftKek::from_passphrase("first passphrase", &passphrase_salt(&store).unwrap()).unwrap();
        let first_store = SealedStore::new(Arc::new(store.clone()), Arc::new(derived));
        assert_opens_all(&first_store);

        let second_salt = new_passphrase_salt().unwrap();
        let second: Arc<dyn Kek> = Arc::new(SoftKek::from_passphrase("second passphrase", &second_salt).unwrap());
        let new = NewKek { kek: second.as_ref(), passphrase_salt: Some(second_salt) };
        assert_eq!(first_store.reseal_all("node 3", &new, &mut |_| {}).unwrap().salt, SaltChange::Written);
        assert_eq!(stored_passphrase_salt(&store).unwrap(), Some(second_salt));
        assert_opens_none(&first_store);
        let derived = SoftKek::from_passphrase("second passphrase", &passphrase_salt(&store).unwrap()).unwrap();
        let second_store = SealedStore::new(Arc::new(store.clone()), Arc::new(derived));
        assert_opens_all(&second_store);

        let last = file_kek(dir.path(), "last");
        let stray = second_store.reseal_all(
            "node 3",
            &NewKek { kek: last.as_ref(), passphrase_salt: Some(second_salt) },
            &mut |_| {},
        );
        assert!(matches!(stray, Err(SealError::NewKekSalt { .. })), "{stray:?}");
        assert_eq!(reseal(&second_store, last.as_ref()).unwrap().salt, SaltChange::Removed);
        assert_eq!(stored_passphrase_salt(&store).unwrap(), None);
        assert_opens_all(&SealedStore::new(Arc::new(store), last));
    }

    #[test]
    fn sealed_reseal_moves_a_sled_data_dir_into_a_token_and_an_earlier_copy_needs_the_old_kek() {
        // Proves re-sealing on sled with a real SoftHSM2 token: a file-KEK data directory moves to a token
        // key and then to a second key on the same token; after each move only the newest key opens the
        // reopened store, a copy taken before the first move opens only with the old file KEK (so destroying
        // that KEK is what makes the copy unreadable), and re-sealing to the key already in use is refused.
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let file = file_kek(dir.path(), "old");
        let store: Arc<dyn Store> = Arc::new(SledStore::open(&data).unwrap());
        let sealed = sealed_node(store.clone(), file.clone());
        drop((sealed, store));
        let copy = dir.path().join("copy");
        copy_dir(&data, &copy);

        let (cfg, token) = test_hsm::kek("reseal-target");
        let token: Arc<dyn Kek> = Arc::new(token);
        let store = reopen(&data);
        let report = reseal(&SealedStore::new(store.clone(), file.clone()), token.as_ref()).unwrap();
        assert_eq!(report.secrets, 3);
        let next_cfg = Pkcs11Config { key_label: "synod-kek-next".into(), ..cfg.clone() };
        Pkcs11Kek::generate_key(&next_cfg).unwrap();
        let next: Arc<dyn Kek> = Arc::new(Pkcs11Kek::open(&next_cfg).unwrap());
        let on_token = SealedStore::new(store.clone(), token.clone());
        let same = Pkcs11Kek::open(&cfg).unwrap();
        assert!(matches!(reseal(&on_token, &same), Err(SealError::SameKek { .. })));
        reseal(&on_token, next.as_ref()).unwrap();
        drop((on_token, store));

        let store = reopen(&data);
        assert_opens_all(&SealedStore::new(store.clone(), next));
        assert_opens_none(&SealedStore::new(store.clone(), token.clone()));
        assert!(matches!(SealedStore::new(store, file.clone()).check_kek("node 3"), Err(SealError::WrongKek { .. })));
        assert_eq!(files_containing(&data, &secret()[..16]), Vec::<std::path::PathBuf>::new());

        let copied: Arc<dyn Store> = Arc::new(SledStore::open(&copy).unwrap());
        assert_opens_none(&SealedStore::new(copied.clone(), token));
        assert_opens_all(&SealedStore::new(copied, file));
    }
}

//! Node backups: what a node cannot get back from its peers.
//!
//! A node's Raft log and state come back from its peers when it starts on an
//! empty data directory; its sealed secrets do not. A backup
//! (`synod node backup`, served by `GET /v1/sys/backup`) is therefore every
//! record of the node's sealed tree as stored (ciphertext under the node's
//! KEK, the KEK check canary, the passphrase salt) plus what an operator needs
//! to know about it (cluster, node, KEK backend, which key versions and
//! generations it holds, the log index it was taken at). It never holds a
//! nonce (nonces live in memory only), a vote or a log entry, and never
//! plaintext.
//!
//! The node signs the backup with its certificate's key, so a restore refuses
//! a file that was altered, one of another cluster (the certificate does not
//! chain to this node's CA) and one of another node, each with its own
//! message. `synod node restore` writes the records into an empty data
//! directory only: the node then starts as an empty disk does (invariant 12),
//! catches up from its peers, deletes generations that are no longer current
//! and reports a key whose current share it lacks, which `synod key repair`
//! gives back. `synod node restore --verify` is the drill: every share is
//! unsealed with the KEK of node.toml and checked against the verifying share
//! the node's state held when the backup was taken, without touching a data
//! directory or the cluster.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use synod_proto::NodeId;
use zeroize::Zeroizing;

use crate::kek::Kek;
use crate::pki::NodeIdentity;
use crate::sealed::{Purpose, SealContext, SealError, SealedStore};
use crate::state::AuditHead;
use crate::store::{Durability, MemoryStore, Op, Store, StoreError, Tree};

/// The `format` of a backup file.
pub const FORMAT: &str = "synod-node-backup/1";
/// What the node's signature covers, before the backup's text.
const SIGNATURE_DOMAIN: &[u8] = b"synod/node-backup/v1\0";
/// The largest backup file read (a bound on what a refusal costs).
pub const BACKUP_BYTES_MAX: usize = 256 << 20;

/// A backup file: the backup as JSON text, signed by the node that wrote it.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackupFile {
    /// [`FORMAT`].
    pub format: String,
    /// The node that wrote it (also inside `backup`, where the signature covers it).
    pub node_id: NodeId,
    /// The [`NodeBackup`] as JSON text; the signature covers these bytes.
    pub backup: String,
    /// The node certificate (hex DER) whose key signed it.
    pub certificate: String,
    /// Ed25519 signature (hex) over [`SIGNATURE_DOMAIN`] and `backup`.
    pub signature: String,
}

/// What a backup holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeBackup {
    pub cluster_id: String,
    pub cluster_name: String,
    pub node_id: NodeId,
    /// SHA-256 (hex) of the cluster CA certificate.
    pub ca_fingerprint: String,
    /// The KEK backend that sealed the records (`file`, `passphrase`, `pkcs11`).
    pub kek_backend: String,
    /// The KEK, described without secrets.
    pub kek: String,
    /// The node's clock when it took the backup, ms since the epoch.
    pub taken_at_ms: u64,
    /// The last log index the node had applied.
    pub log_index: u64,
    /// The node's Raft term.
    pub term: u64,
    /// The audit chain's head in the node's state.
    pub audit_head: AuditHead,
    /// The committed state: the node's stored snapshot and the log after it,
    /// up to `log_index`. A restore seeds the node's Raft state with it, so
    /// that a cluster whose every data directory was lost can elect again.
    #[serde(default)]
    pub raft: Option<RaftCopy>,
    /// Every key share in the records.
    pub shares: Vec<BackedUpShare>,
    /// Every record of the sealed tree, as stored.
    pub records: Vec<Record>,
}

/// The committed Raft state a backup carries.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RaftCopy {
    /// The node's stored snapshot (an endorsed point), if it had built one.
    pub snapshot_meta: Option<openraft::SnapshotMeta<NodeId, synod_proto::NodeAddr>>,
    /// Its bytes (hex).
    pub snapshot: Option<String>,
    /// Every committed entry after the snapshot (from index 0 without one), in order.
    pub entries: Vec<openraft::Entry<synod_proto::TypeConfig>>,
}

/// One sealed key share in a backup, as the node's state saw its key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackedUpShare {
    pub key_id: String,
    /// The key's name, when the node's state still knew the key.
    pub name: Option<String>,
    pub version: u32,
    pub generation: u32,
    /// Whether this was the key's current generation when the backup was taken.
    pub current: bool,
    /// This node's verifying share (hex) in the committed public package of
    /// that generation; known for the current generation only.
    pub verifying_share: Option<String>,
    /// The key's group public key (hex).
    pub group_key: Option<String>,
}

/// One record of the sealed tree (hex key and value).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub key: String,
    pub value: String,
}

/// Why a backup was refused. Each says what was wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("this is not a Synod node backup ({detail}); give a file written by `synod node backup`")]
    NotABackup { detail: String },

    #[error("the backup is {len} bytes, more than the {max} a restore reads; this is not a node backup")]
    TooLarge { len: usize, max: usize },

    #[error(
        "this backup is of another cluster: the certificate that signed it does not chain to this node's CA \
         ({detail}); restore a backup taken from this cluster"
    )]
    OtherCluster { detail: String },

    #[error(
        "the backup was altered after node {node_id} wrote it ({detail}); nothing was restored: use an intact \
         copy of the backup"
    )]
    Tampered { node_id: NodeId, detail: String },

    #[error(
        "this backup is node {theirs}'s, not node {mine}'s: a share sealed for one node never opens on another; \
         restore node {mine} from its own backup"
    )]
    OtherNode { theirs: NodeId, mine: NodeId },

    #[error(
        "the KEK of this node.toml ({kek}) does not open the backup, which node {node_id} sealed under its {backend} \
         KEK ({backup_kek}): wrong passphrase, key file or token? Use the KEK that sealed the backup; if it was \
         destroyed, the backup's shares are gone ({detail})"
    )]
    WrongKek { kek: String, node_id: NodeId, backend: String, backup_kek: String, detail: String },

    #[error("the backup holds no KEK check record, so no KEK can be checked against it; it is not a complete backup")]
    NoKekCheck,

    #[error("share {share} in the backup is unusable: {detail}")]
    Share { share: String, detail: String },

    #[error(
        "the data directory {path} is not empty; a restore writes into an empty one only, so that the node \
         starts as a new disk and votes only once it has caught up: move it aside (or remove it) and run the \
         restore again"
    )]
    DataDirNotEmpty { path: String },

    #[error(transparent)]
    Seal(#[from] SealError),

    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Signs `backup` as `identity`.
pub fn sign(identity: &NodeIdentity, backup: &NodeBackup) -> BackupFile {
    let text = serde_json::to_string(backup).expect("a backup serialises");
    let signature = identity.sign_bytes(&signed_bytes(&text));
    BackupFile {
        format: FORMAT.into(),
        node_id: backup.node_id,
        backup: text,
        certificate: hex::encode(&identity.cert_der),
        signature: hex::encode(signature),
    }
}

fn signed_bytes(text: &str) -> Vec<u8> {
    let mut out = SIGNATURE_DOMAIN.to_vec();
    out.extend_from_slice(text.as_bytes());
    out
}

/// Reads a backup file and checks it was written by node `node_id` of the
/// cluster whose CA is `ca_der`, unaltered. In this order, so that each
/// refusal names its cause: the format; the certificate chains to the CA (at
/// the time the backup says it was taken: a certificate renewed since does not
/// make older backups unusable), else another cluster; the signature and the
/// node named inside, else altered; then the node, else another node's.
pub fn open(bytes: &[u8], ca_der: &[u8], node_id: NodeId) -> Result<NodeBackup, BackupError> {
    if bytes.len() > BACKUP_BYTES_MAX {
        return Err(BackupError::TooLarge { len: bytes.len(), max: BACKUP_BYTES_MAX });
    }
    let file: BackupFile =
        serde_json::from_slice(bytes).map_err(|e| BackupError::NotABackup { detail: format!("not its JSON: {e}") })?;
    if file.format != FORMAT {
        return Err(BackupError::NotABackup { detail: format!("format {:?}, expected {FORMAT:?}", file.format) });
    }
    let tampered = |detail: String| BackupError::Tampered { node_id: file.node_id, detail };
    let backup: NodeBackup =
        serde_json::from_str(&file.backup).map_err(|e| tampered(format!("its content does not parse: {e}")))?;
    let cert = hex::decode(&file.certificate).map_err(|_| tampered("its certificate is not hex".into()))?;
    let (signer, public_key) = crate::pki::verify_node_certificate(ca_der, &cert, backup.taken_at_ms)
        .map_err(|detail| BackupError::OtherCluster { detail })?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&public_key)
        .map_err(|_| tampered("its certificate's key is not a valid Ed25519 key".into()))?;
    let signature: [u8; 64] = hex::decode(&file.signature)
        .ok()
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| tampered("its signature is not 64 hex bytes".into()))?;
    key.verify_strict(&signed_bytes(&file.backup), &ed25519_dalek::Signature::from_bytes(&signature))
        .map_err(|_| tampered(format!("node {signer}'s signature does not verify over its content")))?;
    if backup.node_id != signer || file.node_id != signer {
        return Err(tampered(format!("it names node {} but node {signer} signed it", backup.node_id)));
    }
    if signer != node_id {
        return Err(BackupError::OtherNode { theirs: signer, mine: node_id });
    }
    Ok(backup)
}

/// The backup's records as a store of their own (to open a KEK against, or
/// read the passphrase salt from).
pub fn records_store(backup: &NodeBackup) -> Result<MemoryStore, BackupError> {
    let store = MemoryStore::new();
    let ops = records_ops(backup)?;
    store.write(ops, Durability::Sync)?;
    Ok(store)
}

fn records_ops(backup: &NodeBackup) -> Result<Vec<Op>, BackupError> {
    let bad =
        |what: &str| BackupError::Tampered { node_id: backup.node_id, detail: format!("a record's {what} is not hex") };
    backup
        .records
        .iter()
        .map(|r| {
            Ok(Op::Put {
                tree: Tree::Sealed,
                key: hex::decode(&r.key).map_err(|_| bad("key"))?,
                value: hex::decode(&r.value).map_err(|_| bad("value"))?,
            })
        })
        .collect()
}

/// What the drill found for one share.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ShareCheck {
    pub key_id: String,
    pub name: Option<String>,
    pub version: u32,
    pub generation: u32,
    pub current: bool,
    /// Whether the share was checked against the committed verifying share
    /// (the current generation) or only against itself (an older one).
    pub checked_against_state: bool,
}

/// The restore drill: opens the backup's KEK check with `kek` and unseals
/// every key share, checking that it parses, that its verifying share is its
/// signing share's, and, for the generation current when the backup was
/// taken, that it is the verifying share and group key the node's state held.
/// Plaintext lives in zeroizing buffers, one share at a time. Blocking.
pub fn drill(backup: &NodeBackup, kek: Arc<dyn Kek>) -> Result<Vec<ShareCheck>, BackupError> {
    use frost_ed25519 as frost;
    let store = Arc::new(records_store(backup)?);
    let sealed = SealedStore::new(store, kek.clone());
    if !sealed.has_kek_check()? {
        return Err(BackupError::NoKekCheck);
    }
    let label = crate::sealed::kek_check_label(backup.node_id);
    sealed.check_kek(&label).map_err(|source| match source {
        SealError::WrongKek { .. } | SealError::Kek(_) => BackupError::WrongKek {
            kek: kek.describe(),
            node_id: backup.node_id,
            backend: backup.kek_backend.clone(),
            backup_kek: backup.kek.clone(),
            detail: source.to_string(),
        },
        other => BackupError::Seal(other),
    })?;
    let mut checks = Vec::new();
    for share in &backup.shares {
        let ctx = SealContext {
            cluster_id: backup.cluster_id.clone(),
            node_id: backup.node_id,
            key_id: share.key_id.clone(),
            key_version: share.version,
            generation: share.generation,
            purpose: Purpose::KeyPackage,
        };
        let what = format!(
            "{} v{} generation {}",
            share.name.as_deref().unwrap_or(&share.key_id),
            share.version,
            share.generation
        );
        let unusable = |detail: String| BackupError::Share { share: what.clone(), detail };
        let plain: Zeroizing<Vec<u8>> =
            sealed.get(&ctx)?.ok_or_else(|| unusable("the backup lists it but holds no record of it".into()))?;
        let package = frost::keys::KeyPackage::deserialize(&plain)
            .map_err(|e| unusable(format!("it does not parse as a FROST key package: {e}")))?;
        let derived = frost::keys::VerifyingShare::from(*package.signing_share());
        if derived != *package.verifying_share() {
            return Err(unusable("its verifying share is not its signing share's".into()));
        }
        let own = hex::encode(package.verifying_share().serialize().map_err(|e| unusable(e.to_string()))?);
        let group = hex::encode(package.verifying_key().serialize().map_err(|e| unusable(e.to_string()))?);
        if let Some(committed) = &share.verifying_share {
            if *committed != own {
                return Err(unusable(format!(
                    "it is not the share the cluster committed for node {}: verifying share {own}, committed {committed}",
                    backup.node_id
                )));
            }
        }
        if share.group_key.as_ref().is_some_and(|g| *g != group) {
            return Err(unusable(format!(
                "it belongs to group key {group}, not the key's {}",
                share.group_key.as_deref().unwrap_or("")
            )));
        }
        checks.push(ShareCheck {
            key_id: share.key_id.clone(),
            name: share.name.clone(),
            version: share.version,
            generation: share.generation,
            current: share.current,
            checked_against_state: share.verifying_share.is_some(),
        });
    }
    Ok(checks)
}

/// Writes the backup's records into `store`, which must hold nothing yet, in
/// one synced write. The caller stamps the data directory's identity. Blocking.
pub fn restore(backup: &NodeBackup, store: &dyn Store, path: &str) -> Result<usize, BackupError> {
    for tree in Tree::ALL {
        if !store.scan(tree, &[], None, 1)?.is_empty() {
            return Err(BackupError::DataDirNotEmpty { path: path.into() });
        }
    }
    let ops = records_ops(backup)?;
    let count = ops.len();
    store.write(ops, Durability::Sync)?;
    Ok(count)
}

/// Seeds `store`'s Raft state from the backup's committed state: the snapshot,
/// verified as a snapshot from a peer is by a node that holds no state yet
/// (`trust`: this node's CA, any node it certified, the configured floor of
/// endorsements), then the entries after it. The entries' commands are
/// checked when they are applied, as replicated ones are. No vote is written:
/// the node starts as a disk that may be rolled back (invariant 35) and votes
/// only once a majority of the others has answered. Returns the last index.
pub async fn seed_raft(
    copy: &RaftCopy,
    store: Arc<dyn Store>,
    node_id: NodeId,
    trust: &crate::raft::snapshot::Trust<'_>,
    points_every: u64,
) -> Result<u64, String> {
    use openraft::storage::RaftStateMachine;
    let mut last = None;
    if let (Some(meta), Some(hex_data)) = (&copy.snapshot_meta, &copy.snapshot) {
        let data = hex::decode(hex_data).map_err(|_| "its snapshot is not hex".to_string())?;
        crate::raft::snapshot::verify(trust, meta, &data).map_err(|e| format!("its snapshot does not verify: {e}"))?;
        let (mut sm, _) = crate::raft::state_machine::StateMachine::open(store.clone(), node_id, points_every)
            .map_err(|e| e.to_string())?;
        sm.install_snapshot(meta, Box::new(std::io::Cursor::new(data))).await.map_err(|e| e.to_string())?;
        last = meta.last_log_id;
    }
    for (expected, entry) in (last.map_or(0, |l| l.index + 1)..).zip(&copy.entries) {
        if entry.log_id.index != expected {
            return Err(format!("its log has a gap: entry {} where {expected} was expected", entry.log_id.index));
        }
    }
    let purged = last;
    let (store_, entries) = (store.clone(), copy.entries.clone());
    crate::seams::run_blocking(move || crate::raft::log_store::seed(&*store_, purged, &entries))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(copy.entries.last().map(|e| e.log_id).or(last).map_or(0, |l| l.index))
}

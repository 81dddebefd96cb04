//! Snapshots a receiver can check for itself.
//!
//! A snapshot is a *point*: the applied state right after one log entry,
//! serialised once, named by the SHA-256 of those exact bytes. Every node
//! serialises the same point from its own committed log and, through a
//! node-authored `endorse` command, signs that digest with its certificate key.
//! A snapshot carries the point's bytes, the audit chain up to its head and the
//! signed endorsements. A receiver installs it only if enough members it
//! already trusts (never the snapshot's own members) vouch for exactly those
//! bytes and exactly the log position and membership Raft is told: with fewer
//! compromised nodes than that count, at least one honest node derived the
//! state from the committed log. [`verify`] is that check; it runs before the
//! snapshot reaches openraft, because an error inside openraft's install is
//! fatal to the node and installing adopts the sender's vote.
//!
//! The format: [`MAGIC`], the applied state's JSON length (8 bytes,
//! big-endian), the applied state's JSON (the bytes the digest covers), then
//! a JSON [`Tail`] with the audit records and the endorsements.

use std::collections::{BTreeMap, BTreeSet};

use openraft::SnapshotMeta;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use synod_proto::command::SnapshotPoint;
use synod_proto::{Command, NodeAddr, NodeId, SignedCommand};

use super::state_machine::Applied;
use crate::state::{verify_chain, AuditHead, AuditRecord};

/// Opens every snapshot in this format.
pub const MAGIC: &[u8] = b"synod-snapshot/2\n";
/// The largest snapshot a node receives: it is collected in memory and checked
/// before anything else happens, so this bounds what a sender can make it hold.
pub const SNAPSHOT_BYTES_MAX: usize = 256 * 1024 * 1024;
/// The most endorsements a snapshot may carry (one per member at most counts).
pub const ENDORSEMENTS_MAX: usize = 64;

/// What follows the applied state in a snapshot.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Tail {
    /// The audit chain from its first record to the state's head.
    pub audit: Vec<AuditRecord>,
    /// The committed `endorse` commands that vouch for the point.
    pub endorsements: Vec<SignedCommand>,
}

/// A point this node serialised: what it endorses and, once enough members
/// agree, what its snapshot carries.
pub struct Point {
    /// What Raft is told about the snapshot (position and membership).
    pub meta: SnapshotMeta<NodeId, NodeAddr>,
    /// What the endorsement names.
    pub point: SnapshotPoint,
    /// The applied state's JSON, the bytes `point.state_sha256` covers.
    pub applied_json: Vec<u8>,
    /// The audit chain up to the state's head.
    pub audit: Vec<AuditRecord>,
}

impl Point {
    /// Serialises `applied`, whose audit chain is `audit` (records 1 to its
    /// head). `None` before genesis: there is no cluster to endorse for.
    pub fn capture(applied: &Applied, audit: Vec<AuditRecord>) -> Option<Point> {
        let cluster_id = applied.state.cluster_id.clone()?;
        let last = applied.last_applied?;
        let applied_json = serde_json::to_vec(applied).expect("the applied state serialises");
        let point = SnapshotPoint {
            cluster_id,
            index: last.index,
            term: last.leader_id.term,
            state_sha256: hex::encode(Sha256::digest(&applied_json)),
        };
        let meta = SnapshotMeta {
            last_log_id: Some(last),
            last_membership: applied.last_membership.clone(),
            snapshot_id: format!("{}-{}-{}", last.leader_id.term, last.index, &point.state_sha256[..16]),
        };
        Some(Point { meta, point, applied_json, audit })
    }

    /// The snapshot bytes of this point with `endorsements`.
    pub fn encode(&self, endorsements: Vec<SignedCommand>) -> Vec<u8> {
        let tail = Tail { audit: self.audit.clone(), endorsements };
        encode(&self.applied_json, &tail)
    }
}

/// Snapshot bytes: the applied state's JSON and the tail.
pub fn encode(applied_json: &[u8], tail: &Tail) -> Vec<u8> {
    let tail = serde_json::to_vec(tail).expect("the snapshot tail serialises");
    let mut bytes = Vec::with_capacity(MAGIC.len() + 8 + applied_json.len() + tail.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(applied_json.len() as u64).to_be_bytes());
    bytes.extend_from_slice(applied_json);
    bytes.extend_from_slice(&tail);
    bytes
}

/// A snapshot's parts: the applied state, the exact bytes it was read from, and the tail.
pub struct Decoded<'a> {
    pub applied: Applied,
    pub applied_json: &'a [u8],
    pub tail: Tail,
}

/// Reads snapshot bytes (no checks beyond the format).
pub fn decode(bytes: &[u8]) -> Result<Decoded<'_>, String> {
    let body = bytes.strip_prefix(MAGIC).ok_or("it is not a Synod snapshot of this version")?;
    let (len, rest) = body.split_first_chunk::<8>().ok_or("it ends inside its header")?;
    let len = usize::try_from(u64::from_be_bytes(*len)).map_err(|_| "its state length does not fit in memory")?;
    if len > rest.len() {
        return Err(format!("it says its state is {len} bytes, but only {} follow", rest.len()));
    }
    let (applied_json, tail) = rest.split_at(len);
    let applied = serde_json::from_slice(applied_json).map_err(|e| format!("its state does not parse: {e}"))?;
    let tail = serde_json::from_slice(tail).map_err(|e| format!("its audit chain and endorsements do not parse: {e}"))?;
    Ok(Decoded { applied, applied_json, tail })
}

/// What a receiver trusts when it judges a snapshot: its own last verified
/// state, or, with none, the CA of its own certificate and the floor from its
/// configuration. Never anything the snapshot itself says.
pub struct Trust<'a> {
    /// The cluster CA (DER); endorsers' certificates must chain to it, and the
    /// snapshot's state must name it.
    pub ca_der: &'a [u8],
    /// The cluster the receiver belongs to, if it knows.
    pub cluster_id: Option<&'a str>,
    /// The members whose endorsements count; `None` when the receiver holds no
    /// state yet (then any node the CA certified counts).
    pub members: Option<&'a BTreeSet<NodeId>>,
    /// How many distinct members must vouch.
    pub required: usize,
    /// The receiver's clock, for certificate validity.
    pub now_ms: u64,
}

/// A snapshot that passed [`verify`].
#[derive(Debug)]
pub struct Verified {
    /// The members who vouch for it.
    pub endorsers: Vec<NodeId>,
}

/// Checks a received snapshot against what the receiver trusts: the bytes
/// parse, the state is the one Raft is told about (position, membership), its
/// audit chain ends at the state's head, its CA and cluster are the
/// receiver's, and at least `trust.required` distinct trusted members signed
/// endorsements of exactly this state. The error says which check failed.
/// Costs at most one parse, one pass over the audit chain and
/// [`ENDORSEMENTS_MAX`] signature checks.
pub fn verify(trust: &Trust<'_>, meta: &SnapshotMeta<NodeId, NodeAddr>, bytes: &[u8]) -> Result<Verified, String> {
    if bytes.len() > SNAPSHOT_BYTES_MAX {
        return Err(format!("it is {} bytes; at most {SNAPSHOT_BYTES_MAX} are accepted", bytes.len()));
    }
    let Decoded { applied, applied_json, tail } = decode(bytes)?;
    if applied.last_applied != meta.last_log_id {
        return Err(format!(
            "Raft is told it ends at {:?}, but its state ends at {:?}",
            meta.last_log_id, applied.last_applied
        ));
    }
    if applied.last_membership != meta.last_membership {
        return Err("Raft is told another membership than its state holds".into());
    }
    let state = &applied.state;
    let cluster_id = state.cluster_id.as_deref().ok_or("its state has no cluster (no genesis)")?;
    if trust.cluster_id.is_some_and(|ours| ours != cluster_id) {
        return Err(format!("it is a state of cluster {cluster_id}, not of this node's cluster"));
    }
    if state.ca_certificate.as_deref() != Some(hex::encode(trust.ca_der).as_str()) {
        return Err("its state names another cluster CA than this node's".into());
    }
    let head = verify_chain(&AuditHead::default(), &tail.audit)
        .map_err(|(seq, why)| format!("its audit record {seq} does not chain: {why}"))?;
    if head != state.audit_head {
        return Err(format!(
            "its audit chain ends at record {}, but its state's head is record {}",
            head.seq, state.audit_head.seq
        ));
    }
    if tail.endorsements.len() > ENDORSEMENTS_MAX {
        return Err(format!("it carries {} endorsements; at most {ENDORSEMENTS_MAX}", tail.endorsements.len()));
    }
    let last = applied.last_applied.ok_or("its state covers no log entry")?;
    let expected = SnapshotPoint {
        cluster_id: cluster_id.to_string(),
        index: last.index,
        term: last.leader_id.term,
        state_sha256: hex::encode(Sha256::digest(applied_json)),
    };
    let mut endorsers = BTreeSet::new();
    let mut refused = BTreeMap::new();
    for signed in &tail.endorsements {
        match endorser(trust, &expected, signed) {
            Ok(node) => {
                endorsers.insert(node);
            }
            Err((node, why)) => {
                refused.insert(node, why);
            }
        }
    }
    if endorsers.len() < trust.required {
        let why: Vec<String> = refused.iter().map(|(node, why)| format!("{node}: {why}")).collect();
        return Err(format!(
            "{} of the {} members this node requires vouch for its state {}{}",
            endorsers.len(),
            trust.required,
            &expected.state_sha256[..16],
            if why.is_empty() { String::new() } else { format!(" (refused endorsements: {})", why.join("; ")) }
        ));
    }
    Ok(Verified { endorsers: endorsers.into_iter().collect() })
}

/// The member who signed `signed`, if it is a valid endorsement of exactly
/// `expected` by a member the receiver trusts; else who it claims and why not.
fn endorser(
    trust: &Trust<'_>,
    expected: &SnapshotPoint,
    signed: &SignedCommand,
) -> Result<NodeId, (String, String)> {
    let envelope = signed.verify().map_err(|e| ("?".to_string(), e.to_string()))?;
    let Command::Endorse { node_id, point } = envelope.command else {
        return Err(("?".into(), format!("a {} command is not an endorsement", envelope.command.kind())));
    };
    let named = || format!("node {node_id}");
    if &point != expected {
        return Err((named(), format!("it endorses point {} with state {:.16}", point.index, point.state_sha256)));
    }
    if envelope.cluster_id != expected.cluster_id {
        return Err((named(), "it was signed for another cluster".into()));
    }
    if trust.members.is_some_and(|members| !members.contains(&node_id)) {
        return Err((named(), "not a member this node knows".into()));
    }
    crate::state::verify_node_author(trust.ca_der, node_id, signed, trust.now_ms).map_err(|why| (named(), why))?;
    Ok(node_id)
}

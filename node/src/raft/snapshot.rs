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
    let tail =
        serde_json::from_slice(tail).map_err(|e| format!("its audit chain and endorsements do not parse: {e}"))?;
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
fn endorser(trust: &Trust<'_>, expected: &SnapshotPoint, signed: &SignedCommand) -> Result<NodeId, (String, String)> {
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use ed25519_dalek::SigningKey;
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, EntryPayload, LogId};
    use synod_proto::{Command, Envelope, LogEntry, Member, NodeAddr, OperatorKey, SignedCommand, TypeConfig};

    use super::*;
    use crate::pki::{in_memory_pki, NodeIdentity};
    use crate::raft::state_machine::{build_point, StateMachine};
    use crate::store::{MemoryStore, Store};

    const NOW_MS: u64 = 1_000_000;

    /// A state machine that applied genesis (members 1 to 3, the test CA) and
    /// a few writes, the point at its last entry, and the nodes' identities.
    struct Fixture {
        point: Point,
        identities: Vec<NodeIdentity>,
        ca_der: Vec<u8>,
        members: BTreeSet<NodeId>,
    }

    async fn fixture() -> Fixture {
        let mut rng = rand_core::OsRng;
        let (ca_der, identities) = in_memory_pki(&[1, 2, 3, 9], &mut rng).expect("pki");
        let admin = SigningKey::from_bytes(&[7; 32]);
        let addr = NodeAddr { raft_addr: "127.0.0.1:1".into(), api_addr: "127.0.0.1:2".into() };
        let genesis = Command::Genesis {
            admins: vec![OperatorKey::of(&admin)],
            members: (1..=3).map(|node_id| Member { node_id, addr: addr.clone() }).collect(),
            ca_certificate: hex::encode(&ca_der),
        };
        let mut entry = |index: u64, command: Command| {
            let envelope = Envelope::new("c", command, NOW_MS, 60_000, &mut rng);
            openraft::Entry::<TypeConfig> {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
                payload: EntryPayload::Normal(LogEntry {
                    time_ms: NOW_MS,
                    command: SignedCommand::sign(&envelope, &admin),
                }),
            }
        };
        let put = |i: u64| Command::Put { key: format!("k{i}"), value: "v".into() };
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let (mut sm, shared) = StateMachine::open(store.clone(), 1, 1000).expect("open");
        let outcomes = sm.apply([entry(1, genesis), entry(2, put(2)), entry(3, put(3))]).await.expect("apply");
        assert!(outcomes.iter().all(|o| matches!(o, synod_proto::Outcome::Applied { .. })), "{outcomes:?}");
        let applied = Arc::new(shared.read().clone());
        let point = build_point(&shared, store, applied).await.expect("point").expect("after genesis");
        Fixture { point, identities, ca_der, members: (1..=3).collect() }
    }

    impl Fixture {
        fn endorsement(&self, node: usize, point: &SnapshotPoint) -> SignedCommand {
            let identity = &self.identities[node];
            let command = Command::Endorse { node_id: identity.id, point: point.clone() };
            identity.sign(&Envelope::new("c", command, NOW_MS, 60_000, &mut rand_core::OsRng))
        }

        fn trust(&self, required: usize) -> Trust<'_> {
            Trust {
                ca_der: &self.ca_der,
                cluster_id: Some("c"),
                members: Some(&self.members),
                required,
                now_ms: NOW_MS,
            }
        }

        /// The point's snapshot endorsed by identities `by` (indexes into `identities`).
        fn endorsed(&self, by: &[usize]) -> Vec<u8> {
            self.point.encode(by.iter().map(|&i| self.endorsement(i, &self.point.point)).collect())
        }
    }

    #[tokio::test]
    async fn snapshot_endorsed_by_enough_members_verifies() {
        // Two of three members vouch for exactly these bytes: a receiver requiring two installs it.
        let f = fixture().await;
        let verified = verify(&f.trust(2), &f.point.meta, &f.endorsed(&[0, 1])).expect("verifies");
        assert_eq!(verified.endorsers, vec![1, 2]);
    }

    #[tokio::test]
    async fn snapshot_with_too_few_endorsements_is_refused() {
        // One member alone, the same member twice, or a certified node outside the members
        // is not enough.
        let f = fixture().await;
        let err = verify(&f.trust(2), &f.point.meta, &f.endorsed(&[0])).unwrap_err();
        assert!(err.contains("1 of the 2 members"), "{err}");
        let err = verify(&f.trust(2), &f.point.meta, &f.endorsed(&[0, 0])).unwrap_err();
        assert!(err.contains("1 of the 2 members"), "{err}");
        let err = verify(&f.trust(2), &f.point.meta, &f.endorsed(&[0, 3])).unwrap_err();
        assert!(err.contains("node 9: not a member this node knows"), "{err}");
    }

    #[tokio::test]
    async fn snapshot_with_forged_state_is_refused() {
        // A sender that edits the state keeps endorsements of the honest state: the digest
        // no longer matches, so none of them counts.
        let f = fixture().await;
        let endorsements = vec![f.endorsement(0, &f.point.point), f.endorsement(1, &f.point.point)];
        let forged_json = String::from_utf8(f.point.applied_json.clone()).unwrap().replace("\"k2\"", "\"kX\"");
        assert_ne!(forged_json.as_bytes(), f.point.applied_json.as_slice());
        let bytes = encode(forged_json.as_bytes(), &Tail { audit: f.point.audit.clone(), endorsements });
        let err = verify(&f.trust(2), &f.point.meta, &bytes).unwrap_err();
        assert!(err.contains("0 of the 2 members"), "{err}");
        assert!(err.contains("node 1: it endorses point 3 with state"), "{err}");
    }

    #[tokio::test]
    async fn snapshot_whose_raft_metadata_differs_from_its_state_is_refused() {
        // openraft takes the position and membership from the request, not the blob: they
        // must be the endorsed state's.
        let f = fixture().await;
        let bytes = f.endorsed(&[0, 1]);
        let mut meta = f.point.meta.clone();
        meta.last_log_id = Some(LogId::new(CommittedLeaderId::new(9, 1), 3_000));
        let err = verify(&f.trust(2), &meta, &bytes).unwrap_err();
        assert!(err.contains("Raft is told it ends at"), "{err}");
        let mut meta = f.point.meta.clone();
        let one = openraft::Membership::new(vec![BTreeSet::from([1])], None);
        meta.last_membership = openraft::StoredMembership::new(Some(LogId::new(CommittedLeaderId::new(1, 1), 1)), one);
        let err = verify(&f.trust(2), &meta, &bytes).unwrap_err();
        assert!(err.contains("another membership"), "{err}");
    }

    #[tokio::test]
    async fn snapshot_with_a_broken_audit_chain_is_refused() {
        // Records that do not chain to the state's head are refused before Raft sees them.
        let f = fixture().await;
        let endorsements = vec![f.endorsement(0, &f.point.point), f.endorsement(1, &f.point.point)];
        let mut audit = f.point.audit.clone();
        audit.pop();
        let bytes = encode(&f.point.applied_json, &Tail { audit, endorsements });
        let err = verify(&f.trust(2), &f.point.meta, &bytes).unwrap_err();
        assert!(err.contains("audit chain ends at record 2"), "{err}");
    }

    #[tokio::test]
    async fn snapshot_from_another_ca_or_cluster_or_format_is_refused() {
        // The receiver's own CA and cluster are the anchors; garbage bytes are an error, not a panic.
        let f = fixture().await;
        let bytes = f.endorsed(&[0, 1]);
        let (other_ca, _) = in_memory_pki(&[1], &mut rand_core::OsRng).expect("pki");
        let trust = Trust { ca_der: &other_ca, ..f.trust(2) };
        assert!(verify(&trust, &f.point.meta, &bytes).unwrap_err().contains("another cluster CA"));
        let trust = Trust { cluster_id: Some("other"), ..f.trust(2) };
        assert!(verify(&trust, &f.point.meta, &bytes).unwrap_err().contains("not of this node's cluster"));
        assert!(verify(&f.trust(2), &f.point.meta, b"{}").unwrap_err().contains("not a Synod snapshot"));
        let mut truncated = bytes.clone();
        truncated.truncate(MAGIC.len() + 4);
        assert!(verify(&f.trust(2), &f.point.meta, &truncated).is_err());
    }

    #[tokio::test]
    async fn snapshot_for_a_node_without_state_counts_any_certified_node() {
        // An empty node trusts its own CA and its configured floor: node 9 is certified by
        // the CA, so it counts there, but the floor still needs two distinct nodes.
        let f = fixture().await;
        let trust = Trust { members: None, cluster_id: None, ..f.trust(2) };
        verify(&trust, &f.point.meta, &f.endorsed(&[0, 3])).expect("two certified nodes");
        assert!(verify(&trust, &f.point.meta, &f.endorsed(&[3])).is_err());
    }
}

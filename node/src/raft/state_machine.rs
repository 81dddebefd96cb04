//! The Raft state machine: applies committed entries to [`ClusterState`] and
//! builds, stores and installs snapshots.
//!
//! The applied state lives in memory, shared read-only with the API through
//! [`SharedState`]. On start it is restored from the last stored snapshot;
//! openraft then re-applies the committed log after it. Snapshots are stored in
//! [`Tree::Meta`] in chunks (the store caps value sizes) and replaced atomically.
//!
//! Snapshots are built only at endorsed points (see [`super::snapshot`]): at
//! every point index, `apply` hands a copy of the state to the node
//! ([`Points`]), which serialises and endorses it off the state lock; once
//! enough members vouch for a point, the node asks Raft for a snapshot and the
//! builder returns that point, not whatever happens to be applied by then.

use std::io::Cursor;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use synod_proto::{NodeAddr, NodeId, Outcome, SignedCommand, TypeConfig};

use super::io_error;
use super::snapshot::{self, Point};
use crate::state::{AuditRecord, ClusterState};
use crate::store::{Durability, Op, Store, Tree, VALUE_BYTES_MAX};

const SNAPSHOT_META_KEY: &[u8] = b"snapshot/meta";
/// Audit records: `audit/` + the record's sequence number (8 bytes, big-endian).
const AUDIT_PREFIX: &[u8] = b"audit/";
const AUDIT_END: &[u8] = b"audit0"; // '0' sorts right after '/'.
const SNAPSHOT_CHUNK_PREFIX: &[u8] = b"snapshot/data/";
const SNAPSHOT_CHUNK_END: &[u8] = b"snapshot/data0"; // '0' sorts right after '/'.

/// The applied state with the log position it reflects.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Applied {
    pub last_applied: Option<LogId<NodeId>>,
    pub last_membership: StoredMembership<NodeId, NodeAddr>,
    pub state: ClusterState,
}

/// A snapshot stored by a node before snapshots carried endorsements: the
/// applied state and the whole audit chain. Read only from the node's own store.
#[derive(Deserialize)]
struct LegacySnapshot {
    applied: Applied,
}

/// Where snapshot points pass between the state machine and the node.
pub struct Points {
    /// Log indexes that are points are the multiples of this.
    every: u64,
    /// The state right after the newest point, as `apply` copied it.
    captured: tokio::sync::watch::Sender<Option<Arc<Applied>>>,
    /// Whether an entry other than an endorsement was applied since the last point.
    content_since_point: std::sync::atomic::AtomicBool,
    /// The newest point enough members vouch for, with their endorsements:
    /// what the next snapshot is built from.
    ready: Mutex<Option<(Arc<Point>, Vec<SignedCommand>)>>,
}

impl Points {
    fn new(every: u64) -> Points {
        Points {
            every: every.max(1),
            captured: tokio::sync::watch::channel(None).0,
            content_since_point: std::sync::atomic::AtomicBool::new(true),
            ready: Mutex::default(),
        }
    }

    /// Wakes with each newly captured point.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Option<Arc<Applied>>> {
        self.captured.subscribe()
    }

    /// Makes `point` the next snapshot, carrying `endorsements`.
    pub fn set_ready(&self, point: Arc<Point>, endorsements: Vec<SignedCommand>) {
        *self.ready.lock().expect("points lock") = Some((point, endorsements));
    }

    /// The snapshot of the newest endorsed point: its metadata and bytes.
    pub fn ready_snapshot(&self) -> Option<(SnapshotMeta<NodeId, NodeAddr>, Vec<u8>)> {
        let (point, endorsements) = self.ready.lock().expect("points lock").clone()?;
        Some((point.meta.clone(), point.encode(endorsements)))
    }

    /// The index of the point the next snapshot is built from.
    pub fn ready_index(&self) -> Option<u64> {
        self.ready.lock().expect("points lock").as_ref().and_then(|(p, _)| p.meta.last_log_id.map(|l| l.index))
    }
}

/// The key of audit record `seq`.
fn audit_key(seq: u64) -> Vec<u8> {
    let mut key = AUDIT_PREFIX.to_vec();
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// Reads audit records `from..` (at most `limit`) from a store.
pub fn read_audit(store: &dyn Store, from: u64, limit: usize) -> Result<Vec<AuditRecord>, crate::store::StoreError> {
    let rows = store.scan(Tree::Meta, &audit_key(from), Some(AUDIT_END), limit)?;
    Ok(rows.into_iter().filter_map(|(_, v)| serde_json::from_slice(&v).ok()).collect())
}

/// Read access to the applied state for the API and the transport, and the
/// sequence number of the last audit record written to the store (records are
/// written just after the state changes, so readers wait for this to catch up).
#[derive(Clone)]
pub struct SharedState(
    Arc<RwLock<Applied>>,
    Arc<std::sync::atomic::AtomicU64>,
    Arc<tokio::sync::watch::Sender<u64>>,
    Arc<Points>,
);

impl Default for SharedState {
    fn default() -> Self {
        SharedState::new(1)
    }
}

impl SharedState {
    fn new(points_every: u64) -> Self {
        let (applied, _) = tokio::sync::watch::channel(0);
        SharedState(Arc::default(), Arc::default(), Arc::new(applied), Arc::new(Points::new(points_every)))
    }

    /// Snapshot points: captured by `apply`, endorsed by the node.
    pub fn points(&self) -> &Arc<Points> {
        &self.3
    }

    /// Wakes whenever entries are applied (the value is the last applied index),
    /// so waiters react at once instead of polling.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.2.subscribe()
    }

    pub fn read(&self) -> RwLockReadGuard<'_, Applied> {
        self.0.read().expect("state lock poisoned")
    }

    /// The last audit record in the store.
    pub fn audit_written(&self) -> u64 {
        self.1.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A shared state holding `state` as applied up to `index` (tests of one piece).
    #[cfg(test)]
    pub fn holding(state: crate::state::ClusterState, index: u64) -> SharedState {
        let shared = SharedState::default();
        let mut applied = shared.0.write().expect("state lock");
        applied.state = state;
        applied.last_applied = Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), index));
        drop(applied);
        shared
    }

    fn set_audit_written(&self, seq: u64) {
        self.1.store(seq, std::sync::atomic::Ordering::Release);
    }
}

/// A stored snapshot: its meta and its bytes.
pub type StoredSnapshot = (SnapshotMeta<NodeId, NodeAddr>, Vec<u8>);

/// The snapshot stored in `store` (its meta and bytes), if any: what a node
/// backup carries of the committed state (`crate::backup`).
pub fn stored_snapshot(store: &dyn Store) -> std::io::Result<Option<StoredSnapshot>> {
    let Some(meta_bytes) = store.get(Tree::Meta, SNAPSHOT_META_KEY).map_err(io_error)? else {
        return Ok(None);
    };
    let meta: SnapshotMeta<NodeId, NodeAddr> = serde_json::from_slice(&meta_bytes).map_err(std::io::Error::other)?;
    let chunks =
        store.scan(Tree::Meta, SNAPSHOT_CHUNK_PREFIX, Some(SNAPSHOT_CHUNK_END), usize::MAX).map_err(io_error)?;
    Ok(Some((meta, chunks.into_iter().flat_map(|(_, v)| v).collect())))
}

/// The state machine over a [`Store`].
pub struct StateMachine {
    store: Arc<dyn Store>,
    shared: SharedState,
    /// This node's id, for named fault points.
    node_id: NodeId,
    /// Where applied commands are counted (none in unit tests).
    metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Builds snapshots of whatever is applied, unendorsed: only openraft's
    /// storage conformance suite, which expects that.
    #[cfg(test)]
    build_current: bool,
}

impl StateMachine {
    /// Restores node `node_id`'s applied state from the last stored snapshot, if
    /// any; snapshot points fall on multiples of `points_every` log indexes.
    pub fn open(
        store: Arc<dyn Store>,
        node_id: NodeId,
        points_every: u64,
    ) -> Result<(Self, SharedState), StorageError<NodeId>> {
        let shared = SharedState::new(points_every);
        let sm = StateMachine {
            store,
            shared: shared.clone(),
            node_id,
            metrics: None,
            #[cfg(test)]
            build_current: false,
        };
        if let Some(snapshot) = sm.load_snapshot()? {
            let applied = read_stored(snapshot.snapshot.get_ref())
                .map_err(|e| StorageIOError::read_snapshot(Some(snapshot.meta.signature()), &io_error(e)))?;
            sm.shared.set_audit_written(applied.state.audit_head.seq);
            *sm.shared.0.write().expect("state lock") = applied;
        }
        Ok((sm, shared))
    }

    /// As [`StateMachine::open`], building snapshots of whatever is applied
    /// (openraft's storage conformance suite expects that).
    #[cfg(test)]
    pub fn open_building_current(store: Arc<dyn Store>) -> Result<Self, StorageError<NodeId>> {
        let (mut sm, _) = StateMachine::open(store, 1, 1)?;
        sm.build_current = true;
        Ok(sm)
    }

    fn load_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let stored = stored_snapshot(&*self.store).map_err(|e| StorageIOError::read_snapshot(None, &io_error(e)))?;
        Ok(stored.map(|(meta, data)| Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }

    /// Applies entries to the in-memory state; returns their outcomes and the
    /// audit records they appended.
    fn apply_entries(
        &self,
        entries: impl IntoIterator<Item = openraft::Entry<TypeConfig>>,
    ) -> (Vec<Outcome>, Vec<AuditRecord>) {
        let mut applied = self.shared.0.write().expect("state lock");
        let mut outcomes = Vec::new();
        let mut audit = Vec::new();
        for entry in entries {
            let index = entry.log_id.index;
            applied.last_applied = Some(entry.log_id);
            let outcome = match entry.payload {
                EntryPayload::Blank => Outcome::Internal,
                EntryPayload::Normal(ref data) => applied.state.apply(index, entry.log_id.leader_id.term, data),
                EntryPayload::Membership(ref membership) => {
                    applied.state.observe_membership(index, membership.nodes().map(|(id, _)| *id));
                    applied.last_membership = StoredMembership::new(Some(entry.log_id), membership.clone());
                    Outcome::Internal
                }
            };
            outcomes.push(outcome);
            audit.extend(applied.state.take_audit());
            let endorsement = matches!(entry.payload, EntryPayload::Normal(_)) && applied.state.last_was_endorsement;
            if !endorsement {
                self.shared.3.content_since_point.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            let points = &self.shared.3;
            if index % points.every == 0 && applied.state.cluster_id.is_some() {
                // Only a stretch holding more than endorsements makes a point: else, with
                // points closer together than the members, endorsements would make
                // points of their own for ever.
                if points.content_since_point.swap(false, std::sync::atomic::Ordering::Relaxed) {
                    // A copy, not a serialisation: the node serialises it off this lock.
                    points.captured.send_replace(Some(Arc::new(applied.clone())));
                }
            }
        }
        if let Some(last) = applied.last_applied {
            self.shared.2.send_replace(last.index);
        }
        if let Some(metrics) = &self.metrics {
            // One audit record per judged command, batches included: count them by kind.
            for record in &audit {
                metrics
                    .counter("synod_commands_total", &[("kind", &record.kind), ("outcome", &record.result)])
                    .increment(1);
                if record.kind == "approve" {
                    metrics.counter("synod_approvals_total", &[("outcome", &record.result)]).increment(1);
                }
            }
        }
        (outcomes, audit)
    }

    /// The same state machine, counting what it applies in `metrics`.
    pub fn observed_by(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    async fn save_snapshot(
        &self,
        meta: &SnapshotMeta<NodeId, NodeAddr>,
        data: &[u8],
    ) -> Result<(), StorageError<NodeId>> {
        let mut ops = vec![
            Op::RemoveRange {
                tree: Tree::Meta,
                from: SNAPSHOT_CHUNK_PREFIX.to_vec(),
                to_exclusive: Some(SNAPSHOT_CHUNK_END.to_vec()),
            },
            Op::Put {
                tree: Tree::Meta,
                key: SNAPSHOT_META_KEY.to_vec(),
                value: serde_json::to_vec(meta).expect("meta"),
            },
        ];
        for (i, chunk) in data.chunks(VALUE_BYTES_MAX).enumerate() {
            let mut key = SNAPSHOT_CHUNK_PREFIX.to_vec();
            key.extend_from_slice(format!("{i:08}").as_bytes());
            ops.push(Op::Put { tree: Tree::Meta, key, value: chunk.to_vec() });
        }
        let store = self.store.clone();
        // Synced: the log before this snapshot may be purged once it is stored.
        crate::seams::run_blocking(move || store.write(ops, Durability::Sync))
            .await
            .and_then(|r| r.map_err(io_error))
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e).into())
    }
}

/// How long a point waits for the audit records of what it covers. `apply`
/// writes them right after it releases the state lock, with no wait in between,
/// so this is a scheduler turn; past it the store is broken.
const POINT_AUDIT_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Serialises `applied` (a state `apply` captured) into a snapshot point, with
/// the audit chain up to its head, read from `store` once every record it
/// vouches for is there: `apply` moves the state (and the chain's head) under
/// the lock and writes the records just after, so a point serialised in
/// between would carry head N with fewer than N records, and a node installing
/// it would have a permanent gap in its chain. `None` if the store's chain no
/// longer reaches that head (a snapshot was installed meanwhile) or before genesis.
pub async fn build_point(
    shared: &SharedState,
    store: Arc<dyn Store>,
    applied: Arc<Applied>,
) -> std::io::Result<Option<Point>> {
    let head = applied.state.audit_head.seq;
    let deadline = tokio::time::Instant::now() + POINT_AUDIT_WAIT;
    while shared.audit_written() < head {
        if tokio::time::Instant::now() >= deadline {
            return Err(std::io::Error::other("the audit records of the applied state never reached the store"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    crate::seams::run_blocking(move || {
        let audit: Vec<AuditRecord> =
            read_audit(&*store, 1, usize::MAX).map_err(io_error)?.into_iter().take_while(|r| r.seq <= head).collect();
        if audit.last().map_or(0, |r| r.seq) != head || audit.len() as u64 != head {
            return Ok(None);
        }
        Ok(Point::capture(&applied, audit))
    })
    .await?
}

/// The applied state in a snapshot this node stored (this format or the one before).
fn read_stored(bytes: &[u8]) -> Result<Applied, String> {
    if bytes.starts_with(snapshot::MAGIC) {
        return snapshot::decode(bytes).map(|d| d.applied);
    }
    serde_json::from_slice::<LegacySnapshot>(bytes).map(|l| l.applied).map_err(|e| e.to_string())
}

impl StateMachine {
    /// Writes the audit records `apply_entries` produced (buffered: they are a
    /// function of the committed log, and entries after the last snapshot are
    /// applied again, rewriting them, after a crash), then says so.
    fn write_audit(&self, audit: &[AuditRecord]) -> Result<(), StorageError<NodeId>> {
        let Some(last) = audit.last().map(|r| r.seq) else { return Ok(()) };
        let ops = audit
            .iter()
            .map(|r| Op::Put {
                tree: Tree::Meta,
                key: audit_key(r.seq),
                value: serde_json::to_vec(r).expect("record serialises"),
            })
            .collect();
        // Inline, not on the blocking pool: a buffered write only stages the records in
        // memory (the engine's own threads write them out), and a hand-off per applied
        // batch would cost more than the write.
        self.store.write(ops, Durability::Buffered).map_err(|e| StorageIOError::write_state_machine(&io_error(e)))?;
        self.shared.set_audit_written(last);
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    /// The newest endorsed point, if it is newer than the stored snapshot;
    /// else the stored snapshot as it is (an error here would stop the node).
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        #[cfg(test)]
        if self.build_current {
            return self.build_current_snapshot().await;
        }
        let stored = self.load_snapshot()?;
        let stored_last = stored.as_ref().and_then(|s| s.meta.last_log_id);
        let ready = self.shared.3.ready.lock().expect("points lock").clone();
        let Some((point, endorsements)) = ready.filter(|(p, _)| p.meta.last_log_id > stored_last) else {
            return Ok(stored.unwrap_or_else(|| Snapshot {
                meta: SnapshotMeta {
                    last_log_id: None,
                    last_membership: Default::default(),
                    snapshot_id: "none".into(),
                },
                snapshot: Box::new(Cursor::new(Vec::new())),
            }));
        };
        let data = point.encode(endorsements);
        crate::faults::crash_point(self.node_id, crate::faults::SNAPSHOT_BEFORE_SAVE).await;
        self.save_snapshot(&point.meta, &data).await?;
        tracing::info!(snapshot_id = %point.meta.snapshot_id, bytes = data.len(), "built snapshot at an endorsed point");
        Ok(Snapshot { meta: point.meta.clone(), snapshot: Box::new(Cursor::new(data)) })
    }
}

#[cfg(test)]
impl StateMachine {
    /// A snapshot of whatever is applied, carrying no endorsements.
    async fn build_current_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let applied = self.shared.read().clone();
        let audit =
            read_audit(&*self.store, 1, usize::MAX).map_err(|e| StorageIOError::read_snapshot(None, &io_error(e)))?;
        let applied_json = serde_json::to_vec(&applied).expect("state serialises");
        let data = snapshot::encode(&applied_json, &snapshot::Tail { audit, endorsements: Vec::new() });
        let meta = SnapshotMeta {
            last_log_id: applied.last_applied,
            last_membership: applied.last_membership.clone(),
            snapshot_id: format!("current-{}", applied.last_applied.map_or(0, |l| l.index)),
        };
        self.save_snapshot(&meta, &data).await?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, NodeAddr>), StorageError<NodeId>> {
        let applied = self.shared.read();
        Ok((applied.last_applied, applied.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let (outcomes, audit) = self.apply_entries(entries);
        crate::faults::crash_point(self.node_id, crate::faults::APPLY_BEFORE_AUDIT).await;
        self.write_audit(&audit)?;
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        StateMachine {
            store: self.store.clone(),
            shared: self.shared.clone(),
            node_id: self.node_id,
            metrics: self.metrics.clone(),
            #[cfg(test)]
            build_current: self.build_current,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeAddr>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        // Verified before it reached Raft (`node::snapshot`); here it is only stored.
        let data = snapshot.into_inner();
        let parsed =
            snapshot::decode(&data).map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &io_error(e)))?;
        let applied = parsed.applied;
        let audit = parsed.tail.audit;
        // The snapshot's audit chain replaces ours (ours may hold records of a log the leader overrode).
        let mut ops = vec![Op::RemoveRange {
            tree: Tree::Meta,
            from: AUDIT_PREFIX.to_vec(),
            to_exclusive: Some(AUDIT_END.to_vec()),
        }];
        ops.extend(audit.iter().map(|r| Op::Put {
            tree: Tree::Meta,
            key: audit_key(r.seq),
            value: serde_json::to_vec(r).expect("record serialises"),
        }));
        let store = self.store.clone();
        crate::seams::run_blocking(move || store.write(ops, Durability::Buffered))
            .await
            .and_then(|r| r.map_err(io_error))
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        self.save_snapshot(meta, &data).await?;
        tracing::info!(snapshot_id = %meta.snapshot_id, last = ?meta.last_log_id, "installed snapshot from the leader");
        self.shared.set_audit_written(applied.state.audit_head.seq);
        let last = applied.last_applied.map_or(0, |l| l.index);
        *self.shared.0.write().expect("state lock") = applied;
        self.shared.2.send_replace(last);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        self.load_snapshot()
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;
    use openraft::{CommittedLeaderId, EntryPayload, LogId};
    use synod_proto::{Command, Envelope, LogEntry, Member, OperatorKey, SignedCommand};

    use super::*;
    use crate::store::MemoryStore;

    fn entry(index: u64, command: Command) -> openraft::Entry<TypeConfig> {
        let admin = SigningKey::from_bytes(&[7; 32]);
        let time_ms = 1_000 + index;
        let envelope = Envelope {
            cluster_id: "c".into(),
            command_id: format!("{index:032x}"),
            issued_at_ms: time_ms,
            expires_at_ms: time_ms + 60_000,
            command,
        };
        openraft::Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(LogEntry { time_ms, command: SignedCommand::sign(&envelope, &admin) }),
        }
    }

    fn genesis() -> Command {
        let addr = NodeAddr { raft_addr: "127.0.0.1:1".into(), api_addr: "127.0.0.1:2".into() };
        Command::Genesis {
            admins: vec![OperatorKey::of(&SigningKey::from_bytes(&[7; 32]))],
            members: vec![Member { node_id: 1, addr }],
            ca_certificate: "00".into(),
        }
    }

    #[tokio::test]
    async fn snapshot_point_built_between_apply_and_the_audit_write_carries_every_record() {
        // `apply` moves the state under the lock and writes the entries' audit records
        // just after. A point serialised in that gap waits for the records, so it never
        // carries a head of N records with fewer than N of them.
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let (sm, shared) = StateMachine::open(store.clone(), 1, 3).expect("open");
        let mut captured = shared.points().subscribe();
        let put = |i: u64| entry(i, Command::Put { key: format!("k{i}"), value: "v".into() });
        let (_, audit) = sm.apply_entries([entry(1, genesis()), put(2), put(3)]);
        assert_eq!(audit.len(), 3);
        assert_eq!(shared.audit_written(), 0, "the records are not in the store yet");
        let applied = captured.borrow_and_update().clone().expect("index 3 is a point");
        assert_eq!(applied.last_applied.map(|l| l.index), Some(3));

        let (waiting, store2) = (shared.clone(), store.clone());
        let build = tokio::spawn(async move { build_point(&waiting, store2, applied).await });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!build.is_finished(), "the point must wait for the audit records");

        sm.write_audit(&audit).expect("audit write");
        let point = build.await.expect("builder task").expect("point").expect("a point after genesis");
        let bytes = point.encode(Vec::new());
        let decoded = snapshot::decode(&bytes).expect("decodes");
        assert_eq!(decoded.applied.state.audit_head.seq, 3);
        assert_eq!(decoded.tail.audit.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        let head = crate::state::verify_chain(&crate::state::AuditHead::default(), &decoded.tail.audit)
            .expect("chain verifies");
        assert_eq!(head, decoded.applied.state.audit_head);
    }

    #[test]
    fn snapshot_points_are_not_made_of_endorsements_alone() {
        // Every second index is a point here, closer than the endorsements one point draws:
        // a stretch holding only endorsements makes no point, so they do not feed themselves.
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let (sm, shared) = StateMachine::open(store, 1, 2).expect("open");
        let mut captured = shared.points().subscribe();
        let put = |i: u64| entry(i, Command::Put { key: format!("k{i}"), value: "v".into() });
        let endorse = |i: u64| {
            let point = synod_proto::command::SnapshotPoint {
                cluster_id: "c".into(),
                index: 2,
                term: 1,
                state_sha256: "0".repeat(64),
            };
            entry(i, Command::Endorse { node_id: 1, point })
        };
        sm.apply_entries([entry(1, genesis()), put(2)]);
        assert!(captured.has_changed().unwrap(), "index 2 follows a put");
        captured.borrow_and_update();
        sm.apply_entries([endorse(3), endorse(4)]);
        assert!(!captured.has_changed().unwrap(), "index 4 follows only endorsements");
        sm.apply_entries([put(5), endorse(6)]);
        assert!(captured.has_changed().unwrap(), "index 6 follows a put");
    }
}

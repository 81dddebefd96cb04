//! The Raft log and vote, kept in the node's [`Store`].
//!
//! Durability rule: openraft acknowledges nothing before a real fsync.
//! `save_vote`, `truncate` and `purge` return after a `Durability::Sync`
//! write. `append` writes its entries buffered and hands openraft's callback to
//! a flusher task, which fsyncs and only then reports the entries persisted:
//! the leader sends the entries to its followers while its own fsync runs, and
//! appends that arrive during one fsync share the next (group commit). Callbacks
//! fire in append order; `truncate`, `purge` and `save_vote` first wait until
//! every earlier callback has fired, so the order of completions is the order
//! of the calls.
//! Entries are keyed by big-endian index in [`Tree::Log`], split into chunks of
//! at most [`VALUE_BYTES_MAX`] (key: index ‖ chunk number) because the store
//! caps value sizes; the vote, the committed id and the last purged id live in
//! [`Tree::Meta`].

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use synod_proto::{NodeId, TypeConfig};
use tokio::sync::{mpsc, oneshot};

use super::io_error;
use crate::store::{Durability, Op, Store, Tree, VALUE_BYTES_MAX};

const VOTE_KEY: &[u8] = b"raft/vote";
const COMMITTED_KEY: &[u8] = b"raft/committed";
const PURGED_KEY: &[u8] = b"raft/purged";

/// Raft log storage over a [`Store`]. Cloning shares the store and the flusher.
#[derive(Clone)]
pub struct LogStore {
    store: Arc<dyn Store>,
    /// The flusher's queue, started on the first append.
    flusher: Arc<std::sync::Mutex<Option<mpsc::UnboundedSender<Flush>>>>,
    /// Where the flusher records how long each fsync took (none in unit tests).
    fsync_metric: Option<metrics::Histogram>,
}

/// Work for the flusher, in call order.
enum Flush {
    /// Entries written buffered: report them persisted after the next fsync.
    Appended(LogFlushed<TypeConfig>),
    /// Answer once everything queued before has been reported.
    Barrier(oneshot::Sender<()>),
}

impl LogStore {
    pub fn new(store: Arc<dyn Store>) -> Self {
        LogStore { store, flusher: Arc::default(), fsync_metric: None }
    }

    /// The same store, recording each fsync's duration in `metrics`.
    pub fn observed_by(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.fsync_metric = Some(metrics.fsync.clone());
        self
    }

    fn enqueue(&self, job: Flush) {
        let mut flusher = self.flusher.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let queue = flusher.get_or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(flush_loop(self.store.clone(), rx, self.fsync_metric.clone()));
            tx
        });
        // The flusher ends only when every sender is gone, so this cannot fail while `self` lives.
        let _ = queue.send(job);
    }

    /// Waits until every append queued so far has been reported.
    async fn drain(&self) {
        if self.flusher.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_none() {
            return;
        }
        let (done, wait) = oneshot::channel();
        self.enqueue(Flush::Barrier(done));
        let _ = wait.await;
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError<NodeId>> {
        let Some(bytes) = self.store.get(Tree::Meta, key).map_err(|e| StorageIOError::read(&io_error(e)))? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| StorageIOError::read(&io_error(e)).into())
    }

    async fn write(&self, ops: Vec<Op>, durability: Durability) -> Result<(), std::io::Error> {
        if durability == Durability::Buffered {
            // Inline: a buffered write only stages the data in memory (the engine's own
            // threads write it out); a hand-off to the blocking pool would cost more.
            return self.store.write(ops, durability).map_err(io_error);
        }
        let store = self.store.clone();
        crate::seams::run_blocking(move || store.write(ops, durability)).await?.map_err(io_error)
    }
}

/// The flusher: one fsync for every append queued while the previous one ran,
/// then each append's callback, in order. A failed fsync is reported to every
/// waiting callback (openraft then stops this node: it cannot trust its log).
async fn flush_loop(
    store: Arc<dyn Store>,
    mut queue: mpsc::UnboundedReceiver<Flush>,
    fsync_metric: Option<metrics::Histogram>,
) {
    while let Some(first) = queue.recv().await {
        let mut jobs = vec![first];
        while let Ok(next) = queue.try_recv() {
            jobs.push(next);
        }
        let result = if jobs.iter().any(|j| matches!(j, Flush::Appended(_))) {
            let store = store.clone();
            let started = std::time::Instant::now();
            let written = crate::seams::run_blocking(move || store.write(Vec::new(), Durability::Sync)).await;
            if let Some(histogram) = &fsync_metric {
                histogram.record(started.elapsed().as_secs_f64());
            }
            match written {
                Ok(written) => written.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        } else {
            Ok(())
        };
        for job in jobs {
            match job {
                Flush::Appended(callback) => callback.log_io_completed(result.clone().map_err(std::io::Error::other)),
                Flush::Barrier(done) => {
                    let _ = done.send(());
                }
            }
        }
    }
}

/// Seeds an empty store's log for `synod node restore`: the entries of a
/// backup after its snapshot (ending at `purged`, the snapshot's last log
/// id), all committed, so openraft applies them when the node starts. The
/// vote is left unset: a restored node takes no vote from its backup (the boot
/// check gives it one). One synced write. Blocking.
pub fn seed(
    store: &dyn Store,
    purged: Option<LogId<NodeId>>,
    entries: &[Entry<TypeConfig>],
) -> Result<(), crate::store::StoreError> {
    let mut ops = Vec::new();
    if let Some(purged) = purged {
        ops.push(Op::Put { tree: Tree::Meta, key: PURGED_KEY.to_vec(), value: json(&purged) });
    }
    for entry in entries {
        ops.extend(put_entry(entry));
    }
    if let Some(committed) = entries.last().map(|e| e.log_id).or(purged) {
        ops.push(Op::Put { tree: Tree::Meta, key: COMMITTED_KEY.to_vec(), value: json(&Some(committed)) });
        // The term of the last entry, voting for nobody: no candidacy of this
        // node can then be in a term that already had a leader.
        let term = committed.leader_id.term;
        let vote: Vote<NodeId> = Vote { leader_id: openraft::LeaderId { term, voted_for: None }, committed: false };
        ops.push(Op::Put { tree: Tree::Meta, key: VOTE_KEY.to_vec(), value: json(&vote) });
    }
    store.write(ops, Durability::Sync)
}

/// The key of the first chunk of entry `index`; every chunk of entries
/// `< index` sorts before it.
fn index_key(index: u64) -> Vec<u8> {
    chunk_key(index, 0)
}

fn chunk_key(index: u64, chunk: u16) -> Vec<u8> {
    let mut key = index.to_be_bytes().to_vec();
    key.extend_from_slice(&chunk.to_be_bytes());
    key
}

fn key_index(key: &[u8]) -> u64 {
    u64::from_be_bytes(key[..8].try_into().expect("log keys are 10 bytes"))
}

/// The store operations that write one entry, chunked.
fn put_entry(entry: &Entry<TypeConfig>) -> Vec<Op> {
    let bytes = json(entry);
    bytes
        .chunks(VALUE_BYTES_MAX)
        .enumerate()
        .map(|(i, chunk)| Op::Put {
            tree: Tree::Log,
            key: chunk_key(entry.log_id.index, u16::try_from(i).expect("entries are far smaller than 4 GiB")),
            value: chunk.to_vec(),
        })
        .collect()
}

/// Reassembles entries from rows in key order.
fn join_entries(rows: Vec<(Vec<u8>, Vec<u8>)>) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
    let mut entries = Vec::new();
    let mut current: Option<(u64, Vec<u8>)> = None;
    let decode = |bytes: &[u8]| -> Result<Entry<TypeConfig>, StorageError<NodeId>> {
        serde_json::from_slice(bytes).map_err(|e| StorageIOError::read_logs(&io_error(e)).into())
    };
    for (key, value) in rows {
        let index = key_index(&key);
        match &mut current {
            Some((i, buf)) if *i == index => buf.extend_from_slice(&value),
            _ => {
                if let Some((_, buf)) = current.take() {
                    entries.push(decode(&buf)?);
                }
                current = Some((index, value));
            }
        }
    }
    if let Some((_, buf)) = current {
        entries.push(decode(&buf)?);
    }
    Ok(entries)
}

fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("raft metadata serialises")
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let from = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(i) => Some(i + 1),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        let to_key = to.map(index_key);
        let rows = self
            .store
            .scan(Tree::Log, &index_key(from), to_key.as_deref(), usize::MAX)
            .map_err(|e| StorageIOError::read_logs(&io_error(e)))?;
        join_entries(rows)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.read_meta(PURGED_KEY)?;
        let last = self.store.last(Tree::Log).map_err(|e| StorageIOError::read_logs(&io_error(e)))?;
        let last_log_id = match last {
            Some((key, _)) => {
                let index = key_index(&key);
                let mut reader = self.clone();
                let entries = reader.try_get_log_entries(index..=index).await?;
                entries.last().map(|e| e.log_id)
            }
            None => last_purged_log_id,
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.drain().await;
        let ops = vec![Op::Put { tree: Tree::Meta, key: VOTE_KEY.to_vec(), value: json(vote) }];
        self.write(ops, Durability::Sync).await.map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.read_meta(VOTE_KEY)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        // Not fsynced on its own: a lost committed index is recomputed by the
        // leader; it rides along with the next synced write.
        let ops = vec![Op::Put { tree: Tree::Meta, key: COMMITTED_KEY.to_vec(), value: json(&committed) }];
        self.write(ops, Durability::Buffered).await.map_err(|e| StorageIOError::write(&e).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.read_meta::<Option<LogId<NodeId>>>(COMMITTED_KEY)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let ops: Vec<Op> = entries.into_iter().flat_map(|entry| put_entry(&entry)).collect();
        // Written now, reported persisted by the flusher after its next fsync.
        if let Err(e) = self.write(ops, Durability::Buffered).await {
            callback.log_io_completed(Err(io_error(&e)));
            return Err(StorageIOError::write_logs(&e).into());
        }
        self.enqueue(Flush::Appended(callback));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.drain().await;
        let ops = vec![Op::RemoveRange { tree: Tree::Log, from: index_key(log_id.index), to_exclusive: None }];
        self.write(ops, Durability::Sync).await.map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.drain().await;
        let ops = vec![
            Op::Put { tree: Tree::Meta, key: PURGED_KEY.to_vec(), value: json(&log_id) },
            Op::RemoveRange { tree: Tree::Log, from: index_key(0), to_exclusive: Some(index_key(log_id.index + 1)) },
        ];
        // Synced: after a follower installs a snapshot its log starts past a gap,
        // and only the purged marker explains the gap. Losing it while later
        // (synced) entries survive would make openraft read the log from index 0.
        self.write(ops, Durability::Sync).await.map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};
    use synod_proto::{LogEntry, OperatorKey, SignedCommand};

    use super::*;
    use crate::store::MemoryStore;

    fn entry(index: u64, envelope_bytes: usize) -> Entry<TypeConfig> {
        let command = SignedCommand {
            envelope: "x".repeat(envelope_bytes),
            author: OperatorKey([1; 32]),
            signature: String::new(),
            certificate: None,
        };
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(LogEntry { time_ms: index, command }),
        }
    }

    #[tokio::test]
    async fn log_store_entries_larger_than_a_store_value_round_trip() {
        // Entries bigger than the store's value cap are chunked and read back whole, in order.
        let store = Arc::new(MemoryStore::new());
        let sizes = [10, VALUE_BYTES_MAX * 2 + 7, 10, VALUE_BYTES_MAX];
        let ops: Vec<Op> = sizes.iter().enumerate().flat_map(|(i, n)| put_entry(&entry(i as u64 + 1, *n))).collect();
        assert!(ops.len() > sizes.len(), "large entries span several values");
        store.write(ops, Durability::Sync).unwrap();
        let mut log = LogStore::new(store);
        let got = log.try_get_log_entries(1..5).await.unwrap();
        let want: Vec<_> = sizes.iter().enumerate().map(|(i, n)| entry(i as u64 + 1, *n)).collect();
        assert_eq!(got, want);
        assert_eq!(log.try_get_log_entries(2..=2).await.unwrap(), vec![want[1].clone()]);
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id.map(|l| l.index), Some(4));
    }
}

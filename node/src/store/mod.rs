//! The node's storage seam: a small blocking key-value interface with two
//! implementations. [`SledStore`] is the production store on disk and makes a
//! [`Durability::Sync`] write truly durable (a real fsync, which sled 0.34 does
//! not do by itself). [`MemoryStore`] serves the deterministic simulator and
//! can lose the writes that were not yet synced when a crash is simulated.
//!
//! Every call blocks; async callers run it on `tokio::task::spawn_blocking`.
//! A caller that must not act before its data is durable (a Raft vote, an
//! appended log entry, a used nonce) writes with [`Durability::Sync`] and acts
//! only after `write` has returned. A reader may see a write before that.

pub mod memory;
pub mod sled_store;

use std::fmt;
use std::path::PathBuf;

pub use memory::MemoryStore;
pub use sled_store::SledStore;

/// The key spaces of a store. They live in one database, so a single
/// [`Store::write`] is atomic across them and one fsync covers them all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tree {
    /// Raft log entries keyed by their big-endian `u64` index.
    Log,
    /// The vote, the committed and purged ids, snapshot chunks and the node identity.
    Meta,
    /// Secrets sealed under the node's KEK (`crate::sealed`), the KEK check
    /// record and the passphrase salt: only ciphertext and public parameters.
    Sealed,
}

impl Tree {
    /// Every tree, in order.
    pub const ALL: [Tree; 3] = [Tree::Log, Tree::Meta, Tree::Sealed];
}

/// One change inside a [`Store::write`]. The ops of a write apply in order, so
/// a `Put` after a `RemoveRange` covering its key survives, and one before it does not.
#[derive(Clone, PartialEq, Eq)]
pub enum Op {
    /// Sets `key` to `value`, replacing any previous value.
    Put { tree: Tree, key: Vec<u8>, value: Vec<u8> },
    /// Removes `key`; removing a missing key is not an error.
    Remove { tree: Tree, key: Vec<u8> },
    /// Removes every key `k` with `from <= k < to_exclusive` (`None`: no upper bound).
    /// An empty range (`to_exclusive <= from`) removes nothing.
    RemoveRange { tree: Tree, from: Vec<u8>, to_exclusive: Option<Vec<u8>> },
}

/// Values may hold key material (the identity lives in [`Tree::Meta`]), so
/// `Debug` prints the length of a value, never its bytes.
impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Put { tree, key, value } => {
                f.debug_struct("Put").field("tree", tree).field("key", key).field("value_len", &value.len()).finish()
            }
            Op::Remove { tree, key } => f.debug_struct("Remove").field("tree", tree).field("key", key).finish(),
            Op::RemoveRange { tree, from, to_exclusive } => f
                .debug_struct("RemoveRange")
                .field("tree", tree)
                .field("from", from)
                .field("to_exclusive", to_exclusive)
                .finish(),
        }
    }
}

/// How far a [`Store::write`] has got when it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Visible to readers; lost if the machine crashes before the next `Sync` write.
    Buffered,
    /// On stable storage (a real fsync) before `write` returns, together with
    /// every earlier write. An empty `Sync` write is a barrier for earlier buffered writes.
    Sync,
}

/// The largest value a store accepts; larger values are refused with
/// [`StoreError::ValueTooLarge`] so that sled never writes a blob file (blob
/// files are never fsynced, see `shared/research/spike-sled-durability.md`).
///
/// The limit is far below 1 MiB on purpose. Sled writes a whole B-tree leaf as
/// one log record, and a record bigger than `segment_size / 4` (2 MiB here)
/// becomes a blob. Leaves split by item count, not by size (sled 0.34.7
/// node.rs:599: more than 16 items), so a leaf can hold about 20 values and
/// the cap has to be about 1/20 of 2 MiB. With 8 MiB segments, values of
/// 1 MiB produced blob files after 4 inserts, and 128 KiB values produced them
/// under random inserts and removes; 64 KiB and 96 KiB produced none.
/// Callers that chunk large data (snapshots) use this constant as chunk size.
pub const VALUE_BYTES_MAX: usize = 1 << 16;

/// The longest key a store accepts, for the same reason as [`VALUE_BYTES_MAX`]
/// (keys are in leaves and in index nodes of up to ~256 children).
pub const KEY_BYTES_MAX: usize = 1 << 10;

/// Why a store call failed. Messages name the data directory and say what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "a value of {len} bytes was refused: the store accepts values of at most {max} bytes; \
         split the data into chunks of at most store::VALUE_BYTES_MAX bytes"
    )]
    ValueTooLarge { len: usize, max: usize },

    #[error(
        "a key of {len} bytes was refused: the store accepts keys of at most {max} bytes; \
         use a shorter key"
    )]
    KeyTooLarge { len: usize, max: usize },

    #[error(
        "the data directory {} looks corrupted ({detail}); restore it from a backup or remove it \
         and let the node catch up from the cluster",
        path.display()
    )]
    Corrupt { path: PathBuf, detail: String },

    #[error(
        "the data directory {} contains {count} sled blob file(s) in blobs/; sled never fsyncs \
         blob files, so synced records may point at lost data. Restore the directory from a backup \
         or remove it and let the node catch up from the cluster, and report this as a Synod bug \
         (values are capped so that blobs cannot appear)",
        path.display()
    )]
    BlobFilesPresent { path: PathBuf, count: usize },

    #[error(
        "the data directory {} is already open, by another synod process or by another store in \
         this one ({detail}); stop the other process, or give each node its own data directory",
        path.display()
    )]
    Locked { path: PathBuf, detail: String },

    #[error(
        "could not {action} {}: {source}; check that the disk is mounted, writable and not full, \
         and that the node's user owns the data directory",
        path.display()
    )]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "the storage engine failed on the data directory {} ({detail}); stop the node, keep the \
         directory and the log for a bug report, then restore it from a backup or remove it and \
         let the node catch up from the cluster",
        path.display()
    )]
    Engine { path: PathBuf, detail: String },
}

/// Checks every op of a write before any of it is applied, so a refused
/// write changes nothing. Both stores call this first.
pub(crate) fn validate_ops(ops: &[Op]) -> Result<(), StoreError> {
    for op in ops {
        let Op::Put { key, value, .. } = op else {
            continue;
        };
        if key.len() > KEY_BYTES_MAX {
            return Err(StoreError::KeyTooLarge { len: key.len(), max: KEY_BYTES_MAX });
        }
        if value.len() > VALUE_BYTES_MAX {
            return Err(StoreError::ValueTooLarge { len: value.len(), max: VALUE_BYTES_MAX });
        }
    }
    Ok(())
}

/// A key and its value, as read from a store.
pub type Pair = (Vec<u8>, Vec<u8>);

/// A blocking, ordered key-value store with a few trees and atomic multi-op writes.
pub trait Store: Send + Sync + 'static {
    /// The value of `key` in `tree`, if any.
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Up to `limit` pairs with `from <= key < to_exclusive` (`None`: no upper
    /// bound), in ascending key order. An empty range gives an empty result.
    fn scan(&self, tree: Tree, from: &[u8], to_exclusive: Option<&[u8]>, limit: usize)
        -> Result<Vec<Pair>, StoreError>;

    /// The pair with the smallest key in `tree`, if any.
    fn first(&self, tree: Tree) -> Result<Option<Pair>, StoreError>;

    /// The pair with the largest key in `tree`, if any.
    fn last(&self, tree: Tree) -> Result<Option<Pair>, StoreError>;

    /// Applies `ops` in order, atomically across all trees: after a crash
    /// either all of them are there or none. A refused write changes nothing.
    fn write(&self, ops: Vec<Op>, durability: Durability) -> Result<(), StoreError>;
}

#[cfg(test)]
mod tests {
    //! Scenarios run against both stores, and the model test that compares them.

    use super::*;

    /// A fresh store of each kind; the temp dir keeps the sled store's files alive.
    fn stores() -> Vec<(&'static str, Box<dyn Store>, Option<tempfile::TempDir>)> {
        let dir = tempfile::tempdir().expect("create a temp dir");
        let sled = SledStore::open(&dir.path().join("data")).expect("open a sled store");
        vec![("memory", Box::new(MemoryStore::new()), None), ("sled", Box::new(sled), Some(dir))]
    }

    fn put(tree: Tree, key: &[u8], value: &[u8]) -> Op {
        Op::Put { tree, key: key.to_vec(), value: value.to_vec() }
    }

    fn pairs(items: &[(&[u8], &[u8])]) -> Vec<Pair> {
        items.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
    }

    fn scan_all(store: &dyn Store, tree: Tree) -> Vec<Pair> {
        store.scan(tree, &[], None, usize::MAX).expect("scan")
    }

    #[test]
    fn store_round_trip_keeps_trees_apart() {
        // Proves that values read back as written, per tree, with first/last/get agreeing.
        for (name, store, _dir) in stores() {
            assert_eq!(store.first(Tree::Log).unwrap(), None, "{name}");
            assert_eq!(store.last(Tree::Meta).unwrap(), None, "{name}");
            let ops = vec![
                put(Tree::Log, &1u64.to_be_bytes(), b"one"),
                put(Tree::Log, &2u64.to_be_bytes(), b"two"),
                put(Tree::Meta, b"vote", b"v"),
                put(Tree::Meta, b"", b"empty key"),
            ];
            store.write(ops, Durability::Sync).unwrap();
            assert_eq!(store.get(Tree::Log, &1u64.to_be_bytes()).unwrap(), Some(b"one".to_vec()), "{name}");
            assert_eq!(store.get(Tree::Meta, &1u64.to_be_bytes()).unwrap(), None, "{name}");
            assert_eq!(store.get(Tree::Log, b"vote").unwrap(), None, "{name}");
            assert_eq!(store.get(Tree::Meta, b"").unwrap(), Some(b"empty key".to_vec()), "{name}");
            assert_eq!(store.first(Tree::Log).unwrap(), Some((1u64.to_be_bytes().to_vec(), b"one".to_vec())));
            assert_eq!(store.last(Tree::Log).unwrap(), Some((2u64.to_be_bytes().to_vec(), b"two".to_vec())));
            assert_eq!(store.first(Tree::Meta).unwrap(), Some((b"".to_vec(), b"empty key".to_vec())), "{name}");
            assert_eq!(store.last(Tree::Meta).unwrap(), Some((b"vote".to_vec(), b"v".to_vec())), "{name}");
            store.write(vec![put(Tree::Meta, b"vote", b"w")], Durability::Buffered).unwrap();
            assert_eq!(store.get(Tree::Meta, b"vote").unwrap(), Some(b"w".to_vec()), "{name}");
        }
    }

    #[test]
    fn store_scan_respects_bounds_and_limit() {
        // Proves that scan is ascending, honours both bounds and the limit, and treats empty ranges as empty.
        for (name, store, _dir) in stores() {
            let ops = [b"a", b"b", b"c", b"d"].iter().map(|k| put(Tree::Meta, *k, *k)).collect();
            store.write(ops, Durability::Buffered).unwrap();
            let all = pairs(&[(b"a", b"a"), (b"b", b"b"), (b"c", b"c"), (b"d", b"d")]);
            assert_eq!(scan_all(store.as_ref(), Tree::Meta), all, "{name}");
            assert_eq!(store.scan(Tree::Meta, b"b", Some(b"d"), 10).unwrap(), all[1..3].to_vec(), "{name}");
            assert_eq!(store.scan(Tree::Meta, b"bb", None, 10).unwrap(), all[2..].to_vec(), "{name}");
            assert_eq!(store.scan(Tree::Meta, b"a", None, 2).unwrap(), all[..2].to_vec(), "{name}");
            assert_eq!(store.scan(Tree::Meta, b"a", None, 0).unwrap(), vec![], "{name}");
            assert_eq!(store.scan(Tree::Meta, b"c", Some(b"c"), 10).unwrap(), vec![], "{name}");
            assert_eq!(store.scan(Tree::Meta, b"d", Some(b"a"), 10).unwrap(), vec![], "{name}");
            assert_eq!(store.scan(Tree::Log, b"", None, 10).unwrap(), vec![], "{name}");
        }
    }

    #[test]
    fn store_write_is_atomic_when_an_op_is_refused() {
        // Proves that a write with one refused op applies none of its ops, in either tree.
        for (name, store, _dir) in stores() {
            let ops = vec![
                put(Tree::Log, b"k", b"v"),
                put(Tree::Meta, b"k", b"v"),
                put(Tree::Meta, b"big", &vec![0; VALUE_BYTES_MAX + 1]),
            ];
            let error = store.write(ops, Durability::Sync).unwrap_err();
            assert!(matches!(error, StoreError::ValueTooLarge { .. }), "{name}: {error}");
            assert_eq!(scan_all(store.as_ref(), Tree::Log), vec![], "{name}");
            assert_eq!(scan_all(store.as_ref(), Tree::Meta), vec![], "{name}");
            store.write(vec![put(Tree::Log, b"k", b"v"), put(Tree::Meta, b"k", b"w")], Durability::Sync).unwrap();
            assert_eq!(scan_all(store.as_ref(), Tree::Log), pairs(&[(b"k", b"v")]), "{name}");
            assert_eq!(scan_all(store.as_ref(), Tree::Meta), pairs(&[(b"k", b"w")]), "{name}");
        }
    }

    #[test]
    fn store_remove_range_removes_exactly_the_range_in_op_order() {
        // Proves that RemoveRange removes [from, to) in its tree only, and that ops apply in order.
        for (name, store, _dir) in stores() {
            let ops = (0u64..10)
                .flat_map(|i| [put(Tree::Log, &i.to_be_bytes(), b"x"), put(Tree::Meta, &i.to_be_bytes(), b"m")]);
            store.write(ops.collect(), Durability::Buffered).unwrap();
            let remove = |from: u64, to: Option<u64>| Op::RemoveRange {
                tree: Tree::Log,
                from: from.to_be_bytes().to_vec(),
                to_exclusive: to.map(|t| t.to_be_bytes().to_vec()),
            };
            // Put inside the range before the RemoveRange: removed. Put after it: kept.
            let ops = vec![
                put(Tree::Log, &20u64.to_be_bytes(), b"gone"),
                remove(2, Some(5)),
                remove(8, None),
                put(Tree::Log, &9u64.to_be_bytes(), b"back"),
            ];
            store.write(ops, Durability::Sync).unwrap();
            let keys: Vec<u64> = scan_all(store.as_ref(), Tree::Log)
                .into_iter()
                .map(|(k, _)| u64::from_be_bytes(k.try_into().expect("8-byte key")))
                .collect();
            assert_eq!(keys, vec![0, 1, 5, 6, 7, 9], "{name}");
            assert_eq!(store.get(Tree::Log, &9u64.to_be_bytes()).unwrap(), Some(b"back".to_vec()), "{name}");
            assert_eq!(scan_all(store.as_ref(), Tree::Meta).len(), 10, "{name}: other tree untouched");
            store.write(vec![remove(7, Some(3))], Durability::Sync).unwrap();
            assert_eq!(scan_all(store.as_ref(), Tree::Log).len(), 6, "{name}: empty range removes nothing");
        }
    }

    #[test]
    fn store_value_and_key_limits_are_refused() {
        // Proves that a value of VALUE_BYTES_MAX is accepted, one byte more is refused, and keys are capped too.
        for (name, store, _dir) in stores() {
            store.write(vec![put(Tree::Meta, b"max", &vec![7; VALUE_BYTES_MAX])], Durability::Sync).unwrap();
            assert_eq!(store.get(Tree::Meta, b"max").unwrap().map(|v| v.len()), Some(VALUE_BYTES_MAX), "{name}");
            let error = store.write(vec![put(Tree::Meta, b"big", &vec![7; VALUE_BYTES_MAX + 1])], Durability::Sync);
            let Err(StoreError::ValueTooLarge { len, max }) = error else { panic!("{name}: {error:?}") };
            assert_eq!((len, max), (VALUE_BYTES_MAX + 1, VALUE_BYTES_MAX), "{name}");
            let error = store.write(vec![put(Tree::Meta, &vec![1; KEY_BYTES_MAX + 1], b"v")], Durability::Sync);
            assert!(matches!(error, Err(StoreError::KeyTooLarge { .. })), "{name}: {error:?}");
            assert_eq!(store.get(Tree::Meta, b"big").unwrap(), None, "{name}");
        }
    }

    /// xorshift64*: a tiny seeded generator, so one seed replays one run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        /// Short keys of varying length (including empty) so that byte order, not length, decides.
        fn key(&mut self) -> Vec<u8> {
            let len = self.below(3) as usize;
            (0..len).map(|_| b"abcd"[self.below(4) as usize]).collect()
        }

        fn tree(&mut self) -> Tree {
            Tree::ALL[self.below(Tree::ALL.len() as u64) as usize]
        }

        fn op(&mut self) -> Op {
            match self.below(10) {
                0..=5 => {
                    let value = (0..self.below(24)).map(|_| self.next() as u8).collect();
                    Op::Put { tree: self.tree(), key: self.key(), value }
                }
                6..=7 => Op::Remove { tree: self.tree(), key: self.key() },
                _ => Op::RemoveRange {
                    tree: self.tree(),
                    from: self.key(),
                    to_exclusive: if self.below(3) == 0 { None } else { Some(self.key()) },
                },
            }
        }
    }

    fn assert_same_reads(memory: &dyn Store, sled: &dyn Store, rng: &mut Rng, context: &str) {
        for tree in Tree::ALL {
            assert_eq!(memory.first(tree).unwrap(), sled.first(tree).unwrap(), "first {tree:?}; {context}");
            assert_eq!(memory.last(tree).unwrap(), sled.last(tree).unwrap(), "last {tree:?}; {context}");
            assert_eq!(scan_all(memory, tree), scan_all(sled, tree), "full scan {tree:?}; {context}");
        }
        let (tree, key) = (rng.tree(), rng.key());
        assert_eq!(memory.get(tree, &key).unwrap(), sled.get(tree, &key).unwrap(), "get {key:?}; {context}");
        let (from, to, limit) = (rng.key(), rng.key(), rng.below(5) as usize);
        let to = (rng.below(3) != 0).then_some(to);
        assert_eq!(
            memory.scan(tree, &from, to.as_deref(), limit).unwrap(),
            sled.scan(tree, &from, to.as_deref(), limit).unwrap(),
            "scan {tree:?} {from:?}..{to:?} limit {limit}; {context}"
        );
    }

    /// Opens the sled store at `path` again. sled's background flusher may hold
    /// the file lock for a moment after the last handle is dropped, so a
    /// `Locked` answer is retried for up to 5 s.
    fn reopen(path: &std::path::Path) -> SledStore {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match SledStore::open(path) {
                Ok(store) => return store,
                Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(e) => panic!("reopen the sled store: {e}"),
            }
        }
    }

    #[test]
    fn store_memory_matches_sled_on_seeded_random_ops() {
        // Proves that MemoryStore is a faithful model of SledStore: identical reads after every write of a
        // seeded random op sequence, and identical contents after a sled reopen / memory crash that follows a Sync.
        let seed = match std::env::var("SYNOD_STORE_SEED") {
            Ok(text) => text.parse().expect("SYNOD_STORE_SEED is a u64"),
            Err(_) => 0x5EED_0001,
        };
        let replay =
            format!("seed {seed}; replay: SYNOD_STORE_SEED={seed} cargo test -p synod-node store_memory_matches_sled");
        let mut rng = Rng(seed | 1);
        let dir = tempfile::tempdir().expect("create a temp dir");
        let path = dir.path().join("data");
        let memory = MemoryStore::new();
        let mut sled = Some(SledStore::open(&path).expect("open a sled store"));
        for step in 0..400 {
            let context = format!("step {step}, {replay}");
            let ops: Vec<Op> = (0..1 + rng.below(4)).map(|_| rng.op()).collect();
            let durability = if rng.below(4) == 0 { Durability::Sync } else { Durability::Buffered };
            let sled_ref = sled.as_ref().expect("sled is open");
            memory.write(ops.clone(), durability).unwrap();
            sled_ref.write(ops, durability).unwrap();
            assert_same_reads(&memory, sled_ref, &mut rng, &context);
            if step % 97 == 96 {
                // A Sync barrier, then a restart: both must come back with everything.
                memory.write(vec![], Durability::Sync).unwrap();
                sled_ref.write(vec![], Durability::Sync).unwrap();
                drop(sled.take());
                memory.crash();
                sled = Some(reopen(&path));
                assert_same_reads(&memory, sled.as_ref().expect("sled is open"), &mut rng, &context);
            }
        }
    }
}
